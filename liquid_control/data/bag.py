"""Reading rosbag2 bags (MCAP and sqlite3) without a ROS install, through `rosbags`.

A bag written by ``ros2 bag record`` on Humble, Jazzy or Kilted reads: message types come from the
definitions the bag stores (MCAP schemas, the sqlite3 ``message_definitions`` table of Iron and
later), else from the typestore of ``ROS_DISTRO`` (Humble's sqlite3 bags store none; the message
types this project reads have the same layout on every distribution since Humble).

A bag that ends early (a recorder killed, a disk full, a file cut in a copy) is read as far as it
goes: an MCAP file whose summary is missing is read record by record with the `mcap` library up
to the first damaged record, and `Bag.truncated` says where it ended. A message that does not
decode is yielded with its error instead of a value, so callers count it and go on.

Messages come as `BagMessage` (topic, message type in ``pkg/Type`` form, log time in ns, the
decoded message or None, the error or None). Decoded messages have the rclpy attribute layout
(numeric arrays as numpy arrays), which the message table's readers take as they are.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Bag", "BagError", "BagMessage", "BagTopic", "ros_type_name"]


class BagError(ValueError):
    """A bag cannot be read (the text names the bag and what is wrong)."""


@dataclass(frozen=True)
class BagMessage:
    topic: str
    msg_type: str  # "pkg/Type"
    t_ns: int  # log (receive) time of the recorder
    msg: Any  # decoded message, None when it did not decode
    error: str | None = None


@dataclass
class BagTopic:
    name: str
    msg_type: str
    count: int


def ros_type_name(rosbags_name: str) -> str:
    """``sensor_msgs/msg/Imu`` -> ``sensor_msgs/Imu`` (the form specs use)."""
    parts = rosbags_name.split("/")
    return f"{parts[0]}/{parts[-1]}" if len(parts) == 3 else rosbags_name


def default_typestore() -> Any:
    """The typestore of ``ROS_DISTRO`` (Kilted when unset or unknown)."""
    from rosbags.typesys import Stores, get_typestore

    distro = os.environ.get("ROS_DISTRO", "").lower()
    store = {s.value: s for s in Stores}.get(f"ros2_{distro}", Stores.ROS2_KILTED)
    return get_typestore(store)


@dataclass
class Bag:
    """An open rosbag2 bag: `topics`, `messages(...)`; `truncated` when it ended early.

    `path` is the bag folder (the one holding metadata.yaml), or a single ``.mcap`` file.
    """

    path: Path
    storage: str = ""
    topics: dict[str, BagTopic] = field(default_factory=dict)
    truncated: str | None = None
    _reader: Any = None
    _stream: list | None = None  # (topic, bag type, t_ns, raw) of a bag read record by record
    _typestore: Any = None
    _fallback: Any = None

    @classmethod
    def open(cls, path: str | os.PathLike) -> Bag:
        p = Path(path)
        if not p.exists():
            raise BagError(f"bag {str(p)!r}: no such file or folder")
        if p.is_file() and p.suffix in (".mcap", ".db3") and (p.parent / "metadata.yaml").exists():
            p = p.parent  # the storage file of a bag folder: open the folder
        bag = cls(p)
        bag._fallback = default_typestore()
        files = sorted(p.glob("*.mcap")) if p.is_dir() else [p]
        if p.is_dir() and not (p / "metadata.yaml").exists():
            if not files:
                raise BagError(
                    f"bag {str(p)!r}: no metadata.yaml and no .mcap file (expected a rosbag2 "
                    "folder as `ros2 bag record` writes it)"
                )
            bag._read_stream(files, "no metadata.yaml (the recording did not finish)")
            return bag
        if p.is_file() and p.suffix != ".mcap":
            raise BagError(f"bag {str(p)!r}: expected a rosbag2 folder or an .mcap file")
        if p.is_file():
            bag._read_stream(files, None)
            return bag
        from rosbags.highlevel import AnyReader, AnyReaderError

        try:
            reader = AnyReader([p], default_typestore=bag._fallback)
            reader.open()
        except (AnyReaderError, OSError, ValueError, KeyError, TypeError) as exc:
            text = " ".join(str(a) for a in getattr(exc, "args", ())) or type(exc).__name__
            if files:
                bag._read_stream(files, f"the file did not open whole ({text})")
                return bag
            raise BagError(f"bag {str(p)!r} does not open: {text}") from None
        bag._reader = reader
        bag._typestore = reader.typestore
        bag.storage = "sqlite3" if any(p.glob("*.db3")) else "mcap"
        for c in reader.connections:
            t = bag.topics.setdefault(c.topic, BagTopic(c.topic, ros_type_name(c.msgtype), 0))
            t.count += c.msgcount
        return bag

    def _read_stream(self, files: list[Path], why: str | None) -> None:
        """Read MCAP files record by record, keeping everything up to the first bad record."""
        from mcap.exceptions import McapError
        from mcap.records import Channel, Message, Schema
        from mcap.stream_reader import StreamReader
        from rosbags.typesys import get_types_from_msg, get_typestore
        from rosbags.typesys.stores import Stores

        self.storage = "mcap"
        types: dict[str, Any] = {}
        schemas: dict[int, str] = {}
        channels: dict[int, tuple[str, str]] = {}
        out: list = []
        ended = None
        for f in files:
            try:
                with open(f, "rb") as fh:
                    for rec in StreamReader(fh, skip_magic=False, emit_chunks=False).records:
                        if isinstance(rec, Schema):
                            schemas[rec.id] = rec.name
                            if rec.encoding == "ros2msg" and rec.data:
                                try:
                                    types.update(get_types_from_msg(rec.data.decode(), rec.name))
                                except Exception:  # noqa: BLE001 (a bad schema: use the fallback)
                                    pass
                        elif isinstance(rec, Channel):
                            channels[rec.id] = (rec.topic, schemas.get(rec.schema_id, ""))
                        elif isinstance(rec, Message) and rec.channel_id in channels:
                            topic, typ = channels[rec.channel_id]
                            out.append((topic, typ, rec.log_time, rec.data))
            except (McapError, OSError, ValueError, EOFError) as exc:
                last = out[-1][2] / 1e9 if out else None
                ended = (
                    f"{f.name} ends early after {len(out)} messages"
                    + (f" (last at t={last:.3f} s)" if last is not None else "")
                    + f": {type(exc).__name__} {exc}".rstrip()
                )
                break
        if why is not None or ended is not None:
            self.truncated = "; ".join(t for t in (why, ended) if t)
        store = get_typestore(Stores.EMPTY)
        try:
            store.register(types)
        except Exception:  # noqa: BLE001 (inconsistent schemas: decode with the fallback)
            store = None
        self._typestore = store
        out.sort(key=lambda r: r[2])
        self._stream = out
        for topic, typ, _, _ in out:
            t = self.topics.setdefault(topic, BagTopic(topic, ros_type_name(typ), 0))
            t.count += 1

    # -- reading ---------------------------------------------------------------------------
    def _decode(self, raw: bytes, bag_type: str) -> Any:
        store = self._typestore
        if store is None or bag_type not in store.types:
            store = self._fallback
        return store.deserialize_cdr(raw, bag_type)

    def messages(self, topics: Iterable[str] | None = None) -> Iterator[BagMessage]:
        """Messages of `topics` (all when None) in log-time order. A message that does not
        decode comes with `error` set; a storage that fails part-way ends the iteration and
        sets `truncated`."""
        wanted = set(topics) if topics is not None else None
        if self._stream is not None:
            for topic, typ, t_ns, raw in self._stream:
                if wanted is None or topic in wanted:
                    yield self._message(topic, typ, t_ns, raw)
            return
        conns = [c for c in self._reader.connections if wanted is None or c.topic in wanted]
        if not conns:
            return
        n, last = 0, None
        try:
            for c, t_ns, raw in self._reader.messages(connections=conns):
                n, last = n + 1, t_ns
                yield self._message(c.topic, c.msgtype, t_ns, raw)
        except Exception as exc:  # noqa: BLE001 (any storage failure: keep what was read)
            self.truncated = (
                f"reading stopped after {n} messages"
                + (f" (last at t={last / 1e9:.3f} s)" if last is not None else "")
                + f": {type(exc).__name__}: {exc}"
            )

    def _message(self, topic: str, bag_type: str, t_ns: int, raw: bytes) -> BagMessage:
        name = ros_type_name(bag_type)
        try:
            return BagMessage(topic, name, int(t_ns), self._decode(raw, bag_type))
        except Exception as exc:  # noqa: BLE001 (bytes from outside: any failure is "undecodable")
            return BagMessage(topic, name, int(t_ns), None, f"{type(exc).__name__}: {exc}")

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def __enter__(self) -> Bag:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
