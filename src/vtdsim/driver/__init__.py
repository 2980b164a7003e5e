"""vtdsim.driver: the OS side (Linux ``drivers/iommu``), see docs/DRIVER.md.

* :mod:`.core` — the generic IOMMU API (:class:`IommuCore`, :class:`IommuOps`, errnos);
* :mod:`.kernel` — :class:`Kernel`: the Intel driver booted over a platform, with
  ``audit()`` / ``accounting()``;
* :mod:`.intel` — the Intel VT-d driver (ops in :mod:`.intel.iommu`, aux variants in
  :mod:`.intel.aux` (corrected) and :mod:`.intel.aux_v5` (the 2019 patch as posted));
* :mod:`.mdev` — mediated devices and VMs over aux domains;
* :mod:`.mock` — an iommufd-selftest style mock driver;
* :mod:`.sync` — locks and scheduling points (the explorer's hook).

The names below are re-exported lazily (importing :mod:`vtdsim.driver.sync` alone stays cheap
and free of import cycles).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vtdsim.driver.core import (
        IOMMU_CACHE,
        IOMMU_NO_PASID,
        IOMMU_NOEXEC,
        IOMMU_READ,
        IOMMU_WRITE,
        DomainType,
        Feature,
        IommuCore,
        IommuDomain,
        IommuOps,
    )
    from vtdsim.driver.intel.aux_v5 import KernelOops
    from vtdsim.driver.intel.inject import SITES, FaultInjector
    from vtdsim.driver.intel.iommu import DmarDomain, IntelIommuOps
    from vtdsim.driver.kernel import Accounting, Kernel
    from vtdsim.driver.mdev import MdevParent, MediatedDevice, Vm
    from vtdsim.driver.mock import MockDevice, MockIommuOps

_EXPORTS = {
    "IOMMU_CACHE": "core",
    "IOMMU_NOEXEC": "core",
    "IOMMU_NO_PASID": "core",
    "IOMMU_READ": "core",
    "IOMMU_WRITE": "core",
    "DomainType": "core",
    "Feature": "core",
    "IommuCore": "core",
    "IommuDomain": "core",
    "IommuOps": "core",
    "Kernel": "kernel",
    "Accounting": "kernel",
    "DmarDomain": "intel.iommu",
    "IntelIommuOps": "intel.iommu",
    "KernelOops": "intel.aux_v5",
    "FaultInjector": "intel.inject",
    "SITES": "intel.inject",
    "MdevParent": "mdev",
    "MediatedDevice": "mdev",
    "Vm": "mdev",
    "MockDevice": "mock",
    "MockIommuOps": "mock",
}

__all__ = [
    "IOMMU_CACHE",
    "IOMMU_NOEXEC",
    "IOMMU_NO_PASID",
    "IOMMU_READ",
    "IOMMU_WRITE",
    "SITES",
    "Accounting",
    "DmarDomain",
    "DomainType",
    "FaultInjector",
    "Feature",
    "IntelIommuOps",
    "IommuCore",
    "IommuDomain",
    "IommuOps",
    "Kernel",
    "KernelOops",
    "MdevParent",
    "MediatedDevice",
    "MockDevice",
    "MockIommuOps",
    "Vm",
]


def __getattr__(name: str) -> Any:
    mod = _EXPORTS.get(name)
    if mod is None:
        raise AttributeError(f"module 'vtdsim.driver' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"vtdsim.driver.{mod}"), name)
    globals()[name] = value
    return value
