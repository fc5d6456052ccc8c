"""Every input and output message type through the policy node: JointState, Imu, LaserScan
(sectors), Odometry, Twist and Float64MultiArray in; Twist (cmd_vel) and JointTrajectory out.
Known values go in, the node's raw observation (~/observation) and its commands are checked."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from geometry_msgs.msg import Twist
from nav_msgs.msg import Odometry
from ros_harness import Harness, NodeProcess, diagnostic_values, save_test_policy
from sensor_msgs.msg import Imu, JointState, LaserScan
from std_msgs.msg import Float64MultiArray
from test_policy_node import debug_rows

from liquid_control.core import ActionElement, InterfaceSpec, ObservationElement
from liquid_control.ros.messages import SENSOR_QOS

pytestmark = [pytest.mark.ros, pytest.mark.timeout(180)]

RATE_HZ = 40.0
Obs = ObservationElement
OBS = [
    Obs("wheel_vel", "/joint_states", "sensor_msgs/JointState", "velocity", key="wheel"),
    Obs("yaw_rate", "/imu", "sensor_msgs/Imu", "angular_velocity.z"),
    Obs("accel_x", "/imu", "sensor_msgs/Imu", "linear_acceleration.x"),
    *[
        Obs(f"scan_{i}", "/scan", "sensor_msgs/LaserScan", "ranges", index=i, sectors=4)
        for i in range(4)
    ],
    Obs("speed", "/odom", "nav_msgs/Odometry", "twist.twist.linear.x"),
    Obs("heading_sin", "/odom", "nav_msgs/Odometry", "pose.pose.orientation.z", transform="sin"),
    Obs("goal_speed", "/goal", "geometry_msgs/Twist", "linear.x"),
    Obs("goal_turn", "/goal", "geometry_msgs/Twist", "angular.z"),
    Obs("extra_1", "/extra", "std_msgs/Float64MultiArray", "data", index=1),
]
ACT = [
    ActionElement("v", "/cmd_vel", "geometry_msgs/Twist", "linear.x", low=-1.0, high=1.0),
    ActionElement("w", "/cmd_vel", "geometry_msgs/Twist", "angular.z", low=-2.0, high=2.0),
    ActionElement(
        "arm",
        "/arm_controller/joint_trajectory",
        "trajectory_msgs/JointTrajectory",
        "positions",
        key="arm_joint",
        low=-3.0,
        high=3.0,
    ),
]


def inputs(scan_ranges) -> dict:
    odom = Odometry()
    odom.twist.twist.linear.x = 0.7
    odom.pose.pose.orientation.z = 0.25
    imu = Imu()
    imu.angular_velocity.z = -0.3
    imu.linear_acceleration.x = 9.5
    goal = Twist()
    goal.linear.x, goal.angular.z = 0.4, -0.1
    scan = LaserScan(range_min=0.1, range_max=10.0, ranges=scan_ranges)
    return {
        "/joint_states": JointState(
            name=["other", "wheel"], position=[0.0, 0.0], velocity=[5.0, 2.5]
        ),
        "/imu": imu,
        "/scan": scan,
        "/odom": odom,
        "/goal": goal,
        "/extra": Float64MultiArray(data=[7.0, 8.0, 9.0]),
    }


# 12 beams in 4 sectors of 3: the element is the nearest return; +inf = no return = range_max.
# (ranges are float32 on the wire: values exact in float32)
RANGES = [5.0, 4.0, 6.0, math.inf, math.inf, math.inf, 1.5, 2.0, 0.5, 3.0, 3.5, 2.75]
EXPECTED = [2.5, -0.3, 9.5, 4.0, 10.0, 0.5, 2.75, 0.7, math.sin(0.25), 0.4, -0.1, 8.0]


def test_each_input_type_is_read_and_each_output_type_written(tmp_path):
    spec = InterfaceSpec("rover", OBS, ACT, RATE_HZ)
    policy = tmp_path / "rover.lcp"
    save_test_policy(policy, spec, seed=7)
    params = {
        "policy_path": str(policy),
        "debug": True,
        "sensor_timeout_s": 1.0,
        "estop_required_at_start": False,
    }
    with (
        NodeProcess(
            "liquid_control.ros.policy_node", params=params, name="rover_policy", log_dir=tmp_path
        ) as node,
        Harness() as h,
    ):
        debug = h.subscribe("/rover_policy/observation", "std_msgs/Float64MultiArray", 1000)
        cmd_vel = h.subscribe("/cmd_vel", "geometry_msgs/Twist")
        traj = h.subscribe("/arm_controller/joint_trajectory", "trajectory_msgs/JointTrajectory")
        diag = h.subscribe("/diagnostics", "diagnostic_msgs/DiagnosticArray")
        msgs = inputs(RANGES)
        for topic, msg in msgs.items():
            h.publish_periodically(topic, lambda msg=msg: msg, 50.0, SENSOR_QOS)
        h.wait_for(
            lambda: len(debug) >= 5 and len(cmd_vel) >= 5 and len(traj) >= 5,
            30.0,
            "ticks and commands",
            node,
        )

        row = debug_rows([debug.last])[0]
        np.testing.assert_allclose(row["obs"], EXPECTED, rtol=0, atol=1e-12)
        time.sleep(0.2)
        actions = [tuple(r["action"]) for r in debug_rows(debug.messages)]
        twist = cmd_vel.messages[-3]
        point_msg = traj.messages[-3]
        match = [a for a in actions if a[0] == twist.linear.x and a[1] == twist.angular.z]
        assert match, "cmd_vel does not carry the policy's actions"
        assert point_msg.joint_names == ["arm_joint"] and len(point_msg.points) == 1
        assert any(a[2] == point_msg.points[0].positions[0] for a in actions)
        tfs = point_msg.points[0].time_from_start
        assert tfs.sec + tfs.nanosec * 1e-9 == pytest.approx(1.0 / RATE_HZ)
        assert twist.linear.y == twist.linear.z == twist.angular.x == twist.angular.y == 0.0

        # A scan with a NaN beam is rejected as a whole (the observation keeps the good one).
        bad = inputs([math.nan, *RANGES[1:]])["/scan"]
        h.stop_publishing("/scan")
        for _ in range(5):
            h.publish("/scan", bad, SENSOR_QOS)
            time.sleep(0.02)
        h.publish_periodically("/scan", lambda: msgs["/scan"], 50.0, SENSOR_QOS)

        def rejected():
            values = [diagnostic_values(m, "rover_policy") for m in diag.messages]
            return next(
                (v for v in reversed(values) if v and int(v.get("rejected_non_finite", 0)) >= 3),
                None,
            )

        d = h.wait_for(rejected, 8.0, "rejected_non_finite >= 3", node)
        assert "/scan" in d["last_rejection_non_finite"]
        assert all(np.isfinite(r["obs"]).all() for r in debug_rows(debug.messages))
        np.testing.assert_allclose(debug_rows([debug.last])[0]["obs"], EXPECTED, atol=1e-12)
