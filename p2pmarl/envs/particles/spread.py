"""Batched Cooperative Navigation: ``spread`` (MATRPO Table I) and ``spread-shared`` (mpe2).

Bodies, observations and rewards as in :mod:`p2pmarl.envs.spread` (the mpe2 reference): N agents
(size 0.15, colliding, action scale 5) and N landmarks (no contact); reset draws every agent's and
then every landmark's position from U(-1, 1)².
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from p2pmarl.envs.particles.base import Block, ParticleWorld
from p2pmarl.envs.particles.physics import DEFAULT_SENSITIVITY, Bodies
from p2pmarl.envs.spread import LOCAL_RATIO, others_index, spread_spec

AGENT_SIZE = 0.15
"""mpe2 simple_spread agent radius."""
STARTS_AHEAD = 16
"""Episodes whose start positions a copy draws in one generator call."""


class BatchedSpread(ParticleWorld):
    """K copies of ``spread`` or, with ``shared=True``, ``spread-shared``."""

    def __init__(
        self, n_agents: int, episode_length: int, n_copies: int, *, shared: bool = False
    ) -> None:
        name = "spread-shared" if shared else "spread"
        n = n_agents
        bodies = Bodies(
            sizes=np.concatenate([np.full(n, AGENT_SIZE), np.full(n, 0.05)]),
            accel=np.full(n, DEFAULT_SENSITIVITY),
            mass=np.ones(n),
            max_speed=np.full(n, np.inf),
            n_colliders=n,
        )
        super().__init__(spread_spec(n, episode_length, name), n_copies, 2 * n, bodies)
        self.shared = shared
        self._contact_distance = np.where(
            np.eye(n, dtype=bool), 0.0, self.bodies.contact_distance
        )[:, :, None]
        """(N, N, 1) ``s_i + s_j``, 0 for i = j (``d < 0`` never holds: no self contact)."""
        self._observation_index = self._gather_index(self._observation_sources)
        self._starts = np.zeros((n_copies, STARTS_AHEAD, 2 * n, 2))
        """Each copy's start positions drawn ahead (:meth:`_draw_starts`)."""
        self._starts_used = np.full(n_copies, STARTS_AHEAD)
        """How many of each copy's ``_starts`` are used."""

    def reset(self, seeds: Sequence[int]) -> None:
        self._starts_used[:] = STARTS_AHEAD  # new generators: nothing drawn from them yet
        super().reset(seeds)

    def _draw_starts(self, copies: np.ndarray) -> None:
        """mpe2's start: every agent's then every landmark's position from U(-1, 1)², each copy
        from its own generator. A copy draws the starts of ``STARTS_AHEAD`` episodes in one
        call (``Generator.uniform`` fills an array in draw order: the same numbers as one call
        per episode), so most resets are one indexing for all copies, not a loop."""
        used_up = copies[self._starts_used[copies] == STARTS_AHEAD]
        for k in used_up.tolist():  # once per STARTS_AHEAD episodes of a copy
            generator = self.generators[k]
            assert generator is not None
            self._starts[k] = generator.uniform(-1, +1, self._starts.shape[1:])
            self._starts_used[k] = 0
        self.positions[copies] = self._starts[copies, self._starts_used[copies]]
        self._starts_used[copies] += 1

    def _rewards(self, block: Block) -> np.ndarray:
        n = self.spec.n_agents
        distance = block.distance  # (N agents, E entities, R)
        # sum over the landmarks, in order, of the closest agent's distance (mpe2's loop)
        coverage = np.add.reduce(np.minimum.reduce(distance[:, n:], axis=0), axis=0)
        contacts = np.less(distance[:, :n], self._contact_distance)  # (N, N, R), not oneself
        if self.shared:  # mpe2: (1 - r)·global + r·local, local = -#contacts
            local = -np.add.reduce(contacts, axis=1, dtype=np.float64)
            shared = (1.0 - LOCAL_RATIO) * -coverage + LOCAL_RATIO * local
            return np.ascontiguousarray(shared.T, dtype=np.float32)  # (R, N), a fresh array
        # Table I: agent 0 also sees coverage; everybody -1[collision]
        rewards = np.empty((block.n_rows, n), dtype=np.float32)
        np.subtract(0.0, np.logical_or.reduce(contacts, axis=1).T, out=rewards)  # -1 or +0
        # agent 0 in float64 as mpe2 (-1 and 0 are exact in float32), then rounded once
        np.subtract(rewards[:, 0], coverage, out=rewards[:, 0])
        return rewards

    def _observe(self, block: Block) -> None:
        self._gather(block, self._observation_index)

    def _observation_sources(self, agent: int) -> list[int]:
        """mpe2's ``[v_i, p_i, landmarks - p_i, others - p_i, comm]`` as state rows."""
        n, layout = self.spec.n_agents, self._layout
        rows = layout.velocity(agent) + layout.position(agent)
        for landmark in range(n, 2 * n):
            rows += layout.relative_position(agent, landmark)
        for other in others_index(n)[agent]:
            rows += layout.relative_position(agent, int(other))
        return rows + [layout.zero] * (2 * (n - 1))  # silent agents: comm channels stay 0
