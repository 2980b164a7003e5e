"""Driver micro-benchmarks through the core API (strict invalidation, as Linux
``iommu.strict=1``), no pytest: each function returns the median of several timed runs
(``time.perf_counter``).

    map_unmap_4k_pairs_per_s()       map + unmap of one 4 KiB page in an attached domain
    map_unmap_4k_unattached_per_s()  the same in a domain attached nowhere (no invalidation
                                     to issue: the cost of the core API + page table alone)
    map_1gib_4k_s()                  one 1 GiB map at 4 KiB granularity (262,144 leaf entries;
                                     the physical address is only 4 KiB aligned) -- seconds
    aux_attach_detach_per_s()        aux_attach_device + aux_detach_device cycles
    translate_driver_tables_per_s()  unit.translate() of 4 KiB pages through tables the driver
                                     built (PASID entry + second-level table), caches dropped
                                     before every run so that each page is walked once

Targets (issue): >= 50,000 pairs/s, <= 0.5 s, >= 20,000 cycles/s.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

from vtdsim.driver.core import Feature
from vtdsim.driver.kernel import Kernel

__all__ = [
    "aux_attach_detach_per_s",
    "map_1gib_4k_s",
    "map_unmap_4k_pairs_per_s",
    "map_unmap_4k_unattached_per_s",
    "translate_driver_tables_per_s",
]

_GiB = 1 << 30


def _median(run: Callable[[], float], runs: int) -> float:
    return statistics.median(run() for _ in range(runs))


def map_unmap_4k_pairs_per_s(
    pairs: int = 5000, runs: int = 5, attached: bool = True, after_dma: bool = False
) -> float:
    """Map + unmap pairs of one 4 KiB page per second (domain attached to a device's RID, so
    every unmap issues its IOTLB and device-TLB invalidations and waits for them).
    ``after_dma``: one DMA first, so that the unit's caches and the device TLB exist and
    every invalidation searches them (without it the translator is never created)."""
    k = Kernel.for_testing(ndev=1)
    d = k.domain_alloc("unmanaged")
    if attached:
        k.attach_device(d, k.devices[0])
    k.map(d, 0x10000, 0x100000, 0x1000)  # the page-table levels exist already
    if after_dma and attached:
        assert k.devices[0].dma_read(0x10000, 4).ok
    kmap, kunmap = k.map, k.unmap

    def run() -> float:
        t = time.perf_counter()
        for i in range(pairs):
            iova = 0x20000 + ((i & 255) << 12)
            kmap(d, iova, 0x100000, 0x1000)
            kunmap(d, iova, 0x1000)
        return pairs / (time.perf_counter() - t)

    return _median(run, runs)


def map_unmap_4k_unattached_per_s(pairs: int = 20000, runs: int = 5) -> float:
    """Map + unmap pairs per second in a domain attached nowhere (strict mode has nothing to
    invalidate: no unit caches it)."""
    return map_unmap_4k_pairs_per_s(pairs, runs, attached=False)


def map_1gib_4k_s(runs: int = 3) -> float:
    """Seconds for one 1 GiB map whose physical address is 4 KiB aligned only (no
    superpages possible: 262,144 leaf entries in 512 leaf tables)."""
    k = Kernel.for_testing(ndev=1, memory_size=1 << 34)
    times = []
    for _ in range(runs):
        d = k.domain_alloc("unmanaged")
        t = time.perf_counter()
        k.map(d, _GiB, 0x1000, _GiB)
        times.append(time.perf_counter() - t)
        k.unmap(d, _GiB, _GiB)
        k.domain_free(d)
    return statistics.median(times)


def aux_attach_detach_per_s(cycles: int = 2000, runs: int = 5, after_dma: bool = False) -> float:
    """aux_attach_device + aux_detach_device cycles per second (corrected driver; each
    detach tears the PASID entry down with its PASID-cache, IOTLB and device-TLB flushes).
    ``after_dma``: one DMA through the aux domain first (the unit's caches exist)."""
    k = Kernel.for_testing(ndev=2)
    dev = k.devices[0]
    k.dev_enable_feature(dev, Feature.AUX)
    d = k.domain_alloc("unmanaged")
    attach, detach = k.aux_attach_device, k.aux_detach_device
    if after_dma:
        k.map(d, 0x10000, 0x100000, 0x1000)
        attach(d, dev)
        assert dev.dma_read(0x10000, 4, pasid=k.aux_get_pasid(d, dev)).ok
        detach(d, dev)

    def run() -> float:
        t = time.perf_counter()
        for _ in range(cycles):
            attach(d, dev)
            detach(d, dev)
        return cycles / (time.perf_counter() - t)

    return _median(run, runs)


def translate_driver_tables_per_s(pages: int = 4096, runs: int = 5) -> float:
    """Translations per second of distinct 4 KiB pages through an aux domain's PASID entry
    and second-level table, each run starting from cold caches (global invalidations)."""
    k = Kernel.for_testing(ndev=1)
    dev = k.devices[0]
    k.dev_enable_feature(dev, Feature.AUX)
    d = k.domain_alloc("unmanaged")
    k.map(d, 0, 0x1000, pages << 12)
    k.aux_attach_device(d, dev)
    pasid = k.aux_get_pasid(d, dev)
    unit = k.platform.units[0]
    tr = unit.translator
    sid = dev.sid
    translate = unit.translate

    def run() -> float:
        tr.invalidate_pasid_cache("global")
        tr.invalidate_iotlb("global")
        t = time.perf_counter()
        for i in range(pages):
            translate(sid, i << 12, pasid=pasid)
        return pages / (time.perf_counter() - t)

    return _median(run, runs)


if __name__ == "__main__":  # pragma: no cover - python -m vtdsim.bench.driver
    print(f"map+unmap 4K pairs/s : {map_unmap_4k_pairs_per_s():,.0f}")
    print(f"  (unattached)       : {map_unmap_4k_unattached_per_s():,.0f}")
    print(f"  (after one DMA)    : {map_unmap_4k_pairs_per_s(after_dma=True):,.0f}")
    print(f"map 1 GiB at 4K      : {map_1gib_4k_s():.3f} s")
    print(f"aux attach+detach /s : {aux_attach_detach_per_s():,.0f}")
    print(f"  (after one DMA)    : {aux_attach_detach_per_s(after_dma=True):,.0f}")
    print(f"translate (cold) /s  : {translate_driver_tables_per_s():,.0f}")
