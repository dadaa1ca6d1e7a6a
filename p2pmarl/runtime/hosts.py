"""Per-host launch: one run spread over several hosts, each starting only its own processes.

Every host runs ``p2pmarl launch … --run-dir DIR --only PART --world-address HOST:PORT`` with the
same experiment, topology (with one ``host:port`` per agent) and seed. Each launcher writes the
same ``config.json``, ``topology.json`` and ``endpoints.json`` into its own copy of ``DIR``,
starts only the processes named by ``--only`` (agent ids and/or ``world``), and leaves in ``DIR``
its part of the run: the logs, metrics and checkpoints of its processes and a ``summary.json``
with a ``"part"`` entry. :func:`merge_parts` (``p2pmarl merge``) joins the parts into one run
directory that ``inspect`` and ``evaluate`` read like a local run.

Keys: ``p2pmarl keys DIR --topology T`` makes one CURVE key pair per agent once;
``--export DEST --only 0,1`` copies to ``DEST`` the public keys and only agents 0 and 1's
secret keys, which is what the host of agents 0 and 1 needs (see ``docs/cluster.md``).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import zmq

from p2pmarl.algos import algorithm_class
from p2pmarl.config import ConfigError, RunConfig
from p2pmarl.runtime import faults
from p2pmarl.runtime.engines.local import (
    CHILD_MODULES,
    FINISH_GRACE,
    POLL_INTERVAL,
    Child,
    LocalEngine,
    _preload,
    _tail,
)
from p2pmarl.runtime.launcher import (
    LaunchResult,
    endpoints_for,
    load_checked_topology,
    write_curve_keys,
)
from p2pmarl.runtime.progress import ProgressView
from p2pmarl.runtime.rundir import RunDir, process_seeds, write_json
from p2pmarl.runtime.summary import build_summary
from p2pmarl.runtime.transport import KEYS_DIR, agent_key_file, public_keys_file
from p2pmarl.runtime.world_link import WORLD_KEY, world_key_file
from p2pmarl.topology import Topology

logger = logging.getLogger(__name__)

WORLD = "world"
"""The token of ``--only`` that names the world process."""
PART_FILES = ("config.json", "topology.json", "endpoints.json")
"""Files every part writes identically; :func:`merge_parts` checks that they agree."""


@dataclass(frozen=True)
class HostPart:
    """The processes of a run that this host starts."""

    world: bool
    """Start the world process here."""
    agents: tuple[int, ...]
    """Agent ids started here, ascending."""

    def describe(self) -> str:
        names = ([WORLD] if self.world else []) + [str(a) for a in self.agents]
        return ",".join(names)


def parse_only(text: str, n_agents: int) -> HostPart:
    """``--only`` text (``"0,1"``, ``"world,2-3"``) → :class:`HostPart`; ConfigError if bad."""
    world, agents = False, set()
    for item in (word.strip() for word in text.split(",")):
        if item == WORLD:
            world = True
        elif re.fullmatch(r"\d+", item):
            agents.add(int(item))
        elif re.fullmatch(r"\d+-\d+", item):
            low, high = (int(x) for x in item.split("-"))
            if low > high:
                raise ConfigError(f"--only: range {item!r} is empty; write LOW-HIGH, LOW ≤ HIGH")
            agents.update(range(low, high + 1))
        else:
            raise ConfigError(
                f"--only: {item!r} is neither an agent id, a range A-B nor 'world'; "
                "write e.g. --only world,0,1 or --only 2-3"
            )
    outside = sorted(a for a in agents if a >= n_agents)
    if outside:
        raise ConfigError(
            f"--only: agents {outside} do not exist; the topology has agents 0..{n_agents - 1}"
        )
    return HostPart(world, tuple(sorted(agents)))


def parse_address(text: str) -> str:
    """``HOST:PORT`` → ``tcp://HOST:PORT``; ConfigError naming the value otherwise."""
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--world-address {text!r}: write HOST:PORT, e.g. 10.0.0.1:7000")
    return f"tcp://{host}:{port}"


# -- keys ----------------------------------------------------------------------------------------


def make_keys(run_dir: Path, topology: Topology) -> list[int]:
    """One CURVE key pair per agent of ``topology`` and one for the world in ``run_dir/keys``
    (kept if present)."""
    agents = list(range(topology.n_agents))
    if public_keys_file(run_dir).exists():
        have = json.loads(public_keys_file(run_dir).read_text())
        have.pop(WORLD_KEY, None)
        if sorted(int(a) for a in have) != agents:
            raise ConfigError(
                f"{run_dir / KEYS_DIR} holds keys for agents {sorted(int(a) for a in have)}, "
                f"the topology has agents 0..{len(agents) - 1}; remove the folder to make new keys"
            )
        return agents
    run_dir.mkdir(parents=True, exist_ok=True)
    write_curve_keys(run_dir, agents)
    public_key, secret_key = zmq.curve_keypair()
    text = json.dumps({"public": public_key.decode("ascii"), "secret": secret_key.decode("ascii")})
    descriptor = os.open(world_key_file(run_dir), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text + "\n")
    public = json.loads(public_keys_file(run_dir).read_text())
    write_json(public_keys_file(run_dir), {**public, WORLD_KEY: public_key.decode("ascii")})
    return agents


def export_keys(run_dir: Path, destination: Path, part: HostPart) -> list[Path]:
    """Copy the public keys and only ``part``'s secret keys into ``destination/keys``."""
    if not public_keys_file(run_dir).exists():
        raise ConfigError(f"{run_dir}: no keys; make them first with `p2pmarl keys {run_dir}`")
    target = destination / KEYS_DIR
    target.mkdir(parents=True, exist_ok=True, mode=0o700)
    written = [Path(shutil.copy2(public_keys_file(run_dir), public_keys_file(destination)))]
    sources = [agent_key_file(run_dir, agent) for agent in part.agents]
    for source in sources + ([world_key_file(run_dir)] if part.world else []):
        if not source.exists():
            raise ConfigError(f"{source} is missing; `p2pmarl keys {run_dir}` makes every key")
        written.append(Path(shutil.copy2(source, target / source.name)))
    return written


def check_part_keys(run_dir: Path, part: HostPart) -> None:
    """The keys a host needs before it starts: public.json and its own agents' secret keys."""
    needed = [public_keys_file(run_dir)] + [agent_key_file(run_dir, a) for a in part.agents]
    needed += [world_key_file(run_dir)] if part.world else []
    missing = [str(path) for path in needed if not path.exists()]
    if missing:
        raise ConfigError(
            f"this host's part ({part.describe()}) lacks CURVE keys {missing}; make them once "
            "with `p2pmarl keys RUN_DIR --topology FILE` and copy each host its part with "
            "`p2pmarl keys RUN_DIR --topology FILE --only AGENTS --export DIR`"
        )


# -- launching one host's part ------------------------------------------------------------------


def part_endpoints(topology: Topology, world_address: str, centralized: bool) -> dict:
    """tcp:// endpoints of every process; every agent must have a topology address."""
    without = [a for a in range(topology.n_agents) if a not in topology.addresses]
    if without:
        raise ConfigError(
            f"topology {topology.source}: agents {without} have no address; a run spread over "
            "hosts needs one host:port per agent (addresses: in the topology file)"
        )
    endpoints = endpoints_for(topology, Path("/nonexistent"), centralized)
    endpoints["world"] = world_address
    return endpoints


def write_part_files(
    run_dir: RunDir, config: RunConfig, topology: Topology, endpoints: dict
) -> None:
    """The files every host writes identically (no command line or versions: those differ)."""
    world_seed, agent_seeds = process_seeds(config.seed, topology.n_agents)
    write_json(
        run_dir.config,
        {"config": config.to_dict(), "seeds": {"world": world_seed, "agents": agent_seeds}},
    )
    topology.save_node_link(run_dir.topology)
    write_json(run_dir.endpoints, endpoints)


class PartLauncher(LocalEngine):
    """Starts and watches one host's processes; the other hosts' are out of its sight."""

    def __init__(self, run_dir: RunDir, config: RunConfig, part: HostPart, endpoints: dict):
        super().__init__(run_dir, config, len(part.agents), 0)
        self.part = part
        self.endpoints = endpoints

    def spawn(self) -> None:
        _preload()
        if self.part.world:
            self._spawn(WORLD, CHILD_MODULES[0], self._common(0), self.run_dir.world_log)
        for agent in self.part.agents:
            args = [*self._common(0), "--agent", str(agent), "--life", "0"]
            self._spawn(f"agent {agent}", CHILD_MODULES[1], args, self.run_dir.agent_log(agent),
                        None)
            self.children[-1].agent = agent
        self._write_pids()

    def _agents_running(self) -> list[Child]:
        return [child for child in self.children if child.agent is not None]

    def watch(self, on_poll) -> tuple[str, str | None]:
        """With the world here: as a local run. Without: until every agent here has exited."""
        if self.part.world:
            return super().watch(on_poll)
        while True:
            on_poll()
            codes = [(child, child.poll()) for child in self._agents_running()]
            for child, code in codes:
                if code is not None and code != 0:
                    return "failed", child.name
            if all(code == 0 for _, code in codes):
                return "completed", None
            time.sleep(POLL_INTERVAL)

    def describe_failure(self, name: str) -> str:
        """The local description plus the address of every process the failure names."""
        text = super().describe_failure(name)
        child = next(c for c in self.children if c.name == name)
        tail = "\n".join(_tail(child.log, 40) + _tail(child.output, 40))
        return text + "".join("\n" + line for line in self.where(tail))

    def where(self, text: str) -> list[str]:
        """Where the processes a log line names were expected, and who should have started them."""
        lines = []
        named: set[int] = set()
        for match in re.finditer(r"(?:agents|neighbours) \[([\d, ]+)\]", text):
            named.update(int(x) for x in match.group(1).split(","))
        for agent in sorted(named):
            address = self.endpoints["agents"].get(str(agent), "?")
            host = "this host" if agent in self.part.agents else "another host"
            lines.append(f"  agent {agent} listens on {address} (started by {host}'s launcher); "
                         "check that its host runs `p2pmarl launch … --only` with it and that "
                         "the address is reachable (firewall, docs/cluster.md)")
        if "from the world" in text:
            lines.append(f"  the world listens on {self.endpoints['world']}; check that its host "
                         "runs `p2pmarl launch … --world-only` and that the address is reachable")
        if "Address already in use" in text or "Cannot assign requested address" in text:
            lines.append("  a socket could not be bound: the address must belong to this host and "
                         "the port be free (see docs/cluster.md, ports)")
        return lines


def launch_part(
    config: RunConfig, root: Path, only: str, world_address: str | None,
    show_progress: bool = True,
) -> LaunchResult:
    """Start this host's part of a run spread over hosts in ``root`` and wait for it to end."""
    if world_address is None:
        raise ConfigError("--only/--world-only need --world-address HOST:PORT (the world's tcp "
                          "address, the same on every host)")
    topology = load_checked_topology(config)
    part = parse_only(only, topology.n_agents)
    centralized = algorithm_class(config.algo).centralized
    if centralized:
        raise ConfigError(f"{config.algo} runs one centralized learner; it cannot be spread "
                          "over hosts")
    fault_spec = faults.resolve_run_faults(config, topology)
    if fault_spec is not None and fault_spec.crash:
        raise ConfigError("crash entries of a fault spec are executed by the launcher of one "
                          "host; a run spread over hosts cannot have them (link faults are fine)")
    endpoints = part_endpoints(topology, parse_address(world_address), centralized)
    check_part_keys(root, part)
    run_dir = RunDir(root)
    write_part_files(run_dir, config, topology, endpoints)
    faults.write_run_spec(run_dir, fault_spec)
    launcher = PartLauncher(run_dir, config, part, endpoints)
    local = list(part.agents)
    view = ProgressView(run_dir, config, topology.n_agents, 0, enabled=show_progress)
    view.ended = set(range(topology.n_agents)) - set(local)
    started = time.monotonic()
    messages: list[str] = []
    try:
        launcher.spawn()
        with view:
            status, culprit = launcher.watch(view.update)
            if status == "completed":
                culprit = launcher.wait_agents(FINISH_GRACE)
                status = "failed" if culprit else status
    except KeyboardInterrupt:
        status, culprit = "interrupted", None
        messages.append("interrupted: stopping this host's processes")
    finally:
        launcher.stop_all()
    if culprit is not None:
        messages.append(launcher.describe_failure(culprit))
    summary = _part_summary(run_dir, config, topology, part, status, time.monotonic() - started)
    summary["failed_process"] = culprit
    write_json(run_dir.summary, summary)
    exit_code = {"completed": 0, "interrupted": 130}.get(status, 1)
    return LaunchResult(run_dir.root, summary, exit_code, messages)


def _part_summary(
    run_dir: RunDir, config: RunConfig, topology: Topology, part: HostPart, status: str,
    seconds: float,
) -> dict:
    """The summary of this host's agents only (the others count as absent), marked ``part``."""
    absent = set(range(topology.n_agents)) - set(part.agents)
    summary = build_summary(run_dir, config, topology.n_agents, topology.n_agents, status,
                            seconds, ended=absent)
    summary["part"] = {"world": part.world, "agents": list(part.agents)}
    return summary


# -- merging the parts --------------------------------------------------------------------------


def merge_parts(destination: Path, parts: list[Path]) -> dict:
    """Join the run directories of a run's parts into ``destination``; returns its summary.

    The parts must be of the same run (identical config, topology and endpoints files), hold
    every agent exactly once and the world once. Secret keys are not copied.
    """
    if destination.exists() and any(destination.iterdir()):
        raise ConfigError(f"merge: {destination} exists and is not empty; name a new folder")
    summaries = [_read_part(part) for part in parts]
    reference = {name: (parts[0] / name).read_text() for name in PART_FILES}
    for part in parts[1:]:
        for name in PART_FILES:
            if (part / name).read_text() != reference[name]:
                raise ConfigError(f"merge: {part / name} differs from {parts[0] / name}; the "
                                  "parts are not of the same run")
    n_agents = json.loads(reference["endpoints.json"])["n_env_agents"]
    owner: dict[str, Path] = {}
    for part, summary in zip(parts, summaries, strict=True):
        names = ([WORLD] if summary["part"]["world"] else []) + [
            f"agent {a}" for a in summary["part"]["agents"]
        ]
        for name in names:
            if name in owner:
                raise ConfigError(f"merge: {name} is in two parts, {owner[name]} and {part}")
            owner[name] = part
    missing = [n for n in [WORLD] + [f"agent {a}" for a in range(n_agents)] if n not in owner]
    if missing:
        raise ConfigError(f"merge: no part holds {missing}; pass every host's run directory")
    destination.mkdir(parents=True, exist_ok=True)
    for name, text in reference.items():
        (destination / name).write_text(text)
    for part, summary in zip(parts, summaries, strict=True):
        _copy_part(part, destination, summary["part"])
    if public_keys_file(parts[0]).exists():
        (destination / KEYS_DIR).mkdir(mode=0o700)
        shutil.copy2(public_keys_file(parts[0]), public_keys_file(destination))
    return _merged_summary(destination, parts, summaries, n_agents)


def _read_part(part: Path) -> dict:
    path = part / "summary.json"
    if not path.exists():
        raise ConfigError(f"merge: {path} is missing; is {part} a finished host's run directory?")
    summary = json.loads(path.read_text())
    if "part" not in summary:
        raise ConfigError(f"merge: {part} is a whole run, not one host's part")
    return summary


def _copy_part(part: Path, destination: Path, members: dict) -> None:
    if members["world"]:
        for name in ("world.log", "world.jsonl", "world.out", faults.SPEC_FILE):
            if (part / name).exists():
                shutil.copy2(part / name, destination / name)
    for agent in members["agents"]:
        shutil.copytree(part / "agents" / f"agent-{agent}",
                        destination / "agents" / f"agent-{agent}")


def _merged_summary(
    destination: Path, parts: list[Path], summaries: list[dict], n_agents: int
) -> dict:
    from p2pmarl.config import read_run_config

    run_dir = RunDir(destination)
    config = read_run_config(destination)
    failed = [s for s in summaries if s["status"] != "completed"]
    status = failed[0]["status"] if failed else "completed"
    seconds = max(float(s["wall_seconds"]) for s in summaries)
    summary = build_summary(run_dir, config, n_agents, n_agents, status, seconds)
    summary["failed_process"] = next(
        (s["failed_process"] for s in failed if s.get("failed_process")), None
    )
    summary.update(faults.summary_fields(run_dir, n_agents))
    summary["parts"] = [
        {"run_dir": str(p), **s["part"], "status": s["status"]}
        for p, s in zip(parts, summaries, strict=True)
    ]
    write_json(run_dir.summary, summary)
    return summary
