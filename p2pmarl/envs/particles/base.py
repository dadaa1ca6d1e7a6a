"""The batched particle world: K copies of one MPE family as state arrays, stepped at once.

:class:`ParticleWorld` owns the state (positions, velocities and the agents' view of every
entity, entities in mpe2's order: agents then landmarks), the step counters and one random
generator per copy; a scenario (``spread.py``, ``treasure.py``, ``tag.py`` beside this file) adds
its bodies, reset draws, event logic, rewards and observations. The arrays keep the copies on
their last axis (physics.py), so every numpy operation is one contiguous loop over the copies; the
scenarios' per-copy logic sees the same buffers copy first, ``(K, ...)``. A step of rows
``r0:r1`` is a fixed number of numpy operations whatever the number of copies or entities, on
views sliced once per block of rows (:class:`Block`): no Python loop over copies or entities.
Two things loop over copies, neither on the per-step path: resets draw each copy's start from
that copy's own generator (spread: 16 episodes per draw), and treasure respawns draw from theirs
(only copies with a treasure to respawn).

Seeding follows mpe2 exactly: copy k's generator is ``Generator(PCG64(SeedSequence(seed_k)))``
(gymnasium's ``seeding.np_random``), and every reset or respawn draws the same numbers in the
same order as mpe2's ``reset_world`` / ``post_step``. So the batched world seeded like K mpe2
copies replays the same episodes (tests/test_particles.py checks observations, rewards and done
flags against mpe2 over thousands of steps).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

import numpy as np

from p2pmarl.envs.base import EnvSpec
from p2pmarl.envs.particles.physics import (
    Bodies,
    PhysicsConstants,
    Workspace,
    integrate,
    measure,
    total_forces,
)

UNSIGNED = {size: np.dtype(f"u{size}") for size in (1, 2, 4, 8)}
"""The unsigned integer type of each width (an action array read as unsigned)."""


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


class Block:
    """Views of every per-copy buffer for one contiguous block of copies (rows ``r0:r1``).

    Built once per block (:meth:`ParticleWorld._block`) and reused at every step of it, so the
    step path does no slicing. Shapes end with the block's ``R`` copies (physics.py's layout).
    """

    def __init__(self, world: ParticleWorld, rows: slice) -> None:
        self.rows = rows
        self.n_rows = rows.stop - rows.start
        self.space = Workspace(
            world._positions[..., rows],
            world._velocities[..., rows],
            world._relative[..., rows],
            world._distance[..., rows],
            world.bodies,
        )
        self.distance = self.space.distance
        """(N, E, R) ``|p_e - p_i|`` of agent i and entity e (:func:`measure`)."""
        self.state = world._state[:, rows]
        """(L, R) the state rows of :class:`StateLayout`."""
        self.steps = world.steps[rows]
        self.observations = [stored[..., rows] for stored in world._observations]
        """Per run of agents with equal observation sizes: (n_g, d_g, R) float32."""
        self.observation_rows = [block.transpose(2, 0, 1) for block in self.observations]
        """The same as (R, n_g, d_g) views: what :meth:`ParticleWorld._observe` writes."""
        self.agent_observations = [
            self.observations[group][index].T for group, index in world._group_of
        ]
        """Agent i's (R, d_i) observations."""


class ParticleWorld(ABC):
    """K copies of one particle scenario with automatic reset at episode end.

    State (copies last, one float64 buffer ``(L, K)`` holding every quantity an observation is
    gathered from): positions ``(E, 2, K)``, velocities ``(E, 2, K)``, the agents' view of every
    entity ``relative`` ``(N, E, 2, K)`` and a row of zeros. ``positions``, ``velocities``,
    ``delta`` and ``distance`` are the same buffers seen copy first, ``(K, ...)``, for the
    scenarios' per-copy logic (resets, events).
    """

    MAX_BLOCKS = 64
    """Blocks of rows whose views are kept (:class:`Block`); more are rebuilt as needed."""

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
        k, e, n = n_copies, n_entities, bodies.n_agents
        self._layout = StateLayout(n, e)
        self._state = np.zeros((self._layout.size, k))
        self._positions = self._state[self._layout.positions].reshape(e, 2, k)
        self._velocities = self._state[self._layout.velocities].reshape(e, 2, k)
        self._relative = self._state[self._layout.relative].reshape(n, e, 2, k)
        self._distance = np.zeros((n, e, k))
        self.positions = self._positions.transpose(2, 0, 1)
        """(K, E, 2) positions, entities in mpe2's order: agents then landmarks."""
        self.velocities = self._velocities.transpose(2, 0, 1)
        """(K, E, 2) velocities (only the agents move)."""
        self.delta = self._relative.transpose(3, 0, 1, 2)
        """(K, N, E, 2) ``delta[k, i, e] = p_e - p_i`` at the current positions (colliding
        scenarios; zero otherwise)."""
        self.distance = self._distance.transpose(2, 0, 1)
        """(K, N, E) ``|delta|``."""
        self.steps = np.zeros(n_copies, dtype=np.int64)
        self._steps_bound = 0
        """No copy has taken more steps than this: it grows by one per step of any block and is
        set to the true maximum whenever the done flags are computed, which is only once it
        reaches the episode length (most steps skip that check)."""
        self.generators: list[np.random.Generator | None] = [None] * n_copies
        self._action_limits = np.array(spec.action_sizes)
        self._groups = observation_groups(spec.observation_sizes)
        self._observations = [
            np.zeros((stop - start, spec.observation_sizes[start], n_copies), dtype=np.float32)
            for start, stop in self._groups
        ]
        self._group_of = [
            (g, agent - start)
            for g, (start, stop) in enumerate(self._groups)
            for agent in range(start, stop)
        ]
        self._blocks: dict[tuple, Block] = {}
        self._started = False

    # -- scenario hooks ------------------------------------------------------------------------

    def _reset_copy(self, k: int, generator: np.random.Generator) -> None:
        """Draw copy k's start state from its generator, in mpe2's ``reset_world`` order (used
        by the default :meth:`_draw_starts`; a scenario implements one of the two)."""
        raise NotImplementedError

    def _draw_starts(self, copies: np.ndarray) -> None:
        """Draw the start state of every copy in ``copies`` (a new episode each); default: one
        :meth:`_reset_copy` per copy, a loop that runs once per episode, not per step."""
        for k in copies.tolist():
            generator = self.generators[k]
            assert generator is not None
            self._reset_copy(k, generator)

    def _after_physics(self, rows: slice) -> None:
        """Scenario logic between the physics and the rewards (treasure pickups); default none."""

    @abstractmethod
    def _rewards(self, block: Block) -> np.ndarray:
        """(R, N) float32 rewards of the step just taken by ``block``."""

    @abstractmethod
    def _observe(self, block: Block) -> None:
        """Write the observations of ``block`` into ``block.observations`` (or the same views
        ``block.observation_rows``): one float32 view per run of agents with the same observation
        size (:func:`observation_groups`), in agent order. Entries never written stay 0."""

    # -- contract ------------------------------------------------------------------------------

    def reset(self, seeds: Sequence[int]) -> None:
        """Seed copy k with ``seeds[k]`` (as mpe2's ``reset(seed=...)``) and start every episode."""
        if len(seeds) != self.n_copies:
            raise ValueError(f"{self.spec.name}: need {self.n_copies} seeds, got {len(seeds)}")
        self.generators = [copy_generator(s) for s in seeds]
        self._reset_copies(np.arange(self.n_copies))
        self._steps_bound = 0
        block = self._block(range(self.n_copies))
        self._measure(block)
        self._observe(block)
        self._started = True

    def step(self, rows: range | slice, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Step copies ``rows`` with (R, N) discrete actions; finished copies start a new episode.

        Returns the (R, N) float32 rewards and (R,) done flags of this step; the observations
        (:meth:`observation`) are those after it, a new episode's first for finished copies.
        """
        if not self._started:
            raise RuntimeError(f"{self.spec.name}: call reset(seeds) before step()")
        block = self._block(rows)
        actions = self._check_actions(actions, block.n_rows)
        total_forces(actions, block.space, self.bodies, self.constants)
        integrate(block.space, self.bodies, self.constants)
        self._measure(block)
        self._after_physics(block.rows)
        rewards = self._rewards(block)
        block.steps += 1
        self._steps_bound += 1
        if self._steps_bound < self.spec.episode_length:  # no copy can be done yet
            dones = np.zeros(block.n_rows, dtype=bool)
        else:
            dones = block.steps >= self.spec.episode_length
            if dones.any():
                self._reset_copies(block.rows.start + np.flatnonzero(dones))
                self._measure(block)
            self._steps_bound = int(self.steps.max())
        self._observe(block)
        return rewards, dones

    def observation(self, agent: int, rows: range | slice) -> np.ndarray:
        """Agent ``agent``'s current observations of copies ``rows``: (R, d_i) float32 view."""
        return self._block(rows).agent_observations[agent]

    def close(self) -> None:
        """Nothing to release (no renderer)."""

    # -- helpers -------------------------------------------------------------------------------

    def _gather_index(self, sources: Callable[[int], list[int]]) -> list[np.ndarray]:
        """For each observation group, the (n_g, d_g) state rows (:class:`StateLayout`) its
        agents' observations are made of: ``sources(agent)``, in order (:meth:`_gather`)."""
        return [
            np.array([sources(agent) for agent in range(start, stop)])
            for start, stop in self._groups
        ]

    @staticmethod
    def _gather(block: Block, index: list[np.ndarray]) -> None:
        """Observations made only of state rows: one gather per group for every agent and
        copy, cast to float32 (``index`` from :meth:`_gather_index`)."""
        for rows, out in zip(index, block.observations, strict=True):
            block.state.take(rows, axis=0, out=out)

    def _block(self, rows: range | slice) -> Block:
        """The views of copies ``rows`` (validated and built on first use)."""
        key = (rows.start, rows.stop, rows.step)
        block = self._blocks.get(key)
        if block is None:
            if len(self._blocks) >= self.MAX_BLOCKS:
                self._blocks.clear()
            block = self._blocks[key] = Block(self, as_rows(rows, self.n_copies))
        return block

    def _reset_copies(self, copies: np.ndarray) -> None:
        self.velocities[copies] = 0.0
        self.steps[copies] = 0
        self._draw_starts(copies)

    def _measure(self, block: Block) -> None:
        if block.space.colliding:
            measure(block.space)

    def _check_actions(self, actions: np.ndarray, n_rows: int) -> np.ndarray:
        actions = np.asarray(actions)
        shape = (n_rows, self.spec.n_agents)
        if actions.shape != shape or actions.dtype.kind not in "iu":
            raise ValueError(
                f"{self.spec.name}: actions must be an integer array of shape {shape}, got "
                f"{actions.dtype} {actions.shape}"
            )
        # read as unsigned, a negative action is huge: one comparison checks both bounds
        unsigned = actions.view(UNSIGNED[actions.itemsize])
        if np.count_nonzero(unsigned >= self._action_limits):
            raise ValueError(
                f"{self.spec.name}: actions must lie in [0, {self.spec.action_sizes}) per agent"
            )
        return actions


class StateLayout:
    """Rows of the per-copy state buffer ``(L, K)``: where each quantity lives, so a scenario
    can gather an observation from it with one index array (:meth:`ParticleWorld._observe`)."""

    def __init__(self, n_agents: int, n_entities: int) -> None:
        n, e = n_agents, n_entities
        self.positions = slice(0, 2 * e)
        """Row ``2·e + axis``: entity e's position."""
        self.velocities = slice(2 * e, 4 * e)
        self.relative = slice(4 * e, 4 * e + 2 * n * e)
        """Row ``4E + 2(i·E + e) + axis``: ``p_e - p_i`` of agent i and entity e."""
        self.zero = 4 * e + 2 * n * e
        """A row that stays 0 (silent communication channels)."""
        self.size = self.zero + 1
        self.n_entities = e

    def position(self, entity: int) -> list[int]:
        return [2 * entity, 2 * entity + 1]

    def velocity(self, entity: int) -> list[int]:
        return [2 * (self.n_entities + entity), 2 * (self.n_entities + entity) + 1]

    def relative_position(self, agent: int, entity: int) -> list[int]:
        start = self.relative.start + 2 * (agent * self.n_entities + entity)
        return [start, start + 1]
