"""Raw physical-memory images: translate requests, list every mapping, parse query files.

An image is untrusted input (a real machine's ``/dev/mem`` dump, QEMU ``pmemsave``, or
``vtdsim run --image-out``).  It is opened read-only through mmap
(:meth:`PhysicalMemory.from_image`); translations run the hardware's own page walker
(:class:`vtdsim.hw.walk.Walker`), so garbage, reserved bits and pointers beyond the file become
the architectural fault a real unit would record, never an exception.  Accessed/dirty bits the
walker writes land in the copy-on-write overlay (the file is never modified) and are dropped
after each batch of queries.  Within a batch they cannot change a result: A/D bits decide no
translation, and write permission is always established by a write walk.

Listing mappings walks every structure reachable from RTADDR.  Candidate leaves are found by
scanning the tables; each is then confirmed with the walker, so the list holds exactly the pages
that translate (entries the walker rejects are reported as problems).  A table reached twice
within one address space (a loop, or aliasing Linux never creates) is reported and not expanded
again, so the work is bounded by the image's size.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vtdsim.errors import ScenarioError, VtdsimError
from vtdsim.hw.caps import Capabilities
from vtdsim.hw.memory import PhysicalMemory
from vtdsim.hw.walk import PERM_R, PERM_W, Walker, WalkFault, WalkResult, WalkStep
from vtdsim.scenario.schema import format_bdf, parse_bdf
from vtdsim.spec.faults import reason_name, reason_text

__all__ = [
    "Mapping",
    "Query",
    "QueryResult",
    "enumerate_mappings",
    "open_image",
    "parse_queries",
    "parse_query",
    "translate",
    "translate_many",
]

_PAGE_MASK = ~0xFFF & ((1 << 64) - 1)
_Q = (1 << 64) - 1


def open_image(path: str | os.PathLike[str]) -> PhysicalMemory:
    """The image as read-only physical memory (typed error if it cannot be opened)."""
    p = Path(path)
    if p.is_dir():
        raise ScenarioError(str(p), "is a directory; expected a raw memory image file")
    try:
        return PhysicalMemory.from_image(p)
    except VtdsimError as e:
        raise ScenarioError(str(p), str(e)) from None


# --- queries ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Query:
    sid: int
    pasid: int | None
    iova: int
    write: bool = False
    privileged: bool = False

    @property
    def bdf(self) -> str:
        return format_bdf(self.sid)

    def text(self) -> str:
        p = "-" if self.pasid is None else f"{self.pasid:#x}"
        return f"{self.bdf} {p} {self.iova:#x} {'w' if self.write else 'r'}"


@dataclass
class QueryResult:
    query: Query
    ok: bool
    address: int | None = None
    page_size: int | None = None
    perm: int | None = None
    fault_reason: int | None = None
    fpd: bool = False
    trace: list[WalkStep] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        q = self.query
        out: dict[str, Any] = {
            "sid": q.bdf,
            "pasid": q.pasid,
            "iova": f"{q.iova:#x}",
            "access": "w" if q.write else "r",
            "ok": self.ok,
        }
        if self.ok:
            out["address"] = f"{self.address:#x}"
        else:
            assert self.fault_reason is not None
            out["fault_reason"] = f"{self.fault_reason:#04x}"
            out["fault_name"] = reason_name(self.fault_reason)
        return out

    def line(self) -> str:
        if self.ok:
            return f"{self.query.text()} -> {self.address:#x}"
        assert self.fault_reason is not None
        return (
            f"{self.query.text()} -> fault {self.fault_reason:#04x} "
            f"{reason_name(self.fault_reason)}: {reason_text(self.fault_reason)}"
        )


def parse_query(line: str, where: str) -> Query:
    """``BDF PASID-or-dash IOVA r|w``, for example ``00:02.0 - 0xfffe4828 r``."""
    parts = line.split()
    if len(parts) != 4:
        raise ScenarioError(
            where,
            f"{line.strip()!r}: expected 4 fields 'BDF PASID-or-dash IOVA r|w', "
            "for example '00:02.0 - 0xfffe4828 r'",
        )
    bdf, pasid_s, iova_s, acc = parts
    try:
        sid = parse_bdf(bdf)
    except ValueError as e:
        raise ScenarioError(where, f"BDF: {e}") from None
    pasid: int | None
    if pasid_s == "-":
        pasid = None
    else:
        try:
            pasid = int(pasid_s, 0)
        except ValueError:
            raise ScenarioError(
                where, f"PASID {pasid_s!r}: expected '-' or a number below 0x100000"
            ) from None
        if not 0 <= pasid < 1 << 20:
            raise ScenarioError(
                where, f"PASID {pasid_s!r}: expected '-' or a number below 0x100000"
            )
    try:
        iova = int(iova_s.replace("_", ""), 0)
    except ValueError:
        raise ScenarioError(where, f"IOVA {iova_s!r}: expected an address such as 0x1000") from None
    if not 0 <= iova <= _Q:
        raise ScenarioError(where, f"IOVA {iova_s!r}: expected a 64-bit address")
    if acc not in ("r", "w"):
        raise ScenarioError(where, f"access {acc!r}: expected 'r' or 'w'")
    return Query(sid, pasid, iova, acc == "w")


def parse_queries(path: str | os.PathLike[str]) -> list[Query]:
    """One query a line; blank lines and ``#`` comments are skipped."""
    p = Path(path)
    try:
        text = p.read_text("utf-8")
    except UnicodeDecodeError:
        raise ScenarioError(str(p), "not UTF-8 text; expected one query a line") from None
    except OSError as e:
        raise ScenarioError(str(p), f"cannot read the query file: {e.strerror}") from None
    out: list[Query] = []
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if line:
            out.append(parse_query(line, f"{p}: line {n}"))
    if not out:
        raise ScenarioError(str(p), "holds no query; expected lines 'BDF PASID-or-dash IOVA r|w'")
    return out


def _rta_ttm(rtaddr: int) -> tuple[int, int]:
    return rtaddr & _PAGE_MASK, (rtaddr >> 10) & 3


def translate(
    memory: PhysicalMemory,
    caps: Capabilities,
    rtaddr: int,
    q: Query,
    *,
    trace: bool = False,
    walker: Walker | None = None,
) -> QueryResult:
    """One uncached walk (as the hardware would do after a full invalidation)."""
    w = walker or Walker(memory, caps)
    rta, ttm = _rta_ttm(rtaddr)
    steps: list[WalkStep] | None = [] if trace else None
    try:
        res: WalkResult = w.walk(
            rta,
            ttm,
            q.sid,
            q.iova,
            pasid=q.pasid,
            write=q.write,
            privileged=q.privileged,
            trace=steps,
        )
    except WalkFault as f:
        return QueryResult(q, False, fault_reason=f.reason, fpd=f.fpd, trace=steps or [])
    return QueryResult(
        q,
        True,
        address=res.address,
        page_size=1 << res.page_shift,
        perm=res.perm,
        trace=steps or [],
    )


def translate_many(
    memory: PhysicalMemory, caps: Capabilities, rtaddr: int, queries: Sequence[Query]
) -> list[QueryResult]:
    """Every query against the image as it is (A/D write-backs are discarded afterwards)."""
    snap = memory.snapshot()
    try:
        w = Walker(memory, caps)
        out = []
        for q in queries:
            out.append(translate(memory, caps, rtaddr, q, walker=w))
        return out
    finally:
        memory.restore(snap)


# --- mappings --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mapping:
    """One translated page (or superpage) of one address space."""

    sid: int
    pasid: int | None  # None: requests without PASID (legacy, or the context's RID_PASID)
    iova: int
    size: int
    address: int
    read: bool
    write: bool
    kind: str  # "second-level", "first-level", "pass-through"

    def to_json(self) -> dict[str, Any]:
        return {
            "sid": format_bdf(self.sid),
            "pasid": self.pasid,
            "iova": f"{self.iova:#x}",
            "size": f"{self.size:#x}",
            "address": f"{self.address:#x}",
            "access": ("r" if self.read else "") + ("w" if self.write else ""),
            "kind": self.kind,
        }

    def line(self) -> str:
        p = "-" if self.pasid is None else f"{self.pasid:#x}"
        acc = ("r" if self.read else "-") + ("w" if self.write else "-")
        return (
            f"{format_bdf(self.sid)} {p:>7} {self.iova:#018x} +{self.size:#x} -> "
            f"{self.address:#x} {acc} {self.kind}"
        )


class _Problems(list[str]):
    """A list of problem messages that refuses to grow past ``cap`` (a hostile image could
    otherwise make one per context entry and PASID)."""

    def __init__(self, cap: int, where: str) -> None:
        super().__init__()
        self.cap = cap
        self.where = where

    def append(self, item: str) -> None:
        if len(self) >= self.cap:
            raise ScenarioError(
                self.where, f"more than {self.cap} problems: the image does not hold sane tables"
            )
        super().append(item)


@dataclass
class MappingReport:
    mappings: list[Mapping] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Space:
    sid: int
    pasid: int | None
    kind: str
    root: int
    levels: int


def _spaces(memory: PhysicalMemory, rtaddr: int, problems: list[str]) -> Iterator[_Space]:
    """Every (source id, PASID) address space reachable from RTADDR (read errors -> problems)."""
    rta, ttm = _rta_ttm(rtaddr)
    if ttm not in (0, 1):
        problems.append(f"RTADDR {rtaddr:#x}: TTM {ttm} is reserved; nothing translates")
        return

    def q(addr: int, n: int, what: str, *args: object) -> tuple[int, ...] | None:
        """Read ``n`` qwords; on failure record ``what.format(*args)`` (built only then)."""
        try:
            return memory.read_qwords(addr, n)
        except VtdsimError:
            problems.append(f"{what.format(*args)} at {addr:#x} is beyond the end of the image")
            return None

    dir_cache: dict[tuple[int, int], list[tuple[int, tuple[int, ...]]]] = {}
    for bus in range(256):
        root = q(rta + 16 * bus, 2, "root entry {:#04x}", bus)
        if root is None:
            return
        for half in range(2 if ttm == 1 else 1):
            if not root[half] & 1:
                continue
            table = root[half] & _PAGE_MASK
            per = 128 if ttm == 1 else 256
            esize = 32 if ttm == 1 else 16
            for i in range(per):
                devfn = half * 128 + i
                sid = bus << 8 | devfn
                ce = q(
                    table + esize * i,
                    esize // 8,
                    "{:02x}:{:02x}.{} context entry",
                    sid >> 8,
                    sid >> 3 & 0x1F,
                    sid & 7,
                )
                if ce is None:
                    break
                if not ce[0] & 1:
                    continue
                if ttm == 0:
                    tt = (ce[0] >> 2) & 3
                    if tt == 2:
                        yield _Space(sid, None, "pass-through", 0, 0)
                    else:
                        yield _Space(sid, None, "second-level", ce[0] & _PAGE_MASK, (ce[1] & 7) + 2)
                    continue
                rid_pasid = ce[1] & 0xFFFFF
                paside = bool(ce[0] & 8)
                key = (ce[0] & _PAGE_MASK, (ce[0] >> 9) & 7)
                entries = dir_cache.get(key)
                if entries is None:
                    entries = _present_pasid_entries(q, key[0], key[1], sid, problems)
                    dir_cache[key] = entries
                for pasid, pe in entries:
                    tag: int | None = None if pasid == rid_pasid else pasid
                    if tag is not None and not paside:
                        continue  # requests with a PASID are refused (PASIDE = 0)
                    pgtt = (pe[0] >> 6) & 7
                    if pgtt == 2:
                        yield _Space(
                            sid, tag, "second-level", pe[0] & _PAGE_MASK, ((pe[0] >> 2) & 7) + 2
                        )
                    elif pgtt == 1:
                        yield _Space(
                            sid, tag, "first-level", pe[2] & _PAGE_MASK, 4 + ((pe[2] >> 2) & 3)
                        )
                    elif pgtt == 4:
                        yield _Space(sid, tag, "pass-through", 0, 0)
                    elif pgtt == 3:
                        problems.append(
                            f"{format_bdf(sid)} PASID {pasid:#x}: nested translation is not "
                            "listed (its first-level tables hold guest-physical addresses)"
                        )
                    else:
                        problems.append(
                            f"{format_bdf(sid)} PASID {pasid:#x}: PGTT {pgtt} is invalid"
                        )


def _present_pasid_entries(
    q: Callable[..., tuple[int, ...] | None],
    dir_ptr: int,
    pdts: int,
    sid: int,
    problems: list[str],
) -> list[tuple[int, tuple[int, ...]]]:
    dev = format_bdf(sid)
    out: list[tuple[int, tuple[int, ...]]] = []
    seen_tables: set[int] = set()
    for d in range(1 << (pdts + 7)):
        de = q(dir_ptr + 8 * d, 1, "{}: PASID directory entry {}", dev, d)
        if de is None:
            break
        if not de[0] & 1:
            continue
        pt = de[0] & _PAGE_MASK
        if pt in seen_tables:
            problems.append(f"{dev}: PASID table {pt:#x} is referenced by two directory entries")
            continue
        seen_tables.add(pt)
        for k in range(64):
            pe = q(pt + 64 * k, 8, "{} PASID {:#x} entry", dev, d << 6 | k)
            if pe is None:
                break
            if pe[0] & 1:
                out.append((d << 6 | k, pe))
    return out


def _candidate_leaves(
    memory: PhysicalMemory, space: _Space, problems: list[str]
) -> Iterator[tuple[int, int]]:
    """(iova, size) of each leaf the tables hold (hardware 'present' semantics)."""
    seen: set[int] = set()
    first = space.kind == "first-level"
    label = f"{format_bdf(space.sid)} PASID {'-' if space.pasid is None else hex(space.pasid)}"

    def walk(table: int, level: int, start: int) -> Iterator[tuple[int, int]]:
        if table in seen:
            problems.append(
                f"{label}: page-table page {table:#x} reached twice (level {level}); not expanded "
                "again (loop or aliased tables)"
            )
            return
        seen.add(table)
        try:
            data = memory.read(table, 4096)
        except VtdsimError:
            problems.append(
                f"{label}: level-{level} table {table:#x} is beyond the end of the image"
            )
            return
        words = memoryview(bytes(data)).cast("Q")
        span = 1 << (12 + 9 * (level - 1))
        for i in range(512):
            v = int(words[i])
            if not (v & 1 if first else v & 3):
                continue
            iova = start + i * span
            if level == 1 or v & 0x80:
                yield iova, span
            else:
                yield from walk(v & 0x000F_FFFF_FFFF_F000, level - 1, iova)

    if 1 <= space.levels <= 5:
        yield from walk(space.root, space.levels, 0)
    else:
        problems.append(f"{label}: {space.levels}-level table is invalid")


def enumerate_mappings(
    memory: PhysicalMemory, caps: Capabilities, rtaddr: int, *, limit: int = 1 << 20
) -> MappingReport:
    """Every mapping reachable from RTADDR, each confirmed by the hardware walk."""
    report = MappingReport(problems=_Problems(limit, f"RTADDR {rtaddr:#x}"))
    snap = memory.snapshot()
    walker = Walker(memory, caps)
    rta, ttm = _rta_ttm(rtaddr)
    leaves: dict[tuple[int, int, str], list[tuple[int, int]]] = {}

    work = 0

    def budget() -> None:
        # every address space and every mapping costs one unit: bounded even when a hostile
        # image makes thousands of devices share the same tables
        nonlocal work
        work += 1
        if work > limit or len(report.problems) > limit:
            raise ScenarioError(
                f"RTADDR {rtaddr:#x}",
                f"more than {limit} address spaces, mappings and problems; raise --limit to "
                "list them all",
            )

    try:
        for space in _spaces(memory, rtaddr, report.problems):
            budget()
            if space.kind == "pass-through":
                report.mappings.append(
                    Mapping(space.sid, space.pasid, 0, 1 << caps.haw, 0, True, True, "pass-through")
                )
                continue
            key = (space.root, space.levels, space.kind)
            cands = leaves.get(key)
            if cands is None:
                cands = []
                for leaf in _candidate_leaves(memory, space, report.problems):
                    cands.append(leaf)
                    if len(cands) > limit:
                        raise ScenarioError(
                            f"RTADDR {rtaddr:#x}",
                            f"a table holds more than {limit} mappings; raise --limit",
                        )
                leaves[key] = cands
            for iova, _size in cands:
                budget()
                results: list[WalkResult | WalkFault] = []
                for write in (False, True):
                    try:
                        results.append(
                            walker.walk(rta, ttm, space.sid, iova, pasid=space.pasid, write=write)
                        )
                    except WalkFault as f:
                        results.append(f)
                rd, wr = results
                ok = [r for r in results if isinstance(r, WalkResult)]
                if not ok:
                    assert isinstance(rd, WalkFault)
                    report.problems.append(
                        f"{format_bdf(space.sid)} PASID "
                        f"{'-' if space.pasid is None else hex(space.pasid)} IOVA {iova:#x}: "
                        f"entry present but the walk faults {rd.reason:#04x} "
                        f"{reason_name(rd.reason)}"
                    )
                    continue
                res = ok[0]
                report.mappings.append(
                    Mapping(
                        space.sid,
                        space.pasid,
                        iova,
                        1 << res.page_shift,
                        res.address,
                        isinstance(rd, WalkResult) and bool(rd.perm & (PERM_R | PERM_R << 3)),
                        isinstance(wr, WalkResult) and bool(wr.perm & (PERM_W | PERM_W << 3)),
                        space.kind,
                    )
                )
    finally:
        memory.restore(snap)
    return report
