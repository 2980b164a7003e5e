"""The aux attach/detach hot paths produce exactly what their general twins produce.

Every shortcut of the aux cycle is run against the code it replaces (the general path of the
same function, or the pre-shortcut code kept here as a reference) on random inputs, valid and
invalid: memory bytes (ring, status words, PASID tables), registers, unit statistics, caches,
errors (type, errno, message), allocator and driver records, and the sequence of
``vtdsim.driver.sync`` operations the explorer schedules on.
"""

from __future__ import annotations

import dataclasses
import errno
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest

from qi_state import unit_state
from sync_recorder import Recorder
from vtdsim.driver import sync
from vtdsim.driver.core import DomainType, Feature, IommuCore, IommuDomain
from vtdsim.driver.intel import aux as A
from vtdsim.driver.intel import dmar as D
from vtdsim.driver.intel import pasid as P
from vtdsim.driver.intel.device import DeviceDomainInfo
from vtdsim.driver.intel.dmar import QI_LENGTH, IntelIommu
from vtdsim.driver.intel.domain_id import domain_attach_iommu, domain_detach_iommu
from vtdsim.driver.intel.iommu import DmarDomain, IntelIommuOps
from vtdsim.driver.kernel import Kernel
from vtdsim.errors import ArgumentError, IommuError
from vtdsim.hw import iommu as H
from vtdsim.hw.caps import Capabilities
from vtdsim.hw.memory import PhysicalMemory
from vtdsim.spec import registers as R

# -- helpers -----------------------------------------------------------------------------------


class _Bad:
    """Not a domain, not a device (a stable repr: error messages are compared)."""

    def __repr__(self) -> str:
        return "<bad>"


class _Unhashable(_Bad):
    __hash__ = None  # type: ignore[assignment]


def _outcome(f: Callable[..., Any], *args: Any) -> object:
    try:
        return ("ok", f(*args))
    except Exception as e:  # the typed error is what is compared
        return (type(e).__name__, getattr(e, "errno", None), str(e))


def _memory(k: Kernel) -> dict[int, bytes]:
    return k.platform.memory.snapshot()


# -- reference implementations: the code the shortcuts replaced --------------------------------


def _ref_core_aux_attach(core: IommuCore, domain: Any, dev: Any) -> None:
    """IommuCore.aux_attach_device before its checks and _begin2/_end2 were inlined."""
    d = core._domain(domain)
    st = core.device_state(dev)
    core._begin2(d, st)
    try:
        core.ops.aux_attach_dev(d, st.dev)
    except BaseException:
        core._end2(d, st)
        raise
    with core._records:
        try:
            st.aux[d] = st.aux.get(d, 0) + 1
            d.aux_devices[st.dev] = d.aux_devices.get(st.dev, 0) + 1
        finally:
            core._end2_locked(d, st)


def _ref_core_aux_detach(core: IommuCore, domain: Any, dev: Any) -> None:
    d = core._domain(domain)
    st = core.device_state(dev)
    n = st.aux.get(d, 0)
    if n == 0:
        raise IommuError(errno.EINVAL, f"domain {d!r} is not aux-attached to {st.name}")
    core._begin2(d, st)
    try:
        core.ops.aux_detach_dev(d, st.dev)
    except BaseException:
        core._end2(d, st)
        raise
    with core._records:
        try:
            n = st.aux.get(d, 0)
            if n <= 1:
                st.aux.pop(d, None)
                d.aux_devices.pop(st.dev, None)
            else:
                st.aux[d] = n - 1
                d.aux_devices[st.dev] = n - 1
        finally:
            core._end2_locked(d, st)


def _ref_aux_attach(self: A.CorrectedAux, domain: DmarDomain, info: DeviceDomainInfo) -> None:
    """CorrectedAux.attach before _aux_pasid_get, domain_attach_iommu, pasid_setup and the
    address-width check were inlined."""
    if not A.aux_attach_allowed(info, domain):
        raise IommuError(
            errno.EPERM,
            f"{domain!r} may not be aux-attached to {info.dev.bdf} (AUX enabled: "
            f"{bool(info.auxd_enabled)}; needs an unmanaged domain)",
        )
    self.ops.prepare_domain_attach_device(domain, info)
    iommu = info.iommu
    with self.ops.device_domain_lock:
        subs = self.by_device.get(id(info))
        if subs is None:
            subs = self.by_device[id(info)] = {}
        sub = subs.get(domain)
        if sub is not None:
            sub.users += 1
            return
        pasid = self._aux_pasid_get(domain, info)
        try:
            with iommu.lock:
                domain_attach_iommu(domain, iommu)
                try:
                    _ref_pasid_setup(self.ops, info, domain, pasid)
                except BaseException:
                    domain_detach_iommu(domain, iommu)
                    raise
        except BaseException:
            self._aux_pasid_put(domain)
            if not subs:
                del self.by_device[id(info)]
            raise
        subs[domain] = A.AuxAttachment(domain, info, pasid)
        domain.auxd_refcnt += 1


def _ref_aux_detach(self: A.CorrectedAux, domain: DmarDomain, info: DeviceDomainInfo) -> None:
    iommu = info.iommu
    with self.ops.device_domain_lock:
        subs = self.by_device.get(id(info))
        sub = subs.get(domain) if subs is not None else None
        if sub is None or subs is None:
            raise IommuError(errno.EINVAL, f"{domain!r} is not aux-attached to {info.dev.bdf}")
        sub.users -= 1
        if sub.users:
            return
        del subs[domain]
        if not subs:
            del self.by_device[id(info)]
        domain.auxd_refcnt -= 1
        with iommu.lock:
            _ref_pasid_teardown(self.ops, info, sub.pasid)
            domain_detach_iommu(domain, iommu)
        self._aux_pasid_put(domain)


def _ref_pasid_setup(
    ops: IntelIommuOps, info: DeviceDomainInfo, domain: DmarDomain, pasid: int
) -> None:
    """IntelIommuOps.pasid_setup through the general intel_pasid_setup_* functions."""
    iommu = info.iommu
    iommu.lock.assert_held()
    if domain.type is DomainType.IDENTITY:
        P.intel_pasid_setup_pass_through(iommu, info, pasid, overwrite=False)
    else:
        P.intel_pasid_setup_second_level(iommu, domain, info, pasid, overwrite=False)
    prog = ops.programmed.setdefault(id(info), {})
    old = prog.get(pasid)
    if old is not None:
        old.programmed_at.pop((id(info), pasid), None)
    prog[pasid] = domain
    domain.programmed_at[(id(info), pasid)] = info


def _ref_pasid_teardown(ops: IntelIommuOps, info: DeviceDomainInfo, pasid: int) -> None:
    iommu = info.iommu
    iommu.lock.assert_held()
    _ref_tear_down_entry(iommu, info, pasid)
    prog = ops.programmed.get(id(info))
    if prog is not None:
        old = prog.pop(pasid, None)
        if old is not None:
            old.programmed_at.pop((id(info), pasid), None)


def _ref_tear_down_entry(
    iommu: IntelIommu, info: DeviceDomainInfo, pasid: int, fault_ignore: bool = False
) -> None:
    """intel_pasid_tear_down_entry(lock_held=True) before the held variant: entry through
    intel_pasid_get_entry, read_qwords, clflush_cache_range and the flush helpers."""
    v51 = iommu.quirks.v5_1_entry
    iommu.lock.assert_held()
    mem = iommu.memory
    pte = P.intel_pasid_get_entry(info, pasid)
    if not pte:
        return
    words = mem.read_qwords(pte, 8)
    present = bool(words[0] & P._PE_P)
    if not present and not v51:
        return
    did = words[P._DID_W] >> P._DID_SH & P._DID_MAX
    pgtt = words[P._PGTT_W] >> P._PGTT_SH & P._PGTT_MAX
    mem.write_qwords(pte, (P._PE_FPD if fault_ignore and present else 0, 0, 0, 0, 0, 0, 0, 0))
    iommu.clflush_cache_range(pte, P.PASID_ENTRY_SIZE)
    iommu.qi_submit_sync((iommu.desc_pasid_cache(did, pasid, D.QI_PC_PASID_SEL),))
    if v51 or pgtt in (P.PGTT_PT, P.PGTT_FL_ONLY):
        iommu.qi_submit_sync((iommu.desc_piotlb(did, pasid),))
    else:
        iommu.qi_submit_sync((iommu.desc_iotlb(did, 0, 0, D.DMA_TLB_DSI_FLUSH),))
    if not iommu.caching_mode and info.ats_enabled:
        p = 0 if v51 else pasid
        if p == 0:
            desc = iommu.desc_dev_iotlb(info.sid, info.pfsid, info.ats_qdep, 0, 52)
        else:
            desc = iommu.desc_dev_iotlb_pasid(info.sid, info.pfsid, p, info.ats_qdep, 0, 52)
        iommu.qi_submit_sync((desc,))


@contextmanager
def _reference_paths(k: Kernel) -> Iterator[None]:
    """Route this kernel's aux cycle through the reference implementations."""
    core: Any = k
    aux: Any = k.ops.aux
    saved = (core.aux_attach_device, core.aux_detach_device, aux.attach, aux.detach)
    core.aux_attach_device = lambda d, dev: _ref_core_aux_attach(k, d, dev)
    core.aux_detach_device = lambda d, dev: _ref_core_aux_detach(k, d, dev)
    aux.attach = lambda d, info: _ref_aux_attach(aux, d, info)
    aux.detach = lambda d, info: _ref_aux_detach(aux, d, info)
    try:
        yield
    finally:
        core.aux_attach_device, core.aux_detach_device, aux.attach, aux.detach = saved


# -- the whole aux cycle -----------------------------------------------------------------------


def _driver_state(k: Kernel) -> tuple[object, ...]:
    ops = k.ops
    names = {id(i): i.name for i in ops.infos.values()}
    prog = sorted(
        (names[key], p, d.serial) for key, m in ops.programmed.items() for p, d in m.items()
    )
    return (
        _memory(k),
        unit_state(k),
        k.accounting(),
        k.audit(full=True),
        prog,
        sorted((d.serial, i.name, p, u) for d, i, p, u in ops.aux.attachments()),
        ops.pasid_allocator.allocated(),
        [io.domain_ids.in_use() for io in k.iommus],
        [io.clflushes for io in k.iommus],
        dict(k.injector.calls),
        dict(k.injector.injected),
        sorted((st.name, d.serial, n) for st in k._devices.values() for d, n in st.aux.items()),
        dict(k._inflight),
    )


def _aux_workload(k: Kernel, seed: int, trace: list[object]) -> None:
    rng = random.Random(seed)
    devs = list(k.devices)
    for dev in devs[:2]:
        k.dev_enable_feature(dev, Feature.AUX)
    doms: list[Any] = [k.domain_alloc("unmanaged") for _ in range(3)]
    doms.append(k.domain_alloc("dma"))  # may not be aux-attached: -EPERM
    doms.append(k.domain_alloc("identity"))
    gone = k.domain_alloc("unmanaged")
    k.domain_free(gone)
    for j, d in enumerate(doms[:3]):
        k.map(d, 0x10000 * (j + 1), 0x100000 + 0x1000 * j, 0x1000)
    sites = ("did", "pasid", "pasid-table")
    for _ in range(160):
        r = rng.random()
        d = rng.choice([*doms, gone, _Bad(), _Unhashable()])
        dev = rng.choice([*devs, devs[0].bdf, "99:00.0", _Bad()])
        if r < 0.08:
            k.injector.fail(rng.choice(sites), after=rng.randrange(2))
        elif r < 0.12:
            k.injector.clear()
        if r < 0.55:
            trace.append(("attach", _outcome(k.aux_attach_device, d, dev)))
        elif r < 0.95:
            trace.append(("detach", _outcome(k.aux_detach_device, d, dev)))
        else:
            # a DMA through an aux domain: the unit's caches hold what the detach must flush
            j = rng.randrange(3)
            got = _outcome(k.aux_get_pasid, doms[j], devs[0])
            trace.append(("pasid", got))
            if isinstance(got, tuple) and got[0] == "ok":
                p = got[1]
                dma = devs[0].dma_read(0x10000 * (j + 1), 4, pasid=p)
                trace.append(("dma", dma.ok, bytes(dma.data) if dma.ok else None))
    k.injector.clear()


@pytest.mark.parametrize(
    "quirks",
    [D.Quirks(), D.Quirks.linux_5_1(), D.Quirks(pwsnp_did_bit0=True, pfsid_macro_bug=True)],
)
@pytest.mark.parametrize("seed", [1, 2])
def test_aux_cycle_matches_the_reference_paths(quirks: D.Quirks, seed: int) -> None:
    """Random aux attach/detach (shared and repeated attachments, foreign and freed domains,
    names and unknown devices, injected DID/PASID/leaf-table failures, DMA through the
    domains in between): the inlined core, aux, PASID-entry and QI paths leave the same
    memory, registers, statistics, records and errors as the reference paths."""
    states = []
    for reference in (False, True):
        k = Kernel.for_testing(ndev=3, nopasid_devices=1, quirks=quirks)
        trace: list[object] = []
        if reference:
            with _reference_paths(k):
                _aux_workload(k, seed, trace)
        else:
            _aux_workload(k, seed, trace)
        states.append((trace, _driver_state(k)))
    assert states[0][0] == states[1][0]
    assert states[0][1] == states[1][1]
    assert any(t[1][0] == "ok" for t in states[0][0] if t[0] == "detach")
    assert any(t[1][0] != "ok" for t in states[0][0] if t[0] == "attach")


def test_aux_cycle_sync_operations_match_the_reference_paths() -> None:
    """The explorer's view: the same sync operations (locks, points, allocations), in the same
    order, on the inlined and the reference paths, failures included."""
    logs = []
    for reference in (False, True):
        k = Kernel.for_testing(ndev=2)
        b = Recorder()
        trace: list[object] = []
        with sync.installed(b):
            if reference:
                with _reference_paths(k):
                    _aux_workload(k, 5, trace)
            else:
                _aux_workload(k, 5, trace)
        logs.append((b.log, trace, _driver_state(k)))
    assert logs[0] == logs[1]
    assert ("point", "qi_submit_sync") in logs[0][0]


def test_aux_cycle_with_caching_mode_and_a_non_coherent_unit() -> None:
    """Caching mode (PASID-cache + P_IOTLB flushes at setup, no device TLB at teardown) and a
    non-coherent unit (clflush counting): inlined and reference paths agree."""
    caps = dataclasses.replace(Capabilities(), caching_mode=True, coherent=False)
    states = []
    for reference in (False, True):
        k = Kernel.for_testing(ndev=2, caps=caps)
        trace: list[object] = []
        if reference:
            with _reference_paths(k):
                _aux_workload(k, 9, trace)
        else:
            _aux_workload(k, 9, trace)
        states.append((trace, _driver_state(k)))
    assert states[0] == states[1]
    assert states[0][1][8] != [0]  # clflushes were counted


# -- PASID entries: held variants against the general functions ---------------------------------


def _entry_kernel(quirks: D.Quirks, caps: Capabilities | None = None) -> tuple[Kernel, Any]:
    k = Kernel.for_testing(ndev=2, quirks=quirks, caps=caps)
    d: Any = k.domain_alloc("unmanaged")
    k.map(d, 0x4000, 0x200000, 0x1000)
    io = k.iommus[0]
    with io.lock:
        domain_attach_iommu(d, io)
    return k, d


@pytest.mark.parametrize(
    "quirks",
    [D.Quirks(), D.Quirks(v5_1_entry=True), D.Quirks(pwsnp_did_bit0=True)],
)
def test_second_level_setup_held_matches_the_general_function(quirks: D.Quirks) -> None:
    """setup_second_level_held against intel_pasid_setup_second_level(lock_held=True): random
    PASIDs (present entries: -EBUSY or overwrite; beyond the table: -ENODEV; leaf tables
    allocated or failing), bad arguments and domains without a table or a DID."""
    results = []
    for held in (True, False):
        rng = random.Random(4)
        k, d = _entry_kernel(quirks)
        io = k.iommus[0]
        infos = list(k.ops.infos.values())
        io.qi_trace = []
        nodid: Any = k.domain_alloc("unmanaged")
        notable: Any = k.domain_alloc("identity")
        out = []
        for _ in range(120):
            info = rng.choice(infos)
            pasid = rng.choice([1, 2, 63, 64, 65, 1 << 19, (1 << 20) - 1, 1 << 20, 0, -1, True])
            dom = rng.choice([d, d, d, nodid, notable])
            overwrite = rng.random() < 0.3
            if rng.random() < 0.1:
                k.injector.fail("pasid-table")
            with io.lock:
                if held:
                    f: Callable[..., Any] = P.setup_second_level_held
                    out.append(_outcome(f, io, dom, info, pasid, overwrite))
                else:

                    def g(*a: Any, ov: bool = overwrite) -> None:
                        P.intel_pasid_setup_second_level(*a, overwrite=ov)

                    out.append(_outcome(g, io, dom, info, pasid))
            k.injector.clear()
        results.append((out, _memory(k), list(io.qi_trace), dict(k.injector.calls)))
    assert results[0] == results[1]
    assert any(o[0] == "ok" for o in results[0][0])
    assert {o[1] for o in results[0][0] if o[0] == "IommuError"} >= {errno.EBUSY, errno.ENODEV}


def test_second_level_setup_held_caches_post_pwsnp_entries() -> None:
    """The cached (qword 0, qwords 1..7) is _pwsnp(_sl_entry(...)) whatever the PWSNP form."""
    for quirks, smpwc in (
        (D.Quirks(), True),
        (D.Quirks(pwsnp_did_bit0=True), True),
        (D.Quirks(), False),
    ):
        P._SL_PW_CACHE.clear()
        caps = dataclasses.replace(Capabilities(), page_walk_coherency=smpwc)
        k, d = _entry_kernel(quirks, caps)
        io = k.iommus[0]
        info = next(iter(k.ops.infos.values()))
        with io.lock:
            P.setup_second_level_held(io, d, info, 5, False)
        ((key, (w0, tail, w0_bytes, tail_bytes)),) = P._SL_PW_CACHE.items()
        assert (w0, *tail) == P._pwsnp(io, P._sl_entry(*key[:5]))
        assert w0_bytes + tail_bytes == b"".join(w.to_bytes(8, "little") for w in (w0, *tail))
        pte = P.intel_pasid_get_entry(info, 5)
        assert k.platform.memory.read_qwords(pte, 8) == (w0, *tail)


def _setup_sl_overwrite(io: IntelIommu, d: Any, info: DeviceDomainInfo, pasid: int) -> None:
    P.intel_pasid_setup_second_level(io, d, info, pasid, overwrite=True)


def _setup_pt_overwrite(io: IntelIommu, info: DeviceDomainInfo, pasid: int) -> None:
    P.intel_pasid_setup_pass_through(io, info, pasid, overwrite=True)


def _tear_down_unlocked(io: IntelIommu, info: DeviceDomainInfo, pasid: int, fpd: bool) -> None:
    P.intel_pasid_tear_down_entry(io, info, pasid, fpd, lock_held=False)


@pytest.mark.parametrize("quirks", [D.Quirks(), D.Quirks(v5_1_entry=True)])
@pytest.mark.parametrize("caching_mode", [False, True])
def test_tear_down_held_matches_the_reference(quirks: D.Quirks, caching_mode: bool) -> None:
    """tear_down_entry_held (and intel_pasid_tear_down_entry both ways) against the code it
    replaced: present, absent and never-allocated entries, FPD, second-level and pass-through
    entries, with and without ATS."""
    caps = dataclasses.replace(Capabilities(), caching_mode=caching_mode)
    results = []
    for variant in ("held", "public", "unlocked", "reference"):
        rng = random.Random(8)
        k, d = _entry_kernel(quirks, caps)
        io = k.iommus[0]
        infos = list(k.ops.infos.values())
        infos[1].ats_enabled = False
        io.qi_trace = []
        out = []
        for _ in range(80):
            info = rng.choice(infos)
            pasid = rng.choice([1, 2, 64, 700, 1 << 19, 0])
            fpd = rng.random() < 0.3
            if rng.random() < 0.5:
                with io.lock:
                    if rng.random() < 0.3:
                        out.append(_outcome(_setup_pt_overwrite, io, info, pasid))
                    else:
                        out.append(_outcome(_setup_sl_overwrite, io, d, info, pasid))
            if variant == "unlocked":
                out.append(_outcome(_tear_down_unlocked, io, info, pasid, fpd))
                continue
            with io.lock:
                if variant == "held":
                    out.append(_outcome(P.tear_down_entry_held, io, info, pasid, fpd))
                elif variant == "public":
                    out.append(_outcome(P.intel_pasid_tear_down_entry, io, info, pasid, fpd))
                else:
                    out.append(_outcome(_ref_tear_down_entry, io, info, pasid, fpd))
        results.append((out, _memory(k), list(io.qi_trace), io.clflushes, unit_state(k)))
    assert results[0] == results[1] == results[2] == results[3]
    assert len(results[0][2]) > 20


# -- queued invalidation: driver and hardware fast paths against the general ones ---------------


def test_flush_helpers_compose_the_encoders_descriptors() -> None:
    """flush_pasid_cache, flush_iotlb_dsi and flush_dev_iotlb compose what desc_pasid_cache,
    desc_iotlb and desc_dev_iotlb(_pasid) encode (PFSID quirk, queue depths >= 32, every
    device-TLB shape), the whole-space qword 1 included."""
    for quirks in (D.Quirks(), D.Quirks(pfsid_macro_bug=True)):
        k = Kernel.for_testing(ndev=2, quirks=quirks)
        io = k.iommus[0]
        info = next(iter(k.ops.infos.values()))
        rng = random.Random(2)
        for _ in range(60):
            did, pasid = rng.randrange(1 << 16), rng.randrange(1, 1 << 20)
            info.pfsid = rng.randrange(1 << 16)
            info.ats_qdep = rng.choice([0, 1, 31, 32, 33])
            addr, mask = rng.choice([(0, 52), (0x1000, 0), (0x200000, 9), (0, 51), (1 << 40, 52)])
            io.qi_trace = []
            io.flush_pasid_cache(did, pasid, rng.choice([0, 1, 3]))
            io.flush_iotlb_dsi(did)
            io.flush_dev_iotlb(info, pasid, addr, mask)
            io.flush_dev_iotlb(info, 0, addr, mask)
            got = [t for t in io.qi_trace if t[0] & 0xF != 5]
            g = got[0][0] >> 4 & 3
            want = [
                io.desc_pasid_cache(did, pasid, g),
                io.desc_iotlb(did, 0, 0, D.DMA_TLB_DSI_FLUSH),
                io.desc_dev_iotlb_pasid(info.sid, info.pfsid, pasid, info.ats_qdep, addr, mask),
                io.desc_dev_iotlb(info.sid, info.pfsid, info.ats_qdep, addr, mask),
            ]
            assert got == want
    assert io.desc_dev_iotlb_pasid(1, 2, 3, 4, 0, 52)[1] == D._PDEV_ALL_QW1


def test_flush_dev_iotlb_descriptor_cache_is_bounded() -> None:
    k = Kernel.for_testing(ndev=1)
    io = k.iommus[0]
    info = next(iter(k.ops.infos.values()))
    for pasid in range(1, 4100):
        io.flush_dev_iotlb(info, pasid, 0, 52)
    assert 0 < len(io._pdevtlb_all_qw0) <= 4096


def _force_general_submit(io: IntelIommu) -> None:
    io.qi_trace = []  # a trace list sends every submission down the general copy


def test_one_descriptor_submission_matches_the_general_copy() -> None:
    """qi_submit_sync's one-descriptor path against its general copy: every ring position
    (page ends, the wrap), qwords 2-3 in use (invalid: IQE and recovery), invalid types and
    reserved bits, and batches in between; same ring, status words, registers, errors."""
    states = []
    for general in (False, True):
        rng = random.Random(6)
        k = Kernel.for_testing(ndev=1)
        io = k.iommus[0]
        if general:
            _force_general_submit(io)
        out = []
        for _ in range(700):
            r = rng.random()
            if r < 0.7:
                desc = io.desc_pasid_cache(rng.randrange(1 << 16), rng.randrange(1 << 20), 1)
            elif r < 0.8:
                desc = (rng.getrandbits(64), rng.getrandbits(64), 0, 0)  # mostly invalid
            elif r < 0.85:
                desc = (0x7, 0, rng.randrange(1, 4), 0)  # qwords 2-3 in use
            elif r < 0.9:
                desc = (1 << 64, 0, 0, 0)  # not a 64-bit value: typed error, nothing written
            else:
                n = rng.randrange(2, 5)
                out.append(_outcome(io.qi_submit_sync, [io.desc_iotlb(2, 0, 0, 2 << 60)] * n))
                continue
            out.append(_outcome(io.qi_submit_sync, (desc,)))
        states.append((out, unit_state(k)))
    assert states[0] == states[1]
    kinds = {o[0] for o in states[0][0]}
    assert {"ok", "QiError", "ArgumentError"} <= kinds


def _generic_iqt(unit: Any) -> None:
    """Route IQT writes to _tail_moved (the general queue loop) instead of _iqt_written."""

    def h(old: int, v: int, part: int, unit: Any = unit) -> None:
        if part & 0xFFFF_FFFF and unit.qi_enabled:
            unit._tail_moved()

    for off in (R.IQT, R.IQT + 4):
        ent = unit._wr32[off]  # the access maps are read-only views: replace
        unit._wr32 = MappingProxyType({**unit._wr32, off: (*ent[:5], h)})


def test_two_descriptor_fetch_matches_the_general_queue_loop() -> None:
    """_iqt_written's unrolled descriptor + wait against _tail_moved/_run_queue: waits with
    IF, without SW, with FN, with reserved bits, with a status address beyond memory or in
    a never-written page; invalid first descriptors; qwords 2-3 in use; page ends and the
    wrap; and a translator present (the DMA in between)."""
    states = []
    for generic in (False, True):
        rng = random.Random(13)
        k = Kernel.for_testing(ndev=1)
        unit: Any = k.platform.units[0]
        io = k.iommus[0]
        mem = k.platform.memory
        dev = k.devices[0]
        if generic:
            _generic_iqt(unit)
        irqs: list[object] = []
        unit.on_interrupt = lambda kind, a, dd, irqs=irqs: irqs.append((kind, a, dd))
        unit.write32(R.IECTL, 0)
        d: Any = k.domain_alloc("unmanaged")
        k.map(d, 0x1000, 0x100000, 0x1000)
        k.attach_device(d, dev)
        out: list[object] = []
        for step in range(600):
            head = io._free_head
            first = rng.choice(
                [
                    io.desc_pasid_cache(2, rng.randrange(8), 1),
                    io.desc_iotlb(2, 0, 0, D.DMA_TLB_DSI_FLUSH),
                    io.desc_piotlb(2, 3),
                    (rng.getrandbits(64), rng.getrandbits(64), 0, 0),
                    (0x7, 0, 0, rng.randrange(2)),
                ]
            )
            wlo = D._WAIT_QW0
            status = io.qi_status + 8 * ((head + 1) % QI_LENGTH)
            r = rng.random()
            if r < 0.1:
                wlo |= H._W_IF
            elif r < 0.15:
                wlo &= ~H._W_SW
            elif r < 0.2:
                wlo |= H.D.WAIT_DESC.field("FN").mask
            elif r < 0.25:
                wlo |= 1 << rng.choice([7, 8, 12, 31])
            elif r < 0.3:
                status = mem.size + 0x1000  # beyond memory: the status write fails
            elif r < 0.35:
                status = 0x3F000000  # a page never written
            w23 = (0, rng.randrange(2)) if rng.random() < 0.05 else (0, 0)
            base = io.qi_desc
            mem.write_qwords(base + (head << 5), list(first))
            mem.write_qwords(base + (((head + 1) % QI_LENGTH) << 5), [wlo, status, *w23])
            tail = (head + 2) % QI_LENGTH
            io._free_head = tail
            unit.write32(R.IQT, tail << 5)
            out.append((unit.read32(R.FSTS), unit.read32(R.IQH), unit.read64(R.IQER)))
            if unit.read32(R.FSTS) & H._FSTS_IQE:
                # recover as qi_check_fault: skip what is left, clear IQE
                io._free_head = unit.read32(R.IQH) >> 5
                unit.write32(R.IQT, io._free_head << 5)
                unit.write32(R.FSTS, H._FSTS_IQE)
            if step % 50 == 0:
                out.append(dev.dma_read(0x1000, 4).ok)  # (re)creates cached translations
            unit.write32(R.ICS, 1)
        states.append((out, irqs, unit_state(k), mem.read(0x3F000000, 4096)))
    assert states[0] == states[1]
    assert states[0][2][3].status_writes > 100 and states[0][2][3].invalid_descriptors > 10


# -- physical memory fast paths --------------------------------------------------------------


def _mem_ops(mem: PhysicalMemory, rng: random.Random, reference: bool) -> list[object]:
    """Random dword/qword accesses: with ``reference`` through byte-level read/write only."""
    out: list[object] = []
    size = mem.size
    for _ in range(3000):
        page = rng.choice([0, 1, 2, 5, (size >> 12) - 1, size >> 12, -1])
        off = rng.choice([0, 4, 8, 0xFF8, 0xFFC, 0xFFE, 0x800, 3, 1])
        addr: Any = (page << 12) + off
        if rng.random() < 0.03:
            addr = rng.choice([True, 1.0, "x", None, 4 + 0j])
        value: Any = rng.choice(
            [0, 1, 0xFFFF_FFFF, 1 << 32, (1 << 64) - 1, 1 << 64, -1, True, 2.0, 0x1234_5678]
        )
        op = rng.randrange(4)
        if op == 0:
            if reference:
                out.append(_outcome(_ref_write32, mem, addr, value))
            else:
                out.append(_outcome(mem.write32, addr, value))
        elif op == 1:
            if reference:
                out.append(_outcome(_ref_read64, mem, addr))
            else:
                out.append(_outcome(mem.read64, addr))
        elif op == 2:
            vals = [rng.choice([0, 5, (1 << 64) - 1, 1 << 64, -1]) for _ in range(rng.randrange(9))]
            if reference:
                out.append(_outcome(_ref_write_qwords, mem, addr, vals))
            else:
                out.append(_outcome(mem.write_qwords, addr, vals))
        else:
            out.append(_outcome(mem.read, addr, 8) if type(addr) is int else "skip")
    return out


def _ref_write32(mem: PhysicalMemory, addr: Any, value: Any) -> None:
    """PhysicalMemory.write32's checks, then a byte-level write."""
    if type(value) is not int or value < 0 or value > 0xFFFF_FFFF:
        if not isinstance(value, int) or not 0 <= value <= 0xFFFF_FFFF:
            raise ArgumentError("value", value, "an unsigned 32-bit integer")
        value = int(value)
    mem.write(addr, value.to_bytes(4, "little"))


def _ref_read64(mem: PhysicalMemory, addr: Any) -> int:
    if addr & 7 or addr < 0 or addr + 8 > mem.size:
        mem._check(addr, 8)
    return int.from_bytes(mem.read(addr, 8), "little")


def _ref_write_qwords(mem: PhysicalMemory, addr: Any, values: list[int]) -> None:
    for v in values:
        if not isinstance(v, int) or not 0 <= v <= (1 << 64) - 1:
            raise ArgumentError("value", v, "an unsigned 64-bit integer")
    mem._check(addr, 8 * len(values))
    for k, v in enumerate(values):
        mem.write(addr + 8 * k, v.to_bytes(8, "little"))


def test_memory_fast_paths_match_byte_level_access(tmp_path: Path) -> None:
    """write32's pack_into, read64's materialised-page read and write_qwords' written-page
    pack against byte-level accesses: aligned and not, page ends, beyond memory, negative,
    non-integers, out-of-range values; a memory backed by an image (read-only pages) too."""
    img = tmp_path / "img.bin"
    img.write_bytes(bytes(range(256)) * 64)  # four pages
    for make in (lambda: PhysicalMemory(1 << 24), lambda: PhysicalMemory.from_image(img, 1 << 24)):
        results = []
        for reference in (False, True):
            mem = make()
            out = _mem_ops(mem, random.Random(21), reference)
            results.append((out, mem.snapshot()))
        assert results[0] == results[1]


def test_qword_and_written_page_views_are_the_live_dicts() -> None:
    """qword_pages and written_pages (plain attributes) are the page dicts themselves, across
    restore and close: the unit's inlined status write stores into the page write32 would."""
    mem = PhysicalMemory(1 << 20)
    mem.write64(0x1000, 7)
    assert mem.qword_pages is mem._q and mem.qword_pages[1][0] == 7
    assert mem.written_pages is mem._pages and mem.written_pages[1][:8] == (7).to_bytes(8, "little")
    snap = mem.snapshot()
    mem.write64(0x2000, 9)
    mem.restore(snap)
    assert mem.qword_pages is mem._q and 2 not in mem.qword_pages
    assert mem.written_pages is mem._pages and 2 not in mem.written_pages
    mem.close()
    assert mem.qword_pages is mem._q and mem.qword_pages[1][0] == 7
    assert mem.written_pages is mem._pages


# -- the core's inlined checks -----------------------------------------------------------------


def test_core_aux_checks_match_the_checking_calls() -> None:
    """IommuCore.aux_attach_device / aux_detach_device with every kind of bad argument:
    the inlined hot-path checks give the errors of _domain/device_state, in the same order,
    and leave nothing in flight."""
    outs = []
    for reference in (False, True):
        k = Kernel.for_testing(ndev=2)
        dev = k.devices[0]
        k.dev_enable_feature(dev, Feature.AUX)
        d = k.domain_alloc("unmanaged")
        other = Kernel.for_testing(ndev=1).domain_alloc("unmanaged")
        freed = k.domain_alloc("unmanaged")
        k.domain_free(freed)
        cases: list[tuple[Any, Any]] = [
            (d, dev),
            (d, dev.bdf),
            (d, "99:00.0"),
            (d, _Bad()),
            (freed, dev),
            (other, dev),
            (_Unhashable(), dev),
            (_Bad(), "nope"),
            (d, k.devices[1]),
        ]
        out = []
        for dom, dv in cases * 2:
            if reference:
                out.append(_outcome(_ref_core_aux_attach, k, dom, dv))
                out.append(_outcome(_ref_core_aux_detach, k, dom, dv))
                out.append(_outcome(_ref_core_aux_detach, k, dom, dv))
            else:
                out.append(_outcome(k.aux_attach_device, dom, dv))
                out.append(_outcome(k.aux_detach_device, dom, dv))
                out.append(_outcome(k.aux_detach_device, dom, dv))
            assert not k._inflight
        outs.append((out, _driver_state(k)))
    assert outs[0] == outs[1]
    assert isinstance(d, IommuDomain)


def test_batched_submission_matches_the_slot_by_slot_copy_and_queue_loop() -> None:
    """qi_submit_sync's one-slice copy (stores into written pages inlined) and
    _iqt_written's in-loop wait status write against the slot-by-slot copy and the general
    queue loop: batches of 2-5 (PSI + device-TLB as the strict unmap, invalid values that
    refuse the whole copy, invalid types: IQE), at every ring position."""
    states = []
    for general in (False, True):
        rng = random.Random(17)
        k = Kernel.for_testing(ndev=1)
        unit: Any = k.platform.units[0]
        io = k.iommus[0]
        info = next(iter(k.ops.infos.values()))
        if general:
            io._qi_dirty_hi.add(QI_LENGTH - 1)  # forces the slot-by-slot copy
            _generic_iqt(unit)
        out = []
        for _ in range(500):
            n = rng.randrange(1, 5)
            descs = [
                io.desc_iotlb(rng.randrange(2, 6), rng.getrandbits(20) << 12, 0, 3 << 60)
                for _ in range(n)
            ]
            descs.append(io.desc_dev_iotlb(info.sid, 0, 0, rng.getrandbits(20) << 12, 0))
            r = rng.random()
            if r < 0.05:
                descs.append((1 << 64, 0, 0, 0))  # not a qword: typed error
            elif r < 0.1:
                descs.append((0x4, 0, 0, 0))  # an interrupt-entry-cache descriptor: invalid
            out.append(_outcome(io.qi_submit_sync, descs))
        state = unit_state(k)
        states.append((out, state[:6]))
    last = (QI_LENGTH - 1) * 32  # the forced-dirty slot: its qwords 2-3 may differ only
    (oa, sa), (ob, sb) = states
    assert oa == ob
    assert sa[:4] == sb[:4] and sa[5] == sb[5]
    assert sa[4][:last] == sb[4][:last]
    assert {o[0] for o in oa} >= {"ok", "ArgumentError", "QiError"}


def test_image_tail_beyond_a_smaller_memory_stays_out_of_reach(tmp_path: Path) -> None:
    """Every materialised page lies inside memory (the hot paths rely on it): an image longer
    than the memory it backs leaves no page beyond the end, so accesses there still fail."""
    img = tmp_path / "img.bin"
    img.write_bytes(b"\x01" * (3 * 4096 + 100))  # three whole pages and a tail
    mem = PhysicalMemory.from_image(img, 4096)
    assert all(pfn < 1 for pfn in mem.written_pages) and all(pfn < 1 for pfn in mem.qword_pages)
    for f, args in (
        (mem.read64, (3 * 4096,)),
        (mem.write32, (3 * 4096, 1)),
        (mem.write_qwords, (3 * 4096, [1, 2])),
    ):
        assert _outcome(f, *args)[0] == "MemoryAccessError"
    assert mem.read64(0) == 0x0101010101010101
