"""Agents and closed-loop rollouts shared by distillation, fine-tuning and evaluation.

An agent maps a batch of raw observations (robot units) and the time since each env's previous
observation (seconds) to actions (robot units), keeping one recurrent state per env:

    agent.reset(n)                 # n envs, all states zero
    agent.reset_rows(mask)         # zero the states where an episode restarts
    actions = agent.act(obs, dt)   # obs (n, obs_dim), dt (n,) -> (n, action_dim)

Environments run side by side in lock step ("lockstep"), so the students' torch steps are batched.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import gymnasium as gym
import numpy as np

from ..core.policy import Policy
from ..core.spec import InterfaceSpec
from ..robots import reduce_figures, robot_of_env


class TeacherAgent:
    def __init__(self, teacher) -> None:
        self.teacher = teacher

    def reset(self, n: int) -> None:
        pass

    def reset_rows(self, mask: np.ndarray) -> None:
        pass

    def act(self, obs: np.ndarray, dt: np.ndarray) -> np.ndarray:
        return self.teacher.act(obs)


class TorchStudentAgent:
    """A torch student (LTC or LSTM module) on normalised input, elapsed = dt / control period."""

    def __init__(self, model, spec: InterfaceSpec) -> None:
        self.model, self.spec = model, spec
        self.h = None
        self.last_state: np.ndarray | None = None

    def reset(self, n: int) -> None:
        import torch

        self.h = torch.zeros(n, self.model.state_size)

    def reset_rows(self, mask: np.ndarray) -> None:
        if mask.any():
            self.h[np.flatnonzero(mask)] = 0.0

    def act(self, obs: np.ndarray, dt: np.ndarray) -> np.ndarray:
        import torch

        x = torch.as_tensor(self.spec.normalize(obs), dtype=torch.float32)
        elapsed = torch.as_tensor(np.asarray(dt) / self.spec.control_period_s, dtype=torch.float32)
        with torch.no_grad():
            y, self.h = self.model.step(x, self.h, elapsed)
        self.last_state = self.h.numpy().copy()
        return self.spec.to_physical(y.numpy().astype(np.float64))


class PolicyAgent:
    """The deploy path: one numpy `core.Policy` per env (what the robot runs)."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.copies: list[Policy] = []
        self.last_state: np.ndarray | None = None

    def reset(self, n: int) -> None:
        # fresh instances: the runtime's work buffers are views that copy.deepcopy would detach
        p = self.policy
        self.copies = [
            Policy(p.wiring, p.params, p.spec, p.ode_unfolds, p.epsilon, p.time_unit_s)
            for _ in range(n)
        ]

    def reset_rows(self, mask: np.ndarray) -> None:
        for i in np.flatnonzero(mask):
            self.copies[i].reset()

    def act(self, obs: np.ndarray, dt: np.ndarray) -> np.ndarray:
        actions = np.stack(
            [p.step(o, dt=float(d)) for p, o, d in zip(self.copies, obs, dt, strict=True)]
        )
        self.last_state = np.stack([p.state for p in self.copies])
        return actions


@dataclass
class Episodes:
    """Result of `run_episodes`: one entry per episode.

    returns: (episodes,) summed rewards; lengths: (episodes,) control steps.
    actions: per episode, (length, action_dim) the actions the agent sent, robot units (always
        kept: a few kB per episode, what the smoothness figures are computed from).
    figures: per episode, the robot's episode figures (its registry entry's `episode_figures`:
        falls, tracking error, reach success, ...), empty for envs that are not our robots.
    traces: per episode, {"obs", "action", "reward", "dt", "state"} arrays if record=True.
    """

    returns: np.ndarray
    lengths: np.ndarray
    actions: list[np.ndarray] = field(default_factory=list)
    figures: list[dict[str, float]] = field(default_factory=list)
    traces: list[dict[str, np.ndarray]] = field(default_factory=list)


def run_episodes(
    agent,
    make: Callable[[int], gym.Env],
    seeds: list[int],
    record: bool = False,
    progress=None,
) -> Episodes:
    """One episode per seed, all side by side; `make(seed)` builds the env for that seed."""
    envs = [make(s) for s in seeds]
    n = len(envs)
    obs = np.stack([env.reset(seed=s)[0] for env, s in zip(envs, seeds, strict=True)]).astype(
        np.float64
    )
    period = 1.0 / float(_control_rate(envs[0]))
    dt = np.full(n, period)
    agent.reset(n)
    alive = np.ones(n, bool)
    returns, lengths = np.zeros(n), np.zeros(n, int)
    traces = [{"obs": [], "action": [], "reward": [], "dt": [], "state": []} for _ in range(n)]
    sent: list[list[np.ndarray]] = [[] for _ in range(n)]
    figures = _episode_figures(envs[0])
    keys = {f.info_key for f in figures}
    infos: list[list[dict]] = [[] for _ in range(n)]
    while alive.any():
        actions = agent.act(obs, dt)
        state = getattr(agent, "last_state", None)
        for i in np.flatnonzero(alive):
            next_obs, reward, terminated, truncated, info = envs[i].step(
                actions[i].astype(envs[i].action_space.dtype)
            )
            sent[i].append(actions[i].copy())
            if keys:
                infos[i].append({k: info[k] for k in keys if k in info})
            if record:
                tr = traces[i]
                tr["obs"].append(obs[i].copy())
                tr["action"].append(actions[i].copy())
                tr["reward"].append(float(reward))
                tr["dt"].append(float(dt[i]))
                if state is not None:
                    tr["state"].append(state[i].copy())
            returns[i] += float(reward)
            lengths[i] += 1
            obs[i] = next_obs
            dt[i] = float(info.get("dt", period))
            if terminated or truncated:
                alive[i] = False
                if progress is not None:
                    progress.update(1)
    for env in envs:
        env.close()
    out = Episodes(
        returns,
        lengths,
        [np.asarray(a, np.float64) for a in sent],
        [reduce_figures(figures, steps) for steps in infos] if figures else [],
    )
    if record:
        out.traces = [{k: np.asarray(v) for k, v in tr.items()} for tr in traces]
    return out


def _episode_figures(env: gym.Env) -> tuple:
    """The episode figures of the robot whose env this is (none for gymnasium's own envs)."""
    robot = robot_of_env(env.spec.id) if env.spec is not None else None
    return robot.episode_figures if robot is not None else ()


def mean_figures(episodes: Episodes) -> dict[str, float]:
    """Each episode figure averaged over the episodes that have it (a count: its mean count)."""
    names = dict.fromkeys(k for f in episodes.figures for k in f)
    return {k: float(np.mean([f[k] for f in episodes.figures if k in f])) for k in names}


def _control_rate(env: gym.Env) -> float:
    from .envs import interface_spec

    return interface_spec(env).control_rate_hz
