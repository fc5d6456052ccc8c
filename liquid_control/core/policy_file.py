"""The policy file: safetensors weights + a JSON header, read without executing any code.

Layout (the safetensors format, written and read here with numpy so the robot needs no extra
package): 8-byte little-endian header length, a JSON header naming each tensor's dtype, shape and
byte range, then the raw little-endian tensor bytes. The header's ``__metadata__`` holds one key,
``liquid_control``, whose value is the JSON metadata:

    format, format_version, model (type, ode_unfolds, epsilon, time_unit_s), wiring, spec,
    provenance (task, seed, training figures, date, project version), content_hash

``content_hash`` is the sha256 of the canonical metadata (without the hash) and of every tensor's
name, dtype, shape and bytes, so any change to a weight or a field is detected at load.

`write_policy_file` writes atomically (temp file in the same folder, fsync, rename).
`read_policy_file` validates everything and raises `PolicyFileError` naming what is wrong.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "liquid_control.policy"
FORMAT_VERSION = 1
METADATA_KEY = "liquid_control"
MAX_HEADER_BYTES = 16 * 1024 * 1024
_DTYPES = {"F32": np.dtype("<f4"), "F64": np.dtype("<f8")}
_DTYPE_NAMES = {v: k for k, v in _DTYPES.items()}


class PolicyFileError(ValueError):
    """A policy file cannot be used: names the file, what is wrong and what was expected."""

    def __init__(self, path: str | os.PathLike, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = str(path)
        self.problem = problem


def canonical_json(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=False)


def content_hash(metadata: dict[str, Any], tensors: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    h.update(canonical_json({k: v for k, v in metadata.items() if k != "content_hash"}).encode())
    for name in sorted(tensors):
        arr = np.ascontiguousarray(tensors[name])
        h.update(
            f"\n{name}:{_DTYPE_NAMES[arr.dtype.newbyteorder('<')]}:{list(arr.shape)}\n".encode()
        )
        h.update(arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes())
    return "sha256:" + h.hexdigest()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the whole new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp makes the file 0600; give it the permissions a plain open() would (0666 & ~umask).
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass  # some filesystems do not fsync folders; the rename is still atomic


def write_policy_file(
    path: str | os.PathLike, metadata: dict[str, Any], tensors: dict[str, np.ndarray]
) -> str:
    """Write tensors (float32/float64) and metadata; returns the content hash stored in the file."""
    tensors = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    for name, arr in tensors.items():
        if arr.dtype.newbyteorder("<") not in _DTYPE_NAMES:
            raise PolicyFileError(
                path, f"tensor {name!r}: dtype {arr.dtype} not supported, expected float32/float64"
            )
    meta = {**metadata, "format": FORMAT, "format_version": FORMAT_VERSION}
    meta.pop("content_hash", None)
    meta["content_hash"] = content_hash(meta, tensors)
    header: dict[str, Any] = {"__metadata__": {METADATA_KEY: canonical_json(meta)}}
    offset = 0
    chunks = []
    for name in sorted(tensors):
        arr = tensors[name].astype(tensors[name].dtype.newbyteorder("<"), copy=False)
        raw = arr.tobytes()
        header[name] = {
            "dtype": _DTYPE_NAMES[arr.dtype],
            "shape": list(arr.shape),
            "data_offsets": [offset, offset + len(raw)],
        }
        chunks.append(raw)
        offset += len(raw)
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)  # align the data buffer to 8 bytes
    atomic_write_bytes(path, struct.pack("<Q", len(head)) + head + b"".join(chunks))
    return meta["content_hash"]


def _refuse_foreign(path: str | os.PathLike, blob: bytes) -> None:
    if blob[:2] in (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05"):
        raise PolicyFileError(
            path,
            "this is a Python pickle; policy files are never unpickled "
            "(expected a liquid_control safetensors policy file)",
        )
    if blob[:4] == b"PK\x03\x04":
        raise PolicyFileError(
            path,
            "this is a zip archive (torch.save checkpoint?); it is never unpickled "
            "(expected a liquid_control safetensors policy file; convert it with "
            "`liquid-control export`)",
        )


def read_policy_file(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Read and check a policy file; returns (metadata, tensors). Raises PolicyFileError."""
    try:
        blob = Path(path).read_bytes()
    except FileNotFoundError:
        raise PolicyFileError(path, "no such file") from None
    except IsADirectoryError:
        raise PolicyFileError(path, "is a folder, expected a policy file") from None
    except OSError as exc:
        raise PolicyFileError(path, f"cannot be read ({exc.strerror})") from None
    _refuse_foreign(path, blob)
    if len(blob) < 8:
        raise PolicyFileError(
            path, f"truncated: {len(blob)} bytes, a policy file starts with an 8-byte header length"
        )
    (n,) = struct.unpack("<Q", blob[:8])
    if n > MAX_HEADER_BYTES or 8 + n > len(blob):
        raise PolicyFileError(
            path,
            f"truncated or not a policy file: header length {n} but the file has {len(blob) - 8} bytes after it",
        )
    try:
        header = json.loads(blob[8 : 8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PolicyFileError(path, f"corrupt header: not JSON ({exc})") from None
    if not isinstance(header, dict):
        raise PolicyFileError(path, "corrupt header: expected a JSON object")
    buffer = memoryview(blob)[8 + n :]

    meta_raw = header.pop("__metadata__", None)
    if not isinstance(meta_raw, dict) or METADATA_KEY not in meta_raw:
        raise PolicyFileError(
            path,
            f"no '{METADATA_KEY}' metadata: a safetensors file, but not a liquid_control policy",
        )
    try:
        meta = json.loads(meta_raw[METADATA_KEY])
    except (TypeError, json.JSONDecodeError) as exc:
        raise PolicyFileError(path, f"corrupt metadata: not JSON ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise PolicyFileError(
            path,
            f"format is {meta.get('format') if isinstance(meta, dict) else meta!r}, expected {FORMAT!r}",
        )
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise PolicyFileError(
            path,
            f"format_version is {version!r}; this liquid_control reads version {FORMAT_VERSION}",
        )

    tensors: dict[str, np.ndarray] = {}
    end_max = 0
    for name, info in header.items():
        try:
            dtype = _DTYPES[info["dtype"]]
            shape = tuple(int(d) for d in info["shape"])
            begin, end = (int(o) for o in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise PolicyFileError(
                path,
                f"tensor {name!r}: bad entry {info!r}, expected dtype F32/F64, shape, data_offsets",
            ) from None
        count = int(np.prod(shape)) if shape else 1
        if any(d < 0 for d in shape) or end - begin != count * dtype.itemsize or begin < 0:
            raise PolicyFileError(
                path,
                f"tensor {name!r}: {end - begin} bytes for shape {list(shape)} of {info['dtype']}",
            )
        if end > len(buffer):
            raise PolicyFileError(
                path, f"truncated: tensor {name!r} ends at byte {end}, the data has {len(buffer)}"
            )
        tensors[name] = np.frombuffer(buffer[begin:end], dtype=dtype).reshape(shape).copy()
        end_max = max(end_max, end)
    if end_max != len(buffer):
        raise PolicyFileError(
            path,
            f"{len(buffer) - end_max} unexpected bytes after the last tensor (corrupt or appended to)",
        )
    expected = meta.get("content_hash")
    actual = content_hash(meta, tensors)
    if expected != actual:
        raise PolicyFileError(
            path,
            f"content hash mismatch: the file says {expected}, its content hashes to {actual} "
            "(corrupted or edited)",
        )
    return meta, tensors
