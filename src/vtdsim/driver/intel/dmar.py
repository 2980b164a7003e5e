"""One remapping unit as the Intel driver sees it: ``struct intel_iommu``.

Design rationale
----------------
The driver talks to the hardware model exactly as Linux talks to silicon: tables in physical
memory (``PhysicalMemory``), pages from the OS (``FrameAllocator``), and the unit's registers
through ``read32/read64/write32/write64``.  Nothing here reaches into the hardware model's Python
objects, so every behaviour the driver depends on (the command protocol, the invalidation queue,
the status write of a wait descriptor) is exercised through the architectural interface, and a
bug on either side shows up as a divergence from the VT-d specification, not as a silent shortcut.

The register *values* the driver composes (GCMD bits, RTADDR.TTM, IQA.DW/QS) and the
invalidation descriptors it writes are encoded with the driver's own constants, named after the
Linux macros (``QI_IOTLB_DID``, ``QI_DEV_IOTLB_PFSID``...).  That is deliberate: Linux has its own
encoders, and a bit-exact model must reproduce *them* (including, on request, their historic
bugs, see :class:`Quirks`), while the hardware decodes with the specification's layouts
(``vtdsim.spec.descriptors``).  The tests decode what the driver wrote with those layouts, so a
disagreement between the Linux encoding and the specification is caught.

Queued invalidation follows ``qi_submit_sync`` (``drivers/iommu/intel/dmar.c``): the descriptors
and one wait descriptor (``QI_IWD_STATUS_DATA(QI_DONE) | QI_IWD_STATUS_WRITE | QI_IWD_TYPE``,
status address in qw1) are copied into the ring, IQT is advanced, and the status word is
polled.  The hardware model processes the queue synchronously when IQT is written, so the poll
succeeds on its first read, and a status that never arrives is an error instead of a hang (Linux
would spin, or panic in ``IOMMU_WAIT_OP``).  An invalidation-queue error (FSTS.IQE) is recovered
as ``qi_check_fault`` does: the faulting descriptor is overwritten with the wait descriptor, IQE is
cleared, and a typed :class:`QiError` (``-EINVAL``) is raised.

Model choices that differ from Linux only in representation: ``qi->desc_status`` (a kcalloc'd
``int`` array in Linux) is a page of physical memory with one qword per slot, so the status
address of slot *i* is ``qi_status + 8*i`` and the driver polls with aligned qword reads; and
``flush_iotlb_psi`` batches the IOTLB and device-TLB descriptors of one unit into one
submission as modern Linux's ``qi_batch`` does (5.x submitted each with its own wait).

Strict invalidation (``intel_iommu_strict``) is the only mode: every flush returns after its wait
descriptor completed, and callers free page-table pages only afterwards (Linux's freelist).
"""

from __future__ import annotations

import errno
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Protocol

from vtdsim.driver import sync
from vtdsim.driver.intel.domain_id import DomainIdAllocator
from vtdsim.driver.intel.inject import FaultInjector
from vtdsim.errors import ArgumentError, IommuError
from vtdsim.hw.memory import FrameAllocator, OutOfFrames, PhysicalMemory
from vtdsim.spec import descriptors as _D
from vtdsim.spec import registers as _R
from vtdsim.spec.bits import Layout

if TYPE_CHECKING:
    from vtdsim.driver.intel.device import DeviceDomainInfo

__all__ = [
    "QI_LENGTH",
    "Desc",
    "IntelIommu",
    "MmioUnit",
    "QiError",
    "Quirks",
    "agaw_to_level",
    "agaw_to_width",
    "guestwidth_to_adjustwidth",
    "init_dmars",
    "width_to_agaw",
]

Desc = tuple[int, int, int, int]

# --- Registers ---------------------------------------------------------------------------------
# Offsets from vtdsim.spec.registers (Linux DMAR_*_REG); every bit position below is taken from
# the spec layouts (ARCHITECTURE.md: never hard-code a bit number a layout declares) and named
# after the Linux macro that composes or tests it.
DMAR_CAP_REG = _R.CAP
DMAR_ECAP_REG = _R.ECAP
DMAR_GCMD_REG = _R.GCMD
DMAR_GSTS_REG = _R.GSTS
DMAR_RTADDR_REG = _R.RTADDR
DMAR_FSTS_REG = _R.FSTS
DMAR_IQH_REG = _R.IQH
DMAR_IQT_REG = _R.IQT
DMAR_IQA_REG = _R.IQA


def _bit(layout: Layout, name: str) -> int:
    f = layout.field(name)
    return 1 << f.shift


# GCMD / GSTS (same bit positions): Linux DMA_GCMD_* / DMA_GSTS_*
DMA_GCMD_TE = _bit(_R.GCMD_LAYOUT, "TE")
DMA_GCMD_SRTP = _bit(_R.GCMD_LAYOUT, "SRTP")
DMA_GCMD_WBF = _bit(_R.GCMD_LAYOUT, "WBF")
DMA_GCMD_QIE = _bit(_R.GCMD_LAYOUT, "QIE")
DMA_GSTS_TES = _bit(_R.GSTS_LAYOUT, "TES")
DMA_GSTS_RTPS = _bit(_R.GSTS_LAYOUT, "RTPS")
DMA_GSTS_WBFS = _bit(_R.GSTS_LAYOUT, "WBFS")
DMA_GSTS_QIES = _bit(_R.GSTS_LAYOUT, "QIES")
#: RTADDR.TTM = 01b (scalable mode): Linux DMA_RTADDR_SMT = BIT(10)
DMA_RTADDR_SMT = 1 << _R.RTADDR_LAYOUT.field("TTM").shift
#: IQA.DW (256-bit descriptors) and IQA.QS = 1 (two pages): Linux writes ``BIT(11) | 1``
IQA_DW = _bit(_R.IQA_LAYOUT, "DW")
IQA_QS_SHIFT = _R.IQA_LAYOUT.field("QS").shift
DMA_FSTS_IQE = _bit(_R.FSTS_LAYOUT, "IQE")
DMA_FSTS_ICE = _bit(_R.FSTS_LAYOUT, "ICE")
DMA_FSTS_ITE = _bit(_R.FSTS_LAYOUT, "ITE")
#: IQH/IQT: the queue offset field starts at bit 4 (DMAR_IQ_SHIFT); +1 for 256-bit descriptors
DMAR_IQ_SHIFT = next(r for r in _R.REGISTERS if r.name == "IQT").layout.field("QH").shift

#: Linux ``IOMMU_WAIT_OP`` spins until DMAR_OPERATION_TIMEOUT and panics; the model re-reads
#: the status a bounded number of times (the hardware is synchronous, one read suffices).
_WAIT_READS = 8


# --- Capability decoding: Linux cap_* / ecap_* macros (iommu.h), positions from the layouts --
def _getter(layout: Layout, name: str) -> tuple[int, int]:
    f = layout.field(name)
    return f.shift, (1 << f.width) - 1


_CAP = {
    n: _getter(_R.CAP_LAYOUT, n)
    for n in (
        "ND",
        "RWBF",
        "CM",
        "SAGAW",
        "MGAW",
        "SLLPS",
        "PSI",
        "MAMV",
        "DWD",
        "DRD",
        "FL1GP",
        "FL5LP",
        "ESRTPS",
    )
}
_ECAP = {
    n: _getter(_R.ECAP_LAYOUT, n)
    for n in (
        "C",
        "QI",
        "DT",
        "PT",
        "SC",
        "SRS",
        "PSS",
        "PASID",
        "SMTS",
        "SLTS",
        "FLTS",
        "SMPWC",
    )
}


def _cap(c: int, name: str) -> int:
    sh, m = _CAP[name]
    return c >> sh & m


def _ecap(e: int, name: str) -> int:
    sh, m = _ECAP[name]
    return e >> sh & m


def cap_ndoms(c: int) -> int:
    return 1 << (4 + 2 * _cap(c, "ND"))


def cap_rwbf(c: int) -> bool:
    return bool(_cap(c, "RWBF"))


def cap_caching_mode(c: int) -> bool:
    return bool(_cap(c, "CM"))


def cap_sagaw(c: int) -> int:
    return _cap(c, "SAGAW")


def cap_mgaw(c: int) -> int:
    return _cap(c, "MGAW") + 1


def cap_super_page_val(c: int) -> int:
    return _cap(c, "SLLPS")


def cap_pgsel_inv(c: int) -> bool:
    return bool(_cap(c, "PSI"))


def cap_max_amask_val(c: int) -> int:
    return _cap(c, "MAMV")


def cap_write_drain(c: int) -> bool:
    return bool(_cap(c, "DWD"))


def cap_read_drain(c: int) -> bool:
    return bool(_cap(c, "DRD"))


def cap_fl1gp_support(c: int) -> bool:
    return bool(_cap(c, "FL1GP"))


def cap_fl5lp_support(c: int) -> bool:
    return bool(_cap(c, "FL5LP"))


def cap_esrtps(c: int) -> bool:
    return bool(_cap(c, "ESRTPS"))


def ecap_coherent(e: int) -> bool:
    return bool(_ecap(e, "C"))


def ecap_qis(e: int) -> bool:
    return bool(_ecap(e, "QI"))


def ecap_dev_iotlb_support(e: int) -> bool:
    return bool(_ecap(e, "DT"))


def ecap_pass_through(e: int) -> bool:
    return bool(_ecap(e, "PT"))


def ecap_sc_support(e: int) -> bool:
    return bool(_ecap(e, "SC"))


def ecap_srs(e: int) -> bool:
    return bool(_ecap(e, "SRS"))


def ecap_pss(e: int) -> int:
    return _ecap(e, "PSS")


def ecap_pasid(e: int) -> bool:
    return bool(_ecap(e, "PASID"))


def ecap_smts(e: int) -> bool:
    return bool(_ecap(e, "SMTS"))


def ecap_slts(e: int) -> bool:
    return bool(_ecap(e, "SLTS"))


def ecap_flts(e: int) -> bool:
    return bool(_ecap(e, "FLTS"))


def ecap_smpwc(e: int) -> bool:
    return bool(_ecap(e, "SMPWC"))


# --- Address widths (Linux iommu.c / iommu.h) --------------------------------------------------
LEVEL_STRIDE = 9
#: Linux DEFAULT_DOMAIN_ADDRESS_WIDTH (57 since 5-level support, 2019).
DEFAULT_DOMAIN_ADDRESS_WIDTH = 57
MAX_AGAW_WIDTH = 64


def width_to_agaw(width: int) -> int:
    """``width_to_agaw``: DIV_ROUND_UP(width - 30, 9)."""
    return -(-(width - 30) // LEVEL_STRIDE)


def agaw_to_level(agaw: int) -> int:
    return agaw + 2


def agaw_to_width(agaw: int) -> int:
    return min(30 + agaw * LEVEL_STRIDE, MAX_AGAW_WIDTH)


def guestwidth_to_adjustwidth(gaw: int) -> int:
    """``guestwidth_to_adjustwidth``: round a guest width up to a whole number of levels."""
    r = (gaw - 12) % 9
    agaw = gaw if r == 0 else gaw + 9 - r
    return min(agaw, 64)


def _calculate_agaw(cap: int, max_gaw: int) -> int:
    """``__iommu_calculate_agaw``: the largest supported AGAW not above ``max_gaw``, or -1."""
    sagaw = cap_sagaw(cap)
    agaw = width_to_agaw(max_gaw)
    while agaw >= 0:
        if sagaw >> agaw & 1:
            return agaw
        agaw -= 1
    return -1


# --- Invalidation descriptors: Linux QI_* macros (iommu.h) -------------------------------------
QI_LENGTH = 256
QI_FREE, QI_IN_USE, QI_DONE, QI_ABORT = 0, 1, 2, 3

# Linux QI_*_TYPE (the spec's descriptor type numbers)
QI_CC_TYPE = int(_D.DescType.CC)
QI_IOTLB_TYPE = int(_D.DescType.IOTLB)
QI_DIOTLB_TYPE = int(_D.DescType.DEVTLB)
QI_IWD_TYPE = int(_D.DescType.WAIT)
QI_EIOTLB_TYPE = int(_D.DescType.PIOTLB)
QI_PC_TYPE = int(_D.DescType.PASID_CACHE)
QI_DEIOTLB_TYPE = int(_D.DescType.PDEVTLB)


def _s(layout: Layout, name: str) -> int:
    """Position of ``name`` inside its qword (descriptor layouts span qw0..qw1)."""
    return layout.field(name).shift


# Shifts of the Linux QI_* macros, taken from the spec layouts.
_G = _s(_D.CC_DESC, "G")  # QI_*_GRAN: bits 5:4 in every type with a G field
_DID = _s(_D.CC_DESC, "DID")  # QI_*_DID: bits 31:16
_CC_SID = _s(_D.CC_DESC, "SID")  # QI_CC_SID: 47:32
_CC_FM = _s(_D.CC_DESC, "FM")  # QI_CC_FM: 49:48
_IOTLB_DW = _s(_D.IOTLB_DESC, "DW")
_IOTLB_DR = _s(_D.IOTLB_DESC, "DR")
_AM_MASK = _D.IOTLB_DESC.field("AM").mask  # QI_IOTLB_AM: qw1 5:0
_IH = _s(_D.IOTLB_DESC, "IH")  # qw1 6
_PASID = _s(_D.PIOTLB_DESC, "PASID")  # QI_EIOTLB_PASID / QI_PC_PASID: 51:32
_DEV_SID = _s(_D.DEVTLB_DESC, "SID")  # QI_DEV_IOTLB_SID: 47:32
_DEV_QDEP = _s(_D.DEVTLB_DESC, "MIP")  # QI_DEV_IOTLB_QDEP: 20:16
_DEV_S = 1 << _s(_D.DEVTLB_DESC, "S")  # QI_DEV_IOTLB_SIZE: qw1 bit 0
_PFSID_LO = _s(_D.DEVTLB_DESC, "PFSID_LO")  # 15:12
_PFSID_HI = _s(_D.DEVTLB_DESC, "PFSID_HI")  # 63:52
_PDEV_SID = _s(_D.PDEVTLB_DESC, "SID")  # QI_DEV_EIOTLB_SID: 31:16
_PDEV_QDEP = _s(_D.PDEVTLB_DESC, "MIP")  # QI_DEV_EIOTLB_QDEP: 8:4
_PDEV_S = 1 << _s(_D.PDEVTLB_DESC, "S")  # QI_DEV_EIOTLB_SIZE: qw1 bit 11
_W_SW = 1 << _s(_D.WAIT_DESC, "SW")  # QI_IWD_STATUS_WRITE
_W_FN = 1 << _s(_D.WAIT_DESC, "FN")  # QI_IWD_FENCE
_W_SDATA = _s(_D.WAIT_DESC, "SDATA")  # QI_IWD_STATUS_DATA: 63:32
QI_IWD_STATUS_WRITE = _W_SW
QI_IWD_FENCE = _W_FN

# Granularities as Linux passes them: register encodings (CCMD.CIRG 62:61, IOTLB.IIRG 61:60),
# which QI_CC_GRAN / QI_IOTLB_GRAN shift down into the descriptor's G field.
_CIRG = _R.CCMD_LAYOUT.field("CIRG").shift
_IIRG = _R.IOTLB_LAYOUT.field("IIRG").shift
DMA_CCMD_GLOBAL_INVL = 1 << _CIRG
DMA_CCMD_DOMAIN_INVL = 2 << _CIRG
DMA_CCMD_DEVICE_INVL = 3 << _CIRG
DMA_TLB_GLOBAL_FLUSH = 1 << _IIRG
DMA_TLB_DSI_FLUSH = 2 << _IIRG
DMA_TLB_PSI_FLUSH = 3 << _IIRG
QI_PC_ALL_PASIDS = int(_D.PasidCacheGranularity.DOMAIN)
QI_PC_PASID_SEL = int(_D.PasidCacheGranularity.PASID)
QI_PC_GLOBAL = int(_D.PasidCacheGranularity.GLOBAL)
QI_GRAN_NONG_PASID = int(_D.PiotlbGranularity.PASID)
QI_GRAN_PSI_PASID = int(_D.PiotlbGranularity.PAGE)
QI_DEV_IOTLB_MAX_INVS = 32
#: qw0 of qi_submit_sync's wait descriptor: QI_IWD_STATUS_DATA(QI_DONE) | QI_IWD_STATUS_WRITE |
#: QI_IWD_TYPE
_WAIT_QW0 = QI_DONE << _W_SDATA | QI_IWD_STATUS_WRITE | QI_IWD_TYPE
VTD_PAGE_SHIFT = 12
VTD_PAGE_MASK = ((1 << 64) - 1) ^ ((1 << VTD_PAGE_SHIFT) - 1)
#: ``MAX_AGAW_PFN_WIDTH``: the mask used for a whole-address-space PSI.
MAX_AGAW_PFN_WIDTH = MAX_AGAW_WIDTH - VTD_PAGE_SHIFT
_U64 = (1 << 64) - 1
#: two 256-bit ring slots (qi_submit_sync's descriptor + wait), as PhysicalMemory stores them
_PACK_2SLOTS_INTO = struct.Struct("=8Q").pack_into
#: n -> ``struct.Struct(f"={n}Q").pack`` (qi_submit_sync's one-slice copy)
_PACK_QWORDS: dict[int, Callable[..., bytes]] = {}
#: one little-endian qword (a status word), as PhysicalMemory.write64 stores it
_PACK_QWORD_INTO = struct.Struct("<Q").pack_into
#: one qword as PhysicalMemory's 'Q' views read it (native order): a status word read back
_UNPACK_QWORD_FROM = struct.Struct("=Q").unpack_from
#: QI_IOTLB_GRAN(DMA_TLB_DSI_FLUSH): the G field of a domain-selective IOTLB descriptor
_DSI_G = (DMA_TLB_DSI_FLUSH >> _IIRG) << _G
#: qword 1 of desc_dev_iotlb_pasid(..., addr=0, size_order=MAX_AGAW_PFN_WIDTH): the same steps
_PDEV_ALL_QW1 = (((1 << (MAX_AGAW_PFN_WIDTH + VTD_PAGE_SHIFT)) - 1) & VTD_PAGE_MASK) & ~(
    1 << (VTD_PAGE_SHIFT + MAX_AGAW_PFN_WIDTH - 1)
) | _PDEV_S
#: (sid, pfsid, pasid, qdep, QUIRKS.pfsid_macro_bug) -> qword 0 of the whole-address-space
#: PASID device-TLB descriptor (flush_dev_iotlb, the teardown's flush), shared by every unit:
#: the value depends on nothing else (desc_dev_iotlb_pasid), and a module-level table is not
#: part of a world snapshot, so a restored world still finds it filled.  Bounded: cleared when
#: full.
_PDEVTLB_ALL_QW0: dict[tuple[int, int, int, int, bool], int] = {}


def _qi_dev_iotlb_pfsid(pfsid: int, bug: bool) -> int:
    """``QI_DEV_IOTLB_PFSID``: PFSID[3:0] at 15:12, PFSID[15:4] at 63:52.

    With ``bug`` the pre-4e7120d79edb macro: ``(pfsid & 0xfff) << 52`` for the upper part.
    """
    upper = (pfsid & 0xFFF) if bug else (pfsid >> 4 & 0xFFF)
    return (pfsid & 0xF) << _PFSID_LO | upper << _PFSID_HI


@dataclass(frozen=True, slots=True)
class Quirks:
    """Historic Linux behaviours the model can reproduce; the default is modern and correct.

    * ``v5_1_entry`` (5.1 ``intel-pasid.c``): ``intel_pasid_setup_second_level`` and
      ``_pass_through`` set SRE unconditionally and overwrite a present entry without the
      ``-EBUSY`` check; ``intel_pasid_tear_down_entry`` tears down without a present check, flushes
      the IOTLB with P_IOTLB (all in PASID) whatever the PGTT and the device TLB with the
      non-PASID form.
    * ``pwsnp_did_bit0`` (fixed 2019-05, "Set the right field for Page Walk Snoop"): the PWSNP
      setter ORs the value into qw1 bit 0 (DID bit 0) instead of bit 87.
    * ``pfsid_macro_bug`` (fixed 4e7120d79edb): device-TLB descriptors carry ``pfsid & 0xfff``
      instead of ``pfsid >> 4`` in bits 63:52.
    * ``rid_priv`` (until mid-2020): ``context_set_sm_rid2pasid`` also sets RID_PRIV.
    """

    v5_1_entry: bool = False
    pwsnp_did_bit0: bool = False
    pfsid_macro_bug: bool = False
    rid_priv: bool = False

    @property
    def v5_overwrite(self) -> bool:
        """DRIVER.md's name for the 5.1 overwrite behaviour (same as ``v5_1_entry``)."""
        return self.v5_1_entry

    @classmethod
    def linux_5_1(cls) -> Quirks:
        """Every quirk of the 5.1-era code this model knows."""
        return cls(v5_1_entry=True, pwsnp_did_bit0=True, pfsid_macro_bug=True, rid_priv=True)


class QiError(IommuError):
    """The unit reported an invalidation-queue error for a submitted descriptor.

    ``index`` is the ring slot, ``desc`` the descriptor the hardware rejected, ``fsts`` the fault
    status read.  ``errno`` is ``EINVAL`` (``qi_check_fault``'s return) or ``ETIMEDOUT`` when the
    wait status never arrived without an error (Linux would spin forever).
    """

    def __init__(self, err: int, message: str, index: int, desc: Desc, fsts: int) -> None:
        self.index = index
        self.desc = desc
        self.fsts = fsts
        super().__init__(err, message)


class MmioUnit(Protocol):
    """What the driver needs of a remapping unit: its MMIO register file."""

    def read32(self, off: int) -> int: ...

    def read64(self, off: int) -> int: ...

    def write32(self, off: int, value: int) -> None: ...

    def write64(self, off: int, value: int) -> None: ...


class IntelIommu:
    """Linux ``struct intel_iommu`` for one unit.

    ``IntelIommu(unit, frames, seq_id=0)`` reads CAP/ECAP and computes ``agaw``/``msagaw``
    (``alloc_iommu`` + ``iommu_calculate_agaw``) and the DID bitmap (``iommu_init_domains``);
    :meth:`boot` then does what ``init_dmars`` + ``iommu_enable_translation`` do.

    Locks: ``lock`` (``iommu->lock``: context entries, DIDs, PASID entries),
    ``register_lock`` (``iommu->register_lock``: GCMD/GSTS), ``qi_lock`` (``qi->q_lock``).
    """

    def __init__(
        self,
        unit: MmioUnit,
        frames: FrameAllocator,
        *,
        seq_id: int = 0,
        name: str | None = None,
        quirks: Quirks | None = None,
        injector: FaultInjector | None = None,
        scalable: bool = True,
    ) -> None:
        self.unit = unit
        self.frames = frames
        self.memory: PhysicalMemory = frames.memory
        self.seq_id = seq_id
        self.name = name if name is not None else f"dmar{seq_id}"
        self.quirks = quirks if quirks is not None else Quirks()
        self.injector = injector
        self.lock = sync.SpinLock("iommu->lock")
        self.register_lock = sync.SpinLock("iommu->register_lock")
        self.qi_lock = sync.SpinLock("qi->q_lock")
        self.cap = unit.read64(DMAR_CAP_REG)
        self.ecap = unit.read64(DMAR_ECAP_REG)
        self.gcmd = 0  # iommu->gcmd: the persistent GCMD bits software has set (TE, QIE)
        #: ``sm_supported(iommu)``: intel_iommu_sm && ECAP.SMTS
        self.sm = bool(scalable) and ecap_smts(self.ecap)
        self.pasid_supported = self.sm and ecap_pasid(self.ecap)
        self.agaw = _calculate_agaw(self.cap, DEFAULT_DOMAIN_ADDRESS_WIDTH)
        self.msagaw = _calculate_agaw(self.cap, MAX_AGAW_WIDTH)
        if self.agaw < 0:
            raise IommuError(errno.ENODEV, f"{self.name}: cannot get a valid agaw (SAGAW = 0)")
        self.domain_ids = DomainIdAllocator(cap_ndoms(self.cap), self.sm, self.lock, injector)
        self.root_table = 0
        self.qi_desc = 0  # phys of the invalidation queue (qi->desc)
        self.qi_status = 0  # phys of the status words (qi->desc_status)
        self._qi_shift = DMAR_IQ_SHIFT + int(ecap_smts(self.ecap))  # qi_shift()
        self._free_head = 0
        self._qi_dirty_hi: set[int] = set()  # ring slots whose qwords 2-3 are non-zero
        #: When a list, every submitted descriptor (incl. the wait) is appended (tests, traces).
        self.qi_trace: list[Desc] | None = None
        self.coherent = ecap_coherent(self.ecap)
        self.caching_mode = cap_caching_mode(self.cap)
        #: ``domain->iommu_superpage`` contribution: number of SL superpage levels (0/1/2).
        sp = cap_super_page_val(self.cap)
        self.superpage = 0
        while sp & 1:
            self.superpage += 1
            sp >>= 1
        self.clflushes = 0  # count of clflush_cache_range calls (non-coherent units)
        # hot-path copies of capability bits (qi_flush_iotlb, iommu_flush_iotlb_psi)
        self._iotlb_drain = (
            int(cap_read_drain(self.cap)) << _IOTLB_DR | int(cap_write_drain(self.cap)) << _IOTLB_DW
        )
        self._psi = cap_pgsel_inv(self.cap)
        #: DID -> qword 0 of its page-selective IOTLB descriptor (_flush_iotlb_psi)
        self._psi_qw0: dict[int, int] = {}
        #: (bus, devfn, pfsid, qdep) -> qword 0 of its device-TLB descriptor (_flush_iotlb_psi)
        self._devtlb_qw0: dict[tuple[int, int, int, int], int] = {}
        #: read-only view of _PDEVTLB_ALL_QW0 (flush_dev_iotlb's descriptor cache; a view,
        #: which world snapshots do not record)
        self._pdevtlb_all_qw0: Mapping[tuple[int, int, int, int, bool], int] = MappingProxyType(
            _PDEVTLB_ALL_QW0
        )
        self._mamv = cap_max_amask_val(self.cap)
        #: ``cap_rwbf``: write-buffer flushing required (iommu_flush_write_buffer, map path)
        self.rwbf = cap_rwbf(self.cap)
        #: ``prepare_domain_attach_device``'s address width: the AGAW width, at most CAP.MGAW
        #: (Linux ``alloc_iommu`` fixes both), computed here as ``_agaw_width`` would on first
        #: use, so that a unit's first attach takes the aux path's inline width check
        self.addr_width: int | None = min(agaw_to_width(self.agaw), cap_mgaw(self.cap))
        #: ECAP tests of the PASID-entry setup paths (``ecap_slts``, ``ecap_sc_support``,
        #: ``ecap_srs``, ``ecap_smpwc``), decoded once
        self.slts = ecap_slts(self.ecap)
        self.sc = ecap_sc_support(self.ecap)
        self.srs = ecap_srs(self.ecap)
        self.smpwc = ecap_smpwc(self.ecap)

    def __repr__(self) -> str:
        return f"<IntelIommu {self.name} seq_id={self.seq_id} sm={self.sm} agaw={self.agaw}>"

    # -- capability helpers used by the other modules -----------------------------------------

    @property
    def ndoms(self) -> int:
        return cap_ndoms(self.cap)

    def ecap_bit(self, name: str) -> bool:
        """Named ECAP test (``"srs"``, ``"smpwc"``, ``"sc"``, ``"slts"``, ``"flts"``, ``"pt"``,
        ``"dt"``, ``"coherent"``)."""
        return _ECAP_TESTS[name](self.ecap)

    def clflush_cache_range(self, addr: int, size: int) -> None:
        """``__iommu_flush_cache``: a CPU cache flush when the unit's walks do not snoop.

        Memory in the model is always coherent; the call is counted so tests can assert the
        ordering rule (entry written, then flushed, then the caches invalidated)."""
        del addr, size
        if not self.coherent:
            self.clflushes += 1

    # -- register helpers ----------------------------------------------------------------------

    def _wait_gsts(self, mask: int, want_set: bool, what: str) -> int:
        """``IOMMU_WAIT_OP(iommu, DMAR_GSTS_REG, readl, cond, sts)``: error instead of a hang."""
        for _ in range(_WAIT_READS):
            sts = self.unit.read32(DMAR_GSTS_REG)
            if bool(sts & mask) == want_set:
                return sts
        raise IommuError(
            errno.ETIMEDOUT,
            f"{self.name}: DMAR hardware is malfunctioning ({what} never completed)",
        )

    # -- boot: init_dmars ----------------------------------------------------------------------

    def boot(self, enable_translation: bool = True) -> None:
        """Linux ``init_dmars`` for one unit, then ``iommu_enable_translation``.

        Order: ``dmar_enable_qi`` (queue pages, IQT = 0, IQA = base | DW | QS=1 when SMTS,
        GCMD.QIE, wait GSTS.QIES); ``iommu_alloc_root_entry``; ``iommu_set_root_entry``
        (RTADDR = root | SMT when scalable, GCMD.SRTP, wait GSTS.RTPS, then unless CAP.ESRTPS a
        global context-cache, a global PASID-cache (scalable) and a global IOTLB invalidation);
        GCMD.TE, wait GSTS.TES.

        On error everything this call allocated is freed and ``IommuError`` is raised
        (``ENODEV`` without QI, ``ENOMEM`` without pages, ``ETIMEDOUT`` if a status bit never
        sets).
        """
        if not ecap_qis(self.ecap):
            # Register-based invalidation (__iommu_flush_context/iotlb) is not modelled; Linux
            # refuses scalable mode without QI as well.
            raise IommuError(errno.ENODEV, f"{self.name}: no queued invalidation (ECAP.QI = 0)")
        try:
            self.dmar_enable_qi()
            self.root_table = self._alloc_frame(0, "root-table")
            self.iommu_set_root_entry()
            if enable_translation:
                self.iommu_enable_translation()
        except (IommuError, OutOfFrames) as e:
            self._unwind_boot()
            if isinstance(e, OutOfFrames):
                raise IommuError(errno.ENOMEM, f"{self.name}: boot: {e}") from e
            raise

    def _unwind_boot(self) -> None:
        for attr in ("root_table", "qi_desc", "qi_status"):
            phys = getattr(self, attr)
            if phys:
                self.frames.free(phys)
                setattr(self, attr, 0)

    def _alloc_frame(self, order: int, tag: str) -> int:
        sync.point(f"alloc:{tag}")
        return self.frames.alloc(order, tag)

    def dmar_enable_qi(self) -> None:
        """Linux ``dmar_enable_qi`` + ``__dmar_enable_qi``."""
        if self.qi_desc:
            return
        # Two pages for 256 x 256-bit descriptors in scalable mode (alloc_pages_node order 1).
        self.qi_desc = self._alloc_frame(1 if ecap_smts(self.ecap) else 0, "qi")
        self.qi_status = self._alloc_frame(0, "qi-status")  # kcalloc(QI_LENGTH, sizeof(int))
        self._free_head = 0
        self._qi_dirty_hi.clear()
        val = self.qi_desc
        if ecap_smts(self.ecap):
            val |= IQA_DW | 1 << IQA_QS_SHIFT  # IQA.DW = 1 (256-bit), IQA.QS = 1 (2 pages)
        with self.register_lock:
            self.unit.write32(DMAR_IQT_REG, 0)
            self.unit.write64(DMAR_IQA_REG, val)
            self.gcmd |= DMA_GCMD_QIE
            self.unit.write32(DMAR_GCMD_REG, self.gcmd)
            self._wait_gsts(DMA_GSTS_QIES, True, "QIE")

    def iommu_set_root_entry(self) -> None:
        """Linux ``iommu_set_root_entry``."""
        addr = self.root_table
        if self.sm:
            addr |= DMA_RTADDR_SMT
        with self.register_lock:
            self.unit.write64(DMAR_RTADDR_REG, addr)
            self.unit.write32(DMAR_GCMD_REG, self.gcmd | DMA_GCMD_SRTP)
            self._wait_gsts(DMA_GSTS_RTPS, True, "SRTP")
        if cap_esrtps(self.cap):
            return  # hardware invalidates every cache as part of the SRTP flow
        self.flush_context(0, 0, 0, DMA_CCMD_GLOBAL_INVL)
        if self.sm:
            self.flush_pasid_cache(0, 0, QI_PC_GLOBAL)
        self.flush_iotlb(0, 0, 0, DMA_TLB_GLOBAL_FLUSH)

    def iommu_enable_translation(self) -> None:
        """Linux ``iommu_enable_translation``: GCMD.TE, wait GSTS.TES."""
        with self.register_lock:
            self.gcmd |= DMA_GCMD_TE
            self.unit.write32(DMAR_GCMD_REG, self.gcmd)
            self._wait_gsts(DMA_GSTS_TES, True, "TE")

    def iommu_disable_translation(self) -> None:
        """Linux ``iommu_disable_translation``."""
        with self.register_lock:
            self.gcmd &= ~DMA_GCMD_TE
            self.unit.write32(DMAR_GCMD_REG, self.gcmd)
            self._wait_gsts(DMA_GSTS_TES, False, "TE off")

    def iommu_flush_write_buffer(self) -> None:
        """Linux ``iommu_flush_write_buffer``: GCMD.WBF when CAP.RWBF, wait for WBFS clear."""
        if not self.rwbf:
            return
        with self.register_lock:
            self.unit.write32(DMAR_GCMD_REG, self.gcmd | DMA_GCMD_WBF)
            self._wait_gsts(DMA_GSTS_WBFS, False, "WBF")

    def shutdown(self) -> None:
        """Free the root table and the queue pages (the unit should be disabled first)."""
        self._unwind_boot()

    # -- queued invalidation: qi_submit_sync ---------------------------------------------------

    def qi_submit_sync(self, descs: Sequence[Desc]) -> None:
        """Linux ``qi_submit_sync``: copy ``descs`` and a wait descriptor into the ring, write
        IQT, and check the wait status.

        Returns only after the hardware completed every descriptor.  Raises :class:`QiError`
        (``-EINVAL``) after recovering the queue if the unit flagged one of ``descs`` invalid
        (``qi_check_fault``), or (``-ETIMEDOUT``) if the status never arrived.
        """
        count = len(descs)
        if not self.qi_desc:
            raise IommuError(errno.ENODEV, f"{self.name}: queued invalidation is not enabled")
        if count + 2 > QI_LENGTH:
            raise ArgumentError("descs", count, f"at most {QI_LENGTH - 2} descriptors")
        if sync._backend is not None:  # sync.point without a call when no backend is installed
            sync.point("qi_submit_sync")
        mem = self.memory
        shift = self._qi_shift
        lock = self.qi_lock
        # raw_spin_lock_irqsave(&qi->q_lock) ... unlock: explicit acquire/release, the same
        # sync operations as ``with`` (SpinLock.__enter__/__exit__ defer to them), cheaper
        lock.acquire()
        try:
            index = self._free_head
            if (
                count == 1
                and shift == 5
                and ((index + 1) << 5) & 0xFFF
                and not self._qi_dirty_hi
                and self.qi_trace is None
            ):
                # The one-descriptor submission of every flush helper but the batched PSI, in
                # scalable mode (256-bit slots, none with qwords 2-3 in use): descriptor and
                # wait descriptor in consecutive slots of one ring page (the wait slot neither
                # wraps nor starts a page).  The general path below, with the same bytes in the
                # same order (tests/test_perf_aux_path.py pins it to it).
                d0, d1, d2, d3 = descs[0]
                if not (d2 or d3):
                    status_addr = self.qi_status + 8 * (index + 1)
                    ring = self.qi_desc + (index << 5)
                    wp = mem.written_pages  # PhysicalMemory's hot-path view of written pages
                    rbuf = wp.get(ring >> 12)
                    sbuf = wp.get(status_addr >> 12)
                    if (
                        rbuf is not None
                        and sbuf is not None
                        and type(d0) is int
                        and type(d1) is int
                        and not (d0 | d1) >> 64  # 0 <= d0, d1 <= _U64 (a negative one: -1)
                    ):
                        # PhysicalMemory.write_qwords(ring, ...) and write64(status,
                        # QI_IN_USE) into pages already written, inlined: the same bytes,
                        # packed in place.  Every value is in range (d0 and d1 checked just
                        # above; the status address lies in a written page, inside memory),
                        # so pack_into, which zero-fills its destination before it
                        # range-checks, cannot fail half-way (tests/test_perf_qi2.py).
                        _PACK_2SLOTS_INTO(
                            rbuf, ring & 0xFFF, d0, d1, 0, 0, _WAIT_QW0, status_addr, 0, 0
                        )
                        _PACK_QWORD_INTO(sbuf, status_addr & 0xFFF, QI_IN_USE)
                        ok = True
                    else:
                        try:
                            mem.write_qwords(ring, (d0, d1, 0, 0, _WAIT_QW0, status_addr, 0, 0))
                        except ArgumentError:
                            ok = False  # nothing written: the general path raises the error
                        else:
                            mem.write64(status_addr, QI_IN_USE)
                            ok = True
                    if ok:
                        head = index + 2 if index + 2 < QI_LENGTH else 0
                        self._free_head = head
                        self.unit.write32(DMAR_IQT_REG, head << 5)
                        # the status word, read back from the written page it is in (the
                        # buffer under the read-only qword_pages view, never replaced: the
                        # same qword), else through read64
                        status = (
                            _UNPACK_QWORD_FROM(sbuf, status_addr & 0xFFF)[0]
                            if sbuf is not None
                            else mem.read64(status_addr)
                        )
                        if status & 0xFFFFFFFF != QI_DONE:
                            self._qi_check_fault(
                                index, 1, index + 1, status_addr, (_WAIT_QW0, status_addr, 0, 0)
                            )
                        return
            last = index + count  # the wait descriptor's slot, before the wrap
            wait_index = last if last < QI_LENGTH else last - QI_LENGTH  # count + 2 <= length
            # desc_status[wait_index]: one qword per status word, so aligned qword accesses
            status_addr = self.qi_status + 8 * wait_index
            # The memcpy: one slice for the descriptors and the wait descriptor when they fill
            # consecutive slots of one ring page and no 256-bit slot has qwords 2-3 in use
            # (PhysicalMemory.write_qwords), then the status word; else slot by slot.
            fast = last < QI_LENGTH and (index << shift) >> 12 == (last << shift) >> 12
            if fast:
                words: list[int] = []
                if shift == 5:
                    if self._qi_dirty_hi:
                        fast = False
                    else:
                        for d in descs:
                            if d[2] or d[3]:
                                fast = False
                                break
                            words += d
                        words += (_WAIT_QW0, status_addr, 0, 0)
                else:
                    for d in descs:
                        words += (d[0], d[1])
                    words += (_WAIT_QW0, status_addr)
                if fast:
                    ring = self.qi_desc + (index << shift)
                    wp = mem.written_pages  # PhysicalMemory's hot-path view of written pages
                    rbuf = wp.get(ring >> 12)
                    sbuf = wp.get(status_addr >> 12)
                    if rbuf is not None and sbuf is not None:
                        # PhysicalMemory.write_qwords / write64 into pages already written,
                        # inlined: every value packed (range-checked) before a byte is stored
                        n = len(words)
                        pack = _PACK_QWORDS.get(n)
                        if pack is None:
                            pack = _PACK_QWORDS[n] = struct.Struct(f"={n}Q").pack
                        try:
                            data = pack(*words)
                        except struct.error:
                            fast = False  # nothing written: the general copy raises the error
                        else:
                            off = ring & 0xFFF
                            rbuf[off : off + 8 * n] = data
                            _PACK_QWORD_INTO(sbuf, status_addr & 0xFFF, QI_IN_USE)
                    else:
                        try:
                            mem.write_qwords(ring, words)
                        except ArgumentError:
                            fast = False  # nothing written: the general copy raises the error
                        else:
                            mem.write64(status_addr, QI_IN_USE)
            if not fast:
                self._qi_copy(descs, index, wait_index, status_addr, (_WAIT_QW0, status_addr, 0, 0))
            trace = self.qi_trace
            if trace is not None:
                trace.extend(descs)
                trace.append((_WAIT_QW0, status_addr, 0, 0))
            self._free_head = head = wait_index + 1 if wait_index + 1 < QI_LENGTH else 0
            self.unit.write32(DMAR_IQT_REG, head << shift)
            q = mem.qword_pages.get(status_addr >> 12)  # read-only hot-path view
            status = (
                int(q[(status_addr & 0xFFF) >> 3]) if q is not None else mem.read64(status_addr)
            )
            if status & 0xFFFFFFFF != QI_DONE:
                self._qi_check_fault(
                    index, count, wait_index, status_addr, (_WAIT_QW0, status_addr, 0, 0)
                )
        finally:
            lock.release()

    def _qi_copy(
        self, descs: Sequence[Desc], index: int, wait_index: int, status_addr: int, wait: Desc
    ) -> None:
        """The general memcpy of ``qi_submit_sync``, slot by slot (ring wrap, page crossing,
        256-bit slots with qwords 2-3 in use)."""
        w64 = self.memory.write64
        shift = self._qi_shift
        wide = shift == 5
        base = self.qi_desc
        dirty = self._qi_dirty_hi
        slot = index
        for d in descs:
            off = base + (slot << shift)
            w64(off, d[0])
            w64(off + 8, d[1])
            # memcpy of the 256-bit descriptor: qwords 2 and 3 are written only when they
            # are non-zero or the slot holds non-zero ones (the bytes end up identical).
            if wide and (d[2] or d[3] or (dirty and slot in dirty)):
                w64(off + 16, d[2])
                w64(off + 24, d[3])
                if d[2] or d[3]:
                    dirty.add(slot)
                else:
                    dirty.discard(slot)
            slot = (slot + 1) % QI_LENGTH
        w64(status_addr, QI_IN_USE)
        off = base + (wait_index << shift)
        w64(off, wait[0])
        w64(off + 8, wait[1])
        if wide and dirty and wait_index in dirty:
            w64(off + 16, 0)
            w64(off + 24, 0)
            dirty.discard(wait_index)

    def _read_status(self, addr: int) -> int:
        return self.memory.read64(addr) & 0xFFFFFFFF

    def _qi_check_fault(
        self, index: int, count: int, wait_index: int, status_addr: int, wait: Desc
    ) -> None:
        """Linux ``qi_check_fault`` (IQE: replace the bad descriptor by the wait descriptor,
        clear IQE, return -EINVAL), turned into an exception; no hang."""
        shift = self._qi_shift
        fsts = self.unit.read32(DMAR_FSTS_REG)
        if fsts & DMA_FSTS_IQE:
            head = (self.unit.read32(DMAR_IQH_REG) >> shift) % QI_LENGTH
            ours = [(index + i) % QI_LENGTH for i in range(count)]
            if head in ours:
                off = self.qi_desc + (head << shift)
                n = 4 if shift == 5 else 2
                bad = self.memory.read_qwords(off, n)
                bad_desc: Desc = (bad[0], bad[1], *(bad[2:4] or (0, 0)))  # type: ignore[assignment]
                for k in range(n):
                    self.memory.write64(off + 8 * k, wait[k])
                self._qi_dirty_hi.discard(head)
                self.unit.write32(DMAR_FSTS_REG, DMA_FSTS_IQE)
                # Hardware resumes fetching at IQH once IQE is clear; the model processes the
                # queue when IQT is written, so re-write the (unchanged) tail as the kick.
                self.unit.write32(DMAR_IQT_REG, self._free_head << shift)
                raise QiError(
                    errno.EINVAL,
                    f"{self.name}: VT-d detected invalid descriptor: qw0 = {bad_desc[0]:#x}, "
                    f"qw1 = {bad_desc[1]:#x}",
                    head,
                    bad_desc,
                    fsts,
                )
        if fsts & DMA_FSTS_ITE:
            self.unit.write32(DMAR_FSTS_REG, DMA_FSTS_ITE)
        if fsts & DMA_FSTS_ICE:
            self.unit.write32(DMAR_FSTS_REG, DMA_FSTS_ICE)
        raise QiError(
            errno.ETIMEDOUT,
            f"{self.name}: wait descriptor at slot {wait_index} never completed "
            f"(status {self._read_status(status_addr)}, FSTS {fsts:#x})",
            wait_index,
            wait,
            fsts,
        )

    # -- descriptor encoders (Linux qi_flush_*) ------------------------------------------------

    def desc_context(self, did: int, sid: int, fm: int, granularity: int) -> Desc:
        """``qi_flush_context``'s descriptor: ``QI_CC_FM | QI_CC_SID | QI_CC_DID | QI_CC_GRAN
        | QI_CC_TYPE``."""
        gran = granularity >> _CIRG
        return (
            fm << _CC_FM | sid << _CC_SID | did << _DID | gran << _G | QI_CC_TYPE,
            0,
            0,
            0,
        )

    def desc_iotlb(self, did: int, addr: int, size_order: int, granularity: int) -> Desc:
        """``qi_flush_iotlb``'s descriptor (DW/DR from CAP.DWD/DRD).

        ``iommu_flush_iotlb_psi`` passes the invalidation hint as ``addr | 1 << 6``, but
        ``QI_IOTLB_ADDR(addr)`` masks with ``VTD_PAGE_MASK`` and ``qi_flush_iotlb`` uses a local
        ``ih = 0``: Linux never sets IH in a queued IOTLB descriptor, and neither does the model.
        """
        gran = granularity >> _IIRG
        qw0 = did << _DID | self._iotlb_drain | gran << _G | QI_IOTLB_TYPE
        qw1 = (addr & VTD_PAGE_MASK) | (size_order & _AM_MASK)  # QI_IOTLB_IH(0)
        return (qw0, qw1, 0, 0)

    def desc_pasid_cache(self, did: int, pasid: int, granularity: int) -> Desc:
        """``qi_flush_pasid_cache`` / ``pasid_cache_invalidation_with_pasid``."""
        return (pasid << _PASID | did << _DID | granularity << _G | QI_PC_TYPE, 0, 0, 0)

    def desc_piotlb(
        self, did: int, pasid: int, addr: int = 0, npages: int = -1, ih: bool = False
    ) -> Desc:
        """``qi_flush_piotlb``: ``npages == -1`` is PASID-selective (all in PASID), otherwise
        page-selective-within-PASID with AM = ilog2(roundup_pow_of_two(npages)), address
        aligned down to 2^AM pages."""
        if npages == -1:
            qw0 = pasid << _PASID | did << _DID | QI_GRAN_NONG_PASID << _G | QI_EIOTLB_TYPE
            return (qw0, 0, 0, 0)
        if npages <= 0:
            raise ArgumentError("npages", npages, "-1 (all in PASID) or a positive page count")
        mask = (npages - 1).bit_length()
        addr &= ~((1 << (VTD_PAGE_SHIFT + mask)) - 1)
        qw0 = pasid << _PASID | did << _DID | QI_GRAN_PSI_PASID << _G | QI_EIOTLB_TYPE
        qw1 = (addr & VTD_PAGE_MASK) | int(ih) << _IH | (mask & _AM_MASK)
        return (qw0, qw1, 0, 0)

    def desc_dev_iotlb(self, sid: int, pfsid: int, qdep: int, addr: int, mask: int) -> Desc:
        """``qi_flush_dev_iotlb`` (non-PASID device-TLB invalidation)."""
        if mask:
            addr |= (1 << (VTD_PAGE_SHIFT + mask - 1)) - 1
            qw1 = (addr & VTD_PAGE_MASK) | _DEV_S  # QI_DEV_IOTLB_SIZE
        else:
            qw1 = addr & VTD_PAGE_MASK
        if qdep >= QI_DEV_IOTLB_MAX_INVS:
            qdep = 0
        # QI_DEV_IOTLB_PFSID inlined (see _qi_dev_iotlb_pfsid)
        upper = (pfsid & 0xFFF) if self.quirks.pfsid_macro_bug else (pfsid >> 4 & 0xFFF)
        qw0 = (
            (sid & 0xFFFF) << _DEV_SID
            | (qdep & 0x1F) << _DEV_QDEP
            | QI_DIOTLB_TYPE
            | (pfsid & 0xF) << _PFSID_LO
            | upper << _PFSID_HI
        )
        return (qw0, qw1, 0, 0)

    def desc_dev_iotlb_pasid(
        self, sid: int, pfsid: int, pasid: int, qdep: int, addr: int, size_order: int
    ) -> Desc:
        """``qi_flush_dev_iotlb_pasid`` (PASID-based device-TLB invalidation)."""
        # QI_DEV_IOTLB_PFSID inlined (see _qi_dev_iotlb_pfsid)
        upper = (pfsid & 0xFFF) if self.quirks.pfsid_macro_bug else (pfsid >> 4 & 0xFFF)
        qw0 = (
            (pasid & 0xFFFFF) << _PASID
            | (sid & 0xFFFF) << _PDEV_SID
            | (qdep & 0x1F) << _PDEV_QDEP
            | QI_DEIOTLB_TYPE
            | (pfsid & 0xF) << _PFSID_LO
            | upper << _PFSID_HI
        )
        qw1 = addr & VTD_PAGE_MASK
        if size_order:
            qw1 |= ((1 << (size_order + VTD_PAGE_SHIFT)) - 1) & VTD_PAGE_MASK
            qw1 &= ~(1 << (VTD_PAGE_SHIFT + size_order - 1))
            qw1 |= _PDEV_S  # QI_DEV_EIOTLB_SIZE
        return (qw0, qw1, 0, 0)

    # -- flush helpers (each one qi_submit_sync, as Linux) -------------------------------------

    def flush_context(self, did: int, sid: int, fm: int, granularity: int) -> None:
        """``iommu->flush.flush_context`` = ``qi_flush_context``."""
        self.qi_submit_sync((self.desc_context(did, sid, fm, granularity),))

    def flush_context_device(self, did: int, sid: int) -> None:
        """Device-selective context-cache invalidation (FM = 0)."""
        self.flush_context(did, sid, 0, DMA_CCMD_DEVICE_INVL)

    def flush_iotlb(self, did: int, addr: int, size_order: int, granularity: int) -> None:
        """``iommu->flush.flush_iotlb`` = ``qi_flush_iotlb``."""
        self.qi_submit_sync((self.desc_iotlb(did, addr, size_order, granularity),))

    def flush_iotlb_dsi(self, did: int) -> None:
        """Domain-selective IOTLB invalidation (``flush_iotlb`` with ``DMA_TLB_DSI_FLUSH``).
        The descriptor is :meth:`desc_iotlb`'s, composed inline (``qi_flush_iotlb``: DID,
        DW/DR, G = DSI, type; qword 1 zero)."""
        self.qi_submit_sync(((did << _DID | self._iotlb_drain | _DSI_G | QI_IOTLB_TYPE, 0, 0, 0),))

    def flush_iotlb_psi(
        self,
        did: int,
        addr: int,
        pages: int,
        *,
        ih: bool = False,
        map: bool = False,
        dev_infos: Iterable[DeviceDomainInfo] = (),
    ) -> None:
        """Linux ``iommu_flush_iotlb_psi`` / modern ``cache_tag_flush_range`` for a second-level
        domain (alignment as ``calculate_psi_aligned_address``).

        PSI with AM = the smallest naturally aligned power-of-two block covering
        ``[addr, addr + pages*4K)``; DSI when !CAP.PSI or AM > CAP.MAMV.  Then, unless this is
        a map in caching mode, the device TLB (non-PASID form, same block) of every
        ATS-enabled device in ``dev_infos`` (``iommu_flush_dev_iotlb``).  As modern Linux
        (``qi_batch``, 6.12+), the descriptors for this unit go in one submission with one wait
        descriptor; a device behind another unit is flushed on its own unit.  ``ih``: the
        invalidation hint (no page-table page freed), dropped by the QI encoding as in Linux.
        """
        self._flush_iotlb_psi(did, addr, pages, ih, map, dev_infos)

    def _flush_iotlb_psi(
        self,
        did: int,
        addr: int,
        pages: int,
        ih: bool,
        map: bool,
        dev_infos: Iterable[DeviceDomainInfo],
    ) -> None:
        """:meth:`flush_iotlb_psi` with positional arguments (the strict-unmap hot path)."""
        if pages == 1 and self._psi:
            # The strict 4 KiB unmap: AM 0 (always <= MAMV); desc_iotlb's and
            # desc_dev_iotlb's encodings with the address masked as VTD_PAGE_MASK does (the
            # IH bit 6 is dropped, as QI_IOTLB_ADDR does), qword 0 of the PSI descriptor
            # computed once per DID.
            aligned_addr = addr & VTD_PAGE_MASK
            qw0 = self._psi_qw0.get(did)
            if qw0 is None:
                qw0 = self.desc_iotlb(did, 0, 0, DMA_TLB_PSI_FLUSH)[0]
                self._psi_qw0[did] = qw0
            batch = [(qw0, aligned_addr, 0, 0)]
            if not self.caching_mode or not map:
                for info in dev_infos:
                    if not info.ats_enabled:
                        continue
                    if info.iommu is self:
                        # desc_dev_iotlb(sid, pfsid, qdep, aligned_addr, 0): qword 1 is the
                        # address; qword 0 depends on (sid = bus:devfn, pfsid, qdep) only,
                        # computed once.
                        key = (info.bus, info.devfn, info.pfsid, info.ats_qdep)
                        dqw0 = self._devtlb_qw0.get(key)
                        if dqw0 is None:
                            sid = info.bus << 8 | info.devfn  # info.sid (PCI_DEVID)
                            dqw0 = self.desc_dev_iotlb(sid, info.pfsid, info.ats_qdep, 0, 0)[0]
                            self._devtlb_qw0[key] = dqw0
                        batch.append((dqw0, aligned_addr, 0, 0))
                    else:
                        info.iommu.flush_dev_iotlb(info, 0, aligned_addr, 0)
            self.qi_submit_sync(batch)
            return
        if pages == 1:  # the strict 4 KiB unmap: no alignment search
            aligned_addr, mask = addr & VTD_PAGE_MASK, 0
        else:
            aligned_addr, mask = psi_aligned(addr, pages)
        if not self._psi or mask > self._mamv:
            desc = self.desc_iotlb(did, 0, 0, DMA_TLB_DSI_FLUSH)
        else:
            desc = self.desc_iotlb(did, aligned_addr | int(ih) << _IH, mask, DMA_TLB_PSI_FLUSH)
        batch = [desc]
        if not self.caching_mode or not map:
            for info in dev_infos:
                if not info.ats_enabled:
                    continue
                if info.iommu is self:
                    batch.append(
                        self.desc_dev_iotlb(info.sid, info.pfsid, info.ats_qdep, aligned_addr, mask)
                    )
                else:
                    info.iommu.flush_dev_iotlb(info, 0, aligned_addr, mask)
        self.qi_submit_sync(batch)

    def flush_pasid_cache(self, did: int, pasid: int, granularity: int = QI_PC_PASID_SEL) -> None:
        """``qi_flush_pasid_cache`` (default: PASID-selective, as
        ``pasid_cache_invalidation_with_pasid``).  :meth:`desc_pasid_cache`'s descriptor,
        composed inline."""
        self.qi_submit_sync(
            ((pasid << _PASID | did << _DID | granularity << _G | QI_PC_TYPE, 0, 0, 0),)
        )

    def flush_piotlb(
        self, did: int, pasid: int, addr: int | None = None, pages: int = 0, ih: bool = False
    ) -> None:
        """``qi_flush_piotlb``: ``addr=None`` flushes everything in the PASID (npages -1)."""
        if addr is None:
            desc = self.desc_piotlb(did, pasid)
        else:
            desc = self.desc_piotlb(did, pasid, addr, pages, ih)
        self.qi_submit_sync((desc,))

    def flush_dev_iotlb(self, info: DeviceDomainInfo, pasid: int, addr: int, mask: int) -> None:
        """Device-TLB invalidation of ``info``'s device: the non-PASID form for ``pasid == 0``
        (``qi_flush_dev_iotlb``), the PASID form otherwise (``qi_flush_dev_iotlb_pasid``).
        ``mask`` is log2 of the size in pages (52 = whole address space).  No-op without ATS.
        """
        if not info.ats_enabled:
            return
        sid = info.bus << 8 | info.devfn  # info.sid (PCI_DEVID)
        if pasid == 0:
            desc = self.desc_dev_iotlb(sid, info.pfsid, info.ats_qdep, addr, mask)
        elif mask == MAX_AGAW_PFN_WIDTH and not addr:
            # The whole-address-space flush of intel_pasid_tear_down_entry
            # (devtlb_invalidation_with_pasid): desc_dev_iotlb_pasid(sid, pfsid, pasid, qdep,
            # 0, 52), with qword 0 computed once per (sid, pfsid, pasid, qdep) and qword 1
            # constant (tests/test_perf_aux_path.py pins both to the encoder).
            key = (sid, info.pfsid, pasid, info.ats_qdep, self.quirks.pfsid_macro_bug)
            qw0 = _PDEVTLB_ALL_QW0.get(key)
            if qw0 is None:
                qw0 = self.desc_dev_iotlb_pasid(sid, info.pfsid, pasid, info.ats_qdep, 0, mask)[0]
                if len(_PDEVTLB_ALL_QW0) >= 4096:
                    _PDEVTLB_ALL_QW0.clear()
                _PDEVTLB_ALL_QW0[key] = qw0
            desc = (qw0, _PDEV_ALL_QW1, 0, 0)
        else:
            desc = self.desc_dev_iotlb_pasid(sid, info.pfsid, pasid, info.ats_qdep, addr, mask)
        self.qi_submit_sync((desc,))


def psi_aligned(addr: int, pages: int) -> tuple[int, int]:
    """Modern ``calculate_psi_aligned_address``: ``(aligned address, AM)`` of the smallest
    naturally aligned power-of-two block of pages covering ``pages`` pages at ``addr``."""
    if pages <= 0:
        raise ArgumentError("pages", pages, "a positive page count")
    pfn = addr >> VTD_PAGE_SHIFT
    mask = (pages - 1).bit_length()
    bitmask = (1 << mask) - 1
    if pfn & bitmask:
        end_pfn = pfn + pages - 1
        shared = ~(pfn ^ end_pfn) & ~bitmask & ((1 << 64) - 1)
        mask = (shared & -shared).bit_length() - 1 if shared else MAX_AGAW_PFN_WIDTH
    return (addr & ~((1 << (VTD_PAGE_SHIFT + mask)) - 1)) & VTD_PAGE_MASK, mask


_ECAP_TESTS = {
    "srs": ecap_srs,
    "smpwc": ecap_smpwc,
    "sc": ecap_sc_support,
    "slts": ecap_slts,
    "flts": ecap_flts,
    "pt": ecap_pass_through,
    "dt": ecap_dev_iotlb_support,
    "coherent": ecap_coherent,
    "pasid": ecap_pasid,
    "smts": ecap_smts,
}


def init_dmars(iommus: Iterable[IntelIommu], enable_translation: bool = True) -> None:
    """Linux ``init_dmars`` + ``intel_iommu_init``'s translation enable, for every unit.

    If one unit fails, the units booted before it stay booted (as Linux, which disables
    remapping globally in that case); the error propagates."""
    for iommu in iommus:
        iommu.boot(enable_translation)
