"""The cold-translation shortcuts produce exactly what the general paths produce.

``Translator._cold`` (the inlined context + PASID + second-level miss path, with its entry
memos), the precomputed fast-dict permission table and ``PciDevice.translate``'s device-TLB
shortcuts are compared with the general path (``tr._cold = None``) and with the device-TLB code
as it was: same results and fault reasons, same cache contents (keys, entry values, order), same
counters, same fast-dict entries, same recorded faults and fault registers, same memory -- over
random tables (every PGTT, FPD bits, RID_PASID/RID_PRIV, superpages, read-only and interrupt-range
mappings, reserved bits), random requests, invalidations and table rewrites.
"""

from __future__ import annotations

import random
import types
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hw_tables import Tables
from vtdsim.driver.core import IOMMU_READ, IOMMU_WRITE, Feature
from vtdsim.driver.kernel import Kernel
from vtdsim.errors import VtdsimError
from vtdsim.hw.caps import CacheGeometry, Capabilities
from vtdsim.hw.pci import PciDevice, _DevTlbEntry
from vtdsim.hw.translate import Translation, TranslationFault, Translator, _ok_table, _Page
from vtdsim.hw.walk import PERM_R, PERM_SR, PERM_SW, PERM_W, need_mask

DIFF = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

SIDS = (0x0010, 0x0018, 0x0090, 0x0100, 0x0208)  # lower/upper root half, two buses, no context
PASIDS = (0, 1, 2, 5, 63, 64, 130, 1 << 14)  # dir index 0, 1, 2 and beyond a 128-entry dir
IOVAS = (
    0x0,
    0x1000,
    0x10000,
    0x10FF8,
    0x11000,
    0x20_0000,
    0x20_1234,
    0x2F_F000,
    0x30_0000,
    0x4000_0000,
    0x4012_3000,
    0x7FFF_F000,
    0x60_0000,
    1 << 39,
    (1 << 48) - 0x1000,
    1 << 48,
)


# --- helpers ---------------------------------------------------------------------------------


def _obj(v: Any) -> Any:
    """A cache value, page or entry as a comparable tuple of its class and slots (with the
    type of every value: a bool where the general path stores a bool, not an int)."""
    if v is None:
        return None
    cls = type(v)
    names: list[str] = []
    for k in cls.__mro__:
        s = k.__dict__.get("__slots__", ())
        names.extend((s,) if isinstance(s, str) else s)
    return (
        cls.__name__,
        tuple((n, type(getattr(v, n)).__name__, getattr(v, n)) for n in names if hasattr(v, n)),
    )


def _result(r: Any) -> Any:
    if isinstance(r, Translation):
        return ("T", r.address, _obj(r._p))
    if isinstance(r, TranslationFault):
        return ("F", _obj(r))
    return ("?", r)


def _tr_state(tr: Translator) -> list[Any]:
    out: list[Any] = []
    for c in (tr.context_cache, tr.pasid_cache, tr.iotlb, tr.psc):
        out.append([(k, _obj(v)) for k, v in c.items()])
        out.append((c.hits, c.misses, c.evictions, c.invalidations))
    # fast-dict entries: the page objects only where a request kind reads them (ok bits
    # 0-3: unprivileged, 4-7: privileged)
    out.append(
        [
            (k, v[0], v[1], _obj(v[2]) if v[1] & 15 else 0, _obj(v[3]) if v[1] >> 4 else 0, *v[4:])
            for k, v in tr._fast.items()
        ]
    )
    out.append((tr.faults, tr._walks, tr._uncached_walks, tr.walks))
    return out


def _memory(mem: Any) -> dict[int, bytes]:
    return {pfn: mem.read(pfn << 12, 4096) for pfn in sorted(mem.present_pages())}


def _call(f: Any, *a: Any, **kw: Any) -> Any:
    try:
        return _result(f(*a, **kw))
    except Exception as e:  # the typed error (or a TypeError for a float) is what is compared
        return ("E", type(e).__name__, str(e))


# --- a random scalable-mode world --------------------------------------------------------------

CONFIGS = {
    "default": Capabilities(),
    "psc-off": Capabilities(paging_structure_cache=CacheGeometry(entries=0)),
    "exec-5lvl": Capabilities(
        execute_requests=True, sagaw=frozenset({39, 48, 57}), sl_large_pages=frozenset({21})
    ),
    "no-ad-no-pt": Capabilities(sl_ad=False, pass_through=False, sagaw=frozenset({39})),
    "no-sl-large": Capabilities(sl_large_pages=frozenset(), fl_1g_pages=False),
}


class World:
    """Identical tables built twice from one seed; ``pokes`` are entry addresses to rewrite,
    by kind (context, PASID directory and table, second-level table and leaf entries)."""

    def __init__(self, seed: int, caps: Capabilities) -> None:
        rng = random.Random(seed)
        self.t = t = Tables(caps)
        self.pokes: dict[str, list[int]] = {k: [] for k in ("ctx", "dir", "pe", "table", "leaf")}
        levels_ok = [lv for lv in (3, 4, 5) if 12 + 9 * lv in caps.sagaw]
        self.roots: dict[int, tuple[int, int]] = {}
        for did in (2, 3, 4):
            lv = rng.choice(levels_ok)
            root = t.page()
            self.roots[did] = (root, lv)
            for iova in rng.sample(IOVAS[:11], 7):
                size = 4096
                if iova & 0x1F_FFFF == 0 and rng.random() < 0.4:
                    size = 2 << 20
                if iova & 0x3FFF_FFFF == 0 and rng.random() < 0.3:
                    size = 1 << 30
                hpa = rng.choice((0x80_0000, 0x1234_5000, 0xFEE0_0000, 0x4000_0000, 0x20_0000))
                hpa &= ~(size - 1)
                try:  # (a 4 KiB map under a superpage may write beyond memory)
                    ea = t.sl_map(
                        root,
                        iova,
                        hpa,
                        levels=lv,
                        size=size,
                        r=rng.random() < 0.9,
                        w=rng.random() < 0.7,
                        table_rw=rng.choice((3, 3, 3, 1)),
                    )
                except VtdsimError:
                    continue
                self.pokes["leaf"].append(ea)
                self.pokes["table"].append(root + 8 * ((iova >> (12 + 9 * (lv - 1))) & 511))
        fl_root = t.page()
        t.fl_map(fl_root, 0x10000, 0x9000_0000)
        for sid in SIDS[:-1]:
            pdir = t.context_sm(
                sid,
                paside=rng.random() < 0.85,
                pdts=rng.choice((0, 0, 1)),
                dte=rng.random() < 0.6,
                fpd=rng.random() < 0.15,
                rid_pasid=rng.choice((0, 0, 1, 64)),
                rid_priv=rng.random() < 0.2,
                present=rng.random() < 0.95,
            )
            self.pokes["ctx"].append(t.ctx_sm_addr(sid))
            self.pokes["ctx"].append(t.ctx_sm_addr(sid) + 8)  # RID_PASID, RID_PRIV
            for pasid in PASIDS:
                if rng.random() < 0.15:
                    continue  # directory entry (or PASID entry) left empty
                did = rng.choice((2, 3, 4))
                root, lv = self.roots[did]
                r = rng.random()
                pgtt = 2 if r < 0.75 else 4 if r < 0.88 else 1 if r < 0.96 else 3
                pea = t.pasid_entry(
                    pdir,
                    pasid,
                    pgtt=pgtt,
                    did=did,
                    sl_root=root,
                    aw=lv - 2,
                    fl_root=fl_root,
                    sre=rng.random() < 0.3,
                    ssade=rng.random() < 0.1,
                    fpd=rng.random() < 0.15,
                    present=rng.random() < 0.9,
                    dir_fpd=rng.random() < 0.15,
                )
                self.pokes["pe"] += [pea, pea + 8, pea + 16]
                self.pokes["dir"].append(pdir + 8 * (pasid >> 6))
        # the table entries one level below the top too (R/W accumulate, PSC contents)
        for ea in list(self.pokes["table"]):
            e = t.mem.read64(ea)
            if e & 3 and not e & 0x80:
                nxt = e & 0x000F_FFFF_FFFF_F000
                below = [nxt + 8 * i for i in range(512) if t.mem.read64(nxt + 8 * i)]
                self.pokes["table"] += below
        for k, v in self.pokes.items():
            self.pokes[k] = sorted(set(v))
        self.original = {a: t.mem.read64(a) for v in self.pokes.values() for a in v}


_INVALIDATIONS = (
    *("ctx-g", "ctx-dev", "ctx-dom", "pc-g", "pc-dom", "pc-pasid", "io-g", "io-dom"),
    *("io-page", "io-page-ih", "piotlb", "all", "fast", "stats"),
)


def _op(rng: random.Random, w: World) -> tuple[Any, ...]:
    """One random operation, as data (applied identically to both worlds)."""
    r = rng.random()
    if r < 0.7:
        sid = rng.choice(SIDS)
        pasid = rng.choice((None, None, *PASIDS))
        addr = rng.choice(IOVAS) + rng.choice((0, 0, 0x10, 0xFF8))
        write = rng.random() < 0.3
        execute = rng.random() < 0.05
        priv = rng.random() < 0.2
        if rng.random() < 0.01:
            addr = rng.choice((-1, 1 << 64, 0.5))
        if rng.random() < 0.01:
            sid = rng.choice((-1, 0x10000, True))
        cold = rng.random() < 0.3  # every cache emptied first, as in a restored explorer world
        return ("tr", sid, addr, pasid, write, execute, priv, cold)
    if r < 0.85:
        kind = rng.choice(_INVALIDATIONS)
        return ("inv", kind, rng.choice((2, 3, 4)), rng.choice(SIDS), rng.choice(PASIDS), rng)
    if r < 0.97:  # an entry rewritten (often back to what it was)
        a = rng.choice(w.pokes[rng.choice(sorted(k for k, v in w.pokes.items() if v))])
        how = rng.random()
        if how < 0.5:
            v = w.original[a]
        elif how < 0.6:
            v = 0
        elif how < 0.8:
            v = w.original[a] ^ (1 << rng.choice((0, 1, 1, 2, 7, 9, 11, 46, 51, 52, 62)))
        else:
            v = w.original[a] ^ (1 << rng.randrange(64))
        return ("poke", a, v)
    # one request with TTM 00 / 10 or TES clear, then back to scalable mode
    return ("unit", rng.choice(("ttm0", "ttm2", "tes-off")), _op(rng, w))


def _apply(op: tuple[Any, ...], w: World) -> Any:
    t = w.t
    tr = t.tr
    if op[0] == "tr":
        _, sid, addr, pasid, write, execute, priv, cold = op
        if cold:
            tr.invalidate_all()
        return _call(
            t.unit.translate, sid, addr, pasid=pasid, write=write, execute=execute, privileged=priv
        )
    if op[0] == "poke":
        t.mem.write64(op[1], op[2])
        return None
    if op[0] == "unit":
        k = op[1]
        if k.startswith("ttm"):
            t.unit.ttm = int(k[3])
        else:
            t.unit.translation_enabled = False
        r = _apply(op[2], w)
        t.unit.ttm = 1
        t.unit.translation_enabled = True
        return r
    _, kind, did, sid, pasid, rng = op
    addr = rng.choice(IOVAS) & ((1 << 48) - 1)
    am = rng.choice((0, 0, 1, 9))
    if kind == "ctx-g":
        return tr.invalidate_context("global")
    if kind == "ctx-dev":
        return tr.invalidate_context("device", sid=sid, fm=rng.randrange(4))
    if kind == "ctx-dom":
        return tr.invalidate_context("domain", did=did)
    if kind == "pc-g":
        return tr.invalidate_pasid_cache("global")
    if kind == "pc-dom":
        return tr.invalidate_pasid_cache("domain", did=did)
    if kind == "pc-pasid":
        return tr.invalidate_pasid_cache("pasid", did=did, pasid=pasid)
    if kind == "io-g":
        return tr.invalidate_iotlb("global")
    if kind == "io-dom":
        return tr.invalidate_iotlb("domain", did=did)
    if kind in ("io-page", "io-page-ih"):
        return tr.invalidate_iotlb("page", did=did, addr=addr, am=am, ih=kind == "io-page-ih")
    if kind == "piotlb":
        return tr.invalidate_piotlb("page", did, pasid, addr=addr, am=am, ih=rng.random() < 0.5)
    if kind == "all":
        tr.invalidate_all()
        return None
    if kind == "fast":
        tr._fast.clear()  # as a restored explorer world: caches kept, derived dict empty
        return None
    return {k: v for k, v in tr.statistics().items()}


def _run_pair(seed: int, config: str, steps: int) -> tuple[World, World, list[int]]:
    """Both worlds through the same operations; returns them and how many requests the cold
    path answered with a translation and with a fault (so a test can check that it was
    exercised)."""
    caps = CONFIGS[config]
    fast, slow = World(seed, caps), World(seed, caps)
    assert fast.t.tr._cold is not None
    slow.t.tr._cold = None
    slow.t.tr._fast_fill = types.MethodType(_fast_fill_ref, slow.t.tr)  # type: ignore[method-assign]
    served = [0, 0]
    cold = fast.t.tr._cold

    def counting(*a: Any) -> Any:
        r = cold(*a)
        if r is not None:
            served[not r.ok] += 1
        return r

    fast.t.tr._cold = counting
    rng_a, rng_b = random.Random(seed + 1), random.Random(seed + 1)
    for i in range(steps):
        op_a, op_b = _op(rng_a, fast), _op(rng_b, slow)
        ra, rb = _apply(op_a, fast), _apply(op_b, slow)
        assert ra == rb, (i, op_a)
        assert _tr_state(fast.t.tr) == _tr_state(slow.t.tr), (i, op_a)
        assert [_obj(f) for f in fast.t.unit.faults] == [_obj(f) for f in slow.t.unit.faults]
        if i % 25 == 24:
            assert _memory(fast.t.mem) == _memory(slow.t.mem)
    assert _memory(fast.t.mem) == _memory(slow.t.mem)
    return fast, slow, served


# --- the tests -------------------------------------------------------------------------------


@DIFF
@given(seed=st.integers(0, 2**31), config=st.sampled_from(sorted(CONFIGS)))
def test_cold_path_matches_the_general_path(seed: int, config: str) -> None:
    """Random tables, requests, invalidations and table rewrites: same results, faults, cache
    contents and order, counters, fast-dict entries, recorded faults and memory."""
    _run_pair(seed, config, 160)


def test_cold_path_is_exercised_and_agrees() -> None:
    """Fixed seeds: the comparison holds and the cold path really answers requests, with
    translations and with faults (recorded through it)."""
    total = [0, 0]
    for seed in range(6):
        fast, _slow, served = _run_pair(seed, "default", 300)
        total = [a + b for a, b in zip(total, served, strict=True)]
        assert fast.t.unit.faults
    assert total[0] >= 50 and total[1] >= 100, total
    assert fast.t.unit.faults  # and faults were recorded through it or the general path


def test_cold_path_with_tiny_memos(monkeypatch: pytest.MonkeyPatch) -> None:
    """Memos that overflow (and are emptied) all the time change nothing."""
    import vtdsim.hw.translate as T

    monkeypatch.setattr(T, "_MEMO_MAX", 2)
    for seed in (11, 12):
        _run_pair(seed, "default", 200)


def test_cold_path_exists_only_for_unbounded_caches() -> None:
    """Bounded (set-associative, LRU/FIFO/random) caches, disabled caches and legacy-only
    units take the general path for every miss."""
    assert Tables().tr._cold is not None
    assert Tables(Capabilities(paging_structure_cache=CacheGeometry(entries=0))).tr._cold
    for geo in (CacheGeometry(16, 4), CacheGeometry(8, 8, "fifo"), CacheGeometry(entries=0)):
        for field in ("context_cache", "pasid_cache", "iotlb"):
            caps = Capabilities(**{field: geo})  # type: ignore[arg-type]
            assert Tables(caps).tr._cold is None
    assert Tables(Capabilities(paging_structure_cache=CacheGeometry(16, 4))).tr._cold is None
    assert Tables(Capabilities(scalable_mode=False), legacy=True).tr._cold is None


def test_cold_memos_follow_rewritten_entries() -> None:
    """An entry rewritten between two cold requests is decoded anew (the memos compare the
    qwords), and rewriting it back gives the first values again."""
    from hw_tables import sm_sl_setup

    for cold_on in (True, False):
        t, pdir, sl = sm_sl_setup(pasid=1, did=5)
        if not cold_on:
            t.tr._cold = None
        t.sl_map(sl, 0x10000, 0x80_0000)
        pea = t.pasid_entry_addr(pdir, 1)
        base = t.mem.read_qwords(pea, 8)
        seen = []
        for did, sre in ((5, False), (7, True), (5, False)):
            t.pasid_entry(pdir, 1, did=did, sl_root=sl, aw=2, sre=sre)
            t.tr.invalidate_all()
            r = t.unit.translate(0x0010, 0x10000, pasid=1, privileged=True)
            seen.append((_result(r), [_obj(v) for _k, v in t.tr.pasid_cache.items()]))
        assert t.mem.read_qwords(pea, 8) == base
        assert seen[0] == seen[2] and seen[0] != seen[1]
        assert isinstance(seen[1][0], tuple) and seen[1][0][0] == "T"  # SRE=1: served
        assert seen[0][0][0] == "F"  # SRE=0: a supervisor request faults (0x5D)


def _fast_fill_ref(
    self: Translator,
    sid: int,
    pasid: int | None,
    addr: int,
    e: Any,
    ctx: Any,
    pe: Any,
    ttm: int,
    hpa: int,
) -> None:
    """Translator._fast_fill as it was before the precomputed permission table."""
    if not self.iotlb.enabled:
        return
    page_hpa = hpa & ~0xFFF
    if page_hpa <= 0xFEEF_FFFF and page_hpa + 0xFFF >= 0xFEE0_0000:
        return
    perm = e.perm
    sm_rid = ttm == 1 and pasid is None
    ok = _ok_bits_loop(
        perm,
        self.caps.execute_requests,
        ttm,
        sm_rid,
        ctx.rid_priv,
        pe.sre if pe is not None else None,
    )
    if not ok:
        return
    p = e.pasid
    if ttm == 1:
        priv0 = ctx.rid_priv if sm_rid else False
        priv1 = ctx.rid_priv if sm_rid else True
    else:
        priv0 = priv1 = False
    pg0 = _Page(sid, p, e.did, e.shift, perm, e.pgtt, e.ats, priv0)
    pg1 = pg0 if priv1 == priv0 else _Page(sid, p, e.did, e.shift, perm, e.pgtt, e.ats, priv1)
    self._fast[(sid, pasid, addr >> 12)] = [page_hpa, ok, pg0, pg1, ttm, 0]


def _scripted(build: Any, steps: list[Any]) -> list[Any]:
    """``build(t)`` then ``steps`` (each ``f(t) -> result``) on two worlds: the cold path and
    the general one; results and state compared after every step.  Returns the results."""
    worlds = []
    for cold in (True, False):
        t = Tables()
        build(t)
        if not cold:
            t.tr._cold = None
            t.tr._fast_fill = types.MethodType(_fast_fill_ref, t.tr)  # type: ignore[method-assign]
        worlds.append(t)
    out = []
    for i, step in enumerate(steps):
        ra, rb = (_call(step, t) for t in worlds)
        assert ra == rb, i
        a, b = worlds
        assert _tr_state(a.tr) == _tr_state(b.tr), i
        assert [_obj(f) for f in a.unit.faults] == [_obj(f) for f in b.unit.faults], i
        out.append(ra)
    return out


def test_iotlb_refill_under_fast_entries_drops_them() -> None:
    """A write to a page cached read-only re-walks; the refill replaces the IOTLB entry, so
    the fast-dict entries are folded into the counters and dropped (as _walk_fill does)."""

    def build(t: Tables) -> None:
        pdir = t.context_sm(0x0010, dte=True)
        sl = t.page()
        t.pasid_entry(pdir, 1, did=5, sl_root=sl, aw=2)
        t.sl_map(sl, 0x10000, 0x80_0000, w=False)
        t.sl_map(sl, 0x11000, 0x81_0000)
        t.root_sl = sl  # type: ignore[attr-defined]

    def tr(addr: int, write: bool = False) -> Any:
        return lambda t: t.unit.translate(0x0010, addr, pasid=1, write=write)

    def make_writable(t: Any) -> None:
        t.sl_map(t.root_sl, 0x10000, 0x80_0000, w=True)

    steps = [tr(0x11000), tr(0x11008), tr(0x10000), tr(0x10010), tr(0x10000, True)]
    steps += [make_writable, tr(0x10000, True), tr(0x11000), tr(0x10000)]
    steps.append(lambda t: t.tr.statistics())
    res = _scripted(build, steps)
    assert res[4][0] == "F" and res[6][0] == "T"


def test_psc_fills_follow_aliased_tables_and_table_rights() -> None:
    """Two 2 MiB regions whose directory entries name the same page table meet the same
    tables (the PSC keys still differ by region), and a table entry whose R/W changes fills
    other accumulated rights: the paging-structure caches hold what _walk_fill inserts."""
    from vtdsim.spec.entries import SL_TABLE

    def build(t: Tables) -> None:
        pdir = t.context_sm(0x0010)
        sl = t.page()
        t.pasid_entry(pdir, 1, did=5, sl_root=sl, aw=2)
        t.sl_map(sl, 0x10000, 0x80_0000)
        pml4e = t.mem.read64(sl)
        pdpt = pml4e & ~0xFFF
        pd = t.mem.read64(pdpt) & ~0xFFF
        t.mem.write64(pd + 8, t.mem.read64(pd))  # region 1 (0x200000) -> the same page table
        t.tables = (sl, pml4e)  # type: ignore[attr-defined]

    def tr(addr: int, write: bool = False) -> Any:
        def step(t: Tables) -> Any:
            t.tr.invalidate_all()  # a cold walk: the PSC fill is what is compared
            return t.unit.translate(0x0010, addr, pasid=1, write=write)

        return step

    def read_only_pml4e(t: Any) -> None:
        sl, pml4e = t.tables
        t.mem.write64(sl, pml4e & ~SL_TABLE.field("W").mask)

    steps = [tr(0x10000), tr(0x21_0000), tr(0x10008), read_only_pml4e, tr(0x10000)]
    steps += [tr(0x21_0000), tr(0x10000, True), lambda t: [_obj(v) for _k, v in t.tr.psc.items()]]
    res = _scripted(build, steps)
    assert res[0][0] == res[1][0] == "T" and res[6][0] == "F"


def test_interrupt_range_from_a_cached_superpage() -> None:
    """A 2 MiB entry whose upper half was translated first: the lower half lands in the
    interrupt range (0xFEEx_xxxx) from the IOTLB -- fault 0x87, suppressed by FPD or
    recorded."""
    for fpd in (False, True):

        def build(t: Tables, fpd: bool = fpd) -> None:
            pdir = t.context_sm(0x0010, fpd=fpd)
            sl = t.page()
            t.pasid_entry(pdir, 1, did=5, sl_root=sl, aw=2)
            t.sl_map(sl, 0x20_0000, 0xFEE0_0000, size=2 << 20)

        def tr(addr: int) -> Any:
            return lambda t: t.unit.translate(0x0010, addr, pasid=1)

        res = _scripted(build, [tr(0x30_0000), tr(0x20_1000), tr(0x3F_F000), tr(0x20_0000)])
        assert res[0][0] == "T" and res[1][0] == "F" and res[1][1][1][0][2] == 0x20_1000


def test_fast_entries_of_rid_requests_with_rid_priv() -> None:
    """Requests without PASID take RID_PASID and RID_PRIV (VT-d 9.4): first-level supervisor
    pages (U/S=0) and second-level pages, with and without SRE, give the same fast-dict
    entries (ok bits, pages) through the permission table as through the old loop."""
    for us, sre, pgtt in ((False, True, 1), (True, True, 1), (True, False, 1), (True, True, 2)):

        def build(t: Tables, us: bool = us, sre: bool = sre, pgtt: int = pgtt) -> None:
            pdir = t.context_sm(0x0010, rid_pasid=3, rid_priv=True)
            pdir2 = t.context_sm(0x0018, rid_pasid=3, rid_priv=False)
            root = t.page()
            if pgtt == 1:
                t.fl_map(root, 0x10000, 0x80_0000, us=us)
            else:
                t.sl_map(root, 0x10000, 0x80_0000)
            for d in (pdir, pdir2):
                t.pasid_entry(d, 3, pgtt=pgtt, did=4, sl_root=root, fl_root=root, sre=sre)

        steps = []
        for sid in (0x0010, 0x0018):
            for write in (False, True):
                steps.append(lambda t, sid=sid, w=write: t.unit.translate(sid, 0x10000, write=w))
                steps.append(lambda t, sid=sid: t.unit.translate(sid, 0x10008))
                steps.append(lambda t, sid=sid: t.unit.translate(sid, 0x10010, privileged=True))
                steps.append(lambda t, sid=sid: t.unit.translate(sid, 0x10, pasid=3))
        _scripted(build, steps)


def _ok_bits_loop(perm: int, exe_ok: bool, ttm: int, sm_rid: bool, rid_priv: bool, sre: Any) -> int:
    """_fast_fill's permission loop as it was before the precomputed table."""
    ok = 0
    for c in range(8):
        w, x, pr = c & 1, (c >> 1) & 1, (c >> 2) & 1
        if x and not exe_ok:
            continue
        eff = (rid_priv if sm_rid else bool(pr)) if ttm == 1 else False
        if eff and sre is not None and not sre:
            continue
        need = need_mask(bool(w), bool(x), eff)
        if perm & need == need:
            ok |= 1 << c
    return ok


def test_fast_fill_permission_table_matches_the_loop() -> None:
    for exe_ok in (False, True):
        legacy, sm = _ok_table(exe_ok)
        for perm in range(64):
            assert legacy[perm] == _ok_bits_loop(perm, exe_ok, 0, False, False, None)
            for sm_rid in (False, True):
                for rid_priv in (False, True):
                    for sre in (False, True):
                        i = perm | sm_rid << 6 | rid_priv << 7 | sre << 8
                        assert sm[i] == _ok_bits_loop(perm, exe_ok, 1, sm_rid, rid_priv, sre)


# --- the device side: PciDevice.translate against the device-TLB code as it was -------------


def _pci_translate_ref(
    self: PciDevice,
    addr: int,
    *,
    pasid: int | None = None,
    write: bool = False,
    privileged: bool = False,
) -> tuple[int, Any]:
    """PciDevice.translate before the cold-path work (generic properties, _DevTlbEntry())."""
    unit: Any = self.unit
    if unit is None:
        return addr, None
    use_ats = self.ats_cap is not None and self.ats_cap.enabled
    if use_ats:
        need = (PERM_SW if write else PERM_SR) if privileged else (PERM_W if write else PERM_R)
        tlb = self._devtlb
        for shift in (12, 21, 30):
            e = tlb.get((pasid, shift, addr >> shift))
            if e is not None:
                if e.perm & need == need:
                    self._hits += 1
                    return e.hpa | (addr & ((1 << shift) - 1)), None
                break
        self._misses += 1
    r = unit.translate(self.sid, addr, pasid=pasid, write=write, privileged=privileged)
    if not r.ok:
        return 0, r
    if use_ats and r.ats:
        shift = r.page_shift
        self._devtlb[(pasid, shift, addr >> shift)] = _DevTlbEntry(
            pasid, addr & ~((1 << shift) - 1), shift, r.page_address, r.perm
        )
    return r.address, None


def _kernel_state(k: Kernel) -> list[Any]:
    unit = k.platform.units[0]
    out: list[Any] = [dict(unit._regs), unit.statistics(), _tr_state(unit.translator)]
    for dev in k.devices:
        out.append(dev.devtlb_statistics())
        out.append([(key, _obj(e)) for key, e in dev._devtlb.items()])
    return out


def _dma(r: Any) -> Any:
    return (r.ok, r.data, _obj(r.fault), r.transferred)


@DIFF
@given(seed=st.integers(0, 2**31))
def test_driver_dmas_match_the_general_path_and_the_old_device_tlb(seed: int) -> None:
    """Aux domains through the driver: random map/unmap, aux attach/detach, DMAs with and
    without PASID, ATS on and off, fault registers filling up (PFO) and being cleared: the
    same DMA results, fault recording registers, unit and cache statistics and device-TLBs."""
    from vtdsim.spec.registers import FRCD_BASE, FSTS

    ks = []
    for fast in (True, False):
        k = Kernel.for_testing(ndev=2)
        for dev in k.devices:
            k.dev_enable_feature(dev, Feature.AUX)
        tr = k.platform.units[0].translator
        if not fast:
            assert tr._cold is not None
            tr._cold = None
            for dev in k.devices:
                dev.translate = types.MethodType(_pci_translate_ref, dev)  # type: ignore[method-assign]
        ks.append(k)
    doms = [[k.domain_alloc("unmanaged") for _ in range(3)] for k in ks]
    for k, ds in zip(ks, doms, strict=True):  # a start where most DMAs can succeed
        setup = random.Random(seed)
        for d in ds:
            for page in range(8):
                prot = setup.choice((IOMMU_READ | IOMMU_WRITE, IOMMU_READ, IOMMU_WRITE))
                k.map(d, page << 12, 0x40_0000 + (page << 12), 0x1000, prot)
        k.aux_attach_device(ds[0], k.devices[0])
        k.aux_attach_device(ds[1], k.devices[1])
        k.aux_attach_device(ds[2], k.devices[0])
    for step in range(120):
        res = []
        for k, ds in zip(ks, doms, strict=True):
            rng = random.Random(seed * 1000 + step)  # both kernels see the same draws
            r = rng.random()
            di, vi = rng.randrange(3), rng.randrange(2)
            iova = rng.randrange(8) << 12
            d, dev = ds[di], k.devices[vi]
            unit = k.platform.units[0]
            if r < 0.15:
                pa = 0x40_0000 + (rng.randrange(4) << 12)
                prot = rng.choice((IOMMU_READ | IOMMU_WRITE, IOMMU_READ, IOMMU_WRITE))
                res.append(_call(k.map, d, iova, pa, 0x1000, prot))
            elif r < 0.25:
                res.append(_call(k.unmap, d, iova, 0x1000))
            elif r < 0.35:
                res.append(_call(k.aux_attach_device, d, dev))
            elif r < 0.42:
                res.append(_call(k.aux_detach_device, d, dev))
            elif r < 0.47:
                if dev.ats_cap is not None:
                    dev.ats_cap.enabled = not dev.ats_cap.enabled
                res.append(None)
            elif r < 0.52:
                # clear the fault records and status (W1C), as a fault handler would
                for i in range(unit.caps.fault_records):
                    unit.write32(FRCD_BASE + 16 * i + 12, 1 << 31)
                unit.write32(FSTS, 0x7F)
                res.append(unit.read32(FSTS))
            else:
                try:
                    p: int | None = k.aux_get_pasid(d, dev)
                except VtdsimError:
                    p = rng.choice((None, 1, 5))
                if rng.random() < 0.15:
                    p = rng.choice((None, 1, 2, 9))
                if rng.random() < 0.3:
                    res.append(_dma(dev.dma_write(iova + 8, b"\x5a" * 16, pasid=p)))
                else:
                    res.append(_dma(dev.dma_read(iova, rng.choice((8, 0x1800)), pasid=p)))
        assert res[0] == res[1], (step, r)
        assert _kernel_state(ks[0]) == _kernel_state(ks[1]), step


# --- the replay memo of requests to a unit whose caches are all empty --------------------------


def _replay_op(rng: random.Random, w: World, requests: list[tuple[Any, ...]]) -> tuple[Any, ...]:
    """Mostly a request from a small fixed set with every cache emptied first (so that the
    replay memo is consulted, and hit), sometimes with warm caches, an entry rewritten
    (often back to what it was) or an invalidation."""
    r = rng.random()
    if r < 0.7:
        sid, addr, pasid, write, execute, priv = rng.choice(requests)
        return ("tr", sid, addr, pasid, write, execute, priv, rng.random() < 0.85)
    if r < 0.9:
        a = rng.choice(w.pokes[rng.choice(sorted(k for k, v in w.pokes.items() if v))])
        how = rng.random()
        if how < 0.6:
            v = w.original[a]
        elif how < 0.7:
            v = 0
        else:
            v = w.original[a] ^ (1 << rng.choice((0, 1, 2, 7, 9, 11, 46, 51, 52, 62, 63)))
        return ("poke", a, v)
    if r < 0.95:
        return ("unit", rng.choice(("ttm0", "ttm2", "tes-off")), _op(rng, w))
    kind = rng.choice(_INVALIDATIONS)
    return ("inv", kind, rng.choice((2, 3, 4)), rng.choice(SIDS), rng.choice(PASIDS), rng)


def _run_replay_triple(seed: int, config: str, steps: int) -> list[int]:
    """Three identical worlds: the cold path with its replay memo, the cold path without it
    (``_build_cold(replay=False)``) and the general path; the same operations give the same
    results, cache contents and order, counters, fast-dict entries, recorded faults
    and memory in all three.  Returns [requests the memo replayed, requests
    recorded]."""
    import vtdsim.hw.translate as T

    caps = CONFIGS[config]
    ws = [World(seed, caps) for _ in range(3)]
    assert ws[0].t.tr._cold is not None
    ws[1].t.tr._cold = ws[1].t.tr._build_cold(replay=False)
    ws[2].t.tr._cold = None
    pick = random.Random(seed ^ 0x5A5A)
    requests = [
        (
            pick.choice(SIDS),
            pick.choice(IOVAS) + pick.choice((0, 0x10, 0xFF8)),
            pick.choice((None, *PASIDS)),
            pick.random() < 0.3,
            False,
            pick.random() < 0.2,
        )
        for _ in range(6)
    ]
    logs = [0]
    real_log = T._ReadLog

    def counting_log(*a: Any) -> Any:
        logs[0] += 1
        return real_log(*a)

    replays = getattr(ws[0].t.tr._cold, "replays")  # noqa: B009
    T._ReadLog = counting_log  # type: ignore[misc]
    try:
        rngs = [random.Random(seed + 7) for _ in ws]
        for i in range(steps):
            ops = [_replay_op(rng, w, requests) for rng, w in zip(rngs, ws, strict=True)]
            res = [_apply(op, w) for op, w in zip(ops, ws, strict=True)]
            assert res[0] == res[1] == res[2], (i, ops[0])
            states = [_tr_state(w.t.tr) for w in ws]
            assert states[0] == states[1] == states[2], (i, ops[0])
            faults = [[_obj(f) for f in w.t.unit.faults] for w in ws]
            assert faults[0] == faults[1] == faults[2], i
        mems = [_memory(w.t.mem) for w in ws]
        assert mems[0] == mems[1] == mems[2]
    finally:
        T._ReadLog = real_log  # type: ignore[misc]
    return [replays[0], logs[0]]


@DIFF
@given(seed=st.integers(0, 2**31), config=st.sampled_from(sorted(CONFIGS)))
def test_replay_memo_matches_the_cold_path_and_the_general_path(seed: int, config: str) -> None:
    """Repeated requests to a unit with empty caches, with table entries rewritten between
    them: replayed, recorded and general answers, side effects and fault records agree."""
    _run_replay_triple(seed, config, 150)


def test_replay_memo_is_exercised() -> None:
    """Fixed seeds: the memo really replays requests (no read log) and records others."""
    total = [0, 0]
    for seed in range(5):
        got = _run_replay_triple(seed, "default", 250)
        total = [a + b for a, b in zip(total, got, strict=True)]
    assert total[0] >= 100 and total[1] >= 50, total


def test_replay_memo_with_tiny_memos(monkeypatch: pytest.MonkeyPatch) -> None:
    """A replay memo that overflows (and is emptied) all the time changes nothing."""
    import vtdsim.hw.translate as T

    monkeypatch.setattr(T, "_MEMO_MAX", 2)
    for seed in (21, 22):
        _run_replay_triple(seed, "default", 200)


def test_replay_memo_follows_rewritten_entries(monkeypatch: pytest.MonkeyPatch) -> None:
    """One request replayed from an empty unit, then each entry it read rewritten in turn
    (context, PASID directory and table entry, every second-level level, the leaf): the
    next request reads the entry anew -- and reports what the general path reports."""
    import vtdsim.hw.translate as T
    from hw_tables import sm_sl_setup

    monkeypatch.setattr(T, "_RECORDS_PER_REQUEST", 1000)  # re-recorded after every rewrite

    seen: list[list[Any]] = []
    for replay in (True, False):
        t, pdir, sl = sm_sl_setup(pasid=1, did=5)
        if not replay:
            t.tr._cold = None
        t.sl_map(sl, 0x10000, 0x80_0000)
        pea = t.pasid_entry_addr(pdir, 1)
        # every qword a walk of 0x10000 reads, in walk order
        addrs = [t.ctx_sm_addr(0x0010), t.ctx_sm_addr(0x0010) + 8, pdir, pea, pea + 8, pea + 16]
        table = sl
        for level in (4, 3, 2, 1):
            ea = table + 8 * ((0x10000 >> (12 + 9 * (level - 1))) & 511)
            addrs.append(ea)
            table = t.mem.read64(ea) & 0x000F_FFFF_FFFF_F000
        out = []
        for a in addrs:
            old = t.mem.read64(a)
            for value in (old, old ^ 1, old ^ 2, old, 0, old):
                t.mem.write64(a, value)
                t.tr.invalidate_all()
                r = t.unit.translate(0x0010, 0x10000, pasid=1, write=True)
                out.append((a, value, _result(r), _tr_state(t.tr)))
        out.append([_obj(f) for f in t.unit.faults])
        seen.append(out)
        if replay:
            assert getattr(t.tr._cold, "replays")[0] >= 8  # noqa: B009
    assert seen[0] == seen[1]


def test_replay_memo_records_a_changing_request_a_few_times_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A request to an empty unit whose leaf entry changes every time is recorded
    ``_RECORDS_PER_REQUEST`` times and then walked as before (same answers as the general
    path); one whose entries do not change is recorded once and then replayed."""
    import vtdsim.hw.translate as T
    from hw_tables import sm_sl_setup

    logs = [0]
    real_log = T._ReadLog

    def counting_log(*a: Any) -> Any:
        logs[0] += 1
        return real_log(*a)

    monkeypatch.setattr(T, "_ReadLog", counting_log)
    seen: list[list[Any]] = []
    for replay in (True, False):
        logs[0] = 0
        t, _pdir, sl = sm_sl_setup(pasid=1, did=5)
        if not replay:
            t.tr._cold = None
        leaf = t.sl_map(sl, 0x10000, 0x80_0000)
        t.sl_map(sl, 0x20000, 0x90_0000)
        out = []
        for k in range(12):
            t.mem.write64(leaf, (0x80_0000 + (k << 12)) | 3)
            for addr in (0x10000, 0x20000):
                t.tr.invalidate_all()
                r = t.unit.translate(0x0010, addr, pasid=1)
                out.append((_result(r), _tr_state(t.tr)))
        seen.append(out)
        if replay:
            assert logs[0] == T._RECORDS_PER_REQUEST + 1
            assert getattr(t.tr._cold, "replays")[0] == 11  # noqa: B009
    assert seen[0] == seen[1]
