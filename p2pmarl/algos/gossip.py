"""Gossip averaging: every agent ends with (an estimate of) the network mean of a float vector.

A reusable peer primitive over the :class:`~p2pmarl.algos.base.Peers` protocol, for any variant
that needs a network-wide average or sum without anyone in the middle (DiMA-PG's Σ_n ∇θ L_n,
FDMARL's consensus critic, parameter re-synchronisation). Two methods:

``metropolis`` (synchronous rounds; Xiao, Boyd & Kim 2005)
    z_i ← z_i + Σ_j w_ij (z_j − z_i) with Metropolis–Hastings weights w_ij = 1/(1 + max(d_i, d_j))
    for every graph neighbour j (d: degree). W is symmetric and doubly stochastic, so the network
    mean is preserved exactly every round and z → mean geometrically (rate: the second largest
    eigenvalue modulus of W). A neighbour's degree travels in its messages: no topology needed.
    A lost message is retransmitted (below); one still missing at ``round_timeout`` is replaced
    by the receiver's own value (that round's weight stays at home), which keeps the round
    bounded but shifts the mean slightly.

``push_sum`` (asynchronous / lossy links; Kempe et al. 2003, with the running sums of
Hadjicostis, Domínguez-García & Charalambous 2016)
    Each agent holds a mass (x_i, y_i), x_i = vector, y_i = 1, and its estimate is x_i / y_i. Every
    round it keeps 1/(d_i + 1) of its mass and adds the same share to the cumulative totals
    (σ_i, σ^y_i) it has ever sent; it sends those totals. A receiver adds the difference between
    the newest total it got from j and the one it used before. A lost message is made good by the
    next one that arrives, so mass is never lost on a link, and rounds need not be in step
    (a message of any later round supersedes an earlier one).

Stopping: after ``rounds`` rounds, or with ``tolerance`` once every agent's own estimate has
moved by at most ``tolerance·‖z‖`` per round for as many consecutive rounds as the network has
agents (a min-counter carried in the messages tells an agent that everyone within that many hops
has settled), at most ``max_rounds``. An agent that stops sends a ``final`` message; its
neighbours then use its last value instead of waiting for it.

Reliability: every round is one ``Peers.exchange_round`` of the runtime (exchange id (call,
round), ``call`` numbering the gossips of the kind in the iteration): a message whose partner's
message does not come within the (neighbour, kind) RTO is retransmitted, duplicates are
suppressed, and a neighbour that missed ours gets it from the stored answers, also after the
last round (the runtime's ``PeerLink.finish_phase`` stays a few RTOs after the peer phase).
``round_timeout`` is now the bound on a round when a neighbour stays silent, not the price of
every lost message.

Wire format (one message kind per gossip, ``GossipConfig.kind``; stamped with the training
iteration by the runtime): ``round`` (int), ``degree`` (int), ``settled`` (int, the min-counter),
``final`` (bool), and ``value`` (metropolis) or ``sigma`` + ``sigma_weight`` (push-sum): a float32
or float64 vector of the caller's length, plus the reliability fields ``RELIABLE_FIELDS``
(exchange, attempt, echo), nothing else.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from p2pmarl.algos.base import Peers

logger = logging.getLogger(__name__)

METHODS = ("metropolis", "push_sum")
"""The averaging methods :func:`average` offers."""
MESSAGE_FIELDS = frozenset(
    {"round", "degree", "settled", "final", "value", "sigma", "sigma_weight"}
)
"""Every key a gossip message may carry (the privacy tests check nothing else leaves)."""


def metropolis_weight(degree_i: int, degree_j: int) -> float:
    """Metropolis–Hastings weight of edge (i, j): 1 / (1 + max(d_i, d_j))."""
    return 1.0 / (1.0 + max(degree_i, degree_j))


def metropolis_weights(neighbours: Mapping[int, Sequence[int]]) -> np.ndarray:
    """The N×N Metropolis–Hastings matrix W of a graph given as ``{agent: neighbours}``.

    W_ij = 1/(1 + max(d_i, d_j)) on edges, W_ii = 1 − Σ_j W_ij, 0 elsewhere: symmetric and doubly
    stochastic. Agents are 0..N−1. Used as the dense reference of the ``metropolis`` rounds.
    """
    n = len(neighbours)
    if sorted(neighbours) != list(range(n)):
        raise ValueError(f"agents must be 0..{n - 1}, got {sorted(neighbours)}")
    weights = np.zeros((n, n))
    for i, adjacent in neighbours.items():
        for j in adjacent:
            if i not in neighbours[j]:
                raise ValueError(f"graph is not undirected: {j} lists no edge to {i}")
            weights[i, j] = metropolis_weight(len(neighbours[i]), len(neighbours[j]))
    weights[np.diag_indices(n)] = 1.0 - weights.sum(axis=1)
    return weights


@dataclass(frozen=True)
class GossipConfig:
    """How one gossip averaging runs."""

    method: str = "metropolis"
    """``metropolis`` (synchronous rounds, exact mean without loss) or ``push_sum`` (running-sum
    push-sum: exact in the limit under message loss and asynchrony)."""
    rounds: int | None = 30
    """Fixed number of rounds; ``None`` to stop by ``tolerance``. Metropolis on a ring of N needs
    about N² rounds for 1e-3 relative error; complete graphs a handful."""
    tolerance: float | None = None
    """Stop once every estimate moves by ≤ tolerance·‖z‖ per round (used when ``rounds`` is
    None); 1e-3 to 1e-6."""
    max_rounds: int = 500
    """Cap on rounds when stopping by tolerance."""
    round_timeout: float = 5.0
    """Longest wait (s) for one round's messages before going on without the missing ones; a
    lost message is retransmitted on its estimated timeout well before, so this is paid only
    for a neighbour that stays silent."""
    kind: str = "gossip"
    """Message kind of this gossip; two gossips in the same iteration need different kinds."""

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"GossipConfig.method must be one of {METHODS}, got {self.method!r}")
        if self.rounds is None and self.tolerance is None:
            raise ValueError("GossipConfig needs rounds or tolerance (both are None)")
        if self.rounds is not None and self.rounds < 0:
            raise ValueError(f"GossipConfig.rounds must be ≥ 0, got {self.rounds}")
        if self.tolerance is not None and not self.tolerance > 0:
            raise ValueError(f"GossipConfig.tolerance must be > 0, got {self.tolerance}")
        if self.max_rounds < 1:
            raise ValueError(f"GossipConfig.max_rounds must be ≥ 1, got {self.max_rounds}")
        if not self.round_timeout > 0:
            raise ValueError(f"GossipConfig.round_timeout must be > 0, got {self.round_timeout}")


@dataclass
class GossipResult:
    """What one agent ends a gossip with."""

    estimate: np.ndarray
    """Its estimate of the network mean (float64, the input's shape)."""
    rounds: int
    """Rounds it ran."""
    changes: list[float] = field(default_factory=list)
    """‖z^{r+1} − z^r‖ per round: the local view of convergence (no agent knows the true mean)."""
    disagreement: list[float] = field(default_factory=list)
    """Per round, max ‖z_j − z_i‖ over the neighbours heard that round (metropolis only; empty
    for push-sum, whose messages carry masses, not estimates)."""
    missing: int = 0
    """Neighbour messages that did not arrive within ``round_timeout`` (lost or late)."""
    history: list[np.ndarray] | None = None
    """With ``keep_history``: z^0, z^1, … (for :func:`consensus_errors` in tests and benches)."""

    def __iter__(self):  # (estimate, per-round changes), as in ``mean, errors = average(...)``
        return iter((self.estimate, self.changes))


@dataclass(frozen=True)
class ConsensusError:
    """Distance of the agents' estimates from the exact network mean at one round."""

    max: float
    """max_i ‖z_i − x̄‖."""
    rms: float
    """sqrt(mean_i ‖z_i − x̄‖²)."""


def consensus_error(estimates: Sequence[np.ndarray], mean: np.ndarray) -> ConsensusError:
    """Max and RMS distance of ``estimates`` (one per agent) from the exact ``mean``."""
    distances = np.array([np.linalg.norm(np.asarray(z) - mean) for z in estimates])
    return ConsensusError(float(distances.max()), float(np.sqrt(np.mean(distances**2))))


def consensus_error_curve(
    histories: Mapping[int, Sequence[np.ndarray]], mean: np.ndarray
) -> list[ConsensusError]:
    """:func:`consensus_error` at every round from every agent's ``GossipResult.history``; an
    agent that stopped early counts with its last estimate."""
    length = max(len(h) for h in histories.values())
    return [
        consensus_error([h[min(r, len(h) - 1)] for h in histories.values()], mean)
        for r in range(length)
    ]


def average(
    peers: Peers,
    vector: np.ndarray,
    config: GossipConfig = GossipConfig(),
    *,
    network_size: int | None = None,
    keep_history: bool = False,
) -> GossipResult:
    """Run one gossip averaging of ``vector`` with the graph neighbours; every agent calls it.

    ``vector``: any float array (flattened on the wire, reshaped back). ``network_size``: N, or
    an upper bound on the graph's diameter + 1, needed only to stop by tolerance. Every wait is
    bounded by ``config.round_timeout`` per round, so the call ends within about
    ``rounds · round_timeout`` seconds even if every neighbour is gone.
    """
    values = np.asarray(vector)
    if not np.issubdtype(values.dtype, np.floating):
        raise ValueError(f"gossip averages float vectors, got dtype {values.dtype}")
    if not np.all(np.isfinite(values)):
        raise ValueError("gossip input has NaN or Inf entries; fix the vector before averaging")
    if config.rounds is None and network_size is None:
        raise ValueError("stopping by tolerance needs network_size (N, or diameter + 1)")
    runner = _Gossip(peers, values, config, network_size, keep_history)
    return runner.run()


class _Gossip:
    """State of one agent during one :func:`average` call."""

    def __init__(
        self,
        peers: Peers,
        values: np.ndarray,
        config: GossipConfig,
        network_size: int | None,
        keep_history: bool,
    ) -> None:
        self.peers = peers
        self.config = config
        self.shape = values.shape
        self.wire_dtype = values.dtype if values.dtype in (np.float32, np.float64) else np.float64
        self.network_size = network_size
        self.neighbours = tuple(peers.neighbours)
        self.degree = len(self.neighbours)
        self.estimate = values.astype(np.float64).ravel()
        # push-sum mass (x, y), cumulative sent totals, last totals used per neighbour
        self.mass = self.estimate.copy()
        self.weight = 1.0
        self.sent_sigma = np.zeros_like(self.mass)
        self.sent_weight = 0.0
        self.used: dict[int, tuple[int, np.ndarray, float]] = {}
        self.final: dict[int, dict[str, Any]] = {}
        self.latest: dict[int, tuple[int, dict[str, Any]]] = {}
        self.inbox: dict[tuple[int, int], dict[str, Any]] = {}
        self.settled = 0
        self.call = peers.new_exchange(config.kind)
        self.result = GossipResult(self.estimate.copy(), 0)
        if keep_history:
            self.result.history = [self.estimate.reshape(self.shape).copy()]

    # -- the loop ---------------------------------------------------------------------------
    def run(self) -> GossipResult:
        config = self.config
        limit = config.rounds if config.rounds is not None else config.max_rounds
        for round_ in range(limit):
            previous = self.estimate.copy()
            if config.method == "metropolis":
                self._metropolis_round(round_)
            else:
                self._push_sum_round(round_)
            change = float(np.linalg.norm(self.estimate - previous))
            self.result.changes.append(change)
            self.result.rounds = round_ + 1
            if self.result.history is not None:
                self.result.history.append(self.estimate.reshape(self.shape).copy())
            if config.rounds is None and self._stop_by_tolerance(change):
                self._send_final(round_ + 1)
                break
        self.result.estimate = self.estimate.reshape(self.shape).copy()
        return self.result

    def _stop_by_tolerance(self, change: float) -> bool:
        """Min-counter: my settled streak, capped by what my neighbours reported (+1 per hop)."""
        scale = max(float(np.linalg.norm(self.estimate)), 1e-12)
        if change > self.config.tolerance * scale:
            self.settled = 0
            return False
        reported = [self.latest[j][1].get("settled", 0) for j in self._live() if j in self.latest]
        self.settled = min([self.settled + 1, *(r + 1 for r in reported)])
        return self.settled >= int(self.network_size)

    def _live(self) -> list[int]:
        down = self.peers.down()
        return [j for j in self.neighbours if j not in down and j not in self.final]

    # -- metropolis ------------------------------------------------------------------------------
    def _metropolis_round(self, round_: int) -> None:
        heard = self._round(round_, {"value": self._wire(self.estimate)}, exact_round=True)
        update = np.zeros_like(self.estimate)
        gaps = []
        for j in self.neighbours:
            body = heard.get(j) or self.final.get(j)
            if body is None:
                continue  # lost or late: its weight stays on our own value this round
            other = np.asarray(body["value"], dtype=np.float64).ravel()
            gap = other - self.estimate
            gaps.append(float(np.linalg.norm(gap)))
            update += metropolis_weight(self.degree, int(body["degree"])) * gap
        self.result.disagreement.append(max(gaps, default=0.0))
        self.estimate = self.estimate + update

    # -- push-sum -------------------------------------------------------------------------------
    def _push_sum_round(self, round_: int) -> None:
        share = 1.0 / (self.degree + 1)
        self.sent_sigma = self.sent_sigma + share * self.mass
        self.sent_weight += share * self.weight
        self.mass = share * self.mass
        self.weight *= share
        self._round(round_, self._push_sum_body(), exact_round=False)
        for j in self.neighbours:
            newest = self.latest.get(j)
            if newest is None:
                continue
            sent_round, body = newest
            used_round, used_sigma, used_weight = self.used.get(j, (-1, 0.0, 0.0))
            if sent_round <= used_round:
                continue
            sigma = np.asarray(body["sigma"], dtype=np.float64).ravel()
            self.mass = self.mass + (sigma - used_sigma)
            self.weight += float(body["sigma_weight"]) - used_weight
            self.used[j] = (sent_round, sigma, float(body["sigma_weight"]))
        self.estimate = self.mass / self.weight if self.weight > 0 else self.estimate

    def _push_sum_body(self) -> dict[str, Any]:
        return {"sigma": self._wire(self.sent_sigma), "sigma_weight": float(self.sent_weight)}

    # -- messages --------------------------------------------------------------------------------
    def _wire(self, vector: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(vector, dtype=self.wire_dtype)

    def _body(self, round_: int, payload: dict[str, Any], final: bool = False) -> dict[str, Any]:
        return {"round": round_, "degree": self.degree, "settled": self.settled, "final": final,
                **payload}

    def _round(
        self, round_: int, payload: dict[str, Any], exact_round: bool
    ) -> dict[int, dict[str, Any]]:
        """One reliable round (``Peers.exchange_round``, exchange (call, round)): send to every
        live neighbour, wait (≤ round_timeout, retransmitting) for each one's message of
        ``round_`` (metropolis) or of any round ≥ ``round_`` (push-sum); returns those of
        ``round_``."""
        live = self._live()
        body = self._body(round_, payload)
        expect = [j for j in live if not self._has(j, round_, exact_round)]
        result = self.peers.exchange_round(
            self.config.kind, {j: body for j in live}, (self.call, round_),
            deadline=time.monotonic() + self.config.round_timeout, expect=expect,
            later=not exact_round,
        )
        for j, message in sorted(result.messages.items()):
            self._file(j, message.body)
        if result.missing:
            self.result.missing += len(result.missing)
            logger.debug("agent %d gossip round %d: nothing from %s in time",
                         self.peers.agent_id, round_, result.missing)
        return {
            j: self.inbox.pop((j, round_)) for j in self.neighbours if (j, round_) in self.inbox
        }

    def _send_final(self, round_: int) -> None:
        """Our last value as our message of round ``round_`` (flagged ``final``), stored as the
        answer to the neighbours' messages of that round: they use it from then on."""
        payload = (
            {"value": self._wire(self.estimate)} if self.config.method == "metropolis"
            else self._push_sum_body()
        )
        body = self._body(round_, payload, final=True)
        self.peers.exchange_round(self.config.kind, {j: body for j in self._live()},
                                  (self.call, round_), deadline=time.monotonic(), expect=())

    def _has(self, j: int, round_: int, exact_round: bool) -> bool:
        if exact_round:
            return (j, round_) in self.inbox
        return j in self.latest and self.latest[j][0] >= round_

    def _file(self, sender: int, body: Mapping[str, Any]) -> None:
        round_ = body.get("round")
        if not isinstance(round_, int) or sender not in self.neighbours:
            logger.warning("agent %d: gossip message without a round from %s, ignored",
                           self.peers.agent_id, sender)
            return
        body = dict(body)
        problem = self._malformed(body)
        if problem:
            logger.warning("agent %d: gossip message from %d rejected: %s",
                           self.peers.agent_id, sender, problem)
            return
        if body.get("final"):
            self.final[sender] = body
        if sender not in self.latest or self.latest[sender][0] < round_:
            self.latest[sender] = (round_, body)
        if self.config.method == "metropolis":
            self.inbox[(sender, round_)] = body

    def _malformed(self, body: Mapping[str, Any]) -> str:
        """Why a neighbour's message cannot be used ('' if it can): wrong vector or fields."""
        key = "value" if self.config.method == "metropolis" else "sigma"
        vector = body.get(key)
        if not isinstance(vector, np.ndarray) or vector.size != self.estimate.size:
            return f"{key} must be a float vector of {self.estimate.size} entries"
        if not np.issubdtype(vector.dtype, np.floating) or not np.all(np.isfinite(vector)):
            return f"{key} must be finite floats"
        degree = body.get("degree")
        if not isinstance(degree, int) or degree < 1:
            return "degree must be a positive int"
        if key == "sigma" and not isinstance(body.get("sigma_weight"), float):
            return "sigma_weight must be a float"
        return ""
