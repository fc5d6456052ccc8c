"""MJCF models: they load and are physically sane (energy, contact, limits); the track generator."""

from __future__ import annotations

import math
import os

import mujoco
import numpy as np
import pytest

from liquid_control.envs.base import sim_dir
from liquid_control.envs.cartpole import MAX_FORCE_N, RAIL_LIMIT_M, CartPoleSwingUpEnv
from liquid_control.envs.rover import N_BEAMS, RoverLaneEnv
from liquid_control.envs.track import TrackParams, build_rover_model, generate_track


@pytest.mark.parametrize("name", ["cartpole.xml", "rover.xml"])
def test_mjcf_loads_with_positive_masses(name):
    model = mujoco.MjModel.from_xml_path(os.path.join(sim_dir(), name))
    assert model.nbody > 1 and model.nu > 0
    assert (model.body_mass[1:] >= 0).all() and model.body_mass.sum() > 0.5


def test_cartpole_conserves_energy_without_friction():
    env = CartPoleSwingUpEnv(start="up")
    env.reset(seed=0)
    m, d = env.model, env.data
    m.dof_damping[:] = 0.0
    m.dof_frictionloss[:] = 0.0
    m.opt.integrator = mujoco.mjtIntegrator.mjINT_RK4
    d.qpos[env._qpos[1]] = 1.0  # released from 57 degrees off upright
    e0 = env.energy()
    for _ in range(100):  # 2 s
        env.step(np.zeros(1))
    assert abs(env.energy() - e0) < 0.01 * abs(e0) + 1e-3


def test_cartpole_friction_dissipates_energy():
    env = CartPoleSwingUpEnv()
    env.reset(seed=0)
    env.data.qpos[env._qpos[1]] = math.pi / 2  # horizontal pole
    energies = [env.energy()]
    for _ in range(150):
        env.step(np.zeros(1))
        energies.append(env.energy())
    assert energies[-1] < energies[0] - 0.05
    assert np.max(np.diff(energies)) < 1e-3, "energy must never grow without input"


def test_cartpole_hanging_is_stable_and_upright_falls():
    down = CartPoleSwingUpEnv()
    obs, _ = down.reset(seed=0)
    for _ in range(100):
        obs, *_ = down.step(np.zeros(1))
    assert obs[3] < -0.99
    up = CartPoleSwingUpEnv(start="up")
    up.reset(seed=0)
    for _ in range(150):
        obs, *_ = up.step(np.zeros(1))
    assert obs[3] < 0.5, "an unbalanced upright pole must fall"


def test_cartpole_force_is_clamped_and_the_rail_limits_travel():
    env = CartPoleSwingUpEnv()
    env.reset(seed=0)
    applied = env.apply_command(np.array([100.0]))
    assert applied[0] == MAX_FORCE_N
    for _ in range(150):
        env.apply_command(np.array([100.0]))
        env.advance(4)
        assert env.data.qpos[env._qpos[0]] < RAIL_LIMIT_M + 0.02
    effort = env.readings()["/joint_states"]["effort"][0]
    assert effort == pytest.approx(MAX_FORCE_N)


def test_cartpole_acceleration_matches_newton():
    """From rest, hanging: the pole swings back as the pivot accelerates, so the cart feels the
    pole's effective mass m - (m l)^2 / I_pivot (rod: m 0.2 kg, l 0.3 m, I_pivot 0.024 kg m^2)."""
    env = CartPoleSwingUpEnv()
    env.reset(seed=0)
    env.data.qpos[:] = [0.0, math.pi]
    env.data.qvel[:] = 0.0
    env.apply_command(np.array([MAX_FORCE_N]))
    env.advance(1)
    m = env.model
    pole_effective = 0.2 - (0.2 * 0.3) ** 2 / (0.006 + 0.2 * 0.3**2)
    expected = (MAX_FORCE_N - m.dof_frictionloss[0]) / (1.0 + pole_effective + m.dof_armature[0])
    a = env.data.qvel[env._qvel[0]] / m.opt.timestep
    assert a == pytest.approx(expected, rel=0.03)


def test_rover_rests_on_its_wheels_and_caster():
    env = RoverLaneEnv(track_seed=0)
    env.reset(seed=0)
    for _ in range(20):
        env.step(np.zeros(2))
    z = env.data.qpos[env._free_q + 2]
    assert z == pytest.approx(0.05, abs=0.005)
    touching = {
        mujoco.mj_id2name(env.model, mujoco.mjtObj.mjOBJ_GEOM, g)
        for g in env.data.contact.geom[: env.data.ncon].ravel()
    }
    assert {"floor", "left_wheel", "right_wheel", "caster"} <= touching
    assert not env.in_collision()


def test_rover_laser_measures_the_distance_to_the_walls():
    env = RoverLaneEnv(track_seed=0)
    env.reset(seed=0)
    env.data.qpos[env._free_q : env._free_q + 7] = [
        1.0,
        0.1,
        0.05,
        1,
        0,
        0,
        0,
    ]  # on the start straight
    env._forward_time = None
    scan = env.readings()["/scan"]
    half = env.track.lane_width_m / 2
    wall_face = half - 0.025  # walls are 5 cm thick
    assert scan["ranges"][0] == pytest.approx(wall_face + 0.1, abs=0.01)  # rightmost beam (-90 deg)
    assert scan["ranges"][-1] == pytest.approx(wall_face - 0.1, abs=0.01)  # leftmost beam (+90 deg)
    assert len(scan["ranges"]) == N_BEAMS
    assert scan["angle_min"] == pytest.approx(-math.pi / 2) and scan["angle_max"] == pytest.approx(
        math.pi / 2
    )


def test_track_is_deterministic_per_seed_and_never_crosses_itself():
    params = TrackParams()
    a, b, c = generate_track(3, params), generate_track(3, params), generate_track(4, params)
    np.testing.assert_array_equal(a.points, b.points)
    assert a.points.shape != c.points.shape or np.abs(a.points - c.points).max() > 0.1
    for seed in range(10):
        t = generate_track(seed, params)
        assert t.length_m >= params.length_m
        assert np.abs(t.headings).max() <= params.max_heading_rad + 1e-9
        # Points further apart along the lane than a lane width must stay a lane width apart.
        p = t.points[::10]
        dist = np.linalg.norm(p[:, None] - p[None], axis=-1)
        gap = np.abs(np.arange(len(p))[:, None] - np.arange(len(p))[None]) * 10 * 0.05
        assert dist[gap > 3 * params.lane_width_m].min() > params.lane_width_m


def test_track_models_are_compiled_once_per_seed():
    m1 = build_rover_model(7, N_BEAMS, math.pi)
    m2 = build_rover_model(7, N_BEAMS, math.pi)
    assert m1 is m2
    env_a, env_b = RoverLaneEnv(track_seed=7), RoverLaneEnv(track_seed=7)
    env_a.reset(seed=0)
    env_b.reset(seed=0)
    assert env_a.model is not env_b.model, "each env edits its own copy (domain randomisation)"


def _lqr_gain(env: CartPoleSwingUpEnv) -> np.ndarray:
    """Discrete LQR gain at the upright equilibrium, from MuJoCo's finite-difference linearisation
    over one control period (4 timesteps)."""
    m, d = env.model, env.data
    d.qpos[:] = 0.0
    d.qvel[:] = 0.0
    d.ctrl[:] = 0.0
    mujoco.mj_forward(m, d)
    a, b = np.zeros((4, 4)), np.zeros((4, 1))
    m.opt.disableflags |= int(mujoco.mjtDisableBit.mjDSBL_FRICTIONLOSS)  # non-smooth at v = 0
    mujoco.mjd_transitionFD(m, d, 1e-6, True, a, b, None, None)
    m.opt.disableflags &= ~int(mujoco.mjtDisableBit.mjDSBL_FRICTIONLOSS)
    a4 = np.linalg.matrix_power(a, 4)
    b4 = sum(np.linalg.matrix_power(a, i) @ b for i in range(4))
    q, r = np.diag([5.0, 50.0, 1.0, 1.0]), np.array([[0.05]])
    p = q.copy()
    for _ in range(3000):  # Riccati iteration
        k = np.linalg.solve(r + b4.T @ p @ b4, b4.T @ p @ a4)
        p = q + a4.T @ p @ (a4 - b4 @ k)
    return k[0]


def test_cartpole_swing_up_is_feasible_within_the_motor_and_rail_limits():
    """A classical controller (bang-bang energy pumping, then LQR) swings the pole up and holds
    it with the +-10 N drive, without reaching the end stops: the task is physically solvable."""
    gain = _lqr_gain(CartPoleSwingUpEnv(start="up"))
    env = CartPoleSwingUpEnv()
    obs, _ = env.reset(seed=0)
    upright, total = 0, 0.0
    for _ in range(500):
        x, v, s, c, w = obs
        energy = 0.5 * 0.024 * w**2 + 0.2 * 9.81 * 0.3 * (c - 1.0)  # 0 when upright at rest
        if c > 0.8 and abs(w) < 8.0:
            u = -gain @ np.array([x, math.atan2(s, c), v, w])
        elif energy < -0.01:
            u = -MAX_FORCE_N * np.sign(w * c) - 3.0 * x
        else:
            u = -3.0 * x - 2.0 * v
        obs, reward, terminated, _, _ = env.step(np.array([np.clip(u, -MAX_FORCE_N, MAX_FORCE_N)]))
        total += reward
        upright += obs[3] > 0.95
        assert not terminated, "the swing-up must not need the end stops"
    assert upright > 350 and total > 350


@pytest.mark.parametrize("track_seed", [1, 6])
def test_rover_lane_is_keepable_from_the_laser_sectors(track_seed):
    """A reactive controller on the policy's own observations (centre between the side sectors)
    keeps the lane without a collision: the task is solvable from the spec's 12 inputs."""
    env = RoverLaneEnv(track_seed=track_seed)
    obs, _ = env.reset(seed=0)
    for _ in range(400):
        right, left, front = obs[0:3].min(), obs[7:10].min(), obs[4:6].min()
        yaw_rate = np.clip(2.5 * (left - right), -2.0, 2.0)
        speed = 0.3 + 0.2 * min(front, 2.0)
        obs, _, terminated, _, info = env.step(np.array([speed, yaw_rate]))
        assert not info["collision"], f"collision at {info['progress_m']:.1f} m"
        if terminated:
            break
    assert info["progress_m"] > 8.0
