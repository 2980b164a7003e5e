"""The explorer's fast paths keep its checking power: invariants are evaluated at every distinct
decision state, worker greenlets are reused safely, the in-place snapshot restores everything,
and the benchmarks are registered."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pytest
from click.testing import CliRunner

from vtdsim.driver import sync
from vtdsim.explore import Invariant, Workload, explore, get_workload
from vtdsim.explore import scheduler as sched_mod
from vtdsim.explore.base import ThreadFn
from vtdsim.explore.scheduler import Runner
from vtdsim.explore.snapshot import GraphSnapshot
from vtdsim.explore.strategies import DfsChooser, RandomChooser, Segment, _Dfs
from vtdsim.hw.memory import PhysicalMemory


class _Logged(Workload):
    """Two threads, each taking a lock around appends to a shared log (the world's state is
    the log, so the state at a decision is known exactly); the step invariant records every
    state it sees."""

    name = "logged"

    def __init__(self, seen: list[tuple[str, ...]]) -> None:
        super().__init__()
        self.seen = seen
        self.lock = sync.SpinLock("log_lock")

    def setup(self) -> list[str]:
        return []

    def threads(self, w: list[str]) -> Sequence[tuple[str, ThreadFn]]:
        def worker(name: str) -> ThreadFn:
            def run() -> None:
                for i in range(2):
                    with self.lock:
                        w.append(f"{name}{i}")
                    sync.shared_write("tail", name)

            return run

        return [("a", worker("a")), ("b", worker("b"))]

    def invariants(self) -> Sequence[Invariant]:
        def record(w: list[str]) -> list[str]:
            self.seen.append(tuple(w))
            return []

        return (Invariant("record", record, when="step"),)


def _dfs_states(skip_replayed: bool) -> tuple[int, list[tuple[str, ...]]]:
    seen: list[tuple[str, ...]] = []
    runner = Runner(_Logged(seen))
    dfs = _Dfs(runner, bound=None, por=False)
    if not skip_replayed:
        orig = DfsChooser.__init__

        def no_skip(self: DfsChooser, search: _Dfs) -> None:
            orig(self, search)
            self.checked_prefix = 0

        DfsChooser.__init__ = no_skip  # type: ignore[method-assign]
        try:
            seg = dfs.run(Segment(), False, None)
        finally:
            DfsChooser.__init__ = orig  # type: ignore[method-assign]
    else:
        seg = dfs.run(Segment(), False, None)
    return seg.schedules, seen


def test_step_invariants_see_every_decision_state_of_the_search() -> None:
    """Decisions the DFS replays (its stack) are not re-checked; every state reached at a
    quiescent decision is still checked, exactly as without the skip."""
    n_skip, with_skip = _dfs_states(True)
    n_full, full = _dfs_states(False)
    assert n_skip == n_full > 50
    assert set(with_skip) == set(full)
    assert len(with_skip) < len(full) // 2  # the replayed prefixes are most of the checks


def test_replayed_prefix_violation_is_still_reported() -> None:
    """A violation at a decision the DFS also replays is found at its first visit (the
    search stops there, or with stop_on_bug=False every schedule through it fails)."""

    class Broken(_Logged):
        def invariants(self) -> Sequence[Invariant]:
            def bad(w: list[str]) -> list[str]:
                return ["two appends"] if len(w) == 2 else []

            return (Invariant("two", bad, when="step"),)

    r = explore(Broken([]), "dfs", stop_on_bug=False)
    assert r.bugs and r.bugs[0].name == "two"
    first = explore(Broken([]), "pb", bound=2)
    assert first.first_bug is not None and first.first_bug.preemptions == 0


def test_worker_greenlets_are_reused_across_schedules(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[object] = []
    real = sched_mod.greenlet

    def counting(*args: Any, **kwargs: Any) -> Any:
        g = real(*args, **kwargs)
        made.append(g)
        return g

    runner = Runner(get_workload("toy-three"))
    runner.execute(RandomChooser(0, 0))  # warm the pool
    monkeypatch.setattr(sched_mod, "greenlet", counting)
    monkeypatch.setattr(sched_mod.greenlet, "getcurrent", real.getcurrent, raising=False)
    for i in range(40):
        runner.execute(RandomChooser(0, i))
    assert made == []


def test_schedules_after_aborted_ones_are_unaffected() -> None:
    """A bug ends a schedule with threads suspended mid-operation; the workers are unwound
    and reused, and later searches give exactly the results of a fresh process."""
    first = explore(get_workload("toy-counter"), "dfs", stop_on_bug=False).verdict()
    for name in ("toy-deadlock", "toy-raise", "toy-counter"):
        explore(get_workload(name), "dfs", stop_on_bug=False)
    assert explore(get_workload("toy-counter"), "dfs", stop_on_bug=False).verdict() == first
    wl = get_workload("a", "corrected")
    a1 = explore(wl, "dfs")
    explore(get_workload("a", "v5"), "pb", bound=1, stop_on_bug=False)
    a2 = explore(wl, "dfs")
    assert a1.verdict() == a2.verdict() and a1.schedules == a2.schedules == 219


class _Slotted:
    __slots__ = ("a", "b")

    def __init__(self) -> None:
        self.a = 1
        self.b = [1, 2]


class _One:
    __slots__ = ("v",)

    def __init__(self) -> None:
        self.v = (1, 2)


class _Root:
    def __init__(self) -> None:
        self.one = _One()
        self.mem = PhysicalMemory(1 << 24)
        self.mem.write64(0x1000, 0x1111)
        self.mem.write64(0x5008, 0x2222)
        self.d: dict[str, Any] = {"x": 1, "y": [1]}
        self.lst = [1, 2, 3]
        self.st = {1, 2}
        self.ba = bytearray(b"\x00" * 64)
        self.sl = _Slotted()


def test_snapshot_restores_in_place() -> None:
    r = _Root()
    pages = dict(r.mem._pages)
    snap = GraphSnapshot(r)
    inner = r.d["y"]
    r.mem.write64(0x1000, 0xDEAD)  # a saved page changes
    r.mem.write64(0x9000, 0xBEEF)  # a new page
    r.d["x"] = 2
    r.d["z"] = object()
    inner.append(7)
    r.lst.pop()
    r.st.add(9)
    r.ba[3] = 5
    r.sl.a = 2
    r.sl.b = []
    r.one.v = (3,)
    r.extra = 1  # type: ignore[attr-defined]
    snap.restore()
    assert r.mem.read64(0x1000) == 0x1111 and r.mem.read64(0x5008) == 0x2222
    assert r.mem.read64(0x9000) == 0 and 0x9 not in r.mem._pages
    assert all(r.mem._pages[p] is buf for p, buf in pages.items())  # same buffers
    assert r.d == {"x": 1, "y": [1]} and r.d["y"] is inner
    assert r.lst == [1, 2, 3] and r.st == {1, 2} and not any(r.ba)
    assert r.sl.a == 1 and r.sl.b == [1, 2] and r.one.v == (1, 2)
    assert not hasattr(r, "extra")
    # restoring a clean world changes nothing
    snap.restore()
    assert r.mem.read64(0x1000) == 0x1111 and r.d == {"x": 1, "y": [1]}


def test_driver_snapshot_keeps_the_translators() -> None:
    """The units' translators (built lazily on the first DMA) are part of the snapshot, so a
    restore keeps them, with empty caches, instead of rebuilding them every schedule."""
    wl = get_workload("a", "corrected")
    runner = Runner(wl)
    w = runner.fresh_world()
    units = w.platform.units
    trs = [u.translator for u in units]
    for i in range(3):
        out = runner.execute(RandomChooser(3, i))
        assert not out.failed
        assert [u.translator for u in units] == trs
    runner.fresh_world()
    for u in units:
        tr = u.translator
        assert len(tr.iotlb) == len(tr.context_cache) == len(tr.pasid_cache) == 0
    # the end checks' DMAs behave as on a freshly built world
    fresh = wl.setup()
    p = fresh.pasid(fresh.dom, 0)
    assert fresh.dma(fresh.dom, 0, p) and w.dma(w.dom, 0, p)


EXPLORE_BENCHES = (
    "explore_schedules_per_s",
    "explore_steps_per_s",
    "explore_time_to_first_bug_a_s",
    "explore_time_to_first_bug_b_s",
    "explore_time_to_first_bug_c_s",
)


def test_explorer_benchmarks_are_registered() -> None:
    from vtdsim.bench import BENCHMARKS, load
    from vtdsim.cli.main import main

    for name in EXPLORE_BENCHES:
        assert name in BENCHMARKS and callable(load(name))
    r = CliRunner().invoke(main, ["bench", "--json", "--only", "explore_time_to_first_bug_b_s"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert list(data) == ["explore_time_to_first_bug_b_s"]
    assert isinstance(data["explore_time_to_first_bug_b_s"], float)
    assert 0 < data["explore_time_to_first_bug_b_s"] < 5
