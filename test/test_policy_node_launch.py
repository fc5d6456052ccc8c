"""config/policy_node.yaml and launch/policy.launch.py: the parameter file is what the node
declares (every parameter, its default), the node starts from it, and the launch file (where
launch_ros is importable) starts a node that commands."""

from __future__ import annotations

import importlib.util
import sys

import pytest
import yaml
from ros_harness import REPO, Harness, NodeProcess, save_test_policy
from sensor_msgs.msg import JointState
from test_policy_node import joint_spec

from liquid_control.ros.messages import LATCHED_QOS, SENSOR_QOS
from liquid_control.ros.settings import SETTINGS, check_parameters

pytestmark = [pytest.mark.ros, pytest.mark.timeout(120)]

CONFIG = REPO / "config" / "policy_node.yaml"
LAUNCH = REPO / "launch" / "policy.launch.py"


def publish_joint_states(h: Harness, namespace: str = "") -> None:
    """JointState for the two-joint test spec at 100 Hz, from the harness, and a latched estop
    release for the policy node in `namespace`."""
    from std_msgs.msg import Bool

    h.publish(f"{namespace}/policy_node/estop", Bool(data=False), LATCHED_QOS)
    h.publish_periodically(
        f"{namespace}/joint_states",
        lambda: JointState(name=["j0", "j1"], position=[0.1, 0.2], velocity=[0.0, 0.0]),
        100.0,
        SENSOR_QOS,
    )


def test_config_file_lists_every_parameter_with_its_default():
    text = CONFIG.read_text()
    params = yaml.safe_load(text)["/**/policy_node"]["ros__parameters"]
    assert check_parameters(params) == []  # names, types, ranges and choices of the table
    for s in SETTINGS:
        if s.is_list:  # no empty lists in parameter files
            assert f"# {s.name}:" in text, s.name
            continue
        assert s.name in params, f"config/policy_node.yaml lacks {s.name}"
        assert params[s.name] == s.default and type(params[s.name]) is type(s.default), s.name
    lines = text.splitlines()
    for name in params:  # every parameter has a comment right above it
        i = next(k for k, line in enumerate(lines) if line.strip().startswith(f"{name}:"))
        assert lines[i - 1].strip().startswith("#"), f"{name} has no comment"


def test_a_bad_parameter_file_value_is_named():
    assert check_parameters({"safe_action": "explode", "blend_s": -1.0, "colour": 3}) == [
        "safe_action: expected one of ('zero', 'hold', 'spec'), got 'explode'",
        "blend_s: expected 0 to 60, got -1.0",
        "colour: not a parameter of policy_node; expected one of "
        + str(sorted(s.name for s in SETTINGS)),
    ]


def test_node_starts_from_the_config_file(tmp_path):
    policy = tmp_path / "p.lcp"
    save_test_policy(policy, joint_spec(), seed=0)
    with (
        NodeProcess(
            "liquid_control.ros.policy_node",
            params_files=[CONFIG],
            overrides={"policy_path": str(policy), "sensor_timeout_s": 0.5},
            name="policy_node",
            namespace="/robot1",
            log_dir=tmp_path,
        ) as node,
        Harness() as h,
    ):
        # relative_topics: the spec's /cmd and /joint_states live in the node's namespace
        cmd = h.subscribe("/robot1/cmd", "std_msgs/Float64MultiArray")
        publish_joint_states(h, "/robot1")
        h.wait_for(lambda: len(cmd) >= 5, 30.0, "commands from the node", node)
        values = h.get_parameters(
            "/robot1/policy_node", ["safe_action", "sensor_timeout_s", "autostart", "debug"]
        )
        assert values == {
            "safe_action": "zero",
            "sensor_timeout_s": 0.5,
            "autostart": True,
            "debug": False,
        }


def _launch_skip_reason() -> str | None:
    if importlib.util.find_spec("launch_ros") is None:
        return "launch_ros is not importable (ROS 2 launch is not installable from pip)"
    try:
        from ament_index_python.packages import get_package_share_directory

        get_package_share_directory("liquid_control")
    except Exception:  # noqa: BLE001 (PackageNotFoundError, or no ament index at all)
        return "liquid_control is not installed in the ament index (colcon build + source)"
    return None


LAUNCH_RUNNER = """
import sys
from launch import LaunchDescription, LaunchService
from launch.actions import IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource

launch_file, *pairs = sys.argv[1:]
ls = LaunchService()
ls.include_launch_description(LaunchDescription([IncludeLaunchDescription(
    PythonLaunchDescriptionSource(launch_file),
    launch_arguments=[tuple(p.split(":=", 1)) for p in pairs],
)]))
sys.exit(ls.run())
"""


@pytest.mark.skipif(_launch_skip_reason() is not None, reason=str(_launch_skip_reason()))
def test_launch_file_starts_a_commanding_policy_node(tmp_path):
    """`ros2 launch liquid_control policy.launch.py` as a LaunchService in its own process
    (signals reach its main thread; stop() interrupts the whole group)."""
    policy = tmp_path / "p.lcp"
    save_test_policy(policy, joint_spec(), seed=0)
    argv = [
        sys.executable,
        "-c",
        LAUNCH_RUNNER,
        str(LAUNCH),
        f"policy_path:={policy}",
        "namespace:=launched",
        f"params_file:={CONFIG}",
    ]
    with NodeProcess(argv=argv, log_dir=tmp_path) as launch, Harness() as h:
        cmd = h.subscribe("/launched/cmd", "std_msgs/Float64MultiArray")
        publish_joint_states(h, "/launched")
        h.wait_for(lambda: len(cmd) >= 5, 60.0, "commands from the launched node", launch)
        assert h.lifecycle_state("/launched/policy_node") == "active"
