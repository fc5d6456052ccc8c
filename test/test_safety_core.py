"""The safety core's invariants under arbitrary sequences of inputs, flags, clock times and policy
outputs (hypothesis), and the behaviours behind them one by one. See core/safety.py."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from policy_factory import joint_spec, make_policy

from liquid_control.core.safety import (
    ActionSpace,
    InputSample,
    SafetyConfig,
    SafetyCore,
    SafetyError,
    TickInput,
)
from liquid_control.core.spec import ActionElement, InterfaceSpec, ObservationElement
from liquid_control.core.watchdog import LoopHealth, Watchdog

PERIOD = 0.02
TOPICS = ("a", "b")


class ScriptedPolicy:
    """A policy whose outputs and state health are given by the test (any value at all)."""

    def __init__(self, outputs: list[np.ndarray], healthy: list[bool]) -> None:
        self.outputs, self.healthy = outputs, healthy
        self.calls: list[tuple[np.ndarray, float]] = []
        self.resets = 0
        self.state = np.zeros(3)
        self._ok = True

    def step(self, observation, dt=None, clip=True):
        k = len(self.calls)
        self.calls.append((np.array(observation), dt))
        self._ok = self.healthy[k % len(self.healthy)]
        return self.outputs[k % len(self.outputs)].copy()

    def reset(self) -> None:
        self.resets += 1

    def state_ok(self, state=None) -> bool:
        return self._ok


def make_space(low, high, position, feedback, spec_safe, obs_domain, act_domain) -> ActionSpace:
    n = len(low)
    return ActionSpace(
        low=np.array(low),
        high=np.array(high),
        zero=np.clip(np.zeros(n), low, high),
        spec_safe=None if spec_safe is None else np.clip(np.array(spec_safe), low, high),
        position=np.array(position, bool),
        feedback=np.array(feedback, np.int64),
        action_domain=act_domain,
        observation_domain=obs_domain,
        action_names=tuple(f"u{i}" for i in range(n)),
        observation_names=("o0", "o1", "o2"),
    )


values = st.one_of(
    st.floats(-5, 5),
    st.sampled_from([math.nan, math.inf, -math.inf, 1e300, -1e300]),
)


@st.composite
def scenarios(draw):
    n = 2
    low = [draw(st.floats(-3, 0)) for _ in range(n)]
    high = [lo + draw(st.floats(0, 4)) for lo in low]
    obs_lo = np.array([draw(st.sampled_from([-np.inf] * 4 + [-1.0, -3.0])) for _ in range(3)])
    obs_hi = np.array([draw(st.sampled_from([np.inf] * 4 + [1.0, 3.0])) for _ in range(3)])
    act_lo = np.array([draw(st.sampled_from([-np.inf] * 3 + [-4.0])) for _ in range(n)])
    act_hi = np.array([draw(st.sampled_from([np.inf] * 3 + [4.0])) for _ in range(n)])
    space = make_space(
        low,
        high,
        [draw(st.booleans()) for _ in range(n)],
        [draw(st.sampled_from([-1, 0, 2])) for _ in range(n)],
        draw(st.one_of(st.none(), st.lists(st.floats(-3, 3), min_size=n, max_size=n))),
        (obs_lo, obs_hi),
        (act_lo, act_hi),
    )
    config = SafetyConfig(
        sensor_timeout_s=draw(st.sampled_from([0.03, 0.05, 0.25])),
        resume_after_fresh_samples=draw(st.integers(1, 3)),
        safe_action=draw(st.sampled_from(["zero", "hold", "spec"])),
        reset_on_resume=draw(st.booleans()),
        max_action_rate=draw(st.sampled_from([0.0, 0.5, 5.0, 100.0])),
        blend_s=draw(st.sampled_from([0.0, 0.05, 0.5])),
        max_dt_s=draw(st.sampled_from([0.05, 0.5])),
        use_measured_dt=draw(st.booleans()),
        watchdog_timeout_s=draw(st.sampled_from([0.1, 0.5])),
    )
    finite = st.lists(st.floats(-3.5, 3.5), min_size=n, max_size=n)
    anything = st.lists(values, min_size=n, max_size=n)
    outputs = draw(st.lists(st.one_of(finite, finite, anything), min_size=1, max_size=8))
    healthy = [True]
    if draw(st.booleans()):  # a policy whose state goes bad at times
        healthy = draw(st.lists(st.booleans(), min_size=1, max_size=4))
    # How often something goes wrong, per scenario: mostly-clean runs exercise the commanding
    # path (fade, rate limit, hysteresis), noisy ones every cause and their mixtures.
    p = draw(st.sampled_from([0.01, 0.05, 0.2, 0.5]))

    rng = random.Random(draw(st.integers(0, 2**32 - 1)))  # (hypothesis's floats favour 0.0)
    ticks = []
    for _ in range(draw(st.integers(1, 60))):
        u = [rng.random() for _ in range(8)]
        ticks.append(
            {
                "dt": draw(st.sampled_from([0.0, -3.0, 0.3, 2.0]))
                if u[0] < p / 2
                else draw(st.floats(0.5 * PERIOD, 1.5 * PERIOD)),
                "wall": 0.8 if u[1] < p / 4 else draw(st.floats(0.5 * PERIOD, 1.5 * PERIOD)),
                "arrive": [rng.random() >= p for _ in TOPICS],
                "estop": draw(st.sampled_from([True, None])) if u[2] < p else False,
                "enabled": u[3] >= p / 2,
                "reset": u[4] < p / 3,
                "swap": u[5] < p / 4,
                "obs": draw(st.lists(st.floats(-4, 4), min_size=3, max_size=3))
                if u[6] < p
                else [0.1, -0.2, 0.3],
            }
        )
    return space, config, [np.array(o) for o in outputs], healthy, ticks


@settings(max_examples=400, deadline=None)
@given(scenarios())
def test_invariants_hold_for_any_sequence_of_ticks(scenario):
    space, config, outputs, healthy, ticks = scenario
    policy = ScriptedPolicy(outputs, healthy)
    core = SafetyCore(config, space, policy, PERIOD)
    now = wall = 100.0
    last = {t: None for t in TOPICS}
    count = dict.fromkeys(TOPICS, 0)
    stale_at = dict.fromkeys(TOPICS)  # count when the topic was last seen stale
    prev, prev_now, prev_wall, latched, has_all = None, None, None, False, False
    for k, t in enumerate(ticks):
        now, wall = now + t["dt"], wall + t["wall"]
        for topic, arrived in zip(TOPICS, t["arrive"], strict=True):
            if arrived:
                last[topic], count[topic] = now - 0.001, count[topic] + 1
        has_all = has_all or all(v is not None for v in last.values())
        if t["swap"]:
            core.set_policy(policy, space)
        calls_before = len(policy.calls)
        cmd = core.tick(
            TickInput(
                now_s=now,
                wall_s=wall,
                inputs={tp: InputSample(last[tp], count[tp]) for tp in TOPICS},
                raw=np.array(t["obs"]) if has_all else None,
                estop=t["estop"],
                enabled=t["enabled"],
                reset_requested=t["reset"],
            )
        )
        if t["reset"]:
            latched = False
        stale = [
            tp for tp in TOPICS if last[tp] is None or now - last[tp] > config.sensor_timeout_s
        ]
        for tp in stale:
            if last[tp] is not None:  # (the first sample of each input is awaited, not stale)
                stale_at[tp] = count[tp]
        recovering = [
            tp
            for tp in TOPICS
            if stale_at[tp] is not None
            and count[tp] - stale_at[tp] < config.resume_after_fresh_samples
        ]
        period = None if prev_now is None else now - prev_now
        wall_gap = None if prev_wall is None else wall - prev_wall
        jump = period is not None and (period < 0 or period > config.max_dt_s)
        jump = jump or (wall_gap is not None and wall_gap > config.watchdog_timeout_s)
        prev_now, prev_wall = now, wall

        if not has_all:
            assert cmd.action is None and not cmd.commanding
            continue
        a = cmd.action
        assert a is not None and np.isfinite(a).all(), f"tick {k}: {a}"
        assert np.all(a >= space.low) and np.all(a <= space.high), f"tick {k}: {a}"
        cause = (
            t["estop"] is not False or not t["enabled"] or stale or recovering or jump or latched
        )
        if cause:
            assert not cmd.commanding, f"tick {k}: commanded despite a cause ({cmd.reasons})"
            assert len(policy.calls) == calls_before, f"tick {k}: policy stepped despite a cause"
        if not cmd.commanding:
            if config.safe_action == "spec" and space.spec_safe is not None:
                expected = space.spec_safe
            elif config.safe_action == "hold" and prev is not None:
                expected = np.where(
                    space.position, np.clip(prev, space.low, space.high), space.zero
                )
            else:
                expected = space.zero
            np.testing.assert_array_equal(a, expected, err_msg=f"tick {k}: not the safe action")
            assert cmd.reasons
            if any(r.startswith("latched") for r in cmd.reasons):
                latched = True
        else:
            raw = outputs[(len(policy.calls) - 1) % len(outputs)]
            assert np.isfinite(raw).all()
            dt = policy.calls[-1][1]
            assert 0 < dt <= config.max_dt_s
            if config.max_action_rate > 0 and prev is not None:
                step = period if period and period > 0 else dt
                assert np.all(np.abs(a - prev) <= config.max_action_rate * step + 1e-9)
        prev = a


def real_core(**overrides) -> tuple[SafetyCore, InterfaceSpec]:
    spec = InterfaceSpec(
        "arm",
        [
            ObservationElement("q", "js", "sensor_msgs/JointState", "position", key="j"),
            ObservationElement(
                "roll", "imu", "sensor_msgs/Imu", "orientation.x", domain_low=-0.8, domain_high=0.8
            ),
        ],
        [
            ActionElement(
                "q_cmd",
                "cmd",
                "std_msgs/Float64MultiArray",
                "data",
                index=0,
                low=-2.0,
                high=2.0,
                interface="position",
                feedback="q",
            ),
            ActionElement("v", "cmd_vel", "geometry_msgs/Twist", "linear.x", low=-1.0, high=1.0),
        ],
        50.0,
    )
    config = dict(
        sensor_timeout_s=0.1,
        resume_after_fresh_samples=3,
        safe_action="hold",
        reset_on_resume=True,
        max_action_rate=0.0,
        blend_s=0.0,
        max_dt_s=0.2,
        use_measured_dt=True,
        watchdog_timeout_s=0.5,
    )
    config.update(overrides)
    policy = make_policy(spec, seed=3)
    return SafetyCore(SafetyConfig(**config), ActionSpace.from_spec(spec), policy, 0.02), spec


class Clock:
    """Drives a core tick by tick with both inputs fresh unless told otherwise."""

    def __init__(self, core: SafetyCore) -> None:
        self.core, self.t, self.counts = core, 10.0, {"js": 0, "imu": 0}
        self.last = {"js": None, "imu": None}

    def tick(self, dt=0.02, fresh=("js", "imu"), obs=(0.5, 0.1), **flags):
        self.t += dt
        for topic in fresh:
            self.last[topic], self.counts[topic] = self.t, self.counts[topic] + 1
        inputs = {tp: InputSample(self.last[tp], self.counts[tp]) for tp in self.last}
        return self.core.tick(TickInput(self.t, self.t, inputs, np.array(obs, float), **flags))


def test_hold_holds_position_targets_and_zeroes_velocities():
    core, _ = real_core()
    clock = Clock(core)
    commanded = clock.tick().action
    held = clock.tick(estop=True)
    assert not held.commanding and held.reasons == ("estop",)
    assert held.action[0] == commanded[0] and held.action[1] == 0.0


def test_a_slow_sensor_needs_fresh_samples_before_the_policy_resumes():
    core, _ = real_core()
    clock = Clock(core)
    assert clock.tick().commanding
    for _ in range(6):  # js silent for 0.12 s > 0.1 s timeout
        cmd = clock.tick(fresh=("imu",))
    assert not cmd.commanding and "stale: js" in cmd.reasons
    got = [clock.tick().commanding for _ in range(4)]
    assert got == [False, False, True, True]  # the third fresh sample resumes


def test_out_of_domain_observation_latches_until_reset():
    core, _ = real_core()
    clock = Clock(core)
    assert clock.tick().commanding
    cmd = clock.tick(obs=(0.5, 1.2))
    assert (
        not cmd.commanding and "roll" in cmd.reasons[0] and "outside its domain" in cmd.reasons[0]
    )
    assert not clock.tick().commanding, "the latch holds after the value is back in its domain"
    assert clock.tick(reset_requested=True).commanding


def test_a_corrupt_hidden_state_latches_the_safe_action():
    core, _ = real_core()
    clock = Clock(core)
    clock.tick()
    core.policy.state[:] = 1e6  # outside the box the solver keeps it in (a bit flip, say)
    cmd = clock.tick()
    assert not cmd.commanding and "corruption" in cmd.reasons[0]
    assert not clock.tick().commanding


def test_the_real_policy_never_leaves_its_state_box():
    """The state-box argument of core/policy.state_bounds, checked on random steps."""
    policy = make_policy(joint_spec(3, 2), seed=4)
    rng = np.random.default_rng(0)
    for _ in range(2000):
        policy.step(rng.normal(0, 50, policy.spec.obs_dim), float(rng.uniform(1e-4, 0.5)))
        assert policy.state_ok()


def test_clock_jump_back_and_gap_give_one_safe_tick_and_a_reset():
    core, _ = real_core()
    clock = Clock(core)
    for _ in range(3):
        clock.tick()
    back = clock.tick(dt=-5.0)
    assert not back.commanding and "clock jumped back" in back.reasons[0]
    after = clock.tick()
    assert after.commanding and after.steps_since_reset == 1
    gap = clock.tick(dt=1.0)
    assert not gap.commanding and "clock gap" in gap.reasons[0]
    nxt = clock.tick()
    assert nxt.commanding and nxt.dt_s == pytest.approx(0.02) and nxt.steps_since_reset == 1


def test_elapsed_time_is_clamped_to_max_dt():
    core, _ = real_core(max_dt_s=0.2)
    clock = Clock(core)
    clock.tick()
    assert clock.tick(dt=0.15).dt_s == pytest.approx(0.15)


def test_fade_in_starts_from_the_measured_position_and_the_safe_action():
    core, _ = real_core(blend_s=0.2, safe_action="zero")
    clock = Clock(core)
    free_core, _ = real_core(blend_s=0.0)
    free_clock = Clock(free_core)
    cmds = [clock.tick(obs=(0.5, 0.1)).action for _ in range(12)]
    free = [free_clock.tick(obs=(0.5, 0.1)).action for _ in range(12)]
    # first tick: 1/10 of the way from (measured q = 0.5, zero velocity) to the policy output
    np.testing.assert_allclose(cmds[0], 0.9 * np.array([0.5, 0.0]) + 0.1 * free[0], atol=1e-12)
    np.testing.assert_allclose(cmds[4], 0.5 * np.array([0.5, 0.0]) + 0.5 * free[4], atol=1e-12)
    np.testing.assert_allclose(cmds[10:], free[10:], atol=1e-12)


def test_max_action_rate_limits_policy_commands_but_never_delays_the_safe_action():
    core, _ = real_core(max_action_rate=1.0, safe_action="zero")
    clock = Clock(core)
    actions = [clock.tick().action for _ in range(5)]
    assert np.all(np.abs(np.diff(actions, axis=0)) <= 0.02 + 1e-12)
    stop = clock.tick(enabled=False)
    np.testing.assert_array_equal(stop.action, [0.0, 0.0])


def test_waiting_for_inputs_publishes_nothing_and_unknown_estop_is_safe():
    core, _ = real_core()
    assert core.tick(TickInput(9.99, 9.99, {}, None)).action is None
    clock = Clock(core)
    cmd = clock.tick(estop=None, estop_detail="waiting for the estop topic's latched sample")
    assert not cmd.commanding and cmd.reasons == ("waiting for the estop topic's latched sample",)


@pytest.mark.parametrize(
    "field, value",
    [
        ("safe_action", "explode"),
        ("sensor_timeout_s", 0.0),
        ("max_dt_s", math.nan),
        ("blend_s", -1.0),
        ("resume_after_fresh_samples", 0),
    ],
)
def test_bad_settings_are_refused_by_name(field, value):
    config = dict(
        sensor_timeout_s=0.1,
        resume_after_fresh_samples=1,
        safe_action="zero",
        reset_on_resume=True,
        max_action_rate=0.0,
        blend_s=0.0,
        max_dt_s=0.2,
        use_measured_dt=True,
        watchdog_timeout_s=0.5,
    )
    config[field] = value
    with pytest.raises(SafetyError, match=field):
        SafetyConfig(**config)


# --------------------------------------------------------------------------------------------
# the watchdog
# --------------------------------------------------------------------------------------------
@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.floats(0.0, 0.3),  # wall time step
            st.booleans(),  # a tick completed
            st.booleans(),  # the thread showed life
            st.sampled_from(["running", "running", "running", "stopped", "exited"]),
            st.booleans(),  # the last tick commanded
        ),
        min_size=1,
        max_size=80,
    )
)
def test_watchdog_flags_every_stall_within_its_timeout_and_repeats_the_safe_action(events):
    dog = Watchdog(timeout_s=0.5, repeat_s=0.1)
    now, since, last_tick, alive, last_safe = 0.0, 0.0, None, None, None
    for step, ticked, lived, proc, commanding in events:
        now += step
        if ticked:
            last_tick = alive = now
        elif lived:
            alive = now
        v = dog.check(
            LoopHealth(
                now, since, last_tick, alive, proc != "exited", proc == "stopped", None, commanding
            )
        )
        tick_age = now - (last_tick if last_tick is not None else since)
        alive_age = now - (alive if alive is not None else since)
        must = proc != "running" or (commanding and tick_age > 0.5) or alive_age > 0.5
        assert v.stalled == must, (v, tick_age, alive_age, proc)
        if v.stalled:
            assert v.cause
            assert v.replace_process == (proc != "running" or alive_age > 0.5)
            if last_safe is None or now - last_safe >= 0.1:
                assert v.publish_safe
            if v.publish_safe:
                last_safe = now
        else:
            last_safe = None


# --------------------------------------------------------------------------------------------
# the estop gate
# --------------------------------------------------------------------------------------------
@settings(max_examples=300, deadline=None)
@given(
    required=st.booleans(),
    remembered=st.sampled_from([None, True, False]),
    events=st.lists(
        st.tuples(
            st.floats(0.0, 0.5),  # time step
            st.sampled_from([None, None, True, False]),  # an estop message
            st.integers(0, 2),  # latched estop publishers known
        ),
        max_size=30,
    ),
)
def test_estop_gate_releases_only_on_a_message_or_an_explicit_absence(required, remembered, events):
    from liquid_control.core.safety import EstopGate

    gate = EstopGate("/n/estop", required, 1.0, 0.0, remembered)
    now, last = 0.0, remembered
    for step, message, latched in events:
        now += step
        if message is not None:
            gate.update(message)
            last = message
        engaged, detail = gate.state(now, latched)
        if engaged is False:
            # released only by a release message (or one remembered), or when estop is not
            # required, no latched publisher is known and the discovery window has passed
            assert last is False or (last is None and not required and latched == 0 and now >= 1.0)
        if engaged is None:
            assert detail and last is None
        if last is True:
            assert engaged is True
