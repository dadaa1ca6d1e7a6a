"""The agent process: one algorithm-agnostic loop of rollout → local learning → peer phase.

The loop owns the sockets (world link and peer transport), seeding, metrics and checkpoints; the
algorithm (``p2pmarl.algos``) only acts, learns from its own batch and talks to its neighbours
through :class:`~p2pmarl.runtime.peers.PeerLink`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from p2pmarl.algos import make_algorithm
from p2pmarl.algos.base import AgentAlgorithm, Batch, RolloutPhase, copy_group_layout
from p2pmarl.config import RunConfig, read_run_config
from p2pmarl.envs import env_spec
from p2pmarl.envs.base import EnvSpec
from p2pmarl.runtime.codec import CodecError, Message, require_array
from p2pmarl.runtime.faults import FaultyTransport, crash_iteration, read_run_spec, wrap_for_run
from p2pmarl.runtime.peers import PeerLink
from p2pmarl.runtime.reliable import Redundancy
from p2pmarl.runtime.rundir import MetricsRecorder, RunDir, process_seeds, setup_process_logging
from p2pmarl.runtime.transport import PeerTimeout, Transport, ZmqTransport, load_curve_keys
from p2pmarl.runtime.world_link import (
    REJOIN,
    WELCOME,
    LinkTimeout,
    WorldClient,
    acting_chunks,
    load_world_client_keys,
)
from p2pmarl.topology import Topology, load_topology

logger = logging.getLogger(__name__)

STOP_TIMEOUT = 10.0
"""Seconds an agent that finished its last iteration waits for the world's ``stop``, on top of
``phase_timeout``: the world sends it once every agent is ready, and it waits that long for the
slowest (peer phases end at different times, far apart when links fail)."""
PSS_SAMPLE_SECONDS = 5.0
"""``sys/pss_mb`` is re-read at most this often (and at the last iteration): reading
``/proc/self/smaps_rollup`` takes about 8 ms in a process with torch loaded, a noticeable share
of a short off-policy iteration (100 env steps take about 130 ms)."""
STEP = frozenset({"step"})
STOP_OR_STEP = frozenset({"step", "stop"})


@dataclass
class EpisodeTracker:
    """Running returns per environment copy (one column per tracked agent); finished episodes."""

    n_envs: int
    width: int = 1
    running: np.ndarray = field(init=False)
    finished: list[np.ndarray] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.running = np.zeros((self.n_envs, self.width))

    def add(self, rows: range, rewards: np.ndarray, dones: np.ndarray) -> None:
        """Copies ``rows`` got ``rewards`` ((R,) or (R, width)) and ended where ``dones``."""
        running = self.running[rows.start : rows.stop]
        running += rewards.reshape(len(rows), self.width)
        self.finished.extend(running[dones].copy())
        running[dones] = 0.0

    def take(self) -> np.ndarray:
        """Returns of the episodes finished since the last call, (episodes, width)."""
        finished, self.finished = self.finished, []
        return np.array(finished).reshape(-1, self.width)


class Rollout:
    """Collects one iteration's batch by answering the world's step messages.

    A ``centralized`` learner (C-TRPO only) sees all agents' observations concatenated and every
    agent's reward, and its batch reward is their sum.
    """

    def __init__(self, agent_id: int, spec: EnvSpec, config: RunConfig, centralized: bool) -> None:
        self.agent_id = agent_id
        self.spec = spec
        self.config = config
        self.centralized = centralized
        self.observation_size = (
            sum(spec.observation_sizes) if centralized else spec.observation_sizes[agent_id]
        )
        self.tracker = EpisodeTracker(config.n_envs, spec.n_agents if centralized else 1)
        self._wire_dtype = spec.wire_action_dtype

    def collect(
        self,
        world: WorldClient,
        algorithm: AgentAlgorithm,
        first: Message,
        iteration: int,
        phase: RolloutPhase | None = None,
        layout: np.ndarray | None = None,
    ) -> Batch:
        """Answer the world's step messages of one rollout phase (see
        ``world.World._rollout_phase``): ``phase.steps`` steps (default: the run's rollout
        length); with a copy-group ``layout`` (K,), act through ``act_in_phase``."""
        T = self.config.rollout_length if phase is None else phase.steps
        K, W = self.config.n_envs, self.spec.joint_action_width
        action_dtype = self.spec.action_dtype  # int64, or float32 with a Box (Batch docstring)
        observations = np.empty((T + 1, K, self.observation_size), dtype=np.float32)
        joint_actions = np.empty((T, K, W), dtype=action_dtype)
        rewards = np.empty((T, K), dtype=np.float32)
        dones = np.empty((T, K), dtype=bool)
        rows = range(K)
        # one act call per step where it draws the same numbers (AgentAlgorithm.draws_row_by_row)
        one_call = layout is None and algorithm.draws_row_by_row
        chunks = [rows] if one_call else acting_chunks(K)
        message = first
        for t in range(T + 1):
            if message is None:
                message = world.receive(STEP, self.config.step_timeout)
            self._check_position(message, t)
            observations[t] = self._observations(message, K)
            if t > 0:
                joint_actions[t - 1], reward, dones[t - 1] = self._outcome(message, K)
                rewards[t - 1] = reward.sum(axis=1) if self.centralized else reward
                self.tracker.add(rows, reward, dones[t - 1])
            if t < T:
                actions = np.concatenate([
                    self._act(algorithm, observations[t, chunk.start : chunk.stop], phase,
                              None if layout is None else layout[chunk.start : chunk.stop])
                    for chunk in chunks
                ])
                world.send("act", iteration, {
                    "actions": actions.astype(action_dtype, copy=False), "t": t,
                })
            message = None
        return Batch(
            agent_id=self.agent_id,
            observations=observations[:T],
            joint_actions=joint_actions,
            rewards=rewards,
            dones=dones,
            last_observations=observations[T],
            **({} if phase is None else {"phase": phase.name}),
            copy_groups=layout,
        )

    @staticmethod
    def _act(
        algorithm: AgentAlgorithm, own: np.ndarray, phase: RolloutPhase | None,
        layout: np.ndarray | None,
    ) -> np.ndarray:
        """Own actions for one :func:`acting_chunks` chunk of the copies."""
        return algorithm.act(own) if layout is None else algorithm.act_in_phase(own, phase, layout)

    @staticmethod
    def _check_position(message: Message, t: int) -> None:
        if message.body.get("t") != t:
            raise CodecError(
                "out_of_order", f"expected step {t}, got step {message.body.get('t')}"
            )

    def _observations(self, message: Message, n_rows: int) -> np.ndarray:
        return require_array(message.body, "obs", shape=(n_rows, self.observation_size))

    def _outcome(
        self, message: Message, K: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        N, W = self.spec.n_agents, self.spec.joint_action_width
        joint = require_array(message.body, "joint_action", shape=(K, W), dtype=self._wire_dtype)
        reward_shape = (K, N) if self.centralized else (K,)
        reward = require_array(message.body, "reward", shape=reward_shape, dtype="<f4")
        done = require_array(message.body, "done", shape=(K,), dtype="|b1")
        return joint, reward, done


def _proc_megabytes(path: str, key: str) -> float:
    for line in Path(path).read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_megabytes() -> float:
    """This process's peak resident set size (VmHWM), in MiB; counts pages shared with the
    launcher it was forked from (torch's libraries) in full."""
    return _proc_megabytes("/proc/self/status", "VmHWM:")


def proportional_set_megabytes() -> float:
    """Current proportional set size (PSS), in MiB: shared pages divided among their sharers."""
    return _proc_megabytes("/proc/self/smaps_rollup", "Pss:")


class AgentProcess:
    """Everything one agent process holds."""

    def __init__(
        self, run_dir: RunDir, agent_id: int, start_iteration: int, life: int = 0
    ) -> None:
        torch.set_num_threads(1)
        self.run_dir = run_dir
        self.agent_id = agent_id
        self.start_iteration = start_iteration
        self.life = life
        """0 for the first process of this agent, n after the n-th restart (faults: crash)."""
        self.config = read_run_config(run_dir.root)
        self.topology: Topology = load_topology(run_dir.topology)
        self.spec = env_spec(
            self.config.env, self.topology.n_agents, self.config.episode_length,
            env_kwargs=self.config.env_kwargs, agent_order=self.config.agent_order,
        )
        _, seeds = process_seeds(self.config.seed, self.topology.n_agents)
        self.algorithm = make_algorithm(
            self.config.algo, agent_id, self.spec, self.topology, self.config, seeds[agent_id]
        )
        if start_iteration > 0:
            self._load_checkpoint(start_iteration)
        endpoints = json.loads(run_dir.endpoints.read_text())
        self.peer_endpoints = {int(k): v for k, v in endpoints["agents"].items()}
        self.transport: Transport | None = None
        self.world = WorldClient(  # CURVE when the run is spread over hosts (issue 17)
            endpoints["world"], agent_id, curve=load_world_client_keys(run_dir.root, agent_id),
            connect_timeout=self.config.connect_timeout,
        )
        self.metrics = MetricsRecorder(run_dir.agent_metrics(agent_id))
        self.activations = MetricsRecorder(run_dir.agent_admm(agent_id))
        self.algorithm.record = self.activations.record
        self.rollout = Rollout(agent_id, self.spec, self.config, self.algorithm.centralized)
        self.phases = type(self.algorithm).rollout_phases(
            self.config, self.spec.n_agents
        )
        self._pss_value, self._pss_read_at = float("nan"), float("-inf")
        saved = read_run_spec(run_dir)
        self.crash_at = None if saved is None else crash_iteration(saved[0], agent_id, life)

    def _connect_peers(self, iteration: int) -> None:
        """ZeroMQ to the neighbours, wrapped in a :class:`FaultyTransport` if the run has faults.

        A restarted agent does this only once the world has welcomed it back: until then it
        binds no socket, so its neighbours keep seeing it down and close its edges at once.
        """
        neighbours = () if self.algorithm.centralized else self.topology.neighbours(self.agent_id)
        curve = load_curve_keys(self.run_dir.root, self.agent_id, neighbours)
        transport = ZmqTransport(self.agent_id, self.peer_endpoints, neighbours, curve=curve)
        self.transport = wrap_for_run(transport, self.run_dir, self.config, self.topology)
        redundancy = Redundancy(max_copies=self.config.peer_max_copies)
        self.peers = PeerLink(self.transport, iteration, redundancy=redundancy)

    def run(self) -> None:
        if self.life == 0:
            self._connect_peers(self.start_iteration)
            connect_seconds = self.transport.wait_connected(self.config.connect_timeout)
            self.world.send("ready", self.start_iteration, {})
            self.metrics.record({"event": "connected", "connect/seconds": connect_seconds})
            iteration = self.start_iteration
        else:
            welcome = self._rejoin()
            if welcome.kind == "stop":
                return
            iteration = welcome.round
            self._connect_peers(iteration)
        while iteration < self.config.iterations:
            self._iteration(iteration)
            iteration += 1
        self._finish_peer_phase()
        try:
            self.world.receive(frozenset({"stop"}), self.config.phase_timeout + STOP_TIMEOUT)
        except LinkTimeout:
            logger.warning("no stop from the world; the last iteration is saved, exiting anyway")

    def _rejoin(self) -> Message:
        """A restarted agent asks the world to take it back and waits for the welcome (or the
        run's stop): it joins at the welcome's iteration with the weights of its checkpoint."""
        self.world.send(REJOIN, self.start_iteration, {})
        welcome = self.world.receive(
            frozenset({WELCOME, "stop"}), self.config.phase_timeout + STOP_TIMEOUT
        )
        self.metrics.record({"event": "rejoined", "life": self.life, "joins_at": welcome.round,
                             "checkpoint_iteration": self.start_iteration})
        logger.info("agent %d (life %d) rejoined at iteration %d from checkpoint %d",
                    self.agent_id, self.life, welcome.round, self.start_iteration)
        return welcome

    def _finish_peer_phase(self) -> None:
        """The previous iteration's end of the peer phase (``PeerLink.finish_phase``), after its
        ``ready``: answer neighbours' late retransmissions until the world's next message, which
        comes only once every live agent is ready (so no neighbour still waits on us), or until
        the link's own bound."""
        self.peers.finish_phase(until=self.world.arrived)

    def _iteration(self, iteration: int) -> None:
        started = time.monotonic()
        self._finish_peer_phase()
        if iteration == self.crash_at:
            logger.warning("agent %d: injected crash (SIGKILL) at iteration %d",
                           self.agent_id, iteration)
            for handler in logging.getLogger().handlers:
                handler.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        self.peers.mark_rollout()
        if self.algorithm.owns_environment:  # off-policy workers step their own copies
            batch = self.algorithm.collect(self.config.rollout_length, self.config.n_envs)
            stats, phase_returns = {}, []
            rollout_seconds, samples = time.monotonic() - started, batch.n_samples
        else:
            batch, stats, rollout_seconds, samples = self._rollout_phases(iteration)
            phase_returns = stats.pop("_phase_returns")
        local_started = time.monotonic()
        stats.update(self.algorithm.local_update(batch))
        local_seconds = time.monotonic() - local_started
        self.peers.start_iteration(iteration)
        if isinstance(self.transport, FaultyTransport):
            self.transport.start_iteration(iteration)
        stats.update(self.algorithm.peer_phase(batch, self.peers))
        returns = np.concatenate([*phase_returns, self.rollout.tracker.take()])
        if self.algorithm.centralized and len(returns):
            stats["rollout/agent_returns"] = returns.mean(axis=0).tolist()
        self.metrics.record(
            {
                "iteration": iteration,
                "env_steps": (iteration + 1) * samples,
                "rollout/return": float(returns.sum(axis=1).mean()) if len(returns) else None,
                "rollout/episodes": len(returns),
                "time/rollout_seconds": rollout_seconds,
                "time/local_seconds": local_seconds,
                "time/iteration_seconds": time.monotonic() - started,
                "net/bytes_sent": self.transport.sent_bytes,
                "net/rejected": sum(self.transport.rejected.values()),
                # of those, late copies of an earlier iteration's messages (normal at phase ends)
                "net/stale_rounds": self.transport.rejected.get("stale_round", 0),
                **self._fault_metrics(),
                **self.peers.metrics(),
                "sys/peak_rss_mb": peak_rss_megabytes(),
                "sys/pss_mb": self._pss(last=iteration + 1 == self.config.iterations),
                **stats,
            }
        )
        done = iteration + 1
        if done % self.config.checkpoint_every == 0 or done == self.config.iterations:
            self._save_checkpoint(done)
        self.world.send("ready", done, {})

    def _rollout_phases(self, iteration: int) -> tuple[Batch, dict, float, int]:
        """Every rollout phase of the iteration in order (``AgentAlgorithm.rollout_phases``),
        with ``phase_update`` after all but the last. Returns the last phase's batch, the
        phase updates' stats (with per-phase returns when there are several phases, and the
        finished episodes of the earlier phases under ``_phase_returns``), the seconds spent in
        rollouts, and the samples of all phases."""
        stats: dict = {}
        phase_returns: list[np.ndarray] = []
        rollout_seconds, samples = 0.0, 0
        for index, phase in enumerate(self.phases):
            started = time.monotonic()
            layout = None
            if phase.copy_groups > 1:
                layout = copy_group_layout(
                    self.config.n_envs, phase.copy_groups, self.config.seed, iteration, index
                )
            first = self.world.receive(STEP, self.config.phase_timeout)
            batch = self.rollout.collect(self.world, self.algorithm, first, iteration, phase,
                                         layout)
            rollout_seconds += time.monotonic() - started
            samples += batch.n_samples
            if len(self.phases) == 1:
                break
            returns = self.rollout.tracker.take()
            if len(returns):
                stats[f"phase/{phase.name}/return"] = float(returns.sum(axis=1).mean())
            if index < len(self.phases) - 1:
                phase_returns.append(returns)
                stats.update(self.algorithm.phase_update(batch))
            else:
                self.rollout.tracker.finished.extend(returns)
        stats["_phase_returns"] = phase_returns
        return batch, stats, rollout_seconds, samples

    def _pss(self, last: bool) -> float:
        """PSS in MiB, re-read every :data:`PSS_SAMPLE_SECONDS` and at the last iteration."""
        now = time.monotonic()
        if last or now - self._pss_read_at >= PSS_SAMPLE_SECONDS:
            self._pss_value, self._pss_read_at = proportional_set_megabytes(), now
        return self._pss_value

    def _fault_metrics(self) -> dict[str, int]:
        """Injected faults on this agent's outgoing messages so far (none without faults)."""
        if not isinstance(self.transport, FaultyTransport):
            return {}
        events = self.transport.events
        return {"faults/dropped": events["drop"], "faults/delayed": events["delay"]}

    def _save_checkpoint(self, iterations_done: int) -> None:
        path = self.run_dir.checkpoint(self.agent_id, iterations_done)
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {
            "iterations_done": iterations_done,
            "algorithm": self.algorithm.state_dict(),
            "episodes_running": self.rollout.tracker.running,
        }
        temporary = path.with_suffix(".tmp")
        torch.save(state, temporary)
        temporary.replace(path)

    def _load_checkpoint(self, iterations_done: int) -> None:
        path = self.run_dir.checkpoint(self.agent_id, iterations_done)
        state = torch.load(path, weights_only=False)
        self.algorithm.load_state_dict(state["algorithm"])

    def close(self) -> None:
        self.metrics.close()
        self.activations.close()
        if self.transport is not None:
            self.transport.close()
        self.world.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="p2pmarl-agent")
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--agent", type=int, required=True)
    parser.add_argument("--start-iteration", type=int, default=0)
    parser.add_argument("--life", type=int, default=0,
                        help="restart count; a restarted agent rejoins the running world")
    args = parser.parse_args(argv)
    run_dir = RunDir(args.run_dir)
    logger = setup_process_logging(run_dir.agent_log(args.agent), f"agent-{args.agent}")
    process = AgentProcess(run_dir, args.agent, args.start_iteration, args.life)
    try:
        process.run()
    except (LinkTimeout, PeerTimeout, CodecError) as error:
        logger.error("%s", error)
        print(f"agent {args.agent}: {error}", flush=True)
        return 3
    finally:
        process.close()
    logger.info("agent %d finished", args.agent)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
