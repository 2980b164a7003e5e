"""PCI functions behind a remapping unit: PASID and ATS capabilities, device-TLB, DMA engine.

A :class:`PciDevice` issues DMA the way a PCIe function does: every request carries its
source-id (bus/device/function) and optionally a PASID (PASID TLP prefix, PCIe 6.20), and is
translated by the remapping unit that covers it.  With ATS enabled (PCIe 10) and the context
entry allowing it (scalable-mode DTE, legacy TT=01; reported as ``Translation.ats``) the
function caches translations in its device-TLB (ATC) and uses them for later requests without
asking the unit -- so a missing device-TLB invalidation shows as a stale access, as on real
hardware.

Device-TLB invalidation (PCIe 10.3.1 / VT-d 6.5.2.5 "Device-TLB Invalidate Descriptor"): the
address with S=0 names one 4 KiB page; with S=1 the lowest 0 bit at or above bit 12 gives the
size (bit 12 clear: 8 KiB, bits 12 set and 13 clear: 16 KiB, ...), and all ones above bit 12
(or up to bit 62, as Linux's whole-device flush ``qw1 = 0x7ffffffffffff001`` encodes) means the
whole address space.  An invalidation without PASID applies to every cached translation in the
range, with or without PASID (PCIe 10.3.1: an Invalidate Request without a PASID prefix
affects all PASIDs -- which is what made Linux's non-PASID whole-device flush in 5.x
``intel_pasid_tear_down_entry`` effective).

DMA crossing pages translates each 4 KiB piece in order.  A fault stops the transfer: the
result carries the fault and how many bytes were transferred before it.  For writes the pages
before the faulting one **have been written** (posted writes reach memory as hardware would);
``DmaResult.ok`` is False and ``data`` is None, so no partial write is reported as a success.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from vtdsim.errors import ArgumentError
from vtdsim.hw.memory import PhysicalMemory
from vtdsim.hw.translate import Translation as _Translation
from vtdsim.hw.walk import PERM_R, PERM_SR, PERM_SW, PERM_W

if TYPE_CHECKING:
    from vtdsim.hw.translate import Translation, TranslationFault

__all__ = [
    "AtsCapability",
    "DevTlbStatistics",
    "DmaResult",
    "PasidCapability",
    "PciDevice",
    "format_bdf",
    "parse_bdf",
]


class _Translating(Protocol):
    def translate(
        self,
        sid: int,
        addr: int,
        *,
        pasid: int | None = ...,
        write: bool = ...,
        execute: bool = ...,
        privileged: bool = ...,
    ) -> Any: ...


def parse_bdf(bdf: str | int) -> int:
    """Source-id of ``"bb:dd.f"`` (hex bus and device, function 0-7), ``"0000:bb:dd.f"``
    (segment 0 only) or an int source-id."""
    if isinstance(bdf, bool) or not isinstance(bdf, (str, int)):
        raise ArgumentError("bdf", bdf, "'bb:dd.f' or a 16-bit source-id")
    if isinstance(bdf, int):
        if not 0 <= bdf <= 0xFFFF:
            raise ArgumentError("bdf", bdf, "a 16-bit source-id")
        return bdf
    s = bdf.strip().lower()
    parts = s.split(":")
    if len(parts) == 3:
        seg = parts.pop(0)
        try:
            if int(seg, 16) != 0:
                raise ValueError
        except ValueError:
            raise ArgumentError("bdf", bdf, "PCI segment 0000 (one segment is modelled)") from None
    try:
        if len(parts) != 2 or "." not in parts[1]:
            raise ValueError
        dev_s, fn_s = parts[1].split(".")
        bus, dev, fn = int(parts[0], 16), int(dev_s, 16), int(fn_s, 16)
    except ValueError:
        raise ArgumentError("bdf", bdf, "'bb:dd.f' (hex bus 00-ff, device 00-1f, fn 0-7)") from None
    if not (0 <= bus <= 0xFF and 0 <= dev <= 0x1F and 0 <= fn <= 7):
        raise ArgumentError("bdf", bdf, "bus 00-ff, device 00-1f, function 0-7")
    return bus << 8 | dev << 3 | fn


def format_bdf(sid: int) -> str:
    """``"bb:dd.f"`` of a source-id (Linux ``%02x:%02x.%x``)."""
    return f"{sid >> 8:02x}:{(sid >> 3) & 0x1F:02x}.{sid & 7:x}"


@dataclass(frozen=True, slots=True)
class PasidCapability:
    """PCIe PASID extended capability: ``width`` = Max PASID Width (0..20)."""

    width: int

    def __post_init__(self) -> None:
        if not isinstance(self.width, int) or not 0 <= self.width <= 20:
            raise ArgumentError("pasid_bits", self.width, "0..20 (Max PASID Width)")

    @property
    def max_pasids(self) -> int:
        """Number of PASIDs the function can use (Linux ``pci_max_pasids``: 1 << width)."""
        return 1 << self.width if self.width else 0


@dataclass(slots=True)
class AtsCapability:
    """PCIe ATS extended capability; ``enabled`` is the ATS Control Enable bit."""

    enabled: bool = True
    stu: int = 12  # smallest translation unit (log2 bytes)


@dataclass(frozen=True, slots=True)
class DevTlbStatistics:
    hits: int
    misses: int
    invalidations: int
    entries: int


@dataclass(frozen=True, slots=True)
class DmaResult:
    """Outcome of one DMA: ``ok``; ``data`` (reads); ``fault`` (the first fault);
    ``transferred``: bytes moved before the fault (all of them when ok)."""

    ok: bool
    data: bytes | None
    fault: TranslationFault | None
    transferred: int


_new = object.__new__
_set_ok: Any = DmaResult.__dict__["ok"].__set__
_set_data: Any = DmaResult.__dict__["data"].__set__
_set_fault: Any = DmaResult.__dict__["fault"].__set__
_set_transferred: Any = DmaResult.__dict__["transferred"].__set__
# (the slots' descriptors: a DmaResult built field by field without the frozen dataclass's
# object.__setattr__ per field -- dma_read's one-page path)


class _DevTlbEntry:
    __slots__ = ("base", "hpa", "pasid", "perm", "shift")

    def __init__(self, pasid: int | None, base: int, shift: int, hpa: int, perm: int) -> None:
        self.pasid = pasid
        self.base = base
        self.shift = shift
        self.hpa = hpa
        self.perm = perm


def ats_range(addr: int, size_bit: bool) -> tuple[int, int]:
    """``(base, size)`` named by an ATS invalidation address and S bit (module docstring)."""
    a = addr & ~0xFFF & ((1 << 64) - 1)
    if not size_bit:
        return a, 1 << 12
    # b = the lowest clear address bit at or above bit 12 (PCIe ATS 2.3.2: the size is named
    # by the run of 1s above bit 12, e.g. all 1s = the whole address space): ``~x & (x + 1)``
    # isolates the lowest 0 bit of x = a >> 12 in one step instead of a per-bit loop.
    x = a >> 12
    b = 11 + (~x & (x + 1)).bit_length()
    if b >= 63:
        return 0, 1 << 64
    size = 1 << (b + 1)
    return a & ~(size - 1), size


class PciDevice:
    """One PCI function (see the module docstring)."""

    def __init__(
        self,
        sid: int,
        memory: PhysicalMemory,
        unit: _Translating | None = None,
        pasid_bits: int = 0,
        ats: bool = False,
    ) -> None:
        self.sid = parse_bdf(sid)
        self.memory = memory
        self.unit = unit
        self.pasid_cap: PasidCapability | None = PasidCapability(pasid_bits) if pasid_bits else None
        self.ats_cap: AtsCapability | None = AtsCapability() if ats else None
        self._devtlb: dict[tuple[int | None, int, int], _DevTlbEntry] = {}
        self._hits = 0
        self._misses = 0
        self._invals = 0

    # -- identity --------------------------------------------------------------------------------

    @property
    def bus(self) -> int:
        return self.sid >> 8

    @property
    def dev(self) -> int:
        return (self.sid >> 3) & 0x1F

    @property
    def fn(self) -> int:
        return self.sid & 7

    @property
    def devfn(self) -> int:
        return self.sid & 0xFF

    @property
    def bdf(self) -> str:
        return format_bdf(self.sid)

    @property
    def max_pasids(self) -> int:
        return self.pasid_cap.max_pasids if self.pasid_cap is not None else 0

    def __repr__(self) -> str:
        caps = []
        if self.pasid_cap is not None:
            caps.append(f"pasid={self.pasid_cap.width}")
        if self.ats_cap is not None:
            caps.append("ats" + ("" if self.ats_cap.enabled else "(off)"))
        return f"<PciDevice {self.bdf}{' ' + ' '.join(caps) if caps else ''}>"

    # -- translation (with the device-TLB) -----------------------------------------------------

    def _check_pasid(self, pasid: int | None) -> None:
        if pasid is None:
            return
        if not isinstance(pasid, int) or isinstance(pasid, bool):
            raise ArgumentError("pasid", pasid, "None or an integer PASID")
        if not 0 <= pasid < self.max_pasids:
            raise ArgumentError(
                "pasid",
                pasid,
                f"a PASID below {self.max_pasids} (the function's PASID capability)"
                if self.max_pasids
                else "None: this function has no PASID capability",
            )

    def translate(
        self, addr: int, *, pasid: int | None = None, write: bool = False, privileged: bool = False
    ) -> tuple[int, TranslationFault | None]:
        """HPA of ``addr`` for one request (devTLB first when ATS is on); ``(hpa, None)`` or
        ``(0, fault)``."""
        unit = self.unit
        if unit is None:
            return addr, None  # no remapping unit: DMA addresses are host-physical
        ats = self.ats_cap
        if ats is None or not ats.enabled:
            r: Translation | TranslationFault = unit.translate(
                self.sid, addr, pasid=pasid, write=write, privileged=privileged
            )
            if not r.ok:
                return 0, r  # type: ignore[return-value]
            return r.address, None
        tlb = self._devtlb
        if tlb:  # an empty device-TLB holds nothing to look up
            need = (PERM_SW if write else PERM_SR) if privileged else (PERM_W if write else PERM_R)
            for shift in (12, 21, 30):
                e = tlb.get((pasid, shift, addr >> shift))
                if e is not None:
                    if e.perm & need == need:
                        self._hits += 1
                        return e.hpa | (addr & ((1 << shift) - 1)), None
                    break  # insufficient rights: ask the unit again (PCIe 10.2.3)
        self._misses += 1
        r = unit.translate(self.sid, addr, pasid=pasid, write=write, privileged=privileged)
        if not r.ok:
            return 0, r  # type: ignore[return-value]
        t: Translation = r  # type: ignore[assignment]
        # the page facts: read from the shared page object when it is one (no property calls)
        pg: Any = t._p if type(t) is _Translation else t
        if pg.ats:
            shift = pg.page_shift if pg is t else pg.shift
            hpa = t.address
            mask = (1 << shift) - 1
            # base and page address (Translation.page_address) of the translated page
            e = _new(_DevTlbEntry)
            e.pasid = pasid
            e.base = addr & ~mask
            e.shift = shift
            e.hpa = hpa & ~mask if pg is not t else t.page_address
            e.perm = pg.perm
            tlb[(pasid, shift, addr >> shift)] = e
            return hpa, None
        return t.address, None

    def invalidate_devtlb(self, pasid: int | None, addr: int, size_bit: bool) -> int:
        """Drop cached translations in the range named by ``addr``/``size_bit``; ``pasid``
        None affects every PASID (see the module docstring).  Returns how many."""
        if (type(addr) is not int and not isinstance(addr, int)) or addr < 0:
            raise ArgumentError("addr", addr, "a non-negative address")
        if not self._devtlb:
            return 0  # nothing cached (no ATS translation yet): nothing to drop
        base, size = ats_range(addr, bool(size_bit))
        end = base + size
        dead = []
        for k, e in self._devtlb.items():
            if (
                (pasid is None or e.pasid == pasid)
                and e.base < end
                and base < e.base + (1 << e.shift)
            ):
                dead.append(k)
        for k in dead:
            del self._devtlb[k]
        self._invals += len(dead)
        return len(dead)

    def devtlb_statistics(self) -> DevTlbStatistics:
        return DevTlbStatistics(self._hits, self._misses, self._invals, len(self._devtlb))

    # -- DMA engine --------------------------------------------------------------------------

    def dma_read(
        self, addr: int, length: int, pasid: int | None = None, privileged: bool = False
    ) -> DmaResult:
        """Read ``length`` bytes at device address ``addr`` (any length, across pages)."""
        if (
            type(addr) is int
            and type(length) is int
            and addr >= 0
            and 0 < length <= 0x1000 - (addr & 0xFFF)
            and addr + length <= 1 << 64
            and (
                pasid is None
                or (
                    type(pasid) is int
                    and (cap := self.pasid_cap) is not None
                    and cap.width  # PasidCapability.max_pasids: 1 << width, 0 for width 0
                    and 0 <= pasid < 1 << cap.width
                )
            )
        ):
            # One page, arguments that _check_span and _check_pasid accept: one translation
            # and one slice of the page (what the loop below does for a single piece).
            hpa, fault = self.translate(addr, pasid=pasid, write=False, privileged=privileged)
            res: DmaResult = _new(DmaResult)
            if fault is not None:
                _set_ok(res, False)
                _set_data(res, None)
                _set_fault(res, fault)
                _set_transferred(res, 0)
                return res
            mem = self.memory
            if hpa + length <= mem.size:  # (else mem.read raises its MemoryAccessError)
                q = mem.qword_pages.get(hpa >> 12)
                if q is not None:  # a materialised page: its bytes
                    off = hpa & 0xFFF
                    data = q.cast("B")[off : off + length].tobytes()
                elif mem._image_mv is None:
                    # a page never written and no image behind the memory: zeros, what
                    # PhysicalMemory.read gives (_page_bytes) for a range inside memory
                    data = bytes(length)
                elif length == 8 and not hpa & 7:  # one qword (PhysicalMemory.read64's path)
                    data = mem.read64(hpa).to_bytes(8, "little")
                else:
                    data = mem.read(hpa, length)
            else:
                data = mem.read(hpa, length)
            _set_ok(res, True)
            _set_data(res, data)
            _set_fault(res, None)
            _set_transferred(res, length)
            return res
        return self._dma_read_pages(addr, length, pasid, privileged)

    def _dma_read_pages(
        self, addr: int, length: int, pasid: int | None, privileged: bool
    ) -> DmaResult:
        """:meth:`dma_read` in general: checked arguments, then page by page."""
        _check_span(addr, length)
        self._check_pasid(pasid)
        mem = self.memory
        out = bytearray()
        pos = 0
        while pos < length:
            a = addr + pos
            n = min(length - pos, 0x1000 - (a & 0xFFF))
            hpa, fault = self.translate(a, pasid=pasid, write=False, privileged=privileged)
            if fault is not None:
                return DmaResult(False, None, fault, pos)
            out += mem.read(hpa, n)
            pos += n
        return DmaResult(True, bytes(out), None, length)

    def dma_write(
        self,
        addr: int,
        data: bytes | bytearray | memoryview,
        pasid: int | None = None,
        privileged: bool = False,
    ) -> DmaResult:
        """Write ``data`` at device address ``addr``; pages before a faulting page have been
        written (see the module docstring)."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise ArgumentError("data", data, "bytes")
        length = len(data)
        _check_span(addr, length)
        self._check_pasid(pasid)
        mem = self.memory
        pos = 0
        while pos < length:
            a = addr + pos
            n = min(length - pos, 0x1000 - (a & 0xFFF))
            hpa, fault = self.translate(a, pasid=pasid, write=True, privileged=privileged)
            if fault is not None:
                return DmaResult(False, None, fault, pos)
            mem.write(hpa, data[pos : pos + n])
            pos += n
        return DmaResult(True, None, None, length)


def _check_span(addr: int, length: int) -> None:
    if isinstance(addr, bool) or not isinstance(addr, int) or addr < 0:
        raise ArgumentError("addr", addr, "a non-negative device address")
    if isinstance(length, bool) or not isinstance(length, int) or length < 0:
        raise ArgumentError("length", length, "a non-negative byte count")
    if addr + length > 1 << 64:
        raise ArgumentError("addr+length", addr + length, "a range inside the 64-bit space")
