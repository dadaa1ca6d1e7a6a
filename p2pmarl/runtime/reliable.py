"""Reliable peer exchanges over a lossy link: adaptive timeouts, retransmission, duplicates.

Every peer message kind of every variant can use this piece through :class:`~p2pmarl.runtime.
peers.PeerLink` (``send_reliable``/``answer``/``request``/``timeout_for``); nothing here knows an
algorithm.

* :class:`RetransmissionTimer` is the retransmission-timeout estimator of RFC 6298, one per
  (neighbour, message kind): SRTT and RTTVAR with α = 1/8, β = 1/4, RTO = SRTT + 4·RTTVAR clamped
  to [``min_timeout``, ``max_timeout``], ``initial_timeout`` before the first sample, doubled
  (up to ``max_timeout``) after every timeout. The "round trip" is the time from sending a message
  to the partner's answer, so it includes the partner's compute for that kind (a θ step, ~90 ms at
  the paper's payload), which dominates the wire (< 1 ms): hence one estimator per kind.
* Karn's rule: an exchange whose message was retransmitted gives no sample (the answer could
  belong to either copy).
* Idempotence: a reliable message carries ``exchange`` (the caller's id of the exchange, a list of
  ints, e.g. [activation, version]), ``attempt`` (0 for the first copy, k for the k-th
  retransmission) and ``echo`` (1 when it is a stored answer sent again). The receiver delivers the
  first copy of each (sender, kind, iteration, exchange) to the algorithm once and suppresses
  later copies; a suppressed *retransmission* (never an echo, so two ends never ping-pong) is
  answered by re-sending the stored answer to it, if there is one (:class:`AnswerStore`); so is
  a retransmission whose earlier copies were all lost (its sender is missing the answer).
* Rounds (:class:`RoundResult`, ``PeerLink.exchange_round``): the symmetric "send my message to
  every neighbour and collect theirs" step of gossip, row exchanges and max-propagation. Each
  message is also the stored answer to the neighbour's message of the same round, so a
  neighbour that missed it retransmits and gets it back, even from an agent already a round
  ahead; ``PeerLink.linger`` answers such late retransmissions after the last round.
* One-way messages (``PeerLink.deliver``/``accept_deliveries``): a message with no natural
  answer (a token) is answered on arrival by an empty acknowledgement of kind :func:`ack_kind`,
  stored like any answer.
* Redundant copies (:class:`Redundancy`): on a link whose measured loss calls for it, every
  reliable message, answer and stored answer sent again goes out in c identical copies (the
  receiver keeps the first), c the fewest with p̂^c ≤ ``residual_loss``, at most
  ``max_copies``. p̂ is the transport's count of the frames the neighbour numbered that never
  arrived (``Transport.inbound_loss``: frames carry per-link sequence numbers), so a slow
  partner is never mistaken for a lossy link; the loss measured on the way in stands for both
  directions of the link. A lost message costs a whole retransmission timeout, dominated by the
  partner's compute; a copy costs only bytes, so against random loss copies are the cheap half
  and retransmission the backstop.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

RELIABLE_FIELDS = frozenset({"exchange", "attempt", "echo"})
"""Body fields the reliability layer adds to a message (ids and counters, nothing of learning)."""
ALPHA = 1 / 8
"""RFC 6298 (2.3): gain of the smoothed round trip SRTT."""
BETA = 1 / 4
"""RFC 6298 (2.3): gain of the round-trip variation RTTVAR."""
K = 4
"""RFC 6298 (2.2): RTO = SRTT + K·RTTVAR."""
ALIVE_SECONDS = 3.0
"""A neighbour heard from within this long (or within the current wait, if longer) is alive: a
waiting agent's transport heartbeats every second, so three in a row would have to be lost."""
STORE_DEPTH = 4
"""Stored answers kept per neighbour (the latest ones; an exchange older than that is over)."""

ExchangeKey = tuple[int, ...]


def ack_kind(kind: str) -> str:
    """Kind of the empty acknowledgement of a one-way reliable message of ``kind`` (its body has
    only the reliability fields :data:`RELIABLE_FIELDS`)."""
    return f"{kind}/ack"


@dataclass
class RoundResult:
    """What one agent got from one reliable round (``PeerLink.exchange_round``)."""

    messages: dict[int, Any] = field(default_factory=dict)
    """Neighbour → its message of the round (a ``PeerMessage``), for those that came."""
    missing: list[int] = field(default_factory=list)
    """Neighbours whose message did not come although they were alive: retransmissions used up
    with the neighbour silent, or the round's deadline passed."""
    down: list[int] = field(default_factory=list)
    """Neighbours the transport reported lost while the round waited for them."""
    retransmissions: int = 0
    """Copies of this agent's messages re-sent during the round."""
    bytes_sent: int = 0
    """Bytes of this agent's copies of the round on the wire (first copies and re-sent ones)."""


@dataclass(frozen=True)
class RetransmitPolicy:
    """Bounds of the timeout estimator and of retransmission (shared by all message kinds)."""

    initial_timeout: float = 0.25
    """RTO (s) before the first sample of a (neighbour, kind) pair (RFC 6298 (2.1) says 1 s for
    the internet; here a premature copy costs one message)."""
    min_timeout: float = 0.03
    """Lower clamp (s) of the RTO: below it, scheduling noise of a busy host looks like loss."""
    max_timeout: float = 30.0
    """Upper clamp (s) of the RTO, also of every backed-off value (``--admm-message-timeout``)."""
    max_retransmissions: int = 6
    """Retransmissions of one message before the exchange is given up (0: wait one RTO, once)."""
    linear_retransmissions: int = 4
    """Retransmissions sent at the un-doubled RTO before the waits of an exchange start doubling
    (Linux's thin-stream linear timeouts): one message in flight and random, not congestion, loss,
    so doubling from the first timeout would make a short run of losses cost seconds."""

    def __post_init__(self) -> None:
        for name in ("initial_timeout", "min_timeout", "max_timeout"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(
                    f"RetransmitPolicy.{name} must be a finite number > 0, got {value}"
                )
        if self.min_timeout > self.max_timeout:
            raise ValueError(
                f"RetransmitPolicy.min_timeout ({self.min_timeout}) exceeds max_timeout "
                f"({self.max_timeout}); lower min_timeout or raise max_timeout"
            )
        for name in ("max_retransmissions", "linear_retransmissions"):
            if getattr(self, name) < 0:
                raise ValueError(f"RetransmitPolicy.{name} must be >= 0, got {getattr(self, name)}")

    def clamp(self, seconds: float) -> float:
        return min(self.max_timeout, max(self.min_timeout, seconds))

    def waits(self, timeout: float) -> list[float]:
        """The 1 + R successive waits of an exchange that starts at RTO ``timeout``: the first
        1 + ``linear_retransmissions`` at the RTO, then each double the last, at most
        ``max_timeout``."""
        result, wait = [], self.clamp(timeout)
        for attempt in range(self.max_retransmissions + 1):
            if attempt > self.linear_retransmissions:
                wait = min(self.max_timeout, 2 * wait)
            result.append(wait)
        return result

    def give_up_after(self, timeout: float) -> float:
        """Longest total wait for one exchange whose timer starts at ``timeout``."""
        return sum(self.waits(timeout))


@dataclass(frozen=True)
class Redundancy:
    """How many identical copies of each reliable message a link's measured loss calls for."""

    max_copies: int = 4
    """Most copies of one message (1: never duplicate)."""
    residual_loss: float = 0.05
    """Target probability that every copy of a message is lost: copies are added while the
    estimated per-copy loss p̂ gives p̂^c above it."""

    def __post_init__(self) -> None:
        if self.max_copies < 1:
            raise ValueError(f"Redundancy.max_copies must be >= 1, got {self.max_copies}")
        if not 0 < self.residual_loss < 1:
            raise ValueError(
                f"Redundancy.residual_loss must be in (0, 1), got {self.residual_loss}"
            )

    def copies(self, loss: float) -> int:
        """The fewest copies c ≤ ``max_copies`` with ``loss``^c ≤ ``residual_loss``, for a link
        that loses each copy with probability ``loss``."""
        copies = 1
        while copies < self.max_copies and loss**copies > self.residual_loss:
            copies += 1
        return copies


@dataclass
class RetransmissionTimer:
    """RFC 6298 estimator of one (neighbour, kind): SRTT, RTTVAR and the current RTO."""

    policy: RetransmitPolicy
    srtt: float | None = None
    """Smoothed answer time (s); None before the first sample."""
    rttvar: float = 0.0
    """Smoothed variation of the answer time (s)."""
    rto: float = 0.0
    """Current retransmission timeout (s), clamped, backed off after timeouts."""
    samples: int = 0
    timeouts: int = 0

    def __post_init__(self) -> None:
        if self.rto <= 0:
            self.rto = self.policy.clamp(self.policy.initial_timeout)

    def sample(self, seconds: float) -> None:
        """A measured answer time of an exchange sent once (Karn's rule is the caller's)."""
        seconds = max(0.0, float(seconds))
        if self.srtt is None:  # RFC 6298 (2.2)
            self.srtt, self.rttvar = seconds, seconds / 2
        else:  # (2.3): RTTVAR first, with the old SRTT
            self.rttvar = (1 - BETA) * self.rttvar + BETA * abs(self.srtt - seconds)
            self.srtt = (1 - ALPHA) * self.srtt + ALPHA * seconds
        self.samples += 1
        self.rto = self.policy.clamp(self.srtt + K * self.rttvar)

    def timed_out(self) -> None:
        """Count a timeout. The backed-off wait is the exchange's own (:class:`Pending`): the
        next exchange starts again from the estimate, as the estimate is about answer times and
        a loss says nothing about them."""
        self.timeouts += 1

    def snapshot(self) -> dict[str, float | int | None]:
        return {"srtt": self.srtt, "rttvar": self.rttvar, "rto": self.rto,
                "samples": self.samples, "timeouts": self.timeouts}


class TimerTable:
    """One :class:`RetransmissionTimer` per (neighbour, kind), created on first use."""

    def __init__(self, policy: RetransmitPolicy | None = None) -> None:
        self.policy = policy or RetransmitPolicy()
        self._timers: dict[tuple[int, str], RetransmissionTimer] = {}

    def use_policy(self, policy: RetransmitPolicy) -> None:
        """New bounds for every estimator, present and future; estimates are kept, re-clamped."""
        if policy == self.policy:
            return
        self.policy = policy
        for timer in self._timers.values():
            timer.policy = policy
            known = timer.srtt is not None
            timer.rto = policy.clamp(timer.rto if known else policy.initial_timeout)

    def timer(self, neighbour: int, kind: str) -> RetransmissionTimer:
        key = (neighbour, kind)
        if key not in self._timers:
            self._timers[key] = RetransmissionTimer(self.policy)
        return self._timers[key]

    def timeout_for(self, neighbour: int, kind: str) -> float:
        """Current RTO (s) for an answer from ``neighbour`` to a message of ``kind``."""
        return self.timer(neighbour, kind).rto

    def snapshot(self) -> dict[str, dict[str, float | int | None]]:
        """``{"<neighbour>/<kind>": {srtt, rttvar, rto, samples, timeouts}}``, for the records."""
        return {f"{n}/{kind}": t.snapshot() for (n, kind), t in sorted(self._timers.items())}


@dataclass
class Pending:
    """One reliable message awaiting its answer: what to resend and when."""

    neighbour: int
    kind: str
    body: dict[str, Any]
    key: ExchangeKey
    timer: RetransmissionTimer
    sent_at: float = field(default_factory=time.monotonic)
    attempts: int = 0
    """Retransmissions so far (Karn: an answer after any gives no sample)."""
    due: float = 0.0
    """Monotonic time of the next retransmission (or of giving up, after the last)."""
    bytes_sent: int = 0
    """Bytes of the first attempt on the wire (all its identical copies)."""

    wait: float = 0.0
    """Length (s) of the current wait: the RTO at first, backed off after timeouts."""

    extensions: int = 0
    """Waits added after the last retransmission because the neighbour was heard meanwhile."""

    def __post_init__(self) -> None:
        self.wait = self.timer.rto
        self.due = self.sent_at + self.wait

    @property
    def alive_since(self) -> float:
        """A neighbour heard after this monotonic time is alive (see :data:`ALIVE_SECONDS`)."""
        return self.due - max(self.wait, ALIVE_SECONDS)

    @property
    def exhausted(self) -> bool:
        """All retransmissions were sent and the last one's timeout has passed too."""
        return self.attempts >= self.timer.policy.max_retransmissions and self.overdue()

    @property
    def last_attempt(self) -> bool:
        """No retransmission is left: when this wait ends, the exchange is given up."""
        return self.attempts >= self.timer.policy.max_retransmissions

    def overdue(self, now: float | None = None) -> bool:
        return (time.monotonic() if now is None else now) >= self.due

    def remaining(self) -> float:
        return max(0.0, self.due - time.monotonic())

    def timed_out(self) -> None:
        """The current wait ran out: count a retransmission and schedule the next deadline, the
        wait doubled (at most ``max_timeout``) once the linear retransmissions are used up
        (RFC 6298 (5.5), after Linux's thin-stream linear timeouts)."""
        policy = self.timer.policy
        self.timer.timed_out()
        self.attempts += 1
        if self.attempts > policy.linear_retransmissions:
            self.wait = min(policy.max_timeout, 2 * self.wait)
        self.due = time.monotonic() + self.wait

    def extend(self) -> None:
        """The last wait ran out but the neighbour is alive (heard from lately): it is behind,
        not gone, so wait once more instead of giving up (the caller sends another copy, so
        that a neighbour that gave the exchange up can say so)."""
        self.extensions += 1
        self.attempts += 1
        self.due = time.monotonic() + self.wait

    def answered(self) -> float:
        """The answer came: feed the estimator unless retransmitted (Karn); returns the wait."""
        waited = time.monotonic() - self.sent_at
        if self.attempts == 0:
            self.timer.sample(waited)
        return waited


class AnswerStore:
    """Answers this agent sent, by (neighbour, kind answered, exchange), the latest few each."""

    def __init__(self, depth: int = STORE_DEPTH) -> None:
        self.depth = depth
        self._by_neighbour: dict[int, deque[tuple[str, ExchangeKey, str, dict[str, Any]]]] = {}

    def put(
        self, neighbour: int, answers: Iterable[str], key: ExchangeKey, kind: str,
        body: Mapping[str, Any],
    ) -> None:
        entries = self._by_neighbour.setdefault(neighbour, deque(maxlen=self.depth))
        for answered in answers:
            entries.append((answered, key, kind, dict(body)))

    def get(
        self, neighbour: int, answered: str, key: ExchangeKey
    ) -> tuple[str, dict[str, Any]] | None:
        """What this agent answered to ``neighbour``'s message of ``answered`` in ``key``."""
        entries = self._by_neighbour.get(neighbour, ())
        for entry_answered, entry_key, kind, body in reversed(entries):
            if entry_answered == answered and entry_key == key:
                return kind, body
        return None

    def latest(self, neighbour: int, answered: str) -> tuple[str, dict[str, Any]] | None:
        """The last answer stored for ``neighbour``'s messages of ``answered``, if any."""
        for entry_answered, _, kind, body in reversed(self._by_neighbour.get(neighbour, ())):
            if entry_answered == answered:
                return kind, body
        return None

    def forget(self, neighbour: int, key: ExchangeKey) -> None:
        """Drop the answers of an exchange that was given up (a late retransmission of it then
        gets no answer that would commit the other end alone)."""
        entries = self._by_neighbour.get(neighbour)
        if entries:
            kept = [entry for entry in entries if entry[1] != key]
            entries.clear()
            entries.extend(kept)

    def clear(self) -> None:
        self._by_neighbour.clear()


def exchange_key(body: Mapping[str, Any]) -> ExchangeKey | None:
    """The ``exchange`` id of a reliable message's body, or None if it has none (or a bad one)."""
    value = body.get("exchange")
    if not isinstance(value, list) or not value:
        return None
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return None
    return tuple(value)


def is_retransmission(body: Mapping[str, Any]) -> bool:
    """A copy sent again because its sender's timer ran out (not an echo from a store)."""
    attempt = body.get("attempt")
    return isinstance(attempt, int) and attempt > 0 and not body.get("echo")
