"""Meta-MAPG on IPD: meta-train, then meta-test on held-out personas, as `p2pmarl launch` runs.

For every (setting, persona distribution, seed): one meta-training launch of ``--chains``
chains (iterations) against meta-train personas, then one meta-test launch of ``--test-chains``
chains against the meta-test personas, starting from the training run's last agent-0
checkpoint (Algorithm 2: no outer step). AUC of a chain = Σ_{ℓ=1}^{L} of the meta-agent's mean
per-step reward in τ_φℓ; reported per setting as mean ± 95 % CI over seeds (Student t) of the
seeds' mean test AUC, and over all test chains. Optional ``--plot`` draws the AUCs and the
action-probability dynamics along the chain (the paper's Figure 12 analogue).

    python bench/metamapg_ipd.py --seeds 0 1 --chains 25 --test-chains 10 --plot docs/x.png
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import RESULTS, emit, launch_failure, topology

SETTINGS = {
    "metamapg": {"metamapg_variant": "metamapg"},
    "metamapg-centralized": {"metamapg_variant": "metamapg", "metamapg_peer_model": True},
    "metapg": {"metamapg_variant": "metapg"},
    "lola": {"metamapg_variant": "lola"},
    "reinforce": {"metamapg_variant": "reinforce"},
}
T_95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 9: 2.262}


def confidence(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of the Student-t 95 % interval (0 for one value)."""
    array = np.asarray(values, dtype=float)
    if len(array) < 2:
        return float(array.mean()), 0.0
    t = T_95.get(len(array) - 1, 1.96)
    return float(array.mean()), float(t * array.std(ddof=1) / np.sqrt(len(array)))


def records(run_dir: Path, agent: int) -> list[dict]:
    path = run_dir / "agents" / f"agent-{agent}" / "metrics.jsonl"
    return [r for r in map(json.loads, path.read_text().splitlines()) if "iteration" in r]


def run(config_values: dict) -> Path:
    from p2pmarl.config import RunConfig
    from p2pmarl.runtime.launcher import launch

    result = launch(RunConfig(**config_values).validate(), show_progress=False)
    failure = launch_failure(result)
    if failure:
        raise RuntimeError(failure)
    return Path(result.run_dir)


def one(setting: str, distribution: str, seed: int, args: argparse.Namespace) -> dict:
    base = dict(
        topology=topology("pair"), env=args.env, algo="metamapg", n_envs=args.trajectories,
        episode_length=args.horizon, metamapg_chain_length=args.chain_length,
        metamapg_outer_lr=args.outer_lr, metamapg_critic_lr=args.critic_lr,
        metamapg_personas=distribution, seed=seed, out=str(args.out / "runs"),
        **SETTINGS[setting],
    )
    started = time.monotonic()
    train_dir = run({**base, "iterations": args.chains, "checkpoint_every": args.chains})
    train_seconds = time.monotonic() - started
    checkpoint = train_dir / "agents/agent-0/checkpoints" / f"iter-{args.chains:06d}.pt"
    test_dir = run({**base, "iterations": args.test_chains, "metamapg_meta_test": True,
                    "metamapg_init": str(checkpoint), "checkpoint_every": args.test_chains})
    train = records(train_dir, 0)
    test, peer = records(test_dir, 0), records(test_dir, 1)
    L = args.chain_length
    return {
        "setting": setting, "distribution": distribution, "seed": seed,
        "form": test[0]["metamapg/form"],
        "train_auc": [r["metamapg/auc"] for r in train],
        "test_auc": [r["metamapg/auc"] for r in test],
        "test_chain_rewards": [r["metamapg/chain_rewards"] for r in test],
        "own_cooperate": [[r[f"chain/{ell}/own_action_probs"] for ell in range(L + 1)]
                          for r in test],
        "peer_cooperate": [[r[f"chain/{ell}/peer_action_probs"] for ell in range(L + 1)]
                           for r in peer],
        "test_personas": [r["metamapg/persona"] for r in peer],
        "train_seconds": train_seconds, "seconds": time.monotonic() - started,
        "train_run": str(train_dir), "test_run": str(test_dir),
    }


def summarize(results: list[dict]) -> dict:
    table: dict[str, dict] = {}
    for result in results:
        key = f"{result['setting']}/{result['distribution']}"
        entry = table.setdefault(key, {"seed_means": [], "chains": []})
        entry["seed_means"].append(float(np.mean(result["test_auc"])))
        entry["chains"].extend(result["test_auc"])
    for entry in table.values():
        entry["auc_mean"], entry["auc_ci95_seeds"] = confidence(entry["seed_means"])
        entry["auc_ci95_chains"] = confidence(entry["chains"])[1]
    return table


def plot(results: list[dict], table: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (bars, own_ax, peer_ax) = plt.subplots(1, 3, figsize=(15, 4))
    keys = sorted(table)
    means = [table[k]["auc_mean"] for k in keys]
    errors = [table[k]["auc_ci95_seeds"] for k in keys]
    bars.bar(range(len(keys)), means, yerr=errors, capsize=4, color="tab:blue")
    bars.set_xticks(range(len(keys)), keys, rotation=30, ha="right", fontsize=8)
    bars.set_ylabel("meta-test AUC (Σ_{ℓ=1..L} mean reward)")
    bars.set_title("IPD meta-test AUC, mean ± 95% CI over seeds")
    for result in results:
        if result["distribution"] != "in" or result["seed"] != results[0]["seed"]:
            continue
        own = np.array(result["own_cooperate"])  # (chains, L+1, S, A)
        peer = np.array(result["peer_cooperate"])
        for ax, data in ((own_ax, own), (peer_ax, peer)):
            ax.plot(data[:, :, :, 0].mean(axis=(0, 2)), marker="o", label=result["setting"])
    for ax, who in ((own_ax, "meta-agent"), (peer_ax, "peer")):
        ax.set_xlabel("joint policy φ_ℓ along the chain")
        ax.set_ylabel("P(cooperate), mean over states and test chains")
        ax.set_title(f"{who} action dynamics (in distribution)")
        ax.set_ylim(0, 1)
        ax.legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", nargs="+", default=["metamapg", "metapg"],
                        choices=sorted(SETTINGS))
    parser.add_argument("--env", default="ipd", choices=["ipd", "rps"],
                        help="rps: --distributions in only")
    parser.add_argument("--distributions", nargs="+", default=["in", "out"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--chains", type=int, default=25, help="meta-training chains")
    parser.add_argument("--test-chains", type=int, default=10, help="meta-test chains")
    parser.add_argument("--trajectories", type=int, default=16, help="K (paper 64)")
    parser.add_argument("--horizon", type=int, default=50, help="H (paper 150)")
    parser.add_argument("--chain-length", type=int, default=7, help="L (paper 7)")
    parser.add_argument("--outer-lr", type=float, default=1e-2, help="paper 1e-4")
    parser.add_argument("--critic-lr", type=float, default=1e-2, help="paper 1.5e-4")
    parser.add_argument("--out", type=Path, default=RESULTS / "metamapg_ipd")
    parser.add_argument("--plot", type=Path, default=None)
    args = parser.parse_args()
    started = time.monotonic()
    results = []
    for setting in args.settings:
        for distribution in args.distributions:
            for seed in args.seeds:
                results.append(one(setting, distribution, seed, args))
                print(json.dumps({k: results[-1][k] for k in
                                  ("setting", "distribution", "seed", "test_auc", "seconds")}),
                      flush=True)
    table = summarize(results)
    if args.plot:
        plot(results, table, args.plot)
    budget = {k: getattr(args, k) for k in ("env", "chains", "test_chains", "trajectories",
                                            "horizon", "chain_length", "outer_lr", "critic_lr")}
    return emit("metamapg_ipd", {"status": "ok", "budget": budget, "table": table,
                                 "seconds": time.monotonic() - started, "runs": results},
                args.out)


if __name__ == "__main__":
    raise SystemExit(main())
