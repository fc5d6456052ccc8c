"""The robot registry: every robot is one entry, from which the gym ids, the sim node, the launch
file, the demo and the CLI derive; a robot added in one entry (test/fixture_robot.py) runs through
env -> sim node -> policy node over real DDS."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import fixture_robot
import gymnasium as gym
import numpy as np
import pytest
from ros_harness import Harness, NodeProcess, save_test_policy
from std_msgs.msg import Float64MultiArray

from liquid_control.core.policy import Policy
from liquid_control.envs import env_ids, robot_spec
from liquid_control.robots import (
    ROBOTS_ENV,
    EpisodeFigure,
    Robot,
    RobotError,
    get_robot,
    reduce_figures,
    register_robot,
    robots,
)

ROOT = Path(__file__).resolve().parents[1]
TEST_DIR = Path(__file__).resolve().parent
# what a process needs to see the fixture robot: its module on the path, named in the variable
FIXTURE_ENV = {
    ROBOTS_ENV: "fixture_robot",
    "PYTHONPATH": os.pathsep.join([str(TEST_DIR), os.environ.get("PYTHONPATH", "")]),
}


def test_every_builtin_robot_has_its_env_ids_spec_and_shipped_policy() -> None:
    for name in ("cartpole", "rover"):
        robot = get_robot(name)
        spec = robot_spec(name)
        assert spec.robot == name and spec.extra["env_id"] == robot.env_id
        for env_id in robot.env_ids().values():
            assert env_id in gym.registry and env_ids()[name] == robot.env_id
        assert gym.spec(robot.env_id).max_episode_steps == robot.max_episode_steps
        policy = Policy.load(ROOT / "policies" / robot.policy)
        assert policy.spec.check_compatible(spec) is None
        for path in (robot.train_config, robot.wrappers_config):
            assert (ROOT / path).is_file(), path
    assert env_ids()["cartpole_balance"] == "LiquidControl/CartPoleBalance-v0"


def test_an_unknown_robot_or_a_taken_name_is_refused_with_the_names() -> None:
    with pytest.raises(
        RobotError, match=r"robot: expected one of \[.*'cartpole'.*'rover'.*\], got 'nope'"
    ):
        get_robot("nope")
    taken = Robot("cartpole", "X-v0", "m:C", "m:spec", 10)
    with pytest.raises(RobotError, match="'cartpole' is already registered"):
        register_robot(taken)
    clash = Robot("other", "LiquidControl/RoverLane-v0", "m:C", "m:spec", 10)
    with pytest.raises(RobotError, match="is already robot 'rover'"):
        register_robot(clash)
    with pytest.raises(RobotError, match="entry_point: expected 'module:attribute'"):
        Robot("x", "X-v0", "no_colon", "m:spec", 10)
    with pytest.raises(RobotError, match="reduce: expected one of"):
        EpisodeFigure("f", "k", "median")


def test_episode_figures_reduce_the_step_infos() -> None:
    infos = [{"e": 3.0, "hit": False}, {"e": 4.0, "hit": True}, {"hit": True}]
    figures = (
        EpisodeFigure("e_rms", "e", "rms"),
        EpisodeFigure("hits", "hit", "count"),
        EpisodeFigure("e_last", "e", "last"),
        EpisodeFigure("absent", "nothing", "sum"),
    )
    out = reduce_figures(figures, infos)
    assert out == {"e_rms": pytest.approx(np.sqrt(12.5)), "hits": 2, "e_last": 4.0}


def test_a_robot_module_named_in_the_environment_is_registered_in_a_new_process() -> None:
    code = (
        "from liquid_control.robots import robots; import liquid_control.envs, gymnasium as gym; "
        "r = robots()['tiny_arm']; print(r.env_id, r.env_id in gym.registry)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, **FIXTURE_ENV}, capture_output=True,
        text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["LiquidControlTest/TinyArm-v0", "True"]
    bad = subprocess.run(
        [sys.executable, "-c", "from liquid_control.robots import robots; robots()"],
        env={**os.environ, ROBOTS_ENV: "no_such_robot_module"}, capture_output=True, text=True,
        timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert (
        bad.returncode != 0
        and "LIQUID_CONTROL_ROBOTS: cannot import 'no_such_robot_module'" in bad.stderr
    )


def test_the_fixture_robot_is_a_gym_env_with_the_wrappers() -> None:
    from liquid_control.envs.wrappers import make_env

    register_robot(fixture_robot.ROBOT)
    assert "tiny_arm" in robots()
    env = make_env(
        "LiquidControlTest/TinyArm-v0",
        {"action_latency": {"min_steps": 2, "max_steps": 2}, "observation_noise": {"scale": 1.0}},
    )
    obs, _ = env.reset(seed=0)
    assert obs.shape == (3,)
    # before two commands exist the latency wrapper applies the robot's safe action (0.25 rad)
    _, _, _, _, info = env.step(np.array([-1.0]))
    np.testing.assert_allclose(info["applied_action"], [0.25])
    for _ in range(40):
        obs, reward, *_ = env.step(np.array([0.8]))
    assert obs[0] == pytest.approx(0.8, abs=0.15) and reward <= 0


@pytest.mark.ros
def test_a_robot_added_in_one_entry_runs_through_the_sim_node_and_the_policy_node(tmp_path) -> None:
    register_robot(fixture_robot.ROBOT)
    policy_path = tmp_path / "tiny_arm.lcp"
    save_test_policy(policy_path, fixture_robot.spec(), seed=1)
    with Harness("registry_test") as h:
        joints = h.subscribe("/arm/joint_states", "sensor_msgs/JointState", 1000)
        commands = h.subscribe("/arm/commands", "std_msgs/Float64MultiArray", 1000)
        episodes = h.subscribe("/sim_node/episode", "std_msgs/String", 100)
        h.publish_periodically("/arm_goal", lambda: Float64MultiArray(data=[1.0]), 20.0)
        sim = NodeProcess(
            "liquid_control.ros.sim_node",
            overrides={"robot": "tiny_arm", "max_episode_steps": 20, "real_time_factor": 1.0},
            env=FIXTURE_ENV,
            log_dir=tmp_path,
        )
        policy = NodeProcess(
            "liquid_control.ros.policy_node",
            overrides={
                "policy_path": str(policy_path),
                "use_sim_time": True,
                "estop_required_at_start": False,
                "estop_discovery_s": 0.0,
            },
            log_dir=tmp_path,
        )
        try:
            h.wait_for(lambda: len(commands) >= 20, 60, "the policy node's commands", policy)
            h.wait_for(lambda: len(episodes) >= 2, 30, "two episodes of the sim node", sim)
            figures = json.loads(episodes.last.data)
            # the operator's goal reached the sim's env (not published by the sim node itself)
            assert figures["goal_rad"] == pytest.approx(1.0) and "goal_error_rms_rad" in figures
            assert h.node.count_publishers("/arm_goal") == 1
            # the sim applies the policy's position targets: the joint follows the commands
            sent = np.array([m.data[0] for m in list(commands.messages)[-10:]])
            angle = float(joints.last.position[0])
            assert np.all(np.abs(sent) <= 1.5) and len(joints) > 20
            assert abs(angle - float(np.median(sent))) < 0.6, (angle, sent)
        finally:
            h.stop_publishing("/arm_goal")
            policy.stop()
            sim.stop()
        assert "robot tiny_arm" in sim.log_path.read_text()


@pytest.mark.ros
def test_the_demo_operates_a_robot_s_operator_inputs(tmp_path, monkeypatch) -> None:
    from liquid_control.demo import run_demo

    register_robot(fixture_robot.ROBOT)
    for key, value in FIXTURE_ENV.items():  # (the demo's node processes inherit them)
        monkeypatch.setenv(key, value)
    policy_path = tmp_path / "tiny_arm.lcp"
    save_test_policy(policy_path, fixture_robot.spec(), seed=2)
    summary = run_demo("tiny_arm", policy_path, 2.0, 0, 0, tmp_path / "demo")
    # the episode's last goal is the operator's second one: it reached the sim's env
    assert summary["figures"]["goal_rad"] == pytest.approx(-0.4)
    assert summary["replay_max_action_diff"] < 1e-6 and summary["episode_steps"] == 40
    assert (tmp_path / "demo" / "demo_tiny_arm.png").is_file()
