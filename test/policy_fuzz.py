"""Mutations of a real policy file whose content hash is recomputed, so that every mutation reaches
the loader's validation (anyone can compute the hash: it detects corruption, not intent).

`mutated_file(base_meta, base_tensors, rng, path)` writes one mutated file and returns a short
description of what was changed; `outcome(path)` loads it and classifies the result. Used by the
property test in `test_policy_file_fuzz.py` (a few hundred cases) and by the hand-run script
`test/fuzz_policy_files.py` (100k cases, counts for the README).
"""

from __future__ import annotations

import copy
import json
import random
import re
import struct
from pathlib import Path
from typing import Any

import numpy as np

from liquid_control.core.policy import Policy
from liquid_control.core.policy_file import (
    FORMAT,
    FORMAT_VERSION,
    METADATA_KEY,
    PolicyFileError,
    atomic_write_bytes,
    canonical_json,
    content_hash,
    read_policy_file,
)

SPECIAL_NUMBERS = [
    2**70,
    -(2**70),
    10**400,
    1e308,
    -1e308,
    1e-320,
    0,
    -1,
    1,
    3,
    100000,
    0.5,
    -0.5,
    1e30,
]
SPECIAL_FLOATS = [np.nan, np.inf, -np.inf, 1e300, -1e300, 1e38, -1.0, 0.0, 1e-45]


def random_value(rng: random.Random, depth: int = 0) -> Any:
    """A JSON value of any kind, biased to the values that broke loaders before."""
    kind = rng.randrange(12)
    if kind < 3:
        return rng.choice(SPECIAL_NUMBERS)
    if kind == 3:
        return rng.choice([True, False, None])
    if kind == 4:
        return rng.choice(["", "x", "LTC", "affine", "motor", "sensor_msgs/JointState", "a" * 300])
    if kind == 5:
        return rng.uniform(-10, 10)
    if kind == 6 and depth < 3:
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    if kind == 7 and depth < 3:
        return {rng.choice(["a", "name", "type", "index"]): random_value(rng, depth + 1)}
    if kind == 8:
        return [[rng.choice([-1, 0, 1, 2, 1.0, True])] * rng.randrange(1, 4)]
    if kind == 9:
        return rng.randrange(-5, 25)
    if kind == 10:
        return [rng.choice(["motor", "command", "inter", 1, ["motor"]]) for _ in range(3)]
    return rng.choice([{}, [], [1, 2, 3], {"x": [1]}])


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path (tuple of keys/indices) into a JSON tree, the root excluded."""
    out = []
    if isinstance(node, dict):
        items = node.items()
    elif isinstance(node, list):
        items = enumerate(node)
    else:
        return out
    for key, child in items:
        out.append((*prefix, key))
        out.extend(_paths(child, (*prefix, key)))
    return out


def _walk(tree: Any, rng: random.Random, protected: set) -> tuple | None:
    """A random path into the tree: a random child at each level, stopping early at random, so
    every section (model, wiring, spec, provenance) is hit about as often whatever its size."""
    path: tuple = ()
    node = tree
    while isinstance(node, (dict, list)) and node:
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        keys = [k for k in keys if (*path, k) not in protected]
        if not keys:
            break
        key = rng.choice(keys)
        path, node = (*path, key), node[key]
        if rng.random() < 0.3:
            break
    return path or None


def _parent(tree: Any, path: tuple) -> Any:
    for key in path[:-1]:
        tree = tree[key]
    return tree


def mutate(meta: dict, tensors: dict, rng: random.Random) -> tuple[dict, dict, str | None, str]:
    """(metadata, tensors, raw metadata text or None, description) after 1-3 mutations."""
    meta, tensors = copy.deepcopy(meta), {k: v.copy() for k, v in tensors.items()}
    protected = {("format",), ("format_version",), ("content_hash",)}
    raw, done = None, []
    for _ in range(rng.randint(1, 3)):
        op = rng.randrange(10)
        paths = [p for p in _paths(meta) if p not in protected]
        walk = _walk(meta, rng, protected)
        if op <= 3 and walk:  # replace a value anywhere in the metadata
            _parent(meta, walk)[walk[-1]] = random_value(rng)
            done.append(f"set {'.'.join(map(str, walk))}")
        elif op == 4 and walk:  # delete a key or a list element
            path = walk
            parent = _parent(meta, path)
            del parent[path[-1]]
            done.append(f"delete {'.'.join(map(str, path))}")
        elif op == 5:  # add a key somewhere
            dicts = [()] + [p for p in paths if isinstance(_parent(meta, (*p, 0)), dict)]
            where = rng.choice(dicts)
            target = meta
            for key in where:
                target = target[key]
            target[rng.choice(["extra_field", "name", "model", "units"])] = random_value(rng)
            done.append(f"add key under {'.'.join(map(str, where)) or 'root'}")
        elif op == 6:  # special values into a tensor
            name = rng.choice(sorted(tensors))
            flat = tensors[name].reshape(-1)
            if flat.size:
                with np.errstate(over="ignore"):  # 1e300 into float32 is inf: also a case
                    flat[rng.randrange(flat.size)] = rng.choice(SPECIAL_FLOATS)
            done.append(f"value in {name}")
        elif op == 7:  # a tensor of another shape
            name = rng.choice(sorted(tensors))
            shape = tuple(rng.randrange(0, 5) for _ in range(rng.randrange(0, 3)))
            tensors[name] = np.full(shape, rng.uniform(-2, 2), np.float32)
            done.append(f"shape of {name}")
        elif op == 8:  # drop or add a tensor
            if rng.random() < 0.5 and tensors:
                tensors.pop(rng.choice(sorted(tensors)))
                done.append("drop a tensor")
            else:
                tensors["bonus"] = np.zeros(3, np.float32)
                done.append("add a tensor")
        else:  # a non-finite JSON token in place of a number (not writable canonically)
            numbers = [p for p in paths if type(_parent(meta, p)[p[-1]]) in (int, float)]
            if numbers:
                path = rng.choice(numbers)
                token = rng.choice(["NaN", "Infinity", "-Infinity"])
                _parent(meta, path)[path[-1]] = "@@TOKEN@@"
                raw = canonical_json(meta).replace('"@@TOKEN@@"', token)
                done.append(f"{token} at {'.'.join(map(str, path))}")
    return meta, tensors, raw, "; ".join(done)


def write_raw(path: str | Path, meta: dict, tensors: dict, raw_meta: str | None = None) -> None:
    """A policy file with `meta` (hash recomputed over it) and `tensors`, written byte by byte
    like `write_policy_file` but without its checks, so any content can be written."""
    meta = {**meta, "format": FORMAT, "format_version": FORMAT_VERSION}
    meta.pop("content_hash", None)
    if raw_meta is None:
        try:
            meta["content_hash"] = content_hash(meta, tensors)
            text = canonical_json(meta)
        except (TypeError, ValueError, RecursionError):
            text = json.dumps(meta, default=str)
    else:
        text = raw_meta
    header: dict[str, Any] = {"__metadata__": {METADATA_KEY: text}}
    chunks, offset = [], 0
    for name in sorted(tensors):
        data = np.ascontiguousarray(tensors[name]).astype("<f4", copy=False)
        blob = data.tobytes()
        header[name] = {
            "dtype": "F32",
            "shape": list(data.shape),
            "data_offsets": [offset, offset + len(blob)],
        }
        chunks.append(blob)
        offset += len(blob)
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    atomic_write_bytes(path, struct.pack("<Q", len(head)) + head + b"".join(chunks))


def base_policy(path: str | Path) -> tuple[dict, dict]:
    """The metadata and tensors of a real policy file."""
    return read_policy_file(path)


def mutated_file(meta: dict, tensors: dict, rng: random.Random, path: str | Path) -> str:
    m, t, raw, what = mutate(meta, tensors, rng)
    write_raw(path, m, t, raw)
    return what


def outcome(path: str | Path) -> str:
    """'valid', 'refused: <first words of the problem>' or 'ESCAPED <exception type>'.

    A file that loads must step to a finite action on its mean observation (the loader checks
    it) and on random observations around it; anything else is an escape."""
    try:
        policy = Policy.load(path)
    except PolicyFileError as exc:
        words = re.sub(r"\[\d+\]", "[i]", exc.problem).split(":")
        section = words[0] if words[0] not in ("interface spec", "wiring") else words[1]
        return "refused: " + re.sub(r" \([^)]*\)", "", section).strip()[:50]
    except Exception as exc:  # noqa: BLE001 (what the fuzz is looking for)
        return f"ESCAPED {type(exc).__name__}: {exc}"
    rng = np.random.default_rng(0)
    std = policy.spec.obs_std
    with np.errstate(all="ignore"):
        for _ in range(3):
            action = policy.step(policy.spec.obs_mean + std * rng.normal(size=std.size))
            if not np.isfinite(action).all():
                return "ESCAPED non-finite action on a loaded policy"
    return "valid"
