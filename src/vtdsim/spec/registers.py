"""Remapping-unit MMIO registers, declared once as data.

Sources (facts only):

* VT-d specification rev 4.1 chapter 11.4 (register descriptions; section numbers below refer
  to it) and the reference fact sheet section 3.1.
* Linux ``drivers/iommu/intel/iommu.h`` (``DMAR_*_REG`` offsets, ``cap_*``/``ecap_*``
  accessors, ``DMA_GCMD_*``/``DMA_GSTS_*``, ``DMA_CCMD_*``, ``DMA_TLB_*``, ``DMA_FSTS_*``).
* QEMU ``hw/i386/intel_iommu.c`` ``vtd_init`` (the ``vtd_define_long/quad`` habit: a reset
  value, a write mask, a write-1-to-clear mask and a write-only mask per register) and
  ``intel_iommu_internal.h`` (``VTD_CAP_FRO`` = 0x220, ``VTD_ECAP_IRO`` = 0xf0).
* VirtualBox ``include/VBox/iommu-intel.h`` (per-register RW / RW1C masks, IQERCD.IQEI codes).

Every register is a :class:`Register`: its offset, width (32 or 64), :class:`Layout`, reset
value and the masks that drive the hardware model (:mod:`vtdsim.hw.iommu`):

``wmask``   bits software can write (RW);
``w1cmask`` bits cleared by writing 1 (RW1C status);
``womask``  bits that read as 0 (write-only command bits: all of GCMD, IVA);
``oneshot`` command bits that trigger an action and are not stored (GCMD.SRTP/SFL/WBF/SIRTP,
            CCMD.ICC, IOTLB.IVT self-clear on completion).

Bits in none of the masks are read-only: reserved bits read 0, status bits are set by hardware.

Offsets chosen by this model (CAP.FRO, ECAP.IRO are implementation choices), as QEMU does:
the IOTLB register pair sits at ``ECAP.IRO * 16 = 0xF0`` (IVA 0xF0, IOTLB 0xF8), right after
the page-request event registers (PEUADDR ends at 0xF0), and the fault-recording registers
start at ``CAP.FRO * 16 = 0x220``, 16 bytes each, after the (unimplemented, ECAP.MTS=0) MTRR
registers 0x100-0x21F.  With up to 256 records they may extend past the first 4 KiB page; the
VT-d register set may span several pages (Linux ``map_iommu`` maps up to
``cap_max_fault_reg_offset``) and nothing else this model implements lives above 0x220.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from vtdsim.hw.caps import Capabilities
from vtdsim.spec.bits import Field, Layout
from vtdsim.spec.faults import FAULT_RECORD

__all__ = [
    "AFLOG",
    "CAP",
    "CAP_LAYOUT",
    "CCMD",
    "CCMD_LAYOUT",
    "ECAP",
    "ECAP_LAYOUT",
    "FAULT_RECORD",
    "FEADDR",
    "FECTL",
    "FECTL_LAYOUT",
    "FEDATA",
    "FEUADDR",
    "FRCD_BASE",
    "FRCD_SIZE",
    "FRO",
    "FSTS",
    "FSTS_LAYOUT",
    "GCMD",
    "GCMD_LAYOUT",
    "GCMD_ONESHOT",
    "GSTS",
    "GSTS_LAYOUT",
    "GSTS_PERSISTENT",
    "ICS",
    "ICS_LAYOUT",
    "IEADDR",
    "IECTL",
    "IEDATA",
    "IEUADDR",
    "IOTLB_LAYOUT",
    "IOTLB_REG",
    "IQA",
    "IQA_LAYOUT",
    "IQEI",
    "IQER",
    "IQER_LAYOUT",
    "IQH",
    "IQT",
    "IRO",
    "IRTA",
    "IVA",
    "IVA_LAYOUT",
    "PEADDR",
    "PECTL",
    "PEDATA",
    "PEUADDR",
    "PHMBASE",
    "PHMLIMIT",
    "PLMBASE",
    "PLMLIMIT",
    "PMEN",
    "PQA",
    "PQH",
    "PQT",
    "PRS",
    "REGISTERS",
    "RTADDR",
    "RTADDR_LAYOUT",
    "TTM",
    "VER",
    "VER_LAYOUT",
    "Register",
    "encode_cap",
    "encode_ecap",
    "fault_record_offset",
    "register_table",
    "version",
]

_Q = (1 << 64) - 1
_D = (1 << 32) - 1

# --- offsets (Linux iommu.h DMAR_*_REG; VT-d 11.4) -----------------------------------------

VER = 0x00
CAP = 0x08
ECAP = 0x10
GCMD = 0x18
GSTS = 0x1C
RTADDR = 0x20
CCMD = 0x28
FSTS = 0x34
FECTL = 0x38
FEDATA = 0x3C
FEADDR = 0x40
FEUADDR = 0x44
AFLOG = 0x58
PMEN = 0x64
PLMBASE = 0x68
PLMLIMIT = 0x6C
PHMBASE = 0x70
PHMLIMIT = 0x78
IQH = 0x80
IQT = 0x88
IQA = 0x90
ICS = 0x9C
IECTL = 0xA0
IEDATA = 0xA4
IEADDR = 0xA8
IEUADDR = 0xAC
IQER = 0xB0  # Linux DMAR_IQER_REG; the spec calls it IQERCD
IRTA = 0xB8
PQH = 0xC0
PQT = 0xC8
PQA = 0xD0
PRS = 0xDC
PECTL = 0xE0
PEDATA = 0xE4
PEADDR = 0xE8
PEUADDR = 0xEC

#: ECAP.IRO (17:8): the IOTLB register pair is at IRO * 16 (QEMU VTD_IOTLB_REG_OFFSET 0xf0).
IRO = 0x0F
IVA = IRO * 16
IOTLB_REG = IVA + 8
#: CAP.FRO (33:24): fault recording registers at FRO * 16 (QEMU DMAR_FRCD_REG_OFFSET 0x220).
FRO = 0x22
FRCD_BASE = FRO * 16
FRCD_SIZE = 16


def fault_record_offset(index: int) -> int:
    """Offset of fault recording register ``index`` (its low qword; the high qword is +8)."""
    return FRCD_BASE + FRCD_SIZE * index


#: RTADDR.TTM values (11.4.6): 00 legacy, 01 scalable, 10 reserved, 11 abort-DMA (needs ADMS).
TTM = {0: "legacy", 1: "scalable", 2: "reserved", 3: "abort-dma"}

#: IQERCD.IQEI values (11.4.9.9; VirtualBox VTDIQEI).
IQEI = {
    0: "info not available",
    1: "invalid tail pointer",
    2: "descriptor fetch error",
    3: "invalid descriptor type",
    4: "reserved field violation",
    5: "invalid descriptor width",
    6: "queue tail misaligned",
    7: "invalid TTM",
}

# --- layouts ----------------------------------------------------------------------------------

VER_LAYOUT = Layout(
    "VER",
    1,
    [Field("MIN", 0, 3, "minor version"), Field("MAX", 4, 7, "major version")],
    "Version register (32-bit, RO), 11.4.1.",
)

CAP_LAYOUT = Layout(
    "CAP",
    1,
    [
        Field("ND", 0, 2, "number of domains: 2^(4 + 2*ND)"),
        Field("AFL", 3, 3, "advanced fault logging"),
        Field("RWBF", 4, 4, "required write-buffer flushing"),
        Field("PLMR", 5, 5, "protected low-memory region"),
        Field("PHMR", 6, 6, "protected high-memory region"),
        Field("CM", 7, 7, "caching mode"),
        Field("SAGAW", 8, 12, "supported AGAWs: bit1 39-bit, bit2 48-bit, bit3 57-bit"),
        Field("MGAW", 16, 21, "maximum guest address width - 1"),
        Field("ZLR", 22, 22, "zero-length read"),
        Field("FRO", 24, 33, "fault-recording register offset / 16"),
        Field("SLLPS", 34, 37, "second-level large pages: bit0 2M, bit1 1G"),
        Field("PSI", 39, 39, "page-selective invalidation"),
        Field("NFR", 40, 47, "number of fault-recording registers - 1"),
        Field("MAMV", 48, 53, "maximum address mask value"),
        Field("DWD", 54, 54, "write draining"),
        Field("DRD", 55, 55, "read draining"),
        Field("FL1GP", 56, 56, "first-level 1 GiB pages"),
        Field("PI", 59, 59, "posted interrupts"),
        Field("FL5LP", 60, 60, "first-level 5-level paging"),
        Field("ECMDS", 61, 61, "enhanced command support"),
        Field("ESIRTPS", 62, 62, "enhanced set interrupt root-table pointer"),
        Field("ESRTPS", 63, 63, "enhanced set root-table pointer"),
    ],
    "Capability register (64-bit, RO), 11.4.2.",
)

ECAP_LAYOUT = Layout(
    "ECAP",
    1,
    [
        Field("C", 0, 0, "page-walk coherency"),
        Field("QI", 1, 1, "queued invalidation"),
        Field("DT", 2, 2, "device-TLB"),
        Field("IR", 3, 3, "interrupt remapping"),
        Field("EIM", 4, 4, "extended interrupt mode"),
        Field("PT", 6, 6, "pass-through"),
        Field("SC", 7, 7, "snoop control"),
        Field("IRO", 8, 17, "IOTLB register offset / 16"),
        Field("MHMV", 20, 23, "maximum handle mask value"),
        Field("MTS", 25, 25, "memory type support"),
        Field("NEST", 26, 26, "nested translation"),
        Field("PRS", 29, 29, "page requests"),
        Field("ERS", 30, 30, "execute requests"),
        Field("SRS", 31, 31, "supervisor requests"),
        Field("NWFS", 33, 33, "no-write flag"),
        Field("EAFS", 34, 34, "extended accessed flag"),
        Field("PSS", 35, 39, "PASID size: PASID bits = PSS + 1"),
        Field("PASID", 40, 40, "PASID support"),
        Field("DIT", 41, 41, "device-TLB invalidation throttle"),
        Field("PDS", 42, 42, "page-request drain"),
        Field("SMTS", 43, 43, "scalable-mode translation"),
        Field("VCS", 44, 44, "virtual command"),
        Field("SLADS", 45, 45, "second-level accessed/dirty"),
        Field("SLTS", 46, 46, "second-level translation"),
        Field("FLTS", 47, 47, "first-level translation"),
        Field("SMPWC", 48, 48, "scalable-mode page-walk coherency"),
        Field("RPS", 49, 49, "RID_PASID support"),
        Field("ADMS", 52, 52, "abort-DMA mode"),
        Field("RPRIVS", 53, 53, "RID_PRIV support"),
    ],
    "Extended capability register (64-bit, RO), 11.4.3.",
)

_GCMD_FIELDS = [
    ("CFI", 23, "compatibility-format interrupt"),
    ("SIRTP", 24, "set interrupt-remap table pointer"),
    ("IRE", 25, "interrupt remapping enable"),
    ("QIE", 26, "queued invalidation enable"),
    ("WBF", 27, "write-buffer flush"),
    ("EAFL", 28, "enable advanced fault logging"),
    ("SFL", 29, "set fault log"),
    ("SRTP", 30, "set root-table pointer"),
    ("TE", 31, "translation enable"),
]
_GSTS_NAMES = {
    "CFI": "CFIS",
    "SIRTP": "IRTPS",
    "IRE": "IRES",
    "QIE": "QIES",
    "WBF": "WBFS",
    "EAFL": "AFLS",
    "SFL": "FLS",
    "SRTP": "RTPS",
    "TE": "TES",
}

GCMD_LAYOUT = Layout(
    "GCMD",
    1,
    [Field(n, b, b, d) for n, b, d in _GCMD_FIELDS],
    "Global command register (32-bit, WO), 11.4.4.",
)
GSTS_LAYOUT = Layout(
    "GSTS",
    1,
    [Field(_GSTS_NAMES[n], b, b, d + " status") for n, b, d in _GCMD_FIELDS],
    "Global status register (32-bit, RO), 11.4.5; same bit positions as GCMD.",
)

#: GCMD bits that are one-shot commands (not persistent): SRTP, SFL, WBF, SIRTP.
GCMD_ONESHOT = 0x6900_0000
#: Software writes ``GSTS & GSTS_PERSISTENT | command`` (11.4.4: "0x96FFFFFF").
GSTS_PERSISTENT = 0x96FF_FFFF & _D

RTADDR_LAYOUT = Layout(
    "RTADDR",
    1,
    [
        Field("TTM", 10, 11, "translation table mode", enum=TTM),
        Field("RTA", 12, 63, "root table address", kind="address"),
    ],
    "Root table address register (64-bit), 11.4.6.",
)

_GRAN_CC = {1: "global", 2: "domain", 3: "device"}
_GRAN_IOTLB = {1: "global", 2: "domain", 3: "page"}

CCMD_LAYOUT = Layout(
    "CCMD",
    1,
    [
        Field("DID", 0, 15, "domain id"),
        Field("SID", 16, 31, "source id"),
        Field("FM", 32, 33, "function mask"),
        Field("CAIG", 59, 60, "actual invalidation granularity (RO)", enum=_GRAN_CC),
        Field("CIRG", 61, 62, "requested invalidation granularity", enum=_GRAN_CC),
        Field("ICC", 63, 63, "invalidate context cache (self-clearing)"),
    ],
    "Context command register (64-bit), 11.4.7.",
)

IVA_LAYOUT = Layout(
    "IVA",
    1,
    [
        Field("AM", 0, 5, "address mask"),
        Field("IH", 6, 6, "invalidation hint"),
        Field("ADDR", 12, 63, "page address", kind="address"),
    ],
    "Invalidate address register (64-bit, WO) at ECAP.IRO*16, 11.4.8.2.",
)

IOTLB_LAYOUT = Layout(
    "IOTLB",
    1,
    [
        Field("DID", 32, 47, "domain id"),
        Field("DW", 48, 48, "drain writes"),
        Field("DR", 49, 49, "drain reads"),
        Field("IAIG", 57, 58, "actual invalidation granularity (RO)", enum=_GRAN_IOTLB),
        Field("IIRG", 60, 61, "requested invalidation granularity", enum=_GRAN_IOTLB),
        Field("IVT", 63, 63, "invalidate IOTLB (self-clearing)"),
    ],
    "IOTLB invalidate register (64-bit) at ECAP.IRO*16 + 8, 11.4.8.1.",
)

FSTS_LAYOUT = Layout(
    "FSTS",
    1,
    [
        Field("PFO", 0, 0, "primary fault overflow (RW1C)"),
        Field("PPF", 1, 1, "primary pending fault (RO: OR of every FRCD.F)"),
        Field("AFO", 2, 2, "advanced fault overflow"),
        Field("APF", 3, 3, "advanced pending fault"),
        Field("IQE", 4, 4, "invalidation queue error (RW1C)"),
        Field("ICE", 5, 5, "invalidation completion error (RW1C)"),
        Field("ITE", 6, 6, "invalidation time-out error (RW1C)"),
        Field("FRI", 8, 15, "fault record index (RO)"),
    ],
    "Fault status register (32-bit), 11.4.7.1.",
)

FECTL_LAYOUT = Layout(
    "FECTL",
    1,
    [Field("IP", 30, 30, "interrupt pending (RO)"), Field("IM", 31, 31, "interrupt mask")],
    "Fault event control register (32-bit), 11.4.7.2.",
)
_MSG_DATA = Layout("EventData", 1, [Field("IMD", 0, 15, "interrupt message data")])
_MSG_ADDR = Layout("EventAddress", 1, [Field("MA", 2, 31, "message address", kind="address")])
_MSG_UADDR = Layout("EventUpperAddress", 1, [Field("MUA", 0, 31, "message upper address")])

_RSVD32 = Layout("Reserved32", 1, [], "Register not implemented by this model: reads 0.")
_RSVD64 = Layout("Reserved64", 1, [], "Register not implemented by this model: reads 0.")

_IQ_PTR = Layout("IQPointer", 1, [Field("QH", 4, 18, "queue offset (128-bit units)")])

IQA_LAYOUT = Layout(
    "IQA",
    1,
    [
        Field("QS", 0, 2, "queue size: 2^QS 4 KiB pages"),
        Field("DW", 11, 11, "descriptor width: 1 = 256-bit"),
        Field("IQA", 12, 63, "queue base address", kind="address"),
    ],
    "Invalidation queue address register (64-bit), 11.4.9.3.",
)

ICS_LAYOUT = Layout(
    "ICS",
    1,
    [Field("IWC", 0, 0, "invalidation wait descriptor complete (RW1C)")],
    "Invalidation completion status register (32-bit), 11.4.9.4.",
)

_EVENT_CTL = Layout(
    "EventControl",
    1,
    [Field("IP", 30, 30, "interrupt pending (RO)"), Field("IM", 31, 31, "interrupt mask")],
)

IQER_LAYOUT = Layout(
    "IQERCD",
    1,
    [
        Field("IQEI", 0, 3, "invalidation queue error info", enum=IQEI),
        Field("ITESID", 32, 47, "invalidation time-out error source id"),
        Field("ICESID", 48, 63, "invalidation completion error source id"),
    ],
    "Invalidation queue error record register (64-bit, RO), 11.4.9.9.",
)

_IRTA_LAYOUT = Layout(
    "IRTA",
    1,
    [
        Field("S", 0, 3, "size: 2^(S+1) entries"),
        Field("EIME", 11, 11, "extended interrupt mode enable"),
        Field("IRTA", 12, 63, "table address", kind="address"),
    ],
)
_PQ_PTR = Layout("PQPointer", 1, [Field("PQ", 5, 18, "page-request queue offset")])
_PQA_LAYOUT = Layout(
    "PQA",
    1,
    [Field("PQS", 0, 2, "queue size"), Field("PQA", 12, 63, "base", kind="address")],
)
_PRS_LAYOUT = Layout(
    "PRS",
    1,
    [Field("PPR", 0, 0, "pending page request"), Field("PRO", 1, 1, "page request overflow")],
)
_FRCD_LO = Layout("FRCD_LO", 1, [Field("FI", 12, 63, "fault info", kind="address")])
_FRCD_HI = Layout(
    "FRCD_HI",
    1,
    [
        Field(f.name, f.lo - 64, f.hi - 64, f.doc, f.kind, f.enum)
        for f in FAULT_RECORD.fields
        if f.word == 1
    ],
    "High qword of a fault recording register (fields of FAULT_RECORD word 1).",
)

# --- the register table -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Register:
    """One MMIO register: where it is, what it holds and how writes affect it."""

    name: str
    offset: int
    width: int  # 32 or 64
    layout: Layout
    reset: int = 0
    wmask: int = 0
    w1cmask: int = 0
    womask: int = 0
    oneshot: int = 0
    #: Capabilities attribute that must be true for the register to be implemented; when it is
    #: false the register reads 0 and ignores writes (RsvdZ), as QEMU treats FEUADDR / PMEN.
    requires: str | None = None
    doc: str = ""

    @property
    def romask(self) -> int:
        """Bits software cannot change by writing."""
        full = _D if self.width == 32 else _Q
        return full & ~(self.wmask | self.w1cmask)


def _r32(name: str, off: int, layout: Layout, **kw: object) -> Register:
    return Register(name, off, 32, layout, **kw)  # type: ignore[arg-type]


def _r64(name: str, off: int, layout: Layout, **kw: object) -> Register:
    return Register(name, off, 64, layout, **kw)  # type: ignore[arg-type]


_IM = 1 << 31

#: Every register of the model, capability-independent part (masks for full support).
#: ``register_table(caps)`` fills in VER/CAP/ECAP and strips what ``caps`` lacks.
REGISTERS: tuple[Register, ...] = (
    _r32("VER", VER, VER_LAYOUT, doc="version (RO)"),
    _r64("CAP", CAP, CAP_LAYOUT, doc="capabilities (RO)"),
    _r64("ECAP", ECAP, ECAP_LAYOUT, doc="extended capabilities (RO)"),
    # QEMU vtd_init: GCMD wmask 0xff800000, womask 0xff800000 (reads return 0).
    _r32(
        "GCMD",
        GCMD,
        GCMD_LAYOUT,
        wmask=0xFF80_0000,
        womask=_D,
        oneshot=GCMD_ONESHOT,
        doc="global command (WO)",
    ),
    _r32("GSTS", GSTS, GSTS_LAYOUT, doc="global status (RO)"),
    _r64("RTADDR", RTADDR, RTADDR_LAYOUT, wmask=0xFFFF_FFFF_FFFF_FC00, doc="root table address"),
    _r64(
        "CCMD",
        CCMD,
        CCMD_LAYOUT,
        wmask=0xE000_0003_FFFF_FFFF,
        oneshot=1 << 63,
        doc="context command",
    ),
    _r32("FSTS", FSTS, FSTS_LAYOUT, w1cmask=0x71, doc="fault status (PFO/IQE/ICE/ITE RW1C)"),
    _r32("FECTL", FECTL, FECTL_LAYOUT, reset=_IM, wmask=_IM, doc="fault event control"),
    _r32("FEDATA", FEDATA, _MSG_DATA, wmask=0xFFFF, doc="fault event data"),
    _r32("FEADDR", FEADDR, _MSG_ADDR, wmask=0xFFFF_FFFC, doc="fault event address"),
    # RsvdZ without ECAP.EIM (QEMU vtd_init); the model has no EIM.
    _r32("FEUADDR", FEUADDR, _MSG_UADDR, requires="_eim", wmask=_D, doc="fault event upper"),
    _r64("AFLOG", AFLOG, _RSVD64, requires="_afl", doc="advanced fault log (CAP.AFL=0)"),
    # Protected memory regions: CAP.PLMR = PHMR = 0, so RsvdZ (QEMU vtd_init).
    _r32("PMEN", PMEN, _RSVD32, requires="_pmr", doc="protected memory enable"),
    _r32("PLMBASE", PLMBASE, _RSVD32, requires="_pmr"),
    _r32("PLMLIMIT", PLMLIMIT, _RSVD32, requires="_pmr"),
    _r64("PHMBASE", PHMBASE, _RSVD64, requires="_pmr"),
    _r64("PHMLIMIT", PHMLIMIT, _RSVD64, requires="_pmr"),
    _r64("IQH", IQH, _IQ_PTR, doc="invalidation queue head (RO)"),
    _r64(
        "IQT",
        IQT,
        _IQ_PTR,
        wmask=0x7_FFF0,
        requires="queued_invalidation",
        doc="invalidation queue tail",
    ),
    _r64(
        "IQA",
        IQA,
        IQA_LAYOUT,
        wmask=0xFFFF_FFFF_FFFF_F807,
        requires="queued_invalidation",
        doc="invalidation queue address (DW only with ECAP.SMTS)",
    ),
    _r32("ICS", ICS, ICS_LAYOUT, w1cmask=1, requires="queued_invalidation"),
    _r32("IECTL", IECTL, _EVENT_CTL, reset=_IM, wmask=_IM, requires="queued_invalidation"),
    _r32("IEDATA", IEDATA, _MSG_DATA, wmask=0xFFFF, requires="queued_invalidation"),
    _r32("IEADDR", IEADDR, _MSG_ADDR, wmask=0xFFFF_FFFC, requires="queued_invalidation"),
    _r32("IEUADDR", IEUADDR, _MSG_UADDR, wmask=_D, requires="_eim"),
    _r64("IQER", IQER, IQER_LAYOUT, doc="invalidation queue error record (RO)"),
    _r64("IRTA", IRTA, _IRTA_LAYOUT, wmask=0xFFFF_FFFF_FFFF_F80F, requires="_ir"),
    _r64("PQH", PQH, _PQ_PTR, wmask=0x7_FFE0, requires="page_requests"),
    _r64("PQT", PQT, _PQ_PTR, wmask=0x7_FFE0, requires="page_requests"),
    _r64("PQA", PQA, _PQA_LAYOUT, wmask=0xFFFF_FFFF_FFFF_F007, requires="page_requests"),
    _r32("PRS", PRS, _PRS_LAYOUT, w1cmask=0x3, requires="page_requests"),
    _r32("PECTL", PECTL, _EVENT_CTL, reset=_IM, wmask=_IM, requires="page_requests"),
    _r32("PEDATA", PEDATA, _MSG_DATA, wmask=0xFFFF, requires="page_requests"),
    _r32("PEADDR", PEADDR, _MSG_ADDR, wmask=0xFFFF_FFFC, requires="page_requests"),
    _r32("PEUADDR", PEUADDR, _MSG_UADDR, wmask=_D, requires="_eim"),
    # QEMU vtd_init: IVA wmask = womask = 0xfffffffffffff07f (write-only register).
    _r64("IVA", IVA, IVA_LAYOUT, wmask=0xFFFF_FFFF_FFFF_F07F, womask=_Q),
    # QEMU vtd_init: IOTLB wmask 0xb003ffff00000000 (IVT, IIRG, DR, DW, DID).
    _r64("IOTLB", IOTLB_REG, IOTLB_LAYOUT, wmask=0xB003_FFFF_0000_0000, oneshot=1 << 63),
)

#: Features the model never implements (the pseudo-capabilities named ``_x`` above).
_NEVER = {"_eim", "_afl", "_pmr", "_ir"}


def version(caps: Capabilities) -> int:
    """VER register value: 3.0 with scalable mode (QEMU reports 0x30 when x-scalable-mode is
    on; scalable mode is a VT-d 3.0 feature), 1.0 otherwise (QEMU's historic 0x10)."""
    return 0x30 if caps.scalable_mode else 0x10


def _f(layout: Layout, name: str, value: int | bool) -> int:
    f = layout.field(name)
    return (int(value) << f.shift) & f.mask


def encode_cap(caps: Capabilities) -> int:
    """CAP register value for ``caps`` (Linux ``cap_*`` accessors; VT-d 11.4.2)."""
    L = CAP_LAYOUT
    sagaw = sum(1 << {39: 1, 48: 2, 57: 3}[w] for w in caps.sagaw)
    sllps = sum(1 << {21: 0, 30: 1}[s] for s in caps.sl_large_pages)
    v = (
        _f(L, "ND", caps.nd)
        | _f(L, "RWBF", caps.rwbf)
        | _f(L, "CM", caps.caching_mode)
        | _f(L, "SAGAW", sagaw)
        | _f(L, "MGAW", caps.mgaw - 1)
        | _f(L, "FRO", FRO)
        | _f(L, "SLLPS", sllps)
        | _f(L, "PSI", caps.psi)
        | _f(L, "NFR", caps.fault_records - 1)
        | _f(L, "MAMV", caps.mamv if caps.psi else 0)
        # Draining is trivially supported: the model completes every request synchronously
        # (QEMU advertises VTD_CAP_DRAIN too).
        | _f(L, "DWD", 1)
        | _f(L, "DRD", 1)
        | _f(L, "FL1GP", caps.first_level and caps.fl_1g_pages)
        | _f(L, "FL5LP", caps.first_level and caps.fl_5level)
    )
    return v


def encode_ecap(caps: Capabilities) -> int:
    """ECAP register value for ``caps`` (Linux ``ecap_*`` accessors; VT-d 11.4.3).

    The model implements no interrupt remapping (IR = EIM = 0), no page-request drain
    (PDS = 0), no virtual commands and no abort-DMA mode.
    """
    L = ECAP_LAYOUT
    return (
        _f(L, "C", caps.coherent)
        | _f(L, "QI", caps.queued_invalidation)
        | _f(L, "DT", caps.device_tlb)
        | _f(L, "PT", caps.pass_through)
        | _f(L, "SC", caps.snoop_control)
        | _f(L, "IRO", IRO)
        | _f(L, "NEST", caps.nested)
        | _f(L, "PRS", caps.page_requests)
        | _f(L, "ERS", caps.execute_requests)
        | _f(L, "SRS", caps.supervisor_requests)
        | _f(L, "PSS", caps.pasid_bits - 1 if caps.pasid else 0)
        | _f(L, "PASID", caps.pasid)
        | _f(L, "SMTS", caps.scalable_mode)
        | _f(L, "SLADS", caps.sl_ad)
        | _f(L, "SLTS", caps.second_level)
        | _f(L, "FLTS", caps.first_level)
        | _f(L, "SMPWC", caps.page_walk_coherency)
    )


def register_table(caps: Capabilities) -> dict[int, Register]:
    """The concrete registers of a unit with ``caps``, keyed by offset.

    VER/CAP/ECAP get their reset values from ``caps``; a register whose ``requires`` feature
    is absent becomes RsvdZ (all masks 0); IQA.DW is RsvdZ without ECAP.SMTS; one fault
    recording register pair per ``caps.fault_records`` (hi qword: F is RW1C).
    """
    out: dict[int, Register] = {}
    for reg in REGISTERS:
        r = reg
        if r.requires is not None and (
            r.requires in _NEVER or not getattr(caps, r.requires, False)
        ):
            r = replace(r, reset=0, wmask=0, w1cmask=0, womask=0, oneshot=0)
        if r.offset == VER:
            r = replace(r, reset=version(caps))
        elif r.offset == CAP:
            r = replace(r, reset=encode_cap(caps))
        elif r.offset == ECAP:
            r = replace(r, reset=encode_ecap(caps))
        elif r.offset == IQA and not caps.scalable_mode:
            r = replace(r, wmask=r.wmask & ~IQA_LAYOUT.field("DW").mask)
        out[r.offset] = r
    f_mask = _FRCD_HI.field("F").mask
    for i in range(caps.fault_records):
        lo = fault_record_offset(i)
        out[lo] = Register(f"FRCD{i}_LO", lo, 64, _FRCD_LO, doc="fault record, low (RO)")
        out[lo + 8] = Register(
            f"FRCD{i}_HI", lo + 8, 64, _FRCD_HI, w1cmask=f_mask, doc="fault record, high"
        )
    return out
