"""DiMA-PG in one process, for quick one-factor checks (issue 10, session 22).

N :class:`~p2pmarl.algos.dimapg.DiMAPG` agents step K copies of ``spread-shared`` in this
process (the batched particle world, a launch's default backend); the phases and copy groups
are those of a launch (``pre`` with everyone on θ, then ``adapted`` with
:func:`~p2pmarl.algos.base.copy_group_layout`), and the outer step is the TRPO step with exact
network means (``single_process_trpo`` of ``tests/test_dimapg.py``, which the tests check
against the gossip version). No processes, no gossip: only the learning math.
Prints the minimum over agents of the mean ``pre``-phase episode return per iteration; with
``--episodes`` it then scores the final θ as ``bench.dimapg_learning`` does (Table 1's "using θ"
and "using θ′_i": mean over episodes of the minimum over agents of the own return).

    python -m bench.dimapg_single_process --iterations 12 --reward-clip 0 --adapted-steps 600 \
        --no-score-term
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np
import torch

from bench.common import RESULTS, emit, load_average, topology
from bench.dimapg_learning import adaptation_batches, play
from p2pmarl.algos.base import Batch, copy_group_layout
from p2pmarl.algos.dimapg import DiMAPG, DiMAPGConfig
from p2pmarl.algos.networks import set_flat_parameters
from p2pmarl.config import RunConfig
from p2pmarl.envs import env_spec
from p2pmarl.envs.particles import ParticleWorld, make_batched
from tests.test_dimapg import single_process_trpo


def rollout(
    agents: list[DiMAPG], world: ParticleWorld, steps: int, groups: np.ndarray | None,
    rng: np.random.Generator,
) -> tuple[list[Batch], np.ndarray]:
    """One phase of ``steps`` steps per copy of the batched world (fresh episodes); the batches
    and each agent's mean episode return."""
    n, k = len(agents), world.n_copies
    world.reset([int(s) for s in rng.integers(2**31, size=k)])
    copies = slice(0, k)
    obs = np.zeros((n, steps, k, world.spec.observation_sizes[0]), dtype=np.float32)
    joint = np.zeros((steps, k, n), dtype=np.int64)
    rewards = np.zeros((n, steps, k), dtype=np.float32)
    dones = np.zeros((steps, k), dtype=bool)
    for t in range(steps):
        for i, agent in enumerate(agents):
            obs[i, t] = world.observation(i, copies)
            joint[t, :, i] = (agent.act(obs[i, t]) if groups is None
                              else agent.act_in_phase(obs[i, t], None, groups))
        step_rewards, dones[t] = world.step(copies, joint[t])
        rewards[:, t] = step_rewards.T
    last = [np.array(world.observation(i, copies)) for i in range(n)]
    phase = "pre" if groups is None else "adapted"
    batches = [Batch(i, obs[i], joint, rewards[i], dones, last[i], phase=phase,
                     copy_groups=groups) for i in range(n)]
    episodes = rewards[0].size / agents[0].spec.episode_length
    return batches, rewards.sum(axis=(1, 2)) / episodes


def main() -> int:
    parser = argparse.ArgumentParser(prog="bench.dimapg_single_process")
    parser.add_argument("--n-agents", type=int, default=3)
    parser.add_argument("--n-envs", type=int, default=6)
    parser.add_argument("--episode-length", type=int, default=200)
    parser.add_argument("--adapted-steps", type=int, default=None)
    parser.add_argument("--iterations", type=int, default=12)
    parser.add_argument("--reward-clip", type=float, default=1.0)
    parser.add_argument("--inner-steps", type=int, default=3)
    parser.add_argument("--no-score-term", action="store_true")
    parser.add_argument("--first-order", action="store_true")
    parser.add_argument("--score-estimator", choices=("score", "lvc"), default="score",
                        help="eq. 14's second term as written or ProMP's LVC")
    parser.add_argument("--gradient-draws", type=int, default=0,
                        help="instead of training: draw this many iterations' batches at the "
                             "initial θ and report the spread of Σ_n ∇L_n per estimator")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--episodes", type=int, default=0,
                        help="evaluation episodes of the final θ and θ′_i (0: none)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    n, k, horizon = args.n_agents, args.n_envs, args.episode_length
    spec = env_spec("spread-shared", n, horizon)
    config = dataclasses.replace(
        DiMAPGConfig(), inner_steps=args.inner_steps, reward_clip=args.reward_clip,
        score_term=not args.no_score_term, first_order=args.first_order,
        score_estimator=args.score_estimator,
    )
    agents = [DiMAPG(i, spec, n, config, seed=100 + i, shared_seed=args.seed) for i in range(n)]
    world = make_batched("spread-shared", n, k, horizon)
    rng = np.random.default_rng(args.seed)
    curve, adapted_curve, started, load_before = [], [], time.monotonic(), load_average()
    adapted_steps = args.adapted_steps or horizon
    if args.gradient_draws:
        return emit("dimapg_gradient_spread", {
            "status": "ok", "settings": vars(args) | {"out": str(args.out)},
            "estimators": gradient_spread(agents, world, adapted_steps, rng, args),
            "seconds": time.monotonic() - started, "load_average_before": load_before,
            "load_average_after": load_average(),
        }, args.out)
    for iteration in range(args.iterations):
        pre, pre_returns = rollout(agents, world, horizon, None, rng)
        for agent, batch in zip(agents, pre, strict=True):
            agent.phase_update(batch)
        groups = copy_group_layout(k, n, args.seed, iteration, 1)
        adapted, _ = rollout(agents, world, adapted_steps, groups, rng)
        for agent, batch in zip(agents, adapted, strict=True):
            agent.local_update(batch)
        theta = single_process_trpo(agents)
        for agent in agents:
            set_flat_parameters(agent.policy.parameters(), theta)
        curve.append(float(pre_returns.min()))
        adapted_curve.append(min(own_group_return(a, b) for a, b in zip(agents, adapted,
                                                                     strict=True)))
        print(f"iteration {iteration}: min pre return {curve[-1]:.1f}, "
              f"min adapted return {adapted_curve[-1]:.1f}", flush=True)
    training_seconds = time.monotonic() - started
    scores = evaluate(agents, args) if args.episodes else {}
    return emit("dimapg_single_process", {
        "status": "ok", "settings": vars(args) | {"out": str(args.out)}, "curve": curve,
        "adapted_curve": adapted_curve, "env_steps_per_iteration": k * (horizon + adapted_steps),
        "first3": float(np.mean(curve[:3])), "last3": float(np.mean(curve[-3:])),
        "min_reward": scores, "seconds": training_seconds,
        "evaluation_seconds": time.monotonic() - started - training_seconds,
        "load_average_before": load_before, "load_average_after": load_average(),
    }, args.out)


ESTIMATORS = {
    "maml (no score term)": {"score_term": False},
    "score (eq. 14)": {"score_term": True, "score_estimator": "score"},
    "lvc (ProMP)": {"score_term": True, "score_estimator": "lvc"},
}
"""The estimators :func:`gradient_spread` compares on the same batches."""


def gradient_spread(
    agents: list[DiMAPG], world: ParticleWorld, adapted_steps: int, rng: np.random.Generator,
    args: argparse.Namespace,
) -> dict[str, dict[str, float]]:
    """Spread of the network sum G = Σ_n ∇θ L_n over independent draws at the initial θ.

    Every estimator sees the same batches. The score term's baseline b_n is the mean L_n of the
    other draws (independent of the draw, like the runs' average of earlier iterations).
    Reported per estimator: ‖mean G‖, mean ‖G‖, the relative variance E‖G − mean G‖² / ‖mean
    G‖², the mean cosine of each G with the mean of the other draws, and the mean over draws of
    ‖G − G_maml‖ / ‖G_maml‖ (same batches: how much the estimator adds to MAML's).
    """
    n, k = len(agents), world.n_copies
    draws = []
    for draw in range(args.gradient_draws):
        pre, _ = rollout(agents, world, args.episode_length, None, rng)
        for agent, batch in zip(agents, pre, strict=True):
            agent.phase_update(batch)
        groups = copy_group_layout(k, n, args.seed, draw, 1)
        adapted, _ = rollout(agents, world, adapted_steps, groups, rng)
        draws.append((pre, adapted))
    own_returns = np.array([[own_group_return(a, b) for a, b in zip(agents, adapted,
                                                                     strict=True)]
                            for _, adapted in draws])
    result, maml = {}, None
    for label, changes in ESTIMATORS.items():
        totals = []
        for draw, (pre, adapted) in enumerate(draws):
            total = 0
            for agent, pre_batch, batch in zip(agents, pre, adapted, strict=True):
                agent.config = dataclasses.replace(agent.config, **changes)
                agent.phase_update(pre_batch)
                others = np.delete(own_returns[:, agent.agent_id], draw)
                agent.score_baseline = float(others.mean())
                agent.local_update(batch)
                total = total + agent._gradient.double()
            totals.append(total)
        stacked = torch.stack(totals)
        maml = stacked if maml is None else maml
        mean = stacked.mean(dim=0)
        cosines = [
            float(torch.nn.functional.cosine_similarity(
                g, (stacked.sum(dim=0) - g) / (len(totals) - 1), dim=0))
            for g in totals
        ]
        result[label] = {
            "norm_of_mean": float(mean.norm()),
            "mean_norm": float(stacked.norm(dim=1).mean()),
            "relative_variance": float(((stacked - mean) ** 2).sum(dim=1).mean()
                                       / mean.norm() ** 2),
            "cosine_to_other_draws": float(np.mean(cosines)),
            "relative_difference_from_maml": float(((stacked - maml).norm(dim=1)
                                                    / maml.norm(dim=1)).mean()),
        }
        print(label, result[label], flush=True)
    return result


def own_group_return(agent: DiMAPG, batch: Batch) -> float:
    """The agent's mean (unclipped) episode return in its own copy group of the adapted phase."""
    own = batch.copy_groups == agent.agent_id
    rewards = batch.rewards[:, own]
    return float(rewards.mean()) * agent.spec.episode_length


def evaluate(agents: list[DiMAPG], args: argparse.Namespace) -> dict[str, float]:
    """Table 1's "using θ" and "using θ′_i" of the final θ, as ``bench.dimapg_learning``."""
    config = RunConfig(
        topology=topology(f"ring{args.n_agents}"), env="spread-shared", algo="dimapg",
        n_envs=args.n_envs, episode_length=args.episode_length,
        steps_per_iteration=args.n_envs * args.episode_length,
    )
    seed = args.seed + 10
    using_theta, _ = play(config, lambda obs: [a.act(o) for a, o in zip(agents, obs,
                                                                        strict=True)],
                          args.episodes, seed)
    for agent, batch in zip(agents, adaptation_batches(config, agents, seed + 1), strict=True):
        agent.phase_update(batch)
    using_adapted, _ = play(config, lambda obs: [a.act_adapted(o) for a, o in zip(
        agents, obs, strict=True)], args.episodes, seed)
    return {"using_theta": using_theta, "using_theta_prime": using_adapted}


if __name__ == "__main__":
    raise SystemExit(main())
