"""Fast single-process learning probe on ``spread``: C-TRPO, I-TRPO or MATRPO without the runtime.

Runs the project's own learners (:mod:`p2pmarl.algos`) and env in one process; MATRPO's ADMM
phase is a seeded sequence of random single-edge activations (Algorithm 1, the eq. (22) z/y
algebra of :mod:`p2pmarl.algos.admm`) driven in-process, without messages. One setting can be
tried in a minute or two (MATRPO: about 30 s per 10k-step iteration). Prints the team return
(Σ over agents of the mean own episode return) per iteration and, at the end, one JSON line.

    . .venv/bin/activate
    python bench/learning_probe.py --algo ctrpo --iterations 10 --steps 10000
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import numpy as np
import torch

from p2pmarl.algos.admm import ADMMConfig
from p2pmarl.algos.base import Batch
from p2pmarl.algos.ctrpo import CTRPO
from p2pmarl.algos.itrpo import ITRPO, TRPOConfig
from p2pmarl.algos.matrpo import MATRPO, MATRPOConfig, paper_defaults
from p2pmarl.envs import env_spec, make_env


def rollout(envs, act, steps: int, n_agents: int, seed: int, state: dict):
    """T=steps//K steps in K env copies; returns per-agent arrays and finished episode returns."""
    copies = len(envs)
    if "obs" not in state:
        state["obs"] = [env.reset(seed + k) for k, env in enumerate(envs)]
        state["ret"] = np.zeros((copies, n_agents))
    horizon = steps // copies
    obs_dim = len(state["obs"][0][0])
    observations = np.zeros((horizon, copies, n_agents, obs_dim), np.float32)
    actions = np.zeros((horizon, copies, n_agents), np.int64)
    rewards = np.zeros((horizon, copies, n_agents), np.float32)
    dones = np.zeros((horizon, copies), bool)
    finished = []
    for t in range(horizon):
        current = np.array(state["obs"], np.float32)  # (K, N, obs)
        observations[t] = current
        joint = act(current)  # (K, N)
        actions[t] = joint
        for k, env in enumerate(envs):
            obs, reward, done = env.step(joint[k])
            rewards[t, k] = reward
            state["ret"][k] += reward
            if done:
                finished.append(state["ret"][k].copy())
                state["ret"][k] = 0.0
                obs = env.reset(None)
            dones[t, k] = done
            state["obs"][k] = obs
    last = np.array(state["obs"], np.float32)
    return observations, actions, rewards, dones, last, np.array(finished)


def batch_for(agent: int, data, centralized: bool = False) -> Batch:
    observations, actions, rewards, dones, last, _ = data
    if centralized:
        t, k = rewards.shape[:2]
        return Batch(0, observations.reshape(t, k, -1), actions, rewards.sum(-1), dones,
                     last.reshape(k, -1))
    return Batch(agent, observations[:, :, agent], actions, rewards[:, :, agent], dones,
                 last[:, agent])


def matrpo_phase(agents, edges, config: MATRPOConfig, rng) -> None:
    """Seeded single-edge ADMM (eq. 22) in-process: the same algebra as admm.py."""
    solvers = [agent._solver for agent in agents]
    shape = tuple(solvers[0].old_log_prob.shape)
    beta = config.admm.beta
    y = {(e, q): np.full(shape, config.admm.initial_dual, np.float32) for e in edges for q in e}
    z = {(e, q): np.zeros(shape, np.float32) for e in edges for q in e}
    sign = {(e, e[0]): 1.0 for e in edges} | {(e, e[1]): -1.0 for e in edges}
    for _ in range(config.admm.budget):
        e = edges[rng.integers(len(edges))]
        ratios = {}
        for q in e:
            mine = [f for f in edges if q in f]
            dual = sum(sign[f, q] * y[f, q] for f in mine)
            est = sum(sign[f, q] * z[f, q] for f in mine)
            ratios[q] = solvers[q].propose(dual, est, len(mine))
            solvers[q].accept()
        i, j = e
        nu = 0.5 * (y[e, i] + y[e, j]) + 0.5 * beta * (ratios[i] - ratios[j])
        for q in e:
            z[e, q] = (y[e, q] - nu) / beta + sign[e, q] * ratios[q]
            y[e, q] = nu.copy()
    for agent, solver in zip(agents, solvers, strict=True):
        with torch.no_grad():
            offset = 0
            for parameter in solver.parameters:
                size = parameter.numel()
                parameter.copy_(solver.theta[offset: offset + size].view_as(parameter))
                offset += size
        agent._solver = None


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--algo", default="ctrpo", choices=["ctrpo", "itrpo", "matrpo"])
    p.add_argument("--iterations", type=int, default=10)
    p.add_argument("--steps", type=int, default=10000)
    p.add_argument("--n-envs", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--env", default="spread")
    p.add_argument("--max-kl", type=float, default=None)
    p.add_argument("--value-epochs", type=int, default=5)
    p.add_argument("--value-lr", type=float, default=1e-3)
    p.add_argument("--norm", default="center", choices=["own", "center", "none"])
    p.add_argument("--beta", type=float, default=None)
    p.add_argument("--admm", type=int, default=None)
    p.add_argument("--initial-dual", type=float, default=0.0)
    p.add_argument("--gamma", type=float, default=0.995)
    p.add_argument("--lam", type=float, default=0.95)
    p.add_argument("--verbose", action="store_true")
    p.add_argument("--theta-step", default="kkt", choices=["kkt", "boundary"])
    p.add_argument("--episode-end", default="timeout", choices=["timeout", "terminal"])
    args = p.parse_args()
    torch.set_num_threads(1)
    n = 3
    spec = env_spec(args.env, n, 100)
    envs = [make_env(args.env, n, 100) for _ in range(args.n_envs)]
    small, beta, budget = paper_defaults(n)
    trpo = TRPOConfig(max_kl=args.max_kl or small, value_epochs=args.value_epochs,
                      value_lr=args.value_lr, advantage_normalization=args.norm,
                      gamma=args.gamma, lam=args.lam, episode_end=args.episode_end)
    edges = [(0, 1), (1, 2), (0, 2)]
    if args.algo == "ctrpo":
        trpo = dataclasses.replace(trpo, max_kl=args.max_kl or small * n)
        agents = [CTRPO(spec, trpo, args.seed)]

        def act(obs):
            return agents[0].act(obs.reshape(obs.shape[0], -1))
    else:
        if args.algo == "itrpo":
            agents = [ITRPO(i, spec, trpo, args.seed * 100 + i) for i in range(n)]
        else:
            cfg = MATRPOConfig(trpo=trpo, admm=ADMMConfig(
                beta=args.beta or beta, budget=args.admm or budget, seed=args.seed,
                initial_dual=args.initial_dual), theta_step=args.theta_step)
            agents = [MATRPO(i, spec, edges, cfg, args.seed * 100 + i) for i in range(n)]

        def act(obs):
            return np.stack([a.act(obs[:, i]) for i, a in enumerate(agents)], axis=1)

    state: dict = {}
    rng = np.random.default_rng(args.seed)
    curve = []
    start = time.time()
    for it in range(args.iterations):
        data = rollout(envs, act, args.steps, n, args.seed, state)
        finished = data[-1]
        team = float(finished.sum(-1).mean()) if len(finished) else float("nan")
        per_agent = finished.mean(0).round(1).tolist() if len(finished) else []
        curve.append(team)
        metrics = {}
        if args.algo == "ctrpo":
            metrics = agents[0].local_update(batch_for(0, data, centralized=True))
        else:
            for i, a in enumerate(agents):
                m = a.local_update(batch_for(i, data))
                metrics.update({f"{i}/{k}": v for k, v in m.items()})
            if args.algo == "matrpo":
                matrpo_phase(agents, edges, agents[0].matrpo, rng)
        with torch.no_grad():
            pol = agents[0].policy
            own = data[0][:, :, 0].reshape(-1, data[0].shape[-1])
            joint = data[0].reshape(-1, data[0].shape[2] * data[0].shape[3])
            o = torch.as_tensor(joint if args.algo == "ctrpo" else own)
            ent = float(pol.entropy(o).mean())
        if args.verbose:
            print({k: round(v, 4) for k, v in metrics.items()})
        kl = metrics.get("train/kl", metrics.get("0/train/kl", 0.0))
        print(f"it {it:3d} team {team:8.1f} per-agent {per_agent} kl {kl:.4f} ent {ent:.3f} "
              f"t {time.time() - start:.0f}s", flush=True)
    print(json.dumps({"args": vars(args), "curve": [round(c, 1) for c in curve]}))


if __name__ == "__main__":
    main()
