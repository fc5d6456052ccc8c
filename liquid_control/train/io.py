"""Atomic files of a training run: JSON, safetensors and numpy archives (never pickle)."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..core.policy_file import atomic_write_bytes


def write_json(path: str | os.PathLike, data: Any) -> None:
    atomic_write_bytes(
        path, (json.dumps(data, indent=2, sort_keys=True, default=_plain) + "\n").encode()
    )


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def write_tensors(
    path: str | os.PathLike, tensors: dict[str, Any], metadata: dict[str, str] | None = None
) -> None:
    """torch tensors -> safetensors file, atomically."""
    from safetensors.torch import save

    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic_write_bytes(path, save(tensors, metadata=metadata))


def read_tensors(path: str | os.PathLike) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(path))


def write_arrays(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> None:
    """numpy arrays -> .npz (no object arrays), atomically."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def read_arrays(path: str | os.PathLike) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def write_state_dicts(path: str | os.PathLike, states: dict[str, Any]) -> None:
    """Nested state dicts (e.g. optimiser `state_dict()`s) -> one safetensors file, atomically.

    Tensors go into the safetensors body; everything else (numbers, strings, lists, tuples, dicts
    with int or str keys) into a JSON metadata entry that names where each tensor goes back. Read
    back with `read_state_dicts`: no pickle on either side.
    """
    import torch

    tensors: dict[str, Any] = {}

    def encode(obj: Any, key: str) -> Any:
        if isinstance(obj, torch.Tensor):
            tensors[key] = obj
            return {"__tensor__": key}
        if isinstance(obj, dict):
            return {"__dict__": [[k, encode(v, f"{key}/{k}")] for k, v in obj.items()]}
        if isinstance(obj, (list, tuple)):
            items = [encode(v, f"{key}/{i}") for i, v in enumerate(obj)]
            return {"__tuple__": items} if isinstance(obj, tuple) else items
        if obj is None or isinstance(obj, (bool, int, float, str)):
            return obj
        raise TypeError(f"{key}: cannot store a {type(obj).__name__} in a state file")

    tree = encode(states, "s")
    write_tensors(path, tensors, metadata={"state_dicts": json.dumps(tree)})


def read_state_dicts(path: str | os.PathLike) -> dict[str, Any]:
    """Inverse of `write_state_dicts`."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        meta = f.metadata() or {}
    if "state_dicts" not in meta:
        raise ValueError(f"{path}: not a state file (no 'state_dicts' metadata)")

    def decode(obj: Any) -> Any:
        if isinstance(obj, list):
            return [decode(v) for v in obj]
        if isinstance(obj, dict):
            if "__tensor__" in obj:
                return tensors[obj["__tensor__"]]
            if "__tuple__" in obj:
                return tuple(decode(v) for v in obj["__tuple__"])
            return {k: decode(v) for k, v in obj["__dict__"]}
        return obj

    return decode(json.loads(meta["state_dicts"]))
