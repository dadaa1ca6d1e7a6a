"""DiMA-PG against I-TRPO on cooperative navigation (``spread-shared``), the paper's Table 1.

Trains DiMA-PG and I-TRPO at equal environment steps on a ring of N agents, then plays
``--episodes`` episodes of the final policies in this process: "using θ" (every agent acts with
the shared θ), "using θ′_i" (every agent first adapts θ′_i from θ with the run's k inner steps on
one fresh rollout of its own reward, then all act with θ′_i), and I-TRPO. The score is the
paper's: per episode, the minimum over agents of their own (unclipped) episode return, averaged
over the episodes. Writes the learning curves (minimum over agents of the per-iteration mean
return) as JSON and, with ``--plot``, a PNG.

    python -m bench.dimapg_learning --n-agents 3 --iterations 60 --plot docs/dimapg_learning.png
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from bench.common import RESULTS, emit, launch_failure, load_average, topology
from p2pmarl.algos import make_algorithm
from p2pmarl.algos.base import Batch
from p2pmarl.config import RunConfig
from p2pmarl.envs.particles import make_batched
from p2pmarl.runtime.launcher import launch
from p2pmarl.runtime.rundir import RunDir, process_seeds, read_jsonl
from p2pmarl.topology import load_topology


def train(config: RunConfig) -> tuple[Path, float]:
    started = time.monotonic()
    result = launch(config, show_progress=False)
    failure = launch_failure(result)
    if failure:
        raise SystemExit(failure)
    return Path(result.run_dir), time.monotonic() - started


def curve(run_dir: Path, n_agents: int, key: str) -> list[tuple[int, float]]:
    """(env steps, min over agents of ``key``) per iteration."""
    per_agent = [
        {r["iteration"]: r for r in read_jsonl(run_dir / f"agents/agent-{i}/metrics.jsonl")
         if "iteration" in r}
        for i in range(n_agents)
    ]
    points = []
    for iteration in sorted(per_agent[0]):
        values = [rows[iteration].get(key) for rows in per_agent if iteration in rows]
        if len(values) == n_agents and all(v is not None for v in values):
            points.append((per_agent[0][iteration]["env_steps"], float(min(values))))
    return points


def load_agents(run_dir: Path, config: RunConfig) -> list:
    topo = load_topology(run_dir / "topology.json")
    from p2pmarl.envs import env_spec

    spec = env_spec(config.env, topo.n_agents, config.episode_length)
    _, seeds = process_seeds(config.seed, topo.n_agents)
    iteration = max(RunDir(run_dir).checkpoint_iterations(0))
    agents = []
    for i in range(topo.n_agents):
        agent = make_algorithm(config.algo, i, spec, topo, config, seeds[i] + 991)
        state = torch.load(RunDir(run_dir).checkpoint(i, iteration), weights_only=False)
        agent.load_state_dict(state["algorithm"])
        agents.append(agent)
    return agents


def play(
    config: RunConfig, act, episodes: int, seed: int, parallel: int = 25
) -> tuple[float, np.ndarray]:
    """Mean over episodes of the per-episode min over agents of own return; also all returns.

    Plays ``parallel`` episodes at a time in as many copies of the batched particle world (the
    launch's default backend, step for step mpe2's); ``act`` maps each agent's stacked
    observations (copies, obs) to its actions (copies,), so each agent makes one batched policy
    call per step (the machine can be very loaded)."""
    n = n_agents_of(config)
    rng = np.random.default_rng(seed)
    returns = np.zeros((episodes, n))
    for first in range(0, episodes, parallel):
        count = min(parallel, episodes - first)
        world = make_batched(config.env, n, count, config.episode_length)
        world.reset([int(s) for s in rng.integers(2**31, size=count)])
        for _ in range(config.episode_length):
            actions = act([np.array(world.observation(i, slice(0, count))) for i in range(n)])
            rewards, _ = world.step(slice(0, count), np.stack(actions, axis=1))
            returns[first:first + count] += rewards
    return float(returns.min(axis=1).mean()), returns


def n_agents_of(config: RunConfig) -> int:
    return load_topology(config.topology).n_agents


def adaptation_batches(config: RunConfig, agents: list, seed: int) -> list[Batch]:
    """One rollout of ``n_envs`` episodes with everyone on θ, as each agent's own Batch."""
    n, T, K = len(agents), config.episode_length, config.n_envs
    world = make_batched(config.env, n, K, T)
    world.reset([int(s) for s in np.random.default_rng(seed).integers(2**31, size=K)])
    obs = np.zeros((n, T, K, world.spec.observation_sizes[0]), dtype=np.float32)
    joint = np.zeros((T, K, n), dtype=np.int64)
    rewards = np.zeros((n, T, K), dtype=np.float32)
    dones = np.zeros((T, K), dtype=bool)
    for t in range(T):
        for i, agent in enumerate(agents):
            obs[i, t] = world.observation(i, slice(0, K))
            joint[t, :, i] = agent.act(obs[i, t])
        step_rewards, dones[t] = world.step(slice(0, K), joint[t])
        rewards[:, t] = step_rewards.T
    return [
        Batch(i, obs[i], joint, rewards[i], dones, obs[i, -1], phase="pre") for i in range(n)
    ]


def evaluate_dimapg(run_dir: Path, config: RunConfig, episodes: int, seed: int) -> dict:
    agents = load_agents(run_dir, config)

    def shared(observations):
        return [a.act(o) for a, o in zip(agents, observations, strict=True)]

    using_theta, _ = play(config, shared, episodes, seed)
    for agent, batch in zip(agents, adaptation_batches(config, agents, seed + 1), strict=True):
        agent.phase_update(batch)

    def adapted(observations):
        return [a.act_adapted(o) for a, o in zip(agents, observations, strict=True)]

    using_adapted, _ = play(config, adapted, episodes, seed)
    return {"using_theta": using_theta, "using_theta_prime": using_adapted}


def evaluate_itrpo(run_dir: Path, config: RunConfig, episodes: int, seed: int) -> float:
    agents = load_agents(run_dir, config)

    def policy(observations):
        return [a.act(o) for a, o in zip(agents, observations, strict=True)]

    return play(config, policy, episodes, seed)[0]


def plot(path: Path, curves: dict[str, list[tuple[int, float]]], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 3.6))
    for label, points in curves.items():
        if points:
            steps, values = zip(*points, strict=True)
            axis.plot(np.array(steps) / 1000, values, label=label)
    axis.set_xlabel("environment steps (thousands)")
    axis.set_ylabel("min over agents of mean episode return")
    axis.set_title(title)
    axis.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(prog="bench.dimapg_learning")
    parser.add_argument("--n-agents", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=40, help="DiMA-PG iterations")
    parser.add_argument("--n-envs", type=int, default=6)
    parser.add_argument("--episode-length", type=int, default=200, help="horizon (paper: 200)")
    parser.add_argument("--episodes", type=int, default=100, help="evaluation episodes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--plot", type=Path, default=None)
    parser.add_argument("--curves", type=Path, default=None, help="also write curves JSON here")
    parser.add_argument("--reward-clip", type=float, default=1.0,
                        help="DiMA-PG reward clip c (paper and default: 1; 0 = off)")
    parser.add_argument("--adapted-steps", type=int, default=None,
                        help="steps per copy of DiMA-PG's adapted phase (default: the episode "
                             "length; N·episode length gives each agent as many adapted episodes "
                             "as pre-adaptation ones)")
    parser.add_argument("--no-itrpo", action="store_true", help="train DiMA-PG only")
    parser.add_argument("--no-dimapg", action="store_true",
                        help="train and score I-TRPO only (at the steps DiMA-PG would take)")
    parser.add_argument("--evaluate", type=Path, nargs=2, metavar=("DIMAPG_RUN", "ITRPO_RUN"),
                        default=None, help="skip training: evaluate these two finished runs "
                        "(made by this benchmark with the same other arguments)")
    parser.add_argument("--no-score-term", action="store_true",
                        help="DiMA-PG without eq. 14's score-function term")
    args = parser.parse_args()
    ring = topology(f"ring{args.n_agents}")
    common = dict(
        topology=ring, env="spread-shared", n_envs=args.n_envs,
        episode_length=args.episode_length, steps_per_iteration=args.n_envs * args.episode_length,
        seed=args.seed, out=str(args.out / "runs"), checkpoint_every=10**6,
        step_timeout=120.0, connect_timeout=180.0,  # the shared machine can be very loaded
    )
    dimapg = RunConfig(algo="dimapg", iterations=args.iterations,
                       dimapg_reward_clip=args.reward_clip,
                       dimapg_adapted_steps=args.adapted_steps,
                       dimapg_no_score_term=args.no_score_term, **common).validate()
    # DiMA-PG runs a pre phase of T steps and an adapted phase of T' steps per copy per
    # iteration: I-TRPO (T steps per copy) gets (T + T')/T times the iterations
    adapted = args.adapted_steps or args.episode_length
    itrpo_iterations = round(args.iterations * (args.episode_length + adapted)
                             / args.episode_length)
    itrpo = RunConfig(algo="itrpo", iterations=itrpo_iterations, **common).validate()
    load_before = load_average()
    if args.evaluate:
        (dimapg_dir, itrpo_dir), dimapg_seconds, itrpo_seconds = args.evaluate, None, None
    else:
        dimapg_dir, dimapg_seconds = (None, 0.0) if args.no_dimapg else train(dimapg)
        itrpo_dir, itrpo_seconds = (None, 0.0) if args.no_itrpo else train(itrpo)
    evaluation_started = time.monotonic()
    scores = {} if dimapg_dir is None else evaluate_dimapg(
        dimapg_dir, dimapg, args.episodes, args.seed + 10)
    if itrpo_dir is not None:
        scores["itrpo"] = evaluate_itrpo(itrpo_dir, itrpo, args.episodes, args.seed + 10)
    curves = {
        "DiMA-PG (θ, pre phase)": [] if dimapg_dir is None else curve(
            dimapg_dir, args.n_agents, "phase/pre/return"),
        "DiMA-PG (θ_n, adapted phase)": [] if dimapg_dir is None else curve(
            dimapg_dir, args.n_agents, "phase/adapted/return"),
        "I-TRPO": [] if itrpo_dir is None else curve(itrpo_dir, args.n_agents, "rollout/return"),
    }
    if args.plot:
        plot(args.plot, curves, f"spread-shared, ring of {args.n_agents}")
    if args.curves:
        import json

        args.curves.write_text(json.dumps(curves) + "\n")
    disagreement = [] if dimapg_dir is None else [
        r.get("dimapg/replica_disagreement") for r in
        read_jsonl(dimapg_dir / "agents/agent-0/metrics.jsonl") if "iteration" in r
    ]
    return emit("dimapg_learning", {
        "status": "ok",
        "n_agents": args.n_agents,
        "env_steps": {"dimapg": curves["DiMA-PG (θ, pre phase)"][-1][0] if curves[
            "DiMA-PG (θ, pre phase)"] else None,
            "itrpo": curves["I-TRPO"][-1][0] if curves["I-TRPO"] else None},
        "min_reward": scores,
        "theta_prime_vs_theta": None if dimapg_dir is None else (
            scores["using_theta_prime"] - scores["using_theta"]) / abs(scores["using_theta"]),
        "train_seconds": {"dimapg": dimapg_seconds, "itrpo": itrpo_seconds},
        "evaluation_seconds": time.monotonic() - evaluation_started,
        "replica_disagreement_max": max((d for d in disagreement if d is not None),
                                        default=None),
        "curves": curves,
        "reward_clip": args.reward_clip,
        "score_term": not args.no_score_term,
        "adapted_steps": adapted,
        "run_dirs": {"dimapg": str(dimapg_dir), "itrpo": str(itrpo_dir)},
        "itrpo_iterations": itrpo_iterations,
        "load_average_before": load_before,
        "load_average_after": load_average(),
    }, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
