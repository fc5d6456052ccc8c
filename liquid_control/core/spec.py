"""The interface spec: which topics, message fields, joints, scaling and limits make the vectors.

One `InterfaceSpec` is stored in every policy file and used by the gym envs, the sim node and the
policy node, so the observation vector a policy saw in training is, by construction, the vector it
sees on the robot. Reading messages into vectors (and vectors into messages) is done by
`liquid_control.core.adapters`, one table for every message type.

Observation element i of the raw vector is read from ``topic`` (a message of ``msg_type``) at
``field`` (a dotted attribute path); ``key`` picks a joint by name (JointState), ``index`` an array
element (Float64MultiArray) or an angular sector of a LaserScan (``sectors`` equal sectors, the
element is the nearest return in that sector). ``transform`` (sin/cos) applies afterwards; the
``gravity_x|y|z`` transforms read a whole orientation quaternion (an Imu's ``orientation``) as the
unit gravity direction in the body frame (`message_types.gravity_in_body`). The policy sees
``(raw - mean) / std``.

Action element j is ``clip(offset + scale * u_j, low, high)`` for the network output ``u_j`` and is
written to ``topic`` at ``field`` (``key`` = joint name for JointTrajectory, ``index`` = slot in a
Float64MultiArray).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

from .message_types import (
    ACTION_TYPES,
    INTERFACES,
    JOINT_FIELDS,
    MESSAGE_TYPES,
    OBSERVATION_TYPES,
    TRAJECTORY_FIELDS,
    ElementInvalid,
)
from .message_types import TRANSFORMS as TRANSFORM_TABLE  # name -> Transform; TRANSFORMS: names

__all__ = [
    "ACTION_TYPES",
    "JOINT_FIELDS",
    "OBSERVATION_TYPES",
    "TRAJECTORY_FIELDS",
    "ActionElement",
    "InterfaceSpec",
    "ObservationElement",
    "SpecError",
]

TRANSFORMS = tuple(TRANSFORM_TABLE)
# Bounds that keep every spec a robot could use, and refuse what only a crafted file would hold.
MAX_ELEMENTS = 4096
MAX_INDEX = 1_000_000
MAX_RATE_HZ = 10_000.0
MAX_TEXT = 256


class SpecError(ValueError):
    """An interface spec is invalid, or two specs do not fit together."""


def _finite(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise SpecError(f"{name}: expected a number, got {value!r}")
    try:
        v = float(value)
    except OverflowError:
        raise SpecError(f"{name}: expected a finite number, got {value!r}") from None
    if not math.isfinite(v):
        raise SpecError(f"{name}: expected a finite number, got {value!r}")
    return v


def _text(name: str, value: Any, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not isinstance(value, str):
        raise SpecError(f"{name}: expected a string, got {value!r}")
    if len(value) > MAX_TEXT:
        raise SpecError(f"{name}: expected at most {MAX_TEXT} characters, got {len(value)}")


def _count(name: str, value: Any, lo: int, hi: int) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise SpecError(f"{name}: expected an integer, got {value!r}")
    if not lo <= value <= hi:
        raise SpecError(f"{name}: expected {lo} to {hi}, got {value}")


def _bounds(where: str, lo: Any, hi: Any) -> None:
    """Optional out-of-domain bounds: each None (unbounded) or a finite number, lo <= hi."""
    for name, v in (("domain_low", lo), ("domain_high", hi)):
        if v is not None:
            _finite(f"{where}.{name}", v)
    if lo is not None and hi is not None and lo > hi:
        raise SpecError(f"{where}: domain_low ({lo}) must be <= domain_high ({hi})")


def _common(e: Any, where: str, kinds: tuple[str, ...]) -> Any:
    """Checks every element kind shares; returns the element's message table entry."""
    for f in ("name", "topic", "msg_type", "field", "unit"):
        _text(f"{where}.{f}", getattr(e, f))
    _text(f"{where}.key", e.key, optional=True)
    _count(f"{where}.index", e.index, 0, MAX_INDEX)
    if not e.name:
        raise SpecError(f"{where}.name: must not be empty")
    if not e.topic:
        raise SpecError(f"{where}.topic: must not be empty")
    if e.msg_type not in kinds:
        raise SpecError(f"{where}.msg_type: expected one of {kinds}, got {e.msg_type!r}")
    return MESSAGE_TYPES[e.msg_type]


def _table_check(check: Any, e: Any, where: str) -> None:
    try:
        check(e)
    except ElementInvalid as exc:
        raise SpecError(f"{where}: {exc}") from None


@dataclass(frozen=True)
class ObservationElement:
    """One element of the observation vector.

    ``domain_low``/``domain_high`` (optional, robot units, of the raw value after `transform`): the
    region the policy was trained for. On the robot a value outside it latches the safe action
    until ``~/reset`` (e.g. base roll within +-0.8 rad: a fallen robot is out of domain).
    """

    name: str
    topic: str
    msg_type: str
    field: str
    key: str | None = None
    index: int | None = None
    sectors: int | None = None
    transform: str = "identity"
    unit: str = ""
    mean: float = 0.0
    std: float = 1.0
    noise_std: float = 0.0  # sensor noise level of the robot (sim and sim-to-real wrappers use it)
    domain_low: float | None = None
    domain_high: float | None = None

    def validate(self, where: str) -> None:
        """Check every field (SpecError naming `where` and the field)."""
        entry = _common(self, where, OBSERVATION_TYPES)
        _count(f"{where}.sectors", self.sectors, 1, MAX_INDEX)
        _text(f"{where}.transform", self.transform)
        if self.transform not in TRANSFORMS:
            raise SpecError(
                f"{where}.transform: expected one of {TRANSFORMS}, got {self.transform!r}"
            )
        reads = TRANSFORM_TABLE[self.transform].reads
        if reads is not None and entry.nested.get(self.field) != reads:
            holds = [f for f, t in entry.nested.items() if t == reads]
            raise SpecError(
                f"{where}.transform: {self.transform!r} reads a {reads} field; {self.msg_type} "
                f"field {self.field!r} is not one (its {reads} fields: {holds or 'none'})"
            )
        _table_check(entry.check_observation, self, where)
        _finite(f"{where}.mean", self.mean)
        if _finite(f"{where}.std", self.std) <= 0:
            raise SpecError(f"{where}.std: expected > 0, got {self.std}")
        if _finite(f"{where}.noise_std", self.noise_std) < 0:
            raise SpecError(f"{where}.noise_std: expected >= 0, got {self.noise_std}")
        _bounds(where, self.domain_low, self.domain_high)


@dataclass(frozen=True)
class ActionElement:
    """One element of the action vector.

    ``interface`` (optional): what the element commands, in ros2_control's words (``position``,
    ``velocity``, ``effort``); implied by Twist (velocity) and by a JointTrajectory field. The safety
    layer holds a position target on the ``hold`` safe action and zeroes everything else.
    ``feedback`` (optional): the name of the observation element that measures this element (a
    joint position for a position target): the fade-in after activation or a resume starts from it.
    ``domain_low``/``domain_high`` (optional): the policy's own output (before clipping to
    ``low``/``high``) leaving them latches the safe action until ``~/reset``.
    """

    name: str
    topic: str
    msg_type: str
    field: str
    key: str | None = None
    index: int | None = None
    unit: str = ""
    scale: float = 1.0
    offset: float = 0.0
    low: float = -1.0
    high: float = 1.0
    interface: str | None = None
    feedback: str | None = None
    domain_low: float | None = None
    domain_high: float | None = None

    def validate(self, where: str) -> None:
        """Check every field (SpecError naming `where` and the field)."""
        entry = _common(self, where, ACTION_TYPES)
        _text(f"{where}.interface", self.interface, optional=True)
        _text(f"{where}.feedback", self.feedback, optional=True)
        if self.interface is not None and self.interface not in INTERFACES:
            raise SpecError(
                f"{where}.interface: expected one of {INTERFACES}, got {self.interface!r}"
            )
        _table_check(entry.check_action, self, where)
        _finite(f"{where}.scale", self.scale)
        _finite(f"{where}.offset", self.offset)
        lo, hi = _finite(f"{where}.low", self.low), _finite(f"{where}.high", self.high)
        if lo > hi:
            raise SpecError(f"{where}: low ({lo}) must be <= high ({hi})")
        _bounds(where, self.domain_low, self.domain_high)

    @property
    def commands(self) -> str | None:
        """What this element commands: ``position``, ``velocity``, ``effort`` or None (unknown)."""
        return MESSAGE_TYPES[self.msg_type].interface(self)


@dataclass(frozen=True)
class InterfaceSpec:
    """Observation and action vectors of a robot, and its control rate."""

    robot: str
    observations: tuple[ObservationElement, ...]
    actions: tuple[ActionElement, ...]
    control_rate_hz: float
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "observations", tuple(self.observations))
        object.__setattr__(self, "actions", tuple(self.actions))
        self.validate()

    # -- validation ------------------------------------------------------------------------
    def validate(self) -> None:
        """Check the whole spec (SpecError naming the field)."""
        _text("spec.robot", self.robot)
        if not isinstance(self.description, str):
            raise SpecError(f"spec.description: expected a string, got {self.description!r}")
        if not isinstance(self.extra, dict):
            raise SpecError(f"spec.extra: expected a mapping, got {self.extra!r}")
        rate = _finite("spec.control_rate_hz", self.control_rate_hz)
        if not 0 < rate <= MAX_RATE_HZ:
            raise SpecError(
                f"spec.control_rate_hz: expected > 0 and <= {MAX_RATE_HZ:g}, got {rate}"
            )
        self._validate_group("observations", self.observations, ObservationElement)
        self._validate_group("actions", self.actions, ActionElement)
        self._validate_topics()

    @staticmethod
    def _validate_group(group: str, elements: tuple, kind: type) -> None:
        if not elements:
            raise SpecError(f"spec.{group}: at least one element is needed")
        if len(elements) > MAX_ELEMENTS:
            raise SpecError(
                f"spec.{group}: expected at most {MAX_ELEMENTS} elements, got {len(elements)}"
            )
        for i, e in enumerate(elements):
            if not isinstance(e, kind):
                raise SpecError(f"spec.{group}[{i}]: expected a {kind.__name__}, got {e!r}")
        names = [e.name for e in elements]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise SpecError(f"spec.{group}: duplicate names {dup}")
        for i, e in enumerate(elements):
            e.validate(f"spec.{group}[{i}] ({e.name})")

    def _validate_topics(self) -> None:
        types: dict[str, str] = {}
        for e in (*self.observations, *self.actions):
            if types.setdefault(e.topic, e.msg_type) != e.msg_type:
                raise SpecError(
                    f"spec: topic {e.topic!r} is used with two message types, {types[e.topic]} and {e.msg_type}"
                )
        for topic in self.action_topics():
            if topic in self.observation_topics():
                raise SpecError(f"spec: topic {topic!r} is both an input and an output")
        names = {e.name for e in self.observations}
        for i, a in enumerate(self.actions):
            if a.feedback is not None and a.feedback not in names:
                raise SpecError(
                    f"spec.actions[{i}] ({a.name}).feedback: {a.feedback!r} is not an observation "
                    f"element; expected one of {sorted(names)}"
                )

    # -- sizes and topics ------------------------------------------------------------------
    @property
    def obs_dim(self) -> int:
        """Length of the observation vector."""
        return len(self.observations)

    @property
    def action_dim(self) -> int:
        """Length of the action vector."""
        return len(self.actions)

    @property
    def control_period_s(self) -> float:
        """Nominal control period in seconds."""
        return 1.0 / float(self.control_rate_hz)

    def observation_topics(self) -> dict[str, str]:
        """Input topic -> message type, in first-use order."""
        return {e.topic: e.msg_type for e in self.observations}

    def action_topics(self) -> dict[str, str]:
        """Output topic -> message type, in first-use order."""
        return {e.topic: e.msg_type for e in self.actions}

    # -- vectors ---------------------------------------------------------------------------
    @property
    def obs_mean(self) -> np.ndarray:
        """Normaliser means, (obs_dim,)."""
        return np.array([e.mean for e in self.observations], np.float64)

    @property
    def obs_std(self) -> np.ndarray:
        """Normaliser standard deviations, (obs_dim,)."""
        return np.array([e.std for e in self.observations], np.float64)

    @property
    def obs_noise_std(self) -> np.ndarray:
        """The robot's sensor noise levels, (obs_dim,)."""
        return np.array([e.noise_std for e in self.observations], np.float64)

    @property
    def action_scale(self) -> np.ndarray:
        """Network output -> action scale, (action_dim,)."""
        return np.array([e.scale for e in self.actions], np.float64)

    @property
    def action_offset(self) -> np.ndarray:
        """Network output -> action offset, (action_dim,)."""
        return np.array([e.offset for e in self.actions], np.float64)

    @property
    def action_low(self) -> np.ndarray:
        """Lower action limits, (action_dim,)."""
        return np.array([e.low for e in self.actions], np.float64)

    @property
    def action_high(self) -> np.ndarray:
        """Upper action limits, (action_dim,)."""
        return np.array([e.high for e in self.actions], np.float64)

    def normalize(self, raw: np.ndarray) -> np.ndarray:
        """Raw observation (robot units) -> what the network sees."""
        return (np.asarray(raw, np.float64) - self.obs_mean) / self.obs_std

    def to_physical(self, u: np.ndarray) -> np.ndarray:
        """Network output -> action in robot units, clipped to the limits."""
        a = self.action_offset + self.action_scale * np.asarray(u, np.float64)
        return np.clip(a, self.action_low, self.action_high)

    def to_network(self, action: np.ndarray) -> np.ndarray:
        """Action in robot units -> network output units (inverse of `to_physical` inside limits)."""
        return (np.asarray(action, np.float64) - self.action_offset) / self.action_scale

    def with_normalization(self, mean: np.ndarray, std: np.ndarray) -> InterfaceSpec:
        """A copy with new observation normalisation (e.g. fitted on training data)."""
        mean = np.asarray(mean, np.float64).reshape(-1)
        std = np.asarray(std, np.float64).reshape(-1)
        if mean.shape != (self.obs_dim,) or std.shape != (self.obs_dim,):
            raise SpecError(
                f"normalisation: expected {self.obs_dim} means and stds, got {mean.shape}, {std.shape}"
            )
        obs = tuple(
            ObservationElement(**{**asdict(e), "mean": float(m), "std": float(s)})
            for e, m, s in zip(self.observations, mean, std, strict=True)
        )
        return InterfaceSpec(
            self.robot, obs, self.actions, self.control_rate_hz, self.description, dict(self.extra)
        )

    # -- compatibility ---------------------------------------------------------------------
    def check_compatible(self, other: InterfaceSpec) -> None:
        """Raise SpecError unless `other` reads and writes the same channels as this spec.

        Normalisation, scaling and limits may differ (they belong to the policy); names, topics,
        message types, fields, joints and order may not.
        """

        def layout(spec: InterfaceSpec, group: str) -> list[tuple]:
            keys = (
                "name",
                "topic",
                "msg_type",
                "field",
                "key",
                "index",
                "sectors",
                "transform",
                "interface",
            )
            return [tuple(getattr(e, k, None) for k in keys) for e in getattr(spec, group)]

        for group in ("observations", "actions"):
            mine, theirs = layout(self, group), layout(other, group)
            if len(mine) != len(theirs):
                raise SpecError(
                    f"{group}: expected {len(mine)} elements, the new spec has {len(theirs)}"
                )
            for i, (a, b) in enumerate(zip(mine, theirs, strict=True)):
                if a != b:
                    raise SpecError(
                        f"{group}[{i}]: expected {a[0]!r} from {a[1]} ({a[2]} {a[3]} key={a[4]} index={a[5]}), "
                        f"the new spec has {b[0]!r} from {b[1]} ({b[2]} {b[3]} key={b[4]} index={b[5]})"
                    )

    # -- serialisation ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict; `from_dict(spec.to_dict()) == spec`."""
        return {
            "robot": self.robot,
            "description": self.description,
            "control_rate_hz": float(self.control_rate_hz),
            "observations": [_drop_none(asdict(e)) for e in self.observations],
            "actions": [_drop_none(asdict(e)) for e in self.actions],
            "extra": dict(self.extra),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InterfaceSpec:
        """The spec of a dict (as stored in a policy file), every field checked (SpecError)."""
        if not isinstance(data, dict):
            raise SpecError(f"spec: expected a mapping, got {type(data).__name__}")
        for key in ("robot", "observations", "actions", "control_rate_hz"):
            if key not in data:
                raise SpecError(f"spec: missing field {key!r}")
        for key in ("observations", "actions"):
            if not isinstance(data[key], list):
                raise SpecError(f"spec.{key}: expected a list, got {data[key]!r:.80}")
        extra = data.get("extra", {})
        if extra is None:
            extra = {}
        if not isinstance(extra, dict):
            raise SpecError(f"spec.extra: expected a mapping, got {extra!r:.80}")
        obs = tuple(
            _element(ObservationElement, d, f"spec.observations[{i}]")
            for i, d in enumerate(data["observations"])
        )
        act = tuple(
            _element(ActionElement, d, f"spec.actions[{i}]") for i, d in enumerate(data["actions"])
        )
        return cls(
            data["robot"],
            obs,
            act,
            _finite("spec.control_rate_hz", data["control_rate_hz"]),
            data.get("description", ""),
            dict(extra),
        )


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


def _element(cls, data: Any, where: str):
    if not isinstance(data, dict):
        raise SpecError(f"{where}: expected a mapping, got {type(data).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise SpecError(f"{where}: unknown fields {unknown}; expected some of {sorted(known)}")
    try:
        return cls(**data)
    except TypeError as exc:
        raise SpecError(f"{where}: {exc}") from exc
