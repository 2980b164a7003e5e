"""A trivial benchmark that keeps ``vtdsim bench`` testable before the model's own land."""

from __future__ import annotations

import time


def bench_loop() -> float:
    """Python loop iterations per second (a calibration figure for the machine)."""
    n = 200_000
    t0 = time.perf_counter()
    x = 0
    for i in range(n):
        x += i
    dt = time.perf_counter() - t0
    return n / dt if dt > 0 else float(n)
