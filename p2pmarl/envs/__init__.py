"""Environment registry: names -> :class:`~p2pmarl.envs.base.MultiAgentEnv` factories.

``make_env(name, n_agents=None, episode_length=None)`` builds one environment copy;
``env_spec(...)`` returns its :class:`~p2pmarl.envs.base.EnvSpec` without building anything.
``n_agents=None`` means the family's default, ``episode_length=None`` the paper's 100 steps.
A name with ``:`` or ``.`` is an import path to any PettingZoo Parallel env
(:mod:`p2pmarl.envs.pettingzoo`), configured by ``env_kwargs`` and ``agent_order``.
See docs/environments.md for every environment's agents, observations and rewards.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass

from p2pmarl.envs import matrix, pettingzoo, spread, tag, treasure
from p2pmarl.envs.base import EnvSpec, MultiAgentEnv

DEFAULT_EPISODE_LENGTH = 100
"""MATRPO Sec. VI-B: "The episode length is 100 timesteps"."""


@dataclass(frozen=True)
class EnvFamily:
    """A registered environment: how to build it and which agent counts it accepts."""

    description: str
    default_n_agents: int
    min_agents: int
    n_agents_rule: str
    build: Callable[[int, int], MultiAgentEnv]
    """``build(n_agents, episode_length)``."""
    spec: Callable[[int, int], EnvSpec]
    """``spec(n_agents, episode_length)``; cheap, builds nothing."""


ENVIRONMENTS: dict[str, EnvFamily] = {
    "spread": EnvFamily(
        description="Cooperative Navigation, MATRPO Table I rewards (only agent 0 sees coverage)",
        default_n_agents=spread.DEFAULT_N_AGENTS,
        min_agents=spread.MIN_AGENTS,
        n_agents_rule=spread.N_AGENTS_RULE,
        build=spread.make_spread,
        spec=lambda n, t: spread.spread_spec(n, t, "spread"),
    ),
    "spread-shared": EnvFamily(
        description="Cooperative Navigation, mpe2's shared reward (local_ratio 0.5)",
        default_n_agents=spread.DEFAULT_N_AGENTS,
        min_agents=spread.MIN_AGENTS,
        n_agents_rule=spread.N_AGENTS_RULE.replace("spread", "spread-shared", 1),
        build=spread.make_spread_shared,
        spec=lambda n, t: spread.spread_spec(n, t, "spread-shared"),
    ),
    "treasure": EnvFamily(
        description="Cooperative Treasure Collection, MATRPO Table II / eq. (23) rewards",
        default_n_agents=treasure.DEFAULT_N_AGENTS,
        min_agents=treasure.MIN_AGENTS,
        n_agents_rule=treasure.N_AGENTS_RULE,
        build=treasure.make_treasure,
        spec=treasure.treasure_spec,
    ),
    "tag": EnvFamily(
        description="Predator-prey (mpe2 simple_tag), mpe2's own rewards",
        default_n_agents=tag.DEFAULT_N_AGENTS,
        min_agents=tag.MIN_AGENTS,
        n_agents_rule=tag.N_AGENTS_RULE,
        build=tag.make_tag,
        spec=tag.tag_spec,
    ),
    "ipd": EnvFamily(
        description="Iterated prisoner's dilemma, Meta-MAPG Table 1 (2 agents, state = last "
        "joint action; paper horizon 150: --episode-length 150)",
        default_n_agents=matrix.N_AGENTS,
        min_agents=matrix.MIN_AGENTS,
        n_agents_rule=matrix.N_AGENTS_RULE,
        build=matrix.make_ipd,
        spec=lambda n, t: matrix.matrix_spec("ipd", n, t),
    ),
    "rps": EnvFamily(
        description="Iterated rock-paper-scissors, Meta-MAPG Table 2 (2 agents; paper horizon "
        "50: --episode-length 50)",
        default_n_agents=matrix.N_AGENTS,
        min_agents=matrix.MIN_AGENTS,
        n_agents_rule=matrix.N_AGENTS_RULE,
        build=matrix.make_rps,
        spec=lambda n, t: matrix.matrix_spec("rps", n, t),
    ),
}


def _resolve(
    name: str, n_agents: int | None, episode_length: int | None
) -> tuple[EnvFamily, int, int]:
    """Look up ``name`` and fill in / validate the agent count and episode length."""
    family = ENVIRONMENTS.get(name)
    if family is None:
        valid = ", ".join(sorted(ENVIRONMENTS))
        raise ValueError(f"unknown environment {name!r}; valid names: {valid}")
    n = family.default_n_agents if n_agents is None else _as_int(n_agents, "n_agents")
    if n < family.min_agents:
        raise ValueError(f"{name}: n_agents={n} is not allowed; {family.n_agents_rule}")
    length = (
        DEFAULT_EPISODE_LENGTH
        if episode_length is None
        else _as_int(episode_length, "episode_length")
    )
    if length < 1:
        raise ValueError(f"{name}: episode_length must be >= 1, got {length}")
    return family, n, length


def _as_int(value: object, what: str) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{what} must be an integer, got {value!r}")
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError(f"{what} must be an integer, got {value!r}") from None


def make_env(
    name: str,
    n_agents: int | None = None,
    episode_length: int | None = None,
    *,
    env_kwargs: str | None = None,
    agent_order: str | None = None,
) -> MultiAgentEnv:
    """Build one copy of environment ``name`` (see :data:`ENVIRONMENTS`, or an import path)."""
    if pettingzoo.is_import_path(name):
        n, length = _resolve_import_path(name, n_agents, episode_length)
        return pettingzoo.make_pettingzoo(name, n, length, env_kwargs, agent_order)
    _refuse_import_options(name, env_kwargs, agent_order)
    family, n, length = _resolve(name, n_agents, episode_length)
    return family.build(n, length)


def env_spec(
    name: str,
    n_agents: int | None = None,
    episode_length: int | None = None,
    *,
    env_kwargs: str | None = None,
    agent_order: str | None = None,
) -> EnvSpec:
    """The :class:`EnvSpec` that :func:`make_env` with the same arguments would have."""
    if pettingzoo.is_import_path(name):
        n, length = _resolve_import_path(name, n_agents, episode_length)
        return pettingzoo.pettingzoo_spec(name, n, length, env_kwargs, agent_order)
    _refuse_import_options(name, env_kwargs, agent_order)
    family, n, length = _resolve(name, n_agents, episode_length)
    return family.spec(n, length)


def _resolve_import_path(
    name: str, n_agents: int | None, episode_length: int | None
) -> tuple[int | None, int]:
    n = None if n_agents is None else _as_int(n_agents, "n_agents")
    length = (
        DEFAULT_EPISODE_LENGTH
        if episode_length is None
        else _as_int(episode_length, "episode_length")
    )
    if length < 1:
        raise ValueError(f"{name}: episode_length must be >= 1, got {length}")
    return n, length


def _refuse_import_options(name: str, env_kwargs: str | None, agent_order: str | None) -> None:
    if env_kwargs or agent_order:
        raise ValueError(
            f"env_kwargs and agent_order apply only to an env given by import path "
            f"(MODULE:FACTORY), not to the built-in {name!r}"
        )


__all__ = [
    "DEFAULT_EPISODE_LENGTH",
    "ENVIRONMENTS",
    "EnvFamily",
    "EnvSpec",
    "MultiAgentEnv",
    "env_spec",
    "make_env",
]
