"""The message table: one entry per ROS message type, holding everything the project does with it.

Adding a message type is one entry here (no ROS import; the ROS layer only turns ``"pkg/Type"``
into an rclpy class). An entry says:

- whether the type can be an observation input and/or an action output;
- how a spec element of that type is validated (`check_observation`, `check_action`), beyond the
  generic checks of `liquid_control.core.spec`;
- which message fields the elements read or write (`field_paths`), so the policy node and the sim
  node check every path against the real message class at configure and at a swap (a spec naming
  ``angular_velocity.zz`` is refused there, instead of rejecting every message later);
- `reader(elements)`: a function message -> raw values (validated, `MessageRejected` otherwise);
- `writer(msg, elements, values, make)`: fills an output message from action values;
- `command_reader(elements)`: the inverse, message -> action values (the sim node applies the
  commands it receives with it, and tests read the node's commands with it);
- `interface(element)`: what an action element commands, in ros2_control's words (``position``,
  ``velocity``, ``effort``) or None when the spec does not say; the safety layer holds position
  targets on a ``hold`` safe action and zeroes everything else (a held velocity keeps a robot
  moving);
- `nested`: the fields that hold a whole nested message a transform may read (an Imu's
  ``orientation`` quaternion, read as projected gravity; an Odometry's ``pose.pose.orientation``
  and a PoseStamped's ``pose.orientation`` too).

The transform table (`TRANSFORMS`) says how an observation element's raw value is made from what
its field holds: ``identity``, ``sin`` or ``cos`` of a number, or ``gravity_x|y|z``, a component
of the unit gravity direction in the body frame from an orientation quaternion (`gravity_in_body`).

Readers validate what they read (a message that fails is rejected whole and never reaches the
policy):
- every value read must be finite (LaserScan: ``+inf`` is "no return" by REP 117 and reads as
  ``range_max``; NaN and ``-inf`` in ``ranges`` are rejected, a non-finite or non-positive
  ``range_max`` too). Only the fields the spec reads are checked: a NaN in a field the policy does
  not use (e.g. an Imu's covariance) does not reject the message;
- JointState: every joint the spec names must be present, names must be unique, and each of
  ``position``/``velocity``/``effort`` that the spec reads must have one value per name;
- Float64MultiArray: at least as many values as the highest index read;
- LaserScan: at least one beam;
- an orientation read as gravity: a unit quaternion (|q|^2 within `UNIT_TOLERANCE` of 1; an IMU
  without an orientation estimate publishes zeros, which must not read as "upright").
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

Element = Any  # ObservationElement or ActionElement (core.spec imports this module)
Make = Callable[[str], Any]

JOINT_FIELDS = ("position", "velocity", "effort")
TRAJECTORY_FIELDS = ("positions", "velocities", "accelerations", "effort")
TWIST_FIELDS = tuple(f"{a}.{c}" for a in ("linear", "angular") for c in "xyz")
INTERFACES = ("position", "velocity", "effort")
QUATERNION = "geometry_msgs/Quaternion"
QUATERNION_COMPONENTS = ("x", "y", "z", "w")  # ROS order (MuJoCo's is w, x, y, z)
UNIT_TOLERANCE = 0.1  # an orientation read as gravity: |q|^2 within this of 1


class MessageRejected(ValueError):
    """A message failed validation. `reason` is a short code for counters and diagnostics."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class ElementInvalid(ValueError):
    """A spec element does not fit its message type (core.spec turns it into a SpecError)."""


@dataclass(frozen=True)
class FieldPath:
    """A field the spec uses: `path` (dotted) on the message, holding a `kind` of value."""

    element: str
    path: str
    kind: str  # "number" | "numbers" (a sequence of numbers) | "strings"


@dataclass(frozen=True)
class MessageType:
    """Everything about one message type (see the module docstring)."""

    name: str
    field_paths: Callable[[Sequence[Element]], list[FieldPath]]
    check_observation: Callable[[Element], None] | None = None
    reader: Callable[[Sequence[Element]], Callable[[Any], np.ndarray]] | None = None
    check_action: Callable[[Element], None] | None = None
    writer: Callable[[Any, Sequence[Element], np.ndarray, Make], None] | None = None
    command_reader: Callable[[Sequence[Element]], Callable[[Any], np.ndarray]] | None = None
    interface: Callable[[Element], str | None] = lambda e: None
    nested: dict[str, str] = field(default_factory=dict)  # field path -> nested message type

    @property
    def is_observation(self) -> bool:
        """Whether the type can be an observation input."""
        return self.reader is not None

    @property
    def is_action(self) -> bool:
        """Whether the type can be an action output."""
        return self.writer is not None


def get_path(msg: Any, path: str) -> Any:
    """The value at a dotted attribute path of a message."""
    for part in path.split("."):
        msg = getattr(msg, part)
    return msg


def _set_path(msg: Any, path: str, value: float) -> None:
    *head, last = path.split(".")
    for part in head:
        msg = getattr(msg, part)
    setattr(msg, last, float(value))


def _finite_or_reject(values: np.ndarray, what: str) -> np.ndarray:
    if not np.isfinite(values).all():
        bad = np.flatnonzero(~np.isfinite(values)).tolist()
        raise MessageRejected("non_finite", f"{what}: NaN or Inf at {bad}")
    return values


# --------------------------------------------------------------------------------------------
# Transforms: how an observation element's raw value is made from what its field holds
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Transform:
    """One transform of the table.

    `reads`: None when the element's field is a number, or the type of the nested message the
    field holds, whose `components` are read (in that order). `fn` maps the values read, shape
    (n, len(components) or 1), to the elements' raw values, shape (n,); None is the identity.
    """

    name: str
    fn: Callable[[np.ndarray], np.ndarray] | None = None
    reads: str | None = None
    components: tuple[str, ...] = ()

    @property
    def width(self) -> int:
        """How many numbers an element with this transform reads."""
        return len(self.components) or 1


def gravity_in_body(q: np.ndarray) -> np.ndarray:
    """The unit gravity direction in the body frame, (n, 3), from orientations q, (n, 4).

    q = (x, y, z, w) (ROS order) rotates body into world (sensor_msgs/Imu.orientation, z up).
    g_b = R(q)^T (0, 0, -1) is minus the third row of R:
    g_x = 2(w y - x z), g_y = -2(y z + w x), g_z = 2(x^2 + y^2) - 1 (upright: (0, 0, -1); nose
    pitched down by a positive rotation about the body y axis: g_x = sin(pitch) > 0, gravity
    leans towards the nose; a positive roll about x, left side up: g_y = -sin(roll) < 0, gravity
    leans to the right, -y). Each term is divided by |q|^2, exact for any scaled unit
    quaternion. Raises MessageRejected unless |q|^2 is within `UNIT_TOLERANCE` of 1.
    """
    return np.stack([_gravity(axis)(q) for axis in range(3)], axis=1)


def _gravity(axis: int) -> Callable[[np.ndarray], np.ndarray]:
    """Component `axis` of `gravity_in_body` (a transform reads one component per element)."""

    def component(q: np.ndarray) -> np.ndarray:
        q = np.asarray(q, np.float64)
        x, y, z, w = q.T
        n = x * x + y * y + z * z + w * w
        bad = ~(np.abs(n - 1.0) <= UNIT_TOLERANCE)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise MessageRejected(
                "not_unit_quaternion",
                f"orientation (x, y, z, w) = {q[i].tolist()} "
                f"has |q|^2 = {float(n[i]):.3g}, expected a unit quaternion (an IMU without an "
                "orientation estimate publishes zeros)",
            )
        if axis == 0:
            return 2.0 * (w * y - x * z) / n
        if axis == 1:
            return -2.0 * (y * z + w * x) / n
        return 2.0 * (x * x + y * y) / n - 1.0

    return component


TRANSFORMS: dict[str, Transform] = {
    t.name: t
    for t in (
        Transform("identity"),
        Transform("sin", lambda v: np.sin(v[:, 0])),
        Transform("cos", lambda v: np.cos(v[:, 0])),
        *(
            Transform(f"gravity_{a}", _gravity(i), QUATERNION, QUATERNION_COMPONENTS)
            for i, a in enumerate("xyz")
        ),
    )
}


def input_paths(e: Element) -> list[str]:
    """The number fields an element reads: its field, or the components of the nested message
    its transform reads (``orientation.x`` ... ``orientation.w``). Action elements have no
    transform and read their field."""
    t = TRANSFORMS[getattr(e, "transform", "identity")]
    return [f"{e.field}.{c}" for c in t.components] if t.components else [e.field]


# --------------------------------------------------------------------------------------------
# JointState
# --------------------------------------------------------------------------------------------
def _check_joint_observation(e: Element) -> None:
    if e.field not in JOINT_FIELDS:
        raise ElementInvalid(
            f"field: JointState field must be one of {JOINT_FIELDS}, got {e.field!r}"
        )
    if not e.key:
        raise ElementInvalid("key: JointState elements need the joint name")


def _joint_paths(elements: Sequence[Element]) -> list[FieldPath]:
    out = [FieldPath(elements[0].name, "name", "strings")]
    return out + [FieldPath(e.name, e.field, "numbers") for e in elements]


def _read_joint_state(elements: Sequence[Element]) -> Callable[[Any], np.ndarray]:
    wanted = [(e.key, e.field) for e in elements]
    used_fields = sorted({f for _, f in wanted})
    # field -> positions in the output; the joint indices per field are cached per name order
    positions = {f: np.array([k for k, (_, g) in enumerate(wanted) if g == f]) for f in used_fields}
    cache: dict[tuple, list[tuple[str, np.ndarray, np.ndarray]]] = {}

    def read(msg: Any) -> np.ndarray:
        names = tuple(msg.name)
        plan = cache.get(names)
        if plan is None:
            lookup: dict[str, int] = {}
            for i, n in enumerate(names):
                if lookup.setdefault(n, i) != i:
                    raise MessageRejected(
                        "duplicate_joint", f"joint {n!r} appears twice in JointState.name"
                    )
            missing = [k for k, _ in wanted if k not in lookup]
            if missing:
                shown = list(names[:20]) + (["..."] if len(names) > 20 else [])
                raise MessageRejected(
                    "missing_joint", f"joints {sorted(set(missing))} not in {shown}"
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
        return _finite_or_reject(out, "JointState values read")

    return read


# --------------------------------------------------------------------------------------------
# LaserScan
# --------------------------------------------------------------------------------------------
def _check_laser_observation(e: Element) -> None:
    if e.field != "ranges":
        raise ElementInvalid(f"field: LaserScan elements read 'ranges', got {e.field!r}")
    if not e.sectors or e.index is None or not 0 <= e.index < e.sectors:
        raise ElementInvalid(
            "LaserScan elements need sectors >= 1 and 0 <= index < sectors, "
            f"got sectors={e.sectors!r} index={e.index!r}"
        )


def _laser_paths(elements: Sequence[Element]) -> list[FieldPath]:
    name = elements[0].name
    return [FieldPath(name, "ranges", "numbers"), FieldPath(name, "range_max", "number")]


def _read_laser_scan(elements: Sequence[Element]) -> Callable[[Any], np.ndarray]:
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


# --------------------------------------------------------------------------------------------
# Float64MultiArray
# --------------------------------------------------------------------------------------------
def _check_indexed(e: Element) -> None:
    if e.field != "data" or e.index is None or e.index < 0:
        raise ElementInvalid("Float64MultiArray elements read or write 'data' at an index >= 0")


def _data_paths(elements: Sequence[Element]) -> list[FieldPath]:
    return [FieldPath(elements[0].name, "data", "numbers")]


def _read_multi_array(elements: Sequence[Element]) -> Callable[[Any], np.ndarray]:
    index = np.array([e.index for e in elements])
    need = int(index.max()) + 1

    def read(msg: Any) -> np.ndarray:
        data = np.asarray(msg.data, np.float64)
        if data.size < need:
            raise MessageRejected(
                "wrong_length", f"Float64MultiArray.data has {data.size} values, need {need}"
            )
        return _finite_or_reject(data[index], "Float64MultiArray.data values read")

    return read


def _write_multi_array(
    msg: Any, elements: Sequence[Element], values: np.ndarray, make: Make
) -> None:
    data = [0.0] * (max(e.index for e in elements) + 1)
    for e, v in zip(elements, values, strict=True):
        data[e.index] = float(v)
    msg.data = data


def _read_multi_array_command(elements: Sequence[Element]) -> Callable[[Any], np.ndarray]:
    index = [e.index for e in elements]

    def read(msg: Any) -> np.ndarray:
        data = msg.data
        if len(data) <= max(index):
            raise MessageRejected(
                "wrong_length",
                f"Float64MultiArray.data has {len(data)} values, need {max(index) + 1}",
            )
        return _finite_or_reject(np.array([data[i] for i in index], np.float64), "command")

    return read


# --------------------------------------------------------------------------------------------
# Messages read field by field (Imu, Odometry, Twist, PoseStamped ...)
# --------------------------------------------------------------------------------------------
def _check_field_path(e: Element) -> None:
    if not e.field or any(not part.isidentifier() for part in e.field.split(".")):
        raise ElementInvalid(f"field: expected a dotted field path, got {e.field!r}")


def _number_paths(elements: Sequence[Element]) -> list[FieldPath]:
    return [FieldPath(e.name, p, "number") for e in elements for p in input_paths(e)]


def _read_fields(elements: Sequence[Element]) -> Callable[[Any], np.ndarray]:
    paths = [p for e in elements for p in input_paths(e)]

    def read(msg: Any) -> np.ndarray:
        return _finite_or_reject(
            np.array([float(get_path(msg, p)) for p in paths], np.float64), "values read"
        )

    return read


def _write_fields(msg: Any, elements: Sequence[Element], values: np.ndarray, make: Make) -> None:
    for e, v in zip(elements, values, strict=True):
        _set_path(msg, e.field, v)


def _check_twist_action(e: Element) -> None:
    if e.field not in TWIST_FIELDS:
        raise ElementInvalid(
            f"field: Twist actions write linear.x|y|z or angular.x|y|z, got {e.field!r}"
        )
    if e.interface not in (None, "velocity"):
        raise ElementInvalid(f"interface: a Twist commands a velocity, got {e.interface!r}")


# --------------------------------------------------------------------------------------------
# JointTrajectory
# --------------------------------------------------------------------------------------------
_TRAJECTORY_INTERFACE = {"positions": "position", "velocities": "velocity", "effort": "effort"}


def _check_trajectory_action(e: Element) -> None:
    if e.field not in TRAJECTORY_FIELDS or not e.key:
        raise ElementInvalid(
            f"JointTrajectory actions need field in {TRAJECTORY_FIELDS} and key = joint name, "
            f"got field={e.field!r} key={e.key!r}"
        )
    implied = _TRAJECTORY_INTERFACE.get(e.field)
    if e.interface not in (None, implied):
        raise ElementInvalid(
            f"interface: field {e.field!r} commands {implied}, got {e.interface!r}"
        )


def _trajectory_paths(elements: Sequence[Element]) -> list[FieldPath]:
    name = elements[0].name
    return [FieldPath(name, "joint_names", "strings"), FieldPath(name, "points", "any")]


def _write_trajectory(
    msg: Any, elements: Sequence[Element], values: np.ndarray, make: Make
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


def _read_trajectory_command(elements: Sequence[Element]) -> Callable[[Any], np.ndarray]:
    def read(msg: Any) -> np.ndarray:
        names = list(msg.joint_names)
        if not msg.points:
            raise MessageRejected("wrong_length", "JointTrajectory has no points")
        out = np.empty(len(elements))
        for j, e in enumerate(elements):
            if e.key not in names:
                raise MessageRejected("missing_joint", f"joint {e.key!r} not in {names}")
            column = getattr(msg.points[0], e.field)
            if len(column) != len(names):
                raise MessageRejected(
                    "wrong_length",
                    f"points[0].{e.field} has {len(column)} values for {len(names)} joints",
                )
            out[j] = column[names.index(e.key)]
        return _finite_or_reject(out, "command")

    return read


def _declared(e: Element) -> str | None:
    return e.interface


# --------------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------------
MESSAGE_TYPES: dict[str, MessageType] = {
    t.name: t
    for t in (
        MessageType(
            "sensor_msgs/JointState",
            _joint_paths,
            check_observation=_check_joint_observation,
            reader=_read_joint_state,
        ),
        MessageType(
            "sensor_msgs/Imu",
            _number_paths,
            check_observation=_check_field_path,
            reader=_read_fields,
            nested={"orientation": QUATERNION},
        ),
        MessageType(
            "sensor_msgs/LaserScan",
            _laser_paths,
            check_observation=_check_laser_observation,
            reader=_read_laser_scan,
        ),
        MessageType(
            "nav_msgs/Odometry",
            _number_paths,
            check_observation=_check_field_path,
            reader=_read_fields,
            nested={"pose.pose.orientation": QUATERNION},
        ),
        MessageType(
            "geometry_msgs/PoseStamped",
            _number_paths,
            check_observation=_check_field_path,
            reader=_read_fields,
            nested={"pose.orientation": QUATERNION},
        ),
        MessageType(
            "geometry_msgs/Twist",
            _number_paths,
            check_observation=_check_field_path,
            reader=_read_fields,
            check_action=_check_twist_action,
            writer=_write_fields,
            command_reader=_read_fields,
            interface=lambda e: "velocity",
        ),
        MessageType(
            "std_msgs/Float64MultiArray",
            _data_paths,
            check_observation=_check_indexed,
            reader=_read_multi_array,
            check_action=_check_indexed,
            writer=_write_multi_array,
            command_reader=_read_multi_array_command,
            interface=_declared,
        ),
        MessageType(
            "trajectory_msgs/JointTrajectory",
            _trajectory_paths,
            check_action=_check_trajectory_action,
            writer=_write_trajectory,
            command_reader=_read_trajectory_command,
            interface=lambda e: _TRAJECTORY_INTERFACE.get(e.field),
        ),
    )
}
OBSERVATION_TYPES = tuple(n for n, t in MESSAGE_TYPES.items() if t.is_observation)
ACTION_TYPES = tuple(n for n, t in MESSAGE_TYPES.items() if t.is_action)


def check_field_paths(elements: Sequence[Element], make: Make, where: str = "spec") -> None:
    """Check that every field the `elements` (one message type) use exists on a real message of
    that type, made by `make("pkg/Type")`, and holds the kind of value expected.

    Raises ElementInvalid naming the element, the path and what the message has instead."""
    msg_type = elements[0].msg_type
    msg = make(msg_type)
    for fp in MESSAGE_TYPES[msg_type].field_paths(elements):
        try:
            value = get_path(msg, fp.path)
        except AttributeError:
            parent, _, leaf = fp.path.rpartition(".")
            try:
                holder = get_path(msg, parent) if parent else msg
                have = sorted(getattr(type(holder), "get_fields_and_field_types", dict)())
            except AttributeError:
                have = []
            raise ElementInvalid(
                f"{where}: element {fp.element!r} reads {msg_type} field {fp.path!r}, which the "
                f"message does not have" + (f" ({parent or 'it'} has {have})" if have else "")
            ) from None
        if fp.kind == "number" and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ElementInvalid(
                f"{where}: element {fp.element!r}: {msg_type} field {fp.path!r} is a "
                f"{type(value).__name__}, expected a number"
            )
