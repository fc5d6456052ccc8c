"""Sim-to-real wrappers: each one's effect, measured against the bare env on the same seed."""

from __future__ import annotations

import os

import gymnasium as gym
import numpy as np
import pytest

from liquid_control.envs import env_ids
from liquid_control.envs.wrappers import (
    ActionLatency,
    ControlJitter,
    DomainRandomization,
    ObservationNoise,
    SensorDropout,
    WrapperConfigError,
    load_wrappers_config,
    make_env,
)

CARTPOLE, ROVER = env_ids()["cartpole"], env_ids()["rover"]
CONFIG = os.path.join(os.path.dirname(__file__), "..", "config")


def _actions(env: gym.Env, n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(env.action_space.low, env.action_space.high, (n, env.action_space.shape[0]))


def _rollout(env: gym.Env, actions: np.ndarray, seed: int = 0):
    obs, info = env.reset(seed=seed)
    out, infos = [obs], [info]
    for a in actions:
        obs, _, _, _, info = env.step(a)
        out.append(obs)
        infos.append(info)
    return np.array(out), infos


def test_observation_noise_has_the_spec_std_per_channel():
    bare = gym.make(CARTPOLE)
    noisy = ObservationNoise(gym.make(CARTPOLE), scale=2.0)
    actions = _actions(bare, 400)
    clean, _ = _rollout(bare, actions)
    dirty, _ = _rollout(noisy, actions)
    measured = (dirty - clean).std(axis=0)
    expected = 2.0 * bare.unwrapped.interface_spec.obs_noise_std
    np.testing.assert_allclose(measured, expected, rtol=0.2)


def test_action_latency_applies_the_command_of_k_steps_ago():
    bare = gym.make(CARTPOLE)
    delayed = ActionLatency(gym.make(CARTPOLE), min_steps=2, max_steps=2)
    actions = _actions(bare, 50)
    shifted = np.concatenate([np.zeros((2, 1)), actions[:-2]])
    expected, _ = _rollout(bare, shifted)
    got, infos = _rollout(delayed, actions)
    np.testing.assert_array_equal(got, expected)
    assert infos[0]["latency_steps"] == 2


def test_action_latency_is_drawn_per_episode_within_the_range():
    env = ActionLatency(gym.make(CARTPOLE), min_steps=0, max_steps=3)
    seen = {env.reset(seed=s)[1]["latency_steps"] for s in range(40)}
    assert seen == {0, 1, 2, 3}


def test_sensor_dropout_per_channel_freezes_single_elements():
    env = SensorDropout(
        gym.make(CARTPOLE), probability=0.1, min_steps=2, max_steps=3, per="channel"
    )
    obs, _ = env.reset(seed=0)
    names = [e.name for e in env.unwrapped.interface_spec.observations]
    prev, singles = obs, 0
    for a in _actions(env, 100):
        obs, _, terminated, _, info = env.step(a)
        for name in info["dropped"]:
            assert obs[names.index(name)] == prev[names.index(name)]
        singles += 0 < len(info["dropped"]) < len(names)
        prev = obs
        if terminated:
            break
    assert singles > 10


def test_sensor_dropout_freezes_a_topics_channels():
    env = SensorDropout(gym.make(ROVER, track_seed=0), probability=0.2, min_steps=2, max_steps=4)
    spec = env.unwrapped.interface_spec
    scan_slots = [i for i, e in enumerate(spec.observations) if e.topic == "/scan"]
    obs, _ = env.reset(seed=0)
    prev, dropped_steps, frozen_ok = obs, 0, True
    for a in np.tile([[0.5, 0.2]], (60, 1)):
        obs, _, terminated, _, info = env.step(a)
        if "/scan" in info["dropped"]:
            dropped_steps += 1
            frozen_ok &= bool(np.array_equal(obs[scan_slots], prev[scan_slots]))
        prev = obs
        if terminated:
            break
    assert dropped_steps > 5 and frozen_ok


def test_control_jitter_varies_the_period_and_reports_it():
    env = ControlJitter(gym.make(CARTPOLE), std_fraction=0.1, max_fraction=0.25)
    env.reset(seed=0)
    nominal = env.unwrapped.interface_spec.control_period_s
    dts = []
    for a in _actions(env, 200):
        *_, info = env.step(a)
        dts.append(info["dt"])
    dts = np.array(dts)
    assert dts.std() == pytest.approx(0.1 * nominal, rel=0.3)
    assert dts.mean() == pytest.approx(nominal, rel=0.03)
    assert dts.min() >= 0.75 * nominal - 1e-9 and dts.max() <= 1.25 * nominal + 1e-9
    assert env.unwrapped.data.time == pytest.approx(dts.sum(), abs=1e-9), "dt is the time simulated"


def test_domain_randomization_changes_physics_within_ranges_and_adds_offsets():
    env = DomainRandomization(
        gym.make(CARTPOLE),
        mass=[0.5, 0.6],
        damping=[2.0, 3.0],
        motor_gain=[0.5, 0.6],
        sensor_offset={"cart_position": 0.05, "pole_angular_velocity": [0.1, 0.2]},
    )
    base = env.unwrapped
    _, info = env.reset(seed=0)
    ratio = base.model.body_mass[1:] / base._nominal["body_mass"][1:]
    assert ((ratio >= 0.5) & (ratio <= 0.6)).all()
    assert base.model.actuator_gainprm[0, 0] == pytest.approx(
        info["randomization"]["motor_gain"][0]
    )
    assert 0.5 <= info["randomization"]["motor_gain"][0] <= 0.6
    offset = info["randomization"]["sensor_offset"]
    assert offset[0] != 0 and 0.1 <= offset[4] <= 0.2 and (offset[1:4] == 0).all()
    # The same actions give a different trajectory than the nominal robot, and the same seed
    # gives the same randomised robot.
    actions = _actions(env, 30)
    a, _ = _rollout(env, actions)
    b, _ = _rollout(env, actions)
    c, _ = _rollout(gym.make(CARTPOLE), actions)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a[1:, 1] - c[1:, 1]).max() > 0.05  # cart velocity: half the mass and gain
    np.testing.assert_allclose(a[0, 0] - c[0, 0], offset[0])


def test_domain_randomization_with_empty_config_restores_the_nominal_model():
    env = DomainRandomization(gym.make(ROVER, track_seed=0))
    env.reset(seed=0)
    base = env.unwrapped
    np.testing.assert_array_equal(base.model.body_mass, base._nominal["body_mass"])


@pytest.mark.parametrize(
    ("env_id", "config"), [(CARTPOLE, "wrappers_cartpole.yaml"), (ROVER, "wrappers_rover.yaml")]
)
def test_example_configs_build_working_envs(env_id, config):
    env = make_env(env_id, os.path.join(CONFIG, config))
    obs, info = env.reset(seed=0)
    assert "randomization" in info and "latency_steps" in info
    for a in _actions(env, 20):
        obs, r, terminated, truncated, info = env.step(a)
        assert np.isfinite(obs).all() and np.isfinite(r) and info["dt"] > 0
        if terminated or truncated:
            break


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"observation_nois": {}}, "unknown sections ['observation_nois']"),
        ({"action_latency": {"min_steps": 3, "max_steps": 1}}, "max_steps (1) < min_steps (3)"),
        ({"sensor_dropout": {"probability": 1.5}}, "sensor_dropout.probability"),
        ({"domain_randomization": {"mass": [1.2, 0.8]}}, "domain_randomization.mass"),
        (
            {"domain_randomization": {"sensor_offset": {"cart_pos": 0.1}}},
            "unknown channel 'cart_pos'",
        ),
        ({"control_jitter": {"std": 0.1}}, "control_jitter"),
        ({"sensor_dropout": {"per": "beam"}}, "sensor_dropout.per"),
        (
            {"domain_randomization": {"sensor_offset": {"cart_position": [0.2, 0.1]}}},
            "sensor_offset.cart_position",
        ),
        ({"observation_noise": 3}, "observation_noise: expected a mapping"),
    ],
)
def test_bad_config_names_the_field(config, message):
    with pytest.raises(WrapperConfigError) as exc:
        make_env(CARTPOLE, config)
    assert message in str(exc.value)


def test_missing_config_file_is_reported(tmp_path):
    with pytest.raises(FileNotFoundError, match="no file at"):
        load_wrappers_config(str(tmp_path / "missing.yaml"))
