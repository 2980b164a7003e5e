"""The per-request translation API of a remapping unit: caches + walks + a fast path.

Design rationale
----------------
:class:`Translator` is what the silicon does for every DMA request: look the source-id up in the
context cache, the (source-id, PASID) in the PASID cache, the (DID, PASID, page) in the IOTLB,
and walk the tables (:mod:`vtdsim.hw.walk`, resuming from the paging-structure caches) only on a
miss.  The architectural caches (:mod:`vtdsim.hw.caches`) are the single source of truth: a
translation served from them is exactly what hardware with those caches would return, stale
entries included, until the matching invalidation (``invalidate_*``, the API that the unit's
register and queued invalidation call) removes them.

The warm path must cost about one dict lookup.  We therefore keep a *derived* dict keyed by
``(sid, pasid, addr >> 12)`` whose values are produced only from cache contents: an entry exists
only while the context-cache, PASID-cache and IOTLB entries it summarises are all present, so a
fast hit returns what the three lookups would return.  It is cleared on every invalidation and
every eviction, and it is not used when a cache is disabled (every lookup must walk) or uses
LRU replacement (a hit changes the replacement order, which the fast path would not record).
Lookups it serves are added to the caches' hit counters when statistics are read.

Requests that need a permission the cached entry lacks are not failed from the cache: they
re-walk (x86 practice; VT-d 6.2.3 lets hardware re-walk), and cached write permission is
withheld while an A/D update is pending, so the first write to a clean page walks and sets D.

Faults: a walk fault becomes a :class:`TranslationFault`; unless an FPD bit applies to a
qualified fault (VT-d 7.1.3; QEMU ``vtd_is_qualified_fault``) it is passed to
``unit.record_fault``.  Requests without a PASID use the context's RID_PASID and RID_PRIV in
scalable mode (VT-d 9.4).  With GSTS.TES clear DMA is not remapped.
"""

from __future__ import annotations

from typing import Any, Protocol

from vtdsim.errors import ArgumentError
from vtdsim.hw.caches import (
    CacheStatistics,
    ContextCache,
    Iotlb,
    IotlbEntry,
    PagingStructureCache,
    PasidCache,
    PscEntry,
)
from vtdsim.hw.caps import CacheGeometry, Capabilities
from vtdsim.hw.memory import PhysicalMemory
from vtdsim.hw.walk import (
    FR_INTERRUPT_ADDR,
    FR_PE_ERE,
    FR_PE_SRE,
    FR_RTADDR_INV_TTM,
    FR_SM_INTERRUPT,
    FR_SM_PASIDE,
    FR_SM_RTADDR_INV,
    INTERRUPT_RANGE,
    PERM_R,
    PERM_SR,
    PERM_SW,
    PERM_SX,
    PERM_W,
    PERM_X,
    ContextInfo,
    PasidInfo,
    Walker,
    WalkFault,
    WalkResult,
    WalkStep,
    need_mask,
)
from vtdsim.spec.faults import is_qualified, reason_name, reason_text

__all__ = ["Translation", "TranslationFault", "Translator", "UnitLike"]

_ALL = PERM_R | PERM_W | PERM_X | PERM_SR | PERM_SW | PERM_SX
_INTR_LO, _INTR_HI = INTERRUPT_RANGE
_PASID_LIMIT = 1 << 20
_U64 = (1 << 64) - 1


class UnitLike(Protocol):
    """What the translator reads from its remapping unit (hw.iommu.RemappingUnit)."""

    memory: PhysicalMemory
    caps: Capabilities
    root_table_address: int
    ttm: int
    translation_enabled: bool

    def record_fault(self, fault: TranslationFault) -> Any: ...


class _Page:
    """Shared, immutable facts about a translated page (held by :class:`Translation`)."""

    __slots__ = ("ats", "did", "pasid", "perm", "pgtt", "privileged", "shift", "sid")

    def __init__(
        self,
        sid: int,
        pasid: int | None,
        did: int,
        shift: int,
        perm: int,
        pgtt: int,
        ats: bool,
        privileged: bool,
    ) -> None:
        self.sid = sid
        self.pasid = pasid
        self.did = did
        self.shift = shift
        self.perm = perm
        self.pgtt = pgtt
        self.ats = ats
        self.privileged = privileged


class Translation:
    """A successful translation of one request.

    ``address`` is the host-physical address of the request's address; ``page_size`` the size
    of the translated page; ``did``/``pasid`` the domain and the PASID used (``pasid`` is the
    RID_PASID for a scalable-mode request without PASID, None in legacy mode);
    ``readable``/``writable``/``executable`` the rights at the request's privilege;
    ``ats``: the context entry lets the device cache this translation (DTE / TT=01).
    """

    __slots__ = ("_p", "address")
    ok = True

    def __init__(self, address: int, page: _Page) -> None:
        self.address = address
        self._p = page

    @property
    def page_size(self) -> int:
        return 1 << self._p.shift

    @property
    def page_shift(self) -> int:
        return self._p.shift

    @property
    def did(self) -> int:
        return self._p.did

    @property
    def pasid(self) -> int | None:
        return self._p.pasid

    @property
    def sid(self) -> int:
        return self._p.sid

    @property
    def pgtt(self) -> int:
        """PGTT of the PASID entry used (0 in legacy mode; -1 when translation is disabled)."""
        return self._p.pgtt

    @property
    def privileged(self) -> bool:
        return self._p.privileged

    @property
    def ats(self) -> bool:
        return self._p.ats

    @property
    def perm(self) -> int:
        return self._p.perm

    @property
    def readable(self) -> bool:
        return bool(self._p.perm & (PERM_SR if self._p.privileged else PERM_R))

    @property
    def writable(self) -> bool:
        return bool(self._p.perm & (PERM_SW if self._p.privileged else PERM_W))

    @property
    def executable(self) -> bool:
        return bool(self._p.perm & (PERM_SX if self._p.privileged else PERM_X))

    @property
    def page_address(self) -> int:
        """HPA of the start of the translated page."""
        return self.address & ~((1 << self._p.shift) - 1)

    def __repr__(self) -> str:
        flags = (self.readable, self.writable, self.executable)
        rights = "".join(c for c, ok in zip("rwx", flags, strict=True) if ok)
        return (
            f"Translation(hpa={self.address:#x}, page={self.page_size:#x}, did={self.did}, "
            f"pasid={self.pasid}, {rights or '-'})"
        )


class TranslationFault:
    """A request the unit blocked: ``reason`` (fault reason code), the request's ``sid``,
    ``pasid`` (None when the request had none), ``address``, ``write``/``execute``/
    ``privileged``; ``fpd`` when an FPD bit suppressed recording; ``recorded`` when the unit
    took it into a fault-recording register."""

    __slots__ = (
        "address",
        "execute",
        "fpd",
        "pasid",
        "privileged",
        "reason",
        "recorded",
        "sid",
        "write",
    )
    ok = False

    def __init__(
        self,
        reason: int,
        sid: int,
        pasid: int | None,
        address: int,
        write: bool,
        execute: bool,
        privileged: bool,
        fpd: bool = False,
        recorded: bool = False,
    ) -> None:
        self.reason = reason
        self.sid = sid
        self.pasid = pasid
        self.address = address
        self.write = write
        self.execute = execute
        self.privileged = privileged
        self.fpd = fpd
        self.recorded = recorded

    @property
    def name(self) -> str:
        return reason_name(self.reason)

    @property
    def text(self) -> str:
        return reason_text(self.reason)

    def linux_message(self) -> str:
        """The line Linux ``dmar_fault_do_one`` prints for this fault."""
        kind = "DMA Write" if self.write else "DMA Read"
        tag = "NO_PASID" if self.pasid is None else f"PASID {self.pasid:#x}"
        b, d, f = self.sid >> 8, (self.sid >> 3) & 0x1F, self.sid & 7
        return (
            f"[{kind} {tag}] Request device [{b:02x}:{d:02x}.{f}] fault addr "
            f"{self.address & ~0xFFF:#x} [fault reason {self.reason:#04x}] {self.text}"
        )

    def __repr__(self) -> str:
        extra = " fpd" if self.fpd else ""
        return (
            f"TranslationFault({self.reason:#04x} {self.name}, sid={self.sid:#06x}, "
            f"pasid={self.pasid}, addr={self.address:#x}, {'write' if self.write else 'read'}"
            f"{extra})"
        )


def _fast_ok(g: CacheGeometry) -> bool:
    return g.entries is None or (g.entries > 0 and g.replacement != "lru")


class Translator:
    """Caches + walks of one remapping unit (see the module docstring)."""

    def __init__(self, unit: UnitLike) -> None:
        self.unit = unit
        caps = unit.caps
        self.caps = caps
        self.walker = Walker(unit.memory, caps)
        ev = self._on_evict
        self.context_cache = ContextCache(caps.context_cache, "context-cache", ev)
        self.pasid_cache = PasidCache(caps.pasid_cache, "pasid-cache", ev)
        self.iotlb = Iotlb(caps.iotlb, "iotlb", ev)
        self.psc = PagingStructureCache(caps.paging_structure_cache, "psc", ev)
        self._psc_on = self.psc.enabled
        self._fast_on = all(_fast_ok(g) for g in (caps.context_cache, caps.pasid_cache, caps.iotlb))
        # (sid, pasid, addr >> 12) -> [hpa_page, ok_bits, page(priv=0), page(priv=1), ttm, hits]
        self._fast: dict[tuple[int, int | None, int], list[Any]] = {}
        self.faults = 0
        self._walks = 0
        # every cache disabled: scalable-mode requests go straight to the inlined walk
        self._uncached = caps.scalable_mode and not any(
            c.enabled for c in (self.context_cache, self.pasid_cache, self.iotlb, self.psc)
        )
        # uncached fast-path walks: all of them, and those already folded into the caches'
        # miss counters by statistics()
        self._uncached_walks = 0
        self._uncached_folded = 0
        self._fast_sm = self.walker.fast_sm
        if self._uncached:
            # One call per request: argument checks, the inlined walk, the result.
            self.translate = self._translate_uncached  # type: ignore[method-assign]

    @property
    def walks(self) -> int:
        """Table walks performed (IOTLB misses and uncached requests)."""
        return self._walks + self._uncached_walks

    # -- the per-request API -----------------------------------------------------------------

    def translate(
        self,
        sid: int,
        addr: int,
        *,
        pasid: int | None = None,
        write: bool = False,
        execute: bool = False,
        privileged: bool = False,
    ) -> Translation | TranslationFault:
        """Translate one request (see the module docstring)."""
        unit = self.unit
        if unit.translation_enabled:
            ent = self._fast.get((sid, pasid, addr >> 12))
            if (
                ent is not None
                and ent[1] >> (write + 2 * execute + 4 * privileged) & 1
                and ent[4] == unit.ttm
            ):
                ent[5] += 1
                return Translation(ent[0] | (addr & 0xFFF), ent[2 + privileged])
        return self._translate(sid, addr, pasid, bool(write), bool(execute), bool(privileged))

    def _translate_uncached(
        self,
        sid: int,
        addr: int,
        *,
        pasid: int | None = None,
        write: bool = False,
        execute: bool = False,
        privileged: bool = False,
    ) -> Translation | TranslationFault:
        """:meth:`translate` of a unit with every cache disabled: the inlined scalable-mode
        walk first (the same checks as :func:`_check_request`, then ``Walker.fast_sm``);
        anything unusual goes through :meth:`_translate`, which decides."""
        unit = self.unit
        if (
            unit.translation_enabled
            and unit.ttm == 1
            and not execute
            and type(sid) is int
            and 0 <= sid <= 0xFFFF
            and type(addr) is int
            and 0 <= addr <= _U64
            and (pasid is None or (type(pasid) is int and 0 <= pasid < _PASID_LIMIT))
        ):
            r = self._fast_sm(unit.root_table_address, sid, addr, pasid, write, privileged)
            if r is not None:
                self._uncached_walks += 1
                hpa, shift, perm, did, p, dte, pgtt, eff = r
                return Translation(hpa, _Page(sid, p, did, shift, perm, pgtt, dte, eff))
            return self._translate(
                sid, addr, pasid, bool(write), False, bool(privileged), tried=True
            )
        return self._translate(sid, addr, pasid, bool(write), bool(execute), bool(privileged))

    def _translate(
        self,
        sid: int,
        addr: int,
        pasid: int | None,
        write: bool,
        execute: bool,
        priv: bool,
        tried: bool = False,
    ) -> Translation | TranslationFault:
        _check_request(sid, addr, pasid)
        unit = self.unit
        if not unit.translation_enabled:
            # GSTS.TES = 0: DMA is not remapped (VT-d 10.4.5)
            return Translation(addr, _Page(sid, pasid, 0, 12, _ALL, -1, False, priv))
        ttm = unit.ttm
        if ttm == 1 and self._uncached and not tried and not execute:
            r = self._fast_sm(unit.root_table_address, sid, addr, pasid, write, priv)
            if r is not None:
                self._uncached_walks += 1
                hpa, shift, perm, did0, p0, dte, pgtt0, eff = r
                return Translation(hpa, _Page(sid, p0, did0, shift, perm, pgtt0, dte, eff))
        if ttm >= 2 or (ttm == 1 and not self.caps.scalable_mode):
            return self._fault(FR_SM_RTADDR_INV, False, sid, pasid, addr, write, execute, priv)
        if ttm == 0 and pasid is not None:
            return self._fault(FR_RTADDR_INV_TTM, False, sid, pasid, addr, write, execute, priv)
        ctx = self.context_cache.lookup(sid)
        if ctx is None or ctx.mode != ttm:
            try:
                ctx = self.walker.context(unit.root_table_address, ttm, sid)
            except WalkFault as f:
                return self._fault(f.reason, f.fpd, sid, pasid, addr, write, execute, priv)
            self.context_cache.insert(sid, ctx)
        assert ctx is not None
        pe: PasidInfo | None = None
        if ttm == 0:
            did = ctx.did
            p: int | None = None
            pgtt = 0
            eff_priv = False  # legacy requests carry no privilege
            fpd = ctx.fpd
        else:
            if pasid is not None and not ctx.paside:
                return self._fault(FR_SM_PASIDE, ctx.fpd, sid, pasid, addr, write, execute, priv)
            p = ctx.rid_pasid if pasid is None else pasid
            eff_priv = ctx.rid_priv if pasid is None else priv
            key = (sid, p)
            pe = self.pasid_cache.lookup(key)
            if pe is None:
                try:
                    pe = self.walker.pasid_entry(ctx, p, pasid is None)
                except WalkFault as f:
                    return self._fault(f.reason, f.fpd, sid, pasid, addr, write, execute, eff_priv)
                self.pasid_cache.insert(key, pe)
            did = pe.did
            pgtt = pe.pgtt
            fpd = ctx.fpd or pe.fpd
            if eff_priv and not pe.sre:
                return self._fault(FR_PE_SRE, fpd, sid, pasid, addr, write, execute, eff_priv)
            if execute and not self.caps.execute_requests:
                return self._fault(FR_PE_ERE, fpd, sid, pasid, addr, write, execute, eff_priv)
        need = need_mask(write, execute, eff_priv)
        e = self.iotlb.find(did, p, addr)
        if e is None or e.perm & need != need:
            self._walks += 1
            try:
                e = self._walk_fill(ctx, pe, did, p, pgtt, addr, write, execute, eff_priv)
            except WalkFault as f:
                return self._fault(f.reason, f.fpd, sid, pasid, addr, write, execute, eff_priv)
        shift = e.shift
        hpa = e.hpa | (addr & ((1 << shift) - 1))
        if _INTR_LO <= hpa <= _INTR_HI:
            code = FR_INTERRUPT_ADDR if ttm == 0 else FR_SM_INTERRUPT
            return self._fault(code, fpd, sid, pasid, addr, write, execute, eff_priv)
        page = _Page(sid, p, did, shift, e.perm, pgtt, e.ats, eff_priv)
        if self._fast_on:
            self._fast_fill(sid, pasid, addr, e, ctx, pe, ttm, hpa)
        return Translation(hpa, page)

    def _walk_fill(
        self,
        ctx: ContextInfo,
        pe: PasidInfo | None,
        did: int,
        p: int | None,
        pgtt: int,
        addr: int,
        write: bool,
        execute: bool,
        priv: bool,
    ) -> IotlbEntry:
        """Walk (from the deepest paging-structure-cache hit) and fill IOTLB and PSC."""
        w = self.walker
        start: tuple[int, int, int] | None = None
        fill: list[tuple[int, int, int]] | None = None
        use_psc = False
        if self._psc_on:
            if pe is None:
                levels = ctx.levels if ctx.tt != 2 else 0
            elif pgtt == 2:
                levels = pe.sl_levels
            elif pgtt == 1:
                levels = pe.fl_levels
            else:
                levels = 0  # nested and pass-through: no PSC in this model
            if levels:
                use_psc = True
                fill = []
                lookup = self.psc.lookup
                for lvl in range(1, levels):
                    ps = lookup((did, p, pgtt, lvl, addr >> (12 + 9 * lvl)))
                    if ps is not None:
                        start = (lvl, ps.table, ps.acc)
                        break
        r: WalkResult
        if pe is None:
            r = w.finish_legacy(ctx, addr, write, None, start, fill)
        else:
            r = w.finish_sm(ctx, pe, addr, write, execute, priv, None, start, fill)
        shift = r.page_shift
        mask = (1 << shift) - 1
        e = IotlbEntry(did, p, addr & ~mask, shift, r.address & ~mask, r.perm, pgtt, r.ats)
        if self._fast and self.iotlb.peek((did, p, shift, addr >> shift)) is not None:
            self._drop_fast()  # a refill replaces an entry fast-path entries may summarise
        self.iotlb.fill(e)
        if use_psc and fill:
            ins = self.psc.insert
            for lvl, table, acc in fill:
                s = 12 + 9 * lvl
                ins(
                    (did, p, pgtt, lvl, addr >> s),
                    PscEntry(did, p, pgtt, lvl, (addr >> s) << s, table, acc),
                )
        return e

    def _fast_fill(
        self,
        sid: int,
        pasid: int | None,
        addr: int,
        e: IotlbEntry,
        ctx: ContextInfo,
        pe: PasidInfo | None,
        ttm: int,
        hpa: int,
    ) -> None:
        # only what the caches hold can be summarised (a disabled IOTLB holds nothing)
        if not self.iotlb.enabled:
            return
        page_hpa = hpa & ~0xFFF
        if page_hpa <= _INTR_HI and page_hpa + 0xFFF >= _INTR_LO:
            return
        exe_ok = self.caps.execute_requests
        perm = e.perm
        sm_rid = ttm == 1 and pasid is None
        ok = 0
        for c in range(8):
            w, x, pr = c & 1, (c >> 1) & 1, (c >> 2) & 1
            if x and not exe_ok:
                continue
            eff = (ctx.rid_priv if sm_rid else bool(pr)) if ttm == 1 else False
            if eff and pe is not None and not pe.sre:
                continue
            need = need_mask(bool(w), bool(x), eff)
            if perm & need == need:
                ok |= 1 << c
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

    def _fault(
        self,
        reason: int,
        fpd: bool,
        sid: int,
        pasid: int | None,
        addr: int,
        write: bool,
        execute: bool,
        priv: bool,
    ) -> TranslationFault:
        self.faults += 1
        suppressed = fpd and is_qualified(reason)
        f = TranslationFault(reason, sid, pasid, addr, write, execute, priv, suppressed)
        if not suppressed:
            r = self.unit.record_fault(f)
            f.recorded = r is not False
        return f

    # -- uncached walk (for `vtdsim walk` and tests) --------------------------------------------

    def walk(
        self,
        sid: int,
        addr: int,
        *,
        pasid: int | None = None,
        write: bool = False,
        execute: bool = False,
        privileged: bool = False,
        trace: list[WalkStep] | None = None,
    ) -> Translation | TranslationFault:
        """Translate without consulting or filling any cache and without recording faults
        (A/D bits are still updated, as a walk does).  ``trace`` receives the table reads."""
        _check_request(sid, addr, pasid)
        unit = self.unit
        if not unit.translation_enabled:
            return Translation(addr, _Page(sid, pasid, 0, 12, _ALL, -1, False, privileged))
        try:
            r = self.walker.walk(
                unit.root_table_address,
                unit.ttm,
                sid,
                addr,
                pasid=pasid,
                write=write,
                execute=execute,
                privileged=privileged,
                trace=trace,
            )
        except WalkFault as f:
            return TranslationFault(
                f.reason,
                sid,
                pasid,
                addr,
                write,
                execute,
                privileged,
                f.fpd and is_qualified(f.reason),
            )
        return Translation(
            r.address, _Page(sid, r.pasid, r.did, r.page_shift, r.perm, r.pgtt, r.ats, privileged)
        )

    # -- invalidation (called by the unit's register / queued invalidation) -----------------

    def _on_evict(self) -> None:
        if self._fast:
            self._drop_fast()

    def _drop_fast(self) -> None:
        """Fold fast-path hits into the cache counters, then forget the derived entries."""
        if not self._fast:
            return  # nothing derived, no pending hits
        legacy = sm = 0
        for v in self._fast.values():
            if v[5]:
                if v[4] == 0:
                    legacy += v[5]
                else:
                    sm += v[5]
        self.context_cache.hits += legacy + sm
        self.pasid_cache.hits += sm
        self.iotlb.hits += legacy + sm
        self._fast.clear()

    def invalidate_context(
        self, granularity: str, did: int | None = None, sid: int | None = None, fm: int = 0
    ) -> int:
        """Context-cache invalidation: "global", "domain" (did) or "device" (sid, fm)."""
        self._drop_fast()
        return self.context_cache.invalidate(granularity, did=did, sid=sid, fm=fm)

    def invalidate_pasid_cache(
        self, granularity: str, did: int | None = None, pasid: int | None = None
    ) -> int:
        """PASID-cache invalidation: "global", "domain" (did) or "pasid" (did, pasid)."""
        self._drop_fast()
        return self.pasid_cache.invalidate(granularity, did=did, pasid=pasid)

    def invalidate_iotlb(
        self,
        granularity: str,
        did: int | None = None,
        addr: int = 0,
        am: int = 0,
        ih: bool = False,
    ) -> int:
        """IOTLB invalidation: "global", "domain" (did) or "page" (did, addr, am, ih).  Drops
        paging-structure-cache entries too, except for a page-selective flush with IH set."""
        if granularity == "page":
            return self.invalidate_iotlb_page(did, addr, am, ih)
        self._drop_fast()
        n = self.iotlb.invalidate(granularity, did=did, addr=addr, am=am)
        self.psc.invalidate(granularity, did=did, addr=addr, am=am)
        return n

    def invalidate_iotlb_page(self, did: int | None, addr: int, am: int, ih: bool) -> int:
        """Page-selective IOTLB invalidation (``invalidate_iotlb("page", ...)``, the strict
        unmap's PSI): the IOTLB entries of ``did`` overlapping the 2^``am`` pages at ``addr``,
        and the paging-structure-cache entries too unless ``ih``."""
        if self._fast:
            self._drop_fast()
        n = self.iotlb.invalidate_page(did, addr, am)
        if not ih:
            self.psc.invalidate_page(did, addr, am)
        return n

    def invalidate_piotlb(
        self,
        granularity: str,
        did: int,
        pasid: int,
        addr: int = 0,
        am: int = 0,
        ih: bool = False,
    ) -> int:
        """PASID-based IOTLB invalidation: "pasid" (all of one PASID) or "page"."""
        self._drop_fast()
        n = self.iotlb.invalidate_pasid(granularity, did, pasid, addr=addr, am=am)
        if not (granularity == "page" and ih):
            self.psc.invalidate_pasid(granularity, did, pasid, addr=addr, am=am)
        return n

    def invalidate_all(self) -> None:
        """Drop every cached entry (reset)."""
        self._drop_fast()
        for c in (self.context_cache, self.pasid_cache, self.iotlb, self.psc):
            c.invalidate_all()

    def statistics(self) -> dict[str, CacheStatistics]:
        """Counters of every cache (fast-path hits included)."""
        if self._fast:
            # fold without clearing: count pending hits then reset them
            legacy = sm = 0
            for v in self._fast.values():
                if v[5]:
                    if v[4] == 0:
                        legacy += v[5]
                    else:
                        sm += v[5]
                    v[5] = 0
            self.context_cache.hits += legacy + sm
            self.pasid_cache.hits += sm
            self.iotlb.hits += legacy + sm
        n = self._uncached_walks - self._uncached_folded
        if n:
            self._uncached_folded = self._uncached_walks
            self.context_cache.misses += n
            self.pasid_cache.misses += n
            self.iotlb.misses += n
        return {
            "context": self.context_cache.statistics(),
            "pasid": self.pasid_cache.statistics(),
            "iotlb": self.iotlb.statistics(),
            "psc": self.psc.statistics(),
        }


def _check_request(sid: int, addr: int, pasid: int | None) -> None:
    if not isinstance(sid, int) or not 0 <= sid <= 0xFFFF:
        raise ArgumentError("sid", sid, "a 16-bit source-id (bus << 8 | devfn)")
    if not isinstance(addr, int) or not 0 <= addr < 1 << 64:
        raise ArgumentError("addr", addr, "an unsigned 64-bit address")
    if pasid is not None and (not isinstance(pasid, int) or not 0 <= pasid < _PASID_LIMIT):
        raise ArgumentError("pasid", pasid, "None or a 20-bit PASID")
