"""The hot-path shortcuts of the strict unmap / aux detach paths produce exactly what the
general paths produce: ring bytes, PASID entries, cache contents, memory."""

from __future__ import annotations

import pytest

from vtdsim.driver.core import Feature
from vtdsim.driver.intel import pasid as P
from vtdsim.driver.intel.dmar import QI_LENGTH, QiError
from vtdsim.driver.intel.iommu import DmarDomain
from vtdsim.driver.kernel import Kernel
from vtdsim.errors import ArgumentError, MemoryAccessError
from vtdsim.hw.caches import Iotlb, IotlbEntry
from vtdsim.hw.caps import CacheGeometry
from vtdsim.hw.memory import FrameAllocator, PhysicalMemory
from vtdsim.spec.entries import PASID_ENTRY


@pytest.mark.parametrize(
    "args",
    [(1, 0x1234000, 5, 1, 1), (2, 0xFFF000, 0xFFFF, 0, 0), (0, 0, 0, 0, 1), (3, 1 << 51, 7, 1, 0)],
)
def test_second_level_entry_matches_the_layout_encoder(args: tuple[int, ...]) -> None:
    agaw, pgd, did, pgsnp, sre = args
    assert P._sl_entry(agaw, pgd, did, pgsnp, sre) == PASID_ENTRY.encode(
        P=1, AW=agaw, PGTT=P.PGTT_SL_ONLY, SLPTPTR=pgd, DID=did, PGSNP=pgsnp, SRE=sre
    )


def test_second_level_entry_keeps_the_layout_errors() -> None:
    with pytest.raises(ArgumentError):
        P._sl_entry(1, 0x1234001, 5, 1, 1)  # unaligned table pointer
    with pytest.raises(ArgumentError):
        P._sl_entry(1, 0x1000, 1 << 16, 1, 1)  # DID beyond 16 bits


def _ring(k: Kernel) -> bytes:
    io = k.iommus[0]
    return k.platform.memory.read(io.qi_desc, QI_LENGTH * 32)


def test_ring_bytes_identical_with_and_without_the_one_slice_copy() -> None:
    """Every submission shape (wrap, page crossing, qwords 2-3 in use, then reused slots)
    leaves the same ring bytes, status words and tail whichever copy wrote it."""
    shapes = [1, 3, 2, 7, 1, 1, 5] * 20
    ks = []
    for fast in (True, False):
        k = Kernel.for_testing(ndev=1)
        io = k.iommus[0]
        if not fast:  # force the slot-by-slot copy: one slot of qwords 2-3 "in use" elsewhere
            io._qi_dirty_hi.add(QI_LENGTH - 1)
        for i, n in enumerate(shapes):
            descs = [io.desc_iotlb(2, 0x1000 * j, 0, 3 << 60) for j in range(n)]
            if i % 9 == 4:  # a 256-bit descriptor with qwords 2-3 set is invalid: IQE
                with pytest.raises(QiError):
                    io.qi_submit_sync([(0x2 | 1 << 4, 0, 5, 0)])
            io.qi_submit_sync(descs)
        ks.append(k)
    a, b = ks
    ra, rb = bytearray(_ring(a)), bytearray(_ring(b))
    last = (QI_LENGTH - 1) * 32  # the forced-dirty slot: its qwords 2-3 may differ only
    assert ra[:last] == rb[:last]
    ia, ib = a.iommus[0], b.iommus[0]
    mem_a, mem_b = a.platform.memory, b.platform.memory
    assert mem_a.read(ia.qi_status, 4096) == mem_b.read(ib.qi_status, 4096)
    assert ia._free_head == ib._free_head
    assert a.platform.units[0].statistics() == b.platform.units[0].statistics()


def test_page_selective_invalidation_matches_the_generic_predicate() -> None:
    def filled() -> Iotlb:
        c = Iotlb(CacheGeometry(16, 4), "t")
        for did in (2, 3):
            for base, shift, pgtt in ((0, 12, 2), (0x1000, 12, 2), (0x200000, 21, 2), (0, 30, 1)):
                c.fill(IotlbEntry(did, None, base, shift, base, 3, pgtt, False))
        return c

    for addr, am in ((0x1000, 0), (0, 1), (0x200000, 0), (0x3000, 9), (0, 18)):
        fast, slow = filled(), filled()
        n = fast.invalidate_page(2, addr, am)
        lo = addr & ~((1 << (12 + am)) - 1)
        hi = lo + (1 << (12 + am))

        def pred(k: object, v: IotlbEntry, lo: int = lo, hi: int = hi) -> bool:
            return (
                v.did == 2
                and v.pgtt in {0, 2, 3, 4}
                and v.base < hi
                and lo < v.base + (1 << v.shift)
            )

        m = slow.invalidate_where(pred)
        assert n == m and sorted(map(repr, fast.items())) == sorted(map(repr, slow.items()))
    with pytest.raises(ArgumentError):
        filled().invalidate_page(2, -1, 0)
    with pytest.raises(ArgumentError):
        filled().invalidate_page(None, 0, 0)


def test_stale_translation_survives_a_missing_invalidation_only() -> None:
    """The translator is created by the first DMA: an unmap afterwards still invalidates it,
    and a flush that does not cover the page leaves the stale entry (semantics unchanged)."""
    k = Kernel.for_testing(ndev=1)
    dev = k.devices[0]
    d = k.domain_alloc("unmanaged")
    k.attach_device(d, dev)
    k.map(d, 0x10000, 0x100000, 0x2000)
    assert dev.dma_read(0x10000, 4).ok and dev.dma_read(0x11000, 4).ok
    k.unmap(d, 0x10000, 0x1000)
    assert not dev.dma_read(0x10000, 4).ok
    assert isinstance(d, DmarDomain) and d.pgtable is not None
    d.pgtable.unmap(0x11000, 0x1000)  # cleared behind the IOMMU's back: no flush
    assert dev.dma_read(0x11000, 4).ok  # stale, as hardware would
    k.iommus[0].flush_iotlb_psi(2, 0x11000, 1, dev_infos=[k.ops.info(dev)])
    assert not dev.dma_read(0x11000, 4).ok


def test_aux_detach_trace_order_is_linux() -> None:
    k = Kernel.for_testing(ndev=1)
    dev = k.devices[0]
    k.dev_enable_feature(dev, Feature.AUX)
    d = k.domain_alloc("unmanaged")
    io = k.iommus[0]
    k.aux_attach_device(d, dev)
    io.qi_trace = []
    k.aux_detach_device(d, dev)
    types = [desc[0] & 0xF | (desc[0] >> 5) & 0x70 for desc in io.qi_trace]
    assert types == [7, 5, 2, 5, 8, 5]  # PASID cache, wait, IOTLB DSI, wait, devTLB, wait


def test_zero_pages_and_aligned_write32() -> None:
    mem = PhysicalMemory(1 << 20)
    mem.write64(0x3000, 0x1122334455667788)
    frames = FrameAllocator(mem, 0x2000, 0x10000)
    assert frames.alloc(1) == 0x2000  # pages 2-3, page 3 was dirty
    assert mem.read64(0x3000) == 0
    mem.write32(0x4004, 0xDEADBEEF)
    mem.write32(0x4000, 0x12345678)
    assert mem.read64(0x4000) == 0xDEADBEEF_12345678
    mem.write32(0x5002, 0xAABBCCDD)  # unaligned: the byte path
    assert mem.read(0x5000, 8) == bytes.fromhex("0000ddccbbaa0000")
    with pytest.raises(MemoryAccessError):
        mem.write32(1 << 20, 1)
