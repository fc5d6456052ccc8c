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

Policy swap: setting ``policy_path`` loads and validates the file in this node's parameter service
thread (never on the control path): inside ``allowed_policy_dirs``, a valid policy file, an interface
spec that fits the running one (same channels, same control rate), one finite dry inference on the
newest observation. The control process then puts the new policy in place between two ticks, with a
fresh hidden state; a failed check refuses the parameter with the reason, and the old policy keeps
running.

Processes: the loop runs in a control process of its own (`control_loop`, started at configure,
stopped at cleanup), so no Python work of this node (parameter services, swaps, diagnostics, the
executor) ever competes with a tick for the interpreter lock. Its control thread sleeps to absolute
deadlines on the node clock (polling /clock with use_sim_time), takes the newest input and estop
messages itself and publishes the commands, from a companion node ``<name>_io`` that no executor
spins: inputs are taken as serialized bytes and decoded by `wire` into numpy views, commands are
published as pre-serialized bytes with only the action values patched in. ``realtime_priority``
(SCHED_FIFO) and ``cpu_affinity`` apply to that thread. This node keeps the lifecycle, parameters,
``~/reset``, ``~/enable``, ``~/is_safe``, ``~/active_policy`` and /diagnostics, and reads the loop's
timing figures from memory shared with the control process. If this node dies, the control process
publishes the safe action once and exits; if the control process dies, this node reports it
(diagnostics ERROR, ``~/is_safe`` true). Topic names are resolved (remapped) by this node. Staleness
uses the DDS receive time of each message on system time, and the tick that takes it on /clock time.

``~/observation`` (std_msgs/Float64MultiArray, only with ``debug``): per tick
``[tick, dt_s, steps_since_reset, *raw_observation, *action]`` (labels in ``layout.dim``); reliable,
history 1000, so a recorder that falls behind for a while loses no row.
"""

from __future__ import annotations

import math
import os
import signal
import sys
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
from rclpy.exceptions import InvalidHandle, ParameterUninitializedException
from rclpy.executors import (
    Executor,
    ExternalShutdownException,
    MultiThreadedExecutor,
)
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.signals import SignalHandlerOptions
from std_msgs.msg import Bool, String
from std_srvs.srv import SetBool, Trigger

from liquid_control.core.policy import Policy
from liquid_control.core.policy_file import PolicyFileError
from liquid_control.core.spec import InterfaceSpec, SpecError

from .control_loop import LoopProcess, LoopProcessError
from .messages import COMMAND_QOS, LATCHED_QOS, message_class

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
        self._service_group = MutuallyExclusiveCallbackGroup()  # services, diagnostics
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
            self._tell_loop("swapping", value=True)  # ticks from now count as during a swap
            try:
                candidate = self._load_checked(str(updates["policy_path"]), self._policy)
            except PolicyRejected as exc:
                self._swap_refusals += 1
                self._last_swap_error = str(exc)
                self.get_logger().error(f"policy swap refused: {exc}")
                return _refuse(str(exc))
            finally:
                if candidate is None:
                    self._tell_loop("swapping", value=False)
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
        self._tell_loop("set", values=self._loop_settings())
        if candidate is not None:
            # Put in place by the control process at a tick boundary, with a fresh hidden state;
            # its "swapped" event makes it the node's active policy.
            self._candidates[candidate.content_hash] = candidate
            self._tell_loop("swap", arrays=_bundle(candidate), policy=_identity(candidate))
            self.get_logger().info(
                f"policy {candidate.path} ({candidate.content_hash}) validated; swapping"
            )
        return SetParametersResult(successful=True, reason="")

    def _loop_settings(self) -> dict[str, Any]:
        return {
            "use_measured_dt": self._use_measured_dt,
            "sensor_timeout_s": self._sensor_timeout_s,
            "safe_action": self._safe_mode,
            "reset_on_resume": self._reset_on_resume,
            "max_action_rate": self._max_action_rate,
            "debug": self._debug,
            "enabled": self._enabled,
        }

    def _tell_loop(
        self, op: str, arrays: dict[str, np.ndarray] | None = None, **fields: Any
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
        obs = spec.obs_mean  # the newest observation when the loop has one
        if self._loop is not None:
            try:
                raw = self._loop.request("observation").get("raw")
            except LoopProcessError as exc:
                raise PolicyRejected(f"policy_path {path!r}: {exc}") from None
            if raw is not None:
                obs = np.asarray(raw, np.float64)
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
        self._candidates: dict[str | None, Policy] = {}  # validated, sent to the loop to swap in
        self._loop: LoopProcess | None = None
        self._period_s = 0.0
        self._diag_timer = None
        self._waiting = True
        self._enabled = True
        self._safe_now: bool | None = None
        self._last_error = ""
        self._active = False
        self._non_finite_reported = 0  # count at the last diagnostics message
        self._swap_refusals = 0
        self._last_swap_error = ""
        self._pub_active = self._pub_is_safe = self._pub_diag = None

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        path = str(self._param("policy_path"))
        try:
            if path and not self._initial_dir and not self._param("allowed_policy_dirs"):
                # Fixed at the first configure: later paths (swaps, or a new policy_path set
                # while unconfigured) must lie in the same directory.
                self._initial_dir = os.path.dirname(os.path.realpath(path))
            policy = self._load_checked(path, None)
            self._build(policy)
        except (PolicyRejected, ValueError, LoopProcessError) as exc:
            self._last_error = f"configure failed: {exc}"
            self.get_logger().error(self._last_error)
            self._release()
            return TransitionCallbackReturn.FAILURE
        self.get_logger().info(
            f"configured: {policy.path} ({policy.content_hash}), {policy.spec.obs_dim} inputs from "
            f"{list(policy.spec.observation_topics())}, {policy.spec.action_dim} actions to "
            f"{list(policy.spec.action_topics())} at {1.0 / self._period_s:g} Hz; control process "
            f"{self._loop.pid}"
        )
        return super().on_configure(state)

    def _build(self, policy: Policy) -> None:
        spec = policy.spec
        rate = float(self._param("control_rate_hz")) or spec.control_rate_hz
        self._period_s = 1.0 / rate
        self._policy = policy
        # The control path (inputs, estop, commands) lives in the control process (see
        # control_loop.py), on a companion node `<name>_io`; topic names are resolved here.
        resolve = self.resolve_topic_name
        config = {
            "node_name": f"{self.get_name()}_io",
            "namespace": self.get_namespace(),
            "spec": spec.to_dict(),
            "policy": _identity(policy),
            "inputs": [[t, resolve(t), m] for t, m in spec.observation_topics().items()],
            "outputs": [[t, resolve(t), m] for t, m in spec.action_topics().items()],
            "estop_topic": resolve("~/estop"),
            "debug_topic": resolve(DEBUG_TOPIC),
            "period_s": self._period_s,
            "use_sim_time": bool(self.get_parameter("use_sim_time").value),
            "realtime_priority": self._realtime_priority,
            "cpu_affinity": self._cpu_affinity,
            "settings": self._loop_settings(),
            # the companion node logs at this node's level (--ros-args --log-level ...)
            "log_level": int(self.get_logger().get_effective_level()),
        }
        self._loop = LoopProcess(self._on_loop_event, self._period_s)
        self._loop.request("configure", timeout_s=60.0, arrays=_bundle(policy), config=config)
        self._pub_active = self._keep(
            "publisher", self.create_publisher(String, "~/active_policy", LATCHED_QOS)
        )
        self._pub_is_safe = self._keep(
            "publisher", self.create_publisher(Bool, "~/is_safe", LATCHED_QOS)
        )
        self._pub_diag = self._keep(
            "publisher", self.create_publisher(DiagnosticArray, "/diagnostics", COMMAND_QOS)
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

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._waiting = True
        ret = super().on_activate(state)
        try:
            self._loop.request("activate")
        except LoopProcessError as exc:
            self._last_error = f"activate failed: {exc}"
            self.get_logger().error(self._last_error)
            return TransitionCallbackReturn.ERROR
        self._active = True
        self.get_logger().info(
            f"active; waiting for {list(self._policy.spec.observation_topics())} before commanding"
        )
        return ret

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_and_publish_safe()
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        return super().on_cleanup(state)

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        if self._active:
            self._stop_and_publish_safe()
        self._release()
        return super().on_shutdown(state)

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def _stop_and_publish_safe(self) -> None:
        """Stop the loop (the control process publishes the safe action once if it was
        commanding, and waits for a running tick)."""
        if self._loop is not None:
            try:
                self._loop.request("deactivate")
            except LoopProcessError as exc:
                self._last_error = f"deactivate: {exc}"
                self.get_logger().error(self._last_error)
        self._active = False
        self._waiting = True
        self._publish_is_safe(True)

    def _release(self) -> None:
        if self._loop is not None:
            self._loop.close()
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
    # the control process's events, services
    # ---------------------------------------------------------------------------------------
    def _on_loop_event(self, event: dict[str, Any]) -> None:
        """Called from the control process's event reader thread."""
        kind = event.get("ev")
        if kind == "is_safe":
            self._publish_is_safe(bool(event["safe"]))
        elif kind == "commanding":
            self._waiting = False
            self.get_logger().info("every input has arrived: commanding")
        elif kind == "swapped":
            policy = self._candidates.pop(event.get("hash"), None)
            if policy is not None:
                self._policy = policy
                self._publish_active_policy()
        elif kind == "swap_failed":
            self._candidates.pop(event.get("hash"), None)
            self._swap_refusals += 1
            self._last_swap_error = (
                f"the control process could not put it in place: {event.get('error')}"
            )
            self.get_logger().error(self._last_swap_error)
        elif kind == "exit":
            # Nothing commands the robot now (its controllers' command timeouts apply).
            self._last_error = (
                f"control process exited unexpectedly (exit code {event.get('code')})"
            )
            self.get_logger().error(self._last_error)
            self._waiting = True
            self._publish_is_safe(True)

    def _on_reset(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        try:
            self._loop.send("reset")
        except (LoopProcessError, AttributeError) as exc:
            response.success, response.message = False, f"not reset: {exc}"
            return response
        response.success = True
        response.message = "hidden state reset at the next tick"
        return response

    def _on_enable(self, request: SetBool.Request, response: SetBool.Response) -> SetBool.Response:
        self._enabled = bool(request.data)
        try:
            self._loop.send("set", values={"enabled": self._enabled})
        except (LoopProcessError, AttributeError) as exc:
            response.success, response.message = False, f"not changed: {exc}"
            return response
        response.success = True
        response.message = (
            "policy enabled" if self._enabled else "disabled: holding the safe action"
        )
        return response

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
        if self._pub_diag is None or self._policy is None or self._loop is None:
            return
        status = DiagnosticStatus()
        status.name = f"{self.get_fully_qualified_name()}: policy loop"
        status.hardware_id = self._policy.spec.robot
        lifecycle_state = self._state_machine.current_state[1]
        try:
            loop = self._loop.request(
                "stats", timeout_s=0.5, now_ns=self.get_clock().now().nanoseconds
            )["values"]
            loop_error = ""
        except LoopProcessError as exc:
            loop, loop_error = {}, str(exc)
        missing = loop.pop("missing_inputs", [])
        last_loop_error = loop.pop("loop_error", "")  # the loop's own, not a failed request
        stats = self._loop.stats  # written by the control process, summarised here
        window, total = stats.window_summary(), stats.total_summary()
        values: dict[str, Any] = {
            "state": lifecycle_state,
            "active_policy": self._policy.path,
            "active_policy_hash": self._policy.content_hash,
            "control_rate_hz": 1.0 / self._period_s,
            "control_process": f"pid {self._loop.pid}"
            + ("" if self._loop.alive() else " (exited)"),
            "control_thread": loop.pop("control_thread", "?"),
            **window,
            **{f"total_{k}": v for k, v in total.items()},
            **loop,
            "safe_action_mode": self._safe_mode,
            "swap_refusals": self._swap_refusals,
            "last_swap_error": self._last_swap_error,
            "last_error": loop_error or self._last_error or last_loop_error,
        }
        non_finite = int(loop.get("non_finite_outputs", 0))
        new_non_finite = non_finite - self._non_finite_reported
        self._non_finite_reported = non_finite
        if not self._loop.alive():
            status.level = DiagnosticStatus.ERROR
            status.message = self._last_error or "control process exited"
        elif loop_error:
            status.level, status.message = DiagnosticStatus.ERROR, loop_error
        elif new_non_finite:
            status.level = DiagnosticStatus.ERROR
            status.message = (
                f"{new_non_finite} non-finite policy outputs replaced by the safe action"
            )
        elif lifecycle_state != "active":
            status.level, status.message = (
                DiagnosticStatus.WARN,
                f"{lifecycle_state}: not commanding",
            )
        elif loop.get("waiting_for_inputs", self._waiting):
            status.level = DiagnosticStatus.WARN
            status.message = f"waiting for inputs {missing}"
        elif loop.get("safe_action_active", self._safe_now):
            status.level = DiagnosticStatus.WARN
            status.message = "safe action: " + str(loop.get("safe_action_reasons", ""))
        else:
            status.level, status.message = DiagnosticStatus.OK, "running the policy"
        status.values = [KeyValue(key=k, value=_fmt(v)) for k, v in values.items()]
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


def _bundle(policy: Policy) -> dict[str, np.ndarray]:
    """What the control process needs to run `policy` (see `Policy.runtime`), with its safe-action
    vectors: zero clipped into the limits, and spec.extra['safe_action'] where there is one."""
    spec = policy.spec
    arrays = policy.runtime()
    arrays["zero_action"] = np.clip(np.zeros(spec.action_dim), spec.action_low, spec.action_high)
    if "safe_action" in spec.extra:
        arrays["spec_action"] = _spec_safe_action(spec)
    return arrays


def _identity(policy: Policy) -> dict[str, Any]:
    return {"path": policy.path, "hash": policy.content_hash}


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
