"""Fault reason codes as data (vtdsim.spec.faults) and one scenario per fault reason the model
can raise, through the per-request API (recorded via unit.record_fault), plus FPD."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from hw_tables import BEYOND, Nested, Tables, sm_sl_setup
from vtdsim.errors import ArgumentError
from vtdsim.hw.caps import Capabilities
from vtdsim.hw.translate import Translation, TranslationFault
from vtdsim.spec.entries import FL_PDE_2M, PASID_DIR_ENTRY, SL_TABLE
from vtdsim.spec.faults import (
    FAULT_REASONS,
    FAULT_RECORD,
    fault_reason,
    is_qualified,
    reason_name,
    reason_text,
)

SID = 0x0010

# --- the table itself ---------------------------------------------------------------------------


def test_linux_sm_texts_and_qemu_names() -> None:
    assert reason_name(0x51) == "PASID_DIR_ENTRY_P"
    assert reason_text(0x51) == "SM: Present bit in Directory Entry is clear"
    assert reason_text(0x30) == "SM: Invalid Root Table Address"
    assert reason_text(0x90) == (
        "SM: A/D bit update needed in first-level entry when set up in no snoop"
    )
    assert reason_text(0x5) == "PTE Write access is not set"
    assert reason_text(0xD) == "PCE for translation request specifies blocking"
    assert reason_name(0x87) == "SM_INTERRUPT_ADDR"
    # dmar_get_fault_reason: "Unknown" outside the tables
    assert reason_text(0x33) == "Unknown" and reason_text(0x91) == "Unknown"
    assert reason_name(0x33).startswith("UNKNOWN")


def test_every_linux_sm_slot_is_declared() -> None:
    # dma_remap_sm_fault_reasons[] names these codes; everything else there is "Unknown"
    linux_known = [
        *(0x30, 0x31, 0x32, 0x38, 0x39, 0x3A),
        *range(0x40, 0x49),
        *(0x50, 0x51, 0x52),
        *range(0x58, 0x5E),
        *range(0x70, 0x7D),
        *range(0x80, 0x88),
        0x90,
    ]
    for c in linux_known:
        r = FAULT_REASONS[c]
        assert r.mode == "scalable" and r.text.startswith("SM: "), hex(c)
    for c in range(0x1, 0xE):
        assert FAULT_REASONS[c].mode == "legacy"


def test_lookup_by_name_and_errors() -> None:
    assert fault_reason("VTD_FR_PASID_ENTRY_P").code == 0x59
    assert fault_reason(0x59).qemu
    with pytest.raises(ArgumentError):
        fault_reason("NOPE")
    with pytest.raises(ArgumentError):
        fault_reason(0x99)


def test_qualified_follows_qemu() -> None:
    assert not is_qualified(0x1) and not is_qualified(0x8) and not is_qualified(0xA)
    assert is_qualified(0x2) and is_qualified(0xC) and is_qualified(0x5B)
    assert not is_qualified(0x50) and not is_qualified(0x58)
    assert is_qualified(0x51) and is_qualified(0x59) and is_qualified(0x87)


def test_fault_record_layout() -> None:
    w = FAULT_RECORD.encode(FI=0x1234_5000, SID=0x0010, FR=0x59, PP=1, PV=0x77, T=1, F=1)
    assert w[0] == 0x1234_5000
    assert w[1] == (0x10 | 1 << 31 | 0x59 << 32 | 0x77 << 40 | 1 << 62 | 1 << 63)


# --- one scenario per reason the model raises ---------------------------------------------------

Req = dict[str, Any]
Scenario = Callable[[], tuple[Tables, Req]]


def _sm_sl(**kw: Any) -> tuple[Tables, int, int]:
    return sm_sl_setup(**kw)


def s_legacy(mutate: Callable[..., Any], **ctx: Any) -> Scenario:
    def build() -> tuple[Tables, Req]:
        t = Tables(**ctx.pop("tables", {}), legacy=True)
        sl = t.page()
        t.context_legacy(SID, slptr=sl, aw=2, did=1)
        t.sl_map(sl, 0x1000, 0x2000, w=False)
        req = mutate(t, sl) or {}
        return t, req

    return build


def s_sm(mutate: Callable[..., Any], caps: Capabilities | None = None) -> Scenario:
    def build() -> tuple[Tables, Req]:
        t, pdir, sl = sm_sl_setup(caps)
        t.sl_map(sl, 0x1000, 0x2000, w=False)
        req = mutate(t, pdir, sl) or {}
        return t, req

    return build


def s_fl(
    mutate: Callable[..., Any],
    caps: Capabilities | None = None,
    **pe: Any,
) -> Scenario:
    def build() -> tuple[Tables, Req]:
        t = Tables(caps)
        pdir = t.context_sm(SID)
        fl = t.page()
        t.pasid_entry(pdir, 5, pgtt=1, fl_root=fl, **pe)
        req = mutate(t, pdir, fl) or {}
        req.setdefault("pasid", 5)
        return t, req

    return build


def _nested(mutate: Callable[..., Any], w_tables: bool = True) -> Scenario:
    def build() -> tuple[Tables, Req]:
        t = Tables()
        pdir = t.context_sm(SID)
        sl = t.page()
        n = Nested(t, sl, levels=3)
        fl = n.alloc(w=w_tables)
        t.pasid_entry(pdir, 1, pgtt=3, sl_root=sl, aw=1, fl_root=fl)
        req = mutate(t, n, fl) or {}
        req.setdefault("pasid", 1)
        return t, req

    return build


def _set(t: Tables, addr: int, value: int) -> Any:
    t.mem.write64(addr, value)
    return None


def _or(t: Tables, addr: int, bits: int) -> Any:
    t.mem.write64(addr, t.mem.read64(addr) | bits)
    return None


def _attr(obj: object, name: str, value: int) -> Any:
    setattr(obj, name, value)
    return None


def fault(r: Translation | TranslationFault) -> TranslationFault:
    assert isinstance(r, TranslationFault), r
    return r


def _ctx_legacy(t: Tables) -> int:
    return t.ctx_tables[(0, 0)] + 16 * (SID & 0xFF)


def _ctx_sm(t: Tables) -> int:
    return t.ctx_sm_addr(SID)


def _pe(t: Tables, pdir: int, pasid: int = 0) -> int:
    return t.pasid_entry_addr(pdir, pasid)


SCENARIOS: dict[int, Scenario] = {
    # legacy mode
    0x01: s_legacy(lambda t, sl: _set(t, t.root, 0)),
    0x02: s_legacy(lambda t, sl: _set(t, _ctx_legacy(t), 0)),
    0x03: s_legacy(lambda t, sl: t.context_legacy(SID, slptr=sl, aw=3) and None),  # 57-bit
    0x04: s_legacy(lambda t, sl: {"addr": 1 << 48}),
    0x05: s_legacy(lambda t, sl: {"write": True}),
    0x06: s_legacy(lambda t, sl: {"addr": 0x9000}),
    0x07: s_legacy(lambda t, sl: t.context_legacy(SID, slptr=BEYOND) and None),
    0x08: s_legacy(lambda t, sl: _attr(t.unit, "root_table_address", BEYOND)),
    0x09: s_legacy(lambda t, sl: _set(t, t.root, BEYOND | 1)),
    0x0A: s_legacy(lambda t, sl: _or(t, t.root, 1 << 1)),
    0x0B: s_legacy(lambda t, sl: _or(t, _ctx_legacy(t) + 8, 1 << 7)),
    0x0C: s_legacy(lambda t, sl: _or(t, t.sl_map(sl, 0x1000, 0x2000), 1 << 62)),
    0x0D: s_legacy(lambda t, sl: t.context_legacy(SID, tt=3) and None),
    0x0E: s_legacy(lambda t, sl: t.sl_map(sl, 0x3000, 0xFEE0_0000) and {"addr": 0x3000}),
    # scalable mode: root and context
    0x30: s_sm(lambda t, pdir, sl: _attr(t.unit, "ttm", 2)),
    0x31: s_sm(lambda t, pdir, sl: (_attr(t.unit, "ttm", 0), {"pasid": 1})[1]),
    0x38: s_sm(lambda t, pdir, sl: _attr(t.unit, "root_table_address", BEYOND)),
    0x39: s_sm(lambda t, pdir, sl: _set(t, t.root, 0)),
    0x3A: s_sm(lambda t, pdir, sl: _or(t, t.root, 1 << 3)),
    0x40: s_sm(lambda t, pdir, sl: _set(t, t.root, BEYOND | 1)),
    0x41: s_sm(lambda t, pdir, sl: _set(t, _ctx_sm(t), 0)),
    0x42: s_sm(lambda t, pdir, sl: _or(t, _ctx_sm(t) + 16, 1)),
    0x45: s_sm(lambda t, pdir, sl: (t.context_sm(SID, paside=False), {"pasid": 3})[1]),
    0x46: s_sm(lambda t, pdir, sl: {"pasid": 128 * 64}),
    0x48: s_sm(lambda t, pdir, sl: t.context_sm(SID, rid_pasid=128 * 64) and None),
    # PASID directory and table
    0x50: s_sm(lambda t, pdir, sl: _set(t, _ctx_sm(t), BEYOND | 1 | 1 << 3)),
    0x51: s_sm(lambda t, pdir, sl: {"pasid": 64}),
    0x52: s_sm(lambda t, pdir, sl: _or(t, pdir, 1 << 5)),
    0x58: s_sm(lambda t, pdir, sl: _set(t, pdir, PASID_DIR_ENTRY.encode(P=1, SMPTBLPTR=BEYOND)[0])),
    0x59: s_sm(lambda t, pdir, sl: {"pasid": 9}),
    0x5A: s_sm(lambda t, pdir, sl: _or(t, _pe(t, pdir) + 24, 1)),
    0x5B: s_sm(lambda t, pdir, sl: t.pasid_entry(pdir, 0, pgtt=5) and None),
    0x5C: s_sm(lambda t, pdir, sl: {"execute": True}),
    0x5D: s_sm(lambda t, pdir, sl: {"pasid": 0, "privileged": True}),
    # first level
    0x70: s_fl(lambda t, pdir, fl: _set(t, fl, BEYOND | 7) and None),
    0x71: s_fl(lambda t, pdir, fl: None),
    0x72: s_fl(
        lambda t, pdir, fl: (
            _or(t, t.fl_map(fl, 0x20_0000, 0x40_0000, size=2 << 20), 1 << 13),
            {"addr": 0x20_0000},
        )[1]
    ),
    0x73: s_fl(lambda t, pdir, fl: t.pasid_entry(pdir, 5, pgtt=1, fl_root=BEYOND) and None),
    0x80: s_fl(lambda t, pdir, fl: {"addr": 1 << 47}),
    0x81: s_fl(lambda t, pdir, fl: t.fl_map(fl, 0, 0x5000, us=False) and {"addr": 0}),
    0x82: s_fl(
        lambda t, pdir, fl: t.fl_map(fl, 0, 0x5000, xd=True) and {"addr": 0, "execute": True},
        Capabilities(execute_requests=True),
    ),
    # nested
    0x74: _nested(lambda t, n, fl: _set(t, n.where(fl), (1 << 40) | 7) and None),
    0x75: _nested(
        lambda t, n, fl: (
            t.pasid_entry(t.context_sm(SID), 1, pgtt=3, sl_root=n.sl, aw=1, fl_root=0x7000_0000)
            and None
        )
    ),
    0x76: _nested(lambda t, n, fl: _set(t, n.where(fl), 0x7000_0000 | 7) and None),
    0x77: _nested(
        lambda t, n, fl: (
            t.fl_map(fl, 0, 0x8000, where=n.where, alloc=lambda: n.alloc(w=False))
            and t.sl_map(n.sl, 0x8000, 0x9000, levels=3)
            and {"addr": 0}
        ),
        w_tables=False,
    ),
    # second level, scalable mode
    0x78: s_sm(lambda t, pdir, sl: _set(t, sl, SL_TABLE.encode(R=1, W=1, ADDR=BEYOND)[0])),
    0x79: s_sm(lambda t, pdir, sl: {"addr": 0x5000}),
    0x7A: s_sm(lambda t, pdir, sl: _or(t, sl, 1 << 62)),
    0x83: s_sm(lambda t, pdir, sl: {"addr": 1 << 48}),
    0x85: s_sm(lambda t, pdir, sl: {"write": True}),
    0x86: s_sm(lambda t, pdir, sl: t.sl_map(sl, 0x1000, 0x2000, r=False, w=True) and None),
    0x87: s_sm(lambda t, pdir, sl: t.sl_map(sl, 0x3000, 0xFEE0_1000) and {"addr": 0x3000}),
}
# 0x85 is raised by both stages: the dict holds the second-level case
FL_WRITE = s_fl(
    lambda t, pdir, fl: t.fl_map(fl, 0, 0x5000, rw=False) and {"write": True, "addr": 0}
)
CASES = [*SCENARIOS.items(), (0x85, FL_WRITE)]


@pytest.mark.parametrize(
    "code,build", CASES, ids=[f"{c:#04x}-{i}" for i, (c, _) in enumerate(CASES)]
)
def test_each_fault_reason(code: int, build: Scenario) -> None:
    t, req = build()
    addr = req.pop("addr", 0x1000)
    r = t.unit.translate(SID, addr, **req)
    assert isinstance(r, TranslationFault), r
    assert r.reason == code, f"{r.reason:#x} {r.name}"
    assert r.name == reason_name(code)
    assert r.recorded and not r.fpd
    assert t.unit.faults == [r]
    assert r.sid == SID and r.address == addr and r.pasid == req.get("pasid")
    assert f"[fault reason {code:#04x}]" in r.linux_message()
    # the uncached walk reports the same reason
    assert fault(t.tr.walk(SID, addr, **req)).reason == code


def test_fault_reasons_covered() -> None:
    raised = {c for c, _ in CASES}
    assert raised <= set(FAULT_REASONS)
    assert len(raised) >= 50


# --- FPD ---------------------------------------------------------------------------------------


def test_context_fpd_suppresses_qualified_faults() -> None:
    t, _pdir, _sl = sm_sl_setup(fpd=True)
    r = fault(t.unit.translate(SID, 0x5000))  # SL not present: qualified
    assert r.reason == 0x79 and r.fpd and not r.recorded
    assert t.unit.faults == []


def test_fpd_does_not_suppress_unqualified_faults() -> None:
    t, pdir, _sl = sm_sl_setup(fpd=True)
    _set(t, pdir, PASID_DIR_ENTRY.encode(P=1, SMPTBLPTR=BEYOND)[0])
    r = fault(t.unit.translate(SID, 0x1000))
    assert r.reason == 0x58 and r.recorded and not r.fpd


def test_pasid_dir_fpd_applies_even_to_a_non_present_entry() -> None:
    t, pdir, _sl = sm_sl_setup()
    _set(t, pdir + 8, PASID_DIR_ENTRY.encode(P=0, FPD=1)[0])  # PASIDs 64..127
    r = fault(t.unit.translate(SID, 0x1000, pasid=70))
    assert r.reason == 0x51 and r.fpd and not r.recorded


def test_pasid_entry_fpd_kept_by_teardown_suppresses() -> None:
    # Linux intel_pasid_tear_down_entry(fault_ignore): entry cleared with FPD=1 left set
    t, pdir, _sl = sm_sl_setup()
    t.pasid_entry(pdir, 3, present=False, fpd=True, pgtt=0)
    r = fault(t.unit.translate(SID, 0x1000, pasid=3))
    assert r.reason == 0x59 and r.fpd and not r.recorded
    # without FPD the same fault is recorded
    t.pasid_entry(pdir, 4, present=False, pgtt=0)
    r = fault(t.unit.translate(SID, 0x1000, pasid=4))
    assert r.reason == 0x59 and r.recorded


def test_fl_reserved_bits_at_2m_use_layout() -> None:
    # bit 13 is reserved in a 2 MiB first-level leaf (FL_PDE_2M), not in a table entry
    assert FL_PDE_2M.reserved_masks[0] & (1 << 13)
