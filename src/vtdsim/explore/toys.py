"""Small self-contained workloads that exercise the explorer without the driver.

They use only :mod:`vtdsim.driver.sync`, so the engine's tests do not depend on the driver:

* ``toy-counter`` — two unlocked increments (lost update; 1 preemption);
* ``toy-deadlock`` — lock-order inversion (deadlock; 1 preemption);
* ``toy-aux`` — a miniature of the v5 aux-domain PASID logic (variants ``v5`` and ``corrected``)
  with the review's race: the last detach frees the PASID while a concurrent attach read it
  unlocked (use-after-free, 1 preemption on ``v5``; nothing on ``corrected``);
* ``toy-spin`` — a thread that spins on a flag nobody sets (step budget);
* ``toy-raise`` — a thread that raises (exception report);
* ``toy-three`` — three threads incrementing under a lock, for scale tests.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from vtdsim.driver import sync
from vtdsim.explore.base import ThreadFn, Workload, register
from vtdsim.explore.invariants import Invariant

__all__ = ["MiniAux"]


class _Cell:
    def __init__(self) -> None:
        self.x = 0
        self.flag = False
        self.a = sync.SpinLock("a")
        self.b = sync.SpinLock("b")


@register("toy-counter")
class ToyCounter(Workload):
    description = "two unlocked read-modify-write increments"

    def setup(self) -> _Cell:
        return _Cell()

    def threads(self, world: _Cell) -> Sequence[tuple[str, ThreadFn]]:
        def inc() -> None:
            sync.shared_read("x")
            v = world.x
            sync.shared_write("x")
            world.x = v + 1

        return [("inc0", inc), ("inc1", inc)]

    def check_end(self, world: _Cell, results: Sequence[object]) -> Iterable[str]:
        if world.x != 2:
            yield f"lost update: x = {world.x}, expected 2"


@register("toy-deadlock")
class ToyDeadlock(Workload):
    description = "lock-order inversion"

    def setup(self) -> _Cell:
        return _Cell()

    def threads(self, world: _Cell) -> Sequence[tuple[str, ThreadFn]]:
        def ab() -> None:
            with world.a, world.b:
                world.x += 1

        def ba() -> None:
            with world.b, world.a:
                world.x += 1

        return [("ab", ab), ("ba", ba)]


@register("toy-spin")
class ToySpin(Workload):
    description = "waits for a flag that is never set (non-termination)"

    def setup(self) -> _Cell:
        return _Cell()

    def threads(self, world: _Cell) -> Sequence[tuple[str, ThreadFn]]:
        def spin() -> None:
            while True:
                sync.shared_read("flag")
                if world.flag:
                    return

        def other() -> None:
            sync.shared_write("x")
            world.x = 1

        return [("spin", spin), ("other", other)]


@register("toy-raise")
class ToyRaise(Workload):
    description = "a thread raises after the other wrote"

    def setup(self) -> _Cell:
        return _Cell()

    def threads(self, world: _Cell) -> Sequence[tuple[str, ThreadFn]]:
        def writer() -> None:
            sync.shared_write("x")
            world.x = 1

        def checker() -> None:
            sync.shared_read("x")
            if world.x:
                raise RuntimeError("saw x set")

        return [("writer", writer), ("checker", checker)]


@register("toy-three")
class ToyThree(Workload):
    description = "three threads, two locked increments each"

    def setup(self) -> _Cell:
        return _Cell()

    def threads(self, world: _Cell) -> Sequence[tuple[str, ThreadFn]]:
        def inc() -> None:
            for _ in range(2):
                with world.a:
                    world.x += 1

        return [("t0", inc), ("t1", inc), ("t2", inc)]

    def check_end(self, world: _Cell, results: Sequence[object]) -> Iterable[str]:
        if world.x != 6:
            yield f"x = {world.x}"


# ---------------------------------------------------------------------------------------------
# the miniature aux model
# ---------------------------------------------------------------------------------------------


class _Alloc:
    def __init__(self) -> None:
        self.lock = sync.SpinLock("pasid_lock")
        self.used: set[int] = set()

    def alloc(self) -> int:
        sync.point("pasid_alloc")
        with self.lock:
            p = 1
            while p in self.used:
                p += 1
            self.used.add(p)
            return p

    def free(self, p: int) -> None:
        sync.point("pasid_free")
        with self.lock:
            if p not in self.used:
                raise RuntimeError(f"PASID {p} double free")
            self.used.discard(p)


class _Aux:
    def __init__(self) -> None:
        self.ddl = sync.SpinLock("device_domain_lock")
        self.alloc = _Alloc()
        self.default_pasid = -1
        self.refcnt = 0
        self.entries: dict[str, int] = {}  # device -> programmed PASID


class MiniAux(Workload):
    """The v5 aux PASID logic in 40 lines, and its correction (for engine tests)."""

    variants = ("v5", "corrected")

    def setup(self) -> _Aux:
        w = _Aux()
        # dev0 is attached already: its detach is the final one
        w.default_pasid = w.alloc.alloc()
        w.refcnt = 1
        w.entries["dev0"] = w.default_pasid
        return w

    def attach(self, w: _Aux, dev: str) -> None:
        if self.variant == "v5":
            sync.shared_read("default_pasid", w)
            if w.default_pasid <= 0:
                p = w.alloc.alloc()
                sync.shared_write("default_pasid", w)
                w.default_pasid = p
            with w.ddl:
                w.entries[dev] = w.default_pasid
                w.refcnt += 1
        else:
            with w.ddl:
                if w.refcnt == 0:
                    w.default_pasid = w.alloc.alloc()
                w.entries[dev] = w.default_pasid
                w.refcnt += 1

    def detach(self, w: _Aux, dev: str) -> None:
        with w.ddl:
            w.refcnt -= 1
            if w.refcnt == 0:
                w.alloc.free(w.default_pasid)
                if self.variant != "v5":
                    w.default_pasid = -1
            del w.entries[dev]

    def threads(self, world: _Aux) -> Sequence[tuple[str, ThreadFn]]:
        return [
            ("detach0", lambda: self.detach(world, "dev0")),
            ("attach1", lambda: self.attach(world, "dev1")),
        ]

    def invariants(self) -> Sequence[Invariant]:
        def entries_allocated(w: Any) -> Iterable[str]:
            for dev, p in w.entries.items():
                if p not in w.alloc.used:
                    yield f"{dev}'s entry uses PASID {p}, which is not allocated"

        return (Invariant("entry-allocated", entries_allocated),)


register("toy-aux")(MiniAux)
