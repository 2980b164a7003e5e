"""Hardware-model micro-benchmarks (no pytest): each function returns operations per second,
the median of several timed runs (time.perf_counter).

    translate_warm_per_s()   per-request API, warm IOTLB (fast path)
    translate_walk_per_s()   full uncached scalable-mode walks (all caches disabled,
                             4-level second-level table)
    dma_read_64b_per_s()     PciDevice.dma_read of 64 bytes through a warm unit
    entry_codec_per_s()      PASID_ENTRY encode + decode
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

from vtdsim.hw.caps import CacheGeometry, Capabilities
from vtdsim.hw.memory import PhysicalMemory
from vtdsim.hw.pci import PciDevice
from vtdsim.hw.translate import Translator
from vtdsim.spec.entries import (
    CONTEXT_ENTRY_SM,
    PASID_DIR_ENTRY,
    PASID_ENTRY,
    ROOT_ENTRY_SM,
    SL_PTE_4K,
    SL_TABLE,
)

__all__ = [
    "dma_read_64b_per_s",
    "entry_codec_per_s",
    "translate_walk_per_s",
    "translate_warm_per_s",
]

_SID = 0x0010
_PAGES = 256


class _Unit:
    """The minimal unit a Translator needs (no fault recording cost beyond a counter)."""

    def __init__(self, memory: PhysicalMemory, caps: Capabilities, root: int) -> None:
        self.memory = memory
        self.caps = caps
        self.root_table_address = root
        self.ttm = 1
        self.translation_enabled = True
        self.faults = 0
        self.translator = Translator(self)
        self.translate = self.translator.translate

    def record_fault(self, fault: Any) -> bool:
        self.faults += 1
        return True


def _setup(caps: Capabilities) -> _Unit:
    """Scalable mode, one device, RID_PASID 0 second-level 4-level, _PAGES pages mapped."""
    mem = PhysicalMemory(64 << 20)
    nxt = [0x10_0000]

    def page() -> int:
        p = nxt[0]
        nxt[0] += 0x1000
        return p

    root, ctab, pdir, ptab, pml4 = page(), page(), page(), page(), page()
    mem.write_qwords(root, ROOT_ENTRY_SM.encode(LP=1, LCTP=ctab))
    mem.write_qwords(
        ctab + 32 * (_SID & 0x7F), CONTEXT_ENTRY_SM.encode(P=1, PASIDE=1, PASIDDIRPTR=pdir)
    )
    mem.write_qwords(pdir, PASID_DIR_ENTRY.encode(P=1, SMPTBLPTR=ptab))
    mem.write_qwords(ptab, PASID_ENTRY.encode(P=1, AW=2, PGTT=2, SLPTPTR=pml4, DID=2))
    pdpt, pd, pt = page(), page(), page()
    mem.write64(pml4, SL_TABLE.encode(R=1, W=1, ADDR=pdpt)[0])
    mem.write64(pdpt, SL_TABLE.encode(R=1, W=1, ADDR=pd)[0])
    mem.write64(pd, SL_TABLE.encode(R=1, W=1, ADDR=pt)[0])
    for i in range(_PAGES):
        mem.write64(pt + 8 * i, SL_PTE_4K.encode(R=1, W=1, ADDR=0x200_0000 + 0x1000 * i)[0])
    return _Unit(mem, caps, root)


def _median_rate(run: Callable[[], int], repeats: int = 5) -> float:
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        n = run()
        dt = time.perf_counter() - t0
        rates.append(n / dt)
    return statistics.median(rates)


def translate_warm_per_s(n: int = 200_000, repeats: int = 5) -> float:
    """Translations per second with a warm IOTLB (the fast path)."""
    unit = _setup(Capabilities())
    tr = unit.translate
    addrs = [0x1000 * (i % _PAGES) + 0x40 for i in range(n)]
    for a in addrs[:_PAGES]:
        tr(_SID, a)

    def run() -> int:
        for a in addrs:
            tr(_SID, a)
        return n

    return _median_rate(run, repeats)


def translate_walk_per_s(n: int = 30_000, repeats: int = 5) -> float:
    """Full uncached scalable-mode walks per second (every cache disabled)."""
    off = CacheGeometry(entries=0)
    unit = _setup(
        Capabilities(context_cache=off, pasid_cache=off, iotlb=off, paging_structure_cache=off)
    )
    tr = unit.translate
    addrs = [0x1000 * (i % _PAGES) for i in range(n)]
    r = tr(_SID, addrs[1])
    assert r.ok, r

    def run() -> int:
        for a in addrs:
            tr(_SID, a)
        return n

    return _median_rate(run, repeats)


def dma_read_64b_per_s(n: int = 50_000, repeats: int = 5) -> float:
    """64-byte DMA reads per second through a warm unit."""
    unit = _setup(Capabilities())
    dev = PciDevice(_SID, unit.memory, unit)
    addrs = [0x1000 * (i % _PAGES) + 0x80 for i in range(n)]
    for a in addrs[:_PAGES]:
        assert dev.dma_read(a, 64).ok

    def run() -> int:
        rd = dev.dma_read
        for a in addrs:
            rd(a, 64)
        return n

    return _median_rate(run, repeats)


def entry_codec_per_s(n: int = 20_000, repeats: int = 5) -> float:
    """PASID_ENTRY encode + decode (all fields read) per second."""

    def run() -> int:
        for i in range(n):
            w = PASID_ENTRY.encode(
                P=1, AW=2, PGTT=2, SLPTPTR=0x1234_5000, DID=i & 0xFFFF, SRE=1, FLPM=0
            )
            d = PASID_ENTRY.decode(w)
            _ = d.PGTT + d.DID + d.SLPTPTR
        return n

    return _median_rate(run, repeats)


if __name__ == "__main__":  # pragma: no cover - python -m vtdsim.bench.hw
    for fn in (translate_warm_per_s, translate_walk_per_s, dma_read_64b_per_s, entry_codec_per_s):
        print(f"{fn.__name__:<24} {fn():>14,.0f} /s")
