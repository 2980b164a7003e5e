"""``Kernel``: the Intel driver booted over a :class:`~vtdsim.hw.platform.Platform`, exposing
the core IOMMU API plus whole-state invariant checks for tests and the interleaving explorer.

Design rationale
----------------
``Kernel(platform, aux_variant=...)`` does what boot does in Linux: a frame allocator over the
platform's memory (the OS's pages), one ``IntelIommu`` per remapping unit booted with
``init_dmars``, then ``intel_iommu_probe_device`` for every device a unit covers.  The result
*is* an :class:`~vtdsim.driver.core.IommuCore`, so the core API is called on it directly.

:meth:`Kernel.audit` states the invariants the 2019 review is about, over the whole state:

* every PASID entry the driver programmed (the ops' mirror; with ``full=True`` also every
  present entry read back from the PASID tables in memory, checked against the mirror: DID and
  page-table pointer) belongs to a live attachment: PASID 0 to the RID domain, a PASID-attach
  PASID to the core's ``pasid_array``, anything else to an aux attachment of that domain, whose
  PASID must be allocated in the global allocator *and owned by that domain*;
* the aux path never programs PASID 0;
* attachment counts (``auxd_refcnt``, the corrected driver's records) equal the live
  attachments;
* the allocators hold exactly what live domains hold: PASIDs (a PASID allocated but held by no
  attached domain is a leak), DIDs (per unit, with the per-(domain, unit) reference count equal
  to the number of entries using it);
* no page is referenced after it was freed (page-table tops, PASID directories/tables; with
  ``full=True`` every page-table page reachable from a live domain);
* the v5 variant's device lists are well formed.

It is cheap (no memory scan, no allocator bitmap scan) so that the explorer can call it after
every scheduling step; :meth:`accounting` is the matching frozen snapshot of resources in use.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from vtdsim.driver.core import DomainType, IommuCore
from vtdsim.driver.intel.aux import CorrectedAux
from vtdsim.driver.intel.dmar import IntelIommu, Quirks, init_dmars
from vtdsim.driver.intel.domain_id import FLPT_DEFAULT_DID, DomainIdAllocator
from vtdsim.driver.intel.inject import FaultInjector
from vtdsim.driver.intel.ioasid import PasidAllocator
from vtdsim.driver.intel.iommu import AuxVariant, DmarDomain, IntelIommuOps
from vtdsim.errors import ArgumentError
from vtdsim.hw.memory import FrameAllocator
from vtdsim.spec.entries import PASID_DIR_ENTRY, PASID_ENTRY

if TYPE_CHECKING:
    from vtdsim.driver.intel.device import DeviceDomainInfo
    from vtdsim.hw.caps import Capabilities
    from vtdsim.hw.platform import Platform

__all__ = ["TABLE_TAGS", "Accounting", "Kernel"]

#: frame tags of driver-owned translation structures
TABLE_TAGS = ("pgtable", "pasid-dir", "pasid-table", "context", "root-table")
_MiB = 1 << 20
_DIR_P = 1 << PASID_DIR_ENTRY.field("P").shift
_DIR_ADDR = PASID_DIR_ENTRY.field("SMPTBLPTR").mask
_PE_P = 1 << PASID_ENTRY.field("P").shift
_PE_DID = PASID_ENTRY.field("DID")
_PE_PGTT = PASID_ENTRY.field("PGTT")
_PE_SLPTPTR = PASID_ENTRY.field("SLPTPTR")
_IDENTITY = DomainType.IDENTITY
_BLOCKED = DomainType.BLOCKED


@dataclass(frozen=True, slots=True)
class Accounting:
    """Resources in use: allocated PASIDs, DIDs per unit, driver table pages per tag, live
    domains.

    Leaf PASID tables (tag ``"pasid-table"``) are counted apart and do not take part in
    equality: Linux allocates them lazily in ``intel_pasid_get_entry`` and keeps them until
    the device's whole PASID table is freed, so a balanced attach/detach legitimately leaves
    one behind.  (``audit(full=True)`` still checks every one of them is a live frame.)
    """

    pasids: tuple[int, ...]
    dids: tuple[tuple[str, tuple[int, ...]], ...]
    frames: tuple[tuple[str, int], ...]
    domains: int
    pasid_leaf_tables: int = field(default=0, compare=False)


class Kernel(IommuCore):
    """The booted Intel driver + core API over ``platform`` (see the module docstring).

    ``aux_variant``: ``"corrected"`` (:mod:`vtdsim.driver.intel.aux`) or ``"v5"`` (the 2019
    patch as posted, :mod:`vtdsim.driver.intel.aux_v5`; implies the 5.1 PASID-entry quirk that
    overwrites present entries unless ``quirks`` is given).  Frames for the driver's tables
    come from ``[frames_start, memory size)``; memory below ``frames_start`` (16 MiB by
    default) is free for test buffers.  ``injector`` receives every allocation (sites
    ``did``, ``pasid``, ``pgtable``, ``pasid-dir``, ``pasid-table``, ``context``).
    """

    ops: IntelIommuOps

    def __init__(
        self,
        platform: Platform,
        aux_variant: AuxVariant = "corrected",
        *,
        quirks: Quirks | None = None,
        injector: FaultInjector | None = None,
        frames: FrameAllocator | None = None,
        frames_start: int = 16 * _MiB,
    ) -> None:
        if aux_variant not in ("corrected", "v5"):
            raise ArgumentError("aux_variant", aux_variant, "'corrected' or 'v5'")
        self.platform = platform
        memory = platform.memory
        if frames is None:
            if not 0 <= frames_start < memory.size or frames_start & 0xFFF:
                raise ArgumentError(
                    "frames_start", frames_start, f"a page-aligned address below {memory.size:#x}"
                )
            frames = FrameAllocator(memory, frames_start, memory.size)
        self.frames = frames
        self.injector = injector if injector is not None else FaultInjector()
        self.injector.attach(frames)
        if quirks is None:
            quirks = Quirks(v5_1_entry=True) if aux_variant == "v5" else Quirks()
        self.quirks = quirks
        self.iommus = [
            IntelIommu(u, frames, seq_id=i, name=u.name, quirks=quirks, injector=self.injector)
            for i, u in enumerate(platform.units)
        ]
        init_dmars(self.iommus)
        ops = IntelIommuOps(
            self.iommus,
            lambda dev: platform.unit_for(dev.sid),
            aux_variant=aux_variant,
            pasid_allocator=PasidAllocator(injector=self.injector),
            # the host's physical address width (Linux: CPUID MAXPHYADDR), a platform fact
            phys_bits=min((u.caps.haw for u in platform.units), default=52),
        )
        super().__init__(ops)
        self.aux_variant = aux_variant
        for dev in platform.devices:
            if platform.unit_for(dev.sid) is not None:
                self.probe_device(dev)

    @classmethod
    def for_testing(
        cls,
        ndev: int = 2,
        *,
        nopasid_devices: int = 0,
        pasid_bits: int = 20,
        ats: bool = True,
        caps: Capabilities | None = None,
        memory_size: int = 1 << 32,
        aux_variant: AuxVariant = "corrected",
        **kwargs: Any,
    ) -> Kernel:
        """A one-unit platform with ``ndev`` PASID-capable devices (00:02.0, 00:03.0, ...)
        followed by ``nopasid_devices`` devices without a PASID capability."""
        from vtdsim.hw.platform import Platform

        platform = Platform(memory_size)
        platform.add_unit(caps)
        for i in range(ndev + nopasid_devices):
            bits = pasid_bits if i < ndev else 0
            platform.add_device(f"00:{2 + i:02x}.0", pasid_bits=bits, ats=ats)
        return cls(platform, aux_variant, **kwargs)

    # -- convenience ---------------------------------------------------------------------------

    def device(self, bdf: str) -> Any:
        """The probed device named ``bdf``."""
        return self.device_state(bdf).dev

    # -- accounting ----------------------------------------------------------------------------

    def accounting(self) -> Accounting:
        """A frozen snapshot of the PASIDs, DIDs and driver table pages in use."""
        tags: Counter[str] = Counter()
        for _order, tag in self.frames.live.values():
            tags[tag] += 1
        leaves = tags.pop("pasid-table", 0)
        return Accounting(
            pasids=tuple(sorted(_pasid_owners(self.ops.pasid_allocator))),
            dids=tuple((i.name, _dids_in_use(i)) for i in self.iommus),
            frames=tuple(sorted(tags.items())),
            domains=len(self._domains),
            pasid_leaf_tables=leaves,
        )

    # -- audit ---------------------------------------------------------------------------------

    def audit(self, full: bool = False) -> list[str]:
        """Invariant violations of the whole driver state (empty list: consistent).  See the
        module docstring; ``full=True`` also reads every table back from memory."""
        out: list[str] = []
        ops = self.ops
        alloc = ops.pasid_allocator
        owners = getattr(alloc, "_owners", None)  # _pasid_owners(alloc), inlined
        if type(owners) is not dict:
            owners = _pasid_owners(alloc)
        live = self._domains
        identity, blocked = _IDENTITY, _BLOCKED
        infos, programmed = ops.infos, ops.programmed
        no_entries: dict[int, DmarDomain] = {}
        # 1. programmed PASID entries vs attachments.  The (device, domain) -> count map of
        # the aux attachments is built device by device as the loop reaches each device (a
        # device's checks only look up its own pairs); sections 3 and 6 use all of it.
        aux_pairs: dict[tuple[int, DmarDomain], int] = {}
        refs: dict[tuple[int, DmarDomain], int] = {}
        # IommuCore.in_flight(x), without a call per question
        inflight = self._inflight
        for st in self._devices.values():
            dev_id = id(st.dev)
            st_aux = st.aux
            if st_aux:
                for d, n in st_aux.items():
                    assert isinstance(d, DmarDomain)
                    aux_pairs[(dev_id, d)] = n
            info = infos[dev_id]
            prog = programmed.get(id(info), no_entries)
            if not prog and not st_aux and not st.pasid_array and st.domain is None:
                continue  # nothing programmed and nothing attached: nothing to compare
            name = st.name
            # an attach/detach of this device (or of the domain) is between the driver's
            # update and the core's bookkeeping: skip the core-vs-driver comparisons
            st_busy = id(st) in inflight if inflight else False
            if prog:
                iommu = info.iommu
                seq = iommu.seq_id
                pasid_array = st.pasid_array
                for pasid, dom in prog.items():
                    rk = (seq, dom)
                    refs[rk] = refs.get(rk, 0) + 1
                    if dom.freed or dom not in live:
                        out.append(f"PASID {pasid:#x} of {name} points to freed {dom!r}")
                    if dom.type is identity:
                        pass  # pass-through entries use FLPT_DEFAULT_DID, no reference
                    elif seq not in dom.iommu_array:
                        out.append(
                            f"PASID {pasid:#x} of {name}: {dom!r} holds no DID on {iommu.name}"
                        )
                    if pasid == 0:
                        if st.domain is not dom and not st_busy:
                            out.append(
                                f"PASID {pasid:#x} of {name} (RID) points to {dom!r}, RID "
                                f"domain is {st.domain!r}"
                            )
                        continue
                    if pasid_array and pasid_array.get(pasid) is dom:
                        continue
                    if (dev_id, dom) not in aux_pairs:
                        if not (st_busy or id(dom) in inflight):
                            out.append(
                                f"PASID {pasid:#x} of {name} points to {dom!r}, which is not "
                                "attached there"
                            )
                        continue
                    if dom.default_pasid != pasid:
                        out.append(
                            f"PASID {pasid:#x} of {name} is an aux entry of {dom!r}, whose "
                            f"default PASID is {dom.default_pasid}"
                        )
                    owner = owners.get(pasid)
                    if owner is None:
                        out.append(
                            f"PASID {pasid:#x} of {name} is programmed for {dom!r} but the "
                            "allocator holds it as free"
                        )
                    elif owner is not dom:
                        out.append(
                            f"PASID {pasid:#x} of {name} is programmed for {dom!r} but "
                            f"allocated to {owner!r}"
                        )
            # 2. core attachments must be programmed
            if st_busy:
                continue
            rid = st.domain
            if rid is not None and rid.type is not blocked and prog.get(0) is not rid:
                out.append(f"RID of {name}: {rid!r} attached but PASID 0 entry is {prog.get(0)!r}")
            if st.pasid_array:
                for p, d in st.pasid_array.items():
                    if d.type is not blocked and prog.get(p) is not d and id(d) not in inflight:
                        out.append(
                            f"PASID {p:#x} of {name}: {d!r} attached but entry is {prog.get(p)!r}"
                        )
            for d in st_aux:
                assert isinstance(d, DmarDomain)
                if inflight and id(d) in inflight:
                    continue
                dp = d.default_pasid
                if dp == 0:
                    out.append(f"aux attachment of {d!r} to {name} uses PASID 0")
                elif prog.get(dp) is not d:
                    out.append(
                        f"aux attachment of {d!r} to {name}: entry at its PASID "
                        f"{dp} is {prog.get(dp)!r}"
                    )
        # 3. attachment counts
        # (plain dicts, not Counters: the audit runs at every quiescent decision of a search)
        per_domain: dict[DmarDomain, int] = {}
        variant = ops.aux_variant
        corrected = variant == "corrected"
        if variant == "v5":
            for (_dev, d), n in aux_pairs.items():
                per_domain[d] = per_domain.get(d, 0) + n
        else:
            for _dev, d in aux_pairs:
                per_domain[d] = per_domain.get(d, 0) + 1
        records: dict[DmarDomain, int] = {}
        aux = ops.aux
        if corrected:
            if type(aux) is CorrectedAux:
                # CorrectedAux.attachments() without the list: its records in its order
                for subs in aux.by_device.values():
                    for s in subs.values():
                        d = s.domain
                        users = s.users
                        records[d] = records.get(d, 0) + 1
                        core_n = aux_pairs.get((id(s.info.dev), d), 0)
                        if users != core_n and id(d) not in inflight:
                            out.append(
                                f"{d!r} on {s.info.dev.bdf}: {users} users, core has {core_n}"
                            )
            else:
                assert isinstance(aux, CorrectedAux)
                for d, info, _p, users in aux.attachments():
                    records[d] = records.get(d, 0) + 1
                    core_n = aux_pairs.get((id(info.dev), d), 0)
                    if users != core_n and id(d) not in inflight:
                        out.append(f"{d!r} on {info.dev.bdf}: {users} users, core has {core_n}")
        held_pasids: dict[int, DmarDomain] = {}
        dids_held: dict[int, list[int]] = {}  # unit seq_id -> the DIDs live domains hold there
        frames_live = self.frames.live
        for d in live:
            if not isinstance(d, DmarDomain):
                continue
            refcnt = d.auxd_refcnt
            if refcnt != per_domain.get(d, 0) and id(d) not in inflight:
                out.append(
                    f"{d!r}: auxd_refcnt {refcnt} but {per_domain.get(d, 0)} live aux attachment(s)"
                )
            if corrected and records.get(d, 0) != refcnt:
                out.append(f"{d!r}: {records.get(d, 0)} records, auxd_refcnt {refcnt}")
            dp = d.default_pasid
            if refcnt > 0 and dp > 0:
                held_pasids[dp] = d
            elif corrected and dp != -1:
                out.append(f"{d!r} keeps default PASID {dp} with no aux attachment")
            # 4. DID references
            for seq, di in d.iommu_array.items():
                did = di.did
                held_here = dids_held.get(seq)
                if held_here is None:
                    dids_held[seq] = [did]
                else:
                    held_here.append(did)
                n = refs.get((seq, d), 0)
                if di.refcnt != n:
                    out.append(
                        f"{d!r}: DID {did} on {di.iommu.name} has refcnt {di.refcnt} but "
                        f"{n} PASID entr{'y' if n == 1 else 'ies'} use it"
                    )
                ids = di.iommu.domain_ids
                # DomainIdAllocator.is_used(did), inlined for the allocator itself
                if not (did in ids._used if type(ids) is DomainIdAllocator else ids.is_used(did)):
                    out.append(f"{d!r} holds DID {did} on {di.iommu.name}, which is free")
            # 5. page-table top still live
            pgtable = d.pgtable
            if pgtable is not None:
                frame = frames_live.get(pgtable.pgd)
                if frame is None or frame[1] != "pgtable":
                    out.append(f"{d!r}: page-table top {pgtable.pgd:#x} is not a live pgtable page")
        # 6. allocators hold exactly what live domains hold
        if owners:
            for p in sorted(owners) if len(owners) > 1 else owners:
                if p not in held_pasids:
                    out.append(
                        f"PASID {p} is allocated (to {owners.get(p)!r}) but no attached "
                        "domain holds it (leak)"
                    )
        for p, d in held_pasids.items():
            if owners.get(p) is not d:
                out.append(f"{d!r} holds PASID {p}, allocator owner is {owners.get(p)!r}")
        for iommu in self.iommus:
            held_list = dids_held.get(iommu.seq_id)
            # how many distinct DIDs live domains hold on this unit (no set for zero or one)
            if held_list is None:
                n_held = 0
            elif len(held_list) == 1:
                n_held = 1
            else:
                n_held = len(set(held_list))
                if n_held != len(held_list):
                    out.append(f"{iommu.name}: two live domains share a DID")
            ids = iommu.domain_ids
            # len(DomainIdAllocator), inlined for the allocator itself
            n_ids = (
                len(ids._used) - len(ids.reserved) if type(ids) is DomainIdAllocator else len(ids)
            )
            if n_ids != n_held:
                out.append(
                    f"{iommu.name}: {n_ids} DIDs allocated, live domains hold "
                    f"{sorted(set(held_list or ()))} (leak)"
                )
        # 7. variant-specific (v5 lists; CorrectedAux.audit checks nothing)
        if type(aux) is not CorrectedAux:
            aux.audit(out)
        if full:
            self._audit_memory(out)
        return out

    def _audit_memory(self, out: list[str]) -> None:
        """Read every device's PASID table back and compare it with the mirror; check that
        every page-table page of a live domain is a live ``pgtable`` frame."""
        ops = self.ops
        live_frames = self.frames.live
        for info in ops.infos.values():
            prog = ops.programmed.get(id(info), {})
            try:
                present = _present_pasid_entries(info)
            except Exception as e:  # a freed or corrupt table: report, do not crash
                out.append(f"{info.dev.bdf}: PASID table unreadable: {e}")
                continue
            for pasid, (did, slptr, pgtt) in present.items():
                dom = prog.get(pasid)
                where = f"memory: PASID {pasid:#x} of {info.dev.bdf}"
                if dom is None:
                    out.append(f"{where} is present but the driver programmed nothing there")
                    continue
                if dom.type is DomainType.IDENTITY:
                    if (did, pgtt) != (FLPT_DEFAULT_DID, 4):
                        out.append(f"{where}: DID {did} PGTT {pgtt} for identity {dom!r}")
                    continue
                di = dom.iommu_array.get(info.iommu.seq_id)
                if di is None or di.did != did:
                    out.append(f"{where} has DID {did}, {dom!r} holds {di.did if di else None}")
                if dom.pgtable is not None and (pgtt != 2 or slptr != dom.pgtable.pgd):
                    out.append(
                        f"{where}: PGTT {pgtt} SLPTPTR {slptr:#x}, {dom!r}'s table is "
                        f"{dom.pgtable.pgd:#x}"
                    )
            for pasid in prog:
                if pasid not in present:
                    out.append(f"memory: PASID {pasid:#x} of {info.dev.bdf} programmed, absent")
            for page, tag in _pasid_table_pages(info):
                if live_frames.get(page, (0, ""))[1] != tag:
                    out.append(f"{info.dev.bdf}: {tag} page {page:#x} is not a live {tag} frame")
        total = 0
        for d in self._domains:
            if isinstance(d, DmarDomain) and d.pgtable is not None:
                total += d.pgtable.table_pages()
        n = sum(1 for _o, t in live_frames.values() if t == "pgtable")
        if n < total:
            out.append(f"{total} page-table pages reachable, only {n} live pgtable frames")


def _pasid_table_pages(info: DeviceDomainInfo) -> list[tuple[int, str]]:
    """The directory and every leaf table of ``info``'s PASID table, read from memory."""
    pt = info.pasid_table
    if pt is None:
        return []
    mem = info.iommu.memory
    pages = [(pt.table, "pasid-dir")]  # one block of 2^order frames
    for k in range(1 << pt.order):
        arr = mem.page_array(pt.table + k * 4096)
        for v in arr[np.flatnonzero(arr & _DIR_P)]:
            pages.append((int(v) & _DIR_ADDR, "pasid-table"))
    return pages


def _present_pasid_entries(info: DeviceDomainInfo) -> dict[int, tuple[int, int, int]]:
    """Every present PASID entry of ``info``'s table in memory: pasid -> (DID, SLPTPTR,
    PGTT)."""
    pt = info.pasid_table
    out: dict[int, tuple[int, int, int]] = {}
    if pt is None:
        return out
    mem = info.iommu.memory
    for k in range(1 << pt.order):
        arr = mem.page_array(pt.table + k * 4096)
        for di in np.flatnonzero(arr & _DIR_P):
            leaf = int(arr[di]) & _DIR_ADDR
            entries = mem.page_array(leaf).reshape(64, 8)
            for e in np.flatnonzero(entries[:, 0] & _PE_P):
                q0, q1 = int(entries[e, 0]), int(entries[e, 1])
                pasid = ((k * 512 + int(di)) << 6) | int(e)
                out[pasid] = (_PE_DID.extract(q1), q0 & _PE_SLPTPTR.mask, _PE_PGTT.extract(q0))
    return out


def _pasid_owners(alloc: PasidAllocator) -> dict[int, object]:
    """The allocator's PASID -> owner map, read without taking ``pasid_lock``: the audit runs
    at quiescent points and must not itself be a scheduling point under the explorer."""
    owners = getattr(alloc, "_owners", None)
    if isinstance(owners, dict):
        return owners
    return {p: alloc.owner(p) for p in alloc.allocated()}  # pragma: no cover


def _dids_in_use(iommu: IntelIommu) -> tuple[int, ...]:
    """Allocated, non-reserved DIDs, ascending."""
    return tuple(iommu.domain_ids.in_use())
