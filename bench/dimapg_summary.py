"""Seeds of DiMA-PG and I-TRPO on spread-shared: Table 1's rows as mean ± spread, and the plot.

Reads ``bench.dimapg_single_process`` results (DiMA-PG, scored with ``--episodes``) and
``bench.dimapg_learning`` results (I-TRPO with ``--no-dimapg``, or both methods), prints and
writes one JSON line with the per-seed scores ("using θ", "using θ′_i", I-TRPO; each the mean
over episodes of the minimum over agents of the own return), their mean and standard deviation
over seeds, and with ``--plot`` the minimum-reward learning curves (mean over seeds, shaded from
the lowest to the highest seed; I-TRPO's per-iteration points as a moving mean over
``--window`` iterations, one DiMA-PG iteration's worth of steps by default).

    python -m bench.dimapg_summary --plot docs/dimapg_learning_s23_n10.png \\
        bench/results/dimapg_single_process-*.json bench/results/dimapg_learning-*.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from bench.common import RESULTS, emit


def read(paths: list[Path]) -> dict[str, dict[int, dict]]:
    """Per method, seed → (scores, curve as (env steps, value) pairs)."""
    runs: dict[str, dict[int, dict]] = {"dimapg": {}, "itrpo": {}}
    for path in paths:
        result = json.loads(path.read_text())
        if result.get("benchmark") == "dimapg_single_process":
            settings, steps = result["settings"], result["env_steps_per_iteration"]
            runs["dimapg"][settings["seed"]] = {
                "scores": result["min_reward"],
                "curve": [((i + 1) * steps, v) for i, v in enumerate(result["curve"])],
                "file": str(path),
            }
        elif result.get("benchmark") == "dimapg_learning":
            seed = int(result["argv"][result["argv"].index("--seed") + 1]) \
                if "--seed" in result["argv"] else 0
            if result["curves"].get("I-TRPO"):
                runs["itrpo"][seed] = {
                    "scores": {"itrpo": result["min_reward"]["itrpo"]},
                    "curve": [tuple(p) for p in result["curves"]["I-TRPO"]],
                    "file": str(path),
                }
    return runs


def spread(values: list[float]) -> dict[str, float | list[float]]:
    array = np.array(values, dtype=float)
    return {"mean": float(array.mean()), "std": float(array.std(ddof=1)) if len(array) > 1
            else 0.0, "seeds": [float(v) for v in array]}


def mean_curve(curves: list[list[tuple[int, float]]], window: int) -> tuple[np.ndarray, ...]:
    """Steps, mean, lowest and highest seed of the (moving-mean) curves, cut to the shortest."""
    length = min(len(c) for c in curves)
    steps = np.array([p[0] for p in curves[0][:length]], dtype=float)
    values = np.array([[p[1] for p in c[:length]] for c in curves])
    if window > 1:
        kernel = np.ones(window) / window
        values = np.array([np.convolve(v, kernel, mode="valid") for v in values])
        steps = steps[window - 1:]
    return steps, values.mean(axis=0), values.min(axis=0), values.max(axis=0)


def plot(path: Path, runs: dict[str, dict[int, dict]], window: int, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.4, 3.8))
    for method, label, smooth in (("dimapg", "DiMA-PG θ (pre phase)", 1),
                                  ("itrpo", f"I-TRPO (moving mean of {window} it.)", window)):
        curves = [run["curve"] for run in runs[method].values()]
        if not curves:
            continue
        steps, mean, low, high = mean_curve(curves, smooth)
        line, = axis.plot(steps / 1000, mean, label=f"{label}, {len(curves)} seeds")
        axis.fill_between(steps / 1000, low, high, color=line.get_color(), alpha=0.2)
    axis.set_xlabel("environment steps (thousands)")
    axis.set_ylabel("min over agents of mean episode return")
    axis.set_title(title)
    axis.legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(prog="bench.dimapg_summary")
    parser.add_argument("files", type=Path, nargs="+")
    parser.add_argument("--plot", type=Path, default=None)
    parser.add_argument("--window", type=int, default=7,
                        help="I-TRPO iterations per plotted point (moving mean)")
    parser.add_argument("--title", default="spread-shared, ring of 10: min over agents")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    runs = read(args.files)
    table = {}
    for key in ("using_theta", "using_theta_prime"):
        values = [runs["dimapg"][seed]["scores"][key] for seed in sorted(runs["dimapg"])]
        if values:
            table[key] = spread(values)
    values = [runs["itrpo"][seed]["scores"]["itrpo"] for seed in sorted(runs["itrpo"])]
    if values:
        table["itrpo"] = spread(values)
    first_last = {
        method: spread([float(np.mean([p[1] for p in run["curve"][-3:]]))
                        - float(np.mean([p[1] for p in run["curve"][:3]]))
                        for run in (runs[method][seed] for seed in sorted(runs[method]))])
        for method in runs if runs[method]
    }
    if args.plot:
        plot(args.plot, runs, args.window, args.title)
    return emit("dimapg_summary", {
        "status": "ok", "min_reward": table,
        "curve_gain_last3_minus_first3": first_last,
        "seeds": {method: sorted(runs[method]) for method in runs},
        "files": {method: [run["file"] for run in runs[method].values()] for method in runs},
    }, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
