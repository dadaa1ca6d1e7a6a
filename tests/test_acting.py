"""One ``act`` call per step (``AgentAlgorithm.draws_row_by_row``): where a variant declares it,
acting on all K copies at once draws exactly what acting per chunk of rows draws."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from p2pmarl.algos import ALGORITHMS, make_algorithm
from p2pmarl.algos.networks import ProductPolicy, draws_once_per_call, sample_head
from p2pmarl.config import RunConfig
from p2pmarl.envs import env_spec
from p2pmarl.envs.base import ActionSpace
from p2pmarl.runtime.world_link import acting_chunks
from p2pmarl.topology import load_topology

REPO = Path(__file__).resolve().parents[1]
K = 9


def _chunked(act, observations: np.ndarray) -> np.ndarray:
    return np.concatenate([act(observations[c.start : c.stop]) for c in acting_chunks(K)])


@pytest.mark.parametrize(
    "algo, env, topology",
    [(name, "tag" if "maddpg" in name else "spread", "ring4" if "maddpg" in name else "ring3")
     for name in sorted(ALGORITHMS) if name not in ("metamapg", "genetic-maddpg")],
)
def test_variants_that_act_once_per_step_draw_what_acting_per_chunk_draws(algo, env, topology):
    topo = load_topology(REPO / "topologies" / f"{topology}.yaml")
    config = RunConfig(topology=str(REPO / "topologies" / f"{topology}.yaml"), env=env,
                       algo=algo, n_envs=K, steps_per_iteration=K * 10).validate()
    spec = env_spec(env, topo.n_agents, 25)
    whole, chunked = (make_algorithm(algo, 0, spec, topo, config, seed=7) for _ in range(2))
    size = sum(spec.observation_sizes) if whole.centralized else spec.observation_sizes[0]
    observations = np.random.default_rng(0).normal(size=(K, size)).astype(np.float32)
    one_call, per_chunk = whole.act(observations), _chunked(chunked.act, observations)
    if whole.draws_row_by_row:
        np.testing.assert_array_equal(one_call, per_chunk)
    else:  # C-TRPO: draws per head, so the order of a whole call differs
        assert algo == "ctrpo", f"{algo} should act once per step"
        assert not np.array_equal(one_call, per_chunk)


@pytest.mark.parametrize(
    "heads, once",
    [([ActionSpace("box", low=(-1.0, -1.0), high=(1.0, 1.0))], True),
     ([ActionSpace("discrete", nvec=(3,)), ActionSpace("box", low=(0.0,), high=(1.0,))], True),
     ([ActionSpace("discrete", nvec=(4, 3))], False)],
    ids=["box", "discrete-head", "multidiscrete"],
)
def test_product_policy_heads_draw_once_per_call_only_for_one_kind_of_noise(heads, once):
    policy = ProductPolicy(6, heads, (16,))
    observations = np.random.default_rng(1).normal(size=(K, 6)).astype(np.float32)
    assert draws_once_per_call(policy, 0) is once
    draws = [np.random.default_rng(3) for _ in range(2)]
    one_call = sample_head(policy, observations, 0, draws[0])
    per_chunk = _chunked(lambda o: sample_head(policy, o, 0, draws[1]), observations)
    assert np.array_equal(one_call, per_chunk) is once
