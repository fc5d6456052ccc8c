"""A rosbag2 recorder in rclpy, for pip-only installs where the ``ros2 bag`` CLI is absent.

It writes what ``ros2 bag record`` writes: a bag folder with ``metadata.yaml`` (with each topic's
offered QoS profiles) and one MCAP file whose schemas hold the message definitions (``ros2msg``)
and whose channels carry the topic and type hash, by `rosbags`' writer. Messages are taken serialized (never decoded)
and stamped with the receive time on the node's clock: the system clock, or /clock with
``use_sim_time`` (as ``ros2 bag record --use-sim-time``).

Topics: the spec's inputs and outputs, /clock, and any named with ``--topic``; a topic is
subscribed when it first shows up in the graph, with the QoS its publishers offer (best effort
if any publisher is, transient local if all are: a latched estop is recorded, a best-effort
sensor is heard). A topic whose type the typestore of ``ROS_DISTRO`` does not know is skipped
with a warning (its definition could not be stored).

Stopped by ``--duration``, SIGINT or SIGTERM, the bag is closed whole. Killed outright, the MCAP
file lacks its summary and metadata.yaml is missing; `liquid_control.data.bag` still reads it up
to its last complete chunk.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import rclpy
from rclpy.clock import Clock
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.signals import SignalHandlerOptions

from ..data.bag import default_typestore

__all__ = ["Recorder", "record"]


_INFINITE_NS = 2**63 - 1


def _bag_qos(q: Any) -> Any:
    """An rclpy QoS profile as rosbags writes it into metadata.yaml (offered_qos_profiles, as
    `ros2 bag record` does; the enum values are the same rmw numbers)."""
    from rosbags.interfaces import (
        Qos,
        QosDurability,
        QosHistory,
        QosLiveliness,
        QosReliability,
        QosTime,
    )

    def time(d: Any) -> Any:
        ns = int(d.nanoseconds)
        if ns >= _INFINITE_NS:  # (rmw's "infinite", as ros2 bag writes it)
            return QosTime(2147483647, 4294967295)
        return QosTime(ns // 10**9, ns % 10**9)

    def enum(cls: Any, value: Any) -> Any:
        try:
            return cls(int(value))
        except ValueError:
            return cls.UNKNOWN

    return Qos(
        enum(QosHistory, q.history),
        int(q.depth),
        enum(QosReliability, q.reliability),
        enum(QosDurability, q.durability),
        time(q.deadline),
        time(q.lifespan),
        enum(QosLiveliness, q.liveliness),
        time(q.liveliness_lease_duration),
        bool(q.avoid_ros_namespace_conventions),
    )


class Recorder(Node):
    """Subscribes to `topics` as they appear and writes every message to an MCAP bag."""

    def __init__(self, out: Path, topics: Sequence[str], use_sim_time: bool) -> None:
        super().__init__(
            "liquid_control_recorder",
            parameter_overrides=[Parameter("use_sim_time", value=use_sim_time)],
        )
        from rosbags.rosbag2 import StoragePlugin, Writer

        self._store = default_typestore()
        self._writer = Writer(out, version=9, storage_plugin=StoragePlugin.MCAP)
        self._writer.open()
        self._lock = threading.Lock()
        self._wanted = list(dict.fromkeys(topics))
        self._connections: dict[str, Any] = {}
        self._skipped: set[str] = set()
        self.counts: dict[str, int] = {}
        self._discover()
        self._timer = self.create_timer(0.2, self._discover, clock=Clock())  # (wall time)

    def _qos(self, topic: str) -> QoSProfile:
        infos = self.get_publishers_info_by_topic(topic)
        best_effort = any(i.qos_profile.reliability == ReliabilityPolicy.BEST_EFFORT for i in infos)
        latched = bool(infos) and all(
            i.qos_profile.durability == DurabilityPolicy.TRANSIENT_LOCAL for i in infos
        )
        return QoSProfile(
            depth=1000,
            history=HistoryPolicy.KEEP_LAST,
            reliability=ReliabilityPolicy.BEST_EFFORT
            if best_effort
            else ReliabilityPolicy.RELIABLE,
            durability=DurabilityPolicy.TRANSIENT_LOCAL if latched else DurabilityPolicy.VOLATILE,
        )

    def _discover(self) -> None:
        from ..ros.messages import message_class

        graph = dict(self.get_topic_names_and_types())
        for topic in self._wanted:
            if topic in self._connections or topic in self._skipped or topic not in graph:
                continue
            if not self.get_publishers_info_by_topic(topic):
                continue
            ros_type = graph[topic][0]
            if ros_type not in self._store.types:
                self.get_logger().warning(
                    f"{topic}: type {ros_type} is not in the rosbags typestore; not recorded"
                )
                self._skipped.add(topic)
                continue
            offered = [_bag_qos(i.qos_profile) for i in self.get_publishers_info_by_topic(topic)]
            with self._lock:
                self._connections[topic] = self._writer.add_connection(
                    topic, ros_type, typestore=self._store, offered_qos_profiles=offered
                )
            self.counts[topic] = 0
            self.create_subscription(
                message_class(ros_type),
                topic,
                lambda data, t=topic: self._write(t, data),
                self._qos(topic),
                raw=True,
            )
            self.get_logger().info(f"recording {topic} ({ros_type})")

    def _write(self, topic: str, data: bytes) -> None:
        stamp = self.get_clock().now().nanoseconds
        with self._lock:
            if self._writer is None:
                return
            self._writer.write(self._connections[topic], stamp, data)
            self.counts[topic] += 1

    def close(self) -> None:
        with self._lock:
            writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()


def record(
    out: str | Path,
    topics: Sequence[str],
    duration_s: float | None = None,
    use_sim_time: bool = False,
) -> dict[str, int]:
    """Record `topics` into a new bag folder `out` until `duration_s` of wall time (None: until
    SIGINT or SIGTERM); returns the message count per topic."""
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"-o {str(out)!r} exists already (a bag is written to a new folder)")
    rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    node = Recorder(out, topics, use_sim_time)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    end = time.monotonic() + duration_s if duration_s is not None else None
    try:
        while not stop.is_set() and (end is None or time.monotonic() < end):
            try:
                executor.spin_once(timeout_sec=0.05)
            except ExternalShutdownException:
                break
    finally:
        counts = dict(node.counts)
        node.close()
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    return counts
