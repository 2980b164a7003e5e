"""Per-device PASID tables and PASID-entry programming (Linux ``drivers/iommu/intel/pasid.c``).

Structure (VT-d 4.1 §9.5, §9.6): the context entry points to a PASID *directory* of 8-byte
entries indexed by ``pasid >> 6`` (``PASID_PDE_SHIFT``); each present directory entry
(``phys | P``) points to a 4 KiB leaf table of 64 PASID entries of 64 bytes, indexed by
``pasid & 0x3f``.

* :func:`intel_pasid_alloc_table`: directory sized as Linux does (``max_pasid = min(
  pci_max_pasids, 2^20)`` for PASID-capable devices, else 0; ``size = max_pasid >> 3``;
  ``order = get_order(size)``, 0 for size 0; then ``max_pasid = 1 << (order + 15)``, so even a
  non-PASID device gets a one-page directory covering 32768 PASIDs); PDTS = log2(max_pasid >> 6)
  - 7.  Pages tagged ``"pasid-dir"``.
* :func:`intel_pasid_get_entry`: leaf tables allocated lazily (``"pasid-table"``), installed in
  the directory with a compare-and-exchange (the loser of a race frees its page), never freed
  before the whole table.
* Entry setup (second level, first level, pass-through) writes every field with the spec layout
  :data:`vtdsim.spec.entries.PASID_ENTRY`, qwords 1..7 first and qword 0 (with P) last, then
  ``pasid_flush_caches``.  A present entry is ``-EBUSY`` (modern) unless the 5.1 behaviour is
  selected (:attr:`Quirks.v5_1_entry`, or ``overwrite=True``), which clears and rewrites it.
* :func:`intel_pasid_tear_down_entry`: clear, then PASID-cache (PASID-selective), IOTLB
  (P_IOTLB for first-level / pass-through, DSI for second level; P_IOTLB for all under 5.1),
  device TLB (unless caching mode), each completed with its wait descriptor before return.

Locking: ``lock_held=True`` (default) is the 5.x contract: the caller holds ``iommu->lock``
(asserted) for the whole call, flushes included (``aux_domain_add_dev`` and
``aux_domain_remove_dev`` call in with ``device_domain_lock`` and ``iommu->lock`` held).
``lock_held=False`` is the 6.x structure: the function takes ``iommu->lock`` around the entry
update and flushes after releasing it.

Errors: ``-EINVAL`` (missing capability, bad level skip), ``-ENODEV`` (no table, PASID beyond the
table, or no memory for a leaf table: Linux's ``intel_pasid_get_entry`` returns NULL), ``-EBUSY``
(present entry).  On error no entry was modified.
"""

from __future__ import annotations

import errno
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from vtdsim.driver import sync
from vtdsim.driver.core import DomainType
from vtdsim.driver.intel.dmar import (
    QI_PC_PASID_SEL,
    IntelIommu,
    cap_fl5lp_support,
)
from vtdsim.driver.intel.domain_id import FLPT_DEFAULT_DID, IommuDomainInfo, domain_id_iommu
from vtdsim.errors import ArgumentError, IommuError
from vtdsim.hw.memory import OutOfFrames
from vtdsim.spec.bits import Decoded
from vtdsim.spec.entries import PASID_DIR_ENTRY, PASID_ENTRY

if TYPE_CHECKING:
    from vtdsim.driver.intel.device import DeviceDomainInfo
    from vtdsim.driver.intel.pgtable import DmaPageTable

__all__ = [
    "PASID_FLAG_FL5LP",
    "PASID_FLAG_PAGE_SNOOP",
    "PASID_FLAG_SUPERVISOR_MODE",
    "PASID_MAX",
    "PASID_RID2PASID",
    "PGTT_FL_ONLY",
    "PGTT_NESTED",
    "PGTT_PT",
    "PGTT_SL_ONLY",
    "PasidTable",
    "SecondLevelDomain",
    "context_get_sm_pds",
    "intel_pasid_alloc_table",
    "intel_pasid_free_table",
    "intel_pasid_get_entry",
    "intel_pasid_replace_entry",
    "intel_pasid_setup_first_level",
    "intel_pasid_setup_pass_through",
    "intel_pasid_setup_second_level",
    "intel_pasid_tear_down_entry",
    "pasid_entry_read",
    "setup_second_level_held",
    "tear_down_entry_held",
]

PASID_MAX = 1 << 20  # intel_pasid_max_id
PASID_RID2PASID = 0  # IOMMU_NO_PASID
PASID_PDE_SHIFT = 6
PASID_PTE_MASK = (1 << PASID_PDE_SHIFT) - 1
PASID_ENTRY_SIZE = PASID_ENTRY.size  # 64
PGTT_FL_ONLY, PGTT_SL_ONLY, PGTT_NESTED, PGTT_PT = 1, 2, 3, 4

# pasid.h PASID_FLAG_* for intel_pasid_setup_first_level
PASID_FLAG_SUPERVISOR_MODE = 1 << 0
PASID_FLAG_FL5LP = 1 << 1
PASID_FLAG_PAGE_SNOOP = 1 << 2

_DIR_P = 1 << PASID_DIR_ENTRY.field("P").shift
_DIR_ADDR = PASID_DIR_ENTRY.field("SMPTBLPTR").mask
_PE_P = 1 << PASID_ENTRY.field("P").shift
_PE_FPD = 1 << PASID_ENTRY.field("FPD").shift
_PE_DID = PASID_ENTRY.field("DID")
_PE_PGTT = PASID_ENTRY.field("PGTT")
_PE_AW = PASID_ENTRY.field("AW")
_PE_SLPTPTR = PASID_ENTRY.field("SLPTPTR")
_PE_PGSNP = PASID_ENTRY.field("PGSNP")
_PE_SRE = PASID_ENTRY.field("SRE")
_PE_PWSNP = PASID_ENTRY.field("PWSNP")
#: VT-d 3.x NXE (bit 133), declared ignored by the 4.1 layout; Linux (5.x-6.x) still sets it.
_PE_NXE_Q2 = 1 << PASID_ENTRY.field("IGN_134_133").shift
# Hot-path copies of the layout (teardown reads DID/PGTT, second-level setup composes the entry
# with shifts instead of PASID_ENTRY.encode): (qword, shift, largest value) of each field.
_DID_W, _DID_SH, _DID_MAX = _PE_DID.word, _PE_DID.shift, (1 << _PE_DID.width) - 1
_PGTT_W, _PGTT_SH, _PGTT_MAX = _PE_PGTT.word, _PE_PGTT.shift, (1 << _PE_PGTT.width) - 1
_AW_W, _AW_SH, _AW_MAX = _PE_AW.word, _PE_AW.shift, (1 << _PE_AW.width) - 1
_SLPT_W, _SLPT_MASK = _PE_SLPTPTR.word, _PE_SLPTPTR.mask
_PGSNP_W, _PGSNP_SH = _PE_PGSNP.word, _PE_PGSNP.shift
_SRE_W, _SRE_SH = _PE_SRE.word, _PE_SRE.shift
_P_W, _P_BIT = PASID_ENTRY.field("P").word, _PE_P
_PWSNP_MASK = _PE_PWSNP.mask  # a computed property of the field: once, not per entry
#: ``DomainType.UNMANAGED`` itself (a module global is found faster than the enum attribute)
_UNMANAGED = DomainType.UNMANAGED


@dataclass
class PasidTable:
    """Linux ``struct pasid_table``: directory ``table`` (phys), its ``order``, ``max_pasid``."""

    table: int
    order: int
    max_pasid: int

    @property
    def pdts(self) -> int:
        return context_get_sm_pds(self)


class SecondLevelDomain(Protocol):
    """What :func:`intel_pasid_setup_second_level` needs of a ``dmar_domain``."""

    iommu_array: dict[int, IommuDomainInfo]
    pgtable: DmaPageTable | None
    type: Any  # core.DomainType; ``.value == "unmanaged"`` for IOMMU_DOMAIN_UNMANAGED


def context_get_sm_pds(table: PasidTable) -> int:
    """``context_get_sm_pds``: PDTS = log2(max_pasid >> 6) - 7 (0 if smaller)."""
    max_pde = table.max_pasid >> PASID_PDE_SHIFT
    pds = (max_pde & -max_pde).bit_length() - 1  # find_first_bit
    return 0 if pds < 7 else pds - 7


def _get_order(size: int) -> int:
    """``get_order``: smallest order with ``4096 << order >= size``."""
    order = 0
    while 4096 << order < size:
        order += 1
    return order


def intel_pasid_alloc_table(info: DeviceDomainInfo) -> PasidTable:
    """Linux ``intel_pasid_alloc_table(dev)``: allocate and attach ``info.pasid_table``.

    ``-EEXIST`` if the device has one already, ``-ENOMEM`` if the directory cannot be allocated
    (site ``"pasid-dir"``); nothing is changed on error."""
    if info.pasid_table is not None:
        raise IommuError(errno.EEXIST, f"{info.name}: PASID table already allocated")
    max_pasid = min(info.pci_max_pasids, PASID_MAX) if info.pasid_supported else 0
    size = max_pasid >> (PASID_PDE_SHIFT - 3)
    order = _get_order(size) if size else 0
    sync.point("alloc:pasid-dir")
    try:
        table = info.iommu.frames.alloc(order, "pasid-dir")
    except OutOfFrames as e:
        raise IommuError(errno.ENOMEM, f"{info.name}: PASID directory: {e}") from e
    pt = PasidTable(table, order, 1 << (order + 12 + 3))
    info.iommu.clflush_cache_range(table, size)
    info.pasid_table = pt
    return pt


def intel_pasid_free_table(info: DeviceDomainInfo) -> None:
    """Linux ``intel_pasid_free_table``: free every leaf table, then the directory.
    The caller has cleared the context entry (no hardware walk can reach the table)."""
    pt = info.pasid_table
    if pt is None:
        return
    info.pasid_table = None
    mem = info.iommu.memory
    frames = info.iommu.frames
    for i in range(pt.max_pasid >> PASID_PDE_SHIFT):
        v = mem.read64(pt.table + 8 * i)
        if v & _DIR_P:
            frames.free(v & _DIR_ADDR)
    frames.free(pt.table)


def intel_pasid_get_entry(info: DeviceDomainInfo, pasid: int) -> int:
    """Linux ``intel_pasid_get_entry``: physical address of ``pasid``'s 64-byte entry, with the
    leaf table allocated on first use; 0 (Linux NULL) if there is no table, ``pasid`` is beyond
    ``max_pasid`` or the leaf cannot be allocated (site ``"pasid-table"``)."""
    pt = info.pasid_table
    if not isinstance(pasid, int) or pasid < 0:
        raise ArgumentError("pasid", pasid, "a non-negative integer")
    if pt is None or pasid >= pt.max_pasid:
        return 0
    iommu = info.iommu
    mem = iommu.memory
    slot = pt.table + 8 * (pasid >> PASID_PDE_SHIFT)
    v = mem.read64(slot)
    if not v & _DIR_P:
        sync.point("alloc:pasid-table")
        try:
            leaf = iommu.frames.alloc(0, "pasid-table")
        except OutOfFrames:
            return 0
        v = mem.read64(slot)  # cmpxchg64(&dir[dir_index].val, 0, phys | P)
        if v & _DIR_P:
            iommu.frames.free(leaf)
        else:
            sync.shared_write("pasid-dir", slot)
            v = leaf | _DIR_P
            mem.write64(slot, v)
            iommu.clflush_cache_range(leaf, 4096)
            iommu.clflush_cache_range(slot, 8)
    return (v & _DIR_ADDR) + (pasid & PASID_PTE_MASK) * PASID_ENTRY_SIZE


def pasid_entry_read(info: DeviceDomainInfo, pasid: int) -> Decoded | None:
    """The decoded entry for ``pasid`` without allocating anything (None if no leaf table)."""
    pt = info.pasid_table
    if pt is None or not 0 <= pasid < pt.max_pasid:
        return None
    mem = info.iommu.memory
    v = mem.read64(pt.table + 8 * (pasid >> PASID_PDE_SHIFT))
    if not v & _DIR_P:
        return None
    addr = (v & _DIR_ADDR) + (pasid & PASID_PTE_MASK) * PASID_ENTRY_SIZE
    return PASID_ENTRY.decode(mem.read_qwords(addr, 8))


# --- entry writers ---------------------------------------------------------------------------


def _write_entry(iommu: IntelIommu, pte: int, words: tuple[int, ...], overwrite: bool) -> None:
    mem = iommu.memory
    if overwrite:
        mem.write64(pte, 0)  # pasid_clear_entry: P goes first
    mem.write_qwords(pte + 8, words[1:8])  # qwords 1..7 in one slice
    mem.write64(pte, words[0])  # pasid_set_present last


def _pwsnp(iommu: IntelIommu, words: tuple[int, ...]) -> tuple[int, ...]:
    """``pasid_set_page_snoop(pte, !!ecap_smpwc(iommu->ecap))`` (bit 87); with the 5.1 bug
    the value lands in qw1 bit 0 (DID bit 0)."""
    if not iommu.smpwc:
        return words
    if iommu.quirks.pwsnp_did_bit0:
        return (words[0], words[1] | 1, *words[2:])
    return (words[0], words[1] | _PWSNP_MASK, *words[2:])


def pasid_flush_caches(iommu: IntelIommu, pte: int, pasid: int, did: int) -> None:
    """Linux ``pasid_flush_caches`` for a newly present entry: clflush when the unit is not
    coherent; in caching mode a PASID-selective PASID-cache and a PASID IOTLB flush, else only
    the write-buffer flush (CAP.RWBF)."""
    iommu.clflush_cache_range(pte, PASID_ENTRY_SIZE)
    if iommu.caching_mode:
        iommu.flush_pasid_cache(did, pasid, QI_PC_PASID_SEL)
        iommu.flush_piotlb(did, pasid)
    else:
        iommu.iommu_flush_write_buffer()


def _program(
    iommu: IntelIommu,
    info: DeviceDomainInfo,
    pasid: int,
    words: tuple[int, ...],
    did: int,
    overwrite: bool | None,
    lock_held: bool,
) -> None:
    """The common tail of every setup: find the entry, refuse a present one (modern), write,
    then flush (under the lock in 5.x style, after releasing it in 6.x style)."""
    if overwrite is None:
        overwrite = iommu.quirks.v5_1_entry
    if lock_held:
        iommu.lock.assert_held()
    else:
        iommu.lock.acquire()
    try:
        pte = intel_pasid_get_entry(info, pasid)
        if not pte:
            raise IommuError(
                errno.ENODEV, f"{info.name}: no PASID entry for {pasid:#x} (intel_pasid_get_entry)"
            )
        present = bool(iommu.memory.read64(pte) & _PE_P)
        if present and not overwrite:
            raise IommuError(errno.EBUSY, f"{info.name}: PASID {pasid:#x} entry already present")
        _write_entry(iommu, pte, words, present)  # under iommu->lock
    finally:
        if not lock_held:
            iommu.lock.release()
    pasid_flush_caches(iommu, pte, pasid, did)


def iommu_skip_agaw(iommu: IntelIommu, pt: DmaPageTable) -> tuple[int, int]:
    """Linux ``iommu_skip_agaw``: follow entry 0 down from the domain's AGAW to the unit's;
    ``(agaw, pgd phys)``; ``-EINVAL`` if a level to skip is not present."""
    pgd = pt.pgd
    agaw = pt.agaw
    mem = iommu.memory
    while agaw > iommu.agaw:
        v = mem.read64(pgd)
        if not v & 3:
            raise IommuError(errno.EINVAL, "Invalid domain page table (level to skip absent)")
        pgd = v & ((1 << 52) - 1) & ~0xFFF
        agaw -= 1
    return agaw, pgd


def _sre(iommu: IntelIommu, pasid: int) -> int:
    """SRE for second-level entries: always in 5.1; from 5.x on only for ``pasid !=
    PASID_RID2PASID``, and (2022 fix "Set SRE bit only when hardware has SRS cap") only on a
    unit with ECAP.SRS."""
    if iommu.quirks.v5_1_entry:
        return 1
    return int(pasid != PASID_RID2PASID and iommu.srs)


def intel_pasid_setup_second_level(
    iommu: IntelIommu,
    domain: SecondLevelDomain,
    info: DeviceDomainInfo,
    pasid: int,
    *,
    overwrite: bool | None = None,
    lock_held: bool = True,
) -> None:
    """Linux ``intel_pasid_setup_second_level(iommu, domain, dev, pasid)``.

    Entry: DID (the domain's DID on ``iommu``), SLPTPTR (the domain's top table after
    ``iommu_skip_agaw``), AW = that AGAW, PGTT = 2, FPD = 0, PWSNP = ECAP.SMPWC, PGSNP for
    unmanaged domains on a snoop-control unit (not in 5.1), SRE (see :func:`_sre`), P.  Then
    ``pasid_flush_caches``.  ``overwrite`` (default: ``iommu.quirks.v5_1_entry``) rewrites a
    present entry instead of failing with ``-EBUSY``.
    """
    if not iommu.slts:
        raise IommuError(errno.EINVAL, f"No second level translation support on {iommu.name}")
    pt = domain.pgtable
    if pt is None or not pt.pgd:
        raise IommuError(errno.EINVAL, "domain has no second-level page table")
    agaw, pgd = iommu_skip_agaw(iommu, pt)
    did = domain_id_iommu(domain, iommu)
    dtype = domain.type
    if dtype is not DomainType.UNMANAGED:  # the enum member: its value is "unmanaged"
        dtype = getattr(dtype, "value", dtype)
    pgsnp = int(
        (dtype is DomainType.UNMANAGED or dtype == "unmanaged")
        and iommu.sc
        and not iommu.quirks.v5_1_entry
    )
    words = _SL_CACHE.get((agaw, pgd, did, pgsnp, sre := _sre(iommu, pasid)))
    if words is None:
        words = _sl_entry(agaw, pgd, did, pgsnp, sre)
        if len(_SL_CACHE) >= _SL_CACHE_MAX:
            _SL_CACHE.clear()
        _SL_CACHE[(agaw, pgd, did, pgsnp, sre)] = words
    _program(iommu, info, pasid, _pwsnp(iommu, words), did, overwrite, lock_held)


def setup_second_level_held(
    iommu: IntelIommu,
    domain: SecondLevelDomain,
    info: DeviceDomainInfo,
    pasid: int,
    overwrite: bool,
) -> None:
    """:func:`intel_pasid_setup_second_level` (Linux ``intel_pasid_setup_second_level``) for
    a caller that holds ``iommu->lock`` and has asserted it (``lock_held=True``, an explicit
    ``overwrite``): the same checks in the same order, the same entry (cached with its PWSNP
    already applied), the same writes (qwords 1..7, then qword 0) and the same
    ``pasid_flush_caches``, with ``iommu_skip_agaw``, ``domain_id_iommu``, ``_sre``,
    ``_pwsnp``, ``_program``, the directory walk of ``intel_pasid_get_entry`` (a present
    leaf, or the leaf's allocation on first use of its directory slot) and
    ``pasid_flush_caches`` inlined.  tests/test_perf_aux_path.py and
    tests/test_perf_driver_first_attach.py pin it to the general function."""
    if not iommu.slts:
        raise IommuError(errno.EINVAL, f"No second level translation support on {iommu.name}")
    pt = domain.pgtable
    if pt is None or not pt.pgd:
        raise IommuError(errno.EINVAL, "domain has no second-level page table")
    if pt.agaw > iommu.agaw:
        agaw, pgd = iommu_skip_agaw(iommu, pt)
    else:
        agaw, pgd = pt.agaw, pt.pgd
    di = domain.iommu_array.get(iommu.seq_id)  # domain_id_iommu
    if di is None:
        raise ArgumentError("domain", domain, f"a domain attached to {iommu.name}")
    did = di.did
    quirks = iommu.quirks
    v51 = quirks.v5_1_entry
    # pgsnp: as intel_pasid_setup_second_level (a DomainType member, or anything whose
    # ``value`` is "unmanaged")
    dtype = domain.type
    if dtype is _UNMANAGED:  # (the module's copy of the member: no enum attribute lookup)
        pgsnp = int(iommu.sc and not v51)
    else:
        dtype = getattr(dtype, "value", dtype)
        pgsnp = int((dtype is _UNMANAGED or dtype == "unmanaged") and iommu.sc and not v51)
    sre = 1 if v51 else int(pasid != PASID_RID2PASID and iommu.srs)  # _sre
    pw = (2 if quirks.pwsnp_did_bit0 else 1) if iommu.smpwc else 0  # _pwsnp's three forms
    key = (agaw, pgd, did, pgsnp, sre, pw)
    cached = _SL_PW_CACHE.get(key)
    if cached is None:
        words = _pwsnp(iommu, _sl_entry(agaw, pgd, did, pgsnp, sre))
        if len(_SL_PW_CACHE) >= _SL_CACHE_MAX:
            _SL_PW_CACHE.clear()
        cached = _SL_PW_CACHE[key] = (
            words[0],
            words[1:8],
            _PACK_QWORDS1(words[0]),
            _PACK_QWORDS7(*words[1:8]),
        )
    w0, tail, w0_bytes, tail_bytes = cached
    # _program, lock held
    mem = iommu.memory
    qp = mem.qword_pages  # read-only hot-path view (a pfn missing from it: read64)
    ptab = info.pasid_table
    pte = 0
    if type(pasid) is int and ptab is not None and 0 <= pasid < ptab.max_pasid:
        slot = ptab.table + 8 * (pasid >> PASID_PDE_SHIFT)
        q = qp.get(slot >> 12)
        v = q[(slot & 0xFFF) >> 3] if q is not None else mem.read64(slot)
        if v & _DIR_P:  # intel_pasid_get_entry, leaf table present: nothing to allocate
            pte = (v & _DIR_ADDR) + (pasid & PASID_PTE_MASK) * PASID_ENTRY_SIZE
        else:
            # intel_pasid_get_entry's first use of the directory slot, inlined: the same sync
            # operations, allocation, re-read (Linux's cmpxchg64 of the slot), directory entry
            # and clflush_cache_range counts (leaf, then slot), in the same order
            # (the device's unit allocates and flushes, as in intel_pasid_get_entry)
            owner = info.iommu
            if sync._backend is not None:  # sync.point, no call without a backend
                sync.point("alloc:pasid-table")
            try:
                leaf = owner.frames.alloc(0, "pasid-table")
            except OutOfFrames:
                leaf = -1  # intel_pasid_get_entry returns NULL: -ENODEV below
            if leaf >= 0:
                q = qp.get(slot >> 12)
                v = q[(slot & 0xFFF) >> 3] if q is not None else mem.read64(slot)
                if v & _DIR_P:
                    owner.frames.free(leaf)
                else:
                    if sync._backend is not None:  # sync.shared_write, no call without one
                        sync.shared_write("pasid-dir", slot)
                    v = leaf | _DIR_P
                    mem.write64(slot, v)
                    if not owner.coherent:  # clflush_cache_range(leaf) and (slot)
                        owner.clflushes += 2
                pte = (v & _DIR_ADDR) + (pasid & PASID_PTE_MASK) * PASID_ENTRY_SIZE
            else:
                pte = -1
    if pte <= 0:
        if not pte:  # the general walk (argument checks, no table, beyond max_pasid)
            pte = intel_pasid_get_entry(info, pasid)
        if pte <= 0:
            raise IommuError(
                errno.ENODEV, f"{info.name}: no PASID entry for {pasid:#x} (intel_pasid_get_entry)"
            )
    q = qp.get(pte >> 12)
    present = bool((q[(pte & 0xFFF) >> 3] if q is not None else mem.read64(pte)) & _PE_P)
    if present and not overwrite:
        raise IommuError(errno.EBUSY, f"{info.name}: PASID {pasid:#x} entry already present")
    # _write_entry: pasid_clear_entry first when present, qwords 1..7, then P last; into a
    # page already written (PhysicalMemory.written_pages) as the stored bytes themselves; a
    # page not yet written (a fresh leaf table) materialised as the first of those writes
    # would (PhysicalMemory.page_for_store), if it lies inside memory
    buf = mem.written_pages.get(pte >> 12)
    if buf is None and pte + PASID_ENTRY_SIZE <= mem.size:
        buf = mem.page_for_store(pte)
    if buf is not None:  # the 64-byte entry never crosses a page
        off = pte & 0xFFF
        if present:
            buf[off : off + 8] = _ZERO_QWORD
        buf[off + 8 : off + 64] = tail_bytes
        buf[off : off + 8] = w0_bytes
    else:
        if present:
            mem.write64(pte, 0)
        mem.write_qwords(pte + 8, tail)
        mem.write64(pte, w0)
    # pasid_flush_caches; clflush_cache_range(pte, PASID_ENTRY_SIZE) inlined (counted only)
    if not iommu.coherent:
        iommu.clflushes += 1
    if iommu.caching_mode:
        iommu.flush_pasid_cache(did, pasid, QI_PC_PASID_SEL)
        iommu.flush_piotlb(did, pasid)
    elif iommu.rwbf:  # iommu_flush_write_buffer is a no-op without CAP.RWBF
        iommu.iommu_flush_write_buffer()


#: setup_second_level_held's entries by (agaw, pgd, did, pgsnp, sre, PWSNP form), with
#: _pwsnp applied, as (qword 0, qwords 1..7, and both as PhysicalMemory stores them: native
#: little-endian bytes); bounded as _SL_CACHE.
_SL_PW_CACHE: dict[
    tuple[int, int, int, int, int, int], tuple[int, tuple[int, ...], bytes, bytes]
] = {}
_PACK_QWORDS1 = struct.Struct("=Q").pack
_PACK_QWORDS7 = struct.Struct("=7Q").pack
_ZERO_QWORD = bytes(8)
_ZERO_ENTRY = bytes(PASID_ENTRY_SIZE)


#: Composed second-level entries by (agaw, pgd, did, pgsnp, sre): an attach/detach cycle
#: writes the same entry again and again (only valid arguments are stored: _sl_entry raises
#: for the others).  Bounded: cleared when full.
_SL_CACHE: dict[tuple[int, int, int, int, int], tuple[int, ...]] = {}
_SL_CACHE_MAX = 4096


def _sl_entry(agaw: int, pgd: int, did: int, pgsnp: int, sre: int) -> tuple[int, ...]:
    """The second-level entry of ``intel_pasid_setup_second_level`` (``pasid_set_*``):
    ``PASID_ENTRY.encode(P=1, AW=agaw, PGTT=PGTT_SL_ONLY, SLPTPTR=pgd, DID=did, PGSNP=pgsnp,
    SRE=sre)`` composed with the layout's shifts; out-of-range values go through ``encode``
    for its typed error."""
    if (
        not 0 <= agaw <= _AW_MAX
        or not 0 <= did <= _DID_MAX
        or pgd < 0
        or pgd & ~_SLPT_MASK
        or pgsnp not in (0, 1)
        or sre not in (0, 1)
    ):
        return PASID_ENTRY.encode(
            P=1, AW=agaw, PGTT=PGTT_SL_ONLY, SLPTPTR=pgd, DID=did, PGSNP=pgsnp, SRE=sre
        )
    w = [0] * 8
    w[_P_W] |= _P_BIT
    w[_AW_W] |= agaw << _AW_SH
    w[_PGTT_W] |= PGTT_SL_ONLY << _PGTT_SH
    w[_SLPT_W] |= pgd  # address field: in place
    w[_DID_W] |= did << _DID_SH
    w[_PGSNP_W] |= pgsnp << _PGSNP_SH
    w[_SRE_W] |= sre << _SRE_SH
    return tuple(w)


def intel_pasid_setup_pass_through(
    iommu: IntelIommu,
    info: DeviceDomainInfo,
    pasid: int,
    *,
    overwrite: bool | None = None,
    lock_held: bool = True,
) -> None:
    """Linux ``intel_pasid_setup_pass_through``: DID = FLPT_DEFAULT_DID (1), AW = the unit's
    AGAW, PGTT = 4, FPD = 0, PWSNP = ECAP.SMPWC, SRE when ECAP.SRS (always in 5.1), P; then
    ``pasid_flush_caches``.  ``-EINVAL`` without ECAP.PT."""
    if not iommu.ecap_bit("pt"):
        raise IommuError(errno.EINVAL, f"No pass-through support on {iommu.name}")
    did = FLPT_DEFAULT_DID
    # SRE: always in 5.x; "if (ecap_srs(iommu->ecap))" since the 2022 fix (no PASID test,
    # unlike second level); dropped altogether in 6.2+ (not modelled)
    sre = int(iommu.quirks.v5_1_entry or iommu.ecap_bit("srs"))
    words = PASID_ENTRY.encode(P=1, AW=iommu.agaw, PGTT=PGTT_PT, DID=did, SRE=sre)
    _program(iommu, info, pasid, _pwsnp(iommu, words), did, overwrite, lock_held)


def intel_pasid_setup_first_level(
    iommu: IntelIommu,
    info: DeviceDomainInfo,
    pgd: int,
    pasid: int,
    did: int,
    flags: int = 0,
    *,
    overwrite: bool | None = None,
    lock_held: bool = True,
) -> None:
    """Linux ``intel_pasid_setup_first_level(iommu, dev, pgd, pasid, did, flags)``:
    FLPTPTR = ``pgd``, SRE and WPE for ``PASID_FLAG_SUPERVISOR_MODE`` (``-EINVAL`` without
    ECAP.SRS),
    FLPM = 1 for ``PASID_FLAG_FL5LP`` (``-EINVAL`` without CAP.FL5LP), PGSNP for
    ``PASID_FLAG_PAGE_SNOOP``, DID, AW = the unit's AGAW, PWSNP = ECAP.SMPWC, NXE (bit 133,
    ignored by VT-d 4.1 but set by Linux), PGTT = 1, P; then ``pasid_flush_caches``.
    ``-EINVAL`` without ECAP.FLTS."""
    if not iommu.ecap_bit("flts"):
        raise IommuError(errno.EINVAL, f"No first level translation support on {iommu.name}")
    sre = 0
    if flags & PASID_FLAG_SUPERVISOR_MODE:  # pasid_set_sre + pasid_set_wpe
        if not iommu.ecap_bit("srs"):
            raise IommuError(errno.EINVAL, f"No supervisor request support on {iommu.name}")
        sre = 1
    flpm = 0
    if flags & PASID_FLAG_FL5LP:
        if not cap_fl5lp_support(iommu.cap):
            raise IommuError(
                errno.EINVAL, f"No 5-level paging support for first-level on {iommu.name}"
            )
        flpm = 1
    words = PASID_ENTRY.encode(
        P=1,
        AW=iommu.agaw,
        PGTT=PGTT_FL_ONLY,
        DID=did,
        FLPTPTR=pgd,
        FLPM=flpm,
        SRE=sre,
        WPE=sre,
        PGSNP=int(bool(flags & PASID_FLAG_PAGE_SNOOP)),
    )
    words = (words[0], words[1], words[2] | _PE_NXE_Q2, *words[3:])
    _program(iommu, info, pasid, _pwsnp(iommu, words), did, overwrite, lock_held)


def intel_pasid_replace_entry(
    iommu: IntelIommu,
    info: DeviceDomainInfo,
    pasid: int,
    domain: SecondLevelDomain | None,
    old_did: int,
) -> None:
    """Linux ``intel_pasid_replace_second_level`` (``domain``) and
    ``intel_pasid_replace_pass_through`` (``domain=None``), 6.13+ ("iommu/vt-d: Add pasid
    replace helpers"), with ``iommu->lock`` held by the caller.

    The new entry is composed as its setup composes it (same fields, same checks: ``-EINVAL``
    without SLTS or PT support); then the entry must exist (``-ENODEV``) and be present
    (``-EINVAL``: nothing to replace), and is overwritten in place (``*pte = new_pte``): it
    never becomes non-present, so a DMA at ``pasid`` translates through the old domain or
    the new one, never faults.  Then ``intel_pasid_flush_present(iommu, dev, pasid, old_did,
    pte)``: clflush if not coherent, PASID-selective PASID-cache invalidation and a PASID
    IOTLB invalidation of everything in the PASID, both for the *old* DID (VT-d 5.0 Table 28),
    then the PASID-based device-TLB invalidation of the whole address space; each its own
    ``qi_submit_sync`` with its wait.  (``intel_drain_pasid_prq``: no page requests here.)
    Nothing is written when an error is raised."""
    iommu.lock.assert_held()
    if domain is not None:
        if not iommu.slts:
            raise IommuError(errno.EINVAL, f"No second level translation support on {iommu.name}")
        pt = domain.pgtable
        if pt is None or not pt.pgd:
            raise IommuError(errno.EINVAL, "domain has no second-level page table")
        agaw, pgd = iommu_skip_agaw(iommu, pt)
        did = domain_id_iommu(domain, iommu)
        dtype = getattr(domain.type, "value", domain.type)
        pgsnp = int(dtype == "unmanaged" and iommu.sc and not iommu.quirks.v5_1_entry)
        words = _sl_entry(agaw, pgd, did, pgsnp, _sre(iommu, pasid))
    else:
        if not iommu.ecap_bit("pt"):
            raise IommuError(errno.EINVAL, f"No pass-through support on {iommu.name}")
        sre = int(iommu.quirks.v5_1_entry or iommu.ecap_bit("srs"))
        words = PASID_ENTRY.encode(P=1, AW=iommu.agaw, PGTT=PGTT_PT, DID=FLPT_DEFAULT_DID, SRE=sre)
    words = _pwsnp(iommu, words)
    pte = intel_pasid_get_entry(info, pasid)
    if not pte:
        raise IommuError(
            errno.ENODEV, f"{info.name}: no PASID entry for {pasid:#x} (intel_pasid_get_entry)"
        )
    mem = iommu.memory
    current = mem.read_qwords(pte, 8)
    if not current[0] & _PE_P:
        raise IommuError(errno.EINVAL, f"{info.name}: PASID {pasid:#x} entry is not present")
    if current[_DID_W] >> _DID_SH & _DID_MAX != old_did:  # WARN_ON(old_did != ...)
        raise IommuError(
            errno.EINVAL,
            f"{info.name}: PASID {pasid:#x} entry has DID "
            f"{current[_DID_W] >> _DID_SH & _DID_MAX}, expected the old domain's {old_did}",
        )
    mem.write_qwords(pte, words)  # *pte = new_pte: present before, present after
    # intel_pasid_flush_present
    iommu.clflush_cache_range(pte, PASID_ENTRY_SIZE)
    iommu.flush_pasid_cache(old_did, pasid, QI_PC_PASID_SEL)
    iommu.flush_piotlb(old_did, pasid)
    iommu.flush_dev_iotlb(info, pasid, 0, 64 - 12)  # devtlb_invalidation_with_pasid


def intel_pasid_tear_down_entry(
    iommu: IntelIommu,
    info: DeviceDomainInfo,
    pasid: int,
    fault_ignore: bool = False,
    *,
    lock_held: bool = True,
) -> None:
    """Linux ``intel_pasid_tear_down_entry(iommu, dev, pasid, fault_ignore)``.

    Reads DID and PGTT, clears all 8 qwords (qw0 = FPD when ``fault_ignore`` and the entry was
    present), clflush if not coherent, then: PASID-cache PASID-selective (DID, PASID); IOTLB:
    P_IOTLB all-in-PASID for first-level / pass-through, DSI (DID) for second level; device TLB
    unless caching mode: PASID form for ``pasid != 0``, non-PASID form for RID2PASID, whole
    address space (mask 52).  Every flush completes (wait descriptor) before return.

    Modern: a non-present entry is left alone (returns early).  5.1 (``v5_1_entry``): no present
    check, P_IOTLB whatever the PGTT, device TLB always in the non-PASID form.
    """
    if lock_held:
        iommu.lock.assert_held()
        tear_down_entry_held(iommu, info, pasid, fault_ignore)
        return
    v51 = iommu.quirks.v5_1_entry
    iommu.lock.acquire()
    mem = iommu.memory
    try:
        pte = intel_pasid_get_entry(info, pasid)
        if not pte:
            return  # WARN_ON(!pte)
        words = mem.read_qwords(pte, 8)
        present = bool(words[0] & _PE_P)
        if not present and not v51:
            return
        did = words[_DID_W] >> _DID_SH & _DID_MAX  # pasid_get_domain_id
        pgtt = words[_PGTT_W] >> _PGTT_SH & _PGTT_MAX  # pasid_pte_get_pgtt
        # pasid_clear_entry(_with_fpd): qword 0 then 1..7, one slice, under iommu->lock
        mem.write_qwords(pte, (_PE_FPD if fault_ignore and present else 0, 0, 0, 0, 0, 0, 0, 0))
    finally:
        iommu.lock.release()
    _tear_down_flushes(iommu, info, pasid, pte, did, pgtt, v51)


def tear_down_entry_held(
    iommu: IntelIommu, info: DeviceDomainInfo, pasid: int, fault_ignore: bool = False
) -> None:
    """:func:`intel_pasid_tear_down_entry` with ``iommu->lock`` held by the caller, who has
    asserted it (``lock_held=True``): the directory walk of ``intel_pasid_get_entry`` inlined
    for a present leaf table (else the function itself, which may allocate one, as Linux)."""
    v51 = iommu.quirks.v5_1_entry
    mem = iommu.memory
    qp = mem.qword_pages  # read-only hot-path view (a pfn missing from it: read64)
    ptab = info.pasid_table
    pte = 0
    if type(pasid) is int and ptab is not None and 0 <= pasid < ptab.max_pasid:
        slot = ptab.table + 8 * (pasid >> PASID_PDE_SHIFT)
        q = qp.get(slot >> 12)
        v = q[(slot & 0xFFF) >> 3] if q is not None else mem.read64(slot)
        if v & _DIR_P:
            pte = (v & _DIR_ADDR) + (pasid & PASID_PTE_MASK) * PASID_ENTRY_SIZE
    if not pte:
        pte = intel_pasid_get_entry(info, pasid)
        if not pte:
            return  # WARN_ON(!pte)
    q = qp.get(pte >> 12)
    if q is not None:  # the 64-byte entry never crosses a page: its qwords in place
        i = (pte & 0xFFF) >> 3
        w0, wd, wp = q[i], q[i + _DID_W], q[i + _PGTT_W]
    else:
        words = mem.read_qwords(pte, 8)
        w0, wd, wp = words[0], words[_DID_W], words[_PGTT_W]
    present = bool(w0 & _PE_P)
    if not present and not v51:
        return
    did = wd >> _DID_SH & _DID_MAX  # pasid_get_domain_id
    pgtt = wp >> _PGTT_SH & _PGTT_MAX  # pasid_pte_get_pgtt
    # pasid_clear_entry(_with_fpd): qword 0 then 1..7, one slice, under iommu->lock; into a
    # page already written (PhysicalMemory.written_pages) as the stored bytes themselves
    buf = mem.written_pages.get(pte >> 12)
    if buf is not None and not (fault_ignore and present):
        off = pte & 0xFFF
        buf[off : off + PASID_ENTRY_SIZE] = _ZERO_ENTRY
    else:
        mem.write_qwords(pte, (_PE_FPD if fault_ignore and present else 0, 0, 0, 0, 0, 0, 0, 0))
    # _tear_down_flushes, inlined: Linux's order, each its own qi_submit_sync with its wait;
    # clflush_cache_range(pte, PASID_ENTRY_SIZE) inlined (counted only)
    if not iommu.coherent:
        iommu.clflushes += 1
    iommu.flush_pasid_cache(did, pasid, QI_PC_PASID_SEL)
    if v51 or pgtt in (PGTT_PT, PGTT_FL_ONLY):
        iommu.flush_piotlb(did, pasid)
    else:
        iommu.flush_iotlb_dsi(did)
    if not iommu.caching_mode:
        # devtlb_invalidation_with_pasid: whole address space, 64 - VTD_PAGE_SHIFT
        iommu.flush_dev_iotlb(info, 0 if v51 else pasid, 0, 64 - 12)


def _tear_down_flushes(
    iommu: IntelIommu,
    info: DeviceDomainInfo,
    pasid: int,
    pte: int,
    did: int,
    pgtt: int,
    v51: bool,
) -> None:
    """The flushes of ``intel_pasid_tear_down_entry``, in Linux's order, each its own
    ``qi_submit_sync`` with its wait descriptor: clflush, PASID-cache PASID-selective, IOTLB
    (P_IOTLB or DSI), device TLB."""
    iommu.clflush_cache_range(pte, PASID_ENTRY_SIZE)
    iommu.flush_pasid_cache(did, pasid, QI_PC_PASID_SEL)
    if v51 or pgtt in (PGTT_PT, PGTT_FL_ONLY):
        iommu.flush_piotlb(did, pasid)
    else:
        iommu.flush_iotlb_dsi(did)
    if not iommu.caching_mode:
        # devtlb_invalidation_with_pasid: whole address space, 64 - VTD_PAGE_SHIFT
        iommu.flush_dev_iotlb(info, 0 if v51 else pasid, 0, 64 - 12)
