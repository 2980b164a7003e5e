"""Per-device driver state and the scalable-mode context entry.

Linux counterparts: ``struct device_domain_info`` (``iommu.h``), ``intel_iommu_probe_device`` /
``intel_iommu_release_device``, ``iommu_context_addr``, ``domain_context_mapping_one`` (the
scalable-mode branch) / ``context_entry_set_pasid_table``, ``domain_context_clear_one``,
``intel_iommu_enable_pasid``, ``iommu_enable_dev_iotlb``.

Probe (scalable mode only; legacy-mode context entries need a domain and are not modelled):
the PASID table is allocated (``intel_pasid_alloc_table``), then the context entry is written
under ``iommu->lock``: ``qw0 = dir | PDTS << 9 | DTE (ATS) | PASIDE | P``, FPD clear,
``qw1 = RID_PASID 0`` (+ RID_PRIV with :attr:`Quirks.rid_priv`).  PASIDE is set at probe for a
PASID-capable device on a PASID-capable unit (modern ``context_entry_set_pasid_table``); with
:attr:`Quirks.v5_1_entry` (5.x) only :func:`intel_iommu_enable_pasid` sets it, followed by a
device-selective context-cache invalidation.  A non-present → present context entry needs only
the write-buffer flush, except in caching mode (context-cache device-selective, PASID-cache
all-PASIDs, IOTLB DSI, all with DID 0: ``context_present_cache_flush``).

Error guarantee of :func:`intel_iommu_probe_device`: on ``-ENOMEM`` (directory, context table)
the PASID table is freed and no context entry is written.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field
from typing import Any

from vtdsim.driver import sync
from vtdsim.driver.intel.dmar import (
    DMA_CCMD_DEVICE_INVL,
    QI_PC_ALL_PASIDS,
    IntelIommu,
    ecap_pss,
)
from vtdsim.driver.intel.domain_id import FLPT_DEFAULT_DID
from vtdsim.driver.intel.pasid import (
    PasidTable,
    context_get_sm_pds,
    intel_pasid_alloc_table,
    intel_pasid_free_table,
)
from vtdsim.errors import IommuError
from vtdsim.hw.memory import OutOfFrames
from vtdsim.spec.bits import Decoded
from vtdsim.spec.entries import CONTEXT_ENTRY_SM, ROOT_ENTRY_SM

__all__ = [
    "DeviceDomainInfo",
    "context_entry_read",
    "intel_iommu_enable_pasid",
    "intel_iommu_probe_device",
    "intel_iommu_release_device",
    "iommu_context_addr",
]

_CTX_P = 1 << CONTEXT_ENTRY_SM.field("P").shift
_CTX_PASIDE = 1 << CONTEXT_ENTRY_SM.field("PASIDE").shift
_ROOT_LP = ROOT_ENTRY_SM.field("LP")
_ROOT_LCTP = ROOT_ENTRY_SM.field("LCTP")
_ROOT_UP = ROOT_ENTRY_SM.field("UP")
_ROOT_UCTP = ROOT_ENTRY_SM.field("UCTP")
#: pci_ats_queue_depth: the ATS capability's Invalidate Queue Depth, 0 meaning 32
ATS_QDEP_DEFAULT = 32


@dataclass(eq=False)
class DeviceDomainInfo:
    """Linux ``struct device_domain_info`` (one per probed PCI function)."""

    iommu: IntelIommu
    dev: Any  # hw.pci.PciDevice
    bus: int
    devfn: int
    segment: int = 0
    pfsid: int = 0  # pci_dev_id(pci_physfn(pdev)): the function itself (no SR-IOV modelled)
    pasid_supported: bool = False
    pasid_enabled: bool = False
    ats_supported: bool = False
    ats_enabled: bool = False
    ats_qdep: int = 0
    pri_supported: bool = False
    auxd_enabled: bool = False
    #: the RID (PASID 0) domain (``info->domain``), owned by the ops layer
    domain: Any = None
    pasid_table: PasidTable | None = None
    #: v5 aux list (``info->auxiliary_domains``), owned by the aux code
    auxiliary_domains: list[Any] = field(default_factory=list)
    #: ``pci_max_pasids(pdev)`` (0 without a PASID capability)
    pci_max_pasids: int = 0
    #: ``dev->iommu->max_pasids``: pci_max_pasids bounded by the unit's ECAP.PSS, 0 if the
    #: unit or the device lacks PASID support
    max_pasids: int = 0

    @property
    def sid(self) -> int:
        """``PCI_DEVID(bus, devfn)``."""
        return self.bus << 8 | self.devfn

    @property
    def name(self) -> str:
        return f"{self.bus:02x}:{self.devfn >> 3:02x}.{self.devfn & 7}"


def iommu_context_addr(iommu: IntelIommu, bus: int, devfn: int, alloc: bool) -> int:
    """Linux ``iommu_context_addr``: physical address of the 32-byte scalable-mode context
    entry of ``bus:devfn`` (root lo half for devfn < 0x80, hi half above; index
    ``devfn & 0x7f``), allocating the context table (tag ``"context"``) when ``alloc``.
    0 if absent and not allocated.  Caller holds ``iommu->lock``.  ``OutOfFrames`` on failure.
    """
    mem = iommu.memory
    root = iommu.root_table + 16 * bus
    upper = devfn >= 0x80
    if upper:
        devfn -= 0x80
    word = root + 8 if upper else root
    v = mem.read64(word)
    p, ctp = (_ROOT_UP, _ROOT_UCTP) if upper else (_ROOT_LP, _ROOT_LCTP)
    if v & (1 << p.shift):
        table = v & ctp.mask
    else:
        if not alloc:
            return 0
        sync.point("alloc:context")
        table = iommu.frames.alloc(0, "context")
        iommu.clflush_cache_range(table, 4096)
        mem.write64(word, table | 1 << p.shift)
        iommu.clflush_cache_range(word, 8)
    return table + 32 * devfn


def context_entry_read(iommu: IntelIommu, bus: int, devfn: int) -> Decoded | None:
    """The decoded context entry (None if its context table does not exist)."""
    addr = iommu_context_addr(iommu, bus, devfn, False)
    if not addr:
        return None
    return CONTEXT_ENTRY_SM.decode(iommu.memory.read_qwords(addr, 4))


def _context_present_cache_flush(iommu: IntelIommu, did: int, sid: int) -> None:
    """``context_present_cache_flush``: nothing cached for a non-present entry unless the unit
    is in caching mode (then DID 0 tags the cached non-present entry)."""
    if not iommu.caching_mode:
        iommu.iommu_flush_write_buffer()
        return
    iommu.flush_context(did, sid, 0, DMA_CCMD_DEVICE_INVL)
    if iommu.sm:
        iommu.flush_pasid_cache(did, 0, QI_PC_ALL_PASIDS)
    iommu.flush_iotlb_dsi(did)


def intel_iommu_probe_device(iommu: IntelIommu, dev: Any) -> DeviceDomainInfo:
    """``intel_iommu_probe_device`` + the scalable-mode context entry (see the module doc).

    Takes ``iommu->lock`` for the context entry.  ``-EOPNOTSUPP`` in legacy mode, ``-ENOMEM``
    when the PASID directory or the context table cannot be allocated (nothing left behind).
    """
    if not iommu.sm:
        raise IommuError(errno.EOPNOTSUPP, f"{iommu.name}: legacy-mode context entries")
    pci_max = int(getattr(dev, "max_pasids", 0))
    pasid_ok = iommu.pasid_supported and pci_max > 0
    unit_max = 1 << (ecap_pss(iommu.ecap) + 1)
    ats_ok = iommu.ecap_bit("dt") and getattr(dev, "ats_cap", None) is not None
    sid = int(dev.sid)
    info = DeviceDomainInfo(
        iommu=iommu,
        dev=dev,
        bus=sid >> 8,
        devfn=sid & 0xFF,
        pfsid=sid,
        pasid_supported=pasid_ok,
        ats_supported=ats_ok,
        pci_max_pasids=pci_max,
        max_pasids=min(pci_max, unit_max) if pasid_ok else 0,
    )
    intel_pasid_alloc_table(info)
    try:
        with iommu.lock:
            try:
                ctx = iommu_context_addr(iommu, info.bus, info.devfn, True)
            except OutOfFrames as e:
                raise IommuError(errno.ENOMEM, f"{info.name}: context table: {e}") from e
            _write_context(iommu, info, ctx)
    except BaseException:
        intel_pasid_free_table(info)
        raise
    _context_present_cache_flush(iommu, 0, info.sid)
    _iommu_enable_dev_iotlb(info)
    return info


def _write_context(iommu: IntelIommu, info: DeviceDomainInfo, ctx: int) -> None:
    pt = info.pasid_table
    assert pt is not None
    q = iommu.quirks
    words = CONTEXT_ENTRY_SM.encode(
        P=1,
        DTE=int(info.ats_supported),
        PASIDE=int(info.pasid_supported and not q.v5_1_entry),
        PDTS=context_get_sm_pds(pt),
        PASIDDIRPTR=pt.table,
        RID_PASID=0,
        RID_PRIV=int(q.rid_priv),
    )
    mem = iommu.memory
    for k in (1, 2, 3):  # under iommu->lock
        mem.write64(ctx + 8 * k, words[k])
    mem.write64(ctx, words[0])  # context_set_present last
    iommu.clflush_cache_range(ctx, 32)


def _iommu_enable_dev_iotlb(info: DeviceDomainInfo) -> None:
    """``iommu_enable_dev_iotlb``: enable PASID, then ATS, on the function."""
    if info.pasid_supported:
        info.pasid_enabled = True
    if info.ats_supported:
        ats = info.dev.ats_cap
        ats.enabled = True
        info.ats_enabled = True
        info.ats_qdep = ATS_QDEP_DEFAULT


def _rid_did(iommu: IntelIommu, info: DeviceDomainInfo) -> int:
    """The DID of the device's RID domain on ``iommu`` (``domain->iommu_did[seq_id]``), or 0."""
    arr = getattr(info.domain, "iommu_array", None)
    if arr:
        di = arr.get(iommu.seq_id)
        if di is not None:
            return int(di.did)
    return 0


def intel_iommu_enable_pasid(iommu: IntelIommu, info: DeviceDomainInfo) -> None:
    """Linux ``intel_iommu_enable_pasid`` (5.x): set the context entry's PASIDE if clear and
    invalidate the device's context-cache entry (DID of the RID domain, SID, FM 0), then make
    sure PASID is enabled on the function.  Caller holds ``device_domain_lock`` and
    ``iommu->lock``.  ``-EINVAL`` if the device or the unit has no PASID support."""
    iommu.lock.assert_held()
    if not info.pasid_supported:
        raise IommuError(errno.EINVAL, f"{info.name}: no PASID support")
    ctx = iommu_context_addr(iommu, info.bus, info.devfn, False)
    if not ctx:
        raise IommuError(errno.EINVAL, f"{info.name}: no context entry")
    mem = iommu.memory
    lo = mem.read64(ctx)
    if not lo & _CTX_PASIDE:
        mem.write64(ctx, lo | _CTX_PASIDE)  # under iommu->lock
        iommu.flush_context(_rid_did(iommu, info), info.sid, 0, DMA_CCMD_DEVICE_INVL)
    if not info.pasid_enabled:
        _iommu_enable_dev_iotlb(info)


def intel_iommu_release_device(iommu: IntelIommu, info: DeviceDomainInfo) -> None:
    """``intel_iommu_release_device`` → ``domain_context_clear_one`` + PASID table free:
    clear the context entry, then context-cache (device), PASID-cache (all PASIDs of the old
    DID), IOTLB DSI and the device TLB, then free the PASID table.  Takes ``iommu->lock``."""
    with iommu.lock:
        ctx = iommu_context_addr(iommu, info.bus, info.devfn, False)
        if ctx:
            did = _rid_did(iommu, info) or FLPT_DEFAULT_DID
            for k in range(4):  # under iommu->lock
                iommu.memory.write64(ctx + 8 * k, 0)
            iommu.clflush_cache_range(ctx, 32)
    if ctx:
        iommu.flush_context(did, info.sid, 0, DMA_CCMD_DEVICE_INVL)
        iommu.flush_pasid_cache(did, 0, QI_PC_ALL_PASIDS)
        iommu.flush_iotlb_dsi(did)
        iommu.flush_dev_iotlb(info, 0, 0, 64 - 12)
    intel_pasid_free_table(info)
    info.ats_enabled = False
    info.pasid_enabled = False
