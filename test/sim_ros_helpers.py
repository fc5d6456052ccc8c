"""Small helpers for the sim node tests: start a node process, and a probe node in the test process.

(Real rclpy over real DDS; the node runs in its own process with the test's ROS_DOMAIN_ID.)
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from typing import Any

import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class NodeProcess:
    """`python -m <module> --ros-args -p k:=v ...` in its own process group; output to a log file."""

    def __init__(
        self, module: str, params: dict[str, Any], log_path: str, name: str | None = None
    ) -> None:
        args = [sys.executable, "-m", module, "--ros-args"]
        if name:
            args += ["-r", f"__node:={name}"]
        for k, v in params.items():
            value = str(v).lower() if isinstance(v, bool) else str(v)
            args += ["-p", f"{k}:={value}"]
        self.log_path = log_path
        self._log = open(log_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            args,
            cwd=REPO,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=dict(os.environ),
        )

    def log(self) -> str:
        with open(self.log_path) as f:
            return f.read()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.alive():
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        self._log.close()


class Probe:
    """A node in the test process recording messages (with wall receipt times) on chosen topics."""

    def __init__(self, name: str = "sim_probe") -> None:
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = Node(name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.lock = threading.Lock()
        self.messages: dict[str, list[tuple[float, Any]]] = defaultdict(list)
        self._publishers: dict[str, Any] = {}
        self._stop = False
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        while not self._stop and self.context.ok():
            self.executor.spin_once(timeout_sec=0.05)

    def listen(self, topic: str, cls: type) -> None:
        qos = QoSProfile(depth=200, reliability=ReliabilityPolicy.RELIABLE)

        def store(msg, topic=topic):
            with self.lock:
                self.messages[topic].append((time.monotonic(), msg))

        self.node.create_subscription(cls, topic, store, qos)

    def take(self, topic: str) -> list[tuple[float, Any]]:
        with self.lock:
            return list(self.messages[topic])

    def clear(self, topic: str | None = None) -> None:
        with self.lock:
            if topic is None:
                self.messages.clear()
            else:
                self.messages[topic] = []

    def wait_for(self, topic: str, count: int = 1, timeout_s: float = 20.0, where=None) -> list:
        """Wait until `count` messages (matching `where`) arrived on `topic`; returns them."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            got = [m for _, m in self.take(topic) if where is None or where(m)]
            if len(got) >= count:
                return got
            time.sleep(0.02)
        raise TimeoutError(f"{topic}: {len(got)} of {count} messages within {timeout_s} s")

    def publish(self, topic: str, msg: Any) -> None:
        if topic not in self._publishers:
            self._publishers[topic] = self.node.create_publisher(type(msg), topic, 10)
        self._publishers[topic].publish(msg)

    def wait_for_subscriber(self, topic: str, timeout_s: float = 20.0) -> None:
        deadline = time.monotonic() + timeout_s
        while self._publishers[topic].get_subscription_count() == 0:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no subscriber on {topic} within {timeout_s} s")
            time.sleep(0.05)

    def call(self, srv_type: type, name: str, request: Any, timeout_s: float = 20.0) -> Any:
        client = self.node.create_client(srv_type, name)
        if not client.wait_for_service(timeout_sec=timeout_s):
            raise TimeoutError(f"service {name} not available within {timeout_s} s")
        future = client.call_async(request)
        deadline = time.monotonic() + timeout_s
        while not future.done():
            if time.monotonic() > deadline:
                raise TimeoutError(f"service {name}: no response within {timeout_s} s")
            time.sleep(0.01)
        return future.result()

    def close(self) -> None:
        self._stop = True
        self._thread.join(timeout=2)
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)


def stamp_s(stamp) -> float:
    return stamp.sec + stamp.nanosec * 1e-9
