"""The ``p2pmarl`` command: launch runs, check and draw topology files, inspect and evaluate
runs."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from p2pmarl.config import FIELD_NAMES, ConfigError, RunConfig, load_experiment, read_run_config
from p2pmarl.topology import TopologyError

REPO_ROOT = Path(__file__).resolve().parents[1]

_FLAG_HELP = {
    "topology": "topology file (YAML/JSON spec, GraphML, GML, edge list, adjacency list)",
    "env": "environment: spread, spread-shared, treasure, tag, ipd, rps, MODULE:FACTORY "
    "(any PettingZoo Parallel env) or mamujoco:SCENARIO:AGENT_CONF (extra p2pmarl[mujoco])",
    "algo": "algorithm: itrpo, matrpo, ctrpo, hatrpo, happo, dimapg, fdmarl, maddpg, "
    "genetic-maddpg, metamapg",
    "iterations": "training iterations",
    "steps_per_iteration": "M, environment steps per iteration over all copies",
    "n_envs": "K, environment copies stepped in parallel",
    "episode_length": "steps per episode",
    "seed": "root seed",
    "out": "directory for run directories",
    "checkpoint_every": "checkpoint every this many iterations",
    "max_kl": "trust region δ/N per agent",
    "beta": "ADMM penalty β",
    "admm_iterations": "edge activations per training iteration",
    "admm_schedule": "async or seeded",
    "linearized_log_ratio": "exchange J·(θ−θ_old) instead of the true log ratio",
    "theta_step": "MATRPO θ step: kkt (exact trust-region minimizer) or boundary (eq. 22)",
    "initial_dual": "initial ADMM dual value",
    "admm_message_timeout": "longest wait (s) for a neighbour's ADMM message (estimate's clamp)",
    "fisher_subsample": "use every k-th sample in Fisher-vector products",
    "advantage_normalization": "own (standardize by own statistics), center (own mean) or none",
    "episode_end": "timeout (bootstrap V at the episode length) or terminal",
    "connect_timeout": "seconds for processes to start and connect",
    "step_timeout": "seconds the world waits for an action",
    "phase_timeout": "seconds the world waits for agents to finish learning",
    "faults": "fault spec file of injected link failures (docs/faults.md)",
    "drop": "probability that any peer message is lost (replaces the spec's drop)",
    "env_backend": "batched (numpy over all copies) or mpe2 (the reference, copy by copy)",
    "admm_retransmissions": "re-sends of an unanswered ADMM message before the activation is "
    "aborted (adaptive waits; 0: fixed --admm-message-timeout waits)",
    "peer_max_copies": "most copies of each reliable peer message on a link measured lossy "
    "(1: never duplicate)",
    "world_link": "world link on one host: unix (Unix socket) or zmq (ZeroMQ ipc://)",
    "env_kwargs": "JSON keyword arguments for an --env given as MODULE:FACTORY",
    "agent_order": "comma-separated agent names of an import-path env, in graph-node order",
    "tensorboard": "also write TensorBoard scalars to RUN_DIR/tensorboard/agent-I/",
    "happo_order": "HATRPO/HAPPO update order: random, or ring (ring/path topologies only)",
    "token_timeout": "HATRPO/HAPPO: seconds per earlier position before a token counts as lost",
    "ppo_epochs": "HAPPO: passes over the batch per policy update",
    "ppo_minibatches": "HAPPO: minibatches per pass",
    "ppo_lr": "HAPPO: Adam learning rate of the policy",
    "ppo_clip": "HAPPO: clip ε of the probability ratio",
    "dimapg_inner_steps": "DiMA-PG: k REINFORCE steps adapting θ_n (eq. 10)",
    "dimapg_inner_lr": "DiMA-PG: inner step size α",
    "dimapg_outer": "DiMA-PG outer step: trpo or reinforce",
    "dimapg_outer_lr": "DiMA-PG: ε of the reinforce outer step (eq. 11)",
    "dimapg_first_order": "DiMA-PG: drop the second-order term (first-order MAML)",
    "dimapg_reward_clip": "DiMA-PG: clip rewards to [-c, c]; 0 turns clipping off",
    "dimapg_adapted_steps": "DiMA-PG: steps per copy of the adapted phase",
    "dimapg_gossip": "DiMA-PG gossip: metropolis or push_sum",
    "dimapg_gossip_rounds": "DiMA-PG: fixed gossip rounds (default: stop by tolerance)",
    "dimapg_gossip_tolerance": "DiMA-PG: relative gossip tolerance per round",
    "dimapg_gossip_max_rounds": "DiMA-PG: cap on gossip rounds",
    "dimapg_gossip_timeout": "DiMA-PG: seconds a gossip round waits for a neighbour",
    "dimapg_resync_tolerance": "DiMA-PG: replica disagreement that triggers a re-sync",
    "dimapg_no_score_term": "DiMA-PG: leave out eq. 14's score-function term",
    "dimapg_gamma": "DiMA-PG: discount of the REINFORCE returns",
    "dimapg_score_estimator": "DiMA-PG: eq. 14's second term: score (as written) or lvc (ProMP)",
    "maddpg_batch_size": "MADDPG minibatch per update",
    "maddpg_buffer_size": "MADDPG replay capacity in transitions",
    "maddpg_learning_starts": "transitions stored before MADDPG's first update",
    "maddpg_train_every": "env transitions per MADDPG gradient update",
    "maddpg_actor_lr": "MADDPG actor learning rate (default 1e-3, the report's)",
    "maddpg_critic_lr": "MADDPG critic learning rate (default 1e-4, the report's)",
    "critic_sync_every": "genetic MADDPG: env steps between best-critic gossips",
    "fdmarl_reward_scale": "FDMARL: fixed reward scale of every agent's critic target",
    "fdmarl_actor_minibatch": "FDMARL: samples per actor Adam step",
    "metamapg_trajectories": "Meta-MAPG: K trajectories per chain step (= --n-envs; paper 64)",
    "metamapg_chain_length": "Meta-MAPG: chain length L (inner updates per chain)",
    "metamapg_variant": "Meta-MAPG: metamapg, metapg, lola (no own learning) or reinforce",
    "metamapg_peer_model": "Meta-MAPG: centralized form, the peer sends its parameters "
    "(NOT decentralized)",
    "metamapg_inner_lr": "Meta-MAPG: meta-agent inner learning rate (None: Table 3/4)",
    "metamapg_learn_inner_lr": "Meta-MAPG: meta-learn the inner learning rate per chain step",
    "metamapg_peer_lr": "Meta-MAPG: peer inner learning rate (None: Table 3/4)",
    "metamapg_outer_lr": "Meta-MAPG: outer Adam learning rate (None: Table 3/4)",
    "metamapg_critic_lr": "Meta-MAPG: value-function learning rate (None: Table 3/4)",
    "metamapg_gamma": "Meta-MAPG: discount γ (None: 0.96 IPD, 0.90 RPS)",
    "metamapg_lambda": "Meta-MAPG: GAE λ of the meta-objective",
    "metamapg_personas": "Meta-MAPG: persona split in or out (of distribution, IPD)",
    "metamapg_meta_test": "Meta-MAPG: meta-test (no outer step, held-out personas)",
    "metamapg_init": "Meta-MAPG: agent-0 checkpoint of a meta-training run to start from",
}


def _flag_type(name: str) -> type:
    """The Python type of a RunConfig field, from its annotation (``float | None`` → float)."""
    annotation = str(next(f.type for f in dataclasses.fields(RunConfig) if f.name == name))
    for candidate in (bool, int, float, str):
        if annotation.split(" | ")[0] == candidate.__name__:
            return candidate
    return str


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    defaults = RunConfig()
    for name in FIELD_NAMES:
        flag = "--" + name.replace("_", "-")
        default = getattr(defaults, name)
        kind = _flag_type(name)
        help_text = f"{_FLAG_HELP[name]} (default: {default})"
        if isinstance(default, bool):
            parser.add_argument(flag, action="store_true", default=None, help=help_text)
        else:
            parser.add_argument(flag, type=kind, default=None, help=help_text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="p2pmarl", description="Peer-to-peer multi-agent RL: one process per agent."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    launch = commands.add_parser("launch", help="start a world and N agent processes and train")
    launch.add_argument("experiment", nargs="?", help="experiment file (launch/*.yaml)")
    _add_config_flags(launch)
    launch.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its checkpoints")
    launch.add_argument("--no-progress", action="store_true", help="no live progress display")
    launch.add_argument("--json", action="store_true", help="print summary.json to stdout")
    _add_host_flags(launch)
    _add_engine_flags(launch)
    topology = commands.add_parser("topology", help="check or draw a topology file")
    topology_commands = topology.add_subparsers(dest="topology_command", required=True)
    check = topology_commands.add_parser("check", help="print N, edges, degrees, diameter, λ₂")
    check.add_argument("file")
    check.add_argument("--json", action="store_true", help="machine-readable output")
    show = topology_commands.add_parser("show", help="draw the graph to a PNG")
    show.add_argument("file")
    show.add_argument("--png", required=True, metavar="OUT")
    _add_inspect_commands(commands)
    _add_cluster_commands(commands)
    return parser


def _add_host_flags(launch: argparse.ArgumentParser) -> None:
    """Per-host launch of a run spread over hosts (issue 17, docs/cluster.md)."""
    launch.add_argument(
        "--only", metavar="PART",
        help="start only these processes of the run here: agent ids, ranges A-B and/or 'world', "
             "comma-separated (needs --run-dir and --world-address)",
    )
    launch.add_argument("--world-only", action="store_true", help="same as --only world")
    launch.add_argument("--run-dir", metavar="DIR", help="this host's run directory (with --only)")
    launch.add_argument(
        "--world-address", metavar="HOST:PORT", help="tcp address the world binds (with --only)"
    )


def _add_engine_flags(launch: argparse.ArgumentParser) -> None:
    """Where the processes run: forked here or as Ray actors (issue 17, docs/cluster.md)."""
    launch.add_argument("--engine", choices=("local", "ray"), default="local",
                        help="local: fork every process here (default); ray: one Ray actor per "
                             "process (pip install 'p2pmarl[ray]')")
    launch.add_argument("--ray-address", metavar="ADDR",
                        help="with --engine ray: join this Ray cluster (HOST:PORT of its head); "
                             "without it a local Ray instance runs for the run's duration")
    launch.add_argument("--placement", choices=("spread", "pack"), default="spread",
                        help="with --engine ray: spread the actors over the nodes or pack them")


def _add_cluster_commands(commands: argparse._SubParsersAction) -> None:
    """``keys`` and ``merge`` for runs spread over hosts (docs/cluster.md)."""
    keys = commands.add_parser("keys", help="make a run's CURVE keys; export one host's share")
    keys.add_argument("run_dir", metavar="RUN_DIR")
    keys.add_argument("--topology", required=True, help="the run's topology file")
    keys.add_argument("--only", metavar="PART", help="with --export: one host's agents (and world)")
    keys.add_argument(
        "--export", metavar="DIR", help="copy the public keys and --only's secret keys into DIR"
    )
    merge = commands.add_parser("merge", help="join the run directories of a run's hosts")
    merge.add_argument("out", metavar="OUT")
    merge.add_argument("parts", nargs="+", metavar="PART_DIR")


def _add_inspect_commands(commands: argparse._SubParsersAction) -> None:
    """``inspect`` and ``evaluate`` (docs/inspect.md)."""
    inspect = commands.add_parser(
        "inspect", help="report consensus residuals, learning and faults of runs; plots"
    )
    inspect.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    inspect.add_argument("--json", action="store_true", help="print the inspection JSON")
    inspect.add_argument("--plot", metavar="DIR", help="write the figures (PNG) into DIR")
    inspect.add_argument(
        "--tensorboard", action="store_true",
        help="convert each run's records to RUN_DIR/tensorboard/agent-I/ event files",
    )
    inspect.add_argument(
        "--live", action="store_true", help="refresh the report until every run has finished"
    )
    inspect.add_argument(
        "--interval", type=float, default=2.0, metavar="S", help="--live refresh (default: 2 s)"
    )
    inspect.add_argument(
        "--max-seconds", type=float, default=None, metavar="S",
        help="--live gives up after S seconds (default: no limit)",
    )
    evaluate = commands.add_parser(
        "evaluate", help="replay a run's latest checkpoints with deterministic actions"
    )
    evaluate.add_argument("run_dir", metavar="RUN_DIR")
    evaluate.add_argument("--episodes", type=int, default=10, help="episodes (default: 10)")
    evaluate.add_argument("--gif", metavar="OUT", help="render the first episode to this GIF")
    evaluate.add_argument("--seed", type=int, default=0, help="environment seed (default: 0)")
    evaluate.add_argument("--json", action="store_true", help="print the result as JSON")


def _default_topology(path: str) -> str:
    """Relative default paths also resolve against the repository the package lives in."""
    if Path(path).exists() or Path(path).is_absolute():
        return path
    candidate = REPO_ROOT / path
    return str(candidate) if candidate.exists() else path


def _launch_config(args: argparse.Namespace) -> RunConfig:
    from p2pmarl.config import resolve

    overrides = {name: getattr(args, name) for name in FIELD_NAMES}
    if args.resume:
        saved = read_run_config(args.resume).to_dict()
        return resolve(saved, overrides)
    file_values = load_experiment(args.experiment) if args.experiment else {}
    config = resolve(file_values, overrides)
    return RunConfig(**{**config.to_dict(), "topology": _default_topology(config.topology)})


def _print_summary(result, as_json: bool) -> None:
    summary = result.summary
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    curve = [v for v in summary.get("team_return_curve", []) if v is not None]
    trend = f"{curve[0]:.2f} → {curve[-1]:.2f}" if curve else "n/a (no finished episodes)"
    print(
        f"\n{summary['status']}: {summary['algo']} on {summary['env']} with "
        f"{summary['n_agents']} agents, {summary['iterations']} iterations, "
        f"{summary['env_steps']} env steps in {summary['wall_seconds']:.1f} s\n"
        f"team return (first → last iteration): {trend}\n"
        f"per agent: "
        + ", ".join(
            f"{a['id']}: {a['return']:.2f}" if a["return"] is not None else f"{a['id']}: n/a"
            for a in summary["agents"]
        )
        + f"\nresults: {result.run_dir}  (summary.json, agents/agent-*/metrics.jsonl, logs)"
    )


def _run_launch(args: argparse.Namespace) -> int:
    from p2pmarl.runtime.launcher import honour_interrupts, launch

    honour_interrupts()
    config = _launch_config(args)
    resume = Path(args.resume) if args.resume else None
    if args.only or args.world_only:
        if args.engine != "local":
            raise ConfigError("--only/--world-only start this host's part with the local engine; "
                              "drop --engine ray (Ray places every process itself)")
        result = _launch_part(args, config)
    else:
        from p2pmarl.runtime.engines import EngineOptions

        engine = EngineOptions(args.engine, args.ray_address, args.placement)
        result = launch(config, resume=resume, show_progress=not args.no_progress, engine=engine)
    for message in result.messages:
        print(message, file=sys.stderr)
    _print_summary(result, args.json)
    return result.exit_code


def _launch_part(args: argparse.Namespace, config: RunConfig):
    from p2pmarl.runtime.hosts import launch_part

    if args.only and args.world_only:
        raise ConfigError("give --only PART or --world-only, not both")
    if args.resume or not args.run_dir:
        raise ConfigError("--only/--world-only need --run-dir DIR and cannot --resume")
    only = "world" if args.world_only else args.only
    return launch_part(config, Path(args.run_dir), only, args.world_address,
                       show_progress=not args.no_progress)


def _run_keys(args: argparse.Namespace) -> int:
    from p2pmarl.runtime.hosts import export_keys, make_keys, parse_only
    from p2pmarl.topology import load_topology

    topology = load_topology(_default_topology(args.topology))
    root = Path(args.run_dir)
    if args.export is None:
        if args.only:
            raise ConfigError("--only selects whose secret keys --export copies; add --export")
        agents = make_keys(root, topology)
        print(f"{root / 'keys'}: CURVE key pairs of agents 0..{agents[-1]}")
        return 0
    if not args.only:
        raise ConfigError("--export needs --only AGENTS: the agents of the host it is for")
    part = parse_only(args.only, topology.n_agents)
    for path in export_keys(root, Path(args.export), part):
        print(f"wrote {path}")
    return 0


def _run_merge(args: argparse.Namespace) -> int:
    from p2pmarl.runtime.hosts import merge_parts

    summary = merge_parts(Path(args.out), [Path(p) for p in args.parts])
    print(f"{summary['status']}: merged {len(args.parts)} parts into {args.out}")
    return 0


def _run_topology(args: argparse.Namespace) -> int:
    from p2pmarl.topology import describe, draw_topology, format_description, load_topology

    topology = load_topology(args.file)
    if args.topology_command == "check":
        description = describe(topology)
        print(json.dumps(description, indent=2) if args.json else format_description(description))
    else:
        draw_topology(topology, args.png)
        print(f"wrote {args.png}")
    return 0


def _run_inspect(args: argparse.Namespace) -> int:
    from p2pmarl.inspection import collect, format_report, watch, write_plots
    from p2pmarl.inspection.report import reports_renderable

    if args.live and args.json:
        raise ConfigError("--live shows the report; it cannot be combined with --json")
    if not args.interval > 0:
        raise ConfigError(f"--interval must be > 0 seconds, got {args.interval}")

    def refresh() -> list[dict]:
        return [collect(path) for path in args.run_dirs]

    reports = refresh()
    if args.live:
        reports = watch(refresh, args.interval, args.max_seconds)
    elif args.json:
        print(json.dumps(reports[0] if len(reports) == 1 else reports, indent=2))
    elif sys.stdout.isatty():
        from rich.console import Console

        Console().print(reports_renderable(reports))
    else:
        print(format_report(reports), end="")
    if args.plot:
        for path in write_plots(args.run_dirs, args.plot):
            print(f"wrote {path}", file=sys.stderr if args.json else sys.stdout)
    if args.tensorboard:
        from p2pmarl.runtime.tensorboard import export_run

        for run in args.run_dirs:
            folder = export_run(run)
            print(f"wrote {folder}  (tensorboard --logdir {folder})",
                  file=sys.stderr if args.json else sys.stdout)
    return 0


def _run_evaluate(args: argparse.Namespace) -> int:
    from p2pmarl.evaluate import evaluate, format_evaluation

    if args.episodes < 1:
        raise ConfigError(f"--episodes must be ≥ 1, got {args.episodes}")
    result = evaluate(args.run_dir, args.episodes, gif=args.gif, seed=args.seed)
    print(json.dumps(result, indent=2) if args.json else format_evaluation(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    from p2pmarl.inspection.data import RunDirectoryError

    args = build_parser().parse_args(argv)
    try:
        if args.command == "launch":
            return _run_launch(args)
        if args.command == "inspect":
            return _run_inspect(args)
        if args.command == "evaluate":
            return _run_evaluate(args)
        if args.command == "keys":
            return _run_keys(args)
        if args.command == "merge":
            return _run_merge(args)
        return _run_topology(args)
    except (ConfigError, TopologyError, RunDirectoryError) as error:
        print(f"p2pmarl: error: {error}", file=sys.stderr)
        return 2
