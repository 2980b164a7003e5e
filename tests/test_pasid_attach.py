"""The iommufd selftest ``iommufd_device_pasid.pasid_attach`` sequence, step by step.

Source of the sequence and of every expected errno: jgunthorpe/linux
tools/testing/selftests/iommu/iommufd.c (``TEST_F(iommufd_device_pasid, pasid_attach)``) and the
fact sheet section 2.1.  iommufd's own layer (hwpt objects, the ``pasid_compat`` flag of
``IOMMU_HWPT_ALLOC_PASID`` and the RID/PASID compatibility rule of ``iommufd/device.c``) is
modelled by the small :class:`Iommufd` helper below; the attach/replace/detach calls underneath
are the core's ``attach_device_pasid`` / ``replace_device_pasid`` / ``detach_device_pasid``, run
over the mock driver (exactly as the selftest runs over ``selftest.c``) and over the Intel
driver.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from vtdsim.driver.core import IommuCore, IommuDomain
from vtdsim.driver.mock import IOMMU_TEST_PASID_RESERVED, MockDevice, MockIommuOps
from vtdsim.errors import IommuError


@dataclass(eq=False)
class Hwpt:
    name: str
    domain: IommuDomain
    pasid_compat: bool


class Iommufd:
    """iommufd device.c's compatibility rules over the core API."""

    def __init__(self, core: IommuCore) -> None:
        self.core = core
        self.rid: dict[int, Hwpt] = {}
        self.pasid: dict[tuple[int, int], Hwpt] = {}

    def hwpt(self, name: str, pasid_compat: bool) -> Hwpt:
        return Hwpt(name, self.core.domain_alloc("unmanaged"), pasid_compat)

    def rid_attach(self, dev: Any, hwpt: Hwpt) -> None:
        """iommufd_device_attach/replace without a PASID: a non-compat hwpt is refused while
        any PASID is attached (-EINVAL)."""
        if not hwpt.pasid_compat and any(k[0] == id(dev) for k in self.pasid):
            raise IommuError(errno.EINVAL, "RID hwpt must be PASID compatible")
        cur = self.rid.get(id(dev))
        if cur is not None:
            self.core.detach_device(cur.domain, dev)
        self.core.attach_device(hwpt.domain, dev)
        self.rid[id(dev)] = hwpt

    def rid_detach(self, dev: Any) -> None:
        cur = self.rid.pop(id(dev))
        self.core.detach_device(cur.domain, dev)

    def _pasid_compat(self, dev: Any, hwpt: Hwpt) -> None:
        if not hwpt.pasid_compat:
            raise IommuError(errno.EINVAL, f"{hwpt.name} was not allocated with ALLOC_PASID")
        rid = self.rid.get(id(dev))
        if rid is not None and not rid.pasid_compat:
            raise IommuError(errno.EINVAL, f"RID hwpt {rid.name} is not PASID compatible")

    def pasid_attach(self, dev: Any, pasid: int, hwpt: Hwpt) -> None:
        self._pasid_compat(dev, hwpt)
        self.core.attach_device_pasid(hwpt.domain, dev, pasid)
        self.pasid[(id(dev), pasid)] = hwpt

    def pasid_replace(self, dev: Any, pasid: int, hwpt: Hwpt) -> None:
        if (id(dev), pasid) not in self.pasid:
            raise IommuError(errno.EINVAL, "nothing attached to replace")
        self._pasid_compat(dev, hwpt)
        self.core.replace_device_pasid(hwpt.domain, dev, pasid)
        self.pasid[(id(dev), pasid)] = hwpt

    def pasid_detach(self, dev: Any, pasid: int) -> None:
        cur = self.pasid.pop((id(dev), pasid), None)
        if cur is not None:
            self.core.detach_device_pasid(cur.domain, dev, pasid)

    def check_hwpt(self, dev: Any, pasid: int) -> IommuDomain | None:
        """IOMMU_TEST_OP_PASID_CHECK_HWPT: the domain the *core* has at (dev, pasid)."""
        return self.core.get_domain_for_dev_pasid(dev, pasid)


def errno_of(fn: Any, *args: Any) -> int:
    try:
        fn(*args)
    except IommuError as e:
        return e.errno
    return 0


def _mock_platform() -> tuple[IommuCore, Any, Any]:
    core = IommuCore(MockIommuOps())
    dev = MockDevice("mock0", pasid_bits=20)
    nopasid = MockDevice("mock1", pasid_bits=0)
    core.probe_device(dev)
    core.probe_device(nopasid)
    return core, dev, nopasid


def _intel_platform() -> tuple[IommuCore, Any, Any]:
    from vtdsim.driver.kernel import Kernel

    k = Kernel.for_testing(ndev=1, nopasid_devices=1)
    return k, k.devices[0], k.devices[1]


@pytest.fixture(params=["mock", "intel"])
def setup(request: pytest.FixtureRequest) -> Iterator[tuple[IommuCore, Any, Any, str]]:
    if request.param == "mock":
        core, dev, nopasid = _mock_platform()
    else:
        core, dev, nopasid = _intel_platform()
    yield core, dev, nopasid, request.param


def test_pasid_attach_sequence(setup: tuple[IommuCore, Any, Any, str]) -> None:
    core, dev, nopasid, kind = setup
    fd = Iommufd(core)
    acc = getattr(core, "accounting", None)
    before = acc() if acc is not None else None

    # 1. detach of a never-attached PASID succeeds
    assert errno_of(fd.pasid_detach, dev, 100) == 0

    # 2. hwpts: a NEST_PARENT without ALLOC_PASID, nested/s2/iopf with it, an IOAS auto-domain
    parent = fd.hwpt("parent", pasid_compat=False)
    nested = [fd.hwpt(f"nested{i}", pasid_compat=True) for i in range(3)]
    iopf = fd.hwpt("iopf", pasid_compat=True)
    s2 = fd.hwpt("s2", pasid_compat=True)
    ioas = fd.hwpt("ioas", pasid_compat=False)

    # 3. RID on parent: PASID attach of s2 -> EINVAL; RID on s2: PASID 100 -> nested0 ok;
    #    RID replace to parent while a PASID is attached -> EINVAL
    fd.rid_attach(dev, parent)
    assert errno_of(fd.pasid_attach, dev, 100, s2) == errno.EINVAL
    fd.rid_attach(dev, s2)
    assert errno_of(fd.pasid_attach, dev, 100, nested[0]) == 0
    assert errno_of(fd.rid_attach, dev, parent) == errno.EINVAL
    assert fd.rid[id(dev)] is s2
    fd.pasid_detach(dev, 100)
    assert fd.check_hwpt(dev, 100) is None

    # 4. no_pasid device: its RID may use PASID-compatible hwpts; PASID attach is refused
    fd.rid_attach(nopasid, s2)
    assert errno_of(fd.pasid_attach, nopasid, 100, parent) == errno.EINVAL
    assert errno_of(fd.pasid_attach, nopasid, 100, s2) == errno.EINVAL
    assert errno_of(core.attach_device_pasid, s2.domain, nopasid, 100) == errno.EINVAL
    fd.rid_detach(nopasid)

    # 5. pasid 100
    assert errno_of(fd.pasid_attach, dev, 100, parent) == errno.EINVAL
    assert errno_of(fd.pasid_attach, dev, 100, ioas) == errno.EINVAL
    assert fd.check_hwpt(dev, 100) is None
    assert errno_of(fd.pasid_attach, dev, 100, s2) == 0
    assert fd.check_hwpt(dev, 100) is s2.domain
    assert errno_of(fd.pasid_attach, dev, 100, nested[0]) == errno.EBUSY  # "use REPLACE"
    assert fd.check_hwpt(dev, 100) is s2.domain
    fd.pasid_detach(dev, 100)
    assert fd.check_hwpt(dev, 100) is None
    assert errno_of(fd.pasid_attach, dev, 100, nested[0]) == 0
    assert errno_of(fd.pasid_attach, dev, 100, nested[0]) == errno.EBUSY
    assert errno_of(core.attach_device_pasid, nested[0].domain, dev, 100) == errno.EBUSY
    fd.pasid_detach(dev, 100)
    assert fd.check_hwpt(dev, 100) is None

    # 6. pasid 200: replace before attach -> EINVAL (core too); replace with the IOAS ->
    #    EINVAL, still s2; replace nested0, nested1
    assert errno_of(fd.pasid_replace, dev, 200, s2) == errno.EINVAL
    assert errno_of(core.replace_device_pasid, s2.domain, dev, 200) == errno.EINVAL
    assert errno_of(fd.pasid_attach, dev, 200, s2) == 0
    assert errno_of(fd.pasid_replace, dev, 200, ioas) == errno.EINVAL
    assert fd.check_hwpt(dev, 200) is s2.domain
    assert errno_of(fd.pasid_replace, dev, 200, nested[0]) == 0
    assert fd.check_hwpt(dev, 200) is nested[0].domain
    assert errno_of(fd.pasid_replace, dev, 200, nested[1]) == 0
    assert fd.check_hwpt(dev, 200) is nested[1].domain
    # replacing with the same domain is a no-op
    assert errno_of(fd.pasid_replace, dev, 200, nested[1]) == 0
    fd.pasid_detach(dev, 200)
    assert fd.check_hwpt(dev, 200) is None

    # 7. pasid 1024 (IOMMU_TEST_PASID_RESERVED): the mock fails the 2nd set_dev_pasid
    p = IOMMU_TEST_PASID_RESERVED
    assert errno_of(fd.pasid_attach, dev, p, s2) == 0
    expected = errno.ENOMEM if kind == "mock" else 0
    assert errno_of(fd.pasid_replace, dev, p, nested[0]) == expected
    if expected:
        assert fd.check_hwpt(dev, p) is s2.domain  # a failed replace keeps the old domain
        assert core.get_domain_for_dev_pasid(dev, p) is s2.domain
    fd.pasid_detach(dev, p)
    assert fd.check_hwpt(dev, p) is None

    # 8. pasid 2048: attach the iopf hwpt, replace with s2, detach (no IOPF in the model)
    assert errno_of(fd.pasid_attach, dev, 2048, iopf) == 0
    assert errno_of(fd.pasid_replace, dev, 2048, s2) == 0
    fd.pasid_detach(dev, 2048)
    fd.rid_detach(dev)

    # everything detached: every hwpt can be freed
    for h in (parent, *nested, iopf, s2, ioas):
        core.domain_free(h.domain)
    if acc is not None:
        assert acc() == before
        assert core.audit(full=True) == []  # type: ignore[attr-defined]


def test_pasid_zero_and_range(setup: tuple[IommuCore, Any, Any, str]) -> None:
    core, dev, _nopasid, _kind = setup
    d = core.domain_alloc("unmanaged")
    assert errno_of(core.attach_device_pasid, d, dev, 0) == errno.EINVAL
    top = core.max_pasids(dev)
    assert errno_of(core.attach_device_pasid, d, dev, top) == errno.EINVAL
    assert errno_of(core.attach_device_pasid, d, dev, top - 1) == 0
    core.detach_device_pasid(d, dev, top - 1)
    core.detach_device_pasid(d, dev, top - 1)  # idempotent
    core.domain_free(d)
