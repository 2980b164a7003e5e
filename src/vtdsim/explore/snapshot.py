"""In-place snapshots of a world's object graph: the explorer's cheap per-schedule reset.

Stateless search re-runs every schedule from the initial world.  Building a booted platform and
kernel takes tens of milliseconds; :class:`GraphSnapshot` instead records, once, the shallow state
of every mutable object reachable from the world (instance ``__dict__``/slots, list, dict, set and
bytearray contents, numpy arrays) and restores it *in place* before each schedule.  Objects
created during a schedule become unreachable again; identities never change, so references
held outside the world (a hot-path dictionary, ``id()``-keyed maps) stay valid.
:class:`~vtdsim.hw.memory.PhysicalMemory` is restored with its own ``snapshot``/``restore``.

Measured on the built-in driver world (3 devices, 2 units, ~800 mutable objects, 15 memory
pages): a restore takes ~70 us versus ~30 ms to rebuild the platform and boot the kernel.
Immutable declarations (:mod:`vtdsim.spec` layouts) are skipped; ``random.Random`` objects are
restored only when their state moved (a cheap fingerprint of the Mersenne-Twister state); the
driver world skips them altogether (cache replacement is LRU, the RNG is never consulted).
Restores check equality first, so unchanged containers cost a C-level comparison.  Limitation:
state held only in closures, class attributes or module globals is not captured.
"""

from __future__ import annotations

import operator
import random
import types
from collections.abc import Callable
from typing import Any

from vtdsim.hw.memory import PhysicalMemory

__all__ = ["GraphSnapshot"]

_ATOMIC = (
    type(None),
    bool,
    int,
    float,
    complex,
    str,
    bytes,
    range,
    type,
    types.FunctionType,
    types.BuiltinFunctionType,
    types.ModuleType,
    memoryview,
)


def _slot_names(cls: type) -> tuple[str, ...]:
    names: list[str] = []
    for k in cls.__mro__:
        s = k.__dict__.get("__slots__", ())
        if isinstance(s, str):
            s = (s,)
        names.extend(n for n in s if n not in ("__dict__", "__weakref__"))
    return tuple(names)


class GraphSnapshot:
    """Shallow state of every object reachable from ``root``, restorable in place."""

    def __init__(self, root: object, *, skip: Callable[[object], bool] | None = None) -> None:
        self._restorers: list[Callable[[], None]] = []
        #: (container, saved copy) pairs restored in one loop each (the common case)
        self._dicts: list[tuple[dict[Any, Any], dict[Any, Any]]] = []
        self._lists: list[tuple[list[Any], list[Any]]] = []
        self.objects = 0
        self._take(root, skip)

    def _take(self, root: object, skip: Callable[[object], bool] | None) -> None:
        import numpy as np

        seen: set[int] = set()
        stack: list[object] = [root]
        slots_cache: dict[type, tuple[str, ...]] = {}
        add = self._restorers.append
        while stack:
            obj = stack.pop()
            if isinstance(obj, _ATOMIC) or id(obj) in seen:
                continue
            seen.add(id(obj))
            if skip is not None and skip(obj):
                continue
            self.objects += 1
            if isinstance(obj, PhysicalMemory):
                add(_memory_restorer(obj))
                continue
            if type(obj).__module__.startswith(_IMMUTABLE_MODULES):
                continue
            if isinstance(obj, random.Random):
                add(_random_restorer(obj))
                continue
            if isinstance(obj, dict):
                self._dicts.append((obj, dict(obj)))
                stack.extend(obj.keys())
                stack.extend(obj.values())
            elif isinstance(obj, list):
                self._lists.append((obj, list(obj)))
                stack.extend(obj)
            elif isinstance(obj, set):
                add(_set_restorer(obj))
                stack.extend(obj)
            elif isinstance(obj, tuple | frozenset):
                stack.extend(obj)
            elif isinstance(obj, bytearray):
                add(_bytearray_restorer(obj))
            elif isinstance(obj, np.ndarray):
                add(_array_restorer(obj))
            elif isinstance(obj, types.MethodType):
                stack.append(obj.__self__)
            else:
                d = getattr(obj, "__dict__", None)
                if d is not None:
                    self._dicts.append((d, dict(d)))
                    stack.extend(d.values())
                cls = type(obj)
                names = slots_cache.get(cls)
                if names is None:
                    names = _slot_names(cls)
                    slots_cache[cls] = names
                if names:
                    add(_slots_restorer(obj, names))
                    for n in names:
                        v = getattr(obj, n, _MISSING)
                        if v is not _MISSING:
                            stack.append(v)

    def restore(self) -> None:
        for d, saved in self._dicts:
            try:
                if d == saved:
                    continue
            except Exception:  # values whose == is not a bool (numpy arrays)
                pass
            d.clear()
            d.update(saved)
        for lst, saved_list in self._lists:
            try:
                if lst == saved_list:
                    continue
            except Exception:
                pass
            lst[:] = saved_list
        for r in self._restorers:
            r()


_MISSING = object()

#: modules whose objects are immutable declarations (bit layouts, register descriptions)
_IMMUTABLE_MODULES = ("vtdsim.spec.",)


def _random_restorer(r: random.Random) -> Callable[[], None]:
    state = r.getstate()
    mark = (state[1][-1], state[1][0], state[1][1])

    def restore() -> None:
        now = r.getstate()[1]
        if (now[-1], now[0], now[1]) != mark:  # position or regenerated words changed
            r.setstate(state)

    return restore


def _memory_restorer(mem: PhysicalMemory) -> Callable[[], None]:
    snap = mem.snapshot()
    return lambda: mem.restore(snap)


def _set_restorer(s: set[Any]) -> Callable[[], None]:
    saved = set(s)

    def restore() -> None:
        s.clear()
        s.update(saved)

    return restore


def _bytearray_restorer(b: bytearray) -> Callable[[], None]:
    saved = bytes(b)

    def restore() -> None:
        if b != saved:
            b[:] = saved

    return restore


def _array_restorer(a: Any) -> Callable[[], None]:
    saved = a.copy()

    def restore() -> None:
        a[...] = saved

    return restore


def _slots_restorer(obj: object, names: tuple[str, ...]) -> Callable[[], None]:
    present = tuple(n for n in names if hasattr(obj, n))
    saved = tuple(getattr(obj, n) for n in present)
    if not present:
        return lambda: None
    get = operator.attrgetter(*present)
    setattr_ = object.__setattr__
    pairs = tuple(zip(present, saved, strict=True))

    def restore() -> None:
        now = get(obj)
        if len(present) == 1:
            now = (now,)
        try:
            if now == saved:
                return
        except Exception:  # values whose == is not a bool
            pass
        for n, v in pairs:
            setattr_(obj, n, v)

    return restore
