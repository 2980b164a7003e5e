"""The one place where the built-in workloads touch the driver: :class:`DriverWorld`.

A world is a booted platform (two remapping units, three PASID-capable ATS devices with AUX
enabled) plus the workload's own records: DMA results seen after a detach returned, which thread
gets an injected failure.  Workload threads call only the methods below; the invariants read only
:meth:`DriverWorld.audit` (``Kernel.audit()`` split into named categories by
:func:`categorised`; for a world that keeps this method they call those two themselves, one call
less per check) and :meth:`DriverWorld.leaks`.  If the driver's API changes, this module is what
to adapt.

Devices: ``dev0`` = 00:02.0 and ``dev2`` = 00:04.0 behind ``dmar0``, ``dev1`` = 00:03.0 alone
behind ``dmar1`` (so a domain's first attach to ``dev1`` must allocate a domain ID there: the
injection site of workload (c)).
"""

from __future__ import annotations

import errno
import random
import threading
from typing import Any

from vtdsim.driver import sync
from vtdsim.driver.intel.inject import FaultInjector
from vtdsim.errors import IommuError
from vtdsim.explore.snapshot import GraphSnapshot

__all__ = ["IOVA", "DriverWorld", "audit_category", "categorised"]

#: the device address every workload maps and DMAs to
IOVA = 0x10000
_TARGET = 0x200000
_DEVICES = (("00:02.0", "dmar0"), ("00:03.0", "dmar1"), ("00:04.0", "dmar0"))
#: the injector methods DriverWorld._hook_injector short-cuts (inlined / called directly)
_SHOULD_FAIL = FaultInjector.should_fail
_FRAME_HOOK = FaultInjector.frame_hook


def current_ident() -> object:
    """The running logical thread (under the explorer) or OS thread."""
    b = sync.current_backend()
    return b.ident() if b is not None else threading.get_ident()


def audit_category(message: str) -> str:
    """Name of the invariant a ``Kernel.audit()`` message violates."""
    m = message
    if "(leak)" in m:
        return "leak"
    if (
        "allocator holds it as free" in m
        or "but allocated to" in m
        or "allocator owner is" in m
        or "points to freed" in m
        or "which is free" in m
    ):
        return "use-after-free"
    if "list corrupt" in m:
        return "aux-list"
    if "uses PASID 0" in m:
        return "pasid-zero"
    if "refcnt" in m or "records" in m or "users" in m or "attachment" in m:
        return "attach-count"
    return "kernel-audit"


def categorised(msgs: list[str], *, with_leaks: bool) -> list[tuple[str, str]]:
    """``Kernel.audit()`` messages ``msgs`` as :meth:`DriverWorld.audit` returns them:
    ``(category, message)``, leak messages only when ``with_leaks``."""
    out = []
    for m in msgs:
        c = audit_category(m)
        if c == "leak" and not with_leaks:
            continue
        out.append((c, m))
    return out


class DriverWorld:
    """A booted kernel and the workload's records (see the module docstring)."""

    def __init__(self, variant: str, *, pasid_bits: int = 8) -> None:
        from vtdsim.driver.core import DomainType, Feature
        from vtdsim.driver.kernel import Kernel
        from vtdsim.hw.platform import Platform

        self.variant = variant
        platform = Platform(1 << 30)
        platform.add_unit(None, name="dmar0", scope=[b for b, u in _DEVICES if u == "dmar0"])
        platform.add_unit(None, name="dmar1", scope=[b for b, u in _DEVICES if u == "dmar1"])
        for bdf, _u in _DEVICES:
            platform.add_device(bdf, pasid_bits=pasid_bits, ats=True)
        self.platform = platform
        self.kernel = Kernel(platform, variant)  # type: ignore[arg-type]
        self.devs = [self.kernel.device(bdf) for bdf, _u in _DEVICES]
        for d in self.devs:
            self.kernel.dev_enable_feature(d, Feature.AUX)
        self._unmanaged = DomainType.UNMANAGED
        self.violations: list[str] = []
        self.detached: set[tuple[int, int]] = set()
        self.results: dict[str, int] = {}
        self.fail_ident: object = None
        self.fail_sites: tuple[str, ...] = ()
        self.fail_fired = False
        #: the workload's domain and its PASID at setup (set by ``prepare``)
        self.dom: Any = None
        self.pasid0 = 0
        self._hook_injector()

    # -- setup helpers (not scheduling points: run before the threads start) -------------------

    def new_domain(self) -> Any:
        """An unmanaged domain with ``IOVA`` mapped read/write."""
        d = self.kernel.domain_alloc(self._unmanaged)
        self.kernel.map(d, IOVA, _TARGET, 0x1000, 3)
        return d

    def snapshot(self) -> GraphSnapshot:
        # Each unit's translator (caches, walker) is built lazily on the first DMA; build it
        # now, so that the snapshot holds it and a restore keeps it (empty caches, exactly as
        # a fresh one) instead of dropping it and paying ~150 us per schedule to rebuild it.
        for unit in self.platform.units:
            _ = unit.translator
        # cache replacement RNGs are only consulted by "random" replacement (unused here)
        return GraphSnapshot(self, skip=lambda o: isinstance(o, random.Random))

    # -- operations the threads perform -----------------------------------------------------------

    def attach(self, dom: Any, dev: int) -> int:
        """``iommu_aux_attach_device``; returns 0 or ``-errno``."""
        try:
            self.kernel.aux_attach_device(dom, self.devs[dev])
        except IommuError as e:
            return e.retval
        return 0

    def detach(self, dom: Any, dev: int) -> int:
        """``iommu_aux_detach_device`` then record "detach returned" (declared write)."""
        try:
            self.kernel.aux_detach_device(dom, self.devs[dev])
        except IommuError as e:
            return e.retval
        sync.shared_write("world.detached", dev)
        self.detached.add((id(dom), dev))
        return 0

    def pasid(self, dom: Any, dev: int) -> int:
        """``iommu_aux_get_pasid`` (``-errno`` when the domain has none)."""
        try:
            return int(self.kernel.aux_get_pasid(dom, self.devs[dev]))
        except IommuError as e:
            return e.retval

    def dma(self, dom: Any, dev: int, pasid: int, *, write: bool = False) -> bool:
        """One DMA of ``dev`` tagged ``pasid`` at ``IOVA`` (a declared unlocked read of the
        translation structures).  A DMA that succeeds after the detach of ``dom`` from ``dev``
        returned is recorded as a violation."""
        if sync._backend is not None:  # sync.shared_read, no call without a backend
            sync.shared_read("world.detached", dev)
        after_detach = (id(dom), dev) in self.detached
        d = self.devs[dev]
        r = d.dma_write(IOVA, b"\xa5" * 8, pasid=pasid) if write else d.dma_read(IOVA, 8, pasid)
        if r.ok and after_detach:
            self.violations.append(
                f"dma-after-detach: DMA of {d.bdf} with PASID {pasid} succeeded after the "
                f"detach of {dom!r} returned"
            )
        return bool(r.ok)

    def fail_next(self, *sites: str) -> None:
        """Make the calling thread's next allocation at one of ``sites`` fail (once)."""
        self.fail_ident = current_ident()
        self.fail_sites = sites
        self.fail_fired = False

    def _hook_injector(self) -> None:
        inj = self.kernel.injector
        original = inj.should_fail
        world = self
        # FaultInjector.should_fail is inlined below for a site without a plan (every
        # allocation of a schedule but the injected one): only when ``original`` is that
        # method (it returns a bool: no ``bool()`` needed either)
        exact = getattr(original, "__func__", None) is _SHOULD_FAIL

        def should_fail(site: str) -> bool:
            if (
                world.fail_ident is not None
                and not world.fail_fired
                and site in world.fail_sites
                and current_ident() == world.fail_ident
            ):
                world.fail_fired = True
                return True
            if exact:
                if site not in inj.plans:  # FaultInjector.should_fail without a plan
                    calls = inj.calls
                    calls[site] = calls.get(site, 0) + 1
                    return False
                return original(site)
            return bool(original(site))

        inj.should_fail = should_fail  # type: ignore[method-assign]
        # The frame allocator's hook: FaultInjector.frame_hook's body (``self.should_fail(tag)``)
        # as a plain function instead of the bound method (one call less per page-table
        # allocation); it still looks ``should_fail`` up on the injector at each call.
        frames = self.kernel.frames
        hook = frames.fail_hook
        if (
            exact
            and getattr(hook, "__func__", None) is _FRAME_HOOK
            and getattr(hook, "__self__", None) is inj
        ):

            def frame_hook(tag: str, order: int) -> bool:
                answer: bool = inj.should_fail(tag)
                return answer

            frames.fail_hook = frame_hook

    # -- what the invariants read ----------------------------------------------------------------

    def audit(self, *, with_leaks: bool) -> list[tuple[str, str]]:
        """``Kernel.audit()`` messages as ``(category, message)``; leak messages only when
        ``with_leaks`` (mid-operation, an allocated-but-not-yet-published PASID is normal)."""
        msgs = self.kernel.audit()
        if not msgs:
            return []  # (the common case: a consistent state)
        return categorised(msgs, with_leaks=with_leaks)

    def max_pasids(self, dev: int) -> int:
        return int(self.kernel.max_pasids(self.devs[dev]))


def errno_name(ret: int) -> str:
    return errno.errorcode.get(-ret, str(ret)) if ret < 0 else "0"
