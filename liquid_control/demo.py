"""`liquid-control demo`: a shipped LTC policy driving the simulated robot over real DDS.

Two processes, as on a robot: the MuJoCo sim node (publishes /clock and the sensors, applies the
commands) and the policy node (the numpy LTC behind its safety layer, on sim time). This process
only watches: it records the policy node's per-tick debug stream (raw observation, dt, action), the
commands and sensor messages with their wall-clock arrival times, the sim node's ground-truth pose (rover) and the sim node's episode figures. After ``--duration`` seconds of sim time it prints

    episode return, lane error (rover), achieved control rate, period jitter, sensor->command latency

and writes a PNG: the trajectory (rover: on the track, between the walls; cart-pole: pole angle and
cart position), the actions, and the LTC's neuron potentials. The neuron activity is reconstructed by
replaying the logged observations and dt through the same policy file; the replayed actions are
compared with the ones the node published (the summary gives the largest difference).

ROS traffic stays on this machine and on a domain of its own (ROS_DOMAIN_ID from the process id
unless set, ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from .core.policy import Policy
from .robots import get_robot, resolve, robots

REPO = Path(__file__).resolve().parents[1]
# Keys of the sim node's episode figures that every robot has (the robot's own figures follow).
_EPISODE_KEYS = ("episode", "seed", "steps", "return", "reason", "sim_time_s")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "demo", help="run a shipped policy on the simulated robot over ROS 2 (sim + policy node)"
    )
    p.add_argument(
        "--robot", choices=sorted(robots()), default="rover", help="a robot of the robot registry"
    )
    p.add_argument(
        "--policy", default=None, help="policy file (default: the robot's shipped policy)"
    )
    p.add_argument(
        "--duration", type=float, default=None, help="sim seconds to run (default: the robot's)"
    )
    p.add_argument("--seed", type=int, default=0, help="episode seed of the sim node")
    p.add_argument("--track-seed", type=int, default=3, help="rover: the track to drive")
    p.add_argument(
        "--sim-param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a sim node parameter (repeatable), e.g. command_noise_std=0.1",
    )
    p.add_argument(
        "--out", default="runs/demo", help="folder for the PNG, the summary and node logs"
    )
    p.set_defaults(func=_run)


class NodeProcess:
    """`python -m module --ros-args ...` in its own process group, log kept in a file."""

    def __init__(self, module: str, params: dict[str, Any], log_path: Path) -> None:
        argv = [sys.executable, "-m", module, "--ros-args"]
        for k, v in params.items():
            value = ("true" if v else "false") if isinstance(v, bool) else str(v)
            argv += ["-p", f"{k}:={value}"]
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(
            argv, stdout=self._log, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True
        )

    def tail(self, n: int = 15) -> str:
        self._log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def stop(self) -> None:
        for sig, wait_s in ((signal.SIGINT, 5.0), (signal.SIGKILL, 5.0)):
            if self.proc.poll() is not None:
                break
            try:
                os.killpg(self.proc.pid, sig)
                self.proc.wait(wait_s)
            except ProcessLookupError:
                break
            except subprocess.TimeoutExpired:
                continue
        self._log.close()


class Watcher:
    """An rclpy node recording what the demo reports on (spun by a background thread)."""

    def __init__(self, policy: Policy) -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.node import Node
        from rclpy.parameter import Parameter
        from std_msgs.msg import Float64MultiArray, String
        from std_srvs.srv import SetBool

        from .ros.messages import COMMAND_QOS, DEBUG_QOS, SENSOR_QOS, message_class

        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = Node(
            "liquid_demo_watcher",
            context=self.context,
            parameter_overrides=[Parameter("use_sim_time", value=True)],
        )
        self.lock = threading.Lock()
        self.debug: list[tuple[float, list[float]]] = []
        self.commands: list[float] = []
        self.inputs: list[float] = []
        self.truth: list[tuple[float, Any]] = []
        self.episodes: list[dict] = []
        spec = policy.spec
        n = self.node
        # Every debug row is needed for the replay (one lost row shifts the hidden state): the
        # deep debug history keeps rows while this process is starved for a while.
        self.debug_sub = n.create_subscription(
            Float64MultiArray,
            "/policy_node/observation",
            lambda m: self._add(self.debug, list(m.data)),
            DEBUG_QOS,
        )
        n.create_subscription(
            String, "/sim_node/episode", lambda m: self._add(self.episodes, json.loads(m.data)), 10
        )
        for topic, msg_type in spec.action_topics().items():
            n.create_subscription(
                message_class(msg_type), topic, lambda m: self._stamp(self.commands), COMMAND_QOS
            )
        for topic, msg_type in spec.observation_topics().items():
            n.create_subscription(
                message_class(msg_type), topic, lambda m: self._stamp(self.inputs), SENSOR_QOS
            )
        # The rover's ground-truth pose from the sim node (wheel odometry would drift off the lane).
        n.create_subscription(
            message_class("geometry_msgs/PoseStamped"),
            "/sim_node/ground_truth_pose",
            lambda m: self._add(self.truth, (m.pose.position.x, m.pose.position.y)),
            10,
        )
        self.pause = n.create_client(SetBool, "/sim_node/pause")
        self.spec = spec
        self._stop_operating = threading.Event()
        self._operator: threading.Thread | None = None
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(n)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def debug_publisher_matched(self) -> bool:
        sub = self.debug_sub
        if hasattr(sub, "get_publisher_count"):  # rclpy >= Jazzy: this reader's matched writers
            return sub.get_publisher_count() >= 1
        return self.node.count_publishers("/policy_node/observation") >= 1  # Humble: the graph

    def _add(self, target: list, item: Any) -> None:
        with self.lock:
            target.append((time.monotonic(), item) if target is not self.episodes else item)

    def _stamp(self, target: list) -> None:
        with self.lock:
            target.append(time.monotonic())

    def sim_time_s(self) -> float:
        return self.node.get_clock().now().nanoseconds * 1e-9

    def set_paused(self, paused: bool, timeout_s: float = 10.0) -> None:
        from std_srvs.srv import SetBool

        if not self.pause.wait_for_service(timeout_sec=timeout_s):
            raise RuntimeError("/sim_node/pause did not appear")
        future = self.pause.call_async(SetBool.Request(data=paused))
        deadline = time.monotonic() + timeout_s
        while not future.done() and time.monotonic() < deadline:
            time.sleep(0.01)

    def operate(self, robot_name: str, rate_hz: float = 20.0) -> None:
        """Publish the robot's operator inputs (a velocity command, a goal) from its registry
        entry's `demo_operator(t_s)` at `rate_hz` wall, for the sim time of the moment, until
        `close()`: the demo's operator, as `ros2 topic pub` or a joystick would be."""
        robot = get_robot(robot_name)
        if not robot.operator_inputs or robot.demo_operator is None:
            return
        from .core.adapters import fields_to_message
        from .ros.messages import COMMAND_QOS, message_class

        script = resolve(robot.demo_operator)
        topics = self.spec.observation_topics()
        publishers = {
            t: (self.node.create_publisher(message_class(topics[t]), t, COMMAND_QOS), topics[t])
            for t in robot.operator_inputs
        }
        self.operator_log: list[tuple[float, dict]] = []

        def run() -> None:
            while not self._stop_operating.wait(1.0 / rate_hz):
                t = self.sim_time_s()
                fields = script(t)
                for topic, (pub, msg_type) in publishers.items():
                    pub.publish(fields_to_message(message_class(msg_type)(), fields[topic]))
                with self.lock:
                    self.operator_log.append((t, fields))

        self._operator = threading.Thread(target=run, name="demo_operator", daemon=True)
        self._operator.start()

    def close(self) -> None:
        import rclpy

        self._stop_operating.set()
        if self._operator is not None:
            self._operator.join(timeout=2.0)
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)


def _wait(cond, timeout_s: float, what: str, nodes: list[NodeProcess]) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        for node in nodes:
            if node.proc.poll() is not None:
                raise RuntimeError(
                    f"{node.log_path.name} exited while waiting for {what}:\n{node.tail()}"
                )
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"timed out after {timeout_s:.0f} s waiting for {what}\n"
                + "\n".join(f"--- {n.log_path.name}\n{n.tail()}" for n in nodes)
            )
        time.sleep(0.05)


def run_demo(
    robot: str,
    policy_path: Path,
    duration_s: float,
    seed: int,
    track_seed: int,
    out: Path,
    sim_overrides: dict[str, Any] | None = None,
) -> dict:
    os.environ.setdefault("ROS_DOMAIN_ID", str(50 + os.getpid() % 50))
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    out.mkdir(parents=True, exist_ok=True)
    policy = Policy.load(policy_path)
    rate = policy.spec.control_rate_hz
    steps = int(round(duration_s * rate))
    sim_params: dict[str, Any] = {
        "robot": robot,
        "seed": seed,
        "real_time_factor": 1.0,
        "start_paused": True,
        "auto_reset": False,
        "max_episode_steps": steps,
    }
    if any(p.name == "track_seed" for p in get_robot(robot).sim_parameters):
        sim_params["track_seed"] = track_seed
    sim_params.update(sim_overrides or {})
    watcher = Watcher(policy)
    watcher.operate(robot)  # the robot's operator inputs, if it has any (a /cmd_vel script)
    nodes = [
        NodeProcess("liquid_control.ros.sim_node", sim_params, out / "sim_node.log"),
        NodeProcess(
            "liquid_control.ros.policy_node",
            {
                "policy_path": str(policy_path.resolve()),
                "use_sim_time": True,
                "debug": True,
                # a simulation with no estop node: nobody at risk, nothing to discover
                "estop_required_at_start": False,
                "estop_discovery_s": 0.0,
            },
            out / "policy_node.log",
        ),
    ]
    try:
        first_input = next(iter(policy.spec.observation_topics()))
        _wait(
            lambda: watcher.node.count_subscribers(first_input) >= 2,
            60,
            "the policy node's subscriptions",
            nodes,
        )
        _wait(
            watcher.debug_publisher_matched,
            60,
            "the policy node's debug topic",
            nodes,
        )
        # The policy node's control process takes /clock itself; it must hear the first ticks.
        _wait(
            lambda: any(
                i.node_name == "policy_node_io"
                for i in watcher.node.get_subscriptions_info_by_topic("/clock")
            ),
            60,
            "the policy node's control process on /clock",
            nodes,
        )
        _wait(lambda: watcher.pause.service_is_ready(), 60, "the sim node", nodes)
        # The graph above is the watcher's view; the sim's and the policy's processes match their
        # own writers and readers a little later, and a paused sim publishes nothing meanwhile.
        time.sleep(2.0)
        wall0 = time.monotonic()
        watcher.set_paused(False)
        print(
            f"demo: {robot} with {policy_path} for {duration_s:g} s of sim time ({steps} control steps) ...",
            flush=True,
        )
        _wait(lambda: bool(watcher.episodes), duration_s * 3 + 60, "the end of the episode", nodes)
        wall_s = time.monotonic() - wall0
    finally:
        for node in reversed(nodes):
            node.stop()
        watcher.close()
    with watcher.lock:
        debug, commands, inputs = (
            list(watcher.debug),
            np.array(watcher.commands),
            np.array(watcher.inputs),
        )
        truth, episode = list(watcher.truth), watcher.episodes[0]
    summary = summarize(policy, debug, commands, inputs, episode, wall_s)
    replay = replay_policy(policy, debug)
    summary["replay_max_action_diff"] = replay["max_diff"]
    summary["replay_compared_ticks"] = replay["compared_rows"]
    summary["debug_rows_lost"] = replay["lost_rows"]
    plot_demo(robot, policy, debug, truth, replay, episode, out / f"demo_{robot}.png", sim_params)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def summarize(
    policy: Policy,
    debug: list,
    commands: np.ndarray,
    inputs: np.ndarray,
    episode: dict,
    wall_s: float,
) -> dict:
    period = policy.spec.control_period_s
    dt = np.array([d[1][1] for d in debug[1:]]) if len(debug) > 1 else np.array([period])
    cmd_gaps = np.diff(commands) if len(commands) > 1 else np.array([np.nan])
    # sensor -> command: from the newest sensor message received before each command to the command
    latency = []
    for t in commands:
        k = np.searchsorted(inputs, t) - 1
        if k >= 0:
            latency.append(t - inputs[k])
    latency = np.array(latency) if latency else np.array([np.nan])
    out = {
        "robot": policy.spec.robot,
        "policy": policy.path,
        "content_hash": policy.content_hash,
        "episode_return": episode.get("return"),
        "episode_steps": episode.get("steps"),
        "episode_end": episode.get("reason"),
        "sim_time_s": episode.get("sim_time_s"),
        "wall_time_s": wall_s,
        "control_rate_hz_nominal": policy.spec.control_rate_hz,
        "control_rate_hz_sim_time": float(1.0 / dt.mean()),
        "control_rate_hz_wall": float(len(commands) / wall_s) if wall_s > 0 else float("nan"),
        "period_jitter_ms_sim_time": float(1e3 * dt.std()),
        "period_jitter_ms_wall": float(1e3 * np.nanstd(cmd_gaps)),
        "sensor_to_command_latency_ms_median": float(1e3 * np.nanmedian(latency)),
        "sensor_to_command_latency_ms_p95": float(1e3 * np.nanpercentile(latency, 95)),
        "policy_ticks": len(debug),
    }
    # the robot's own episode figures (the rover's lane error, progress and collisions, ...)
    out["figures"] = {k: v for k, v in episode.items() if k not in _EPISODE_KEYS}
    return out


def replay_policy(policy: Policy, debug: list) -> dict[str, np.ndarray]:
    """Neuron states by stepping the same policy on the logged (observation, dt); with the action
    difference to what the node published.

    A row carries the node's steps since its last reset, so lost rows show as a jump in that
    count (`lost_rows`). The hidden state after them is unknown: the rows from there to the node's
    next reset are left out of the comparison (`compared_rows`; their neuron states are NaN).
    """
    n_obs, n_act = policy.spec.obs_dim, policy.spec.action_dim
    replay = copy.deepcopy(policy)  # same weights and spec, its own state
    replay.reset()
    states, actions, logged, times, compared = [], [], [], [], []
    lost, in_sync, prev_since = 0, True, 0
    t = 0.0
    for _, row in debug:
        dt, since = row[1], int(row[2])
        obs, act = np.array(row[3 : 3 + n_obs]), np.array(row[3 + n_obs : 3 + n_obs + n_act])
        if since > 1 and since != prev_since + 1:
            lost += since - prev_since - 1 if since > prev_since else since - 1
            in_sync = False
        prev_since = since
        if since == 0:  # the node published its safe action; the policy did not step
            replay.reset()
            in_sync = True
            states.append(replay.state.copy())
            actions.append(act)
        elif since == 1 or in_sync:
            if since == 1:
                replay.reset()
                in_sync = True
            actions.append(replay.step(obs, dt))
            states.append(replay.state.copy())
        else:
            actions.append(act)
            states.append(np.full_like(replay.state, np.nan))
        compared.append(in_sync)
        logged.append(act)
        t += dt
        times.append(t)
    actions, logged = np.array(actions).reshape(-1, n_act), np.array(logged).reshape(-1, n_act)
    mask = np.array(compared, dtype=bool)
    diff = np.abs(actions - logged)[mask]
    return {
        "t": np.array(times),
        "state": np.array(states),
        "action": logged,
        "max_diff": float(diff.max()) if diff.size else float("nan"),
        "compared_rows": int(mask.sum()),
        "lost_rows": int(lost),
        "obs": np.array([row[3 : 3 + n_obs] for _, row in debug]),
    }


def plot_demo(
    robot: str,
    policy: Policy,
    debug: list,
    truth: list,
    replay: dict,
    episode: dict,
    path: Path,
    sim_params: dict[str, Any],
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    panel = get_robot(robot).demo_panel
    if (
        panel is not None
    ):  # the robot's own picture of the episode (the rover: its path on the track)
        resolve(panel)(axes[0], policy, replay, truth, episode, sim_params)
    else:
        observations_panel(axes[0], policy, replay, episode)
    for j, a in enumerate(policy.spec.actions):
        axes[1].plot(replay["t"], replay["action"][:, j], label=f"{a.name} ({a.unit})")
    axes[1].set(xlabel="sim time (s)", title="commands published by the policy node")
    axes[1].legend(fontsize=7)
    state = replay["state"]
    if len(state):
        im = axes[2].imshow(
            state.T,
            aspect="auto",
            origin="lower",
            cmap="coolwarm",
            extent=(replay["t"][0], replay["t"][-1], -0.5, state.shape[1] - 0.5),
        )
        fig.colorbar(im, ax=axes[2], label="potential")
    motor = policy.wiring.output_dim
    axes[2].set(
        xlabel="sim time (s)",
        ylabel=f"neuron (0-{motor - 1}: motor)",
        title=f"LTC-{policy.wiring.units} neuron activity",
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def observations_panel(ax, policy: Policy, replay: dict, episode: dict) -> None:
    """A robot without a panel of its own: its first observations (normalised) over the episode."""
    obs = replay["obs"]
    spec = policy.spec
    for i, e in enumerate(spec.observations[:8]):
        if len(obs):
            ax.plot(replay["t"], (obs[:, i] - e.mean) / e.std, lw=1, label=e.name)
    ax.set(
        xlabel="sim time (s)",
        ylabel="observation (normalised)",
        title=f"{spec.robot}: return {episode.get('return', float('nan')):.1f}",
    )
    ax.legend(fontsize=6)


def parse_sim_params(items: list[str]) -> dict[str, Any]:
    """NAME=VALUE pairs, the value read as YAML (numbers, booleans, strings); ValueError if not."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ValueError(f"--sim-param: expected NAME=VALUE, got {item!r}")
        out[name] = yaml.safe_load(value)
    return out


def _run(args: argparse.Namespace) -> int:
    robot = get_robot(args.robot)
    if args.policy:
        policy_path = Path(args.policy)
    elif robot.policy:
        policy_path = REPO / "policies" / robot.policy
    else:
        print(
            f"liquid-control demo: robot {robot.name!r} ships no policy; give one with --policy",
            file=sys.stderr,
        )
        return 2
    if not policy_path.exists():
        print(f"liquid-control demo: no policy file at {policy_path}", file=sys.stderr)
        return 2
    try:
        overrides = parse_sim_params(args.sim_param)
        robot.check_available()
    except ValueError as exc:
        print(f"liquid-control demo: {exc}", file=sys.stderr)
        return 2
    duration = robot.demo_seconds if args.duration is None else args.duration
    try:
        summary = run_demo(
            args.robot, policy_path, duration, args.seed, args.track_seed, Path(args.out), overrides
        )
    except RuntimeError as exc:
        print(f"liquid-control demo: {exc}", file=sys.stderr)
        return 1
    print(format_summary(summary))
    print(
        f"figure: {Path(args.out) / f'demo_{args.robot}.png'}  summary: {Path(args.out) / 'summary.json'}"
    )
    return 0


def format_summary(s: dict) -> str:
    lines = [
        f"robot {s['robot']}, policy {s['policy']} ({s['content_hash']})",
        f"episode return        {s['episode_return']:.2f} over {s['episode_steps']} steps "
        f"({s['sim_time_s']:.1f} s sim time, {s['wall_time_s']:.1f} s wall), ended by {s['episode_end']}",
    ]
    for name, value in s.get("figures", {}).items():
        shown = f"{value:.3f}" if isinstance(value, float) else str(value)
        lines.append(f"{name:<21} {shown}")
    lines += [
        f"control rate          {s['control_rate_hz_sim_time']:.2f} Hz sim time, {s['control_rate_hz_wall']:.2f} Hz "
        f"wall (nominal {s['control_rate_hz_nominal']:g} Hz)",
        f"period jitter         {s['period_jitter_ms_sim_time']:.3f} ms sim time, {s['period_jitter_ms_wall']:.2f} ms "
        f"wall (std of the period)",
        f"sensor->command       {s['sensor_to_command_latency_ms_median']:.2f} ms median, "
        f"{s['sensor_to_command_latency_ms_p95']:.2f} ms p95 (wall)",
        f"replayed LTC vs node  max |action difference| {s['replay_max_action_diff']:.2e} over "
        f"{s['replay_compared_ticks']} ticks ({s['debug_rows_lost']} debug rows lost)",
    ]
    return "\n".join(lines)
