"""In-place snapshots of a world's object graph: the explorer's cheap per-schedule reset.

Stateless search re-runs every schedule from the initial world.  Building a booted platform and
kernel takes tens of milliseconds; :class:`GraphSnapshot` instead records, once, the shallow state
of every mutable object reachable from the world (instance ``__dict__``/slots, list, dict, set and
bytearray contents, numpy arrays) and restores it *in place* before each schedule.  Objects
created during a schedule become unreachable again; identities never change, so references
held outside the world (a hot-path dictionary, ``id()``-keyed maps) stay valid.
:class:`~vtdsim.hw.memory.PhysicalMemory` pages are restored in place too (an image-backed
memory with its own ``snapshot``/``restore``).

Measured on the built-in driver world (3 devices, 2 units, ~800 mutable objects, 15 memory
pages): a restore takes ~40 us (it was ~60-70 us restorer by restorer) versus ~30 ms to rebuild
the platform and boot the kernel.
Most of it is finding what changed: the comparisons of all dicts, lists and slotted objects run
as C-level ``map`` calls (no Python frame per object), and memory pages are compared with their
saved bytes and rewritten in place only when they differ (pages created since are dropped), so the
page buffers keep their identity.
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
from itertools import compress
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
        #: slotted objects: (object, slot names present at snapshot time)
        self._slotted: list[tuple[object, tuple[str, ...]]] = []
        #: restorers by kind; ``_restorers`` are the others
        self._memories: list[_MemoryRestorer] = []
        self._sets: list[tuple[set[Any], set[Any]]] = []
        self._bytearrays: list[tuple[bytearray, bytes]] = []
        self._arrays: list[tuple[Any, Any]] = []
        self.objects = 0
        self._take(root, skip)
        self._dict_batch = _Batch(self._dicts, _dict_assign)
        self._list_batch = _Batch(self._lists, _list_assign)
        self._slot_batch = _SlotBatch(self._slotted)

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
                m = _memory_restorer(obj)
                if isinstance(m, _MemoryRestorer):
                    self._memories.append(m)
                else:
                    add(m)
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
                self._sets.append((obj, set(obj)))
                stack.extend(obj)
            elif isinstance(obj, tuple | frozenset):
                stack.extend(obj)
            elif isinstance(obj, bytearray):
                self._bytearrays.append((obj, bytes(obj)))
            elif isinstance(obj, np.ndarray):
                self._arrays.append((obj, obj.copy()))
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
                    self._slotted.append((obj, names))
                    for n in names:
                        v = getattr(obj, n, _MISSING)
                        if v is not _MISSING:
                            stack.append(v)

    def restore(self) -> None:
        self._dict_batch.restore()
        self._list_batch.restore()
        self._slot_batch.restore()
        for m in self._memories:
            m()
        for st, saved_set in self._sets:
            if st != saved_set:
                st.clear()
                st.update(saved_set)
        for b, saved_bytes in self._bytearrays:
            if b != saved_bytes:
                b[:] = saved_bytes
        for a, saved_array in self._arrays:
            a[...] = saved_array
        for r in self._restorers:
            r()


def _dict_assign(d: dict[Any, Any], saved: dict[Any, Any]) -> None:
    d.clear()
    d.update(saved)


def _list_assign(lst: list[Any], saved: list[Any]) -> None:
    lst[:] = saved


class _Batch:
    """Containers and their saved copies, compared in one C-level ``map`` (``operator.ne``
    over two parallel lists: no Python frame per container); only those that differ are put
    back.  A comparison that is not a bool (numpy arrays among the values) falls back to one
    by one."""

    __slots__ = ("assign", "objs", "saved")

    def __init__(self, pairs: list[tuple[Any, Any]], assign: Callable[[Any, Any], None]) -> None:
        self.objs = [o for o, _s in pairs]
        self.saved = [s for _o, s in pairs]
        self.assign = assign

    def changed(self) -> list[int]:
        """Indexes of the containers that differ from their saved copies."""
        objs = self.objs
        saved = self.saved
        try:
            return list(compress(range(len(objs)), map(operator.ne, objs, saved)))
        except Exception:  # values whose == is not a bool (numpy arrays)
            changed = []
            for i, (o, s) in enumerate(zip(objs, saved, strict=True)):
                try:
                    if o == s:
                        continue
                except Exception:
                    pass
                changed.append(i)
            return changed

    def put_back(self, changed: list[int]) -> None:
        objs = self.objs
        saved = self.saved
        assign = self.assign
        for i in changed:
            assign(objs[i], saved[i])

    def restore(self) -> None:
        self.put_back(self.changed())


class _SlotBatch:
    """Slotted objects: one ``attrgetter`` per object (called through ``operator.call`` in a
    C-level ``map``), compared with the saved values; differing objects get every slot back."""

    __slots__ = ("getters", "objs", "pairs", "saved")

    def __init__(self, slotted: list[tuple[object, tuple[str, ...]]]) -> None:
        self.objs: list[object] = []
        self.getters: list[Callable[[object], Any]] = []
        self.saved: list[tuple[Any, ...]] = []
        self.pairs: list[tuple[tuple[str, Any], ...]] = []
        for obj, names in slotted:
            present = tuple(n for n in names if hasattr(obj, n))
            if not present:
                continue
            values = tuple(getattr(obj, n) for n in present)
            self.objs.append(obj)
            self.pairs.append(tuple(zip(present, values, strict=True)))
            if len(present) == 1:  # a one-name attrgetter returns the bare value: ask twice
                present *= 2
                values *= 2
            self.getters.append(operator.attrgetter(*present))
            self.saved.append(values)

    def changed(self) -> list[int]:
        """Indexes of the objects whose slots differ from the saved values."""
        objs = self.objs
        try:
            now = map(_call, self.getters, objs)
            return list(compress(range(len(objs)), map(operator.ne, now, self.saved)))
        except Exception:  # a slot deleted since, or values whose == is not a bool
            return list(range(len(objs)))

    def put_back(self, changed: list[int]) -> None:
        setattr_ = object.__setattr__
        objs = self.objs
        for i in changed:
            obj = objs[i]
            for n, v in self.pairs[i]:
                setattr_(obj, n, v)

    def restore(self) -> None:
        self.put_back(self.changed())


_call: Callable[..., Any] = getattr(operator, "call", lambda f, *a: f(*a))


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
    """Put every page back in place (same buffers and views), drop pages created since.  An
    image-backed memory, or one whose internals differ from what this expects, falls back to
    :meth:`PhysicalMemory.snapshot`/``restore``."""
    pages = getattr(mem, "_pages", None)
    views = getattr(mem, "_q", None)
    if (
        getattr(mem, "_image", None) is not None
        or not isinstance(pages, dict)
        or not isinstance(views, dict)
        or pages.keys() != views.keys()
        or not all(type(b) is bytearray for b in pages.values())
    ):
        snap = mem.snapshot()
        return lambda: mem.restore(snap)
    return _MemoryRestorer(pages, views)


class _MemoryRestorer:
    """In-place restore of a :class:`PhysicalMemory` (see :func:`_memory_restorer`)."""

    __slots__ = ("bufs", "data", "n", "pages", "pfns", "qs", "views")

    def __init__(self, pages: dict[int, bytearray], views: dict[int, memoryview]) -> None:
        self.pages = pages
        self.views = views
        self.pfns = list(pages)
        self.bufs = [pages[p] for p in self.pfns]
        self.qs = [views[p] for p in self.pfns]
        self.data = [bytes(b) for b in self.bufs]
        self.n = len(self.pfns)

    def _same_pages(self) -> bool:
        pages = self.pages
        return (
            len(pages) == self.n
            and len(self.views) == self.n
            and not any(map(operator.is_not, self.bufs, pages.values()))
        )

    def __call__(self) -> None:
        pages = self.pages
        views = self.views
        if not self._same_pages():
            # pages were created (or replaced) since: back to exactly the saved set
            pages.clear()
            views.clear()
            pages.update(zip(self.pfns, self.bufs, strict=True))
            views.update(zip(self.pfns, self.qs, strict=True))
        bufs = self.bufs
        data = self.data
        for i in compress(range(self.n), map(operator.ne, bufs, data)):
            bufs[i][:] = data[i]
