"""The one way the benchmarks time a call: the median of repeated calls after a warm-up."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

WARMUP = 2


def median_seconds(call: Callable[[], object], repeats: int, warmup: int = WARMUP) -> float:
    """Median wall time of `repeats` calls, after `warmup` calls that pay tracing and first-run costs."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times)
