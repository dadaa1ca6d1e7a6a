"""``summary.json``: what a run produced, assembled by the launcher from the agents' metrics."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from p2pmarl.config import RunConfig
from p2pmarl.runtime.rundir import RunDir, read_jsonl

SUMMARY_FIELDS = (
    "status", "algo", "env", "n_agents", "iterations", "env_steps", "wall_seconds",
    "team_return", "agents",
)
"""Keys other tools rely on; always present."""


def iteration_rows(run_dir: RunDir, agent: int) -> dict[int, dict[str, Any]]:
    """Agent's metrics by iteration (a resumed iteration keeps its latest record)."""
    return {
        row["iteration"]: row
        for row in read_jsonl(run_dir.agent_metrics(agent))
        if isinstance(row.get("iteration"), int)
    }


def _done_iterations(rows: list[dict[int, dict]], ended: Iterable[int]) -> set[int]:
    """Iterations done by every agent that did not crash for good (all agents without crashes).

    An iteration that a restarted agent missed is left out.
    """
    ended = set(ended)
    kept = [r for agent, r in enumerate(rows) if agent not in ended]
    return set.intersection(*(set(r) for r in kept)) if kept else set()


def team_return_curve(
    run_dir: RunDir, n_agents: int, ended: Iterable[int] = ()
) -> list[float | None]:
    """Per iteration done by every agent: Σ_i mean own episode return of agent i.

    After an agent crashed without restart (``ended``), the sum runs over the agents that
    reported that iteration: the crashed one no longer counts.
    """
    rows = [iteration_rows(run_dir, agent) for agent in range(n_agents)]
    curve: list[float | None] = []
    for iteration in sorted(_done_iterations(rows, ended)):
        values = [r[iteration].get("rollout/return") for r in rows if iteration in r]
        curve.append(None if any(v is None for v in values) else float(sum(values)))
    return curve


def _agent_returns(rows: list[dict[int, dict]], last: int | None, n_agents: int) -> list:
    """Per environment agent: its mean own episode return in the last iteration."""
    if last is None:
        return [None] * n_agents
    if len(rows) == 1 and n_agents > 1:  # one centralized learner reports every agent's return
        returns = rows[0][last].get("rollout/agent_returns") or [None] * n_agents
        return list(returns)
    return [rows[agent].get(last, {}).get("rollout/return") for agent in range(n_agents)]


def _env_steps(rows: list[dict[int, dict]], last: int) -> int:
    return next(r[last].get("env_steps", 0) for r in rows if last in r)


def build_summary(
    run_dir: RunDir,
    config: RunConfig,
    n_agents: int,
    learners: int,
    status: str,
    wall_seconds: float,
    ended: Iterable[int] = (),
) -> dict[str, Any]:
    """The summary other tools rely on (:data:`SUMMARY_FIELDS`) plus the return curve.

    ``ended``: agents that crashed without restart (their return is that of their last
    iteration, or None if it was not the run's last).
    """
    rows = [iteration_rows(run_dir, learner) for learner in range(learners)]
    done = _done_iterations(rows, ended)
    last = max(done) if done else None
    returns = _agent_returns(rows, last, n_agents)
    agents = [{"id": agent, "return": value} for agent, value in enumerate(returns)]
    curve = team_return_curve(run_dir, learners, ended)
    return {
        "status": status,
        "algo": config.algo,
        "env": config.env,
        "n_agents": n_agents,
        "iterations": 0 if last is None else last + 1,
        "env_steps": 0 if last is None else _env_steps(rows, last),
        "wall_seconds": round(wall_seconds, 3),
        "team_return": curve[-1] if curve else None,
        "team_return_curve": curve,
        "agents": agents,
        "run_dir": str(run_dir.root),
        "centralized": learners == 1 and n_agents > 1,
        "seed": config.seed,
        "topology": config.topology,
    }
