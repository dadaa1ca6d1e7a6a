"""The agent protocol every algorithm variant implements, and the data it receives.

The shared runtime (``p2pmarl.runtime.agent``) owns the process loop, sockets and world client;
an algorithm only supplies what differs: how it acts, how it learns from its own batch, and what
it exchanges with its graph neighbours in the peer phase. Algorithm modules never import ``zmq``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np

if TYPE_CHECKING:
    from p2pmarl.config import RunConfig
    from p2pmarl.envs.base import EnvSpec
    from p2pmarl.topology import Topology


@dataclass
class Batch:
    """What agent i saw during one rollout of T steps in K parallel environment copies."""

    agent_id: int
    observations: np.ndarray
    """Own observations o^i_t, float32 (T, K, obs_dim)."""
    joint_actions: np.ndarray
    """Joint actions a_t of all agents, int64 (T, K, N) (MATRPO section IV-D)."""
    rewards: np.ndarray
    """Own rewards r^i_t, float32 (T, K)."""
    dones: np.ndarray
    """True where the episode ended with step t, bool (T, K)."""
    last_observations: np.ndarray
    """Own observations after the last step, float32 (K, obs_dim), for bootstrapping."""

    @property
    def n_samples(self) -> int:
        """M = T·K transitions."""
        return int(self.rewards.size)

    def fingerprint(self) -> str:
        """Short hash of the joint actions: identical at every agent for the same rollout."""
        import hashlib

        digest = hashlib.blake2b(np.ascontiguousarray(self.joint_actions).tobytes(), digest_size=8)
        return digest.hexdigest()


class Peers(Protocol):
    """What an algorithm may do with its graph neighbours during the peer phase."""

    agent_id: int
    neighbours: tuple[int, ...]
    iteration: int

    def send(self, neighbour: int, kind: str, body: Mapping[str, Any]) -> None:
        """Send ``body`` (scalars, strings, numpy arrays) to one graph neighbour."""

    def receive(self, timeout: float, kinds: frozenset[str] | None = None) -> PeerMessage | None:
        """Next message from a neighbour (of one of ``kinds``), or ``None`` after ``timeout`` s."""

    def down(self) -> frozenset[int]:
        """Neighbours the network layer currently reports lost (crashed or unreachable)."""


@dataclass(frozen=True)
class PeerMessage:
    """A decoded message from a graph neighbour."""

    sender: int
    kind: str
    iteration: int
    body: Mapping[str, Any]


class AgentAlgorithm(ABC):
    """One agent's learner: acts on its own observation, learns from its own batch.

    Loop per training iteration (run by the runtime): rollout with :meth:`act`, then
    :meth:`local_update` on the batch, then :meth:`peer_phase` with the neighbours.
    """

    name: ClassVar[str]
    """Name used on the command line (``--algo``)."""
    message_kinds: ClassVar[frozenset[str]] = frozenset()
    """Kinds of peer messages this algorithm sends; the privacy test checks nothing else leaves."""
    needs_connected_graph: ClassVar[bool] = False
    """Consensus algorithms refuse disconnected topologies."""
    centralized: ClassVar[bool] = False
    """True only for reference baselines run as one learner seeing every agent (C-TRPO)."""
    owns_environment: ClassVar[bool] = False
    """True for worker-level variants (Genetic MADDPG) that step their own environment copies
    in-process: the runtime then calls :meth:`collect` instead of a world rollout, and the world
    process only paces the iterations."""
    record: Callable[[dict[str, Any]], None] | None = None
    """Sink for per-event records of the peer phase (the runtime writes them to admm.jsonl)."""

    @classmethod
    def from_run_config(
        cls, agent_id: int, spec: EnvSpec, topology: Topology, config: RunConfig, seed: int
    ) -> AgentAlgorithm:
        """Build agent ``agent_id``'s learner from the run config (the variant picks its fields)."""
        raise NotImplementedError(f"{cls.__name__} does not support launching from a run config")

    @abstractmethod
    def act(self, observations: np.ndarray, deterministic: bool = False) -> np.ndarray:
        """Own actions (int64, shape (K,)) for own observations of shape (K, obs_dim)."""

    def collect(self, steps: int, copies: int) -> Batch:
        """``steps`` steps of ``copies`` own environment copies (only if ``owns_environment``)."""
        raise NotImplementedError(f"{type(self).__name__} is stepped by the world process")

    @abstractmethod
    def local_update(self, batch: Batch) -> dict[str, float]:
        """Learning that needs no peer: advantages, value fit, a local policy step."""

    def peer_phase(self, batch: Batch, peers: Peers) -> dict[str, float]:
        """Exchange with neighbours and finish the policy update; the default sends nothing."""
        return {}

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Networks, optimizer state and RNG state, for checkpoints (torch.save-able)."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
