"""Run configuration: one frozen dataclass, loadable from an experiment file, overridable by flags.

Precedence: dataclass defaults < experiment file (``launch/*.yaml``) < command-line flags. The
fully resolved config is written into every run directory as ``config.json``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """An experiment file or flag value that cannot be used; the message says which and why."""


@dataclass(frozen=True)
class RunConfig:
    """Everything that decides a run. Field names double as experiment-file keys and flags."""

    topology: str = "topologies/ring3.yaml"
    """Topology file; N (number of agents) comes from it."""
    env: str = "spread"
    """Environment: spread, spread-shared, treasure, tag, ipd, rps, ``MODULE:FACTORY`` (any
    PettingZoo Parallel env by import path) or ``mamujoco:SCENARIO:AGENT_CONF`` (multi-agent
    MuJoCo, extra ``p2pmarl[mujoco]``); docs/environments.md."""
    algo: str = "matrpo"
    """Algorithm variant: itrpo, matrpo, ctrpo, hatrpo, happo, dimapg, fdmarl, maddpg,
    genetic-maddpg, metamapg (``p2pmarl.algos.ALGORITHMS``)."""
    iterations: int = 5
    """Training iterations (rollout → local learning → peer phase)."""
    steps_per_iteration: int = 2000
    """M, environment transitions per iteration over all copies (paper: 10,000)."""
    n_envs: int = 8
    """K, environment copies stepped in parallel by the world; M is rounded up to a multiple."""
    episode_length: int = 100
    """Steps per episode (paper: 100)."""
    seed: int = 0
    """Root seed; per-process seeds are derived from it with numpy's SeedSequence."""
    out: str = "runs"
    """Directory under which the run directory is created."""
    checkpoint_every: int = 10
    """Save every agent's networks, optimizer and RNG state every this many iterations."""
    max_kl: float | None = None
    """Trust region δ/N per agent (None: the algorithm's default for N, paper Table III)."""
    beta: float | None = None
    """ADMM penalty β (None: paper Table III value for N)."""
    admm_iterations: int | None = None
    """Edge activations per training iteration (None: paper Table III value for N)."""
    admm_schedule: str = "async"
    """``async`` (edges activated by their endpoints) or ``seeded`` (replays Algorithm 1)."""
    linearized_log_ratio: bool = False
    """Exchange the paper's J·(θ−θ_old) instead of the true log ratio (eq. 22)."""
    theta_step: str = "kkt"
    """MATRPO θ step: ``kkt`` (exact trust-region minimizer of the linearized Lagrangian, appendix
    eqs. (47)-(51)) or ``boundary`` (always the trust-region boundary step of eq. (22))."""
    initial_dual: float = 0.0
    """Initial value of every edge dual y at the start of an ADMM phase."""
    advantage_normalization: str = "center"
    """``own`` (standardize with the agent's own statistics), ``center`` (subtract the own mean
    only) or ``none`` (raw advantages)."""
    episode_end: str = "timeout"
    """``timeout`` (GAE bootstraps with V where an episode hits its length) or ``terminal``."""
    admm_message_timeout: float = 30.0
    """Upper clamp (s) of the estimated wait for a neighbour's ADMM message (with
    ``admm_retransmissions`` 0: the one fixed wait before the activation is aborted)."""
    fisher_subsample: int = 5
    """Trust-region steps use every k-th sample in Fisher-vector products (1 = all; 5 as in OpenAI
    baselines' TRPO): conjugate gradient dominates the cost and memory of every θ step."""
    connect_timeout: float = 60.0
    """Seconds for all processes to start and reach their neighbours."""
    step_timeout: float = 30.0
    """Seconds the world waits for an agent's action before declaring it unresponsive."""
    phase_timeout: float = 900.0
    """Seconds the world waits for agents to finish learning between rollouts."""
    faults: str | None = None
    """Fault spec file (YAML/JSON) of injected link failures, see docs/faults.md (None: none)."""
    drop: float | None = None
    """Probability that any peer message is lost; replaces the fault spec's global ``drop``."""
    # issue 15: batched particle world
    env_backend: str = "batched"
    """How the world steps its K copies: ``batched`` (numpy arrays over all copies,
    p2pmarl/envs/particles, for spread, spread-shared, treasure and tag; other environments
    step copy by copy) or ``mpe2`` (K mpe2 envs, the reference it matches step for step)."""
    # issue 14: reliable peer exchanges over lossy links
    admm_retransmissions: int = 6
    """Retransmissions of an unanswered ADMM message before its activation is aborted; waits follow
    a per-(neighbour, kind) RFC 6298 estimate with ``admm_message_timeout`` as the upper clamp
    (0: the fixed protocol, every wait lasts ``admm_message_timeout``, nothing is re-sent)."""
    peer_max_copies: int = 4
    """Most identical copies of each reliable peer message on a link whose measured loss calls
    for them (``runtime/reliable.Redundancy``; 1: never duplicate)."""
    world_link: str = "unix"
    """Carrier of the world link in a run on one host: ``unix`` (a Unix-domain stream socket,
    ``runtime/unix_frames.py``) or ``zmq`` (ZeroMQ ipc://, as before issue 15's session 23).
    Runs over hosts or under Ray always use ZeroMQ over tcp:// (CURVE)."""
    # issue 16: PettingZoo envs by import path, TensorBoard
    env_kwargs: str | None = None
    """JSON object of keyword arguments for an ``env`` given by import path (``MODULE:FACTORY``);
    an experiment file may give a mapping instead."""
    agent_order: str | None = None
    """Comma-separated agent names of an import-path env in graph-node order (None: the env's
    ``possible_agents`` order)."""
    tensorboard: bool = False
    """Also write every agent's scalars to ``RUN_DIR/tensorboard/agent-I/`` as the run goes
    (needs the ``tensorboard`` extra: tensorboardX)."""
    # issue 9: HATRPO / HAPPO token phase and PPO step
    happo_order: str = "random"
    """HATRPO/HAPPO update order: ``random`` (uniform permutation per iteration) or ``ring``
    (random start and direction along a ring or path topology: every hand-over is one hop)."""
    token_timeout: float = 30.0
    """HATRPO/HAPPO: seconds allowed per earlier position in the order; agent i_m gives up waiting
    for its token m times this after entering the peer phase and updates with factor 1."""
    ppo_epochs: int = 5
    """HAPPO: passes over the batch per policy update (HARL MPE: 5)."""
    ppo_minibatches: int = 1
    """HAPPO: minibatches per pass (HARL MPE: 1)."""
    ppo_lr: float = 5e-4
    """HAPPO: Adam learning rate of the policy (HARL MPE: 5e-4)."""
    ppo_clip: float = 0.2
    """HAPPO: clip ε of the ratio (HARL MPE: 0.2)."""
    # issue 10: DiMA-PG (rollout phases, copy groups, gossip averaging)
    dimapg_inner_steps: int = 3
    """DiMA-PG: k, REINFORCE steps adapting θ_n from θ (eq. 10; paper: 3)."""
    dimapg_inner_lr: float = 0.01
    """DiMA-PG: α, step size of the inner steps (paper appendix C.2: 0.01)."""
    dimapg_outer: str = "trpo"
    """DiMA-PG outer step on θ: ``trpo`` (paper, cooperative navigation) or ``reinforce``."""
    dimapg_outer_lr: float = 0.05
    """DiMA-PG: ε of eq. 11 for the ``reinforce`` outer step (paper: 0.05)."""
    dimapg_first_order: bool = False
    """DiMA-PG: drop the second-order term through the adaptation (first-order MAML)."""
    dimapg_reward_clip: float = 1.0
    """DiMA-PG: clip rewards to [−c, c] (paper section 5.2.1: 1); 0 turns clipping off."""
    dimapg_adapted_steps: int | None = None
    """DiMA-PG: steps per copy of the ``adapted`` rollout phase (None: the rollout length)."""
    dimapg_gossip: str = "metropolis"
    """DiMA-PG gossip averaging: ``metropolis`` (synchronous rounds) or ``push_sum`` (lossy)."""
    dimapg_gossip_rounds: int | None = None
    """DiMA-PG: fixed gossip rounds per sum (None: stop by ``dimapg_gossip_tolerance``)."""
    dimapg_gossip_tolerance: float = 1e-4
    """DiMA-PG: gossip stops once every estimate moves by ≤ this·‖estimate‖ per round."""
    dimapg_gossip_max_rounds: int = 500
    """DiMA-PG: cap on gossip rounds when stopping by tolerance."""
    dimapg_gossip_timeout: float = 5.0
    """DiMA-PG: seconds a gossip round waits for a neighbour's message before going on."""
    dimapg_resync_tolerance: float = 1e-3
    """DiMA-PG: replica disagreement ‖θ_i − θ_j‖ above which replicas re-sync by averaging."""
    dimapg_no_score_term: bool = False
    """DiMA-PG: leave out eq. 14's second (score-function) term, keeping the adapted term."""
    dimapg_gamma: float = 0.9
    """DiMA-PG: discount of the REINFORCE returns (the paper does not give it)."""
    dimapg_score_estimator: str = "lvc"
    """DiMA-PG: eq. 14's second term as written (``score``) or ProMP's low-variance curvature
    estimate of it (``lvc``, default); see ``DiMAPGConfig.score_estimator``."""
    # issue 12: MADDPG and Distributed Genetic MADDPG
    maddpg_batch_size: int | None = None
    """MADDPG minibatch S per update (None: 256, the report's appendix)."""
    maddpg_buffer_size: int | None = None
    """MADDPG replay capacity in transitions (None: 5e5); saved in checkpoints (filled rows)."""
    maddpg_learning_starts: int | None = None
    """Transitions stored before MADDPG's first update (None: 2560)."""
    maddpg_train_every: int | None = None
    """Env transitions per MADDPG gradient update (None: 100, as the original code)."""
    maddpg_actor_lr: float | None = None
    """MADDPG actor Adam learning rate (None: 1e-3, the report's; the original code: 1e-2)."""
    maddpg_critic_lr: float | None = None
    """MADDPG critic Adam learning rate (None: 1e-4, the report's; the original code: 1e-2)."""
    critic_sync_every: int | None = None
    """Genetic MADDPG: env steps of a worker between best-critic gossips (None: 5000)."""
    # issue 13: FDMARL; None = the FDMARLConfig default
    fdmarl_reward_scale: float | None = None
    """FDMARL: fixed reward scale c of every agent's critic target, Q of c·r (None: 0.1)."""
    fdmarl_actor_minibatch: int | None = None
    """FDMARL: samples per actor Adam step (None: 10000, one step per 10k-step rollout)."""
    # issue 11: Meta-MAPG (metamapg) on ipd / rps; None = the paper's Table 3 (IPD) / 4 (RPS) value
    metamapg_trajectories: int | None = None
    """K trajectories per chain step, run as the K environment copies: must equal n_envs when
    given (paper: 64); None: n_envs."""
    metamapg_chain_length: int = 7
    """L: inner-loop updates per Markov chain; each iteration runs L + 1 rollout phases."""
    metamapg_variant: str = "metamapg"
    """Terms of eq. (6): metamapg (all), metapg (no peer learning), lola (no own learning),
    reinforce (current policy only)."""
    metamapg_peer_model: bool = False
    """Centralized meta-training: the peer sends its true parameters (NOT decentralized)."""
    metamapg_inner_lr: float | None = None
    """Meta-agent's inner-loop learning rate α^i, the start of the learned per-step rates
    (None: 0.1 IPD, 0.01 RPS)."""
    metamapg_learn_inner_lr: bool = True
    """Meta-learn the meta-agent's inner rate per chain step (section 5); False: fixed α^i."""
    metamapg_peer_lr: float | None = None
    """Peer's inner-loop learning rate α^{-i} (None: 1.0 IPD, 0.1 RPS)."""
    metamapg_outer_lr: float | None = None
    """Outer (meta) Adam learning rate on φ^i_0 (None: 1e-4 IPD, 1e-5 RPS)."""
    metamapg_critic_lr: float | None = None
    """Value-function Adam learning rate (None: 1.5e-4 IPD, 1.5e-5 RPS)."""
    metamapg_gamma: float | None = None
    """Discount γ (None: 0.96 IPD, 0.90 RPS)."""
    metamapg_lambda: float = 0.95
    """GAE λ of the meta-objective."""
    metamapg_personas: str = "in"
    """Peer persona split: in (appendix E) or out (out of distribution, IPD only)."""
    metamapg_meta_test: bool = False
    """Meta-test: no outer step, peers drawn from the held-out meta-test personas."""
    metamapg_init: str | None = None
    """Checkpoint (.pt) of a meta-training run's agent 0 to start the meta-agent from."""

    @property
    def rollout_length(self) -> int:
        """T: steps per environment copy per iteration, so that T·K ≥ M."""
        return -(-self.steps_per_iteration // self.n_envs)

    def validate(self) -> RunConfig:
        """Raise :class:`ConfigError` on values that cannot work; returns self."""
        positive = ("iterations", "steps_per_iteration", "n_envs", "episode_length")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be ≥ 1, got {getattr(self, name)}")
        if self.checkpoint_every < 1:
            raise ConfigError(f"checkpoint_every must be ≥ 1, got {self.checkpoint_every}")
        if self.admm_schedule not in ("async", "seeded"):
            raise ConfigError(
                f"admm_schedule must be 'async' or 'seeded', got {self.admm_schedule!r}"
            )
        for name in ("max_kl", "beta"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ConfigError(f"{name} must be > 0, got {value}")
        if self.advantage_normalization not in ("own", "center", "none"):
            raise ConfigError(
                f"advantage_normalization must be 'own', 'center' or 'none', got "
                f"{self.advantage_normalization!r}"
            )
        if self.theta_step not in ("kkt", "boundary"):
            raise ConfigError(f"theta_step must be 'kkt' or 'boundary', got {self.theta_step!r}")
        if self.episode_end not in ("timeout", "terminal"):
            raise ConfigError(
                f"episode_end must be 'timeout' or 'terminal', got {self.episode_end!r}"
            )
        if self.fisher_subsample < 1:
            raise ConfigError(f"fisher_subsample must be ≥ 1, got {self.fisher_subsample}")
        if not self.admm_message_timeout > 0:
            raise ConfigError("admm_message_timeout must be > 0 seconds")
        if self.admm_iterations is not None and self.admm_iterations < 1:
            raise ConfigError(f"admm_iterations must be ≥ 1, got {self.admm_iterations}")
        if self.drop is not None and not 0 <= self.drop < 1:
            raise ConfigError(f"drop must be a probability in [0, 1), got {self.drop}")
        # issue 15
        if self.env_backend not in ENV_BACKENDS:
            raise ConfigError(
                f"env_backend must be one of {', '.join(ENV_BACKENDS)}, got {self.env_backend!r}"
            )
        # issue 14
        if self.world_link not in WORLD_LINKS:
            raise ValueError(
                f"world_link must be one of {', '.join(WORLD_LINKS)}, got {self.world_link!r}"
            )
        if self.peer_max_copies < 1:
            raise ConfigError(
                f"peer_max_copies must be ≥ 1 (1: never duplicate), got {self.peer_max_copies}"
            )
        if self.admm_retransmissions < 0:
            raise ConfigError(
                f"admm_retransmissions must be ≥ 0 (0: no retransmission), got "
                f"{self.admm_retransmissions}"
            )
        if self.env_kwargs:
            from p2pmarl.envs.pettingzoo import parse_env_kwargs

            try:
                parse_env_kwargs(self.env_kwargs)
            except ValueError as error:
                raise ConfigError(str(error)) from None
        # issue 9: HATRPO / HAPPO
        if self.happo_order not in ("random", "ring"):
            raise ConfigError(f"happo_order must be 'random' or 'ring', got {self.happo_order!r}")
        if not self.token_timeout > 0:
            raise ConfigError(f"token_timeout must be > 0 seconds, got {self.token_timeout}")
        for name in ("ppo_epochs", "ppo_minibatches"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be ≥ 1, got {getattr(self, name)}")
        if not self.ppo_lr > 0:
            raise ConfigError(f"ppo_lr must be > 0, got {self.ppo_lr}")
        if not 0 < self.ppo_clip < 1:
            raise ConfigError(f"ppo_clip must be in (0, 1), got {self.ppo_clip}")
        # issue 10: DiMA-PG
        if self.dimapg_outer not in ("trpo", "reinforce"):
            raise ConfigError(
                f"dimapg_outer must be 'trpo' or 'reinforce', got {self.dimapg_outer!r}"
            )
        if self.dimapg_score_estimator not in ("score", "lvc"):
            raise ConfigError(
                f"dimapg_score_estimator must be 'score' or 'lvc', got "
                f"{self.dimapg_score_estimator!r}"
            )
        if self.dimapg_gossip not in ("metropolis", "push_sum"):
            raise ConfigError(
                f"dimapg_gossip must be 'metropolis' or 'push_sum', got {self.dimapg_gossip!r}"
            )
        for name in ("dimapg_inner_steps", "dimapg_reward_clip", "dimapg_inner_lr"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be ≥ 0, got {getattr(self, name)}")
        if not 0 < self.dimapg_gamma <= 1:
            raise ConfigError(f"dimapg_gamma must be in (0, 1], got {self.dimapg_gamma}")
        for name in ("dimapg_outer_lr", "dimapg_gossip_tolerance", "dimapg_gossip_timeout",
                     "dimapg_resync_tolerance"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("dimapg_adapted_steps", "dimapg_gossip_rounds"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be ≥ 1 (or unset), got {value}")
        if self.dimapg_gossip_max_rounds < 1:
            raise ConfigError(
                f"dimapg_gossip_max_rounds must be ≥ 1, got {self.dimapg_gossip_max_rounds}"
            )
        for name in ("maddpg_batch_size", "maddpg_buffer_size", "maddpg_learning_starts",
                     "maddpg_train_every", "critic_sync_every"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be ≥ 1, got {value}")
        for name in ("maddpg_actor_lr", "maddpg_critic_lr"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ConfigError(f"{name} must be > 0, got {value}")
        if self.fdmarl_reward_scale is not None and not self.fdmarl_reward_scale > 0:
            raise ConfigError(f"fdmarl_reward_scale must be > 0, got {self.fdmarl_reward_scale}")
        if self.fdmarl_actor_minibatch is not None and self.fdmarl_actor_minibatch < 1:
            raise ConfigError(
                f"fdmarl_actor_minibatch must be ≥ 1, got {self.fdmarl_actor_minibatch}"
            )
        # issue 11: Meta-MAPG
        if self.metamapg_trajectories is not None and self.metamapg_trajectories != self.n_envs:
            raise ConfigError(
                f"metamapg_trajectories={self.metamapg_trajectories} must equal n_envs="
                f"{self.n_envs}: the K trajectories are the K environment copies; pass "
                f"--n-envs {self.metamapg_trajectories}"
            )
        if self.metamapg_chain_length < 1:
            raise ConfigError(
                f"metamapg_chain_length must be ≥ 1, got {self.metamapg_chain_length}"
            )
        if self.metamapg_variant not in ("metamapg", "metapg", "lola", "reinforce"):
            raise ConfigError(
                f"metamapg_variant must be metamapg, metapg, lola or reinforce, got "
                f"{self.metamapg_variant!r}"
            )
        if self.metamapg_personas not in ("in", "out"):
            raise ConfigError(
                f"metamapg_personas must be 'in' or 'out', got {self.metamapg_personas!r}"
            )
        for name in ("metamapg_inner_lr", "metamapg_peer_lr", "metamapg_outer_lr",
                     "metamapg_critic_lr", "metamapg_gamma"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ConfigError(f"{name} must be > 0, got {value}")
        if not 0 <= self.metamapg_lambda <= 1:
            raise ConfigError(f"metamapg_lambda must be in [0, 1], got {self.metamapg_lambda}")
        if self.metamapg_init is not None and not Path(self.metamapg_init).is_file():
            raise ConfigError(
                f"metamapg_init={self.metamapg_init!r} is not a file; pass a checkpoint such as "
                f"runs/<run>/agents/0/checkpoints/iter-000010.pt"
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


FIELD_NAMES = tuple(f.name for f in fields(RunConfig))
ENV_BACKENDS = ("batched", "mpe2")
"""Values of :attr:`RunConfig.env_backend` (issue 15)."""
WORLD_LINKS = ("unix", "zmq")
"""Values of :attr:`RunConfig.world_link` (issue 15)."""


def _coerce(name: str, value: Any, source: str) -> Any:
    """Check an experiment-file value against the field's type."""
    field = next(f for f in fields(RunConfig) if f.name == name)
    kind = str(field.type)
    if value is None and "None" in kind:
        return None
    if name == "env_kwargs" and isinstance(value, dict):  # issue 16: a mapping in YAML
        return json.dumps(value)
    expected = (
        bool if "bool" in kind else float if "float" in kind else int if "int" in kind else str
    )
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise ConfigError(
            f"{source}: {name} must be {expected.__name__}, got {value!r} "
            f"({type(value).__name__})"
        )
    return value


def load_experiment(path: str | Path) -> dict[str, Any]:
    """Read an experiment YAML/JSON file into checked field values (dashes or underscores)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise ConfigError(f"cannot read experiment file {path}: {error.strerror}") from error
    try:
        data = yaml.safe_load(text) if path.suffix != ".json" else json.loads(text)
    except (yaml.YAMLError, json.JSONDecodeError) as error:
        raise ConfigError(f"experiment file {path} is not valid YAML/JSON: {error}") from error
    if data is None:
        raise ConfigError(f"experiment file {path} is empty")
    if not isinstance(data, dict):
        raise ConfigError(f"experiment file {path} must be a mapping of settings")
    values: dict[str, Any] = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in FIELD_NAMES:
            raise ConfigError(
                f"experiment file {path}: unknown setting {key!r}; known: {', '.join(FIELD_NAMES)}"
            )
        values[name] = _coerce(name, value, str(path))
    for name in ("topology", "faults"):  # paths relative to the experiment file also work
        if isinstance(values.get(name), str) and not Path(values[name]).is_absolute():
            candidate = path.parent / values[name]
            if not Path(values[name]).exists() and candidate.exists():
                values[name] = str(candidate)
    return values


def resolve(file_values: dict[str, Any], overrides: dict[str, Any]) -> RunConfig:
    """Defaults < experiment file < flags (``None`` flags mean "not given")."""
    merged = dict(file_values)
    merged.update({k: v for k, v in overrides.items() if v is not None})
    return RunConfig(**merged).validate()


def read_run_config(run_dir: str | Path) -> RunConfig:
    """The resolved config saved in a run directory."""
    path = Path(run_dir) / "config.json"
    try:
        data = json.loads(path.read_text())["config"]
    except (OSError, KeyError, json.JSONDecodeError) as error:
        raise ConfigError(f"{path} is missing or not a p2pmarl run config: {error}") from error
    return RunConfig(**data).validate()
