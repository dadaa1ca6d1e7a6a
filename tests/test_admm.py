"""Tests of the MATRPO ADMM edge machinery (p2pmarl.algos.admm) on a convex consensus problem.

Agents are threads talking over :class:`MemoryHub`; every join has a timeout so a hang fails.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import networkx as nx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from p2pmarl.algos.admm import (
    EXCHANGE,
    EXCHANGE_FIELDS,
    MESSAGE_KINDS,
    NONDETERMINISTIC_FIELDS,
    ADMMConfig,
    ADMMPhase,
    Edge,
    EdgeState,
    consensus_update,
    edge_sequence,
    normalise_edges,
    per_edge_budget,
)
from p2pmarl.runtime.peers import PeerLink
from p2pmarl.runtime.transport import MemoryHub, MemoryTransport

SHAPE = (3, 5)
FINGERPRINT = "batch-0"
RELATIVE_TOLERANCE = 1e-3
"""Every agent's x must be this close (max abs error / max |x*|) to the centralized optimum."""


# -- a convex local problem with a known centralized optimum ------------------------------------


class QuadraticSolver:
    """Exact θ step for f_q(x) = ½ Σ p_q (x − c_q)² in place of the advantage term of eq. (21).

    q's share of the augmented Lagrangian (11)/(21) with ℓ^q = x:
    f_q(x) + Σ_e y_e^q (C_e^q x − z_e^q) + (β/2) Σ_e ‖C_e^q x − z_e^q‖², and (C_e^q)² = 1, so its
    gradient p(x − c) + dual_sum + β (degree·x − estimate_sum) vanishes at
    x = (p c − dual_sum + β estimate_sum) / (p + β degree).
    """

    def __init__(self, weight: np.ndarray, target: np.ndarray, beta: float) -> None:
        self.weight = weight
        self.target = target
        self.beta = beta
        self.x = np.zeros_like(target)
        self._pending: np.ndarray | None = None
        self.accepted = 0
        self.rejected = 0

    def propose(self, dual_sum: np.ndarray, estimate_sum: np.ndarray, degree: int) -> np.ndarray:
        numerator = self.weight * self.target - dual_sum + self.beta * estimate_sum
        self._pending = (numerator / (self.weight + self.beta * degree)).astype(np.float32)
        return self._pending

    def accept(self) -> None:
        assert self._pending is not None
        self.x, self._pending = self._pending, None
        self.accepted += 1

    def reject(self) -> None:
        self._pending = None
        self.rejected += 1

    def last_stats(self) -> dict[str, float]:
        assert self._pending is not None
        return {"objective": float(0.5 * np.sum(self.weight * (self._pending - self.target) ** 2))}


def quadratic_problem(n_agents: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weights p_q > 0, targets c_q and the centralized optimum x* = Σ p_q c_q / Σ p_q."""
    rng = np.random.default_rng(seed)
    weight = rng.uniform(0.5, 2.0, size=(n_agents, *SHAPE))
    target = rng.normal(size=(n_agents, *SHAPE))
    return weight, target, (weight * target).sum(0) / weight.sum(0)


def ring(n: int) -> list[Edge]:
    return normalise_edges((i, (i + 1) % n) for i in range(n))


def random_connected(n: int, p: float, seed: int) -> list[Edge]:
    for attempt in range(100):
        graph = nx.gnp_random_graph(n, p, seed=seed + attempt)
        if nx.is_connected(graph):
            return normalise_edges(graph.edges())
    raise AssertionError("no connected graph drawn")


# -- running one phase with one thread per agent ----------------------------------------------


class CapturingTransport(MemoryTransport):
    """Keeps every (receiver, kind, body) sent, to inspect what leaves an agent."""

    def __init__(self, hub: MemoryHub, agent_id: int, neighbours: Sequence[int]) -> None:
        super().__init__(hub, agent_id, neighbours)
        self.bodies: list[tuple[int, str, dict[str, Any]]] = []

    def send(self, receiver: int, kind: str, round: int, body: Any) -> int:
        self.bodies.append((receiver, kind, dict(body)))
        return super().send(receiver, kind, round, body)


class LossyTransport(MemoryTransport):
    """Silently loses a fraction of frames, like a lossy network."""

    def __init__(
        self, hub: MemoryHub, agent_id: int, neighbours: Sequence[int], drop: float, seed: int
    ) -> None:
        super().__init__(hub, agent_id, neighbours)
        self.drop = drop
        self.lost = 0
        self._random = random.Random(seed)

    def _send_frame(self, receiver: int, frame: bytes) -> bool:
        if self._random.random() < self.drop:
            self.lost += 1
            return True
        return super()._send_frame(receiver, frame)


class DropFirstExchange(MemoryTransport):
    """Loses exactly the first exchange message this agent sends."""

    def __init__(self, hub: MemoryHub, agent_id: int, neighbours: Sequence[int]) -> None:
        super().__init__(hub, agent_id, neighbours)
        self.dropped = False

    def send(self, receiver: int, kind: str, round: int, body: Any) -> int:
        if kind == EXCHANGE and not self.dropped:
            self.dropped = True
            return 0
        return super().send(receiver, kind, round, body)


TransportFactory = Callable[[MemoryHub, int, Sequence[int]], MemoryTransport]


@dataclass
class AgentRun:
    phase: ADMMPhase
    solver: QuadraticSolver
    link: PeerLink
    records: list[dict[str, Any]] = field(default_factory=list)
    stats: dict[str, float] = field(default_factory=dict)
    error: BaseException | None = None


def run_phase(
    edges: list[Edge],
    config: ADMMConfig,
    seed: int = 0,
    transport: TransportFactory | None = None,
    fingerprints: dict[int, str] | None = None,
    join_timeout: float | None = None,
) -> list[AgentRun]:
    """One ADMM phase of every agent of the graph, each in its own thread."""
    n_agents = 1 + max(j for _, j in edges)
    weight, target, _ = quadratic_problem(n_agents, seed)
    hub = MemoryHub()
    make = transport or MemoryTransport
    runs: list[AgentRun] = []
    for agent in range(n_agents):
        neighbours = sorted({i if j == agent else j for i, j in edges if agent in (i, j)})
        link = PeerLink(make(hub, agent, neighbours), iteration=3)
        solver = QuadraticSolver(weight[agent], target[agent], config.beta)
        records: list[dict[str, Any]] = []
        fingerprint = (fingerprints or {}).get(agent, FINGERPRINT)
        phase = ADMMPhase(link, solver, edges, SHAPE, config, fingerprint, records.append)
        runs.append(AgentRun(phase, solver, link, records))

    def target_of(run: AgentRun) -> Callable[[], None]:
        def body() -> None:
            try:
                run.stats = run.phase.run()
            except BaseException as error:
                run.error = error

        return body

    threads = [threading.Thread(target=target_of(run), daemon=True) for run in runs]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + (join_timeout or config.phase_timeout + 5.0)
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    assert not any(thread.is_alive() for thread in threads), "an agent hung in the ADMM phase"
    for run in runs:
        if run.error is not None:
            raise run.error
    return runs


def relative_error(runs: list[AgentRun], optimum: np.ndarray) -> float:
    worst = max(float(np.max(np.abs(run.solver.x - optimum))) for run in runs)
    return worst / float(np.max(np.abs(optimum)))


def assert_edges_consistent(runs: list[AgentRun], edges: list[Edge]) -> None:
    """Both ends agree, or differ by one commit and the re-synchronisation rule reconciles them."""
    for i, j in edges:
        low, high = runs[i].phase.states[(i, j)], runs[j].phase.states[(i, j)]
        if low.version != high.version:
            ahead, behind = (low, high) if low.version > high.version else (high, low)
            assert ahead.version == behind.version + 1, (i, j, low.version, high.version)
            assert ahead.resynchronise(behind.version)
            assert behind.resynchronise(ahead.version)
        assert low.version == high.version
        np.testing.assert_array_equal(low.dual, high.dual)
        np.testing.assert_array_equal(low.estimate, -high.estimate)


# -- pure pieces ------------------------------------------------------------------------------

finite32 = st.floats(-10, 10, allow_nan=False, width=32)


@settings(max_examples=60, deadline=None)
@given(
    y_low=arrays(np.float32, SHAPE, elements=finite32),
    y_high=arrays(np.float32, SHAPE, elements=finite32),
    l_low=arrays(np.float32, SHAPE, elements=finite32),
    l_high=arrays(np.float32, SHAPE, elements=finite32),
    z_low=arrays(np.float32, SHAPE, elements=finite32),
    beta=st.sampled_from([0.5, 1.0, 5.0]),
)
def test_consensus_update_is_eq22_and_symmetric(
    y_low: np.ndarray,
    y_high: np.ndarray,
    l_low: np.ndarray,
    l_high: np.ndarray,
    z_low: np.ndarray,
    beta: float,
) -> None:
    at_low = consensus_update(1, z_low, y_low, y_high, l_low, l_high, beta)
    at_high = consensus_update(-1, -z_low, y_high, y_low, l_high, l_low, beta)
    # Eq. (22) in float64.
    y_low64, y_high64, l_low64, l_high64 = (
        a.astype(np.float64) for a in (y_low, y_high, l_low, l_high)
    )
    nu = 0.5 * (y_low64 + y_high64) + beta / 2 * (l_low64 - l_high64)
    z_low_new = (y_low64 - nu) / beta + l_low64
    z_high_new = (y_high64 - nu) / beta - l_high64
    scale = 1 + np.abs(nu).max() / beta
    np.testing.assert_allclose(at_low.dual, nu, atol=1e-5 * scale * beta)
    np.testing.assert_allclose(at_low.estimate, z_low_new, atol=1e-5 * scale)
    np.testing.assert_allclose(at_high.estimate, z_high_new, atol=1e-5 * scale)
    # Both ends: identical y, opposite z (eq. 9b exactly), identical residuals.
    np.testing.assert_array_equal(at_low.dual, at_high.dual)
    np.testing.assert_array_equal(at_low.estimate, -at_high.estimate)
    for name in ("disagreement_rms", "primal_rms", "dual_rms"):
        assert getattr(at_low, name) == getattr(at_high, name)
    # y update of eq. (12c): y_new = y + β (C ℓ − z_new), so the primal residual is (ν − y)/β.
    primal = np.concatenate([(nu - y_low64).ravel(), (nu - y_high64).ravel()]) / beta
    assert math.isclose(
        at_low.primal_rms, float(np.sqrt(np.mean(primal**2))), rel_tol=1e-3, abs_tol=1e-4 * scale
    )
    assert math.isclose(
        at_low.disagreement_rms, float(np.sqrt(np.mean((l_low64 - l_high64) ** 2))), rel_tol=1e-5
    )


def test_edge_state_resynchronise_rolls_back_the_side_that_is_ahead() -> None:
    ahead = EdgeState.fresh((0, 1), 0, SHAPE, initial_dual=1.0)
    behind = EdgeState.fresh((0, 1), 1, SHAPE, initial_dual=1.0)
    assert (ahead.sign, behind.sign, ahead.partner, behind.partner) == (1, -1, 1, 0)
    ahead.commit(np.full(SHAPE, 2.0, np.float32), np.full(SHAPE, 3.0, np.float32))
    assert ahead.version == 1
    assert not behind.resynchronise(ahead.version)  # behind cannot catch up: the other side must
    assert ahead.resynchronise(behind.version)
    assert ahead.version == 0
    np.testing.assert_array_equal(ahead.dual, behind.dual)
    np.testing.assert_array_equal(ahead.estimate, np.zeros(SHAPE))
    two_ahead = EdgeState.fresh((0, 1), 0, SHAPE)
    for _ in range(2):
        two_ahead.commit(np.ones(SHAPE, np.float32), np.ones(SHAPE, np.float32))
    assert not two_ahead.resynchronise(0)  # cannot happen by construction; never guessed
    with pytest.raises(ValueError, match="not an endpoint"):
        EdgeState.fresh((0, 1), 2, SHAPE)


def test_edge_sequence_and_budget() -> None:
    edges = ring(5)
    first = edge_sequence(edges, 200, seed=7, iteration=4)
    assert first == edge_sequence(edges, 200, seed=7, iteration=4)
    assert first != edge_sequence(edges, 200, seed=7, iteration=5)
    assert len(first) == 200 and set(first) == set(edges)
    assert per_edge_budget(100, 5) == 20 and per_edge_budget(101, 5) == 21
    assert per_edge_budget(100, 0) == 0
    assert normalise_edges([(1, 0), (0, 1), (2, 1)]) == [(0, 1), (1, 2)]
    with pytest.raises(ValueError, match="self-loop"):
        normalise_edges([(1, 1)])
    with pytest.raises(ValueError, match="schedule"):
        ADMMConfig(schedule="sync")  # type: ignore[arg-type]


# -- (a) convergence to the centralized optimum -----------------------------------------------

TOPOLOGIES = {"ring5": (ring(5), 400), "random7": (random_connected(7, 0.45, seed=11), 1200)}


@pytest.mark.parametrize("schedule", ["seeded", "async"])
@pytest.mark.parametrize("topology", sorted(TOPOLOGIES))
def test_convex_consensus_reaches_centralized_optimum(schedule: str, topology: str) -> None:
    edges, budget = TOPOLOGIES[topology]
    config = ADMMConfig(
        beta=1.0, budget=budget, schedule=schedule, seed=5, message_timeout=2.0, phase_timeout=20.0
    )  # type: ignore[arg-type]
    runs = run_phase(edges, config, seed=1)
    _, _, optimum = quadratic_problem(len(runs), 1)
    error = relative_error(runs, optimum)
    assert error < RELATIVE_TOLERANCE, f"{schedule}/{topology}: relative error {error:.2e}"
    assert all(run.stats["admm/aborted"] == 0 for run in runs)
    assert_edges_consistent(runs, edges)
    committed = sum(run.stats["admm/activations"] for run in runs) / 2
    if schedule == "seeded":
        assert committed == budget
    else:
        assert committed == per_edge_budget(budget, len(edges)) * len(edges)
    last = [r for run in runs for r in run.records if r["status"] == "committed"][-1]
    assert last["disagreement_rms"] < 1e-3 and "solver/objective" in last


def test_seeded_phase_equals_sequential_algorithm_1() -> None:
    """The distributed seeded run gives Algorithm 1's numbers (a slow, obvious reference)."""
    edges, budget = ring(5), 150
    config = ADMMConfig(beta=2.0, budget=budget, seed=3, initial_dual=1.0, phase_timeout=20.0)
    runs = run_phase(edges, config, seed=2)
    weight, target, _ = quadratic_problem(5, 2)
    solvers = [QuadraticSolver(weight[q], target[q], config.beta) for q in range(5)]
    states = {(e, q): EdgeState.fresh(e, q, SHAPE, config.initial_dual) for e in edges for q in e}
    for edge in edge_sequence(edges, budget, config.seed, iteration=3):
        proposals = {}
        for q in edge:
            own = [states[(e, q)] for e in edges if q in e]
            dual_sum = np.zeros(SHAPE, np.float32)
            estimate_sum = np.zeros(SHAPE, np.float32)
            for state in own:
                dual_sum += state.sign * state.dual
                estimate_sum += state.sign * state.estimate
            proposals[q] = solvers[q].propose(dual_sum, estimate_sum, len(own))
        i, j = edge
        steps = {}
        for q, partner in ((i, j), (j, i)):
            state, other = states[(edge, q)], states[(edge, partner)]
            steps[q] = consensus_update(
                state.sign,
                state.estimate,
                state.dual,
                other.dual,
                proposals[q],
                proposals[partner],
                config.beta,
            )
        for q in edge:
            states[(edge, q)].commit(steps[q].estimate, steps[q].dual)
            solvers[q].accept()
    for q in range(5):
        np.testing.assert_array_equal(runs[q].solver.x, solvers[q].x)


# -- (b) seeded reproducibility ---------------------------------------------------------------


def test_seeded_runs_are_reproducible() -> None:
    edges = random_connected(6, 0.5, seed=2)
    config = ADMMConfig(beta=1.0, budget=200, seed=9, initial_dual=1.0, phase_timeout=20.0)

    def strip(runs: list[AgentRun]) -> list[list[dict[str, Any]]]:
        return [
            [{k: v for k, v in r.items() if k not in NONDETERMINISTIC_FIELDS} for r in run.records]
            for run in runs
        ]

    first, second = run_phase(edges, config), run_phase(edges, config)
    assert strip(first) == strip(second)
    assert sum(len(run.records) for run in first) == 2 * config.budget
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a.solver.x, b.solver.x)
        for edge, state in a.phase.states.items():
            np.testing.assert_array_equal(state.dual, b.phase.states[edge].dual)


# -- (c) what leaves an agent ------------------------------------------------------------------


@pytest.mark.parametrize("schedule", ["seeded", "async"])
def test_messages_carry_only_log_ratio_dual_and_ids(schedule: str) -> None:
    edges = ring(4)
    config = ADMMConfig(budget=40, schedule=schedule, phase_timeout=10.0)  # type: ignore[arg-type]
    runs = run_phase(edges, config, transport=CapturingTransport)
    control_fields = {"activation", "version", "fingerprint", "reply"}
    exchanges = 0
    for run in runs:
        neighbours = set(run.link.neighbours)
        for receiver, kind, keys in run.link.sent_log:
            assert receiver in neighbours
            assert kind in MESSAGE_KINDS
            if kind == EXCHANGE:
                assert set(keys) == EXCHANGE_FIELDS
            else:
                assert set(keys) <= control_fields and "fingerprint" in keys
        transport = run.link.transport
        assert isinstance(transport, CapturingTransport)
        for _, kind, body in transport.bodies:
            arrays_sent = {k for k, v in body.items() if isinstance(v, np.ndarray)}
            if kind == EXCHANGE:
                exchanges += 1
                assert arrays_sent == {"log_ratio", "dual"}
                for name in arrays_sent:
                    assert body[name].dtype == np.float32 and body[name].shape == SHAPE
            elif kind in MESSAGE_KINDS:
                assert not arrays_sent
            assert body.get("fingerprint", FINGERPRINT) == FINGERPRINT
    assert exchanges == sum(run.stats["admm/activations"] for run in runs)


# -- (d) robustness ----------------------------------------------------------------------------


@pytest.mark.parametrize("schedule", ["seeded", "async"])
def test_lossy_network_terminates_consistently(schedule: str) -> None:
    edges = ring(5)
    config = ADMMConfig(
        budget=50,
        schedule=schedule,  # type: ignore[arg-type]
        message_timeout=0.2,
        phase_timeout=8.0,
        max_failures=5,
    )

    def lossy(hub: MemoryHub, agent: int, neighbours: Sequence[int]) -> MemoryTransport:
        return LossyTransport(hub, agent, neighbours, drop=0.2, seed=100 + agent)

    started = time.monotonic()
    runs = run_phase(edges, config, transport=lossy, join_timeout=config.phase_timeout + 3.0)
    elapsed = time.monotonic() - started
    assert elapsed < config.phase_timeout + 2.0
    assert sum(
        t.lost for t in (run.link.transport for run in runs) if isinstance(t, LossyTransport)
    )
    records = [r for run in runs for r in run.records]
    committed = [r for r in records if r["status"] == "committed"]
    assert committed and any(r["status"] == "aborted" for r in records)
    for r in committed:
        assert all(math.isfinite(r[k]) for k in ("disagreement_rms", "primal_rms", "dual_rms"))
    for run in runs:
        assert np.isfinite(run.solver.x).all()
        assert run.solver.accepted == run.stats["admm/activations"]
    assert_edges_consistent(runs, edges)


@pytest.mark.parametrize("schedule", ["seeded", "async"])
def test_lost_exchange_is_resynchronised(schedule: str) -> None:
    """Agent 1's first exchange is lost: agent 1 commits, agent 0 aborts, then they re-sync."""

    def drop_first(hub: MemoryHub, agent: int, neighbours: Sequence[int]) -> MemoryTransport:
        if agent == 1:
            return DropFirstExchange(hub, agent, neighbours)
        return MemoryTransport(hub, agent, neighbours)

    config = ADMMConfig(budget=12, schedule=schedule, message_timeout=0.3, phase_timeout=8.0)  # type: ignore[arg-type]
    runs = run_phase([(0, 1)], config, transport=drop_first)
    statuses = [(r["status"], r["reason"]) for r in runs[0].records]
    assert statuses[0][0] == "aborted"
    assert runs[1].records[0]["status"] == "committed"
    assert runs[1].stats["admm/resynchronisations"] == 1
    assert_edges_consistent(runs, [(0, 1)])
    assert runs[0].phase.states[(0, 1)].version >= 1


@pytest.mark.parametrize("schedule", ["seeded", "async"])
def test_fingerprint_mismatch_aborts_and_is_recorded(schedule: str) -> None:
    edges = ring(4)
    config = ADMMConfig(
        budget=40,
        schedule=schedule,  # type: ignore[arg-type]
        message_timeout=0.3,
        phase_timeout=8.0,
        max_failures=3,
    )
    runs = run_phase(edges, config, fingerprints={2: "another-batch"})
    for agent in (1, 2, 3):
        reasons = {r["reason"] for r in runs[agent].records if agent == 2 or 2 in r["edge"]}
        assert "fingerprint_mismatch" in reasons, agent
        assert runs[agent].stats["admm/fingerprint_mismatches"] >= 1
    for edge in ((1, 2), (2, 3)):
        for q in edge:
            assert runs[q].phase.states[edge].version == 0  # ℓ of two batches never combined
    assert runs[2].solver.accepted == 0
    assert runs[0].stats["admm/activations"] > 0
    assert all(r["status"] == "committed" for r in runs[0].records)
