"""Sleep sets preserve every reachable final state (property test on random programs)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

from hypothesis import given, settings
from hypothesis import strategies as st

from vtdsim.driver import sync
from vtdsim.explore import Workload, explore
from vtdsim.explore.base import ThreadFn

Op = tuple[str, int]


@st.composite
def programs(draw: st.DrawFn) -> list[list[Op]]:
    """2-3 threads, each a short sequence of reads/writes of 2 variables and properly nested
    critical sections on 2 locks (taken in a random order: deadlocks are possible)."""
    nthreads = draw(st.integers(2, 3))
    out = []
    for _ in range(nthreads):
        ops: list[Op] = []
        held: list[int] = []
        for _ in range(draw(st.integers(1, 3 if nthreads == 2 else 2))):
            kind = draw(st.sampled_from(["r", "w", "lock"]))
            if kind == "lock":
                free = [lk for lk in (0, 1) if lk not in held]
                if not free or (held and draw(st.booleans())):
                    ops.append(("rel", held.pop()))
                    continue
                lk = draw(st.sampled_from(free))
                held.append(lk)
                ops.append(("acq", lk))
            else:
                ops.append((kind, draw(st.integers(0, 1))))
        while held:
            ops.append(("rel", held.pop()))
        out.append(ops)
    return out


class _World:
    def __init__(self) -> None:
        self.vars = [0, 0]
        self.locks = [sync.SpinLock("l0"), sync.SpinLock("l1")]
        self.seen: list[list[int]] = []


class Random(Workload):
    name = "random-program"

    def __init__(self, program: list[list[Op]], finals: set[object]) -> None:
        super().__init__()
        self.program = program
        self.finals = finals

    def setup(self) -> _World:
        w = _World()
        w.seen = [[] for _ in self.program]
        return w

    def threads(self, w: _World) -> Sequence[tuple[str, ThreadFn]]:
        def body(i: int, ops: list[Op]) -> ThreadFn:
            def run() -> None:
                for kind, x in ops:
                    if kind == "acq":
                        w.locks[x].acquire()
                    elif kind == "rel":
                        w.locks[x].release()
                    elif kind == "r":
                        sync.shared_read("v", x)
                        w.seen[i].append(w.vars[x])
                    else:
                        sync.shared_write("v", x)
                        w.vars[x] = w.vars[x] * 3 + i + 1

            return run

        return [(f"t{i}", body(i, ops)) for i, ops in enumerate(self.program)]

    def check_end(self, w: _World, results: Sequence[object]) -> Iterable[str]:
        self.finals.add((tuple(w.vars), tuple(tuple(s) for s in w.seen)))
        return ()


@settings(max_examples=int(os.environ.get("VTDSIM_POR_EXAMPLES", "40")), deadline=None)
@given(programs())
def test_sleep_sets_reach_the_same_final_states(program: list[list[Op]]) -> None:
    plain: set[object] = set()
    reduced: set[object] = set()
    a = explore(Random(program, plain), "dfs", stop_on_bug=False, stall_s=None)
    b = explore(Random(program, reduced), "dfs", por=True, stop_on_bug=False, stall_s=None)
    assert a.exhausted and b.exhausted
    assert reduced == plain
    assert {x.signature for x in a.bugs} == {x.signature for x in b.bugs}  # deadlocks
    assert b.schedules <= a.schedules
