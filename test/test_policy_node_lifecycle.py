"""Policy node lifecycle (no autostart: driven through the lifecycle services), the hold safe
action, max_action_rate, nominal-dt stepping, and a policy whose output is non-finite."""

from __future__ import annotations

import time

import numpy as np
import pytest
from ros_harness import Harness, NodeProcess, diagnostic_values, save_test_policy
from sensor_msgs.msg import JointState
from test_policy_node import PERIOD_S, debug_rows, joint_spec

from liquid_control.core import Policy
from liquid_control.ros.messages import LATCHED_QOS, SENSOR_QOS

pytestmark = [pytest.mark.ros, pytest.mark.timeout(180)]

NODE = "/managed_policy"
MAX_RATE = 0.02  # units/s: binds for a random policy that starts at zero


def joint_state() -> JointState:
    return JointState(name=["j0", "j1"], position=[0.8, -0.4], velocity=[0.3, 0.2])


def test_lifecycle_transitions_hold_safe_action_rate_limit_and_nominal_dt(tmp_path):
    policy = tmp_path / "p.lcp"
    save_test_policy(policy, joint_spec(), seed=5)
    params = {
        "policy_path": str(policy),
        "autostart": False,
        "safe_action": "hold",
        "max_action_rate": MAX_RATE,
        "use_measured_dt": False,
        "debug": True,
        "estop_required_at_start": False,
    }
    with (
        NodeProcess(
            "liquid_control.ros.policy_node", params=params, name=NODE[1:], log_dir=tmp_path
        ) as node,
        Harness() as h,
    ):
        cmd = h.subscribe("/cmd", "std_msgs/Float64MultiArray")
        debug = h.subscribe(f"{NODE}/observation", "std_msgs/Float64MultiArray", 1000)
        active = h.subscribe(f"{NODE}/active_policy", "std_msgs/String", LATCHED_QOS)
        h.publish_periodically("/joint_states", joint_state, 100.0, SENSOR_QOS)

        assert h.lifecycle_state(NODE) == "unconfigured"
        assert h.change_state(NODE, "configure")
        assert h.lifecycle_state(NODE) == "inactive"
        h.wait_for(lambda: active.last is not None, 5.0, "~/active_policy", node)
        assert active.last.data.split()[-1] == Policy.load(policy).content_hash
        time.sleep(0.5)
        assert len(cmd) == 0, "an inactive node commanded"

        assert h.change_state(NODE, "activate")
        h.wait_for(lambda: len(debug) >= 40, 10.0, "40 ticks", node)
        rows = debug_rows(debug.messages)
        # use_measured_dt false: every step uses the nominal period, exactly.
        assert all(r["dt"] == PERIOD_S for r in rows)
        # max_action_rate: no element moves faster than MAX_RATE per nominal period, and the
        # limit binds (the unlimited policy moves faster).
        actions = np.array([r["action"] for r in rows])
        steps = np.abs(np.diff(actions, axis=0))
        # (The limit scales with the measured period, which jitters: generous bound per step.)
        assert steps.max() <= MAX_RATE * PERIOD_S * 5
        replay = Policy.load(policy)
        free = np.array([replay.step(r["obs"]) for r in rows])
        assert np.abs(free[-1] - free[0]).max() > 2 * np.abs(actions[-1] - actions[0]).max()

        assert h.change_state(NODE, "deactivate")
        assert h.lifecycle_state(NODE) == "inactive"
        time.sleep(0.6)
        # Every tick published one command and one debug row; deactivation added exactly one
        # command, the safe action "hold" (= the last action).
        ticks = debug_rows(debug.messages)
        assert len(cmd) == len(ticks) + 1, f"{len(cmd)} commands for {len(ticks)} ticks"
        np.testing.assert_array_equal(cmd.last.data, ticks[-1]["action"])
        n_inactive = len(cmd)
        time.sleep(0.4)
        assert len(cmd) == n_inactive, "commands after deactivation"

        assert h.change_state(NODE, "cleanup")
        assert h.lifecycle_state(NODE) == "unconfigured"
        assert h.change_state(NODE, "configure") and h.change_state(NODE, "activate")
        h.wait_for(lambda: len(cmd) > n_inactive + 5, 10.0, "commands after re-activation", node)
        assert h.change_state(NODE, "shutdown")
        assert h.lifecycle_state(NODE) == "finalized"
        time.sleep(0.3)
        n_final = len(cmd)
        time.sleep(0.4)
        assert len(cmd) == n_final
        assert "Traceback" not in node.log()


def test_configure_fails_cleanly_for_a_missing_policy(tmp_path):
    params = {"policy_path": str(tmp_path / "nope.lcp"), "autostart": False}
    with (
        NodeProcess(
            "liquid_control.ros.policy_node", params=params, name="bad_policy", log_dir=tmp_path
        ) as node,
        Harness() as h,
    ):
        assert not h.change_state("/bad_policy", "configure")
        assert h.lifecycle_state("/bad_policy") == "unconfigured"
        assert "nope.lcp" in node.log()


def test_non_finite_policy_output_is_never_published(tmp_path):
    """A valid file whose capacitance term cm/h sits at the float64 limit for a nominal step:
    the dry inference (nominal dt) is finite, but any step shorter than nominal overflows to NaN.
    The node publishes the safe action instead of NaN and reports the error."""
    spec = joint_spec()
    policy = tmp_path / "nan.lcp"
    save_test_policy(policy, spec, seed=6)
    p = Policy.load(policy)
    p.params["cm"] = np.full(p.params["cm"].shape, np.finfo(float).max / p.ode_unfolds * (1 - 1e-9))
    Policy(p.wiring, p.params, spec).save(policy, dtype="float64")
    with np.errstate(all="ignore"):
        assert np.isfinite(Policy.load(policy).step(np.zeros(spec.obs_dim))).all()
        assert not np.isfinite(
            Policy.load(policy).step(np.zeros(spec.obs_dim), 0.99 * PERIOD_S)
        ).all()

    params = {"policy_path": str(policy), "safe_action": "zero", "estop_required_at_start": False}
    with (
        NodeProcess(
            "liquid_control.ros.policy_node", params=params, name="nan_policy", log_dir=tmp_path
        ) as node,
        Harness() as h,
    ):
        cmd = h.subscribe("/cmd", "std_msgs/Float64MultiArray")
        diag = h.subscribe("/diagnostics", "diagnostic_msgs/DiagnosticArray")
        h.publish_periodically("/joint_states", joint_state, 100.0, SENSOR_QOS)

        def errored():
            values = [diagnostic_values(m, "nan_policy") for m in diag.messages]
            return next((v for v in values if v and v["_level"] == "2"), None)

        d = h.wait_for(errored, 20.0, "a diagnostics error", node)
        assert int(d["non_finite_outputs"]) > 0 and "non-finite" in d["last_error"]
        assert "non-finite" in d["_message"]
        h.wait_for(lambda: len(cmd) > 20, 10.0, "20 commands", node)
        assert all(np.isfinite(m.data).all() for m in cmd.messages)
        assert any(list(m.data) == [0.0, 0.0] for m in cmd.messages)


def test_loop_follows_clock_with_use_sim_time(tmp_path):
    """With use_sim_time the loop ticks on /clock: at twice real time it commands twice as
    often, steps by simulated seconds, and stops ticking when the clock stops (the watchdog then
    publishes the safe action: test_policy_node_watchdog.py)."""
    from builtin_interfaces.msg import Time
    from rosgraph_msgs.msg import Clock

    policy = tmp_path / "p.lcp"
    save_test_policy(policy, joint_spec(), seed=0)  # 50 Hz
    params = {
        "policy_path": str(policy),
        "use_sim_time": True,
        "debug": True,
        "sensor_timeout_s": 0.5,
        "estop_required_at_start": False,
    }
    sim_ns = [10**9]

    def clock() -> Clock:
        sim_ns[0] += 10_000_000  # 10 ms of simulation per 5 ms of wall time
        return Clock(clock=Time(sec=sim_ns[0] // 10**9, nanosec=sim_ns[0] % 10**9))

    with (
        NodeProcess(
            "liquid_control.ros.policy_node", params=params, name="sim_policy", log_dir=tmp_path
        ) as node,
        Harness() as h,
    ):
        cmd = h.subscribe("/cmd", "std_msgs/Float64MultiArray")
        debug = h.subscribe("/sim_policy/observation", "std_msgs/Float64MultiArray", 1000)
        h.publish_periodically("/clock", clock, 200.0)
        h.publish_periodically("/joint_states", joint_state, 100.0, SENSOR_QOS)
        h.wait_for(lambda: len(cmd) >= 10, 30.0, "commands on sim time", node)
        t0, sim0 = time.monotonic(), sim_ns[0]
        time.sleep(2.0)
        n, sim_s = len(cmd.since(t0)), (sim_ns[0] - sim0) * 1e-9
        # One command per 20 ms of *simulated* time (the harness's clock may run slower than
        # 2x on a loaded machine, so compare with the simulated time that actually passed).
        assert 0.6 * sim_s / PERIOD_S <= n <= 1.4 * sim_s / PERIOD_S + 2, (
            f"{n} commands in {sim_s:.2f} sim s"
        )
        assert n > 1.3 * 2.0 / PERIOD_S or sim_s < 3.0, "ticks follow the wall clock, not /clock"
        dts = [r["dt"] for r in debug_rows(debug.since(t0))]
        assert np.median(dts) == pytest.approx(PERIOD_S, abs=1e-9)  # 10 ms clock steps: exact
        h.stop_publishing("/clock")
        time.sleep(0.3)
        t1 = time.monotonic()
        time.sleep(0.5)
        assert len(debug.since(t1)) == 0, "ticks without /clock"
        assert all(list(m.data) == [0.0, 0.0] for m in cmd.since(t1)), "not the safe action"
