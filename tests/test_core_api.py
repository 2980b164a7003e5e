"""The core API's generic semantics (errnos, argument checks, "state unchanged on error"), run
over the mock driver and over the Intel driver."""

from __future__ import annotations

import errno
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from vtdsim.driver.core import (
    IOMMU_READ,
    DomainType,
    Feature,
    IommuCore,
    IommuDomain,
)
from vtdsim.driver.mock import MockDevice, MockIommuOps
from vtdsim.errors import ArgumentError, IommuError


def _mock() -> tuple[IommuCore, list[Any]]:
    core = IommuCore(MockIommuOps())
    devs = [MockDevice("m0", 20), MockDevice("m1", 8), MockDevice("m2", 0)]
    for d in devs:
        core.probe_device(d)
    return core, devs


def _intel() -> tuple[IommuCore, list[Any]]:
    from vtdsim.driver.kernel import Kernel

    k = Kernel.for_testing(ndev=2, nopasid_devices=1)
    return k, k.devices


@pytest.fixture(params=["mock", "intel"])
def env(request: pytest.FixtureRequest) -> Iterator[tuple[IommuCore, list[Any]]]:
    core, devs = _mock() if request.param == "mock" else _intel()
    before = _snapshot(core)
    yield core, devs
    # every test leaves what it allocated freed again (accounting fixture)
    for d in list(core.domains):
        for kind, dev, pasid, dom in list(core.attachments()):
            if dom is not d:
                continue
            if kind == "rid":
                core.detach_device(d, dev)
            elif kind == "aux":
                while core.device_state(dev).aux.get(d):
                    core.aux_detach_device(d, dev)
            else:
                core.detach_device_pasid(d, dev, pasid)
        core.domain_free(d)
    assert _snapshot(core) == before


def _snapshot(core: IommuCore) -> object:
    acc = getattr(core, "accounting", None)
    if acc is None:
        ops = core.ops
        assert isinstance(ops, MockIommuOps)
        return (frozenset(ops.aux_pasids), len(core.domains))
    return acc()


def errno_of(fn: Callable[..., Any], *args: Any) -> int:
    try:
        fn(*args)
    except IommuError as e:
        return e.errno
    return 0


def test_domain_alloc_types(env: tuple[IommuCore, list[Any]]) -> None:
    core, _ = env
    for t in ("unmanaged", "dma", "identity", "blocked"):
        d = core.domain_alloc(t)
        assert d.type is DomainType(t)
        core.domain_free(d)
    with pytest.raises(ArgumentError, match="type='paging'"):
        core.domain_alloc("paging")
    with pytest.raises(ArgumentError):
        core.domain_alloc(3)  # type: ignore[arg-type]


def test_domain_free_errors(env: tuple[IommuCore, list[Any]]) -> None:
    core, devs = env
    d = core.domain_alloc("unmanaged")
    core.attach_device(d, devs[0])
    assert errno_of(core.domain_free, d) == errno.EBUSY
    core.detach_device(d, devs[0])
    core.domain_free(d)
    # use after free: every entry point refuses, naming the domain
    with pytest.raises(IommuError, match="was freed") as ei:
        core.attach_device(d, devs[0])
    assert ei.value.errno == errno.EINVAL
    for call in (
        lambda: core.domain_free(d),
        lambda: core.map(d, 0, 0, 4096),
        lambda: core.unmap(d, 0, 4096),
        lambda: core.iova_to_phys(d, 0),
        lambda: core.aux_attach_device(d, devs[0]),
        lambda: core.attach_device_pasid(d, devs[0], 5),
    ):
        assert errno_of(call) == errno.EINVAL
    with pytest.raises(ArgumentError, match="domain="):
        core.domain_free("not a domain")  # type: ignore[arg-type]


def test_foreign_domain(env: tuple[IommuCore, list[Any]]) -> None:
    core, devs = env
    other = IommuCore(MockIommuOps())
    foreign = other.domain_alloc("unmanaged")
    with pytest.raises(IommuError, match="another IOMMU driver") as ei:
        core.attach_device_pasid(foreign, devs[0], 3)
    assert ei.value.errno == errno.EINVAL


def test_unknown_device(env: tuple[IommuCore, list[Any]]) -> None:
    core, _ = env
    d = core.domain_alloc("unmanaged")
    stranger = MockDevice("stranger")
    for call in (
        lambda: core.attach_device(d, stranger),
        lambda: core.aux_attach_device(d, stranger),
        lambda: core.attach_device_pasid(d, stranger, 1),
        lambda: core.dev_enable_feature(stranger, Feature.AUX),
        lambda: core.dev_has_feature("99:1f.7", Feature.AUX),
    ):
        assert errno_of(call) == errno.ENODEV
    core.domain_free(d)


def test_attach_detach_rid(env: tuple[IommuCore, list[Any]]) -> None:
    core, devs = env
    a = core.domain_alloc("unmanaged")
    b = core.domain_alloc("unmanaged")
    core.attach_device(a, devs[0])
    assert core.get_domain(devs[0]) is a
    # __iommu_attach_group: the group already has a non-default domain
    assert errno_of(core.attach_device, b, devs[0]) == errno.EBUSY
    assert errno_of(core.attach_device, a, devs[0]) == errno.EBUSY
    assert errno_of(core.detach_device, b, devs[0]) == errno.EINVAL
    assert core.get_domain(devs[0]) is a
    core.attach_device(a, devs[1])  # one domain, two devices
    core.detach_device(a, devs[0])
    core.detach_device(a, devs[1])
    assert core.get_domain(devs[0]) is None
    core.domain_free(a)
    core.domain_free(b)


def test_map_unmap_errors(env: tuple[IommuCore, list[Any]]) -> None:
    core, _ = env
    d = core.domain_alloc("unmanaged")
    core.map(d, 0x10000, 0x200000, 0x3000, IOMMU_READ)
    assert core.iova_to_phys(d, 0x11234) == 0x201234
    assert core.iova_to_phys(d, 0x13000) == 0
    assert errno_of(core.map, d, 0x10000, 0x300000, 0x1000) == errno.EEXIST
    assert errno_of(core.map, d, 0x10800, 0x300000, 0x1000) == errno.EINVAL
    assert errno_of(core.map, d, 0x20000, 0x300010, 0x1000) == errno.EINVAL
    assert errno_of(core.map, d, 0x20000, 0x300000, 0x1001) == errno.EINVAL
    assert errno_of(core.map, d, -4096, 0x300000, 0x1000) == errno.EINVAL
    assert errno_of(core.map, d, (1 << 48) - 0x1000, 0x300000, 0x2000) == errno.EFAULT
    with pytest.raises(ArgumentError, match="iova="):
        core.map(d, "0x1000", 0, 4096)  # type: ignore[arg-type]
    with pytest.raises(ArgumentError, match="prot="):
        core.map(d, 0x40000, 0, 4096, 0x100)
    # nothing of the failed maps remained
    assert core.iova_to_phys(d, 0x20000) == 0
    assert core.iova_to_phys(d, 0x10000) == 0x200000
    assert errno_of(core.unmap, d, 0x10800, 0x1000) == errno.EINVAL
    assert core.unmap(d, 0x10000, 0x3000) == 0x3000
    assert core.iova_to_phys(d, 0x10000) == 0
    # Linux's intel_iommu_unmap returns the size whether or not anything was mapped
    assert core.unmap(d, 0x10000, 0x3000) == 0x3000
    for t in ("identity", "blocked"):
        x = core.domain_alloc(t)
        assert errno_of(core.map, x, 0, 0, 4096) == errno.EINVAL
        assert errno_of(core.unmap, x, 0, 4096) == errno.EINVAL
        core.domain_free(x)
    core.domain_free(d)


def test_features(env: tuple[IommuCore, list[Any]]) -> None:
    core, devs = env
    assert core.dev_has_feature(devs[0], Feature.AUX)
    assert not core.dev_has_feature(devs[-1], Feature.AUX)  # no PASID capability
    assert not core.dev_feature_enabled(devs[0], Feature.AUX)
    assert errno_of(core.dev_enable_feature, devs[-1], Feature.AUX) == errno.ENODEV
    core.dev_enable_feature(devs[0], "aux")
    assert core.dev_feature_enabled(devs[0], Feature.AUX)
    d = core.domain_alloc("unmanaged")
    core.aux_attach_device(d, devs[0])
    # correction over Linux: disabling AUX under live aux domains is refused
    assert errno_of(core.dev_disable_feature, devs[0], Feature.AUX) == errno.EBUSY
    assert core.dev_feature_enabled(devs[0], Feature.AUX)
    core.aux_detach_device(d, devs[0])
    core.dev_disable_feature(devs[0], Feature.AUX)
    assert not core.dev_feature_enabled(devs[0], Feature.AUX)
    with pytest.raises(ArgumentError, match="feature="):
        core.dev_enable_feature(devs[0], "sv4")
    core.domain_free(d)


def test_aux_errors(env: tuple[IommuCore, list[Any]]) -> None:
    core, devs = env
    d = core.domain_alloc("unmanaged")
    dma = core.domain_alloc("dma")
    # AUX not enabled -> -EPERM (is_aux_domain false)
    assert errno_of(core.aux_attach_device, d, devs[0]) == errno.EPERM
    core.dev_enable_feature(devs[0], Feature.AUX)
    # not an unmanaged domain -> -EPERM
    assert errno_of(core.aux_attach_device, dma, devs[0]) == errno.EPERM
    # an unmanaged domain on the RID of an AUX-enabled device -> -EPERM
    assert errno_of(core.attach_device, d, devs[0]) == errno.EPERM
    # no default PASID yet -> -EINVAL
    assert errno_of(core.aux_get_pasid, d, devs[0]) == errno.EINVAL
    assert errno_of(core.aux_detach_device, d, devs[0]) == errno.EINVAL
    core.aux_attach_device(d, devs[0])
    pasid = core.aux_get_pasid(d, devs[0])
    assert pasid >= 1
    # the DMA domain may still use the RID
    core.attach_device(dma, devs[0])
    core.detach_device(dma, devs[0])
    core.aux_detach_device(d, devs[0])
    assert errno_of(core.aux_get_pasid, d, devs[0]) == errno.EINVAL
    core.dev_disable_feature(devs[0], Feature.AUX)
    core.domain_free(d)
    core.domain_free(dma)


def test_pasid_attach_errors_leave_state(env: tuple[IommuCore, list[Any]]) -> None:
    core, devs = env
    a = core.domain_alloc("unmanaged")
    b = core.domain_alloc("unmanaged")
    core.attach_device_pasid(a, devs[0], 7)
    assert errno_of(core.attach_device_pasid, b, devs[0], 7) == errno.EBUSY
    assert errno_of(core.detach_device_pasid, b, devs[0], 7) == errno.EINVAL
    assert core.get_domain_for_dev_pasid(devs[0], 7) is a
    with pytest.raises(ArgumentError, match="pasid="):
        core.attach_device_pasid(b, devs[0], 7.0)  # type: ignore[arg-type]
    assert errno_of(core.attach_device_pasid, b, devs[0], -1) == errno.EINVAL
    core.replace_device_pasid(b, devs[0], 7)
    assert a.pasid_attachments == set()
    assert core.get_domain_for_dev_pasid(devs[0], 7) is b
    core.detach_device_pasid(b, devs[0], 7)
    core.domain_free(a)
    core.domain_free(b)


def test_one_domain_many_devices_one_device_many_domains(
    env: tuple[IommuCore, list[Any]],
) -> None:
    core, devs = env
    doms = [core.domain_alloc("unmanaged") for _ in range(3)]
    for dev in devs[:2]:
        core.dev_enable_feature(dev, Feature.AUX)
        for d in doms:
            core.aux_attach_device(d, dev)
    pasids = [core.aux_get_pasid(d, devs[0]) for d in doms]
    assert len(set(pasids)) == 3  # one PASID per domain
    assert pasids == [core.aux_get_pasid(d, devs[1]) for d in doms]  # shared by devices
    for dev in devs[:2]:
        for d in doms:
            core.aux_detach_device(d, dev)
        core.dev_disable_feature(dev, Feature.AUX)
    for d in doms:
        core.domain_free(d)


def test_domain_repr_and_listing(env: tuple[IommuCore, list[Any]]) -> None:
    core, _ = env
    d = core.domain_alloc()
    assert isinstance(d, IommuDomain)
    assert "unmanaged" in repr(d)
    assert d in core.domains
    core.domain_free(d)
    assert "freed" in repr(d)


# -- Intel-only errno paths and "state unchanged" --------------------------------------------


def test_invalid_calls_change_nothing() -> None:
    """Every refused call leaves memory (all tables, the invalidation queue), accounting and
    the core's attachments exactly as they were."""
    from vtdsim.driver.kernel import Kernel

    k = Kernel.for_testing(ndev=2, nopasid_devices=1)
    d0, d1, nopasid = k.devices
    a = k.domain_alloc("unmanaged")
    b = k.domain_alloc("unmanaged")
    gone = k.domain_alloc("unmanaged")
    k.domain_free(gone)
    k.map(a, 0x1000, 0x100000, 0x1000)
    k.attach_device(a, d0)
    k.attach_device_pasid(b, d1, 9)
    k.dev_enable_feature(d1, Feature.AUX)
    mem = k.platform.memory
    calls: list[Callable[[], object]] = [
        lambda: k.attach_device(b, d0),  # EBUSY
        lambda: k.attach_device(gone, d1),  # freed
        lambda: k.attach_device(b, d1),  # EPERM: AUX enabled, unmanaged
        lambda: k.detach_device(b, d0),  # EINVAL: not attached
        lambda: k.map(a, 0x1000, 0x200000, 0x1000),  # EEXIST
        lambda: k.map(a, 0x1800, 0x200000, 0x1000),  # unaligned
        lambda: k.map(a, 1 << 48, 0x200000, 0x1000),  # EFAULT
        lambda: k.map(a, "x", 0x200000, 0x1000),  # type: ignore[arg-type]
        lambda: k.unmap(a, 0x1000, 0x800),  # unaligned
        lambda: k.domain_free(a),  # EBUSY
        lambda: k.aux_attach_device(a, d0),  # EPERM: AUX not enabled on d0
        lambda: k.aux_detach_device(b, d1),  # EINVAL
        lambda: k.attach_device_pasid(a, d1, 9),  # EBUSY
        lambda: k.attach_device_pasid(a, d1, 0),  # EINVAL
        lambda: k.attach_device_pasid(a, d1, 1 << 20),  # EINVAL: >= max_pasids
        lambda: k.attach_device_pasid(a, nopasid, 1),  # EINVAL: no PASID capability
        lambda: k.replace_device_pasid(a, d1, 10),  # EINVAL: nothing to replace
        lambda: k.detach_device_pasid(a, d1, 9),  # EINVAL: other domain
        lambda: k.dev_enable_feature(nopasid, Feature.AUX),  # ENODEV
        lambda: k.dev_enable_feature("77:00.0", Feature.AUX),  # ENODEV: unknown
        lambda: k.aux_get_pasid(b, d1),  # EINVAL
    ]
    for call in calls:
        mem_before = mem.snapshot()
        state = (
            k.accounting(),
            sorted((x[0], id(x[1]), x[2], x[3].serial) for x in k.attachments()),
        )
        with pytest.raises((IommuError, ArgumentError)) as ei:
            call()
        assert str(ei.value)  # every error names what it refused
        assert mem.snapshot() == mem_before
        assert (
            k.accounting(),
            sorted((x[0], id(x[1]), x[2], x[3].serial) for x in k.attachments()),
        ) == state
    assert k.audit(full=True) == []


def test_did_exhaustion_enospc() -> None:
    from vtdsim.driver.kernel import Kernel
    from vtdsim.hw.caps import Capabilities

    k = Kernel.for_testing(ndev=1, caps=Capabilities(nd=0))  # 16 DIDs, 0 and 1 reserved
    dev = k.devices[0]
    doms = [k.domain_alloc() for _ in range(15)]
    for p, d in enumerate(doms[:14], start=1):
        k.attach_device_pasid(d, dev, p)
    before = k.accounting()
    assert errno_of(k.attach_device_pasid, doms[14], dev, 15) == errno.ENOSPC
    assert k.accounting() == before
    assert k.get_domain_for_dev_pasid(dev, 15) is None
    assert k.audit(full=True) == []


def test_prepare_attach_efault_on_narrow_unit() -> None:
    """prepare_domain_attach_device: a domain mapping beyond a unit's address width cannot
    be attached to a device behind that unit (-EFAULT)."""
    from vtdsim.driver.kernel import Kernel
    from vtdsim.hw.caps import Capabilities
    from vtdsim.hw.platform import Platform

    p = Platform(1 << 32)
    p.add_unit(Capabilities(), name="wide", scope=["00:02.0"])
    p.add_unit(Capabilities(sagaw=frozenset({39}), mgaw=39), name="narrow", scope=["00:03.0"])
    wide = p.add_device("00:02.0", pasid_bits=20)
    narrow = p.add_device("00:03.0", pasid_bits=20)
    k = Kernel(p)
    d = k.domain_alloc()
    k.map(d, 1 << 40, 0x100000, 0x1000)
    k.attach_device(d, wide)
    before = k.accounting()
    assert errno_of(k.attach_device, d, narrow) == errno.EFAULT
    assert errno_of(k.attach_device_pasid, d, narrow, 3) == errno.EFAULT
    assert k.accounting() == before
    k.detach_device(d, wide)
