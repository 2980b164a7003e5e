"""Translation-structure entries, declared once as data.

Sources (facts only): VT-d specification rev 4.1 §9.1-§9.9 (root, context, PASID directory,
PASID table, first- and second-stage paging entries); Linux ``drivers/iommu/intel/pasid.h``
(every ``pasid_set_*`` accessor names the absolute bits we declare here) and ``iommu.h``
(``dma_pte``, ``context_entry``, ``root_entry``); QEMU ``hw/i386/intel_iommu_internal.h``
(reserved-bit masks); OpenVMM ``intel_vtd/src/spec/scalable.rs`` (4.1 reserved masks).

Bit numbers are absolute within the structure (bit 87 = qword 1, bit 23), lowest first.
Every bit not declared is reserved and must be zero.
"""

from __future__ import annotations

from vtdsim.spec.bits import Field, Layout

__all__ = [
    "CONTEXT_ENTRY_LEGACY",
    "CONTEXT_ENTRY_SM",
    "FL_PDE_2M",
    "FL_PDPE_1G",
    "FL_PTE_4K",
    "FL_TABLE",
    "PASID_DIR_ENTRY",
    "PASID_ENTRY",
    "PGTT",
    "ROOT_ENTRY_LEGACY",
    "ROOT_ENTRY_SM",
    "SL_PDE_2M",
    "SL_PDPE_1G",
    "SL_PTE_4K",
    "SL_TABLE",
    "TT_LEGACY",
]

#: PASID-granular translation type (PASID entry bits 8:6), VT-d 4.1 §9.6.
PGTT = {1: "first-level", 2: "second-level", 3: "nested", 4: "pass-through"}
#: Legacy context-entry translation type (bits 3:2), VT-d 4.1 §9.3.
TT_LEGACY = {0: "untranslated", 1: "all-with-devtlb", 2: "pass-through"}

# --- Root entries (VT-d §9.1, §9.2) --------------------------------------------------------------

ROOT_ENTRY_LEGACY = Layout(
    "RootEntryLegacy",
    2,
    [
        Field("P", 0, 0, "present"),
        Field("CTP", 12, 63, "context-table pointer", kind="address"),
        # bits 127:64 reserved
    ],
    "Legacy-mode root entry (128-bit), indexed by bus number.",
)

ROOT_ENTRY_SM = Layout(
    "RootEntrySM",
    2,
    [
        Field("LP", 0, 0, "lower present: context table for devfn 0x00-0x7f"),
        Field("LCTP", 12, 63, "lower context-table pointer", kind="address"),
        Field("UP", 64, 64, "upper present: context table for devfn 0x80-0xff"),
        Field("UCTP", 76, 127, "upper context-table pointer", kind="address"),
    ],
    "Scalable-mode root entry (128-bit), indexed by bus number; each half points to a "
    "128-entry table of 32-byte context entries (Linux iommu_context_addr).",
)

# --- Context entries (VT-d §9.3, §9.4) -----------------------------------------------------------

CONTEXT_ENTRY_LEGACY = Layout(
    "ContextEntryLegacy",
    2,
    [
        Field("P", 0, 0, "present"),
        Field("FPD", 1, 1, "fault processing disable"),
        Field("TT", 2, 3, "translation type", enum=TT_LEGACY),
        Field("SLPTPTR", 12, 63, "second-level page-table pointer", kind="address"),
        Field("AW", 64, 66, "address width: levels = AW + 2"),
        Field("IGN", 67, 70, "ignored", kind="ignored"),
        Field("DID", 72, 87, "domain identifier"),
    ],
    "Legacy-mode context entry (128-bit), 256 per table, indexed by devfn.",
)

CONTEXT_ENTRY_SM = Layout(
    "ContextEntrySM",
    4,
    [
        Field("P", 0, 0, "present"),
        Field("FPD", 1, 1, "fault processing disable"),
        Field("DTE", 2, 2, "device-TLB enable (ATS)"),
        Field("PASIDE", 3, 3, "PASID enable: requests with a PASID are allowed"),
        Field("PRE", 4, 4, "page request enable"),
        Field("PDTS", 9, 11, "PASID directory size: 2^(PDTS+7) entries"),
        Field("PASIDDIRPTR", 12, 63, "PASID directory pointer", kind="address"),
        Field("RID_PASID", 64, 83, "PASID used for requests without a PASID"),
        Field("RID_PRIV", 84, 84, "privilege of requests without a PASID"),
        # bits 255:85 reserved
    ],
    "Scalable-mode context entry (256-bit), 128 per table, indexed by devfn & 0x7f.",
)

# --- PASID directory and table entries (VT-d §9.5, §9.6) -----------------------------------------

PASID_DIR_ENTRY = Layout(
    "PasidDirEntry",
    1,
    [
        Field("P", 0, 0, "present"),
        Field("FPD", 1, 1, "fault processing disable"),
        Field("SMPTBLPTR", 12, 63, "PASID table pointer", kind="address"),
    ],
    "Scalable-mode PASID directory entry (64-bit), indexed by PASID[19:6].",
)

PASID_ENTRY = Layout(
    "PasidEntry",
    8,
    [
        # qword 0 -- Linux pasid_set_present / pasid_set_fault_enable / _address_width /
        # pasid_set_translation_type / pasid_set_ssade / pasid_set_slptr
        Field("P", 0, 0, "present"),
        Field("FPD", 1, 1, "fault processing disable"),
        Field("AW", 2, 4, "second-stage address width: levels = AW + 2"),
        Field("PGTT", 6, 8, "PASID-granular translation type", enum=PGTT),
        Field("SSADE", 9, 9, "second-stage accessed/dirty enable (SLADE in VT-d 3.x)"),
        Field("SLPTPTR", 12, 63, "second-stage page-table pointer", kind="address"),
        # qword 1 -- pasid_set_domain_id (bits 79:64), pasid_set_pwsnp (87),
        # pasid_set_pgsnp (88)
        Field("DID", 64, 79, "domain identifier"),
        Field("PWSNP", 87, 87, "page-walk snoop"),
        Field("PGSNP", 88, 88, "page snoop"),
        Field("CD", 89, 89, "cache disable"),
        Field("EMTE", 90, 90, "extended memory type enable"),
        Field("PAT", 96, 127, "page attribute table"),
        # qword 2 -- pasid_set_sre (128), pasid_set_flpm (131:130), pasid_set_wpe (132),
        # pasid_set_eafe (135), pasid_set_flptr (191:140)
        Field("SRE", 128, 128, "supervisor request enable"),
        Field("FLPM", 130, 131, "first-stage paging mode: 0 = 4-level, 1 = 5-level"),
        Field("WPE", 132, 132, "write protect enable"),
        # bits 134:133 were NXE/SMEP in VT-d 3.x; 4.1 makes them ignored (§9.6)
        Field("IGN_134_133", 133, 134, "ignored (NXE/SMEP in VT-d 3.x)", kind="ignored"),
        Field("EAFE", 135, 135, "extended accessed flag enable"),
        Field("FLPTPTR", 140, 191, "first-stage page-table pointer", kind="address"),
        # qwords 3-7 reserved
    ],
    "Scalable-mode PASID table entry (512-bit), 64 per 4 KiB table, indexed by PASID[5:0].",
)

# --- Second-stage paging entries (VT-d §9.8; EPT-like) -------------------------------------------

_SL_COMMON = [
    Field("R", 0, 0, "read"),
    Field("W", 1, 1, "write"),
    Field("X", 2, 2, "execute (ignored for DMA in VT-d 4.x)"),
]
_SL_LEAF_ATTR = [
    Field("EMT", 3, 5, "extended memory type"),
    Field("IPAT", 6, 6, "ignore PAT"),
    Field("PS", 7, 7, "page size: 1 = leaf at level 2 or 3"),
    Field("A", 8, 8, "accessed (with SSADE)"),
    Field("D", 9, 9, "dirty (with SSADE)"),
    Field("IGN_10", 10, 10, "ignored", kind="ignored"),
    Field("SNP", 11, 11, "snoop"),
    Field("IGN_61_52", 52, 61, "ignored", kind="ignored"),
    # bit 62 was TM (transient mapping) in VT-d 3.x and is reserved in 4.1
    Field("IGN_63", 63, 63, "ignored", kind="ignored"),
]

SL_TABLE = Layout(
    "SlTableEntry",
    1,
    [
        *_SL_COMMON,
        Field("IGN_6_3", 3, 6, "ignored", kind="ignored"),
        Field("PS", 7, 7, "page size (0 for a table pointer)"),
        Field("A", 8, 8, "accessed (with SSADE)"),
        Field("IGN_10_9", 9, 10, "ignored", kind="ignored"),
        # bit 11 (SNP in a leaf) is reserved in a table pointer: QEMU
        # VTD_SPTE_PAGE_L{2,3,4}_RSVD_MASK all contain 0x800, and vtd_init clears SNP only from
        # the leaf masks (vtd_spte_rsvd[1], vtd_spte_rsvd_large[2..3]).
        Field("ADDR", 12, 51, "next-level table address", kind="address"),
        Field("IGN_61_52", 52, 61, "ignored", kind="ignored"),
        Field("IGN_63", 63, 63, "ignored", kind="ignored"),
    ],
    "Second-stage non-leaf entry (PML5E/PML4E/PDPE/PDE pointing to a table); bit 11 and bit 62 "
    "reserved.",
)
SL_PTE_4K = Layout(
    "SlPte4K",
    1,
    [*_SL_COMMON, *_SL_LEAF_ATTR, Field("ADDR", 12, 51, "4 KiB page address", kind="address")],
    "Second-stage 4 KiB leaf (level-1 PTE). Bit 7 is ignored at level 1 by hardware.",
)
SL_PDE_2M = Layout(
    "SlPde2M",
    1,
    [*_SL_COMMON, *_SL_LEAF_ATTR, Field("ADDR", 21, 51, "2 MiB page address", kind="address")],
    "Second-stage 2 MiB leaf (level-2 PDE with PS=1); bits 20:12 reserved.",
)
SL_PDPE_1G = Layout(
    "SlPdpe1G",
    1,
    [*_SL_COMMON, *_SL_LEAF_ATTR, Field("ADDR", 30, 51, "1 GiB page address", kind="address")],
    "Second-stage 1 GiB leaf (level-3 PDPE with PS=1); bits 29:12 reserved.",
)

# --- First-stage paging entries (VT-d §9.7; IA-32e paging) ----------------------------------------

_FL_COMMON = [
    Field("P", 0, 0, "present"),
    Field("RW", 1, 1, "read/write"),
    Field("US", 2, 2, "user/supervisor"),
    Field("PWT", 3, 3, "page-level write-through"),
    Field("PCD", 4, 4, "page-level cache disable"),
    Field("A", 5, 5, "accessed"),
]
_FL_LEAF = [
    Field("D", 6, 6, "dirty"),
    Field("G", 8, 8, "global"),
    Field("IGN_9", 9, 9, "ignored", kind="ignored"),
    Field("EA", 10, 10, "extended accessed (with EAFE)"),
    Field("IGN_11", 11, 11, "ignored", kind="ignored"),
    Field("IGN_62_52", 52, 62, "ignored", kind="ignored"),
    Field("XD", 63, 63, "execute disable"),
]

FL_TABLE = Layout(
    "FlTableEntry",
    1,
    [
        *_FL_COMMON,
        Field("IGN_6", 6, 6, "ignored", kind="ignored"),
        Field("PS", 7, 7, "page size (0 for a table pointer)"),
        Field("IGN_9_8", 8, 9, "ignored", kind="ignored"),
        Field("EA", 10, 10, "extended accessed (with EAFE)"),
        Field("IGN_11", 11, 11, "ignored", kind="ignored"),
        Field("ADDR", 12, 51, "next-level table address", kind="address"),
        Field("IGN_62_52", 52, 62, "ignored", kind="ignored"),
        Field("XD", 63, 63, "execute disable"),
    ],
    "First-stage non-leaf entry (PML5E/PML4E/PDPE/PDE pointing to a table).",
)
FL_PTE_4K = Layout(
    "FlPte4K",
    1,
    [
        *_FL_COMMON,
        *_FL_LEAF,
        Field("PAT", 7, 7, "page attribute table index"),
        Field("ADDR", 12, 51, "4 KiB page address", kind="address"),
    ],
    "First-stage 4 KiB leaf (level-1 PTE).",
)
FL_PDE_2M = Layout(
    "FlPde2M",
    1,
    [
        *_FL_COMMON,
        *_FL_LEAF,
        Field("PS", 7, 7, "page size (1)"),
        Field("PAT", 12, 12, "page attribute table index"),
        Field("ADDR", 21, 51, "2 MiB page address", kind="address"),
    ],
    "First-stage 2 MiB leaf (PDE with PS=1); bits 20:13 reserved.",
)
FL_PDPE_1G = Layout(
    "FlPdpe1G",
    1,
    [
        *_FL_COMMON,
        *_FL_LEAF,
        Field("PS", 7, 7, "page size (1)"),
        Field("PAT", 12, 12, "page attribute table index"),
        Field("ADDR", 30, 51, "1 GiB page address", kind="address"),
    ],
    "First-stage 1 GiB leaf (PDPE with PS=1); bits 29:13 reserved.",
)
