"""The policy node over real DDS, in its own process: rate, elapsed-time stepping, safety, swaps,
services and diagnostics. One node process serves the whole module; each test leaves it running
the policy with fresh sensors, as it found it.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from rcl_interfaces.srv import DescribeParameters
from rclpy.serialization import serialize_message
from ros_harness import Harness, NodeProcess, diagnostic_values, save_test_policy
from sensor_msgs.msg import JointState
from std_msgs.msg import Bool
from std_srvs.srv import SetBool

from liquid_control.core import ActionElement, InterfaceSpec, ObservationElement, Policy
from liquid_control.ros.messages import LATCHED_QOS, SENSOR_QOS
from liquid_control.ros.policy_node import measure_step_s

pytestmark = [pytest.mark.ros, pytest.mark.timeout(180)]

RATE_HZ = 50.0
PERIOD_S = 1.0 / RATE_HZ
# Swaps to policies slower than this fraction of the period are refused ("b", 100 units at 6
# unfolds, takes ~15 us compiled and ~350 us in numpy: well inside it either way).
SWAP_STEP_FRACTION = 0.05
TIMEOUT_S = 0.3
SAFE = [0.5, -0.5]
NODE = "/policy_node"
JOINTS = ["j0", "j1"]
CORE = min(os.sched_getaffinity(0))  # the control thread is pinned to it


def joint_spec(joints=JOINTS, rate_hz: float = RATE_HZ) -> InterfaceSpec:
    obs = [
        ObservationElement(f"{j}_{f}", "/joint_states", "sensor_msgs/JointState", f, key=j)
        for j in joints
        for f in ("position", "velocity")
    ]
    act = [
        ActionElement(
            f"{j}_cmd",
            "/cmd",
            "std_msgs/Float64MultiArray",
            "data",
            index=i,
            low=-2.0,
            high=2.0,
            interface="position",  # a position-controlled arm: "hold" holds its last command
        )
        for i, j in enumerate(joints)
    ]
    return InterfaceSpec("test_arm", obs, act, rate_hz, extra={"safe_action": SAFE})


class Sensors:
    """JointState source for the harness: names in a different order than the spec, plus a joint
    the spec does not use, so the node must pick joints by name."""

    def __init__(self) -> None:
        self.position = {"j0": 0.3, "j1": -0.7, "extra": 9.0}
        self.velocity = {"j0": 0.05, "j1": 0.1, "extra": 9.0}

    def make(self) -> JointState:
        names = ["j1", "extra", "j0"]
        return JointState(
            name=names,
            position=[self.position[n] for n in names],
            velocity=[self.velocity[n] for n in names],
        )

    def expected_observation(self) -> list[float]:
        return [v for j in JOINTS for v in (self.position[j], self.velocity[j])]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("policies")
    allowed, outside = root / "allowed", root / "outside"
    allowed.mkdir()
    outside.mkdir()
    f = {
        "a": allowed / "a.lcp",
        "b": allowed / "b_big.lcp",
        "corrupt": allowed / "corrupt.lcp",
        "incompatible": allowed / "incompatible.lcp",
        "other_rate": allowed / "other_rate.lcp",
        "outside": outside / "c.lcp",
        "missing": allowed / "does_not_exist.lcp",
    }
    save_test_policy(f["a"], joint_spec(), seed=0)
    # A bigger network: loads and dry-runs slowly enough that a loop blocked by it would show.
    save_test_policy(f["b"], joint_spec(), seed=1, units=100)
    # Too slow for the 20 ms period (max_swap_step_fraction 0.05 in the rig: 1 ms): the smallest
    # network whose step takes over twice that here, compiled solver or numpy (at 64 unfolds 160
    # units take ~10 ms in numpy, 0.3 ms compiled; 700 units ~5 ms compiled).
    f["slow"] = allowed / "slow.lcp"
    for units in (160, 400, 700, 1000):
        save_test_policy(f["slow"], joint_spec(), seed=8, units=units, ode_unfolds=64)
        slow = Policy.load(f["slow"])
        if measure_step_s(slow, slow.spec.obs_mean, steps=5) > 2 * SWAP_STEP_FRACTION * PERIOD_S:
            break
    else:
        pytest.fail("no test policy is slow enough to be refused on this machine")
    f["corrupt"].write_bytes(f["a"].read_bytes()[:-40] + b"\x00" * 40)
    save_test_policy(f["incompatible"], joint_spec(["j0", "elbow"]), seed=2)
    save_test_policy(f["other_rate"], joint_spec(rate_hz=25.0), seed=3)
    save_test_policy(f["outside"], joint_spec(), seed=4)
    f["log_dir"] = root / "logs"
    return f


@pytest.fixture(scope="module")
def rig(files):
    """The node under test, the harness publishing sensors at 100 Hz, and recorders."""
    params = {
        "policy_path": str(files["a"]),
        "allowed_policy_dirs": [str(files["a"].parent)],
        "sensor_timeout_s": TIMEOUT_S,
        "safe_action": "spec",
        "debug": True,
        "realtime_priority": 10,
        "cpu_affinity": [CORE],
        "max_swap_step_fraction": SWAP_STEP_FRACTION,
    }
    with NodeProcess(
        "liquid_control.ros.policy_node", params=params, log_dir=files["log_dir"]
    ) as node:
        with Harness() as h:
            # A robot's estop node: a latched "released" (the node commands only after one).
            h.publish(f"{NODE}/estop", Bool(data=False), LATCHED_QOS)
            sensors = Sensors()
            rig = type("Rig", (), {})()
            rig.node, rig.h, rig.sensors = node, h, sensors
            rig.cmd = h.subscribe("/cmd", "std_msgs/Float64MultiArray")
            rig.debug = h.subscribe(f"{NODE}/observation", "std_msgs/Float64MultiArray", 1000)
            rig.diag = h.subscribe("/diagnostics", "diagnostic_msgs/DiagnosticArray")
            rig.is_safe = h.subscribe(f"{NODE}/is_safe", "std_msgs/Bool", LATCHED_QOS)
            rig.active = h.subscribe(f"{NODE}/active_policy", "std_msgs/String", LATCHED_QOS)
            rig.start_sensors = lambda: h.publish_periodically(
                "/joint_states", sensors.make, 100.0, SENSOR_QOS
            )
            rig.start_sensors()
            h.wait_for(lambda: len(rig.cmd) >= 5, 30.0, "the first commands", node)
            yield rig


def debug_rows(msgs) -> list[dict]:
    """Split ~/observation messages into their labelled parts."""
    rows = []
    for m in msgs:
        d = np.asarray(m.data)
        sizes = [dim.size for dim in m.layout.dim]
        parts = np.split(d, np.cumsum(sizes)[:-1])
        rows.append(
            {
                "tick": int(parts[0][0]),
                "dt": float(parts[1][0]),
                "steps": int(parts[2][0]),
                "obs": parts[3],
                "action": parts[4],
            }
        )
    return rows


def latest_diagnostics(rig, after: float | None = None) -> dict[str, str]:
    t = time.monotonic() if after is None else after

    def fresh():
        msgs = rig.diag.since(t)
        values = [diagnostic_values(m, "policy_node") for m in msgs]
        values = [v for v in values if v is not None]
        return values[-1] if values else None

    return rig.h.wait_for(fresh, 5.0, "a /diagnostics message", rig.node)


def wait_commands(rig, predicate, what: str, timeout_s: float = 5.0) -> list[float]:
    """Wait until a command received from now on satisfies `predicate(data)`; return its data."""
    t = time.monotonic()

    def found():
        for m in rig.cmd.since(t):
            if predicate(list(m.data)):
                return list(m.data)
        return None

    return rig.h.wait_for(found, timeout_s, what, rig.node)


def is_safe_cmd(data) -> bool:
    return np.allclose(data, SAFE)


def active_hash(rig) -> str:
    return rig.active.last.data.split()[-1]


# --------------------------------------------------------------------------------------------


def test_commands_are_published_at_the_fixed_rate(rig):
    t0 = time.monotonic()
    time.sleep(2.0)
    n = len(rig.cmd.since(t0))
    assert 0.6 * 2.0 * RATE_HZ <= n <= 1.4 * 2.0 * RATE_HZ, f"{n} commands in 2 s at {RATE_HZ} Hz"
    assert all(len(m.data) == 2 and np.isfinite(m.data).all() for m in rig.cmd.since(t0))


def test_observation_reads_each_joint_by_name(rig):
    t0 = time.monotonic()
    rig.h.wait_for(lambda: len(rig.debug.since(t0)) >= 3, 5.0, "debug ticks", rig.node)
    row = debug_rows(rig.debug.since(t0))[-1]
    np.testing.assert_array_equal(row["obs"], rig.sensors.expected_observation())


def test_reset_service_and_elapsed_time_stepping_match_numpy_policy(rig, files):
    """After ~/reset the node's commands equal a numpy Policy stepped with the dts the node
    reports; the dts are measured (they jitter), and stepping with the nominal period instead
    gives different actions."""
    t0 = time.monotonic()
    response = rig.h.call(f"{NODE}/reset", "std_srvs/Trigger")
    assert response.success

    def run_after_reset():
        rows = debug_rows(rig.debug.since(t0))
        start = next((i for i, r in enumerate(rows) if r["steps"] == 1), None)
        return (rows, start) if start is not None and len(rows) - start >= 25 else None

    rows, start = rig.h.wait_for(run_after_reset, 10.0, "25 steps after the reset", rig.node)
    run = rows[start : start + 25]
    assert [r["steps"] for r in run] == list(range(1, 26)), "ticks lost on the debug topic"
    dts = np.array([r["dt"] for r in run])
    assert np.all(np.abs(dts - PERIOD_S) < 0.5 * PERIOD_S + 0.05)
    assert np.any(np.abs(dts - PERIOD_S) > 1e-7), "dts look nominal, not measured"

    replay, nominal = Policy.load(files["a"]), Policy.load(files["a"])
    got, want, want_nominal = [], [], []
    for r in run:
        got.append(r["action"])
        want.append(replay.step(r["obs"], r["dt"]))
        want_nominal.append(nominal.step(r["obs"]))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    assert np.abs(np.array(want_nominal) - np.array(want)).max() > 1e-12

    # The published commands are the debug actions, tick by tick.
    commands = [tuple(m.data) for m in rig.cmd.since(t0)]
    time.sleep(0.1)  # each tick publishes the command first, then the debug row
    actions = [tuple(r["action"]) for r in debug_rows(rig.debug.since(t0))]
    tail = commands[-10:]
    i = actions.index(tail[0])
    assert actions[i : i + len(tail)] == tail


@pytest.mark.parametrize(
    "case, reason",
    [
        ("nan", "non_finite"),
        ("inf", "non_finite"),
        ("wrong_length", "wrong_length"),
        ("missing_joint", "missing_joint"),
        ("truncated_bytes", "malformed"),
    ],
)
def test_bad_messages_are_rejected_counted_and_never_reach_the_policy(rig, case, reason):
    marker = 4242.0  # a finite value only the bad messages carry
    msg = JointState(name=["j1", "j0"], position=[marker, marker], velocity=[marker, marker])
    if case == "nan":
        msg.position = [marker, math.nan]
    elif case == "inf":
        msg.velocity = [math.inf, marker]
    elif case == "wrong_length":
        msg.velocity = [marker]
    elif case == "missing_joint":
        msg.name, msg.position, msg.velocity = ["j0"], [marker], [marker]
    before = latest_diagnostics(rig)
    t0 = time.monotonic()
    for _ in range(5):
        if case == "truncated_bytes":  # serialized bytes cut short (the node takes raw bytes)
            raw = bytes(serialize_message(msg))[:-20]
            rig.h.publisher("/joint_states", "sensor_msgs/JointState", SENSOR_QOS).publish(raw)
        else:
            rig.h.publish("/joint_states", msg, SENSOR_QOS)
        time.sleep(0.03)

    def counted():
        d = latest_diagnostics(rig)
        return (
            d
            if int(d.get(f"rejected_{reason}", 0)) >= int(before.get(f"rejected_{reason}", 0)) + 3
            else None
        )

    diag = rig.h.wait_for(counted, 8.0, f"rejected_{reason} to grow", rig.node)
    assert reason in diag[f"last_rejection_{reason}"] or diag[
        f"last_rejection_{reason}"
    ].startswith("/joint_states")
    # logged (throttled) by the control process, into the node's output
    assert "rejected a message on /joint_states" in rig.node.log()
    rows = debug_rows(rig.debug.since(t0))
    assert rows, "no ticks while bad messages arrived"
    safe = [r["tick"] for r in rows if is_safe_cmd(r["action"])]
    for r in rows:
        assert np.isfinite(r["obs"]).all() and marker not in r["obs"]
    # Good data keeps flowing, the policy keeps running: no safe action for any cause the bad
    # messages could give. (The one cause allowed is a stale input, the harness's own stall of
    # more than sensor_timeout_s on a loaded machine, to which the safe action is the answer.)
    after = latest_diagnostics(rig)
    causes = {
        k: int(v) - int(before.get(k, 0))
        for k, v in after.items()
        if k.startswith("safe_ticks_") and int(v) > int(before.get(k, 0))
    }
    assert set(causes) <= {"safe_ticks_stale"} and len(safe) <= 25, (
        f"safe action at ticks {safe} of {len(rows)}, by cause {causes}"
    )


def test_stale_inputs_give_the_safe_action_within_a_period_then_resume_with_reset(rig, files):
    rig.h.stop_publishing("/joint_states")
    t_stop = time.monotonic()  # no sensor message is published after this
    safe = wait_commands(rig, is_safe_cmd, "the safe action after the sensor timeout", 5.0)
    t_safe = next(t for t, m in rig.cmd.timed_since(t_stop) if is_safe_cmd(m.data))
    assert safe == SAFE
    # Timeout + one period, plus generous slack for DDS delivery on a loaded machine.
    assert t_safe - t_stop <= TIMEOUT_S + PERIOD_S + 0.35, (
        f"safe action after {t_safe - t_stop:.3f} s"
    )
    assert t_safe - t_stop >= TIMEOUT_S - 0.12, f"safe action too early: {t_safe - t_stop:.3f} s"
    rig.h.wait_for(lambda: rig.is_safe.last.data is True, 3.0, "is_safe true", rig.node)
    diag = latest_diagnostics(rig)
    assert "/joint_states" in diag["stale_inputs"] and diag["safe_action_active"] == "True"
    assert int(diag["safe_ticks_stale"]) >= 1, diag  # the safe ticks counted by their cause
    time.sleep(0.3)
    assert all(is_safe_cmd(m.data) for m in rig.cmd.since(time.monotonic() - 0.2))

    t_resume = time.monotonic()
    rig.start_sensors()
    wait_commands(rig, lambda d: not is_safe_cmd(d), "policy commands after resume", 5.0)
    rig.h.wait_for(lambda: rig.is_safe.last.data is False, 3.0, "is_safe false", rig.node)
    rows = [r for r in debug_rows(rig.debug.since(t_resume)) if r["steps"] > 0]
    first = rows[0]
    assert first["steps"] == 1, "hidden state not reset on resume"
    fresh = Policy.load(files["a"])
    np.testing.assert_allclose(first["action"], fresh.step(first["obs"], first["dt"]), atol=1e-12)


def test_estop_holds_the_safe_action_until_released(rig):
    rig.h.publish(f"{NODE}/estop", Bool(data=True), LATCHED_QOS)
    wait_commands(rig, is_safe_cmd, "the safe action after estop")
    time.sleep(0.5)  # sensors stay fresh: estop alone holds the safe action
    t = time.monotonic()
    time.sleep(0.3)
    held = rig.cmd.since(t)
    assert len(held) >= 5 and all(is_safe_cmd(m.data) for m in held)
    assert rig.is_safe.last.data is True
    assert latest_diagnostics(rig)["estop"] == "True"
    rig.h.publish(f"{NODE}/estop", Bool(data=False), LATCHED_QOS)
    wait_commands(rig, lambda d: not is_safe_cmd(d), "policy commands after estop release")


def test_enable_service_switches_between_safe_action_and_policy(rig):
    off = rig.h.call(f"{NODE}/enable", "std_srvs/SetBool", SetBool.Request(data=False))
    assert off.success
    wait_commands(rig, is_safe_cmd, "the safe action when disabled")
    assert latest_diagnostics(rig)["enabled"] == "False"
    on = rig.h.call(f"{NODE}/enable", "std_srvs/SetBool", SetBool.Request(data=True))
    assert on.success
    wait_commands(rig, lambda d: not is_safe_cmd(d), "policy commands when enabled")


def test_diagnostics_report_rate_timing_inputs_and_policy(rig, files):
    diag = latest_diagnostics(rig, after=time.monotonic() + 1.1)
    for key in (
        "period_error_p50_ms",
        "period_error_p99_ms",
        "period_error_max_ms",
        "compute_p50_us",
        "compute_p99_us",
        "stale_inputs",
        "rejected_total",
        "swaps",
        "active_policy_hash",
        "safe_action_active",
        "total_missed_ticks",
    ):
        assert key in diag, f"diagnostics lack {key}: {sorted(diag)}"
    assert 0.6 * RATE_HZ <= float(diag["achieved_rate_hz"]) <= 1.4 * RATE_HZ
    assert 0 < float(diag["compute_p50_us"]) <= float(diag["compute_p99_us"])
    assert float(diag["period_error_p50_ms"]) <= float(diag["period_error_max_ms"])
    assert diag["active_policy_hash"] == active_hash(rig)
    assert diag["state"] == "active" and diag["_message"] == "running the policy"
    # realtime_priority 10 on core 0: granted, or refused with the reason (no CAP_SYS_NICE)
    thread = diag["control_thread"]
    assert thread == f"SCHED_FIFO priority 10, cores [{CORE}]" or (
        "refused" in thread and "CAP_SYS_NICE" in thread
    ), thread


def test_parameters_have_descriptors_and_read_only_ones_refuse_changes(rig):
    names = [
        "policy_path",
        "allowed_policy_dirs",
        "control_rate_hz",
        "sensor_timeout_s",
        "autostart",
    ]
    response = rig.h.call(
        f"{NODE}/describe_parameters",
        "rcl_interfaces/DescribeParameters",
        DescribeParameters.Request(names=names),
    )
    d = {x.name: x for x in response.descriptors}
    assert all(d[n].description for n in names)
    assert (
        d["allowed_policy_dirs"].read_only
        and d["control_rate_hz"].read_only
        and d["autostart"].read_only
    )
    assert d["sensor_timeout_s"].floating_point_range[0].from_value > 0
    (r,) = rig.h.set_parameters(NODE, {"allowed_policy_dirs": ["/"]})
    assert not r.successful
    (r,) = rig.h.set_parameters(NODE, {"sensor_timeout_s": -1.0})
    assert not r.successful
    (r,) = rig.h.set_parameters(NODE, {"safe_action": "explode"})
    assert not r.successful and "safe_action" in r.reason


@pytest.mark.parametrize(
    "name, words",
    [
        ("corrupt", ["corrupt.lcp"]),
        ("incompatible", ["interface spec", "elbow"]),
        ("other_rate", ["control_rate_hz", "25"]),
        ("outside", ["outside allowed_policy_dirs"]),
        ("slow", ["one step takes", "max_swap_step_fraction", "control period"]),
        ("missing", ["does_not_exist.lcp"]),
    ],
)
def test_swap_is_refused_with_a_reason_and_the_old_policy_keeps_running(rig, files, name, words):
    before = active_hash(rig)
    (result,) = rig.h.set_parameters(NODE, {"policy_path": str(files[name])})
    assert not result.successful
    for w in words:
        assert w in result.reason, f"{w!r} not in the refusal: {result.reason}"
    t = time.monotonic()
    time.sleep(0.3)
    assert active_hash(rig) == before
    assert len(rig.cmd.since(t)) >= 5
    params = rig.h.get_parameters(NODE, ["policy_path"])
    assert params["policy_path"] != str(files[name])
    assert (
        name in latest_diagnostics(rig)["last_swap_error"]
        or words[0] in latest_diagnostics(rig)["last_swap_error"]
    )


def test_swap_to_a_valid_policy_changes_the_hash_at_a_tick_boundary_without_missing_a_tick(
    rig, files
):
    new_hash = Policy.load(files["b"]).content_hash
    assert active_hash(rig) != new_hash
    t0 = time.monotonic()
    (result,) = rig.h.set_parameters(NODE, {"policy_path": str(files["b"])})
    t1 = time.monotonic()  # the set call returns once loading and validation are done
    assert result.successful, result.reason
    rig.h.wait_for(lambda: active_hash(rig) == new_hash, 5.0, "the new policy hash", rig.node)
    time.sleep(0.3)
    rows = debug_rows(rig.debug.since(t0 - 0.5))
    ticks = [r["tick"] for r in rows]
    assert ticks == list(range(ticks[0], ticks[0] + len(ticks))), "ticks lost around the swap"
    # Loading the big policy (file, checks, dry inference) ran beside the loop, not in it: the
    # old policy kept commanding meanwhile, and the swap tick followed its predecessor by far
    # less than the load took.
    timed = rig.debug.timed_since(t0)  # one consistent snapshot (the recorder keeps receiving)
    during = [r for (t, _), r in zip(timed, debug_rows(m for _, m in timed), strict=True) if t < t1]
    # (the swap tick itself may arrive before the parameter response)
    # A loop blocked by the load would tick not at all while it ran and then once, about the
    # load time after its previous tick; one tick of slack for where the load falls on the grid.
    load_s = t1 - t0
    old_ticks = [r for r in during if r["steps"] > 1]
    assert len(old_ticks) >= int(load_s / PERIOD_S) - 1, (
        f"{len(old_ticks)} old-policy ticks during a {1e3 * load_s:.0f} ms load"
    )
    first = next(r for r in debug_rows(rig.debug.since(t0)) if r["steps"] == 1)
    assert first["dt"] < min(5 * PERIOD_S, PERIOD_S + 0.5 * load_s), (
        f"the swap tick came {first['dt'] * 1e3:.1f} ms after the previous one"
    )
    fresh = Policy.load(files["b"])
    np.testing.assert_allclose(first["action"], fresh.step(first["obs"], first["dt"]), atol=1e-12)
    diag = latest_diagnostics(rig, after=time.monotonic() + 1.0)
    assert diag["swaps"] == "1" and diag["active_policy_hash"] == new_hash
    # and back, so the module leaves the node as it found it
    (result,) = rig.h.set_parameters(NODE, {"policy_path": str(files["a"])})
    assert result.successful, result.reason


@pytest.mark.parametrize(
    "param, value, words",
    [
        ("cpu_affinity", "[9999]", ["cpu_affinity", "9999", "not available"]),
        ("realtime_priority", "150", ["realtime_priority", "150"]),
    ],
)
def test_a_bad_scheduling_parameter_stops_the_node_with_a_clear_error(files, param, value, words):
    cmd = [sys.executable, "-m", "liquid_control.ros.policy_node", "--ros-args"]
    cmd += ["-p", f"policy_path:={files['a']}", "-p", f"{param}:={value}"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    for w in words:
        assert w in result.stderr, result.stderr[-2000:]
