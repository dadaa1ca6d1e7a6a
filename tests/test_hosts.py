"""Per-host launch pieces: --only parsing, key shares, the CURVE world link, merge, errors; and
a run split into two parts on loopback (the network-namespace version is tests/test_netns.py)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zmq

from p2pmarl.config import ConfigError
from p2pmarl.runtime.codec import WORLD, Message, encode
from p2pmarl.runtime.hosts import (
    HostPart,
    check_part_keys,
    export_keys,
    make_keys,
    merge_parts,
    parse_address,
    parse_only,
)
from p2pmarl.runtime.transport import CurveKeys
from p2pmarl.runtime.world_link import WorldClient, WorldServer
from p2pmarl.topology import topology_from_spec

REPO = Path(__file__).resolve().parents[1]


def _free_ports(count: int) -> list[int]:
    holders = [socket.socket() for _ in range(count)]
    try:
        for holder in holders:
            holder.bind(("127.0.0.1", 0))
        return [holder.getsockname()[1] for holder in holders]
    finally:
        for holder in holders:
            holder.close()


def test_parse_only_reads_ids_ranges_and_world():
    assert parse_only("world,0,2-3", 4) == HostPart(True, (0, 2, 3))
    assert parse_only("1", 4) == HostPart(False, (1,))
    with pytest.raises(ConfigError, match="do not exist"):
        parse_only("0,7", 4)
    with pytest.raises(ConfigError, match="'x'"):
        parse_only("0,x", 4)
    with pytest.raises(ConfigError, match="empty"):
        parse_only("3-1", 4)
    assert parse_address("10.0.0.1:7000") == "tcp://10.0.0.1:7000"
    with pytest.raises(ConfigError, match="HOST:PORT"):
        parse_address("10.0.0.1")


def test_a_host_gets_only_its_secret_keys(tmp_path):
    topology = topology_from_spec({"generator": "ring", "n": 4})
    make_keys(tmp_path / "all", topology)
    export_keys(tmp_path / "all", tmp_path / "b", parse_only("2,3", 4))
    export_keys(tmp_path / "all", tmp_path / "a", parse_only("world,0,1", 4))
    assert sorted(p.name for p in (tmp_path / "b/keys").iterdir()) == [
        "agent-2.key", "agent-3.key", "public.json"
    ]
    assert sorted(p.name for p in (tmp_path / "a/keys").iterdir()) == [
        "agent-0.key", "agent-1.key", "public.json", "world.key"
    ]
    public = json.loads((tmp_path / "b/keys/public.json").read_text())
    assert sorted(public) == ["0", "1", "2", "3", "world"]
    check_part_keys(tmp_path / "b", parse_only("2,3", 4))
    with pytest.raises(ConfigError, match=r"agent-0\.key"):
        check_part_keys(tmp_path / "b", parse_only("0,2", 4))
    with pytest.raises(ConfigError, match=r"world\.key"):
        check_part_keys(tmp_path / "b", parse_only("world", 4))
    # Made once: a second `keys` keeps them; a topology of another size is refused.
    before = (tmp_path / "all/keys/public.json").read_text()
    make_keys(tmp_path / "all", topology)
    assert (tmp_path / "all/keys/public.json").read_text() == before
    with pytest.raises(ConfigError, match="agents"):
        make_keys(tmp_path / "all", topology_from_spec({"generator": "ring", "n": 5}))


def test_the_world_link_over_tcp_admits_agents_and_refuses_strangers():
    endpoint = f"tcp://127.0.0.1:{_free_ports(1)[0]}"
    world_pair, agent_pair = zmq.curve_keypair(), zmq.curve_keypair()
    server = WorldServer(endpoint, 1, curve=CurveKeys(*world_pair, {0: agent_pair[0]}))
    agent = WorldClient(endpoint, 0, curve=CurveKeys(*agent_pair, {WORLD: world_pair[0]}))
    context = zmq.Context()
    stranger = context.socket(zmq.DEALER)
    stranger.linger = 0
    stranger.setsockopt(zmq.IDENTITY, b"agent-0")
    stranger.curve_publickey, stranger.curve_secretkey = zmq.curve_keypair()
    stranger.curve_serverkey = world_pair[0]
    stranger.connect(endpoint)
    try:
        stranger.send(encode(Message("ready", 0, WORLD, 5, 0, {})))
        agent.send("ready", 1, {})
        got = server.gather("ready", 1, timeout=5)
        assert list(got) == [0]
        time.sleep(0.5)
        # Nothing of the stranger arrived: not even a frame to reject.
        assert server._receive(0.5) is None
        assert sum(server.rejected.values()) == 0
    finally:
        stranger.close()
        context.term()
        agent.close()
        server.close()


def _ring4(path: Path) -> Path:
    ports = _free_ports(4)
    lines = ["name: ring4-loopback", "generator: ring", "n: 4", "addresses:"]
    lines += [f'  {a}: "127.0.0.1:{port}"' for a, port in enumerate(ports)]
    path.write_text("\n".join(lines) + "\n")
    return path


def _p2pmarl(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "p2pmarl", *args], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_run_in_two_parts_on_loopback_merges_to_a_whole_run(tmp_path, no_leaked_processes):
    out = no_leaked_processes
    topology = _ring4(tmp_path / "ring4.yaml")
    keys = tmp_path / "keys-all"
    for args in ([], ["--only", "world,0,1", "--export", str(out / "a")],
                 ["--only", "2,3", "--export", str(out / "b")]):
        assert _p2pmarl("keys", str(keys), "--topology", str(topology), *args).wait(60) == 0
    common = [
        "launch", "--topology", str(topology), "--env", "spread", "--algo", "matrpo",
        "--admm-schedule", "seeded", "--admm-iterations", "4", "--steps-per-iteration", "32",
        "--n-envs", "2", "--episode-length", "8", "--iterations", "1", "--no-progress",
        "--world-address", f"127.0.0.1:{_free_ports(1)[0]}",
    ]
    parts = [_p2pmarl(*common, "--run-dir", str(out / "a"), "--only", "world,0,1"),
             _p2pmarl(*common, "--run-dir", str(out / "b"), "--only", "2-3")]
    try:
        for part in parts:
            stdout, stderr = part.communicate(timeout=150)
            assert part.returncode == 0, stdout + stderr
    finally:
        for part in parts:
            if part.poll() is None:
                part.kill()
    summary = merge_parts(out / "merged", [out / "a", out / "b"])
    assert summary["status"] == "completed" and summary["iterations"] == 1
    assert all(isinstance(agent["return"], float) for agent in summary["agents"])
    assert [p["agents"] for p in summary["parts"]] == [[0, 1], [2, 3]]
    assert (out / "merged/world.jsonl").exists()
    assert not list((out / "merged/keys").glob("*.key"))  # no secret leaves its host
    with pytest.raises(ConfigError, match="no part holds"):
        merge_parts(out / "half", [out / "a"])
    with pytest.raises(ConfigError, match="two parts"):
        merge_parts(out / "twice", [out / "a", out / "a"])


def test_a_missing_host_is_named_with_its_address(tmp_path, no_leaked_processes):
    """Only the world's host starts: the world names the agents that never came and where."""
    out = no_leaked_processes
    topology = _ring4(tmp_path / "ring4.yaml")
    keys = tmp_path / "keys-all"
    assert _p2pmarl("keys", str(keys), "--topology", str(topology)).wait(60) == 0
    assert _p2pmarl("keys", str(keys), "--topology", str(topology), "--only", "world,0,1",
                    "--export", str(out / "a")).wait(60) == 0
    alone = _p2pmarl("launch", "--topology", str(topology), "--env", "spread", "--algo",
                     "matrpo", "--iterations", "1", "--steps-per-iteration", "32", "--n-envs",
                     "2", "--episode-length", "8", "--no-progress", "--connect-timeout", "4",
                     "--world-address", f"127.0.0.1:{_free_ports(1)[0]}",
                     "--run-dir", str(out / "a"), "--only", "world,0,1")
    _, stderr = alone.communicate(timeout=120)
    assert alone.returncode == 1
    addresses = json.loads((out / "a/endpoints.json").read_text())["agents"]
    assert addresses["2"] in stderr or addresses["3"] in stderr, stderr


def test_per_host_launch_refuses_bad_input(tmp_path):
    from p2pmarl.config import RunConfig
    from p2pmarl.runtime.hosts import launch_part

    spec = tmp_path / "plain.yaml"
    spec.write_text("generator: ring\nn: 4\n")
    config = RunConfig(topology=str(spec), algo="matrpo")
    with pytest.raises(ConfigError, match="--world-address"):
        launch_part(config, tmp_path / "a", "0", None)
    with pytest.raises(ConfigError, match="have no address"):
        launch_part(config, tmp_path / "a", "0", "127.0.0.1:7000")
    addressed = _ring4(tmp_path / "ring4.yaml")
    with pytest.raises(ConfigError, match="lacks CURVE keys"):
        launch_part(RunConfig(topology=str(addressed), algo="matrpo"), tmp_path / "a", "0",
                    "127.0.0.1:7000")
    with pytest.raises(ConfigError, match="centralized"):
        launch_part(RunConfig(topology=str(addressed), algo="ctrpo"), tmp_path / "a", "0",
                    "127.0.0.1:7000")
