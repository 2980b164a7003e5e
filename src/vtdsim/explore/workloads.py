"""Built-in workloads (a)-(f): the 2019 review's race questions, runnable on the corrected
driver and on the historical v5 variant (``Kernel(platform, aux_variant=...)``).

=====  =====================================================================  ================
name   threads                                                                v5 target
=====  =====================================================================  ================
``a``  the final aux detach of D from dev0  ||  new aux attach of D to dev1    use-after-free
``b``  first aux attach of a fresh D to dev0  ||  first aux attach of D to     leak
       dev2
``c``  final detach of D from dev0  ||  attach of D to dev1 that fails         double-free
       (injected domain-ID failure on dmar1)  ||  attach of D to dev2          (sequential)
``d``  the final detach of D from dev0  ||  two DMAs of dev0 tagged D's       (none)
       PASID
``e``  the final detach of D1 from dev0  ||  the first attach of a fresh D2   new-alloc-in-use
       to dev2
``f``  attach of D to dev1 that fails (injected DID failure)  ||  the final   double-free
       detach of D from dev0, which starts only once the failure fired
=====  =====================================================================  ================

Each workload's ``target`` names the bug the review predicted; ``explore(..., only=target)``
looks for that bug alone (on v5 other defects fire too: one ``domain->auxd`` node per domain
corrupts the device lists as soon as a domain serves two devices, which ``aux-list`` reports).
``v5_result`` is what the explorer actually finds on v5 when it differs from ``target``: (d)
looks for a DMA after detach and finds none on either variant (bound 3 exhausted).

(c)'s double free on v5 needs no preemption and is *sequential*: the final detach completes and
frees PASID 1 but leaves ``default_pasid`` set (stale); the failing attach then reuses the stale
PASID and its error path frees it again.  It is the same defect as
``test_aux_v5::test_second_cycle``, not the review's point (d).  (f) isolates point (d) -- the
error path frees the PASID *after* dropping the locks, racing a concurrent final remove: the
detach can only start after the attach's injected failure, so the stale path is impossible, and
the double free needs one preemption (the detach runs between the failing attach's unlock and
its ``auxd_refcnt`` check).  (e) is issue 5's "a new allocation is in use by a present entry":
v5's unlink frees the PASID before tearing the entry down, under ``device_domain_lock``, so the
state is never quiescent; the allocation-time check (``new-alloc-in-use``) reports it with one
preemption.

Invariants (:func:`vtdsim.explore.invariants.driver_invariants`) are checked after every
quiescent step and at the end; each workload adds end checks of its own (the attach that must
fail fails, an attached device can DMA through its domain, a detached one cannot).

World reset: the platform and kernel are built once per process and restored in place before
each schedule (:class:`vtdsim.explore.snapshot.GraphSnapshot`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from vtdsim.driver import sync
from vtdsim.explore import toys as _toys
from vtdsim.explore.adapter import DriverWorld, errno_name
from vtdsim.explore.base import ThreadFn, Workload, register
from vtdsim.explore.invariants import Invariant, driver_invariants
from vtdsim.explore.snapshot import GraphSnapshot

__all__ = [
    "BUILTIN",
    "DriverWorkload",
    "WorkloadA",
    "WorkloadB",
    "WorkloadC",
    "WorkloadD",
    "WorkloadE",
    "WorkloadF",
]

assert _toys  # registers the toy workloads

#: the built-in driver workloads
BUILTIN = ("a", "b", "c", "d", "e", "f")


class DriverWorkload(Workload):
    """Base of the built-in driver workloads: a :class:`DriverWorld`, the driver invariants,
    snapshot reset."""

    variants: ClassVar[tuple[str, ...]] = ("corrected", "v5")
    #: the bug the review predicted on v5 (an invariant name or an exception type)
    target: ClassVar[str] = ""
    #: what the explorer finds on v5 when that is not ``target`` (``"none"``: no bug)
    v5_result: ClassVar[str] = ""

    def setup(self) -> DriverWorld:
        w = DriverWorld(self.variant)
        self.prepare(w)
        return w

    def prepare(self, w: DriverWorld) -> None:
        """Initial state before the threads run (domains, attachments)."""

    def invariants(self) -> Sequence[Invariant]:
        return driver_invariants()

    def snapshot(self, world: DriverWorld) -> object | None:
        return world.snapshot()

    def restore(self, world: DriverWorld, snap: object) -> DriverWorld:
        assert isinstance(snap, GraphSnapshot)
        snap.restore()
        return world


def _domain_on_dev0(w: Any) -> None:
    """The common initial state: a fresh domain ``w.dom`` aux-attached to dev0 (its PASID in
    ``w.pasid0``)."""
    w.dom = w.new_domain()
    assert w.attach(w.dom, 0) == 0
    w.pasid0 = w.pasid(w.dom, 0)


def _failing_attach(w: Any, dev: int) -> int:
    """Aux-attach ``w.dom`` to ``dev`` with the next DID allocation failing (injected)."""
    w.fail_next("did")
    return int(w.attach(w.dom, dev))


# The two helpers below return their message (if any) as a tuple rather than being
# generators: each does all its work before its one message, so the checks and their side
# effects (the DMAs, recorded faults) are the same for any consumer of check_end, without a
# generator object and a ``yield from`` delegation per check.  The workloads' ``check_end``
# methods build their messages the same way, as one tuple, in the order a generator would
# yield them: their consumers (``Runner._end_checks``, ``threads.run_threads``) take every
# message, so every check runs either way, in the same order (pinned by
# ``tests/test_perf_end_checks3.py`` against the generators they replace).


def _attached(w: DriverWorld, dom: Any, dev: int) -> tuple[str, ...]:
    """An aux-attached device reaches its domain through the domain's PASID."""
    p = w.pasid(dom, dev)
    if p <= 0:
        return (f"{dom!r} is aux-attached to dev{dev} but aux_get_pasid fails ({errno_name(p)})",)
    if not w.dma(dom, dev, p):
        return (f"dev{dev}'s DMA with {dom!r}'s PASID {p} faults although it is attached",)
    return ()


def _detached(w: DriverWorld, dom: Any, dev: int, pasid: int) -> tuple[str, ...]:
    if pasid > 0 and w.dma(dom, dev, pasid):
        return (f"dev{dev}'s DMA with PASID {pasid} still succeeds after the detach of {dom!r}",)
    return ()


@register("a")
class WorkloadA(DriverWorkload):
    description = "the final aux detach on one device racing a new aux attach on another"
    target = "use-after-free"

    def prepare(self, w: DriverWorld) -> None:
        _domain_on_dev0(w)

    def threads(self, w: Any) -> Sequence[tuple[str, ThreadFn]]:
        return [
            ("detach-dev0", lambda: w.detach(w.dom, 0)),
            ("attach-dev1", lambda: w.attach(w.dom, 1)),
        ]

    def check_end(self, w: Any, results: Sequence[object]) -> tuple[str, ...]:
        out: tuple[str, ...] = ()
        if results[0] != 0:
            out = (f"the final detach failed: {errno_name(results[0])}",)  # type: ignore[arg-type]
        out += _detached(w, w.dom, 0, w.pasid0)
        if results[1] == 0:
            out += _attached(w, w.dom, 1)
        return out


@register("b")
class WorkloadB(DriverWorkload):
    description = "two first aux attaches of a fresh domain on two devices"
    target = "leak"

    def prepare(self, w: DriverWorld) -> None:
        w.dom = w.new_domain()

    def threads(self, w: Any) -> Sequence[tuple[str, ThreadFn]]:
        return [
            ("attach-dev0", lambda: w.attach(w.dom, 0)),
            ("attach-dev2", lambda: w.attach(w.dom, 2)),
        ]

    def check_end(self, w: Any, results: Sequence[object]) -> tuple[str, ...]:
        out: tuple[str, ...] = ()
        for dev, r in ((0, results[0]), (2, results[1])):
            if r != 0:
                out += (f"attach to dev{dev} failed: {errno_name(r)}",)  # type: ignore[arg-type]
            else:
                out += _attached(w, w.dom, dev)
        return out


@register("c")
class WorkloadC(DriverWorkload):
    description = (
        "an attach that fails (injected DID failure) racing the final detach and another attach"
    )
    target = "double-free"

    def prepare(self, w: DriverWorld) -> None:
        _domain_on_dev0(w)

    def threads(self, w: Any) -> Sequence[tuple[str, ThreadFn]]:
        return [
            ("detach-dev0", lambda: w.detach(w.dom, 0)),
            ("attach-dev1-fails", lambda: _failing_attach(w, 1)),
            ("attach-dev2", lambda: w.attach(w.dom, 2)),
        ]

    def check_end(self, w: Any, results: Sequence[object]) -> tuple[str, ...]:
        out: tuple[str, ...] = ()
        if results[0] != 0:
            out = (f"the final detach failed: {errno_name(results[0])}",)  # type: ignore[arg-type]
        if results[1] == 0:
            out += ("the attach with an injected DID failure succeeded",)
        if results[2] == 0:
            out += _attached(w, w.dom, 2)
        else:
            out += (f"attach to dev2 failed: {errno_name(results[2])}",)  # type: ignore[arg-type]
        return out


@register("d")
class WorkloadD(DriverWorkload):
    description = "a detach racing in-flight DMA from the detached device"
    target = "dma-after-detach"
    v5_result = "none"  # bound 3 exhausted on v5 too: v5's teardown flushes before returning

    def prepare(self, w: DriverWorld) -> None:
        _domain_on_dev0(w)

    def threads(self, w: Any) -> Sequence[tuple[str, ThreadFn]]:
        def dma() -> int:
            return sum(w.dma(w.dom, 0, w.pasid0, write=bool(i & 1)) for i in range(2))

        return [("detach-dev0", lambda: w.detach(w.dom, 0)), ("dma-dev0", dma)]

    def check_end(self, w: Any, results: Sequence[object]) -> tuple[str, ...]:
        out: tuple[str, ...] = ()
        if results[0] != 0:
            out = (f"the final detach failed: {errno_name(results[0])}",)  # type: ignore[arg-type]
        return out + _detached(w, w.dom, 0, w.pasid0)


@register("e")
class WorkloadE(DriverWorkload):
    description = "the final aux detach of one domain racing the first aux attach of another"
    target = "new-alloc-in-use"

    def prepare(self, w: Any) -> None:
        _domain_on_dev0(w)
        w.dom2 = w.new_domain()

    def threads(self, w: Any) -> Sequence[tuple[str, ThreadFn]]:
        return [
            ("detach-D1-dev0", lambda: w.detach(w.dom, 0)),
            ("attach-D2-dev2", lambda: w.attach(w.dom2, 2)),
        ]

    def check_end(self, w: Any, results: Sequence[object]) -> tuple[str, ...]:
        out: tuple[str, ...] = ()
        if results[0] != 0:
            out = (f"the final detach failed: {errno_name(results[0])}",)  # type: ignore[arg-type]
        out += _detached(w, w.dom, 0, w.pasid0)
        if results[1] != 0:
            out += (f"attach of D2 to dev2 failed: {errno_name(results[1])}",)  # type: ignore[arg-type]
        else:
            out += _attached(w, w.dom2, 2)
        return out


#: result of (f)'s detach thread when it ran before the injected failure (it does nothing)
SKIPPED = 1


@register("f")
class WorkloadF(DriverWorkload):
    description = (
        "review point (d): an attach's error path frees the PASID after unlocking, racing "
        "the final detach"
    )
    target = "double-free"

    def prepare(self, w: DriverWorld) -> None:
        _domain_on_dev0(w)

    def threads(self, w: Any) -> Sequence[tuple[str, ThreadFn]]:
        def detach_after_failure() -> int:
            # happens-after the injected failure (inside the attach's critical section): the
            # attach read a valid default_pasid, so v5's stale-PASID path of (c) cannot occur
            sync.shared_read("world.fail_fired")
            if not w.fail_fired:
                return SKIPPED
            return int(w.detach(w.dom, 0))

        return [
            ("attach-dev1-fails", lambda: _failing_attach(w, 1)),
            ("detach-dev0", detach_after_failure),
        ]

    def check_end(self, w: Any, results: Sequence[object]) -> tuple[str, ...]:
        out: tuple[str, ...] = ()
        if results[0] == 0:
            out = ("the attach with an injected DID failure succeeded",)
        if results[1] == SKIPPED:
            out += _attached(w, w.dom, 0)
        elif results[1] != 0:
            out += (f"the final detach failed: {errno_name(results[1])}",)  # type: ignore[arg-type]
        else:
            out += _detached(w, w.dom, 0, w.pasid0)
        return out
