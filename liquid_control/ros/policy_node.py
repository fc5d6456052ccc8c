"""The policy node: runs an LTC policy at a fixed rate on a robot, behind a safety layer.

A managed (lifecycle) node. With ``autostart`` (default) it configures and activates itself.

- configure: load ``policy_path``, build the observation/action adapters from the policy's interface
  spec, create the input subscriptions (sensor-data QoS), command publishers, services, diagnostics.
  Topic names come from the spec; ROS remapping (``--ros-args -r /joint_states:=/robot/joint_states``,
  or ``remappings=`` in a launch file) renames them.
- activate: wait until every input has arrived once, then run the loop. deactivate: publish the
  safe action once and stop commanding. cleanup/shutdown: release everything.

Each tick (fixed rate on the node clock, so it follows /clock with ``use_sim_time``): observation from
the latest accepted messages -> ``policy.step(obs, dt)`` with the measured time since the previous tick
(``use_measured_dt``; the LTC is continuous-time, so jitter is integrated rather than ignored) ->
limits -> ``max_action_rate`` -> publish.

Safety layer (between the policy and the actuators):
- a message with NaN/Inf, a wrong length or missing joints is rejected (counted by reason, logged
  with throttling, reported in diagnostics) and never reaches the policy;
- an input older than ``sensor_timeout_s`` (judged on node-clock *receive* time: header stamps may
  come from another clock on a robot) -> the safe action until fresh data arrives; the hidden state is
  reset on resume (``reset_on_resume``);
- a non-finite policy output is never published: safe action, hidden state reset, error in diagnostics;
- ``~/estop`` (std_msgs/Bool, latched semantics: true holds the safe action until false arrives),
  ``~/enable`` (std_srvs/SetBool) and ``~/reset`` (std_srvs/Trigger: reset the hidden state at the
  next tick).

``~/is_safe`` (latched std_msgs/Bool) is true while the node is *not* letting the policy command the
robot (safe action, or nothing published: inactive, waiting for inputs). ``~/active_policy``
(latched std_msgs/String) is ``<path> <content hash>``.

Policy swap: setting ``policy_path`` loads and validates the file in the parameter service thread (never
on the control path): inside ``allowed_policy_dirs``, a valid policy file, an interface spec that fits
the running one (same channels, same control rate), one finite dry inference. The new policy then
replaces the old one by a single reference swap at the start of the next tick, with a fresh hidden
state; a failed check refuses the parameter with the reason, and the old policy keeps running.

Threads: the loop is a dedicated control thread that sleeps to absolute deadlines on the node
clock (polling /clock time with use_sim_time), takes the newest input messages itself and publishes
the commands; the subscriptions and command publishers live on a companion node ``<name>_io`` that
no executor spins. No rclpy executor dispatch (about 0.3 ms of Python per callback) lies on the
control path, and no rclpy message objects either: inputs are taken as serialized bytes and decoded
by `wire` into numpy views, and commands are published as pre-serialized bytes with only the action
values patched in (types `wire` cannot handle take the ordinary rclpy path). ``realtime_priority``
(SCHED_FIFO) and ``cpu_affinity`` apply to the control thread alone; the garbage collector's
current objects are frozen at activation. This node's parameters (swaps), services, estop and
diagnostics run on a multi-threaded executor beside it. Topic names are resolved (remapped) by this node. Staleness uses
the DDS receive time of each message on system time, and the tick that takes it on /clock time.

``~/observation`` (std_msgs/Float64MultiArray, only with ``debug``): per tick
``[tick, dt_s, steps_since_reset, *raw_observation, *action]`` (labels in ``layout.dim``).
"""

from __future__ import annotations

import gc
import math
import os
import signal
import sys
import threading
import time
from collections import Counter
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
from rclpy.duration import Duration
from rclpy.exceptions import InvalidHandle, ParameterUninitializedException
from rclpy.executors import (
    Executor,
    ExternalShutdownException,
    MultiThreadedExecutor,
)
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.signals import SignalHandlerOptions
from std_msgs.msg import Bool, Float64MultiArray, MultiArrayDimension, String
from std_srvs.srv import SetBool, Trigger

from liquid_control.core.adapters import ActionWriter, MessageRejected, ObservationAssembler
from liquid_control.core.policy import Policy
from liquid_control.core.policy_file import PolicyFileError
from liquid_control.core.spec import InterfaceSpec, SpecError

from .messages import (
    COMMAND_QOS,
    LATCHED_QOS,
    RELIABLE_QOS,
    input_qos,
    make_message,
    message_class,
    output_qos,
)
from .stats import LoopStats
from .wire import Malformed, SerializedTemplate, TemplateUnsupported, decoder_for

SAFE_ACTIONS = ("zero", "hold", "spec")
DEBUG_TOPIC = "~/observation"

# name -> (default, description, descriptor extras). Declared in one place, in this order.
PARAMETERS: dict[str, tuple[Any, str, dict[str, Any]]] = {
    "policy_path": (
        "",
        "Policy file (.lcp) to run. Setting it at run time swaps the policy after validation.",
        {},
    ),
    "allowed_policy_dirs": (
        Parameter.Type.STRING_ARRAY,
        "Directories policy files may be loaded from (empty: the directory of the policy given "
        "at start-up).",
        {"read_only": True},
    ),
    "autostart": (True, "Configure and activate without a lifecycle manager.", {"read_only": True}),
    "control_rate_hz": (
        0.0,
        "Loop rate in Hz; 0 = the policy's control_rate_hz.",
        {"read_only": True, "range": (0.0, 10000.0)},
    ),
    "use_measured_dt": (
        True,
        "Step the LTC by the measured time since the previous tick (else the nominal period).",
        {},
    ),
    "sensor_timeout_s": (
        0.25,
        "An input older than this (node-clock receive time) makes the node publish the safe action.",
        {"range": (0.0001, 3600.0)},
    ),
    "safe_action": (
        "zero",
        "Safe action: zero (clipped to the limits), hold (last published action) or spec "
        "(the vector spec.extra['safe_action'] of the policy).",
        {"additional_constraints": "one of zero, hold, spec"},
    ),
    "reset_on_resume": (True, "Reset the hidden state when fresh data resumes.", {}),
    "max_action_rate": (
        0.0,
        "Largest change of each action element per second, in its units/s (0 = no limit).",
        {"range": (0.0, 1.0e9)},
    ),
    "debug": (False, "Publish ~/observation (raw observation, dt and action of each tick).", {}),
    "realtime_priority": (
        0,
        "SCHED_FIFO priority (1-99) of the control thread; 0 = normal scheduling. Needs "
        "CAP_SYS_NICE or an rtprio limit (e.g. '@realtime - rtprio 98' in "
        "/etc/security/limits.conf); if the kernel refuses, the loop runs at normal priority and "
        "diagnostics say why.",
        {"read_only": True, "int_range": (0, 99)},
    ),
    "cpu_affinity": (
        Parameter.Type.INTEGER_ARRAY,
        "CPU cores the control thread may run on (empty: any core).",
        {"read_only": True},
    ),
}


class PolicyRejected(ValueError):
    """A policy file failed a check before it could run; the message names the problem."""


class PolicyNode(LifecycleNode):
    """Managed node running an LTC policy behind a safety layer (see the module docstring)."""

    def __init__(self, node_name: str = "policy_node", **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        self._declare_parameters()
        self._service_group = MutuallyExclusiveCallbackGroup()  # estop, services, diagnostics
        self._input_lock = threading.Lock()  # assembler: written by inputs, read by the tick
        self._tick_lock = threading.Lock()  # held by a running tick (deactivate waits on it)
        self._initial_dir = ""  # the directory of the first policy (allowed_policy_dirs unset)
        self._reset_fields()
        self._ros_entities: list[tuple[str, Any]] = []
        self.add_on_set_parameters_callback(self._on_set_parameters)

    # ---------------------------------------------------------------------------------------
    # parameters
    # ---------------------------------------------------------------------------------------
    def _declare_parameters(self) -> None:
        for name, (default, description, extra) in PARAMETERS.items():
            descriptor = ParameterDescriptor(
                name=name,
                description=description,
                read_only=extra.get("read_only", False),
                additional_constraints=extra.get("additional_constraints", ""),
            )
            if "int_range" in extra:
                lo, hi = extra["int_range"]
                descriptor.integer_range = [IntegerRange(from_value=lo, to_value=hi, step=1)]
            if "range" in extra:
                lo, hi = extra["range"]
                descriptor.floating_point_range = [
                    FloatingPointRange(from_value=lo, to_value=hi, step=0.0)
                ]
            self.declare_parameter(name, default, descriptor)
        p = self._param
        self._use_measured_dt = bool(p("use_measured_dt"))
        self._sensor_timeout_s = float(p("sensor_timeout_s"))
        self._safe_mode = str(p("safe_action"))
        self._reset_on_resume = bool(p("reset_on_resume"))
        self._max_action_rate = float(p("max_action_rate"))
        self._debug = bool(p("debug"))
        self._realtime_priority = int(p("realtime_priority"))
        self._cpu_affinity = [int(c) for c in p("cpu_affinity")]
        self._realtime_status = "normal scheduling"
        if not 0 <= self._realtime_priority <= 99:
            raise ValueError(
                f"parameter realtime_priority: expected 0 (off) to 99, got {self._realtime_priority}"
            )
        available = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        if self._cpu_affinity and not set(self._cpu_affinity) <= set(available):
            raise ValueError(
                f"parameter cpu_affinity: cores {sorted(set(self._cpu_affinity) - set(available))} "
                f"are not available to this process; expected a subset of {available}"
            )
        if self._safe_mode not in SAFE_ACTIONS:
            raise ValueError(
                f"parameter safe_action: expected one of {SAFE_ACTIONS}, got {self._safe_mode!r}"
            )

    def _param(self, name: str) -> Any:
        try:
            return self.get_parameter(name).value
        except ParameterUninitializedException:  # a list declared without a default: unset
            return []

    @property
    def autostart(self) -> bool:
        return bool(self._param("autostart"))

    def _on_set_parameters(self, params: list[Parameter]) -> SetParametersResult:
        """Validate every change first (a swap loads and checks the file here), then apply."""
        updates: dict[str, Any] = {}
        for p in params:
            if p.name == "safe_action":
                if p.value not in SAFE_ACTIONS:
                    return _refuse(f"safe_action: expected one of {SAFE_ACTIONS}, got {p.value!r}")
                if p.value == "spec" and self._policy is not None:
                    try:
                        _spec_safe_action(self._policy.spec)
                    except PolicyRejected as exc:
                        return _refuse(f"safe_action 'spec': {exc}")
            updates[p.name] = p.value
        candidate = None
        if "policy_path" in updates and self._policy is not None:
            self._swap_loading = True
            try:
                candidate = self._load_checked(str(updates["policy_path"]), self._policy)
            except PolicyRejected as exc:
                self._swap_refusals += 1
                self._last_swap_error = str(exc)
                self.get_logger().error(f"policy swap refused: {exc}")
                return _refuse(str(exc))
            finally:
                self._swap_loading = False
        elif "policy_path" in updates:
            try:
                self._check_allowed(str(updates["policy_path"]))
            except PolicyRejected as exc:
                return _refuse(str(exc))
        for name, value in updates.items():
            if name in ("use_measured_dt", "reset_on_resume", "debug"):
                setattr(self, "_" + name, bool(value))
            elif name in ("sensor_timeout_s", "max_action_rate"):
                setattr(self, "_" + name, float(value))
            elif name == "safe_action":
                self._safe_mode = str(value)
        if candidate is not None:
            self._pending = candidate  # taken at the start of the next tick
            if self._loop_thread is None:  # not running: nothing to wait for
                with self._tick_lock:
                    self._take_pending()
            self.get_logger().info(
                f"policy {candidate.path} ({candidate.content_hash}) validated; swapping"
            )
        return SetParametersResult(successful=True, reason="")

    # ---------------------------------------------------------------------------------------
    # loading and validation (never on the control path)
    # ---------------------------------------------------------------------------------------
    def _allowed_dirs(self) -> list[str]:
        dirs = [d for d in self._param("allowed_policy_dirs") if d]
        if not dirs and self._initial_dir:
            dirs = [self._initial_dir]
        return [os.path.realpath(d) for d in dirs]

    def _check_allowed(self, path: str) -> str:
        if not path:
            raise PolicyRejected("policy_path: empty; expected the path of a .lcp policy file")
        real = os.path.realpath(path)
        dirs = self._allowed_dirs()
        if dirs and not any(os.path.commonpath([real, d]) == d for d in dirs):
            raise PolicyRejected(
                f"policy_path {path!r} is outside allowed_policy_dirs {dirs}; expected a file "
                "inside one of them"
            )
        return real

    def _load_checked(self, path: str, active: Policy | None) -> Policy:
        """Load `path` and run every check; raises PolicyRejected naming the problem."""
        real = self._check_allowed(path)
        try:
            policy = Policy.load(real)
        except (PolicyFileError, OSError) as exc:
            raise PolicyRejected(f"policy_path {path!r}: {exc}") from None
        spec = policy.spec
        for msg_type in {**spec.observation_topics(), **spec.action_topics()}.values():
            try:
                message_class(msg_type)
            except ValueError as exc:
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
        if self._safe_mode == "spec":
            _spec_safe_action(spec)
        with self._input_lock:
            ready = self._assembler is not None and self._assembler.ready
            obs = self._assembler.raw() if ready else spec.obs_mean
        try:
            action = policy.step(obs)
        except (ValueError, FloatingPointError) as exc:
            raise PolicyRejected(f"policy_path {path!r}: dry inference failed: {exc}") from None
        if not np.isfinite(action).all():
            raise PolicyRejected(
                f"policy_path {path!r}: dry inference gave a non-finite action {action.tolist()}"
            )
        policy.reset()
        policy.path = real
        return policy

    # ---------------------------------------------------------------------------------------
    # lifecycle
    # ---------------------------------------------------------------------------------------
    def _reset_fields(self) -> None:
        self._policy: Policy | None = None
        self._pending: Policy | None = None
        self._assembler: ObservationAssembler | None = None
        self._writer: ActionWriter | None = None
        # (topic, publisher, type, message, action slots, serialized template or None)
        self._outputs: list[tuple[str, Any, str, Any, np.ndarray, Any]] = []
        self._diag_timer = None
        self._loop_node: Node | None = None
        self._inputs: list[tuple[str, Any, Any]] = []  # (spec topic, subscription, decoder)
        self._loop_thread: threading.Thread | None = None
        self._loop_stop = threading.Event()
        self._period_s = 0.0
        self._stats = LoopStats(1.0)
        self._last_tick_ns: int | None = None
        self._prev_action: np.ndarray | None = None
        self._zero_action = np.zeros(0)
        self._spec_action: np.ndarray | None = None
        self._needs_reset = False
        self._reset_requested = False
        self._steps_since_reset = 0
        self._waiting = True
        self._estop = False
        self._enabled = True
        self._safe_now: bool | None = None
        self._safe_reasons: list[str] = []
        self._rejected: Counter[str] = Counter()
        self._last_rejection: dict[str, str] = {}
        self._non_finite_outputs = 0
        self._non_finite_reported = 0  # count at the last diagnostics message
        self._last_error = ""
        self._swaps = 0
        self._swap_refusals = 0
        self._last_swap_error = ""
        self._swap_loading = False
        self._pub_active = self._pub_is_safe = self._pub_diag = self._pub_debug = None
        self._debug_msg: Float64MultiArray | None = None
        self._debug_values = np.zeros(0)
        self._debug_template: SerializedTemplate | None = None

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        path = str(self._param("policy_path"))
        try:
            if path and not self._initial_dir and not self._param("allowed_policy_dirs"):
                # Fixed at the first configure: later paths (swaps, or a new policy_path set
                # while unconfigured) must lie in the same directory.
                self._initial_dir = os.path.dirname(os.path.realpath(path))
            policy = self._load_checked(path, None)
            self._build(policy)
        except (PolicyRejected, ValueError) as exc:
            self._last_error = f"configure failed: {exc}"
            self.get_logger().error(self._last_error)
            self._release()
            return TransitionCallbackReturn.FAILURE
        self.get_logger().info(
            f"configured: {policy.path} ({policy.content_hash}), {policy.spec.obs_dim} inputs from "
            f"{list(policy.spec.observation_topics())}, {policy.spec.action_dim} actions to "
            f"{list(policy.spec.action_topics())} at {1.0 / self._period_s:g} Hz"
        )
        return super().on_configure(state)

    def _build(self, policy: Policy) -> None:
        spec = policy.spec
        rate = float(self._param("control_rate_hz")) or spec.control_rate_hz
        self._period_s = 1.0 / rate
        self._stats = LoopStats(self._period_s)
        self._policy = policy
        self._assembler = ObservationAssembler(spec)
        self._writer = ActionWriter(spec)
        self._set_action_vectors(spec)
        # The control path (inputs, commands) lives on a companion node that no executor spins:
        # the control thread takes the newest input messages itself at each tick and publishes
        # the commands, so no executor dispatch (rclpy's costs ~0.3 ms per callback in Python)
        # sits between the clock and the actuators, and services, parameters (swaps) and
        # diagnostics on this node never delay a tick. Topic names are resolved (remapped) here.
        loop = self._loop_node = Node(
            f"{self.get_name()}_io",
            namespace=self.get_namespace(),
            context=self.context,
            use_global_arguments=False,
            start_parameter_services=False,
            parameter_overrides=[Parameter("start_type_description_service", value=False)],
        )
        resolve = self.resolve_topic_name
        self._inputs = [
            (
                topic,
                loop.create_subscription(
                    message_class(msg_type), resolve(topic), _taken_by_the_loop, input_qos(msg_type)
                ),
                decoder_for(message_class(msg_type)),
            )
            for topic, msg_type in spec.observation_topics().items()
        ]
        self._outputs = []
        for topic, msg_type in spec.action_topics().items():
            msg, slots = make_message(msg_type), self._writer.topics[topic][1]
            self._outputs.append(
                (
                    topic,
                    loop.create_publisher(
                        message_class(msg_type), resolve(topic), output_qos(msg_type)
                    ),
                    msg_type,
                    msg,
                    slots,
                    _template(
                        msg_type,
                        lambda m, v, t=topic, mt=msg_type, s=slots: self._fill_output(
                            t, mt, m, _scatter(v, s, spec.action_dim)
                        ),
                        slots.size,
                    ),
                )
            )
        self._pub_debug = loop.create_publisher(
            Float64MultiArray, resolve(DEBUG_TOPIC), COMMAND_QOS
        )
        self._pub_active = self._keep(
            "publisher", self.create_publisher(String, "~/active_policy", LATCHED_QOS)
        )
        self._pub_is_safe = self._keep(
            "publisher", self.create_publisher(Bool, "~/is_safe", LATCHED_QOS)
        )
        self._pub_diag = self._keep(
            "publisher", self.create_publisher(DiagnosticArray, "/diagnostics", COMMAND_QOS)
        )
        self._debug_msg = _debug_message(spec)
        self._debug_values = np.zeros(3 + spec.obs_dim + spec.action_dim)
        self._debug_template = _template(
            "std_msgs/Float64MultiArray",
            lambda m, v: setattr(m, "data", v.tolist()),
            self._debug_values.size,
            self._debug_msg,
        )
        # Latched writers keep their last sample for late joiners; a plain reliable reader also
        # hears volatile writers (`ros2 topic pub` without --qos-durability), so listen to both.
        for qos in (LATCHED_QOS, RELIABLE_QOS):
            self._keep(
                "subscription",
                self.create_subscription(
                    Bool, "~/estop", self._on_estop, qos, callback_group=self._service_group
                ),
            )
        self._keep(
            "service",
            self.create_service(
                Trigger, "~/reset", self._on_reset, callback_group=self._service_group
            ),
        )
        self._keep(
            "service",
            self.create_service(
                SetBool, "~/enable", self._on_enable, callback_group=self._service_group
            ),
        )
        self._diag_timer = self._keep(
            "timer",
            self.create_timer(1.0, self._publish_diagnostics, callback_group=self._service_group),
        )
        self._publish_active_policy()
        self._publish_is_safe(True)

    def _keep(self, kind: str, entity: Any) -> Any:
        self._ros_entities.append((kind, entity))
        return entity

    def _set_action_vectors(self, spec: InterfaceSpec) -> None:
        self._zero_action = np.clip(np.zeros(spec.action_dim), spec.action_low, spec.action_high)
        self._spec_action = _spec_safe_action(spec) if "safe_action" in spec.extra else None

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        with self._tick_lock:
            self._take_pending()
            self._policy.reset()
            self._steps_since_reset = 0
            self._stats.clear()
            self._last_tick_ns = None
            self._prev_action = None
            self._waiting = True
            self._needs_reset = False
        ret = super().on_activate(state)
        # Objects alive now (policy, messages, rclpy) leave the garbage collector's young
        # generations: collections that run inside a tick then scan only what the loop allocates.
        gc.freeze()
        self._loop_stop = threading.Event()
        self._loop_thread = threading.Thread(
            target=self._run_loop, args=(self._loop_stop,), name="control_loop", daemon=True
        )
        self._loop_thread.start()
        self.get_logger().info(
            f"active; waiting for {self._assembler.missing() or 'nothing'} before commanding"
        )
        return ret

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_and_publish_safe()
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        return super().on_cleanup(state)

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        if self._loop_thread is not None:
            self._stop_and_publish_safe()
        self._release()
        return super().on_shutdown(state)

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def _stop_and_publish_safe(self) -> None:
        """Stop the loop (waiting for a running tick) and publish the safe action once."""
        thread, self._loop_thread = self._loop_thread, None
        if thread is not None:
            self._loop_stop.set()
            thread.join(timeout=5.0)
        with self._tick_lock:
            if self._policy is not None and not self._waiting:
                self._publish_action(self._safe_action())
            self._publish_is_safe(True)

    def _release(self) -> None:
        if self._loop_thread is not None:
            self._loop_stop.set()
            self._loop_thread.join(timeout=5.0)
        if self._loop_node is not None:
            self._loop_node.destroy_node()
        for kind, entity in reversed(self._ros_entities):
            getattr(self, "destroy_" + kind)(entity)
        self._ros_entities = []
        last_error, initial_dir = self._last_error, self._initial_dir
        self._reset_fields()
        self._last_error, self._initial_dir = last_error, initial_dir

    def start(self) -> bool:
        """Configure and activate (what `autostart` does); False if a transition failed."""
        if self.trigger_configure() != TransitionCallbackReturn.SUCCESS:
            return False
        return self.trigger_activate() == TransitionCallbackReturn.SUCCESS

    # ---------------------------------------------------------------------------------------
    # inputs, estop, services
    # ---------------------------------------------------------------------------------------
    def _on_input(self, topic: str, msg: Any, now_s: float) -> None:
        try:
            with self._input_lock:
                self._assembler.update(topic, msg, now_s)
        except MessageRejected as exc:
            self._reject(topic, exc)

    def _reject(self, topic: str, exc: MessageRejected) -> None:
        self._rejected[exc.reason] += 1
        self._last_rejection[exc.reason] = f"{topic}: {exc.detail}"
        self.get_logger().warning(
            f"rejected a message on {topic}: {exc}", throttle_duration_sec=1.0
        )

    def _on_estop(self, msg: Bool) -> None:
        if bool(msg.data) != self._estop:
            self._estop = bool(msg.data)
            if self._estop:
                self.get_logger().warning("estop engaged: holding the safe action")
            else:
                self.get_logger().info("estop released")

    def _on_reset(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        self._reset_requested = True
        response.success = True
        response.message = "hidden state reset at the next tick"
        return response

    def _on_enable(self, request: SetBool.Request, response: SetBool.Response) -> SetBool.Response:
        self._enabled = bool(request.data)
        response.success = True
        response.message = (
            "policy enabled" if self._enabled else "disabled: holding the safe action"
        )
        return response

    # ---------------------------------------------------------------------------------------
    # the control loop
    # ---------------------------------------------------------------------------------------
    def _take_pending(self) -> None:
        pending, self._pending = self._pending, None
        if pending is None:
            return
        self._policy = pending
        self._set_action_vectors(pending.spec)
        self._steps_since_reset = 0
        self._swaps += 1
        self._publish_active_policy()

    def _run_loop(self, stop: threading.Event) -> None:
        """The control thread: a tick every period on the node clock, on a fixed grid.

        Deadlines are absolute (no drift); a tick later than the next deadline skips the missed
        ones and stays on the grid (as rcl timers do). With use_sim_time the deadlines are in
        /clock time; a clock that jumps back (simulation reset) restarts the grid.
        """
        self._realtime_status = self._apply_thread_scheduling()
        clock = self.get_clock()
        period_ns = int(round(self._period_s * 1e9))
        deadline = clock.now().nanoseconds + period_ns
        while _sleep_until(clock, deadline, stop):
            self._tick(stop)
            now = clock.now().nanoseconds
            deadline += period_ns
            if now >= deadline:
                deadline += ((now - deadline) // period_ns + 1) * period_ns
            elif deadline - now > 2 * period_ns:
                deadline = now + period_ns

    def _apply_thread_scheduling(self) -> str:
        """Pin and prioritise the calling (control) thread as the parameters ask; a refusal is
        logged and reported, and the loop runs on at normal priority (the robot keeps its loop)."""
        status = []
        if self._cpu_affinity:
            try:
                os.sched_setaffinity(0, self._cpu_affinity)  # 0 = the calling thread on Linux
                status.append(f"cores {self._cpu_affinity}")
            except (OSError, AttributeError) as exc:
                status.append(f"cpu_affinity {self._cpu_affinity} refused ({exc})")
        if self._realtime_priority > 0:
            try:
                param = os.sched_param(self._realtime_priority)
                os.sched_setscheduler(0, os.SCHED_FIFO, param)
                status.insert(0, f"SCHED_FIFO priority {self._realtime_priority}")
            except (OSError, AttributeError) as exc:
                status.insert(
                    0,
                    f"normal scheduling: SCHED_FIFO priority {self._realtime_priority} refused "
                    f"({exc}); grant CAP_SYS_NICE or an rtprio limit",
                )
        text = ", ".join(status) or "normal scheduling"
        if "refused" in text:
            self.get_logger().warning(f"control thread: {text}")
        elif status:
            self.get_logger().info(f"control thread: {text}")
        return text

    def _take_inputs(self, now_s: float) -> None:
        """Take every message that arrived since the last tick (each validated, newest wins).

        Messages are taken serialized and decoded by `wire` (no rclpy message objects on the
        control path); a type `wire` does not decode is taken as an rclpy message."""
        use_receive_time = not self.get_clock().ros_time_is_active
        for topic, sub, decode in self._inputs:
            with sub.handle:
                while (
                    taken := sub.handle.take_message(sub.msg_type, decode is not None)
                ) is not None:
                    msg, info = taken
                    if decode is not None:
                        try:
                            msg = decode(msg)
                        except Malformed as exc:
                            self._reject(topic, MessageRejected("malformed", str(exc)))
                            continue
                    # On system time the DDS receive time is exact; on /clock time (simulation)
                    # a message counts as received at the tick that takes it.
                    received = info.get("received_timestamp", 0) if use_receive_time else 0
                    self._on_input(topic, msg, received * 1e-9 if received else now_s)

    def _tick(self, stop: threading.Event) -> None:
        t0 = time.perf_counter()
        now_ns = self.get_clock().now().nanoseconds
        with self._tick_lock:
            if stop.is_set():  # deactivating
                return
            try:
                self._take_inputs(now_ns * 1e-9)
                self._control_step(t0, now_ns)
            except Exception as exc:  # noqa: BLE001 (a bug must not leave the last command standing)
                self._last_error = f"control step failed: {type(exc).__name__}: {exc}"
                self.get_logger().error(self._last_error, throttle_duration_sec=1.0)
                self._needs_reset = True
                self._safe_reasons = ["internal error"]
                self._publish_action(self._safe_action())
                self._publish_is_safe(True)

    def _control_step(self, t0: float, now_ns: int) -> None:
        """One tick (called with the tick lock held)."""
        swapping = self._swap_loading or self._pending is not None
        if self._pending is not None:
            self._take_pending()
        period = None if self._last_tick_ns is None else (now_ns - self._last_tick_ns) * 1e-9
        self._last_tick_ns = now_ns
        with self._input_lock:
            asm = self._assembler
            if asm.ready:
                raw = asm.raw()
                stale = asm.stale(now_ns * 1e-9, self._sensor_timeout_s)
        if not asm.ready:  # activation waits for every input once
            self._stats.record(period, time.perf_counter() - t0, swapping)
            return
        if self._waiting:
            self._waiting = False
            self.get_logger().info("every input has arrived: commanding")
        reasons = [f"stale: {', '.join(stale)}"] if stale else []
        if self._estop:
            reasons.append("estop")
        if not self._enabled:
            reasons.append("disabled")
        dt = period if self._use_measured_dt and period and period > 0 else None
        if reasons:
            action = self._safe_action()
            self._needs_reset = True
            self._steps_since_reset = 0
        else:
            if self._reset_requested or (self._needs_reset and self._reset_on_resume):
                self._policy.reset()
                self._steps_since_reset = 0
            self._reset_requested = self._needs_reset = False
            action = self._policy.step(raw, dt)
            self._steps_since_reset += 1
            if not np.isfinite(action).all():
                self._non_finite_outputs += 1
                self._last_error = f"non-finite policy output {action.tolist()}; hidden state reset"
                self.get_logger().error(self._last_error, throttle_duration_sec=1.0)
                reasons = ["non-finite output"]
                action = self._safe_action()
                self._policy.reset()
                self._steps_since_reset = 0
            elif self._max_action_rate > 0 and self._prev_action is not None:
                step = self._max_action_rate * (period or self._period_s)
                action = np.clip(action, self._prev_action - step, self._prev_action + step)
        self._publish_action(action)
        self._stats.record(period, time.perf_counter() - t0, swapping)
        self._safe_reasons = reasons
        if self._safe_now != bool(reasons):
            self._publish_is_safe(bool(reasons))
        if self._debug:
            self._publish_debug(raw, action, dt)

    def _safe_action(self) -> np.ndarray:
        if self._safe_mode == "hold" and self._prev_action is not None:
            return self._prev_action
        if self._safe_mode == "spec" and self._spec_action is not None:
            return self._spec_action
        return self._zero_action

    def _fill_output(self, topic: str, msg_type: str, msg: Any, action: np.ndarray) -> None:
        self._writer.fill(topic, msg, action, make_message)  # every field is rewritten
        if msg_type == "trajectory_msgs/JointTrajectory":
            # Stamp zero = start now; reach the point within one control period.
            msg.points[0].time_from_start = Duration(seconds=self._period_s).to_msg()

    def _publish_action(self, action: np.ndarray) -> None:
        for topic, pub, msg_type, msg, slots, template in self._outputs:
            if template is not None:
                pub.publish(template.serialize(action[slots]))
            else:
                self._fill_output(topic, msg_type, msg, action)
                pub.publish(msg)
        self._prev_action = action

    def _publish_debug(self, raw: np.ndarray, action: np.ndarray, dt: float | None) -> None:
        values = self._debug_values
        values[0] = self._stats.ticks
        values[1] = dt if dt is not None else self._period_s
        values[2] = self._steps_since_reset
        values[3 : 3 + raw.size] = raw
        values[3 + raw.size :] = action
        if self._debug_template is not None:
            self._pub_debug.publish(self._debug_template.serialize(values))
        else:
            self._debug_msg.data = values.tolist()
            self._pub_debug.publish(self._debug_msg)

    def _publish_is_safe(self, safe: bool) -> None:
        self._safe_now = safe
        if self._pub_is_safe is not None:
            self._pub_is_safe.publish(Bool(data=safe))

    def _publish_active_policy(self) -> None:
        if self._pub_active is not None and self._policy is not None:
            self._pub_active.publish(
                String(data=f"{self._policy.path} {self._policy.content_hash}")
            )

    # ---------------------------------------------------------------------------------------
    # diagnostics
    # ---------------------------------------------------------------------------------------
    def _publish_diagnostics(self) -> None:
        if self._pub_diag is None or self._policy is None:
            return
        status = DiagnosticStatus()
        status.name = f"{self.get_fully_qualified_name()}: policy loop"
        status.hardware_id = self._policy.spec.robot
        lifecycle_state = self._state_machine.current_state[1]
        window = self._stats.window_summary()
        total = self._stats.total_summary()
        with self._input_lock:
            stale = self._assembler.stale(
                self.get_clock().now().nanoseconds * 1e-9, self._sensor_timeout_s
            )
        values: dict[str, Any] = {
            "state": lifecycle_state,
            "active_policy": self._policy.path,
            "active_policy_hash": self._policy.content_hash,
            "control_rate_hz": 1.0 / self._period_s,
            "control_thread": self._realtime_status,
            **{k: v for k, v in window.items()},
            **{f"total_{k}": v for k, v in total.items()},
            "stale_inputs": ", ".join(stale),
            "waiting_for_inputs": self._waiting,
            "safe_action_active": bool(self._safe_now),
            "safe_action_reasons": ", ".join(self._safe_reasons),
            "safe_action_mode": self._safe_mode,
            "estop": self._estop,
            "enabled": self._enabled,
            "rejected_total": sum(self._rejected.values()),
            **{f"rejected_{r}": n for r, n in sorted(self._rejected.items())},
            **{f"last_rejection_{r}": d for r, d in sorted(self._last_rejection.items())},
            "non_finite_outputs": self._non_finite_outputs,
            "swaps": self._swaps,
            "swap_refusals": self._swap_refusals,
            "last_swap_error": self._last_swap_error,
            "last_error": self._last_error,
        }
        status.values = [KeyValue(key=k, value=_fmt(v)) for k, v in values.items()]
        new_non_finite = self._non_finite_outputs - self._non_finite_reported
        self._non_finite_reported = self._non_finite_outputs
        if new_non_finite:
            status.level = DiagnosticStatus.ERROR
            status.message = (
                f"{new_non_finite} non-finite policy outputs replaced by the safe action"
            )
        elif lifecycle_state != "active":
            status.level, status.message = (
                DiagnosticStatus.WARN,
                f"{lifecycle_state}: not commanding",
            )
        elif self._waiting:
            status.level = DiagnosticStatus.WARN
            status.message = f"waiting for inputs {self._assembler.missing()}"
        elif self._safe_now:
            status.level = DiagnosticStatus.WARN
            status.message = "safe action: " + ", ".join(self._safe_reasons)
        else:
            status.level, status.message = DiagnosticStatus.OK, "running the policy"
        array = DiagnosticArray()
        array.header.stamp = self.get_clock().now().to_msg()
        array.status = [status]
        self._pub_diag.publish(array)


def _spec_safe_action(spec: InterfaceSpec) -> np.ndarray:
    """spec.extra['safe_action'] as a checked vector (PolicyRejected naming the problem)."""
    value = spec.extra.get("safe_action")
    if value is None:
        raise PolicyRejected(
            "spec.extra['safe_action'] is missing; expected a list of "
            f"{spec.action_dim} numbers within the action limits"
        )
    try:
        vec = np.asarray(value, np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise PolicyRejected(
            f"spec.extra['safe_action']: expected numbers, got {value!r}"
        ) from None
    if vec.shape != (spec.action_dim,) or not np.isfinite(vec).all():
        raise PolicyRejected(
            f"spec.extra['safe_action']: expected {spec.action_dim} finite numbers, got {value!r}"
        )
    outside = (vec < spec.action_low) | (vec > spec.action_high)
    if outside.any():
        i = int(np.flatnonzero(outside)[0])
        raise PolicyRejected(
            f"spec.extra['safe_action'][{i}] = {vec[i]} is outside the limits "
            f"[{spec.action_low[i]}, {spec.action_high[i]}] of action {spec.actions[i].name!r}"
        )
    return vec


def _scatter(values: np.ndarray, slots: np.ndarray, size: int) -> np.ndarray:
    full = np.zeros(size)
    full[slots] = values
    return full


def _template(
    msg_type: str, fill: Any, n: int, msg: Any | None = None
) -> SerializedTemplate | None:
    """The serialized fast path of an output (None: publish rclpy messages, as for any type whose
    changing values are not plain float64 fields)."""
    try:
        return SerializedTemplate(msg if msg is not None else make_message(msg_type), fill, n)
    except TemplateUnsupported:
        return None


def _debug_message(spec: InterfaceSpec) -> Float64MultiArray:
    msg = Float64MultiArray()
    dims = [("tick", 1), ("dt_s", 1), ("steps_since_reset", 1)]
    dims += [("observation", spec.obs_dim), ("action", spec.action_dim)]
    msg.layout.dim = [MultiArrayDimension(label=k, size=n, stride=n) for k, n in dims]
    return msg


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
    # Short GIL slices: the control thread waits at most this long for a busy worker thread.
    sys.setswitchinterval(2e-4)
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


def _taken_by_the_loop(msg: Any) -> None:
    """Subscription callback placeholder: the io node is never spun (see `_take_inputs`)."""


# /clock time is polled at this wall-clock interval (a simulation may pause or jump).
SIM_CLOCK_POLL_S = 2e-4


def _sleep_until(clock: Any, deadline_ns: int, stop: threading.Event) -> bool:
    """Sleep until the node clock reaches `deadline_ns`; False if `stop` was set meanwhile."""
    if clock.ros_time_is_active:
        while clock.now().nanoseconds < deadline_ns:
            if stop.wait(SIM_CLOCK_POLL_S):
                return False
        return not stop.is_set()
    delay_s = (deadline_ns - clock.now().nanoseconds) * 1e-9
    return not (stop.wait(delay_s) if delay_s > 0 else stop.is_set())


def spin(executor: Executor, stop: threading.Event | None = None) -> None:
    """`executor.spin()` (until `stop` is set) that survives rclpy's race between destroying an
    entity in another thread and the executor adding its QoS-event waitable to the wait set."""
    stop = stop or threading.Event()
    while executor.context.ok() and not stop.is_set():
        try:
            executor.spin_once(timeout_sec=0.5)
        except InvalidHandle:
            continue


if __name__ == "__main__":
    main()
