"""Queued-invalidation descriptor layouts and helper constructors (vtdsim.spec.descriptors)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vtdsim.errors import ArgumentError
from vtdsim.spec import descriptors as D

U16 = st.integers(0, 0xFFFF)
PASID = st.integers(0, (1 << 20) - 1)
PAGE = st.integers(0, (1 << 52) - 1).map(lambda p: p << 12)


def test_types_and_type_field() -> None:
    assert [int(t) for t in D.DescType] == list(range(1, 10))
    for t, lay in D.DESCRIPTORS_128.items():
        assert D.descriptor_type(lay.encode(TYPE=t)[0]) == t
        assert D.DESCRIPTORS_256[t].words == 4 and lay.words == 2
    # type[6:4] lives in bits 11:9 (OpenVMM descriptor_type)
    assert D.descriptor_type(0x205) == 0x15
    assert D.descriptor_type(0xFFFF_FFFF_FFFF_F1F5) == 0x05


def test_linux_qi_macro_vectors() -> None:
    # QI_IOTLB_TYPE | QI_IOTLB_DID(5) | QI_IOTLB_GRAN(DMA_TLB_DSI_FLUSH) (2 << 60 >> 56 = 0x20)
    assert D.iotlb_dsi(5) == (0x0005_0022, 0)
    assert D.iotlb_global() == (0x12, 0)
    # PSI with DR/DW (QI_IOTLB_DR << 7, QI_IOTLB_DW << 6); qw1 = addr | IH << 6 | AM
    assert D.iotlb_psi(3, 0x1234_5000, 2, ih=True, dr=True, dw=True) == (
        0x0003_00F2,
        0x1234_5042,
    )
    # QI_CC_FM(1) | QI_CC_SID(0x0108) | QI_CC_DID(7) | QI_CC_GRAN(device = 3 << 61 >> 57)
    assert D.cc_device(7, 0x0108, 1) == (0x0001_0108_0007_0031, 0)
    assert D.cc_global() == (0x11, 0) and D.cc_domain(9) == (0x9_0021, 0)
    # qi_submit_sync's wait: QI_IWD_STATUS_DATA(QI_DONE) | QI_IWD_STATUS_WRITE | QI_IWD_TYPE
    assert D.wait(0x1000_0004) == (0x2_0000_0025, 0x1000_0004)
    assert D.wait(interrupt=True, fence=True) == (0x55, 0)
    # 5.1 QI_PC_PASID_SEL already carries the type: low byte 0x17
    assert D.pc_pasid(2, 5)[0] & 0xFF == 0x17
    assert D.pc_pasid(2, 5) == (0x5_0002_0017, 0)
    assert D.pc_global() == (0x37, 0) and D.pc_domain(4) == (0x4_0007, 0)
    # QI_EIOTLB_PASID(p) | DID | GRAN(QI_GRAN_PSI_PASID) | TYPE; qw1 addr | IH | AM
    assert D.piotlb_psi(2, 0x12345, 0x8000, 3, ih=True) == (0x1_2345_0002_0036, 0x8043)
    assert D.piotlb_pasid(2, 7) == (0x7_0002_0026, 0)


def test_whole_device_devtlb_vector() -> None:
    # Linux qi_flush_dev_iotlb with mask 64 - VTD_PAGE_SHIFT = 52 (fact sheet 3.5)
    qw0, qw1 = D.devtlb(0x0100, size_order=52, pfsid=0, qdep=0)
    assert qw1 == 0x7FFF_FFFF_FFFF_F001
    assert qw0 == 0x0100_0000_0003
    # 8 KiB at 0x4000: S=1, ADDR bit 12 set below the range's top bit
    assert D.devtlb(1, 0x4000, 1)[1] == 0x4000 | 0x0000 | 1
    assert D.devtlb(1, 0x8000, 2)[1] == 0x8000 | 0x1000 | 1
    assert D.devtlb(1, 0x3000)[1] == 0x3000


def test_pfsid_split_is_the_fixed_one() -> None:
    # PFSID[3:0] at qw0 15:12, PFSID[15:4] at qw0 63:52 (commit 4e7120d79edb)
    qw0 = D.devtlb(0x10, pfsid=0xABCD)[0]
    assert (qw0 >> 12) & 0xF == 0xD
    assert qw0 >> 52 == 0xABC
    buggy = (0xABCD & 0xF) << 12 | (0xABCD & 0xFFF) << 52 & ((1 << 64) - 1)
    assert qw0 & 0xFFF0_0000_0000_F000 != buggy
    d = D.decode(D.pdevtlb(0x10, 0x55, pfsid=0xABCD))
    assert (d.PFSID_LO, d.PFSID_HI, d.PASID, d.SID) == (0xD, 0xABC, 0x55, 0x10)


def test_qdep_clamps_like_linux() -> None:
    # QI_DEV_IOTLB_MAX_INVS = 32: qdep >= 32 is sent as 0
    assert D.decode(D.devtlb(1, qdep=31)).MIP == 31
    assert D.decode(D.devtlb(1, qdep=32)).MIP == 0
    assert D.decode(D.pdevtlb(1, 2, qdep=7)).MIP == 7


def test_valid_bits_match_openvmm_masks() -> None:
    type_hi = 0xE00  # bits 11:9 (type[6:4]) are declared but must encode type 0
    cases = [
        (D.CC_DESC, 0x0003_FFFF_FFFF_003F, 0),
        (D.IOTLB_DESC, 0xFFFF_00FF, 0xFFFF_FFFF_FFFF_F07F),
        (D.IEC_DESC, 0x0000_FFFF_F800_001F, 0),
        (D.WAIT_DESC, 0xFFFF_FFFF_0000_00FF, 0xFFFF_FFFF_FFFF_FFFC),
        (D.PIOTLB_DESC, 0x000F_FFFF_FFFF_003F, 0xFFFF_FFFF_FFFF_F07F),
        (D.PASID_CACHE_DESC, 0x000F_FFFF_FFFF_003F, 0),
        (D.DEVTLB_DESC, 0xFFF0_FFFF_001F_F00F, 0xFFFF_FFFF_FFFF_F001),
        (D.PDEVTLB_DESC, 0xFFFF_FFFF_FFFF_F1FF, 0xFFFF_FFFF_FFFF_F801),
    ]
    for lay, lo, hi in cases:
        assert lay.defined_masks[0] & ~type_hi == lo, lay.name
        assert lay.defined_masks[1] == hi, lay.name
        (t,) = (k for k, v in D.DESCRIPTORS_128.items() if v is lay)
        wide = D.DESCRIPTORS_256[t]
        assert wide.defined_masks[:2] == lay.defined_masks
        assert wide.reserved_masks[2:] == ((1 << 64) - 1, (1 << 64) - 1)


def test_widen_and_decode() -> None:
    w = D.widen(D.iotlb_dsi(3))
    assert w == (0x3_0022, 0, 0, 0)
    d = D.decode(w)
    assert d.layout is D.IOTLB_DESC_256 and d.G == D.IotlbGranularity.DOMAIN and d.DID == 3
    assert "G=2 (domain)" in repr(d)
    with pytest.raises(ArgumentError):
        D.widen(w)
    with pytest.raises(ArgumentError):
        D.decode((0x0F, 0))  # type 15: no layout
    with pytest.raises(ArgumentError):
        D.decode((1, 2, 3))
    with pytest.raises(ArgumentError):
        D.layout_for(9)


@pytest.mark.parametrize(
    "call",
    [
        lambda: D.iotlb_dsi(0x10000),
        lambda: D.iotlb_psi(1, 0x1001),
        lambda: D.iotlb_psi(1, 0x1000, am=64),
        lambda: D.cc_device(1, 2, fm=4),
        lambda: D.pc_pasid(1, 1 << 20),
        lambda: D.devtlb(1, size_order=53),
        lambda: D.devtlb(1, pfsid=-1),
        lambda: D.wait(0x1002),
        lambda: D.wait(0x1000, 1 << 32),
        lambda: D.iec_index(1, im=32),
        lambda: D.piotlb_psi(True, 1, 0x1000),  # type: ignore[arg-type]
    ],
)
def test_helpers_reject_out_of_range(call: object) -> None:
    with pytest.raises(ArgumentError):
        call()  # type: ignore[operator]


@settings(max_examples=80, deadline=None)
@given(did=U16, pasid=PASID, addr=PAGE, am=st.integers(0, 63), ih=st.booleans())
def test_helpers_round_trip(did: int, pasid: int, addr: int, am: int, ih: bool) -> None:
    d = D.decode(D.piotlb_psi(did, pasid, addr, am, ih))
    assert (6, 3, did, pasid, addr, am, ih) == (d.TYPE, d.G, d.DID, d.PASID, d.ADDR, d.AM, d.IH)
    assert not d.reserved_violations()
    d = D.decode(D.widen(D.iotlb_psi(did, addr, am, ih)))
    assert (2, 3, did, addr, am, ih) == (d.TYPE, d.G, d.DID, d.ADDR, d.AM, d.IH)
    assert not d.reserved_violations()
    d = D.decode(D.pc_pasid(did, pasid))
    assert (1, did, pasid) == (d.G, d.DID, d.PASID)
    d = D.decode(D.cc_device(did, pasid & 0xFFFF, am & 3))
    assert (3, did, pasid & 0xFFFF, am & 3) == (d.G, d.DID, d.SID, d.FM)
    d = D.decode(D.wait(addr | 4, pasid, interrupt=ih, fence=not ih))
    assert (1, ih, not ih, pasid, addr | 4) == (d.SW, d.IF, d.FN, d.SDATA, d.SADDR)


@settings(max_examples=60, deadline=None)
@given(data=st.data(), wide=st.booleans())
def test_every_layout_round_trips(data: st.DataObject, wide: bool) -> None:
    table = D.DESCRIPTORS_256 if wide else D.DESCRIPTORS_128
    for t, lay in table.items():
        values: dict[str, int] = {}
        for f in lay.fields:
            if f.name in ("TYPE", "TYPE_HI"):
                continue
            if f.kind == "address":
                v = data.draw(st.integers(0, (1 << f.width) - 1)) << f.shift
            else:
                v = data.draw(st.integers(0, (1 << f.width) - 1))
            values[f.name] = v
        words = lay.encode(TYPE=t, **values)
        assert D.descriptor_type(words[0]) == t
        dec = D.decode(words)
        assert dec.layout is lay
        for k, v in values.items():
            assert dec[k] == v, (lay.name, k)
        assert not dec.reserved_violations()
