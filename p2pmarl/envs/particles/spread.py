"""Batched Cooperative Navigation: ``spread`` (MATRPO Table I) and ``spread-shared`` (mpe2).

Bodies, observations and rewards as in :mod:`p2pmarl.envs.spread` (the mpe2 reference): N agents
(size 0.15, colliding, action scale 5) and N landmarks (no contact); reset draws every agent's and
then every landmark's position from U(-1, 1)².
"""

from __future__ import annotations

import numpy as np

from p2pmarl.envs.particles.base import ParticleWorld
from p2pmarl.envs.particles.physics import DEFAULT_SENSITIVITY, Bodies, pairwise_distances
from p2pmarl.envs.spread import LOCAL_RATIO, others_index, spread_spec

AGENT_SIZE = 0.15
"""mpe2 simple_spread agent radius."""


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
        self._others_flat = (np.arange(n)[:, None] * n + others_index(n)).ravel()
        self._off_diagonal = ~np.eye(n, dtype=bool)

    def _reset_copy(self, k: int, generator: np.random.Generator) -> None:
        self.positions[k] = generator.uniform(-1, +1, (2 * self.spec.n_agents, 2))

    def _rewards(self, rows: slice) -> np.ndarray:
        n = self.spec.n_agents
        agents = self.positions[rows, :n]
        landmarks = self.positions[rows, n:]
        coverage = pairwise_distances(agents, landmarks).min(axis=1).sum(axis=1)
        contacts = self.distance[rows] < self.bodies.contact_distance
        contacts &= self._off_diagonal
        if self.shared:  # mpe2: (1 - r)·global + r·local, local = -#contacts
            local = -contacts.sum(axis=2).astype(np.float64)
            rewards = (1.0 - LOCAL_RATIO) * -coverage[:, None] + LOCAL_RATIO * local
        else:  # Table I: agent 0 also sees coverage; everybody -1[collision]
            rewards = np.where(contacts.any(axis=2), -1.0, 0.0)
            rewards[:, 0] -= coverage
        return rewards.astype(np.float32)

    def _observe(self, rows: slice, blocks: list[np.ndarray]) -> None:
        n = self.spec.n_agents
        positions = self.positions[rows]
        agents = positions[:, :n]
        r = agents.shape[0]
        out = blocks[0]  # (R, N, 6N); the comm block is never written: 0 (silent agents)
        out[:, :, 0:2] = self.velocities[rows, :n]
        out[:, :, 2:4] = agents
        relative_landmarks = positions[:, None, n:, :] - agents[:, :, None, :]
        out[:, :, 4 : 4 + 2 * n] = relative_landmarks.reshape(r, n, 2 * n)
        relative = self.delta[rows].reshape(r, n * n, 2)  # [r, i·n + j] = p_j - p_i
        out[:, :, 4 + 2 * n : 2 + 4 * n] = relative[:, self._others_flat].reshape(r, n, -1)
