"""The v5 patch as posted (``aux_variant="v5"``) reproduces the reviewed defects; the corrected
driver passes the same sequences.

Reference: "[PATCH v5 4/8] iommu/vt-d: Aux-domain specific domain attach/detach" and Jonathan
Cameron's review (shared/seed), fact sheet §1.2-1.3, 18abda7a2d55 (list GPF), Thomas Gleixner's
2022 use-after-free remark on ``default_pasid``.
"""

from __future__ import annotations

import errno
from typing import Any

import pytest

from test_aux import Recorder  # the recording sync backend
from vtdsim.driver import sync
from vtdsim.driver.core import Feature
from vtdsim.driver.intel.aux_v5 import KernelOops, ListHead, list_add, list_check, list_del
from vtdsim.driver.intel.ioasid import AllocatorError
from vtdsim.driver.intel.iommu import DmarDomain
from vtdsim.driver.intel.pasid import pasid_entry_read
from vtdsim.driver.kernel import Kernel
from vtdsim.errors import IommuError

BUF = 0x100000


def kernel(variant: str) -> Kernel:
    k = Kernel.for_testing(ndev=2, aux_variant=variant)  # type: ignore[arg-type]
    for dev in k.devices:
        k.dev_enable_feature(dev, Feature.AUX)
    return k


@pytest.mark.parametrize("variant", ["v5", "corrected"])
def test_reattach_after_last_detach_reuses_freed_pasid(variant: str) -> None:
    """Detach the last device, attach again: v5 programs a PASID the allocator holds as free,
    another domain then receives it, and both domains' DMA is tagged with the same PASID;
    finally one PASID entry is shared (overwritten) and isolation is lost."""
    k = kernel(variant)
    d0, d1 = k.devices
    mem = k.platform.memory
    a, b = k.domain_alloc(), k.domain_alloc()
    k.map(a, 0x8000, BUF, 0x2000)
    k.map(b, 0x8000, BUF + 0x2000, 0x2000)
    for off, tag in (
        (0, b"secret-A"),
        (0x1000, b"second-A"),
        (0x2000, b"secret-B"),
        (0x3000, b"second-B"),
    ):
        mem.write(BUF + off, tag)
    alloc = k.ops.pasid_allocator

    k.aux_attach_device(a, d0)
    assert k.aux_get_pasid(a, d0) == 1
    k.aux_detach_device(a, d0)  # last detach: PASID 1 is freed
    assert alloc.allocated() == []
    k.aux_attach_device(a, d0)  # attach again
    pa = k.aux_get_pasid(a, d0)
    k.aux_attach_device(b, d1)
    pb = k.aux_get_pasid(b, d1)
    problems = k.audit()
    if variant == "v5":
        # a programmed its stale PASID 1 (free in the allocator); b then received PASID 1
        assert pa == pb == 1
        assert alloc.owner(1) is b
        assert any("allocated to" in p and "PASID 0x1 of 00:02.0" in p for p in problems)
        # two domains' DMA tagged with the same PASID
        assert d0.dma_read(0x8000, 8, pasid=1).data == b"secret-A"
        assert d1.dma_read(0x8000, 8, pasid=1).data == b"secret-B"
        # b on d0 too: 5.1 setup overwrites a's present entry (one entry, two domains)
        info = k.ops.info(d0)
        assert isinstance(a, DmarDomain) and isinstance(b, DmarDomain)
        did_a = a.iommu_array[info.iommu.seq_id].did
        k.aux_attach_device(b, d0)
        entry = pasid_entry_read(info, 1)
        assert entry is not None and b.pgtable is not None
        assert entry["SLPTPTR"] == b.pgtable.pgd  # a's entry now translates through b
        # the overwrite is followed by no invalidation (not in caching mode): the unit still
        # uses a's cached entry; the next invalidation of that PASID exposes B's memory to
        # a's mdev
        assert d0.dma_read(0x9000, 8, pasid=1).data == b"second-A"
        info.iommu.flush_pasid_cache(did_a, 1)
        info.iommu.flush_iotlb_dsi(did_a)
        info.iommu.flush_dev_iotlb(info, 1, 0, 52)
        assert d0.dma_read(0x9000, 8, pasid=1).data == b"second-B"
        assert d0.dma_read(0x8000, 8, pasid=1).data == b"secret-B"
        problems = k.audit(full=True)
        assert any("attachment of" in p and "DMAR" not in p for p in problems)
        assert any("refcnt" in p for p in problems)
    else:
        assert problems == []
        assert (pa, pb) == (1, 2)
        assert alloc.owner(1) is a and alloc.owner(2) is b
        k.aux_attach_device(b, d0)
        assert d0.dma_read(0x8000, 8, pasid=pa).data == b"secret-A"
        assert d0.dma_read(0x8000, 8, pasid=pb).data == b"secret-B"
        assert k.audit(full=True) == []


@pytest.mark.parametrize("variant", ["v5", "corrected"])
def test_second_cycle(variant: str) -> None:
    """attach, detach, attach, detach: v5 frees PASID 1 twice."""
    k = kernel(variant)
    a = k.domain_alloc()
    d0 = k.devices[0]
    k.aux_attach_device(a, d0)
    k.aux_detach_device(a, d0)
    k.aux_attach_device(a, d0)
    if variant == "v5":
        with pytest.raises(AllocatorError, match="PASID 1 freed but not allocated"):
            k.aux_detach_device(a, d0)
    else:
        k.aux_detach_device(a, d0)
        assert k.audit(full=True) == []


@pytest.mark.parametrize("variant", ["v5", "corrected"])
def test_one_domain_two_devices(variant: str) -> None:
    """One list node per domain: the second list_add moves it; dev0's list is corrupt; the
    second unlink dereferences LIST_POISON (the GPF of 18abda7a2d55)."""
    k = kernel(variant)
    d0, d1 = k.devices
    a = k.domain_alloc()
    k.aux_attach_device(a, d0)
    assert k.audit() == []
    k.aux_attach_device(a, d1)
    problems = k.audit()
    if variant == "corrected":
        assert problems == []
        k.aux_detach_device(a, d0)
        k.aux_detach_device(a, d1)
        assert k.audit(full=True) == []
        return
    assert any("auxiliary_domains list corrupt" in p and "00:02.0" in p for p in problems)
    k.aux_detach_device(a, d0)  # list_del through the node's (dev1) links
    assert any("list corrupt" in p for p in k.audit())
    with pytest.raises(KernelOops, match="LIST_POISON"):
        k.aux_detach_device(a, d1)


@pytest.mark.parametrize("variant", ["v5", "corrected"])
def test_failed_first_attach(variant: str) -> None:
    """Error path (review point (d)): v5 frees the PASID after unlocking and leaves
    default_pasid set, so aux_get_pasid returns a freed PASID and the next attach reuses it
    without allocating."""
    k = kernel(variant)
    d0 = k.devices[0]
    a = k.domain_alloc()
    before = k.accounting()
    k.injector.fail("did")
    with pytest.raises(IommuError) as ei:
        k.aux_attach_device(a, d0)
    assert ei.value.errno == errno.ENOMEM
    assert k.accounting() == before  # both free the PASID on this path...
    assert isinstance(a, DmarDomain)
    if variant == "v5":
        assert a.default_pasid == 1  # ...but v5 keeps it
        assert k.aux_get_pasid(a, d0) == 1  # a freed PASID reported as valid
        k.aux_attach_device(a, d0)
        assert k.ops.pasid_allocator.allocated() == []  # programmed, never allocated
        assert any("holds it as free" in p for p in k.audit())
    else:
        with pytest.raises(IommuError) as ei:
            k.aux_get_pasid(a, d0)
        assert ei.value.errno == errno.EINVAL
        k.aux_attach_device(a, d0)
        assert k.ops.pasid_allocator.allocated() == [1]
        assert k.audit(full=True) == []


def test_v5_allocates_outside_device_domain_lock() -> None:
    """Review point (c): the unlocked read/alloc/write of default_pasid is declared, so the
    explorer can schedule a concurrent remove there."""
    k = kernel("v5")
    a = k.domain_alloc()
    rec = Recorder()
    with sync.installed(rec):
        k.aux_attach_device(a, k.devices[0])
        k.aux_detach_device(a, k.devices[0])
    seq = [(kind, label) for kind, label, _h in rec.events if "pasid" in label]
    assert seq[:3] == [
        ("read", "dmar_domain.default_pasid"),
        ("point", "pasid_alloc"),
        ("write", "dmar_domain.default_pasid"),
    ]
    for kind, label, held in rec.events:
        if label in ("dmar_domain.default_pasid", "pasid_alloc"):
            assert "device_domain_lock" not in held, (kind, label)
    frees = [held for _k, label, held in rec.events if label == "pasid_free"]
    assert frees and all("device_domain_lock" in h for h in frees)  # freed by unlink


def test_list_model() -> None:
    """list_add/list_del/list_check on their own (what "corrupt" means in the model)."""
    h1 = ListHead("info1", "info1->auxiliary_domains", head=True)
    h2 = ListHead("info2", "info2->auxiliary_domains", head=True)
    node = ListHead("domain", "domain->auxd", head=False)
    list_add(node, h1)
    assert list_check(h1) == (["domain"], None)
    list_add(node, h2)  # moves the node: h1 still points at it
    assert list_check(h2) == (["domain"], None)
    _owners, problem = list_check(h1)
    assert problem is not None and "prev" in problem
    list_del(node)
    assert list_check(h2) == ([], None)
    with pytest.raises(KernelOops):
        list_del(node)
    other: Any = list_check(h1)[1]
    assert "LIST_POISON" in other
