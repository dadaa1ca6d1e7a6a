"""Batched Cooperative Treasure Collection ``treasure`` (MATRPO Table II, eq. (23)).

Bodies, events, observations and rewards as in :mod:`p2pmarl.envs.treasure` (the mpe2
reference, ``collect_treasure``): H hunters (size 0.05, mass 1) then B banks (size 0.075, mass
2.25), all with accel 1.5 and max speed 1 and no contact forces (mpe2's "ghost" agents), then T
treasures (size 0.025). mpe2's ``post_step`` after the physics, vectorized over copies:

1. every treasure dead since the previous step respawns: ``uniform()`` (the respawn test,
   always passed), a position in U(-0.95, 0.95)², a type in ``0..B-1``, drawn from the copy's
   *respawn* generator — mpe2's ``world.np_random``, a copy of the copy's generator taken at the
   start of each reset, so it replays that reset's draws;
2. every live treasure is picked up by the first empty hunter touching it, in treasure order (a
   hunter takes one treasure; the rare copy where one hunter touches two live treasures is
   resolved by a loop over that copy's treasures), and leaves to (-999, -999);
3. every holding hunter touching the bank of its treasure's type delivers it.
"""

from __future__ import annotations

import copy

import numpy as np

from p2pmarl.envs.particles.base import Block, ParticleWorld
from p2pmarl.envs.particles.physics import Bodies, pairwise_distances, touching
from p2pmarl.envs.treasure import (
    DISTANCE_WEIGHT,
    EVENT_REWARD,
    HUNTER_COLLISION_PENALTY,
    N_BANKS,
    treasure_counts,
    treasure_spec,
)

HUNTER_SIZE = 0.05
BANK_SIZE = 0.075
TREASURE_SIZE = 0.025
BANK_MASS = 2.25
ACCEL = 1.5
MAX_SPEED = 1.0
BOUND = 0.95
"""Treasures appear in U(-BOUND, BOUND)²."""
GONE = -999.0
"""Where mpe2 puts a picked-up treasure until it respawns."""
_DEAD_KEY = 1e6
"""mpe2 sorts picked-up treasures last with this distance key."""


class BatchedTreasure(ParticleWorld):
    """K copies of ``treasure``: hunters first, then banks (bank b takes treasure type b)."""

    def __init__(
        self, n_agents: int, episode_length: int, n_copies: int, n_banks: int = N_BANKS
    ) -> None:
        h, b, t = treasure_counts(n_agents, n_banks)
        bodies = Bodies(
            sizes=np.array([HUNTER_SIZE] * h + [BANK_SIZE] * b + [TREASURE_SIZE] * t),
            accel=np.full(n_agents, ACCEL),
            mass=np.array([1.0] * h + [BANK_MASS] * b),
            max_speed=np.full(n_agents, MAX_SPEED),
            n_colliders=0,
        )
        spec = treasure_spec(n_agents, episode_length, n_banks)
        super().__init__(spec, n_copies, n_agents + t, bodies)
        self.n_hunters, self.n_banks, self.n_treasures = h, b, t
        self.holding = np.full((n_copies, h), -1, dtype=np.int64)
        """Type held by each hunter, -1 when empty."""
        self.alive = np.ones((n_copies, t), dtype=bool)
        self.types = np.zeros((n_copies, t), dtype=np.int64)
        self.respawn_generators: list[np.random.Generator | None] = [None] * n_copies
        self._pickups = np.zeros(n_copies, dtype=np.int64)
        self._delivered = np.zeros((n_copies, b), dtype=bool)
        self._bank_encoding = np.zeros((n_agents, 2 * b))
        self._bank_encoding[h:, :b] = np.eye(b)

    # -- reset and events ----------------------------------------------------------------------

    def _reset_copy(self, k: int, generator: np.random.Generator) -> None:
        self.respawn_generators[k] = copy.deepcopy(generator)
        n = self.spec.n_agents
        self.positions[k, :n] = generator.uniform(-1.0, 1.0, (n, 2))
        for treasure in range(self.n_treasures):  # mpe2 interleaves the type and position draws
            self.types[k, treasure] = int(generator.integers(0, self.n_banks))
            self.positions[k, n + treasure] = generator.uniform(-BOUND, BOUND, 2)
        self.holding[k] = -1
        self.alive[k] = True

    def _after_physics(self, rows: slice) -> None:
        n, h = self.spec.n_agents, self.n_hunters
        alive, holding = self.alive[rows], self.holding[rows]
        treasures = self.positions[rows, n:]
        dead = ~alive
        sizes = self.bodies.sizes
        touch = touching(treasures, sizes[n:], self.positions[rows, :h], sizes[:h])
        candidates = touch & alive[:, :, None] & (holding < 0)[:, None, :]
        if dead.any():
            self._respawn(rows, dead)
        picked = np.zeros_like(alive)
        if candidates.any():
            picked = self._pick_up(rows, candidates)
        self._pickups[rows] = picked.sum(axis=1)
        # deliveries: a holding hunter touching the bank of its type
        holding = self.holding[rows]
        banks = self.positions[rows, h:n]
        at_bank = touching(self.positions[rows, :h], sizes[:h], banks, sizes[h:n])
        typed = np.take_along_axis(at_bank, np.maximum(holding, 0)[:, :, None], axis=2)[..., 0]
        delivering = typed & (holding >= 0)
        delivered = np.zeros((holding.shape[0], self.n_banks), dtype=bool)
        if delivering.any():
            r, hunter = np.nonzero(delivering)
            delivered[r, holding[r, hunter]] = True
            holding[delivering] = -1
        self._delivered[rows] = delivered

    def _respawn(self, rows: slice, dead: np.ndarray) -> None:
        """mpe2's respawn of every treasure picked in the previous step (step 1)."""
        n = self.spec.n_agents
        for r, treasure in zip(*np.nonzero(dead), strict=True):  # only copies with a respawn
            k = rows.start + int(r)
            generator = self.respawn_generators[k]
            assert generator is not None
            generator.uniform()  # mpe2's respawn_prob test (1.0: always respawns)
            self.positions[k, n + treasure] = generator.uniform(-BOUND, BOUND, 2)
            self.types[k, treasure] = int(generator.integers(0, self.n_banks))
            self.alive[k, treasure] = True

    def _pick_up(self, rows: slice, candidates: np.ndarray) -> np.ndarray:
        """Step 2 on (R, T, H) candidate pairs; returns the (R, T) treasures picked."""
        n_rows = candidates.shape[0]
        has = candidates.any(axis=2)
        first = np.where(has, candidates.argmax(axis=2), -1)
        counts = np.zeros((n_rows, self.n_hunters + 1), dtype=np.int64)
        np.add.at(counts, (np.arange(n_rows)[:, None], first + 1), 1)
        conflicts = (counts[:, 1:] > 1).any(axis=1)
        for r in np.flatnonzero(conflicts):  # one hunter first in line for two treasures
            first[r] = self._pick_in_order(candidates[r])
        picked = first >= 0
        r, treasure = np.nonzero(picked)
        k = rows.start + r
        hunter = first[r, treasure]
        self.holding[k, hunter] = self.types[k, treasure]
        self.alive[k, treasure] = False
        self.positions[k, self.spec.n_agents + treasure] = GONE
        return picked

    @staticmethod
    def _pick_in_order(candidates: np.ndarray) -> np.ndarray:
        """mpe2's sequential pickup for one copy: (T, H) candidates -> (T,) hunter or -1."""
        taken = np.zeros(candidates.shape[1], dtype=bool)
        first = np.full(candidates.shape[0], -1)
        for treasure, row in enumerate(candidates):
            free = np.flatnonzero(row & ~taken)
            if len(free):
                first[treasure] = free[0]
                taken[free[0]] = True
        return first

    # -- rewards and observations --------------------------------------------------------------

    def _rewards(self, block: Block) -> np.ndarray:
        rows = block.rows
        n, h = self.spec.n_agents, self.n_hunters
        hunters = self.positions[rows, :h]
        sizes = self.bodies.sizes[:h]
        contacts = touching(hunters, sizes, hunters, sizes)
        contacts[:, np.arange(h), np.arange(h)] = False
        hunter_rewards = np.where(contacts.any(axis=2), -HUNTER_COLLISION_PENALTY, 0.0)
        events = self._pickups[rows] + self._delivered[rows].sum(axis=1)
        distance = pairwise_distances(hunters, self.positions[rows, n:])
        usable = (self.holding[rows] < 0)[:, :, None] & self.alive[rows][:, None, :]
        closest = np.where(usable, distance, np.inf).min(axis=(1, 2))
        closest = np.where(np.isfinite(closest), closest, 0.0)
        bank = EVENT_REWARD * events - DISTANCE_WEIGHT * closest
        rewards = np.concatenate(
            [hunter_rewards, np.broadcast_to(bank[:, None], (len(bank), self.n_banks))], axis=1
        )
        return rewards.astype(np.float32)

    def _observe(self, block: Block) -> None:
        """mpe2's ``Scenario.observation`` for all copies and agents (stable distance sorts)."""
        rows = block.rows
        n, b, h = self.spec.n_agents, self.n_banks, self.n_hunters
        positions = self.positions[rows]
        agents, velocities = positions[:, :n], self.velocities[rows, :n]
        r = agents.shape[0]
        holding = (self.holding[rows][:, :, None] == np.arange(b)).astype(np.float64)
        encoding = np.broadcast_to(self._bank_encoding, (r, n, 2 * b)).copy()
        encoding[:, :h, b:] = holding
        # other agents: [p_j - p_i, v_j, encoding_j] sorted by |p_j - p_i|, self first, dropped
        relative = agents[:, None, :, :] - agents[:, :, None, :]
        square = relative * relative
        distance = np.sqrt(square[..., 0] + square[..., 1])
        distance[:, np.arange(n), np.arange(n)] = -1.0
        order = np.argsort(distance, axis=2, kind="stable")[:, :, 1:]
        features = np.concatenate(
            [
                relative,
                np.broadcast_to(velocities[:, None], (r, n, n, 2)),
                np.broadcast_to(encoding[:, None], (r, n, n, 2 * b)),
            ],
            axis=3,
        )
        others = np.take_along_axis(features, order[..., None], axis=2).reshape(r, n, -1)
        # treasures: [rel pos, type one-hot] by distance; just-picked ones zeroed and sorted last
        alive = self.alive[rows]
        t_relative = positions[:, None, n:, :] - agents[:, :, None, :]
        square = t_relative * t_relative
        key = np.where(alive[:, None, :], np.sqrt(square[..., 0] + square[..., 1]), _DEAD_KEY)
        t_order = np.argsort(key, axis=2, kind="stable")
        one_hot = (self.types[rows][:, :, None] == np.arange(b)).astype(np.float64)
        t_features = np.concatenate(
            [t_relative, np.broadcast_to(one_hot[:, None], (r, n, self.n_treasures, b))], axis=3
        )
        t_features = t_features * alive[:, None, :, None]
        treasures = np.take_along_axis(t_features, t_order[..., None], axis=2).reshape(r, n, -1)
        common = [agents, velocities]
        hunters = np.concatenate(
            [c[:, :h] for c in common] + [holding, others[:, :h], treasures[:, :h]], axis=2
        )
        banks = np.concatenate(
            [c[:, h:] for c in common] + [others[:, h:], treasures[:, h:]], axis=2
        )
        block.observation_rows[0][...] = hunters
        block.observation_rows[1][...] = banks
