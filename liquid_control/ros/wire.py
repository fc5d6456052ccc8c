"""Serialized-message fast paths for the control thread (inputs in, commands out).

rclpy turns every taken message into Python message objects and every published message back
into C structures; for a JointState that is about 70 us per message, more than the LTC step. The
control thread skips both:

- `decoder_for(cls)` decodes the serialized (CDR) bytes of a message, as taken with
  ``take_message(cls, raw=True)``, into nested namespaces whose numeric arrays and sequences are
  numpy views of the buffer and whose strings are `str`. The adapters' readers work on it unchanged
  (they already read simulator namespaces). The decoder is built from the message class's own
  type description (``SLOT_TYPES``), so it covers any message made of numbers, booleans, strings,
  nested messages, arrays and sequences; a type with anything else (wide strings, chars) gets
  None and the caller deserialises with rclpy instead. Only the encapsulation every ROS 2 RMW
  writes on little-endian machines (XCDR1 little endian, ``00 01``) is decoded here; other
  encapsulations go through rclpy's deserialiser.
- `SerializedTemplate` serialises an output message once and afterwards patches only the float64
  fields that change each tick (the action values) into the bytes, published with
  ``publisher.publish(bytes)``. It checks itself when built (patched bytes deserialise to exactly
  the message the normal path fills) and raises `TemplateUnsupported` otherwise.

Both are exact: the tests compare them with rclpy's (de)serialisation on random messages.
"""

from __future__ import annotations

import importlib
import struct
from collections.abc import Callable
from functools import cache
from types import SimpleNamespace
from typing import Any

import numpy as np
from rclpy.serialization import deserialize_message, serialize_message
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

# rosidl basic type -> (numpy little-endian dtype, size in bytes). char and wchar are left out.
_BASIC: dict[str, tuple[str, int]] = {
    "boolean": ("?", 1),
    "octet": ("u1", 1),
    "uint8": ("u1", 1),
    "int8": ("i1", 1),
    "uint16": ("<u2", 2),
    "int16": ("<i2", 2),
    "uint32": ("<u4", 4),
    "int32": ("<i4", 4),
    "uint64": ("<u8", 8),
    "int64": ("<i8", 8),
    "float": ("<f4", 4),
    "double": ("<f8", 8),
}
_STRUCT = {"?": "?", "u1": "B", "i1": "b", "<u2": "<H", "<i2": "<h", "<u4": "<I", "<i4": "<i"}
_STRUCT.update({"<u8": "<Q", "<i8": "<q", "<f4": "<f", "<f8": "<d"})
_U32 = struct.Struct("<I")
CDR_LE = b"\x00\x01"
_ORIGIN = 4  # CDR alignment counts from the end of the 4-byte encapsulation header

# A field decoder: (buffer, offset) -> (value, offset after it)
Decode = Callable[[bytes, int], tuple[Any, int]]


class Malformed(ValueError):
    """The bytes are not a valid serialisation of the message type."""


class Unsupported(TypeError):
    """The message type holds a field this decoder does not handle."""


def _align(off: int, size: int) -> int:
    return off + (-(off - _ORIGIN) % size)


def _u32(buf: bytes, off: int) -> tuple[int, int]:
    off = _align(off, 4)
    if off + 4 > len(buf):
        raise Malformed(f"a length field at byte {off} lies past the end ({len(buf)} bytes)")
    return _U32.unpack_from(buf, off)[0], off + 4


def _count(buf: bytes, off: int, elem_size: int, bound: int | None) -> tuple[int, int]:
    n, off = _u32(buf, off)
    if bound is not None and n > bound:
        raise Malformed(f"a sequence holds {n} elements, its bound is {bound}")
    if n * elem_size > len(buf) - off:
        raise Malformed(f"a sequence of {n} elements does not fit in the remaining bytes")
    return n, off


def _scalar(dtype: str, size: int) -> Decode:
    unpack = struct.Struct(_STRUCT[dtype]).unpack_from

    def dec(buf: bytes, off: int) -> tuple[Any, int]:
        off = _align(off, size)
        if off + size > len(buf):
            raise Malformed(f"a field at byte {off} lies past the end ({len(buf)} bytes)")
        return unpack(buf, off)[0], off + size

    return dec


def _numbers(dtype: str, size: int, fixed: int | None, bound: int | None) -> Decode:
    def dec(buf: bytes, off: int) -> tuple[Any, int]:
        if fixed is None:
            n, off = _count(buf, off, size, bound)
        else:
            n = fixed
        off = _align(off, size) if n else off
        if off + n * size > len(buf):
            raise Malformed(f"{n} values at byte {off} run past the end ({len(buf)} bytes)")
        return np.frombuffer(buf, dtype, n, off), off + n * size

    return dec


def _string(bound: int | None) -> Decode:
    def dec(buf: bytes, off: int) -> tuple[Any, int]:
        n, off = _u32(buf, off)
        if n == 0 or off + n > len(buf) or buf[off + n - 1] != 0:
            raise Malformed(f"a string at byte {off} is not NUL-terminated within the message")
        if bound is not None and n - 1 > bound:
            raise Malformed(f"a string of {n - 1} characters exceeds its bound {bound}")
        try:
            return buf[off : off + n - 1].decode("utf-8"), off + n
        except UnicodeDecodeError as exc:
            raise Malformed(f"a string at byte {off} is not UTF-8 ({exc})") from None

    return dec


def _repeat(item: Decode, min_size: int, fixed: int | None, bound: int | None) -> Decode:
    def dec(buf: bytes, off: int) -> tuple[Any, int]:
        if fixed is None:
            n, off = _count(buf, off, min_size, bound)
        else:
            n = fixed
        out = []
        for _ in range(n):
            value, off = item(buf, off)
            out.append(value)
        return out, off

    return dec


def _element(t: Any) -> tuple[Decode, str | None, int]:
    """(decoder, numpy dtype if numeric, smallest serialised size) of a non-nested type."""
    if isinstance(t, BasicType):
        if t.typename not in _BASIC:
            raise Unsupported(f"field type {t.typename!r}")
        dtype, size = _BASIC[t.typename]
        return _scalar(dtype, size), dtype, size
    if isinstance(t, AbstractWString):
        raise Unsupported("wide strings")
    if isinstance(t, AbstractString):
        return _string(t.maximum_size if isinstance(t, BoundedString) else None), None, 5
    if isinstance(t, NamespacedType):
        return _struct(_class_of(t)), None, 1
    raise Unsupported(f"field type {type(t).__name__}")


def _field(t: Any) -> Decode:
    if not isinstance(t, AbstractNestedType):
        return _element(t)[0]
    fixed = t.size if isinstance(t, Array) else None
    bound = t.maximum_size if isinstance(t, BoundedSequence) else None
    if not isinstance(t, (Array, AbstractSequence)):
        raise Unsupported(f"field type {type(t).__name__}")
    item, dtype, size = _element(t.value_type)
    if dtype is not None:
        return _numbers(dtype, size, fixed, bound)
    return _repeat(item, size, fixed, bound)


def _class_of(t: NamespacedType) -> type:
    module = importlib.import_module(".".join(t.namespaces))
    return getattr(module, t.name)


@cache
def _struct(cls: type) -> Decode:
    names = list(cls.get_fields_and_field_types())
    if len(names) != len(cls.SLOT_TYPES):
        raise Unsupported(f"{cls.__name__}: fields and slot types differ")
    fields = [(name, _field(t)) for name, t in zip(names, cls.SLOT_TYPES, strict=True)]

    def dec(buf: bytes, off: int) -> tuple[Any, int]:
        values = {}
        for name, f in fields:
            values[name], off = f(buf, off)
        return SimpleNamespace(**values), off

    return dec


@cache
def decoder_for(cls: type) -> Callable[[bytes], Any] | None:
    """bytes -> message-shaped namespace for message class `cls`; None if the type holds a field
    this module does not decode. Raises `Malformed` for bytes that are not a message of `cls`."""
    try:
        body = _struct(cls)
    except Unsupported:
        return None

    def decode(buf: bytes) -> Any:
        if len(buf) < 4:
            raise Malformed(f"{len(buf)} bytes: shorter than the CDR header")
        if buf[:2] != CDR_LE:
            return deserialize_message(buf, cls)  # another encapsulation: rclpy decodes it
        return body(buf, _ORIGIN)[0]

    return decode


# --------------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------------


class TemplateUnsupported(ValueError):
    """The message's changing values cannot be patched into fixed byte positions."""


class SerializedTemplate:
    """Serialised message whose `n` float64 values are patched in place each call.

    `fill(msg, values)` is how the normal path writes `n` values into `msg`; everything else in
    the message must not depend on the values (it is frozen into the template).
    """

    def __init__(self, msg: Any, fill: Callable[[Any, np.ndarray], None], n: int) -> None:
        sentinels = -1.2345678910111213e-299 * (1.0 + np.arange(n) / 64.0)
        fill(msg, sentinels)
        buf = serialize_message(msg)
        offsets = []
        for v in sentinels:
            pattern = struct.pack("<d", v)
            k = buf.find(pattern)
            if k < 0 or buf.find(pattern, k + 1) >= 0:
                raise TemplateUnsupported(f"{type(msg).__name__}: a value is not a single float64")
            offsets.append(k)
        self._buf = bytearray(buf)
        self._bytes = np.frombuffer(self._buf, np.uint8)
        self._index = np.asarray(offsets)[:, None] + np.arange(8)[None, :]
        # self-check: patched bytes must decode to exactly what the normal path fills
        check = np.linspace(-3.5, 7.25, n) if n else np.zeros(0)
        fill(msg, check)
        if deserialize_message(self.serialize(check), type(msg)) != msg:
            raise TemplateUnsupported(
                f"{type(msg).__name__}: patched bytes differ from the message"
            )

    def serialize(self, values: np.ndarray) -> bytes:
        self._bytes[self._index] = np.asarray(values, "<f8").view(np.uint8).reshape(-1, 8)
        return bytes(self._buf)
