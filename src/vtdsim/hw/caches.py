"""The remapping unit's translation caches: context cache, PASID cache, IOTLB and
paging-structure caches (VT-d spec 6.2 "Translation Caches", 6.5 "Invalidation").

Every cache is a :class:`TranslationCache`: a map from a lookup key to an entry, with the
capacity, associativity and replacement policy of a :class:`~vtdsim.hw.caps.CacheGeometry`
(``entries=None``: unbounded and exact; ``entries=0``: disabled, every lookup misses).  Entries
stay valid after the tables in memory change until an invalidation removes them, which is what
makes a missing invalidation visible as a stale translation.

Tags (what an invalidation can select on), after the spec:

* context cache -- looked up by source-id; legacy entries are tagged with the context entry's
  DID; scalable-mode context entries have no DID, so a domain-selective context invalidation
  drops every scalable-mode entry (spec 6.5.2.1: SM context-cache entries are tagged by SID
  only; Linux always follows with PASID-cache and IOTLB flushes).  Device-selective with the
  function mask FM (00: none, 01: function bit 2, 10: bits 2:1, 11: bits 2:0).
* PASID cache -- looked up by (source-id, PASID) and tagged by DID and PASID (6.2.2; Linux
  ``qi_flush_pasid_cache``: domain-selective, PASID-selective, global).
* IOTLB -- tagged by DID, PASID (None in legacy mode), page number and page size; holds the
  HPA of the page and the permissions (6.2.3).  Domain/page-selective IOTLB invalidation acts on
  second-level, nested, pass-through and legacy entries; PASID-based IOTLB invalidation acts on
  first-level, nested and pass-through entries of one PASID (6.5.2.4/6.5.2.6; Linux
  ``intel_pasid_tear_down_entry`` uses P_IOTLB for PT/FL-only and DSI for SL).  Global drops all.
* paging-structure caches -- non-leaf entries: the address of the next table for an address
  region, tagged by DID, PASID, stage and level (6.2.4); dropped by IOTLB invalidations unless
  a page-selective invalidation sets IH (invalidation hint).
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from vtdsim.errors import ArgumentError
from vtdsim.hw.caps import CacheGeometry

__all__ = [
    "CacheStatistics",
    "ContextCache",
    "Iotlb",
    "IotlbEntry",
    "PagingStructureCache",
    "PasidCache",
    "PscEntry",
    "TranslationCache",
    "function_mask",
]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

#: PGTT values (plus 0 for legacy-mode translations) each invalidation kind reaches.
IOTLB_DSI_PGTTS = frozenset({0, 2, 3, 4})
PIOTLB_PGTTS = frozenset({1, 3, 4})


@dataclass(frozen=True, slots=True)
class CacheStatistics:
    """Counters of one cache: lookups that hit or missed, capacity evictions, entries removed
    by invalidation, and entries currently held."""

    hits: int
    misses: int
    evictions: int
    invalidations: int
    entries: int


def _stable(key: object) -> int:
    """A hash that does not vary between runs (``hash(None)`` does on Python 3.11)."""
    if key is None:
        return -1
    if isinstance(key, tuple):
        h = 0x345678
        for k in key:
            h = (h * 1000003) ^ _stable(k)
            h &= (1 << 61) - 1
        return h
    if isinstance(key, int):
        return key
    raise ArgumentError("cache key", key, "ints, None or tuples of them")


class TranslationCache(Generic[K, V]):
    """A cache of ``geometry`` (capacity, ways, replacement) mapping keys to entries."""

    def __init__(
        self,
        geometry: CacheGeometry,
        name: str,
        on_evict: Callable[[], None] | None = None,
    ) -> None:
        self.geometry = geometry
        self.name = name
        self.on_evict = on_evict
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        self.invalidations = 0
        entries = geometry.entries
        self.enabled = entries != 0
        self.bounded = entries is not None and entries > 0
        self._lru = geometry.replacement == "lru"
        self._rng = random.Random(geometry.seed)
        if self.bounded:
            assert entries is not None
            ways = geometry.ways or entries
            self._nsets = entries // ways
            self._ways = ways
        else:
            self._nsets = 1
            self._ways = 0
        # one ordered dict per set, in a tuple (the sets are fixed; each changes in place); an
        # unbounded or a disabled cache keeps its entries in ``_all`` and has no set (nothing
        # for the explorer's snapshot to compare at every restore)
        self._sets: tuple[OrderedDict[K, V], ...] = (
            tuple(OrderedDict() for _ in range(self._nsets)) if self.bounded else ()
        )
        self._all: dict[K, V] = {}

    # -- lookup / fill ---------------------------------------------------------------------

    def _set(self, key: K) -> OrderedDict[K, V]:
        if self._nsets == 1:
            return self._sets[0]
        return self._sets[_stable(key) % self._nsets]

    def lookup(self, key: K) -> V | None:
        """The entry for ``key`` (counted as a hit or a miss)."""
        if not self.bounded:
            v = self._all.get(key)
        else:
            s = self._set(key)
            v = s.get(key)
            if v is not None and self._lru:
                s.move_to_end(key)
        if v is None:
            self.misses += 1
        else:
            self.hits += 1
        return v

    def peek(self, key: K) -> V | None:
        """The entry for ``key`` without counting or touching the replacement order."""
        if not self.bounded:
            return self._all.get(key)
        return self._set(key).get(key)

    def insert(self, key: K, value: V) -> None:
        """Fill ``key``; may evict another entry of the same set."""
        if not self.enabled:
            return
        if not self.bounded:
            self._all[key] = value
            return
        s = self._set(key)
        if key in s:
            s[key] = value
            if self._lru:
                s.move_to_end(key)
            return
        if len(s) >= self._ways:
            if self.geometry.replacement == "random":
                victim = self._rng.choice(list(s))
                del s[victim]
            else:
                s.popitem(last=False)  # LRU: least recent first; FIFO: oldest first
            self.evictions += 1
            if self.on_evict is not None:
                self.on_evict()
        s[key] = value

    # -- invalidation ----------------------------------------------------------------------

    def items(self) -> Iterator[tuple[K, V]]:
        if not self.bounded:
            yield from list(self._all.items())
        else:
            for s in self._sets:
                yield from list(s.items())

    def invalidate_where(self, pred: Callable[[K, V], bool]) -> int:
        """Drop every entry for which ``pred(key, value)``; returns how many."""
        n = 0
        if not self.bounded:
            if not self._all:
                return 0  # nothing cached: nothing to test
            dead = [k for k, v in self._all.items() if pred(k, v)]
            for k in dead:
                del self._all[k]
            n = len(dead)
        else:
            for s in self._sets:
                dead = [k for k, v in s.items() if pred(k, v)]
                for k in dead:
                    del s[k]
                n += len(dead)
        self.invalidations += n
        return n

    def invalidate_all(self) -> int:
        n = len(self)
        self._all.clear()
        for s in self._sets:
            s.clear()
        self.invalidations += n
        return n

    def __len__(self) -> int:
        if not self.bounded:
            return len(self._all)
        return sum(len(s) for s in self._sets)

    def __contains__(self, key: object) -> bool:
        if not self.bounded:
            return key in self._all
        return any(key in s for s in self._sets)

    def statistics(self) -> CacheStatistics:
        return CacheStatistics(
            self.hits, self.misses, self.evictions, self.invalidations, len(self)
        )

    def __repr__(self) -> str:
        g = self.geometry
        cap = "unbounded" if g.entries is None else f"{g.entries} entries"
        return f"<{type(self).__name__} {self.name}: {cap}, {len(self)} held>"


def function_mask(fm: int) -> int:
    """Source-id bits ignored by a device-selective context invalidation with FM ``fm``
    (VT-d 6.5.2.1 / CCMD_REG.FM: 01 masks function bit 2, 10 bits 2:1, 11 bits 2:0)."""
    if not 0 <= fm <= 3:
        raise ArgumentError("fm", fm, "0..3 (function mask)")
    return (0b111 << (3 - fm)) & 0b111


class ContextCache(TranslationCache[int, Any]):
    """Context cache: key = source-id; value = :class:`vtdsim.hw.walk.ContextInfo`."""

    def invalidate(
        self, granularity: str, did: int | None = None, sid: int | None = None, fm: int = 0
    ) -> int:
        if granularity == "global":
            return self.invalidate_all()
        if granularity == "domain":
            if did is None:
                raise ArgumentError("did", did, "a domain id for domain-selective invalidation")
            # legacy entries carry the DID; scalable-mode entries have none (see module doc)
            return self.invalidate_where(lambda k, v: v.mode == 1 or v.did == did)
        if granularity == "device":
            if sid is None:
                raise ArgumentError("sid", sid, "a source-id for device-selective invalidation")
            keep = ~function_mask(fm) & 0xFFFF
            want = sid & keep
            return self.invalidate_where(lambda k, v: k & keep == want)
        raise ArgumentError("granularity", granularity, "'global', 'domain' or 'device'")


class PasidCache(TranslationCache[tuple[int, int], Any]):
    """PASID cache: key = (source-id, PASID); value = :class:`vtdsim.hw.walk.PasidInfo`
    (tagged by its ``did`` and ``pasid``)."""

    def invalidate(self, granularity: str, did: int | None = None, pasid: int | None = None) -> int:
        if granularity == "global":
            return self.invalidate_all()
        if did is None:
            raise ArgumentError("did", did, "a domain id for a non-global PASID-cache flush")
        if granularity == "domain":
            return self.invalidate_where(lambda k, v: v.did == did)
        if granularity == "pasid":
            if pasid is None:
                raise ArgumentError("pasid", pasid, "a PASID for PASID-selective invalidation")
            return self.invalidate_where(lambda k, v: v.did == did and v.pasid == pasid)
        raise ArgumentError("granularity", granularity, "'global', 'domain' or 'pasid'")


class IotlbEntry:
    """A cached translation: page ``base`` (input) -> ``hpa`` (page base), size ``1<<shift``,
    permissions ``perm`` (walk.PERM_* bits), tags ``did``/``pasid``/``pgtt``."""

    __slots__ = ("ats", "base", "did", "hpa", "pasid", "perm", "pgtt", "shift")

    def __init__(
        self,
        did: int,
        pasid: int | None,
        base: int,
        shift: int,
        hpa: int,
        perm: int,
        pgtt: int,
        ats: bool,
    ) -> None:
        self.did = did
        self.pasid = pasid
        self.base = base
        self.shift = shift
        self.hpa = hpa
        self.perm = perm
        self.pgtt = pgtt
        self.ats = ats

    def __repr__(self) -> str:
        return (
            f"<IotlbEntry did={self.did} pasid={self.pasid} {self.base:#x}+{1 << self.shift:#x}"
            f" -> {self.hpa:#x} perm={self.perm:#04x}>"
        )


IotlbKey = tuple[int, int | None, int, int]  # (did, pasid, shift, base >> shift)


def _overlaps(base: int, shift: int, addr: int, am: int) -> bool:
    lo = addr & ~((1 << (12 + am)) - 1)
    hi = lo + (1 << (12 + am))
    return base < hi and lo < base + (1 << shift)


def _check_addr(addr: int, am: int) -> None:
    if not isinstance(addr, int) or addr < 0:
        raise ArgumentError("addr", addr, "a non-negative address")
    if not isinstance(am, int) or not 0 <= am <= 63:
        raise ArgumentError("am", am, "an address mask 0..63")


class _Tagged(Protocol):
    """What an IOTLB or paging-structure-cache entry carries for invalidation."""

    did: int
    pasid: int | None
    pgtt: int
    base: int
    shift: int


T = TypeVar("T", bound=_Tagged)


class _DomainTaggedCache(TranslationCache[K, T]):
    """A cache whose entries carry ``did``, ``pasid``, ``pgtt``, ``base`` and ``shift``: the
    IOTLB and the paging-structure caches, which the same IOTLB and PASID-based IOTLB
    invalidations reach (VT-d 6.5.2.3, 6.5.2.4)."""

    flush_name = "flush"

    def invalidate(
        self, granularity: str, did: int | None = None, addr: int = 0, am: int = 0
    ) -> int:
        if granularity == "global":
            return self.invalidate_all()
        if did is None:
            raise ArgumentError("did", did, f"a domain id for a non-global {self.flush_name}")
        pg = IOTLB_DSI_PGTTS
        if granularity == "domain":
            return self.invalidate_where(lambda k, v: v.did == did and v.pgtt in pg)
        if granularity == "page":
            return self.invalidate_page(did, addr, am)
        raise ArgumentError("granularity", granularity, "'global', 'domain' or 'page'")

    def invalidate_page(self, did: int | None, addr: int, am: int) -> int:
        """Page-selective invalidation (``invalidate("page", ...)``): entries of ``did``
        reachable by domain-selective flushes that overlap the 2^``am`` pages at ``addr``."""
        if did is None:
            raise ArgumentError("did", did, f"a domain id for a non-global {self.flush_name}")
        if type(addr) is not int or addr < 0 or type(am) is not int or not 0 <= am <= 63:
            _check_addr(addr, am)  # the typed error (int subclasses pass)
        return _invalidate_overlapping(self, did, IOTLB_DSI_PGTTS, addr, am)

    def invalidate_pasid(
        self, granularity: str, did: int, pasid: int, addr: int = 0, am: int = 0
    ) -> int:
        pg = PIOTLB_PGTTS
        if granularity == "pasid":
            return self.invalidate_where(
                lambda k, v: v.did == did and v.pasid == pasid and v.pgtt in pg
            )
        if granularity == "page":
            _check_addr(addr, am)
            return self.invalidate_where(
                lambda k, v: (
                    v.did == did
                    and v.pasid == pasid
                    and v.pgtt in pg
                    and _overlaps(v.base, v.shift, addr, am)
                )
            )
        raise ArgumentError("granularity", granularity, "'pasid' or 'page'")


class Iotlb(_DomainTaggedCache[IotlbKey, IotlbEntry]):
    """IOTLB: key ``(did, pasid, shift, page number)``."""

    flush_name = "IOTLB flush"

    def find(self, did: int, pasid: int | None, addr: int) -> IotlbEntry | None:
        """The entry covering ``addr`` at any page size (one counted lookup)."""
        if not self.enabled:
            self.misses += 1
            return None
        peek = self.peek
        for shift in (12, 21, 30):
            key = (did, pasid, shift, addr >> shift)
            e = peek(key)
            if e is not None:
                return self.lookup(key)  # counts the hit, updates LRU
        self.misses += 1
        return None

    def fill(self, e: IotlbEntry) -> None:
        self.insert((e.did, e.pasid, e.shift, e.base >> e.shift), e)


def _invalidate_overlapping(
    cache: TranslationCache[Any, Any], did: int, pg: frozenset[int], addr: int, am: int
) -> int:
    """Drop the entries of ``did`` with a PGTT in ``pg`` overlapping the 2^``am`` pages at
    ``addr`` (the predicate of a page-selective flush, with the block bounds computed once)."""
    lo = addr & ~((1 << (12 + am)) - 1)
    hi = lo + (1 << (12 + am))
    if not cache.bounded:
        # invalidate_where's unbounded branch with the predicate inlined (the strict unmap's
        # PSI after a DMA: no lambda call per entry); same entries dropped, same counter.
        entries = cache._all
        if not entries:
            return 0
        dead = []
        for k, v in entries.items():
            if v.did == did and v.pgtt in pg and v.base < hi and lo < v.base + (1 << v.shift):
                dead.append(k)
        for k in dead:
            del entries[k]
        n = len(dead)
        cache.invalidations += n
        return n
    return cache.invalidate_where(
        lambda k, v: v.did == did and v.pgtt in pg and v.base < hi and lo < v.base + (1 << v.shift)
    )


class PscEntry:
    """A cached non-leaf entry: the table at ``level`` for the region ``base``..+2^shift."""

    __slots__ = ("acc", "base", "did", "level", "pasid", "pgtt", "shift", "table")

    def __init__(
        self,
        did: int,
        pasid: int | None,
        pgtt: int,
        level: int,
        base: int,
        table: int,
        acc: int,
    ) -> None:
        self.did = did
        self.pasid = pasid
        self.pgtt = pgtt
        self.level = level
        self.shift = 12 + 9 * level
        self.base = base
        self.table = table
        self.acc = acc

    def __repr__(self) -> str:
        return (
            f"<PscEntry did={self.did} pasid={self.pasid} L{self.level} "
            f"{self.base:#x}+{1 << self.shift:#x} -> table {self.table:#x}>"
        )


PscKey = tuple[int, int | None, int, int, int]  # (did, pasid, pgtt, level, addr >> shift)


class PagingStructureCache(_DomainTaggedCache[PscKey, PscEntry]):
    """Paging-structure caches (all levels, both stages) in one store."""
