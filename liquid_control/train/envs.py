"""Environments for training and evaluation: construction, interface specs, perturbations.

Every env is built by `liquid_control.envs.wrappers.make_env`, ours (``LiquidControl/...``) and
gymnasium's alike, with the one set of sim-to-real wrappers: the training randomisation of the
task's YAML (`env.wrappers`, the same sections for every env), then the evaluation perturbations
(`perturb`, turned into wrapper sections by `wrappers.perturbation_config`). Every env gives raw
observations in robot units, takes actions in robot units and reports ``info["dt"]``, the
simulated time the step actually advanced (seconds).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from ..envs.generic import interface_spec, spec_for_gym_env, with_unit_action_scaling
from ..envs.wrappers import apply_wrappers, perturbation_config

__all__ = [
    "apply_perturbations",
    "interface_spec",
    "make_env",
    "make_env_checked",
    "perturbation_cases",
    "spec_for_gym_env",
    "with_unit_action_scaling",
]


def _episode_kwargs(env_cfg: Any) -> dict:
    """The env's kwargs with `env.max_episode_steps` (the one place for the episode length; the
    old spelling `env.kwargs.max_episode_steps` still works, the config refuses both at once)."""
    kwargs = dict(env_cfg.kwargs)
    if env_cfg.max_episode_steps:
        kwargs["max_episode_steps"] = env_cfg.max_episode_steps
    return kwargs


def make_env_checked(
    env_cfg: Any, message: str, seed: int | None = 0, randomize: bool = False
) -> gym.Env:
    """`make_env`, or a one-line ConfigError: `message` and gymnasium's reason for an id gymnasium
    cannot make (unknown, or missing a package it needs), or the wrapper section that is wrong."""
    from ..envs.wrappers import WrapperConfigError
    from ..robots import RobotError, robot_of_env
    from .config import ConfigError

    robot = robot_of_env(env_cfg.id)
    try:
        if robot is not None:
            robot.check_available()
        return make_env(env_cfg, seed=seed, randomize=randomize)
    except (gym.error.Error, ImportError, RobotError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigError(f"{message} ({first})") from None
    except WrapperConfigError as exc:
        raise ConfigError(f"env.wrappers: {exc}") from None


def make_env(
    env_cfg: Any,
    seed: int | None = None,
    randomize: bool = True,
    perturb: dict[str, float] | None = None,
    obs_std: np.ndarray | None = None,
) -> gym.Env:
    """Build one env: training randomisation (`env_cfg.wrappers`, if `randomize`), then the
    evaluation perturbations in `perturb` (keys of `wrappers.PERTURBATIONS`).

    `obs_std` (robot units, one per observation) scales ``obs_noise``; by default the spec's std.
    """
    import liquid_control.envs  # noqa: F401  (registers our envs)
    from liquid_control.envs.wrappers import make_env as make_wrapped

    env = make_wrapped(
        env_cfg.id, dict(env_cfg.wrappers) if randomize else {}, **_episode_kwargs(env_cfg)
    )
    if perturb:
        env = apply_perturbations(env, perturb, seed, obs_std)
    if seed is not None:
        env.action_space.seed(seed)
    return env


def apply_perturbations(
    env: gym.Env, perturb: dict[str, float], seed: int | None, obs_std: np.ndarray | None = None
) -> gym.Env:
    """`env` with the wrappers of evaluation perturbations (see `wrappers.perturbation_config`).
    Their draws follow the seed of each `reset(seed=...)`; `seed` is kept for the callers."""
    std = interface_spec(env).obs_std if obs_std is None else np.asarray(obs_std)
    return apply_wrappers(env, perturbation_config(perturb, std))


def perturbation_cases(perturbations: dict[str, float]) -> dict[str, dict[str, float]]:
    """Evaluation cases: nominal, then one case per configured perturbation (one at a time)."""
    cases: dict[str, dict[str, float]] = {"nominal": {}}
    for key, value in perturbations.items():
        cases[f"{key}={value:g}"] = {key: value}
    return cases
