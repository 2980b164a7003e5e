"""The global PASID allocator.

Linux counterparts: ``intel_pasid_alloc_id`` / ``intel_pasid_free_id`` (5.1-5.4: an IDR,
``idr_alloc(&pasid_idr, ptr, start, end, gfp)`` under ``pasid_lock``; ``end`` exclusive) and
later ``ioasid_alloc(set, min, max, private)`` / ``ioasid_free`` (5.5+, XArray, ``max``
inclusive).  Both hand out the *lowest* free id in the range.

The allocator has its own lock (``pasid_lock``), so callers need no other lock, exactly as in
Linux: the aux-domain code calls it without holding ``device_domain_lock``, which is the race the
review points out.  Every entry is a :func:`vtdsim.driver.sync.point` so that the explorer can
interleave other threads there.

A double free, or freeing an id that was never allocated, raises :class:`AllocatorError`: the
kernel's IDR would only ``WARN`` (or silently corrupt with ioasid refcounts), but in the model
this is a bug the explorer must see, never ignore.
"""

from __future__ import annotations

import errno

from vtdsim.driver import sync
from vtdsim.driver.intel.inject import FaultInjector
from vtdsim.errors import ArgumentError, IommuError, VtdsimError

__all__ = [
    "PASID_MAX",
    "PASID_MIN",
    "AllocatorError",
    "PasidAllocator",
    "default_allocator",
    "intel_pasid_alloc_id",
    "intel_pasid_free_id",
    "ioasid_alloc",
    "ioasid_free",
]

#: Linux ``PASID_MIN`` (0 is RID2PASID, never handed out) and ``PASID_MAX`` (2^20).
PASID_MIN = 1
PASID_MAX = 1 << 20


class AllocatorError(VtdsimError):
    """An allocator was misused (double free, free of an unallocated id)."""


class PasidAllocator:
    """Lowest-free id allocator over ``[0, PASID_MAX)`` with owners (the IDR's ``ptr``)."""

    def __init__(self, name: str = "pasid_lock", injector: FaultInjector | None = None) -> None:
        self.lock = sync.SpinLock(name)
        self.injector = injector
        self._owners: dict[int, object] = {}
        # Hint: every id below _low is allocated (keeps "lowest free" O(1) for dense use).
        self._low = 0

    def alloc(self, min_id: int, max_id: int, owner: object = None) -> int:
        """The lowest free id in ``[min_id, max_id)`` (IDR semantics: ``max_id`` exclusive).

        Raises ``IommuError(ENOSPC)`` when the range is full (``idr_alloc`` -ENOSPC) and
        ``IommuError(ENOMEM)`` on an injected failure (site ``"pasid"``).  On error nothing is
        allocated.
        """
        if (type(min_id) is not int or type(max_id) is not int or min_id < 0) and (
            # (exact ints, the usual case, need no isinstance)
            not isinstance(min_id, int) or not isinstance(max_id, int) or min_id < 0
        ):
            raise ArgumentError("range", (min_id, max_id), "integers with 0 <= min")
        if sync._backend is not None:  # sync.point, no call without a backend
            sync.point("pasid_alloc")
        lock = self.lock
        lock.acquire()  # explicit acquire/release: the sync operations of ``with``, cheaper
        try:
            if self.injector is not None and self.injector.should_fail("pasid"):
                raise IommuError(errno.ENOMEM, "PASID allocation failed (injected)")
            hi = max_id if max_id < PASID_MAX else PASID_MAX
            low = self._low
            start = min_id if min_id > low else low
            owners = self._owners
            if start < hi and start not in owners:
                # The usual case: the first candidate (the hint, or min_id) is free.
                pasid = start
                owners[pasid] = owner
                if start == low:
                    self._low = pasid + 1
            else:
                for pasid in range(start, hi):
                    if pasid not in owners:
                        owners[pasid] = owner
                        if start == low == pasid:
                            self._low = pasid + 1
                        break
                else:
                    raise IommuError(
                        errno.ENOSPC, f"no free PASID in [{min_id}, {max_id}) (idr_alloc -ENOSPC)"
                    )
        finally:
            lock.release()
        if sync._backend is not None:  # observer hook (the explorer's checks), no call without
            sync.allocated("pasid", pasid, owner, self)
        return pasid

    def free(self, pasid: int) -> None:
        """Release ``pasid`` (``idr_remove``); raises :class:`AllocatorError` if not allocated."""
        if sync._backend is not None:  # sync.point, no call without a backend
            sync.point("pasid_free")
        lock = self.lock
        lock.acquire()  # explicit acquire/release, as in alloc
        try:
            if pasid not in self._owners:
                raise AllocatorError(f"PASID {pasid} freed but not allocated (double free?)")
            del self._owners[pasid]
            if pasid < self._low:
                self._low = pasid
        finally:
            lock.release()

    def owner(self, pasid: int) -> object:
        """The owner recorded at allocation (``idr_find``); ``None`` if not allocated."""
        with self.lock:
            return self._owners.get(pasid)

    def is_allocated(self, pasid: int) -> bool:
        with self.lock:
            return pasid in self._owners

    def allocated(self) -> list[int]:
        """Every allocated id, ascending."""
        with self.lock:
            return sorted(self._owners)

    def reset(self) -> None:
        """Forget every id (tests, scenario restarts)."""
        with self.lock:
            self._owners.clear()
            self._low = 0


#: The system-wide PASID space (Linux's single ``pasid_idr`` / default ioasid set).
default_allocator = PasidAllocator()


def intel_pasid_alloc_id(
    owner: object, start: int, end: int, allocator: PasidAllocator | None = None
) -> int:
    """Linux ``intel_pasid_alloc_id(ptr, start, end, gfp)`` (5.1): ``end`` exclusive."""
    return (allocator or default_allocator).alloc(start, end, owner)


def intel_pasid_free_id(pasid: int, allocator: PasidAllocator | None = None) -> None:
    """Linux ``intel_pasid_free_id(pasid)``."""
    (allocator or default_allocator).free(pasid)


def ioasid_alloc(
    min_id: int, max_id: int, owner: object = None, allocator: PasidAllocator | None = None
) -> int:
    """Linux ``ioasid_alloc(set, min, max, private)`` (5.5+): ``max_id`` *inclusive*."""
    return (allocator or default_allocator).alloc(min_id, max_id + 1, owner)


def ioasid_free(pasid: int, allocator: PasidAllocator | None = None) -> None:
    """Linux ``ioasid_free(ioasid)``."""
    (allocator or default_allocator).free(pasid)
