"""Stage 3 (optional), fine-tuning: recurrent PPO directly on the distilled LTC.

The actor is the LTC (its motor outputs are the mean of a Gaussian in network units, with a learned
state-independent log std); it carries its hidden state through the rollouts, and the state at the
start of every training window is stored, so the update re-runs the LTC over the same windows from
the same states (zeroing it where an episode restarts inside a window). The critic is an MLP on the
normalised observation. Advantages come from stable-baselines3's `RolloutBuffer` (GAE, with the
value of the last observation bootstrapped on time-limit truncation, as SB3 does).

The critic is fitted alone for the first rollouts, so that a random critic cannot wreck the distilled
actor; afterwards both train with the clipped PPO objective. Every update is evaluated in closed
loop; the best actor is kept and compared with the distilled one on the same episodes: ``done.json``
says whether fine-tuning improved the return (``improved``), and export only uses it if so.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from .config import TrainConfig
from .envs import make_env
from .io import (
    read_json,
    read_state_dicts,
    read_tensors,
    write_json,
    write_state_dicts,
    write_tensors,
)


def finetune(cfg: TrainConfig, run_dir: str | os.PathLike, progress: bool = True) -> Path:  # noqa: C901 (split when the training config is reworked)
    import gymnasium as gym
    import torch
    from stable_baselines3.common.buffers import RolloutBuffer
    from tqdm import tqdm

    from .distill import evaluate_student, load_best

    run_dir = Path(run_dir)
    out = run_dir / "finetune"
    if (out / "done.json").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    f = cfg.finetune
    students, spec = load_best(cfg, run_dir)
    actor = students["ltc"].train()
    log_std = torch.nn.Parameter(torch.full((spec.action_dim,), f.init_log_std))
    critic = torch.nn.Sequential(
        torch.nn.Linear(spec.obs_dim, 64),
        torch.nn.Tanh(),
        torch.nn.Linear(64, 64),
        torch.nn.Tanh(),
        torch.nn.Linear(64, 1),
    )
    opt_actor = torch.optim.Adam([*actor.parameters(), log_std], lr=f.lr)
    opt_critic = torch.optim.Adam(critic.parameters(), lr=f.critic_lr)
    n, T, W = f.n_envs, f.n_steps, f.window
    if T % W:
        raise ValueError(f"finetune.n_steps ({T}) must be a multiple of finetune.window ({W})")
    iterations = max(1, math.ceil(f.total_timesteps / (n * T)))
    eval_seed = 20_000
    state: dict[str, Any] = {"iteration": 0, "history": []}
    if (out / "progress.json").exists():
        state = read_json(out / "progress.json")
        weights = read_tensors(out / state["weights"])
        actor.load_state_dict({k[4:]: v for k, v in weights.items() if k.startswith("ltc.")})
        critic.load_state_dict({k[7:]: v for k, v in weights.items() if k.startswith("critic.")})
        with torch.no_grad():
            log_std.copy_(weights["log_std"])
        opts = read_state_dicts(out / state["optim"])
        opt_actor.load_state_dict(opts["actor"])
        opt_critic.load_state_dict(opts["critic"])
    else:
        state["distilled_return"] = evaluate_student(actor, spec, cfg, f.eval_episodes, eval_seed)
        state["best_return"] = state["distilled_return"]
        write_tensors(out / "best_ltc.safetensors", actor.state_dict())

    obs_space = gym.spaces.Box(-np.inf, np.inf, (spec.obs_dim,), np.float32)
    act_space = gym.spaces.Box(-np.inf, np.inf, (spec.action_dim,), np.float32)
    period = spec.control_period_s
    bar = tqdm(
        total=iterations * n * T,
        initial=state["iteration"] * n * T,
        desc="finetune",
        unit="step",
        disable=not progress,
        mininterval=2.0,
    )

    def values(obs_raw: np.ndarray) -> torch.Tensor:
        return critic(torch.as_tensor(spec.normalize(obs_raw), dtype=torch.float32)).squeeze(-1)

    # episodes run on across rollouts (a rollout is shorter than an episode); a resume starts
    # fresh episodes, from seeds that depend on the iteration
    env_seed = cfg.seed * 7907 + 31 * state["iteration"]
    envs = [make_env(cfg.env, seed=env_seed + i, randomize=True) for i in range(n)]
    obs = np.stack([e.reset(seed=env_seed * 100 + i)[0] for i, e in enumerate(envs)])
    obs = obs.astype(np.float64)
    next_reset = env_seed * 100 + n
    dt = np.full(n, period)
    h = torch.zeros(n, actor.state_size)
    start = np.ones(n, bool)
    ep_return = np.zeros(n)
    for it in range(state["iteration"], iterations):
        seed = cfg.seed * 7907 + 31 * it
        torch.manual_seed(seed)
        buf = RolloutBuffer(
            T, obs_space, act_space, gamma=f.gamma, gae_lambda=f.gae_lambda, n_envs=n
        )
        elapsed_log = np.zeros((T, n), np.float32)
        h0 = torch.zeros(T // W, n, actor.state_size)  # state at the start of every window
        returns_done: list[float] = []
        with torch.no_grad():
            for t in range(T):
                h = h * torch.as_tensor(~start, dtype=torch.float32).unsqueeze(-1)
                if t % W == 0:
                    h0[t // W] = h
                x = torch.as_tensor(spec.normalize(obs), dtype=torch.float32)
                e = torch.as_tensor(dt / period, dtype=torch.float32)
                mean, h = actor.step(x, h, e)
                dist = torch.distributions.Normal(mean, log_std.exp())
                u = dist.sample()
                logp = dist.log_prob(u).sum(-1)
                value = values(obs)
                action = spec.to_physical(u.numpy().astype(np.float64))
                rewards = np.zeros(n)
                new_start = np.zeros(n, bool)
                next_obs = obs.copy()
                for i, env in enumerate(envs):
                    o, r, terminated, truncated, info = env.step(
                        action[i].astype(env.action_space.dtype)
                    )
                    ep_return[i] += r
                    if truncated and not terminated:  # bootstrap the cut-off tail (as SB3 does)
                        r += f.gamma * float(values(np.asarray(o, np.float64)[None])[0])
                    rewards[i] = r
                    dt[i] = float(info.get("dt", period))
                    if terminated or truncated:
                        returns_done.append(ep_return[i])
                        ep_return[i] = 0.0
                        o, _ = env.reset(seed=next_reset)
                        next_reset += 1
                        dt[i] = period
                        new_start[i] = True
                    next_obs[i] = o
                elapsed_log[t] = e.numpy()
                buf.add(obs.astype(np.float32), u.numpy(), rewards, start, value, logp)
                obs, start = next_obs, new_start
            buf.compute_returns_and_advantage(last_values=values(obs), dones=start)
        bar.update(n * T)

        # -- update over windows: (T/W * n) sequences of W steps, re-run from the stored states
        def seq(a: np.ndarray) -> torch.Tensor:
            """(T, n, ...) -> (T/W * n, W, ...): window-major, then env."""
            t = torch.as_tensor(a).reshape(T // W, W, n, *a.shape[2:]).transpose(1, 2)
            return t.reshape(T // W * n, W, *a.shape[2:])

        o_seq = seq(spec.normalize(buf.observations).astype(np.float32))
        a_seq, lp_seq = seq(buf.actions), seq(buf.log_probs)
        adv_seq, ret_seq = seq(buf.advantages), seq(buf.returns)
        st_seq, e_seq = seq(buf.episode_starts.astype(np.float32)), seq(elapsed_log)
        h_seq = h0.reshape(T // W * n, actor.state_size)
        train_actor = it >= f.critic_warmup_rollouts
        gen = torch.Generator().manual_seed(seed)
        stats = []
        for _ in range(f.epochs):
            perm = torch.randperm(len(o_seq), generator=gen)
            for b in range(0, len(perm), f.batch_size):
                sel = perm[b : b + f.batch_size]
                v = critic(o_seq[sel]).squeeze(-1)
                v_loss = ((v - ret_seq[sel]) ** 2).mean()
                opt_critic.zero_grad()
                v_loss.backward()
                torch.nn.utils.clip_grad_norm_(critic.parameters(), 0.5)
                opt_critic.step()
                if not train_actor:
                    continue
                hh, means = h_seq[sel], []
                for k in range(W):
                    hh = hh * (1.0 - st_seq[sel][:, k]).unsqueeze(-1)
                    m, hh = actor.step(o_seq[sel][:, k], hh, e_seq[sel][:, k])
                    means.append(m)
                dist = torch.distributions.Normal(torch.stack(means, 1), log_std.exp())
                logp = dist.log_prob(a_seq[sel]).sum(-1)
                adv = adv_seq[sel]
                adv = (adv - adv.mean()) / (adv.std() + 1e-8)
                ratio = torch.exp(logp - lp_seq[sel])
                pg = -torch.min(
                    ratio * adv, ratio.clamp(1 - f.clip_range, 1 + f.clip_range) * adv
                ).mean()
                loss = pg - f.ent_coef * dist.entropy().sum(-1).mean()
                opt_actor.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_([*actor.parameters(), log_std], 0.5)
                opt_actor.step()
                stats.append(float(pg))
        ret = evaluate_student(actor, spec, cfg, f.eval_episodes, eval_seed)
        record = {
            "iteration": it,
            "eval_return": ret,
            "train_episode_return": float(np.mean(returns_done)) if returns_done else float("nan"),
            "policy_loss": float(np.mean(stats)) if stats else None,
            "log_std": log_std.detach().tolist(),
            "actor_trained": train_actor,
        }
        if train_actor and ret > state["best_return"]:
            state["best_return"] = ret
            write_tensors(out / "best_ltc.safetensors", actor.state_dict())
        state["history"].append(record)
        bar.set_postfix(eval=f"{ret:.1f}", best=f"{state['best_return']:.1f}")
        _save(out, state, it + 1, actor, critic, log_std, opt_actor, opt_critic)
    bar.close()
    for env in envs:
        env.close()
    actor.load_state_dict(read_tensors(out / "best_ltc.safetensors"))
    policy = actor.to_policy(spec, provenance={"stage": "finetune", "task": cfg.name})
    policy.save(out / "ltc19_finetuned.lcp")
    improved = state["best_return"] > state["distilled_return"]
    write_json(
        out / "done.json",
        {
            "improved": improved,
            "distilled_return": state["distilled_return"],
            "finetuned_return": state["best_return"],
            "eval_episodes": f.eval_episodes,
            "history": state["history"],
        },
    )
    return out


def _save(
    out: Path, state: dict, iteration: int, actor, critic, log_std, opt_actor, opt_critic
) -> None:
    weights = {
        **{f"ltc.{k}": v for k, v in actor.state_dict().items()},
        **{f"critic.{k}": v for k, v in critic.state_dict().items()},
        "log_std": log_std.detach(),
    }
    name = f"iter{iteration}.safetensors"
    write_tensors(out / name, weights)
    optim = f"iter{iteration}_optim.safetensors"
    write_state_dicts(
        out / optim, {"actor": opt_actor.state_dict(), "critic": opt_critic.state_dict()}
    )
    state.update(iteration=iteration, weights=name, optim=optim)
    write_json(out / "progress.json", state)
    for old in out.glob("iter*"):
        if old.name not in (name, optim):
            old.unlink(missing_ok=True)
