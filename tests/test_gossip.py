"""Gossip averaging against the exact network mean: ring, random and star graphs, with and
without message loss, over the in-memory transport (one thread per agent)."""

from __future__ import annotations

import threading
import time

import networkx as nx
import numpy as np
import pytest

from p2pmarl.algos.gossip import (
    GossipConfig,
    GossipResult,
    average,
    consensus_error,
    consensus_error_curve,
    metropolis_weights,
)
from p2pmarl.runtime.faults import FaultSpec, FaultyTransport
from p2pmarl.runtime.peers import PeerLink
from p2pmarl.runtime.reliable import Redundancy
from p2pmarl.runtime.transport import MemoryHub


def ring(n: int) -> dict[int, list[int]]:
    return {i: sorted({(i - 1) % n, (i + 1) % n}) for i in range(n)}


def star(n: int) -> dict[int, list[int]]:
    return {0: list(range(1, n)), **{i: [0] for i in range(1, n)}}


def random_graph(n: int, seed: int) -> dict[int, list[int]]:
    graph = nx.connected_watts_strogatz_graph(n, 4, 0.5, seed=seed)
    return {i: sorted(graph.neighbors(i)) for i in range(n)}


GRAPHS = {"ring6": ring(6), "random8": random_graph(8, 3), "star6": star(6)}


def run_gossip(
    neighbours: dict[int, list[int]],
    vectors: np.ndarray,
    config: GossipConfig,
    drop: float = 0.0,
    network_size: int | None = None,
    max_copies: int = Redundancy().max_copies,
) -> dict[int, GossipResult]:
    """Every agent gossips in its own thread; returns each agent's result."""
    hub = MemoryHub()
    results: dict[int, GossipResult] = {}
    errors: list[BaseException] = []

    def agent(i: int) -> None:
        transport = hub.transport(i, neighbours[i])
        if drop:
            transport = FaultyTransport(transport, FaultSpec(seed=7, drop=drop))
        try:
            link = PeerLink(transport, redundancy=Redundancy(max_copies=max_copies))
            results[i] = average(link, vectors[i], config,
                                 network_size=network_size, keep_history=True)
        except BaseException as error:  # surfaced in the main thread below
            errors.append(error)

    threads = [threading.Thread(target=agent, args=(i,)) for i in neighbours]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    assert len(results) == len(neighbours)
    return results


def vectors_for(n: int, size: int = 5, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, size)) * 3.0


def test_metropolis_weights_are_symmetric_and_doubly_stochastic():
    for neighbours in GRAPHS.values():
        weights = metropolis_weights(neighbours)
        np.testing.assert_allclose(weights, weights.T)
        np.testing.assert_allclose(weights.sum(axis=0), 1.0)
        np.testing.assert_allclose(weights.sum(axis=1), 1.0)
        assert (weights >= 0).all()
    with pytest.raises(ValueError, match="not undirected"):
        metropolis_weights({0: [1], 1: []})


@pytest.mark.parametrize("name", sorted(GRAPHS))
def test_metropolis_rounds_are_the_dense_iteration_and_reach_the_exact_mean(name):
    neighbours = GRAPHS[name]
    n = len(neighbours)
    vectors = vectors_for(n)
    results = run_gossip(neighbours, vectors, GossipConfig(rounds=120))
    weights = metropolis_weights(neighbours)
    reference = vectors.copy()
    for r in range(121):  # every round equals one product with W
        for i in range(n):
            np.testing.assert_allclose(results[i].history[r], reference[i], atol=1e-10)
        reference = weights @ reference
    mean = vectors.mean(axis=0)
    curve = consensus_error_curve({i: r.history for i, r in results.items()}, mean)
    assert curve[0].max > 1.0
    assert curve[-1].max < 1e-6 and curve[-1].rms <= curve[-1].max
    assert all(r.missing == 0 and r.rounds == 120 for r in results.values())
    # the network mean is preserved exactly in every round
    for r in range(0, 121, 20):
        np.testing.assert_allclose(np.mean([h.history[r] for h in results.values()], axis=0),
                                   mean, atol=1e-10)


@pytest.mark.parametrize("name", sorted(GRAPHS))
def test_push_sum_reaches_the_exact_mean(name):
    neighbours = GRAPHS[name]
    vectors = vectors_for(len(neighbours), seed=1)
    results = run_gossip(neighbours, vectors, GossipConfig(method="push_sum", rounds=150))
    error = consensus_error([r.estimate for r in results.values()], vectors.mean(axis=0))
    assert error.max < 1e-6


@pytest.mark.parametrize("name", sorted(GRAPHS))
def test_push_sum_under_message_loss_still_reaches_the_mean(name):
    """20 % of gossip messages are lost; the running sums make every lost one good later."""
    neighbours = GRAPHS[name]
    vectors = vectors_for(len(neighbours), seed=2)
    config = GossipConfig(method="push_sum", rounds=200, round_timeout=0.02)
    started = time.monotonic()
    results = run_gossip(neighbours, vectors, config, drop=0.2)
    elapsed = time.monotonic() - started
    assert elapsed < 200 * 0.02 * 3 + 10, "a lost message may cost at most one round timeout"
    assert sum(r.missing for r in results.values()) > 0, "the test must actually lose messages"
    error = consensus_error([r.estimate for r in results.values()], vectors.mean(axis=0))
    spread = consensus_error(list(vectors), vectors.mean(axis=0))
    assert error.max < 1e-3 * spread.max, (error, spread)


def test_metropolis_under_loss_ends_in_bounded_time_with_its_error_recorded():
    neighbours = GRAPHS["ring6"]
    vectors = vectors_for(6, seed=3)
    config = GossipConfig(rounds=40, round_timeout=0.05)
    started = time.monotonic()
    # single copies: redundant ones (the default) would hide most of the loss this test is about
    results = run_gossip(neighbours, vectors, config, drop=0.3, max_copies=1)
    assert time.monotonic() - started < 40 * 0.05 * 2 + 10
    mean = vectors.mean(axis=0)
    curve = consensus_error_curve({i: r.history for i, r in results.items()}, mean)
    spread = consensus_error(list(vectors), mean)
    assert sum(r.missing for r in results.values()) > 0
    assert all(len(r.changes) == len(r.disagreement) == 40 for r in results.values())
    # lost messages shift the mean a little, but the agents still end close to it and together
    assert curve[-1].max < 0.2 * spread.max
    estimates = np.array([r.estimate for r in results.values()])
    assert np.ptp(estimates, axis=0).max() < 0.05 * spread.max


@pytest.mark.parametrize("method", ["metropolis", "push_sum"])
def test_tolerance_stops_every_agent_near_the_mean(method):
    neighbours = GRAPHS["random8"]
    vectors = vectors_for(8, seed=4)
    config = GossipConfig(method=method, rounds=None, tolerance=1e-6, max_rounds=400)
    results = run_gossip(neighbours, vectors, config, network_size=8)
    rounds = [r.rounds for r in results.values()]
    assert max(rounds) < 400, "tolerance stop never triggered"
    assert max(rounds) - min(rounds) <= 8
    error = consensus_error([r.estimate for r in results.values()], vectors.mean(axis=0))
    assert error.max < 1e-4


def test_result_unpacks_as_estimate_and_changes():
    results = run_gossip({0: [1], 1: [0]}, np.array([[0.0, 2.0], [2.0, 4.0]]),
                         GossipConfig(rounds=3))
    mean, changes = results[0]
    np.testing.assert_allclose(mean, [1.0, 3.0])  # two agents: exact after one round
    assert len(changes) == 3


def test_bad_input_is_refused_with_a_clear_error():
    hub = MemoryHub()
    peers = PeerLink(hub.transport(0, [1]))
    with pytest.raises(ValueError, match="float"):
        average(peers, np.arange(3), GossipConfig(rounds=1))
    with pytest.raises(ValueError, match="NaN"):
        average(peers, np.array([np.nan]), GossipConfig(rounds=1))
    with pytest.raises(ValueError, match="network_size"):
        average(peers, np.zeros(2), GossipConfig(rounds=None, tolerance=1e-3))
    with pytest.raises(ValueError, match="method"):
        GossipConfig(method="flood")
    with pytest.raises(ValueError, match="rounds or tolerance"):
        GossipConfig(rounds=None)


def test_a_malformed_neighbour_message_is_ignored_and_counted_missing():
    hub = MemoryHub()
    a, b = PeerLink(hub.transport(0, [1])), PeerLink(hub.transport(1, [0]))
    b.send(0, "gossip", {"round": 0, "degree": 1, "settled": 0, "final": False,
                         "value": np.zeros(7)})  # wrong length
    result = average(a, np.ones(3), GossipConfig(rounds=1, round_timeout=0.2))
    np.testing.assert_allclose(result.estimate, 1.0)
    assert result.missing == 1
