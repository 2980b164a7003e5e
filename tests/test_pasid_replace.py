"""``replace_device_pasid`` on the Intel driver swaps the PASID entry in place (Linux 6.13+
``intel_pasid_replace_second_level`` + ``intel_pasid_flush_present``): DMA at the PASID never
faults during a replace, stale translations of the old domain are gone afterwards, and a failed
replace leaves the entry and the old domain as they were."""

from __future__ import annotations

import errno
from collections.abc import Iterable, Sequence
from typing import Any

import pytest

from vtdsim.driver import sync
from vtdsim.driver.intel import pasid as P
from vtdsim.driver.kernel import Kernel
from vtdsim.errors import IommuError
from vtdsim.explore import explore
from vtdsim.explore.base import ThreadFn, Workload

IOVA = 0x40000
A, B = 0x100000, 0x200000  # where the old and the new domain map IOVA
PASID = 5


def _world() -> tuple[Kernel, Any, Any, Any]:
    k = Kernel.for_testing(ndev=1)
    dev = k.devices[0]
    mem = k.platform.memory
    mem.write64(A, 0xAAAA)
    mem.write64(B, 0xBBBB)
    old = k.domain_alloc("unmanaged")
    new = k.domain_alloc("unmanaged")
    k.map(old, IOVA, A, 0x1000)
    k.map(new, IOVA, B, 0x1000)
    k.attach_device_pasid(old, dev, PASID)
    return k, dev, old, new


def _read(dev: Any) -> int | None:
    r = dev.dma_read(IOVA, 8, pasid=PASID)
    return int.from_bytes(r.data, "little") if r.ok else None


def test_replace_translates_through_the_new_domain_with_no_stale_entry() -> None:
    k, dev, old, new = _world()
    assert _read(dev) == 0xAAAA  # fills the context, PASID and IOTLB caches and the devTLB
    io = k.iommus[0]
    old_did = old.iommu_array[io.seq_id].did
    io.qi_trace = []
    k.replace_device_pasid(new, dev, PASID)
    assert _read(dev) == 0xBBBB  # not the old domain's cached translation
    e = P.pasid_entry_read(k.ops.infos[id(dev)], PASID)
    assert e is not None and e["P"] == 1
    assert e["DID"] == new.iommu_array[io.seq_id].did
    assert io.seq_id not in old.iommu_array  # the old domain's DID reference was dropped
    assert k.audit(full=True) == []
    # intel_pasid_flush_present, for the old DID: PASID cache, PASID IOTLB, devTLB, each
    # followed by its own wait descriptor (qi_submit_sync)
    types = [d[0] & 0xF for d in io.qi_trace]
    assert types == [0x7, 0x5, 0x6, 0x5, 0x8, 0x5]
    pc, piotlb = io.qi_trace[0], io.qi_trace[2]
    assert (pc[0] >> 16 & 0xFFFF, piotlb[0] >> 16 & 0xFFFF) == (old_did, old_did)
    assert (pc[0] >> 32 & 0xFFFFF, piotlb[0] >> 32 & 0xFFFFF) == (PASID, PASID)


def test_the_entry_is_present_at_every_flush_of_a_replace() -> None:
    """The teardown-then-setup replace flushed with the entry cleared (P = 0): a DMA racing
    it faulted.  In place, the entry is present whenever the unit could fetch it."""
    k, dev, _old, new = _world()
    info = k.ops.infos[id(dev)]
    mem = k.platform.memory
    pte = P.intel_pasid_get_entry(info, PASID)
    io = k.iommus[0]
    seen: list[int] = []
    submit = io.qi_submit_sync

    def qi_submit_sync(descs: Any) -> None:
        seen.append(mem.read64(pte))
        submit(descs)

    io.qi_submit_sync = qi_submit_sync  # type: ignore[method-assign]
    k.replace_device_pasid(new, dev, PASID)
    assert len(seen) == 3 and all(v & 1 for v in seen)


def test_failed_replace_keeps_the_old_entry_and_domain() -> None:
    k, dev, _old, new = _world()
    assert _read(dev) == 0xAAAA
    info = k.ops.infos[id(dev)]
    before = k.platform.memory.read(P.intel_pasid_get_entry(info, PASID), 64)
    acct = k.accounting()
    k.injector.fail("did")
    with pytest.raises(IommuError) as e:
        k.replace_device_pasid(new, dev, PASID)
    assert e.value.errno == errno.ENOMEM
    assert k.platform.memory.read(P.intel_pasid_get_entry(info, PASID), 64) == before
    assert k.accounting() == acct
    assert _read(dev) == 0xAAAA
    assert k.audit(full=True) == []


class _ReplaceVsDma(Workload):
    """A replace racing two DMAs of the device at the same PASID."""

    name = "replace-vs-dma"

    def setup(self) -> dict[str, Any]:
        k, dev, _old, new = _world()
        return {"k": k, "dev": dev, "new": new, "reads": []}

    def threads(self, w: dict[str, Any]) -> Sequence[tuple[str, ThreadFn]]:
        def replace() -> None:
            w["k"].replace_device_pasid(w["new"], w["dev"], PASID)

        def dma() -> None:
            for _ in range(2):
                sync.shared_read("pasid-entry", PASID)  # an unlocked read of the tables
                w["reads"].append(_read(w["dev"]))

        return [("replace", replace), ("dma", dma)]

    def check_end(self, w: dict[str, Any], results: Sequence[object]) -> Iterable[str]:
        for v in w["reads"]:
            if v not in (0xAAAA, 0xBBBB):
                yield f"a DMA during the replace read {v!r} (a fault is None)"
        if _read(w["dev"]) != 0xBBBB:
            yield "after the replace the DMA does not reach the new domain"


def test_no_interleaving_of_a_replace_and_dma_faults() -> None:
    """Exhaustive: every schedule of the replace against the DMAs; with the earlier
    teardown-then-setup replace, a DMA between the two faulted."""
    r = explore(_ReplaceVsDma(), "dfs", stall_s=None)
    assert r.ok and r.exhausted, r.summary()
    assert r.schedules > 10
