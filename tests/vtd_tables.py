"""Hand-built scalable-mode translation tables for the debugfs and inspect tests.

Built only from the spec layouts (vtdsim.spec.entries), independently of the driver, so the
dumps and the image walker are tested against structures whose every bit we chose.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vtdsim.hw.memory import PhysicalMemory
from vtdsim.spec.entries import (
    CONTEXT_ENTRY_SM,
    PASID_DIR_ENTRY,
    PASID_ENTRY,
    ROOT_ENTRY_SM,
    SL_PDE_2M,
    SL_PTE_4K,
    SL_TABLE,
)

ROOT = 0x1000
RTADDR_SM = ROOT | 1 << 10


@dataclass
class Builder:
    memory: PhysicalMemory = field(default_factory=lambda: PhysicalMemory(64 << 20))
    next_page: int = 0x100000
    ctx_tables: dict[tuple[int, int], int] = field(default_factory=dict)
    dirs: dict[int, int] = field(default_factory=dict)
    pasid_tables: dict[tuple[int, int], int] = field(default_factory=dict)

    def page(self) -> int:
        p = self.next_page
        self.next_page += 0x1000
        self.memory.zero_page(p)
        return p

    def write(self, addr: int, words: tuple[int, ...]) -> None:
        self.memory.write_qwords(addr, words)

    def context(self, sid: int, *, pdts: int = 0, rid_pasid: int = 0, paside: bool = True) -> int:
        bus, devfn = sid >> 8, sid & 0xFF
        half = devfn >> 7
        key = (bus, half)
        if key not in self.ctx_tables:
            self.ctx_tables[key] = self.page()
            lo, hi = self.memory.read_qwords(ROOT + 16 * bus, 2)
            words = ROOT_ENTRY_SM.decode((lo, hi))
            vals = {k: words[k] for k in ("LP", "LCTP", "UP", "UCTP")}
            if half:
                vals.update(UP=1, UCTP=self.ctx_tables[key])
            else:
                vals.update(LP=1, LCTP=self.ctx_tables[key])
            self.write(ROOT + 16 * bus, ROOT_ENTRY_SM.encode(**vals))
        d = self.page()
        self.dirs[sid] = d
        ce = CONTEXT_ENTRY_SM.encode(
            P=1, PASIDE=int(paside), PDTS=pdts, PASIDDIRPTR=d, RID_PASID=rid_pasid
        )
        self.write(self.ctx_tables[key] + 32 * (devfn & 0x7F), ce)
        return d

    def pasid_entry(self, sid: int, pasid: int, pgd: int, *, did: int = 2, aw: int = 2) -> None:
        d = self.dirs[sid]
        key = (sid, pasid >> 6)
        if key not in self.pasid_tables:
            self.pasid_tables[key] = self.page()
            self.write(
                d + 8 * (pasid >> 6), PASID_DIR_ENTRY.encode(P=1, SMPTBLPTR=self.pasid_tables[key])
            )
        pe = PASID_ENTRY.encode(P=1, AW=aw, PGTT=2, SLPTPTR=pgd, DID=did, SRE=1)
        self.write(self.pasid_tables[key] + 64 * (pasid & 63), pe)

    def sl_map(
        self,
        pgd: int,
        iova: int,
        phys: int,
        *,
        levels: int = 4,
        size: int = 4096,
        r: int = 1,
        w: int = 1,
    ) -> None:
        table = pgd
        stop = 1 if size == 4096 else 2
        for level in range(levels, stop, -1):
            idx = (iova >> (12 + 9 * (level - 1))) & 511
            ea = table + 8 * idx
            v = self.memory.read64(ea)
            if not v & 3:
                nxt = self.page()
                self.memory.write64(ea, SL_TABLE.encode(R=1, W=1, ADDR=nxt)[0])
                table = nxt
            else:
                table = v & 0x000F_FFFF_FFFF_F000
        idx = (iova >> (12 + 9 * (stop - 1))) & 511
        if size == 4096:
            leaf = SL_PTE_4K.encode(R=r, W=w, ADDR=phys)[0]
        else:
            leaf = SL_PDE_2M.encode(R=r, W=w, PS=1, ADDR=phys)[0]
        self.memory.write64(table + 8 * idx, leaf)


def sample() -> tuple[Builder, dict[str, int]]:
    """Device 00:02.0 with a RID domain (PASID 0) and two PASIDs; device 00:03.0 RID only."""
    b = Builder()
    b.memory.zero_page(ROOT)
    gpu = 0x0010
    nic = 0x0018
    b.context(gpu)
    rid = b.page()
    vm1 = b.page()
    vm2 = b.page()
    b.pasid_entry(gpu, 0, rid, did=2)
    b.pasid_entry(gpu, 1, vm1, did=3)
    b.pasid_entry(gpu, 2, vm2, did=4)
    b.sl_map(rid, 0x1000, 0x200000)
    b.sl_map(vm1, 0x10000, 0x300000)
    b.sl_map(vm1, 0x11000, 0x301000, w=0)
    b.sl_map(vm2, 0x10000, 0x400000)
    b.sl_map(vm2, 0x4000_0000, 0x600000, size=2 << 20)
    b.context(nic)
    nic_dom = b.page()
    b.pasid_entry(nic, 0, nic_dom, did=5)
    b.sl_map(nic_dom, 0xFFFE_4000, 0x500000)
    return b, {"gpu": gpu, "nic": nic, "rid": rid, "vm1": vm1, "vm2": vm2, "nic_dom": nic_dom}
