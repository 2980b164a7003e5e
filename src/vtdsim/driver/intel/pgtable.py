"""A domain's second-level page table (Linux ``struct dma_pte`` tables of a ``dmar_domain``).

Design rationale
----------------
The table lives where the hardware walks it: in :class:`PhysicalMemory`, in 4 KiB pages from the
:class:`FrameAllocator` tagged ``"pgtable"``.  There is no shadow copy, so what the driver
believes and what the hardware sees cannot drift apart; ``iova_to_phys`` walks the same bytes
the remapping unit walks.

Entries follow Linux bit for bit (``drivers/iommu/intel/iommu.c``, ``iommu.h``): a non-leaf
entry is ``phys | DMA_PTE_READ | DMA_PTE_WRITE`` (3), a leaf ``phys | prot`` with ``prot`` from
``DMA_PTE_READ`` (1), ``DMA_PTE_WRITE`` (2), ``DMA_PTE_SNP`` (0x800, when the domain snoops)
and ``DMA_PTE_LARGE_PAGE`` (PS, 0x80) for 2 MiB / 1 GiB leaves.  The bit positions come from
the second-level layouts of :mod:`vtdsim.spec.entries`.

Levels: ``agaw`` 1/2/3 = 3/4/5 levels (``agaw_to_level``), chosen by :meth:`for_iommu` with
Linux's ``domain_init`` rule (guest width rounded to whole levels, then the next width the unit's
SAGAW supports).

Mapping (``__domain_mapping``) proceeds in runs: for each position the largest page size that
the IOVA and physical alignment, the remaining length and the unit's CAP.SLLPS allow is chosen
(``hardware_largepage_caps``), then consecutive entries of one table are written together.
Runs of more than a few entries are written with one numpy operation on the page's
:meth:`PhysicalMemory.page_array` view, so a 1 GiB map at 4 KiB granularity (262,144 PTEs) is
512 vector stores, not 262,144 Python calls.  A 4 KiB map is a plain walk with ``read64`` /
``write64`` (the hot path of map/unmap benchmarks).

Unmapping follows ``intel_iommu_unmap`` + ``domain_unmap``: a range that partly covers a
superpage is widened to the whole superpage (Linux's "horrid API which requires us to unmap
more than the size argument"; the model also aligns the *start* down, which Linux's core never
needs because ``iommu_unmap`` splits on page-size boundaries) and the widened size is returned.
Page-table pages whose whole range is unmapped are detached (``dma_pte_clear_level``) and
returned in a freelist; the caller frees them with :meth:`DmaPageTable.free_pages` only after
the IOTLB flush (Linux's ``iommu_iotlb_gather`` freelist), or uses
:meth:`DmaPageTable.unmap_sync`, which does both.  Like Linux, tables only *partly* covered by
an unmap stay, empty, until a later unmap covers them or :meth:`DmaPageTable.free_all`
(``domain_exit``) frees everything.

Errors (all ``IommuError`` with Linux's errno; the table is unchanged when one is raised, see
:meth:`DmaPageTable.map`): misaligned IOVA/physical address/size ``-EINVAL`` (``iommu_map``'s
alignment check), no R/W permission ``-EINVAL`` (``__domain_mapping``), the end beyond the
domain's guest width ``-EFAULT`` (``intel_iommu_map``'s ``max_addr`` check) or beyond the table's
levels ``-EINVAL`` (``domain_pfn_supported``), an already mapped page ``-EEXIST`` (Linux only
``WARN``s "DMA PTE for vPFN already set" and keeps the old entry; the model refuses the whole
call), no memory for a table page ``-ENOMEM``.

Concurrency: Linux updates page tables without a lock; the one race it handles is two mappers
installing the same missing table (``cmpxchg64`` on the parent entry, the loser frees its page).
The model reproduces it: after allocating (a :func:`sync.point`), the parent entry is re-read and
the page freed if another thread installed one first.  Callers serialize map/unmap of overlapping
ranges, as the IOMMU API requires.
"""

from __future__ import annotations

import errno
from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np

from vtdsim.driver import sync
from vtdsim.driver.intel.dmar import (
    DEFAULT_DOMAIN_ADDRESS_WIDTH,
    agaw_to_level,
    agaw_to_width,
    cap_mgaw,
    cap_sagaw,
    guestwidth_to_adjustwidth,
    width_to_agaw,
)
from vtdsim.errors import ArgumentError, IommuError
from vtdsim.hw.memory import FrameAllocator, OutOfFrames
from vtdsim.spec.entries import SL_PTE_4K, SL_TABLE

if TYPE_CHECKING:
    from vtdsim.driver.intel.device import DeviceDomainInfo
    from vtdsim.driver.intel.dmar import IntelIommu

__all__ = [
    "DMA_PTE_LARGE_PAGE",
    "DMA_PTE_READ",
    "DMA_PTE_SNP",
    "DMA_PTE_WRITE",
    "IOMMU_CACHE",
    "IOMMU_READ",
    "IOMMU_WRITE",
    "DmaPageTable",
]

# dma_pte bits (Linux DMA_PTE_*), positions from the spec layouts.
DMA_PTE_READ = 1 << SL_TABLE.field("R").shift
DMA_PTE_WRITE = 1 << SL_TABLE.field("W").shift
DMA_PTE_LARGE_PAGE = 1 << SL_PTE_4K.field("PS").shift
DMA_PTE_SNP = 1 << SL_PTE_4K.field("SNP").shift
_PRESENT = DMA_PTE_READ | DMA_PTE_WRITE  # dma_pte_present: (val & 3) != 0
_ADDR = SL_TABLE.field("ADDR").mask  # dma_pte_addr
_PS = DMA_PTE_LARGE_PAGE

# iommu_map() prot flags (include/linux/iommu.h)
IOMMU_READ = 1 << 0
IOMMU_WRITE = 1 << 1
IOMMU_CACHE = 1 << 2

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
LEVEL_STRIDE = 9
_IDX = (1 << LEVEL_STRIDE) - 1
_ARANGE = np.arange(512, dtype=np.uint64)
_SMALL_RUN = 8  # runs up to this many entries use write64; longer ones numpy


def _shift(level: int) -> int:
    """``level_to_offset_bits``: pfn bits below the index of ``level``."""
    return (level - 1) * LEVEL_STRIDE


class DmaPageTable:
    """One domain's second-level table (``dmar_domain->pgd``, ``->agaw``, ``->gaw``...).

    ``DmaPageTable(frames, gaw, iommu=None, *, superpage=None, snooping=None)`` is Linux
    ``domain_init(domain, iommu, guest_width)``: ``gaw`` (guest address width, bits) is clamped
    to the unit's CAP.MGAW, rounded up to whole levels (``guestwidth_to_adjustwidth``) and the
    AGAW chosen is that one or the next CAP.SAGAW supports (``-ENODEV`` if none); without a unit,
    the rounded width decides.  ``superpage`` is ``domain->iommu_superpage`` (0: 4 KiB only,
    1: + 2 MiB, 2: + 1 GiB; default from the unit's CAP.SLLPS), ``snooping`` is
    ``domain->iommu_snooping`` (default: the unit's ECAP.SC).  The top page is allocated now
    (``alloc_pgtable_page``; ``-ENOMEM``).
    """

    def __init__(
        self,
        frames: FrameAllocator,
        gaw: int = DEFAULT_DOMAIN_ADDRESS_WIDTH,
        iommu: IntelIommu | None = None,
        *,
        superpage: int | None = None,
        snooping: bool | None = None,
    ) -> None:
        if not isinstance(gaw, int) or not 30 < gaw <= 64:
            raise ArgumentError("gaw", gaw, "a guest address width in bits, 31..64")
        if iommu is not None:
            gaw = min(gaw, cap_mgaw(iommu.cap))
        agaw = width_to_agaw(guestwidth_to_adjustwidth(gaw))
        if iommu is not None:
            sagaw = cap_sagaw(iommu.cap)
            while agaw < 5 and not sagaw >> agaw & 1:
                agaw += 1
        if agaw not in (1, 2, 3):
            raise IommuError(errno.ENODEV, f"no supported AGAW for a {gaw}-bit domain")
        if superpage is None:
            superpage = iommu.superpage if iommu is not None else 0
        if superpage not in (0, 1, 2):
            raise ArgumentError("superpage", superpage, "0, 1 (2 MiB) or 2 (1 GiB)")
        if snooping is None:
            snooping = iommu.ecap_bit("sc") if iommu is not None else False
        self.frames = frames
        self.memory = frames.memory
        self.agaw = agaw
        self.levels = agaw_to_level(agaw)
        self._va_bits = agaw_to_width(agaw)  # the table's input-address width
        self.gaw = min(gaw, agaw_to_width(agaw))
        self.superpage = superpage
        self.snooping = snooping
        self.max_addr = 0  # domain->max_addr
        #: table pages detached by a failed map, freed with the next unmap's freelist (after
        #: its flush) or by free_all
        self.pending: list[int] = []
        #: software walk cache: pfn >> 9 -> its level-1 table (a lookup shortcut of the
        #: driver's own, not Linux's); emptied whenever any table page is detached
        self._l1: dict[int, int] = {}
        self.pgd = self._alloc_table()

    @classmethod
    def for_iommu(cls, iommu: IntelIommu, gaw: int = DEFAULT_DOMAIN_ADDRESS_WIDTH) -> DmaPageTable:
        """``domain_init`` against ``iommu`` with the unit's own page allocator."""
        return cls(iommu.frames, gaw, iommu)

    def __repr__(self) -> str:
        return f"<DmaPageTable pgd={self.pgd:#x} levels={self.levels} gaw={self.gaw}>"

    # -- page allocation ------------------------------------------------------------------------

    def _alloc_table(self) -> int:
        """``alloc_pgtable_page``: a zeroed page tagged ``"pgtable"`` (``-ENOMEM``)."""
        sync.point("alloc:pgtable")
        try:
            return self.frames.alloc(0, "pgtable")
        except OutOfFrames as e:
            raise IommuError(errno.ENOMEM, f"page-table page allocation failed: {e}") from e

    def free_pages(self, freelist: list[int]) -> int:
        """``put_pages_list``: free detached pages (call only after the IOTLB flush).
        Returns how many were freed; ``freelist`` is emptied."""
        n = len(freelist)
        for page in freelist:
            self.frames.free(page)
        freelist.clear()
        return n

    # -- map ------------------------------------------------------------------------------------

    def prot_bits(self, prot: int) -> int:
        """``intel_iommu_map``'s translation to ``DMA_PTE_*``: read (1) and write (2) are the
        same bit in both encodings; snooping is requested by ``IOMMU_CACHE`` (4) or
        ``DMA_PTE_SNP`` (0x800) (``DMA_PTE`` bit 2, execute, is never set by Linux, so the two
        encodings cannot be confused) and honoured only when the domain snoops."""
        bits = prot & (DMA_PTE_READ | DMA_PTE_WRITE)
        if prot & (IOMMU_CACHE | DMA_PTE_SNP) and self.snooping:
            bits |= DMA_PTE_SNP
        return bits

    def map(self, iova: int, paddr: int, size: int, prot: int) -> None:
        """Map ``[iova, iova+size)`` to ``[paddr, ...)`` with ``prot`` (``IOMMU_READ`` |
        ``IOMMU_WRITE`` | ``IOMMU_CACHE``, or the ``DMA_PTE_*`` bits, see :meth:`prot_bits`):
        Linux ``intel_iommu_map`` → ``__domain_mapping``.

        Guarantee on error: no entry of the range is left written (entries this call wrote are
        cleared again; tables it installed are detached onto :attr:`pending`, freed after the
        next unmap's flush or by :meth:`free_all`, since the hardware may have cached them).
        """
        if size == 0:
            return
        if (iova | paddr | size) & (PAGE_SIZE - 1) or iova < 0 or paddr < 0 or size < 0:
            raise IommuError(
                errno.EINVAL,
                f"unaligned map: iova {iova:#x} pa {paddr:#x} size {size:#x} (min page 0x1000)",
            )
        # prot_bits(prot), inlined (hot path)
        pte_prot = prot & (DMA_PTE_READ | DMA_PTE_WRITE)
        if prot & (IOMMU_CACHE | DMA_PTE_SNP) and self.snooping:
            pte_prot |= DMA_PTE_SNP
        # Linux updates dma_pte tables without a lock (callers own disjoint ranges)
        sync.shared_write("dma_pte", self)
        if not pte_prot & _PRESENT:
            raise IommuError(errno.EINVAL, f"map without read or write permission ({prot:#x})")
        end = iova + size
        if end > 1 << self.gaw:
            raise IommuError(
                errno.EFAULT,
                f"iommu width ({self.gaw}) is not sufficient for the mapped address ({end:#x})",
            )
        if (end - 1) >> self._va_bits:
            raise IommuError(errno.EINVAL, f"iova {end - 1:#x} beyond the table's width")
        iov_pfn = iova >> PAGE_SHIFT
        phys_pfn = paddr >> PAGE_SHIFT
        nr = size >> PAGE_SHIFT
        if nr == 1:
            # 4 KiB hot path with the level-1 table known (_walk_fast's cache): one entry.
            table = self._l1.get(iov_pfn >> LEVEL_STRIDE, 0)
            if table:
                mem = self.memory
                slot = table + ((iov_pfn & _IDX) << 3)
                old = mem.read64(slot)
                if old & _PRESENT:
                    raise self._exists(iov_pfn, old)
                mem.write64(slot, phys_pfn << PAGE_SHIFT | pte_prot)
                if self.max_addr < end:
                    self.max_addr = end
                return
        written: list[tuple[int, int, int]] = []
        created: list[tuple[int, int]] = []
        try:
            if nr == 1:
                # 4 KiB fast path: one walk (through the read-only qword views), one entry.
                table = self._walk_fast(iov_pfn)
                if not table:
                    table = self._walk_alloc(iov_pfn, 1, created)
                slot = table + ((iov_pfn & _IDX) << 3)
                if self.memory.read64(slot) & _PRESENT:
                    raise self._exists(iov_pfn, self.memory.read64(slot))
                self.memory.write64(slot, phys_pfn << PAGE_SHIFT | pte_prot)
            else:
                self._map_runs(iov_pfn, phys_pfn, nr, pte_prot, written, created)
        except BaseException:
            self._unwind(written, created)
            raise
        if self.max_addr < end:
            self.max_addr = end

    def _map_runs(
        self,
        iov_pfn: int,
        phys_pfn: int,
        nr: int,
        pte_prot: int,
        written: list[tuple[int, int, int]],
        created: list[tuple[int, int]],
    ) -> None:
        while nr:
            level = self._largepage_level(iov_pfn, phys_pfn, nr)
            table = self._walk_alloc(iov_pfn, level, created)
            shift = _shift(level)
            idx = (iov_pfn >> shift) & _IDX
            n = min(nr >> shift, 512 - idx)
            leaf = pte_prot | (_PS if level > 1 else 0)
            self._check_run_free(table, idx, n, level, iov_pfn)
            self._fill(table, idx, n, phys_pfn << PAGE_SHIFT | leaf, PAGE_SIZE << shift)
            written.append((table, idx, n))
            step = n << shift
            iov_pfn += step
            phys_pfn += step
            nr -= step

    def _largepage_level(self, iov_pfn: int, phys_pfn: int, pages: int) -> int:
        """``hardware_largepage_caps``: 1 (4K), 2 (2M) or 3 (1G)."""
        support = self.superpage
        merge = iov_pfn | phys_pfn
        level = 1
        while support and not merge & _IDX:
            pages >>= LEVEL_STRIDE
            if not pages:
                break
            merge >>= LEVEL_STRIDE
            level += 1
            support -= 1
        return level

    def _walk_fast(self, pfn: int) -> int:
        """The level-1 table holding ``pfn`` if every level above is present (no superpage),
        else 0.  Reads through :attr:`PhysicalMemory.qword_pages` (the read-only hot-path view)
        and falls back to ``read64`` for pages it does not hold."""
        key = pfn >> LEVEL_STRIDE
        table = self._l1.get(key, 0)
        if table:
            return table
        mem = self.memory
        qp = mem.qword_pages
        level = self.levels
        table = self.pgd
        while level > 1:
            q = qp.get(table >> PAGE_SHIFT)
            i = (pfn >> _shift(level)) & _IDX
            v = int(q[i]) if q is not None else mem.read64(table + (i << 3))
            if not v & _PRESENT or v & _PS:
                return 0
            table = v & _ADDR
            level -= 1
        self._l1[key] = table
        return table

    def _walk_alloc(self, pfn: int, target: int, created: list[tuple[int, int]]) -> int:
        """``pfn_to_dma_pte(domain, pfn, &target_level)``: the table at ``target`` level that
        holds ``pfn``'s entry, installing missing tables (``phys | 3``)."""
        mem = self.memory
        level = self.levels
        table = self.pgd
        while level > target:
            slot = table + (((pfn >> _shift(level)) & _IDX) << 3)
            v = mem.read64(slot)
            if not v & _PRESENT:
                new = self._alloc_table()
                v = mem.read64(slot)  # cmpxchg64(&pte->val, 0, new | 3)
                if v & _PRESENT:
                    self.frames.free(new)
                else:
                    v = new | _PRESENT
                    mem.write64(slot, v)
                    created.append((slot, new))
            elif v & _PS:
                raise self._exists(pfn, v)
            table = v & _ADDR
            level -= 1
        return table

    def _exists(self, pfn: int, v: int) -> IommuError:
        return IommuError(
            errno.EEXIST, f"DMA PTE for vPFN {pfn:#x} already set (to {v:#x}) (__domain_mapping)"
        )

    def _check_run_free(self, table: int, idx: int, n: int, level: int, pfn: int) -> None:
        """Every entry of the run must be free.  At a superpage level an entry that points to
        an *empty* lower table is detached onto the freelist first (``switch_to_super_page``);
        anything mapped is ``-EEXIST``."""
        mem = self.memory
        if n <= _SMALL_RUN:
            busy = [i for i in range(idx, idx + n) if mem.read64(table + (i << 3)) & _PRESENT]
        else:
            arr = mem.page_array(table)
            busy = [int(i) + idx for i in np.flatnonzero(arr[idx : idx + n] & _PRESENT)]
        for i in busy:
            v = mem.read64(table + (i << 3))
            if level == 1 or v & _PS or not self._subtree_empty(level - 1, v & _ADDR):
                raise self._exists(pfn, v)
        for i in busy:
            v = mem.read64(table + (i << 3))
            mem.write64(table + (i << 3), 0)
            self._l1.clear()
            self._list_tables(level - 1, v & _ADDR, self.pending)

    def _subtree_empty(self, level: int, table: int) -> bool:
        arr = self.memory.page_array(table)
        present = np.flatnonzero(arr & _PRESENT)
        if level == 1:
            return present.size == 0
        for i in present:
            v = int(arr[i])
            if v & _PS or not self._subtree_empty(level - 1, v & _ADDR):
                return False
        return True

    def _fill(self, table: int, idx: int, n: int, first: int, step: int) -> None:
        if n <= _SMALL_RUN:
            w = self.memory.write64
            for k in range(n):
                w(table + ((idx + k) << 3), first + k * step)
        else:
            arr = self.memory.page_array(table)
            arr[idx : idx + n] = _ARANGE[:n] * np.uint64(step) + np.uint64(first)

    def _unwind(self, written: list[tuple[int, int, int]], created: list[tuple[int, int]]) -> None:
        mem = self.memory
        for table, idx, n in written:
            if n <= _SMALL_RUN:
                for k in range(n):
                    mem.write64(table + ((idx + k) << 3), 0)
            else:
                mem.page_array(table)[idx : idx + n] = 0
        for slot, new in reversed(created):
            mem.write64(slot, 0)
            self._l1.clear()
            self.pending.append(new)

    # -- unmap ----------------------------------------------------------------------------------

    def unmap(self, iova: int, size: int) -> tuple[int, list[int]]:
        """Clear the mappings of ``[iova, iova+size)``: Linux ``intel_iommu_unmap`` +
        ``domain_unmap``.  A superpage partly inside the range is removed whole and the range
        widened accordingly.

        Returns ``(size, freelist)``: the (widened) size, as Linux returns it whether or not
        anything was mapped, and the detached page-table pages, which the caller frees with
        :meth:`free_pages` only after the IOTLB flush (``iommu_iotlb_gather.freelist``).
        ``-EINVAL`` for an unaligned or out-of-width range (nothing changed).
        """
        start, last, freelist = self._unmap(iova, size)
        return (last - start + 1) << PAGE_SHIFT, freelist

    def _unmap(self, iova: int, size: int) -> tuple[int, int, list[int]]:
        sync.shared_write("dma_pte", self)  # lockless, as Linux's dma_pte_clear_level
        return self._unmap_cleared(iova, size)

    def _unmap_cleared(self, iova: int, size: int) -> tuple[int, int, list[int]]:
        """:meth:`_unmap` after its ``shared_write`` declaration."""
        if (
            size == PAGE_SIZE
            and not self.pending
            and not iova & (PAGE_SIZE - 1)
            and iova >= 0
            and not iova >> self._va_bits
        ):
            # _unmap_4k inlined (hot path; tests/test_perf_paths.py pins it to the general path)
            pfn = iova >> PAGE_SHIFT
            table = self._l1.get(pfn >> LEVEL_STRIDE, 0) or self._walk_fast(pfn)
            if table:
                self.memory.write64(table + ((pfn & _IDX) << 3), 0)
                if self.max_addr == iova + PAGE_SIZE:
                    self.max_addr = iova
                return pfn, pfn, []
        start, last = self._unmap_range(iova, size)
        freelist = self.pending
        self.pending = []
        self._clear_level(self.levels, self.pgd, 0, start, last, freelist)
        if self.max_addr == iova + size:
            self.max_addr = iova
        return start, last, freelist

    def _unmap_4k(self, iova: int) -> bool:
        """Hot path of a 4 KiB unmap: one walk; clear a level-1 leaf.  False (nothing done)
        when the page is not mapped at level 1 (superpage, hole) or the address is invalid:
        the general path handles those."""
        if iova & (PAGE_SIZE - 1) or iova < 0 or iova >> self._va_bits:
            return False
        pfn = iova >> PAGE_SHIFT
        table = self._walk_fast(pfn)
        if not table:
            return False
        self.memory.write64(table + ((pfn & _IDX) << 3), 0)
        if self.max_addr == iova + PAGE_SIZE:
            self.max_addr = iova
        return True

    def _unmap_range(self, iova: int, size: int) -> tuple[int, int]:
        if size <= 0 or (iova | size) & (PAGE_SIZE - 1) or iova < 0:
            raise IommuError(errno.EINVAL, f"unaligned unmap: iova {iova:#x} size {size:#x}")
        if (iova + size - 1) >> self._va_bits:
            raise IommuError(errno.EINVAL, f"unmap beyond the table's width: {iova + size:#x}")
        start = iova >> PAGE_SHIFT
        last = (iova + size - 1) >> PAGE_SHIFT
        lvl = self._leaf_level(start)
        if lvl > 1:
            start &= ~((1 << _shift(lvl)) - 1)
        lvl = self._leaf_level(last)
        if lvl > 1:
            last |= (1 << _shift(lvl)) - 1
        return start, last

    def _leaf_level(self, pfn: int) -> int:
        """Level of the superpage mapping ``pfn``, or 1 (``pfn_to_dma_pte`` with level 0)."""
        mem = self.memory
        level = self.levels
        table = self.pgd
        while level > 1:
            v = mem.read64(table + (((pfn >> _shift(level)) & _IDX) << 3))
            if not v & _PRESENT:
                return 1
            if v & _PS:
                return level
            table = v & _ADDR
            level -= 1
        return 1

    def _clear_level(
        self, level: int, table: int, pfn: int, start: int, last: int, freelist: list[int]
    ) -> None:
        """``dma_pte_clear_level``: clear entries in ``[start, last]``; an entry whose whole
        range is covered is cleared and its subtree detached; others are recursed into."""
        mem = self.memory
        shift = _shift(level)
        pfn = max(start, pfn)
        idx = (pfn >> shift) & _IDX
        end_idx = min(_IDX, idx + (last >> shift) - (pfn >> shift))
        n = end_idx - idx + 1
        if level == 1:
            if n <= _SMALL_RUN:
                for i in range(idx, end_idx + 1):
                    mem.write64(table + (i << 3), 0)
            else:
                mem.page_array(table)[idx : end_idx + 1] = 0
            return
        span = 1 << shift
        base = pfn & ~((span << LEVEL_STRIDE) - 1)
        if n <= _SMALL_RUN:
            present = [i for i in range(idx, end_idx + 1) if mem.read64(table + (i << 3)) & 3]
        else:
            arr = mem.page_array(table)
            present = [int(i) + idx for i in np.flatnonzero(arr[idx : end_idx + 1] & _PRESENT)]
        for i in present:
            slot = table + (i << 3)
            v = mem.read64(slot)
            level_pfn = base + i * span
            if start <= level_pfn and last >= level_pfn + span - 1:
                mem.write64(slot, 0)
                if not v & _PS:
                    self._l1.clear()
                    self._list_tables(level - 1, v & _ADDR, freelist)
            elif not v & _PS:
                self._clear_level(level - 1, v & _ADDR, level_pfn, start, last, freelist)
            else:  # pragma: no cover - _unmap_range widened the range over every superpage
                raise AssertionError("partly covered superpage after widening")

    def _list_tables(self, level: int, table: int, freelist: list[int]) -> None:
        """``dma_pte_list_pagetables``: ``table`` and every table below it onto ``freelist``."""
        freelist.append(table)
        if level == 1:
            return
        arr = self.memory.page_array(table)
        vals = arr[np.flatnonzero((arr & _PRESENT) != 0)]
        for v in vals:
            iv = int(v)
            if not iv & _PS:
                self._list_tables(level - 1, iv & _ADDR, freelist)

    def unmap_sync(
        self,
        iova: int,
        size: int,
        targets: Iterable[tuple[IntelIommu, int]],
        dev_infos: Iterable[DeviceDomainInfo] = (),
    ) -> int:
        """Strict unmap: :meth:`unmap`, then for every ``(iommu, did)`` the domain is attached
        to, ``iommu_flush_iotlb_psi`` (PSI or DSI, then the device TLBs of ``dev_infos``), then
        the detached pages are freed (Linux ``intel_iommu_unmap`` + ``intel_iommu_tlb_sync``).
        Returns the unmapped size, only when every flush completed."""
        sync.shared_write("dma_pte", self)  # _unmap's declaration, then its 4 KiB hot path
        if (
            size == PAGE_SIZE
            and not self.pending
            and not iova & (PAGE_SIZE - 1)
            and iova >= 0
            and not iova >> self._va_bits
        ):
            pfn = iova >> PAGE_SHIFT
            table = self._l1.get(pfn >> LEVEL_STRIDE, 0) or self._walk_fast(pfn)
            if table:
                self.memory.write64(table + ((pfn & _IDX) << 3), 0)
                if self.max_addr == iova + PAGE_SIZE:
                    self.max_addr = iova
                for iommu, did in targets:
                    # flush_iotlb_psi(did, iova, 1, ih=True, dev_infos=dev_infos): no page freed
                    iommu._flush_iotlb_psi(did, iova, 1, True, False, dev_infos)
                return PAGE_SIZE
        start, last, freelist = self._unmap_cleared(iova, size)
        pages = last - start + 1
        ih = not freelist
        for iommu, did in targets:
            # flush_iotlb_psi(did, addr, pages, ih=ih, dev_infos=dev_infos), positionally
            iommu._flush_iotlb_psi(did, start << PAGE_SHIFT, pages, ih, False, dev_infos)
        if freelist:
            self.free_pages(freelist)
        return pages << PAGE_SHIFT

    # -- queries and teardown -------------------------------------------------------------------

    def iova_to_phys(self, iova: int) -> int:
        """``intel_iommu_iova_to_phys``: the physical address, or 0 when not mapped."""
        if iova < 0 or iova >> self._va_bits:
            return 0
        sync.shared_read("dma_pte", self)
        mem = self.memory
        pfn = iova >> PAGE_SHIFT
        level = self.levels
        table = self.pgd
        while True:
            v = mem.read64(table + (((pfn >> _shift(level)) & _IDX) << 3))
            if not v & _PRESENT:
                return 0
            if level == 1 or v & _PS:
                off_bits = _shift(level) + PAGE_SHIFT
                return (v & _ADDR & ~((1 << off_bits) - 1)) | (iova & ((1 << off_bits) - 1))
            table = v & _ADDR
            level -= 1

    def pte(self, iova: int) -> tuple[int, int]:
        """``(level, raw entry)`` of the leaf (or first non-present entry) for ``iova``."""
        mem = self.memory
        pfn = iova >> PAGE_SHIFT
        level = self.levels
        table = self.pgd
        while True:
            v = mem.read64(table + (((pfn >> _shift(level)) & _IDX) << 3))
            if level == 1 or not v & _PRESENT or v & _PS:
                return level, v
            table = v & _ADDR
            level -= 1

    def table_pages(self) -> int:
        """Number of page-table pages reachable from ``pgd`` (tests: no leak, no sharing)."""
        if not self.pgd:
            return 0
        count = 0
        stack = [(self.levels, self.pgd)]
        while stack:
            level, table = stack.pop()
            count += 1
            if level == 1:
                continue
            arr = self.memory.page_array(table)
            for v in arr[np.flatnonzero((arr & _PRESENT) != 0)]:
                iv = int(v)
                if not iv & _PS:
                    stack.append((level - 1, iv & _ADDR))
        return count

    def shrink_to(self, agaw: int) -> None:
        """``prepare_domain_attach_device``'s level stripping: while the table has more levels
        than ``agaw`` allows, make the first entry's table the new top and free the old top.
        Caller has checked ``max_addr`` fits (``-EFAULT`` otherwise in Linux)."""
        self._l1.clear()
        while self.agaw > agaw:
            v = self.memory.read64(self.pgd)
            if v & _PRESENT:
                old = self.pgd
                self.pgd = v & _ADDR
                self.frames.free(old)
            self.agaw -= 1
            self.levels -= 1
        self._va_bits = agaw_to_width(self.agaw)
        self.gaw = min(self.gaw, self._va_bits)

    def free_all(self) -> None:
        """``domain_exit``: unmap everything, free every table page including the top and any
        pending freelist.  The domain must no longer be attached (no flush is issued)."""
        self._l1.clear()
        if not self.pgd:
            self.free_pages(self.pending)
            return
        last = (1 << (agaw_to_width(self.agaw) - PAGE_SHIFT)) - 1
        freelist = self.pending
        self.pending = []
        self._clear_level(self.levels, self.pgd, 0, 0, last, freelist)
        freelist.append(self.pgd)
        self.pgd = 0
        self.free_pages(freelist)
