"""The safety core: every decision between a policy and the actuators, in pure code (no ROS).

The control loop gathers what it knows at a tick (the time on the node clock and on the wall
clock, which inputs have fresh samples, the raw observation, estop, enable, a reset request) into
a `TickInput`; `SafetyCore.tick` decides what is published and returns a `Command`. Nothing else
decides, so the invariants below are properties of this module alone, tested with arbitrary
sequences of inputs, flags, times and policy outputs (test_safety_core.py):

1. every published action is finite and within the action limits;
2. the policy's output is never published while the estop is engaged (or its state is not yet
   known), the policy is disabled, an input is stale (older than ``sensor_timeout_s``, or fresh
   again for fewer than ``resume_after_fresh_samples`` samples), the out-of-domain latch is set,
   the policy's output is not finite, or the clock jumped (back, or forward by more than
   ``max_dt_s``, or ``watchdog_timeout_s`` of wall time passed without a tick);
3. on a tick with any of those causes the command *is* the safe action, exactly: the safe action
   follows its cause within the same tick (and the loop ticks every period);
4. while the policy commands, no element moves by more than ``max_action_rate`` x the tick's
   elapsed time from the previously published command (the safe action itself is never ramped:
   a stop is not delayed);
5. after any period without policy commands (activation, a resume, an estop release, a swap) the
   command fades from where the robot was (the last published command; for position outputs with
   a ``feedback`` observation, the measured position) to the policy's output over ``blend_s``.

The safe action (``safe_action``): ``zero`` (each element 0, clipped into its limits), ``spec``
(the policy file's ``spec.extra['safe_action']``) or ``hold``: position outputs hold the last
published command, every other output (velocity, effort, or unknown) is zeroed, since holding a
velocity keeps a mobile base driving. With ``hold`` and total sensor loss, a position-controlled
arm stays where it was last sent; a base stops.

Hidden state: it is reset on resume (``reset_on_resume``), after a clock jump or gap, after a
non-finite output and when ``~/reset`` is requested; the elapsed time given to the LTC is the
measured period clamped to ``max_dt_s``. The LTC solver keeps every potential inside a box fixed by
its parameters (`Policy.state_ok`); a state outside it means corruption and latches the safe action,
as does an observation or a policy output outside the spec's ``domain_low``/``domain_high``. The
latch holds until a reset request (``~/reset``), and sets again at once if the cause persists.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from .spec import InterfaceSpec

SAFE_ACTIONS = ("zero", "hold", "spec")


class SafetyError(ValueError):
    """A safety setting or a policy's safety data is invalid (names the field)."""


@dataclass(frozen=True)
class SafetyConfig:
    """The settings the safety core uses (declared, with defaults and ranges, in
    `liquid_control.ros.settings`; every field here is one setting there)."""

    sensor_timeout_s: float
    resume_after_fresh_samples: int
    safe_action: str
    reset_on_resume: bool
    max_action_rate: float
    blend_s: float
    max_dt_s: float
    use_measured_dt: bool
    watchdog_timeout_s: float

    def __post_init__(self) -> None:
        if self.safe_action not in SAFE_ACTIONS:
            raise SafetyError(
                f"safe_action: expected one of {SAFE_ACTIONS}, got {self.safe_action!r}"
            )
        for name in ("sensor_timeout_s", "max_dt_s", "watchdog_timeout_s"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise SafetyError(f"{name}: expected a number of seconds > 0, got {value!r}")
        for name in ("max_action_rate", "blend_s"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise SafetyError(f"{name}: expected a number >= 0, got {value!r}")
        if int(self.resume_after_fresh_samples) < 1:
            raise SafetyError(
                f"resume_after_fresh_samples: expected >= 1, got {self.resume_after_fresh_samples}"
            )


@dataclass(frozen=True)
class ActionSpace:
    """What the safety core needs of a policy's interface spec (built by `from_spec`)."""

    low: np.ndarray
    high: np.ndarray
    zero: np.ndarray  # 0 clipped into the limits
    spec_safe: np.ndarray | None  # spec.extra['safe_action'], checked
    position: np.ndarray  # bool per action: a position target (held by 'hold')
    feedback: np.ndarray  # int per action: observation index measuring it, -1 = none
    action_domain: tuple[np.ndarray, np.ndarray]  # bounds of the unclipped output (+-inf: none)
    observation_domain: tuple[np.ndarray, np.ndarray]
    action_names: tuple[str, ...]
    observation_names: tuple[str, ...]

    @classmethod
    def from_spec(cls, spec: InterfaceSpec) -> ActionSpace:
        """The safety data of a policy's interface spec."""
        low, high = spec.action_low, spec.action_high
        obs_index = {e.name: i for i, e in enumerate(spec.observations)}

        def domain(elements: Any) -> tuple[np.ndarray, np.ndarray]:
            lo = [-np.inf if e.domain_low is None else e.domain_low for e in elements]
            hi = [np.inf if e.domain_high is None else e.domain_high for e in elements]
            return np.array(lo, np.float64), np.array(hi, np.float64)

        return cls(
            low=low,
            high=high,
            zero=np.clip(np.zeros(spec.action_dim), low, high),
            spec_safe=spec_safe_action(spec) if "safe_action" in spec.extra else None,
            position=np.array([e.commands == "position" for e in spec.actions], bool),
            feedback=np.array(
                [obs_index.get(e.feedback, -1) if e.feedback else -1 for e in spec.actions],
                np.int64,
            ),
            action_domain=domain(spec.actions),
            observation_domain=domain(spec.observations),
            action_names=tuple(e.name for e in spec.actions),
            observation_names=tuple(e.name for e in spec.observations),
        )


def spec_safe_action(spec: InterfaceSpec) -> np.ndarray:
    """spec.extra['safe_action'] as a checked vector (SafetyError naming the problem)."""
    value = spec.extra.get("safe_action")
    expected = f"expected a list of {spec.action_dim} finite numbers within the action limits"
    if value is None:
        raise SafetyError(f"spec.extra['safe_action'] is missing; {expected}")
    if not isinstance(value, (list, tuple)) or len(value) != spec.action_dim:
        raise SafetyError(f"spec.extra['safe_action']: {expected}, got {value!r:.80}")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        raise SafetyError(f"spec.extra['safe_action']: {expected}, got {value!r:.80}")
    vec = np.array(value, np.float64)
    if not np.isfinite(vec).all():
        raise SafetyError(f"spec.extra['safe_action']: {expected}, got {value!r:.80}")
    outside = (vec < spec.action_low) | (vec > spec.action_high)
    if outside.any():
        i = int(np.flatnonzero(outside)[0])
        raise SafetyError(
            f"spec.extra['safe_action'][{i}] = {vec[i]} is outside the limits "
            f"[{spec.action_low[i]}, {spec.action_high[i]}] of action {spec.actions[i].name!r}"
        )
    return vec


def robot_safe_action(spec: InterfaceSpec) -> np.ndarray:
    """The command a robot gets when nothing better is known: the spec's `safe_action` if it has
    one (a standing pose), else 0 clipped into the limits. The one definition that the sim node
    (no command), the latency wrappers (before the first command) and the loop's `spec` mode use."""
    if "safe_action" in spec.extra:
        return spec_safe_action(spec)
    return np.clip(np.zeros(spec.action_dim), spec.action_low, spec.action_high)


def safe_action(mode: str, space: ActionSpace, last: np.ndarray | None) -> np.ndarray:
    """The safe action of `mode` (zero, hold, spec) after the last published command `last`."""
    if mode == "spec" and space.spec_safe is not None:
        return space.spec_safe.copy()
    if mode == "hold" and last is not None and last.shape == space.low.shape:
        held = np.where(np.isfinite(last), last, space.zero)
        return np.where(space.position, np.clip(held, space.low, space.high), space.zero)
    return space.zero.copy()


@dataclass
class EstopGate:
    """What the loop knows of the estop, and whether that is enough to command.

    `remembered`: the state the node's process last heard (it keeps listening across
    reconfigures and control-process restarts; None: never heard). `required`: no command before
    an estop message has been heard (estop_required_at_start). Otherwise the absence of an estop
    publisher is an explicit choice, but a latched (transient-local) publisher may not be
    discovered yet: for `discovery_s` after `started_s` (the loop moves it to when its inputs
    first arrived) the state counts as unknown, and whenever a latched publisher is known, its
    sample is awaited. That window is best effort (discovery has no end); a guarantee needs
    `required`.

    `state(now_s, latched_publishers)` -> (engaged: True/False/None = unknown, detail)."""

    topic: str
    required: bool
    discovery_s: float
    started_s: float
    remembered: bool | None = None
    heard: bool = False

    def update(self, engaged: bool) -> bool:
        """An estop message; returns True when the state changed."""
        changed = not self.heard or self.remembered != engaged
        self.remembered, self.heard = bool(engaged), True
        return changed

    def state(self, now_s: float, latched_publishers: int) -> tuple[bool | None, str]:
        """(engaged: True / False / None = not known yet, why not known) at `now_s`."""
        if self.heard or self.remembered is not None:
            return bool(self.remembered), ""
        if self.required:
            return None, (f"waiting for an estop message on {self.topic} (estop_required_at_start)")
        if latched_publishers > 0:
            return None, f"waiting for the latched sample of the estop publisher on {self.topic}"
        if now_s - self.started_s < self.discovery_s:
            return None, f"looking for a latched estop publisher on {self.topic}"
        return False, ""


class SteppablePolicy(Protocol):
    """What the core needs of a policy (`liquid_control.core.Policy` is one)."""

    state: np.ndarray

    def step(
        self, observation: np.ndarray, dt: float | None = None, clip: bool = True
    ) -> np.ndarray:
        """One control step (see `Policy.step`)."""

    def reset(self) -> None:
        """Zero the hidden state."""

    def state_ok(self, state: np.ndarray | None = None) -> bool:
        """Whether a hidden state lies inside its bounds."""


@dataclass(frozen=True)
class InputSample:
    """The newest valid sample of one input topic: its receive time on the node clock (None:
    nothing yet) and how many valid samples arrived in all."""

    received_s: float | None
    count: int


@dataclass(frozen=True)
class TickInput:
    """What the loop knows at one tick.

    `now_s`: node-clock time (sim time with use_sim_time); `wall_s`: a monotonic wall clock.
    `estop`: True engaged, False released, None not known yet (`estop_detail` says why).
    `raw`: the raw observation, None until every input has arrived once."""

    now_s: float
    wall_s: float
    inputs: Mapping[str, InputSample]
    raw: np.ndarray | None
    estop: bool | None = False
    estop_detail: str = ""
    enabled: bool = True
    reset_requested: bool = False


@dataclass(frozen=True)
class Command:
    """The core's decision for one tick.

    `action` is None only while waiting for the first sample of every input (nothing is
    published then). `commanding`: the policy's output (faded, rate limited) is published;
    False: the safe action is. `reasons` name every cause of a safe action. `dt_s`: the elapsed
    time given to the LTC (None: not stepped). `events`: things that happened (a reset, a latch,
    a clock jump) for the log and diagnostics."""

    action: np.ndarray | None
    commanding: bool
    reasons: tuple[str, ...] = ()
    dt_s: float | None = None
    steps_since_reset: int = 0
    raw_action: np.ndarray | None = None
    events: tuple[str, ...] = ()


@dataclass
class _Fade:
    start: np.ndarray
    t0_s: float  # node-clock time of the tick before the first commanding tick


@dataclass
class _TopicState:
    stale: bool = False
    count_at_stale: int = 0


@dataclass
class SafetyCore:
    """Decides each tick's command (see the module docstring for what it guarantees)."""

    config: SafetyConfig
    space: ActionSpace
    policy: SteppablePolicy
    period_s: float
    _topics: dict[str, _TopicState] = field(default_factory=dict)
    _last_now_s: float | None = None
    _last_wall_s: float | None = None
    _prev: np.ndarray | None = None  # the last published command
    _commanding: bool = False  # the previous tick published the policy's output
    _force_reset: bool = True  # reset before the next step whatever reset_on_resume says
    _resumed: bool = False  # a safe period since the last step (reset if reset_on_resume)
    _policy_changed: bool = False
    _fade: _Fade | None = None
    _latch: str = ""
    _steps: int = 0  # steps of the current hidden state

    def __post_init__(self) -> None:
        if not (math.isfinite(self.period_s) and self.period_s > 0):
            raise SafetyError(f"period_s: expected > 0, got {self.period_s}")

    # -- changes from outside ----------------------------------------------------------------
    def set_policy(self, policy: SteppablePolicy, space: ActionSpace) -> None:
        """A swap: the next commanding tick starts from a fresh hidden state and fades from the
        last published command to the new policy's output."""
        self.policy, self.space = policy, space
        self._force_reset = True
        self._policy_changed = True
        if self._prev is not None:
            self._prev = np.clip(self._prev, space.low, space.high)

    def set_config(self, config: SafetyConfig) -> None:
        """New settings from the next tick on."""
        self.config = config

    def restart(self) -> None:
        """Activation: forget the previous run (times, last command, hysteresis); a latch stays
        until a reset request."""
        self._topics.clear()
        self._last_now_s = self._last_wall_s = None
        self._prev = None
        self._commanding = False
        self._force_reset = True
        self._resumed = False
        self._fade = None

    @property
    def latched(self) -> str:
        """The out-of-domain latch's cause ('' when not latched)."""
        return self._latch

    @property
    def last_command(self) -> np.ndarray | None:
        """The last published command (None before the first)."""
        return self._prev

    # -- the safe action ---------------------------------------------------------------------
    def safe_action(self) -> np.ndarray:
        """The safe action now (`safe_action` setting; see the module docstring)."""
        return safe_action(self.config.safe_action, self.space, self._prev)

    # -- one tick ----------------------------------------------------------------------------
    def tick(self, inp: TickInput) -> Command:
        """The command of one tick (the policy is stepped only when it may command)."""
        events: list[str] = []
        period, wall_gap = self._elapsed(inp)
        if inp.reset_requested:
            self._force_reset = True
            if self._latch:
                events.append(f"latch cleared by a reset request (was: {self._latch})")
                self._latch = ""
        reasons = self._input_reasons(inp)  # (hysteresis counts from the first sample on)
        if inp.raw is None:  # activation waits for every input once; nothing is published
            return Command(None, False, ("waiting for inputs",), events=tuple(events))
        if inp.estop is None:
            reasons.append(inp.estop_detail or "estop state unknown")
        elif inp.estop:
            reasons.append("estop")
        if not inp.enabled:
            reasons.append("disabled")
        jump = self._clock_jump(period, wall_gap)
        if jump:
            reasons.append(jump)
            events.append(jump + ": hidden state reset")
            self._force_reset = True
        if not self._latch and not reasons:
            self._check_observation_domain(inp.raw)
        if self._latch:
            reasons.append(f"latched: {self._latch}")
        if reasons:
            return self._safe(reasons, events)

        # Nothing stops the policy: step it (from a fresh state where due).
        dt = self._dt(period)
        if self._force_reset or (self._resumed and self.config.reset_on_resume):
            self.policy.reset()
            self._steps = 0
        self._force_reset = self._resumed = False
        with np.errstate(all="ignore"):
            raw_action = np.asarray(self.policy.step(inp.raw, dt, clip=False), np.float64)
        self._steps += 1
        problem = self._output_problem(raw_action)
        if problem:
            self.policy.reset()
            self._steps = 0
            self._force_reset = True
            return self._safe([problem], events, dt, raw_action)
        action = self._faded(np.clip(raw_action, self.space.low, self.space.high), inp)
        if self.config.max_action_rate > 0 and self._prev is not None:
            step_s = period if period is not None and 0 < period <= self.config.max_dt_s else dt
            limit = self.config.max_action_rate * step_s
            action = np.clip(action, self._prev - limit, self._prev + limit)
        action = np.clip(action, self.space.low, self.space.high)
        self._prev, self._commanding, self._policy_changed = action, True, False
        return Command(action.copy(), True, (), dt, self._steps, raw_action, tuple(events))

    # -- parts -------------------------------------------------------------------------------
    def _elapsed(self, inp: TickInput) -> tuple[float | None, float | None]:
        period = None if self._last_now_s is None else inp.now_s - self._last_now_s
        wall_gap = None if self._last_wall_s is None else inp.wall_s - self._last_wall_s
        self._last_now_s, self._last_wall_s = inp.now_s, inp.wall_s
        return period, wall_gap

    def _input_reasons(self, inp: TickInput) -> list[str]:
        """Stale inputs, with hysteresis: a topic that went stale is fresh again only after
        `resume_after_fresh_samples` new samples since it was last seen stale, the newest within
        the timeout."""
        cfg, stale = self.config, []
        for topic, sample in inp.inputs.items():
            state = self._topics.setdefault(topic, _TopicState())
            if sample.received_s is None:  # awaited (activation waits for every first sample)
                stale.append(topic)
            elif (
                inp.now_s - sample.received_s > cfg.sensor_timeout_s
            ):  # (a gap while recovering restarts the count)
                state.stale, state.count_at_stale = True, sample.count
                stale.append(topic)
            elif state.stale:
                if sample.count - state.count_at_stale >= cfg.resume_after_fresh_samples:
                    state.stale = False
                else:
                    stale.append(topic)
        return [f"stale: {', '.join(stale)}"] if stale else []

    def _clock_jump(self, period: float | None, wall_gap: float | None) -> str:
        cfg = self.config
        if period is not None and period < 0:
            return f"clock jumped back by {-period:.3f} s"
        if period is not None and period > cfg.max_dt_s:
            return f"clock gap of {period:.3f} s (max_dt_s {cfg.max_dt_s:g})"
        if wall_gap is not None and wall_gap > cfg.watchdog_timeout_s:
            return f"no tick for {wall_gap:.3f} s of wall time"
        return ""

    def _dt(self, period: float | None) -> float:
        if self.config.use_measured_dt and period is not None and period > 0:
            return min(period, self.config.max_dt_s)
        return self.period_s

    def _check_observation_domain(self, raw: np.ndarray) -> None:
        lo, hi = self.space.observation_domain
        outside = (raw < lo) | (raw > hi)
        if outside.any():
            i = int(np.flatnonzero(outside)[0])
            self._latch = (
                f"observation {self.space.observation_names[i]!r} = {raw[i]:.6g} is outside its "
                f"domain [{lo[i]:g}, {hi[i]:g}]"
            )

    def _output_problem(self, raw_action: np.ndarray) -> str:
        """'' for a usable output; else the cause (a latch for a corrupt state or an output
        outside the action domain)."""
        if raw_action.shape != self.space.low.shape or not np.isfinite(raw_action).all():
            return "non-finite policy output"
        if not self.policy.state_ok():
            self._latch = "hidden state outside the bounds the LTC solver keeps it in (corruption)"
            return f"latched: {self._latch}"
        lo, hi = self.space.action_domain
        outside = (raw_action < lo) | (raw_action > hi)
        if outside.any():
            i = int(np.flatnonzero(outside)[0])
            self._latch = (
                f"action {self.space.action_names[i]!r} = {raw_action[i]:.6g} is outside its "
                f"domain [{lo[i]:g}, {hi[i]:g}]"
            )
            return f"latched: {self._latch}"
        return ""

    def _faded(self, action: np.ndarray, inp: TickInput) -> np.ndarray:
        """Blend from where the robot was to `action` over blend_s after a period without policy
        commands or a swap."""
        if not self._commanding or self._policy_changed:
            start = (self._prev if self._prev is not None else self.safe_action()).copy()
            if not self._commanding:  # activation or resume: position outputs start from where
                fb = self.space.feedback  # the robot measures itself to be
                measured = fb >= 0
                start[measured] = inp.raw[fb[measured]]
            # t0 one period back: the first commanding tick already moves by period / blend_s
            self._fade = _Fade(
                np.clip(start, self.space.low, self.space.high), inp.now_s - self.period_s
            )
        fade = self._fade
        if fade is None or self.config.blend_s <= 0:
            return action
        alpha = (inp.now_s - fade.t0_s) / self.config.blend_s
        if not alpha < 1.0:  # NaN-safe
            self._fade = None
            return action
        alpha = max(alpha, 0.0)
        return (1.0 - alpha) * fade.start + alpha * action

    def _safe(
        self,
        reasons: list[str],
        events: list[str],
        dt: float | None = None,
        raw_action: np.ndarray | None = None,
    ) -> Command:
        action = self.safe_action()
        self._prev, self._commanding, self._resumed = action, False, True
        return Command(action.copy(), False, tuple(reasons), dt, 0, raw_action, tuple(events))
