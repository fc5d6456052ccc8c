"""The compiled input path (csrc/cdr.h: decode program + reader, prepared by
ros/native_tick.py) against the Python one (ros/wire.py + the message table's readers): random
valid messages of every input type, the message table's bad cases, and random corruptions of
their bytes (truncations, flipped bytes, overwritten lengths) give the same values bit for bit or
the same rejection reason."""

from __future__ import annotations

import math
import random
import struct
import zlib

import numpy as np
import pytest
from geometry_msgs.msg import PoseStamped, Twist
from nav_msgs.msg import Odometry
from rclpy.serialization import serialize_message
from sensor_msgs.msg import Imu, JointState, LaserScan
from std_msgs.msg import Float64MultiArray, MultiArrayDimension

from liquid_control.core import native
from liquid_control.core.adapters import MessageRejected, ObservationAssembler
from liquid_control.core.spec import ActionElement, InterfaceSpec
from liquid_control.core.spec import ObservationElement as Obs
from liquid_control.ros.native_tick import REASONS, reader_description
from liquid_control.ros.wire import Malformed, decoder_for

pytestmark = pytest.mark.skipif(not native.available(), reason="the compiled core is not built")
MAX_BYTES = 65536

SPECS = {
    "joints": (
        JointState,
        [
            Obs("q0", "/js", "sensor_msgs/JointState", "position", key="j0"),
            Obs("q1", "/js", "sensor_msgs/JointState", "position", key="ünï", transform="sin"),
            Obs("v1", "/js", "sensor_msgs/JointState", "velocity", key="ünï"),
            Obs("e0", "/js", "sensor_msgs/JointState", "effort", key="j0", transform="cos"),
        ],
    ),
    "imu": (
        Imu,
        [
            Obs("wz", "/imu", "sensor_msgs/Imu", "angular_velocity.z"),
            Obs("ax", "/imu", "sensor_msgs/Imu", "linear_acceleration.x"),
            Obs("qw", "/imu", "sensor_msgs/Imu", "orientation.w", transform="cos"),
            Obs("wz2", "/imu", "sensor_msgs/Imu", "angular_velocity.z", transform="sin"),
        ],
    ),
    "odom": (
        Odometry,
        [
            Obs("x", "/odom", "nav_msgs/Odometry", "pose.pose.position.x"),
            Obs("vx", "/odom", "nav_msgs/Odometry", "twist.twist.linear.x"),
            Obs("sec", "/odom", "nav_msgs/Odometry", "header.stamp.sec"),
        ],
    ),
    "pose": (
        PoseStamped,
        [
            Obs("gx", "/goal_pose", "geometry_msgs/PoseStamped", "pose.position.x"),
            Obs("gz", "/goal_pose", "geometry_msgs/PoseStamped", "pose.position.z"),
            Obs("qw", "/goal_pose", "geometry_msgs/PoseStamped", "pose.orientation.w"),
        ],
    ),
    "twist": (Twist, [Obs("w", "/t", "geometry_msgs/Twist", "angular.z")]),
    "array": (
        Float64MultiArray,
        [
            Obs("a3", "/a", "std_msgs/Float64MultiArray", "data", index=3),
            Obs("a0", "/a", "std_msgs/Float64MultiArray", "data", index=0),
        ],
    ),
    "laser": (
        LaserScan,
        [
            Obs(f"s{i}", "/scan", "sensor_msgs/LaserScan", "ranges", index=i, sectors=5)
            for i in range(5)
        ],
    ),
}


def both(name):
    cls, elements = SPECS[name]
    spec = InterfaceSpec(
        observations=elements,
        actions=[ActionElement("u", "/cmd", "std_msgs/Float64MultiArray", "data", index=0)],
        control_rate_hz=50.0,
        robot="test",
    )
    python = ObservationAssembler(spec).readers[elements[0].topic]
    decode = decoder_for(cls)
    compiled = native.load().InputReader(reader_description(cls, elements, MAX_BYTES))

    def check(data: bytes, where: str) -> str:
        try:
            if len(data) > MAX_BYTES:
                raise MessageRejected("too_large", "")
            try:
                msg = decode(data)
            except Malformed as exc:
                raise MessageRejected("malformed", str(exc)) from None
            expected, reason = python.read(msg), "ok"
        except MessageRejected as exc:
            expected, reason = None, exc.reason
        except Exception:  # noqa: BLE001 (rclpy's deserialiser on another encapsulation)
            expected, reason = None, "malformed"
        out = np.zeros(len(elements))
        code, detail = compiled.read(data, out)
        assert REASONS[code] == reason, f"{where}: C {REASONS[code]} ({detail}), Python {reason}"
        if expected is not None:
            assert out.tobytes() == np.asarray(expected, np.float64).tobytes(), where
        return reason

    return cls, check


def finite(rng):
    return rng.choice([0.0, -0.0, 1.5, -2.25, 1e-300, 3e38, rng.uniform(-10, 10)])


def value(rng):
    return rng.choice([finite(rng)] * 6 + [math.nan, math.inf, -math.inf])


def make(name, rng):
    if name == "joints":
        names = ["j0", "ünï"] + [f"x{i}" for i in range(rng.randint(0, 6))]
        rng.shuffle(names)
        if rng.random() < 0.1:
            names.remove(rng.choice(["j0", "ünï"]))  # missing
        if rng.random() < 0.1:
            names.append(rng.choice(names or ["j0"]))  # duplicate
        n = len(names)
        lengths = [n if rng.random() > 0.1 else rng.randint(0, n + 2) for _ in range(3)]
        return JointState(
            name=names,
            position=[value(rng) for _ in range(lengths[0])],
            velocity=[value(rng) for _ in range(lengths[1])],
            effort=[value(rng) for _ in range(lengths[2])],
        )
    if name == "imu":
        m = Imu()
        m.header.frame_id = rng.choice(["", "imu_link", "ça"])
        m.angular_velocity.z, m.linear_acceleration.x = value(rng), value(rng)
        m.orientation.w = value(rng)
        m.orientation_covariance = [value(rng) for _ in range(9)]
        return m
    if name == "odom":
        m = Odometry(child_frame_id="base")
        m.header.stamp.sec = rng.randint(-(2**31), 2**31 - 1)
        m.pose.pose.position.x, m.twist.twist.linear.x = value(rng), value(rng)
        return m
    if name == "pose":
        m = PoseStamped()
        m.header.frame_id = rng.choice(["", "panda_link0", "ça"])
        m.pose.position.x, m.pose.position.z = value(rng), value(rng)
        m.pose.orientation.w = value(rng)
        return m
    if name == "twist":
        m = Twist()
        m.angular.z = value(rng)
        return m
    if name == "array":
        m = Float64MultiArray(data=[value(rng) for _ in range(rng.randint(0, 6))])
        m.layout.dim = [
            MultiArrayDimension(label=rng.choice(["x", "ÿ"]), size=2, stride=2)
            for _ in range(rng.randint(0, 2))
        ]
        return m
    ranges = [
        rng.choice([finite(rng), math.inf, math.inf, math.nan, -math.inf, 0.5])
        for _ in range(rng.choice([0, 1, 3, 5, 7, 40]))
    ]
    ranges = [r if abs(r) < 3e38 or not math.isfinite(r) else 1.0 for r in ranges]
    return LaserScan(
        range_max=rng.choice([10.0, 10.0, 0.0, -1.0, math.inf, math.nan]), ranges=ranges
    )


def corrupt(data: bytes, rng) -> bytes:
    b = bytearray(data)
    what = rng.randrange(4)
    if what == 0:
        return bytes(b[: rng.randrange(len(b) + 1)])
    if what == 1:
        for _ in range(rng.randint(1, 4)):  # (the encapsulation header: see below)
            b[rng.randrange(2, len(b))] = rng.randrange(256)
        return bytes(b)
    if what == 2 and len(b) > 8:  # an aligned word set to a large or small count
        at = 4 + 4 * rng.randrange((len(b) - 8) // 4)
        b[at : at + 4] = struct.pack("<I", rng.choice([0, 1, 2, 7, 0xFFFF, 0xFFFFFFFF]))
        return bytes(b)
    return bytes(b) + bytes(rng.randrange(8))


@pytest.mark.parametrize("name", sorted(SPECS))
def test_compiled_reader_matches_the_python_path(name):
    rng = random.Random(zlib.crc32(name.encode()))
    cls, check = both(name)
    seen = set()
    for k in range(1500):
        data = serialize_message(make(name, rng))
        seen.add(check(data, f"{name} message {k}"))
        for j in range(3):
            seen.add(check(corrupt(data, rng), f"{name} message {k} corruption {j}"))
    # the cases were exercised: valid messages, malformed bytes and the type's own checks
    assert {"ok", "malformed"} <= seen, seen
    if name in ("joints", "laser", "array", "imu", "pose"):
        assert "non_finite" in seen, seen
    if name == "joints":
        assert {"missing_joint", "duplicate_joint", "wrong_length"} <= seen, seen


def test_oversized_and_foreign_encapsulations_are_rejected():
    """Every ROS 2 RMW writes little-endian CDR (00 01) on the machines we run on; the compiled
    path decodes only that and rejects anything else as malformed (the Python path hands other
    encapsulations to rclpy's deserialiser)."""
    cls, check = both("joints")
    big = JointState(name=["j0", "ünï"] + [f"x{i:05d}" for i in range(MAX_BYTES // 8)])
    big.position = [0.0] * len(big.name)
    assert check(serialize_message(big), "big") == "too_large"
    data = serialize_message(make("joints", random.Random(1)))
    compiled = native.load().InputReader(
        reader_description(JointState, SPECS["joints"][1], MAX_BYTES)
    )
    code, detail = compiled.read(b"\x00\x00" + data[2:], np.zeros(4))  # big-endian CDR
    assert REASONS[code] == "malformed" and "encapsulation" in detail
