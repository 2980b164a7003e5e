"""Mediated devices and VMs over aux domains (Linux 5.2-5.15 ``vfio/mdev`` + ``vfio_iommu_type1``).

Design rationale
----------------
A *parent* is a PCI function with AUX enabled (``iommu_dev_enable_feature(parent,
IOMMU_DEV_FEAT_AUX)``, as an SIOV-capable device driver does at probe).  It hosts mediated
devices (``mdev_device``), each of which is a slice of the parent's DMA engine: the parent tags
that slice's DMA with a PASID.  Assigning an mdev to a VM follows ``vfio_iommu_type1``'s
"Handle different mdev isolation type" patch (v5 8/8): the VM's IOMMU domain is an unmanaged
domain mapping guest-physical to host-physical, aux-attached to the parent
(``iommu_aux_attach_device``), and the PASID the parent must tag is
``iommu_aux_get_pasid(domain, parent)``.

Each mdev gets its own domain here (one VM's container per mdev), so revoking one mdev never
affects another mdev of the same VM.  The PASID an mdev tags lives in the *device* (its
``pasid`` register): after :meth:`MdevParent.unassign` it keeps tagging the old PASID, and the
model shows that such DMA faults at once (the teardown flushed the PASID cache, IOTLB and
device-TLB before the detach returned).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from vtdsim.driver.core import IOMMU_READ, IOMMU_WRITE, Feature, IommuCore, IommuDomain
from vtdsim.errors import ArgumentError
from vtdsim.hw.memory import PAGE_SIZE, FrameAllocator

if TYPE_CHECKING:
    from vtdsim.hw.pci import DmaResult

__all__ = ["MdevParent", "MediatedDevice", "Vm"]

_PAGE_MASK = PAGE_SIZE - 1


@dataclass(frozen=True, slots=True)
class _Range:
    gpa: int
    hpa: int
    size: int
    prot: int


class Vm:
    """A guest: its guest-physical → host-physical mappings (the reference for isolation).

    ``add_ram(gpa, size)`` backs a range with pages from ``frames`` (tag ``"vm"``; not
    necessarily contiguous); ``add_range(gpa, hpa, size)`` maps an explicit host range.  Every
    mapping added after an mdev was assigned is also mapped into that mdev's domain (as
    ``VFIO_IOMMU_MAP_DMA`` does for every domain of the container).
    """

    def __init__(self, name: str, frames: FrameAllocator | None = None) -> None:
        self.name = name
        self.frames = frames
        self.ranges: list[_Range] = []
        self._pages: list[int] = []
        self.mdevs: list[MediatedDevice] = []

    def __repr__(self) -> str:
        return f"<Vm {self.name} {len(self.ranges)} range(s)>"

    def _check(self, gpa: int, size: int) -> None:
        for name, v in (("gpa", gpa), ("size", size)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 0 or v & _PAGE_MASK:
                raise ArgumentError(name, v, "a non-negative multiple of 4096")
        if size == 0:
            raise ArgumentError("size", size, "a positive multiple of 4096")
        for r in self.ranges:
            if gpa < r.gpa + r.size and r.gpa < gpa + size:
                raise ArgumentError("gpa", gpa, f"a range not overlapping {r.gpa:#x}+{r.size:#x}")

    def add_range(
        self, gpa: int, hpa: int, size: int, prot: int = IOMMU_READ | IOMMU_WRITE
    ) -> None:
        """Map ``[gpa, gpa+size)`` to host ``[hpa, ...)``."""
        self._check(gpa, size)
        if not isinstance(hpa, int) or hpa < 0 or hpa & _PAGE_MASK:
            raise ArgumentError("hpa", hpa, "a non-negative multiple of 4096")
        r = _Range(gpa, hpa, size, prot)
        done: list[MediatedDevice] = []
        try:
            for m in self.mdevs:
                m.parent.map_range(m, r)
                done.append(m)
        except BaseException:
            for m in done:
                m.parent.unmap_range(m, r)
            raise
        self.ranges.append(r)

    def add_ram(self, gpa: int, size: int) -> None:
        """Back ``[gpa, gpa+size)`` with fresh host pages from the frame allocator."""
        if self.frames is None:
            raise ArgumentError("frames", None, "a FrameAllocator (Vm(..., frames=...))")
        self._check(gpa, size)
        pages = []
        try:
            for _ in range(size // PAGE_SIZE):
                pages.append(self.frames.alloc(0, "vm"))
        except BaseException:
            for p in pages:
                self.frames.free(p)
            raise
        self._pages.extend(pages)
        for k, hpa in enumerate(pages):
            self.add_range(gpa + k * PAGE_SIZE, hpa, PAGE_SIZE)

    def translate(self, gpa: int) -> int | None:
        """The host address ``gpa`` maps to, ``None`` if unmapped (the reference model)."""
        for r in self.ranges:
            if r.gpa <= gpa < r.gpa + r.size:
                return r.hpa + gpa - r.gpa
        return None

    def release(self) -> None:
        """Return RAM pages to the allocator (after every mdev is unassigned)."""
        if self.mdevs:
            raise ArgumentError("vm", self.name, "a VM with no assigned mdev")
        assert self.frames is not None or not self._pages
        for p in self._pages:
            assert self.frames is not None
            self.frames.free(p)
        self._pages.clear()
        self.ranges.clear()


@dataclass(eq=False)
class MediatedDevice:
    """``struct mdev_device``: a slice of ``parent``'s DMA engine."""

    parent: MdevParent
    name: str
    vm: Vm | None = None
    domain: IommuDomain | None = None
    #: the PASID the parent tags this mdev's DMA with (stays after unassign: hardware state)
    pasid: int | None = None
    _ranges: list[_Range] = field(default_factory=list)

    def __repr__(self) -> str:
        where = f" in {self.vm.name}" if self.vm is not None else ""
        return f"<mdev {self.name} of {self.parent.bdf}{where} pasid={self.pasid}>"

    def _tag(self) -> int:
        if self.pasid is None:
            raise ArgumentError("mdev", self.name, "an mdev that was assigned to a VM once")
        return self.pasid

    def dma_read(self, gpa: int, length: int) -> DmaResult:
        """DMA read by this mdev at guest-physical ``gpa``, tagged with its PASID."""
        return self.parent.dev.dma_read(gpa, length, pasid=self._tag())  # type: ignore[no-any-return]

    def dma_write(self, gpa: int, data: bytes) -> DmaResult:
        """DMA write by this mdev at guest-physical ``gpa``, tagged with its PASID."""
        return self.parent.dev.dma_write(gpa, data, pasid=self._tag())  # type: ignore[no-any-return]


class MdevParent:
    """A parent device (AUX enabled) hosting mediated devices."""

    def __init__(self, core: IommuCore, dev: Any) -> None:
        self.core = core
        self.dev = core.device_state(dev).dev
        self.bdf = core.device_state(dev).name
        if not core.dev_feature_enabled(self.dev, Feature.AUX):
            core.dev_enable_feature(self.dev, Feature.AUX)
        self.mdevs: list[MediatedDevice] = []

    def create(self, name: str) -> MediatedDevice:
        """``mdev_device_create``."""
        if any(m.name == name for m in self.mdevs):
            raise ArgumentError("name", name, f"a name not used on {self.bdf}")
        m = MediatedDevice(self, name)
        self.mdevs.append(m)
        return m

    def remove(self, mdev: MediatedDevice) -> None:
        """``mdev_device_remove`` (unassigns first)."""
        if mdev.vm is not None:
            self.unassign(mdev)
        self.mdevs.remove(mdev)

    def map_range(self, mdev: MediatedDevice, r: _Range) -> None:
        """Map one of the VM's ranges into ``mdev``'s domain (``VFIO_IOMMU_MAP_DMA``)."""
        assert mdev.domain is not None
        self.core.map(mdev.domain, r.gpa, r.hpa, r.size, r.prot)
        mdev._ranges.append(r)

    def unmap_range(self, mdev: MediatedDevice, r: _Range) -> None:
        assert mdev.domain is not None
        self.core.unmap(mdev.domain, r.gpa, r.size)
        mdev._ranges.remove(r)

    def assign(self, mdev: MediatedDevice, vm: Vm) -> int:
        """Give ``mdev`` to ``vm``: a new unmanaged domain mapping the VM's GPA space,
        aux-attached to the parent; returns the PASID the mdev now tags.  On error nothing
        remains (domain unmapped and freed)."""
        if mdev.parent is not self or mdev not in self.mdevs:
            raise ArgumentError("mdev", mdev, f"an mdev of {self.bdf}")
        if mdev.vm is not None:
            raise ArgumentError("mdev", mdev, "an mdev not assigned to a VM")
        core = self.core
        domain = core.domain_alloc("unmanaged")
        mdev.domain = domain
        try:
            for r in vm.ranges:
                self.map_range(mdev, r)
            core.aux_attach_device(domain, self.dev)
        except BaseException:
            for r in mdev._ranges:
                core.unmap(domain, r.gpa, r.size)
            mdev._ranges.clear()
            core.domain_free(domain)
            mdev.domain = None
            raise
        mdev.pasid = core.aux_get_pasid(domain, self.dev)
        mdev.vm = vm
        vm.mdevs.append(mdev)
        return mdev.pasid

    def unassign(self, mdev: MediatedDevice) -> None:
        """Take ``mdev`` from its VM: aux detach (the PASID entry is torn down and every
        cache flushed before this returns), unmap, free the domain.  ``mdev.pasid`` keeps the
        old value: the device may still issue DMA with it, and must fault."""
        if mdev.vm is None or mdev.domain is None:
            raise ArgumentError("mdev", mdev, "an mdev assigned to a VM")
        core = self.core
        core.aux_detach_device(mdev.domain, self.dev)
        for r in mdev._ranges:
            core.unmap(mdev.domain, r.gpa, r.size)
        mdev._ranges.clear()
        core.domain_free(mdev.domain)
        mdev.domain = None
        mdev.vm.mdevs.remove(mdev)
        mdev.vm = None
