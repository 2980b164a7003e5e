"""Pure table walks (vtdsim.hw.walk): every PGTT, level count and page size, A/D updates,
traces, and a property test: translation through tables built from a random mapping equals
that mapping (second level and first level)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hw_tables import BEYOND, Nested, Tables, sm_sl_setup
from vtdsim.explore.snapshot import GraphSnapshot
from vtdsim.hw.caps import CacheGeometry, Capabilities
from vtdsim.hw.translate import Translation, TranslationFault
from vtdsim.hw.walk import (
    PERM_R,
    PERM_SR,
    PERM_SW,
    PERM_W,
    PERM_X,
    Walker,
    WalkFault,
    WalkResult,
    WalkStep,
)
from vtdsim.spec.entries import FL_PTE_4K, FL_TABLE, SL_PTE_4K, SL_TABLE

SID = 0x0010  # 00:02.0
HI_SID = 0x0185  # 01:10.5 -> devfn 0x85, upper half of the root entry

GB = 1 << 30
MB2 = 2 << 20


def walk(t: Tables, addr: int, **kw: Any) -> WalkResult:
    sid = kw.pop("sid", SID)
    return t.tr.walker.walk(t.root, t.unit.ttm, sid, addr, **kw)


# --- second level, scalable mode -------------------------------------------------------------


@pytest.mark.parametrize("levels", [3, 4, 5])
@pytest.mark.parametrize("size", [4096, MB2, GB])
def test_sl_levels_and_page_sizes(levels: int, size: int) -> None:
    caps = Capabilities(sagaw=frozenset({39, 48, 57}))
    t, _, sl = sm_sl_setup(caps, levels=levels)
    iova = 3 * GB + 5 * size if levels > 3 or size < GB else 5 * size
    hpa = 7 * size if size < GB else GB
    t.sl_map(sl, iova, hpa, levels=levels, size=size)
    off = size - 8 if size > 4096 else 0x123
    r = walk(t, iova + off)
    assert r.address == hpa + off
    assert r.page_shift == size.bit_length() - 1
    assert r.did == 2 and r.pasid == 0 and r.pgtt == 2


def test_sm_root_upper_half_by_devfn() -> None:
    t, _, sl = sm_sl_setup(sid=HI_SID)
    t.sl_map(sl, 0x5000, 0x9000)
    assert walk(t, 0x5010, sid=HI_SID).address == 0x9010
    # the lower half of the same bus is not present
    with pytest.raises(WalkFault) as ei:
        walk(t, 0x5010, sid=0x0105)
    assert ei.value.reason == 0x39


def test_rid_pasid_used_for_requests_without_pasid() -> None:
    t = Tables()
    pdir = t.context_sm(SID, rid_pasid=77, pdts=0)
    sl = t.page()
    t.pasid_entry(pdir, 77, pgtt=2, did=9, sl_root=sl)
    t.sl_map(sl, 0x1000, 0x2000)
    r = walk(t, 0x1000)
    assert (r.pasid, r.did, r.address) == (77, 9, 0x2000)
    # PASID 77 explicitly reaches the same entry
    assert walk(t, 0x1000, pasid=77).address == 0x2000


def test_large_pasid_uses_directory_index() -> None:
    t = Tables()
    pdir = t.context_sm(SID, pdts=1)  # 256 directory entries: PASIDs below 16384
    sl = t.page()
    pasid = 200 * 64 + 17
    t.pasid_entry(pdir, pasid, pgtt=2, sl_root=sl)
    t.sl_map(sl, 0x1000, 0x2000)
    assert walk(t, 0x1000, pasid=pasid).pasid == pasid
    with pytest.raises(WalkFault) as ei:
        walk(t, 0x1000, pasid=256 * 64)
    assert ei.value.reason == 0x46


def test_sl_permissions_accumulate_across_levels() -> None:
    t, _, sl = sm_sl_setup()
    t.sl_map(sl, 0x1000, 0x2000, table_rw=1)  # tables read-only, leaf R/W
    r = walk(t, 0x1000)
    assert r.perm & PERM_R and not r.perm & PERM_W
    with pytest.raises(WalkFault) as ei:
        walk(t, 0x1000, write=True)
    assert ei.value.reason == 0x85


def test_sl_superpage_unsupported_is_reserved() -> None:
    caps = Capabilities(sl_large_pages=frozenset({21}))
    t, _, sl = sm_sl_setup(caps)
    t.sl_map(sl, GB, GB, size=GB)
    with pytest.raises(WalkFault) as ei:
        walk(t, GB)
    assert ei.value.reason == 0x7A
    t.sl_map(sl, 0, MB2, size=MB2)
    assert walk(t, 0x1234).address == MB2 + 0x1234


def test_sl_accessed_dirty_with_ssade() -> None:
    t = Tables()
    pdir = t.context_sm(SID)
    sl = t.page()
    t.pasid_entry(pdir, 0, pgtt=2, sl_root=sl, ssade=True)
    leaf = t.sl_map(sl, 0x1000, 0x2000)
    a = SL_PTE_4K.field("A").mask
    d = SL_PTE_4K.field("D").mask
    r = walk(t, 0x1000)
    assert t.mem.read64(leaf) & a and not t.mem.read64(leaf) & d
    assert t.mem.read64(sl) & SL_TABLE.field("A").mask
    # a read translation of a clean page does not grant write (the write must walk to set D)
    assert not r.perm & PERM_W
    r = walk(t, 0x1000, write=True)
    assert t.mem.read64(leaf) & d and r.perm & PERM_W


def test_sl_no_ad_updates_without_ssade() -> None:
    t, _, sl = sm_sl_setup()
    leaf = t.sl_map(sl, 0x1000, 0x2000)
    before = t.mem.read64(leaf)
    walk(t, 0x1000, write=True)
    assert t.mem.read64(leaf) == before


# --- first level ------------------------------------------------------------------------------


def fl_setup(
    caps: Capabilities | None = None,
    *,
    flpm: int = 0,
    sre: bool = True,
    wpe: bool = False,
    eafe: bool = False,
) -> tuple[Tables, int]:
    t = Tables(caps)
    pdir = t.context_sm(SID)
    fl = t.page()
    t.pasid_entry(pdir, 5, pgtt=1, did=3, fl_root=fl, flpm=flpm, sre=sre, wpe=wpe, eafe=eafe)
    return t, fl


@pytest.mark.parametrize("flpm,levels", [(0, 4), (1, 5)])
@pytest.mark.parametrize("size", [4096, MB2, GB])
def test_fl_levels_and_page_sizes(flpm: int, levels: int, size: int) -> None:
    t, fl = fl_setup(flpm=flpm)
    va = 0x7F00_0000_0000 + 3 * size
    if levels == 5:
        va |= 0x0100_0000_0000_0000 >> 8  # an address using PML5 index bits (bit 48)
    pa = 9 * size if size < GB else GB
    t.fl_map(fl, va, pa, levels=levels, size=size)
    r = walk(t, va + 0x88, pasid=5)
    assert r.address == pa + 0x88 and r.page_shift == size.bit_length() - 1
    assert r.pgtt == 1 and r.did == 3


def test_fl_canonical_high_half() -> None:
    t, fl = fl_setup()
    va = 0xFFFF_8000_0000_1000
    t.fl_map(fl, va & ((1 << 48) - 1), 0x3000)
    assert walk(t, va, pasid=5).address == 0x3000
    with pytest.raises(WalkFault) as ei:
        walk(t, 0x0000_8000_0000_1000, pasid=5)
    assert ei.value.reason == 0x80


def test_fl_accessed_dirty_written_back() -> None:
    t, fl = fl_setup(eafe=True)
    leaf = t.fl_map(fl, 0x1000, 0x2000)
    a, d, ea = (FL_PTE_4K.field(n).mask for n in ("A", "D", "EA"))
    walk(t, 0x1000, pasid=5)
    assert t.mem.read64(fl) & FL_TABLE.field("A").mask
    assert t.mem.read64(leaf) & a and t.mem.read64(leaf) & ea and not t.mem.read64(leaf) & d
    walk(t, 0x1000, pasid=5, write=True)
    assert t.mem.read64(leaf) & d


def test_fl_user_supervisor_and_write_protect() -> None:
    t, fl = fl_setup(wpe=False)
    t.fl_map(fl, 0x1000, 0x2000, rw=False, us=False)
    # user request to a supervisor page: 0x81
    with pytest.raises(WalkFault) as ei:
        walk(t, 0x1000, pasid=5)
    assert ei.value.reason == 0x81
    # supervisor write to a read-only page is allowed while WPE=0 (CR0.WP=0 semantics)
    r = walk(t, 0x1000, pasid=5, privileged=True, write=True)
    assert r.perm & PERM_SW
    t2, fl2 = fl_setup(wpe=True)
    t2.fl_map(fl2, 0x1000, 0x2000, rw=False, us=False)
    with pytest.raises(WalkFault) as ei:
        walk(t2, 0x1000, pasid=5, privileged=True, write=True)
    assert ei.value.reason == 0x85
    assert walk(t2, 0x1000, pasid=5, privileged=True).perm & PERM_SR


def test_fl_execute_disable() -> None:
    caps = Capabilities(execute_requests=True)
    t, fl = fl_setup(caps)
    t.fl_map(fl, 0x1000, 0x2000, xd=True)
    t.fl_map(fl, 0x3000, 0x4000)
    assert walk(t, 0x3000, pasid=5, execute=True).perm & PERM_X
    with pytest.raises(WalkFault) as ei:
        walk(t, 0x1000, pasid=5, execute=True)
    assert ei.value.reason == 0x82


# --- nested, pass-through, legacy -----------------------------------------------------------------


def nested_setup(*, w_tables: bool = True) -> tuple[Tables, Nested, int]:
    t = Tables()
    pdir = t.context_sm(SID)
    sl = t.page()
    n = Nested(t, sl)
    fl_gpa = n.alloc(w=w_tables)
    t.pasid_entry(pdir, 1, pgtt=3, did=4, sl_root=sl, aw=2, fl_root=fl_gpa, sre=True)
    return t, n, fl_gpa


def test_nested_translation_goes_through_both_stages() -> None:
    t, n, fl = nested_setup()
    gpa = 0x8000_0000
    t.fl_map(fl, 0x1000, gpa, where=n.where, alloc=n.alloc)
    t.sl_map(n.sl, gpa, 0x0777_0000)
    trace: list[WalkStep] = []
    r = walk(t, 0x1000 + 0x44, pasid=1, trace=trace)
    assert r.address == 0x0777_0044 and r.pgtt == 3 and r.did == 4
    stages = [s.stage for s in trace]
    # every first-level table address was itself translated by the second level
    assert stages.count("nested-second-level") == 4 * 4
    assert stages.count("first-level") == 4
    # the page size is the smaller of the two stages
    t.sl_map(n.sl, 2 * GB, GB, size=GB)
    t.fl_map(fl, MB2 * 10, 2 * GB + MB2 * 3, size=MB2, where=n.where, alloc=n.alloc)
    r = walk(t, MB2 * 10 + 5, pasid=1)
    assert r.address == GB + MB2 * 3 + 5 and r.page_shift == 21


def test_nested_ad_update_needs_second_level_write() -> None:
    t, n, fl = nested_setup(w_tables=False)
    t.fl_map(fl, 0x1000, 0x8000_0000, where=n.where, alloc=lambda: n.alloc(w=False))
    t.sl_map(n.sl, 0x8000_0000, 0x0777_0000)
    with pytest.raises(WalkFault) as ei:
        walk(t, 0x1000, pasid=1)
    assert ei.value.reason == 0x77


def test_pass_through() -> None:
    t = Tables()
    pdir = t.context_sm(SID)
    t.pasid_entry(pdir, 0, pgtt=4, did=1)
    r = walk(t, 0x1234_5678)
    assert r.address == 0x1234_5678 and r.pgtt == 4
    with pytest.raises(WalkFault) as ei:
        walk(t, 0xFEE0_0000)
    assert ei.value.reason == 0x87


@pytest.mark.parametrize("tt", [0, 1])
def test_legacy_sl(tt: int) -> None:
    t = Tables(legacy=True)
    sl = t.page()
    t.context_legacy(SID, tt=tt, slptr=sl, aw=1, did=7)  # 3-level, 39-bit
    t.sl_map(sl, 0x80_0000_0000 - 0x1000, 0x5000, levels=3)
    r = walk(t, 0x80_0000_0000 - 0x1000 + 0x10)
    assert r.address == 0x5010 and r.did == 7 and r.pasid is None
    assert r.ats == (tt == 1)
    with pytest.raises(WalkFault) as ei:
        walk(t, 0x80_0000_0000)
    assert ei.value.reason == 0x4


def test_legacy_pass_through() -> None:
    t = Tables(legacy=True)
    t.context_legacy(SID, tt=2)
    assert walk(t, 0xABC_D000).address == 0xABC_D000


# --- traces ------------------------------------------------------------------------------------


def test_trace_records_are_self_describing() -> None:
    t, _pdir, sl = sm_sl_setup()
    t.sl_map(sl, 0x1234_5000, 0x6000)
    trace: list[WalkStep] = []
    walk(t, 0x1234_5678, trace=trace)
    names = [s.name for s in trace]
    assert names == [
        "RootEntrySM.lo",
        "ContextEntrySM",
        "PasidDirEntry",
        "PasidEntry",
        "SL-PML4E",
        "SL-PDPE",
        "SL-PDE",
        "SL-PTE",
    ]
    pe = trace[3]
    assert pe.decoded is not None
    assert pe.decoded.PGTT == 2 and sl == pe.decoded.SLPTPTR
    assert pe.entry_address == pe.table + 64 * pe.index
    assert len(pe.raw) == 8
    leaf = trace[-1]
    assert leaf.outcome == "leaf" and leaf.level == 1 and leaf.fault is None
    assert leaf.index == (0x1234_5678 >> 12) & 511
    assert "SL-PTE" in leaf.describe()
    # a fault appears as the last record's outcome
    trace.clear()
    with pytest.raises(WalkFault):
        walk(t, 0x9999_0000, trace=trace)
    assert trace[-1].outcome == "not-present" and trace[-1].fault == 0x79


def test_trace_access_error_record() -> None:
    t = Tables()
    t.write(t.root, (1 | BEYOND, 0))  # context table beyond memory
    trace: list[WalkStep] = []
    with pytest.raises(WalkFault) as ei:
        walk(t, 0, trace=trace)
    assert ei.value.reason == 0x40
    assert trace[-1].outcome == "access-error" and trace[-1].raw == ()


# --- uncached hot path agrees with the general walk --------------------------------------------


def test_fast_sm_matches_general_walk() -> None:
    off = CacheGeometry(entries=0)
    caps = Capabilities(context_cache=off, pasid_cache=off, iotlb=off, paging_structure_cache=off)
    t, _, sl = sm_sl_setup(caps)
    t.sl_map(sl, 0x1000, 0x2000, w=False)
    t.sl_map(sl, 0x20_0000, 0x40_0000, size=MB2)
    w: Walker = t.tr.walker
    for addr, write in [(0x1010, False), (0x1010, True), (0x20_1234, True), (0x5000, False)]:
        fast = w.fast_sm(t.root, SID, addr, None, write, False)
        try:
            r = w.walk(t.root, 1, SID, addr, write=write)
        except WalkFault:
            assert fast is None
        else:
            assert fast is not None and fast[:3] == (r.address, r.page_shift, r.perm)
        res = t.unit.translate(SID, addr, write=write)
        assert res.ok == (fast is not None)


# --- property: a random mapping is what the tables translate ---------------------------------

_pages = st.dictionaries(
    st.integers(min_value=0, max_value=(1 << 27) - 1),  # 4 KiB page numbers below 2^39
    st.integers(min_value=0x1000, max_value=0xFFFF),  # target frames (256 MiB memory)
    min_size=1,
    max_size=24,
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mapping=_pages, probe=st.integers(min_value=0, max_value=(1 << 27) - 1))
def test_property_sl_mapping(mapping: dict[int, int], probe: int) -> None:
    t, _, sl = sm_sl_setup(levels=4)
    for vpn, pfn in mapping.items():
        t.sl_map(sl, vpn << 12, pfn << 12, w=bool(vpn & 1))
    for vpn, pfn in mapping.items():
        r = t.unit.translate(SID, (vpn << 12) | 0xABC)
        assert r.ok and r.address == (pfn << 12) | 0xABC
        assert isinstance(r, Translation) and r.writable == bool(vpn & 1)
    r = t.unit.translate(SID, probe << 12)
    if probe in mapping:
        assert r.ok
    else:
        assert isinstance(r, TranslationFault) and r.reason == 0x79


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mapping=_pages)
def test_property_fl_mapping(mapping: dict[int, int]) -> None:
    t, fl = fl_setup()
    for vpn, pfn in mapping.items():
        t.fl_map(fl, vpn << 12, pfn << 12, rw=bool(vpn & 2))
    for vpn, pfn in mapping.items():
        r = t.unit.translate(SID, (vpn << 12) | 0x10, pasid=5)
        assert r.ok and r.address == (pfn << 12) | 0x10
        w = t.unit.translate(SID, vpn << 12, pasid=5, write=True)
        assert w.ok == bool(vpn & 2)


def test_walker_is_immutable_once_built() -> None:
    """The explorer's snapshot does not record a walker's attributes (``_snapshot_frozen``):
    the walker refuses to change them, its per-level masks are read-only, and a snapshot
    holds none of its dicts."""
    t, _, _sl = sm_sl_setup(Capabilities())
    w: Walker = t.tr.walker
    with pytest.raises(AttributeError, match=r"'sl_rw'.*immutable"):
        w.sl_rw = 0
    with pytest.raises(AttributeError, match="immutable"):
        w.extra = 1  # type: ignore[attr-defined]
    assert w.sl_rw == w.sl_r | w.sl_w and not hasattr(w, "extra")
    for masks in (w.sl_level, w.sl_level_legacy, w.fl_level, w._pgtt_ok):
        with pytest.raises(TypeError):
            masks[1] = masks[1]  # type: ignore[index]
    snap = GraphSnapshot(t.unit)
    recorded = snap._cold + snap._big_live
    assert not any(d is vars(w) for d in recorded)
    assert not any(type(d) is dict and d == dict(w.sl_level) for d in recorded)
