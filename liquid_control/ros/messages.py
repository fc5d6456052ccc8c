"""ROS message types and QoS by name: "pkg/Type" -> rclpy message class, and the QoS of each role.

The interface spec names message types as strings ("sensor_msgs/JointState"); this module turns
them into rclpy classes, so the policy node and the sim node share one table and never write a
function per message type:

    cls = message_class("sensor_msgs/JointState")      # also "sensor_msgs/msg/JointState"
    msg = make_message("trajectory_msgs/JointTrajectoryPoint")

QoS is chosen by role, on purpose:
- inputs (sensors, goals): best-effort keep-last, `qos_profile_sensor_data`. Only the newest value
  matters, and a best-effort reader connects to reliable and best-effort writers alike.
- commands: reliable keep-last 10 (ros2_control's forward command controllers and the joint
  trajectory controller subscribe reliably; a reliable reader needs a reliable writer).
- latched state (`~/active_policy`, `~/is_safe`, `~/estop`): reliable, transient-local, depth 1, so
  a late joiner gets the current value.
"""

from __future__ import annotations

import importlib
from functools import cache
from typing import Any

from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    QoSProfile,
    ReliabilityPolicy,
    qos_profile_sensor_data,
)

SENSOR_QOS: QoSProfile = qos_profile_sensor_data
COMMAND_QOS = QoSProfile(
    depth=10,
    history=HistoryPolicy.KEEP_LAST,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.VOLATILE,
)
# The per-tick debug rows (~/observation): reliable with a deep history, so a recorder (rosbag, the
# demo's replay) that falls behind for up to a second at 1 kHz loses no row.
DEBUG_QOS = QoSProfile(
    depth=1000,
    history=HistoryPolicy.KEEP_LAST,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.VOLATILE,
)
LATCHED_QOS = QoSProfile(
    depth=1,
    history=HistoryPolicy.KEEP_LAST,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.TRANSIENT_LOCAL,
)
# Reliable and volatile: connects to latched and plain writers (a transient-local reader does not
# connect to a volatile writer).
RELIABLE_QOS = COMMAND_QOS


def split_type(msg_type: str) -> tuple[str, str]:
    """ "pkg/Type" or "pkg/msg/Type" -> ("pkg", "Type"); ValueError naming the bad string."""
    parts = msg_type.split("/") if isinstance(msg_type, str) else []
    if len(parts) == 3 and parts[1] == "msg":
        parts = [parts[0], parts[2]]
    if len(parts) != 2 or not all(parts):
        raise ValueError(f"message type: expected 'pkg/Type' or 'pkg/msg/Type', got {msg_type!r}")
    return parts[0], parts[1]


@cache
def message_class(msg_type: str) -> type:
    """The rclpy message class of "pkg/Type" (ValueError naming the type if it is not installed)."""
    pkg, name = split_type(msg_type)
    try:
        module = importlib.import_module(f"{pkg}.msg")
    except ImportError as exc:
        raise ValueError(
            f"message type {msg_type!r}: package {pkg!r} is not installed ({exc}); "
            f"install ros-<distro>-{pkg.replace('_', '-')}"
        ) from None
    cls = getattr(module, name, None)
    if cls is None:
        raise ValueError(f"message type {msg_type!r}: {pkg}.msg has no {name!r}")
    return cls


def make_message(msg_type: str) -> Any:
    """A new, default-initialised message of "pkg/Type" (the `make` callback of ActionWriter)."""
    return message_class(msg_type)()


def input_qos(msg_type: str) -> QoSProfile:
    """QoS of an observation input (every spec input type reads the newest value only)."""
    message_class(msg_type)
    return SENSOR_QOS


def output_qos(msg_type: str) -> QoSProfile:
    """QoS of a command output."""
    message_class(msg_type)
    return COMMAND_QOS


def stamp_to_s(stamp: Any) -> float:
    """builtin_interfaces/Time -> seconds."""
    return stamp.sec + stamp.nanosec * 1e-9
