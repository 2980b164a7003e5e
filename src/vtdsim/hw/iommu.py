"""The remapping unit: register file, command protocol, invalidation queue, fault recording.

``RemappingUnit(memory, caps, name="dmar0", platform=None)`` is one DMAR unit as software sees
it: MMIO registers (``read32/read64/write32/write64`` at the offsets of
:mod:`vtdsim.spec.registers`) in front of a translator (:mod:`vtdsim.hw.translate`, which owns
the caches and the table walks) and the physical memory that holds the invalidation queue.

Design rationale
----------------
*Registers are data.*  Every register's reset value and its RW / RW1C / write-only masks come
from :func:`vtdsim.spec.registers.register_table` (QEMU's ``vtd_define_long/quad`` habit).  A
write is applied generically -- ``new = (old & ~wmask) | (v & wmask)``, then ``new &= ~(v &
w1cmask)`` -- and only then a per-register side-effect handler runs (GCMD commands, IQT tail
moves, CCMD/IOTLB register invalidations, FSTS/FECTL/ICS/IECTL interrupt bookkeeping, FRCD.F
clears).  So a bad value is masked exactly as hardware masks it and never raises; only a
Python-level misuse (an offset that is not an int or not a register, a value out of range for
the access size) raises :class:`vtdsim.errors.ArgumentError`, before any state changes.
32-bit accesses to either half of a 64-bit register are supported (Linux writes IQT with
``writel`` and clears FRCD.F with a 32-bit write at record + 12).

*Commands complete synchronously.*  The model has no concurrency inside the unit: a GCMD
write latches the root pointer / enables the queue before it returns, and writing IQT processes
the queue up to the new tail before the MMIO write returns (ARCHITECTURE.md: "hardware runs ahead
of software").  Status bits that hardware clears on completion (WBFS, CCMD.ICC, IOTLB.IVT)
therefore read as already complete.

*The queue hot path avoids the generic decoder.*  ``qi_submit_sync`` on the driver's strict
unmap path submits ~3 descriptors plus a wait per unmap, so descriptors are decoded with shifts
and masks precomputed from the :mod:`vtdsim.spec.descriptors` layouts, dispatched through a
128-entry table of bound methods indexed by the 7-bit type.  The table is rebuilt whenever
something that decides validity changes (IQA.DW latched at QI enable, RTADDR.TTM latched at
SRTP), so per-descriptor validity checks are a single index.  Descriptors are fetched in
blocks (up to the tail, the end of the ring or the 4 KiB page) with one ``read_qwords``, as
hardware prefetches; a wait descriptor whose status write lands inside the same block of the
queue itself is therefore not seen by the descriptors after it (no sane driver does that).
IQA is latched when QI is enabled: rewriting it while enabled takes effect at the next enable.

*Hardware behaviour on misuse*, with the source for each: TE before SRTP translates with the
reset root pointer (0) and whatever the translator finds there; an unsupported TTM is latched
as written and left to the translator (fault 0x30/0x31 style) and makes every queued descriptor
invalid (IQEI 7); QIE with IQA unset runs a queue at physical 0; writing IQT while QI is
disabled only stores the value; an invalid descriptor sets FSTS.IQE, records IQERCD.IQEI and
stops with IQH at the bad descriptor until software clears IQE (then the queue resumes, as
Linux ``qi_check_fault`` relies on).  Register-based invalidation while QI is enabled is
ignored and ICC/IVT stay set (QEMU ``vtd_handle_ccmd_write``).
"""

from __future__ import annotations

import importlib
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Protocol

from vtdsim.errors import ArgumentError, MemoryAccessError, VtdsimError
from vtdsim.hw.caps import Capabilities
from vtdsim.hw.memory import PhysicalMemory
from vtdsim.spec import descriptors as D
from vtdsim.spec import registers as R

__all__ = [
    "DeviceLike",
    "FaultLike",
    "PlatformLike",
    "RemappingUnit",
    "TranslatorLike",
    "UnitStatistics",
]

# --- what the unit needs from its neighbours -----------------------------------------------------


class FaultLike(Protocol):
    """What :meth:`RemappingUnit.record_fault` reads from the translator's fault object."""

    @property
    def sid(self) -> int: ...
    @property
    def pasid(self) -> int | None: ...
    @property
    def address(self) -> int: ...
    @property
    def reason(self) -> int: ...
    @property
    def write(self) -> bool: ...
    @property
    def execute(self) -> bool: ...
    @property
    def privileged(self) -> bool: ...


class TranslatorLike(Protocol):
    """The cache-invalidation API of ``hw/translate.py`` (ARCHITECTURE.md)."""

    def translate(self, sid: int, addr: int, **kw: Any) -> Any: ...
    def invalidate_context(
        self, granularity: str, did: int | None = None, sid: int | None = None, fm: int = 0
    ) -> object: ...
    def invalidate_pasid_cache(
        self, granularity: str, did: int | None = None, pasid: int | None = None
    ) -> object: ...
    def invalidate_iotlb(
        self, granularity: str, did: int | None = None, addr: int = 0, am: int = 0, ih: bool = False
    ) -> object: ...
    def invalidate_piotlb(
        self, granularity: str, did: int, pasid: int, addr: int = 0, am: int = 0, ih: bool = False
    ) -> object: ...


class DeviceLike(Protocol):
    def invalidate_devtlb(self, pasid: int | None, addr: int, size_bit: bool) -> None: ...


class PlatformLike(Protocol):
    def device(self, sid: int) -> Any: ...


@dataclass(frozen=True, slots=True)
class UnitStatistics:
    """Counters of one unit since reset."""

    descriptors: dict[str, int]  # processed (valid) descriptors by type name
    invalid_descriptors: int  # descriptors that set FSTS.IQE
    wait_completions: int  # wait descriptors completed
    status_writes: int  # wait descriptors' status writes
    faults_recorded: int
    faults_dropped: int  # not recorded: PFO set or next record busy (overflow)
    fault_interrupts: int  # fault events delivered (FECTL.IM clear)
    completion_interrupts: int  # invalidation completion events delivered
    register_invalidations: int  # CCMD / IOTLB register invalidations performed
    write_buffer_flushes: int
    root_pointer_sets: int


# --- constants from the layouts ------------------------------------------------------------------

_Q = (1 << 64) - 1
_D32 = (1 << 32) - 1


def _bit(layout: Any, name: str) -> int:
    return int(layout.field(name).mask)


_GCMD_TE = _bit(R.GCMD_LAYOUT, "TE")
_GCMD_SRTP = _bit(R.GCMD_LAYOUT, "SRTP")
_GCMD_WBF = _bit(R.GCMD_LAYOUT, "WBF")
_GCMD_QIE = _bit(R.GCMD_LAYOUT, "QIE")
_GSTS_TES = _bit(R.GSTS_LAYOUT, "TES")
_GSTS_RTPS = _bit(R.GSTS_LAYOUT, "RTPS")
_GSTS_QIES = _bit(R.GSTS_LAYOUT, "QIES")
_RTADDR_RTA = _bit(R.RTADDR_LAYOUT, "RTA")
_RTADDR_TTM_SH = R.RTADDR_LAYOUT.field("TTM").shift

_FSTS_PFO = _bit(R.FSTS_LAYOUT, "PFO")
_FSTS_PPF = _bit(R.FSTS_LAYOUT, "PPF")
_FSTS_IQE = _bit(R.FSTS_LAYOUT, "IQE")
_FSTS_ICE = _bit(R.FSTS_LAYOUT, "ICE")
_FSTS_ITE = _bit(R.FSTS_LAYOUT, "ITE")
_FSTS_FRI = _bit(R.FSTS_LAYOUT, "FRI")
_FSTS_FRI_SH = R.FSTS_LAYOUT.field("FRI").shift
#: QEMU vtd_generate_fault_event / vtd_handle_fsts_write: the status bits behind FECTL.IP.
_FSTS_EVENT = _FSTS_PFO | _FSTS_PPF | _FSTS_IQE | _FSTS_ICE | _FSTS_ITE
_FECTL_IP = _bit(R.FECTL_LAYOUT, "IP")
_FECTL_IM = _bit(R.FECTL_LAYOUT, "IM")
_ICS_IWC = _bit(R.ICS_LAYOUT, "IWC")

_IQA_QS = _bit(R.IQA_LAYOUT, "QS")
_IQA_DW = _bit(R.IQA_LAYOUT, "DW")
_IQA_BASE = _bit(R.IQA_LAYOUT, "IQA")

_CCMD_ICC = _bit(R.CCMD_LAYOUT, "ICC")
_CCMD_CIRG_SH = R.CCMD_LAYOUT.field("CIRG").shift
_CCMD_CAIG = _bit(R.CCMD_LAYOUT, "CAIG")
_CCMD_CAIG_SH = R.CCMD_LAYOUT.field("CAIG").shift
_CCMD_SID_SH = R.CCMD_LAYOUT.field("SID").shift
_CCMD_FM_SH = R.CCMD_LAYOUT.field("FM").shift
_IOTLB_IVT = _bit(R.IOTLB_LAYOUT, "IVT")
_IOTLB_IIRG_SH = R.IOTLB_LAYOUT.field("IIRG").shift
_IOTLB_IAIG = _bit(R.IOTLB_LAYOUT, "IAIG")
_IOTLB_IAIG_SH = R.IOTLB_LAYOUT.field("IAIG").shift
_IOTLB_DID_SH = R.IOTLB_LAYOUT.field("DID").shift
_IVA_AM = _bit(R.IVA_LAYOUT, "AM")
_IVA_IH = _bit(R.IVA_LAYOUT, "IH")
_IVA_ADDR = _bit(R.IVA_LAYOUT, "ADDR")

_FR = R.FAULT_RECORD
_FR_FI = _FR.field("FI").mask
_FR_SID_SH = _FR.field("SID").shift
_FR_FR_SH = _FR.field("FR").shift
_FR_PV_SH = _FR.field("PV").shift
_FR_PV_MAX = (1 << _FR.field("PV").width) - 1
_FR_PP = _FR.field("PP").mask
_FR_PRIV = _FR.field("PRIV").mask
_FR_EXE = _FR.field("EXE").mask
_FR_T = _FR.field("T").mask
_FR_F = _FR.field("F").mask

# descriptor fields (all types share TYPE, G at 5:4 and DID at 31:16 where present)
_G_SH = D.CC_DESC.field("G").shift
_DID_SH = D.CC_DESC.field("DID").shift
_CC_SID_SH = D.CC_DESC.field("SID").shift
_CC_FM_SH = D.CC_DESC.field("FM").shift
_PASID_SH = D.PIOTLB_DESC.field("PASID").shift
_PASID_MASK = (1 << D.PIOTLB_DESC.field("PASID").width) - 1
_AM_MASK = D.IOTLB_DESC.field("AM").mask
_IH_BIT = D.IOTLB_DESC.field("IH").mask
_ADDR_MASK = D.IOTLB_DESC.field("ADDR").mask
_DEV_SID_SH = D.DEVTLB_DESC.field("SID").shift
_DEV_S = D.DEVTLB_DESC.field("S").mask
_PDEV_SID_SH = D.PDEVTLB_DESC.field("SID").shift
_PDEV_S = D.PDEVTLB_DESC.field("S").mask
_W_IF = D.WAIT_DESC.field("IF").mask
_W_SW = D.WAIT_DESC.field("SW").mask
_W_SDATA_SH = D.WAIT_DESC.field("SDATA").shift
_W_SADDR = D.WAIT_DESC.field("SADDR").mask


def _rsvd(layout: Any, extra0: int = 0) -> tuple[int, int]:
    return (layout.reserved_masks[0] | extra0, layout.reserved_masks[1])


_RSVD_CC = _rsvd(D.CC_DESC)
_RSVD_IOTLB = _rsvd(D.IOTLB_DESC)
_RSVD_DEVTLB = _rsvd(D.DEVTLB_DESC)
# PD (page-request drain) needs ECAP.PDS, which the model never reports (OpenVMM validate).
_RSVD_WAIT = _rsvd(D.WAIT_DESC, D.WAIT_DESC.field("PD").mask)
_RSVD_WAIT_LO, _RSVD_WAIT_HI = _RSVD_WAIT  # the wait handler runs once per submission
_WAIT_TYPE = int(D.DescType.WAIT)
#: a wait descriptor's 32-bit status data, little-endian (PhysicalMemory.write32's bytes)
_PACK_U32 = struct.Struct("<I").pack_into
#: two 256-bit ring slots (descriptor + wait descriptor) as 8 qwords, in the byte order of
#: PhysicalMemory's qword_pages views (native, as the driver's ring stores pack them)
_UNPACK_2SLOTS = struct.Struct("=8Q").unpack_from
#: qword-0 bits that keep a wait descriptor off _iqt_written's inline path: reserved bits
#: (an error, reported by _qi_wait) and IF (a completion interrupt, raised by _qi_wait)
_W_INLINE_NOT = _RSVD_WAIT_LO | _W_IF
#: ... and in one test: type bits (3:0, 11:9) = wait, SW set, IF and reserved bits clear
_W_FAST_MASK = 0xF | 0x70 << 5 | _W_SW | _W_INLINE_NOT
_W_FAST_VALUE = _WAIT_TYPE & 0xF | (_WAIT_TYPE & 0x70) << 5 | _W_SW
_FSTS_OFF, _IQT_OFF, _IQH_OFF = R.FSTS, R.IQT, R.IQH  # register offsets for _iqt_written
_FECTL_OFF, _FRCD_OFF = R.FECTL, R.FRCD_BASE  # (and record_fault)
_RSVD_PIOTLB = _rsvd(D.PIOTLB_DESC)
_RSVD_PC = _rsvd(D.PASID_CACHE_DESC)
_RSVD_PDEVTLB = _rsvd(D.PDEVTLB_DESC)
# the reserved-bit masks of the teardown's three descriptor types, unpacked for their handlers
_RSVD_IOTLB_LO, _RSVD_IOTLB_HI = _RSVD_IOTLB
_RSVD_PC_LO, _RSVD_PC_HI = _RSVD_PC
_RSVD_PDEVTLB_LO, _RSVD_PDEVTLB_HI = _RSVD_PDEVTLB

# IQERCD.IQEI codes (VT-d 11.4.9.9; VirtualBox VTDIQEI)
_IQEI_NA = 0
_IQEI_TAIL = 1
_IQEI_FETCH = 2
_IQEI_TYPE = 3
_IQEI_RSVD = 4
_IQEI_MISALIGNED = 6
_IQEI_TTM = 7

_Handler = Callable[[int, int, int], None]
_QiHandler = Callable[[int, int], "int | None"]

_TYPE_NAMES = {int(t): t.name.lower() for t in D.DescType}


_TABLES: dict[Capabilities, Mapping[int, R.Register]] = {}


def _register_table(caps: Capabilities) -> Mapping[int, R.Register]:
    """``R.register_table(caps)``, computed once per distinct ``caps`` (a pure function of the
    frozen capabilities; the unit only reads it, through a read-only view)."""
    table = _TABLES.get(caps)
    if table is None:
        table = _TABLES[caps] = MappingProxyType(R.register_table(caps))
    return table


def _bad_int(name: str, value: object, bits: int) -> int:
    """Coerce int subclasses (not bool); raise ArgumentError otherwise."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1 << bits:
        return int(value)
    raise ArgumentError(name, value, f"an unsigned {bits}-bit integer")


class RemappingUnit:
    """One VT-d remapping unit (see the module docstring)."""

    translate: Callable[..., Any]
    #: ``on_interrupt(kind, address, data)`` is called for every delivered interrupt message;
    #: kind is "fault" (FEADDR/FEDATA) or "invalidation" (IEADDR/IEDATA).
    on_interrupt: Callable[[str, int, int], None] | None

    def __init__(
        self,
        memory: PhysicalMemory,
        caps: Capabilities,
        name: str = "dmar0",
        platform: PlatformLike | None = None,
    ) -> None:
        if not isinstance(memory, PhysicalMemory):
            raise ArgumentError("memory", memory, "a vtdsim.hw.memory.PhysicalMemory")
        if not isinstance(caps, Capabilities):
            raise ArgumentError("caps", caps, "a vtdsim.hw.caps.Capabilities")
        if not isinstance(name, str):
            raise ArgumentError("name", name, "a string")
        self.memory = memory
        self.caps = caps
        self.name = name
        self.platform = platform
        self.on_interrupt = None
        self._table = _register_table(caps)
        self._haw_mask = (1 << caps.haw) - 1
        self._nfr = caps.fault_records
        self._translator: Any = None
        self.translate = self._translate_first
        # source-id -> function, for device-TLB descriptors (filled by _device; emptied by
        # _configure_qi), held only through a read-only view (as the register maps) and the
        # dict's own C methods, which a world snapshot does not look into: a restored world
        # keeps the functions found since (a platform never loses one: the same answers)
        # instead of looking them up again in every schedule.
        cache: dict[int, Any] = {}
        self._qi_devices: Mapping[int, Any] = MappingProxyType(cache)
        self._qi_device: Callable[[int], Any] = cache.get  # the hot lookups
        self._qi_device_add: Callable[[int, Any], None] = cache.__setitem__
        self._qi_devices_clear: Callable[[], None] = cache.clear
        self._build_access_maps()
        self.reset()

    # -- construction -------------------------------------------------------------------------

    def _build_access_maps(self) -> None:
        handlers: dict[int, _Handler] = {
            R.GCMD: self._gcmd_written,
            R.CCMD: self._ccmd_written,
            R.FSTS: self._fsts_written,
            R.FECTL: self._fectl_written,
            R.IQT: self._iqt_written,
            R.ICS: self._ics_written,
            R.IECTL: self._iectl_written,
            R.IOTLB_REG: self._iotlb_written,
        }
        for i in range(self._nfr):
            handlers[R.fault_record_offset(i) + 8] = self._frcd_written
        rd64: dict[int, int] = {}
        rd32: dict[int, tuple[int, int, int]] = {}
        wr64: dict[int, tuple[int, int, _Handler | None]] = {}
        wr32: dict[int, tuple[int, int, int, int, int, _Handler | None]] = {}
        for off, reg in self._table.items():
            h = handlers.get(off)
            rmask = ~reg.womask
            halves: tuple[int, ...] = (0,)
            if reg.width == 64:
                rd64[off] = rmask & _Q
                wr64[off] = (reg.wmask, reg.w1cmask, h)
                halves = (0, 32)
            for sh in halves:
                part = _D32 << sh
                rd32[off + sh // 8] = (off, sh, (rmask >> sh) & _D32)
                wr32[off + sh // 8] = (
                    off,
                    sh,
                    reg.wmask & part,
                    reg.w1cmask & part,
                    part,
                    h,
                )
        # Read-only views: the access maps are fixed at construction (a pure function of the
        # capabilities), and a read-only mapping says so to whoever copies the unit's state
        # (the explorer's in-place snapshot skips them instead of putting ~480 entries back
        # before every schedule).
        self._rd64: Mapping[int, int] = MappingProxyType(rd64)
        self._rd32: Mapping[int, tuple[int, int, int]] = MappingProxyType(rd32)
        self._wr64: Mapping[int, tuple[int, int, _Handler | None]] = MappingProxyType(wr64)
        self._wr32: Mapping[int, tuple[int, int, int, int, int, _Handler | None]] = (
            MappingProxyType(wr32)
        )

    def reset(self) -> None:
        """Power-on reset: every register to its reset value, queue and translation off."""
        # a reset from inside a queue run (an interrupt callback) unbinds the translator, as
        # before the binding below: its handlers skip the invalidations until the next run
        in_run = bool(self.__dict__.get("_running"))
        self._regs: dict[int, int] = {off: reg.reset for off, reg in self._table.items()}
        self.root_table_address = 0
        self.ttm = 0
        self.translation_enabled = False
        self.qi_enabled = False
        self._iq_base = 0
        self._iq_shift = 4
        self._iq_words = 2
        self._iq_entries = 256
        self._iq_head = 0
        self._iq_tail = 0
        self._iq_dw = False
        self._next_frcd = 0
        self._running = False
        self._counts = [0] * 128
        self._invalid = 0
        self._waits = 0
        self._status_writes = 0
        self._faults_recorded = 0
        self._faults_dropped = 0
        self._fault_irqs = 0
        self._completion_irqs = 0
        self._reg_invals = 0
        self._wbf = 0
        self._srtp = 0
        # The translator the queue's handlers invalidate, bound now (as _run_queue would bind
        # it on the next submission): a restored world's first submission takes the fast
        # paths of _iqt_written instead of the _run_queue detour.
        tr = None if in_run else self._translator
        self._qi_tr: Any = tr
        self._qi_tr_psi: Callable[[int, int, int, bool], object] | None = getattr(
            tr, "invalidate_iotlb_page", None
        )
        self._configure_qi()
        tr = self._translator
        if tr is not None:
            # Caches hold nothing valid after reset.
            if hasattr(tr, "invalidate_all"):
                tr.invalidate_all()
            else:
                tr.invalidate_context("global")
                tr.invalidate_pasid_cache("global")
                tr.invalidate_iotlb("global")

    # -- the translator --------------------------------------------------------------------------

    @property
    def translator(self) -> Any:
        """The :class:`vtdsim.hw.translate.Translator` of this unit, created on first use
        (``None`` while that module does not exist).  Assignable, e.g. a test stub."""
        tr = self._translator
        if tr is None:
            try:
                mod = importlib.import_module("vtdsim.hw.translate")
            except ModuleNotFoundError as e:
                if e.name != "vtdsim.hw.translate":
                    raise
                return None
            tr = mod.Translator(self)
            self.translator = tr
        return tr

    @translator.setter
    def translator(self, tr: Any) -> None:
        self._translator = tr
        # Bind directly: unit.translate(...) costs one call, not two.
        self.translate = tr.translate if tr is not None else self._translate_first
        # ... and bind the queue's handlers to it now, as _run_queue would at the next
        # submission (handlers read _qi_tr only while the queue runs; _iqt_written's fast
        # paths need _translator is _qi_tr): the world snapshot, which builds the translator,
        # then holds it bound, and no restored schedule pays for the _run_queue detour.
        # Not while the queue runs (a handler replacing the translator): _run_queue rebinds.
        if not self._running:
            self._qi_tr = tr
            self._qi_tr_psi = getattr(tr, "invalidate_iotlb_page", None)

    def _translate_first(self, *args: Any, **kwargs: Any) -> Any:
        tr = self.translator
        if tr is None:
            raise VtdsimError(f"{self.name}: no translator: vtdsim.hw.translate is not available")
        return tr.translate(*args, **kwargs)

    @property
    def ttm_valid(self) -> bool:
        """Whether the latched RTADDR.TTM is supported: legacy, or scalable with ECAP.SMTS
        (10b is reserved; 11b abort-DMA needs ECAP.ADMS, which the model never reports)."""
        return self.ttm == 0 or (self.ttm == 1 and self.caps.scalable_mode)

    # -- MMIO ------------------------------------------------------------------------------------

    def read32(self, offset: int) -> int:
        """32-bit MMIO read (a 32-bit register or either half of a 64-bit one)."""
        ent = self._rd32.get(offset) if type(offset) is int else None
        if ent is None:
            ent = self._rd32[self._offset("read32", offset, self._rd32)]
        base, sh, mask = ent
        return (self._regs[base] >> sh) & mask

    def read64(self, offset: int) -> int:
        """64-bit MMIO read of a 64-bit register."""
        mask = self._rd64.get(offset) if type(offset) is int else None
        if mask is None:
            offset = self._offset("read64", offset, self._rd64)
            mask = self._rd64[offset]
        return self._regs[offset] & mask

    def write32(self, offset: int, value: int) -> None:
        """32-bit MMIO write, with the register's RW / RW1C semantics and side effects."""
        ent = self._wr32.get(offset) if type(offset) is int else None
        if ent is None:
            ent = self._wr32[self._offset("write32", offset, self._wr32)]
        if type(value) is not int or value < 0 or value > _D32:
            value = _bad_int("value", value, 32)
        base, sh, wm, w1c, part, h = ent
        v = value << sh
        regs = self._regs
        old = regs[base]
        regs[base] = ((old & ~wm) | (v & wm)) & ~(v & w1c)
        if h is not None:
            h(old, v, part)

    def write64(self, offset: int, value: int) -> None:
        """64-bit MMIO write of a 64-bit register."""
        ent = self._wr64.get(offset) if type(offset) is int else None
        if ent is None:
            offset = self._offset("write64", offset, self._wr64)
            ent = self._wr64[offset]
        if type(value) is not int or value < 0 or value > _Q:
            value = _bad_int("value", value, 64)
        wm, w1c, h = ent
        regs = self._regs
        old = regs[offset]
        regs[offset] = ((old & ~wm) | (value & wm)) & ~(value & w1c)
        if h is not None:
            h(old, value, _Q)

    def _offset(self, op: str, offset: object, valid: Mapping[int, Any]) -> int:
        """Slow path: accept int subclasses (IntEnum offsets), else raise ArgumentError."""
        if isinstance(offset, int) and not isinstance(offset, bool) and int(offset) in valid:
            return int(offset)
        width = "64-bit register" if op.endswith("64") else "32-bit register or register half"
        raise ArgumentError(
            "offset",
            offset,
            f"the offset of a {width} of {self.name} (vtdsim.spec.registers), as int",
        )

    def register_value(self, which: int | str) -> int:
        """Raw stored value of a register by offset or name (no write-only masking); for
        inspection and debug dumps."""
        if isinstance(which, str):
            for off, reg in self._table.items():
                if reg.name == which:
                    return self._regs[off]
            raise ArgumentError("register", which, "a register name of vtdsim.spec.registers")
        if type(which) is not int or which not in self._regs:
            raise ArgumentError("register", which, "a register offset")
        return self._regs[which]

    # -- interrupts ------------------------------------------------------------------------------

    def _deliver(self, kind: str, addr_reg: int, uaddr_reg: int, data_reg: int) -> None:
        regs = self._regs
        if kind == "fault":
            self._fault_irqs += 1
        else:
            self._completion_irqs += 1
        cb = self.on_interrupt
        if cb is not None:
            cb(kind, regs[addr_reg] | regs[uaddr_reg] << 32, regs[data_reg])

    def _fault_event(self, pre_fsts: int) -> None:
        # QEMU vtd_generate_fault_event: only when no earlier condition is pending; IP stays set
        # while IM masks it.
        if pre_fsts & _FSTS_EVENT:
            return
        regs = self._regs
        fectl = regs[R.FECTL] | _FECTL_IP
        if fectl & _FECTL_IM:
            regs[R.FECTL] = fectl
            return
        regs[R.FECTL] = fectl & ~_FECTL_IP
        self._deliver("fault", R.FEADDR, R.FEUADDR, R.FEDATA)

    def _completion_event(self) -> None:
        # QEMU vtd_generate_completion_event: nothing new while IWC is still set.
        regs = self._regs
        if regs[R.ICS] & _ICS_IWC:
            return
        regs[R.ICS] |= _ICS_IWC
        iectl = regs[R.IECTL] | _FECTL_IP
        if iectl & _FECTL_IM:
            regs[R.IECTL] = iectl
            return
        regs[R.IECTL] = iectl & ~_FECTL_IP
        self._deliver("invalidation", R.IEADDR, R.IEUADDR, R.IEDATA)

    def _fsts_written(self, old: int, v: int, part: int) -> None:
        regs = self._regs
        new = regs[R.FSTS]
        # QEMU vtd_handle_fsts_write: IP clears once software has serviced every condition.
        if regs[R.FECTL] & _FECTL_IP and not new & _FSTS_EVENT:
            regs[R.FECTL] &= ~_FECTL_IP
        # VT-d 6.5.2.10: hardware resumes fetching at IQH once software clears IQE (Linux
        # qi_check_fault replaces the bad descriptor, then writes DMA_FSTS_IQE).
        if old & _FSTS_IQE and not new & _FSTS_IQE and self.qi_enabled:
            self._tail_moved()

    def _fectl_written(self, old: int, v: int, part: int) -> None:
        # QEMU vtd_handle_fectl_write: unmasking delivers a pending interrupt.
        regs = self._regs
        if regs[R.FECTL] & _FECTL_IP and not regs[R.FECTL] & _FECTL_IM:
            regs[R.FECTL] &= ~_FECTL_IP
            self._deliver("fault", R.FEADDR, R.FEUADDR, R.FEDATA)

    def _ics_written(self, old: int, v: int, part: int) -> None:
        # QEMU vtd_handle_ics_write
        regs = self._regs
        if regs[R.IECTL] & _FECTL_IP and not regs[R.ICS] & _ICS_IWC:
            regs[R.IECTL] &= ~_FECTL_IP

    def _iectl_written(self, old: int, v: int, part: int) -> None:
        # QEMU vtd_handle_iectl_write
        regs = self._regs
        if regs[R.IECTL] & _FECTL_IP and not regs[R.IECTL] & _FECTL_IM:
            regs[R.IECTL] &= ~_FECTL_IP
            self._deliver("invalidation", R.IEADDR, R.IEUADDR, R.IEDATA)

    # -- command protocol (GCMD) -----------------------------------------------------------------

    def _gcmd_written(self, old: int, v: int, part: int) -> None:
        """VT-d 11.4.4.  Persistent bits (TE, QIE) act on a change against GSTS (QEMU
        vtd_handle_gcmd_write: ``changed = status ^ val``); one-shot bits (SRTP, WBF) act when
        written as 1.  Commands for features the unit lacks (SFL/EAFL: no AFL; IRE/SIRTP/CFI:
        no interrupt remapping; WBF without CAP.RWBF; QIE without ECAP.QI) are ignored."""
        regs = self._regs
        cmd = v & 0xFF80_0000
        gsts = regs[R.GSTS]
        caps = self.caps
        run_queue = False
        if cmd & _GCMD_SRTP:
            # Latch RTADDR into the active root-table pointer (QEMU vtd_root_table_setup:
            # address masked to the host address width) and TTM; RTPS reports completion.
            # Hardware does not flush its caches here: software must (VT-d 11.4.4 SRTP).
            rt = regs[R.RTADDR]
            self.root_table_address = rt & _RTADDR_RTA & self._haw_mask
            self.ttm = (rt >> _RTADDR_TTM_SH) & 3
            gsts |= _GSTS_RTPS
            self._srtp += 1
            self._configure_qi()
        if cmd & _GCMD_WBF and caps.rwbf:
            # WBFS is set and cleared by hardware when the flush completes: synchronous here.
            self._wbf += 1
        if (cmd ^ gsts) & _GCMD_QIE and caps.queued_invalidation:
            if cmd & _GCMD_QIE:
                self._enable_qi()
                gsts |= _GSTS_QIES
                run_queue = True
            else:
                # IQH reads 0 whenever QI is disabled (VT-d 11.4.9.1).
                self.qi_enabled = False
                self._iq_head = 0
                regs[R.IQH] = 0
                gsts &= ~_GSTS_QIES
        if (cmd ^ gsts) & _GCMD_TE:
            self.translation_enabled = bool(cmd & _GCMD_TE)
            gsts ^= _GSTS_TES
        regs[R.GSTS] = gsts
        if run_queue:
            # A tail left non-zero before enabling is processed at once (QEMU
            # vtd_handle_gcmd_qie; software should have written IQT = 0 first).
            self._tail_moved()

    # -- register-based invalidation -------------------------------------------------------------

    def _ccmd_written(self, old: int, v: int, part: int) -> None:
        """VT-d 11.4.7; QEMU vtd_handle_ccmd_write / vtd_context_cache_invalidate."""
        if not part & _CCMD_ICC:
            return
        regs = self._regs
        val = regs[R.CCMD]
        if not val & _CCMD_ICC or self.qi_enabled:
            return  # with QI enabled, register invalidation is ignored and ICC stays set
        g = (val >> _CCMD_CIRG_SH) & 3
        tr = self.translator
        if g and tr is not None:
            did = val & 0xFFFF
            if g == 1:
                tr.invalidate_context("global")
            elif g == 2:
                tr.invalidate_context("domain", did=did)
            else:
                sid = (val >> _CCMD_SID_SH) & 0xFFFF
                tr.invalidate_context("device", did=did, sid=sid, fm=(val >> _CCMD_FM_SH) & 3)
        if g:
            self._reg_invals += 1
        # CAIG reports the granularity performed (0: request refused); ICC self-clears.
        regs[R.CCMD] = (val & ~(_CCMD_ICC | _CCMD_CAIG)) | g << _CCMD_CAIG_SH

    def _iotlb_written(self, old: int, v: int, part: int) -> None:
        """VT-d 11.4.8.1; QEMU vtd_handle_iotlb_write / vtd_iotlb_flush."""
        if not part & _IOTLB_IVT:
            return
        regs = self._regs
        val = regs[R.IOTLB_REG]
        if not val & _IOTLB_IVT or self.qi_enabled:
            return
        g = (val >> _IOTLB_IIRG_SH) & 3
        did = (val >> _IOTLB_DID_SH) & 0xFFFF
        caps = self.caps
        tr = self.translator
        done = g
        if g == 3:
            iva = regs[R.IVA]
            am = iva & _IVA_AM
            if not caps.psi:
                done = 2  # no PSI: hardware may invalidate more (domain-selective), IAIG says so
            elif am > caps.mamv:
                done = 0  # QEMU: address mask beyond MAMV refuses the request
            elif tr is not None:
                addr = iva & _IVA_ADDR & ~((4096 << am) - 1)
                tr.invalidate_iotlb("page", did=did, addr=addr, am=am, ih=bool(iva & _IVA_IH))
        if tr is not None:
            if done == 1:
                tr.invalidate_iotlb("global")
            elif done == 2:
                tr.invalidate_iotlb("domain", did=did)
        if done:
            self._reg_invals += 1
        regs[R.IOTLB_REG] = (val & ~(_IOTLB_IVT | _IOTLB_IAIG)) | done << _IOTLB_IAIG_SH

    # -- fault recording -------------------------------------------------------------------------

    def _frcd_written(self, old: int, v: int, part: int) -> None:
        if old & _FR_F and v & part & _FR_F:
            self._update_ppf()

    def _update_ppf(self) -> None:
        # QEMU vtd_update_fsts_ppf: PPF is the OR of every record's F.
        regs = self._regs
        base = R.FRCD_BASE + 8
        pending = any(regs[base + 16 * i] & _FR_F for i in range(self._nfr))
        if pending:
            regs[R.FSTS] |= _FSTS_PPF
        else:
            regs[R.FSTS] &= ~_FSTS_PPF
            fsts = regs[R.FSTS]
            if regs[R.FECTL] & _FECTL_IP and not fsts & _FSTS_EVENT:
                regs[R.FECTL] &= ~_FECTL_IP

    def record_fault(self, fault: FaultLike) -> bool:
        """Record a primary fault (VT-d 7.2.1; QEMU vtd_report_dmar_fault / vtd_record_frcd).

        Returns False when it is not recorded: FSTS.PFO is already set, or the next record
        (an internal index that wraps around the CAP.NFR records) still holds F=1, which sets
        PFO.  Otherwise writes the record (lo: FI = page address; hi: SID, FR, T = 1 for a
        read, PP/PV and PRIV/EXE when a PASID is present, F), sets FSTS.PPF, and when PPF was
        clear points FSTS.FRI at the record and raises a fault event.
        """
        regs = self._regs
        fsts = regs[_FSTS_OFF]
        if fsts & _FSTS_PFO:
            self._faults_dropped += 1
            return False
        idx = self._next_frcd
        hi_off = _FRCD_OFF + 8 + 16 * idx
        if regs[hi_off] & _FR_F:
            regs[_FSTS_OFF] = fsts | _FSTS_PFO
            self._faults_dropped += 1
            return False
        hi = (fault.sid & 0xFFFF) << _FR_SID_SH | (fault.reason & 0xFF) << _FR_FR_SH | _FR_F
        if not fault.write:
            hi |= _FR_T
        pasid = fault.pasid
        if pasid is not None:
            hi |= _FR_PP | (pasid & _FR_PV_MAX) << _FR_PV_SH
            if fault.privileged:
                hi |= _FR_PRIV
            if fault.execute:
                hi |= _FR_EXE
        regs[hi_off - 8] = fault.address & _FR_FI
        regs[hi_off] = hi
        nxt = idx + 1
        self._next_frcd = nxt if nxt < self._nfr else 0
        self._faults_recorded += 1
        if not fsts & _FSTS_PPF:  # (PPF already set: FSTS stays as it is)
            regs[_FSTS_OFF] = (fsts & ~_FSTS_FRI) | _FSTS_PPF | idx << _FSTS_FRI_SH
            if not fsts & _FSTS_EVENT:
                # _fault_event(fsts), inlined (QEMU vtd_generate_fault_event): IP stays set
                # while IM masks it
                fectl = regs[_FECTL_OFF] | _FECTL_IP
                if fectl & _FECTL_IM:
                    regs[_FECTL_OFF] = fectl
                else:
                    regs[_FECTL_OFF] = fectl & ~_FECTL_IP
                    self._deliver("fault", R.FEADDR, R.FEUADDR, R.FEDATA)
        return True

    # -- queued invalidation ---------------------------------------------------------------------

    def _enable_qi(self) -> None:
        """Latch IQA (VT-d 6.5.2; QEMU vtd_handle_gcmd_qie): base, DW, 2^QS pages."""
        iqa = self._regs[R.IQA]
        self._iq_base = iqa & _IQA_BASE & self._haw_mask
        self._iq_dw = bool(iqa & _IQA_DW)
        self._iq_shift = 5 if self._iq_dw else 4
        self._iq_words = 4 if self._iq_dw else 2
        self._iq_entries = (4096 << (iqa & _IQA_QS)) >> self._iq_shift
        self._iq_head = 0
        self._regs[R.IQH] = 0
        self.qi_enabled = True
        self._configure_qi()

    def _configure_qi(self) -> None:
        """Rebuild the type -> handler table for the latched DW and TTM.

        Validity (VT-d 6.5.2 Table "valid descriptor types"; OpenVMM
        ``InvalidationDescriptor256::validate`` and ``DescriptorWidth::checked``; VirtualBox
        ``dmarR3InvQueueProcessRequests``): with a reserved/unsupported TTM nothing is valid
        (IQEI 7); in scalable mode 128-bit descriptors are invalid; the PASID-based types 6-8
        need scalable mode and 256-bit descriptors; device-TLB types need ECAP.DT; IEC needs
        ECAP.IR (never reported); page-group response needs ECAP.PRS (accepted as a no-op).
        """
        caps = self.caps

        def invalid(code: int) -> _QiHandler:
            def h(lo: int, hi: int) -> int | None:
                return code

            h._invalid = True  # type: ignore[attr-defined]
            return h

        bad_type = invalid(_IQEI_TYPE)
        table: list[_QiHandler] = [bad_type] * 128
        if not self.ttm_valid:
            table = [invalid(_IQEI_TTM)] * 128
        elif not (self.ttm == 1 and not self._iq_dw):
            scalable = self.ttm == 1 and self._iq_dw
            table[D.DescType.CC] = self._qi_cc
            table[D.DescType.IOTLB] = self._qi_iotlb
            table[D.DescType.WAIT] = self._qi_wait
            if caps.device_tlb:
                table[D.DescType.DEVTLB] = self._qi_devtlb
            if scalable:
                table[D.DescType.PIOTLB] = self._qi_piotlb
                table[D.DescType.PASID_CACHE] = self._qi_pc
                if caps.device_tlb:
                    table[D.DescType.PDEVTLB] = self._qi_pdevtlb
                if caps.page_requests:
                    table[D.DescType.PGRP_RESP] = lambda lo, hi: None
        # tuples: replaced whole when the queue is configured again, never changed in place
        # (so the explorer's snapshot has nothing of them to compare at every restore)
        self._qi_table: tuple[_QiHandler, ...] = tuple(table)
        #: the largest AM a page-selective IOTLB descriptor may carry (-1: no CAP.PSI)
        self._qi_mamv = caps.mamv if caps.psi else -1
        self._qi_valid = tuple(not getattr(h, "_invalid", False) for h in table)
        # source-id -> function, for device-TLB descriptors (filled by _device): emptied
        self._qi_devices_clear()

    def _iqt_written(self, old: int, v: int, part: int) -> None:
        # Writing the reserved upper dword alone moves nothing; with QI disabled the value is
        # only stored (VT-d 6.5.2: the queue is fetched only while QIES is set).
        if not part & 0xFFFF_FFFF or not self.qi_enabled:
            return
        # The hot path of every qi_submit_sync: _tail_moved inlined (same checks, same order;
        # tests/test_perf_paths.py pins it to _tail_moved).
        regs = self._regs
        if regs[_FSTS_OFF] & _FSTS_IQE:
            return  # QEMU vtd_handle_iqt_write: no fetch while IQE is pending
        qt = regs[_IQT_OFF]
        shift = self._iq_shift  # 5 exactly when IQA.DW latched 256-bit descriptors
        if shift == 5 and qt & 0x10:
            self._queue_error(_IQEI_MISALIGNED)  # IQT bit 4 reserved with 256-bit descriptors
            return
        tail = qt >> shift
        if tail >= self._iq_entries:
            self._queue_error(_IQEI_TAIL)  # QEMU vtd_fetch_inv_desc: tail beyond the queue
            return
        self._iq_tail = tail
        head = self._iq_head
        if tail == head:
            return
        addr = self._iq_base + (head << shift)
        if tail == head + 2 and shift == 5 and (addr & 0xFFF) <= 0xFC0:
            # qi_submit_sync's one-descriptor submission: a 256-bit descriptor then the wait
            # descriptor, in one ring page; the general block below unrolled for it when both
            # have qwords 2-3 clear and the wait descriptor asks for the status write only
            # (SW; no IF, no reserved bit): same fetch, checks, handler, status write (VT-d
            # 6.5.2.8, QEMU vtd_process_wait_desc), counters, IQH and error, in the same
            # order (tests/test_perf_aux_path.py pins it to the general path).
            # The two slots' bytes, from the page the driver wrote them into (the same bytes
            # as its qword_pages view: PhysicalMemory keeps both on one buffer); any other page
            # (an image page never written, no page) takes the general block below.
            wp = self.memory.written_pages
            buf = wp.get(addr >> 12)
            if (
                buf is not None
                and not self._running
                and self._translator is self._qi_tr
                and self._qi_valid[_WAIT_TYPE]
            ):
                lo, hi, x2, x3, wlo, whi, w2, w3 = _UNPACK_2SLOTS(buf, addr & 0xFFF)
                if (
                    not (x2 or x3 or w2 or w3)
                    and wlo & _W_FAST_MASK == _W_FAST_VALUE
                    and not whi & _RSVD_WAIT_HI
                ):
                    self._running = True
                    try:
                        t = (lo & 0xF) | ((lo >> 5) & 0x70)
                        err = self._qi_table[t](lo, hi)
                        if err is None:
                            counts = self._counts
                            counts[t] += 1
                            # the status write (SADDR is dword aligned, the data 32 bits):
                            # PhysicalMemory.write32's store into an already written page,
                            # inlined; any other page through write32 itself
                            saddr = whi & _W_SADDR
                            buf = wp.get(saddr >> 12)  # (the dict is never replaced)
                            try:
                                if buf is not None:
                                    _PACK_U32(buf, saddr & 0xFFF, wlo >> _W_SDATA_SH)
                                else:
                                    self.memory.write32(saddr, wlo >> _W_SDATA_SH)
                            except MemoryAccessError:
                                err = _IQEI_NA
                                head += 1  # past the descriptor; IQH stays at the wait
                            else:
                                self._status_writes += 1
                                self._waits += 1
                                counts[_WAIT_TYPE] += 1
                                head += 2  # past the descriptor and the wait descriptor
                        if err is None and head != self._iq_tail:
                            self._drain(head)  # a side effect moved the tail
                            return
                        self._iq_head = head
                        regs[_IQH_OFF] = head << 5
                        if err is not None:
                            self._queue_error(err)
                    finally:
                        self._running = False
                    return
        nwords = self._iq_words
        n = (tail - head) * nwords
        i = (addr & 0xFFF) >> 3
        q = self.memory.qword_pages.get(addr >> 12)
        if (
            q is None  # not materialised: read_qwords decides (image page, fetch error)
            or head > tail  # the ring wraps
            or i + n > 512  # the run crosses a ring page
            or self._running  # re-entered: the outer loop sees the new tail
            or self._translator is not self._qi_tr  # _run_queue rebinds the translator
        ):
            self._run_queue()
            return
        # The common submission: _run_queue's first block fetched and processed here (same
        # fetch, same handler order, same IQH, same error), without its general loop.
        block = q[i : i + n].tolist()
        self._running = True
        try:
            table = self._qi_table
            counts = self._counts
            wide = nwords == 4
            # the wait descriptor is valid (its handler is _qi_wait) unless TTM is bad
            wait_ok = self._qi_valid[_WAIT_TYPE]
            err = None
            i = 0
            while head < tail:
                lo = block[i]
                hi = block[i + 1]
                t = (lo & 0xF) | ((lo >> 5) & 0x70)
                if wide and (block[i + 2] or block[i + 3]):
                    # qwords 2-3 of a 256-bit descriptor are reserved (VT-d 6.5.2)
                    err = _IQEI_RSVD if self._qi_valid[t] else table[t](lo, hi)
                    break
                if (
                    t == _WAIT_TYPE
                    and wait_ok
                    and not lo & _W_INLINE_NOT
                    and not hi & _RSVD_WAIT_HI
                ):
                    # _qi_wait inlined for qi_submit_sync's wait descriptor (SW, no IF, no
                    # reserved bit): the status write of VT-d 6.5.2.8 (QEMU
                    # vtd_process_wait_desc); an unwritable address is a queue error.
                    if lo & _W_SW:
                        # PhysicalMemory.write32's store into a written page, inlined (as in
                        # the two-descriptor path above); any other page through write32
                        saddr = hi & _W_SADDR
                        buf = self.memory.written_pages.get(saddr >> 12)
                        try:
                            if buf is not None:
                                _PACK_U32(buf, saddr & 0xFFF, lo >> _W_SDATA_SH)
                            else:
                                self.memory.write32(saddr, lo >> _W_SDATA_SH)
                        except MemoryAccessError:
                            err = _IQEI_NA
                            break
                        self._status_writes += 1
                    self._waits += 1
                else:
                    err = table[t](lo, hi)
                    if err is not None:
                        break
                counts[t] += 1
                head += 1
                i += nwords
            if err is None and head != self._iq_tail:
                self._drain(head)  # a side effect moved the tail: the general loop goes on
                return
            self._iq_head = head
            regs[_IQH_OFF] = head << shift
            if err is not None:
                self._queue_error(err)
        finally:
            self._running = False

    def _tail_moved(self) -> None:
        regs = self._regs
        if regs[R.FSTS] & _FSTS_IQE:
            return  # QEMU vtd_handle_iqt_write: no fetch while IQE is pending
        qt = regs[R.IQT]
        if self._iq_dw and qt & 0x10:
            # 256-bit descriptors: IQT bit 4 is reserved (VirtualBox dmarIqtRegWrite; QEMU
            # VTD_IQT_QT_256_RSV_BIT).
            self._queue_error(_IQEI_MISALIGNED)
            return
        tail = qt >> self._iq_shift
        if tail >= self._iq_entries:
            self._queue_error(_IQEI_TAIL)  # QEMU vtd_fetch_inv_desc: tail beyond the queue
            return
        self._iq_tail = tail
        if tail != self._iq_head:
            self._run_queue()

    def _queue_error(self, iqei: int) -> None:
        # QEMU vtd_handle_inv_queue_error; IQERCD.IQEI records why (VT-d 11.4.9.9).
        regs = self._regs
        pre = regs[R.FSTS]
        regs[R.FSTS] = pre | _FSTS_IQE
        regs[R.IQER] = iqei
        self._invalid += 1
        self._fault_event(pre)

    def _run_queue(self) -> None:
        """Process descriptors from IQH up to the latched tail (VT-d 6.5.2; QEMU
        vtd_fetch_inv_desc).  Descriptors are fetched in blocks (the run up to the tail, the
        end of the ring or the end of the 4 KiB page, as hardware prefetches), one
        ``read_qwords`` per block."""
        if self._running:
            return  # re-entered from a side effect: the outer loop sees the new tail
        self._running = True
        try:
            # A translator not created yet caches nothing: its invalidations are no-ops, so it
            # is not created here (the first translate() creates it, with empty caches).
            tr = self._translator
            if tr is not self._qi_tr:
                self._qi_tr = tr
                self._qi_tr_psi = getattr(tr, "invalidate_iotlb_page", None)
            self._drain(self._iq_head)
        finally:
            self._running = False

    def _drain(self, head: int) -> None:
        """The fetch loop of :meth:`_run_queue` from ``head`` (``_running`` set by the caller):
        process up to the latched tail (which a side effect may move), then latch IQH and
        report the first invalid descriptor."""
        mem = self.memory
        table = self._qi_table
        valid = self._qi_valid
        counts = self._counts
        base = self._iq_base
        shift = self._iq_shift
        nwords = self._iq_words
        wide = nwords == 4
        entries = self._iq_entries
        per_page = 4096 >> shift
        err: int | None = None
        while head != self._iq_tail:
            tail = self._iq_tail
            end = tail if tail > head else entries
            page_end = head - head % per_page + per_page
            if end > page_end:
                end = page_end
            addr = base + (head << shift)
            # The block never crosses a page: read it through the read-only qword view
            # when the page is materialised (a copy, as read_qwords returns), else through
            # read_qwords (image page, never written, or beyond memory: IQEI_FETCH).
            q = mem.qword_pages.get(addr >> 12)
            block: Sequence[int]
            if q is not None:
                i = (addr & 0xFFF) >> 3
                block = q[i : i + (end - head) * nwords].tolist()
            else:
                try:
                    block = mem.read_qwords(addr, (end - head) * nwords)
                except MemoryAccessError:
                    err = _IQEI_FETCH
                    break
            i = 0
            while head < end:
                lo = block[i]
                hi = block[i + 1]
                t = (lo & 0xF) | ((lo >> 5) & 0x70)
                if wide and (block[i + 2] or block[i + 3]):
                    # qwords 2-3 of a 256-bit descriptor are reserved (VT-d 6.5.2); an
                    # invalid type is still reported as such (its handler has no effects).
                    err = _IQEI_RSVD if valid[t] else table[t](lo, hi)
                    break
                err = table[t](lo, hi)
                if err is not None:
                    break
                counts[t] += 1
                head += 1
                i += nwords
            if err is not None:
                break
            if head == entries:
                head = 0
        self._iq_head = head
        self._regs[R.IQH] = head << shift
        if err is not None:
            self._queue_error(err)

    # descriptor handlers: return None when done, else the IQEI code of the error

    def _qi_cc(self, lo: int, hi: int) -> int | None:
        if lo & _RSVD_CC[0] or hi & _RSVD_CC[1]:
            return _IQEI_RSVD
        g = (lo >> _G_SH) & 3
        if not g:
            return _IQEI_RSVD  # granularity 0 is reserved (OpenVMM InvalidGranularity)
        tr = self._qi_tr
        if tr is not None:
            if g == 1:
                tr.invalidate_context("global")
            elif g == 2:
                tr.invalidate_context("domain", did=(lo >> _DID_SH) & 0xFFFF)
            else:
                tr.invalidate_context(
                    "device",
                    did=(lo >> _DID_SH) & 0xFFFF,
                    sid=(lo >> _CC_SID_SH) & 0xFFFF,
                    fm=(lo >> _CC_FM_SH) & 3,
                )
        return None

    def _qi_iotlb(self, lo: int, hi: int) -> int | None:
        if lo & _RSVD_IOTLB_LO or hi & _RSVD_IOTLB_HI:
            return _IQEI_RSVD
        g = (lo >> _G_SH) & 3
        tr = self._qi_tr
        if g == 3:
            am = hi & _AM_MASK
            # PSI needs CAP.PSI and AM <= CAP.MAMV (OpenVMM validate; QEMU
            # vtd_process_iotlb_desc "am > VTD_MAMV").
            if am > self._qi_mamv:  # -1 without CAP.PSI
                return _IQEI_RSVD
            psi = self._qi_tr_psi  # the translator's page-selective entry point, if it has one
            if psi is not None:
                psi(
                    (lo >> _DID_SH) & 0xFFFF,
                    hi & _ADDR_MASK & ~((4096 << am) - 1),
                    am,
                    (hi & _IH_BIT != 0),
                )
            elif tr is not None:
                tr.invalidate_iotlb(
                    "page",
                    did=(lo >> _DID_SH) & 0xFFFF,
                    addr=hi & _ADDR_MASK & ~((4096 << am) - 1),
                    am=am,
                    ih=(hi & _IH_BIT != 0),
                )
        elif g == 2:
            if tr is not None:
                # positional: TranslatorLike's (granularity, did) parameters
                tr.invalidate_iotlb("domain", (lo >> _DID_SH) & 0xFFFF)
        elif g == 1:
            if tr is not None:
                tr.invalidate_iotlb("global")
        else:
            return _IQEI_RSVD
        return None

    def _device(self, sid: int) -> Any:
        dev = self._qi_device(sid)  # functions found before (a platform never loses one)
        if dev is not None:
            return dev
        p = self.platform
        if p is None:
            return None
        try:
            dev = p.device(sid)
        except (LookupError, VtdsimError):
            return None  # no such function behind this unit: nothing caches its translations
        if dev is not None:
            self._qi_device_add(sid, dev)
        return dev

    def _qi_devtlb(self, lo: int, hi: int) -> int | None:
        if lo & _RSVD_DEVTLB[0] or hi & _RSVD_DEVTLB[1]:
            return _IQEI_RSVD
        sid = (lo >> _DEV_SID_SH) & 0xFFFF
        dev = self._qi_device(sid)  # _device's cache, looked up inline
        if dev is None:
            dev = self._device(sid)
        if dev is not None:
            dev.invalidate_devtlb(None, hi & _ADDR_MASK, (hi & _DEV_S != 0))
        return None

    def _qi_wait(self, lo: int, hi: int) -> int | None:
        if lo & _RSVD_WAIT_LO or hi & _RSVD_WAIT_HI:
            return _IQEI_RSVD
        if lo & _W_SW:
            # Status write of the 32-bit status data (VT-d 6.5.2.8; QEMU
            # vtd_process_wait_desc).  An unwritable address is a queue error there too.
            # SADDR is dword aligned: PhysicalMemory.write32 updates it inside its qword.
            try:
                self.memory.write32(hi & _W_SADDR, lo >> _W_SDATA_SH)
            except MemoryAccessError:
                return _IQEI_NA
            self._status_writes += 1
        if lo & _W_IF:
            self._completion_event()
        # FN (fence) orders later descriptors after this one: always true here.
        self._waits += 1
        return None

    def _qi_piotlb(self, lo: int, hi: int) -> int | None:
        if lo & _RSVD_PIOTLB[0] or hi & _RSVD_PIOTLB[1]:
            return _IQEI_RSVD
        g = (lo >> _G_SH) & 3
        if g < 2:
            return _IQEI_RSVD  # 0 and 1 are reserved (OpenVMM InvalidGranularity)
        tr = self._qi_tr
        if tr is not None:
            did = (lo >> _DID_SH) & 0xFFFF
            pasid = (lo >> _PASID_SH) & _PASID_MASK
            if g == 2:
                tr.invalidate_piotlb("pasid", did, pasid)
            else:
                # CAP.PSI / MAMV do not restrict P_IOTLB (OpenVMM, VT-d 11.4.2).
                am = hi & _AM_MASK
                tr.invalidate_piotlb(
                    "page",
                    did,
                    pasid,
                    addr=hi & _ADDR_MASK & ~((4096 << am) - 1),
                    am=am,
                    ih=(hi & _IH_BIT != 0),
                )
        return None

    def _qi_pc(self, lo: int, hi: int) -> int | None:
        if lo & _RSVD_PC_LO or hi & _RSVD_PC_HI:
            return _IQEI_RSVD
        g = (lo >> _G_SH) & 3
        if g == 2:
            return _IQEI_RSVD
        tr = self._qi_tr
        if tr is not None:
            did = (lo >> _DID_SH) & 0xFFFF
            # positional: TranslatorLike's (granularity, did, pasid) parameters
            if g == 0:
                tr.invalidate_pasid_cache("domain", did)
            elif g == 1:
                tr.invalidate_pasid_cache("pasid", did, (lo >> _PASID_SH) & _PASID_MASK)
            else:
                tr.invalidate_pasid_cache("global")
        return None

    def _qi_pdevtlb(self, lo: int, hi: int) -> int | None:
        if lo & _RSVD_PDEVTLB_LO or hi & _RSVD_PDEVTLB_HI:
            return _IQEI_RSVD
        sid = (lo >> _PDEV_SID_SH) & 0xFFFF
        dev = self._qi_device(sid)  # _device's cache, looked up inline
        if dev is None:
            dev = self._device(sid)
        if dev is not None:
            dev.invalidate_devtlb(
                (lo >> _PASID_SH) & _PASID_MASK, hi & _ADDR_MASK, (hi & _PDEV_S != 0)
            )
        return None

    # -- statistics ------------------------------------------------------------------------------

    def statistics(self) -> UnitStatistics:
        return UnitStatistics(
            descriptors={
                _TYPE_NAMES.get(t, f"type{t}"): n for t, n in enumerate(self._counts) if n
            },
            invalid_descriptors=self._invalid,
            wait_completions=self._waits,
            status_writes=self._status_writes,
            faults_recorded=self._faults_recorded,
            faults_dropped=self._faults_dropped,
            fault_interrupts=self._fault_irqs,
            completion_interrupts=self._completion_irqs,
            register_invalidations=self._reg_invals,
            write_buffer_flushes=self._wbf,
            root_pointer_sets=self._srtp,
        )

    def __repr__(self) -> str:
        return (
            f"<RemappingUnit {self.name}: TE={int(self.translation_enabled)} "
            f"root={self.root_table_address:#x} ttm={self.ttm} QI={int(self.qi_enabled)}>"
        )
