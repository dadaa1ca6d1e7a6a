"""Before/after proof that a runtime change leaves seeded runs identical, for every variant.

``tests/test_golden.py`` pins the seeded numbers of I-TRPO, MATRPO and C-TRPO. This script covers
the others: it launches the same tiny seeded run of each listed variant in this checkout and in
``--baseline DIR`` (an earlier commit, e.g. ``git worktree add --detach /tmp/base COMMIT``; run
with this interpreter and ``DIR`` first on ``PYTHONPATH``), and compares every agent's final
checkpoint parameter by parameter (a SHA-1 over the tensors and arrays of the saved state).

    python -m bench.seeded_identity --baseline /tmp/base [--algos maddpg fdmarl happo dimapg]

The last stdout line is one JSON object: per variant the digests of both trees and ``identical``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from bench.common import RESULTS, emit

REPO = Path(__file__).resolve().parents[1]
RUNS = {
    "maddpg": ["--topology", "topologies/complete4.yaml", "--env", "tag", "--iterations", "40",
               "--steps-per-iteration", "100", "--n-envs", "8", "--episode-length", "50"],
    "genetic-maddpg": ["--topology", "topologies/ring4.yaml", "--env", "tag", "--iterations",
                       "30", "--steps-per-iteration", "100", "--n-envs", "8",
                       "--episode-length", "50"],
    "fdmarl": ["--topology", "topologies/ring3.yaml", "--env", "spread", "--iterations", "2",
               "--steps-per-iteration", "1000", "--n-envs", "10"],
    "happo": ["--topology", "topologies/ring3.yaml", "--env", "spread", "--iterations", "2",
              "--steps-per-iteration", "1000", "--n-envs", "10"],
    "hatrpo": ["--topology", "topologies/ring3.yaml", "--env", "spread", "--iterations", "2",
               "--steps-per-iteration", "1000", "--n-envs", "10"],
    "dimapg": ["--topology", "topologies/ring3.yaml", "--env", "spread-shared", "--iterations",
               "2", "--steps-per-iteration", "1000", "--n-envs", "6"],
}
"""A short seeded run per variant (updates included: MADDPG starts learning after 2,560 steps)."""


def _leaves(value: Any) -> Iterator[bytes]:
    if isinstance(value, dict):
        for key in sorted(value, key=str):
            yield str(key).encode()
            yield from _leaves(value[key])
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _leaves(item)
    elif isinstance(value, torch.Tensor):
        yield value.detach().cpu().numpy().tobytes()
    elif hasattr(value, "tobytes"):
        yield value.tobytes()
    else:
        yield repr(value).encode()


def digest(checkpoint: Path) -> str:
    """SHA-1 (12 hex digits) of a checkpoint's algorithm state."""
    state = torch.load(checkpoint, weights_only=False)["algorithm"]
    return hashlib.sha1(b"".join(_leaves(state))).hexdigest()[:12]


def run(tree: Path, algo: str, out: Path) -> list[str]:
    """Launch ``algo``'s run in ``tree``; the digests of its agents' last checkpoints."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    command = [sys.executable, "-m", "p2pmarl", "launch", "--algo", algo, *RUNS[algo],
               "--out", str(out), "--seed", "0"]
    subprocess.run(command, cwd=tree, env=env, check=True, capture_output=True, timeout=600)
    (run_dir,) = out.iterdir()
    digests = []
    for agent_dir in sorted((run_dir / "agents").iterdir()):
        checkpoints = sorted((agent_dir / "checkpoints").iterdir())
        digests.append(digest(checkpoints[-1]))
    return digests


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, required=True)
    parser.add_argument("--algos", nargs="+", choices=sorted(RUNS), default=sorted(RUNS))
    args = parser.parse_args(argv)
    results = {}
    with tempfile.TemporaryDirectory(prefix="seeded-identity-") as scratch:
        for algo in args.algos:
            trees = {"baseline": args.baseline.resolve(), "this": REPO}
            digests = {name: run(tree, algo, Path(scratch) / name / algo)
                       for name, tree in trees.items()}
            results[algo] = {**digests, "identical": digests["baseline"] == digests["this"]}
            print(algo, results[algo], flush=True)
    identical = all(r["identical"] for r in results.values())
    return emit("seeded_identity", {
        "status": "ok" if identical else "differs", "baseline": str(args.baseline),
        "results": results, "all_identical": identical,
    }, RESULTS)


if __name__ == "__main__":
    raise SystemExit(main())
