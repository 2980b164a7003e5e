"""The hot-path shortcuts of the strict unmap / aux detach paths produce exactly what the
general paths produce: ring bytes, PASID entries, cache contents, memory."""

from __future__ import annotations

import random
from types import MappingProxyType
from typing import Any

import pytest

from qi_state import unit_state
from sync_recorder import Recorder
from vtdsim.driver.core import Feature
from vtdsim.driver.intel import pasid as P
from vtdsim.driver.intel.dmar import QI_LENGTH, QiError
from vtdsim.driver.intel.iommu import DmarDomain
from vtdsim.driver.kernel import Kernel
from vtdsim.errors import ArgumentError, MemoryAccessError
from vtdsim.hw.caches import Iotlb, IotlbEntry
from vtdsim.hw.caps import CacheGeometry
from vtdsim.hw.memory import FrameAllocator, PhysicalMemory
from vtdsim.spec.entries import PASID_ENTRY


@pytest.mark.parametrize(
    "args",
    [(1, 0x1234000, 5, 1, 1), (2, 0xFFF000, 0xFFFF, 0, 0), (0, 0, 0, 0, 1), (3, 1 << 51, 7, 1, 0)],
)
def test_second_level_entry_matches_the_layout_encoder(args: tuple[int, ...]) -> None:
    agaw, pgd, did, pgsnp, sre = args
    assert P._sl_entry(agaw, pgd, did, pgsnp, sre) == PASID_ENTRY.encode(
        P=1, AW=agaw, PGTT=P.PGTT_SL_ONLY, SLPTPTR=pgd, DID=did, PGSNP=pgsnp, SRE=sre
    )


def test_second_level_entry_keeps_the_layout_errors() -> None:
    with pytest.raises(ArgumentError):
        P._sl_entry(1, 0x1234001, 5, 1, 1)  # unaligned table pointer
    with pytest.raises(ArgumentError):
        P._sl_entry(1, 0x1000, 1 << 16, 1, 1)  # DID beyond 16 bits


def _ring(k: Kernel) -> bytes:
    io = k.iommus[0]
    return k.platform.memory.read(io.qi_desc, QI_LENGTH * 32)


def test_ring_bytes_identical_with_and_without_the_one_slice_copy() -> None:
    """Every submission shape (wrap, page crossing, qwords 2-3 in use, then reused slots)
    leaves the same ring bytes, status words and tail whichever copy wrote it."""
    shapes = [1, 3, 2, 7, 1, 1, 5] * 20
    ks = []
    for fast in (True, False):
        k = Kernel.for_testing(ndev=1)
        io = k.iommus[0]
        if not fast:  # force the slot-by-slot copy: one slot of qwords 2-3 "in use" elsewhere
            io._qi_dirty_hi.add(QI_LENGTH - 1)
        for i, n in enumerate(shapes):
            descs = [io.desc_iotlb(2, 0x1000 * j, 0, 3 << 60) for j in range(n)]
            if i % 9 == 4:  # a 256-bit descriptor with qwords 2-3 set is invalid: IQE
                with pytest.raises(QiError):
                    io.qi_submit_sync([(0x2 | 1 << 4, 0, 5, 0)])
            io.qi_submit_sync(descs)
        ks.append(k)
    a, b = ks
    ra, rb = bytearray(_ring(a)), bytearray(_ring(b))
    last = (QI_LENGTH - 1) * 32  # the forced-dirty slot: its qwords 2-3 may differ only
    assert ra[:last] == rb[:last]
    ia, ib = a.iommus[0], b.iommus[0]
    mem_a, mem_b = a.platform.memory, b.platform.memory
    assert mem_a.read(ia.qi_status, 4096) == mem_b.read(ib.qi_status, 4096)
    assert ia._free_head == ib._free_head
    assert a.platform.units[0].statistics() == b.platform.units[0].statistics()


@pytest.mark.parametrize("geometry", [CacheGeometry(16, 4), CacheGeometry()])
def test_page_selective_invalidation_matches_the_generic_predicate(
    geometry: CacheGeometry,
) -> None:
    """Bounded (set-associative) and unbounded (the inlined predicate) caches alike."""

    def filled() -> Iotlb:
        c = Iotlb(geometry, "t")
        for did in (2, 3):
            for base, shift, pgtt in ((0, 12, 2), (0x1000, 12, 2), (0x200000, 21, 2), (0, 30, 1)):
                c.fill(IotlbEntry(did, None, base, shift, base, 3, pgtt, False))
        return c

    for addr, am in ((0x1000, 0), (0, 1), (0x200000, 0), (0x3000, 9), (0, 18)):
        fast, slow = filled(), filled()
        n = fast.invalidate_page(2, addr, am)
        lo = addr & ~((1 << (12 + am)) - 1)
        hi = lo + (1 << (12 + am))

        def pred(k: object, v: IotlbEntry, lo: int = lo, hi: int = hi) -> bool:
            return (
                v.did == 2
                and v.pgtt in {0, 2, 3, 4}
                and v.base < hi
                and lo < v.base + (1 << v.shift)
            )

        m = slow.invalidate_where(pred)
        assert n == m and sorted(map(repr, fast.items())) == sorted(map(repr, slow.items()))
        assert fast.invalidations == slow.invalidations
    with pytest.raises(ArgumentError):
        filled().invalidate_page(2, -1, 0)
    with pytest.raises(ArgumentError):
        filled().invalidate_page(None, 0, 0)


def test_stale_translation_survives_a_missing_invalidation_only() -> None:
    """The translator is created by the first DMA: an unmap afterwards still invalidates it,
    and a flush that does not cover the page leaves the stale entry (semantics unchanged)."""
    k = Kernel.for_testing(ndev=1)
    dev = k.devices[0]
    d = k.domain_alloc("unmanaged")
    k.attach_device(d, dev)
    k.map(d, 0x10000, 0x100000, 0x2000)
    assert dev.dma_read(0x10000, 4).ok and dev.dma_read(0x11000, 4).ok
    k.unmap(d, 0x10000, 0x1000)
    assert not dev.dma_read(0x10000, 4).ok
    assert isinstance(d, DmarDomain) and d.pgtable is not None
    d.pgtable.unmap(0x11000, 0x1000)  # cleared behind the IOMMU's back: no flush
    assert dev.dma_read(0x11000, 4).ok  # stale, as hardware would
    k.iommus[0].flush_iotlb_psi(2, 0x11000, 1, dev_infos=[k.ops.info(dev)])
    assert not dev.dma_read(0x11000, 4).ok


def test_aux_detach_trace_order_is_linux() -> None:
    k = Kernel.for_testing(ndev=1)
    dev = k.devices[0]
    k.dev_enable_feature(dev, Feature.AUX)
    d = k.domain_alloc("unmanaged")
    io = k.iommus[0]
    k.aux_attach_device(d, dev)
    io.qi_trace = []
    k.aux_detach_device(d, dev)
    types = [desc[0] & 0xF | (desc[0] >> 5) & 0x70 for desc in io.qi_trace]
    assert types == [7, 5, 2, 5, 8, 5]  # PASID cache, wait, IOTLB DSI, wait, devTLB, wait


def test_zero_pages_and_aligned_write32() -> None:
    mem = PhysicalMemory(1 << 20)
    mem.write64(0x3000, 0x1122334455667788)
    frames = FrameAllocator(mem, 0x2000, 0x10000)
    assert frames.alloc(1) == 0x2000  # pages 2-3, page 3 was dirty
    assert mem.read64(0x3000) == 0
    mem.write32(0x4004, 0xDEADBEEF)
    mem.write32(0x4000, 0x12345678)
    assert mem.read64(0x4000) == 0xDEADBEEF_12345678
    mem.write32(0x5002, 0xAABBCCDD)  # unaligned: the byte path
    assert mem.read(0x5000, 8) == bytes.fromhex("0000ddccbbaa0000")
    with pytest.raises(MemoryAccessError):
        mem.write32(1 << 20, 1)


# --- second round: inlined hot paths against their general twins ---------------------------


def _ats_range_loop(addr: int, size_bit: bool) -> tuple[int, int]:
    """The per-bit loop ats_range used before the lowest-clear-bit trick."""
    a = addr & ~0xFFF & ((1 << 64) - 1)
    if not size_bit:
        return a, 1 << 12
    b = 12
    while b < 63 and (a >> b) & 1:
        b += 1
    if b >= 63:
        return 0, 1 << 64
    size = 1 << (b + 1)
    return a & ~(size - 1), size


def test_ats_range_bit_trick_matches_the_loop() -> None:
    from vtdsim.hw.pci import ats_range

    rng = random.Random(7)
    cases = [0, 0xFFF, 0x1000, 0x7FF_FFFF_F000, (1 << 63) - 1, (1 << 64) - 1, 1 << 70, 1 << 62]
    cases += [((1 << b) - 1) & ~0xFFF for b in range(12, 70)]
    for _ in range(5000):
        a = rng.getrandbits(rng.choice((13, 24, 52, 64, 72)))
        if rng.random() < 0.5:
            a |= (1 << rng.randrange(12, 72)) - 1
        cases.append(a)
    for a in cases:
        for s in (False, True):
            assert ats_range(a, s) == _ats_range_loop(a, s), hex(a)


def test_iqt_fast_path_matches_tail_moved_on_random_sequences() -> None:
    """_iqt_written inlines _tail_moved: random submissions (valid, invalid, reserved bits),
    raw IQT writes (misaligned, beyond the queue, upper dword) and IQE recovery leave the
    same registers, statistics and memory as the generic handler."""
    from vtdsim.driver.intel.dmar import DMAR_FSTS_REG, DMAR_IQT_REG

    states = []
    for generic in (False, True):
        rng = random.Random(11)
        k = Kernel.for_testing(ndev=1)
        unit = k.platform.units[0]
        io = k.iommus[0]
        if generic:

            def h(old: int, v: int, part: int, unit: object = unit) -> None:
                if part & 0xFFFF_FFFF and unit.qi_enabled:  # type: ignore[attr-defined]
                    unit._tail_moved()  # type: ignore[attr-defined]

            for off in (DMAR_IQT_REG, DMAR_IQT_REG + 4):
                ent = unit._wr32[off]  # the access maps are read-only views: replace
                unit._wr32 = MappingProxyType({**unit._wr32, off: (*ent[:5], h)})
        trace = []
        for _ in range(400):
            r = rng.random()
            try:
                if r < 0.6:
                    descs = [
                        io.desc_iotlb(rng.randrange(2, 6), rng.getrandbits(20) << 12, 0, 3 << 60)
                        for _ in range(rng.randrange(1, 4))
                    ]
                    if rng.random() < 0.1:
                        descs.append((0x2 | 1 << 4, 0, rng.randrange(2), 0))  # invalid
                    io.qi_submit_sync(descs)
                    trace.append("ok")
                elif r < 0.8:
                    unit.write32(
                        DMAR_IQT_REG, rng.choice((0x10, 0x8000, 0x20 * rng.randrange(300)))
                    )
                    trace.append(unit.read32(DMAR_FSTS_REG))
                elif r < 0.9:
                    unit.write32(DMAR_IQT_REG + 4, rng.getrandbits(32))
                    trace.append("hi")
                else:
                    unit.write32(DMAR_FSTS_REG, 0x7F)  # clear every error (IQE kicks the queue)
                    trace.append(unit.read32(DMAR_FSTS_REG))
            except QiError as e:
                trace.append((e.errno, str(e)))
        states.append((trace, unit_state(k)))
    assert states[0] == states[1]


def _map_ref(
    core: object, domain: object, iova: object, paddr: object, size: object, prot: object
) -> None:
    """core.map as it was before the inlined checks: _domain, _range, prot, size 0."""
    from vtdsim.driver.core import _PROT_ALL

    c: Any = core
    d = c._domain(domain, paging=True)
    c._range(d, iova, size, paddr)
    if type(prot) is not int or prot & ~_PROT_ALL:
        raise ArgumentError("prot", prot, "IOMMU_READ|IOMMU_WRITE|IOMMU_CACHE|IOMMU_NOEXEC")
    if size == 0:
        return
    c.ops.map(d, iova, paddr, size, prot)


def _unmap_ref(core: object, domain: object, iova: object, size: object) -> int:
    c: Any = core
    d = c._domain(domain, paging=True)
    c._range(d, iova, size)
    if size == 0:
        return 0
    return int(c.ops.unmap(d, iova, size))


def _outcome(f: Any, *args: object) -> object:
    try:
        return ("ok", f(*args))
    except Exception as e:  # the typed error is what is compared
        return (type(e).__name__, getattr(e, "errno", None), str(e))


def test_core_map_unmap_fast_checks_match_the_checking_path() -> None:
    """Random (valid and invalid) map/unmap calls: the inlined argument checks of
    IommuCore.map/unmap give the same results, typed errors, page tables and descriptors as
    the original _domain/_range sequence."""
    rng = random.Random(3)
    ks = [Kernel.for_testing(ndev=1) for _ in range(2)]
    doms = []
    for k in ks:
        d = k.domain_alloc("unmanaged")
        k.attach_device(d, k.devices[0])
        ident = k.domain_alloc("identity")
        freed = k.domain_alloc("unmanaged")
        k.domain_free(freed)
        k.iommus[0].qi_trace = []
        doms.append((d, ident, freed))
    bad: list[object] = [-1, 1 << 64, 0x800, True, 1.0, "0x1000", None]
    for _ in range(1500):
        which = rng.random()
        dom_i = 0 if which < 0.85 else rng.choice((1, 2, 3, 4))
        iova = (
            rng.randrange(64) << 12
            if rng.random() < 0.9
            else rng.choice([*bad, 1 << 47, (1 << 48) - 0x1000])
        )
        size = (
            rng.choice((0x1000, 0x1000, 0x2000, 0x200000, 0))
            if rng.random() < 0.9
            else rng.choice(bad)
        )
        paddr = (0x100 + rng.randrange(64)) << 12 if rng.random() < 0.95 else rng.choice(bad)
        prot = (
            rng.choice((1, 2, 3, 7, 3)) if rng.random() < 0.95 else rng.choice((0, 16, True, None))
        )
        op = rng.random() < 0.5
        res = []
        for k, (d, ident, freed) in zip(ks, doms, strict=True):
            dom: object = (d, ident, freed, [1], "x")[dom_i]
            if op:
                f = k.map if k is ks[0] else (lambda *a, k=k: _map_ref(k, *a))
                res.append(_outcome(f, dom, iova, paddr, size, prot))
            else:
                f = k.unmap if k is ks[0] else (lambda *a, k=k: _unmap_ref(k, *a))
                res.append(_outcome(f, dom, iova, size))
        assert res[0] == res[1]
    for page in range(64):
        assert ks[0].iova_to_phys(doms[0][0], page << 12) == ks[1].iova_to_phys(
            doms[1][0], page << 12
        )
    assert ks[0].iommus[0].qi_trace == ks[1].iommus[0].qi_trace
    assert ks[0].accounting() == ks[1].accounting()


def test_psi_4k_flush_descriptors_match_the_encoders() -> None:
    """_flush_iotlb_psi's 4 KiB path (cached qword 0s) queues exactly desc_iotlb's and
    desc_dev_iotlb's descriptors, for every DID, address, IH and device (ATS on/off)."""
    from vtdsim.driver.intel.dmar import _IH, DMA_TLB_PSI_FLUSH, VTD_PAGE_MASK

    k = Kernel.for_testing(ndev=2)
    io = k.iommus[0]
    infos = [k.ops.info(dev) for dev in k.devices]
    rng = random.Random(5)
    for _ in range(300):
        did = rng.randrange(2, 9)
        addr = rng.getrandbits(40) | rng.choice((0, 0x40, 0xFFF))
        ih = rng.random() < 0.5
        use = [i for i in infos if rng.random() < 0.7]
        for i in use:
            i.ats_enabled = rng.random() < 0.8
        io.qi_trace = []
        io.flush_iotlb_psi(did, addr, 1, ih=ih, dev_infos=use)
        a = addr & VTD_PAGE_MASK
        want = [io.desc_iotlb(did, a | int(ih) << _IH, 0, DMA_TLB_PSI_FLUSH)]
        want += [io.desc_dev_iotlb(i.sid, i.pfsid, i.ats_qdep, a, 0) for i in use if i.ats_enabled]
        assert io.qi_trace[:-1] == want
    for i in infos:
        i.ats_enabled = True


def test_pgtable_4k_inlined_paths_match_the_general_walks() -> None:
    """4 KiB map/unmap through the level-1 cache give the same tables, errors and max_addr as
    the walking paths (cache dropped before every call; unmap through _unmap_range and
    _clear_level)."""
    rng = random.Random(9)
    ks = [Kernel.for_testing(ndev=1) for _ in range(2)]
    pts = []
    for k in ks:
        d = k.domain_alloc("unmanaged")
        assert isinstance(d, DmarDomain) and d.pgtable is not None
        pts.append(d.pgtable)
    fast, slow = pts
    for _ in range(2000):
        iova = rng.randrange(1024) << 12 if rng.random() < 0.97 else rng.choice((1 << 48, 0x800))
        res = []
        if rng.random() < 0.5:
            paddr = rng.randrange(1, 4096) << 12
            prot = rng.choice((1, 2, 3, 4 | 3, 0x800 | 1))
            res.append(_outcome(fast.map, iova, paddr, 0x1000, prot))
            slow._l1.clear()
            res.append(_outcome(slow.map, iova, paddr, 0x1000, prot))
        else:
            if rng.random() < 0.5:
                res.append(_outcome(fast.unmap, iova, 0x1000))
            else:  # unmap_sync's own copy of the 4 KiB path (no unit to flush here)
                r: Any = _outcome(fast.unmap_sync, iova, 0x1000, [])
                res.append(("ok", (r[1], [])) if r[0] == "ok" else r)

            def general(iova: int = iova) -> tuple[int, list[int]]:
                start, last = slow._unmap_range(iova, 0x1000)
                freelist = slow.pending
                slow.pending = []
                slow._clear_level(slow.levels, slow.pgd, 0, start, last, freelist)
                if slow.max_addr == iova + 0x1000:
                    slow.max_addr = iova
                return (last - start + 1) << 12, freelist

            res.append(_outcome(general))
        assert res[0] == res[1]
        assert fast.max_addr == slow.max_addr
    for page in range(1024):
        assert fast.pte(page << 12) == slow.pte(page << 12)


def test_iqt_fast_path_follows_a_tail_moved_by_an_interrupt_handler() -> None:
    """A completion interrupt (wait descriptor with IF) whose handler queues more
    descriptors and writes IQT while the queue runs: the fast path hands over to the general
    loop exactly where _run_queue would go on (same IQH seen by the handler, same result)."""
    from vtdsim.driver.intel.dmar import DMAR_IQT_REG
    from vtdsim.hw import iommu as H
    from vtdsim.spec.registers import ICS, IECTL, IQH

    results = []
    for generic in (False, True):
        k = Kernel.for_testing(ndev=1)
        unit = k.platform.units[0]
        io = k.iommus[0]
        mem = k.platform.memory
        if generic:

            def h(old: int, v: int, part: int, unit: Any = unit) -> None:
                if part & 0xFFFF_FFFF and unit.qi_enabled:
                    unit._tail_moved()

            for off in (DMAR_IQT_REG, DMAR_IQT_REG + 4):
                ent = unit._wr32[off]  # the access maps are read-only views: replace
                unit._wr32 = MappingProxyType({**unit._wr32, off: (*ent[:5], h)})
        io.qi_submit_sync([io.desc_iotlb(2, 0, 0, 2 << 60)])  # head somewhere past 0
        head = unit.read32(IQH) >> 5
        status = io.qi_status
        seen: list[object] = []
        extra = iter([3, 2, 0])  # descriptors each interrupt queues

        def put(slot: int, qw0: int, qw1: int, mem: Any = mem, base: int = io.qi_desc) -> None:
            mem.write_qwords(base + ((slot % QI_LENGTH) << 5), [qw0, qw1, 0, 0])

        def on_irq(
            kind: str,
            addr: int,
            data: int,
            unit: Any = unit,
            io: Any = io,
            seen: list[object] = seen,
            extra: Any = extra,
        ) -> None:
            seen.append((kind, unit.read32(IQH), unit.read32(DMAR_IQT_REG)))
            unit.write32(ICS, 1)  # clear IWC: the next IF interrupts again
            n = next(extra, 0)
            tail = unit.read32(DMAR_IQT_REG) >> 5
            for j in range(n):
                qw0 = 0x5 | H._W_IF if j == n - 1 else io.desc_iotlb(3, 0, 0, 2 << 60)[0]
                put(tail + j, qw0, 0)
            if n:
                unit.write32(DMAR_IQT_REG, ((tail + n) % QI_LENGTH) << 5)

        unit.on_interrupt = on_irq
        unit.write32(IECTL, 0)  # unmask invalidation-completion interrupts
        put(head, io.desc_iotlb(4, 0, 0, 2 << 60)[0], 0)
        put(head + 1, 0x5 | H._W_IF | H._W_SW | 7 << H._W_SDATA_SH, status)
        unit.write32(DMAR_IQT_REG, ((head + 2) % QI_LENGTH) << 5)
        results.append((seen, unit_state(k)))
    assert results[0] == results[1]
    assert len(results[0][0]) == 3


# -- SpinLock ``with`` fast path, allocator hint, cached second-level entries, core aux ------


def test_spinlock_with_statement_matches_acquire_release() -> None:
    """``with lock`` inlines the no-backend acquire/release: same owner tracking, counter and
    errors as the explicit calls; with a backend every operation still reaches it, in order."""
    import threading

    from vtdsim.driver import sync

    for use_with in (False, True):
        lock = sync.SpinLock("l")
        if use_with:
            with lock:
                assert lock.owner == threading.get_ident()
                lock.assert_held()
                with pytest.raises(sync.LockingError, match="recursively"):
                    lock.__enter__()
        else:
            lock.acquire()
            assert lock.owner == threading.get_ident()
            lock.assert_held()
            with pytest.raises(sync.LockingError, match="recursively"):
                lock.acquire()
            lock.release()
        assert lock.owner is None and lock.acquisitions == 1 and not lock._lock.locked()
        with pytest.raises(sync.LockingError, match="must be held"):
            lock.assert_held()
        with pytest.raises(sync.LockingError, match="does not hold"):
            lock.__exit__(None, None, None)
        with pytest.raises(sync.LockingError, match="does not hold"):
            lock.release()
        # released by another thread than the owner
        lock.acquire()
        errs: list[BaseException] = []

        def other(
            lk: sync.SpinLock = lock, w: bool = use_with, out: list[BaseException] = errs
        ) -> None:
            try:
                lk.__exit__(None, None, None) if w else lk.release()
            except sync.LockingError as e:
                out.append(e)

        t = threading.Thread(target=other)
        t.start()
        t.join()
        assert len(errs) == 1 and lock.owner == threading.get_ident()
        lock.release()

    logs = []
    for use_with in (False, True):
        b = Recorder()
        lock = sync.SpinLock("m")
        with sync.installed(b):
            if use_with:
                with lock:
                    lock.assert_held()
                    with pytest.raises(sync.LockingError, match="recursively"):
                        lock.__enter__()
            else:
                lock.acquire()
                lock.assert_held()
                with pytest.raises(sync.LockingError, match="recursively"):
                    lock.acquire()
                lock.release()
            with pytest.raises(sync.LockingError, match="does not hold"):
                lock.__exit__(None, None, None) if use_with else lock.release()
        logs.append((b.log, lock.acquisitions))
    assert logs[0] == logs[1] == ([("acquire", "m"), ("release", "m")], 1)


def test_pasid_allocator_hint_path_matches_a_lowest_free_reference() -> None:
    """Random alloc/free sequences over random ranges: the allocator's hint fast path hands
    out the same ids and raises the same errors as a plain lowest-free scan."""
    from vtdsim.driver.intel.ioasid import AllocatorError, PasidAllocator
    from vtdsim.errors import IommuError

    rng = random.Random(7)
    for _ in range(20):
        a = PasidAllocator()
        ref: set[int] = set()
        for _ in range(400):
            if ref and rng.random() < 0.45:
                p = rng.choice(sorted(ref))
                ref.discard(p)
                a.free(p)
                continue
            lo = rng.choice([0, 1, 1, 2, rng.randrange(0, 40)])
            hi = rng.choice([lo, lo + 1, 16, 48, rng.randrange(0, 64), (1 << 20) + 5])
            want = next((p for p in range(lo, min(hi, 1 << 20)) if p not in ref), None)
            if want is None:
                with pytest.raises(IommuError) as ei:
                    a.alloc(lo, hi, "o")
                assert ei.value.errno == 28  # ENOSPC
            else:
                assert a.alloc(lo, hi, "o") == want
                ref.add(want)
            assert a.allocated() == sorted(ref)
        for p in sorted(ref):
            a.free(p)
        with pytest.raises(AllocatorError):
            a.free(1)
        assert a.allocated() == []


def test_cached_second_level_entries_are_the_composed_ones() -> None:
    """Aux attach writes the same PASID entry bytes whether the composed entry comes from the
    cache or from _sl_entry (cache cleared before every attach)."""

    def run(clear: bool) -> list[tuple[int, ...]]:
        k = Kernel.for_testing(ndev=2)
        out = []
        doms = [k.domain_alloc("unmanaged") for _ in range(3)]
        for dev in k.devices:
            k.dev_enable_feature(dev, Feature.AUX)
        for _ in range(3):
            for d in doms:
                for dev in k.devices:
                    if clear:
                        P._SL_CACHE.clear()
                    k.aux_attach_device(d, dev)
                    info = k.ops.info(dev)
                    pte = P.intel_pasid_get_entry(info, k.aux_get_pasid(d, dev))
                    out.append(info.iommu.memory.read_qwords(pte, 8))
            for d in doms:
                for dev in k.devices:
                    k.aux_detach_device(d, dev)
        return out

    a = run(True)
    assert a == run(False)
    assert all(w[0] & 1 for w in a)


def test_core_aux_bookkeeping_unwinds_on_driver_errors() -> None:
    """The aux paths' merged bookkeeping/_end: nothing stays in flight, success or failure."""
    from vtdsim.errors import IommuError

    k = Kernel.for_testing(ndev=2)
    dev = k.devices[0]
    d = k.domain_alloc("unmanaged")
    with pytest.raises(IommuError):
        k.aux_attach_device(d, dev)  # AUX not enabled: -EPERM from the driver
    assert not k._inflight and not k.device_state(dev).aux
    k.dev_enable_feature(dev, Feature.AUX)
    k.injector.fail("pasid")
    with pytest.raises(IommuError):
        k.aux_attach_device(d, dev)
    k.injector.clear()
    assert not k._inflight and not k.device_state(dev).aux and not d.aux_devices
    k.aux_attach_device(d, dev)
    k.aux_attach_device(d, dev)
    assert k.device_state(dev).aux == {d: 2} and d.aux_devices == {dev: 2}
    k.aux_detach_device(d, dev)
    assert k.device_state(dev).aux == {d: 1} and not k._inflight
    k.aux_detach_device(d, dev)
    assert not k.device_state(dev).aux and not d.aux_devices and not k._inflight
    with pytest.raises(IommuError):
        k.aux_detach_device(d, dev)
    assert not k._inflight
