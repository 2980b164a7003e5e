"""The remapping unit as hardware: registers, command protocol, queued invalidation, faults."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vtdsim.errors import ArgumentError
from vtdsim.hw.caps import Capabilities
from vtdsim.hw.iommu import RemappingUnit
from vtdsim.hw.memory import PhysicalMemory
from vtdsim.spec import descriptors as D
from vtdsim.spec import registers as R

TE, SRTP, WBF, QIE = 1 << 31, 1 << 30, 1 << 27, 1 << 26
TES, RTPS, QIES = TE, SRTP, QIE
PFO, PPF, IQE = 1, 2, 1 << 4
IP, IM = 1 << 30, 1 << 31
QBASE = 0x10_0000
ROOT = 0x20_0000
STATUS = 0x30_0000


class StubTranslator:
    """Records the cache-invalidation calls the unit makes (ARCHITECTURE.md contract)."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def translate(self, sid: int, addr: int, **kw: Any) -> tuple[str, int, int]:
        return ("translated", sid, addr)

    def invalidate_context(
        self, granularity: str, did: int | None = None, sid: int | None = None, fm: int = 0
    ) -> None:
        self.calls.append(("context", granularity, did, sid, fm))

    def invalidate_pasid_cache(
        self, granularity: str, did: int | None = None, pasid: int | None = None
    ) -> None:
        self.calls.append(("pasid", granularity, did, pasid))

    def invalidate_iotlb(
        self, granularity: str, did: int | None = None, addr: int = 0, am: int = 0, ih: bool = False
    ) -> None:
        self.calls.append(("iotlb", granularity, did, addr, am, ih))

    def invalidate_piotlb(
        self, granularity: str, did: int, pasid: int, addr: int = 0, am: int = 0, ih: bool = False
    ) -> None:
        self.calls.append(("piotlb", granularity, did, pasid, addr, am, ih))


class StubDevice:
    def __init__(self) -> None:
        self.calls: list[tuple[int | None, int, bool]] = []

    def invalidate_devtlb(self, pasid: int | None, addr: int, size_bit: bool) -> None:
        self.calls.append((pasid, addr, size_bit))


class StubPlatform:
    def __init__(self) -> None:
        self.devices = {0x0108: StubDevice()}

    def device(self, sid: int) -> StubDevice:
        return self.devices[sid]  # KeyError for absent functions


@dataclass
class Fault:
    sid: int
    pasid: int | None
    address: int
    reason: int
    write: bool
    execute: bool = False
    privileged: bool = False


def make_unit(caps: Capabilities | None = None, platform: Any = None) -> RemappingUnit:
    u = RemappingUnit(PhysicalMemory(1 << 26), caps or Capabilities(), platform=platform)
    u.translator = StubTranslator()
    return u


def gcmd(u: RemappingUnit, bits: int) -> None:
    """Linux style: persistent GSTS bits | one command."""
    u.write32(R.GCMD, (u.read32(R.GSTS) & R.GSTS_PERSISTENT) | bits)


def set_root(u: RemappingUnit, addr: int = ROOT, ttm: int = 1) -> None:
    u.write64(R.RTADDR, addr | ttm << 10)
    gcmd(u, SRTP)


class Queue:
    def __init__(self, u: RemappingUnit, wide: bool = True, qs: int = 0, base: int = QBASE):
        self.u, self.wide, self.base = u, wide, base
        self.size = 32 if wide else 16
        self.entries = (4096 << qs) // self.size
        self.tail = 0
        u.write32(R.IQT, 0)
        u.write64(R.IQA, base | (1 << 11 if wide else 0) | qs)
        gcmd(u, QIE)

    def put(self, *descs: tuple[int, ...]) -> None:
        for d in descs:
            words = D.widen(d) if self.wide and len(d) == 2 else d
            self.u.memory.write_qwords(self.base + self.tail * self.size, words)
            self.tail = (self.tail + 1) % self.entries

    def submit(self, *descs: tuple[int, ...]) -> None:
        self.put(*descs)
        self.u.write32(R.IQT, self.tail * self.size)

    @property
    def head(self) -> int:
        return self.u.read64(R.IQH) // self.size


@pytest.fixture
def sm() -> tuple[RemappingUnit, Queue, StubTranslator]:
    u = make_unit()
    q = Queue(u)
    set_root(u)
    tr = u.translator
    assert isinstance(tr, StubTranslator)
    return u, q, tr


# --- registers -----------------------------------------------------------------------------------


def test_reset_values() -> None:
    u = make_unit()
    caps = Capabilities()
    assert u.read32(R.VER) == 0x30
    assert u.read64(R.CAP) == R.encode_cap(caps)
    assert u.read64(R.ECAP) == R.encode_ecap(caps)
    assert (u.read32(R.CAP), u.read32(R.CAP + 4)) == (
        R.encode_cap(caps) & 0xFFFFFFFF,
        R.encode_cap(caps) >> 32,
    )
    assert u.read32(R.GSTS) == 0 and u.read32(R.GCMD) == 0
    assert u.read32(R.FECTL) == IM and u.read32(R.IECTL) == IM
    assert u.read64(R.RTADDR) == u.read64(R.IQH) == u.read64(R.IQA) == 0
    assert (u.root_table_address, u.ttm, u.translation_enabled, u.qi_enabled) == (
        0,
        0,
        False,
        False,
    )


def test_read_only_bits_ignore_writes() -> None:
    u = make_unit()
    cap = u.read64(R.CAP)
    u.write64(R.CAP, 0)
    u.write32(R.ECAP, 0)
    u.write32(R.GSTS, 0xFFFFFFFF)
    u.write32(R.VER, 0)
    assert u.read64(R.CAP) == cap and u.read32(R.GSTS) == 0 and u.read32(R.VER) == 0x30
    u.write64(R.RTADDR, (1 << 64) - 1)
    assert u.read64(R.RTADDR) == 0xFFFF_FFFF_FFFF_FC00  # bits 9:0 reserved
    u.write32(R.FSTS, 0xFFFFFFFF)
    assert u.read32(R.FSTS) == 0  # PPF/FRI are RO, the RW1C bits were clear
    u.write32(R.FECTL, 0xFFFFFFFF)
    assert u.read32(R.FECTL) == IM  # IP is RO
    u.write64(R.IQH, 0x40)
    assert u.read64(R.IQH) == 0
    u.write64(R.IQT, (1 << 64) - 1)
    assert u.read64(R.IQT) == 0x7FFF0
    u.write32(R.PMEN, 1 << 31)  # no protected memory regions: RsvdZ
    assert u.read32(R.PMEN) == 0


def test_32bit_halves_of_64bit_registers() -> None:
    u = make_unit()
    u.write32(R.RTADDR, 0x1234_5400)
    u.write32(R.RTADDR + 4, 0xAB)
    assert u.read64(R.RTADDR) == 0xAB_1234_5400
    assert u.read32(R.RTADDR + 4) == 0xAB
    u.write32(R.RTADDR, 0)
    assert u.read64(R.RTADDR) == 0xAB_0000_0000


_PLAIN = [R.RTADDR, R.IQA, R.FEDATA, R.FEADDR, R.FEUADDR, R.IEDATA, R.IEADDR, R.PMEN, R.IRTA]


@settings(max_examples=100, deadline=None)
@given(
    which=st.sampled_from(_PLAIN),
    half=st.booleans(),
    first=st.integers(0, (1 << 64) - 1),
    second=st.integers(0, (1 << 64) - 1),
)
def test_writes_follow_the_mask_table(which: int, half: bool, first: int, second: int) -> None:
    u = make_unit()
    reg = R.register_table(u.caps)[which]
    for value in (first, second):
        old = u.register_value(which)
        if reg.width == 32 or half:
            off = which + (4 if half and reg.width == 64 else 0)
            sh = 32 if off != which else 0
            u.write32(off, value & 0xFFFFFFFF)
            wm = reg.wmask & (0xFFFFFFFF << sh)
            expect = (old & ~wm) | ((value & 0xFFFFFFFF) << sh & wm)
        else:
            u.write64(which, value)
            expect = (old & ~reg.wmask) | (value & reg.wmask)
        assert u.register_value(which) == expect


def test_write_only_registers_read_zero() -> None:
    u = make_unit()
    u.write64(R.IVA, 0x5000 | 0x41)
    assert u.read64(R.IVA) == 0
    assert u.register_value("IVA") == 0x5041
    u.write32(R.GCMD, TE)
    assert u.read32(R.GCMD) == 0 and u.read32(R.GSTS) == TES


@pytest.mark.parametrize(
    ("op", "args"),
    [
        ("read32", (0x4,)),  # reserved gap after VER
        ("read32", (0x21,)),  # unaligned
        ("read64", (R.GSTS,)),  # 64-bit access to a 32-bit register
        ("read64", (R.RTADDR + 4,)),
        ("read32", ("0x20",)),
        ("read32", (-4,)),
        ("write32", (0x1000, 0)),
        ("write32", (R.RTADDR, 1 << 32)),
        ("write32", (R.RTADDR, -1)),
        ("write64", (R.RTADDR, 1 << 64)),
        ("write64", (R.RTADDR, 1.5)),
        ("write32", (R.GCMD, True)),
        ("write64", (R.FSTS, 0)),
        ("write32", (R.fault_record_offset(8), 0)),  # 8 records: index 8 does not exist
    ],
)
def test_python_misuse_raises_without_state_change(op: str, args: tuple[Any, ...]) -> None:
    u = make_unit()
    before = {off: u.register_value(off) for off in (R.RTADDR, R.GSTS, R.FSTS)}
    with pytest.raises(ArgumentError):
        getattr(u, op)(*args)
    assert {off: u.register_value(off) for off in before} == before


def test_int_subclass_offsets_are_accepted() -> None:
    class Off(IntEnum):
        RTADDR = R.RTADDR
        GSTS = R.GSTS

    u = make_unit()
    u.write64(Off.RTADDR, 0x1000)
    u.write32(Off.RTADDR, 0x2000)
    assert u.read64(Off.RTADDR) == 0x2000 and u.read32(Off.GSTS) == 0
    with pytest.raises(ArgumentError):
        u.register_value("NOPE")
    assert u.register_value("RTADDR") == u.register_value(R.RTADDR) == 0x2000


def test_constructor_checks_arguments() -> None:
    with pytest.raises(ArgumentError):
        RemappingUnit(object(), Capabilities())  # type: ignore[arg-type]
    with pytest.raises(ArgumentError):
        RemappingUnit(PhysicalMemory(1 << 20), object())  # type: ignore[arg-type]


# --- command protocol ----------------------------------------------------------------------------


def test_srtp_latches_root_pointer_and_ttm() -> None:
    u = make_unit()
    u.write64(R.RTADDR, 0x4000_0000 | 1 << 10)
    assert u.root_table_address == 0  # not yet latched
    gcmd(u, SRTP)
    assert u.read32(R.GSTS) & RTPS
    assert (u.root_table_address, u.ttm, u.ttm_valid) == (0x4000_0000, 1, True)
    u.write64(R.RTADDR, 0x5000_0000)  # a new value waits for the next SRTP
    assert u.root_table_address == 0x4000_0000
    gcmd(u, SRTP)
    assert (u.root_table_address, u.ttm) == (0x5000_0000, 0)
    assert u.statistics().root_pointer_sets == 2


def test_root_pointer_masked_to_host_address_width() -> None:
    u = make_unit(Capabilities(haw=39))
    u.write64(R.RTADDR, (1 << 45) | 0x7000)
    gcmd(u, SRTP)
    assert u.root_table_address == 0x7000


def test_te_before_srtp_uses_reset_root_pointer() -> None:
    u = make_unit()
    gcmd(u, TE)
    assert u.translation_enabled and u.read32(R.GSTS) == TES
    assert u.root_table_address == 0 and u.ttm == 0
    # persistent TE survives a one-shot SRTP written Linux-style
    set_root(u, 0x8000, 1)
    assert u.read32(R.GSTS) == TES | RTPS and u.translation_enabled
    # writing GSTS back verbatim re-issues SRTP (software must mask with 0x96FFFFFF)
    u.write64(R.RTADDR, 0x9000)
    u.write32(R.GCMD, u.read32(R.GSTS))
    assert u.root_table_address == 0x9000
    u.write32(R.GCMD, 0)  # TE off
    assert not u.translation_enabled and u.read32(R.GSTS) == RTPS


@pytest.mark.parametrize(
    ("caps", "ttm", "valid"),
    [
        (Capabilities(), 0, True),
        (Capabilities(), 1, True),
        (Capabilities(), 2, False),  # reserved
        (Capabilities(), 3, False),  # abort-DMA needs ECAP.ADMS
        (Capabilities(scalable_mode=False), 1, False),
    ],
)
def test_ttm_latched_as_written(caps: Capabilities, ttm: int, valid: bool) -> None:
    u = make_unit(caps)
    set_root(u, 0x1000, ttm)
    assert u.ttm == ttm and u.ttm_valid is valid


def test_write_buffer_flush_only_with_rwbf() -> None:
    u = make_unit()
    gcmd(u, WBF)
    assert u.statistics().write_buffer_flushes == 0
    u = make_unit(Capabilities(rwbf=True))
    gcmd(u, WBF)
    assert u.statistics().write_buffer_flushes == 1
    assert u.read32(R.GSTS) & WBF == 0  # WBFS already clear: the flush completed


def test_qie_enable_and_disable() -> None:
    u = make_unit()
    u.write64(R.IQA, QBASE | 1 << 11 | 1)
    gcmd(u, QIE)
    assert u.qi_enabled and u.read32(R.GSTS) == QIES and u.read64(R.IQH) == 0
    gcmd(u, 0)
    gcmd(u, 0)
    u.write32(R.GCMD, 0)
    assert not u.qi_enabled and u.read32(R.GSTS) == 0 and u.read64(R.IQH) == 0


def test_qie_ignored_without_ecap_qi() -> None:
    u = make_unit(Capabilities(queued_invalidation=False))
    gcmd(u, QIE)
    assert not u.qi_enabled and u.read32(R.GSTS) == 0


def test_iqt_write_while_qi_disabled_is_only_stored() -> None:
    u = make_unit()
    tr = u.translator
    u.memory.write_qwords(QBASE, D.widen(D.iotlb_global()))
    u.write64(R.IQA, QBASE | 1 << 11)
    u.write32(R.IQT, 0x20)
    assert u.read64(R.IQT) == 0x20 and u.read64(R.IQH) == 0 and tr.calls == []
    # enabling with a non-zero tail processes it at once (QEMU vtd_handle_gcmd_qie)
    gcmd(u, QIE)
    assert tr.calls == [("iotlb", "global", None, 0, 0, False)]
    assert u.read64(R.IQH) == 0x20


def test_qie_with_iqa_unset_runs_a_queue_at_zero() -> None:
    u = make_unit()
    u.memory.write_qwords(0, D.cc_global())
    gcmd(u, QIE)
    u.write32(R.IQT, 0x10)
    assert u.translator.calls == [("context", "global", None, None, 0)]


# --- queued invalidation: every type and granularity ---------------------------------------------


def test_context_cache_descriptors(sm: tuple[RemappingUnit, Queue, StubTranslator]) -> None:
    u, q, tr = sm
    q.submit(D.cc_global(), D.cc_domain(5), D.cc_device(6, 0x0108, 2))
    assert tr.calls == [
        ("context", "global", None, None, 0),
        ("context", "domain", 5, None, 0),
        ("context", "device", 6, 0x0108, 2),
    ]
    assert q.head == 3 and u.read64(R.IQH) == 3 << 5


def test_iotlb_descriptors(sm: tuple[RemappingUnit, Queue, StubTranslator]) -> None:
    _, q, tr = sm
    q.submit(
        D.iotlb_global(),
        D.iotlb_dsi(7, dr=True, dw=True),
        D.iotlb_psi(7, 0x12_3000, 0, ih=True),
        D.iotlb_psi(7, 0x12_3000, 2),  # address aligned down to 2^AM pages by hardware
    )
    assert tr.calls == [
        ("iotlb", "global", None, 0, 0, False),
        ("iotlb", "domain", 7, 0, 0, False),
        ("iotlb", "page", 7, 0x12_3000, 0, True),
        ("iotlb", "page", 7, 0x12_0000, 2, False),
    ]


def test_pasid_descriptors(sm: tuple[RemappingUnit, Queue, StubTranslator]) -> None:
    u, q, tr = sm
    q.submit(
        D.pc_domain(3),
        D.pc_pasid(3, 0x55),
        D.pc_global(),
        D.piotlb_pasid(3, 0x55),
        D.piotlb_psi(3, 0x55, 0x40_0000, 9, ih=True),
    )
    assert tr.calls == [
        ("pasid", "domain", 3, None),
        ("pasid", "pasid", 3, 0x55),
        ("pasid", "global", None, None),
        ("piotlb", "pasid", 3, 0x55, 0, 0, False),
        ("piotlb", "page", 3, 0x55, 0x40_0000, 9, True),
    ]
    stats = u.statistics()
    assert stats.descriptors == {"pasid_cache": 3, "piotlb": 2}


def test_device_tlb_descriptors_reach_the_device() -> None:
    platform = StubPlatform()
    u = make_unit(platform=platform)
    q = Queue(u)
    set_root(u)
    q.submit(
        D.devtlb(0x0108, size_order=52),
        D.pdevtlb(0x0108, 0x77, 0x8000, 2, glob=True),
        D.devtlb(0x0200, 0x1000),  # no such function: nothing to invalidate
    )
    assert platform.devices[0x0108].calls == [
        (None, 0x7FFF_FFFF_FFFF_F000, True),
        (0x77, 0x9000, True),
    ]
    assert q.head == 3 and not u.read32(R.FSTS) & IQE


def test_wait_descriptor_status_write(sm: tuple[RemappingUnit, Queue, StubTranslator]) -> None:
    u, q, _ = sm
    u.memory.write64(STATUS, 0xAAAA_AAAA_BBBB_BBBB)
    q.submit(D.iotlb_global(), D.wait(STATUS + 4, D.QI_DONE))
    # visible as soon as the IQT write returns; the other dword is untouched
    assert u.memory.read64(STATUS) == 0x0000_0002_BBBB_BBBB
    q.submit(D.wait(STATUS, 0xDEAD_BEEF))
    assert u.memory.read32(STATUS) == 0xDEAD_BEEF
    st = u.statistics()
    assert (st.wait_completions, st.status_writes) == (2, 2)
    assert u.read32(R.ICS) == 0  # no IF


def test_wait_interrupt_flag_and_completion_event(
    sm: tuple[RemappingUnit, Queue, StubTranslator],
) -> None:
    u, q, _ = sm
    events: list[tuple[str, int, int]] = []
    u.on_interrupt = lambda kind, addr, data: events.append((kind, addr, data))
    u.write32(R.IEDATA, 0x41)
    u.write32(R.IEADDR, 0xFEE0_0000)
    q.submit(D.wait(interrupt=True))
    assert u.read32(R.ICS) == 1 and u.read32(R.IECTL) == IM | IP  # masked: pending
    assert events == []
    u.write32(R.IECTL, 0)  # unmask: the pending interrupt is delivered
    assert events == [("invalidation", 0xFEE0_0000, 0x41)] and u.read32(R.IECTL) == 0
    q.submit(D.wait(interrupt=True))  # IWC still set: no new event
    assert len(events) == 1
    u.write32(R.ICS, 0)  # writing 0 does not clear (RW1C)
    assert u.read32(R.ICS) == 1
    u.write32(R.ICS, 1)
    assert u.read32(R.ICS) == 0
    q.submit(D.wait(STATUS, 1, interrupt=True, fence=True))
    assert len(events) == 2 and u.memory.read32(STATUS) == 1
    assert u.statistics().completion_interrupts == 2


def test_zero_filled_queue_stops_at_the_first_entry() -> None:
    u = make_unit()
    q = Queue(u, wide=True, qs=0)
    set_root(u)
    u.write32(R.IQT, 126 << 5)
    _assert_iqe(u, q, 3, head=0)  # an all-zero descriptor has type 0


def test_queue_wraps_around_cleanly() -> None:
    u = make_unit()
    q = Queue(u, wide=True, qs=0)
    set_root(u)
    tr = u.translator
    for _ in range(42):
        q.submit(D.cc_global(), D.iotlb_global(), D.wait(STATUS, 3))
    assert q.tail == (42 * 3) % 128 == q.head
    assert len(tr.calls) == 84 and u.statistics().wait_completions == 42
    assert u.memory.read32(STATUS) == 3


def test_128bit_queue_in_legacy_mode() -> None:
    u = make_unit()
    q = Queue(u, wide=False, qs=1)  # 8 KiB / 16 B = 512 entries, IQT index shift 4
    set_root(u, ttm=0)
    q.submit(*[D.iotlb_dsi(i) for i in range(3)], D.wait(STATUS, 9))
    assert u.read64(R.IQH) == 4 << 4 and u.memory.read32(STATUS) == 9
    assert [c[2] for c in u.translator.calls] == [0, 1, 2]


def test_legacy_128bit_wrap() -> None:
    u = make_unit(Capabilities(scalable_mode=False))
    q = Queue(u, wide=False, qs=0)  # DW is RsvdZ without SMTS: 128-bit, 256 entries
    assert u.read64(R.IQA) & (1 << 11) == 0
    # move head to 254 with valid descriptors, then wrap
    q.submit(*[D.cc_global()] * 254)
    q.submit(D.iotlb_global(), D.iotlb_global(), D.wait(STATUS, 7), D.cc_domain(1))
    assert q.head == 2 and u.memory.read32(STATUS) == 7
    assert u.translator.calls[-1] == ("context", "domain", 1, None, 0)


# --- invalid descriptors -------------------------------------------------------------------------


def _assert_iqe(u: RemappingUnit, q: Queue, iqei: int, head: int) -> None:
    assert u.read32(R.FSTS) & IQE
    assert u.read64(R.IQER) & 0xF == iqei
    assert q.head == head
    assert u.statistics().invalid_descriptors == 1


@pytest.mark.parametrize(
    ("desc", "iqei"),
    [
        ((0x0, 0), 3),  # type 0
        ((0xA, 0), 3),  # type 10
        ((0x201, 0), 3),  # type 0x11: TYPE_HI set
        ((D.cc_global()[0] | 1 << 6, 0), 4),  # CC reserved bit 6
        ((D.cc_global()[0], 1), 4),  # CC qw1 reserved
        ((0x1, 0), 4),  # CC granularity 0
        ((0x2, 0), 4),  # IOTLB granularity 0
        ((D.iotlb_psi(1, 0x1000)[0], 1 << 7), 4),  # IOTLB qw1 bit 7 reserved
        ((D.iotlb_psi(1, 0x1000, 19)), 4),  # AM > MAMV (18)
        ((D.pc_global()[0] & ~0x30 | 0x20, 0), 4),  # PASID-cache granularity 2
        ((0x06, 0), 4),  # P_IOTLB granularity 0
        ((0x16, 0), 4),  # P_IOTLB granularity 1
        ((D.pc_pasid(1, 1)[0] | 1 << 52, 0), 4),  # PASID-cache bit 52 reserved
        ((D.wait()[0] | 1 << 7, 0), 4),  # PD without ECAP.PDS
        ((D.wait(STATUS)[0], STATUS | 1), 4),  # status address bits 1:0 reserved
        ((D.devtlb(1)[0] | 1 << 4, 0), 4),  # devTLB bits 8:4 reserved
        (D.iec_global(), 3),  # no interrupt remapping: IEC is an invalid type
        ((D.DescType.PGRP_RESP, 0), 3),  # no page requests
    ],
)
def test_invalid_descriptor_sets_iqe_and_stops(
    sm: tuple[RemappingUnit, Queue, StubTranslator], desc: tuple[int, int], iqei: int
) -> None:
    u, q, tr = sm
    q.submit(D.cc_global(), desc, D.iotlb_global())
    _assert_iqe(u, q, iqei, head=1)
    assert tr.calls == [("context", "global", None, None, 0)]  # nothing after the bad one
    # further tail moves do nothing while IQE is pending
    q.submit(D.iotlb_global())
    assert q.head == 1 and len(tr.calls) == 1


def test_reserved_upper_qwords_of_256bit_descriptor(
    sm: tuple[RemappingUnit, Queue, StubTranslator],
) -> None:
    u, q, tr = sm
    q.submit((*D.cc_global(), 0, 1))
    _assert_iqe(u, q, 4, head=0)
    assert tr.calls == []


def test_pasid_descriptor_in_128bit_queue_is_invalid() -> None:
    u = make_unit()
    q = Queue(u, wide=False)
    set_root(u, ttm=0)
    q.submit(D.iotlb_global(), D.pc_pasid(1, 2))
    _assert_iqe(u, q, 3, head=1)


def test_128bit_descriptors_invalid_in_scalable_mode() -> None:
    u = make_unit()
    q = Queue(u, wide=False)
    set_root(u, ttm=1)
    q.submit(D.iotlb_global())
    _assert_iqe(u, q, 3, head=0)


def test_pasid_descriptor_invalid_in_legacy_mode() -> None:
    u = make_unit()
    q = Queue(u, wide=True)
    set_root(u, ttm=0)
    q.submit(D.iotlb_global(), D.piotlb_pasid(1, 2))
    _assert_iqe(u, q, 3, head=1)


def test_devtlb_invalid_without_ecap_dt() -> None:
    u = make_unit(Capabilities(device_tlb=False))
    q = Queue(u)
    set_root(u)
    q.submit(D.devtlb(1))
    _assert_iqe(u, q, 3, head=0)


def test_psi_invalid_without_cap_psi() -> None:
    u = make_unit(Capabilities(psi=False))
    q = Queue(u)
    set_root(u)
    q.submit(D.piotlb_psi(1, 2, 0x1000), D.iotlb_psi(1, 0x1000))  # P_IOTLB is not restricted
    _assert_iqe(u, q, 4, head=1)


def test_invalid_ttm_makes_every_descriptor_invalid() -> None:
    u = make_unit()
    q = Queue(u)
    set_root(u, ttm=2)
    q.submit(D.iotlb_global())
    _assert_iqe(u, q, 7, head=0)


def test_bad_tail_pointers() -> None:
    u = make_unit()
    q = Queue(u, wide=True, qs=0)  # 128 entries
    set_root(u)
    u.write32(R.IQT, 0x30)  # bit 4 set with 256-bit descriptors
    _assert_iqe(u, q, 6, head=0)
    u.write32(R.IQT, 128 << 5)  # beyond the queue; only stored while IQE is pending
    assert u.read64(R.IQER) == 6
    u.write32(R.FSTS, IQE)  # clearing IQE makes the unit look at the tail again
    assert u.read32(R.FSTS) & IQE and u.read64(R.IQER) == 1


def test_clearing_iqe_resumes_at_the_fixed_descriptor(
    sm: tuple[RemappingUnit, Queue, StubTranslator],
) -> None:
    u, q, _ = sm
    q.submit(D.cc_global(), (0xF, 0), D.wait(STATUS, 5))
    assert q.head == 1 and u.memory.read32(STATUS) == 0
    # Linux qi_check_fault: copy a wait descriptor over the bad one, then clear IQE
    u.memory.write_qwords(QBASE + 32, D.widen(D.wait(STATUS + 8, 4)))
    u.write32(R.FSTS, IQE)
    assert not u.read32(R.FSTS) & IQE
    assert q.head == 3 and u.memory.read32(STATUS + 8) == 4 and u.memory.read32(STATUS) == 5


def test_iqe_raises_a_fault_event(sm: tuple[RemappingUnit, Queue, StubTranslator]) -> None:
    u, q, _ = sm
    events: list[tuple[str, int, int]] = []
    u.on_interrupt = lambda *a: events.append(a)
    u.write32(R.FECTL, 0)
    q.submit((0xF, 0))
    assert events == [("fault", 0, 0)] and u.read32(R.FECTL) == 0


def test_fetch_beyond_memory_is_a_queue_error() -> None:
    u = RemappingUnit(PhysicalMemory(1 << 20), Capabilities())
    u.translator = StubTranslator()
    u.write64(R.IQA, (1 << 20) | 1 << 11)  # base at the end of memory
    gcmd(u, QIE)
    u.write32(R.IQT, 0x20)
    assert u.read32(R.FSTS) & IQE and u.read64(R.IQER) == 2 and u.read64(R.IQH) == 0


# --- fault recording -----------------------------------------------------------------------------


def test_fault_record_fields() -> None:
    u = make_unit()
    assert u.record_fault(Fault(0x0108, None, 0x1234_5678, 0x05, write=True))
    lo = u.read64(R.fault_record_offset(0))
    hi = u.read64(R.fault_record_offset(0) + 8)
    assert lo == 0x1234_5000
    d = R.FAULT_RECORD.decode((lo, hi))
    assert (d.SID, d.FR, d.T, d.PP, d.PV, d.F) == (0x0108, 0x05, 0, 0, 0, 1)
    assert u.read32(R.FSTS) == PPF  # FRI 0
    assert u.read32(R.FECTL) == IM | IP  # masked event pending
    # a read fault with a PASID, supervisor and execute
    assert u.record_fault(Fault(0x0200, 0xABCDE, 0x9000, 0x59, False, True, True))
    d = R.FAULT_RECORD.decode(
        (u.read64(R.fault_record_offset(1)), u.read64(R.fault_record_offset(1) + 8))
    )
    assert (d.SID, d.FR, d.T, d.PP, d.PV, d.PRIV, d.EXE, d.F) == (
        0x0200,
        0x59,
        1,
        1,
        0xABCDE,
        1,
        1,
        1,
    )
    assert u.read32(R.FSTS) == PPF  # FRI still points at the first pending record
    assert u.statistics().faults_recorded == 2


def test_clearing_f_with_32bit_write_like_linux() -> None:
    u = make_unit()
    u.record_fault(Fault(1, None, 0x1000, 6, False))
    u.record_fault(Fault(2, None, 0x2000, 6, False))
    off0 = R.fault_record_offset(0)
    assert u.read32(off0 + 12) >> 31 == 1  # dma_frcd_fault(readl(reg + 12))
    u.write32(off0 + 12, 1 << 31)  # writel(DMA_FRCD_F, reg + 12)
    assert u.read32(off0 + 12) >> 31 == 0
    assert u.read32(R.FSTS) & PPF  # record 1 still pending
    u.write64(R.fault_record_offset(1) + 8, 1 << 63)
    assert u.read32(R.FSTS) & PPF == 0
    assert u.read32(R.FECTL) == IM  # nothing left: IP cleared


def test_fault_overflow_sets_pfo_and_drops() -> None:
    u = make_unit(Capabilities(fault_records=2))
    assert u.record_fault(Fault(1, None, 0x1000, 5, True))
    assert u.record_fault(Fault(2, None, 0x2000, 5, True))
    assert not u.record_fault(Fault(3, None, 0x3000, 5, True))  # both records hold F=1
    assert u.read32(R.FSTS) & PFO
    u.write64(R.fault_record_offset(0) + 8, 1 << 63)  # free record 0
    assert not u.record_fault(Fault(4, None, 0x4000, 5, True))  # PFO still blocks
    u.write32(R.FSTS, PFO)
    assert u.read32(R.FSTS) & PFO == 0
    assert u.record_fault(Fault(5, None, 0x5000, 5, True))  # recorded in record 0 (wrapped)
    assert u.read64(R.fault_record_offset(0)) == 0x5000
    st = u.statistics()
    assert (st.faults_recorded, st.faults_dropped) == (3, 2)


def test_fault_event_delivery() -> None:
    u = make_unit()
    events: list[tuple[str, int, int]] = []
    u.on_interrupt = lambda *a: events.append(a)
    u.write32(R.FEDATA, 0x22)
    u.write32(R.FEADDR, 0xFEE0_1000)
    u.write32(R.FECTL, 0)
    u.record_fault(Fault(1, None, 0x1000, 5, True))
    assert events == [("fault", 0xFEE0_1000, 0x22)] and u.read32(R.FECTL) == 0
    u.record_fault(Fault(1, None, 0x1000, 5, True))  # PPF already set: no new event
    assert len(events) == 1
    assert u.statistics().fault_interrupts == 1


# --- register-based invalidation -----------------------------------------------------------------


def test_ccmd_register_invalidation() -> None:
    u = make_unit()
    tr = u.translator
    icc = 1 << 63
    u.write64(R.CCMD, icc | 1 << 61)
    assert u.read64(R.CCMD) == 1 << 61 | 1 << 59  # ICC clear, CAIG = global
    u.write64(R.CCMD, icc | 2 << 61 | 9)
    u.write64(R.CCMD, icc | 3 << 61 | 2 << 32 | 0x0108 << 16 | 9)
    assert u.read64(R.CCMD) >> 59 == 0b11_11  # CIRG 3, CAIG 3
    assert tr.calls == [
        ("context", "global", None, None, 0),
        ("context", "domain", 9, None, 0),
        ("context", "device", 9, 0x0108, 2),
    ]
    u.write64(R.CCMD, icc)  # CIRG 0: refused, CAIG 0
    assert u.read64(R.CCMD) == 0 and len(tr.calls) == 3
    assert u.statistics().register_invalidations == 3


def test_ccmd_32bit_writes_trigger_on_the_high_dword() -> None:
    u = make_unit()
    u.write32(R.CCMD, 0x0108 << 16 | 4)
    assert u.translator.calls == []
    u.write32(R.CCMD + 4, (1 << 31) | 3 << 29)
    assert u.translator.calls == [("context", "device", 4, 0x0108, 0)]


def test_iotlb_register_invalidation() -> None:
    u = make_unit()
    tr = u.translator
    ivt = 1 << 63
    u.write64(R.IOTLB_REG, ivt | 1 << 60)
    assert u.read64(R.IOTLB_REG) == 1 << 60 | 1 << 57
    u.write64(R.IOTLB_REG, ivt | 2 << 60 | 5 << 32 | 3 << 48)
    u.write64(R.IVA, 0x7_3000 | 1 << 6 | 1)
    u.write64(R.IOTLB_REG, ivt | 3 << 60 | 5 << 32)
    assert (u.read64(R.IOTLB_REG) >> 57) & 3 == 3
    u.write64(R.IVA, 0x8000 | 19)  # AM > MAMV: refused, IAIG 0
    u.write64(R.IOTLB_REG, ivt | 3 << 60 | 5 << 32)
    assert u.read64(R.IOTLB_REG) & (ivt | 3 << 57) == 0
    assert tr.calls == [
        ("iotlb", "global", None, 0, 0, False),
        ("iotlb", "domain", 5, 0, 0, False),
        ("iotlb", "page", 5, 0x7_2000, 1, True),
    ]


def test_iotlb_register_psi_without_cap_psi_is_domain_selective() -> None:
    u = make_unit(Capabilities(psi=False))
    u.write64(R.IVA, 0x4000)
    u.write64(R.IOTLB_REG, 1 << 63 | 3 << 60 | 6 << 32)
    assert (u.read64(R.IOTLB_REG) >> 57) & 3 == 2
    assert u.translator.calls == [("iotlb", "domain", 6, 0, 0, False)]


def test_register_invalidation_ignored_while_qi_enabled(
    sm: tuple[RemappingUnit, Queue, StubTranslator],
) -> None:
    u, _, tr = sm
    u.write64(R.CCMD, 1 << 63 | 1 << 61)
    u.write64(R.IOTLB_REG, 1 << 63 | 1 << 60)
    assert tr.calls == []
    assert u.read64(R.CCMD) >> 63 == 1 and u.read64(R.IOTLB_REG) >> 63 == 1  # never complete


# --- translator binding and statistics -----------------------------------------------------------


def test_translate_is_bound_to_the_translator() -> None:
    u = make_unit()
    tr = u.translator
    assert u.translate == tr.translate
    assert u.translate(0x10, 0x2000) == ("translated", 0x10, 0x2000)
    other = StubTranslator()
    u.translator = other
    assert u.translate == other.translate


def test_real_translator_is_created_lazily() -> None:
    pytest.importorskip("vtdsim.hw.translate")
    u = RemappingUnit(PhysicalMemory(1 << 20), Capabilities())
    assert u._translator is None
    tr = u.translator
    assert tr is not None and tr is u.translator and u.translate == tr.translate


def test_statistics_by_type(sm: tuple[RemappingUnit, Queue, StubTranslator]) -> None:
    u, q, _ = sm
    for _ in range(3):
        q.submit(D.pc_pasid(2, 1), D.piotlb_pasid(2, 1), D.iotlb_dsi(2), D.wait(STATUS))
    st = u.statistics()
    assert st.descriptors == {"pasid_cache": 3, "piotlb": 3, "iotlb": 3, "wait": 3}
    assert st.wait_completions == 3 and st.invalid_descriptors == 0
    u.reset()
    assert u.statistics().descriptors == {} and not u.qi_enabled


def test_real_translator_records_faults_through_the_unit() -> None:
    pytest.importorskip("vtdsim.hw.translate")
    u = RemappingUnit(PhysicalMemory(1 << 24), Capabilities())
    gcmd(u, TE)  # TE before SRTP: root pointer 0 (all-zero memory: no present root entry)
    result = u.translate(0x0108, 0x5000, write=True)
    assert not result.ok
    d = R.FAULT_RECORD.decode(
        (u.read64(R.fault_record_offset(0)), u.read64(R.fault_record_offset(0) + 8))
    )
    assert (1, 0x0108, result.reason, 0, 0x5000) == (d.F, d.SID, d.FR, d.T, d.FI)
    assert u.read32(R.FSTS) & PPF
