"""Meta-MAPG (Kim et al.): a meta-agent that accounts for its own and its peer's learning
across a Markov chain of joint policy updates, with the baselines Meta-PG, a no-own-learning
(LOLA-DiCE-like) ablation and REINFORCE as settings, on a 2-node topology.

One training iteration is one Markov chain (Algorithm 1 lines 4-8 for one sampled persona):
L + 1 rollout phases ``chain0 … chainL`` of H steps in K copies (K trajectories per chain step);
after every phase but the last both agents take their inner-loop step of eq. (4). Agent 0 is
the meta-agent (:class:`MetaAgent`); agent 1 is the peer (:class:`PersonaPeer`), a tabular
persona drawn from the population of appendix E that learns with the policy gradient and a
linear feature baseline. After the chain the meta-agent rebuilds the chain's inner steps as a
differentiable graph (:func:`p2pmarl.algos.dice.meta_objective`) and takes one outer step on
eq. (6), then starts the next chain from its meta-learned φ^i_0.

Decentralized by default (appendix B, Algorithms 3-4): the meta-agent never receives the peer's
parameters; it fits a tabular opponent model to the peer's actions of each chain step and
differentiates through the chain of the modelled peer's inner steps (the model of each step
gives its value). The peer's rewards, which the peer-learning
term needs, are computed from the observed joint actions and the game's public payoff table.
Nothing is sent over the graph. ``peer_model`` (``--metamapg-peer-model``) is the paper's
centralized meta-training: the peer sends its initial persona logits once per chain
(``peer_params``), and the run is labelled not decentralized.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from p2pmarl.algos.adam import Adam
from p2pmarl.algos.base import AgentAlgorithm, Batch, Peers, RolloutPhase
from p2pmarl.algos.dice import (
    ChainStep,
    MetaGradientTerms,
    action_log_probs,
    dice_objective,
    discounted_returns,
    gae_advantages,
    inner_advantages,
    inner_step,
    meta_objective,
    opponent_model,
    tabular_policy,
)
from p2pmarl.algos.personas import PersonaSet, make_personas, persona_index, test_order
from p2pmarl.config import ConfigError
from p2pmarl.envs.base import EnvSpec
from p2pmarl.envs.matrix import payoff

if TYPE_CHECKING:
    from p2pmarl.config import RunConfig
    from p2pmarl.topology import Topology

logger = logging.getLogger(__name__)

VARIANTS: dict[str, MetaGradientTerms] = {
    "metamapg": MetaGradientTerms(own_learning=True, peer_learning=True),
    "metapg": MetaGradientTerms(own_learning=True, peer_learning=False),
    "lola": MetaGradientTerms(own_learning=False, peer_learning=True),
    "reinforce": MetaGradientTerms(own_learning=False, peer_learning=False),
}
"""``--metamapg-variant`` → the terms of eq. (6) kept: Meta-MAPG (all), Meta-PG (eq. 5, no peer
learning), ``lola`` (no own learning: the paper's ablation, which it calls similar to LOLA-DiCE;
not the LOLA-DiCE code), ``reinforce`` (current-policy term only at every chain step)."""

TABLE_DEFAULTS = {
    "ipd": {"inner_lr": 0.1, "peer_lr": 1.0, "outer_lr": 1e-4, "critic_lr": 1.5e-4,
            "gamma": 0.96},
    "rps": {"inner_lr": 0.01, "peer_lr": 0.1, "outer_lr": 1e-5, "critic_lr": 1.5e-5,
            "gamma": 0.90},
}
"""Tables 3 (IPD) and 4 (RPS). The tables list two inner learning rates ("1.0, 0.1" for IPD,
"0.1, 0.01" for RPS): the first is the tabular peer's α^{-i}, the second the meta-agent's
α^i — the authors' released code steps the tabular peer's logits with 1.0 and starts the
meta-agent's (learned) inner rate at 0.1 (IPD) and 0.01 (RPS). (That code steps the RPS peer
with 1.0 too; we keep Table 4's 0.1.)"""
PEER_PARAMS = "peer_params"
CENTRALIZED_LABEL = "centralized meta-training (NOT decentralized: reads the peer's parameters)"
DECENTRALIZED_LABEL = "decentralized (opponent model from observed actions; sends nothing)"


@dataclass(frozen=True)
class MetaMAPGConfig:
    """Settings of the meta-agent and its peer (Tables 3-4, appendices B, C, E)."""

    game: str = "ipd"
    """Matrix game, ``ipd`` or ``rps`` (the env name)."""
    chain_length: int = 7
    """L: inner-loop updates per chain; the chain has L + 1 joint policies φ_0..φ_L."""
    variant: str = "metamapg"
    """Terms of eq. (6) kept: ``metamapg``, ``metapg``, ``lola``, ``reinforce``."""
    peer_model: bool = False
    """True: centralized meta-training, the peer sends its true φ^{-i}_0 (not decentralized)."""
    inner_lr: float = 0.1
    """α^i of the meta-agent's inner-loop step, eq. (4) (its start when it is learned)."""
    learn_inner_lr: bool = True
    """Meta-learn one inner rate α^i_ℓ = exp(ρ_ℓ) per chain step with φ^i_0 (section 5: "we also
    learn dynamic inner-loop learning rates", after Al-Shedivat et al.); the exp keeps it > 0."""
    peer_lr: float = 1.0
    """α^{-i} of the peer's inner-loop step (the peer's own and the meta-agent's model of it)."""
    outer_lr: float = 1e-4
    """β: Adam learning rate of the outer (meta) step on φ^i_0."""
    critic_lr: float = 1.5e-4
    """Adam learning rate of the value function used for GAE in the meta-objective."""
    gamma: float = 0.96
    """γ of returns and advantages (inner and outer)."""
    lam: float = 0.95
    """GAE λ of the meta-objective's advantages."""
    hidden: int = 64
    """Width of the meta-agent's policy and value MLPs (the paper's 64-unit layers)."""
    value_epochs: int = 5
    """Full-batch Adam steps of the value fit per chain."""
    personas: str = "in"
    """Persona split: ``in`` (appendix E) or ``out`` (Figure 3c analogue, IPD only)."""
    meta_test: bool = False
    """True: no outer step; the peer plays the meta-test personas (Algorithm 2)."""
    init: str | None = None
    """Checkpoint of a meta-training run's agent 0 to start φ^i_0 (and V) from."""


def settings_from_run_config(config: RunConfig, spec: EnvSpec) -> MetaMAPGConfig:
    """The meta-agent's settings: the run's ``metamapg_*`` fields, Table 3/4 where unset."""
    if spec.name not in TABLE_DEFAULTS:
        raise ConfigError(f"metamapg runs on the matrix games ipd or rps, not env={spec.name!r}")
    table = TABLE_DEFAULTS[spec.name]

    def pick(name: str) -> float:
        value = getattr(config, f"metamapg_{name}")
        return table[name] if value is None else value

    return MetaMAPGConfig(
        game=spec.name, chain_length=config.metamapg_chain_length,
        variant=config.metamapg_variant, peer_model=config.metamapg_peer_model,
        inner_lr=pick("inner_lr"), peer_lr=pick("peer_lr"), outer_lr=pick("outer_lr"),
        critic_lr=pick("critic_lr"), gamma=pick("gamma"), lam=config.metamapg_lambda,
        learn_inner_lr=config.metamapg_learn_inner_lr,
        personas=config.metamapg_personas, meta_test=config.metamapg_meta_test,
        init=config.metamapg_init,
    )


def mlp_policy_init(n_states: int, n_actions: int, hidden: int, seed: int) -> list[Tensor]:
    """Parameters [W1, b1, W2, b2] of the meta-agent's MLP policy on the one-hot state."""
    generator = torch.Generator().manual_seed(seed)
    w1 = torch.randn(n_states, hidden, generator=generator) / np.sqrt(n_states)
    w2 = torch.randn(hidden, n_actions, generator=generator) * 0.01
    return [w1, torch.zeros(hidden), w2, torch.zeros(n_actions)]


def mlp_policy(params: Sequence[Tensor], states: Tensor) -> Tensor:
    """log π^i(·|s) of a one-hidden-layer tanh MLP; W1[s] is W1ᵀ·onehot(s)."""
    w1, b1, w2, b2 = params
    hidden = torch.tanh(w1[states] + b1)
    return torch.log_softmax(hidden @ w2 + b2, dim=-1)


def states_of(observations: np.ndarray) -> np.ndarray:
    """State index s_t from one-hot observations (..., S)."""
    return observations.argmax(axis=-1).astype(np.int64)


def sample(log_probs: Tensor, generator: torch.Generator) -> np.ndarray:
    return torch.multinomial(log_probs.exp(), 1, generator=generator)[:, 0].numpy()


def action_probabilities(log_probs: Tensor) -> list[list[float]]:
    """π(·|s) per state as nested lists (for the chain-dynamics records)."""
    return np.round(log_probs.detach().exp().numpy(), 5).tolist()


class MetaMAPG(AgentAlgorithm):
    """Registry entry: agent 0 is the meta-agent, agent 1 the persona peer."""

    name: ClassVar[str] = "metamapg"
    message_kinds: ClassVar[frozenset[str]] = frozenset({PEER_PARAMS})
    """Only the centralized form (``--metamapg-peer-model``) sends anything."""

    @classmethod
    def from_run_config(
        cls, agent_id: int, spec: EnvSpec, topology: Topology, config: RunConfig, seed: int
    ) -> AgentAlgorithm:
        if topology.n_agents != 2 or tuple(topology.edges) != ((0, 1),):
            raise ConfigError(
                f"metamapg needs a 2-node topology with the edge 0-1 (meta-agent 0, peer 1), got "
                f"{topology.source}; use --topology topologies/pair.yaml"
            )
        settings = settings_from_run_config(config, spec)
        personas = make_personas(settings.game, config.seed, settings.personas)
        if agent_id == 0:
            return MetaAgent(spec, settings, seed)
        return PersonaPeer(spec, settings, personas, config.seed, seed)

    @classmethod
    def rollout_phases(cls, config: RunConfig, n_agents: int) -> tuple[RolloutPhase, ...]:
        """L + 1 phases of one episode (H steps) each: the chain's K trajectories τ_φℓ."""
        return tuple(
            RolloutPhase(f"chain{index}", config.episode_length)
            for index in range(config.metamapg_chain_length + 1)
        )

    def act(self, observations: np.ndarray, deterministic: bool = False) -> np.ndarray:
        raise NotImplementedError  # pragma: no cover - the registry builds the two roles

    def local_update(self, batch: Batch) -> dict[str, float]:
        raise NotImplementedError  # pragma: no cover

    def state_dict(self) -> dict[str, Any]:
        raise NotImplementedError  # pragma: no cover

    def load_state_dict(self, state: dict[str, Any]) -> None:
        raise NotImplementedError  # pragma: no cover


class PersonaPeer(MetaMAPG):
    """Agent j: a tabular persona φ^{-i}_0 ~ p(φ^{-i}_0) per chain, learning with eq. (4)."""

    def __init__(
        self, spec: EnvSpec, settings: MetaMAPGConfig, personas: PersonaSet, root_seed: int,
        seed: int,
    ) -> None:
        self.spec = spec
        self.settings = settings
        self.personas = personas
        self.pool = personas.split("test" if settings.meta_test else "train")
        self.root_seed = root_seed
        self.generator = torch.Generator().manual_seed(seed)
        self.persona = -1
        self.initial_logits = torch.zeros(spec.observation_sizes[1], spec.action_sizes[1])
        self.logits = self.initial_logits
        self.chain_step = 0
        self.iteration = 0
        self.saved_personas = False

    def _start_chain(self) -> None:
        if self.settings.meta_test:
            order = test_order(self.root_seed, len(self.pool))
            self.persona = int(order[self.iteration % len(self.pool)])
        else:
            self.persona = persona_index(self.root_seed, self.iteration, len(self.pool))
        self.initial_logits = torch.log(torch.tensor(self.pool[self.persona], dtype=torch.float32))
        self.logits = self.initial_logits.clone()
        self.chain_step = 0

    def act(self, observations: np.ndarray, deterministic: bool = False) -> np.ndarray:
        if self.persona < 0:
            self._start_chain()
        if not self.saved_personas and self.record is not None:
            self.record({"event": "personas", "distribution": self.settings.personas,
                         **self.personas.to_dict()})
            self.saved_personas = True
        states = torch.as_tensor(states_of(observations))
        return sample(torch.log_softmax(self.logits[states], dim=-1), self.generator)

    def phase_update(self, batch: Batch) -> dict[str, Any]:
        """The peer's inner step of eq. (4): policy gradient with the linear feature baseline."""
        stats = self._chain_record(batch)
        states = torch.as_tensor(states_of(batch.observations))
        own_actions = torch.as_tensor(batch.joint_actions[:, :, 1])
        advantages = torch.as_tensor(
            inner_advantages(batch.observations, batch.rewards, self.settings.gamma)
        )
        weights = torch.full((states.shape[1],), 1.0 / states.shape[1])
        logits = self.logits.clone().requires_grad_(True)
        log_probs = action_log_probs(tabular_policy([logits], states), own_actions)
        (self.logits,) = inner_step(
            [logits], dice_objective(log_probs, advantages, weights), self.settings.peer_lr,
            create_graph=False,
        )
        self.logits = self.logits.detach()
        self.chain_step += 1
        return stats

    def _chain_record(self, batch: Batch) -> dict[str, Any]:
        probabilities = action_probabilities(torch.log_softmax(self.logits, dim=-1))
        return {f"chain/{self.chain_step}/peer_action_probs": probabilities,
                f"chain/{self.chain_step}/peer_mean_reward": float(batch.rewards.mean())}

    def local_update(self, batch: Batch) -> dict[str, Any]:
        """End of the chain (φ_L's trajectories): record, and draw the next persona."""
        stats = self._chain_record(batch)
        stats["metamapg/persona"] = self.persona
        stats["metamapg/persona_split"] = "test" if self.settings.meta_test else "train"
        self.sent_logits = self.initial_logits
        self.iteration += 1
        self.persona = -1
        return stats

    def peer_phase(self, batch: Batch, peers: Peers) -> dict[str, float]:
        if self.settings.peer_model and not self.settings.meta_test:
            peers.send(0, PEER_PARAMS, {"logits": self.sent_logits.numpy().astype(np.float32)})
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {"iteration": self.iteration, "generator": self.generator.get_state(),
                "personas": self.personas.to_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.iteration = int(state["iteration"])
        self.generator.set_state(state["generator"])


class MetaAgent(MetaMAPG):
    """Agent i: meta-learns φ^i_0 with eq. (6) over the chains it plays."""

    def __init__(self, spec: EnvSpec, settings: MetaMAPGConfig, seed: int) -> None:
        if settings.variant not in VARIANTS:
            raise ConfigError(
                f"metamapg_variant must be one of {', '.join(VARIANTS)}, got {settings.variant!r}"
            )
        torch.manual_seed(seed)
        self.spec = spec
        self.settings = settings
        self.terms = VARIANTS[settings.variant]
        self.n_states, self.n_actions = spec.observation_sizes[0], spec.action_sizes[0]
        self.payoff = payoff(settings.game)
        self.generator = torch.Generator().manual_seed(seed)
        self.initial = [
            p.requires_grad_(True)
            for p in mlp_policy_init(self.n_states, self.n_actions, settings.hidden, seed)
        ]
        self.value = torch.nn.Sequential(
            torch.nn.Linear(self.n_states, settings.hidden), torch.nn.Tanh(),
            torch.nn.Linear(settings.hidden, 1),
        )
        self.log_inner_lrs = torch.full((settings.chain_length,), float(np.log(settings.inner_lr)),
                                        requires_grad=settings.learn_inner_lr)
        meta_parameters = self.initial + ([self.log_inner_lrs] if settings.learn_inner_lr else [])
        self.actor_optimizer = Adam(meta_parameters, lr=settings.outer_lr)
        self.critic_optimizer = Adam(list(self.value.parameters()), lr=settings.critic_lr)
        if settings.init:
            self.load_state_dict(torch.load(settings.init, weights_only=False)["algorithm"])
        self.current = [p.detach().clone() for p in self.initial]
        self.chain: list[Batch] = []
        self.acting_path: list[list[Tensor]] = [self.current]
        form = CENTRALIZED_LABEL if settings.peer_model else DECENTRALIZED_LABEL
        logger.info("metamapg meta-agent: variant %s, %s", settings.variant, form)

    def act(self, observations: np.ndarray, deterministic: bool = False) -> np.ndarray:
        states = torch.as_tensor(states_of(observations))
        with torch.no_grad():
            return sample(mlp_policy(self.current, states), self.generator)

    def inner_rates(self) -> list[Tensor]:
        """α^i_ℓ, ℓ = 0..L−1: the meta-agent's inner rate after τ_φℓ (learned or fixed)."""
        return list(torch.exp(self.log_inner_lrs).unbind())

    def phase_update(self, batch: Batch) -> dict[str, Any]:
        """The meta-agent's inner step of eq. (4) on τ_φℓ (values only; the outer step rebuilds
        it as a graph)."""
        stats = self._chain_record(batch)
        rate = float(self.inner_rates()[len(self.chain)].detach())
        self.chain.append(batch)
        states = torch.as_tensor(states_of(batch.observations))
        params = [p.clone().requires_grad_(True) for p in self.current]
        log_probs = action_log_probs(mlp_policy(params, states),
                                     torch.as_tensor(batch.joint_actions[:, :, 0]))
        advantages = torch.as_tensor(
            inner_advantages(batch.observations, batch.rewards, self.settings.gamma)
        )
        weights = torch.full((states.shape[1],), 1.0 / states.shape[1])
        self.current = [p.detach() for p in inner_step(
            params, dice_objective(log_probs, advantages, weights), rate, create_graph=False,
        )]
        self.acting_path.append(self.current)
        return stats

    def _chain_record(self, batch: Batch) -> dict[str, Any]:
        index = len(self.chain)
        probabilities = action_probabilities(mlp_policy(self.current,
                                                         torch.arange(self.n_states)))
        return {f"chain/{index}/own_action_probs": probabilities,
                f"chain/{index}/own_mean_reward": float(batch.rewards.mean())}

    def local_update(self, batch: Batch) -> dict[str, Any]:
        stats = self._chain_record(batch)
        self.chain.append(batch)
        rewards = [float(b.rewards.mean()) for b in self.chain]
        stats.update({
            "metamapg/chain_rewards": rewards,
            "metamapg/auc": float(sum(rewards[1:])),
            "metamapg/inner_lrs": [round(float(rate.detach()), 6) for rate in self.inner_rates()],
            "metamapg/variant": self.settings.variant,
            "metamapg/form": CENTRALIZED_LABEL if self.settings.peer_model
            else DECENTRALIZED_LABEL,
            "metamapg/meta_test": self.settings.meta_test,
        })
        if not self.settings.peer_model or self.settings.meta_test:
            stats.update(self._finish_chain(None))
        return stats

    def peer_phase(self, batch: Batch, peers: Peers) -> dict[str, float]:
        """Centralized form only: the peer's true φ^{-i}_0 of this chain, then the outer step."""
        if not self.settings.peer_model or self.settings.meta_test:
            return {}
        message = peers.receive(timeout=60.0, kinds=frozenset({PEER_PARAMS}))
        if message is None:
            raise ConfigError("metamapg (centralized): no peer_params from agent 1 within 60 s")
        logits = np.asarray(message.body["logits"], dtype=np.float32)
        if logits.shape != (self.spec.observation_sizes[1], self.spec.action_sizes[1]):
            raise ConfigError(f"peer_params: logits of shape {logits.shape}, expected "
                              f"({self.spec.observation_sizes[1]}, {self.spec.action_sizes[1]})")
        return self._finish_chain(torch.as_tensor(logits))

    def _finish_chain(self, peer_logits: Tensor | None) -> dict[str, float]:
        stats: dict[str, float] = {}
        if not self.settings.meta_test:
            stats.update(self._fit_value())
            stats.update(self._outer_step(peer_logits))
        self.chain = []
        self.current = [p.detach().clone() for p in self.initial]
        self.acting_path = [self.current]
        return stats

    def chain_steps(self) -> list[ChainStep]:
        """The chain's batches as :class:`ChainStep` (peer rewards from the public payoffs)."""
        steps = []
        for batch in self.chain:
            own_actions, peer_actions = batch.joint_actions[:, :, 0], batch.joint_actions[:, :, 1]
            peer_rewards = self.payoff[own_actions, peer_actions, 1]
            with torch.no_grad():
                values = self.value(torch.as_tensor(batch.observations))[..., 0].numpy()
            K = own_actions.shape[1]
            steps.append(ChainStep(
                states=torch.as_tensor(states_of(batch.observations)),
                own_actions=torch.as_tensor(own_actions),
                peer_actions=torch.as_tensor(peer_actions),
                own_inner_advantages=torch.as_tensor(
                    inner_advantages(batch.observations, batch.rewards, self.settings.gamma)),
                peer_inner_advantages=torch.as_tensor(
                    inner_advantages(batch.observations, peer_rewards, self.settings.gamma)),
                outer_advantages=torch.as_tensor(gae_advantages(
                    batch.rewards, values, self.settings.gamma, self.settings.lam,
                    discount_weighted=False)),
                weights=torch.full((K,), 1.0 / K),
            ))
        return steps

    def peer_bases(self, peer_logits: Tensor | None) -> list[list[Tensor] | None]:
        """Decentralized: the opponent model of every chain step (Algorithm 3 line 8);
        centralized: the peer's true φ^{-i}_0, then the chain's own inner steps."""
        if peer_logits is not None:
            return [[peer_logits]] + [None] * (len(self.chain) - 1)
        n_states, n_actions = self.spec.observation_sizes[1], self.spec.action_sizes[1]
        return [[torch.as_tensor(opponent_model(states_of(b.observations),
                                                b.joint_actions[:, :, 1], n_states, n_actions))]
                for b in self.chain]

    def _outer_step(self, peer_logits: Tensor | None) -> dict[str, float]:
        """One Adam step of β on −(Σ_ℓ DiCE(τ_φℓ)): the gradient of eq. (6)."""
        objective, path, _ = meta_objective(
            mlp_policy, self.initial, tabular_policy, self.peer_bases(peer_logits),
            self.chain_steps(), self.inner_rates(), self.settings.peer_lr, self.terms,
        )
        drift = max(float((a - b.detach()).abs().max())
                    for acted, rebuilt in zip(self.acting_path, path, strict=True)
                    for a, b in zip(acted, rebuilt, strict=True))
        self.actor_optimizer.zero_grad()
        (-objective).backward()
        norm = float(torch.sqrt(sum((p.grad**2).sum() for p in self.initial)))
        self.actor_optimizer.step()
        return {"metamapg/grad_norm": norm,
                "metamapg/rebuild_drift": drift}

    def _fit_value(self) -> dict[str, float]:
        observations = torch.as_tensor(np.stack([b.observations for b in self.chain]))
        returns = torch.as_tensor(np.stack([
            discounted_returns(b.rewards, self.settings.gamma) for b in self.chain
        ]), dtype=torch.float32)
        loss = torch.zeros(())
        for _ in range(self.settings.value_epochs):
            loss = ((self.value(observations)[..., 0] - returns) ** 2).mean()
            self.critic_optimizer.zero_grad()
            loss.backward()
            self.critic_optimizer.step()
        return {"metamapg/value_loss": float(loss.detach())}

    def state_dict(self) -> dict[str, Any]:
        return {
            "initial": [p.detach().clone() for p in self.initial],
            "log_inner_lrs": self.log_inner_lrs.detach().clone(),
            "value": self.value.state_dict(),
            "actor_optimizer": self.actor_optimizer.state_dict(),
            "critic_optimizer": self.critic_optimizer.state_dict(),
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            for p, saved in zip(self.initial, state["initial"], strict=True):
                p.copy_(saved)
            if "log_inner_lrs" in state:
                self.log_inner_lrs.copy_(state["log_inner_lrs"])
        self.value.load_state_dict(state["value"])
        if not self.settings.meta_test:
            self.actor_optimizer.load_state_dict(state["actor_optimizer"])
            self.critic_optimizer.load_state_dict(state["critic_optimizer"])
        self.current = [p.detach().clone() for p in self.initial]
