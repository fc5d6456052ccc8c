"""MuJoCo sim node + policy node on sim time.

    ros2 launch liquid_control sim.launch.py robot:=rover policy_path:=policies/rover_ltc19.lcp
    ros2 launch liquid_control sim.launch.py robot:=cartpole policy_path:=... real_time_factor:=2.0

The sim node publishes /clock; the policy node runs with use_sim_time, so its control timer and
staleness checks follow the simulation, at any real_time_factor.
"""

import os

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node


def _config(robot: str) -> str:
    here = os.path.dirname(os.path.abspath(__file__))
    for folder in (
        os.path.join(here, "..", "config"),
        os.path.join(here, "..", "share", "liquid_control", "config"),
    ):
        path = os.path.normpath(os.path.join(folder, f"sim_node_{robot}.yaml"))
        if os.path.isfile(path):
            return path
    try:
        from ament_index_python.packages import get_package_share_directory

        return os.path.join(
            get_package_share_directory("liquid_control"), "config", f"sim_node_{robot}.yaml"
        )
    except Exception as exc:  # noqa: BLE001
        raise FileNotFoundError(f"config/sim_node_{robot}.yaml not found") from exc


def _nodes(context, *args, **kwargs):
    robot = LaunchConfiguration("robot").perform(context)
    if robot not in ("cartpole", "rover"):
        raise ValueError(f"launch argument robot: expected cartpole | rover, got {robot!r}")
    rtf = float(LaunchConfiguration("real_time_factor").perform(context))
    policy_path = LaunchConfiguration("policy_path").perform(context)
    sim = Node(
        package="liquid_control",
        executable="sim_node",
        name="sim_node",
        output="screen",
        parameters=[_config(robot), {"robot": robot, "real_time_factor": rtf}],
    )
    policy = Node(
        package="liquid_control",
        executable="policy_node",
        name="policy_node",
        output="screen",
        parameters=[{"policy_path": policy_path, "use_sim_time": True}],
    )
    return [sim, policy]


def generate_launch_description() -> LaunchDescription:
    return LaunchDescription(
        [
            DeclareLaunchArgument(
                "robot", default_value="cartpole", description="cartpole | rover"
            ),
            DeclareLaunchArgument("policy_path", description="policy file (.lcp) for the robot"),
            DeclareLaunchArgument("real_time_factor", default_value="1.0", description="sim speed"),
            OpaqueFunction(function=_nodes),
        ]
    )
