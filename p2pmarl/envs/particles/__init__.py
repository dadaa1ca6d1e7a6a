"""The batched particle world: all K copies of an MPE family stepped at once with numpy arrays.

``make_batched(name, n_agents, n_copies, episode_length)`` builds a
:class:`~p2pmarl.envs.particles.base.ParticleWorld` for ``spread``, ``spread-shared``,
``treasure`` or ``tag``, with the observations and rewards of the mpe2-backed envs of
:mod:`p2pmarl.envs` (the reference backend, ``--env-backend mpe2``), which it matches step for
step from the same seeds. ``physics.py`` holds mpe2's physics over copies, ``base.py`` the state
arrays, seeding and auto-reset, and one small file per scenario the rest.
"""

from __future__ import annotations

from collections.abc import Callable

from p2pmarl.envs import env_spec
from p2pmarl.envs.particles.base import ParticleWorld
from p2pmarl.envs.particles.spread import BatchedSpread
from p2pmarl.envs.particles.tag import BatchedTag
from p2pmarl.envs.particles.treasure import BatchedTreasure

SCENARIOS: dict[str, Callable[[int, int, int], ParticleWorld]] = {
    "spread": lambda n, t, k: BatchedSpread(n, t, k),
    "spread-shared": lambda n, t, k: BatchedSpread(n, t, k, shared=True),
    "treasure": BatchedTreasure,
    "tag": BatchedTag,
}
"""``build(n_agents, episode_length, n_copies)`` of every family the batched world implements."""


def has_batched(name: str) -> bool:
    """Whether environment ``name`` has a batched particle implementation."""
    return name in SCENARIOS


def make_batched(
    name: str, n_agents: int | None, n_copies: int, episode_length: int | None = None
) -> ParticleWorld:
    """K = ``n_copies`` batched copies of ``name``; agent count rules as :func:`make_env`."""
    if name not in SCENARIOS:
        valid = ", ".join(sorted(SCENARIOS))
        raise ValueError(f"no batched particle world for {name!r}; batched environments: {valid}")
    spec = env_spec(name, n_agents, episode_length)  # validates the counts, naming the fix
    return SCENARIOS[name](spec.n_agents, spec.episode_length, n_copies)


__all__ = ["SCENARIOS", "ParticleWorld", "has_batched", "make_batched"]
