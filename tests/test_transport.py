"""Transports and the peer link: delivery, timeouts, and rejection of strangers and garbage."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import zmq

from p2pmarl.runtime.codec import Message, encode
from p2pmarl.runtime.peers import PeerLink
from p2pmarl.runtime.transport import MemoryHub, PeerTimeout, ZmqTransport, identity_of


@pytest.fixture
def zmq_pair(tmp_path):
    endpoints = {0: f"ipc://{tmp_path}/a0", 1: f"ipc://{tmp_path}/a1", 2: f"ipc://{tmp_path}/a2"}
    a = ZmqTransport(0, endpoints, [1])
    b = ZmqTransport(1, endpoints, [0])
    yield a, b, endpoints
    a.close()
    b.close()


@pytest.fixture
def memory_pair():
    hub = MemoryHub()
    return hub.transport(0, [1]), hub.transport(1, [0]), hub


def _round_trip(a, b):
    payload = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert a.send(1, "exchange", 5, {"log_ratio": payload}) > 0
    message = b.receive(timeout=5)
    assert message is not None
    assert (message.kind, message.sender, message.receiver, message.round) == ("exchange", 0, 1, 5)
    np.testing.assert_array_equal(message.body["log_ratio"], payload)


def test_memory_round_trip(memory_pair):
    a, b, _ = memory_pair
    _round_trip(a, b)


def test_zmq_round_trip(zmq_pair):
    a, b, _ = zmq_pair
    _round_trip(a, b)


def test_receive_times_out_with_none(memory_pair):
    _, b, _ = memory_pair
    started = time.monotonic()
    assert b.receive(timeout=0.2) is None
    assert 0.15 < time.monotonic() - started < 2


def test_sending_to_a_non_neighbour_is_an_error(memory_pair):
    a, _, _ = memory_pair
    with pytest.raises(ValueError, match="not a graph neighbour"):
        a.send(2, "exchange", 0, {})


def test_memory_rejects_garbage_strangers_and_spoofing(memory_pair):
    a, b, hub = memory_pair
    hub.inject(1, 0, b"\x00garbage")
    hub.inject(1, 2, encode(Message("exchange", 2, 1, 0, 0, {})))  # not a neighbour
    hub.inject(1, 2, encode(Message("exchange", 0, 1, 0, 0, {})))  # 2 pretends to be 0
    hub.inject(1, 0, encode(Message("exchange", 0, 7, 0, 0, {})))  # wrong receiver
    assert b.receive(timeout=0.3) is None
    assert b.rejected == {
        "garbage": 1, "not_neighbour": 1, "spoofed_sender": 1, "wrong_receiver": 1
    }
    _round_trip(a, b)  # still works afterwards


def test_zmq_stranger_socket_is_refused(zmq_pair):
    _, b, endpoints = zmq_pair
    stranger = zmq.Context.instance().socket(zmq.DEALER)
    stranger.setsockopt(zmq.LINGER, 0)
    stranger.setsockopt(zmq.IDENTITY, identity_of(2))
    stranger.connect(endpoints[1])
    try:
        stranger.send(encode(Message("exchange", 2, 1, 0, 0, {"y": np.zeros(3)})))
        stranger.send(encode(Message("exchange", 0, 1, 0, 0, {"y": np.zeros(3)})))  # spoofed
        stranger.send(b"\xc1 definitely not msgpack")
        assert b.receive(timeout=0.5) is None
        assert b.rejected["not_neighbour"] == 1
        assert b.rejected["spoofed_sender"] == 1
        assert b.rejected["garbage"] == 1
    finally:
        stranger.close()


def test_wait_connected_and_heartbeats(tmp_path):
    endpoints = {i: f"ipc://{tmp_path}/a{i}" for i in range(3)}
    neighbours = {0: [1, 2], 1: [0, 2], 2: [0, 1]}
    results = {}

    def start(i, delay):
        time.sleep(delay)
        transport = ZmqTransport(i, endpoints, neighbours[i])
        results[i] = transport.wait_connected(timeout=10)
        transport.receive(timeout=1.2)  # stays long enough to answer and send a heartbeat
        results[f"seen{i}"] = sorted(transport.last_seen)
        transport.close()

    threads = [threading.Thread(target=start, args=(i, 0.3 * i)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)
    assert all(results[i] < 10 for i in range(3))
    assert results["seen0"] == [1, 2]


def test_wait_connected_times_out_naming_the_missing_neighbour(memory_pair):
    a, _, _ = memory_pair
    with pytest.raises(PeerTimeout, match=r"\[1\]"):
        a.wait_connected(timeout=0.3)


def test_peer_link_drops_stale_rounds_and_holds_future_ones(memory_pair):
    a, b, _ = memory_pair
    link = PeerLink(b, iteration=3)
    a.send(1, "exchange", 2, {"n": 1})  # stale
    a.send(1, "exchange", 4, {"n": 2})  # future
    a.send(1, "propose", 3, {"n": 3})
    a.send(1, "exchange", 3, {"n": 4})
    message = link.receive(timeout=1, kinds=frozenset({"exchange"}))
    assert message.body["n"] == 4
    assert link.receive(timeout=0.1).body["n"] == 3
    assert b.rejected["stale_round"] == 1
    link.start_iteration(4)
    assert link.receive(timeout=0.1).body["n"] == 2
