"""Second-level page tables (Linux ``dma_pte`` code in ``drivers/iommu/intel/iommu.c``).

Checks the entry encodings against the spec layouts, superpage selection
(``hardware_largepage_caps``), Linux's errnos, the freelist discipline (pages freed only after
the flush, never leaked), the 1 GiB batch map and, through the hardware model, that the unit
translates exactly what the table says.
"""

from __future__ import annotations

import errno
import random
import time
from dataclasses import dataclass, field
from typing import Any

import pytest

from vtdsim.driver.intel.device import intel_iommu_probe_device
from vtdsim.driver.intel.dmar import IntelIommu
from vtdsim.driver.intel.domain_id import IommuDomainInfo, domain_attach_iommu
from vtdsim.driver.intel.inject import FaultInjector
from vtdsim.driver.intel.pasid import intel_pasid_setup_second_level
from vtdsim.driver.intel.pgtable import (
    DMA_PTE_SNP,
    IOMMU_CACHE,
    IOMMU_READ,
    IOMMU_WRITE,
    DmaPageTable,
)
from vtdsim.errors import IommuError
from vtdsim.hw.caps import Capabilities
from vtdsim.hw.memory import FrameAllocator
from vtdsim.hw.platform import Platform
from vtdsim.spec import descriptors as D
from vtdsim.spec.entries import SL_PDE_2M, SL_PDPE_1G, SL_PTE_4K, SL_TABLE

RW = IOMMU_READ | IOMMU_WRITE
M2 = 1 << 21
G1 = 1 << 30


@dataclass
class Env:
    platform: Platform
    iommu: IntelIommu
    frames: FrameAllocator
    injector: FaultInjector


def env(caps: Capabilities | None = None, memory: int = 1 << 32) -> Env:
    p = Platform(memory)
    unit = p.add_unit(caps or Capabilities())
    frames = FrameAllocator(p.memory, 1 << 28, 1 << 30)
    inj = FaultInjector()
    inj.attach(frames)
    io = IntelIommu(unit, frames, injector=inj)
    io.boot()
    return Env(p, io, frames, inj)


def table(e: Env, gaw: int = 48) -> DmaPageTable:
    return DmaPageTable(e.frames, gaw, e.iommu)


def walk(pt: DmaPageTable, iova: int) -> list[tuple[int, int]]:
    """Every (level, entry) on the way to ``iova``'s leaf."""
    out = []
    t, level = pt.pgd, pt.levels
    while True:
        v = pt.memory.read64(t + (((iova >> (12 + 9 * (level - 1))) & 511) << 3))
        out.append((level, v))
        if level == 1 or not v & 3 or v & 0x80:
            return out
        t, level = v & ((1 << 52) - 1) & ~0xFFF, level - 1


# --- geometry -----------------------------------------------------------------------------------


def test_levels_follow_linux_agaw_logic() -> None:
    e = env(Capabilities(sagaw=frozenset({39, 48, 57}), mgaw=57))
    assert [table(e, w).levels for w in (39, 48, 57, 40)] == [3, 4, 5, 4]
    e4 = env()  # SAGAW {39, 48}, MGAW 48
    assert table(e4, 57).levels == 4 and table(e4, 57).gaw == 48
    e3 = env(Capabilities(sagaw=frozenset({48})))
    assert table(e3, 39).levels == 4  # next supported width
    e5 = env(Capabilities(sagaw=frozenset({39}), mgaw=39))
    assert table(e5, 48).levels == 3  # clamped to MGAW 39 first
    e6 = env(Capabilities(sagaw=frozenset({39}), mgaw=48))
    with pytest.raises(IommuError) as err:
        table(e6, 48)  # 4 levels wanted, no wider AGAW supported
    assert err.value.errno == errno.ENODEV


def test_4k_entries_bit_exact() -> None:
    e = env()
    pt = table(e)
    before = e.frames.count("pgtable")
    pt.map(0x12345000, 0xABCDE000, 0x1000, RW)
    assert e.frames.count("pgtable") == before + 3
    path = walk(pt, 0x12345000)
    assert [lvl for lvl, _ in path] == [4, 3, 2, 1]
    for _lvl, v in path[:-1]:
        assert v & 0xFFF == 3  # non-leaf: phys | R | W
        assert SL_TABLE.reserved_violations((v,), haw=46) == []
        assert e.frames.owner(v & ~0xFFF) == "pgtable"
    assert path[-1][1] == 0xABCDE000 | 3
    assert SL_PTE_4K.decode((path[-1][1],)).ADDR == 0xABCDE000
    assert pt.iova_to_phys(0x12345ABC) == 0xABCDEABC
    assert pt.iova_to_phys(0x12346000) == 0


def test_read_only_and_snoop() -> None:
    e = env()
    pt = table(e)
    pt.map(0x1000, 0x5000, 0x1000, IOMMU_READ | IOMMU_CACHE)
    assert walk(pt, 0x1000)[-1][1] == 0x5000 | 1 | DMA_PTE_SNP
    pt.map(0x2000, 0x5000, 0x1000, IOMMU_WRITE | DMA_PTE_SNP)  # DMA_PTE encoding accepted
    assert walk(pt, 0x2000)[-1][1] == 0x5000 | 2 | DMA_PTE_SNP
    ns = env(Capabilities(snoop_control=False))
    pt2 = table(ns)
    pt2.map(0x1000, 0x5000, 0x1000, RW | IOMMU_CACHE)
    assert walk(pt2, 0x1000)[-1][1] == 0x5000 | 3


def test_superpages_chosen_by_alignment_and_caps() -> None:
    e = env()
    pt = table(e)
    pt.map(G1, 2 * G1, G1 + 2 * M2 + 0x3000, RW)
    lvl, v = walk(pt, G1)[-1]
    assert lvl == 3 and v == 2 * G1 | 0x80 | 3
    assert SL_PDPE_1G.reserved_violations((v,), haw=46) == []
    lvl, v = walk(pt, 2 * G1 + M2)[-1]
    assert lvl == 2 and v == 2 * G1 + G1 + M2 | 0x80 | 3
    assert SL_PDE_2M.reserved_violations((v,), haw=46) == []
    assert walk(pt, 2 * G1 + 2 * M2)[-1] == (1, 3 * G1 + 2 * M2 | 3)
    assert pt.iova_to_phys(G1 + 0x12345) == 2 * G1 + 0x12345
    # misaligned physical address: 4K pages only
    pt.map(8 * G1, 0x1000, M2, RW)
    assert walk(pt, 8 * G1)[-1][0] == 1
    # no SLLPS: 4K pages only
    e0 = env(Capabilities(sl_large_pages=frozenset()))
    pt0 = table(e0)
    pt0.map(0, 0, M2, RW)
    assert walk(pt0, 0)[-1][0] == 1
    e1 = env(Capabilities(sl_large_pages=frozenset({21})))
    pt1 = table(e1)
    pt1.map(0, 0, G1, RW)
    assert walk(pt1, 0)[-1][0] == 2


# --- errors --------------------------------------------------------------------------------------


def test_map_errors_change_nothing() -> None:
    e = env()
    pt = table(e)
    pt.map(0x200000, 0x200000, 0x2000, RW)
    snap = e.frames.count("pgtable")
    cases = [
        ((0x1001, 0x1000, 0x1000, RW), errno.EINVAL),
        ((0x1000, 0x1800, 0x1000, RW), errno.EINVAL),
        ((0x1000, 0x1000, 0x1000, IOMMU_CACHE), errno.EINVAL),
        ((1 << 48, 0x1000, 0x1000, RW), errno.EFAULT),
        ((0x1FF000, 0x9000, 0x3000, RW), errno.EEXIST),  # last page overlaps
    ]
    for args, err in cases:
        with pytest.raises(IommuError) as exc:
            pt.map(*args)
        assert exc.value.errno == err, args
    assert pt.iova_to_phys(0x1FF000) == 0 and pt.iova_to_phys(0x201000) == 0x201000
    assert pt.table_pages() == snap
    # a 2M map over an existing 4K mapping: EEXIST; over an empty table: switch to superpage
    with pytest.raises(IommuError) as exc:
        pt.map(0x200000, 0x400000, M2, RW)
    assert exc.value.errno == errno.EEXIST
    _n, fl = pt.unmap(0x200000, 0x2000)
    pt.free_pages(fl)
    pt.map(0x200000, 0x400000, M2, RW)
    assert walk(pt, 0x200000)[-1] == (2, 0x400000 | 0x80 | 3)
    assert pt.pending  # the empty L1 table waits for a flush
    pt.free_all()
    assert e.frames.count("pgtable") == 0


def test_enomem_unwinds_completely() -> None:
    e = env()
    pt = table(e)
    pt.map(0x3000, 0x3000, 0x1000, RW)
    base = e.frames.count("pgtable")
    for n in range(3):
        e.injector.fail("pgtable", after=n)
        with pytest.raises(IommuError) as exc:
            pt.map(5 * G1 + 0x3000, 0x10000000, 4 * M2, RW)  # needs 1 + 1 + 4 tables
        assert exc.value.errno == errno.ENOMEM
        e.injector.clear()
        assert pt.iova_to_phys(5 * G1 + 0x3000) == 0
        assert pt.table_pages() == base
    assert pt.iova_to_phys(0x3000) == 0x3000
    pt.free_all()
    assert e.frames.count("pgtable") == 0


# --- unmap ----------------------------------------------------------------------------------------


def test_unmap_frees_only_whole_tables_after_flush() -> None:
    e = env()
    pt = table(e)
    pt.map(0, 0x40000000, 4 * M2, RW | 0)  # 2M-aligned: four 2M superpages, no L1 table
    pt.map(G1, 0x80001000, 2 * M2, RW)  # 4K pages: two L1 tables
    pages = pt.table_pages()
    n, fl = pt.unmap(G1, 0x1000)
    assert n == 0x1000 and fl == []  # a partly covered table stays
    n, fl = pt.unmap(G1, 2 * M2)
    assert n == 2 * M2 and len(fl) == 2
    assert all(e.frames.owner(p) == "pgtable" for p in fl)  # not freed before the flush
    assert pt.table_pages() == pages - 2
    pt.free_pages(fl)
    assert fl == [] and e.frames.count("pgtable") == pt.table_pages()


def test_unmap_inside_superpage_removes_it_whole() -> None:
    e = env()
    pt = table(e)
    pt.map(M2, 0x600000, M2, RW)
    n, fl = pt.unmap(M2 + 0x5000, 0x1000)
    assert n == M2 and fl == []
    assert pt.iova_to_phys(M2) == 0 and pt.iova_to_phys(M2 + 0x5000) == 0
    assert pt.unmap(0x7000000, 0x1000)[0] == 0x1000  # nothing mapped: Linux returns the size
    with pytest.raises(IommuError) as exc:
        pt.unmap(0x1800, 0x1000)
    assert exc.value.errno == errno.EINVAL


def test_unmap_sync_flushes_before_freeing() -> None:
    e = env()
    dev = e.platform.add_device("00:04.0", ats=True, pasid_bits=8)
    info = intel_iommu_probe_device(e.iommu, dev)
    pt = table(e)
    pt.map(0x40000000, 0x1000000, M2, RW)
    pt.map(0x1000, 0x2000000, 0x1000, RW)
    e.iommu.qi_trace = []
    assert pt.unmap_sync(0x1000, 0x1000, [(e.iommu, 7)], [info]) == 0x1000
    iotlb, dtlb, _w = (D.decode(x) for x in e.iommu.qi_trace)
    assert (iotlb.TYPE, iotlb.G, iotlb.DID, iotlb.ADDR, iotlb.AM) == (2, 3, 7, 0x1000, 0)
    assert (3, info.sid, 0x1000) == (dtlb.TYPE, dtlb.SID, dtlb.ADDR)
    e.iommu.qi_trace = []
    assert pt.unmap_sync(0x40000000, M2, [(e.iommu, 7)]) == M2
    d = D.decode(e.iommu.qi_trace[0])
    assert (d.G, d.ADDR, d.AM) == (3, 0x40000000, 9)


# --- scale and performance ----------------------------------------------------------------------


def test_map_1gib_of_4k_pages_fast_and_exact() -> None:
    e = env(memory=1 << 34)
    pt = table(e)
    paddr = 0x100001000  # only 4K aligned: 262,144 leaf PTEs
    t = time.perf_counter()
    pt.map(G1, paddr, G1, RW)
    elapsed = time.perf_counter() - t
    assert elapsed <= 0.5, elapsed
    assert pt.table_pages() == 1 + 1 + 1 + 512
    for off in (0, 0x1000, M2 - 0x1000, M2, G1 - 0x1000, 0x12345000):
        assert pt.iova_to_phys(G1 + off) == paddr + off
    assert walk(pt, G1 + 0x7000)[-1] == (1, paddr + 0x7000 | 3)
    n, fl = pt.unmap(G1, G1)
    assert n == G1 and len(fl) == 513  # the L2 table and its 512 leaf tables
    pt.free_pages(fl)
    pt.free_all()
    assert e.frames.count("pgtable") == 0


def test_hardware_agrees_with_the_table() -> None:
    e = env()
    dev = e.platform.add_device("00:05.0", pasid_bits=8)
    info = intel_iommu_probe_device(e.iommu, dev)

    @dataclass(eq=False)
    class Dom:
        pgtable: Any
        type: str = "unmanaged"
        iommu_array: dict[int, IommuDomainInfo] = field(default_factory=dict)

    d = Dom(table(e))
    with e.iommu.lock:
        did = domain_attach_iommu(d, e.iommu)
        intel_pasid_setup_second_level(e.iommu, d, info, 3)
    rng = random.Random(7)
    mapped: dict[int, int] = {}
    for _ in range(40):
        iova = rng.randrange(0, 1 << 20) << 12
        pa = rng.randrange(1 << 16, 1 << 19) << 12
        size = rng.choice([0x1000, 0x3000, M2])
        try:
            d.pgtable.map(iova, pa, size, RW)
        except IommuError:
            continue
        for off in range(0, size, 0x1000):
            mapped[iova + off] = pa + off
    for iova, pa in rng.sample(sorted(mapped.items()), 30):
        assert d.pgtable.iova_to_phys(iova) == pa
        hpa, fault = dev.translate(iova, pasid=3)
        assert fault is None and hpa == pa
    victim = rng.choice(sorted(mapped))
    assert dev.translate(victim, pasid=3)[1] is None  # now cached in the IOTLB
    d.pgtable.unmap_sync(victim, 0x1000, [(e.iommu, did)])
    _hpa, fault = dev.translate(victim, pasid=3)
    assert fault is not None and d.pgtable.iova_to_phys(victim) == 0


class _Interleave:
    """A sync backend that runs ``action`` once, at the first scheduling point named
    ``label``: another thread getting in between (what the explorer schedules)."""

    def __init__(self, label: str, action: Any) -> None:
        self.label = label
        self.action: Any = action

    def acquire(self, lock: Any) -> None:
        lock.owner = 1

    def release(self, lock: Any) -> None:
        lock.owner = None

    def access(self, label: str, key: object, write: bool) -> None:
        pass

    def point(self, label: str) -> None:
        if label == self.label and self.action is not None:
            action, self.action = self.action, None
            action()

    def ident(self) -> object:
        return 1


def test_racing_table_install_loser_frees_its_page() -> None:
    """pfn_to_dma_pte's cmpxchg64: two mappers install the same missing tables; the loser
    frees its pages and uses the winner's."""
    from vtdsim.driver import sync

    e = env()
    pt = table(e)
    base = e.frames.count("pgtable")
    with sync.installed(_Interleave("alloc:pgtable", lambda: pt.map(0x5000, 0x9000, 0x1000, RW))):
        pt.map(0x6000, 0xA000, 0x1000, RW)
    assert pt.iova_to_phys(0x5000) == 0x9000 and pt.iova_to_phys(0x6000) == 0xA000
    assert e.frames.count("pgtable") == base + 3 == pt.table_pages()


def test_shrink_to_strips_top_levels() -> None:
    e = env()
    pt = DmaPageTable(e.frames, 57)  # no unit: 5 levels
    pt.map(0x3000, 0x7000, 0x1000, RW)
    pages = pt.table_pages()
    pt.shrink_to(2)
    assert (pt.levels, pt.gaw) == (4, 48) and pt.table_pages() == pages - 1
    assert pt.iova_to_phys(0x3000) == 0x7000
    pt.free_all()
    assert e.frames.count("pgtable") == 0
