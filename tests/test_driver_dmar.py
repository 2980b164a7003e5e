"""Intel driver internals: boot, queued invalidation, flush descriptors, DIDs, PASIDs.

Expected values come from Linux (``drivers/iommu/intel/dmar.c`` ``qi_submit_sync``,
``qi_flush_*``, ``__dmar_enable_qi``; ``iommu.c`` ``iommu_set_root_entry``,
``domain_attach_iommu``; ``iommu.h`` ``QI_*`` macros) and the fact sheet sections 3.1, 3.5, 4.
Everything the driver writes is decoded with the spec layouts (``vtdsim.spec.descriptors``).
"""

from __future__ import annotations

import errno
from typing import Any

import pytest

from vtdsim.driver import sync
from vtdsim.driver.intel.device import DeviceDomainInfo
from vtdsim.driver.intel.dmar import (
    DMA_CCMD_DEVICE_INVL,
    DMA_TLB_DSI_FLUSH,
    QI_PC_GLOBAL,
    IntelIommu,
    QiError,
    Quirks,
    psi_aligned,
)
from vtdsim.driver.intel.domain_id import (
    DomainIdAllocator,
    IommuDomainInfo,
    domain_attach_iommu,
    domain_detach_iommu,
)
from vtdsim.driver.intel.inject import FaultInjector
from vtdsim.driver.intel.ioasid import AllocatorError, PasidAllocator, ioasid_alloc
from vtdsim.errors import IommuError
from vtdsim.hw.caps import Capabilities
from vtdsim.hw.memory import FrameAllocator
from vtdsim.hw.platform import Platform
from vtdsim.spec import descriptors as D
from vtdsim.spec import registers as R

FRAMES = (1 << 28, 1 << 29)


def boot(caps: Capabilities | None = None, **kw: Any) -> tuple[Platform, IntelIommu]:
    p = Platform(1 << 30)
    unit = p.add_unit(caps or Capabilities())
    frames = FrameAllocator(p.memory, *FRAMES)
    io = IntelIommu(unit, frames, **kw)
    io.qi_trace = []
    io.boot()
    return p, io


def decoded(io: IntelIommu) -> list[Any]:
    assert io.qi_trace is not None
    return [D.decode(d) for d in io.qi_trace]


def no_reserved(io: IntelIommu) -> None:
    assert io.qi_trace is not None
    for d in io.qi_trace:
        assert D.decode(d).reserved_violations() == [], d


def wait_of(io: IntelIommu, slot: int) -> tuple[int, int, int, int]:
    return (2 << 32 | 1 << 5 | 5, io.qi_status + 8 * slot, 0, 0)


# --- boot --------------------------------------------------------------------------------------


def test_boot_scalable_registers_and_global_flushes() -> None:
    _p, io = boot()
    u = io.unit
    gsts = u.read32(R.GSTS)
    assert gsts & (1 << 31) and gsts & (1 << 30) and gsts & (1 << 26)  # TES RTPS QIES
    assert u.read64(R.RTADDR) == io.root_table | 1 << 10  # DMA_RTADDR_SMT
    assert u.read64(R.IQA) == io.qi_desc | 1 << 11 | 1  # DW=1, QS=1
    assert io.frames.count("qi") == 1 and io.frames.live[io.qi_desc][0] == 1  # order 1
    assert io.frames.count("root-table") == 1
    # iommu_set_root_entry: global context, global PASID cache, global IOTLB, each + wait
    trace = io.qi_trace
    assert trace == [
        (0x11, 0, 0, 0),
        wait_of(io, 1),
        (0x37, 0, 0, 0),
        wait_of(io, 3),
        (0x12 | 0xC0, 0, 0, 0),  # QI_IOTLB_GRAN(GLOBAL) | DR | DW (CAP.DRD/DWD set)
        wait_of(io, 5),
    ]
    no_reserved(io)
    assert io.agaw == 2 and io.ndoms == 1 << 16 and io.sm


def test_boot_legacy_mode_no_pasid_cache_flush() -> None:
    _p, io = boot(scalable=False)
    assert io.unit.read64(R.RTADDR) == io.root_table  # TTM = 00
    kinds = [D.descriptor_type(d[0]) for d in io.qi_trace or []]
    assert kinds == [1, 5, 2, 5]
    assert not io.domain_ids.is_used(1)  # FLPT_DEFAULT_DID reserved only in scalable mode


def test_boot_without_qi_is_enodev() -> None:
    p = Platform(1 << 30)
    unit = p.add_unit(Capabilities(queued_invalidation=False, scalable_mode=False))
    frames = FrameAllocator(p.memory, *FRAMES)
    io = IntelIommu(unit, frames)
    with pytest.raises(IommuError) as e:
        io.boot()
    assert e.value.errno == errno.ENODEV
    assert frames.count() == 0


def test_boot_enomem_unwinds() -> None:
    p = Platform(1 << 30)
    unit = p.add_unit(Capabilities())
    frames = FrameAllocator(p.memory, *FRAMES)
    inj = FaultInjector()
    inj.attach(frames)
    inj.fail("root-table")
    io = IntelIommu(unit, frames, injector=inj)
    with pytest.raises(IommuError) as e:
        io.boot()
    assert e.value.errno == errno.ENOMEM
    assert frames.count() == 0


class DeafUnit:
    """Wraps a unit and drops selected writes: a status that never arrives."""

    def __init__(self, unit: Any, drop: set[int]) -> None:
        self.unit = unit
        self.drop = drop

    def read32(self, off: int) -> int:
        return int(self.unit.read32(off))

    def read64(self, off: int) -> int:
        return int(self.unit.read64(off))

    def write32(self, off: int, v: int) -> None:
        if off not in self.drop:
            self.unit.write32(off, v)

    def write64(self, off: int, v: int) -> None:
        if off not in self.drop:
            self.unit.write64(off, v)


def test_gsts_never_set_is_an_error_not_a_hang() -> None:
    p = Platform(1 << 30)
    unit = DeafUnit(p.add_unit(Capabilities()), {R.GCMD})
    frames = FrameAllocator(p.memory, *FRAMES)
    io = IntelIommu(unit, frames)
    with pytest.raises(IommuError) as e:
        io.boot()
    assert e.value.errno == errno.ETIMEDOUT
    assert frames.count() == 0


def test_wait_status_never_written_is_an_error() -> None:
    _p, io = boot()
    io.unit = DeafUnit(io.unit, {R.IQT})
    with pytest.raises(QiError) as e:
        io.flush_iotlb_dsi(5)
    assert e.value.errno == errno.ETIMEDOUT


# --- queued invalidation --------------------------------------------------------------------------


def test_qi_ring_contents_and_tail() -> None:
    _p, io = boot()
    head = io._free_head
    io.qi_submit_sync([(0x31 | 7 << 16 | 0x10 << 32, 0, 0, 0)])
    mem = io.memory
    base = io.qi_desc + (head << 5)
    assert mem.read_qwords(base, 4) == (0x31 | 7 << 16 | 0x10 << 32, 0, 0, 0)
    assert mem.read_qwords(base + 32, 4) == wait_of(io, head + 1)
    assert io.unit.read64(R.IQT) == (head + 2) << 5
    assert io.unit.read64(R.IQH) == io.unit.read64(R.IQT)
    assert mem.read64(io.qi_status + 8 * (head + 1)) & 0xFFFFFFFF == 2  # QI_DONE


def test_qi_ring_wraps() -> None:
    _p, io = boot()
    for i in range(300):
        io.flush_iotlb_dsi(2 + i % 5)
    assert io._free_head == (6 + 600) % 256
    assert io.unit.read32(R.FSTS) & 0x70 == 0


def test_qi_invalid_descriptor_recovered_like_qi_check_fault() -> None:
    _p, io = boot()
    head = io._free_head
    bad = (0x2 | 1 << 12, 0, 0, 0)  # IOTLB descriptor with a reserved bit set
    with pytest.raises(QiError) as e:
        io.qi_submit_sync([bad])
    assert e.value.errno == errno.EINVAL
    assert e.value.index == head and e.value.desc == bad
    # the bad slot now holds a copy of the wait descriptor; IQE cleared; queue drained
    assert io.memory.read_qwords(io.qi_desc + (head << 5), 4) == wait_of(io, head + 1)
    assert io.unit.read32(R.FSTS) & (1 << 4) == 0
    assert io.unit.read64(R.IQH) == io.unit.read64(R.IQT)
    io.flush_iotlb_dsi(3)  # the queue works again


def test_qi_too_many_descriptors() -> None:
    _p, io = boot()
    with pytest.raises(Exception, match="at most"):
        io.qi_submit_sync([(0x12, 0, 0, 0)] * 255)


# --- flush descriptors, exactly as Linux encodes them ---------------------------------------------


def test_context_and_pasid_cache_descriptors() -> None:
    _p, io = boot()
    assert io.desc_context(7, 0x10, 0, DMA_CCMD_DEVICE_INVL) == (
        0x31 | 7 << 16 | 0x10 << 32,
        0,
        0,
        0,
    )
    assert io.desc_pasid_cache(9, 0x1234, 1) == (0x17 | 9 << 16 | 0x1234 << 32, 0, 0, 0)
    assert io.desc_pasid_cache(0, 0, QI_PC_GLOBAL)[0] == 0x37
    assert io.desc_iotlb(4, 0, 0, DMA_TLB_DSI_FLUSH) == (0x22 | 0xC0 | 4 << 16, 0, 0, 0)


def test_psi_alignment_and_dsi_fallback() -> None:
    assert psi_aligned(0x5000, 1) == (0x5000, 0)
    assert psi_aligned(0x1000, 2) == (0, 2)  # pfn 1..2 needs a 4-page block at 0
    assert psi_aligned(0x3000, 2) == (0, 3)
    assert psi_aligned(0x200000, 512) == (0x200000, 9)
    _p, io = boot()
    io.qi_trace = []
    io.flush_iotlb_psi(5, 0x200000, 512, ih=True)
    d = D.decode(io.qi_trace[0])
    assert (d.G, d.DID, d.AM, d.ADDR, d.IH) == (3, 5, 9, 0x200000, 0)  # QI path drops IH
    io.qi_trace = []
    io.flush_iotlb_psi(5, 0, 1 << 19)  # AM 19 > MAMV 18: DSI
    assert D.decode(io.qi_trace[0]).G == 2
    _p, io2 = boot(Capabilities(psi=False))
    io2.qi_trace = []
    io2.flush_iotlb_psi(5, 0x1000, 1)
    assert D.decode(io2.qi_trace[0]).G == 2


def test_piotlb_descriptors() -> None:
    _p, io = boot()
    assert io.desc_piotlb(3, 0x55) == (0x26 | 3 << 16 | 0x55 << 32, 0, 0, 0)
    qw0, qw1, _, _ = io.desc_piotlb(3, 0x55, 0x5000, 3, ih=True)
    assert qw0 == 0x36 | 3 << 16 | 0x55 << 32
    assert qw1 == 0x4000 | 1 << 6 | 2  # addr aligned down to 4 pages, AM 2


def _info(io: IntelIommu, sid: int) -> DeviceDomainInfo:
    return DeviceDomainInfo(
        iommu=io, dev=None, bus=sid >> 8, devfn=sid & 0xFF, pfsid=sid, ats_enabled=True,
        ats_qdep=32,
    )  # fmt: skip


def test_devtlb_descriptors_whole_device() -> None:
    _p, io = boot()
    # qi_flush_dev_iotlb(sid, pfsid, qdep=32 -> 0, addr 0, mask 52)
    assert io.desc_dev_iotlb(0x1234, 0x1234, 32, 0, 52) == (
        0x3 | 0x1234 << 32 | 0x4 << 12 | 0x123 << 52,
        0x7FFFFFFFFFFFF001,
        0,
        0,
    )
    qw0, qw1, _, _ = io.desc_dev_iotlb_pasid(0x1234, 0x1234, 7, 32, 0, 52)
    assert qw0 == 0x8 | 0x1234 << 16 | 7 << 32 | 0x4 << 12 | 0x123 << 52
    assert qw1 == 0x7FFFFFFFFFFFF800
    d = D.decode((qw0, qw1, 0, 0))
    assert (d.SID, d.PASID, d.S, d.MIP) == (0x1234, 7, 1, 0)
    # single page, qdep 5
    assert io.desc_dev_iotlb(0x10, 0x10, 5, 0x7000, 0)[1] == 0x7000
    assert io.desc_dev_iotlb(0x10, 0x10, 5, 0x7000, 0)[0] >> 16 & 0x1F == 5


def test_pfsid_macro_bug_is_only_a_quirk() -> None:
    _p, good = boot()
    _p, bad = boot(quirks=Quirks(pfsid_macro_bug=True))
    assert good.desc_dev_iotlb(0x1234, 0x1234, 0, 0, 0)[0] >> 52 == 0x123
    assert bad.desc_dev_iotlb(0x1234, 0x1234, 0, 0, 0)[0] >> 52 == 0x234


def test_flush_iotlb_psi_batches_devtlb_of_ats_devices() -> None:
    _p, io = boot()
    io.qi_trace = []
    info = _info(io, 0x10)
    off = _info(io, 0x18)
    off.ats_enabled = False
    io.flush_iotlb_psi(2, 0x3000, 1, dev_infos=[info, off])
    kinds = [D.descriptor_type(d[0]) for d in io.qi_trace]
    assert kinds == [2, 3, 5]  # IOTLB PSI, devTLB, one wait
    dev = D.decode(io.qi_trace[1])
    assert (dev.SID, dev.ADDR, dev.S) == (0x10, 0x3000, 0)
    no_reserved(io)
    # caching mode + map: no device-TLB flush
    _p, cm = boot(Capabilities(caching_mode=True))
    cm.qi_trace = []
    cm.flush_iotlb_psi(2, 0x3000, 1, map=True, dev_infos=[_info(cm, 0x10)])
    assert [D.descriptor_type(d[0]) for d in cm.qi_trace] == [2, 5]


def test_write_buffer_flush() -> None:
    _p, io = boot(Capabilities(rwbf=True))
    io.iommu_flush_write_buffer()  # completes (WBFS clear)
    _p, io2 = boot()
    io2.iommu_flush_write_buffer()  # no-op without CAP.RWBF


# --- domain ids -----------------------------------------------------------------------------------


class Dom:
    def __init__(self) -> None:
        self.iommu_array: dict[int, IommuDomainInfo] = {}


def test_did_allocation_order_refcount_and_enospc() -> None:
    _p, io = boot(Capabilities(nd=0))  # 16 domain ids, 0 and 1 reserved
    doms = [Dom() for _ in range(15)]
    with io.lock:
        dids = [domain_attach_iommu(d, io) for d in doms[:14]]
        assert dids == list(range(2, 16))
        with pytest.raises(IommuError) as e:
            domain_attach_iommu(doms[14], io)
        assert e.value.errno == errno.ENOSPC
        assert doms[14].iommu_array == {}
        # refcount: a second attach shares the DID
        assert domain_attach_iommu(doms[3], io) == 5
        domain_detach_iommu(doms[3], io)
        assert io.domain_ids.is_used(5)
        domain_detach_iommu(doms[3], io)
        assert not io.domain_ids.is_used(5)
        assert domain_attach_iommu(doms[14], io) == 5  # lowest free again
        assert len(io.domain_ids) == 14


def test_did_requires_iommu_lock() -> None:
    _p, io = boot()
    with pytest.raises(sync.LockingError):
        domain_attach_iommu(Dom(), io)


def test_did_injected_failure() -> None:
    inj = FaultInjector()
    _p, io = boot(injector=inj)
    inj.fail("did", after=1)
    d1, d2 = Dom(), Dom()
    with io.lock:
        assert domain_attach_iommu(d1, io) == 2
        with pytest.raises(IommuError) as e:
            domain_attach_iommu(d2, io)
    assert e.value.errno == errno.ENOMEM and d2.iommu_array == {}
    assert io.domain_ids.in_use() == [2]


def test_did_allocator_standalone() -> None:
    a = DomainIdAllocator(16, scalable=False)
    assert [a.alloc() for _ in range(3)] == [1, 2, 3]
    with pytest.raises(Exception, match="allocated"):
        a.free(0)
    a.free(2)
    with pytest.raises(Exception, match="allocated"):
        a.free(2)


# --- PASIDs ---------------------------------------------------------------------------------------


def test_pasid_allocator_lowest_free_and_bounds() -> None:
    a = PasidAllocator()
    assert [a.alloc(1, 4, "d") for _ in range(3)] == [1, 2, 3]
    with pytest.raises(IommuError) as e:
        a.alloc(1, 4)  # end exclusive (IDR): 4 is not in range
    assert e.value.errno == errno.ENOSPC
    a.free(2)
    assert a.alloc(1, 100) == 2
    assert a.owner(2) is None and a.owner(1) == "d"
    assert a.alloc(10, 100) == 10
    assert a.alloc(1, 100) == 4
    assert a.allocated() == [1, 2, 3, 4, 10]
    # ioasid_alloc: max inclusive
    b = PasidAllocator()
    assert ioasid_alloc(5, 5, allocator=b) == 5
    with pytest.raises(IommuError):
        ioasid_alloc(5, 5, allocator=b)


def test_pasid_double_free_is_loud() -> None:
    a = PasidAllocator()
    p = a.alloc(1, 10)
    a.free(p)
    with pytest.raises(AllocatorError):
        a.free(p)
    with pytest.raises(AllocatorError):
        a.free(7)


def test_pasid_injected_failure() -> None:
    inj = FaultInjector()
    a = PasidAllocator(injector=inj)
    inj.fail("pasid")
    with pytest.raises(IommuError) as e:
        a.alloc(1, 10)
    assert e.value.errno == errno.ENOMEM and a.allocated() == []
    assert a.alloc(1, 10) == 1
    assert inj.calls["pasid"] == 2 and inj.injected["pasid"] == 1


def test_pasid_allocator_is_a_scheduling_point() -> None:
    seen: list[str] = []

    class Backend:
        def acquire(self, lock: sync.SpinLock) -> None:
            lock.owner = 1

        def release(self, lock: sync.SpinLock) -> None:
            lock.owner = None

        def access(self, label: str, key: object, write: bool) -> None:
            seen.append(label)

        def point(self, label: str) -> None:
            seen.append(label)

        def ident(self) -> object:
            return 1

    a = PasidAllocator()
    with sync.installed(Backend()):
        a.free(a.alloc(1, 10))
    assert seen == ["pasid_alloc", "pasid_free"]


def test_boot_without_smts_uses_128_bit_queue() -> None:
    _p, io = boot(Capabilities(scalable_mode=False, pasid=False))
    assert not io.sm
    assert io.unit.read64(R.IQA) == io.qi_desc  # DW = 0, QS = 0: one page of 16-byte slots
    assert io.frames.live[io.qi_desc][0] == 0
    head = io._free_head
    io.flush_iotlb_dsi(3)
    assert io.memory.read_qwords(io.qi_desc + (head << 4), 2) == (0x22 | 0xC0 | 3 << 16, 0)
    assert io.unit.read64(R.IQT) == (head + 2) << 4
