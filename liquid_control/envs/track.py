"""Procedural walled lanes for the rover: a seed picks the track; compiled models are cached.

A track is a centre line of straights and circular arcs (heading kept within +-100 degrees of the
start direction, so a lane never crosses itself), sampled every `DS_M` metres, with a wall on each
side at half the lane width. `build_rover_model(seed)` adds the walls and the laser's rangefinder
beams to sim/rover.xml with MuJoCo's model editing API and compiles once per seed.
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass

import mujoco
import numpy as np

from .base import sim_dir

DS_M = 0.05  # centre-line sampling step
WALL_THICKNESS_M = 0.05
WALL_HEIGHT_M = 0.3


@dataclass(frozen=True)
class TrackParams:
    """Shape of generated lanes (moderate: learnable by a 19-neuron policy)."""

    length_m: float = 30.0
    lane_width_m: float = 1.2
    start_straight_m: float = 2.5
    min_radius_m: float = 2.0
    max_radius_m: float = 5.0
    min_turn_rad: float = math.radians(30)
    max_turn_rad: float = math.radians(90)
    min_straight_m: float = 1.5
    max_straight_m: float = 4.0
    straight_probability: float = 0.35
    max_heading_rad: float = math.radians(100)


@dataclass(frozen=True)
class Track:
    """Centre line samples: points (N, 2), headings (N,), arc length (N,); lane width."""

    seed: int
    points: np.ndarray
    headings: np.ndarray
    arc_length: np.ndarray
    lane_width_m: float

    @property
    def length_m(self) -> float:
        return float(self.arc_length[-1])

    def project(self, xy: np.ndarray, hint: int = 0, window: int = 60) -> tuple[int, float, float]:
        """Nearest centre-line sample near `hint`: (index, arc length s in m, signed lateral offset
        in m, positive = left of the centre line)."""
        lo, hi = max(0, hint - window), min(len(self.points), hint + window + 1)
        d = self.points[lo:hi] - xy
        i = lo + int(np.argmin(np.einsum("ij,ij->i", d, d)))
        h = self.headings[i]
        t = np.array([math.cos(h), math.sin(h)])
        rel = np.asarray(xy) - self.points[i]
        along = float(rel @ t)
        lateral = float(t[0] * rel[1] - t[1] * rel[0])
        return i, float(self.arc_length[i] + along), lateral


def generate_track(seed: int, params: TrackParams = TrackParams()) -> Track:
    """Deterministic lane for `seed`: straights and arcs until `length_m` is reached."""
    rng = np.random.default_rng(int(seed))
    segments: list[tuple[float, float]] = [(params.start_straight_m, 0.0)]  # (length, curvature)
    total, heading = params.start_straight_m, 0.0
    while total < params.length_m:
        if rng.random() < params.straight_probability:
            seg = (rng.uniform(params.min_straight_m, params.max_straight_m), 0.0)
        else:
            radius = rng.uniform(params.min_radius_m, params.max_radius_m)
            turn = rng.uniform(params.min_turn_rad, params.max_turn_rad) * rng.choice((-1.0, 1.0))
            if abs(heading + turn) > params.max_heading_rad:
                turn = -turn
            seg = (abs(turn) * radius, math.copysign(1.0 / radius, turn))
            heading += turn
        segments.append(seg)
        total += seg[0]
    curvature = np.concatenate(
        [np.full(int(round(length / DS_M)), kappa) for length, kappa in segments]
    )
    headings = np.concatenate([[0.0], np.cumsum(curvature * DS_M)])
    mid = (headings[:-1] + headings[1:]) / 2.0
    steps = DS_M * np.stack([np.cos(mid), np.sin(mid)], axis=1)
    points = np.concatenate([np.zeros((1, 2)), np.cumsum(steps, axis=0)])
    arc = np.arange(len(points)) * DS_M
    return Track(int(seed), points, headings, arc, params.lane_width_m)


def wall_segments(track: Track, every: int = 8) -> list[tuple[np.ndarray, np.ndarray]]:
    """Wall pieces as (start, end) points: left and right lane edges, plus the start and end caps."""
    half = track.lane_width_m / 2.0
    normals = np.stack([-np.sin(track.headings), np.cos(track.headings)], axis=1)
    idx = list(range(0, len(track.points), every))
    if idx[-1] != len(track.points) - 1:
        idx.append(len(track.points) - 1)
    pieces = []
    for side in (1.0, -1.0):
        edge = track.points[idx] + side * half * normals[idx]
        pieces += [(edge[k], edge[k + 1]) for k in range(len(edge) - 1)]
    for i in (0, len(track.points) - 1):
        pieces.append((track.points[i] + half * normals[i], track.points[i] - half * normals[i]))
    return pieces


def beam_angles(n_beams: int, fov_rad: float) -> np.ndarray:
    """Laser beam angles (rad, counter-clockwise from forward), first = rightmost (REP 103)."""
    return np.linspace(-fov_rad / 2.0, fov_rad / 2.0, n_beams)


@functools.lru_cache(maxsize=64)
def build_rover_model(
    seed: int, n_beams: int, fov_rad: float, params: TrackParams = TrackParams()
) -> mujoco.MjModel:
    """Compiled rover + lane model for a track seed (cached: compile once per seed)."""
    track = generate_track(seed, params)
    spec = mujoco.MjSpec.from_file(os.path.join(sim_dir(), "rover.xml"))
    world = spec.worldbody
    for k, (a, b) in enumerate(wall_segments(track)):
        centre = (a + b) / 2.0
        length = float(np.linalg.norm(b - a))
        yaw = math.atan2(b[1] - a[1], b[0] - a[0])
        world.add_geom(
            name=f"wall_{k}",
            type=mujoco.mjtGeom.mjGEOM_BOX,
            size=[
                length / 2.0 + WALL_THICKNESS_M / 2.0,
                WALL_THICKNESS_M / 2.0,
                WALL_HEIGHT_M / 2.0,
            ],
            pos=[centre[0], centre[1], WALL_HEIGHT_M / 2.0],
            quat=[math.cos(yaw / 2.0), 0.0, 0.0, math.sin(yaw / 2.0)],
            contype=0,
            conaffinity=2,
            rgba=[0.75, 0.72, 0.65, 1.0],
        )
    rover = spec.body("rover")
    laser = spec.site("laser")
    for j, angle in enumerate(beam_angles(n_beams, fov_rad)):
        # Site z axis along the beam: rotate z onto x (about y by +90 deg), then yaw by `angle`.
        q_y = np.array([math.cos(math.pi / 4), 0.0, math.sin(math.pi / 4), 0.0])
        q_z = np.array([math.cos(angle / 2.0), 0.0, 0.0, math.sin(angle / 2.0)])
        q = np.empty(4)
        mujoco.mju_mulQuat(q, q_z, q_y)
        rover.add_site(name=f"beam_{j}", pos=list(laser.pos), quat=list(q), size=[0.005, 0, 0])
        spec.add_sensor(
            name=f"laser_{j}",
            type=mujoco.mjtSensor.mjSENS_RANGEFINDER,
            objtype=mujoco.mjtObj.mjOBJ_SITE,
            objname=f"beam_{j}",
            intprm=[1, 0, 0],  # data = distance only (as <rangefinder> defaults to in MJCF)
        )
    return spec.compile()
