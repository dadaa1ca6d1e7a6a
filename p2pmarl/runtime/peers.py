"""The algorithm's view of its neighbours: :class:`PeerLink` implements ``algos.base.Peers``.

It stamps every message with the training iteration, drops messages of earlier iterations
(counted as ``stale_round``), keeps messages of later iterations for later, and lets a caller wait
for particular kinds while other kinds stay queued.

It is also where every variant gets reliable exchanges over lossy links
(:mod:`p2pmarl.runtime.reliable`): :meth:`PeerLink.send_reliable` sends a message that will be
retransmitted on its (neighbour, kind) RTO until answered, :meth:`PeerLink.answer` sends an answer
that is re-sent from its stored copy whenever a retransmission of what it answers arrives,
:meth:`PeerLink.request` does the whole send–wait–retransmit loop for one answer,
:meth:`PeerLink.exchange_round` does it for one symmetric round with every neighbour (gossip,
row exchanges, max-propagation), :meth:`PeerLink.deliver`/:meth:`PeerLink.accept_deliveries` for a
one-way message (a token), :meth:`PeerLink.finish_phase` (called by the runtime after the peer
phase) answers late retransmissions of the last round, and :meth:`PeerLink.timeout_for` gives
any waiting code the current estimate.
Duplicate copies of a reliable message are suppressed here, so an algorithm sees each at most
once; on a link whose measured loss calls for it (:class:`~p2pmarl.runtime.reliable.Redundancy`)
every reliable message and answer goes out in several identical copies.
"""

from __future__ import annotations

import math
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from p2pmarl.algos.base import PeerMessage
from p2pmarl.runtime.codec import Message
from p2pmarl.runtime.reliable import (
    AnswerStore,
    ExchangeKey,
    Pending,
    Redundancy,
    RetransmitPolicy,
    RoundResult,
    TimerTable,
    ack_kind,
    exchange_key,
    is_retransmission,
)
from p2pmarl.runtime.transport import Transport

LIVENESS_POLL_SECONDS = 0.2
"""Longest single wait inside :meth:`PeerLink.request` between two looks at lost neighbours."""
FINISH_POLL_SECONDS = 0.002
"""Longest single wait of :meth:`PeerLink.finish_phase` between two looks at its ``until``."""


class PeerLink:
    """Peers of one agent over any :class:`Transport`, for one training iteration at a time."""

    def __init__(
        self, transport: Transport, iteration: int = 0, policy: RetransmitPolicy | None = None,
        redundancy: Redundancy | None = None,
    ) -> None:
        self.transport = transport
        self.agent_id = transport.agent_id
        self.neighbours = transport.neighbours
        self.iteration = iteration
        self._held: deque[tuple[Message, bool]] = deque()
        self._disconnects_at_rollout: dict[int, int] = {}
        self.sent_log: list[tuple[int, str, tuple[str, ...]]] = []
        """(receiver, kind, body keys) of every message sent; what the privacy test reads."""
        self.timers = TimerTable(policy)
        """RFC 6298 estimators per (neighbour, kind); they persist across iterations."""
        self.answers = AnswerStore()
        self.redundancy = redundancy or Redundancy()
        self.reliability: Counter[str] = Counter()
        """``retransmissions``, ``duplicates`` (suppressed copies), ``echoes`` (stored answers
        re-sent), ``given_up`` (requests that exhausted their retransmissions), ``extra_copies``
        (redundant copies sent)."""
        self._delivered: set[tuple[int, str, int, ExchangeKey]] = set()
        self._exchanges: Counter[str] = Counter()
        self._owed: set[tuple[int, str]] = set()
        """(neighbour, kind) whose late retransmissions :meth:`finish_phase` stays to answer."""
        self._acknowledged: set[str] = set()
        """Kinds acknowledged on arrival (:meth:`accept_deliveries`)."""

    def start_iteration(self, iteration: int) -> None:
        """Move to a new training iteration; held messages of older ones are dropped."""
        self.iteration = iteration
        kept = [(m, admitted) for m, admitted in self._held if m.round >= iteration]
        self.transport.rejected["stale_round"] += len(self._held) - len(kept)
        self._held = deque(kept)
        self.answers.clear()
        self._delivered.clear()
        self._exchanges.clear()
        self._owed.clear()

    def new_exchange(self, kind: str) -> int:
        """0, 1, 2... for the successive multi-round exchanges of ``kind`` in this iteration: the
        same number at every agent that makes the same calls in the same order, for keys."""
        number = self._exchanges[kind]
        self._exchanges[kind] += 1
        return number

    def use_policy(self, policy: RetransmitPolicy) -> None:
        """Bounds for every estimator from now on (a variant's settings, e.g. its max wait)."""
        self.timers.use_policy(policy)

    # -- sending ----------------------------------------------------------------------------------
    def send(self, neighbour: int, kind: str, body: Mapping[str, Any]) -> int:
        """Send to one neighbour, stamped with the current iteration; returns bytes sent."""
        self.sent_log.append((neighbour, kind, tuple(sorted(body))))
        return self.transport.send(neighbour, kind, self.iteration, body)

    def loss(self, neighbour: int) -> float:
        """Estimated fraction of frames lost on the link with ``neighbour`` (measured by the
        transport on the way in; 0 before its first frame)."""
        return self.transport.inbound_loss.get(neighbour, 0.0)

    def copies_for(self, neighbour: int) -> int:
        """Copies of each reliable message to ``neighbour`` its link's loss calls for."""
        return self.redundancy.copies(self.loss(neighbour))

    def _send_copies(self, neighbour: int, kind: str, body: Mapping[str, Any]) -> int:
        """Send ``body`` as the identical copies the link's loss calls for; returns the bytes of
        all of them."""
        copies = self.copies_for(neighbour)
        self.reliability["extra_copies"] += copies - 1
        return sum(self.send(neighbour, kind, body) for _ in range(copies))

    def send_reliable(
        self, neighbour: int, kind: str, body: Mapping[str, Any], key: Iterable[int],
        answers: Iterable[str] = (),
    ) -> Pending:
        """Send ``body`` as exchange ``key`` (ints, unique per neighbour and iteration) and return
        its :class:`Pending`, to pass to :meth:`resend` when its deadline passes and to
        ``Pending.answered`` when the answer comes. If ``answers`` names kinds, the message is
        also stored as this agent's answer to ``neighbour``'s messages of those kinds in the same
        exchange (a symmetric exchange answers the partner's message of its own kind)."""
        key = tuple(int(k) for k in key)
        full = {**body, "exchange": list(key), "attempt": 0, "echo": 0}
        pending = Pending(neighbour, kind, full, key, self.timers.timer(neighbour, kind))
        if answers:
            self.answers.put(neighbour, answers, key, kind, full)
        pending.bytes_sent = self._send_copies(neighbour, kind, full)
        return pending

    def resend(self, pending: Pending) -> int:
        """The wait for ``pending``'s answer ran out: back its timer off and send it again."""
        pending.timed_out()
        return self._send_copy(pending)

    def extend(self, pending: Pending) -> int:
        """Retransmissions are used up but the neighbour is alive: wait once more, another copy
        out (it answers from its store, or says it gave the exchange up)."""
        pending.extend()
        return self._send_copy(pending)

    def echo(self, pending: Pending) -> int:
        """One more copy of ``pending``, marked as an echo (it is never answered): for a
        neighbour that may have missed it while this agent is about to stop waiting."""
        self.reliability["echoes"] += 1
        return self._send_copies(pending.neighbour, pending.kind, {**pending.body, "echo": 1})

    def _send_copy(self, pending: Pending) -> int:
        self.reliability["retransmissions"] += 1
        body = {**pending.body, "attempt": pending.attempts}
        return self._send_copies(pending.neighbour, pending.kind, body)

    def answer(self, request: PeerMessage, kind: str, body: Mapping[str, Any]) -> int:
        """Answer ``request`` (a reliable message) with ``kind``/``body``; a retransmission of the
        request is answered again from this stored copy, without reaching the algorithm."""
        key = exchange_key(request.body) or ()
        full = {**body, "exchange": list(key), "attempt": 0, "echo": 0}
        self.answers.put(request.sender, (request.kind,), key, kind, full)
        return self._send_copies(request.sender, kind, full)

    def forget(self, neighbour: int, key: Iterable[int]) -> None:
        """Drop the stored answers of an exchange this agent gave up on; later copies of the
        neighbour's messages in it are delivered again, so the algorithm can refuse them."""
        key = tuple(int(k) for k in key)
        self.answers.forget(neighbour, key)
        self._delivered = {d for d in self._delivered if d[0] != neighbour or d[3] != key}

    def heard_since(self, neighbour: int, since: float) -> bool:
        """Whether any frame of ``neighbour`` (a heartbeat, a duplicate...) arrived after the
        monotonic time ``since``: it is alive, whatever it is busy with."""
        return self.transport.last_seen.get(neighbour, -math.inf) > since

    def timeout_for(self, neighbour: int, kind: str) -> float:
        """Current RTO (s) for an answer from ``neighbour`` to a message of ``kind``."""
        return self.timers.timeout_for(neighbour, kind)

    def request(
        self, neighbour: int, kind: str, body: Mapping[str, Any], key: Iterable[int],
        reply_kinds: frozenset[str], answers: Iterable[str] = (), deadline: float | None = None,
    ) -> PeerMessage | None:
        """Send ``body`` reliably and wait for ``neighbour``'s message of ``reply_kinds`` in the
        same exchange, retransmitting on the RTO. None once the retransmissions are exhausted and
        the neighbour stayed silent for the whole last wait (a neighbour heard from is behind, not
        gone: it gets more waits), ``deadline`` (monotonic) passed or the neighbour is lost.
        Other messages stay queued."""
        pending = self.send_reliable(neighbour, kind, body, key, answers)
        next_look = 0.0
        while True:
            now = time.monotonic()
            if now >= next_look:
                if neighbour in self.down():
                    return None
                next_look = now + LIVENESS_POLL_SECONDS
            if deadline is not None and now >= deadline:
                return None
            if not self._keep_waiting(pending, now):
                self.forget(neighbour, pending.key)
                return None
            wait = min(pending.remaining(), LIVENESS_POLL_SECONDS)
            if deadline is not None:
                wait = min(wait, max(0.0, deadline - now))
            message = self._next(wait, reply_kinds, neighbour, pending.key)
            if message is not None:
                pending.answered()
                return _peer_message(message)

    def _keep_waiting(self, pending: Pending, now: float) -> bool:
        """The retransmission rule at ``pending``'s deadline: re-send while retransmissions are
        left, then wait once more per copy while the neighbour is heard from (alive, behind);
        False (counted ``given_up``) once it stayed silent for the whole last wait."""
        if not pending.overdue(now):
            return True
        if not pending.last_attempt:
            self.resend(pending)
        elif self.heard_since(pending.neighbour, pending.alive_since):
            self.extend(pending)
        else:
            self.reliability["given_up"] += 1
            return False
        return True

    def exchange_round(
        self, kind: str, bodies: Mapping[int, Mapping[str, Any]], key: Iterable[int],
        deadline: float, expect: Iterable[int] | None = None, later: bool = False,
    ) -> RoundResult:
        """One symmetric round: send ``bodies[j]`` to each neighbour j as exchange ``key`` and
        collect one message of ``kind`` of the same exchange from each neighbour in ``expect``
        (default: those sent to), retransmitting ours to a neighbour whose message is missing
        on its (j, ``kind``) RTO. Each message is stored as the answer to the neighbour's of the
        round, so a neighbour that missed ours gets it back when it retransmits, also after this
        agent went on (see :meth:`finish_phase`). A neighbour's wait ends when its message came,
        it is reported down, it stayed silent through the last retransmission (``missing``), or at
        ``deadline`` (monotonic; ``missing``). With ``later``, a message whose exchange id differs
        only by a larger last element (a later round ``(call, r')``, r' > r) also counts as the
        neighbour's: its content supersedes this round's (push-sum). Other messages stay queued.
        """
        key = tuple(int(k) for k in key)
        result = RoundResult()
        self._owed.update((j, kind) for j in bodies)
        pending = {
            j: self.send_reliable(j, kind, body, key, answers=(kind,)) for j, body in bodies.items()
        }
        waiting = set(bodies if expect is None else expect)
        sent_before = self.reliability["retransmissions"]

        def answers_round(message: Message) -> bool:
            if message.kind != kind or message.sender not in waiting:
                return False
            got = exchange_key(message.body)
            if got is None:
                return False
            return got == key or (later and len(got) == len(key) and got[:-1] == key[:-1]
                                  and got[-1] > key[-1])

        next_look = 0.0
        while waiting:
            now = time.monotonic()
            if now >= next_look:
                for j in sorted(waiting & self.down()):
                    waiting.discard(j)
                    result.down.append(j)
                next_look = now + LIVENESS_POLL_SECONDS
            if now >= deadline:
                result.missing.extend(sorted(waiting))
                break
            for j in sorted(waiting):
                if j in pending and not self._keep_waiting(pending[j], now):
                    waiting.discard(j)
                    result.missing.append(j)
            timers = [pending[j].remaining() for j in waiting if j in pending]
            wait = max(0.0, min([LIVENESS_POLL_SECONDS, deadline - now, *timers]))
            message = self._next_matching(wait, answers_round)
            if message is not None:
                waiting.discard(message.sender)
                if message.sender in pending:
                    pending[message.sender].answered()
                result.messages[message.sender] = _peer_message(message)
        result.retransmissions = self.reliability["retransmissions"] - sent_before
        result.bytes_sent = sum(p.bytes_sent * (1 + p.attempts) for p in pending.values())
        return result

    def finish_phase(self, until: Callable[[], bool] | None = None) -> float:
        """Called by the runtime after the peer phase, for the neighbours whose messages this
        iteration's rounds (:meth:`exchange_round`) and acknowledgements
        (:meth:`accept_deliveries`) answered: one more copy of the last answer to each (marked
        ``echo``, never answered; for a neighbour that missed it and whose retransmission would
        find nobody listening), then stay answering retransmissions for (1 + linear
        retransmissions) of the longest of their (neighbour, kind) RTOs, or less: the stay ends
        as soon as ``until()`` is true (checked every :data:`FINISH_POLL_SECONDS`), for a
        caller that learns another way that no neighbour can still be waiting (the runtime:
        the world's next message, sent only once every live agent finished its peer phase).
        Neighbours reported down are skipped. Returns the seconds stayed (0 when nothing is
        owed; a variant with its own end-of-phase rule, like MATRPO's ADMM, owes nothing)."""
        down = self.down()
        owed = sorted((j, kind) for j, kind in self._owed if j not in down)
        self._owed.clear()
        if not owed:
            return 0.0
        for j, answered in owed:
            stored = self.answers.latest(j, answered)
            if stored is not None:
                self.reliability["echoes"] += 1
                self._send_copies(j, stored[0], {**stored[1], "echo": 1})
        longest = max(self.timeout_for(j, kind) for j, kind in owed)
        seconds = longest * (1 + self.timers.policy.linear_retransmissions)
        started = time.monotonic()
        deadline = started + seconds
        while (remaining := deadline - time.monotonic()) > 0:
            if until is not None and until():
                seconds = time.monotonic() - started  # ended early
                break
            self.linger(remaining if until is None else min(remaining, FINISH_POLL_SECONDS))
        self.reliability["linger_seconds"] += seconds
        return seconds

    def linger(self, seconds: float) -> None:
        """Stay ``seconds``, answering retransmissions from the stored answers (and holding any
        new message for later): for after the last round of a phase, when no later round would
        answer a neighbour that missed this agent's last message."""
        self._next_matching(max(0.0, seconds), lambda message: False)

    def deliver(
        self, neighbour: int, kind: str, body: Mapping[str, Any], key: Iterable[int],
        deadline: float | None = None,
    ) -> bool:
        """Send a one-way message reliably: retransmitted until ``neighbour`` acknowledges it
        (it called :meth:`accept_deliveries` for ``kind``). False when given up (the rules of
        :meth:`request`)."""
        return self.request(
            neighbour, kind, body, key, frozenset({ack_kind(kind)}), deadline=deadline
        ) is not None

    def accept_deliveries(self, kinds: Iterable[str]) -> None:
        """Acknowledge every message of ``kinds`` sent with :meth:`deliver` as it arrives (an
        empty answer of kind ``ack_kind(kind)``, re-sent from the store to retransmissions),
        whatever this agent is waiting for meanwhile: two agents delivering to each other never
        wait on each other. Lasts for the life of the link."""
        self._acknowledged.update(kinds)

    # -- receiving -------------------------------------------------------------------------------
    def receive(self, timeout: float, kinds: frozenset[str] | None = None) -> PeerMessage | None:
        """Next message of this iteration (of one of ``kinds``), or None after ``timeout`` s.
        Copies of a reliable message already delivered are never returned again."""
        message = self._next(timeout, kinds)
        return None if message is None else _peer_message(message)

    def _next(
        self, timeout: float, kinds: frozenset[str] | None, sender: int | None = None,
        key: ExchangeKey | None = None,
    ) -> Message | None:
        def wanted(message: Message) -> bool:
            if kinds is not None and message.kind not in kinds:
                return False
            if sender is None:
                return True
            return message.sender == sender and exchange_key(message.body) == key

        return self._next_matching(timeout, wanted)

    def _next_matching(
        self, timeout: float, wanted: Callable[[Message], bool]
    ) -> Message | None:
        """The next admitted message of this iteration that ``wanted`` accepts (held ones
        first); the others are held. None after ``timeout`` s."""
        held = self._take_held(wanted)
        if held is not None:
            return held
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            message = self.transport.receive(remaining)
            if message is None:
                return None
            if message.round < self.iteration:
                self.transport.rejected["stale_round"] += 1
                continue
            if message.round > self.iteration:
                self._held.append((message, False))
                continue
            if not self._admit(message):
                continue
            if not wanted(message):
                self._held.append((message, True))
                continue
            return message
        return None

    def _admit(self, message: Message) -> bool:
        """False for a copy of a reliable message already delivered (answered from the store
        if it is a retransmission and an answer is stored)."""
        key = exchange_key(message.body)
        if key is None:
            return True
        identity = (message.sender, message.kind, message.round, key)
        first = identity not in self._delivered
        self._delivered.add(identity)
        if not first:
            self.reliability["duplicates"] += 1
        elif message.kind in self._acknowledged and not message.body.get("echo"):
            self._owed.add((message.sender, message.kind))
            self.answer(_peer_message(message), ack_kind(message.kind), {})
            return True
        if is_retransmission(message.body):  # its sender misses our answer, if we gave one
            stored = self.answers.get(message.sender, message.kind, key)
            if stored is not None:
                kind, body = stored
                self.reliability["echoes"] += 1
                self._send_copies(message.sender, kind, {**body, "echo": 1})
        return first

    def metrics(self) -> dict[str, Any]:
        """``peers/*`` counters so far and every estimator's state (what the runtime records)."""
        stats: dict[str, Any] = {f"peers/{k}": v for k, v in sorted(self.reliability.items())}
        stats["peers/timeouts"] = self.timers.snapshot()
        stats["peers/loss"] = {
            str(j): {"inbound": round(self.loss(j), 4), "copies": self.copies_for(j)}
            for j in self.neighbours
        }
        return stats

    def mark_rollout(self) -> None:
        """Called when the iteration's rollout begins: a neighbour whose link is lost after this
        point cannot hold this iteration's batch, even if a restarted process of it is back."""
        self.transport.peers_down()
        self._disconnects_at_rollout = dict(self.transport.disconnects)

    def down(self) -> frozenset[int]:
        """Neighbours whose link the transport reports lost now (see ``Transport.peers_down``)
        or lost at any time since :meth:`mark_rollout`."""
        down = set(self.transport.peers_down())
        for neighbour, count in self.transport.disconnects.items():
            if count > self._disconnects_at_rollout.get(neighbour, 0):
                down.add(neighbour)
        return frozenset(down)

    def _take_held(self, wanted: Callable[[Message], bool]) -> Message | None:
        index = 0
        while index < len(self._held):
            message, admitted = self._held[index]
            if message.round != self.iteration or not wanted(message):
                index += 1
                continue
            del self._held[index]
            if admitted or self._admit(message):
                return message
        return None


def _peer_message(message: Message) -> PeerMessage:
    return PeerMessage(message.sender, message.kind, message.round, message.body)
