"""Shared base of the MuJoCo robot envs: the model is data (MJCF), the env is a thin reading of it.

Every env produces its observation the way the robot does: `readings()` gives, per input topic of
the interface spec, the nested field dict of the ROS message the sim node publishes
(`fields_to_message` copies it into a real message there), and the env maps these message-shaped
readings through `liquid_control.core.adapters` (the same `ObservationAssembler` the policy node
uses). The training vector equals the deployment vector by construction.

The sim node drives the same object through the calls the env's `step` uses:
`apply_command(action)` (robot units, clipped like the actuators), `advance(n_substeps)`,
`readings()` and `score(action, dt_s)` (reward and episode figures), so a command is applied, and
a sensor read, one way only.
"""

from __future__ import annotations

import copy
import math
import os
from typing import Any

import gymnasium as gym
import mujoco
import numpy as np

from liquid_control.core.adapters import ObservationAssembler, message_from_fields
from liquid_control.core.safety import robot_safe_action
from liquid_control.core.spec import InterfaceSpec

SIM_DIR_ENV = "LIQUID_CONTROL_SIM_DIR"

# Physics parameters the domain randomisation may scale (see `set_physics_scales`).
PHYSICS_SCALES = ("mass", "friction", "damping", "motor_gain")


def sim_dir() -> str:
    """Folder of the MJCF models: $LIQUID_CONTROL_SIM_DIR, the source tree, or the installed share."""
    env = os.environ.get(SIM_DIR_ENV)
    if env:
        return env
    here = os.path.dirname(os.path.abspath(__file__))
    src = os.path.normpath(os.path.join(here, "..", "..", "sim"))
    if os.path.isdir(src):
        return src
    try:
        from ament_index_python.packages import get_package_share_directory

        return os.path.join(get_package_share_directory("liquid_control"), "sim")
    except Exception as exc:
        raise FileNotFoundError(
            f"MJCF folder not found: set {SIM_DIR_ENV}, or run from the source tree ({src})"
        ) from exc


def check_physics_scales(scales: dict[str, Any]) -> dict[str, Any]:
    """`scales` checked: keys of PHYSICS_SCALES, positive finite factors (ValueError otherwise)."""
    unknown = sorted(set(scales) - set(PHYSICS_SCALES))
    if unknown:
        raise ValueError(
            f"physics scales: unknown keys {unknown}; expected some of {list(PHYSICS_SCALES)}"
        )
    for k, v in scales.items():
        if not np.all(np.isfinite(v)) or np.any(np.asarray(v) <= 0):
            raise ValueError(f"physics scales[{k!r}]: expected positive finite factors, got {v!r}")
    return dict(scales)


def nominal_physics(m: mujoco.MjModel) -> dict[str, np.ndarray]:
    """Copies of the model values that `apply_physics_scales` scales."""
    return {
        "body_mass": m.body_mass.copy(),
        "body_inertia": m.body_inertia.copy(),
        "geom_friction": m.geom_friction.copy(),
        "dof_damping": m.dof_damping.copy(),
        "dof_frictionloss": m.dof_frictionloss.copy(),
        "actuator_gainprm": m.actuator_gainprm.copy(),
        "actuator_biasprm": m.actuator_biasprm.copy(),
    }


def apply_physics_scales(
    m: mujoco.MjModel, data: mujoco.MjData, nominal: dict[str, np.ndarray], s: dict[str, Any]
) -> None:
    """Set the model's masses (and inertias), sliding friction, damping (and friction loss) and
    actuator gains to `nominal` x the factors of `s` (one factor, or one per body / geom / dof /
    actuator; a missing key is 1). Any MuJoCo model: ours and gymnasium's."""
    mass = np.asarray(s.get("mass", 1.0), np.float64)
    m.body_mass[:] = nominal["body_mass"] * np.broadcast_to(mass, m.body_mass.shape)
    m.body_inertia[:] = nominal["body_inertia"] * np.broadcast_to(mass, m.body_mass.shape)[:, None]
    friction = np.asarray(s.get("friction", 1.0), np.float64)
    m.geom_friction[:, 0] = nominal["geom_friction"][:, 0] * np.broadcast_to(friction, (m.ngeom,))
    damping = np.broadcast_to(np.asarray(s.get("damping", 1.0), np.float64), (m.nv,))
    m.dof_damping[:] = nominal["dof_damping"] * damping
    m.dof_frictionloss[:] = nominal["dof_frictionloss"] * damping
    gain = np.broadcast_to(np.asarray(s.get("motor_gain", 1.0), np.float64), (m.nu,))
    m.actuator_gainprm[:, 0] = nominal["actuator_gainprm"][:, 0] * gain
    # Position/velocity servos: the bias terms carry the same gain (kp, kv) with a minus sign.
    m.actuator_biasprm[:, 1:3] = nominal["actuator_biasprm"][:, 1:3] * gain[:, None]
    mujoco.mj_setConst(m, data)


def servo_gains(spec: InterfaceSpec) -> tuple[tuple[float, ...], ...]:
    """(kp N m/rad, kd N m s/rad, torque limit N m) per action of a robot whose position
    interface the spec describes (its extra's ``kp_nm_per_rad``, ``kd_nm_s_per_rad``,
    ``torque_limits_nm``), as `make_position_servo` takes them."""
    return tuple(
        tuple(float(v) for v in spec.extra[k])
        for k in ("kp_nm_per_rad", "kd_nm_s_per_rad", "torque_limits_nm")
    )


def make_position_servo(
    m: mujoco.MjModel, actuator: int, joint: int, kp: float, kd: float, torque_nm: float
) -> None:
    """Turn `actuator` into a PD position servo of `joint`, as a ros2_control position interface
    runs on a robot: tau = kp (ctrl - q) - kd dq (gain kp, affine bias [0, -kp, -kd], MuJoCo's
    <position> actuator), limited to +-torque_nm, ctrl limited to the joint's range. The physics
    applies it at every timestep; the motor_gain randomisation scales kp and kd together."""
    m.actuator_gaintype[actuator] = mujoco.mjtGain.mjGAIN_FIXED
    m.actuator_gainprm[actuator, :] = 0.0
    m.actuator_gainprm[actuator, 0] = kp
    m.actuator_biastype[actuator] = mujoco.mjtBias.mjBIAS_AFFINE
    m.actuator_biasprm[actuator, :] = 0.0
    m.actuator_biasprm[actuator, 1:3] = (-kp, -kd)
    m.actuator_forcerange[actuator] = (-torque_nm, torque_nm)
    m.actuator_forcelimited[actuator] = 1
    m.actuator_ctrlrange[actuator] = m.jnt_range[joint]
    m.actuator_ctrllimited[actuator] = 1


class MujocoRobotEnv(gym.Env):
    """Base class: subclasses load a model, reset its state, read sensors and score a step.

    Subclasses pass their interface spec to `__init__` (the action and observation spaces come
    from it) and implement `_build_model(options)`, `_reset_state()`, `readings()`,
    `_write_controls(action)` and `evaluate(action, dt_s)`.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 50}

    def __init__(
        self,
        spec: InterfaceSpec,
        render_mode: str | None = None,
        width: int = 480,
        height: int = 360,
        camera: str | None = None,
    ) -> None:
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode: expected None or 'rgb_array', got {render_mode!r}")
        self.interface_spec = spec
        self.render_mode = render_mode
        self.metadata = {**self.metadata, "render_fps": int(round(spec.control_rate_hz))}
        self.width, self.height, self.camera = int(width), int(height), camera
        self.action_space = gym.spaces.Box(spec.action_low, spec.action_high, dtype=np.float64)
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (spec.obs_dim,), dtype=np.float64)
        self._assembler = ObservationAssembler(spec)
        self.model: mujoco.MjModel | None = None
        self.data: mujoco.MjData | None = None
        self._nominal: dict[str, np.ndarray] = {}
        self._scales: dict[str, Any] = {}
        self._renderer: mujoco.Renderer | None = None
        self._source_model: mujoco.MjModel | None = None
        self._forward_time: float | None = None
        # Control period of the next step (seconds); the jitter wrapper sets it, `step` resets it.
        self.next_control_period_s: float | None = None
        self.last_action = np.zeros(spec.action_dim)

    # -- model handling --------------------------------------------------------------------
    def _build_model(self, options: dict[str, Any]) -> mujoco.MjModel:
        """The compiled model for this episode (subclasses may cache compiled models)."""
        raise NotImplementedError

    def _install_model(self, model: mujoco.MjModel) -> None:
        """Use a private copy of `model` (randomisation edits it) and remember its nominal values."""
        if self.model is not None and model is self._source_model:
            return
        self._source_model = model
        self.model = copy.deepcopy(model)
        self.data = mujoco.MjData(self.model)
        m = self.model
        # Sensors are evaluated only when read (`sync`), not at every physics substep.
        m.opt.disableflags |= int(mujoco.mjtDisableBit.mjDSBL_SENSOR)
        self._nominal = nominal_physics(m)
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None

    def set_physics_scales(self, scales: dict[str, Any]) -> None:
        """Scale physics parameters from the next reset on (domain randomisation).

        `scales` maps "mass" | "friction" | "damping" | "motor_gain" to a factor, or to an array of
        factors (one per body / geom / dof / actuator). An empty dict restores the nominal model.
        """
        self._scales = check_physics_scales(scales)

    def _apply_physics_scales(self) -> None:
        apply_physics_scales(self.model, self.data, self._nominal, self._scales)

    # -- the three calls shared with the sim node -------------------------------------------
    def apply_command(self, action: np.ndarray) -> np.ndarray:
        """Clip a command (robot units) to the spec's limits and write the actuator controls."""
        a = np.asarray(action, np.float64).reshape(-1)
        if a.shape != (self.interface_spec.action_dim,):
            raise ValueError(
                f"action: expected shape ({self.interface_spec.action_dim},), got {a.shape}"
            )
        if not np.isfinite(a).all():
            raise ValueError(f"action: expected finite values, got {a.tolist()}")
        a = np.clip(a, self.interface_spec.action_low, self.interface_spec.action_high)
        self._write_controls(a)
        return a

    def _write_controls(self, action: np.ndarray) -> None:
        raise NotImplementedError

    def advance(self, n_substeps: int) -> float:
        """Step the physics `n_substeps` timesteps; returns the simulated time in seconds."""
        mujoco.mj_step(self.model, self.data, nstep=int(n_substeps))
        self._forward_time = None
        return int(n_substeps) * float(self.model.opt.timestep)

    def advance_for(self, period_s: float) -> float:
        """Step the physics by `period_s` seconds: whole timesteps plus one shorter last step for a
        remainder (control-period jitter is not quantised to the timestep). Returns the time run."""
        ts = float(self.model.opt.timestep)
        n = int(math.floor(period_s / ts + 1e-6))
        rest = period_s - n * ts
        dt = self.advance(n) if n else 0.0
        if rest > 1e-6 * ts:
            self.model.opt.timestep = rest
            try:
                dt += self.advance(1)
            finally:
                self.model.opt.timestep = ts
        return dt

    def sync(self) -> None:
        """Evaluate positions, velocities, forces and sensors at the current state (idempotent).

        `mj_step` computes sensors before integrating, so after a step they would lag one timestep;
        readings call this first. It changes no state the next `mj_step` uses.
        """
        if self._forward_time == self.data.time:
            return
        m = self.model
        m.opt.disableflags &= ~int(mujoco.mjtDisableBit.mjDSBL_SENSOR)
        mujoco.mj_forward(m, self.data)
        m.opt.disableflags |= int(mujoco.mjtDisableBit.mjDSBL_SENSOR)
        self._forward_time = self.data.time

    def readings(self) -> dict[str, dict[str, Any]]:
        """Per input topic, the nested field dict of the message the robot publishes now."""
        raise NotImplementedError

    def operator_input(self, topic: str, msg: Any) -> None:
        """A message on one of the robot's operator inputs (registry `operator_inputs`, e.g. a
        velocity command), received by the sim node; robots with such inputs override this."""
        raise ValueError(f"robot {self.interface_spec.robot!r} takes no operator input on {topic}")

    def evaluate(self, action: np.ndarray, dt_s: float) -> tuple[float, bool, dict[str, Any]]:
        """Reward, terminated and info for the step that just ran with `action`."""
        raise NotImplementedError

    def score(self, action: np.ndarray, dt_s: float) -> tuple[float, bool, dict[str, Any]]:
        """`evaluate` the control step that just ran with `action`, then remember the action."""
        result = self.evaluate(action, dt_s)
        self.last_action = np.asarray(action, np.float64).copy()
        return result

    # -- gymnasium API ---------------------------------------------------------------------
    def observation(self) -> np.ndarray:
        """Raw observation vector: readings -> message-shaped namespaces -> spec adapters."""
        for topic, fields in self.readings().items():
            self._assembler.update(topic, message_from_fields(fields))
        return self._assembler.raw()

    def _reset_state(self) -> None:
        raise NotImplementedError

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self._install_model(self._build_model(dict(options or {})))
        self._apply_physics_scales()
        mujoco.mj_resetData(self.model, self.data)
        self._reset_state()
        self._forward_time = None
        self.sync()
        # the command the robot held before the first one: its safe action (a standing pose)
        self.last_action = robot_safe_action(self.interface_spec)
        self.next_control_period_s = None
        obs = self.observation()
        return obs, {"dt": 0.0, **self._reset_info()}

    def _reset_info(self) -> dict[str, Any]:
        return {}

    def step(self, action: np.ndarray):
        if self.data is None:
            raise RuntimeError("step() called before reset()")
        a = self.apply_command(action)
        period = self.next_control_period_s or self.interface_spec.control_period_s
        self.next_control_period_s = None
        dt = self.advance_for(period)
        obs = self.observation()
        reward, terminated, info = self.score(a, dt)
        info["dt"] = dt
        return obs, float(reward), bool(terminated), False, info

    # -- rendering -------------------------------------------------------------------------
    def render(self) -> np.ndarray | None:
        if self.render_mode != "rgb_array":
            return None
        if self._renderer is None:
            self._renderer = mujoco.Renderer(self.model, self.height, self.width)
        self._renderer.update_scene(self.data, camera=self._render_camera())
        return self._renderer.render()

    def _render_camera(self):
        return self.camera if self.camera is not None else -1

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
