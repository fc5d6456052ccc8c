"""The compiled control tick (ros/_ctick.c) against the Python tick (control_loop.py, the
reference): two policy nodes, one of each, on the same /clock (advanced one period at a time by
the test), the same JointState stream with bad messages, gaps and an estop, publish the same
command bytes and the same debug rows, tick for tick."""

from __future__ import annotations

import time

import numpy as np
import pytest
from builtin_interfaces.msg import Time
from rclpy.serialization import serialize_message
from ros_harness import Harness, NodeProcess, save_test_policy
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import JointState
from std_msgs.msg import Bool
from test_policy_node import joint_spec

from liquid_control.ros.messages import LATCHED_QOS, SENSOR_QOS
from liquid_control.ros.native_tick import tick_module

pytestmark = [
    pytest.mark.ros,
    pytest.mark.timeout(300),
    pytest.mark.skipif(tick_module()[0] is None, reason=f"compiled tick: {tick_module()[1]}"),
]
PERIOD_NS = 20_000_000  # the spec's 50 Hz
KINDS = ("py", "c")


def joint_state(rng: np.random.Generator, k: int) -> JointState:
    names = ["j1", "extra", "j0"]
    return JointState(
        name=names,
        position=[float(np.sin(0.05 * k)), 9.0, float(rng.normal(0, 0.5))],
        velocity=[float(rng.normal(0, 0.2)), 9.0, 0.1],
    )


def stream(n: int):
    """(sensor message or bytes or None, estop or None, clock jump s) per step."""
    rng = np.random.default_rng(7)
    steps = []
    for k in range(n):
        msg: object = joint_state(rng, k)
        if 40 <= k < 48:  # a gap longer than sensor_timeout_s: stale, then the hysteresis
            msg = None
        elif k % 17 == 5:  # a message with NaN (rejected: non_finite)
            bad = joint_state(rng, k)
            bad.position[0] = float("nan")
            msg = bad
        elif k % 23 == 7:  # truncated bytes (malformed)
            msg = serialize_message(joint_state(rng, k))[:-5]
        elif k % 29 == 11:  # a joint missing
            msg = JointState(name=["j1"], position=[0.1], velocity=[0.2])
        estop = True if k == 90 else False if k == 96 else None
        jump = -1.0 if k == 140 else 0.0
        steps.append((msg, estop, jump))
    return steps


def test_compiled_and_python_ticks_publish_the_same_bytes(tmp_path):
    path = tmp_path / "p.lcp"
    save_test_policy(path, joint_spec(), seed=0)
    params = {
        "policy_path": str(path),
        "use_sim_time": True,
        "safe_action": "spec",
        "sensor_timeout_s": 0.1,
        "resume_after_fresh_samples": 3,
        "max_action_rate": 5.0,
        "blend_s": 0.1,
        "watchdog_timeout_s": 5.0,  # (the wall-clock rule: the test steps the clock slowly)
        "debug": True,
    }
    with Harness("tick_parity") as h:
        clock_pub = h.publisher("/clock", "rosgraph_msgs/Clock")
        # (the node's topics are relative: /py/joint_states, /py/cmd; /c/...)
        js = {
            k: h.publisher(f"/{k}/joint_states", "sensor_msgs/JointState", SENSOR_QOS)
            for k in KINDS
        }
        estop = {
            k: h.publisher(f"/{k}/policy_node/estop", "std_msgs/Bool", LATCHED_QOS) for k in KINDS
        }
        cmd = {k: h.subscribe(f"/{k}/cmd", "std_msgs/Float64MultiArray", 1000) for k in KINDS}
        dbg = {
            k: h.subscribe(f"/{k}/policy_node/observation", "std_msgs/Float64MultiArray", 1000)
            for k in KINDS
        }
        now_ns = 10 * 10**9

        def send_clock() -> None:
            clock_pub.publish(Clock(clock=Time(sec=now_ns // 10**9, nanosec=now_ns % 10**9)))

        for k in KINDS:
            estop[k].publish(Bool(data=False))
        nodes = [
            NodeProcess(
                "liquid_control.ros.policy_node",
                params={**params, "compiled_tick": k == "c"},
                name="policy_node",
                namespace=f"/{k}",
                log_dir=tmp_path,
            )
            for k in KINDS
        ]
        try:
            for k in KINDS:
                h.wait_active(f"/{k}/policy_node", 60.0, nodes[KINDS.index(k)])
            # discovery: every subscription and publisher of both loops matched (volatile
            # messages sent before that would be lost), then a little more for the other side
            g = h.node
            h.wait_for(
                lambda: (
                    g.count_subscribers("/clock") >= 2
                    and all(g.count_subscribers(f"/{k}/joint_states") >= 1 for k in KINDS)
                    and all(g.count_publishers(f"/{k}/cmd") >= 1 for k in KINDS)
                    and all(g.count_publishers(f"/{k}/policy_node/observation") >= 1 for k in KINDS)
                ),
                20.0,
                "discovery",
            )
            time.sleep(1.0)
            # Both loops must hold the starting time before the first sensor message: a sample
            # is stamped with the newest /clock its loop has taken (best effort: say it often).
            for _ in range(25):
                send_clock()
                time.sleep(0.02)
            # which tick each runs (their logs; a Python tick serves no figures while the
            # clock stands still)
            for node, text in zip(
                nodes, ("python (compiled_tick is false)", "compiled"), strict=True
            ):
                h.wait_for(lambda n=node, t=text: f"control tick: {t}" in n.log(), 10.0, text, node)
            steps = stream(180)
            for i, (msg, engaged, jump) in enumerate(steps):
                if engaged is not None:
                    for k in KINDS:
                        estop[k].publish(Bool(data=engaged))
                if msg is not None:
                    for k in KINDS:
                        js[k].publish(msg)
                time.sleep(0.04)  # both take it (the reader thread, the compiled tick's poll)
                before = {k: len(cmd[k]) for k in KINDS}
                now_ns += PERIOD_NS + int(jump * 1e9)
                send_clock()
                h.wait_for(
                    lambda before=before: all(len(cmd[k]) > before[k] for k in KINDS),
                    5.0,
                    f"both nodes' commands of step {i} ({before}, {[len(cmd[k]) for k in KINDS]})",
                )
            time.sleep(0.2)
            # what the stream produced (not what stopping the nodes publishes: while one node
            # stops, the other's watchdog may see its /clock stopped and publish safe actions)
            a, b = list(cmd["py"].since(0)), list(cmd["c"].since(0))
            da, db = list(dbg["py"].since(0)), list(dbg["c"].since(0))
        finally:
            for n in nodes:
                n.stop()
        assert len(a) == len(b) >= 170, (len(a), len(b))
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert serialize_message(x) == serialize_message(y), (
                f"command {i}: {x.data} != {y.data}"
            )
        assert len(da) == len(db)
        for i, (x, y) in enumerate(zip(da, db, strict=True)):
            assert serialize_message(x) == serialize_message(y), (
                f"debug row {i}: {x.data} != {y.data}"
            )
        # the stream exercised the safety core: policy commands, safe actions and both again
        safe = [bool(np.allclose(m.data, [0.5, -0.5])) for m in a]
        assert any(safe) and not all(safe)
