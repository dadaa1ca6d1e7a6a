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
    """Environment name: spread, spread-shared, treasure, tag."""
    algo: str = "matrpo"
    """Algorithm variant: itrpo, matrpo, ctrpo."""
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
    """Seconds an agent waits for one neighbour's ADMM message before aborting the activation."""
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
    """Meta-agent's inner-loop learning rate α^i (None: 1.0 IPD, 0.1 RPS)."""
    metamapg_peer_lr: float | None = None
    """Peer's inner-loop learning rate α^{-i} (None: 0.1 IPD, 0.01 RPS)."""
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


def _coerce(name: str, value: Any, source: str) -> Any:
    """Check an experiment-file value against the field's type."""
    field = next(f for f in fields(RunConfig) if f.name == name)
    kind = str(field.type)
    if value is None and "None" in kind:
        return None
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
