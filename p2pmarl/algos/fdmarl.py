"""FDMARL: networked actor-critic with a consensus critic (Zhang et al., ICML 2018).

The MATRPO paper's fully decentralized baseline (section VI-A, ref. [57]). Every agent i holds

* an actor π^i(a^i|o^i) on its own observation (one categorical head, its own action), and
* a critic Q(o^i, a; ω^i) on its own observation and the joint action a (the world sends the
  joint action of every step, MATRPO section IV-D).

Per training iteration, on its own batch and its own reward r^i only (Zhang et al. 2018, the
action-value networked actor-critic; the reference text numbers its steps (3.3)-(3.5)):

1. **actor step** with the counterfactual advantage of the current critic,
   A^i = Q(o^i, a; ω^i) − Σ_{b} π^i(b|o^i) Q(o^i, (b, a^{-i}); ω^i)
   (:func:`counterfactual_advantage`),
   θ^i ← θ^i + α_θ · mean(A^i ∇ log π^i(a^i|o^i))  (Adam, one pass over the batch in minibatches);
2. **critic epochs**, each a TD(0) pass with the own reward times the fixed scale c that every
   agent shares (``reward_scale``), δ^i = c·r^i + γ Q(o'^i, a'; ω^i) − Q(o^i, a; ω^i) and
   ω̃^i = ω^i + α_ω δ^i ∇Q  (SGD with momentum, minibatches; :func:`td_targets`), followed by
3. **a consensus (diffusion) step** ω^i ← Σ_j c(i, j) ω̃^j over the agent and its graph
   neighbours with Metropolis weights c (:func:`consensus_step`, on the gossip primitive
   :func:`p2pmarl.algos.gossip.average`).

Critic parameters are the only thing an FDMARL agent sends, and only to its graph neighbours.
After consensus the critics estimate the action value of the *team-average* reward
(1/N)Σ_j r^j, although no agent ever sees another's reward: that is how agents of ``spread``
whose own reward holds only collisions still learn to cover the landmarks.

Batch form (our deviation, stated in docs/algorithm.md): Zhang et al. update per transition in
the average-reward setting; here one update per rollout of M samples, discounted (γ), with
one consensus round after each critic epoch. The last row of the rollout has no next joint
action (the next step has not been taken yet), so it is left out of the TD loss.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from p2pmarl.algos.adam import Adam
from p2pmarl.algos.base import AgentAlgorithm, Batch, Peers
from p2pmarl.algos.gossip import GossipConfig, average
from p2pmarl.algos.networks import (
    CategoricalPolicy,
    flat_parameters,
    mlp,
    sample_actions,
    set_flat_parameters,
)
from p2pmarl.envs.base import EnvSpec

if TYPE_CHECKING:
    from p2pmarl.config import RunConfig
    from p2pmarl.topology import Topology

logger = logging.getLogger(__name__)

CRITIC_KINDS = ("fdmarl_critic_even", "fdmarl_critic_odd")
"""Kinds of the one FDMARL peer message, this agent's critic parameters ω̃^i after a TD epoch
(even and odd epochs, see :func:`consensus_step`)."""
CRITIC_FIELDS = frozenset({"round", "degree", "settled", "final", "value"})
"""Body of a critic message (:mod:`p2pmarl.algos.gossip`'s metropolis round): round number,
sender degree, two stopping fields, and ``value``, the flat float32 critic parameters."""
MESSAGE_KINDS = frozenset(CRITIC_KINDS)


@dataclass(frozen=True)
class FDMARLConfig:
    """Settings of the networked actor-critic (Zhang et al., 2018)."""

    gamma: float = 0.95
    """Discount of the TD target; in (0, 1]. 0.95 (horizon ~20 steps) keeps raw Q values of
    order 10-40 on spread, which a critic without output scaling fits in a few epochs."""
    actor_lr: float = 1e-3
    """Adam learning rate of the actor step α_θ; 1e-4-3e-3."""
    actor_epochs: int = 1
    """Passes of the actor over the batch per iteration; 1 uses every sample once (plain
    on-policy gradient), more reuse them without importance correction; 1-3."""
    actor_minibatch: int = 10_000
    """Samples per actor step (one Adam step per 10k-step rollout: with 10 steps per rollout the
    actor collapsed to entropy 0.25 within 6 iterations on spread); 1000-M."""
    reward_scale: float = 0.1
    """Fixed scale c of the critic's target: every critic learns Q of c·r^i instead of r^i
    (:meth:`FDMARL.td_epoch`). One constant that every agent shares (a setting, never a
    statistic of an agent's own rewards) keeps the consensus exact: the average of critics for
    c·r^j is the critic for c·(1/N)Σ_j r^j. It brings spread's Q values (raw: −20 to −60 at
    γ = 0.95) to order 1, where the SGD step below runs unclipped; the actor's Adam step does not
    depend on the advantage's scale. 0.01-1."""
    critic_lr: float = 1e-2
    """Step size α_ω of the TD step (SGD, see :class:`SGD` for why not Adam); 1e-3-3e-2. With
    ``reward_scale`` 0.1 no spread run diverged at 1e-2 (without the scale 1e-2 turned NaN)."""
    critic_momentum: float = 0.9
    """Heavy-ball momentum μ of the TD step; 0-0.95."""
    critic_max_grad_norm: float = 10.0
    """The TD minibatch gradient is rescaled to at most this norm before the SGD step: a guard
    against a diverging first step, idle in normal operation. It must stay idle near the
    consensus point, where each agent's own TD error does not vanish (only the neighbourhood
    average of the gradients does): a clipped step is no longer linear in the gradient and moves
    the fixed point (see :class:`SGD`). With ``reward_scale`` 0.1 no TD step was clipped on the
    chain test; the earlier default 1.0 without a reward scale clipped every step on spread;
    1-100."""
    critic_epochs: int = 20
    """TD passes over the batch per iteration, each followed by a consensus step; 1-50. The
    critic must track the actor (Zhang et al.'s critic runs on the faster time scale): on
    spread N=3 with 5 passes the return fell from −276 to −337 in 60k steps, with 20 it did not
    (issue 13, session 22)."""
    critic_minibatch: int = 256
    """Samples per TD minibatch; 64-1024."""
    consensus_rounds: int = 1
    """Averaging rounds with the neighbours after each TD epoch; 1 is Zhang et al.'s diffusion
    step, more rounds bring the critics closer to their average."""
    hidden: tuple[int, ...] = (128, 128)
    """Hidden layers of the actor and the critic (SELU), as the MATRPO paper's networks."""
    episode_end: str = "timeout"
    """``timeout``: an episode end is a time limit and the TD target there bootstraps with
    γ·Q(o_t, a_t) (the batch holds only the observation after the reset, as in GAE's time-out
    bootstrap); ``terminal``: the target at an episode end is the reward alone."""
    message_timeout: float = 30.0
    """Seconds a consensus round waits for the neighbours' critics; a neighbour that does not
    answer in time (lost message, crashed process) is left out of that round."""

    def __post_init__(self) -> None:
        checks = {
            "gamma": 0.0 < self.gamma <= 1.0,
            "actor_lr": self.actor_lr > 0.0,
            "actor_epochs": self.actor_epochs >= 0,
            "actor_minibatch": self.actor_minibatch >= 1,
            "reward_scale": self.reward_scale > 0.0,
            "critic_lr": self.critic_lr > 0.0,
            "critic_momentum": 0.0 <= self.critic_momentum < 1.0,
            "critic_max_grad_norm": self.critic_max_grad_norm > 0.0,
            "critic_epochs": self.critic_epochs >= 1,
            "critic_minibatch": self.critic_minibatch >= 1,
            "consensus_rounds": self.consensus_rounds >= 0,
            "hidden": len(self.hidden) >= 1 and min(self.hidden) >= 1,
            "episode_end": self.episode_end in ("timeout", "terminal"),
            "message_timeout": self.message_timeout > 0.0,
        }
        for name, valid in checks.items():
            if not valid:
                raise ValueError(
                    f"FDMARLConfig.{name}={getattr(self, name)!r} is out of range; see the field "
                    f"docstring in p2pmarl/algos/fdmarl.py for sensible values"
                )


# ---------------------------------------------------------------------------------------------
# Pure math
# ---------------------------------------------------------------------------------------------


def td_targets(
    rewards: np.ndarray,
    q_values: np.ndarray,
    dones: np.ndarray,
    gamma: float,
    bootstrap_timeouts: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """SARSA TD(0) targets y_t = r_t + γ Q(o_{t+1}, a_{t+1}) over a (T, K) rollout, and the
    mask of rows that have one.

    ``q_values[t]`` is Q(o_t, a_t). At an episode end (``dones[t]``) the next row belongs to a
    new episode: the target is r_t + γ Q(o_t, a_t) with ``bootstrap_timeouts`` (a time limit,
    as in :func:`p2pmarl.algos.trpo.gae`), else r_t. The last row's next action is unknown
    unless it ended an episode, so it is masked out. Returns float32 targets and bool mask.
    """
    rewards64 = np.asarray(rewards, dtype=np.float64)
    q64 = np.asarray(q_values, dtype=np.float64)
    ends = np.asarray(dones, dtype=bool)
    next_q = np.zeros_like(q64)
    next_q[:-1] = q64[1:]
    next_q = np.where(ends, q64 if bootstrap_timeouts else 0.0, next_q)
    valid = np.ones(rewards64.shape, dtype=bool)
    valid[-1] = ends[-1]
    return (rewards64 + gamma * next_q).astype(np.float32), valid


def counterfactual_advantage(q_alternatives: Tensor, probabilities: Tensor, own: Tensor) -> Tensor:
    """A^i = Q(o, a) − Σ_b π^i(b|o) Q(o, (b, a^{-i})) (Zhang et al., 2018, the actor's advantage).

    ``q_alternatives`` (M, A_i) holds Q with the own action replaced by each b, the others'
    actions as taken; ``probabilities`` (M, A_i) is π^i(·|o); ``own`` (M,) the own actions.
    """
    taken = q_alternatives.gather(1, own.unsqueeze(1)).squeeze(1)
    return taken - (probabilities * q_alternatives).sum(dim=1)


# ---------------------------------------------------------------------------------------------
# Consensus step over the Peers protocol
# ---------------------------------------------------------------------------------------------


def consensus_step(
    peers: Peers, critic: np.ndarray, epoch: int, rounds: int, timeout: float
) -> tuple[np.ndarray, int]:
    """Step (3): ω^i ← Σ_j c(i, j) ω̃^j, ``rounds`` synchronous Metropolis–Hastings rounds of
    :func:`p2pmarl.algos.gossip.average` with the graph neighbours (c(i, j) = 1/(1 + max(d_i,
    d_j)); the degrees travel in the messages).

    Every round waits at most ``timeout`` s; a neighbour that is down or silent is left out of
    that round (its weight stays on the agent's own vector). Successive epochs alternate between
    two message kinds, so the critic of a neighbour already one epoch ahead is held for the next
    step instead of being mixed into this one (a neighbour cannot get two epochs ahead without
    the agent's own message of the epoch between). Returns the new float32 vector and the
    number of neighbour messages that were missing.
    """
    if rounds == 0:
        return critic, 0
    settings = GossipConfig(
        method="metropolis", rounds=rounds, round_timeout=timeout,
        kind=CRITIC_KINDS[epoch % len(CRITIC_KINDS)],
    )
    result = average(peers, critic, settings)
    if result.missing:
        logger.info("agent %d: consensus step %d missed %d neighbour messages", peers.agent_id,
                    epoch, result.missing)
    return result.estimate.astype(np.float32), result.missing


# ---------------------------------------------------------------------------------------------
# The agent
# ---------------------------------------------------------------------------------------------


class SGD:
    """ω ← ω − α·m with heavy-ball momentum m ← μ·m + ∇ (μ = 0: plain SGD).

    The critic's step must be *linear* in its gradient: averaging ω̃^j = ω^j − α m^j over the
    graph then moves the critics along the average gradient, whose zero is the TD solution for
    the team-average reward (Zhang et al.'s stochastic-approximation argument). Adam divides
    each agent's step by that agent's own second moment, which breaks the average: on the
    chain test (tests/test_fdmarl.py) Adam critics settle about 8 % off the known values.
    """

    def __init__(self, parameters: Sequence[Tensor], lr: float, momentum: float) -> None:
        self.parameters = list(parameters)
        self.lr = lr
        self.momentum = momentum
        self.velocities = [torch.zeros_like(p) for p in self.parameters]

    def zero_grad(self) -> None:
        for parameter in self.parameters:
            parameter.grad = None

    @torch.no_grad()
    def step(self) -> None:
        for parameter, velocity in zip(self.parameters, self.velocities, strict=True):
            if parameter.grad is not None:
                velocity.mul_(self.momentum).add_(parameter.grad)
                parameter.add_(velocity, alpha=-self.lr)

    def state_dict(self) -> dict[str, Any]:
        return {"lr": self.lr, "momentum": self.momentum,
                "velocities": [v.clone() for v in self.velocities]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.lr, self.momentum = state["lr"], state["momentum"]
        for mine, saved in zip(self.velocities, state["velocities"], strict=True):
            mine.copy_(saved)


class JointActionCritic(nn.Module):
    """Q(o^i, a; ω): own observation (zero-padded to the largest agent's size, so every agent's
    critic has the same parameter shapes and can be averaged) and the one-hot joint action."""

    def __init__(self, observation_size: int, action_sizes: Sequence[int],
                 hidden: Sequence[int]) -> None:
        super().__init__()
        self.observation_size = observation_size
        self.action_sizes = tuple(int(size) for size in action_sizes)
        self.offsets = np.concatenate([[0], np.cumsum(self.action_sizes)]).astype(np.int64)
        self.body = mlp(observation_size + int(sum(self.action_sizes)), 1, hidden)

    def encode(self, observations: Tensor, joint_actions: Tensor) -> Tensor:
        """[o padded, one-hot a^1, ..., one-hot a^N], (M, input size)."""
        padded = nn.functional.pad(observations, (0, self.observation_size - observations.shape[1]))
        one_hot = torch.zeros(observations.shape[0], int(self.offsets[-1]))
        columns = joint_actions + torch.as_tensor(self.offsets[:-1])
        one_hot.scatter_(1, columns, 1.0)
        return torch.cat([padded, one_hot], dim=1)

    def forward(self, observations: Tensor, joint_actions: Tensor) -> Tensor:
        """Q(o, a), (M,)."""
        return self.body(self.encode(observations, joint_actions)).squeeze(-1)

    def alternatives(self, observations: Tensor, joint_actions: Tensor, agent: int) -> Tensor:
        """Q(o, (b, a^{-i})) for every own action b of ``agent``, (M, A_i)."""
        rows = []
        for action in range(self.action_sizes[agent]):
            changed = joint_actions.clone()
            changed[:, agent] = action
            rows.append(self(observations, changed))
        return torch.stack(rows, dim=1)


class FDMARL(AgentAlgorithm):
    """One agent of the networked actor-critic; exchanges only critic parameters."""

    name = "fdmarl"
    message_kinds = MESSAGE_KINDS
    needs_connected_graph = True

    def __init__(
        self, agent_id: int, spec: EnvSpec, topology: Topology, config: FDMARLConfig, seed: int
    ) -> None:
        if not 0 <= agent_id < spec.n_agents:
            raise ValueError(
                f"agent_id {agent_id} is not an agent of {spec.name!r}, which has ids "
                f"0..{spec.n_agents - 1}"
            )
        if topology.n_agents != spec.n_agents:
            raise ValueError(
                f"the topology has {topology.n_agents} agents but {spec.name!r} has "
                f"{spec.n_agents}; pick a topology file with one node per agent"
            )
        self.agent_id = agent_id
        self.spec = spec
        self.config = config
        torch.manual_seed(seed)
        self.rng = np.random.default_rng(seed)
        own_size = spec.observation_sizes[agent_id]
        self.policy = CategoricalPolicy(own_size, (spec.action_sizes[agent_id],), config.hidden)
        self.actor_optimizer = Adam(self.policy.parameters(), lr=config.actor_lr)
        # Every agent draws the same initial critic from a seed that depends on nothing private,
        # the usual start of consensus methods (Zhang et al. initialise ω^i arbitrarily).
        with torch.random.fork_rng():
            torch.manual_seed(0)
            self.critic = JointActionCritic(
                max(spec.observation_sizes), spec.action_sizes, config.hidden
            )
        self.clipped_steps = 0
        self.critic_optimizer = SGD(
            list(self.critic.parameters()), config.critic_lr, config.critic_momentum
        )

    @classmethod
    def from_run_config(
        cls, agent_id: int, spec: EnvSpec, topology: Topology, config: RunConfig, seed: int
    ) -> FDMARL:
        """The defaults of :class:`FDMARLConfig` with the run's episode end, peer timeout and
        the ``fdmarl_*`` settings that are given."""
        given = {"reward_scale": config.fdmarl_reward_scale,
                 "actor_minibatch": config.fdmarl_actor_minibatch}
        settings = FDMARLConfig(
            episode_end=config.episode_end, message_timeout=config.admm_message_timeout,
            **{name: value for name, value in given.items() if value is not None},
        )
        return cls(agent_id, spec, topology, settings, seed)

    @property
    def draws_row_by_row(self) -> bool:
        """True: one Gumbel draw per :meth:`act` (:func:`sample_actions`)."""
        return True

    def act(self, observations: np.ndarray, deterministic: bool = False) -> np.ndarray:
        """Own actions a^i ~ π^i(·|o^i), int64 (K,)."""
        return sample_actions(self.policy, observations, 0, self.rng, deterministic)

    # -- learning ----------------------------------------------------------------------------

    def _tensors(self, batch: Batch) -> tuple[Tensor, Tensor]:
        if batch.agent_id != self.agent_id:
            raise ValueError(
                f"agent {self.agent_id} was given the batch of agent {batch.agent_id}; each "
                f"agent learns only from its own observations and rewards"
            )
        observations = torch.as_tensor(batch.observations.reshape(batch.n_samples, -1))
        joint_actions = torch.as_tensor(batch.joint_actions.reshape(batch.n_samples, -1))
        return observations.float(), joint_actions.long()

    def local_update(self, batch: Batch) -> dict[str, float]:
        """Actor step (1) with the counterfactual advantage of the current critic."""
        observations, joint_actions = self._tensors(batch)
        own = joint_actions[:, self.agent_id]
        with torch.no_grad():
            q_alternatives = self.critic.alternatives(observations, joint_actions, self.agent_id)
            probabilities = torch.softmax(self.policy(observations), dim=-1)
            advantages = counterfactual_advantage(q_alternatives, probabilities, own)
        for _ in range(self.config.actor_epochs):
            order = torch.as_tensor(self.rng.permutation(batch.n_samples))
            for start in range(0, batch.n_samples, self.config.actor_minibatch):
                index = order[start : start + self.config.actor_minibatch]
                log_prob = self.policy.log_prob(observations[index], own[index].unsqueeze(1))[0]
                loss = -(advantages[index] * log_prob).mean()
                self.actor_optimizer.zero_grad()
                loss.backward()
                self.actor_optimizer.step()
        with torch.no_grad():
            entropy = float(self.policy.entropy(observations)[0].mean())
        return {
            "train/advantage_std": float(advantages.std()),
            "train/entropy": entropy,
        }

    def td_epoch(self, batch: Batch, observations: Tensor, joint_actions: Tensor) -> float:
        """One TD(0) pass (step 2) on the scaled reward c·r^i with targets from the critic at the
        start of the pass; returns the mean squared TD error (in units of c·r) over the valid
        rows before the pass."""
        steps, copies = batch.rewards.shape
        with torch.no_grad():
            q_values = self.critic(observations, joint_actions).numpy().reshape(steps, copies)
        targets, valid = td_targets(
            self.config.reward_scale * batch.rewards, q_values, batch.dones, self.config.gamma,
            self.config.episode_end == "timeout",
        )
        rows = torch.as_tensor(np.flatnonzero(valid.reshape(-1)))
        target = torch.as_tensor(targets.reshape(-1))
        error = float(np.mean((targets - q_values)[valid] ** 2))
        order = rows[torch.as_tensor(self.rng.permutation(len(rows)))]
        for start in range(0, len(order), self.config.critic_minibatch):
            index = order[start : start + self.config.critic_minibatch]
            prediction = self.critic(observations[index], joint_actions[index])
            loss = torch.mean((prediction - target[index]) ** 2)
            self.critic_optimizer.zero_grad()
            loss.backward()
            clipped = nn.utils.clip_grad_norm_(
                self.critic.parameters(), self.config.critic_max_grad_norm
            )
            self.clipped_steps += int(float(clipped) > self.config.critic_max_grad_norm)
            self.critic_optimizer.step()
        return error

    def peer_phase(self, batch: Batch, peers: Peers) -> dict[str, float]:
        """Critic epochs (2), each followed by consensus rounds (3) with the neighbours."""
        observations, joint_actions = self._tensors(batch)
        missing_total = 0
        self.clipped_steps = 0
        errors = []
        parameters = list(self.critic.parameters())
        for epoch in range(self.config.critic_epochs):
            errors.append(self.td_epoch(batch, observations, joint_actions))
            own = flat_parameters(parameters).numpy()
            averaged, missing = consensus_step(
                peers, own, epoch, self.config.consensus_rounds, self.config.message_timeout
            )
            set_flat_parameters(parameters, torch.from_numpy(averaged))
            missing_total += missing
            if self.record is not None:
                self.record({"iteration": peers.iteration, "epoch": epoch, "missing": missing,
                             "change_rms": float(np.sqrt(np.mean((averaged - own) ** 2)))})
        return {
            "train/td_error": errors[0],
            "train/td_error_last": errors[-1],
            "train/critic_clipped_steps": float(self.clipped_steps),
            "consensus/missing": float(missing_total),
        }

    # -- checkpoints -------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Actor, critic, both optimizers, RNG states and the config (torch.save-able)."""
        return {
            "algorithm": self.name,
            "agent_id": self.agent_id,
            "config": dataclasses.asdict(self.config),
            "policy": self.policy.state_dict(),
            "critic": self.critic.state_dict(),
            "actor_optimizer": self.actor_optimizer.state_dict(),
            "critic_optimizer": self.critic_optimizer.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "numpy_rng": self.rng.bit_generator.state,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (for the same algorithm and agent)."""
        self.check_checkpoint_owner(state)
        self.policy.load_state_dict(state["policy"])
        self.critic.load_state_dict(state["critic"])
        self.actor_optimizer.load_state_dict(state["actor_optimizer"])
        self.critic_optimizer.load_state_dict(state["critic_optimizer"])
        torch.set_rng_state(state["torch_rng"])
        self.rng.bit_generator.state = state["numpy_rng"]
