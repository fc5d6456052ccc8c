"""The policy node, alone (a robot or a simulator provides the topics of the policy's spec).

    ros2 launch liquid_control policy.launch.py policy_path:=/opt/robot/policies/arm.lcp
    ros2 launch liquid_control policy.launch.py policy_path:=... namespace:=robot1 use_sim_time:=true
    ros2 launch liquid_control policy.launch.py policy_path:=... params_file:=my_policy_node.yaml
    ros2 launch liquid_control policy.launch.py --show-args

The node is a managed (lifecycle) node that configures and activates itself (`autostart` in the
parameter file). Arguments given here override the parameter file. With `namespace:=robot1` the
policy's topics move into the namespace too (/robot1/joint_states, /robot1/cmd_vel ...; the
node's `relative_topics`), so several robots run side by side.
"""

import os

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode
from launch_ros.parameter_descriptions import ParameterValue


def _share_file(*parts: str) -> str:
    """A file of the installed package's share folder, else of the source tree."""
    try:
        from ament_index_python.packages import get_package_share_directory

        path = os.path.join(get_package_share_directory("liquid_control"), *parts)
        if os.path.isfile(path):
            return path
    except Exception:  # noqa: BLE001 (not installed: running from the source tree)
        pass
    here = os.path.dirname(os.path.abspath(__file__))
    return os.path.normpath(os.path.join(here, "..", *parts))


def generate_launch_description() -> LaunchDescription:
    arg = LaunchConfiguration
    return LaunchDescription(
        [
            DeclareLaunchArgument(
                "policy_path",
                description="policy file (.lcp) to run; a relative path is looked up in "
                "allowed_policy_dirs (parameter file)",
            ),
            DeclareLaunchArgument(
                "params_file",
                default_value=_share_file("config", "policy_node.yaml"),
                description="ROS parameter file of the policy node (every parameter, with its "
                "default and meaning: config/policy_node.yaml)",
            ),
            DeclareLaunchArgument(
                "namespace",
                default_value="",
                description="namespace of the node and of the policy's topics (multi-robot)",
            ),
            DeclareLaunchArgument(
                "use_sim_time",
                default_value="false",
                description="follow /clock (a simulation) instead of the system clock",
            ),
            DeclareLaunchArgument(
                "log_level",
                default_value="info",
                description="log level of the node and its control process: debug, info, warn, "
                "error or fatal",
            ),
            LifecycleNode(
                package="liquid_control",
                executable="policy_node",
                name="policy_node",
                namespace=arg("namespace"),
                output="screen",
                emulate_tty=True,
                arguments=["--ros-args", "--log-level", arg("log_level")],
                parameters=[
                    arg("params_file"),
                    {
                        "policy_path": ParameterValue(arg("policy_path"), value_type=str),
                        "use_sim_time": ParameterValue(arg("use_sim_time"), value_type=bool),
                    },
                ],
            ),
        ]
    )
