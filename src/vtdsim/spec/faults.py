"""DMA-remapping fault reason codes, declared once as data.

Sources (facts only):

* Linux ``drivers/iommu/intel/dmar.c``: ``dma_remap_fault_reasons[]`` (legacy codes 0x0-0xD,
  index = code) and ``dma_remap_sm_fault_reasons[]`` (scalable-mode codes, index = code - 0x30);
  ``dmar_get_fault_reason`` prints "Unknown" for every code outside those tables.  ``text`` is
  Linux's message verbatim, so the model's fault log reads like ``dmesg``.
* QEMU ``hw/i386/intel_iommu_internal.h`` ``enum VTDFaultReason``: the ``VTD_FR_*`` short names,
  used here (without the prefix) wherever QEMU has one; QEMU comments cite the spec condition
  codes (e.g. 0x47 "SCT.8", 0x80 "SNG.1", 0x91 "SFS.10", interrupt range "LGN.4 / SGN.8").
  Names QEMU lacks are made up in the same style and marked ``qemu=False``.
* QEMU ``intel_iommu.c`` ``vtd_qualified_faults[]``: which faults are *qualified*, i.e. not
  recorded when a Fault Processing Disable (FPD) bit applies (VT-d spec 7.1.3).  Root-table,
  context-table, PASID-directory and PASID-table access errors and root/context/PASID-structure
  reserved-field errors are unqualified; everything found in or after a context entry is
  qualified.

Where QEMU and Linux disagree we follow Linux (which follows the spec's numbering):

* 0x73: QEMU ``VTD_FR_PASID_ENTRY_FSPTPTR_INV``; Linux "Error attempting to access FL-PML4
  entry".  The model raises 0x73 when reading the top first-level table fails.
* 0x90 / 0x91: Linux knows 0x90 (A/D update needed in a first-level entry set up in no-snoop);
  QEMU added 0x91 ``FS_BIT_UPDATE_FAILED`` (SFS.10, VT-d 4.x) which Linux prints as "Unknown".
  Both are listed; the model raises 0x91 when an A/D write-back fails.
* 0x0E: QEMU ``VTD_FR_INTERRUPT_ADDR`` (legacy LGN.4); Linux's legacy table stops at 0xD, so
  its text is "Unknown".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from vtdsim.errors import ArgumentError
from vtdsim.spec.bits import Field, Layout

__all__ = [
    "FAULT_REASONS",
    "FAULT_RECORD",
    "FaultReason",
    "fault_reason",
    "is_qualified",
    "reason_name",
    "reason_text",
]

Mode = Literal["legacy", "scalable"]


@dataclass(frozen=True, slots=True)
class FaultReason:
    """One fault reason: ``code`` (FRCD.FR), QEMU-style ``name``, Linux ``text``."""

    code: int
    name: str
    text: str
    mode: Mode
    qualified: bool
    #: True when ``name`` is QEMU's ``VTD_FR_<name>``; False when made up in its style.
    qemu: bool = False


def _r(
    code: int, name: str, text: str, mode: Mode, qualified: bool, qemu: bool = False
) -> FaultReason:
    return FaultReason(code, name, text, mode, qualified, qemu)


_L: Mode = "legacy"
_S: Mode = "scalable"

_REASONS: tuple[FaultReason, ...] = (
    # --- legacy mode: dmar.c dma_remap_fault_reasons[]; QEMU VTDFaultReason 0x1-0xE ----------
    _r(0x01, "ROOT_ENTRY_P", "Present bit in root entry is clear", _L, False, True),
    _r(0x02, "CONTEXT_ENTRY_P", "Present bit in context entry is clear", _L, True, True),
    _r(0x03, "CONTEXT_ENTRY_INV", "Invalid context entry", _L, True, True),
    _r(0x04, "ADDR_BEYOND_MGAW", "Access beyond MGAW", _L, True, True),
    _r(0x05, "WRITE", "PTE Write access is not set", _L, True, True),
    _r(0x06, "READ", "PTE Read access is not set", _L, True, True),
    _r(0x07, "PAGING_ENTRY_INV", "Next page table ptr is invalid", _L, True, True),
    _r(0x08, "ROOT_TABLE_INV", "Root table address invalid", _L, False, True),
    _r(0x09, "CONTEXT_TABLE_INV", "Context table ptr is invalid", _L, False, True),
    _r(0x0A, "ROOT_ENTRY_RSVD", "non-zero reserved fields in RTP", _L, False, True),
    _r(0x0B, "CONTEXT_ENTRY_RSVD", "non-zero reserved fields in CTP", _L, False, True),
    _r(0x0C, "PAGING_ENTRY_RSVD", "non-zero reserved fields in PTE", _L, True, True),
    _r(0x0D, "CONTEXT_ENTRY_TT", "PCE for translation request specifies blocking", _L, True, True),
    _r(0x0E, "INTERRUPT_ADDR", "Unknown", _L, True, True),
    # --- scalable mode: dmar.c dma_remap_sm_fault_reasons[] ----------------------------------
    _r(0x30, "SM_RTADDR_INV", "SM: Invalid Root Table Address", _S, False),
    _r(0x31, "RTADDR_INV_TTM", "SM: TTM 0 for request with PASID", _S, False, True),
    _r(0x32, "SM_TTM0_PAGE_GROUP", "SM: TTM 0 for page group request", _S, False),
    _r(0x38, "SM_ROOT_ACCESS_ERR", "SM: Error attempting to access Root Entry", _S, False),
    _r(0x39, "SM_ROOT_ENTRY_P", "SM: Present bit in Root Entry is clear", _S, False),
    _r(0x3A, "SM_ROOT_ENTRY_RSVD", "SM: Non-zero reserved field set in Root Entry", _S, False),
    _r(0x40, "SM_CONTEXT_ACCESS_ERR", "SM: Error attempting to access Context Entry", _S, False),
    _r(0x41, "SM_CONTEXT_ENTRY_P", "SM: Present bit in Context Entry is clear", _S, True),
    _r(
        0x42,
        "SM_CONTEXT_ENTRY_RSVD",
        "SM: Non-zero reserved field set in the Context Entry",
        _S,
        False,
    ),
    _r(0x43, "SM_CONTEXT_ENTRY_INV", "SM: Invalid Context Entry", _S, True),
    _r(0x44, "SM_DTE_CLEAR", "SM: DTE field in Context Entry is clear", _S, True),
    _r(0x45, "SM_PASIDE_CLEAR", "SM: PASID Enable field in Context Entry is clear", _S, True),
    _r(0x46, "SM_PASID_TOO_LARGE", "SM: PASID is larger than the max in Context Entry", _S, True),
    _r(0x47, "SM_PRE_ABS", "SM: PRE field in Context-Entry is clear", _S, True, True),
    _r(0x48, "SM_RID_PASID_ERR", "SM: RID_PASID field error in Context-Entry", _S, True),
    _r(
        0x50,
        "PASID_DIR_ACCESS_ERR",
        "SM: Error attempting to access the PASID Directory Entry",
        _S,
        False,
        True,
    ),
    _r(0x51, "PASID_DIR_ENTRY_P", "SM: Present bit in Directory Entry is clear", _S, True, True),
    _r(
        0x52,
        "PASID_DIR_ENTRY_RSVD",
        "SM: Non-zero reserved field set in PASID Directory Entry",
        _S,
        False,
    ),
    _r(
        0x58,
        "PASID_TABLE_ACCESS_ERR",
        "SM: Error attempting to access PASID Table Entry",
        _S,
        False,
        True,
    ),
    _r(0x59, "PASID_ENTRY_P", "SM: Present bit in PASID Table Entry is clear", _S, True, True),
    _r(
        0x5A,
        "PASID_ENTRY_RSVD",
        "SM: Non-zero reserved field set in PASID Table Entry",
        _S,
        False,
    ),
    _r(
        0x5B,
        "PASID_TABLE_ENTRY_INV",
        "SM: Invalid Scalable-Mode PASID Table Entry",
        _S,
        True,
        True,
    ),
    _r(0x5C, "PASID_ENTRY_ERE", "SM: ERE field is clear in PASID Table Entry", _S, True),
    _r(0x5D, "PASID_ENTRY_SRE", "SM: SRE field is clear in PASID Table Entry", _S, True),
    _r(
        0x70,
        "FS_PAGING_ENTRY_INV",
        "SM: Error attempting to access first-level paging entry",
        _S,
        True,
        True,
    ),
    _r(
        0x71,
        "FS_PAGING_ENTRY_P",
        "SM: Present bit in first-level paging entry is clear",
        _S,
        True,
        True,
    ),
    _r(
        0x72,
        "FS_PAGING_ENTRY_RSVD",
        "SM: Non-zero reserved field set in first-level paging entry",
        _S,
        True,
        True,
    ),
    _r(
        0x73,
        "PASID_ENTRY_FSPTPTR_INV",
        "SM: Error attempting to access FL-PML4 entry",
        _S,
        True,
        True,
    ),
    _r(
        0x74,
        "NESTED_FS_ADDR_BEYOND_MGAW",
        "SM: First-level entry address beyond MGAW in Nested translation",
        _S,
        True,
    ),
    _r(
        0x75,
        "NESTED_FS_TOP_READ",
        "SM: Read permission error in FL-PML4 entry in Nested translation",
        _S,
        True,
    ),
    _r(
        0x76,
        "NESTED_FS_READ",
        "SM: Read permission error in first-level paging entry in Nested translation",
        _S,
        True,
    ),
    _r(
        0x77,
        "NESTED_FS_WRITE",
        "SM: Write permission error in first-level paging entry in Nested translation",
        _S,
        True,
    ),
    _r(
        0x78,
        "SS_PAGING_ACCESS_ERR",
        "SM: Error attempting to access second-level paging entry",
        _S,
        True,
    ),
    _r(
        0x79,
        "SS_PAGING_ENTRY_RW",
        "SM: Read/Write permission error in second-level paging entry",
        _S,
        True,
    ),
    _r(
        0x7A,
        "SS_PAGING_ENTRY_RSVD",
        "SM: Non-zero reserved field set in second-level paging entry",
        _S,
        True,
    ),
    _r(0x7B, "SS_SLPTPTR_INV", "SM: Invalid second-level page table pointer", _S, True),
    _r(
        0x7C,
        "SS_AD_NO_SNOOP",
        "SM: A/D bit update needed in second-level entry when set up in no snoop",
        _S,
        True,
    ),
    _r(
        0x80,
        "FS_NON_CANONICAL",
        "SM: Address in first-level translation is not canonical",
        _S,
        True,
        True,
    ),
    _r(
        0x81,
        "FS_PAGING_ENTRY_US",
        "SM: U/S set 0 for first-level translation with user privilege",
        _S,
        True,
        True,
    ),
    _r(
        0x82,
        "SM_NO_EXECUTE",
        "SM: No execute permission for request with PASID and ER=1",
        _S,
        True,
    ),
    _r(0x83, "SM_ADDR_BEYOND_MAX", "SM: Address beyond the DMA hardware max", _S, True),
    _r(0x84, "SS_ENTRY_ADDR_BEYOND_MAX", "SM: Second-level entry address beyond the max", _S, True),
    _r(0x85, "SM_WRITE", "SM: No write permission for Write/AtomicOp request", _S, True, True),
    _r(0x86, "SM_READ", "SM: No read permission for Read/AtomicOp request", _S, True),
    _r(0x87, "SM_INTERRUPT_ADDR", "SM: Invalid address-interrupt address", _S, True, True),
    _r(
        0x90,
        "FS_AD_NO_SNOOP",
        "SM: A/D bit update needed in first-level entry when set up in no snoop",
        _S,
        True,
    ),
    _r(0x91, "FS_BIT_UPDATE_FAILED", "Unknown", _S, True, True),
)

#: code -> :class:`FaultReason`
FAULT_REASONS: dict[int, FaultReason] = {r.code: r for r in _REASONS}
_BY_NAME: dict[str, FaultReason] = {r.name: r for r in _REASONS}

#: Primary fault recording register (128-bit), VT-d spec 11.4.14; Linux dmar.c dmar_fault
#: (dma_frcd_* accessors on the dwords at +8 and +12: SID 79:64, PP 95, FR 103:96, PV 123:104,
#: T 126, F 127), the reference's 3.1 (its bit numbers are within the high qword), VirtualBox
#: iommu-intel.h VTD_BF_1_FRCD_REG_* (T2 at 92, PRIV 93, EXE 94).
FAULT_RECORD = Layout(
    "FaultRecord",
    2,
    [
        Field("FI", 12, 63, "fault information: faulting page address", kind="address"),
        Field("SID", 64, 79, "source identifier"),
        Field("T2", 92, 92, "type bit 2 (with T1: 00 write, 10 read; 0 for DMA requests)"),
        Field("PRIV", 93, 93, "privilege mode requested"),
        Field("EXE", 94, 94, "execute permission requested"),
        Field("PP", 95, 95, "PASID present"),
        Field("FR", 96, 103, "fault reason"),
        Field("PV", 104, 123, "PASID value"),
        Field("AT", 124, 125, "address type"),
        # Linux dmar.c dmar_fault: dma_frcd_type() = bit 30 of the dword at +12 = bit 126,
        # printed as "DMA Read" when 1; QEMU vtd_record_frcd VTD_FRCD_T (hi bit 62) for reads.
        Field("T", 126, 126, "type (T1): 1 = read, 0 = write"),
        Field("F", 127, 127, "fault (write 1 to clear)"),
    ],
    "Primary fault recording register (128-bit).",
)


def fault_reason(code: int | str) -> FaultReason:
    """The :class:`FaultReason` for a code (or a short name such as ``"PASID_DIR_ENTRY_P"``)."""
    if isinstance(code, str):
        r = _BY_NAME.get(code.removeprefix("VTD_FR_"))
        if r is None:
            raise ArgumentError("fault reason name", code, "a VTD_FR_* short name")
        return r
    r = FAULT_REASONS.get(code)
    if r is None:
        raise ArgumentError("fault reason", code, "a known VT-d fault reason code")
    return r


def reason_name(code: int) -> str:
    """Short name of ``code`` (``"UNKNOWN_0x.."`` for codes the model does not know)."""
    r = FAULT_REASONS.get(code)
    return r.name if r is not None else f"UNKNOWN_{code:#04x}"


def reason_text(code: int) -> str:
    """Linux's message for ``code`` (dmar.c ``dmar_get_fault_reason``: "Unknown" otherwise)."""
    r = FAULT_REASONS.get(code)
    return r.text if r is not None else "Unknown"


def is_qualified(code: int) -> bool:
    """Whether an applicable FPD suppresses recording of ``code`` (QEMU vtd_qualified_faults)."""
    r = FAULT_REASONS.get(code)
    return r.qualified if r is not None else False
