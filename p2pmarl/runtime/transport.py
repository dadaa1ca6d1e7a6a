"""Point-to-point message transport between graph neighbours.

:class:`Transport` is the interface the runtime and the algorithms' peer phase use. Two
implementations: :class:`ZmqTransport` (one ROUTER socket bound per agent, one DEALER per
neighbour; ipc:// on one host, tcp:// when the topology gives addresses) for real runs, and
:class:`MemoryHub`/:class:`MemoryTransport` (thread-safe queues) for unit tests. Both reject, count
and log malformed frames and frames from anyone who is not a graph neighbour.

With :class:`CurveKeys` (on by default for tcp:// runs, see :func:`load_curve_keys`) the ZeroMQ
links are encrypted and authenticated with CURVE: an agent's inbox accepts only connections
that prove they hold a graph neighbour's secret key; any other peer fails the handshake and
nothing of it reaches :meth:`Transport.receive`.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from abc import ABC, abstractmethod
from collections import Counter, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85
from zmq.utils.monitor import recv_monitor_message

from p2pmarl.runtime.codec import CodecError, Message, decode, encode

logger = logging.getLogger(__name__)

HEARTBEAT_INTERVAL = 1.0
"""Seconds between heartbeats to each neighbour while the agent waits on its peers."""
HELLO_INTERVAL = 0.2
"""Seconds between hello retries while the agent waits for its neighbours to appear."""
SEND_HIGH_WATER_MARK = 1000
"""Frames queued per neighbour before sends are dropped (and counted) instead of blocking."""
CONTROL_KINDS = frozenset({"hello", "heartbeat"})
INBOUND_LOSS_GAIN = 1 / 64
"""Weight of one frame in a link's inbound loss estimate (about the last 64 frames count)."""
LOSS_COUNT_LIMIT = 1024
"""Most frames one sequence gap counts as lost (beyond that the estimate is 1 anyway)."""
"""Kinds consumed by the transport itself and never handed to the caller."""
LINK_HEARTBEAT_MS = 500
"""ZeroMQ's own (ZMTP) heartbeat on each link to a neighbour, handled by libzmq's I/O thread, so
it runs while the agent computes."""
RECONNECT_MS = 10
"""How often a link to a lost neighbour tries to reconnect (no back-off): a restarted neighbour
binds its socket when the world takes it back, at the start of an iteration's rollout, and its
neighbours must see it back before their peer phase begins."""
LINK_TIMEOUT_MS = 2000
"""A link with no traffic and no heartbeat answer for this long is closed and the neighbour is
reported down (a host that vanished without closing its sockets). A process that dies on a
reachable host closes its sockets, which is seen at once."""


class PeerTimeout(TimeoutError):
    """Neighbours did not answer within the allowed time."""


class Transport(ABC):
    """Sends messages to graph neighbours and receives theirs, with a timeout on every receive."""

    def __init__(self, agent_id: int, neighbours: Iterable[int]) -> None:
        self.agent_id = agent_id
        self.neighbours = tuple(sorted(neighbours))
        self.rejected: Counter[str] = Counter()
        self.sent_messages = 0
        self.sent_bytes = 0
        self.received_bytes = 0
        self.last_seen: dict[int, float] = {}
        self.disconnects: Counter[int] = Counter()
        """Per neighbour, how often its link was lost (updated by :meth:`peers_down`)."""
        self._next_heartbeat = 0.0
        self._sequence: Counter[int] = Counter()
        """Frames sent per neighbour: each link numbers its own frames 1, 2, 3..."""
        self._last_sequence: dict[int, int] = {}
        self._loss_mean: dict[int, tuple[float, float]] = {}
        self.inbound_loss: dict[int, float] = {}
        """Per neighbour, the estimated fraction of its frames to this agent lost on the way
        (:meth:`_count_sequence`); what :class:`~p2pmarl.runtime.reliable.Redundancy` reads."""
        self._pending: deque[Message] = deque()

    # -- what implementations provide --------------------------------------------------------
    @abstractmethod
    def _send_frame(self, receiver: int, frame: bytes) -> bool:
        """Queue one encoded frame for ``receiver``; False if it had to be dropped."""

    @abstractmethod
    def _receive_frame(self, timeout: float) -> tuple[int | None, bytes] | None:
        """Next raw frame and the neighbour the socket layer says it came from (or None)."""

    def close(self) -> None:
        """Release sockets; the default has none."""

    def peers_down(self) -> frozenset[int]:
        """Neighbours whose link the socket layer reports lost since they were last connected
        (crashed, or unreachable for :data:`LINK_TIMEOUT_MS`); the default knows of none."""
        return frozenset()

    # -- shared behaviour ---------------------------------------------------------------------
    def send(self, receiver: int, kind: str, round: int, body: Mapping[str, Any]) -> int:
        """Send one message to a neighbour; returns the bytes put on the wire (0 if dropped)."""
        if receiver not in self.neighbours:
            raise ValueError(f"agent {self.agent_id}: {receiver} is not a graph neighbour")
        self._sequence[receiver] += 1
        sequence = self._sequence[receiver]
        frame = encode(Message(kind, self.agent_id, receiver, round, sequence, body))
        if not self._send_frame(receiver, frame):
            self.rejected["send_queue_full"] += 1
            return 0
        self.sent_messages += 1
        self.sent_bytes += len(frame)
        return len(frame)

    def receive(self, timeout: float) -> Message | None:
        """Next valid message from a neighbour, or None once ``timeout`` seconds have passed.

        Heartbeats and hellos are consumed here; malformed frames and strangers are rejected,
        counted in :attr:`rejected` by reason and logged, never raised.
        """
        if self._pending:
            return self._pending.popleft()
        deadline = time.monotonic() + timeout
        while True:
            self._maybe_heartbeat()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            got = self._receive_frame(min(remaining, HEARTBEAT_INTERVAL))
            if got is None:
                continue
            message = self._accept(*got)
            if message is not None and message.kind not in CONTROL_KINDS:
                return message

    def wait_connected(self, timeout: float) -> float:
        """Say hello until every neighbour has been heard from; returns seconds taken."""
        start = time.monotonic()
        missing = set(self.neighbours)
        next_hello = 0.0
        while missing:
            now = time.monotonic()
            if now - start > timeout:
                raise PeerTimeout(
                    f"agent {self.agent_id}: no word from neighbours {sorted(missing)} "
                    f"after {timeout:.0f} s"
                )
            if now >= next_hello:
                for neighbour in missing:
                    self.send(neighbour, "hello", 0, {})
                next_hello = now + HELLO_INTERVAL
            got = self._receive_frame(HELLO_INTERVAL)
            if got is not None:
                message = self._accept(*got)
                if message is not None and message.kind not in CONTROL_KINDS:
                    self._pending.append(message)
            missing -= set(self.last_seen)
        # Neighbours that connected late still need one hello from us to finish their wait.
        for neighbour in self.neighbours:
            self.send(neighbour, "hello", 0, {})
        return time.monotonic() - start

    def _maybe_heartbeat(self) -> None:
        now = time.monotonic()
        if now < self._next_heartbeat:
            return
        self._next_heartbeat = now + HEARTBEAT_INTERVAL
        for neighbour in self.neighbours:
            self.send(neighbour, "heartbeat", 0, {})

    def _accept(self, link_sender: int | None, frame: bytes) -> Message | None:
        self.received_bytes += len(frame)
        try:
            message = decode(frame)
        except CodecError as error:
            return self._reject(error.reason, f"from link {link_sender}: {error.detail}")
        if message.sender not in self.neighbours:
            return self._reject("not_neighbour", f"sender {message.sender}")
        if link_sender is not None and link_sender != message.sender:
            return self._reject(
                "spoofed_sender", f"link {link_sender} claims sender {message.sender}"
            )
        if message.receiver != self.agent_id:
            return self._reject("wrong_receiver", f"addressed to {message.receiver}")
        self.last_seen[message.sender] = time.monotonic()
        self._count_sequence(message.sender, message.sequence)
        return message

    def _count_sequence(self, sender: int, sequence: int) -> None:
        """Update the inbound loss estimate of ``sender``'s link with one received frame: the
        frames it numbered between the last one received and this one never came. An
        exponentially weighted mean over frames (gain :data:`INBOUND_LOSS_GAIN`) of lost = 1,
        received = 0, divided by its total weight (so that the first frames are not read as
        a loss-free history, as in Adam's bias correction). The first frame of a link, or a
        sequence number far below the last one (a restarted process numbering from 1 again),
        counts nothing lost; a late frame (delayed behind later ones) is ignored."""
        last = self._last_sequence.get(sender)
        if last is not None and sequence <= last:
            if sequence < last // 2:  # a restarted neighbour
                self._last_sequence[sender] = sequence
            return
        lost = 0 if last is None else min(sequence - last - 1, LOSS_COUNT_LIMIT)
        self._last_sequence[sender] = sequence
        keep = 1 - INBOUND_LOSS_GAIN
        mean, weight = self._loss_mean.get(sender, (0.0, 0.0))
        kept = keep**lost  # ``lost`` samples of 1, then this frame's 0
        mean, weight = kept * mean + (1 - kept), kept * weight + (1 - kept)
        mean, weight = keep * mean, keep * weight + (1 - keep)
        self._loss_mean[sender] = (mean, weight)
        self.inbound_loss[sender] = mean / weight  # bias-corrected: the mean starts at 0

    def _reject(self, reason: str, detail: str) -> None:
        self.rejected[reason] += 1
        logger.warning("agent %d rejected a message (%s): %s", self.agent_id, reason, detail)
        return None


def identity_of(agent_id: int) -> bytes:
    """ZeroMQ routing identity of an agent's outgoing sockets."""
    return f"agent-{agent_id}".encode()


def agent_of(identity: bytes) -> int | None:
    """Inverse of :func:`identity_of`; None for identities that are not agents."""
    text = identity.decode("ascii", errors="replace")
    prefix, _, number = text.partition("-")
    if prefix != "agent" or not number.isdigit():
        return None
    return int(number)


def _z85_key(key: bytes | str) -> bytes:
    """A CURVE key as 40 bytes of z85 text (accepts z85 text or the 32 raw bytes)."""
    if isinstance(key, str):
        key = key.encode("ascii")
    if len(key) == 32:
        key = z85.encode(key)
    if len(key) != 40:
        raise ValueError(f"a CURVE key is 32 raw bytes or 40 z85 characters, not {len(key)}")
    return key


@dataclass(frozen=True)
class CurveKeys:
    """One agent's CURVE key pair and its graph neighbours' public keys (z85 text, bytes)."""

    public: bytes
    secret: bytes
    neighbours: dict[int, bytes] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "public", _z85_key(self.public))
        object.__setattr__(self, "secret", _z85_key(self.secret))
        object.__setattr__(
            self, "neighbours", {int(a): _z85_key(k) for a, k in self.neighbours.items()}
        )


class _NeighbourKeys:
    """ZAP credentials provider: admits exactly the given public keys (z85)."""

    def __init__(self, agent_id: int, allowed: Iterable[bytes]) -> None:
        self.agent_id = agent_id
        self.allowed = frozenset(allowed)

    def callback(self, domain: str, key: bytes) -> bool:
        if key in self.allowed:
            return True
        logger.warning(
            "agent %d refused a CURVE connection from an unknown key %s",
            self.agent_id,
            key.decode("ascii", errors="replace"),
        )
        return False


KEYS_DIR = "keys"
"""Folder of RUN_DIR with ``agent-I.key`` (own key pair) and ``public.json`` (everyone's)."""


def agent_key_file(run_dir_root: str | Path, agent_id: int) -> Path:
    return Path(run_dir_root) / KEYS_DIR / f"agent-{agent_id}.key"


def public_keys_file(run_dir_root: str | Path) -> Path:
    return Path(run_dir_root) / KEYS_DIR / "public.json"


def load_curve_keys(
    run_dir_root: str | Path, agent_id: int, neighbours: Iterable[int]
) -> CurveKeys | None:
    """This agent's CURVE keys as the launcher wrote them; None when the run has no keys folder."""
    if not (Path(run_dir_root) / KEYS_DIR).is_dir():
        return None
    own = json.loads(agent_key_file(run_dir_root, agent_id).read_text())
    public = json.loads(public_keys_file(run_dir_root).read_text())
    if own["public"] != public[str(agent_id)]:
        raise ValueError(f"agent {agent_id}: key file and public.json disagree")
    return CurveKeys(
        public=own["public"].encode("ascii"),
        secret=own["secret"].encode("ascii"),
        neighbours={n: public[str(n)].encode("ascii") for n in neighbours},
    )


class ZmqTransport(Transport):
    """ZeroMQ transport: bind a ROUTER at our endpoint, connect a DEALER to each neighbour's.

    With ``curve`` the ROUTER is a CURVE server whose ZAP handler admits only the neighbours'
    public keys, and each DEALER is a CURVE client of that neighbour. The ZAP handler is bound
    per context, so a CURVE transport without an explicit ``context`` gets its own, closed in
    :meth:`close`.
    """

    def __init__(
        self,
        agent_id: int,
        endpoints: Mapping[int, str],
        neighbours: Iterable[int],
        context: zmq.Context | None = None,
        curve: CurveKeys | None = None,
    ) -> None:
        super().__init__(agent_id, neighbours)
        self._own_context = curve is not None and context is None
        if self._own_context:
            self._context = zmq.Context()
        else:
            self._context = context or zmq.Context.instance()
        self._authenticator: ThreadAuthenticator | None = None
        self._outboxes: dict[int, zmq.Socket] = {}
        self._monitors: dict[int, zmq.Socket] = {}
        self._down: set[int] = set()
        self._inbox: zmq.Socket | None = None
        try:
            self._open(endpoints, curve)
        except BaseException:
            self.close()
            raise
        self._poller = zmq.Poller()
        self._poller.register(self._inbox, zmq.POLLIN)

    def _open(self, endpoints: Mapping[int, str], curve: CurveKeys | None) -> None:
        agent_id = self.agent_id
        if curve is not None:
            if not zmq.has("curve"):
                raise RuntimeError("this libzmq has no CURVE support; cannot secure tcp:// links")
            missing = [n for n in self.neighbours if n not in curve.neighbours]
            if missing:
                raise ValueError(f"agent {agent_id}: no public key for neighbours {missing}")
            self._authenticator = ThreadAuthenticator(self._context, log=logger)
            self._authenticator.start()
            self._authenticator.configure_curve_callback(
                domain="*",
                credentials_provider=_NeighbourKeys(
                    agent_id, (curve.neighbours[n] for n in self.neighbours)
                ),
            )
        self._inbox = self._context.socket(zmq.ROUTER)
        self._inbox.setsockopt(zmq.LINGER, 0)
        self._inbox.setsockopt(zmq.RCVHWM, SEND_HIGH_WATER_MARK * 4)
        if curve is not None:
            self._inbox.curve_secretkey = curve.secret
            self._inbox.curve_publickey = curve.public
            self._inbox.curve_server = True
        self._inbox.bind(endpoints[agent_id])
        for neighbour in self.neighbours:
            socket = self._context.socket(zmq.DEALER)
            self._outboxes[neighbour] = socket
            socket.setsockopt(zmq.LINGER, 0)
            socket.setsockopt(zmq.SNDHWM, SEND_HIGH_WATER_MARK)
            socket.setsockopt(zmq.IDENTITY, identity_of(agent_id))
            socket.setsockopt(zmq.HEARTBEAT_IVL, LINK_HEARTBEAT_MS)
            socket.setsockopt(zmq.HEARTBEAT_TIMEOUT, LINK_TIMEOUT_MS)
            socket.setsockopt(zmq.RECONNECT_IVL, RECONNECT_MS)
            if curve is not None:
                socket.curve_secretkey = curve.secret
                socket.curve_publickey = curve.public
                socket.curve_serverkey = curve.neighbours[neighbour]
            self._monitors[neighbour] = socket.get_monitor_socket(
                zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED
            )
            socket.connect(endpoints[neighbour])
        self._poller = zmq.Poller()
        self._poller.register(self._inbox, zmq.POLLIN)

    def _send_frame(self, receiver: int, frame: bytes) -> bool:
        try:
            self._outboxes[receiver].send(frame, zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return False
        return True

    def _receive_frame(self, timeout: float) -> tuple[int | None, bytes] | None:
        if not self._poller.poll(max(0, int(timeout * 1000))):
            return None
        parts = self._inbox.recv_multipart(copy=True)
        if len(parts) != 2:
            self.rejected["bad_frames"] += 1
            return None
        return agent_of(parts[0]), parts[1]

    def peers_down(self) -> frozenset[int]:
        """Read the link monitors: a disconnect marks the neighbour down, a (re)connect up."""
        for neighbour, monitor in self._monitors.items():
            while monitor.poll(0):
                event = recv_monitor_message(monitor, zmq.NOBLOCK)["event"]
                if event == zmq.EVENT_DISCONNECTED and neighbour not in self._down:
                    self._down.add(neighbour)
                    self.disconnects[neighbour] += 1
                    logger.warning("agent %d: link to neighbour %d lost", self.agent_id, neighbour)
                elif event == zmq.EVENT_CONNECTED and neighbour in self._down:
                    self._down.discard(neighbour)
                    logger.info("agent %d: neighbour %d is back", self.agent_id, neighbour)
        return frozenset(self._down)

    def close(self) -> None:
        for neighbour, monitor in self._monitors.items():
            self._outboxes[neighbour].disable_monitor()
            monitor.close(linger=0)
        self._monitors.clear()
        for socket in self._outboxes.values():
            socket.close(linger=0)
        if self._inbox is not None:
            self._inbox.close(linger=0)
        if self._authenticator is not None:
            self._authenticator.stop()
            self._authenticator = None
        if self._own_context:
            self._context.term()
            self._own_context = False


class MemoryHub:
    """In-process switchboard for :class:`MemoryTransport`: one queue per agent."""

    def __init__(self) -> None:
        self._queues: dict[int, queue.Queue[tuple[int, bytes]]] = {}
        self._lock = threading.Lock()
        self.down: set[int] = set()
        """Agents whose links every neighbour sees as lost (tests set it to simulate a crash)."""

    def inbox(self, agent_id: int) -> queue.Queue[tuple[int, bytes]]:
        with self._lock:
            return self._queues.setdefault(agent_id, queue.Queue())

    def transport(self, agent_id: int, neighbours: Iterable[int]) -> MemoryTransport:
        return MemoryTransport(self, agent_id, neighbours)

    def inject(self, receiver: int, link_sender: int, frame: bytes) -> None:
        """Deliver raw bytes as if ``link_sender`` had sent them (for hostile-input tests)."""
        self.inbox(receiver).put((link_sender, frame))


class MemoryTransport(Transport):
    """Same interface as :class:`ZmqTransport` over in-process queues (unit tests)."""

    def __init__(self, hub: MemoryHub, agent_id: int, neighbours: Iterable[int]) -> None:
        super().__init__(agent_id, neighbours)
        self._hub = hub
        self._inbox = hub.inbox(agent_id)

    def _send_frame(self, receiver: int, frame: bytes) -> bool:
        self._hub.inbox(receiver).put((self.agent_id, frame))
        return True

    def peers_down(self) -> frozenset[int]:
        return frozenset(self._hub.down & set(self.neighbours))

    def _receive_frame(self, timeout: float) -> tuple[int | None, bytes] | None:
        try:
            return self._inbox.get(timeout=timeout)
        except queue.Empty:
            return None
