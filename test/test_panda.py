"""The Franka Emika Panda (envs/panda.py): its interface spec against the model and the real robot
(names, kinematics, limits), the PD servos with gravity compensation, the reaching task, goals from
the operator. Needs the `panda` extra (gymnasium-robotics)."""

import itertools
import math
import warnings

import mujoco
import numpy as np
import pytest

pytest.importorskip("gymnasium_robotics")

from policy_factory import make_policy

from liquid_control.core.adapters import MessageRejected, message_from_fields
from liquid_control.core.policy import Policy
from liquid_control.core.safety import ActionSpace, spec_safe_action
from liquid_control.core.spec import InterfaceSpec
from liquid_control.envs.panda import (
    GOAL_POSE,
    JOINT_HIGH,
    JOINT_LOW,
    JOINTS,
    READY,
    SUCCESS_RADIUS_M,
    WORKSPACE,
    PandaReachEnv,
    end_effector_positions,
    spec,
)
from liquid_control.robots import get_robot

# franka_ros2 / franka_description joint names (JointState order of the robot's broadcaster).
FRANKA_JOINTS = [f"panda_joint{i}" for i in range(1, 8)]
# Franka's modified Denavit-Hartenberg parameters (a_{i-1} m, d_i m, alpha_{i-1} rad), the flange
# 0.107 m past joint 7 and the hand's TCP 0.1034 m past the flange (Franka's "control parameters").
FRANKA_DH = [
    (0.0, 0.333, 0.0),
    (0.0, 0.0, -math.pi / 2),
    (0.0, 0.316, math.pi / 2),
    (0.0825, 0.0, math.pi / 2),
    (-0.0825, 0.384, -math.pi / 2),
    (0.0, 0.0, math.pi / 2),
    (0.088, 0.0, math.pi / 2),
]
FLANGE_TO_TCP_M = 0.107 + 0.1034
SPEC = spec()
STEPS_PER_S = int(SPEC.control_rate_hz)
OBS_NAMES = [o.name for o in SPEC.observations]
Q_OBS = [OBS_NAMES.index(f"{j.removeprefix('panda_')}_pos") for j in JOINTS]
GOAL_OBS = [OBS_NAMES.index(f"goal_{a}") for a in "xyz"]


def franka_tcp(q: np.ndarray) -> np.ndarray:
    """The TCP position (m, base frame) of Franka's kinematics at joint angles q (rad)."""

    def transform(a: float, d: float, alpha: float, theta: float) -> np.ndarray:
        ca, sa, ct, st = math.cos(alpha), math.sin(alpha), math.cos(theta), math.sin(theta)
        return np.array(
            [
                [ct, -st, 0.0, a],
                [st * ca, ct * ca, -sa, -d * sa],
                [st * sa, ct * sa, ca, d * ca],
                [0.0, 0.0, 0.0, 1.0],
            ]
        )

    t = np.eye(4)
    for (a, d, alpha), theta in zip(FRANKA_DH, q, strict=True):
        t = t @ transform(a, d, alpha, theta)
    return (t @ [0.0, 0.0, FLANGE_TO_TCP_M, 1.0])[:3]


@pytest.fixture(scope="module")
def env():
    e = PandaReachEnv()
    yield e
    e.close()


def qpos_adr(env) -> np.ndarray:
    return np.array([env.model.joint(j).qposadr[0] for j in JOINTS])


def ready_action() -> np.ndarray:
    """The command of network output 0."""
    return SPEC.to_physical(np.zeros(SPEC.action_dim))


def obs_index(name: str) -> int:
    return OBS_NAMES.index(name)


def reaching_controller(env, obs: np.ndarray) -> np.ndarray:
    """Damped least squares on the end effector's Jacobian, the rest of the motion pulled towards
    the ready pose, 0.05 rad per step at most: joint position targets from the observation."""
    m, d = env.model, env.data
    q, goal = obs[Q_OBS], obs[GOAL_OBS]
    jac = np.zeros((3, m.nv))
    mujoco.mj_jacSite(m, d, jac, None, m.site("end_effector").id)
    jac = jac[:, [m.joint(j).dofadr[0] for j in JOINTS]]
    inverse = jac.T @ np.linalg.inv(jac @ jac.T + 1e-4 * np.eye(3))
    dq = inverse @ (goal - env.end_effector()) + 0.5 * (np.eye(7) - inverse @ jac) @ (READY - q)
    return np.clip(q + np.clip(dq, -0.05, 0.05), SPEC.action_low, SPEC.action_high)


def test_env_passes_gymnasium_check_env():
    from gymnasium.utils.env_checker import check_env

    e = PandaReachEnv()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # (the unbounded observation space)
            check_env(e, skip_render_check=True)
    finally:
        e.close()


def test_same_seed_same_trajectory(env):
    rng = np.random.default_rng(0)
    actions = [SPEC.to_physical(rng.normal(0, 0.3, 7)) for _ in range(30)]

    def rollout(seed):
        obs, _ = env.reset(seed=seed)
        return np.array([obs] + [env.step(a)[0] for a in actions])

    np.testing.assert_array_equal(rollout(11), rollout(11))
    assert not np.array_equal(rollout(11), rollout(12))


def test_joint_names_and_order_are_frankas_in_the_model_and_the_spec(env):
    s = spec()
    m = env.model
    assert [m.joint(j).name for j in range(m.njnt)] == FRANKA_JOINTS  # the fingers are fixed
    assert list(JOINTS) == FRANKA_JOINTS
    positions = [o.key for o in s.observations if o.field == "position"]
    velocities = [o.key for o in s.observations if o.field == "velocity"]
    assert positions == velocities == FRANKA_JOINTS
    feedback = {o.name: o.key for o in s.observations}
    assert [feedback[a.feedback] for a in s.actions] == FRANKA_JOINTS
    assert [a.index for a in s.actions] == list(range(7))
    assert [m.actuator(a).name for a in range(m.nu)] == FRANKA_JOINTS


def test_the_model_has_frankas_kinematics_and_zero_angles(env):
    """The model's end effector is Franka's TCP at Franka's joint angles (its joints 6 and 7 are
    turned to Franka's zero in memory), within 1 mm (the model rounds pi/2 to 1.57)."""
    rng = np.random.default_rng(0)
    q = np.vstack([READY, np.zeros(7), rng.uniform(JOINT_LOW, JOINT_HIGH, (20, 7))])
    model = end_effector_positions(q, env.model)
    franka = np.array([franka_tcp(row) for row in q])
    assert np.abs(model - franka).max() < 1e-3
    np.testing.assert_allclose(model[0], [0.307, 0.0, 0.487], atol=1e-3)  # the ready pose


def test_joint_ranges_are_frankas_and_targets_stay_inside_them(env):
    s, m = spec(), env.model
    for a, joint, lo, hi in zip(s.actions, JOINTS, JOINT_LOW, JOINT_HIGH, strict=True):
        np.testing.assert_array_equal(m.jnt_range[m.joint(joint).id], [lo, hi])
        assert lo + 0.05 <= a.low < a.offset < a.high <= hi - 0.05, a.name
    np.testing.assert_array_equal(JOINT_LOW[[3, 5]], [-3.0718, -0.0175])
    np.testing.assert_array_equal(JOINT_HIGH[[3, 5]], [-0.0698, 3.7525])


def test_torque_limits_and_gains_are_the_specs(env):
    s, m = spec(), env.model
    assert s.extra["torque_limits_nm"] == [87.0] * 4 + [12.0] * 3
    for i, joint in enumerate(JOINTS):
        a = m.actuator(joint).id
        tau, kp, kd = (
            s.extra[k][i] for k in ("torque_limits_nm", "kp_nm_per_rad", "kd_nm_s_per_rad")
        )
        np.testing.assert_array_equal(m.actuator_forcerange[a], [-tau, tau])
        assert m.actuator_gainprm[a, 0] == kp
        np.testing.assert_array_equal(m.actuator_biasprm[a, 1:3], [-kp, -kd])


def test_network_output_zero_is_the_ready_pose_and_the_safe_action():
    s = spec()
    np.testing.assert_allclose(ready_action(), READY)
    np.testing.assert_allclose(spec_safe_action(s), READY)


def test_spec_validates_and_round_trips_through_a_policy_file(tmp_path):
    s = spec()
    assert InterfaceSpec.from_dict(s.to_dict()) == s
    policy = make_policy(s, units=24)
    policy.save(tmp_path / "panda.lcp")
    loaded = Policy.load(tmp_path / "panda.lcp")
    assert loaded.spec.to_dict() == s.to_dict()
    ActionSpace.from_spec(loaded.spec)  # the safety core accepts its safe action and domains
    raw = np.array([o.mean for o in s.observations])
    action = loaded.step(raw, dt=s.control_period_s)
    assert np.all((action >= s.action_low) & (action <= s.action_high))


def test_holding_the_ready_pose_the_arm_stays_put(env):
    """Gravity compensated: no drift of the end effector over 2 s (the servo alone would sag)."""
    env.reset(seed=0)
    for _ in range(STEPS_PER_S // 2):  # from the reset noise to the ready pose
        env.step(ready_action())
    start = env.end_effector()
    for _ in range(2 * STEPS_PER_S):
        _, _, terminated, _, info = env.step(ready_action())
        assert not terminated and not info["joint_limit_violation"]
    assert np.linalg.norm(env.end_effector() - start) < 0.01
    np.testing.assert_allclose(env.data.qpos[qpos_adr(env)], READY, atol=1e-3)
    assert info["jerk_rad_s3"] < 1.0


def test_the_servo_applies_the_specs_pd_law_at_every_physics_step(env):
    env.reset(seed=1)
    s = spec()
    kp, kd = np.array(s.extra["kp_nm_per_rad"]), np.array(s.extra["kd_nm_s_per_rad"])
    tau = np.array(s.extra["torque_limits_nm"])
    target = ready_action()
    target[1] += 0.3
    env.apply_command(target)
    d, m = env.data, env.model
    qvel = [int(m.joint(j).dofadr[0]) for j in JOINTS]
    acts = [m.actuator(j).id for j in JOINTS]
    for _ in range(5):
        env.advance(1)
        env.sync()
        q, dq = d.qpos[qpos_adr(env)], d.qvel[qvel]
        expected = np.clip(kp * (target - q) - kd * dq, -tau, tau)
        np.testing.assert_allclose(d.actuator_force[acts], expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("joint", range(7))
def test_a_position_target_moves_the_joint_there(env, joint):
    env.reset(seed=2)
    target = ready_action()
    target[joint] += 0.2
    for _ in range(STEPS_PER_S):
        _, _, _, _, info = env.step(target)
    assert not info["joint_limit_violation"]
    assert env.data.qpos[qpos_adr(env)[joint]] == pytest.approx(target[joint], abs=0.01)


def test_a_jacobian_controller_reaches_every_workspace_corner_within_2cm_in_3s(env):
    """The task is solvable with the spec's servos and action limits: a goal at each corner of
    the workspace, and a few drawn ones, reached within 3 s (300 steps) and held."""
    goals = [{"goal": list(c)} for c in itertools.product(*WORKSPACE.values())]
    for options in goals + [None] * 12:
        obs, info = env.reset(seed=3, options=options)
        for _ in range(3 * STEPS_PER_S):
            obs, reward, _, _, info = env.step(reaching_controller(env, obs))
            assert not info["joint_limit_violation"], info
        assert info["success"] and info["reach_error_m"] < SUCCESS_RADIUS_M, info
        assert reward > 0  # the success bonus outweighs what is left


def test_goals_are_drawn_in_the_workspace_from_the_seed(env):
    goals = np.array([env.reset(seed=k)[1]["goal"] for k in range(40)])
    for i, (lo, hi) in enumerate(WORKSPACE.values()):
        assert np.all((goals[:, i] >= lo) & (goals[:, i] <= hi))
        assert goals[:, i].max() - goals[:, i].min() > 0.5 * (hi - lo)
    obs, info = env.reset(seed=5)
    assert env.reset(seed=5)[1]["goal"] == info["goal"]
    np.testing.assert_array_equal(obs[GOAL_OBS], info["goal"])
    np.testing.assert_array_equal(env.model.site_pos[env.model.site("goal").id], info["goal"])


def test_a_goal_option_fixes_the_goal_for_the_episode(env):
    obs, info = env.reset(seed=4, options={"goal": [0.5, -0.1, 0.3]})
    assert info["goal"] == [0.5, -0.1, 0.3]
    for _ in range(10):
        obs, *_ = env.step(ready_action())
    assert obs[obs_index("goal_y")] == -0.1
    assert env.reset(seed=4)[1]["goal"] != [0.5, -0.1, 0.3]
    with pytest.raises(ValueError, match="goal"):
        env.reset(options={"goal": [0.5, math.nan, 0.3]})


def test_the_goal_is_an_operator_input_that_holds_across_episodes():
    assert get_robot("panda").operator_inputs == (GOAL_POSE,)
    assert spec().observation_topics()[GOAL_POSE] == "geometry_msgs/PoseStamped"
    env = PandaReachEnv()
    try:
        env.reset(seed=5)
        pose = {
            "header": {"frame_id": "panda_link0"},
            "pose": {
                "position": {"x": 0.45, "y": 0.2, "z": 0.25},
                "orientation": {"x": math.nan, "y": 0.0, "z": 0.0, "w": 1.0},  # not read
            },
        }
        env.operator_input(GOAL_POSE, message_from_fields(pose))
        np.testing.assert_array_equal(env.goal, [0.45, 0.2, 0.25])
        _, info = env.reset(seed=6)
        assert info["goal"] == [0.45, 0.2, 0.25]
        assert env.readings()[GOAL_POSE]["pose"]["position"]["y"] == 0.2
        pose["pose"]["position"]["z"] = math.inf
        with pytest.raises(MessageRejected, match="non_finite"):
            env.operator_input(GOAL_POSE, message_from_fields(pose))
        with pytest.raises(ValueError, match="no operator input"):
            env.operator_input("/joint_states", message_from_fields(pose))
    finally:
        env.close()


def test_a_goal_outside_the_workspace_is_out_of_the_policys_domain():
    for a, (lo, hi) in WORKSPACE.items():
        e = spec().observations[obs_index(f"goal_{a}")]
        assert e.domain_low == pytest.approx(lo - 0.05) and e.domain_high == pytest.approx(
            hi + 0.05
        )


def test_a_joint_past_its_limit_is_a_violation_and_costs_reward(env):
    env.reset(seed=7, options={"goal": [0.4, 0.0, 0.4]})
    _, near_reward, _, _, info = env.step(ready_action())
    assert not info["joint_limit_violation"]
    env.data.qpos[qpos_adr(env)[3]] = JOINT_HIGH[3] + 0.05  # joint 4 past its upper limit
    env.data.qvel[:] = 0.0
    _, reward, terminated, _, info = env.step(ready_action())
    assert info["joint_limit_violation"] and not terminated
    assert reward < near_reward
    assert info["jerk_rad_s3"] > 100.0  # the servo pulls the joint back hard


def test_the_registry_entry_names_the_extra_and_the_figures():
    robot = get_robot("panda")
    robot.check_available()
    assert robot.requires == ("gymnasium_robotics", "panda")
    assert spec().extra["env_id"] == robot.env_id and robot.max_episode_steps == 300
    assert {f.info_key for f in robot.episode_figures} >= {
        "reach_error_m",
        "success",
        "joint_limit_violation",
        "jerk_rad_s3",
    }


def test_the_demo_panel_draws_the_distance_to_the_goal(env):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from liquid_control.envs.panda import demo_panel

    obs, _ = env.reset(seed=8)
    rows = [obs]
    for _ in range(2 * STEPS_PER_S):
        obs, *_ = env.step(reaching_controller(env, obs))
        rows.append(obs)
    replay = {"t": np.arange(len(rows)) / STEPS_PER_S, "obs": np.array(rows)}
    fig, ax = plt.subplots()
    try:
        demo_panel(ax, make_policy(spec(), units=24), replay, [], {"return": 1.0}, {})
        distance_cm = ax.lines[0].get_ydata()
        assert distance_cm[0] > 5.0 and distance_cm[-1] < 100.0 * SUCCESS_RADIUS_M
        assert distance_cm[-1] == pytest.approx(
            100.0 * np.linalg.norm(env.end_effector() - env.goal)
        )
    finally:
        plt.close(fig)


def test_without_the_package_the_error_names_the_extra(monkeypatch):
    from liquid_control.envs import panda

    monkeypatch.setattr(panda, "MODEL_PACKAGE", "no_such_package_for_panda")
    with pytest.raises(ImportError, match=r"pip install 'liquid_control\[panda\]'"):
        panda.packaged_model_dir()


PANDA_TINY = {
    "name": "panda_tiny",
    "seed": 0,
    "torch_threads": 1,
    "env": {
        "id": "LiquidControl/PandaReach-v0",
        "max_episode_steps": 100,
        "wrappers": {
            "domain_randomization": {"mass": [0.9, 1.1], "motor_gain": [0.9, 1.1]},
            "action_latency": {"min_steps": 0, "max_steps": 1},
            "observation_noise": {"scale": 1.0},
        },
    },
    "teacher": {
        "algo": "PPO", "total_timesteps": 2048, "n_envs": 2, "net_arch": [32, 32],
        "hyperparams": {"n_steps": 256, "batch_size": 256, "n_epochs": 2},
        "eval_freq": 1024, "eval_episodes": 1, "checkpoint_freq": 1024,
    },
    "student": {"units": 24},
    "distill": {
        "iterations": 2, "steps_per_iteration": 400, "n_envs": 2, "window": 12, "burn_in": 3,
        "epochs": 1, "batch_size": 16, "eval_episodes": 1,
    },
    "evaluate": {"episodes": 1, "perturbations": {"mass_scale": 1.1}},
}  # fmt: skip


def test_the_training_pipeline_runs_end_to_end_on_the_panda_on_a_tiny_budget(tmp_path) -> None:
    """Teacher, DAgger distillation, evaluation (with smoothness) and export of a Panda policy
    whose spec is the robot's (about 15 s; the real budget is config/train/panda.yaml)."""
    import json

    from liquid_control.train.config import config_from_dict
    from liquid_control.train.pipeline import run_pipeline

    run = tmp_path / "run"
    run_pipeline(config_from_dict(PANDA_TINY), run, progress=False)
    rows = json.loads((run / "evaluate" / "results.json").read_text())
    assert {r["case"] for r in rows} == {"nominal", "mass_scale=1.1"}
    assert all(0.0 <= r["mean_abs_delta"] <= 1.0 for r in rows)
    exported = sorted((run / "export").glob("*.lcp"))
    policy = Policy.load(exported[0])
    assert policy.spec.check_compatible(spec()) is None and policy.spec.action_dim == 7
