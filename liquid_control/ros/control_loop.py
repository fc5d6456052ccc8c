"""The policy node's control loop, in a process of its own (`control_process` runs it).

`PolicyNode` (policy_node.py) keeps the lifecycle, parameters (swaps), services, diagnostics and
the watchdog; this loop commands the robot. In one process the loop shared the interpreter lock
with the executor threads, and any Python work beside it stretched ticks. Here nothing else runs
Python while a tick runs: work from the node (a swap, a request for figures) is queued and done by
the control thread itself after a tick, and a swapped policy arrives as ready-made arrays
(`Policy.runtime`). The garbage collector runs there too, never inside a tick.

Each tick: take the newest input and estop messages (bounded: `max_messages_per_tick` per topic)
-> `SafetyCore.tick` (core/safety.py: every safety decision) -> publish its command. Between ticks
an input reader thread, woken by the middleware, keeps taking messages, so a flood on a topic can
push no valid sample out of the queue: the newest *valid* sample per topic is what a tick sees.
Messages the middleware dropped (gaps in each publisher's sequence numbers) and rejected ones are
counted per topic, and a topic that floods is named in diagnostics.

Where it is built for the running ROS install and covers the policy's message types, the tick
runs compiled instead (``compiled_tick``, default true; ros/_ctick.c, prepared by
`native_tick.build`): one C thread waits for the deadline, takes and decodes the inputs from rcl,
runs the same safety decisions (csrc/safety.h, tested against core/safety.py) and the same LTC
step as `Policy.step`, and publishes, without ever taking the interpreter lock; this module then
only relays requests and events. The Python tick here is the fallback and the reference
(test_native_tick.py compares their published bytes).

ROS entities live on the companion node ``<name>_io``: input subscriptions, command publishers,
``~/observation`` (debug), the ``~/estop`` subscriptions and, with use_sim_time, /clock. Topic names
arrive resolved (remapped) by the node; its logger is set to the node's level.
"""

from __future__ import annotations

import gc
import math
import os
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from rclpy.duration import Duration
from rclpy.impl.implementation_singleton import rclpy_implementation as _rclpy
from rclpy.logging import LoggingSeverity
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rosgraph_msgs.msg import Clock
from std_msgs.msg import Bool, Float64MultiArray, MultiArrayDimension

from liquid_control.core import native
from liquid_control.core.adapters import ActionWriter, MessageRejected, ObservationAssembler
from liquid_control.core.policy import Policy
from liquid_control.core.safety import ActionSpace, EstopGate, InputSample, SafetyCore, TickInput
from liquid_control.core.spec import InterfaceSpec

from . import native_tick
from .messages import (
    DEBUG_QOS,
    LATCHED_QOS,
    RELIABLE_QOS,
    input_qos,
    make_message,
    message_class,
    output_qos,
)
from .native_tick import TAKE_BUDGET
from .protocol import Ev, Op, Pipe, ProtocolError, Request, event_header, parse_request
from .settings import LOOP_SETTINGS, safety_config
from .stats import Heartbeat, LoopStats
from .wire import Malformed, SerializedTemplate, TemplateUnsupported, decoder_for

# /clock time is polled at this wall-clock interval (a simulation may pause or jump).
SIM_CLOCK_POLL_S = 2e-4
# The reader thread takes at most this many messages of one topic per wake-up before it looks
# at the others (and lets the control thread in).
READER_BATCH = 8
# A publisher whose last QUARANTINE_AFTER messages were all rejected is not decoded for
# QUARANTINE_S (see TopicFigures).
QUARANTINE_AFTER, QUARANTINE_S = 50, 1.0
# A flood: rejected messages above this rate on one topic (per second).
FLOOD_REJECTED_HZ = 100.0


class LoopClock:
    """The node clock of the loop: system time, or the newest /clock message with use_sim_time."""

    def __init__(self, node: Node, sim: bool, heartbeat: Heartbeat) -> None:
        self.sim = sim
        self._ns = 0
        self._sub = None
        self._lock = threading.Lock()
        self._heartbeat = heartbeat
        if sim:
            qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT)
            self._sub = node.create_subscription(Clock, "/clock", _taken_by_the_loop, qos)
            self._decode = decoder_for(Clock)

    def now_ns(self) -> int:
        if self._sub is None:
            return time.time_ns()  # rclpy's system clock is CLOCK_REALTIME
        sub = self._sub
        with self._lock, sub.handle:
            while taken := sub.handle.take_message(sub.msg_type, self._decode is not None):
                msg = self._decode(taken[0]) if self._decode is not None else taken[0]
                self._ns = msg.clock.sec * 1_000_000_000 + msg.clock.nanosec
            return self._ns

    def latest_ns(self) -> int:
        """The last time read, without taking /clock (sim), or the system time."""
        return self._ns if self.sim else time.time_ns()

    def sleep_until(self, deadline_ns: int, period_ns: int, stop: threading.Event) -> bool:
        """Sleep until the clock reaches `deadline_ns` (or jumps back by more than two periods:
        a restarted simulation ticks at once); False if `stop` was set meanwhile. The heartbeat
        beats while it waits, so the watchdog tells a stopped clock from a hung loop."""
        if self.sim:
            while (now := self.now_ns()) < deadline_ns:
                if now < deadline_ns - 3 * period_ns:
                    break  # jumped back: restart the grid now
                self._heartbeat.beat(time.monotonic(), now * 1e-9)
                if stop.wait(SIM_CLOCK_POLL_S):
                    return False
            return not stop.is_set()
        delay_s = (deadline_ns - time.time_ns()) * 1e-9
        return not (stop.wait(delay_s) if delay_s > 0 else stop.is_set())


@dataclass
class Sender:
    """One publisher of an input topic, as the reader sees it (by its DDS gid)."""

    last_seq: int | None = None
    rejected_in_a_row: int = 0
    quarantined_until: float = 0.0  # monotonic s


@dataclass
class TopicFigures:
    """What arrived on one input topic (since configure), for diagnostics.

    A publisher whose last `QUARANTINE_AFTER` messages were all rejected is quarantined for
    `QUARANTINE_S`: its messages are then counted but not decoded, so a flood of bad messages
    costs the loop a take each, and cannot starve the valid publishers of the same topic. Both
    this and the drop counts need the publisher's id in the message info (rclpy from Kilted on;
    Jazzy's reports sequence numbers without it)."""

    taken: int = 0
    valid: int = 0
    dropped: int = 0  # middleware-reported: gaps in a publisher's sequence numbers
    rejected: Counter[str] = field(default_factory=Counter)
    senders: dict[bytes, Sender] = field(default_factory=dict)
    interval_s: float | None = None  # smoothed wall-clock interval between valid samples
    last_valid_s: float | None = None  # (monotonic)
    window: tuple[float, int, int, int] = (0.0, 0, 0, 0)  # (time, taken, dropped, rejected)

    def sender(self, info: dict[str, Any]) -> Sender | None:
        """The message's publisher, with the messages the middleware dropped between its
        previous one and this counted (gaps in its sequence numbers)."""
        gid = (info.get("publisher_gid") or {}).get("data")
        if gid is None:  # (not every rmw/rclpy reports it)
            return None
        sender = self.senders.get(gid)
        if sender is None:
            if len(self.senders) > 64:
                self.senders.clear()
            sender = self.senders[gid] = Sender()
        seq = info.get("publication_sequence_number")
        if seq:
            if sender.last_seq is not None and seq > sender.last_seq + 1:
                self.dropped += seq - sender.last_seq - 1
            sender.last_seq = seq
        return sender

    def judged(self, sender: Sender | None, valid: bool, now_s: float) -> None:
        if sender is None:
            return
        if valid:
            sender.rejected_in_a_row = 0
            return
        sender.rejected_in_a_row += 1
        if sender.rejected_in_a_row >= QUARANTINE_AFTER:
            sender.quarantined_until = now_s + QUARANTINE_S
            sender.rejected_in_a_row = 0

    def arrived(self, now_s: float) -> None:
        self.valid += 1
        if self.last_valid_s is not None and now_s > self.last_valid_s:
            gap = now_s - self.last_valid_s
            self.interval_s = gap if self.interval_s is None else 0.8 * self.interval_s + 0.2 * gap
        self.last_valid_s = now_s


@dataclass
class InputSub:
    topic: str
    sub: Any
    decode: Any
    figures: TopicFigures


class InputPath:
    """Input subscriptions, the observation assembler and the estop, behind one lock.

    Messages are taken serialized and decoded by `wire` (no rclpy message objects on the control
    path); a type `wire` does not decode is taken as an rclpy message. Every take and the update
    it causes happen under the lock, so the reader thread and a tick never apply messages out of
    order."""

    def __init__(self, node: Node, spec: InterfaceSpec, config: dict[str, Any], clock: LoopClock):
        self.node, self.clock = node, clock
        self.assembler = ObservationAssembler(spec)
        self.lock = threading.Lock()
        self.subs = [
            InputSub(
                topic,
                node.create_subscription(message_class(t), name, _taken_by_the_loop, input_qos(t)),
                decoder_for(message_class(t)),
                TopicFigures(),
            )
            for topic, name, t in config["inputs"]
        ]
        self.max_bytes = int(config["settings"]["max_input_bytes"])
        self.estop_topic = config["estop_topic"]
        self.estop_subs = [
            node.create_subscription(Bool, self.estop_topic, _taken_by_the_loop, qos)
            for qos in (LATCHED_QOS, RELIABLE_QOS)
        ]
        self.estop_changes: deque[bool] = deque()  # for the log and the node, read by ticks
        self.gate = EstopGate(
            self.estop_topic,
            bool(config["settings"]["estop_required_at_start"]),
            float(config["settings"]["estop_discovery_s"]),
            time.monotonic(),
        )
        self.rejections: deque[tuple[str, MessageRejected]] = deque(maxlen=64)  # for the log
        self.last_rejection: dict[str, str] = {}  # reason -> "topic: detail"
        self._stop = threading.Event()
        self.tick_waiting = threading.Event()  # set by a tick while it needs the lock
        self._wake = node.create_guard_condition(_taken_by_the_loop)
        self._reader: threading.Thread | None = None

    # -- taking ------------------------------------------------------------------------------
    def take(
        self, entry: InputSub, limit: int, until: float = math.inf, reader: bool = False
    ) -> bool:
        """Take up to `limit` messages of one topic, none after `until` (perf_counter), and (for
        the reader thread) none while a tick waits; True if its queue is empty now."""
        sub, fig, use_receive_time = entry.sub, entry.figures, not self.clock.sim
        max_bytes = self.max_bytes
        for _ in range(limit):
            if time.perf_counter() > until or (reader and self.tick_waiting.is_set()):
                return False
            with self.lock, sub.handle:
                taken = sub.handle.take_message(sub.msg_type, entry.decode is not None)
                if taken is None:
                    return True
                msg, info = taken
                fig.taken += 1
                sender = fig.sender(info)
                now = time.monotonic()
                if sender is not None and sender.quarantined_until > now:
                    fig.rejected["quarantined"] += 1
                    continue
                # On system time the DDS receive time is exact; on /clock time (simulation) a
                # message counts as received at the newest /clock time seen.
                received = info.get("received_timestamp", 0) if use_receive_time else 0
                stamp_s = (received or self.clock.latest_ns()) * 1e-9
                try:
                    if entry.decode is not None and len(msg) > max_bytes:
                        raise MessageRejected(
                            "too_large", f"{len(msg)} bytes, max_input_bytes is {max_bytes}"
                        )
                    if entry.decode is not None:
                        try:
                            msg = entry.decode(msg)
                        except Malformed as exc:
                            raise MessageRejected("malformed", str(exc)) from None
                    self.assembler.update(entry.topic, msg, stamp_s)
                    fig.arrived(now)
                    fig.judged(sender, True, now)
                except MessageRejected as exc:
                    fig.rejected[exc.reason] += 1
                    fig.judged(sender, False, now)
                    self.rejections.append((entry.topic, exc))
                    self.last_rejection[exc.reason] = f"{entry.topic}: {exc.detail}"
        return False

    def take_estop(self) -> None:
        for sub in self.estop_subs:
            with self.lock, sub.handle:
                while (taken := sub.handle.take_message(sub.msg_type, False)) is not None:
                    if self.gate.update(bool(taken[0].data)):
                        self.estop_changes.append(bool(taken[0].data))

    def take_all(self, limit: int, budget_s: float) -> None:
        """At a tick: the estop first, then up to `limit` messages per input topic, within
        `budget_s` in all (what is left stays for the reader thread and the next tick)."""
        self.take_estop()
        until = time.perf_counter() + budget_s
        for entry in self.subs:
            self.take(entry, limit, until)

    def latched_estop_publishers(self) -> int:
        sub = self.estop_subs[0]
        count = getattr(sub, "get_publisher_count", None)
        if count is not None:  # rclpy >= Jazzy: matched transient-local writers
            return int(count())
        infos = self.node.get_publishers_info_by_topic(self.estop_topic)  # Humble
        return sum(1 for i in infos if i.qos_profile.durability == LATCHED_QOS.durability)

    def samples(self) -> dict[str, InputSample]:
        asm = self.assembler
        return {
            e.topic: InputSample(asm.last_update_s[e.topic], e.figures.valid) for e in self.subs
        }

    # -- the reader thread -------------------------------------------------------------------
    def start_reader(self) -> None:
        self._stop.clear()
        self._reader = threading.Thread(target=self._read, name="input_reader", daemon=True)
        self._reader.start()

    def stop_reader(self) -> None:
        if self._reader is not None:
            self._stop.set()
            self._wake.trigger()
            self._reader.join(timeout=5.0)
            self._reader = None

    def _read(self) -> None:
        """Wait on the input and estop subscriptions and take what arrives, in batches."""
        subs = [e.sub for e in self.subs] + self.estop_subs
        wait_set = _rclpy.WaitSet(len(subs), 1, 0, 0, 0, 0, self.node.context.handle)
        by_pointer = {e.sub.handle.pointer: e for e in self.subs}
        estop_pointers = {s.handle.pointer for s in self.estop_subs}
        while not self._stop.is_set():
            wait_set.clear_entities()
            for s in subs:
                wait_set.add_subscription(s.handle)
            wait_set.add_guard_condition(self._wake.handle)
            wait_set.wait(100_000_000)  # 0.1 s: the interpreter lock is released meanwhile
            if self._stop.is_set():
                break
            for pointer in wait_set.get_ready_entities("subscription"):
                while self.tick_waiting.is_set():  # a tick goes first (a Lock is not fair)
                    time.sleep(5e-5)
                if pointer in estop_pointers:
                    self.take_estop()
                elif pointer in by_pointer:
                    self.take(by_pointer[pointer], READER_BATCH, reader=True)

    # -- figures -----------------------------------------------------------------------------
    def figures(self, now_s: float, sensor_timeout_s: float) -> dict[str, Any]:
        """Per-topic figures over the time since the previous call, and the flooded topics."""
        out: dict[str, Any] = {}
        flooded, slow = [], []
        wall = time.monotonic()
        for e in self.subs:
            f = e.figures
            t0, taken0, dropped0, rejected0 = f.window
            rejected = sum(f.rejected.values())
            span = wall - t0 if t0 else 0.0
            f.window = (wall, f.taken, f.dropped, rejected)
            name = e.topic.strip("/").replace("/", "_") or "root"
            rate = (f.taken - taken0) / span if span > 0 else float("nan")
            out[f"input_{name}_rate_hz"] = rate
            # (rclpy before Kilted reports no publisher ids: no drop counts, no quarantine)
            out[f"input_{name}_dropped"] = f.dropped if f.senders else "not reported"
            out[f"input_{name}_rejected"] = rejected
            d_drop, d_rej = f.dropped - dropped0, rejected - rejected0
            if span > 0 and (d_drop > 0 or d_rej / span > FLOOD_REJECTED_HZ):
                reasons = ", ".join(f"{r} {n}" for r, n in sorted(f.rejected.items()))
                flooded.append(
                    f"{e.topic}: {rate:.0f} msg/s, {d_drop} dropped by the middleware, "
                    f"{d_rej} rejected ({reasons}) in the last {span:.1f} s"
                )
            if f.interval_s is not None and f.interval_s > sensor_timeout_s:
                slow.append(
                    f"{e.topic} arrives every {f.interval_s:.3f} s ({1 / f.interval_s:.1f} Hz), "
                    f"slower than sensor_timeout_s {sensor_timeout_s:g} s"
                )
        out["flooded_inputs"] = "; ".join(flooded)
        out["slow_inputs"] = "; ".join(slow)
        return out

    def never_heard(self) -> list[str]:
        """Each input never received, with its publisher count."""
        missing = set(self.assembler.missing())
        out = []
        for e in self.subs:
            if e.topic in missing:
                name = e.sub.topic_name
                out.append(f"{name} ({self.node.count_publishers(name)} publishers)")
        return out


class ControlLoop:
    """The loop of one configured policy node: inputs -> safety core -> commands."""

    def __init__(
        self,
        config: dict[str, Any],
        arrays: dict[str, np.ndarray],
        pipe: Pipe,
        shared: np.ndarray | None = None,
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
        self._period_s = float(config["period_s"])
        n_stats = LoopStats.size()
        shared = np.zeros(n_stats + Heartbeat.SIZE + spec.action_dim) if shared is None else shared
        self._stats = LoopStats(self._period_s, storage=shared[:n_stats])
        self.heartbeat = Heartbeat(shared[n_stats : n_stats + Heartbeat.SIZE])
        self._last_command = shared[n_stats + Heartbeat.SIZE :]  # read by the node's watchdog
        self.clock = LoopClock(node, bool(config["use_sim_time"]), self.heartbeat)
        self._realtime_priority = int(config["realtime_priority"])
        self._cpu_affinity = [int(c) for c in config["cpu_affinity"]]
        self._realtime_status = "normal scheduling"
        self._settings = dict(config["settings"])
        self.inputs = InputPath(node, spec, config, self.clock)
        self._writer = ActionWriter(spec)
        self._tick_lock = threading.Lock()  # held by a running tick
        self._commands: deque[Request] = deque()
        self._outputs = []
        for topic, name, msg_type in config["outputs"]:
            msg, slots = make_message(msg_type), self._writer.topics[topic][1]
            fill = lambda m, v, t=topic, mt=msg_type, s=slots: self._fill_output(  # noqa: E731
                t, mt, m, _scatter(v, s, spec.action_dim)
            )
            publisher = node.create_publisher(message_class(msg_type), name, output_qos(msg_type))
            template = _template(msg_type, fill, slots.size)
            self._outputs.append(Output(topic, publisher, msg_type, msg, slots, template))
        self._pub_debug = node.create_publisher(Float64MultiArray, config["debug_topic"], DEBUG_QOS)
        self._debug_msg = _debug_message(spec)
        self._debug_values = np.zeros(3 + spec.obs_dim + spec.action_dim)
        self._debug_template = _template(
            "std_msgs/Float64MultiArray",
            lambda m, v: setattr(m, "data", v.tolist()),
            self._debug_values.size,
            self._debug_msg,
        )
        policy = self._runtime_policy(config["policy"], arrays)
        self.core = SafetyCore(
            safety_config(self._settings, self._period_s),
            ActionSpace.from_spec(spec),
            policy,
            self._period_s,
        )
        self.inputs.gate.remembered = config.get("estop")
        self._enabled = bool(config.get("enabled", True))
        self._loop_thread: threading.Thread | None = None
        self._loop_stop = threading.Event()
        self._non_finite_outputs = 0
        self._last_error = ""
        self._swaps = 0
        self._swapping = False
        self._reset_requested = False
        self._estop_released_logged = False
        self._slow_warned: set[str] = set()
        self._safe_ticks: Counter[str] = Counter()  # published safe ticks by cause
        self._clear_run_state()
        # The compiled tick (ros/_ctick.c) where it covers this interface, else the Python tick.
        self._ctick: Any = None
        self._pump: Any = None
        if self._settings.get("compiled_tick", True):
            self._ctick, why = native_tick.build(self, shared)
        else:
            why = "compiled_tick is false"
        if self._ctick is None:
            self.tick_kind = f"python ({why})"
            self.inputs.start_reader()
        else:
            self.tick_kind = "compiled"
            self._pump = native_tick.EventPump(self)
            self._pump.start()
        node.get_logger().info(f"control tick: {self.tick_kind}")
        self._handlers = {
            Op.ACTIVATE: self._on_activate,
            Op.DEACTIVATE: self._on_deactivate,
            Op.SET: self._on_set,
            Op.RESET: self._on_reset,
            Op.ESTOP: self._on_estop,
            Op.SWAPPING: self._on_swapping,
            Op.SWAP: self._queued,
            Op.STATS: self._queued,
            Op.OBSERVATION: self._queued,
        }

    @property
    def policy(self) -> Policy:
        return self.core.policy  # type: ignore[return-value]

    # -- requests from the node ------------------------------------------------------------
    def handle(self, header: dict[str, Any], arrays: dict[str, np.ndarray]) -> bool:
        """Serve one frame from the node's pipe (the process's main thread); False: quit."""
        try:
            request = parse_request(header, arrays)
        except ProtocolError as exc:
            self._send(event_header(Ev.REPLY, id=header.get("id"), error=str(exc)))
            return True
        if request.op is Op.QUIT:
            return False
        handler = self._handlers.get(request.op)
        if handler is None:  # CONFIGURE again
            self._reply(request, error=f"{request.op.value!r} is not valid now")
            return True
        try:
            handler(request)
        except Exception as exc:  # noqa: BLE001 (reported to the node, the loop keeps running)
            self._reply(request, error=f"{type(exc).__name__}: {exc}")
        return True

    def _on_activate(self, request: Request) -> None:
        if "estop" in request.fields and request.fields["estop"] is not None:
            with self.inputs.lock:
                if not self.inputs.gate.heard:
                    self.inputs.gate.remembered = bool(request.fields["estop"])
        self._activate()
        self._reply(request)

    def _on_deactivate(self, request: Request) -> None:
        self._deactivate()
        self._reply(request)

    def _on_set(self, request: Request) -> None:
        values = request.fields["values"]
        unknown = sorted(set(values) - set(LOOP_SETTINGS) - {"enabled"})
        if unknown:
            raise ValueError(f"unknown settings {unknown}")
        if "enabled" in values:
            self._enabled = bool(values["enabled"])
        settings = {**self._settings, **{k: v for k, v in values.items() if k != "enabled"}}
        config = safety_config(settings, self._period_s)  # checked before anything changes
        self._settings = settings
        self.core.set_config(config)  # plain attribute writes, read by the next tick
        self.inputs.gate.required = bool(settings["estop_required_at_start"])
        if self._ctick is not None:
            self._ctick.set(
                native.config_tuple(config),
                self._enabled if "enabled" in values else None,
                self.inputs.gate.required,
                None,
                bool(settings["debug"]),
            )

    def _on_reset(self, request: Request) -> None:
        self._reset_requested = True
        if self._ctick is not None:
            self._ctick.reset()

    def _on_estop(self, request: Request) -> None:
        """The node's process heard an estop message (its participant may have discovered the
        estop publisher first): it counts as if this process had taken it."""
        engaged = bool(request.fields["engaged"])
        if self._ctick is not None:
            self._ctick.estop(engaged)
            with self.inputs.lock:
                self.inputs.gate.update(engaged)  # (the Python gate's view, for its texts)
            return
        with self.inputs.lock:
            if self.inputs.gate.update(engaged):
                self.inputs.estop_changes.append(engaged)

    def _on_swapping(self, request: Request) -> None:
        self._swapping = bool(request.fields["value"])
        if self._ctick is not None:
            self._ctick.set(None, None, None, self._swapping, None)

    def _queued(self, request: Request) -> None:
        """Requests that touch the loop's state: done by the control thread after a tick."""
        if self._loop_thread is not None:
            self._commands.append(request)
        else:
            with self._tick_lock:
                self._serve(request)

    def _serve(self, request: Request) -> None:
        if request.op is Op.SWAP:
            self._swap(request)
        elif request.op is Op.STATS:
            self._reply(request, values=self._figures(request.fields.get("now_ns")))
        elif request.op is Op.OBSERVATION and self._ctick is not None:
            self._reply(request, raw=self._ctick.figures()["raw"])
        elif request.op is Op.OBSERVATION:
            with self.inputs.lock:
                asm = self.inputs.assembler
                raw = asm.raw().tolist() if asm.ready else None
            self._reply(request, raw=raw)

    def _swap(self, request: Request) -> None:
        info = request.fields["policy"]
        try:
            spec = InterfaceSpec.from_dict(info["spec"]) if "spec" in info else self.spec
            policy = self._runtime_policy(info, request.arrays, spec)
            space = ActionSpace.from_spec(spec)
        except (ValueError, KeyError) as exc:
            self._last_error = f"swap failed: {exc}"
            self._swapping = False
            self._send(event_header(Ev.SWAP_FAILED, hash=info.get("hash"), error=str(exc)))
            return
        if self._ctick is not None:  # in use from the compiled tick's next tick (it reports)
            try:
                compiled = native_tick.policy_tuple(policy, space)
            except ValueError as exc:
                self._swapping = False
                self._send(event_header(Ev.SWAP_FAILED, hash=info.get("hash"), error=str(exc)))
                return
            self.core.set_policy(policy, space)  # (the Python core: the policy's reference)
            self._pump.swaps.append({"hash": info.get("hash"), "path": info.get("path")})
            self._ctick.swap(compiled)
            return
        self.core.set_policy(policy, space)
        self._swaps += 1
        self._swapping = False
        self._send(event_header(Ev.SWAPPED, hash=info.get("hash"), path=info.get("path")))

    def _runtime_policy(
        self, info: dict[str, Any], arrays: dict[str, np.ndarray], spec: InterfaceSpec | None = None
    ) -> Policy:
        policy = Policy.from_runtime(spec or self.spec, arrays, info.get("hash"))
        policy.path = info.get("path")
        return policy

    def _reply(self, request: Request, **values: Any) -> None:
        self._send(event_header(Ev.REPLY, id=request.id, **values))

    def _send(self, header: dict[str, Any]) -> None:
        try:
            self._pipe.send(header)
        except OSError:  # the node is gone; the request pipe's end of file stops this process
            pass

    # -- activation ------------------------------------------------------------------------
    def _clear_run_state(self) -> None:
        self._last_tick_ns: int | None = None
        self._waiting = True
        self._waiting_since = time.monotonic()
        self._safe_now: bool | None = None
        self._safe_reasons: tuple[str, ...] = ()
        self._last_publish_action: np.ndarray | None = None

    def _activate(self) -> None:
        if self._ctick is not None:
            gate = self.inputs.gate
            if gate.remembered is not None:
                self._ctick.remember_estop(bool(gate.remembered))
            self._clear_run_state()
            self._ctick.start()
            return
        with self._tick_lock:
            self.core.restart()
            self._clear_run_state()
            self._stats.clear()
            self.heartbeat.clear()
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
        if self._ctick is not None:
            self._ctick.stop()  # (publishes the safe action if it was commanding)
            self._waiting = True
            self._publish_is_safe(True)
            return
        thread, self._loop_thread = self._loop_thread, None
        if thread is not None:
            self._loop_stop.set()
            thread.join(timeout=5.0)
        with self._tick_lock:
            while self._commands:  # requests queued for the loop are served now
                self._serve(self._commands.popleft())
            if not self._waiting:
                self._publish_action(self.core.safe_action())
            self._waiting = True
            self._publish_is_safe(True)
        gc.enable()
        gc.unfreeze()

    def shutdown(self) -> None:
        if self._ctick is not None:
            self._ctick.stop()
            if self._pump is not None:
                self._pump.stop()
            self._ctick = None  # (its thread is stopped: the handles it used may go now)
        if self._loop_thread is not None:
            self._deactivate()
        self.inputs.stop_reader()
        self.node.destroy_node()

    # -- the loop --------------------------------------------------------------------------
    def _run_loop(self, stop: threading.Event) -> None:
        """The control thread: a tick every period on the node clock, on a fixed grid, and the
        node's queued requests and the garbage collector in the time left after a tick.

        Deadlines are absolute (no drift). A tick that ends past the next deadline is followed at
        once by the tick of the newest grid point passed (older ones are skipped), so a slow tick
        delays the next one rather than dropping it. A clock that jumps back (a simulation
        restarted) restarts the grid at once; the safety core resets the hidden state."""
        self._realtime_status = self._apply_thread_scheduling()
        clock = self.clock
        period_ns = int(round(self._period_s * 1e9))
        deadline = clock.now_ns() + period_ns
        while clock.sleep_until(deadline, period_ns, stop):
            self._tick(stop)
            if self._commands:
                with self._tick_lock:
                    self._serve(self._commands.popleft())
            count = gc.get_count()
            if count[0] > 700:
                gc.collect(1 if count[1] >= 10 else 0)
            now = clock.now_ns()
            deadline += period_ns
            if now >= deadline:  # late: tick at once for the newest grid point passed
                deadline += ((now - deadline) // period_ns) * period_ns
            elif deadline - now > 2 * period_ns:  # the clock went back
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

    def _tick(self, stop: threading.Event) -> None:
        t0 = time.perf_counter()
        now_ns = self.clock.now_ns()
        with self._tick_lock:
            if stop.is_set():  # deactivating
                return
            period = None if self._last_tick_ns is None else (now_ns - self._last_tick_ns) * 1e-9
            self._last_tick_ns = now_ns
            try:
                self._control_step(now_ns)
            except Exception as exc:  # noqa: BLE001 (a bug must not leave the last command standing)
                self._last_error = f"control step failed: {type(exc).__name__}: {exc}"
                self.node.get_logger().error(self._last_error, throttle_duration_sec=1.0)
                self.core.policy.reset()
                self._safe_reasons = ("internal error",)
                self._publish_action(self.core.safe_action())
                self._publish_is_safe(True)
            self._stats.record(
                period, time.perf_counter() - t0, self._swapping or bool(self._commands)
            )
            self.heartbeat.ticked(time.monotonic(), self._safe_now is False)

    def _control_step(self, now_ns: int) -> None:
        """One tick (called with the tick lock held): inputs -> safety core -> publish."""
        inputs, now_s = self.inputs, now_ns * 1e-9
        inputs.tick_waiting.set()
        try:
            self._take_and_decide(now_s)
        finally:
            inputs.tick_waiting.clear()

    def _take_and_decide(self, now_s: float) -> None:
        inputs = self.inputs
        inputs.take_all(int(self._settings["max_messages_per_tick"]), TAKE_BUDGET * self._period_s)
        with inputs.lock:
            asm = inputs.assembler
            raw = asm.raw() if asm.ready else None
            if raw is not None and self._waiting:
                # The discovery window for a latched estop publisher runs from now too: the
                # participants that publish the inputs have just been discovered, an estop
                # node's may take as long.
                inputs.gate.started_s = max(inputs.gate.started_s, time.monotonic())
            samples = inputs.samples()
            estop, detail = inputs.gate.state(time.monotonic(), self._latched_estop_publishers())
            changes = list(inputs.estop_changes)
            inputs.estop_changes.clear()
        self._log_inputs(changes)
        cmd = self.core.tick(
            TickInput(
                now_s=now_s,
                wall_s=time.monotonic(),
                inputs=samples,
                raw=raw,
                estop=estop,
                estop_detail=detail,
                enabled=self._enabled,
                reset_requested=self._reset_requested,
            )
        )
        self._reset_requested = False
        if estop is False and not self._estop_released_logged:
            self._estop_released_logged = True
            g = inputs.gate
            self.log_estop_released(0 if g.heard else 1 if g.remembered is not None else 2)
        for event in cmd.events:
            self.node.get_logger().warning(event, throttle_duration_sec=1.0)
        if cmd.action is None:  # waiting for the first sample of every input
            self._report_waiting()
            return
        if "non-finite policy output" in cmd.reasons:
            self._non_finite_outputs += 1
            self._last_error = f"non-finite policy output {np.asarray(cmd.raw_action).tolist()}; hidden state reset"
            self.node.get_logger().error(self._last_error, throttle_duration_sec=1.0)
        if not cmd.commanding:
            self._safe_ticks.update(native.reason_category(r) for r in cmd.reasons)
        self._publish_action(cmd.action)
        if self._waiting:
            self._waiting = False
            self._send(event_header(Ev.COMMANDING))
        if cmd.commanding and self._last_error.startswith("control step failed"):
            self._last_error = ""  # the loop recovered
        self._safe_reasons = cmd.reasons
        if self._safe_now != (not cmd.commanding):
            self._publish_is_safe(not cmd.commanding)
        if self._settings["debug"]:
            self._publish_debug(raw, cmd.action, cmd.dt_s, cmd.steps_since_reset)

    def log_estop_released(self, why: int) -> None:
        """The first release of a run, and what released it: 0 an estop message, 1 the state the
        node heard, 2 no latched estop publisher within the discovery window."""
        text = (
            "an estop message",
            "the state the node heard",
            f"no latched estop publisher found in {self.inputs.gate.discovery_s:g} s",
        )[why]
        self.node.get_logger().info(f"estop released ({text})")

    def _latched_estop_publishers(self) -> int:
        gate = self.inputs.gate
        if gate.heard or gate.remembered is not None or gate.required:
            return 0  # not needed (and a graph query costs a little)
        return self.inputs.latched_estop_publishers()

    def _log_inputs(self, estop_changes: list[bool]) -> None:
        log = self.node.get_logger()
        for engaged in estop_changes:
            self._send(event_header(Ev.ESTOP, engaged=engaged))
            if engaged:
                log.warning("estop engaged: holding the safe action")
            else:
                log.info("estop released")
        while self.inputs.rejections:
            topic, exc = self.inputs.rejections.popleft()
            log.warning(f"rejected a message on {topic}: {exc}", throttle_duration_sec=1.0)
        timeout_s = self.core.config.sensor_timeout_s
        for e in self.inputs.subs:
            interval = e.figures.interval_s
            slow = interval is not None and interval > timeout_s and e.figures.valid >= 3
            if slow and e.topic not in self._slow_warned:
                self._slow_warned.add(e.topic)
                log.warning(
                    f"input {e.sub.topic_name} arrives every {interval:.3f} s "
                    f"({1 / interval:.1f} Hz), slower than sensor_timeout_s {timeout_s:g} s: the "
                    "safe action holds between its samples; raise sensor_timeout_s or the "
                    "sensor's rate"
                )
            elif not slow:
                self._slow_warned.discard(e.topic)

    def _report_waiting(self) -> None:
        wait_s = float(self._settings["input_wait_timeout_s"])
        if time.monotonic() - self._waiting_since < wait_s:
            return
        self._waiting_since = time.monotonic()
        self.log_never_heard()

    def log_never_heard(self) -> None:
        """Warn which inputs were never heard, with their publisher counts."""
        wait_s = float(self._settings["input_wait_timeout_s"])
        with self.inputs.lock:
            missing = self.inputs.never_heard()
        self.node.get_logger().warning(
            f"no message yet after {wait_s:g} s on {', '.join(missing)}: not commanding "
            "(a topic with 0 publishers has nobody publishing it: check the robot's topics, "
            "remappings and the policy's robot)"
        )

    def _fill_output(self, topic: str, msg_type: str, msg: Any, action: np.ndarray) -> None:
        self._writer.fill(topic, msg, action, make_message)  # every field is rewritten
        if msg_type == "trajectory_msgs/JointTrajectory":
            # Stamp zero = start now; reach the point within one control period.
            msg.points[0].time_from_start = Duration(seconds=self._period_s).to_msg()

    def _publish_action(self, action: np.ndarray) -> None:
        for out in self._outputs:
            if out.template is not None:
                out.publisher.publish(out.template.serialize(action[out.slots]))
            else:
                self._fill_output(out.topic, out.msg_type, out.msg, action)
                out.publisher.publish(out.msg)
        if self._last_command.size == action.size:
            self._last_command[:] = action

    def _publish_debug(
        self, raw: np.ndarray, action: np.ndarray, dt: float | None, steps: int
    ) -> None:
        values = self._debug_values
        values[0] = self._stats.ticks
        values[1] = dt if dt is not None else self._period_s
        values[2] = steps
        values[3 : 3 + raw.size] = raw
        values[3 + raw.size :] = action
        if self._debug_template is not None:
            self._pub_debug.publish(self._debug_template.serialize(values))
        else:
            self._debug_msg.data = values.tolist()
            self._pub_debug.publish(self._debug_msg)

    def _publish_is_safe(self, safe: bool) -> None:
        self._safe_now = safe
        self._send(event_header(Ev.IS_SAFE, safe=safe))

    # -- figures for diagnostics -----------------------------------------------------------
    def _sync_compiled(self, figures: dict[str, Any]) -> dict[str, Any]:
        """The compiled tick's state into this loop's Python view of it (for diagnostics)."""
        native_tick.sync_inputs(self.inputs, figures)
        self._enabled = figures["enabled"]
        self._non_finite_outputs = figures["non_finite"]
        if figures["last_error"]:
            self._last_error = figures["last_error"]
        return figures

    def _figures(self, now_ns: int | None) -> dict[str, Any]:
        """The loop's state for diagnostics (its timing figures are in the shared LoopStats):
        the inputs from this loop's `InputPath` (which the compiled tick's figures refresh),
        the safety state from whichever tick runs."""
        compiled = self._sync_compiled(self._ctick.figures()) if self._ctick is not None else None
        if now_ns is None:
            now_ns = compiled["clock_ns"] if compiled is not None else self.clock.latest_ns()
        now_s = now_ns * 1e-9
        timeout_s = self.core.config.sensor_timeout_s
        with self.inputs.lock:
            asm = self.inputs.assembler
            stale = asm.stale(now_s, timeout_s)
            missing = asm.missing()
            rejected: Counter[str] = Counter()
            for e in self.inputs.subs:
                rejected.update(e.figures.rejected)
            last_rejection = dict(self.inputs.last_rejection)
            figures = self.inputs.figures(now_s, timeout_s)
            estop, detail = self.inputs.gate.state(time.monotonic(), 0)
        safe_ticks = self._safe_ticks
        state = {
            "control_thread": self._realtime_status,
            "waiting_for_inputs": self._waiting,
            "safe_action_active": bool(self._safe_now),
            "safe_action_reasons": "; ".join(self._safe_reasons),
            "estop": estop,
            "estop_detail": detail,
            "enabled": self._enabled,
            "latched": self.core.latched,
            "non_finite_outputs": self._non_finite_outputs,
            "swaps": self._swaps,
            "loop_error": self._last_error,
        }
        if compiled is not None:  # the compiled tick's own state
            f = compiled
            safe_ticks = Counter(
                {t: f["safe_ticks"][k] for k, (_, t) in enumerate(native.REASON_BITS)}
            )
            state.update(
                control_thread=f["control_thread"],
                waiting_for_inputs=f["waiting"],
                safe_action_active=bool(f["safe_now"]),
                safe_action_reasons="; ".join(native.reason_texts(f["reasons"], stale)),
                estop=f["estop"],
                estop_detail=ESTOP_DETAIL[f["estop_detail"]].format(topic=self.inputs.estop_topic),
                enabled=f["enabled"],
                latched=native.latch_text(self.core.space, *f["latch"]),
                non_finite_outputs=f["non_finite"],
                swaps=f["swaps"],
                loop_error=f["last_error"],
            )
        return {
            "control_thread": state["control_thread"],
            "control_tick": self.tick_kind,
            "stale_inputs": ", ".join(stale),
            "missing_inputs": missing,
            "waiting_for_inputs": state["waiting_for_inputs"],
            "safe_action_active": state["safe_action_active"],
            "safe_action_reasons": state["safe_action_reasons"],
            "estop": "unknown" if state["estop"] is None else state["estop"],
            "estop_detail": state["estop_detail"],
            "enabled": state["enabled"],
            "latched": state["latched"],
            "rejected_total": sum(rejected.values()),
            **{f"rejected_{r}": n for r, n in sorted(rejected.items())},
            **{f"last_rejection_{r}": d for r, d in sorted(last_rejection.items())},
            **figures,
            "non_finite_outputs": state["non_finite_outputs"],
            **_safe_tick_figures(safe_ticks),
            "swaps": state["swaps"],
            "loop_error": state["loop_error"],
        }


ESTOP_DETAIL = native_tick.ESTOP_DETAILS


def _safe_tick_figures(counts: Counter[str]) -> dict[str, int]:
    """safe_ticks_<cause>: how many published commands were the safe action, by cause (a tick
    with two causes counts for both)."""
    return {
        "safe_ticks_" + cause.replace(" ", "_").replace("-", "_"): int(n)
        for cause, n in sorted(counts.items())
        if n
    }


@dataclass(frozen=True)
class Output:
    """One command topic: its publisher, the message it fills and its pre-serialized template."""

    topic: str
    publisher: Any
    msg_type: str
    msg: Any
    slots: np.ndarray
    template: SerializedTemplate | None


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


def _taken_by_the_loop(*_: Any) -> None:
    """Callback placeholder: the io node is never spun (see `InputPath`)."""
