"""Explorer benchmarks (figures for ``vtdsim bench``; register as ``vtdsim.explore.bench:NAME``).

* :func:`explore_schedules_per_s` / :func:`explore_steps_per_s` — exhaustive DFS of workload (a)
  on the corrected driver, repeated for at least ``min_time`` seconds, one process; the world is
  built once and restored in place before each schedule (the measured reset); the runs share
  one world, after a warm-up pass (its one-time costs are not a schedule's).  Invariants are
  checked as in a normal search (``Kernel.audit()`` at every quiescent decision, end checks with
  two DMAs).  :func:`explore_schedules_per_s_end_checks` is the same without per-step audits.
* :func:`time_to_first_bug` — seconds (and :func:`schedules_to_first_bug`: schedules) for
  iterative preemption bounding to find each seeded v5 bug (``a``: use-after-free, ``b``: leaked
  PASID, ``c``: double free), excluding the one-time build of the platform.

The figures registered in ``vtdsim bench`` (:mod:`vtdsim.bench`) are the medians of ``RUNS``
measurements: ``explore_schedules_per_s``, ``explore_steps_per_s``,
``explore_time_to_first_bug_{a,b,c}_s``.
"""

from __future__ import annotations

import statistics
import time

from vtdsim.explore.base import get_workload
from vtdsim.explore.scheduler import Runner
from vtdsim.explore.strategies import Segment, _Dfs, explore

__all__ = [
    "RUNS",
    "explore_schedules_per_s",
    "explore_schedules_per_s_end_checks",
    "explore_steps_per_s",
    "first_bug_table",
    "median_time_to_first_bug",
    "schedules_to_first_bug",
    "time_to_first_bug",
    "time_to_first_bug_a",
    "time_to_first_bug_b",
    "time_to_first_bug_c",
]

#: measurements whose median a registered figure is
RUNS = 5


def _throughput(
    workload: str = "a",
    variant: str = "corrected",
    min_time: float = 1.0,
    step_checks: bool = True,
    runner: Runner | None = None,
) -> tuple[float, float]:
    """(schedules/s, steps/s) of repeated exhaustive DFS passes for at least ``min_time``
    seconds; ``runner``: an existing runner of that workload (its world already built)."""
    if runner is None:
        runner = Runner(get_workload(workload, variant), step_checks=step_checks)
        runner.fresh_world()  # build once (not measured)
    schedules = steps = 0
    t0 = time.perf_counter()
    while True:
        seg = _Dfs(runner, bound=None, por=False).run(Segment(), False, None)
        schedules += seg.schedules
        steps += seg.steps
        elapsed = time.perf_counter() - t0
        if elapsed >= min_time:
            return schedules / elapsed, steps / elapsed


def _median_throughput(runs: int, min_time: float, index: int) -> float:
    """The median of ``runs`` measurements on one runner, after a warm-up pass on it: the
    world's one-time costs (its build, the snapshot's first restores while it learns which
    containers schedules change, the translators' first recordings of end-check requests)
    are not part of a schedule's cost, as they are not in a long search."""
    runner = Runner(get_workload("a", "corrected"))
    runner.fresh_world()
    _throughput(min_time=0.1, runner=runner)  # warm up (imports, first restores, recordings)
    return statistics.median(
        _throughput(min_time=min_time, runner=runner)[index] for _ in range(runs)
    )


def explore_schedules_per_s(min_time: float = 0.5, runs: int = RUNS) -> float:
    """Schedules per second: exhaustive DFS of workload (a), corrected driver, one core (median
    of ``runs`` measurements of at least ``min_time`` seconds each)."""
    return _median_throughput(runs, min_time, 0)


def explore_steps_per_s(min_time: float = 0.5, runs: int = RUNS) -> float:
    """Scheduling steps per second, same search as :func:`explore_schedules_per_s` (median of
    ``runs`` measurements)."""
    return _median_throughput(runs, min_time, 1)


def explore_schedules_per_s_end_checks(min_time: float = 1.0) -> float:
    """Schedules per second of workload (a) with invariants checked at the end only."""
    return _throughput(min_time=min_time, step_checks=False)[0]


_TARGETS = {"a": "use-after-free", "b": "leak", "c": "AllocatorError"}


def _first_bug(workload: str) -> tuple[float, int, int, str]:
    wl = get_workload(workload, "v5")
    target = _TARGETS[workload]
    wl.setup()  # warm imports and caches; the search builds its own world once
    t0 = time.perf_counter()
    r = explore(wl, "pb", bound=3, only=target)
    elapsed = time.perf_counter() - t0
    bug = r.first_bug
    if bug is None:
        raise RuntimeError(f"v5 bug {target} of workload {workload} not found within bound 3")
    return elapsed, int(r.schedules_to_first_bug or 0), bug.preemptions, bug.schedule


def time_to_first_bug(workload: str = "a") -> float:
    """Seconds for preemption bounding to find workload ``workload``'s seeded v5 bug."""
    return _first_bug(workload)[0]


def schedules_to_first_bug(workload: str = "a") -> int:
    """Schedules executed until the seeded v5 bug of ``workload`` is found."""
    return _first_bug(workload)[1]


def median_time_to_first_bug(workload: str = "a", runs: int = RUNS) -> float:
    """Median over ``runs`` searches of :func:`time_to_first_bug`."""
    return statistics.median(time_to_first_bug(workload) for _ in range(runs))


def time_to_first_bug_a() -> float:
    """Seconds to the v5 use-after-free (workload a; median of ``RUNS`` searches)."""
    return median_time_to_first_bug("a")


def time_to_first_bug_b() -> float:
    """Seconds to the v5 leaked PASID (workload b; median of ``RUNS`` searches)."""
    return median_time_to_first_bug("b")


def time_to_first_bug_c() -> float:
    """Seconds to the v5 double free (workload c; median of ``RUNS`` searches)."""
    return median_time_to_first_bug("c")


def first_bug_table() -> dict[str, dict[str, object]]:
    """Every seeded v5 bug: seconds, schedules, minimal preemptions, schedule string."""
    out: dict[str, dict[str, object]] = {}
    for w, target in _TARGETS.items():
        s, n, p, sched = _first_bug(w)
        out[w] = {"bug": target, "seconds": s, "schedules": n, "preemptions": p, "schedule": sched}
    return out


if __name__ == "__main__":  # pragma: no cover - manual run
    print(f"explore_schedules_per_s            {explore_schedules_per_s():10.0f}")
    print(f"explore_steps_per_s                {explore_steps_per_s():10.0f}")
    print(f"explore_schedules_per_s_end_checks {explore_schedules_per_s_end_checks():10.0f}")
    for w, row in first_bug_table().items():
        print(f"time_to_first_bug[{w}] {row}")
