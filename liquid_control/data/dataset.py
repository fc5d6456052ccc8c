"""Datasets of (observation, action, dt) sequences from rosbag2 bags, sampled as the node samples.

Two sources (`source`):

- ``sampled``: the spec's input topics are read through the message table (the readers the policy
  node uses: a message the node would reject is rejected here, counted by topic and reason) and
  sampled on a grid at the spec's control rate: at each tick the newest valid message of every input
  (as the node's bounded take keeps the newest), and an input older than `sensor_timeout_s` makes
  the tick stale, as on the node, where a stale tick publishes the safe action. The label of a
  tick is the newest command on the spec's action topics received before the next tick
  (`label_lag_s`, one control period by default): the command that answered what the tick saw.
- ``debug``: the policy node's ``~/observation`` debug rows (``debug: true``), when the bag has
  them: the raw observation, the measured dt and the command the node published, tick by tick.

Time: with /clock in the bag (a robot or sim on sim time), a message's time is the newest /clock
value received before it, the time the node's loop would stamp it with; else the recorder's log
time. Episodes end at a stale or rejected-only stretch, an estop (a ``std_msgs/Bool`` ``.../estop``
topic true), a reset (a sim node's ``.../episode`` message, or a node's steps-since-reset
restarting), a clock jump back, and lost debug rows. Bad data is counted, reported by topic and
time, and left out: NaN or malformed messages, messages that do not decode, duplicated stamps,
topics slower than the staleness rule allows, a truncated bag.

The dataset is a folder: ``dataset.npz`` (arrays, no pickle) and ``dataset.json`` (spec, settings,
report), both written atomically.
"""

from __future__ import annotations

import json
import math
import os
import zipfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..core.adapters import CommandReader, ObservationAssembler
from ..core.message_types import MessageRejected
from ..core.policy_file import atomic_write_bytes
from ..core.spec import InterfaceSpec, SpecError
from .bag import Bag, BagError

__all__ = [
    "Dataset",
    "DatasetError",
    "SamplingSettings",
    "build_dataset",
    "load_spec",
    "newest",
]

FORMAT = "liquid_control.dataset/1"
DEBUG_LABELS = ("tick", "dt_s", "steps_since_reset", "observation", "action")
ARRAYS = ("obs", "action", "dt", "t", "episode", "reset")
SHOWN_EVENTS = 5  # first bad messages listed per topic and reason


class DatasetError(ValueError):
    """A dataset cannot be built or read (one line naming what and what was expected)."""


@dataclass
class SamplingSettings:
    """How a bag becomes ticks (defaults: the policy node's)."""

    rate_hz: float | None = None  # None: the spec's control rate
    sensor_timeout_s: float = 0.25
    command_timeout_s: float | None = None  # None: sensor_timeout_s
    label_lag_s: float | None = None  # None: one control period
    min_episode_s: float = 1.0
    source: str = "auto"  # auto | sampled | debug
    time_base: str = "auto"  # auto | clock | log
    estop_topic: str | None = None  # None: every std_msgs/Bool topic named .../estop
    reset_topic: str | None = None  # None: every std_msgs/String topic named .../episode

    def check(self) -> None:
        for name in ("rate_hz", "sensor_timeout_s", "command_timeout_s", "label_lag_s"):
            v = getattr(self, name)
            if v is not None and not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise DatasetError(f"{name}: expected a number > 0, got {v!r}")
        if not (math.isfinite(self.min_episode_s) and self.min_episode_s >= 0):
            raise DatasetError(f"min_episode_s: expected >= 0, got {self.min_episode_s!r}")
        if self.source not in ("auto", "sampled", "debug"):
            raise DatasetError(f"source: expected auto, sampled or debug, got {self.source!r}")
        if self.time_base not in ("auto", "clock", "log"):
            raise DatasetError(f"time_base: expected auto, clock or log, got {self.time_base!r}")


@dataclass
class Dataset:
    """Ticks of one or more bags: `obs` (N, obs_dim) raw robot units, `action` (N, action_dim)
    physical units, `dt` (N,) s, `t` (N,) s in the bag's time base, `episode` (N,) episode index
    (0..E-1, increasing), `reset` (N,) True where the hidden state was zero before the tick (an
    episode that starts without it joined a node's run midway, or follows lost debug rows);
    `report` says what was read, dropped and why."""

    spec: InterfaceSpec
    obs: np.ndarray
    action: np.ndarray
    dt: np.ndarray
    t: np.ndarray
    episode: np.ndarray
    reset: np.ndarray
    source: str
    settings: dict[str, Any] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def episodes(self) -> list[slice]:
        """One slice per episode, in order."""
        if not self.episode.size:
            return []
        cut = np.flatnonzero(np.diff(self.episode)) + 1
        bounds = [0, *cut.tolist(), self.episode.size]
        return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]

    def save(self, folder: str | os.PathLike) -> Path:
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        import io

        buf = io.BytesIO()
        np.savez(buf, **{k: getattr(self, k) for k in ARRAYS})
        atomic_write_bytes(out / "dataset.npz", buf.getvalue())
        meta = {
            "format": FORMAT,
            "source": self.source,
            "spec": self.spec.to_dict(),
            "settings": self.settings,
            "report": self.report,
        }
        text = json.dumps(meta, indent=2, sort_keys=True, default=_plain) + "\n"
        atomic_write_bytes(out / "dataset.json", text.encode())
        return out

    @classmethod
    def load(cls, folder: str | os.PathLike) -> Dataset:
        """Read a dataset folder (DatasetError on anything malformed; no pickle)."""
        f = Path(folder)
        try:
            meta = json.loads((f / "dataset.json").read_text(encoding="utf-8"))
            with np.load(f / "dataset.npz", allow_pickle=False) as z:
                arrays = {k: np.asarray(z[k]) for k in ARRAYS}
        except FileNotFoundError as exc:
            raise DatasetError(
                f"dataset {str(f)!r}: missing {Path(exc.filename).name} (expected a folder "
                "written by `liquid-control dataset`)"
            ) from None
        except (OSError, ValueError, KeyError, UnicodeDecodeError, zipfile.BadZipFile) as exc:
            raise DatasetError(f"dataset {str(f)!r} is unreadable: {exc}") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise DatasetError(f"dataset {str(f)!r}: expected format {FORMAT!r}")
        try:
            spec = InterfaceSpec.from_dict(meta["spec"])
        except (SpecError, KeyError, TypeError) as exc:
            raise DatasetError(f"dataset {str(f)!r}: bad spec: {exc}") from None
        n = arrays["dt"].shape[0] if arrays["dt"].ndim == 1 else -1
        want = {
            "obs": (n, spec.obs_dim),
            "action": (n, spec.action_dim),
            "dt": (n,),
            "t": (n,),
            "episode": (n,),
            "reset": (n,),
        }
        for k, shape in want.items():
            a = arrays[k]
            if a.shape != shape or a.dtype.kind not in "fiub":
                raise DatasetError(
                    f"dataset {str(f)!r}: {k} has shape {a.shape} {a.dtype}, expected {shape}"
                )
            if not np.isfinite(a).all():
                raise DatasetError(f"dataset {str(f)!r}: {k} holds NaN or Inf")
        if (arrays["dt"] <= 0).any() or (np.diff(arrays["episode"]) < 0).any():
            raise DatasetError(
                f"dataset {str(f)!r}: expected dt > 0 and episode indices in increasing order"
            )
        return cls(
            spec,
            arrays["obs"].astype(np.float64),
            arrays["action"].astype(np.float64),
            arrays["dt"].astype(np.float64),
            arrays["t"].astype(np.float64),
            arrays["episode"].astype(np.int64),
            arrays["reset"].astype(bool),
            str(meta.get("source", "")),
            dict(meta.get("settings") or {}),
            dict(meta.get("report") or {}),
        )


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def load_spec(path: str | os.PathLike) -> InterfaceSpec:
    """The interface spec of a policy file (.lcp) or of a spec file (JSON or YAML)."""
    p = Path(path)
    if p.suffix == ".lcp":
        from ..core.policy import Policy
        from ..core.policy_file import PolicyFileError

        try:
            return Policy.load(p).spec
        except (PolicyFileError, OSError) as exc:
            raise DatasetError(f"--spec {str(p)!r}: {exc}") from None
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise DatasetError(f"--spec {str(p)!r}: {exc.strerror or exc}") from None
    try:
        if p.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as exc:  # noqa: BLE001 (a parser's own error type, from a user's file)
        raise DatasetError(f"--spec {str(p)!r} does not parse: {exc}") from None
    if isinstance(data, dict) and "spec" in data and "observations" not in data:
        data = data["spec"]
    try:
        return InterfaceSpec.from_dict(data)
    except (SpecError, TypeError, KeyError, AttributeError) as exc:
        raise DatasetError(f"--spec {str(p)!r}: {exc}") from None


# --------------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------------
@dataclass
class _TopicLog:
    """What one topic of one bag held."""

    msg_type: str
    messages: int = 0
    valid: int = 0
    undecodable: int = 0
    duplicates: int = 0
    before_clock: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    events: list[str] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    values: list[np.ndarray] = field(default_factory=list)
    segments: list[int] = field(default_factory=list)
    valid_times: list[float] = field(default_factory=list)
    last_stamp: Any = None

    def bad(self, reason: str, t: float | None, detail: str, rejected: bool = True) -> None:
        """Count a message left out (`rejected`: by the message table's checks) and keep the
        first few of each reason with their times."""
        if rejected:
            self.rejected[reason] = self.rejected.get(reason, 0) + 1
        if sum(1 for e in self.events if e.startswith(reason + " ")) < SHOWN_EVENTS:
            at = f"t={t:.3f} s" if t is not None else "before the first /clock"
            self.events.append(f"{reason} at {at}: {detail}"[:300])

    def accept(self, m: Any, t: float | None) -> bool:
        """Count `m` (a BagMessage at time `t`); False for one that did not decode, came before
        the first /clock, or repeats the stamp of the one before."""
        self.messages += 1
        if m.msg is None:
            self.undecodable += 1
            self.bad("undecodable", t, m.error or "", rejected=False)
            return False
        if t is None:
            self.before_clock += 1
            return False
        # a repeated header stamp is a duplicate; messages without a header cannot be told
        # from a legitimate repeat (two equal commands within one /clock step), so they pass
        stamp = _stamp_of(m.msg)
        if stamp is not None and stamp == self.last_stamp:
            self.duplicates += 1
            self.bad("duplicate", t, "same header stamp as the message before", rejected=False)
            return False
        self.last_stamp = stamp
        return True

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": self.msg_type,
            "messages": self.messages,
            "valid": self.valid,
        }
        span = self.valid_times[-1] - self.valid_times[0] if self.valid > 1 else 0.0
        if span > 0:  # (valid messages over their own span; a clock jump back makes it rough)
            out["rate_hz"] = round((self.valid - 1) / span, 3)
        for k in ("undecodable", "duplicates", "before_clock"):
            if getattr(self, k):
                out[k] = getattr(self, k)
        if self.rejected:
            out["rejected"] = dict(sorted(self.rejected.items()))
        if self.events:
            out["first_problems"] = list(self.events)
        return out


def _stamp_of(msg: Any) -> tuple[int, int] | None:
    header = getattr(msg, "header", None)
    stamp = getattr(header, "stamp", None)
    if stamp is None:
        return None
    return int(stamp.sec), int(stamp.nanosec)


def _is_topic(name: str, suffix: str) -> bool:
    return name.rstrip("/").endswith("/" + suffix)


def build_dataset(
    bags: Sequence[str | os.PathLike], spec: InterfaceSpec, settings: SamplingSettings | None = None
) -> Dataset:
    """Read `bags` into a dataset for `spec` (DatasetError when nothing usable is there)."""
    s = settings or SamplingSettings()
    s.check()
    if not bags:
        raise DatasetError("expected at least one bag")
    parts: list[dict[str, Any]] = []
    bag_reports = []
    for path in bags:
        try:
            with Bag.open(path) as bag:
                part, rep = _read_one(bag, spec, s)
        except BagError as exc:
            raise DatasetError(str(exc)) from None
        parts.append(part)
        bag_reports.append(rep)
    sources = {p["source"] for p in parts}
    obs = np.concatenate([p["obs"] for p in parts]).reshape(-1, spec.obs_dim)
    act = np.concatenate([p["action"] for p in parts]).reshape(-1, spec.action_dim)
    dt = np.concatenate([p["dt"] for p in parts])
    t = np.concatenate([p["t"] for p in parts])
    reset = np.concatenate([p["reset"] for p in parts]).astype(bool)
    episode, offset = [], 0
    for p in parts:
        e = p["episode"]
        episode.append(e + offset)
        offset += int(e.max()) + 1 if e.size else 0
    ep = np.concatenate(episode).astype(np.int64) if episode else np.zeros(0, np.int64)
    if ep.size:  # renumber 0..E-1 (dropped short episodes leave holes)
        _, ep = np.unique(ep, return_inverse=True)
    report = {
        "bags": bag_reports,
        "ticks_kept": int(dt.size),
        "episodes": int(ep.max()) + 1 if ep.size else 0,
        "duration_s": round(float(dt.sum()), 3),
    }
    if not dt.size:
        reasons = "; ".join(_why_empty(r) for r in bag_reports)
        raise DatasetError(f"no usable ticks in {[str(b) for b in bags]}: {reasons}")
    settings_out = asdict(s)
    settings_out["rate_hz"] = s.rate_hz or spec.control_rate_hz
    return Dataset(
        spec, obs, act, dt, t, ep, reset, "+".join(sorted(sources)), settings_out, report
    )


def _why_empty(rep: dict[str, Any]) -> str:
    dropped = rep.get("ticks_dropped") or {}
    if dropped:
        return f"{rep['bag']}: every tick dropped ({dropped})"
    return f"{rep['bag']}: no ticks"


@dataclass
class _Roles:
    """Which bag topics play which part."""

    inputs: list[str]
    outputs: list[str]
    debug: str | None
    estops: list[str]
    resets: list[str]
    clock: bool

    @property
    def read(self) -> list[str]:
        main = [self.debug] if self.debug else [*self.inputs, *self.outputs]
        return main + self.estops + self.resets + (["/clock"] if self.clock else [])


def _roles(bag: Bag, spec: InterfaceSpec, s: SamplingSettings) -> _Roles:
    have = {t: b.msg_type for t, b in bag.topics.items()}
    where = f"bag {str(bag.path)!r}"
    for t, want in {**spec.observation_topics(), **spec.action_topics()}.items():
        if t in have and have[t] != want:
            raise DatasetError(f"{where}: topic {t} holds {have[t]}, the spec reads {want}")

    def named(typ: str, chosen: str | None, suffix: str) -> list[str]:
        return [
            t
            for t, k in sorted(have.items())
            if k == typ and (t == chosen or (chosen is None and _is_topic(t, suffix)))
        ]

    debug = named("std_msgs/Float64MultiArray", None, "observation")
    if s.source == "debug" and not debug:
        raise DatasetError(
            f"{where}: --source debug, but no .../observation debug topic (topics: {sorted(have)})"
        )
    use_debug = debug[0] if debug and s.source != "sampled" else None
    clock = have.get("/clock") == "rosgraph_msgs/Clock"
    if s.time_base == "clock" and not clock:
        raise DatasetError(f"{where}: --time clock, but the bag has no /clock")
    roles = _Roles(
        list(spec.observation_topics()),
        list(spec.action_topics()),
        use_debug,
        named("std_msgs/Bool", s.estop_topic, "estop"),
        named("std_msgs/String", s.reset_topic, "episode"),
        clock and s.time_base != "log",
    )
    missing = [t for t in roles.inputs + roles.outputs if t not in have]
    if missing and not use_debug:
        ended = f"; {bag.truncated}" if bag.truncated else ""
        raise DatasetError(
            f"{where}: missing topics {missing} of the spec (the bag has {sorted(have)}{ended})"
        )
    return roles


def _read_one(bag: Bag, spec: InterfaceSpec, s: SamplingSettings) -> tuple[dict, dict]:
    roles = _roles(bag, spec, s)
    report: dict[str, Any] = {
        "bag": str(bag.path),
        "storage": bag.storage,
        "time_base": "clock" if roles.clock else "log",
        "source": "debug" if roles.debug else "sampled",
    }
    assembler = ObservationAssembler(spec)
    commands = CommandReader(spec)
    logs = {t: _TopicLog(bag.topics[t].msg_type) for t in roles.read if t != "/clock"}
    events: list[tuple[float, int, str]] = []  # (time, segment, estop_on | estop_off | reset)
    jumps: list[tuple[float, float]] = []
    segment, now = 0, None

    def values_of(topic: str, msg: Any, t: float) -> np.ndarray | None:
        if topic in roles.estops:
            events.append((t, segment, "estop_on" if bool(msg.data) else "estop_off"))
            return None
        if topic in roles.resets:
            events.append((t, segment, "reset"))
            return None
        if topic == roles.debug:
            return _debug_row(msg, spec)
        if topic in commands.topics:
            return commands.read(topic, msg)
        return assembler.readers[topic].read(msg)

    for m in bag.messages(roles.read):
        if m.topic == "/clock":
            if m.msg is not None:
                c = m.msg.clock.sec + m.msg.clock.nanosec * 1e-9
                if now is not None and c < now:
                    jumps.append((now, c))
                    segment += 1
                now = c
            continue
        log = logs[m.topic]
        t = now if roles.clock else m.t_ns * 1e-9
        if not log.accept(m, t):
            continue
        try:
            values = values_of(m.topic, m.msg, t)
        except MessageRejected as exc:
            log.bad(exc.reason, t, exc.detail)
            continue
        log.valid += 1
        log.valid_times.append(t)
        if values is not None:
            log.times.append(t)
            log.values.append(values)
            log.segments.append(segment)
    report["topics"] = {k: v.summary() for k, v in sorted(logs.items())}
    report["clock_jumps_back"] = [f"{a:.3f} s -> {b:.3f} s" for a, b in jumps[:SHOWN_EVENTS]]
    report["truncated"] = bag.truncated
    if roles.debug:
        part = _debug_ticks(logs[roles.debug], spec, events, report, s.min_episode_s)
    else:
        part = _sampled_ticks(
            spec, s, assembler, commands, logs, roles, events, report, segment + 1
        )
    part["source"] = report["source"]
    return part, report


def _debug_row(msg: Any, spec: InterfaceSpec) -> np.ndarray:
    labels = tuple(d.label for d in msg.layout.dim)
    sizes = tuple(int(d.size) for d in msg.layout.dim)
    want = (1, 1, 1, spec.obs_dim, spec.action_dim)
    if labels != DEBUG_LABELS or sizes != want:
        raise MessageRejected(
            "wrong_layout",
            f"debug row layout {labels} sizes {sizes}, expected {DEBUG_LABELS} sizes {want} "
            "(a node running another spec?)",
        )
    data = np.asarray(msg.data, np.float64)
    if data.size != sum(want):
        raise MessageRejected(
            "wrong_length", f"debug row has {data.size} values, expected {sum(want)}"
        )
    if not np.isfinite(data).all():
        raise MessageRejected("non_finite", "debug row holds NaN or Inf")
    return data


def _empty(spec: InterfaceSpec) -> dict[str, np.ndarray]:
    return {
        "obs": np.zeros((0, spec.obs_dim)),
        "action": np.zeros((0, spec.action_dim)),
        "dt": np.zeros(0),
        "t": np.zeros(0),
        "episode": np.zeros(0, np.int64),
        "reset": np.zeros(0, bool),
    }


def _debug_ticks(
    log: _TopicLog, spec: InterfaceSpec, events: list, report: dict, min_episode_s: float
) -> dict[str, np.ndarray]:
    """Episodes from the node's own rows: a row with steps_since_reset 0 is a safe tick (left
    out), 1 starts an episode from the zero state; a jump in steps_since_reset is lost rows (the
    episode ends, and the next one starts with an unknown state). The tick count may jump
    without a lost row (a tick that published nothing, e.g. while waiting for inputs), so it is
    not used."""
    if not log.values:
        report["ticks_dropped"] = {}
        return _empty(spec)
    rows = np.array(log.values)
    since = rows[:, 2].astype(np.int64)
    seg = np.array(log.segments)
    keep = since >= 1
    new = np.ones(len(rows), bool)
    jump = (since[1:] > 1) & (since[1:] != since[:-1] + 1)
    new[1:] = (since[1:] == 1) | jump | (seg[1:] != seg[:-1])
    gaps = np.where(since[1:] > since[:-1], since[1:] - since[:-1] - 1, since[1:] - 1)
    lost = int(gaps[jump].sum()) if len(rows) > 1 else 0
    episode = np.cumsum(new) - 1
    o, n_obs = 3, spec.obs_dim
    times = np.array(log.times)
    estop = _estop_mask(times, seg, events)
    keep &= ~estop
    dropped = {"safe_action": int((since < 1).sum()), "estop": int((estop & (since >= 1)).sum())}
    if lost:
        dropped["lost_rows"] = lost
    report["ticks_dropped"] = {k: v for k, v in dropped.items() if v}
    return _min_length(
        {
            "obs": rows[keep, o : o + n_obs],
            "action": rows[keep, o + n_obs :],
            "dt": rows[keep, 1],
            "t": times[keep],
            "episode": episode[keep],
            "reset": (since == 1)[keep],
        },
        report,
        min_episode_s,
    )


def _estop_mask(times: np.ndarray, seg: np.ndarray, events: list) -> np.ndarray:
    """True where an estop was engaged (the newest estop sample before the time, same segment)."""
    mask = np.zeros(times.size, bool)
    state: dict[int, list[tuple[float, bool]]] = {}
    for t, g, kind in events:
        if kind.startswith("estop"):
            state.setdefault(g, []).append((t, kind == "estop_on"))
    for g, changes in state.items():
        ct = np.array([c[0] for c in changes])
        on = np.array([c[1] for c in changes])
        sel = seg == g
        idx = np.searchsorted(ct, times[sel], side="right") - 1
        mask[sel] = (idx >= 0) & on[np.clip(idx, 0, None)]
    return mask


def newest(
    times: np.ndarray, at: np.ndarray, max_age_s: float, strict: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """For each time in `at`: the index of the newest of the sorted `times` at or before it
    (strictly before with `strict`), and whether it exists and is at most `max_age_s` old.
    Times within 1 ns count as equal (log times are whole nanoseconds). Where none exists the
    index is 0 (and fresh is False)."""
    eps = 1e-9
    if strict:
        idx = np.searchsorted(times, at - eps, side="left") - 1
    else:
        idx = np.searchsorted(times, at + eps, side="right") - 1
    safe = np.clip(idx, 0, None)
    fresh = (idx >= 0) & (at - times[safe] <= max_age_s + eps) if times.size else idx >= 0
    return safe, fresh


def _sampled_ticks(
    spec: InterfaceSpec,
    s: SamplingSettings,
    assembler: ObservationAssembler,
    commands: CommandReader,
    logs: dict[str, _TopicLog],
    roles: _Roles,
    events: list,
    report: dict,
    n_segments: int,
) -> dict[str, np.ndarray]:
    rate = s.rate_hz or spec.control_rate_hz
    period = 1.0 / rate
    timeout = s.sensor_timeout_s
    cmd_timeout = s.command_timeout_s or timeout
    lag = s.label_lag_s or period
    inputs, outputs = roles.inputs, roles.outputs
    warnings = []
    for t in inputs:
        r = report["topics"][t].get("rate_hz")
        if r is not None and r * timeout < 1.0:
            warnings.append(
                f"{t} arrives at {r:g} Hz: slower than 1/sensor_timeout_s = {1 / timeout:g} Hz, so "
                "the node would see it stale between messages"
            )
    if warnings:
        report["warnings"] = warnings
    out = {k: [] for k in ARRAYS}
    dropped = {"stale_input": 0, "stale_command": 0, "estop": 0}
    episode = 0
    for g in range(n_segments):
        series = {}
        for topic in inputs + outputs:
            log = logs[topic]
            sel = np.array(log.segments, np.int64) == g
            times = np.array(log.times)[sel] if log.times else np.zeros(0)
            vals = np.array(log.values)[sel] if log.values else np.zeros((0, 0))
            series[topic] = (times, vals)
        if any(series[t][0].size == 0 for t in inputs + outputs):
            continue
        start = max(series[t][0][0] for t in inputs)
        end = max(series[t][0][-1] for t in inputs)
        n = int(math.floor((end - start) / period + 1e-9)) + 1
        if n <= 0:
            continue
        ticks = start + period * np.arange(n)
        ok = np.ones(n, bool)
        raw = np.zeros((n, spec.obs_dim))
        stale_in = np.zeros(n, bool)
        for topic in inputs:
            times, vals = series[topic]
            idx, fresh = newest(times, ticks, timeout)
            stale_in |= ~fresh
            raw[:, assembler.readers[topic].slots] = vals[idx]
        action = np.zeros((n, spec.action_dim))
        stale_cmd = np.zeros(n, bool)
        for topic in outputs:
            times, vals = series[topic]
            # the newest command received before the next tick (strictly before ticks + lag)
            idx, fresh = newest(times, ticks + lag, cmd_timeout, strict=True)
            stale_cmd |= ~fresh
            action[:, commands.topics[topic][0]] = vals[idx]
        estop = _estop_mask(ticks, np.full(n, g), events)
        ok = ~stale_in & ~stale_cmd & ~estop
        dropped["stale_input"] += int(stale_in.sum())
        dropped["stale_command"] += int((stale_cmd & ~stale_in).sum())
        dropped["estop"] += int((estop & ~stale_in & ~stale_cmd).sum())
        reset_times = np.array([t for t, gg, k in events if gg == g and k == "reset"])
        # a reset between two ticks starts a new episode, as does any dropped tick
        new = np.ones(n, bool)
        new[1:] = ~ok[:-1]
        if reset_times.size:
            k = np.searchsorted(ticks, reset_times, side="left")
            new[k[k < n]] = True
        ep = episode + np.cumsum(new) - 1
        episode = int(ep[-1]) + 1
        out["obs"].append(raw[ok])
        out["action"].append(action[ok])
        out["dt"].append(np.full(int(ok.sum()), period))
        out["t"].append(ticks[ok])
        out["episode"].append(ep[ok])
        # a node resets its state after a stale stretch, a reset or a clock jump; at the start
        # of the recording its state is unknown (a replay compares that episode after warm-up)
        reset = np.r_[True, ep[ok][1:] != ep[ok][:-1]] if ok.any() else ok[ok]
        if reset.size and g == 0 and ok[0]:
            reset[0] = False
        out["reset"].append(reset)
    report["ticks_dropped"] = {k: v for k, v in dropped.items() if v}
    if not out["dt"]:
        return _empty(spec)
    joined = {k: np.concatenate(v) for k, v in out.items()}
    return _min_length(joined, report, s.min_episode_s)


def _min_length(
    part: dict[str, np.ndarray], report: dict, min_episode_s: float
) -> dict[str, np.ndarray]:
    """Leave out episodes shorter than `min_episode_s` (counted)."""
    ep = part["episode"]
    if not ep.size:
        return part
    durations = np.bincount(ep, weights=part["dt"])
    short = durations[ep] < min_episode_s - 1e-9
    if short.any():
        report.setdefault("ticks_dropped", {})["short_episode"] = int(short.sum())
    return {k: v[~short] for k, v in part.items()}
