"""Mediated devices and VMs over aux domains: isolation, PASID tagging, revocation."""

from __future__ import annotations

import errno
from collections.abc import Iterator

import pytest

from vtdsim.driver.core import Feature
from vtdsim.driver.kernel import Kernel
from vtdsim.driver.mdev import MdevParent, Vm
from vtdsim.errors import ArgumentError, IommuError

HOST = 0x200000  # explicit host ranges below the kernel's frames


@pytest.fixture
def k() -> Iterator[Kernel]:
    kern = Kernel.for_testing(ndev=2)
    before = kern.accounting()
    yield kern
    assert kern.audit(full=True) == []
    # every test unassigns what it assigned: no domain, PASID or DID left
    # and no page-table page either: the whole accounting (PASIDs, DIDs, table pages by tag,
    # domains; leaf PASID tables are kept by design, see Accounting) is back where it was
    assert kern.accounting() == before


def test_parent_enables_aux(k: Kernel) -> None:
    dev = k.devices[0]
    assert not k.dev_feature_enabled(dev, Feature.AUX)
    MdevParent(k, dev)
    assert k.dev_feature_enabled(dev, Feature.AUX)


def test_two_vms_isolated(k: Kernel) -> None:
    mem = k.platform.memory
    parent = MdevParent(k, k.devices[0])
    vm1, vm2 = Vm("vm1", k.frames), Vm("vm2", k.frames)
    vm1.add_ram(0x0, 0x4000)
    vm2.add_ram(0x0, 0x4000)
    vm2.add_range(0x10000, HOST, 0x1000)
    m1, m2 = parent.create("m1"), parent.create("m2")
    p1 = parent.assign(m1, vm1)
    p2 = parent.assign(m2, vm2)
    assert p1 != p2 and p1 >= 1 and p2 >= 1
    assert m1.pasid == p1 and m2.pasid == p2
    # guest writes through its mdev land in its own RAM
    assert m1.dma_write(0x1000, b"vm1 data").ok
    assert m2.dma_write(0x1000, b"vm2 data").ok
    h1, h2 = vm1.translate(0x1000), vm2.translate(0x1000)
    assert h1 is not None and h2 is not None and h1 != h2
    assert mem.read(h1, 8) == b"vm1 data"
    assert mem.read(h2, 8) == b"vm2 data"
    assert m1.dma_read(0x1000, 8).data == b"vm1 data"
    assert m2.dma_read(0x1000, 8).data == b"vm2 data"
    # vm1 has nothing at 0x10000; vm2 does: m1 faults, m2 reads its explicit range
    mem.write(HOST, b"vm2 mmio")
    r = m1.dma_read(0x10000, 8)
    assert not r.ok and r.fault is not None and r.fault.pasid == p1
    assert m2.dma_read(0x10000, 8).data == b"vm2 mmio"
    # beyond the VM's RAM
    assert not m1.dma_read(0x4000, 8).ok
    # the parent's own RID is not a path into either VM
    assert not parent.dev.dma_read(0x1000, 8).ok
    # every DMA equals the VM's reference translation
    for m, vm in ((m1, vm1), (m2, vm2)):
        for gpa in range(0, 0x5000, 0x1000):
            res = m.dma_read(gpa, 4)
            hpa = vm.translate(gpa)
            assert res.ok == (hpa is not None)
            if hpa is not None:
                assert res.data == mem.read(hpa, 4)
    parent.unassign(m1)
    parent.unassign(m2)
    vm1.release()
    vm2.release()


def test_revocation_faults_at_once(k: Kernel) -> None:
    parent = MdevParent(k, k.devices[0])
    vm = Vm("vm", k.frames)
    vm.add_ram(0x0, 0x2000)
    m = parent.create("m")
    pasid = parent.assign(m, vm)
    assert m.dma_write(0x0, b"before").ok
    assert m.dma_read(0x0, 6).data == b"before"  # IOTLB and device-TLB now hold it
    dev = parent.dev
    assert dev.devtlb_statistics().entries >= 1
    parent.unassign(m)
    assert m.pasid == pasid  # the device still tags its old PASID...
    r = m.dma_read(0x0, 6)
    assert not r.ok  # ...and faults at once: nothing stale survived the detach
    assert not m.dma_write(0x0, b"after!").ok
    assert not m.dma_write(0x1000, b"after!").ok
    vm.release()


def test_ram_added_after_assignment_is_mapped(k: Kernel) -> None:
    parent = MdevParent(k, k.devices[1])
    vm = Vm("vm", k.frames)
    vm.add_ram(0x0, 0x1000)
    m = parent.create("m")
    parent.assign(m, vm)
    assert not m.dma_read(0x100000, 4).ok
    vm.add_ram(0x100000, 0x1000)
    assert m.dma_write(0x100000, b"late").ok
    hpa = vm.translate(0x100000)
    assert hpa is not None and k.platform.memory.read(hpa, 4) == b"late"
    parent.remove(m)  # unassigns
    assert m.vm is None and m.domain is None
    vm.release()


def test_assign_errors_leave_nothing(k: Kernel) -> None:
    parent = MdevParent(k, k.devices[0])
    vm = Vm("vm", k.frames)
    vm.add_ram(0x0, 0x3000)
    m = parent.create("m")
    with pytest.raises(ArgumentError):
        parent.create("m")
    before = k.accounting()
    k.injector.fail("pasid")
    with pytest.raises(IommuError) as ei:
        parent.assign(m, vm)
    assert ei.value.errno == errno.ENOMEM
    assert m.vm is None and m.domain is None and m.pasid is None
    assert k.accounting() == before
    with pytest.raises(ArgumentError):
        m.dma_read(0, 4)  # never assigned: no PASID to tag
    parent.assign(m, vm)
    with pytest.raises(ArgumentError):
        parent.assign(m, vm)
    with pytest.raises(ArgumentError):
        vm.release()  # still assigned
    parent.unassign(m)
    with pytest.raises(ArgumentError):
        parent.unassign(m)
    vm.release()


def test_vm_range_checks(k: Kernel) -> None:
    vm = Vm("vm")
    vm.add_range(0x0, HOST, 0x2000)
    with pytest.raises(ArgumentError, match="overlapping"):
        vm.add_range(0x1000, HOST, 0x1000)
    with pytest.raises(ArgumentError):
        vm.add_range(0x10001, HOST, 0x1000)
    with pytest.raises(ArgumentError):
        vm.add_ram(0x20000, 0x1000)  # no frame allocator
    assert vm.translate(0x1234) == HOST + 0x1234
    assert vm.translate(0x2000) is None


def test_add_range_failure_unwinds_every_mdev(k: Kernel) -> None:
    parent = MdevParent(k, k.devices[0])
    vm = Vm("vm", k.frames)
    m1, m2 = parent.create("m1"), parent.create("m2")
    parent.assign(m1, vm)
    parent.assign(m2, vm)
    far = 0x7F_0000_0000  # needs new page-table pages in each domain
    k.injector.fail("pgtable", after=3)  # m1's map takes 3 tables, m2's first one fails
    with pytest.raises(IommuError):
        vm.add_range(far, HOST, 0x1000)
    k.injector.clear()
    assert vm.translate(far) is None
    for m in (m1, m2):
        assert m.domain is not None and k.iova_to_phys(m.domain, far) == 0
        assert not m.dma_read(far, 4).ok
    vm.add_range(far, HOST, 0x1000)  # and it works afterwards
    assert m1.dma_read(far, 4).ok and m2.dma_read(far, 4).ok
    parent.unassign(m1)
    parent.unassign(m2)
