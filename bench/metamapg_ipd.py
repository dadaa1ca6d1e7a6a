"""Meta-MAPG on IPD: meta-train, then meta-test on held-out personas, as `p2pmarl launch` runs.

For every (setting, persona distribution, seed): one meta-training launch of ``--chains``
chains (iterations) against meta-train personas, then one meta-test launch of ``--test-chains``
chains against the meta-test personas (each played once, in a seeded order shared by every
setting of a seed), starting from the training run's last agent-0 checkpoint (Algorithm 2: no
outer step).

AUC of a chain = Σ_{ℓ=1}^{L} of the meta-agent's mean per-step reward in τ_φℓ (the authors'
per-chain-step score). The paper-scale AUC is that summed over the meta-test personas, as the
authors' validation code sums it over its persona set (docs/algorithm.md says why the paper's
13.77 must be on that scale): exact when ``--test-chains`` equals the test set's size (40 IPD,
60 RPS), else the set's size × the mean (an estimate). Both are reported as mean ± 95 % CI over
seeds (Student t), and every setting's per-seed and per-chain paired differences to Meta-PG
(same seeds, same personas in the same order). Optional ``--plot`` draws the AUCs and the
action-probability dynamics along the chain (the paper's Figure 12 analogue).

    python bench/metamapg_ipd.py --seeds 0 1 --chains 25 --test-chains 40 --plot docs/x.png
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
from p2pmarl.envs.matrix import payoff

SETTINGS = {
    "metamapg": {"metamapg_variant": "metamapg"},
    "metamapg-centralized": {"metamapg_variant": "metamapg", "metamapg_peer_model": True},
    "metapg": {"metamapg_variant": "metapg"},
    "lola": {"metamapg_variant": "lola"},
    "reinforce": {"metamapg_variant": "reinforce"},
}
T_95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
        9: 2.262}
TEST_PERSONAS = {"ipd": 40, "rps": 60}
"""Size of the meta-test split (appendix E)."""


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


def run_in_process(config_values: dict, name: str) -> tuple[list[dict], list[dict], Path]:
    """``--engine inprocess``: the same learners driven in this process
    (bench/metamapg_inprocess.py); returns the meta-agent's and the peer's records and a
    checkpoint file of the meta-agent."""
    import torch

    from bench.metamapg_inprocess import build, run_chains
    from p2pmarl.config import RunConfig

    config = RunConfig(**config_values).validate()
    learners = build(config)
    stats = run_chains(config, learners)
    checkpoint = Path(config.out) / f"{name}.pt"
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"algorithm": learners[0].state_dict()}, checkpoint)
    return [s[0] for s in stats], [s[1] for s in stats], checkpoint


def one(setting: str, distribution: str, seed: int, args: argparse.Namespace) -> dict:
    base = dict(
        topology=topology("pair"), env=args.env, algo="metamapg", n_envs=args.trajectories,
        episode_length=args.horizon, metamapg_chain_length=args.chain_length,
        metamapg_outer_lr=args.outer_lr, metamapg_critic_lr=args.critic_lr,
        metamapg_personas=distribution, seed=seed, out=str(args.out / "runs"),
        **SETTINGS[setting],
    )
    started = time.monotonic()
    name = f"{args.env}-{setting}-{distribution}-s{seed}"
    if args.engine == "inprocess":
        train, _, checkpoint = run_in_process({**base, "iterations": args.chains}, name)
        train_seconds = time.monotonic() - started
        test, peer, _ = run_in_process({**base, "iterations": args.test_chains,
                                        "metamapg_meta_test": True,
                                        "metamapg_init": str(checkpoint)}, f"{name}-test")
        train_dir = test_dir = checkpoint.parent
    else:
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
        "inner_lrs": test[0]["metamapg/inner_lrs"],
        "engine": args.engine,
        "test_chain_rewards": [r["metamapg/chain_rewards"] for r in test],
        "own_cooperate": [[r[f"chain/{ell}/own_action_probs"] for ell in range(L + 1)]
                          for r in test],
        "peer_cooperate": [[r[f"chain/{ell}/peer_action_probs"] for ell in range(L + 1)]
                           for r in peer],
        "test_personas": [r["metamapg/persona"] for r in peer],
        "train_seconds": train_seconds, "seconds": time.monotonic() - started,
        "train_run": str(train_dir), "test_run": str(test_dir),
    }


def summarize(results: list[dict], n_test: int, worst_reward: float = -1.5) -> dict:
    """Per setting/distribution: chain AUC, and the two readings of the paper's scale
    (docs/algorithm.md): ``paper_scale_auc`` = n_test × the seed's mean chain AUC (the sum over
    the test personas) and ``offset_scale_auc`` = the chain AUC with every reward shifted by
    −``worst_reward`` (L·1.5 added for IPD); mean ± 95 % CI over seeds, CI over all chains."""
    table: dict[str, dict] = {}
    for result in results:
        key = f"{result['setting']}/{result['distribution']}"
        entry = table.setdefault(key, {"seeds": [], "seed_means": [], "chains": [],
                                       "chain_length": len(result["test_chain_rewards"][0]) - 1})
        entry["seeds"].append(result["seed"])
        entry["seed_means"].append(float(np.mean(result["test_auc"])))
        entry["chains"].extend(result["test_auc"])
    for entry in table.values():
        entry["auc_mean"], entry["auc_ci95_seeds"] = confidence(entry["seed_means"])
        entry["auc_ci95_chains"] = confidence(entry["chains"])[1]
        entry["paper_scale_auc"], entry["paper_scale_ci95_seeds"] = confidence(
            [n_test * m for m in entry["seed_means"]])
        entry["offset_scale_auc"] = entry["auc_mean"] - entry["chain_length"] * worst_reward
    return table


def paired(results: list[dict], baseline: str = "metapg") -> dict:
    """Setting − ``baseline`` on the same seed and the same test personas in the same order:
    mean ± 95 % CI of the per-seed differences of mean chain AUC, and over all paired chains."""
    by_key = {(r["setting"], r["distribution"], r["seed"]): r for r in results}
    out: dict[str, dict] = {}
    for (setting, distribution, seed), result in sorted(by_key.items()):
        other = by_key.get((baseline, distribution, seed))
        if setting == baseline or other is None:
            continue
        entry = out.setdefault(f"{setting}-{baseline}/{distribution}",
                               {"seed_differences": [], "chain_differences": []})
        n = min(len(result["test_auc"]), len(other["test_auc"]))
        chains = np.asarray(result["test_auc"][:n]) - np.asarray(other["test_auc"][:n])
        entry["seed_differences"].append(float(chains.mean()))
        entry["chain_differences"].extend(chains.tolist())
    for entry in out.values():
        entry["mean"], entry["ci95_seeds"] = confidence(entry["seed_differences"])
        entry["ci95_chains"] = confidence(entry["chain_differences"])[1]
    return out


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
    bars.set_ylabel("meta-test chain AUC (Σ_{ℓ=1..L} mean reward)")
    bars.set_title("meta-test AUC, mean ± 95% CI over seeds")
    curves: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    for result in results:
        if result["distribution"] == "in":
            curves.setdefault(result["setting"], []).append(
                (np.array(result["own_cooperate"])[:, :, :, 0].mean(axis=(0, 2)),  # (L+1,)
                 np.array(result["peer_cooperate"])[:, :, :, 0].mean(axis=(0, 2))))
    for setting, pairs in sorted(curves.items()):
        for ax, index in ((own_ax, 0), (peer_ax, 1)):
            ax.plot(np.mean([pair[index] for pair in pairs], axis=0), marker="o",
                    label=f"{setting} ({len(pairs)} seeds)")
    first = "P(cooperate)" if results[0]["own_cooperate"] and len(
        results[0]["own_cooperate"][0][0][0]) == 2 else "P(rock)"
    for ax, who in ((own_ax, "meta-agent"), (peer_ax, "peer")):
        ax.set_xlabel("joint policy φ_ℓ along the chain")
        ax.set_ylabel(f"{first}, mean over states, test chains, seeds")
        ax.set_title(f"{who} action dynamics (in distribution)")
        ax.set_ylim(0, 1)
        ax.legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)


def merge(paths: list[Path], env: str, plot_path: Path | None, out: Path) -> int:
    """Tables, paired differences and plot of the runs in several result files (final JSON or
    ``partial.json``), e.g. of benchmark processes run side by side."""
    results = []
    for path in paths:
        data = json.loads(path.read_text())
        results.extend(data["runs"] if isinstance(data, dict) else data)
    table = summarize(results, TEST_PERSONAS[env], float(payoff(env).min()))
    if plot_path:
        plot(results, table, plot_path)
    return emit("metamapg_merge", {"status": "ok", "sources": [str(p) for p in paths],
                                   "table": table, "paired": paired(results), "runs": results},
                out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", nargs="+", default=["metamapg", "metapg"],
                        choices=sorted(SETTINGS))
    parser.add_argument("--env", default="ipd", choices=["ipd", "rps"],
                        help="rps: --distributions in only")
    parser.add_argument("--distributions", nargs="+", default=["in", "out"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--chains", type=int, default=25, help="meta-training chains")
    parser.add_argument("--test-chains", type=int, default=40,
                        help="meta-test chains (40 = every IPD test persona once; RPS 60)")
    parser.add_argument("--trajectories", type=int, default=16, help="K (paper 64)")
    parser.add_argument("--horizon", type=int, default=50, help="H (paper 150)")
    parser.add_argument("--chain-length", type=int, default=7, help="L (paper 7)")
    parser.add_argument("--outer-lr", type=float, default=1e-2, help="paper 1e-4")
    parser.add_argument("--critic-lr", type=float, default=1e-2, help="paper 1.5e-4")
    parser.add_argument("--engine", choices=["launch", "inprocess"], default="launch",
                        help="launch: p2pmarl launch runs; inprocess: the same learners in one "
                        "process (bench/metamapg_inprocess.py; same numbers, no round trips)")
    parser.add_argument("--out", type=Path, default=RESULTS / "metamapg_ipd")
    parser.add_argument("--plot", type=Path, default=None)
    parser.add_argument("--merge", nargs="+", type=Path, default=None,
                        help="only merge these result files (JSON or partial.json)")
    args = parser.parse_args()
    if args.merge:
        return merge(args.merge, args.env, args.plot, args.out)
    started = time.monotonic()
    results = []
    args.out.mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:  # seed-major: a cut-short run still holds complete pairs
        for distribution in args.distributions:
            for setting in args.settings:
                results.append(one(setting, distribution, seed, args))
                print(json.dumps({k: results[-1][k] for k in
                                  ("setting", "distribution", "seed", "test_auc", "seconds")}),
                      flush=True)
                (args.out / "partial.json").write_text(json.dumps(results))
    table = summarize(results, TEST_PERSONAS[args.env], float(payoff(args.env).min()))
    differences = paired(results)
    if args.plot:
        plot(results, table, args.plot)
    budget = {k: getattr(args, k) for k in ("env", "engine", "chains", "test_chains",
                                            "trajectories",
                                            "horizon", "chain_length", "outer_lr", "critic_lr")}
    return emit("metamapg_ipd", {"status": "ok", "budget": budget, "table": table,
                                 "paired": differences,
                                 "seconds": time.monotonic() - started, "runs": results},
                args.out)


if __name__ == "__main__":
    raise SystemExit(main())
