"""Length-prefixed frames over a Unix-domain stream socket: the world link of a run on one host.

The world link is lock-step: every environment step is one round trip world → agents → world,
so the wake-ups a message costs lie on the rollout's critical path. A ZeroMQ message crosses the
sender's and the receiver's I/O threads (three thread wake-ups per hop); a frame written to a
Unix socket wakes only the receiving thread. On the 2-core machine of ``docs/benchmarks.md`` a
bare round trip world → 3 processes → world took about 430 µs with ZeroMQ (ipc://) and 270 µs
with this module at load 10 (issue 15, session 23). Runs spread over hosts, or started by Ray,
keep ZeroMQ over tcp:// with CURVE (``world_link.py``).

Wire: a 4-byte little-endian length, then that many bytes (one codec frame). A client's first
frame is its identity (``transport.identity_of``); the server ties the connection to it, and a
later connection with the same identity (a restarted agent) replaces it. A connection that
closes is reported at once (:meth:`FrameServer.take_closed`): the process on the other side is
gone, found without probing. Nothing here is encrypted: the socket file lives in the run's
private socket folder (mode 0700), like the ipc:// sockets it replaces.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import select
import socket
import struct
import time
from collections import deque
from collections.abc import Callable

SCHEME = "unix://"
"""Endpoint prefix of this link: ``unix:///tmp/p2pmarl-xxxx/world.sock``."""
HEADER = struct.Struct("<I")
MAX_FRAME_BYTES = 256 * 1024 * 1024
"""A length above this (codec.MAX_MESSAGE_BYTES) is a broken stream: the connection is closed."""
MAX_OUTBOX_BYTES = 64 * 1024 * 1024
"""Bytes queued for a peer that does not read; beyond this a send fails (the peer is stuck)."""
READ_BYTES = 1 << 20
CONNECT_RETRY_SECONDS = (0.005, 0.2)
"""First and longest pause between connection attempts while the server is not listening yet."""
SEND_TIMEOUT = 60.0
"""Longest a client's send may block on a server that does not read."""

Reject = Callable[[str, str], None]


class LinkClosed(ConnectionError):
    """The other side closed the link (its process ended, or it found the stream broken)."""


def socket_path(endpoint: str) -> str:
    """The file path of a ``unix://`` endpoint."""
    if not endpoint.startswith(SCHEME):
        raise ValueError(f"not a {SCHEME} endpoint: {endpoint!r}")
    return endpoint[len(SCHEME):]


class _Stream:
    """One connected socket: bytes read but not yet framed, and bytes not yet written."""

    def __init__(self, sock: socket.socket) -> None:
        self.socket = sock
        self.inbox = bytearray()
        self.outbox = bytearray()
        self.identity: bytes | None = None

    def read(self) -> bool:
        """Read what is there without blocking; False when the other side has closed."""
        try:
            data = self.socket.recv(READ_BYTES)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            return False
        if not data:
            return False
        self.inbox += data
        return True

    def frames(self) -> tuple[list[bytes], str | None]:
        """Every complete frame in the inbox, in order, and what breaks the stream after them
        (an impossible length), if anything."""
        frames: list[bytes] = []
        while len(self.inbox) >= HEADER.size:
            (length,) = HEADER.unpack_from(self.inbox)
            if length > MAX_FRAME_BYTES:
                return frames, f"frame length {length} exceeds {MAX_FRAME_BYTES}"
            end = HEADER.size + length
            if len(self.inbox) < end:
                break
            frames.append(bytes(self.inbox[HEADER.size:end]))
            del self.inbox[:end]
        return frames, None

    def write(self, frame: bytes) -> None:
        """Queue ``frame`` and write as much as the socket takes now (OSError if it is gone)."""
        self.outbox += HEADER.pack(len(frame))
        self.outbox += frame
        self.flush()

    def flush(self) -> None:
        while self.outbox:
            try:
                sent = self.socket.send(self.outbox)
            except (BlockingIOError, InterruptedError):
                return
            del self.outbox[:sent]


class FrameServer:
    """The world's side: listens on a socket file and talks to every connected agent."""

    def __init__(self, path: str, reject: Reject) -> None:
        """``reject(reason, detail)`` is told of every connection dropped for a broken stream."""
        self.path = path
        self._reject = reject
        if os.path.exists(path):
            os.unlink(path)
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(path)
        self._listener.listen(1024)
        self._listener.setblocking(False)
        self._poller = select.poll()
        self._poller.register(self._listener, select.POLLIN)
        self._streams: dict[int, _Stream] = {}
        self._by_identity: dict[bytes, _Stream] = {}
        self._ready: deque[list[bytes]] = deque()
        self._closed: set[bytes] = set()

    def send(self, identity: bytes, frame: bytes) -> bool:
        """Queue a frame for ``identity``; False if it is not connected (yet, or any more), or
        has left more than :data:`MAX_OUTBOX_BYTES` unread."""
        stream = self._by_identity.get(identity)
        if stream is None or len(stream.outbox) > MAX_OUTBOX_BYTES:
            return False
        try:
            stream.write(frame)
        except OSError:
            self._drop(stream)
            return False
        if stream.outbox:
            self._poller.modify(stream.socket, select.POLLIN | select.POLLOUT)
        return True

    def receive(self, timeout: float) -> list[bytes] | None:
        """The next ``[identity, frame]`` from any connected client within ``timeout`` seconds
        (0: only what has arrived), or None: at the timeout, or as soon as a connection closes
        (see :meth:`take_closed`)."""
        deadline = time.monotonic() + timeout
        while not self._ready:
            remaining = deadline - time.monotonic()
            events = self._poller.poll(max(0, math.ceil(remaining * 1000)))
            for descriptor, mask in events:
                self._handle(descriptor, mask)
            if not self._ready and (remaining <= 0 or self._closed):
                return None
        return self._ready.popleft()

    def take_closed(self) -> set[bytes]:
        """Identities whose connection closed since the last call (their processes are gone)."""
        closed, self._closed = self._closed, set()
        return closed

    def _handle(self, descriptor: int, mask: int) -> None:
        if descriptor == self._listener.fileno():
            self._accept()
            return
        stream = self._streams.get(descriptor)
        if stream is None:
            return
        if mask & select.POLLOUT:
            try:
                stream.flush()
            except OSError:
                self._drop(stream)
                return
            if not stream.outbox:
                self._poller.modify(stream.socket, select.POLLIN)
        if mask & (select.POLLIN | select.POLLHUP | select.POLLERR):
            alive = stream.read()
            frames, broken = stream.frames()
            for frame in frames:
                self._take(stream, frame)
            if broken:
                self._reject("bad_frames", broken)
            if broken or not alive:
                self._drop(stream)

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            sock.setblocking(False)
            self._streams[sock.fileno()] = _Stream(sock)
            self._poller.register(sock, select.POLLIN)

    def _take(self, stream: _Stream, frame: bytes) -> None:
        if stream.identity is None:  # the hello
            stream.identity = frame
            self._by_identity[frame] = stream
            return
        self._ready.append([stream.identity, frame])

    def _drop(self, stream: _Stream) -> None:
        descriptor = stream.socket.fileno()
        if self._streams.pop(descriptor, None) is None:
            return
        self._poller.unregister(descriptor)
        stream.socket.close()
        if stream.identity is not None and self._by_identity.get(stream.identity) is stream:
            del self._by_identity[stream.identity]
            self._closed.add(stream.identity)

    def close(self, linger: float) -> None:
        """Write what is queued for up to ``linger`` seconds, then close and remove the file."""
        deadline = time.monotonic() + linger
        while any(s.outbox for s in self._streams.values()) and time.monotonic() < deadline:
            for descriptor, mask in self._poller.poll(10):
                if mask & select.POLLOUT:
                    self._handle(descriptor, select.POLLOUT)
        for stream in list(self._streams.values()):
            stream.socket.close()
        self._streams.clear()
        self._by_identity.clear()
        self._listener.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


class FrameClient:
    """An agent's side: one connection to the server, opened at the first use.

    The world may start listening after the agent starts, so the connection is retried (with
    growing pauses) for up to ``connect_timeout`` seconds; the identity goes first.
    """

    def __init__(self, path: str, identity: bytes, connect_timeout: float) -> None:
        self.path = path
        self.identity = identity
        self.connect_timeout = connect_timeout
        self._stream: _Stream | None = None
        self._poller = select.poll()
        self._received: deque[bytes] = deque()
        self._closed = False

    def send(self, frame: bytes) -> None:
        """Write ``frame``; :class:`LinkClosed` if the server is gone, TimeoutError if it has
        not read for :data:`SEND_TIMEOUT` seconds."""
        stream = self._connected()
        try:
            stream.write(frame)
            deadline = time.monotonic() + SEND_TIMEOUT
            while stream.outbox:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the world read nothing for {SEND_TIMEOUT:.0f} s")
                select.select([], [stream.socket], [], 0.1)
                stream.flush()
        except OSError as error:
            if isinstance(error, TimeoutError):
                raise
            self._closed = True
            raise LinkClosed(f"the world closed the link ({error})") from error

    def receive(self, timeout: float) -> bytes | None:
        """The next frame within ``timeout`` seconds (0: only one already here), or None;
        :class:`LinkClosed` once the server has closed the link and every frame sent before is
        taken."""
        stream = self._connected()
        deadline = time.monotonic() + timeout
        while not self._received:
            if self._closed:
                raise LinkClosed("the world closed the link")
            remaining = deadline - time.monotonic()
            if not self._poller.poll(max(0, math.ceil(remaining * 1000))):
                if remaining <= 0:
                    return None
                continue
            alive = stream.read()
            frames, broken = stream.frames()
            self._received.extend(frames)
            if broken:
                self._closed = True
                raise LinkClosed(f"broken stream from the world: {broken}")
            self._closed = not alive
        return self._received.popleft()

    def _connected(self) -> _Stream:
        if self._stream is not None:
            return self._stream
        deadline = time.monotonic() + self.connect_timeout
        pause = CONNECT_RETRY_SECONDS[0]
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(self.path)
                break
            except (FileNotFoundError, ConnectionRefusedError) as error:
                sock.close()
                if time.monotonic() + pause > deadline:
                    raise TimeoutError(
                        f"nothing listens on {self.path} after {self.connect_timeout:.0f} s "
                        f"({errno.errorcode.get(error.errno, error.errno)})"
                    ) from error
                time.sleep(pause)
                pause = min(2 * pause, CONNECT_RETRY_SECONDS[1])
        sock.setblocking(False)
        self._stream = _Stream(sock)
        self._poller.register(sock, select.POLLIN)
        self._stream.write(self.identity)
        return self._stream

    def close(self) -> None:
        if self._stream is not None:
            self._stream.socket.close()
            self._stream = None
