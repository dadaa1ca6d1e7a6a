"""The world process: K copies of the environment stepped in lock-step; physics, not a coordinator.

Each step it sends agent i only its own observation block, its own reward, the done flags and the
joint action of the previous step (MATRPO section IV-D), and waits for every agent's action. It
never sees parameters, log ratios, advantages or anything else about learning.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import zmq

from p2pmarl.algos import algorithm_class
from p2pmarl.config import RunConfig, read_run_config
from p2pmarl.envs import make_env
from p2pmarl.envs.base import EnvSpec, MultiAgentEnv
from p2pmarl.envs.particles import ParticleWorld, has_batched, make_batched
from p2pmarl.runtime.codec import CodecError, Message, require_array
from p2pmarl.runtime.rundir import MetricsRecorder, RunDir, process_seeds, setup_process_logging
from p2pmarl.runtime.world_link import (
    CLOSE_LINGER_MS,
    WELCOME,
    LinkTimeout,
    WorldServer,
    load_world_server_keys,
)

FALLBACK_ACTION = 0
"""The action applied for an agent whose process is lost: 0, the no-op of the MPE action spaces
(the agent's body coasts to a stop under damping) until it rejoins. On a Box action space it is
the Box's midpoint instead, on a MultiDiscrete space 0 in every component
(:meth:`~p2pmarl.envs.base.ActionSpace.fallback`)."""


class AllAgentsLost(LinkTimeout):
    """No learner is left (or the single centralized learner is gone): the run cannot go on."""


@dataclass
class StepResult:
    """What one group of copies produced in one step, before it is split per agent."""

    rewards: np.ndarray
    dones: np.ndarray
    joint_actions: np.ndarray


class VectorWorld:
    """K environment copies with automatic reset at episode end.

    With ``env_backend="batched"`` (the default) the particle families step all K copies at once
    in a :class:`~p2pmarl.envs.particles.ParticleWorld`; otherwise (``mpe2``, or an environment
    without a batched implementation) K :class:`MultiAgentEnv` copies step one by one. Both are
    seeded alike (copy k with the k-th seed of ``SeedSequence(seed)``) and give the same numbers.
    """

    def __init__(self, config: RunConfig, n_agents: int, seed: int) -> None:
        seeds = [int(s) for s in np.random.SeedSequence(seed).generate_state(config.n_envs)]
        self.batched: ParticleWorld | None = None
        self.envs: list[MultiAgentEnv] = []
        if config.env_backend == "batched" and has_batched(config.env):
            self.batched = make_batched(
                config.env, n_agents, config.n_envs, config.episode_length
            )
            self.batched.reset(seeds)
            self.spec: EnvSpec = self.batched.spec
            return
        self.envs = [
            make_env(config.env, n_agents, config.episode_length, env_kwargs=config.env_kwargs,
                     agent_order=config.agent_order)
            for _ in range(config.n_envs)
        ]
        self.spec = self.envs[0].spec
        self.observations = [env.reset(s) for env, s in zip(self.envs, seeds, strict=True)]

    def step(self, rows: range, joint_actions: np.ndarray) -> StepResult:
        """Step copies ``rows`` with their rows of the joint action; reset finished copies."""
        if self.batched is not None:
            rewards, dones = self.batched.step(rows, joint_actions)
            return StepResult(rewards, dones, joint_actions)
        n_agents = self.spec.n_agents  # joint rows are W wide, W ≥ N (MultiDiscrete, Box)
        rewards = np.zeros((len(rows), n_agents), dtype=np.float32)
        dones = np.zeros(len(rows), dtype=bool)
        for index, k in enumerate(rows):
            observations, rewards[index], dones[index] = self.envs[k].step(
                joint_actions[index].tolist()
            )
            self.observations[k] = self.envs[k].reset() if dones[index] else observations
        return StepResult(rewards, dones, joint_actions)

    def agent_observations(self, agent: int, rows: range) -> np.ndarray:
        """Agent ``agent``'s observation block for copies ``rows``, float32 (len(rows), d_i)."""
        if self.batched is not None:
            return np.ascontiguousarray(self.batched.observation(agent, rows))
        return np.stack([self.observations[k][agent] for k in rows]).astype(np.float32, copy=False)

    def close(self) -> None:
        if self.batched is not None:
            self.batched.close()
        for env in self.envs:
            env.close()


class World:
    """Runs the rollout protocol with the agents for every training iteration.

    In ``centralized`` mode (the C-TRPO reference only) a single learner gets the concatenated
    observations and every agent's reward, and answers with the joint action.
    """

    def __init__(
        self, run_dir: RunDir, config: RunConfig, n_agents: int, endpoint: str, centralized: bool
    ) -> None:
        self.run_dir = run_dir
        self.config = config
        self.n_agents = n_agents
        self.centralized = centralized
        self.learners = 1 if centralized else n_agents
        self.phases = algorithm_class(config.algo).rollout_phases(config, n_agents)
        """The rollout phases of every iteration: from the run config and the algorithm's class
        (``AgentAlgorithm.rollout_phases``), never from the agents."""
        self.phase_steps = self.phases[0].steps
        world_seed, _ = process_seeds(config.seed, n_agents)
        self.vector = VectorWorld(config, n_agents, world_seed)
        # CURVE on the world link when the run is spread over hosts (issue 17, hosts.py)
        self.server = WorldServer(endpoint, self.learners,
                                  curve=load_world_server_keys(run_dir.root, self.learners))
        self.events = MetricsRecorder(run_dir.world_events)
        self.dead: set[int] = set()
        """Learners whose process is lost; they get no messages and act FALLBACK_ACTION."""
        self._boundaries = 0
        self._lost_at: dict[int, int] = {}
        self.iteration = 0
        self.step = 0
        spec = self.vector.spec
        self._columns = [spec.action_columns(agent) for agent in range(n_agents)]
        self._wire_dtype = spec.wire_action_dtype
        self._fallback = spec.fallback_joint_action(config.n_envs)
        """Per-step constants of the action checks, computed once (issue 15: the world's own
        work per step is on the rollout's critical path)."""
        self.paces_only = algorithm_class(config.algo).owns_environment
        """Learners step their own env copies (``AgentAlgorithm.owns_environment``): the world
        steps nothing and only holds every iteration's ``ready`` barrier."""

    def run(self, start_iteration: int) -> None:
        started = time.monotonic()
        # no probes while the agents connect: one not connected yet is not lost (issue 15)
        self.server.gather("ready", start_iteration, self.config.connect_timeout, probe=False)
        self.events.record(
            {"event": "connected", "seconds": time.monotonic() - started, "unix_time": time.time()}
        )
        for iteration in range(start_iteration, self.config.iterations):
            self.iteration = iteration
            rollout_started = time.monotonic()
            if not self.paces_only:
                self._rollout(iteration)
            self.events.record(
                {
                    "event": "rollout",
                    "iteration": iteration,
                    "env_steps": (iteration + 1) * self.iteration_steps * self.config.n_envs,
                    "rollout_seconds": time.monotonic() - rollout_started,
                }
            )
            self._boundaries += 1
            self.server.gather("ready", iteration + 1, self.config.phase_timeout, self._live())
            self._update_liveness(next_iteration=iteration + 1)
        for learner in range(self.learners):  # a lost one may be a restarted agent waiting
            self.server.send(learner, "stop", self.config.iterations, {})
        self.events.record({"event": "stopped", "rejected": dict(self.server.rejected)})

    def _live(self) -> list[int]:
        return [learner for learner in range(self.learners) if learner not in self.dead]

    def _update_liveness(self, next_iteration: int | None = None) -> None:
        """Mark newly lost learners dead and, between iterations (``next_iteration`` given),
        welcome back dead ones that asked to rejoin (recorded in ``world_events.jsonl``); raise
        :class:`AllAgentsLost` when nobody is left to act."""
        for learner in sorted(self.server.lost - self.dead):
            self.dead.add(learner)
            self._lost_at[learner] = self._boundaries
            self._record_liveness("agent_lost", learner)
        if next_iteration is not None:
            # Only an agent lost before this boundary's gather began is taken back now: one lost
            # during it may have been seen alive by a neighbour that already began the next
            # iteration (its view: gone for that whole iteration), so it waits one more.
            ready = {a for a, at in self._lost_at.items() if at < self._boundaries}
            for learner in self.server.collect_rejoins(ready & self.dead):
                if self.server.send(learner, WELCOME, next_iteration, {}):
                    self.dead.discard(learner)
                    self._record_liveness("agent_rejoined", learner)
        if self.dead and (self.centralized or len(self.dead) == self.learners):
            raise AllAgentsLost(f"world: learners {sorted(self.dead)} are lost; nobody left to act")

    def _record_liveness(self, event: str, learner: int) -> None:
        self.events.record({
            "event": event, "agent": learner, "iteration": self.iteration, "step": self.step,
            "unix_time": time.time(),
        })

    @property
    def iteration_steps(self) -> int:
        """Steps per copy per iteration, over all rollout phases."""
        return sum(phase.steps for phase in self.phases)

    def _rollout(self, iteration: int) -> None:
        """The iteration's rollout phases in order (one by default), each a
        :meth:`_rollout_phase` of its own step count. Agents learn between phases; the world
        waits for them at the next phase's first actions (``phase_timeout``)."""
        for phase in self.phases:
            self.phase_steps = phase.steps
            self._rollout_phase(iteration, phase.steps)

    def _rollout_phase(self, iteration: int, T: int) -> None:
        """T steps of every copy: one ``step`` message per learner and step.

        Message t carries o_t of every copy and the outcome of step t−1; each learner answers
        every message but the last (t = T) with its actions for every copy. (Until issue 15's
        second session the copies went in two pipelined halves, one message each: with the
        batched world's step far cheaper than a message, that doubled the messages and the
        process wake-ups per step for no overlap worth having.)
        """
        rows = range(self.config.n_envs)
        self._send_step(iteration, 0, rows, None)
        for t in range(T):
            self.step = t + 1
            actions = self._gather_actions(iteration, t, len(rows))
            outcome = self.vector.step(rows, actions)
            self._send_step(iteration, t + 1, rows, outcome)
        self.step = 0

    def _send_step(
        self, iteration: int, t: int, rows: range, previous: StepResult | None
    ) -> None:
        bodies = {learner: self._step_body(learner, t, rows, previous) for learner in self._live()}
        self.server.send_each("step", iteration, bodies)
        self._update_liveness()

    def _step_body(
        self, agent: int, t: int, rows: range, previous: StepResult | None
    ) -> dict:
        if self.centralized:
            observations = np.concatenate(
                [self.vector.agent_observations(i, rows) for i in range(self.n_agents)], axis=1
            )
        else:
            observations = self.vector.agent_observations(agent, rows)
        last = t == self.phase_steps
        body: dict = {"t": t, "last": last, "obs": observations}
        if previous is not None:
            rewards = previous.rewards if self.centralized else previous.rewards[:, agent]
            body["reward"] = np.ascontiguousarray(rewards)
            body["done"] = previous.dones
            body["joint_action"] = previous.joint_actions
        return body

    def _gather_actions(self, iteration: int, t: int, n_rows: int) -> np.ndarray:
        timeout = self.config.phase_timeout if t == 0 else self.config.step_timeout
        replies = self.server.gather("act", iteration, timeout, self._live())
        self._update_liveness()
        for message in replies.values():
            if message.body.get("t") != t:
                raise CodecError(
                    "out_of_order",
                    f"learner {message.sender} answered step {message.body.get('t')}, "
                    f"expected step {t}",
                )
        if self.centralized:
            return self._check_actions(range(self.n_agents), n_rows, replies[0])
        joint = self._fallback[:n_rows].copy()  # FALLBACK_ACTION for who did not answer
        for agent, message in replies.items():
            joint[:, self._columns[agent]] = self._check_actions([agent], n_rows, message)
        return joint

    def _check_actions(
        self, agents: Sequence[int], n_rows: int, message: Message
    ) -> np.ndarray:
        """Validate a learner's actions for ``agents``; a bad reply is a protocol error.

        A learner sends (rows, width) numbers in the joint dtype (``EnvSpec.action_dtype``), or
        (rows,) when that is one number per row; the centralized learner sends whole joint rows.
        """
        spec = self.vector.spec
        width = sum(spec.action_spaces[a].width for a in agents)
        shape = (n_rows, width) if self.centralized or width > 1 else (n_rows,)
        actions = require_array(message.body, "actions", shape=shape, dtype=self._wire_dtype)
        actions = actions.reshape(n_rows, width)
        start = 0
        for agent in agents:
            space = spec.action_spaces[agent]
            if space.invalid(actions[:, start : start + space.width]):
                raise CodecError(
                    "bad_action", f"learner {message.sender} sent actions outside the action space"
                )
            start += space.width
        return actions

    def close(self) -> None:
        self.events.close()
        self.server.close()
        self.vector.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="p2pmarl-world")
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--start-iteration", type=int, default=0)
    args = parser.parse_args(argv)
    run_dir = RunDir(args.run_dir)
    logger = setup_process_logging(run_dir.world_log, "world")
    config = read_run_config(run_dir.root)
    endpoints = json.loads(run_dir.endpoints.read_text())
    world = World(
        run_dir, config, endpoints["n_env_agents"], endpoints["world"], endpoints["centralized"]
    )
    try:
        world.run(args.start_iteration)
    except (LinkTimeout, CodecError) as error:  # AllAgentsLost is a LinkTimeout
        logger.error("%s", error)
        print(f"world: {error}", flush=True)
        return 3
    finally:
        world.close()
        # The final ``stop`` frames are still queued: terminating the context waits (up to the
        # linger) until they are out. The forked child then leaves with os._exit.
        zmq.Context.instance().destroy(linger=CLOSE_LINGER_MS)
    logger.info("world finished")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
