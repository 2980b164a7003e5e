"""Defects found by the acceptance review of the driver, each pinned by a test.

* a domain ID and PASID reused after a detach must not reach the previous domain's memory (a
  missing IOTLB flush at teardown would let it: the IOTLB is tagged by DID and PASID);
* a physical address the units cannot address is refused, not silently truncated;
* a v5 kernel's modern API cannot overwrite an occupied PASID (the 5.1 overwrite quirk belongs to
  the v5 aux path only);
* malformed arguments give typed errors, never a TypeError from deep inside.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from vtdsim.driver.core import Feature
from vtdsim.driver.intel.dmar import IntelIommu
from vtdsim.driver.kernel import Kernel
from vtdsim.errors import ArgumentError, IommuError


@contextmanager
def skipped(method: str) -> Iterator[None]:
    """Make an IntelIommu flush method a no-op (a mutant of the driver)."""
    saved = getattr(IntelIommu, method)
    setattr(IntelIommu, method, lambda self, *a, **k: None)
    try:
        yield
    finally:
        setattr(IntelIommu, method, saved)


def reuse_after_detach(k: Kernel, *, mutant: str | None) -> bytes:
    """Domain a is aux-attached (DID 2, PASID 1) and read through, then detached; domain b is
    attached and receives the same DID and PASID.  Returns what b's DMA reads."""
    d0 = k.devices[0]
    k.dev_enable_feature(d0, Feature.AUX)
    mem = k.platform.memory
    a = k.domain_alloc()
    k.map(a, 0x4000, 0x100000, 0x1000)
    mem.write(0x100000, b"A-secret")
    b = k.domain_alloc()
    k.map(b, 0x4000, 0x200000, 0x1000)
    mem.write(0x200000, b"B-data..")
    k.aux_attach_device(a, d0)
    pa = k.aux_get_pasid(a, d0)
    assert d0.dma_read(0x4000, 8, pasid=pa).data == b"A-secret"  # now cached in the IOTLB
    if mutant is None:
        k.aux_detach_device(a, d0)
    else:
        with skipped(mutant):
            k.aux_detach_device(a, d0)
    k.aux_attach_device(b, d0)
    pb = k.aux_get_pasid(b, d0)
    assert (pb, b.iommu_array[0].did) == (pa, 2)  # the same PASID and DID were reused
    r = d0.dma_read(0x4000, 8, pasid=pb)
    assert r.ok
    return bytes(r.data)


def test_reused_did_and_pasid_never_reach_the_previous_domain() -> None:
    assert reuse_after_detach(Kernel.for_testing(ndev=1, ats=False), mutant=None) == b"B-data.."


def test_the_reuse_test_detects_a_missing_iotlb_flush() -> None:
    # The same sequence on a driver whose teardown skips the IOTLB flush leaks A's data to B:
    # proof that the test above can fail.
    leaked = reuse_after_detach(Kernel.for_testing(ndev=1, ats=False), mutant="flush_iotlb_dsi")
    assert leaked == b"A-secret"


@pytest.mark.parametrize("paddr", [1 << 46, 1 << 52, 1 << 63, (1 << 64) - 0x1000])
def test_physical_address_beyond_host_width_is_refused(paddr: int) -> None:
    k = Kernel.for_testing(ndev=1)
    d0 = k.devices[0]
    dom = k.domain_alloc("dma")
    k.attach_device(dom, d0)
    before = k.accounting()
    with pytest.raises(IommuError) as ei:
        k.map(dom, 0x10000, paddr, 0x1000)
    assert ei.value.errno == errno.ERANGE
    assert f"{paddr:#x}" in str(ei.value) and "46-bit host address width" in str(ei.value)
    assert k.accounting() == before
    assert k.iova_to_phys(dom, 0x10000) == 0
    assert not d0.dma_read(0x10000, 8).ok


def test_last_addressable_page_maps() -> None:
    k = Kernel.for_testing(ndev=1)
    dom = k.domain_alloc("dma")
    k.map(dom, 0x10000, (1 << 46) - 0x1000, 0x1000)
    assert k.iova_to_phys(dom, 0x10000) == (1 << 46) - 0x1000


@pytest.mark.parametrize("variant", ["corrected", "v5"])
def test_modern_api_never_overwrites_an_aux_pasid(variant: str) -> None:
    k = Kernel.for_testing(ndev=1, aux_variant=variant)  # type: ignore[arg-type]
    d0 = k.devices[0]
    k.dev_enable_feature(d0, Feature.AUX)
    a = k.domain_alloc()
    k.map(a, 0x4000, 0x100000, 0x1000)
    other = k.domain_alloc("dma")
    k.aux_attach_device(a, d0)
    p = k.aux_get_pasid(a, d0)
    with pytest.raises(IommuError) as ei:
        k.attach_device_pasid(other, d0, p)
    assert ei.value.errno == errno.EBUSY
    assert k.audit(full=True) == []
    assert k.platform.memory.write(0x100000, b"aux-data") is None
    assert d0.dma_read(0x4000, 8, pasid=p).data == b"aux-data"


def test_malformed_arguments_are_typed_errors() -> None:
    k = Kernel.for_testing(ndev=1)
    d0 = k.devices[0]
    with pytest.raises(ArgumentError, match=r"domain=\[\]"):
        k.attach_device([], d0)  # type: ignore[arg-type]
    with pytest.raises(ArgumentError, match="pasid='x'"):
        k.get_domain_for_dev_pasid(d0, "x")  # type: ignore[arg-type]
    with pytest.raises(IommuError) as ei:
        k.get_domain_for_dev_pasid(d0, 1 << 20)
    assert ei.value.errno == errno.EINVAL
