"""The DMAs of the explorer's end checks (``hw/translate.py``'s cold path and its replay memo,
``hw/pci.py``'s one-page ``dma_read``) against the general path.

* ``Translator.translate`` hands a request to the cold path exactly when the arguments are
  what :func:`vtdsim.hw.translate._check_request` accepts (the range tests are written as
  shifts there): pinned argument by argument, with the same answers as the general path.
* The end-check DMAs of workload "a" (a faulting DMA of the detached device, a translated one
  of the attached device), replayed on restored worlds, give what the general path gives:
  results, cache contents and counters, fault-recording registers, device-TLBs.
* A replay whose tables lost a page (a restore dropping it) is not replayed.
"""

from __future__ import annotations

from typing import Any

import pytest

from hw_tables import sm_sl_setup
from test_perf_translate_cold import _obj, _result, _tr_state
from vtdsim.errors import VtdsimError
from vtdsim.hw.translate import Translator

_SIDS: tuple[Any, ...] = (0x0010, -1, 0, 0xFFFF, 0x10000, 1 << 70, True, 16.0, None, "16")
_ADDRS: tuple[Any, ...] = (0x10000, -1, 0, (1 << 64) - 1, 1 << 64, -(1 << 64), False, 65536.0)
_PASIDS: tuple[Any, ...] = (None, 1, -1, 0, (1 << 20) - 1, 1 << 20, True, 1.0)


def _accepted(sid: Any, addr: Any, pasid: Any) -> bool:
    """The cold path's acceptance test as it was written before (range comparisons)."""
    return (
        type(sid) is int
        and 0 <= sid <= 0xFFFF
        and type(addr) is int
        and 0 <= addr <= (1 << 64) - 1
        and (pasid is None or (type(pasid) is int and 0 <= pasid < 1 << 20))
    )


def _call(f: Any, *a: Any, **kw: Any) -> Any:
    try:
        return _result(f(*a, **kw))
    except (VtdsimError, TypeError) as e:
        return ("E", type(e).__name__, str(e))


def test_cold_path_takes_exactly_the_checked_arguments() -> None:
    """Every combination of boundary, negative, bool, float and other arguments: the cold
    path is called exactly for the accepted ones; answers, cache state and fault records
    match a translator without the cold path."""
    worlds = []
    for cold in (True, False):
        t, _pdir, sl = sm_sl_setup(pasid=1, did=5)
        t.sl_map(sl, 0x10000, 0x80_0000)
        t.sl_map(sl, 0, 0x90_0000)
        if not cold:
            t.tr._cold = None
        worlds.append(t)
    seen: list[tuple[Any, ...]] = []
    real = worlds[0].tr._cold
    assert real is not None

    def spy(rta: int, sid: int, addr: int, pasid: int | None, w: bool, p: bool) -> Any:
        seen.append((sid, addr, pasid))
        return real(rta, sid, addr, pasid, w, p)

    worlds[0].tr._cold = spy
    n = 0
    for sid in _SIDS:
        for addr in _ADDRS:
            for pasid in _PASIDS:
                for write, priv in ((False, False), (1, 0), ([], "x")):
                    res = []
                    for t in worlds:
                        t.tr.invalidate_all()
                        res.append(
                            _call(
                                t.unit.translate,
                                sid,
                                addr,
                                pasid=pasid,
                                write=write,
                                privileged=priv,
                            )
                        )
                    assert res[0] == res[1], (sid, addr, pasid, write, priv)
                    assert _tr_state(worlds[0].tr) == _tr_state(worlds[1].tr)
                    took = bool(seen) and seen[-1] == (sid, addr, pasid)
                    assert took == _accepted(sid, addr, pasid), (sid, addr, pasid)
                    seen.clear()
                    n += 1
    assert [_obj(f) for f in worlds[0].unit.faults] == [_obj(f) for f in worlds[1].unit.faults]
    assert n == len(_SIDS) * len(_ADDRS) * len(_PASIDS) * 3


def _unit_state(w: Any) -> list[Any]:
    out: list[Any] = []
    for d in w.devs:
        unit = w.kernel.ops.infos[id(d)].iommu.unit
        out.append(sorted(unit._regs.items()))
        out.append((unit._next_frcd, unit._faults_recorded, unit._faults_dropped, unit._fault_irqs))
        out.append(_tr_state(unit.translator))
        out.append(
            [(k, e.pasid, e.base, e.shift, e.hpa, e.perm) for k, e in d._devtlb.items()]
            + [d.devtlb_statistics()]
        )
    return out


def _dma(r: Any) -> tuple[Any, ...]:
    return (r.ok, r.data, r.transferred, None if r.fault is None else _obj(r.fault))


@pytest.mark.parametrize("order", ["detach-attach", "attach-detach"])
def test_end_check_dmas_replay_like_the_general_path(order: str) -> None:
    """Workload "a"'s end-check DMAs on restored worlds (the replay memo records them once,
    then replays them), each step compared with the same world whose translators have no
    cold path: results, registers (fault records, FSTS), caches, counters, device-TLBs."""
    from vtdsim.explore.adapter import IOVA
    from vtdsim.explore.base import get_workload
    from vtdsim.explore.scheduler import Runner

    runners = [Runner(get_workload("a", "corrected")) for _ in range(2)]
    trs: list[Translator] = []
    for _ in range(6):
        outs = []
        for k, runner in enumerate(runners):
            w = runner.fresh_world()
            for d in w.devs:
                tr = w.kernel.ops.infos[id(d)].iommu.unit.translator
                if k == 1:
                    tr._cold = None  # (a restore puts the cold path back)
                elif tr not in trs:
                    trs.append(tr)
            if order == "detach-attach":
                w.detach(w.dom, 0)
                w.attach(w.dom, 1)
            else:
                w.attach(w.dom, 1)
                w.detach(w.dom, 0)
            p = w.pasid(w.dom, 1)
            out = [
                _dma(w.devs[0].dma_read(IOVA, 8, w.pasid0)),
                _dma(w.devs[1].dma_read(IOVA, 8, p)),
                _unit_state(w),
                # the same DMAs again: served by the caches and device-TLB just filled
                _dma(w.devs[0].dma_read(IOVA, 8, w.pasid0)),
                _dma(w.devs[1].dma_read(IOVA, 8, p)),
                _unit_state(w),
            ]
            outs.append(out)
        assert outs[0] == outs[1]
        assert outs[0][0][0] is False and outs[0][1][0] is True
    replays = sum(getattr(tr._cold, "replays")[0] for tr in trs)  # noqa: B009
    assert replays >= 8, replays


def test_replay_of_tables_that_lost_a_page_walks_again() -> None:
    """A request recorded and replayed, then the memory restored to its tables without the
    last-level table's page (gone from ``qword_pages``; the level-2 entry still points to
    it): not replayed any more; the walk reports what the general path reports."""
    seen = []
    for cold in (True, False):
        t, _pdir, sl = sm_sl_setup(pasid=1, did=5)
        if not cold:
            t.tr._cold = None
        leaf = t.sl_map(sl, 0x10000, 0x80_0000)
        snap = t.mem.snapshot()
        del snap[leaf >> 12]
        out = []
        for k in range(6):
            if k == 3:
                t.mem.restore(snap)
                assert leaf >> 12 not in t.mem.qword_pages
            t.tr.invalidate_all()
            out.append((_call(t.unit.translate, 0x0010, 0x10000, pasid=1), _tr_state(t.tr)))
        out.append([_obj(f) for f in t.unit.faults])
        seen.append(out)
        if cold:
            cold_fn = t.tr._cold
            assert cold_fn is not None
            assert getattr(cold_fn, "replays")[0] == 2  # noqa: B009
    assert seen[0] == seen[1]
    assert seen[0][0][0][0] == "T" and seen[0][3][0][0] == "F"
