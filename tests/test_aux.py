"""The corrected aux-domain driver (``vtdsim.driver.intel.aux``): PASID lifetime, attachment
records, failure unwinding, teardown order, DMA isolation, and where the locks are held."""

from __future__ import annotations

import errno
from collections.abc import Iterator
from typing import Any

import pytest

from vtdsim.driver import sync
from vtdsim.driver.core import Feature
from vtdsim.driver.intel.aux import INVALID_IOASID, CorrectedAux, aux_attach_allowed
from vtdsim.driver.intel.iommu import DmarDomain
from vtdsim.driver.intel.pasid import pasid_entry_read
from vtdsim.driver.kernel import Kernel
from vtdsim.errors import IommuError

BUF = 0x100000  # test buffers live below the kernel's frames (16 MiB)


@pytest.fixture
def k() -> Iterator[Kernel]:
    kern = Kernel.for_testing(ndev=2)
    for dev in kern.devices:
        kern.dev_enable_feature(dev, Feature.AUX)
    before = kern.accounting()
    yield kern
    assert kern.audit(full=True) == []
    for d in list(kern.domains):
        for dev in kern.devices:
            while kern.device_state(dev).aux.get(d):
                kern.aux_detach_device(d, dev)
        kern.domain_free(d)
    assert kern.accounting() == before
    assert kern.audit(full=True) == []


def errno_of(fn: Any, *args: Any) -> int:
    try:
        fn(*args)
    except IommuError as e:
        return e.errno
    return 0


def test_pasid_lowest_free_shared_and_forgotten(k: Kernel) -> None:
    d0, d1 = k.devices
    a, b, c = (k.domain_alloc() for _ in range(3))
    k.aux_attach_device(a, d0)
    k.aux_attach_device(b, d0)
    assert (k.aux_get_pasid(a, d0), k.aux_get_pasid(b, d0)) == (1, 2)
    k.aux_attach_device(a, d1)  # shared by every device the domain is attached to
    assert k.aux_get_pasid(a, d1) == 1
    assert k.ops.pasid_allocator.allocated() == [1, 2]
    k.aux_detach_device(a, d0)
    assert k.aux_get_pasid(a, d1) == 1  # still attached to d1
    k.aux_detach_device(a, d1)
    # released by the last detach, and forgotten
    assert k.ops.pasid_allocator.allocated() == [2]
    assert isinstance(a, DmarDomain) and a.default_pasid == INVALID_IOASID
    assert errno_of(k.aux_get_pasid, a, d0) == errno.EINVAL
    k.aux_attach_device(c, d1)
    assert k.aux_get_pasid(c, d1) == 1  # the lowest free one again
    assert k.audit(full=True) == []
    k.aux_detach_device(b, d0)
    k.aux_detach_device(c, d1)


def test_attach_allowed_predicate(k: Kernel) -> None:
    d0 = k.devices[0]
    info = k.ops.info(d0)
    un = k.domain_alloc("unmanaged")
    dma = k.domain_alloc("dma")
    assert isinstance(un, DmarDomain) and isinstance(dma, DmarDomain)
    assert aux_attach_allowed(info, un)
    assert not aux_attach_allowed(info, dma)
    k.dev_disable_feature(d0, Feature.AUX)
    assert not aux_attach_allowed(info, un)
    assert errno_of(k.aux_attach_device, un, d0) == errno.EPERM
    k.dev_enable_feature(d0, Feature.AUX)


def test_pasid_bounded_by_device_max() -> None:
    k = Kernel.for_testing(ndev=2, pasid_bits=1)  # max_pasids = 2: only PASID 1 usable
    d0, d1 = k.devices
    for dev in (d0, d1):
        k.dev_enable_feature(dev, Feature.AUX)
    a, b = k.domain_alloc(), k.domain_alloc()
    before = k.accounting()
    k.aux_attach_device(a, d0)
    assert k.aux_get_pasid(a, d0) == 1
    mid = k.accounting()
    assert errno_of(k.aux_attach_device, b, d0) == errno.ENOSPC
    assert k.accounting() == mid
    assert k.audit(full=True) == []
    k.aux_detach_device(a, d0)
    assert k.accounting() == before


def test_domain_pasid_beyond_second_device() -> None:
    from vtdsim.hw.platform import Platform

    p = Platform(1 << 32)
    p.add_unit()
    wide = p.add_device("00:02.0", pasid_bits=20, ats=True)
    narrow = p.add_device("00:03.0", pasid_bits=1, ats=True)
    k = Kernel(p)
    for dev in (wide, narrow):
        k.dev_enable_feature(dev, Feature.AUX)
    x, a = k.domain_alloc(), k.domain_alloc()
    k.aux_attach_device(x, wide)  # takes PASID 1
    k.aux_attach_device(a, wide)  # PASID 2: the narrow device cannot tag it
    before = k.accounting()
    assert errno_of(k.aux_attach_device, a, narrow) == errno.EINVAL
    assert k.accounting() == before
    assert k.audit(full=True) == []


def test_repeated_attach_counts_users(k: Kernel) -> None:
    d0 = k.devices[0]
    a = k.domain_alloc()
    k.map(a, 0x2000, BUF, 0x1000)
    k.platform.memory.write(BUF, b"users!")
    k.aux_attach_device(a, d0)
    before = k.accounting()
    k.aux_attach_device(a, d0)  # a second mdev of the same parent in the same domain
    assert k.accounting() == before  # no second PASID, DID or entry
    aux = k.ops.aux
    assert isinstance(aux, CorrectedAux)
    assert [u for *_x, u in aux.attachments()] == [2]
    pasid = k.aux_get_pasid(a, d0)
    k.aux_detach_device(a, d0)
    assert d0.dma_read(0x2000, 6, pasid=pasid).data == b"users!"  # one user left
    k.aux_detach_device(a, d0)
    assert not d0.dma_read(0x2000, 6, pasid=pasid).ok


def test_failed_attach_leaves_no_trace(k: Kernel) -> None:
    d0 = k.devices[0]
    squatter = k.domain_alloc()
    k.attach_device_pasid(squatter, d0, 1)  # PASID 1's entry is taken on d0
    a = k.domain_alloc()
    before = k.accounting()
    # the allocator hands out PASID 1 (free in the allocator), the entry setup finds it
    # present: -EBUSY, and everything is unwound
    assert errno_of(k.aux_attach_device, a, d0) == errno.EBUSY
    assert k.accounting() == before
    assert isinstance(a, DmarDomain) and a.default_pasid == INVALID_IOASID and a.auxd_refcnt == 0
    assert not a.iommu_array
    assert k.audit(full=True) == []
    k.detach_device_pasid(squatter, d0, 1)
    k.aux_attach_device(a, d0)  # works once the entry is free
    assert k.aux_get_pasid(a, d0) == 1


def test_entry_contents_and_teardown_order(k: Kernel) -> None:
    d0 = k.devices[0]
    a = k.domain_alloc()
    assert isinstance(a, DmarDomain) and a.pgtable is not None
    k.aux_attach_device(a, d0)
    pasid = k.aux_get_pasid(a, d0)
    info = k.ops.info(d0)
    e = pasid_entry_read(info, pasid)
    assert e is not None
    did = a.iommu_array[info.iommu.seq_id].did
    assert (e["P"], e["PGTT"], e["DID"], e["SLPTPTR"]) == (1, 2, did, a.pgtable.pgd)
    assert did >= 2  # DIDs 0 and 1 are reserved in scalable mode
    iommu = info.iommu
    iommu.qi_trace = []
    k.aux_detach_device(a, d0)
    types = [desc[0] & 0xF for desc in iommu.qi_trace]
    # intel_pasid_tear_down_entry: PASID-cache, IOTLB (DSI for second level), device-TLB
    # (PASID form), each completed by a wait descriptor
    assert types == [0x7, 0x5, 0x2, 0x5, 0x8, 0x5]
    e = pasid_entry_read(info, pasid)
    assert e is not None and e["P"] == 0
    assert not a.iommu_array  # DID released


def test_dma_isolation_and_fault_after_detach(k: Kernel) -> None:
    d0, d1 = k.devices
    mem = k.platform.memory
    a, b = k.domain_alloc(), k.domain_alloc()
    k.map(a, 0x4000, BUF, 0x1000)
    k.map(b, 0x4000, BUF + 0x1000, 0x1000)
    mem.write(BUF, b"domain-a")
    mem.write(BUF + 0x1000, b"domain-b")
    k.aux_attach_device(a, d0)
    k.aux_attach_device(b, d0)
    k.aux_attach_device(b, d1)
    pa, pb = k.aux_get_pasid(a, d0), k.aux_get_pasid(b, d0)
    assert d0.dma_read(0x4000, 8, pasid=pa).data == b"domain-a"
    assert d0.dma_read(0x4000, 8, pasid=pb).data == b"domain-b"
    assert d1.dma_read(0x4000, 8, pasid=pb).data == b"domain-b"
    assert not d1.dma_read(0x4000, 8, pasid=pa).ok  # a is not attached to d1
    assert not d0.dma_read(0x5000, 8, pasid=pa).ok  # unmapped in a
    assert not d0.dma_read(0x4000, 8).ok  # the RID has no domain
    # ATS cached the translations in the device-TLB; detach must leave nothing stale
    k.aux_detach_device(a, d0)
    r = d0.dma_read(0x4000, 8, pasid=pa)
    assert not r.ok and r.fault is not None
    assert d0.dma_read(0x4000, 8, pasid=pb).data == b"domain-b"  # others unaffected
    # unmap with a live attachment: strict IOTLB + device-TLB flush
    k.unmap(b, 0x4000, 0x1000)
    assert not d0.dma_read(0x4000, 8, pasid=pb).ok
    assert not d1.dma_read(0x4000, 8, pasid=pb).ok
    k.aux_detach_device(b, d0)
    k.aux_detach_device(b, d1)


def test_domain_free_refused_while_aux_attached(k: Kernel) -> None:
    a = k.domain_alloc()
    k.aux_attach_device(a, k.devices[0])
    assert errno_of(k.domain_free, a) == errno.EBUSY
    k.aux_detach_device(a, k.devices[0])
    k.domain_free(a)


class Recorder:
    """A sync backend that records lock events and scheduling points (one logical thread)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, frozenset[str]]] = []
        self.held: set[str] = set()

    def acquire(self, lock: sync.SpinLock) -> None:
        lock.owner = 1
        self.held.add(lock.name)

    def release(self, lock: sync.SpinLock) -> None:
        lock.owner = None
        self.held.discard(lock.name)

    def access(self, label: str, key: object, write: bool) -> None:
        self.events.append(("write" if write else "read", label, frozenset(self.held)))

    def point(self, label: str) -> None:
        self.events.append(("point", label, frozenset(self.held)))

    def ident(self) -> object:
        return 1


def test_pasid_taken_and_released_under_device_domain_lock(k: Kernel) -> None:
    d0 = k.devices[0]
    a = k.domain_alloc()
    rec = Recorder()
    with sync.installed(rec):
        k.aux_attach_device(a, d0)
        k.aux_detach_device(a, d0)
    pasid_points = [e for e in rec.events if e[1] in ("pasid_alloc", "pasid_free")]
    assert [e[1] for e in pasid_points] == ["pasid_alloc", "pasid_free"]
    assert all("device_domain_lock" in e[2] for e in pasid_points)
    # no unlocked access to domain state on the corrected path
    assert not [e for e in rec.events if e[1].startswith("dmar_domain.")]


def test_enable_aux_needs_scalable_mode_and_pasid() -> None:
    from vtdsim.hw.caps import Capabilities

    k = Kernel.for_testing(ndev=1, caps=Capabilities(pasid=False))
    dev = k.devices[0]
    assert not k.dev_has_feature(dev, Feature.AUX)
    assert errno_of(k.dev_enable_feature, dev, Feature.AUX) == errno.EINVAL
    k2 = Kernel.for_testing(ndev=1)
    k2.iommus[0].sm = False  # as booting with intel_iommu=sm_off would leave it
    assert errno_of(k2.dev_enable_feature, k2.devices[0], Feature.AUX) == errno.EINVAL
    assert not k2.dev_feature_enabled(k2.devices[0], Feature.AUX)


def test_audit_detects_table_corruption(k: Kernel) -> None:
    """audit(full=True) reads the PASID tables back: an entry cleared behind the driver's
    back, or a stray present entry, is reported."""
    from vtdsim.driver.intel.pasid import intel_pasid_get_entry

    d0 = k.devices[0]
    a = k.domain_alloc()
    k.aux_attach_device(a, d0)
    pasid = k.aux_get_pasid(a, d0)
    info = k.ops.info(d0)
    mem = k.platform.memory
    pte = intel_pasid_get_entry(info, pasid)
    saved = mem.read_qwords(pte, 8)
    mem.write64(pte, 0)
    assert k.audit() == []  # the cheap audit trusts the mirror
    assert any("programmed, absent" in p for p in k.audit(full=True))
    mem.write_qwords(pte, saved)
    stray = intel_pasid_get_entry(info, pasid + 1)
    mem.write_qwords(stray, saved)
    assert any("driver programmed nothing" in p for p in k.audit(full=True))
    mem.write_qwords(stray, (0,) * 8)
    assert k.audit(full=True) == []
    k.aux_detach_device(a, d0)


def test_accounting_snapshot(k: Kernel) -> None:
    d0 = k.devices[0]
    before = k.accounting()
    a = k.domain_alloc()
    k.aux_attach_device(a, d0)
    acc = k.accounting()
    assert acc.pasids == (1,)
    assert acc.dids == (("dmar0", (2,)),)
    assert acc.domains == before.domains + 1
    assert dict(acc.frames)["pgtable"] == dict(before.frames).get("pgtable", 0) + 1
    assert acc != before
    k.aux_detach_device(a, d0)
    k.domain_free(a)
    assert k.accounting() == before
