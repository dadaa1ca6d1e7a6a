"""The contract between the world process and one environment copy.

The world holds K copies of a :class:`MultiAgentEnv` and steps them in lock-step. Agent ids are
0..N-1 in the environment's own agent order; rewards are the per-agent rewards of the variant
(the paper's Table I/II definitions for ``spread`` and ``treasure``).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ActionSpace:
    """One agent's action space as the runtime sees it: integer components or a Box.

    An action is a row of :attr:`width` numbers in the joint action (see :class:`EnvSpec`):
    ``Discrete(n)`` is one component with ``n`` choices, ``MultiDiscrete(nvec)`` one component
    per entry of ``nvec`` (choices counted from 0: the env adapter adds the space's ``start``),
    a ``Box`` of any shape its flattened values (``low``/``high`` flattened too).
    """

    kind: str
    """``discrete`` (Discrete or MultiDiscrete) or ``box``."""
    nvec: tuple[int, ...] = ()
    """Choices per component of a ``discrete`` space; ``()`` for a Box."""
    low: tuple[float, ...] = ()
    """Lower bounds of a ``box`` (may be ``-inf``); ``()`` for discrete spaces."""
    high: tuple[float, ...] = ()
    """Upper bounds of a ``box`` (may be ``inf``); ``()`` for discrete spaces."""

    def __post_init__(self) -> None:
        if self.kind == "discrete":
            valid = len(self.nvec) >= 1 and min(self.nvec) >= 1 and not self.low + self.high
        elif self.kind == "box":
            valid = (
                not self.nvec and len(self.low) == len(self.high) >= 1
                and all(lo <= hi for lo, hi in zip(self.low, self.high, strict=True))
            )
        else:
            valid = False
        if not valid:
            raise ValueError(
                f"invalid action space {self!r}: use ActionSpace.discrete(n), "
                f"ActionSpace.multi_discrete(nvec) or ActionSpace.box(low, high)"
            )

    @classmethod
    def discrete(cls, n: int) -> ActionSpace:
        return cls("discrete", (int(n),))

    @classmethod
    def multi_discrete(cls, nvec: Sequence[int]) -> ActionSpace:
        return cls("discrete", tuple(int(v) for v in nvec))

    @classmethod
    def box(cls, low: Sequence[float], high: Sequence[float]) -> ActionSpace:
        return cls("box", low=tuple(float(v) for v in low), high=tuple(float(v) for v in high))

    @property
    def is_box(self) -> bool:
        return self.kind == "box"

    @property
    def width(self) -> int:
        """Numbers per action: components of a discrete space, flattened size of a Box."""
        return len(self.low) if self.is_box else len(self.nvec)

    def fallback(self) -> np.ndarray:
        """The action of an agent whose process is lost, float64 (width,).

        Discrete components: 0 (the no-op of the MPE action spaces). Box: the midpoint
        ``(low + high) / 2``; a dimension unbounded on one side takes its finite bound, an
        unbounded one 0.
        """
        if not self.is_box:
            return np.zeros(self.width)
        values = []
        for low, high in zip(self.low, self.high, strict=True):
            if math.isfinite(low) and math.isfinite(high):
                values.append((low + high) / 2.0)
            elif math.isfinite(low) or math.isfinite(high):
                values.append(low if math.isfinite(low) else high)
            else:
                values.append(0.0)
        return np.array(values)

    def invalid(self, actions: np.ndarray) -> bool:
        """True if any row of ``actions`` (R, width) is outside the space: a discrete component
        outside ``[0, n)``, or a Box value that is not finite (Box actions are clipped to the
        bounds by the environment, not refused)."""
        if self.is_box:
            return not bool(np.isfinite(actions).all())
        limits = np.array(self.nvec)
        if actions.dtype.kind == "f" and not bool((actions == np.floor(actions)).all()):
            return True  # integer components sent as float32 (a joint row with a Box)
        return bool(actions.min(initial=0) < 0 or (actions >= limits).any())


@dataclass(frozen=True)
class EnvSpec:
    """Static description of an environment that agents need before the first step."""

    name: str
    """Registered environment name (``spread``, ``treasure``, ...)."""
    n_agents: int
    """Number of agents N; must equal the topology's node count."""
    observation_sizes: tuple[int, ...]
    """Length of agent i's flat observation vector, per agent (sizes may differ)."""
    action_sizes: tuple[int, ...]
    """Number of discrete actions of agent i, per agent (for an agent whose space is not
    ``Discrete``: its action's width; see :attr:`action_spaces`)."""
    episode_length: int
    """Steps after which an episode is truncated (the paper uses 100)."""
    action_spaces: tuple[ActionSpace, ...] = ()
    """Agent i's action space; ``()`` (the built-in envs) means ``Discrete(action_sizes[i])``."""

    def __post_init__(self) -> None:
        if not self.action_spaces:
            spaces = tuple(ActionSpace.discrete(n) for n in self.action_sizes)
            object.__setattr__(self, "action_spaces", spaces)
        if len(self.action_spaces) != self.n_agents:
            raise ValueError(
                f"{self.name}: {len(self.action_spaces)} action spaces for {self.n_agents} agents"
            )

    @property
    def action_offsets(self) -> tuple[int, ...]:
        """Column of agent i's first action number in a joint action row; the last entry is W."""
        offsets = [0]
        for space in self.action_spaces:
            offsets.append(offsets[-1] + space.width)
        return tuple(offsets)

    @property
    def joint_action_width(self) -> int:
        """W, numbers in a joint action row (N when every agent's space is ``Discrete``)."""
        return self.action_offsets[-1]

    def action_columns(self, agent: int) -> slice:
        """Agent ``agent``'s columns of a joint action row."""
        offsets = self.action_offsets
        return slice(offsets[agent], offsets[agent + 1])

    @property
    def action_dtype(self) -> np.dtype:
        """Joint actions are int64 when every space is discrete, float32 when any is a Box
        (integer components are then stored as exact floats)."""
        continuous = any(space.is_box for space in self.action_spaces)
        return np.dtype(np.float32 if continuous else np.int64)

    @property
    def wire_action_dtype(self) -> str:
        """:attr:`action_dtype` as it arrives off the wire (little-endian dtype string)."""
        return self.action_dtype.newbyteorder("<").str

    def fallback_joint_action(self, n_rows: int) -> np.ndarray:
        """(n_rows, W) of every agent's :meth:`ActionSpace.fallback`, in :attr:`action_dtype`."""
        row = np.concatenate([space.fallback() for space in self.action_spaces])
        return np.tile(row.astype(self.action_dtype), (n_rows, 1))


class MultiAgentEnv(ABC):
    """One copy of a parallel multi-agent environment with integer agent ids."""

    spec: EnvSpec

    @abstractmethod
    def reset(self, seed: int | None = None) -> list[np.ndarray]:
        """Start a new episode; returns one float32 observation per agent."""

    @abstractmethod
    def step(self, actions: Sequence[float]) -> tuple[list[np.ndarray], np.ndarray, bool]:
        """Apply one joint action row (W numbers, agent i's in ``spec.action_columns(i)``; for
        the built-in envs one discrete action per agent).

        Returns the next observations (one per agent), the float32 reward vector of shape (N,)
        and whether the episode ended (terminated or truncated) with this step.
        """

    def close(self) -> None:
        """Release renderer resources; the default has none."""
