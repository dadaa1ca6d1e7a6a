"""The batched particle world: K copies of one MPE family as state arrays, stepped at once.

:class:`ParticleWorld` owns the state (positions and velocities ``(K, E, 2)``, entities in mpe2's
order: agents then landmarks), the step counters and one random generator per copy; a scenario
(``spread.py``, ``treasure.py``, ``tag.py`` beside this file) adds its bodies, reset draws, event
logic, rewards and observations. A step of rows ``r0:r1`` is a fixed number of numpy operations
whatever the number of copies or entities: no Python loop over copies or entities. Two things
loop over copies, neither on the per-step path: a reset (once per episode) draws each copy's
start from that copy's own generator, and treasure respawns draw from theirs (only copies with a
treasure to respawn).

Seeding follows mpe2 exactly: copy k's generator is ``Generator(PCG64(SeedSequence(seed_k)))``
(gymnasium's ``seeding.np_random``), and every reset or respawn draws the same numbers in the
same order as mpe2's ``reset_world`` / ``post_step``. So the batched world seeded like K mpe2
copies replays the same episodes (tests/test_particles.py checks observations, rewards and done
flags against mpe2 over thousands of steps).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np

from p2pmarl.envs.base import EnvSpec
from p2pmarl.envs.particles.physics import (
    Bodies,
    PhysicsConstants,
    integrate,
    measure,
    total_forces,
)


def copy_generator(seed: int) -> np.random.Generator:
    """The generator mpe2 makes from ``reset(seed=seed)`` (gymnasium ``seeding.np_random``)."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(int(seed))))


def as_rows(rows: range | slice, n_copies: int) -> slice:
    """A contiguous block of copies as a slice (views of the state arrays, never copies)."""
    start, stop, step = (rows.start, rows.stop, rows.step)
    start = 0 if start is None else start
    stop = n_copies if stop is None else stop
    if step not in (None, 1) or not 0 <= start < stop <= n_copies:
        raise ValueError(f"rows must be a contiguous block of 0..{n_copies - 1}, got {rows!r}")
    return slice(start, stop)


def observation_groups(sizes: Sequence[int]) -> list[tuple[int, int]]:
    """``(start, stop)`` of each run of consecutive agents with equal observation sizes."""
    groups: list[tuple[int, int]] = []
    start = 0
    for agent in range(1, len(sizes) + 1):
        if agent == len(sizes) or sizes[agent] != sizes[start]:
            groups.append((start, agent))
            start = agent
    return groups


class ParticleWorld(ABC):
    """K copies of one particle scenario with automatic reset at episode end."""

    def __init__(
        self,
        spec: EnvSpec,
        n_copies: int,
        n_entities: int,
        bodies: Bodies,
        constants: PhysicsConstants | None = None,
    ) -> None:
        if n_copies < 1:
            raise ValueError(f"{spec.name}: n_copies must be >= 1, got {n_copies}")
        self.spec = spec
        self.n_copies = n_copies
        self.bodies = bodies
        self.constants = constants or PhysicsConstants()
        self.positions = np.zeros((n_copies, n_entities, 2))
        self.velocities = np.zeros((n_copies, n_entities, 2))
        self.steps = np.zeros(n_copies, dtype=np.int64)
        c = bodies.n_colliders
        self.delta = np.zeros((n_copies, c, c, 2))
        """Collider geometry at the current positions: ``delta[k, j, e] = p_e - p_j``."""
        self.distance = np.zeros((n_copies, c, c))
        """``|delta|``: collider distances at the current positions."""
        self.generators: list[np.random.Generator | None] = [None] * n_copies
        self._action_limits = np.array(spec.action_sizes)
        self._groups = observation_groups(spec.observation_sizes)
        self._observations = [
            np.zeros((n_copies, stop - start, spec.observation_sizes[start]), dtype=np.float32)
            for start, stop in self._groups
        ]
        self._group_of = [
            (g, agent - start)
            for g, (start, stop) in enumerate(self._groups)
            for agent in range(start, stop)
        ]
        self._started = False

    # -- scenario hooks ------------------------------------------------------------------------

    @abstractmethod
    def _reset_copy(self, k: int, generator: np.random.Generator) -> None:
        """Draw copy k's start state from its generator, in mpe2's ``reset_world`` order."""

    def _after_physics(self, rows: slice) -> None:
        """Scenario logic between the physics and the rewards (treasure pickups); default none."""

    @abstractmethod
    def _rewards(self, rows: slice) -> np.ndarray:
        """(R, N) float32 rewards of the step just taken by ``rows``."""

    @abstractmethod
    def _observe(self, rows: slice, blocks: list[np.ndarray]) -> None:
        """Write the observations of ``rows`` into ``blocks``: one float32 (R, n_g, d_g) view per
        run of agents with the same observation size (:func:`observation_groups`), in agent
        order. Entries a scenario never writes stay 0."""

    # -- contract ------------------------------------------------------------------------------

    def reset(self, seeds: Sequence[int]) -> None:
        """Seed copy k with ``seeds[k]`` (as mpe2's ``reset(seed=...)``) and start every episode."""
        if len(seeds) != self.n_copies:
            raise ValueError(f"{self.spec.name}: need {self.n_copies} seeds, got {len(seeds)}")
        self.generators = [copy_generator(s) for s in seeds]
        self._reset_copies(np.arange(self.n_copies))
        self._measure(slice(0, self.n_copies))
        self._store_observations(slice(0, self.n_copies))
        self._started = True

    def step(self, rows: range | slice, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Step copies ``rows`` with (R, N) discrete actions; finished copies start a new episode.

        Returns the (R, N) float32 rewards and (R,) done flags of this step; the observations
        (:meth:`observation`) are those after it, a new episode's first for finished copies.
        """
        if not self._started:
            raise RuntimeError(f"{self.spec.name}: call reset(seeds) before step()")
        block = as_rows(rows, self.n_copies)
        actions = self._check_actions(actions, block.stop - block.start)
        n = self.bodies.n_agents
        colliding = self.bodies.n_colliders >= 2
        force = total_forces(
            actions,
            self.delta[block] if colliding else None,
            self.distance[block] if colliding else None,
            self.bodies,
            self.constants,
        )
        integrate(
            self.positions[block, :n], self.velocities[block, :n], force, self.bodies,
            self.constants,
        )
        self._measure(block)
        self._after_physics(block)
        rewards = self._rewards(block)
        self.steps[block] += 1
        dones = self.steps[block] >= self.spec.episode_length
        if dones.any():
            self._reset_copies(block.start + np.flatnonzero(dones))
            self._measure(block)
        self._store_observations(block)
        return rewards, dones

    def observation(self, agent: int, rows: range | slice) -> np.ndarray:
        """Agent ``agent``'s current observations of copies ``rows``: (R, d_i) float32 view."""
        group, index = self._group_of[agent]
        return self._observations[group][as_rows(rows, self.n_copies), index]

    def close(self) -> None:
        """Nothing to release (no renderer)."""

    # -- helpers -------------------------------------------------------------------------------

    def _reset_copies(self, copies: np.ndarray) -> None:
        self.velocities[copies] = 0.0
        self.steps[copies] = 0
        for k in copies.tolist():  # once per episode, not per step
            generator = self.generators[k]
            assert generator is not None
            self._reset_copy(k, generator)

    def _measure(self, block: slice) -> None:
        if self.bodies.n_colliders >= 2:
            c = self.bodies.n_colliders
            measure(self.positions[block, :c], self.delta[block], self.distance[block])

    def _store_observations(self, block: slice) -> None:
        self._observe(block, [stored[block] for stored in self._observations])

    def _check_actions(self, actions: np.ndarray, n_rows: int) -> np.ndarray:
        actions = np.asarray(actions)
        shape = (n_rows, self.spec.n_agents)
        if actions.shape != shape or actions.dtype.kind not in "iu":
            raise ValueError(
                f"{self.spec.name}: actions must be an integer array of shape {shape}, got "
                f"{actions.dtype} {actions.shape}"
            )
        if actions.min() < 0 or (actions >= self._action_limits).any():
            raise ValueError(
                f"{self.spec.name}: actions must lie in [0, {self.spec.action_sizes}) per agent"
            )
        return actions
