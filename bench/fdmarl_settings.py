"""FDMARL settings probe (issue 13): one real multi-process launch of ``fdmarl`` with any
:class:`p2pmarl.algos.fdmarl.FDMARLConfig` field overridden (``--set name=value``).

Only ``reward_scale`` and ``actor_minibatch`` are run-config fields (``--fdmarl-*``); this probe
reaches the others by wrapping ``FDMARL.from_run_config`` before the launcher forks the agents
(the local engine forks, so every agent sees the override). Prints one JSON object: the
settings, the team-return curve, and per agent the last iteration's critic diagnostics.

    python bench/fdmarl_settings.py --iterations 6 --steps 10000 --set critic_epochs=20
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
from pathlib import Path

from bench.common import RESULTS, topology
from p2pmarl.algos import fdmarl
from p2pmarl.config import RunConfig
from p2pmarl.runtime.launcher import launch


def parse_settings(pairs: list[str]) -> dict[str, object]:
    """``name=value`` → {name: value typed like the FDMARLConfig field}; unknown names fail."""
    fields = {field.name: field for field in dataclasses.fields(fdmarl.FDMARLConfig)}
    settings: dict[str, object] = {}
    for pair in pairs:
        name, _, text = pair.partition("=")
        if name not in fields:
            raise SystemExit(f"--set {pair}: FDMARLConfig has no field {name!r}; "
                             f"fields: {', '.join(sorted(fields))}")
        default = getattr(fdmarl.FDMARLConfig(), name)
        settings[name] = type(default)(text) if not isinstance(default, tuple) else tuple(
            int(size) for size in text.split(","))
    return settings


def install(settings: dict[str, object]) -> None:
    """Make every agent built by the launcher use ``settings`` on top of its run config."""
    original = fdmarl.FDMARL.from_run_config.__func__

    def patched(cls, agent_id, spec, topology_, config, seed):
        agent = original(cls, agent_id, spec, topology_, config, seed)
        agent.config = dataclasses.replace(agent.config, **settings)
        agent.critic_optimizer = fdmarl.SGD(list(agent.critic.parameters()),
                                            agent.config.critic_lr, agent.config.critic_momentum)
        agent.actor_optimizer = fdmarl.Adam(agent.policy.parameters(), lr=agent.config.actor_lr)
        return agent

    fdmarl.FDMARL.from_run_config = classmethod(patched)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="spread")
    parser.add_argument("--topology", default="ring3")
    parser.add_argument("--iterations", type=int, default=6)
    parser.add_argument("--steps", type=int, default=10000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", dest="settings", nargs="*", default=[])
    parser.add_argument("--out", type=Path, default=RESULTS / "fdmarl_settings")
    args = parser.parse_args()
    settings = parse_settings(args.settings)
    install(settings)
    config = RunConfig(topology=topology(args.topology), env=args.env, algo="fdmarl",
                       iterations=args.iterations, steps_per_iteration=args.steps, n_envs=10,
                       episode_length=100, seed=args.seed, out=str(args.out)).validate()
    result = launch(config, show_progress=False)
    summary = result.summary
    curve = summary["team_return_curve"]
    agents = {}
    for metrics in sorted((result.run_dir / "agents").glob("agent-*/metrics.jsonl")):
        rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
        last = [row for row in rows if "train/td_error" in row][-1:]
        agents[metrics.parent.name] = {key: value for row in last for key, value in row.items()
                                       if key.startswith("train/")}
    print(json.dumps({"benchmark": "fdmarl_settings", "settings": settings, "seed": args.seed,
                      "status": summary["status"], "curve": curve,
                      "final": statistics.fmean(curve[-3:]) if curve else None,
                      "wall_seconds": summary["wall_seconds"], "agents": agents}))


if __name__ == "__main__":
    main()
