"""Hostile-input fuzzing of the hardware layer (hypothesis).

Hardware-level misuse must have the hardware's effect (a fault record, an error status, nothing),
never a Python traceback:

* random MMIO register traffic only ever raises ArgumentError, and only for Python-level misuse
  (an offset that is not a register of that width); the unit stays self-consistent;
* translation through memory full of garbage, pointer loops and pointers beyond memory, in
  legacy and scalable mode, with every PGTT, cached and uncached, returns a Translation or a
  TranslationFault -- and the cached translator agrees with the uncached reference walk;
* a random invalidation queue is processed or stops with FSTS.IQE set.
"""

from __future__ import annotations

import random
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hw_tables import MEM, Tables
from vtdsim.errors import ArgumentError
from vtdsim.hw.caps import CacheGeometry, Capabilities
from vtdsim.hw.iommu import RemappingUnit
from vtdsim.hw.memory import PhysicalMemory
from vtdsim.hw.translate import Translation, TranslationFault
from vtdsim.spec import registers as R

MEM_SIZE = 64 << 20
FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

_TES, _QIES, _RTPS = 1 << 31, 1 << 26, 1 << 30
_PPF, _IQE = 1 << 1, 1 << 4
_FRCD_F = 1 << 63


def _unit(caps: Capabilities | None = None) -> RemappingUnit:
    return RemappingUnit(PhysicalMemory(MEM_SIZE), caps or Capabilities())


# --- (a) registers -----------------------------------------------------------------------------

_KNOWN = sorted({*R.register_table(Capabilities()), R.IQT + 4, R.RTADDR + 4})
_offsets = st.one_of(
    st.sampled_from(_KNOWN),
    st.integers(0, 0x2FF),
    st.integers(-8, 0x1100),
)
_values = st.one_of(
    st.integers(0, (1 << 32) - 1),
    st.integers(0, (1 << 64) - 1),
    st.sampled_from([0, 1 << 31, 1 << 30, 1 << 26, 0xFFFF_FFFF, (1 << 64) - 1, 1 << 63]),
)
_op = st.tuples(st.sampled_from(["w32", "w64", "r32", "r64"]), _offsets, _values)


def _check_consistent(u: RemappingUnit) -> None:
    regs = {off: u.register_value(off) for off in R.register_table(u.caps)}
    for off, reg in R.register_table(u.caps).items():
        assert 0 <= regs[off] < 1 << reg.width, reg.name
    # status bits mirror the state they report
    gsts = regs[R.GSTS]
    assert bool(gsts & _TES) == u.translation_enabled
    assert bool(gsts & _QIES) == u.qi_enabled
    if not u.qi_enabled:
        assert regs[R.IQH] == 0
    # read-only registers never change
    fresh = R.register_table(u.caps)
    for off in (R.VER, R.CAP, R.ECAP):
        assert regs[off] == fresh[off].reset
    # FSTS.PPF is the OR of every record's F (QEMU vtd_update_fsts_ppf)
    pending = any(regs[R.fault_record_offset(i) + 8] & _FRCD_F for i in range(u.caps.fault_records))
    assert bool(regs[R.FSTS] & _PPF) == pending
    assert u.ttm in (0, 1, 2, 3)


@FUZZ
@given(ops=st.lists(_op, max_size=40), seed=st.integers(0, 2**32 - 1))
def test_random_register_traffic_never_raises(ops: list[tuple[str, Any, int]], seed: int) -> None:
    u = _unit()
    mem = u.memory
    rng = random.Random(seed)
    # a little garbage where software would put tables and the queue
    for page in (0, 0x1000, 0x10_0000):
        for i in range(0, 4096, 8):
            mem.write64(page + i, rng.getrandbits(64) if rng.random() < 0.3 else 0)
    for kind, off, value in ops:
        width = 32 if kind.endswith("32") else 64
        valid = u._wr32 if width == 32 else u._wr64  # the unit's decode of its offsets
        try:
            if kind == "w32":
                u.write32(off, value & 0xFFFF_FFFF)
            elif kind == "w64":
                u.write64(off, value)
            elif kind == "r32":
                assert 0 <= u.read32(off) < 1 << 32
            else:
                assert 0 <= u.read64(off) < 1 << 64
        except ArgumentError:
            assert off not in valid, (kind, hex(off))
        else:
            assert off in valid
        _check_consistent(u)
        # DMA keeps working whatever software did to the registers
        r = u.translate(rng.randrange(1 << 16), rng.getrandbits(64), pasid=None)
        assert isinstance(r, Translation | TranslationFault)


def test_register_misuse_raises_argument_error_without_effect() -> None:
    u = _unit()
    before = {off: u.register_value(off) for off in R.register_table(u.caps)}
    for call in (
        lambda: u.write32(R.GCMD, -1),
        lambda: u.write32(R.GCMD, 1 << 32),
        lambda: u.write64(R.GCMD, 0),  # a 32-bit register
        lambda: u.write32(R.GCMD + 1, 0),  # unaligned
        lambda: u.write64("0x18", 0),  # type: ignore[arg-type]
        lambda: u.write32(R.GCMD, 1.0),  # type: ignore[arg-type]
        lambda: u.read64(0x1000),
    ):
        try:
            call()
        except ArgumentError:
            pass
        else:  # pragma: no cover - the assertion documents the failure
            raise AssertionError("expected ArgumentError")
    assert before == {off: u.register_value(off) for off in R.register_table(u.caps)}


# --- (b) translation through garbage ----------------------------------------------------------

_POOL = [0x10 + i for i in range(8)]  # table pages (pfns): root is the first
_BEYOND_PFNS = [MEM_SIZE >> 12, (MEM_SIZE >> 12) + 5, (1 << 34) - 1, (1 << 40) + 3]


#: low-12-bit patterns that are valid for some entry type (root/context/PASID/paging entries)
_LOW = [
    0x001, 0x003, 0x007, 0x009, 0x00B, 0x089, 0x049, 0x0C9, 0x109, 0x085, 0x08D, 0x083,
    0x067, 0x0E7, 0x027, 0x803, 0x103, 0x203, 0x001, 0x000,
]  # fmt: skip


def _garbage_word(rng: random.Random, pos: int) -> int:
    """A qword that looks like a table entry often enough to get deep into a walk.  ``pos`` is
    the qword index in its 64-byte line: words 2..7 are often zero, as in context and PASID
    entries, so walks get past their reserved-field checks."""
    roll = rng.random()
    if (pos >= 3 and roll < 0.75) or (pos == 2 and roll < 0.5) or roll < 0.1:
        return 0
    if pos == 1 and roll < 0.4:
        return rng.randrange(200)  # a context entry's RID_PASID, a PASID entry's DID
    if rng.random() < 0.08:
        return rng.getrandbits(64)
    pfn = rng.choice(_POOL) if rng.random() < 0.9 else rng.choice(_BEYOND_PFNS)
    low = rng.choice(_LOW) if rng.random() < 0.85 else rng.getrandbits(12)
    high = 0
    if rng.random() < 0.05:
        high = rng.getrandbits(12) << 52
    return (high | (pfn << 12) | low) & ((1 << 64) - 1)


def _fill(mem: PhysicalMemory, seed: int) -> None:
    rng = random.Random(seed)
    for pfn in _POOL:
        base = pfn << 12
        for i in range(512):
            mem.write64(base + 8 * i, _garbage_word(rng, i & 7))
    root = _POOL[0] << 12
    for i in range(4):  # buses 0 and 1: mostly well-formed root entries
        if rng.random() < 0.8:
            mem.write64(root + 8 * i, rng.choice(_POOL[1:]) << 12 | 1)


_CAPS = [
    Capabilities(),
    Capabilities(sagaw=frozenset({39, 48, 57}), haw=52, mgaw=57, execute_requests=True),
    Capabilities(snoop_control=False, sl_large_pages=frozenset(), fl_1g_pages=False),
    Capabilities(
        context_cache=CacheGeometry(entries=0),
        pasid_cache=CacheGeometry(entries=0),
        iotlb=CacheGeometry(entries=0),
        paging_structure_cache=CacheGeometry(entries=0),
    ),
    Capabilities(iotlb=CacheGeometry(entries=4, ways=2, replacement="lru")),
]

_request = st.fixed_dictionaries(
    {
        "sid": st.one_of(st.integers(0, 0x1FF), st.integers(0, 0xFFFF)),
        "addr": st.one_of(
            st.integers(0, (1 << 22) - 1),
            st.integers(0, (1 << 64) - 1),
            st.sampled_from([0xFEE0_0000, 1 << 47, (1 << 64) - 4096]),
        ),
        "pasid": st.one_of(st.none(), st.integers(0, 200), st.integers(0, (1 << 20) - 1)),
        "write": st.booleans(),
        "execute": st.booleans(),
        "privileged": st.booleans(),
    }
)


def _same(a: Translation | TranslationFault, b: Translation | TranslationFault) -> bool:
    if isinstance(a, TranslationFault) or isinstance(b, TranslationFault):
        return (
            isinstance(a, TranslationFault)
            and isinstance(b, TranslationFault)
            and (a.reason, a.fpd) == (b.reason, b.fpd)
        )
    return (a.address, a.page_size, a.perm, a.did, a.pasid) == (
        b.address,
        b.page_size,
        b.perm,
        b.did,
        b.pasid,
    )


@FUZZ
@given(
    seed=st.integers(0, 2**32 - 1),
    caps_i=st.integers(0, len(_CAPS) - 1),
    ttm=st.sampled_from([0, 1, 1, 1, 2, 3]),
    requests=st.lists(_request, min_size=1, max_size=6),
)
def test_translation_through_garbage_never_raises(
    seed: int, caps_i: int, ttm: int, requests: list[dict[str, Any]]
) -> None:
    u = _unit(_CAPS[caps_i])
    mem = u.memory
    _fill(mem, seed)
    u.write64(R.RTADDR, (_POOL[0] << 12) | ttm << 10)
    u.write32(R.GCMD, _RTPS)
    u.write32(R.GCMD, _TES)
    tr = u.translator
    for req in requests:
        snap = mem.snapshot()
        ref = tr.walk(
            req["sid"],
            req["addr"],
            pasid=req["pasid"],
            write=req["write"],
            execute=req["execute"],
            privileged=req["privileged"],
        )
        mem.restore(snap)
        r = u.translate(
            req["sid"],
            req["addr"],
            pasid=req["pasid"],
            write=req["write"],
            execute=req["execute"],
            privileged=req["privileged"],
        )
        assert isinstance(r, Translation | TranslationFault)
        assert isinstance(ref, Translation | TranslationFault)
        # the caches were empty: the cached translator answers as the reference walk
        assert _same(r, ref), (req, r, ref)
        u.translator.invalidate_all()


@FUZZ
@given(seed=st.integers(0, 2**32 - 1), pgtt=st.integers(0, 7), aw=st.integers(0, 7))
def test_every_pgtt_through_self_referencing_tables(seed: int, pgtt: int, aw: int) -> None:
    """A PASID entry of every PGTT/AW whose paging tables point back at themselves."""
    u = _unit(Capabilities(sagaw=frozenset({39, 48, 57}), haw=52, mgaw=57))
    mem = u.memory
    rng = random.Random(seed)
    root, ctx, pdir, ptab, loop = 0x10_000, 0x11_000, 0x12_000, 0x13_000, 0x14_000
    mem.write64(root, ctx | 1)
    mem.write64(ctx, pdir | 1 << 3 | 1)  # P, PASIDE, PDTS 0
    mem.write64(pdir, ptab | 1)
    mem.write64(ptab, loop | pgtt << 6 | aw << 2 | 1)
    mem.write64(ptab + 16, loop | rng.choice([0, 1, 2, 3]) << 2 | rng.getrandbits(1))
    for i in range(512):  # every entry points to its own table, with random flags
        mem.write64(loop + 8 * i, loop | rng.choice([0x3, 0x7, 0x27, 0x67, 0x83, 0x87, 0x1]))
    u.write64(R.RTADDR, root | 1 << 10)
    u.write32(R.GCMD, _RTPS)
    u.write32(R.GCMD, _TES)
    for _ in range(4):
        r = u.translate(
            0,
            rng.getrandbits(48),
            pasid=rng.choice([None, 0, 1]),
            write=rng.random() < 0.5,
            privileged=rng.random() < 0.3,
        )
        assert isinstance(r, Translation | TranslationFault)


def _valid_tables(caps: Capabilities, legacy: bool) -> Tables:
    """Well-formed tables for SID 0x10: legacy SL, or PASIDs 0..4 with PGTT SL, FL, nested,
    pass-through, and a 5-level SL; some pages mapped in each."""
    t = Tables(caps, legacy=legacy)
    if legacy:
        sl = t.page()
        t.context_legacy(_SID, slptr=sl, aw=2)
        for i in range(4):
            t.sl_map(sl, 0x1000 * i, 0x80_0000 + 0x1000 * i)
        t.sl_map(sl, 0x20_0000, 0x40_0000, size=2 << 20)
        return t
    pdir = t.context_sm(_SID, pdts=0, rid_pasid=0)
    sl = t.page()
    t.pasid_entry(pdir, 0, pgtt=2, sl_root=sl, aw=2, sre=True)
    for i in range(4):
        t.sl_map(sl, 0x1000 * i, 0x80_0000 + 0x1000 * i)
    t.sl_map(sl, 0x20_0000, 0x40_0000, size=2 << 20)
    fl = t.page()
    t.pasid_entry(pdir, 1, pgtt=1, fl_root=fl, sre=True)
    for i in range(4):
        t.fl_map(fl, 0x1000 * i, 0x90_0000 + 0x1000 * i, us=i != 3, rw=i != 2)
    # nested: first-level tables in guest-physical space mapped 1:1 by the SL tables above
    nfl = t.page()
    t.sl_map(sl, nfl, nfl)
    t.pasid_entry(pdir, 2, pgtt=3, fl_root=nfl, sl_root=sl, aw=2)
    t.fl_map(nfl, 0x1000, 0x2000, alloc=lambda: (lambda p: (t.sl_map(sl, p, p), p)[1])(t.page()))
    t.pasid_entry(pdir, 3, pgtt=4, sre=True)
    sl5 = t.page()
    t.pasid_entry(pdir, 4, pgtt=2, sl_root=sl5, aw=3, ssade=True)
    t.sl_map(sl5, 0x1000, 0x5000, levels=5)
    return t


_SID = 0x0010
_MUT_CAPS = [
    Capabilities(sagaw=frozenset({39, 48, 57}), haw=46, mgaw=57),
    Capabilities(
        sagaw=frozenset({39, 48, 57}),
        mgaw=57,
        context_cache=CacheGeometry(entries=0),
        pasid_cache=CacheGeometry(entries=0),
        iotlb=CacheGeometry(entries=0),
        paging_structure_cache=CacheGeometry(entries=0),
    ),
    Capabilities(sagaw=frozenset({39, 48, 57}), mgaw=57, snoop_control=False, sl_ad=False),
]


def _mutate(t: Tables, rng: random.Random) -> None:
    """Corrupt one table qword: flip bits, garbage, a self-loop, or a pointer beyond memory."""
    addr = rng.randrange(0x10_0000, t.next, 8)
    old = t.mem.read64(addr)
    kind = rng.randrange(5)
    if kind == 0:
        new = old ^ (1 << rng.randrange(64))
    elif kind == 1:
        new = rng.getrandbits(64)
    elif kind == 2:
        new = (addr & ~0xFFF) | (old & 0xFFF)  # points at its own table
    elif kind == 3:
        new = (rng.choice([MEM, 1 << 40, 1 << 45]) | (old & 0xFFF)) | (old & (0xFFF << 52))
    else:
        new = old & ~(1 << rng.randrange(12))
    t.mem.write64(addr, new & ((1 << 64) - 1))


@FUZZ
@given(
    seed=st.integers(0, 2**32 - 1),
    caps_i=st.integers(0, len(_MUT_CAPS) - 1),
    legacy=st.booleans(),
    mutations=st.integers(0, 6),
)
def test_translation_through_corrupted_tables(
    seed: int, caps_i: int, legacy: bool, mutations: int
) -> None:
    rng = random.Random(seed)
    t = _valid_tables(_MUT_CAPS[caps_i], legacy)
    for _ in range(mutations):
        _mutate(t, rng)
    for _ in range(8):
        addr = rng.choice([0, 0x1000, 0x2000, 0x3000, 0x20_0000 + 0x1234, rng.getrandbits(48)])
        pasid = None if legacy or rng.random() < 0.3 else rng.randrange(6)
        kw: dict[str, Any] = {
            "pasid": pasid,
            "write": rng.random() < 0.4,
            "execute": rng.random() < 0.1,
            "privileged": rng.random() < 0.3,
        }
        snap = t.mem.snapshot()
        ref = t.tr.walk(_SID, addr, **kw)
        t.mem.restore(snap)
        r = t.unit.translate(_SID, addr, **kw)
        assert _same(r, ref), (addr, kw, r, ref)
        t.tr.invalidate_all()


# --- (c) invalidation queue --------------------------------------------------------------------

_QBASE = 0x20_000
_STATUS = 0x30_000


def _desc(rng: random.Random, wide: bool) -> list[int]:
    t = rng.choice([1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 10, 15, 0x21])
    lo = (t & 0xF) | ((t >> 4) << 9)
    lo |= rng.getrandbits(2) << 4  # G
    if rng.random() < 0.3:
        lo |= rng.getrandbits(64)
    else:
        lo |= rng.getrandbits(16) << 16 | rng.getrandbits(20) << 32
    hi = (
        rng.getrandbits(64)
        if rng.random() < 0.3
        else (rng.getrandbits(40) << 12) | rng.getrandbits(7)
    )
    if t == 5 and rng.random() < 0.7:
        lo = 5 | 1 << 5 | rng.getrandbits(32) << 32 | (rng.getrandbits(1) << 4)
        hi = rng.choice([_STATUS, _STATUS + 4, MEM_SIZE, MEM_SIZE - 4, (1 << 64) - 4])
    words = [lo & ((1 << 64) - 1), hi]
    if wide:
        words += [0, 0] if rng.random() < 0.9 else [rng.getrandbits(64), 0]
    return words


@FUZZ
@given(
    seed=st.integers(0, 2**32 - 1),
    dw=st.booleans(),
    ttm=st.sampled_from([0, 1, 2]),
    tails=st.lists(st.integers(0, (1 << 19) - 1), min_size=1, max_size=5),
)
def test_random_invalidation_queue(seed: int, dw: bool, ttm: int, tails: list[int]) -> None:
    u = _unit()
    mem = u.memory
    rng = random.Random(seed)
    for i in range(256):
        words = _desc(rng, dw)
        mem.write_qwords(_QBASE + i * 8 * len(words), words)
    u.write64(R.RTADDR, ttm << 10)
    u.write32(R.GCMD, _RTPS)
    u.write64(R.IQA, _QBASE | dw << 11 | rng.choice([0, 1]))
    u.write32(R.GCMD, _QIES)
    shift = 5 if dw else 4
    for tail in tails:
        if rng.random() < 0.7:
            tail = (tail % 128) << shift
        u.write64(R.IQT, tail)
        fsts = u.read32(R.FSTS)
        head = u.read64(R.IQH)
        if fsts & _IQE:
            assert u.read64(R.IQER) & 0xF in R.IQEI
            u.write32(R.FSTS, _IQE)  # software clears IQE: the queue resumes
        else:
            assert head == u.read64(R.IQT) & 0x7_FFF0, (hex(head), hex(tail))
        _check_consistent(u)


# --- (d) DMA engine through corrupted tables ------------------------------------------------


@FUZZ
@given(seed=st.integers(0, 2**32 - 1), mutations=st.integers(0, 6), ats=st.booleans())
def test_dma_through_corrupted_tables(seed: int, mutations: int, ats: bool) -> None:
    """A device's DMA (any length, across pages, with and without PASID, devTLB on or off)
    returns a DmaResult; the only exception is the typed MemoryAccessError when a valid
    translation names host memory that does not exist."""
    from vtdsim.errors import MemoryAccessError
    from vtdsim.hw.pci import DmaResult, PciDevice

    rng = random.Random(seed)
    t = _valid_tables(_MUT_CAPS[0], legacy=False)
    cea = t.ctx_sm_addr(_SID)  # set the context entry's DTE so translations are ATS-cacheable
    t.mem.write64(cea, t.mem.read64(cea) | (1 << 2))
    for _ in range(mutations):
        _mutate(t, rng)
    dev = PciDevice(_SID, t.mem, t.unit, pasid_bits=8, ats=ats)
    for _ in range(6):
        addr = rng.choice([0, 0xF00, 0x1FF8, rng.getrandbits(22), rng.getrandbits(48)])
        length = rng.choice([0, 1, 8, 64, 4096, 9000])
        pasid = rng.choice([None, 0, 1, 2, 3, 4, 5])
        try:
            if rng.random() < 0.5:
                r = dev.dma_read(addr, length, pasid=pasid, privileged=rng.random() < 0.3)
            else:
                r = dev.dma_write(addr, bytes(length), pasid=pasid)
        except MemoryAccessError:
            continue
        assert isinstance(r, DmaResult)
        assert r.ok == (r.fault is None)
        assert 0 <= r.transferred <= length
        if rng.random() < 0.3:
            dev.invalidate_devtlb(
                rng.choice([None, pasid]), rng.getrandbits(64), rng.random() < 0.5
            )
