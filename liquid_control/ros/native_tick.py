"""The compiled control tick's preparation: what Python works out at configure so that C can run
the tick alone (see liquid_control/ros/_ctick.c).

- `reader_description(cls, elements, max_bytes)`: the decode program and reader of one input
  topic (csrc/cdr.h), from the message class's own type description (``SLOT_TYPES``, as
  `wire.decoder_for` walks it) and the spec's elements for the topic (as the message table's
  reader reads them). `Unsupported` where the compiled path does not cover the type (wide
  strings, chars, a reader kind it lacks, a transform it lacks such as ``gravity_z``): the loop
  then keeps the Python tick.
- `tick_module()`: the `_ctick_<hash>` build for the ROS install in use (the hash names the
  install's prefix; a build for another install is never imported).
- `build(loop)`: a started-ready `Tick` for a `ControlLoop` (its subscriptions, publishers,
  templates, policy, safety settings and shared memory), or (None, why not).
- `EventPump`: the thread that forwards the tick's events (is_safe, commanding, estop, swaps,
  rejections, safety events) to the node and the log, outside the tick.

What the compiled tick does not cover keeps the Python tick (the reference; both are tested on
the same input streams): a message type outside the compiled readers, an output whose values are
not plain float64 fields, the compiled LTC core missing, or ``compiled_tick: false``.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import threading
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
from rosidl_parser.definition import (
    AbstractNestedType,
    AbstractSequence,
    AbstractString,
    AbstractWString,
    Array,
    BasicType,
    BoundedSequence,
    BoundedString,
    NamespacedType,
)

from liquid_control.core import native

from .messages import message_class
from .stats import WINDOW, Heartbeat, LogHistogram, LoopStats
from .wire import _BASIC, Unsupported, _class_of

# The share of a control period a tick may spend taking input messages (both ticks).
TAKE_BUDGET = 0.25

# csrc/cdr.h
OP_SCALAR, OP_STRING, OP_NUMSEQ, OP_STRSEQ, OP_REPEAT = 1, 2, 3, 4, 5
_DTYPES = {
    "boolean": 0, "octet": 1, "uint8": 1, "int8": 2, "uint16": 3, "int16": 4, "uint32": 5,
    "int32": 6, "uint64": 7, "int64": 8, "float": 9, "double": 10,
}  # fmt: skip
RD_FIELDS, RD_MULTIARRAY, RD_JOINTS, RD_LASER = 1, 2, 3, 4
_KINDS = {
    "sensor_msgs/JointState": RD_JOINTS,
    "sensor_msgs/Imu": RD_FIELDS,
    "nav_msgs/Odometry": RD_FIELDS,
    "geometry_msgs/Twist": RD_FIELDS,
    "geometry_msgs/PoseStamped": RD_FIELDS,
    "std_msgs/Float64MultiArray": RD_MULTIARRAY,
    "sensor_msgs/LaserScan": RD_LASER,
}
_TRANSFORMS = {"identity": 0, "sin": 1, "cos": 2}
REASONS = (
    "ok", "malformed", "non_finite", "wrong_length", "missing_joint", "duplicate_joint",
    "too_large", "quarantined",
)  # fmt: skip
MAX_REGISTERS = 64


class _Program:
    def __init__(self, scalars: dict[str, int], sequences: dict[str, int], strings: str | None):
        self.ops: list[tuple[int, ...]] = []
        self.scalars, self.sequences, self.strings = scalars, sequences, strings
        self.found: set[str] = set()

    def emit(self, *op: int) -> int:
        self.ops.append(tuple(op) + (0,) * (6 - len(op)))
        return len(self.ops) - 1

    def struct(self, cls: type, prefix: str, repeated: bool) -> None:
        names = list(cls.get_fields_and_field_types())
        if len(names) != len(cls.SLOT_TYPES):
            raise Unsupported(f"{cls.__name__}: fields and slot types differ")
        for name, t in zip(names, cls.SLOT_TYPES, strict=True):
            self.field(t, prefix + name, repeated)

    def field(self, t: Any, path: str, repeated: bool) -> None:
        if isinstance(t, AbstractNestedType):
            self.nested(t, path, repeated)
        elif isinstance(t, BasicType):
            if t.typename not in _BASIC:
                raise Unsupported(f"field type {t.typename!r}")
            reg = -1 if repeated else self.scalars.get(path, -1)
            if reg >= 0:
                self.found.add(path)
            self.emit(OP_SCALAR, _BASIC[t.typename][1], _DTYPES[t.typename], reg)
        elif isinstance(t, AbstractWString):
            raise Unsupported("wide strings")
        elif isinstance(t, AbstractString):
            self.emit(OP_STRING, t.maximum_size if isinstance(t, BoundedString) else -1)
        elif isinstance(t, NamespacedType):
            self.struct(_class_of(t), path + ".", repeated)
        else:
            raise Unsupported(f"field type {type(t).__name__}")

    def nested(self, t: Any, path: str, repeated: bool) -> None:
        if not isinstance(t, (Array, AbstractSequence)):
            raise Unsupported(f"field type {type(t).__name__}")
        fixed = t.size if isinstance(t, Array) else -1
        bound = t.maximum_size if isinstance(t, BoundedSequence) else -1
        v = t.value_type
        if isinstance(v, BasicType):
            if v.typename not in _BASIC:
                raise Unsupported(f"field type {v.typename!r}")
            seq = -1 if repeated else self.sequences.get(path, -1)
            if seq >= 0:
                self.found.add(path)
            size = _BASIC[v.typename][1]
            self.emit(OP_NUMSEQ, size, _DTYPES[v.typename], fixed, bound, seq)
        elif isinstance(v, AbstractWString):
            raise Unsupported("wide strings")
        elif isinstance(v, AbstractString):
            keep = int(not repeated and path == self.strings)
            if keep:
                self.found.add(path)
            sbound = v.maximum_size if isinstance(v, BoundedString) else -1
            self.emit(OP_STRSEQ, fixed, bound, sbound, keep)
        elif isinstance(v, NamespacedType):
            at = self.emit(OP_REPEAT, fixed, bound, 0, 1)
            self.struct(_class_of(v), path + ".", True)
            self.ops[at] = (OP_REPEAT, fixed, bound, len(self.ops) - at - 1, 1, 0)
        else:
            raise Unsupported(f"field type {type(v).__name__}")


def reader_description(cls: type, elements: Sequence[Any], max_bytes: int) -> tuple:
    """The tuple `_cltc.InputReader` (and the compiled tick) builds a reader from, for the
    input topic whose spec elements are `elements` (in the assembler's order) and whose
    messages are of class `cls`. Raises `Unsupported`."""
    msg_type = elements[0].msg_type
    kind = _KINDS.get(msg_type)
    if kind is None:
        raise Unsupported(f"{msg_type}: no compiled reader")
    for e in elements:
        if e.transform not in _TRANSFORMS:
            raise Unsupported(
                f"element {e.name!r}: transform {e.transform!r} is not compiled "
                f"(only {list(_TRANSFORMS)})"
            )
    k = len(elements)
    if k > MAX_REGISTERS:
        raise Unsupported(f"{k} values from one topic (at most {MAX_REGISTERS})")
    index = np.zeros(k, np.int64)
    sectors = np.ones(k, np.int64)
    field = np.zeros(k, np.int64)
    keys: list[bytes] = []
    need = 0
    scalars: dict[str, int] = {}
    sequences: dict[str, int] = {}
    strings = None
    if kind == RD_FIELDS:
        for q, e in enumerate(elements):
            index[q] = scalars.setdefault(e.field, len(scalars))
    elif kind == RD_MULTIARRAY:
        sequences["data"] = 0
        index[:] = [e.index for e in elements]
        need = int(index.max()) + 1
    elif kind == RD_JOINTS:
        sequences.update(position=0, velocity=1, effort=2)
        strings = "name"
        field[:] = [("position", "velocity", "effort").index(e.field) for e in elements]
        keys = [str(e.key).encode("utf-8") for e in elements]
    else:  # RD_LASER
        sequences["ranges"] = 0
        scalars["range_max"] = 0
        index[:] = [e.index for e in elements]
        sectors[:] = [e.sectors for e in elements]
    program = _Program(scalars, sequences, strings)
    program.struct(cls, "", False)
    wanted = set(scalars) | ({"data", "ranges"} & set(sequences))
    if kind == RD_JOINTS:
        wanted = {"name"}
    missing = wanted - program.found
    if missing:
        raise Unsupported(f"{msg_type}: fields {sorted(missing)} are not plain numbers here")
    if kind == RD_LASER:
        ranges = cls.SLOT_TYPES[list(cls.get_fields_and_field_types()).index("ranges")]
        if getattr(ranges.value_type, "typename", None) != "float":
            raise Unsupported("LaserScan.ranges is not float32")
    transform = np.array([_TRANSFORMS[e.transform] for e in elements], np.int64)
    ops = np.array(program.ops, np.int32).reshape(-1)
    return (ops, kind, k, index, sectors, need, field, keys, transform, int(max_bytes))


# --------------------------------------------------------------------------------------------
# The compiled tick of a control loop
# --------------------------------------------------------------------------------------------
EV_IS_SAFE, EV_COMMANDING, EV_ESTOP, EV_SWAPPED, EV_REJECTED, EV_SAFETY = 1, 2, 3, 4, 5, 6
EV_NON_FINITE, EV_ERROR, EV_SCHEDULING, EV_WAITING, EV_ESTOP_RELEASED, EV_STALE = (
    7,
    8,
    9,
    10,
    11,
    12,
)
ESTOP_DETAILS = (
    "",
    "waiting for an estop message on {topic} (estop_required_at_start)",
    "waiting for the latched sample of the estop publisher on {topic}",
    "looking for a latched estop publisher on {topic}",
)


def tick_module() -> tuple[Any, str]:
    """(the `_ctick_<hash>` module built for the ROS install whose rclpy runs here, '') or
    (None, why not)."""
    if native.load() is None:
        return None, f"the compiled LTC core is {native.why_not()}"
    import rclpy

    here = os.path.dirname(os.path.realpath(rclpy.__file__))
    package = os.path.dirname(os.path.abspath(__file__))
    built = {f.split(".")[0] for f in os.listdir(package) if f.startswith("_ctick_")}
    prefix = here
    while prefix != os.path.dirname(prefix):
        prefix = os.path.dirname(prefix)
        name = "_ctick_" + hashlib.sha1(prefix.encode()).hexdigest()[:10]
        if name in built:
            try:
                return importlib.import_module(f"liquid_control.ros.{name}"), ""
            except ImportError as exc:
                return None, f"its build for {prefix} does not load ({exc})"
    if not built:
        return None, "not built (no ROS 2 C headers where it was installed)"
    return None, f"not built for the ROS install of {here}"


def policy_tuple(policy: Any, space: Any) -> tuple:
    """A `Policy` with its compiled network, as `Tick` takes it (ValueError without one)."""
    net = getattr(policy, "_net", None)
    if net is None:
        raise ValueError("the policy has no compiled network")
    return (
        net,
        np.ascontiguousarray(policy.state_low, np.float64),
        np.ascontiguousarray(policy.state_high, np.float64),
        float(policy.time_unit_s),
        native.space_tuple(space),
    )


def build(loop: Any, shared: np.ndarray) -> tuple[Any, str]:
    """(a `Tick` for `loop`, '') or (None, why the Python tick runs instead)."""
    module, why = tick_module()
    if module is None:
        return None, f"the compiled tick is {why}"
    spec, settings = loop.spec, loop._settings
    max_bytes = int(settings["max_input_bytes"])
    inputs = []
    try:
        for entry in loop.inputs.subs:
            elements = [e for e in spec.observations if e.topic == entry.topic]
            cls = message_class(elements[0].msg_type)
            reader = reader_description(cls, elements, max_bytes)
            slots = np.ascontiguousarray(loop.inputs.assembler.readers[entry.topic].slots, np.int64)
            inputs.append((entry.sub.handle.pointer, reader, slots))
    except Unsupported as exc:
        return None, f"the compiled tick does not read this input ({exc})"
    outputs = []
    for out in loop._outputs:
        if out.template is None:
            return None, f"the compiled tick cannot write {out.msg_type} (not plain float64 values)"
        outputs.append(_template_tuple(out.publisher, out.template, out.slots))
    if loop._debug_template is None:
        return None, "the debug message has no serialized template"
    debug = _template_tuple(loop._pub_debug, loop._debug_template, None)
    try:
        policy = policy_tuple(loop.core.policy, loop.core.space)
    except ValueError as exc:
        return None, f"the compiled tick needs a compiled policy ({exc})"
    gate = loop.inputs.gate
    n_stats = LoopStats.size()
    clock_sub = loop.clock._sub
    period = loop._period_s
    config = {
        "inputs": inputs,
        "outputs": outputs,
        "debug": debug,
        "estop": (
            loop.inputs.estop_subs[0].handle.pointer,
            loop.inputs.estop_subs[1].handle.pointer,
            bool(gate.required),
            float(gate.discovery_s),
            -1 if gate.remembered is None else int(bool(gate.remembered)),
        ),
        "clock": None if clock_sub is None else clock_sub.handle.pointer,
        "safety": (native.config_tuple(loop.core.config), float(loop.core.period_s)),
        "policy": policy,
        "shared": (
            shared,
            0,
            n_stats,
            n_stats,
            n_stats + Heartbeat.SIZE,
            WINDOW,
            LogHistogram._bins(),
            LogHistogram.LO,
            LogHistogram.PER_DECADE,
        ),
        "timing": (
            period,
            min(period / 4, 5e-4),
            TAKE_BUDGET * period,
            int(settings["max_messages_per_tick"]),
            float(settings["input_wait_timeout_s"]),
            int(loop._realtime_priority),
            [int(c) for c in loop._cpu_affinity],
            spec.obs_dim,
            spec.action_dim,
            bool(settings["debug"]),
            bool(loop._enabled),
        ),
    }
    try:
        return module.Tick(config), ""
    except (ValueError, TypeError, KeyError, OSError) as exc:
        return None, f"the compiled tick could not be set up ({exc})"


def _template_tuple(publisher: Any, template: Any, slots: Any) -> tuple:
    offsets = np.ascontiguousarray(template._index[:, 0], np.int64)
    return (
        publisher.handle.pointer,
        bytes(template._buf),
        offsets,
        None if slots is None else np.ascontiguousarray(slots, np.int64),
    )


class EventPump:
    """Forwards the compiled tick's events to the node (pipe) and the log, and keeps the loop's
    Python view of the inputs (figures, receive times) in step for diagnostics."""

    def __init__(self, loop: Any) -> None:
        self.loop = loop
        self.swaps: list[dict[str, Any]] = []  # (hash, path) of swaps handed to the tick
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tick_events", daemon=True)
        self._last_sync = 0.0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)

    def _run(self) -> None:
        loop = self.loop
        while not self._stop.is_set():
            try:
                for event in loop._ctick.events(0.05):
                    self.handle(*event)
                if time.monotonic() - self._last_sync > 0.25:
                    self._last_sync = time.monotonic()
                    loop._sync_compiled(loop._ctick.figures())
                    loop._log_inputs([])
            except Exception as exc:  # noqa: BLE001 (the pump must outlive any bad event)
                loop.node.get_logger().error(
                    f"compiled tick events: {type(exc).__name__}: {exc}", throttle_duration_sec=1.0
                )

    def handle(self, kind: int, topic: int, a: float, tick: int, text: str) -> None:
        from .protocol import Ev, event_header

        loop = self.loop
        log = loop.node.get_logger()
        if kind == EV_IS_SAFE:
            loop._publish_is_safe(bool(a))
        elif kind == EV_COMMANDING:
            loop._waiting = False
            loop._send(event_header(Ev.COMMANDING))
        elif kind == EV_ESTOP:
            engaged = bool(a)
            loop._send(event_header(Ev.ESTOP, engaged=engaged))
            if engaged:
                log.warning("estop engaged: holding the safe action")
            else:
                log.info("estop released")
        elif kind == EV_SWAPPED:
            info = self.swaps.pop(0) if self.swaps else {}
            loop._swaps += 1
            loop._swapping = False
            loop._send(event_header(Ev.SWAPPED, hash=info.get("hash"), path=info.get("path")))
        elif kind == EV_REJECTED:
            name = loop.inputs.subs[topic].topic if 0 <= topic < len(loop.inputs.subs) else "?"
            log.warning(f"rejected a message on {name}: {text}", throttle_duration_sec=1.0)
        elif kind == EV_SAFETY:
            log.warning(text, throttle_duration_sec=1.0)
        elif kind == EV_STALE:
            name = loop.inputs.subs[topic].topic if 0 <= topic < len(loop.inputs.subs) else "?"
            log.warning(f"input {name} {text}", throttle_duration_sec=1.0)
        elif kind == EV_NON_FINITE:
            loop._last_error = text
            log.error(text, throttle_duration_sec=1.0)
        elif kind == EV_SCHEDULING:
            loop._realtime_status = text
            (log.warning if "refused" in text else log.info)(f"control thread: {text}")
        elif kind == EV_WAITING:
            loop._sync_compiled(loop._ctick.figures())
            loop.log_never_heard()
        elif kind == EV_ESTOP_RELEASED:
            loop.log_estop_released(int(a))
        elif kind == EV_ERROR:
            log.error(f"compiled tick: {int(a)} {text}", throttle_duration_sec=1.0)


def sync_inputs(inputs: Any, figures: dict[str, Any]) -> None:
    """Copy the compiled tick's input figures into the loop's `InputPath` (under its lock), so
    its diagnostics code reads them as it reads its own."""
    with inputs.lock:
        for entry, f in zip(inputs.subs, figures["inputs"], strict=True):
            fig = entry.figures
            fig.taken, fig.valid, fig.dropped = f["taken"], f["valid"], f["dropped"]
            fig.rejected = Counter(f["rejected"])
            fig.interval_s = f["interval_s"]
            fig.senders = {b"compiled": None} if f["senders"] else {}  # (drop counts reported)
            inputs.assembler.last_update_s[entry.topic] = f["received_s"]
            for reason, detail in f["details"].items():
                inputs.last_rejection[reason] = f"{entry.topic}: {detail}"
