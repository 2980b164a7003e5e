"""Shared by the queued-invalidation fast-path tests: the state a submission can change."""

from __future__ import annotations

from vtdsim.driver.intel.dmar import QI_LENGTH
from vtdsim.driver.kernel import Kernel


def unit_state(k: Kernel) -> tuple[object, ...]:
    """Unit 0's registers, queue pointers and statistics, the ring and status pages, and the
    driver's queue bookkeeping (free head, slots whose upper qwords were written)."""
    unit = k.platform.units[0]
    io = k.iommus[0]
    mem = k.platform.memory
    return (
        dict(unit._regs),
        unit._iq_head,
        unit._iq_tail,
        unit.statistics(),
        mem.read(io.qi_desc, QI_LENGTH * 32),
        mem.read(io.qi_status, 4096),
        io._free_head,
        sorted(io._qi_dirty_hi),
    )
