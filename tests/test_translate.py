"""The per-request API (vtdsim.hw.translate): cache staleness until the matching invalidation,
every invalidation granularity, the fast path's equivalence with the architectural caches,
statistics, and the real RemappingUnit's use of the Translator."""

from __future__ import annotations

import pytest

from hw_tables import Tables, sm_sl_setup
from vtdsim.errors import ArgumentError
from vtdsim.hw.caps import CacheGeometry, Capabilities
from vtdsim.hw.translate import Translation, TranslationFault
from vtdsim.hw.walk import WalkStep
from vtdsim.spec.entries import SL_PTE_4K, SL_TABLE

SID = 0x0010
SID2 = 0x0011


def ok(r: Translation | TranslationFault) -> Translation:
    assert isinstance(r, Translation), r
    return r


def fault(r: Translation | TranslationFault) -> TranslationFault:
    assert isinstance(r, TranslationFault), r
    return r


def test_translation_attributes() -> None:
    t, _, sl = sm_sl_setup(did=6)
    t.sl_map(sl, 0x1000, 0x2000, w=False)
    r = ok(t.unit.translate(SID, 0x1010))
    assert r.address == 0x2010 and r.page_size == 0x1000 and r.did == 6 and r.pasid == 0
    assert r.readable and not r.writable and r.sid == SID and r.page_address == 0x2000
    assert r.ok and "Translation(" in repr(r)


def test_iotlb_stale_until_page_invalidation() -> None:
    t, _, sl = sm_sl_setup()
    t.sl_map(sl, 0x1000, 0x2000)
    assert ok(t.unit.translate(SID, 0x1000)).address == 0x2000
    t.sl_map(sl, 0x1000, 0x3000)  # the driver changes the PTE ...
    assert ok(t.unit.translate(SID, 0x1000)).address == 0x2000  # ... stale: no flush yet
    t.tr.invalidate_iotlb("page", did=3, addr=0x1000)  # wrong domain: still stale
    assert ok(t.unit.translate(SID, 0x1000)).address == 0x2000
    t.tr.invalidate_iotlb("page", did=2, addr=0x1000)
    assert ok(t.unit.translate(SID, 0x1000)).address == 0x3000


def test_iotlb_stale_after_unmap_then_domain_invalidation() -> None:
    t, _, sl = sm_sl_setup()
    leaf = t.sl_map(sl, 0x1000, 0x2000)
    ok(t.unit.translate(SID, 0x1000))
    t.mem.write64(leaf, 0)  # unmap without flushing: the device still reaches the page
    assert ok(t.unit.translate(SID, 0x1000)).address == 0x2000
    t.tr.invalidate_iotlb("domain", did=2)
    assert fault(t.unit.translate(SID, 0x1000)).reason == 0x79


def test_iotlb_psi_address_mask() -> None:
    t, _, sl = sm_sl_setup()
    for i in range(4):
        t.sl_map(sl, 0x1000 * i, 0x10_0000 + 0x1000 * i)
        ok(t.unit.translate(SID, 0x1000 * i))
    for i in range(4):
        t.sl_map(sl, 0x1000 * i, 0x20_0000 + 0x1000 * i)
    t.tr.invalidate_iotlb("page", did=2, addr=0, am=1)  # pages 0 and 1
    got = [ok(t.unit.translate(SID, 0x1000 * i)).address for i in range(4)]
    assert got == [0x20_0000, 0x20_1000, 0x10_2000, 0x10_3000]
    t.tr.invalidate_iotlb("global")
    assert ok(t.unit.translate(SID, 0x3000)).address == 0x20_3000


def test_psc_stale_with_invalidation_hint() -> None:
    t, _, sl = sm_sl_setup()
    t.sl_map(sl, 0x1000, 0x2000)
    ok(t.unit.translate(SID, 0x1000))
    # replace the whole level-1 table for 0..2 MiB (a PDE change: non-leaf)
    new_pt = t.page()
    t.mem.write64(new_pt + 8, SL_PTE_4K.encode(R=1, W=1, ADDR=0x7000)[0])
    pd = t.mem.read64(t.mem.read64(sl) & ~0xFFF) & ~0xFFF
    t.mem.write64(pd, SL_TABLE.encode(R=1, W=1, ADDR=new_pt)[0])
    # PSI with IH keeps paging-structure caches: the old level-1 table is still used
    t.tr.invalidate_iotlb("page", did=2, addr=0x1000, ih=True)
    assert ok(t.unit.translate(SID, 0x1000)).address == 0x2000
    t.tr.invalidate_iotlb("page", did=2, addr=0x1000, ih=False)
    assert ok(t.unit.translate(SID, 0x1000)).address == 0x7000


def test_piotlb_for_first_level() -> None:
    t = Tables()
    pdir = t.context_sm(SID)
    fl = t.page()
    t.pasid_entry(pdir, 5, pgtt=1, did=3, fl_root=fl)
    t.fl_map(fl, 0x1000, 0x2000)
    assert ok(t.unit.translate(SID, 0x1000, pasid=5)).address == 0x2000
    t.fl_map(fl, 0x1000, 0x4000)
    t.tr.invalidate_iotlb("domain", did=3)  # does not reach first-level-only entries
    assert ok(t.unit.translate(SID, 0x1000, pasid=5)).address == 0x2000
    t.tr.invalidate_piotlb("page", did=3, pasid=6, addr=0x1000)  # other PASID
    assert ok(t.unit.translate(SID, 0x1000, pasid=5)).address == 0x2000
    t.tr.invalidate_piotlb("page", did=3, pasid=5, addr=0x1000)
    assert ok(t.unit.translate(SID, 0x1000, pasid=5)).address == 0x4000
    t.fl_map(fl, 0x1000, 0x6000)
    t.tr.invalidate_piotlb("pasid", did=3, pasid=5)
    assert ok(t.unit.translate(SID, 0x1000, pasid=5)).address == 0x6000


def test_pasid_cache_stale_until_pasid_selective_flush() -> None:
    t, pdir, sl = sm_sl_setup()
    t.sl_map(sl, 0x1000, 0x2000)
    ok(t.unit.translate(SID, 0x1000, pasid=0))
    # tear the PASID entry down (P=0) and flush only the IOTLB: the PASID cache is stale
    t.pasid_entry(pdir, 0, present=False, pgtt=0)
    t.tr.invalidate_iotlb("global")
    assert ok(t.unit.translate(SID, 0x1000, pasid=0)).address == 0x2000
    t.tr.invalidate_pasid_cache("pasid", did=2, pasid=1)
    assert t.unit.translate(SID, 0x1000, pasid=0).ok
    t.tr.invalidate_pasid_cache("pasid", did=2, pasid=0)
    r = t.unit.translate(SID, 0x1000, pasid=0)
    assert fault(r).reason == 0x59


@pytest.mark.parametrize("gran", ["domain", "global"])
def test_pasid_cache_domain_and_global(gran: str) -> None:
    t, pdir, sl = sm_sl_setup()
    t.sl_map(sl, 0x1000, 0x2000)
    ok(t.unit.translate(SID, 0x1000))
    t.pasid_entry(pdir, 0, pgtt=4, did=2)  # now pass-through
    t.tr.invalidate_iotlb("global")
    assert ok(t.unit.translate(SID, 0x1000)).address == 0x2000
    t.tr.invalidate_pasid_cache(gran, did=2)
    # the IOTLB entry refilled through the stale PASID-cache entry is still there
    assert ok(t.unit.translate(SID, 0x1000)).address == 0x2000
    t.tr.invalidate_iotlb("domain", did=2)  # Linux order: PASID cache, then IOTLB
    assert ok(t.unit.translate(SID, 0x1000)).address == 0x1000


@pytest.mark.parametrize("gran,kw", [("device", {"sid": SID}), ("global", {})])
def test_context_cache_stale_until_flush(gran: str, kw: dict[str, int]) -> None:
    t, _pdir, sl = sm_sl_setup()
    t.sl_map(sl, 0x1000, 0x2000)
    ok(t.unit.translate(SID, 0x1000))
    t.mem.write_qwords(t.ctx_sm_addr(SID), (0, 0, 0, 0))  # context cleared
    t.tr.invalidate_pasid_cache("global")
    t.tr.invalidate_iotlb("global")
    assert t.unit.translate(SID, 0x1000).ok  # context cache still holds the entry
    t.tr.invalidate_context("device", sid=SID2)  # another function
    assert t.unit.translate(SID, 0x1000).ok
    t.tr.invalidate_context(gran, **kw)
    assert fault(t.unit.translate(SID, 0x1000)).reason == 0x41


def test_legacy_context_domain_flush() -> None:
    t = Tables(legacy=True)
    sl = t.page()
    t.context_legacy(SID, slptr=sl, did=4)
    t.sl_map(sl, 0x1000, 0x2000)
    ok(t.unit.translate(SID, 0x1000))
    t.context_legacy(SID, tt=2, did=4)  # switch to pass-through
    t.tr.invalidate_iotlb("global")
    assert ok(t.unit.translate(SID, 0x1000)).address == 0x2000
    t.tr.invalidate_context("domain", did=5)
    assert ok(t.unit.translate(SID, 0x1000)).address == 0x2000
    t.tr.invalidate_context("domain", did=4)
    t.tr.invalidate_iotlb("domain", did=4)
    assert ok(t.unit.translate(SID, 0x1000)).address == 0x1000


def test_write_after_read_rewalks_to_set_dirty() -> None:
    t = Tables()
    pdir = t.context_sm(SID)
    sl = t.page()
    t.pasid_entry(pdir, 0, pgtt=2, sl_root=sl, ssade=True)
    leaf = t.sl_map(sl, 0x1000, 0x2000)
    d = SL_PTE_4K.field("D").mask
    ok(t.unit.translate(SID, 0x1000))
    assert not t.mem.read64(leaf) & d
    ok(t.unit.translate(SID, 0x1000, write=True))
    assert t.mem.read64(leaf) & d
    walks = t.tr.walks
    ok(t.unit.translate(SID, 0x1000, write=True))
    assert t.tr.walks == walks  # now served from the IOTLB


def test_permission_upgrade_rewalks_instead_of_faulting() -> None:
    t, _, sl = sm_sl_setup()
    t.sl_map(sl, 0x1000, 0x2000, w=False)
    ok(t.unit.translate(SID, 0x1000))
    t.sl_map(sl, 0x1000, 0x2000, w=True)  # permission increase needs no flush
    assert ok(t.unit.translate(SID, 0x1000, write=True)).writable


def test_translation_disabled_is_identity() -> None:
    t, _, _sl = sm_sl_setup()
    t.unit.translation_enabled = False
    assert ok(t.unit.translate(SID, 0xDEAD_B000)).address == 0xDEAD_B000


def test_rid_priv_applies_to_requests_without_pasid() -> None:
    t = Tables()
    pdir = t.context_sm(SID, rid_priv=True)
    sl = t.page()
    t.pasid_entry(pdir, 0, pgtt=2, sl_root=sl, sre=False)
    t.sl_map(sl, 0x1000, 0x2000)
    r = t.unit.translate(SID, 0x1000)
    assert fault(r).reason == 0x5D and r.privileged


def test_bad_arguments_raise() -> None:
    t, _, _ = sm_sl_setup()
    with pytest.raises(ArgumentError):
        t.unit.translate(0x10000, 0)
    with pytest.raises(ArgumentError):
        t.unit.translate(SID, -1)
    with pytest.raises(ArgumentError):
        t.unit.translate(SID, 0, pasid=1 << 20)


# --- the fast path is exactly the caches ---------------------------------------------------


def _scenario(caps: Capabilities) -> list[object]:
    t, pdir, sl = sm_sl_setup(caps)
    t.pasid_entry(pdir, 9, pgtt=2, did=2, sl_root=sl)
    out: list[object] = []
    for i in range(12):
        t.sl_map(sl, 0x1000 * i, 0x10_0000 + 0x1000 * i, w=bool(i & 1))
    for rnd in range(3):
        for i in range(12):
            for pasid in (None, 9):
                for write in (False, True):
                    r = t.unit.translate(SID, 0x1000 * i + 8, pasid=pasid, write=write)
                    out.append((r.ok, getattr(r, "address", None), getattr(r, "reason", None)))
        for i in range(0, 12, 3):
            t.sl_map(sl, 0x1000 * i, 0x30_0000 + 0x1000 * i + rnd * 0x10_0000, w=True)
        t.tr.invalidate_iotlb("page", did=2, addr=0x3000)
    out.append(t.tr.statistics()["iotlb"].hits)
    return out


@pytest.mark.parametrize("replacement", ["fifo", "random"])
def test_fast_path_equals_architectural_caches(replacement: str) -> None:
    small = CacheGeometry(entries=8, ways=2, replacement=replacement, seed=3)  # type: ignore[arg-type]
    big = CacheGeometry()
    fast = Capabilities(iotlb=small, context_cache=big, pasid_cache=big)
    # LRU disables the fast path (hits reorder the cache), so it is the reference
    slow = Capabilities(
        iotlb=CacheGeometry(entries=8, ways=2, replacement=replacement, seed=3),  # type: ignore[arg-type]
        context_cache=CacheGeometry(entries=64, replacement="lru"),
        pasid_cache=big,
    )
    t_fast, _, _ = sm_sl_setup(fast)
    assert t_fast.tr._fast_on
    t_slow, _, _ = sm_sl_setup(slow)
    assert not t_slow.tr._fast_on
    assert _scenario(fast) == _scenario(slow)


def test_statistics_include_fast_hits() -> None:
    t, _, sl = sm_sl_setup()
    t.sl_map(sl, 0x1000, 0x2000)
    for _ in range(10):
        ok(t.unit.translate(SID, 0x1000))
    s = t.tr.statistics()
    assert s["iotlb"].hits == 9 and s["iotlb"].misses == 1
    assert s["context"].hits == 9 and s["pasid"].hits == 9
    ok(t.unit.translate(SID, 0x1000))
    t.tr.invalidate_iotlb("global")
    s = t.tr.statistics()
    assert s["iotlb"].hits == 10 and s["iotlb"].invalidations == 1


def test_uncached_unit_counts_misses_and_sees_every_change() -> None:
    off = CacheGeometry(entries=0)
    caps = Capabilities(context_cache=off, pasid_cache=off, iotlb=off, paging_structure_cache=off)
    t, _, sl = sm_sl_setup(caps)
    t.sl_map(sl, 0x1000, 0x2000)
    assert ok(t.unit.translate(SID, 0x1000)).address == 0x2000
    t.sl_map(sl, 0x1000, 0x5000)
    assert ok(t.unit.translate(SID, 0x1000)).address == 0x5000  # nothing cached
    s = t.tr.statistics()
    assert s["iotlb"].misses == 2 and s["iotlb"].entries == 0


def test_bounded_lru_iotlb_evicts() -> None:
    caps = Capabilities(iotlb=CacheGeometry(entries=2))
    t, _, sl = sm_sl_setup(caps)
    for i in range(3):
        t.sl_map(sl, 0x1000 * i, 0x10_0000 + 0x1000 * i)
        ok(t.unit.translate(SID, 0x1000 * i))
    t.sl_map(sl, 0, 0x20_0000)  # page 0 was evicted: the change is visible without a flush
    assert ok(t.unit.translate(SID, 0)).address == 0x20_0000
    assert t.tr.statistics()["iotlb"].evictions >= 1


# --- with the real remapping unit ---------------------------------------------------------------


def test_real_remapping_unit_uses_translator() -> None:
    iommu = pytest.importorskip("vtdsim.hw.iommu")
    t, _pdir, sl = sm_sl_setup()
    t.sl_map(sl, 0x1000, 0x2000)
    unit = iommu.RemappingUnit(t.mem, t.caps)
    unit.root_table_address = t.root
    unit.ttm = 1
    unit.translation_enabled = True
    r = unit.translate(SID, 0x1008)
    assert r.ok and r.address == 0x2008
    f = unit.translate(SID, 0x9000)
    assert not f.ok and f.reason == 0x79 and f.recorded


def test_first_level_psc_dropped_by_piotlb_not_by_dsi() -> None:
    t = Tables()
    pdir = t.context_sm(SID)
    fl = t.page()
    t.pasid_entry(pdir, 5, pgtt=1, did=3, fl_root=fl)
    t.fl_map(fl, 0x1000, 0x2000)
    ok(t.unit.translate(SID, 0x1000, pasid=5))
    assert t.tr.statistics()["psc"].entries == 3
    # point the PML4E at a new lower-level chain mapping 0x1000 -> 0x9000
    t2 = t.page()
    t.fl_map(t2, 0x1000, 0x9000)
    t.mem.write64(fl, t.mem.read64(t2))
    t.tr.invalidate_piotlb("page", did=3, pasid=5, addr=0x1000, ih=True)  # IH keeps PSC
    assert ok(t.unit.translate(SID, 0x1000, pasid=5)).address == 0x2000
    t.tr.invalidate_iotlb("domain", did=3)  # DSI does not reach first-level-only entries
    t.tr.invalidate_piotlb("page", did=3, pasid=5, addr=0x1000, ih=True)
    assert ok(t.unit.translate(SID, 0x1000, pasid=5)).address == 0x2000
    t.tr.invalidate_piotlb("pasid", did=3, pasid=5)
    assert ok(t.unit.translate(SID, 0x1000, pasid=5)).address == 0x9000


def test_uncached_walk_with_trace_touches_no_cache() -> None:
    t, _, sl = sm_sl_setup()
    t.sl_map(sl, 0x1000, 0x2000)
    trace: list[WalkStep] = []
    r = ok(t.tr.walk(SID, 0x1000, trace=trace))
    assert r.address == 0x2000 and len(trace) == 8
    s = t.tr.statistics()
    assert all(c.entries == 0 and c.hits == 0 and c.misses == 0 for c in s.values())
    f = fault(t.tr.walk(SID, 0x5000))
    assert f.reason == 0x79 and not f.recorded and t.unit.faults == []
