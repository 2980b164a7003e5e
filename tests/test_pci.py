"""PCI functions (vtdsim.hw.pci) and the platform (vtdsim.hw.platform): BDFs, PASID and ATS
capabilities, DMA across pages, device-TLB staleness and invalidation encodings."""

from __future__ import annotations

from typing import Any

import pytest

from hw_tables import Tables, sm_sl_setup
from vtdsim.errors import ArgumentError
from vtdsim.hw.caps import Capabilities
from vtdsim.hw.pci import PasidCapability, PciDevice, ats_range, format_bdf, parse_bdf
from vtdsim.hw.platform import Platform

SID = 0x0010


def test_bdf_parse_and_format() -> None:
    assert parse_bdf("00:02.0") == 0x10
    assert parse_bdf("0000:3a:1f.7") == 0x3AFF
    assert parse_bdf(0x3AFF) == 0x3AFF
    assert format_bdf(0x3AFF) == "3a:1f.7"
    bads: list[Any] = ["00:20.0", "0:2", "zz:00.0", "0001:00:00.0", "00:00.8", -1, 0x10000, True]
    for bad in bads:
        with pytest.raises(ArgumentError):
            parse_bdf(bad)


def test_pasid_capability() -> None:
    assert PasidCapability(20).max_pasids == 1 << 20
    assert PasidCapability(0).max_pasids == 0
    with pytest.raises(ArgumentError):
        PasidCapability(21)


def dev_setup(
    *, ats: bool = False, dte: bool = False, pasid_bits: int = 8
) -> tuple[Tables, int, PciDevice]:
    t, _pdir, sl = sm_sl_setup(dte=dte)
    dev = PciDevice(SID, t.mem, t.unit, pasid_bits=pasid_bits, ats=ats)
    return t, sl, dev


def test_dma_read_write_across_pages() -> None:
    t, sl, dev = dev_setup()
    # device pages 1, 2, 3 -> scattered host pages
    hosts = {1: 0x50_0000, 2: 0x30_0000, 3: 0x70_0000}
    for vpn, h in hosts.items():
        t.sl_map(sl, vpn << 12, h)
    data = bytes(range(256)) * 33  # 0x2100 bytes from 0x1F00: crosses 2 page boundaries
    w = dev.dma_write(0x1F00, data)
    assert w.ok and w.transferred == len(data) and w.fault is None
    assert t.mem.read(0x50_0F00, 0x100) == data[:0x100]
    assert t.mem.read(0x30_0000, 0x1000) == data[0x100:0x1100]
    r = dev.dma_read(0x1F00, len(data))
    assert r.ok and r.data == data


def test_dma_fault_stops_at_first_unmapped_page() -> None:
    t, sl, dev = dev_setup()
    t.sl_map(sl, 0x1000, 0x50_0000)
    r = dev.dma_read(0x1800, 0x1000)
    assert not r.ok and r.data is None and r.transferred == 0x800
    assert r.fault is not None and r.fault.reason == 0x79 and r.fault.address == 0x2000
    # a write: the first page has been written (as hardware would), the result is a failure
    w = dev.dma_write(0x1800, b"\xaa" * 0x1000)
    assert not w.ok and w.transferred == 0x800
    assert t.mem.read(0x50_0800, 0x800) == b"\xaa" * 0x800
    assert len(t.unit.faults) == 2


def test_dma_with_pasid_checks_capability() -> None:
    t, sl, dev = dev_setup(pasid_bits=4)
    t.sl_map(sl, 0x1000, 0x50_0000)
    assert dev.dma_read(0x1000, 8, pasid=0).ok
    with pytest.raises(ArgumentError):
        dev.dma_read(0x1000, 8, pasid=16)
    nopasid = PciDevice(0x18, t.mem, t.unit)
    with pytest.raises(ArgumentError):
        nopasid.dma_read(0, 8, pasid=1)
    with pytest.raises(ArgumentError):
        dev.dma_read(-1, 8)


def test_ats_range_encoding() -> None:
    assert ats_range(0x5000, False) == (0x5000, 0x1000)
    assert ats_range(0x4000, True) == (0x4000, 0x2000)  # bit 12 clear: 8 KiB
    assert ats_range(0x5000, True) == (0x4000, 0x4000)  # bit 12 set, 13 clear: 16 KiB
    assert ats_range(0x7FFF_FFFF_FFFF_F000, True) == (0, 1 << 64)  # Linux whole-device
    assert ats_range(0xFFFF_FFFF_FFFF_F000, True) == (0, 1 << 64)


def test_devtlb_staleness_and_invalidation() -> None:
    t, sl, dev = dev_setup(ats=True, dte=True)
    t.sl_map(sl, 0x1000, 0x50_0000)
    t.sl_map(sl, 0x2000, 0x51_0000)
    t.mem.write(0x50_0000, b"old!")
    t.mem.write(0x60_0000, b"new!")
    assert dev.dma_read(0x1000, 4).data == b"old!"
    assert dev.dma_read(0x2000, 4).ok
    # the driver remaps and flushes the IOTLB but forgets the device-TLB
    t.sl_map(sl, 0x1000, 0x60_0000)
    t.tr.invalidate_iotlb("global")
    assert dev.dma_read(0x1000, 4).data == b"old!"  # stale: served by the devTLB
    assert t.unit.translate(SID, 0x1000).address == 0x60_0000
    # a single-page invalidation of another page does not help
    assert dev.invalidate_devtlb(None, 0x3000, False) == 0
    # S=1 range 0x0000-0x3FFF (addr 0x1000: bit 12 set, bit 13 clear) covers both pages
    assert dev.invalidate_devtlb(None, 0x1000, True) == 2
    assert dev.dma_read(0x1000, 4).data == b"new!"
    stats = dev.devtlb_statistics()
    assert stats.hits == 1 and stats.invalidations == 2


def test_devtlb_pasid_selective_and_whole_device() -> None:
    t, sl, dev = dev_setup(ats=True, dte=True)
    t.sl_map(sl, 0x1000, 0x50_0000)
    assert dev.dma_read(0x1000, 4).ok  # RID (no PASID)
    assert dev.dma_read(0x1000, 4, pasid=0).ok  # PASID 0
    assert dev.invalidate_devtlb(7, 0x1000, False) == 0
    assert dev.invalidate_devtlb(0, 0x1000, False) == 1
    assert dev.dma_read(0x1000, 4, pasid=0).ok
    # a request without PASID invalidates every PASID; whole-device encoding from Linux
    assert dev.invalidate_devtlb(None, 0x7FFF_FFFF_FFFF_F000, True) == 2


def test_no_devtlb_without_dte() -> None:
    t, sl, dev = dev_setup(ats=True, dte=False)
    t.sl_map(sl, 0x1000, 0x50_0000)
    assert dev.dma_read(0x1000, 4).ok
    assert dev.devtlb_statistics().entries == 0
    t.sl_map(sl, 0x1000, 0x60_0000)
    t.tr.invalidate_iotlb("global")
    assert dev.translate(0x1000)[0] == 0x60_0000


# --- platform --------------------------------------------------------------------------------


def test_platform_units_devices_and_scope() -> None:
    pytest.importorskip("vtdsim.hw.iommu")
    p = Platform(memory_size=64 << 20)
    gfx = p.add_unit(Capabilities(), name="dmar0", scope=["00:02.0"])
    other = p.add_unit()  # INCLUDE_ALL
    assert p.units == (gfx, other) and other.name == "dmar1"
    d0 = p.add_device("00:02.0", pasid_bits=8, ats=True)
    d1 = p.add_device("03:00.0")
    assert d0.unit is gfx and d1.unit is other
    assert p.unit_for("00:02.0") is gfx and p.unit_for(0x300) is other
    assert p.device(0x10) is d0 and p.device("03:00.0") is d1 and p.device(0x99) is None
    assert p.devices == (d0, d1)
    assert d0.bdf == "00:02.0" and d0.max_pasids == 256 and d0.ats_cap is not None
    with pytest.raises(ArgumentError):
        p.add_device("00:02.0")  # duplicate
    with pytest.raises(ArgumentError):
        p.add_device("00:02.x")
    with pytest.raises(ArgumentError):
        p.add_unit()  # a second INCLUDE_ALL
    with pytest.raises(ArgumentError):
        p.add_device("04:00.0", unit="dmar9")
    with pytest.raises(ArgumentError):
        p.add_device("00:02.0", unit=other)


def test_platform_default_unit_and_explicit_unit() -> None:
    pytest.importorskip("vtdsim.hw.iommu")
    p = Platform(memory_size=64 << 20)
    d = p.add_device("00:04.0")  # no unit yet: an INCLUDE_ALL unit is created
    assert len(p.units) == 1 and d.unit is p.units[0]
    u2 = p.add_unit(name="extra", scope=[])
    d2 = p.add_device("00:05.0", unit=u2)
    assert p.unit_for("00:05.0") is u2 and d2.unit is u2


def test_platform_dma_through_real_unit() -> None:
    pytest.importorskip("vtdsim.hw.iommu")
    p = Platform(memory_size=256 << 20)
    t = Tables()
    p.memory = t.mem
    unit = p.add_unit()
    dev = p.add_device("00:02.0")
    pdir = t.context_sm(dev.sid)
    sl = t.page()
    t.pasid_entry(pdir, 0, pgtt=2, sl_root=sl)
    t.sl_map(sl, 0x1000, 0x50_0000)
    unit.root_table_address = t.root
    unit.ttm = 1
    unit.translation_enabled = True
    assert dev.dma_write(0x1000, b"hello").ok
    assert t.mem.read(0x50_0000, 5) == b"hello"
