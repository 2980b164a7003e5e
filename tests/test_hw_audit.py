"""Regression tests for the defects found by the hardware-layer bit-exactness audit.

Each test names its source.  They would have failed before the fixes.
"""

from __future__ import annotations

from hw_tables import BEYOND, Tables, sm_sl_setup
from vtdsim.hw.caps import Capabilities
from vtdsim.hw.iommu import RemappingUnit
from vtdsim.hw.translate import Translation, TranslationFault
from vtdsim.spec import registers as R
from vtdsim.spec.entries import SL_PDE_2M, SL_PTE_4K, SL_TABLE
from vtdsim.spec.faults import FAULT_RECORD

SID = 0x0010
BIT11 = 1 << 11


def _fault(r: Translation | TranslationFault) -> TranslationFault:
    assert isinstance(r, TranslationFault), r
    return r


# --- second-level reserved bits (QEMU VTD_SPTE_* masks, vtd_init) -----------------------------


def test_sl_table_entry_bit11_is_reserved_in_the_layout() -> None:
    # QEMU VTD_SPTE_PAGE_L2/L3/L4_RSVD_MASK contain 0x800: SNP exists only in leaves
    assert SL_TABLE.reserved_masks[0] & BIT11
    assert not SL_PTE_4K.reserved_masks[0] & BIT11
    assert not SL_PDE_2M.reserved_masks[0] & BIT11


def test_sl_table_entry_with_bit11_faults_scalable() -> None:
    t, _pdir, sl = sm_sl_setup()
    t.sl_map(sl, 0x1000, 0x2000)
    assert t.unit.translate(SID, 0x1000).ok
    t.tr.invalidate_all()
    t.mem.write64(sl, t.mem.read64(sl) | BIT11)  # the SL-PML4E
    r = _fault(t.unit.translate(SID, 0x1000))
    assert r.reason == 0x7A
    assert _fault(t.tr.walk(SID, 0x1000)).reason == 0x7A


def test_sl_table_entry_with_bit11_faults_legacy() -> None:
    t = Tables(legacy=True)
    sl = t.page()
    t.context_legacy(SID, slptr=sl, aw=2)
    t.sl_map(sl, 0x1000, 0x2000)
    pde = t.mem.read64(sl)
    t.mem.write64(sl, pde | BIT11)
    assert _fault(t.unit.translate(SID, 0x1000)).reason == 0x0C


def _legacy_leaf_with_snp(caps: Capabilities) -> Tables:
    t = Tables(caps, legacy=True)
    sl = t.page()
    t.context_legacy(SID, slptr=sl, aw=2)
    leaf = t.sl_map(sl, 0x1000, 0x2000)
    t.mem.write64(leaf, t.mem.read64(leaf) | BIT11)
    return t


def test_legacy_leaf_snp_reserved_without_snoop_control() -> None:
    # QEMU vtd_init: SNP leaves the leaf reserved masks only with scalable mode or SC
    t = _legacy_leaf_with_snp(Capabilities(snoop_control=False))
    assert _fault(t.unit.translate(SID, 0x1000)).reason == 0x0C
    t = _legacy_leaf_with_snp(Capabilities(snoop_control=True))
    assert t.unit.translate(SID, 0x1000).ok


def test_scalable_leaf_snp_allowed_without_snoop_control() -> None:
    t, _pdir, sl = sm_sl_setup(Capabilities(snoop_control=False))
    leaf = t.sl_map(sl, 0x1000, 0x2000)
    t.mem.write64(leaf, t.mem.read64(leaf) | BIT11)
    r = t.unit.translate(SID, 0x1000)
    assert isinstance(r, Translation) and r.address == 0x2000


# --- 0x7B: the table named by SLPTPTR cannot be read -------------------------------------------


def test_slptptr_beyond_memory_is_0x7b_and_deeper_tables_0x78() -> None:
    t, pdir, _sl = sm_sl_setup()
    t.pasid_entry(pdir, 0, pgtt=2, sl_root=BEYOND, aw=2)
    r = _fault(t.unit.translate(SID, 0x1000))
    assert r.reason == 0x7B and r.recorded
    assert "Invalid second-level page table pointer" in r.linux_message()
    assert _fault(t.tr.walk(SID, 0x1000)).reason == 0x7B
    # a pointer below the top that cannot be read stays 0x78 (SSS.1)
    t2, _pdir2, sl2 = sm_sl_setup()
    t2.mem.write64(sl2, SL_TABLE.encode(R=1, W=1, ADDR=BEYOND)[0])
    assert _fault(t2.unit.translate(SID, 0x1000)).reason == 0x78


def test_uncached_fast_walk_reports_0x7b_too() -> None:
    from vtdsim.hw.caps import CacheGeometry

    off = CacheGeometry(entries=0)
    caps = Capabilities(context_cache=off, pasid_cache=off, iotlb=off, paging_structure_cache=off)
    t, pdir, _sl = sm_sl_setup(caps)
    t.pasid_entry(pdir, 0, pgtt=2, sl_root=BEYOND, aw=2)
    assert _fault(t.unit.translate(SID, 0x1000)).reason == 0x7B


# --- the fault recording register as Linux dmar_fault reads it --------------------------------


def _sm_unit() -> tuple[Tables, RemappingUnit]:
    t, _pdir, _sl = sm_sl_setup()
    u = RemappingUnit(t.mem, t.caps)
    u.write64(R.RTADDR, t.root | 1 << 10)
    u.write32(R.GCMD, 1 << 30)  # SRTP
    u.write32(R.GCMD, 1 << 31)  # TE
    return t, u


def _linux_dmar_fault(u: RemappingUnit, index: int) -> dict[str, int]:
    """Linux dmar.c dmar_fault: 32-bit reads at +12 and +8, a 64-bit read at +0."""
    base = R.fault_record_offset(index)
    hi32 = u.read32(base + 12)
    mid32 = u.read32(base + 8)
    return {
        "F": hi32 >> 31,  # DMA_FRCD_F
        "type": (hi32 >> 30) & 1,  # dma_frcd_type: 1 = "DMA Read"
        "reason": hi32 & 0xFF,  # dma_frcd_fault_reason
        "pasid": (hi32 >> 8) & 0xFFFFF,  # dma_frcd_pasid_value
        "sid": mid32 & 0xFFFF,  # dma_frcd_source_id
        "pp": (mid32 >> 31) & 1,  # dma_frcd_pasid_present
        "addr": u.read64(base) & ~0xFFF,  # dma_frcd_page_addr
    }


def test_fault_record_read_write_type_as_linux_reads_it() -> None:
    _t, u = _sm_unit()
    r = u.translate(SID, 0x5123)  # not mapped: read fault
    assert isinstance(r, TranslationFault) and r.recorded
    f = _linux_dmar_fault(u, 0)
    assert f == {
        "F": 1,
        "type": 1,
        "reason": 0x79,
        "pasid": 0,
        "sid": SID,
        "pp": 0,
        "addr": 0x5000,
    }
    # the fact sheet's "T 62 (1 = read)" is bit 62 of the high qword = bit 126 of the record
    hi = u.read64(R.fault_record_offset(0) + 8)
    assert hi >> 62 & 1 == 1
    d = FAULT_RECORD.decode((u.read64(R.fault_record_offset(0)), hi))
    assert d.T == 1 and d.T2 == 0 and d.FR == 0x79 and d.SID == SID
    r = u.translate(SID, 0x7000, pasid=5, write=True)  # PASID 5: directory entry absent
    assert isinstance(r, TranslationFault)
    f = _linux_dmar_fault(u, 1)
    assert (f["type"], f["pp"], f["pasid"], f["reason"]) == (0, 1, 5, 0x59)


def test_fault_record_t2_is_declared_at_bit_92() -> None:
    # VirtualBox iommu-intel.h VTD_BF_1_FRCD_REG_T2_SHIFT 28 (bit 92), PRIV 93, EXE 94, PP 95
    assert (FAULT_RECORD.field("T2").lo, FAULT_RECORD.field("PRIV").lo) == (92, 93)
    assert (FAULT_RECORD.field("EXE").lo, FAULT_RECORD.field("PP").lo) == (94, 95)
    assert FAULT_RECORD.field("T").lo == 126 and FAULT_RECORD.field("F").lo == 127


# --- P_devTLB range encoding as Linux writes it -----------------------------------------------


def test_pdevtlb_range_encoding_matches_linux_for_unaligned_addresses() -> None:
    """Linux qi_flush_dev_iotlb_pasid: qw1 = addr & PAGE_MASK | GENMASK(o+11, 12), then the
    bit 12+o-1 is cleared and S (bit 11) set; the non-PASID form only ORs the low bits."""
    from vtdsim.spec import descriptors as D

    def linux(addr: int, o: int) -> int:
        qw1 = addr & ~0xFFF
        if o:
            qw1 |= ((1 << o) - 1) << 12  # GENMASK_ULL(o + 11, 12)
            qw1 &= ~(1 << (12 + o - 1))
            qw1 |= 1 << 11  # QI_DEV_EIOTLB_SIZE
        return qw1

    for addr, o in [(0x3000, 2), (0x3000, 1), (0x4000, 2), (0x8000, 2), (0, 52), (0x5000, 0)]:
        assert D.pdevtlb(1, 2, addr, o)[1] == linux(addr, o), (hex(addr), o)
    # aligned requests encode the same range in both forms (S at bit 11 vs bit 0)
    assert D.pdevtlb(1, 2, 0x8000, 2)[1] & ~0x800 == D.devtlb(1, 0x8000, 2)[1] & ~1
