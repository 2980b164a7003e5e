"""Domain identifiers: the per-unit DID bitmap and the per-(domain, unit) reference count.

Linux counterparts (``drivers/iommu/intel/iommu.c``):

* ``iommu_init_domains``: a bitmap of ``cap_ndoms(iommu->cap)`` bits; bit 0 is reserved
  (caching mode tags non-present entries with DID 0) and, in scalable mode, bit 1
  (``FLPT_DEFAULT_DID``, used by pass-through and first-level PASID entries) too.
* ``domain_attach_iommu`` / ``domain_detach_iommu`` (5.5: ``domain->iommu_refcnt[]`` and
  ``iommu_did[]``; 6.x: ``struct iommu_domain_info {refcnt, did}`` in ``domain->iommu_array``):
  the first attach of a domain to a unit takes the lowest free DID (``find_first_zero_bit``),
  later attaches only count; the last detach clears the bit.  Every RID attach *and every aux
  attach* takes a reference.  Both run with ``iommu->lock`` held (5.5 also holds
  ``device_domain_lock``), which is asserted.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from vtdsim.driver import sync
from vtdsim.driver.intel.inject import FaultInjector
from vtdsim.errors import ArgumentError, IommuError

if TYPE_CHECKING:
    from vtdsim.driver.intel.dmar import IntelIommu

__all__ = [
    "FLPT_DEFAULT_DID",
    "DomainIdAllocator",
    "DomainWithIommus",
    "IommuDomainInfo",
    "domain_attach_iommu",
    "domain_detach_iommu",
    "domain_id_iommu",
]

#: Linux ``FLPT_DEFAULT_DID``: the DID of pass-through / first-level entries in scalable mode.
FLPT_DEFAULT_DID = 1


class DomainIdAllocator:
    """The per-unit DID bitmap (``iommu->domain_ids``).

    Guarded by the owning unit's ``iommu->lock`` in Linux; the model also asserts that, when
    ``lock`` is given.  ``alloc`` returns the lowest free id, raising ``IommuError(ENOSPC)`` when
    the bitmap is full (``domain_attach_iommu``'s "No free domain ids") and ``IommuError(ENOMEM)``
    on an injected failure (site ``"did"``).
    """

    def __init__(
        self,
        ndoms: int,
        scalable: bool = True,
        lock: sync.SpinLock | None = None,
        injector: FaultInjector | None = None,
    ) -> None:
        if not isinstance(ndoms, int) or ndoms < 3:
            raise ArgumentError("ndoms", ndoms, "an integer >= 3 (cap_ndoms)")
        self.ndoms = ndoms
        self.lock = lock
        self.injector = injector
        # The bitmap as the set of its set bits plus the lowest clear one (``_next``): the same
        # lowest-free answers as find_first_zero_bit, in O(1) for the usual few DIDs, and a
        # state of a few entries instead of a cap_ndoms-byte (up to 64 KiB) bitmap that a world
        # snapshot would compare and copy before every explored schedule.
        self.reserved = {0}  # iommu_init_domains: set_bit(0, iommu->domain_ids)
        if scalable:
            self.reserved.add(FLPT_DEFAULT_DID)  # set_bit(FLPT_DEFAULT_DID, ...)
        self._used: set[int] = set(self.reserved)
        self._next = self._first_free(0)

    def _first_free(self, start: int) -> int:
        """The lowest clear bit at or above ``start`` (``ndoms`` when there is none)."""
        used = self._used
        did = start
        while did in used:
            did += 1
        return did

    def alloc(self, owner: object = None, *, held: bool = False) -> int:
        """Lowest free DID (``find_first_zero_bit`` + ``set_bit``); ``owner`` (the domain) is
        only passed on to :func:`vtdsim.driver.sync.allocated`.  ``held=True``: the caller has
        just acquired :attr:`lock` itself (Linux ``domain_attach_iommu`` under
        ``iommu->lock``), so the ``assert_held`` cannot fail and is skipped (under the explorer
        it costs a backend call); everything else is the same, in the same order."""
        if sync._backend is not None:  # sync.point, no call without a backend
            sync.point("did_alloc")
        if not held and self.lock is not None:
            self.lock.assert_held()
        if self.injector is not None and self.injector.should_fail("did"):
            raise IommuError(errno.ENOMEM, "domain id allocation failed (injected)")
        did = self._next
        if did >= self.ndoms:
            raise IommuError(errno.ENOSPC, f"no free domain ids (cap_ndoms = {self.ndoms})")
        used = self._used
        used.add(did)
        nxt = did + 1  # self._first_free(did + 1), inlined
        while nxt in used:
            nxt += 1
        self._next = nxt
        if sync._backend is not None:  # observer hook (the explorer's checks), no call without
            sync.allocated("did", did, owner, self)
        return did

    def free(self, did: int, *, held: bool = False) -> None:
        """``clear_bit(did, iommu->domain_ids)``; freeing a reserved or free id is a bug.
        ``held=True``: as in :meth:`alloc` (``domain_detach_iommu`` under ``iommu->lock``)."""
        if sync._backend is not None:  # sync.point, no call without a backend
            sync.point("did_free")
        if not held and self.lock is not None:
            self.lock.assert_held()
        used = self._used
        if (
            type(did) is not int
            or not 0 <= did < self.ndoms
            or did in self.reserved
            or did not in used
        ):
            raise ArgumentError("did", did, "an allocated, non-reserved domain id")
        used.discard(did)
        if did < self._next:
            self._next = did

    def in_use(self) -> list[int]:
        """Allocated DIDs (reserved ones excluded), ascending."""
        return sorted(self._used - self.reserved)

    def is_used(self, did: int) -> bool:
        return did in self._used

    def __len__(self) -> int:
        return len(self._used) - len(self.reserved)


@dataclass
class IommuDomainInfo:
    """Linux ``struct iommu_domain_info``: one per (domain, unit) the domain is attached to."""

    iommu: IntelIommu
    refcnt: int
    did: int


class DomainWithIommus(Protocol):
    """What :func:`domain_attach_iommu` needs of a domain (``dmar_domain->iommu_array``,
    keyed by ``iommu->seq_id``)."""

    iommu_array: dict[int, IommuDomainInfo]


def domain_attach_iommu(domain: DomainWithIommus, iommu: IntelIommu) -> int:
    """Linux ``domain_attach_iommu``: take a reference on ``domain``'s DID on ``iommu``,
    allocating the lowest free DID on the first reference.  Returns the DID.

    Caller holds ``iommu.lock``.  On error (``ENOSPC``, injected ``ENOMEM``) nothing changed.
    """
    iommu.lock.assert_held()
    info = domain.iommu_array.get(iommu.seq_id)
    if info is not None:
        info.refcnt += 1
        return info.did
    did = iommu.domain_ids.alloc(domain)
    domain.iommu_array[iommu.seq_id] = IommuDomainInfo(iommu, 1, did)
    return did


def domain_detach_iommu(domain: DomainWithIommus, iommu: IntelIommu) -> None:
    """Linux ``domain_detach_iommu``: drop a reference; the last one frees the DID.

    Caller holds ``iommu.lock``.  Detaching a domain that holds no reference raises
    :class:`ArgumentError` (Linux would underflow the refcount).
    """
    iommu.lock.assert_held()
    info = domain.iommu_array.get(iommu.seq_id)
    if info is None:
        raise ArgumentError("domain", domain, f"a domain attached to {iommu.name}")
    info.refcnt -= 1
    if info.refcnt == 0:
        iommu.domain_ids.free(info.did)
        del domain.iommu_array[iommu.seq_id]


def domain_id_iommu(domain: DomainWithIommus, iommu: IntelIommu) -> int:
    """Linux ``domain_id_iommu``: the DID ``domain`` has on ``iommu`` (ArgumentError if none)."""
    info = domain.iommu_array.get(iommu.seq_id)
    if info is None:
        raise ArgumentError("domain", domain, f"a domain attached to {iommu.name}")
    return info.did
