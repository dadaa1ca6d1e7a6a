"""Multi-agent MuJoCo (MaMuJoCo, Peng et al. 2021) from gymnasium-robotics, as a PettingZoo env.

``--env mamujoco:SCENARIO:AGENT_CONF`` (e.g. ``mamujoco:HalfCheetah:2x3``) is shorthand for
``--env gymnasium_robotics.mamujoco_v1:parallel_env`` with ``scenario`` and ``agent_conf`` in
``--env-kwargs``; other keyword arguments (``agent_obsk``, ...) still go in ``--env-kwargs``.
Both forms are checked here before any MuJoCo model is built, and both then run through
:mod:`p2pmarl.envs.pettingzoo` like any Parallel env (Box observations, Box actions).

Needs the optional extra ``p2pmarl[mujoco]`` (gymnasium-robotics + mujoco); without it the
error says ``pip install -e '.[mujoco]'``. Every agent gets the same reward (the robot's forward
reward). Gymnasium's MuJoCo tasks end by a time limit (HalfCheetah: 1000 steps, never
terminated), so run with ``--episode-length 1000`` to get the published episode.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Mapping
from typing import Any

logger = logging.getLogger(__name__)

PREFIX = "mamujoco:"
"""``--env`` names starting with this are ``mamujoco:SCENARIO:AGENT_CONF``."""
MODULE = "gymnasium_robotics.mamujoco_v1"
"""gymnasium-robotics' MaMuJoCo module; its ``parallel_env`` builds the env."""
IMPORT_PATHS = (f"{MODULE}:parallel_env", f"{MODULE}.parallel_env")
"""The import-path spellings of the same factory (checked like the shorthand)."""
INSTALL_HINT = "pip install -e '.[mujoco]'"
"""How to get the extra (gymnasium-robotics + mujoco)."""

AGENT_CONFS: dict[str, tuple[str, ...]] = {
    "HalfCheetah": ("2x3", "6x1"),
    "Ant": ("2x4", "2x4d", "4x2"),
    "Hopper": ("3x1",),
    "Humanoid": ("9|8",),
    "HumanoidStandup": ("9|8",),
    "Reacher": ("2x1",),
    "Pusher": ("3p",),
    "Swimmer": ("2x1",),
    "Walker2d": ("2x3",),
    "CoupledHalfCheetah": ("1p1",),
    "ManySegmentSwimmer": ("NxM",),
    "ManySegmentAnt": ("NxM",),
}
"""The multi-agent factorizations of gymnasium-robotics 1.4 (``obsk.get_parts_and_edges``), for
error messages; gymnasium-robotics itself decides what is valid. ``NxM``: N agents of M
segments each, any positive integers."""


def is_mamujoco(name: str) -> bool:
    """True for ``mamujoco:...`` and for the import path of gymnasium-robotics' factory."""
    return name.startswith(PREFIX) or name in IMPORT_PATHS


def parse_name(name: str) -> tuple[str, str]:
    """``mamujoco:SCENARIO:AGENT_CONF`` → (scenario, agent_conf)."""
    parts = name[len(PREFIX):].split(":")
    if len(parts) != 2 or not all(parts):
        raise ValueError(
            f"--env {name!r}: write mamujoco:SCENARIO:AGENT_CONF, e.g. mamujoco:HalfCheetah:2x3 "
            f"(scenarios: {', '.join(AGENT_CONFS)})"
        )
    return parts[0], parts[1]


def factory_kwargs(name: str, env_kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword arguments of ``parallel_env``: the name's scenario and agent_conf (shorthand
    form) merged with ``env_kwargs``, which may not name them a second time."""
    kwargs = dict(env_kwargs)
    if name.startswith(PREFIX):
        scenario, agent_conf = parse_name(name)
        twice = sorted({"scenario", "agent_conf"} & kwargs.keys())
        if twice:
            raise ValueError(
                f"--env {name!r} already sets scenario and agent_conf; remove "
                f"{', '.join(twice)} from env_kwargs"
            )
        kwargs.update(scenario=scenario, agent_conf=agent_conf)
    missing = [key for key in ("scenario", "agent_conf") if key not in kwargs]
    if missing:
        raise ValueError(
            f"--env {name!r} needs {' and '.join(missing)} in env_kwargs, e.g. "
            f'\'{{"scenario": "HalfCheetah", "agent_conf": "2x3"}}\''
        )
    return kwargs


def import_module(name: str) -> Any:
    """gymnasium-robotics' MaMuJoCo module, or an error that names the extra to install."""
    try:
        package = importlib.import_module(MODULE.partition(".")[0])
        return getattr(package, MODULE.partition(".")[2])  # bound by the package, no own module
    except (ImportError, AttributeError) as error:
        raise ValueError(
            f"--env {name!r} needs multi-agent MuJoCo, which is an optional extra: "
            f"{INSTALL_HINT} (gymnasium-robotics + mujoco); import failed: {error}"
        ) from None


def check_factorization(module: Any, name: str, scenario: Any, agent_conf: Any) -> None:
    """Refuse an unknown scenario or agent_conf before any MuJoCo model is built."""
    try:
        module.get_parts_and_edges(scenario, agent_conf)
    except Exception as error:  # gymnasium-robotics raises a bare Exception ("UNKNOWN ...")
        if scenario not in AGENT_CONFS:
            raise ValueError(
                f"--env {name!r}: unknown MaMuJoCo scenario {scenario!r}; multi-agent scenarios: "
                f"{', '.join(AGENT_CONFS)}"
            ) from None
        raise ValueError(
            f"--env {name!r}: {scenario} has no agent_conf {agent_conf!r} ({error}); "
            f"use one of {', '.join(AGENT_CONFS[scenario])}"
        ) from None


def log_mujoco_warning(text: str) -> None:
    """MuJoCo's warning handler for this process: one line in the process's log."""
    logger.warning("MuJoCo: %s", text)


def route_mujoco_warnings() -> None:
    """Send MuJoCo's warnings to :func:`log_mujoco_warning`: MuJoCo's default handler appends
    every one to ``MUJOCO_LOG.TXT`` in the working directory (mujoco 4 warns once per model
    compiled, e.g. about HalfCheetah's deprecated ``settotalmass``)."""
    mujoco = importlib.import_module("mujoco")
    if hasattr(mujoco, "set_mju_user_warning"):
        mujoco.set_mju_user_warning(log_mujoco_warning)


def build(name: str, env_kwargs: Mapping[str, Any]) -> Any:
    """Build one MaMuJoCo Parallel env for ``name`` (either form), checked first."""
    kwargs = factory_kwargs(name, env_kwargs)
    module = import_module(name)
    check_factorization(module, name, kwargs["scenario"], kwargs["agent_conf"])
    route_mujoco_warnings()
    return module.parallel_env(**kwargs)
