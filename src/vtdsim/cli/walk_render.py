"""Rendering of an explained walk: every table read, its raw entry, decoded fields, outcome."""

from __future__ import annotations

from typing import Any

import click

from vtdsim.cli.common import echo_json
from vtdsim.scenario.image import QueryResult
from vtdsim.spec.faults import reason_name, reason_text

_STAGE_HELP = {
    "root": "root table (index: bus)",
    "context": "context table (index: device/function)",
    "pasid-dir": "PASID directory (index: PASID[19:6])",
    "pasid-table": "PASID table (index: PASID[5:0])",
    "second-level": "second-level page table",
    "first-level": "first-level page table",
    "nested-second-level": "second-level table (translating a first-level table address)",
}


def walk_json(res: QueryResult) -> dict[str, Any]:
    out = res.to_json()
    steps = []
    for s in res.trace:
        steps.append(
            {
                "stage": s.stage,
                "entry": s.name,
                "level": s.level,
                "table": f"{s.table:#x}",
                "index": s.index,
                "entry_address": f"{s.entry_address:#x}",
                "raw": [f"{w:#018x}" for w in s.raw],
                "decoded": (
                    {name: value for name, _rng, value in s.decoded.describe()}
                    if s.decoded is not None
                    else None
                ),
                "outcome": s.outcome,
                **(
                    {"fault_reason": f"{s.fault:#04x}", "fault_name": reason_name(s.fault)}
                    if s.fault is not None
                    else {}
                ),
            }
        )
    out["steps"] = steps
    return out


def walk_lines(res: QueryResult) -> list[str]:
    """Plain-text explanation (also used by ``run`` timelines and the demo)."""
    q = res.query
    pasid = "without PASID" if q.pasid is None else f"with PASID {q.pasid:#x}"
    lines = [f"{'Write' if q.write else 'Read'} request from {q.bdf} {pasid} at IOVA {q.iova:#x}:"]
    for n, s in enumerate(res.trace, 1):
        help_ = _STAGE_HELP.get(s.stage, s.stage)
        lvl = f" level {s.level}" if s.level else ""
        lines.append(
            f"  {n}. {help_}{lvl} at {s.table:#x}: entry {s.index} ({s.name}) "
            f"at {s.entry_address:#x}"
        )
        if s.raw:
            raw = " ".join(f"{w:#018x}" for w in s.raw)
            lines.append(f"     raw (qword 0 first): {raw}")
        if s.decoded is not None:
            fields = [
                f"{name}={value:#x}" if value > 9 else f"{name}={value}"
                for name, _rng, value in s.decoded.describe()
                if value
            ]
            bad = s.decoded.reserved_violations()
            fields += [f"RESERVED(qword {i})={bits:#x}" for i, bits in bad]
            lines.append(f"     decoded: {', '.join(fields) if fields else '(all zero)'}")
        outcome = s.outcome
        if s.fault is not None:
            outcome += f": fault {s.fault:#04x} {reason_name(s.fault)} ({reason_text(s.fault)})"
        lines.append(f"     -> {outcome}")
    if res.ok:
        assert res.address is not None
        lines.append(
            f"  result: translated to physical {res.address:#x} "
            f"(page size {res.page_size or 4096:#x})"
        )
    else:
        assert res.fault_reason is not None
        fpd = " (not recorded: fault processing disabled)" if res.fpd else ""
        lines.append(
            f"  result: DMA blocked, fault reason {res.fault_reason:#04x} "
            f"{reason_name(res.fault_reason)}: {reason_text(res.fault_reason)}{fpd}"
        )
    return lines


def render_walk(res: QueryResult, as_json: bool) -> None:
    if as_json:
        echo_json(walk_json(res))
    else:
        click.echo("\n".join(walk_lines(res)))
