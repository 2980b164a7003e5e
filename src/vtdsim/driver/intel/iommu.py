"""The Intel VT-d driver's ``iommu_ops`` (Linux ``drivers/iommu/intel/iommu.c``), over the
hardware-facing internals (``dmar``, ``domain_id``, ``ioasid``, ``pgtable``, ``pasid``,
``device``).

Design rationale
----------------
This layer is the glue Linux keeps in ``intel/iommu.c``: domain allocation, RID attach (in
scalable mode: a second-level or pass-through PASID entry at ``IOMMU_NO_PASID``,
``dmar_insert_one_dev_info`` → ``intel_pasid_setup_second_level(..., PASID_RID2PASID)``), the
per-device feature ops (``intel_iommu_dev_enable_feat`` → ``intel_iommu_enable_auxd``), aux
attach (delegated to the selected variant: :mod:`.aux` or :mod:`.aux_v5`), and the modern
``intel_iommu_set_dev_pasid``.

Every attach path takes its DID reference with ``domain_attach_iommu`` under ``iommu->lock``
and writes the PASID entry through :meth:`IntelIommuOps.pasid_setup`, which also keeps a mirror
of what it wrote (``programmed``: per device, PASID → domain).  The mirror is what makes
``Kernel.audit()`` cheap: it is checked against the allocators and, with ``full=True``, against
the tables in memory.

Errors: every path either completes or unwinds what it did (DID reference, PASID entry, PASID)
before raising; allocation failures (``OutOfFrames``, injected or real) surface as
``IommuError(ENOMEM)``.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from vtdsim.driver import sync
from vtdsim.driver.core import (
    DomainType,
    Feature,
    IommuDomain,
)
from vtdsim.driver.intel import device as _device
from vtdsim.driver.intel import pasid as _pasid
from vtdsim.driver.intel.dmar import (
    DEFAULT_DOMAIN_ADDRESS_WIDTH,
    IntelIommu,
    agaw_to_width,
    cap_mgaw,
    psi_aligned,
)
from vtdsim.driver.intel.domain_id import (
    FLPT_DEFAULT_DID,
    IommuDomainInfo,
    domain_attach_iommu,
    domain_detach_iommu,
    domain_id_iommu,
)
from vtdsim.driver.intel.ioasid import PasidAllocator
from vtdsim.driver.intel.pgtable import DmaPageTable
from vtdsim.errors import IommuError
from vtdsim.hw.memory import OutOfFrames

if TYPE_CHECKING:
    from vtdsim.driver.intel.aux import CorrectedAux
    from vtdsim.driver.intel.aux_v5 import ListHead, V5Aux
    from vtdsim.driver.intel.device import DeviceDomainInfo

__all__ = ["DmarDomain", "IntelIommuOps"]

AuxVariant = Literal["corrected", "v5"]


class DmarDomain(IommuDomain):
    """``struct dmar_domain``: the generic domain plus the Intel state.

    ``iommu_array`` (seq_id → :class:`IommuDomainInfo` {refcnt, did}); ``pgtable`` (the
    second-level table of paging domains); ``default_pasid`` / ``auxd_refcnt`` / ``auxd``
    (the aux-domain fields of the v5 patch; the corrected variant keeps its records apart).
    """

    def __init__(self, dtype: DomainType, ops: IntelIommuOps, gaw: int) -> None:
        super().__init__(dtype, ops, aperture_bits=gaw)
        self.iommu_array: dict[int, IommuDomainInfo] = {}
        self.pgtable: DmaPageTable | None = None
        self.gaw = gaw
        #: the v5 patch's ``int default_pasid`` starts at 0 (kzalloc); the corrected driver
        #: uses INVALID_IOASID (-1).  Both mean "none" to aux_get_pasid.
        self.default_pasid = 0
        self.auxd_refcnt = 0
        self.auxd: ListHead | None = None
        #: where the driver programmed this domain: (id(info), pasid) -> info (flush targets)
        self.programmed_at: dict[tuple[int, int], DeviceDomainInfo] = {}

    @property
    def pgd(self) -> int:
        return self.pgtable.pgd if self.pgtable is not None else 0


def _enomem(e: OutOfFrames) -> IommuError:
    return IommuError(errno.ENOMEM, str(e))


class IntelIommuOps:
    """The Intel driver: ``intel_iommu_ops`` + ``intel_*_domain_ops``."""

    name = "intel-iommu"

    def __init__(
        self,
        iommus: list[IntelIommu],
        unit_for: Callable[[Any], object] | None = None,
        *,
        aux_variant: AuxVariant = "corrected",
        pasid_allocator: PasidAllocator | None = None,
        phys_bits: int = 52,
    ) -> None:
        self.iommus = iommus
        #: exclusive end of the host physical addresses a page may map to (``phys_bits``: the
        #: host address width; a second-level leaf holds at most bits 51:12, VT-d 9.8)
        self.phys_limit = 1 << min(phys_bits, 52)
        #: the remapping unit covering a device (default: the PciDevice's own ``unit``)
        self._unit_for = unit_for if unit_for is not None else _device_unit
        self.device_domain_lock = sync.SpinLock("device_domain_lock")
        self.pasid_allocator = pasid_allocator if pasid_allocator is not None else PasidAllocator()
        self.infos: dict[int, DeviceDomainInfo] = {}
        #: mirror of the PASID entries the driver wrote: id(info) -> {pasid: domain}
        self.programmed: dict[int, dict[int, DmarDomain]] = {}
        #: domain guest address width (``DEFAULT_DOMAIN_ADDRESS_WIDTH``, clamped per unit)
        self.gaw = DEFAULT_DOMAIN_ADDRESS_WIDTH
        self.aux: CorrectedAux | V5Aux
        if aux_variant == "corrected":
            from vtdsim.driver.intel.aux import INVALID_IOASID, CorrectedAux

            self.aux = CorrectedAux(self)
            self._no_pasid = INVALID_IOASID
        elif aux_variant == "v5":
            from vtdsim.driver.intel.aux_v5 import V5Aux

            self.aux = V5Aux(self)
            self._no_pasid = 0
        else:
            raise IommuError(errno.EINVAL, f"aux_variant={aux_variant!r}: 'corrected' or 'v5'")
        self.aux_variant = aux_variant

    # -- helpers -------------------------------------------------------------------------------

    def info(self, dev: Any) -> DeviceDomainInfo:
        info = self.infos.get(id(dev))
        if info is None:
            raise IommuError(errno.ENODEV, f"device {dev!r} was not probed by {self.name}")
        return info

    def max_pasids(self, info: DeviceDomainInfo) -> int:
        """``dev->iommu->max_pasids`` (``pci_max_pasids`` bounded by the unit's PSS)."""
        return int(info.max_pasids)

    def prepare_domain_attach_device(self, domain: DmarDomain, info: DeviceDomainInfo) -> None:
        """``prepare_domain_attach_device``: ``-EFAULT`` if the domain maps addresses beyond
        the unit's address width."""
        width = _agaw_width(info.iommu)
        if domain.pgtable is not None and domain.pgtable.max_addr > 1 << width:
            raise IommuError(
                errno.EFAULT,
                f"{domain!r} maps up to {domain.pgtable.max_addr:#x}, beyond "
                f"{info.iommu.name}'s {width}-bit address width",
            )

    def pasid_setup(
        self,
        info: DeviceDomainInfo,
        domain: DmarDomain,
        pasid: int,
        *,
        overwrite: bool = False,
    ) -> None:
        """Write the PASID entry for ``domain`` (second-level for paging domains,
        pass-through for identity) and record it.  ``iommu->lock`` held.  ``overwrite=True``
        is the 5.1 behaviour (no ``-EBUSY`` check on a present entry) and only the v5 aux path
        asks for it: the RID and PASID-attach paths always refuse a present entry, whatever
        the aux variant, so a v5 kernel's modern API cannot silently hijack an aux PASID.
        ``-ENODEV`` when the leaf PASID table cannot be allocated (Linux
        ``intel_pasid_get_entry`` returns NULL), ``-EBUSY`` on a present entry (modern).
        """
        iommu = info.iommu
        iommu.lock.assert_held()
        try:
            if domain.type is DomainType.IDENTITY:
                _pasid.intel_pasid_setup_pass_through(iommu, info, pasid, overwrite=overwrite)
            else:
                # intel_pasid_setup_second_level with the lock held (asserted just above)
                _pasid.setup_second_level_held(iommu, domain, info, pasid, overwrite)
        except OutOfFrames as e:
            raise _enomem(e) from e
        prog = self.programmed.get(id(info))
        if prog is None:  # setdefault without building a dict on every call
            prog = self.programmed[id(info)] = {}
        old = prog.get(pasid)
        if old is not None:  # 5.1 overwrite: the entry no longer translates for ``old``
            old.programmed_at.pop((id(info), pasid), None)
        prog[pasid] = domain
        domain.programmed_at[(id(info), pasid)] = info

    def pasid_replace(
        self, info: DeviceDomainInfo, domain: DmarDomain, pasid: int, old: DmarDomain
    ) -> None:
        """Swap the present entry at ``pasid`` from ``old`` to ``domain`` in place
        (``intel_pasid_replace_second_level`` / ``_pass_through``, flushed for the old DID)
        and move the mirror record.  ``iommu->lock`` held; the new domain holds its DID."""
        iommu = info.iommu
        iommu.lock.assert_held()
        old_did = (
            FLPT_DEFAULT_DID if old.type is DomainType.IDENTITY else domain_id_iommu(old, iommu)
        )
        try:
            _pasid.intel_pasid_replace_entry(
                iommu,
                info,
                pasid,
                None if domain.type is DomainType.IDENTITY else domain,
                old_did,
            )
        except OutOfFrames as e:
            raise _enomem(e) from e
        prog = self.programmed.setdefault(id(info), {})
        prev = prog.get(pasid)
        if prev is not None:
            prev.programmed_at.pop((id(info), pasid), None)
        prog[pasid] = domain
        domain.programmed_at[(id(info), pasid)] = info

    def pasid_teardown(self, info: DeviceDomainInfo, pasid: int) -> None:
        """``intel_pasid_tear_down_entry`` (clear, PASID-cache, P_IOTLB/IOTLB, devTLB, wait)
        and forget the mirror entry.  ``iommu->lock`` held."""
        iommu = info.iommu
        iommu.lock.assert_held()
        # intel_pasid_tear_down_entry(iommu, dev, pasid) with the lock held (asserted above)
        _pasid.tear_down_entry_held(iommu, info, pasid)
        prog = self.programmed.get(id(info))
        if prog is not None:
            old = prog.pop(pasid, None)
            if old is not None:
                old.programmed_at.pop((id(info), pasid), None)

    # -- IommuOps ------------------------------------------------------------------------------

    def probe_device(self, dev: Any) -> int:
        """``intel_iommu_probe_device``: the device's info, PASID table and context entry."""
        unit = self._unit_for(dev)
        iommu = next((i for i in self.iommus if i.unit is unit), None)
        if iommu is None:
            raise IommuError(errno.ENODEV, f"no DMAR unit covers {dev!r}")
        try:
            info = _device.intel_iommu_probe_device(iommu, dev)
        except OutOfFrames as e:
            raise _enomem(e) from e
        self.infos[id(dev)] = info
        return self.max_pasids(info)

    def domain_alloc(self, dtype: DomainType) -> IommuDomain:
        """``intel_iommu_domain_alloc``: paging domains get their top-level table now
        (``domain_init``: width clamped to the first unit's MGAW and SAGAW)."""
        domain = DmarDomain(dtype, self, self.gaw)
        domain.default_pasid = self._no_pasid
        if dtype.paging:
            if not self.iommus:
                raise IommuError(errno.ENODEV, "no DMAR unit: no page-table format to use")
            domain.pgtable = DmaPageTable.for_iommu(self.iommus[0], self.gaw)
            domain.gaw = domain.aperture_bits = domain.pgtable.gaw
        return domain

    def domain_free(self, domain: IommuDomain) -> None:
        """``intel_iommu_domain_free`` → ``domain_exit``: free the page-table pages."""
        assert isinstance(domain, DmarDomain)
        if domain.pgtable is not None:
            domain.pgtable.free_all()
            domain.pgtable = None

    def attach_dev(self, domain: IommuDomain, dev: Any) -> None:
        """``intel_iommu_attach_device``: ``-EPERM`` for an unmanaged domain on an
        AUX-enabled device (``is_aux_domain``), ``-EFAULT`` from prepare, then DID + PASID
        entry at RID2PASID (``dmar_insert_one_dev_info``)."""
        assert isinstance(domain, DmarDomain)
        info = self.info(dev)
        if info.auxd_enabled and domain.type is DomainType.UNMANAGED:
            raise IommuError(
                errno.EPERM,
                f"{domain!r} is an unmanaged domain and AUX is enabled on {info.dev.bdf}: "
                "it may only be aux-attached",
            )
        self.prepare_domain_attach_device(domain, info)
        self._attach_pasid(domain, info, 0)
        info.domain = domain

    @staticmethod
    def _did_get(domain: DmarDomain, iommu: IntelIommu) -> None:
        """``domain_attach_iommu`` for domains that own a DID: identity (pass-through) entries
        use ``FLPT_DEFAULT_DID`` (1) and take none (as 6.x kernels)."""
        if domain.type is not DomainType.IDENTITY:
            domain_attach_iommu(domain, iommu)

    @staticmethod
    def _did_put(domain: DmarDomain, iommu: IntelIommu) -> None:
        if domain.type is not DomainType.IDENTITY:
            domain_detach_iommu(domain, iommu)

    def _attach_pasid(self, domain: DmarDomain, info: DeviceDomainInfo, pasid: int) -> None:
        if domain.type is DomainType.BLOCKED:
            return  # nothing to program: no PASID entry means DMA is blocked
        iommu = info.iommu
        with self.device_domain_lock, iommu.lock:
            if pasid and iommu.quirks.v5_1_entry:
                # 5.x context entries get PASIDE only from intel_iommu_enable_pasid (modern
                # kernels set it at probe, before any set_dev_pasid): do it here, idempotent.
                _device.intel_iommu_enable_pasid(iommu, info)
            self._did_get(domain, iommu)
            try:
                self.pasid_setup(info, domain, pasid)
            except BaseException:
                self._did_put(domain, iommu)
                raise

    def _detach_pasid(self, domain: DmarDomain, info: DeviceDomainInfo, pasid: int) -> None:
        if domain.type is DomainType.BLOCKED:
            return
        iommu = info.iommu
        with self.device_domain_lock, iommu.lock:
            self.pasid_teardown(info, pasid)
            self._did_put(domain, iommu)

    def detach_dev(self, domain: IommuDomain, dev: Any) -> None:
        """``intel_iommu_detach_device`` → ``dmar_remove_one_dev_info``."""
        assert isinstance(domain, DmarDomain)
        info = self.info(dev)
        self._detach_pasid(domain, info, 0)
        info.domain = None

    def map(self, domain: IommuDomain, iova: int, paddr: int, size: int, prot: int) -> None:
        """``intel_iommu_map`` → ``__domain_mapping``; then ``__mapping_notify_one`` (PSI
        in caching mode, write-buffer flush otherwise)."""
        assert isinstance(domain, DmarDomain)
        pgtable = domain.pgtable
        assert pgtable is not None
        if paddr + size > self.phys_limit:
            # A second-level leaf holds the address in bits HAW-1:12 and the bits above are
            # reserved (VT-d 9.8), so such a page cannot be mapped: Linux would write a PTE
            # the hardware faults on (or, above bit 51, silently truncate).  Refuse it.
            raise IommuError(
                errno.ERANGE,
                f"paddr={paddr:#x} size={size:#x} ends beyond the "
                f"{self.phys_limit.bit_length() - 1}-bit host address width",
            )
        try:
            pgtable.map(iova, paddr, size, prot)
        except BaseException:
            # Complete unwinding: tables the failed map installed and detached again may have
            # been walked (cached) already: flush, then free them.
            if pgtable.pending:
                for di in domain.iommu_array.values():
                    di.iommu.flush_iotlb_dsi(di.did)
                pgtable.free_pages(pgtable.pending)
            raise
        for di in domain.iommu_array.values():
            iommu = di.iommu
            if iommu.caching_mode:
                iommu.flush_iotlb_psi(di.did, iova, size >> 12, map=True)
            elif iommu.rwbf:  # iommu_flush_write_buffer is a no-op without CAP.RWBF
                iommu.iommu_flush_write_buffer()

    def unmap(self, domain: IommuDomain, iova: int, size: int) -> int:
        """``intel_iommu_unmap`` + ``intel_iommu_tlb_sync`` (strict): PSI IOTLB flush per
        unit with the device TLBs of RID users, the PASID-form device-TLB flush of every
        (device, PASID) user, then the detached page-table pages are freed."""
        assert isinstance(domain, DmarDomain)
        pgtable = domain.pgtable
        assert pgtable is not None
        if not domain.iommu_array:  # attached nowhere: nothing can cache it
            done, freelist = pgtable.unmap(iova, size)
            pgtable.free_pages(freelist)
            return done
        # (plain loops: a comprehension is one more function call per unmap in Python 3.11)
        targets = []
        for di in domain.iommu_array.values():
            targets.append((di.iommu, di.did))
        users = domain.programmed_at
        rid_ats = []
        for (_k, p), i in users.items():
            if p == 0 and i.ats_enabled:
                rid_ats.append(i)
        done = pgtable.unmap_sync(iova, size, targets, rid_ats)
        # device-TLB, PASID form, for every (device, PASID != 0) user (Linux "Fix ineffective
        # devTLB invalidation for subdevices")
        pasid_ats = None
        for (_k, p), i in users.items():
            if p and i.ats_enabled:
                if pasid_ats is None:
                    pasid_ats = [(i, p)]
                else:
                    pasid_ats.append((i, p))
        if pasid_ats:
            addr, mask = psi_aligned(iova, max(done >> 12, 1))
            for info, p in pasid_ats:
                info.iommu.flush_dev_iotlb(info, p, addr, mask)
        return done

    def iova_to_phys(self, domain: IommuDomain, iova: int) -> int:
        assert isinstance(domain, DmarDomain) and domain.pgtable is not None
        return int(domain.pgtable.iova_to_phys(iova))

    # -- features ------------------------------------------------------------------------------

    def dev_has_feat(self, dev: Any, feat: Feature) -> bool:
        """``intel_iommu_dev_has_feat``: AUX needs scalable mode, PASID in the unit and the
        device's PASID capability (the SIOV DVSEC is not modelled)."""
        info = self.info(dev)
        if feat is Feature.AUX:
            return bool(info.iommu.sm and info.iommu.pasid_supported and info.pasid_supported)
        return False

    def dev_feat_enabled(self, dev: Any, feat: Feature) -> bool:
        """``intel_iommu_dev_feat_enabled``."""
        info = self.info(dev)
        return feat is Feature.AUX and bool(info.auxd_enabled)

    def dev_enable_feat(self, dev: Any, feat: Feature) -> None:
        """``intel_iommu_dev_enable_feat`` → ``intel_iommu_enable_auxd``: ``-EINVAL`` without
        scalable mode / PASID support in the unit; ``-ENODEV`` when
        ``intel_iommu_enable_pasid`` fails (no PASID capability)."""
        info = self.info(dev)
        if feat is not Feature.AUX:
            raise IommuError(errno.ENODEV, f"feature {feat.name} is not supported")
        iommu = info.iommu
        if not iommu.sm or not iommu.pasid_supported:
            raise IommuError(
                errno.EINVAL, f"{iommu.name}: AUX needs scalable mode and PASID support"
            )
        with self.device_domain_lock, iommu.lock:
            try:
                _device.intel_iommu_enable_pasid(iommu, info)
            except IommuError as e:
                raise IommuError(errno.ENODEV, f"{info.dev.bdf}: {e}") from e
            info.auxd_enabled = True

    def dev_disable_feat(self, dev: Any, feat: Feature) -> None:
        """``intel_iommu_dev_disable_feat`` → ``intel_iommu_disable_auxd`` (the core refuses
        while aux domains are attached)."""
        info = self.info(dev)
        if feat is not Feature.AUX:
            raise IommuError(errno.ENODEV, f"feature {feat.name} is not supported")
        with self.device_domain_lock:
            info.auxd_enabled = False

    # -- aux -----------------------------------------------------------------------------------

    def aux_attach_dev(self, domain: IommuDomain, dev: Any) -> None:
        assert isinstance(domain, DmarDomain)
        info = self.infos.get(id(dev))  # self.info(dev), inlined for the aux hot path
        self.aux.attach(domain, info if info is not None else self.info(dev))

    def aux_detach_dev(self, domain: IommuDomain, dev: Any) -> None:
        assert isinstance(domain, DmarDomain)
        info = self.infos.get(id(dev))
        self.aux.detach(domain, info if info is not None else self.info(dev))

    def aux_get_pasid(self, domain: IommuDomain, dev: Any) -> int:
        assert isinstance(domain, DmarDomain)
        self.info(dev)
        return self.aux.get_pasid(domain)

    # -- PASID attach (v6.2+) ------------------------------------------------------------------

    def set_dev_pasid(
        self, domain: IommuDomain | None, dev: Any, pasid: int, old: IommuDomain | None
    ) -> None:
        """``intel_iommu_set_dev_pasid`` (and the blocked domain's, for ``domain=None``):
        ``-EOPNOTSUPP`` without PASID support; DID via ``domain_attach_iommu`` (``-ENOSPC``);
        the entry setup fails with ``-EBUSY`` if present.  A replace (6.13+
        ``domain_setup_second_level(..., old)``) takes the new DID first, then overwrites the
        present entry in place (:meth:`pasid_replace`: never non-present, so DMA at ``pasid``
        never faults during a replace), then drops the old DID; a failure leaves the entry and
        the old domain as they were."""
        info = self.info(dev)
        iommu = info.iommu
        if domain is None:
            assert isinstance(old, DmarDomain)
            self._detach_pasid(old, info, pasid)
            return
        assert isinstance(domain, DmarDomain)
        if not iommu.pasid_supported:
            raise IommuError(errno.EOPNOTSUPP, f"{iommu.name} does not support PASIDs")
        self.prepare_domain_attach_device(domain, info)
        if old is None:
            self._attach_pasid(domain, info, pasid)
            return
        assert isinstance(old, DmarDomain)
        if domain.type is DomainType.BLOCKED:
            self._detach_pasid(old, info, pasid)
            return
        with self.device_domain_lock, iommu.lock:
            self._did_get(domain, iommu)
            try:
                if old.type is DomainType.BLOCKED:
                    self.pasid_setup(info, domain, pasid)  # nothing present to replace
                else:
                    self.pasid_replace(info, domain, pasid, old)
            except BaseException:
                self._did_put(domain, iommu)  # the entry is untouched: old stays
                raise
            if old.type is not DomainType.BLOCKED:
                self._did_put(old, iommu)


def _device_unit(dev: Any) -> object:
    return getattr(dev, "unit", None)


def _agaw_width(iommu: IntelIommu) -> int:
    """``prepare_domain_attach_device``'s ``addr_width``: the unit's AGAW width, at most
    CAP.MGAW (both fixed at ``alloc_iommu``: computed once per unit)."""
    width = iommu.addr_width
    if width is None:
        width = iommu.addr_width = min(agaw_to_width(iommu.agaw), cap_mgaw(iommu.cap))
    return width
