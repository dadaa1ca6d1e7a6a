"""Cooperative Treasure Collection on ``mpe2.collect_treasure_v1`` (MATRPO Table II, eq. (23)).

Registered name ``treasure``.

Agents (id order = mpe2's agent list): ids ``0..H-1`` are the hunters (mpe2 ``collector_0..``),
ids ``H..N-1`` the banks (mpe2 ``deposit_0..deposit_{B-1}``; bank b accepts treasure type b).
Count rule: ``B = 2`` banks, ``H = N - 2`` hunters and ``H`` treasures (MAAC's convention, which
mpe2's default 6 collectors / 6 treasures follows), so any ``N >= 3``; default ``N = 8`` (6 + 2,
the paper's main run), ``N = 12`` gives 10 hunters + 2 banks.

Observations (float32, mpe2's layout; other agents and treasures sorted by distance)::

    hunter: [pos (2), vel (2), holding one-hot (B),
             per other agent (N-1): rel pos (2), vel (2), [bank-type one-hot (B), holding (B)],
             per treasure (T): rel pos (2), type one-hot (B)   (zeros while just picked up)]
    bank:   the same without the holding one-hot

sizes: hunter ``4 + B + (N-1)(4 + 2B) + T(2 + B)``, bank ``4 + (N-1)(4 + 2B) + T(2 + B)``
(86 and 84 for N = 8). Actions: ``Discrete(5)`` = ``[no-op, left, right, down, up]``.

Rewards (MATRPO Table II):

* every bank gets eq. (23)::

      r_bank = 5 * (sum_{hunters j} 1_collect^j + sum_{banks i} 1_deposit^i)
               - 0.1 * min_{j, k} { d(ht_j, tr_k) | hunter j is empty }

* every hunter gets ``-1_c``: 1 if it overlaps another hunter (``d < size_j + size_j'``), else 0.

Reading of eq. (23), documented in docs/environments.md:

* ``1_collect^j`` is 1 if hunter j picked up a treasure in this step (a hunter holds at most one,
  so the sum is the number of pickups). ``1_deposit^i`` is 1 if at least one treasure was
  delivered to bank i in this step: an indicator per bank, as printed (mpe2 pays +5 per
  delivery; the two differ only when two hunters deliver to the same bank in the same step).
* Events are those of mpe2's ``post_step`` (pickup: an empty collector touching a live treasure;
  delivery: a collector holding type b touching bank b). They are recovered from the state
  before and after the step (:func:`treasure_events`), including a pickup delivered in the same
  step.
* The distance term is evaluated on the state after the step: hunters empty after the step,
  treasures alive after the step (a just-picked treasure is gone). It is 0 when no hunter is
  empty or no treasure is alive. The eq. (23) value is the same for every bank.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from mpe2 import collect_treasure_v1

from p2pmarl.envs.base import EnvSpec
from p2pmarl.envs.spread import (
    N_ACTIONS,
    MPEEnv,
    collision_matrix,
    entity_positions,
    entity_velocities,
    pairwise_distances,
)

DEFAULT_N_AGENTS = 8
"""6 hunters + 2 banks: the paper's main Treasure Collection run (Table III)."""
N_BANKS = 2
MIN_AGENTS = N_BANKS + 1
N_AGENTS_RULE = "treasure needs N >= 3 agents: N - 2 hunters (collectors) and 2 banks (deposits)"
EVENT_REWARD = 5.0
"""Eq. (23): reward per pickup and per bank receiving a delivery."""
DISTANCE_WEIGHT = 0.1
"""Eq. (23): weight of the closest empty-hunter-to-treasure distance."""
HUNTER_COLLISION_PENALTY = 1.0
"""Table II: a hunter gets ``-1_c``."""
_DEAD_KEY = 1e6
"""mpe2 sorts picked-up treasures last with this distance key."""


def treasure_events(
    holding_before: np.ndarray,
    holding_after: np.ndarray,
    alive_before: np.ndarray,
    alive_after: np.ndarray,
    treasure_types: np.ndarray,
    n_banks: int,
) -> tuple[int, np.ndarray]:
    """Pickups and deliveries of one step, from the state before and after it.

    ``holding_*`` are ``(H,)`` ints (treasure type held, -1 when empty), ``alive_*`` ``(T,)``
    bools, ``treasure_types`` ``(T,)`` the types after the step. Returns the number of pickups
    (``sum_j 1_collect^j``) and the ``(B,)`` number of deliveries per bank.

    mpe2's ``post_step`` first lets empty collectors pick up live treasures (each pickup kills
    one treasure, which keeps its type until it respawns in the next step), then lets holding
    collectors deliver to the matching bank. So the pickups are the treasures that died; the
    deliveries are the collectors that went from holding to empty, plus pickups whose treasure
    is held by nobody afterwards (picked up and delivered in the same step).
    """
    picked = alive_before & ~alive_after
    became_full = (holding_before < 0) & (holding_after >= 0)
    became_empty = (holding_before >= 0) & (holding_after < 0)
    deliveries = np.bincount(holding_before[became_empty], minlength=n_banks)
    picked_types = np.bincount(treasure_types[picked], minlength=n_banks)
    kept_types = np.bincount(holding_after[became_full], minlength=n_banks)
    deliveries = deliveries + (picked_types - kept_types)
    return int(picked.sum()), deliveries[:n_banks]


def treasure_rewards(
    hunter_positions: np.ndarray,
    hunter_sizes: np.ndarray,
    hunter_empty: np.ndarray,
    treasure_positions: np.ndarray,
    treasure_alive: np.ndarray,
    n_collected: int,
    deliveries_per_bank: np.ndarray,
) -> np.ndarray:
    """MATRPO Table II rewards, ``(H + B,)`` float32: hunters first, then banks.

    Hunter j: ``-1_c`` (overlaps another hunter). Every bank: eq. (23),
    ``5 * (n_collected + #{banks with a delivery}) - 0.1 * min d(empty hunter, live treasure)``,
    the distance term being 0 without an empty hunter or a live treasure.
    """
    collided = collision_matrix(hunter_positions, hunter_sizes).any(axis=1)
    hunters = np.where(collided, -HUNTER_COLLISION_PENALTY, 0.0)
    events = n_collected + int(np.count_nonzero(deliveries_per_bank))
    distance = 0.0
    if hunter_empty.any() and treasure_alive.any():
        distance = float(
            pairwise_distances(
                hunter_positions[hunter_empty], treasure_positions[treasure_alive]
            ).min()
        )
    bank = EVENT_REWARD * events - DISTANCE_WEIGHT * distance
    banks = np.full(len(deliveries_per_bank), bank)
    return np.concatenate([hunters, banks]).astype(np.float32)


def treasure_counts(n_agents: int, n_banks: int = N_BANKS) -> tuple[int, int, int]:
    """``(hunters, banks, treasures)`` for N agents: ``(N - B, B, N - B)``."""
    n_hunters = n_agents - n_banks
    return n_hunters, n_banks, n_hunters


def treasure_spec(n_agents: int, episode_length: int, n_banks: int = N_BANKS) -> EnvSpec:
    """Spec without building the env (sizes as in the module docstring)."""
    n_hunters, b, n_treasures = treasure_counts(n_agents, n_banks)
    bank_size = 4 + (n_agents - 1) * (4 + 2 * b) + n_treasures * (2 + b)
    return EnvSpec(
        name="treasure",
        n_agents=n_agents,
        observation_sizes=(bank_size + b,) * n_hunters + (bank_size,) * b,
        action_sizes=(N_ACTIONS,) * n_agents,
        episode_length=episode_length,
    )


def make_treasure_parallel(n_agents: int, episode_length: int, n_banks: int = N_BANKS) -> Any:
    """The underlying mpe2 Parallel env (discrete actions, ``max_cycles=episode_length``)."""
    n_hunters, b, n_treasures = treasure_counts(n_agents, n_banks)
    return collect_treasure_v1.parallel_env(
        num_collectors=n_hunters,
        num_deposits=b,
        num_treasures=n_treasures,
        max_cycles=episode_length,
        continuous_actions=False,
    )


def _one_hot(values: np.ndarray, n: int) -> np.ndarray:
    """``(len(values), n)`` float one-hot; negative values (empty) give a zero row."""
    return (values[:, None] == np.arange(n)[None, :]).astype(np.float64)


class TreasureEnv(MPEEnv):
    """``treasure``: eq. (23) for banks, ``-1_c`` for hunters (Table II)."""

    def __init__(
        self,
        n_agents: int = DEFAULT_N_AGENTS,
        episode_length: int = 100,
        *,
        n_banks: int = N_BANKS,
        fast: bool = True,
    ) -> None:
        parallel = make_treasure_parallel(n_agents, episode_length, n_banks)
        super().__init__(parallel, treasure_spec(n_agents, episode_length, n_banks), fast=fast)
        n_hunters = n_agents - n_banks
        self.n_hunters, self.n_banks = n_hunters, n_banks
        self._agents = list(self.world.agents)
        self._hunters = self._agents[:n_hunters]
        self._treasures = list(self.world.landmarks)
        banks = self._agents[n_hunters:]
        if not all(a.collector for a in self._hunters) or any(a.collector for a in banks):
            raise RuntimeError("mpe2 collect_treasure no longer lists collectors first")
        if [a.d_i for a in banks] != list(range(n_banks)):
            raise RuntimeError("mpe2 collect_treasure: bank b must accept treasure type b")
        self._hunter_sizes = np.array([a.size for a in self._hunters], dtype=np.float64)
        # per-step work buffers; the banks' type encoding is static
        self._agent_feats = np.zeros((n_agents, n_agents, 4 + 2 * n_banks))
        self._agent_feats[:, n_hunters:, 4 : 4 + n_banks] = np.eye(n_banks)
        self._treasure_feats = np.zeros((n_agents, len(self._treasures), 2 + n_banks))
        self._rows = np.arange(n_agents)[:, None]
        self._no_events = (0, np.zeros(n_banks, dtype=np.int64))
        self._events = self._no_events
        self._read_state(after_reset=True)

    def _read_state(self, after_reset: bool) -> None:
        self._pos = entity_positions(self._agents)
        self._vel = entity_velocities(self._agents)
        holding = np.array([-1 if a.holding is None else a.holding for a in self._hunters])
        treasures = self._treasures
        alive = np.array([t.alive for t in treasures], dtype=bool)
        types = np.array([t.type for t in treasures], dtype=np.int64)
        if after_reset:
            self._events = self._no_events
        else:
            self._events = treasure_events(
                self._holding, holding, self._alive, alive, types, self.n_banks
            )
        self._holding, self._alive, self._types = holding, alive, types
        self._treasure_pos = entity_positions(treasures)

    def _observe_fast(self) -> list[np.ndarray]:
        """mpe2's ``Scenario.observation`` for all agents at once (stable distance sorts)."""
        n, b, h = self.spec.n_agents, self.n_banks, self.n_hunters
        pos, vel = self._pos, self._vel
        holding = _one_hot(self._holding, b)
        # other agents: feats[i, j] = [p_j - p_i, v_j, encoding_j], sorted by |p_j - p_i|
        feats = self._agent_feats
        rel = pos[None, :, :] - pos[:, None, :]
        feats[:, :, 0:2] = rel
        feats[:, :, 2:4] = vel
        feats[:, :h, 4 + b :] = holding
        sq = rel * rel
        dist = np.sqrt(sq[..., 0] + sq[..., 1])
        np.fill_diagonal(dist, -1.0)  # self sorts first and is dropped
        order = np.argsort(dist, axis=1, kind="stable")[:, 1:]
        others = feats[self._rows, order].reshape(n, -1)
        # treasures: [rel pos, type one-hot] by distance; just-picked ones zeroed and sorted last
        t_feats = self._treasure_feats
        t_rel = self._treasure_pos[None, :, :] - pos[:, None, :]
        t_feats[:, :, 0:2] = t_rel
        t_feats[:, :, 2:] = _one_hot(self._types, b)
        alive = self._alive
        t_feats[:, ~alive, :] = 0.0
        sq = t_rel * t_rel
        t_key = np.where(alive, np.sqrt(sq[..., 0] + sq[..., 1]), _DEAD_KEY)
        t_order = np.argsort(t_key, axis=1, kind="stable")
        treasures = t_feats[self._rows, t_order].reshape(n, -1)
        # assemble: [pos, vel, (holding,) others, treasures]
        n_other = others.shape[1]
        out_h = np.empty((h, 4 + b + n_other + treasures.shape[1]), dtype=np.float32)
        out_h[:, 0:2] = pos[:h]
        out_h[:, 2:4] = vel[:h]
        out_h[:, 4 : 4 + b] = holding
        out_h[:, 4 + b : 4 + b + n_other] = others[:h]
        out_h[:, 4 + b + n_other :] = treasures[:h]
        out_b = np.empty((n - h, out_h.shape[1] - b), dtype=np.float32)
        out_b[:, 0:2] = pos[h:]
        out_b[:, 2:4] = vel[h:]
        out_b[:, 4 : 4 + n_other] = others[h:]
        out_b[:, 4 + n_other :] = treasures[h:]
        return list(out_h) + list(out_b)

    def _rewards(self) -> np.ndarray:
        n_collected, deliveries = self._events
        h = self.n_hunters
        return treasure_rewards(
            self._pos[:h],
            self._hunter_sizes,
            self._holding < 0,
            self._treasure_pos,
            self._alive,
            n_collected,
            deliveries,
        )


def make_treasure(n_agents: int, episode_length: int, *, fast: bool = True) -> TreasureEnv:
    """``treasure``: Cooperative Treasure Collection with MATRPO's Table II / eq. (23) rewards."""
    return TreasureEnv(n_agents, episode_length, fast=fast)
