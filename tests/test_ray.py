"""The Ray engine (``launch --engine ray``): checks of its pieces, a run on a local single-node
Ray, and a real two-node Ray cluster whose nodes sit in two network namespaces.

Ray rewrites loopback to the host's routable address, and tests send traffic only to loopback or
to namespaces they made. So the single-node run happens inside a fresh network namespace that has
only ``lo`` (``unshare -n``, or ``unshare -rn`` without root), where Ray's only address is
127.0.0.1; the two-node cluster runs its head in namespace ``a`` (10.78.1.1) and a worker node in
``b`` (10.78.1.2), joined by a veth pair. Ray processes are found and removed by namespace, never
with ``ray stop`` (which would stop every Ray process of the user on the machine).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from p2pmarl.config import ConfigError
from p2pmarl.runtime.engines import EngineOptions
from tests.conftest import processes_mentioning
from tests.test_netns import _admm_records, _ip, _kill_namespace_processes, _veth

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
HEAD, WORKER = "10.78.1.1", "10.78.1.2"
RAY_PORT = 6379
RUN = [
    "--topology", "topologies/ring4.yaml", "--env", "spread", "--algo", "matrpo",
    "--admm-schedule", "seeded", "--admm-iterations", "6", "--steps-per-iteration", "64",
    "--n-envs", "4", "--episode-length", "8", "--iterations", "2", "--seed", "3",
    "--no-progress", "--json",
]
RAY_ENV = {**os.environ, "RAY_AUTH_MODE": "token"}
"""Token authentication on (``ray start --head`` makes the token); the joining node and the
driver must say so to send it."""
RAY_MARKERS = ("p2pmarl-ray-", "ray::", "raylet", "gcs_server")
"""Command-line fragments of the processes of a local Ray instance and of its actors."""


def _ray_processes() -> set[int]:
    return {pid for marker in RAY_MARKERS for pid in processes_mentioning(marker)}


def _launch(prefix: list[str], out: Path, *extra: str, timeout: float = 240) -> dict:
    done = subprocess.run(
        [*prefix, sys.executable, "-m", "p2pmarl", "launch", *RUN, "--out", str(out), *extra],
        cwd=REPO, capture_output=True, text=True, timeout=timeout, env=RAY_ENV,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)


# -- pieces --------------------------------------------------------------------------------------


def test_engine_options_refuse_bad_combinations():
    assert EngineOptions() == EngineOptions("local", None, "spread")
    with pytest.raises(ConfigError, match="--engine 'slurm'"):
        EngineOptions("slurm")
    with pytest.raises(ConfigError, match="--placement 'strict'"):
        EngineOptions("ray", None, "strict")
    with pytest.raises(ConfigError, match="--engine ray only"):
        EngineOptions("local", "10.0.0.1:6379")


def test_ray_engine_refuses_crash_entries_and_per_host_flags(tmp_path):
    from p2pmarl.config import RunConfig
    from p2pmarl.runtime.launcher import launch

    spec = tmp_path / "crash.yaml"
    spec.write_text("crash:\n  - {agent: 1, at_iteration: 1}\n")
    config = RunConfig(topology=str(REPO / "topologies/ring3.yaml"), faults=str(spec),
                       out=str(tmp_path / "runs"))
    with pytest.raises(ConfigError, match="crash entries"):
        launch(config, show_progress=False, engine=EngineOptions("ray"))
    assert not (tmp_path / "runs").exists()  # refused before anything was made
    done = subprocess.run(
        [sys.executable, "-m", "p2pmarl", "launch", "--topology", "topologies/ring3.yaml",
         "--only", "0", "--engine", "ray", "--run-dir", str(tmp_path / "part")],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 2 and "drop --engine ray" in done.stderr, done.stderr


def test_without_ray_the_engine_says_how_to_install_it(monkeypatch):
    import importlib.util

    from p2pmarl.runtime.engines import ray as ray_engine

    monkeypatch.setattr(ray_engine, "ray", None)
    with pytest.raises(ConfigError, match=r"p2pmarl\[ray\]"):
        ray_engine.require_ray()
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "ray" else real(name, *a))
    with pytest.raises(ConfigError, match=r"p2pmarl\[ray\]"):
        EngineOptions("ray")


def test_an_actor_holds_its_port_and_refuses_a_foreign_endpoint_table(tmp_path, monkeypatch):
    """ProcessActor outside Ray: the reserved port stays taken until the run; a run directory
    whose endpoints.json differs from the table handed over (not shared) is refused."""
    import socket

    from p2pmarl.runtime.engines import ray as ray_engine

    monkeypatch.setattr(ray_engine.ray.util, "get_node_ip_address", lambda: "127.0.0.1")
    actor = ray_engine.ProcessActor(str(tmp_path), "p2pmarl.runtime.agent", str(tmp_path / "l"))
    with pytest.raises(ConfigError, match="shared filesystem"):
        actor.reserve()
    (tmp_path / "config.json").write_text("{}")
    report = actor.reserve()
    host, port = report["endpoint"].removeprefix("tcp://").split(":")
    assert host == "127.0.0.1" and report["pid"] == os.getpid()
    stranger = socket.socket()
    with pytest.raises(OSError):
        stranger.bind((host, int(port)))
    stranger.close()
    (tmp_path / "endpoints.json").write_text(json.dumps({"world": "tcp://10.0.0.9:1"}))
    with pytest.raises(ConfigError, match="not shared"):
        actor.run([], {"world": report["endpoint"]})
    actor._reserved.close()


# -- a local single-node Ray ----------------------------------------------------------------------


def _loopback_namespace() -> list[str]:
    """A command prefix that runs in a new network namespace holding only ``lo`` (up)."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        pytest.skip("needs unshare and ip (util-linux, iproute2) for a loopback-only namespace")
    for flags in (["-n"], ["-rn"]):
        probe = subprocess.run(["unshare", *flags, "ip", "link", "set", "lo", "up"],
                               capture_output=True, text=True, timeout=20)
        if probe.returncode == 0:
            return ["unshare", *flags, "sh", "-c", 'ip link set lo up && exec "$0" "$@"']
    pytest.skip(f"cannot make a network namespace here: {probe.stderr.strip()}")


@pytest.mark.slow
def test_ray_engine_on_a_local_ray_gives_the_numbers_of_a_local_run(tmp_path,
                                                                    no_leaked_processes):
    prefix = _loopback_namespace()
    before = _ray_processes()
    started = time.monotonic()
    ray_run = _launch(prefix, no_leaked_processes / "ray", "--engine", "ray")
    ray_seconds = time.monotonic() - started
    local_run = _launch([], no_leaked_processes / "local")
    assert ray_run["status"] == "completed"
    assert ray_run["engine"]["name"] == "ray"
    assert set(ray_run["engine"]["nodes"].values()) == {"127.0.0.1"}
    assert ray_run["engine"]["nodes"].keys() == {"world", "agent 0", "agent 1", "agent 2",
                                                 "agent 3"}
    for key in ("team_return_curve", "agents", "iterations", "env_steps"):
        assert ray_run[key] == local_run[key], key
    ray_dir, local_dir = Path(ray_run["run_dir"]), Path(local_run["run_dir"])
    assert _admm_records(ray_dir) and _admm_records(ray_dir) == _admm_records(local_dir)
    endpoints = json.loads((ray_dir / "endpoints.json").read_text())
    assert all(e.startswith("tcp://127.0.0.1:") for e in endpoints["agents"].values())
    assert (ray_dir / "keys" / "world.key").exists()  # tcp runs use CURVE on every link
    time.sleep(1.0)
    assert not _ray_processes() - before, "Ray processes left behind"
    print(f"ray run {ray_seconds:.1f} s")


def _start_long_ray_run(prefix: list[str], out: Path) -> tuple[subprocess.Popen, Path]:
    """A 200-iteration Ray run in its own session; returns it and its run directory once every
    agent has recorded an iteration."""
    args = [a if a != "2" else "200" for a in RUN]  # --iterations 2 → 200
    launcher = subprocess.Popen(
        [*prefix, sys.executable, "-m", "p2pmarl", "launch", *args, "--out", str(out),
         "--engine", "ray"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=RAY_ENV,
        start_new_session=True,
    )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and launcher.poll() is None:
        metrics = list(out.glob("*/agents/agent-*/metrics.jsonl"))
        if len(metrics) == 4 and all("iteration" in m.read_text() for m in metrics):
            return launcher, metrics[0].parents[2]
        time.sleep(0.5)
    os.killpg(launcher.pid, signal.SIGKILL)
    raise AssertionError("the Ray run never reached its first iteration: "
                         + "".join(launcher.communicate()))


@pytest.mark.slow
def test_a_dead_actor_fails_the_run_and_ctrl_c_stops_everything(no_leaked_processes):
    """A killed actor is reported like a dead local process (named, exit 1); Ctrl-C to the
    launcher's process group (a terminal's) stops every actor and the local Ray instance."""
    prefix = _loopback_namespace()
    before = _ray_processes()
    launcher, run = _start_long_ray_run(prefix, no_leaked_processes / "killed")
    try:
        os.kill(json.loads((run / "pids.json").read_text())["agent 2"], signal.SIGKILL)
        stdout, stderr = launcher.communicate(timeout=60)
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
    assert launcher.returncode == 1, stderr
    assert "agent 2 (Ray actor on node 127.0.0.1" in stderr and "actor died" in stderr, stderr
    summary = json.loads(stdout)  # Ray's own messages went to stderr, not into the JSON
    assert summary["status"] == "failed" and summary["failed_process"] == "agent 2"

    launcher, run = _start_long_ray_run(prefix, no_leaked_processes / "interrupted")
    try:
        os.killpg(launcher.pid, signal.SIGINT)
        started = time.monotonic()
        stdout, _ = launcher.communicate(timeout=60)
        stopped = time.monotonic() - started
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
    assert launcher.returncode == 130
    assert json.loads(stdout)["status"] == "interrupted"
    assert stopped < 30, stopped
    time.sleep(1.0)
    assert not _ray_processes() - before, "Ray processes left behind"


# -- a two-node Ray cluster in two network namespaces ---------------------------------------------


@pytest.fixture
def ray_cluster():
    """A Ray head in namespace a and a worker node in b; every process of both namespaces is
    killed and the namespaces deleted whatever happens."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("a two-node Ray cluster in network namespaces needs root and iproute2")
    tag = f"ray{os.getpid() % 100000}"
    names = {"a": f"{tag}a", "b": f"{tag}b"}
    temp = Path(f"/tmp/{tag}")
    made: list[str] = []
    try:
        for ns in names.values():
            probe = _ip("netns", "add", ns, check=False)
            if probe.returncode != 0:
                pytest.skip(f"`ip netns add` failed here: {probe.stderr.strip()}")
            made.append(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        _veth(names["a"], HEAD, names["b"], WORKER, f"{tag}ab", f"{tag}ba")
        small = ["--num-cpus", "3", "--object-store-memory", str(80 * 1024**2),
                 "--disable-usage-stats", "--temp-dir", str(temp)]
        for ns, args in (
            (names["a"], ["--head", "--node-ip-address", HEAD, "--port", str(RAY_PORT),
                          "--include-dashboard=false"]),
            (names["b"], ["--address", f"{HEAD}:{RAY_PORT}", "--node-ip-address", WORKER]),
        ):
            started = subprocess.run(["ip", "netns", "exec", ns, str(BIN / "ray"), "start",
                                      *args, *small], capture_output=True, text=True,
                                     timeout=120, env=RAY_ENV)
            assert started.returncode == 0, started.stdout + started.stderr
        yield names
    finally:
        for ns in made:
            _kill_namespace_processes(ns)
        time.sleep(0.5)
        for ns in made:
            left = _ip("netns", "pids", ns, check=False).stdout.split()
            _ip("netns", "del", ns, check=False)
            assert not left, f"processes left in namespace {ns}: {left}"
        shutil.rmtree(temp, ignore_errors=True)
        listed = _ip("netns", "list", check=False).stdout
        assert not any(ns in listed for ns in made), listed


def _namespace_commands(ns: str) -> list[str]:
    pids = _ip("netns", "pids", ns, check=False).stdout.split()
    commands = []
    for pid in pids:
        try:
            commands.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
                            .decode(errors="replace"))
        except OSError:
            continue
    return commands


@pytest.mark.slow
def test_a_two_node_ray_cluster_runs_matrpo_with_the_numbers_of_a_local_run(
    ray_cluster, no_leaked_processes
):
    driver = ["ip", "netns", "exec", ray_cluster["a"]]
    ray_run = _launch(driver, no_leaked_processes / "ray", "--engine", "ray", "--ray-address",
                      f"{HEAD}:{RAY_PORT}", timeout=300)
    # The actors are gone as soon as the launch returns; the cluster itself stays up.
    for ns in ray_cluster.values():
        commands = _namespace_commands(ns)
        assert not any("ProcessActor" in c for c in commands), commands
        assert any("raylet" in c for c in commands), commands
    local_run = _launch([], no_leaked_processes / "local")
    assert ray_run["status"] == "completed"
    nodes = ray_run["engine"]["nodes"]
    assert set(nodes.values()) == {HEAD, WORKER}, nodes  # actors on both nodes
    for key in ("team_return_curve", "agents", "iterations", "env_steps"):
        assert ray_run[key] == local_run[key], key
    ray_dir, local_dir = Path(ray_run["run_dir"]), Path(local_run["run_dir"])
    assert _admm_records(ray_dir) and _admm_records(ray_dir) == _admm_records(local_dir)
    endpoints = json.loads((ray_dir / "endpoints.json").read_text())
    for name, node in nodes.items():
        address = endpoints["world"] if name == "world" else endpoints["agents"][name.split()[1]]
        assert address.startswith(f"tcp://{node}:"), (name, address)
