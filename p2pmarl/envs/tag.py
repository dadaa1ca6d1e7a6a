"""Predator-prey on ``mpe2.simple_tag_v3`` with mpe2's own rewards (DiMA-PG, MADDPG report).

Registered name ``tag``.

Agents (id order = mpe2's agent list): ids ``0..A-1`` are the adversaries (predators, mpe2
``adversary_0..``), ids ``A..N-1`` the good agents (prey, mpe2 ``agent_0..``). Count rule: one good
agent and ``A = N - 1`` adversaries, any ``N >= 2``; default ``N = 4`` (3 + 1, mpe2's default).
Two static obstacles (mpe2's default).

Observations (float32, mpe2's layout)::

    [own velocity (2), own position (2), obstacle positions relative to self (2 * 2),
     other agents' positions relative to self (2(N-1)), other *good* agents' velocities]

so an adversary sees ``2N + 8`` values (it sees the prey's velocity) and the prey ``2N + 6``
(16 and 14 for N = 4). Actions: ``Discrete(5)`` = ``[no-op, left, right, down, up]``.

Rewards (mpe2 ``simple_tag`` unchanged, :func:`tag_rewards`): every adversary gets ``+10`` per
(prey, adversary) pair in contact; a prey gets ``-10`` per adversary touching it minus a penalty
for leaving the arena, ``sum_axes bound(|x|)`` with ``bound(x) = 0`` for ``x < 0.9``,
``10 (x - 0.9)`` for ``x < 1`` and ``min(exp(2x - 2), 10)`` beyond.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from mpe2 import simple_tag_v3

from p2pmarl.envs.base import EnvSpec
from p2pmarl.envs.spread import (
    N_ACTIONS,
    MPEEnv,
    collision_matrix,
    entity_positions,
    entity_velocities,
    others_index,
)

DEFAULT_N_AGENTS = 4
"""3 adversaries + 1 prey: mpe2's default."""
N_GOOD = 1
N_OBSTACLES = 2
MIN_AGENTS = N_GOOD + 1
N_AGENTS_RULE = "tag needs N >= 2 agents: N - 1 adversaries (predators) and 1 good agent (prey)"
CATCH_REWARD = 10.0
"""mpe2: +10 to every adversary per contact pair, -10 to the prey per touching adversary."""


def tag_boundary_penalty(positions: np.ndarray) -> np.ndarray:
    """mpe2's out-of-arena penalty for ``(n, 2)`` positions: ``sum_axes bound(|x|)`` -> ``(n,)``."""
    x = np.abs(positions)
    if x.max(initial=0.0) < 0.9:  # the usual case: everyone inside the arena
        return np.zeros(len(x))
    outside = np.minimum(np.exp(np.minimum(2.0 * x - 2.0, 10.0)), 10.0)
    penalty = np.where(x < 0.9, 0.0, np.where(x < 1.0, (x - 0.9) * 10.0, outside))
    return penalty.sum(axis=1)


def tag_rewards(positions: np.ndarray, sizes: np.ndarray, is_adversary: np.ndarray) -> np.ndarray:
    """mpe2 simple_tag rewards, ``(N,)`` float32, for agents at ``positions`` with ``sizes``.

    Adversaries: ``+10 * #{(prey, adversary) pairs in contact}`` (shared by all adversaries).
    Prey: ``-10 * #{adversaries touching it} - tag_boundary_penalty``.
    """
    adversaries = np.flatnonzero(is_adversary)
    prey = np.flatnonzero(~is_adversary)
    caught = collision_matrix(positions, sizes)[prey[:, None], adversaries].sum(axis=1)
    rewards = np.empty(len(positions), dtype=np.float64)
    rewards[adversaries] = CATCH_REWARD * caught.sum()
    rewards[prey] = -CATCH_REWARD * caught - tag_boundary_penalty(positions[prey])
    return rewards.astype(np.float32)


def tag_spec(n_agents: int, episode_length: int) -> EnvSpec:
    """Spec without building the env: adversaries ``2N + 8``, prey ``2N + 6`` (one prey)."""
    n_adv = n_agents - N_GOOD
    common = 4 + 2 * N_OBSTACLES + 2 * (n_agents - 1)
    return EnvSpec(
        name="tag",
        n_agents=n_agents,
        observation_sizes=(common + 2 * N_GOOD,) * n_adv + (common + 2 * (N_GOOD - 1),) * N_GOOD,
        action_sizes=(N_ACTIONS,) * n_agents,
        episode_length=episode_length,
    )


def make_tag_parallel(n_agents: int, episode_length: int) -> Any:
    """The underlying mpe2 Parallel env (discrete actions, ``max_cycles=episode_length``)."""
    return simple_tag_v3.parallel_env(
        num_good=N_GOOD,
        num_adversaries=n_agents - N_GOOD,
        num_obstacles=N_OBSTACLES,
        max_cycles=episode_length,
        continuous_actions=False,
    )


class TagEnv(MPEEnv):
    """``tag``: mpe2 simple_tag with its own rewards, adversaries first."""

    def __init__(
        self, n_agents: int = DEFAULT_N_AGENTS, episode_length: int = 100, *, fast: bool = True
    ) -> None:
        super().__init__(
            make_tag_parallel(n_agents, episode_length),
            tag_spec(n_agents, episode_length),
            fast=fast,
        )
        self._agents = list(self.world.agents)
        self._obstacles = [lm for lm in self.world.landmarks if not lm.boundary]
        self._is_adversary = np.array([a.adversary for a in self._agents], dtype=bool)
        n_adv = n_agents - N_GOOD
        if not self._is_adversary[:n_adv].all() or self._is_adversary[n_adv:].any():
            raise RuntimeError("mpe2 simple_tag no longer lists adversaries first")
        self.n_adversaries = n_adv
        self._sizes = np.array([a.size for a in self._agents], dtype=np.float64)
        self._others = others_index(n_agents)
        self._rows = np.arange(n_agents)[:, None]
        good = np.flatnonzero(~self._is_adversary)
        self._good = good
        self._good_others = good[others_index(len(good))] if len(good) > 1 else None
        self._obstacle_pos = entity_positions(self._obstacles)

    def _read_state(self, after_reset: bool) -> None:
        self._pos = entity_positions(self._agents)
        self._vel = entity_velocities(self._agents)
        if after_reset:  # obstacles never move within an episode
            self._obstacle_pos = entity_positions(self._obstacles)

    def _observe_fast(self) -> list[np.ndarray]:
        n, a, pos, vel = self.spec.n_agents, self.n_adversaries, self._pos, self._vel
        obstacles = (self._obstacle_pos[None, :, :] - pos[:, None, :]).reshape(n, -1)
        rel = pos[None, :, :] - pos[:, None, :]
        others = rel[self._rows, self._others].reshape(n, -1)
        common = np.concatenate([vel, pos, obstacles, others], axis=1)
        prey_vel = vel[self._good].reshape(1, -1)
        adversaries = np.concatenate(
            [common[:a], np.broadcast_to(prey_vel, (a, prey_vel.shape[1]))], axis=1
        )
        prey = common[a:]
        if self._good_others is not None:
            prey = np.concatenate([prey, vel[self._good_others].reshape(len(prey), -1)], axis=1)
        return list(adversaries.astype(np.float32)) + list(prey.astype(np.float32))

    def _rewards(self) -> np.ndarray:
        return tag_rewards(self._pos, self._sizes, self._is_adversary)


def make_tag(n_agents: int, episode_length: int, *, fast: bool = True) -> TagEnv:
    """``tag``: mpe2 simple_tag predator-prey (1 prey, N - 1 adversaries)."""
    return TagEnv(n_agents, episode_length, fast=fast)
