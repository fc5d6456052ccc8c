"""A robot added in one registry entry, as a user would add theirs (test fixture).

A one-joint arm on a position servo, told where to go by an operator: the goal angle arrives on
`/arm_goal` (std_msgs/Float64MultiArray data[0]), an operator input that the sim node subscribes to
and hands to the env. Everything else (gym id, sim node, policy node) comes from the entry below;
`LIQUID_CONTROL_ROBOTS=fixture_robot` (with this folder on PYTHONPATH) adds it to any process.
"""

from __future__ import annotations

import math
from typing import Any

import mujoco
import numpy as np

from liquid_control.core.spec import ActionElement, InterfaceSpec, ObservationElement
from liquid_control.envs.base import MujocoRobotEnv
from liquid_control.robots import EpisodeFigure, Robot

MJCF = """
<mujoco model="tiny_arm">
  <compiler angle="radian"/>
  <option timestep="0.005"/>
  <worldbody>
    <body name="link" pos="0 0 0.5">
      <joint name="shoulder" type="hinge" axis="0 1 0" damping="0.05" range="-2 2"/>
      <geom type="capsule" fromto="0 0 0 0.3 0 0" size="0.03" mass="0.5"/>
    </body>
  </worldbody>
  <actuator>
    <position name="shoulder_servo" joint="shoulder" kp="8" kv="0.4" ctrlrange="-1.5 1.5"/>
  </actuator>
</mujoco>
"""


def spec() -> InterfaceSpec:
    def obs(name: str, topic: str, msg: str, field: str, **kw: Any) -> ObservationElement:
        return ObservationElement(name, topic, msg, field, **kw)

    return InterfaceSpec(
        robot="tiny_arm",
        observations=(
            obs(
                "angle",
                "/arm/joint_states",
                "sensor_msgs/JointState",
                "position",
                key="shoulder",
                unit="rad",
            ),
            obs(
                "rate",
                "/arm/joint_states",
                "sensor_msgs/JointState",
                "velocity",
                key="shoulder",
                unit="rad/s",
                std=3.0,
            ),
            obs("goal", "/arm_goal", "std_msgs/Float64MultiArray", "data", index=0, unit="rad"),
        ),  # fmt: skip
        actions=(
            ActionElement(
                "angle_target",
                "/arm/commands",
                "std_msgs/Float64MultiArray",
                "data",
                index=0,
                unit="rad",
                scale=1.5,
                low=-1.5,
                high=1.5,
                interface="position",
                feedback="angle",
            ),
        ),  # fmt: skip
        control_rate_hz=20.0,
        extra={"sensor_rates_hz": {"/arm/joint_states": 20.0}, "safe_action": [0.25]},
    )


class TinyArmEnv(MujocoRobotEnv):
    """Reach the goal angle (drawn per episode, or set by the operator) with the position servo."""

    def __init__(self, render_mode: str | None = None) -> None:
        super().__init__(spec(), render_mode)
        self._model = mujoco.MjModel.from_xml_string(MJCF)
        self._install_model(self._model)
        self.goal = 0.0

    def _build_model(self, options: dict[str, Any]) -> mujoco.MjModel:
        return self._model

    def _reset_state(self) -> None:
        self.goal = float(self.np_random.uniform(-1.0, 1.0))

    def _write_controls(self, action: np.ndarray) -> None:
        self.data.ctrl[0] = action[0]

    def operator_input(self, topic: str, msg: Any) -> None:
        goal = float(msg.data[0])
        if not math.isfinite(goal):
            raise ValueError(f"goal: expected a finite angle, got {goal}")
        self.goal = goal

    def readings(self) -> dict[str, dict[str, Any]]:
        self.sync()
        return {
            "/arm/joint_states": {
                "name": ["shoulder"],
                "position": [float(self.data.qpos[0])],
                "velocity": [float(self.data.qvel[0])],
                "effort": [float(self.data.actuator_force[0])],
            },
            "/arm_goal": {"data": [self.goal]},
        }

    def evaluate(self, action: np.ndarray, dt_s: float) -> tuple[float, bool, dict[str, Any]]:
        error = float(self.data.qpos[0]) - self.goal
        return -(error**2), False, {"goal_error": error, "goal": self.goal}


def demo_goal(t_s: float) -> dict[str, dict[str, Any]]:
    """The demo's operator: the goal angle 0.7 rad, then -0.4 rad after 1 s."""
    return {"/arm_goal": {"data": [0.7 if t_s < 1.0 else -0.4]}}


ROBOT = Robot(
    name="tiny_arm",
    env_id="LiquidControlTest/TinyArm-v0",
    entry_point="fixture_robot:TinyArmEnv",
    spec="fixture_robot:spec",
    max_episode_steps=100,
    description="one-joint arm reaching an operator's goal angle (test fixture)",
    operator_inputs=("/arm_goal",),
    episode_figures=(
        EpisodeFigure("goal_error_rms_rad", "goal_error", "rms"),
        EpisodeFigure("goal_rad", "goal", "last"),
    ),
    demo_seconds=3.0,
    demo_operator="fixture_robot:demo_goal",
)
ROBOTS = (ROBOT,)
