"""vtdsim: an executable, bit-exact model of the Intel VT-d IOMMU in scalable mode, with the
Linux driver logic that gives one PCI device many PASID-selected DMA domains, and an
interleaving explorer for that driver.

The public API is small; everything else lives in the subpackages (``vtdsim.spec`` formats,
``vtdsim.hw`` hardware, ``vtdsim.driver`` the OS side, ``vtdsim.explore``, ``vtdsim.scenario``)::

    from vtdsim import Platform, Capabilities, Kernel, Feature

    platform = Platform(memory_size=256 << 20)
    platform.add_unit(Capabilities())
    parent = platform.add_device("00:02.0", pasid_bits=20)
    kernel = Kernel(platform)                       # boots the unit, probes the device
    kernel.dev_enable_feature(parent, Feature.AUX)
    vm1 = kernel.domain_alloc("unmanaged")
    kernel.map(vm1, iova=0x100000, paddr=0x500000, size=0x1000)
    kernel.aux_attach_device(vm1, parent)
    pasid = kernel.aux_get_pasid(vm1, parent)
    parent.dma_write(0x100000, b"hello", pasid=pasid)   # lands at 0x500000

Names are imported on first use, so ``import vtdsim`` (and the command line's start-up) stays
cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from vtdsim.driver.core import DomainType, Feature, IommuCore, IommuDomain
    from vtdsim.driver.kernel import Accounting, Kernel
    from vtdsim.driver.mdev import MdevParent, MediatedDevice, Vm
    from vtdsim.errors import (
        ArgumentError,
        IommuError,
        MemoryAccessError,
        ReservedBitsError,
        ScenarioError,
        VtdsimError,
    )
    from vtdsim.explore import ExplorationResult, Workload
    from vtdsim.hw.caps import CacheGeometry, Capabilities
    from vtdsim.hw.iommu import RemappingUnit
    from vtdsim.hw.memory import FrameAllocator, PhysicalMemory
    from vtdsim.hw.pci import DmaResult, PciDevice
    from vtdsim.hw.platform import Platform
    from vtdsim.hw.translate import Translation, TranslationFault
    from vtdsim.spec.bits import Decoded, Field, Layout

_EXPORTS: dict[str, str] = {
    # errors
    "VtdsimError": "vtdsim.errors",
    "ArgumentError": "vtdsim.errors",
    "IommuError": "vtdsim.errors",
    "MemoryAccessError": "vtdsim.errors",
    "ReservedBitsError": "vtdsim.errors",
    "ScenarioError": "vtdsim.errors",
    # formats
    "Field": "vtdsim.spec.bits",
    "Layout": "vtdsim.spec.bits",
    "Decoded": "vtdsim.spec.bits",
    # hardware
    "PhysicalMemory": "vtdsim.hw.memory",
    "FrameAllocator": "vtdsim.hw.memory",
    "Capabilities": "vtdsim.hw.caps",
    "CacheGeometry": "vtdsim.hw.caps",
    "RemappingUnit": "vtdsim.hw.iommu",
    "Translation": "vtdsim.hw.translate",
    "TranslationFault": "vtdsim.hw.translate",
    "PciDevice": "vtdsim.hw.pci",
    "DmaResult": "vtdsim.hw.pci",
    "Platform": "vtdsim.hw.platform",
    # driver
    "Kernel": "vtdsim.driver.kernel",
    "Accounting": "vtdsim.driver.kernel",
    "IommuCore": "vtdsim.driver.core",
    "IommuDomain": "vtdsim.driver.core",
    "DomainType": "vtdsim.driver.core",
    "Feature": "vtdsim.driver.core",
    "MdevParent": "vtdsim.driver.mdev",
    "MediatedDevice": "vtdsim.driver.mdev",
    "Vm": "vtdsim.driver.mdev",
    # explorer (its functions live in vtdsim.explore: explore, replay, ...)
    "Workload": "vtdsim.explore",
    "ExplorationResult": "vtdsim.explore",
}

__all__ = [
    "Accounting",
    "ArgumentError",
    "CacheGeometry",
    "Capabilities",
    "Decoded",
    "DmaResult",
    "DomainType",
    "ExplorationResult",
    "Feature",
    "Field",
    "FrameAllocator",
    "IommuCore",
    "IommuDomain",
    "IommuError",
    "Kernel",
    "Layout",
    "MdevParent",
    "MediatedDevice",
    "MemoryAccessError",
    "PciDevice",
    "PhysicalMemory",
    "Platform",
    "RemappingUnit",
    "ReservedBitsError",
    "ScenarioError",
    "Translation",
    "TranslationFault",
    "Vm",
    "VtdsimError",
    "Workload",
    "__version__",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'vtdsim' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
