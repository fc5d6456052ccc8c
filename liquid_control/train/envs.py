"""Environments for training and evaluation: construction, interface specs, perturbations.

Our own robots (``LiquidControl/...``) are built with `liquid_control.envs.wrappers.make_env`, which
applies the training randomisation of the task's YAML; gymnasium's envs with `gymnasium.make`. Both
give raw observations in robot units and take actions in robot units; every env built here reports
``info["dt"]``, the simulated time the step actually advanced (seconds), measured on the MuJoCo
clock where there is one.

The evaluation perturbations are generic wrappers over any MuJoCo-backed env: observation noise
(a fraction of each observation's std), action latency (whole control steps), mass and friction
scaling, and dt jitter (the physics timestep redrawn every control step).
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any

import gymnasium as gym
import numpy as np

from ..core.spec import ActionElement, InterfaceSpec, ObservationElement

OWN_PREFIX = "LiquidControl/"


def spec_for_gym_env(env: gym.Env, robot: str | None = None) -> InterfaceSpec:
    """The interface spec of an env that is not a ROS robot (e.g. gymnasium's MuJoCo tasks).

    Observation i is ``obs_i``, read from index i of a std_msgs/Float64MultiArray on topic
    ``observation``; action j is ``act_j``, written to index j of a Float64MultiArray on ``command``,
    with the action space's bounds as limits. The control rate is 1 / env.dt.
    """
    obs_space, act_space = env.observation_space, env.action_space
    if not isinstance(act_space, gym.spaces.Box) or not isinstance(obs_space, gym.spaces.Box):
        raise ValueError(
            f"env: expected Box observation and action spaces, got {obs_space} and {act_space}"
        )
    dt = float(getattr(env.unwrapped, "dt", 0.0) or 0.0)
    if dt <= 0:
        raise ValueError("env.unwrapped.dt: expected the control period in seconds (> 0)")
    observations = [
        ObservationElement(f"obs_{i}", "observation", "std_msgs/Float64MultiArray", "data", index=i)
        for i in range(int(np.prod(obs_space.shape)))
    ]
    actions = [
        ActionElement(
            f"act_{j}",
            "command",
            "std_msgs/Float64MultiArray",
            "data",
            index=j,
            low=float(lo),
            high=float(hi),
        )
        for j, (lo, hi) in enumerate(
            zip(act_space.low.ravel(), act_space.high.ravel(), strict=True)
        )
    ]
    name = robot or (env.spec.id if env.spec is not None else type(env.unwrapped).__name__)
    return with_unit_action_scaling(
        InterfaceSpec(
            name, observations, actions, 1.0 / dt, description="gymnasium env (not a ROS robot)"
        )
    )


def with_unit_action_scaling(spec: InterfaceSpec) -> InterfaceSpec:
    """A copy whose action scale/offset map network outputs in [-1, 1] onto [low, high]."""
    actions = tuple(
        dataclasses.replace(a, scale=(a.high - a.low) / 2.0 or 1.0, offset=(a.high + a.low) / 2.0)
        for a in spec.actions
    )
    return InterfaceSpec(
        spec.robot,
        spec.observations,
        actions,
        spec.control_rate_hz,
        spec.description,
        dict(spec.extra),
    )


def interface_spec(env: gym.Env) -> InterfaceSpec:
    """The env's own interface spec (our robots), else the generic one; actions scaled to [-1, 1]."""
    u = env.unwrapped
    for name in ("interface_spec", "spec"):
        obj = getattr(u, name, None)
        if callable(obj):
            try:
                obj = obj()
            except TypeError:
                continue
        if isinstance(obj, InterfaceSpec):
            return with_unit_action_scaling(obj)
    return spec_for_gym_env(env)


class MeasuredDt(gym.Wrapper):
    """Puts the simulated time a step advanced into ``info["dt"]`` (MuJoCo clock if there is one)."""

    def step(self, action):
        data = getattr(self.env.unwrapped, "data", None)
        t0 = float(data.time) if data is not None else None
        obs, reward, terminated, truncated, info = self.env.step(action)
        if t0 is not None and float(data.time) > t0:
            info["dt"] = float(data.time) - t0
        else:
            info.setdefault("dt", float(getattr(self.env.unwrapped, "dt", 0.0)))
        return obs, reward, terminated, truncated, info


class ObservationNoise(gym.ObservationWrapper):
    """Adds Gaussian noise of ``std`` (per element, robot units) to every observation."""

    def __init__(self, env: gym.Env, std: np.ndarray, seed: int | None = None) -> None:
        super().__init__(env)
        self.std = np.asarray(std, np.float64)
        self.rng = np.random.default_rng(seed)

    def observation(self, observation):
        return observation + self.rng.normal(0.0, 1.0, np.shape(observation)) * self.std


class ActionLatency(gym.Wrapper):
    """Applies the action commanded ``steps`` control steps earlier (the midpoint before that)."""

    def __init__(self, env: gym.Env, steps: int) -> None:
        super().__init__(env)
        self.steps = int(steps)
        self.queue: collections.deque = collections.deque()

    def _neutral(self) -> np.ndarray:
        space = self.env.action_space
        return ((space.low + space.high) / 2.0).astype(space.dtype)

    def reset(self, **kwargs):
        self.queue = collections.deque([self._neutral()] * self.steps)
        return self.env.reset(**kwargs)

    def step(self, action):
        self.queue.append(np.asarray(action))
        return self.env.step(self.queue.popleft())


def _mujoco_model(env: gym.Env, what: str):
    model = getattr(env.unwrapped, "model", None)
    if model is None:
        raise ValueError(f"{what}: the env has no MuJoCo model (env.unwrapped.model)")
    return model


class PhysicsShift(gym.Wrapper):
    """Scales every body mass (and inertia) and every friction coefficient of the MuJoCo model.

    Our robots keep their nominal model and re-apply scales at every reset (`set_physics_scales`);
    for other MuJoCo envs the model is edited once, here.
    """

    def __init__(self, env: gym.Env, mass_scale: float = 1.0, friction_scale: float = 1.0) -> None:
        super().__init__(env)
        robot = env.unwrapped
        if hasattr(robot, "set_physics_scales"):
            robot.set_physics_scales({"mass": mass_scale, "friction": friction_scale})
            return
        model = _mujoco_model(env, "mass/friction shift")
        model.body_mass[:] = model.body_mass * mass_scale
        model.body_inertia[:] = model.body_inertia * mass_scale
        model.geom_friction[:] = model.geom_friction * friction_scale


class DtJitter(gym.Wrapper):
    """Redraws the control period every step: dt ~ U[1 - j, 1 + j] x nominal.

    Our robots take the period directly (`next_control_period_s`); other MuJoCo envs get their
    physics timestep scaled (frame_skip timesteps per control step).
    """

    def __init__(self, env: gym.Env, jitter: float, seed: int | None = None) -> None:
        super().__init__(env)
        self.robot = env.unwrapped
        self.own = hasattr(self.robot, "next_control_period_s")
        if self.own:
            self.nominal = float(self.robot.interface_spec.control_period_s)
        else:
            self.model = _mujoco_model(env, "dt jitter")
            self.nominal = float(self.model.opt.timestep)
        self.jitter = float(jitter)
        self.rng = np.random.default_rng(seed)

    def step(self, action):
        value = self.nominal * self.rng.uniform(1 - self.jitter, 1 + self.jitter)
        if self.own:
            self.robot.next_control_period_s = value
        else:
            self.model.opt.timestep = value
        return self.env.step(action)


def _episode_kwargs(env_cfg: Any) -> dict:
    """The env's kwargs with `env.max_episode_steps` (the one place for the episode length; the
    old spelling `env.kwargs.max_episode_steps` still works, the config refuses both at once)."""
    kwargs = dict(env_cfg.kwargs)
    if env_cfg.max_episode_steps:
        kwargs["max_episode_steps"] = env_cfg.max_episode_steps
    return kwargs


def make_env_checked(env_cfg: Any, message: str, seed: int | None = 0) -> gym.Env:
    """`make_env` (nominal), or a one-line ConfigError, `message` and gymnasium's reason, for an
    id gymnasium cannot make (unknown, or missing a package it needs)."""
    from .config import ConfigError

    try:
        return make_env(env_cfg, seed=seed, randomize=False)
    except (gym.error.Error, ImportError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigError(f"{message} ({first})") from None


def make_env(
    env_cfg: Any,
    seed: int | None = None,
    randomize: bool = True,
    perturb: dict[str, float] | None = None,
    obs_std: np.ndarray | None = None,
) -> gym.Env:
    """Build one env: training randomisation (own robots, if `randomize`), then the evaluation
    perturbations in `perturb` (keys of config.PERTURBATIONS), then dt measurement.

    `obs_std` (robot units, one per observation) scales ``obs_noise``; by default the spec's std.
    """
    if env_cfg.id.startswith(OWN_PREFIX):
        import liquid_control.envs  # noqa: F401  (registers our envs)
        from liquid_control.envs.wrappers import make_env as make_own_env

        env = make_own_env(
            env_cfg.id, dict(env_cfg.wrappers) if randomize else {}, **_episode_kwargs(env_cfg)
        )
    else:
        env = gym.make(env_cfg.id, **_episode_kwargs(env_cfg))
        if randomize and env_cfg.wrappers:
            env = apply_perturbations(env, env_cfg.wrappers, seed, obs_std)
    if perturb:
        env = apply_perturbations(env, perturb, seed, obs_std)
    env = MeasuredDt(env)
    if seed is not None:
        env.action_space.seed(seed)
    return env


def apply_perturbations(
    env: gym.Env, perturb: dict[str, float], seed: int | None, obs_std: np.ndarray | None = None
) -> gym.Env:
    p = dict(perturb)
    if p.get("mass_scale", 1.0) != 1.0 or p.get("friction_scale", 1.0) != 1.0:
        env = PhysicsShift(env, p.get("mass_scale", 1.0), p.get("friction_scale", 1.0))
    if p.get("dt_jitter", 0.0) > 0:
        env = DtJitter(env, p["dt_jitter"], None if seed is None else seed + 1)
    if p.get("action_latency", 0) > 0:
        env = ActionLatency(env, int(p["action_latency"]))
    if p.get("obs_noise", 0.0) > 0:
        std = interface_spec(env).obs_std if obs_std is None else np.asarray(obs_std)
        env = ObservationNoise(env, p["obs_noise"] * std, None if seed is None else seed + 2)
    unknown = set(p) - {"mass_scale", "friction_scale", "dt_jitter", "action_latency", "obs_noise"}
    if unknown:
        raise ValueError(f"perturbations: unknown {sorted(unknown)}")
    return env


def perturbation_cases(perturbations: dict[str, float]) -> dict[str, dict[str, float]]:
    """Evaluation cases: nominal, then one case per configured perturbation (one at a time)."""
    cases: dict[str, dict[str, float]] = {"nominal": {}}
    for key, value in perturbations.items():
        cases[f"{key}={value:g}"] = {key: value}
    return cases
