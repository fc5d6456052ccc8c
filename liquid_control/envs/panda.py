"""Franka Emika Panda reaching a goal position: `spec()` and `PandaReachEnv`.

The model is the Panda arm of the `gymnasium-robotics` package (``gymnasium_robotics/envs/assets/
kitchen_franka/franka_assets/``: MJCF and meshes; MIT licence, the model modified from Vikash
Kumar's Apache-2.0 franka model, see README), read from the installed package, never copied or
downloaded: ``pip install 'liquid_control[panda]'``. Only its arm and hand are loaded (on a fixed
base, without the kitchen), and `arm_model` makes it Franka's robot in memory (its docstring lists
each change): franka_ros2's joint names and zero angles, Franka's joint limits, the fingers fixed
(closed), and the position interface of the real arm, a PD servo per joint with gravity
compensation.

Interface, as on the robot (the 7 arm joints in Franka's order, panda_joint1..7):
- in: sensor_msgs/JointState on /joint_states (7 positions, rad; 7 velocities, rad/s), and the
  operator's goal, geometry_msgs/PoseStamped on /goal_pose (pose.position x, y, z in m, in the
  base frame ``panda_link0``; its orientation is not read). A goal more than 5 cm outside the
  workspace the policy was trained on is out of its domain: the policy node latches its safe
  action, the ready pose.
- out: 7 joint position targets (rad), std_msgs/Float64MultiArray on
  /joint_group_position_controller/commands (a ros2_control forward_command_controller on the
  position interface, its ``joints`` in the order above). Network output 0 is Franka's ready pose
  [0, -pi/4, 0, -3pi/4, 0, pi/2, pi/4] (the end effector 0.31 m ahead of the base, 0.49 m up);
  the targets stay 0.05 rad inside Franka's joint limits.

The policy runs at 100 Hz; between its commands the servos apply tau = kp (q* - q) - kd dq,
clipped to Franka's torque limits (87 N m joints 1-4, 12 N m joints 5-7), at every 2 ms physics
step, with gravity compensated as the robot's own controller does (the spec's ``extra``: gains,
torque limits, ready pose). The gains are those of franka_ros2's (and libfranka's) joint impedance
example: kp 600, 600, 600, 600, 250, 150, 50 N m/rad; kd 50, 50, 50, 50, 30, 25, 15 N m s/rad.

Task: 3 s episodes (300 steps) from the ready pose (+-0.05 rad per joint). The env draws the goal
from its seeded generator, uniform in the box `WORKSPACE` in front of the robot (x 0.3-0.6 m,
y -0.3-0.3 m, z 0.2-0.6 m), and presents it as the /goal_pose reading; ``reset(options={"goal":
[x, y, z]})`` fixes it for an episode, `set_goal` (the sim node, from /goal_pose) from then on.
The end effector is the model's ``end_effector`` site between the fingers, 0.21 m along joint
7's axis from its frame: Franka's hand TCP (the flange at 0.107 m, the TCP 0.1034 m past it).

Reward per step: the weights of `REWARD_WEIGHTS` are per second and multiply the step's duration
dt (0.01 s), so at 100 Hz a step gives
    -d                                      distance of the end effector to the goal (m)
  + 0.5 [d < 2 cm]                          success bonus
  - 0.5 |a_t - a_{t-1}|^2                   action rate (rad)
  - 0.2 sum_i max(0, 1 - m_i / 0.2 rad)^2   joint-limit proximity (m_i: joint i's margin, rad)
Episodes do not end early (an end at a joint-limit violation would spare the agent the distance
cost of the rest: a reward for crashing). ``info``: ``reach_error_m`` (d), ``success`` (d < 2 cm),
``joint_limit_violation`` (a joint outside Franka's limits), ``jerk_rad_s3`` (the largest joint
jerk, differenced from the joint velocities of the last three control steps), ``goal``.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import os
from typing import Any
from xml.sax.saxutils import quoteattr

import mujoco
import numpy as np

from liquid_control.core.spec import ActionElement, InterfaceSpec, ObservationElement

from .base import MujocoRobotEnv, make_position_servo, servo_gains

JOINT_STATES, GOAL_POSE = "/joint_states", "/goal_pose"
COMMAND_TOPIC = "/joint_group_position_controller/commands"
BASE_FRAME = "panda_link0"
CONTROL_RATE_HZ = 100.0
PHYSICS_TIMESTEP_S = 0.002  # the model's own
JOINTS = tuple(f"panda_joint{i}" for i in range(1, 8))  # franka_ros2 / franka_description
# Franka's joint limits (rad): Franka's "control parameters" page and franka_description.
JOINT_LOW = np.array([-2.8973, -1.7628, -2.8973, -3.0718, -2.8973, -0.0175, -2.8973])
JOINT_HIGH = np.array([2.8973, 1.7628, 2.8973, -0.0698, 2.8973, 3.7525, 2.8973])
LIMIT_MARGIN_RAD = 0.05  # position targets stay this far inside the joint limits
# Franka's ready pose (franka_ros2, MoveIt "ready"), the targets of network output 0 (rad).
READY = np.array([0.0, -math.pi / 4, 0.0, -3 * math.pi / 4, 0.0, math.pi / 2, math.pi / 4])
# Target range around the ready pose (rad), clipped to the joint limits less the margin: the
# joint motions that reach the whole workspace from the ready pose (joint 7 turns the hand about
# the axis through the end effector and moves it not at all).
TARGET_RANGE = np.array([1.0, 1.5, 0.6, 1.2, 0.6, 1.2, 0.5])
KP_NM_PER_RAD = (600.0, 600.0, 600.0, 600.0, 250.0, 150.0, 50.0)
KD_NM_S_PER_RAD = (50.0, 50.0, 50.0, 50.0, 30.0, 25.0, 15.0)
TORQUE_LIMITS_NM = (87.0, 87.0, 87.0, 87.0, 12.0, 12.0, 12.0)
WORKSPACE = {"x": (0.3, 0.6), "y": (-0.3, 0.3), "z": (0.2, 0.6)}  # m, base frame
GOAL_DOMAIN_MARGIN_M = 0.05  # a goal further outside the workspace is out of the policy's domain
SUCCESS_RADIUS_M = 0.02
LIMIT_PROXIMITY_RAD = 0.2
RESET_NOISE_RAD = 0.05
REWARD_WEIGHTS = {"distance": -100.0, "success": 50.0, "action_rate": -50.0, "joint_limit": -20.0}
MODEL_PACKAGE, MODEL_DIR = "gymnasium_robotics", "envs/assets/kitchen_franka/franka_assets"
# The model's joints and their zero angles in Franka's convention: its link6 and link7 frames are
# turned by 1.57 and 0.7854 rad about their joint axes from franka_description's (the zero of its
# joint 6 is Franka's 1.57 rad), which the joints' reference angle (`ref`) undoes.
MODEL_JOINTS = tuple(f"robot:panda0_joint{i}" for i in range(1, 8))
MODEL_REF_RAD = (0.0, 0.0, 0.0, 0.0, 0.0, 1.57, 0.7854)
MODEL_FINGERS = ("robot:panda0_finger_joint1", "robot:panda0_finger_joint2")
END_EFFECTOR = "end_effector"


def spec() -> InterfaceSpec:
    """The Panda's interface spec.

    Noise: joint encoders 0.001 rad, joint velocities 0.02 rad/s; the goal is exact.
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

    js, pose = "sensor_msgs/JointState", "geometry_msgs/PoseStamped"
    short = [j.removeprefix("panda_") for j in JOINTS]
    positions = [
        element(
            f"{s}_pos", JOINT_STATES, js, "position", "rad", float(q), float(r / 2), 0.001, key=j
        )
        for s, j, q, r in zip(short, JOINTS, READY, TARGET_RANGE, strict=True)
    ]
    velocities = [
        element(f"{s}_vel", JOINT_STATES, js, "velocity", "rad/s", 0.0, 1.0, 0.02, key=j)
        for s, j in zip(short, JOINTS, strict=True)
    ]
    goal = [
        element(
            f"goal_{a}",
            GOAL_POSE,
            pose,
            f"pose.position.{a}",
            "m",
            (lo + hi) / 2,
            (hi - lo) / math.sqrt(12.0),  # the standard deviation of the uniform draw
            0.0,
            domain_low=lo - GOAL_DOMAIN_MARGIN_M,
            domain_high=hi + GOAL_DOMAIN_MARGIN_M,
        )
        for a, (lo, hi) in WORKSPACE.items()
    ]
    low = np.maximum(READY - TARGET_RANGE, JOINT_LOW + LIMIT_MARGIN_RAD)
    high = np.minimum(READY + TARGET_RANGE, JOINT_HIGH - LIMIT_MARGIN_RAD)
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
            low=float(lo),
            high=float(hi),
            interface="position",
            feedback=f"{s}_pos",
        )
        for i, (s, q, r, lo, hi) in enumerate(
            zip(short, READY, TARGET_RANGE, low, high, strict=True)
        )
    )
    return InterfaceSpec(
        robot="panda",
        observations=(*positions, *velocities, *goal),
        actions=actions,
        control_rate_hz=CONTROL_RATE_HZ,
        description=(
            "Franka Emika Panda reaching a goal position, 7 joint position targets "
            "(gymnasium-robotics' franka_assets MJCF + liquid_control/envs/panda.py)"
        ),
        extra={
            "sensor_rates_hz": {JOINT_STATES: 250.0},
            "model": f"{MODEL_PACKAGE}/{MODEL_DIR}",
            "env_id": "LiquidControl/PandaReach-v0",
            "safe_action": READY.tolist(),  # the ready pose
            "base_frame": BASE_FRAME,
            "kp_nm_per_rad": list(KP_NM_PER_RAD),
            "kd_nm_s_per_rad": list(KD_NM_S_PER_RAD),
            "torque_limits_nm": list(TORQUE_LIMITS_NM),
        },
    )


def packaged_model_dir() -> str:
    """The ``franka_assets`` folder inside the installed gymnasium-robotics package (ImportError
    naming the extra when it is not installed). The package is located, not imported: its
    ``__init__`` imports every env it ships."""
    found = importlib.util.find_spec(MODEL_PACKAGE)
    if found is None or found.origin is None:
        raise ImportError(
            "the Panda model comes from the gymnasium-robotics package: "
            "pip install 'liquid_control[panda]'"
        )
    return os.path.join(os.path.dirname(found.origin), *MODEL_DIR.split("/"))


@functools.lru_cache(maxsize=4)
def arm_model(
    folder: str, kp: tuple[float, ...], kd: tuple[float, ...], torque_nm: tuple[float, ...]
) -> mujoco.MjModel:
    """The compiled Panda of `folder` (``franka_assets``) as Franka's robot, on a fixed base.

    A wrapper MJCF, in memory, includes the package's ``assets.xml``, ``basic_scene.xml`` (floor
    and lights) and ``chain.xml`` (the arm and hand) by absolute path, and then:
    - the meshes are found in ``meshes/`` (the files name them relative to a kitchen scene);
    - the finger joints are removed (the fingers stay, closed, fixed to the hand);
    - joint i is renamed `JOINTS[i]` and its zero angle set to Franka's (`MODEL_REF_RAD`), its
      range set to Franka's limits (the model has joint 4 up to -0.4 rad instead of -0.0698,
      joint 6 0.069 rad narrower at both ends, and joint 7 shifted by 0.785 rad);
    - the joints lose the model's damping (100 and 10 N m s/rad, a stand-in for a controller)
      and get a position servo each: tau = kp (ctrl - q) - kd dq (MuJoCo's <position> actuator
      with kv), limited to +-torque_nm; ctrl is limited to the joint range;
    - gravity is compensated on every moving body (``gravcomp``), as the robot's controller does;
    - the integrator is ``implicitfast`` (the wrist's kd against its small inertia);
    - a ``goal`` site, a 2 cm sphere (the success radius), marks the goal for rendering.
    """
    include = "".join(
        f"<include file={quoteattr(os.path.join(folder, f))}/>"
        for f in ("assets.xml", "basic_scene.xml")
    )
    chain = f"<include file={quoteattr(os.path.join(folder, 'chain.xml'))}/>"
    s = mujoco.MjSpec.from_string(
        f'<mujoco model="panda">{include}<worldbody>{chain}</worldbody></mujoco>'
    )
    for mesh in s.meshes:
        mesh.file = os.path.join(folder, "meshes", *mesh.file.replace(os.sep, "/").split("/")[-2:])
    for name in MODEL_FINGERS:
        s.delete(s.joint(name))
    for i, (model_name, name) in enumerate(zip(MODEL_JOINTS, JOINTS, strict=True)):
        joint = s.joint(model_name)
        joint.name = name
        joint.ref = MODEL_REF_RAD[i]
        servo = s.add_actuator()
        servo.name, servo.target = name, name
        servo.trntype = mujoco.mjtTrn.mjTRN_JOINT
    for body in s.bodies:
        if body.name != "world":
            body.gravcomp = 1.0
    s.worldbody.add_site(
        name="goal",
        type=mujoco.mjtGeom.mjGEOM_SPHERE,
        size=[SUCCESS_RADIUS_M, 0.0, 0.0],
        rgba=[0.1, 0.8, 0.2, 0.5],
    )
    s.option.integrator = mujoco.mjtIntegrator.mjINT_IMPLICITFAST
    m = s.compile()
    m.opt.timestep = PHYSICS_TIMESTEP_S
    for i, name in enumerate(JOINTS):
        j, a = m.joint(name).id, m.actuator(name).id
        m.jnt_range[j] = (JOINT_LOW[i], JOINT_HIGH[i])
        m.dof_damping[m.jnt_dofadr[j]] = 0.0
        make_position_servo(m, a, j, kp[i], kd[i], torque_nm[i])
    return m


def default_model() -> mujoco.MjModel:
    """`arm_model` of the installed package with the spec's gains."""
    return arm_model(packaged_model_dir(), KP_NM_PER_RAD, KD_NM_S_PER_RAD, TORQUE_LIMITS_NM)


def end_effector_positions(q: np.ndarray, model: mujoco.MjModel | None = None) -> np.ndarray:
    """Forward kinematics: end effector positions (m, base frame), (T, 3), of joint positions q
    (rad, `JOINTS` order), (T, 7)."""
    m = model or default_model()
    d = mujoco.MjData(m)
    adr = np.array([m.joint(j).qposadr[0] for j in JOINTS])
    site = m.site(END_EFFECTOR).id
    q = np.atleast_2d(np.asarray(q, np.float64))
    out = np.empty((len(q), 3))
    for t, row in enumerate(q):
        d.qpos[adr] = row
        mujoco.mj_kinematics(m, d)
        out[t] = d.site_xpos[site]
    return out


def _goal(value: Any) -> np.ndarray:
    g = np.asarray(value, np.float64).reshape(-1)
    if g.shape != (3,) or not np.isfinite(g).all():
        raise ValueError(f"goal: expected 3 finite numbers [x, y, z] (m), got {value!r}")
    return g


class PandaReachEnv(MujocoRobotEnv):
    """Bring the end effector to the goal; observation and action in robot units.

    Args:
        render_mode: None or "rgb_array" (offscreen, a camera in front of the arm).
        model_dir: the ``franka_assets`` folder; default the installed gymnasium-robotics'.

    Attributes:
        goal: the goal now, [x, y, z] (m, base frame ``panda_link0``).
    """

    def __init__(
        self,
        render_mode: str | None = None,
        model_dir: str | None = None,
        width: int = 480,
        height: int = 360,
    ) -> None:
        s = spec()
        super().__init__(s, render_mode, width, height)
        self.model_dir = model_dir or packaged_model_dir()
        self._servo = servo_gains(s)
        self._ready = np.array(s.extra["safe_action"], np.float64)
        self._install_model(arm_model(self.model_dir, *self._servo))
        self.goal = np.array([(lo + hi) / 2 for lo, hi in WORKSPACE.values()])
        self._episode_goal: np.ndarray | None = None
        self._operator_goal: np.ndarray | None = None
        self._velocities: list[np.ndarray] = []  # joint velocities of the last control steps
        self._dts: list[float] = []

    # -- model ------------------------------------------------------------------------------
    def _build_model(self, options: dict[str, Any]) -> mujoco.MjModel:
        return arm_model(self.model_dir, *self._servo)

    def _install_model(self, model: mujoco.MjModel) -> None:
        super()._install_model(model)
        m = self.model
        self._qpos = np.array([m.joint(j).qposadr[0] for j in JOINTS])
        self._qvel = np.array([m.joint(j).dofadr[0] for j in JOINTS])
        self._act = np.array([m.actuator(j).id for j in JOINTS])
        self._site = m.site(END_EFFECTOR).id
        self._goal_site = m.site("goal").id

    # -- episodes and goals ---------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        options = dict(options or {})
        self._episode_goal = _goal(options["goal"]) if "goal" in options else None
        return super().reset(seed=seed, options=options)

    def _reset_state(self) -> None:
        rng = self.np_random
        noise = rng.uniform(-RESET_NOISE_RAD, RESET_NOISE_RAD, len(JOINTS))
        self.data.qpos[self._qpos] = np.clip(self._ready + noise, JOINT_LOW, JOINT_HIGH)
        self.data.ctrl[self._act] = self._ready
        fixed = self._operator_goal if self._episode_goal is None else self._episode_goal
        if fixed is not None:
            self._show_goal(fixed)
        else:
            self._show_goal([rng.uniform(lo, hi) for lo, hi in WORKSPACE.values()])
        self._velocities, self._dts = (
            [np.zeros(len(JOINTS))] * 2,
            [self.interface_spec.control_period_s],
        )

    def _show_goal(self, goal: Any) -> None:
        self.goal = _goal(goal).copy()
        self.model.site_pos[self._goal_site] = self.goal
        self._forward_time = None  # the goal site moved: the next sync recomputes positions

    def set_goal(self, x: float, y: float, z: float) -> None:
        """Fix the goal (m, base frame) from now on, this episode and the next ones (an
        operator's /goal_pose; the env draws no more goals)."""
        self._operator_goal = _goal([x, y, z])
        self._show_goal(self._operator_goal)

    def operator_input(self, topic: str, msg: Any) -> None:
        """A geometry_msgs/PoseStamped on /goal_pose, read by the spec's own adapter
        (MessageRejected if its position is not finite), becomes the goal."""
        if topic != GOAL_POSE:
            super().operator_input(topic, msg)
            return
        x, y, z = self._assembler.readers[GOAL_POSE].read(msg)
        self.set_goal(x, y, z)

    def _write_controls(self, action: np.ndarray) -> None:
        self.data.ctrl[self._act] = action

    def _reset_info(self) -> dict[str, Any]:
        return {"goal": self.goal.tolist()}

    # -- sensors ------------------------------------------------------------------------------
    def readings(self) -> dict[str, dict[str, Any]]:
        self.sync()
        d = self.data
        return {
            JOINT_STATES: {
                "name": list(JOINTS),
                "position": d.qpos[self._qpos].tolist(),
                "velocity": d.qvel[self._qvel].tolist(),
                "effort": d.actuator_force[self._act].tolist(),
            },
            GOAL_POSE: {
                "header": {"frame_id": BASE_FRAME},
                "pose": {
                    "position": {"x": self.goal[0], "y": self.goal[1], "z": self.goal[2]},
                    "orientation": {"x": 0.0, "y": 0.0, "z": 0.0, "w": 1.0},
                },
            },
        }

    # -- task -----------------------------------------------------------------------------------
    def end_effector(self) -> np.ndarray:
        """The end effector position now (m, base frame)."""
        self.sync()
        return self.data.site_xpos[self._site].copy()

    def _jerk(self, velocity: np.ndarray, dt_s: float) -> float:
        """The largest joint jerk (rad/s^3) over the last three control steps' velocities."""
        (v0, v1), (dt0,) = self._velocities, self._dts
        jerk = ((velocity - v1) / dt_s - (v1 - v0) / dt0) / dt_s
        self._velocities, self._dts = [v1, velocity.copy()], [dt_s]
        return float(np.abs(jerk).max())

    def evaluate(self, action: np.ndarray, dt_s: float) -> tuple[float, bool, dict[str, Any]]:
        self.sync()
        d = self.data
        q = d.qpos[self._qpos]
        distance = float(np.linalg.norm(d.site_xpos[self._site] - self.goal))
        success = distance < SUCCESS_RADIUS_M
        margin = np.minimum(q - JOINT_LOW, JOINT_HIGH - q)
        change = np.asarray(action, np.float64) - self.last_action
        terms = {
            "distance": distance,
            "success": float(success),
            "action_rate": float(change @ change),
            "joint_limit": float(np.sum(np.maximum(0.0, 1.0 - margin / LIMIT_PROXIMITY_RAD) ** 2)),
        }
        reward = dt_s * sum(REWARD_WEIGHTS[k] * x for k, x in terms.items())
        info = {
            "reach_error_m": distance,
            "success": success,
            "joint_limit_violation": bool(np.any(margin < 0.0)),
            "jerk_rad_s3": self._jerk(d.qvel[self._qvel], dt_s),
            "goal": self.goal.tolist(),
        }
        return reward, False, info

    # -- rendering ---------------------------------------------------------------------------------
    def _render_camera(self):
        if self.camera is not None:
            return self.camera
        cam = mujoco.MjvCamera()
        cam.type = mujoco.mjtCamera.mjCAMERA_FREE
        cam.lookat[:] = (0.3, 0.0, 0.35)
        cam.distance, cam.azimuth, cam.elevation = 1.8, 145.0, -20.0
        return cam


def demo_panel(ax, policy, replay: dict, truth: list, episode: dict, sim_params: dict) -> None:
    """The demo's picture of Panda episodes: the end effector's distance to the goal over time
    (forward kinematics of the joint positions the policy saw) and the 2 cm success radius."""
    names = [o.name for o in policy.spec.observations]
    obs = replay["obs"]
    if len(obs):
        q = obs[:, [names.index(f"{j.removeprefix('panda_')}_pos") for j in JOINTS]]
        goal = obs[:, [names.index(f"goal_{a}") for a in "xyz"]]
        error = np.linalg.norm(end_effector_positions(q) - goal, axis=1)
        ax.plot(replay["t"], 100.0 * error, color="tab:blue", lw=2, label="end effector to goal")
    ax.axhline(100.0 * SUCCESS_RADIUS_M, color="tab:green", ls="--", label="success radius")
    final = episode.get("reach_error_m", float("nan"))
    ax.set(
        yscale="log",
        xlabel="sim time (s)",
        ylabel="distance (cm)",
        title=f"Panda: return {episode.get('return', float('nan')):.1f}, final error "
        f"{100.0 * final:.1f} cm",
    )
    ax.legend(fontsize=7)


# The demo's operator: a new goal every 1.5 s (m, base frame), inside the workspace.
DEMO_GOALS = ((0.45, 0.0, 0.4), (0.5, 0.2, 0.3), (0.35, -0.2, 0.5), (0.55, -0.1, 0.25))


def demo_goals(t_s: float) -> dict[str, dict[str, Any]]:
    """The /goal_pose the demo's operator publishes at sim time `t_s`."""
    x, y, z = DEMO_GOALS[int(max(t_s, 0.0) // 1.5) % len(DEMO_GOALS)]
    pose = {
        "position": {"x": x, "y": y, "z": z},
        "orientation": {"x": 0.0, "y": 0.0, "z": 0.0, "w": 1.0},
    }
    return {GOAL_POSE: {"header": {"frame_id": "panda_link0"}, "pose": pose}}
