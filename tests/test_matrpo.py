"""MATRPO on a fixed batch, agents as threads over the in-memory transport."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from p2pmarl.algos.admm import EXCHANGE_FIELDS, MESSAGE_KINDS, ADMMConfig
from p2pmarl.algos.base import Batch
from p2pmarl.algos.itrpo import TRPOConfig
from p2pmarl.algos.matrpo import MATRPO, MATRPOConfig, paper_defaults
from p2pmarl.envs.base import EnvSpec
from p2pmarl.runtime.peers import PeerLink
from p2pmarl.runtime.transport import MemoryHub

N, T, K, OBS = 3, 40, 5, 6
SPEC = EnvSpec("synthetic", N, (OBS,) * N, (4,) * N, 100)


def _batches(seed: int = 0) -> list[Batch]:
    """One rollout seen by 3 agents: shared joint actions, own observations and rewards."""
    rng = np.random.default_rng(seed)
    joint = rng.integers(0, 4, size=(T, K, N))
    batches = []
    for agent in range(N):
        observations = rng.normal(size=(T, K, OBS)).astype(np.float32)
        # agent i is rewarded for agent (i+1)'s action 0: it must learn about a peer's head
        rewards = (joint[..., (agent + 1) % N] == 0).astype(np.float32)
        batches.append(Batch(agent, observations, joint, rewards, np.zeros((T, K), bool),
                             rng.normal(size=(K, OBS)).astype(np.float32)))
    return batches


def _run_phase(edges, schedule, budget, seed=0, linearized=False):
    config = MATRPOConfig(
        # unit-scale advantages: the agreement thresholds below were calibrated with them
        trpo=TRPOConfig(max_kl=0.01, hidden=(16, 16), value_epochs=1, fisher_subsample=1,
                        advantage_normalization="own"),
        admm=ADMMConfig(beta=1.0, budget=budget, schedule=schedule, seed=seed,
                        message_timeout=5.0, phase_timeout=60.0),
        linearized_log_ratio=linearized,
    )
    hub = MemoryHub()
    neighbours = {i: sorted({j for e in edges for j in e if i in e} - {i}) for i in range(N)}
    agents = [MATRPO(i, SPEC, edges, config, seed=10 + i) for i in range(N)]
    links = [PeerLink(hub.transport(i, neighbours[i]), iteration=0) for i in range(N)]
    records: list[list[dict]] = [[] for _ in range(N)]
    batches = _batches()
    results: dict[int, dict] = {}

    def agent_thread(i: int) -> None:
        torch.set_num_threads(1)
        agents[i].record = records[i].append
        agents[i].local_update(batches[i])
        results[i] = agents[i].peer_phase(batches[i], links[i])

    threads = [threading.Thread(target=agent_thread, args=(i,)) for i in range(N)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads), "ADMM phase did not terminate"
    assert sorted(results) == list(range(N)), "an agent thread failed"
    log_ratios = []
    for agent, batch in zip(agents, batches, strict=True):
        observations = torch.from_numpy(batch.observations.reshape(-1, OBS))
        actions = torch.from_numpy(batch.joint_actions.reshape(-1, N))
        with torch.no_grad():
            log_ratios.append(
                (agent.policy.log_prob(observations, actions) - agent._old_log_prob).numpy()
            )
    return agents, links, records, results, log_ratios


@pytest.fixture(autouse=True)
def _keep_old_log_prob(monkeypatch):
    """Keep θ_old's log-probs on the agent so the test can compute the final log ratios."""
    original = MATRPO.local_update

    def local_update(self, batch):
        stats = original(self, batch)
        self._old_log_prob = self._solver.old_log_prob.clone()
        return stats

    monkeypatch.setattr(MATRPO, "local_update", local_update)


def _rms(values: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(values))))


@pytest.mark.parametrize("schedule", ["seeded", "async"])
def test_neighbours_reach_agreement_on_every_head(schedule):
    edges = [(0, 1), (0, 2), (1, 2)]
    _, _, records, results, log_ratios = _run_phase(edges, schedule, budget=150)
    scale = max(_rms(ell) for ell in log_ratios)
    assert scale > 1e-3, "the policies did not move at all"
    for i in range(N):
        for j in range(i + 1, N):
            assert _rms(log_ratios[i] - log_ratios[j]) < 0.15 * scale
    first = records[0][0]["disagreement_rms"]
    last = [r for r in records[0] if r["status"] == "committed"][-1]["disagreement_rms"]
    assert last < 0.5 * first
    assert all(results[i]["admm/activations"] >= 1 for i in range(N))


def test_consensus_step_improves_the_team_surrogate():
    """At consensus the shared ratio must serve the sum of all agents' objectives, as the
    centralized TRPO step on Σ_i A^i does: agent 0's own (I-TRPO-like) step ignores agents 1, 2."""
    edges = [(0, 1), (0, 2), (1, 2)]
    agents, _, _, _, log_ratios = _run_phase(edges, "seeded", budget=150)
    batches = _batches()
    team = 0.0
    for agent_id, batch in enumerate(batches):
        data = agents[agent_id].prepare(batch)
        advantage = data.advantages.numpy()
        team += float((log_ratios[agent_id].sum(axis=0) * advantage).mean())
    assert team > 0


def test_seeded_phase_is_reproducible():
    edges = [(0, 1), (1, 2)]
    runs = [_run_phase(edges, "seeded", budget=20, seed=3) for _ in range(2)]
    first, second = (run[4] for run in runs)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)
    strip = {"compute_seconds", "communication_seconds", "bytes_sent"}
    assert [{k: v for k, v in r.items() if k not in strip} for r in runs[0][2][1]] == [
        {k: v for k, v in r.items() if k not in strip} for r in runs[1][2][1]
    ]


def test_only_log_ratios_and_duals_cross_the_wire():
    edges = [(0, 1), (1, 2)]
    _, links, _, _, _ = _run_phase(edges, "async", budget=10)
    for agent, link in enumerate(links):
        for receiver, kind, keys in link.sent_log:
            assert receiver in link.neighbours
            assert kind in MESSAGE_KINDS
            if kind == "admm_exchange":
                assert set(keys) == EXCHANGE_FIELDS
            else:
                assert set(keys) <= {"activation", "version", "fingerprint", "reply"}, (agent, kind)


def test_linearized_log_ratio_matches_the_true_one_to_first_order():
    edges = [(0, 1), (0, 2), (1, 2)]
    _, _, records, _, _ = _run_phase(edges, "seeded", budget=60, linearized=True)
    for agent_records in records:
        committed = [r for r in agent_records if r["status"] == "committed"]
        assert len(committed) == len(agent_records) > 0
        assert committed[-1]["disagreement_rms"] < committed[0]["disagreement_rms"]


def test_linearized_log_ratio_is_the_jacobian_vector_product():
    agent = MATRPO(0, SPEC, [(0, 1)], MATRPOConfig(
        trpo=TRPOConfig(hidden=(8,)), linearized_log_ratio=True), seed=0)
    batch = _batches()[0]
    agent.local_update(batch)
    solver = agent._solver
    step = 1e-3 * torch.randn_like(solver.theta_old)
    linear = solver._linearized_log_ratio(solver.theta_old + step)
    true, _ = solver._log_ratio_and_kl(solver.theta_old + step)
    assert _rms((linear - true).numpy()) < 0.05 * _rms(true.numpy())


def test_paper_table_iii_defaults():
    assert paper_defaults(3) == (0.003, 1.0, 100)
    assert paper_defaults(6) == (0.003, 1.0, 150)
    assert paper_defaults(8) == (0.001, 5.0, 200)
    assert paper_defaults(12) == (0.001, 5.0, 500)
    assert paper_defaults(24) == (0.001, 5.0, 500)


def _solver_after_local_update(theta_step: str, max_kl: float, beta: float):
    config = MATRPOConfig(
        trpo=TRPOConfig(max_kl=max_kl, hidden=(8,), value_epochs=1, fisher_subsample=1),
        admm=ADMMConfig(beta=beta), theta_step=theta_step,
    )
    agent = MATRPO(0, SPEC, [(0, 1), (0, 2)], config, seed=0)
    agent.local_update(_batches()[0])
    return agent._solver


def _lagrangian_along_step(solver, scale: float, dual, estimate, degree: int) -> float:
    theta = solver.theta_old + scale * (solver._pending - solver.theta_old)
    log_ratio, _ = solver._log_ratio_and_kl(theta)
    return solver.augmented_lagrangian(log_ratio, dual, estimate, degree)


def test_theta_step_minimizes_the_augmented_lagrangian_inside_a_loose_trust_region():
    """Appendix eqs. (47)-(51): when the KKT multiplier is 0 the θ step is the interior
    minimizer s/(|E(q)|β) of the augmented Lagrangian, not the trust-region boundary (eq. (22)
    as printed, which the line search then halves to whatever first lowers the Lagrangian)."""
    solver = _solver_after_local_update("kkt", max_kl=1.0, beta=20.0)
    shape = tuple(solver.old_log_prob.shape)
    rng = np.random.default_rng(1)
    dual = torch.from_numpy(rng.normal(size=shape).astype(np.float32))
    estimate = torch.from_numpy(0.01 * rng.normal(size=shape).astype(np.float32))
    solver.propose(dual.numpy(), estimate.numpy(), degree=2)
    at_step = _lagrangian_along_step(solver, 1.0, dual, estimate, 2)
    longer = _lagrangian_along_step(solver, 1.5, dual, estimate, 2)
    shorter = _lagrangian_along_step(solver, 0.67, dual, estimate, 2)
    assert at_step <= min(longer, shorter), (shorter, at_step, longer)
    assert solver.last_stats()["step_fraction"] == 1.0
    assert solver.last_stats()["kl"] < 0.1


def test_theta_step_length_is_the_boundary_step_when_the_trust_region_binds():
    solver = _solver_after_local_update("kkt", max_kl=0.003, beta=1.0)
    assert solver.step_length(100.0, 2) == pytest.approx(np.sqrt(2 * 0.003 / 100.0))
    assert solver.step_length(1e-6, 2) == pytest.approx(0.5)
