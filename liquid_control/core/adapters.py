"""Message <-> vector adapters: one table for every message type (no ROS import).

Readers work on anything with the message's attribute layout: real rclpy messages on the robot, and
plain namespaces built by the simulator (`message_from_fields`), so the gym env, the sim node and the
policy node all turn messages into vectors with this same code.

Validation (a message that fails is rejected whole and never reaches the policy):
- any NaN or infinite value read (LaserScan: +inf is "no return" by REP 117 and reads as
  ``range_max``; NaN and -inf are rejected),
- JointState without a named joint, or with ``position``/``velocity``/``effort`` arrays whose length
  differs from ``name``,
- Float64MultiArray shorter than the highest index read,
- LaserScan with no beams or a non-positive ``range_max``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np

from .spec import ActionElement, InterfaceSpec, ObservationElement


class MessageRejected(ValueError):
    """A message failed validation. `reason` is a short code for counters and diagnostics."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def _path_getter(path: str) -> Callable[[Any], Any]:
    parts = path.split(".")

    def get(msg: Any) -> Any:
        for p in parts:
            msg = getattr(msg, p)
        return msg

    return get


# --------------------------------------------------------------------------------------------
# Readers: msg_type -> function(elements) -> function(msg) -> np.ndarray of raw values
# --------------------------------------------------------------------------------------------


def _read_joint_state(elements: list[ObservationElement]) -> Callable[[Any], np.ndarray]:
    wanted = [(e.key, e.field) for e in elements]
    used_fields = sorted({f for _, f in wanted})
    # field -> positions in the output; the joint indices per field are cached per name order
    positions = {f: np.array([k for k, (_, g) in enumerate(wanted) if g == f]) for f in used_fields}
    cache: dict[tuple, list[tuple[str, np.ndarray, np.ndarray]]] = {}

    def read(msg: Any) -> np.ndarray:
        names = tuple(msg.name)
        plan = cache.get(names)
        if plan is None:
            lookup = {n: i for i, n in enumerate(names)}
            missing = [k for k, _ in wanted if k not in lookup]
            if missing:
                raise MessageRejected(
                    "missing_joint", f"joints {sorted(set(missing))} not in {list(names)}"
                )
            plan = [
                (f, positions[f], np.array([lookup[k] for k, g in wanted if g == f]))
                for f in used_fields
            ]
            if len(cache) > 8:
                cache.clear()
            cache[names] = plan
        out = np.empty(len(wanted))
        for f, pos, idx in plan:
            arr = getattr(msg, f)
            if len(arr) != len(names):
                raise MessageRejected(
                    "wrong_length", f"JointState.{f} has {len(arr)} values for {len(names)} names"
                )
            out[pos] = np.asarray(arr, np.float64)[idx]
        return out

    return read


def _read_laser_scan(elements: list[ObservationElement]) -> Callable[[Any], np.ndarray]:
    picks = [(e.index, e.sectors) for e in elements]

    def read(msg: Any) -> np.ndarray:
        ranges = np.asarray(msg.ranges, np.float64)
        rmax = float(msg.range_max)
        if ranges.size == 0:
            raise MessageRejected("wrong_length", "LaserScan has no ranges")
        if not math.isfinite(rmax) or rmax <= 0:
            raise MessageRejected("non_finite", f"LaserScan.range_max is {rmax}")
        if np.isnan(ranges).any() or np.isneginf(ranges).any():
            raise MessageRejected("non_finite", "LaserScan.ranges has NaN or -inf")
        # REP 117: +inf = nothing within range. Sectors are equal slices of the scan, whatever
        # the beam count, so a real lidar with more beams than the simulated one maps the same.
        ranges = np.minimum(ranges, rmax)
        out = np.empty(len(picks))
        for j, (i, n) in enumerate(picks):
            lo = (i * ranges.size) // n
            hi = max(((i + 1) * ranges.size) // n, lo + 1)
            out[j] = ranges[lo:hi].min()
        return out

    return read


def _read_multi_array(elements: list[ObservationElement]) -> Callable[[Any], np.ndarray]:
    index = np.array([e.index for e in elements])
    need = int(index.max()) + 1

    def read(msg: Any) -> np.ndarray:
        data = np.asarray(msg.data, np.float64)
        if data.size < need:
            raise MessageRejected(
                "wrong_length", f"Float64MultiArray.data has {data.size} values, need {need}"
            )
        return data[index]

    return read


def _read_fields(elements: list[ObservationElement]) -> Callable[[Any], np.ndarray]:
    getters = [_path_getter(e.field) for e in elements]

    def read(msg: Any) -> np.ndarray:
        return np.array([float(g(msg)) for g in getters], np.float64)

    return read


READERS: dict[str, Callable[[list[ObservationElement]], Callable[[Any], np.ndarray]]] = {
    "sensor_msgs/JointState": _read_joint_state,
    "sensor_msgs/LaserScan": _read_laser_scan,
    "std_msgs/Float64MultiArray": _read_multi_array,
    "sensor_msgs/Imu": _read_fields,
    "nav_msgs/Odometry": _read_fields,
    "geometry_msgs/Twist": _read_fields,
}

_TRANSFORMS = {"identity": None, "sin": np.sin, "cos": np.cos}


@dataclass
class TopicReader:
    """Reads one input topic into its slots of the raw observation vector."""

    topic: str
    msg_type: str
    slots: np.ndarray
    read_raw: Callable[[Any], np.ndarray]
    transforms: list[tuple[np.ndarray, Callable]]

    def read(self, msg: Any) -> np.ndarray:
        try:
            values = self.read_raw(msg)
        except MessageRejected:
            raise
        except (AttributeError, TypeError, ValueError, IndexError) as exc:
            raise MessageRejected("malformed", f"{self.msg_type} on {self.topic}: {exc}") from exc
        if not np.isfinite(values).all():
            raise MessageRejected("non_finite", f"{self.topic}: NaN or Inf in the values read")
        for positions, fn in self.transforms:
            values[positions] = fn(values[positions])
        return values


class ObservationAssembler:
    """Keeps the latest value of every observation element, updated topic by topic.

    `update(topic, msg, stamp_s)` validates and stores a message (raises `MessageRejected`);
    `raw()` gives the raw observation vector once every topic has arrived (`ready`).
    """

    def __init__(self, spec: InterfaceSpec) -> None:
        self.spec = spec
        self.readers: dict[str, TopicReader] = {}
        by_topic: dict[str, list[tuple[int, ObservationElement]]] = {}
        for i, e in enumerate(spec.observations):
            by_topic.setdefault(e.topic, []).append((i, e))
        for topic, items in by_topic.items():
            elements = [e for _, e in items]
            transforms = []
            for name, fn in _TRANSFORMS.items():
                pos = np.array([k for k, e in enumerate(elements) if e.transform == name], np.int64)
                if fn is not None and pos.size:
                    transforms.append((pos, fn))
            self.readers[topic] = TopicReader(
                topic,
                elements[0].msg_type,
                np.array([i for i, _ in items]),
                READERS[elements[0].msg_type](elements),
                transforms,
            )
        self._raw = np.zeros(spec.obs_dim)
        self.last_update_s: dict[str, float | None] = {t: None for t in self.readers}

    @property
    def topics(self) -> dict[str, str]:
        return {t: r.msg_type for t, r in self.readers.items()}

    def update(self, topic: str, msg: Any, stamp_s: float = 0.0) -> None:
        reader = self.readers.get(topic)
        if reader is None:
            raise MessageRejected("unknown_topic", f"{topic!r} is not an input of this spec")
        self._raw[reader.slots] = reader.read(msg)
        self.last_update_s[topic] = stamp_s

    @property
    def ready(self) -> bool:
        return all(t is not None for t in self.last_update_s.values())

    def missing(self) -> list[str]:
        return [t for t, s in self.last_update_s.items() if s is None]

    def stale(self, now_s: float, timeout_s: float) -> list[str]:
        """Topics never received or older than `timeout_s` at `now_s`."""
        return [t for t, s in self.last_update_s.items() if s is None or now_s - s > timeout_s]

    def raw(self) -> np.ndarray:
        return self._raw.copy()

    def reset(self) -> None:
        self._raw[:] = 0.0
        for t in self.last_update_s:
            self.last_update_s[t] = None


def observe(spec: InterfaceSpec, messages: dict[str, Any]) -> np.ndarray:
    """Raw observation vector from one message per input topic (the env's path)."""
    asm = ObservationAssembler(spec)
    for topic, msg in messages.items():
        asm.update(topic, msg)
    if not asm.ready:
        raise MessageRejected("missing_topic", f"no message for {asm.missing()}")
    return asm.raw()


# --------------------------------------------------------------------------------------------
# Writers: msg_type -> function(msg, elements, values, make) filling an output message
# --------------------------------------------------------------------------------------------


def _set_path(msg: Any, path: str, value: float) -> None:
    *head, last = path.split(".")
    for p in head:
        msg = getattr(msg, p)
    setattr(msg, last, float(value))


def _write_multi_array(
    msg: Any, elements: list[ActionElement], values: np.ndarray, make: Callable
) -> None:
    data = [0.0] * (max(e.index for e in elements) + 1)
    for e, v in zip(elements, values, strict=True):
        data[e.index] = float(v)
    msg.data = data


def _write_fields(
    msg: Any, elements: list[ActionElement], values: np.ndarray, make: Callable
) -> None:
    for e, v in zip(elements, values, strict=True):
        _set_path(msg, e.field, v)


def _write_trajectory(
    msg: Any, elements: list[ActionElement], values: np.ndarray, make: Callable
) -> None:
    joints = list(dict.fromkeys(e.key for e in elements))
    point = make("trajectory_msgs/JointTrajectoryPoint")
    columns: dict[str, list[float]] = {}
    for e, v in zip(elements, values, strict=True):
        columns.setdefault(e.field, [0.0] * len(joints))[joints.index(e.key)] = float(v)
    for f, col in columns.items():
        setattr(point, f, col)
    msg.joint_names = joints
    msg.points = [point]


WRITERS: dict[str, Callable[[Any, list[ActionElement], np.ndarray, Callable], None]] = {
    "std_msgs/Float64MultiArray": _write_multi_array,
    "geometry_msgs/Twist": _write_fields,
    "trajectory_msgs/JointTrajectory": _write_trajectory,
}


class ActionWriter:
    """Fills output messages from an action vector (robot units), topic by topic."""

    def __init__(self, spec: InterfaceSpec) -> None:
        self.topics: dict[str, tuple[str, np.ndarray, list[ActionElement]]] = {}
        by_topic: dict[str, list[tuple[int, ActionElement]]] = {}
        for i, e in enumerate(spec.actions):
            by_topic.setdefault(e.topic, []).append((i, e))
        for topic, items in by_topic.items():
            self.topics[topic] = (
                items[0][1].msg_type,
                np.array([i for i, _ in items]),
                [e for _, e in items],
            )

    def fill(self, topic: str, msg: Any, action: np.ndarray, make: Callable[[str], Any]) -> Any:
        """Write the elements of `action` that belong to `topic` into `msg`; `make(type)` builds
        nested message objects (JointTrajectoryPoint)."""
        msg_type, slots, elements = self.topics[topic]
        WRITERS[msg_type](msg, elements, np.asarray(action)[slots], make)
        return msg


# --------------------------------------------------------------------------------------------
# Simulator side: readings -> message-shaped namespaces
# --------------------------------------------------------------------------------------------


def message_from_fields(fields: dict[str, Any]) -> SimpleNamespace:
    """A message-shaped namespace from nested dicts: {"twist": {"twist": {"linear": {"x": 1}}}}."""
    return SimpleNamespace(
        **{k: message_from_fields(v) if isinstance(v, dict) else v for k, v in fields.items()}
    )


def fields_to_message(msg: Any, fields: dict[str, Any]) -> Any:
    """Copy nested field dicts into a real message object (the sim node's path)."""
    for k, v in fields.items():
        if isinstance(v, dict):
            fields_to_message(getattr(msg, k), v)
        else:
            setattr(msg, k, v if not isinstance(v, np.ndarray) else v.tolist())
    return msg
