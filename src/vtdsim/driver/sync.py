"""The driver's synchronization module: every lock operation and every declared unlocked access
to shared state goes through here.

Design rationale
----------------
The review of the aux-domain patch asked questions about interleavings ("is there a race if you
get the final remove running against a new add?").  To answer them mechanically, a scheduler must
be able to take control of every point where another thread could run in between, *without any
change to driver code*.  So the driver never touches ``threading`` directly; it uses

* :class:`SpinLock` / :class:`Mutex` (Linux ``spin_lock_irqsave``, ``mutex_lock``), with
  ``assert_held`` for ``assert_spin_locked`` / ``lockdep_assert_held``;
* :func:`shared_read` / :func:`shared_write`: declarations of accesses to shared state made
  *without* the lock that guards it (the v5 aux path reads ``domain->default_pasid`` unlocked);
* :func:`point`: any other place where the kernel could be preempted and the outcome may depend
  on it (allocator entry, for example).

By default these are thin wrappers over ``threading.Lock`` (the model is safe to drive from
several OS threads).  :func:`install` replaces the behaviour with a :class:`SyncBackend` — the
interleaving explorer installs one that turns each operation into a scheduling point of a
controlled, replayable scheduler; an OS-thread backend perturbs real threads.  Only one backend is
active at a time, process-wide.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

from vtdsim.errors import VtdsimError

__all__ = [
    "LockingError",
    "Mutex",
    "SpinLock",
    "SyncBackend",
    "allocated",
    "current_backend",
    "install",
    "installed",
    "point",
    "shared_read",
    "shared_write",
]


class LockingError(VtdsimError):
    """A locking rule was broken: release of a lock not held, ``assert_held`` failed,
    recursive acquisition (a self-deadlock in the kernel)."""


class SyncBackend(Protocol):
    """What a scheduler implements to control the driver's concurrency."""

    def acquire(self, lock: SpinLock) -> None:
        """Block (in the scheduler's sense) until ``lock`` is free, then take it: set
        ``lock.owner`` to the current logical thread's identity."""

    def release(self, lock: SpinLock) -> None:
        """Release ``lock`` (set ``lock.owner = None``)."""

    def access(self, label: str, key: object, write: bool) -> None:
        """An unlocked access to shared state ``label`` (``key`` distinguishes objects)."""

    def point(self, label: str) -> None:
        """Any other scheduling point."""

    def ident(self) -> object:
        """Identity of the running logical thread (stored in ``SpinLock.owner``)."""

    # Optional (not part of the protocol, so older backends still conform):
    # ``allocated(kind, value, owner, scope)``, see :func:`allocated`;
    # ``release_checks_owner = True``: the backend's ``release`` itself raises
    # :class:`LockingError` (the same message as :meth:`SpinLock.release`) when the calling
    # thread does not hold the lock, so the lock does not ask ``ident()`` first (one call
    # less per release; the explorer's backend).


_backend: SyncBackend | None = None
#: the installed backend checks ownership in ``release`` itself (see :class:`SyncBackend`)
_release_checks_owner = False
_get_ident = threading.get_ident


def install(backend: SyncBackend | None) -> SyncBackend | None:
    """Make ``backend`` control all locks (``None`` restores plain threading); returns the
    previous backend."""
    global _backend, _release_checks_owner
    previous = _backend
    _backend = backend
    _release_checks_owner = bool(getattr(backend, "release_checks_owner", False))
    return previous


def current_backend() -> SyncBackend | None:
    return _backend


@contextmanager
def installed(backend: SyncBackend) -> Iterator[SyncBackend]:
    """``with installed(b): ...`` — the backend is active inside the block only."""
    previous = install(backend)
    try:
        yield backend
    finally:
        install(previous)


class SpinLock:
    """A non-recursive lock named like its kernel counterpart (``device_domain_lock``)."""

    __slots__ = ("_lock", "acquisitions", "name", "owner")

    kind = "spinlock"

    def __init__(self, name: str) -> None:
        self.name = name
        self.owner: object | None = None
        self.acquisitions = 0
        self._lock = threading.Lock()

    def acquire(self) -> None:
        b = _backend
        if b is not None:
            if self.owner is not None and self.owner == b.ident():
                raise LockingError(f"{self.kind} {self.name} acquired recursively (self-deadlock)")
            b.acquire(self)
        else:
            me = _get_ident()
            if self.owner == me:
                raise LockingError(f"{self.kind} {self.name} acquired recursively (self-deadlock)")
            self._lock.acquire()
            self.owner = me
        self.acquisitions += 1

    def release(self) -> None:
        b = _backend
        if b is None:
            if self.owner != _get_ident():
                raise LockingError(
                    f"{self.kind} {self.name} released by a thread that does not hold it"
                )
            self.owner = None
            self._lock.release()
            return
        if not _release_checks_owner and self.owner != b.ident():
            raise LockingError(
                f"{self.kind} {self.name} released by a thread that does not hold it"
            )
        b.release(self)

    def assert_held(self) -> None:
        """Linux ``assert_spin_locked`` / ``lockdep_assert_held``."""
        b = _backend
        if self.owner != (_get_ident() if b is None else b.ident()):
            raise LockingError(f"{self.kind} {self.name} must be held here")

    # ``with lock:`` inlines acquire/release (one call frame less per critical section on the
    # hot paths), with or without a backend.

    def __enter__(self) -> SpinLock:
        b = _backend
        if b is not None:
            # straight to the backend (one frame less per operation under the explorer)
            if self.owner is not None and self.owner == b.ident():
                raise LockingError(f"{self.kind} {self.name} acquired recursively (self-deadlock)")
            b.acquire(self)
            self.acquisitions += 1
            return self
        me = _get_ident()
        if self.owner == me:
            raise LockingError(f"{self.kind} {self.name} acquired recursively (self-deadlock)")
        self._lock.acquire()
        self.owner = me
        self.acquisitions += 1
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        # explicit parameters: no varargs tuple per critical section
        b = _backend
        if b is not None:
            if not _release_checks_owner and self.owner != b.ident():
                raise LockingError(
                    f"{self.kind} {self.name} released by a thread that does not hold it"
                )
            b.release(self)
            return
        if self.owner != _get_ident():
            raise LockingError(
                f"{self.kind} {self.name} released by a thread that does not hold it"
            )
        self.owner = None
        self._lock.release()

    @property
    def locked(self) -> bool:
        return self.owner is not None

    def __repr__(self) -> str:
        state = f"held by {self.owner}" if self.owner is not None else "free"
        return f"<{self.kind} {self.name} {state}>"


class Mutex(SpinLock):
    """A sleeping lock (Linux ``struct mutex``); same semantics in the model."""

    __slots__ = ()
    kind = "mutex"


def shared_read(label: str, key: object = None) -> None:
    """Declare an unlocked read of shared state (a scheduling point under the explorer)."""
    b = _backend
    if b is not None:
        b.access(label, key, False)


def shared_write(label: str, key: object = None) -> None:
    """Declare an unlocked write of shared state (a scheduling point under the explorer)."""
    b = _backend
    if b is not None:
        b.access(label, key, True)


def point(label: str) -> None:
    """A plain scheduling point (for example at an allocator's entry)."""
    b = _backend
    if b is not None:
        b.point(label)


def allocated(kind: str, value: int, owner: object = None, scope: object = None) -> None:
    """Tell the backend that an allocator just handed out ``value`` (``kind``: ``"pasid"``,
    ``"did"``) to ``owner``; ``scope`` is the allocator (a DID is per unit).  Not a scheduling
    point: an observer hook, so that the explorer can check "a new allocation is not in use by
    any present entry" at the moment of allocation.  Optional for backends: one without an
    ``allocated`` method is not told (no-op without a backend)."""
    b = _backend
    if b is not None:
        hook = getattr(b, "allocated", None)
        if hook is not None:
            hook(kind, value, owner, scope)
