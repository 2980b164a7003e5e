"""The driver's synchronization module and its backend seam."""

from __future__ import annotations

import threading

import pytest

from vtdsim.driver import sync


def test_spinlock_ownership_and_assert_held() -> None:
    lock = sync.SpinLock("device_domain_lock")
    with pytest.raises(sync.LockingError, match="must be held"):
        lock.assert_held()
    with lock:
        lock.assert_held()
        assert lock.locked
        with pytest.raises(sync.LockingError, match="recursively"):
            lock.acquire()
    assert not lock.locked
    with pytest.raises(sync.LockingError, match="does not hold"):
        lock.release()
    assert lock.acquisitions == 1


def test_lock_excludes_other_os_threads() -> None:
    lock = sync.SpinLock("iommu->lock")
    counter = [0]

    def work() -> None:
        for _ in range(2000):
            with lock:
                v = counter[0]
                counter[0] = v + 1

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert counter[0] == 8000


class RecordingBackend:
    def __init__(self) -> None:
        self.log: list[tuple[str, str]] = []

    def acquire(self, lock: sync.SpinLock) -> None:
        self.log.append(("acquire", lock.name))
        lock.owner = self.ident()

    def release(self, lock: sync.SpinLock) -> None:
        self.log.append(("release", lock.name))
        lock.owner = None

    def access(self, label: str, key: object, write: bool) -> None:
        self.log.append(("write" if write else "read", label))

    def point(self, label: str) -> None:
        self.log.append(("point", label))

    def ident(self) -> object:
        return "T0"


def test_backend_sees_every_operation_and_is_removed_after() -> None:
    backend = RecordingBackend()
    lock = sync.Mutex("pasid_mutex")
    with sync.installed(backend):
        assert sync.current_backend() is backend
        sync.shared_read("domain.default_pasid")
        with lock:
            lock.assert_held()
            sync.point("ioasid_alloc")
        sync.shared_write("domain.default_pasid")
    assert sync.current_backend() is None
    assert backend.log == [
        ("read", "domain.default_pasid"),
        ("acquire", "pasid_mutex"),
        ("point", "ioasid_alloc"),
        ("release", "pasid_mutex"),
        ("write", "domain.default_pasid"),
    ]
    sync.point("nothing")  # no backend: a no-op
    assert len(backend.log) == 5
