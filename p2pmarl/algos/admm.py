"""MATRPO's edge-wise asynchronous ADMM (section IV-B, V-B and Appendix A-B), with no networks.

Every edge e = (i, j), i < j, of the communication graph carries the consensus constraint of
eq. (10) on the log ratios ℓ^q (eq. 20): C_e^i = +1, C_e^j = −1, C_e^q ℓ^q = z_e^q and
z_e^i + z_e^j = 0. Each endpoint q keeps, for each of its own edges only, the estimate z_e^q and the
dual y_e^q (:class:`EdgeState`). One *activation* of edge e runs at both endpoints (eq. 12 / 22):

1. θ step: the pluggable :class:`LocalSolver` minimises q's share of the augmented Lagrangian (21)
   given ``dual_sum`` = Σ_{e'∈E(q)} C_{e'}^q y_{e'}^q and ``estimate_sum`` = Σ_{e'∈E(q)} C_{e'}^q
   z_{e'}^q, and proposes ℓ^q (tentative until the activation commits);
2. exchange: each endpoint sends the other ℓ^q (float32) and y_e^q, nothing else of substance;
3. z, y step (:func:`consensus_update`, identical at both ends), then ``solver.accept()``;
   an aborted activation changes no edge state and calls ``solver.reject()``.

Two schedules (``ADMMConfig.schedule``):

* ``seeded`` replays Algorithm 1: every agent derives the same uniformly random edge sequence from
  the shared seed and the iteration (:func:`edge_sequence`) and takes part, in order, in the
  activations of its own edges. An activation touches only its endpoints' state and θ^q depends
  only on q's own edges, so this equals the sequential algorithm while disjoint edges run in
  parallel; with a deterministic solver the numbers are bitwise reproducible. A wait for the
  partner's exchange must outlast the partner's lag behind the sequence (``message_timeout``); a
  later exchange of the partner arriving first proves the awaited one lost and aborts at once.
* ``async`` has no coordinator and no shared sequence. Each agent announces READY to its
  neighbours on entering the phase (and probes a partner silent for ``message_timeout`` with READY
  again). The lower endpoint of an edge initiates it: it picks a random open edge whose partner is
  known to be in the phase and sends PROPOSE; a free partner answers ACCEPT, a partner engaged
  elsewhere answers BUSY (the initiator backs off a random time on that edge and tries another).
  An agent is in at most one activation at a time and answers BUSY to everyone while it waits, and
  only lower ids propose to higher ids, so there is no wait cycle; edges that share no agent run
  at the same time. To keep progress even (an edge that finishes its budget early leaves its
  endpoints' estimates stale), an agent takes part in an activation only if that edge is at most
  ``max_lead`` commits ahead of its least-activated open edge; the graph-wide least-activated edge
  always qualifies at both ends, so this cannot deadlock.

**Phase end rule.** An agent leaves the phase when each of its edges is *closed*. An edge closes
at an endpoint when (async) its committed version reaches :func:`per_edge_budget`, or (seeded) the
sequence ends; or when the edge's residuals are all at or below ``residual_tolerance`` (if set;
both ends compute identical residuals, so they agree); or the partner sent DONE on it; or
``max_failures`` consecutive activations on it were aborted (async: or that many READY probes
went unanswered); or ``phase_timeout`` passed since the phase began. Closing an edge for any reason
but the partner's DONE sends DONE to the partner. Without retransmission every wait lasts at most
``message_timeout``.

**Retransmission rule** (``retransmissions`` > 0, the run default; the general piece is
``runtime/reliable.py`` through the peers, see ``docs/faults.md``). PROPOSE and EXCHANGE are sent
as reliable messages keyed by (activation[, version]); ACCEPT and BUSY are stored answers to the
PROPOSE, each EXCHANGE is the stored answer to the partner's EXCHANGE of the same key, so a copy
that arrives twice is applied once and a retransmission is answered from the store, even after
the answering side committed and moved on. A wait ends at the per-(neighbour, kind) estimated
timeout and re-sends; after ``retransmissions`` copies the activation is aborted, unless the
partner was heard from lately (alive and behind: seeded lag, a long θ step), when it waits and
re-sends once more. An exchange of an activation this agent is not in (it gave it up) is answered
BUSY, so the other end aborts at once instead of retransmitting. On closing an edge after a
commit an agent re-sends that last exchange before its DONE, and at the end of its phase it stays
for a few exchange timeouts (or until every partner's DONE came) to answer late retransmissions.

**Re-synchronisation rule.** One side may commit an activation whose last exchange message the
other side never got, so the two ends can differ by one committed activation. Each state carries a
``version`` (committed activations) and a snapshot of its previous (z, y, version). PROPOSE/ACCEPT
(async) and EXCHANGE (both schedules) carry the sender's version; on a difference, the side that is
ahead rolls back to its snapshot, which is exactly the other side's state, so both continue from
the same consistent state. In async mode this happens in the handshake, before the θ step. In
seeded mode it shows in the exchange: without retransmission the activation that detects it is
aborted at both ends; with it, the side that is ahead rolls back, redoes its θ step and sends its
exchange again (a new key) while the side that is behind waits for that copy, so a lost message
costs at most the activation it belonged to. (θ^q is recomputed from θ_old at every θ step, so
rolling back (z, y) is enough.)

Messages (``MESSAGE_KINDS``), all stamped with the batch ``fingerprint``; an activation message
whose fingerprint differs from ours aborts that activation and is recorded (ℓ of two batches are
never combined): ``admm_exchange`` {activation, version, fingerprint, log_ratio, dual};
``admm_propose``/``admm_accept`` {activation, version, fingerprint}; ``admm_busy`` {activation,
fingerprint}; ``admm_ready`` {fingerprint, reply}; ``admm_done`` {fingerprint, reply};
retransmitting, PROPOSE, ACCEPT, BUSY and EXCHANGE also carry the reliability fields {exchange,
attempt, echo}.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np

from p2pmarl.algos.base import PeerMessage, Peers
from p2pmarl.runtime.codec import CodecError, require_array
from p2pmarl.runtime.reliable import Pending, RetransmissionTimer, RetransmitPolicy

logger = logging.getLogger(__name__)

Edge = tuple[int, int]
"""A graph edge (i, j) with i < j; i is its initiator in async mode."""

READY = "admm_ready"
PROPOSE = "admm_propose"
ACCEPT = "admm_accept"
BUSY = "admm_busy"
EXCHANGE = "admm_exchange"
DONE = "admm_done"
MESSAGE_KINDS = frozenset({READY, PROPOSE, ACCEPT, BUSY, EXCHANGE, DONE})
"""Every kind of message the ADMM phase sends."""
EXCHANGE_FIELDS = frozenset({"activation", "version", "fingerprint", "log_ratio", "dual"})
"""The whole content of an exchange message: ids, version, fingerprint, ℓ^q and y_e^q. When
retransmitting, every message also carries the reliability layer's exchange id and copy counters
(``runtime/reliable.RELIABLE_FIELDS``)."""
NONDETERMINISTIC_FIELDS = frozenset({"compute_seconds", "communication_seconds", "bytes_sent"})
"""Record fields that differ between identical seeded runs (timings; wire sizes vary with the
transport's header sequence numbers, which heartbeats advance). Retransmissions and estimated
timeouts, which depend on timing too, are therefore in the metrics (``admm/retransmissions``,
``peers/timeouts``), not in the activation records."""
CONTROL_COPIES = 2
"""Copies of each DONE and of the opening READY sent (retransmitting): both are idempotent and
tiny; a lost opening READY delays the edge's first activation by a READY timeout, a lost DONE costs
the partner a whole linger (or, for a partner whose edge is still open, READY probes until
``max_failures``), so a second copy is the cheapest insurance (30 % loss: 9 % lost, not 30 %)."""
POLL_SECONDS = 1e-4
"""Receive timeout used to look for already queued messages without blocking."""
IDLE_WAIT_SECONDS = 0.05
"""Longest single blocking receive while an async agent has nothing to initiate."""
LIVENESS_POLL_SECONDS = 0.2
"""Longest single blocking receive while awaiting a partner: between two, the transport's view of
lost neighbours (``Peers.down``) is read, so a crashed partner ends the wait within this time."""

Record = Callable[[dict[str, Any]], None]


class LocalSolver(Protocol):
    """Agent q's θ step, the only part of an activation that depends on the model (eq. 22).

    A solver may also define ``last_stats() -> Mapping[str, float]`` (e.g. KL, line-search steps,
    augmented Lagrangian of the last proposal); it is merged into every record as ``solver/<key>``.
    """

    def propose(self, dual_sum: np.ndarray, estimate_sum: np.ndarray, degree: int) -> np.ndarray:
        """Minimise q's share of the augmented Lagrangian (21) from θ_old; return ℓ^q (N×M).

        ``dual_sum`` = Σ_{e∈E(q)} C_e^q y_e^q, ``estimate_sum`` = Σ_{e∈E(q)} C_e^q z_e^q and
        ``degree`` = |E(q)| are those of eq. (44)-(45). The proposal is tentative.
        """
        ...

    def accept(self) -> None:
        """Commit the last proposal's θ (the activation completed)."""
        ...

    def reject(self) -> None:
        """Discard the last proposal's θ (the activation was aborted)."""
        ...


@dataclass(frozen=True)
class ADMMConfig:
    """Settings of one agent's ADMM phase; all agents of a run must use the same values."""

    beta: float = 1.0
    """Penalty β of the augmented Lagrangian (eq. 21); paper: 1 for N = 3, 6 and 5 for N = 8, 12."""
    budget: int = 100
    """Edge activations per training iteration, whole graph (the paper's ADMM iterations)."""
    schedule: Literal["async", "seeded"] = "seeded"
    """``seeded``: replay Algorithm 1's random edge sequence; ``async``: edges self-activate."""
    seed: int = 0
    """Seed shared by all agents; with the iteration it fixes the seeded edge sequence."""
    initial_dual: float = 0.0
    """Value of every dual y_e^q when a phase starts (the reference implementation used 1)."""
    residual_tolerance: float = 0.0
    """Close an edge once all its residuals are at or below this value; 0 turns the test off."""
    message_timeout: float = 5.0
    """Seconds a wait for one neighbour's message lasts (seeded: must cover the partner's lag)."""
    phase_timeout: float = 120.0
    """Seconds after which an agent leaves the phase, whatever the state of its edges."""
    max_failures: int = 10
    """Consecutive aborted activations (or unanswered announcements) before an edge is given up."""
    backoff: float = 0.01
    """Upper bound (s) of an async initiator's random pause on an edge after a BUSY answer."""
    max_lead: int = 1
    """Async: commits an edge may lead the least-activated open edge of the agent and still run."""
    retransmissions: int = 0
    """Retransmissions of an unanswered message before its activation is aborted. 0: the fixed
    protocol (every wait lasts ``message_timeout``, nothing is re-sent); > 0: waits follow the
    per-(neighbour, kind) RFC 6298 estimate, clamped to [min_timeout, message_timeout]."""
    initial_timeout: float = 0.25
    """Retransmitting: the wait (s) before the first answer time of a (neighbour, kind) is known."""
    min_timeout: float = 0.03
    """Retransmitting: lower clamp (s) of every estimated wait."""

    def __post_init__(self) -> None:
        if not self.beta > 0:
            raise ValueError(f"ADMMConfig.beta must be > 0, got {self.beta}")
        if self.budget < 0:
            raise ValueError(f"ADMMConfig.budget must be >= 0, got {self.budget}")
        if self.schedule not in ("async", "seeded"):
            raise ValueError(
                f"ADMMConfig.schedule must be 'async' or 'seeded', not {self.schedule!r}"
            )
        if self.residual_tolerance < 0:
            raise ValueError("ADMMConfig.residual_tolerance must be >= 0 (0 turns it off)")
        for name in ("message_timeout", "phase_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"ADMMConfig.{name} must be > 0 seconds")
        if self.max_failures < 1:
            raise ValueError("ADMMConfig.max_failures must be >= 1")
        if self.backoff < 0:
            raise ValueError("ADMMConfig.backoff must be >= 0 seconds")
        if self.max_lead < 0:
            raise ValueError("ADMMConfig.max_lead must be >= 0")
        if self.retransmissions < 0:
            raise ValueError(f"ADMMConfig.retransmissions must be >= 0, got {self.retransmissions}")
        self.retransmit_policy()  # checks the timeout bounds

    def retransmit_policy(self) -> RetransmitPolicy:
        """Bounds the phase gives the peers' estimators (fixed waits when not retransmitting)."""
        if self.retransmissions == 0:
            fixed = self.message_timeout
            return RetransmitPolicy(fixed, fixed, fixed, 0, 0)
        return RetransmitPolicy(
            initial_timeout=min(self.initial_timeout, self.message_timeout),
            min_timeout=min(self.min_timeout, self.message_timeout),
            max_timeout=self.message_timeout,
            max_retransmissions=self.retransmissions,
        )


# -- the closed-form z, y step ----------------------------------------------------------------


@dataclass(frozen=True)
class ConsensusStep:
    """Result of the z, y step at one endpoint, with the edge's residuals (RMS over N×M)."""

    estimate: np.ndarray
    """New z_e^q."""
    dual: np.ndarray
    """New y_e^q = ν_e."""
    disagreement_rms: float
    """RMS of ℓ^i − ℓ^j, what consensus drives to zero."""
    primal_rms: float
    """RMS of C_e^q ℓ^q − z_e^q over both endpoints q (constraint of eq. 10)."""
    dual_rms: float
    """RMS of β (z_e^{q,new} − z_e^{q,old})."""


def consensus_update(
    sign: int,
    estimate: np.ndarray,
    dual: np.ndarray,
    partner_dual: np.ndarray,
    log_ratio: np.ndarray,
    partner_log_ratio: np.ndarray,
    beta: float,
) -> ConsensusStep:
    """The z, y step of eq. (22) (proof: eq. 53-62) at the endpoint with sign C_e^q = ``sign``.

    ν = ½(y_e^i + y_e^j) + (β/2)(ℓ^i − ℓ^j); z_e^q = (y_e^q − ν)/β + C_e^q ℓ^q; y_e^q = ν.
    Everything is computed in the lower endpoint i's frame and z_e^j is stored as −z_e^i, which
    equals (y_e^j − ν)/β − ℓ^j exactly in real arithmetic; so both ends, given the same inputs,
    get bitwise identical y, opposite z (eq. 9b holds exactly) and identical residuals.
    """
    if sign not in (1, -1):
        raise ValueError(f"sign C_e^q must be +1 or -1, got {sign}")
    own = (np.asarray(dual, np.float32), np.asarray(log_ratio, np.float32))
    other = (np.asarray(partner_dual, np.float32), np.asarray(partner_log_ratio, np.float32))
    (dual_low, ratio_low), (dual_high, ratio_high) = (own, other) if sign == 1 else (other, own)
    beta32 = np.float32(beta)
    nu = np.float32(0.5) * (dual_low + dual_high) + (beta32 / np.float32(2)) * (
        ratio_low - ratio_high
    )
    estimate_low = (dual_low - nu) / beta32 + ratio_low
    new_estimate = estimate_low if sign == 1 else -estimate_low
    primal = np.concatenate(
        [(ratio_low - estimate_low).ravel(), (estimate_low - ratio_high).ravel()]
    )
    return ConsensusStep(
        estimate=new_estimate,
        dual=nu,
        disagreement_rms=_rms(ratio_low - ratio_high),
        primal_rms=_rms(primal),
        dual_rms=float(beta) * _rms(new_estimate - np.asarray(estimate, np.float32)),
    )


def _rms(values: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(values, dtype=np.float64)))) if values.size else 0.0


# -- per-edge state ---------------------------------------------------------------------------


@dataclass(frozen=True)
class EdgeSnapshot:
    """(z, y, version) of an edge state before its last committed activation."""

    estimate: np.ndarray
    dual: np.ndarray
    version: int


@dataclass
class EdgeState:
    """What endpoint ``agent`` keeps for one of its own edges: z_e^q, y_e^q and their version."""

    edge: Edge
    agent: int
    estimate: np.ndarray
    """z_e^q, float32 of the log-ratio shape."""
    dual: np.ndarray
    """y_e^q, float32 of the log-ratio shape."""
    version: int = 0
    """Committed activations of this edge in this phase."""
    snapshot: EdgeSnapshot | None = None
    """State before the last commit, for the re-synchronisation rule."""

    @classmethod
    def fresh(
        cls, edge: Edge, agent: int, shape: tuple[int, ...], initial_dual: float = 0.0
    ) -> EdgeState:
        """Start-of-phase state: z = 0, y = ``initial_dual``."""
        if agent not in edge:
            raise ValueError(f"agent {agent} is not an endpoint of edge {edge}")
        return cls(
            edge=edge,
            agent=agent,
            estimate=np.zeros(shape, np.float32),
            dual=np.full(shape, initial_dual, np.float32),
        )

    @property
    def sign(self) -> int:
        """C_e^q: +1 at the lower endpoint, −1 at the higher one."""
        return 1 if self.agent == self.edge[0] else -1

    @property
    def partner(self) -> int:
        """The other endpoint."""
        return self.edge[1] if self.agent == self.edge[0] else self.edge[0]

    def commit(self, estimate: np.ndarray, dual: np.ndarray) -> None:
        """Apply a completed activation, keeping the previous state as the snapshot."""
        self.snapshot = EdgeSnapshot(self.estimate, self.dual, self.version)
        self.estimate, self.dual = estimate, dual
        self.version += 1

    def resynchronise(self, partner_version: int) -> bool:
        """Apply the re-synchronisation rule against the partner's version.

        If we are one committed activation ahead, roll back to the snapshot (the partner's state).
        Returns True when both ends are now at the same version, False when the partner is ahead
        (it rolls back on its side) or the states cannot be reconciled.
        """
        snapshot = self.snapshot
        if self.version > partner_version and snapshot and snapshot.version == partner_version:
            self.estimate, self.dual, self.version = (
                snapshot.estimate,
                snapshot.dual,
                snapshot.version,
            )
            self.snapshot = None
        return self.version == partner_version


# -- schedules --------------------------------------------------------------------------------


def per_edge_budget(budget: int, n_edges: int) -> int:
    """Committed activations per edge in async mode: ⌈budget / |E|⌉ (seeded mean, rounded up)."""
    if n_edges <= 0 or budget <= 0:
        return 0
    return math.ceil(budget / n_edges)


def edge_sequence(edges: Sequence[Edge], budget: int, seed: int, iteration: int) -> list[Edge]:
    """Algorithm 1's sequence of ``budget`` uniformly random edges, the same at every agent."""
    if not edges or budget <= 0:
        return []
    generator = np.random.Generator(np.random.PCG64([seed, iteration]))
    picks = generator.integers(0, len(edges), size=budget)
    return [edges[int(k)] for k in picks]


def normalise_edges(edges: Iterable[Sequence[int]]) -> list[Edge]:
    """Sorted list of distinct (i, j) pairs with i < j; raises ValueError on self-loops."""
    result: set[Edge] = set()
    for pair in edges:
        i, j = (int(v) for v in pair)
        if i == j:
            raise ValueError(f"edge ({i}, {j}) is a self-loop; the topology must have none")
        result.add((min(i, j), max(i, j)))
    return sorted(result)


# -- one agent's phase ------------------------------------------------------------------------


@dataclass
class _Activation:
    """Bookkeeping of one activation at this agent."""

    edge: Edge
    activation: int
    role: str
    started: float = field(default_factory=time.perf_counter)
    compute_seconds: float = 0.0
    bytes_sent: int = 0
    proposed: bool = False
    version: int = 0
    solver_stats: dict[str, float] = field(default_factory=dict)
    retransmissions: int = 0
    timeout_seconds: float = math.nan
    """The estimated wait for the partner's exchange when ours was first sent."""
    recomputed: bool = False
    """The θ step was redone after a roll-back (the partner had missed our last commit)."""
    exchange: Pending | None = None
    """Our exchange message of this activation (retransmitting: re-sent on closing the edge)."""


class ADMMPhase:
    """One agent's ADMM phase of one training iteration; :meth:`run` executes it once.

    ``states`` holds this agent's :class:`EdgeState` per own edge (inspectable after the run).
    """

    def __init__(
        self,
        peers: Peers,
        solver: LocalSolver,
        edges: Iterable[Sequence[int]],
        shape: tuple[int, ...],
        config: ADMMConfig,
        fingerprint: str,
        record: Record | None = None,
    ) -> None:
        self.peers = peers
        self.solver = solver
        self.config = config
        self.fingerprint = fingerprint
        self.shape = tuple(shape)
        self.agent = peers.agent_id
        self.iteration = peers.iteration
        self.edges = normalise_edges(edges)
        self._record_sink = record
        own = [edge for edge in self.edges if self.agent in edge]
        self.states: dict[Edge, EdgeState] = {
            edge: EdgeState.fresh(edge, self.agent, self.shape, config.initial_dual) for edge in own
        }
        self._edge_of = {state.partner: edge for edge, state in self.states.items()}
        strangers = sorted(set(self._edge_of) - set(peers.neighbours))
        if strangers:
            raise ValueError(
                f"agent {self.agent}: edges to {strangers} but its neighbours are "
                f"{list(peers.neighbours)}; the edge list and the transport's topology disagree"
            )
        self.closed: dict[Edge, str] = {}
        """Why each closed edge was closed (budget, converged, partner_done, failures...)."""
        self._failures: Counter[Edge] = Counter()
        self._heard: set[int] = set()
        self._last_step: dict[Edge, ConsensusStep] = {}
        self._counts: Counter[str] = Counter()
        self._sums: Counter[str] = Counter()
        self._rng = np.random.default_rng([config.seed, self.iteration, self.agent])
        self._deadline = 0.0
        # async
        self._busy_until: dict[Edge, float] = {}
        self._hold_until = 0.0
        self._turned_away = False
        self._started = 0.0
        self._last_heard: dict[int, float] = {}
        self._next_probe: dict[int, float] = {}
        self._probes: Counter[int] = Counter()
        self._next_activation = 0
        self._next_liveness_check = 0.0
        # seeded
        self._buffer: dict[tuple[int, int], PeerMessage] = {}
        self._latest_from: dict[int, int] = {}
        self._position = -1
        # retransmission (runtime/reliable.py through the peers)
        self.policy = config.retransmit_policy()
        peers.use_policy(self.policy)
        self._reliable = config.retransmissions > 0
        self._settled: set[int] = set()
        self._last_exchange: dict[Edge, Pending | None] = {}
        """Partners whose DONE arrived (or whose link is lost): nothing more to answer them."""
        self._awaiting: Edge | None = None
        """The edge whose partner exchange is awaited now (its DONE is deferred until settled)."""
        self._deferred_done: dict[Edge, str] = {}

    @property
    def degree(self) -> int:
        """|E(q)|."""
        return len(self.states)

    def run(self) -> dict[str, float]:
        """Run the phase until every own edge is closed; return summary stats."""
        started = self._started = time.monotonic()
        self._deadline = started + self.config.phase_timeout
        self._close_lost_partners()
        if self.states:
            if self.config.schedule == "seeded":
                self._run_seeded()
            else:
                self._run_async()
        for edge in self.states:
            if edge not in self.closed:
                reason = "phase_timeout" if self._past_deadline() else "sequence_end"
                self._close(edge, reason, notify=self._reliable or reason == "phase_timeout")
        if self._reliable:
            self._linger()
        return self._summary(time.monotonic() - started)

    def _linger(self) -> None:
        """Stay, answering, until every partner's DONE came or for the whole retransmission
        schedule of an exchange (``RetransmitPolicy.give_up_after`` of the longest exchange
        timeout): a partner that missed our last exchange re-sends its own within that time and
        gets our stored answer, so it commits too (and only then sends its DONE). Every exchange
        timeout our DONE goes again to the partners not heard DONE from (a partner that has
        closed its side answers it with DONE ``reply``), so a lost DONE costs one timeout, not
        the whole linger."""
        waiting = {s.partner for s in self.states.values()} - self._settled
        if not waiting:
            return
        longest = max(self.peers.timeout_for(p, EXCHANGE) for p in waiting)
        limit = min(self._deadline, time.monotonic() + self.policy.give_up_after(longest))
        next_done = time.monotonic() + longest
        while (remaining := limit - time.monotonic()) > 0:
            unsettled = waiting - self._settled - self.peers.down()
            if not unsettled:
                return
            if time.monotonic() >= next_done:  # our DONE may be lost: the partner answers it
                for partner in sorted(unsettled):
                    self._send_done(partner)
                next_done = time.monotonic() + longest
            wait = min(remaining, next_done - time.monotonic(), LIVENESS_POLL_SECONDS)
            message = self._receive(max(POLL_SECONDS, wait))
            if message is not None:
                self._handle_idle(message)
        self._counts["linger_timeouts"] += 1

    # -- seeded schedule ------------------------------------------------------------------------
    def _run_seeded(self) -> None:
        sequence = edge_sequence(self.edges, self.config.budget, self.config.seed, self.iteration)
        for index, edge in enumerate(sequence):
            if self._past_deadline() or len(self.closed) == len(self.states):
                return
            self._close_lost_partners()
            if edge not in self.states or edge in self.closed:
                continue
            self._position = index
            act = _Activation(edge, index, "seeded", version=self.states[edge].version)
            self._activate(act)

    # -- async schedule -------------------------------------------------------------------------
    def _run_async(self) -> None:
        for partner in self._edge_of:
            for _ in range(CONTROL_COPIES if self._reliable else 1):
                self._send(partner, READY, reply=0)
        while len(self.closed) < len(self.states) and not self._past_deadline():
            if time.monotonic() >= self._next_liveness_check:  # this loop spins every 0.1 ms
                self._close_lost_partners()
            self._probe_silent()
            message = self._receive(POLL_SECONDS)
            if message is not None:
                self._handle_idle(message)
                continue
            edge = self._pick_edge()
            if edge is not None:
                self._initiate(edge)
                continue
            message = self._receive(self._idle_wait())
            if message is not None:
                self._handle_idle(message)

    def _pick_edge(self) -> Edge | None:
        now = time.monotonic()
        if now < self._hold_until:
            return None
        candidates = [
            edge
            for edge, state in self.states.items()
            if state.sign == 1
            and edge not in self.closed
            and state.partner in self._heard
            and self._busy_until.get(edge, 0.0) <= now
            and self._within_lead(edge)
        ]
        if not candidates:
            return None
        return candidates[int(self._rng.integers(len(candidates)))]

    def _within_lead(self, edge: Edge) -> bool:
        """Even progress: ``edge`` is at most ``max_lead`` commits ahead of the least-activated
        open edge whose partner is in the phase (that edge, graph-wide, always qualifies)."""
        counts = [
            state.version
            for other, state in self.states.items()
            if other not in self.closed and state.partner in self._heard
        ]
        return not counts or self.states[edge].version <= min(counts) + self.config.max_lead

    def _idle_wait(self) -> float:
        now = time.monotonic()
        wakeups = [self._deadline, self._hold_until, now + IDLE_WAIT_SECONDS]
        wakeups += list(self._busy_until.values()) + list(self._next_probe.values())
        return max(POLL_SECONDS, min(t for t in wakeups if t > now) - now)

    def _probe_silent(self) -> None:
        """Send READY to partners of open edges silent for message_timeout; give up after
        ``max_failures`` unanswered probes (a partner that closed the edge answers DONE)."""
        now = time.monotonic()
        for partner, edge in self._edge_of.items():
            if edge in self.closed or now < self._next_probe.get(partner, 0.0):
                continue
            if now - self._last_heard.get(partner, self._started) < self._probe_wait(partner):
                continue
            if self._probes[partner] >= self.config.max_failures:
                self._close(edge, "partner_silent")
                continue
            self._probes[partner] += 1
            self._next_probe[partner] = now + self._probe_wait(partner)
            self._send(partner, READY, reply=0)

    def _probe_wait(self, partner: int) -> float:
        """Silence before the next READY probe: the READY timeout, doubled per unanswered
        probe, at most ``message_timeout`` (always ``message_timeout`` when not retransmitting)."""
        wait = self.peers.timeout_for(partner, READY) * 2 ** self._probes[partner]
        return min(self.policy.max_timeout, wait)

    def _handle_idle(self, message: PeerMessage) -> None:
        if message.kind == EXCHANGE and self._reliable:
            self._refuse_stale_exchange(message)
            return
        if message.kind != PROPOSE:
            self._counts["stale_messages"] += 1
            return
        edge = self._edge_of[message.sender]
        activation = _int_field(message.body, "activation")
        partner_version = _int_field(message.body, "version")
        if activation is None or partner_version is None or self.states[edge].sign != -1:
            self._counts["bad_messages"] += 1
            return
        if edge in self.closed:
            self._send(message.sender, DONE)
            return
        act = _Activation(edge, activation, "responder", version=self.states[edge].version)
        if message.body.get("fingerprint") != self.fingerprint:
            act.bytes_sent += self._answer(message, BUSY, activation=activation)
            self._abort(act, "fingerprint_mismatch")
        elif not self._within_lead(edge):
            self._answer(message, BUSY, activation=activation)
        else:
            self._respond(act, message, partner_version)

    def _initiate(self, edge: Edge) -> None:
        state = self.states[edge]
        self._next_activation += 1
        act = _Activation(edge, self._next_activation, "initiator", version=state.version)
        pending = self._send_reliable(
            act, PROPOSE, (act.activation,), (), activation=act.activation, version=state.version
        )
        answer, reason = self._await(act, pending, frozenset({ACCEPT, BUSY}))
        if answer is None:
            self._abort(act, reason)
        elif answer.body.get("fingerprint") != self.fingerprint:
            self._abort(act, "fingerprint_mismatch")
        elif answer.kind == BUSY:
            self._counts["busy_answers"] += 1
            pause = float(self._rng.uniform(0.0, self.config.backoff))
            self._busy_until[edge] = time.monotonic() + pause
        else:
            partner_version = _int_field(answer.body, "version")
            if partner_version is None or not self._resynchronise(state, partner_version):
                self._abort(act, "version_mismatch")
            else:
                act.version = state.version
                self._activate(act)
        self._after_activation()

    def _respond(self, act: _Activation, request: PeerMessage, partner_version: int) -> None:
        state = self.states[act.edge]
        self._resynchronise(state, partner_version)
        act.version = state.version
        act.bytes_sent += self._answer(
            request, ACCEPT, activation=act.activation, version=state.version
        )
        self._activate(act)
        self._after_activation()

    def _after_activation(self) -> None:
        """Stay free for one back-off interval if we turned a proposer away (fairness)."""
        if self._turned_away:
            self._hold_until = time.monotonic() + self.config.backoff
            self._turned_away = False

    # -- one activation -------------------------------------------------------------------------
    def _theta_step(self, act: _Activation) -> np.ndarray:
        """Eq. (22) θ step through the solver, from the current (z, y) of all own edges."""
        dual_sum = np.zeros(self.shape, np.float32)
        estimate_sum = np.zeros(self.shape, np.float32)
        for state in self.states.values():
            dual_sum += state.sign * state.dual
            estimate_sum += state.sign * state.estimate
        started = time.perf_counter()
        proposal = self.solver.propose(dual_sum, estimate_sum, self.degree)
        act.compute_seconds += time.perf_counter() - started
        act.proposed = True
        act.solver_stats = _solver_stats(self.solver)
        log_ratio = np.asarray(proposal, dtype=np.float32)
        if log_ratio.shape != self.shape:
            raise ValueError(
                f"agent {self.agent}: solver proposed a log ratio of shape {log_ratio.shape}, "
                f"expected {self.shape}"
            )
        if not np.isfinite(log_ratio).all():
            raise ValueError(f"agent {self.agent}: solver proposed a non-finite log ratio")
        return log_ratio

    def _activate(self, act: _Activation) -> None:
        """θ step, exchange and z, y step of one activation whose handshake (if any) is done.

        Retransmitting, a version difference in the partner's exchange (one end committed the
        edge's previous activation alone) costs no activation: the end that is ahead rolls back
        (the re-synchronisation rule), redoes its θ step from the partner's state and sends its
        exchange again; the end that is behind waits for that corrected exchange.
        """
        log_ratio = self._theta_step(act)
        pending = self._send_exchange(act, log_ratio)
        while True:
            message, reason = self._await(act, pending, frozenset({EXCHANGE}))
            if message is None:
                self.peers.forget(pending.neighbour, pending.key)
                self._abort(act, reason)
                return
            if message.body.get("fingerprint") != self.fingerprint:
                self._abort(act, "fingerprint_mismatch")
                return
            state = self.states[act.edge]
            partner_version = _int_field(message.body, "version")
            if partner_version == state.version:
                self._finish(act, log_ratio, message)
                return
            if partner_version is None or not self._reliable:
                if partner_version is not None:
                    self._resynchronise(state, partner_version)
                self._abort(act, "version_mismatch")
                return
            if partner_version > state.version:
                continue  # the partner rolls back and sends its exchange again
            if not self._resynchronise(state, partner_version):
                self._abort(act, "version_mismatch")
                return
            act.version = state.version
            act.recomputed = True
            log_ratio = self._theta_step(act)
            self._send_exchange(act, log_ratio)
            self._finish(act, log_ratio, message)
            return

    def _send_exchange(self, act: _Activation, log_ratio: np.ndarray) -> Pending:
        """Our ℓ^q and y_e^q, also stored as the answer to the partner's exchange."""
        state = self.states[act.edge]
        pending = self._send_reliable(
            act, EXCHANGE, (act.activation, state.version), (EXCHANGE,),
            activation=act.activation, version=state.version, log_ratio=log_ratio,
            dual=state.dual,
        )
        act.timeout_seconds = pending.timer.rto
        act.exchange = pending
        return pending

    def _finish(self, act: _Activation, log_ratio: np.ndarray, message: PeerMessage) -> None:
        """z, y step of eq. (22) on the partner's exchange of the same version."""
        state = self.states[act.edge]
        try:
            partner_ratio = require_array(message.body, "log_ratio", shape=self.shape, dtype="<f4")
            partner_dual = require_array(message.body, "dual", shape=self.shape, dtype="<f4")
        except CodecError as error:
            self._abort(act, f"bad_message:{error.reason}")
            return
        step = consensus_update(
            state.sign,
            state.estimate,
            state.dual,
            partner_dual,
            log_ratio,
            partner_ratio,
            self.config.beta,
        )
        state.commit(step.estimate, step.dual)
        self.solver.accept()
        self._failures[act.edge] = 0
        self._last_step[act.edge] = step
        self._last_exchange[act.edge] = act.exchange
        self._emit(act, "committed", "", step)
        self._close_if_finished(act.edge, step)

    def _abort(self, act: _Activation, reason: str) -> None:
        if act.proposed:
            self.solver.reject()
        self._failures[act.edge] += 1
        self._emit(act, "aborted", reason, None)
        if act.edge not in self.closed and self._failures[act.edge] >= self.config.max_failures:
            self._close(act.edge, "failures")

    def _close_if_finished(self, edge: Edge, step: ConsensusStep) -> None:
        if edge in self.closed:
            return
        tolerance = self.config.residual_tolerance
        residuals = (step.disagreement_rms, step.primal_rms, step.dual_rms)
        if tolerance > 0 and max(residuals) <= tolerance:
            self._close(edge, "converged")
        elif self.config.schedule == "async" and self.states[edge].version >= per_edge_budget(
            self.config.budget, len(self.edges)
        ):
            self._close(edge, "budget")

    def _resynchronise(self, state: EdgeState, partner_version: int) -> bool:
        before = state.version
        agreed = state.resynchronise(partner_version)
        if state.version != before:
            self._counts["resynchronisations"] += 1
            logger.info(
                "agent %d: edge %s rolled back from version %d to %d",
                self.agent,
                state.edge,
                before,
                state.version,
            )
        return agreed

    # -- messages -------------------------------------------------------------------------------
    def _send(self, partner: int, kind: str, **fields: Any) -> int:
        body = {**fields, "fingerprint": self.fingerprint}
        result: object = self.peers.send(partner, kind, body)
        sent = result if isinstance(result, int) else 0
        self._sums["bytes_sent"] += sent
        return sent

    def _send_reliable(
        self, act: _Activation, kind: str, key: tuple[int, ...], answers: tuple[str, ...],
        **fields: Any,
    ) -> Pending:
        body = {**fields, "fingerprint": self.fingerprint}
        partner = self.states[act.edge].partner
        if self._reliable:
            pending = self.peers.send_reliable(partner, kind, body, key, answers)
        else:  # the fixed protocol: plain messages, one wait of message_timeout
            pending = Pending(partner, kind, body, key, RetransmissionTimer(self.policy))
            sent: object = self.peers.send(partner, kind, body)
            pending.bytes_sent = sent if isinstance(sent, int) else 0
        self._sums["bytes_sent"] += pending.bytes_sent
        act.bytes_sent += pending.bytes_sent
        return pending

    def _resend(self, act: _Activation, pending: Pending) -> None:
        sent = self.peers.resend(pending)
        self._sums["bytes_sent"] += sent
        act.bytes_sent += sent
        act.retransmissions += 1

    def _answer(self, request: PeerMessage, kind: str, **fields: Any) -> int:
        """An answer the peers re-send from their store if ``request`` comes again."""
        if not self._reliable:
            return self._send(request.sender, kind, **fields)
        sent = self.peers.answer(request, kind, {**fields, "fingerprint": self.fingerprint})
        self._sums["bytes_sent"] += sent
        return sent

    def _refuse_stale_exchange(self, message: PeerMessage) -> None:
        """An exchange of an activation this agent is not in (it gave that one up, or never got
        its handshake): answer BUSY, so the partner aborts it too instead of retransmitting."""
        self._counts["stale_messages"] += 1
        activation = _int_field(message.body, "activation")
        if activation is not None and not message.body.get("echo"):
            self._answer(message, BUSY, activation=activation)

    def _receive(self, timeout: float) -> PeerMessage | None:
        """Next ADMM message that needs the caller; READY and DONE are handled here."""
        message = self.peers.receive(timeout, MESSAGE_KINDS)
        if message is None:
            return None
        edge = self._edge_of.get(message.sender)
        if edge is None:
            self._counts["stale_messages"] += 1
            return None
        self._heard.add(message.sender)
        self._last_heard[message.sender] = time.monotonic()
        self._probes[message.sender] = 0
        if message.body.get("fingerprint") != self.fingerprint:
            self._counts["fingerprint_mismatch_messages"] += 1
        if message.kind == READY:
            if edge in self.closed:
                self._send(message.sender, DONE)
            elif not message.body.get("reply"):
                self._send(message.sender, READY, reply=1)
            return None
        if message.kind == DONE:
            self._settled.add(message.sender)
            if edge not in self.closed:
                self._close(edge, "partner_done", notify=self._reliable)
            elif self._reliable and not message.body.get("reply"):
                self._send_done(message.sender, reply=1)  # ours may have been lost
            return None
        return message

    def _await(
        self, act: _Activation, pending: Pending, kinds: frozenset[str]
    ) -> tuple[PeerMessage | None, str]:
        """Wait for the partner's message of ``kinds`` about ``act``, re-sending ``pending`` each
        time its estimated timeout passes, at most ``retransmissions`` times.

        Meanwhile PROPOSEs are answered BUSY and (seeded) other exchanges are kept for later.
        Returns the message and "", or None and why: timeout, phase_timeout, partner_done,
        peer_down, partner_aborted (it answered BUSY to our exchange), partner_ahead (seeded: a
        later exchange of the partner came first, so this one was lost; retransmitting, we first
        re-send once, for the partner's stored answer).
        """
        partner = pending.neighbour
        activation = act.activation
        edge = self._edge_of[partner]
        kept = self._buffer.pop((partner, activation), None)
        if kept is not None and kept.kind in kinds:
            pending.answered()
            return kept, ""
        nudged = done_nudged = False
        self._awaiting = edge if EXCHANGE in kinds else None
        try:
            return self._await_loop(act, pending, kinds, nudged, done_nudged)
        finally:
            self._awaiting = None

    def _await_loop(
        self, act: _Activation, pending: Pending, kinds: frozenset[str], nudged: bool,
        done_nudged: bool,
    ) -> tuple[PeerMessage | None, str]:
        partner = pending.neighbour
        activation = act.activation
        edge = self._edge_of[partner]
        while True:
            self._close_lost_partners()
            if edge in self.closed and not self._may_still_commit(edge, pending, kinds):
                return None, "peer_down" if self.closed[edge] == "peer_down" else "partner_done"
            if edge in self.closed and not done_nudged:
                done_nudged = True
                pending.due = time.monotonic()  # re-send now, for the partner's stored answer
            ahead = self._latest_from.get(partner, -1) > activation
            exhausted = pending.attempts >= self.policy.max_retransmissions
            if ahead and not nudged:
                if exhausted:
                    return None, "partner_ahead"
                nudged = True
                pending.due = time.monotonic()  # re-send now, for the partner's stored answer
            if self._past_deadline():
                return None, "phase_timeout"
            if pending.overdue():
                if not exhausted:
                    self._resend(act, pending)
                elif ahead:
                    return None, "partner_ahead"
                elif edge in self.closed:
                    return None, "partner_done"
                elif self._reliable and self.peers.heard_since(partner, pending.alive_since):
                    self.peers.extend(pending)  # alive and behind (seeded: on an earlier one)
                    act.retransmissions += 1
                else:
                    return None, "timeout"
            wait = min(pending.remaining(), self._deadline - time.monotonic())
            message = self._receive(max(POLL_SECONDS, min(wait, LIVENESS_POLL_SECONDS)))
            if message is None:
                continue
            if message.sender == partner and _int_field(message.body, "activation") == activation:
                if message.kind in kinds:
                    pending.answered()
                    return message, ""
                if message.kind == BUSY and EXCHANGE in kinds:
                    return None, "partner_aborted"
                if message.kind == EXCHANGE and ACCEPT in kinds:
                    # its ACCEPT was lost: the partner's exchange proves it accepted; keep it
                    self._buffer[(partner, activation)] = message
                    pending.answered()
                    return message, ""
            self._handle_engaged(message)

    def _may_still_commit(self, edge: Edge, pending: Pending, kinds: frozenset[str]) -> bool:
        """The partner closed the edge (DONE) while we await its exchange: it may have
        committed this activation and closed on its budget, its exchange to us lost. Retransmit
        ours (its linger answers from the store) until the retransmissions are used up, rather
        than abort a commit the partner made (a split)."""
        return (self._reliable and self.closed[edge] == "partner_done" and EXCHANGE in kinds
                and pending.attempts < self.policy.max_retransmissions)

    def _handle_engaged(self, message: PeerMessage) -> None:
        """A message that is not the one awaited, while this agent is engaged."""
        activation = _int_field(message.body, "activation")
        if message.kind == PROPOSE and activation is not None:
            self._answer(message, BUSY, activation=activation)
            self._turned_away = True
        elif (
            self.config.schedule == "seeded"
            and message.kind == EXCHANGE
            and activation is not None
            and activation > self._position
        ):
            self._buffer[(message.sender, activation)] = message
            latest = self._latest_from.get(message.sender, -1)
            self._latest_from[message.sender] = max(latest, activation)
        elif message.kind == EXCHANGE and self._reliable:
            self._refuse_stale_exchange(message)
        else:
            self._counts["stale_messages"] += 1

    # -- bookkeeping ----------------------------------------------------------------------------
    def _close_lost_partners(self) -> None:
        """Close every open edge whose partner the transport reports lost (a crashed neighbour):
        nothing more can be exchanged on it in this phase. DONE still goes out: should the
        partner be alive after all (a restart the views disagree on), it closes its side too
        instead of waiting; a dead partner's restarted process drops it as stale."""
        self._next_liveness_check = time.monotonic() + LIVENESS_POLL_SECONDS
        for partner in self.peers.down():
            edge = self._edge_of.get(partner)
            if edge is not None and edge not in self.closed:
                self._counts["peers_down"] += 1
                logger.warning("agent %d: neighbour %d is down; edge %s closed for this phase",
                               self.agent, partner, edge)
                self._close(edge, "peer_down")

    def _close(self, edge: Edge, reason: str, notify: bool = True) -> None:
        """Close ``edge``; with ``notify`` tell the partner (DONE). Retransmitting, our exchange
        of the edge's last committed activation goes out once more first: a partner that missed
        it gets it before the DONE (same link, in order) and commits too."""
        self.closed[edge] = reason
        if not notify:
            return
        if edge == self._awaiting:  # tell the partner once this activation is settled
            self._deferred_done[edge] = reason
            return
        self._notify_done(edge, reason)

    def _notify_done(self, edge: Edge, reason: str) -> None:
        last = self._last_exchange.pop(edge, None)
        if self._reliable and last is not None:
            self._sums["bytes_sent"] += self.peers.echo(last)
        self._send_done(self.states[edge].partner, reply=int(reason == "partner_done"))

    def _send_done(self, partner: int, reply: int = 0) -> None:
        """DONE on the edge with ``partner`` (``reply``: it answers the partner's DONE, so it
        is not answered), in :data:`CONTROL_COPIES` copies when retransmitting."""
        for _ in range(CONTROL_COPIES if self._reliable else 1):
            self._send(partner, DONE, reply=reply)

    def _past_deadline(self) -> bool:
        return time.monotonic() >= self._deadline

    def _emit(self, act: _Activation, status: str, reason: str, step: ConsensusStep | None) -> None:
        deferred = self._deferred_done.pop(act.edge, None)
        if deferred is not None:  # the partner's DONE came while we awaited its exchange
            self._notify_done(act.edge, deferred)
        wall = time.perf_counter() - act.started
        self._counts[status] += 1
        if reason == "fingerprint_mismatch":
            self._counts["fingerprint_mismatches"] += 1
        self._sums["compute_seconds"] += act.compute_seconds
        self._sums["retransmissions"] += act.retransmissions
        self._sums["recomputed"] += act.recomputed
        self._sums["communication_seconds"] += wall - act.compute_seconds
        if step is not None:
            self._sums["disagreement_rms"] += step.disagreement_rms
            self._sums["primal_rms"] += step.primal_rms
            self._sums["dual_rms"] += step.dual_rms
        nan = float("nan")
        entry: dict[str, Any] = {
            "iteration": self.iteration,
            "agent": self.agent,
            "activation": act.activation,
            "edge": list(act.edge),
            "role": act.role,
            "status": status,
            "reason": reason,
            "version": act.version,
            "disagreement_rms": step.disagreement_rms if step else nan,
            "primal_rms": step.primal_rms if step else nan,
            "dual_rms": step.dual_rms if step else nan,
            "compute_seconds": act.compute_seconds,
            "communication_seconds": wall - act.compute_seconds,
            "bytes_sent": act.bytes_sent,
            "recomputed": act.recomputed,
        }
        entry.update(act.solver_stats)
        if self._record_sink is not None:
            self._record_sink(entry)

    def _summary(self, seconds: float) -> dict[str, float]:
        committed = self._counts["committed"]
        nan = float("nan")
        final = [step.disagreement_rms for step in self._last_step.values()]
        stats = {
            "admm/activations": float(committed),
            "admm/aborted": float(self._counts["aborted"]),
            "admm/fingerprint_mismatches": float(self._counts["fingerprint_mismatches"]),
            "admm/resynchronisations": float(self._counts["resynchronisations"]),
            "admm/busy_answers": float(self._counts["busy_answers"]),
            "admm/stale_messages": float(self._counts["stale_messages"]),
            "admm/edges_converged": float(sum(r == "converged" for r in self.closed.values())),
            "admm/final_disagreement": float(np.mean(final)) if final else nan,
            "admm/phase_seconds": seconds,
            "admm/compute_seconds": self._sums["compute_seconds"],
            "admm/communication_seconds": self._sums["communication_seconds"],
            "admm/bytes_sent": float(self._sums["bytes_sent"]),
            "admm/retransmissions": float(self._sums["retransmissions"]),
            "admm/recomputed": float(self._sums["recomputed"]),
            "admm/linger_timeouts": float(self._counts["linger_timeouts"]),
        }
        for name in ("disagreement", "primal", "dual"):
            total = self._sums[f"{name}_rms"]
            stats[f"admm/{name}_residual"] = total / committed if committed else nan
        return stats


def run_admm_phase(
    peers: Peers,
    solver: LocalSolver,
    edges: Iterable[Sequence[int]],
    shape: tuple[int, ...],
    config: ADMMConfig,
    fingerprint: str,
    record: Record | None = None,
) -> dict[str, float]:
    """Run one agent's ADMM phase of one training iteration (Algorithm 1's inner loop, eq. 22).

    ``edges`` are all edges of the graph (every agent must pass the same list); ``shape`` is that
    of ℓ^q (N×M); ``record`` receives one dict per committed or aborted activation. Returns
    summary stats under ``admm/`` keys. See the module docstring for the schedules and rules.
    """
    return ADMMPhase(peers, solver, edges, shape, config, fingerprint, record).run()


def _int_field(body: Mapping[str, Any], key: str) -> int | None:
    value = body.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _solver_stats(solver: LocalSolver) -> dict[str, float]:
    last_stats = getattr(solver, "last_stats", None)
    if last_stats is None:
        return {}
    return {f"solver/{key}": float(value) for key, value in last_stats().items()}
