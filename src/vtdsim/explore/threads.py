"""OS-thread back-end: run the same workloads on real threads, as a cross-check.

The controlled scheduler proves properties of the *model* of concurrency (one thread runs at a
time, switches only at sync operations).  This back-end runs each workload's threads as real
``threading.Thread`` objects, with real blocking locks, and perturbs them at every sync operation
(random ``sleep(0)`` yields and short spins, seeded per thread) with a tiny GIL switch interval, so
that the interpreter also switches *between* scheduling points.  A bug it finds that the explorer
cannot would mean a missing scheduling point (an undeclared unlocked access).

It is a stress test, not a search: results are not replayable (bugs carry no schedule string), and
it is bounded in time (``time_limit_s``) and per lock wait (``lock_timeout_s``; a wait that long is
reported as a probable deadlock).
"""

from __future__ import annotations

import os
import random
import sys
import threading
import time
import traceback
from typing import Any

from vtdsim.driver import sync
from vtdsim.driver.sync import LockingError, SpinLock
from vtdsim.explore.base import Workload
from vtdsim.explore.invariants import check_all
from vtdsim.explore.names import exception_bug_name
from vtdsim.explore.report import Bug, ExplorationResult, OpRecord
from vtdsim.explore.scheduler import BUG_OPS, Runner

__all__ = ["ThreadBackend", "run_threads"]


class _Deadlock(LockingError):
    pass


class ThreadBackend:
    """A :class:`sync.SyncBackend` over real threads with seeded random perturbation."""

    def __init__(self, seed: int, yield_p: float = 0.5, lock_timeout_s: float = 2.0) -> None:
        self.seed = seed
        self.yield_p = yield_p
        self.lock_timeout_s = lock_timeout_s
        self._local = threading.local()
        self.ops = 0
        #: ``(thread index, operation)`` in the order the threads reached them (for reports;
        #: list.append is atomic)
        self.trace: list[tuple[int, str]] = []

    def bind(self, index: int) -> None:
        """Called by each worker thread first: its own random stream."""
        self._local.rng = random.Random(f"threads:{self.seed}:{index}")
        self._local.index = index

    def _perturb(self, what: str = "") -> None:
        self.ops += 1
        if what:
            self.trace.append((getattr(self._local, "index", -1), what))
        rng: random.Random | None = getattr(self._local, "rng", None)
        if rng is None:
            return
        r = rng.random()
        if r < self.yield_p:
            time.sleep(0)
        elif r < self.yield_p + 0.1:
            for _ in range(rng.randrange(200)):
                pass
        elif r < self.yield_p + 0.15:
            os.sched_yield()

    def ident(self) -> object:
        return threading.get_ident()

    def acquire(self, lock: SpinLock) -> None:
        self._perturb(f"acquire {lock.name}")
        if not lock._lock.acquire(timeout=self.lock_timeout_s):
            raise _Deadlock(
                f"waited {self.lock_timeout_s:g} s for {lock.name} (held by {lock.owner}): "
                "probable deadlock"
            )
        lock.owner = threading.get_ident()

    def release(self, lock: SpinLock) -> None:
        lock.owner = None
        lock._lock.release()
        self._perturb(f"release {lock.name}")

    def access(self, label: str, key: object, write: bool) -> None:
        self._perturb(f"{'write' if write else 'read'} {label}")

    def point(self, label: str) -> None:
        self._perturb(f"point {label}")


def run_threads(
    workload: Workload,
    *,
    iterations: int = 200,
    seed: int = 0,
    time_limit_s: float = 5.0,
    lock_timeout_s: float = 2.0,
    switch_interval_s: float = 1e-6,
) -> ExplorationResult:
    """Run ``workload`` up to ``iterations`` times on OS threads (stopping at the first bug or
    when ``time_limit_s`` is spent).  End invariants and ``check_end`` are checked after each
    run; exceptions, probable deadlocks and threads still running after the limit are bugs."""
    runner = Runner(workload, step_checks=False)
    t0 = time.perf_counter()
    deadline = t0 + time_limit_s
    runs = 0
    bug: Bug | None = None
    old_interval = sys.getswitchinterval()
    sys.setswitchinterval(switch_interval_s)
    try:
        for it in range(iterations):
            if time.perf_counter() > deadline:
                break
            bug = _one_run(runner, workload, seed, it, deadline, lock_timeout_s)
            runs += 1
            if bug is not None:
                break
    finally:
        sys.setswitchinterval(old_interval)
    return ExplorationResult(
        workload=workload.name,
        variant=workload.variant,
        strategy="threads",
        parameters=(("seed", seed), ("iterations", iterations)),
        schedules=runs,
        steps=0,
        pruned=0,
        exhausted=False,
        bound=None,
        per_bound=(),
        bugs=(bug,) if bug else (),
        elapsed_s=time.perf_counter() - t0,
        schedules_to_first_bug=runs if bug else None,
    )


def _one_run(
    runner: Runner,
    workload: Workload,
    seed: int,
    it: int,
    deadline: float,
    lock_timeout_s: float,
) -> Bug | None:
    world = runner.fresh_world()
    specs = workload.threads(world)
    backend = ThreadBackend(seed * 1_000_003 + it, lock_timeout_s=lock_timeout_s)
    results: list[Any] = [None] * len(specs)
    errors: list[tuple[str, BaseException, str] | None] = [None] * len(specs)
    start = threading.Barrier(len(specs))

    def body(i: int, fn: Any) -> None:
        backend.bind(i)
        try:
            start.wait(timeout=lock_timeout_s)
            results[i] = fn()
        except BaseException as e:
            errors[i] = (specs[i][0], e, traceback.format_exc())

    previous = sync.install(backend)
    try:
        ths = [
            threading.Thread(target=body, args=(i, fn), name=f"explore-{name}", daemon=True)
            for i, (name, fn) in enumerate(specs)
        ]
        for th in ths:
            th.start()
        limit = max(deadline - time.perf_counter(), 0.0) + lock_timeout_s * 2
        for th in ths:
            th.join(timeout=limit)
        stuck = [th.name for th in ths if th.is_alive()]
    finally:
        sync.install(previous)

    names = [name for name, _fn in specs]
    trace = list(backend.trace)
    ops = tuple(
        OpRecord(i, names[t] if 0 <= t < len(names) else "?", what)
        for i, (t, what) in enumerate(trace)
    )[-BUG_OPS:]

    def mk(kind: str, name: str, message: str, tb: str | None = None) -> Bug:
        return Bug(
            kind=kind,
            name=name,
            message=message + f" (OS-thread run {it} of seed {seed}; not replayable)",
            workload=workload.name,
            variant=workload.variant,
            schedule="",
            preemptions=0,
            steps=len(trace),
            ops=ops,
            traceback=tb,
        )

    if stuck:
        return mk("stall", "stall", f"threads still running after the time limit: {stuck}")
    for err in errors:
        if err is not None:
            name, e, tb = err
            kind = "deadlock" if isinstance(e, _Deadlock) else "exception"
            return mk(kind, exception_bug_name(e), f"thread {name}: {e}", tb)
    v = check_all(runner.end_invariants, world)
    if v is not None:
        return mk("invariant", v[0], v[1])
    msgs = list(workload.check_end(world, results))
    if msgs:
        return mk("invariant", f"{workload.name}-end", msgs[0])
    return None
