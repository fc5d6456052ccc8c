"""Sim-to-real wrappers (gymnasium), configured from YAML, and `make_env`: the one set.

Training (the `env.wrappers` section of a training YAML), evaluation (`liquid-control eval
--perturb`, the evaluate stage's perturbations, through `perturbation_config`) and robot configs
(`config/wrappers_<robot>.yaml`) all use these classes, on our robots and on any gymnasium MuJoCo
task (Reacher, Hopper, ...; `generic` gives those a spec, a physics editor and a measured dt).
Each wrapper models one thing a real robot does to a policy, with every range in the config:

- `ObservationNoise`: Gaussian noise per channel, `scale` x the spec's `noise_std` (or x the
  stds given in `noise_std`, robot units).
- `ActionLatency`: the command applied is the one of k control steps ago, k drawn per episode;
  before k commands exist the robot holds its safe action (`core.safety.robot_safe_action`).
- `SensorDropout`: a topic's channels freeze at their last value for a while (a sensor stalls).
- `ControlJitter`: the control period varies step to step (normal or uniform); the period
  actually simulated is reported in `info["dt"]`, so the LTC integrates the real elapsed time.
- `DomainRandomization`: masses, friction, damping and motor gain scaled per episode, and constant
  sensor offsets per channel.

Config (YAML mapping; every section optional, `make_env` applies them in this order, outermost last):

    env_kwargs: {track_seed: 3}            # passed to gymnasium.make
    domain_randomization:
      mass: [0.8, 1.2]                      # factor ranges, drawn per body / dof / actuator
      friction: [0.7, 1.3]                  # one factor per episode
      damping: [0.5, 1.5]
      motor_gain: [0.85, 1.15]
      sensor_offset: {forward_speed: 0.02, yaw_rate: [-0.01, 0.02]}  # per channel: a std
                                            # (Gaussian) or [low, high] (uniform), per episode
    action_latency: {min_steps: 0, max_steps: 2}
    control_jitter: {std_fraction: 0.1, max_fraction: 0.3}   # or {distribution: uniform, max_fraction: 0.3}
    sensor_dropout: {probability: 0.01, min_steps: 2, max_steps: 10, per: topic}  # or channel
    observation_noise: {scale: 1.0}
"""

from __future__ import annotations

import os
from collections import deque
from typing import Any

import gymnasium as gym
import numpy as np
import yaml

from liquid_control.core.safety import robot_safe_action
from liquid_control.core.spec import InterfaceSpec

from .generic import MeasuredDt, ModelPhysics, is_own_robot, mujoco_model, raw_spec

SECTIONS = (
    "env_kwargs",
    "domain_randomization",
    "action_latency",
    "control_jitter",
    "sensor_dropout",
    "observation_noise",
)


class WrapperConfigError(ValueError):
    """A wrapper config is invalid (the message names the field, the value and what is expected)."""


def _spec(env: gym.Env, section: str) -> InterfaceSpec:
    """The spec the wrapper reads channels and limits from (ours, or the generic one)."""
    try:
        return raw_spec(env)
    except ValueError as exc:
        raise WrapperConfigError(f"{section}: {exc}") from None


def _range(where: str, value: Any, minimum: float = 0.0) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise WrapperConfigError(f"{where}: expected [low, high], got {value!r}") from None
    if not (np.isfinite(lo) and np.isfinite(hi)) or lo > hi or lo < minimum:
        raise WrapperConfigError(
            f"{where}: expected finite {minimum} <= low <= high, got {value!r}"
        )
    return lo, hi


def _number(where: str, value: Any, minimum: float = 0.0, maximum: float = np.inf) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise WrapperConfigError(f"{where}: expected a number, got {value!r}") from None
    if not np.isfinite(v) or not minimum <= v <= maximum:
        raise WrapperConfigError(
            f"{where}: expected a number in [{minimum}, {maximum}], got {value!r}"
        )
    return v


def _int(where: str, value: Any, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise WrapperConfigError(f"{where}: expected an integer >= {minimum}, got {value!r}")
    return int(value)


def _rng(wrapper: gym.Wrapper) -> np.random.Generator:
    """The wrapper's own generator, seeded from the env's seeded generator at reset."""
    return wrapper._wrapper_rng


class _SeededWrapper(gym.Wrapper):
    """Draws its randomness from its own generator: `reset(seed=s)` reseeds it from (s, wrapper
    name), so a wrapped episode is reproducible and the env's own generator (initial states, tracks)
    is left untouched: the same seed gives the same initial state with and without wrappers."""

    _wrapper_rng: np.random.Generator | None = None

    def _reseed(self, seed: int | None) -> None:
        if seed is not None:
            salt = sum(type(self).__name__.encode())
            self._wrapper_rng = np.random.default_rng((int(seed), salt))
        elif self._wrapper_rng is None:
            self._wrapper_rng = np.random.default_rng()


class ObservationNoise(_SeededWrapper):
    """Adds N(0, (scale * noise_std)^2) per observation channel; `noise_std` from the spec unless given."""

    def __init__(
        self, env: gym.Env, scale: float = 1.0, noise_std: list[float] | None = None
    ) -> None:
        super().__init__(env)
        spec = _spec(env, "observation_noise")
        std = spec.obs_noise_std if noise_std is None else np.asarray(noise_std, np.float64)
        if std.shape != (spec.obs_dim,) or not np.all(np.isfinite(std)) or np.any(std < 0):
            raise WrapperConfigError(
                f"observation_noise.noise_std: expected {spec.obs_dim} values >= 0, got {noise_std!r}"
            )
        self.std = _number("observation_noise.scale", scale) * std

    def _noisy(self, obs: np.ndarray) -> np.ndarray:
        return obs + _rng(self).normal(0.0, 1.0, obs.shape) * self.std

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        self._reseed(kwargs.get("seed"))
        return self._noisy(obs), info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        return self._noisy(obs), reward, terminated, truncated, info


class ActionLatency(_SeededWrapper):
    """Applies the command of k control steps ago; k ~ U{min_steps..max_steps} per episode.

    Before k commands exist the robot holds its safe action (`robot_safe_action`: the spec's
    `safe_action`, else zero clipped into the limits)."""

    def __init__(self, env: gym.Env, min_steps: int = 0, max_steps: int = 1) -> None:
        super().__init__(env)
        self.min_steps = _int("action_latency.min_steps", min_steps)
        self.max_steps = _int("action_latency.max_steps", max_steps)
        if self.max_steps < self.min_steps:
            raise WrapperConfigError(
                f"action_latency: max_steps ({max_steps}) < min_steps ({min_steps})"
            )
        self.safe_action = robot_safe_action(_spec(env, "action_latency"))
        self.latency_steps = 0
        self._queue: deque[np.ndarray] = deque()

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        self._reseed(kwargs.get("seed"))
        self.latency_steps = int(_rng(self).integers(self.min_steps, self.max_steps + 1))
        self._queue = deque([self.safe_action.copy()] * self.latency_steps)
        info["latency_steps"] = self.latency_steps
        return obs, info

    def step(self, action):
        self._queue.append(np.asarray(action, np.float64).copy())
        applied = self._queue.popleft()
        obs, reward, terminated, truncated, info = self.env.step(applied)
        info["latency_steps"] = self.latency_steps
        info["applied_action"] = applied
        return obs, reward, terminated, truncated, info


class SensorDropout(_SeededWrapper):
    """Each step, each group not already stalled stalls with `probability` for a duration of
    U{min_steps..max_steps} control steps; its channels keep the last value delivered.

    `per`: "topic" (a sensor stalls: all channels of one input topic freeze together, the default)
    or "channel" (each observation element on its own). `info["dropped"]` names the frozen groups.
    """

    def __init__(
        self,
        env: gym.Env,
        probability: float = 0.01,
        min_steps: int = 1,
        max_steps: int = 5,
        per: str = "topic",
    ) -> None:
        super().__init__(env)
        self.probability = _number("sensor_dropout.probability", probability, 0.0, 1.0)
        self.min_steps = _int("sensor_dropout.min_steps", min_steps, 1)
        self.max_steps = _int("sensor_dropout.max_steps", max_steps, 1)
        if self.max_steps < self.min_steps:
            raise WrapperConfigError(
                f"sensor_dropout: max_steps ({max_steps}) < min_steps ({min_steps})"
            )
        spec = _spec(env, "sensor_dropout")
        if per == "topic":
            self.groups = {
                t: np.array([i for i, e in enumerate(spec.observations) if e.topic == t])
                for t in spec.observation_topics()
            }
        elif per == "channel":
            self.groups = {e.name: np.array([i]) for i, e in enumerate(spec.observations)}
        else:
            raise WrapperConfigError(
                f"sensor_dropout.per: expected 'topic' or 'channel', got {per!r}"
            )
        self._remaining = dict.fromkeys(self.groups, 0)
        self._last: np.ndarray | None = None

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        self._reseed(kwargs.get("seed"))
        self._remaining = dict.fromkeys(self.groups, 0)
        self._last = np.array(obs, copy=True)
        info["dropped"] = []
        return obs, info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        obs = np.array(obs, copy=True)
        rng = _rng(self)
        dropped = []
        for group, slots in self.groups.items():
            if self._remaining[group] == 0 and rng.random() < self.probability:
                self._remaining[group] = int(rng.integers(self.min_steps, self.max_steps + 1))
            if self._remaining[group] > 0:
                self._remaining[group] -= 1
                obs[slots] = self._last[slots]
                dropped.append(group)
        self._last = obs.copy()
        info["dropped"] = dropped
        return obs, reward, terminated, truncated, info


class ControlJitter(_SeededWrapper):
    """The control period of each step is nominal * (1 + e): e ~ N(0, std_fraction^2) clipped to
    +-max_fraction (`distribution` "normal"), or e ~ U[-max_fraction, max_fraction] ("uniform").
    `info["dt"]` reports the period simulated (seconds). Our robots simulate the period itself;
    a gymnasium MuJoCo env gets its physics timestep scaled for the step (frame_skip timesteps)."""

    def __init__(
        self,
        env: gym.Env,
        std_fraction: float = 0.1,
        max_fraction: float = 0.3,
        distribution: str = "normal",
    ) -> None:
        super().__init__(env)
        self.std_fraction = _number("control_jitter.std_fraction", std_fraction)
        self.max_fraction = _number("control_jitter.max_fraction", max_fraction, 0.0, 0.999)
        if distribution not in ("normal", "uniform"):
            raise WrapperConfigError(
                f"control_jitter.distribution: expected 'normal' or 'uniform', got {distribution!r}"
            )
        self.distribution = distribution
        self.own = is_own_robot(env)
        if self.own:
            self.nominal_s = _spec(env, "control_jitter").control_period_s
        else:
            try:
                self.model = mujoco_model(env, "control_jitter")
            except ValueError as exc:
                raise WrapperConfigError(str(exc)) from None
            self.nominal_s = float(self.model.opt.timestep)

    def reset(self, **kwargs):
        out = self.env.reset(**kwargs)
        self._reseed(kwargs.get("seed"))
        return out

    def _fraction(self) -> float:
        if self.distribution == "uniform":
            return float(_rng(self).uniform(-self.max_fraction, self.max_fraction))
        e = _rng(self).normal(0.0, self.std_fraction)
        return float(np.clip(e, -self.max_fraction, self.max_fraction))

    def step(self, action):
        period = self.nominal_s * (1.0 + self._fraction())
        if self.own:
            self.env.unwrapped.next_control_period_s = period
            return self.env.step(action)
        self.model.opt.timestep = period
        try:
            return self.env.step(action)
        finally:
            self.model.opt.timestep = self.nominal_s


class DomainRandomization(_SeededWrapper):
    """Per episode: physics factors drawn from the config's ranges, and constant sensor offsets.

    Masses are drawn per body, damping per dof, motor gain per actuator, friction once (floor and
    tyre contact). Sensor offsets ~ N(0, std^2) per named channel are added to the observation.
    The draws of the episode are in `info["randomization"]` at reset. Our robots apply the factors
    at their reset; a gymnasium MuJoCo env gets its model scaled from its nominal values here."""

    def __init__(
        self,
        env: gym.Env,
        mass: list[float] | None = None,
        friction: list[float] | None = None,
        damping: list[float] | None = None,
        motor_gain: list[float] | None = None,
        sensor_offset: dict[str, float] | None = None,
    ) -> None:
        super().__init__(env)
        self.ranges = {
            k: _range(f"domain_randomization.{k}", v, minimum=1e-6)
            for k, v in (
                ("mass", mass),
                ("friction", friction),
                ("damping", damping),
                ("motor_gain", motor_gain),
            )
            if v is not None
        }
        spec = _spec(env, "domain_randomization")
        names = [e.name for e in spec.observations]
        self.offset_std = np.zeros(spec.obs_dim)
        self.offset_range: dict[int, tuple[float, float]] = {}
        for name, value in (sensor_offset or {}).items():
            if name not in names:
                raise WrapperConfigError(
                    f"domain_randomization.sensor_offset: unknown channel {name!r}; expected one of {names}"
                )
            where = f"domain_randomization.sensor_offset.{name}"
            if isinstance(value, (list, tuple)):  # a range: uniform offset in [low, high]
                self.offset_range[names.index(name)] = _range(where, value, minimum=-np.inf)
            else:  # a number: Gaussian offset with this std
                self.offset_std[names.index(name)] = _number(where, value)
        self.offset = np.zeros(spec.obs_dim)
        try:
            mujoco_model(env, "domain_randomization")
            self._physics = env.unwrapped if is_own_robot(env) else ModelPhysics(env)
        except ValueError as exc:
            raise WrapperConfigError(str(exc)) from None

    def _draw(self, rng: np.random.Generator) -> dict[str, Any]:
        m = self.env.unwrapped.model  # (ours may rebuild it per episode: the current one)
        sizes = {"mass": m.nbody, "friction": 1, "damping": m.nv, "motor_gain": m.nu}
        scales = {}
        for k, (lo, hi) in self.ranges.items():
            draw = rng.uniform(lo, hi, sizes[k])
            scales[k] = float(draw[0]) if k == "friction" else draw
        return scales

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        self._reseed(seed)  # the draws come before the inner reset (they change the model)
        rng = _rng(self)
        scales = self._draw(rng)
        self._physics.set_physics_scales(scales)
        self.offset = rng.normal(0.0, 1.0, self.offset_std.shape) * self.offset_std
        for i, (lo, hi) in self.offset_range.items():
            self.offset[i] = rng.uniform(lo, hi)
        obs, info = self.env.reset(seed=seed, options=options)
        info["randomization"] = {**scales, "sensor_offset": self.offset.copy()}
        return obs + self.offset, info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        return obs + self.offset, reward, terminated, truncated, info


WRAPPERS = (
    ("domain_randomization", DomainRandomization),
    ("action_latency", ActionLatency),
    ("control_jitter", ControlJitter),
    ("sensor_dropout", SensorDropout),
    ("observation_noise", ObservationNoise),
)


def check_config(config: dict[str, Any] | None) -> dict[str, Any]:
    """Validate the top-level layout of a wrapper config (sections and their types)."""
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise WrapperConfigError(
            f"wrappers config: expected a mapping, got {type(config).__name__}"
        )
    unknown = sorted(set(config) - set(SECTIONS))
    if unknown:
        raise WrapperConfigError(
            f"wrappers config: unknown sections {unknown}; expected some of {list(SECTIONS)}"
        )
    for key, value in config.items():
        if value is not None and not isinstance(value, dict):
            raise WrapperConfigError(f"wrappers config.{key}: expected a mapping, got {value!r}")
    return config


def load_wrappers_config(path: str) -> dict[str, Any]:
    """Read a wrapper config YAML file (see the module docstring for its layout)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"wrappers config: no file at {path}")
    with open(path, encoding="utf-8") as f:
        return check_config(yaml.safe_load(f) or {})


def apply_wrappers(env: gym.Env, config: dict[str, Any] | None) -> gym.Env:
    """Wrap `env` with the sections present in `config`, in the order of `WRAPPERS`."""
    config = check_config(config)
    for key, cls in WRAPPERS:
        section = config.get(key)
        if section is None:
            continue
        try:
            env = cls(env, **section)
        except TypeError as exc:
            raise WrapperConfigError(f"wrappers config.{key}: {exc}") from exc
    return env


# Evaluation perturbations (`liquid-control eval --perturb`, `evaluate.perturbations`): one value
# each, turned into a section of the wrapper config above by `perturbation_config`.
PERTURBATIONS = ("obs_noise", "action_latency", "mass_scale", "friction_scale", "dt_jitter")


def perturbation_config(perturb: dict[str, float], obs_std: np.ndarray) -> dict[str, Any]:
    """The wrapper config of evaluation perturbations: `obs_noise` x each observation's std
    (`obs_std`, robot units), `action_latency` whole steps, `mass_scale` and `friction_scale`
    factors, `dt_jitter` j (the period ~ U[1 - j, 1 + j] x nominal)."""
    unknown = sorted(set(perturb) - set(PERTURBATIONS))
    if unknown:
        raise WrapperConfigError(
            f"perturbations: unknown {unknown}; expected some of {list(PERTURBATIONS)}"
        )
    p = dict(perturb)
    config: dict[str, Any] = {}
    physics = {
        key: [float(p[name])] * 2
        for name, key in (("mass_scale", "mass"), ("friction_scale", "friction"))
        if p.get(name, 1.0) != 1.0
    }
    if physics:
        config["domain_randomization"] = physics
    if p.get("action_latency", 0) > 0:
        k = int(p["action_latency"])
        config["action_latency"] = {"min_steps": k, "max_steps": k}
    if p.get("dt_jitter", 0.0) > 0:
        config["control_jitter"] = {"distribution": "uniform", "max_fraction": p["dt_jitter"]}
    if p.get("obs_noise", 0.0) > 0:
        std = np.asarray(obs_std, np.float64) * float(p["obs_noise"])
        config["observation_noise"] = {"noise_std": std.tolist(), "scale": 1.0}
    return config


def make_env(
    env_id: str, wrappers_config: dict[str, Any] | str | None = None, **env_kwargs
) -> gym.Env:
    """`gymnasium.make(env_id)` with the sim-to-real wrappers of a config (dict or YAML path);
    any env id, ours or gymnasium's. Every step reports ``info["dt"]``."""
    import liquid_control.envs  # noqa: F401  (registers the ids)

    config = (
        load_wrappers_config(wrappers_config)
        if isinstance(wrappers_config, str)
        else check_config(wrappers_config)
    )
    kwargs = {**(config.get("env_kwargs") or {}), **env_kwargs}
    env = gym.make(env_id, **kwargs)
    if not is_own_robot(env):
        env = MeasuredDt(env)
    return apply_wrappers(env, config)
