"""Timing helper shared by the benchmark scripts: interleaved repeats, best-of and median.

Interleaving the contenders (A B C A B C ...) and taking the best of several repeats keeps the
ratios fair on a machine whose load changes while the benchmark runs.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def compare(
    contenders: dict[str, Callable[[], object]], number: int, repeats: int = 7
) -> dict[str, dict[str, float]]:
    """Seconds per call of each contender: {"name": {"best": s, "median": s}}."""
    for fn in contenders.values():  # warm up
        fn()
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, fn in contenders.items():
            t0 = time.perf_counter()
            for _ in range(number):
                fn()
            samples[name].append((time.perf_counter() - t0) / number)
    return {n: {"best": min(s), "median": statistics.median(s)} for n, s in samples.items()}


def table(results: dict[str, dict[str, float]], ours: str, unit: str = "us") -> str:
    scale = {"us": 1e6, "ms": 1e3}[unit]
    lines = [
        f"{'':28s} {'best ' + unit:>12s} {'median ' + unit:>12s} {'ours is x faster (best)':>24s}"
    ]
    for name, r in results.items():
        ratio = r["best"] / results[ours]["best"]
        lines.append(
            f"{name:28s} {r['best'] * scale:12.1f} {r['median'] * scale:12.1f} {ratio:24.1f}"
        )
    return "\n".join(lines)
