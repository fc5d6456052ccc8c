"""Gymnasium envs over MuJoCo robot models, and the sim-to-real wrappers.

Importing this package registers the env ids:

    LiquidControl/CartPoleSwingUp-v0   cart-pole swing-up and balance (joint space), 50 Hz, 500 steps
    LiquidControl/CartPoleBalance-v0   the same robot started upright, 50 Hz, 500 steps
    LiquidControl/RoverLane-v0         differential-drive rover on a walled lane, 20 Hz, 800 steps

Each robot module (`cartpole`, `rover`) has `spec()`, the interface spec the env, the sim node,
the policy node and the policy file share. `make_env(env_id, wrappers_config)` builds an env with
the sim-to-real wrappers of a config (see `wrappers`).
"""

from __future__ import annotations

import os

# Offscreen rendering on headless machines: EGL unless the user chose (mujoco reads it at import).
os.environ.setdefault("MUJOCO_GL", "egl")

import gymnasium as gym

from liquid_control.core.spec import InterfaceSpec

ENV_IDS = {
    "cartpole": "LiquidControl/CartPoleSwingUp-v0",
    "cartpole_balance": "LiquidControl/CartPoleBalance-v0",
    "rover": "LiquidControl/RoverLane-v0",
}


def _register() -> None:
    def register(env_id: str, entry_point: str, steps: int, kwargs: dict | None = None) -> None:
        if env_id not in gym.registry:
            gym.register(
                env_id, entry_point=entry_point, max_episode_steps=steps, kwargs=kwargs or {}
            )

    register(ENV_IDS["cartpole"], "liquid_control.envs.cartpole:CartPoleSwingUpEnv", 500)
    register(
        ENV_IDS["cartpole_balance"],
        "liquid_control.envs.cartpole:CartPoleSwingUpEnv",
        500,
        {"start": "up"},
    )
    register(ENV_IDS["rover"], "liquid_control.envs.rover:RoverLaneEnv", 800)


_register()


def robot_spec(robot: str) -> InterfaceSpec:
    """Interface spec of a robot by name: "cartpole" or "rover"."""
    if robot == "cartpole":
        from .cartpole import spec
    elif robot == "rover":
        from .rover import spec
    else:
        raise ValueError(f"robot: expected 'cartpole' or 'rover', got {robot!r}")
    return spec()


def make_env(env_id: str, wrappers_config: dict | None = None, **env_kwargs) -> gym.Env:
    """An env with the sim-to-real wrappers of `wrappers_config` (see `wrappers.apply_wrappers`)."""
    from .wrappers import make_env as _make

    return _make(env_id, wrappers_config, **env_kwargs)


__all__ = ["ENV_IDS", "make_env", "robot_spec"]
