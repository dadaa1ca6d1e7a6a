"""The world link's Unix-socket carrier (``runtime/unix_frames.py``) and the world link over it."""

from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from p2pmarl.runtime.codec import Message, encode
from p2pmarl.runtime.unix_frames import HEADER, FrameClient, FrameServer, LinkClosed
from p2pmarl.runtime.world_link import LinkTimeout, WorldClient, WorldServer


def _server(tmp_path: Path) -> tuple[FrameServer, list[tuple[str, str]]]:
    rejected: list[tuple[str, str]] = []
    return FrameServer(str(tmp_path / "w.sock"), lambda r, d: rejected.append((r, d))), rejected


def _until(server: FrameServer, timeout: float = 5.0) -> list[bytes]:
    parts = server.receive(timeout)
    assert parts is not None, "nothing arrived"
    return parts


def test_frames_go_both_ways_in_order_tied_to_the_client_identity(tmp_path):
    server, rejected = _server(tmp_path)
    client = FrameClient(server.path, b"agent-3", connect_timeout=5.0)
    big = os.urandom(3 * 1024 * 1024)  # several reads on either side
    sender = threading.Thread(target=lambda: [client.send(f) for f in (b"one", b"", big)])
    sender.start()  # a frame larger than the socket buffer waits for the server to read
    try:
        assert [_until(server) for _ in range(3)] == [
            [b"agent-3", b"one"], [b"agent-3", b""], [b"agent-3", big]
        ]
        assert server.send(b"agent-3", big) and server.send(b"agent-3", b"two")
        got = []
        deadline = time.monotonic() + 5.0
        while len(got) < 2 and time.monotonic() < deadline:
            server.receive(0.0)  # the server writes the rest of a large frame as it can
            frame = client.receive(0.05)
            if frame is not None:
                got.append(frame)
        assert got == [big, b"two"]
        assert client.receive(0.0) is None
        assert server.receive(0.0) is None
        assert not server.send(b"agent-9", b"x"), "an identity never connected is unreachable"
        assert rejected == []
    finally:
        sender.join()
        client.close()
        server.close(0.0)
    assert not Path(server.path).exists(), "closing removes the socket file"


def test_a_client_started_before_the_server_connects_once_it_listens(tmp_path):
    path = str(tmp_path / "w.sock")
    client = FrameClient(path, b"agent-0", connect_timeout=5.0)
    sent = threading.Thread(target=client.send, args=(b"hello world",))
    sent.start()
    time.sleep(0.2)
    server = FrameServer(path, lambda r, d: None)
    try:
        assert _until(server) == [b"agent-0", b"hello world"]
    finally:
        sent.join()
        client.close()
        server.close(0.0)


def test_connecting_to_nothing_fails_within_the_bound_and_names_the_path(tmp_path):
    client = FrameClient(str(tmp_path / "none.sock"), b"agent-0", connect_timeout=0.3)
    started = time.monotonic()
    with pytest.raises(TimeoutError, match=r"none\.sock"):
        client.send(b"x")
    assert time.monotonic() - started < 2.0


def test_a_closed_connection_is_reported_once_and_a_restart_takes_the_identity(tmp_path):
    server, _ = _server(tmp_path)
    first = FrameClient(server.path, b"agent-1", connect_timeout=5.0)
    try:
        first.send(b"a")
        assert _until(server) == [b"agent-1", b"a"]
        first.close()
        deadline = time.monotonic() + 5.0
        closed: set[bytes] = set()
        while not closed and time.monotonic() < deadline:
            server.receive(0.05)
            closed = server.take_closed()
        assert closed == {b"agent-1"}
        assert server.take_closed() == set()
        assert not server.send(b"agent-1", b"x"), "a closed connection is unreachable"
        second = FrameClient(server.path, b"agent-1", connect_timeout=5.0)
        second.send(b"b")
        assert _until(server) == [b"agent-1", b"b"]
        assert server.send(b"agent-1", b"back")
        assert second.receive(5.0) == b"back"
        second.close()
    finally:
        server.close(0.0)


def test_a_broken_stream_is_rejected_and_dropped_without_touching_other_clients(tmp_path):
    server, rejected = _server(tmp_path)
    good = FrameClient(server.path, b"agent-0", connect_timeout=5.0)
    bad = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        good.send(b"fine")
        bad.connect(server.path)
        bad.sendall(HEADER.pack(7) + b"agent-1" + HEADER.pack(2**31))  # an impossible length
        assert _until(server) == [b"agent-0", b"fine"]
        deadline = time.monotonic() + 5.0
        while not rejected and time.monotonic() < deadline:
            server.receive(0.05)
        assert rejected and rejected[0][0] == "bad_frames"
        assert server.take_closed() == {b"agent-1"}
        assert bad.recv(16) == b"", "the server closed the broken stream"
        good.send(b"still here")
        assert _until(server) == [b"agent-0", b"still here"]
    finally:
        bad.close()
        good.close()
        server.close(0.0)


def test_the_client_sees_the_server_close_after_taking_what_was_sent(tmp_path):
    server, _ = _server(tmp_path)
    client = FrameClient(server.path, b"agent-0", connect_timeout=5.0)
    client.send(b"hi")
    _until(server)
    server.send(b"agent-0", b"stop")
    server.close(1.0)
    assert client.receive(5.0) == b"stop"
    with pytest.raises(LinkClosed):
        client.receive(5.0)
    with pytest.raises(LinkClosed):
        client.send(b"more")
    client.close()


def _agent_that_dies(endpoint: str) -> None:
    client = WorldClient(endpoint, 1, connect_timeout=5.0)
    client.send("ready", 0, {})
    client.receive(frozenset({"step"}), 5.0)
    os.kill(os.getpid(), signal.SIGKILL)


def test_the_world_finds_a_killed_agent_lost_at_once_without_probes(tmp_path):
    """Over ZeroMQ a crashed agent is found by a failing probe (``PROBE_INTERVAL``); over the
    Unix socket its connection closes, and the gather stops waiting for it at once."""
    endpoint = f"unix://{tmp_path}/world.sock"
    server = WorldServer(endpoint, 2)
    survivor = WorldClient(endpoint, 0, connect_timeout=5.0)
    child = multiprocessing.get_context("fork").Process(target=_agent_that_dies, args=(endpoint,))
    child.start()
    try:
        survivor.send("ready", 0, {})
        assert set(server.gather("ready", 0, 10.0, probe=False)) == {0, 1}
        for agent in (0, 1):
            assert server.send(agent, "step", 0, {"t": 0})
        survivor.receive(frozenset({"step"}), 5.0)
        survivor.send("act", 0, {"t": 0, "actions": np.zeros(2, dtype=np.int64)})
        started = time.monotonic()
        replies = server.gather("act", 0, 30.0, probe=False)
        assert time.monotonic() - started < 5.0
        assert set(replies) == {0} and server.lost == {1}
    finally:
        child.join(5.0)
        survivor.close()
        server.close()


def test_a_spoofed_sender_on_a_unix_link_is_rejected(tmp_path):
    endpoint = f"unix://{tmp_path}/world.sock"
    server = WorldServer(endpoint, 2)
    liar = FrameClient(f"{tmp_path}/world.sock", b"agent-0", connect_timeout=5.0)
    try:
        liar.send(encode(Message("ready", 1, -1, 0, 0, {})))  # agent-0's stream claims 1
        liar.send(encode(Message("ready", 0, -1, 0, 0, {})))
        assert set(server.gather("ready", 0, 5.0, agents=[0], probe=False)) == {0}
        assert server.rejected["spoofed_sender"] == 1
    finally:
        liar.close()
        server.close()


def test_an_agent_gets_a_link_timeout_at_once_when_the_world_is_gone(tmp_path):
    endpoint = f"unix://{tmp_path}/world.sock"
    server = WorldServer(endpoint, 1)
    client = WorldClient(endpoint, 0, connect_timeout=5.0)
    client.send("ready", 0, {})
    server.gather("ready", 0, 5.0, probe=False)
    server.close()
    started = time.monotonic()
    assert client.arrived(), "a closed link ends the linger"
    with pytest.raises(LinkTimeout, match="closed"):
        client.receive(frozenset({"step"}), 30.0)
    assert time.monotonic() - started < 5.0
    client.close()


def test_unix_world_links_refuse_curve_keys(tmp_path):
    from p2pmarl.runtime.transport import CurveKeys

    keys = CurveKeys("p" * 40, "s" * 40, {})
    with pytest.raises(ValueError, match="tcp://"):
        WorldServer(f"unix://{tmp_path}/w.sock", 1, curve=keys)
    with pytest.raises(ValueError, match="tcp://"):
        WorldClient(f"unix://{tmp_path}/w.sock", 0, curve=keys)
