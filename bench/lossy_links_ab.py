"""Issue 14's ring6 run at a few drop rates, this checkout and an earlier one alternated run by run.

The same run as ``bench/lossy_links.py --parts issue`` (MATRPO, ring6, 40 activations, 3 × 300
steps, ``drop: p`` and a crash of agent 4 at iteration 1, defaults), with every run of this
checkout followed at once by the same run of ``--baseline DIR`` (a worktree of an earlier commit,
run with this venv's Python and ``PYTHONPATH=DIR``), so both see the same machine load:

    git worktree add --detach /tmp/base f0b4567
    python -m bench.lossy_links_ab --baseline /tmp/base --drops 0 0.3 --seeds 0 1 2

Prints one JSON line per run, then a summary object (mean and median wall seconds per drop rate
and checkout, and the ratio to drop 0).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROW_FIELDS = ("drop", "seed", "status", "wall_seconds", "committed_per_attempted",
              "retransmissions")
SNIPPET = (
    "import json, tempfile; from pathlib import Path; from bench.lossy_links import issue_run; "
    "r = issue_run({drop}, {seed}, Path(tempfile.mkdtemp())); "
    "print('ROW' + json.dumps({{k: r[k] for k in {fields!r}}}))"
)


def one_run(root: Path, drop: float, seed: int) -> dict:
    """One issue run with the code under ``root``, in a fresh interpreter."""
    code = SNIPPET.format(drop=drop, seed=seed, fields=ROW_FIELDS)
    load = os.getloadavg()[0]
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(root)}, timeout=1200)
    lines = [line for line in done.stdout.splitlines() if line.startswith("ROW")]
    row = json.loads(lines[0][3:]) if lines else {"drop": drop, "seed": seed,
                                                   "error": done.stderr[-800:]}
    row.update(code=str(root), load=round(load, 2))
    return row


def summarise(rows: list[dict], roots: list[Path]) -> dict:
    table = {}
    for root in roots:
        mine = [r for r in rows if r["code"] == str(root) and "wall_seconds" in r]
        walls = {d: [r["wall_seconds"] for r in mine if r["drop"] == d]
                 for d in dict.fromkeys(r["drop"] for r in mine)}
        base = statistics.fmean(walls[0.0]) if walls.get(0.0) else None
        table[str(root)] = {
            str(d): {"mean": statistics.fmean(w), "median": statistics.median(w),
                     "ratio_of_means": statistics.fmean(w) / base if base else None}
            for d, w in walls.items()
        }
    return table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, required=True, help="earlier checkout")
    parser.add_argument("--drops", type=float, nargs="+", default=[0.0, 0.3])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    roots = [Path(__file__).resolve().parents[1], args.baseline.resolve()]
    rows = []
    for seed in args.seeds:
        for drop in args.drops:
            for root in roots:
                rows.append(one_run(root, drop, seed))
                print(json.dumps(rows[-1]), flush=True)
    print(json.dumps({"summary": summarise(rows, roots)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
