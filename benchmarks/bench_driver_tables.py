"""Driver page-table micro-benchmarks (no pytest), through the Intel internals only.

    map_unmap_4k_pairs_per_s()    DmaPageTable.map of one 4 KiB page, then the strict unmap
                                  (DmaPageTable.unmap_sync: clear, PSI IOTLB invalidation
                                  through the invalidation queue + wait descriptor, freelist)
                                  on a booted unit; pairs per second
    map_unmap_4k_ats_pairs_per_s() the same with an ATS device in the domain (IOTLB and
                                  device-TLB descriptors in one submission)
    map_1gib_4k_s()               seconds to map 1 GiB at 4 KiB granularity (physical address
                                  only 4 KiB aligned: 262,144 leaf PTEs, 512 leaf tables)

Each returns the median of several timed runs (time.perf_counter).  The lead wires the final
versions through the core API (``IommuCore.map/unmap``); these measure the layer underneath.
"""

from __future__ import annotations

import statistics
import time

from vtdsim.driver.intel.device import intel_iommu_probe_device
from vtdsim.driver.intel.dmar import IntelIommu
from vtdsim.driver.intel.pgtable import IOMMU_READ, IOMMU_WRITE, DmaPageTable
from vtdsim.hw.caps import Capabilities
from vtdsim.hw.memory import FrameAllocator
from vtdsim.hw.platform import Platform

__all__ = ["map_1gib_4k_s", "map_unmap_4k_ats_pairs_per_s", "map_unmap_4k_pairs_per_s"]

_RW = IOMMU_READ | IOMMU_WRITE
_DID = 2


def _setup(memory: int = 1 << 32) -> tuple[Platform, IntelIommu]:
    p = Platform(memory)
    unit = p.add_unit(Capabilities())
    frames = FrameAllocator(p.memory, 1 << 28, 1 << 31)
    iommu = IntelIommu(unit, frames)
    iommu.boot()
    return p, iommu


def _pairs(ats: bool, n: int, runs: int) -> float:
    p, iommu = _setup()
    infos = []
    if ats:
        dev = p.add_device("00:02.0", ats=True, pasid_bits=8)
        infos.append(intel_iommu_probe_device(iommu, dev))
    pt = DmaPageTable(iommu.frames, 48, iommu)
    targets = [(iommu, _DID)]
    iova, pa = 0x1234000, 0x5678000
    pt.map(iova, pa, 0x1000, _RW)  # tables in place, as in steady state
    pt.unmap_sync(iova, 0x1000, targets, infos)
    rates = []
    for _ in range(runs):
        t = time.perf_counter()
        for _ in range(n):
            pt.map(iova, pa, 0x1000, _RW)
            pt.unmap_sync(iova, 0x1000, targets, infos)
        rates.append(n / (time.perf_counter() - t))
    return statistics.median(rates)


def map_unmap_4k_pairs_per_s(n: int = 20_000, runs: int = 5) -> float:
    """4 KiB map + strict unmap pairs per second (IOTLB PSI + wait per unmap)."""
    return _pairs(False, n, runs)


def map_unmap_4k_ats_pairs_per_s(n: int = 20_000, runs: int = 5) -> float:
    """As :func:`map_unmap_4k_pairs_per_s` with an ATS device (device-TLB flush too)."""
    return _pairs(True, n, runs)


def map_1gib_4k_s(runs: int = 5) -> float:
    """Seconds to map 1 GiB with 4 KiB leaves (262,144 PTEs)."""
    times = []
    for _ in range(runs):
        _p, iommu = _setup(1 << 34)
        pt = DmaPageTable(iommu.frames, 48, iommu)
        t = time.perf_counter()
        pt.map(1 << 30, 0x100001000, 1 << 30, _RW)
        times.append(time.perf_counter() - t)
        pt.free_all()
    return statistics.median(times)


if __name__ == "__main__":
    print(f"map_unmap_4k_pairs_per_s      {map_unmap_4k_pairs_per_s():12,.0f}")
    print(f"map_unmap_4k_ats_pairs_per_s  {map_unmap_4k_ats_pairs_per_s():12,.0f}")
    print(f"map_1gib_4k_s                 {map_1gib_4k_s():12.4f}")
