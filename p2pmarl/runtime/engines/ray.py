"""The Ray engine (``p2pmarl launch --engine ray``): the world and each agent as one Ray actor.

Ray places and supervises the processes; it never carries an algorithm message. The steps:

1. connect to the cluster of ``--ray-address``, or start a local Ray instance for this run;
2. reserve one CPU per process in a placement group (``--placement spread|pack``);
3. start one long-lived actor per process (:class:`ProcessActor`); each holds a free tcp port
   on its node's IP and reports its endpoint;
4. write the endpoint table and fresh CURVE keys (agents and world) into the run directory and
   hand the table to every actor's ``run``, which checks it against the file and runs the
   process's ``main`` (:mod:`p2pmarl.runtime.world` / :mod:`p2pmarl.runtime.agent`) inside the
   actor: from there the run proceeds exactly as a local one, over ZeroMQ with CURVE.

Every node must see the run directory at the same path (a shared filesystem): the processes read
their config and keys there and write their logs and metrics there, as in a local run. Secret
keys therefore never travel through Ray. A dead actor is a lost process, reported like a local
process that died; :meth:`RayEngine.stop_all` kills every actor, removes the placement group and
stops the local Ray instance (or disconnects from the cluster), also on Ctrl-C and failure.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

from p2pmarl.config import ConfigError, RunConfig
from p2pmarl.runtime.crashes import CrashPlan
from p2pmarl.runtime.engines import EngineOptions
from p2pmarl.runtime.engines.local import (
    CHILD_MODULES,
    LOG_TAIL_LINES,
    LocalEngine,
    _tail,
    run_main,
)
from p2pmarl.runtime.rundir import RunDir, write_json
from p2pmarl.topology import Topology

try:
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
except ImportError:  # the optional extra p2pmarl[ray]
    ray = None

logger = logging.getLogger(__name__)

PLACEMENT_TIMEOUT = 60.0
"""Seconds to wait for the cluster to grant the placement group's CPUs."""
ACTOR_START_SECONDS = 60.0
"""Seconds for the actors to start and report their endpoints, plus
:data:`ACTOR_START_PER_PROCESS` per process (each starts a Python worker)."""
ACTOR_START_PER_PROCESS = 3.0
LOCAL_OBJECT_STORE_BYTES = 80 * 1024**2
"""Object store of a local Ray instance: only control calls go through Ray, so keep it small
(Ray's minimum is about 75 MiB)."""
STRATEGIES = {"spread": "SPREAD", "pack": "PACK"}
ACTOR_LOST = 1
"""Exit code recorded for a process whose actor died (its worker process was lost)."""


def require_ray() -> None:
    if ray is None:
        raise ConfigError(
            "--engine ray needs Ray, an optional extra: pip install 'p2pmarl[ray]' "
            "(see docs/cluster.md)"
        )


class ProcessActor:
    """One process of a run (the world or an agent) inside a long-lived Ray actor."""

    def __init__(self, run_root: str, module: str, log: str) -> None:
        self.run_root = Path(run_root)
        self.module = module
        self.output = Path(log).with_name(Path(log).stem + ".out")
        self._reserved: socket.socket | None = None

    def reserve(self) -> dict:
        """Hold a free tcp port on this node's IP; returns its endpoint, the node and our pid.

        The port stays bound (SO_REUSEADDR, not listening) until the run ends, so no one else
        takes it; ZeroMQ, which also sets SO_REUSEADDR, binds it once the run starts.
        """
        node = ray.util.get_node_ip_address()
        if not (self.run_root / "config.json").exists():
            raise ConfigError(
                f"node {node} does not see the run directory {self.run_root}: --engine ray "
                "needs it at the same path on every node (a shared filesystem, docs/cluster.md)"
            )
        family = socket.AF_INET6 if ":" in node else socket.AF_INET
        self._reserved = socket.socket(family, socket.SOCK_STREAM)
        self._reserved.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._reserved.bind((node, 0))
        port = self._reserved.getsockname()[1]
        host = f"[{node}]" if family == socket.AF_INET6 else node
        return {"endpoint": f"tcp://{host}:{port}", "node": node, "pid": os.getpid()}

    def run(self, args: list[str], endpoints: dict) -> int:
        """Run the process's ``main(args)`` here with ``endpoints``; returns its exit code.

        Output goes to the process's ``.out`` file as in a local run; an exception is printed
        there and gives exit code 1.
        """
        written = json.loads((self.run_root / "endpoints.json").read_text())
        if written != endpoints:
            raise ConfigError(
                f"{self.run_root / 'endpoints.json'} on node {ray.util.get_node_ip_address()} "
                "is not the endpoint table the launcher wrote: the run directory is not shared"
            )
        try:
            return run_main(self.module, args, self.output)
        finally:
            if self._reserved is not None:
                self._reserved.close()


class ActorChild:
    """A process run by a :class:`ProcessActor`, watched like a local child (``poll``/``wait``)."""

    def __init__(
        self, name: str, actor: Any, report: dict, log: Path, agent: int | None = None
    ) -> None:
        self.name = name
        self.actor = actor
        self.node: str = report["node"]
        self.pid: int = report["pid"]
        self.endpoint: str = report["endpoint"]
        self.log = log
        self.output = log.with_name(log.stem + ".out")
        self.agent = agent
        self.result: Any = None
        self.code: int | None = None
        self.error: str | None = None
        """How the actor ended when it did not return an exit code (died or raised)."""

    def start(self, args: list[str], endpoints: dict) -> None:
        self.result = self.actor.run.remote(args, endpoints)

    def poll(self) -> int | None:
        """Exit code of the process, :data:`ACTOR_LOST` if its actor died; None while running."""
        if self.code is None and self.result is not None:
            ready, _ = ray.wait([self.result], timeout=0)
            if ready:
                self._collect()
        return self.code

    def wait(self, timeout: float) -> int | None:
        if self.code is None and self.result is not None:
            ray.wait([self.result], timeout=timeout)
        return self.poll()

    def _collect(self) -> None:
        try:
            self.code = int(ray.get(self.result))
        except ray.exceptions.RayActorError as error:
            self.code, self.error = ACTOR_LOST, f"its Ray actor died: {_first_line(error)}"
        except ray.exceptions.RayError as error:
            self.code, self.error = ACTOR_LOST, f"its Ray actor failed: {_first_line(error)}"


def _driver_messages_to_stderr() -> None:
    """Ray's driver prints the cluster's error messages (e.g. "A worker died") to stdout, where
    ``launch --json`` writes the summary: send them to stderr. A no-op where Ray has no such
    hook (the function is internal to Ray)."""
    worker = getattr(getattr(ray, "_private", None), "worker", None)
    original = getattr(worker, "print_to_stdstream", None)
    if original is None or getattr(original, "p2pmarl_stderr", False):
        return

    def to_stderr(data: dict, *args: Any, **kwargs: Any) -> None:
        original({**data, "is_err": True}, *args, **kwargs)

    to_stderr.p2pmarl_stderr = True  # type: ignore[attr-defined]
    worker.print_to_stdstream = to_stderr


def _first_line(error: BaseException) -> str:
    lines = [line for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


class RayEngine(LocalEngine):
    """Places the world and every agent as Ray actors; watched and reported as local processes.

    Fault-spec crashes are not executed by this engine (``EngineOptions.check_faults``).
    """

    def __init__(
        self, run_dir: RunDir, config: RunConfig, topology: Topology, n_agents: int, start: int,
        crash_plan: CrashPlan, options: EngineOptions,
    ) -> None:
        require_ray()
        options.check_faults(crash_plan.spec)
        super().__init__(run_dir, config, n_agents, start, crash_plan)
        self.topology = topology
        self.options = options
        self.group: Any = None
        self.actors: list[Any] = []
        self.temp_dir: str | None = None
        """The local Ray instance's folder (None when joining a cluster)."""

    # -- starting ----------------------------------------------------------------------------

    def spawn(self) -> None:
        self._connect()
        self.group = self._place()
        names = ["world"] + [f"agent {agent}" for agent in range(self.n_agents)]
        logs = [self.run_dir.world_log] + [self.run_dir.agent_log(a) for a in range(self.n_agents)]
        modules = [CHILD_MODULES[0]] + [CHILD_MODULES[1]] * self.n_agents
        actor_class = ray.remote(ProcessActor)
        for index, (module, log) in enumerate(zip(modules, logs, strict=True)):
            log.parent.mkdir(parents=True, exist_ok=True)
            strategy = PlacementGroupSchedulingStrategy(self.group, index)
            self.actors.append(actor_class.options(
                num_cpus=1, max_restarts=0, scheduling_strategy=strategy,
            ).remote(str(self.run_dir.root), module, str(log)))
        reports = self._reports()
        self.children = [
            ActorChild(name, actor, report, log, None if index == 0 else index - 1)
            for index, (name, actor, report, log)
            in enumerate(zip(names, self.actors, reports, logs, strict=True))
        ]
        endpoints = self._write_endpoints()
        common = self._common(self.start)
        for child in self.children:
            args = common if child.agent is None else [
                *common, "--agent", str(child.agent), "--life", "0"
            ]
            child.start(args, endpoints)
        self._write_pids()

    def _connect(self) -> None:
        """Join ``--ray-address``'s cluster, or start a local instance with one CPU per process."""
        _driver_messages_to_stderr()
        quiet = {"log_to_driver": False, "logging_level": logging.WARNING}
        if self.options.ray_address:
            try:
                ray.init(address=self.options.ray_address, **quiet)
            except (ConnectionError, RuntimeError, ValueError) as error:
                raise ConfigError(
                    f"--ray-address {self.options.ray_address}: cannot join that Ray cluster "
                    f"({_first_line(error)}); is `ray start --head` running there?"
                ) from error
            return
        self.temp_dir = tempfile.mkdtemp(prefix="p2pmarl-ray-", dir="/tmp")
        ray.init(num_cpus=self.n_agents + 1, include_dashboard=False,
                 object_store_memory=LOCAL_OBJECT_STORE_BYTES, _temp_dir=self.temp_dir, **quiet)

    def _place(self) -> Any:
        """A placement group of one CPU per process; a clear error if the cluster lacks CPUs."""
        group = placement_group([{"CPU": 1}] * (self.n_agents + 1),
                                strategy=STRATEGIES[self.options.placement])
        ready, _ = ray.wait([group.ready()], timeout=PLACEMENT_TIMEOUT)
        if not ready:
            remove_placement_group(group)
            total = ray.cluster_resources().get("CPU", 0)
            free = ray.available_resources().get("CPU", 0)
            raise ConfigError(
                f"the Ray cluster cannot place {self.n_agents + 1} one-CPU actors (the world and "
                f"{self.n_agents} agents) within {PLACEMENT_TIMEOUT:.0f} s: it has {total:g} CPUs, "
                f"{free:g} free; give its nodes more (`ray start --num-cpus N`) or add nodes"
            )
        return group

    def _reports(self) -> list[dict]:
        """Every actor's endpoint report, within a bound that grows with the number of actors."""
        timeout = ACTOR_START_SECONDS + ACTOR_START_PER_PROCESS * len(self.actors)
        try:
            return ray.get([actor.reserve.remote() for actor in self.actors], timeout=timeout)
        except ray.exceptions.GetTimeoutError as error:
            raise ConfigError(
                f"the {len(self.actors)} Ray actors did not all start and report an endpoint "
                f"within {timeout:.0f} s"
            ) from error
        except ray.exceptions.RayTaskError as error:
            raise ConfigError(f"a Ray actor could not start: {_first_line(error)}") from error

    def _write_endpoints(self) -> dict:
        """endpoints.json from the actors' reports, and CURVE keys for agents and world."""
        from p2pmarl.runtime.hosts import make_keys

        endpoints = {
            "world": self.children[0].endpoint,
            "agents": {str(c.agent): c.endpoint for c in self.children[1:]},
            "centralized": self.n_agents != self.topology.n_agents,
            "n_env_agents": self.topology.n_agents,
        }
        make_keys(self.run_dir.root, self.topology)
        write_json(self.run_dir.endpoints, endpoints)
        return endpoints

    def _write_pids(self) -> None:
        write_json(self.run_dir.pids, {c.name: c.pid for c in self.children})

    def _inject_kills(self) -> None:
        """No ``at_seconds`` crashes here (refused in ``__init__``)."""

    # -- watching and stopping ------------------------------------------------------------------

    def stop_all(self) -> None:
        """Kill every actor, remove the placement group, stop or leave Ray; never raises."""
        if ray is None or not ray.is_initialized():
            return
        for actor in self.actors:
            with contextlib.suppress(Exception):
                ray.kill(actor, no_restart=True)
        if self.group is not None:
            with contextlib.suppress(Exception):
                remove_placement_group(self.group)
        with contextlib.suppress(Exception):
            ray.shutdown()  # stops a local instance's processes; leaves a joined cluster running
        if self.temp_dir is not None:
            time.sleep(0.2)
            shutil.rmtree(self.temp_dir, ignore_errors=True)

    def describe(self) -> dict:
        return {
            "name": "ray",
            "address": self.options.ray_address,
            "placement": self.options.placement,
            "nodes": {c.name: c.node for c in self.children},
        }

    def describe_failure(self, name: str) -> str:
        child = next(c for c in self.children if c.name == name)
        code = child.poll()
        if child.error is not None:
            how = child.error
        elif code is None:
            how = "is unresponsive"
        else:
            how = f"exited with code {code}"
        lines = [f"{name} (Ray actor on node {child.node}, pid {child.pid}) {how}. "
                 f"Last lines of {child.log} and {child.output.name}:"]
        for path in (child.log, child.output):
            lines.extend("    " + line for line in _tail(path, LOG_TAIL_LINES))
        return "\n".join(lines)
