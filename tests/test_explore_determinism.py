"""The DFS's determinism check (one comparison per execution, at the deepest replayed decision):
no false alarms for objects created during a schedule, and every kind of divergence reported."""

from __future__ import annotations

from collections.abc import Sequence

from vtdsim.driver import sync
from vtdsim.explore import explore
from vtdsim.explore.base import ThreadFn, Workload
from vtdsim.explore.determinism import fingerprint, same_execution
from vtdsim.explore.scheduler import Runner
from vtdsim.explore.strategies import NodeState, Segment, _Dfs, run_dfs_subtree


class _FreshLocks(Workload):
    """Every schedule makes new lock and key objects (new identities each execution): the
    identity comparison fails and the named one must accept the replay."""

    name = "fresh-locks"

    def setup(self) -> list[int]:
        return [0]

    def threads(self, w: list[int]) -> Sequence[tuple[str, ThreadFn]]:
        lock = sync.SpinLock("fresh")
        key = object()

        def t(n: int) -> ThreadFn:
            def run() -> None:
                for _ in range(n):
                    with lock:
                        w[0] += 1
                    sync.shared_read("k", key)

            return run

        return [("t0", t(2)), ("t1", t(2))]


def test_schedule_created_objects_do_not_look_nondeterministic() -> None:
    r = explore(_FreshLocks(), "dfs")
    assert r.ok, r.summary()
    assert r.schedules > 20  # a real tree was explored, not one schedule


def test_schedule_created_objects_in_handed_over_subtrees() -> None:
    """Subtrees handed to another worker carry named fingerprints (no traces): replaying
    their prefixes must not diverge either, and the pieces add up to the whole search."""
    whole = explore(_FreshLocks(), "dfs")
    runner = Runner(_FreshLocks())
    frontier: list[tuple[tuple[int, int], tuple[NodeState, ...]]] = []
    head = _Dfs(runner, bound=None, por=False, truncate=2).run(Segment(), False, None, frontier)
    assert len(frontier) >= 2
    total = head.schedules
    for _pos, prefix in frontier:
        assert all(n.seen for n in prefix)  # frozen with their fingerprints
        seg = run_dfs_subtree(Runner(_FreshLocks()), None, False, prefix, False, None)
        assert not seg.bugs, [b.message for _i, b in seg.bugs]
        total += seg.schedules
    assert total == whole.schedules


class _FailsLater(Workload):
    """Deterministic for its first executions, then thread 0 raises early: the failure lies
    inside a prefix that the recording execution passed."""

    name = "fails-later"

    def __init__(self) -> None:
        super().__init__()
        self.runs = 0

    def setup(self) -> list[int]:
        return [0]

    def threads(self, w: list[int]) -> Sequence[tuple[str, ThreadFn]]:
        self.runs += 1
        late = self.runs > 3

        def t0() -> None:
            sync.shared_write("x")
            if late:
                raise RuntimeError("only in later executions")
            sync.shared_write("x")
            sync.shared_write("x")

        def t1() -> None:
            sync.shared_read("x")
            sync.shared_read("x")
            sync.shared_read("x")

        return [("t0", t0), ("t1", t1)]


def test_failure_inside_a_replayed_prefix_is_a_divergence() -> None:
    r = explore(_FailsLater(), "dfs")
    bug = r.first_bug
    assert bug is not None and bug.kind == "divergence", r.summary()
    assert "failed (exception" in bug.message and "nondeterministic" in bug.message


def test_same_execution_compares_identities_then_names() -> None:
    class L:
        def __init__(self, name: str) -> None:
            self.name = name

    a1, a2 = L("a"), L("a")
    b = L("b")
    t1 = [(0, "acquire", a1), (1, "read", ("lbl", 3)), (0, "release", a1)]
    t2 = [(0, "acquire", a2), (1, "read", ("lbl", 3)), (0, "release", a2)]
    pend1 = ((1, "acquire", a1),)
    pend2 = ((1, "acquire", a2),)
    assert same_execution(t1, pend1, [*t1, (1, "point", "p")], 3, pend1)  # identical prefix
    assert same_execution(t2, pend2, t1, 3, pend1)  # renamed objects, same shape
    t3 = [(0, "acquire", a1), (1, "read", ("lbl", 3)), (0, "release", b)]
    assert not same_execution(t3, pend1, t1, 3, pend1)  # a different lock
    assert not same_execution(t1, ((1, "read", ("lbl", 3)),), t1, 3, pend1)  # pending differs
    assert not same_execution(t1[:2], pend1, t1, 3, pend1)  # shorter trace
    t4 = [(0, "acquire", a1), (1, "read", ("lbl", 4)), (0, "release", a1)]
    assert not same_execution(t4, pend1, t1, 3, pend1)  # another key
    assert fingerprint(t1, pend1) == fingerprint(t2, pend2) != fingerprint(t3, pend1)
