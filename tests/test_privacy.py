"""What crosses the wire in a real multi-process run: every frame, every process.

The launcher forks its children from this test process, so wrapping the encoder here records
every message the world and the agents send. Nothing private (observations of others, rewards,
advantages, parameters) may leave an agent, and agents talk only to graph neighbours.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from p2pmarl.algos.admm import EXCHANGE_FIELDS, MESSAGE_KINDS
from p2pmarl.config import RunConfig
from p2pmarl.envs import env_spec
from p2pmarl.runtime import transport, world_link
from p2pmarl.runtime.codec import WORLD, encode
from p2pmarl.runtime.launcher import launch
from p2pmarl.runtime.reliable import RELIABLE_FIELDS
from p2pmarl.topology import load_topology

REPO = Path(__file__).resolve().parents[1]
K = 4
CONTROL = {"hello", "heartbeat"}
ADMM_CONTROL_FIELDS = {"activation", "version", "fingerprint", "reply"} | RELIABLE_FIELDS
WORLD_TO_AGENT = {"t", "last", "obs", "reward", "done", "joint_action"}
AGENT_TO_WORLD = {("ready", ()), ("act", ("actions", "t"))}


def _recording_encoder(log: Path):
    def recording_encode(message):
        shapes = {
            key: list(value.shape) for key, value in message.body.items()
            if isinstance(value, np.ndarray)
        }
        row = {"pid": os.getpid(), "kind": message.kind, "sender": message.sender,
               "receiver": message.receiver, "keys": sorted(message.body), "shapes": shapes,
               "copy": [message.body.get("attempt", 0), message.body.get("echo", 0)]}
        with log.open("a") as sink:
            sink.write(json.dumps(row) + "\n")
        return encode(message)

    return recording_encode


@pytest.mark.parametrize("algo", ["itrpo", "matrpo"])
def test_only_allowed_content_crosses_each_wire(algo, tmp_path, monkeypatch, no_leaked_processes):
    log = tmp_path / "wire.jsonl"
    encoder = _recording_encoder(log)
    monkeypatch.setattr(transport, "encode", encoder)
    monkeypatch.setattr(world_link, "encode", encoder)
    topology_file = REPO / "topologies/line4.yaml"
    config = RunConfig(
        topology=str(topology_file), env="spread", algo=algo, iterations=2,
        steps_per_iteration=32, n_envs=K, episode_length=8, admm_iterations=6,
        out=str(no_leaked_processes),
    )
    result = launch(config, show_progress=False)
    assert result.summary["status"] == "completed", result.messages
    topology = load_topology(topology_file)
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert rows
    peer_kinds = CONTROL | (MESSAGE_KINDS if algo == "matrpo" else set())
    exchanges = 0
    for row in rows:
        sender, receiver = row["sender"], row["receiver"]
        if sender == WORLD:
            assert row["kind"] in {"step", "stop", "ping"}  # ping: liveness probe, empty body
            assert set(row["keys"]) <= WORLD_TO_AGENT
            if "reward" in row["shapes"]:
                assert row["shapes"]["done"] == [K]  # every copy, one message per step
                assert row["shapes"]["reward"] == [K], "an agent got someone else's reward"
                own = env_spec("spread", 4).observation_sizes[receiver]
                assert row["shapes"]["obs"] == [K, own], "someone else's observation"
        elif receiver == WORLD:
            assert (row["kind"], tuple(row["keys"])) in AGENT_TO_WORLD
            if row["kind"] == "act":
                assert row["shapes"]["actions"] == [K]
        else:
            assert receiver in topology.neighbours(sender), row
            assert row["kind"] in peer_kinds, row
            if row["kind"] == "admm_exchange":
                exchanges += 1
                assert set(row["keys"]) - RELIABLE_FIELDS == EXCHANGE_FIELDS
                assert row["shapes"]["log_ratio"] == [4, 2 * K * 4]  # N × M
            elif row["kind"] not in CONTROL:
                assert set(row["keys"]) <= ADMM_CONTROL_FIELDS, row
            else:
                assert row["keys"] == []
    assert (exchanges > 0) == (algo == "matrpo")
