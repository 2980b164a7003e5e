"""The explorer on the real driver: built-in workloads (a)-(d), corrected and v5."""

from __future__ import annotations

import time

import pytest

from vtdsim.explore import Schedule, explore, explore_parallel, get_workload, replay, run_threads
from vtdsim.explore.workloads import BUILTIN

# (workload, bug the review predicted, its minimal preemption count on v5)
V5_BUGS = [
    ("a", "use-after-free", 0),
    ("b", "leak", 1),
    ("c", "double-free", 0),
    ("e", "new-alloc-in-use", 1),
    ("f", "double-free", 1),
]


@pytest.mark.parametrize(("name", "target", "preemptions"), V5_BUGS)
def test_v5_bug_found_with_minimal_preemptions_under_a_second(
    name: str, target: str, preemptions: int
) -> None:
    wl = get_workload(name, "v5")
    assert getattr(wl, "target", None) == target
    wl.setup()  # the first build of the platform is not part of the search
    t0 = time.perf_counter()
    r = explore(wl, "pb", bound=3, only=target)
    elapsed = time.perf_counter() - t0
    bug = r.first_bug
    assert bug is not None and bug.name == target
    assert bug.preemptions == preemptions
    # preemption bounding: every smaller bound was exhausted without this bug
    assert [b.bound for b in r.per_bound] == list(range(preemptions + 1))
    assert all(b.exhausted and not b.bug for b in r.per_bound[:-1])
    assert elapsed < 1.0
    # the schedule replays to the same bug
    rep = replay(bug.schedule, wl, only=target)
    assert not rep.diverged and rep.bug is not None and rep.bug.name == target


def test_v5_messages_name_the_defects() -> None:
    a = explore(get_workload("a", "v5"), "pb", only="use-after-free").first_bug
    assert a is not None and "allocator holds it as free" in a.message
    b = explore(get_workload("b", "v5"), "pb", only="leak").first_bug
    assert b is not None and "(leak)" in b.message
    c = explore(get_workload("c", "v5"), "pb", only="AllocatorError").first_bug
    assert c is not None and c.kind == "exception" and "double free" in c.message
    assert c.traceback is not None and "aux_domain_add_dev" in c.traceback
    # without a filter the first v5 defect of (b) is the single list node per domain
    first = explore(get_workload("b", "v5"), "pb").first_bug
    assert first is not None and first.name == "aux-list" and first.preemptions == 0


@pytest.mark.parametrize("name", BUILTIN)
def test_corrected_exhausts_bound_3_without_violation(name: str) -> None:
    wl = get_workload(name, "corrected")
    if name == "c":  # the three-thread workload: split over two processes
        r = explore_parallel(wl, "pb", bound=3, workers=2)
    else:
        r = explore(wl, "pb", bound=3)
    assert r.ok, r.summary()
    assert r.exhausted
    last = r.per_bound[-1]
    assert last.exhausted and r.schedules == last.schedules > 0
    assert last.bound == 3 or r.exhausted_unbounded


@pytest.mark.parametrize("name", ["a", "b", "d", "e", "f"])
def test_corrected_two_thread_workloads_exhaust_without_bound(name: str) -> None:
    wl = get_workload(name, "corrected")
    assert len(wl.threads(wl.setup())) == 2
    r = explore(wl, "dfs")
    assert r.ok and r.exhausted and r.exhausted_unbounded
    bounded = explore(wl, "pb", bound=3)
    assert r.schedules >= bounded.schedules


def test_d_no_dma_after_detach_on_either_variant() -> None:
    for variant in ("v5", "corrected"):
        r = explore(get_workload("d", variant), "pb", bound=2, only="dma-after-detach")
        assert r.ok and r.exhausted


def test_replay_of_real_schedule_detects_divergence() -> None:
    bug = explore(get_workload("b", "v5"), "pb", only="leak").first_bug
    assert bug is not None
    s = Schedule.parse(bug.schedule)
    # the same choices against the corrected driver: the code "changed"
    other = Schedule(s.workload, "corrected", s.choices, s.trace_hash)
    r = replay(other, only="leak")
    assert r.diverged


def test_random_and_pct_find_v5_double_free() -> None:
    wl = get_workload("c", "v5")
    for strategy in ("random", "pct"):
        r = explore(wl, strategy, seed=1, schedules=200, only="AllocatorError")
        assert r.first_bug is not None and r.first_bug.name == "double-free"
        assert r.first_bug.preemptions == 0  # shrunk to the minimal preemption count


def test_parallel_identical_on_real_workload() -> None:
    wl = get_workload("a", "corrected")
    seq = explore(wl, "pb", bound=2)
    par = explore_parallel(wl, "pb", bound=2, workers=2)
    assert par.verdict() == seq.verdict()


def test_parallel_identical_on_buggy_run() -> None:
    """Bug messages name domains (``DmarDomain #1``): their numbering is per kernel, so one
    process, local worker processes and Dask report the same bugs, whatever the process built
    before (here: every earlier test)."""
    from vtdsim.explore.adapter import DriverWorld

    # domains made elsewhere in this process must not shift the numbering
    other = DriverWorld("v5")
    assert [repr(other.new_domain()) for _ in range(2)] == [
        "<DmarDomain #1 unmanaged>",
        "<DmarDomain #2 unmanaged>",
    ]
    wl = get_workload("c", "v5")
    seq = explore(wl, "pb", bound=1, stop_on_bug=False)
    assert len(seq.bugs) >= 2
    assert any("DmarDomain #1 " in b.message for b in seq.bugs)
    par = explore_parallel(wl, "pb", bound=1, stop_on_bug=False, workers=2)
    assert par.verdict() == seq.verdict()
    dask = explore_parallel(wl, "pb", bound=1, stop_on_bug=False, workers=2, scheduler="local")
    assert dask.verdict() == seq.verdict()


def test_os_threads_cross_check_real_driver() -> None:
    r = run_threads(get_workload("a", "corrected"), iterations=40, seed=3, time_limit_s=5)
    assert r.ok, r.summary()
    v5 = run_threads(get_workload("c", "v5"), iterations=40, seed=3, time_limit_s=5)
    # the v5 double free needs no preemption: real threads find it too
    assert not v5.ok


def test_dma_after_detach_invariant_is_live(monkeypatch: pytest.MonkeyPatch) -> None:
    """Mutation check: with the hardware invalidations removed, a DMA that started after the
    detach returned still translates through cached entries, and (d) reports it."""
    from vtdsim.driver.intel.dmar import IntelIommu

    monkeypatch.setattr(IntelIommu, "qi_submit_sync", lambda self, descs: None)
    r = explore(get_workload("d", "corrected"), "pb", bound=2, only="dma-after-detach")
    bug = r.first_bug
    assert bug is not None and bug.name == "dma-after-detach"
    assert "succeeded after the detach" in bug.message


@pytest.mark.parametrize(("name", "variant"), [("c", "corrected"), ("a", "v5"), ("d", "v5")])
def test_snapshot_reset_is_complete(name: str, variant: str) -> None:
    """Schedules of a search (world restored in place between them) replay identically on a
    freshly built world: the reset restores everything the schedules depend on."""
    from vtdsim.explore.scheduler import Runner
    from vtdsim.explore.strategies import RandomChooser

    wl = get_workload(name, variant)
    runner = Runner(wl)
    for i in range(12):
        out = runner.execute(RandomChooser(11, i))
        sched = out.schedule(wl)
        fresh = replay(sched, get_workload(name, variant))
        assert not fresh.diverged, fresh.divergence
        assert fresh.trace_hash == out.trace_hash()
        assert (fresh.bug is None) == (out.bug_kind is None)
