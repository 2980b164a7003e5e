"""vtdsim.driver.intel: the Intel VT-d driver (Linux ``drivers/iommu/intel/``).

Hardware-facing internals (see docs/DRIVER.md, "Intel internals"):

* :mod:`.dmar` — :class:`IntelIommu` (``struct intel_iommu``): boot, queued invalidation,
  flush descriptors; :class:`Quirks` (historic Linux behaviours).
* :mod:`.domain_id` — DID bitmap and per-(domain, unit) reference counts.
* :mod:`.ioasid` — the global PASID allocator.
* :mod:`.pgtable` — :class:`DmaPageTable` (second-level page tables).
* :mod:`.pasid` — per-device PASID tables and PASID-entry setup / teardown.
* :mod:`.device` — :class:`DeviceDomainInfo`, probe, context entries.
* :mod:`.inject` — :class:`FaultInjector` (allocation failure injection).

The ops layer (``iommu``, ``aux``, ``aux_v5``) is imported from its own modules.
"""

from vtdsim.driver.intel.device import (
    DeviceDomainInfo,
    context_entry_read,
    intel_iommu_enable_pasid,
    intel_iommu_probe_device,
    intel_iommu_release_device,
    iommu_context_addr,
)
from vtdsim.driver.intel.dmar import (
    IntelIommu,
    QiError,
    Quirks,
    init_dmars,
    psi_aligned,
)
from vtdsim.driver.intel.domain_id import (
    FLPT_DEFAULT_DID,
    DomainIdAllocator,
    IommuDomainInfo,
    domain_attach_iommu,
    domain_detach_iommu,
    domain_id_iommu,
)
from vtdsim.driver.intel.inject import FaultInjector
from vtdsim.driver.intel.ioasid import (
    PASID_MIN,
    AllocatorError,
    PasidAllocator,
    intel_pasid_alloc_id,
    intel_pasid_free_id,
    ioasid_alloc,
    ioasid_free,
)
from vtdsim.driver.intel.pasid import (
    PasidTable,
    intel_pasid_alloc_table,
    intel_pasid_free_table,
    intel_pasid_get_entry,
    intel_pasid_setup_first_level,
    intel_pasid_setup_pass_through,
    intel_pasid_setup_second_level,
    intel_pasid_tear_down_entry,
    pasid_entry_read,
)
from vtdsim.driver.intel.pgtable import (
    IOMMU_CACHE,
    IOMMU_READ,
    IOMMU_WRITE,
    DmaPageTable,
)

__all__ = [
    "FLPT_DEFAULT_DID",
    "IOMMU_CACHE",
    "IOMMU_READ",
    "IOMMU_WRITE",
    "PASID_MIN",
    "AllocatorError",
    "DeviceDomainInfo",
    "DmaPageTable",
    "DomainIdAllocator",
    "FaultInjector",
    "IntelIommu",
    "IommuDomainInfo",
    "PasidAllocator",
    "PasidTable",
    "QiError",
    "Quirks",
    "context_entry_read",
    "domain_attach_iommu",
    "domain_detach_iommu",
    "domain_id_iommu",
    "init_dmars",
    "intel_iommu_enable_pasid",
    "intel_iommu_probe_device",
    "intel_iommu_release_device",
    "intel_pasid_alloc_id",
    "intel_pasid_alloc_table",
    "intel_pasid_free_id",
    "intel_pasid_free_table",
    "intel_pasid_get_entry",
    "intel_pasid_setup_first_level",
    "intel_pasid_setup_pass_through",
    "intel_pasid_setup_second_level",
    "intel_pasid_tear_down_entry",
    "ioasid_alloc",
    "ioasid_free",
    "iommu_context_addr",
    "pasid_entry_read",
    "psi_aligned",
]
