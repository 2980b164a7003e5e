"""Queued-invalidation descriptors, declared once as data.

Sources (facts only): VT-d specification rev 4.1 section 6.5.2 (descriptor formats, figures
6-1 .. 6-8) and the reference fact sheet section 3.5; Linux ``drivers/iommu/intel/iommu.h``
``QI_*`` macros (the fixed ``QI_DEV_IOTLB_PFSID`` / ``QI_DEV_EIOTLB_PFSID`` of commit
4e7120d79edb: PFSID[3:0] at qw0 15:12 and PFSID[15:4] at qw0 63:52); QEMU
``hw/i386/intel_iommu_internal.h`` ``VTD_INV_DESC_*``; OpenVMM
``intel_vtd/src/spec/invalidation.rs`` (reserved-bit masks per type, type = bits 11:9 ++ 3:0).

Every descriptor exists in two widths: the 128-bit form (IQA.DW = 0) and the 256-bit form
(IQA.DW = 1, used in scalable mode), which has the same qwords 0 and 1 and reserved-zero
qwords 2 and 3.  The descriptor type is 7 bits: ``TYPE`` (3:0) is type[3:0] and ``TYPE_HI``
(11:9) is type[6:4] (always 0 for the types defined here, so a non-zero TYPE_HI names an
unknown type).

Helper constructors (``iotlb_dsi(did)`` and friends) build the two 128-bit qwords with
precomputed shifts (they sit on the driver's unmap path) and check their arguments' ranges;
``widen`` appends the two reserved qwords of the 256-bit form.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import IntEnum

from vtdsim.errors import ArgumentError
from vtdsim.spec.bits import Decoded, Field, Layout

__all__ = [
    "CC_DESC",
    "CC_DESC_256",
    "DESCRIPTORS_128",
    "DESCRIPTORS_256",
    "DEVTLB_DESC",
    "DEVTLB_DESC_256",
    "IEC_DESC",
    "IEC_DESC_256",
    "IOTLB_DESC",
    "IOTLB_DESC_256",
    "PASID_CACHE_DESC",
    "PASID_CACHE_DESC_256",
    "PDEVTLB_DESC",
    "PDEVTLB_DESC_256",
    "PIOTLB_DESC",
    "PIOTLB_DESC_256",
    "QI_DONE",
    "WAIT_DESC",
    "WAIT_DESC_256",
    "CcGranularity",
    "DescType",
    "IecGranularity",
    "IotlbGranularity",
    "PasidCacheGranularity",
    "PiotlbGranularity",
    "cc_device",
    "cc_domain",
    "cc_global",
    "decode",
    "descriptor_type",
    "devtlb",
    "iec_global",
    "iec_index",
    "iotlb_dsi",
    "iotlb_global",
    "iotlb_psi",
    "layout_for",
    "pc_domain",
    "pc_global",
    "pc_pasid",
    "pdevtlb",
    "piotlb_pasid",
    "piotlb_psi",
    "wait",
    "widen",
]


class DescType(IntEnum):
    """Descriptor types (VT-d 6.5.2; Linux ``QI_*_TYPE``)."""

    CC = 1  # context-cache invalidate
    IOTLB = 2
    DEVTLB = 3  # device-TLB invalidate
    IEC = 4  # interrupt-entry-cache invalidate
    WAIT = 5  # invalidation wait
    PIOTLB = 6  # PASID-based IOTLB invalidate
    PASID_CACHE = 7
    PDEVTLB = 8  # PASID-based device-TLB invalidate
    PGRP_RESP = 9  # page-group response (no layout here: page requests are not modelled)


class CcGranularity(IntEnum):
    """Context-cache descriptor G (5:4); Linux ``QI_CC_GRAN``/``DMA_CCMD_*_INVL >> 61``."""

    GLOBAL = 1
    DOMAIN = 2
    DEVICE = 3


class IotlbGranularity(IntEnum):
    """IOTLB descriptor G (5:4); Linux ``QI_IOTLB_GRAN(DMA_TLB_*_FLUSH)``."""

    GLOBAL = 1
    DOMAIN = 2
    PAGE = 3


class PasidCacheGranularity(IntEnum):
    """PASID-cache descriptor G (5:4); Linux ``QI_PC_ALL_PASIDS``/``QI_PC_PASID_SEL``/
    ``QI_PC_GLOBAL``.  Value 2 is reserved."""

    DOMAIN = 0  # all PASIDs of a domain
    PASID = 1
    GLOBAL = 3


class PiotlbGranularity(IntEnum):
    """PASID-based IOTLB G (5:4); Linux ``QI_GRAN_NONG_PASID`` / ``QI_GRAN_PSI_PASID``.
    Values 0 and 1 are reserved."""

    PASID = 2  # all mappings of a PASID (non-global)
    PAGE = 3  # page-selective within a PASID


class IecGranularity(IntEnum):
    """Interrupt-entry-cache descriptor G (bit 4)."""

    GLOBAL = 0
    INDEX = 1


#: The status value Linux ``qi_submit_sync`` writes with its wait descriptor (``QI_DONE``).
QI_DONE = 2


def _enum(e: type[IntEnum]) -> dict[int, str]:
    return {int(m): m.name.lower() for m in e}


_TYPE = Field("TYPE", 0, 3, "descriptor type[3:0]", enum=_enum(DescType))
_TYPE_HI = Field("TYPE_HI", 9, 11, "descriptor type[6:4]")
_AM = Field("AM", 64, 69, "address mask: 2^AM pages")
_IH = Field("IH", 70, 70, "invalidation hint: leaf entries only")
_ADDR = Field("ADDR", 76, 127, "input address (page)", kind="address")


def _pair(name: str, fields: Sequence[Field], doc: str) -> tuple[Layout, Layout]:
    all_fields = [_TYPE, _TYPE_HI, *fields]
    return (
        Layout(name, 2, all_fields, doc + " (128-bit form)"),
        Layout(name + "256", 4, all_fields, doc + " (256-bit form: qwords 2-3 reserved)"),
    )


CC_DESC, CC_DESC_256 = _pair(
    "CcInvDesc",
    [
        Field("G", 4, 5, "granularity", enum=_enum(CcGranularity)),
        Field("DID", 16, 31, "domain id"),
        Field("SID", 32, 47, "source id"),
        Field("FM", 48, 49, "function mask"),
    ],
    "Context-cache invalidate descriptor, VT-d 6.5.2.1",
)

IOTLB_DESC, IOTLB_DESC_256 = _pair(
    "IotlbInvDesc",
    [
        Field("G", 4, 5, "granularity", enum=_enum(IotlbGranularity)),
        Field("DW", 6, 6, "drain writes"),
        Field("DR", 7, 7, "drain reads"),
        Field("DID", 16, 31, "domain id"),
        _AM,
        _IH,
        _ADDR,
    ],
    "IOTLB invalidate descriptor, VT-d 6.5.2.3",
)

DEVTLB_DESC, DEVTLB_DESC_256 = _pair(
    "DevTlbInvDesc",
    [
        Field("PFSID_LO", 12, 15, "physical function source id [3:0]"),
        Field("MIP", 16, 20, "max invalidations pending (Linux QDEP; 0 if >= 32)"),
        Field("SID", 32, 47, "source id of the device"),
        Field("PFSID_HI", 52, 63, "physical function source id [15:4]"),
        Field("S", 64, 64, "size: ADDR encodes a range (ATS spec)"),
        _ADDR,
    ],
    "Device-TLB invalidate descriptor, VT-d 6.5.2.5",
)

IEC_DESC, IEC_DESC_256 = _pair(
    "IecInvDesc",
    [
        Field("G", 4, 4, "granularity", enum=_enum(IecGranularity)),
        Field("IM", 27, 31, "index mask"),
        Field("IIDX", 32, 47, "interrupt index"),
    ],
    "Interrupt-entry-cache invalidate descriptor, VT-d 6.5.2.7",
)

WAIT_DESC, WAIT_DESC_256 = _pair(
    "InvWaitDesc",
    [
        Field("IF", 4, 4, "interrupt flag: set ICS.IWC"),
        Field("SW", 5, 5, "status write"),
        Field("FN", 6, 6, "fence"),
        Field("PD", 7, 7, "page-request drain (needs ECAP.PDS)"),
        Field("SDATA", 32, 63, "status data"),
        Field("SADDR", 66, 127, "status address (dword aligned)", kind="address"),
    ],
    "Invalidation wait descriptor, VT-d 6.5.2.8",
)

PIOTLB_DESC, PIOTLB_DESC_256 = _pair(
    "PiotlbInvDesc",
    [
        Field("G", 4, 5, "granularity", enum=_enum(PiotlbGranularity)),
        Field("DID", 16, 31, "domain id"),
        Field("PASID", 32, 51, "PASID"),
        _AM,
        _IH,
        _ADDR,
    ],
    "PASID-based IOTLB invalidate descriptor, VT-d 6.5.2.4",
)

PASID_CACHE_DESC, PASID_CACHE_DESC_256 = _pair(
    "PasidCacheInvDesc",
    [
        Field("G", 4, 5, "granularity", enum=_enum(PasidCacheGranularity)),
        Field("DID", 16, 31, "domain id"),
        Field("PASID", 32, 51, "PASID"),
    ],
    "PASID-cache invalidate descriptor, VT-d 6.5.2.2",
)

PDEVTLB_DESC, PDEVTLB_DESC_256 = _pair(
    "PDevTlbInvDesc",
    [
        Field("MIP", 4, 8, "max invalidations pending (Linux QDEP)"),
        Field("PFSID_LO", 12, 15, "physical function source id [3:0]"),
        Field("SID", 16, 31, "source id of the device"),
        Field("PASID", 32, 51, "PASID"),
        Field("PFSID_HI", 52, 63, "physical function source id [15:4]"),
        Field("G", 64, 64, "global: include global mappings"),
        Field("S", 75, 75, "size: ADDR encodes a range (ATS spec)"),
        _ADDR,
    ],
    "PASID-based device-TLB invalidate descriptor, VT-d 6.5.2.6",
)

#: type -> layout
DESCRIPTORS_128: dict[int, Layout] = {
    DescType.CC: CC_DESC,
    DescType.IOTLB: IOTLB_DESC,
    DescType.DEVTLB: DEVTLB_DESC,
    DescType.IEC: IEC_DESC,
    DescType.WAIT: WAIT_DESC,
    DescType.PIOTLB: PIOTLB_DESC,
    DescType.PASID_CACHE: PASID_CACHE_DESC,
    DescType.PDEVTLB: PDEVTLB_DESC,
}
DESCRIPTORS_256: dict[int, Layout] = {
    DescType.CC: CC_DESC_256,
    DescType.IOTLB: IOTLB_DESC_256,
    DescType.DEVTLB: DEVTLB_DESC_256,
    DescType.IEC: IEC_DESC_256,
    DescType.WAIT: WAIT_DESC_256,
    DescType.PIOTLB: PIOTLB_DESC_256,
    DescType.PASID_CACHE: PASID_CACHE_DESC_256,
    DescType.PDEVTLB: PDEVTLB_DESC_256,
}


def descriptor_type(qw0: int) -> int:
    """The 7-bit descriptor type: qw0 bits 11:9 (type[6:4]) ++ bits 3:0 (type[3:0])."""
    return (qw0 & 0xF) | ((qw0 >> 5) & 0x70)


def layout_for(dtype: int, wide: bool = False) -> Layout:
    """The layout of descriptor type ``dtype`` in the 128-bit or (``wide``) 256-bit form."""
    table = DESCRIPTORS_256 if wide else DESCRIPTORS_128
    lay = table.get(dtype)
    if lay is None:
        raise ArgumentError("descriptor type", dtype, f"one of {sorted(table)}")
    return lay


def decode(words: Sequence[int]) -> Decoded:
    """Decode a 2- or 4-qword descriptor by its type (no validation)."""
    if len(words) not in (2, 4):
        raise ArgumentError("descriptor words", len(words), "2 (128-bit) or 4 (256-bit) qwords")
    if not isinstance(words[0], int):
        raise ArgumentError("descriptor qword 0", words[0], "an unsigned 64-bit integer")
    return layout_for(descriptor_type(words[0]), len(words) == 4).decode(words)


def widen(desc: Sequence[int]) -> tuple[int, int, int, int]:
    """The 256-bit form of a 128-bit descriptor (qwords 2 and 3 reserved, zero)."""
    if len(desc) != 2:
        raise ArgumentError("descriptor", tuple(desc), "a 128-bit descriptor (two qwords)")
    return (desc[0], desc[1], 0, 0)


# --- helper constructors -------------------------------------------------------------------------
# Shifts and masks come from the layouts above (ARCHITECTURE.md: never hard-code a bit number a
# layout declares).


def _sh(layout: Layout, name: str) -> int:
    return layout.field(name).shift


def _max(layout: Layout, name: str) -> int:
    return (1 << layout.field(name).width) - 1


_G = _sh(CC_DESC, "G")  # same position (5:4 / 4) in every type that has a G field
_DID = _sh(CC_DESC, "DID")
_CC_SID = _sh(CC_DESC, "SID")
_CC_FM = _sh(CC_DESC, "FM")
_IOTLB_DW = _sh(IOTLB_DESC, "DW")
_IOTLB_DR = _sh(IOTLB_DESC, "DR")
_IH_SH = _IH.shift
_ADDR_MASK = _ADDR.mask
_PASID = _sh(PIOTLB_DESC, "PASID")
_DEV_PFSID_LO = _sh(DEVTLB_DESC, "PFSID_LO")
_DEV_PFSID_HI = _sh(DEVTLB_DESC, "PFSID_HI")
_DEV_MIP = _sh(DEVTLB_DESC, "MIP")
_DEV_SID = _sh(DEVTLB_DESC, "SID")
_DEV_S = _sh(DEVTLB_DESC, "S")
_PDEV_MIP = _sh(PDEVTLB_DESC, "MIP")
_PDEV_SID = _sh(PDEVTLB_DESC, "SID")
_PDEV_G = _sh(PDEVTLB_DESC, "G")
_PDEV_S = _sh(PDEVTLB_DESC, "S")
_IEC_IM = _sh(IEC_DESC, "IM")
_IEC_IIDX = _sh(IEC_DESC, "IIDX")
_W_IF = _sh(WAIT_DESC, "IF")
_W_SW = _sh(WAIT_DESC, "SW")
_W_FN = _sh(WAIT_DESC, "FN")
_W_PD = _sh(WAIT_DESC, "PD")
_W_SDATA = _sh(WAIT_DESC, "SDATA")
_W_SADDR_MASK = WAIT_DESC.field("SADDR").mask

_U16 = 0xFFFF
_PASID_MAX = _max(PIOTLB_DESC, "PASID")
_AM_MAX = _max(IOTLB_DESC, "AM")
_MIP_MAX = _max(DEVTLB_DESC, "MIP")


def _check(name: str, value: int, limit: int) -> int:
    if type(value) is not int or not 0 <= value <= limit:
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= limit:
            return int(value)
        raise ArgumentError(name, value, f"an integer in 0..{limit:#x}")
    return value


def _check_addr(addr: int) -> int:
    if type(addr) is not int or addr < 0 or addr > (1 << 64) - 1 or addr & 0xFFF:
        raise ArgumentError("addr", addr, "a 4 KiB-aligned 64-bit address")
    return addr


def _mip(qdep: int) -> int:
    # Linux qi_flush_dev_iotlb: "if (qdep >= QI_DEV_IOTLB_MAX_INVS) qdep = 0".
    q = _check("qdep", qdep, 0xFFFF)
    return 0 if q > _MIP_MAX else q


def _pfsid(pfsid: int) -> int:
    # PFSID[3:0] at qw0 15:12, PFSID[15:4] at qw0 63:52 (fixed macros, 4e7120d79edb).
    p = _check("pfsid", pfsid, _U16)
    return ((p & 0xF) << _DEV_PFSID_LO) | ((p >> 4) << _DEV_PFSID_HI)


def _range_addr(addr: int, size_order: int) -> tuple[int, int]:
    """ATS range encoding (Linux qi_flush_dev_iotlb): for 2^size_order pages, set the address
    bits below the range's top bit and S=1; size_order 52 is the whole device."""
    _check_addr(addr)
    o = _check("size_order", size_order, 52)
    if o == 0:
        return addr, 0
    addr |= (1 << (12 + o - 1)) - 1
    return addr & _ADDR_MASK, 1


def _range_addr_pasid(addr: int, size_order: int) -> tuple[int, int]:
    """The PASID-based form (Linux ``qi_desc_dev_iotlb_pasid`` / ``qi_flush_dev_iotlb_pasid``
    since 5.8): set address bits 12 .. 12+size_order-2 and *clear* bit 12+size_order-1, so the
    lowest zero bit names the size even for an unaligned ``addr``; S=1 when size_order > 0."""
    _check_addr(addr)
    o = _check("size_order", size_order, 52)
    if o == 0:
        return addr, 0
    a = addr | (((1 << (o - 1)) - 1) << 12)
    return a & ~(1 << (12 + o - 1)) & _ADDR_MASK, 1


def cc_global() -> tuple[int, int]:
    """Global context-cache invalidation."""
    return (DescType.CC | CcGranularity.GLOBAL << _G, 0)


def cc_domain(did: int) -> tuple[int, int]:
    """Domain-selective context-cache invalidation."""
    return (DescType.CC | CcGranularity.DOMAIN << _G | _check("did", did, _U16) << _DID, 0)


def cc_device(did: int, sid: int, fm: int = 0) -> tuple[int, int]:
    """Device-selective context-cache invalidation (Linux ``QI_CC_*``: DID, SID, FM)."""
    return (
        DescType.CC
        | CcGranularity.DEVICE << _G
        | _check("did", did, _U16) << _DID
        | _check("sid", sid, _U16) << _CC_SID
        | _check("fm", fm, 3) << _CC_FM,
        0,
    )


def _iotlb(g: int, did: int, dr: bool, dw: bool) -> int:
    return (
        DescType.IOTLB
        | g << _G
        | bool(dw) << _IOTLB_DW
        | bool(dr) << _IOTLB_DR
        | _check("did", did, _U16) << _DID
    )


def iotlb_global(dr: bool = False, dw: bool = False) -> tuple[int, int]:
    """Global IOTLB invalidation."""
    return (_iotlb(IotlbGranularity.GLOBAL, 0, dr, dw), 0)


def iotlb_dsi(did: int, dr: bool = False, dw: bool = False) -> tuple[int, int]:
    """Domain-selective IOTLB invalidation."""
    return (_iotlb(IotlbGranularity.DOMAIN, did, dr, dw), 0)


def iotlb_psi(
    did: int, addr: int, am: int = 0, ih: bool = False, dr: bool = False, dw: bool = False
) -> tuple[int, int]:
    """Page-selective IOTLB invalidation of 2^``am`` pages at ``addr``."""
    return (
        _iotlb(IotlbGranularity.PAGE, did, dr, dw),
        _check_addr(addr) | _check("am", am, _AM_MAX) | bool(ih) << _IH_SH,
    )


def devtlb(
    sid: int, addr: int = 0, size_order: int = 0, pfsid: int = 0, qdep: int = 0
) -> tuple[int, int]:
    """Device-TLB invalidation of 2^``size_order`` pages at ``addr`` (52: whole device, qw1 =
    0x7ffffffffffff001), Linux ``qi_flush_dev_iotlb``."""
    a, s = _range_addr(addr, size_order)
    return (
        DescType.DEVTLB
        | _check("sid", sid, _U16) << _DEV_SID
        | _mip(qdep) << _DEV_MIP
        | _pfsid(pfsid),
        a | s << _DEV_S,
    )


def iec_global() -> tuple[int, int]:
    """Global interrupt-entry-cache invalidation."""
    return (DescType.IEC | IecGranularity.GLOBAL << _G, 0)


def iec_index(iidx: int, im: int = 0) -> tuple[int, int]:
    """Index-selective interrupt-entry-cache invalidation of 2^``im`` entries."""
    return (
        DescType.IEC
        | IecGranularity.INDEX << _G
        | _check("im", im, 0x1F) << _IEC_IM
        | _check("iidx", iidx, _U16) << _IEC_IIDX,
        0,
    )


def wait(
    status_addr: int | None = None,
    status_data: int = QI_DONE,
    *,
    interrupt: bool = False,
    fence: bool = False,
    page_drain: bool = False,
) -> tuple[int, int]:
    """Invalidation wait: with ``status_addr``, SW=1 writes ``status_data`` (32-bit) there."""
    qw0 = (
        DescType.WAIT | bool(interrupt) << _W_IF | bool(fence) << _W_FN | bool(page_drain) << _W_PD
    )
    if status_addr is None:
        return (qw0, 0)
    if type(status_addr) is not int or status_addr & ~_W_SADDR_MASK:
        raise ArgumentError("status_addr", status_addr, "a dword-aligned 64-bit address")
    return (
        qw0 | 1 << _W_SW | _check("status_data", status_data, 0xFFFF_FFFF) << _W_SDATA,
        status_addr,
    )


def piotlb_pasid(did: int, pasid: int) -> tuple[int, int]:
    """PASID-based IOTLB invalidation of every non-global mapping of ``pasid``."""
    return (
        DescType.PIOTLB
        | PiotlbGranularity.PASID << _G
        | _check("did", did, _U16) << _DID
        | _check("pasid", pasid, _PASID_MAX) << _PASID,
        0,
    )


def piotlb_psi(did: int, pasid: int, addr: int, am: int = 0, ih: bool = False) -> tuple[int, int]:
    """PASID-based page-selective IOTLB invalidation of 2^``am`` pages at ``addr``."""
    return (
        DescType.PIOTLB
        | PiotlbGranularity.PAGE << _G
        | _check("did", did, _U16) << _DID
        | _check("pasid", pasid, _PASID_MAX) << _PASID,
        _check_addr(addr) | _check("am", am, _AM_MAX) | bool(ih) << _IH_SH,
    )


def pc_domain(did: int) -> tuple[int, int]:
    """PASID-cache invalidation of every PASID of domain ``did``."""
    return (
        DescType.PASID_CACHE
        | PasidCacheGranularity.DOMAIN << _G
        | _check("did", did, _U16) << _DID,
        0,
    )


def pc_pasid(did: int, pasid: int) -> tuple[int, int]:
    """PASID-selective PASID-cache invalidation (Linux 5.1 ``QI_PC_PASID_SEL``: low byte
    0x17)."""
    return (
        DescType.PASID_CACHE
        | PasidCacheGranularity.PASID << _G
        | _check("did", did, _U16) << _DID
        | _check("pasid", pasid, _PASID_MAX) << _PASID,
        0,
    )


def pc_global() -> tuple[int, int]:
    """Global PASID-cache invalidation."""
    return (DescType.PASID_CACHE | PasidCacheGranularity.GLOBAL << _G, 0)


def pdevtlb(
    sid: int,
    pasid: int,
    addr: int = 0,
    size_order: int = 0,
    pfsid: int = 0,
    qdep: int = 0,
    glob: bool = False,
) -> tuple[int, int]:
    """PASID-based device-TLB invalidation (Linux ``qi_flush_dev_iotlb_pasid``)."""
    a, s = _range_addr_pasid(addr, size_order)
    return (
        DescType.PDEVTLB
        | _mip(qdep) << _PDEV_MIP
        | _check("sid", sid, _U16) << _PDEV_SID
        | _check("pasid", pasid, _PASID_MAX) << _PASID
        | _pfsid(pfsid),
        a | s << _PDEV_S | bool(glob) << _PDEV_G,
    )
