"""Link-failure injection between graph neighbours: a fault spec and a :class:`FaultyTransport`.

ZeroMQ runs over TCP (or ipc), which hides packet loss, so faults are injected at the application
level: every agent wraps its peer transport in a :class:`FaultyTransport`, which decides for each
outgoing message whether the network loses it, holds it back (delay) or delivers it. Only the
sender decides, so a link that is *down* is down because both of its endpoints drop what they send
over it. The world link (world ↔ agent) is never faulted: it is not a graph edge.

The spec (``--faults FILE``, YAML or JSON; ``--drop P`` alone makes a spec with a global drop)::

    seed: 7                                  # fault RNG seed (default: the run's seed)
    drop: 0.1                                # every message is lost with this probability
    links:                                   # per-link drop, replaces `drop` on that edge
      - {edge: [0, 1], drop: 0.5}
    burst:                                   # Gilbert–Elliott chain per directed link
      {p_good_to_bad: 0.05, p_bad_to_good: 0.3, drop_in_bad: 0.9, drop_in_good: 0.0}
    delay: {mean_seconds: 0.05, jitter_seconds: 0.02, probability: 1.0}
    down:                                    # one edge down in a window
      - {edge: [2, 3], from_iteration: 1, to_iteration: 2}
      - {edge: [0, 5], from_seconds: 10, to_seconds: 20}
    partitions:                              # several edges down together
      - {edges: [[0, 1], [3, 4]], from_iteration: 3, to_iteration: 3}
      - {groups: [[0, 1, 2], [3, 4, 5]], from_seconds: 30}
    crash:                                   # SIGKILL an agent process
      - {agent: 4, at_iteration: 1, restart: true}    # at the start of iteration 1, restarted
      - {agent: 4, at_seconds: 40}                     # its restarted process, 40 s into the run

Crashes: an entry kills one process of the agent with SIGKILL, either at the start of
``at_iteration`` (the agent kills itself there, so the point is exact and reproducible) or
``at_seconds`` after the launcher started the run (the launcher sends the signal). The n-th entry of
an agent applies to its n-th process: with ``restart: true`` the launcher starts a new process from
the agent's last checkpoint (its initial weights if it has none), which rejoins the running world
at its next iteration, and the agent's next entry, if any, applies to that process. What follows a
crash (detection by the neighbours and the world, the fallback action) is described in
``docs/faults.md``.

Iteration windows are inclusive (``from_iteration`` ≤ k ≤ ``to_iteration``); seconds windows are
half-open, ``[from_seconds, to_seconds)`` of wall time since the launcher started the run;
activation windows are inclusive and apply only to ADMM messages, by the ``activation`` index they
carry (seeded schedule: the position in Algorithm 1's edge sequence, the same at both ends; async:
the initiator's own count), in every iteration the other bounds allow. A missing bound is open; a
window with several kinds of bounds needs all of them to hold.

Reproducibility: each directed link (this agent → one neighbour) has two random streams, one for
the transport's heartbeats and one for everything else, derived from ``(seed, agent, neighbour)``
with numpy's SeedSequence; every message draws the same number of variates whatever happens to
it. The same seed and the same sequence of messages therefore give the same fault trace, and
heartbeats (whose number depends on timing) never shift the trace of the algorithm's messages.
The transport's ``hello`` (connection set-up) is never faulted.

Every injected event is one JSON line in ``agents/agent-I/faults.jsonl``; after the run,
:func:`merge_fault_logs` merges them into ``RUN_DIR/faults.jsonl`` and counts them for
``summary.json["faults"]``.
"""

from __future__ import annotations

import heapq
import itertools
import json
import logging
import math
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import IO, Any, NamedTuple

import numpy as np
import yaml

from p2pmarl.config import ConfigError, RunConfig
from p2pmarl.runtime.rundir import RunDir, read_jsonl, write_json
from p2pmarl.runtime.transport import Transport
from p2pmarl.topology import Topology

logger = logging.getLogger(__name__)

Edge = tuple[int, int]
"""An undirected graph edge (i, j) with i < j."""

EXEMPT_KINDS = frozenset({"hello"})
"""Kinds never faulted: the transport's connection set-up."""
HEARTBEAT_KINDS = frozenset({"heartbeat"})
"""Kinds drawn from their own random stream (their number depends on timing)."""
SPEC_FILE = "faults_spec.json"
"""The resolved spec the launcher writes into the run directory; agents read it."""
AGENT_LOG = "faults.jsonl"
"""Per-agent event log name (``agents/agent-I/faults.jsonl``) and the merged log's name."""
MIN_WAIT = 0.001
"""Shortest receive wait while a delayed frame is about to fall due (no busy loop)."""
VARIATES = 5
"""Uniform variates drawn per message: burst transition, burst loss, drop, delay?, delay size."""
LINK_CHECK_SECONDS = 0.1
"""How often (at most) an agent compares its links' injected outages with the last state it
logged; a change is logged as a ``link_down``/``link_up`` event (``p2pmarl inspect``'s
``down_seconds``)."""


class FaultSpecError(ConfigError):
    """A fault spec that cannot be used; the message names the file and the key."""


# -- the spec ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    """When a fault holds: inclusive iteration and activation bounds and/or half-open seconds
    bounds; every bound given must hold."""

    from_iteration: int | None = None
    to_iteration: int | None = None
    from_seconds: float | None = None
    to_seconds: float | None = None
    from_activation: int | None = None
    to_activation: int | None = None

    def active(self, iteration: int, seconds: float, activation: int | None = None) -> bool:
        """Whether the window covers iteration ``iteration`` at ``seconds`` into the run, for a
        message about ADMM activation ``activation`` (None: not about an activation)."""
        if self.from_iteration is not None and iteration < self.from_iteration:
            return False
        if self.to_iteration is not None and iteration > self.to_iteration:
            return False
        if self.from_seconds is not None and seconds < self.from_seconds:
            return False
        if self.to_seconds is not None and seconds >= self.to_seconds:
            return False
        if self.from_activation is None and self.to_activation is None:
            return True
        if activation is None:
            return False
        if self.from_activation is not None and activation < self.from_activation:
            return False
        return self.to_activation is None or activation <= self.to_activation


@dataclass(frozen=True)
class LinkDrop:
    """Drop probability of one edge (both directions), replacing the global ``drop``."""

    edge: Edge
    drop: float


@dataclass(frozen=True)
class Burst:
    """Gilbert–Elliott loss: a two-state (good/bad) Markov chain per directed link, one step per
    message; the message is then lost with the state's drop probability."""

    p_good_to_bad: float
    p_bad_to_good: float
    drop_in_bad: float = 1.0
    drop_in_good: float = 0.0

    @property
    def stationary_drop(self) -> float:
        """Long-run fraction of messages this chain loses."""
        total = self.p_good_to_bad + self.p_bad_to_good
        bad = self.p_good_to_bad / total if total > 0 else 0.0
        return bad * self.drop_in_bad + (1 - bad) * self.drop_in_good


@dataclass(frozen=True)
class Delay:
    """With ``probability``, hold a message back mean ± jitter seconds (uniform, at least 0)."""

    mean_seconds: float
    jitter_seconds: float = 0.0
    probability: float = 1.0


@dataclass(frozen=True)
class LinkDown:
    """One edge down (both directions) while ``window`` holds."""

    edge: Edge
    window: Window


@dataclass(frozen=True)
class Partition:
    """Edges down together while ``window`` holds: the listed ``edges``, and with ``groups``
    every edge whose endpoints lie in different groups (unlisted agents form one more group)."""

    window: Window
    edges: tuple[Edge, ...] = ()
    groups: tuple[tuple[int, ...], ...] = ()

    def cuts(self, edge: Edge) -> bool:
        if edge in self.edges:
            return True
        if not self.groups:
            return False
        return self._group_of(edge[0]) != self._group_of(edge[1])

    def _group_of(self, agent: int) -> int:
        return next((n for n, group in enumerate(self.groups) if agent in group), -1)


@dataclass(frozen=True)
class Crash:
    """Agent ``agent``'s process is SIGKILLed at the start of ``at_iteration`` or ``at_seconds``
    into the run (exactly one is set); ``restart`` starts it again from its last checkpoint."""

    agent: int
    at_iteration: int | None = None
    at_seconds: float | None = None
    restart: bool = False


@dataclass(frozen=True)
class FaultSpec:
    """Every fault of a run. ``source`` names the file, for error messages only."""

    seed: int | None = None
    drop: float = 0.0
    links: tuple[LinkDrop, ...] = ()
    burst: Burst | None = None
    delay: Delay | None = None
    down: tuple[LinkDown, ...] = ()
    partitions: tuple[Partition, ...] = ()
    crash: tuple[Crash, ...] = ()
    source: str = field(default="<spec>", compare=False)

    def link_drop(self, edge: Edge) -> float | None:
        """The per-link override of ``edge``, if any (the last entry wins)."""
        found = [link.drop for link in self.links if link.edge == edge]
        return found[-1] if found else None

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON/YAML) that :func:`parse_spec` reads back into an equal spec."""
        data = asdict(self)
        data.pop("source")
        data["down"] = [{"edge": d["edge"], **_window_dict(d["window"])} for d in data["down"]]
        data["partitions"] = [_partition_dict(p) for p in data["partitions"]]
        return _lists(data)


def _window_dict(window: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in window.items() if v is not None}


def _partition_dict(partition: Mapping[str, Any]) -> dict[str, Any]:
    data = {k: v for k, v in partition.items() if k != "window" and v}
    return {**data, **_window_dict(partition["window"])}


def _lists(value: Any) -> Any:
    """Tuples → lists, recursively (what JSON/YAML give back)."""
    if isinstance(value, dict):
        return {k: _lists(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_lists(v) for v in value]
    return value


# -- parsing and validation --------------------------------------------------------------------


class _Parser:
    """Checks one spec mapping; every error names the file and the key path."""

    TOP = ("seed", "drop", "links", "burst", "delay", "down", "partitions", "crash")
    WINDOW = ("from_iteration", "to_iteration", "from_seconds", "to_seconds",
              "from_activation", "to_activation")

    def __init__(self, source: str) -> None:
        self.source = source

    def error(self, key: str, problem: str) -> FaultSpecError:
        return FaultSpecError(f"fault spec {self.source}: {key}: {problem}")

    def mapping(self, value: Any, key: str, allowed: Iterable[str]) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.error(key, f"must be a mapping, got {type(value).__name__}")
        allowed = tuple(allowed)
        for name in value:
            if name not in allowed:
                raise self.error(
                    f"{key}.{name}" if key else str(name),
                    f"unknown key; known: {', '.join(allowed)}",
                )
        return value

    def items(self, value: Any, key: str) -> list[Any]:
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.error(key, f"must be a list, got {type(value).__name__}")
        return value

    def required(self, data: Mapping[str, Any], name: str, key: str) -> Any:
        if name not in data:
            raise self.error(f"{key}.{name}", "is required")
        return data[name]

    def integer(self, value: Any, key: str, minimum: int = 0) -> int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise self.error(key, f"must be an integer, got {value!r}")
        if value < minimum:
            raise self.error(key, f"must be ≥ {minimum}, got {value}")
        return value

    def number(self, value: Any, key: str) -> float:
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise self.error(key, f"must be a number, got {value!r}")
        if not math.isfinite(value) or value < 0:
            raise self.error(key, f"must be a finite number ≥ 0, got {value}")
        return float(value)

    def probability(self, value: Any, key: str, below_one: bool = False) -> float:
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise self.error(key, f"must be a probability, got {value!r}")
        top_ok = value < 1 if below_one else value <= 1
        if not (math.isfinite(value) and value >= 0 and top_ok):
            interval = "[0, 1)" if below_one else "[0, 1]"
            raise self.error(key, f"must be a probability in {interval}, got {value}")
        return float(value)

    def edge(self, value: Any, key: str) -> Edge:
        ok = isinstance(value, list | tuple) and len(value) == 2
        if not ok or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise self.error(key, f"must be a pair of agent ids [i, j], got {value!r}")
        i, j = value
        if i == j or min(i, j) < 0:
            raise self.error(key, f"{[i, j]} is not an edge between two agents")
        return (min(i, j), max(i, j))

    def window(self, data: Mapping[str, Any], key: str) -> Window:
        bounds = {n: data.get(n) for n in self.WINDOW}
        if all(v is None for v in bounds.values()):
            raise self.error(key, f"needs a window: one of {', '.join(self.WINDOW)}")
        its = [self.integer(bounds[n], f"{key}.{n}") if bounds[n] is not None else None
               for n in self.WINDOW[:2]]
        secs = [self.number(bounds[n], f"{key}.{n}") if bounds[n] is not None else None
                for n in self.WINDOW[2:4]]
        acts = [self.integer(bounds[n], f"{key}.{n}") if bounds[n] is not None else None
                for n in self.WINDOW[4:]]
        if None not in its and its[1] < its[0]:
            raise self.error(f"{key}.to_iteration", f"{its[1]} is before from_iteration {its[0]}")
        if None not in secs and secs[1] <= secs[0]:
            raise self.error(f"{key}.to_seconds", f"{secs[1]} is not after from_seconds {secs[0]}")
        if None not in acts and acts[1] < acts[0]:
            raise self.error(
                f"{key}.to_activation", f"{acts[1]} is before from_activation {acts[0]}"
            )
        return Window(its[0], its[1], secs[0], secs[1], acts[0], acts[1])

    # -- sections ------------------------------------------------------------------------------
    def spec(self, data: Any) -> FaultSpec:
        data = self.mapping(data, "", self.TOP)
        seed = data.get("seed")
        return FaultSpec(
            seed=None if seed is None else self.integer(seed, "seed"),
            drop=self.probability(data.get("drop", 0.0), "drop", below_one=True),
            links=tuple(self.link(v, f"links[{n}]")
                        for n, v in enumerate(self.items(data.get("links"), "links"))),
            burst=None if data.get("burst") is None else self.burst(data["burst"]),
            delay=None if data.get("delay") is None else self.delay(data["delay"]),
            down=tuple(self.down(v, f"down[{n}]")
                       for n, v in enumerate(self.items(data.get("down"), "down"))),
            partitions=tuple(
                self.partition(v, f"partitions[{n}]")
                for n, v in enumerate(self.items(data.get("partitions"), "partitions"))
            ),
            crash=self.crashes(self.items(data.get("crash"), "crash")),
            source=self.source,
        )

    def link(self, value: Any, key: str) -> LinkDrop:
        data = self.mapping(value, key, ("edge", "drop"))
        edge = self.edge(self.required(data, "edge", key), f"{key}.edge")
        return LinkDrop(edge, self.probability(self.required(data, "drop", key), f"{key}.drop"))

    def burst(self, value: Any) -> Burst:
        names = ("p_good_to_bad", "p_bad_to_good", "drop_in_bad", "drop_in_good")
        data = self.mapping(value, "burst", names)
        for name in names[:2]:
            self.required(data, name, "burst")
        values = {n: self.probability(data[n], f"burst.{n}") for n in names if n in data}
        return Burst(**values)

    def delay(self, value: Any) -> Delay:
        data = self.mapping(value, "delay", ("mean_seconds", "jitter_seconds", "probability"))
        mean = self.number(self.required(data, "mean_seconds", "delay"), "delay.mean_seconds")
        jitter = self.number(data.get("jitter_seconds", 0.0), "delay.jitter_seconds")
        chance = self.probability(data.get("probability", 1.0), "delay.probability")
        return Delay(mean, jitter, chance)

    def down(self, value: Any, key: str) -> LinkDown:
        data = self.mapping(value, key, ("edge", *self.WINDOW))
        edge = self.edge(self.required(data, "edge", key), f"{key}.edge")
        return LinkDown(edge, self.window(data, key))

    def partition(self, value: Any, key: str) -> Partition:
        data = self.mapping(value, key, ("edges", "groups", *self.WINDOW))
        if not data.get("edges") and not data.get("groups"):
            raise self.error(key, "needs `edges` (a list of [i, j]) or `groups` (lists of agents)")
        edges = tuple(self.edge(e, f"{key}.edges[{n}]")
                      for n, e in enumerate(self.items(data.get("edges"), f"{key}.edges")))
        groups = tuple(self.group(g, f"{key}.groups[{n}]")
                       for n, g in enumerate(self.items(data.get("groups"), f"{key}.groups")))
        seen = [agent for group in groups for agent in group]
        if len(seen) != len(set(seen)):
            raise self.error(f"{key}.groups", "an agent is in more than one group")
        return Partition(self.window(data, key), edges, groups)

    def group(self, value: Any, key: str) -> tuple[int, ...]:
        agents = self.items(value, key)
        if not agents:
            raise self.error(key, "must list at least one agent")
        return tuple(self.integer(a, f"{key}[{n}]") for n, a in enumerate(agents))

    def crash(self, value: Any, key: str) -> Crash:
        data = self.mapping(value, key, ("agent", "at_iteration", "at_seconds", "restart"))
        agent = self.integer(self.required(data, "agent", key), f"{key}.agent")
        given = [name for name in ("at_iteration", "at_seconds") if data.get(name) is not None]
        if len(given) != 1:
            raise self.error(key, "needs exactly one of at_iteration, at_seconds")
        at_iteration = at_seconds = None
        if given[0] == "at_iteration":
            at_iteration = self.integer(data["at_iteration"], f"{key}.at_iteration")
        else:
            at_seconds = self.number(data["at_seconds"], f"{key}.at_seconds")
        restart = data.get("restart", False)
        if not isinstance(restart, bool):
            raise self.error(f"{key}.restart", f"must be true or false, got {restart!r}")
        return Crash(agent, at_iteration, at_seconds, restart)

    def crashes(self, values: list[Any]) -> tuple[Crash, ...]:
        """Crash entries; an agent's entries after one without restart could never happen."""
        crashes = tuple(self.crash(v, f"crash[{n}]") for n, v in enumerate(values))
        ended: set[int] = set()
        for n, crash in enumerate(crashes):
            if crash.agent in ended:
                raise self.error(
                    f"crash[{n}]", f"agent {crash.agent} already crashed without restart "
                    "in an earlier entry; this one could never happen"
                )
            if not crash.restart:
                ended.add(crash.agent)
        return crashes


def parse_spec(data: Any, source: str = "<spec>") -> FaultSpec:
    """Check a spec mapping (as read from YAML/JSON) and build the :class:`FaultSpec`."""
    if data is None:
        data = {}
    return _Parser(source).spec(data)


def load_spec(path: str | Path, topology: Topology | None = None) -> FaultSpec:
    """Read and check a fault spec file (YAML or JSON); with ``topology``, check it fits too."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise FaultSpecError(f"cannot read fault spec {path}: {error.strerror}") from error
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError) as error:
        raise FaultSpecError(f"fault spec {path} is not valid YAML/JSON: {error}") from error
    spec = parse_spec(data, str(path))
    if topology is not None:
        check_topology(spec, topology)
    return spec


def check_topology(spec: FaultSpec, topology: Topology) -> None:
    """Every edge named must be an edge of the topology, every agent id one of its agents."""
    parser = _Parser(spec.source)
    edges = set(topology.edges)
    named = [(f"links[{n}].edge", link.edge) for n, link in enumerate(spec.links)]
    named += [(f"down[{n}].edge", down.edge) for n, down in enumerate(spec.down)]
    for n, partition in enumerate(spec.partitions):
        named += [(f"partitions[{n}].edges[{m}]", e) for m, e in enumerate(partition.edges)]
    for key, edge in named:
        if edge not in edges:
            raise parser.error(
                key, f"{list(edge)} is not an edge of topology {topology.source} "
                f"({topology.n_agents} agents, {len(edges)} edges)"
            )
    agents = [(f"crash[{n}].agent", crash.agent) for n, crash in enumerate(spec.crash)]
    for n, partition in enumerate(spec.partitions):
        agents += [(f"partitions[{n}].groups", a) for group in partition.groups for a in group]
    for key, agent in agents:
        if not 0 <= agent < topology.n_agents:
            raise parser.error(
                key, f"agent {agent} is out of range for topology {topology.source} "
                f"(valid ids are 0..{topology.n_agents - 1})"
            )


# -- run level: config → spec, what the launcher and the agents call ----------------------------


def resolve_run_faults(config: RunConfig, topology: Topology) -> FaultSpec | None:
    """The run's fault spec: ``config.faults`` with ``config.drop`` replacing its global drop and
    the run seed filling a missing ``seed``; None when the config asks for no faults."""
    if not config.faults and config.drop is None:
        return None
    spec = load_spec(config.faults, topology) if config.faults else FaultSpec(source="--drop")
    if config.drop is not None:
        spec = replace(spec, drop=config.drop)
    if spec.seed is None:
        spec = replace(spec, seed=config.seed)
    return spec


def agent_crashes(spec: FaultSpec | None, agent: int) -> list[Crash]:
    """Agent ``agent``'s crash entries in order: entry n applies to its process of life n."""
    return [] if spec is None else [crash for crash in spec.crash if crash.agent == agent]


def crash_iteration(spec: FaultSpec, agent: int, life: int) -> int | None:
    """The iteration at whose start the agent's process of life ``life`` kills itself, if any."""
    crashes = agent_crashes(spec, agent)
    return crashes[life].at_iteration if life < len(crashes) else None


def write_run_spec(run_dir: RunDir, spec: FaultSpec | None, started: float | None = None) -> None:
    """Write the resolved spec and the run's start (wall time, the origin of seconds windows)."""
    if spec is None:
        return
    write_json(
        run_dir.root / SPEC_FILE,
        {"source": spec.source, "run_start_unix": started or time.time(), "spec": spec.to_dict()},
    )


def read_run_spec(run_dir: RunDir) -> tuple[FaultSpec, float] | None:
    """The spec and run start written by :func:`write_run_spec`, or None if there is none."""
    path = run_dir.root / SPEC_FILE
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
        spec = parse_spec(data["spec"], str(path))
        return replace(spec, source=data.get("source", str(path))), float(data["run_start_unix"])
    except FaultSpecError:
        raise
    except (OSError, KeyError, TypeError, ValueError) as error:
        raise FaultSpecError(f"{path} is not a resolved fault spec: {error}") from error


def agent_fault_log(run_dir: RunDir, agent_id: int) -> Path:
    """``agents/agent-I/faults.jsonl``."""
    return run_dir.agent_dir(agent_id) / AGENT_LOG


def wrap_for_run(
    transport: Transport, run_dir: RunDir, config: RunConfig, topology: Topology
) -> Transport:
    """The agent's peer transport, wrapped in a :class:`FaultyTransport` when the run has faults
    (the launcher's ``faults_spec.json``, else resolved from the config); else unchanged."""
    saved = read_run_spec(run_dir)
    if saved is None:
        spec = resolve_run_faults(config, topology)
        saved = None if spec is None else (spec, time.time())
    if saved is None:
        return transport
    spec, started = saved
    return FaultyTransport(
        transport, spec, agent_fault_log(run_dir, transport.agent_id), run_start=started
    )


def merge_fault_logs(
    run_dir: RunDir, n_agents: int, extra: Iterable[Mapping[str, Any]] = ()
) -> dict[str, Any]:
    """Merge every agent's fault log and ``extra`` events (the launcher's crashes and restarts)
    into ``RUN_DIR/faults.jsonl`` (by time) and count events; returns ``{}`` when there were no
    faults (no file is written then)."""
    paths = [agent_fault_log(run_dir, agent) for agent in range(n_agents)]
    extra = list(extra)
    if not extra and not any(path.exists() for path in paths):
        return {}
    events = [e for path in paths for e in read_jsonl(path)] + extra
    events.sort(key=_event_time)
    lines = "".join(json.dumps(event) + "\n" for event in events)
    (run_dir.root / AGENT_LOG).write_text(lines)
    return count_events(events)


def _event_time(event: Mapping[str, Any]) -> float:
    value = event.get("time")
    return float(value) if isinstance(value, int | float) else 0.0


def count_events(events: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """``{"drop", "delay", "crash", "restart": n, "events": n, "by_reason": {...},
    "by_kind": {...}}``."""
    events = list(events)
    by_event = Counter(str(e.get("event")) for e in events)
    return {
        "drop": by_event.get("drop", 0),
        "delay": by_event.get("delay", 0),
        "crash": by_event.get("crash", 0),
        "restart": by_event.get("restart", 0),
        "events": len(events),
        "by_reason": dict(sorted(Counter(str(e.get("reason")) for e in events).items())),
        "by_kind": dict(sorted(Counter(str(e.get("kind")) for e in events).items())),
    }


def summary_fields(
    run_dir: RunDir, n_agents: int, crash_events: Iterable[Mapping[str, Any]] = ()
) -> dict[str, Any]:
    """What the launcher adds to ``summary.json``: fault counts (crashes and restarts included)
    and the ids of agents that crashed."""
    crash_events = list(crash_events)
    faults = merge_fault_logs(run_dir, n_agents, crash_events)
    crashed = sorted({int(e["agent"]) for e in crash_events if e.get("event") == "crash"})
    return {"faults": faults, "crashed_agents": crashed}


# -- deciding one message's fate ----------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    """What happens to one message: lost (``drop``), held back ``delay`` seconds, or neither."""

    drop: bool = False
    delay: float = 0.0
    reason: str = ""


DELIVER = Decision()


class _Held(NamedTuple):
    """A delayed frame in the queue, ordered by due time, then by when it was sent."""

    due: float
    order: int
    receiver: int
    frame: bytes
    kind: str
    round: int


@dataclass
class _Channel:
    """One random stream of one directed link, and its Gilbert–Elliott state."""

    rng: np.random.Generator
    bad: bool = False


def _stream(seed: int, agent_id: int, neighbour: int, heartbeat: int) -> np.random.Generator:
    """The random stream of one directed link's heartbeats (1) or other messages (0)."""
    return np.random.default_rng(np.random.SeedSequence([seed, agent_id, neighbour, heartbeat]))


class FaultInjector:
    """Pure decision logic of one agent: which outgoing messages are lost or delayed."""

    def __init__(self, spec: FaultSpec, agent_id: int, neighbours: Iterable[int]) -> None:
        self.spec = spec
        self.agent_id = agent_id
        seed = spec.seed if spec.seed is not None else 0
        self._channels = {
            (neighbour, heartbeat): _Channel(_stream(seed, agent_id, neighbour, heartbeat))
            for neighbour in neighbours
            for heartbeat in (0, 1)
        }

    def edge(self, receiver: int) -> Edge:
        return (min(self.agent_id, receiver), max(self.agent_id, receiver))

    def decide(
        self, receiver: int, kind: str, iteration: int, seconds: float,
        activation: int | None = None,
    ) -> Decision:
        """The fate of one message to ``receiver`` in ``iteration``, ``seconds`` into the run
        (``activation``: the ADMM activation the message belongs to, if any)."""
        if kind in EXEMPT_KINDS:
            return DELIVER
        channel = self._channels[(receiver, int(kind in HEARTBEAT_KINDS))]
        u = channel.rng.random(VARIATES)  # always the same count: traces stay aligned
        edge = self.edge(receiver)
        reason = self._outage(edge, iteration, seconds, activation)
        burst_lost = self._burst_step(channel, u[0], u[1])
        if reason:
            return Decision(drop=True, reason=reason)
        if burst_lost:
            return Decision(drop=True, reason="burst")
        override = self.spec.link_drop(edge)
        if u[2] < (self.spec.drop if override is None else override):
            return Decision(drop=True, reason="random" if override is None else "link")
        return self._delay(u[3], u[4])

    def outage(
        self, edge: Edge, iteration: int, seconds: float, activation: int | None = None
    ) -> str:
        """Why ``edge`` is down now (``down``, ``partition``) or "" (windows bounded by
        activations hold only for messages of those activations)."""
        return self._outage(edge, iteration, seconds, activation)

    def _outage(
        self, edge: Edge, iteration: int, seconds: float, activation: int | None
    ) -> str:
        for down in self.spec.down:
            if down.edge == edge and down.window.active(iteration, seconds, activation):
                return "down"
        for partition in self.spec.partitions:
            if partition.cuts(edge) and partition.window.active(iteration, seconds, activation):
                return "partition"
        return ""

    def _burst_step(self, channel: _Channel, transition: float, loss: float) -> bool:
        burst = self.spec.burst
        if burst is None:
            return False
        flip = burst.p_bad_to_good if channel.bad else burst.p_good_to_bad
        if transition < flip:
            channel.bad = not channel.bad
        return loss < (burst.drop_in_bad if channel.bad else burst.drop_in_good)

    def _delay(self, chance: float, size: float) -> Decision:
        delay = self.spec.delay
        if delay is None or chance >= delay.probability:
            return DELIVER
        seconds = max(0.0, delay.mean_seconds + (2 * size - 1) * delay.jitter_seconds)
        return Decision(delay=seconds, reason="delay") if seconds > 0 else DELIVER


# -- the transport wrapper -----------------------------------------------------------------------


class FaultyTransport(Transport):
    """Any :class:`Transport` with injected link faults on what this agent sends.

    It is a Transport itself (the base class's send/receive/heartbeat/hello logic runs here) over
    the wrapped one's raw frame pipe (``_send_frame``/``_receive_frame``). It shares the wrapped
    transport's ``rejected`` counter; ``sent_messages``/``sent_bytes`` count what the agent sent,
    lost messages included (a sender cannot tell); other attributes are the wrapped transport's.

    A delayed frame waits in a queue and leaves at the first ``send``/``receive`` call (or
    :meth:`flush`) after it falls due, in order per link (TCP-like); a sender never blocks.
    """

    def __init__(
        self,
        inner: Transport,
        spec: FaultSpec,
        log_path: Path | None = None,
        run_start: float | None = None,
    ) -> None:
        super().__init__(inner.agent_id, inner.neighbours)
        self.inner = inner
        self.rejected = inner.rejected
        self.disconnects = inner.disconnects
        self.spec = spec
        self.injector = FaultInjector(spec, inner.agent_id, inner.neighbours)
        self.run_start = time.time() if run_start is None else run_start
        self.iteration = 0
        self.events = Counter[str]()
        self._decision: Decision | None = None
        self._outgoing: tuple[str, int] = ("", 0)
        self._held: list[_Held] = []
        self._last_due: dict[int, float] = {}
        self._order = itertools.count()
        self._link_state: dict[tuple[int, str], str] = {}
        self._next_link_check = 0.0
        self._log: IO[str] | None = None
        if log_path is not None:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = log_path.open("a", buffering=1)

    def __getattr__(self, name: str) -> Any:
        if name == "inner":  # not set yet: never recurse
            raise AttributeError(name)
        return getattr(self.inner, name)

    def peers_down(self) -> frozenset[int]:
        down = self.inner.peers_down()
        for neighbour in self.neighbours:
            self._set_link(neighbour, "peer", "peer_lost" if neighbour in down else "")
        return down

    # -- link state, for down_seconds -------------------------------------------------------------
    def check_links(self, force: bool = False) -> None:
        """Log the links whose injected outage started or ended since the last check."""
        now = time.monotonic()
        if not force and now < self._next_link_check:
            return
        self._next_link_check = now + LINK_CHECK_SECONDS
        seconds = self.elapsed()
        for neighbour in self.neighbours:
            reason = self.injector.outage(self.injector.edge(neighbour), self.iteration, seconds)
            self._set_link(neighbour, "fault", reason)

    def _set_link(self, neighbour: int, source: str, reason: str) -> None:
        """Outage state of one link from one source (``fault``: injected windows, ``peer``: the
        socket layer's lost neighbour); a change is one ``link_down``/``link_up`` event."""
        before = self._link_state.get((neighbour, source), "")
        if reason == before:
            return
        self._link_state[(neighbour, source)] = reason
        if self._log is None:
            return
        row = {
            "time": time.time(), "elapsed": round_(self.elapsed()), "agent": self.agent_id,
            "event": "link_down" if reason else "link_up", "kind": "link",
            "edge": list(self.injector.edge(neighbour)), "receiver": neighbour,
            "iteration": self.iteration, "source": source, "reason": reason or before,
        }
        self._log.write(json.dumps(row) + "\n")

    # -- iteration and timing -------------------------------------------------------------------
    def start_iteration(self, iteration: int) -> None:
        """The training iteration that iteration windows compare against (also set by sends)."""
        self.iteration = iteration
        self.check_links(force=True)

    def elapsed(self) -> float:
        """Wall seconds since the run started (the origin of seconds windows)."""
        return time.time() - self.run_start

    @property
    def held(self) -> int:
        """Delayed frames not sent yet."""
        return len(self._held)

    # -- sending -------------------------------------------------------------------------------
    def send(self, receiver: int, kind: str, round: int, body: Mapping[str, Any]) -> int:
        self.flush()
        self.check_links()
        if kind not in EXEMPT_KINDS and kind not in HEARTBEAT_KINDS:
            self.iteration = max(self.iteration, round)
        self._outgoing = (kind, round)
        if receiver in self.neighbours:
            activation = body.get("activation")
            self._decision = self.injector.decide(
                receiver, kind, self.iteration, self.elapsed(),
                activation if isinstance(activation, int) else None,
            )
            if self._decision.drop or self._decision.delay:
                self._record(self._decision, receiver, kind, round)
        try:
            return super().send(receiver, kind, round, body)
        finally:
            self._decision = None

    def _send_frame(self, receiver: int, frame: bytes) -> bool:
        decision = self._decision or DELIVER
        if decision.drop:
            return True  # lost on the wire: the sender cannot tell
        now = time.monotonic()
        due = max(now + decision.delay, self._last_due.get(receiver, 0.0))
        if due <= now:
            return self.inner._send_frame(receiver, frame)
        self._last_due[receiver] = due
        kind, round = self._outgoing
        heapq.heappush(self._held, _Held(due, next(self._order), receiver, frame, kind, round))
        return True

    def flush(self) -> int:
        """Send every held frame that is due; returns how many left."""
        sent, now = 0, time.monotonic()
        while self._held and self._held[0].due <= now:
            held = heapq.heappop(self._held)
            if not self.inner._send_frame(held.receiver, held.frame):
                self.rejected["send_queue_full"] += 1
            sent += 1
        return sent

    # -- receiving -------------------------------------------------------------------------------
    def _receive_frame(self, timeout: float) -> tuple[int | None, bytes] | None:
        self.flush()
        self.check_links()
        if self._held:
            timeout = min(timeout, max(MIN_WAIT, self._held[0].due - time.monotonic()))
        got = self.inner._receive_frame(timeout)
        self.flush()
        return got

    # -- the event log ---------------------------------------------------------------------------
    def _record(self, decision: Decision, receiver: int, kind: str, round: int) -> None:
        event = "drop" if decision.drop else "delay"
        self.events[event] += 1
        if self._log is None:
            return
        row = {
            "time": time.time(),
            "elapsed": round_(self.elapsed()),
            "agent": self.agent_id,
            "event": event,
            "kind": kind,
            "edge": list(self.injector.edge(receiver)),
            "receiver": receiver,
            "iteration": self.iteration,
            "round": round,
            "reason": decision.reason,
        }
        if decision.delay:
            row["delay_seconds"] = round_(decision.delay)
        self._log.write(json.dumps(row) + "\n")

    def close(self) -> None:
        """Frames still held are lost (logged as ``held_at_close`` drops); then close all."""
        for held in sorted(self._held):
            lost = Decision(drop=True, reason="held_at_close")
            self._record(lost, held.receiver, held.kind, held.round)
        self._held.clear()
        for neighbour, source in list(self._link_state):
            self._set_link(neighbour, source, "")  # the run's end closes every outage
        if self._log is not None:
            self._log.close()
            self._log = None
        self.inner.close()


def round_(value: float) -> float:
    """Six decimals: microseconds are enough in a log."""
    return float(f"{value:.6f}")
