"""The policy node: runs an LTC policy at a fixed rate on a robot, behind a safety layer.

A managed (lifecycle) node. With ``autostart`` (default) it configures and activates itself.

- configure: load ``policy_path``, check it (file, interface spec against the real message
  classes, dry inference, step time), start the control process (`control_loop`), create the
  services, ``~/is_safe``, ``~/active_policy`` and /diagnostics.
- activate: the loop waits until every input has arrived once and the estop state is known, then
  commands. deactivate: publish the safe action once and stop commanding. cleanup/shutdown:
  release everything.

Every safety decision of a tick is made by the safety core (`liquid_control.core.safety`): stale
inputs (with hysteresis), estop, enable, clock jumps and gaps, out-of-domain latch, non-finite
outputs, limits, ``max_action_rate``, fade-in. This node adds what a process cannot do for
itself: a **watchdog** on the wall clock (`liquid_control.core.watchdog`) that, when no tick has
completed for ``watchdog_timeout_s``, publishes the safe action from this process, sets
``~/is_safe`` true, reports ERROR with the cause and, for a dead or hung control process, kills it
and starts a new one (``max_control_restarts`` within 60 s; beyond that the node deactivates
itself). The **estop** state is kept here too (this node listens on ``~/estop`` for its whole
life), so it survives reconfigures and control-process restarts.

Topics come from the policy's interface spec, resolved in the node's namespace
(``relative_topics``) and through ROS remapping (``-r /joint_states:=/robot/joint_states``).
``~/estop`` (std_msgs/Bool, latched or not): true holds the safe action until false.
``~/enable`` (std_srvs/SetBool), ``~/reset`` (std_srvs/Trigger: reset the hidden state at the next
tick and clear an out-of-domain latch). ``~/is_safe`` (latched std_msgs/Bool) is true while the
node is *not* letting the policy command the robot. ``~/active_policy`` (latched std_msgs/String) is
``<path> <content hash>``.

Policy swap: setting ``policy_path`` loads and validates the file in this node's parameter service
thread (never on the control path): inside ``allowed_policy_dirs``, a valid policy file, an
interface spec that fits the running one, every field path present on the message classes, one
finite dry inference on the newest observation, a step time within ``max_swap_step_fraction`` of
the control period. The control process then puts the new policy in place between two ticks;
a failed check refuses the parameter with the reason, and the old policy keeps running. No
exception from a file can stop the node: an unexpected one refuses the swap with its text.

``~/observation`` (std_msgs/Float64MultiArray, only with ``debug``): per tick
``[tick, dt_s, steps_since_reset, *raw_observation, *action]`` (labels in ``layout.dim``); reliable,
history 1000, so a recorder that falls behind for a while loses no row.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import threading
import time
from collections import deque
from typing import Any

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import (
    FloatingPointRange,
    IntegerRange,
    ParameterDescriptor,
    SetParametersResult,
)
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.clock import Clock, ClockType
from rclpy.exceptions import InvalidHandle, ParameterUninitializedException
from rclpy.executors import Executor, ExternalShutdownException, MultiThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.signals import SignalHandlerOptions
from std_msgs.msg import Bool, String
from std_srvs.srv import SetBool, Trigger

from liquid_control.core.adapters import ActionWriter
from liquid_control.core.message_types import ElementInvalid, check_field_paths
from liquid_control.core.policy import Policy
from liquid_control.core.policy_file import PolicyFileError
from liquid_control.core.safety import ActionSpace, SafetyError, safe_action, spec_safe_action
from liquid_control.core.spec import InterfaceSpec, SpecError
from liquid_control.core.watchdog import LoopHealth, Watchdog

from .loop_process import LoopProcess, LoopProcessError
from .messages import (
    COMMAND_QOS,
    LATCHED_QOS,
    RELIABLE_QOS,
    make_message,
    message_class,
    output_qos,
)
from .protocol import Ev, Event, Op
from .settings import (
    BY_NAME,
    INTEGER_ARRAY,
    LOOP_SETTINGS,
    SETTINGS,
    STRING_ARRAY,
    check_timing,
    effective,
    safety_config,
)

DEBUG_TOPIC = "~/observation"
RESTART_WINDOW_S = 60.0
SWAP_TIMING_STEPS = 50


class PolicyRejected(ValueError):
    """A policy file failed a check before it could run; the message names the problem."""


class PolicyNode(LifecycleNode):
    """Managed node running an LTC policy behind a safety layer (see the module docstring)."""

    def __init__(self, node_name: str = "policy_node", **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        self._values = self._declare_parameters()
        self._service_group = MutuallyExclusiveCallbackGroup()  # services, diagnostics
        self._initial_dir = ""  # the directory of the first policy (allowed_policy_dirs unset)
        self._transition_lock = threading.RLock()  # lifecycle transitions vs. the watchdog
        # The estop state lives here for the node's whole life (not only in a control process).
        self._estop: bool | None = None
        self._started_s = time.monotonic()
        self._estop_subs = [
            self.create_subscription(Bool, "~/estop", self._on_estop, qos)
            for qos in (LATCHED_QOS, RELIABLE_QOS)
        ]
        self._restarts: deque[float] = deque()
        self._reset_fields()
        self._ros_entities: list[tuple[str, Any]] = []
        self.add_on_set_parameters_callback(self._on_set_parameters)

    # ---------------------------------------------------------------------------------------
    # parameters (declared from the settings table)
    # ---------------------------------------------------------------------------------------
    def _declare_parameters(self) -> dict[str, Any]:
        values = {}
        for s in SETTINGS:
            descriptor = ParameterDescriptor(
                name=s.name,
                description=s.description,
                read_only=s.read_only,
                additional_constraints=f"one of {', '.join(s.choices)}" if s.choices else "",
            )
            if s.range is not None and s.kind is int:
                descriptor.integer_range = [
                    IntegerRange(from_value=int(s.range[0]), to_value=int(s.range[1]), step=1)
                ]
            elif s.range is not None:
                descriptor.floating_point_range = [
                    FloatingPointRange(from_value=s.range[0], to_value=s.range[1], step=0.0)
                ]
            default = {
                STRING_ARRAY: Parameter.Type.STRING_ARRAY,
                INTEGER_ARRAY: Parameter.Type.INTEGER_ARRAY,
            }.get(s.default, s.default)
            self.declare_parameter(s.name, default, descriptor)
            values[s.name] = self._param(s.name)
            problem = s.check(values[s.name])
            if problem:
                raise ValueError(f"parameter {problem}")
        available = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        cores = [int(c) for c in values["cpu_affinity"]]
        if cores and not set(cores) <= set(available):
            raise ValueError(
                f"parameter cpu_affinity: cores {sorted(set(cores) - set(available))} "
                f"are not available to this process; expected a subset of {available}"
            )
        return values

    def _param(self, name: str) -> Any:
        try:
            value = self.get_parameter(name).value
        except ParameterUninitializedException:  # a list declared without a default: unset
            return []
        if value is None or isinstance(value, (str, bytes, bool, int, float)):
            return value
        return list(value)  # array parameters come as lists or array.array

    @property
    def autostart(self) -> bool:
        return bool(self._values["autostart"])

    def _on_set_parameters(self, params: list[Parameter]) -> SetParametersResult:
        """Check every change first (a swap loads and checks the file here), then apply."""
        try:
            return self._set_parameters(params)
        except Exception as exc:  # noqa: BLE001 (last resort: a parameter call never stops the node)
            self.get_logger().error(f"parameter change refused: {type(exc).__name__}: {exc}")
            return _refuse(f"refused: {type(exc).__name__}: {exc}")

    def _set_parameters(self, params: list[Parameter]) -> SetParametersResult:
        updates: dict[str, Any] = {}
        for p in params:
            setting = BY_NAME.get(p.name)
            value = list(p.value) if isinstance(p.value, (list, tuple)) else p.value
            if setting is not None:
                problem = setting.check(value)
                if problem:
                    return _refuse(problem)
            updates[p.name] = value
        values = {**self._values, **updates}
        if self._policy is not None:
            problem = check_timing(values, self._period_s)
            if problem:
                return _refuse(problem)
            if values["safe_action"] == "spec":
                try:
                    spec_safe_action(self._policy.spec)
                except SafetyError as exc:
                    return _refuse(f"safe_action 'spec': {exc}")
        candidate = None
        if "policy_path" in updates and self._policy is not None:
            self._tell_loop(Op.SWAPPING, value=True)  # ticks from now count as during a swap
            try:
                candidate = self._load_checked(str(updates["policy_path"]), self._policy)
            except PolicyRejected as exc:
                self._swap_refusals += 1
                self._last_swap_error = str(exc)
                self.get_logger().error(f"policy swap refused: {exc}")
                return _refuse(str(exc))
            finally:
                if candidate is None:
                    self._tell_loop(Op.SWAPPING, value=False)
        elif "policy_path" in updates:
            try:
                self._resolve_path(str(updates["policy_path"]))
            except PolicyRejected as exc:
                return _refuse(str(exc))
        self._values = values
        loop_updates = {k: v for k, v in updates.items() if k in LOOP_SETTINGS}
        if loop_updates:
            self._tell_loop(Op.SET, values=loop_updates)
        if candidate is not None:
            # Put in place by the control process at a tick boundary, with a fresh hidden state;
            # its "swapped" event makes it the node's active policy.
            self._candidates[candidate.content_hash] = candidate
            self._tell_loop(Op.SWAP, arrays=candidate.runtime(), policy=_identity(candidate))
            self.get_logger().info(
                f"policy {candidate.path} ({candidate.content_hash}) validated; swapping"
            )
        return SetParametersResult(successful=True, reason="")

    def _tell_loop(
        self, op: Op, arrays: dict[str, np.ndarray] | None = None, **fields: Any
    ) -> None:
        if self._loop is not None:
            try:
                self._loop.send(op, arrays, **fields)
            except LoopProcessError as exc:
                self.get_logger().error(str(exc), throttle_duration_sec=1.0)

    # ---------------------------------------------------------------------------------------
    # loading and validation (never on the control path)
    # ---------------------------------------------------------------------------------------
    def _allowed_dirs(self) -> list[str]:
        dirs = [d for d in self._values["allowed_policy_dirs"] if d]
        if not dirs and self._initial_dir:
            dirs = [self._initial_dir]
        return [os.path.realpath(d) for d in dirs]

    def _resolve_path(self, path: str) -> str:
        """The real path of `path` inside an allowed folder (a relative path is looked up in
        them, in order); PolicyRejected saying what was tried otherwise."""
        if not path:
            raise PolicyRejected("policy_path: empty; expected the path of a .lcp policy file")
        dirs = self._allowed_dirs()
        if not os.path.isabs(path):
            if not dirs:
                return os.path.realpath(path)
            for d in dirs:
                if os.path.exists(os.path.join(d, path)):
                    path = os.path.join(d, path)
                    break
            else:
                raise PolicyRejected(
                    f"policy_path {path!r}: a relative path is looked up in allowed_policy_dirs "
                    f"{dirs}, and none of them holds it"
                )
        real = os.path.realpath(path)
        if dirs and not any(os.path.commonpath([real, d]) == d for d in dirs):
            raise PolicyRejected(
                f"policy_path {path!r} is outside allowed_policy_dirs {dirs}; expected a file "
                "inside one of them"
            )
        return real

    def _load_checked(self, path: str, active: Policy | None) -> Policy:
        """Load `path` and run every check; raises PolicyRejected naming the problem (and
        nothing else: an unexpected exception becomes a refusal with its text)."""
        try:
            return self._load_and_check(path, active)
        except PolicyRejected:
            raise
        except Exception as exc:  # noqa: BLE001 (no policy file may stop the node)
            raise PolicyRejected(
                f"policy_path {path!r}: refused after an unexpected error "
                f"({type(exc).__name__}: {exc})"
            ) from None

    def _load_and_check(self, path: str, active: Policy | None) -> Policy:
        real = self._resolve_path(path)
        try:
            policy = Policy.load(real)
        except PolicyFileError as exc:
            raise PolicyRejected(f"policy_path {path!r}: {exc.problem}") from None
        spec = policy.spec
        try:
            check_spec_messages(spec)
        except (ValueError, ElementInvalid) as exc:
            raise PolicyRejected(f"policy_path {path!r}: {exc}") from None
        if active is not None:
            try:
                active.spec.check_compatible(spec)
            except SpecError as exc:
                raise PolicyRejected(
                    f"policy_path {path!r}: interface spec does not fit the node's topics: {exc}"
                ) from None
            if not math.isclose(spec.control_rate_hz, active.spec.control_rate_hz, rel_tol=1e-6):
                raise PolicyRejected(
                    f"policy_path {path!r}: control_rate_hz is {spec.control_rate_hz}, the running "
                    f"policy's is {active.spec.control_rate_hz}"
                )
        if self._values["safe_action"] == "spec":
            try:
                spec_safe_action(spec)
            except SafetyError as exc:
                raise PolicyRejected(f"policy_path {path!r}: {exc}") from None
        obs = spec.obs_mean  # the newest observation when the loop has one
        if self._loop is not None:
            try:
                raw = self._loop.request(Op.OBSERVATION).get("raw")
            except LoopProcessError as exc:
                raise PolicyRejected(f"policy_path {path!r}: {exc}") from None
            if raw is not None:
                obs = np.asarray(raw, np.float64)
        with np.errstate(all="ignore"):
            action = policy.step(obs)
        if not np.isfinite(action).all():
            raise PolicyRejected(
                f"policy_path {path!r}: dry inference gave a non-finite action {action.tolist()}"
            )
        period = self._period_s or 1.0 / (
            float(self._values["control_rate_hz"]) or spec.control_rate_hz
        )
        budget = float(self._values["max_swap_step_fraction"]) * period
        step_s = measure_step_s(policy, obs, budget_s=budget)
        if step_s > budget:
            raise PolicyRejected(
                f"policy_path {path!r}: one step takes {step_s * 1e6:.0f} us (median of up to "
                f"{SWAP_TIMING_STEPS} timed steps), over max_swap_step_fraction "
                f"{self._values['max_swap_step_fraction']:g} of the {period * 1e3:g} ms control "
                f"period ({budget * 1e6:.0f} us); expected a smaller policy or fewer ode_unfolds "
                f"(it has {policy.ode_unfolds})"
            )
        policy.reset()
        policy.path = real
        return policy

    # ---------------------------------------------------------------------------------------
    # lifecycle
    # ---------------------------------------------------------------------------------------
    def _reset_fields(self) -> None:
        self._policy: Policy | None = None
        self._candidates: dict[str | None, Policy] = {}  # validated, sent to the loop to swap in
        self._loop: LoopProcess | None = None
        self._loop_config: dict[str, Any] = {}
        self._period_s = 0.0
        self._waiting = True
        self._enabled = True
        self._safe_now: bool | None = None
        self._last_error = ""
        self._active = False
        self._non_finite_reported = 0  # count at the last diagnostics message
        self._swap_refusals = 0
        self._last_swap_error = ""
        self._pub_active = self._pub_is_safe = self._pub_diag = None
        self._safe_outputs: list[tuple[Any, Any, str]] = []  # the watchdog's own publishers
        self._writer: ActionWriter | None = None
        self._space: ActionSpace | None = None
        self._watchdog: Watchdog | None = None
        self._watchdog_thread: threading.Thread | None = None
        self._watchdog_stop = threading.Event()
        self._stall = ""  # the watchdog's current cause ('' = ticking)
        self._last_stall = ""
        self._replacement: threading.Thread | None = None  # a control process being replaced
        self._last_safe_s = 0.0

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        with self._transition_lock:
            path = str(self._values["policy_path"])
            try:
                if path and not self._initial_dir and not self._values["allowed_policy_dirs"]:
                    # Fixed at the first configure: later paths (swaps, or a new policy_path set
                    # while unconfigured) must lie in the same directory.
                    self._initial_dir = os.path.dirname(os.path.realpath(path))
                policy = self._load_checked(path, None)
                self._build(policy)
            except (PolicyRejected, ValueError, LoopProcessError, SafetyError) as exc:
                self._last_error = f"configure failed: {exc}"
                self.get_logger().error(self._last_error)
                self._release()
                return TransitionCallbackReturn.FAILURE
            self._last_error = ""
            self.get_logger().info(
                f"configured: {policy.path} ({policy.content_hash}), {policy.spec.obs_dim} inputs "
                f"from {[n for _, n, _ in self._loop_config['inputs']]}, {policy.spec.action_dim} "
                f"actions to {[n for _, n, _ in self._loop_config['outputs']]} at "
                f"{1.0 / self._period_s:g} Hz; control process {self._loop.pid}"
            )
            return super().on_configure(state)

    def _topic(self, name: str) -> str:
        """A spec topic resolved as the node resolves names (namespace, remapping)."""
        if self._values["relative_topics"]:
            name = name.lstrip("/") or name
        return self.resolve_topic_name(name)

    def _build(self, policy: Policy) -> None:
        spec = policy.spec
        rate = float(self._values["control_rate_hz"]) or spec.control_rate_hz
        self._period_s = 1.0 / rate
        problem = check_timing(self._values, self._period_s)
        if problem:
            raise ValueError(f"parameter {problem}")
        safety_config(self._values, self._period_s)  # every safety setting checked here
        self._policy = policy
        self._space = ActionSpace.from_spec(spec)
        self._writer = ActionWriter(spec)
        # The control path (inputs, estop, commands) lives in the control process (see
        # control_loop.py), on a companion node `<name>_io`; topic names are resolved here.
        self._loop_config = {
            "node_name": f"{self.get_name()}_io",
            "namespace": self.get_namespace(),
            "spec": spec.to_dict(),
            "policy": _identity(policy),
            "inputs": [[t, self._topic(t), m] for t, m in spec.observation_topics().items()],
            "outputs": [[t, self._topic(t), m] for t, m in spec.action_topics().items()],
            "estop_topic": self.resolve_topic_name("~/estop"),
            "debug_topic": self.resolve_topic_name(DEBUG_TOPIC),
            "period_s": self._period_s,
            "use_sim_time": bool(self.get_parameter("use_sim_time").value),
            "realtime_priority": int(self._values["realtime_priority"]),
            "cpu_affinity": [int(c) for c in self._values["cpu_affinity"]],
            # the companion node logs at this node's level (--ros-args --log-level ...)
            "log_level": int(self.get_logger().get_effective_level()),
        }
        self._start_loop(policy)
        for topic, name, msg_type in self._loop_config["outputs"]:
            pub = self.create_publisher(message_class(msg_type), name, output_qos(msg_type))
            self._safe_outputs.append((self._keep("publisher", pub), topic, msg_type))
        self._pub_active = self._keep(
            "publisher", self.create_publisher(String, "~/active_policy", LATCHED_QOS)
        )
        self._pub_is_safe = self._keep(
            "publisher", self.create_publisher(Bool, "~/is_safe", LATCHED_QOS)
        )
        self._pub_diag = self._keep(
            "publisher", self.create_publisher(DiagnosticArray, "/diagnostics", COMMAND_QOS)
        )
        for srv, name, callback in (
            (Trigger, "~/reset", self._on_reset),
            (SetBool, "~/enable", self._on_enable),
        ):
            self._keep(
                "service",
                self.create_service(srv, name, callback, callback_group=self._service_group),
            )
        # Diagnostics on the wall clock: they go on when /clock stops.
        steady = Clock(clock_type=ClockType.STEADY_TIME)
        self._keep(
            "timer",
            self.create_timer(
                1.0, self._publish_diagnostics, callback_group=self._service_group, clock=steady
            ),
        )
        self._watchdog = Watchdog(
            effective(self._values, self._period_s)["watchdog_timeout_s"],
            repeat_s=max(self._period_s, 0.02),
        )
        self._publish_active_policy()
        self._publish_is_safe(True)

    def _start_loop(self, policy: Policy) -> None:
        """A new control process for `policy`, in place (`self._loop`)."""
        self._loop = self._new_loop(policy)

    def _new_loop(self, policy: Policy) -> LoopProcess:
        """A new control process, configured with `policy` and the current settings."""
        config = {
            **self._loop_config,
            "policy": _identity(policy),
            "settings": {k: self._values[k] for k in LOOP_SETTINGS},
            "estop": self._known_estop(),
            "enabled": self._enabled,
        }
        loop = LoopProcess(
            self._on_loop_event, self._period_s, policy.spec.action_dim, self._log_orphan
        )
        try:
            loop.request(Op.CONFIGURE, timeout_s=60.0, arrays=policy.runtime(), config=config)
        except LoopProcessError:
            loop.kill()
            raise
        return loop

    def _keep(self, kind: str, entity: Any) -> Any:
        self._ros_entities.append((kind, entity))
        return entity

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        with self._transition_lock:
            self._waiting = True
            ret = super().on_activate(state)
            try:
                self._loop.request(Op.ACTIVATE, estop=self._known_estop())
            except LoopProcessError as exc:
                self._last_error = f"activate failed: {exc}"
                self.get_logger().error(self._last_error)
                return TransitionCallbackReturn.ERROR
            self._active = True
            self._start_watchdog()
            self.get_logger().info(
                f"active; waiting for {[n for _, n, _ in self._loop_config['inputs']]} and the "
                "estop state before commanding"
            )
            return ret

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        with self._transition_lock:
            self._stop_watchdog()
            self._stop_and_publish_safe()
            return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        with self._transition_lock:
            self._release()
            return super().on_cleanup(state)

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        with self._transition_lock:
            self._stop_watchdog()
            if self._active:
                self._stop_and_publish_safe()
            self._release()
            return super().on_shutdown(state)

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        with self._transition_lock:
            self._stop_watchdog()
            self._publish_safe_from_node()
            self._release()
            return TransitionCallbackReturn.SUCCESS

    def _stop_and_publish_safe(self) -> None:
        """Stop the loop (the control process publishes the safe action once if it was
        commanding, and waits for a running tick)."""
        if self._loop is not None:
            try:
                self._loop.request(Op.DEACTIVATE)
            except LoopProcessError as exc:
                self._last_error = f"deactivate: {exc}"
                self.get_logger().error(self._last_error)
                self._publish_safe_from_node()
        self._active = False
        self._waiting = True
        self._publish_is_safe(True)

    def _release(self) -> None:
        self._stop_watchdog()
        if self._loop is not None:
            self._loop.close()
        for kind, entity in reversed(self._ros_entities):
            getattr(self, "destroy_" + kind)(entity)
        self._ros_entities = []
        last_error, last_stall = self._last_error, self._last_stall
        self._reset_fields()
        self._last_error, self._last_stall = last_error, last_stall

    def start(self) -> bool:
        """Configure and activate (what `autostart` does); False if a transition failed."""
        if self.trigger_configure() != TransitionCallbackReturn.SUCCESS:
            return False
        return self.trigger_activate() == TransitionCallbackReturn.SUCCESS

    # ---------------------------------------------------------------------------------------
    # the watchdog (wall clock, its own thread: no executor, no sim time)
    # ---------------------------------------------------------------------------------------
    def _start_watchdog(self) -> None:
        self._watchdog.reset()
        self._watchdog_since = time.monotonic()
        self._watchdog_stop = threading.Event()
        self._watchdog_thread = threading.Thread(
            target=self._watch, args=(self._watchdog_stop,), name="watchdog", daemon=True
        )
        self._watchdog_thread.start()

    def _stop_watchdog(self) -> None:
        thread, self._watchdog_thread = self._watchdog_thread, None
        self._watchdog_stop.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5.0)

    def _watch(self, stop: threading.Event) -> None:
        interval = min(0.02, self._watchdog.timeout_s / 10)
        while not stop.wait(interval):
            try:
                with self._transition_lock:
                    if stop.is_set():
                        return
                    self._watch_once()
            except Exception as exc:  # noqa: BLE001 (the watchdog must outlive any bug)
                self.get_logger().error(
                    f"watchdog: {type(exc).__name__}: {exc}", throttle_duration_sec=1.0
                )

    def _watch_once(self) -> None:
        loop, dog = self._loop, self._watchdog
        if loop is None or dog is None:
            return
        now = time.monotonic()
        if self._replacement is not None:  # a new control process is starting: nothing commands
            if now - self._last_safe_s >= dog.repeat_s:  # meanwhile; keep the safe action fresh
                self._publish_safe_from_node()
            return
        beat = loop.heartbeat
        verdict = dog.check(
            LoopHealth(
                now_s=now,
                since_s=self._watchdog_since,
                last_tick_s=beat.tick_s,
                alive_s=beat.alive_s,
                process_running=loop.alive(),
                process_stopped=loop.stopped(),
                exit_code=loop.exit_code,
                commanding=beat.commanding,
            )
        )
        if not verdict.stalled:
            if self._stall:
                self.get_logger().info(f"watchdog: ticking again (was: {self._stall})")
                self._stall = ""
                self._publish_is_safe(not beat.commanding)  # (its events were held meanwhile)
            return
        if verdict.replace_process:
            loop.signal_kill()  # first: a hung process must not publish after the safe action
        if verdict.publish_safe:
            self._publish_safe_from_node()
        if not self._stall:
            self.get_logger().error(f"watchdog: {verdict.cause}: publishing the safe action")
        self._stall = verdict.cause
        self._last_stall = f"{verdict.cause} (at {time.strftime('%H:%M:%S')})"
        self._publish_is_safe(True)
        if verdict.replace_process:
            self._replace_loop(verdict.cause)

    def _publish_safe_from_node(self) -> None:
        """The safe action from this process (the control process cannot be trusted to)."""
        if self._writer is None or self._space is None or not self._safe_outputs:
            return
        self._last_safe_s = time.monotonic()
        last = None
        if self._loop is not None:
            last = np.array(self._loop.last_command)
        action = safe_action(self._values["safe_action"], self._space, last)
        for pub, topic, msg_type in self._safe_outputs:
            msg = make_message(msg_type)
            self._writer.fill(topic, msg, action, make_message)
            pub.publish(msg)

    def _replace_loop(self, cause: str) -> None:
        """Start a new control process in a thread of its own (the watchdog goes on publishing
        the safe action meanwhile), or deactivate after too many restarts."""
        now = time.monotonic()
        while self._restarts and now - self._restarts[0] > RESTART_WINDOW_S:
            self._restarts.popleft()
        if len(self._restarts) >= int(self._values["max_control_restarts"]):
            self._last_error = (
                f"watchdog: {cause}; {len(self._restarts)} control-process restarts in the last "
                f"{RESTART_WINDOW_S:g} s: deactivating (activate again to retry)"
            )
            self.get_logger().error(self._last_error)
            self._watchdog_stop.set()
            threading.Thread(target=self._deactivate_after_failures, daemon=True).start()
            return
        self._restarts.append(now)
        self._replacement = threading.Thread(
            target=self._replace, args=(cause, self._loop, self._policy), daemon=True
        )
        self._replacement.start()

    def _replace(self, cause: str, old: LoopProcess, policy: Policy) -> None:
        try:
            old.kill()
            try:
                new = self._new_loop(policy)
            except LoopProcessError as exc:
                self._last_error = f"watchdog: could not restart the control process: {exc}"
                self.get_logger().error(self._last_error)
                return
            with self._transition_lock:
                if not self._active or self._watchdog_stop.is_set() or self._loop is not old:
                    new.close()  # the node was deactivated meanwhile: nothing to resume
                    return
                self._loop = new
                try:
                    new.request(Op.ACTIVATE, estop=self._known_estop())
                except LoopProcessError as exc:
                    self._last_error = (
                        f"watchdog: could not activate the new control process: {exc}"
                    )
                    self.get_logger().error(self._last_error)
                    return
                self._watchdog.reset()
                self._watchdog_since = time.monotonic()
                self._waiting = True
            self.get_logger().warning(
                f"watchdog: {cause}: control process replaced (pid {new.pid}, restart "
                f"{len(self._restarts)} of at most {self._values['max_control_restarts']} per "
                f"{RESTART_WINDOW_S:g} s)"
            )
        finally:
            self._replacement = None

    def _deactivate_after_failures(self) -> None:
        with self._transition_lock:
            if self._state_machine.current_state[1] == "active":
                self.trigger_deactivate()
            self._publish_safe_from_node()

    # ---------------------------------------------------------------------------------------
    # the control process's events, services, estop
    # ---------------------------------------------------------------------------------------
    def _on_loop_event(self, event: Event) -> None:
        """Called from the control process's event reader thread."""
        f = event.fields
        if event.ev is Ev.IS_SAFE:
            self._publish_is_safe(bool(f["safe"]))
        elif event.ev is Ev.COMMANDING:
            self._waiting = False
            self.get_logger().info("every input has arrived: commanding")
        elif event.ev is Ev.SWAPPED:
            policy = self._candidates.pop(f["hash"], None)
            if policy is not None:
                self._policy = policy
                self._space = ActionSpace.from_spec(policy.spec)
                self._last_swap_error = ""
                self._publish_active_policy()
        elif event.ev is Ev.SWAP_FAILED:
            self._candidates.pop(f["hash"], None)
            self._swap_refusals += 1
            self._last_swap_error = f"the control process could not put it in place: {f['error']}"
            self.get_logger().error(self._last_swap_error)
        elif event.ev is Ev.ESTOP:
            self._estop = bool(f["engaged"])
        elif event.ev is Ev.EXIT:
            # The watchdog publishes the safe action and replaces the process.
            self._last_error = f"control process exited unexpectedly (exit code {f['code']})"
            self.get_logger().error(self._last_error)
            self._waiting = True
            self._publish_is_safe(True)

    def _log_orphan(self, text: str) -> None:
        self.get_logger().error(text)

    def _on_estop(self, msg: Bool) -> None:
        self._estop = bool(msg.data)
        self._tell_loop(Op.ESTOP, engaged=self._estop)  # whichever process hears it first

    def _known_estop(self) -> bool | None:
        """The estop state this process knows: the last message heard; else, when estop is not
        required, released once this process has listened for estop_discovery_s without
        finding a latched estop publisher (a new control process then need not wait again)."""
        if self._estop is not None or self._values["estop_required_at_start"]:
            return self._estop
        listened_s = time.monotonic() - self._started_s
        if listened_s >= float(self._values["estop_discovery_s"]):
            count = getattr(self._estop_subs[0], "get_publisher_count", None)
            latched = count() if count is not None else self.count_publishers("~/estop")
            if latched == 0:
                return False
        return None

    def _on_reset(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        try:
            self._loop.send(Op.RESET)
        except (LoopProcessError, AttributeError) as exc:
            response.success, response.message = False, f"not reset: {exc}"
            return response
        response.success = True
        response.message = (
            "hidden state reset (and any out-of-domain latch cleared) at the next tick"
        )
        return response

    def _on_enable(self, request: SetBool.Request, response: SetBool.Response) -> SetBool.Response:
        self._enabled = bool(request.data)
        try:
            self._loop.send(Op.SET, values={"enabled": self._enabled})
        except (LoopProcessError, AttributeError) as exc:
            response.success, response.message = False, f"not changed: {exc}"
            return response
        response.success = True
        response.message = (
            "policy enabled" if self._enabled else "disabled: holding the safe action"
        )
        return response

    def _publish_is_safe(self, safe: bool) -> None:
        if safe is False and self._stall:
            return  # a late event of a stalled process must not say it commands
        self._safe_now = safe
        if self._pub_is_safe is not None:
            self._pub_is_safe.publish(Bool(data=safe))

    def _publish_active_policy(self) -> None:
        if self._pub_active is not None and self._policy is not None:
            self._pub_active.publish(
                String(data=f"{self._policy.path} {self._policy.content_hash}")
            )

    # ---------------------------------------------------------------------------------------
    # diagnostics (a wall-clock timer: they go on when /clock stops)
    # ---------------------------------------------------------------------------------------
    def _publish_diagnostics(self) -> None:
        try:
            self._diagnostics()
        except Exception as exc:  # noqa: BLE001 (e.g. the loop replaced meanwhile)
            self.get_logger().error(f"diagnostics: {exc!r}", throttle_duration_sec=5.0)

    def _diagnostics(self) -> None:
        loop_proc = self._loop
        if self._pub_diag is None or self._policy is None:
            return
        status = DiagnosticStatus()
        status.name = f"{self.get_fully_qualified_name()}: policy loop"
        status.hardware_id = self._policy.spec.robot
        lifecycle_state = self._state_machine.current_state[1]
        loop: dict[str, Any] = {}
        loop_error = ""
        if loop_proc is not None and loop_proc.alive() and not self._stall:
            try:
                loop = loop_proc.request(
                    Op.STATS, timeout_s=0.5, now_ns=self.get_clock().now().nanoseconds
                )["values"]
            except LoopProcessError as exc:
                loop_error = str(exc)
        missing = loop.pop("missing_inputs", [])
        last_loop_error = loop.pop("loop_error", "")  # the loop's own, not a failed request
        values: dict[str, Any] = {
            "state": lifecycle_state,
            "active_policy": self._policy.path,
            "active_policy_hash": self._policy.content_hash,
            "control_rate_hz": 1.0 / self._period_s,
            "control_process": "none"
            if loop_proc is None
            else f"pid {loop_proc.pid}" + ("" if loop_proc.alive() else " (exited)"),
            "control_thread": loop.pop("control_thread", "?"),
            "watchdog": self._stall or "ticking",
            "last_stall": self._last_stall,
            "control_restarts_last_60s": len(self._restarts),
        }
        if loop_proc is not None:
            stats = loop_proc.stats  # written by the control process, summarised here
            values.update(stats.window_summary())
            values.update({f"total_{k}": v for k, v in stats.total_summary().items()})
        values.update(loop)
        values.update(
            {
                "safe_action_mode": self._values["safe_action"],
                "swap_refusals": self._swap_refusals,
                "last_swap_error": self._last_swap_error,
                "last_error": loop_error or self._last_error or last_loop_error,
            }
        )
        non_finite = int(loop.get("non_finite_outputs", self._non_finite_reported))
        new_non_finite = non_finite - self._non_finite_reported
        self._non_finite_reported = non_finite
        status.level, status.message = self._diagnostic_level(
            lifecycle_state, loop, loop_error, new_non_finite, missing
        )
        status.values = [KeyValue(key=k, value=_fmt(v)) for k, v in values.items()]
        array = DiagnosticArray()
        array.header.stamp = self.get_clock().now().to_msg()
        array.status = [status]
        self._pub_diag.publish(array)

    def _diagnostic_level(
        self,
        lifecycle_state: str,
        loop: dict[str, Any],
        loop_error: str,
        new_non_finite: int,
        missing: list[str],
    ) -> tuple[bytes, str]:
        if self._stall:
            return DiagnosticStatus.ERROR, f"watchdog: {self._stall}; publishing the safe action"
        if self._loop is None or not self._loop.alive():
            return DiagnosticStatus.ERROR, self._last_error or "control process exited"
        if loop_error:
            return DiagnosticStatus.ERROR, loop_error
        if new_non_finite:
            return (
                DiagnosticStatus.ERROR,
                f"{new_non_finite} non-finite policy outputs replaced by the safe action",
            )
        if loop.get("latched"):
            return DiagnosticStatus.ERROR, f"latched safe action: {loop['latched']} (~/reset)"
        if lifecycle_state != "active":
            if self._last_error:
                return DiagnosticStatus.ERROR, f"{lifecycle_state}: {self._last_error}"
            return DiagnosticStatus.WARN, f"{lifecycle_state}: not commanding"
        if loop.get("waiting_for_inputs", self._waiting):
            return DiagnosticStatus.WARN, f"waiting for inputs {missing}"
        if loop.get("flooded_inputs"):
            return DiagnosticStatus.WARN, f"flooded input: {loop['flooded_inputs']}"
        if loop.get("safe_action_active", self._safe_now):
            return DiagnosticStatus.WARN, "safe action: " + str(loop.get("safe_action_reasons", ""))
        if loop.get("slow_inputs"):
            return DiagnosticStatus.WARN, f"slow input: {loop['slow_inputs']}"
        return DiagnosticStatus.OK, "running the policy"


def check_spec_messages(spec: InterfaceSpec) -> None:
    """Every message type of `spec` is installed and every field path it reads or writes exists
    on the real message class (ValueError / ElementInvalid naming the element and the path)."""
    for role, elements in (("observations", spec.observations), ("actions", spec.actions)):
        by_topic: dict[str, list[Any]] = {}
        for e in elements:
            by_topic.setdefault(e.topic, []).append(e)
        for group in by_topic.values():
            message_class(group[0].msg_type)  # ValueError naming a type not installed
            check_field_paths(group, make_message, f"spec.{role}")


def measure_step_s(
    policy: Policy, obs: np.ndarray, steps: int = SWAP_TIMING_STEPS, budget_s: float | None = None
) -> float:
    """The median of `steps` timed policy steps on `obs` (state reset afterwards): what the
    policy costs, not how often this process was preempted meanwhile.

    With `budget_s`, the timing stops as soon as more than half of the `steps` samples are over
    it (the median is then over it whatever the rest would be), so a policy far too slow for the
    loop is refused after about half the steps rather than all of them."""
    times = np.empty(steps)
    over = 0
    with np.errstate(all="ignore"):
        for k in range(steps):
            t0 = time.perf_counter()
            policy.step(obs)
            times[k] = time.perf_counter() - t0
            if budget_s is not None and times[k] > budget_s:
                over += 1
                if over > steps // 2:
                    times = times[: k + 1]
                    break
    policy.reset()
    return float(np.median(times))


def _identity(policy: Policy) -> dict[str, Any]:
    return {"path": policy.path, "hash": policy.content_hash, "spec": policy.spec.to_dict()}


def _refuse(reason: str) -> SetParametersResult:
    return SetParametersResult(successful=False, reason=reason)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def main(args: list[str] | None = None) -> None:
    # SIGINT/SIGTERM end the spin here rather than inside rclpy, so shutdown can still publish
    # the safe action once before the context goes away.
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with SIGINT ignored
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    node = PolicyNode()
    executor = MultiThreadedExecutor(num_threads=2)
    executor.add_node(node)
    if node.autostart:
        node.start()
    try:
        spin(executor)
    except (KeyboardInterrupt, SystemExit, ExternalShutdownException):
        pass
    finally:
        if node._state_machine.current_state[1] in ("unconfigured", "inactive", "active"):
            node.trigger_shutdown()  # publishes the safe action once if active
        executor.shutdown(timeout_sec=1.0)
        node.destroy_node()
        rclpy.try_shutdown()


def spin(executor: Executor) -> None:
    """`executor.spin()` that survives rclpy's race between destroying an entity in another
    thread and the executor adding its QoS-event waitable to the wait set."""
    while executor.context.ok():
        try:
            executor.spin_once(timeout_sec=0.5)
        except InvalidHandle:
            continue


if __name__ == "__main__":
    main()
