"""One run spread over network namespaces: tcp + CURVE between separate network stacks.

Three namespaces made by the test (``a``, ``b``, ``c``) are joined by veth pairs with 10.x
addresses that exist only inside them: ``a`` (10.77.1.1) — ``b`` (10.77.1.2), and ``c``
(10.77.2.1) — ``b`` (10.77.2.2). The world and agents 0, 1 run in ``a``, agents 2, 3 in ``b``;
``c`` holds a stranger with a key of its own. Nothing is sent to the host's own interfaces.
Namespaces (with their links) and every process in them are removed whatever happens.

The kernel has no ``netem`` qdisc: the 20 ms delay comes from the fault spec (application
level), as everywhere in p2pmarl.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
HAVE_IP = shutil.which("ip") is not None
pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
    pytest.mark.skipif(not HAVE_IP, reason="iproute2 (`ip netns`) is not installed"),
]
A, B = "10.77.1.1", "10.77.1.2"
C, B_FOR_C = "10.77.2.1", "10.77.2.2"
WORLD_PORT = 7100
COMMON = [
    "--env", "spread", "--algo", "matrpo", "--admm-schedule", "seeded", "--admm-iterations", "6",
    "--steps-per-iteration", "64", "--n-envs", "4", "--episode-length", "8", "--iterations", "2",
    "--seed", "3", "--no-progress", "--connect-timeout", "90",
]


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=20)


def _kill_namespace_processes(name: str) -> None:
    """SIGKILL every process inside namespace ``name`` (only processes the test started)."""
    listed = _ip("netns", "pids", name, check=False).stdout.split()
    for pid in listed:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)


@pytest.fixture
def namespaces():
    """Three namespaces joined by veth pairs; removed (processes, links) whatever happens."""
    tag = f"p2p{os.getpid() % 100000}"
    names = {key: f"{tag}{key}" for key in "abc"}
    try:
        probe = _ip("netns", "add", names["a"], check=False)
        if probe.returncode != 0:
            pytest.skip(f"`ip netns add` failed here: {probe.stderr.strip()}")
        for key in "bc":
            _ip("netns", "add", names[key])
        for ns in names.values():
            _ip("-n", ns, "link", "set", "lo", "up")
        _veth(names["a"], A, names["b"], B, f"{tag}ab", f"{tag}ba")
        _veth(names["c"], C, names["b"], B_FOR_C, f"{tag}cb", f"{tag}bc")
        # c reaches b's 10.77.1.2 through its own link (b answers for any of its addresses).
        _ip("-n", names["c"], "route", "add", "10.77.1.0/24", "via", B_FOR_C)
        yield names
    finally:
        for ns in names.values():
            _kill_namespace_processes(ns)
        time.sleep(0.2)
        for ns in names.values():
            _ip("netns", "del", ns, check=False)  # takes its veth ends (and their peers) along
        left = _ip("netns", "list", check=False).stdout
        assert not any(ns in left for ns in names.values()), left


def _veth(ns1: str, ip1: str, ns2: str, ip2: str, end1: str, end2: str) -> None:
    _ip("link", "add", end1, "type", "veth", "peer", "name", end2)
    for end, ns, address in ((end1, ns1, ip1), (end2, ns2, ip2)):
        _ip("link", "set", end, "netns", ns)
        _ip("-n", ns, "addr", "add", f"{address}/24", "dev", end)
        _ip("-n", ns, "link", "set", end, "up")


def _ring4(path: Path, hosts: list[str]) -> Path:
    lines = ["name: ring4-netns", "generator: ring", "n: 4", "addresses:"]
    lines += [f'  {agent}: "{host}:{7101 + agent}"' for agent, host in enumerate(hosts)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def _p2pmarl(ns: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        ["ip", "netns", "exec", ns, sys.executable, "-m", "p2pmarl", *args],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _finish(process: subprocess.Popen, timeout: float = 240) -> str:
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, out + err
    return out


def _make_keys(namespaces: dict, tmp: Path, out: Path) -> Path:
    """Keys made once, each host's share exported; returns the topology (world+0+1 in a)."""
    topology = _ring4(tmp / "ring4.yaml", [A, A, B, B])
    keys = tmp / "all-keys"
    _finish(_p2pmarl(namespaces["a"], "keys", str(keys), "--topology", str(topology)))
    for host, agents in (("host-a", "world,0,1"), ("host-b", "2,3")):
        _finish(_p2pmarl(namespaces["a"], "keys", str(keys), "--topology", str(topology),
                         "--only", agents, "--export", str(out / host)))
    return topology


def _split_run(namespaces: dict, tmp: Path, out: Path, extra: list[str]) -> Path:
    """World, agents 0 and 1 in namespace a, agents 2 and 3 in b; the parts merged."""
    topology = tmp / "ring4.yaml"
    if not topology.exists():
        _make_keys(namespaces, tmp, out)
    common = [*COMMON, *extra, "--topology", str(topology), "--world-address",
              f"{A}:{WORLD_PORT}"]
    first = _p2pmarl(namespaces["a"], "launch", *common, "--run-dir", str(out / "host-a"),
                     "--only", "world,0,1")
    second = _p2pmarl(namespaces["b"], "launch", *common, "--run-dir", str(out / "host-b"),
                      "--only", "2-3")
    try:
        _finish(first)
        _finish(second)
    finally:
        for process in (first, second):
            if process.poll() is None:
                process.kill()
    _finish(_p2pmarl(namespaces["a"], "merge", str(out / "merged"), str(out / "host-a"),
                     str(out / "host-b")))
    return out / "merged"


def _same_host_run(namespace: str, tmp: Path, out: Path, extra: list[str]) -> Path:
    topology = _ring4(tmp / "ring4-local.yaml", ["127.0.0.1"] * 4)
    stdout = _finish(_p2pmarl(namespace, "launch", *COMMON, *extra, "--topology", str(topology),
                              "--out", str(out / "local"), "--json"))
    return Path(json.loads(stdout)["run_dir"])


def _admm_records(run: Path) -> list[dict]:
    """Every agent's ADMM activation records without their timings and byte counts (a
    retransmitted copy, which load can cause, adds bytes but changes no number)."""
    rows = []
    for path in sorted(run.glob("agents/agent-*/admm.jsonl")):
        for line in path.read_text().splitlines():
            record = json.loads(line)
            rows.append({k: v for k, v in record.items()
                         if not k.endswith("_seconds") and k != "bytes_sent"})
    return rows


def _summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


STRANGER = textwrap.dedent("""
    import json, sys, time, zmq
    from zmq.utils.monitor import recv_monitor_message
    from p2pmarl.runtime.codec import Message, encode
    endpoint, server_key = sys.argv[1], sys.argv[2].encode()
    context = zmq.Context()
    dealer = context.socket(zmq.DEALER)
    dealer.linger = 0
    dealer.curve_publickey, dealer.curve_secretkey = zmq.curve_keypair()
    dealer.curve_serverkey = server_key
    monitor = dealer.get_monitor_socket()
    dealer.connect(endpoint)
    events, received, deadline = [], 0, time.monotonic() + float(sys.argv[3])
    while time.monotonic() < deadline:
        frame = encode(Message("exchange", 1, 2, 1, 1, {"value": 1.0}))
        try:
            dealer.send(frame, zmq.NOBLOCK)
        except zmq.Again:
            pass
        while monitor.poll(0):
            events.append(recv_monitor_message(monitor)["event"].name)
        if dealer.poll(100):
            dealer.recv()
            received += 1
        if "HANDSHAKE_FAILED_AUTH" in events:
            time.sleep(1.0)  # keep trying a moment: still nothing may come back
            received += dealer.poll(0) != 0
            break
    print(json.dumps({"events": sorted(set(events)), "received": received}))
""")


@pytest.mark.slow
def test_split_run_matches_a_same_host_run_and_refuses_a_stranger(
    namespaces, tmp_path, no_leaked_processes
):
    out = no_leaked_processes
    _make_keys(namespaces, tmp_path, out)
    server_key = json.loads((tmp_path / "all-keys/keys/public.json").read_text())["2"]
    # From namespace c, with a key nobody accepts, at agent 2's inbox in b: it keeps
    # reconnecting until agent 2 binds, then fails the CURVE handshake.
    stranger = subprocess.Popen(
        ["ip", "netns", "exec", namespaces["c"], sys.executable, "-c", STRANGER,
         f"tcp://{B}:{7101 + 2}", server_key, "200"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        merged = _split_run(namespaces, tmp_path, out, [])
        seen = json.loads(_finish(stranger, timeout=60))
    finally:
        if stranger.poll() is None:
            stranger.kill()
    local = _same_host_run(namespaces["a"], tmp_path, out, [])
    split_summary, local_summary = _summary(merged), _summary(local)
    assert split_summary["status"] == "completed"
    for key in ("team_return_curve", "agents", "iterations", "env_steps"):
        assert split_summary[key] == local_summary[key], key
    assert _admm_records(merged) and _admm_records(merged) == _admm_records(local)
    endpoints = json.loads((merged / "endpoints.json").read_text())
    assert endpoints["agents"]["2"] == f"tcp://{B}:7103" and endpoints["world"].startswith(
        f"tcp://{A}:"
    )
    # The stranger reached agent 2 over c's link and failed the CURVE handshake; nothing of it
    # reached any agent (no rejected frame counted) and it got nothing back.
    assert "HANDSHAKE_FAILED_AUTH" in seen["events"], seen
    assert seen["received"] == 0
    assert "refused a CURVE connection" in (merged / "agents/agent-2/log.txt").read_text()
    for agent in range(4):
        rows = [json.loads(r) for r in
                (merged / f"agents/agent-{agent}/metrics.jsonl").read_text().splitlines()]
        # late copies of an earlier iteration's messages (the reliable layer's second DONE, say)
        # are counted as stale rounds; nothing else may have been rejected
        assert all(r.get("net/rejected", 0) == r.get("net/stale_rounds", 0) for r in rows), rows
    # Each host held only its own agents' secret keys.
    assert sorted(p.name for p in (out / "host-b/keys").iterdir()) == [
        "agent-2.key", "agent-3.key", "public.json"
    ]
    assert not (merged / "keys" / "agent-0.key").exists()


@pytest.mark.slow
def test_a_20_ms_fault_delay_shows_in_the_activation_times(namespaces, tmp_path,
                                                          no_leaked_processes):
    spec = tmp_path / "delay.yaml"
    spec.write_text("delay: {mean_seconds: 0.02, jitter_seconds: 0, probability: 1}\n")
    plain = _split_run(namespaces, tmp_path / "plain", no_leaked_processes / "plain", [])
    delayed = _split_run(namespaces, tmp_path / "delayed", no_leaked_processes / "delayed",
                         ["--faults", str(spec)])

    def communication(run: Path) -> np.ndarray:
        return np.array([
            json.loads(line)["communication_seconds"]
            for path in sorted(run.glob("agents/agent-*/admm.jsonl"))
            for line in path.read_text().splitlines()
            if json.loads(line)["status"] == "committed"
        ])

    fast, slow = communication(plain), communication(delayed)
    assert len(fast) and len(slow)
    # Every activation waits for at least one delayed message of its partner.
    assert np.median(slow) >= 0.02, np.median(slow)
    assert np.median(slow) > np.median(fast) + 0.015, (np.median(fast), np.median(slow))
