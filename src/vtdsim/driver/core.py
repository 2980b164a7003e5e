"""The IOMMU core API, generic over drivers (Linux ``drivers/iommu/iommu.c``).

Design rationale
----------------
Linux splits the IOMMU API in two: the *core* (``iommu.c``) owns the generic bookkeeping (which
domain a device's requester ID is attached to, the per-group ``pasid_array``, argument checks
and the errno contract of every exported function), and a *driver* (``struct iommu_ops`` /
``struct iommu_domain_ops``) programs the hardware.  This module is the core; drivers implement
:class:`IommuOps` (the Intel VT-d driver in :mod:`vtdsim.driver.intel.iommu`, the iommufd-selftest
style mock in :mod:`vtdsim.driver.mock`).

Errors follow Linux's errnos as :class:`~vtdsim.errors.IommuError`; a Python-level misuse (a
non-integer address, an object that is not a domain) is an :class:`~vtdsim.errors.ArgumentError`.
Every entry point validates *all* of its arguments before it changes anything, and the drivers
unwind completely on failure, so a raised error always leaves the whole state unchanged.

Where the model deliberately departs from Linux it says so in the docstring ("correction"):

* ``domain_free`` of a domain that is still attached anywhere is refused with ``-EBUSY`` (Linux
  frees it under the device's feet);
* ``dev_disable_feature(dev, AUX)`` while aux domains are attached is refused with ``-EBUSY``
  (Linux ``intel_iommu_disable_auxd`` just clears the flag, after which ``aux_detach`` is a
  no-op and the PASID, DID and PASID entry leak);
* detaching something that is not attached raises ``-EINVAL`` where Linux WARNs (RID and aux
  detach); PASID detach stays idempotent as Linux/iommufd define it.

There is no default domain: a probed device starts *blocked* (its context entry is present but
no PASID entry is, so untranslated DMA faults) and returns to blocked when its RID domain is
detached.  Linux would attach a default DMA/identity domain at probe; the model leaves that to
the caller (``domain_alloc("dma")`` + ``attach_device``) to keep construction cheap.
"""

from __future__ import annotations

import enum
import errno
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from vtdsim.driver import sync
from vtdsim.errors import ArgumentError, IommuError

__all__ = [
    "IOMMU_CACHE",
    "IOMMU_NOEXEC",
    "IOMMU_NO_PASID",
    "IOMMU_READ",
    "IOMMU_WRITE",
    "DeviceState",
    "DomainType",
    "Feature",
    "IommuCore",
    "IommuDomain",
    "IommuOps",
]

# include/linux/iommu.h prot flags
IOMMU_READ = 1 << 0
IOMMU_WRITE = 1 << 1
IOMMU_CACHE = 1 << 2
IOMMU_NOEXEC = 1 << 3
_PROT_ALL = IOMMU_READ | IOMMU_WRITE | IOMMU_CACHE | IOMMU_NOEXEC

#: include/linux/iommu.h IOMMU_NO_PASID: the RID's PASID; never a valid attach target.
IOMMU_NO_PASID = 0
_U64 = (1 << 64) - 1


class DomainType(enum.Enum):
    """``IOMMU_DOMAIN_*`` (include/linux/iommu.h)."""

    BLOCKED = "blocked"  # all DMA blocked
    IDENTITY = "identity"  # DMA addresses are physical addresses (pass-through)
    UNMANAGED = "unmanaged"  # paging domain managed by the caller (VFIO, mdev)
    DMA = "dma"  # paging domain used by the DMA API

    @property
    def paging(self) -> bool:
        """``__IOMMU_DOMAIN_PAGING``: the domain has a page table (map/unmap allowed)."""
        return self in (DomainType.UNMANAGED, DomainType.DMA)


_UNMANAGED = DomainType.UNMANAGED  # module constants for the map/unmap hot paths
_DMA = DomainType.DMA


class Feature(enum.Enum):
    """``enum iommu_dev_features``."""

    AUX = "aux"  # IOMMU_DEV_FEAT_AUX: multiple domains per device (removed in v5.18)
    SVA = "sva"  # IOMMU_DEV_FEAT_SVA (not implemented by the model's drivers)


class IommuDomain:
    """``struct iommu_domain``: the generic part of a domain.  Drivers subclass it (Linux embeds
    it in ``struct dmar_domain``) and return instances from :meth:`IommuOps.domain_alloc`.

    The core's attachment bookkeeping lives here: ``rid_devices`` (devices whose requester ID
    is attached), ``aux_devices`` (device -> number of aux attachments), ``pasid_attachments``
    ((device, pasid) pairs from ``attach_device_pasid``).
    """

    _serials = 0  # only for an ops object that cannot carry its own counter (no __dict__)

    def __init__(self, dtype: DomainType, ops: IommuOps, *, aperture_bits: int = 48) -> None:
        # Numbered per driver instance (one kernel, restored with its world), not per process:
        # names in reports must not depend on what else the process built before (explorer
        # worker processes, earlier tests).
        serial = getattr(ops, "domain_serials", 0) + 1
        try:
            ops.domain_serials = serial  # type: ignore[attr-defined]
        except AttributeError:
            IommuDomain._serials += 1
            serial = IommuDomain._serials
        self.serial = serial
        self.type = dtype
        self.ops = ops
        self.freed = False
        #: geometry.aperture_end + 1 (the domain's input address width)
        self.aperture_bits = aperture_bits
        #: pgsize_bitmap: 4 KiB, 2 MiB, 1 GiB
        self.pgsize_bitmap = (1 << 12) | (1 << 21) | (1 << 30)
        self.rid_devices: set[object] = set()
        self.aux_devices: dict[object, int] = {}
        self.pasid_attachments: set[tuple[object, int]] = set()

    @property
    def attached(self) -> bool:
        return bool(self.rid_devices or self.aux_devices or self.pasid_attachments)

    def __repr__(self) -> str:
        state = " freed" if self.freed else ""
        return f"<{type(self).__name__} #{self.serial} {self.type.value}{state}>"


@runtime_checkable
class IommuOps(Protocol):
    """What a driver implements (``struct iommu_ops`` + ``struct iommu_domain_ops``).

    Every method raises :class:`IommuError` on failure and must leave its own state unchanged
    when it does (the core relies on it).  The core has already validated the arguments.
    """

    name: str

    def probe_device(self, dev: Any) -> int:
        """``probe_device``: set up per-device state; returns the device's ``max_pasids``
        (``dev->iommu->max_pasids``: 0 when the device or the unit cannot use PASIDs)."""
        ...

    def domain_alloc(self, dtype: DomainType) -> IommuDomain: ...

    def domain_free(self, domain: IommuDomain) -> None: ...

    def attach_dev(self, domain: IommuDomain, dev: Any) -> None:
        """``attach_dev``: attach ``domain`` to the device's requester ID (PASID 0)."""
        ...

    def detach_dev(self, domain: IommuDomain, dev: Any) -> None: ...

    def map(self, domain: IommuDomain, iova: int, paddr: int, size: int, prot: int) -> None: ...

    def unmap(self, domain: IommuDomain, iova: int, size: int) -> int: ...

    def iova_to_phys(self, domain: IommuDomain, iova: int) -> int: ...

    def dev_has_feat(self, dev: Any, feat: Feature) -> bool: ...

    def dev_feat_enabled(self, dev: Any, feat: Feature) -> bool: ...

    def dev_enable_feat(self, dev: Any, feat: Feature) -> None: ...

    def dev_disable_feat(self, dev: Any, feat: Feature) -> None: ...

    def aux_attach_dev(self, domain: IommuDomain, dev: Any) -> None: ...

    def aux_detach_dev(self, domain: IommuDomain, dev: Any) -> None: ...

    def aux_get_pasid(self, domain: IommuDomain, dev: Any) -> int: ...

    def set_dev_pasid(
        self, domain: IommuDomain | None, dev: Any, pasid: int, old: IommuDomain | None
    ) -> None:
        """``set_dev_pasid`` (domain op): make ``domain`` translate ``pasid`` of ``dev``;
        ``old`` is the domain being replaced (``None`` for a fresh attach).  ``domain=None`` is
        the blocked domain's ``set_dev_pasid``: remove ``old`` (Linux ``remove_dev_pasid``);
        it must not fail."""
        ...


@dataclass(eq=False)
class DeviceState:
    """The core's per-device state (Linux ``dev->iommu`` + its single-device ``iommu_group``)."""

    dev: Any
    name: str
    max_pasids: int
    #: group->domain: the domain attached to the requester ID (None = blocked)
    domain: IommuDomain | None = None
    #: group->pasid_array
    pasid_array: dict[int, IommuDomain] = field(default_factory=dict)
    #: aux attachments: domain -> count
    aux: dict[IommuDomain, int] = field(default_factory=dict)
    #: ``group->mutex``: serializes RID and PASID attach/detach of the device (Linux holds it
    #: in ``iommu_attach_device``, ``iommu_attach_device_pasid``...; not for aux attach)
    group_mutex: sync.Mutex = field(default_factory=lambda: sync.Mutex("group->mutex"))


_OPS_METHODS = (
    "probe_device",
    "domain_alloc",
    "domain_free",
    "attach_dev",
    "detach_dev",
    "map",
    "unmap",
    "iova_to_phys",
    "dev_has_feat",
    "dev_feat_enabled",
    "dev_enable_feat",
    "dev_disable_feat",
    "aux_attach_dev",
    "aux_detach_dev",
    "aux_get_pasid",
    "set_dev_pasid",
)


def _check_int(name: str, value: object, *, lo: int = 0, hi: int = _U64) -> int:
    if type(value) is not int:  # bool and other int subclasses are refused too
        raise ArgumentError(name, value, "an integer")
    if not lo <= value <= hi:
        raise IommuError(
            errno.EINVAL, f"{name}={value:#x} is out of range: expected {lo:#x}..{hi:#x}"
        )
    return value


class IommuCore:
    """The generic IOMMU API over one driver (``ops``).

    Devices are registered with :meth:`probe_device`; afterwards every entry point accepts the
    device object itself or its name (``"bb:dd.f"`` for PCI devices).
    """

    def __init__(self, ops: IommuOps) -> None:
        missing = [m for m in _OPS_METHODS if not callable(getattr(ops, m, None))]
        if missing:  # (isinstance on the runtime-checkable Protocol is slow: explorer hot path)
            raise ArgumentError("ops", ops, f"an IommuOps implementation (missing {missing})")
        self.ops = ops
        self._devices: dict[int, DeviceState] = {}
        self._by_name: dict[str, DeviceState] = {}
        self._domains: set[IommuDomain] = set()
        self._inflight: dict[int, int] = {}
        # Guards the core's own records (aux attachment counts ``st.aux``/``d.aux_devices``
        # and the in-flight marks), which mirror no kernel structure.  Deliberately not a
        # sync lock: it is not a kernel lock and must not add scheduling points; under the
        # explorer the critical sections hold no scheduling point and are atomic anyway, and
        # under real OS threads it keeps the read-modify-writes whole.
        self._records = threading.Lock()

    # -- devices -------------------------------------------------------------------------------

    def probe_device(self, dev: Any, name: str | None = None) -> DeviceState:
        """``iommu_probe_device``: let the driver set the device up and track it."""
        if id(dev) in self._devices:
            raise IommuError(errno.EEXIST, f"device {self._name_of(dev)} is already probed")
        nm = name if name is not None else self._name_of(dev)
        if nm in self._by_name:
            raise IommuError(errno.EEXIST, f"a device named {nm!r} is already probed")
        max_pasids = self.ops.probe_device(dev)
        st = DeviceState(dev, nm, max_pasids)
        self._devices[id(dev)] = st
        self._by_name[nm] = st
        return st

    @staticmethod
    def _name_of(dev: Any) -> str:
        bdf = getattr(dev, "bdf", None)
        if isinstance(bdf, str):
            return bdf
        name = getattr(dev, "name", None)
        return name if isinstance(name, str) else repr(dev)

    def device_state(self, dev: Any) -> DeviceState:
        """The core's state of ``dev`` (object or name); ``-ENODEV`` if it was never probed
        (Linux: the device has no ``iommu_group``)."""
        st = self._by_name.get(dev) if isinstance(dev, str) else self._devices.get(id(dev))
        if st is None:
            raise IommuError(errno.ENODEV, f"device {dev!r} is not managed by this IOMMU core")
        return st

    def _aux_args(self, domain: object, dev: Any) -> tuple[IommuDomain, DeviceState]:
        """``_domain(domain)`` and ``device_state(dev)`` for the aux calls, without their
        calls when the domain is a live one of this core and ``dev`` a probed device object
        (what they accept without raising); anything else goes through them (the same
        checks, the same errors)."""
        try:
            live = domain in self._domains
        except TypeError:  # unhashable: certainly not a domain (_domain raises)
            live = False
        # (a name is never a registered object: its id() finds nothing, device_state decides)
        st = self._devices.get(id(dev)) if live else None
        if st is None:
            return self._domain(domain), self.device_state(dev)
        assert isinstance(domain, IommuDomain)
        return domain, st

    @property
    def devices(self) -> list[Any]:
        return [st.dev for st in self._devices.values()]

    def max_pasids(self, dev: Any) -> int:
        return self.device_state(dev).max_pasids

    # -- argument checks -----------------------------------------------------------------------

    def _domain(self, domain: object, *, paging: bool = False) -> IommuDomain:
        try:
            live = domain in self._domains  # fast path: a live domain of this core
        except TypeError:  # unhashable: certainly not a domain
            live = False
        if live:
            assert isinstance(domain, IommuDomain)
            t = domain.type
            if paging and t is not DomainType.UNMANAGED and t is not DomainType.DMA:
                # iommu_map: !(domain->type & __IOMMU_DOMAIN_PAGING) -> -EINVAL
                raise IommuError(
                    errno.EINVAL, f"domain {domain!r} is not a paging domain: it has no page table"
                )
            return domain
        if not isinstance(domain, IommuDomain):
            raise ArgumentError("domain", domain, "an IommuDomain from domain_alloc()")
        if domain.freed:
            raise IommuError(errno.EINVAL, f"domain {domain!r} was freed (use after free)")
        # iommu_attach_device_pasid: "domain->owner != ops" -> -EINVAL
        raise IommuError(errno.EINVAL, f"domain {domain!r} belongs to another IOMMU driver")

    @staticmethod
    def _feature(feat: object) -> Feature:
        if isinstance(feat, Feature):
            return feat
        if isinstance(feat, str):
            for f in Feature:
                if f.value == feat.lower():
                    return f
        raise ArgumentError("feature", feat, "a Feature (Feature.AUX, Feature.SVA)")

    def _pasid(self, st: DeviceState, pasid: object) -> int:
        if not isinstance(pasid, int) or isinstance(pasid, bool):
            raise ArgumentError("pasid", pasid, "an integer PASID")
        if pasid == IOMMU_NO_PASID:
            # iommu_attach_device_pasid: pasid == IOMMU_NO_PASID -> -EINVAL
            raise IommuError(errno.EINVAL, "pasid=0 is IOMMU_NO_PASID (the requester ID's own)")
        if not 0 < pasid < st.max_pasids:
            # __iommu_attach_group_pasid / iommu_attach_device_pasid: pasid >= max_pasids
            raise IommuError(
                errno.EINVAL,
                f"pasid={pasid:#x} is out of range for {st.name}: its max_pasids is "
                f"{st.max_pasids:#x}",
            )
        return pasid

    # -- domains -------------------------------------------------------------------------------

    def domain_alloc(self, dtype: DomainType | str = DomainType.UNMANAGED) -> IommuDomain:
        """``iommu_domain_alloc`` / ``iommu_paging_domain_alloc``."""
        if isinstance(dtype, str):
            try:
                dtype = DomainType(dtype.lower())
            except ValueError:
                raise ArgumentError(
                    "type", dtype, "'unmanaged', 'dma', 'identity' or 'blocked'"
                ) from None
        if not isinstance(dtype, DomainType):
            raise ArgumentError("type", dtype, "a DomainType")
        domain = self.ops.domain_alloc(dtype)
        self._domains.add(domain)
        return domain

    def domain_free(self, domain: IommuDomain) -> None:
        """``iommu_domain_free``.  Correction: ``-EBUSY`` while the domain is attached."""
        d = self._domain(domain)
        if d.attached:
            raise IommuError(
                errno.EBUSY,
                f"domain {d!r} is still attached (RID: {len(d.rid_devices)}, aux: "
                f"{sum(d.aux_devices.values())}, PASID: {len(d.pasid_attachments)})",
            )
        self._begin(d)
        try:
            self.ops.domain_free(d)
            d.freed = True
            self._domains.discard(d)
        finally:
            self._end(d)

    @property
    def domains(self) -> list[IommuDomain]:
        return sorted(self._domains, key=lambda d: d.serial)

    # -- RID attach ----------------------------------------------------------------------------

    def attach_device(self, domain: IommuDomain, dev: Any) -> None:
        """``iommu_attach_device``: ``-EBUSY`` if another domain is attached to the RID
        (``__iommu_attach_group``); driver errors as the driver says (Intel: ``-EPERM`` for an
        unmanaged domain on an AUX-enabled device)."""
        d = self._domain(domain)
        st = self.device_state(dev)
        with st.group_mutex:
            if st.domain is not None:
                raise IommuError(
                    errno.EBUSY, f"device {st.name} already has domain {st.domain!r} attached"
                )
            self._begin(d, st)
            try:
                self.ops.attach_dev(d, st.dev)
                st.domain = d
                d.rid_devices.add(st.dev)
            finally:
                self._end(d, st)

    def detach_device(self, domain: IommuDomain, dev: Any) -> None:
        """``iommu_detach_device``: the device becomes blocked.  Linux WARNs on a mismatched
        domain; the model raises ``-EINVAL``."""
        d = self._domain(domain)
        st = self.device_state(dev)
        with st.group_mutex:
            if st.domain is not d:
                raise IommuError(errno.EINVAL, f"domain {d!r} is not attached to {st.name}")
            self._begin(d, st)
            try:
                self.ops.detach_dev(d, st.dev)
                st.domain = None
                d.rid_devices.discard(st.dev)
            finally:
                self._end(d, st)

    def get_domain(self, dev: Any) -> IommuDomain | None:
        """``iommu_get_domain_for_dev``."""
        return self.device_state(dev).domain

    # -- map / unmap ---------------------------------------------------------------------------

    def _range(self, d: IommuDomain, iova: object, size: object, paddr: object = 0) -> None:
        if type(iova) is not int or type(size) is not int or type(paddr) is not int:
            _check_int("iova", iova)
            _check_int("size", size)
            _check_int("paddr", paddr)
        assert isinstance(iova, int) and isinstance(size, int) and isinstance(paddr, int)
        if iova < 0 or size < 0 or paddr < 0 or (iova | size | paddr) > _U64:
            _check_int("iova", iova)
            _check_int("size", size)
            _check_int("paddr", paddr)
        min_pagesz = d.pgsize_bitmap & -d.pgsize_bitmap
        if (iova | paddr | size) & (min_pagesz - 1):
            # __iommu_map / __iommu_unmap: "unaligned: iova ... min_pagesz" -> -EINVAL
            raise IommuError(
                errno.EINVAL,
                f"unaligned: iova={iova:#x} paddr={paddr:#x} size={size:#x} "
                f"(min_pagesz {min_pagesz:#x})",
            )
        if iova + size > 1 << d.aperture_bits:
            # intel_iommu_map: max_addr beyond __DOMAIN_MAX_ADDR(gaw) -> -EFAULT
            raise IommuError(
                errno.EFAULT,
                f"iova={iova:#x} size={size:#x} ends beyond the domain's "
                f"{d.aperture_bits}-bit address width",
            )

    def map(
        self,
        domain: IommuDomain,
        iova: int,
        paddr: int,
        size: int,
        prot: int = IOMMU_READ | IOMMU_WRITE,
    ) -> None:
        """``iommu_map``: map ``[iova, iova+size)`` to ``paddr`` (all 4 KiB aligned)."""
        # Hot path: exactly the arguments every check below accepts (iommu_map's checks,
        # inlined), else the checking path, which raises the typed error.
        if (
            type(iova) is int
            and type(paddr) is int
            and type(size) is int
            and type(prot) is int
            and not prot & ~_PROT_ALL
            and size > 0
            and iova >= 0
            and paddr >= 0
            and (iova | size | paddr) <= _U64
        ):
            try:
                live = domain in self._domains
            except TypeError:
                live = False
            if live:
                t = domain.type
                bitmap = domain.pgsize_bitmap
                if (
                    (t is _UNMANAGED or t is _DMA)
                    and not (iova | paddr | size) & ((bitmap & -bitmap) - 1)
                    and iova + size <= 1 << domain.aperture_bits
                ):
                    self.ops.map(domain, iova, paddr, size, prot)
                    return
        d = self._domain(domain, paging=True)
        self._range(d, iova, size, paddr)
        if type(prot) is not int or prot & ~_PROT_ALL:
            raise ArgumentError("prot", prot, "IOMMU_READ|IOMMU_WRITE|IOMMU_CACHE|IOMMU_NOEXEC")
        if size == 0:
            return
        self.ops.map(d, iova, paddr, size, prot)

    def unmap(self, domain: IommuDomain, iova: int, size: int) -> int:
        """``iommu_unmap``: returns the number of bytes unmapped (the IOTLB is flushed before
        it returns: strict mode)."""
        # Hot path: exactly the arguments every check below accepts, as in map().
        if (
            type(iova) is int
            and type(size) is int
            and size > 0
            and iova >= 0
            and (iova | size) <= _U64
        ):
            try:
                live = domain in self._domains
            except TypeError:
                live = False
            if live:
                t = domain.type
                bitmap = domain.pgsize_bitmap
                if (
                    (t is _UNMANAGED or t is _DMA)
                    and not (iova | size) & ((bitmap & -bitmap) - 1)
                    and iova + size <= 1 << domain.aperture_bits
                ):
                    return self.ops.unmap(domain, iova, size)
        d = self._domain(domain, paging=True)
        self._range(d, iova, size)
        if size == 0:
            return 0
        return self.ops.unmap(d, iova, size)

    def iova_to_phys(self, domain: IommuDomain, iova: int) -> int:
        """``iommu_iova_to_phys``: 0 if unmapped; identity domains return ``iova``."""
        d = self._domain(domain)
        _check_int("iova", iova)
        if d.type is DomainType.IDENTITY:
            return iova
        if not d.type.paging:
            return 0
        return self.ops.iova_to_phys(d, iova)

    # -- per-device features (v5.2 .. v5.17) ---------------------------------------------------

    def dev_has_feature(self, dev: Any, feat: Feature | str) -> bool:
        """``iommu_dev_has_feature``."""
        st = self.device_state(dev)
        return self.ops.dev_has_feat(st.dev, self._feature(feat))

    def dev_feature_enabled(self, dev: Any, feat: Feature | str) -> bool:
        """``iommu_dev_feature_enabled``."""
        st = self.device_state(dev)
        return self.ops.dev_feat_enabled(st.dev, self._feature(feat))

    def dev_enable_feature(self, dev: Any, feat: Feature | str) -> None:
        """``iommu_dev_enable_feature`` (Intel: ``-EINVAL`` without scalable mode or PASID
        support in the unit, ``-ENODEV`` if the device's PASID capability cannot be
        enabled)."""
        st = self.device_state(dev)
        self.ops.dev_enable_feat(st.dev, self._feature(feat))

    def dev_disable_feature(self, dev: Any, feat: Feature | str) -> None:
        """``iommu_dev_disable_feature``.  Correction over Linux: ``-EBUSY`` while aux
        domains are attached (Linux ``intel_iommu_disable_auxd`` cleared the flag anyway and
        stranded them: their detach became a no-op)."""
        st = self.device_state(dev)
        f = self._feature(feat)
        if f is Feature.AUX and st.aux:
            raise IommuError(
                errno.EBUSY,
                f"device {st.name} still has {sum(st.aux.values())} aux domain attachment(s)",
            )
        self.ops.dev_disable_feat(st.dev, f)

    # -- aux domains (v5.2 .. v5.17) -----------------------------------------------------------

    def aux_attach_device(self, domain: IommuDomain, dev: Any) -> None:
        """``iommu_aux_attach_device``: attach ``domain`` to ``dev`` at the domain's default
        PASID (the driver allocates it; read it back with :meth:`aux_get_pasid`)."""
        # Hot path: _aux_args, then _begin2 and _end2_locked inlined (measured: calling them
        # costs ~5% of an aux attach/detach cycle).
        d, st = self._aux_args(domain, dev)
        inflight = self._inflight
        kd = id(d)
        ks = id(st)
        records = self._records
        records.acquire()  # _begin2(d, st), inlined (explicit acquire/release: cheaper)
        try:
            inflight[kd] = inflight.get(kd, 0) + 1
            inflight[ks] = inflight.get(ks, 0) + 1
        finally:
            records.release()
        # No group->mutex: Linux's iommu_aux_attach_device called the driver unlocked.
        sdev = st.dev
        try:
            self.ops.aux_attach_dev(d, sdev)
        except BaseException:
            self._end2(d, st)
            raise
        # The bookkeeping and _end under one _records section (a threading.Lock, never a
        # scheduling point: nobody can observe the two apart).
        records.acquire()
        try:
            try:
                aux = st.aux
                aux[d] = aux.get(d, 0) + 1
                daux = d.aux_devices
                daux[sdev] = daux.get(sdev, 0) + 1
            finally:
                # _end2_locked(d, st), inlined
                n = inflight[kd] - 1
                if n:
                    inflight[kd] = n
                else:
                    del inflight[kd]
                n = inflight[ks] - 1
                if n:
                    inflight[ks] = n
                else:
                    del inflight[ks]
        finally:
            records.release()

    def aux_detach_device(self, domain: IommuDomain, dev: Any) -> None:
        """``iommu_aux_detach_device``.  Linux silently ignores a domain that is not
        aux-attached; the model raises ``-EINVAL``."""
        # Hot path as in aux_attach_device.
        d, st = self._aux_args(domain, dev)
        n = st.aux.get(d, 0)
        if n == 0:
            raise IommuError(errno.EINVAL, f"domain {d!r} is not aux-attached to {st.name}")
        inflight = self._inflight
        kd = id(d)
        ks = id(st)
        records = self._records
        records.acquire()  # _begin2 inlined (explicit acquire/release: cheaper)
        try:
            inflight[kd] = inflight.get(kd, 0) + 1
            inflight[ks] = inflight.get(ks, 0) + 1
        finally:
            records.release()
        sdev = st.dev
        try:
            self.ops.aux_detach_dev(d, sdev)
        except BaseException:
            self._end2(d, st)
            raise
        records.acquire()  # bookkeeping and _end in one section (see aux_attach_device)
        try:
            try:
                aux = st.aux
                n = aux.get(d, 0)  # re-read: another thread may have detached meanwhile
                if n <= 1:
                    aux.pop(d, None)
                    d.aux_devices.pop(sdev, None)
                else:
                    aux[d] = n - 1
                    d.aux_devices[sdev] = n - 1
            finally:
                # _end2_locked(d, st), inlined
                n = inflight[kd] - 1
                if n:
                    inflight[kd] = n
                else:
                    del inflight[kd]
                n = inflight[ks] - 1
                if n:
                    inflight[ks] = n
                else:
                    del inflight[ks]
        finally:
            records.release()

    def aux_get_pasid(self, domain: IommuDomain, dev: Any) -> int:
        """``iommu_aux_get_pasid``: ``-EINVAL`` if the domain has no default PASID."""
        d, st = self._aux_args(domain, dev)
        return self.ops.aux_get_pasid(d, st.dev)

    # -- PASID attach (v6.2+) ------------------------------------------------------------------

    def attach_device_pasid(self, domain: IommuDomain, dev: Any, pasid: int) -> None:
        """``iommu_attach_device_pasid``: ``-EINVAL`` for PASID 0, a PASID beyond the device's
        ``max_pasids`` or a foreign domain; ``-EBUSY`` if the PASID already has a domain
        (``xa_insert``); driver errors (``-ENOSPC`` for DIDs, ``-ENOMEM``) unwind
        completely."""
        d = self._domain(domain)
        st = self.device_state(dev)
        p = self._pasid(st, pasid)
        with st.group_mutex:
            cur = st.pasid_array.get(p)
            if cur is not None:
                raise IommuError(
                    errno.EBUSY,
                    f"pasid={p:#x} of {st.name} already has domain {cur!r} (replace it)",
                )
            self._begin(d, st)
            try:
                self.ops.set_dev_pasid(d, st.dev, p, None)
                st.pasid_array[p] = d
                d.pasid_attachments.add((st.dev, p))
            finally:
                self._end(d, st)

    def replace_device_pasid(self, domain: IommuDomain, dev: Any, pasid: int) -> None:
        """``iommu_replace_device_pasid``: ``-EINVAL`` if nothing is attached at ``pasid``;
        the same domain is a no-op (no driver call); a driver failure keeps the old domain."""
        d = self._domain(domain)
        st = self.device_state(dev)
        p = self._pasid(st, pasid)
        with st.group_mutex:
            old = st.pasid_array.get(p)
            if old is None:
                raise IommuError(
                    errno.EINVAL, f"pasid={p:#x} of {st.name} has no domain to replace"
                )
            if old is d:
                return
            self._begin(d, old, st)
            try:
                self.ops.set_dev_pasid(d, st.dev, p, old)
                st.pasid_array[p] = d
                old.pasid_attachments.discard((st.dev, p))
                d.pasid_attachments.add((st.dev, p))
            finally:
                self._end(d, old, st)

    def detach_device_pasid(self, domain: IommuDomain, dev: Any, pasid: int) -> None:
        """``iommu_detach_device_pasid``: idempotent (nothing attached: no-op, as iommufd's
        detach); a *different* domain at ``pasid`` is refused with ``-EINVAL``."""
        d = self._domain(domain)
        st = self.device_state(dev)
        p = self._pasid(st, pasid)
        with st.group_mutex:
            cur = st.pasid_array.get(p)
            if cur is None:
                return
            if cur is not d:
                raise IommuError(
                    errno.EINVAL, f"pasid={p:#x} of {st.name} is attached to {cur!r}, not {d!r}"
                )
            self._begin(d, st)
            try:
                self.ops.set_dev_pasid(None, st.dev, p, d)
                del st.pasid_array[p]
                d.pasid_attachments.discard((st.dev, p))
            finally:
                self._end(d, st)

    def get_domain_for_dev_pasid(self, dev: Any, pasid: int) -> IommuDomain | None:
        """``iommu_get_domain_for_dev_pasid``."""
        st = self.device_state(dev)
        _check_int("pasid", pasid, hi=(1 << 20) - 1)
        return st.pasid_array.get(pasid)

    # -- operations in flight (for whole-state audits under a scheduler) -----------------------

    def _begin(self, *objs: object) -> None:
        inflight = self._inflight
        with self._records:  # whole read-modify-writes under real OS threads
            for o in objs:
                inflight[id(o)] = inflight.get(id(o), 0) + 1

    def _end(self, *objs: object) -> None:
        inflight = self._inflight
        with self._records:
            for o in objs:
                n = inflight[id(o)] - 1
                if n:
                    inflight[id(o)] = n
                else:
                    del inflight[id(o)]

    # Two-object twins of _begin/_end for the aux hot paths (same dict updates, no tuple).

    def _begin2(self, a: object, b: object) -> None:
        inflight = self._inflight
        ka = id(a)
        kb = id(b)
        with self._records:
            inflight[ka] = inflight.get(ka, 0) + 1
            inflight[kb] = inflight.get(kb, 0) + 1

    def _end2(self, a: object, b: object) -> None:
        with self._records:
            self._end2_locked(a, b)

    def _end2_locked(self, a: object, b: object) -> None:
        inflight = self._inflight
        ka = id(a)
        n = inflight[ka] - 1
        if n:
            inflight[ka] = n
        else:
            del inflight[ka]
        kb = id(b)
        n = inflight[kb] - 1
        if n:
            inflight[kb] = n
        else:
            del inflight[kb]

    def in_flight(self, obj: object) -> bool:
        """True while an attach/detach/free involving ``obj`` (a domain or a
        :class:`DeviceState`) runs: between the driver's update and the core's bookkeeping
        another thread may observe them disagreeing, legitimately."""
        return id(obj) in self._inflight

    # -- introspection -------------------------------------------------------------------------

    def attachments(self) -> Iterable[tuple[str, Any, int, IommuDomain]]:
        """Every attachment the core knows: ``(kind, dev, pasid, domain)`` with kind ``"rid"``
        (pasid 0), ``"aux"`` (pasid -1: the driver knows it) or ``"pasid"``."""
        for st in self._devices.values():
            if st.domain is not None:
                yield ("rid", st.dev, 0, st.domain)
            for dom in st.aux:
                yield ("aux", st.dev, -1, dom)
            for p, dom in st.pasid_array.items():
                yield ("pasid", st.dev, p, dom)
