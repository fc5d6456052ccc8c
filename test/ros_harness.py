"""Multi-process ROS 2 test helpers: start node processes, talk to them over real DDS, tear down.

    with NodeProcess("liquid_control.ros.policy_node", params={"policy_path": p}, log_dir=tmp) as node,
         Harness() as h:
        cmd = h.subscribe("/cmd", "std_msgs/Float64MultiArray")
        h.publish_periodically("/joint_states", "sensor_msgs/JointState", make_js, rate_hz=50)
        h.wait_for(lambda: len(cmd) >= 10, 10.0, "10 commands", node)

`NodeProcess` runs ``python -m <module> --ros-args --params-file <yaml> -p ...`` in its own process
group (killed whole in teardown, so no node outlives a test) and keeps its log. `Harness` is an
rclpy node in this process, in its own context, spun by a background thread: publishers, recorders
of received messages, service calls, remote parameter set/get and lifecycle transitions. Every
wait raises `AssertionError` with what it waited for and the tail of the node's log.

Environment isolation (ROS_DOMAIN_ID per pytest process, localhost discovery) is in conftest.py;
child processes inherit os.environ.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import rclpy
import yaml
from rcl_interfaces.msg import Parameter as ParameterMsg
from rcl_interfaces.msg import SetParametersResult
from rcl_interfaces.srv import GetParameters, SetParameters
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile

from liquid_control.ros.messages import COMMAND_QOS, message_class

REPO = Path(__file__).resolve().parents[1]


def service_class(srv_type: str) -> type:
    """ "pkg/Type" -> rclpy service class (e.g. "std_srvs/Trigger")."""
    pkg, name = srv_type.split("/")[0], srv_type.split("/")[-1]
    module = __import__(f"{pkg}.srv", fromlist=[name])
    return getattr(module, name)


def write_params_file(path: str | os.PathLike, params: dict[str, Any], node: str = "/**") -> Path:
    """A standard ROS parameter file: {node: {ros__parameters: params}}."""
    path = Path(path)
    path.write_text(yaml.safe_dump({node: {"ros__parameters": params}}, sort_keys=False))
    return path


def _ros_arg_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_ros_arg_value(v) for v in value) + "]"
    if isinstance(value, str):
        return f"'{value}'" if value == "" else value
    return repr(value)


class NodeProcess:
    """A node running in its own process (and process group), with its log kept in a file.

    Args:
        module: python module to run with `-m` (or `argv` for any command line).
        params: written to a params file passed with --params-file.
        params_files: existing parameter files, passed first (`params` and `overrides` win).
        overrides: passed as `-p name:=value` after the params file (they win).
        name: node name remapping (`-r __node:=name`); namespace: `-r __ns:=/ns`.
        remap: extra `from:=to` remapping rules.
    """

    def __init__(
        self,
        module: str | None = None,
        *,
        params: dict[str, Any] | None = None,
        params_files: list[str | os.PathLike] | None = None,
        overrides: dict[str, Any] | None = None,
        name: str | None = None,
        namespace: str | None = None,
        remap: dict[str, str] | None = None,
        log_dir: str | os.PathLike | None = None,
        argv: list[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        log_dir = Path(log_dir or "/tmp")
        log_dir.mkdir(parents=True, exist_ok=True)
        tag = (name or (module or "node").rsplit(".", 1)[-1]) + f"_{os.getpid()}_{id(self):x}"
        self.log_path = log_dir / f"{tag}.log"
        if argv is None:
            argv = [sys.executable, "-m", module, "--ros-args"]
            for f in params_files or []:
                argv += ["--params-file", str(f)]
            if params:
                argv += ["--params-file", str(write_params_file(log_dir / f"{tag}.yaml", params))]
            for k, v in (overrides or {}).items():
                argv += ["-p", f"{k}:={_ros_arg_value(v)}"]
            if name:
                argv += ["-r", f"__node:={name}"]
            if namespace:
                argv += ["-r", f"__ns:={namespace}"]
            for a, b in (remap or {}).items():
                argv += ["-r", f"{a}:={b}"]
        self.argv = argv
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            argv,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )

    def __enter__(self) -> NodeProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def stop(self, timeout_s: float = 5.0) -> int | None:
        """SIGINT the process group (the node shuts down cleanly), SIGKILL it after `timeout_s`."""
        if self.proc.poll() is None:
            for sig, wait_s in ((signal.SIGINT, timeout_s), (signal.SIGKILL, 5.0)):
                try:
                    os.killpg(self.proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    self.proc.wait(wait_s)
                    break
                except subprocess.TimeoutExpired:
                    continue
        try:  # anything the node left behind in its group
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self._log.close()
        return self.proc.returncode


class Recorder:
    """Messages received on one topic, with their receive times (time.monotonic)."""

    def __init__(self) -> None:
        self.messages: list[Any] = []
        self.times: list[float] = []
        self._cond = threading.Condition()

    def _add(self, msg: Any) -> None:
        with self._cond:
            self.messages.append(msg)
            self.times.append(time.monotonic())
            self._cond.notify_all()

    def __len__(self) -> int:
        return len(self.messages)

    @property
    def last(self) -> Any:
        return self.messages[-1] if self.messages else None

    def since(self, t: float) -> list[Any]:
        """Messages received at or after monotonic time `t`."""
        with self._cond:
            return [m for m, s in zip(self.messages, self.times, strict=True) if s >= t]

    def timed_since(self, t: float) -> list[tuple[float, Any]]:
        """(receive time, message) pairs received at or after monotonic time `t`."""
        with self._cond:
            return [(s, m) for s, m in zip(self.times, self.messages, strict=True) if s >= t]

    def clear(self) -> None:
        with self._cond:
            self.messages.clear()
            self.times.clear()


class Harness:
    """An rclpy node in this process (own context, background spin thread) for driving nodes."""

    def __init__(self, name: str = "test_harness") -> None:
        self.context = Context()
        rclpy.init(context=self.context)
        self.node = Node(name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._publishers: dict[str, Any] = {}
        self._timers: dict[str, Any] = {}
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        try:
            self.executor.spin()
        except Exception:  # noqa: BLE001 (context shut down while spinning)
            pass

    def __enter__(self) -> Harness:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self.executor.shutdown(timeout_sec=2.0)
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)
        self._thread.join(timeout=2.0)

    # -- topics ----------------------------------------------------------------------------
    def publisher(self, topic: str, msg_type: str, qos: QoSProfile = COMMAND_QOS) -> Any:
        key = f"{topic}|{msg_type}"
        if key not in self._publishers:
            self._publishers[key] = self.node.create_publisher(message_class(msg_type), topic, qos)
        return self._publishers[key]

    def publish(self, topic: str, msg: Any, qos: QoSProfile = COMMAND_QOS) -> None:
        """Publish one message (type taken from the message)."""
        cls = type(msg)
        msg_type = f"{cls.__module__.split('.')[0]}/{cls.__name__}"
        self.publisher(topic, msg_type, qos).publish(msg)

    def publish_periodically(
        self,
        topic: str,
        make: Callable[[], Any],
        rate_hz: float,
        qos: QoSProfile = COMMAND_QOS,
    ) -> None:
        """Publish `make()` on `topic` at `rate_hz` until `stop_publishing(topic)` (a new call
        for the same topic replaces the previous one). `make()` returning None skips a period."""
        self.stop_publishing(topic)

        def tick() -> None:
            msg = make()
            if msg is not None:
                self.publish(topic, msg, qos)

        self._timers[topic] = self.node.create_timer(1.0 / rate_hz, tick)

    def stop_publishing(self, topic: str) -> None:
        timer = self._timers.pop(topic, None)
        if timer is not None:
            timer.cancel()
            self.node.destroy_timer(timer)

    def subscribe(self, topic: str, msg_type: str, qos: QoSProfile | int = 100) -> Recorder:
        rec = Recorder()
        self.node.create_subscription(message_class(msg_type), topic, rec._add, qos)
        return rec

    # -- waiting ---------------------------------------------------------------------------
    @staticmethod
    def wait_for(
        condition: Callable[[], Any],
        timeout_s: float,
        what: str,
        node: NodeProcess | None = None,
        poll_s: float = 0.01,
    ) -> Any:
        """Poll `condition()` until truthy (returned); AssertionError naming `what` on timeout."""
        end = time.monotonic() + timeout_s
        while True:
            value = condition()
            if value:
                return value
            if node is not None and not node.running:
                raise AssertionError(f"node exited while waiting for {what}:\n{node.tail()}")
            if time.monotonic() > end:
                log = f"\nnode log:\n{node.tail()}" if node is not None else ""
                raise AssertionError(f"timed out after {timeout_s} s waiting for {what}{log}")
            time.sleep(poll_s)

    # -- services and parameters -----------------------------------------------------------
    def call(
        self, service: str, srv_type: str, request: Any = None, timeout_s: float = 10.0
    ) -> Any:
        """Call a service and return its response (AssertionError on timeout)."""
        cls = service_class(srv_type)
        client = self.node.create_client(cls, service)
        try:
            if not client.wait_for_service(timeout_sec=timeout_s):
                raise AssertionError(f"service {service} not available after {timeout_s} s")
            future = client.call_async(request if request is not None else cls.Request())
            done = threading.Event()
            future.add_done_callback(lambda _f: done.set())
            if not done.wait(timeout_s):
                raise AssertionError(f"service {service} did not answer within {timeout_s} s")
            return future.result()
        finally:
            self.node.destroy_client(client)

    def set_parameters(
        self, node: str, values: dict[str, Any], timeout_s: float = 20.0
    ) -> list[SetParametersResult]:
        """Set parameters of a remote node (one result per parameter, in order)."""
        request = SetParameters.Request()
        request.parameters = [
            ParameterMsg(name=k, value=Parameter(k, value=v).get_parameter_value())
            for k, v in values.items()
        ]
        response = self.call(
            f"{node}/set_parameters", "rcl_interfaces/SetParameters", request, timeout_s
        )
        return list(response.results)

    def get_parameters(
        self, node: str, names: list[str], timeout_s: float = 10.0
    ) -> dict[str, Any]:
        request = GetParameters.Request(names=names)
        response = self.call(
            f"{node}/get_parameters", "rcl_interfaces/GetParameters", request, timeout_s
        )
        return {
            n: Parameter.from_parameter_msg(ParameterMsg(name=n, value=v)).value
            for n, v in zip(names, response.values, strict=True)
        }

    def lifecycle_state(self, node: str, timeout_s: float = 10.0) -> str:
        response = self.call(f"{node}/get_state", "lifecycle_msgs/GetState", None, timeout_s)
        return response.current_state.label

    def wait_active(self, node: str, timeout_s: float, process: NodeProcess | None = None) -> None:
        """Wait until `node` reports the active lifecycle state. A node whose get_state
        service is not discoverable yet (a slow start on a loaded machine) is asked again,
        until `timeout_s`; the process's log comes with the failure."""

        def state() -> str:
            try:
                return self.lifecycle_state(node, 2.0)
            except AssertionError:
                return ""

        self.wait_for(lambda: state() == "active", timeout_s, f"{node} active", process)

    def change_state(self, node: str, transition: str, timeout_s: float = 20.0) -> bool:
        """Trigger a lifecycle transition by label (configure, activate, deactivate, cleanup,
        shutdown); True when it succeeded."""
        from lifecycle_msgs.msg import Transition
        from lifecycle_msgs.srv import ChangeState

        request = ChangeState.Request()
        request.transition = Transition(label=transition)
        if transition == "shutdown":
            request.transition.label = ""
            request.transition.id = {
                "unconfigured": Transition.TRANSITION_UNCONFIGURED_SHUTDOWN,
                "inactive": Transition.TRANSITION_INACTIVE_SHUTDOWN,
                "active": Transition.TRANSITION_ACTIVE_SHUTDOWN,
            }[self.lifecycle_state(node)]
        response = self.call(
            f"{node}/change_state", "lifecycle_msgs/ChangeState", request, timeout_s
        )
        return bool(response.success)


@contextmanager
def running(module: str, log_dir: str | os.PathLike, **kwargs: Any) -> Iterator[NodeProcess]:
    """`with running(module, tmp_path, params=...) as node:` -- NodeProcess that is always stopped."""
    node = NodeProcess(module, log_dir=log_dir, **kwargs)
    try:
        yield node
    finally:
        node.stop()


def diagnostic_values(array: Any, name_contains: str = "") -> dict[str, str] | None:
    """KeyValues of the first status in a DiagnosticArray whose name contains `name_contains`."""
    for status in array.status:
        if name_contains in status.name:
            return {kv.key: kv.value for kv in status.values} | {
                "_level": str(
                    int.from_bytes(status.level, "little")
                    if isinstance(status.level, bytes)
                    else status.level
                ),
                "_message": status.message,
            }
    return None


def save_test_policy(
    path: str | os.PathLike, spec: Any, seed: int = 0, units: int = 19, ode_unfolds: int = 6
) -> str:
    """A random (untrained) but valid LTC policy for `spec`, saved to `path`; returns its hash."""
    from liquid_control.core import AutoNCP, Policy
    from liquid_control.core.ltc import init_params

    wiring = AutoNCP(units, spec.action_dim, seed=seed).build(spec.obs_dim)
    policy = Policy(wiring, init_params(wiring, seed=seed), spec, ode_unfolds=ode_unfolds)
    return policy.save(path)
