"""Meta-MAPG chains driven in one process, for learning benchmarks on a loaded machine.

The same two learners a ``p2pmarl launch`` of ``--algo metamapg`` builds (same classes, same
per-process seeds from :func:`p2pmarl.runtime.rundir.process_seeds`), called in the same order
the runtime calls them: ``act`` per copy chunk (:func:`p2pmarl.runtime.world_link.acting_chunks`)
at every step of every chain phase, ``phase_update`` after phases ``chain0 … chain{L-1}``,
``local_update`` then ``peer_phase`` after the last. Only the transport is replaced: the world is
a loop over K :class:`p2pmarl.envs.matrix.MatrixGame` copies, and the centralized form's one
``peer_params`` message goes through an in-memory :class:`Mailbox`. ``tests/test_metamapg.py``
checks that a seeded launch and this driver give the same chain rewards.

Why: a chain is L + 1 episodes of H lock-step world↔agent round trips; at load 20-30 on the
2-core VM a niced launch waits on the scheduler at each of them (about 18 s per chain at K = 32,
H = 50) while the chain's arithmetic is 0.4 s of CPU. The privacy and protocol properties are
checked on real launches (``tests/test_metamapg.py``), not here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from p2pmarl.algos import make_algorithm
from p2pmarl.algos.base import Batch, PeerMessage
from p2pmarl.config import RunConfig
from p2pmarl.envs import env_spec, make_env
from p2pmarl.runtime.rundir import process_seeds
from p2pmarl.runtime.world_link import acting_chunks
from p2pmarl.topology import load_topology


@dataclass
class Mailbox:
    """In-memory stand-in for :class:`p2pmarl.algos.base.Peers` between the two learners."""

    agent_id: int
    neighbours: tuple[int, ...]
    iteration: int = 0
    queues: dict[int, list[PeerMessage]] = field(default_factory=dict)

    def send(self, neighbour: int, kind: str, body: Mapping[str, Any]) -> None:
        self.queues.setdefault(neighbour, []).append(
            PeerMessage(sender=self.agent_id, kind=kind, body=dict(body), iteration=self.iteration)
        )

    def receive(self, timeout: float, kinds: frozenset[str] | None = None) -> PeerMessage | None:
        queue = self.queues.get(self.agent_id, [])
        for index, message in enumerate(queue):
            if kinds is None or message.kind in kinds:
                return queue.pop(index)
        return None

    def down(self) -> frozenset[int]:
        return frozenset()


def build(config: RunConfig) -> list:
    """The run's two learners, exactly as the agent processes build them (one torch thread)."""
    torch.set_num_threads(1)
    topology = load_topology(config.topology)
    spec = env_spec(config.env, topology.n_agents, config.episode_length)
    _, seeds = process_seeds(config.seed, topology.n_agents)
    return [make_algorithm(config.algo, agent, spec, topology, config, seeds[agent])
            for agent in range(topology.n_agents)]


def rollout(learners: list, config: RunConfig, phase: str) -> list[Batch]:
    """One phase: H steps of K env copies, every learner acting on its own observations."""
    K, H = config.n_envs, config.episode_length
    envs = [make_env(config.env, 2, H) for _ in range(K)]
    observations = np.stack([env.reset() for env in envs])  # (K, 2, S)
    size = observations.shape[-1]
    obs = np.zeros((2, H, K, size), np.float32)
    joint = np.zeros((H, K, 2), np.int64)
    rewards = np.zeros((H, K, 2), np.float32)
    dones = np.zeros((H, K), bool)
    for t in range(H):
        obs[:, t] = observations.transpose(1, 0, 2)
        for agent, learner in enumerate(learners):
            for rows in acting_chunks(K):
                joint[t, rows.start:rows.stop, agent] = learner.act(observations[rows, agent])
        steps = [env.step(joint[t, k].tolist()) for k, env in enumerate(envs)]
        observations = np.stack([s[0] for s in steps])
        rewards[t] = np.stack([s[1] for s in steps])
        dones[t] = [s[2] for s in steps]
    return [Batch(agent, obs[agent], joint, rewards[:, :, agent], dones, observations[:, agent],
                  phase=phase) for agent in range(2)]


def run_chains(config: RunConfig, learners: list | None = None) -> list[list[dict]]:
    """``config.iterations`` chains; returns each chain's [meta-agent, peer] stats of all its
    phases (what the runtime writes to agents/agent-i/metrics.jsonl, less its own keys)."""
    learners = build(config) if learners is None else learners
    for learner in learners:
        learner.record = None
    mailboxes = [Mailbox(0, (1,)), Mailbox(1, (0,))]
    mailboxes[1].queues = mailboxes[0].queues
    L = config.metamapg_chain_length
    out = []
    for iteration in range(config.iterations):
        for box in mailboxes:
            box.iteration = iteration
        stats: list[dict] = [{}, {}]
        for ell in range(L + 1):
            batches = rollout(learners, config, f"chain{ell}")
            for agent, (learner, batch) in enumerate(zip(learners, batches, strict=True)):
                update = learner.phase_update if ell < L else learner.local_update
                stats[agent].update(update(batch))
        for agent in (1, 0):  # the peer's send before the meta-agent's bounded receive
            stats[agent].update(learners[agent].peer_phase(batches[agent], mailboxes[agent]))
        out.append(stats)
    return out
