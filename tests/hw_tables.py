"""Hand-built translation tables and a stub remapping unit for the hw tests.

Every entry is encoded with the spec layouts (vtdsim.spec.entries); nothing here uses the
driver.  ``StubUnit`` is the minimal unit the Translator needs (memory, caps, root table
address, TTM, TES, record_fault).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from vtdsim.hw.caps import Capabilities
from vtdsim.hw.memory import PhysicalMemory
from vtdsim.hw.translate import Translation, TranslationFault, Translator
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

MEM = 256 << 20  # 256 MiB of (sparse) physical memory
BEYOND = 1 << 32  # an address below HAW (46) but beyond memory: access errors


class StubUnit:
    def __init__(self, memory: PhysicalMemory, caps: Capabilities, root: int, ttm: int) -> None:
        self.memory = memory
        self.caps = caps
        self.root_table_address = root
        self.ttm = ttm
        self.translation_enabled = True
        self.faults: list[TranslationFault] = []
        self.translator = Translator(self)

    def record_fault(self, fault: TranslationFault) -> bool:
        self.faults.append(fault)
        return True

    def translate(self, sid: int, addr: int, **kw: Any) -> Translation | TranslationFault:
        return self.translator.translate(sid, addr, **kw)


class Tables:
    """A bump allocator of zeroed pages plus table writers (scalable and legacy mode)."""

    def __init__(self, caps: Capabilities | None = None, *, legacy: bool = False) -> None:
        self.caps = caps or Capabilities()
        self.mem = PhysicalMemory(MEM)
        self.next = 0x10_0000
        self.legacy = legacy
        self.root = self.page()
        self.ctx_tables: dict[tuple[int, int], int] = {}
        self.unit = StubUnit(self.mem, self.caps, self.root, 0 if legacy else 1)

    @property
    def tr(self) -> Translator:
        return self.unit.translator

    def page(self) -> int:
        p = self.next
        self.next += 0x1000
        self.mem.zero_page(p)
        return p

    def write(self, addr: int, words: tuple[int, ...]) -> None:
        self.mem.write_qwords(addr, words)

    # -- scalable mode -------------------------------------------------------------------------

    def ctx_sm_addr(self, sid: int) -> int:
        bus, devfn = sid >> 8, sid & 0xFF
        half = devfn >> 7
        key = (bus, half)
        if key not in self.ctx_tables:
            t = self.page()
            self.ctx_tables[key] = t
            rea = self.root + 16 * bus
            words = list(self.mem.read_qwords(rea, 2))
            if half:
                words[1] = ROOT_ENTRY_SM.encode(UP=1, UCTP=t)[1]
            else:
                words[0] = ROOT_ENTRY_SM.encode(LP=1, LCTP=t)[0]
            self.write(rea, tuple(words))
        return self.ctx_tables[key] + 32 * (devfn & 0x7F)

    def context_sm(
        self,
        sid: int,
        *,
        paside: bool = True,
        pdts: int = 0,
        dte: bool = False,
        fpd: bool = False,
        rid_pasid: int = 0,
        rid_priv: bool = False,
        present: bool = True,
    ) -> int:
        """Write an SM context entry with a fresh PASID directory; returns the directory."""
        d = self.page()
        for _ in range((1 << (pdts + 7)) * 8 // 0x1000 - 1):
            self.page()  # a directory bigger than one page is contiguous
        ce = CONTEXT_ENTRY_SM.encode(
            P=int(present),
            FPD=int(fpd),
            DTE=int(dte),
            PASIDE=int(paside),
            PDTS=pdts,
            PASIDDIRPTR=d,
            RID_PASID=rid_pasid,
            RID_PRIV=int(rid_priv),
        )
        self.write(self.ctx_sm_addr(sid), ce)
        return d

    def pasid_entry_addr(self, pdir: int, pasid: int, *, dir_fpd: bool = False) -> int:
        dea = pdir + 8 * (pasid >> 6)
        de = self.mem.read64(dea)
        if not de & 1:
            t = self.page()
            de = PASID_DIR_ENTRY.encode(P=1, FPD=int(dir_fpd), SMPTBLPTR=t)[0]
            self.mem.write64(dea, de)
        return (de & ~0xFFF) + 64 * (pasid & 63)

    def pasid_entry(
        self,
        pdir: int,
        pasid: int,
        *,
        pgtt: int = 2,
        did: int = 2,
        sl_root: int = 0,
        aw: int = 2,
        fl_root: int = 0,
        flpm: int = 0,
        sre: bool = False,
        wpe: bool = False,
        ssade: bool = False,
        eafe: bool = False,
        fpd: bool = False,
        present: bool = True,
        dir_fpd: bool = False,
    ) -> int:
        pea = self.pasid_entry_addr(pdir, pasid, dir_fpd=dir_fpd)
        pe = PASID_ENTRY.encode(
            P=int(present),
            FPD=int(fpd),
            AW=aw,
            PGTT=pgtt,
            SSADE=int(ssade),
            SLPTPTR=sl_root,
            DID=did,
            SRE=int(sre),
            FLPM=flpm,
            WPE=int(wpe),
            EAFE=int(eafe),
            FLPTPTR=fl_root,
        )
        self.write(pea, pe)
        return pea

    # -- legacy mode ---------------------------------------------------------------------------

    def context_legacy(
        self, sid: int, *, tt: int = 0, slptr: int = 0, aw: int = 2, did: int = 1, fpd: bool = False
    ) -> int:
        bus, devfn = sid >> 8, sid & 0xFF
        key = (bus, 0)
        if key not in self.ctx_tables:
            t = self.page()
            self.ctx_tables[key] = t
            self.write(self.root + 16 * bus, ROOT_ENTRY_LEGACY.encode(P=1, CTP=t))
        cea = self.ctx_tables[key] + 16 * devfn
        self.write(
            cea,
            CONTEXT_ENTRY_LEGACY.encode(P=1, FPD=int(fpd), TT=tt, SLPTPTR=slptr, AW=aw, DID=did),
        )
        return cea

    # -- paging --------------------------------------------------------------------------------

    def sl_map(
        self,
        root: int,
        iova: int,
        hpa: int,
        *,
        levels: int = 4,
        size: int = 4096,
        r: bool = True,
        w: bool = True,
        table_rw: int = 3,
    ) -> int:
        """Map one page in SL tables; returns the leaf entry address."""
        leaf_level = {4096: 1, 2 << 20: 2, 1 << 30: 3}[size]
        table = root
        for level in range(levels, leaf_level, -1):
            ea = table + 8 * ((iova >> (12 + 9 * (level - 1))) & 511)
            e = self.mem.read64(ea)
            if not e & 3:
                nt = self.page()
                e = SL_TABLE.encode(R=table_rw & 1, W=table_rw >> 1, ADDR=nt)[0]
                self.mem.write64(ea, e)
            table = e & SL_TABLE.field("ADDR").mask
        ea = table + 8 * ((iova >> (12 + 9 * (leaf_level - 1))) & 511)
        if leaf_level == 1:
            e = SL_PTE_4K.encode(R=int(r), W=int(w), ADDR=hpa)[0]
        elif leaf_level == 2:
            e = SL_PDE_2M.encode(R=int(r), W=int(w), PS=1, ADDR=hpa)[0]
        else:
            e = SL_PDPE_1G.encode(R=int(r), W=int(w), PS=1, ADDR=hpa)[0]
        self.mem.write64(ea, e)
        return ea

    def fl_map(
        self,
        root: int,
        va: int,
        pa: int,
        *,
        levels: int = 4,
        size: int = 4096,
        rw: bool = True,
        us: bool = True,
        xd: bool = False,
        table_flags: dict[str, int] | None = None,
        where: Callable[[int], int] | None = None,
        alloc: Callable[[], int] | None = None,
    ) -> int:
        """Map one page in FL tables.  ``where(addr)`` is where a table address in an entry
        lives in host memory (nested: GPA -> HPA); ``alloc()`` returns a new table's entry
        address.  Returns the leaf entry's host address."""
        where = where or (lambda a: a)
        alloc = alloc or self.page
        tf = {"P": 1, "RW": 1, "US": 1, **(table_flags or {})}
        leaf_level = {4096: 1, 2 << 20: 2, 1 << 30: 3}[size]
        table = root
        for level in range(levels, leaf_level, -1):
            ea = where(table) + 8 * ((va >> (12 + 9 * (level - 1))) & 511)
            e = self.mem.read64(ea)
            if not e & 1:
                nt = alloc()
                e = FL_TABLE.encode(ADDR=nt, **tf)[0]
                self.mem.write64(ea, e)
            table = e & FL_TABLE.field("ADDR").mask
        ea = where(table) + 8 * ((va >> (12 + 9 * (leaf_level - 1))) & 511)
        kw = {"P": 1, "RW": int(rw), "US": int(us), "XD": int(xd), "ADDR": pa}
        if leaf_level == 1:
            e = FL_PTE_4K.encode(**kw)[0]
        elif leaf_level == 2:
            e = FL_PDE_2M.encode(PS=1, **kw)[0]
        else:
            e = FL_PDPE_1G.encode(PS=1, **kw)[0]
        self.mem.write64(ea, e)
        return ea


def sm_sl_setup(
    caps: Capabilities | None = None,
    *,
    sid: int = 0x0010,
    pasid: int = 0,
    levels: int = 4,
    did: int = 2,
    **ctx: Any,
) -> tuple[Tables, int, int]:
    """Scalable mode, one device, PASID ``pasid`` second-level only.  Returns (t, pdir, slroot)."""
    t = Tables(caps)
    pdir = t.context_sm(sid, **ctx)
    sl = t.page()
    t.pasid_entry(pdir, pasid, pgtt=2, did=did, sl_root=sl, aw=levels - 2)
    return t, pdir, sl


class Nested:
    """A guest-physical space for nested tests: GPA pages map 1:1 onto fresh host pages."""

    def __init__(self, t: Tables, sl_root: int, *, levels: int = 4, gpa_base: int = 0x4000_0000):
        self.t = t
        self.sl = sl_root
        self.levels = levels
        self.next_gpa = gpa_base
        self.g2h: dict[int, int] = {}

    def alloc(self, *, w: bool = True) -> int:
        g = self.next_gpa
        self.next_gpa += 0x1000
        h = self.t.page()
        self.g2h[g] = h
        self.t.sl_map(self.sl, g, h, levels=self.levels, w=w)
        return g

    def where(self, gpa: int) -> int:
        return self.g2h[gpa & ~0xFFF] + (gpa & 0xFFF)
