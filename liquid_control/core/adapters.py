"""Message <-> vector adapters over the message table (`message_types`; no ROS import).

Readers work on anything with the message's attribute layout: real rclpy messages on the robot,
namespaces decoded from serialized bytes (`ros.wire`), and plain namespaces built by the simulator
(`message_from_fields`), so the gym env, the sim node and the policy node all turn messages into
vectors with this same code. What each type's reader validates is listed in `message_types`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np

from .message_types import MESSAGE_TYPES, TRANSFORMS, MessageRejected
from .spec import ActionElement, InterfaceSpec, ObservationElement

__all__ = [
    "ActionWriter",
    "CommandReader",
    "MessageRejected",
    "ObservationAssembler",
    "TopicReader",
    "fields_to_message",
    "message_from_fields",
    "observe",
]


@dataclass
class TopicReader:
    """Reads one input topic into its slots of the raw observation vector.

    `read_raw` gives the numbers the elements read, in order: one per element, or several for an
    element whose transform reads a nested message (a quaternion's four). `first` holds each
    element's first number when some element reads several (None when each reads one), and
    `transforms` (element positions, (n, width) number indices, fn) make the raw values.
    """

    topic: str
    msg_type: str
    slots: np.ndarray
    read_raw: Callable[[Any], np.ndarray]
    transforms: list[tuple[np.ndarray, np.ndarray, Callable[[np.ndarray], np.ndarray]]]
    first: np.ndarray | None = None

    def read(self, msg: Any) -> np.ndarray:
        """The raw values of this topic's elements in `msg` (MessageRejected if it fails a check)."""
        try:
            numbers = self.read_raw(msg)
        except MessageRejected:
            raise
        except (AttributeError, TypeError, ValueError, IndexError, OverflowError) as exc:
            raise MessageRejected("malformed", f"{self.msg_type} on {self.topic}: {exc}") from exc
        values = numbers if self.first is None else numbers[self.first]
        for positions, columns, fn in self.transforms:
            values[positions] = fn(numbers[columns])
        return values

    @classmethod
    def for_elements(cls, topic: str, slots: np.ndarray, elements: list[ObservationElement]):
        """The reader of `elements` (one topic, one message type) into `slots`."""
        widths = [TRANSFORMS[e.transform].width for e in elements]
        starts = np.cumsum([0, *widths[:-1]]).astype(np.int64)
        transforms = []
        for name, t in TRANSFORMS.items():
            ks = [k for k, e in enumerate(elements) if e.transform == name]
            if t.fn is not None and ks:
                columns = np.array([starts[k] + np.arange(widths[k]) for k in ks], np.int64)
                transforms.append((np.array(ks, np.int64), columns, t.fn))
        return cls(
            topic,
            elements[0].msg_type,
            np.asarray(slots, np.int64),
            MESSAGE_TYPES[elements[0].msg_type].reader(elements),
            transforms,
            None if max(widths) == 1 else starts,
        )


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
            self.readers[topic] = TopicReader.for_elements(
                topic, np.array([i for i, _ in items]), [e for _, e in items]
            )
        self._raw = np.zeros(spec.obs_dim)
        self.last_update_s: dict[str, float | None] = {t: None for t in self.readers}

    @property
    def topics(self) -> dict[str, str]:
        """Input topic -> message type."""
        return {t: r.msg_type for t, r in self.readers.items()}

    def update(self, topic: str, msg: Any, stamp_s: float = 0.0) -> None:
        """Validate `msg` of `topic` and store its values, received at `stamp_s` (MessageRejected)."""
        reader = self.readers.get(topic)
        if reader is None:
            raise MessageRejected("unknown_topic", f"{topic!r} is not an input of this spec")
        self._raw[reader.slots] = reader.read(msg)
        self.last_update_s[topic] = stamp_s

    @property
    def ready(self) -> bool:
        """Whether every input topic has arrived at least once."""
        return all(t is not None for t in self.last_update_s.values())

    def missing(self) -> list[str]:
        """Input topics never received."""
        return [t for t, s in self.last_update_s.items() if s is None]

    def stale(self, now_s: float, timeout_s: float) -> list[str]:
        """Topics never received or older than `timeout_s` at `now_s`."""
        return [t for t, s in self.last_update_s.items() if s is None or now_s - s > timeout_s]

    def raw(self) -> np.ndarray:
        """A copy of the raw observation vector (robot units, the spec's order)."""
        return self._raw.copy()

    def reset(self) -> None:
        """Forget every value and receive time (as if nothing had arrived)."""
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
        MESSAGE_TYPES[msg_type].writer(msg, elements, np.asarray(action)[slots], make)
        return msg


class CommandReader:
    """Reads action values back from command messages, topic by topic (the sim node's side)."""

    def __init__(self, spec: InterfaceSpec) -> None:
        self.topics: dict[str, tuple[np.ndarray, Callable[[Any], np.ndarray]]] = {}
        for topic, (msg_type, slots, elements) in ActionWriter(spec).topics.items():
            self.topics[topic] = (slots, MESSAGE_TYPES[msg_type].command_reader(elements))

    def read(self, topic: str, msg: Any) -> np.ndarray:
        """The action values `msg` carries for `topic` (robot units; MessageRejected if it does
        not carry them all, or one is not finite)."""
        try:
            return self.topics[topic][1](msg)
        except MessageRejected:
            raise
        except (AttributeError, TypeError, ValueError, IndexError, OverflowError) as exc:
            raise MessageRejected("malformed", f"command on {topic}: {exc}") from exc


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
