"""Batched predator-prey ``tag`` (mpe2 simple_tag, its own rewards).

Bodies, observations and rewards as in :mod:`p2pmarl.envs.tag` (the mpe2 reference): A = N - 1
adversaries (size 0.075, accel 3, max speed 1) then one prey (size 0.05, accel 4, max speed 1.3),
then two static obstacles (size 0.2); everybody collides. Reset draws the agents from U(-1, 1)²,
then the obstacles from U(-0.9, 0.9)².
"""

from __future__ import annotations

import numpy as np

from p2pmarl.envs.particles.base import Block, ParticleWorld
from p2pmarl.envs.particles.physics import Bodies
from p2pmarl.envs.spread import others_index
from p2pmarl.envs.tag import CATCH_REWARD, N_GOOD, N_OBSTACLES, tag_spec

ADVERSARY = {"size": 0.075, "accel": 3.0, "max_speed": 1.0}
PREY = {"size": 0.05, "accel": 4.0, "max_speed": 1.3}
OBSTACLE_SIZE = 0.2


def boundary_penalty(x: np.ndarray) -> np.ndarray:
    """mpe2's out-of-arena penalty summed over the axes: (..., 2) positions -> (...)."""
    x = np.abs(x)
    if x.max(initial=0.0) < 0.9:  # the usual case: everyone inside the arena
        return np.zeros(x.shape[:-1])
    outside = np.minimum(np.exp(np.minimum(2.0 * x - 2.0, 10.0)), 10.0)
    penalty = np.where(x < 0.9, 0.0, np.where(x < 1.0, (x - 0.9) * 10.0, outside))
    return penalty[..., 0] + penalty[..., 1]


class BatchedTag(ParticleWorld):
    """K copies of ``tag``: adversaries first, then the prey."""

    def __init__(self, n_agents: int, episode_length: int, n_copies: int) -> None:
        a = n_agents - N_GOOD
        kinds = [ADVERSARY] * a + [PREY] * N_GOOD
        bodies = Bodies(
            sizes=np.array([k["size"] for k in kinds] + [OBSTACLE_SIZE] * N_OBSTACLES),
            accel=np.array([k["accel"] for k in kinds]),
            mass=np.ones(n_agents),
            max_speed=np.array([k["max_speed"] for k in kinds]),
            n_colliders=n_agents + N_OBSTACLES,
        )
        spec = tag_spec(n_agents, episode_length)
        super().__init__(spec, n_copies, n_agents + N_OBSTACLES, bodies)
        self.n_adversaries = a
        self._others = others_index(n_agents)
        self._observation_index = self._gather_index(self._observation_sources)

    def _reset_copy(self, k: int, generator: np.random.Generator) -> None:
        n = self.spec.n_agents
        self.positions[k, :n] = generator.uniform(-1, +1, (n, 2))
        self.positions[k, n:] = generator.uniform(-0.9, +0.9, (N_OBSTACLES, 2))

    def _rewards(self, block: Block) -> np.ndarray:
        rows = block.rows
        n, a = self.spec.n_agents, self.n_adversaries
        prey = self.positions[rows, a:n]
        contact = self.bodies.contact_distance[a:n, :a]
        caught = (self.distance[rows, a:n, :a] < contact).sum(axis=2)
        rewards = np.empty((prey.shape[0], n))
        rewards[:, :a] = CATCH_REWARD * caught.sum(axis=1)[:, None]
        rewards[:, a:] = -CATCH_REWARD * caught - boundary_penalty(prey)
        return rewards.astype(np.float32)

    def _observe(self, block: Block) -> None:
        self._gather(block, self._observation_index)

    def _observation_sources(self, agent: int) -> list[int]:
        """mpe2 simple_tag's ``[v_i, p_i, obstacles - p_i, others - p_i]`` as state rows, and
        for an adversary the prey's velocity."""
        n, layout = self.spec.n_agents, self._layout
        rows = layout.velocity(agent) + layout.position(agent)
        for entity in [*range(n, n + N_OBSTACLES), *self._others[agent].tolist()]:
            rows += layout.relative_position(agent, entity)
        if agent < self.n_adversaries:
            for prey in range(self.n_adversaries, n):
                rows += layout.velocity(prey)
        return rows
