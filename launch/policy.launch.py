"""The policy node, alone (a robot or a simulator provides the topics of the policy's spec).

    ros2 launch liquid_control policy.launch.py policy_path:=/opt/robot/policies/arm.lcp
    ros2 launch liquid_control policy.launch.py policy_path:=... namespace:=robot1 use_sim_time:=true
    ros2 launch liquid_control policy.launch.py policy_path:=... params_file:=my_policy_node.yaml

The node is a managed (lifecycle) node that configures and activates itself (`autostart` in the
parameter file). Arguments given here override the parameter file.
"""

import os

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode
from launch_ros.parameter_descriptions import ParameterValue


def _default_params_file() -> str:
    """config/policy_node.yaml of the installed package, else of the source tree."""
    try:
        from ament_index_python.packages import get_package_share_directory

        path = os.path.join(
            get_package_share_directory("liquid_control"), "config", "policy_node.yaml"
        )
        if os.path.isfile(path):
            return path
    except Exception:  # noqa: BLE001 (not installed: running from the source tree)
        pass
    here = os.path.dirname(os.path.abspath(__file__))
    return os.path.normpath(os.path.join(here, "..", "config", "policy_node.yaml"))


def generate_launch_description() -> LaunchDescription:
    policy_path = LaunchConfiguration("policy_path")
    params_file = LaunchConfiguration("params_file")
    use_sim_time = LaunchConfiguration("use_sim_time")
    namespace = LaunchConfiguration("namespace")
    return LaunchDescription(
        [
            DeclareLaunchArgument("policy_path", description="policy file (.lcp) to run"),
            DeclareLaunchArgument(
                "params_file",
                default_value=_default_params_file(),
                description="ROS parameter file for the policy node",
            ),
            DeclareLaunchArgument(
                "use_sim_time",
                default_value="false",
                description="follow /clock (simulation) instead of the system clock",
            ),
            DeclareLaunchArgument(
                "namespace", default_value="", description="namespace of the policy node"
            ),
            LifecycleNode(
                package="liquid_control",
                executable="policy_node",
                name="policy_node",
                namespace=namespace,
                output="screen",
                emulate_tty=True,
                parameters=[
                    params_file,
                    {
                        "policy_path": ParameterValue(policy_path, value_type=str),
                        "use_sim_time": ParameterValue(use_sim_time, value_type=bool),
                    },
                ],
            ),
        ]
    )
