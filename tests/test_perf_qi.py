"""The queued-invalidation hot path's shortcuts produce exactly what the code they replace does.

The teardown of an aux attachment (``intel_pasid_tear_down_entry``) makes three one-descriptor
submissions -- PASID cache, domain-selective IOTLB, device TLB -- into caches that usually hold
nothing for that DID/PASID.  Each shortcut on that path is run here against the pre-shortcut
code, kept below as a reference, on random inputs, valid and invalid: return values, typed
errors (type and message), cache contents and order, counters, the fast-path table, the calls
a unit makes to its translator and devices (argument values and types), ring and registers.
"""

from __future__ import annotations

import dataclasses
import itertools
import types
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qi_state import unit_state
from vtdsim.driver.kernel import Kernel
from vtdsim.hw import iommu as H
from vtdsim.hw.caches import IotlbEntry, PscEntry
from vtdsim.hw.caps import CacheGeometry, Capabilities
from vtdsim.hw.iommu import RemappingUnit
from vtdsim.hw.memory import PhysicalMemory
from vtdsim.hw.pci import _DevTlbEntry
from vtdsim.hw.translate import Translator
from vtdsim.spec import descriptors as SD


def _outcome(f: Callable[..., Any], *args: Any, **kw: Any) -> object:
    try:
        return ("ok", f(*args, **kw))
    except Exception as e:  # the typed error is what is compared
        return (type(e).__name__, str(e))


# -- Translator invalidations: the early exits on empty caches ---------------------------------


def _ref_invalidate_pasid_cache(
    self: Translator, granularity: str, did: int | None = None, pasid: int | None = None
) -> int:
    """Translator.invalidate_pasid_cache before its empty-cache exit."""
    self._drop_fast()
    return self.pasid_cache.invalidate(granularity, did=did, pasid=pasid)


def _ref_invalidate_iotlb(
    self: Translator,
    granularity: str,
    did: int | None = None,
    addr: int = 0,
    am: int = 0,
    ih: bool = False,
) -> int:
    """Translator.invalidate_iotlb before its empty-cache exit."""
    if granularity == "page":
        return self.invalidate_iotlb_page(did, addr, am, ih)
    self._drop_fast()
    n = self.iotlb.invalidate(granularity, did=did, addr=addr, am=am)
    self.psc.invalidate(granularity, did=did, addr=addr, am=am)
    return n


def _ref_invalidate_piotlb(
    self: Translator,
    granularity: str,
    did: int,
    pasid: int,
    addr: int = 0,
    am: int = 0,
    ih: bool = False,
) -> int:
    """Translator.invalidate_piotlb before its empty-cache exit."""
    self._drop_fast()
    n = self.iotlb.invalidate_pasid(granularity, did, pasid, addr=addr, am=am)
    if not (granularity == "page" and ih):
        self.psc.invalidate_pasid(granularity, did, pasid, addr=addr, am=am)
    return n


_GEOMETRIES = [
    CacheGeometry(),  # unbounded
    CacheGeometry(entries=0),  # disabled
    CacheGeometry(entries=4, ways=2),  # bounded, LRU
]


def _translator(pc: int, iotlb: int, psc: int) -> Translator:
    caps = Capabilities(
        pasid_cache=_GEOMETRIES[pc],
        iotlb=_GEOMETRIES[iotlb],
        paging_structure_cache=_GEOMETRIES[psc],
    )
    return Translator(RemappingUnit(PhysicalMemory(1 << 24), caps))


def _cache_state(c: Any) -> tuple[object, ...]:
    return (
        [(k, repr(v)) for k, v in c.items()],  # contents in set/replacement order
        c.hits,
        c.misses,
        c.evictions,
        c.invalidations,
    )


def _tr_state(tr: Translator) -> tuple[object, ...]:
    return (
        _cache_state(tr.pasid_cache),
        _cache_state(tr.iotlb),
        _cache_state(tr.psc),
        _cache_state(tr.context_cache),
        {k: list(v) for k, v in tr._fast.items()},
    )


_small = st.integers(0, 3)
_opt = st.sampled_from([None, 0, 1, 2, 3])
#: (kind, granularity): the teardown's flushes most often, every other form too
_KINDS = [
    *[("pc", "pasid")] * 3,
    ("pc", "domain"),
    ("pc", "global"),
    ("pc", "device"),
    *[("iotlb", "domain")] * 3,
    ("iotlb", "global"),
    ("iotlb", "page"),
    ("iotlb", "bogus"),
    *[("piotlb", "pasid")] * 3,
    ("piotlb", "page"),
    ("piotlb", "domain"),
]
_op = st.tuples(
    st.sampled_from(_KINDS),
    _opt,  # did
    _opt,  # pasid
    st.sampled_from([0, 0x1000, 0x20_0000, -1]),  # addr
    st.sampled_from([0, 1, 9]),  # am
    st.booleans(),  # ih
)
_fill = st.one_of(
    st.just([]),  # often nothing cached: the exits
    st.lists(
        st.tuples(
            st.sampled_from(["pc", "iotlb", "psc", "fast"]),
            _small,
            _opt,
            st.sampled_from([0, 1, 2, 3, 4]),  # pgtt
            st.integers(0, 7),  # page
        ),
        max_size=4,
    ),
)


@settings(max_examples=500, deadline=None)
@given(
    geo=st.tuples(st.integers(0, 2), st.integers(0, 2), st.integers(0, 2)),
    steps=st.lists(st.tuples(_fill, st.booleans(), _op), min_size=1, max_size=12),
)
def test_translator_invalidations_match_the_general_calls(
    geo: tuple[int, int, int], steps: list[tuple[list[Any], bool, tuple[Any, ...]]]
) -> None:
    """invalidate_pasid_cache / invalidate_iotlb / invalidate_piotlb with their empty-cache
    exits against the general calls: every geometry (unbounded, disabled, bounded), caches
    and the fast-path table empty or not, valid and invalid arguments (None DID/PASID,
    unknown granularities, bad addresses)."""
    runs = []
    for ref in (False, True):
        tr = _translator(*geo)
        if ref:
            tr.invalidate_pasid_cache = types.MethodType(_ref_invalidate_pasid_cache, tr)  # type: ignore[method-assign]
            tr.invalidate_iotlb = types.MethodType(_ref_invalidate_iotlb, tr)  # type: ignore[method-assign]
            tr.invalidate_piotlb = types.MethodType(_ref_invalidate_piotlb, tr)  # type: ignore[method-assign]
        out: list[object] = []
        for fill, reset, ((kind, g), did, pasid, addr, am, ih) in steps:
            if reset:
                tr.invalidate_all()  # (the same call in both runs) back to empty caches
            for what, fdid, fpasid, pgtt, page in fill:
                if what == "pc":
                    tr.pasid_cache.insert(
                        (page, fpasid or 0), types.SimpleNamespace(did=fdid, pasid=fpasid)
                    )
                elif what == "iotlb":
                    tr.iotlb.fill(
                        IotlbEntry(fdid, fpasid, page << 12, 12, page << 12, 3, pgtt, False)
                    )
                elif what == "psc":
                    e = PscEntry(fdid, fpasid, pgtt, 1, page << 21, 0x5000, 3)
                    tr.psc.insert((fdid, fpasid, pgtt, 1, page), e)
                else:
                    tr._fast[(page, fpasid, page)] = [page << 12, 7, None, None, pgtt & 1, page]
            if kind == "pc":
                out.append(_outcome(tr.invalidate_pasid_cache, g, did=did, pasid=pasid))
                out.append(_outcome(tr.invalidate_pasid_cache, g, did, pasid))
            elif kind == "iotlb":
                out.append(_outcome(tr.invalidate_iotlb, g, did, addr, am, ih))
                out.append(_outcome(tr.invalidate_iotlb, g, did=did))
            else:
                out.append(_outcome(tr.invalidate_piotlb, g, did, pasid, addr=addr, am=am, ih=ih))
            out.append(_tr_state(tr))
        out.append({k: dataclasses.astuple(v) for k, v in tr.statistics().items()})
        runs.append(out)
    assert runs[0] == runs[1]


_CONTENTS: dict[str, list[tuple[str, int, int | None, int, int]]] = {
    "empty": [],
    "fast": [("fast", 0, None, 0, 1)],
    "pc": [("pc", 1, 3, 0, 2)],
    "iotlb": [("iotlb", 1, 3, 2, 3)],
    "psc": [("psc", 1, 3, 2, 4)],
    "all": [("fast", 0, 3, 1, 1), ("pc", 1, 3, 0, 2), ("iotlb", 1, 3, 1, 3), ("psc", 1, 3, 3, 4)],
}


def _fill_translator(tr: Translator, fill: list[tuple[str, int, int | None, int, int]]) -> None:
    for what, fdid, fpasid, pgtt, page in fill:
        if what == "pc":
            tr.pasid_cache.insert(
                (page, fpasid or 0), types.SimpleNamespace(did=fdid, pasid=fpasid)
            )
        elif what == "iotlb":
            tr.iotlb.fill(IotlbEntry(fdid, fpasid, page << 12, 12, page << 12, 3, pgtt, False))
        elif what == "psc":
            tr.psc.insert(
                (fdid, fpasid, pgtt, 1, page),
                PscEntry(fdid, fpasid, pgtt, 1, page << 21, 0x5000, 3),
            )
        else:
            tr._fast[(page, fpasid, page)] = [page << 12, 7, None, None, pgtt & 1, page]


def _reference(tr: Translator) -> Translator:
    tr.invalidate_pasid_cache = types.MethodType(_ref_invalidate_pasid_cache, tr)  # type: ignore[method-assign]
    tr.invalidate_iotlb = types.MethodType(_ref_invalidate_iotlb, tr)  # type: ignore[method-assign]
    tr.invalidate_piotlb = types.MethodType(_ref_invalidate_piotlb, tr)  # type: ignore[method-assign]
    return tr


@pytest.mark.parametrize("content", sorted(_CONTENTS))
@pytest.mark.parametrize("geo", list(itertools.product(range(3), repeat=3)))
def test_translator_invalidations_match_the_general_calls_exhaustively(
    geo: tuple[int, int, int], content: str
) -> None:
    """Every geometry x cache content (nothing, only the fast-path table, only one cache,
    all) x every flush form x DID/PASID present or None x a good or a bad address: the same
    result, error and state as the general calls."""
    trs = (_translator(*geo), _reference(_translator(*geo)))
    ops = [
        (k, g, did, pasid, addr)
        for (k, g) in dict.fromkeys(_KINDS)
        for did in (None, 1)
        for pasid in (None, 3)
        for addr in (0, -1)
    ]
    for kind, g, did, pasid, addr in ops:
        results = []
        for tr in trs:
            _fill_translator(tr, _CONTENTS[content])
            if kind == "pc":
                r = _outcome(tr.invalidate_pasid_cache, g, did, pasid)
            elif kind == "iotlb":
                r = _outcome(tr.invalidate_iotlb, g, did, addr, 0, False)
            else:
                r = _outcome(tr.invalidate_piotlb, g, did, pasid, addr=addr)
            results.append((r, _tr_state(tr)))
            tr.invalidate_all()
        assert results[0] == results[1], (kind, g, did, pasid, addr)


def test_empty_cache_exits_are_taken_on_the_teardown_flushes() -> None:
    """The teardown's three flushes reach the exits (nothing cached): they return 0 and leave
    every counter as it was; a cached entry of another DID/PASID still goes the general way."""
    tr = _translator(0, 0, 0)
    before = _tr_state(tr)
    assert tr.invalidate_pasid_cache("pasid", 5, 3) == 0
    assert tr.invalidate_iotlb("domain", 5) == 0
    assert tr.invalidate_piotlb("pasid", 5, 3) == 0
    assert _tr_state(tr) == before
    tr.iotlb.fill(IotlbEntry(6, 3, 0, 12, 0, 3, 2, False))
    tr.pasid_cache.insert((1, 3), types.SimpleNamespace(did=5, pasid=3))
    assert tr.invalidate_iotlb("domain", 6) == 1
    assert tr.invalidate_pasid_cache("pasid", 5, 3) == 1
    assert (tr.iotlb.invalidations, tr.pasid_cache.invalidations) == (1, 1)


# -- the unit's descriptor handlers ------------------------------------------------------------


def _ref_qi_iotlb(self: Any, lo: int, hi: int) -> int | None:
    """RemappingUnit._qi_iotlb before the positional call and the bool() rewrite."""
    if lo & H._RSVD_IOTLB[0] or hi & H._RSVD_IOTLB[1]:
        return H._IQEI_RSVD
    g = (lo >> H._G_SH) & 3
    tr = self._qi_tr
    if g == 3:
        am = hi & H._AM_MASK
        if am > self._qi_mamv:
            return H._IQEI_RSVD
        psi = self._qi_tr_psi
        if psi is not None:
            psi(
                (lo >> H._DID_SH) & 0xFFFF,
                hi & H._ADDR_MASK & ~((4096 << am) - 1),
                am,
                bool(hi & H._IH_BIT),
            )
        elif tr is not None:
            tr.invalidate_iotlb(
                "page",
                did=(lo >> H._DID_SH) & 0xFFFF,
                addr=hi & H._ADDR_MASK & ~((4096 << am) - 1),
                am=am,
                ih=bool(hi & H._IH_BIT),
            )
    elif g == 2:
        if tr is not None:
            tr.invalidate_iotlb("domain", did=(lo >> H._DID_SH) & 0xFFFF)
    elif g == 1:
        if tr is not None:
            tr.invalidate_iotlb("global")
    else:
        return H._IQEI_RSVD
    return None


def _ref_qi_pc(self: Any, lo: int, hi: int) -> int | None:
    if lo & H._RSVD_PC[0] or hi & H._RSVD_PC[1]:
        return H._IQEI_RSVD
    g = (lo >> H._G_SH) & 3
    if g == 2:
        return H._IQEI_RSVD
    tr = self._qi_tr
    if tr is not None:
        did = (lo >> H._DID_SH) & 0xFFFF
        if g == 0:
            tr.invalidate_pasid_cache("domain", did=did)
        elif g == 1:
            tr.invalidate_pasid_cache("pasid", did=did, pasid=(lo >> H._PASID_SH) & H._PASID_MASK)
        else:
            tr.invalidate_pasid_cache("global")
    return None


def _ref_qi_devtlb(self: Any, lo: int, hi: int) -> int | None:
    if lo & H._RSVD_DEVTLB[0] or hi & H._RSVD_DEVTLB[1]:
        return H._IQEI_RSVD
    sid = (lo >> H._DEV_SID_SH) & 0xFFFF
    dev = self._qi_device(sid)
    if dev is None:
        dev = self._device(sid)
    if dev is not None:
        dev.invalidate_devtlb(None, hi & H._ADDR_MASK, bool(hi & H._DEV_S))
    return None


def _ref_qi_piotlb(self: Any, lo: int, hi: int) -> int | None:
    if lo & H._RSVD_PIOTLB[0] or hi & H._RSVD_PIOTLB[1]:
        return H._IQEI_RSVD
    g = (lo >> H._G_SH) & 3
    if g < 2:
        return H._IQEI_RSVD
    tr = self._qi_tr
    if tr is not None:
        did = (lo >> H._DID_SH) & 0xFFFF
        pasid = (lo >> H._PASID_SH) & H._PASID_MASK
        if g == 2:
            tr.invalidate_piotlb("pasid", did, pasid)
        else:
            am = hi & H._AM_MASK
            tr.invalidate_piotlb(
                "page",
                did,
                pasid,
                addr=hi & H._ADDR_MASK & ~((4096 << am) - 1),
                am=am,
                ih=bool(hi & H._IH_BIT),
            )
    return None


def _ref_qi_pdevtlb(self: Any, lo: int, hi: int) -> int | None:
    if lo & H._RSVD_PDEVTLB[0] or hi & H._RSVD_PDEVTLB[1]:
        return H._IQEI_RSVD
    sid = (lo >> H._PDEV_SID_SH) & 0xFFFF
    dev = self._qi_device(sid)
    if dev is None:
        dev = self._device(sid)
    if dev is not None:
        dev.invalidate_devtlb(
            (lo >> H._PASID_SH) & H._PASID_MASK, hi & H._ADDR_MASK, bool(hi & H._PDEV_S)
        )
    return None


_REF_HANDLERS = {
    "_qi_iotlb": _ref_qi_iotlb,
    "_qi_pc": _ref_qi_pc,
    "_qi_devtlb": _ref_qi_devtlb,
    "_qi_piotlb": _ref_qi_piotlb,
    "_qi_pdevtlb": _ref_qi_pdevtlb,
}


def _typed(*args: Any, **kw: Any) -> tuple[object, ...]:
    """Arguments by parameter, each with its type (bool vs int is compared)."""
    return tuple((a, type(a).__name__) for a in args) + tuple(
        (k, v, type(v).__name__) for k, v in sorted(kw.items())
    )


class _RecordingTranslator:
    """A translator recording each invalidation with its arguments normalised to the
    TranslatorLike parameters (positional or keyword: the same call)."""

    def __init__(self, calls: list[object], psi: bool) -> None:
        self.calls = calls
        if psi:
            self.invalidate_iotlb_page = self._page

    def _page(self, did: int, addr: int, am: int, ih: bool) -> None:
        self.calls.append(("psi", _typed(did, addr, am, ih)))

    def translate(self, sid: int, addr: int, **kw: Any) -> None:
        return None

    def invalidate_context(
        self, granularity: str, did: int | None = None, sid: int | None = None, fm: int = 0
    ) -> None:
        self.calls.append(("context", _typed(granularity, did, sid, fm)))

    def invalidate_pasid_cache(
        self, granularity: str, did: int | None = None, pasid: int | None = None
    ) -> None:
        self.calls.append(("pasid", _typed(granularity, did, pasid)))

    def invalidate_iotlb(
        self, granularity: str, did: int | None = None, addr: int = 0, am: int = 0, ih: bool = False
    ) -> None:
        self.calls.append(("iotlb", _typed(granularity, did, addr, am, ih)))

    def invalidate_piotlb(
        self, granularity: str, did: int, pasid: int, addr: int = 0, am: int = 0, ih: bool = False
    ) -> None:
        self.calls.append(("piotlb", _typed(granularity, did, pasid, addr, am, ih)))


class _Device:
    def __init__(self, calls: list[object]) -> None:
        self.calls = calls

    def invalidate_devtlb(self, pasid: int | None, addr: int, size_bit: bool) -> None:
        self.calls.append(("devtlb", _typed(pasid, addr, size_bit)))


class _Platform:
    def __init__(self, calls: list[object]) -> None:
        self.devices = {0x0108: _Device(calls), 0x0010: _Device(calls)}

    def device(self, sid: int) -> _Device:
        return self.devices[sid]  # KeyError for absent functions


_TYPES = [int(SD.DescType.IOTLB), 7, int(SD.DescType.DEVTLB), 6, 8]  # PC 7, P_IOTLB 6, PDEV 8


@st.composite
def _descriptor(draw: st.DrawFn) -> tuple[int, int]:
    """Mostly well-formed descriptors of the five types (fields where each type has them),
    sometimes a reserved bit set, sometimes random qwords."""
    if draw(st.integers(0, 7)) == 0:
        return draw(st.integers(0, (1 << 64) - 1)), draw(st.integers(0, (1 << 64) - 1))
    t = draw(st.sampled_from(_TYPES))
    sid = draw(st.sampled_from([0x108, 0x10, 0x200]))  # two devices, one absent
    pasid = draw(st.sampled_from([0, 3, 0xFFFFF]))
    lo = t | draw(st.integers(0, 3)) << 4
    if t in (2, 6, 7):  # IOTLB, P_IOTLB, PC: DID 31:16
        lo |= draw(st.sampled_from([0, 5, 0xFFFF])) << 16
    if t in (6, 7, 8):  # PASID 51:32
        lo |= pasid << 32
    if t == 3:  # device TLB: SID 47:32
        lo |= sid << 32
    if t == 8:  # PASID device TLB: SID 31:16
        lo |= sid << 16
    addr = draw(st.sampled_from([0, 0x1000, 0x7FFF_FFFF_FFFF_F000, 0xFFFF_FFFF_FFFF_F000]))
    if t in (2, 6):
        hi = addr | draw(st.sampled_from([0, 1, 9, 18, 19, 63])) | draw(st.sampled_from([0, 64]))
    else:
        hi = addr | draw(st.sampled_from([0, 1, 0x800, 0x801]))  # S: bit 0 / bit 11
    if draw(st.integers(0, 9)) == 0:
        if draw(st.booleans()):
            lo |= 1 << draw(st.integers(6, 63))  # perhaps a reserved bit
        else:
            hi |= 1 << draw(st.integers(0, 11))
    return lo, hi


@settings(max_examples=400, deadline=None)
@given(
    psi_caps=st.booleans(),
    psi_entry=st.booleans(),
    no_tr=st.booleans(),
    descs=st.lists(_descriptor(), min_size=1, max_size=12),
)
def test_queue_handlers_match_the_reference_handlers(
    psi_caps: bool, psi_entry: bool, no_tr: bool, descs: list[tuple[int, int]]
) -> None:
    """The IOTLB, PASID-cache, P_IOTLB and (PASID-)device-TLB handlers against their
    pre-shortcut code: same result (None or the IQEI code), same calls to the translator and
    the devices, argument values and types (``ih``/``size_bit`` bools), for random and
    well-formed descriptors of every granularity, with and without CAP.PSI, a page-selective
    entry point, a translator."""
    _compare_handlers(psi_caps, psi_entry, no_tr, descs)


def _compare_handlers(
    psi_caps: bool, psi_entry: bool, no_tr: bool, descs: list[tuple[int, int]]
) -> None:
    runs = []
    for ref in (False, True):
        calls: list[object] = []
        caps = Capabilities(psi=psi_caps)
        u = RemappingUnit(PhysicalMemory(1 << 24), caps, platform=_Platform(calls))
        if not no_tr:
            u.translator = _RecordingTranslator(calls, psi_entry)
        out: list[object] = []
        for lo, hi in descs:
            t = (lo & 0xF) | ((lo >> 5) & 0x70)
            name = {
                int(SD.DescType.IOTLB): "_qi_iotlb",
                7: "_qi_pc",
                int(SD.DescType.DEVTLB): "_qi_devtlb",
                6: "_qi_piotlb",
                8: "_qi_pdevtlb",
            }.get(t)
            if name is None:
                continue
            if ref:
                out.append(_outcome(_REF_HANDLERS[name], u, lo, hi))
            else:
                out.append(_outcome(getattr(u, name), lo, hi))
        runs.append((out, calls))
    assert runs[0] == runs[1]


def _structured() -> list[tuple[int, int]]:
    """Well-formed descriptors of the five types over their fields' edge values, then each
    one with every single bit of qword 0 or 1 flipped (reserved bits among them)."""
    base = []
    for t in _TYPES:
        for g in range(4):
            for did in (0, 0xFFFF):
                for pasid in (0, 0xFFFFF):
                    for sid in (0x108, 0x200):
                        lo = t | g << 4
                        if t in (2, 6, 7):
                            lo |= did << 16
                        if t in (6, 7, 8):
                            lo |= pasid << 32
                        if t == 3:
                            lo |= sid << 32
                        if t == 8:
                            lo |= sid << 16
                        for hi in (0, 0x7FFF_FFFF_FFFF_F000 | 0x800 | 1, 0x2000 | 64 | 9, 19):
                            base.append((lo, hi))
    out = list(base)
    for lo, hi in base[::7]:
        out += [(lo ^ 1 << b, hi) for b in range(4, 64)]
        out += [(lo, hi ^ 1 << b) for b in range(64)]
    return out


_STRUCTURED = _structured()


@pytest.mark.parametrize("psi_caps", [False, True])
@pytest.mark.parametrize("psi_entry", [False, True])
@pytest.mark.parametrize("no_tr", [False, True])
def test_queue_handlers_match_the_reference_handlers_exhaustively(
    psi_caps: bool, psi_entry: bool, no_tr: bool
) -> None:
    """The handlers against their pre-shortcut code on every structured descriptor above."""
    _compare_handlers(psi_caps, psi_entry, no_tr, _STRUCTURED)


# -- qi_submit_sync's one-descriptor copy: range checks by packing ------------------------------


class _Int(int):
    pass


_qword = st.one_of(
    st.sampled_from([0, 1, (1 << 64) - 1, 1 << 64, -1, -(1 << 64), 1 << 70, True, False]),
    st.integers(-(1 << 65), 1 << 65),
    st.builds(_Int, st.integers(0, (1 << 64) - 1)),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(_qword, _qword, st.booleans()), min_size=1, max_size=20))
def test_one_descriptor_copy_matches_the_general_copy(
    descs: list[tuple[Any, Any, bool]],
) -> None:
    """qi_submit_sync's one-descriptor copy, whose range checks are now the packing's, against
    the general slot-by-slot copy (a trace list sends every submission there): values in and
    out of the 64-bit range, negative, bools, int subclasses, valid PASID-cache descriptors in
    between; same outcome (ArgumentError message, QiError), ring, status words, registers."""
    states = []
    for general in (False, True):
        k = Kernel.for_testing(ndev=1)
        io = k.iommus[0]
        if general:
            io.qi_trace = []
        out = []
        for d0, d1, valid in descs:
            desc = io.desc_pasid_cache(5, 3, 1) if valid else (d0, d1, 0, 0)
            out.append(_outcome(io.qi_submit_sync, (desc,)))
        states.append((out, unit_state(k)))
    assert states[0] == states[1]


# -- the device's invalidate_devtlb ------------------------------------------------------------


def _ref_invalidate_devtlb(self: Any, pasid: int | None, addr: int, size_bit: bool) -> int:
    """PciDevice.invalidate_devtlb before its exact-int test."""
    from vtdsim.errors import ArgumentError
    from vtdsim.hw.pci import ats_range

    if not isinstance(addr, int) or addr < 0:
        raise ArgumentError("addr", addr, "a non-negative address")
    if not self._devtlb:
        return 0
    base, size = ats_range(addr, bool(size_bit))
    end = base + size
    dead = []
    for k, e in self._devtlb.items():
        if (pasid is None or e.pasid == pasid) and e.base < end and base < e.base + (1 << e.shift):
            dead.append(k)
    for k in dead:
        del self._devtlb[k]
    self._invals += len(dead)
    return len(dead)


@settings(max_examples=200, deadline=None)
@given(
    entries=st.lists(st.tuples(st.sampled_from([None, 1, 3]), st.integers(0, 7)), max_size=4),
    calls=st.lists(
        st.tuples(
            st.sampled_from([None, 1, 3]),
            st.one_of(
                st.sampled_from([0, 0x1000, 0x7FFF_FFFF_FFFF_F000, -1, True, 1.0, None, "0"]),
                st.builds(_Int, st.integers(0, 1 << 20)),
            ),
            st.booleans(),
        ),
        min_size=1,
        max_size=4,
    ),
)
def test_invalidate_devtlb_matches_the_reference(
    entries: list[tuple[int | None, int]], calls: list[tuple[Any, Any, bool]]
) -> None:
    runs = []
    for ref in (False, True):
        k = Kernel.for_testing(ndev=1)
        dev = k.devices[0]
        for pasid, page in entries:
            dev._devtlb[(pasid, page)] = _DevTlbEntry(pasid, page << 12, 12, page << 12, 3)
        out = []
        for pasid, addr, s in calls:
            if ref:
                out.append(_outcome(_ref_invalidate_devtlb, dev, pasid, addr, s))
            else:
                out.append(_outcome(dev.invalidate_devtlb, pasid, addr, s))
            out.append(
                (sorted(dev._devtlb, key=repr), dataclasses.astuple(dev.devtlb_statistics()))
            )
        runs.append(out)
    assert runs[0] == runs[1]
