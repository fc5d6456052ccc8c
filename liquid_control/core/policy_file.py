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
import math
import os
import stat
import struct
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "liquid_control.policy"
FORMAT_VERSION = 1
METADATA_KEY = "liquid_control"
MAX_HEADER_BYTES = 16 * 1024 * 1024
MAX_FILE_BYTES = 256 * 1024 * 1024
MAX_TENSOR_DIM = 1 << 20
_DTYPES = {"F32": np.dtype("<f4"), "F64": np.dtype("<f8")}
_DTYPE_NAMES = {v: k for k, v in _DTYPES.items()}


class PolicyFileError(ValueError):
    """A policy file cannot be used: names the file, what is wrong and what was expected."""

    def __init__(self, path: str | os.PathLike, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = str(path)
        self.problem = problem


def canonical_json(data: Any) -> str:
    """JSON with sorted keys and no spaces (what the content hash is computed over)."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=False)


def content_hash(metadata: dict[str, Any], tensors: dict[str, np.ndarray]) -> str:
    """sha256 of the canonical metadata (without its hash) and every tensor's name, dtype, shape and bytes."""
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


def _json_constant(token: str) -> Any:
    raise ValueError(f"{token} is not a number JSON allows (expected finite numbers only)")


def parse_json(text: str | bytes) -> Any:
    """Strict JSON: NaN, Infinity and -Infinity are refused, as is nesting Python cannot parse."""
    try:
        return json.loads(text, parse_constant=_json_constant)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def read_file_bytes(path: str | os.PathLike, max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of a regular file, never blocking: a FIFO, a device, a socket or a folder is
    refused (opened non-blocking, checked with fstat before any read), as is a file over
    `max_bytes`. Raises PolicyFileError naming what the path is instead."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise PolicyFileError(path, "no such file") from None
    except IsADirectoryError:
        raise PolicyFileError(path, "is a folder, expected a policy file") from None
    except OSError as exc:
        raise PolicyFileError(path, f"cannot be opened ({exc.strerror})") from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise PolicyFileError(path, "is a folder, expected a policy file")
        if not stat.S_ISREG(info.st_mode):
            kind = {
                stat.S_ISFIFO: "a FIFO (named pipe)",
                stat.S_ISCHR: "a character device",
                stat.S_ISBLK: "a block device",
                stat.S_ISSOCK: "a socket",
            }
            what = next((name for test, name in kind.items() if test(info.st_mode)), "not a file")
            raise PolicyFileError(path, f"is {what}, expected a regular policy file")
        if info.st_size > max_bytes:
            raise PolicyFileError(
                path, f"is {info.st_size} bytes; a policy file is at most {max_bytes} bytes"
            )
        os.set_blocking(fd, True)
        chunks, left = [], info.st_size + 1  # one byte more: a file that grew is noticed
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        blob = b"".join(chunks)
    except OSError as exc:
        raise PolicyFileError(path, f"cannot be read ({exc.strerror})") from None
    finally:
        os.close(fd)
    if len(blob) > max_bytes:
        raise PolicyFileError(path, f"is over {max_bytes} bytes")
    return blob


def _tensor_entry(
    path: str | os.PathLike, name: str, info: Any
) -> tuple[np.dtype, tuple, int, int]:
    """(dtype, shape, begin, end) of one safetensors header entry, every part checked."""
    expected = "expected {'dtype': 'F32'|'F64', 'shape': [ints], 'data_offsets': [begin, end]}"
    if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
        raise PolicyFileError(path, f"tensor {name!r}: bad entry {info!r:.120}; {expected}")
    dtype = _DTYPES.get(info["dtype"]) if isinstance(info["dtype"], str) else None
    if dtype is None:
        raise PolicyFileError(path, f"tensor {name!r}: dtype {info['dtype']!r:.40}; {expected}")

    def ints(field: str, value: Any, size: int | None) -> tuple[int, ...]:
        ok = isinstance(value, list) and (size is None or len(value) == size)
        ok = ok and len(value) <= 8 and all(type(v) is int for v in value)
        if not ok or any(not 0 <= v <= (1 << 40) for v in value):
            raise PolicyFileError(path, f"tensor {name!r}: {field} {value!r:.80}; {expected}")
        return tuple(value)

    shape = ints("shape", info["shape"], None)
    if any(d > MAX_TENSOR_DIM for d in shape):
        raise PolicyFileError(
            path, f"tensor {name!r}: shape {list(shape)} has a dimension over {MAX_TENSOR_DIM}"
        )
    begin, end = ints("data_offsets", info["data_offsets"], 2)
    count = math.prod(shape)
    if end - begin != count * dtype.itemsize:
        raise PolicyFileError(
            path, f"tensor {name!r}: {end - begin} bytes for shape {list(shape)} of {info['dtype']}"
        )
    return dtype, shape, begin, end


def read_policy_file(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Read and check a policy file; returns (metadata, tensors). Raises PolicyFileError."""
    blob = read_file_bytes(path)
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
        header = parse_json(blob[8 : 8 + n].decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
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
    if not isinstance(meta_raw[METADATA_KEY], str):
        raise PolicyFileError(path, f"metadata: expected a JSON string under '{METADATA_KEY}'")
    try:
        meta = parse_json(meta_raw[METADATA_KEY])
    except ValueError as exc:
        raise PolicyFileError(path, f"corrupt metadata: not JSON ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise PolicyFileError(
            path,
            f"format is {meta.get('format') if isinstance(meta, dict) else meta!r:.80}, "
            f"expected {FORMAT!r}",
        )
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise PolicyFileError(
            path,
            f"format_version is {version!r:.40}; this liquid_control reads version {FORMAT_VERSION}",
        )

    tensors: dict[str, np.ndarray] = {}
    end_max = 0
    for name, info in header.items():
        dtype, shape, begin, end = _tensor_entry(path, name, info)
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
    try:
        actual = content_hash(meta, tensors)
    except (TypeError, ValueError, RecursionError) as exc:  # not writable back canonically
        raise PolicyFileError(path, f"metadata cannot be hashed ({exc})") from None
    if expected != actual:
        raise PolicyFileError(
            path,
            f"content hash mismatch: the file says {expected!r:.80}, its content hashes to {actual} "
            "(corrupted or edited)",
        )
    return meta, tensors
