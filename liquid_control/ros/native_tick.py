"""The compiled control tick's preparation: what Python works out at configure so that C can run
the tick alone (see liquid_control/ros/_ctick.c).

- `reader_description(cls, elements, max_bytes)`: the decode program and reader of one input
  topic (csrc/cdr.h), from the message class's own type description (``SLOT_TYPES``, as
  `wire.decoder_for` walks it) and the spec's elements for the topic (as the message table's
  reader reads them). `Unsupported` where the compiled path does not cover the type (wide
  strings, chars, a reader kind it lacks): the loop then keeps the Python tick.
"""

from __future__ import annotations

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

from .wire import _BASIC, Unsupported, _class_of

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
            self.found.add(path) if reg >= 0 else None
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
            self.found.add(path) if seq >= 0 else None
            size = _BASIC[v.typename][1]
            self.emit(OP_NUMSEQ, size, _DTYPES[v.typename], fixed, bound, seq)
        elif isinstance(v, AbstractWString):
            raise Unsupported("wide strings")
        elif isinstance(v, AbstractString):
            keep = int(not repeated and path == self.strings)
            self.found.add(path) if keep else None
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
    if (
        kind == RD_LASER
        and cls.SLOT_TYPES[
            list(cls.get_fields_and_field_types()).index("ranges")
        ].value_type.typename
        != "float"
    ):
        raise Unsupported("LaserScan.ranges is not float32")
    transform = np.array([_TRANSFORMS[e.transform] for e in elements], np.int64)
    ops = np.array(program.ops, np.int32).reshape(-1)
    return (ops, kind, k, index, sectors, need, field, keys, transform, int(max_bytes))
