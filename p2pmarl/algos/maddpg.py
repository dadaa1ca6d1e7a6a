"""MADDPG (Lowe et al., 2017) with one process per agent: deterministic actor, networked critic.

Agent i holds its actor μ_i(o_i) (Gumbel-softmax over MPE's discrete actions, as the original
code does for discrete MPE), its critic Q_i and their target copies, and a replay buffer of what
it saw: own observations, the joint action (from the world), own reward, done flags.

Critic Q_i sees the observations and actions of its *group* G_i = {i} ∪ neighbours(i) (in
increasing id order). On a complete graph G_i is every agent, which is exactly MADDPG's
centralized critic Q_i(x, a_1..a_N) of the report's Algorithm 1; on a sparser graph it is a
networked critic that conditions only on what graph neighbours can tell (this variant's
generalization; it is no longer the centralized critic, and a learned best response can only
account for the neighbours' behaviour).

One update (Algorithm 1, inner loop), all agents at once:

1. every agent draws the same minibatch rows S from the root seed and the update number
   (:func:`~p2pmarl.algos.replay.shared_indices`; the rows line up because every agent's buffer
   holds the same world steps in the same order — checked with the fingerprint of the sampled
   joint actions);
2. agent j sends each neighbour ``maddpg_rows``: its observations o_j and next observations o'_j
   at S and its target-policy action a'_j = μ'_j(o'_j) (a Gumbel-softmax sample) — nothing else
   but the reliability fields (one reliable round of the runtime: ``Peers.exchange_round``);
3. agent i sets y = r_i + γ (1 − done) Q'_i(x'_G, a'_G), minimizes (y − Q_i(x_G, a_G))², then
   ascends Q_i(x_G, a_1..μ_i(o_i)..a_N) in its actor (other agents' actions from the buffer),
   then θ' ← τθ + (1 − τ)θ' for its own actor and critic.

Every agent computes its target action before anyone updates (the messages of one update are
sent first), so the N updates of one step are simultaneous, not sequential as in the original
loop. Transitions that end an episode are not bootstrapped: the world resets a copy at its
episode end, so the true last observation is not in the batch (MPE episodes end by time limit;
this loses the bootstrap on one of every episode_length transitions).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from p2pmarl.algos.adam import Adam
from p2pmarl.algos.base import AgentAlgorithm, Batch, Peers
from p2pmarl.algos.replay import ReplayBuffer, shared_indices

if TYPE_CHECKING:
    from p2pmarl.config import RunConfig
    from p2pmarl.envs.base import EnvSpec
    from p2pmarl.topology import Topology

logger = logging.getLogger(__name__)

ROWS = "maddpg_rows"
MESSAGE_KINDS = frozenset({ROWS})
ROW_FIELDS = ("update", "fingerprint", "obs", "next_obs", "next_action")
"""Everything a ``maddpg_rows`` message carries (the privacy test checks this list)."""
TARGET_NOISE, ACTOR_NOISE = 0, 1
"""Streams of Gumbel noise per (agent, update): target action, actor-update action."""


@dataclass(frozen=True)
class MADDPGConfig:
    """MADDPG settings; defaults are the report's appendix (and the original MPE code)."""

    actor_lr: float = 1e-3
    """Adam learning rate of the actor μ_i (report: 1e-3)."""
    critic_lr: float = 1e-4
    """Adam learning rate of the critic Q_i (report: 1e-4)."""
    gamma: float = 0.95
    """Discount γ of the critic target y (report: 0.95)."""
    tau: float = 0.01
    """Soft target update rate, θ' ← τθ + (1 − τ)θ' (report: 0.01)."""
    batch_size: int = 256
    """Minibatch S per update (report: 256)."""
    buffer_size: int = 500_000
    """Replay capacity in transitions (report: 5e5)."""
    hidden: tuple[int, ...] = (64, 64)
    """Hidden widths of actor and critic, ReLU (report: 2×64)."""
    train_every: int = 100
    """Env transitions added to the buffer per gradient update (original MADDPG: 100)."""
    learning_starts: int = 2_560
    """Transitions in the buffer before the first update (10 minibatches)."""
    policy_regularization: float = 1e-3
    """Weight of mean(logits²) in the actor loss (original MADDPG code: 1e-3)."""
    grad_clip: float = 0.5
    """Gradient norm clip of actor and critic (original MADDPG code: 0.5)."""
    message_timeout: float = 30.0
    """Longest wait (s) for the neighbours' rows of one update before skipping it (recorded); a
    lost copy is retransmitted on its estimated timeout long before (runtime/reliable.py)."""

    def __post_init__(self) -> None:
        checks = {
            "actor_lr": self.actor_lr > 0, "critic_lr": self.critic_lr > 0,
            "gamma": 0 < self.gamma <= 1, "tau": 0 < self.tau <= 1,
            "batch_size": self.batch_size >= 1, "buffer_size": self.buffer_size >= 1,
            "hidden": len(self.hidden) >= 1 and min(self.hidden) >= 1,
            "train_every": self.train_every >= 1, "learning_starts": self.learning_starts >= 1,
            "policy_regularization": self.policy_regularization >= 0,
            "grad_clip": self.grad_clip > 0, "message_timeout": self.message_timeout > 0,
        }
        for name, valid in checks.items():
            if not valid:
                raise ValueError(f"MADDPGConfig.{name}={getattr(self, name)!r} is out of range; "
                                 f"see its docstring in p2pmarl/algos/maddpg.py")


def mlp(inputs: int, hidden: Sequence[int], outputs: int) -> nn.Sequential:
    """ReLU multilayer perceptron, as the original MADDPG networks."""
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(inputs, width), nn.ReLU()]
        inputs = width
    layers.append(nn.Linear(inputs, outputs))
    return nn.Sequential(*layers)


def gumbel_noise(seed: int, agent: int, update: int, stream: int, shape: tuple[int, ...]) -> Tensor:
    """Gumbel(0, 1) noise −log(−log u), a pure function of (seed, agent, update, stream)."""
    uniform = np.random.default_rng((seed, agent, update, stream)).random(shape)
    uniform = np.clip(uniform, 1e-10, 1.0 - 1e-10)
    return torch.from_numpy(-np.log(-np.log(uniform))).float()


def gumbel_softmax(logits: Tensor, noise: Tensor) -> Tensor:
    """Soft one-hot action softmax(logits + g), temperature 1 (the original code's sample)."""
    return torch.softmax(logits + noise, dim=-1)


def one_hot(actions: np.ndarray, size: int) -> Tensor:
    """int actions (S,) → float32 one-hot (S, size)."""
    return torch.nn.functional.one_hot(torch.from_numpy(actions), size).float()


def soft_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    """θ' ← τθ + (1 − τ)θ' (Algorithm 1, last line)."""
    with torch.no_grad():
        for mine, theirs in zip(target.parameters(), source.parameters(), strict=True):
            mine.mul_(1 - tau).add_(theirs, alpha=tau)


def rows_fingerprint(joint_actions: np.ndarray) -> str:
    """Hash of sampled joint-action rows: equal at two agents iff they sampled the same rows."""
    digest = hashlib.blake2b(np.ascontiguousarray(joint_actions).tobytes(), digest_size=8)
    return digest.hexdigest()


@dataclass
class CriticInputs:
    """One agent's critic inputs for a minibatch, members of its group in id order."""

    observations: list[Tensor]
    """o_j at the sampled rows, one (S, d_j) per group member."""
    actions: list[Tensor]
    """a_j one-hot, (S, |A_j|) per member (from the buffer)."""
    next_observations: list[Tensor]
    """o'_j, (S, d_j) per member."""
    next_actions: list[Tensor]
    """a'_j = μ'_j(o'_j) soft one-hot, (S, |A_j|) per member."""
    rewards: Tensor
    """Own r_i, (S,)."""
    dones: Tensor
    """1.0 where the transition ended an episode, (S,)."""


class AgentLearner:
    """Agent i's actor, critic, targets and optimizers, and the update math (Algorithm 1)."""

    def __init__(
        self, agent_id: int, group: Sequence[int], spec: EnvSpec, config: MADDPGConfig
    ) -> None:
        self.agent_id = agent_id
        self.group = tuple(sorted(group))
        if agent_id not in self.group:
            raise ValueError(f"agent {agent_id} must be in its own critic group {self.group}")
        self.slot = self.group.index(agent_id)
        self.config = config
        self.action_size = spec.action_sizes[agent_id]
        observation_size = spec.observation_sizes[agent_id]
        critic_inputs = sum(spec.observation_sizes[j] + spec.action_sizes[j] for j in self.group)
        self.actor = mlp(observation_size, config.hidden, self.action_size)
        self.critic = mlp(critic_inputs, config.hidden, 1)
        self.target_actor = mlp(observation_size, config.hidden, self.action_size)
        self.target_critic = mlp(critic_inputs, config.hidden, 1)
        self.target_actor.load_state_dict(self.actor.state_dict())
        self.target_critic.load_state_dict(self.critic.state_dict())
        self.actor_optimizer = Adam(self.actor.parameters(), lr=config.actor_lr)
        self.critic_optimizer = Adam(self.critic.parameters(), lr=config.critic_lr)

    def act(self, observations: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
        """argmax of the Gumbel-softmax sample (= a categorical sample of softmax(logits)); the
        mode without ``rng``. int64 (K,)."""
        with torch.no_grad():
            logits = self.actor(torch.as_tensor(observations, dtype=torch.float32)).numpy()
        if rng is not None:
            logits = logits + rng.gumbel(size=logits.shape)
        return logits.argmax(axis=-1).astype(np.int64)

    def target_action(self, next_observations: Tensor, noise: Tensor) -> Tensor:
        """a'_i = Gumbel-softmax(μ'_i(o'_i)), (S, |A_i|)."""
        with torch.no_grad():
            return gumbel_softmax(self.target_actor(next_observations), noise)

    def critic_step(self, inputs: CriticInputs) -> float:
        """One Adam step on (1/S) Σ (y − Q_i(x, a))², y = r_i + γ(1 − d) Q'_i(x', a')."""
        with torch.no_grad():
            next_q = self.target_critic(
                torch.cat(inputs.next_observations + inputs.next_actions, dim=1)
            ).squeeze(1)
            target = inputs.rewards + self.config.gamma * (1.0 - inputs.dones) * next_q
        q = self.critic(torch.cat(inputs.observations + inputs.actions, dim=1)).squeeze(1)
        loss = ((target - q) ** 2).mean()
        self.critic_optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(self.critic.parameters(), self.config.grad_clip)
        self.critic_optimizer.step()
        return float(loss.detach())

    def actor_step(self, inputs: CriticInputs, noise: Tensor) -> float:
        """One Adam step on −(1/S) Σ Q_i(x, a_1..a_i = gumbel(μ_i(o_i))..a_N) + c·mean(logits²)
        (the sampled deterministic policy gradient of Algorithm 1)."""
        logits = self.actor(inputs.observations[self.slot])
        actions = list(inputs.actions)
        actions[self.slot] = gumbel_softmax(logits, noise)
        q = self.critic(torch.cat(inputs.observations + actions, dim=1)).squeeze(1)
        loss = -q.mean() + self.config.policy_regularization * (logits**2).mean()
        self.actor_optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(self.actor.parameters(), self.config.grad_clip)
        self.actor_optimizer.step()
        return float(-q.detach().mean())

    def update(self, inputs: CriticInputs, actor_noise: Tensor) -> dict[str, float]:
        """Critic step, actor step, soft target updates."""
        critic_loss = self.critic_step(inputs)
        actor_q = self.actor_step(inputs, actor_noise)
        soft_update(self.target_actor, self.actor, self.config.tau)
        soft_update(self.target_critic, self.critic, self.config.tau)
        return {"critic_loss": critic_loss, "actor_q": actor_q}

    def critic_parameters(self) -> np.ndarray:
        """Critic and target critic parameters, flat float32 (what genetic sync sends)."""
        tensors = list(self.critic.parameters()) + list(self.target_critic.parameters())
        return torch.cat([t.detach().reshape(-1) for t in tensors]).numpy().copy()

    def load_critic_parameters(self, flat: np.ndarray) -> None:
        """Inverse of :meth:`critic_parameters`."""
        tensors = list(self.critic.parameters()) + list(self.target_critic.parameters())
        expected = sum(t.numel() for t in tensors)
        if flat.shape != (expected,):
            raise ValueError(f"critic parameters of shape {flat.shape}, expected ({expected},)")
        with torch.no_grad():
            offset = 0
            for tensor in tensors:
                tensor.copy_(torch.from_numpy(flat[offset : offset + tensor.numel()])
                             .reshape(tensor.shape))
                offset += tensor.numel()

    def state_dict(self) -> dict[str, Any]:
        return {
            name: getattr(self, name).state_dict()
            for name in ("actor", "critic", "target_actor", "target_critic", "actor_optimizer",
                         "critic_optimizer")
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for name, value in state.items():
            getattr(self, name).load_state_dict(value)


def _tensor(array: Any) -> Tensor:
    """float32 tensor of a (possibly read-only, decoded) array."""
    return torch.from_numpy(np.array(array, dtype=np.float32))


def batch_transitions(batch: Batch) -> dict[str, np.ndarray]:
    """A rollout batch as replay rows, time-major: o_t, o_{t+1}, joint a_t, r_t, done_t."""
    T, K = batch.rewards.shape
    next_observations = np.concatenate([batch.observations[1:], batch.last_observations[None]])
    return {
        "obs": batch.observations.reshape(T * K, -1),
        "next_obs": next_observations.reshape(T * K, -1),
        "joint_actions": batch.joint_actions.reshape(T * K, -1),
        "reward": batch.rewards.reshape(T * K),
        "done": batch.dones.reshape(T * K),
    }


def replay_fields(observation_size: int, n_agents: int) -> dict[str, tuple[tuple[int, ...], str]]:
    """Fields of an agent's replay buffer: (4·2·d_i + 8·N + 5) bytes per transition."""
    return {
        "obs": ((observation_size,), "f4"), "next_obs": ((observation_size,), "f4"),
        "joint_actions": ((n_agents,), "i8"), "reward": ((), "f4"), "done": ((), "?"),
    }


class UpdateSchedule:
    """How many updates are due: one per ``train_every`` transitions once ``learning_starts``
    transitions are stored; identical at every agent fed the same batches."""

    def __init__(self, config: MADDPGConfig) -> None:
        self.config = config
        self.credit = 0
        self.updates = 0
        """Updates done so far; the update number seeds the minibatch rows."""

    def add(self, transitions: int, stored: int) -> int:
        """Record ``transitions`` new ones (``stored`` in the buffer now); updates due now."""
        if stored < self.config.learning_starts:
            return 0
        self.credit += transitions
        due, self.credit = divmod(self.credit, self.config.train_every)
        return due

    def state_dict(self) -> dict[str, int]:
        return {"credit": self.credit, "updates": self.updates}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        self.credit, self.updates = state["credit"], state["updates"]


class MADDPG(AgentAlgorithm):
    """One agent of MADDPG: acts on its own observation, updates with its neighbours' rows."""

    name = "maddpg"
    message_kinds = MESSAGE_KINDS

    def __init__(
        self,
        agent_id: int,
        spec: EnvSpec,
        neighbours: Sequence[int],
        config: MADDPGConfig,
        seed: int,
        shared_seed: int,
    ) -> None:
        self.agent_id = agent_id
        self.spec = spec
        self.neighbours = tuple(sorted(neighbours))
        self.config = config
        self.shared_seed = shared_seed
        torch.manual_seed(seed)
        self.rng = np.random.default_rng(seed)
        self.learner = AgentLearner(agent_id, (agent_id, *self.neighbours), spec, config)
        self.replay = ReplayBuffer(
            config.buffer_size, replay_fields(spec.observation_sizes[agent_id], spec.n_agents)
        )
        self.schedule = UpdateSchedule(config)
        self._pending = 0

    @classmethod
    def from_run_config(
        cls, agent_id: int, spec: EnvSpec, topology: Topology, config: RunConfig, seed: int
    ) -> MADDPG:
        """Report-appendix defaults; ``--maddpg-batch-size`` etc. override them."""
        return cls(agent_id, spec, topology.neighbours(agent_id), maddpg_config(config), seed,
                   shared_seed=config.seed)

    @property
    def draws_row_by_row(self) -> bool:
        """True: one Gumbel draw per :meth:`act`."""
        return True

    def act(self, observations: np.ndarray, deterministic: bool = False) -> np.ndarray:
        return self.learner.act(observations, None if deterministic else self.rng)

    def local_update(self, batch: Batch) -> dict[str, float]:
        """Store the batch in the replay buffer; count the updates now due."""
        if batch.agent_id != self.agent_id:
            raise ValueError(f"agent {self.agent_id} was given agent {batch.agent_id}'s batch")
        self.replay.add(batch_transitions(batch))
        self._pending = self.schedule.add(batch.n_samples, len(self.replay))
        return {"replay/size": float(len(self.replay))}

    def peer_phase(self, batch: Batch, peers: Peers) -> dict[str, float]:
        """The updates due, each exchanging ``maddpg_rows`` with every neighbour."""
        started = time.monotonic()
        done = skipped = 0
        totals = {"critic_loss": 0.0, "actor_q": 0.0}
        for _ in range(self._pending):
            result = self._one_update(peers)
            self.schedule.updates += 1
            if result is None:
                skipped += 1
                continue
            done += 1
            for key in totals:
                totals[key] += result[key]
        stats: dict[str, float] = {
            "maddpg/updates": float(done), "maddpg/skipped_updates": float(skipped),
            "time/update_seconds": time.monotonic() - started,
        }
        if done:
            stats.update({f"train/{key}": value / done for key, value in totals.items()})
        return stats

    def _one_update(self, peers: Peers) -> dict[str, float] | None:
        """Algorithm 1's inner loop for this agent; None if a neighbour's rows are missing."""
        update = self.schedule.updates
        indices = shared_indices(self.shared_seed, update, len(self.replay), self.config.batch_size)
        rows = self.replay.sample(indices)
        fingerprint = rows_fingerprint(rows["joint_actions"])
        next_observations = torch.from_numpy(rows["next_obs"])
        noise_shape = (len(indices), self.learner.action_size)
        next_action = self.learner.target_action(
            next_observations,
            gumbel_noise(self.shared_seed, self.agent_id, update, TARGET_NOISE, noise_shape),
        )
        own = {"obs": rows["obs"], "next_obs": rows["next_obs"], "next_action": next_action.numpy()}
        received = self._exchange_rows(
            peers, update, fingerprint, {"update": update, "fingerprint": fingerprint, **own}
        )
        if received is None:
            return None
        received[self.agent_id] = own
        inputs = self._critic_inputs(rows, received)
        noise = gumbel_noise(self.shared_seed, self.agent_id, update, ACTOR_NOISE, noise_shape)
        return self.learner.update(inputs, noise)

    def _exchange_rows(
        self, peers: Peers, update: int, fingerprint: str, body: Mapping[str, Any]
    ) -> dict[int, Mapping[str, Any]] | None:
        """Step 2 as one reliable round of the runtime (``Peers.exchange_round``, exchange
        (update,)): our rows to every neighbour, every neighbour's rows of ``update`` back, lost
        copies retransmitted on the estimated timeout, at most ``message_timeout`` in all. None
        (recorded) if a neighbour is down, stayed silent, or sampled other rows (fingerprint
        mismatch)."""
        result = peers.exchange_round(
            ROWS, {j: body for j in self.neighbours}, (update,),
            deadline=time.monotonic() + self.config.message_timeout,
        )
        if result.down:
            return self._skip(update, "neighbour_down", sorted(result.down))
        if result.missing:
            return self._skip(update, "timeout", sorted(result.missing))
        received = {j: message.body for j, message in result.messages.items()}
        for neighbour, got in sorted(received.items()):
            if got.get("fingerprint") != fingerprint:
                return self._skip(update, "fingerprint_mismatch", [neighbour])
        return received

    def _skip(self, update: int, reason: str, neighbours: list[int]) -> None:
        logger.warning("agent %d: update %d skipped (%s: %s)", self.agent_id, update, reason,
                       neighbours)
        if self.record is not None:
            self.record({"event": "update_skipped", "update": update, "reason": reason,
                         "neighbours": neighbours})
        return None

    def _critic_inputs(
        self, rows: Mapping[str, np.ndarray], received: Mapping[int, Mapping[str, Any]]
    ) -> CriticInputs:
        group = self.learner.group
        sizes = self.spec.action_sizes
        joint = rows["joint_actions"]
        return CriticInputs(
            observations=[_tensor(received[j]["obs"]) for j in group],
            actions=[one_hot(joint[:, j], sizes[j]) for j in group],
            next_observations=[_tensor(received[j]["next_obs"]) for j in group],
            next_actions=[_tensor(received[j]["next_action"]) for j in group],
            rewards=torch.from_numpy(rows["reward"]),
            dones=torch.from_numpy(rows["done"].astype(np.float32)),
        )

    def state_dict(self) -> dict[str, Any]:
        """Networks, optimizers, RNG, update schedule and the filled replay rows."""
        return {
            "algorithm": self.name, "agent_id": self.agent_id,
            "config": dataclasses.asdict(self.config),
            "learner": self.learner.state_dict(), "replay": self.replay.state_dict(),
            "schedule": self.schedule.state_dict(),
            "torch_rng": torch.get_rng_state(), "numpy_rng": self.rng.bit_generator.state,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.check_checkpoint_owner(state)
        self.learner.load_state_dict(state["learner"])
        self.replay.load_state_dict(state["replay"])
        self.schedule.load_state_dict(state["schedule"])
        torch.set_rng_state(state["torch_rng"])
        self.rng.bit_generator.state = state["numpy_rng"]


class MADDPGTeam:
    """The single-process MADDPG loop: every agent's learner in one process, critics over all
    agents (the original implementation's shape). Genetic MADDPG workers run one each; it is
    also the reference the agent-per-process version is tested and benchmarked against.

    Update ``u`` uses the same rows (:func:`shared_indices`) and Gumbel noise as update ``u``
    of :class:`MADDPG` agents on a complete graph, so both give the same parameters.
    """

    def __init__(self, spec: EnvSpec, config: MADDPGConfig, seed: int, shared_seed: int) -> None:
        self.spec = spec
        self.config = config
        self.shared_seed = shared_seed
        torch.manual_seed(seed)
        self.rng = np.random.default_rng(seed)
        everyone = tuple(range(spec.n_agents))
        self.learners = [AgentLearner(i, everyone, spec, config) for i in everyone]
        self.replay = ReplayBuffer(config.buffer_size, team_replay_fields(spec))
        self.schedule = UpdateSchedule(config)

    def act(self, observations: Sequence[np.ndarray], deterministic: bool = False) -> np.ndarray:
        """Joint action (K, N) for every agent's observations (one (K, d_i) array each)."""
        rng = None if deterministic else self.rng
        return np.stack(
            [learner.act(o, rng) for learner, o in zip(self.learners, observations, strict=True)],
            axis=1,
        )

    def add(self, rows: Mapping[str, np.ndarray]) -> int:
        """Store team transitions (see :func:`team_replay_fields`); returns updates due."""
        self.replay.add(rows)
        return self.schedule.add(len(next(iter(rows.values()))), len(self.replay))

    def update(self) -> list[dict[str, float]]:
        """One simultaneous update of every agent on the shared minibatch."""
        update = self.schedule.updates
        indices = shared_indices(self.shared_seed, update, len(self.replay), self.config.batch_size)
        rows = self.replay.sample(indices)
        observations = split_observations(rows["obs"], self.spec)
        next_observations = split_observations(rows["next_obs"], self.spec)
        next_actions = []
        for i, learner in enumerate(self.learners):
            shape = (len(indices), learner.action_size)
            noise = gumbel_noise(self.shared_seed, i, update, TARGET_NOISE, shape)
            next_actions.append(learner.target_action(next_observations[i], noise))
        joint = rows["joint_actions"]
        actions = [one_hot(joint[:, j], size) for j, size in enumerate(self.spec.action_sizes)]
        results = []
        for i, learner in enumerate(self.learners):
            inputs = CriticInputs(
                observations, actions, next_observations, next_actions,
                rewards=torch.from_numpy(rows["reward"][:, i].copy()),
                dones=torch.from_numpy(rows["done"].astype(np.float32)),
            )
            shape = (len(indices), learner.action_size)
            noise = gumbel_noise(self.shared_seed, i, update, ACTOR_NOISE, shape)
            results.append(learner.update(inputs, noise))
        self.schedule.updates += 1
        return results

    def state_dict(self) -> dict[str, Any]:
        return {
            "learners": [learner.state_dict() for learner in self.learners],
            "replay": self.replay.state_dict(), "schedule": self.schedule.state_dict(),
            "torch_rng": torch.get_rng_state(), "numpy_rng": self.rng.bit_generator.state,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for learner, saved in zip(self.learners, state["learners"], strict=True):
            learner.load_state_dict(saved)
        self.replay.load_state_dict(state["replay"])
        self.schedule.load_state_dict(state["schedule"])
        torch.set_rng_state(state["torch_rng"])
        self.rng.bit_generator.state = state["numpy_rng"]


def team_replay_fields(spec: EnvSpec) -> dict[str, tuple[tuple[int, ...], str]]:
    """Team buffer: all observations concatenated, joint action, every reward, done."""
    width = sum(spec.observation_sizes)
    return {
        "obs": ((width,), "f4"), "next_obs": ((width,), "f4"),
        "joint_actions": ((spec.n_agents,), "i8"), "reward": ((spec.n_agents,), "f4"),
        "done": ((), "?"),
    }


def split_observations(concatenated: np.ndarray, spec: EnvSpec) -> list[Tensor]:
    """(S, Σ d_i) → one (S, d_i) tensor per agent."""
    cuts = np.cumsum(spec.observation_sizes)[:-1]
    return [torch.from_numpy(np.ascontiguousarray(part))
            for part in np.split(concatenated, cuts, axis=1)]


def maddpg_config(config: RunConfig) -> MADDPGConfig:
    """MADDPGConfig from the run config's ``maddpg_*`` fields (None keeps the default)."""
    from p2pmarl.algos import override

    return override(
        MADDPGConfig(),
        batch_size=config.maddpg_batch_size,
        buffer_size=config.maddpg_buffer_size,
        learning_starts=config.maddpg_learning_starts,
        train_every=config.maddpg_train_every,
        actor_lr=config.maddpg_actor_lr,
        critic_lr=config.maddpg_critic_lr,
    )
