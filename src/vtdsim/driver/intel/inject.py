"""One fault-injection hook for every allocation the Intel driver makes.

Linux exercises its error paths with ``CONFIG_FAULT_INJECTION`` (``failslab``,
``fail_page_alloc``); the model does the same with one :class:`FaultInjector` consulted at each
allocation *site*:

==============  ==========================================================================
site            allocation (Linux counterpart)
==============  ==========================================================================
``"did"``       domain-ID bitmap slot (``domain_attach_iommu`` ``find_first_zero_bit``)
``"pasid"``     global PASID (``intel_pasid_alloc_id`` / ``ioasid_alloc``)
``"pgtable"``   a page-table page (``alloc_pgtable_page`` for ``dma_pte`` tables)
``"pasid-dir"`` a PASID directory (``intel_pasid_alloc_table``'s ``alloc_pages_node``)
``"pasid-table"`` a leaf PASID table (``intel_pasid_get_entry``'s ``alloc_pgtable_page``)
``"context"``   a context table (``iommu_context_addr``)
==============  ==========================================================================

Frame allocations reach the injector through :attr:`FrameAllocator.fail_hook` (the tag of a
frame is its site name), so an injected page failure raises ``OutOfFrames`` exactly where a real
shortage would; the driver maps both to ``-ENOMEM``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vtdsim.hw.memory import FrameAllocator

__all__ = ["SITES", "FaultInjector"]

SITES = ("did", "pasid", "pgtable", "pasid-dir", "pasid-table", "context")


@dataclass
class _Plan:
    skip: int  # successful calls to let through first
    count: int  # failures to inject after that (-1: forever)


@dataclass
class FaultInjector:
    """Decides, per site, whether the next allocation fails.

    ``fail(site, after=0, count=1)``: let ``after`` allocations at ``site`` succeed, then make
    ``count`` of them fail (``count=-1``: every one).  ``calls[site]`` counts every consultation
    and ``injected[site]`` every failure made, so a test can sweep "fail the n-th allocation" for
    n = 0, 1, 2... until a call sequence completes without consulting the site again.
    """

    plans: dict[str, _Plan] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)
    injected: dict[str, int] = field(default_factory=dict)

    def fail(self, site: str, after: int = 0, count: int = 1) -> None:
        self.plans[site] = _Plan(after, count)

    def clear(self, site: str | None = None) -> None:
        """Stop injecting at ``site`` (every site if ``None``)."""
        if site is None:
            self.plans.clear()
        else:
            self.plans.pop(site, None)

    def should_fail(self, site: str) -> bool:
        """Consulted by each allocator at entry; True means "fail this allocation"."""
        self.calls[site] = self.calls.get(site, 0) + 1
        plan = self.plans.get(site)
        if plan is None:
            return False
        if plan.skip > 0:
            plan.skip -= 1
            return False
        if plan.count == 0:
            return False
        if plan.count > 0:
            plan.count -= 1
        self.injected[site] = self.injected.get(site, 0) + 1
        return True

    def frame_hook(self, tag: str, order: int) -> bool:
        """A :attr:`FrameAllocator.fail_hook`: the frame's tag is the site name."""
        del order
        return self.should_fail(tag)

    def attach(self, frames: FrameAllocator) -> None:
        """Route ``frames``' allocations through this injector."""
        frames.fail_hook = self.frame_hook
