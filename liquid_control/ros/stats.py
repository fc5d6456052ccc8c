"""Control-loop timing statistics: period error, compute time and missed ticks (no ROS import).

Two views of the same samples, both cheap enough for a 1 kHz loop (a few array writes per tick):
- a rolling window (what /diagnostics reports each second),
- log-binned histograms since the last `clear()` (whole-run percentiles to within 1 %, for the
  benchmark), and exact maxima.
"""

from __future__ import annotations

import math

import numpy as np


class Window:
    """Fixed-capacity ring of float samples; `take()` returns the samples since the last take."""

    def __init__(self, capacity: int = 8192) -> None:
        self._buf = np.zeros(capacity)
        self._n = 0  # samples added in total
        self._taken = 0  # value of _n at the last take

    def add(self, x: float) -> None:
        self._buf[self._n % self._buf.size] = x
        self._n += 1

    def take(self) -> np.ndarray:
        """Samples added since the previous call (the newest `capacity` at most)."""
        count = min(self._n - self._taken, self._buf.size)
        self._taken = self._n
        if count == 0:
            return np.zeros(0)
        idx = np.arange(self._n - count, self._n) % self._buf.size
        return self._buf[idx].copy()

    def clear(self) -> None:
        self._n = self._taken = 0


class LogHistogram:
    """Counts of positive samples in log-spaced bins (`per_decade` bins per factor 10)."""

    def __init__(self, lo: float = 1e-7, hi: float = 100.0, per_decade: int = 230) -> None:
        self.lo, self.per_decade = lo, per_decade
        self.bins = int(math.ceil(math.log10(hi / lo) * per_decade)) + 1
        self.counts = np.zeros(self.bins + 1, np.int64)  # bin 0 holds samples below lo
        self.max = 0.0
        self.n = 0

    def add(self, x: float) -> None:
        if x > self.max:
            self.max = x
        self.n += 1
        if x < self.lo:
            self.counts[0] += 1
        else:
            self.counts[min(int(math.log10(x / self.lo) * self.per_decade) + 1, self.bins)] += 1

    def percentile(self, q: float) -> float:
        """Upper edge of the bin holding the q-th percentile (0 < q <= 100); nan when empty."""
        if self.n == 0:
            return math.nan
        k = int(np.searchsorted(np.cumsum(self.counts), math.ceil(q / 100.0 * self.n)))
        if k == 0:
            return self.lo
        return min(self.lo * 10.0 ** (k / self.per_decade), self.max)

    def clear(self) -> None:
        self.counts[:] = 0
        self.max = 0.0
        self.n = 0


class LoopStats:
    """Timing of a fixed-rate loop with nominal period `period_s`.

    `record(period_s, compute_s)` once per tick (period None on the first tick after a start);
    a tick whose period exceeds 1.5 nominal periods counts round(period / nominal) - 1 missed ticks.
    """

    def __init__(self, period_s: float, window: int = 8192) -> None:
        self.period_s = float(period_s)
        self._periods = Window(window)
        self._compute = Window(window)
        self.period_error_hist = LogHistogram()
        self.compute_hist = LogHistogram()
        self.ticks = 0
        self.missed_ticks = 0
        self.missed_ticks_during_swaps = 0
        self.elapsed_s = 0.0  # sum of measured periods since clear()

    def record(self, period_s: float | None, compute_s: float, swapping: bool = False) -> None:
        self.ticks += 1
        self._compute.add(compute_s)
        self.compute_hist.add(compute_s)
        if period_s is None:
            return
        self.elapsed_s += period_s
        self._periods.add(period_s)
        self.period_error_hist.add(abs(period_s - self.period_s))
        if period_s > 1.5 * self.period_s:
            missed = int(round(period_s / self.period_s)) - 1
            self.missed_ticks += missed
            if swapping:
                self.missed_ticks_during_swaps += missed

    def window_summary(self) -> dict[str, float]:
        """Figures over the ticks since the previous call (the diagnostics window)."""
        periods, compute = self._periods.take(), self._compute.take()
        out = {"window_ticks": float(compute.size)}
        if periods.size:
            err = np.abs(periods - self.period_s)
            out["achieved_rate_hz"] = periods.size / periods.sum()
            out["period_error_p50_ms"] = float(np.percentile(err, 50)) * 1e3
            out["period_error_p99_ms"] = float(np.percentile(err, 99)) * 1e3
            out["period_error_max_ms"] = float(err.max()) * 1e3
        if compute.size:
            out["compute_p50_us"] = float(np.percentile(compute, 50)) * 1e6
            out["compute_p99_us"] = float(np.percentile(compute, 99)) * 1e6
            out["compute_max_us"] = float(compute.max()) * 1e6
        return out

    def total_summary(self) -> dict[str, float]:
        """Figures since the last `clear()` (histogram percentiles, within 1 %)."""
        pe, ct = self.period_error_hist, self.compute_hist
        n_periods = pe.n
        return {
            "ticks": float(self.ticks),
            "missed_ticks": float(self.missed_ticks),
            "missed_ticks_during_swaps": float(self.missed_ticks_during_swaps),
            "achieved_rate_hz": n_periods / self.elapsed_s if self.elapsed_s > 0 else math.nan,
            "period_error_p50_ms": pe.percentile(50) * 1e3,
            "period_error_p99_ms": pe.percentile(99) * 1e3,
            "period_error_max_ms": pe.max * 1e3,
            "compute_p50_us": ct.percentile(50) * 1e6,
            "compute_p99_us": ct.percentile(99) * 1e6,
            "compute_max_us": ct.max * 1e6,
        }

    def clear(self) -> None:
        self._periods.clear()
        self._compute.clear()
        self.period_error_hist.clear()
        self.compute_hist.clear()
        self.ticks = self.missed_ticks = self.missed_ticks_during_swaps = 0
        self.elapsed_s = 0.0
