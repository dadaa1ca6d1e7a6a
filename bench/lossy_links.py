"""Lossy links at full speed with default settings (issue 14): wall time, committed activations
and disagreement against drop rate, and false timeouts without loss.

Three parts, every run a real multi-process launch, one after the other:

* ``issue``: the run of issue 14 — MATRPO on ring6 (spread), ``--admm-iterations 40
  --iterations 3 --steps-per-iteration 300``, every other setting default (async schedule,
  ``--admm-message-timeout 30``, retransmission on), a fault spec with ``drop: p`` and a crash of
  agent 4 at iteration 1 — at p = 0, 0.1, 0.3, 0.5: wall seconds (and their ratio to p = 0),
  activations committed at both ends per attempted, retransmissions, the run's status.
* ``false_timeouts``: er8 and ring12 without any fault, seeded (upper clamp 0.5 s, the setting
  that saw 2–4 false timeouts per er8 run before) and async (defaults): activations aborted
  although nothing was lost, by reason, and retransmissions (premature copies, harmless).
* ``disagreement``: the sweep of ``bench/fault_sweep.py`` on ring6 (seeded, 120 activations,
  message timeout 0.5 s) with retransmission, and side by side with ``--admm-retransmissions 0``
  (the fixed protocol the previous sweep measured: 0.018 / 0.023 / 0.037 / 0.039).

    python bench/lossy_links.py --seeds 0 1 2

Prints one JSON object (also written under ``bench/results/lossy_links/``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

try:
    from bench.common import RESULTS, emit, launch_failure, load_average, topology
    from bench.fault_sweep import activation_outcomes, phase_disagreements, run_one
except ModuleNotFoundError:  # run as ``python bench/NAME.py``: bench/ is on sys.path
    from common import RESULTS, emit, launch_failure, load_average, topology
    from fault_sweep import activation_outcomes, phase_disagreements, run_one

DROPS = (0.0, 0.1, 0.3, 0.5)
DEFAULT_RETRANSMISSIONS = 6
"""``RunConfig.admm_retransmissions``'s default, compared with 0 (the fixed protocol)."""
TIMEOUT_REASONS = frozenset({"timeout", "partner_ahead", "partner_silent", "phase_timeout"})
"""Abort reasons that, without any injected loss, can only mean a wait ended too early."""


def _rows(run_dir: Path, n_agents: int) -> list[dict[str, Any]]:
    from p2pmarl.runtime.rundir import RunDir, read_jsonl

    run = RunDir(run_dir)
    return [row for agent in range(n_agents) for row in read_jsonl(run.agent_admm(agent))]


def _retransmissions(run_dir: Path, n_agents: int) -> int:
    """Copies re-sent by the ADMM phases of the whole run (``admm/retransmissions``)."""
    from p2pmarl.runtime.rundir import RunDir, read_jsonl

    run = RunDir(run_dir)
    rows = [m for agent in range(n_agents) for m in read_jsonl(run.agent_metrics(agent))]
    return int(sum(m.get("admm/retransmissions") or 0 for m in rows))


def _launch(config: Any) -> tuple[Any, float]:
    from p2pmarl.runtime.launcher import launch

    started = time.monotonic()
    result = launch(config.validate(), show_progress=False)
    return result, time.monotonic() - started


def issue_run(drop: float, seed: int, out: Path) -> dict[str, Any]:
    from p2pmarl.config import RunConfig

    spec = Path(tempfile.mkdtemp(dir=out)) / "faults.json"
    spec.write_text(json.dumps({"drop": drop, "crash": [{"agent": 4, "at_iteration": 1}]}))
    config = RunConfig(topology=topology("ring6"), algo="matrpo", admm_iterations=40,
                       iterations=3, steps_per_iteration=300, seed=seed, faults=str(spec),
                       out=str(out / "runs"))
    result, wall = _launch(config)
    rows = _rows(result.run_dir, 6)
    outcomes = activation_outcomes(rows)
    attempted = outcomes["recorded"]
    return {
        "drop": drop, "seed": seed, "status": result.summary.get("status"),
        "wall_seconds": round(wall, 2), **outcomes,
        "committed_per_attempted": outcomes["committed"] / attempted if attempted else None,
        "retransmissions": _retransmissions(result.run_dir, 6),
        "recomputed": sum(bool(r.get("recomputed")) for r in rows),
        "drops_injected": (result.summary.get("faults") or {}).get("drop", 0),
        "run_dir": str(result.run_dir), "failure": launch_failure(result),
    }


def false_timeout_run(name: str, schedule: str, seed: int, args: argparse.Namespace) -> dict:
    from p2pmarl.config import RunConfig
    from p2pmarl.topology import load_topology

    n_agents = load_topology(topology(name)).n_agents
    extra = {"admm_message_timeout": 0.5} if schedule == "seeded" else {}
    config = RunConfig(topology=topology(name), algo="matrpo", admm_schedule=schedule,
                       admm_iterations=args.activations, iterations=2,
                       steps_per_iteration=1000, n_envs=4, episode_length=25, seed=seed,
                       out=str(args.out / "runs"), **extra)
    result, wall = _launch(config)
    rows = _rows(result.run_dir, n_agents)
    aborted = Counter(str(r.get("reason")) for r in rows if r.get("status") == "aborted")
    return {
        "topology": name, "schedule": schedule, "seed": seed,
        "message_timeout": config.admm_message_timeout,
        "status": result.summary.get("status"), "wall_seconds": round(wall, 2),
        **activation_outcomes(rows),
        "false_timeouts": sum(n for reason, n in aborted.items() if reason in TIMEOUT_REASONS),
        "aborted_by_reason": dict(aborted),
        "retransmissions": _retransmissions(result.run_dir, n_agents),
        "run_dir": str(result.run_dir), "failure": launch_failure(result),
    }


def disagreement_run(drop: float, seed: int, retransmissions: int, args: argparse.Namespace):
    sweep = argparse.Namespace(
        iterations=2, steps=1000, n_envs=4, episode_length=25, activations=120,
        message_timeout=0.5, phase_timeout=300.0, out=args.out,
    )
    record = run_one("ring6", drop, seed, sweep, admm_retransmissions=retransmissions)
    record["retransmissions_setting"] = retransmissions
    rows = _rows(Path(record["run_dir"]), 6)
    phase = phase_disagreements(rows, sorted({tuple(r["edge"]) for r in rows}), 1)
    record["edges_measured"] = sum(bool(v) for v in phase.values())
    return record


def _mean(values: list[Any]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.fmean(present) if present else None


def summarise(result: dict[str, Any]) -> dict[str, Any]:
    issue = result["issue"]
    base = _mean([r["wall_seconds"] for r in issue if r["drop"] == 0.0])
    table = {}
    for drop in dict.fromkeys(r["drop"] for r in issue):
        group = [r for r in issue if r["drop"] == drop]
        wall = _mean([r["wall_seconds"] for r in group])
        table[str(drop)] = {
            "wall_seconds": wall, "wall_ratio": wall / base if base and wall else None,
            "committed_per_attempted": _mean([r["committed_per_attempted"] for r in group]),
            "all_completed": all(r["status"] == "completed" for r in group),
        }
    disagreement = {}
    for setting in (DEFAULT_RETRANSMISSIONS, 0):
        for drop in DROPS:
            group = [r for r in result["disagreement"]
                     if r["drop"] == drop and r["retransmissions_setting"] == setting]
            if group:
                disagreement[f"retransmissions={setting} drop={drop}"] = {
                    "median": _mean([r["disagreement_median"] for r in group]),
                    "committed": _mean([r["committed"] for r in group]),
                    "split": _mean([r["split"] for r in group]),
                    "wall_seconds": _mean([r["wall_seconds"] for r in group]),
                    "seeds": len(group),
                }
    false = {f"{r['topology']}/{r['schedule']}/seed{r['seed']}": r["false_timeouts"]
             for r in result["false_timeouts"]}
    return {"issue_run": table, "false_timeouts": false, "disagreement": disagreement}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--issue-seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--activations", type=int, default=120,
                        help="false-timeout runs: ADMM activations per training iteration")
    parser.add_argument("--parts", nargs="+", default=["issue", "false_timeouts", "disagreement"])
    parser.add_argument("--out", type=Path, default=RESULTS / "lossy_links")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"issue": [], "false_timeouts": [], "disagreement": []}
    if "issue" in args.parts:
        result["issue"] = [issue_run(drop, seed, args.out)
                           for seed in args.issue_seeds for drop in DROPS]
    if "false_timeouts" in args.parts:
        result["false_timeouts"] = [false_timeout_run(name, schedule, seed, args)
                                    for seed in args.seeds[:1]
                                    for name in ("er8", "ring12")
                                    for schedule in ("seeded", "async")]
    if "disagreement" in args.parts:
        result["disagreement"] = [disagreement_run(drop, seed, setting, args)
                                  for seed in args.seeds for drop in DROPS
                                  for setting in ((DEFAULT_RETRANSMISSIONS, 0)
                                                  if seed == args.seeds[0]
                                                  else (DEFAULT_RETRANSMISSIONS,))]
    runs = result["issue"] + result["false_timeouts"] + result["disagreement"]
    failures = [r["run_dir"] for r in runs if r["status"] != "completed"]
    return emit("lossy_links", {
        "status": "ok" if not failures else "failed", "failed_runs": failures,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "measured": {"load_average_end": load_average()},
        "summary": summarise(result), **result,
    }, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
