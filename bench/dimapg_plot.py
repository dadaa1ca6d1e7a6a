"""One learning-curve plot from several ``bench.dimapg_learning`` result files.

    python -m bench.dimapg_plot docs/dimapg_learning.png bench/results/dimapg_learning-*.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from bench.dimapg_learning import plot


def label(result: dict) -> str:
    clip = "clip ±1" if result.get("reward_clip", 1.0) else "no clip"
    score = "" if result.get("score_term", True) else ", no score term"
    return f"DiMA-PG θ ({clip}{score})"


def main() -> int:
    out, *files = sys.argv[1:]
    curves = {}
    for path in files:
        result = json.loads(Path(path).read_text())
        for name, points in result["curves"].items():
            if name.startswith("DiMA-PG (θ,"):
                curves[label(result)] = points
            elif name == "I-TRPO" and points:
                curves["I-TRPO"] = points
    n = json.loads(Path(files[0]).read_text())["n_agents"]
    plot(Path(out), curves, f"spread-shared, ring of {n}: min over agents")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
