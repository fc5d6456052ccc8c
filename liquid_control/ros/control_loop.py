"""The policy node's control process: the fixed-rate loop, in an interpreter of its own.

`PolicyNode` (policy_node.py) keeps the lifecycle, parameters (swaps), services and diagnostics;
this process runs the loop that commands the robot. In one process the loop shared the interpreter
lock with the executor threads, and any Python work beside it (a swap: parameter service, loading,
checks; the diagnostics message) stretched ticks several-fold and missed some. Here nothing else
runs Python while the loop runs: work from the node (a swap, a request for figures) is queued and
done by the control thread itself after a tick, in the time left before the next deadline, and a
swapped policy arrives as ready-made arrays (`Policy.runtime`) that take tens of microseconds to
put in place. The garbage collector runs there too, never inside a tick.

Its ROS entities live on the companion node ``<name>_io``: the input subscriptions, the command
publishers, ``~/observation`` (debug) and the ``~/estop`` subscriptions (estop is taken at every
tick by the loop itself, so it needs nothing from the other process). With use_sim_time it takes
/clock itself. Topic names arrive resolved (remapped) by the node, and its logger is set to the
node's level (``--ros-args --log-level``): it is started without the node's arguments.

The two processes talk over two pipes in frames (`encode`/`decode`: a JSON header plus raw float64
arrays, no pickle). The node sends requests (``op``); this process answers each with a reply
carrying the request's ``id`` and sends events on its own: ``is_safe``, ``commanding``,
``swapped``. If the node's pipe closes (the node exited, however it exited), this process stops the
loop, publishes the safe action once and exits.

    python -m liquid_control.ros.control_loop <request fd> <event fd> <stats fd>   (by PolicyNode)
"""

from __future__ import annotations

import gc
import json
import mmap
import os
import signal
import struct
import subprocess
import sys
import threading
import time
from collections import Counter, deque
from typing import Any

import numpy as np
from rclpy.duration import Duration
from rclpy.logging import LoggingSeverity
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rclpy.signals import SignalHandlerOptions
from rosgraph_msgs.msg import Clock
from std_msgs.msg import Bool, Float64MultiArray, MultiArrayDimension

from liquid_control.core.adapters import ActionWriter, MessageRejected, ObservationAssembler
from liquid_control.core.policy import Policy
from liquid_control.core.spec import InterfaceSpec

from .messages import (
    DEBUG_QOS,
    LATCHED_QOS,
    RELIABLE_QOS,
    input_qos,
    make_message,
    message_class,
    output_qos,
)
from .stats import LoopStats
from .wire import Malformed, SerializedTemplate, TemplateUnsupported, decoder_for

FRAME = struct.Struct("<I")


# -------------------------------------------------------------------------------------------
# frames: a JSON header and float64 arrays (no pickle)
# -------------------------------------------------------------------------------------------
def encode(header: dict[str, Any], arrays: dict[str, np.ndarray] | None = None) -> bytes:
    """One frame: length, header length, JSON header (with the arrays' layout), array bytes."""
    blobs, layout, offset = [], {}, 0
    for name, value in (arrays or {}).items():
        data = np.asarray(value, np.float64)  # tobytes() writes C order whatever the layout
        layout[name] = [list(data.shape), offset]
        blobs.append(data.tobytes())
        offset += data.nbytes
    head = json.dumps({**header, "arrays": layout}).encode()
    body = FRAME.pack(len(head)) + head + b"".join(blobs)
    return FRAME.pack(len(body)) + body


def decode(body: bytes) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """A frame's body (after its length) -> (header, arrays); ValueError on a bad frame."""
    try:
        (n,) = FRAME.unpack_from(body, 0)
        header = json.loads(body[FRAME.size : FRAME.size + n])
        data = memoryview(body)[FRAME.size + n :]
        arrays = {}
        for name, (shape, offset) in header.pop("arrays").items():
            size = int(np.prod(shape)) * 8
            if offset + size > len(data):
                raise ValueError(f"array {name!r} runs past the frame")
            arrays[name] = np.frombuffer(data[offset : offset + size], np.float64).reshape(shape)
    except (struct.error, json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"bad frame: {exc}") from None
    return header, arrays


class Pipe:
    """Frames over a pair of file descriptors; `send` is safe from several threads."""

    def __init__(self, read_fd: int, write_fd: int) -> None:
        self._r, self._w = read_fd, write_fd
        self._lock = threading.Lock()

    def send(self, header: dict[str, Any], arrays: dict[str, np.ndarray] | None = None) -> None:
        frame = encode(header, arrays)
        with self._lock:
            view = memoryview(frame)
            while view:
                view = view[os.write(self._w, view) :]

    def _read_exactly(self, n: int) -> bytes | None:
        chunks, left = [], n
        while left:
            chunk = os.read(self._r, left)
            if not chunk:
                return None
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    def receive(self) -> tuple[dict[str, Any], dict[str, np.ndarray]] | None:
        """The next frame; None when the other end closed its pipe."""
        head = self._read_exactly(FRAME.size)
        if head is None:
            return None
        body = self._read_exactly(FRAME.unpack(head)[0])
        return None if body is None else decode(body)

    def close_write(self) -> None:
        """Close the writing end only (the other side reads end of file)."""
        self._close("_w")

    def close(self) -> None:
        self._close("_w")
        self._close("_r")

    def _close(self, end: str) -> None:
        fd = getattr(self, end)
        setattr(self, end, -1)  # never closed twice: the number may belong to a new file by then
        if fd >= 0:
            try:
                os.close(fd)
            except OSError:
                pass


class LoopProcessError(RuntimeError):
    """The control process did not answer, answered with an error, or is gone."""


class LoopProcess:
    """The node's end: starts the control process and talks to it.

    `request` waits for the reply (raising LoopProcessError with the process's error or
    a timeout); `send` does not wait. `on_event(header)` is called from a reader thread for every
    event, and with ``{"ev": "exit", "code": ...}`` when the process is gone.
    """

    def __init__(self, on_event: Any, period_s: float) -> None:
        # The loop's timing figures: shared memory the control process writes and this reads.
        size = LoopStats.size() * 8
        stats_fd = os.memfd_create("liquid_control_loop_stats")
        os.ftruncate(stats_fd, size)
        self._stats_map = mmap.mmap(stats_fd, size)
        self.stats = LoopStats(period_s, storage=np.frombuffer(self._stats_map, np.float64))
        req_r, req_w = os.pipe()
        ev_r, ev_w = os.pipe()
        package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (package_root, env.get("PYTHONPATH", "")) if p
        )
        try:
            self._proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "liquid_control.ros.control_loop",
                    *map(str, (req_r, ev_w, stats_fd)),
                ],
                pass_fds=(req_r, ev_w, stats_fd),
                env=env,
            )
        finally:
            for fd in (req_r, ev_w, stats_fd):
                os.close(fd)
        self._pipe = Pipe(ev_r, req_w)
        self._on_event = on_event
        self._next_id = 0
        self._waiting: dict[int, list[Any]] = {}  # id -> [event, reply]
        self._lock = threading.Lock()
        self._closing = False
        self._reader = threading.Thread(
            target=self._read, name="control_process_events", daemon=True
        )
        self._reader.start()

    @property
    def pid(self) -> int:
        return self._proc.pid

    def alive(self) -> bool:
        return self._proc.poll() is None

    def send(self, op: str, arrays: dict[str, np.ndarray] | None = None, **fields: Any) -> None:
        try:
            self._pipe.send({"op": op, **fields}, arrays)
        except OSError as exc:
            raise LoopProcessError(f"control process is gone ({exc})") from None

    def request(
        self,
        op: str,
        timeout_s: float = 5.0,
        arrays: dict[str, np.ndarray] | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        with self._lock:
            self._next_id += 1
            ident = self._next_id
            slot = self._waiting[ident] = [threading.Event(), None]
        try:
            self.send(op, arrays, id=ident, **fields)
            if not slot[0].wait(timeout_s):
                raise LoopProcessError(f"control process did not answer {op!r} in {timeout_s} s")
        finally:
            with self._lock:
                self._waiting.pop(ident, None)
        reply = slot[1]
        if reply is None:
            raise LoopProcessError(f"control process exited before answering {op!r}")
        if reply.get("error"):
            raise LoopProcessError(f"control process: {op} failed: {reply['error']}")
        return reply

    def _read(self) -> None:
        while True:
            try:
                frame = self._pipe.receive()
            except (OSError, ValueError):
                frame = None
            if frame is None:
                break
            header = frame[0]
            if header.get("ev") == "reply":
                with self._lock:
                    slot = self._waiting.get(header.get("id"))
                if slot is not None:
                    slot[1] = header
                    slot[0].set()
            else:
                self._event(header)
        code = self._proc.wait()
        with self._lock:
            for slot in self._waiting.values():
                slot[0].set()
        if not self._closing:
            self._event({"ev": "exit", "code": code})

    def _event(self, header: dict[str, Any]) -> None:
        try:
            self._on_event(header)
        except Exception as exc:  # noqa: BLE001 (e.g. a publisher destroyed meanwhile by cleanup)
            if not self._closing:  # this thread must go on: it delivers the replies
                print(f"control process event {header.get('ev')!r}: {exc!r}", file=sys.stderr)

    def close(self, timeout_s: float = 5.0) -> None:
        """Ask the process to stop (it publishes the safe action if it was commanding) and wait."""
        self._closing = True
        try:
            self.send("quit")
        except LoopProcessError:
            pass
        self._pipe.close_write()
        try:
            self._proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._reader.join(timeout_s)
        self._pipe.close()


# -------------------------------------------------------------------------------------------
# the loop
# -------------------------------------------------------------------------------------------
# /clock time is polled at this wall-clock interval (a simulation may pause or jump).
SIM_CLOCK_POLL_S = 2e-4
# Safe-action vectors that travel with a policy's runtime arrays (see policy_node._bundle).
SAFE_VECTORS = ("zero_action", "spec_action")
# Settings the node may change while the loop runs (its parameters, and enable).
SETTINGS = (
    "use_measured_dt",
    "sensor_timeout_s",
    "safe_action",
    "reset_on_resume",
    "max_action_rate",
    "debug",
    "enabled",
)


class LoopClock:
    """The node clock of the loop: system time, or the newest /clock message with use_sim_time."""

    def __init__(self, node: Any, sim: bool) -> None:
        self.sim = sim
        self._ns = 0
        self._sub = None
        if sim:
            qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT)
            self._sub = node.create_subscription(Clock, "/clock", _taken_by_the_loop, qos)
            self._decode = decoder_for(Clock)

    def now_ns(self) -> int:
        if self._sub is None:
            return time.time_ns()  # rclpy's system clock is CLOCK_REALTIME
        sub = self._sub
        with sub.handle:
            while taken := sub.handle.take_message(sub.msg_type, self._decode is not None):
                msg = self._decode(taken[0]) if self._decode is not None else taken[0]
                self._ns = msg.clock.sec * 1_000_000_000 + msg.clock.nanosec
        return self._ns

    def sleep_until(self, deadline_ns: int, stop: threading.Event) -> bool:
        """Sleep until the clock reaches `deadline_ns`; False if `stop` was set meanwhile."""
        if self.sim:
            while self.now_ns() < deadline_ns:
                if stop.wait(SIM_CLOCK_POLL_S):
                    return False
            return not stop.is_set()
        delay_s = (deadline_ns - time.time_ns()) * 1e-9
        return not (stop.wait(delay_s) if delay_s > 0 else stop.is_set())


class ControlLoop:
    """The loop of one configured policy node: inputs -> safety layer -> policy -> commands."""

    def __init__(
        self,
        config: dict[str, Any],
        arrays: dict[str, np.ndarray],
        pipe: Pipe,
        stats_storage: np.ndarray | None = None,
    ) -> None:
        self._pipe = pipe
        self.spec = spec = InterfaceSpec.from_dict(config["spec"])
        self.node = node = Node(
            config["node_name"],
            namespace=config["namespace"],
            use_global_arguments=False,
            start_parameter_services=False,
            parameter_overrides=[Parameter("start_type_description_service", value=False)],
        )
        if "log_level" in config:
            node.get_logger().set_level(LoggingSeverity(int(config["log_level"])))
        self.clock = LoopClock(node, bool(config["use_sim_time"]))
        self._period_s = float(config["period_s"])
        self._realtime_priority = int(config["realtime_priority"])
        self._cpu_affinity = [int(c) for c in config["cpu_affinity"]]
        self._realtime_status = "normal scheduling"
        self._stats = LoopStats(self._period_s, storage=stats_storage)
        self._assembler = ObservationAssembler(spec)
        self._writer = ActionWriter(spec)
        self._input_lock = threading.Lock()  # the assembler: written by ticks, read by requests
        self._tick_lock = threading.Lock()  # held by a running tick
        self._commands: deque[tuple[dict[str, Any], dict[str, np.ndarray]]] = deque()
        self._inputs = [
            (
                topic,
                node.create_subscription(message_class(t), name, _taken_by_the_loop, input_qos(t)),
                decoder_for(message_class(t)),
            )
            for topic, name, t in config["inputs"]
        ]
        self._estop_subs = [
            node.create_subscription(Bool, config["estop_topic"], _taken_by_the_loop, qos)
            for qos in (LATCHED_QOS, RELIABLE_QOS)
        ]
        self._outputs = []
        for topic, name, msg_type in config["outputs"]:
            msg, slots = make_message(msg_type), self._writer.topics[topic][1]
            fill = lambda m, v, t=topic, mt=msg_type, s=slots: self._fill_output(  # noqa: E731
                t, mt, m, _scatter(v, s, spec.action_dim)
            )
            self._outputs.append(
                (
                    topic,
                    node.create_publisher(message_class(msg_type), name, output_qos(msg_type)),
                    msg_type,
                    msg,
                    slots,
                    _template(msg_type, fill, slots.size),
                )
            )
        self._pub_debug = node.create_publisher(Float64MultiArray, config["debug_topic"], DEBUG_QOS)
        self._debug_msg = _debug_message(spec)
        self._debug_values = np.zeros(3 + spec.obs_dim + spec.action_dim)
        self._debug_template = _template(
            "std_msgs/Float64MultiArray",
            lambda m, v: setattr(m, "data", v.tolist()),
            self._debug_values.size,
            self._debug_msg,
        )
        self._use_measured_dt = True
        self._sensor_timeout_s = 0.25
        self._safe_action_mode = "zero"
        self._reset_on_resume = True
        self._max_action_rate = 0.0
        self._debug = False
        self._enabled = True
        self._apply_settings(config["settings"])
        self._install(config["policy"], arrays)
        self._loop_thread: threading.Thread | None = None
        self._loop_stop = threading.Event()
        self._clear_run_state()
        self._estop = False
        self._rejected: Counter[str] = Counter()
        self._last_rejection: dict[str, str] = {}
        self._non_finite_outputs = 0
        self._last_error = ""
        self._swaps = 0
        self._swapping = False

    # -- requests from the node ------------------------------------------------------------
    def handle(self, header: dict[str, Any], arrays: dict[str, np.ndarray]) -> bool:
        """Serve one request from the node's pipe (the process's main thread); False: quit."""
        op = header.get("op")
        if op == "quit":
            return False
        if op == "activate":
            self._activate()
            self._reply(header)
        elif op == "deactivate":
            self._deactivate()
            self._reply(header)
        elif op == "set":
            self._apply_settings(header["values"])  # plain attribute writes, read by the ticks
        elif op == "reset":
            self._reset_requested = True
        elif (
            op == "swapping"
        ):  # the node is loading and checking a policy: ticks count as in a swap
            self._swapping = bool(header["value"])
        elif op in ("swap", "stats", "observation"):
            if self._loop_thread is not None:
                self._commands.append((header, arrays))  # done by the control thread, off-tick
            else:
                with self._tick_lock:
                    self._serve(header, arrays)
        else:
            self._reply(header, error=f"unknown request {op!r}")
        return True

    def _serve(self, header: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        """A request that touches the loop's state: swap, stats, observation."""
        op = header["op"]
        if op == "swap":
            try:
                self._install(header["policy"], arrays)
            except (ValueError, KeyError) as exc:
                self._last_error = f"swap failed: {exc}"
                self._swapping = False
                self._send(
                    {"ev": "swap_failed", "hash": header["policy"].get("hash"), "error": str(exc)}
                )
                return
            self._swaps += 1
            self._swapping = False
            self._steps_since_reset = 0
            self._send({"ev": "swapped", **header["policy"]})
        elif op == "stats":
            self._reply(header, values=self._figures(header.get("now_ns")))
        elif op == "observation":
            with self._input_lock:
                raw = self._assembler.raw().tolist() if self._assembler.ready else None
            self._reply(header, raw=raw)

    def _apply_settings(self, values: dict[str, Any]) -> None:
        for name, value in values.items():
            if name not in SETTINGS:
                raise ValueError(f"unknown setting {name!r}; expected one of {SETTINGS}")
            setattr(self, "_" + ("safe_action_mode" if name == "safe_action" else name), value)

    def _install(self, info: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        """Put a policy (its `runtime()` arrays, checked by the node) in place, fresh state."""
        safe = {k: arrays[k] for k in SAFE_VECTORS if k in arrays}
        policy = Policy.from_runtime(
            self.spec, {k: v for k, v in arrays.items() if k not in safe}, info.get("hash")
        )
        policy.path = info.get("path")
        self._policy = policy
        self._zero_action = np.array(safe["zero_action"])
        self._spec_action = np.array(safe["spec_action"]) if "spec_action" in safe else None

    def _reply(self, header: dict[str, Any], **values: Any) -> None:
        self._send({"ev": "reply", "id": header.get("id"), **values})

    def _send(self, header: dict[str, Any]) -> None:
        try:
            self._pipe.send(header)
        except OSError:  # the node is gone; the request pipe's end of file stops this process
            pass

    # -- activation ------------------------------------------------------------------------
    def _clear_run_state(self) -> None:
        self._reset_requested = False
        self._needs_reset = False
        self._steps_since_reset = 0
        self._last_tick_ns: int | None = None
        self._prev_action: np.ndarray | None = None
        self._waiting = True
        self._safe_now: bool | None = None
        self._safe_reasons: list[str] = []

    def _activate(self) -> None:
        with self._tick_lock:
            self._policy.reset()
            self._clear_run_state()
            self._stats.clear()
        # What is alive now leaves the collector's care; while active it runs only between ticks.
        gc.collect()
        gc.freeze()
        gc.disable()
        self._loop_stop = threading.Event()
        self._loop_thread = threading.Thread(
            target=self._run_loop, args=(self._loop_stop,), name="control_loop", daemon=True
        )
        self._loop_thread.start()
        if self._realtime_priority > 0:
            # This (request reader) thread holds the interpreter lock while it decodes a frame;
            # at normal priority another process could preempt it then and stall the loop.
            try:
                param = os.sched_param(max(1, self._realtime_priority - 1))
                os.sched_setscheduler(0, os.SCHED_FIFO, param)
            except (OSError, AttributeError):
                pass  # the control thread reports the refusal

    def _deactivate(self) -> None:
        """Stop the loop (waiting for a running tick) and publish the safe action once."""
        thread, self._loop_thread = self._loop_thread, None
        if thread is not None:
            self._loop_stop.set()
            thread.join(timeout=5.0)
        with self._tick_lock:
            while self._commands:  # requests queued for the loop are served now
                self._serve(*self._commands.popleft())
            if not self._waiting:
                self._publish_action(self._safe_action())
            self._waiting = True
            self._publish_is_safe(True)
        gc.enable()
        gc.unfreeze()

    def shutdown(self) -> None:
        if self._loop_thread is not None:
            self._deactivate()
        self.node.destroy_node()

    # -- the loop --------------------------------------------------------------------------
    def _run_loop(self, stop: threading.Event) -> None:
        """The control thread: a tick every period on the node clock, on a fixed grid, and the
        node's queued requests and the garbage collector in the time left after a tick.

        Deadlines are absolute (no drift). A tick that ends past the next deadline is followed at
        once by the tick of the newest grid point passed (older ones are skipped), so a slow tick
        delays the next one rather than dropping it, and the loop stays on the grid. With
        use_sim_time the deadlines are in /clock time; a clock that jumps back (simulation reset)
        restarts the grid.
        """
        self._realtime_status = self._apply_thread_scheduling()
        clock = self.clock
        period_ns = int(round(self._period_s * 1e9))
        deadline = clock.now_ns() + period_ns
        while clock.sleep_until(deadline, stop):
            self._tick(stop)
            if self._commands:
                with self._tick_lock:
                    self._serve(*self._commands.popleft())
            count = gc.get_count()
            if count[0] > 700:
                gc.collect(1 if count[1] >= 10 else 0)
            now = clock.now_ns()
            deadline += period_ns
            if now >= deadline:  # late: tick at once for the newest grid point passed
                deadline += ((now - deadline) // period_ns) * period_ns
            elif deadline - now > 2 * period_ns:
                deadline = now + period_ns

    def _apply_thread_scheduling(self) -> str:
        """Pin and prioritise the calling (control) thread as the parameters ask; a refusal is
        logged and reported, and the loop runs on at normal priority (the robot keeps its loop)."""
        status = []
        if self._cpu_affinity:
            try:
                os.sched_setaffinity(0, self._cpu_affinity)  # 0 = the calling thread on Linux
                status.append(f"cores {self._cpu_affinity}")
            except (OSError, AttributeError) as exc:
                status.append(f"cpu_affinity {self._cpu_affinity} refused ({exc})")
        if self._realtime_priority > 0:
            try:
                param = os.sched_param(self._realtime_priority)
                os.sched_setscheduler(0, os.SCHED_FIFO, param)
                status.insert(0, f"SCHED_FIFO priority {self._realtime_priority}")
            except (OSError, AttributeError) as exc:
                status.insert(
                    0,
                    f"normal scheduling: SCHED_FIFO priority {self._realtime_priority} refused "
                    f"({exc}); grant CAP_SYS_NICE or an rtprio limit",
                )
        text = ", ".join(status) or "normal scheduling"
        if "refused" in text:
            self.node.get_logger().warning(f"control thread: {text}")
        elif status:
            self.node.get_logger().info(f"control thread: {text}")
        return text

    def _take_inputs(self, now_s: float) -> None:
        """Take every message that arrived since the last tick (each validated, newest wins).

        Messages are taken serialized and decoded by `wire` (no rclpy message objects on the
        control path); a type `wire` does not decode is taken as an rclpy message."""
        use_receive_time = not self.clock.sim
        for topic, sub, decode in self._inputs:
            with sub.handle:
                while (
                    taken := sub.handle.take_message(sub.msg_type, decode is not None)
                ) is not None:
                    msg, info = taken
                    if decode is not None:
                        try:
                            msg = decode(msg)
                        except Malformed as exc:
                            self._reject(topic, MessageRejected("malformed", str(exc)))
                            continue
                    # On system time the DDS receive time is exact; on /clock time (simulation)
                    # a message counts as received at the tick that takes it.
                    received = info.get("received_timestamp", 0) if use_receive_time else 0
                    try:
                        with self._input_lock:
                            self._assembler.update(
                                topic, msg, received * 1e-9 if received else now_s
                            )
                    except MessageRejected as exc:
                        self._reject(topic, exc)
        for sub in self._estop_subs:
            with sub.handle:
                while (taken := sub.handle.take_message(sub.msg_type, False)) is not None:
                    self._on_estop(bool(taken[0].data))

    def _reject(self, topic: str, exc: Any) -> None:
        self._rejected[exc.reason] += 1
        self._last_rejection[exc.reason] = f"{topic}: {exc.detail}"
        self.node.get_logger().warning(
            f"rejected a message on {topic}: {exc}", throttle_duration_sec=1.0
        )

    def _on_estop(self, engaged: bool) -> None:
        if engaged != self._estop:
            self._estop = engaged
            if engaged:
                self.node.get_logger().warning("estop engaged: holding the safe action")
            else:
                self.node.get_logger().info("estop released")

    def _tick(self, stop: threading.Event) -> None:
        t0 = time.perf_counter()
        now_ns = self.clock.now_ns()
        with self._tick_lock:
            if stop.is_set():  # deactivating
                return
            try:
                self._take_inputs(now_ns * 1e-9)
                self._control_step(t0, now_ns)
            except Exception as exc:  # noqa: BLE001 (a bug must not leave the last command standing)
                self._last_error = f"control step failed: {type(exc).__name__}: {exc}"
                self.node.get_logger().error(self._last_error, throttle_duration_sec=1.0)
                self._needs_reset = True
                self._safe_reasons = ["internal error"]
                self._publish_action(self._safe_action())
                self._publish_is_safe(True)

    def _control_step(self, t0: float, now_ns: int) -> None:
        """One tick (called with the tick lock held)."""
        swapping = self._swapping or bool(self._commands)
        period = None if self._last_tick_ns is None else (now_ns - self._last_tick_ns) * 1e-9
        self._last_tick_ns = now_ns
        asm = self._assembler
        with self._input_lock:
            if asm.ready:
                raw = asm.raw()
                stale = asm.stale(now_ns * 1e-9, self._sensor_timeout_s)
        if not asm.ready:  # activation waits for every input once
            self._stats.record(period, time.perf_counter() - t0, swapping)
            return
        if self._waiting:
            self._waiting = False
            self._send({"ev": "commanding"})
        reasons = [f"stale: {', '.join(stale)}"] if stale else []
        if self._estop:
            reasons.append("estop")
        if not self._enabled:
            reasons.append("disabled")
        dt = period if self._use_measured_dt and period and period > 0 else None
        policy = self._policy
        if reasons:
            action = self._safe_action()
            self._needs_reset = True
            self._steps_since_reset = 0
        else:
            if self._reset_requested or (self._needs_reset and self._reset_on_resume):
                policy.reset()
                self._steps_since_reset = 0
            self._reset_requested = self._needs_reset = False
            action = policy.step(raw, dt)
            self._steps_since_reset += 1
            if not np.isfinite(action).all():
                self._non_finite_outputs += 1
                self._last_error = f"non-finite policy output {action.tolist()}; hidden state reset"
                self.node.get_logger().error(self._last_error, throttle_duration_sec=1.0)
                reasons = ["non-finite output"]
                action = self._safe_action()
                policy.reset()
                self._steps_since_reset = 0
            elif self._max_action_rate > 0 and self._prev_action is not None:
                step = self._max_action_rate * (period or self._period_s)
                action = np.clip(action, self._prev_action - step, self._prev_action + step)
        self._publish_action(action)
        self._stats.record(period, time.perf_counter() - t0, swapping)
        self._safe_reasons = reasons
        if self._safe_now != bool(reasons):
            self._publish_is_safe(bool(reasons))
        if self._debug:
            self._publish_debug(raw, action, dt)

    def _safe_action(self) -> np.ndarray:
        if self._safe_action_mode == "hold" and self._prev_action is not None:
            return self._prev_action
        if self._safe_action_mode == "spec" and self._spec_action is not None:
            return self._spec_action
        return self._zero_action

    def _fill_output(self, topic: str, msg_type: str, msg: Any, action: np.ndarray) -> None:
        self._writer.fill(topic, msg, action, make_message)  # every field is rewritten
        if msg_type == "trajectory_msgs/JointTrajectory":
            # Stamp zero = start now; reach the point within one control period.
            msg.points[0].time_from_start = Duration(seconds=self._period_s).to_msg()

    def _publish_action(self, action: np.ndarray) -> None:
        for topic, pub, msg_type, msg, slots, template in self._outputs:
            if template is not None:
                pub.publish(template.serialize(action[slots]))
            else:
                self._fill_output(topic, msg_type, msg, action)
                pub.publish(msg)
        self._prev_action = action

    def _publish_debug(self, raw: np.ndarray, action: np.ndarray, dt: float | None) -> None:
        values = self._debug_values
        values[0] = self._stats.ticks
        values[1] = dt if dt is not None else self._period_s
        values[2] = self._steps_since_reset
        values[3 : 3 + raw.size] = raw
        values[3 + raw.size :] = action
        if self._debug_template is not None:
            self._pub_debug.publish(self._debug_template.serialize(values))
        else:
            self._debug_msg.data = values.tolist()
            self._pub_debug.publish(self._debug_msg)

    def _publish_is_safe(self, safe: bool) -> None:
        self._safe_now = safe
        self._send({"ev": "is_safe", "safe": safe})

    # -- figures for diagnostics -----------------------------------------------------------
    def _figures(self, now_ns: int | None) -> dict[str, Any]:
        """The loop's state for diagnostics (its timing figures are in the shared LoopStats)."""
        now_s = (now_ns if now_ns is not None else self.clock.now_ns()) * 1e-9
        with self._input_lock:
            stale = self._assembler.stale(now_s, self._sensor_timeout_s)
            missing = self._assembler.missing()
        return {
            "control_thread": self._realtime_status,
            "stale_inputs": ", ".join(stale),
            "missing_inputs": missing,
            "waiting_for_inputs": self._waiting,
            "safe_action_active": bool(self._safe_now),
            "safe_action_reasons": ", ".join(self._safe_reasons),
            "estop": self._estop,
            "enabled": self._enabled,
            "rejected_total": sum(self._rejected.values()),
            **{f"rejected_{r}": n for r, n in sorted(self._rejected.items())},
            **{f"last_rejection_{r}": d for r, d in sorted(self._last_rejection.items())},
            "non_finite_outputs": self._non_finite_outputs,
            "swaps": self._swaps,
            "loop_error": self._last_error,
        }


def _scatter(values: np.ndarray, slots: np.ndarray, size: int) -> np.ndarray:
    full = np.zeros(size)
    full[slots] = values
    return full


def _template(msg_type: str, fill: Any, n: int, msg: Any | None = None) -> Any:
    """The serialized fast path of an output (None: publish rclpy messages, as for any type whose
    changing values are not plain float64 fields)."""
    try:
        return SerializedTemplate(msg if msg is not None else make_message(msg_type), fill, n)
    except TemplateUnsupported:
        return None


def _debug_message(spec: Any) -> Any:
    msg = Float64MultiArray()
    dims = [("tick", 1), ("dt_s", 1), ("steps_since_reset", 1)]
    dims += [("observation", spec.obs_dim), ("action", spec.action_dim)]
    msg.layout.dim = [MultiArrayDimension(label=k, size=n, stride=n) for k, n in dims]
    return msg


def _taken_by_the_loop(msg: Any) -> None:
    """Subscription callback placeholder: the io node is never spun (see `_take_inputs`)."""


def main(argv: list[str] | None = None) -> int:
    """The control process: configure from the first request, then serve requests until the
    node's pipe closes or it asks to quit; the loop is stopped safely on the way out."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 3:
        print(
            "usage: python -m liquid_control.ros.control_loop <request fd> <event fd> <stats fd>",
            file=sys.stderr,
        )
        return 2
    # The node coordinates shutdown: Ctrl-C in a terminal reaches the whole process group, and the
    # node's deactivation (safe action) must come first. SIGTERM ends the process safely.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    # Short interpreter-lock slices: the control thread never waits long for the request reader.
    sys.setswitchinterval(5e-5)
    pipe = Pipe(int(argv[0]), int(argv[1]))
    stats_map = mmap.mmap(int(argv[2]), LoopStats.size() * 8)
    first = pipe.receive()
    if first is None:
        return 0
    import rclpy

    header, arrays = first
    # rclpy's own handlers would shut the context down under a running loop on Ctrl-C.
    rclpy.init(args=[], signal_handler_options=SignalHandlerOptions.NO)
    loop = None
    try:
        try:
            loop = ControlLoop(header["config"], arrays, pipe, np.frombuffer(stats_map, np.float64))
        except Exception as exc:  # noqa: BLE001 (reported to the node, which fails configure)
            pipe.send(
                {"ev": "reply", "id": header.get("id"), "error": f"{type(exc).__name__}: {exc}"}
            )
            return 1
        pipe.send({"ev": "reply", "id": header.get("id")})
        while (frame := pipe.receive()) is not None and loop.handle(*frame):
            pass
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        if loop is not None:
            loop.shutdown()
        rclpy.try_shutdown()
        pipe.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
