"""Linux's Intel IOMMU debugfs files, produced from physical memory and registers only.

The three files of ``/sys/kernel/debug/iommu/intel/`` that show translation state are rebuilt
line for line (format strings from Linux ``drivers/iommu/intel/debugfs.c``, gregkh/linux at
0f7f342, the aux-domain era; cited at each function), so the output of a model run or of a raw
memory image can be diffed against a real machine:

* :func:`dmar_translation_struct` — root, context and present PASID-table entries per unit;
* :func:`domain_translation_struct` — every device's RID-domain page table, leaf by leaf;
* :func:`invalidation_queue` — the queued-invalidation ring and each slot's status.

Everything is read from a :class:`~vtdsim.hw.memory.PhysicalMemory` and from the registers of a
:class:`RegisterView` (a live ``RemappingUnit`` is one; :class:`StaticRegisters` stands in for
the registers of a machine whose memory image is all we have).  Nothing reads driver objects,
so a live model and its exported image give identical dumps.

Hostile memory (pointers beyond the image, tables that loop or alias) raises
:class:`~vtdsim.errors.ScenarioError` naming the structure; output is produced only when the whole
dump succeeded.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from vtdsim.errors import MemoryAccessError, ScenarioError
from vtdsim.hw.memory import PhysicalMemory
from vtdsim.spec import registers as R

__all__ = [
    "DUMPS",
    "RegisterView",
    "StaticRegisters",
    "device_domain_translation_struct",
    "dmar_translation_struct",
    "domain_translation_struct",
    "invalidation_queue",
]

# Register offsets and bits from vtdsim.spec.registers (Linux DMAR_*_REG, DMA_GSTS_*,
# DMA_RTADDR_SMT, ecap_qis/ecap_smts; VT-d spec 11.4).
REG_ECAP = R.ECAP
REG_GSTS = R.GSTS
REG_RTADDR = R.RTADDR
REG_IQH = R.IQH
REG_IQT = R.IQT
REG_IQA = R.IQA
GSTS_TES = R.GSTS_LAYOUT.field("TES").mask
GSTS_QIES = R.GSTS_LAYOUT.field("QIES").mask
ECAP_QI = R.ECAP_LAYOUT.field("QI").mask
ECAP_SMTS = R.ECAP_LAYOUT.field("SMTS").mask
_TTM = R.RTADDR_LAYOUT.field("TTM")
RTADDR_SMT = 1 << _TTM.shift  # DMA_RTADDR_SMT: TTM = 01b (scalable mode)
IQA_DW = R.IQA_LAYOUT.field("DW").mask

VTD_PAGE_MASK = ~0xFFF & ((1 << 64) - 1)
DMA_FL_PTE_XD = 1 << 63
DMA_PTE_LARGE_PAGE = 1 << 7
QI_LENGTH = 256  # Linux dmar.h
DMAR_IQ_SHIFT = 4
QI_WAIT_TYPE = 5
QI_IWD_STATUS_WRITE = 1 << 5

_PAGE = 4096


class RegisterView(Protocol):
    """What the dumps need of a remapping unit: its name and MMIO reads."""

    @property
    def name(self) -> str: ...

    def read32(self, offset: int) -> int: ...

    def read64(self, offset: int) -> int: ...


@dataclass
class StaticRegisters:
    """Register values of a unit known only from outside (a real machine's memory image).

    ``rtaddr`` is the RTADDR register (table address | TTM << 10); translation is taken as
    enabled.  The queue registers are needed only for :func:`invalidation_queue`.
    """

    name: str = "dmar0"
    rtaddr: int = 0
    iqa: int = 0
    iqh: int = 0
    iqt: int = 0
    ecap: int | None = None
    gsts: int | None = None
    extra: dict[int, int] = field(default_factory=dict)

    def _value(self, offset: int) -> int:
        if offset == REG_RTADDR:
            return self.rtaddr
        if offset == REG_IQA:
            return self.iqa
        if offset == REG_IQH:
            return self.iqh
        if offset == REG_IQT:
            return self.iqt
        if offset == REG_GSTS:
            if self.gsts is not None:
                return self.gsts
            return GSTS_TES | (GSTS_QIES if self.iqa else 0)
        if offset == REG_ECAP:
            if self.ecap is not None:
                return self.ecap
            sm = self.rtaddr & RTADDR_SMT or self.iqa & IQA_DW
            return (ECAP_QI if self.iqa else 0) | (ECAP_SMTS if sm else 0)
        return self.extra.get(offset, 0)

    def read32(self, offset: int) -> int:
        return self._value(offset) & 0xFFFF_FFFF

    def read64(self, offset: int) -> int:
        return self._value(offset)


class _Reader:
    """Qword reads that turn an access beyond memory into a ScenarioError naming the pointer."""

    def __init__(self, memory: PhysicalMemory) -> None:
        self.memory = memory
        self._pages: dict[int, memoryview] = {}

    def page(self, addr: int, what: str) -> memoryview:
        """The 4 KiB page at ``addr`` (aligned) as 512 qwords."""
        base = addr & VTD_PAGE_MASK
        q = self._pages.get(base)
        if q is None:
            try:
                data = self.memory.read(base, _PAGE)
            except MemoryAccessError:
                raise ScenarioError(
                    what,
                    f"points to {base:#x}, beyond the end of physical memory "
                    f"({self.memory.size:#x} bytes)",
                ) from None
            q = memoryview(bytes(data)).cast("Q")
            if len(self._pages) < 4096:
                self._pages[base] = q
        return q

    def qwords(self, addr: int, n: int, what: str) -> tuple[int, ...]:
        if (addr & 0xFFF) + 8 * n <= _PAGE and addr & 7 == 0:
            q = self.page(addr, what)
            i = (addr & 0xFFF) >> 3
            return tuple(q[i : i + n])
        try:
            return self.memory.read_qwords(addr, n)
        except MemoryAccessError:
            raise ScenarioError(
                what,
                f"points to {addr:#x}, beyond the end of physical memory "
                f"({self.memory.size:#x} bytes)",
            ) from None


def _bdf(bus: int, devfn: int) -> str:
    return f"{bus:02x}:{devfn >> 3:02x}.{devfn & 7:x}"


def _context_addr(
    r: _Reader, root: int, bus: int, devfn: int, sm: bool
) -> tuple[int, int, int] | None:
    """Linux ``iommu_context_addr(iommu, bus, devfn, 0)``: address of the context entry, or
    None when the root entry (half) is not present.  Returns (address, root lo, root hi)."""
    lo, hi = r.qwords(root + bus * 16, 2, f"root table at {root:#x}")
    entry = lo
    idx = devfn
    if sm:
        if devfn >= 0x80:
            idx -= 0x80
            entry = hi
        idx *= 2  # 16-byte index: SM context entries are 32 bytes
    if not entry & 1:
        return None
    return (entry & VTD_PAGE_MASK) + idx * 16, lo, hi


def _units_walk_header(unit: RegisterView) -> tuple[int, bool] | None:
    if not unit.read32(REG_GSTS) & GSTS_TES:
        return None
    rtaddr = unit.read64(REG_RTADDR)
    return rtaddr & VTD_PAGE_MASK, bool(rtaddr & RTADDR_SMT)


def dmar_translation_struct(memory: PhysicalMemory, units: Sequence[RegisterView]) -> str:
    """``dmar_translation_struct`` (Linux debugfs.c ``dmar_translation_struct_show``,
    ``root_tbl_walk``, ``ctx_tbl_walk``, ``pasid_dir_walk``, ``pasid_tbl_walk``,
    ``print_tbl_walk``).

    Faithful details: a bus whose root entry (half) is not present ends that bus's walk
    (``iommu_context_addr`` returns NULL and ``ctx_tbl_walk`` returns); in scalable mode (RTADDR
    TTM bit 10, read from the register as Linux does) one row per *present* PASID entry, none for
    a context without one; PASID directory size ``1 << (PDTS + 7)`` (``get_pasid_dir_size``).
    """
    r = _Reader(memory)
    out: list[str] = []
    for unit in units:
        hdr = _units_walk_header(unit)
        if hdr is None:
            out.append(f"DMA Remapping is not enabled on {unit.name}\n")
            continue
        root, sm = hdr
        out.append(f"IOMMU {unit.name}: Root Table Address: {_hex(root)}\n")
        out.append("B.D.F\tRoot_entry\t\t\t\tContext_entry\t\t\t\tPASID\tPASID_table_entry\n")
        pasid_rows: dict[int, list[tuple[int, tuple[int, ...]]]] = {}
        for bus in range(256):
            for devfn in range(256):
                found = _context_addr(r, root, bus, devfn, sm)
                if found is None:
                    break
                caddr, rlo, rhi = found
                where = f"{unit.name} {_bdf(bus, devfn)} context entry at {caddr:#x}"
                clo, chi = r.qwords(caddr, 2, where)
                if not clo & 1:
                    continue
                prefix = (
                    f"{_bdf(bus, devfn)}\t0x{rhi:016x}:0x{rlo:016x}\t0x{chi:016x}:0x{clo:016x}\t"
                )
                if not sm:
                    out.append(prefix + f"{-1:<6d}\t0x{0:016x}:0x{0:016x}:0x{0:016x}\n")
                    continue
                dir_ptr = clo & VTD_PAGE_MASK
                pdts = (clo >> 9) & 7
                rows = pasid_rows.get(dir_ptr << 3 | pdts)
                if rows is None:
                    rows = list(_present_pasid_entries(r, dir_ptr, 1 << (pdts + 7), where))
                    pasid_rows[dir_ptr << 3 | pdts] = rows
                for pasid, pe in rows:
                    out.append(
                        prefix + f"{pasid:<6d}\t0x{pe[2]:016x}:0x{pe[1]:016x}:0x{pe[0]:016x}\n"
                    )
        out.append("\n")
    return "".join(out)


def _hex(v: int) -> str:
    return f"0x{v:x}"


def _present_pasid_entries(
    r: _Reader, dir_ptr: int, dir_size: int, where: str
) -> Iterator[tuple[int, tuple[int, ...]]]:
    """(pasid, qwords 0..2) of every present PASID-table entry under a directory."""
    for dir_idx in range(dir_size):
        de = r.qwords(dir_ptr + dir_idx * 8, 1, f"{where}: PASID directory at {dir_ptr:#x}")[0]
        if not de & 1:
            continue
        table = de & VTD_PAGE_MASK
        q = r.page(
            table, f"{where}: PASID directory entry {dir_idx:#x} at {dir_ptr + 8 * dir_idx:#x}"
        )
        for i in range(64):
            if q[i * 8] & 1:
                yield (dir_idx << 6) + i, (q[i * 8], q[i * 8 + 1], q[i * 8 + 2])


@dataclass(frozen=True)
class AddressSpace:
    """One page table found in memory: who uses it and how to walk it."""

    unit: str
    sid: int
    pasid: int | None  # None: legacy mode (no PASID)
    kind: str  # "second-level" | "first-level"
    pgd: int
    levels: int


def rid_and_pasid_tables(
    memory: PhysicalMemory, units: Sequence[RegisterView], *, all_pasids: bool
) -> Iterator[AddressSpace]:
    """The page tables reachable from each unit's root table, in bus/devfn/PASID order.

    With ``all_pasids`` False, only each device's RID domain (scalable mode: the PASID entry of
    the context's RID_PASID; legacy: the context's SLPTPTR).  Pass-through and nested entries
    have no table of their own to list and are skipped.
    """
    r = _Reader(memory)
    for unit in units:
        hdr = _units_walk_header(unit)
        if hdr is None:
            continue
        root, sm = hdr
        for bus in range(256):
            for devfn in range(256):
                found = _context_addr(r, root, bus, devfn, sm)
                if found is None:
                    break
                caddr = found[0]
                where = f"{unit.name} {_bdf(bus, devfn)} context entry at {caddr:#x}"
                clo, chi = r.qwords(caddr, 2, where)
                if not clo & 1:
                    continue
                sid = bus << 8 | devfn
                if not sm:
                    if (clo >> 2) & 3 in (0, 1):
                        yield AddressSpace(
                            unit.name, sid, None, "second-level", clo & VTD_PAGE_MASK, (chi & 7) + 2
                        )
                    continue
                rid_pasid = chi & 0xFFFFF
                dir_size = 1 << (((clo >> 9) & 7) + 7)
                for pasid, pe in _present_pasid_entries(r, clo & VTD_PAGE_MASK, dir_size, where):
                    if not all_pasids and pasid != rid_pasid:
                        continue
                    pgtt = (pe[0] >> 6) & 7
                    if pgtt == 2:
                        yield AddressSpace(
                            unit.name,
                            sid,
                            pasid,
                            "second-level",
                            pe[0] & VTD_PAGE_MASK,
                            ((pe[0] >> 2) & 7) + 2,
                        )
                    elif pgtt == 1:
                        yield AddressSpace(
                            unit.name,
                            sid,
                            pasid,
                            "first-level",
                            pe[2] & VTD_PAGE_MASK,
                            4 + ((pe[2] >> 2) & 3),
                        )


def leaf_paths(
    r: _Reader, pgd: int, levels: int, where: str, *, max_rows: int = 1 << 20
) -> Iterator[tuple[int, tuple[int, ...]]]:
    """Linux ``pgtable_walk_level``: (iova, path[0..5]) for each present leaf or superpage.

    ``path[level]`` holds the entry at that level (1 = PTE ... 5 = PML5E), 0 when unused.
    A table reached twice (a loop or aliased tables, never made by Linux) raises ScenarioError;
    so does a tree with more than ``max_rows`` leaves.
    """
    seen: set[int] = set()
    count = 0
    path = [0] * 6

    def walk(table: int, level: int, start: int) -> Iterator[tuple[int, tuple[int, ...]]]:
        nonlocal count
        if level > 5 or level < 1:
            return
        if table in seen:
            raise ScenarioError(
                where,
                f"page-table page {table:#x} is reached twice (level {level}): the tables loop "
                "or alias",
            )
        seen.add(table)
        q = r.page(table, f"{where}: level-{level} table")
        step = 1 << (12 + 9 * (level - 1))
        for i in range(512):
            v = q[i]
            if v & 3:
                path[level] = v
                if v & DMA_PTE_LARGE_PAGE or level == 1:
                    count += 1
                    if count > max_rows:
                        raise ScenarioError(where, f"more than {max_rows} leaf entries")
                    yield (start + i * step) & ((1 << 64) - 1), tuple(path)
                else:
                    yield from walk(v & VTD_PAGE_MASK & ~DMA_FL_PTE_XD, level - 1, start + i * step)
                path[level] = 0

    yield from walk(pgd & VTD_PAGE_MASK, levels, 0)


def domain_translation_struct(
    memory: PhysicalMemory, units: Sequence[RegisterView], *, all_pasids: bool = False
) -> str:
    """``domain_translation_struct`` (Linux debugfs.c ``show_device_domain_translation``,
    ``pgtable_walk_level``, ``dump_page_info``; aux-era format with "with pasid").

    From memory alone, a device's RID domain is the table its context uses for requests without
    a PASID (scalable mode: the PASID entry at the context's RID_PASID, whose number is printed
    as the pasid; Linux prints the RID domain's ``default_pasid``, 0).  Devices are taken in
    bus/devfn order (``bus_for_each_dev`` on PCI) and named ``0000:bb:dd.f`` (``dev_name``).
    ``all_pasids`` adds one block per other present PASID entry with a page table, in the same
    format (what Linux would print for an aux domain, whose ``default_pasid`` is that PASID).
    """
    r = _Reader(memory)
    out: list[str] = []
    # bus_for_each_dev walks PCI devices in bus order, whatever unit covers them
    spaces = sorted(rid_and_pasid_tables(memory, units, all_pasids=all_pasids), key=lambda s: s.sid)
    for space in spaces:
        name = f"0000:{_bdf(space.sid >> 8, space.sid & 0xFF)}"
        pasid = space.pasid if space.pasid is not None else 0
        block = [
            f"Device {name} with pasid {pasid} @{_hex(space.pgd)}\n",
            "IOVA_PFN\t\tPML5E\t\t\tPML4E\t\t\tPDPE\t\t\tPDE\t\t\tPTE\n",
        ]
        where = f"{space.unit} {name} pasid {pasid} table {space.pgd:#x}"
        for iova, p in leaf_paths(r, space.pgd, space.levels, where):
            block.append(
                f"0x{iova >> 12:013x} |\t0x{p[5]:016x}\t0x{p[4]:016x}\t0x{p[3]:016x}"
                f"\t0x{p[2]:016x}\t0x{p[1]:016x}\n"
            )
        block.append("\n")
        out.extend(block)
    return "".join(out)


def device_domain_translation_struct(
    memory: PhysicalMemory, units: Sequence[RegisterView], sid: int, pasid: int | None = None
) -> str:
    """Linux 6.7+ per-device files ``<bdf>/domain_translation_struct`` (``pasid`` None: the
    RID's, ``IOMMU_NO_PASID`` = 0) and ``<bdf>/<pasid>/domain_translation_struct``
    (Linux debugfs.c ``domain_translation_struct_show``, Jingqi Liu's "Support dumping a
    specified page table", 2023).

    The first unit with a present context entry for the device is used; scalable mode looks the
    PASID up in the directory and table (no check against the directory size, as Linux) and
    takes the first-level pointer for PGTT 1, the second-level pointer for PGTT 2/3, and the
    width from the entry's AW for both; legacy mode uses the context's SLPTPTR for TT 0/1.
    """
    r = _Reader(memory)
    out: list[str] = []
    bus, devfn = sid >> 8 & 0xFF, sid & 0xFF
    p = 0 if pasid is None else pasid
    for unit in units:
        hdr = _units_walk_header(unit)
        if hdr is None:
            out.append(f"DMA Remapping is not enabled on {unit.name}\n")
            continue
        root, sm = hdr
        found = _context_addr(r, root, bus, devfn, sm)
        if found is None:
            continue
        caddr = found[0]
        where = f"{unit.name} {_bdf(bus, devfn)} context entry at {caddr:#x}"
        clo, chi = r.qwords(caddr, 2, where)
        if not clo & 1:
            continue
        if sm:
            dir_ptr = clo & VTD_PAGE_MASK
            de = r.qwords(dir_ptr + 8 * (p >> 6), 1, f"{where}: PASID directory")[0]
            if not de & 1:
                continue
            pe = r.qwords((de & VTD_PAGE_MASK) + 64 * (p & 63), 3, f"{where}: PASID table")
            if not pe[0] & 1:
                continue
            pgtt = (pe[0] >> 6) & 7
            agaw = (pe[0] >> 2) & 7
            if pgtt == 1:
                pgd = pe[2] & VTD_PAGE_MASK
            elif pgtt in (2, 3):
                pgd = pe[0] & VTD_PAGE_MASK
            else:
                continue
        else:
            if (clo >> 2) & 3 not in (0, 1):
                continue
            pgd = clo & VTD_PAGE_MASK
            agaw = chi & 7
        head = f"Device {0:04x}:{bus:02x}:{devfn >> 3:02x}.{devfn & 7:x} "
        out.append(head + (f"with pasid {p:x} @{_hex(pgd)}\n" if sm else f"@{_hex(pgd)}\n"))
        out.append(
            f"{'IOVA_PFN':<17}\t{'PML5E':<18}\t{'PML4E':<18}\t{'PDPE':<18}\t{'PDE':<18}\tPTE\n"
        )
        label = f"{unit.name} {_bdf(bus, devfn)} pasid {p} table {pgd:#x}"
        for iova, path in leaf_paths(r, pgd, agaw + 2, label):
            out.append(
                f"0x{iova >> 12:013x} |\t0x{path[5]:016x}\t0x{path[4]:016x}\t0x{path[3]:016x}"
                f"\t0x{path[2]:016x}\t0x{path[1]:016x}\n"
            )
        break
    return "".join(out)


def invalidation_queue(memory: PhysicalMemory, units: Sequence[RegisterView]) -> str:
    """``invalidation_queue`` (Linux debugfs.c ``invalidation_queue_show``,
    ``invalidation_queue_entry_show``).

    Base = IQA & PAGE_MASK, Head/Tail = IQH/IQT >> ``qi_shift`` (4, +1 with ECAP.SMTS), 256
    slots (``QI_LENGTH``).  The status column is Linux's ``qi->desc_status[]``: Linux points each
    wait descriptor's status address at ``&desc_status[wait_index]`` (dmar.c ``qi_submit_sync``),
    so the array is found in memory through the queue's wait descriptors (see
    :func:`_status_reader`); with no wait descriptor the column is 0.
    """
    r = _Reader(memory)
    out: list[str] = []
    for unit in units:
        ecap = unit.read64(REG_ECAP)
        if not ecap & ECAP_QI or not unit.read32(REG_GSTS) & GSTS_QIES:
            continue
        smts = bool(ecap & ECAP_SMTS)
        shift = DMAR_IQ_SHIFT + (1 if smts else 0)
        base = unit.read64(REG_IQA) & VTD_PAGE_MASK
        out.append(f"Invalidation queue on IOMMU: {unit.name}\n")
        out.append(
            f" Base: {_hex(base)}\tHead: {unit.read64(REG_IQH) >> shift}"
            f"\tTail: {unit.read64(REG_IQT) >> shift}\n"
        )
        nq = 4 if smts else 2
        where = f"{unit.name} invalidation queue at {base:#x}"
        descs = [r.qwords(base + (i << shift), nq, where) for i in range(QI_LENGTH)]
        status_of = _status_reader(r, descs, where)
        if smts:
            out.append("Index\t\tqw0\t\t\tqw1\t\t\tqw2\t\t\tqw3\t\t\tstatus\n")
        else:
            out.append("Index\t\tqw0\t\t\tqw1\t\t\tstatus\n")
        for i, d in enumerate(descs):
            cols = "\t".join(f"{w:016x}" for w in d)
            out.append(f"{i:5d}\t{cols}\t{status_of(i):016x}\n")
        out.append("\n")
    return "".join(out)


def _status_reader(
    r: _Reader, descs: Sequence[tuple[int, ...]], where: str
) -> Callable[[int], int]:
    """``desc_status[i]`` located through the wait descriptors' status addresses.

    Linux's array is ``int`` (4-byte stride); a driver may use one qword per slot (8-byte
    stride).  Each wait descriptor at slot ``i`` with status address ``a`` votes for
    ``(stride, a - stride * i)``; the candidate most wait descriptors agree on wins (ties:
    Linux's 4-byte stride).
    """
    votes: dict[tuple[int, int], int] = {}
    for i, d in enumerate(descs):
        if d[0] & 0xF == QI_WAIT_TYPE and d[0] & QI_IWD_STATUS_WRITE:
            addr = d[1] & ~3
            for stride in (4, 8):
                base = addr - stride * i
                if base >= 0:
                    votes[(stride, base)] = votes.get((stride, base), 0) + 1
    if not votes:
        return lambda i: 0
    stride, base = max(votes, key=lambda k: (votes[k], k[0] == 4, -k[1]))

    def status(i: int) -> int:
        addr = base + stride * i
        try:
            return r.memory.read32(addr)
        except MemoryAccessError:
            raise ScenarioError(
                where, f"desc_status[{i}] at {addr:#x} is beyond the end of physical memory"
            ) from None

    return status


#: dump kind -> function(memory, units) -> text
DUMPS: dict[str, Callable[[PhysicalMemory, Sequence[RegisterView]], str]] = {
    "dmar_translation_struct": dmar_translation_struct,
    "domain_translation_struct": domain_translation_struct,
    "invalidation_queue": invalidation_queue,
}
