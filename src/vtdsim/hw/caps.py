"""What one remapping unit implements: the inputs from which CAP and ECAP are encoded.

Defaults describe a modern scalable-mode unit like QEMU's ``x-scalable-mode=on`` model
(ECAP.PSS = 19, i.e. 20-bit PASIDs; CAP.ND = 6; SAGAW 39/48 bit) with enough fault-recording
registers and caches large enough to be exact (nothing is ever evicted).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

from vtdsim.errors import ArgumentError

__all__ = ["CacheGeometry", "Capabilities"]

Replacement = Literal["lru", "fifo", "random"]


@dataclass(frozen=True, slots=True)
class CacheGeometry:
    """Capacity, associativity and replacement policy of one translation cache.

    ``entries=0`` disables the cache (every lookup misses); ``entries=None`` is unbounded
    (exact: nothing is evicted, the default).  ``ways=None`` is fully associative.
    """

    entries: int | None = None
    ways: int | None = None
    replacement: Replacement = "lru"
    seed: int = 0  # for "random" replacement; replays

    def __post_init__(self) -> None:
        if self.entries is not None and (not isinstance(self.entries, int) or self.entries < 0):
            raise ArgumentError("CacheGeometry.entries", self.entries, "None or an integer >= 0")
        if self.ways is not None:
            if not isinstance(self.ways, int) or self.ways <= 0:
                raise ArgumentError("CacheGeometry.ways", self.ways, "None or an integer > 0")
            if self.entries is None or self.entries % self.ways:
                raise ArgumentError(
                    "CacheGeometry.ways", self.ways, "a divisor of a bounded entry count"
                )
        if self.replacement not in ("lru", "fifo", "random"):
            raise ArgumentError(
                "CacheGeometry.replacement", self.replacement, "'lru', 'fifo' or 'random'"
            )


@dataclass(frozen=True, slots=True)
class Capabilities:
    """Configurable capabilities of a remapping unit (encoded into CAP/ECAP by the unit)."""

    # ECAP
    scalable_mode: bool = True  # ECAP.SMTS (43)
    pasid: bool = True  # ECAP.PASID (40)
    pasid_bits: int = 20  # ECAP.PSS (39:35) + 1
    first_level: bool = True  # ECAP.FLTS (47)
    second_level: bool = True  # ECAP.SLTS (46)
    pass_through: bool = True  # ECAP.PT (6)
    nested: bool = True  # ECAP.NEST (26)
    queued_invalidation: bool = True  # ECAP.QI (1)
    device_tlb: bool = True  # ECAP.DT (2)
    snoop_control: bool = True  # ECAP.SC (7)
    coherent: bool = True  # ECAP.C (0): page walks snoop; no clflush needed
    page_walk_coherency: bool = True  # ECAP.SMPWC (48)
    supervisor_requests: bool = True  # ECAP.SRS (31)
    execute_requests: bool = False  # ECAP.ERS (30)
    page_requests: bool = False  # ECAP.PRS (29)
    sl_ad: bool = True  # ECAP.SLADS (45)
    # CAP
    sagaw: frozenset[int] = field(default_factory=lambda: frozenset({39, 48}))  # 57 for 5-level
    mgaw: int = 48  # CAP.MGAW (21:16) + 1
    haw: int = 46  # host address width: address bits above are reserved in entries
    sl_large_pages: frozenset[int] = field(
        default_factory=lambda: frozenset({21, 30})
    )  # CAP.SLLPS: 2 MiB (bit 34), 1 GiB (bit 35)
    fl_1g_pages: bool = True  # CAP.FL1GP (56)
    fl_5level: bool = True  # CAP.FL5LP (60)
    nd: int = 6  # CAP.ND (2:0): 2^(4 + 2*ND) domain IDs
    fault_records: int = 8  # CAP.NFR (47:40) + 1
    caching_mode: bool = False  # CAP.CM (7)
    psi: bool = True  # CAP.PSI (39)
    mamv: int = 18  # CAP.MAMV (53:48): largest address-mask value for PSI
    rwbf: bool = False  # CAP.RWBF (4): write-buffer flushing required
    # Caches (not architecturally visible except through staleness)
    context_cache: CacheGeometry = field(default_factory=CacheGeometry)
    pasid_cache: CacheGeometry = field(default_factory=CacheGeometry)
    iotlb: CacheGeometry = field(default_factory=CacheGeometry)
    paging_structure_cache: CacheGeometry = field(default_factory=CacheGeometry)

    def __post_init__(self) -> None:
        if not 1 <= self.pasid_bits <= 20:
            raise ArgumentError("Capabilities.pasid_bits", self.pasid_bits, "1..20 (ECAP.PSS+1)")
        if not self.sagaw or not self.sagaw <= {39, 48, 57}:
            raise ArgumentError(
                "Capabilities.sagaw", sorted(self.sagaw), "a non-empty subset of {39, 48, 57}"
            )
        if not 32 <= self.mgaw <= 64:
            raise ArgumentError("Capabilities.mgaw", self.mgaw, "32..64 bits")
        if not 32 <= self.haw <= 52:
            raise ArgumentError("Capabilities.haw", self.haw, "32..52 bits")
        if not self.sl_large_pages <= {21, 30}:
            raise ArgumentError(
                "Capabilities.sl_large_pages", sorted(self.sl_large_pages), "a subset of {21, 30}"
            )
        if not 0 <= self.nd <= 6:
            raise ArgumentError("Capabilities.nd", self.nd, "0..6 (CAP.ND)")
        if not 1 <= self.fault_records <= 256:
            raise ArgumentError("Capabilities.fault_records", self.fault_records, "1..256")
        if not 0 <= self.mamv <= 63:
            raise ArgumentError("Capabilities.mamv", self.mamv, "0..63")

    @property
    def ndoms(self) -> int:
        """Number of domain IDs: 2^(4 + 2*ND) (VT-d CAP.ND; Linux cap_ndoms)."""
        return 1 << (4 + 2 * self.nd)

    @property
    def max_pasid(self) -> int:
        """Exclusive upper bound of PASIDs the unit supports."""
        return 1 << self.pasid_bits if self.pasid else 0

    def with_(self, **changes: object) -> Capabilities:
        return replace(self, **changes)  # type: ignore[arg-type]
