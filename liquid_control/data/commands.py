"""`liquid-control dataset | replay | record` subcommands: bags -> datasets, offline policy
checks, and a recorder where `ros2 bag` is absent."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "dataset",
        help="turn rosbag2 bags (MCAP or sqlite3) into (observation, action, dt) episodes",
    )
    p.add_argument("bags", nargs="+", help="bag folders (or .mcap files)")
    p.add_argument("--spec", required=True, help="policy file (.lcp) or spec (JSON/YAML)")
    p.add_argument("--out", required=True, help="dataset folder to write")
    _sampling_args(p)
    p.add_argument("--plot", default=None, metavar="PNG", help="draw the channels")
    p.set_defaults(func=_dataset)

    p = subparsers.add_parser(
        "replay", help="run a policy on a bag's observations and compare with its commands"
    )
    p.add_argument("bag", help="bag folder (or .mcap file)")
    p.add_argument("policy", help="policy file (.lcp)")
    _sampling_args(p)
    p.add_argument("--plot", default=None, metavar="PNG", help="recorded vs replayed commands")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.set_defaults(func=_replay)
    _register_record(subparsers)


def _register_record(subparsers) -> None:
    p = subparsers.add_parser(
        "record",
        help="record a spec's topics into an MCAP bag over ROS (where `ros2 bag` is absent)",
    )
    p.add_argument("--spec", default=None, help="policy file (.lcp) or spec: record its topics")
    p.add_argument("-o", "--output", required=True, help="bag folder to create")
    p.add_argument("--topic", action="append", default=[], help="another topic (repeatable)")
    p.add_argument("--duration", type=float, default=None, help="seconds (default: until Ctrl-C)")
    p.add_argument("--use-sim-time", action="store_true", help="stamp with /clock time")
    p.set_defaults(func=_record)


def _record(args: argparse.Namespace) -> int:
    from .dataset import DatasetError, load_spec

    topics = []
    try:
        if args.spec:
            spec = load_spec(args.spec)
            topics += [*spec.observation_topics(), *spec.action_topics()]
        if args.duration is not None and not args.duration > 0:
            raise DatasetError(f"--duration: expected seconds > 0, got {args.duration}")
    except DatasetError as exc:
        return _fail("record", exc)
    topics += ["/clock", *args.topic]
    if len(topics) == 1 and not args.spec:
        return _fail("record", ValueError("expected --spec or at least one --topic"))
    from ..ros.recorder import record

    try:
        counts = record(args.output, topics, args.duration, args.use_sim_time)
    except FileExistsError as exc:
        return _fail("record", exc)
    for topic, n in sorted(counts.items()):
        print(f"{topic:<32} {n:>8} messages")
    missing = [t for t in topics if t not in counts and t != "/clock"]
    if missing:
        print(f"never published: {missing}")
    print(f"bag: {args.output}")
    return 0


def _sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", choices=("auto", "sampled", "debug"), default="auto",
                   help="debug: the node's ~/observation rows; sampled: the spec's topics "
                   "(auto: debug rows when the bag has them)")  # fmt: skip
    p.add_argument("--time", dest="time_base", choices=("auto", "clock", "log"), default="auto",
                   help="time base: /clock (auto when the bag has it) or the log time")  # fmt: skip
    p.add_argument("--rate", type=float, default=None, help="tick rate, Hz (default: the spec's)")
    p.add_argument("--sensor-timeout", type=float, default=0.25,
                   help="an input older than this (s) makes a tick stale, as on the node")  # fmt: skip
    p.add_argument("--min-episode", type=float, default=1.0, help="shortest episode kept, s")
    p.add_argument("--estop-topic", default=None, help="std_msgs/Bool estop (default .../estop)")


def _settings(args: argparse.Namespace) -> Any:
    from .dataset import SamplingSettings

    return SamplingSettings(
        rate_hz=args.rate,
        sensor_timeout_s=args.sensor_timeout,
        min_episode_s=args.min_episode,
        source=args.source,
        time_base=args.time_base,
        estop_topic=args.estop_topic,
    )


def _fail(command: str, exc: Exception) -> int:
    print(f"liquid-control {command}: {exc}", file=sys.stderr)
    return 2


def _dataset(args: argparse.Namespace) -> int:
    from .dataset import DatasetError, build_dataset, load_spec

    try:
        spec = load_spec(args.spec)
        data = build_dataset(args.bags, spec, _settings(args))
        out = data.save(args.out)
    except (DatasetError, OSError) as exc:
        return _fail("dataset", exc)
    print(format_report(data.report))
    if args.plot:
        plot_channels(data, args.plot)
        print(f"plot: {args.plot}")
    print(f"dataset: {out}")
    return 0


def _replay(args: argparse.Namespace) -> int:
    from ..core.policy import Policy
    from ..core.policy_file import PolicyFileError
    from ..core.spec import SpecError
    from .dataset import DatasetError, build_dataset
    from .replay import format_replay, replay

    try:
        policy = Policy.load(args.policy)
        data = build_dataset([args.bag], policy.spec, _settings(args))
        result = replay(policy, data)
    except (DatasetError, PolicyFileError, SpecError, OSError) as exc:
        return _fail("replay", exc)
    predicted = result.pop("predicted")
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(format_replay(result))
    if args.plot:
        plot_channels(data, args.plot, predicted)
        print(f"plot: {args.plot}")
    return 0


def format_report(report: dict[str, Any]) -> str:
    """A few lines per bag: what each topic held and what was left out, and why."""
    lines = []
    for b in report["bags"]:
        lines.append(f"{b['bag']} ({b['storage']}, {b['source']} data, {b['time_base']} time)")
        if b.get("truncated"):
            lines.append(f"  ! truncated: {b['truncated']}")
        for j in b.get("clock_jumps_back") or []:
            lines.append(f"  ! clock jumped back: {j}")
        for topic, t in b["topics"].items():
            bad = {k: t[k] for k in ("undecodable", "duplicates", "before_clock") if k in t}
            bad.update(t.get("rejected", {}))
            rate = f"{t['rate_hz']:g} Hz" if "rate_hz" in t else "-"
            lines.append(
                f"  {topic:<28} {t['type']:<28} {t['messages']:>7} msgs {rate:>10}"
                + (f"  dropped {bad}" if bad else "")
            )
            for e in t.get("first_problems", []):
                lines.append(f"      {e}")
        for w in b.get("warnings", []):
            lines.append(f"  ! {w}")
        if b.get("ticks_dropped"):
            lines.append(f"  ticks left out: {b['ticks_dropped']}")
    lines.append(
        f"kept {report['ticks_kept']} ticks ({report['duration_s']:.1f} s) in "
        f"{report['episodes']} episodes"
    )
    return "\n".join(lines)


def plot_channels(data: Any, path: str, predicted: Any = None) -> None:
    """Observations and actions against time, one panel per channel group; episodes shaded
    alternately; `predicted` actions drawn over the recorded ones."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    spec = data.spec
    rows = 2 + (predicted is not None)
    fig, axes = plt.subplots(rows, 1, figsize=(11, 2.6 * rows), sharex=True)
    t = data.t
    for k, sl in enumerate(data.episodes):
        for ax in axes:
            if k % 2:
                ax.axvspan(t[sl][0], t[sl][-1], color="0.93", lw=0)
    z = (data.obs - spec.obs_mean) / spec.obs_std
    for i, e in enumerate(spec.observations):
        axes[0].plot(t, z[:, i], ".", ms=1.5, label=e.name if i < 12 else None)
    axes[0].set_ylabel("observation\n(normalised)")
    axes[0].legend(fontsize=6, ncol=6, loc="upper right")
    for j, a in enumerate(spec.actions):
        axes[1].plot(t, data.action[:, j], ".", ms=2, label=f"{a.name} [{a.unit}]")
        if predicted is not None:
            axes[1].plot(t, predicted[:, j], ".", ms=1, color="k")
    axes[1].set_ylabel("recorded action")
    axes[1].legend(fontsize=7, loc="upper right")
    if predicted is not None:
        axes[2].plot(t, np.abs(predicted - data.action), ".", ms=1.5)
        axes[2].set_ylabel("|replayed - recorded|")
    axes[-1].set_xlabel("time (s); shaded: alternate episodes")
    fig.tight_layout()
    import io

    from ..core.policy_file import atomic_write_bytes

    buf = io.BytesIO()
    fig.savefig(buf, dpi=110, format="png")
    plt.close(fig)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buf.getvalue())
