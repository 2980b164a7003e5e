"""The explorer defects of the audit (/tmp/rv/REPORT.md): allocation-time invariant, ``--only``
validation, bad input, nondeterminism detection, non-termination with ``--all-bugs``, OS-thread
reports, workload documentation."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from vtdsim.cli.explore_cmd import explore as explore_cli
from vtdsim.driver import sync
from vtdsim.driver.intel.ioasid import PasidAllocator
from vtdsim.errors import ArgumentError
from vtdsim.explore import (
    Schedule,
    Workload,
    explore,
    explore_parallel,
    get_workload,
    replay,
    run_threads,
)
from vtdsim.explore.adapter import DriverWorld
from vtdsim.explore.base import ThreadFn, WorkloadError
from vtdsim.explore.invariants import new_alloc_in_use
from vtdsim.explore.threads import ThreadBackend

# -- 1. "a new allocation is not in use by any present entry" -----------------------------------


def test_new_alloc_in_use_is_reported_at_the_allocation_with_one_preemption() -> None:
    r = explore(get_workload("e", "v5"), "pb", bound=3, only="new-alloc-in-use")
    bug = r.first_bug
    assert bug is not None and bug.name == "new-alloc-in-use" and bug.kind == "invariant"
    assert bug.preemptions == 1
    assert [b.exhausted and not b.bug for b in r.per_bound] == [True, False]
    assert "PASID 1 allocated to <DmarDomain #2" in bug.message
    assert "uses it for <DmarDomain #1" in bug.message
    # the allocation happens while the detach still holds device_domain_lock: not quiescent
    assert bug.ops[-1].thread == "attach-D2-dev2"
    rep = replay(bug.schedule, only="new-alloc-in-use")
    assert not rep.diverged and rep.bug is not None and rep.bug.name == "new-alloc-in-use"


def test_reviewers_schedule_is_now_reported_by_the_builtin_invariants() -> None:
    """/tmp/rv: replaying ``0*14.1`` with the built-in invariants alone said "No bug"."""
    rep = replay(Schedule("e", "v5", (0,) * 14 + (1,)))
    assert rep.bug is not None and rep.bug.name == "new-alloc-in-use", rep


def test_corrected_driver_never_hands_out_an_id_in_use() -> None:
    r = explore(get_workload("e", "corrected"), "dfs")
    assert r.ok and r.exhausted_unbounded, r.summary()


def _attached_world() -> tuple[DriverWorld, Any, Any, int]:
    w = DriverWorld("corrected")
    dom = w.new_domain()
    assert w.attach(dom, 0) == 0
    info = w.kernel.ops.infos[id(w.devs[0])]
    did = dom.iommu_array[info.iommu.seq_id].did
    return w, dom, info, did


def test_did_check_reads_present_entries_of_the_same_unit() -> None:
    w, dom, info, did = _attached_world()
    other = w.new_domain()
    msgs = new_alloc_in_use(w, "did", did, other, info.iommu.domain_ids)
    assert len(msgs) == 1 and f"DID {did} on {info.iommu.name}" in msgs[0]
    assert "present PASID" in msgs[0]
    assert new_alloc_in_use(w, "did", did, dom, info.iommu.domain_ids) == []
    assert new_alloc_in_use(w, "did", did + 1, other, info.iommu.domain_ids) == []
    pasid = w.pasid(dom, 0)
    assert new_alloc_in_use(w, "pasid", pasid, other, None)
    assert new_alloc_in_use(w, "pasid", pasid, dom, None) == []


class _Recorder:
    """A backend with the optional ``allocated`` hook."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, int, object]] = []

    def acquire(self, lock: sync.SpinLock) -> None:
        lock.owner = "me"

    def release(self, lock: sync.SpinLock) -> None:
        lock.owner = None

    def access(self, label: str, key: object, write: bool) -> None:
        pass

    def point(self, label: str) -> None:
        pass

    def ident(self) -> object:
        return "me"

    def allocated(self, kind: str, value: int, owner: object, scope: object = None) -> None:
        self.seen.append((kind, value, owner))


def test_allocators_notify_backends_that_want_it_and_others_still_work() -> None:
    rec = _Recorder()
    with sync.installed(rec):
        a = PasidAllocator()
        assert a.alloc(1, 10, "x") == 1
    assert rec.seen == [("pasid", 1, "x")]
    # a backend without ``allocated`` (the OS-thread backend) is not told, and works
    with sync.installed(ThreadBackend(0)):
        assert PasidAllocator().alloc(1, 10, "y") == 1
    sync.allocated("pasid", 3, None)  # no backend: no-op
    # DIDs: domain_attach_iommu passes the domain as the owner
    rec2 = _Recorder()
    w = DriverWorld("corrected")
    dom = w.new_domain()
    with sync.installed(rec2):
        assert w.attach(dom, 0) == 0
    kinds = {(k, o is dom) for k, _v, o in rec2.seen}
    assert kinds == {("pasid", True), ("did", True)}


# -- 7. --only -------------------------------------------------------------------------------


def test_only_rejects_unknown_names_with_the_valid_ones() -> None:
    r = CliRunner().invoke(explore_cli, ["-w", "a", "-v", "v5", "--only", "nonsense-name"])
    assert r.exit_code == 2
    assert "nonsense-name" in r.output and "use-after-free" in r.output
    assert "double-free" in r.output and "Traceback" not in r.output
    with pytest.raises(ArgumentError, match="use-after-free"):
        explore(get_workload("a", "v5"), "pb", only="nonsense")
    rep = CliRunner().invoke(explore_cli, ["--replay", "a/v5:-", "--only", "nonsense"])
    assert rep.exit_code == 2


def test_double_free_is_the_user_facing_name_and_allocator_error_an_alias() -> None:
    for name in ("double-free", "AllocatorError"):
        r = CliRunner().invoke(explore_cli, ["-w", "c", "-v", "v5", "--only", name])
        assert r.exit_code == 1, r.output
        assert "BUG [exception] double-free" in r.output
    # exception class names stay valid filters
    r2 = explore(get_workload("a", "corrected"), "pb", bound=0, only="IommuError")
    assert r2.ok


# -- 10. bad input -----------------------------------------------------------------------------


def test_huge_repeat_count_is_a_usage_error() -> None:
    r = CliRunner().invoke(explore_cli, ["--replay", "a/v5:0*99999999999"])
    assert r.exit_code == 2
    assert "a/v5:0*99999999999" in r.output and "at most" in r.output
    assert r.exception is None or isinstance(r.exception, SystemExit)
    with pytest.raises(ArgumentError):
        Schedule.parse("a/v5:1*2000000")


_SETUP_RAISES = """
from vtdsim.explore.base import Workload, register

@register("setup-raises", module=__file__)
class SetupRaises(Workload):
    description = "setup raises"
    def setup(self):
        raise KeyError("boom in setup")
    def threads(self, w):
        return []
"""


def test_setup_exception_is_reported_naming_the_workload(tmp_path: Path) -> None:
    mod = tmp_path / "wl_setup_raises.py"
    mod.write_text(_SETUP_RAISES)
    for extra in ([], ["--threads"]):
        r = CliRunner().invoke(explore_cli, ["-m", str(mod), "-w", "setup-raises", *extra])
        assert r.exit_code == 2, r.output
        assert "workload setup-raises" in r.output and "setup()" in r.output
        assert "KeyError" in r.output and "boom in setup" in r.output
        assert "Traceback" not in r.output
        assert isinstance(r.exception, SystemExit)
    with pytest.raises(WorkloadError, match="setup-raises"):
        explore(get_workload("setup-raises"), "pb")


# -- 11. nondeterminism --------------------------------------------------------------------------


class _LoopCount(Workload):
    """Thread 0's number of writes depends on a counter that survives world resets."""

    name = "nondet-loop"

    def __init__(self) -> None:
        super().__init__()
        self.counter = itertools.count()

    def setup(self) -> list[int]:
        return [0]

    def threads(self, w: list[int]) -> Sequence[tuple[str, ThreadFn]]:
        def t0() -> None:
            for _ in range(1 + next(self.counter) % 3):
                sync.shared_write("x")
                w[0] += 1

        def t1() -> None:
            sync.shared_read("x")

        return [("t0", t0), ("t1", t1)]


class _Label(_LoopCount):
    """Same operation kinds every time; only the accessed label changes."""

    name = "nondet-label"

    def threads(self, w: list[int]) -> Sequence[tuple[str, ThreadFn]]:
        def t0() -> None:
            sync.shared_write("x" if next(self.counter) % 2 else "y")
            sync.shared_write("z")

        def t1() -> None:
            sync.shared_read("z")

        return [("t0", t0), ("t1", t1)]


@pytest.mark.parametrize("cls", [_LoopCount, _Label])
def test_nondeterministic_workloads_are_reported(cls: type[_LoopCount]) -> None:
    wl = cls()
    r = explore(wl, "dfs")
    bug = r.first_bug
    assert bug is not None and bug.kind == "divergence", r.summary()
    assert f"workload {wl.name} is nondeterministic" in bug.message
    assert bug.workload == wl.name and bug.schedule.startswith(f"{wl.name}")
    # reported whatever bug --only asks for
    r2 = explore(cls(), "dfs", only="deadlock")
    assert r2.first_bug is not None and r2.first_bug.kind == "divergence"


def test_deterministic_workloads_do_not_diverge_in_parallel() -> None:
    wl = get_workload("b", "corrected")
    seq = explore(wl, "dfs")
    par = explore_parallel(wl, "dfs", workers=2)
    assert seq.ok and par.verdict() == seq.verdict()


# -- 12. non-termination with --all-bugs ----------------------------------------------------------


@pytest.mark.parametrize("strategy", ["dfs", "pb", "random"])
def test_step_budget_bug_stops_an_all_bugs_search(strategy: str) -> None:
    wl = get_workload("toy-spin")
    r = explore(wl, strategy, stop_on_bug=False, step_budget=300, schedules=40)
    assert [b.kind for b in r.bugs] == ["step-budget"]
    assert r.schedules == 1 and not r.exhausted
    assert "does not terminate" in r.summary()
    par = explore_parallel(
        wl, strategy, stop_on_bug=False, step_budget=300, schedules=40, workers=2
    )
    assert par.verdict() == r.verdict()


def test_cli_all_bugs_on_spinning_workload_ends() -> None:
    r = CliRunner().invoke(explore_cli, ["-w", "toy-spin", "-s", "dfs", "--all-bugs"])
    assert r.exit_code == 1
    assert "step-budget" in r.output and "does not terminate" in r.output


# -- 13. documentation and reports --------------------------------------------------------------


def test_workload_d_expectation_agrees_everywhere() -> None:
    wl = get_workload("d", "v5")
    assert getattr(wl, "v5_result", None) == "none"
    r = explore(wl, "pb", bound=3)
    assert r.ok and r.exhausted
    listing = CliRunner().invoke(explore_cli, ["--list"]).output
    line = next(ln for ln in listing.splitlines() if ln.startswith("d "))
    assert "v5 bug: none" in line
    doc = (Path(__file__).parents[1] / "docs" / "EXPLORE.md").read_text()
    row = next(ln for ln in doc.splitlines() if ln.startswith("| `d` |"))
    assert "none" in row
    import vtdsim.explore.workloads as wmod

    assert wmod.__doc__ is not None
    assert any(ln.startswith("``d``") and "(none)" in ln for ln in wmod.__doc__.splitlines())


def test_error_path_race_is_isolated_by_workload_f() -> None:
    """Review point (d): the error path frees the PASID after unlocking, racing a concurrent
    final remove.  (f) makes (c)'s sequential stale-PASID path impossible: on v5 the double free
    needs exactly one preemption, in the window after the failing attach's unlock."""
    r = explore(get_workload("f", "v5"), "pb", bound=3, only="double-free")
    bug = r.first_bug
    assert bug is not None and bug.name == "double-free" and bug.preemptions == 1
    assert bug.traceback is not None and "aux_domain_add_dev" in bug.traceback
    ops = [(o.thread, o.op) for o in bug.ops]
    # the detach ran entirely between the attach's release of device_domain_lock and its free
    rel = max(
        i for i, op in enumerate(ops) if op == ("attach-dev1-fails", "release device_domain_lock")
    )
    assert any(t == "detach-dev0" and op == "point pasid_free" for t, op in ops[rel:])
    c = explore(get_workload("c", "v5"), "pb", only="double-free").first_bug
    assert c is not None and c.preemptions == 0  # (c): the sequential path


def test_os_thread_reports_say_not_replayable_and_list_operations() -> None:
    r = run_threads(get_workload("c", "v5"), iterations=40, seed=3, time_limit_s=5)
    bug = r.first_bug
    assert bug is not None
    text = bug.describe()
    assert "not replayable: found on OS threads" in text
    assert "(0 preemption(s), 0 steps)" not in text
    assert bug.ops and bug.steps >= len(bug.ops)
    assert any("acquire device_domain_lock" in o.op for o in bug.ops)
