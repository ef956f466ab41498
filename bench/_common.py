"""Shared by the benchmark scripts: the machine's name and best-of-N timing."""
from __future__ import annotations

import platform
import time


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def best_time(fn, repeats: int, warmup: int = 1) -> float:
    """Best of ``repeats`` wall times (seconds) after ``warmup`` calls: on a shared machine the
    best run is the least disturbed one."""
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best
