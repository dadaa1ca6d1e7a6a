"""Distributed Genetic MADDPG (Zhou & Chen, section V) without a server: the best critic gossips.

Graph nodes are *workers*, not agents. Each worker runs the whole single-process MADDPG loop
(:class:`~p2pmarl.algos.maddpg.MADDPGTeam`: every agent's actor and critic) on its own copies of
the environment, stepped in-process: a worker holds all agents of its copies, so there is nothing
private to keep apart inside it, and a world process per worker would only add two messages per
step (a shared world would also lock the workers' steps together, which is what makes the
report's Celery version slow). The runtime's world process then only paces the iterations.

Every ``critic_sync_every`` env steps (report: 5000) the workers agree on the best critic by
max-propagation gossip instead of asking a server: each worker starts from its own candidate
(score = mean team return of its episodes since the last sync, its id, every agent's critic and
target critic), and for D rounds (D = the graph's diameter) sends the best candidate it knows to
its neighbours and keeps the best of what it receives (:func:`better`). After D rounds every
worker of a connected, fault-free graph holds the global best; it loads that critic (actors never
sync). A last exchange of just (winner, score) tells each worker whether its neighbours agree.

Faults: every round is one reliable round of the runtime (``Peers.exchange_round``, exchange
(sync, round)): lost copies are retransmitted on the estimated timeout and a neighbour that missed
ours gets it from the stored answers; each round is bounded by ``gossip_timeout``; a neighbour
that is down or stays silent is skipped for that round and recorded; a worker that heard from
no neighbour in the whole sync missed it and keeps its own critic (recorded as ``missed``).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import networkx as nx
import numpy as np

from p2pmarl.algos.base import AgentAlgorithm, Batch, Peers
from p2pmarl.algos.maddpg import MADDPGConfig, MADDPGTeam, maddpg_config

if TYPE_CHECKING:
    from p2pmarl.config import RunConfig
    from p2pmarl.envs.base import EnvSpec, MultiAgentEnv
    from p2pmarl.envs.particles import ParticleWorld
    from p2pmarl.topology import Topology

logger = logging.getLogger(__name__)

GOSSIP = "critic_gossip"
AGREE = "critic_winner"
MESSAGE_KINDS = frozenset({GOSSIP, AGREE})
GOSSIP_FIELDS = ("sync", "round", "score", "worker", "critic")
"""What a ``critic_gossip`` message carries: a candidate (score, worker id, flat critics); the
critics only in a round right after the sender's best changed (otherwise the receiver already
has them: max-propagation only forwards news)."""
AGREE_FIELDS = ("sync", "winner", "score")
"""What a ``critic_winner`` message carries after the last round."""


@dataclass(frozen=True)
class Candidate:
    """A worker's claim to the best critic: its score, its id and its critics' parameters."""

    score: float
    worker: int
    critic: np.ndarray


def better(a: Candidate, b: Candidate) -> Candidate:
    """The better of two candidates: higher score, ties to the lower worker id."""
    return a if (a.score, -a.worker) >= (b.score, -b.worker) else b


def max_propagation(
    neighbours: Mapping[int, Sequence[int]], scores: Mapping[int, float], rounds: int
) -> list[dict[int, int]]:
    """Reference of the gossip on a fault-free graph: the winner each worker holds after each
    round (list of ``rounds`` + 1 dicts, round 0 = itself). Pure, no messages."""
    best = {w: (scores[w], -w) for w in neighbours}
    history = [{w: -best[w][1] for w in neighbours}]
    for _ in range(rounds):
        best = {w: max([best[w]] + [best[v] for v in neighbours[w]]) for w in neighbours}
        history.append({w: -best[w][1] for w in neighbours})
    return history


@dataclass(frozen=True)
class GeneticConfig:
    """Settings of the critic gossip; MADDPG's own settings are in :class:`MADDPGConfig`."""

    critic_sync_every: int = 5_000
    """Env steps of a worker between critic syncs (report: 5000)."""
    gossip_timeout: float = 30.0
    """Longest wait (s) for the neighbours' messages of one gossip round (lost copies are
    retransmitted on the estimated timeout long before)."""

    def __post_init__(self) -> None:
        if self.critic_sync_every < 1:
            raise ValueError(f"critic_sync_every must be ≥ 1, got {self.critic_sync_every}")
        if not self.gossip_timeout > 0:
            raise ValueError(f"gossip_timeout must be > 0, got {self.gossip_timeout}")


class GeneticMADDPG(AgentAlgorithm):
    """One worker: full MADDPG on its own env copies, plus the periodic critic gossip."""

    name = "genetic-maddpg"
    message_kinds = MESSAGE_KINDS
    needs_connected_graph = True
    owns_environment = True

    def __init__(
        self,
        worker_id: int,
        env: str,
        episode_length: int,
        topology: Topology | None,
        config: MADDPGConfig,
        genetic: GeneticConfig,
        seed: int,
        env_backend: str = "batched",
    ) -> None:
        from p2pmarl.envs import env_spec

        self.worker_id = worker_id
        self.env_name = env
        self.episode_length = episode_length
        self.spec: EnvSpec = env_spec(env, None, episode_length)
        # topology None: a lone worker, i.e. the plain single-process MADDPG loop
        self.neighbours = () if topology is None else topology.neighbours(worker_id)
        self.rounds = 0 if topology is None else nx.diameter(topology.graph)
        self.genetic = genetic
        self.seed = seed
        self.team = MADDPGTeam(self.spec, config, seed, shared_seed=seed)
        self.env_backend = env_backend
        self.envs: list[MultiAgentEnv] = []
        self.batched: ParticleWorld | None = None
        self.observations: list[list[np.ndarray]] = []
        self.running: np.ndarray = np.zeros((0, self.spec.n_agents))
        self.env_steps = 0
        self.since_sync: list[np.ndarray] = []
        """Returns (per agent) of the episodes finished since the last sync: the score."""
        self.last_score = float("-inf")
        self._finished: list[np.ndarray] = []
        self._pending = 0

    @classmethod
    def from_run_config(
        cls, agent_id: int, spec: EnvSpec, topology: Topology, config: RunConfig, seed: int
    ) -> GeneticMADDPG:
        """Worker ``agent_id`` (a graph node); the env's own default agent count."""
        genetic = GeneticConfig()
        if config.critic_sync_every is not None:
            genetic = dataclasses.replace(genetic, critic_sync_every=config.critic_sync_every)
        return cls(agent_id, config.env, config.episode_length, topology, maddpg_config(config),
                   genetic, seed, env_backend=config.env_backend)

    def act(self, observations: np.ndarray, deterministic: bool = False) -> np.ndarray:
        raise TypeError("a genetic-MADDPG worker acts for every agent: use joint_act")

    def joint_act(self, observations: Sequence[np.ndarray], deterministic: bool = False
                  ) -> np.ndarray:
        """Joint action (K, N) for every agent's observations (evaluation uses this)."""
        return self.team.act(observations, deterministic)

    def _open_envs(self, copies: int) -> None:
        """``copies`` env copies, copy k seeded with the k-th seed of SeedSequence(seed): all
        stepped at once by the batched particle world when ``env_backend`` is ``batched`` and
        the env has one (as the runtime's world does), else one mpe2 env each. Both give the
        same numbers (tests/test_particles.py)."""
        from p2pmarl.envs import make_env
        from p2pmarl.envs.particles import has_batched, make_batched

        seeds = [int(s) for s in np.random.SeedSequence(self.seed).generate_state(copies)]
        self.running = np.zeros((copies, self.spec.n_agents))
        if self.env_backend == "batched" and has_batched(self.env_name):
            self.batched = make_batched(self.env_name, None, copies, self.episode_length)
            self.batched.reset(seeds)
            self.envs = []
            return
        self.envs = [make_env(self.env_name, None, self.episode_length) for _ in range(copies)]
        self.observations = [env.reset(s) for env, s in zip(self.envs, seeds, strict=True)]

    def _copies(self) -> int:
        return self.batched.n_copies if self.batched is not None else len(self.envs)

    def _per_agent_observations(self) -> list[np.ndarray]:
        """Every agent's current observations of all copies, one (K, d_i) float32 each."""
        if self.batched is not None:
            return [np.array(self.batched.observation(i, slice(None)), dtype=np.float32)
                    for i in range(self.spec.n_agents)]
        return [np.stack([obs[i] for obs in self.observations]).astype(np.float32, copy=False)
                for i in range(self.spec.n_agents)]

    def _step(self, joint: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Step every copy with its row of ``joint`` (K, N); reset finished copies. Rewards
        (K, N) and done flags (K,)."""
        if self.batched is not None:
            return self.batched.step(slice(None), joint)
        rewards = np.zeros(joint.shape, dtype=np.float32)
        dones = np.zeros(len(self.envs), dtype=bool)
        for k, env in enumerate(self.envs):
            next_obs, rewards[k], dones[k] = env.step(joint[k].tolist())
            self.observations[k] = env.reset() if dones[k] else next_obs
        return rewards, dones

    def collect(self, steps: int, copies: int) -> Batch:
        """``steps`` steps of ``copies`` own env copies (reset at episode end), into replay."""
        if self._copies() != copies:
            self._open_envs(copies)
        N, T, K = self.spec.n_agents, steps, copies
        width = sum(self.spec.observation_sizes)
        observations = np.empty((T + 1, K, width), dtype=np.float32)
        joint = np.empty((T, K, N), dtype=np.int64)
        rewards = np.empty((T, K, N), dtype=np.float32)
        dones = np.zeros((T, K), dtype=bool)
        for t in range(T):
            per_agent = self._per_agent_observations()
            observations[t] = np.concatenate(per_agent, axis=1)
            joint[t] = self.team.act(per_agent)
            rewards[t], dones[t] = self._step(joint[t])
            self._track(rewards[t], dones[t])
        observations[T] = np.concatenate(self._per_agent_observations(), axis=1)
        self.env_steps += T * K
        self._pending = self.team.add({
            "obs": observations[:T].reshape(T * K, width),
            "next_obs": observations[1:].reshape(T * K, width),
            "joint_actions": joint.reshape(T * K, N), "reward": rewards.reshape(T * K, N),
            "done": dones.reshape(T * K),
        })
        return Batch(self.worker_id, observations[:T], joint, rewards.sum(axis=2), dones,
                     observations[T])

    def _track(self, rewards: np.ndarray, dones: np.ndarray) -> None:
        self.running += rewards
        for k in np.flatnonzero(dones):
            self._finished.append(self.running[k].copy())
            self.since_sync.append(self.running[k].copy())
            self.running[k] = 0.0

    def local_update(self, batch: Batch) -> dict[str, Any]:
        """The MADDPG updates due for this batch (all agents, shared minibatch)."""
        started = time.monotonic()
        results = [self.team.update() for _ in range(self._pending)]
        stats: dict[str, Any] = {
            "maddpg/updates": float(len(results)), "replay/size": float(len(self.team.replay)),
            "time/update_seconds": time.monotonic() - started,
        }
        if results:
            stats["train/critic_loss"] = float(np.mean([r["critic_loss"] for u in results
                                                        for r in u]))
        finished, self._finished = self._finished, []
        if finished:
            per_agent = np.mean(finished, axis=0)
            stats["rollout/agent_returns"] = per_agent.tolist()
            stats["rollout/return"] = float(per_agent.sum())
            stats["rollout/episodes"] = len(finished)
        return stats

    def peer_phase(self, batch: Batch, peers: Peers) -> dict[str, float]:
        """The critic sync, when this iteration crossed a multiple of ``critic_sync_every``."""
        every = self.genetic.critic_sync_every
        before = self.env_steps - batch.n_samples
        if self.env_steps // every == before // every:
            return {}
        return self.sync(peers, self.env_steps // every)

    def score(self) -> float:
        """Mean team return (sum over agents) of the episodes finished since the last sync (the
        last sync's score if none finished since; −inf before the first episode)."""
        if not self.since_sync:
            return self.last_score
        return float(np.mean([returns.sum() for returns in self.since_sync]))

    def critic_parameters(self) -> np.ndarray:
        """Every agent's critic and target critic, concatenated (float32)."""
        return np.concatenate([learner.critic_parameters() for learner in self.team.learners])

    def load_critics(self, flat: np.ndarray) -> None:
        sizes = [learner.critic_parameters().size for learner in self.team.learners]
        if flat.shape != (sum(sizes),):
            raise ValueError(f"critic gossip of shape {flat.shape}, expected ({sum(sizes)},)")
        for learner, part in zip(self.team.learners, np.split(flat, np.cumsum(sizes)[:-1]),
                                 strict=True):
            learner.load_critic_parameters(part)

    def sync(self, peers: Peers, sync: int) -> dict[str, float]:
        """Max-propagation of (score, critics) for ``rounds`` rounds; load the winner's critic."""
        started = time.monotonic()
        own = Candidate(self.score(), self.worker_id, self.critic_parameters())
        best, heard, missed_rounds, bytes_sent, learned_at = own, 0, 0, 0, 0
        held: list[Candidate] = []  # the best held at the start of each round
        offers: dict[int, Mapping[str, Any]] = {}  # each neighbour's offer of the last round
        for round_ in range(self.rounds):
            held.append(best)
            body: dict[str, Any] = {"sync": sync, "round": round_, "score": best.score,
                                    "worker": best.worker}
            with_critic = {**body, "critic": best.critic}
            fresh = learned_at == round_  # news since the last round (round 0: the own one)
            bodies = {j: with_critic if fresh or self._missed_ours(offers, j, held, round_)
                      else body for j in self.neighbours}
            offers, sent = self._round(peers, GOSSIP, bodies, (sync, round_))
            bytes_sent += sent
            heard += len(offers)
            missed_rounds += len(offers) < len(self.neighbours)
            for offer in offers.values():
                if "critic" not in offer:  # the sender's best is what it offered before
                    continue
                candidate = Candidate(float(offer["score"]), int(offer["worker"]),
                                      np.asarray(offer["critic"], dtype=np.float32))
                winner = better(best, candidate)
                if winner is not best:
                    best, learned_at = winner, round_ + 1
        verdict = {"sync": sync, "winner": best.worker, "score": best.score}
        verdicts, sent = self._round(peers, AGREE, dict.fromkeys(self.neighbours, verdict),
                                     (sync,))
        bytes_sent += sent
        agree = len(verdicts) == len(self.neighbours) and all(
            int(v["winner"]) == best.worker for v in verdicts.values()
        )
        missed = self.rounds > 0 and heard == 0
        loaded = best.worker != self.worker_id and not missed
        if loaded:
            self.load_critics(best.critic)
        record = {
            "event": "critic_sync", "sync": sync, "env_steps": self.env_steps,
            "winner": best.worker, "winner_score": best.score, "own_score": own.score,
            "rounds": self.rounds, "learned_at_round": learned_at, "loaded": loaded,
            "missed": missed, "missed_rounds": missed_rounds, "neighbours_agree": agree,
            "bytes_sent": bytes_sent, "seconds": time.monotonic() - started,
        }
        if self.record is not None:
            self.record(record)
        self.since_sync, self.last_score = [], own.score
        return {"genetic/winner": float(best.worker), "genetic/loaded": float(loaded),
                "genetic/missed": float(missed), "genetic/neighbours_agree": float(agree),
                "genetic/bytes_sent": float(bytes_sent)}

    @staticmethod
    def _missed_ours(
        offers: Mapping[int, Mapping[str, Any]], j: int, held: Sequence[Candidate], round_: int
    ) -> bool:
        """Whether neighbour ``j`` may lack the critic of a candidate we sent earlier: we did not
        hear it last round, or its offer then was worse than what we held two rounds ago (it
        made that offer after our message of the round before reached it, or was lost). Max-
        propagation forwards a critic once, so without this a round missed under load (the
        reliable round gave up) is never repaired."""
        if round_ < 2:
            return round_ == 1 and j not in offers
        offer = offers.get(j)
        if offer is None:
            return True
        theirs = Candidate(float(offer["score"]), int(offer["worker"]), held[0].critic)
        ours = held[round_ - 2]
        return better(theirs, ours) is not theirs

    def _round(
        self, peers: Peers, kind: str, bodies: Mapping[int, Mapping[str, Any]],
        key: tuple[int, ...],
    ) -> tuple[dict[int, Mapping[str, Any]], int]:
        """One reliable round (``Peers.exchange_round``) with the live neighbours: ``bodies[j]``
        to each neighbour j, each one's message of (kind, key) back, within
        ``gossip_timeout``; and the bytes this worker sent in it."""
        down = peers.down()
        live = [j for j in self.neighbours if j not in down]
        result = peers.exchange_round(kind, {j: bodies[j] for j in live}, key,
                                      deadline=time.monotonic() + self.genetic.gossip_timeout)
        return {j: message.body for j, message in result.messages.items()}, result.bytes_sent

    def state_dict(self) -> dict[str, Any]:
        """The whole team (networks, optimizers, replay), env step count and recent returns."""
        return {
            "algorithm": self.name, "agent_id": self.worker_id, "team": self.team.state_dict(),
            "env_steps": self.env_steps, "since_sync": list(self.since_sync),
            "last_score": self.last_score,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("algorithm") != self.name or state.get("agent_id") != self.worker_id:
            raise ValueError(
                f"checkpoint of {state.get('algorithm')!r} worker {state.get('agent_id')} cannot "
                f"be loaded into {self.name!r} worker {self.worker_id}; pick that worker's file"
            )
        self.team.load_state_dict(state["team"])
        self.env_steps = state["env_steps"]
        self.since_sync = list(state["since_sync"])
        self.last_score = float(state["last_score"])
