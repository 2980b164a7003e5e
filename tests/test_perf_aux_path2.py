"""The second round of aux attach/detach shortcuts produces exactly what the general code does.

Each shortcut is run against the code it replaces, kept here as a reference (the pre-shortcut
implementation) or the general twin that stays in the tree, on random inputs (hypothesis),
valid and invalid: results, typed errors with their messages, allocator states, memory pages,
injector counters and the ``vtdsim.driver.sync`` operations the explorer schedules on.

* ``DomainIdAllocator.alloc(held=True)`` / ``free(held=True)`` (the ``assert_held`` a caller
  that has just taken the allocator's lock cannot fail, not repeated) and ``alloc`` with
  ``_first_free`` inlined, and the aux paths' choice between them (``ids.lock is lock``);
* ``PasidAllocator.alloc``'s exact-int argument check;
* ``FrameAllocator.alloc``'s exact-int order check and its alignment loop skipped when
  nothing is skipped;
* ``PhysicalMemory.write64`` / ``page_for_store`` with ``_writable`` inlined for memory
  without an image;
* ``setup_second_level_held``'s PGSNP test against the module's copy of
  ``DomainType.UNMANAGED``;
* ``DriverWorld``'s injector hook with ``FaultInjector.should_fail`` inlined for a site without
  a plan, and the frame allocator's hook as a plain function.
"""

from __future__ import annotations

import errno
import functools
import os
import random
import tempfile
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from sync_recorder import Recorder
from test_perf_driver_first_attach import _ref_frame_alloc
from vtdsim.driver import sync
from vtdsim.driver.core import DomainType
from vtdsim.driver.intel import dmar as D
from vtdsim.driver.intel import pasid as P
from vtdsim.driver.intel.domain_id import DomainIdAllocator, domain_attach_iommu
from vtdsim.driver.intel.inject import FaultInjector
from vtdsim.driver.intel.ioasid import PasidAllocator
from vtdsim.driver.kernel import Kernel
from vtdsim.errors import ArgumentError, IommuError
from vtdsim.explore.adapter import DriverWorld
from vtdsim.hw.memory import PAGE_SIZE, FrameAllocator, PhysicalMemory


def _outcome(f: Callable[..., Any], *args: Any) -> object:
    try:
        return ("ok", f(*args))
    except Exception as e:  # the typed error is what is compared
        return (type(e).__name__, getattr(e, "errno", None), str(e))


# -- domain IDs ------------------------------------------------------------------------------------


def _ref_did_alloc(self: DomainIdAllocator, owner: object = None) -> int:
    """DomainIdAllocator.alloc before _first_free was inlined (and before held=True)."""
    if sync._backend is not None:
        sync.point("did_alloc")
    if self.lock is not None:
        self.lock.assert_held()
    if self.injector is not None and self.injector.should_fail("did"):
        raise IommuError(errno.ENOMEM, "domain id allocation failed (injected)")
    did = self._next
    if did >= self.ndoms:
        raise IommuError(errno.ENOSPC, f"no free domain ids (cap_ndoms = {self.ndoms})")
    self._used.add(did)
    self._next = self._first_free(did + 1)
    if sync._backend is not None:
        sync.allocated("did", did, owner, self)
    return did


def _did_state(a: DomainIdAllocator, inj: FaultInjector) -> object:
    return (sorted(a._used), a._next, dict(inj.calls), dict(inj.injected))


_did_ops = st.lists(
    st.one_of(
        st.tuples(st.just("alloc"), st.none()),
        st.tuples(st.just("free"), st.one_of(st.integers(-2, 12), st.just(True), st.just(2.0))),
        st.tuples(st.just("fail"), st.integers(0, 2)),
    ),
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(ndoms=st.integers(3, 9), scalable=st.booleans(), ops=_did_ops)
@example(ndoms=4, scalable=True, ops=[("alloc", None), ("free", 1), ("free", 0), ("free", 2)])
@example(ndoms=5, scalable=True, ops=[("fail", 0), ("alloc", None), ("alloc", None)])
@example(ndoms=3, scalable=True, ops=[("alloc", None), ("alloc", None), ("free", True)])
def test_did_alloc_and_free_with_held_match_the_checked_ones(
    ndoms: int, scalable: bool, ops: list[tuple[str, Any]]
) -> None:
    """alloc/free with held=True (lock held by the caller), the inlined alloc and the reference
    alloc agree on ids, errors, allocator state, injector counters and sync operations."""
    runs = []
    for variant in ("ref", "general", "held"):
        lock = sync.SpinLock("iommu->lock")
        inj = FaultInjector()
        a = DomainIdAllocator(ndoms, scalable, lock, inj)
        rec = Recorder()
        trace: list[object] = []
        with sync.installed(rec):
            lock.acquire()
            for op, arg in ops:
                if op == "fail":
                    inj.fail("did", after=arg)
                elif op == "alloc":
                    f: Callable[..., Any] = {
                        "ref": functools.partial(_ref_did_alloc, a, "owner"),
                        "general": functools.partial(a.alloc, "owner"),
                        "held": functools.partial(a.alloc, "owner", held=True),
                    }[variant]
                    trace.append(_outcome(f))
                else:
                    g = functools.partial(a.free, held=True) if variant == "held" else a.free
                    trace.append(_outcome(g, arg))
                trace.append(_did_state(a, inj))
            lock.release()
        runs.append((trace, rec.log))
    assert runs[0] == runs[1] == runs[2]


@pytest.mark.parametrize(
    "ops",
    [
        # a freed id below two used ones: the lowest free id after it is two further up
        ["alloc", "alloc", "alloc", ("free", 2), "alloc", "alloc", "alloc"],
        ["alloc", "alloc", "alloc", "alloc", ("free", 3), ("free", 2), "alloc", "alloc", "alloc"],
        ["alloc"] * 8,  # up to ENOSPC
    ],
)
def test_did_alloc_lowest_free_after_a_gap(ops: list[Any]) -> None:
    """The inlined _first_free (a loop: it may step over several used ids) in alloc and
    alloc(held=True), against the reference alloc."""
    runs = []
    for variant in ("ref", "general", "held"):
        lock = sync.SpinLock("iommu->lock")
        a = DomainIdAllocator(8, True, lock, None)
        trace: list[object] = []
        with lock:
            for op in ops:
                if op == "alloc":
                    f: Callable[..., Any] = {
                        "ref": functools.partial(_ref_did_alloc, a),
                        "general": a.alloc,
                        "held": functools.partial(a.alloc, held=True),
                    }[variant]
                    trace.append(_outcome(f))
                else:
                    trace.append(_outcome(a.free, op[1]))
                trace.append((sorted(a._used), a._next))
        runs.append(trace)
    assert runs[0] == runs[1] == runs[2]


def test_did_alloc_and_free_assert_the_lock_the_held_twins_rely_on_the_caller() -> None:
    """The general twins still assert their lock (LockingError when it is not held); the held
    twins are only for a caller that has just taken it."""
    lock = sync.SpinLock("iommu->lock")
    a = DomainIdAllocator(8, True, lock, None)
    with pytest.raises(sync.LockingError, match="iommu->lock must be held here"):
        a.alloc()
    with lock:
        did = a.alloc()
    with pytest.raises(sync.LockingError, match="iommu->lock must be held here"):
        a.free(did)
    assert a.in_use() == [did]


@pytest.mark.parametrize("where", ["attach", "detach"])
def test_aux_paths_use_the_general_did_allocator_when_its_lock_is_another(where: str) -> None:
    """CorrectedAux takes the held twins only when the allocator's lock is the iommu->lock it
    has just acquired; with another lock the general alloc/free run and assert it: the same
    error at the same point, the same state afterwards and the same sync operations as the
    reference paths (tests/test_perf_aux_path.py)."""
    from test_perf_aux_path import _driver_state, _reference_paths

    results = []
    for ref in (False, True):
        k = Kernel.for_testing(ndev=2)
        dev = k.devices[0]
        k.dev_enable_feature(dev, "aux")
        d: Any = k.domain_alloc("unmanaged")
        k.map(d, 0x4000, 0x200000, 0x1000)
        io = k.ops.info(dev).iommu
        if where == "detach":
            k.aux_attach_device(d, dev)
        other = sync.SpinLock("other")
        io.domain_ids.lock = other
        rec = Recorder()
        name = "aux_attach_device" if where == "attach" else "aux_detach_device"
        with sync.installed(rec):
            if ref:
                with _reference_paths(k):  # (looked up inside: the reference lambdas)
                    got = _outcome(getattr(k, name), d, dev)
            else:
                got = _outcome(getattr(k, name), d, dev)
        results.append((got, rec.log, _driver_state(k)))
    assert results[0] == results[1]
    assert results[0][0] == ("LockingError", None, "spinlock other must be held here")


@pytest.mark.parametrize("seed", [3, 4])
def test_core_aux_bookkeeping_matches_the_reference_paths(seed: int) -> None:
    """IommuCore.aux_attach_device / aux_detach_device (the device looked up once, the
    records' dictionaries held in locals) keep the core's records on both sides, the
    device's ``aux`` counts and each domain's ``aux_devices``, as the reference paths do."""
    from test_perf_aux_path import _aux_workload, _driver_state, _reference_paths

    runs = []
    for ref in (False, True):
        k = Kernel.for_testing(ndev=3, nopasid_devices=1)
        trace: list[object] = []
        if ref:
            with _reference_paths(k):
                _aux_workload(k, seed, trace)
        else:
            _aux_workload(k, seed, trace)
        records = sorted(
            (d.serial, sorted((k._name_of(dev), n) for dev, n in d.aux_devices.items()))
            for d in k.domains
        )
        runs.append((trace, records, _driver_state(k)))
    assert runs[0] == runs[1]
    assert any(r[1] for r in runs[0][1])  # some domain is still aux-attached somewhere


# -- PASID allocator argument check ----------------------------------------------------------------


class _Int(int):
    pass


_args = st.one_of(
    st.integers(-3, 70),
    st.just(True),
    st.just(False),
    st.builds(_Int, st.integers(-2, 70)),
    st.just(1.0),
    st.just("1"),
    st.none(),
)


def _ref_pasid_check(min_id: object, max_id: object) -> None:
    if not isinstance(min_id, int) or not isinstance(max_id, int) or min_id < 0:
        raise ArgumentError("range", (min_id, max_id), "integers with 0 <= min")


@settings(max_examples=200, deadline=None)
@given(calls=st.lists(st.tuples(_args, _args), max_size=12))
@example(calls=[(-1, 5), (True, 3), (_Int(2), 9), (1.0, 5), (3, "1"), (_Int(-1), 4), (0, 2)])
def test_pasid_alloc_argument_check_matches_isinstance(calls: list[tuple[Any, Any]]) -> None:
    """The exact-int fast check of PasidAllocator.alloc accepts and refuses exactly what the
    isinstance check did (bools and int subclasses included), with the same error; accepted
    arguments allocate as before."""
    a = PasidAllocator()
    rec = Recorder()
    with sync.installed(rec):
        for lo, hi in calls:
            expect = _outcome(_ref_pasid_check, lo, hi)
            n = len(rec.log)
            got = _outcome(a.alloc, lo, hi, "o")
            if expect[0] != "ok":
                assert got == expect
                assert len(rec.log) == n  # refused before its scheduling point
            else:
                assert rec.log[n] == ("point", "pasid_alloc")


# -- frame allocator -------------------------------------------------------------------------------


def _ref_frames_alloc(self: FrameAllocator, order: int = 0, tag: str = "") -> int:
    """FrameAllocator.alloc before the exact-int order check and the skipped-loop test: that
    check, then test_perf_driver_first_attach's reference (the general path, which zeroes
    every frame through zero_pages)."""
    if not isinstance(order, int) or not 0 <= order <= 10:
        raise ArgumentError("order", order, "an integer in 0..10")
    return _ref_frame_alloc(self, order, tag)


_orders = st.one_of(
    st.integers(-1, 4), st.just(True), st.just(False), st.builds(_Int, st.integers(0, 3))
)


@settings(max_examples=150, deadline=None)
@given(
    ops=st.lists(
        st.one_of(
            st.tuples(st.just("alloc"), _orders),
            st.tuples(st.just("free"), st.integers(0, 30)),
            st.tuples(st.just("write"), st.integers(0, 30)),
        ),
        max_size=40,
    ),
    fail=st.sets(st.integers(0, 40), max_size=4),
    pages=st.integers(4, 24),
)
@example(
    ops=[("alloc", 0), ("alloc", 1), ("alloc", True), ("alloc", _Int(0)), ("alloc", -1)],
    fail={5},
    pages=8,
)
def test_frames_alloc_matches_the_reference(
    ops: list[tuple[str, Any]], fail: set[int], pages: int
) -> None:
    """FrameAllocator.alloc against its pre-shortcut code: addresses, errors, free lists,
    statistics, memory (frames dirtied and reused are zeroed), hook calls."""
    runs = []
    for ref in (False, True):
        mem = PhysicalMemory(1 << 20)
        fa = FrameAllocator(mem, 0x10000, 0x10000 + pages * PAGE_SIZE)
        calls: list[tuple[str, int]] = []

        def hook(tag: str, order: int, calls: list[tuple[str, int]] = calls) -> bool:
            calls.append((tag, order))
            return len(calls) - 1 in fail

        fa.fail_hook = hook
        trace: list[object] = []
        live: list[int] = []
        for op, arg in ops:
            if op == "alloc":
                f: Any = functools.partial(_ref_frames_alloc, fa) if ref else fa.alloc
                got = _outcome(f, arg, "t")
                trace.append(got)
                if got[0] == "ok":
                    live.append(got[1])  # type: ignore[index]
            elif op == "free" and live:
                trace.append(_outcome(fa.free, live.pop(arg % len(live))))
            elif op == "write" and live:
                mem.write64(live[arg % len(live)] + 8 * arg, 0xFFFF_0000 + arg)
        runs.append(
            (trace, mem.snapshot(), dict(fa._free), dict(fa.live), fa._next, fa.statistics())
        )
        runs[-1] += (calls,)
    assert runs[0] == runs[1]


# -- memory ----------------------------------------------------------------------------------------


def _ref_write64(m: PhysicalMemory, addr: int, value: int) -> None:
    """PhysicalMemory.write64 before _writable was inlined."""
    from vtdsim.hw import memory as M

    if type(value) is not int or value < 0 or value > M._Q:
        if not isinstance(value, int) or not 0 <= value <= M._Q:
            raise ArgumentError("value", value, "an unsigned 64-bit integer")
        value = int(value)
    if addr & 7 or addr < 0 or addr + 8 > m.size:
        m._check(addr, 8)
        m.write(addr, value.to_bytes(8, "little"))
        return
    pfn = addr >> M.PAGE_SHIFT
    if pfn in m._pages:
        m._q[pfn][(addr & M._PAGE_MASK) >> 3] = value
    else:
        m._writable(pfn)[(addr & M._PAGE_MASK) >> 3] = value


def _ref_page_for_store(m: PhysicalMemory, addr: int) -> bytearray:
    if type(addr) is not int or addr < 0 or addr >= m.size:
        m._check(addr, 1)
    pfn = addr >> 12
    buf = m._pages.get(pfn)
    if buf is None:
        m._writable(pfn)
        buf = m._pages[pfn]
    return buf


def _mem_state(m: PhysicalMemory) -> object:
    # every written page has its qword view over the same bytes
    for pfn, buf in m._pages.items():
        q = m._q[pfn]
        assert q.obj is buf and q.format == "Q"
    return (m.snapshot(), sorted(m._q), sorted(m._pages))


_SIZE = 16 * PAGE_SIZE
_addrs = st.one_of(
    st.integers(-16, _SIZE + 16),
    st.builds(lambda p, i: p * PAGE_SIZE + 8 * i, st.integers(0, 17), st.integers(0, 511)),
    st.just(True),
    st.just(1.5),
)
_values = st.one_of(st.integers(-1, (1 << 64)), st.just(True), st.builds(_Int, st.integers(0, 9)))


@pytest.fixture(scope="module")
def image_path() -> Any:
    fd, path = tempfile.mkstemp(prefix="vtdsim-perf2-", suffix=".img")
    rng = random.Random(7)
    with os.fdopen(fd, "wb") as f:
        f.write(bytes(rng.randrange(256) for _ in range(6 * PAGE_SIZE + 100)))
    yield path
    os.unlink(path)


@settings(max_examples=150, deadline=None)
@given(
    ops=st.lists(
        st.one_of(
            st.tuples(st.just("w64"), _addrs, _values),
            st.tuples(st.just("store"), _addrs, st.integers(0, 255)),
        ),
        max_size=30,
    ),
    image=st.booleans(),
)
@example(
    ops=[("w64", 0x3000, 5), ("store", 0x5008, 7), ("w64", 0x3008, 6), ("store", 0x3010, 1)],
    image=False,
)
@example(ops=[("w64", 0x9000, 5), ("store", 0xA008, 7), ("w64", 0x1000, 2)], image=True)
def test_write64_and_page_for_store_match_the_reference(
    image_path: str, ops: list[tuple[str, Any, Any]], image: bool
) -> None:
    """write64 and page_for_store with _writable inlined: same pages, views, bytes and
    errors as before, with and without an image (the image path is not inlined)."""
    runs = []
    for ref in (False, True):
        m = PhysicalMemory.from_image(image_path, _SIZE) if image else PhysicalMemory(_SIZE)
        trace: list[object] = []
        for op, addr, v in ops:
            if op == "w64":
                f: Any = functools.partial(_ref_write64, m) if ref else m.write64
                trace.append(_outcome(f, addr, v))
            else:
                g: Any = functools.partial(_ref_page_for_store, m) if ref else m.page_for_store
                got = _outcome(g, addr)
                if got[0] == "ok":
                    buf = got[1]  # type: ignore[index]
                    assert buf is m.written_pages[addr >> 12]
                    buf[addr & 0xFFF] = v  # a store into the bytes, as the callers do
                    got = ("ok",)
                trace.append(got)
            trace.append(_mem_state(m))
        runs.append(trace)
        m.close()
    assert runs[0] == runs[1]


# -- second-level PASID entry: PGSNP by domain type ------------------------------------------------


class _Typed:
    def __init__(self, value: object) -> None:
        self.value = value


@pytest.mark.parametrize("v51", [False, True])
@pytest.mark.parametrize(
    "dtype",
    [
        DomainType.UNMANAGED,
        DomainType.DMA,
        DomainType.IDENTITY,
        "unmanaged",
        "dma",
        _Typed("unmanaged"),
        _Typed("dma"),
        None,
    ],
    ids=repr,
)
def test_setup_second_level_held_pgsnp_matches_the_general_function(
    dtype: object, v51: bool
) -> None:
    """setup_second_level_held tests the module's copy of DomainType.UNMANAGED first; any
    domain type writes the entry the general intel_pasid_setup_second_level writes (PGSNP
    for unmanaged domains on a snoop-control unit, not in 5.1)."""
    results = []
    for held in (True, False):
        k = Kernel.for_testing(ndev=1, quirks=D.Quirks(v5_1_entry=v51))
        d: Any = k.domain_alloc("unmanaged")
        k.map(d, 0x4000, 0x200000, 0x1000)
        d.type = dtype
        io = k.iommus[0]
        info = k.ops.info(k.devices[0])
        rec = Recorder()
        with sync.installed(rec), io.lock:
            domain_attach_iommu(d, io)
            if held:
                got = _outcome(P.setup_second_level_held, io, d, info, 5, v51)
            else:
                got = _outcome(
                    functools.partial(P.intel_pasid_setup_second_level, overwrite=v51),
                    io,
                    d,
                    info,
                    5,
                )
        entry = P.pasid_entry_read(info, 5)
        results.append((got, entry, k.platform.memory.snapshot(), rec.log))
    assert results[0] == results[1]
    assert results[0][0] == ("ok", None)


def test_setup_second_level_held_sets_pgsnp_for_unmanaged_domains() -> None:
    """The shortcut's own branch: an unmanaged domain on a snoop-control unit gets PGSNP."""
    k = Kernel.for_testing(ndev=1)
    d: Any = k.domain_alloc("unmanaged")
    k.map(d, 0x4000, 0x200000, 0x1000)
    io = k.iommus[0]
    info = k.ops.info(k.devices[0])
    assert io.sc
    with io.lock:
        domain_attach_iommu(d, io)
        P.setup_second_level_held(io, d, info, 7, False)
    e = P.pasid_entry_read(info, 7)
    assert e is not None and e.PGSNP == 1


# -- DriverWorld's injector hook -------------------------------------------------------------------


def _ref_hook(world: DriverWorld, inj: FaultInjector) -> tuple[Any, Any]:
    """The hook before the shortcut: ``bool(original(site))`` after the world's own test, and
    FaultInjector.frame_hook (a bound method) on the frame allocator."""
    from vtdsim.explore.adapter import current_ident

    original = FaultInjector.should_fail.__get__(inj)

    def should_fail(site: str) -> bool:
        if (
            world.fail_ident is not None
            and not world.fail_fired
            and site in world.fail_sites
            and current_ident() == world.fail_ident
        ):
            world.fail_fired = True
            return True
        return bool(original(site))

    return should_fail, FaultInjector.frame_hook.__get__(inj)


_SITES = ("did", "pasid", "pgtable", "pasid-table", "context")


@settings(max_examples=100, deadline=None)
@given(
    steps=st.lists(
        st.one_of(
            st.tuples(st.just("ask"), st.sampled_from(_SITES)),
            st.tuples(st.just("frame"), st.sampled_from(_SITES)),
            st.tuples(
                st.just("plan"),
                st.sampled_from(_SITES),
                st.integers(0, 2),
                st.sampled_from([-1, 0, 1, 2]),
            ),
            st.tuples(st.just("clear"), st.sampled_from((*_SITES, None))),
            st.tuples(st.just("fail_next"), st.sets(st.sampled_from(_SITES), max_size=2)),
            st.tuples(st.just("none_plan"), st.sampled_from(_SITES)),
        ),
        max_size=30,
    )
)
def test_world_injector_hook_matches_the_reference(steps: list[tuple[Any, ...]]) -> None:
    """DriverWorld's should_fail (FaultInjector.should_fail inlined for a site without a plan)
    and its frame hook (a plain function) answer as the reference hook does, with the same
    injector counters, plans and world records, plans, clears and fail_next included."""
    world = _world()
    inj = world.kernel.injector
    frames = world.kernel.frames
    assert frames.fail_hook is not None
    assert getattr(frames.fail_hook, "__self__", None) is None  # the plain function
    runs = []
    for ref in (False, True):
        inj.plans.clear()
        inj.calls.clear()
        inj.injected.clear()
        world.fail_ident = None
        world.fail_fired = False
        ask, frame = _ref_hook(world, inj) if ref else (inj.should_fail, frames.fail_hook)
        trace: list[object] = []
        for s in steps:
            if s[0] == "ask":
                trace.append(ask(s[1]))
            elif s[0] == "frame":
                trace.append(frame(s[1], 0))
            elif s[0] == "plan":
                inj.fail(s[1], after=s[2], count=s[3])
            elif s[0] == "clear":
                inj.clear(s[1])
            elif s[0] == "fail_next":
                world.fail_next(*s[1])
            else:
                inj.plans[s[1]] = None  # type: ignore[assignment]
            trace.append(
                (
                    dict(inj.calls),
                    dict(inj.injected),
                    {k: (p.skip, p.count) if p else p for k, p in inj.plans.items()},
                    world.fail_fired,
                )
            )
        runs.append(trace)
    assert runs[0] == runs[1]


_WORLD: list[DriverWorld] = []


def _world() -> DriverWorld:
    if not _WORLD:
        _WORLD.append(DriverWorld("corrected"))
    return _WORLD[0]


def test_world_hook_falls_back_for_an_injector_that_is_not_a_fault_injector() -> None:
    """A hook over an injector whose should_fail is not FaultInjector's calls it (bool of its
    answer) and leaves the frame allocator's hook alone."""

    class Counting(FaultInjector):
        def should_fail(self, site: str) -> bool:
            self.calls[site] = self.calls.get(site, 0) + 10
            return 1 if site == "did" else 0  # type: ignore[return-value]

    world = DriverWorld("corrected")
    k = world.kernel
    inj = Counting()
    inj.attach(k.frames)
    k.injector = inj
    world._hook_injector()
    assert k.frames.fail_hook == inj.frame_hook  # untouched: still the bound method
    assert inj.should_fail("did") is True
    assert inj.should_fail("pasid") is False
    assert inj.calls == {"did": 10, "pasid": 10}


def test_world_frame_hook_looks_should_fail_up_at_each_call() -> None:
    """The plain frame hook calls whatever ``should_fail`` the injector has at that moment,
    as FaultInjector.frame_hook does."""
    world = DriverWorld("corrected")
    inj = world.kernel.injector
    hook = world.kernel.frames.fail_hook
    assert hook is not None
    seen: list[str] = []
    inj.should_fail = lambda site: seen.append(site) or True  # type: ignore[method-assign]
    assert hook("pasid-table", 0) is True
    assert seen == ["pasid-table"]


def test_world_schedule_with_injected_failures_matches_the_reference_hook() -> None:
    """Whole aux cycles of a world with the reference hook and with the shortcut hook, with
    an injected failure at each site in turn: the same results, memory and counters."""
    results = []
    for ref in (False, True):
        world = DriverWorld("corrected")
        inj = world.kernel.injector
        if ref:
            inj.should_fail, world.kernel.frames.fail_hook = _ref_hook(world, inj)  # type: ignore[method-assign]
        trace: list[object] = []
        d = world.new_domain()
        for site in ("pasid", "did", "pasid-table", None):
            if site is not None:
                world.fail_next(site)
            trace.append(world.attach(d, 1))
            trace.append(world.attach(d, 0))
            trace.append(world.detach(d, 1))
            trace.append(world.detach(d, 0))
            trace.append(world.fail_fired)
        results.append(
            (
                trace,
                world.platform.memory.snapshot(),
                dict(inj.calls),
                dict(inj.injected),
                world.kernel.accounting(),
            )
        )
    assert results[0] == results[1]
    assert -errno.ENOMEM in results[0][0]
