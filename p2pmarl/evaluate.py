"""Evaluate a trained run: replay its latest checkpoints with deterministic actions.

:func:`evaluate` rebuilds every learner of ``RUN_DIR`` from its latest checkpoint (the last
iteration every learner saved), plays ``episodes`` episodes of the run's environment in this one
process, each agent acting on its own observation with the mode of its policy, and returns the
mean own return of every agent and the team return (their sum, as in ``summary.json``). With
``gif`` the first episode is also rendered (mpe2's ``rgb_array`` mode, no display needed) to an
animated GIF. ``p2pmarl evaluate`` is the command-line front end; see docs/inspect.md.

This is an offline check of the learned policies, not part of training: nothing is sent over a
network and the run directory is only read.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from p2pmarl.algos import make_algorithm
from p2pmarl.algos.base import AgentAlgorithm
from p2pmarl.envs import make_env
from p2pmarl.envs.base import MultiAgentEnv
from p2pmarl.inspection.data import RunDirectoryError, RunRecords, load_run
from p2pmarl.runtime.rundir import RunDir, process_seeds

GIF_SCALE = 0.5
"""GIF frames are mpe2's 700×700 pictures scaled by this factor."""
GIF_FRAME_MS = 80
"""Milliseconds each GIF frame is shown."""

Policy = Callable[[list[np.ndarray]], list[float]]
"""Joint observation (one array per agent) → one action per agent."""


@dataclass(frozen=True)
class LoadedRun:
    """A run's learners restored from the checkpoint of iteration ``iteration``."""

    records: RunRecords
    algorithms: dict[int, AgentAlgorithm]
    iteration: int


def latest_common_checkpoint(run_dir: RunDir, learners: list[int]) -> int:
    """The last iteration count for which every learner has a checkpoint."""
    common: set[int] | None = None
    for agent in learners:
        have = set(run_dir.checkpoint_iterations(agent))
        common = have if common is None else common & have
    if not common:
        raise RunDirectoryError(
            f"{run_dir.root}: no checkpoint that every agent has "
            f"(agents/agent-I/checkpoints/iter-KKKKKK.pt); train at least --checkpoint-every "
            f"iterations or until the last iteration, then evaluate"
        )
    return max(common)


def load_learners(path: str | os.PathLike[str]) -> LoadedRun:
    """Rebuild every learner of the run at ``path`` from its latest common checkpoint."""
    import torch

    from p2pmarl.envs import env_spec

    records = load_run(path)
    run_dir = RunDir(records.root)
    iteration = latest_common_checkpoint(run_dir, records.learners)
    config, topology = records.config, records.topology
    spec = env_spec(config.env, topology.n_agents, config.episode_length,
                    env_kwargs=config.env_kwargs, agent_order=config.agent_order)
    _, seeds = process_seeds(config.seed, topology.n_agents)
    algorithms = {}
    for agent in records.learners:
        checkpoint = run_dir.checkpoint(agent, iteration)
        try:
            state = torch.load(checkpoint, weights_only=False)  # our own file
            algorithm = make_algorithm(config.algo, agent, spec, topology, config, seeds[agent])
            algorithm.load_state_dict(state["algorithm"])
        except (OSError, KeyError, ValueError, RuntimeError, EOFError) as error:
            raise RunDirectoryError(f"{checkpoint}: cannot load the checkpoint: {error}") from error
        algorithms[agent] = algorithm
    return LoadedRun(records, algorithms, iteration)


def joint_policy(algorithms: dict[int, AgentAlgorithm]) -> Policy:
    """Deterministic joint action: each agent's mode on its own observation, or the centralized
    learner's joint mode on the concatenated observation."""
    if len(algorithms) == 1 and next(iter(algorithms.values())).centralized:
        learner = next(iter(algorithms.values()))

        def centralized(observations: list[np.ndarray]) -> list[float]:
            joint = np.concatenate(observations)[None].astype(np.float32, copy=False)
            return np.asarray(learner.act(joint, deterministic=True)[0]).reshape(-1).tolist()

        return centralized

    def decentralized(observations: list[np.ndarray]) -> list[float]:
        row: list[float] = []
        for agent in sorted(algorithms):
            action = algorithms[agent].act(observations[agent][None], deterministic=True)[0]
            row.extend(np.asarray(action).reshape(-1).tolist())  # one number per Discrete
        return row

    return decentralized


def play_episode(
    env: MultiAgentEnv,
    policy: Policy,
    seed: int | None,
    frames: list[np.ndarray] | None = None,
) -> np.ndarray:
    """One episode; returns every agent's return, (N,). Appends rendered frames if given."""
    observations = env.reset(seed=seed)
    returns = np.zeros(env.spec.n_agents)
    _capture(env, frames)
    done = False
    while not done:
        observations, rewards, done = env.step(policy(observations))
        returns += rewards
        _capture(env, frames)
    return returns


def _capture(env: MultiAgentEnv, frames: list[np.ndarray] | None) -> None:
    if frames is not None:
        frames.append(np.asarray(env.raw.render()))  # type: ignore[attr-defined]


def enable_rendering(env: MultiAgentEnv) -> None:
    """Switch the mpe2 env under ``env`` to ``rgb_array`` rendering, headless.

    mpe2 draws on an off-screen pygame surface that exists from construction on; only its
    ``render_mode`` decides whether ``render()`` returns the picture.
    """
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    raw = getattr(env, "raw", None)
    if raw is None or not hasattr(raw, "render"):
        raise RunDirectoryError(f"environment {env.spec.name!r} cannot be rendered to a GIF")
    raw.render_mode = "rgb_array"


def write_gif(frames: list[np.ndarray], path: str | os.PathLike[str]) -> Path:
    """Write ``frames`` (H×W×3 uint8) as an animated GIF that loops forever."""
    from PIL import Image

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    images = []
    for frame in frames:
        image = Image.fromarray(np.ascontiguousarray(frame, dtype=np.uint8))
        size = (max(1, int(image.width * GIF_SCALE)), max(1, int(image.height * GIF_SCALE)))
        images.append(image.resize(size, Image.Resampling.BILINEAR))
    images[0].save(
        out, save_all=True, append_images=images[1:], duration=GIF_FRAME_MS, loop=0,
        optimize=False,
    )
    return out


def evaluate(
    run_dir: str | os.PathLike[str],
    episodes: int,
    gif: str | os.PathLike[str] | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Play ``episodes`` deterministic episodes with the run's latest checkpoints.

    Returns ``run_dir``, ``checkpoint_iteration``, ``episodes``, ``seed``, ``agents`` (``id`` and
    mean own ``return`` per environment agent), ``team_return`` (their sum), ``episode_returns``
    (per episode, per agent) and ``gif`` (the path written, or None).
    """
    if episodes < 1:
        raise ValueError(f"episodes must be ≥ 1, got {episodes}")
    loaded = load_learners(run_dir)
    config, n_agents = loaded.records.config, loaded.records.topology.n_agents
    worker = best_worker(loaded.algorithms)
    if worker is not None:  # graph nodes are workers that each hold every agent's policy
        n_agents = loaded.algorithms[worker].spec.n_agents  # type: ignore[attr-defined]
    env = make_env(config.env, n_agents, config.episode_length,
                   env_kwargs=config.env_kwargs, agent_order=config.agent_order)
    policy = (
        joint_policy(loaded.algorithms) if worker is None
        else worker_policy(loaded.algorithms[worker])
    )
    frames: list[np.ndarray] | None = None
    if gif is not None:
        enable_rendering(env)
        frames = []
    try:
        results = [
            play_episode(env, policy, seed if index == 0 else None, frames if index == 0 else None)
            for index in range(episodes)
        ]
    finally:
        env.close()
    gif_path = write_gif(frames, gif) if frames else None
    returns = np.array(results)
    means = returns.mean(axis=0)
    return {
        "run_dir": str(loaded.records.root),
        "algo": config.algo,
        "env": config.env,
        "checkpoint_iteration": loaded.iteration,
        "episodes": episodes,
        "seed": seed,
        "agents": [{"id": agent, "return": float(means[agent])} for agent in range(n_agents)],
        "team_return": float(means.sum()),
        "episode_returns": returns.tolist(),
        "gif": str(gif_path) if gif_path else None,
        "gif_frames": len(frames) if frames else 0,
        "worker": worker,
        **role_returns(config.env, means),
    }


def best_worker(algorithms: dict[int, AgentAlgorithm]) -> int | None:
    """For worker-level variants (``owns_environment``, Genetic MADDPG): the worker with the
    best recent score it saved (ties to the lower id); None for agent-per-process variants."""
    if not any(a.owns_environment for a in algorithms.values()):
        return None
    return max(algorithms, key=lambda w: (algorithms[w].score(), -w))  # type: ignore[attr-defined]


def worker_policy(worker: AgentAlgorithm) -> Policy:
    """Deterministic joint action of one worker that holds every agent's actor."""

    def joint(observations: list[np.ndarray]) -> list[int]:
        batch = [o[None].astype(np.float32, copy=False) for o in observations]
        return [int(a) for a in worker.joint_act(batch, deterministic=True)[0]]  # type: ignore

    return joint


def role_returns(env: str, means: np.ndarray) -> dict[str, float]:
    """``tag``: mean return of the predators (adversaries, ids 0..N-2) and of the prey (N-1)."""
    if env != "tag":
        return {}
    return {"predator_return": float(means[:-1].mean()), "prey_return": float(means[-1])}


def format_evaluation(result: dict[str, Any]) -> str:
    """A few lines for the terminal."""
    agents = ", ".join(f"{a['id']}: {a['return']:.2f}" for a in result["agents"])
    lines = [
        f"{result['algo']} on {result['env']}, checkpoint of iteration "
        f"{result['checkpoint_iteration']}, {result['episodes']} deterministic episodes "
        f"(seed {result['seed']})",
        f"team return {result['team_return']:.2f}; per agent {agents}",
    ]
    if "predator_return" in result:
        lines.append(f"predator return {result['predator_return']:.2f}, prey return "
                     f"{result['prey_return']:.2f}")
    if result.get("worker") is not None:
        lines.append(f"policies of worker {result['worker']} (best recent score)")
    if result["gif"]:
        lines.append(f"wrote {result['gif']} ({result['gif_frames']} frames)")
    return "\n".join(lines)
