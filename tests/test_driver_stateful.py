"""A hypothesis state machine over the core API on the Intel driver.

Rules: domain alloc/free, map, unmap, RID attach/detach, AUX enable/disable, aux attach/detach,
PASID attach/replace/detach, and DMA.  A reference model (written from the API contract, not
from the driver's state) predicts every errno and every DMA outcome.

Invariants after every step:
* every DMA result equals the reference mapping of the domain attached at that (device,
  PASID) -- data of the mapped host page, identity for pass-through -- or is a fault exactly
  when the model has no mapping there;
* the allocators hold exactly what live domains hold (PASIDs of aux-attached domains, one DID
  per attached non-identity domain), and ``Kernel.audit()`` is clean.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from vtdsim.driver.core import Feature, IommuDomain
from vtdsim.driver.kernel import Kernel
from vtdsim.errors import IommuError, VtdsimError

PAGE = 0x1000
HOST = 0x100000  # 16 tagged host pages (below the kernel's frames)
NHOST = 16
IOVA = 0x40000  # IOVA window: 16 pages
NIOVA = 16
PASIDS = st.integers(1, 6)
DEVS = st.integers(0, 1)


@dataclass(eq=False)
class ModelDomain:
    dom: IommuDomain
    type: str
    maps: dict[int, int] = field(default_factory=dict)  # iova page -> host page
    aux_pasid: int | None = None


class DriverMachine(RuleBasedStateMachine):
    variant = "corrected"

    @initialize()
    def boot(self) -> None:
        self.k = Kernel.for_testing(ndev=2, pasid_bits=5, ats=True, aux_variant=self.variant)  # type: ignore[arg-type]
        self.devs = list(self.k.devices)
        mem = self.k.platform.memory
        for i in range(NHOST):
            mem.write(HOST + i * PAGE, b"HOST%04d" % i)
        for i in range(NIOVA):  # what pass-through DMA reads
            mem.write(IOVA + i * PAGE, b"PHYS%04d" % i)
        self.domains: list[ModelDomain] = []
        self.rid: dict[int, ModelDomain] = {}
        self.pasid: dict[tuple[int, int], ModelDomain] = {}
        self.aux: dict[tuple[int, ModelDomain], int] = {}
        self.aux_enabled: set[int] = set()

    # -- helpers -------------------------------------------------------------------------------

    def call(self, expected: int, fn: Any, *args: Any) -> Any:
        try:
            r = fn(*args)
        except IommuError as e:
            assert e.errno == expected, f"{fn.__name__}{args}: -{e.name}, expected {expected}"
            return None
        assert expected == 0, f"{fn.__name__}{args} succeeded, expected errno {expected}"
        return r

    def pick(self, i: int) -> ModelDomain:
        return self.domains[i % len(self.domains)]

    def attached(self, md: ModelDomain) -> bool:
        return (
            md in self.rid.values()
            or md in self.pasid.values()
            or any(m is md for (_d, m) in self.aux)
        )

    def aux_on(self, dev: int) -> list[ModelDomain]:
        return [m for (d, m) in self.aux if d == dev]

    def occupied(self, dev: int, p: int) -> bool:
        return (dev, p) in self.pasid or any(m.aux_pasid == p for m in self.aux_on(dev))

    def lowest_free_aux_pasid(self) -> int:
        used = {m.aux_pasid for m in self.domains if m.aux_pasid is not None}
        return next(p for p in range(1, 32) if p not in used)

    # -- rules ---------------------------------------------------------------------------------

    @rule(t=st.sampled_from(["unmanaged", "unmanaged", "dma", "identity"]))
    def alloc(self, t: str) -> None:
        if len(self.domains) < 6:
            self.domains.append(ModelDomain(self.k.domain_alloc(t), t))

    @precondition(lambda self: self.domains)
    @rule(i=st.integers(0, 10))
    def free(self, i: int) -> None:
        md = self.pick(i)
        busy = self.attached(md)
        self.call(errno.EBUSY if busy else 0, self.k.domain_free, md.dom)
        if not busy:
            self.domains.remove(md)

    @precondition(lambda self: self.domains)
    @rule(
        i=st.integers(0, 10),
        page=st.integers(0, NIOVA - 1),
        host=st.integers(0, NHOST - 1),
        n=st.integers(1, 3),
    )
    def map(self, i: int, page: int, host: int, n: int) -> None:
        md = self.pick(i)
        n = min(n, NIOVA - page, NHOST - host)
        if md.type == "identity":
            expected = errno.EINVAL
        elif any(page + j in md.maps for j in range(n)):
            expected = errno.EEXIST
        else:
            expected = 0
        self.call(expected, self.k.map, md.dom, IOVA + page * PAGE, HOST + host * PAGE, n * PAGE)
        if expected == 0:
            for j in range(n):
                md.maps[page + j] = host + j

    @precondition(lambda self: self.domains)
    @rule(i=st.integers(0, 10), page=st.integers(0, NIOVA - 1), n=st.integers(1, 4))
    def unmap(self, i: int, page: int, n: int) -> None:
        md = self.pick(i)
        n = min(n, NIOVA - page)
        expected = errno.EINVAL if md.type == "identity" else 0
        r = self.call(expected, self.k.unmap, md.dom, IOVA + page * PAGE, n * PAGE)
        if expected == 0:
            assert r == n * PAGE
            for j in range(n):
                md.maps.pop(page + j, None)

    @precondition(lambda self: self.domains)
    @rule(i=st.integers(0, 10), dev=DEVS)
    def attach(self, i: int, dev: int) -> None:
        md = self.pick(i)
        if dev in self.rid:
            expected = errno.EBUSY
        elif dev in self.aux_enabled and md.type == "unmanaged":
            expected = errno.EPERM
        else:
            expected = 0
        self.call(expected, self.k.attach_device, md.dom, self.devs[dev])
        if expected == 0:
            self.rid[dev] = md

    @precondition(lambda self: self.rid)
    @rule(dev=DEVS)
    def detach(self, dev: int) -> None:
        md = self.rid.get(dev)
        if md is not None:
            self.k.detach_device(md.dom, self.devs[dev])
            del self.rid[dev]

    @rule(dev=DEVS, enable=st.booleans())
    def feature(self, dev: int, enable: bool) -> None:
        if enable:
            self.k.dev_enable_feature(self.devs[dev], Feature.AUX)
            self.aux_enabled.add(dev)
        else:
            busy = bool(self.aux_on(dev))
            self.call(
                errno.EBUSY if busy else 0, self.k.dev_disable_feature, self.devs[dev], Feature.AUX
            )
            if not busy:
                self.aux_enabled.discard(dev)

    @precondition(lambda self: self.domains)
    @rule(i=st.integers(0, 10), dev=DEVS)
    def aux_attach(self, i: int, dev: int) -> None:
        md = self.pick(i)
        key = (dev, md)
        if dev not in self.aux_enabled or md.type != "unmanaged":
            expected = errno.EPERM
        elif key in self.aux:
            expected = 0
        else:
            p = md.aux_pasid if md.aux_pasid is not None else self.lowest_free_aux_pasid()
            expected = errno.EBUSY if self.occupied(dev, p) else 0
        self.call(expected, self.k.aux_attach_device, md.dom, self.devs[dev])
        if expected == 0:
            if md.aux_pasid is None:
                md.aux_pasid = self.lowest_free_aux_pasid()
            assert self.k.aux_get_pasid(md.dom, self.devs[dev]) == md.aux_pasid
            self.aux[key] = self.aux.get(key, 0) + 1

    @precondition(lambda self: self.aux)
    @rule(j=st.integers(0, 10))
    def aux_detach(self, j: int) -> None:
        keys = list(self.aux)
        dev, md = keys[j % len(keys)]
        self.k.aux_detach_device(md.dom, self.devs[dev])
        self.aux[(dev, md)] -= 1
        if not self.aux[(dev, md)]:
            del self.aux[(dev, md)]
        if not any(m is md for (_d, m) in self.aux):
            md.aux_pasid = None
            self.call(errno.EINVAL, self.k.aux_get_pasid, md.dom, self.devs[dev])

    @precondition(lambda self: self.domains)
    @rule(i=st.integers(0, 10), dev=DEVS, p=PASIDS)
    def pasid_attach(self, i: int, dev: int, p: int) -> None:
        md = self.pick(i)
        expected = errno.EBUSY if self.occupied(dev, p) else 0
        self.call(expected, self.k.attach_device_pasid, md.dom, self.devs[dev], p)
        if expected == 0:
            self.pasid[(dev, p)] = md

    @precondition(lambda self: self.domains)
    @rule(i=st.integers(0, 10), dev=DEVS, p=PASIDS)
    def pasid_replace(self, i: int, dev: int, p: int) -> None:
        md = self.pick(i)
        expected = 0 if (dev, p) in self.pasid else errno.EINVAL
        self.call(expected, self.k.replace_device_pasid, md.dom, self.devs[dev], p)
        if expected == 0:
            self.pasid[(dev, p)] = md

    @precondition(lambda self: self.domains)
    @rule(i=st.integers(0, 10), dev=DEVS, p=PASIDS)
    def pasid_detach(self, i: int, dev: int, p: int) -> None:
        cur = self.pasid.get((dev, p))
        md = cur if cur is not None else self.pick(i)
        self.k.detach_device_pasid(md.dom, self.devs[dev], p)  # idempotent when unattached
        self.pasid.pop((dev, p), None)

    @rule(dev=DEVS, p=st.one_of(st.none(), PASIDS), page=st.integers(0, NIOVA - 1))
    def dma(self, dev: int, p: int | None, page: int) -> None:
        if p is None:
            md = self.rid.get(dev)
        else:
            md = self.pasid.get((dev, p))
            if md is None:
                md = next((m for m in self.aux_on(dev) if m.aux_pasid == p), None)
        r = self.devs[dev].dma_read(IOVA + page * PAGE, 8, pasid=p)
        if md is None or (md.type not in ("identity",) and page not in md.maps):
            assert not r.ok, f"DMA {dev}/{p}/{page} succeeded without a mapping"
            return
        assert r.ok, f"DMA {dev}/{p}/{page} faulted: {r.fault}"
        want = b"PHYS%04d" % page if md.type == "identity" else b"HOST%04d" % md.maps[page]
        assert r.data == want

    # -- invariants ----------------------------------------------------------------------------

    @invariant()
    def allocators_hold_what_live_domains_hold(self) -> None:
        if not hasattr(self, "k"):
            return
        k = self.k
        assert k.ops.pasid_allocator.allocated() == sorted(
            m.aux_pasid for m in self.domains if m.aux_pasid is not None
        )
        with_did = [m for m in self.domains if m.type != "identity" and self.attached(m)]
        assert len(k.iommus[0].domain_ids) == len(with_did)
        assert k.audit() == []

    def teardown(self) -> None:
        if hasattr(self, "k"):
            assert self.k.audit(full=True) == []


DriverMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestDriverMachine = DriverMachine.TestCase


class V5Machine(DriverMachine):
    variant = "v5"


def test_machine_finds_the_v5_defects() -> None:
    """The same machine on the v5 patch fails (stale PASID reuse, overwritten entries, list
    corruption, double free): the invariants have teeth."""
    with pytest.raises((AssertionError, VtdsimError)):
        run_state_machine_as_test(  # type: ignore[no-untyped-call]
            V5Machine,
            settings=settings(
                max_examples=300,
                stateful_step_count=40,
                deadline=None,
                database=None,
                phases=[Phase.generate],
                suppress_health_check=[HealthCheck.too_slow],
            ),
        )
