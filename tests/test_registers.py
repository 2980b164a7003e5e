"""Register offsets, layouts, mask tables and CAP/ECAP encoding (vtdsim.spec.registers)."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from vtdsim.hw.caps import Capabilities
from vtdsim.spec import registers as R


def test_offsets_match_linux_and_fact_sheet() -> None:
    # Linux iommu.h DMAR_*_REG; fact sheet 3.1
    expected = {
        "VER": 0x0,
        "CAP": 0x8,
        "ECAP": 0x10,
        "GCMD": 0x18,
        "GSTS": 0x1C,
        "RTADDR": 0x20,
        "CCMD": 0x28,
        "FSTS": 0x34,
        "FECTL": 0x38,
        "FEDATA": 0x3C,
        "FEADDR": 0x40,
        "FEUADDR": 0x44,
        "AFLOG": 0x58,
        "PMEN": 0x64,
        "IQH": 0x80,
        "IQT": 0x88,
        "IQA": 0x90,
        "ICS": 0x9C,
        "IECTL": 0xA0,
        "IEDATA": 0xA4,
        "IEADDR": 0xA8,
        "IEUADDR": 0xAC,
        "IQER": 0xB0,
        "IRTA": 0xB8,
        "PQH": 0xC0,
        "PQT": 0xC8,
        "PQA": 0xD0,
        "PRS": 0xDC,
    }
    for name, off in expected.items():
        assert getattr(R, name) == off, name
    assert (R.IVA, R.IOTLB_REG) == (0xF0, 0xF8)
    assert R.fault_record_offset(0) == 0x220
    assert R.fault_record_offset(3) == 0x250


def test_registers_do_not_overlap() -> None:
    table = R.register_table(Capabilities(fault_records=256))
    spans = sorted((r.offset, r.offset + r.width // 8, r.name) for r in table.values())
    for (a0, a1, an), (b0, _b1, bn) in itertools.pairwise(spans):
        assert a1 <= b0, f"{an} overlaps {bn}"
        assert a0 % (8 if a1 - a0 == 8 else 4) == 0
    # IVA/IOTLB end before the fault records begin
    assert R.IOTLB_REG + 8 <= R.FRCD_BASE


def test_default_cap_fields() -> None:
    caps = Capabilities()
    cap = R.encode_cap(caps)
    d = R.CAP_LAYOUT.decode((cap,))
    assert d.ND == 6 and caps.ndoms == 1 << (4 + 2 * d.ND)
    assert d.SAGAW == 0b00110  # 39-bit (bit 1) and 48-bit (bit 2)
    assert d.MGAW == 47
    assert d.SLLPS == 0b11
    assert d.PSI == 1 and d.MAMV == 18
    assert caps.fault_records - 1 == d.NFR
    assert d.RWBF == 0 and d.CM == 0 and d.AFL == 0
    # Linux: cap_fault_reg_offset(c) = ((c >> 24) & 0x3ff) * 16; cap_num_fault_regs = +1
    assert ((cap >> 24) & 0x3FF) * 16 == R.FRCD_BASE
    assert ((cap >> 40) & 0xFF) + 1 == caps.fault_records


def test_default_ecap_fields() -> None:
    caps = Capabilities()
    ecap = R.encode_ecap(caps)
    # Linux: ecap_iotlb_offset(e) = ((e >> 8) & 0x3ff) * 16; ecap_pss = (e >> 35) & 0x1f
    assert ((ecap >> 8) & 0x3FF) * 16 == R.IVA
    assert (ecap >> 35) & 0x1F == 19
    for bit in (0, 1, 2, 6, 7, 26, 31, 40, 43, 45, 46, 47, 48):
        assert ecap >> bit & 1, bit
    for bit in (3, 4, 29, 30, 42, 52):  # IR, EIM, PRS, ERS, PDS, ADMS off
        assert not ecap >> bit & 1, bit


def test_ecap_follows_capabilities() -> None:
    caps = Capabilities(
        scalable_mode=False,
        pasid=False,
        queued_invalidation=False,
        device_tlb=False,
        first_level=False,
    )
    d = R.ECAP_LAYOUT.decode((R.encode_ecap(caps),))
    assert (d.SMTS, d.PASID, d.PSS, d.QI, d.DT, d.FLTS) == (0, 0, 0, 0, 0, 0)
    assert R.version(caps) == 0x10
    assert R.version(Capabilities()) == 0x30
    cap = R.CAP_LAYOUT.decode(
        (R.encode_cap(Capabilities(psi=False, rwbf=True, caching_mode=True)),)
    )
    assert (cap.PSI, cap.MAMV, cap.RWBF, cap.CM) == (0, 0, 1, 1)


@settings(max_examples=60, deadline=None)
@given(
    nd=st.integers(0, 6),
    nfr=st.integers(1, 256),
    mamv=st.integers(0, 63),
    mgaw=st.integers(32, 64),
    pasid_bits=st.integers(1, 20),
    sagaw=st.sets(st.sampled_from([39, 48, 57]), min_size=1),
)
def test_cap_ecap_round_trip(
    nd: int, nfr: int, mamv: int, mgaw: int, pasid_bits: int, sagaw: set[int]
) -> None:
    caps = Capabilities(
        nd=nd,
        fault_records=nfr,
        mamv=mamv,
        mgaw=mgaw,
        pasid_bits=pasid_bits,
        sagaw=frozenset(sagaw),
    )
    cap = R.CAP_LAYOUT.decode((R.encode_cap(caps),))
    assert nd == cap.ND and nfr == cap.NFR + 1 and mamv == cap.MAMV and mgaw == cap.MGAW + 1
    assert {w for w, b in ((39, 1), (48, 2), (57, 3)) if cap.SAGAW >> b & 1} == sagaw
    assert pasid_bits == R.ECAP_LAYOUT.decode((R.encode_ecap(caps),)).PSS + 1
    assert not R.CAP_LAYOUT.reserved_violations((R.encode_cap(caps),))
    assert not R.ECAP_LAYOUT.reserved_violations((R.encode_ecap(caps),))


def test_gcmd_and_gsts_share_bit_positions() -> None:
    for f in R.GCMD_LAYOUT.fields:
        g = R.GSTS_LAYOUT.fields[R.GCMD_LAYOUT.fields.index(f)]
        assert (g.lo, g.hi) == (f.lo, f.hi)
    assert R.GCMD_LAYOUT.field("TE").lo == 31 and R.GSTS_LAYOUT.field("QIES").lo == 26
    # one-shot = SRTP | SFL | WBF | SIRTP; persistent mask from the spec (0x96FFFFFF)
    oneshot = sum(R.GCMD_LAYOUT.field(n).mask for n in ("SRTP", "SFL", "WBF", "SIRTP"))
    assert oneshot == R.GCMD_ONESHOT and R.GSTS_PERSISTENT == 0x96FFFFFF
    assert R.GSTS_PERSISTENT & oneshot == 0


def test_register_layout_bit_positions() -> None:
    assert R.RTADDR_LAYOUT.field("TTM").lo == 10 and R.RTADDR_LAYOUT.field("TTM").hi == 11
    c = R.CCMD_LAYOUT
    assert [
        (c.field(n).hi, c.field(n).lo) for n in ("ICC", "CIRG", "CAIG", "FM", "SID", "DID")
    ] == [
        (63, 63),
        (62, 61),
        (60, 59),
        (33, 32),
        (31, 16),
        (15, 0),
    ]
    t = R.IOTLB_LAYOUT
    assert [(t.field(n).hi, t.field(n).lo) for n in ("IVT", "IIRG", "IAIG", "DR", "DW", "DID")] == [
        (63, 63),
        (61, 60),
        (58, 57),
        (49, 49),
        (48, 48),
        (47, 32),
    ]
    v = R.IVA_LAYOUT
    assert (v.field("ADDR").lo, v.field("IH").lo, v.field("AM").hi) == (12, 6, 5)
    q = R.IQA_LAYOUT
    assert (q.field("DW").lo, q.field("QS").hi, q.field("IQA").lo) == (11, 2, 12)
    f = R.FSTS_LAYOUT
    assert [f.field(n).lo for n in ("PFO", "PPF", "IQE", "ICE", "ITE", "FRI")] == [0, 1, 4, 5, 6, 8]
    fr = R.FAULT_RECORD
    assert [fr.field(n).lo for n in ("FI", "SID", "PP", "FR", "PV", "T", "F")] == [
        12,
        64,
        95,
        96,
        104,
        126,
        127,
    ]


def test_register_table_masks() -> None:
    table = R.register_table(Capabilities())
    assert table[R.VER].reset == 0x30
    assert table[R.CAP].reset == R.encode_cap(Capabilities())
    assert table[R.CAP].wmask == 0 and table[R.CAP].romask == (1 << 64) - 1
    assert table[R.GCMD].womask == 0xFFFFFFFF
    assert table[R.FSTS].w1cmask == 0x71  # PFO, IQE, ICE, ITE
    assert table[R.FECTL].reset == 1 << 31
    assert table[R.IQA].wmask & (1 << 11)
    assert table[R.CCMD].oneshot == 1 << 63
    hi = table[R.fault_record_offset(0) + 8]
    assert hi.w1cmask == 1 << 63 and hi.wmask == 0
    assert R.fault_record_offset(Capabilities().fault_records) not in table
    # features the unit lacks are RsvdZ
    legacy = R.register_table(Capabilities(scalable_mode=False, queued_invalidation=False))
    assert legacy[R.IQA].wmask == 0 and legacy[R.IQT].wmask == 0
    assert not R.register_table(Capabilities(scalable_mode=False))[R.IQA].wmask & (1 << 11)
    assert table[R.PMEN].wmask == 0 and table[R.FEUADDR].wmask == 0
    assert table[R.PQA].wmask == 0
    assert R.register_table(Capabilities(page_requests=True))[R.PQA].wmask != 0
    # RW and RW1C never overlap
    for r in table.values():
        assert r.wmask & r.w1cmask == 0, r.name
