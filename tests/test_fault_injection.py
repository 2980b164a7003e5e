"""Allocation-failure injection at every allocation site reachable from each API entry point.

For each entry point: a dry run counts the allocations per site (``FaultInjector.calls``);
then, for every site and every k below its count, a fresh kernel fails the k-th allocation at
that site.  The call must raise an ``IommuError`` (never an allocator error: no double free),
and leave everything as it was: accounting (PASIDs, DIDs, table pages), the core's
attachments, a clean ``audit(full=True)``.  Retried without injection it must then succeed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from vtdsim.driver.core import Feature
from vtdsim.driver.intel.inject import SITES
from vtdsim.driver.kernel import Kernel
from vtdsim.driver.mdev import MdevParent, Vm
from vtdsim.errors import IommuError

Ctx = dict[str, Any]


@dataclass(frozen=True)
class EntryPoint:
    name: str
    setup: Callable[[Kernel], Ctx]
    op: Callable[[Kernel, Ctx], None]
    variant: str = "corrected"


def _aux_ready(k: Kernel) -> Ctx:
    for dev in k.devices:
        k.dev_enable_feature(dev, Feature.AUX)
    return {"d": k.domain_alloc(), "devs": k.devices}


def _aux_second(k: Kernel) -> Ctx:
    ctx = _aux_ready(k)
    k.aux_attach_device(ctx["d"], ctx["devs"][0])
    return ctx


def _pasid_attached(k: Kernel) -> Ctx:
    ctx = {"a": k.domain_alloc(), "b": k.domain_alloc(), "dev": k.devices[0]}
    k.attach_device_pasid(ctx["a"], ctx["dev"], 5)
    return ctx


def _mapped_attached(k: Kernel) -> Ctx:
    d = k.domain_alloc()
    k.attach_device(d, k.devices[0])
    return {"d": d}


def _mdev(k: Kernel) -> Ctx:
    parent = MdevParent(k, k.devices[0])
    vm = Vm("vm", k.frames)
    vm.add_ram(0x0, 0x2000)
    vm.add_range(0x40000000, 0x100000, 0x1000)
    return {"parent": parent, "m": parent.create("m"), "vm": vm}


ENTRY_POINTS = [
    EntryPoint("domain_alloc", lambda k: {}, lambda k, c: c.update(d=k.domain_alloc())),
    EntryPoint(
        "map_4k",
        lambda k: {"d": k.domain_alloc()},
        lambda k, c: k.map(c["d"], 0x7FFF_F000_0000, 0x100000, 0x1000),
    ),
    EntryPoint(
        "map_4m_4k_pages_attached",
        _mapped_attached,
        lambda k, c: k.map(c["d"], 0x1FF000, 0x101000, 0x400000),
    ),
    EntryPoint(
        "attach_device",
        lambda k: {"d": k.domain_alloc()},
        lambda k, c: k.attach_device(c["d"], k.devices[0]),
    ),
    EntryPoint(
        "attach_device_identity",
        lambda k: {"d": k.domain_alloc("identity")},
        lambda k, c: k.attach_device(c["d"], k.devices[1]),
    ),
    EntryPoint(
        "aux_attach_first",
        _aux_ready,
        lambda k, c: k.aux_attach_device(c["d"], c["devs"][0]),
    ),
    EntryPoint(
        "aux_attach_second_device",
        _aux_second,
        lambda k, c: k.aux_attach_device(c["d"], c["devs"][1]),
    ),
    EntryPoint(
        "attach_device_pasid",
        lambda k: {"d": k.domain_alloc()},
        lambda k, c: k.attach_device_pasid(c["d"], k.devices[1], 0x1234),
    ),
    EntryPoint(
        "replace_device_pasid",
        _pasid_attached,
        lambda k, c: k.replace_device_pasid(c["b"], c["dev"], 5),
    ),
    EntryPoint(
        "mdev_assign",
        _mdev,
        lambda k, c: c["parent"].assign(c["m"], c["vm"]),
    ),
    EntryPoint(
        "dev_enable_feature",
        lambda k: {},
        lambda k, c: k.dev_enable_feature(k.devices[0], Feature.AUX),
    ),
]


def _state(k: Kernel) -> object:
    attachments = sorted(
        (kind, id(dev), pasid, dom.serial) for kind, dev, pasid, dom in k.attachments()
    )
    return (k.accounting(), attachments)


def _counts(ep: EntryPoint) -> dict[str, int]:
    k = Kernel.for_testing(ndev=2)
    ctx = ep.setup(k)
    k.injector.calls.clear()
    ep.op(k, ctx)
    return {s: n for s, n in k.injector.calls.items() if s in SITES}


def _cases() -> list[tuple[str, str, int]]:
    out = []
    for ep in ENTRY_POINTS:
        for site, n in sorted(_counts(ep).items()):
            for kth in range(n):
                out.append((ep.name, site, kth))
    return out


CASES = _cases()


def test_every_entry_point_reaches_some_site() -> None:
    reached = {name for name, _s, _k in CASES}
    assert reached == {ep.name for ep in ENTRY_POINTS} - {"dev_enable_feature"}
    sites = {s for _n, s, _k in CASES}
    assert {"pasid", "did", "pgtable", "pasid-table"} <= sites


def test_pasid_dir_site_at_probe() -> None:
    """The "pasid-dir" (and "context") sites are reached at probe: a failing probe leaves
    the device unmanaged and frees what it took."""
    from vtdsim.driver.core import IommuCore
    from vtdsim.driver.intel.dmar import IntelIommu, init_dmars
    from vtdsim.driver.intel.inject import FaultInjector
    from vtdsim.driver.intel.iommu import IntelIommuOps
    from vtdsim.hw.memory import FrameAllocator
    from vtdsim.hw.platform import Platform

    for site in ("pasid-dir", "context"):
        p = Platform(1 << 32)
        p.add_unit()
        dev = p.add_device("00:02.0", pasid_bits=20, ats=True)
        frames = FrameAllocator(p.memory, 16 << 20, p.memory.size)
        inj = FaultInjector()
        inj.attach(frames)
        iommu = IntelIommu(p.units[0], frames, name="dmar0", injector=inj)
        init_dmars([iommu])
        core = IommuCore(IntelIommuOps([iommu]))
        live = dict(frames.live)
        inj.fail(site)
        with pytest.raises(IommuError):
            core.probe_device(dev)
        assert frames.live == live
        with pytest.raises(IommuError):
            core.device_state(dev)
        core.probe_device(dev)  # works without injection


@pytest.mark.parametrize(("name", "site", "kth"), CASES)
def test_injected_failure_unwinds(name: str, site: str, kth: int) -> None:
    ep = next(e for e in ENTRY_POINTS if e.name == name)
    k = Kernel.for_testing(ndev=2)
    ctx = ep.setup(k)
    before = _state(k)
    k.injector.fail(site, after=kth)
    with pytest.raises(IommuError):
        ep.op(k, ctx)
    assert k.injector.injected.get(site) == 1
    assert _state(k) == before
    assert k.audit(full=True) == []
    k.injector.clear()
    ep.op(k, ctx)  # nothing stale blocks a retry
    assert k.audit(full=True) == []
