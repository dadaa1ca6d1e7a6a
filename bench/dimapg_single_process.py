"""DiMA-PG in one process, for quick one-factor checks (issue 10, session 22).

N :class:`~p2pmarl.algos.dimapg.DiMAPG` agents step K copies of ``spread-shared`` in this
process; the phases and copy groups are those of a launch (``pre`` with everyone on θ, then
``adapted`` with :func:`~p2pmarl.algos.base.copy_group_layout`), and the outer step is the TRPO
step with exact network means (``single_process_trpo`` of ``tests/test_dimapg.py``, which the
tests check against the gossip version). No processes, no gossip: only the learning math.
Prints the minimum over agents of the mean ``pre``-phase episode return per iteration.

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

from bench.common import RESULTS, emit, load_average
from p2pmarl.algos.base import Batch, copy_group_layout
from p2pmarl.algos.dimapg import DiMAPG, DiMAPGConfig
from p2pmarl.algos.networks import set_flat_parameters
from p2pmarl.envs import env_spec, make_env
from tests.test_dimapg import single_process_trpo


def rollout(
    agents: list[DiMAPG], envs: list, steps: int, groups: np.ndarray | None,
    rng: np.random.Generator,
) -> tuple[list[Batch], np.ndarray]:
    """One phase of ``steps`` steps per copy; the batches and each agent's mean episode return."""
    n, k = len(agents), len(envs)
    observations = [env.reset(int(rng.integers(2**31))) for env in envs]
    obs = np.zeros((n, steps, k, len(observations[0][0])), dtype=np.float32)
    joint = np.zeros((steps, k, n), dtype=np.int64)
    rewards = np.zeros((n, steps, k), dtype=np.float32)
    dones = np.zeros((steps, k), dtype=bool)
    for t in range(steps):
        for i, agent in enumerate(agents):
            obs[i, t] = np.stack([observations[c][i] for c in range(k)])
            joint[t, :, i] = (agent.act(obs[i, t]) if groups is None
                              else agent.act_in_phase(obs[i, t], None, groups))
        for c, env in enumerate(envs):
            observations[c], rewards[:, t, c], dones[t, c] = env.step(joint[t, c].tolist())
            if dones[t, c] and t < steps - 1:
                observations[c] = env.reset(int(rng.integers(2**31)))
    last = [np.stack([observations[c][i] for c in range(k)]) for i in range(n)]
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
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    n, k, horizon = args.n_agents, args.n_envs, args.episode_length
    spec = env_spec("spread-shared", n, horizon)
    config = dataclasses.replace(
        DiMAPGConfig(), inner_steps=args.inner_steps, reward_clip=args.reward_clip,
        score_term=not args.no_score_term, first_order=args.first_order,
    )
    agents = [DiMAPG(i, spec, n, config, seed=100 + i, shared_seed=args.seed) for i in range(n)]
    envs = [make_env("spread-shared", n, horizon) for _ in range(k)]
    rng = np.random.default_rng(args.seed)
    curve, started, load_before = [], time.monotonic(), load_average()
    for iteration in range(args.iterations):
        pre, pre_returns = rollout(agents, envs, horizon, None, rng)
        for agent, batch in zip(agents, pre, strict=True):
            agent.phase_update(batch)
        groups = copy_group_layout(k, n, args.seed, iteration, 1)
        adapted, _ = rollout(agents, envs, args.adapted_steps or horizon, groups, rng)
        for agent, batch in zip(agents, adapted, strict=True):
            agent.local_update(batch)
        theta = single_process_trpo(agents)
        for agent in agents:
            set_flat_parameters(agent.policy.parameters(), theta)
        curve.append(float(pre_returns.min()))
        print(f"iteration {iteration}: min pre return {curve[-1]:.1f}", flush=True)
    return emit("dimapg_single_process", {
        "status": "ok", "settings": vars(args) | {"out": str(args.out)}, "curve": curve,
        "first3": float(np.mean(curve[:3])), "last3": float(np.mean(curve[-3:])),
        "seconds": time.monotonic() - started, "load_average_before": load_before,
        "load_average_after": load_average(),
    }, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
