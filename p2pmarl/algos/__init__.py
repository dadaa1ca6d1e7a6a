"""Algorithm variants, one module each, implementing `p2pmarl.algos.base.AgentAlgorithm`.

The registry maps ``--algo`` names to classes and turns the run config into each variant's own
frozen config.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import TYPE_CHECKING

from p2pmarl.config import ConfigError

if TYPE_CHECKING:
    from p2pmarl.algos.base import AgentAlgorithm
    from p2pmarl.config import RunConfig
    from p2pmarl.envs.base import EnvSpec
    from p2pmarl.topology import Topology

ALGORITHMS = {
    "itrpo": ("p2pmarl.algos.itrpo", "ITRPO"),
    "matrpo": ("p2pmarl.algos.matrpo", "MATRPO"),
    "ctrpo": ("p2pmarl.algos.ctrpo", "CTRPO"),
    "hatrpo": ("p2pmarl.algos.happo", "HATRPO"),
    "happo": ("p2pmarl.algos.happo", "HAPPO"),
    "dimapg": ("p2pmarl.algos.dimapg", "DiMAPG"),
    "fdmarl": ("p2pmarl.algos.fdmarl", "FDMARL"),
    "maddpg": ("p2pmarl.algos.maddpg", "MADDPG"),
    "genetic-maddpg": ("p2pmarl.algos.genetic_maddpg", "GeneticMADDPG"),
    "metamapg": ("p2pmarl.algos.metamapg", "MetaMAPG"),
}
"""``--algo`` name → (module, class)."""


def algorithm_class(name: str) -> type[AgentAlgorithm]:
    """The class registered as ``name``; ConfigError listing the known names otherwise."""
    if name not in ALGORITHMS:
        raise ConfigError(f"unknown algorithm {name!r}; known: {', '.join(sorted(ALGORITHMS))}")
    module, cls = ALGORITHMS[name]
    return getattr(importlib.import_module(module), cls)


def make_algorithm(
    name: str, agent_id: int, spec: EnvSpec, topology: Topology, config: RunConfig, seed: int
) -> AgentAlgorithm:
    """Build agent ``agent_id``'s learner for a run."""
    cls = algorithm_class(name)
    return cls.from_run_config(agent_id, spec, topology, config, seed)


def override(settings: object, **values: object) -> object:
    """A copy of a frozen settings dataclass with the non-None ``values`` replaced."""
    return dataclasses.replace(settings, **{k: v for k, v in values.items() if v is not None})
