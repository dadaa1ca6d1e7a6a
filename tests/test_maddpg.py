"""MADDPG (agent per process) and Distributed Genetic MADDPG: replay, updates, gossip, faults.

Agents and workers run as threads over the in-memory transport, as tests/test_matrpo.py does.
"""

from __future__ import annotations

import threading
import time

import networkx as nx
import numpy as np
import pytest
import torch

from p2pmarl.algos.base import Batch
from p2pmarl.algos.genetic_maddpg import (
    GeneticConfig,
    GeneticMADDPG,
    max_propagation,
)
from p2pmarl.algos.maddpg import (
    MADDPG,
    ROW_FIELDS,
    ROWS,
    MADDPGConfig,
    MADDPGTeam,
    batch_transitions,
)
from p2pmarl.algos.replay import ReplayBuffer, shared_indices
from p2pmarl.envs.base import EnvSpec
from p2pmarl.runtime.peers import PeerLink
from p2pmarl.runtime.reliable import RELIABLE_FIELDS
from p2pmarl.runtime.transport import MemoryHub, MemoryTransport
from p2pmarl.topology import topology_from_graph

N, T, K = 3, 20, 4
SPEC = EnvSpec("synthetic", N, (5, 6, 4), (5, 3, 4), 10)
CONFIG = MADDPGConfig(hidden=(16, 16), batch_size=32, learning_starts=1, train_every=T * K // 3,
                      message_timeout=10.0, actor_lr=1e-2, critic_lr=1e-2)


def _batches(seed: int = 0) -> list[Batch]:
    """One rollout seen by N agents: shared joint actions and dones, own observations/rewards."""
    rng = np.random.default_rng(seed)
    joint = np.stack([rng.integers(0, a, size=(T, K)) for a in SPEC.action_sizes], axis=-1)
    dones = np.zeros((T, K), bool)
    dones[9::10] = True
    batches = []
    for agent in range(N):
        d = SPEC.observation_sizes[agent]
        rewards = (joint[..., (agent + 1) % N] == 0).astype(np.float32)
        batches.append(Batch(agent, rng.normal(size=(T, K, d)).astype(np.float32), joint,
                             rewards, dones, rng.normal(size=(K, d)).astype(np.float32)))
    return batches


def _run_agents(edges, batches, hub=None, skip=()):
    hub = hub or MemoryHub()
    graph = nx.Graph(edges)
    agents = [MADDPG(i, SPEC, sorted(graph.adj[i]), CONFIG, seed=10 + i, shared_seed=7)
              for i in range(N)]
    links = [PeerLink(hub.transport(i, sorted(graph.adj[i])), iteration=0) for i in range(N)]
    records: list[list[dict]] = [[] for _ in range(N)]
    results: dict[int, dict] = {}

    def agent_thread(i: int) -> None:
        torch.set_num_threads(1)
        agents[i].record = records[i].append
        agents[i].local_update(batches[i])
        results[i] = agents[i].peer_phase(batches[i], links[i])

    threads = [threading.Thread(target=agent_thread, args=(i,)) for i in range(N) if i not in skip]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads), "an update hung"
    return agents, links, records, results


def test_replay_buffer_wraps_samples_and_round_trips():
    buffer = ReplayBuffer(5, {"x": ((2,), "f4"), "d": ((), "?")})
    buffer.add({"x": np.arange(6, dtype=np.float32).reshape(3, 2), "d": np.zeros(3, bool)})
    buffer.add({"x": np.arange(6, 14, dtype=np.float32).reshape(4, 2), "d": np.ones(4, bool)})
    assert len(buffer) == 5 and buffer.position == 2 and buffer.added == 7
    # rows 0, 1 were overwritten by the 6th and 7th transitions (FIFO)
    assert buffer.sample(np.array([0, 1, 2]))["x"][:, 0].tolist() == [10.0, 12.0, 4.0]
    copy = ReplayBuffer(5, {"x": ((2,), "f4"), "d": ((), "?")})
    copy.load_state_dict(buffer.state_dict())
    assert np.array_equal(copy.data["x"], buffer.data["x"]) and copy.position == 2
    assert buffer.row_bytes == 9
    with pytest.raises(ValueError, match="exactly the fields"):
        buffer.add({"x": np.zeros((1, 2), np.float32)})
    with pytest.raises(IndexError):
        buffer.sample(np.array([5]))
    a, b = shared_indices(3, 4, 100, 8), shared_indices(3, 4, 100, 8)
    assert np.array_equal(a, b) and not np.array_equal(a, shared_indices(3, 5, 100, 8))


def test_agent_per_process_equals_single_process_loop_on_complete_graph():
    """Same replay sample, same initial networks: N agent threads exchanging maddpg_rows give
    the same actors and critics as the single-process loop, to float32 tolerance."""
    batches = _batches()
    team = MADDPGTeam(SPEC, CONFIG, seed=0, shared_seed=7)
    fresh = [MADDPG(i, SPEC, [j for j in range(N) if j != i], CONFIG, 10 + i, 7)
             for i in range(N)]
    for learner, agent in zip(team.learners, fresh, strict=True):
        learner.load_state_dict(agent.learner.state_dict())
    rows = [batch_transitions(b) for b in batches]
    due = team.add({
        "obs": np.concatenate([r["obs"] for r in rows], axis=1),
        "next_obs": np.concatenate([r["next_obs"] for r in rows], axis=1),
        "joint_actions": rows[0]["joint_actions"],
        "reward": np.stack([r["reward"] for r in rows], axis=1),
        "done": rows[0]["done"],
    })
    assert due == 3
    for _ in range(due):
        team.update()
    agents, _, records, results = _run_agents([(0, 1), (1, 2), (0, 2)], batches)
    assert all(r["maddpg/updates"] == 3 and r["maddpg/skipped_updates"] == 0
               for r in results.values()), results
    assert not any(records)
    for agent, learner in zip(agents, team.learners, strict=True):
        for name in ("actor", "critic", "target_actor", "target_critic"):
            mine = getattr(agent.learner, name).state_dict()
            theirs = getattr(learner, name).state_dict()
            for key in mine:
                torch.testing.assert_close(mine[key], theirs[key], rtol=1e-5, atol=1e-6)
        initial = fresh[agent.agent_id].learner.actor.state_dict()
        assert any(not torch.equal(initial[k], agent.learner.actor.state_dict()[k])
                   for k in initial), "the actor did not move"


def test_networked_critic_on_a_line_sends_only_rows_to_neighbours():
    agents, links, _, results = _run_agents([(0, 1), (1, 2)], _batches())
    assert agents[0].learner.group == (0, 1) and agents[1].learner.group == (0, 1, 2)
    assert agents[0].learner.critic[0].in_features == 5 + 6 + 5 + 3
    assert all(r["maddpg/updates"] == 3 for r in results.values())
    for i, link in enumerate(links):
        assert {kind for _, kind, _ in link.sent_log} == {ROWS}
        assert {receiver for receiver, _, _ in link.sent_log} == set(agents[i].neighbours)
        assert all(set(keys) == set(ROW_FIELDS) | RELIABLE_FIELDS for _, _, keys in link.sent_log)


def test_rows_of_another_sample_are_refused_by_fingerprint():
    batches = _batches()
    other = _batches(seed=1)
    batches[2] = Batch(2, batches[2].observations, other[2].joint_actions, batches[2].rewards,
                       batches[2].dones, batches[2].last_observations)
    _, _, records, results = _run_agents([(0, 1), (1, 2)], batches)
    assert results[0]["maddpg/updates"] == 3  # agent 0 only talks to agent 1: rows line up
    assert results[1]["maddpg/skipped_updates"] == 3
    assert {r["reason"] for r in records[1]} == {"fingerprint_mismatch"}


def test_dead_neighbour_skips_updates_without_waiting_out_the_timeout():
    hub = MemoryHub()
    hub.down.add(2)
    begin = time.monotonic()
    _, _, records, results = _run_agents([(0, 1), (1, 2)], _batches(), hub=hub, skip=(2,))
    assert time.monotonic() - begin < CONFIG.message_timeout
    assert results[1]["maddpg/skipped_updates"] == 3 and results[0]["maddpg/updates"] == 3
    assert {r["reason"] for r in records[1]} == {"neighbour_down"}


@pytest.mark.parametrize("graph", [nx.cycle_graph(7), nx.path_graph(6),
                                   nx.connected_watts_strogatz_graph(10, 4, 0.3, seed=2)],
                         ids=["ring", "line", "random"])
def test_max_propagation_reaches_every_worker_in_diameter_rounds(graph):
    neighbours = {w: sorted(graph.adj[w]) for w in graph}
    rng = np.random.default_rng(0)
    scores = {w: float(rng.normal()) for w in graph}
    true_best = max(scores, key=scores.get)
    diameter = nx.diameter(graph)
    history = max_propagation(neighbours, scores, diameter)
    assert set(history[diameter].values()) == {true_best}
    # and not sooner for the worker farthest from the winner
    farthest = max(graph, key=lambda w: nx.shortest_path_length(graph, w, true_best))
    distance = nx.shortest_path_length(graph, farthest, true_best)
    assert history[distance - 1][farthest] != true_best if distance else True


GENETIC = MADDPGConfig(hidden=(8,), batch_size=8, learning_starts=1)


class LoseRound(MemoryTransport):
    """Loses every copy of one worker's gossip message of one round to one neighbour."""

    def __init__(self, hub: MemoryHub, agent: int, neighbours, lose: tuple[int, int, int]):
        super().__init__(hub, agent, neighbours)
        self.lose = lose  # (sender, receiver, round)

    def send(self, receiver, kind, round, body):  # type: ignore[override]
        if (self.agent_id, receiver, body.get("round")) == self.lose and kind == "critic_gossip":
            return 0
        return super().send(receiver, kind, round, body)


def _run_sync(graph, scores, dead=(), lose=None, gossip_timeout=5.0):
    topology = topology_from_graph(graph)
    hub = MemoryHub()
    hub.down.update(dead)
    workers = [GeneticMADDPG(w, "tag", 10, topology, GENETIC,
                             GeneticConfig(gossip_timeout=gossip_timeout), seed=w) for w in graph]
    links = [PeerLink(LoseRound(hub, w, topology.neighbours(w), lose) if lose else
                      hub.transport(w, topology.neighbours(w)), iteration=0) for w in graph]
    records: list[list[dict]] = [[] for _ in graph]
    for w, worker in enumerate(workers):
        worker.since_sync = [np.array([scores[w], 0.0, 0.0, 0.0])]
        worker.record = records[w].append
    before = [w.critic_parameters() for w in workers]

    def worker_thread(w: int) -> None:
        torch.set_num_threads(1)
        workers[w].sync(links[w], sync=1)

    threads = [threading.Thread(target=worker_thread, args=(w,)) for w in graph if w not in dead]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads), "a sync hung"
    return workers, before, records, links


@pytest.mark.parametrize("graph", [nx.cycle_graph(5), nx.path_graph(4)], ids=["ring", "line"])
def test_gossip_sync_loads_the_true_best_critic_everywhere(graph):
    scores = {0: 1.0, 1: 5.0, 2: -3.0, 3: 2.0, 4: 0.0}
    workers, before, records, links = _run_sync(graph, scores)
    best = max((w for w in graph), key=lambda w: scores[w])
    for w, worker in enumerate(workers):
        (record,) = records[w]
        assert record["winner"] == best and record["neighbours_agree"] and not record["missed"]
        assert record["loaded"] == (w != best)
        assert record["learned_at_round"] <= nx.diameter(graph) == record["rounds"]
        assert np.array_equal(worker.critic_parameters(), before[best])
        assert record["bytes_sent"] > before[best].nbytes
        kinds = {kind for _, kind, _ in links[w].sent_log}
        assert kinds == {"critic_gossip", "critic_winner"}
    # actors never sync
    assert not torch.equal(workers[0].team.learners[0].actor[0].weight,
                           workers[1].team.learners[0].actor[0].weight)


def test_a_round_missed_for_good_is_repaired_in_a_later_round():
    """0 - 1 - 2 - 3, worker 1 the best; every copy of 1's round-0 message to 2 is lost, so 2's
    round 0 gives up on it. Max-propagation forwards a critic once: without the repair 2 never
    gets 1's critic. With it, 1 sees from 2's round-1 offer that 2 lacks what 1 held in round 0
    and sends the critic again in round 2."""
    graph = nx.path_graph(4)
    scores = {0: 1.0, 1: 5.0, 2: -3.0, 3: 2.0}
    workers, before, records, _ = _run_sync(graph, scores, lose=(1, 2, 0), gossip_timeout=1.0)
    (record,) = records[2]
    assert record["missed_rounds"] == 1 and not record["missed"]
    assert record["winner"] == 1 and record["learned_at_round"] == 3 and record["loaded"]
    assert np.array_equal(workers[2].critic_parameters(), before[1])
    assert records[0][0]["winner"] == 1  # 0 hears 1 directly


def test_worker_cut_off_by_a_dead_neighbour_misses_the_sync_and_keeps_its_critic():
    graph = nx.path_graph(3)  # 0 - 1 - 2 with 1 dead: 0 and 2 hear nobody
    workers, before, records, _ = _run_sync(graph, {0: 1.0, 1: 9.0, 2: 5.0}, dead=(1,))
    for w in (0, 2):
        (record,) = records[w]
        assert record["missed"] and not record["loaded"] and record["winner"] == w
        assert np.array_equal(workers[w].critic_parameters(), before[w])
