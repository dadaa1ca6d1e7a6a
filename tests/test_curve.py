"""CURVE on the ZeroMQ transport: neighbours get through, strangers (keys or not) do not."""

from __future__ import annotations

import contextlib
import json
import socket
import stat
import time

import pytest
import zmq

from p2pmarl.runtime.codec import Message, encode
from p2pmarl.runtime.launcher import write_curve_keys
from p2pmarl.runtime.transport import (
    KEYS_DIR,
    CurveKeys,
    ZmqTransport,
    agent_key_file,
    load_curve_keys,
    public_keys_file,
)

pytestmark = pytest.mark.skipif(not zmq.has("curve"), reason="libzmq without CURVE")


def _free_ports(count: int) -> list[int]:
    holders = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for holder in holders:
            holder.bind(("127.0.0.1", 0))
        return [holder.getsockname()[1] for holder in holders]
    finally:
        for holder in holders:
            holder.close()


@pytest.fixture
def curve_pair():
    """Agents 0 and 1 are neighbours over tcp with CURVE; agent 2's key exists but is no edge."""
    ports = _free_ports(3)
    endpoints = {agent: f"tcp://127.0.0.1:{port}" for agent, port in enumerate(ports)}
    pairs = {agent: zmq.curve_keypair() for agent in range(3)}
    a = ZmqTransport(0, endpoints, [1], curve=CurveKeys(*pairs[0], {1: pairs[1][0]}))
    b = ZmqTransport(1, endpoints, [0], curve=CurveKeys(*pairs[1], {0: pairs[0][0]}))
    strangers: list[zmq.Socket] = []
    context = zmq.Context()
    yield a, b, endpoints, pairs, context, strangers
    for stranger in strangers:
        stranger.close(linger=0)
    context.term()
    a.close()
    b.close()


def _stranger(context, strangers, endpoint, server_key=None, pair=None) -> zmq.Socket:
    """A DEALER with a ROUTER-assigned identity: without CURVE its forged frames would pass
    (a duplicate ``agent-0`` identity would be dropped by the ROUTER for another reason)."""
    dealer = context.socket(zmq.DEALER)
    strangers.append(dealer)
    dealer.setsockopt(zmq.LINGER, 0)
    if pair is not None:
        dealer.curve_publickey, dealer.curve_secretkey = pair
        dealer.curve_serverkey = server_key
    dealer.connect(endpoint)
    return dealer


def _forged(sender: int, receiver: int) -> bytes:
    """A correctly encoded message that claims to come from a real neighbour."""
    return encode(Message("exchange", sender, receiver, 1, 1, {"value": 1.0}))


def _nothing_arrives(transport: ZmqTransport, seconds: float) -> None:
    received = transport.received_bytes
    assert transport.receive(timeout=seconds) is None
    assert transport.received_bytes == received  # not even a frame reached the socket layer
    assert sum(transport.rejected.values()) == 0


def test_neighbours_with_keys_exchange_messages(curve_pair):
    a, b, *_ = curve_pair
    assert a.send(1, "exchange", 3, {"value": 2.5}) > 0
    message = b.receive(timeout=3)
    assert message is not None
    assert (message.kind, message.sender, message.receiver, message.round) == ("exchange", 0, 1, 3)
    assert message.body["value"] == 2.5
    assert b.send(0, "exchange", 3, {"value": 1.0}) > 0
    reply = a.receive(timeout=3)
    assert reply is not None and reply.sender == 1


def test_stranger_with_its_own_curve_key_is_refused(curve_pair):
    a, b, endpoints, pairs, context, strangers = curve_pair
    # A valid CURVE client that knows b's public key but holds a key b does not accept.
    stranger = _stranger(
        context, strangers, endpoints[1], server_key=pairs[1][0], pair=zmq.curve_keypair()
    )
    # Agent 2's key is real, but 2 is not b's neighbour: refused as well.
    not_a_neighbour = _stranger(
        context, strangers, endpoints[1], server_key=pairs[1][0], pair=pairs[2]
    )
    for dealer in (stranger, not_a_neighbour):
        for _ in range(3):
            dealer.send(_forged(0, 1), zmq.NOBLOCK)
    _nothing_arrives(b, 0.8)
    # The real neighbour still gets through afterwards.
    assert a.send(1, "exchange", 2, {"value": 3.0}) > 0
    message = b.receive(timeout=3)
    assert message is not None and message.sender == 0 and message.round == 2


def test_stranger_without_curve_gets_nothing(curve_pair):
    _, b, endpoints, _, context, strangers = curve_pair
    plain = _stranger(context, strangers, endpoints[1])
    for _ in range(3):
        with contextlib.suppress(zmq.Again):  # never connected: nothing can even be queued
            plain.send(_forged(0, 1), zmq.NOBLOCK)
    _nothing_arrives(b, 0.8)


def test_load_curve_keys_round_trip(tmp_path):
    write_curve_keys(tmp_path, [0, 1, 2])
    keys = tmp_path / KEYS_DIR
    assert stat.S_IMODE(keys.stat().st_mode) & 0o077 == 0
    for agent in range(3):
        assert stat.S_IMODE(agent_key_file(tmp_path, agent).stat().st_mode) == 0o600
    public = json.loads(public_keys_file(tmp_path).read_text())
    loaded = load_curve_keys(tmp_path, 1, [0, 2])
    assert loaded is not None
    assert loaded.public == public["1"].encode()
    assert loaded.neighbours == {0: public["0"].encode(), 2: public["2"].encode()}
    # The secret matches the public key.
    assert zmq.curve_public(loaded.secret) == loaded.public
    assert load_curve_keys(tmp_path / "elsewhere", 1, [0]) is None


def test_loaded_keys_connect_over_tcp(tmp_path):
    write_curve_keys(tmp_path, [0, 1])
    endpoints = {agent: f"tcp://127.0.0.1:{port}" for agent, port in enumerate(_free_ports(2))}
    a = ZmqTransport(0, endpoints, [1], curve=load_curve_keys(tmp_path, 0, [1]))
    b = ZmqTransport(1, endpoints, [0], curve=load_curve_keys(tmp_path, 1, [0]))
    try:
        started = time.monotonic()
        a.send(1, "exchange", 1, {"value": 1.0})
        message = b.receive(timeout=3)
        assert message is not None and message.sender == 0
        assert time.monotonic() - started < 3
    finally:
        a.close()
        b.close()
