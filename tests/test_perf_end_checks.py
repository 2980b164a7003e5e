"""The shortcuts behind the explorer's end-of-schedule checks give what the general code gives.

* ``PciDevice.dma_read``'s one-page path against the general page loop
  (``PciDevice._dma_read_pages``): the same results, faults, exceptions for bad arguments,
  device-TLB, unit registers, cache contents and counters -- for reads inside and across pages,
  through written, never-written and out-of-range memory, with and without PASID and ATS;
* ``Kernel.audit()`` against the audit as it was before it was reorganised (the reference
  below, verbatim): the same messages in the same order for consistent states and for every
  kind of corruption it reports, on both driver variants;
* ``DriverWorld.audit`` and workload (a)'s end checks on a restored world: unchanged verdicts.

(The cold path's replay memo for units with empty caches is tested with the other cold-path
shortcuts in ``test_perf_translate_cold.py``.)
"""

from __future__ import annotations

import random
import types
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vtdsim.driver.core import IOMMU_READ, IOMMU_WRITE, DomainType, Feature
from vtdsim.driver.intel.aux import CorrectedAux
from vtdsim.driver.intel.aux_v5 import KernelOops
from vtdsim.driver.intel.iommu import DmarDomain
from vtdsim.driver.kernel import Kernel, _pasid_owners
from vtdsim.explore.adapter import DriverWorld

DIFF = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _obj(v: Any) -> Any:
    if v is None:
        return None
    names: list[str] = []
    for k in type(v).__mro__:
        s = k.__dict__.get("__slots__", ())
        names.extend((s,) if isinstance(s, str) else s)
    return (type(v).__name__, tuple((n, getattr(v, n)) for n in names if hasattr(v, n)))


def _call(f: Callable[..., Any], *a: Any, **kw: Any) -> Any:
    try:
        r = f(*a, **kw)
    except Exception as e:
        return ("E", type(e).__name__, str(e))
    if hasattr(r, "ok") and hasattr(r, "transferred"):
        return ("R", type(r).__name__, r.ok, r.data, _obj(r.fault), r.transferred)
    return ("V", r)


# --- PciDevice.dma_read: the one-page path against the page loop -------------------------------


def _dma_kernel(seed: int, fast: bool) -> Kernel:
    k = Kernel.for_testing(ndev=2, memory_size=1 << 26)
    for dev in k.devices:
        k.dev_enable_feature(dev, Feature.AUX)
        if not fast:
            dev.dma_read = types.MethodType(  # type: ignore[method-assign]
                lambda self, addr, length, pasid=None, privileged=False: self._dma_read_pages(
                    addr, length, pasid, privileged
                ),
                dev,
            )
    rng = random.Random(seed)
    doms = [k.domain_alloc("unmanaged") for _ in range(2)]
    for d in doms:
        for page in range(6):
            # written pages, never-written pages, and pages beyond the end of memory
            hpa = rng.choice((0x40_0000, 0x41_0000, 0x80_0000, 0x3FF_F000, 1 << 27)) + (
                rng.randrange(4) << 12
            )
            prot = rng.choice((IOMMU_READ | IOMMU_WRITE, IOMMU_READ, IOMMU_WRITE))
            k.map(d, page << 12, hpa, 0x1000, prot)
    k.platform.memory.write(0x40_0000, bytes(range(256)) * 16)
    k.platform.memory.write(0x41_1000, b"\x5a" * 4096)
    k.aux_attach_device(doms[0], k.devices[0])
    k.aux_attach_device(doms[1], k.devices[1])
    k.aux_attach_device(doms[1], k.devices[0])
    return k


def _dma_state(k: Kernel) -> list[Any]:
    unit = k.platform.units[0]
    tr = unit.translator
    out: list[Any] = [dict(unit._regs), unit.statistics()]
    for c in (tr.context_cache, tr.pasid_cache, tr.iotlb, tr.psc):
        out.append([(key, _obj(v)) for key, v in c.items()])
        out.append((c.hits, c.misses))
    out.append((tr.faults, tr.walks, sorted(tr._fast)))
    for dev in k.devices:
        out.append(dev.devtlb_statistics())
        out.append([(key, _obj(e)) for key, e in dev._devtlb.items()])
    return out


_ADDRS = (0, 8, 0xFF8, 0xFFC, 0x1000, 0x1FF9, 0x2000, 0x5FF8, 0x6000, 0x7000, 1 << 40)
_BAD_ADDRS = (-1, 0.5, True, None, (1 << 64) - 4, 1 << 64, "0")
_LENGTHS = (1, 4, 8, 8, 8, 16, 0x100, 0x1000, 0x1001, 0x2800, 0)
_BAD_LENGTHS = (-1, True, 8.0, None, 1 << 65)


@DIFF
@given(seed=st.integers(0, 2**31))
def test_dma_read_one_page_path_matches_the_page_loop(seed: int) -> None:
    """Random reads (good and bad arguments) on two identical kernels: ``dma_read`` and the
    general loop give the same results or errors and leave the same state."""
    ks = [_dma_kernel(seed, fast) for fast in (True, False)]
    pasids = {id(k): [k.aux_get_pasid(d, k.devices[0]) for d in k.domains] for k in ks}
    for step in range(80):
        res = []
        for k in ks:
            rng = random.Random(seed * 7919 + step)
            dev = k.devices[rng.randrange(2)]
            known = pasids[id(k)]
            pasid: Any = rng.choice((None, *known, *known, 0, 3, 255, (1 << 20) - 1, 1 << 20))
            if rng.random() < 0.05:
                pasid = rng.choice((-1, True, 1.0, "1"))
            addr: Any = rng.choice(_ADDRS) + rng.choice((0, 0, 1, 0x10))
            length: Any = rng.choice(_LENGTHS)
            if rng.random() < 0.08:
                addr = rng.choice(_BAD_ADDRS)
            if rng.random() < 0.08:
                length = rng.choice(_BAD_LENGTHS)
            r = rng.random()
            if r < 0.08 and dev.ats_cap is not None:
                dev.ats_cap.enabled = not dev.ats_cap.enabled
            elif r < 0.14:
                k.platform.units[0].translator.invalidate_all()
            elif r < 0.18:
                dev.invalidate_devtlb(None, 0, True)
            priv = rng.random() < 0.15
            res.append(_call(dev.dma_read, addr, length, pasid, priv))
        assert res[0] == res[1], (step, res)
        assert _dma_state(ks[0]) == _dma_state(ks[1]), step


def test_dma_read_one_page_path_is_taken_and_reads_memory() -> None:
    """The one-page path serves reads of written pages, of never-written pages (one qword
    and other sizes) and reports out-of-range memory as the page loop does."""
    k = _dma_kernel(3, True)
    dev = k.devices[0]
    d = k.domains[0]
    k.map(d, 0x10_0000, 0x40_0000, 0x1000, IOMMU_READ)
    k.map(d, 0x10_1000, 0x50_0000, 0x1000, IOMMU_READ)  # never written
    k.map(d, 0x10_2000, 0x400_0000, 0x1000, IOMMU_READ)  # the first page beyond memory
    p = k.aux_get_pasid(d, dev)
    loop = dev._dma_read_pages
    calls = [0]

    def counting(*a: Any) -> Any:
        calls[0] += 1
        return loop(*a)

    dev._dma_read_pages = counting  # type: ignore[method-assign]
    cases = [(0x10_0000 + off, n) for off in (0, 8, 0xFF8) for n in (1, 8)]
    cases += [(0x10_1000, 8), (0x10_1004, 8), (0x10_1008, 3), (0x10_2000, 8)]
    for addr, n in cases:
        a = _call(dev.dma_read, addr, n, p)
        dev._devtlb.clear()
        b = _call(loop, addr, n, p, False)
        dev._devtlb.clear()
        assert a == b, (addr, n)
    assert calls[0] == 0
    assert _call(dev.dma_read, 0x10_0008, 8, p)[3] == bytes(range(8, 16))
    assert _call(dev.dma_read, 0x10_2000, 8, p)[1] == "MemoryAccessError"
    _call(dev.dma_read, 0x10_0FF8, 16, p)  # across pages: the loop
    assert calls[0] == 1


# --- Kernel.audit against the audit as it was -----------------------------------------------


def _audit_ref(self: Kernel, full: bool = False) -> list[str]:
    """``Kernel.audit`` before the end-check work (verbatim)."""
    out: list[str] = []
    ops = self.ops
    owners = _pasid_owners(ops.pasid_allocator)
    live = self._domains
    # 1. programmed PASID entries vs attachments
    aux_pairs: dict[tuple[int, DmarDomain], int] = {}
    for st_ in self._devices.values():
        for d, n in st_.aux.items():
            assert isinstance(d, DmarDomain)
            aux_pairs[(id(st_.dev), d)] = n
    refs: dict[tuple[int, DmarDomain], int] = {}
    busy = self.in_flight
    for st_ in self._devices.values():
        info = ops.infos[id(st_.dev)]
        prog = ops.programmed.get(id(info), {})
        name = st_.name
        st_busy = busy(st_)
        for pasid, dom in prog.items():
            rk = (info.iommu.seq_id, dom)
            refs[rk] = refs.get(rk, 0) + 1
            where = f"PASID {pasid:#x} of {name}"
            if dom.freed or dom not in live:
                out.append(f"{where} points to freed {dom!r}")
            if dom.type is DomainType.IDENTITY:
                pass
            elif info.iommu.seq_id not in dom.iommu_array:
                out.append(f"{where}: {dom!r} holds no DID on {info.iommu.name}")
            if pasid == 0:
                if st_.domain is not dom and not st_busy:
                    out.append(f"{where} (RID) points to {dom!r}, RID domain is {st_.domain!r}")
                continue
            if st_.pasid_array.get(pasid) is dom:
                continue
            if (id(st_.dev), dom) not in aux_pairs:
                if not (st_busy or busy(dom)):
                    out.append(f"{where} points to {dom!r}, which is not attached there")
                continue
            if dom.default_pasid != pasid:
                out.append(
                    f"{where} is an aux entry of {dom!r}, whose default PASID is "
                    f"{dom.default_pasid}"
                )
            owner = owners.get(pasid)
            if owner is None:
                out.append(f"{where} is programmed for {dom!r} but the allocator holds it as free")
            elif owner is not dom:
                out.append(f"{where} is programmed for {dom!r} but allocated to {owner!r}")
        if st_busy:
            continue
        rid = st_.domain
        if rid is not None and rid.type is not DomainType.BLOCKED and prog.get(0) is not rid:
            out.append(f"RID of {name}: {rid!r} attached but PASID 0 entry is {prog.get(0)!r}")
        for p, d in st_.pasid_array.items():
            if d.type is not DomainType.BLOCKED and prog.get(p) is not d and not busy(d):
                out.append(f"PASID {p:#x} of {name}: {d!r} attached but entry is {prog.get(p)!r}")
        for d in st_.aux:
            assert isinstance(d, DmarDomain)
            if busy(d):
                continue
            if d.default_pasid == 0:
                out.append(f"aux attachment of {d!r} to {name} uses PASID 0")
            elif prog.get(d.default_pasid) is not d:
                out.append(
                    f"aux attachment of {d!r} to {name}: entry at its PASID "
                    f"{d.default_pasid} is {prog.get(d.default_pasid)!r}"
                )
    per_domain: dict[DmarDomain, int] = {}
    v5 = ops.aux_variant == "v5"
    for (_dev, d), n in aux_pairs.items():
        per_domain[d] = per_domain.get(d, 0) + (n if v5 else 1)
    records: dict[DmarDomain, int] = {}
    aux = ops.aux
    if ops.aux_variant == "corrected":
        assert isinstance(aux, CorrectedAux)
        for d, info, _p, users in aux.attachments():
            records[d] = records.get(d, 0) + 1
            core_n = aux_pairs.get((id(info.dev), d), 0)
            if users != core_n and not busy(d):
                out.append(f"{d!r} on {info.dev.bdf}: {users} users, core has {core_n}")
    held_pasids: dict[int, DmarDomain] = {}
    dids_held: dict[int, list[int]] = {}
    for d in live:
        if not isinstance(d, DmarDomain):
            continue
        if d.auxd_refcnt != per_domain.get(d, 0) and not busy(d):
            out.append(
                f"{d!r}: auxd_refcnt {d.auxd_refcnt} but {per_domain.get(d, 0)} live aux "
                "attachment(s)"
            )
        if ops.aux_variant == "corrected" and records.get(d, 0) != d.auxd_refcnt:
            out.append(f"{d!r}: {records.get(d, 0)} records, auxd_refcnt {d.auxd_refcnt}")
        if d.auxd_refcnt > 0 and d.default_pasid > 0:
            held_pasids[d.default_pasid] = d
        elif ops.aux_variant == "corrected" and d.default_pasid != -1:
            out.append(f"{d!r} keeps default PASID {d.default_pasid} with no aux attachment")
        for seq, di in d.iommu_array.items():
            dids_held.setdefault(seq, []).append(di.did)
            n = refs.get((seq, d), 0)
            if di.refcnt != n:
                out.append(
                    f"{d!r}: DID {di.did} on {di.iommu.name} has refcnt {di.refcnt} but "
                    f"{n} PASID entr{'y' if n == 1 else 'ies'} use it"
                )
            if not di.iommu.domain_ids.is_used(di.did):
                out.append(f"{d!r} holds DID {di.did} on {di.iommu.name}, which is free")
        if d.pgtable is not None and self.frames.live.get(d.pgtable.pgd, (0, ""))[1] != ("pgtable"):
            out.append(f"{d!r}: page-table top {d.pgtable.pgd:#x} is not a live pgtable page")
    allocated = sorted(owners)
    for p in allocated:
        if p not in held_pasids:
            out.append(
                f"PASID {p} is allocated (to {owners.get(p)!r}) but no attached "
                "domain holds it (leak)"
            )
    for p, d in held_pasids.items():
        if owners.get(p) is not d:
            out.append(f"{d!r} holds PASID {p}, allocator owner is {owners.get(p)!r}")
    for iommu in self.iommus:
        held_list = dids_held.get(iommu.seq_id, [])
        held = set(held_list)
        if len(held) != len(held_list):
            out.append(f"{iommu.name}: two live domains share a DID")
        if len(iommu.domain_ids) != len(held):
            out.append(
                f"{iommu.name}: {len(iommu.domain_ids)} DIDs allocated, live domains hold "
                f"{sorted(held)} (leak)"
            )
    aux.audit(out)
    if full:
        self._audit_memory(out)
    return out


def _corrupt(rng: random.Random, w: DriverWorld, doms: list[Any]) -> None:
    """One random inconsistency of the kind the audit reports (or a harmless change)."""
    k = w.kernel
    ops = k.ops
    d = rng.choice(doms)
    sts = list(k._devices.values())
    st_ = rng.choice(sts)
    info = ops.infos[id(st_.dev)]
    owners = _pasid_owners(ops.pasid_allocator)
    kind = rng.randrange(16)
    if kind == 0:
        d.auxd_refcnt += rng.choice((-1, 1))
    elif kind == 1:
        d.default_pasid = rng.choice((-1, 0, 1, 2, 3, 7))
    elif kind == 2:
        prog = ops.programmed.setdefault(id(info), {})
        prog[rng.choice((0, 1, 2, 3, 9))] = rng.choice(doms)
    elif kind == 3:
        prog = ops.programmed.get(id(info), {})
        if prog:
            del prog[rng.choice(sorted(prog))]
    elif kind == 4:
        r = rng.random()
        if owners and r < 0.4:
            owners.pop(rng.choice(sorted(owners)))
        elif r < 0.7:
            owners[rng.choice((1, 2, 3, 9))] = rng.choice((*doms, object()))
        else:  # leaks allocated out of order (the audit reports them in PASID order)
            for p in (rng.choice((9, 12)), rng.choice((1, 4))):
                owners.setdefault(p, object())
    elif kind == 5:
        for di in d.iommu_array.values():
            di.refcnt += rng.choice((-1, 1))
    elif kind == 6:
        for di in d.iommu_array.values():
            di.iommu.domain_ids._used.discard(di.did)
    elif kind == 7:
        rng.choice(k.iommus).domain_ids._used.add(rng.choice((40, 41)))
    elif kind == 8:
        d.freed = True
    elif kind == 9:
        k._inflight[id(rng.choice((d, st_)))] = 1
    elif kind == 10:
        k._inflight.clear()
    elif kind == 11:
        if rng.random() < 0.5:
            st_.aux[d] = rng.choice((1, 2))
        else:
            st_.aux.pop(d, None)
    elif kind == 12:
        if rng.random() < 0.5:
            st_.pasid_array[rng.choice((1, 2, 5))] = d
        else:
            st_.domain = rng.choice((d, None))
    elif kind == 13:
        if d.pgtable is not None:
            k.frames.live.pop(d.pgtable.pgd, None)
    elif kind == 14:
        if rng.random() < 0.5:
            k._domains.discard(d)
        else:
            k._domains.add(d)
    elif kind == 15 and isinstance(ops.aux, CorrectedAux):
        for subs in ops.aux.by_device.values():
            for s in subs.values():
                s.users += rng.choice((-1, 1))


@DIFF
@given(seed=st.integers(0, 2**31), variant=st.sampled_from(("corrected", "v5")))
def test_audit_matches_the_audit_as_it_was(seed: int, variant: str) -> None:
    """Random attaches and detaches, then random corruptions: the same messages in the same
    order (and the same exceptions), with and without the memory read-back."""
    rng = random.Random(seed)
    w = DriverWorld(variant)
    k = w.kernel
    doms = [w.new_domain() for _ in range(3)]
    for _ in range(rng.randrange(8)):
        d, dev = rng.choice(doms), rng.randrange(3)
        try:
            (w.attach if rng.random() < 0.65 else w.detach)(d, dev)
        except KernelOops:
            break  # v5's one auxd node per domain corrupts its lists (list_del oopses): audit that
    assert _call(k.audit) == _call(_audit_ref, k)
    for _ in range(rng.randrange(1, 7)):
        _corrupt(rng, w, doms)
        assert _call(k.audit) == _call(_audit_ref, k)
        assert _call(k.audit, True) == _call(_audit_ref, k, True)


def test_audit_reports_through_every_section() -> None:
    """The corruptions really make the audit report (so the comparison above compares
    messages, not empty lists), and the messages agree."""
    seen: set[str] = set()
    for seed in range(60):
        for variant in ("corrected", "v5"):
            rng = random.Random(seed)
            w = DriverWorld(variant)
            doms = [w.new_domain() for _ in range(3)]
            for i in range(4):
                w.attach(doms[i % 3], i % 3)
            for _ in range(3):
                _corrupt(rng, w, doms)
                msgs = w.kernel.audit()
                assert msgs == _audit_ref(w.kernel)
                for m in msgs:
                    seen.add(m.split(" ", 2)[-1][:18] if m.startswith("PASID") else m[-18:])
    assert len(seen) >= 12, seen


# --- the explorer's end checks ----------------------------------------------------------------


@pytest.mark.parametrize("variant", ["corrected", "v5"])
def test_workload_a_end_checks_on_restored_worlds(variant: str) -> None:
    """Workload (a)'s end checks after a detach of dev0 and an attach of dev1 on a restored
    world, repeatedly (the replay memo then serves both DMAs): no bug on the corrected
    driver, and the DMAs give what a world whose units have no cold path gives."""
    from vtdsim.explore.base import get_workload
    from vtdsim.explore.scheduler import Runner

    r = Runner(get_workload("a", variant))
    w = r.fresh_world()
    verdicts = []
    for _ in range(4):
        r.fresh_world()
        res = [w.detach(w.dom, 0), w.attach(w.dom, 1)]
        audit = w.audit(with_leaks=True)
        msgs = list(r.workload.check_end(w, res))
        faults = [(dict(u._regs), u.statistics()) for u in w.platform.units]
        verdicts.append((res, audit, msgs, faults, w.pasid(w.dom, 1)))
    assert all(v == verdicts[0] for v in verdicts)
    if variant == "corrected":
        assert verdicts[0][1] == [] and verdicts[0][2] == []
    # the same on a world whose translators take the general path for every miss
    r2 = Runner(get_workload("a", variant))
    w2 = r2.fresh_world()
    for u in w2.platform.units:
        u.translator._cold = None
    res = [w2.detach(w2.dom, 0), w2.attach(w2.dom, 1)]
    got = (res, w2.audit(with_leaks=True), list(r2.workload.check_end(w2, res)))
    faults = [(dict(u._regs), u.statistics()) for u in w2.platform.units]
    assert (*got, faults, w2.pasid(w2.dom, 1)) == verdicts[0]
