"""Smoothness of a policy's commands: how much the action moves from one control step to the next.

Two figures per episode, from the actions ``a`` (T, action_dim) in robot units and the action limits
``low``, ``high`` (action_dim,). The actions are first clipped to the limits (what the actuators
apply) and each element is divided by its range ``r = high - low``, so that elements and tasks of
any units compare:

- ``mean_abs_delta`` = mean over t = 1..T-1 and j of |a[t, j] - a[t-1, j]| / r_j: the share of the
  range the command moves per control step, unitless, in [0, 1] (0: constant, 1: from limit to
  limit every step). NaN for T < 2.
- ``hf_energy``: the share of the signal's energy above a quarter of the control rate. With
  x = (a - mean_t a) / r and X = rfft(x) along time, bin k (k / T cycles per control step, that is
  k / T x rate_hz) holds E_k = w_k sum_j |X[k, j]|^2, w_k = 2 for the bins that stand for +-k and 1
  for DC and Nyquist (so sum_k E_k = T sum x**2, Parseval); hf_energy = sum over k / T > 1/4 of E_k
  over sum_k E_k, in [0, 1]: the upper half of the spectrum (0.25 x rate_hz .. 0.5 x rate_hz). The
  cutoff is a fixed share of the rate, so the figure does not depend on the rate itself. 0 for a
  constant signal (every deviation from the mean below ``QUIET`` = 1e-9 of the range), 1 for one
  that alternates every step (T even; at least 0.87 for T odd). NaN for T < 4.

Both are NaN where an action is NaN (an infinite one is clipped to its limit, as applied).
Episodes aggregate by the mean (`mean_smoothness`). numpy only.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

MIN_STEPS_HF = 4  # below, every bin but DC lies above the cutoff: any motion would score 1
# deviations from the mean below this share of the range count as none: they are the rounding of
# the clip to a limit, not motion, and a ratio of such energies would be noise
QUIET = 1e-9


@dataclass(frozen=True)
class Smoothness:
    """Smoothness figures of one episode, or their mean over episodes.

    mean_abs_delta: mean |a[t] - a[t-1]| as a share of each element's range, unitless, [0, 1].
    hf_energy: share of the (mean-removed, range-normalised) energy above 0.25 x the control
        rate, [0, 1].
    mean_abs_delta_units: mean |a[t, j] - a[t-1, j]| per element j in robot units, (action_dim,).
    """

    mean_abs_delta: float
    hf_energy: float
    mean_abs_delta_units: np.ndarray


def _applied(
    actions: np.ndarray, low: np.ndarray, high: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(actions clipped to the limits (T, action_dim), ranges high - low (action_dim,))."""
    low = np.asarray(low, np.float64).reshape(-1)
    high = np.asarray(high, np.float64).reshape(-1)
    if low.shape != high.shape:
        raise ValueError(
            f"high: expected as many limits as low ({low.size}), got {high.size}: {high.tolist()}"
        )
    for j in range(low.size):
        if not (np.isfinite(low[j]) and np.isfinite(high[j]) and high[j] > low[j]):
            raise ValueError(
                f"high[{j}] = {float(high[j])}: expected a finite limit above "
                f"low[{j}] = {float(low[j])}"
            )
    a = np.asarray(actions, np.float64)
    if a.ndim != 2 or a.shape[1] != low.size:
        raise ValueError(
            f"actions: expected shape (T, {low.size}) to match the {low.size} limits, got {a.shape}"
        )
    return np.clip(a, low, high), high - low


def mean_abs_delta(actions: np.ndarray, low: np.ndarray, high: np.ndarray) -> float:
    """Mean over steps and elements of |a[t] - a[t-1]| / (high - low); NaN for T < 2.

    actions: (T, action_dim) in robot units; low, high: (action_dim,) action limits.
    """
    return _mean_abs_delta(*_applied(actions, low, high))


def hf_energy(actions: np.ndarray, low: np.ndarray, high: np.ndarray) -> float:
    """Share of the energy above a quarter of the control rate, in [0, 1]; NaN for T < 4.

    actions: (T, action_dim) in robot units, one row per control step; low, high: (action_dim,).
    """
    return _hf_energy(*_applied(actions, low, high))


def smoothness(actions: np.ndarray, low: np.ndarray, high: np.ndarray) -> Smoothness:
    """Both figures of one episode, and |delta a| per element in robot units.

    actions: (T, action_dim) in robot units; low, high: (action_dim,) action limits.
    """
    a, r = _applied(actions, low, high)
    if len(a) < 2:
        units = np.full(a.shape[1], np.nan)
    else:
        units = np.mean(np.abs(np.diff(a, axis=0)), axis=0)
    return Smoothness(_mean_abs_delta(a, r), _hf_energy(a, r), units)


def mean_smoothness(
    episodes: Iterable[np.ndarray], low: np.ndarray, high: np.ndarray
) -> Smoothness:
    """The mean of each figure over episodes (each (T_i, action_dim), robot units), leaving out
    the episodes too short for that figure; NaN where none is long enough."""
    episodes = [np.asarray(a) for a in episodes]
    if not episodes:
        raise ValueError("episodes: expected at least one action sequence, got none")
    per = [smoothness(a, low, high) for a in episodes]

    def mean(values: list, min_steps: int) -> np.ndarray:
        kept = [v for v, a in zip(values, episodes, strict=True) if len(a) >= min_steps]
        return np.mean(kept, axis=0) if kept else np.full(np.shape(values[0]), np.nan)

    return Smoothness(
        float(mean([s.mean_abs_delta for s in per], 2)),
        float(mean([s.hf_energy for s in per], MIN_STEPS_HF)),
        mean([s.mean_abs_delta_units for s in per], 2),
    )


def table_cell(value: float | None, percent: bool = False) -> str:
    """A figure for a results table: 0.031 -> "3.1%" (percent) or "0.03"; "-" where it is missing
    (a run evaluated before it was measured) or NaN."""
    if value is None or not np.isfinite(value):
        return "-"
    return f"{100 * value:.1f}%" if percent else f"{value:.2f}"


def _mean_abs_delta(a: np.ndarray, r: np.ndarray) -> float:
    if len(a) < 2:
        return float("nan")
    return float(np.mean(np.abs(np.diff(a, axis=0)) / r))


def _hf_energy(a: np.ndarray, r: np.ndarray) -> float:
    n = len(a)
    if n < MIN_STEPS_HF:
        return float("nan")
    x = (a - a.mean(axis=0)) / r
    if np.max(np.abs(x)) <= QUIET:  # (constant; NaN actions fall through to NaN)
        return 0.0
    power = np.abs(np.fft.rfft(x, axis=0)) ** 2  # (n // 2 + 1, action_dim)
    k = np.arange(len(power))
    weight = np.where((k == 0) | ((n % 2 == 0) & (k == n // 2)), 1.0, 2.0)
    energy = weight * power.sum(axis=1)
    total = float(energy.sum())
    if not np.isfinite(total):
        return float("nan")
    return float(np.clip(energy[k / n > 0.25].sum() / total, 0.0, 1.0))
