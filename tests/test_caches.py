"""Translation caches (vtdsim.hw.caches): geometry, replacement, statistics and every
invalidation granularity, on the cache objects directly."""

from __future__ import annotations

import random

import pytest

from vtdsim.errors import ArgumentError
from vtdsim.hw.caches import (
    CacheStatistics,
    ContextCache,
    Iotlb,
    IotlbEntry,
    PagingStructureCache,
    PasidCache,
    PscEntry,
    TranslationCache,
    function_mask,
)
from vtdsim.hw.caps import CacheGeometry
from vtdsim.hw.walk import ContextInfo, PasidInfo


def test_unbounded_is_exact_and_counts() -> None:
    c: TranslationCache[int, str] = TranslationCache(CacheGeometry(), "t")
    for i in range(1000):
        c.insert(i, str(i))
    assert all(c.lookup(i) == str(i) for i in range(1000))
    assert c.lookup(5000) is None
    assert c.statistics() == CacheStatistics(1000, 1, 0, 0, 1000)


def test_disabled_cache_never_holds_anything() -> None:
    c: TranslationCache[int, str] = TranslationCache(CacheGeometry(entries=0), "t")
    c.insert(1, "x")
    assert c.lookup(1) is None and len(c) == 0
    assert c.statistics().misses == 1


@pytest.mark.parametrize("entries", [None, 0])
def test_unbounded_or_disabled_cache_state_is_one_dict(entries: int | None) -> None:
    """Such a cache keeps nothing but its dict of entries and counters (no per-set
    structures): all the explorer's snapshot records of it, and all a restore compares."""
    from vtdsim.explore.snapshot import GraphSnapshot

    c: TranslationCache[int, str] = TranslationCache(CacheGeometry(entries=entries), "t")
    snap = GraphSnapshot(c, skip=lambda o: isinstance(o, random.Random))
    containers = snap._cold + snap._big_live
    assert [type(o) for o in containers if o is not vars(c)] == [dict]
    c.insert(1, "x")
    held = entries is None
    assert (c.lookup(1), 1 in c, len(c)) == (("x", True, 1) if held else (None, False, 0))
    assert c.invalidate_all() == (1 if held else 0) and len(c) == 0
    snap.restore()
    assert c.statistics() == CacheStatistics(0, 0, 0, 0, 0)


def test_lru_evicts_least_recently_used() -> None:
    evicted: list[int] = []
    c: TranslationCache[int, int] = TranslationCache(
        CacheGeometry(entries=2), "t", on_evict=lambda: evicted.append(1)
    )
    c.insert(1, 1)
    c.insert(2, 2)
    assert c.lookup(1) == 1  # 2 becomes least recent
    c.insert(3, 3)
    assert 2 not in c and 1 in c and 3 in c
    assert c.statistics().evictions == 1 and evicted == [1]


def test_fifo_evicts_oldest_regardless_of_hits() -> None:
    c: TranslationCache[int, int] = TranslationCache(
        CacheGeometry(entries=2, replacement="fifo"), "t"
    )
    c.insert(1, 1)
    c.insert(2, 2)
    c.lookup(1)
    c.insert(3, 3)
    assert 1 not in c and 2 in c


def test_random_replacement_is_seeded() -> None:
    def run(seed: int) -> list[int]:
        c: TranslationCache[int, int] = TranslationCache(
            CacheGeometry(entries=4, replacement="random", seed=seed), "t"
        )
        for i in range(20):
            c.insert(i, i)
        return sorted(k for k, _ in c.items())

    assert run(1) == run(1)
    assert len(run(1)) == 4


def test_set_associative_conflicts_stay_in_their_set() -> None:
    c: TranslationCache[int, int] = TranslationCache(CacheGeometry(entries=8, ways=2), "t")
    # 4 sets; keys 0, 4, 8 map to set 0 (stable hash of an int is the int)
    for k in (0, 4, 8):
        c.insert(k, k)
    assert 0 not in c and {4, 8} <= {k for k, _ in c.items()}
    c.insert(1, 1)  # another set: no eviction
    assert c.statistics().evictions == 1 and len(c) == 3


def test_tuple_keys_with_none_are_stable() -> None:
    c: TranslationCache[tuple[int, int | None], int] = TranslationCache(
        CacheGeometry(entries=4, ways=1), "t"
    )
    c.insert((1, None), 1)
    assert c.lookup((1, None)) == 1


def test_function_mask() -> None:
    assert function_mask(0) == 0
    assert function_mask(1) == 0b100
    assert function_mask(2) == 0b110
    assert function_mask(3) == 0b111
    with pytest.raises(ArgumentError):
        function_mask(4)


def _ctx(sid: int, mode: int, did: int = 0) -> ContextInfo:
    c = ContextInfo(sid, mode, ())
    c.did = did
    return c


def test_context_cache_granularities() -> None:
    cc = ContextCache(CacheGeometry(), "cc")
    for sid in (0x10, 0x11, 0x15, 0x20):
        cc.insert(sid, _ctx(sid, 0, did=sid >> 4))
    assert cc.invalidate("device", sid=0x11, fm=0) == 1
    assert 0x10 in cc and 0x11 not in cc
    # FM=11 masks function bits 2:0: every function of device 00:02
    assert cc.invalidate("device", sid=0x10, fm=3) == 2
    assert cc.invalidate("domain", did=2) == 1
    assert len(cc) == 0
    cc.insert(0x30, _ctx(0x30, 1))
    cc.insert(0x40, _ctx(0x40, 0, did=7))
    # scalable-mode entries have no DID: a domain flush drops them
    assert cc.invalidate("domain", did=9) == 1 and 0x40 in cc
    assert cc.invalidate("global") == 1
    assert cc.statistics().invalidations == 6
    with pytest.raises(ArgumentError):
        cc.invalidate("device")
    with pytest.raises(ArgumentError):
        cc.invalidate("bogus")


def _pi(pasid: int, did: int) -> PasidInfo:
    p = PasidInfo(pasid, ())
    p.did = did
    return p


def test_pasid_cache_granularities() -> None:
    pc = PasidCache(CacheGeometry(), "pc")
    pc.insert((0x10, 1), _pi(1, 5))
    pc.insert((0x10, 2), _pi(2, 5))
    pc.insert((0x11, 1), _pi(1, 6))
    assert pc.invalidate("pasid", did=5, pasid=1) == 1
    assert pc.invalidate("pasid", did=5, pasid=1) == 0
    assert pc.invalidate("domain", did=5) == 1
    assert pc.invalidate("global") == 1
    with pytest.raises(ArgumentError):
        pc.invalidate("domain")


def _e(did: int, pasid: int | None, base: int, shift: int, pgtt: int) -> IotlbEntry:
    return IotlbEntry(did, pasid, base, shift, 0x100000, 3, pgtt, False)


def test_iotlb_lookup_any_page_size_and_psi() -> None:
    t = Iotlb(CacheGeometry(), "iotlb")
    t.fill(_e(1, 0, 0x20_0000, 21, 2))  # 2 MiB SL page
    t.fill(_e(1, 0, 0x1000, 12, 2))
    t.fill(_e(2, 0, 0x1000, 12, 2))
    assert t.find(1, 0, 0x3F_FFFF) is not None
    assert t.find(1, 0, 0x1234) is not None
    assert t.find(1, 7, 0x1234) is None
    # PSI with AM=0 of a page inside the 2 MiB entry drops it (overlap)
    assert t.invalidate("page", did=1, addr=0x30_0000, am=0) == 1
    # PSI with AM=9 covering 0..2 MiB drops the 4 KiB entry of did 1 only
    assert t.invalidate("page", did=1, addr=0, am=9) == 1
    assert t.find(2, 0, 0x1000) is not None
    assert t.invalidate("domain", did=2) == 1
    assert len(t) == 0


def test_iotlb_dsi_vs_piotlb_by_pgtt() -> None:
    t = Iotlb(CacheGeometry(), "iotlb")
    t.fill(_e(1, 3, 0x1000, 12, 1))  # first-level only
    t.fill(_e(1, 3, 0x2000, 12, 2))  # second-level only
    t.fill(_e(1, 3, 0x3000, 12, 3))  # nested
    t.fill(_e(1, None, 0x4000, 12, 0))  # legacy
    # domain-selective IOTLB: SL, nested, legacy -- not first-level-only
    assert t.invalidate("domain", did=1) == 3
    assert t.find(1, 3, 0x1000) is not None
    t.fill(_e(1, 3, 0x3000, 12, 3))
    t.fill(_e(1, 4, 0x3000, 12, 1))
    # PASID-based: first-level and nested of one PASID
    assert t.invalidate_pasid("pasid", 1, 3) == 2
    assert t.find(1, 4, 0x3000) is not None
    assert t.invalidate_pasid("page", 1, 4, addr=0x3000, am=0) == 1
    t.fill(_e(1, 3, 0x1000, 12, 1))
    assert t.invalidate("global") == 1


def test_psc_invalidation() -> None:
    p = PagingStructureCache(CacheGeometry(), "psc")
    p.insert((1, 0, 2, 1, 0), PscEntry(1, 0, 2, 1, 0, 0x5000, 3))  # covers 0..2 MiB
    p.insert((1, 0, 2, 2, 0), PscEntry(1, 0, 2, 2, 0, 0x6000, 3))  # covers 0..1 GiB
    p.insert((1, 5, 1, 1, 0), PscEntry(1, 5, 1, 1, 0, 0x7000, 3))
    assert p.invalidate("page", did=1, addr=0x40_0000, am=0) == 1  # only the 1 GiB one
    assert p.invalidate_pasid("pasid", 1, 5) == 1
    assert p.invalidate("domain", did=1) == 1
    assert len(p) == 0
