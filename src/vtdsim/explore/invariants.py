"""Invariants: properties of the whole model state checked by the explorer.

An :class:`Invariant` is a named function from the workload's *world* (whatever its ``setup``
returns) to an iterable of violation messages (empty: it holds).  ``when`` says when it runs:

* ``"step"`` — at every decision (a step at which two or more threads could run) where the state
  is *quiescent* (no logical thread holds a lock: inside a critical section the driver may
  legitimately be halfway through an update); with ``quiescent=False`` after every step, even
  inside critical sections;
* ``"end"`` — once, after every thread finished;
* ``"both"`` — both;
* ``"alloc"`` — only through ``on_alloc(world, kind, value, owner, scope)``, called the moment an
  allocator hands out an id (:func:`vtdsim.driver.sync.allocated`), inside whatever critical
  section the allocation happens in.

Users add their own: ``Invariant("no-pasid-zero", lambda w: [...], when="step")`` in a workload's
``invariants()`` (see ``examples/explore_custom.py``).

The driver invariants of issue 5 (PASID entries vs. allocator, double frees, leaks, attachment
counts, DMA after detach) are built from ``Kernel.audit()`` and ``Kernel.accounting()`` plus the
world's own records in :mod:`vtdsim.explore.workloads`; :func:`driver_invariants` returns them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["Invariant", "check_all", "driver_invariants"]

When = Literal["step", "end", "both", "alloc"]


@dataclass(frozen=True, slots=True)
class Invariant:
    """A named check of the world; returns violation messages (nothing when it holds)."""

    name: str
    check: Callable[[Any], Iterable[str]]
    when: When = "both"
    quiescent: bool = True
    description: str = ""
    #: optional: the bug name of each message (one check reporting several named invariants,
    #: such as ``Kernel.audit()``); default: the invariant's own name
    classify: Callable[[str], str] | None = None
    #: the names this invariant can report (for ``only=`` filtering); default: ``(name,)``
    names: tuple[str, ...] = ()
    #: called at each allocation: ``(world, kind, value, owner, scope)`` -> violation messages
    on_alloc: Callable[[Any, str, int, object, object], Iterable[str]] | None = None

    @property
    def at_step(self) -> bool:
        return self.when in ("step", "both")

    @property
    def at_end(self) -> bool:
        return self.when in ("end", "both")

    @property
    def at_alloc(self) -> bool:
        return self.on_alloc is not None

    def reports(self, name: str) -> bool:
        return name == self.name or name in self.names


def check_all(
    invariants: Iterable[Invariant], world: object, only: str | None = None
) -> tuple[str, str] | None:
    """The first violation as ``(invariant name, message)``, or None.  With ``only``, other
    names are ignored."""
    for inv in invariants:
        classify = inv.classify
        for msg in inv.check(world):
            name = classify(msg) if classify is not None else inv.name
            if only is None or name == only:
                return (name, msg)
    return None


def driver_invariants() -> tuple[Invariant, ...]:
    """The issue's invariants over a :class:`vtdsim.explore.adapter.DriverWorld`:

    * ``use-after-free`` — a present PASID entry's PASID is allocated and owned by the domain
      the entry points to; nothing is used after it was freed (pages, DIDs, domains);
    * ``aux-list``, ``pasid-zero``, ``attach-count``, ``kernel-audit`` — the rest of
      ``Kernel.audit()``: well-formed device lists, the aux path never programs PASID 0,
      attachment counts equal the live records, DIDs and references consistent;
    * ``dma-after-detach`` — no DMA succeeds through a domain after its detach returned
      (recorded by the DMA actor when it happens; the record is checked at every quiescent
      decision and at the end);
    * ``leak`` (end only) — no PASID or domain ID allocated that no attached domain holds;
    * ``new-alloc-in-use`` (at each allocation) — a PASID just handed out is not the PASID of
      a present entry of another domain, a DID just handed out is not the DID of a present
      entry of another domain on that unit (issue 5 item 3).

    Double frees are caught where they happen: the PASID allocator raises ``AllocatorError``,
    reported as the exception bug ``double-free`` (:mod:`vtdsim.explore.names`)."""
    from vtdsim.explore.adapter import DriverWorld, audit_category, categorised

    # The two audit checks read DriverWorld.audit's messages.  For a world whose class keeps
    # that method they call what it calls, Kernel.audit() (and, for a message, the same
    # categorisation, ``categorised``): one call less per check, and no list of pairs to
    # unpack.  They run at the end of every schedule and at its quiescent decisions
    # (pinned against the checks as they were: tests/test_perf_end_checks3.py).
    driver_audit = DriverWorld.audit

    def observed(w: Any) -> Iterable[str]:
        found = w.violations
        return list(found) if found else ()  # (no copy of the empty record)

    def step_audit(w: Any) -> Iterable[str]:
        if type(w).audit is driver_audit:
            msgs = w.kernel.audit()
            found = categorised(msgs, with_leaks=False) if msgs else ()
        else:
            found = w.audit(with_leaks=False)
        return [m for _c, m in found] if found else ()

    def end_audit(w: Any) -> Iterable[str]:
        if type(w).audit is driver_audit:
            # with leaks, DriverWorld.audit keeps every message of Kernel.audit(), in order
            msgs: list[str] = w.kernel.audit()
            return msgs
        found = w.audit(with_leaks=True)
        return [m for _c, m in found] if found else ()

    audit_names = (
        "use-after-free",
        "aux-list",
        "pasid-zero",
        "attach-count",
        "kernel-audit",
    )
    return (
        # The DMA actor records a violation the moment it happens (DriverWorld.dma) and the
        # record is never taken back, so checking the record at quiescent decisions and at the
        # end gives the same verdict as after every step, without a check per step (~16 per
        # schedule of workload (a), ~8% of its time).
        Invariant(
            "dma-after-detach",
            observed,
            when="both",
            description="no DMA succeeds through a domain after its detach returned",
        ),
        Invariant(
            "kernel-audit",
            step_audit,
            when="step",
            classify=audit_category,
            names=audit_names,
            description="Kernel.audit() without leak checks, at every quiescent step",
        ),
        Invariant(
            "new-alloc-in-use",
            _no_violation,
            when="alloc",
            on_alloc=new_alloc_in_use,
            description="a new PASID or DID is not in use by any present entry",
        ),
        Invariant(
            "kernel-audit",
            end_audit,
            when="end",
            classify=audit_category,
            names=(*audit_names, "leak"),
            description="Kernel.audit() with leak checks, at the end",
        ),
    )


def _no_violation(_w: Any) -> Iterable[str]:
    return ()


def new_alloc_in_use(w: Any, kind: str, value: int, owner: object, scope: object) -> list[str]:
    """Violations of "a new allocation is not in use by any present entry" in a
    :class:`~vtdsim.explore.adapter.DriverWorld` right after ``scope`` handed ``value`` to
    ``owner``: a PASID entry present in the driver's mirror (``ops.programmed``) with that PASID
    for another domain, or (DIDs are per unit) a present PASID entry in memory on that unit with
    that DID for another domain.  Takes no lock (it runs inside the allocating thread's critical
    section).

    (It runs at every allocation of every explored schedule: no empty dict per device, and
    the import of ``pasid_entry_read`` (~1 us even when already imported) only where an entry
    is read.)"""
    ops = w.kernel.ops
    programmed = ops.programmed
    out: list[str] = []
    if kind == "pasid":
        # Exact early exit: a message needs a mirror entry at ``value`` for another domain,
        # and the loop below only looks at (some of) the mirror's per-device dicts.  Looking at
        # all of them first, without a per-device ``infos`` lookup, answers "no" for nearly
        # every allocation of a search.
        for prog in programmed.values():
            dom = prog.get(value)
            if dom is not None and dom is not owner:
                break
        else:
            return out
        for info in ops.infos.values():
            prog = programmed.get(id(info))
            dom = prog.get(value) if prog is not None else None
            if dom is not None and dom is not owner:
                out.append(
                    f"PASID {value} allocated to {owner!r} while a present entry of "
                    f"{getattr(info.dev, 'bdf', info.dev)} uses it for "
                    f"{dom!r}"
                )
    elif kind == "did":
        # Exact early exit: a message needs a mirror entry for another domain (then its entry
        # in memory is read); with none in the whole mirror the loop below reports nothing.
        for prog in programmed.values():
            for dom in prog.values():
                if dom is not owner:
                    break
            else:
                continue
            break
        else:
            return out
        for info in ops.infos.values():
            if info.iommu.domain_ids is not scope:
                continue
            prog = programmed.get(id(info))
            if not prog:
                continue  # (no entry programmed for this device)
            for pasid, dom in prog.items():
                if dom is owner:
                    continue
                from vtdsim.driver.intel.pasid import pasid_entry_read

                e = pasid_entry_read(info, pasid)
                if e is not None and e["P"] and e["DID"] == value:
                    out.append(
                        f"DID {value} on {info.iommu.name} allocated to {owner!r} while the "
                        f"present PASID {pasid} entry for {dom!r} uses it"
                    )
    return out
