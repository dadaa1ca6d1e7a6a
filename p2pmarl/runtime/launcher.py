"""The launcher: turns a config and a topology into one world and N agent processes, and watches.

It takes no part in learning. It writes the run directory, has an engine
(:mod:`p2pmarl.runtime.engines`: forked processes here, or Ray actors on a cluster) start the
processes, shows progress from the files the processes write, stops everything on Ctrl-C or when
a process dies unplanned, and writes ``summary.json``.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import zmq

from p2pmarl.algos import algorithm_class
from p2pmarl.config import ConfigError, RunConfig
from p2pmarl.envs import env_spec
from p2pmarl.runtime import faults
from p2pmarl.runtime.crashes import CrashPlan
from p2pmarl.runtime.engines import Engine, EngineOptions
from p2pmarl.runtime.engines.local import FINISH_GRACE, LocalEngine
from p2pmarl.runtime.progress import ProgressView
from p2pmarl.runtime.rundir import RunDir, process_seeds, read_jsonl, write_json
from p2pmarl.runtime.summary import build_summary
from p2pmarl.runtime.tensorboard import TensorBoardExporter
from p2pmarl.runtime.transport import KEYS_DIR, agent_key_file, public_keys_file
from p2pmarl.topology import Topology, load_topology

PACKAGES = ("p2pmarl", "torch", "pyzmq", "msgpack", "numpy", "networkx", "pettingzoo", "mpe2")


def honour_interrupts() -> None:
    """Make SIGINT stop a run (KeyboardInterrupt, exit 130) even if it was inherited as ignored.

    A shell without job control starts a background command (``p2pmarl launch ... &`` in a
    script, ``( cmd & )``) with SIGINT ignored, and Python keeps an inherited "ignore": such a
    launcher never stopped on ``kill -INT`` (seen as an intermittent ``test_ctrl_c...`` failure
    whenever the test suite itself ran in the background). Called by the CLI's ``launch`` only,
    in the main thread, before any process starts.
    """
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


@dataclass
class LaunchResult:
    """What the launcher hands back to the CLI."""

    run_dir: Path
    summary: dict
    exit_code: int
    messages: list[str] = field(default_factory=list)


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
    run_dir: RunDir, config: RunConfig, topology: Topology, socket_dir: Path | None
) -> None:
    """config.json and topology.json; endpoints.json and CURVE keys unless ``socket_dir`` is
    None (an engine that places processes itself, Ray, writes those once they are bound)."""
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
    keys = run_dir.root / KEYS_DIR
    shutil.rmtree(keys, ignore_errors=True)  # a resumed run gets fresh keys
    if socket_dir is None:
        return
    centralized = algorithm_class(config.algo).centralized
    endpoints = endpoints_for(topology, socket_dir, centralized, config.world_link)
    write_json(run_dir.endpoints, endpoints)
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


def endpoints_for(
    topology: Topology, socket_dir: Path, centralized: bool = False, world_link: str = "unix"
) -> dict:
    """ipc:// sockets in a short temporary folder, or tcp:// where the topology has addresses;
    the world's is a Unix socket there (``unix://``) unless ``world_link`` is ``zmq``.

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
        "world": f"unix://{socket_dir}/world.sock" if world_link == "unix"
        else f"ipc://{socket_dir}/world",
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



def resume_start(run_dir: RunDir, n_agents: int) -> int:
    """The last iteration count for which every agent has a checkpoint."""
    common: set[int] | None = None
    for agent in range(n_agents):
        have = set(run_dir.checkpoint_iterations(agent))
        common = have if common is None else common & have
    if not common:
        raise ConfigError(f"{run_dir.root}: no checkpoint that every agent has; cannot resume")
    return max(common)


def make_engine(
    options: EngineOptions, run_dir: RunDir, config: RunConfig, topology: Topology,
    learners: int, start: int, crash_plan: CrashPlan,
) -> Engine:
    """The engine ``options`` names (the Ray one is imported only when asked for)."""
    if options.name == "local":
        return LocalEngine(run_dir, config, learners, start, crash_plan)
    from p2pmarl.runtime.engines.ray import RayEngine

    return RayEngine(run_dir, config, topology, learners, start, crash_plan, options)


def launch(
    config: RunConfig, *, resume: Path | None = None, show_progress: bool = True,
    engine: EngineOptions | None = None,
) -> LaunchResult:
    """Run one training job end to end and return its summary.

    ``engine`` places the processes (default: forked on this machine, ``EngineOptions()``).
    """
    options = engine or EngineOptions()
    topology = load_checked_topology(config)
    fault_spec = faults.resolve_run_faults(config, topology)  # a bad spec fails before any start
    learners = 1 if algorithm_class(config.algo).centralized else topology.n_agents
    if fault_spec is not None and fault_spec.crash and learners != topology.n_agents:
        raise faults.FaultSpecError(
            f"fault spec {fault_spec.source}: crash: {config.algo} runs one centralized learner "
            "process, not one process per agent; crash entries cannot apply to it"
        )
    options.check_faults(fault_spec)
    if resume is None:
        run_dir, start = new_run_dir(config), 0
    else:
        run_dir = RunDir(resume)
        start = resume_start(run_dir, learners)
        if start >= config.iterations:
            raise ConfigError(
                f"{resume}: already has {start} iterations; pass --iterations > {start}"
            )
    local = options.name == "local"
    socket_dir = Path(tempfile.mkdtemp(prefix="p2pmarl-", dir="/tmp")) if local else None
    crash_plan = CrashPlan(fault_spec)
    launcher = make_engine(options, run_dir, config, topology, learners, start, crash_plan)
    write_run_files(run_dir, config, topology, socket_dir)
    faults.write_run_spec(run_dir, fault_spec)  # faults_spec.json: what every agent injects
    view = ProgressView(run_dir, config, learners, start, enabled=show_progress)
    view.ended = crash_plan.ended
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
        if socket_dir is not None:
            shutil.rmtree(socket_dir, ignore_errors=True)
        if exporter is not None:
            exporter.close()
    if culprit is not None:
        messages.append(launcher.describe_failure(culprit))
    summary = build_summary(
        run_dir, config, topology.n_agents, learners, status, time.monotonic() - started,
        ended=crash_plan.ended,
    )
    summary["failed_process"] = culprit
    # faults.jsonl merged (the agents' link faults and the launcher's crashes); counts
    summary.update(faults.summary_fields(run_dir, learners, crash_plan.events))
    summary["engine"] = launcher.describe()
    write_json(run_dir.summary, summary)
    exit_code = {"completed": 0, "interrupted": 130}.get(status, 1)
    return LaunchResult(run_dir.root, summary, exit_code, messages)


def connect_seconds(run_dir: RunDir) -> float | None:
    """Seconds from the world's start until every agent reached its neighbours and the world."""
    for event in read_jsonl(run_dir.world_events):
        if event.get("event") == "connected":
            return float(event["seconds"])
    return None
