"""Placement engines: where and how the world and the agents of a run are started and watched.

An engine places processes, watches them and stops them; it never carries algorithm messages
(those go over ZeroMQ between the processes). :func:`p2pmarl.runtime.launcher.launch` calls one
through the small :class:`Engine` protocol: ``local`` forks every process on this machine
(:mod:`.local`), ``ray`` runs each as a long-lived Ray actor on a Ray cluster (:mod:`.ray`,
extra ``p2pmarl[ray]``).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from p2pmarl.config import ConfigError
from p2pmarl.runtime.faults import FaultSpec

ENGINES = ("local", "ray")
"""Values of ``p2pmarl launch --engine``."""
PLACEMENTS = ("spread", "pack")
"""Values of ``--placement`` (Ray placement-group strategies SPREAD and PACK)."""


class Engine(Protocol):
    """What the launcher asks of an engine, in this order: spawn, watch, wait_agents, stop_all.

    Process names are ``"world"`` and ``"agent I"``; ``watch`` returns ``("completed", None)``
    when the world finished cleanly, ``("failed", name)`` when a process died unplanned.
    """

    def spawn(self) -> None:
        """Start the world and every agent; endpoints.json (and keys) exist once it returns."""

    def watch(self, on_poll: Callable[[], None]) -> tuple[str, str | None]:
        """Call ``on_poll`` regularly until the world finished or a process died."""

    def wait_agents(self, timeout: float) -> str | None:
        """After the world: wait up to ``timeout`` s for the agents; the first that failed."""

    def stop_all(self) -> None:
        """Stop every process still alive and release what the engine holds; never raises."""

    def describe_failure(self, name: str) -> str:
        """How process ``name`` ended, where it ran, and the last lines of its logs."""

    def describe(self) -> dict:
        """The ``engine`` entry of summary.json: its name and where the processes ran."""


@dataclass(frozen=True)
class EngineOptions:
    """How ``p2pmarl launch`` places a run's processes (not part of the experiment's config)."""

    name: str = "local"
    """``local`` (fork on this machine) or ``ray`` (one Ray actor per process)."""
    ray_address: str | None = None
    """``--ray-address``: join this Ray cluster; None starts (and stops) a local Ray instance."""
    placement: str = "spread"
    """``--placement``: ``spread`` the actors over the nodes or ``pack`` them onto few."""

    def __post_init__(self) -> None:
        if self.name not in ENGINES:
            raise ConfigError(f"--engine {self.name!r}: choose one of {', '.join(ENGINES)}")
        if self.placement not in PLACEMENTS:
            raise ConfigError(
                f"--placement {self.placement!r}: choose one of {', '.join(PLACEMENTS)}"
            )
        if self.name != "ray" and (self.ray_address or self.placement != "spread"):
            raise ConfigError("--ray-address and --placement apply to --engine ray only")
        if self.name == "ray" and importlib.util.find_spec("ray") is None:
            raise ConfigError(
                "--engine ray needs Ray, an optional extra: pip install 'p2pmarl[ray]' "
                "(see docs/cluster.md)"
            )

    def check_faults(self, spec: FaultSpec | None) -> None:
        """Crash entries are executed by the local engine only; link faults work everywhere."""
        if self.name != "local" and spec is not None and spec.crash:
            raise ConfigError(
                f"fault spec {spec.source}: crash entries are executed by the local engine; "
                f"--engine {self.name} cannot have them (link faults are fine)"
            )
