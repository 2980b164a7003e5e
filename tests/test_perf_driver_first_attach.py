"""The fast paths of a restored world's detach and *first* aux attach produce exactly what their
slow twins produce.

The explorer restores its world before every schedule and then runs, among others, the last aux
detach of a domain from one device and its first aux attach to a device behind another unit: a
DID on a unit with no prior use, the PASID leaf table on first use of its directory slot, three
teardown flushes.  Each shortcut taken there is run here against the code it replaces (the
general function, or the pre-shortcut code kept here as a reference) on random inputs, valid and
invalid: memory bytes, registers, unit statistics, caches, errors (type, errno, message),
allocator and driver records, and the sequence of ``vtdsim.driver.sync`` operations.
"""

from __future__ import annotations

import dataclasses
import gc
import random
import weakref
from collections.abc import Callable
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest

from sync_recorder import Recorder
from vtdsim.driver import sync
from vtdsim.driver.core import Feature
from vtdsim.driver.intel import dmar as D
from vtdsim.driver.intel import pasid as P
from vtdsim.driver.intel.dmar import IntelIommu
from vtdsim.driver.intel.domain_id import domain_attach_iommu
from vtdsim.driver.kernel import Kernel
from vtdsim.errors import ArgumentError, MemoryAccessError
from vtdsim.hw import iommu as H
from vtdsim.hw.caps import Capabilities
from vtdsim.hw.memory import PAGE_SIZE, FrameAllocator, OutOfFrames, PhysicalMemory
from vtdsim.spec.descriptors import DescType

# -- helpers -----------------------------------------------------------------------------------


def _outcome(f: Callable[..., Any], *args: Any) -> tuple[Any, ...]:
    try:
        return ("ok", f(*args))
    except Exception as e:  # the typed error is what is compared
        return (type(e).__name__, getattr(e, "errno", None), str(e))


def _units_state(k: Kernel) -> list[Any]:
    out: list[Any] = []
    for unit, io in zip(k.platform.units, k.iommus, strict=True):
        tr = unit._translator
        out.append(
            (
                dict(unit._regs),
                unit._iq_head,
                unit._iq_tail,
                unit.statistics(),
                tr.statistics() if tr is not None else None,
                io._free_head,
                io.clflushes,
            )
        )
    return out


def _devtlbs(k: Kernel) -> list[object]:
    return [d.devtlb_statistics() for d in k.platform.devices]


def _kernel_state(k: Kernel) -> tuple[object, ...]:
    return (
        k.platform.memory.snapshot(),
        _units_state(k),
        _devtlbs(k),
        k.accounting(),
        k.audit(full=True),
        k.frames.statistics(),
        sorted(k.frames.live.items()),
        k.ops.pasid_allocator.allocated(),
        [io.domain_ids.in_use() for io in k.iommus],
        dict(k.injector.calls),
        dict(k.injector.injected),
    )


def _aux_cycles(k: Kernel, seed: int, trace: list[object]) -> None:
    """Random aux attach/detach of a few domains to every device (first attaches on fresh
    directory slots, repeated ones, failures injected at every allocation site) with DMAs in
    between, so that the teardown flushes drop cached translations."""
    rng = random.Random(seed)
    devs = list(k.devices)
    for dev in devs:
        k.dev_enable_feature(dev, Feature.AUX)
    doms: list[Any] = [k.domain_alloc("unmanaged") for _ in range(4)]
    for j, d in enumerate(doms):
        k.map(d, 0x10000 * (j + 1), 0x100000 + 0x1000 * j, 0x1000)
    sites = ("did", "pasid", "pasid-table")
    for _ in range(150):
        r = rng.random()
        d = rng.choice(doms)
        dev = rng.choice(devs)
        if r < 0.1:
            k.injector.fail(rng.choice(sites), after=rng.randrange(2))
        elif r < 0.14:
            k.injector.clear()
        if r < 0.5:
            trace.append(("attach", _outcome(k.aux_attach_device, d, dev)))
        elif r < 0.85:
            trace.append(("detach", _outcome(k.aux_detach_device, d, dev)))
        else:
            got = _outcome(k.aux_get_pasid, d, dev)
            trace.append(("pasid", got))
            if isinstance(got, tuple) and got[0] == "ok":
                j = doms.index(d)
                dma = dev.dma_read(0x10000 * (j + 1), 4, pasid=got[1])
                trace.append(("dma", dma.ok, bytes(dma.data) if dma.ok else None))
    k.injector.clear()


# -- the queue's translator is bound when the translator is ------------------------------------


def _unbind(k: Kernel) -> None:
    """The pre-shortcut state: the queue binds the translator at its next submission
    (RemappingUnit._run_queue)."""
    for unit in k.platform.units:
        unit._qi_tr = None
        unit._qi_tr_psi = None


def test_translator_bound_at_creation_matches_binding_at_the_next_submission(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The translator setter binds the queue's handlers (as _run_queue did at the next
    submission): the same caches, statistics, registers and memory after random aux cycles
    and DMAs, and the restored world's first submission takes _iqt_written's fast path."""
    runs: list[Any] = []
    calls = {"n": 0}
    run_queue = H.RemappingUnit._run_queue

    def counting(self: H.RemappingUnit) -> None:
        calls["n"] += 1
        run_queue(self)

    monkeypatch.setattr(H.RemappingUnit, "_run_queue", counting)
    for bound in (True, False):
        k = Kernel.for_testing(ndev=3)
        unit = k.platform.units[0]
        tr = unit.translator  # created now, as DriverWorld.snapshot does
        assert unit._qi_tr is tr
        assert unit._qi_tr_psi == tr.invalidate_iotlb_page
        if not bound:
            _unbind(k)
        calls["n"] = 0
        k.iommus[0].flush_pasid_cache(5, 3)
        first = calls["n"]
        trace: list[object] = []
        _aux_cycles(k, 3, trace)
        runs.append((first, trace, _kernel_state(k), unit._qi_tr is unit._translator))
    assert runs[0][0] == 0  # bound: no _run_queue detour
    assert runs[1][0] == 1  # unbound: the detour binds it
    assert runs[0][1:] == runs[1][1:]
    assert any(t[0] == "dma" and t[1] for t in runs[0][1])


def test_reset_and_a_replaced_translator_keep_the_queue_bound() -> None:
    k = Kernel.for_testing(ndev=1)
    unit = k.platform.units[0]
    tr = unit.translator
    unit.reset()
    assert unit._qi_tr is tr and unit._qi_tr_psi == tr.invalidate_iotlb_page
    unit.translator = None
    assert unit._qi_tr is None and unit._qi_tr_psi is None


# -- addr_width fixed at construction ----------------------------------------------------------


@pytest.mark.parametrize(
    ("sagaw", "mgaw"), [(frozenset({39, 48}), 48), (frozenset({39, 48}), 39), (frozenset({39}), 48)]
)
def test_addr_width_at_construction_matches_the_width_computed_on_first_use(
    sagaw: frozenset[int], mgaw: int
) -> None:
    """IntelIommu.addr_width is what _agaw_width computed on the first attach, and an aux
    attach to a device behind a narrower unit fails the same way (-EFAULT) as when the width is
    computed by that attach."""
    from vtdsim.driver.intel.iommu import _agaw_width
    from vtdsim.hw.platform import Platform

    outs: list[Any] = []
    for computed in (True, False):
        p = Platform(1 << 32)
        p.add_unit(None, name="dmar0", scope=["00:02.0"])
        caps = dataclasses.replace(Capabilities(), sagaw=sagaw, mgaw=mgaw)
        p.add_unit(caps, name="dmar1", scope=["00:03.0"])
        for bdf in ("00:02.0", "00:03.0"):
            p.add_device(bdf, pasid_bits=20, ats=True)
        k = Kernel(p, "corrected")
        for io in k.iommus:
            width = io.addr_width
            io.addr_width = None
            assert _agaw_width(io) == width
            assert width == min(D.agaw_to_width(io.agaw), D.cap_mgaw(io.cap))
        out = []
        for bdf in ("00:02.0", "00:03.0"):
            dev = k.device(bdf)
            k.dev_enable_feature(dev, Feature.AUX)
            for top in (1 << 30, 1 << 39, (1 << 39) + 0x1000, 1 << 47):
                d: Any = k.domain_alloc("unmanaged")
                out.append(_outcome(k.map, d, top - 0x1000, 0x200000, 0x1000))
                if not computed:  # the pre-shortcut state: computed by this attach
                    for io in k.iommus:
                        io.addr_width = None
                out.append(_outcome(k.aux_attach_device, d, dev))
        outs.append((out, _kernel_state(k)))
    assert outs[0] == outs[1]
    if mgaw == 39:
        assert any(o[0] == "IommuError" and o[1] == 14 for o in outs[0][0])  # -EFAULT seen


# -- the whole-address-space PASID device-TLB descriptor cache ---------------------------------


def test_pasid_devtlb_descriptor_cache_is_shared_per_quirk() -> None:
    """The cache is shared by every unit and outlives them (a world restore keeps it) but is
    keyed by the PFSID quirk: units with and without it, interleaved, each get the encoder's
    descriptor; the unit's attribute is a read-only view."""
    ks = [Kernel.for_testing(ndev=3), Kernel.for_testing(ndev=3, quirks=D.Quirks.linux_5_1())]
    rng = random.Random(8)
    D._PDEVTLB_ALL_QW0.clear()
    for _ in range(200):
        k = rng.choice(ks)
        io = k.iommus[0]
        info = rng.choice(list(k.ops.infos.values()))
        pasid = rng.choice([1, 2, 0x55, 0xFFFFF])
        io.qi_trace = []
        io.flush_dev_iotlb(info, pasid, 0, 52)
        want = io.desc_dev_iotlb_pasid(info.sid, info.pfsid, pasid, info.ats_qdep, 0, 52)
        assert io.qi_trace[0] == want
    assert {key[4] for key in D._PDEVTLB_ALL_QW0} == {False, True}
    io = ks[0].iommus[0]
    assert isinstance(io._pdevtlb_all_qw0, MappingProxyType)
    assert dict(io._pdevtlb_all_qw0) == D._PDEVTLB_ALL_QW0


# -- the device-TLB source-id cache ------------------------------------------------------------


def test_devtlb_source_id_cache_matches_a_platform_lookup_per_descriptor() -> None:
    """The unit's sid -> function cache, kept across resets of its contents by the world
    snapshot, against a lookup through the platform for every descriptor (the cache emptied
    before each): same device TLBs, statistics, registers and memory."""
    runs: list[Any] = []
    for cached in (True, False):
        k = Kernel.for_testing(ndev=3)
        unit = k.platform.units[0]
        if not cached:
            orig = unit._qi_pdevtlb

            def uncached(lo: int, hi: int, _o: Any = orig, _u: Any = unit) -> int | None:
                _u._qi_devices_clear()
                return _o(lo, hi)  # type: ignore[no-any-return]

            table = list(unit._qi_table)
            table[int(DescType.PDEVTLB)] = uncached
            unit._qi_table = tuple(table)
        trace: list[object] = []
        _aux_cycles(k, 11, trace)
        runs.append((trace, _kernel_state(k)))
        assert isinstance(unit._qi_devices, MappingProxyType)
        if cached:
            found = dict(unit._qi_devices).items()
            assert found and found <= {d.sid: d for d in k.platform.devices}.items()
    assert runs[0] == runs[1]
    assert any(s.invalidations for s in runs[0][1][2])  # device TLB entries were dropped


def test_devtlb_source_id_cache_survives_a_world_restore_and_empties_on_reset() -> None:
    from vtdsim.explore.adapter import DriverWorld

    w = DriverWorld("corrected")
    dom = w.new_domain()
    assert w.attach(dom, 0) == 0
    snap = w.snapshot()
    unit = w.platform.units[0]
    assert not unit._qi_devices
    assert w.detach(dom, 0) == 0  # the teardown's device-TLB flush finds 00:02.0
    sid = w.devs[0].sid
    assert unit._qi_devices[sid] is w.devs[0]
    snap.restore()
    assert unit._qi_devices[sid] is w.devs[0]  # not part of the world's state
    assert w.detach(dom, 0) == 0
    unit.reset()
    assert not unit._qi_devices


def test_devtlb_source_id_cache_keeps_nothing_alive() -> None:
    """The cache lives and dies with its unit (no registry outside it)."""
    k = Kernel.for_testing(ndev=2)
    dev = k.devices[0]
    k.iommus[0].flush_dev_iotlb(k.ops.infos[id(dev)], 5, 0, 52)
    unit = k.platform.units[0]
    assert unit._qi_devices[dev.sid] is dev
    ref = weakref.ref(unit)
    del k, dev, unit
    gc.collect()
    assert ref() is None


# -- the PASID leaf table on first use ---------------------------------------------------------


def _leaf_kernel(caps: Capabilities | None) -> tuple[Kernel, Any, Any]:
    k = Kernel.for_testing(ndev=3, caps=caps)
    d: Any = k.domain_alloc("unmanaged")
    k.map(d, 0x4000, 0x200000, 0x1000)
    nodid: Any = k.domain_alloc("unmanaged")
    io = k.iommus[0]
    with io.lock:
        domain_attach_iommu(d, io)
    return k, d, nodid


def _setup(held: bool, io: IntelIommu, dom: Any, info: Any, pasid: Any, ov: bool) -> None:
    if held:
        P.setup_second_level_held(io, dom, info, pasid, ov)
    else:  # the general function: intel_pasid_get_entry allocates the leaf
        P.intel_pasid_setup_second_level(io, dom, info, pasid, overwrite=ov)


@pytest.mark.parametrize(
    "caps",
    [None, dataclasses.replace(Capabilities(), coherent=False, caching_mode=True)],
)
def test_first_use_leaf_allocation_matches_intel_pasid_get_entry(
    caps: Capabilities | None,
) -> None:
    """setup_second_level_held's inlined allocation of a leaf PASID table against
    intel_pasid_setup_second_level (which allocates it in intel_pasid_get_entry): fresh and
    present directory slots, failing leaf allocations (-ENODEV), present entries (-EBUSY or
    overwrite), bad PASIDs, a domain without a DID, a non-coherent unit in caching mode; the
    same memory, frames, clflush counts, flushes, errors and sync operations."""
    runs: list[Any] = []
    for held in (True, False):
        rng = random.Random(17)
        k, d, nodid = _leaf_kernel(caps)
        io = k.iommus[0]
        io.qi_trace = []
        infos = list(k.ops.infos.values())
        b = Recorder()
        out = []
        with sync.installed(b):
            for _ in range(150):
                info = rng.choice(infos)
                pasid = rng.choice(
                    [rng.randrange(1, 1 << 20), rng.randrange(1, 4096), 64, 65, 1 << 20, -1, "x"]
                )
                dom = d if rng.random() < 0.9 else nodid
                if rng.random() < 0.15:
                    k.injector.fail("pasid-table")
                with io.lock:
                    out.append(_outcome(_setup, held, io, dom, info, pasid, rng.random() < 0.2))
                k.injector.clear()
        runs.append((out, b.log, list(io.qi_trace), _kernel_state(k)))
    assert runs[0] == runs[1]
    errs = {o[1] for o in runs[0][0] if o[0] == "IommuError"}
    assert {16, 19} <= errs  # -EBUSY, -ENODEV
    assert ("point", "alloc:pasid-table") in runs[0][1]
    assert ("access", "pasid-dir", True) in runs[0][1]


def test_leaf_installed_by_another_thread_at_the_allocation_point() -> None:
    """Linux's cmpxchg64 of the directory slot: another thread installs a leaf while this one
    allocates (at the "alloc:pasid-table" scheduling point); both paths free their own leaf
    and use the installed one, with the same sync operations, memory and frames."""
    runs: list[Any] = []
    for held in (True, False):
        k, d, _nodid = _leaf_kernel(None)
        io = k.iommus[0]
        info = next(iter(k.ops.infos.values()))
        mem = k.platform.memory
        other: list[int] = []

        def install(label: str, _k: Kernel = k, _info: Any = info, _o: list[int] = other) -> None:
            if label == "alloc:pasid-table" and not _o:
                leaf = _k.frames.alloc(0, "pasid-table")
                _o.append(leaf)
                slot = _info.pasid_table.table + 8 * (0x4242 >> P.PASID_PDE_SHIFT)
                _k.platform.memory.write64(slot, leaf | 1)

        b = Recorder(install)
        with sync.installed(b), io.lock:
            out = _outcome(_setup, held, io, d, info, 0x4242, False)
        pte = P.intel_pasid_get_entry(info, 0x4242)
        assert pte >> 12 == other[0] >> 12
        runs.append((out, b.log, mem.read_qwords(pte, 8), _kernel_state(k)))
    assert runs[0] == runs[1]
    assert runs[0][0] == ("ok", None)
    assert ("access", "pasid-dir", True) not in runs[0][1]


def test_first_attach_after_a_world_restore_matches_the_general_paths() -> None:
    """The explorer's pair on its own world (detach from 00:02.0, first attach to 00:03.0
    behind dmar1), restored before each round: the leaf allocated inline gives what the
    general function gives, with the same sync operations."""
    from vtdsim.explore.adapter import DriverWorld

    runs: list[Any] = []
    for general in (False, True):
        w = DriverWorld("corrected")
        dom = w.new_domain()
        assert w.attach(dom, 0) == 0
        snap = w.snapshot()
        saved = P.setup_second_level_held
        if general:

            def g(io: IntelIommu, domain: Any, info: Any, pasid: int, ov: bool) -> None:
                P.intel_pasid_setup_second_level(io, domain, info, pasid, overwrite=ov)

            setattr(P, "setup_second_level_held", g)  # noqa: B010
        try:
            rounds = []
            for _ in range(3):
                snap.restore()
                b = Recorder()
                with sync.installed(b):
                    r = (w.detach(dom, 0), w.attach(dom, 1), w.attach(dom, 2), w.detach(dom, 1))
                rounds.append((r, b.log, _kernel_state(w.kernel)))
        finally:
            setattr(P, "setup_second_level_held", saved)  # noqa: B010
        runs.append(rounds)
    assert runs[0] == runs[1]
    assert runs[0][0][0] == (0, 0, 0, 0)
    assert runs[0][0] == runs[0][2]


# -- memory: frame zeroing, page materialisation, reads of pages never written -----------------


def _ref_frame_alloc(fa: FrameAllocator, order: int, tag: str) -> int:
    """FrameAllocator.alloc before zero_pages was inlined for one frame."""
    if fa.fail_hook is not None and fa.fail_hook(tag, order):
        fa._failures += 1
        raise OutOfFrames(order, tag, injected=True)
    size = PAGE_SIZE << order
    free = fa._free.get(order)
    if free:
        addr = free.pop()
    else:
        addr = (fa._next + size - 1) & ~(size - 1)
        if addr + size > fa.end:
            fa._failures += 1
            raise OutOfFrames(order, tag)
        for skipped in range(fa._next, addr, PAGE_SIZE):
            fa._free.setdefault(0, []).append(skipped)
        fa._next = addr + size
    fa.memory.zero_pages(addr, 1 << order)
    fa.live[addr] = (order, tag)
    fa._allocs += 1
    return addr


def _memories(tmp_path: Path) -> list[Callable[[], PhysicalMemory]]:
    img = tmp_path / "img.bin"
    img.write_bytes(bytes(range(1, 256)) * 97)  # ~6 pages, a partial tail page
    return [
        lambda: PhysicalMemory(1 << 20),
        lambda: PhysicalMemory.from_image(img, 1 << 20),
    ]


def test_frame_zeroing_matches_zero_pages(tmp_path: Path) -> None:
    """Order-0 allocations zero their frame inline: written frames zeroed, image frames
    materialised as zeros, frames never written left absent, as zero_pages does."""
    for make in _memories(tmp_path):
        runs: list[Any] = []
        for reference in (False, True):
            rng = random.Random(5)
            mem = make()
            fa = FrameAllocator(mem, 0, 1 << 17)
            out = []
            live: list[int] = []
            for _ in range(200):
                r = rng.random()
                if r < 0.5 or not live:
                    order = rng.choice([0, 0, 0, 1, 2])
                    f = _ref_frame_alloc if reference else FrameAllocator.alloc
                    got = _outcome(f, fa, order, "t")
                    out.append(got)
                    if got[0] == "ok":
                        live.append(got[1])
                        if rng.random() < 0.5:
                            mem.write64(got[1] + 8 * rng.randrange(512), rng.getrandbits(64))
                elif r < 0.8:
                    fa.free(live.pop(rng.randrange(len(live))))
                else:
                    out.append(mem.read_qwords(rng.choice(live), 8))
            runs.append((out, mem.snapshot(), sorted(mem.present_pages()), fa.statistics()))
        assert runs[0] == runs[1]


def test_page_materialisation_and_zero_reads_match_byte_level_access(tmp_path: Path) -> None:
    """read64 of a page never written (no image) returns zero as the checking path does;
    write64/write_qwords into a page never written (no image: zeros) and page_for_store
    materialise it as byte-level writes do; out-of-range and non-integer addresses raise the
    same typed errors with nothing changed."""
    for make in _memories(tmp_path):
        runs: list[Any] = []
        for reference in (False, True):
            rng = random.Random(9)
            mem = make()
            out: list[object] = []
            for _ in range(300):
                addr = rng.choice(
                    [
                        8 * rng.randrange(1 << 17),
                        rng.randrange(1 << 20),
                        (1 << 20) - 8,
                        1 << 20,
                        -8,
                        rng.randrange(8) * PAGE_SIZE,
                    ]
                )
                op = rng.randrange(4)
                if op == 0:
                    if reference:
                        out.append(
                            _outcome(lambda a, m=mem: int.from_bytes(m.read(a, 8), "little"), addr)
                        )
                    else:
                        out.append(_outcome(mem.read64, addr))
                elif op == 1:
                    v = rng.getrandbits(64)
                    if reference:
                        out.append(_outcome(mem.write, addr, v.to_bytes(8, "little")))
                    else:
                        out.append(_outcome(mem.write64, addr, v))
                elif op == 2:
                    vals = tuple(rng.getrandbits(64) for _ in range(7))
                    a = addr & ~7
                    if reference:
                        data = b"".join(x.to_bytes(8, "little") for x in vals)
                        out.append(_outcome(mem.write, a, data))
                    else:
                        out.append(_outcome(mem.write_qwords, a, vals))
                else:
                    # page_for_store, then a 64-byte entry stored into it (a PASID entry)
                    a = addr & ~63
                    data = rng.randbytes(64)
                    if reference:
                        out.append(_outcome(mem.write, a, data))
                    else:

                        def store(x: int, _d: bytes = data, _m: PhysicalMemory = mem) -> None:
                            buf = _m.page_for_store(x)
                            buf[x & 0xFFF : (x & 0xFFF) + 64] = _d

                        out.append(_outcome(store, a))
                if out[-1][0] != "ok":  # type: ignore[index]
                    out[-1] = out[-1][0]  # type: ignore[index]  # messages differ by method
            runs.append((out, mem.snapshot(), sorted(mem.present_pages())))
        assert runs[0] == runs[1]
    mem = PhysicalMemory(1 << 20)
    for bad, err in ((1 << 20, MemoryAccessError), (-1, MemoryAccessError), ("x", ArgumentError)):
        with pytest.raises(err):
            mem.page_for_store(bad)  # type: ignore[arg-type]
    assert not mem.written_pages
