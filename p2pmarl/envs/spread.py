"""Cooperative Navigation on ``mpe2.simple_spread_v3`` (MATRPO, Table I) and its shared variant.

Registered names
    ``spread``        MATRPO's Cooperative Navigation, Table I: agent 0 gets
                      ``-sum_landmarks min_agents d(agent, landmark) - 1[collision]``, every other
                      agent gets only ``-1[collision]``. ``1[collision]`` is an indicator (1 if the
                      agent overlaps *any* other agent, else 0), not a count.
    ``spread-shared`` mpe2's own simple_spread reward: ``(1 - r) * global + r * local`` with
                      ``local_ratio r = 0.5``, ``global = -sum_landmarks min_agents d`` and
                      ``local = -(number of agents this agent overlaps)``.

Agents: ids ``0..N-1`` are mpe2's ``agent_0..agent_{N-1}`` (simple_spread's agent list order),
N landmarks, any ``N >= 2``. Every agent observes ``6N`` float32 values::

    [own velocity (2), own position (2), landmark positions relative to self (2N),
     other agents' positions relative to self (2(N-1)), other agents' comm (2(N-1), always 0:
     the agents are silent)]

Actions: ``Discrete(5)`` = ``[no-op, left, right, down, up]``.

This module also holds what the other mpe2 families (``treasure.py``, ``tag.py``) share: the
geometry helpers (:func:`pairwise_distances`, :func:`collision_matrix`) and :class:`MPEEnv`, the
driver that turns one mpe2 Parallel env into a :class:`~p2pmarl.envs.base.MultiAgentEnv`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from mpe2 import simple_spread_v3

from p2pmarl.envs.base import EnvSpec, MultiAgentEnv

N_ACTIONS = 5
"""mpe2 discrete movement actions: no-op, left, right, down, up."""
DEFAULT_N_AGENTS = 3
"""Paper's main Cooperative Navigation run (Table III); the scaling run uses N = 6."""
MIN_AGENTS = 2
N_AGENTS_RULE = "spread needs N >= 2 agents (N agents and N landmarks)"
LOCAL_RATIO = 0.5
"""mpe2's default local_ratio, used by ``spread-shared``."""


# ---------------------------------------------------------------------------------------------
# Geometry helpers shared by all mpe2 families (pure functions on numpy arrays)
# ---------------------------------------------------------------------------------------------


def pairwise_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean distances ``d[i, j] = |a[i] - b[j]|`` for ``a (n, 2)``, ``b (m, 2)`` -> ``(n, m)``.

    Computed as mpe2 does (``sqrt(sum(square(delta)))``) so thresholds agree bit for bit.
    """
    delta = a[:, None, :] - b[None, :, :]
    sq = delta * delta
    if sq.shape[-1] == 2:  # the MPE case; avoids np.sum's per-call overhead
        return np.sqrt(sq[..., 0] + sq[..., 1])
    return np.sqrt(np.add.reduce(sq, axis=-1))


def collision_matrix(positions: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """``c[i, j]`` is True when entities i != j overlap: ``d(i, j) < size_i + size_j``.

    This is mpe2's ``is_collision`` test (strict inequality); the diagonal is False.
    """
    touching = pairwise_distances(positions, positions) < sizes[:, None] + sizes[None, :]
    np.fill_diagonal(touching, False)
    return touching


def landmark_coverage(agent_positions: np.ndarray, landmark_positions: np.ndarray) -> float:
    """``sum_landmarks min_agents d(agent, landmark)``: the distance term of Table I."""
    return float(pairwise_distances(agent_positions, landmark_positions).min(axis=0).sum())


def entity_positions(entities: Sequence[Any]) -> np.ndarray:
    """``(n, 2)`` float64 copy of the entities' ``state.p_pos``."""
    return np.array([e.state.p_pos for e in entities], dtype=np.float64)


def entity_velocities(entities: Sequence[Any]) -> np.ndarray:
    """``(n, 2)`` float64 copy of the entities' ``state.p_vel``."""
    return np.array([e.state.p_vel for e in entities], dtype=np.float64)


def others_index(n: int) -> np.ndarray:
    """``(n, n-1)`` index array: row i lists ``0..n-1`` without i, in increasing order."""
    full = np.tile(np.arange(n), (n, 1))
    return full[~np.eye(n, dtype=bool)].reshape(n, n - 1)


# ---------------------------------------------------------------------------------------------
# Reward definitions
# ---------------------------------------------------------------------------------------------


def spread_rewards(
    agent_positions: np.ndarray, landmark_positions: np.ndarray, agent_sizes: np.ndarray
) -> np.ndarray:
    """MATRPO Table I rewards, ``(N,)`` float32.

    Agent 0: ``-sum_l min_i d(ag_i, lm_l) - 1_c``; agents ``1..N-1``: ``-1_c``, where ``1_c`` is
    1 if the agent collides with at least one other agent and 0 otherwise (Table I footnote).
    Table I prints the distance term as ``-min_{i,j} d(ag_i, lm_j)``; we read it, as the text
    ("rewarded based on the minimum agent distance to each landmark") and mpe2 do, as the sum
    over landmarks of the closest agent's distance.
    """
    collided = collision_matrix(agent_positions, agent_sizes).any(axis=1)
    rewards = np.where(collided, -1.0, 0.0)
    rewards[0] -= landmark_coverage(agent_positions, landmark_positions)
    return rewards.astype(np.float32)


def spread_shared_rewards(
    agent_positions: np.ndarray,
    landmark_positions: np.ndarray,
    agent_sizes: np.ndarray,
    local_ratio: float = LOCAL_RATIO,
) -> np.ndarray:
    """mpe2 simple_spread rewards, ``(N,)`` float32: ``(1 - r) * global + r * local``.

    ``global = -sum_l min_i d(ag_i, lm_l)`` (shared), ``local_i = -#{j != i colliding with i}``
    (a count, as in mpe2).
    """
    global_reward = -landmark_coverage(agent_positions, landmark_positions)
    local = (-collision_matrix(agent_positions, agent_sizes).sum(axis=1)).astype(np.float64)
    return ((1.0 - local_ratio) * global_reward + local_ratio * local).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Generic mpe2 driver
# ---------------------------------------------------------------------------------------------


def _zero_reward(agent: Any, world: Any) -> float:
    """Stand-in for an mpe2 scenario's ``reward`` when the variant computes its own."""
    return 0.0


class MPEEnv(MultiAgentEnv):
    """One mpe2 PettingZoo Parallel env behind the :class:`MultiAgentEnv` contract.

    Subclasses read the world state in :meth:`_read_state` and define :meth:`_observe_fast`
    (observations computed from that state, identical to mpe2's) and :meth:`_rewards` (the
    variant's reward, from the pure functions of the family module).

    ``fast=True`` (default) steps the mpe2 env underneath the Parallel API: it hands the joint
    action to the env's own ``_execute_world_step`` (physics and scenario logic, e.g. treasure
    pickup/deposit), counts the step and truncates at ``max_cycles`` exactly as mpe2 does, and
    replaces mpe2's per-agent observation and reward code with vectorized equivalents (mpe2's
    reward computation is switched off because the variant replaces it). The Parallel wrapper
    itself would observe every agent twice per step (``last()`` then ``observe``).
    ``fast=False`` goes through ``parallel.step`` with mpe2's observations: a reference path; the
    test suite checks both paths agree exactly. The Parallel env stays available as
    ``self.parallel`` but must not be stepped directly while this wrapper drives it.

    Seeding: ``reset(seed)`` seeds mpe2's RNG; ``reset(None)`` continues the same stream, so a run
    is reproducible from the first seed.
    """

    def __init__(self, parallel: Any, spec: EnvSpec, *, fast: bool = True) -> None:
        self.parallel = parallel
        self.spec = spec
        self.raw = parallel.unwrapped
        self.world = self.raw.world
        self.agent_names: tuple[str, ...] = tuple(parallel.possible_agents)
        self.fast = fast
        self._done = True
        self._check_spec()
        sizes = set(spec.action_sizes)
        self._uniform_actions = sizes.pop() if len(sizes) == 1 else None
        if fast:
            self._disable_mpe_rewards()

    # -- subclass hooks ----------------------------------------------------------------------

    def _read_state(self, after_reset: bool) -> None:
        """Copy what observations and rewards need out of ``self.world``."""
        raise NotImplementedError

    def _observe_fast(self) -> list[np.ndarray]:
        """Observations of all agents from the state read by :meth:`_read_state`."""
        raise NotImplementedError

    def _rewards(self) -> np.ndarray:
        """Reward vector ``(N,)`` float32 for the step just taken."""
        raise NotImplementedError

    def _disable_mpe_rewards(self) -> None:
        """Stop mpe2 from computing rewards the variant does not use."""
        self.raw.scenario.reward = _zero_reward

    # -- contract ------------------------------------------------------------------------------

    def reset(self, seed: int | None = None) -> list[np.ndarray]:
        """Start an episode; ``seed`` reseeds mpe2's RNG, ``None`` continues its stream."""
        if self.fast:
            self.raw.reset(seed=seed)
            self._read_state(after_reset=True)
            obs = self._observe_fast()
        else:
            obs_dict, _ = self.parallel.reset(seed=seed)
            self._read_state(after_reset=True)
            obs = self._gather(obs_dict)
        self._done = False
        return obs

    def step(self, actions: Sequence[int]) -> tuple[list[np.ndarray], np.ndarray, bool]:
        """Apply one discrete action per agent (agent id order); see :class:`MultiAgentEnv`."""
        if self._done:
            raise RuntimeError("the episode has ended (or never started): call reset() first")
        acts = self._validate_actions(actions)
        if self.fast:
            raw = self.raw
            raw.current_actions = acts
            raw._execute_world_step()
            raw.steps += 1
            done = raw.steps >= raw.max_cycles or bool(raw.scenario.is_terminal(self.world))
            self._read_state(after_reset=False)
            obs = self._observe_fast()
        else:
            obs_dict, _, term, trunc, _ = self.parallel.step(
                dict(zip(self.agent_names, acts, strict=True))
            )
            done = any(term.values()) or any(trunc.values())
            self._read_state(after_reset=False)
            obs = self._gather(obs_dict)
        self._done = done
        return obs, self._rewards(), done

    def close(self) -> None:
        """Release mpe2's pygame surface."""
        self.parallel.close()

    # -- helpers -------------------------------------------------------------------------------

    def _gather(self, obs_dict: dict[str, np.ndarray]) -> list[np.ndarray]:
        return [np.asarray(obs_dict[name], dtype=np.float32) for name in self.agent_names]

    def _validate_actions(self, actions: Sequence[int]) -> list[int]:
        acts = [int(a) for a in actions]
        n = self.spec.n_agents
        if len(acts) != n:
            raise ValueError(f"{self.spec.name}: expected {n} actions, got {len(acts)}")
        limit = self._uniform_actions
        if limit is not None:
            if min(acts) < 0 or max(acts) >= limit:
                raise ValueError(f"{self.spec.name}: actions must lie in [0, {limit}): {acts}")
        elif any(not 0 <= a < k for a, k in zip(acts, self.spec.action_sizes, strict=True)):
            raise ValueError(f"{self.spec.name}: actions {acts} out of {self.spec.action_sizes}")
        return acts

    def _check_spec(self) -> None:
        """The analytic spec (cheap, used before any env exists) must match mpe2's spaces."""
        par = self.parallel
        obs = tuple(int(par.observation_space(a).shape[0]) for a in self.agent_names)
        act = tuple(int(par.action_space(a).n) for a in self.agent_names)
        if (obs, act) != (self.spec.observation_sizes, self.spec.action_sizes):
            raise RuntimeError(
                f"{self.spec.name}: spec sizes {self.spec.observation_sizes}/"
                f"{self.spec.action_sizes} disagree with mpe2's {obs}/{act}"
            )


# ---------------------------------------------------------------------------------------------
# Cooperative Navigation
# ---------------------------------------------------------------------------------------------


def spread_spec(n_agents: int, episode_length: int, name: str = "spread") -> EnvSpec:
    """Spec without building the env: every agent observes ``6N`` values, 5 actions."""
    return EnvSpec(
        name=name,
        n_agents=n_agents,
        observation_sizes=(6 * n_agents,) * n_agents,
        action_sizes=(N_ACTIONS,) * n_agents,
        episode_length=episode_length,
    )


def make_spread_parallel(n_agents: int, episode_length: int) -> Any:
    """The underlying mpe2 Parallel env (discrete actions, ``max_cycles=episode_length``)."""
    return simple_spread_v3.parallel_env(
        N=n_agents,
        local_ratio=LOCAL_RATIO,
        max_cycles=episode_length,
        continuous_actions=False,
    )


class SpreadEnv(MPEEnv):
    """``spread`` (Table I rewards) or, with ``shared=True``, ``spread-shared`` (mpe2 rewards)."""

    def __init__(
        self,
        n_agents: int = DEFAULT_N_AGENTS,
        episode_length: int = 100,
        *,
        shared: bool = False,
        fast: bool = True,
    ) -> None:
        name = "spread-shared" if shared else "spread"
        self.shared = shared
        parallel = make_spread_parallel(n_agents, episode_length)
        super().__init__(parallel, spread_spec(n_agents, episode_length, name), fast=fast)
        self._agents = list(self.world.agents)
        self._landmarks = list(self.world.landmarks)
        if not all(a.silent for a in self._agents):
            raise RuntimeError("spread observations assume silent agents (zero comm)")
        self._sizes = np.array([a.size for a in self._agents], dtype=np.float64)
        self._others = others_index(n_agents)
        self._rows = np.arange(n_agents)[:, None]
        self._pos = self._vel = self._landmark_pos = np.zeros((n_agents, 2))

    def _disable_mpe_rewards(self) -> None:
        super()._disable_mpe_rewards()
        self.raw.local_ratio = None  # also skips mpe2's global_reward

    def _read_state(self, after_reset: bool) -> None:
        self._pos = entity_positions(self._agents)
        self._vel = entity_velocities(self._agents)
        if after_reset:  # landmarks never move within an episode
            self._landmark_pos = entity_positions(self._landmarks)

    def _observe_fast(self) -> list[np.ndarray]:
        n, pos = self.spec.n_agents, self._pos
        out = np.zeros((n, 6 * n), dtype=np.float32)  # comm block stays 0
        out[:, 0:2] = self._vel
        out[:, 2:4] = pos
        out[:, 4 : 4 + 2 * n] = (self._landmark_pos[None, :, :] - pos[:, None, :]).reshape(n, -1)
        rel = pos[None, :, :] - pos[:, None, :]  # rel[i, j] = p_j - p_i
        out[:, 4 + 2 * n : 2 + 4 * n] = rel[self._rows, self._others].reshape(n, -1)
        return list(out)

    def _rewards(self) -> np.ndarray:
        if self.shared:
            return spread_shared_rewards(self._pos, self._landmark_pos, self._sizes)
        return spread_rewards(self._pos, self._landmark_pos, self._sizes)


def make_spread(n_agents: int, episode_length: int, *, fast: bool = True) -> SpreadEnv:
    """``spread``: Cooperative Navigation with MATRPO's Table I rewards."""
    return SpreadEnv(n_agents, episode_length, shared=False, fast=fast)


def make_spread_shared(n_agents: int, episode_length: int, *, fast: bool = True) -> SpreadEnv:
    """``spread-shared``: Cooperative Navigation with mpe2's own reward (local_ratio 0.5)."""
    return SpreadEnv(n_agents, episode_length, shared=True, fast=fast)
