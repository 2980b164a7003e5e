"""PASID tables, context entries and PASID-entry programming (Linux ``pasid.c``, ``iommu.c``).

Expected values: fact sheet sections 3.2, 3.3, 4 (``intel_pasid_alloc_table`` sizing, entry
fields, teardown order) and the 5.1 example vector (DID 2, pgd 0x12345000, agaw 2, no SMPWC →
0x12345089, 0x2, 0x1).  Entries are read back from physical memory and decoded with the spec
layouts; DMA through the hardware model confirms the hardware agrees.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field
from typing import Any

import pytest

from vtdsim.driver import sync
from vtdsim.driver.intel.device import (
    DeviceDomainInfo,
    context_entry_read,
    intel_iommu_enable_pasid,
    intel_iommu_probe_device,
    intel_iommu_release_device,
)
from vtdsim.driver.intel.dmar import IntelIommu, Quirks
from vtdsim.driver.intel.domain_id import IommuDomainInfo, domain_attach_iommu
from vtdsim.driver.intel.inject import FaultInjector
from vtdsim.driver.intel.pasid import (
    PASID_FLAG_FL5LP,
    PASID_FLAG_SUPERVISOR_MODE,
    intel_pasid_alloc_table,
    intel_pasid_free_table,
    intel_pasid_get_entry,
    intel_pasid_setup_first_level,
    intel_pasid_setup_pass_through,
    intel_pasid_setup_second_level,
    intel_pasid_tear_down_entry,
    pasid_entry_read,
)
from vtdsim.driver.intel.pgtable import DmaPageTable
from vtdsim.errors import IommuError
from vtdsim.hw.caps import Capabilities
from vtdsim.hw.memory import FrameAllocator
from vtdsim.hw.platform import Platform
from vtdsim.spec import descriptors as D
from vtdsim.spec.entries import PASID_ENTRY

FRAMES = (1 << 28, 1 << 29)


@dataclass
class Env:
    platform: Platform
    iommu: IntelIommu
    frames: FrameAllocator
    injector: FaultInjector


def env(caps: Capabilities | None = None, quirks: Quirks | None = None) -> Env:
    p = Platform(1 << 30)
    unit = p.add_unit(caps or Capabilities())
    frames = FrameAllocator(p.memory, *FRAMES)
    inj = FaultInjector()
    inj.attach(frames)
    io = IntelIommu(unit, frames, quirks=quirks, injector=inj)
    io.boot()
    io.qi_trace = []
    return Env(p, io, frames, inj)


@dataclass(eq=False)
class Dom:
    pgtable: Any
    type: str = "unmanaged"
    iommu_array: dict[int, IommuDomainInfo] = field(default_factory=dict)


def probe(e: Env, bdf: str = "00:02.0", pasid_bits: int = 20, ats: bool = True) -> Any:
    dev = e.platform.add_device(bdf, pasid_bits=pasid_bits, ats=ats)
    return dev, intel_iommu_probe_device(e.iommu, dev)


def sl_domain(e: Env) -> Dom:
    d = Dom(DmaPageTable(e.frames, 48, e.iommu))
    with e.iommu.lock:
        domain_attach_iommu(d, e.iommu)
    return d


def kinds(io: IntelIommu) -> list[int]:
    return [D.descriptor_type(d[0]) for d in io.qi_trace or []]


# --- PASID table sizing --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pasid_bits", "order", "max_pasid", "pdts"),
    [(20, 5, 1 << 20, 7), (5, 0, 1 << 15, 2), (0, 0, 1 << 15, 2), (16, 1, 1 << 16, 3)],
)
def test_pasid_table_sizing(pasid_bits: int, order: int, max_pasid: int, pdts: int) -> None:
    e = env()
    _dev, info = probe(e, pasid_bits=pasid_bits)
    pt = info.pasid_table
    assert (pt.order, pt.max_pasid, pt.pdts) == (order, max_pasid, pdts)
    assert e.frames.live[pt.table] == (order, "pasid-dir")
    ctx = context_entry_read(e.iommu, info.bus, info.devfn)
    assert ctx is not None and pdts == ctx.PDTS and pt.table == ctx.PASIDDIRPTR


def test_leaf_tables_lazy_and_bounded() -> None:
    e = env()
    _dev, info = probe(e, pasid_bits=5)
    assert e.frames.count("pasid-table") == 0
    a = intel_pasid_get_entry(info, 3)
    b = intel_pasid_get_entry(info, 63)
    c = intel_pasid_get_entry(info, 64)
    assert b - a == 60 * 64 and c >> 12 != a >> 12
    assert e.frames.count("pasid-table") == 2
    dir_entry = e.iommu.memory.read64(info.pasid_table.table + 8)
    assert dir_entry == (c & ~0xFFF) | 1
    assert intel_pasid_get_entry(info, 1 << 15) == 0  # beyond max_pasid: NULL
    intel_pasid_free_table(info)
    assert e.frames.count("pasid-table") == e.frames.count("pasid-dir") == 0


# --- context entries ------------------------------------------------------------------------------


def test_context_entry_modern_and_5x() -> None:
    e = env()
    _dev, info = probe(e, "00:02.3")
    ctx_addr = e.iommu.root_table  # bus 0, lower half
    root_lo = e.iommu.memory.read64(ctx_addr)
    assert root_lo & 1 and e.frames.owner(root_lo & ~0xFFF) == "context"
    ctx = context_entry_read(e.iommu, 0, info.devfn)
    assert ctx is not None
    assert ctx.words == (info.pasid_table.table | 7 << 9 | 1 << 3 | 1 << 2 | 1, 0, 0, 0)
    assert kinds(e.iommu) == []  # not caching mode: write-buffer flush only
    # 5.x: PASIDE only from intel_iommu_enable_pasid, RID_PRIV set; devfn >= 0x80 -> root hi
    q = env(quirks=Quirks.linux_5_1())
    _dev, info5 = probe(q, "00:1f.0")
    ctx5 = context_entry_read(q.iommu, 0, info5.devfn)
    assert ctx5 is not None and ctx5.PASIDE == 0 and ctx5.RID_PRIV == 1
    assert q.iommu.memory.read64(q.iommu.root_table + 8) & 1
    with q.iommu.lock:
        intel_iommu_enable_pasid(q.iommu, info5)
    assert context_entry_read(q.iommu, 0, info5.devfn).PASIDE == 1  # type: ignore[union-attr]
    d = D.decode(q.iommu.qi_trace[0])  # type: ignore[index]
    assert (d.TYPE, d.G, d.SID, d.FM) == (1, 3, 0xF8, 0)


def test_enable_pasid_needs_lock_and_support() -> None:
    e = env()
    _dev, info = probe(e, pasid_bits=0)
    with pytest.raises(sync.LockingError):
        intel_iommu_enable_pasid(e.iommu, info)
    with e.iommu.lock, pytest.raises(IommuError) as err:
        intel_iommu_enable_pasid(e.iommu, info)
    assert err.value.errno == errno.EINVAL


def test_probe_failures_leave_nothing() -> None:
    e = env()
    e.injector.fail("pasid-dir")
    with pytest.raises(IommuError) as err:
        probe(e)
    assert err.value.errno == errno.ENOMEM
    e.injector.fail("context")
    with pytest.raises(IommuError) as err:
        probe(e, "00:03.0")
    assert err.value.errno == errno.ENOMEM
    assert e.frames.count("pasid-dir") == 0 and e.frames.count("context") == 0


def test_release_device() -> None:
    e = env()
    _dev, info = probe(e)
    intel_pasid_get_entry(info, 70)
    e.iommu.qi_trace = []
    intel_iommu_release_device(e.iommu, info)
    assert context_entry_read(e.iommu, 0, info.devfn).words == (0, 0, 0, 0)  # type: ignore
    assert kinds(e.iommu) == [1, 5, 7, 5, 2, 5, 3, 5]
    assert e.frames.count("pasid-table") == e.frames.count("pasid-dir") == 0


# --- second level ---------------------------------------------------------------------------------


def test_second_level_entry_modern() -> None:
    e = env()
    dev, info = probe(e)
    d = sl_domain(e)
    with e.iommu.lock:
        intel_pasid_setup_second_level(e.iommu, d, info, 5)
    ent = pasid_entry_read(info, 5)
    assert ent is not None
    pgd = d.pgtable.pgd
    assert ent.words == (pgd | 2 << 6 | 2 << 2 | 1, 2 | 1 << 23 | 1 << 24, 1, 0, 0, 0, 0, 0)
    assert ent.reserved_violations(haw=46) == []
    assert kinds(e.iommu) == []  # write-buffer flush only (no CM, no RWBF)
    # the hardware agrees: DMA with PASID 5 translates
    d.pgtable.map(0x7000, 0x800000, 0x1000, 3)
    assert dev.dma_write(0x7000, b"abc", pasid=5).ok
    assert e.platform.memory.read(0x800000, 3) == b"abc"
    # -EBUSY when present, nothing changed
    with e.iommu.lock, pytest.raises(IommuError) as err:
        intel_pasid_setup_second_level(e.iommu, d, info, 5)
    assert err.value.errno == errno.EBUSY
    assert pasid_entry_read(info, 5) == ent
    # pasid 0 (RID2PASID): no SRE; overwrite=True rewrites
    with e.iommu.lock:
        intel_pasid_setup_second_level(e.iommu, d, info, 0)
        intel_pasid_setup_second_level(e.iommu, d, info, 5, overwrite=True)
    assert pasid_entry_read(info, 0).SRE == 0  # type: ignore[union-attr]


def test_second_level_5_1_vector() -> None:
    """The 5.1 example: DID 2, pgd 0x12345000, agaw 2, no SMPWC -> 0x12345089, 0x2, 0x1."""
    e = env(Capabilities(page_walk_coherency=False), quirks=Quirks(v5_1_entry=True))
    _dev, info = probe(e)
    fake_pt = type("PT", (), {"pgd": 0x12345000, "agaw": 2})()
    d = Dom(fake_pt)
    d.iommu_array[e.iommu.seq_id] = IommuDomainInfo(e.iommu, 1, 2)
    with e.iommu.lock:
        intel_pasid_setup_second_level(e.iommu, d, info, 1)
        # 5.1 overwrote a present entry without a check
        intel_pasid_setup_second_level(e.iommu, d, info, 1)
    assert pasid_entry_read(info, 1).words == (0x12345089, 0x2, 0x1, 0, 0, 0, 0, 0)  # type: ignore


def test_pwsnp_did_bit0_quirk() -> None:
    for quirks, qw1 in ((Quirks(), 2 | 1 << 23), (Quirks(pwsnp_did_bit0=True), 3)):
        e = env(Capabilities(snoop_control=False), quirks=quirks)
        _dev, info = probe(e)
        d = sl_domain(e)
        with e.iommu.lock:
            intel_pasid_setup_second_level(e.iommu, d, info, 9)
        assert pasid_entry_read(info, 9).words[1] == qw1  # type: ignore[union-attr]


def test_sre_needs_srs_and_pgsnp_needs_unmanaged() -> None:
    e = env(Capabilities(supervisor_requests=False))
    _dev, info = probe(e)
    d = sl_domain(e)
    d.type = "dma"
    with e.iommu.lock:
        intel_pasid_setup_second_level(e.iommu, d, info, 9)
    ent = pasid_entry_read(info, 9)
    assert ent is not None and ent.SRE == 0 and ent.PGSNP == 0


def test_second_level_skips_levels_to_iommu_agaw() -> None:
    e = env()
    _dev, info = probe(e)
    d = Dom(DmaPageTable(e.frames, 57))  # 5-level table on a 4-level unit
    assert d.pgtable.levels == 5
    d.pgtable.map(0x1000, 0x2000, 0x1000, 3)
    with e.iommu.lock:
        domain_attach_iommu(d, e.iommu)
        intel_pasid_setup_second_level(e.iommu, d, info, 4)
    top = e.iommu.memory.read64(d.pgtable.pgd) & ~0xFFF
    ent = pasid_entry_read(info, 4)
    assert ent is not None and top == ent.SLPTPTR and ent.AW == 2
    empty = Dom(DmaPageTable(e.frames, 57))
    empty.iommu_array = d.iommu_array
    with e.iommu.lock, pytest.raises(IommuError) as err:
        intel_pasid_setup_second_level(e.iommu, empty, info, 6)
    assert err.value.errno == errno.EINVAL


def test_setup_flushes_in_caching_mode() -> None:
    e = env(Capabilities(caching_mode=True))
    _dev, info = probe(e)
    d = sl_domain(e)
    e.iommu.qi_trace = []
    with e.iommu.lock:
        intel_pasid_setup_second_level(e.iommu, d, info, 5)
    pc, _w, piotlb, _w2 = (D.decode(x) for x in e.iommu.qi_trace or [])
    assert (pc.TYPE, pc.G, pc.DID, pc.PASID) == (7, 1, 2, 5)
    assert (piotlb.TYPE, piotlb.G, piotlb.DID, piotlb.PASID) == (6, 2, 2, 5)


def test_setup_lock_contract() -> None:
    e = env()
    _dev, info = probe(e)
    d = sl_domain(e)
    with pytest.raises(sync.LockingError):
        intel_pasid_setup_second_level(e.iommu, d, info, 5)
    intel_pasid_setup_second_level(e.iommu, d, info, 5, lock_held=False)
    assert not e.iommu.lock.locked
    intel_pasid_tear_down_entry(e.iommu, info, 5, lock_held=False)
    assert pasid_entry_read(info, 5).P == 0  # type: ignore[union-attr]


def test_leaf_table_failure_is_enodev_and_clean() -> None:
    e = env()
    _dev, info = probe(e)
    d = sl_domain(e)
    e.injector.fail("pasid-table")
    with e.iommu.lock, pytest.raises(IommuError) as err:
        intel_pasid_setup_second_level(e.iommu, d, info, 5)
    assert err.value.errno == errno.ENODEV
    assert e.frames.count("pasid-table") == 0 and pasid_entry_read(info, 5) is None


# --- pass-through and first level -------------------------------------------------------------


def test_pass_through_entry() -> None:
    e = env()
    _dev, info = probe(e)
    with e.iommu.lock:
        intel_pasid_setup_pass_through(e.iommu, info, 3)
    ent = pasid_entry_read(info, 3)
    assert ent is not None
    assert ent.words[:3] == (4 << 6 | 2 << 2 | 1, 1 | 1 << 23, 1)
    e2 = env(Capabilities(supervisor_requests=False))
    _dev, info2 = probe(e2)
    with e2.iommu.lock:
        intel_pasid_setup_pass_through(e2.iommu, info2, 0)
    assert pasid_entry_read(info2, 0).SRE == 0  # type: ignore[union-attr]


def test_first_level_entry() -> None:
    e = env()
    _dev, info = probe(e)
    with e.iommu.lock:
        intel_pasid_setup_first_level(
            e.iommu, info, 0x4567000, 8, 3, PASID_FLAG_SUPERVISOR_MODE | PASID_FLAG_FL5LP
        )
    ent = pasid_entry_read(info, 8)
    assert ent is not None
    assert ent.words[:3] == (
        1 << 6 | 2 << 2 | 1,
        3 | 1 << 23,
        0x4567000 | 1 << 5 | 1 << 4 | 1 << 2 | 1,  # NXE, WPE, FLPM 1, SRE
    )
    assert PASID_ENTRY.get(ent.words, "FLPM") == 1
    e2 = env(Capabilities(first_level=False))
    _dev, info2 = probe(e2)
    with e2.iommu.lock, pytest.raises(IommuError) as err:
        intel_pasid_setup_first_level(e2.iommu, info2, 0x4567000, 8, 3)
    assert err.value.errno == errno.EINVAL


# --- teardown -------------------------------------------------------------------------------------


def test_teardown_second_level_order_and_effect() -> None:
    e = env()
    dev, info = probe(e)
    d = sl_domain(e)
    d.pgtable.map(0x7000, 0x800000, 0x1000, 3)
    with e.iommu.lock:
        intel_pasid_setup_second_level(e.iommu, d, info, 5)
    assert dev.dma_read(0x7000, 4, pasid=5).ok  # fills IOTLB and the device TLB
    e.iommu.qi_trace = []
    with e.iommu.lock:
        intel_pasid_tear_down_entry(e.iommu, info, 5)
    assert pasid_entry_read(info, 5).words == (0,) * 8  # type: ignore[union-attr]
    pc, _w1, iotlb, _w2, dtlb, _w3 = (D.decode(x) for x in e.iommu.qi_trace or [])
    assert (pc.TYPE, pc.G, pc.DID, pc.PASID) == (7, 1, 2, 5)
    assert (iotlb.TYPE, iotlb.G, iotlb.DID) == (2, 2, 2)  # DSI for second level
    assert (8, info.sid, 5, 1) == (dtlb.TYPE, dtlb.SID, dtlb.PASID, dtlb.S)
    assert not dev.dma_read(0x7000, 4, pasid=5).ok  # nothing stale survives
    # not present: modern teardown does nothing
    e.iommu.qi_trace = []
    with e.iommu.lock:
        intel_pasid_tear_down_entry(e.iommu, info, 5)
    assert e.iommu.qi_trace == []


def test_teardown_pass_through_rid2pasid_and_fault_ignore() -> None:
    e = env()
    _dev, info = probe(e)
    with e.iommu.lock:
        intel_pasid_setup_pass_through(e.iommu, info, 0)
    e.iommu.qi_trace = []
    with e.iommu.lock:
        intel_pasid_tear_down_entry(e.iommu, info, 0, fault_ignore=True)
    assert pasid_entry_read(info, 0).words == (2,) + (0,) * 7  # type: ignore[union-attr]
    descs = [D.decode(x) for x in e.iommu.qi_trace or []]
    assert [x.TYPE for x in descs] == [7, 5, 6, 5, 3, 5]
    assert descs[2].G == 2 and descs[2].DID == 1  # P_IOTLB all-in-PASID, FLPT_DEFAULT_DID
    assert descs[4].words[1] == 0x7FFFFFFFFFFFF001  # non-PASID devTLB, whole device


def test_teardown_5_1_and_caching_mode() -> None:
    e = env(quirks=Quirks(v5_1_entry=True))
    _dev, info = probe(e)
    d = sl_domain(e)
    with e.iommu.lock:
        intel_pasid_setup_second_level(e.iommu, d, info, 5)
    e.iommu.qi_trace = []
    with e.iommu.lock:
        intel_pasid_tear_down_entry(e.iommu, info, 5)
    assert kinds(e.iommu) == [7, 5, 6, 5, 3, 5]  # P_IOTLB, non-PASID devTLB
    cm = env(Capabilities(caching_mode=True))
    _dev, info2 = probe(cm)
    d2 = sl_domain(cm)
    with cm.iommu.lock:
        intel_pasid_setup_second_level(cm.iommu, d2, info2, 5)
    cm.iommu.qi_trace = []
    with cm.iommu.lock:
        intel_pasid_tear_down_entry(cm.iommu, info2, 5)
    assert kinds(cm.iommu) == [7, 5, 2, 5]  # no devTLB flush in caching mode


def test_no_leak_after_everything() -> None:
    e = env()
    _dev, info = probe(e)
    d = sl_domain(e)
    with e.iommu.lock:
        for p in (1, 64, 700, 5000):
            intel_pasid_setup_second_level(e.iommu, d, info, p)
        for p in (1, 64, 700, 5000):
            intel_pasid_tear_down_entry(e.iommu, info, p)
    assert e.frames.count("pasid-table") == 4
    intel_iommu_release_device(e.iommu, info)
    d.pgtable.free_all()
    assert e.frames.count("pasid-table") == e.frames.count("pgtable") == 0


def test_alloc_table_twice_is_eexist() -> None:
    e = env()
    _dev, info = probe(e)
    with pytest.raises(IommuError) as err:
        intel_pasid_alloc_table(info)
    assert err.value.errno == errno.EEXIST
    assert isinstance(info, DeviceDomainInfo)


def test_racing_leaf_table_install() -> None:
    """intel_pasid_get_entry's cmpxchg64 on the directory entry: the loser frees its leaf."""

    class Interleave:
        def __init__(self, action: Any) -> None:
            self.action: Any = action

        def acquire(self, lock: Any) -> None:
            lock.owner = 1

        def release(self, lock: Any) -> None:
            lock.owner = None

        def access(self, label: str, key: object, write: bool) -> None:
            pass

        def point(self, label: str) -> None:
            if label == "alloc:pasid-table" and self.action is not None:
                action, self.action = self.action, None
                action()

        def ident(self) -> object:
            return 1

    e = env()
    _dev, info = probe(e)
    other: list[int] = []
    with sync.installed(Interleave(lambda: other.append(intel_pasid_get_entry(info, 65)))):
        mine = intel_pasid_get_entry(info, 66)
    assert mine - other[0] == 64 and e.frames.count("pasid-table") == 1


def test_non_coherent_unit_flushes_cpu_caches() -> None:
    e = env(Capabilities(coherent=False))
    _dev, info = probe(e)
    d = sl_domain(e)
    before = e.iommu.clflushes
    with e.iommu.lock:
        intel_pasid_setup_second_level(e.iommu, d, info, 70)  # new leaf: leaf + dir + entry
        intel_pasid_tear_down_entry(e.iommu, info, 70)  # entry
    assert e.iommu.clflushes - before == 4
