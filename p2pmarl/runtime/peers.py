"""The algorithm's view of its neighbours: :class:`PeerLink` implements ``algos.base.Peers``.

It stamps every message with the training iteration, drops messages of earlier iterations
(counted as ``stale_round``), keeps messages of later iterations for later, and lets a caller wait
for particular kinds while other kinds stay queued.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Mapping
from typing import Any

from p2pmarl.algos.base import PeerMessage
from p2pmarl.runtime.codec import Message
from p2pmarl.runtime.transport import Transport


class PeerLink:
    """Peers of one agent over any :class:`Transport`, for one training iteration at a time."""

    def __init__(self, transport: Transport, iteration: int = 0) -> None:
        self.transport = transport
        self.agent_id = transport.agent_id
        self.neighbours = transport.neighbours
        self.iteration = iteration
        self._held: deque[Message] = deque()
        self._disconnects_at_rollout: dict[int, int] = {}
        self.sent_log: list[tuple[int, str, tuple[str, ...]]] = []
        """(receiver, kind, body keys) of every message sent; what the privacy test reads."""

    def start_iteration(self, iteration: int) -> None:
        """Move to a new training iteration; held messages of older ones are dropped."""
        self.iteration = iteration
        kept = [m for m in self._held if m.round >= iteration]
        self.transport.rejected["stale_round"] += len(self._held) - len(kept)
        self._held = deque(kept)

    def send(self, neighbour: int, kind: str, body: Mapping[str, Any]) -> int:
        """Send to one neighbour, stamped with the current iteration; returns bytes sent."""
        self.sent_log.append((neighbour, kind, tuple(sorted(body))))
        return self.transport.send(neighbour, kind, self.iteration, body)

    def receive(self, timeout: float, kinds: frozenset[str] | None = None) -> PeerMessage | None:
        """Next message of this iteration (of one of ``kinds``), or None after ``timeout`` s."""
        held = self._take_held(kinds)
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
            if message.round > self.iteration or (kinds is not None and message.kind not in kinds):
                self._held.append(message)
                continue
            return _peer_message(message)
        return None

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

    def _take_held(self, kinds: frozenset[str] | None) -> PeerMessage | None:
        for index, message in enumerate(self._held):
            if message.round == self.iteration and (kinds is None or message.kind in kinds):
                del self._held[index]
                return _peer_message(message)
        return None


def _peer_message(message: Message) -> PeerMessage:
    return PeerMessage(message.sender, message.kind, message.round, message.body)
