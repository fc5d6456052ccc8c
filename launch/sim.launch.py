"""MuJoCo sim node + policy node on sim time.

    ros2 launch liquid_control sim.launch.py robot:=rover policy_path:=policies/rover_ltc19.lcp
    ros2 launch liquid_control sim.launch.py robot:=cartpole policy_path:=... real_time_factor:=2.0
    ros2 launch liquid_control sim.launch.py robot:=rover policy_path:=... namespace:=robot1
    ros2 launch liquid_control sim.launch.py --show-args

The robots are the robot registry's (`liquid_control.robots`: the built-in ones and any a package
or LIQUID_CONTROL_ROBOTS adds); the sim node takes its defaults from the robot's entry. The sim
node publishes /clock; the policy node runs with use_sim_time, so its loop and staleness
checks follow the simulation, at any real_time_factor. The policy file's robot must be the
simulated one (checked here, before anything starts). In simulation nobody stands next to the
robot, so the policy node does not wait for an estop message (`estop_required_at_start` false,
unless `estop_required:=true`).
"""

import os

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node


def _robots() -> list[str]:
    from liquid_control.robots import robots

    return sorted(robots())


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


def _policy_robot(policy_path: str) -> str:
    """The robot the policy file was made for (its interface spec's `robot`)."""
    from liquid_control.core.policy import Policy
    from liquid_control.core.policy_file import PolicyFileError

    try:
        return Policy.load(policy_path).spec.robot
    except PolicyFileError as exc:
        raise RuntimeError(f"launch argument policy_path: {exc}") from None


def _nodes(context, *args, **kwargs):
    value = {k: LaunchConfiguration(k).perform(context) for k in ARGUMENTS}
    robot = value["robot"]
    if robot not in _robots():
        raise RuntimeError(f"launch argument robot: expected one of {_robots()}, got {robot!r}")
    policy_robot = _policy_robot(value["policy_path"])
    if policy_robot != robot:
        raise RuntimeError(
            f"launch argument policy_path: {value['policy_path']} was made for robot "
            f"{policy_robot!r}, but robot:={robot}; expected a policy for {robot!r}"
        )
    sim_files = [value["sim_params_file"]] if value["sim_params_file"] else []
    log_args = ["--ros-args", "--log-level", value["log_level"]]
    sim = Node(
        package="liquid_control",
        executable="sim_node",
        name="sim_node",
        namespace=value["namespace"],
        output="screen",
        arguments=log_args,
        parameters=[
            *sim_files,
            {
                "robot": robot,
                "real_time_factor": float(value["real_time_factor"]),
                "seed": int(value["seed"]),
            },
        ],
    )
    policy = Node(
        package="liquid_control",
        executable="policy_node",
        name="policy_node",
        namespace=value["namespace"],
        output="screen",
        arguments=log_args,
        parameters=[
            value["params_file"],
            {
                "policy_path": value["policy_path"],
                "use_sim_time": True,
                "estop_required_at_start": value["estop_required"].lower() == "true",
            },
        ],
    )
    return [sim, policy]


ARGUMENTS = {
    "robot": ("cartpole", f"simulated robot: {' | '.join(_robots())}"),
    "policy_path": (None, "policy file (.lcp) for that robot (its spec's robot must match)"),
    "namespace": ("", "namespace of both nodes and of the robot's topics (multi-robot)"),
    "params_file": (
        _share_file("config", "policy_node.yaml"),
        "ROS parameter file of the policy node (config/policy_node.yaml: every parameter)",
    ),
    "sim_params_file": (
        "",
        "ROS parameter file of the sim node (config/sim_node.yaml lists every parameter); "
        "empty = the robot's defaults from the robot registry",
    ),
    "real_time_factor": ("1.0", "sim seconds per wall second (0 = as fast as possible)"),
    "seed": ("0", "seed of the first episode (each reset takes the next one)"),
    "estop_required": (
        "false",
        "make the policy node wait for an estop message on ~/estop before commanding",
    ),
    "log_level": ("info", "log level of both nodes: debug, info, warn, error or fatal"),
}


def generate_launch_description() -> LaunchDescription:
    declared = []
    for name, (default, description) in ARGUMENTS.items():
        if default is None:
            declared.append(DeclareLaunchArgument(name, description=description))
        else:
            declared.append(
                DeclareLaunchArgument(name, default_value=default, description=description)
            )
    return LaunchDescription([*declared, OpaqueFunction(function=_nodes)])
