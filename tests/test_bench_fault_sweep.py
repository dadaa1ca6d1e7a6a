"""bench/fault_sweep.py's reading of admm.jsonl records, on hand-written records."""

from __future__ import annotations

import math

from bench.fault_sweep import activation_outcomes, phase_disagreements


def _row(agent, iteration, edge, activation, status, disagreement=math.nan, reason=""):
    return {
        "iteration": iteration, "agent": agent, "activation": activation, "edge": list(edge),
        "status": status, "reason": reason, "disagreement_rms": disagreement,
    }


ROWS = [
    # iteration 0: edge (0, 1) completes activation 0 (ignored: not the asked iteration)
    _row(0, 0, (0, 1), 0, "committed", 9.0),
    _row(1, 0, (0, 1), 0, "committed", 9.0),
    # iteration 1, edge (0, 1): completed at 2 and 5; 7 split (one end aborted); 9 aborted
    _row(1, 1, (0, 1), 5, "committed", 0.25),  # records arrive out of activation order
    _row(0, 1, (0, 1), 2, "committed", 0.5),
    _row(1, 1, (0, 1), 2, "committed", 0.5),
    _row(0, 1, (0, 1), 5, "committed", 0.25),
    _row(0, 1, (0, 1), 7, "committed", 0.125),
    _row(1, 1, (0, 1), 7, "aborted", None, "timeout"),
    _row(0, 1, (0, 1), 9, "aborted", None, "version_mismatch"),
    _row(1, 1, (0, 1), 9, "aborted", None, "version_mismatch"),
    # iteration 1, edge (1, 2), written as [2, 1]: only aborted activations
    _row(2, 1, (2, 1), 3, "aborted", None, "partner_ahead"),
    _row(1, 1, (1, 2), 3, "aborted", None, "timeout"),
    # a record without an edge is skipped
    {"iteration": 1, "activation": 4, "status": "committed"},
]


def test_phase_disagreements_keeps_activations_committed_at_both_ends_in_order():
    phase = phase_disagreements(ROWS, [(0, 1), (1, 2), (2, 3)], iteration=1)
    assert phase == {(0, 1): [0.5, 0.25], (1, 2): [], (2, 3): []}
    assert phase_disagreements(ROWS, [(0, 1)], iteration=0) == {(0, 1): [9.0]}


def test_activation_outcomes_counts_each_activation_once():
    outcomes = activation_outcomes(ROWS)
    assert outcomes["committed"] == 3  # (0, 0), (1, 2), (1, 5) on edge (0, 1)
    assert outcomes["split"] == 1
    assert outcomes["aborted"] == 2
    assert outcomes["recorded"] == 6
    assert outcomes["abort_reasons"] == {"partner_ahead": 1, "timeout": 2, "version_mismatch": 2}
