"""Cost of one Meta-MAPG outer step with the paper's LSTM policy vs the MLP on the state.

Times the differentiable chain of L inner steps (create_graph) plus the backward pass of the
meta-objective on random IPD data, for the MLP policy of ``p2pmarl.algos.metamapg`` and for a
policy shaped like the paper's (appendix C.1: 64-unit input layer, one 64-unit LSTM, output
layer), run over each trajectory step by step.

    python bench/metamapg_policy_timing.py --trajectories 16 --horizon 50 --repeats 3
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import RESULTS, emit
from p2pmarl.algos.dice import ChainStep, MetaGradientTerms, meta_objective, tabular_policy
from p2pmarl.algos.metamapg import mlp_policy, mlp_policy_init

S, A, HIDDEN = 5, 2, 64


def lstm_init(seed: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)

    def weight(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator) / shape[0] ** 0.5

    return [weight(S, HIDDEN), torch.zeros(HIDDEN), weight(HIDDEN, 4 * HIDDEN),
            weight(HIDDEN, 4 * HIDDEN), torch.zeros(4 * HIDDEN), weight(HIDDEN, A),
            torch.zeros(A)]


def lstm_policy(params, states: torch.Tensor) -> torch.Tensor:
    """Input layer → LSTM cell unrolled over t (state reset at t = 0) → output layer."""
    w_in, b_in, w_x, w_h, b, w_out, b_out = params
    T, K = states.shape
    h = torch.zeros(K, HIDDEN)
    c = torch.zeros(K, HIDDEN)
    outputs = []
    for t in range(T):
        x = torch.relu(w_in[states[t]] + b_in)
        gates = x @ w_x + h @ w_h + b
        i, f, g, o = gates.chunk(4, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        outputs.append(torch.log_softmax(h @ w_out + b_out, dim=-1))
    return torch.stack(outputs)


def chain(K: int, T: int, L: int) -> list[ChainStep]:
    generator = torch.Generator().manual_seed(0)

    def ints(high: int) -> torch.Tensor:
        return torch.randint(high, (T, K), generator=generator)

    return [ChainStep(ints(S), ints(A), ints(A), torch.randn(T, K, generator=generator),
                      torch.randn(T, K, generator=generator),
                      torch.randn(T, K, generator=generator), torch.full((K,), 1.0 / K))
            for _ in range(L + 1)]


def seconds(policy, params, steps, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        leaves = [p.clone().requires_grad_(True) for p in params]
        started = time.perf_counter()
        objective, _, _ = meta_objective(policy, leaves, tabular_policy,
                                         [[torch.zeros(S, A)]] + [None] * (len(steps) - 1),
                                         steps, 1.0, 0.1, MetaGradientTerms())
        objective.backward()
        best = min(best, time.perf_counter() - started)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trajectories", type=int, default=16)
    parser.add_argument("--horizon", type=int, default=50)
    parser.add_argument("--chain-length", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    steps = chain(args.trajectories, args.horizon, args.chain_length)
    mlp = seconds(mlp_policy, mlp_policy_init(S, A, HIDDEN, 0), steps, args.repeats)
    lstm = seconds(lstm_policy, lstm_init(0), steps, args.repeats)
    return emit("metamapg_policy_timing", {
        "status": "ok", "trajectories": args.trajectories, "horizon": args.horizon,
        "chain_length": args.chain_length, "mlp_outer_step_seconds": mlp,
        "lstm_outer_step_seconds": lstm, "lstm_over_mlp": lstm / mlp,
    }, RESULTS)


if __name__ == "__main__":
    raise SystemExit(main())
