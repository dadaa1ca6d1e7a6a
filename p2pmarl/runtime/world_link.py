"""The star-shaped link between the world process and the agents (not part of the peer graph).

Two carriers of the same messages: on one host (``unix://`` endpoints, the default) the world
listens on a Unix-domain socket and each agent connects one stream (``unix_frames.py``); across
hosts or under Ray (``ipc://``/``tcp://`` endpoints, or ``--world-link zmq``) the world binds a
ZeroMQ ROUTER and each agent connects a DEALER whose identity is its agent id. Only
observations, own rewards, done flags and joint actions go down; only actions and "ready" go up.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter, deque
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import zmq
from zmq.auth.thread import ThreadAuthenticator

from p2pmarl.runtime.codec import WORLD, CodecError, Message, decode, encode
from p2pmarl.runtime.transport import (
    KEYS_DIR,
    CurveKeys,
    _NeighbourKeys,
    agent_key_file,
    agent_of,
    identity_of,
    public_keys_file,
)
from p2pmarl.runtime.unix_frames import SCHEME as UNIX_SCHEME
from p2pmarl.runtime.unix_frames import FrameClient, FrameServer, LinkClosed, socket_path

logger = logging.getLogger(__name__)


CLOSE_LINGER_MS = 1000
"""How long closing the world socket may wait for queued frames to go out."""
PROBE_INTERVAL = 0.5
"""While a gather waits longer than this, the world pings the agents it waits for: a send to an
agent whose process is gone fails at once (its socket closed, ROUTER_MANDATORY), so a crashed
agent is found within this interval instead of at the gather's timeout."""
PING = "ping"
"""World → agent liveness probe; agents drop it silently."""
REJOIN = "rejoin"
"""Agent → world: a restarted agent asks to take part again from the next iteration."""
WELCOME = "welcome"
"""World → agent: the answer to a rejoin, sent just before the first step message of the
iteration (its round) that the agent joins; step messages before it are not the agent's."""


def acting_chunks(n_envs: int) -> list[range]:
    """The row chunks an agent acts on, in order, within one step: two halves of the K copies
    (one if K = 1).

    The world sends every copy of a step in one message and takes every action back in one
    reply; an agent whose variant draws more than one kind of number per ``act`` call (C-TRPO's
    joint heads; ``AgentAlgorithm.draws_row_by_row`` False) still calls ``act`` once per half, in
    this order, because that is the order in which the earlier pipelined protocol (one message
    per half) drew its random numbers, and seeded runs would change otherwise
    (``tests/test_golden.py``). The others act once on all copies, which draws the same.
    """
    half = (n_envs + 1) // 2
    return [range(0, half), range(half, n_envs)] if n_envs > 1 else [range(0, n_envs)]


WORLD_KEY = "world"
"""Name of the world's key pair in a run spread over hosts: ``keys/world.key`` (its secret, on
the world's host only) and ``public.json["world"]`` (made by ``p2pmarl keys``)."""


def world_key_file(run_dir_root: str | Path) -> Path:
    return Path(run_dir_root) / KEYS_DIR / f"{WORLD_KEY}.key"


def load_world_server_keys(run_dir_root: str | Path, n_agents: int) -> CurveKeys | None:
    """The world's CURVE key pair and every agent's public key; None without ``world.key``
    (a run on one host, whose world link is an ipc:// socket)."""
    path = world_key_file(run_dir_root)
    if not path.exists():
        return None
    own = json.loads(path.read_text())
    public = json.loads(public_keys_file(run_dir_root).read_text())
    return CurveKeys(own["public"], own["secret"], {a: public[str(a)] for a in range(n_agents)})


def load_world_client_keys(run_dir_root: str | Path, agent_id: int) -> CurveKeys | None:
    """An agent's key pair and the world's public key (as ``neighbours[WORLD]``); None when the
    run's public keys have no world key (a run on one host)."""
    path = public_keys_file(run_dir_root)
    if not path.exists():
        return None
    public = json.loads(path.read_text())
    if WORLD_KEY not in public:
        return None
    own = json.loads(agent_key_file(run_dir_root, agent_id).read_text())
    return CurveKeys(own["public"], own["secret"], {WORLD: public[WORLD_KEY]})


def _receive_frames(
    socket: zmq.Socket, poller: zmq.Poller, timeout: float, multipart: bool = False
) -> Any:
    """The next frame (``multipart``: list of frames) on ``socket``, waiting up to ``timeout``
    seconds; None if none came. A frame already queued is taken without a poll: during a
    rollout the answer is usually there by the time it is asked for, and a poll costs a
    system call and a Python round trip per message."""
    receive = socket.recv_multipart if multipart else socket.recv
    try:
        return receive(zmq.NOBLOCK)
    except zmq.Again:
        pass
    if not poller.poll(max(0, int(timeout * 1000))):
        return None
    return receive()


class LinkTimeout(TimeoutError):
    """The other side of the world link did not answer in time."""


class _RouterFrames:
    """ZeroMQ carrier of the world's side: one ROUTER socket (ipc://, or tcp:// with CURVE)."""

    def __init__(self, endpoint: str, context: zmq.Context | None, curve: CurveKeys | None
                 ) -> None:
        """With ``curve`` (tcp:// across hosts) the socket is a CURVE server that admits only
        the agents' public keys (``curve.neighbours``)."""
        context = context or zmq.Context.instance()
        self._authenticator: ThreadAuthenticator | None = None
        self._socket = context.socket(zmq.ROUTER)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
        if curve is not None:
            self._authenticator = ThreadAuthenticator(context, log=logger)
            self._authenticator.start()
            self._authenticator.configure_curve_callback(
                domain="*", credentials_provider=_NeighbourKeys(WORLD, curve.neighbours.values())
            )
            self._socket.curve_secretkey = curve.secret
            self._socket.curve_publickey = curve.public
            self._socket.curve_server = True
        self._socket.bind(endpoint)
        self._poller = zmq.Poller()
        self._poller.register(self._socket, zmq.POLLIN)

    def send(self, identity: bytes, frame: bytes) -> bool:
        try:
            self._socket.send_multipart([identity, frame], zmq.NOBLOCK)
        except (zmq.Again, zmq.ZMQError):
            return False
        return True

    def receive(self, timeout: float) -> list[bytes] | None:
        return _receive_frames(self._socket, self._poller, timeout, multipart=True)

    def take_closed(self) -> set[bytes]:
        """ZeroMQ does not tell: a gone agent is found when a send to it fails (probes)."""
        return set()

    def close(self, linger: float) -> None:
        self._socket.close(linger=int(linger * 1000))
        if self._authenticator is not None:
            self._authenticator.stop()
            self._authenticator = None


class WorldServer:
    """World side: talks to every agent over one carrier (``unix://``: a Unix socket; else a
    ZeroMQ ROUTER)."""

    def __init__(
        self, endpoint: str, n_agents: int, context: zmq.Context | None = None,
        curve: CurveKeys | None = None,
    ) -> None:
        """With ``curve`` (tcp:// across hosts) the world admits only the agents' public keys
        (``curve.neighbours``); a ``unix://`` endpoint takes no keys (one host only)."""
        self.n_agents = n_agents
        self.rejected: Counter[str] = Counter()
        self.lost: set[int] = set()
        """Agents found unreachable (their process is gone); the world decides what follows."""
        self.seen: set[int] = set()
        """Agents heard from at least once. One not yet heard from is not lost when a send to it
        fails, only not connected yet (its host may start later): the first gather's timeout
        decides about it."""
        self._held: dict[int, deque[Message]] = {}
        if endpoint.startswith(UNIX_SCHEME):
            if curve is not None:
                raise ValueError("a unix:// world link is local; CURVE keys need tcp://")
            self._frames: _RouterFrames | FrameServer = FrameServer(
                socket_path(endpoint), self._reject
            )
        else:
            self._frames = _RouterFrames(endpoint, context, curve)

    def send(self, agent: int, kind: str, round: int, body: Mapping[str, Any]) -> bool:
        """Send to one agent; False if the agent is not connected (yet, or any more)."""
        return self._send_frame(agent, encode(Message(kind, WORLD, agent, round, 0, body)))

    def send_each(self, kind: str, round: int, bodies: Mapping[int, Mapping[str, Any]]) -> None:
        """One message to each agent of ``bodies``: every frame is encoded before the first
        goes out, so the agents woken by the first frames (which may take the world's core)
        do not hold up the others' frames behind the world's encoding."""
        frames = {a: encode(Message(kind, WORLD, a, round, 0, b)) for a, b in bodies.items()}
        for agent, frame in frames.items():
            self._send_frame(agent, frame)

    def _send_frame(self, agent: int, frame: bytes) -> bool:
        if self._frames.send(identity_of(agent), frame):
            return True
        self.rejected["agent_unreachable"] += 1
        self._unreachable(agent)
        return False

    def _unreachable(self, agent: int) -> None:
        """A send to ``agent`` failed, or its connection closed: lost, if it was ever seen."""
        if agent not in self.seen:
            return
        if agent not in self.lost:
            logger.warning("world: agent %d is unreachable", agent)
        self.lost.add(agent)

    def gather(
        self,
        kind: str,
        round: int,
        timeout: float,
        agents: Iterable[int] | None = None,
        probe: bool = True,
    ) -> dict[int, Message]:
        """Wait for one ``kind`` message of ``round`` from each agent, or raise LinkTimeout.

        An agent may run ahead (pipelined rollouts): its later messages are held, in order, for
        the next gather instead of being dropped. An agent found lost while waiting (see
        :data:`PROBE_INTERVAL`) is left out: the result then lacks it and it is in :attr:`lost`.
        ``probe=False`` (the first gather, while the agents connect) sends no probes: an agent
        that has not connected yet is unreachable without being lost.
        """
        waiting = set(range(self.n_agents) if agents is None else agents) - self.lost
        received: dict[int, Message] = {}
        for agent in sorted(waiting):
            if self._held.get(agent):
                self._take(self._held[agent].popleft(), kind, round, waiting, received)
        started = time.monotonic()
        deadline = started + timeout
        next_probe = started + PROBE_INTERVAL if probe else deadline
        while waiting:
            now = time.monotonic()
            if probe and now >= next_probe:
                for agent in sorted(waiting):
                    self.send(agent, PING, round, {})
                waiting -= self.lost
                next_probe = now + PROBE_INTERVAL
                continue
            remaining = deadline - now
            if remaining <= 0:
                raise LinkTimeout(
                    f"world: no {kind!r} from agents {sorted(waiting)} within {timeout:.0f} s"
                )
            message = self._receive(min(remaining, next_probe - now))
            waiting -= self.lost  # a closed unix:// connection is known at once
            if message is None:
                continue
            if message.kind == REJOIN:
                self._restarted(message)
                waiting.discard(message.sender)
                continue
            if message.sender not in waiting:
                self._held.setdefault(message.sender, deque()).append(message)
                continue
            self._take(message, kind, round, waiting, received)
        return received

    def _restarted(self, message: Message) -> None:
        """A rejoin proves the agent's earlier process gone, even if its restart reconnected
        before any send to it failed: it counts as lost until the world takes it back."""
        if message.sender not in self.lost:
            logger.warning("world: agent %d restarted; its earlier process is lost",
                           message.sender)
        self.lost.add(message.sender)
        self._held[message.sender] = deque([message])

    def collect_rejoins(self, eligible: Iterable[int]) -> list[int]:
        """Lost agents among ``eligible`` that have asked to rejoin (a ``rejoin`` message); they
        are no longer lost. Others' requests stay for a later call.

        Reads what is queued without waiting. Whatever a rejoining agent sent in its earlier life
        is discarded.
        """
        while (message := self._receive(0.0)) is not None:
            if message.kind == REJOIN:
                self._restarted(message)
            else:
                self._held.setdefault(message.sender, deque()).append(message)
        back = []
        for agent in sorted(self.lost & set(eligible)):
            held = self._held.get(agent, deque())
            if any(m.kind == REJOIN for m in held):
                self._held[agent] = deque()
                self.lost.discard(agent)
                back.append(agent)
        return back

    def _take(
        self,
        message: Message,
        kind: str,
        round: int,
        waiting: set[int],
        received: dict[int, Message],
    ) -> None:
        if message.kind != kind or message.round != round:
            self._reject("unexpected", f"{message.kind} r{message.round} from {message.sender}")
            return
        received[message.sender] = message
        waiting.discard(message.sender)

    def _receive(self, timeout: float) -> Message | None:
        parts = self._frames.receive(timeout)
        for identity in self._frames.take_closed():
            agent = agent_of(identity)
            if agent is not None:
                self._unreachable(agent)
        if parts is None:
            return None
        if len(parts) != 2:
            return self._reject("bad_frames", f"{len(parts)} frames")
        sender = agent_of(parts[0])
        try:
            message = decode(parts[1])
        except CodecError as error:
            return self._reject(error.reason, error.detail)
        if sender is None or sender != message.sender or not 0 <= sender < self.n_agents:
            return self._reject("spoofed_sender", f"link {parts[0]!r} claims {message.sender}")
        self.seen.add(sender)
        return message

    def _reject(self, reason: str, detail: str) -> None:
        self.rejected[reason] += 1
        logger.warning("world rejected a message (%s): %s", reason, detail)
        return None

    def close(self) -> None:
        """Close after queued frames (the final ``stop``s) are delivered, for up to a second."""
        self._frames.close(CLOSE_LINGER_MS / 1000)


class _DealerFrames:
    """ZeroMQ carrier of an agent's side: one DEALER socket whose identity is the agent's."""

    def __init__(self, endpoint: str, identity: bytes, context: zmq.Context | None,
                 curve: CurveKeys | None) -> None:
        """With ``curve``: a CURVE client of the world (server key ``curve.neighbours[WORLD]``)."""
        self._socket = (context or zmq.Context.instance()).socket(zmq.DEALER)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.setsockopt(zmq.IDENTITY, identity)
        if curve is not None:
            self._socket.curve_secretkey = curve.secret
            self._socket.curve_publickey = curve.public
            self._socket.curve_serverkey = curve.neighbours[WORLD]
        self._socket.connect(endpoint)
        self._poller = zmq.Poller()
        self._poller.register(self._socket, zmq.POLLIN)

    def send(self, frame: bytes) -> None:
        self._socket.send(frame)

    def receive(self, timeout: float) -> bytes | None:
        return _receive_frames(self._socket, self._poller, timeout)

    def close(self) -> None:
        self._socket.close(linger=0)


class WorldClient:
    """Agent side of the world link."""

    def __init__(
        self, endpoint: str, agent_id: int, context: zmq.Context | None = None,
        curve: CurveKeys | None = None, connect_timeout: float = 60.0,
    ) -> None:
        """``unix://``: a stream to the world's socket, connected at the first use within
        ``connect_timeout`` seconds; else a ZeroMQ DEALER (with ``curve``: a CURVE client)."""
        self.agent_id = agent_id
        self.rejected: Counter[str] = Counter()
        if endpoint.startswith(UNIX_SCHEME):
            if curve is not None:
                raise ValueError("a unix:// world link is local; CURVE keys need tcp://")
            self._frames: _DealerFrames | FrameClient = FrameClient(
                socket_path(endpoint), identity_of(agent_id), connect_timeout
            )
        else:
            self._frames = _DealerFrames(endpoint, identity_of(agent_id), context, curve)
        self._early: Message | None = None
        """A world message taken by :meth:`arrived` and not yet handed out by :meth:`receive`."""

    def send(self, kind: str, round: int, body: Mapping[str, Any]) -> None:
        try:
            self._frames.send(encode(Message(kind, self.agent_id, WORLD, round, 0, body)))
        except (LinkClosed, TimeoutError) as error:
            raise LinkTimeout(f"agent {self.agent_id}: {error}") from error

    def arrived(self) -> bool:
        """Whether a world message (not a liveness ping) has arrived, without waiting; it is
        kept and :meth:`receive` returns it next. After this agent's ``ready``, the world's next
        message (the next step, or ``stop``) means every live agent has sent its ``ready``, i.e.
        finished its peer phase: the runtime's end-of-phase linger stops there."""
        if self._early is None:
            try:
                self._early = self._next(0.0)
            except LinkTimeout:  # the world is gone: nothing to linger for; receive raises
                return True
        return self._early is not None

    def receive(self, kinds: frozenset[str], timeout: float) -> Message:
        """Next message of one of ``kinds`` from the world, or LinkTimeout."""
        deadline = time.monotonic() + timeout
        while True:
            message, self._early = self._early or self._next(deadline - time.monotonic()), None
            if message is not None:
                if message.kind in kinds:
                    return message
                self.rejected["unexpected"] += 1
                logger.warning("agent %d ignored %s from the world", self.agent_id, message.kind)
            if time.monotonic() >= deadline:
                raise LinkTimeout(
                    f"agent {self.agent_id}: no {sorted(kinds)} from the world within "
                    f"{timeout:.0f} s"
                )

    def _next(self, timeout: float) -> Message | None:
        """The next valid world message other than a ping within ``timeout`` s (0: only one
        already queued), or None."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                frame = self._frames.receive(max(deadline - time.monotonic(), 0.0))
            except (LinkClosed, TimeoutError) as error:
                raise LinkTimeout(f"agent {self.agent_id}: {error}") from error
            if frame is None:
                return None
            try:
                message = decode(frame)
            except CodecError as error:
                self.rejected[error.reason] += 1
                logger.warning("agent %d rejected a world frame: %s", self.agent_id, error)
                continue
            if message.sender != WORLD:
                self.rejected["unexpected"] += 1
                logger.warning("agent %d ignored %s from %d", self.agent_id, message.kind,
                               message.sender)
                continue
            if message.kind != PING:
                return message

    def close(self) -> None:
        self._frames.close()
