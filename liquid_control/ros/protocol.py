"""The protocol between the policy node and its control process: typed operations and events,
framed over pipes (no ROS, no pickle).

The node sends requests (`Op`); the control process answers those in `REPLIES` with an
``Ev.REPLY`` carrying the request's id (and ``error`` if it failed), and sends events of its own
(`Ev`). Each kind lists the fields it must carry (`REQUEST_FIELDS`, `EVENT_FIELDS`); `parse_request`
and `parse_event` check a header against them and raise `ProtocolError` for an unknown kind or a
missing field, so a message nobody understands is an error someone sees, never silently dropped.

A frame is a 4-byte length, then a 4-byte header length, the JSON header (with the layout of the
arrays) and the raw float64 array bytes.
"""

from __future__ import annotations

import json
import os
import struct
import threading
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np

FRAME = struct.Struct("<I")
MAX_FRAME_BYTES = 1 << 30


class Op(str, Enum):
    """Requests from the node to its control process."""

    CONFIGURE = "configure"  # config, policy arrays: build the loop (first request only)
    ACTIVATE = "activate"  # start ticking (estop: the node's last known estop state)
    DEACTIVATE = "deactivate"  # stop ticking; publish the safe action once if commanding
    SET = "set"  # values: settings changed at run time
    RESET = "reset"  # reset the hidden state (and clear a latch) at the next tick
    ESTOP = "estop"  # engaged: an estop message the node's process heard
    SWAPPING = "swapping"  # value: the node is loading a candidate (ticks count as in a swap)
    SWAP = "swap"  # policy (path, hash, spec), arrays: put in place between two ticks
    STATS = "stats"  # now_ns: the loop's state for diagnostics
    OBSERVATION = "observation"  # the newest raw observation (for a swap's dry run)
    QUIT = "quit"  # stop and exit


class Ev(str, Enum):
    """Messages from the control process to the node."""

    REPLY = "reply"  # id, [error], values of the request
    IS_SAFE = "is_safe"  # safe: whether the policy's output is *not* being published
    COMMANDING = "commanding"  # every input has arrived: the loop publishes commands
    SWAPPED = "swapped"  # hash, path: the swap is in place
    SWAP_FAILED = "swap_failed"  # hash, error
    ESTOP = "estop"  # engaged: an estop message the control process took
    EXIT = "exit"  # code: the process is gone (made by the node's reader, never sent)


REQUEST_FIELDS: dict[Op, tuple[str, ...]] = {
    Op.CONFIGURE: ("config",),
    Op.ACTIVATE: (),
    Op.DEACTIVATE: (),
    Op.SET: ("values",),
    Op.RESET: (),
    Op.ESTOP: ("engaged",),
    Op.SWAPPING: ("value",),
    Op.SWAP: ("policy",),
    Op.STATS: (),
    Op.OBSERVATION: (),
    Op.QUIT: (),
}
REPLIES = frozenset({Op.CONFIGURE, Op.ACTIVATE, Op.DEACTIVATE, Op.STATS, Op.OBSERVATION})
EVENT_FIELDS: dict[Ev, tuple[str, ...]] = {
    Ev.REPLY: ("id",),
    Ev.IS_SAFE: ("safe",),
    Ev.COMMANDING: (),
    Ev.SWAPPED: ("hash",),
    Ev.SWAP_FAILED: ("hash", "error"),
    Ev.ESTOP: ("engaged",),
    Ev.EXIT: ("code",),
}


class ProtocolError(ValueError):
    """A frame or message that does not follow the protocol."""


@dataclass(frozen=True)
class Request:
    op: Op
    fields: dict[str, Any]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def id(self) -> int | None:
        return self.fields.get("id")


@dataclass(frozen=True)
class Event:
    ev: Ev
    fields: dict[str, Any]


def _parse(header: dict[str, Any], key: str, kinds: type[Enum], required: dict) -> tuple:
    try:
        kind = kinds(header.get(key))
    except ValueError:
        raise ProtocolError(
            f"unknown {key} {header.get(key)!r}; expected one of {[k.value for k in kinds]}"
        ) from None
    missing = [f for f in required[kind] if f not in header]
    if missing:
        raise ProtocolError(f"{key} {kind.value!r} lacks {missing}")
    return kind, {k: v for k, v in header.items() if k != key}


def parse_request(header: dict[str, Any], arrays: dict[str, np.ndarray]) -> Request:
    op, fields = _parse(header, "op", Op, REQUEST_FIELDS)
    return Request(op, fields, arrays)


def parse_event(header: dict[str, Any]) -> Event:
    ev, fields = _parse(header, "ev", Ev, EVENT_FIELDS)
    return Event(ev, fields)


def request_header(op: Op, **fields: Any) -> dict[str, Any]:
    missing = [f for f in REQUEST_FIELDS[op] if f not in fields]
    if missing:
        raise ProtocolError(f"op {op.value!r} needs {missing}")
    return {"op": op.value, **fields}


def event_header(ev: Ev, **fields: Any) -> dict[str, Any]:
    missing = [f for f in EVENT_FIELDS[ev] if f not in fields]
    if missing:
        raise ProtocolError(f"event {ev.value!r} needs {missing}")
    return {"ev": ev.value, **fields}


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
        (size,) = FRAME.unpack(head)
        if size > MAX_FRAME_BYTES:
            raise ValueError(f"bad frame: {size} bytes announced")
        body = self._read_exactly(size)
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
