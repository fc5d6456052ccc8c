"""Control-loop timing statistics: period error, compute time and missed ticks (no ROS import).

Two views of the same samples, both cheap enough for a 1 kHz loop (a few array writes per tick):
- a rolling window (what /diagnostics reports each second),
- log-binned histograms since the last `clear()` (whole-run percentiles to within 1 %, for the
  benchmark), and exact maxima.

All the state lives in one float64 array, which may be a view of shared memory: the control process
records into it and the node's process reads the figures from it (`LoopStats(period, storage)`),
so the loop spends no time computing percentiles. The per-tick writes go through memoryviews (a
numpy scalar write costs several times more). A reader may see a sample being written; the figures
are statistics, and a torn sample changes them by at most one sample.
"""

from __future__ import annotations

import math

import numpy as np

WINDOW = 8192  # samples in LoopStats' rolling windows (the compiled tick writes the same layout)


class Window:
    """Fixed-capacity ring of float samples; `take()` returns the samples since the last take.

    `storage`: capacity + 1 float64s (the samples, then the count); the reader's position
    (`take`) is its own."""

    def __init__(self, capacity: int = 8192, storage: np.ndarray | None = None) -> None:
        self._store = np.zeros(capacity + 1) if storage is None else storage
        self._buf = self._store[:-1]
        self._mv, self._cap = memoryview(self._store), capacity  # the count is at [capacity]
        self._taken = 0  # value of the count at the last take

    @staticmethod
    def size(capacity: int) -> int:
        return capacity + 1

    @property
    def _n(self) -> int:
        return int(self._store[-1])

    def add(self, x: float) -> None:
        mv = self._mv
        n = int(mv[self._cap])
        mv[n % self._cap] = x
        mv[self._cap] = n + 1

    def take(self) -> np.ndarray:
        """Samples added since the previous call (the newest `capacity` at most)."""
        n = self._n
        if n < self._taken:  # cleared by the writer since the last take
            self._taken = 0
        count = min(n - self._taken, self._buf.size)
        self._taken = n
        if count == 0:
            return np.zeros(0)
        idx = np.arange(n - count, n) % self._buf.size
        return self._buf[idx].copy()

    def clear(self) -> None:
        self._store[-1] = 0
        self._taken = 0


class LogHistogram:
    """Counts of positive samples in log-spaced bins (`per_decade` bins per factor 10).

    `storage`: `LogHistogram.size()` float64s (the counts, then max and n)."""

    LO, HI, PER_DECADE = 1e-7, 100.0, 230

    def __init__(self, storage: np.ndarray | None = None) -> None:
        self.lo, self.per_decade = self.LO, self.PER_DECADE
        self.bins = self._bins()
        self._store = np.zeros(self.size()) if storage is None else storage
        self.counts = self._store[: self.bins + 1]  # bin 0 holds samples below lo
        self._mv = memoryview(self._store)

    @classmethod
    def _bins(cls) -> int:
        return int(math.ceil(math.log10(cls.HI / cls.LO) * cls.PER_DECADE)) + 1

    @classmethod
    def size(cls) -> int:
        return cls._bins() + 3

    @property
    def max(self) -> float:
        return float(self._store[-2])

    @property
    def n(self) -> int:
        return int(self._store[-1])

    def add(self, x: float) -> None:
        mv, n = self._mv, self.bins + 1  # counts[0 .. bins], then max, then n
        if x > mv[n]:
            mv[n] = x
        mv[n + 1] += 1
        k = 0 if x < self.lo else min(int(math.log10(x / self.lo) * self.per_decade) + 1, self.bins)
        mv[k] += 1

    def percentile(self, q: float) -> float:
        """Upper edge of the bin holding the q-th percentile (0 < q <= 100); nan when empty."""
        n = self.n
        if n == 0:
            return math.nan
        k = int(np.searchsorted(np.cumsum(self.counts), math.ceil(q / 100.0 * n)))
        if k == 0:
            return self.lo
        return min(self.lo * 10.0 ** (k / self.per_decade), self.max)

    def clear(self) -> None:
        self._store[:] = 0


class LoopStats:
    """Timing of a fixed-rate loop with nominal period `period_s`.

    `record(period_s, compute_s)` once per tick (period None on the first tick after a start);
    a tick whose period exceeds 1.5 nominal periods counts round(period / nominal) - 1 missed ticks.
    `storage` (optional): `LoopStats.size(window)` float64s holding all the state, e.g. a view of
    shared memory that another process reads through its own `LoopStats` on the same storage.
    """

    COUNTERS = ("ticks", "missed_ticks", "missed_ticks_during_swaps", "elapsed_s")

    def __init__(
        self, period_s: float, window: int = WINDOW, storage: np.ndarray | None = None
    ) -> None:
        self.period_s = float(period_s)
        store = np.zeros(self.size(window)) if storage is None else storage
        if store.shape != (self.size(window),):
            raise ValueError(
                f"LoopStats storage: expected {self.size(window)} float64s, got {store.shape}"
            )
        w, h = Window.size(window), LogHistogram.size()
        self._counters = store[: len(self.COUNTERS)]
        self._c = memoryview(self._counters)
        at = len(self.COUNTERS)
        self._periods = Window(window, store[at : at + w])
        self._compute = Window(window, store[at + w : at + 2 * w])
        at += 2 * w
        self.period_error_hist = LogHistogram(store[at : at + h])
        self.compute_hist = LogHistogram(store[at + h : at + 2 * h])

    @classmethod
    def size(cls, window: int = WINDOW) -> int:
        return len(cls.COUNTERS) + 2 * Window.size(window) + 2 * LogHistogram.size()

    @property
    def ticks(self) -> int:
        return int(self._counters[0])

    @property
    def missed_ticks(self) -> int:
        return int(self._counters[1])

    @property
    def missed_ticks_during_swaps(self) -> int:
        return int(self._counters[2])

    @property
    def elapsed_s(self) -> float:
        """Sum of the measured periods since clear()."""
        return float(self._counters[3])

    def record(self, period_s: float | None, compute_s: float, swapping: bool = False) -> None:
        c = self._c
        c[0] += 1
        self._compute.add(compute_s)
        self.compute_hist.add(compute_s)
        if period_s is None:
            return
        c[3] += period_s
        self._periods.add(period_s)
        self.period_error_hist.add(abs(period_s - self.period_s))
        if period_s > 1.5 * self.period_s:
            missed = int(round(period_s / self.period_s)) - 1
            c[1] += missed
            if swapping:
                c[2] += missed

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
        self._counters[:] = 0
        self._periods.clear()
        self._compute.clear()
        self.period_error_hist.clear()
        self.compute_hist.clear()


class Heartbeat:
    """The control process's signs of life, in shared memory (`storage`: `SIZE` float64s).

    Times are `time.monotonic()` seconds (CLOCK_MONOTONIC: one clock for every process of the
    machine). `tick_s`: the last completed tick; `alive_s`: the last time the control thread ran
    at all (it beats while it waits for a node clock that does not advance, too); `clock_s`: the
    node-clock time it last saw; `commanding`: whether the last tick published the policy's
    output. 0 = never (since the last `clear`)."""

    SIZE = 4

    def __init__(self, storage: np.ndarray | None = None) -> None:
        self._store = np.zeros(self.SIZE) if storage is None else storage
        if self._store.shape != (self.SIZE,):
            raise ValueError(f"Heartbeat storage: expected {self.SIZE} float64s")
        self._mv = memoryview(self._store)

    def beat(self, now_s: float, clock_s: float) -> None:
        """The control thread is alive (called while waiting, too)."""
        self._mv[1] = now_s
        self._mv[2] = clock_s

    def ticked(self, now_s: float, commanding: bool) -> None:
        self._mv[0] = now_s
        self._mv[1] = now_s
        self._mv[3] = 1.0 if commanding else 0.0

    @property
    def commanding(self) -> bool:
        return bool(self._store[3])

    @property
    def tick_s(self) -> float | None:
        v = float(self._store[0])
        return v or None

    @property
    def alive_s(self) -> float | None:
        v = float(self._store[1])
        return v or None

    @property
    def clock_s(self) -> float:
        return float(self._store[2])

    def clear(self) -> None:
        self._store[:] = 0.0
