"""Aux-domain attach/detach exactly as posted in "[PATCH v5 4/8] iommu/vt-d: Aux-domain specific
domain attach/detach" (Lu Baolu, 2019-01-10; merged as 67b8e02b5e76, Linux v5.2), selected with
``Kernel(platform, aux_variant="v5")``.

This module reproduces the reviewed design *with its defects*, on purpose, so that the sequential
tests and the interleaving explorer can demonstrate them (see the review in
``shared/seed/aux-domain-attach-detach-review.txt``, the fact sheet §1.2-1.3, and the fixes
18abda7a2d55 "Fix general protection fault in aux_detach_device()" and Thomas Gleixner's 2022
use-after-free remark).  The corrected driver is :mod:`.aux`.  What is reproduced:

1. ``aux_domain_add_dev`` reads ``domain->default_pasid`` and allocates the PASID *without*
   ``device_domain_lock`` (declared with :func:`sync.shared_read` / :func:`sync.shared_write`,
   so the explorer can interleave a concurrent last remove there: review point (c)).
2. ``auxiliary_unlink_device`` frees the PASID when ``auxd_refcnt`` reaches 0 although
   ``auxiliary_link_device`` never allocated it (point (b)), and does **not** reset
   ``default_pasid``: the next attach of the domain programs a PASID the allocator holds as
   free, which another domain may then receive (use after free).
3. The error path frees the PASID *after* unlocking, if ``!auxd_refcnt && default_pasid > 0``
   (point (d): can double-free against a concurrent remove; also leaves ``default_pasid`` stale).
4. One list node per domain (``domain->auxd``) linked into the device's
   ``info->auxiliary_domains`` (see :class:`ListHead`): attaching one domain to a second device
   *moves* the node; the first device's list head still points at it, but the node's links now
   belong to the second device's list.  "Corrupt" in the model means exactly what it would mean
   in the kernel: walking a device's list from its head does not come back to that head through
   consistent ``next``/``prev`` links (:func:`list_check` reports it; ``audit()`` lists it), and a
   later ``list_del`` of the poisoned node dereferences ``LIST_POISON`` (:class:`KernelOops`,
   the general protection fault of 18abda7a2d55).
5. The PASID entry is set up with the 5.1 behaviour of ``intel_pasid_setup_second_level``:
   a present entry is overwritten without the ``-EBUSY`` check (so two domains can end up
   sharing, in turn, one PASID entry).
6. ``aux_domain_remove_dev`` returns silently when ``is_aux_domain`` is false.

The lock order (``device_domain_lock`` then ``iommu->lock``) and every allocator call are those
of the patch.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

from vtdsim.driver import sync
from vtdsim.driver.core import DomainType
from vtdsim.driver.intel.domain_id import domain_attach_iommu, domain_detach_iommu
from vtdsim.driver.intel.ioasid import PASID_MIN
from vtdsim.errors import IommuError, VtdsimError

if TYPE_CHECKING:
    from vtdsim.driver.intel.device import DeviceDomainInfo
    from vtdsim.driver.intel.iommu import DmarDomain, IntelIommuOps

__all__ = [
    "KernelOops",
    "ListHead",
    "V5Aux",
    "is_aux_domain",
    "list_add",
    "list_check",
    "list_del",
]


class KernelOops(VtdsimError):
    """What the kernel would do on this path: dereference a poisoned or NULL list pointer."""


class _Poison:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


#: include/linux/poison.h
LIST_POISON1 = _Poison("LIST_POISON1")
LIST_POISON2 = _Poison("LIST_POISON2")


class ListHead:
    """``struct list_head``: either a list head (``owner`` = the device info, ``INIT_LIST_HEAD``
    makes it point at itself) or a node embedded in an object (``owner`` = the domain; a
    ``kzalloc``'ed node starts with NULL links, as ``domain->auxd`` did in the patch)."""

    __slots__ = ("label", "next", "owner", "prev")

    def __init__(self, owner: object, label: str, *, head: bool) -> None:
        self.owner = owner
        self.label = label
        self.next: ListHead | _Poison | None = self if head else None
        self.prev: ListHead | _Poison | None = self if head else None

    def __repr__(self) -> str:
        return f"<list_head {self.label}>"


def list_add(new: ListHead, head: ListHead) -> None:
    """``list_add(new, head)`` (without CONFIG_DEBUG_LIST: the new node's old links are not
    checked, so re-adding a linked node silently moves it)."""
    nxt = head.next
    if not isinstance(nxt, ListHead):
        raise KernelOops(f"list_add: {head!r}->next is {nxt!r}")
    nxt.prev = new
    new.next = nxt
    new.prev = head
    head.next = new


def list_del(entry: ListHead) -> None:
    """``list_del(entry)``: unlink through the entry's own links, then poison them."""
    prev, nxt = entry.prev, entry.next
    if not isinstance(prev, ListHead) or not isinstance(nxt, ListHead):
        raise KernelOops(
            f"list_del: {entry!r} has next={nxt!r} prev={prev!r} (general protection fault)"
        )
    nxt.prev = prev
    prev.next = nxt
    entry.next = LIST_POISON1
    entry.prev = LIST_POISON2


def list_check(head: ListHead, limit: int = 64) -> tuple[list[object], str | None]:
    """Walk ``head``'s list (``list_for_each_entry``).  Returns the owners of the nodes met and
    a description of the first inconsistency (``None`` if the list is well formed): a node
    whose ``prev`` is not the node before it, a poisoned or NULL link, a walk that reaches
    another list's head, or one that never returns."""
    owners: list[object] = []
    prev: ListHead = head
    cur = head.next
    for _ in range(limit):
        if cur is head:
            if head.prev is not prev:
                return owners, f"{head!r}->prev is {head.prev!r}, not the last node {prev!r}"
            return owners, None
        if not isinstance(cur, ListHead):
            return owners, f"{prev!r}->next is {cur!r}"
        if cur.prev is not prev:
            return owners, (
                f"{cur!r} is reachable from {head!r} but its prev is {cur.prev!r}, not {prev!r}"
            )
        if cur.owner is head.owner or cur.label.startswith("info"):
            return owners, f"walking {head!r} reaches another list head {cur!r}"
        owners.append(cur.owner)
        prev, cur = cur, cur.next
    return owners, f"{head!r}: no way back to the head after {limit} nodes"


def is_aux_domain(info: DeviceDomainInfo, domain: DmarDomain) -> bool:
    """Linux ``is_aux_domain(dev, domain)``, name as in the patch: true if ``domain`` *could*
    be aux-attached to the device (``info->auxd_enabled`` and an unmanaged domain)."""
    return bool(info.auxd_enabled) and domain.type is DomainType.UNMANAGED


class V5Aux:
    """The v5 patch's ``aux_domain_add_dev`` / ``aux_domain_remove_dev``."""

    name = "v5"

    def __init__(self, ops: IntelIommuOps) -> None:
        self.ops = ops
        #: ``info->auxiliary_domains`` of each device (id of its info)
        self.heads: dict[int, ListHead] = {}

    def _head(self, info: DeviceDomainInfo) -> ListHead:
        head = self.heads.get(id(info))
        if head is None:
            # dmar_insert_one_dev_info: INIT_LIST_HEAD(&info->auxiliary_domains)
            head = ListHead(info, f"info({info.dev.bdf})->auxiliary_domains", head=True)
            self.heads[id(info)] = head
        return head

    @staticmethod
    def _node(domain: DmarDomain) -> ListHead:
        node = domain.auxd
        if node is None:
            node = ListHead(domain, f"domain#{domain.serial}->auxd", head=False)
            domain.auxd = node
        return node

    def auxiliary_link_device(self, domain: DmarDomain, info: DeviceDomainInfo) -> None:
        self.ops.device_domain_lock.assert_held()
        domain.auxd_refcnt += 1
        list_add(self._node(domain), self._head(info))

    def auxiliary_unlink_device(self, domain: DmarDomain, info: DeviceDomainInfo) -> None:
        self.ops.device_domain_lock.assert_held()
        list_del(self._node(domain))
        domain.auxd_refcnt -= 1
        # Review point (b): frees what link never allocated; default_pasid is not reset.
        if not domain.auxd_refcnt and domain.default_pasid > 0:
            self.ops.pasid_allocator.free(domain.default_pasid)

    def attach(self, domain: DmarDomain, info: DeviceDomainInfo) -> None:
        """``intel_iommu_aux_attach_device``: -EPERM unless ``is_aux_domain``, then
        ``prepare_domain_attach_device`` and ``aux_domain_add_dev``."""
        if not is_aux_domain(info, domain):
            raise IommuError(errno.EPERM, f"is_aux_domain({info.dev.bdf}, {domain!r}) is false")
        self.ops.prepare_domain_attach_device(domain, info)
        self.aux_domain_add_dev(domain, info)

    def aux_domain_add_dev(self, domain: DmarDomain, info: DeviceDomainInfo) -> None:
        iommu = info.iommu
        ddl = self.ops.device_domain_lock
        # Review point (c): device_domain_lock isn't held here.
        sync.shared_read("dmar_domain.default_pasid", domain)
        if domain.default_pasid <= 0:
            try:
                pasid = self.ops.pasid_allocator.alloc(PASID_MIN, self.ops.max_pasids(info), domain)
            except IommuError as e:
                # pr_err("Can't allocate default pasid\n"); return -ENODEV;
                raise IommuError(errno.ENODEV, f"Can't allocate default pasid: {e}") from e
            sync.shared_write("dmar_domain.default_pasid", domain)
            domain.default_pasid = pasid

        ddl.acquire()
        iommu.lock.acquire()
        error: BaseException | None = None
        try:
            domain_attach_iommu(domain, iommu)
        except BaseException as e:  # goto attach_failed
            error = e
        else:
            try:
                # Setup the PASID entry for mediated devices (5.1: overwrites a present one)
                self.ops.pasid_setup(info, domain, domain.default_pasid, overwrite=True)
            except BaseException as e:  # goto table_failed
                error = e
                domain_detach_iommu(domain, iommu)
        if error is None:
            iommu.lock.release()
            self.auxiliary_link_device(domain, info)
            ddl.release()
            return
        # attach_failed:
        iommu.lock.release()
        ddl.release()
        # Review point (d): freed after unlocking; default_pasid stays set.
        sync.shared_read("dmar_domain.auxd_refcnt", domain)
        sync.shared_read("dmar_domain.default_pasid", domain)
        if not domain.auxd_refcnt and domain.default_pasid > 0:
            self.ops.pasid_allocator.free(domain.default_pasid)
        raise error

    def detach(self, domain: DmarDomain, info: DeviceDomainInfo) -> None:
        """``intel_iommu_aux_detach_device`` → ``aux_domain_remove_dev``."""
        if not is_aux_domain(info, domain):
            return
        iommu = info.iommu
        with self.ops.device_domain_lock:
            self.auxiliary_unlink_device(domain, info)
            with iommu.lock:
                self.ops.pasid_teardown(info, domain.default_pasid)
                domain_detach_iommu(domain, iommu)

    def get_pasid(self, domain: DmarDomain) -> int:
        """``intel_iommu_aux_get_pasid``: ``default_pasid > 0 ? default_pasid : -EINVAL``
        (a stale, freed PASID is returned as valid; read without any lock)."""
        sync.shared_read("dmar_domain.default_pasid", domain)
        if domain.default_pasid > 0:
            return domain.default_pasid
        raise IommuError(errno.EINVAL, f"{domain!r} has no default PASID")

    # -- audit ---------------------------------------------------------------------------------

    def audit(self, out: list[str]) -> None:
        """Every device's ``auxiliary_domains`` list must be well formed."""
        for head in self.heads.values():
            _owners, problem = list_check(head)
            if problem is not None:
                out.append(f"auxiliary_domains list corrupt: {problem}")
