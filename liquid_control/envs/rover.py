"""Rover lane keeping: `spec()` and `RoverLaneEnv` (differential drive on a procedural walled lane).

Observation: the planar laser (sensor_msgs/LaserScan on /scan, 40 beams over 180 degrees, read as
10 equal sectors, nearest return in each, m), forward speed from wheel odometry
(nav_msgs/Odometry on /odom, twist.twist.linear.x, m/s) and yaw rate from the gyro
(sensor_msgs/Imu on /imu, angular_velocity.z, rad/s): 12 values, for a 19-neuron NCP.
Action (geometry_msgs/Twist on /cmd_vel): forward speed linear.x in [0, 1] m/s and yaw rate
angular.z in [-2, 2] rad/s, turned into wheel speed commands by `twist_to_wheels`.

Reward per step (dense): 10 x progress along the lane (m), minus a wall-proximity penalty (up to 0.5
when the bumper is about to touch), minus a jerk penalty on command changes; -5 and the end of the
episode on a collision with a wall; +2 and the end when the lane's end is reached.
"""

from __future__ import annotations

import math
from typing import Any

import mujoco
import numpy as np

from liquid_control.core.spec import ActionElement, InterfaceSpec, ObservationElement

from .base import MujocoRobotEnv
from .track import TrackParams, beam_angles, build_rover_model, generate_track

SCAN, ODOM, IMU, CMD_VEL = "/scan", "/odom", "/imu", "/cmd_vel"
CONTROL_RATE_HZ = 20.0
N_BEAMS = 40
N_SECTORS = 10
FOV_RAD = math.pi
RANGE_MIN_M, RANGE_MAX_M = 0.05, 4.0
WHEEL_RADIUS_M = 0.05
WHEEL_SEPARATION_M = 0.24
MAX_SPEED_MS, MAX_YAW_RATE = 1.0, 2.0
BUMPER_HALF_WIDTH_M = 0.15
START_S_M = 0.6


def spec() -> InterfaceSpec:
    """The rover's interface spec. Noise: 2D lidar 1 cm, encoder speed 0.02 m/s, MEMS gyro 0.01 rad/s."""
    sectors = tuple(
        ObservationElement(
            name=f"scan_sector_{i}",
            topic=SCAN,
            msg_type="sensor_msgs/LaserScan",
            field="ranges",
            index=i,
            sectors=N_SECTORS,
            unit="m",
            mean=1.0,
            std=0.8,
            noise_std=0.01,
        )
        for i in range(N_SECTORS)
    )
    return InterfaceSpec(
        robot="rover",
        observations=(
            *sectors,
            ObservationElement(
                name="forward_speed",
                topic=ODOM,
                msg_type="nav_msgs/Odometry",
                field="twist.twist.linear.x",
                unit="m/s",
                mean=0.5,
                std=0.3,
                noise_std=0.02,
            ),
            ObservationElement(
                name="yaw_rate",
                topic=IMU,
                msg_type="sensor_msgs/Imu",
                field="angular_velocity.z",
                unit="rad/s",
                mean=0.0,
                std=0.5,
                noise_std=0.01,
            ),
        ),
        actions=(
            ActionElement(
                name="forward_speed_cmd",
                topic=CMD_VEL,
                msg_type="geometry_msgs/Twist",
                field="linear.x",
                unit="m/s",
                scale=MAX_SPEED_MS / 2,
                offset=MAX_SPEED_MS / 2,
                low=0.0,
                high=MAX_SPEED_MS,
            ),
            ActionElement(
                name="yaw_rate_cmd",
                topic=CMD_VEL,
                msg_type="geometry_msgs/Twist",
                field="angular.z",
                unit="rad/s",
                scale=MAX_YAW_RATE,
                offset=0.0,
                low=-MAX_YAW_RATE,
                high=MAX_YAW_RATE,
            ),
        ),
        control_rate_hz=CONTROL_RATE_HZ,
        description=(
            "Differential-drive rover keeping a procedurally generated walled lane "
            "(sim/rover.xml + liquid_control/envs/track.py)"
        ),
        extra={
            "sensor_rates_hz": {SCAN: CONTROL_RATE_HZ, ODOM: CONTROL_RATE_HZ, IMU: 100.0},
            "model": "rover.xml",
            "env_id": "LiquidControl/RoverLane-v0",
            "laser": {
                "beams": N_BEAMS,
                "fov_rad": FOV_RAD,
                "range_min_m": RANGE_MIN_M,
                "range_max_m": RANGE_MAX_M,
            },
            "wheel_radius_m": WHEEL_RADIUS_M,
            "wheel_separation_m": WHEEL_SEPARATION_M,
        },
    )


def twist_to_wheels(linear_x: float, angular_z: float) -> tuple[float, float]:
    """Differential drive inverse kinematics: (left, right) wheel speeds in rad/s."""
    half = WHEEL_SEPARATION_M / 2.0
    return (linear_x - angular_z * half) / WHEEL_RADIUS_M, (
        linear_x + angular_z * half
    ) / WHEEL_RADIUS_M


def _quat_dict(q: np.ndarray) -> dict[str, float]:
    """MuJoCo (w, x, y, z) -> geometry_msgs/Quaternion fields."""
    return {"x": float(q[1]), "y": float(q[2]), "z": float(q[3]), "w": float(q[0])}


def _vec(v: np.ndarray) -> dict[str, float]:
    return {"x": float(v[0]), "y": float(v[1]), "z": float(v[2])}


class RoverLaneEnv(MujocoRobotEnv):
    """Keep the lane at speed; the episode ends on a wall collision or at the lane's end.

    Args:
        render_mode: None or "rgb_array" (offscreen, chase camera).
        track_seed: a fixed track; None draws one of `n_tracks` tracks per episode from the env's
            seeded generator (`reset(options={"track_seed": k})` picks one explicitly).
        n_tracks: size of the track pool when `track_seed` is None.
        lane_width_m, track_length_m: lane shape (see `TrackParams`).
    """

    def __init__(
        self,
        render_mode: str | None = None,
        track_seed: int | None = None,
        n_tracks: int = 50,
        lane_width_m: float = 1.2,
        track_length_m: float = 30.0,
        width: int = 480,
        height: int = 360,
    ) -> None:
        super().__init__(spec(), render_mode, width, height, camera="chase")
        if n_tracks < 1:
            raise ValueError(f"n_tracks: expected >= 1, got {n_tracks}")
        self.fixed_track_seed = track_seed
        self.n_tracks = int(n_tracks)
        self.track_params = TrackParams(
            length_m=float(track_length_m), lane_width_m=float(lane_width_m)
        )
        self.track_seed = 0 if track_seed is None else int(track_seed)
        self.track = generate_track(self.track_seed, self.track_params)
        self._install_model(build_rover_model(self.track_seed, N_BEAMS, FOV_RAD, self.track_params))
        self._angles = beam_angles(N_BEAMS, FOV_RAD)
        self._odom = np.zeros(3)
        self._wheel_angles = np.zeros(2)

    # -- model ------------------------------------------------------------------------------
    def _build_model(self, options: dict[str, Any]) -> mujoco.MjModel:
        if "track_seed" in options:
            seed = int(options["track_seed"])
        elif self.fixed_track_seed is not None:
            seed = int(self.fixed_track_seed)
        else:
            seed = int(self.np_random.integers(self.n_tracks))
        if seed != self.track.seed:
            self.track = generate_track(seed, self.track_params)
        self.track_seed = seed
        return build_rover_model(seed, N_BEAMS, FOV_RAD, self.track_params)

    def _install_model(self, model: mujoco.MjModel) -> None:
        super()._install_model(model)
        m = self.model
        self._free_q = m.joint("rover_free").qposadr[0]
        self._free_v = m.joint("rover_free").dofadr[0]
        self._wheel_q = np.array(
            [m.joint(j).qposadr[0] for j in ("left_wheel_joint", "right_wheel_joint")]
        )
        self._wheel_v = np.array(
            [m.joint(j).dofadr[0] for j in ("left_wheel_joint", "right_wheel_joint")]
        )
        self._laser_adr = m.sensor("laser_0").adr[0]
        self._gyro_adr = m.sensor("imu_gyro").adr[0]
        self._accel_adr = m.sensor("imu_accel").adr[0]
        self._quat_adr = m.sensor("imu_orientation").adr[0]
        self._bumper = m.geom("bumper").id
        self._rover_body = m.body("rover").id

    def _reset_state(self) -> None:
        rng = self.np_random
        i = int(round(START_S_M / (self.track.arc_length[1] - self.track.arc_length[0])))
        h = self.track.headings[i]
        lateral = rng.uniform(-0.15, 0.15)
        yaw = h + rng.uniform(-0.15, 0.15)
        xy = self.track.points[i] + lateral * np.array([-math.sin(h), math.cos(h)])
        q = self.data.qpos
        q[self._free_q : self._free_q + 3] = [xy[0], xy[1], WHEEL_RADIUS_M]
        q[self._free_q + 3 : self._free_q + 7] = [math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2)]
        self._odom[:] = 0.0
        self._wheel_angles[:] = q[self._wheel_q]
        self._track_index, self._s, self._lateral = self.track.project(xy, i)
        self._collisions = 0

    def _reset_info(self) -> dict[str, Any]:
        return {"track_seed": self.track_seed, "lane_error": self._lateral, "progress_m": 0.0}

    # -- command and physics -----------------------------------------------------------------
    def _write_controls(self, action: np.ndarray) -> None:
        self.data.ctrl[:2] = twist_to_wheels(action[0], action[1])

    def advance(self, n_substeps: int) -> float:
        dt = super().advance(n_substeps)
        self._integrate_odometry()
        return dt

    def _integrate_odometry(self) -> None:
        # Wheel odometry from encoder angle increments (what a diff-drive controller integrates).
        angles = self.data.qpos[self._wheel_q]
        d_left, d_right = (angles - self._wheel_angles) * WHEEL_RADIUS_M
        self._wheel_angles[:] = angles
        ds, dyaw = (d_left + d_right) / 2.0, (d_right - d_left) / WHEEL_SEPARATION_M
        mid = self._odom[2] + dyaw / 2.0
        self._odom += [ds * math.cos(mid), ds * math.sin(mid), dyaw]

    # -- sensors ---------------------------------------------------------------------------------
    def readings(self) -> dict[str, dict[str, Any]]:
        self.sync()
        d = self.data
        raw = d.sensordata[self._laser_adr : self._laser_adr + N_BEAMS]
        # MuJoCo reports -1 for no hit; a real scanner reports +inf beyond range_max (REP 117).
        ranges = np.where((raw < 0) | (raw > RANGE_MAX_M), np.inf, np.maximum(raw, RANGE_MIN_M))
        w_left, w_right = d.qvel[self._wheel_v] * WHEEL_RADIUS_M
        x, y, yaw = self._odom
        return {
            SCAN: {
                "header": {"frame_id": "laser"},
                "angle_min": float(self._angles[0]),
                "angle_max": float(self._angles[-1]),
                "angle_increment": float(self._angles[1] - self._angles[0]),
                "time_increment": 0.0,
                "scan_time": 1.0 / CONTROL_RATE_HZ,
                "range_min": RANGE_MIN_M,
                "range_max": RANGE_MAX_M,
                # float32, as sensor_msgs/LaserScan carries them: training sees the robot's values.
                "ranges": ranges.astype(np.float32).astype(np.float64).tolist(),
            },
            ODOM: {
                "header": {"frame_id": "odom"},
                "child_frame_id": "base_link",
                "pose": {
                    "pose": {
                        "position": {"x": float(x), "y": float(y), "z": 0.0},
                        "orientation": {
                            "x": 0.0,
                            "y": 0.0,
                            "z": math.sin(yaw / 2),
                            "w": math.cos(yaw / 2),
                        },
                    }
                },
                "twist": {
                    "twist": {
                        "linear": {"x": float((w_left + w_right) / 2.0), "y": 0.0, "z": 0.0},
                        "angular": {
                            "x": 0.0,
                            "y": 0.0,
                            "z": float((w_right - w_left) / WHEEL_SEPARATION_M),
                        },
                    }
                },
            },
            IMU: {
                "header": {"frame_id": "imu_link"},
                "orientation": _quat_dict(d.sensordata[self._quat_adr : self._quat_adr + 4]),
                "angular_velocity": _vec(d.sensordata[self._gyro_adr : self._gyro_adr + 3]),
                "linear_acceleration": _vec(d.sensordata[self._accel_adr : self._accel_adr + 3]),
            },
        }

    # -- task ------------------------------------------------------------------------------------
    def pose(self) -> tuple[float, float, float]:
        """Ground-truth planar pose (x m, y m, yaw rad)."""
        q = self.data.qpos[self._free_q : self._free_q + 7]
        yaw = math.atan2(2 * (q[3] * q[6] + q[4] * q[5]), 1 - 2 * (q[5] ** 2 + q[6] ** 2))
        return float(q[0]), float(q[1]), yaw

    def in_collision(self) -> bool:
        """True if the bumper touches a wall (or the rover has tipped over)."""
        self.sync()
        d = self.data
        touching = bool(np.any(d.contact.geom[: d.ncon] == self._bumper))
        upright = self.data.xmat[self._rover_body][8]  # z axis of the chassis, world z component
        return touching or bool(upright < 0.5)

    def evaluate(self, action: np.ndarray, dt_s: float) -> tuple[float, bool, dict[str, Any]]:
        x, y, _ = self.pose()
        s_prev = self._s
        self._track_index, self._s, self._lateral = self.track.project(
            np.array([x, y]), self._track_index
        )
        progress = self._s - s_prev
        wall_distance = self.track.lane_width_m / 2.0 - abs(self._lateral)
        proximity = float(np.clip((0.45 - wall_distance) / 0.3, 0.0, 1.0))
        change = (np.asarray(action) - self.last_action) / np.array([MAX_SPEED_MS, MAX_YAW_RATE])
        jerk = float(change @ change)
        reward = 10.0 * progress - 0.5 * proximity - 0.05 * jerk
        collision = self.in_collision()
        finished = self._s >= self.track.length_m - 0.8
        if collision:
            reward -= 5.0
            self._collisions += 1
        elif finished:
            reward += 2.0
        info = {
            "progress_m": self._s - START_S_M,
            "lane_error": self._lateral,
            "wall_distance": wall_distance,
            "collision": collision,
            "finished": finished,
            "track_seed": self.track_seed,
        }
        return reward, collision or finished, info


def demo_panel(ax, policy, replay: dict, truth: list, episode: dict, sim_params: dict) -> None:
    """The demo's picture of a rover episode: the walls, the lane centre and the ground-truth path."""
    from .track import wall_segments

    track_seed = int(sim_params.get("track_seed", episode.get("track_seed", 0)))
    env = RoverLaneEnv(track_seed=track_seed)
    for a, b in wall_segments(env.track):
        ax.plot([a[0], b[0]], [a[1], b[1]], color="0.3", lw=1)
    ax.plot(
        env.track.points[:, 0], env.track.points[:, 1], "--", color="0.7", lw=0.8,
        label="lane centre",
    )  # fmt: skip
    env.close()
    if truth:
        xy = np.array([p for _, p in truth])
        ax.plot(
            xy[:, 0],
            xy[:, 1],
            color="tab:blue",
            lw=2,
            label="rover (ground truth from the sim node)",
        )
    ax.set(
        aspect="equal",
        xlabel="x (m)",
        ylabel="y (m)",
        title=f"track {track_seed}: return {episode.get('return', float('nan')):.1f}, "
        f"lane error {episode.get('lane_error_rms_m', float('nan')):.3f} m rms",
    )
    ax.legend(fontsize=7)
