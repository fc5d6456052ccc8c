"""The interface spec: which topics, message fields, joints, scaling and limits make the vectors.

One `InterfaceSpec` is stored in every policy file and used by the gym envs, the sim node and the
policy node, so the observation vector a policy saw in training is, by construction, the vector it
sees on the robot. Reading messages into vectors (and vectors into messages) is done by
`liquid_control.core.adapters`, one table for every message type.

Observation element i of the raw vector is read from ``topic`` (a message of ``msg_type``) at
``field`` (a dotted attribute path); ``key`` picks a joint by name (JointState), ``index`` an array
element (Float64MultiArray) or an angular sector of a LaserScan (``sectors`` equal sectors, the
element is the nearest return in that sector). ``transform`` (sin/cos) applies afterwards. The policy
sees ``(raw - mean) / std``.

Action element j is ``clip(offset + scale * u_j, low, high)`` for the network output ``u_j`` and is
written to ``topic`` at ``field`` (``key`` = joint name for JointTrajectory, ``index`` = slot in a
Float64MultiArray).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

OBSERVATION_TYPES = (
    "sensor_msgs/JointState",
    "sensor_msgs/Imu",
    "sensor_msgs/LaserScan",
    "nav_msgs/Odometry",
    "geometry_msgs/Twist",
    "std_msgs/Float64MultiArray",
)
ACTION_TYPES = (
    "std_msgs/Float64MultiArray",
    "geometry_msgs/Twist",
    "trajectory_msgs/JointTrajectory",
)
TRANSFORMS = ("identity", "sin", "cos")
JOINT_FIELDS = ("position", "velocity", "effort")
TRAJECTORY_FIELDS = ("positions", "velocities", "accelerations", "effort")


class SpecError(ValueError):
    """An interface spec is invalid, or two specs do not fit together."""


def _finite(name: str, value: Any) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise SpecError(f"{name}: expected a number, got {value!r}") from None
    if not math.isfinite(v):
        raise SpecError(f"{name}: expected a finite number, got {value!r}")
    return v


@dataclass(frozen=True)
class ObservationElement:
    """One element of the observation vector."""

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

    def validate(self, where: str) -> None:
        if not self.name:
            raise SpecError(f"{where}.name: must not be empty")
        if not self.topic:
            raise SpecError(f"{where}.topic: must not be empty")
        if self.msg_type not in OBSERVATION_TYPES:
            raise SpecError(
                f"{where}.msg_type: expected one of {OBSERVATION_TYPES}, got {self.msg_type!r}"
            )
        if self.transform not in TRANSFORMS:
            raise SpecError(
                f"{where}.transform: expected one of {TRANSFORMS}, got {self.transform!r}"
            )
        if self.msg_type == "sensor_msgs/JointState":
            if self.field not in JOINT_FIELDS:
                raise SpecError(
                    f"{where}.field: JointState field must be one of {JOINT_FIELDS}, got {self.field!r}"
                )
            if not self.key:
                raise SpecError(f"{where}.key: JointState elements need the joint name")
        if self.msg_type == "sensor_msgs/LaserScan":
            if self.field != "ranges":
                raise SpecError(
                    f"{where}.field: LaserScan elements read 'ranges', got {self.field!r}"
                )
            if not self.sectors or self.index is None or not 0 <= self.index < self.sectors:
                raise SpecError(
                    f"{where}: LaserScan elements need sectors >= 1 and 0 <= index < sectors, "
                    f"got sectors={self.sectors!r} index={self.index!r}"
                )
        if self.msg_type == "std_msgs/Float64MultiArray":
            if self.field != "data" or self.index is None or self.index < 0:
                raise SpecError(f"{where}: Float64MultiArray elements read 'data' at an index >= 0")
        _finite(f"{where}.mean", self.mean)
        if _finite(f"{where}.std", self.std) <= 0:
            raise SpecError(f"{where}.std: expected > 0, got {self.std}")
        if _finite(f"{where}.noise_std", self.noise_std) < 0:
            raise SpecError(f"{where}.noise_std: expected >= 0, got {self.noise_std}")


@dataclass(frozen=True)
class ActionElement:
    """One element of the action vector."""

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

    def validate(self, where: str) -> None:
        if not self.name:
            raise SpecError(f"{where}.name: must not be empty")
        if self.msg_type not in ACTION_TYPES:
            raise SpecError(
                f"{where}.msg_type: expected one of {ACTION_TYPES}, got {self.msg_type!r}"
            )
        if self.msg_type == "std_msgs/Float64MultiArray" and (
            self.field != "data" or self.index is None or self.index < 0
        ):
            raise SpecError(f"{where}: Float64MultiArray actions write 'data' at an index >= 0")
        if self.msg_type == "trajectory_msgs/JointTrajectory":
            if self.field not in TRAJECTORY_FIELDS or not self.key:
                raise SpecError(
                    f"{where}: JointTrajectory actions need field in {TRAJECTORY_FIELDS} and key = joint name"
                )
        if self.msg_type == "geometry_msgs/Twist" and self.field not in (
            "linear.x",
            "linear.y",
            "linear.z",
            "angular.x",
            "angular.y",
            "angular.z",
        ):
            raise SpecError(
                f"{where}.field: Twist actions write linear.x|y|z or angular.x|y|z, got {self.field!r}"
            )
        _finite(f"{where}.scale", self.scale)
        _finite(f"{where}.offset", self.offset)
        lo, hi = _finite(f"{where}.low", self.low), _finite(f"{where}.high", self.high)
        if lo > hi:
            raise SpecError(f"{where}: low ({lo}) must be <= high ({hi})")


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
        if not self.observations:
            raise SpecError("spec.observations: at least one element is needed")
        if not self.actions:
            raise SpecError("spec.actions: at least one element is needed")
        rate = _finite("spec.control_rate_hz", self.control_rate_hz)
        if rate <= 0:
            raise SpecError(f"spec.control_rate_hz: expected > 0, got {rate}")
        for group, elements in (("observations", self.observations), ("actions", self.actions)):
            names = [e.name for e in elements]
            dup = sorted({n for n in names if names.count(n) > 1})
            if dup:
                raise SpecError(f"spec.{group}: duplicate names {dup}")
            for i, e in enumerate(elements):
                e.validate(f"spec.{group}[{i}] ({e.name})")
        types: dict[str, str] = {}
        for e in (*self.observations, *self.actions):
            if types.setdefault(e.topic, e.msg_type) != e.msg_type:
                raise SpecError(
                    f"spec: topic {e.topic!r} is used with two message types, {types[e.topic]} and {e.msg_type}"
                )
        for topic in self.action_topics():
            if topic in self.observation_topics():
                raise SpecError(f"spec: topic {topic!r} is both an input and an output")

    # -- sizes and topics ------------------------------------------------------------------
    @property
    def obs_dim(self) -> int:
        return len(self.observations)

    @property
    def action_dim(self) -> int:
        return len(self.actions)

    @property
    def control_period_s(self) -> float:
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
        return np.array([e.mean for e in self.observations], np.float64)

    @property
    def obs_std(self) -> np.ndarray:
        return np.array([e.std for e in self.observations], np.float64)

    @property
    def obs_noise_std(self) -> np.ndarray:
        return np.array([e.noise_std for e in self.observations], np.float64)

    @property
    def action_scale(self) -> np.ndarray:
        return np.array([e.scale for e in self.actions], np.float64)

    @property
    def action_offset(self) -> np.ndarray:
        return np.array([e.offset for e in self.actions], np.float64)

    @property
    def action_low(self) -> np.ndarray:
        return np.array([e.low for e in self.actions], np.float64)

    @property
    def action_high(self) -> np.ndarray:
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
            keys = ("name", "topic", "msg_type", "field", "key", "index", "sectors", "transform")
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
        if not isinstance(data, dict):
            raise SpecError(f"spec: expected a mapping, got {type(data).__name__}")
        for key in ("robot", "observations", "actions", "control_rate_hz"):
            if key not in data:
                raise SpecError(f"spec: missing field {key!r}")
        obs = tuple(
            _element(ObservationElement, d, f"spec.observations[{i}]")
            for i, d in enumerate(data["observations"])
        )
        act = tuple(
            _element(ActionElement, d, f"spec.actions[{i}]") for i, d in enumerate(data["actions"])
        )
        return cls(
            str(data["robot"]),
            obs,
            act,
            _finite("spec.control_rate_hz", data["control_rate_hz"]),
            str(data.get("description", "")),
            dict(data.get("extra", {}) or {}),
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
