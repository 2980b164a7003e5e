"""A mock IOMMU driver, after Linux's iommufd selftest mock (``drivers/iommu/iommufd/selftest.c``).

It has no hardware: page tables are dictionaries, attachments are recorded.  It exists to test
the core's generic semantics (errnos, argument checks, rollback) independently of VT-d:

* ``set_dev_pasid`` is a no-op (``mock_domain_set_dev_pasid_nop``) except for PASID 1024
  (``IOMMU_TEST_PASID_RESERVED``): the first call for it arms a flag, the second call with a
  non-blocked domain clears it and fails with ``-ENOMEM`` (so the core's failed-replace path is
  exercised), a blocked-domain call (detach) clears it;
* a device's PASID width is ``pasid_bits`` (``pasid-num-bits`` property; 0 = no PASID);
* AUX is supported on PASID-capable mock devices; aux domains get a PASID from a global
  lowest-free allocator and release it on the last detach (the corrected semantics).
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field
from typing import Any

from vtdsim.driver.core import DomainType, Feature, IommuDomain
from vtdsim.errors import IommuError

__all__ = ["IOMMU_TEST_PASID_RESERVED", "MockDevice", "MockDomain", "MockIommuOps"]

IOMMU_TEST_PASID_RESERVED = 1024
_PAGE = 4096


@dataclass(eq=False)
class MockDevice:
    """``struct mock_dev``."""

    name: str
    pasid_bits: int = 20
    pasid_1024_fake_error: bool = False
    aux_enabled: bool = False
    #: pasid -> domain as programmed by set_dev_pasid / aux attach
    pasids: dict[int, MockDomain] = field(default_factory=dict)
    rid_domain: MockDomain | None = None


class MockDomain(IommuDomain):
    """``struct mock_iommu_domain``: a dictionary page table (iova pfn -> (pfn, prot))."""

    def __init__(self, dtype: DomainType, ops: MockIommuOps) -> None:
        super().__init__(dtype, ops, aperture_bits=48)
        self.pages: dict[int, tuple[int, int]] = {}
        self.default_pasid = -1
        self.aux_users = 0


class MockIommuOps:
    """The mock driver's ``iommu_ops``."""

    name = "mock"

    def __init__(self) -> None:
        self.aux_pasids: set[int] = set()
        self.calls: list[tuple[str, object, object, object]] = []

    def probe_device(self, dev: Any) -> int:
        if not isinstance(dev, MockDevice):
            raise IommuError(errno.ENODEV, f"{dev!r} is not a mock device")
        return 1 << dev.pasid_bits if dev.pasid_bits else 0

    def domain_alloc(self, dtype: DomainType) -> IommuDomain:
        return MockDomain(dtype, self)

    def domain_free(self, domain: IommuDomain) -> None:
        assert isinstance(domain, MockDomain)
        domain.pages.clear()

    def attach_dev(self, domain: IommuDomain, dev: Any) -> None:
        assert isinstance(dev, MockDevice) and isinstance(domain, MockDomain)
        if dev.aux_enabled and domain.type is DomainType.UNMANAGED:
            # as intel_iommu_attach_device: an aux-capable domain on an AUX-enabled device
            raise IommuError(errno.EPERM, f"{domain!r} may only be aux-attached to {dev.name}")
        dev.rid_domain = domain

    def detach_dev(self, domain: IommuDomain, dev: Any) -> None:
        assert isinstance(dev, MockDevice)
        dev.rid_domain = None

    def map(self, domain: IommuDomain, iova: int, paddr: int, size: int, prot: int) -> None:
        assert isinstance(domain, MockDomain)
        first = iova // _PAGE
        n = size // _PAGE
        for k in range(n):
            if first + k in domain.pages:
                raise IommuError(errno.EEXIST, f"iova {(first + k) * _PAGE:#x} is already mapped")
        for k in range(n):
            domain.pages[first + k] = (paddr // _PAGE + k, prot)

    def unmap(self, domain: IommuDomain, iova: int, size: int) -> int:
        assert isinstance(domain, MockDomain)
        first = iova // _PAGE
        for k in range(size // _PAGE):
            domain.pages.pop(first + k, None)
        return size  # as intel_iommu_unmap: the size, whether or not anything was mapped

    def iova_to_phys(self, domain: IommuDomain, iova: int) -> int:
        assert isinstance(domain, MockDomain)
        ent = domain.pages.get(iova // _PAGE)
        return 0 if ent is None else ent[0] * _PAGE + iova % _PAGE

    def dev_has_feat(self, dev: Any, feat: Feature) -> bool:
        assert isinstance(dev, MockDevice)
        return feat is Feature.AUX and dev.pasid_bits > 0

    def dev_feat_enabled(self, dev: Any, feat: Feature) -> bool:
        assert isinstance(dev, MockDevice)
        return feat is Feature.AUX and dev.aux_enabled

    def dev_enable_feat(self, dev: Any, feat: Feature) -> None:
        assert isinstance(dev, MockDevice)
        if feat is not Feature.AUX:
            raise IommuError(errno.ENODEV, f"mock devices do not support {feat.name}")
        if not dev.pasid_bits:
            raise IommuError(errno.ENODEV, f"mock device {dev.name} has no PASID capability")
        dev.aux_enabled = True

    def dev_disable_feat(self, dev: Any, feat: Feature) -> None:
        assert isinstance(dev, MockDevice)
        if feat is not Feature.AUX:
            raise IommuError(errno.ENODEV, f"mock devices do not support {feat.name}")
        dev.aux_enabled = False

    def aux_attach_dev(self, domain: IommuDomain, dev: Any) -> None:
        assert isinstance(dev, MockDevice) and isinstance(domain, MockDomain)
        if not dev.aux_enabled or domain.type is not DomainType.UNMANAGED:
            raise IommuError(errno.EPERM, f"{domain!r} cannot be aux-attached to {dev.name}")
        if domain.default_pasid < 0:
            limit = 1 << dev.pasid_bits
            pasid = next((p for p in range(1, limit) if p not in self.aux_pasids), -1)
            if pasid < 0:
                raise IommuError(errno.ENOSPC, "no free PASID")
            self.aux_pasids.add(pasid)
            domain.default_pasid = pasid
        domain.aux_users += 1
        dev.pasids[domain.default_pasid] = domain

    def aux_detach_dev(self, domain: IommuDomain, dev: Any) -> None:
        assert isinstance(dev, MockDevice) and isinstance(domain, MockDomain)
        domain.aux_users -= 1
        if domain.aux_devices.get(dev, 0) <= 1:
            dev.pasids.pop(domain.default_pasid, None)
        if domain.aux_users == 0:
            self.aux_pasids.discard(domain.default_pasid)
            domain.default_pasid = -1

    def aux_get_pasid(self, domain: IommuDomain, dev: Any) -> int:
        assert isinstance(domain, MockDomain)
        if domain.default_pasid < 0:
            raise IommuError(errno.EINVAL, f"{domain!r} has no default PASID")
        return domain.default_pasid

    def set_dev_pasid(
        self, domain: IommuDomain | None, dev: Any, pasid: int, old: IommuDomain | None
    ) -> None:
        """``mock_domain_set_dev_pasid_nop``."""
        assert isinstance(dev, MockDevice)
        self.calls.append(("set_dev_pasid", domain, pasid, old))
        if pasid == IOMMU_TEST_PASID_RESERVED:
            if domain is None:
                dev.pasid_1024_fake_error = False
            elif dev.pasid_1024_fake_error:
                dev.pasid_1024_fake_error = False
                raise IommuError(errno.ENOMEM, "mock: faked failure of the 2nd set_dev_pasid")
            else:
                dev.pasid_1024_fake_error = True
        if domain is None:
            dev.pasids.pop(pasid, None)
        else:
            assert isinstance(domain, MockDomain)
            dev.pasids[pasid] = domain
