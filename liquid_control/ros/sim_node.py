"""`sim_node`: a MuJoCo robot (the gym env's own model and code) behind the robot's ROS interface.

It steps the physics in real time (`real_time_factor`; faster than real time allowed, 0 = as fast
as possible), publishes /clock so the graph can run on sim time, publishes the spec's sensor topics
at their rates (`spec.extra["sensor_rates_hz"]`, stamped with sim time), and applies the commands it
receives with the env's own `apply_command` (same clipping, same wheel kinematics), optionally
delayed (`command_latency_s`) and noisy (`command_noise_std`). It never blocks on a missing command:
it holds the last one, or the robot's safe command (the spec's `safe_action`, else zero) once
`command_timeout_s` of sim time passed without one, and says so on ~/command_status and in the log.

The robot comes from the robot registry (`liquid_control.robots`, parameter `robot`): its env
class, its defaults for these parameters, its own parameters (the rover's `track_seed`), the inputs
an operator publishes (a velocity command: subscribed here and handed to the env, not published)
and the figures of an episode.

Lock-step mode (`lockstep: true`, for tests): at every control tick it publishes the sensors, then
/clock, then waits (up to `lockstep_timeout_s` of wall time) for one new message on every command
topic before it steps the next control period. Sensors are then published at control ticks only
(all of them, every tick), `lockstep_settle_s` before the tick's /clock, so the newest message of
each topic is the tick's own when the policy's sim-time timer fires: both sides see exactly the data
the gym env produces, whatever the machine load. Graph time then starts at one control period, not zero: a
sim-time control timer created before the first /clock (at time 0, e.g. a policy node started with
the sim paused) is due exactly on every tick, the first one included.

Services: ~/reset (std_srvs/Trigger: new episode with the next seed), ~/pause (std_srvs/SetBool).
Topics out: /clock, sensors, ~/episode (std_msgs/String, JSON figures of each finished episode:
return, steps, lane error, collisions, reason), ~/command_status (std_msgs/String).
"""

from __future__ import annotations

import json
import math
import signal
import threading
import time
from collections import deque
from typing import Any

import gymnasium as gym
import numpy as np
import rclpy
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rosgraph_msgs.msg import Clock
from std_msgs.msg import String
from std_srvs.srv import SetBool, Trigger

import liquid_control.envs  # noqa: F401  (registers the robots' gymnasium ids)
from liquid_control.core.adapters import CommandReader, MessageRejected, fields_to_message
from liquid_control.core.safety import robot_safe_action
from liquid_control.core.spec import ActionElement, InterfaceSpec
from liquid_control.robots import Robot, get_robot, reduce_figures, robots
from liquid_control.ros.messages import COMMAND_QOS, SENSOR_QOS, message_class


def _stamp(sim_time_s: float):
    from builtin_interfaces.msg import Time

    sec, nanosec = divmod(int(round(sim_time_s * 1e9)), 1_000_000_000)
    return Time(sec=sec, nanosec=nanosec)


class SimNode(Node):
    """MuJoCo simulation of one robot, speaking the robot's interface spec."""

    def __init__(self, **kwargs) -> None:
        super().__init__("sim_node", **kwargs)
        p = self._declare_parameters()
        try:
            env_kwargs = json.loads(p["env_kwargs"] or "{}")
            if not isinstance(env_kwargs, dict):
                raise ValueError("not an object")
        except ValueError as exc:
            raise ValueError(
                f"parameter env_kwargs: expected a JSON object, got {p['env_kwargs']!r} ({exc})"
            ) from None
        for extra in self.robot.sim_parameters:
            if p[extra.name] != extra.unset:
                env_kwargs[extra.name] = p[extra.name]
        self.robot.check_available()
        registered = gym.spec(self.robot.env_id)
        # The bare env class (no gymnasium wrappers): the node drives its physics directly.
        self.env = gym.make(registered, **env_kwargs).unwrapped
        self.max_episode_steps = p["max_episode_steps"] or registered.max_episode_steps
        self._figure_keys = tuple({f.info_key for f in self.robot.episode_figures})
        self.spec: InterfaceSpec = self.env.interface_spec
        self.rtf = p["real_time_factor"]
        self.lockstep = p["lockstep"]
        self.lockstep_timeout_s = p["lockstep_timeout_s"]
        self.lockstep_settle_s = p["lockstep_settle_s"]
        self.command_timeout_s = p["command_timeout_s"]
        self.command_latency_s = p["command_latency_s"]
        self.command_noise_std = p["command_noise_std"]
        self.auto_reset = p["auto_reset"]
        self.seed = p["seed"]
        self.noise_rng = np.random.default_rng(p["seed"] + 7919)

        self._lock = threading.Lock()
        self._command_arrived = threading.Condition(self._lock)
        self._paused = p["start_paused"]
        self._reset_requested = False
        self._stop = False

        # Sensors: reliable publishers, so every subscriber QoS (sensor-data best effort included)
        # matches, and lock-step runs lose nothing.
        sensor_qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        # The spec's topics in the node's namespace, as the policy node resolves them
        # (relative_topics), so namespace:=robot1 runs a robot per namespace; /clock stays global.
        self._relative = bool(p["relative_topics"])
        # Operator inputs (a velocity command) come from outside: subscribed and handed to the env.
        operator = set(self.robot.operator_inputs)
        self.sensor_pubs = {
            topic: (
                self.create_publisher(message_class(t), self._topic(topic), sensor_qos),
                message_class(t),
            )
            for topic, t in self.spec.observation_topics().items()
            if topic not in operator
        }
        for topic, t in self.spec.observation_topics().items():
            if topic in operator:
                self.create_subscription(
                    message_class(t),
                    self._topic(topic),
                    lambda m, tp=topic: self._on_operator_input(tp, m),
                    SENSOR_QOS,
                )
        rates = dict(self.spec.extra.get("sensor_rates_hz", {}))
        ts = float(self.env.model.opt.timestep)
        self.sensor_every: dict[str, int] = {}
        for topic in self.sensor_pubs:
            rate = float(rates.get(topic, self.spec.control_rate_hz))
            every = 1.0 / (rate * ts)
            if abs(every - round(every)) > 1e-6:
                raise ValueError(
                    f"sensor_rates_hz[{topic}]: {rate} Hz is not a whole number of {ts} s timesteps"
                )
            self.sensor_every[topic] = int(round(every))
        control_every = self.spec.control_period_s / ts
        if abs(control_every - round(control_every)) > 1e-6:
            raise ValueError(
                f"control_rate_hz: {self.spec.control_rate_hz} Hz is not a whole number of timesteps"
            )
        self.control_every = int(round(control_every))
        self.clock_pub = self.create_publisher(Clock, "/clock", 10)
        self.episode_pub = self.create_publisher(String, "~/episode", 10)
        self.status_pub = self.create_publisher(String, "~/command_status", 10)
        # Ground-truth planar pose for plots and tests (robots that have one); never a policy input.
        self.truth_pub = None
        if callable(getattr(self.env, "pose", None)):
            self._truth_msg = message_class("geometry_msgs/PoseStamped")()
            self._truth_msg.header.frame_id = "world"
            self.truth_pub = self.create_publisher(type(self._truth_msg), "~/ground_truth_pose", 10)

        # Commands: one subscription per action topic; (sim receipt time, values) queued.
        self.command_elements: dict[str, list[ActionElement]] = {}
        for e in self.spec.actions:
            self.command_elements.setdefault(e.topic, []).append(e)
        self._commands = CommandReader(self.spec)
        self._pending: dict[str, deque] = {t: deque() for t in self.command_elements}
        self._command_count = dict.fromkeys(self.command_elements, 0)
        self._active = dict.fromkeys(self.command_elements)  # topic -> (received_s, values)
        # What the robot's drivers do without a command (the spec's safe action, else zero).
        self._safe = robot_safe_action(self.spec)
        for topic, t in self.spec.action_topics().items():
            self.create_subscription(
                message_class(t),
                self._topic(topic),
                lambda m, tp=topic: self._on_command(tp, m),
                COMMAND_QOS,
            )
        self.create_service(Trigger, "~/reset", self._on_reset)
        self.create_service(SetBool, "~/pause", self._on_pause)

        self._status = ""
        self._episode = 0
        # /clock keeps running across episodes (the env's time restarts at 0 each episode).
        self._clock_offset_s = self.spec.control_period_s if self.lockstep else 0.0
        self._new_episode(self.seed)
        self.get_logger().info(
            f"robot {self.robot.name}: {len(self.sensor_pubs)} sensor topics, commands on "
            f"{list(self.command_elements)}, control {self.spec.control_rate_hz} Hz, "
            f"real_time_factor {self.rtf}, lockstep {self.lockstep}"
        )
        self._thread = threading.Thread(target=self._run, name="sim_loop", daemon=True)
        self._thread.start()

    def _declare_parameters(self) -> dict[str, Any]:
        def d(description, read_only=False, fr=None, ir=None):
            return ParameterDescriptor(
                description=description,
                read_only=read_only,
                floating_point_range=[fr] if fr else [],
                integer_range=[ir] if ir else [],
            )

        names = sorted(robots())
        robot = self.declare_parameter(
            "robot", "cartpole", d(f"robot model: {' | '.join(names)}", read_only=True)
        ).value
        try:
            self.robot: Robot = get_robot(robot)
        except ValueError as exc:
            raise ValueError(f"parameter {exc}") from None  # "parameter robot: expected one of..."
        params = {
            "seed": (
                0,
                d("seed of the first episode; each reset uses the next one", read_only=True),
            ),
            "env_kwargs": ("{}", d("JSON keyword arguments of the env class", read_only=True)),
            "real_time_factor": (
                1.0,
                d(
                    "sim seconds per wall second; 0 = as fast as possible",
                    True,
                    FloatingPointRange(from_value=0.0, to_value=1000.0),
                ),
            ),
            "lockstep": (
                False,
                d("wait for the command of each control tick before stepping on", True),
            ),
            "lockstep_timeout_s": (
                5.0,
                d(
                    "lock-step: wall seconds to wait for a command before going on",
                    True,
                    FloatingPointRange(from_value=0.0, to_value=600.0),
                ),
            ),
            "lockstep_settle_s": (
                0.02,
                d(
                    "lock-step: wall seconds between a tick's sensor messages and its /clock, so "
                    "the policy has read them when its sim-time timer fires",
                    True,
                    FloatingPointRange(from_value=0.0, to_value=10.0),
                ),
            ),
            "command_timeout_s": (
                0.5,
                d(
                    "sim seconds without a command before the safe command",
                    True,
                    FloatingPointRange(from_value=0.0, to_value=3600.0),
                ),
            ),
            "command_latency_s": (
                0.0,
                d(
                    "sim seconds between a command's arrival and its application",
                    True,
                    FloatingPointRange(from_value=0.0, to_value=10.0),
                ),
            ),
            "command_noise_std": (
                0.0,
                d(
                    "command noise, fraction of each action's half range",
                    True,
                    FloatingPointRange(from_value=0.0, to_value=1.0),
                ),
            ),
            "auto_reset": (True, d("start a new episode when one ends", True)),
            "max_episode_steps": (
                0,
                d(
                    "control steps per episode; 0 = the env's registered limit",
                    True,
                    ir=IntegerRange(from_value=0, to_value=10_000_000),
                ),
            ),
            "start_paused": (False, d("start paused (resume with ~/pause false)", True)),
            "relative_topics": (
                True,
                d(
                    "resolve the robot's topics in the node's namespace (a leading '/' is "
                    "dropped), as the policy node does",
                    True,
                ),
            ),
        }
        for extra in self.robot.sim_parameters:
            params[extra.name] = (extra.default, d(f"{robot}: {extra.description}", True))
        out = {"robot": robot}
        for name, (default, desc) in params.items():
            default = self.robot.sim_defaults.get(name, default)
            out[name] = self.declare_parameter(name, default, desc).value
        return out

    def _topic(self, name: str) -> str:
        return (name.lstrip("/") or name) if self._relative else name

    # -- callbacks ---------------------------------------------------------------------------
    def _on_command(self, topic: str, msg: Any) -> None:
        try:
            values = self._commands.read(topic, msg)
        except MessageRejected as exc:
            self.get_logger().warning(f"command on {topic} rejected: {exc}")
            return
        with self._lock:
            self._pending[topic].append((float(self.env.data.time), values))
            self._command_count[topic] += 1
            self._command_arrived.notify_all()

    def _on_operator_input(self, topic: str, msg: Any) -> None:
        try:
            with self._lock:
                self.env.operator_input(topic, msg)
        except (MessageRejected, ValueError) as exc:
            self.get_logger().warning(f"operator input on {topic} rejected: {exc}")

    def _on_reset(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        with self._lock:
            self._reset_requested = True
            self._command_arrived.notify_all()
        response.success = True
        response.message = f"new episode with seed {self.seed + self._episode + 1}"
        return response

    def _on_pause(self, request: SetBool.Request, response: SetBool.Response) -> SetBool.Response:
        with self._lock:
            self._paused = bool(request.data)
        response.success = True
        response.message = "paused" if request.data else "running"
        self.get_logger().info(response.message)
        return response

    # -- simulation ----------------------------------------------------------------------------
    def _sim_time(self) -> float:
        """Graph time (the /clock value): monotonic across episodes."""
        return self._clock_offset_s + float(self.env.data.time)

    def _new_episode(self, seed: int) -> None:
        if self.env.data is not None:
            self._clock_offset_s += float(self.env.data.time)
        self.env.reset(seed=int(seed))
        self._steps = 0
        self._physics_steps = 0
        self._return = 0.0
        self._infos: list[dict[str, Any]] = []
        self._episode_seed = int(seed)
        for t in self._pending:
            self._pending[t].clear()
            self._active[t] = None

    def _publish_episode(self, reason: str, info: dict[str, Any]) -> None:
        figures = {
            "episode": self._episode,
            "seed": self._episode_seed,
            "steps": self._steps,
            "return": self._return,
            "reason": reason,
            "sim_time_s": self._sim_time(),
            **reduce_figures(self.robot.episode_figures, self._infos),
        }
        self.episode_pub.publish(String(data=json.dumps(figures)))
        self.get_logger().info(f"episode {self._episode} ended ({reason}): {figures}")
        self._episode += 1

    def _say(self, status: str) -> None:
        if status != self._status:
            self._status = status
            self.status_pub.publish(String(data=status))
            if status.startswith("ok"):
                self.get_logger().info(status)
            else:
                self.get_logger().warning(status)

    def _command_now(self, now_s: float) -> np.ndarray:
        """The command to apply at sim time `now_s` (latency, timeout and noise applied)."""
        action = self._safe.copy()
        states = []
        for topic, elements in self.command_elements.items():
            queue = self._pending[topic]
            while queue and queue[0][0] + self.command_latency_s <= now_s + 1e-9:
                received, values = queue.popleft()
                if self.command_noise_std > 0:
                    half = np.array([(e.high - e.low) / 2 for e in elements])
                    values = (
                        values
                        + self.noise_rng.normal(0.0, self.command_noise_std, values.shape) * half
                    )
                self._active[topic] = (received, values)
            active = self._active[topic]
            slots = [self.spec.actions.index(e) for e in elements]
            if active is None:
                states.append(f"no command yet on {topic}: applying the safe command")
            elif (
                now_s - active[0] > self.command_timeout_s + self.command_latency_s
                and not self.lockstep
            ):
                states.append(
                    f"no command on {topic} for over {self.command_timeout_s} s: applying the safe command"
                )
            else:
                action[slots] = active[1]
        self._say("; ".join(states) if states else "ok: applying commands")
        return action

    def _publish_sensors(self, all_topics: bool) -> None:
        due = [
            t
            for t, every in self.sensor_every.items()
            if all_topics or self._physics_steps % every == 0
        ]
        if not due:
            return
        readings = self.env.readings()
        stamp = _stamp(self._sim_time())
        for topic in due:
            pub, cls = self.sensor_pubs[topic]
            msg = fields_to_message(cls(), readings[topic])
            if hasattr(msg, "header"):
                msg.header.stamp = stamp
            pub.publish(msg)
        if self.truth_pub is not None:
            x, y, yaw = self.env.pose()
            truth = self._truth_msg
            truth.header.stamp = stamp
            truth.pose.position.x, truth.pose.position.y = x, y
            truth.pose.orientation.z, truth.pose.orientation.w = (
                math.sin(yaw / 2),
                math.cos(yaw / 2),
            )
            self.truth_pub.publish(truth)
        return True

    def _wait_for_commands(self, counts: dict[str, int]) -> None:
        """Lock-step: wait until every command topic has a message beyond `counts` (lock held)."""
        deadline = time.monotonic() + self.lockstep_timeout_s
        while not self._stop and not self._reset_requested:
            if all(self._command_count[t] > counts[t] for t in counts):
                return
            left = deadline - time.monotonic()
            if left <= 0:
                self._say(
                    f"lockstep: no command within {self.lockstep_timeout_s} s at t={self.env.data.time:.3f}: going on"
                )
                return
            self._command_arrived.wait(timeout=min(left, 0.1))

    def _run(self) -> None:
        try:
            self._loop()
        except Exception as exc:
            if self._stop or not rclpy.ok():
                return  # shutting down: publishers may already be gone
            self.get_logger().error(f"simulation loop stopped: {exc!r}")
            raise

    def _loop(self) -> None:
        wall0, sim0 = time.monotonic(), float(self.env.data.time)
        action = self._safe.copy()
        while not self._stop and rclpy.ok():
            with self._lock:
                if self._reset_requested:
                    self._reset_requested = False
                    self._publish_episode("reset", {})
                    self._new_episode(self.seed + self._episode)
                    wall0, sim0 = time.monotonic(), float(self.env.data.time)
                if self._paused:
                    paused = True
                else:
                    paused = False
                    now = float(self.env.data.time)
                    tick = self._physics_steps % self.control_every == 0
                    if tick and self._physics_steps > 0:
                        if self._end_of_control_step(action):
                            wall0, sim0 = time.monotonic(), float(self.env.data.time)
                            continue
                    lockstep_tick = tick and self.lockstep
                    counts = dict(self._command_count)  # commands seen before this tick
                    # Lock-step publishes at control ticks only: then the newest message of every
                    # topic is the tick's own, whatever order the policy's executor reads them in.
                    published = (tick or not self.lockstep) and self._publish_sensors(
                        all_topics=lockstep_tick
                    )
                    if lockstep_tick:
                        self._lock.release()
                        time.sleep(self.lockstep_settle_s)  # sensors reach the policy first
                        self._lock.acquire()
                    # /clock ticks whenever something happens (a sensor message or a control
                    # tick), not at every physics step: enough for sim-time timers, cheaper.
                    if published or tick:
                        self.clock_pub.publish(Clock(clock=_stamp(self._sim_time())))
                    if lockstep_tick:
                        self._wait_for_commands(counts)
                    action = self._command_now(now)
                    action = self.env.apply_command(action)
                    self.env.advance(1)
                    self._physics_steps += 1
            if paused:
                time.sleep(0.01)
                wall0, sim0 = time.monotonic(), float(self.env.data.time)
                continue
            if self.rtf > 0 and not self.lockstep:
                ahead = (float(self.env.data.time) - sim0) / self.rtf - (time.monotonic() - wall0)
                if ahead > 0:
                    time.sleep(ahead)

    def _end_of_control_step(self, action: np.ndarray) -> bool:
        """Score the control step that just ended; True when a new episode was started."""
        reward, terminated, info = self.env.score(action, self.spec.control_period_s)
        self._steps += 1
        self._return += reward
        keys = self._figure_keys
        self._infos.append({k: info[k] for k in keys if k in info})
        truncated = self._steps >= self.max_episode_steps
        if not (terminated or truncated):
            return False
        reason = "time_limit"
        if terminated:
            reason = next((k for k in self.robot.end_reasons if info.get(k)), "terminated")
        self._publish_episode(reason, info)
        if self.auto_reset:
            self._new_episode(self.seed + self._episode)
        else:
            self._paused = True
        return True

    def destroy_node(self) -> None:
        self._stop = True
        with self._lock:
            self._command_arrived.notify_all()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=2.0)
        super().destroy_node()


def main(args: list[str] | None = None) -> None:
    rclpy.init(args=args)
    node = SimNode()
    executor = MultiThreadedExecutor(num_threads=2)
    executor.add_node(node)
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        # `ros2 launch` and a terminal may both send SIGINT: a second one must not cut the cleanup.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
