"""``summary.json``: what a run produced, assembled by the launcher from the agents' metrics."""

from __future__ import annotations

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


def team_return_curve(run_dir: RunDir, n_agents: int) -> list[float | None]:
    """Per iteration done by every agent: Σ_i mean own episode return of agent i."""
    rows = [iteration_rows(run_dir, agent) for agent in range(n_agents)]
    done = set.intersection(*(set(r) for r in rows)) if rows else set()
    curve: list[float | None] = []
    for iteration in sorted(done):
        values = [r[iteration].get("rollout/return") for r in rows]
        curve.append(None if any(v is None for v in values) else float(sum(values)))
    return curve


def _agent_returns(rows: list[dict[int, dict]], last: int | None, n_agents: int) -> list:
    """Per environment agent: its mean own episode return in the last iteration."""
    if last is None:
        return [None] * n_agents
    if len(rows) == 1 and n_agents > 1:  # one centralized learner reports every agent's return
        returns = rows[0][last].get("rollout/agent_returns") or [None] * n_agents
        return list(returns)
    return [rows[agent][last].get("rollout/return") for agent in range(n_agents)]


def build_summary(
    run_dir: RunDir,
    config: RunConfig,
    n_agents: int,
    learners: int,
    status: str,
    wall_seconds: float,
) -> dict[str, Any]:
    """The summary other tools rely on (:data:`SUMMARY_FIELDS`) plus the return curve."""
    rows = [iteration_rows(run_dir, learner) for learner in range(learners)]
    done = set.intersection(*(set(r) for r in rows)) if rows else set()
    last = max(done) if done else None
    returns = _agent_returns(rows, last, n_agents)
    agents = [{"id": agent, "return": value} for agent, value in enumerate(returns)]
    curve = team_return_curve(run_dir, learners)
    return {
        "status": status,
        "algo": config.algo,
        "env": config.env,
        "n_agents": n_agents,
        "iterations": 0 if last is None else last + 1,
        "env_steps": 0 if last is None else rows[0][last].get("env_steps", 0),
        "wall_seconds": round(wall_seconds, 3),
        "team_return": curve[-1] if curve else None,
        "team_return_curve": curve,
        "agents": agents,
        "run_dir": str(run_dir.root),
        "centralized": learners == 1 and n_agents > 1,
        "seed": config.seed,
        "topology": config.topology,
    }
