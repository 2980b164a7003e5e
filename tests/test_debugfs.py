"""Linux debugfs formats from hand-built tables (formats: Linux debugfs.c, gregkh 0f7f342)."""

from __future__ import annotations

import pytest

from vtd_tables import ROOT, RTADDR_SM, Builder, sample
from vtdsim.errors import ScenarioError
from vtdsim.scenario.debugfs import (
    StaticRegisters,
    dmar_translation_struct,
    domain_translation_struct,
    invalidation_queue,
)
from vtdsim.spec.entries import CONTEXT_ENTRY_SM, ROOT_ENTRY_SM


def test_dmar_translation_struct_lines_match_linux_format() -> None:
    b, n = sample()
    text = dmar_translation_struct(b.memory, [StaticRegisters("dmar0", RTADDR_SM)])
    lines = text.split("\n")
    assert lines[0] == "IOMMU dmar0: Root Table Address: 0x1000"
    assert lines[1] == "B.D.F\tRoot_entry\t\t\t\tContext_entry\t\t\t\tPASID\tPASID_table_entry"
    rows = [line for line in lines[2:] if line]
    # one row per present PASID entry: 00:02.0 has PASIDs 0, 1, 2; 00:03.0 has 0
    assert [r.split("\t")[0] for r in rows] == ["00:02.0"] * 3 + ["00:03.0"]
    assert [r.split("\t")[3].strip() for r in rows] == ["0", "1", "2", "0"]
    root_lo = b.memory.read64(ROOT)
    ctx = b.memory.read_qwords(b.ctx_tables[(0, 0)] + 32 * 0x10, 2)
    pe = b.memory.read_qwords(b.pasid_tables[(n["gpu"], 0)] + 64, 3)
    assert rows[1] == (
        f"00:02.0\t0x{0:016x}:0x{root_lo:016x}\t0x{ctx[1]:016x}:0x{ctx[0]:016x}\t"
        f"1     \t0x{pe[2]:016x}:0x{pe[1]:016x}:0x{pe[0]:016x}"
    )
    # %-6d pads the PASID to six characters
    assert rows[0].split("\t")[3] == "0     "
    assert text.endswith("\n\n")


def test_dmar_translation_struct_disabled_unit_and_legacy_mode() -> None:
    b, _ = sample()
    off = StaticRegisters("dmar1", RTADDR_SM, gsts=0)
    assert dmar_translation_struct(b.memory, [off]) == "DMA Remapping is not enabled on dmar1\n"
    # legacy mode: the same root table read with TTM=00 prints PASID -1 and zeros
    legacy = StaticRegisters("dmar0", ROOT)
    rows = [r for r in dmar_translation_struct(b.memory, [legacy]).split("\n")[2:] if r]
    assert rows and all(r.endswith(f"-1    \t0x{0:016x}:0x{0:016x}:0x{0:016x}") for r in rows)


def test_bus_walk_stops_at_first_devfn_without_present_root_half() -> None:
    # Linux ctx_tbl_walk returns when iommu_context_addr() is NULL: a device in the upper half
    # of a bus whose lower half is not present is never printed.
    b = Builder()
    b.memory.zero_page(ROOT)
    sid = 0x0080  # 00:10.0, upper half
    b.context(sid)
    pgd = b.page()
    b.pasid_entry(sid, 0, pgd)
    regs = StaticRegisters("dmar0", RTADDR_SM)
    text = dmar_translation_struct(b.memory, [regs])
    assert "00:10.0" not in text
    # with the lower half present (empty table), the upper device appears
    lower = b.page()
    lo, hi = b.memory.read_qwords(ROOT, 2)
    b.write(ROOT, ROOT_ENTRY_SM.replace((lo, hi), LP=1, LCTP=lower))
    assert "00:10.0\t" in dmar_translation_struct(b.memory, [regs])


def test_domain_translation_struct_rows() -> None:
    b, n = sample()
    regs = [StaticRegisters("dmar0", RTADDR_SM)]
    text = domain_translation_struct(b.memory, regs)
    blocks = [blk for blk in text.split("\n\n") if blk]
    assert [blk.split("\n")[0] for blk in blocks] == [
        f"Device 0000:00:02.0 with pasid 0 @0x{n['rid']:x}",
        f"Device 0000:00:03.0 with pasid 0 @0x{n['nic_dom']:x}",
    ]
    header = "IOVA_PFN\t\tPML5E\t\t\tPML4E\t\t\tPDPE\t\t\tPDE\t\t\tPTE"
    assert all(blk.split("\n")[1] == header for blk in blocks)
    row = blocks[1].split("\n")[2]
    pfn, rest = row.split(" |\t")
    assert pfn == "0x00000000fffe4"
    cols = rest.split("\t")
    assert cols[0] == "0x" + "0" * 16  # PML5E unused with 4 levels
    assert cols[4] == "0x0000000000500003"  # the PTE
    full = domain_translation_struct(b.memory, regs, all_pasids=True)
    assert f"Device 0000:00:02.0 with pasid 2 @0x{n['vm2']:x}" in full
    # a 2 MiB superpage: row at the PDE, PTE column 0
    sp = [r for r in full.split("\n") if r.startswith("0x0000000040000 |")]
    assert len(sp) == 1 and sp[0].endswith("\t0x0000000000600083\t0x0000000000000000")


def test_hostile_tables_give_typed_errors() -> None:
    b, n = sample()
    regs = [StaticRegisters("dmar0", RTADDR_SM)]
    # a PTE pointing back at the PML4 (a loop)
    b.memory.write64(n["vm1"] + 8 * 5, n["vm1"] | 3)
    with pytest.raises(ScenarioError, match="reached twice"):
        domain_translation_struct(b.memory, regs, all_pasids=True)
    # a context entry whose PASID directory lies beyond memory
    b2, _ = sample()
    caddr = b2.ctx_tables[(0, 0)] + 32 * 0x10
    b2.write(caddr, CONTEXT_ENTRY_SM.encode(P=1, PASIDE=1, PASIDDIRPTR=1 << 40))
    with pytest.raises(ScenarioError, match="beyond the end of physical memory"):
        dmar_translation_struct(b2.memory, regs)


def test_invalidation_queue_format_and_status_via_wait_descriptors() -> None:
    b = Builder()
    base = 0x40000
    status = 0x50000
    # slot 0: a PASID-cache descriptor, slot 1: a wait descriptor pointing at desc_status[1]
    b.memory.write_qwords(base, (0x17, 0, 0, 0))
    b.memory.write_qwords(base + 32, (0x2 << 32 | 0x25, status + 4, 0, 0))
    b.memory.write32(status + 4, 2)  # QI_DONE written by the wait descriptor
    b.memory.write32(status, 2)
    regs = StaticRegisters("dmar0", RTADDR_SM, iqa=base | 1 << 11 | 1, iqh=2 << 5, iqt=2 << 5)
    text = invalidation_queue(b.memory, [regs])
    lines = text.split("\n")
    assert lines[0] == "Invalidation queue on IOMMU: dmar0"
    assert lines[1] == f" Base: 0x{base:x}\tHead: 2\tTail: 2"
    assert lines[2] == "Index\t\tqw0\t\t\tqw1\t\t\tqw2\t\t\tqw3\t\t\tstatus"
    assert lines[3] == f"    0\t{0x17:016x}\t{0:016x}\t{0:016x}\t{0:016x}\t{2:016x}"
    assert lines[4] == (
        f"    1\t{0x2 << 32 | 0x25:016x}\t{status + 4:016x}\t{0:016x}\t{0:016x}\t{2:016x}"
    )
    assert len([x for x in lines if x[:5].strip().isdigit()]) == 256
    # queue not enabled: nothing printed for the unit
    assert invalidation_queue(b.memory, [StaticRegisters("dmar0", RTADDR_SM)]) == ""


def test_invalidation_queue_status_with_qword_stride() -> None:
    # a driver keeping one qword per status slot: two wait descriptors agree on stride 8
    b = Builder()
    base, status = 0x40000, 0x50000
    for slot in (1, 3):
        b.memory.write_qwords(base + 32 * slot, (0x2 << 32 | 0x25, status + 8 * slot, 0, 0))
        b.memory.write64(status + 8 * slot, 2)
    regs = StaticRegisters("dmar0", RTADDR_SM, iqa=base | 1 << 11 | 1, iqh=4 << 5, iqt=4 << 5)
    rows = invalidation_queue(b.memory, [regs]).split("\n")[3:8]
    assert [int(r.split("\t")[-1], 16) for r in rows] == [0, 2, 0, 2, 0]


def test_per_device_domain_translation_struct_linux_6_7_format() -> None:
    from vtdsim.scenario.debugfs import device_domain_translation_struct

    b, n = sample()
    regs = [StaticRegisters("dmar0", RTADDR_SM)]
    text = device_domain_translation_struct(b.memory, regs, n["gpu"], 2)
    lines = text.split("\n")
    assert lines[0] == f"Device 0000:00:02.0 with pasid 2 @0x{n['vm2']:x}"
    # "%-17s\t%-18s\t%-18s\t%-18s\t%-18s\t%-s\n"
    assert lines[1] == (
        "IOVA_PFN         \tPML5E             \tPML4E             \tPDPE              \t"
        "PDE               \tPTE"
    )
    assert len([x for x in lines if " |\t" in x]) == 2
    assert not text.endswith("\n\n")
    rid = device_domain_translation_struct(b.memory, regs, n["gpu"])
    assert rid.startswith(f"Device 0000:00:02.0 with pasid 0 @0x{n['rid']:x}\n")
    # PASID 0x1f (pasid printed in hex) not present: nothing; unknown device: nothing
    assert device_domain_translation_struct(b.memory, regs, n["gpu"], 0x1F) == ""
    assert device_domain_translation_struct(b.memory, regs, 0x0100) == ""
    # legacy mode (16-byte context entries, TT 0: SLPTPTR) prints no pasid
    from vtdsim.spec.entries import CONTEXT_ENTRY_LEGACY

    b.write(
        b.ctx_tables[(0, 0)] + 16 * 0x28,
        CONTEXT_ENTRY_LEGACY.encode(P=1, TT=0, SLPTPTR=n["rid"], AW=2, DID=7),
    )
    legacy = StaticRegisters("dmar0", ROOT)
    text = device_domain_translation_struct(b.memory, [legacy], 0x28)
    assert text.startswith(f"Device 0000:00:05.0 @0x{n['rid']:x}\n")
    assert "0x0000000000001 |" in text
