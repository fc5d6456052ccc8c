"""Gym envs: API (check_env), seeding, observation through the spec, rendering, task logic."""

from __future__ import annotations

import math
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import liquid_control.envs  # noqa: F401  (registers the ids)
from liquid_control.core.adapters import fields_to_message, message_from_fields, observe
from liquid_control.envs import env_ids, robot_spec
from liquid_control.envs.cartpole import CartPoleSwingUpEnv
from liquid_control.envs.rover import RoverLaneEnv, twist_to_wheels

IDS = [env_ids()["cartpole"], env_ids()["rover"]]


@pytest.mark.parametrize("env_id", IDS)
def test_env_passes_gymnasium_check_env(env_id):
    env = gym.make(env_id)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unbounded observation space warnings are expected
        check_env(env.unwrapped, skip_render_check=True)


@pytest.mark.parametrize("env_id", IDS)
def test_spaces_come_from_the_spec(env_id):
    env = gym.make(env_id)
    spec = env.unwrapped.interface_spec
    assert env.observation_space.shape == (spec.obs_dim,)
    np.testing.assert_array_equal(env.action_space.low, spec.action_low)
    np.testing.assert_array_equal(env.action_space.high, spec.action_high)
    assert spec.check_compatible(robot_spec(spec.robot)) is None


@pytest.mark.parametrize("env_id", IDS)
def test_same_seed_same_trajectory_other_seed_differs(env_id):
    def rollout(seed):
        env = gym.make(env_id)
        obs, _ = env.reset(seed=seed)
        rng = np.random.default_rng(0)
        out = [obs]
        for _ in range(30):
            a = rng.uniform(env.action_space.low, env.action_space.high)
            obs, *_ = env.step(a)
            out.append(obs)
        return np.array(out)

    a, b, c = rollout(3), rollout(3), rollout(4)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-3


@pytest.mark.parametrize("env_id", IDS)
def test_step_reports_the_control_period_as_dt(env_id):
    env = gym.make(env_id)
    env.reset(seed=0)
    _, _, _, _, info = env.step(env.action_space.sample())
    assert info["dt"] == pytest.approx(env.unwrapped.interface_spec.control_period_s, abs=1e-12)


@pytest.mark.parametrize("env_cls", [CartPoleSwingUpEnv, RoverLaneEnv])
def test_observation_is_the_adapter_reading_of_the_published_messages(env_cls):
    """The env's vector equals the spec adapters applied to the same fields copied into real ROS
    messages (what the sim node publishes and the policy node reads)."""
    from liquid_control.ros.messages import message_class

    env = env_cls()
    obs, _ = env.reset(seed=1)
    for _ in range(5):
        obs, *_ = env.step(env.action_space.sample())
    readings = env.readings()
    spec = env.interface_spec
    namespaces = {t: message_from_fields(f) for t, f in readings.items()}
    ros = {
        t: fields_to_message(message_class(spec.observation_topics()[t])(), f)
        for t, f in readings.items()
    }
    np.testing.assert_array_equal(obs, observe(spec, namespaces))
    # ROS messages store LaserScan ranges as float32: equal to float32 precision.
    np.testing.assert_allclose(obs, observe(spec, ros), rtol=1e-6, atol=1e-6)


def test_cartpole_observation_matches_the_physical_state():
    env = CartPoleSwingUpEnv()
    env.reset(seed=0)
    for _ in range(10):
        obs, *_ = env.step(np.array([5.0]))
    d = env.data
    x, theta = d.qpos[env._qpos[0]], d.qpos[env._qpos[1]]
    v, omega = d.qvel[env._qvel[0]], d.qvel[env._qvel[1]]
    np.testing.assert_allclose(obs, [x, v, math.sin(theta), math.cos(theta), omega], atol=1e-12)
    assert v > 0.1, "a positive force must move the cart towards +x"


def test_cartpole_starts_hanging_and_reward_favours_upright():
    env = CartPoleSwingUpEnv()
    obs, _ = env.reset(seed=0)
    assert obs[3] < -0.99, "pole_cos: the swing-up task starts hanging"
    _, r_down, *_ = env.step(np.zeros(1))
    up = CartPoleSwingUpEnv(start="up")
    obs, _ = up.reset(seed=0)
    assert obs[3] > 0.99
    _, r_up, *_ = up.step(np.zeros(1))
    assert r_up > 0.9 and r_down < 0.05


def test_cartpole_terminates_at_the_end_stop():
    env = gym.make(env_ids()["cartpole"])
    env.reset(seed=0)
    for step in range(200):  # noqa: B007 (reported below)
        _, _, terminated, truncated, info = env.step(np.array([10.0]))
        if terminated:
            break
    assert terminated and info["end_stop"] and not truncated, f"no end stop after {step + 1} steps"


def test_rover_twist_is_turned_into_wheel_speeds():
    left, right = twist_to_wheels(0.5, 0.0)
    assert left == right == pytest.approx(10.0)
    left, right = twist_to_wheels(0.0, 1.0)
    assert left == pytest.approx(-right) and right > 0  # counter-clockwise: right wheel forward


def test_rover_forward_speed_and_yaw_rate_follow_the_twist():
    env = RoverLaneEnv(track_seed=0)
    env.reset(seed=0)
    spec = env.interface_spec
    i_v = [e.name for e in spec.observations].index("forward_speed")
    i_w = [e.name for e in spec.observations].index("yaw_rate")
    for _ in range(20):
        obs, *_ = env.step(np.array([0.6, 0.0]))
    assert obs[i_v] == pytest.approx(0.6, abs=0.05)
    assert abs(obs[i_w]) < 0.05
    for _ in range(10):
        obs, *_ = env.step(np.array([0.3, 1.0]))
    assert obs[i_w] == pytest.approx(1.0, abs=0.15)


def test_rover_progress_is_rewarded_and_a_wall_hit_ends_the_episode():
    env = RoverLaneEnv(track_seed=0)
    env.reset(seed=0)
    _, r, *_ = env.step(np.array([1.0, 0.0]))
    rewards = []
    for _ in range(10):
        _, r, terminated, _, info = env.step(np.array([1.0, 0.0]))
        rewards.append(r)
    assert np.mean(rewards) > 0.2 and info["progress_m"] > 0.3
    for step in range(200):  # noqa: B007 (reported below)  # full left turn: into the left wall
        _, r, terminated, _, info = env.step(np.array([0.5, 2.0]))
        if terminated:
            break
    assert terminated and info["collision"], f"no collision after {step + 1} steps: {info}"
    assert r < -4.0


def test_rover_track_seed_picks_the_track_and_is_reproducible():
    env = RoverLaneEnv()
    _, info_a = env.reset(seed=5)
    _, info_b = env.reset(seed=5)
    assert info_a["track_seed"] == info_b["track_seed"]
    seeds = {env.reset(seed=s)[1]["track_seed"] for s in range(8)}
    assert len(seeds) > 2
    _, info = env.reset(seed=0, options={"track_seed": 11})
    assert info["track_seed"] == 11 and env.track.seed == 11


@pytest.mark.parametrize("env_cls", [CartPoleSwingUpEnv, RoverLaneEnv])
def test_render_rgb_array_offscreen(env_cls):
    env = env_cls(render_mode="rgb_array", width=96, height=64)
    env.reset(seed=0)
    try:
        frame = env.render()
    except Exception as exc:  # noqa: BLE001 - no GL backend on this machine
        pytest.skip(
            f"no offscreen OpenGL backend (MUJOCO_GL={__import__('os').environ.get('MUJOCO_GL')}): {exc}"
        )
    assert frame.shape == (64, 96, 3) and frame.dtype == np.uint8
    assert frame.std() > 1.0, "the frame should show the scene, not a blank image"
    env.close()
