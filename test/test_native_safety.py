"""The C safety core (csrc/safety.h, run by the compiled control tick) against the Python one
(core/safety.py, the reference): the same arbitrary sequences of inputs, flags, clock times,
swaps and policy outputs give the same commands, bit for bit, the same reasons, the same policy
steps and resets, and the same latches."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from policy_factory import joint_spec, make_policy
from test_safety_core import PERIOD, TOPICS, ScriptedPolicy, scenarios

from liquid_control.core import native
from liquid_control.core.safety import (
    ActionSpace,
    InputSample,
    SafetyConfig,
    SafetyCore,
    TickInput,
)

pytestmark = pytest.mark.skipif(not native.available(), reason="the compiled core is not built")


def category(reason: str) -> str:
    """A Python reason as the C core words it (its cause, without the details)."""
    if reason.startswith("latched: "):
        return reason
    cause = native.reason_category(reason)
    assert cause != "other", f"unknown reason {reason!r}"
    return cause


def run_both(space, config, outputs, healthy, ticks, swap_space=None):
    py_policy, c_policy = ScriptedPolicy(outputs, healthy), ScriptedPolicy(outputs, healthy)
    py = SafetyCore(config, space, py_policy, PERIOD)
    cc = native.NativeSafetyCore(config, space, c_policy, PERIOD)
    now = wall = 100.0
    last = dict.fromkeys(TOPICS)
    count = dict.fromkeys(TOPICS, 0)
    has_all = False
    for k, t in enumerate(ticks):
        now, wall = now + t["dt"], wall + t["wall"]
        for topic, arrived in zip(TOPICS, t["arrive"], strict=True):
            if arrived:
                last[topic], count[topic] = now - 0.001, count[topic] + 1
        has_all = has_all or all(v is not None for v in last.values())
        if t["swap"]:
            for core, policy in ((py, py_policy), (cc, c_policy)):
                core.set_policy(policy, swap_space or space)
        inp = TickInput(
            now_s=now,
            wall_s=wall,
            inputs={tp: InputSample(last[tp], count[tp]) for tp in TOPICS},
            raw=np.array(t["obs"]) if has_all else None,
            estop=t["estop"],
            enabled=t["enabled"],
            reset_requested=t["reset"],
        )
        a, b = py.tick(inp), cc.tick(inp)
        where = f"tick {k}"
        if a.action is None:
            assert b.action is None, where
        else:
            np.testing.assert_array_equal(b.action, a.action, err_msg=where)
        assert b.commanding == a.commanding, where
        assert b.reasons == tuple(category(r) for r in a.reasons), where
        assert b.dt_s == a.dt_s and b.steps_since_reset == a.steps_since_reset, where
        assert b.events == a.events, where
        assert cc.latched == py.latched, where
        assert len(c_policy.calls) == len(py_policy.calls), where
        assert c_policy.resets == py_policy.resets, where
        if py.last_command is None:
            assert cc.last_command is None, where
        else:
            np.testing.assert_array_equal(cc.last_command, py.last_command, err_msg=where)
        np.testing.assert_array_equal(cc.safe_action(), py.safe_action(), err_msg=where)
    for (obs_a, dt_a), (obs_b, dt_b) in zip(py_policy.calls, c_policy.calls, strict=True):
        np.testing.assert_array_equal(obs_b, obs_a)
        assert dt_b == dt_a


@settings(max_examples=400, deadline=None)
@given(scenarios())
def test_c_and_python_cores_decide_the_same_for_any_sequence(scenario):
    run_both(*scenario)


@settings(max_examples=100, deadline=None)
@given(scenarios(), scenarios())
def test_c_and_python_cores_agree_across_swaps_to_other_limits(scenario, other):
    space, config, outputs, healthy, ticks = scenario
    run_both(space, config, outputs, healthy, ticks, swap_space=other[0])


def test_settings_changes_and_restarts_agree_with_a_real_policy():
    spec = joint_spec()
    base = dict(
        sensor_timeout_s=0.05, resume_after_fresh_samples=2, safe_action="hold",
        reset_on_resume=True, max_action_rate=5.0, blend_s=0.1, max_dt_s=0.1,
        use_measured_dt=True, watchdog_timeout_s=0.5,
    )  # fmt: skip
    space = ActionSpace.from_spec(spec)
    p1, p2 = make_policy(spec, seed=3), make_policy(spec, seed=3)
    py = SafetyCore(SafetyConfig(**base), space, p1, PERIOD)
    cc = native.NativeSafetyCore(SafetyConfig(**base), space, p2, PERIOD)
    rng = np.random.default_rng(0)
    now = 10.0
    for k in range(300):
        now += PERIOD * rng.uniform(0.5, 1.5)
        if k == 100:
            for core in (py, cc):
                core.set_config(SafetyConfig(**{**base, "safe_action": "zero", "blend_s": 0.0}))
        if k == 200:
            for core in (py, cc):
                core.restart()
        raw = spec.obs_mean + rng.normal(0, 0.3, spec.obs_dim)
        inp = TickInput(
            now_s=now,
            wall_s=now,
            inputs={"/joint_states": InputSample(now - 0.001, k + 1)},
            raw=raw,
            estop=bool(rng.random() < 0.05),
        )
        a, b = py.tick(inp), cc.tick(inp)
        np.testing.assert_array_equal(b.action, a.action, err_msg=f"tick {k}")
        assert b.commanding == a.commanding
        np.testing.assert_array_equal(p2.state, p1.state)
