"""A sync backend for tests that records every operation of a driver path (the explorer's view
of it), shared by the differential tests of the driver's fast paths."""

from __future__ import annotations

from collections.abc import Callable

from vtdsim.driver import sync


class Recorder:
    """Records each sync operation in ``log``; ``hook`` runs at each ``point`` (another
    thread acting at that scheduling point)."""

    def __init__(self, hook: Callable[[str], None] | None = None) -> None:
        self.log: list[tuple[object, ...]] = []
        self.hook = hook

    def acquire(self, lock: sync.SpinLock) -> None:
        self.log.append(("acquire", lock.name))
        lock.owner = "T"

    def release(self, lock: sync.SpinLock) -> None:
        self.log.append(("release", lock.name))
        lock.owner = None

    def access(self, label: str, key: object, write: bool) -> None:
        self.log.append(("access", label, write))

    def point(self, label: str) -> None:
        self.log.append(("point", label))
        if self.hook is not None:
            self.hook(label)

    def ident(self) -> object:
        return "T"

    def allocated(self, kind: str, value: int, owner: object, scope: object) -> None:
        self.log.append(("allocated", kind, value))
