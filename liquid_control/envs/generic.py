"""What the sim-to-real wrappers need of any MuJoCo env, ours or gymnasium's.

Our robots (`base.MujocoRobotEnv`) carry their interface spec, take the control period of the next
step (`next_control_period_s`) and re-apply physics scales at every reset. Gymnasium's MuJoCo tasks
(Reacher, Hopper, ...) get a generic spec (`spec_for_gym_env`), their physics timestep scaled for a
jittered step, and their model edited in place (`ModelPhysics`); `MeasuredDt` reports the simulated
time of every step in ``info["dt"]`` for them as our robots do.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import gymnasium as gym
import numpy as np

from liquid_control.core.spec import ActionElement, InterfaceSpec, ObservationElement

from .base import apply_physics_scales, check_physics_scales, nominal_physics


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


def raw_spec(env: gym.Env) -> InterfaceSpec:
    """The env's own interface spec (our robots), else the generic one of `spec_for_gym_env`."""
    spec = getattr(env.unwrapped, "interface_spec", None)
    return spec if isinstance(spec, InterfaceSpec) else spec_for_gym_env(env)


def interface_spec(env: gym.Env) -> InterfaceSpec:
    """`raw_spec` with actions scaled to [-1, 1] (what a student's outputs map through)."""
    return with_unit_action_scaling(raw_spec(env))


def is_own_robot(env: gym.Env) -> bool:
    """True for our MuJoCo robots (`base.MujocoRobotEnv`)."""
    return hasattr(env.unwrapped, "next_control_period_s")


def mujoco_model(env: gym.Env, what: str) -> Any:
    """The env's MuJoCo model, or a ValueError naming `what` needs it."""
    model = getattr(env.unwrapped, "model", None)
    if model is None or not hasattr(model, "opt"):
        raise ValueError(f"{what}: the env has no MuJoCo model (env.unwrapped.model)")
    return model


class ModelPhysics:
    """`set_physics_scales` for a gymnasium MuJoCo env: its model keeps the nominal values of the
    first call and is scaled from them at once (the env keeps one model across resets)."""

    def __init__(self, env: gym.Env) -> None:
        self.model = mujoco_model(env, "domain randomisation")
        self.data = env.unwrapped.data
        self.nominal = nominal_physics(self.model)

    def set_physics_scales(self, scales: dict[str, Any]) -> None:
        apply_physics_scales(self.model, self.data, self.nominal, check_physics_scales(scales))


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
