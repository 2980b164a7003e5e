"""The explorer engine's fast paths against the general ones (differential tests).

Fast paths (:mod:`vtdsim.explore.scheduler`, :mod:`vtdsim.driver.sync`):

* ``SpinLock.__enter__``/``__exit__`` call the backend directly (general: through
  ``acquire``/``release``);
* the engine takes the DFS's replayed decisions before the deepest one from
  ``DfsChooser.replay`` without calling the chooser (general: every decision calls ``choose``);
* ``Execution._choose`` computes the enabled threads of a two-thread schedule without
  comprehensions (general: the comprehension below, :func:`_reference_choose`);
* ``Execution._yield`` decides forced steps and replayed decisions inline (general: every step
  through ``_decide``, :func:`_reference_yield`), and ``Execution._first_step`` a replayed
  first decision (general: ``_decide``).

Each test runs the same search both ways and compares every execution: schedule string with
its trace hash, outcome, steps, preemptions, pruning.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from vtdsim.driver import sync
from vtdsim.explore import explore, get_workload, scheduler, strategies
from vtdsim.explore.base import ThreadFn, Workload
from vtdsim.explore.invariants import Invariant
from vtdsim.explore.scheduler import _STOP, ACQUIRE, Execution, Runner, _Abort, _Thread
from vtdsim.explore.strategies import DfsChooser, Segment, _Dfs

Record = tuple[Any, ...]


def _reference_choose(self: Execution, live: list[_Thread], last: int) -> _Thread | None:
    """The general decision path (before the fast paths): enabled threads by comprehension,
    every decision through the chooser."""
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
        return enabled[0]
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
    tids = [e.tid for e in enabled]
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
    return self.threads[tid]


def _reference_yield(self: Execution, t: _Thread) -> None:
    """The general step path (before the inline decisions): every step through ``_decide``."""
    self._cur = None
    try:
        u = self._decide(t.tid)
    except BaseException as e:
        self._error = e
        u = None
    if u is None:
        self._main.switch(_STOP)
        raise _Abort
    self._cur = u
    if u is not t:
        if u.started:
            u.glet.switch()
        else:
            u.started = True
            u.glet.switch(u)


class _GeneralDfsChooser(DfsChooser):
    """Every decision through :meth:`choose` (no engine-side replay)."""

    def __init__(self, search: Any) -> None:
        super().__init__(search)
        self.replay = []
        self.i = 0


def _enter(self: sync.SpinLock) -> sync.SpinLock:
    self.acquire()
    return self


def _exit(self: sync.SpinLock, exc_type: object, exc: object, tb: object) -> None:
    self.release()


def _record(wl: Workload, bound: int | None, por: bool) -> tuple[list[Record], Record]:
    runner = Runner(wl)
    runner.fresh_world()
    recs: list[Record] = []
    orig = runner.execute

    def execute(chooser: Any) -> Any:
        out = orig(chooser)
        recs.append(
            (
                str(out.schedule(wl)),
                tuple(out.choices),
                tuple(out.defaults),
                out.bug_kind,
                out.bug_name,
                out.bug_message,
                out.steps,
                out.preemptions,
                out.pruned,
            )
        )
        return out

    runner.execute = execute  # type: ignore[method-assign]
    seg = _Dfs(runner, bound=bound, por=por).run(Segment(), False, None)
    summary = (seg.schedules, seg.pruned, seg.steps, seg.bound_hit, [str(b) for _i, b in seg.bugs])
    return recs, summary


class _Toy(Workload):
    """Two (or three) threads of lock operations, points and unlocked accesses; ``explicit``
    uses ``acquire()``/``release()`` instead of ``with``."""

    name = "engine-fast-toy"

    def __init__(self, nthreads: int = 2, n: int = 3, explicit: bool = False) -> None:
        super().__init__()
        self.nthreads = nthreads
        self.n = n
        self.explicit = explicit

    def setup(self) -> Any:
        return {"a": sync.SpinLock("a"), "b": sync.Mutex("b"), "x": [0]}

    def threads(self, world: Any) -> Sequence[tuple[str, Any]]:
        la, lb, x = world["a"], world["b"], world["x"]

        def make(i: int) -> Any:
            def f() -> int:
                for k in range(self.n):
                    lock = la if (i + k) % 2 == 0 else lb
                    if self.explicit:
                        lock.acquire()
                        sync.point("p")
                        x[0] += 1
                        lock.release()
                    else:
                        with lock:
                            sync.point("p")
                            x[0] += 1
                    sync.shared_read("x", k)
                    if k == 1:
                        sync.shared_write("x", 0)
                return x[0]

            return f

        return [(f"t{i}", make(i)) for i in range(self.nthreads)]


WORKLOADS: list[tuple[str, Any]] = [
    ("toy2", lambda: _Toy(2, 3)),
    ("toy3", lambda: _Toy(3, 2)),
    ("toy-counter", lambda: get_workload("toy-counter")),
    ("toy-deadlock", lambda: get_workload("toy-deadlock")),
    ("toy-three", lambda: get_workload("toy-three")),
    ("toy-aux/v5", lambda: get_workload("toy-aux", "v5")),
    ("toy-aux/corrected", lambda: get_workload("toy-aux", "corrected")),
    ("a/v5", lambda: get_workload("a", "v5")),
    ("a/corrected", lambda: get_workload("a", "corrected")),
    ("c/v5", lambda: get_workload("c", "v5")),
]


@pytest.mark.parametrize(("bound", "por"), [(1, False), (2, False), (None, True)])
@pytest.mark.parametrize(("name", "make"), WORKLOADS, ids=[w[0] for w in WORKLOADS])
def test_fast_paths_match_general(
    name: str, make: Any, bound: int | None, por: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if por and name == "c/v5":
        bound, por = 3, False  # its unbounded tree is too large for a unit test
    if por and name in ("toy2", "toy3"):
        make = lambda: _Toy(int(name[-1]), 1)  # noqa: E731 (unbounded: keep it small)
    fast = _record(make(), bound, por)
    with monkeypatch.context() as m:
        m.setattr(Execution, "_choose", _reference_choose)
        m.setattr(Execution, "_yield", _reference_yield)
        m.setattr(Execution, "_first_step", lambda self: None)
        m.setattr(strategies, "DfsChooser", _GeneralDfsChooser)
        m.setattr(sync.SpinLock, "__enter__", _enter)
        m.setattr(sync.SpinLock, "__exit__", _exit)
        slow = _record(make(), bound, por)
    assert fast[0], "no execution recorded"
    assert fast == slow


def test_explicit_and_with_locks_explore_alike() -> None:
    assert _record(_Toy(2, 3, explicit=True), 1, False) == _record(_Toy(2, 3), 1, False)


def test_replayed_decisions_skip_the_chooser(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without sleep sets the chooser sees only the deepest replayed decision and new ones;
    with sleep sets every decision (signature numbering)."""
    calls: list[tuple[int, int]] = []
    orig = DfsChooser.choose

    def choose(self: DfsChooser, ex: Execution, enabled: Sequence[int], last: int) -> int | None:
        calls.append((self.i, self.depth))
        return orig(self, ex, enabled, last)

    monkeypatch.setattr(DfsChooser, "choose", choose)
    _record(_Toy(2, 3), 1, False)
    assert calls and all(i >= depth - 1 for i, depth in calls)
    calls.clear()
    _record(_Toy(2, 1), None, True)
    assert any(i < depth - 1 for i, depth in calls)


def test_with_lock_errors_under_the_explorer() -> None:
    """Recursive ``with`` and a release by a non-owner raise LockingError under a backend."""

    class Bad(Workload):
        name = "engine-fast-bad"

        def setup(self) -> Any:
            return sync.SpinLock("l")

        def threads(self, world: Any) -> Sequence[tuple[str, Any]]:
            def rec() -> None:
                with world, world:
                    pass

            return [("rec", rec)]

    recs, _ = _record(Bad(), None, False)
    assert recs[0][3] == "exception" and "recursively" in recs[0][5]

    class Stray(Workload):
        name = "engine-fast-stray"

        def setup(self) -> Any:
            return sync.SpinLock("l")

        def threads(self, world: Any) -> Sequence[tuple[str, Any]]:
            def stray() -> None:
                world.__exit__(None, None, None)

            return [("stray", stray)]

    recs, _ = _record(Stray(), None, False)
    assert recs[0][3] == "exception" and "does not hold it" in recs[0][5]


class _ReplayChooser:
    """A chooser whose leading decisions are taken by the engine from ``replay`` (as the DFS's
    replayed prefix), ``checked_prefix`` of them already checked; later ones: the default."""

    every_step = False

    def __init__(self, replay: list[int], checked_prefix: int) -> None:
        self.replay = replay
        self.checked_prefix = checked_prefix
        self.calls = 0

    def choose(self, ex: Execution, enabled: Sequence[int], last: int) -> int | None:
        self.calls += 1
        return last if last in enabled else enabled[0]


class _Counted(Workload):
    """Two threads of two lock sections on separate locks (both threads are enabled at every
    step); the step invariant records the decision index of each check."""

    name = "engine-fast-counted"

    def __init__(self) -> None:
        super().__init__()
        self.checked_at: list[int] = []

    def setup(self) -> Any:
        return [sync.SpinLock("l0"), sync.SpinLock("l1")]

    def threads(self, world: Any) -> Sequence[tuple[str, Any]]:
        def make(i: int) -> Any:
            def f() -> None:
                for _ in range(2):
                    with world[i]:
                        pass

            return f

        return [("t0", make(0)), ("t1", make(1))]

    def invariants(self) -> Sequence[Any]:
        from vtdsim.explore import scheduler
        from vtdsim.explore.invariants import Invariant

        def check(_w: Any) -> list[str]:
            ex = scheduler._running
            assert ex is not None
            self.checked_at.append(ex._calls - 1)  # the decision being taken
            return []

        return [Invariant("counted", check, when="step")]


def test_inline_replay_checks_decisions_beyond_the_checked_prefix() -> None:
    """A replayed decision whose state was not checked before (index >= checked_prefix) is
    checked, whether the engine takes it inline or not; one inside the checked prefix is not.
    Replaying thread 0 three times: decisions 0 (both threads at their start) and 1 (thread 0
    about to take l0) are quiescent, decision 2 (thread 0 holds l0) is not."""
    for checked, expected in ((0, [0, 1]), (3, [])):
        wl = _Counted()
        runner = Runner(wl)
        runner.fresh_world()
        out = runner.execute(_ReplayChooser([0, 0, 0], checked))
        assert out.bug_kind is None and out.ex.replayed == 3
        assert [i for i in wl.checked_at if i < 3] == expected, (checked, wl.checked_at)
        assert any(i >= 3 for i in wl.checked_at)  # the chooser's own decisions: checked


def test_inline_replay_reports_a_choice_that_is_not_enabled() -> None:
    """A replayed choice naming no enabled thread is a divergence (not a run of thread 5)."""
    runner = Runner(_Counted())
    runner.fresh_world()
    out = runner.execute(_ReplayChooser([0, 5], 2))
    assert out.bug_kind == "divergence"
    assert "thread 5 is not enabled" in out.bug_message


class _Releases(Workload):
    """Thread ``a`` takes lock ``l``; thread ``b`` (or the same thread) releases it in the
    way ``how`` names; the other lock ``m`` is never taken."""

    name = "engine-fast-releases"

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how

    def setup(self) -> Any:
        return {"l": sync.SpinLock("l"), "m": sync.Mutex("m")}

    def threads(self, world: Any) -> Sequence[tuple[str, Any]]:
        lock, other = world["l"], world["m"]
        how = self.how

        def a() -> None:
            lock.acquire()
            sync.point("held")
            if how == "own":
                lock.release()
            elif how == "own-with":
                lock.__exit__(None, None, None)
            elif how == "free-explicit":
                other.release()
            elif how == "free-with":
                other.__exit__(None, None, None)
            if how != "own" and how != "own-with":
                lock.release()

        def b() -> None:
            sync.point("start")
            if how == "other-explicit":
                lock.release()
            elif how == "other-with":
                lock.__exit__(None, None, None)

        return [("a", a), ("b", b)]


@pytest.mark.parametrize(
    "how", ["own", "own-with", "free-explicit", "free-with", "other-explicit", "other-with"]
)
def test_release_ownership_checked_by_the_backend(
    how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The explorer's backend checks ownership in ``release`` itself (``release_checks_owner``,
    no ``ident()`` call): every schedule ends exactly as with the lock's own check (the
    general path: the flag off), including which schedules raise and the message."""
    fast = _record(_Releases(how), None, False)
    with monkeypatch.context() as m:
        m.setattr(Execution, "release_checks_owner", False)
        slow = _record(_Releases(how), None, False)
    # every execution alike, and the search's summary (its bug reports differ only in the
    # traceback: the error is raised one frame deeper)
    assert fast[0] == slow[0]
    assert fast[1][:4] == slow[1][:4]
    kinds = {r[3] for r in fast[0]}
    if how.startswith("own"):
        assert kinds == {None}
    else:
        assert "exception" in kinds
        assert all("released by a thread that does not hold it" in r[5] for r in fast[0] if r[3])


def test_release_ownership_outside_threads() -> None:
    """Outside logical threads (invariants, setup under an installed Execution) a release of
    a lock the main code does not hold raises; one it holds is released."""
    runner = Runner(_Releases("own"))
    world = runner.fresh_world()
    ex = Execution(world, [], _ReplayChooser([], 0), ())
    lock = world["l"]
    previous = sync.install(ex)
    try:
        with pytest.raises(sync.LockingError, match="spinlock l released by a thread"):
            lock.release()
        lock.acquire()
        assert lock.owner is not None
        lock.release()
        assert lock.owner is None
        lock.owner = 0  # held by logical thread 0
        with pytest.raises(sync.LockingError, match="does not hold it"):
            lock.__exit__(None, None, None)
        assert lock.owner == 0
    finally:
        lock.owner = None
        sync.install(previous)


def test_install_sets_the_release_check_per_backend() -> None:
    """A backend without ``release_checks_owner`` still gets the lock's own check."""

    class Plain:
        def __init__(self) -> None:
            self.released: list[str] = []

        def ident(self) -> object:
            return "me"

        def acquire(self, lock: sync.SpinLock) -> None:
            lock.owner = "me"

        def release(self, lock: sync.SpinLock) -> None:
            self.released.append(lock.name)
            lock.owner = None

        def access(self, label: str, key: object, write: bool) -> None:
            pass

        def point(self, label: str) -> None:
            pass

    plain = Plain()
    lock = sync.SpinLock("p")
    runner = Runner(_Releases("own"))
    ex = Execution(runner.fresh_world(), [], _ReplayChooser([], 0), ())
    previous = sync.install(ex)
    try:
        sync.install(plain)
        lock.owner = "someone else"
        with pytest.raises(sync.LockingError, match="does not hold it"):
            lock.release()
        assert plain.released == []
    finally:
        lock.owner = None
        sync.install(previous)


@pytest.mark.parametrize(("bound", "por"), [(1, False), (2, False), (None, False), (None, True)])
@pytest.mark.parametrize("name", ["toy2", "toy-aux/v5", "a/corrected", "c/v5"])
def test_dfs_path_stays_in_step_with_the_stack(name: str, bound: int | None, por: bool) -> None:
    """``_Dfs.path`` (the choice of every stack node, kept up to date instead of recomputed
    per execution) equals ``[n.cands[n.idx] for n in stack]`` before every execution, and the
    replayed prefix the chooser hands the engine is its slice."""
    make = dict(WORKLOADS)[name]
    if name == "c/v5" and bound is None:
        bound = 2  # its unbounded tree is too large for a unit test
    runner = Runner(make() if name != "toy2" else _Toy(2, 2 if bound is None else 3))
    runner.fresh_world()
    dfs = _Dfs(runner, bound=bound, por=por)
    seen = 0
    orig = runner.execute

    def execute(chooser: Any) -> Any:
        nonlocal seen
        seen += 1
        assert dfs.path == [n.cands[n.idx] for n in dfs.stack]
        expect = [] if por else [n.cands[n.idx] for n in dfs.stack[: len(dfs.stack) - 1]]
        assert chooser.replay == expect
        return orig(chooser)

    runner.execute = execute  # type: ignore[method-assign]
    seg = dfs.run(Segment(), False, None)
    assert seen == seg.schedules + seg.pruned > 1
    assert dfs.path == [n.cands[n.idx] for n in dfs.stack]


def _locks_held_by(world: Any, tid: int) -> int:
    return sum(1 for lk in (world["a"], world["b"]) if lk.owner == tid)


@pytest.mark.parametrize("explicit", [False, True])
def test_per_thread_held_counts_follow_lock_ownership(explicit: bool) -> None:
    """Each thread's ``held`` (which a finishing thread consults instead of the trace) equals
    the locks it owns after every step; ``Execution.held`` is their sum."""
    seen: list[tuple[int, ...]] = []

    def check(world: Any) -> list[str]:
        ex = scheduler._running
        assert ex is not None
        counts = tuple(t.held for t in ex.threads)
        seen.append(counts)
        owned = tuple(_locks_held_by(world, t.tid) for t in ex.threads)
        if counts != owned or ex.held != sum(owned):
            return [f"held {counts} (sum {ex.held}) but owned {owned}"]
        return []

    class Counted(_Toy):
        def invariants(self) -> Sequence[Invariant]:
            return [Invariant("held-count", check, when="step", quiescent=False)]

    r = explore(Counted(3, 2, explicit=explicit), "pb", bound=2)
    assert r.first_bug is None, r.first_bug
    assert any(sum(c) for c in seen) and any(not sum(c) for c in seen)


def test_a_thread_finishing_while_another_holds_a_lock_is_no_bug() -> None:
    """Only the finishing thread's own locks count as held at its exit."""

    class Holder(Workload):
        name = "engine-fast-holder"

        def setup(self) -> Any:
            return {"a": sync.SpinLock("a"), "b": sync.SpinLock("b")}

        def threads(self, w: Any) -> Sequence[tuple[str, ThreadFn]]:
            def long() -> None:
                with w["a"]:
                    for _ in range(3):
                        sync.point("inside")

            return [("long", long), ("short", lambda: sync.point("p"))]

    r = explore(Holder(), "dfs")
    assert r.first_bug is None and r.exhausted and r.schedules > 1


def test_unwinding_a_thread_that_holds_locks_frees_them() -> None:
    """A schedule ending while a thread is inside critical sections: its ``with`` exit
    releases through the unwinder, a lock taken by a bare ``acquire()`` is freed by the
    engine; every schedule starts with every lock free."""
    starts: list[tuple[bool, bool]] = []
    at_failure: list[int] = []

    class Aborted(Workload):
        name = "engine-fast-aborted"

        def setup(self) -> Any:
            return {"a": sync.SpinLock("a"), "b": sync.SpinLock("b")}

        def threads(self, w: Any) -> Sequence[tuple[str, ThreadFn]]:
            starts.append((w["a"].owner is None, w["b"].owner is None))

            def holder() -> None:
                w["b"].acquire()  # explicit: not released when unwound
                with w["a"]:
                    sync.point("inside")
                w["b"].release()

            def failer() -> None:
                sync.point("before")
                ex = scheduler._running
                assert ex is not None
                at_failure.append(ex.threads[0].held)
                raise RuntimeError("boom")

            return [("holder", holder), ("failer", failer)]

    runner = Runner(Aborted())
    runner.fresh_world()
    ends: list[tuple[object, object]] = []
    after: list[int] = []  # the holder's count after the schedule
    orig = runner.execute

    def execute(chooser: Any) -> Any:
        out = orig(chooser)
        w = runner._world
        ends.append((w["a"].owner, w["b"].owner))
        after.append(out.ex.threads[0].held)
        return out

    runner.execute = execute  # type: ignore[method-assign]
    seg = _Dfs(runner, bound=None, por=False).run(Segment(), False, None)
    assert seg.schedules == len(ends) > 2 and seg.bugs
    assert sorted(set(at_failure)) == [0, 1, 2]  # failed outside, inside b, inside both
    assert all(e == (None, None) for e in ends)
    # unwinding leaves ``b`` (never released) counted; the unwinder's release of ``a`` is
    # counted when the holder was suspended inside ``with a`` (not at its release)
    pairs = list(zip(at_failure, after, strict=True))
    assert all(min(n, 1) <= a <= n for n, a in pairs)
    assert (2, 1) in pairs
    assert all(s == (True, True) for s in starts)


def test_worker_pools_belong_to_the_scheduling_greenlet() -> None:
    """Idle workers are pooled on the greenlet that runs the schedules (they are its
    children): an exploration run inside another greenlet gets its own workers, and both
    give the same results."""
    from greenlet import getcurrent, greenlet

    def search() -> tuple[int, int, list[str]]:
        r = explore(_Toy(2, 2), "pb", bound=1)
        return r.schedules, r.steps, [str(b) for b in r.bugs]

    main = getcurrent()
    here = search()
    pool = list(getattr(main, "_vtdsim_idle", []))
    assert pool and all(g.parent is main and not g.dead for g in pool)
    inner = greenlet(search)
    assert inner.switch() == here
    inner_pool = inner._vtdsim_idle  # the finished greenlet's own pool
    assert inner_pool and all(g not in pool for g in inner_pool)
    assert search() == here
    assert len(getattr(main, "_vtdsim_idle", [])) == len(pool)
