"""Gymnasium envs over MuJoCo robot models, and the sim-to-real wrappers.

Importing this package registers the gymnasium id of every robot in the robot registry
(`liquid_control.robots`), for example:

    LiquidControl/CartPoleSwingUp-v0   cart-pole swing-up and balance (joint space), 50 Hz, 500 steps
    LiquidControl/CartPoleBalance-v0   the same robot started upright, 50 Hz, 500 steps
    LiquidControl/RoverLane-v0         differential-drive rover on a walled lane, 20 Hz, 800 steps

Each robot's interface spec (`robot_spec(name)`) is the object the env, the sim node, the policy
node and the policy file share. `make_env(env_id, wrappers_config)` builds an env with the
sim-to-real wrappers of a config (see `wrappers`).
"""

from __future__ import annotations

import os

# Offscreen rendering on headless machines: EGL unless the user chose (mujoco reads it at import).
os.environ.setdefault("MUJOCO_GL", "egl")

import gymnasium as gym

from liquid_control.core.spec import InterfaceSpec
from liquid_control.robots import Robot, get_robot, on_register, robots


def _register(robot: Robot) -> None:
    """Register the robot's gymnasium ids (its main task and the others)."""
    entries = [(robot.env_id, {}, robot.max_episode_steps)]
    entries += [
        (t.env_id, dict(t.kwargs), t.max_episode_steps or robot.max_episode_steps)
        for t in robot.tasks.values()
    ]
    for env_id, kwargs, steps in entries:
        if env_id not in gym.registry:
            gym.register(
                env_id, entry_point=robot.entry_point, max_episode_steps=steps, kwargs=kwargs
            )


on_register(_register)


def env_ids() -> dict[str, str]:
    """{short name: gymnasium id} of every registered robot's tasks."""
    out: dict[str, str] = {}
    for robot in robots().values():
        out.update(robot.env_ids())
    return out


def robot_spec(robot: str) -> InterfaceSpec:
    """Interface spec of a registered robot by name (RobotError for an unknown name)."""
    return get_robot(robot).interface_spec()


def make_env(env_id: str, wrappers_config: dict | None = None, **env_kwargs) -> gym.Env:
    """An env with the sim-to-real wrappers of `wrappers_config` (see `wrappers.apply_wrappers`)."""
    from .wrappers import make_env as _make

    return _make(env_id, wrappers_config, **env_kwargs)


__all__ = ["env_ids", "make_env", "robot_spec"]
