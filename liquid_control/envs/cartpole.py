"""CartPole swing-up on a belt drive (joint space): `spec()` and `CartPoleSwingUpEnv`.

Observation (sensor_msgs/JointState on /joint_states): cart position (m), cart velocity (m/s),
sin and cos of the pole angle (0 = upright), pole angular velocity (rad/s).
Action (std_msgs/Float64MultiArray on /cart_force_controller/commands, data[0]): cart force in N,
clamped to +-10 N like the drive's current limit.

Reward (dense, in [0, 1] per step, after dm_control's swing-up): upright * centred * small control
* small velocity. The episode ends (terminated) when the carriage reaches an end stop.
"""

from __future__ import annotations

import functools
import math
import os
from typing import Any

import mujoco
import numpy as np

from liquid_control.core.spec import ActionElement, InterfaceSpec, ObservationElement

from .base import MujocoRobotEnv, sim_dir

JOINT_STATES = "/joint_states"
COMMAND_TOPIC = "/cart_force_controller/commands"
JOINTS = ("cart_slide", "pole_hinge")
CONTROL_RATE_HZ = 50.0
MAX_FORCE_N = 10.0
RAIL_LIMIT_M = 1.2
END_STOP_MARGIN_M = 0.02


def spec() -> InterfaceSpec:
    """The cart-pole's interface spec (noise levels: 2000-count encoders, differentiated at 50 Hz)."""

    def joint(name, key, fld, transform="identity", unit="", std=1.0, noise=0.0):
        return ObservationElement(
            name=name,
            topic=JOINT_STATES,
            msg_type="sensor_msgs/JointState",
            field=fld,
            key=key,
            transform=transform,
            unit=unit,
            mean=0.0,
            std=std,
            noise_std=noise,
        )

    return InterfaceSpec(
        robot="cartpole",
        observations=(
            joint("cart_position", "cart_slide", "position", unit="m", std=0.5, noise=0.001),
            joint("cart_velocity", "cart_slide", "velocity", unit="m/s", std=1.0, noise=0.01),
            joint("pole_sin", "pole_hinge", "position", "sin", unit="1", std=0.7, noise=0.003),
            joint("pole_cos", "pole_hinge", "position", "cos", unit="1", std=0.7, noise=0.003),
            joint(
                "pole_angular_velocity", "pole_hinge", "velocity", unit="rad/s", std=4.0, noise=0.02
            ),
        ),
        actions=(
            ActionElement(
                name="cart_force",
                topic=COMMAND_TOPIC,
                msg_type="std_msgs/Float64MultiArray",
                field="data",
                index=0,
                unit="N",
                scale=MAX_FORCE_N,
                offset=0.0,
                low=-MAX_FORCE_N,
                high=MAX_FORCE_N,
            ),
        ),
        control_rate_hz=CONTROL_RATE_HZ,
        description="Cart-pole swing-up and balance on a 2.4 m belt-drive rail (sim/cartpole.xml)",
        extra={
            "sensor_rates_hz": {JOINT_STATES: CONTROL_RATE_HZ},
            "model": "cartpole.xml",
            "env_id": "LiquidControl/CartPoleSwingUp-v0",
        },
    )


@functools.lru_cache(maxsize=4)
def _compiled(path: str) -> mujoco.MjModel:
    return mujoco.MjModel.from_xml_path(path)


def _bell(x: float, width: float) -> float:
    """1 at x = 0, falling smoothly with |x| (a Gaussian of the given width)."""
    return math.exp(-0.5 * (x / width) ** 2)


class CartPoleSwingUpEnv(MujocoRobotEnv):
    """Swing the pole up from hanging and balance it; observation and action in robot units.

    Args:
        render_mode: None or "rgb_array" (offscreen).
        start: "down" (hanging, swing-up task) or "up" (balance task), each with small noise.
        model_path: MJCF file; default sim/cartpole.xml.
    """

    def __init__(
        self,
        render_mode: str | None = None,
        start: str = "down",
        model_path: str | None = None,
        width: int = 480,
        height: int = 360,
    ) -> None:
        if start not in ("down", "up"):
            raise ValueError(f"start: expected 'down' or 'up', got {start!r}")
        super().__init__(spec(), render_mode, width, height, camera="front")
        self.start = start
        self.model_path = model_path or os.path.join(sim_dir(), "cartpole.xml")
        self._install_model(_compiled(self.model_path))
        self._qpos = [self.model.joint(j).qposadr[0] for j in JOINTS]
        self._qvel = [self.model.joint(j).dofadr[0] for j in JOINTS]

    def _build_model(self, options: dict[str, Any]) -> mujoco.MjModel:
        return _compiled(self.model_path)

    def _reset_state(self) -> None:
        rng = self.np_random
        base = math.pi if self.start == "down" else 0.0
        self.data.qpos[self._qpos[0]] = rng.uniform(-0.05, 0.05)
        self.data.qpos[self._qpos[1]] = base + rng.uniform(-0.05, 0.05)
        self.data.qvel[self._qvel[0]] = rng.uniform(-0.01, 0.01)
        self.data.qvel[self._qvel[1]] = rng.uniform(-0.01, 0.01)

    def _write_controls(self, action: np.ndarray) -> None:
        self.data.ctrl[0] = action[0]

    def readings(self) -> dict[str, dict[str, Any]]:
        self.sync()
        d = self.data
        return {
            JOINT_STATES: {
                "name": list(JOINTS),
                "position": [float(d.qpos[i]) for i in self._qpos],
                "velocity": [float(d.qvel[i]) for i in self._qvel],
                "effort": [float(d.actuator_force[0]), 0.0],
            }
        }

    def evaluate(self, action: np.ndarray, dt_s: float) -> tuple[float, bool, dict[str, Any]]:
        x = float(self.data.qpos[self._qpos[0]])
        theta = float(self.data.qpos[self._qpos[1]])
        omega = float(self.data.qvel[self._qvel[1]])
        upright = (1.0 + math.cos(theta)) / 2.0
        centred = (1.0 + _bell(x, 0.6)) / 2.0
        small_control = (4.0 + _bell(float(action[0]) / MAX_FORCE_N, 0.5)) / 5.0
        small_velocity = (1.0 + _bell(omega, 5.0)) / 2.0
        at_stop = abs(x) >= RAIL_LIMIT_M - END_STOP_MARGIN_M
        reward = upright * centred * small_control * small_velocity
        return reward, at_stop, {"upright": upright, "cart_position": x, "end_stop": at_stop}

    def energy(self) -> float:
        """Total mechanical energy (J): kinetic + potential (MuJoCo's own energy computation)."""
        m, d = self.model, self.data
        flags = m.opt.enableflags
        m.opt.enableflags |= int(mujoco.mjtEnableBit.mjENBL_ENERGY)
        mujoco.mj_forward(m, d)
        m.opt.enableflags = flags
        return float(d.energy[0] + d.energy[1])


def demo_panel(ax, policy, replay: dict, truth: list, episode: dict, sim_params: dict) -> None:
    """The demo's picture of a cart-pole episode: cart position and pole angle over time."""
    names = [o.name for o in policy.spec.observations]
    obs = replay["obs"]
    ax.plot(replay["t"], obs[:, names.index("cart_position")], label="cart position (m)")
    angle = np.arctan2(obs[:, names.index("pole_sin")], obs[:, names.index("pole_cos")])
    ax.plot(replay["t"], angle, label="pole angle (rad, 0 = upright)")
    ax.set(
        xlabel="sim time (s)", title=f"cart-pole: return {episode.get('return', float('nan')):.1f}"
    )
    ax.legend(fontsize=7)
