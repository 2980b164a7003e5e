"""Pure table walks of the remapping hardware: no caching, fault reason codes.

Design rationale
----------------
The walk is the silicon's page-walker: it reads root, context, PASID-directory, PASID-table and
paging entries from :class:`~vtdsim.hw.memory.PhysicalMemory` and either produces a translation
or stops with a fault reason code (the QEMU habit: every step "returns" a ``VTD_FR_*`` code; here
it raises :class:`WalkFault`, which carries the code and whether an FPD bit seen so far applies).
It keeps no state between requests -- caching is :mod:`vtdsim.hw.translate`'s business -- so the
same walk serves the cached translator (on misses), ``vtdsim walk`` (with a trace) and the tests.

Speed: the walker is built once per remapping unit.  Every shift and mask is taken from the
layouts in :mod:`vtdsim.spec.entries` (``Layout.field(...).shift/.mask`` and
``reserved_masks``/``address_masks`` combined with ``caps.haw``) into plain ints at construction,
paging levels are an inlined loop over ``memory.read64``, and :class:`~vtdsim.spec.bits.Decoded`
objects are built only when a trace list is passed.

Trace: with ``trace=[]`` every table read appends one :class:`WalkStep` (stage, level, table,
index, entry address, raw qwords, decoded entry and outcome), so a caller can explain a
translation or a fault without knowing the walk.

Behaviour and sources (each also cited at the code):

* Legacy mode (RTADDR.TTM = 00): root entry by bus, 16-byte context entry by devfn, TT
  (untranslated / device-TLB / pass-through), SL tables (QEMU ``vtd_dev_to_context_entry``,
  ``vtd_ce_type_check``, ``vtd_iova_to_slpte``).
* Scalable mode (TTM = 01): root lo/hi half by devfn, 32-byte context entries, 128 per table,
  PASID directory (index ``pasid >> 6``, ``2^(PDTS+7)`` entries), PASID table (index
  ``pasid & 63``, 64-byte entries), then by PGTT: first-level, second-level, nested,
  pass-through (VT-d spec 3.4, 9.4-9.6; Linux ``intel_pasid_get_entry``; QEMU
  ``vtd_ce_get_pasid_entry`` / ``vtd_iova_to_flpte``).  TTM 10/11 are reserved: 0x30.
* Fault reasons and FPD qualification: :mod:`vtdsim.spec.faults`.  FPD is honoured in every
  entry successfully read, present or not (QEMU ``vtd_ce_get_pasid_fpd``; Linux keeps FPD=1 in
  torn-down PASID entries, ``intel_pasid_tear_down_entry(fault_ignore)``).
* Reserved bits: ``Layout.reserved_violations`` semantics (reserved bits, and address bits at
  or above the host address width) plus PS=1 where the page size is not supported (QEMU
  ``vtd_slpte_nonzero_rsvd``: PS is reserved at level 4 and at levels 2/3 without SLLPS).
  Second-level bit 11 is reserved in every table pointer (QEMU ``VTD_SPTE_PAGE_L{2,3,4}_RSVD_
  MASK``) and, in legacy mode without ECAP.SC, in leaves too (QEMU ``vtd_init``).
* Access errors: root 0x38, context 0x40, PASID directory 0x50, PASID table 0x58; the top
  first-level table 0x73 and the top second-level table (SLPTPTR) 0x7B, deeper tables 0x70 /
  0x78 (legacy: 0x8, 0x9, 0x7).
* Accessed/dirty: first-level walks always set A (and EA with EAFE) in every entry used and D
  in the leaf of a write; second-level walks do so when the PASID entry's SSADE is set
  (QEMU ``vtd_set_flag_in_pte``).  The model writes the bits back after the request is known to
  succeed, with the entry value it read.
* Check order per entry: present, then reserved, then validity (Linux/spec order; QEMU checks
  PASID-entry PGTT validity before P, so an all-zero entry reports 0x5B there -- we report 0x59).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

from vtdsim.errors import MemoryAccessError
from vtdsim.hw.caps import Capabilities
from vtdsim.hw.memory import PhysicalMemory
from vtdsim.spec.bits import Decoded, Layout
from vtdsim.spec.entries import (
    CONTEXT_ENTRY_LEGACY,
    CONTEXT_ENTRY_SM,
    FL_PDE_2M,
    FL_PDPE_1G,
    FL_PTE_4K,
    FL_TABLE,
    PASID_DIR_ENTRY,
    PASID_ENTRY,
    ROOT_ENTRY_LEGACY,
    ROOT_ENTRY_SM,
    SL_PDE_2M,
    SL_PDPE_1G,
    SL_PTE_4K,
    SL_TABLE,
)
from vtdsim.spec.faults import reason_name

__all__ = [
    "INTERRUPT_RANGE",
    "PERM_R",
    "PERM_SR",
    "PERM_SW",
    "PERM_SX",
    "PERM_W",
    "PERM_X",
    "ContextInfo",
    "PasidInfo",
    "WalkFault",
    "WalkResult",
    "WalkStep",
    "Walker",
    "need_mask",
]

# Permission bits of a translation (user request bits, supervisor request bits = user << 3).
PERM_R: Final = 1
PERM_W: Final = 2
PERM_X: Final = 4
PERM_SR: Final = 8
PERM_SW: Final = 16
PERM_SX: Final = 32
_ALL_PERMS: Final = 63

#: Interrupt address range (VT-d spec 3.14: 0xFEEx_xxxx); DMA translated into it is blocked
#: with LGN.4 (0x0E) / SGN.8 (0x87) -- QEMU ``vtd_switch_address_space`` comment.
INTERRUPT_RANGE: Final = (0xFEE0_0000, 0xFEEF_FFFF)
_INTR_LO, _INTR_HI = INTERRUPT_RANGE

_SL_NAMES = {5: "SL-PML5E", 4: "SL-PML4E", 3: "SL-PDPE", 2: "SL-PDE", 1: "SL-PTE"}
_FL_NAMES = {5: "FL-PML5E", 4: "FL-PML4E", 3: "FL-PDPE", 2: "FL-PDE", 1: "FL-PTE"}

# --- fault reason codes used here (vtdsim.spec.faults has names and texts) ------------------
# legacy
FR_ROOT_ENTRY_P = 0x01
FR_CONTEXT_ENTRY_P = 0x02
FR_CONTEXT_ENTRY_INV = 0x03
FR_ADDR_BEYOND_MGAW = 0x04
FR_WRITE = 0x05
FR_READ = 0x06
FR_PAGING_ENTRY_INV = 0x07
FR_ROOT_TABLE_INV = 0x08
FR_CONTEXT_TABLE_INV = 0x09
FR_ROOT_ENTRY_RSVD = 0x0A
FR_CONTEXT_ENTRY_RSVD = 0x0B
FR_PAGING_ENTRY_RSVD = 0x0C
FR_CONTEXT_ENTRY_TT = 0x0D
FR_INTERRUPT_ADDR = 0x0E
# scalable
FR_SM_RTADDR_INV = 0x30
FR_RTADDR_INV_TTM = 0x31
FR_SM_ROOT_ACCESS = 0x38
FR_SM_ROOT_P = 0x39
FR_SM_ROOT_RSVD = 0x3A
FR_SM_CTX_ACCESS = 0x40
FR_SM_CTX_P = 0x41
FR_SM_CTX_RSVD = 0x42
FR_SM_PASIDE = 0x45
FR_SM_PASID_TOO_LARGE = 0x46
FR_SM_RID_PASID = 0x48
FR_PDIR_ACCESS = 0x50
FR_PDIR_P = 0x51
FR_PDIR_RSVD = 0x52
FR_PTE_ACCESS = 0x58
FR_PE_P = 0x59
FR_PE_RSVD = 0x5A
FR_PE_INV = 0x5B
FR_PE_ERE = 0x5C
FR_PE_SRE = 0x5D
FR_FS_ACCESS = 0x70
FR_FS_P = 0x71
FR_FS_RSVD = 0x72
FR_FS_TOP_ACCESS = 0x73
FR_NESTED_BEYOND = 0x74
FR_NESTED_TOP_READ = 0x75
FR_NESTED_READ = 0x76
FR_NESTED_WRITE = 0x77
FR_SS_ACCESS = 0x78
FR_SS_RW = 0x79
FR_SS_RSVD = 0x7A
FR_SS_SLPTPTR = 0x7B
FR_FS_NON_CANONICAL = 0x80
FR_FS_US = 0x81
FR_NO_EXECUTE = 0x82
FR_SM_BEYOND = 0x83
FR_SM_WRITE = 0x85
FR_SM_READ = 0x86
FR_SM_INTERRUPT = 0x87
FR_FS_AD_FAILED = 0x91

#: fast_sm's success: (hpa, page_shift, perm, did, pasid_used, dte, pgtt, privileged)
FastSmResult = tuple[int, int, int, int, int, bool, int, bool]
#: fast_sm(rta, sid, addr, pasid, write, privileged)
FastSm = Callable[[int, int, int, "int | None", bool, bool], "FastSmResult | None"]

PGTT_FL: Final = 1
PGTT_SL: Final = 2
PGTT_NESTED: Final = 3
PGTT_PT: Final = 4


class WalkFault(Exception):
    """A walk stopped with fault reason ``reason``; ``fpd`` if an FPD bit read so far is set."""

    __slots__ = ("fpd", "reason")

    def __init__(self, reason: int, fpd: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.fpd = fpd

    def __str__(self) -> str:
        return f"fault {self.reason:#04x} {reason_name(self.reason)}" + (
            " (FPD)" if self.fpd else ""
        )


@dataclass(frozen=True, slots=True)
class WalkStep:
    """One table read of a walk (a record of the ``trace`` list)."""

    stage: str  # "root", "context", "pasid-dir", "pasid-table", "second-level", "first-level",
    #             "nested-second-level" (translating a first-level table address)
    name: str  # entry name, e.g. "SL-PML4E", "RootEntrySM.lo", "PasidEntry"
    level: int  # paging level (5..1), 0 for non-paging structures
    table: int  # physical address of the table read
    index: int  # index of the entry in the table
    entry_address: int
    raw: tuple[int, ...]  # qwords read (empty on an access error)
    decoded: Decoded | None
    outcome: str  # "ok", "table", "leaf", "not-present", "reserved", "invalid", "permission",
    #               "access-error"
    fault: int | None = None

    def describe(self) -> str:
        raw = ":".join(f"{w:#018x}" for w in reversed(self.raw)) if self.raw else "-"
        f = f" fault {self.fault:#04x} {reason_name(self.fault)}" if self.fault is not None else ""
        return (
            f"{self.name:<16} table {self.table:#x}[{self.index}] @ {self.entry_address:#x} = "
            f"{raw} -> {self.outcome}{f}"
        )


class ContextInfo:
    """What a present, valid context entry tells the translator (cached by SID)."""

    __slots__ = (
        "did",
        "dir_entries",
        "dte",
        "fpd",
        "levels",
        "mode",
        "pasid_dir",
        "paside",
        "raw",
        "rid_pasid",
        "rid_priv",
        "sid",
        "slptr",
        "tt",
    )

    def __init__(self, sid: int, mode: int, raw: tuple[int, ...]) -> None:
        self.sid = sid
        self.mode = mode  # 0 legacy, 1 scalable
        self.raw = raw
        self.fpd = False
        self.dte = False
        self.paside = False
        self.dir_entries = 0
        self.pasid_dir = 0
        self.rid_pasid = 0
        self.rid_priv = False
        self.tt = 0
        self.slptr = 0
        self.levels = 0
        self.did = 0

    def __repr__(self) -> str:
        if self.mode:
            return (
                f"<ContextInfo SM sid={self.sid:#06x} dir={self.pasid_dir:#x} "
                f"entries={self.dir_entries} paside={int(self.paside)} rid_pasid={self.rid_pasid}>"
            )
        return (
            f"<ContextInfo legacy sid={self.sid:#06x} tt={self.tt} did={self.did} "
            f"slptr={self.slptr:#x} levels={self.levels}>"
        )


class PasidInfo:
    """What a present, valid PASID-table entry tells the translator (the PASID cache's data)."""

    __slots__ = (
        "did",
        "eafe",
        "fl_levels",
        "fl_root",
        "fpd",
        "pasid",
        "pgtt",
        "raw",
        "sl_levels",
        "sl_root",
        "sre",
        "ssade",
        "wpe",
    )

    def __init__(self, pasid: int, raw: tuple[int, ...]) -> None:
        self.pasid = pasid
        self.raw = raw
        self.did = 0
        self.pgtt = 0
        self.fpd = False
        self.sl_root = 0
        self.sl_levels = 0
        self.ssade = False
        self.fl_root = 0
        self.fl_levels = 0
        self.sre = False
        self.wpe = False
        self.eafe = False

    def __repr__(self) -> str:
        return f"<PasidInfo pasid={self.pasid} did={self.did} pgtt={self.pgtt}>"


class WalkResult:
    """A successful walk: ``address`` (HPA of the input address), page size and permissions."""

    __slots__ = ("address", "ats", "did", "page_shift", "pasid", "perm", "pgtt")

    def __init__(
        self,
        address: int,
        page_shift: int,
        perm: int,
        did: int,
        pasid: int | None,
        pgtt: int,
        ats: bool,
    ) -> None:
        self.address = address
        self.page_shift = page_shift
        self.perm = perm
        self.did = did
        self.pasid = pasid
        self.pgtt = pgtt
        self.ats = ats

    def __repr__(self) -> str:
        return (
            f"<WalkResult hpa={self.address:#x} page={1 << self.page_shift:#x} "
            f"perm={self.perm:#04x} did={self.did} pasid={self.pasid}>"
        )


def need_mask(write: bool, execute: bool, privileged: bool) -> int:
    """Permission bits a request needs (read or write, plus execute; supervisor bits if
    privileged)."""
    need = PERM_W if write else PERM_R
    if execute:
        need |= PERM_X
    return need << 3 if privileged else need


def _f(layout: Layout, name: str) -> tuple[int, int]:
    f = layout.field(name)
    return f.shift, f.mask


def _bit(layout: Layout, name: str) -> int:
    return layout.field(name).mask


#: read-only (the walker is immutable once built)
LevelMasks = Mapping[int, tuple[int, int, int, Layout]]


def _level_masks(
    rsv: Callable[[Layout], int],
    table: Layout,
    leaves: dict[int, Layout],
    large_ok: Callable[[int], bool],
) -> LevelMasks:
    """Per paging level 1-5: (table-entry reserved mask, leaf reserved mask or -1 where a leaf
    (PS=1) is reserved, leaf address mask, leaf layout).  Level 1 is always a leaf; levels
    with a superpage layout are leaves where ``large_ok(level)``."""
    out: dict[int, tuple[int, int, int, Layout]] = {
        1: (0, rsv(leaves[1]), leaves[1].field("ADDR").mask, leaves[1])
    }
    for lvl in range(2, 6):
        lay = leaves.get(lvl)
        if lay is not None and large_ok(lvl):
            out[lvl] = (rsv(table), rsv(lay), lay.field("ADDR").mask, lay)
        else:
            out[lvl] = (rsv(table), -1, 0, lay or table)
    return MappingProxyType(out)


class Walker:
    """The page walker of one remapping unit (built once from its memory and capabilities).

    Immutable once built: every attribute is fixed by ``__init__`` (masks derived from the
    capabilities, the fast path), and assigning one afterwards raises ``AttributeError``.  The
    explorer's snapshot relies on it (``_snapshot_frozen``: it does not record the walker's
    attributes, :mod:`vtdsim.explore.snapshot`)."""

    _snapshot_frozen = True
    _sealed = False

    def __setattr__(self, name: str, value: object) -> None:
        if self._sealed:
            raise AttributeError(
                f"Walker attribute {name!r}: a walker is immutable once built (its masks "
                "follow the unit's capabilities); build a new Walker instead"
            )
        object.__setattr__(self, name, value)

    def __init__(self, memory: PhysicalMemory, caps: Capabilities) -> None:
        self.memory = memory
        self.caps = caps
        haw = caps.haw
        self.haw = haw
        self.mgaw = caps.mgaw

        def rsv(layout: Layout, word: int = 0) -> int:
            m = layout.reserved_masks[word]
            if haw < 64:
                m |= layout.address_masks[word] & ~((1 << haw) - 1) & ((1 << 64) - 1)
            return m

        # root / context (legacy)
        self.r_p = _bit(ROOT_ENTRY_LEGACY, "P")
        self.r_ctp = ROOT_ENTRY_LEGACY.field("CTP").mask
        self.r_rsv = (rsv(ROOT_ENTRY_LEGACY, 0), rsv(ROOT_ENTRY_LEGACY, 1))
        self.lc_p = _bit(CONTEXT_ENTRY_LEGACY, "P")
        self.lc_fpd = _bit(CONTEXT_ENTRY_LEGACY, "FPD")
        self.lc_tt = _f(CONTEXT_ENTRY_LEGACY, "TT")
        self.lc_slptr = CONTEXT_ENTRY_LEGACY.field("SLPTPTR").mask
        self.lc_aw = _f(CONTEXT_ENTRY_LEGACY, "AW")
        self.lc_did = _f(CONTEXT_ENTRY_LEGACY, "DID")
        self.lc_rsv = (rsv(CONTEXT_ENTRY_LEGACY, 0), rsv(CONTEXT_ENTRY_LEGACY, 1))
        # root / context (scalable)
        self.rs_p = (_bit(ROOT_ENTRY_SM, "LP"), ROOT_ENTRY_SM.field("UP").mask)
        self.rs_ctp = (ROOT_ENTRY_SM.field("LCTP").mask, ROOT_ENTRY_SM.field("UCTP").mask)
        self.rs_rsv = (rsv(ROOT_ENTRY_SM, 0), rsv(ROOT_ENTRY_SM, 1))
        self.sc_p = _bit(CONTEXT_ENTRY_SM, "P")
        self.sc_fpd = _bit(CONTEXT_ENTRY_SM, "FPD")
        self.sc_dte = _bit(CONTEXT_ENTRY_SM, "DTE")
        self.sc_paside = _bit(CONTEXT_ENTRY_SM, "PASIDE")
        self.sc_pdts = _f(CONTEXT_ENTRY_SM, "PDTS")
        self.sc_dir = CONTEXT_ENTRY_SM.field("PASIDDIRPTR").mask
        self.sc_rid_pasid = _f(CONTEXT_ENTRY_SM, "RID_PASID")
        self.sc_rid_priv = CONTEXT_ENTRY_SM.field("RID_PRIV").mask
        self.sc_rsv = tuple(rsv(CONTEXT_ENTRY_SM, i) for i in range(4))
        # PASID directory / table
        self.pd_p = _bit(PASID_DIR_ENTRY, "P")
        self.pd_fpd = _bit(PASID_DIR_ENTRY, "FPD")
        self.pd_ptr = PASID_DIR_ENTRY.field("SMPTBLPTR").mask
        self.pd_rsv = rsv(PASID_DIR_ENTRY)
        pe = PASID_ENTRY
        self.pe_p = _bit(pe, "P")
        self.pe_fpd = _bit(pe, "FPD")
        self.pe_aw = _f(pe, "AW")
        self.pe_pgtt = _f(pe, "PGTT")
        self.pe_ssade = _bit(pe, "SSADE")
        self.pe_slptr = pe.field("SLPTPTR").mask
        self.pe_did = _f(pe, "DID")
        self.pe_sre = pe.field("SRE").mask
        self.pe_flpm = _f(pe, "FLPM")
        self.pe_wpe = pe.field("WPE").mask
        self.pe_eafe = pe.field("EAFE").mask
        self.pe_flptr = pe.field("FLPTPTR").mask
        self.pe_rsv = tuple(rsv(pe, i) for i in range(8))
        # second-level paging entries
        self.sl_r = _bit(SL_TABLE, "R")
        self.sl_w = _bit(SL_TABLE, "W")
        self.sl_rw = self.sl_r | self.sl_w
        self.sl_ps = _bit(SL_TABLE, "PS")
        self.sl_a = _bit(SL_TABLE, "A")
        self.sl_d = _bit(SL_PTE_4K, "D")
        self.sl_table_addr = SL_TABLE.field("ADDR").mask
        # per level: (table reserved mask, leaf reserved mask or -1 if PS=1 is reserved there,
        # leaf address mask, leaf layout); superpages as CAP.SLLPS says
        self.sl_level = _level_masks(
            rsv,
            SL_TABLE,
            {1: SL_PTE_4K, 2: SL_PDE_2M, 3: SL_PDPE_1G},
            lambda lvl: (9 * (lvl - 1) + 12) in caps.sl_large_pages,
        )
        # Legacy mode: a leaf's SNP is reserved unless ECAP.SC (QEMU vtd_init clears
        # VTD_SPTE_SNP from the leaf masks only "if (s->scalable_mode || s->snoop_control)").
        snp = 0 if caps.snoop_control else _bit(SL_PTE_4K, "SNP")
        self.sl_level_legacy: LevelMasks = MappingProxyType(
            {
                lvl: (t_rsv, l_rsv if l_rsv < 0 else l_rsv | snp, l_addr, lay)
                for lvl, (t_rsv, l_rsv, l_addr, lay) in self.sl_level.items()
            }
        )
        # first-level paging entries
        self.fl_p = _bit(FL_TABLE, "P")
        self.fl_rw = _bit(FL_TABLE, "RW")
        self.fl_us = _bit(FL_TABLE, "US")
        self.fl_ps = _bit(FL_TABLE, "PS")
        self.fl_a = _bit(FL_TABLE, "A")
        self.fl_ea = _bit(FL_TABLE, "EA")
        self.fl_d = _bit(FL_PTE_4K, "D")
        self.fl_xd = _bit(FL_TABLE, "XD")
        self.fl_table_addr = FL_TABLE.field("ADDR").mask
        # the same per-level masks; 2 MiB pages always, 1 GiB pages as CAP.FL1GP says
        self.fl_level = _level_masks(
            rsv,
            FL_TABLE,
            {1: FL_PTE_4K, 2: FL_PDE_2M, 3: FL_PDPE_1G},
            lambda lvl: lvl == 2 or caps.fl_1g_pages,
        )
        self._pgtt_ok: Mapping[int, bool] = MappingProxyType(
            {
                PGTT_FL: caps.first_level,
                PGTT_SL: caps.second_level,
                PGTT_NESTED: caps.nested and caps.first_level and caps.second_level,
                PGTT_PT: caps.pass_through,
            }
        )
        #: The uncached scalable-mode hot path (see :meth:`_build_fast_sm`).
        self.fast_sm: FastSm = self._build_fast_sm()
        self._sealed = True

    # -- context ---------------------------------------------------------------------------------

    def context(
        self, rta: int, ttm: int, sid: int, trace: list[WalkStep] | None = None
    ) -> ContextInfo:
        """Root and context entry for ``sid`` (VT-d 3.4.2/3.4.3; QEMU vtd_dev_to_context_entry).

        Raises :class:`WalkFault`.  ``ttm`` 0 = legacy, 1 = scalable, 2/3 = reserved (0x30).
        """
        if ttm == 1 and self.caps.scalable_mode:
            if trace is None:
                info = self._context_sm_fast(rta, sid)
                if info is not None:
                    return info
            return self._context_sm(rta, sid, trace)
        if ttm == 0:
            return self._context_legacy(rta, sid, trace)
        # RTADDR.TTM 10b/11b reserved, or 01b without ECAP.SMTS (Linux text for 0x30 "SM:
        # Invalid Root Table Address")
        raise WalkFault(FR_SM_RTADDR_INV)

    def _context_sm_fast(self, rta: int, sid: int) -> ContextInfo | None:
        """The success path of :meth:`_context_sm` without tracing; None when anything is
        abnormal (the full walk then re-reads the same entries and reports the fault)."""
        mem = self.memory
        if rta + (sid >> 8) * 16 + 16 > mem.size:
            return None
        rw = mem.read_qwords(rta + (sid >> 8) * 16, 2)
        half = (sid >> 7) & 1
        re = rw[half]
        if not re & self.rs_p[half] or re & self.rs_rsv[half]:
            return None
        cea = (re & self.rs_ctp[half]) + (sid & 0x7F) * 32
        if cea + 32 > mem.size:
            return None
        cw = mem.read_qwords(cea, 4)
        c0, c1 = cw[0], cw[1]
        r = self.sc_rsv
        if not c0 & self.sc_p or c0 & r[0] or c1 & r[1] or cw[2] or cw[3]:
            return None
        s, m = self.sc_pdts
        rs, rm = self.sc_rid_pasid
        info = ContextInfo(sid, 1, cw)
        info.fpd = bool(c0 & self.sc_fpd)
        info.dte = bool(c0 & self.sc_dte)
        info.paside = bool(c0 & self.sc_paside)
        info.dir_entries = 1 << (((c0 & m) >> s) + 7)
        info.pasid_dir = c0 & self.sc_dir
        info.rid_pasid = (c1 & rm) >> rs
        info.rid_priv = bool(c1 & self.sc_rid_priv)
        return info

    def _context_sm(self, rta: int, sid: int, trace: list[WalkStep] | None) -> ContextInfo:
        mem = self.memory
        bus = sid >> 8
        devfn = sid & 0xFF
        rea = rta + bus * 16
        half = devfn >> 7  # Linux iommu_context_addr: devfn >= 0x80 uses the upper half
        try:
            rw = mem.read_qwords(rea, 2)
        except MemoryAccessError:
            self._step(
                trace,
                "root",
                "RootEntrySM",
                0,
                rta,
                bus,
                rea,
                (),
                None,
                "access-error",
                FR_SM_ROOT_ACCESS,
            )
            raise WalkFault(FR_SM_ROOT_ACCESS) from None
        re = rw[half]
        name = "RootEntrySM." + ("hi" if half else "lo")
        if not re & self.rs_p[half]:
            self._step(
                trace,
                "root",
                name,
                0,
                rta,
                bus,
                rea,
                rw,
                ROOT_ENTRY_SM,
                "not-present",
                FR_SM_ROOT_P,
            )
            raise WalkFault(FR_SM_ROOT_P)
        if re & self.rs_rsv[half]:
            self._step(
                trace,
                "root",
                name,
                0,
                rta,
                bus,
                rea,
                rw,
                ROOT_ENTRY_SM,
                "reserved",
                FR_SM_ROOT_RSVD,
            )
            raise WalkFault(FR_SM_ROOT_RSVD)
        self._step(trace, "root", name, 0, rta, bus, rea, rw, ROOT_ENTRY_SM, "ok", None)
        ct = re & self.rs_ctp[half]
        idx = devfn & 0x7F
        cea = ct + idx * 32
        try:
            cw = mem.read_qwords(cea, 4)
        except MemoryAccessError:
            self._step(
                trace,
                "context",
                "ContextEntrySM",
                0,
                ct,
                idx,
                cea,
                (),
                None,
                "access-error",
                FR_SM_CTX_ACCESS,
            )
            raise WalkFault(FR_SM_CTX_ACCESS) from None
        c0 = cw[0]
        fpd = bool(c0 & self.sc_fpd)
        if not c0 & self.sc_p:
            self._step(
                trace,
                "context",
                "ContextEntrySM",
                0,
                ct,
                idx,
                cea,
                cw,
                CONTEXT_ENTRY_SM,
                "not-present",
                FR_SM_CTX_P,
            )
            raise WalkFault(FR_SM_CTX_P, fpd)
        r = self.sc_rsv
        if c0 & r[0] or cw[1] & r[1] or cw[2] & r[2] or cw[3] & r[3]:
            self._step(
                trace,
                "context",
                "ContextEntrySM",
                0,
                ct,
                idx,
                cea,
                cw,
                CONTEXT_ENTRY_SM,
                "reserved",
                FR_SM_CTX_RSVD,
            )
            raise WalkFault(FR_SM_CTX_RSVD, fpd)
        self._step(
            trace, "context", "ContextEntrySM", 0, ct, idx, cea, cw, CONTEXT_ENTRY_SM, "ok", None
        )
        info = ContextInfo(sid, 1, cw)
        info.fpd = fpd
        info.dte = bool(c0 & self.sc_dte)
        info.paside = bool(c0 & self.sc_paside)
        s, m = self.sc_pdts
        info.dir_entries = 1 << (((c0 & m) >> s) + 7)
        info.pasid_dir = c0 & self.sc_dir
        s, m = self.sc_rid_pasid
        info.rid_pasid = (cw[1] & m) >> s
        info.rid_priv = bool(cw[1] & self.sc_rid_priv)
        return info

    def _context_legacy(self, rta: int, sid: int, trace: list[WalkStep] | None) -> ContextInfo:
        mem = self.memory
        caps = self.caps
        bus = sid >> 8
        devfn = sid & 0xFF
        rea = rta + bus * 16
        try:
            rw = mem.read_qwords(rea, 2)
        except MemoryAccessError:
            self._step(
                trace,
                "root",
                "RootEntryLegacy",
                0,
                rta,
                bus,
                rea,
                (),
                None,
                "access-error",
                FR_ROOT_TABLE_INV,
            )
            raise WalkFault(FR_ROOT_TABLE_INV) from None
        if not rw[0] & self.r_p:
            self._step(
                trace,
                "root",
                "RootEntryLegacy",
                0,
                rta,
                bus,
                rea,
                rw,
                ROOT_ENTRY_LEGACY,
                "not-present",
                FR_ROOT_ENTRY_P,
            )
            raise WalkFault(FR_ROOT_ENTRY_P)
        if rw[0] & self.r_rsv[0] or rw[1] & self.r_rsv[1]:
            self._step(
                trace,
                "root",
                "RootEntryLegacy",
                0,
                rta,
                bus,
                rea,
                rw,
                ROOT_ENTRY_LEGACY,
                "reserved",
                FR_ROOT_ENTRY_RSVD,
            )
            raise WalkFault(FR_ROOT_ENTRY_RSVD)
        self._step(
            trace, "root", "RootEntryLegacy", 0, rta, bus, rea, rw, ROOT_ENTRY_LEGACY, "ok", None
        )
        ct = rw[0] & self.r_ctp
        cea = ct + devfn * 16
        try:
            cw = mem.read_qwords(cea, 2)
        except MemoryAccessError:
            self._step(
                trace,
                "context",
                "ContextEntryLegacy",
                0,
                ct,
                devfn,
                cea,
                (),
                None,
                "access-error",
                FR_CONTEXT_TABLE_INV,
            )
            raise WalkFault(FR_CONTEXT_TABLE_INV) from None
        c0, c1 = cw
        fpd = bool(c0 & self.lc_fpd)
        lay = CONTEXT_ENTRY_LEGACY
        if not c0 & self.lc_p:
            self._step(
                trace,
                "context",
                "ContextEntryLegacy",
                0,
                ct,
                devfn,
                cea,
                cw,
                lay,
                "not-present",
                FR_CONTEXT_ENTRY_P,
            )
            raise WalkFault(FR_CONTEXT_ENTRY_P, fpd)
        if c0 & self.lc_rsv[0] or c1 & self.lc_rsv[1]:
            self._step(
                trace,
                "context",
                "ContextEntryLegacy",
                0,
                ct,
                devfn,
                cea,
                cw,
                lay,
                "reserved",
                FR_CONTEXT_ENTRY_RSVD,
            )
            raise WalkFault(FR_CONTEXT_ENTRY_RSVD, fpd)
        s, m = self.lc_tt
        tt = (c0 & m) >> s
        # QEMU vtd_ce_type_check: TT 01 needs ECAP.DT, TT 10 needs ECAP.PT, TT 11 reserved
        if tt == 3 or (tt == 1 and not caps.device_tlb) or (tt == 2 and not caps.pass_through):
            self._step(
                trace,
                "context",
                "ContextEntryLegacy",
                0,
                ct,
                devfn,
                cea,
                cw,
                lay,
                "invalid",
                FR_CONTEXT_ENTRY_TT,
            )
            raise WalkFault(FR_CONTEXT_ENTRY_TT, fpd)
        s, m = self.lc_aw
        levels = ((c1 & m) >> s) + 2
        # QEMU vtd_is_level_supported: AW must be a SAGAW width (not checked for pass-through)
        if tt != 2 and (12 + 9 * levels) not in caps.sagaw:
            self._step(
                trace,
                "context",
                "ContextEntryLegacy",
                0,
                ct,
                devfn,
                cea,
                cw,
                lay,
                "invalid",
                FR_CONTEXT_ENTRY_INV,
            )
            raise WalkFault(FR_CONTEXT_ENTRY_INV, fpd)
        self._step(trace, "context", "ContextEntryLegacy", 0, ct, devfn, cea, cw, lay, "ok", None)
        info = ContextInfo(sid, 0, cw)
        info.fpd = fpd
        info.tt = tt
        info.dte = tt == 1
        info.slptr = c0 & self.lc_slptr
        info.levels = levels
        s, m = self.lc_did
        info.did = (c1 & m) >> s
        return info

    # -- PASID directory and table -----------------------------------------------------------

    def _pasid_entry_fast(self, ctx: ContextInfo, pasid: int) -> PasidInfo | None:
        """Success path of :meth:`pasid_entry` for the common PGTTs; None when anything is
        abnormal or unusual (the full version decides)."""
        didx = pasid >> 6
        if didx >= ctx.dir_entries:
            return None
        mem = self.memory
        dea = ctx.pasid_dir + didx * 8
        if dea + 8 > mem.size:
            return None
        de = mem.read64(dea)
        if not de & self.pd_p or de & self.pd_rsv:
            return None
        pea = (de & self.pd_ptr) + (pasid & 63) * 64
        if pea + 64 > mem.size:
            return None
        pw = mem.read_qwords(pea, 8)
        p0, p2 = pw[0], pw[2]
        r = self.pe_rsv
        if (
            not p0 & self.pe_p
            or p0 & r[0]
            or pw[1] & r[1]
            or p2 & r[2]
            or pw[3]
            or pw[4]
            or pw[5]
            or pw[6]
            or pw[7]
        ):
            return None
        s, m = self.pe_pgtt
        pgtt = (p0 & m) >> s
        info = PasidInfo(pasid, pw)
        info.pgtt = pgtt
        if pgtt == PGTT_SL:
            if not self._pgtt_ok[PGTT_SL]:
                return None
            s, m = self.pe_aw
            levels = ((p0 & m) >> s) + 2
            if (12 + 9 * levels) not in self.caps.sagaw:
                return None
            info.sl_levels = levels
            info.sl_root = p0 & self.pe_slptr
        elif pgtt != PGTT_PT or not self._pgtt_ok[PGTT_PT]:
            return None
        info.fpd = bool(ctx.fpd or de & self.pd_fpd or p0 & self.pe_fpd)
        s, m = self.pe_did
        info.did = (pw[1] & m) >> s
        info.ssade = bool(p0 & self.pe_ssade) and self.caps.sl_ad
        info.sre = bool(p2 & self.pe_sre)
        info.wpe = bool(p2 & self.pe_wpe)
        info.eafe = bool(p2 & self.pe_eafe)
        return info

    def pasid_entry(
        self, ctx: ContextInfo, pasid: int, rid: bool, trace: list[WalkStep] | None = None
    ) -> PasidInfo:
        """The PASID-table entry for ``pasid`` (``rid``: the request had no PASID and ``pasid``
        is the context's RID_PASID).  VT-d 3.4.3, 9.5, 9.6; Linux intel_pasid_get_entry."""
        if trace is None:
            info = self._pasid_entry_fast(ctx, pasid)
            if info is not None:
                return info
        fpd = ctx.fpd
        didx = pasid >> 6
        if didx >= ctx.dir_entries:
            raise WalkFault(FR_SM_RID_PASID if rid else FR_SM_PASID_TOO_LARGE, fpd)
        mem = self.memory
        pdir = ctx.pasid_dir
        dea = pdir + didx * 8
        try:
            de = mem.read64(dea)
        except MemoryAccessError:
            self._step(
                trace,
                "pasid-dir",
                "PasidDirEntry",
                0,
                pdir,
                didx,
                dea,
                (),
                None,
                "access-error",
                FR_PDIR_ACCESS,
            )
            raise WalkFault(FR_PDIR_ACCESS, fpd) from None
        if de & self.pd_fpd:
            fpd = True
        if not de & self.pd_p:
            self._step(
                trace,
                "pasid-dir",
                "PasidDirEntry",
                0,
                pdir,
                didx,
                dea,
                (de,),
                PASID_DIR_ENTRY,
                "not-present",
                FR_PDIR_P,
            )
            raise WalkFault(FR_PDIR_P, fpd)
        if de & self.pd_rsv:
            self._step(
                trace,
                "pasid-dir",
                "PasidDirEntry",
                0,
                pdir,
                didx,
                dea,
                (de,),
                PASID_DIR_ENTRY,
                "reserved",
                FR_PDIR_RSVD,
            )
            raise WalkFault(FR_PDIR_RSVD, fpd)
        self._step(
            trace,
            "pasid-dir",
            "PasidDirEntry",
            0,
            pdir,
            didx,
            dea,
            (de,),
            PASID_DIR_ENTRY,
            "ok",
            None,
        )
        ptab = de & self.pd_ptr
        pidx = pasid & 63
        pea = ptab + pidx * 64
        try:
            pw = mem.read_qwords(pea, 8)
        except MemoryAccessError:
            self._step(
                trace,
                "pasid-table",
                "PasidEntry",
                0,
                ptab,
                pidx,
                pea,
                (),
                None,
                "access-error",
                FR_PTE_ACCESS,
            )
            raise WalkFault(FR_PTE_ACCESS, fpd) from None
        p0 = pw[0]
        if p0 & self.pe_fpd:
            fpd = True
        if not p0 & self.pe_p:
            self._step(
                trace,
                "pasid-table",
                "PasidEntry",
                0,
                ptab,
                pidx,
                pea,
                pw,
                PASID_ENTRY,
                "not-present",
                FR_PE_P,
            )
            raise WalkFault(FR_PE_P, fpd)
        r = self.pe_rsv
        for i in range(8):
            if pw[i] & r[i]:
                self._step(
                    trace,
                    "pasid-table",
                    "PasidEntry",
                    0,
                    ptab,
                    pidx,
                    pea,
                    pw,
                    PASID_ENTRY,
                    "reserved",
                    FR_PE_RSVD,
                )
                raise WalkFault(FR_PE_RSVD, fpd)
        caps = self.caps
        s, m = self.pe_pgtt
        pgtt = (p0 & m) >> s
        info = PasidInfo(pasid, pw)
        info.fpd = fpd
        info.pgtt = pgtt
        valid = self._pgtt_ok.get(pgtt, False)
        if valid and pgtt in (PGTT_SL, PGTT_NESTED):
            s, m = self.pe_aw
            info.sl_levels = ((p0 & m) >> s) + 2
            info.sl_root = p0 & self.pe_slptr
            valid = (12 + 9 * info.sl_levels) in caps.sagaw
        if valid and pgtt in (PGTT_FL, PGTT_NESTED):
            s, m = self.pe_flpm
            flpm = (pw[2] & m) >> s
            valid = flpm == 0 or (flpm == 1 and caps.fl_5level)
            info.fl_levels = 4 + flpm
            info.fl_root = pw[2] & self.pe_flptr
        if not valid:
            # QEMU vtd_get_pe_in_pasid_leaf_table: bad PGTT or unsupported level -> 0x5B
            self._step(
                trace,
                "pasid-table",
                "PasidEntry",
                0,
                ptab,
                pidx,
                pea,
                pw,
                PASID_ENTRY,
                "invalid",
                FR_PE_INV,
            )
            raise WalkFault(FR_PE_INV, fpd)
        self._step(
            trace, "pasid-table", "PasidEntry", 0, ptab, pidx, pea, pw, PASID_ENTRY, "ok", None
        )
        s, m = self.pe_did
        info.did = (pw[1] & m) >> s
        info.ssade = bool(p0 & self.pe_ssade) and caps.sl_ad
        info.sre = bool(pw[2] & self.pe_sre)
        info.wpe = bool(pw[2] & self.pe_wpe)
        info.eafe = bool(pw[2] & self.pe_eafe)
        return info

    # -- second level ------------------------------------------------------------------------

    def second_level(
        self,
        root: int,
        levels: int,
        addr: int,
        write: bool,
        sm: bool,
        ad: bool = False,
        trace: list[WalkStep] | None = None,
        start: tuple[int, int, int] | None = None,
        fill: list[tuple[int, int, int]] | None = None,
        stage: str = "second-level",
    ) -> tuple[int, int, int]:
        """Walk second-level tables rooted at ``root`` for ``addr``.

        Returns ``(hpa, page_shift, perm)`` where ``perm`` holds ``PERM_R|PERM_SR`` if readable
        and ``PERM_W|PERM_SW`` if writable (write permission is withheld while A/D tracking
        needs a dirty-bit update, so a cached read translation cannot serve a write).  R/W
        accumulate across levels (VT-d 3.7; QEMU vtd_iova_to_slpte checks every level).
        ``start = (level, table, rw)`` resumes from a paging-structure-cache hit; ``fill``
        receives ``(level, table, rw)`` for each next-level table met.
        Legacy faults: not present / no permission -> 0x6/0x5 at the level (QEMU), reserved
        0xC (a leaf's SNP too without ECAP.SC), access 0x7, beyond AW 0x4.  Scalable: R=W=0 ->
        0x79, final permission 0x86/0x85, reserved 0x7A, access 0x7B for the top table (the
        SLPTPTR) and 0x78 below, beyond AW 0x83.
        """
        aw = 12 + 9 * levels
        if addr >> min(aw, self.mgaw):
            raise WalkFault(FR_SM_BEYOND if sm else FR_ADDR_BEYOND_MGAW)
        read64 = self.memory.read64
        sl_level = self.sl_level if sm else self.sl_level_legacy
        need_rw = self.sl_w if write else self.sl_r
        rwm = self.sl_rw
        ps = self.sl_ps
        taddr = self.sl_table_addr
        if start is None:
            level = levels
            table = root
            rw = self.sl_rw
        else:
            level, table, rw = start
        used: list[int] | None = [] if ad else None
        while True:
            shift = 3 + 9 * level
            idx = (addr >> shift) & 511
            ea = table + (idx << 3)
            try:
                e = read64(ea)
            except MemoryAccessError:
                # Scalable mode: the table named by the PASID entry's SLPTPTR is 0x7B (SSS.4,
                # Linux "Invalid second-level page table pointer"), deeper tables 0x78 -- as
                # 0x73 / 0x70 split the first level.  Legacy: 0x7 at every level (QEMU).
                if sm:
                    code = FR_SS_SLPTPTR if level == levels else FR_SS_ACCESS
                else:
                    code = FR_PAGING_ENTRY_INV
                if trace is not None:
                    self._step(
                        trace,
                        stage,
                        _SL_NAMES[level],
                        level,
                        table,
                        idx,
                        ea,
                        (),
                        None,
                        "access-error",
                        code,
                    )
                raise WalkFault(code) from None
            if sm:
                if not e & rwm:
                    if trace is not None:
                        self._step(
                            trace,
                            stage,
                            _SL_NAMES[level],
                            level,
                            table,
                            idx,
                            ea,
                            (e,),
                            SL_TABLE,
                            "not-present",
                            FR_SS_RW,
                        )
                    raise WalkFault(FR_SS_RW)
            elif not e & need_rw:
                code = FR_WRITE if write else FR_READ
                if trace is not None:
                    self._step(
                        trace,
                        stage,
                        _SL_NAMES[level],
                        level,
                        table,
                        idx,
                        ea,
                        (e,),
                        SL_TABLE,
                        "not-present" if not e & 3 else "permission",
                        code,
                    )
                raise WalkFault(code)
            t_rsv, l_rsv, l_addr, l_lay = sl_level[level]
            leaf = level == 1 or e & ps
            bad = (l_rsv < 0 or e & l_rsv) if leaf else e & t_rsv
            if bad:
                code = FR_SS_RSVD if sm else FR_PAGING_ENTRY_RSVD
                if trace is not None:
                    self._step(
                        trace,
                        stage,
                        _SL_NAMES[level],
                        level,
                        table,
                        idx,
                        ea,
                        (e,),
                        l_lay if leaf else SL_TABLE,
                        "reserved",
                        code,
                    )
                raise WalkFault(code)
            rw &= e
            if used is not None:
                used.append(ea)
                used.append(e)
            if leaf:
                if trace is not None:
                    self._step(
                        trace,
                        stage,
                        _SL_NAMES[level],
                        level,
                        table,
                        idx,
                        ea,
                        (e,),
                        l_lay,
                        "leaf",
                        None,
                    )
                break
            if trace is not None:
                self._step(
                    trace,
                    stage,
                    _SL_NAMES[level],
                    level,
                    table,
                    idx,
                    ea,
                    (e,),
                    SL_TABLE,
                    "table",
                    None,
                )
            table = e & taddr
            level -= 1
            if fill is not None:
                fill.append((level, table, rw))
        # permissions accumulated over the levels (VT-d 3.7 "access rights")
        if sm and not rw & need_rw:
            raise WalkFault(FR_SM_WRITE if write else FR_SM_READ)
        pshift = 3 + 9 * level
        hpa = (e & l_addr) | (addr & ((1 << pshift) - 1))
        perm = 0
        if rw & self.sl_r:
            perm |= PERM_R | PERM_SR | PERM_X | PERM_SX
        if rw & self.sl_w:
            perm |= PERM_W | PERM_SW
        if used is not None:
            # SSADE: A in every entry used, D in the leaf on a write (VT-d 3.7.3)
            a = self.sl_a
            mem = self.memory
            n = len(used)
            for i in range(0, n, 2):
                ea_i, e_i = used[i], used[i + 1]
                new = e_i | a
                if i == n - 2 and write:
                    new |= self.sl_d
                if new != e_i:
                    mem.write64(ea_i, new)
            if not write and not used[n - 1] & self.sl_d:
                perm &= ~(PERM_W | PERM_SW)
        return hpa, pshift, perm

    # -- first level -------------------------------------------------------------------------

    def first_level(
        self,
        pe: PasidInfo,
        addr: int,
        write: bool,
        execute: bool,
        privileged: bool,
        trace: list[WalkStep] | None = None,
        start: tuple[int, int, int] | None = None,
        fill: list[tuple[int, int, int]] | None = None,
        nested: bool = False,
    ) -> tuple[int, int, int]:
        """Walk first-level (IA-32e) tables of ``pe`` for ``addr``; with ``nested`` every table
        address and the output are guest-physical and are translated through ``pe``'s second
        level.  Returns ``(address, page_shift, perm)`` (``address`` is the HPA).

        VT-d 3.6 / 9.7: canonical check (0x80), P (0x71), reserved (0x72), access (0x73 for
        the top table, 0x70 below), U/S (0x81), R/W with WPE for supervisor requests (0x85),
        XD (0x82); A in every entry, D in the leaf on writes, EA with EAFE; a failed
        write-back is 0x91 (QEMU vtd_iova_to_flpte, vtd_set_flag_in_pte).
        Nested (VT-d 3.8): table addresses translated through the second level with read
        access (0x75 for the top table, 0x76 below; 0x77 when an A/D update needs write
        access; 0x74 when beyond the second-level width).
        """
        levels = pe.fl_levels
        top = 12 + 9 * levels - 1  # 47 or 56
        hi = addr >> top
        if hi and hi != (1 << (64 - top)) - 1:
            raise WalkFault(FR_FS_NON_CANONICAL)
        mem = self.memory
        read64 = mem.read64
        fl_level = self.fl_level
        p_bit, rw_bit, us_bit, ps_bit, xd_bit = (
            self.fl_p,
            self.fl_rw,
            self.fl_us,
            self.fl_ps,
            self.fl_xd,
        )
        taddr = self.fl_table_addr
        if start is None:
            level = levels
            table = pe.fl_root
            acc = rw_bit | us_bit  # accumulated RW, US; XD accumulates with OR
        else:
            level, table, acc = start
        used: list[int] = []
        sl_root, sl_levels, ssade = pe.sl_root, pe.sl_levels, pe.ssade
        while True:
            shift = 3 + 9 * level
            idx = (addr >> shift) & 511
            name = _FL_NAMES[level]
            is_top = level == levels
            if nested:
                # translate the (guest-physical) table address through the second level
                try:
                    t_hpa, _, _ = self.second_level(
                        sl_root,
                        sl_levels,
                        table,
                        False,
                        True,
                        ssade,
                        trace,
                        stage="nested-second-level",
                    )
                except WalkFault as f:
                    if f.reason in (FR_SS_RW, FR_SM_READ):
                        raise WalkFault(FR_NESTED_TOP_READ if is_top else FR_NESTED_READ) from None
                    if f.reason == FR_SM_BEYOND:
                        raise WalkFault(FR_NESTED_BEYOND) from None
                    raise
                table_hpa = t_hpa & ~0xFFF
            else:
                table_hpa = table
            ea = table_hpa + (idx << 3)
            try:
                e = read64(ea)
            except MemoryAccessError:
                code = FR_FS_TOP_ACCESS if is_top else FR_FS_ACCESS
                if trace is not None:
                    self._step(
                        trace,
                        "first-level",
                        name,
                        level,
                        table_hpa,
                        idx,
                        ea,
                        (),
                        None,
                        "access-error",
                        code,
                    )
                raise WalkFault(code) from None
            if not e & p_bit:
                if trace is not None:
                    self._step(
                        trace,
                        "first-level",
                        name,
                        level,
                        table_hpa,
                        idx,
                        ea,
                        (e,),
                        FL_TABLE,
                        "not-present",
                        FR_FS_P,
                    )
                raise WalkFault(FR_FS_P)
            t_rsv, l_rsv, l_addr, l_lay = fl_level[level]
            leaf = level == 1 or e & ps_bit
            bad = (l_rsv < 0 or e & l_rsv) if leaf else e & t_rsv
            if bad:
                if trace is not None:
                    self._step(
                        trace,
                        "first-level",
                        name,
                        level,
                        table_hpa,
                        idx,
                        ea,
                        (e,),
                        l_lay if leaf else FL_TABLE,
                        "reserved",
                        FR_FS_RSVD,
                    )
                raise WalkFault(FR_FS_RSVD)
            acc &= e | xd_bit | ~(rw_bit | us_bit)
            acc |= e & xd_bit
            used.append(ea)
            used.append(e)
            used.append(table)
            if leaf:
                if trace is not None:
                    self._step(
                        trace,
                        "first-level",
                        name,
                        level,
                        table_hpa,
                        idx,
                        ea,
                        (e,),
                        l_lay,
                        "leaf",
                        None,
                    )
                break
            if trace is not None:
                self._step(
                    trace,
                    "first-level",
                    name,
                    level,
                    table_hpa,
                    idx,
                    ea,
                    (e,),
                    FL_TABLE,
                    "table",
                    None,
                )
            table = e & taddr
            level -= 1
            if fill is not None:
                fill.append((level, table, acc))
        rw_ok = bool(acc & rw_bit)
        us_ok = bool(acc & us_bit)
        xd = bool(acc & xd_bit)
        # permission checks (VT-d 3.6.1 access rights; QEMU vtd_iova_to_flpte)
        if not privileged:
            if not us_ok:
                raise WalkFault(FR_FS_US)
            if write and not rw_ok:
                raise WalkFault(FR_SM_WRITE)
        elif write and pe.wpe and not rw_ok:
            raise WalkFault(FR_SM_WRITE)
        if execute and xd:
            raise WalkFault(FR_NO_EXECUTE)
        pshift = 3 + 9 * level
        out = (e & l_addr) | (addr & ((1 << pshift) - 1))
        perm = 0
        if us_ok:
            perm |= PERM_R
            if rw_ok:
                perm |= PERM_W
            if not xd:
                perm |= PERM_X
        if pe.sre:
            perm |= PERM_SR
            if rw_ok or not pe.wpe:
                perm |= PERM_SW
            if not xd:
                perm |= PERM_SX
        hpa = out
        if nested:
            hpa, sl_shift, sl_perm = self.second_level(
                sl_root, sl_levels, out, write, True, ssade, trace
            )
            perm &= sl_perm
            pshift = min(pshift, sl_shift)
        # accessed / dirty write-back (first level always tracks A/D; VT-d 3.6.2)
        a = self.fl_a | (self.fl_ea if pe.eafe else 0)
        n = len(used)
        for i in range(0, n, 3):
            ea_i, e_i, t_gpa = used[i], used[i + 1], used[i + 2]
            new = e_i | a
            if i == n - 3 and write:
                new |= self.fl_d
            if new != e_i:
                if nested:
                    # the A/D update is a write to the (guest-physical) table page
                    try:
                        self.second_level(sl_root, sl_levels, t_gpa, True, True, ssade)
                    except WalkFault as f:
                        if f.reason in (FR_SM_WRITE, FR_SS_RW):
                            raise WalkFault(FR_NESTED_WRITE) from None
                        raise
                try:
                    mem.write64(ea_i, new)
                except MemoryAccessError:
                    raise WalkFault(FR_FS_AD_FAILED) from None
        if not write and not used[n - 2] & self.fl_d:
            perm &= ~(PERM_W | PERM_SW)
        return hpa, pshift, perm

    # -- the uncached hot path ------------------------------------------------------------------

    def _build_fast_sm(self) -> FastSm:
        """Build :attr:`fast_sm`: the success path of a scalable-mode second-level or
        pass-through walk as one closure over plain-int constants.

        ``fast_sm(rta, sid, addr, pasid, write, privileged)`` returns ``(hpa, page_shift,
        perm, did, pasid_used, dte, pgtt, privileged)`` (the privilege is RID_PRIV for a
        request without PASID), or None whenever anything is unusual (a fault, a first-level
        or nested PGTT, A/D tracking, a page never written): the caller then runs
        :meth:`walk`, which decides.  Same checks as the general walk, in the same order,
        reading memory through ``PhysicalMemory.qword_pages``.

        Speed (``vtdsim bench --only translate_walk_per_s``): every mask, shift and
        capability test is a closure constant computed here from the layouts; per-level data
        are tuples indexed by level; AW -> level count and AW -> address limit are looked up,
        not recomputed; tables found through page-aligned pointers (context table, PASID
        table, paging tables) are indexed without re-deriving the page offset.
        """
        mem = self.memory
        caps = self.caps
        lp, up = self.rs_p
        lrsv, ursv = self.rs_rsv
        lctp, uctp = self.rs_ctp
        sc_p, sc_paside, sc_dte, sc_dir = self.sc_p, self.sc_paside, self.sc_dte, self.sc_dir
        sc_rsv0, sc_rsv1 = self.sc_rsv[0], self.sc_rsv[1]
        rp_s, rp_m = self.sc_rid_pasid
        rid_priv = self.sc_rid_priv
        pdts_s, pdts_m = self.sc_pdts
        pd_p, pd_rsv, pd_ptr = self.pd_p, self.pd_rsv, self.pd_ptr
        pe_p, pe_sre, pe_ssade, pe_slptr = self.pe_p, self.pe_sre, self.pe_ssade, self.pe_slptr
        pe_rsv0, pe_rsv1, pe_rsv2 = self.pe_rsv[0], self.pe_rsv[1], self.pe_rsv[2]
        did_s, did_m = self.pe_did
        pgtt_s, pgtt_m = self.pe_pgtt
        aw_s, aw_m = self.pe_aw
        pt_ok = bool(self._pgtt_ok[PGTT_PT])
        sl_ok = bool(self._pgtt_ok[PGTT_SL])
        # AW (3 bits) -> levels (0: not a SAGAW width) and the input-address limit
        aw_levels = tuple((aw + 2) if 12 + 9 * (aw + 2) in caps.sagaw else 0 for aw in range(8))
        aw_limit = tuple(min(12 + 9 * (aw + 2), self.mgaw) for aw in range(8))
        rwm, sl_r, sl_w, ps, taddr = (
            self.sl_rw,
            self.sl_r,
            self.sl_w,
            self.sl_ps,
            self.sl_table_addr,
        )
        lv = self.sl_level
        shift_of = tuple(3 + 9 * lvl for lvl in range(6))
        t_rsv = tuple(lv[lvl][0] if lvl else 0 for lvl in range(6))
        l_rsv = tuple(lv[lvl][1] if lvl else -1 for lvl in range(6))
        l_addr = tuple(lv[lvl][2] if lvl else 0 for lvl in range(6))
        perm_r = PERM_R | PERM_X | PERM_SR | PERM_SX
        perm_w = PERM_W | PERM_SW
        user = PERM_R | PERM_W | PERM_X
        pt_user = PERM_R | PERM_W | PERM_X
        intr_lo, intr_hi = _INTR_LO, _INTR_HI

        def fast_sm(
            rta: int, sid: int, addr: int, pasid: int | None, write: bool, privileged: bool
        ) -> FastSmResult | None:
            q = mem.qword_pages
            # root entry: lower/upper half by devfn (Linux iommu_context_addr)
            if sid & 0x80:
                a = rta + ((sid >> 8) << 4) + 8
                pg = q.get(a >> 12)
                if pg is None:
                    return None
                e = pg[(a & 4095) >> 3]
                if not e & up or e & ursv:
                    return None
                ct = e & uctp
            else:
                a = rta + ((sid >> 8) << 4)
                pg = q.get(a >> 12)
                if pg is None:
                    return None
                e = pg[(a & 4095) >> 3]
                if not e & lp or e & lrsv:
                    return None
                ct = e & lctp
            # context entry: 32 bytes, 128 per (page-aligned) table
            pg = q.get(ct >> 12)
            if pg is None:
                return None
            i = (sid & 0x7F) << 2
            c0 = pg[i]
            c1 = pg[i + 1]
            if not c0 & sc_p or c0 & sc_rsv0 or c1 & sc_rsv1 or pg[i + 2] or pg[i + 3]:
                return None
            if pasid is None:
                p = (c1 & rp_m) >> rp_s
                priv = (c1 & rid_priv) != 0
            else:
                if not c0 & sc_paside:
                    return None
                p = pasid
                priv = bool(privileged)
            didx = p >> 6
            if didx >> (((c0 & pdts_m) >> pdts_s) + 7):
                return None
            # PASID directory entry (the directory may span pages)
            a = (c0 & sc_dir) + (didx << 3)
            pg = q.get(a >> 12)
            if pg is None:
                return None
            e = pg[(a & 4095) >> 3]
            if not e & pd_p or e & pd_rsv:
                return None
            # PASID-table entry: 64 bytes, 64 per (page-aligned) table
            pg = q.get((e & pd_ptr) >> 12)
            if pg is None:
                return None
            i = (p & 63) << 3
            p0 = pg[i]
            p1 = pg[i + 1]
            p2 = pg[i + 2]
            if (
                not p0 & pe_p
                or p0 & pe_rsv0
                or p1 & pe_rsv1
                or p2 & pe_rsv2
                or pg[i + 3]
                or pg[i + 4]
                or pg[i + 5]
                or pg[i + 6]
                or pg[i + 7]
            ):
                return None
            sre = p2 & pe_sre
            if priv and not sre:
                return None
            did = (p1 & did_m) >> did_s
            pgtt = (p0 & pgtt_m) >> pgtt_s
            if pgtt != PGTT_SL:
                if pgtt == PGTT_PT and pt_ok:
                    if intr_lo <= addr <= intr_hi:
                        return None
                    return (
                        addr,
                        12,
                        _ALL_PERMS if sre else pt_user,
                        did,
                        p,
                        (c0 & sc_dte) != 0,
                        pgtt,
                        priv,
                    )
                return None
            if not sl_ok or p0 & pe_ssade:
                return None
            aw = (p0 & aw_m) >> aw_s
            level = aw_levels[aw]
            if not level or addr >> aw_limit[aw]:
                return None
            # second-level tables (every table pointer is page aligned)
            table = p0 & pe_slptr
            rw = rwm
            while True:
                pg = q.get(table >> 12)
                if pg is None:
                    return None
                e = pg[(addr >> shift_of[level]) & 511]
                if not e & rwm:
                    return None
                if level == 1 or e & ps:
                    lr = l_rsv[level]
                    if lr < 0 or e & lr:
                        return None
                    rw &= e
                    break
                if e & t_rsv[level]:
                    return None
                rw &= e
                table = e & taddr
                level -= 1
            if not rw & (sl_w if write else sl_r):
                return None
            shift = shift_of[level]
            hpa = (e & l_addr[level]) | (addr & ((1 << shift) - 1))
            if intr_lo <= hpa <= intr_hi:
                return None
            perm = (perm_r if rw & sl_r else 0) | (perm_w if rw & sl_w else 0)
            if not sre:
                perm &= user
            return hpa, shift, perm, did, p, (c0 & sc_dte) != 0, pgtt, priv

        return fast_sm

    # -- whole walk --------------------------------------------------------------------------

    def walk(
        self,
        rta: int,
        ttm: int,
        sid: int,
        addr: int,
        *,
        pasid: int | None = None,
        write: bool = False,
        execute: bool = False,
        privileged: bool = False,
        trace: list[WalkStep] | None = None,
    ) -> WalkResult:
        """A complete uncached translation of one request.  Raises :class:`WalkFault`."""
        if ttm == 0 and pasid is not None:
            # TTM 00 with a request-with-PASID (Linux 0x31 "SM: TTM 0 for request with PASID")
            raise WalkFault(FR_RTADDR_INV_TTM)
        ctx = self.context(rta, ttm, sid, trace)
        if ctx.mode == 0:
            return self.finish_legacy(ctx, addr, write, trace)
        if pasid is not None and not ctx.paside:
            raise WalkFault(FR_SM_PASIDE, ctx.fpd)
        rid = pasid is None
        p = ctx.rid_pasid if pasid is None else pasid
        pe = self.pasid_entry(ctx, p, rid, trace)
        priv = ctx.rid_priv if rid else privileged
        return self.finish_sm(ctx, pe, addr, write, execute, priv, trace)

    def finish_legacy(
        self,
        ctx: ContextInfo,
        addr: int,
        write: bool,
        trace: list[WalkStep] | None = None,
        start: tuple[int, int, int] | None = None,
        fill: list[tuple[int, int, int]] | None = None,
    ) -> WalkResult:
        """Legacy translation after the context entry (TT: SL walk or pass-through)."""
        try:
            if ctx.tt == 2:
                hpa, shift, perm = addr, 12, _ALL_PERMS
            else:
                hpa, shift, perm = self.second_level(
                    ctx.slptr, ctx.levels, addr, write, False, False, trace, start, fill
                )
        except WalkFault as f:
            f.fpd = ctx.fpd
            raise
        if _INTR_LO <= hpa <= _INTR_HI:
            raise WalkFault(FR_INTERRUPT_ADDR, ctx.fpd)
        return WalkResult(hpa, shift, perm, ctx.did, None, 0, ctx.dte)

    def finish_sm(
        self,
        ctx: ContextInfo,
        pe: PasidInfo,
        addr: int,
        write: bool,
        execute: bool,
        privileged: bool,
        trace: list[WalkStep] | None = None,
        start: tuple[int, int, int] | None = None,
        fill: list[tuple[int, int, int]] | None = None,
    ) -> WalkResult:
        """Scalable-mode translation after the PASID entry, by PGTT."""
        fpd = ctx.fpd or pe.fpd
        try:
            if privileged and not pe.sre:
                # Supervisor request with SRE=0 (Linux 0x5D "SRE field is clear")
                raise WalkFault(FR_PE_SRE)
            if execute and not self.caps.execute_requests:
                raise WalkFault(FR_PE_ERE)
            pgtt = pe.pgtt
            if pgtt == PGTT_SL:
                hpa, shift, perm = self.second_level(
                    pe.sl_root, pe.sl_levels, addr, write, True, pe.ssade, trace, start, fill
                )
            elif pgtt == PGTT_FL:
                hpa, shift, perm = self.first_level(
                    pe, addr, write, execute, privileged, trace, start, fill
                )
            elif pgtt == PGTT_NESTED:
                hpa, shift, perm = self.first_level(
                    pe, addr, write, execute, privileged, trace, None, None, nested=True
                )
            else:  # pass-through
                hpa, shift, perm = addr, 12, _ALL_PERMS
            if not pe.sre:
                perm &= ~(PERM_SR | PERM_SW | PERM_SX)
            if _INTR_LO <= hpa <= _INTR_HI:
                raise WalkFault(FR_SM_INTERRUPT)
        except WalkFault as f:
            f.fpd = fpd
            raise
        return WalkResult(hpa, shift, perm, pe.did, pe.pasid, pgtt, ctx.dte)

    # -- trace helper --------------------------------------------------------------------------

    @staticmethod
    def _step(
        trace: list[WalkStep] | None,
        stage: str,
        name: str,
        level: int,
        table: int,
        index: int,
        ea: int,
        raw: tuple[int, ...],
        layout: Layout | None,
        outcome: str,
        fault: int | None,
    ) -> None:
        if trace is None:
            return
        decoded = layout.decode(raw) if layout is not None and raw else None
        trace.append(WalkStep(stage, name, level, table, index, ea, raw, decoded, outcome, fault))
