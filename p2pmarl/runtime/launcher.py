"""The launcher: turns a config and a topology into one world and N agent processes, and watches.

It takes no part in learning. It writes the run directory, starts the processes (each dies with
the launcher: ``PR_SET_PDEATHSIG``), shows progress from the files the processes write, executes
and follows the crashes the fault spec asks for (:mod:`p2pmarl.runtime.crashes`), stops
everything on Ctrl-C or when a process dies unplanned, and writes ``summary.json``.
"""

from __future__ import annotations

import ctypes
import datetime
import gc
import importlib
import importlib.metadata
import json
import logging
import multiprocessing
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import zmq

from p2pmarl.algos import algorithm_class
from p2pmarl.config import ConfigError, RunConfig
from p2pmarl.envs import env_spec
from p2pmarl.runtime import faults
from p2pmarl.runtime.crashes import CrashPlan
from p2pmarl.runtime.progress import ProgressView
from p2pmarl.runtime.rundir import RunDir, process_seeds, read_jsonl, write_json
from p2pmarl.runtime.summary import build_summary
from p2pmarl.runtime.tensorboard import TensorBoardExporter
from p2pmarl.runtime.transport import KEYS_DIR, agent_key_file, public_keys_file
from p2pmarl.topology import Topology, load_topology

POLL_INTERVAL = 0.25
"""Seconds between checks of the child processes and their progress files."""
SHUTDOWN_GRACE = 3.0
"""Seconds a child gets between SIGTERM and SIGKILL."""
FINISH_GRACE = 30.0
"""Seconds agents get to exit after the world has finished."""
LOG_TAIL_LINES = 20
"""Lines of a dead process's log printed by the launcher."""
PACKAGES = ("p2pmarl", "torch", "pyzmq", "msgpack", "numpy", "networkx", "pettingzoo", "mpe2")


class LaunchError(RuntimeError):
    """A run that could not be started or that failed; the message names the process."""


CHILD_MODULES = ("p2pmarl.runtime.world", "p2pmarl.runtime.agent")
"""Imported once by the launcher, then forked: 24 agents start in well under a second."""
LAZY_MODULES = ("torch.fx.experimental.symbolic_shapes",)
"""Modules torch imports only on first use inside a learning step, preloaded for the same reason:
``torch.autograd.grad`` with ``grad_outputs`` (every Fisher-vector product) imports
``symbolic_shapes`` and with it sympy, about 2 s of CPU and 40 MB of private memory in every
agent process that imports it itself (issue 15)."""


@dataclass
class Child:
    """One started process and where its output goes."""

    name: str
    process: multiprocessing.process.BaseProcess
    output: Path
    log: Path
    agent: int | None = None
    """The agent id of an agent process (None for the world)."""

    def poll(self) -> int | None:
        """Exit code (negative: killed by that signal), or None while running."""
        return self.process.exitcode

    def wait(self, timeout: float) -> int | None:
        self.process.join(timeout)
        return self.process.exitcode


@dataclass
class LaunchResult:
    """What the launcher hands back to the CLI."""

    run_dir: Path
    summary: dict
    exit_code: int
    messages: list[str] = field(default_factory=list)


def _die_with_parent() -> None:
    """Child-side: get SIGKILL when the launcher dies, so no process is ever orphaned."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        pass


def _child_main(module: str, args: list[str], output: str) -> None:
    """Entry point of a forked child: own session, output to its file, then the module's main."""
    _die_with_parent()
    os.setsid()  # Ctrl-C reaches the launcher only; it stops the children itself
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    descriptor = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(descriptor, 1)
    os.dup2(descriptor, 2)
    os.close(descriptor)
    code = 1
    try:
        code = importlib.import_module(module).main(args)
    except BaseException:
        traceback.print_exc()
    finally:
        # Skip interpreter teardown inherited from the launcher (atexit hooks, zmq context
        # destructors, thread joins): a forked child must not hang on its way out.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def load_checked_topology(config: RunConfig) -> Topology:
    """Load the topology and check it against the algorithm and the environment."""
    algorithm = algorithm_class(config.algo)
    topology = load_topology(
        config.topology, require_connected=algorithm.needs_connected_graph
    )
    try:
        env_spec(config.env, topology.n_agents, config.episode_length,
                 env_kwargs=config.env_kwargs, agent_order=config.agent_order)
    except ValueError as error:
        raise ConfigError(
            f"topology {config.topology} has {topology.n_agents} agents, which environment "
            f"{config.env!r} cannot have: {error}"
        ) from error
    algorithm.check_run(topology, config)
    for phase in algorithm.rollout_phases(config, topology.n_agents):
        if phase.copy_groups > config.n_envs:
            raise ConfigError(
                f"{config.algo}'s rollout phase {phase.name!r} splits the copies into "
                f"{phase.copy_groups} groups, so it needs n_envs ≥ {phase.copy_groups}; got "
                f"n_envs={config.n_envs} (raise --n-envs, ideally to a multiple of "
                f"{phase.copy_groups})"
            )
    return topology


def new_run_dir(config: RunConfig) -> RunDir:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    env = config.env.replace(":", "-").replace("/", "-")  # an import path (issue 16)
    base = Path(config.out) / f"{stamp}-{config.algo}-{env}-s{config.seed}"
    root, suffix = base, 1
    while root.exists():
        suffix += 1
        root = base.with_name(f"{base.name}-{suffix}")
    root.mkdir(parents=True)
    return RunDir(root)


def write_run_files(
    run_dir: RunDir, config: RunConfig, topology: Topology, socket_dir: Path
) -> None:
    world_seed, agent_seeds = process_seeds(config.seed, topology.n_agents)
    write_json(
        run_dir.config,
        {
            "config": config.to_dict(),
            "seeds": {"world": world_seed, "agents": agent_seeds},
            "versions": _versions(),
            "python": platform.python_version(),
            "command": sys.argv,
        },
    )
    topology.save_node_link(run_dir.topology)
    centralized = algorithm_class(config.algo).centralized
    endpoints = endpoints_for(topology, socket_dir, centralized)
    write_json(run_dir.endpoints, endpoints)
    keys = run_dir.root / KEYS_DIR
    shutil.rmtree(keys, ignore_errors=True)  # a resumed run gets fresh keys
    if any(address.startswith("tcp://") for address in endpoints["agents"].values()):
        write_curve_keys(run_dir.root, [int(agent) for agent in endpoints["agents"]])


def write_curve_keys(root: Path, agents: list[int]) -> None:
    """One CURVE key pair per agent: ``keys/agent-I.key`` (0600) and ``keys/public.json``."""
    (root / KEYS_DIR).mkdir(mode=0o700)
    public = {}
    for agent in agents:
        public_key, secret_key = zmq.curve_keypair()
        public[str(agent)] = public_key.decode("ascii")
        text = json.dumps(
            {"agent": agent, "public": public[str(agent)], "secret": secret_key.decode("ascii")}
        )
        descriptor = os.open(
            agent_key_file(root, agent), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600
        )
        with os.fdopen(descriptor, "w") as handle:
            handle.write(text + "\n")
    write_json(public_keys_file(root), public)


def endpoints_for(topology: Topology, socket_dir: Path, centralized: bool = False) -> dict:
    """ipc:// sockets in a short temporary folder, or tcp:// where the topology has addresses.

    A centralized reference (C-TRPO) has a single learner process, id 0.
    """
    agents = {}
    for agent in range(1 if centralized else topology.n_agents):
        if agent in topology.addresses:
            host, port = topology.addresses[agent]
            agents[str(agent)] = f"tcp://{host}:{port}"
        else:
            agents[str(agent)] = f"ipc://{socket_dir}/agent-{agent}"
    return {
        "world": f"ipc://{socket_dir}/world",
        "agents": agents,
        "centralized": centralized,
        "n_env_agents": topology.n_agents,
    }


def _versions() -> dict[str, str]:
    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def _preload() -> None:
    """Import what every child needs once, here, so N forks do not each import it on 2 cores.

    Creating a network triggers torch's lazy imports; ``gc.freeze`` keeps the children's first
    garbage collections from touching (and so copying) the inherited objects.
    """
    for module in (*CHILD_MODULES, *LAZY_MODULES):
        importlib.import_module(module)
    from p2pmarl.algos.networks import CategoricalPolicy

    CategoricalPolicy(2, (2,), (2,))
    gc.collect()
    gc.freeze()


class Launcher:
    """Starts, watches and stops the processes of one run."""

    def __init__(
        self, run_dir: RunDir, config: RunConfig, n_agents: int, start: int,
        crash_plan: CrashPlan | None = None,
    ) -> None:
        self.run_dir = run_dir
        self.config = config
        self.n_agents = n_agents
        self.start = start
        self.crash_plan = crash_plan or CrashPlan(None)
        self.children: list[Child] = []
        """The world, then the running process of each agent (index 1 + agent id)."""
        self.retired: list[Child] = []
        """Agent processes that crashed as planned."""

    def spawn(self) -> None:
        _preload()
        # ``at_seconds`` counts from here: the preload's imports (seconds on a loaded machine)
        # are not part of the run, and a clock started before them could fire before the
        # agents have even connected.
        self.crash_plan.started = time.monotonic()
        self._spawn("world", CHILD_MODULES[0], self._common(self.start), self.run_dir.world_log)
        for agent in range(self.n_agents):
            self._spawn_agent(agent, self.start, life=0)
        self._write_pids()

    def _common(self, start: int) -> list[str]:
        return ["--run-dir", str(self.run_dir.root), "--start-iteration", str(start)]

    def _spawn_agent(self, agent: int, start: int, life: int) -> Child:
        args = [*self._common(start), "--agent", str(agent), "--life", str(life)]
        return self._spawn(f"agent {agent}", CHILD_MODULES[1], args, self.run_dir.agent_log(agent),
                           agent)

    def _write_pids(self) -> None:
        write_json(self.run_dir.pids, {c.name: c.process.pid for c in self.children})

    def _spawn(
        self, name: str, module: str, args: list[str], log: Path, agent: int | None = None
    ) -> Child:
        output = log.with_name(log.stem + ".out")
        output.parent.mkdir(parents=True, exist_ok=True)
        context = multiprocessing.get_context("fork")
        process = context.Process(
            target=_child_main, args=(module, args, str(output)), name=name, daemon=False
        )
        process.start()
        child = Child(name, process, output, log, agent)
        if agent is None or len(self.children) <= 1 + agent:
            self.children.append(child)
        else:
            self.children[1 + agent] = child
        return child

    def _agents_running(self) -> list[Child]:
        return [c for c in self.children[1:] if c.agent not in self.crash_plan.ended]

    def _inject_kills(self) -> None:
        """``at_seconds`` crashes: SIGKILL the agent's running process."""
        for agent in self.crash_plan.due_kills(range(self.n_agents)):
            child = self.children[1 + agent]
            if child.poll() is None:
                logging.getLogger(__name__).warning("injected crash: SIGKILL %s", child.name)
                os.kill(child.process.pid, signal.SIGKILL)

    def _planned_crash(self, child: Child, code: int) -> bool:
        """Handle an agent process that ended with ``code``; False if that was not planned."""
        assert child.agent is not None
        crash = self.crash_plan.expected(child.agent, code)
        if crash is None:
            return False
        self.crash_plan.record_crash(child.agent, crash, child.process.pid)
        self.retired.append(child)
        if crash.restart:
            start = max(self.run_dir.checkpoint_iterations(child.agent), default=0)
            life = self.crash_plan.life(child.agent)
            new = self._spawn_agent(child.agent, start, life)
            self.crash_plan.record_restart(child.agent, start, new.process.pid)
            self._write_pids()
        return True

    def watch(self, on_poll: Callable[[], None]) -> tuple[str, str | None]:
        """Wait until the world finishes or a process dies unplanned; returns (status, culprit).

        Crashes of the fault spec are executed here (``at_seconds``) or noticed (the process
        ended with SIGKILL as planned) and followed by a restart when the spec asks for one.
        """
        world = self.children[0]
        finished_at: dict[str, float] = {}
        while True:
            on_poll()
            self._inject_kills()
            for child in self._agents_running():
                code = child.poll()
                if code is not None and code != 0:
                    if self._planned_crash(child, code):
                        continue
                    return "failed", child.name
                if code == 0:
                    # An agent that finished cleanly is normal while the world is shutting
                    # down; one that finished while the world keeps waiting for it is not.
                    since = finished_at.setdefault(child.name, time.monotonic())
                    if world.poll() is None and time.monotonic() - since > FINISH_GRACE:
                        return "failed", child.name
            code = world.poll()
            if code is not None:
                return ("completed", None) if code == 0 else ("failed", world.name)
            time.sleep(POLL_INTERVAL)

    def wait_agents(self, timeout: float) -> str | None:
        """After the world is done: wait for agents to exit; returns the first that failed."""
        deadline = time.monotonic() + timeout
        for child in self._agents_running():
            code = child.wait(max(0.1, deadline - time.monotonic()))
            if code != 0:
                return child.name
        return None

    def stop_all(self) -> None:
        """SIGTERM every live child, SIGKILL what is left after the grace period, reap all."""
        for child in self.retired:
            child.wait(SHUTDOWN_GRACE)
        for child in self.children:
            if child.poll() is None:
                child.process.terminate()
        deadline = time.monotonic() + SHUTDOWN_GRACE
        for child in self.children:
            if child.wait(max(0.05, deadline - time.monotonic())) is None:
                child.process.kill()
                child.wait(SHUTDOWN_GRACE)

    def describe_failure(self, name: str) -> str:
        child = next(c for c in self.children if c.name == name)
        code = child.poll()
        how = "is unresponsive" if code is None else f"exited with code {code}"
        if code is not None and code < 0:
            how = f"was killed by signal {signal.Signals(-code).name}"
        lines = [f"{name} {how}. Last lines of {child.log} and {child.output.name}:"]
        for path in (child.log, child.output):
            lines.extend("    " + line for line in _tail(path, LOG_TAIL_LINES))
        return "\n".join(lines)


def _tail(path: Path, n: int) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()[-n:]
    except OSError:
        return []


def resume_start(run_dir: RunDir, n_agents: int) -> int:
    """The last iteration count for which every agent has a checkpoint."""
    common: set[int] | None = None
    for agent in range(n_agents):
        have = set(run_dir.checkpoint_iterations(agent))
        common = have if common is None else common & have
    if not common:
        raise ConfigError(f"{run_dir.root}: no checkpoint that every agent has; cannot resume")
    return max(common)


def launch(
    config: RunConfig, *, resume: Path | None = None, show_progress: bool = True
) -> LaunchResult:
    """Run one training job end to end and return its summary."""
    topology = load_checked_topology(config)
    fault_spec = faults.resolve_run_faults(config, topology)  # a bad spec fails before any start
    learners = 1 if algorithm_class(config.algo).centralized else topology.n_agents
    if fault_spec is not None and fault_spec.crash and learners != topology.n_agents:
        raise faults.FaultSpecError(
            f"fault spec {fault_spec.source}: crash: {config.algo} runs one centralized learner "
            "process, not one process per agent; crash entries cannot apply to it"
        )
    if resume is None:
        run_dir, start = new_run_dir(config), 0
    else:
        run_dir = RunDir(resume)
        start = resume_start(run_dir, learners)
        if start >= config.iterations:
            raise ConfigError(
                f"{resume}: already has {start} iterations; pass --iterations > {start}"
            )
    socket_dir = Path(tempfile.mkdtemp(prefix="p2pmarl-", dir="/tmp"))
    write_run_files(run_dir, config, topology, socket_dir)
    faults.write_run_spec(run_dir, fault_spec)  # faults_spec.json: what every agent injects
    launcher = Launcher(run_dir, config, learners, start, CrashPlan(fault_spec))
    view = ProgressView(run_dir, config, learners, start, enabled=show_progress)
    view.ended = launcher.crash_plan.ended
    exporter = TensorBoardExporter(run_dir, learners) if config.tensorboard else None

    def on_poll() -> None:
        view.update()
        if exporter is not None:
            exporter.update()

    started = time.monotonic()
    messages: list[str] = []
    try:
        launcher.spawn()
        with view:
            status, culprit = launcher.watch(on_poll)
            if status == "completed":
                culprit = launcher.wait_agents(FINISH_GRACE)
                status = "failed" if culprit else status
            view.update()
    except KeyboardInterrupt:
        status, culprit = "interrupted", None
        messages.append("interrupted: stopping every process")
    finally:
        launcher.stop_all()
        shutil.rmtree(socket_dir, ignore_errors=True)
        if exporter is not None:
            exporter.close()
    if culprit is not None:
        messages.append(launcher.describe_failure(culprit))
    summary = build_summary(
        run_dir, config, topology.n_agents, learners, status, time.monotonic() - started,
        ended=launcher.crash_plan.ended,
    )
    summary["failed_process"] = culprit
    # faults.jsonl merged (the agents' link faults and the launcher's crashes); counts
    summary.update(faults.summary_fields(run_dir, learners, launcher.crash_plan.events))
    write_json(run_dir.summary, summary)
    exit_code = {"completed": 0, "interrupted": 130}.get(status, 1)
    return LaunchResult(run_dir.root, summary, exit_code, messages)


def connect_seconds(run_dir: RunDir) -> float | None:
    """Seconds from the world's start until every agent reached its neighbours and the world."""
    for event in read_jsonl(run_dir.world_events):
        if event.get("event") == "connected":
            return float(event["seconds"])
    return None
