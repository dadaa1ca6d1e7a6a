"""Link failures: MATRPO's edge disagreement after a fixed activation budget against drop rate.

For every topology (ring6, er8, complete6), every drop rate (0, 10, 30, 50 % of peer messages
lost, ``--drop``) and every seed, runs MATRPO on spread (N = topology size) as a real
multi-process launch, one after the other, with the same ADMM activation budget per training
iteration, the ``seeded`` schedule (every agent replays the same random edge sequence, so at a
given seed the sequence of scheduled activations is identical at every drop rate and only the
losses differ) and a short message timeout (a lost message costs at most that long). From each
run directory it reads ``agents/agent-I/admm.jsonl`` and reports, per run: the disagreement RMS of
every edge at the end of the last training iteration's ADMM phase (its last activation in that
phase committed at both ends), its median and maximum over edges, the median of the first such
activation's disagreement (where the phase started from), the edges that completed nothing in
that phase, the activations committed at both ends / aborted / split (committed at one end,
aborted at the other) / never attempted (the edge had been given up), the abort reasons, the
injected drops (``summary.json["faults"]``) and the wall seconds. Prints one JSON object;
``--plot`` writes the PNG of median disagreement against drop rate, one line per topology.

    python bench/fault_sweep.py --seeds 0 1 2 --plot docs/fault_sweep.png

``--from-result bench/results/fault_sweep/fault_sweep-STAMP.json --plot PNG`` re-aggregates and
re-plots a saved result without launching anything.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

try:
    from bench.common import RESULTS, emit, launch_failure, load_average, topology
except ModuleNotFoundError:  # run as ``python bench/NAME.py``: bench/ is on sys.path
    from common import RESULTS, emit, launch_failure, load_average, topology

TOPOLOGIES = ("ring6", "er8", "complete6")
DROPS = (0.0, 0.1, 0.3, 0.5)
Edge = tuple[int, int]


# -- reading admm.jsonl -----------------------------------------------------------------------


def _edge(row: Mapping[str, Any]) -> Edge | None:
    edge = row.get("edge")
    if isinstance(edge, list) and len(edge) == 2 and all(isinstance(v, int) for v in edge):
        return (min(edge), max(edge))
    return None


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def phase_disagreements(
    rows: Iterable[Mapping[str, Any]], edges: Sequence[Edge], iteration: int
) -> dict[Edge, list[float]]:
    """Disagreement RMS of each completed activation of each edge in ``iteration``'s ADMM phase.

    ``rows`` are the admm.jsonl records of all agents. An activation is *completed* when every
    endpoint that recorded it committed it (both endpoints of a committed activation compute the
    same residuals); one committed at one end and aborted at the other is rolled back at the next
    activation and does not count. Values are in activation order, so ``[-1]`` is the edge's
    disagreement at the end of the phase; an empty list: the edge completed nothing in it.
    """
    found: dict[Edge, dict[int, list[Mapping[str, Any]]]] = {edge: {} for edge in edges}
    for row in rows:
        edge, activation = _edge(row), row.get("activation")
        if edge in found and row.get("iteration") == iteration and isinstance(activation, int):
            found[edge].setdefault(activation, []).append(row)
    result: dict[Edge, list[float]] = {}
    for edge, activations in found.items():
        values = []
        for activation in sorted(activations):
            records = activations[activation]
            value = _finite(records[0].get("disagreement_rms"))
            if all(r.get("status") == "committed" for r in records) and value is not None:
                values.append(value)
        result[edge] = values
    return result


def activation_outcomes(rows: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Count activations by outcome, each (iteration, edge, activation) once over both endpoints.

    ``committed``: committed at every endpoint that recorded it; ``aborted``: aborted at every
    endpoint that recorded it; ``split``: committed at one end and aborted at the other. Also the
    abort reasons, counted per endpoint record.
    """
    status: dict[tuple[int, Edge, int], set[str]] = {}
    reasons: Counter[str] = Counter()
    for row in rows:
        edge, iteration, activation = _edge(row), row.get("iteration"), row.get("activation")
        if edge is None or not isinstance(iteration, int) or not isinstance(activation, int):
            continue
        status.setdefault((iteration, edge, activation), set()).add(str(row.get("status")))
        if row.get("status") == "aborted":
            reasons[str(row.get("reason") or "?")] += 1
    counts = Counter(
        "split" if len(seen) > 1 else next(iter(seen)) for seen in status.values()
    )
    return {
        "committed": counts["committed"],
        "aborted": counts["aborted"],
        "split": counts["split"],
        "recorded": len(status),
        "abort_reasons": dict(sorted(reasons.items())),
    }


# -- one run ----------------------------------------------------------------------------------


def run_one(
    name: str, drop: float, seed: int, args: argparse.Namespace, **overrides: Any
) -> dict[str, Any]:
    """One launch and its numbers; ``overrides`` are further RunConfig fields."""
    from p2pmarl.config import RunConfig
    from p2pmarl.runtime.launcher import launch
    from p2pmarl.runtime.rundir import RunDir, read_jsonl
    from p2pmarl.topology import load_topology

    graph = load_topology(topology(name))
    config = RunConfig(
        topology=topology(name), env="spread", algo="matrpo", iterations=args.iterations,
        steps_per_iteration=args.steps, n_envs=args.n_envs, episode_length=args.episode_length,
        seed=seed, out=str(args.out / "runs"), admm_iterations=args.activations,
        admm_schedule="seeded", admm_message_timeout=args.message_timeout, drop=drop,
        phase_timeout=args.phase_timeout, **overrides,
    ).validate()
    started = time.monotonic()
    result = launch(config, show_progress=False)
    wall = time.monotonic() - started
    run = RunDir(result.run_dir)
    edges = sorted((min(e), max(e)) for e in graph.edges)
    rows = [row for agent in range(graph.n_agents) for row in read_jsonl(run.agent_admm(agent))]
    last = args.iterations - 1
    phase = phase_disagreements(rows, edges, last)
    values = [v[-1] for v in phase.values() if v]
    first = [v[0] for v in phase.values() if v]
    outcomes = activation_outcomes(rows)
    scheduled = args.activations * args.iterations
    faults = result.summary.get("faults") or {}
    record = {
        "topology": name, "n_agents": graph.n_agents, "edges": len(edges), "drop": drop,
        "seed": seed, "status": result.summary.get("status"), "run_dir": str(result.run_dir),
        "wall_seconds": round(wall, 2),
        "disagreement_median": statistics.median(values) if values else None,
        "disagreement_max": max(values) if values else None,
        "first_disagreement_median": statistics.median(first) if first else None,
        "edges_without_commit": sum(not v for v in phase.values()),
        "completed_last_phase": sum(len(v) for v in phase.values()),
        "disagreement_per_edge": {f"{i}-{j}": v[-1] if v else None for (i, j), v in phase.items()},
        **outcomes,
        "scheduled": scheduled,
        "not_attempted": scheduled - outcomes["recorded"],
        "drops_injected": faults.get("drop", 0),
        "drops_by_kind": faults.get("by_kind", {}),
    }
    failure = launch_failure(result)
    if failure:
        record["failure"] = failure
    return record


# -- aggregation and plot ---------------------------------------------------------------------


def aggregate(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (topology, drop): mean, min and max over seeds of the per-run numbers."""
    table = []
    for name in dict.fromkeys(r["topology"] for r in runs):
        for drop in dict.fromkeys(r["drop"] for r in runs if r["topology"] == name):
            group = [r for r in runs if r["topology"] == name and r["drop"] == drop]
            row: dict[str, Any] = {"topology": name, "drop": drop, "seeds": len(group)}
            for r in group:
                first, last = r["first_disagreement_median"], r["disagreement_median"]
                r["reduction"] = last / first if first and last is not None else None
            for key in ("disagreement_median", "disagreement_max", "first_disagreement_median",
                        "reduction",
                        "committed", "aborted", "split", "not_attempted", "completed_last_phase",
                        "drops_injected", "wall_seconds", "edges_without_commit"):
                values = [r[key] for r in group if r[key] is not None]
                row[key] = {
                    "mean": statistics.fmean(values) if values else None,
                    "min": min(values) if values else None,
                    "max": max(values) if values else None,
                }
            table.append(row)
    return table


def plot(table: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.6))
    drops = [100 * d for d in dict.fromkeys(r["drop"] for r in table)]
    for name in dict.fromkeys(r["topology"] for r in table):
        rows = [r for r in table if r["topology"] == name and r["disagreement_median"]["mean"]]
        x = [100 * r["drop"] for r in rows]
        several = any(r["seeds"] > 1 for r in rows)
        for axes, key in ((left, "disagreement_median"), (right, "reduction")):
            stat = [r[key] for r in rows]
            (line,) = axes.plot(x, [s["mean"] for s in stat], marker="o", label=name)
            if several:
                axes.fill_between(x, [s["min"] for s in stat], [s["max"] for s in stat],
                                  color=line.get_color(), alpha=0.2)
        left.plot(x, [r["disagreement_max"]["mean"] for r in rows], color=line.get_color(),
                  linestyle=":", marker=".", label=f"{name}, max over edges")
    left.set_yscale("log")
    left.set_ylabel(r"RMS($\ell^i - \ell^j$) at the end of the phase")
    left.set_title("median over edges (dotted: max over edges)", fontsize=10)
    right.axhline(1.0, color="grey", linewidth=0.8)
    right.set_ylabel("end of phase / first completed activation")
    right.set_title("median disagreement relative to the phase's start", fontsize=10)
    for axes in (left, right):
        axes.set_xlabel("messages dropped (%)")
        axes.set_xticks(drops)
        axes.grid(True, which="both", alpha=0.3)
        axes.legend(fontsize=8)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--topologies", nargs="+", default=list(TOPOLOGIES))
    parser.add_argument("--drops", type=float, nargs="+", default=list(DROPS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--activations", type=int, default=120,
                        help="ADMM edge activations per training iteration (every run)")
    parser.add_argument("--iterations", type=int, default=2)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--n-envs", type=int, default=4)
    parser.add_argument("--episode-length", type=int, default=25)
    parser.add_argument("--message-timeout", type=float, default=0.5)
    parser.add_argument("--phase-timeout", type=float, default=300.0)
    parser.add_argument("--out", type=Path, default=RESULTS / "fault_sweep")
    parser.add_argument("--plot", type=Path)
    parser.add_argument("--from-result", type=Path,
                        help="re-aggregate and re-plot the runs of a saved result JSON, no launch")
    args = parser.parse_args()
    if args.from_result:
        saved = json.loads(args.from_result.read_text())
        runs = saved["runs"]
        args = argparse.Namespace(**{**vars(args), **saved["settings"], "plot": args.plot,
                                     "from_result": str(args.from_result)})
        args.out = Path(args.out)
        measured = {key: saved.get(key) for key in ("utc", "git", "load_average_end")}
    else:
        measured = {"load_average_end": load_average()}
        runs = [run_one(name, drop, seed, args)
                for seed in args.seeds for name in args.topologies for drop in args.drops]
    table = aggregate(runs)
    if args.plot:
        seeds = ", ".join(map(str, args.seeds))
        plot(table, args.plot,
             f"MATRPO, spread, seeded schedule, {args.activations} activations per phase, "
             f"last of {args.iterations} phases, message timeout {args.message_timeout} s; "
             f"seeds {seeds}" + (" (band: min–max over seeds)" if len(args.seeds) > 1 else ""))
    failures = [r["run_dir"] for r in runs if r["status"] != "completed"]
    return emit("fault_sweep", {
        "status": "ok" if not failures else "failed",
        "failed_runs": failures,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "schedule": "seeded",
        "measured": measured,
        "table": table,
        "runs": runs,
    }, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
