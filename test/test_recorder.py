"""`liquid-control record` over real DDS: the rover sim node and the policy node run on sim time,
the recorder writes an MCAP bag of the spec's topics, /clock and the node's debug rows; the bag
reads back as a dataset both ways, survives conversion to sqlite3, and the replay of the node's
own rows reproduces the commands it published, exactly."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from ros_harness import Harness, NodeProcess

from liquid_control.core.policy import Policy
from liquid_control.data.dataset import SamplingSettings, build_dataset
from liquid_control.data.replay import replay

pytest.importorskip("rosbags")
pytestmark = pytest.mark.ros

ROOT = Path(__file__).resolve().parents[1]
ROVER = ROOT / "policies" / "rover_ltc19.lcp"


def to_sqlite3(src: Path, dst: Path) -> None:
    """Copy a bag into sqlite3 storage with rosbags (what `rosbags-convert` does)."""
    from rosbags.rosbag2 import Reader, StoragePlugin, Writer

    with Reader(src) as reader, Writer(dst, version=9, storage_plugin=StoragePlugin.SQLITE3) as w:
        conns = {}
        for c in reader.connections:
            conns[c.id] = w.add_connection(
                c.topic, c.msgtype, msgdef=c.msgdef.data, rihs01=c.digest
            )
        for c, t, raw in reader.messages():
            w.write(conns[c.id], t, raw)


def _set_bool(value: bool):
    from std_srvs.srv import SetBool

    return SetBool.Request(data=value)


def test_recorded_bag_gives_datasets_and_an_exact_replay(tmp_path):
    bag = tmp_path / "demo_bag"
    policy = Policy.load(ROVER)
    with Harness("recorder_test") as h:
        # the sim starts paused: the node's first tick (on sim time) comes after the recorder
        # hears its debug rows, so the recording holds the node's run from its start
        sim = NodeProcess(
            "liquid_control.ros.sim_node",
            overrides={"robot": "rover", "seed": 3, "track_seed": 1, "start_paused": True},
            log_dir=tmp_path,
        )
        node = NodeProcess(
            "liquid_control.ros.policy_node",
            overrides={
                "policy_path": str(ROVER),
                "use_sim_time": True,
                "debug": True,
                "estop_required_at_start": False,
                "estop_discovery_s": 0.0,
            },
            log_dir=tmp_path,
        )
        recorder = subprocess.Popen(
            [sys.executable, "-m", "liquid_control.cli", "record", "--spec", str(ROVER),
             "-o", str(bag), "--duration", "14", "--use-sim-time",
             "--topic", "/policy_node/observation", "--topic", "/policy_node/estop"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        try:
            h.wait_active("/policy_node", 60.0, node)
            h.wait_for(
                lambda: any(
                    i.node_name == "liquid_control_recorder"
                    for i in h.node.get_subscriptions_info_by_topic("/policy_node/observation")
                ),
                30,
                "the recorder subscribed to the debug rows",
                node,
            )
            time.sleep(2.0)  # (each side matches the other's endpoints a little later)
            h.call("/sim_node/pause", "std_srvs/SetBool", _set_bool(False), timeout_s=30)
            out, _ = recorder.communicate(timeout=60)
            assert recorder.returncode == 0, out
            assert sim.running and node.running
        finally:
            if recorder.poll() is None:
                recorder.kill()
            node.stop()
            sim.stop()
    assert (bag / "metadata.yaml").exists() and len(list(bag.glob("*.mcap"))) == 1

    # rosbags reads it on its own (the definitions come from the bag)
    from rosbags.highlevel import AnyReader

    with AnyReader([bag]) as reader:
        topics = {c.topic: c.msgtype for c in reader.connections}
        assert reader.message_count > 300
    assert topics["/scan"] == "sensor_msgs/msg/LaserScan"
    # the publishers' QoS, as ros2 bag stores it (the debug rows: reliable, volatile)
    import yaml

    info = yaml.safe_load((bag / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    qos = {
        t["topic_metadata"]["name"]: t["topic_metadata"]["offered_qos_profiles"]
        for t in info["topics_with_message_count"]
    }
    debug_qos = qos["/policy_node/observation"]
    assert [(q["reliability"], q["durability"]) for q in debug_qos] == [("reliable", "volatile")]
    # one profile per publisher the recorder saw when it subscribed (the commands may have two:
    # the control process and the node's watchdog, which publishes the safe action itself)
    assert all(len(qos[t]) >= 1 for t in ("/scan", "/odom", "/imu", "/cmd_vel")), qos
    assert topics["/policy_node/observation"] == "std_msgs/msg/Float64MultiArray"

    debug = build_dataset([bag], policy.spec)
    assert debug.source == "debug" and debug.report["bags"][0]["time_base"] == "clock"
    assert debug.dt.size >= 100 and debug.reset[0], debug.report
    result = replay(policy, debug)
    result.pop("predicted")
    why = {"replay": result, "dataset": debug.report, "starts": debug.reset.nonzero()[0].tolist()}
    assert result["compared_ticks"] == debug.dt.size, why
    assert result["max_abs_diff"] == 0.0, why

    sampled = build_dataset([bag], policy.spec, SamplingSettings(source="sampled"))
    assert sampled.source == "sampled"
    assert sampled.dt.size >= 0.8 * debug.dt.size, sampled.report
    # the sampled observations follow the node's: the row nearest in time to a sampled tick
    # saw nearly the same (the phase of the ticks against the sensors differs)
    near = np.abs(debug.t[None, :] - sampled.t[:, None]).argmin(1)
    names = [e.name for e in policy.spec.observations]
    for name in ("forward_speed", "yaw_rate"):
        j = names.index(name)
        assert np.corrcoef(sampled.obs[:, j], debug.obs[near, j])[0, 1] > 0.8, name

    sqlite = tmp_path / "demo_bag_sqlite3"
    to_sqlite3(bag, sqlite)
    again = build_dataset([sqlite], policy.spec)
    assert again.report["bags"][0]["storage"] == "sqlite3"
    np.testing.assert_array_equal(again.obs, debug.obs)
    np.testing.assert_array_equal(again.action, debug.action)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--spec", str(ROVER), "-o", "{tmp}"], "exists already"),
        (["-o", "{tmp}/bag"], "expected --spec or at least one --topic"),
        (["--spec", str(ROVER), "-o", "{tmp}/bag", "--duration", "-1"], "--duration"),
        (["--spec", "{tmp}/none.lcp", "-o", "{tmp}/bag"], "none.lcp"),
    ],
)
def test_record_errors_are_one_line_with_exit_code_2(tmp_path, args, message):
    r = subprocess.run(
        [sys.executable, "-m", "liquid_control.cli", "record",
         *[a.format(tmp=tmp_path) for a in args]],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 2 and message in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "bag").exists()
