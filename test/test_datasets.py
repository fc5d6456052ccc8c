"""Bags -> datasets: the node's sampling rule, bad data counted and left out, both storages,
the node's debug rows, the offline replay, and the CLI's errors. Real bags (rosbags' writer), the
rover's real spec."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from liquid_control.core.policy import Policy
from liquid_control.data.bag import Bag
from liquid_control.data.dataset import (
    Dataset,
    DatasetError,
    SamplingSettings,
    build_dataset,
    load_spec,
    newest,
)
from liquid_control.data.replay import replay

bags = pytest.importorskip("bags")  # test/bags.py (needs rosbags)

ROOT = Path(__file__).resolve().parents[1]
ROVER = ROOT / "policies" / "rover_ltc19.lcp"
SPEC = load_spec(ROVER)


def rover_messages(
    seconds: float = 10.0,
    t0: float = 0.0,
    cmd_delay_s: float = 0.005,
    skip: dict[str, tuple[float, float]] | None = None,
    nan_odom_at: tuple[float, ...] = (),
):
    """A rover recording: scan and odom at 20 Hz, imu at 100 Hz, the operator's command 5 ms
    after each scan. Values encode the tick: odom speed = 0.01 k, command = (0.01 k, -0.01 k)."""
    out = []
    for k in range(int(round(seconds * 20))):
        t = t0 + k * 0.05
        gap = [tp for tp, (a, b) in (skip or {}).items() if a <= t < b]
        if "/scan" not in gap:
            out.append(("/scan", t, bags.scan(t, np.full(40, 1.0 + 0.001 * k))))
        if "/odom" not in gap:
            speed = float("nan") if any(abs(t - x) < 1e-9 for x in nan_odom_at) else 0.01 * k
            out.append(("/odom", t, bags.odom(t, speed)))
        for j in range(5):
            if "/imu" not in gap:
                out.append(("/imu", t + 0.01 * j, bags.imu(t + 0.01 * j, 0.1 * k + 0.01 * j)))
        if "/cmd_vel" not in gap:
            out.append(("/cmd_vel", t + cmd_delay_s, bags.twist(0.01 * k, -0.01 * k)))
    return sorted(out, key=lambda m: m[1])


def test_sampling_takes_the_newest_message_and_the_command_that_answered_it(tmp_path):
    bag = bags.write_bag(tmp_path / "b", rover_messages())
    d = build_dataset([bag], SPEC)
    assert d.obs.shape == (200, SPEC.obs_dim) and len(d.episodes) == 1
    k = np.arange(200)
    names = [e.name for e in SPEC.observations]
    np.testing.assert_allclose(d.obs[:, names.index("forward_speed")], 0.01 * k)
    # the tick at 0.05 k sees the imu sample of that instant (0.1 k), not the one 10 ms later
    np.testing.assert_allclose(d.obs[:, names.index("yaw_rate")], 0.1 * k)
    np.testing.assert_allclose(d.obs[:, 0], 1.0 + 0.001 * k, rtol=1e-6)  # float32 ranges
    np.testing.assert_allclose(d.action, np.stack([0.01 * k, -0.01 * k], 1))
    np.testing.assert_allclose(d.dt, 0.05)
    assert not d.reset.any()  # (what ran before the recording began is unknown)
    topics = d.report["bags"][0]["topics"]
    assert topics["/imu"]["rate_hz"] == pytest.approx(100.0)
    assert topics["/scan"]["valid"] == 200


def test_mcap_and_sqlite3_bags_give_the_same_dataset(tmp_path):
    msgs = rover_messages(5.0)
    a = build_dataset([bags.write_bag(tmp_path / "m", msgs, "mcap")], SPEC)
    b = build_dataset([bags.write_bag(tmp_path / "s", msgs, "sqlite3")], SPEC)
    assert a.report["bags"][0]["storage"] == "mcap" and b.report["bags"][0]["storage"] == "sqlite3"
    for k in ("obs", "action", "dt", "t", "episode"):
        np.testing.assert_array_equal(getattr(a, k), getattr(b, k))


def test_a_gap_in_an_input_cuts_the_episode_and_is_counted(tmp_path):
    # odom silent from 3.0 to 4.0 s: ticks older than sensor_timeout_s (0.25) are stale
    msgs = rover_messages(10.0, skip={"/odom": (3.0, 4.0)})
    d = build_dataset([bags.write_bag(tmp_path / "b", msgs)], SPEC)
    assert len(d.episodes) == 2
    assert d.reset[d.episodes[1].start] and not d.reset[0]  # (a node resets after stale inputs)
    dropped = d.report["bags"][0]["ticks_dropped"]
    # the last odom before the gap is at 2.95 s: ticks 3.25 .. 3.95 (15) see it > 0.25 s old
    assert dropped == {"stale_input": 15}
    assert not np.any((d.t > 3.21) & (d.t < 3.99))


def test_nan_messages_are_rejected_by_topic_and_time_and_the_older_sample_is_used(tmp_path):
    msgs = rover_messages(5.0, nan_odom_at=(1.0, 2.5))
    d = build_dataset([bags.write_bag(tmp_path / "b", msgs)], SPEC)
    odom = d.report["bags"][0]["topics"]["/odom"]
    assert odom["rejected"] == {"non_finite": 2}
    assert odom["first_problems"][0].startswith("non_finite at t=1.000 s")
    assert np.isfinite(d.obs).all()
    i = int(np.argmin(np.abs(d.t - 1.0)))
    names = [e.name for e in SPEC.observations]
    assert d.obs[i, names.index("forward_speed")] == pytest.approx(0.19)  # the 0.95 s sample
    assert len(d.episodes) == 1  # one lost sample is within sensor_timeout_s


def test_a_missing_topic_is_one_clear_error(tmp_path):
    msgs = [m for m in rover_messages(2.0) if m[0] != "/imu"]
    with pytest.raises(DatasetError, match=r"missing topics \['/imu'\] of the spec"):
        build_dataset([bags.write_bag(tmp_path / "b", msgs)], SPEC)


def test_a_topic_too_slow_for_the_staleness_rule_is_reported(tmp_path):
    msgs = [m for m in rover_messages(10.0) if m[0] != "/odom"]
    msgs += [("/odom", t, bags.odom(t, 0.5)) for t in np.arange(0.0, 10.0, 0.5)]  # 2 Hz
    d = build_dataset(
        [bags.write_bag(tmp_path / "b", sorted(msgs, key=lambda m: m[1]))],
        SPEC,
        SamplingSettings(min_episode_s=0.0),
    )
    rep = d.report["bags"][0]
    assert any("/odom arrives at 2 Hz" in w for w in rep["warnings"])
    # odom every 0.5 s: in each 0.5 s, the ticks 0.30 .. 0.45 s after it (4 of 10) are stale
    assert rep["ticks_dropped"]["stale_input"] == 80


def test_duplicated_stamps_are_dropped_and_counted(tmp_path):
    msgs = rover_messages(3.0)
    dup = [m for m in msgs if m[0] == "/scan"][10]
    msgs.append(("/scan", dup[1] + 0.001, dup[2]))  # the same header stamp again
    d = build_dataset([bags.write_bag(tmp_path / "b", sorted(msgs, key=lambda m: m[1]))], SPEC)
    assert d.report["bags"][0]["topics"]["/scan"]["duplicates"] == 1
    assert d.obs.shape[0] == 60


def test_undecodable_messages_are_counted_not_fatal(tmp_path):
    msgs = rover_messages(3.0)
    t_bad = [m for m in msgs if m[0] == "/odom"][20][1]
    bag = bags.write_bag(tmp_path / "b", msgs, raw={("/odom", t_bad): b"\x00\x01\x00\x00\x07"})
    d = build_dataset([bag], SPEC)
    assert d.report["bags"][0]["topics"]["/odom"]["undecodable"] == 1
    assert d.obs.shape[0] == 60


def with_clock(msgs, clock_of):
    """Messages logged on the wall clock (t + 1000 s) with /clock giving sim time."""
    out = []
    for topic, t, m in msgs:
        out.append(("/clock", 1000.0 + t - 1e-4, bags.clock(clock_of(t))))
        out.append((topic, 1000.0 + t, m))
    return out


def test_sim_time_comes_from_clock_and_a_jump_back_starts_a_new_episode(tmp_path):
    # a sim restarted at 5 s of wall time: its clock goes from 5.0 back to 0.0
    msgs = with_clock(rover_messages(10.0), lambda t: t if t < 5.0 else t - 5.0)
    d = build_dataset([bags.write_bag(tmp_path / "b", msgs)], SPEC)
    rep = d.report["bags"][0]
    assert rep["time_base"] == "clock"
    assert rep["clock_jumps_back"] == ["4.990 s -> 0.000 s"]  # (the last imu sample before it)
    assert len(d.episodes) == 2
    assert d.t[0] == pytest.approx(0.0) and d.t.max() < 5.0  # sim seconds, not wall


def test_estop_and_resets_cut_episodes(tmp_path):
    msgs = rover_messages(10.0)
    msgs += [("/policy_node/estop", 2.0, bags.boolean(True))]
    msgs += [("/policy_node/estop", 3.0, bags.boolean(False))]
    msgs += [("/sim_node/episode", 7.02, bags.string('{"return": 1.0}'))]
    d = build_dataset([bags.write_bag(tmp_path / "b", sorted(msgs, key=lambda m: m[1]))], SPEC)
    assert d.report["bags"][0]["ticks_dropped"] == {"estop": 20}
    assert len(d.episodes) == 3
    starts = [d.t[sl][0] for sl in d.episodes]
    assert starts == pytest.approx([0.0, 3.0, 7.05])


def test_a_truncated_bag_is_read_up_to_where_it_ends(tmp_path):
    bag = bags.write_bag(tmp_path / "b", rover_messages(120.0))  # ~6 MB: several chunks
    whole = build_dataset([bag], SPEC)
    cut = tmp_path / "cut"
    shutil.copytree(bag, cut)
    f = next(cut.glob("*.mcap"))
    with open(f, "r+b") as fh:
        fh.truncate(f.stat().st_size // 2)
    d = build_dataset([cut], SPEC)
    rep = d.report["bags"][0]
    assert "ends early" in rep["truncated"]
    assert 0.2 * whole.obs.shape[0] < d.obs.shape[0] < 0.6 * whole.obs.shape[0]
    np.testing.assert_array_equal(d.obs, whole.obs[: d.obs.shape[0]])


def test_a_bag_without_metadata_still_reads_and_says_so(tmp_path):
    bag = bags.write_bag(tmp_path / "b", rover_messages(3.0))
    (bag / "metadata.yaml").unlink()
    d = build_dataset([bag], SPEC)
    assert "no metadata.yaml" in d.report["bags"][0]["truncated"]
    assert d.obs.shape[0] == 60
    with Bag.open(next(bag.glob("*.mcap"))) as b:  # the .mcap file alone opens too
        assert set(b.topics) == {"/scan", "/odom", "/imu", "/cmd_vel"}


def debug_rows(policy: Policy, n: int, resets_at=(), lost=(), idle_at=()):
    """Rows as the node publishes them (tick, dt, steps since reset, raw obs, action) from a
    policy stepped on random observations, with resets, lost rows, and ticks that published
    no row (the node's tick count goes on, its steps since reset do not)."""
    rng = np.random.default_rng(0)
    p = Policy.load(ROVER)
    dims = [("tick", 1), ("dt_s", 1), ("steps_since_reset", 1)]
    dims += [("observation", SPEC.obs_dim), ("action", SPEC.action_dim)]
    out, since, tick = [], 0, 0
    for k in range(n):
        tick += 1 + 3 * (k in idle_at)
        if k in resets_at or k == 0:
            p.reset()
            since = 0
        obs = SPEC.obs_mean + SPEC.obs_std * rng.normal(size=SPEC.obs_dim)
        dt = 0.05 + 0.002 * rng.normal()
        since += 1
        act = p.step(obs, dt)
        if k not in lost:
            row = [tick, dt, since, *obs, *act]
            out.append(("/policy_node/observation", k * 0.05, bags.float_array(row, dims)))
    return out


def test_debug_rows_replay_to_the_published_commands_exactly(tmp_path):
    policy = Policy.load(ROVER)
    msgs = debug_rows(policy, 300, resets_at=(100,), lost=(200,), idle_at=(50, 150))
    bag = bags.write_bag(tmp_path / "b", msgs)
    d = build_dataset([bag], SPEC)
    assert d.source == "debug"
    rep = d.report["bags"][0]
    assert rep["ticks_dropped"] == {"lost_rows": 1}
    # episodes: 0-99, 100-199, and 201-299 (after the lost row the state is unknown; its own
    # episode, and the replay from zero state cannot match it: left out of the exact check)
    assert [sl.stop - sl.start for sl in d.episodes] == [100, 100, 99]
    assert d.reset.tolist() == [k in (0, 100) for k in range(299)]
    result = replay(policy, d)
    # the third episode joined midway: compared after 2 s (40 ticks) of warm-up
    assert abs(result["compared_ticks"] - (200 + 99 - 40)) <= 2  # (dt has noise)
    assert np.abs(result["predicted"][:200] - d.action[:200]).max() == 0.0
    late = np.abs(result["predicted"][200:] - d.action[200:])
    assert late[:5].max() > 10 * late[40:].max(), (late[:5].max(), late[40:].max())


def test_dataset_round_trips_and_a_damaged_file_is_a_clear_error(tmp_path):
    d = build_dataset([bags.write_bag(tmp_path / "b", rover_messages(3.0))], SPEC)
    d.save(tmp_path / "data")
    e = Dataset.load(tmp_path / "data")
    np.testing.assert_array_equal(e.obs, d.obs)
    assert e.spec.to_dict() == d.spec.to_dict() and e.report == json.loads(json.dumps(d.report))
    meta = json.loads((tmp_path / "data" / "dataset.json").read_text())
    meta["spec"]["actions"] = meta["spec"]["actions"][:1]
    (tmp_path / "data" / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match=r"action has shape \(60, 2\)"):
        Dataset.load(tmp_path / "data")
    (tmp_path / "data" / "dataset.npz").write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(DatasetError, match="unreadable"):
        Dataset.load(tmp_path / "data")


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "liquid_control.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_dataset_and_replay(tmp_path):
    bag = bags.write_bag(tmp_path / "b", rover_messages(3.0, nan_odom_at=(1.0,)))
    r = cli("dataset", str(bag), "--spec", str(ROVER), "--out", str(tmp_path / "d"),
            "--plot", str(tmp_path / "d.png"))  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "dropped {'non_finite': 1}" in r.stdout and "kept 60 ticks" in r.stdout
    assert (tmp_path / "d.png").stat().st_size > 10_000
    r = cli("replay", str(bag), str(ROVER), "--json")
    assert r.returncode == 0, r.stderr
    assert set(json.loads(r.stdout)["channels"]) == {"forward_speed_cmd", "yaw_rate_cmd"}


@pytest.mark.parametrize(
    "args, message",
    [
        (["dataset", "{tmp}/none", "--spec", str(ROVER), "--out", "{tmp}/d"], "no such file"),
        (["dataset", "{bag}", "--spec", "{tmp}/none.lcp", "--out", "{tmp}/d"], "--spec"),
        (
            ["dataset", "{bag}", "--spec", str(ROVER), "--out", "{tmp}/d", "--source", "debug"],
            "no .../observation debug topic",
        ),  # fmt: skip
        (
            ["dataset", "{bag}", "--spec", str(ROVER), "--out", "{tmp}/d", "--rate", "-1"],
            "rate_hz: expected a number > 0",
        ),  # fmt: skip
        (["replay", "{bag}", "{tmp}/none.lcp"], "none.lcp"),
    ],
)
def test_cli_errors_are_one_line_with_exit_code_2(tmp_path, args, message):
    bag = bags.write_bag(tmp_path / "b", rover_messages(1.0))
    r = cli(*[a.format(tmp=tmp_path, bag=bag) for a in args])
    assert r.returncode == 2, r.stderr
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


@settings(max_examples=200, deadline=None)
@given(
    times=st.lists(st.integers(0, 10_000), min_size=0, max_size=40, unique=True),
    at=st.lists(st.integers(-100, 10_100), min_size=1, max_size=40),
    max_age=st.integers(0, 3000),
    strict=st.booleans(),
)
def test_newest_matches_a_brute_force_search(times, at, max_age, strict):
    t = np.array(sorted(times), np.float64) * 1e-3  # ms -> s
    a = np.array(at, np.float64) * 1e-3
    idx, fresh = newest(t, a, max_age * 1e-3, strict)
    for k, x in enumerate(a):
        before = [i for i, y in enumerate(t) if (y < x if strict else y <= x)]
        if not before:
            assert not fresh[k]
            continue
        i = before[-1]
        assert idx[k] == i
        assert fresh[k] == (x - t[i] <= max_age * 1e-3 + 1e-12)
