"""The reliable round and one-way primitives of the runtime (``PeerLink.exchange_round``,
``deliver``/``accept_deliveries``, ``finish_phase``) on their own, then every variant that uses
them under dropped and duplicated copies: gossip (DiMA-PG, FDMARL), MADDPG's rows, genetic
MADDPG's max-gossip and the HATRPO/HAPPO token."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

import networkx as nx
import numpy as np
import pytest
import torch

from p2pmarl.algos.gossip import GossipConfig, average, metropolis_weights
from p2pmarl.algos.token import TOKEN, TOKEN_ACK, TokenRelay
from p2pmarl.runtime.faults import FaultSpec, FaultyTransport
from p2pmarl.runtime.peers import PeerLink
from p2pmarl.runtime.reliable import RELIABLE_FIELDS, RetransmitPolicy, ack_kind
from p2pmarl.runtime.transport import MemoryHub
from tests.test_happo import (
    complete,
    make_agents,
    reference_factors,
    run_threads,
    settings,
    spy_on_factors,
)
from tests.test_reliable import Hostile, LoseFirst, Lossy

FAST = RetransmitPolicy(initial_timeout=0.05, min_timeout=0.02, max_timeout=1.0,
                        max_retransmissions=8)


def ring_graph(n: int) -> dict[int, list[int]]:
    return {i: sorted({(i - 1) % n, (i + 1) % n}) for i in range(n)}


def in_threads(bodies: Sequence[Callable[[], None]], join: float = 60.0) -> None:
    errors: list[BaseException] = []

    def guarded(body: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                body()
            except BaseException as error:  # surfaced below
                errors.append(error)
        return run

    threads = [threading.Thread(target=guarded(b), daemon=True) for b in bodies]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(join)
    assert not any(thread.is_alive() for thread in threads), "a thread hung"
    assert not errors, errors


# -- exchange_round ---------------------------------------------------------------------------


def test_rounds_over_a_hostile_network_deliver_every_message_once_per_round() -> None:
    """Ring of 4, 20 % loss, 20 % duplicates, 20 % reordered, 30 rounds: every agent gets
    every neighbour's message of every round, exactly once, none of another round."""
    graph, rounds = ring_graph(4), 30
    hub = MemoryHub()
    links = {i: PeerLink(Hostile(hub, i, graph[i]), policy=FAST) for i in graph}
    got: dict[int, list[dict[int, int]]] = {i: [] for i in graph}
    missing: dict[int, int] = dict.fromkeys(graph, 0)

    def agent(i: int) -> Callable[[], None]:
        def body() -> None:
            link = links[i]
            for round_ in range(rounds):
                result = link.exchange_round(
                    "g", {j: {"round": round_, "from": i} for j in graph[i]}, (0, round_),
                    deadline=time.monotonic() + 20.0)
                missing[i] += len(result.missing) + len(result.down)
                got[i].append({j: m.body["round"] for j, m in result.messages.items()})
                for j, message in result.messages.items():
                    assert message.body["from"] == j
                    assert set(message.body) == {"round", "from"} | RELIABLE_FIELDS
            link.finish_phase()  # a neighbour that missed our last message gets it
        return body

    in_threads([agent(i) for i in graph])
    assert missing == dict.fromkeys(graph, 0)
    for i in graph:
        assert got[i] == [dict.fromkeys(graph[i], r) for r in range(rounds)]
    counts = [sum(links[i].transport.counts[k] for i in graph) for k in ("lost", "duplicated")]
    assert min(counts) > 0, "the test must actually lose and duplicate copies"
    assert sum(links[i].reliability["retransmissions"] for i in graph) > 0
    assert sum(links[i].reliability["duplicates"] for i in graph) > 0


def test_a_neighbour_that_missed_our_message_gets_it_after_we_moved_on() -> None:
    hub = MemoryHub()
    # a's first copy and the extra copy it sends on leaving are lost
    a = PeerLink(LoseFirst(hub, 0, [1], {"g"}, count=2), policy=FAST)
    b = PeerLink(hub.transport(1, [0]), policy=FAST)
    results = {}

    def run(link: PeerLink, me: int, other: int) -> Callable[[], None]:
        def body() -> None:
            results[me] = link.exchange_round("g", {other: {"v": me}}, (5,),
                                              deadline=time.monotonic() + 10.0)
            link.finish_phase()
        return body

    in_threads([run(a, 0, 1), run(b, 1, 0)])
    assert results[0].messages[1].body["v"] == 1 and results[1].messages[0].body["v"] == 0
    assert not results[0].missing and not results[1].missing
    assert b.reliability["retransmissions"] >= 1  # b re-sent, a answered from its store
    assert a.reliability["echoes"] >= 2  # on leaving, and to b's retransmission


def test_a_silent_neighbour_is_given_up_by_the_retransmission_rule_not_the_deadline() -> None:
    hub = MemoryHub()
    link = PeerLink(hub.transport(0, [1]), policy=FAST)
    started = time.monotonic()
    result = link.exchange_round("g", {1: {"v": 0}}, (0,), deadline=started + 30.0)
    elapsed = time.monotonic() - started
    assert result.missing == [1] and not result.messages
    assert elapsed < FAST.give_up_after(FAST.initial_timeout) + 1.0 < 30.0
    assert result.retransmissions == FAST.max_retransmissions
    assert link.reliability["given_up"] == 1


def test_a_down_neighbour_ends_the_round_at_once_and_a_deadline_bounds_it() -> None:
    hub = MemoryHub()
    hub.down.add(1)
    link = PeerLink(hub.transport(0, [1, 2]), policy=FAST)
    started = time.monotonic()
    result = link.exchange_round("g", {1: {"v": 0}, 2: {"v": 0}}, (0,),
                                 deadline=started + 0.3)
    assert result.down == [1] and result.missing == [2]
    assert time.monotonic() - started < 1.0


def test_with_later_a_message_of_a_later_round_answers_an_earlier_one() -> None:
    hub = MemoryHub()
    a, b = PeerLink(hub.transport(0, [1]), policy=FAST), PeerLink(hub.transport(1, [0]))
    b.send_reliable(0, "g", {"r": 0, "call": 1}, (1, 0), answers=("g",))  # another call: never
    b.send_reliable(0, "g", {"r": 3}, (0, 3), answers=("g",))  # b is three rounds ahead
    exact = a.exchange_round("g", {1: {"r": 1}}, (0, 1), deadline=time.monotonic() + 0.2)
    assert exact.missing == [1]
    later = a.exchange_round("g", {1: {"r": 2}}, (0, 2), deadline=time.monotonic() + 5.0,
                             later=True)
    assert later.messages[1].body["r"] == 3 and not later.missing


def test_deliveries_cross_without_waiting_on_each_other_and_survive_loss() -> None:
    """Both ends deliver 20 one-way messages to each other at once over 30 % loss: every one
    arrives once and in order, acknowledged on arrival even while the receiver waits for its
    own acknowledgement."""
    hub = MemoryHub()
    links = [PeerLink(Lossy(hub, i, [1 - i], 0.3, seed=i), policy=FAST) for i in (0, 1)]
    for link in links:
        link.accept_deliveries({"note"})
    received: dict[int, list[int]] = {0: [], 1: []}
    delivered: dict[int, list[bool]] = {0: [], 1: []}

    def run(i: int) -> Callable[[], None]:
        def body() -> None:
            link = links[i]
            for n in range(20):
                delivered[i].append(link.deliver(1 - i, "note", {"n": n}, (n,),
                                                 deadline=time.monotonic() + 10.0))
                while (message := link.receive(0.0, frozenset({"note"}))) is not None:
                    received[i].append(message.body["n"])
            end = time.monotonic() + 3.0
            while len(received[i]) < 20 and time.monotonic() < end:
                message = link.receive(0.05, frozenset({"note"}))
                if message is not None:
                    received[i].append(message.body["n"])
            link.finish_phase()
        return body

    in_threads([run(0), run(1)])
    assert received == {0: list(range(20)), 1: list(range(20))}
    assert delivered == {0: [True] * 20, 1: [True] * 20}
    assert sum(link.reliability["retransmissions"] for link in links) > 0
    assert ack_kind("note") == "note/ack"
    assert {kind for link in links for _, kind, _ in link.sent_log} == {"note", "note/ack"}


def test_finish_phase_stays_only_when_it_owes_answers() -> None:
    hub = MemoryHub()
    a, b = PeerLink(hub.transport(0, [1]), policy=FAST), PeerLink(hub.transport(1, [0]))
    assert a.finish_phase() == 0.0
    b.send_reliable(0, "g", {"v": 1}, (0,), answers=("g",))
    a.exchange_round("g", {1: {"v": 0}}, (0,), deadline=time.monotonic() + 1.0)
    seconds = a.finish_phase()
    rto = a.timeout_for(1, "g")  # (1 + linear retransmissions) × the longest RTO owed
    assert seconds == pytest.approx(rto * (1 + FAST.linear_retransmissions)) and seconds > 0
    assert a.finish_phase() == 0.0  # owed once per phase


# -- the variants under loss --------------------------------------------------------------------


def _lossy_gossip(graph: dict[int, list[int]], vectors: np.ndarray, config: GossipConfig,
                  drop: float) -> tuple[dict, dict[int, PeerLink], float]:
    hub = MemoryHub()
    links = {i: PeerLink(FaultyTransport(hub.transport(i, graph[i]),
                                         FaultSpec(seed=7, drop=drop))) for i in graph}
    results = {}

    def agent(i: int) -> Callable[[], None]:
        def body() -> None:
            results[i] = average(links[i], vectors[i], config)
            links[i].finish_phase()
        return body

    started = time.monotonic()
    in_threads([agent(i) for i in graph], join=120.0)
    return results, links, time.monotonic() - started


def test_metropolis_gossip_under_30_percent_drop_ends_at_the_lossless_result() -> None:
    """Ring of 6, 30 % of all copies dropped, 40 rounds. Without retransmission (each round
    ends before any copy is re-sent) the lost messages shift the network mean for good; with
    it, the rounds complete and the estimates end at (or, on a loaded host, near) W^R x, as
    with no loss, in far less time than the per-round bound."""
    graph, rounds = ring_graph(6), 40
    vectors = np.random.default_rng(3).normal(size=(6, 5)) * 3.0
    lossless = np.linalg.matrix_power(metropolis_weights(graph), rounds) @ vectors
    without, _, _ = _lossy_gossip(graph, vectors, GossipConfig(rounds=rounds,
                                                               round_timeout=0.02), 0.3)
    config = GossipConfig(rounds=rounds, round_timeout=10.0)
    results, links, elapsed = _lossy_gossip(graph, vectors, config, 0.3)

    def error(found: dict) -> float:
        return max(float(np.abs(found[i].estimate - lossless[i]).max()) for i in graph)

    missing = sum(r.missing for r in without.values())
    assert missing > 20
    # usually none is missing; a round can still run past its bound on a loaded host (a
    # backed-off wait) and the last round's copies can be lost both ways after a neighbour left
    assert sum(r.missing for r in results.values()) < missing / 4
    assert error(results) < 0.1 * error(without)
    assert sum(links[i].transport.events["drop"] for i in graph) > 50
    assert sum(links[i].reliability["retransmissions"] for i in graph) > 0
    assert elapsed < rounds * config.round_timeout / 4


def test_a_dropped_token_copy_is_retransmitted_without_token_lost() -> None:
    n, edges, timeout = 4, complete(4), 5.0
    config = settings(timeout=timeout)
    order = TokenRelay(0, n, edges, config.token).order(0)
    first, second = order[0], order[1]

    def lose_first_copies(links: list[PeerLink]) -> None:
        for agent, kind in ((first, TOKEN), (second, TOKEN_ACK)):
            transport = links[agent].transport
            send, lost = transport.send, []

            def lossy(neighbour, kind_sent, round_, body, send=send, lost=lost, kind=kind):
                if kind_sent == kind and not lost:
                    lost.append(body)  # the first token copy / the first acknowledgement
                    return 0
                return send(neighbour, kind_sent, round_, body)

            transport.send = lossy

    agents = make_agents("happo", edges, n, config)
    seen = spy_on_factors(agents)
    for agent in agents:  # as the runtime does after the peer phase
        def phase(batch, peers, original=agent.peer_phase):
            stats = original(batch, peers)
            peers.finish_phase()
            return stats
        agent.peer_phase = phase
    results, links, _ = run_threads(agents, edges, n, wrap=lose_first_copies)
    assert all(r["token/lost"] == 0 for r in results.values())
    assert results[second]["token/wait_seconds"] < timeout / 2
    reference = reference_factors(make_agents("happo", edges, n, config), order)
    for agent in order:
        np.testing.assert_array_equal(seen[agent], reference[agent])
    assert links[first].reliability["retransmissions"] >= 1
    assert links[second].reliability["duplicates"] >= 1  # the copy re-sent for the lost ack
    assert all(r["token/late"] == 0 for r in results.values())  # updated once each


def _lossy_links(graph: nx.Graph, drop: float) -> tuple[MemoryHub, Callable]:
    hub = MemoryHub()

    def link(agent: int, neighbours: Sequence[int]) -> PeerLink:
        transport = FaultyTransport(hub.transport(agent, neighbours),
                                    FaultSpec(seed=11 + agent, drop=drop))
        return PeerLink(transport, iteration=0)

    return hub, link


def test_maddpg_rows_under_30_percent_drop_give_the_lossless_updates() -> None:
    from p2pmarl.algos.maddpg import MADDPG
    from tests.test_maddpg import CONFIG, SPEC, _batches

    edges = [(0, 1), (1, 2), (0, 2)]
    graph = nx.Graph(edges)

    def run(drop: float) -> tuple[list[MADDPG], dict[int, dict], list[PeerLink]]:
        _, make_link = _lossy_links(graph, drop)
        agents = [MADDPG(i, SPEC, sorted(graph.adj[i]), CONFIG, seed=10 + i, shared_seed=7)
                  for i in range(3)]
        links = [make_link(i, sorted(graph.adj[i])) for i in range(3)]
        batches, results = _batches(), {}

        def agent(i: int) -> Callable[[], None]:
            def body() -> None:
                torch.set_num_threads(1)
                agents[i].local_update(batches[i])
                results[i] = agents[i].peer_phase(batches[i], links[i])
                links[i].finish_phase()
            return body

        in_threads([agent(i) for i in range(3)])
        return agents, results, links

    clean, _, _ = run(0.0)
    lossy, results, links = run(0.3)
    assert all(r["maddpg/updates"] == 3 and r["maddpg/skipped_updates"] == 0
               for r in results.values()), results
    assert sum(link.transport.events["drop"] for link in links) > 0
    for a, b in zip(clean, lossy, strict=True):
        for key, value in a.learner.critic.state_dict().items():
            torch.testing.assert_close(value, b.learner.critic.state_dict()[key])


def test_genetic_sync_under_30_percent_drop_loads_the_true_best_everywhere() -> None:
    from p2pmarl.algos.genetic_maddpg import GeneticConfig, GeneticMADDPG
    from p2pmarl.topology import topology_from_graph
    from tests.test_maddpg import GENETIC

    graph = nx.cycle_graph(5)
    topology = topology_from_graph(graph)
    scores = {0: 1.0, 1: 5.0, 2: -3.0, 3: 2.0, 4: 0.0}
    _, make_link = _lossy_links(graph, 0.3)
    workers = [GeneticMADDPG(w, "tag", 10, topology, GENETIC, GeneticConfig(gossip_timeout=5.0),
                             seed=w) for w in graph]
    links = [make_link(w, topology.neighbours(w)) for w in graph]
    records: list[list[dict]] = [[] for _ in graph]
    for w, worker in enumerate(workers):
        worker.since_sync = [np.array([scores[w], 0.0, 0.0, 0.0])]
        worker.record = records[w].append
    best = workers[1].critic_parameters()

    def worker(w: int) -> Callable[[], None]:
        def body() -> None:
            torch.set_num_threads(1)
            workers[w].sync(links[w], sync=1)
            links[w].finish_phase()
        return body

    started = time.monotonic()
    in_threads([worker(w) for w in graph])
    assert time.monotonic() - started < 5.0 * 3  # no round waited out its bound
    assert sum(link.transport.events["drop"] for link in links) > 0
    for w in graph:
        (record,) = records[w]
        assert record["winner"] == 1 and record["neighbours_agree"]
        assert record["missed_rounds"] == 0
        assert np.array_equal(workers[w].critic_parameters(), best)


def test_finish_phase_ends_early_once_until_says_no_neighbour_waits() -> None:
    """The runtime passes ``until`` = "the world's next message has arrived" (every agent is
    ready, so no neighbour still waits): the stay ends then, not after its whole bound."""
    hub = MemoryHub()
    a, b = PeerLink(hub.transport(0, [1]), policy=FAST), PeerLink(hub.transport(1, [0]))
    b.send_reliable(0, "g", {"v": 1}, (0,), answers=("g",))
    a.exchange_round("g", {1: {"v": 0}}, (0,), deadline=time.monotonic() + 1.0)
    looks = []
    seconds = a.finish_phase(until=lambda: looks.append(1) or len(looks) >= 3)
    assert len(looks) == 3
    assert 0 < seconds < FAST.min_timeout * 5 / 2
    assert a.reliability["linger_seconds"] == pytest.approx(seconds)
    b.send_reliable(0, "g", {"v": 2}, (1,), answers=("g",))
    a.exchange_round("g", {1: {"v": 0}}, (1,), deadline=time.monotonic() + 1.0)
    rto = a.timeout_for(1, "g")
    assert a.finish_phase(until=lambda: False) == pytest.approx(rto * 5)  # the whole bound
