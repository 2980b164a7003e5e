"""Scale-out: split a search into independent pieces and run them on workers.

* DFS / preemption bounding: the search is run to a small *split depth* in this process; every
  execution that reaches that depth becomes a task: the DFS subtree below that schedule prefix,
  carried with its DFS nodes (candidate lists, sleep sets), so that a worker explores exactly the
  schedules the single-process search explores below that prefix, in the same order.  DFS
  subtrees are very unequal (the leftmost, non-preemptive prefix holds most schedules), so a
  task runs at most ``chunk`` schedules and returns its DFS stack; the coordinator then *steals*
  the untried alternatives of the shallowest node as new tasks and resubmits the rest
  (:func:`vtdsim.explore.strategies.split_continuation`).  Every piece carries a position key
  in DFS order.
* PCT / random: schedule indexes are split into ranges (schedule *i* is seeded by ``(seed, i)``
  only).

Results are merged in search order, so the merged result (bugs, schedule counts, steps,
exhaustion verdicts — everything but ``elapsed_s``) is identical to the single-process run.  (One
exception: a ``schedules`` cap on DFS is applied per subtree, so a capped parallel DFS may cover
different schedules than a capped sequential one.)

Executors: local processes by default (``concurrent.futures.ProcessPoolExecutor``, standard
library); ``scheduler="local"`` starts a Dask ``LocalCluster``; any other string is the address
of an existing Dask distributed scheduler (``tcp://host:8786``).  Dask is imported lazily and is
an optional extra.  Workers resolve the workload by name (:class:`WorkloadRef`), so user workloads
must live in an importable module or ``.py`` file (``register(..., module=...)``).
"""

from __future__ import annotations

import importlib
import multiprocessing
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor
from concurrent.futures import wait as futures_wait
from dataclasses import dataclass, replace
from typing import Any

from vtdsim.errors import ArgumentError
from vtdsim.explore.base import Workload, WorkloadRef
from vtdsim.explore.report import BoundResult, Bug, ExplorationResult
from vtdsim.explore.scheduler import DEFAULT_STEP_BUDGET, Runner, watchdog
from vtdsim.explore.strategies import (
    STRATEGIES,
    NodeState,
    Segment,
    _Dfs,
    make_dfs_result,
    make_random_result,
    pct_k,
    run_dfs_subtree,
    run_seeds,
    split_continuation,
)

__all__ = ["explore_parallel"]


@dataclass(frozen=True, slots=True)
class _DfsTask:
    ref: WorkloadRef
    step_budget: int
    step_checks: bool
    only: str | None
    bound: int | None
    por: bool
    prefix: tuple[NodeState, ...]
    floor: int
    stop_on_bug: bool
    max_schedules: int | None
    chunk: int | None


@dataclass(frozen=True, slots=True)
class _SeedTask:
    ref: WorkloadRef
    step_budget: int
    step_checks: bool
    only: str | None
    strategy: str
    seed: int
    start: int
    stop: int
    depth: int
    k: int
    stop_on_bug: bool


# one task at a time per process: the sync backend is process-wide
_TASK_LOCK = threading.Lock()
_RUNNERS: dict[tuple[WorkloadRef, int, bool, str | None], Runner] = {}


def _runner(ref: WorkloadRef, step_budget: int, step_checks: bool, only: str | None) -> Runner:
    key = (ref, step_budget, step_checks, only)
    r = _RUNNERS.get(key)
    if r is None:
        r = Runner(ref.resolve(), step_budget=step_budget, step_checks=step_checks, only=only)
        _RUNNERS[key] = r
    return r


def run_task(task: _DfsTask | _SeedTask) -> Segment:
    """Worker entry point (top level: picklable by reference)."""
    with _TASK_LOCK:
        runner = _runner(task.ref, task.step_budget, task.step_checks, task.only)
        with watchdog(10.0):
            if isinstance(task, _DfsTask):
                return run_dfs_subtree(
                    runner,
                    task.bound,
                    task.por,
                    task.prefix,
                    task.stop_on_bug,
                    task.max_schedules,
                    floor=task.floor,
                    budget=task.chunk,
                )
            return run_seeds(
                runner,
                task.strategy,
                task.seed,
                task.start,
                task.stop,
                task.depth,
                task.k,
                task.stop_on_bug,
            )


# ---------------------------------------------------------------------------------------------
# executors
# ---------------------------------------------------------------------------------------------


class _Pool:
    """Task submission on local processes or Dask."""

    def __init__(self, scheduler: str | None, workers: int | None) -> None:
        self.scheduler = scheduler
        self.workers = workers or os.cpu_count() or 1
        self._pool: ProcessPoolExecutor | None = None
        self._client: Any = None
        self._cluster: Any = None
        self._dist: Any = None

    def __enter__(self) -> _Pool:
        if self.scheduler is None or self.scheduler == "processes":
            methods = multiprocessing.get_all_start_methods()
            ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
            self._pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=ctx)
        else:
            try:
                dist: Any = importlib.import_module("distributed")
            except ImportError as e:  # pragma: no cover - dask is installed in CI
                raise ArgumentError(
                    "scheduler",
                    self.scheduler,
                    "dask[distributed] installed (pip install 'vtdsim[dask]')",
                ) from e
            self._dist = dist
            if self.scheduler == "local":
                self._cluster = dist.LocalCluster(
                    n_workers=self.workers,
                    threads_per_worker=1,
                    processes=True,
                    dashboard_address=None,
                )
                self._client = dist.Client(self._cluster)
            else:
                self._client = dist.Client(self.scheduler)
                self.workers = max(1, len(self._client.scheduler_info().get("workers", {})))
        return self

    def submit(self, task: _DfsTask | _SeedTask) -> Any:
        if self._pool is not None:
            return self._pool.submit(run_task, task)
        return self._client.submit(run_task, task, pure=False)

    def wait_any(self, futures: set[Any]) -> tuple[set[Any], set[Any]]:
        if self._pool is not None:
            done, pending = futures_wait(futures, return_when=FIRST_COMPLETED)
            return set(done), set(pending)
        r = self._dist.wait(list(futures), return_when="FIRST_COMPLETED")
        return set(r.done), set(r.not_done)

    def map(self, tasks: Sequence[_DfsTask | _SeedTask]) -> list[Segment]:
        futs = [self.submit(t) for t in tasks]
        return [f.result() for f in futs]

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
        if self._client is not None:
            self._client.close()
        if self._cluster is not None:
            self._cluster.close()


# ---------------------------------------------------------------------------------------------
# the parallel search
# ---------------------------------------------------------------------------------------------


def explore_parallel(
    workload: Workload | WorkloadRef,
    strategy: str = "pb",
    *,
    bound: int | None = None,
    por: bool = False,
    depth: int = 3,
    seed: int = 0,
    schedules: int | None = None,
    stop_on_bug: bool = True,
    step_budget: int = DEFAULT_STEP_BUDGET,
    step_checks: bool = True,
    shrink: bool = True,
    workers: int | None = None,
    scheduler: str | None = None,
    split_depth: int | None = None,
    chunk: int = 200,
    only: str | None = None,
) -> ExplorationResult:
    """:func:`vtdsim.explore.explore` on several workers (same arguments and same result, up to
    ``elapsed_s``).  ``scheduler``: None (local processes), ``"local"`` (Dask LocalCluster) or a
    Dask scheduler address.  ``split_depth``: the decision depth of the initial split (default:
    the smallest giving two tasks per worker); ``chunk``: schedules per DFS task before its
    remaining work is split again."""
    if strategy not in STRATEGIES:
        raise ArgumentError("strategy", strategy, f"one of {', '.join(STRATEGIES)}")
    if por and strategy != "dfs":
        raise ArgumentError("por", por, "only with strategy 'dfs' (unbounded search)")
    ref = workload if isinstance(workload, WorkloadRef) else workload.ref()
    wl = ref.resolve()
    runner = Runner(wl, step_budget=step_budget, step_checks=step_checks, only=only)
    t0 = time.perf_counter()
    with _Pool(scheduler, workers) as pool:
        if strategy in ("dfs", "pb"):
            cfg = _DfsTask(
                ref, step_budget, step_checks, only, None, por, (), 0, stop_on_bug, schedules, chunk
            )
            bounds: list[int | None] = (
                [None] if strategy == "dfs" else list(range((3 if bound is None else bound) + 1))
            )
            per: list[BoundResult] = []
            segs: list[Segment] = []
            for b in bounds:
                seg = _dfs_round(pool, runner, replace(cfg, bound=b), split_depth)
                segs.append(seg)
                if b is not None:
                    per.append(BoundResult(b, seg.schedules, seg.complete, bool(seg.bugs)))
                if (seg.bugs and stop_on_bug) or seg.nonterm:
                    break
                if b is not None and seg.complete and not seg.bound_hit:
                    break
            result = make_dfs_result(wl, strategy, bound, por, per, segs, only)
        else:
            n = schedules or 1000
            k = pct_k(runner) if strategy == "pct" else 0
            want = max(1, pool.workers * 4)
            size = max(1, -(-n // want))
            tasks = [
                _SeedTask(
                    ref,
                    step_budget,
                    step_checks,
                    only,
                    strategy,
                    seed,
                    i,
                    min(i + size, n),
                    depth,
                    k,
                    stop_on_bug,
                )
                for i in range(0, n, size)
            ]
            merged = _merge_seeds(tasks, pool.map(tasks), stop_on_bug)
            with watchdog(10.0):
                result = make_random_result(runner, strategy, seed, depth, n, merged, shrink)
    return replace(result, elapsed_s=time.perf_counter() - t0)


def _merge_seeds(tasks: Sequence[_SeedTask], segs: Sequence[Segment], stop: bool) -> Segment:
    out = Segment()
    for task, seg in zip(tasks, segs, strict=True):
        for i, bug in seg.bugs:
            if all(b.signature != bug.signature for _j, b in out.bugs):
                out.bugs.append((task.start + i, bug))
        out.steps += seg.steps
        at = _stop_at(seg, stop)
        if at:
            out.schedules = task.start + at
            out.nonterm = task.start + seg.nonterm if seg.nonterm else 0
            out.complete = False
            return out
        out.schedules += seg.schedules
    return out


def _stop_at(seg: Segment, stop_on_bug: bool) -> int:
    """The schedule number at which ``seg`` ended the whole search (0: it did not): its first
    bug with ``stop_on_bug``, a non-termination bug in any case."""
    at = [i for i in (seg.bugs[0][0] if stop_on_bug and seg.bugs else 0, seg.nonterm) if i]
    return min(at) if at else 0


Key = tuple[int, ...]


def _dfs_round(pool: _Pool, runner: Runner, cfg: _DfsTask, split_depth: int | None) -> Segment:
    """One DFS (one preemption bound) on the pool; the merged segment, in DFS order."""
    head, frontier = _split(runner, cfg, split_depth, pool.workers * 2)
    pieces: dict[Key, Segment] = {}
    # the head's own executions and the frontier subtrees, interleaved in DFS order
    events = iter(head.events)
    done_s = done_p = 0
    top = 0
    bug_keys: list[Key] = []
    pending: dict[Any, Key] = {}

    def take_head(until: tuple[int, int]) -> None:
        nonlocal done_s, done_p, top
        while (done_s, done_p) != until:
            e = next(events, None)
            if e is None:
                return
            pruned, steps, bug, nonterm = e
            seg = Segment(
                steps=steps, pruned=int(pruned), schedules=int(not pruned), nonterm=int(nonterm)
            )
            if pruned:
                done_p += 1
            else:
                done_s += 1
                if bug is not None:
                    seg.bugs.append((1, bug))
            pieces[(top,)] = seg
            if _stop_at(seg, cfg.stop_on_bug):
                bug_keys.append((top,))
            top += 1

    floors: dict[Key, int] = {}
    for pos, prefix in frontier:
        take_head(pos)
        task = replace(cfg, prefix=prefix, floor=len(prefix))
        pending[pool.submit(task)] = (top,)
        floors[(top,)] = len(prefix)
        top += 1
    take_head((-1, -1))
    pieces[(top,)] = Segment(complete=head.complete, bound_hit=head.bound_hit)

    futures = set(pending)
    while futures:
        done, futures = pool.wait_any(futures)
        for fut in done:
            key = pending.pop(fut)
            seg = fut.result()
            if seg.cont is None:
                pieces[key] = seg
                if _stop_at(seg, cfg.stop_on_bug):
                    bug_keys.append(key)
                continue
            cont = seg.cont
            seg.cont = None
            pieces[(*key, 0)] = seg
            if bug_keys and min(bug_keys) < key:
                continue  # an earlier bug ends the search before this work
            floor = floors[key]
            kept, stolen = split_continuation(cont, floor)
            new = [(kept, floor)] + [(p, len(p)) for p in stolen]
            for j, (prefix, fl) in enumerate(new, start=1):
                f = pool.submit(replace(cfg, prefix=prefix, floor=fl))
                pending[f] = (*key, j)
                floors[(*key, j)] = fl
                futures.add(f)
    return _merge_pieces([pieces[k] for k in sorted(pieces)], cfg.stop_on_bug)


def _merge_pieces(segs: Sequence[Segment], stop_on_bug: bool) -> Segment:
    out = Segment()
    for seg in segs:
        out.bound_hit = out.bound_hit or seg.bound_hit
        for i, bug in seg.bugs:
            if all(b.signature != bug.signature for _j, b in out.bugs):
                out.bugs.append((out.schedules + i, bug))
        out.steps += seg.steps
        out.pruned += seg.pruned
        at = _stop_at(seg, stop_on_bug)
        if at:
            out.nonterm = out.schedules + seg.nonterm if seg.nonterm else 0
            out.schedules += at
            out.complete = False
            return out
        out.schedules += seg.schedules
        if not seg.complete:
            out.complete = False
    return out


class _HeadSegment(Segment):
    """The split search's own executions, each recorded (pruned?, steps, bug)."""

    def __init__(self, want: str | None) -> None:
        super().__init__(want=want)
        self.events: list[tuple[bool, int, Bug | None, bool]] = []

    def add(self, out: Any, runner: Runner, stop_on_bug: bool) -> bool:
        nbugs = len(self.bugs)
        stop = super().add(out, runner, stop_on_bug)
        bug = self.bugs[-1][1] if len(self.bugs) > nbugs else None
        nonterm = bool(self.nonterm) and self.nonterm == self.schedules and not out.pruned
        self.events.append((bool(out.pruned), int(out.steps), bug, nonterm))
        return stop


def _split(
    runner: Runner, cfg: _DfsTask, split_depth: int | None, want: int
) -> tuple[_HeadSegment, list[tuple[tuple[int, int], tuple[NodeState, ...]]]]:
    depths = [split_depth] if split_depth is not None else list(range(1, 13))
    head = _HeadSegment(runner.only)
    frontier: list[tuple[tuple[int, int], tuple[NodeState, ...]]] = []
    for d in depths:
        head = _HeadSegment(runner.only)
        frontier = []
        with watchdog(10.0):
            _Dfs(runner, bound=cfg.bound, por=cfg.por, truncate=d).run(
                head, cfg.stop_on_bug, None, frontier
            )
        if len(frontier) >= want or not frontier or (head.bugs and cfg.stop_on_bug):
            break
    return head, frontier
