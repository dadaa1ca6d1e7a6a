"""Read a run directory into the inspection schema (``p2pmarl inspect --json``).

:func:`load_run` reads the files of ``RUN_DIR`` (see :mod:`p2pmarl.runtime.rundir`) into a
:class:`RunRecords`; :func:`collect` reduces that to the JSON object documented field by field in
``docs/inspect.md``. Nothing here imports torch, so inspecting a run is fast and works while the
run is still writing its files (half-written lines are skipped).

Every ADMM activation is written twice, once by each endpoint of its edge, under the same
``(iteration, activation)`` key. :func:`edge_activations` counts each once: the lower endpoint's
record wins, the higher endpoint's fills in where the lower one wrote none.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from p2pmarl.config import ConfigError, RunConfig, read_run_config
from p2pmarl.runtime.rundir import RunDir, read_jsonl
from p2pmarl.runtime.summary import build_summary, iteration_rows
from p2pmarl.topology import Topology, TopologyError, load_topology

SCHEMA = "p2pmarl.inspect/1"
"""Value of the ``schema`` key; bumped when a field changes meaning."""
FAULTS_FILE = "faults.jsonl"
"""Fault-injection events, one JSON object a line (written by the fault injector, issue 4)."""

STARTING_SECONDS = 60.0
"""A run directory without pids.json is taken as starting up for this long after config.json."""

Edge = tuple[int, int]


class RunDirectoryError(ValueError):
    """A path that is not a readable p2pmarl run directory; the message names the path."""


@dataclass
class RunRecords:
    """Everything inspection reads from one run directory."""

    root: Path
    config: RunConfig
    topology: Topology
    learners: list[int]
    """Agent ids that ran a learner process (C-TRPO: only 0)."""
    metrics: dict[int, dict[int, dict[str, Any]]]
    """learner → iteration → its metrics row (a resumed iteration keeps its latest row)."""
    admm: dict[int, list[dict[str, Any]]]
    """agent → its admm.jsonl records, records superseded by a resume dropped."""
    status: str
    """completed, failed, interrupted (summary.json); starting, running or incomplete (none)."""
    summary: dict[str, Any] | None
    """summary.json when it belongs to the latest launch of this directory, else None."""
    faults: list[dict[str, Any]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def centralized(self) -> bool:
        return len(self.learners) == 1 and self.topology.n_agents > 1

    @property
    def has_consensus(self) -> bool:
        """True when some agent wrote ADMM records (MATRPO)."""
        return any(self.admm.values())


# -- loading ----------------------------------------------------------------------------------


def load_run(path: str | os.PathLike[str]) -> RunRecords:
    """Read ``path`` as a run directory; :class:`RunDirectoryError` when it is not one."""
    root = Path(path)
    if not root.is_dir():
        raise RunDirectoryError(f"{root}: no such directory (expected a p2pmarl run directory)")
    run_dir = RunDir(root)
    if not run_dir.config.exists():
        raise RunDirectoryError(
            f"{root}: not a p2pmarl run directory (no config.json); pass a directory written by "
            f"`p2pmarl launch`, e.g. runs/<date>-<algo>-<env>-s<seed>"
        )
    try:
        config = read_run_config(root)
        topology = load_topology(run_dir.topology)
    except (ConfigError, TopologyError) as error:
        raise RunDirectoryError(f"{root}: unreadable run directory: {error}") from error
    learners = _learners(run_dir, topology.n_agents)
    summary = current_summary(run_dir)
    return RunRecords(
        root=root,
        config=config,
        topology=topology,
        learners=learners,
        metrics={agent: iteration_rows(run_dir, agent) for agent in learners},
        admm={agent: latest_session(read_jsonl(run_dir.agent_admm(agent))) for agent in learners},
        status=summary["status"] if summary else _unfinished_status(run_dir),
        summary=summary,
        faults=read_jsonl(root / FAULTS_FILE),
    )


def _learners(run_dir: RunDir, n_agents: int) -> list[int]:
    """Learner ids from endpoints.json (C-TRPO has one), else from the agent folders."""
    try:
        endpoints = json.loads(run_dir.endpoints.read_text())
        return sorted(int(agent) for agent in endpoints["agents"])
    except (OSError, KeyError, ValueError, TypeError):
        folders = (run_dir.root / "agents").glob("agent-*")
        found = sorted(int(p.name.split("-")[1]) for p in folders if p.name[6:].isdigit())
        return found or list(range(n_agents))


def current_summary(run_dir: RunDir) -> dict[str, Any] | None:
    """summary.json if it was written after the latest launch (a resume rewrites config.json
    at its start and summary.json at its end), else None."""
    try:
        if run_dir.summary.stat().st_mtime_ns < run_dir.config.stat().st_mtime_ns:
            return None
        return json.loads(run_dir.summary.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _unfinished_status(run_dir: RunDir) -> str:
    """``running`` while a process listed in pids.json is alive; ``starting`` before the
    launcher wrote pids.json (for at most :data:`STARTING_SECONDS`); else ``incomplete``."""
    try:
        pids = json.loads(run_dir.pids.read_text()).values()
    except (OSError, json.JSONDecodeError, AttributeError):
        return "starting" if _age_seconds(run_dir.config) < STARTING_SECONDS else "incomplete"
    return "running" if any(_alive(pid) for pid in pids) else "incomplete"


def _age_seconds(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except OSError:
        return math.inf


def _alive(pid: object) -> bool:
    if not isinstance(pid, int):
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def latest_session(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One agent's ADMM records without those a resume superseded.

    Activation numbers increase along an edge within one phase, and a resume replays from a
    checkpointed iteration; so a record whose iteration is below one already seen, or whose
    activation number does not increase on its (iteration, edge), starts a new session, and the
    older records of that iteration and later ones are dropped.
    """
    kept: list[dict[str, Any]] = []
    last: dict[tuple[int, Edge], int] = {}
    highest = -1
    for row in rows:
        iteration, edge, activation = _record_key(row)
        if iteration is None or edge is None or activation is None:
            continue
        key = (iteration, edge)
        if iteration < highest or activation <= last.get(key, -1):
            kept = [r for r in kept if r["iteration"] < iteration]
            last = {k: v for k, v in last.items() if k[0] < iteration}
            highest = iteration
        kept.append(row)
        last[key] = activation
        highest = max(highest, iteration)
    return kept


def _record_key(row: Mapping[str, Any]) -> tuple[int | None, Edge | None, int | None]:
    iteration, activation, edge = row.get("iteration"), row.get("activation"), row.get("edge")
    pair = None
    if isinstance(edge, list) and len(edge) == 2 and all(isinstance(v, int) for v in edge):
        pair = (min(edge), max(edge))
    return (
        iteration if isinstance(iteration, int) else None,
        pair,
        activation if isinstance(activation, int) else None,
    )


# -- per edge ---------------------------------------------------------------------------------


def edge_activations(records: RunRecords, edge: Edge) -> list[dict[str, Any]]:
    """The activations of ``edge``, each once, in order of (iteration, activation).

    Both endpoints record an activation under the same (iteration, activation) key; the lower
    endpoint's record is used, the higher endpoint's where the lower one has none.
    """
    low, high = edge
    merged: dict[tuple[int, int], dict[str, Any]] = {}
    for agent in (high, low):
        for row in records.admm.get(agent, []):
            if _record_key(row)[1] == edge:
                merged[(row["iteration"], row["activation"])] = row
    return [merged[key] for key in sorted(merged)]


def split_outcomes(records: RunRecords, edge: Edge) -> int:
    """Activations committed at one endpoint and aborted at the other."""
    status: dict[int, dict[tuple[int, int], str]] = {}
    for agent in edge:
        status[agent] = {
            (row["iteration"], row["activation"]): row.get("status", "")
            for row in records.admm.get(agent, [])
            if _record_key(row)[1] == edge
        }
    low, high = status[edge[0]], status[edge[1]]
    return sum(1 for key in low.keys() & high.keys() if low[key] != high[key])


def committed(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return [row for row in rows if row.get("status") == "committed"]


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def disagreement_by_iteration(rows: list[dict[str, Any]], iterations: int) -> list[float | None]:
    """Last committed disagreement RMS of each training iteration 0..iterations-1."""
    values: list[float | None] = [None] * iterations
    for row in committed(rows):
        if 0 <= row["iteration"] < iterations:
            values[row["iteration"]] = _finite(row.get("disagreement_rms"))
    return values


def down_intervals(events: Iterable[Mapping[str, Any]], edge: Edge) -> list[tuple[float, float]]:
    """Wall-clock intervals (unix seconds) in which ``edge`` was down, merged.

    Each endpoint logs ``link_down``/``link_up`` when an injected outage of the edge (a
    ``down`` window or a partition) starts or ends, or when its socket layer loses or regains
    the neighbour (a crash); the edge is down while either endpoint sees it down. An outage
    still open at the last logged event (a process killed before it could log the end) ends
    there.
    """
    events = list(events)
    rows = sorted(
        (e for e in events if e.get("event") in ("link_down", "link_up")
         and sorted(e.get("edge") or []) == list(edge) and isinstance(e.get("time"), int | float)),
        key=lambda e: e["time"],
    )
    last = max((e["time"] for e in events if isinstance(e.get("time"), int | float)), default=0.0)
    opened: dict[tuple[Any, Any], float] = {}
    spans: list[tuple[float, float]] = []
    for event in rows:
        key = (event.get("agent"), event.get("source"))
        if event["event"] == "link_down":
            opened.setdefault(key, float(event["time"]))
        elif key in opened:
            spans.append((opened.pop(key), float(event["time"])))
    spans += [(start, max(start, last)) for start in opened.values()]
    merged: list[tuple[float, float]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def down_seconds(events: Iterable[Mapping[str, Any]], edge: Edge) -> float:
    """Seconds ``edge`` was down over the run (:func:`down_intervals`)."""
    return float(sum(end - start for start, end in down_intervals(events, edge)))


def edge_report(records: RunRecords, edge: Edge, iterations: int) -> dict[str, Any]:
    """One entry of ``edges`` (see docs/inspect.md)."""
    rows = edge_activations(records, edge)
    done = committed(rows)
    aborted = [row for row in rows if row.get("status") == "aborted"]
    disagreements = [v for v in (_finite(r.get("disagreement_rms")) for r in done) if v is not None]
    last = done[-1] if done else {}
    return {
        "edge": list(edge),
        "activations": len(done),
        "aborted": len(aborted),
        "drops": sum(
            1 for event in records.faults
            if event.get("event") == "drop" and sorted(event.get("edge") or []) == list(edge)
        ),
        "down_seconds": down_seconds(records.faults, edge),
        "abort_reasons": dict(Counter(str(r.get("reason", "")) for r in aborted)),
        "split": split_outcomes(records, edge),
        "disagreement_last": _finite(last.get("disagreement_rms")),
        "disagreement_median": statistics.median(disagreements) if disagreements else None,
        "primal_last": _finite(last.get("primal_rms")),
        "dual_last": _finite(last.get("dual_rms")),
        "disagreement_by_iteration": disagreement_by_iteration(rows, iterations),
    }


# -- per agent --------------------------------------------------------------------------------


def _series(rows: dict[int, dict[str, Any]], key: str) -> list[float | None]:
    return [_finite(rows[i].get(key)) for i in sorted(rows)]


def _mean(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def line_search_acceptance(records: RunRecords, agent: int) -> float | None:
    """Share of θ steps whose line search accepted a step.

    MATRPO: the agent's activation records carrying ``solver/step_fraction`` (> 0 = accepted);
    I-TRPO and C-TRPO: the mean of ``train/accepted`` over iterations.
    """
    fractions = [
        _finite(row.get("solver/step_fraction")) for row in records.admm.get(agent, [])
    ]
    fractions = [f for f in fractions if f is not None]
    if fractions:
        return sum(f > 0 for f in fractions) / len(fractions)
    return _mean(_series(records.metrics.get(agent, {}), "train/accepted"))


def _last_int(rows: dict[int, dict[str, Any]], key: str) -> int | None:
    values = [v for v in _series(rows, key) if v is not None]
    return int(values[-1]) if values else None


def agent_report(records: RunRecords, agent: int) -> dict[str, Any]:
    """One entry of ``agents`` (see docs/inspect.md)."""
    rows = records.metrics.get(agent, {})
    returns = _series(rows, "rollout/return")
    present = [v for v in returns if v is not None]
    own = records.admm.get(agent, [])
    return {
        "id": agent,
        "iterations": len(rows),
        "return_first": present[0] if present else None,
        "return_last": present[-1] if present else None,
        "returns": returns,
        "kl_mean": _mean(_series(rows, "train/kl")),
        "line_search_acceptance": line_search_acceptance(records, agent),
        "activations": len(committed(own)),
        "aborted": sum(1 for row in own if row.get("status") == "aborted"),
        "bytes_sent": _last_int(rows, "net/bytes_sent"),
        "rejected": _last_int(rows, "net/rejected"),
    }


# -- the whole run ----------------------------------------------------------------------------


def run_info(records: RunRecords) -> dict[str, Any]:
    """The ``run`` object: what the run is and how far it got."""
    summary = records.summary or build_summary(
        RunDir(records.root),
        records.config,
        records.topology.n_agents,
        len(records.learners),
        records.status,
        0.0,
    )
    config = records.config
    return {
        "algo": config.algo,
        "env": config.env,
        "n_agents": records.topology.n_agents,
        "learners": len(records.learners),
        "centralized": records.centralized,
        "topology": records.topology.name,
        "n_edges": len(records.topology.edges),
        "seed": config.seed,
        "status": records.status,
        "iterations": summary.get("iterations", 0),
        "iterations_planned": config.iterations,
        "env_steps": summary.get("env_steps", 0),
        "team_return": _finite(summary.get("team_return")),
        "team_return_curve": [_finite(v) for v in summary.get("team_return_curve", [])],
        "wall_seconds": _finite(summary.get("wall_seconds")) if records.summary else None,
        "failed_process": summary.get("failed_process"),
    }


def collect_records(records: RunRecords) -> dict[str, Any]:
    """The inspection object of an already loaded run."""
    run = run_info(records)
    iterations = max([run["iterations"], *(len(rows) for rows in records.metrics.values())])
    edges = (
        [edge_report(records, edge, iterations) for edge in records.topology.edges]
        if not records.centralized
        else []
    )
    return {
        "schema": SCHEMA,
        "run_dir": str(records.root),
        "run": run,
        "edges": edges,
        "agents": [agent_report(records, agent) for agent in records.learners],
        "faults": records.faults,
    }


def collect(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Read ``run_dir`` into the documented inspection schema (docs/inspect.md)."""
    return collect_records(load_run(run_dir))
