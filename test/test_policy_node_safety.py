"""The findings of the safety review, each reproduced over real DDS against the node's process:
a latched estop at start-up and after a reconfigure, a stalled or jumping /clock, floods and huge
messages, slow sensors, crafted files, and the smaller ones. The invariants behind them are
property-tested on the pure safety core (test_safety_core.py); these tests use generous time
windows, so that a loaded CI machine does not make them flaky.
"""

from __future__ import annotations

import os
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import rclpy.subscription as rclpy_subscription
from builtin_interfaces.msg import Time
from policy_fuzz import base_policy, write_raw
from ros_harness import Harness, NodeProcess, diagnostic_values, save_test_policy
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import JointState
from std_msgs.msg import Bool
from test_policy_node import SAFE, Sensors, debug_rows, joint_spec

from liquid_control.core import ObservationElement
from liquid_control.core.spec import InterfaceSpec
from liquid_control.ros.messages import LATCHED_QOS, SENSOR_QOS

pytestmark = [pytest.mark.ros, pytest.mark.timeout(240)]

NODE = "/safety_policy"
# rclpy from Kilted on reports each message's publisher (MessageInfo.publisher_gid)
PUBLISHER_IDS = "publisher_gid" in getattr(
    getattr(rclpy_subscription, "MessageInfo", None), "__annotations__", {}
)
BASE = {"safe_action": "spec", "sensor_timeout_s": 0.3, "debug": True}


def is_safe_cmd(data) -> bool:
    return np.allclose(data, SAFE)


class Rig:
    """A policy node process (its own name), a harness, recorders and a sensor source."""

    def __init__(self, tmp_path, h: Harness, params: dict, sensors: bool = True, **kw) -> None:
        self.path = tmp_path / "p.lcp"
        if not self.path.exists():
            save_test_policy(self.path, kw.pop("spec", joint_spec()), seed=0)
        self.h = h
        self.cmd = h.subscribe("/cmd", "std_msgs/Float64MultiArray", 1000)
        self.debug = h.subscribe(f"{NODE}/observation", "std_msgs/Float64MultiArray", 1000)
        self.diag = h.subscribe("/diagnostics", "diagnostic_msgs/DiagnosticArray")
        self.is_safe = h.subscribe(f"{NODE}/is_safe", "std_msgs/Bool", LATCHED_QOS)
        self.sensors = Sensors()
        if sensors:
            self.start_sensors()
        self.node = NodeProcess(
            "liquid_control.ros.policy_node",
            params={"policy_path": str(self.path), **BASE, **params},
            name=NODE[1:],
            log_dir=tmp_path,
            **kw,
        )

    def start_sensors(self, rate_hz: float = 100.0) -> None:
        self.h.publish_periodically("/joint_states", self.sensors.make, rate_hz, SENSOR_QOS)

    def policy_commands_since(self, t: float) -> list:
        return [m for m in self.cmd.since(t) if not is_safe_cmd(m.data)]

    def wait(self, condition, timeout_s: float, what: str):
        return self.h.wait_for(condition, timeout_s, what, self.node)

    def diagnostics(self, after: float, predicate=lambda v: True, timeout_s: float = 6.0):
        def found():
            for m in reversed(self.diag.since(after)):
                v = diagnostic_values(m, NODE[1:])
                if v and predicate(v):
                    return v
            return None

        return self.wait(found, timeout_s, "a matching /diagnostics message")

    def commanding(self, timeout_s: float = 30.0) -> None:
        self.wait(
            lambda: self.cmd.last is not None and not is_safe_cmd(self.cmd.last.data),
            timeout_s,
            "policy commands",
        )


def estop_publisher_process(engaged: bool, tmp_path) -> NodeProcess:
    """Another node holding a latched estop (what a robot's estop node does)."""
    code = textwrap.dedent(
        f"""
        import rclpy, time
        from rclpy.node import Node
        from std_msgs.msg import Bool
        from liquid_control.ros.messages import LATCHED_QOS
        rclpy.init()
        node = Node("estop_node")
        pub = node.create_publisher(Bool, "{NODE}/estop", LATCHED_QOS)
        pub.publish(Bool(data={engaged}))
        while rclpy.ok():
            rclpy.spin_once(node, timeout_sec=0.1)
        """
    )
    return NodeProcess(argv=[sys.executable, "-c", code], log_dir=tmp_path)


# --------------------------------------------------------------------------------------------
# 1. a latched estop at start-up and after a reconfigure
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("required", [True, False])
def test_a_latched_estop_holds_from_the_first_tick_and_through_a_reconfigure(tmp_path, required):
    """Finding 1: with ~/estop latched true by another node and sensors flowing, a (re)started
    node published 7-8 policy commands before "estop engaged". Now no policy command is ever
    published while the estop is engaged: not at start-up (estop required or not), not after
    deactivate -> cleanup -> configure -> activate."""
    with estop_publisher_process(True, tmp_path) as estop, Harness("safety_estop") as h:
        # The estop node is up before the policy node starts (with estop_required_at_start
        # false, an estop publisher that appears later than estop_discovery_s is, by design,
        # not waited for).
        h.wait_for(
            lambda: h.node.count_publishers(f"{NODE}/estop") >= 1, 30.0, "the estop node", estop
        )
        # (a discovery window a loaded CI machine meets: its DDS discovery of the estop node took
        # over the default 2 s there, and a node that has not found a latched estop publisher
        # within the window releases, by design; the window is the parameter for that)
        params = {"estop_required_at_start": required, "estop_discovery_s": 10.0}
        rig = Rig(tmp_path, h, params)
        with rig.node:
            t0 = time.monotonic()
            rig.wait(lambda: len(rig.cmd) >= 20, 30.0, "commands (the safe action)")
            assert rig.policy_commands_since(t0) == []
            rig.wait(lambda: rig.is_safe.last is not None, 5.0, "~/is_safe")
            assert rig.is_safe.last.data is True
            # What survives a reconfigure is the state the node heard: wait until it has heard
            # the latched estop (with estop_required_at_start false, a node whose DDS discovery
            # of the estop publisher takes longer than estop_discovery_s releases by design; CI
            # under load once saw that, as a release after the reconfigure).
            rig.wait(lambda: "estop engaged" in rig.node.log(), 30.0, "the node to hear the estop")
            assert rig.policy_commands_since(t0) == []
            for transition in ("deactivate", "cleanup", "configure", "activate"):
                assert h.change_state(NODE, transition)
            t1 = time.monotonic()
            rig.wait(lambda: len(rig.cmd.since(t1)) >= 20, 30.0, "commands after reconfigure")
            bad = [t for t, m in rig.cmd.timed_since(t0) if not is_safe_cmd(m.data)]
            assert bad == [], (
                f"policy commands while estop is engaged at {[round(t - t1, 3) for t in bad]} s "
                f"after the reconfigure\n{rig.node.log()[-3000:]}"
            )
            v = rig.diagnostics(t1, lambda v: v["safe_action_active"] == "True")
            assert "estop" in v["safe_action_reasons"], v["safe_action_reasons"]
        assert estop.running


def test_a_non_latched_estop_survives_reconfigure_and_a_control_process_restart(tmp_path):
    """The estop state is kept by the node's process: a one-off (volatile) estop message is not
    forgotten when the control process is replaced or the node reconfigured."""
    from liquid_control.ros.messages import RELIABLE_QOS

    with Harness("safety_estop_volatile") as h:
        rig = Rig(tmp_path, h, {"estop_required_at_start": False})
        with rig.node:
            rig.commanding()
            pub = h.publisher(f"{NODE}/estop", "std_msgs/Bool", RELIABLE_QOS)
            pub.publish(Bool(data=True))
            rig.wait(lambda: is_safe_cmd(rig.cmd.last.data), 10.0, "the safe action")
            for transition in ("deactivate", "cleanup", "configure", "activate"):
                assert h.change_state(NODE, transition)
            t1 = time.monotonic()
            rig.wait(lambda: len(rig.cmd.since(t1)) >= 30, 30.0, "commands after reconfigure")
            assert rig.policy_commands_since(t1) == []
            pid = int(rig.diagnostics(t1)["control_process"].split()[1])
            os.kill(pid, 9)
            t2 = time.monotonic()
            rig.diagnostics(t2, lambda v: v["control_process"] not in ("none", f"pid {pid}"), 10)
            t3 = time.monotonic()
            rig.wait(lambda: len(rig.cmd.since(t3)) >= 30, 30.0, "commands after the restart")
            assert rig.policy_commands_since(t2) == []
            pub.publish(Bool(data=False))
            rig.commanding()


# --------------------------------------------------------------------------------------------
# 2. a stalled or jumping clock, a livelock
# --------------------------------------------------------------------------------------------
class SimClock:
    def __init__(self, start_s: float = 10.0) -> None:
        self.ns = int(start_s * 1e9)
        self.step_ns = 10_000_000  # 10 ms per harness tick (at 100 Hz: real time)
        self.running = True

    def make(self):
        if not self.running:
            return None
        self.ns += self.step_ns
        return Clock(clock=Time(sec=self.ns // 10**9, nanosec=self.ns % 10**9))


def test_a_stopped_clock_gives_the_safe_action_and_diagnostics_go_on(tmp_path):
    """Finding 2(a): on sim time, /clock stopping (sim killed, or paused while sensors flow) left
    the last command standing and stopped /diagnostics. Now the watchdog publishes the safe
    action within watchdog_timeout_s, ~/is_safe turns true, diagnostics (on wall time) say ERROR
    with the cause; when the clock moves again the policy resumes."""
    with Harness("safety_clock_stop") as h:
        clock = SimClock()
        h.publish_periodically("/clock", clock.make, 100.0)
        rig = Rig(tmp_path, h, {"use_sim_time": True, "estop_required_at_start": False})
        with rig.node:
            rig.commanding()
            t_stop = time.monotonic()
            clock.running = False
            rig.wait(lambda: any(is_safe_cmd(m.data) for m in rig.cmd.since(t_stop)), 5.0, "safe")
            t_safe = next(t for t, m in rig.cmd.timed_since(t_stop) if is_safe_cmd(m.data))
            assert t_safe - t_stop < 0.5 + 0.5  # watchdog_timeout_s (auto: 0.5 s) + slack
            rig.wait(lambda: rig.is_safe.last.data is True, 5.0, "~/is_safe true")
            v = rig.diagnostics(time.monotonic() + 0.5, lambda v: v["_level"] == "2")
            assert "does not advance" in v["_message"] and "/clock" in v["_message"]
            t1 = time.monotonic()
            time.sleep(1.0)
            assert rig.policy_commands_since(t1) == [] and len(rig.cmd.since(t1)) >= 5
            clock.running = True
            rig.commanding()
            rig.wait(lambda: rig.is_safe.last.data is False, 5.0, "~/is_safe false")


def test_a_clock_jumping_back_restarts_the_loop_at_once_with_a_fresh_state(tmp_path):
    """Finding 2(b): /clock jumping back (16.5 s -> 1.8 s, a sim restart) stalled the loop for
    10-19 s and kept the hidden state. Now the next tick comes within a few periods of the jump,
    publishes the safe action once, and the policy resumes from a reset hidden state."""
    with Harness("safety_clock_jump") as h:
        clock = SimClock(16.0)
        h.publish_periodically("/clock", clock.make, 100.0)
        rig = Rig(tmp_path, h, {"use_sim_time": True, "estop_required_at_start": False})
        with rig.node:
            rig.commanding()
            rig.wait(lambda: clock.ns > 16.5e9, 10.0, "the clock past 16.5 s")
            t_jump = time.monotonic()
            clock.ns = int(1.8e9)
            rows = rig.wait(
                lambda: [r for r in debug_rows(rig.debug.since(t_jump)) if r["steps"] == 1],
                5.0,
                "a tick with a fresh hidden state after the jump",
            )
            first = rows[0]
            t_first = next(
                t for t, m in rig.debug.timed_since(t_jump) if debug_rows([m])[0]["steps"] == 1
            )
            assert t_first - t_jump < 1.0, f"the loop resumed {t_first - t_jump:.2f} s after"
            assert first["dt"] <= 5 * 0.02 + 1e-9  # elapsed clamped to max_dt_s (5 periods)
            # (the compiled tick's events reach the log from a thread of their own, shortly after)
            rig.wait(lambda: "clock jumped back" in rig.node.log(), 2.0, "the jump in the log")


def test_a_flood_of_huge_joint_states_cannot_hold_a_tick(tmp_path):
    """Finding 2(c): a second publisher sending valid 10k-name JointStates at 300 Hz livelocked
    the input take (one tick lasted 10 s). Now the takes are bounded per tick (count and time)
    and oversized messages are rejected before decoding: ticks keep their rate and the real
    sensor keeps driving the policy."""
    names = [f"joint_{i}" for i in range(10_000)]
    huge = JointState(name=names, position=[0.0] * 10_000, velocity=[0.0] * 10_000)
    with Harness("safety_huge") as h:
        rig = Rig(tmp_path, h, {"estop_required_at_start": False})
        with rig.node:
            rig.commanding()
            flood = h.node.create_publisher(JointState, "/joint_states", SENSOR_QOS)
            from rclpy.serialization import serialize_message

            raw = serialize_message(huge)
            t0 = time.monotonic()
            timer = h.node.create_timer(1.0 / 300.0, lambda: flood.publish(raw))
            time.sleep(3.0)
            timer.cancel()
            rows = debug_rows(rig.debug.since(t0 + 0.5))
            ticks = [r["tick"] for r in rows]
            assert len(rows) >= 0.6 * 2.5 * 50, f"{len(rows)} ticks in 2.5 s at 50 Hz"
            assert ticks == list(range(ticks[0], ticks[0] + len(ticks))), "rows lost"
            assert max(r["dt"] for r in rows) < 0.2, "a tick was held"
            # the real sensor keeps driving the policy: on a loaded machine the flood can delay
            # the harness's own sensor publisher (same process) past the staleness limit, and
            # the node then rightly commands the safe action for a few ticks (seen once on CI)
            safe = sum(is_safe_cmd(r["action"]) for r in rows)
            assert safe <= 0.1 * len(rows), f"{safe} of {len(rows)} ticks commanded the safe action"
            v = rig.diagnostics(time.monotonic())
            assert int(v.get("rejected_too_large", 0)) > 100


# --------------------------------------------------------------------------------------------
# 4. floods of bad messages
# --------------------------------------------------------------------------------------------
FLOODER = textwrap.dedent(
    """
    import math, sys, time, rclpy
    from rclpy.node import Node
    from rclpy.serialization import serialize_message
    from sensor_msgs.msg import JointState
    from liquid_control.ros.messages import SENSOR_QOS
    rclpy.init()
    node = Node("flooder")
    pub = node.create_publisher(JointState, "/joint_states", SENSOR_QOS)
    raw = serialize_message(JointState(name=["j1", "j0"], position=[math.nan, 0.0],
                                       velocity=[0.0, 0.0]))
    time.sleep(1.0)
    rate, t0 = float(sys.argv[2]), time.monotonic()
    end, n = t0 + float(sys.argv[1]), 0
    while (now := time.monotonic()) < end:
        due = int((now - t0) * rate)  # paced: `rate` messages per second
        while n < due:
            pub.publish(raw)
            n += 1
        time.sleep(0.0005)
    print(f"published {n}", flush=True)
    """
)


def test_a_nan_flood_does_not_push_valid_samples_out_and_is_named(tmp_path):
    """Finding 4: a 21 kHz NaN flood from a second publisher pushed the valid samples out of
    the 5-deep queue (79 % of commands were the safe action), and only what was taken was
    counted. Now a reader thread keeps the newest valid sample per topic, a publisher that sends
    only rejected messages is quarantined (taken, not decoded), the policy keeps commanding, and
    diagnostics name the flooded topic with its rate, drops and rejections. (A flood faster than
    the reader can take, ~300 kHz of pre-serialized messages here, leaves the valid samples too
    few: the inputs go stale and the node holds the safe action, it never commands on bad data.)"""
    with Harness("safety_flood") as h:
        rig = Rig(tmp_path, h, {"estop_required_at_start": False})
        with rig.node:
            rig.commanding()
            flood = NodeProcess(
                argv=[sys.executable, "-c", FLOODER, "4.0", "21000"],
                log_dir=tmp_path,
                name="flooder",
            )
            with flood:
                time.sleep(2.0)
                t0 = time.monotonic()
                time.sleep(2.5)
                during = rig.cmd.since(t0)
                v = rig.diagnostics(t0, lambda v: v.get("flooded_inputs"))
                flood.proc.wait(20)
                published = int(flood.log().split("published")[-1])
            rate = published / 4.0
            safe = sum(is_safe_cmd(m.data) for m in during)
            assert len(during) >= 50, f"{len(during)} commands in 2.5 s"
            assert safe <= 0.1 * len(during), f"{safe} of {len(during)} were the safe action"
            assert "/joint_states" in v["flooded_inputs"], v
            # rclpy from Kilted on reports who sent each message; the compiled tick reads it from
            # the middleware on every distribution
            if PUBLISHER_IDS or v.get("control_tick") == "compiled":
                assert int(v["rejected_non_finite"]) >= 50
                assert int(v["rejected_quarantined"]) > 1000
            else:
                assert int(v["rejected_non_finite"]) > 1000
            print(f"flood: {rate:.0f} msg/s, {safe}/{len(during)} safe, {v['flooded_inputs']}")


# --------------------------------------------------------------------------------------------
# 5. sensors slower than the timeout
# --------------------------------------------------------------------------------------------
def test_a_slow_sensor_does_not_make_the_output_chatter_and_is_named(tmp_path):
    """Finding 5: a 3 Hz sensor with sensor_timeout_s 0.25 made the output toggle 60 times in
    10 s. With resume_after_fresh_samples (3) the policy resumes only after three fresh samples
    in a row, so a sensor that is always late holds the safe action, and the log says why."""
    with Harness("safety_slow") as h:
        rig = Rig(tmp_path, h, {"estop_required_at_start": False, "sensor_timeout_s": 0.25})
        with rig.node:
            rig.commanding()
            rig.start_sensors(3.0)
            t0 = time.monotonic()
            time.sleep(4.0)
            flags = [is_safe_cmd(m.data) for m in rig.cmd.since(t0 + 0.5)]
            toggles = sum(a != b for a, b in zip(flags, flags[1:], strict=False))
            assert toggles <= 1, f"{toggles} safe/policy toggles in 3.5 s"
            log = rig.node.log()
            assert "slower than sensor_timeout_s 0.25 s" in log and "/joint_states" in log
            rig.start_sensors(100.0)
            rig.commanding()


# --------------------------------------------------------------------------------------------
# 3. crafted policy files never stop the node
# --------------------------------------------------------------------------------------------
def crafted(tmp_path, name: str, edit) -> str:
    import copy

    meta, tensors = base_policy(tmp_path / "p.lcp")
    meta = copy.deepcopy(meta)
    edit(meta)
    path = tmp_path / name
    write_raw(path, meta, tensors)
    return str(path)


def test_crafted_files_are_refused_as_swaps_and_the_node_keeps_commanding(tmp_path):
    """Finding 3: files with a valid hash but malformed metadata made the node's process exit
    with a traceback on a swap. Now each is refused with the field named, and a FIFO in the
    allowed folder is refused at once, without blocking the parameter service."""
    with Harness("safety_files") as h:
        rig = Rig(tmp_path, h, {"estop_required_at_start": False})
        with rig.node:
            rig.commanding()
            cases = {
                "adjacency.lcp": (
                    lambda m: m["wiring"]["adjacency"][0].__setitem__(0, 2**70),
                    "wiring.adjacency[0][0]",
                ),
                "observations.lcp": (
                    lambda m: m["spec"].update(observations=3),
                    "spec.observations: expected a list",
                ),
                "unfolds.lcp": (lambda m: m["model"].update(ode_unfolds=100000), "ode_unfolds"),
                "epsilon.lcp": (lambda m: m["model"].update(epsilon=-1e-8), "model.epsilon"),
                "rate.lcp": (
                    lambda m: m["spec"].update(control_rate_hz=1e308),
                    "spec.control_rate_hz",
                ),
            }
            for name, (edit, words) in cases.items():
                path = crafted(tmp_path, name, edit)
                (r,) = h.set_parameters(NODE, {"policy_path": path})
                assert not r.successful and words in r.reason, r.reason
                assert r.reason.count(path) == 1, f"the path is repeated: {r.reason}"
            fifo = tmp_path / "pipe.lcp"
            os.mkfifo(fifo)
            t0 = time.monotonic()
            (r,) = h.set_parameters(NODE, {"policy_path": str(fifo)})
            assert not r.successful and "FIFO" in r.reason
            assert time.monotonic() - t0 < 5.0
            rig.commanding()
            t1 = time.monotonic()
            time.sleep(1.0)
            assert rig.node.running and "Traceback" not in rig.node.log()
            assert len(rig.policy_commands_since(t1)) > 10


def test_a_crafted_start_up_file_fails_configure_with_the_reason_in_the_log(tmp_path):
    """As the start-up policy_path a crafted file left the node unconfigured with an empty log."""
    save_test_policy(tmp_path / "p.lcp", joint_spec(), seed=0)
    path = crafted(tmp_path, "bad.lcp", lambda m: m["spec"].update(extra=[1]))
    node = NodeProcess(
        "liquid_control.ros.policy_node",
        params={"policy_path": path},
        name="crafted_start",
        log_dir=tmp_path,
    )
    with node, Harness("safety_start") as h:
        h.wait_for(lambda: "configure failed" in node.log(), 30.0, "the configure error", node)
        assert "spec.extra: expected a mapping" in node.log()
        assert h.lifecycle_state("/crafted_start") == "unconfigured"
        assert node.running


# --------------------------------------------------------------------------------------------
# 6. the smaller ones
# --------------------------------------------------------------------------------------------
def test_a_field_path_the_message_lacks_is_refused_at_configure_and_swap(tmp_path):
    """A spec naming sensor_msgs/Imu angular_velocity.zz was accepted, then every message was
    rejected and the node waited forever."""
    spec = joint_spec()
    bad = InterfaceSpec(
        spec.robot,
        [
            *spec.observations,
            ObservationElement("gyro_z", "/imu", "sensor_msgs/Imu", "angular_velocity.zz"),
        ],
        spec.actions,
        spec.control_rate_hz,
        extra=spec.extra,
    )
    save_test_policy(tmp_path / "imu.lcp", bad, seed=1)
    node = NodeProcess(
        "liquid_control.ros.policy_node",
        params={"policy_path": str(tmp_path / "imu.lcp")},
        name="field_path",
        log_dir=tmp_path,
    )
    with node, Harness("safety_field") as h:
        h.wait_for(lambda: "configure failed" in node.log(), 30.0, "the configure error", node)
        assert "'gyro_z'" in node.log() and "angular_velocity.zz" in node.log()
        assert "which the message does not have" in node.log()


def test_silent_inputs_are_named_with_their_publisher_counts(tmp_path):
    """robot:=rover with the cart-pole policy waited silently; now, after input_wait_timeout_s,
    the log names each topic never heard and how many publishers it has."""
    with Harness("safety_silent") as h:
        rig = Rig(
            tmp_path,
            h,
            {"estop_required_at_start": False, "input_wait_timeout_s": 1.0},
            sensors=False,
        )
        with rig.node:
            rig.wait(lambda: "no message yet after 1 s" in rig.node.log(), 20.0, "the log line")
            assert "/joint_states (0 publishers)" in rig.node.log()
            assert len(rig.cmd) == 0


def test_duplicate_joint_names_are_rejected_and_errors_clear_after_a_success(tmp_path):
    with Harness("safety_small") as h:
        rig = Rig(tmp_path, h, {"estop_required_at_start": False})
        with rig.node:
            rig.commanding()
            dup = JointState(name=["j0", "j1", "j0"], position=[0.0] * 3, velocity=[0.0] * 3)
            for _ in range(5):
                h.publish("/joint_states", dup, SENSOR_QOS)
                time.sleep(0.02)
            v = rig.diagnostics(
                time.monotonic(), lambda v: int(v.get("rejected_duplicate_joint", 0)) >= 3
            )
            assert "appears twice" in v["last_rejection_duplicate_joint"]
            # A refused swap sets last_swap_error; a successful one (a relative path, looked up
            # in the allowed folder) clears it.
            (r,) = h.set_parameters(NODE, {"policy_path": "nope.lcp"})
            assert not r.successful and "looked up in allowed_policy_dirs" in r.reason
            assert rig.diagnostics(time.monotonic())["last_swap_error"]
            save_test_policy(tmp_path / "other.lcp", joint_spec(), seed=3)
            (r,) = h.set_parameters(NODE, {"policy_path": "other.lcp"})
            assert r.successful, r.reason
            v = rig.diagnostics(time.monotonic() + 0.5, lambda v: v["swaps"] == "1")
            assert v["last_swap_error"] == "" and v["active_policy"].endswith("other.lcp")


# --------------------------------------------------------------------------------------------
# 3. robot-mode features: fade-in, out-of-domain latch
# --------------------------------------------------------------------------------------------
def test_out_of_domain_observation_latches_the_safe_action_until_reset(tmp_path):
    spec = joint_spec()
    obs = [
        replace(e, domain_low=-1.0, domain_high=1.0) if e.name == "j0_position" else e
        for e in spec.observations
    ]
    save_test_policy(
        tmp_path / "p.lcp",
        InterfaceSpec(spec.robot, obs, spec.actions, spec.control_rate_hz, extra=spec.extra),
    )
    with Harness("safety_domain") as h:
        rig = Rig(tmp_path, h, {"estop_required_at_start": False})
        with rig.node:
            rig.commanding()
            rig.sensors.position["j0"] = 1.5  # a fallen robot, say
            rig.wait(lambda: is_safe_cmd(rig.cmd.last.data), 5.0, "the safe action")
            v = rig.diagnostics(time.monotonic(), lambda v: v["_level"] == "2")
            assert "j0_position" in v["latched"] and "outside its domain" in v["_message"]
            rig.sensors.position["j0"] = 0.3
            time.sleep(1.0)
            assert is_safe_cmd(rig.cmd.last.data), "the latch holds after the value returns"
            assert h.call(f"{NODE}/reset", "std_srvs/Trigger").success
            rig.commanding(10.0)


def test_fade_in_blends_from_the_safe_action_after_activation(tmp_path):
    with Harness("safety_fade") as h:
        rig = Rig(tmp_path, h, {"estop_required_at_start": False, "blend_s": 1.0})
        with rig.node:
            rig.wait(
                lambda: sum(r["steps"] > 0 for r in debug_rows(rig.debug.messages)) >= 40,
                30.0,
                "40 policy ticks",
            )
            rows = [r for r in debug_rows(rig.debug.messages) if r["steps"] > 0]
            # (a random policy's output is far from SAFE: the first commands sit near SAFE and
            # move away step by step)
            first = np.array([r["action"] for r in rows[:5]])
            assert np.abs(first[0] - SAFE).max() < 0.2
            assert np.all(np.abs(np.diff(np.array([r["action"] for r in rows[:40]]), axis=0)) < 0.2)


def test_the_safety_core_decides_in_core_and_ros_only_moves_data():
    """The control loop may not decide safety itself: limits, the rate limit and resets on
    resume live in core/safety.py (a review check, kept honest by a test)."""
    import liquid_control.ros.control_loop as loop

    src = Path(loop.__file__).read_text()
    for forbidden in ("max_action_rate", "np.clip(", "reset_on_resume", "sensor_timeout_s >"):
        assert forbidden not in src, forbidden
