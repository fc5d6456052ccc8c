"""Smoothness figures of an action sequence (liquid_control/train/smoothness.py): mean |delta a| as
a share of the range and the share of energy above a quarter of the control rate."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from liquid_control.train.smoothness import (
    hf_energy,
    mean_abs_delta,
    mean_smoothness,
    smoothness,
)

finite = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False)


@st.composite
def limits(draw, dim: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) with high - low of at least 1e-3."""
    dim = dim or draw(st.integers(1, 3))
    low = draw(arrays(np.float64, dim, elements=finite))
    width = draw(arrays(np.float64, dim, elements=st.floats(1e-3, 1e3)))
    return low, low + width


@st.composite
def episode(draw, min_steps: int = 4) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(actions (T, dim) anywhere, some outside the limits, low, high)."""
    low, high = draw(limits())
    steps = draw(st.integers(min_steps, 64))
    actions = draw(arrays(np.float64, (steps, low.size), elements=finite))
    return actions, low, high


@st.composite
def gridded_episode(draw) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(actions on a grid of 1/16 of the range, some outside the limits, low, high): moves far
    above float rounding, which a shift or a scale of the values brings to the figures."""
    low, high = draw(limits())
    steps = draw(st.integers(4, 64))
    grid = draw(arrays(np.int64, (steps, low.size), elements=st.integers(-8, 24)))
    return low + grid / 16 * (high - low), low, high


@given(limits(), st.integers(4, 64), st.data())
def test_a_constant_command_scores_zero_on_both(lim, steps: int, data) -> None:
    low, high = lim
    level = data.draw(arrays(np.float64, low.size, elements=finite))
    actions = np.tile(level, (steps, 1))
    assert mean_abs_delta(actions, low, high) == 0.0
    assert hf_energy(actions, low, high) == 0.0


@given(limits(), st.integers(4, 64))
def test_a_command_jumping_between_the_limits_every_step_scores_one(lim, steps: int) -> None:
    low, high = lim
    actions = np.where((np.arange(steps) % 2 == 0)[:, None], low, high)
    assert mean_abs_delta(actions, low, high) == pytest.approx(1.0)
    hf = hf_energy(actions, low, high)
    assert hf == pytest.approx(1.0) if steps % 2 == 0 else hf >= 0.85  # (odd: some leaks below)


@given(
    st.floats(1.0, 8.0),
    st.floats(0.0, 2 * np.pi),
    st.integers(128, 512),
)
def test_a_slow_sine_has_almost_no_high_frequency_energy(cycles: float, phase: float, steps: int):
    t = np.arange(steps)
    actions = np.sin(2 * np.pi * cycles * t / steps + phase)[:, None]  # <= 8 of steps / 4 cycles
    assert hf_energy(actions, np.array([-1.0]), np.array([1.0])) < 0.02


@settings(max_examples=60)
@given(gridded_episode(), finite)
def test_shifting_commands_and_limits_together_changes_neither(ep, shift: float) -> None:
    actions, low, high = ep
    before = smoothness(actions, low, high)
    after = smoothness(actions + shift, low + shift, high + shift)
    # (the shift costs up to an ulp of values up to 2e3 against a range as small as 1e-3)
    assert after.mean_abs_delta == pytest.approx(before.mean_abs_delta, abs=1e-8)
    assert after.hf_energy == pytest.approx(before.hf_energy, abs=1e-8)


@settings(max_examples=60)
@given(gridded_episode(), st.floats(1e-3, 1e3))
def test_scaling_commands_and_limits_together_changes_neither(ep, scale: float) -> None:
    actions, low, high = ep
    before = smoothness(actions, low, high)
    after = smoothness(actions * scale, low * scale, high * scale)
    assert after.mean_abs_delta == pytest.approx(before.mean_abs_delta, rel=1e-9, abs=1e-12)
    assert after.hf_energy == pytest.approx(before.hf_energy, rel=1e-6, abs=1e-9)
    np.testing.assert_allclose(
        after.mean_abs_delta_units, before.mean_abs_delta_units * scale, rtol=1e-9, atol=1e-12
    )


@given(episode(min_steps=0))
def test_figures_stay_in_their_ranges_for_any_finite_commands(ep) -> None:
    actions, low, high = ep
    s = smoothness(actions, low, high)
    if len(actions) < 2:
        assert np.isnan(s.mean_abs_delta) and np.isnan(s.mean_abs_delta_units).all()
    else:
        assert 0.0 <= s.mean_abs_delta <= 1.0
        assert (s.mean_abs_delta_units >= 0).all()
        assert (s.mean_abs_delta_units <= (high - low) * (1 + 1e-12)).all()
    if len(actions) < 4:
        assert np.isnan(s.hf_energy)
    else:
        assert 0.0 <= s.hf_energy <= 1.0


def test_episodes_average_and_short_ones_are_left_out_of_the_figures_they_lack() -> None:
    low, high = np.array([0.0]), np.array([2.0])
    still = np.zeros((10, 1))
    jumpy = np.where((np.arange(10) % 2 == 0)[:, None], 0.0, 2.0)
    short = np.array([[0.0], [2.0], [0.0]])  # (3 steps: |delta a| yes, hf energy no)
    m = mean_smoothness([still, jumpy, short], low, high)
    assert m.mean_abs_delta == pytest.approx((0.0 + 1.0 + 1.0) / 3)
    assert m.hf_energy == pytest.approx(0.5)
    np.testing.assert_allclose(m.mean_abs_delta_units, [4.0 / 3])
    assert np.isnan(mean_smoothness([short], low, high).hf_energy)


def test_a_nan_command_makes_the_figures_nan() -> None:
    actions = np.zeros((8, 1))
    actions[3] = np.nan
    s = smoothness(actions, np.array([-1.0]), np.array([1.0]))
    assert np.isnan(s.mean_abs_delta) and np.isnan(s.hf_energy)


@pytest.mark.parametrize(
    ("actions", "low", "high", "message"),
    [
        (np.zeros((5, 2)), [0.0], [1.0], r"actions: expected shape \(T, 1\) .* got \(5, 2\)"),
        (np.zeros((5, 1)), [1.0], [1.0], r"high\[0\] = 1.0: expected a finite limit above low"),
        (np.zeros((5, 1)), [0.0], [np.inf], r"high\[0\] = inf: expected a finite limit"),
        (np.zeros((5, 1)), [0.0], [1.0, 2.0], r"high: expected as many limits as low \(1\), got 2"),
    ],
)
def test_bad_shapes_and_limits_name_the_argument(actions, low, high, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        smoothness(actions, np.array(low), np.array(high))
