"""The agent protocol every algorithm variant implements, and the data it receives.

The shared runtime (``p2pmarl.runtime.agent``) owns the process loop, sockets and world client;
an algorithm only supplies what differs: how it acts, how it learns from its own batch, and what
it exchanges with its graph neighbours in the peer phase. Algorithm modules never import ``zmq``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np

if TYPE_CHECKING:
    from p2pmarl.config import RunConfig
    from p2pmarl.envs.base import EnvSpec
    from p2pmarl.runtime.reliable import Pending, RetransmitPolicy, RoundResult
    from p2pmarl.topology import Topology


@dataclass
class Batch:
    """What agent i saw during one rollout of T steps in K parallel environment copies."""

    agent_id: int
    observations: np.ndarray
    """Own observations o^i_t, float32 (T, K, obs_dim)."""
    joint_actions: np.ndarray
    """Joint actions a_t of all agents, (T, K, W) (MATRPO section IV-D); agent i's numbers are
    the columns ``spec.action_columns(i)``. W = N and one number per agent when every action
    space is ``Discrete``; a ``MultiDiscrete`` agent has one column per component, a ``Box``
    agent its flattened values. Dtype rule (``EnvSpec.action_dtype``): int64 when every space
    is discrete, float32 as soon as any agent's space is a Box (integer components are then
    exact floats). Box values are the agents' unclipped samples; the env clips them."""
    rewards: np.ndarray
    """Own rewards r^i_t, float32 (T, K)."""
    dones: np.ndarray
    """True where the episode ended with step t, bool (T, K)."""
    last_observations: np.ndarray
    """Own observations after the last step, float32 (K, obs_dim), for bootstrapping."""
    phase: str = "rollout"
    """Name of the rollout phase this batch comes from (:class:`RolloutPhase`)."""
    copy_groups: np.ndarray | None = None
    """Copy group of each of the K copies in that phase, int64 (K,) (see
    :func:`copy_group_layout`); None when the phase has one group."""

    @property
    def n_samples(self) -> int:
        """M = T·K transitions."""
        return int(self.rewards.size)

    def fingerprint(self) -> str:
        """Short hash of the joint actions: identical at every agent for the same rollout."""
        import hashlib

        digest = hashlib.blake2b(np.ascontiguousarray(self.joint_actions).tobytes(), digest_size=8)
        return digest.hexdigest()


@dataclass(frozen=True)
class RolloutPhase:
    """One of the rollouts of a training iteration, as an algorithm declares it.

    The world runs an iteration's phases in order, each ``steps`` steps of every copy (copies
    are not reset between phases: an episode may span two phases unless ``steps`` is a multiple
    of the episode length). With ``copy_groups`` G > 1 the K copies are split into G groups by
    :func:`copy_group_layout`, and the agent acts in each group with the policy its algorithm
    names for it (:meth:`AgentAlgorithm.act_in_phase`).
    """

    name: str
    """Short name, used in metrics (``phase/<name>/return``) and :attr:`Batch.phase`."""
    steps: int
    """T of this phase: steps per environment copy."""
    copy_groups: int = 1
    """G: groups the K copies are split into for this phase; needs K ≥ G."""

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"rollout phase {self.name!r}: steps must be ≥ 1, got {self.steps}")
        if self.copy_groups < 1:
            raise ValueError(
                f"rollout phase {self.name!r}: copy_groups must be ≥ 1, got {self.copy_groups}"
            )


def copy_group_layout(
    n_envs: int, groups: int, seed: int, iteration: int, phase: int
) -> np.ndarray:
    """Copy group of each of the K copies, int64 (K,), for phase ``phase`` of ``iteration``.

    Group g gets ⌊K/G⌋ or ⌈K/G⌉ copies (copy k is first given group k mod G, so the first K mod G
    groups get one more); which copies those are is a permutation drawn from (seed, iteration,
    phase). Every agent computes the same layout from the run's root seed: the world neither
    knows nor sends it. Needs K ≥ G, so that every group has at least one copy.
    """
    if groups < 1 or n_envs < groups:
        raise ValueError(
            f"{groups} copy groups need at least {groups} environment copies, got n_envs="
            f"{n_envs}; raise --n-envs to a multiple of {groups}"
        )
    if groups == 1:
        return np.zeros(n_envs, dtype=np.int64)
    rng = np.random.default_rng(np.random.SeedSequence([seed, iteration, phase, 0x6C41]))
    return rng.permutation(np.arange(n_envs, dtype=np.int64) % groups)


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

    # Reliable exchanges over lossy links (runtime/reliable.py, docs/faults.md#retransmission).
    def request(
        self, neighbour: int, kind: str, body: Mapping[str, Any], key: Iterable[int],
        reply_kinds: frozenset[str], answers: Iterable[str] = (), deadline: float | None = None,
    ) -> PeerMessage | None:
        """Send ``body`` as exchange ``key`` and wait for ``neighbour``'s message of
        ``reply_kinds`` in the same exchange, retransmitting on the estimated timeout; None when
        given up. ``answers``: kinds of the neighbour's messages this one also answers (e.g. its
        own kind, in a symmetric exchange where both ends call ``request``)."""

    def answer(self, request: PeerMessage, kind: str, body: Mapping[str, Any]) -> int:
        """Answer a reliable message; its retransmissions are answered again from a stored copy."""

    def send_reliable(
        self, neighbour: int, kind: str, body: Mapping[str, Any], key: Iterable[int],
        answers: Iterable[str] = (),
    ) -> Pending:
        """Send the first copy of a reliable message; for callers running their own wait loop."""

    def resend(self, pending: Pending) -> int:
        """Re-send ``pending`` after its timeout passed (backs its estimator off)."""

    def extend(self, pending: Pending) -> int:
        """Retransmissions used up but the neighbour is alive: one more wait and copy."""

    def echo(self, pending: Pending) -> int:
        """One more copy of ``pending`` that is never answered (e.g. before leaving)."""

    def forget(self, neighbour: int, key: Iterable[int]) -> None:
        """Drop the stored answers of an exchange given up."""

    def heard_since(self, neighbour: int, since: float) -> bool:
        """Whether anything of ``neighbour`` arrived after monotonic time ``since`` (alive)."""

    def timeout_for(self, neighbour: int, kind: str) -> float:
        """Current estimated wait (s) for ``neighbour``'s answer to a message of ``kind``."""

    def use_policy(self, policy: RetransmitPolicy) -> None:
        """Bounds of the estimators and of retransmission from now on."""

    def exchange_round(
        self, kind: str, bodies: Mapping[int, Mapping[str, Any]], key: Iterable[int],
        deadline: float, expect: Iterable[int] | None = None, later: bool = False,
    ) -> RoundResult:
        """Send ``bodies[j]`` to each neighbour j and collect one message of ``kind`` in exchange
        ``key`` from each (of ``expect``), retransmitting; bounded by ``deadline``."""

    def new_exchange(self, kind: str) -> int:
        """Number of the next multi-round exchange of ``kind`` in this iteration (for keys)."""

    def linger(self, seconds: float) -> None:
        """Stay ``seconds`` answering late retransmissions (after a phase's last round)."""

    def deliver(
        self, neighbour: int, kind: str, body: Mapping[str, Any], key: Iterable[int],
        deadline: float | None = None,
    ) -> bool:
        """Send a one-way message reliably until acknowledged; False when given up."""

    def accept_deliveries(self, kinds: Iterable[str]) -> None:
        """Acknowledge messages of ``kinds`` sent with :meth:`deliver` as they arrive."""


@dataclass(frozen=True)
class PeerMessage:
    """A decoded message from a graph neighbour."""

    sender: int
    kind: str
    iteration: int
    body: Mapping[str, Any]


class AgentAlgorithm(ABC):
    """One agent's learner: acts on its own observation, learns from its own batch.

    Loop per training iteration (run by the runtime): for each of :meth:`rollout_phases` a
    rollout (acting with :meth:`act`, or :meth:`act_in_phase` where the phase has several copy
    groups), :meth:`phase_update` on the batch of every phase but the last, then
    :meth:`local_update` on the last phase's batch, then :meth:`peer_phase` with the neighbours.
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

    @property
    def draws_row_by_row(self) -> bool:
        """True when :meth:`act` draws its random numbers with one generator call per call,
        filled row after row, so that one call on all K copies draws exactly what a call per
        chunk of rows draws (``world_link.acting_chunks``). The rollout then acts once per
        step instead of once per chunk, with identical numbers. Default False: a variant that
        draws several kinds of numbers per call (C-TRPO's joint heads) or acts with
        :meth:`act_in_phase` keeps acting per chunk, the order its seeded numbers follow."""
        return False

    @classmethod
    def from_run_config(
        cls, agent_id: int, spec: EnvSpec, topology: Topology, config: RunConfig, seed: int
    ) -> AgentAlgorithm:
        """Build agent ``agent_id``'s learner from the run config (the variant picks its fields)."""
        raise NotImplementedError(f"{cls.__name__} does not support launching from a run config")

    @classmethod
    def check_run(cls, topology: Topology, config: RunConfig) -> None:
        """Raise ``ConfigError`` naming the setting and the fix when this variant cannot run with
        ``config`` on ``topology``; the launcher calls it before any process starts."""

    @classmethod
    def rollout_phases(cls, config: RunConfig, n_agents: int) -> tuple[RolloutPhase, ...]:
        """The rollouts of every training iteration, in order, from the run config and N alone
        (the world calls this too, so it must not depend on anything learned). Default: one
        phase of ``config.rollout_length`` steps with one copy group."""
        return (RolloutPhase("rollout", config.rollout_length),)

    @abstractmethod
    def act(self, observations: np.ndarray, deterministic: bool = False) -> np.ndarray:
        """Own actions for own observations of shape (K, obs_dim): (K,) when the action is one
        number (int64 for Discrete), else (K, width) (float32 for a Box); the runtime casts them
        to the joint action dtype."""

    def act_in_phase(
        self, observations: np.ndarray, phase: RolloutPhase, copy_groups: np.ndarray
    ) -> np.ndarray:
        """Own actions in a phase with several copy groups: row r belongs to copy group
        ``copy_groups[r]``; the algorithm picks the policy it acts with in each group. Only
        called for phases with ``copy_groups`` > 1; the default acts with :meth:`act`."""
        return self.act(observations)

    def phase_update(self, batch: Batch) -> dict[str, float]:
        """Learning after every phase but the last (``batch.phase`` names it), before the next
        phase's rollout; the last phase's batch goes to :meth:`local_update` and
        :meth:`peer_phase`. Default: nothing."""
        return {}

    def collect(self, steps: int, copies: int) -> Batch:
        """``steps`` steps of ``copies`` own environment copies (only if ``owns_environment``)."""
        raise NotImplementedError(f"{type(self).__name__} is stepped by the world process")

    @abstractmethod
    def local_update(self, batch: Batch) -> dict[str, float]:
        """Learning that needs no peer: advantages, value fit, a local policy step."""

    def peer_phase(self, batch: Batch, peers: Peers) -> dict[str, float]:
        """Exchange with neighbours and finish the policy update; the default sends nothing."""
        return {}

    def check_checkpoint_owner(self, state: Mapping[str, Any]) -> None:
        """ValueError unless checkpoint ``state`` was saved by this variant for this agent (its
        ``algorithm`` and ``agent_id`` entries); :meth:`load_state_dict` calls it first."""
        if state.get("algorithm") != self.name or state.get("agent_id") != getattr(
            self, "agent_id", None
        ):
            raise ValueError(
                f"checkpoint of {state.get('algorithm')!r} agent {state.get('agent_id')} cannot "
                f"be loaded into {self.name!r} agent {getattr(self, 'agent_id', None)}; pick that "
                "agent's file"
            )

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Networks, optimizer state and RNG state, for checkpoints (torch.save-able)."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
