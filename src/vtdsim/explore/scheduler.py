"""The controlled scheduler: runs one schedule of a workload, one logical thread at a time.

Design rationale
----------------
*Why greenlets.*  A logical thread must be suspended in the middle of driver code (inside
``aux_domain_add_dev``, between the unlocked read of ``default_pasid`` and the allocator call) and
resumed later, without the driver being written as a generator.  That needs stackful coroutines.
OS threads could do it with a hand-off (one condition variable per thread), but a hand-off costs two
kernel context switches (~10-50 us); a greenlet switch is a C stack copy (~1 us).  Exploration runs
millions of steps, so greenlets it is; :mod:`vtdsim.explore.threads` runs the same workloads on real
threads as a cross-check.

*What a scheduling point is.*  Every operation of :mod:`vtdsim.driver.sync` — lock acquire and
release, declared unlocked reads and writes of shared state (``shared_read``/``shared_write``), and
``point`` (allocator entries) — calls this module's backend, which records the operation as the
thread's *pending operation* and takes the scheduling decision: it picks one *enabled* thread (a
thread whose pending operation is an acquire of a lock that another thread holds is disabled), and
that thread performs its pending operation and runs on until its next one.  That is one *step*;
code between two points is atomic.  The decision runs in the greenlet of the thread that just
reached its point: when that thread runs on, there is no switch at all, otherwise one direct switch
to the chosen thread; the scheduler greenlet only starts a schedule and takes over when a thread
finishes or the schedule ends.  Logical threads run on worker greenlets reused from schedule to
schedule (creating a greenlet costs ~10 us, more than a whole step).  The driver is never
patched: the backend is installed with ``sync.install`` for the duration of a schedule.
A step at which two or more threads are enabled is a *decision*; the list of choices at
decisions is the schedule.

*Per-step cost.*  A step is the driver's sync call, the backend method, and
:meth:`Execution._yield`, which decides the common steps inline: with one or two live threads,
a chooser that does not need to see every step and no invariant checked at every step, a step
with one enabled thread is forced, and a decision that the DFS replays (a prefix of its stack,
``DfsChooser.replay``, whose states an earlier execution checked) takes its choice from the list
without calling the chooser (the deepest replayed decision still goes through it for the
determinism check; with sleep sets every decision does, for their signature numbering).
Everything else, and anything unusual on the way (a replayed choice that is not enabled),
goes through :meth:`_choose`.  ``with lock:`` calls the backend directly, and the unwinding of
a schedule that ended early runs under a backend of its own (:class:`_Unwinder`), so the
per-step methods test nothing for it.  Measured on 2 threads x 15 lock sections, every decision
replayed, no checks (2026-11-24, 2-core VM at load ~0.5, medians of 3,000 schedules): ~1.1 us
a step without switches, ~1.85 us with a switch at every step (a greenlet switch pair alone is
~0.6 us); before the inline decisions ~1.55 and ~2.5 us.
``tests/test_explore_engine_fast.py`` compares these paths with the general ones.

*Bugs.*  No enabled thread while some are unfinished is a deadlock.  A schedule longer than the step
budget is reported (non-termination), never a hang; a thread that runs for ``stall_s`` seconds
without reaching a scheduling point is interrupted by a SIGALRM watchdog (main thread only).  An
exception escaping a thread, or an invariant violation, ends the schedule with a bug that names the
workload and the schedule.  Invariants are checked at every decision at which no lock is held (a
*quiescent* state another thread could observe), ``quiescent=False`` ones after every step, and all
at the end.  A violation that is repaired before any other thread can run (a step with a single
enabled thread) is unobservable and is not reported; skipping those checks is what keeps the
per-step cost low.  A depth-first search re-executes the prefix of its stack in every schedule;
the states at those decisions are the ones an earlier execution of the same choices reached and
checked (executions are deterministic functions of their choices, which the DFS verifies at
every replayed decision), so they are not checked again: every distinct decision state of the
search is checked once (``Chooser.checked_prefix``).

*How replay works.*  Workloads are deterministic functions of the schedule: the same choices
reproduce the same execution.  A schedule string lists the choices up to the last non-default one
(default: keep running the previous thread if it is enabled, else the lowest-numbered enabled
thread) plus a CRC of the operation trace; replay follows the choices, and reports a divergence if a
listed choice is not enabled, choices are left over, or the trace hash differs (the code changed).
Randomized strategies derive each schedule's random stream from ``(seed, schedule index)`` only, so
any schedule of a random search is reproducible alone.

*Why stateless search, and what reduction is sound.*  Model states (physical memory, driver
objects, Python stacks inside greenlets) cannot be hashed or copied cheaply, so the search is
stateless (VeriSoft/CHESS): each schedule re-executes from the initial world, reset by a snapshot.
Depth-first search over decision choices is exhaustive; preemption bounding (CHESS) bounds the
number of switches away from a still-enabled thread, which finds most concurrency bugs at bounds 1-2
and makes "exhausted within bound b" a checkable statement.  Sleep sets (Godefroid) are the
partial-order reduction used, with a conservative dependence relation between pending operations:
operations on different locks commute, unlocked accesses to different objects or two reads commute,
anything else (same lock, a write against an access to the same object, any ``point``, any lock
operation against an unlocked access) is dependent.  Under the sync contract (all unlocked shared
accesses declared; locked state touched only while holding its lock) this preserves every reachable
state, hence every invariant verdict, deadlock and final state.  Sleep sets are only applied to the
unbounded search: combined with preemption bounding they can prune the only in-bound representative
of an equivalence class.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
import traceback
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

from greenlet import greenlet

from vtdsim.driver import sync
from vtdsim.driver.sync import SpinLock
from vtdsim.explore.base import Workload, workload_error
from vtdsim.explore.invariants import Invariant, check_all
from vtdsim.explore.names import check_only, exception_bug_name
from vtdsim.explore.report import Bug, OpRecord
from vtdsim.explore.schedule import Schedule, trace_hash

__all__ = [
    "DEFAULT_STEP_BUDGET",
    "Chooser",
    "Execution",
    "Outcome",
    "Runner",
    "StallError",
    "watchdog",
]

DEFAULT_STEP_BUDGET = 10_000
#: operations kept in a bug report (the last ones; replay shows them all)
BUG_OPS = 200

# pending-operation kinds
START = "start"
ACQUIRE = "acquire"
RELEASE = "release"
READ = "read"
WRITE = "write"
POINT = "point"

_MAIN = -1  # identity of code running outside logical threads (setup, invariants)
_STOP = object()  # sent to the scheduler greenlet by a thread that ends the schedule


class StallError(BaseException):
    """Raised inside a logical thread by the watchdog: no scheduling point for too long."""


class _Abort(BaseException):
    """Thrown into suspended threads to unwind them when a schedule ends early."""


class Chooser(Protocol):
    """A strategy's per-schedule decision maker."""

    def choose(self, ex: Execution, enabled: Sequence[int], last: int) -> int | None:
        """Pick one of ``enabled`` (sorted thread indexes); ``last`` is the thread that ran the
        previous step (-1 at the start).  Returning None abandons the schedule (pruned).

        Called at decisions (two or more enabled threads) only, unless the chooser has a true
        ``every_step`` attribute (partial-order reduction needs to see every step).

        A chooser may also have a ``checked_prefix`` attribute: the number of leading calls
        whose states an earlier execution of the same choices already checked (the DFS replays
        its stack); the step invariants are not re-evaluated there."""


class _Thread:
    __slots__ = (
        "done",
        "error",
        "fn",
        "glet",
        "held",
        "kind",
        "main",
        "name",
        "obj",
        "result",
        "started",
        "tb",
        "tid",
    )

    def __init__(self, tid: int, name: str, fn: Any) -> None:
        self.tid = tid
        self.name = name
        self.fn = fn
        self.glet: Any = None
        self.main: Any = None
        self.started = False
        self.kind = START
        self.obj: Any = None
        self.done = False
        self.result: object = None
        self.error: BaseException | None = None
        self.tb: str | None = None
        #: locks this thread holds (acquired by a scheduled step, not yet released)
        self.held = 0


class Outcome:
    """What one schedule did (internal; strategies turn it into reports).  The counts and the
    bug are copied (strategies may rewrite the bug: ``_ended_early``); the rest is read from
    the execution when asked for."""

    __slots__ = (
        "bug_kind",
        "bug_message",
        "bug_name",
        "choices",
        "defaults",
        "ex",
        "preemptions",
        "pruned",
        "steps",
    )

    def __init__(self, ex: Execution) -> None:
        self.ex = ex
        self.choices: list[int] = ex.choices
        self.defaults: list[bool] = ex.defaults
        self.preemptions = ex.preemptions
        self.steps = ex.steps
        self.pruned = ex.pruned
        self.bug_kind: str | None = ex.bug_kind
        self.bug_name = ex.bug_name
        self.bug_message = ex.bug_message

    @property
    def decisions(self) -> int:
        return len(self.choices)

    @property
    def results(self) -> list[object]:
        """Each thread's return value (None for one that did not finish)."""
        return [t.result for t in self.ex.threads]

    @property
    def tb(self) -> str | None:
        return self.ex.bug_tb

    @property
    def failed(self) -> bool:
        return self.bug_kind is not None

    def significant_choices(self) -> tuple[int, ...]:
        """Choices up to the last non-default one (the rest replays by default)."""
        n = len(self.defaults)
        while n and self.defaults[n - 1]:
            n -= 1
        return tuple(self.choices[:n])

    def schedule(self, workload: Workload, with_hash: bool = True) -> Schedule:
        return Schedule(
            workload.name,
            workload.variant,
            self.significant_choices(),
            self.trace_hash() if with_hash else None,
        )

    def trace_hash(self) -> str:
        return trace_hash(self.ex.named_trace())

    def ops(self) -> tuple[OpRecord, ...]:
        names = [t.name for t in self.ex.threads]
        return tuple(
            OpRecord(i, names[tid], f"{kind} {name}".rstrip())
            for i, (tid, kind, name) in enumerate(self.ex.named_trace())
        )

    def bug(self, workload: Workload) -> Bug | None:
        if self.bug_kind is None:
            return None
        return Bug(
            kind=self.bug_kind,
            name=self.bug_name,
            message=self.bug_message,
            workload=workload.name,
            variant=workload.variant,
            schedule=str(self.schedule(workload)),
            preemptions=self.preemptions,
            steps=self.steps,
            ops=self.ops()[-BUG_OPS:],
            traceback=self.tb,
        )


class Execution:
    """One schedule of one workload; also the :class:`sync.SyncBackend` while it runs."""

    #: invariants with an ``on_alloc`` check, run by :meth:`allocated` (set by the Runner)
    alloc_invariants: Sequence[Invariant] = ()
    #: :meth:`release` raises LockingError itself for a lock the caller does not hold
    #: (:class:`vtdsim.driver.sync.SyncBackend`): locks skip their ``ident()`` call
    release_checks_owner = True
    # Set only when something happens (a bug, a prune, a strategy's own error): class
    # defaults, not per-schedule instance attributes.
    bug_kind: str | None = None
    bug_name = ""
    bug_message = ""
    bug_tb: str | None = None
    pruned = False
    _error: BaseException | None = None
    #: the initial world already passed the step invariants (it is the same snapshot every
    #: schedule): the check before the first step is skipped (set by the Runner)
    initial_checked = False
    # Counters and rarely used state start as class defaults too (an instance attribute from
    # the first assignment on): an Execution is made per schedule.
    preemptions = 0
    steps = 0
    _calls = 0
    #: leading decisions taken by the engine from the chooser's ``replay`` (see ``_replay``)
    replayed = 0
    _cur: _Thread | None = None
    #: object numbering of :meth:`op_signature` (made on first use), and the numbered
    #: objects, kept alive (their ids stay unique; made on first use)
    _objnum: dict[Any, int] | None = None
    _keep: list[object] | None = None

    def __init__(
        self,
        world: Any,
        threads: Sequence[tuple[str, Any]],
        chooser: Chooser,
        step_invariants: Sequence[Invariant],
        step_budget: int = DEFAULT_STEP_BUDGET,
        only: str | None = None,
        always_invariants: Sequence[Invariant] | None = None,
    ) -> None:
        self.world = world
        self.only = only
        self.threads = [_Thread(i, name, fn) for i, (name, fn) in enumerate(threads)]
        self.chooser = chooser
        self.step_invariants = step_invariants
        #: the step invariants checked after every step, not only at quiescent decisions
        #: (``always_invariants``: the same, precomputed by the Runner)
        self.always_invariants: Sequence[Invariant] = (
            [i for i in step_invariants if not i.quiescent]
            if always_invariants is None
            else always_invariants
        )
        self.step_budget = step_budget
        self.choices: list[int] = []
        self.defaults: list[bool] = []
        self.trace: list[tuple[int, str, Any]] = []
        self._main: Any = None
        self._live: list[_Thread] = []
        self._inline = not getattr(chooser, "every_step", False)
        #: decisions (chooser calls) whose state was already checked in an earlier execution
        #: of the same prefix (see :attr:`Chooser.checked_prefix`): their checks are skipped
        self.checked_prefix = int(getattr(chooser, "checked_prefix", 0))
        #: choices of the leading decisions, taken by the engine without calling the chooser
        #: (the DFS's replayed prefix, :attr:`DfsChooser.replay`); ``replayed`` counts them
        self._replay: Sequence[int] = getattr(chooser, "replay", ())
        #: :meth:`_yield` decides inline: the chooser does not see every step and nothing is
        #: checked at every step ...
        self._fast = self._inline and not self.always_invariants
        #: ... and the leading replayed decisions whose states were checked before (all of
        #: them when nothing is checked at decisions) are taken inline
        self._fast_replay = (
            min(len(self._replay), self.checked_prefix) if step_invariants else len(self._replay)
        )

    @property
    def held(self) -> int:
        """Locks held by the logical threads (each thread counts its own: a finishing thread
        then knows whether it holds any without looking through the trace)."""
        n = 0
        for t in self.threads:
            n += t.held
        return n

    # -- SyncBackend -----------------------------------------------------------------------------

    def ident(self) -> object:
        t = self._cur
        return _MAIN if t is None else t.tid

    def acquire(self, lock: SpinLock) -> None:
        t = self._cur
        if t is None:
            if lock.owner is not None:
                raise sync.LockingError(f"{lock.name} is held: cannot take it outside a thread")
            lock.owner = _MAIN
            return
        t.kind = ACQUIRE
        t.obj = lock
        self._yield(t)
        # scheduled: the scheduler only picks us when the lock is free
        lock.owner = t.tid
        t.held += 1

    def release(self, lock: SpinLock) -> None:
        # release_checks_owner: the ownership check of SpinLock.release, here (no ident() call)
        t = self._cur
        if t is None:
            if lock.owner != _MAIN:
                raise sync.LockingError(
                    f"{lock.kind} {lock.name} released by a thread that does not hold it"
                )
            lock.owner = None
            return
        if lock.owner != t.tid:
            raise sync.LockingError(
                f"{lock.kind} {lock.name} released by a thread that does not hold it"
            )
        t.kind = RELEASE
        t.obj = lock
        self._yield(t)
        lock.owner = None
        t.held -= 1

    def allocated(self, kind: str, value: int, owner: object, scope: object = None) -> None:
        """An allocator handed out ``value`` (:func:`sync.allocated`; not a scheduling point):
        run the ``on_alloc`` invariants now, inside the allocating thread's step, and end the
        schedule with the first violation."""
        invs = self.alloc_invariants
        t = self._cur
        if not invs or t is None:
            return
        self._cur = None  # checks run outside any logical thread
        found: tuple[str, str] | None = None
        try:
            for inv in invs:
                assert inv.on_alloc is not None
                for msg in inv.on_alloc(self.world, kind, value, owner, scope):
                    if self.only is None or inv.reports(self.only):
                        found = (inv.name, msg)
                        break
                if found is not None:
                    break
        except Exception as e:
            self.bug_tb = traceback.format_exc()
            found = ("", f"an allocation check raised: {e}")
            self._bug("exception", type(e).__name__, found[1])
        else:
            if found is not None:
                self._bug("invariant", found[0], found[1])
        if found is None:
            self._cur = t
            return
        self._main.switch(_STOP)  # the schedule ends; _kill throws _Abort in here
        raise _Abort

    def access(self, label: str, key: object, write: bool) -> None:
        t = self._cur
        if t is None:
            return
        t.kind = WRITE if write else READ
        t.obj = (label, key)
        self._yield(t)

    def point(self, label: str) -> None:
        t = self._cur
        if t is None:
            return
        t.kind = POINT
        t.obj = label
        self._yield(t)

    def _yield(self, t: _Thread) -> None:
        """End thread ``t``'s step (its pending operation is recorded) and take the next
        scheduling decision right here, in ``t``'s greenlet: if ``t`` runs next, return without
        any switch; otherwise switch directly to the chosen thread.  The scheduler greenlet is
        only involved when a thread finishes or the schedule ends (bug, prune).

        The common steps are decided inline (see the module docstring, "per-step cost"): one
        or two live threads, the chooser not called at every step and no invariant checked at
        every step, and either at most one enabled thread (a forced step) or a replayed
        decision whose state an earlier execution already checked.  Everything else, and
        anything unusual on the way (a replayed choice that is not enabled: divergence), goes
        through :meth:`_choose`, which decides."""
        live = self._live
        u: _Thread | None = None
        if self._fast:
            if len(live) == 2:
                a, b = live
                if a.kind is not ACQUIRE or a.obj.owner is None:
                    if b.kind is not ACQUIRE or b.obj.owner is None:
                        calls = self._calls
                        if calls < self._fast_replay:
                            tid = self._replay[calls]
                            u = a if tid == a.tid else b if tid == b.tid else None
                            if u is not None:
                                # _choose's bookkeeping of a decision (t is enabled: it is
                                # a or b, so the default is to keep running it)
                                self._calls = calls + 1
                                self.replayed = calls + 1
                                self.choices.append(tid)
                                if u is t:
                                    self.defaults.append(True)
                                else:
                                    self.defaults.append(False)
                                    self.preemptions += 1
                    else:
                        u = a
                elif b.kind is not ACQUIRE or b.obj.owner is None:
                    u = b
            elif len(live) == 1:
                u = live[0]
                if u.kind is ACQUIRE and u.obj.owner is not None:
                    u = None  # deadlock: _choose reports it
        if u is None:
            self._cur = None  # decisions and invariant checks run outside any logical thread
            try:
                u = self._choose(live, t.tid)
            except BaseException as e:  # a strategy's own error: re-raised by the scheduler
                self._error = e
                u = None
            if u is None:
                self._main.switch(_STOP)  # the schedule ends; _kill throws _Abort in here
                raise _Abort
            self._cur = t
        steps = self.steps + 1
        self.steps = steps
        if steps > self.step_budget:
            self._cur = None
            self._bug(
                "step-budget",
                "step-budget",
                f"schedule did not terminate within {self.step_budget} steps",
            )
            self._main.switch(_STOP)
            raise _Abort
        self.trace.append((u.tid, u.kind, u.obj))
        if u is not t:
            self._cur = u
            if u.started:
                u.glet.switch()
            else:
                u.started = True
                u.glet.switch(u)
            # resumed: the thread that chose us set ``self._cur``

    # -- the scheduler loop ----------------------------------------------------------------------

    def run(self) -> Execution:
        main = greenlet.getcurrent()
        self._main = main
        workers = _take_workers(main, len(self.threads))
        for t, g in zip(self.threads, workers, strict=True):
            t.glet = g
            t.main = main
        live = list(self.threads)
        self._live = live
        previous = sync.install(self)
        global _running
        _running = self
        try:
            self._loop(live)
        finally:
            _running = None
            self._kill(live)
            sync.install(previous)
            if self.held:  # (0: every acquisition by a thread was released)
                for lock in self._acquired():
                    lock.owner = None
            # (a worker still inside a task is dropped: it did not come back to the scheduler)
            _give_back(main, [t.glet for t in self.threads if t.done or not t.started])
        return self

    def _loop(self, live: list[_Thread]) -> None:
        """The scheduler greenlet: starts the first step, and takes over when a thread
        finishes (threads take the decisions between their own steps, see :meth:`_yield`)."""
        last = -1
        while live:
            t = self._first_step() if last == -1 else None
            if t is None:
                t = self._decide(last)
            if t is None:
                return
            self._cur = t
            if t.started:
                got = t.glet.switch()
            else:
                t.started = True
                got = t.glet.switch(t)
            self._cur = None
            if self._error is not None:
                e = self._error
                self._error = None
                raise e
            if got is _STOP or not isinstance(got, _Thread):
                return
            t = got
            live.remove(t)
            if t.error is not None:
                e = t.error
                kind = "stall" if isinstance(e, StallError) else "exception"
                self.bug_tb = t.tb
                self._bug(kind, exception_bug_name(e), f"thread {t.name}: {e}")
                return
            held = [lk.name for lk in self._acquired() if lk.owner == t.tid] if t.held else ()
            if held:
                self._bug(
                    "invariant",
                    "lock-held-at-exit",
                    f"thread {t.name} finished holding {', '.join(held)}",
                )
                return
            last = t.tid

    def _first_step(self) -> _Thread | None:
        """The first step of a two-thread schedule whose first decision is replayed and was
        checked before (:meth:`_yield`'s inline decision, at the start: both threads are at
        their start, so both are enabled, and no thread ran before, so the default is the
        lower-numbered one); None: :meth:`_decide` takes it."""
        live = self._live
        if not (
            self._fast
            and len(live) == 2
            and self._fast_replay
            and not self.steps
            and self.step_budget >= 1
        ):
            return None
        a, b = live
        tid = self._replay[0]
        u = a if tid == a.tid else b if tid == b.tid else None
        if u is None or u.kind is not START or (a if u is b else b).kind is not START:
            return None
        self._calls = 1
        self.replayed = 1
        self.choices.append(tid)
        self.defaults.append(u is a)
        self.steps = 1
        self.trace.append((tid, START, u.obj))
        return u

    def _decide(self, last: int) -> _Thread | None:
        """One scheduling decision after ``last``'s step (-1: the first): invariant checks,
        the choice among enabled threads, the step count and the trace.  Returns the thread
        to run, or None when the schedule ends (bug, prune, divergence, step budget)."""
        live = self._live
        # one thread left and nothing to check at every step: the step is forced (no choice)
        t: _Thread | None = (
            live[0] if len(live) == 1 and self._inline and not self.always_invariants else None
        )
        if t is None or (t.kind is ACQUIRE and t.obj.owner is not None):
            t = self._choose(live, last)
            if t is None:
                return None
        steps = self.steps + 1
        self.steps = steps
        if steps > self.step_budget:
            self._bug(
                "step-budget",
                "step-budget",
                f"schedule did not terminate within {self.step_budget} steps",
            )
            return None
        self.trace.append((t.tid, t.kind, t.obj))
        return t

    def _choose(self, live: list[_Thread], last: int) -> _Thread | None:
        """The thread to run next (checks at decisions, then the chooser's pick), or None
        when the schedule ends here (deadlock, violation, prune, divergence)."""
        if len(live) == 2:  # the common case: no comprehension frames
            a, b = live
            if a.kind is not ACQUIRE or a.obj.owner is None:
                enabled = live[:] if b.kind is not ACQUIRE or b.obj.owner is None else [a]
            else:
                enabled = [b] if b.kind is not ACQUIRE or b.obj.owner is None else []
        else:
            enabled = [t for t in live if t.kind is not ACQUIRE or t.obj.owner is None]
        if not enabled:
            self._bug(
                "deadlock",
                "deadlock",
                "no enabled thread; blocked: "
                + ", ".join(f"{t.name} waits for {t.obj.name}" for t in live),
            )
            return None
        if len(enabled) == 1 and self._inline:
            always = self.always_invariants
            if always and self._check_step(always):
                return None
            t = enabled[0]
        else:
            calls = self._calls
            self._calls = calls + 1
            step_invs = self.step_invariants
            if (
                step_invs
                and calls >= self.checked_prefix
                and (self.steps or not self.initial_checked)
                and self._check_step(step_invs if self.held == 0 else self.always_invariants)
            ):
                return None
            tids = (
                [enabled[0].tid, enabled[1].tid] if len(enabled) == 2 else [e.tid for e in enabled]
            )
            if calls < len(self._replay):
                tid: int | None = self._replay[calls]
                self.replayed = calls + 1
            else:
                tid = self.chooser.choose(self, tids, last)
            if tid is None:
                self.pruned = self.bug_kind is None
                return None
            if tid not in tids:
                self._bug(
                    "divergence",
                    "divergence",
                    f"decision {len(self.choices)}: thread {tid} is not enabled "
                    f"(enabled: {tids}): the execution does not follow its schedule; the "
                    "workload is nondeterministic or the code changed since the schedule "
                    "was recorded",
                )
                return None
            if len(tids) > 1:
                last_enabled = last in tids
                self.choices.append(tid)
                self.defaults.append(tid == (last if last_enabled else tids[0]))
                if last_enabled and tid != last:
                    self.preemptions += 1
            t = self.threads[tid]
        return t

    def _acquired(self) -> list[SpinLock]:
        """Every lock a thread was scheduled to acquire, in first-acquisition order (from the
        trace: rarely needed, so nothing is recorded per acquisition)."""
        return list(dict.fromkeys(obj for _tid, kind, obj in self.trace if kind is ACQUIRE))

    def _check_step(self, invs: Sequence[Invariant]) -> bool:
        try:
            v = check_all(invs, self.world, self.only)
        except Exception as e:
            self.bug_tb = traceback.format_exc()
            self._bug("exception", type(e).__name__, f"an invariant raised: {e}")
            return True
        if v is not None:
            self._bug("invariant", v[0], v[1])
            return True
        return False

    def _bug(self, kind: str, name: str, message: str) -> None:
        self.bug_kind = kind
        self.bug_name = name
        self.bug_message = message

    def _kill(self, live: list[_Thread]) -> None:
        """Unwind the threads still suspended inside the workload (the schedule ended early):
        :class:`_Unwinder` is the backend meanwhile, so that their ``finally`` blocks and
        ``with`` exits release locks without taking scheduling decisions (the caller
        installs the previous backend again)."""
        if not live:
            return  # every thread finished (the common case): nothing to unwind
        unwinder = _Unwinder(self)
        sync.install(unwinder)
        try:
            for t in live:
                g = t.glet
                if t.started and not t.done and g is not None and g and not g.dead:
                    self._cur = t
                    with contextlib.suppress(_Abort):
                        g.throw(_Abort)
        finally:
            self._cur = None

    def diverge(self, message: str) -> None:
        """Called by a chooser that sees the execution leave its recorded schedule."""
        self._bug("divergence", "divergence", message)

    # -- naming (reports, hashes, partial-order reduction) ---------------------------------------

    def _num(self, key: Any, obj: object) -> int:
        objnum = self._objnum
        keep = self._keep
        if objnum is None or keep is None:
            objnum = self._objnum = {}
            keep = self._keep = []
        n = objnum.get(key)
        if n is None:
            n = len(objnum)
            objnum[key] = n
            keep.append(obj)
        return n

    def op_signature(self, tid: int) -> tuple[str, int]:
        """A schedule-independent name of thread ``tid``'s pending operation: kind and the
        first-appearance number of its object (lock, or accessed (label, key))."""
        t = self.threads[tid]
        kind = t.kind
        obj = t.obj
        if kind is ACQUIRE or kind is RELEASE:
            return (kind, self._num(("L", id(obj)), obj))
        if kind is READ or kind is WRITE:
            label, key = obj
            return (kind, self._num(("A", label, _keyid(key)), key))
        return (kind, -1)

    def named_trace(self) -> list[tuple[int, str, str]]:
        numbering: dict[Any, str] = {}
        seen_names: dict[str, int] = {}
        out: list[tuple[int, str, str]] = []
        for tid, kind, obj in self.trace:
            if kind is ACQUIRE or kind is RELEASE:
                k: Any = id(obj)
                base = obj.name
            elif kind is READ or kind is WRITE:
                k = (obj[0], _keyid(obj[1]))
                base = obj[0]
            elif kind is POINT:
                out.append((tid, kind, str(obj)))
                continue
            else:
                out.append((tid, kind, ""))
                continue
            name = numbering.get(k)
            if name is None:
                n = seen_names.get(base, 0)
                seen_names[base] = n + 1
                name = base if n == 0 else f"{base}#{n}"
                numbering[k] = name
            out.append((tid, kind, name))
        return out


class _Unwinder:
    """The sync backend while :meth:`Execution._kill` unwinds suspended threads: an acquire
    aborts the unwinding thread again, a release just releases, other points are no-ops (no
    scheduling decisions, no checks).  Kept out of :class:`Execution` so that its per-step
    methods do not test for unwinding."""

    __slots__ = ("ex",)

    def __init__(self, ex: Execution) -> None:
        self.ex = ex

    def ident(self) -> object:
        t = self.ex._cur
        return _MAIN if t is None else t.tid

    def acquire(self, lock: SpinLock) -> None:
        raise _Abort

    def release(self, lock: SpinLock) -> None:
        owner = lock.owner
        if type(owner) is int and owner != _MAIN:  # held by a logical thread: its tid
            self.ex.threads[owner].held -= 1
        lock.owner = None

    def access(self, label: str, key: object, write: bool) -> None:
        return

    def point(self, label: str) -> None:
        return


def _keyid(key: object) -> object:
    if key is None or isinstance(key, int | str | bytes | float | tuple):
        return key
    return id(key)


def _worker(t: _Thread) -> None:
    """A reusable logical-thread greenlet: runs one thread's function per task, reports its
    end to the scheduler greenlet, and waits there for the next task (creating a greenlet
    costs ~10 us, a switch ~0.3 us)."""
    while True:
        try:
            t.result = t.fn()
        except _Abort:
            pass
        except StallError as e:
            t.error = e
            t.tb = traceback.format_exc()
        except Exception as e:
            t.error = e
            t.tb = traceback.format_exc()
        t.done = True
        t = t.main.switch(t)


#: the most idle workers a scheduler greenlet keeps (more are dropped)
_POOL_MAX = 16


def _take_workers(main: Any, n: int) -> list[Any]:
    """``n`` idle worker greenlets, children of ``main`` (the greenlet running the schedule),
    taken out of ``main``'s pool until :func:`_give_back`.  The pool lives on ``main`` itself:
    a greenlet switches only within its OS thread, and its pool holds only its own parked
    children (finished their task, or never started), so no worker needs checking here."""
    free: list[Any] | None = getattr(main, "_vtdsim_idle", None)
    if free is None:
        free = main._vtdsim_idle = []
    k = len(free)
    if k >= n:
        out = free[k - n :]
        del free[k - n :]
        return out
    out = free[:]
    free.clear()
    while len(out) < n:
        out.append(greenlet(_worker, main))
    return out


def _give_back(main: Any, workers: list[Any]) -> None:
    """Return idle workers (parked children of ``main``) to its pool."""
    free: list[Any] = main._vtdsim_idle
    room = _POOL_MAX - len(free)
    if room > 0:
        free.extend(workers[:room])


_running: Execution | None = None


class Runner:
    """Runs schedules of one workload: world reset, invariants, budget."""

    def __init__(
        self,
        workload: Workload,
        *,
        step_budget: int = DEFAULT_STEP_BUDGET,
        step_checks: bool = True,
        only: str | None = None,
    ) -> None:
        self.workload = workload
        self.step_budget = step_budget
        only = check_only(workload, only)  # ArgumentError for an unknown name
        self.only = only
        invs = tuple(workload.invariants())
        if only is not None:
            invs = tuple(i for i in invs if i.reports(only))
        self.step_invariants = tuple(i for i in invs if i.at_step) if step_checks else ()
        self.always_invariants = tuple(i for i in self.step_invariants if not i.quiescent)
        self.end_invariants = tuple(i for i in invs if i.at_end)
        #: checked at each allocation (:func:`vtdsim.driver.sync.allocated`)
        self.alloc_invariants = tuple(i for i in invs if i.at_alloc) if step_checks else ()
        self._world: Any = None
        self._snap: object | None = None
        self._dirty = False
        self._initial_ok = False
        self.executions = 0
        self.total_steps = 0

    def fresh_world(self) -> Any:
        """The world for the next schedule.  A workload whose ``setup``/``snapshot``/``restore``
        raises is reported as a :class:`WorkloadError` naming it (never a raw traceback)."""
        try:
            return self._fresh_world()
        except Exception as e:
            stage = (
                "setup() (before its first schedule)"
                if self._world is None
                else f"the world reset before schedule {self.executions + 1}"
            )
            raise workload_error(self.workload, stage, e) from e

    def _fresh_world(self) -> Any:
        wl = self.workload
        if self._world is None:
            self._world = wl.setup()
            self._snap = wl.snapshot(self._world)
        elif self._dirty:
            if self._snap is None:
                self._world = wl.setup()
            else:
                self._world = wl.restore(self._world, self._snap)
        self._dirty = True
        return self._world

    def execute(self, chooser: Chooser) -> Outcome:
        wl = self.workload
        world = self.fresh_world()
        ex = Execution(
            world,
            wl.threads(world),
            chooser,
            self.step_invariants,
            self.step_budget,
            self.only,
            self.always_invariants,
        )
        ex.initial_checked = self._initial_ok and self._snap is not None
        if self.alloc_invariants:
            ex.alloc_invariants = self.alloc_invariants
        ex.run()
        if ex.steps > 0 and not ex.pruned:
            self._initial_ok = True
        self.executions += 1
        self.total_steps += ex.steps
        if ex.bug_kind is None and not ex.pruned:
            self._end_checks(ex, world)
        return Outcome(ex)

    def _end_checks(self, ex: Execution, world: Any) -> None:
        try:
            v = check_all(self.end_invariants, world, self.only)
            if v is not None:
                ex._bug("invariant", v[0], v[1])
                return
            if self.only is not None and self.only != f"{self.workload.name}-end":
                return
            msgs = list(self.workload.check_end(world, [t.result for t in ex.threads]))
            if msgs:
                ex._bug("invariant", f"{self.workload.name}-end", msgs[0])
        except Exception as e:
            ex.bug_tb = traceback.format_exc()
            ex._bug("exception", type(e).__name__, f"end check raised: {e}")


@contextlib.contextmanager
def watchdog(stall_s: float | None) -> Iterator[None]:
    """Interrupt a logical thread that runs ``stall_s`` seconds without a scheduling point
    (SIGALRM; only effective in the main thread of the main interpreter).  An alarm armed by
    someone else (pytest-timeout, for example) is kept: its handler still runs at its deadline,
    and its timer is re-armed afterwards."""
    if (
        not stall_s
        or threading.current_thread() is not threading.main_thread()
        or not hasattr(signal, "setitimer")
    ):
        yield
        return
    seen: list[Any] = [None, -1]
    start = time.monotonic()
    old_handler = signal.getsignal(signal.SIGALRM)
    old_delay, old_interval = signal.getitimer(signal.ITIMER_REAL)
    old_deadline = start + old_delay if old_delay > 0 else None

    def handler(signum: int, frame: Any) -> None:
        if old_deadline is not None and time.monotonic() >= old_deadline and callable(old_handler):
            old_handler(signum, frame)
        ex = _running
        if ex is None or ex._cur is None:
            seen[0] = None
            return
        if seen[0] is ex and seen[1] == ex.steps:
            raise StallError(f"no scheduling point for {stall_s:g} s")
        seen[0] = ex
        seen[1] = ex.steps

    signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, stall_s, stall_s)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0, 0)
        signal.signal(signal.SIGALRM, old_handler if old_handler is not None else signal.SIG_DFL)
        if old_deadline is not None:
            left = old_deadline - time.monotonic()
            signal.setitimer(signal.ITIMER_REAL, max(left, 1e-3), old_interval)
