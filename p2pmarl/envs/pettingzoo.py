"""Any PettingZoo Parallel environment, named by import path, as a :class:`MultiAgentEnv`.

``--env MODULE:FACTORY`` or ``--env MODULE.ATTR`` names a callable that returns a PettingZoo
``ParallelEnv`` (e.g. ``mpe2.simple_adversary_v3:parallel_env``); ``--env-kwargs JSON`` is passed
to it as keyword arguments. Agents map to graph nodes in the env's ``possible_agents`` order
(``--agent-order a,b,c`` overrides it), so the topology's N must equal the env's agent count.

Spaces
    Observations: ``Box`` of any shape (flattened to float32) and ``Discrete(n)`` (one-hot of
    length n). Actions: ``Discrete``, ``MultiDiscrete`` and ``Box``
    (:class:`~p2pmarl.envs.base.ActionSpace`); spaces may differ between agents. Box actions
    are clipped to the Box before the env sees them (the policy's log-probability is that of
    the unclipped sample, which is what the other agents are told). Anything else (``Dict``,
    ``Tuple``, ``Text``, ``MultiBinary``, ...) is refused with the agent and space named.

Episodes
    PettingZoo removes an agent from ``env.agents`` once it is terminated or truncated; from
    then on it gets no action (its action row is ignored), reward 0 and its last observation,
    until the episode ends for all: when ``env.agents`` is empty, or after ``episode_length``
    steps (the run's setting; the env's own limit, e.g. mpe2's ``max_cycles``, may end it
    sooner).

Multi-agent MuJoCo
    ``mamujoco:SCENARIO:AGENT_CONF`` and gymnasium-robotics' ``mamujoco_v1:parallel_env`` are
    built by :mod:`p2pmarl.envs.mamujoco` (checked, optional extra), then handled as here.
"""

from __future__ import annotations

import functools
import importlib
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from p2pmarl.envs import mamujoco
from p2pmarl.envs.base import ActionSpace, EnvSpec, MultiAgentEnv

OPTIONAL_EXTRAS = {"gymnasium_robotics": "mujoco", "mujoco": "mujoco"}
"""Top-level modules that an optional extra of p2pmarl installs → that extra's name."""


def is_import_path(name: str) -> bool:
    """True for ``MODULE:FACTORY`` / ``MODULE.ATTR`` names (the built-in names have neither)."""
    return ":" in name or "." in name


def parse_env_kwargs(text: str | None) -> dict[str, Any]:
    """``--env-kwargs`` JSON object → keyword arguments (``None`` → none)."""
    if text is None or text == "":
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(
            f"env_kwargs {text!r} is not valid JSON ({error.msg}); pass an object such as "
            f'\'{{"continuous_actions": true}}\''
        ) from None
    if not isinstance(value, dict):
        raise ValueError(f"env_kwargs must be a JSON object of keyword arguments, got {text!r}")
    return value


def import_object(dotted: str) -> Any:
    """The module ``dotted``, or, where no module has that name, the attribute its parent module
    binds to it (``gymnasium_robotics.mamujoco_v1`` is such a name)."""
    try:
        return importlib.import_module(dotted)
    except ModuleNotFoundError as error:
        parent, _, last = dotted.rpartition(".")
        if error.name != dotted or not parent:
            raise
        owner = import_object(parent)
        if not hasattr(owner, last):
            raise
        return getattr(owner, last)


def resolve_factory(path: str) -> Callable[..., Any]:
    """The callable named by ``MODULE:FACTORY`` or ``MODULE.ATTR``."""
    module_name, separator, attribute = (
        path.partition(":") if ":" in path else path.rpartition(".")
    )
    if not module_name or not separator or not attribute:
        raise ValueError(
            f"--env {path!r} is not an import path; write MODULE:FACTORY or MODULE.ATTR, e.g. "
            f"mpe2.simple_spread_v3:parallel_env"
        )
    try:
        module = import_object(module_name)
    except ImportError as error:
        extra = OPTIONAL_EXTRAS.get(module_name.partition(".")[0])
        hint = f"; it comes with the optional extra: pip install -e '.[{extra}]'" if extra else ""
        raise ValueError(
            f"--env {path!r}: cannot import module {module_name!r}: {error}{hint}"
        ) from None
    target: Any = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise ValueError(
                f"--env {path!r}: module {module_name!r} has no attribute {attribute!r}"
            )
        target = getattr(target, part)
    if not callable(target):
        raise ValueError(
            f"--env {path!r}: {attribute!r} is a {type(target).__name__}, not a callable"
        )
    return target


def build_parallel(path: str, kwargs: Mapping[str, Any]) -> Any:
    """Call the factory (:func:`mamujoco.build` for MaMuJoCo) and check that it returned a
    PettingZoo Parallel env."""
    try:
        if mamujoco.is_mamujoco(path):
            env = mamujoco.build(path, kwargs)
        else:
            env = resolve_factory(path)(**kwargs)
    except ValueError:
        raise
    except Exception as error:
        raise ValueError(
            f"--env {path!r} with env_kwargs {dict(kwargs)} failed: "
            f"{type(error).__name__}: {error}"
        ) from error
    kind = type(env).__name__
    if hasattr(env, "agent_iter") or hasattr(env, "last"):
        raise ValueError(
            f"--env {path!r} returned {kind}, an AEC (turn-based) env; p2pmarl needs a Parallel "
            f"env: use the module's parallel_env, or wrap it with "
            f"pettingzoo.utils.conversions.aec_to_parallel"
        )
    missing = [name for name in ("possible_agents", "reset", "step", "observation_space",
                                 "action_space") if not hasattr(env, name)]
    if missing:
        raise ValueError(
            f"--env {path!r} returned {kind}, which is not a PettingZoo ParallelEnv "
            f"(it lacks {', '.join(missing)})"
        )
    return env


def observation_size(space: Any, where: str) -> int:
    """Flat length of an observation from ``space``: Box → its size, Discrete(n) → n."""
    kind = type(space).__name__
    if kind == "Box":
        return int(np.prod(space.shape, dtype=np.int64))
    if kind == "Discrete":
        return int(space.n)
    raise ValueError(
        f"{where}: observation space {space} ({kind}) is not supported; use Box (any shape) or "
        f"Discrete, e.g. flatten a Dict space with gymnasium.wrappers.FlattenObservation"
    )


def action_space(space: Any, where: str) -> ActionSpace:
    """The runtime's :class:`ActionSpace` for a gymnasium Discrete, MultiDiscrete or Box."""
    kind = type(space).__name__
    if kind == "Discrete":
        return ActionSpace.discrete(int(space.n))
    if kind == "MultiDiscrete":
        return ActionSpace.multi_discrete(np.asarray(space.nvec).reshape(-1).tolist())
    if kind == "Box":
        low = np.asarray(space.low, dtype=np.float64).reshape(-1)
        high = np.asarray(space.high, dtype=np.float64).reshape(-1)
        return ActionSpace.box(low.tolist(), high.tolist())
    raise ValueError(
        f"{where}: action space {space} ({kind}) is not supported; use Discrete, "
        f"MultiDiscrete or Box"
    )


def agent_names(env: Any, path: str, order: str | None) -> tuple[str, ...]:
    """``possible_agents`` in the env's order, or in ``order`` (comma-separated names)."""
    possible = tuple(env.possible_agents)
    if order is None or order == "":
        return possible
    names = tuple(name.strip() for name in order.split(","))
    if sorted(names) != sorted(possible):
        raise ValueError(
            f"agent_order {order!r} must list each of {path}'s agents exactly once: "
            f"{', '.join(possible)}"
        )
    return names


class PettingZooEnv(MultiAgentEnv):
    """One PettingZoo Parallel env; agent id i is ``names[i]``."""

    def __init__(self, parallel: Any, spec: EnvSpec, names: Sequence[str]) -> None:
        self.parallel = parallel
        self.spec = spec
        self.names = tuple(names)
        self._observation_spaces = [parallel.observation_space(a) for a in self.names]
        self._action_spaces = [parallel.action_space(a) for a in self.names]
        self._columns = [spec.action_columns(i) for i in range(spec.n_agents)]
        self._last: list[np.ndarray] = []
        self._steps = 0
        self._done = True

    def reset(self, seed: int | None = None) -> list[np.ndarray]:
        """Start an episode; ``seed`` reseeds the env, ``None`` lets it continue its stream."""
        observations, _ = self.parallel.reset(seed=seed)
        self._last = [self._flatten(i, observations[name]) for i, name in enumerate(self.names)]
        self._steps = 0
        self._done = False
        return list(self._last)

    def step(self, actions: Sequence[float]) -> tuple[list[np.ndarray], np.ndarray, bool]:
        """Apply the joint action row (agent i's numbers in ``spec.action_columns(i)``)."""
        if self._done:
            raise RuntimeError("the episode has ended (or never started): call reset() first")
        row = np.asarray(actions, dtype=np.float64)
        if row.shape != (self.spec.joint_action_width,):
            raise ValueError(
                f"{self.spec.name}: expected {self.spec.joint_action_width} action numbers, got "
                f"shape {row.shape}"
            )
        alive = set(self.parallel.agents)
        joint = {
            name: self._decode(i, row[self._columns[i]])
            for i, name in enumerate(self.names)
            if name in alive
        }
        observations, rewards, _, _, _ = self.parallel.step(joint)
        reward = np.zeros(self.spec.n_agents, dtype=np.float32)
        for i, name in enumerate(self.names):
            if name in observations:
                self._last[i] = self._flatten(i, observations[name])
            reward[i] = float(rewards.get(name, 0.0))
        self._steps += 1
        self._done = not self.parallel.agents or self._steps >= self.spec.episode_length
        return list(self._last), reward, self._done

    def close(self) -> None:
        self.parallel.close()

    def _flatten(self, agent: int, observation: Any) -> np.ndarray:
        space = self._observation_spaces[agent]
        if type(space).__name__ == "Discrete":
            one_hot = np.zeros(int(space.n), dtype=np.float32)
            one_hot[int(observation) - int(space.start)] = 1.0
            return one_hot
        return np.asarray(observation, dtype=np.float32).reshape(-1)

    def _decode(self, agent: int, values: np.ndarray) -> Any:
        """Joint-row numbers → the action the env expects (start added, Box clipped)."""
        space = self._action_spaces[agent]
        kind = type(space).__name__
        if kind == "Discrete":
            return int(values[0]) + int(space.start)
        if kind == "MultiDiscrete":
            start = np.asarray(getattr(space, "start", 0))
            return (values.astype(np.int64).reshape(space.shape) + start).astype(space.dtype)
        clipped = np.clip(values.reshape(space.shape), space.low, space.high)
        return clipped.astype(space.dtype)


def _spec_from_env(env: Any, name: str, names: Sequence[str], episode_length: int) -> EnvSpec:
    observation_sizes, spaces = [], []
    for agent in names:
        where = f"--env {name}, agent {agent!r}"
        observation_sizes.append(observation_size(env.observation_space(agent), where))
        spaces.append(action_space(env.action_space(agent), where))
    return EnvSpec(
        name=name,
        n_agents=len(names),
        observation_sizes=tuple(observation_sizes),
        action_sizes=tuple(s.nvec[0] if s.nvec and len(s.nvec) == 1 else s.width for s in spaces),
        episode_length=episode_length,
        action_spaces=tuple(spaces),
    )


def _check_n_agents(name: str, names: Sequence[str], n_agents: int | None) -> None:
    if n_agents is not None and n_agents != len(names):
        raise ValueError(
            f"--env {name} has {len(names)} agents ({', '.join(names)}) but N={n_agents} was "
            f"asked (the topology's node count); use a topology with {len(names)} nodes"
        )


def make_pettingzoo(
    name: str,
    n_agents: int | None,
    episode_length: int,
    env_kwargs: str | None = None,
    agent_order: str | None = None,
) -> PettingZooEnv:
    """Build one copy of the env named by import path ``name``; N must match if given."""
    parallel = build_parallel(name, parse_env_kwargs(env_kwargs))
    names = agent_names(parallel, name, agent_order)
    _check_n_agents(name, names, n_agents)
    return PettingZooEnv(parallel, _spec_from_env(parallel, name, names, episode_length), names)


@functools.lru_cache(maxsize=16)
def pettingzoo_spec(
    name: str,
    n_agents: int | None,
    episode_length: int,
    env_kwargs: str | None = None,
    agent_order: str | None = None,
) -> EnvSpec:
    """The spec of :func:`make_pettingzoo` (builds one env to read its spaces; cached)."""
    env = make_pettingzoo(name, n_agents, episode_length, env_kwargs, agent_order)
    env.close()
    return env.spec

