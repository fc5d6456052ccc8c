"""sim_node over real DDS (its own process): topics and rates, /clock, reset, pause, command
timeout, command latency, episode figures."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from geometry_msgs.msg import Twist
from nav_msgs.msg import Odometry
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import Imu, JointState, LaserScan
from sim_ros_helpers import NodeProcess, Probe, stamp_s
from std_msgs.msg import Float64MultiArray, String
from std_srvs.srv import SetBool, Trigger

pytestmark = pytest.mark.ros

CMD = "/cart_force_controller/commands"


@pytest.fixture(scope="module")
def probe():
    p = Probe()
    for topic, cls in [
        ("/clock", Clock),
        ("/joint_states", JointState),
        ("/scan", LaserScan),
        ("/imu", Imu),
        ("/odom", Odometry),
        ("/sim_node/episode", String),
        ("/sim_node/command_status", String),
    ]:
        p.listen(topic, cls)
    yield p
    p.close()


@pytest.fixture(scope="class")
def cartpole(probe, tmp_path_factory):
    node = NodeProcess(
        "liquid_control.ros.sim_node",
        {"robot": "cartpole", "seed": 3, "real_time_factor": 1.0, "command_timeout_s": 0.3},
        str(tmp_path_factory.mktemp("sim") / "cartpole.log"),
    )
    try:
        probe.wait_for("/joint_states", 10, timeout_s=30)
        yield node
    finally:
        node.stop()
        probe.clear()


def _sim_now(probe: Probe) -> float:
    return stamp_s(probe.take("/clock")[-1][1].clock)


def _collect_stamps(probe: Probe, topic: str, sim_seconds: float) -> np.ndarray:
    probe.clear(topic)
    start = _sim_now(probe)
    probe.wait_for("/clock", where=lambda m: stamp_s(m.clock) > start + sim_seconds, timeout_s=30)
    stamps = np.array([stamp_s(m.header.stamp) for _, m in probe.take(topic)])
    assert len(stamps) >= 5, f"{topic}: {len(stamps)} messages in {sim_seconds} s of sim time"
    return stamps


class TestCartPoleNode:
    """One cart-pole sim node (real time) for these tests; stopped before the rover's."""

    def test_cartpole_joint_states_at_50_hz_of_sim_time_and_clock_runs_in_real_time(
        self, cartpole, probe
    ):
        wall0, sim0 = time.monotonic(), _sim_now(probe)
        stamps = _collect_stamps(probe, "/joint_states", 1.0)
        wall1, sim1 = time.monotonic(), _sim_now(probe)
        np.testing.assert_allclose(np.diff(stamps), 0.02, atol=1e-6)  # no gaps, no duplicates
        msg = probe.take("/joint_states")[-1][1]
        assert list(msg.name) == ["cart_slide", "pole_hinge"] and len(msg.position) == 2
        rtf = (sim1 - sim0) / (wall1 - wall0)
        assert 0.3 < rtf < 1.15, f"real_time_factor 1.0 measured as {rtf:.2f}"

    def test_pause_stops_sim_time_and_resume_continues(self, cartpole, probe):
        assert probe.call(SetBool, "/sim_node/pause", SetBool.Request(data=True)).success
        time.sleep(0.3)
        paused_at = _sim_now(probe)
        time.sleep(0.7)
        assert _sim_now(probe) == paused_at
        assert probe.call(SetBool, "/sim_node/pause", SetBool.Request(data=False)).success
        probe.wait_for("/clock", where=lambda m: stamp_s(m.clock) > paused_at + 0.2, timeout_s=10)

    def test_commands_drive_the_cart_and_a_timeout_applies_zero_and_says_so(self, cartpole, probe):
        probe.publish(CMD, Float64MultiArray(data=[1.5]))
        probe.wait_for_subscriber(CMD)
        probe.clear("/sim_node/command_status")
        deadline = time.monotonic() + 0.6
        while time.monotonic() < deadline:
            probe.publish(CMD, Float64MultiArray(data=[1.5]))
            time.sleep(0.02)
        msg = probe.take("/joint_states")[-1][1]
        assert msg.effort[0] == pytest.approx(1.5), "the commanded force is applied"
        assert any(m.data.startswith("ok") for _, m in probe.take("/sim_node/command_status"))
        probe.wait_for(
            "/sim_node/command_status",
            where=lambda m: "no command on" in m.data and "applying zero" in m.data,
            timeout_s=10,
        )
        time.sleep(0.1)
        assert probe.take("/joint_states")[-1][1].effort[0] == 0.0

    def test_reset_starts_a_new_episode_and_reports_the_old_one(self, cartpole, probe):
        probe.clear("/sim_node/episode")
        before = _sim_now(probe)
        response = probe.call(Trigger, "/sim_node/reset", Trigger.Request())
        assert response.success and "seed" in response.message
        figures = json.loads(probe.wait_for("/sim_node/episode")[0].data)
        assert (
            figures["reason"] == "reset"
            and figures["steps"] > 10
            and np.isfinite(figures["return"])
        )
        msg = probe.wait_for(
            "/joint_states", where=lambda m: stamp_s(m.header.stamp) > figures["sim_time_s"]
        )[0]
        assert abs(msg.position[0]) < 0.06 and abs(abs(msg.position[1]) - np.pi) < 0.06, (
            "back to hanging at the centre"
        )
        assert stamp_s(msg.header.stamp) >= before, "sim time keeps running forward across episodes"


def test_rover_sensor_rates_latency_and_collision_figures(probe, tmp_path):
    node = NodeProcess(
        "liquid_control.ros.sim_node",
        {
            "robot": "rover",
            "seed": 0,
            "track_seed": 2,
            "real_time_factor": 1.0,
            "command_latency_s": 0.2,
            "command_timeout_s": 5.0,
        },
        str(tmp_path / "rover.log"),
    )
    try:
        probe.wait_for("/scan", 5, timeout_s=30)
        stamps = {t: _collect_stamps(probe, t, 0.5) for t in ("/scan", "/odom", "/imu")}
        np.testing.assert_allclose(np.diff(stamps["/scan"]), 0.05, atol=1e-6)
        np.testing.assert_allclose(np.diff(stamps["/odom"]), 0.05, atol=1e-6)
        np.testing.assert_allclose(np.diff(stamps["/imu"]), 0.01, atol=1e-6)
        scan = probe.take("/scan")[-1][1]
        assert len(scan.ranges) == 40 and scan.range_max == pytest.approx(4.0)

        # Latency: the wheels start turning no earlier than 0.2 s of sim time after the command.
        cmd = Twist()
        cmd.linear.x, cmd.angular.z = 0.5, 2.0  # turn into the left wall
        probe.publish("/cmd_vel", cmd)
        probe.wait_for_subscriber("/cmd_vel")
        probe.clear("/odom")
        sent = _sim_now(probe)
        probe.publish("/cmd_vel", cmd)
        moving = probe.wait_for(
            "/odom", where=lambda m: m.twist.twist.linear.x > 0.02, timeout_s=20
        )[0]
        assert stamp_s(moving.header.stamp) >= sent + 0.2 - 0.05

        figures = json.loads(probe.wait_for("/sim_node/episode", timeout_s=60)[0].data)
        assert figures["reason"] == "collision" and figures["collisions"] == 1
        assert (
            figures["track_seed"] == 2
            and figures["lane_error_rms_m"] > 0.0
            and figures["return"] < 0
        )
    finally:
        node.stop()
