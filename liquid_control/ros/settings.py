"""Every setting of the policy node, declared once (no rclpy import: plain data).

Each `Setting` has its name, type (from the default), default, range or choices, description,
whether it can change at run time, and which part uses it:

- ``node``: the node's process (loading, swaps, the watchdog, topics);
- ``loop``: the control process (scheduling, inputs, debug output);
- ``safety``: the safety core (`liquid_control.core.safety.SafetyConfig`, one field per setting).

From this table come the ROS parameter descriptors (`policy_node`), the settings the control
process receives (`loop_values`), the safety core's config (`safety_config`), and the check of a
parameter file such as ``config/policy_node.yaml`` (`check_parameters`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from liquid_control.core.safety import SAFE_ACTIONS, SafetyConfig

STRING_ARRAY, INTEGER_ARRAY = "string[]", "integer[]"  # a list default is written as its type


@dataclass(frozen=True)
class Setting:
    name: str
    default: Any
    description: str
    scope: str  # "node" | "loop" | "safety"
    read_only: bool = False
    range: tuple[float, float] | None = None
    choices: tuple[str, ...] | None = None

    @property
    def is_list(self) -> bool:
        return self.default in (STRING_ARRAY, INTEGER_ARRAY)

    @property
    def kind(self) -> type | str:
        """The value type: bool, int, float, str, or STRING_ARRAY / INTEGER_ARRAY."""
        return self.default if self.is_list else type(self.default)

    def check(self, value: Any) -> str:
        """'' if `value` fits this setting, else what is wrong (naming the setting)."""
        kind = self.kind
        if kind in (STRING_ARRAY, INTEGER_ARRAY):
            item = str if kind == STRING_ARRAY else int
            if not isinstance(value, list) or not all(
                isinstance(v, item) and not isinstance(v, bool) for v in value
            ):
                return f"{self.name}: expected a list of {item.__name__}, got {value!r}"
            return ""
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if kind is not type(value):
            return f"{self.name}: expected a {kind.__name__}, got {value!r}"
        if self.choices is not None and value not in self.choices:
            return f"{self.name}: expected one of {self.choices}, got {value!r}"
        if self.range is not None:
            lo, hi = self.range
            if not (isinstance(value, (int, float)) and math.isfinite(value) and lo <= value <= hi):
                return f"{self.name}: expected {lo:g} to {hi:g}, got {value!r}"
        return ""


_AUTO_PERIODS = 5  # "0 = auto" settings derived from the control period

SETTINGS: tuple[Setting, ...] = (
    Setting(
        "policy_path",
        "",
        "Policy file (.lcp) to run. Setting it at run time swaps the policy after validation. "
        "A relative path is looked up in allowed_policy_dirs.",
        "node",
    ),
    Setting(
        "allowed_policy_dirs",
        STRING_ARRAY,
        "Directories policy files may be loaded from (empty: the directory of the policy given "
        "at start-up).",
        "node",
        read_only=True,
    ),
    Setting(
        "autostart",
        True,
        "Configure and activate without a lifecycle manager.",
        "node",
        read_only=True,
    ),
    Setting(
        "control_rate_hz",
        0.0,
        "Loop rate in Hz; 0 = the policy's control_rate_hz.",
        "node",
        read_only=True,
        range=(0.0, 10000.0),
    ),
    Setting(
        "relative_topics",
        True,
        "Resolve the policy's topic names in the node's namespace (a leading '/' is dropped), "
        "so namespace:=robot1 gives /robot1/joint_states; false = the names as the spec writes "
        "them. ROS remapping (-r from:=to) applies either way.",
        "node",
        read_only=True,
    ),
    Setting(
        "use_measured_dt",
        True,
        "Step the LTC by the measured time since the previous tick (else the nominal period).",
        "safety",
    ),
    Setting(
        "sensor_timeout_s",
        0.25,
        "An input older than this (node-clock receive time) makes the node publish the safe "
        "action.",
        "safety",
        range=(0.0001, 3600.0),
    ),
    Setting(
        "resume_after_fresh_samples",
        3,
        "After an input went stale, the policy resumes only once this many new samples of it "
        "have arrived (hysteresis: a sensor slower than sensor_timeout_s does not make the "
        "output chatter).",
        "safety",
        range=(1, 1000),
    ),
    Setting(
        "safe_action",
        "zero",
        "Safe action: zero (each action 0, clipped into its limits), hold (position outputs hold "
        "the last command, velocity, effort and undeclared outputs go to zero: a mobile base "
        "stops) or spec (the vector spec.extra['safe_action'] of the policy).",
        "safety",
        choices=SAFE_ACTIONS,
    ),
    Setting(
        "reset_on_resume",
        True,
        "Reset the hidden state when the policy resumes after a safe-action period.",
        "safety",
    ),
    Setting(
        "max_action_rate",
        0.0,
        "Largest change of each action element per second while the policy commands, in its "
        "units/s (0 = no limit). The safe action is never ramped.",
        "safety",
        range=(0.0, 1.0e9),
    ),
    Setting(
        "blend_s",
        0.0,
        "Fade-in: after activation, a resume, an estop release or a swap, blend from where the "
        "robot was (the last command; for position outputs with a feedback observation, the "
        "measured position) to the policy's output over this many seconds (0 = off).",
        "safety",
        range=(0.0, 60.0),
    ),
    Setting(
        "max_dt_s",
        0.0,
        "Largest elapsed time given to the LTC; a longer gap (or a clock jump back) gives one "
        "safe tick and a reset hidden state. 0 = 5 control periods.",
        "safety",
        range=(0.0, 3600.0),
    ),
    Setting(
        "watchdog_timeout_s",
        0.0,
        "Wall-clock time without a completed tick after which the node itself publishes the safe "
        "action, reports ERROR and (for a dead or hung control process) replaces the control "
        "process. 0 = the larger of 0.5 s and 5 control periods.",
        "safety",
        read_only=True,
        range=(0.0, 3600.0),
    ),
    Setting(
        "estop_required_at_start",
        True,
        "Do not command until an estop message (false) has been received on ~/estop. false = "
        "no estop publisher is an explicit choice: the node then waits estop_discovery_s for a "
        "latched estop publisher and takes its sample before commanding.",
        "loop",
    ),
    Setting(
        "estop_discovery_s",
        2.0,
        "Time after the inputs first arrive during which a latched ~/estop publisher may still "
        "be discovered (estop_required_at_start false): no command before it has passed. Best "
        "effort: discovery has no deadline; estop_required_at_start true is the guarantee.",
        "loop",
        read_only=True,
        range=(0.0, 60.0),
    ),
    Setting(
        "input_wait_timeout_s",
        5.0,
        "After this long waiting for inputs, log which topics were never heard and whether they "
        "have publishers (and again every such interval).",
        "loop",
        range=(0.1, 3600.0),
    ),
    Setting(
        "max_messages_per_tick",
        20,
        "Messages taken per input topic at one tick (the newest valid one wins), so no input "
        "stream can hold a tick; a reader thread keeps the newest valid sample between ticks.",
        "loop",
        read_only=True,
        range=(1, 10000),
    ),
    Setting(
        "max_input_bytes",
        65536,
        "Largest serialized input message accepted (bytes); a bigger one is rejected "
        "(too_large) before it is decoded, so a stream of huge messages costs the loop nothing.",
        "loop",
        read_only=True,
        range=(64, 1 << 30),
    ),
    Setting(
        "max_swap_step_fraction",
        0.25,
        "A swap is refused if the candidate policy's measured step time (median of up to 50 timed "
        "steps; the timing stops once most are over) is above this fraction of the control period.",
        "node",
        range=(0.001, 1.0),
    ),
    Setting(
        "max_control_restarts",
        3,
        "Control-process replacements the watchdog may make within 60 s; one more and the node "
        "deactivates itself (ERROR on /diagnostics) until activated again.",
        "node",
        read_only=True,
        range=(0, 100),
    ),
    Setting(
        "debug",
        False,
        "Publish ~/observation (raw observation, dt and action of each tick).",
        "loop",
    ),
    Setting(
        "compiled_tick",
        True,
        "Run the control tick in compiled C (liquid_control/ros/_ctick.c: inputs, safety core, "
        "LTC step and publishing outside the Python interpreter lock) where it was built for this "
        "ROS install and covers the policy's message types; false = the Python tick. "
        "Diagnostics' control_thread says which one runs.",
        "loop",
        read_only=True,
    ),
    Setting(
        "realtime_priority",
        0,
        "SCHED_FIFO priority (1-99) of the control thread; 0 = normal scheduling. Needs "
        "CAP_SYS_NICE or an rtprio limit (e.g. '@realtime - rtprio 98' in "
        "/etc/security/limits.conf); if the kernel refuses, the loop runs at normal priority and "
        "diagnostics say why.",
        "loop",
        read_only=True,
        range=(0, 99),
    ),
    Setting(
        "cpu_affinity",
        INTEGER_ARRAY,
        "CPU cores the control thread may run on (empty: any core).",
        "loop",
        read_only=True,
    ),
)
BY_NAME: dict[str, Setting] = {s.name: s for s in SETTINGS}
SAFETY_FIELDS = tuple(f.name for f in fields(SafetyConfig))
# Settings the control process receives (the safety core's and its own).
LOOP_SETTINGS = tuple(s.name for s in SETTINGS if s.scope in ("loop", "safety"))


def check_parameters(values: Mapping[str, Any]) -> list[str]:
    """What is wrong with a set of parameter values (unknown names, types, ranges, choices)."""
    problems = []
    for name, value in values.items():
        setting = BY_NAME.get(name)
        if setting is None:
            if name != "use_sim_time":
                problems.append(
                    f"{name}: not a parameter of policy_node; expected one of {sorted(BY_NAME)}"
                )
            continue
        problem = setting.check(value)
        if problem:
            problems.append(problem)
    return problems


def defaults() -> dict[str, Any]:
    """Every setting's default (a list setting's default is the empty list)."""
    return {s.name: [] if s.is_list else s.default for s in SETTINGS}


def effective(values: Mapping[str, Any], period_s: float) -> dict[str, Any]:
    """`values` with the "0 = auto" settings resolved for a control period."""
    out = dict(values)
    if "max_dt_s" in out and not out["max_dt_s"]:
        out["max_dt_s"] = _AUTO_PERIODS * period_s
    if "watchdog_timeout_s" in out and not out["watchdog_timeout_s"]:
        out["watchdog_timeout_s"] = max(0.5, _AUTO_PERIODS * period_s)
    return out


def safety_config(values: Mapping[str, Any], period_s: float) -> SafetyConfig:
    """The safety core's config from setting values (auto values resolved)."""
    resolved = effective(values, period_s)
    return SafetyConfig(**{name: resolved[name] for name in SAFETY_FIELDS})


def check_timing(values: Mapping[str, Any], period_s: float) -> str:
    """'' if the timing settings fit the control period, else what is wrong."""
    resolved = effective(values, period_s)
    if resolved["max_dt_s"] < 2 * period_s:
        return (
            f"max_dt_s: {resolved['max_dt_s']} s is under two control periods "
            f"({2 * period_s:g} s); expected 0 (auto) or at least that"
        )
    if resolved["watchdog_timeout_s"] < 3 * period_s:
        return (
            f"watchdog_timeout_s: {resolved['watchdog_timeout_s']} s is under three control "
            f"periods ({3 * period_s:g} s); expected 0 (auto) or at least that"
        )
    return ""
