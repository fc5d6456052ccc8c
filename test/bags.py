"""Real rosbag2 bags for tests, written with `rosbags` (MCAP or sqlite3, with the message
definitions of the Kilted typestore, as `ros2 bag record` stores them)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

STORE = get_typestore(Stores.ROS2_KILTED)
T = STORE.types


def _time(t_s: float) -> Any:
    ns = int(round(t_s * 1e9))
    return T["builtin_interfaces/msg/Time"](sec=ns // 10**9, nanosec=ns % 10**9)


def header(t_s: float, frame: str = "base_link") -> Any:
    return T["std_msgs/msg/Header"](stamp=_time(t_s), frame_id=frame)


def vec(x: float = 0.0, y: float = 0.0, z: float = 0.0) -> Any:
    return T["geometry_msgs/msg/Vector3"](x=float(x), y=float(y), z=float(z))


def imu(t_s: float, yaw_rate: float) -> Any:
    return T["sensor_msgs/msg/Imu"](
        header=header(t_s),
        orientation=T["geometry_msgs/msg/Quaternion"](x=0.0, y=0.0, z=0.0, w=1.0),
        orientation_covariance=np.zeros(9),
        angular_velocity=vec(z=yaw_rate),
        angular_velocity_covariance=np.zeros(9),
        linear_acceleration=vec(z=9.81),
        linear_acceleration_covariance=np.zeros(9),
    )


def odom(t_s: float, speed: float) -> Any:
    pose = T["geometry_msgs/msg/Pose"](
        position=T["geometry_msgs/msg/Point"](x=0.0, y=0.0, z=0.0),
        orientation=T["geometry_msgs/msg/Quaternion"](x=0.0, y=0.0, z=0.0, w=1.0),
    )
    twist = T["geometry_msgs/msg/Twist"](linear=vec(x=speed), angular=vec())
    return T["nav_msgs/msg/Odometry"](
        header=header(t_s, "odom"),
        child_frame_id="base_link",
        pose=T["geometry_msgs/msg/PoseWithCovariance"](pose=pose, covariance=np.zeros(36)),
        twist=T["geometry_msgs/msg/TwistWithCovariance"](twist=twist, covariance=np.zeros(36)),
    )


def scan(t_s: float, ranges: np.ndarray) -> Any:
    return T["sensor_msgs/msg/LaserScan"](
        header=header(t_s, "laser"),
        angle_min=-1.57,
        angle_max=1.57,
        angle_increment=3.14 / max(len(ranges) - 1, 1),
        time_increment=0.0,
        scan_time=0.05,
        range_min=0.05,
        range_max=4.0,
        ranges=np.asarray(ranges, np.float32),
        intensities=np.zeros(0, np.float32),
    )


def twist(linear_x: float, angular_z: float) -> Any:
    return T["geometry_msgs/msg/Twist"](linear=vec(x=linear_x), angular=vec(z=angular_z))


def clock(t_s: float) -> Any:
    return T["rosgraph_msgs/msg/Clock"](clock=_time(t_s))


def boolean(v: bool) -> Any:
    return T["std_msgs/msg/Bool"](data=bool(v))


def string(v: str) -> Any:
    return T["std_msgs/msg/String"](data=v)


def float_array(values: Iterable[float], dims: list[tuple[str, int]] | None = None) -> Any:
    dim = [T["std_msgs/msg/MultiArrayDimension"](label=k, size=n, stride=n) for k, n in dims or []]
    return T["std_msgs/msg/Float64MultiArray"](
        layout=T["std_msgs/msg/MultiArrayLayout"](dim=dim, data_offset=0),
        data=np.asarray(list(values), np.float64),
    )


TYPES = {
    "Imu": "sensor_msgs/msg/Imu",
    "Odometry": "nav_msgs/msg/Odometry",
    "LaserScan": "sensor_msgs/msg/LaserScan",
    "Twist": "geometry_msgs/msg/Twist",
    "Clock": "rosgraph_msgs/msg/Clock",
    "Bool": "std_msgs/msg/Bool",
    "String": "std_msgs/msg/String",
    "Float64MultiArray": "std_msgs/msg/Float64MultiArray",
}


def write_bag(
    path: str | Path,
    messages: Iterable[tuple[str, float, Any]],
    storage: str = "mcap",
    raw: dict[tuple[str, float], bytes] | None = None,
) -> Path:
    """Write (topic, log time s, message) into a new bag folder; `raw` replaces the bytes of
    the message at (topic, time) (undecodable messages)."""
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    path = Path(path)
    conns: dict[str, Any] = {}
    with Writer(path, version=9, storage_plugin=plugin) as w:
        for topic, t_s, msg in messages:
            typ = msg.__msgtype__
            if topic not in conns:
                conns[topic] = w.add_connection(topic, typ, typestore=STORE)
            data = (raw or {}).get((topic, t_s)) or STORE.serialize_cdr(msg, typ)
            w.write(conns[topic], int(round(t_s * 1e9)), data)
    return path
