"""Meta-MAPG (p2pmarl.algos.metamapg): the chain in-process, and real 2-process launches.

In-process: a chain driven by hand through the agents' own act/phase_update/local_update, to
check that the meta-agent's centralized model of the peer's learning is the peer's actual
learning and that an outer step changes φ^i_0. Launches (tiny budgets): the decentralized run
sends nothing but connection control frames between the agents (no parameters: privacy), the
centralized run sends exactly one ``peer_params`` per chain from the peer to the meta-agent and
is labelled not decentralized, and a meta-test run starts from a meta-training checkpoint. The
benchmarks' in-process driver (bench/metamapg_inprocess.py) gives the launch's chain rewards.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.metamapg_inprocess import run_chains
from p2pmarl.algos import make_algorithm
from p2pmarl.algos.base import Batch
from p2pmarl.algos.dice import meta_objective, tabular_policy
from p2pmarl.algos.metamapg import (
    CENTRALIZED_LABEL,
    DECENTRALIZED_LABEL,
    MetaAgent,
    PersonaPeer,
    mlp_policy,
)
from p2pmarl.config import ConfigError, RunConfig
from p2pmarl.envs import env_spec, make_env
from p2pmarl.runtime import transport, world_link
from p2pmarl.runtime.codec import WORLD
from p2pmarl.runtime.launcher import launch
from p2pmarl.topology import load_topology
from tests.test_privacy import AGENT_TO_WORLD, CONTROL, WORLD_TO_AGENT, _recording_encoder

REPO = Path(__file__).resolve().parents[1]
PAIR = str(REPO / "topologies/pair.yaml")
H, K, L = 10, 4, 2


def _config(**overrides) -> RunConfig:
    values = dict(topology=PAIR, env="ipd", algo="metamapg", iterations=2, n_envs=K,
                  episode_length=H, metamapg_chain_length=L, metamapg_outer_lr=0.05)
    values.update(overrides)
    return RunConfig(**values).validate()


def _agents(config: RunConfig) -> tuple[MetaAgent, PersonaPeer]:
    spec, topology = env_spec(config.env, 2, H), load_topology(PAIR)
    meta = make_algorithm("metamapg", 0, spec, topology, config, 11)
    peer = make_algorithm("metamapg", 1, spec, topology, config, 12)
    return meta, peer


def _chain(meta: MetaAgent, peer: PersonaPeer, seed: int = 0) -> list[dict]:
    """One chain of L + 1 phases through the agents' own methods (no processes)."""
    envs = [make_env(meta.spec.name, 2, H) for _ in range(K)]
    stats: list[dict] = []
    for phase in range(L + 1):
        observations = np.stack([env.reset(seed) for env in envs])  # (K, 2, S)
        obs = np.zeros((H, K, meta.n_states), np.float32)
        joint = np.zeros((H, K, 2), np.int64)
        rewards = np.zeros((H, K, 2), np.float32)
        for t in range(H):
            obs[t] = observations[:, 0]
            joint[t, :, 0] = meta.act(observations[:, 0])
            joint[t, :, 1] = peer.act(observations[:, 1])
            steps = [env.step(joint[t, k].tolist()) for k, env in enumerate(envs)]
            observations = np.stack([s[0] for s in steps])
            rewards[t] = np.stack([s[1] for s in steps])
        batches = [Batch(i, obs, joint, rewards[:, :, i], np.zeros((H, K), bool), obs[-1],
                         phase=f"chain{phase}") for i in (0, 1)]
        if phase < L:
            stats.append(meta.phase_update(batches[0]))
            peer.phase_update(batches[1])
        else:
            stats.append(meta.local_update(batches[0]))
            peer.local_update(batches[1])
    return stats


def test_centralized_model_of_the_peer_is_the_peers_actual_learning():
    meta, peer = _agents(_config(metamapg_peer_model=True))
    peer_logits = []
    original = peer.phase_update

    def recording_update(batch):
        peer_logits.append(peer.logits.clone())
        return original(batch)

    peer.phase_update = recording_update
    _chain(meta, peer)
    peer_logits.append(peer.logits.clone())
    _, _, peer_path = meta_objective(
        mlp_policy, meta.initial, tabular_policy, meta.peer_bases(peer_logits[0]),
        meta.chain_steps(), meta.settings.inner_lr, meta.settings.peer_lr, meta.terms,
    )
    assert len(peer_path) == L + 1
    for modelled, actual in zip(peer_path, peer_logits, strict=True):
        assert torch.allclose(modelled[0].detach(), actual, atol=1e-4)
    gradients = []
    for bases in (meta.peer_bases(peer_logits[0]), [[logits] for logits in peer_logits[:-1]]):
        objective, _, _ = meta_objective(
            mlp_policy, meta.initial, tabular_policy, bases, meta.chain_steps(),
            meta.inner_rates(), meta.settings.peer_lr, meta.terms,
        )
        gradients.append(torch.autograd.grad(objective, meta.initial))
    for centralized, perfect_model in zip(*gradients, strict=True):  # the decentralized form
        assert torch.allclose(centralized, perfect_model, atol=1e-6)  # with an exact model
    before = [p.detach().clone() for p in meta.initial]
    meta._finish_chain(peer_logits[0])
    assert any(not torch.equal(a, b) for a, b in zip(before, meta.initial, strict=True))


@pytest.mark.parametrize("game", ["ipd", "rps"])
def test_decentralized_chain_steps_rebuild_the_acted_parameters(game):
    meta, peer = _agents(_config(env=game))
    stats = _chain(meta, peer)
    assert stats[-1]["metamapg/form"] == DECENTRALIZED_LABEL
    assert stats[-1]["metamapg/rebuild_drift"] < 1e-5
    assert np.isfinite(stats[-1]["metamapg/grad_norm"]) and stats[-1]["metamapg/grad_norm"] > 0
    assert len(stats[-1]["metamapg/chain_rewards"]) == L + 1


def test_bad_settings_are_named():
    with pytest.raises(ConfigError, match="--n-envs 8"):
        _config(metamapg_trajectories=8)
    with pytest.raises(ConfigError, match="metamapg_variant"):
        _config(metamapg_variant="lol")
    with pytest.raises(ConfigError, match=r"pair\.yaml"):
        make_algorithm("metamapg", 0, env_spec("ipd", 2, H),
                       load_topology(REPO / "topologies/line4.yaml"), _config(), 0)


def _records(run_dir: Path, agent: int) -> list[dict]:
    path = run_dir / "agents" / f"agent-{agent}" / "metrics.jsonl"
    return [r for r in map(json.loads, path.read_text().splitlines()) if "iteration" in r]


def _wire(tmp_path, monkeypatch) -> Path:
    log = tmp_path / "wire.jsonl"
    encoder = _recording_encoder(log)
    monkeypatch.setattr(transport, "encode", encoder)
    monkeypatch.setattr(world_link, "encode", encoder)
    return log


def _check_world_messages(rows: list[dict]) -> list[dict]:
    peer_rows = []
    for row in rows:
        if row["sender"] == WORLD:
            assert row["kind"] in {"step", "stop"} and set(row["keys"]) <= WORLD_TO_AGENT
        elif row["receiver"] == WORLD:
            assert (row["kind"], tuple(row["keys"])) in AGENT_TO_WORLD
        else:
            peer_rows.append(row)
    return peer_rows


def test_decentralized_launch_sends_no_parameters_then_meta_tests(
    tmp_path, monkeypatch, no_leaked_processes
):
    log = _wire(tmp_path, monkeypatch)
    result = launch(_config(out=str(no_leaked_processes), checkpoint_every=2),
                    show_progress=False)
    assert result.summary["status"] == "completed", result.messages
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    peer_rows = _check_world_messages(rows)
    assert all(row["kind"] in CONTROL and row["keys"] == [] for row in peer_rows), peer_rows
    run_dir = Path(result.run_dir)
    meta = _records(run_dir, 0)
    assert len(meta) == 2 and all(r["metamapg/form"] == DECENTRALIZED_LABEL for r in meta)
    driven = run_chains(_config(out=str(no_leaked_processes)))  # the benchmarks' in-process engine
    assert [s[0]["metamapg/chain_rewards"] for s in driven] == [
        r["metamapg/chain_rewards"] for r in meta]
    assert [s[0]["metamapg/grad_norm"] for s in driven] == pytest.approx(
        [r["metamapg/grad_norm"] for r in meta], rel=1e-6)
    assert all(f"phase/chain{ell}/return" in meta[0] for ell in range(L))
    saved = json.loads((run_dir / "agents/agent-1/admm.jsonl").read_text().splitlines()[0])
    assert saved["event"] == "personas" and len(saved["train"]) == 400
    checkpoint = run_dir / "agents/agent-0/checkpoints/iter-000002.pt"
    assert checkpoint.is_file()
    log.unlink()
    test = launch(_config(out=str(no_leaked_processes), iterations=1, metamapg_meta_test=True,
                          metamapg_init=str(checkpoint)), show_progress=False)
    assert test.summary["status"] == "completed", test.messages
    (record,) = _records(Path(test.run_dir), 0)
    assert record["metamapg/meta_test"] is True and "metamapg/grad_norm" not in record
    assert _records(Path(test.run_dir), 1)[0]["metamapg/persona_split"] == "test"
    trained = torch.load(checkpoint, weights_only=False)["algorithm"]["initial"]
    probabilities = np.exp(mlp_policy(trained, torch.arange(5)).detach().numpy())
    assert np.allclose(record["chain/0/own_action_probs"], probabilities, atol=1e-4)


def test_centralized_launch_sends_one_peer_params_per_chain_and_says_so(
    tmp_path, monkeypatch, no_leaked_processes
):
    log = _wire(tmp_path, monkeypatch)
    result = launch(_config(out=str(no_leaked_processes), metamapg_peer_model=True),
                    show_progress=False)
    assert result.summary["status"] == "completed", result.messages
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    peer_rows = [r for r in _check_world_messages(rows) if r["kind"] not in CONTROL]
    assert [(r["sender"], r["receiver"], r["kind"], r["keys"], r["shapes"]["logits"])
            for r in peer_rows] == [(1, 0, "peer_params", ["logits"], [5, 2])] * 2
    meta = _records(Path(result.run_dir), 0)
    assert all(r["metamapg/form"] == CENTRALIZED_LABEL for r in meta)
    assert "NOT decentralized" in CENTRALIZED_LABEL
