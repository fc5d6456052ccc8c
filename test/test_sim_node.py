"""sim_node over real DDS (its own process): topics and rates, /clock, pause, reset, command
timeout, command latency, episode figures; the launch file."""

from __future__ import annotations

import json
import math
import os
import time

import numpy as np
import pytest
from geometry_msgs.msg import Twist
from ros_harness import Harness, NodeProcess
from std_msgs.msg import Float64MultiArray
from std_srvs.srv import SetBool

from liquid_control.ros.messages import stamp_to_s

pytestmark = pytest.mark.ros

CMD = "/cart_force_controller/commands"
TOPICS = {
    "/clock": "rosgraph_msgs/Clock",
    "/joint_states": "sensor_msgs/JointState",
    "/scan": "sensor_msgs/LaserScan",
    "/imu": "sensor_msgs/Imu",
    "/odom": "nav_msgs/Odometry",
    "/sim_node/episode": "std_msgs/String",
    "/sim_node/command_status": "std_msgs/String",
    "/sim_node/ground_truth_pose": "geometry_msgs/PoseStamped",
}


@pytest.fixture(scope="module")
def harness():
    with Harness("sim_test_harness") as h:
        h.rec = {t: h.subscribe(t, m, 1000) for t, m in TOPICS.items()}
        yield h


def _sim_now(h: Harness) -> float:
    return stamp_to_s(h.rec["/clock"].last.clock)


def _wait_message(h: Harness, topic: str, where, node: NodeProcess, timeout_s: float = 20.0):
    """The first message on `topic` (since the recorder was cleared) matching `where`."""
    return h.wait_for(
        lambda: next((m for m in list(h.rec[topic].messages) if where(m)), None),
        timeout_s,
        f"a matching {topic} message",
        node,
    )


def _stamps_over(h: Harness, topic: str, sim_seconds: float, node: NodeProcess) -> np.ndarray:
    """Header stamps of the `topic` messages published during `sim_seconds` of sim time."""
    h.rec[topic].clear()
    start = _sim_now(h)
    end = start + sim_seconds

    def stamps() -> list[float]:
        return [stamp_to_s(m.header.stamp) for m in list(h.rec[topic].messages)]

    # by the messages' own stamps, once one past the window has arrived: on a loaded machine the
    # harness may take /clock ahead of a topic's queued messages (a count by arrival came up short)
    h.wait_for(lambda: any(t > end for t in stamps()), 30, f"{topic} past {sim_seconds} s", node)
    window = np.array([t for t in stamps() if start < t <= end])
    assert len(window) >= 5, f"{topic}: {len(window)} messages in {sim_seconds} s of sim time"
    return window


def _set_bool(value: bool) -> SetBool.Request:
    return SetBool.Request(data=value)


@pytest.fixture(scope="class")
def cartpole(harness, tmp_path_factory):
    node = NodeProcess(
        "liquid_control.ros.sim_node",
        overrides={
            "robot": "cartpole",
            "seed": 3,
            "real_time_factor": 1.0,
            "command_timeout_s": 1.0,
            "command_noise_std": 0.02,  # 0.2 N: 2 % of the +-10 N half range
        },
        log_dir=tmp_path_factory.mktemp("sim"),
    )
    try:
        harness.wait_for(lambda: len(harness.rec["/joint_states"]) >= 10, 30, "joint states", node)
        yield node
    finally:
        node.stop()
        for rec in harness.rec.values():
            rec.clear()


class TestCartPoleNode:
    """One cart-pole sim node (real time) for these tests; stopped before the rover's."""

    def test_joint_states_at_50_hz_of_sim_time_with_no_gaps(self, cartpole, harness):
        h = harness
        stamps = _stamps_over(h, "/joint_states", 1.0, cartpole)
        np.testing.assert_allclose(np.diff(stamps), 0.02, atol=1e-6)  # no gaps, no duplicates
        msg = h.rec["/joint_states"].last
        assert list(msg.name) == ["cart_slide", "pole_hinge"] and len(msg.position) == 2

    def test_pause_stops_sim_time_and_resume_continues(self, cartpole, harness):
        h = harness
        assert h.call("/sim_node/pause", "std_srvs/SetBool", _set_bool(True)).success
        time.sleep(1.0)  # clock messages already in flight arrive
        paused_at = _sim_now(h)
        time.sleep(0.7)
        assert _sim_now(h) == paused_at
        assert h.call("/sim_node/pause", "std_srvs/SetBool", _set_bool(False)).success
        h.wait_for(lambda: _sim_now(h) > paused_at + 0.2, 10, "sim time to run again", cartpole)

    def test_commands_are_applied_with_noise_and_a_timeout_applies_the_safe_command_and_says_so(
        self, cartpole, harness
    ):
        h = harness
        h.publish(CMD, Float64MultiArray(data=[1.5]))
        h.wait_for(
            lambda: h.node.count_subscribers(CMD) >= 1, 10, "sim subscribed to commands", cartpole
        )
        h.rec["/sim_node/command_status"].clear()
        start = time.monotonic()
        while time.monotonic() < start + 1.0:
            h.publish(CMD, Float64MultiArray(data=[1.5]))
            time.sleep(0.02)
        efforts = np.array([m.effort[0] for m in h.rec["/joint_states"].since(start + 0.2)])
        assert len(efforts) > 20
        assert efforts.mean() == pytest.approx(1.5, abs=0.15), "the commanded force is applied"
        assert 0.1 < efforts.std() < 0.35, (
            f"command noise of 0.2 N expected, measured {efforts.std():.3f} N"
        )
        assert any(m.data.startswith("ok") for m in h.rec["/sim_node/command_status"].messages)
        _wait_message(
            h,
            "/sim_node/command_status",
            lambda m: "no command on" in m.data and "applying the safe command" in m.data,
            cartpole,
        )
        time.sleep(0.1)
        assert h.rec["/joint_states"].last.effort[0] == 0.0

    def test_a_non_finite_or_short_command_is_rejected_and_named_in_the_log(
        self, cartpole, harness
    ):
        h = harness
        h.publish(CMD, Float64MultiArray(data=[float("nan")]))
        h.publish(CMD, Float64MultiArray(data=[]))
        h.wait_for(
            lambda: "rejected: non_finite" in cartpole.log(),
            10,
            "NaN rejection logged",
            cartpole,
        )
        h.wait_for(
            lambda: "cart_force" in cartpole.log() and "has 0 values, need 1" in cartpole.log(),
            10,
            "short command logged",
            cartpole,
        )
        time.sleep(0.1)
        assert np.isfinite(h.rec["/joint_states"].last.position).all()

    def test_reset_starts_a_new_episode_and_reports_the_old_one(self, cartpole, harness):
        h = harness
        h.rec["/sim_node/episode"].clear()
        before = _sim_now(h)
        response = h.call("/sim_node/reset", "std_srvs/Trigger")
        assert response.success and "seed" in response.message
        figures = json.loads(_wait_message(h, "/sim_node/episode", lambda m: True, cartpole).data)
        assert (
            figures["reason"] == "reset"
            and figures["steps"] > 10
            and np.isfinite(figures["return"])
        )
        msg = _wait_message(
            h,
            "/joint_states",
            lambda m: stamp_to_s(m.header.stamp) > figures["sim_time_s"],
            cartpole,
        )
        assert abs(msg.position[0]) < 0.06 and abs(abs(msg.position[1]) - np.pi) < 0.06, (
            "hanging, centred"
        )
        assert stamp_to_s(msg.header.stamp) >= before, "sim time keeps running across episodes"


def test_rover_sensor_rates_latency_and_collision_figures(harness, tmp_path):
    h = harness
    node = NodeProcess(
        "liquid_control.ros.sim_node",
        overrides={
            "robot": "rover",
            "seed": 0,
            "track_seed": 2,
            "real_time_factor": 2.0,  # faster than real time
            "command_latency_s": 0.2,
            "command_timeout_s": 5.0,
        },
        log_dir=tmp_path,
    )
    try:
        h.wait_for(lambda: len(h.rec["/scan"]) >= 5, 30, "laser scans", node)
        stamps = {t: _stamps_over(h, t, 0.5, node) for t in ("/scan", "/odom", "/imu")}
        np.testing.assert_allclose(np.diff(stamps["/scan"]), 0.05, atol=1e-6)
        np.testing.assert_allclose(np.diff(stamps["/odom"]), 0.05, atol=1e-6)
        np.testing.assert_allclose(np.diff(stamps["/imu"]), 0.01, atol=1e-6)
        scan = h.rec["/scan"].last
        assert len(scan.ranges) == 40 and scan.range_max == pytest.approx(4.0)
        # Ground truth for plots: the planar pose in the world frame, a unit yaw quaternion.
        start = _wait_message(h, "/sim_node/ground_truth_pose", lambda m: True, node).pose
        assert h.rec["/sim_node/ground_truth_pose"].last.header.frame_id == "world"
        assert start.orientation.z**2 + start.orientation.w**2 == pytest.approx(1.0)

        # Latency: the wheels start turning no earlier than 0.2 s of sim time after the command.
        cmd = Twist()
        cmd.linear.x, cmd.angular.z = 0.5, 2.0  # turn into the left wall
        h.publish("/cmd_vel", Twist())
        h.wait_for(
            lambda: h.node.count_subscribers("/cmd_vel") >= 1,
            10,
            "sim subscribed to /cmd_vel",
            node,
        )
        time.sleep(0.3)
        h.rec["/odom"].clear()
        sent = _sim_now(h)
        h.publish("/cmd_vel", cmd)
        moving = _wait_message(h, "/odom", lambda m: m.twist.twist.linear.x > 0.02, node)
        assert stamp_to_s(moving.header.stamp) >= sent + 0.2 - 0.05

        def moved_m() -> float:
            p = h.rec["/sim_node/ground_truth_pose"].last.pose.position
            return math.hypot(p.x - start.position.x, p.y - start.position.y)

        h.wait_for(lambda: moved_m() > 0.01, 20, "the ground-truth pose to follow the motion", node)

        figures = json.loads(_wait_message(h, "/sim_node/episode", lambda m: True, node, 60).data)
        assert figures["reason"] == "collision" and figures["collisions"] == 1
        assert (
            figures["track_seed"] == 2
            and figures["lane_error_rms_m"] > 0.0
            and figures["return"] < 0
        )
    finally:
        node.stop()


def test_unknown_robot_is_refused_with_the_choices(tmp_path):
    node = NodeProcess("liquid_control.ros.sim_node", overrides={"robot": "tank"}, log_dir=tmp_path)
    try:
        Harness.wait_for(lambda: not node.running, 30, "the node to exit")
        log = node.log()
        assert "parameter robot: expected one of ['cartpole', " in log and "got 'tank'" in log
    finally:
        node.stop()


def test_launch_file_starts_sim_and_policy_nodes_on_sim_time():
    """sim.launch.py (where launch_ros is installed): both nodes, in the namespace asked for, and
    a policy made for another robot refused before anything starts."""
    pytest.importorskip("launch_ros", reason="launch_ros is not installed in this environment")
    import importlib.util

    from launch import LaunchContext

    path = os.path.join(os.path.dirname(__file__), "..", "launch", "sim.launch.py")
    spec = importlib.util.spec_from_file_location("sim_launch", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    description = module.generate_launch_description()
    policies = os.path.join(os.path.dirname(__file__), "..", "policies")

    def nodes(**args):
        context = LaunchContext()
        context.launch_configurations.update(
            {k: d for k, (d, _) in module.ARGUMENTS.items() if d is not None}
        )
        context.launch_configurations.update(args)
        return module._nodes(context)

    rover = os.path.join(policies, "rover_ltc19.lcp")
    sim, policy = nodes(robot="rover", policy_path=rover, namespace="robot1")
    assert [sim.node_executable, policy.node_executable] == ["sim_node", "policy_node"]
    assert description is not None
    with pytest.raises(RuntimeError, match="made for robot 'rover', but robot:=cartpole"):
        nodes(robot="cartpole", policy_path=rover)
