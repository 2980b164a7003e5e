"""In-place snapshots of a world's object graph: the explorer's cheap per-schedule reset.

Stateless search re-runs every schedule from the initial world.  Building a booted platform and
kernel takes tens of milliseconds; :class:`GraphSnapshot` instead records, once, the shallow state
of every mutable object reachable from the world (instance ``__dict__``/slots, list, dict, set and
bytearray contents, numpy arrays) and restores it *in place* before each schedule.  Objects
created during a schedule become unreachable again; identities never change, so references
held outside the world (a hot-path dictionary, ``id()``-keyed maps) stay valid.
:class:`~vtdsim.hw.memory.PhysicalMemory` pages are restored in place too (an image-backed
memory with its own ``snapshot``/``restore``).

Design rationale
----------------
A restore is bounded by finding what changed, not by putting it back.  The built-in driver world
(3 devices, 2 units) holds ~800 mutable objects: 116 dicts (~1,400 entries), 22 lists, 8 sets,
8 ``OrderedDict`` (the translator caches' sets), 14 slotted objects and 14 memory pages (the DID
allocators used to add two 64 KiB bitmaps, and the units ~480 register-map entries each; both
are now small or read-only, see below); a typical schedule of workload (a) changes ~40 of the
dicts.  Each kind is handled in C-level batches, with no Python frame per object:

* **Big dicts** (at least :data:`_BIG_DICT` entries at snapshot time: 36 dicts, ~1,230 entries)
  are put back *without comparing*: ``dict ==`` costs a hash lookup per entry (~10 ns here),
  while ``clear()`` then ``update()`` from a clean saved copy clones the saved table (~6 ns per
  entry, ~0.1 us per dict) and restores the insertion order and the identity of every value.
* **Small dicts** (80, ~180 entries): one list comparison (``live == saved``, in C); if it
  fails, all of them are put back the same way (after a schedule a third differ, and finding
  which costs as much as putting them all back).
* **Lists, sets, dict/list/set subclasses**: one list comparison per kind; only if it fails, a
  ``map(operator.ne, ...)`` finds the containers that differ and only those are put back.
  ``OrderedDict`` is saved as an ``OrderedDict``, so that an order-only change (an LRU hit) is
  seen.
* **Slotted objects**: one ``gc.get_referents`` over all of them, compared with the saved
  referents.  That is exact only if the type's traversal visits every slot, which is checked per
  object at snapshot time (CPython's ``subtype_traverse`` does); objects that fail the check, or
  have unset slots, are compared slot by slot.  If anything differs every slot is set back in
  one ``map`` (``setattr``, or ``object.__setattr__`` for classes that override it) and slots
  unset at snapshot time are deleted again.
* **Frozen dataclasses** (the class itself declared ``frozen=True``: capability and
  cache-geometry records) cannot be assigned to, so their own fields are not recorded (the
  values they hold still are, if mutable); nor are :mod:`vtdsim.spec` declarations.
* **Bytearrays** are compared with their saved bytes (``memcmp``) and copied back through a
  ``memoryview`` (``b[:] = saved`` reallocates an unexported 64 KiB buffer: ~25 us).
* **Memory pages** are compared with their saved bytes and rewritten in place only when they
  differ (pages created since are dropped), so the page buffers keep their identity.
* ``random.Random`` objects are restored only when their state moved (a cheap fingerprint of
  the Mersenne-Twister state); the driver world skips them altogether (cache replacement is
  LRU, the RNG is never consulted).

Measured on that world (2 shared cores, Python 3.11, load 1.5-2.5; medians of 2,500 restores,
old and new restorers interleaved in one process): after a schedule (detach, attach, 2 DMAs)
78 -> 61 us, unchanged world 50 -> 31 us (~44 -> ~29 us in a process of its own); versus ~30 ms to
rebuild the platform and boot the kernel.  ``explore_schedules_per_s`` 1,850 -> 2,000.  What was
left was mostly memory traffic: comparing the two DID bitmaps and the pages read ~370 KiB
(5-8 us warm; ~17 us after a schedule, which evicted them from the caches, copies included).
The model then shed that state instead: the DID allocator keeps the set of used ids and the
lowest free one (``DomainIdAllocator``), and a unit's register access maps and register table
are read-only views (``types.MappingProxyType``, which the snapshot does not record):
~55 -> ~43 us after a schedule, ~29 -> ~17 us unchanged (load ~0.5).

Limitations: containers that are compared (small dicts, lists, sets, slots) use ``==``, so a
value replaced by an equal but distinct object, or a small dict whose entries only changed
order, may be left as it is (contents are always right; aliasing of such a value is not).  State
held only in closures, class attributes or module globals is not captured, nor that of C
extension objects other than the kinds above.
"""

from __future__ import annotations

import gc
import operator
import random
import types
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterable
from itertools import compress, repeat
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

#: dicts with at least this many entries at snapshot time are put back without comparing
#: (comparing costs more than cloning the saved table; see the module docstring)
_BIG_DICT = 12

#: modules whose objects are immutable declarations (bit layouts, register descriptions)
_IMMUTABLE_MODULES = ("vtdsim.spec.",)

_MISSING = object()

#: consume an iterator in C (``deque(maxlen=0).extend``)
_drain: Callable[[Iterable[Any]], None] = deque(maxlen=0).extend
_dict_clear = dict.clear
_dict_update: Callable[..., None] = dict.update
_referents = gc.get_referents
_setattr = object.__setattr__
_delattr = object.__delattr__
_set_clear = set.clear
_set_update: Callable[..., None] = set.update
#: ``operator.setitem(lst, slice(None), saved)`` for every list: ``lst[:] = saved``
_ALL = repeat(slice(None))


def _slot_names(cls: type) -> tuple[str, ...]:
    """Attribute names of the slots of ``cls`` and its bases (private names mangled)."""
    names: list[str] = []
    for k in cls.__mro__:
        s = k.__dict__.get("__slots__", ())
        if isinstance(s, str):
            s = (s,)
        for n in s:
            if n in ("__dict__", "__weakref__"):
                continue
            if n.startswith("__") and not n.endswith("__") and k.__name__.lstrip("_"):
                n = f"_{k.__name__.lstrip('_')}{n}"
            names.append(n)
    return tuple(names)


def _frozen_dataclass(cls: type) -> bool:
    """Instances of ``cls`` cannot be assigned to: ``cls`` itself is a frozen dataclass (a
    plain subclass of one may add assignable attributes, so it does not count)."""
    params = cls.__dict__.get("__dataclass_params__")
    return params is not None and bool(getattr(params, "frozen", False))


class GraphSnapshot:
    """Shallow state of every object reachable from ``root``, restorable in place."""

    def __init__(self, root: object, *, skip: Callable[[object], bool] | None = None) -> None:
        #: restorers of the remaining kinds (random generators, image-backed memories)
        self._restorers: list[Callable[[], None]] = []
        self._dicts: list[tuple[dict[Any, Any], dict[Any, Any]]] = []
        self._lists: list[tuple[list[Any], list[Any]]] = []
        self._sets: list[tuple[set[Any], set[Any]]] = []
        #: dict, list and set subclasses: (container, saved copy), put back through their own
        #: ``clear``/``update`` (an ``OrderedDict``'s order is part of its state)
        self._others: list[tuple[Any, Any]] = []
        #: slotted objects: (object, slot names)
        self._slotted: list[tuple[object, tuple[str, ...]]] = []
        self._memories: list[_MemoryRestorer] = []
        self._bytearrays: list[tuple[bytearray, bytes]] = []
        self._arrays: list[tuple[Any, Any]] = []
        self.objects = 0
        self._take(root, skip)
        self._build()

    def _take(self, root: object, skip: Callable[[object], bool] | None) -> None:
        import numpy as np

        seen: set[int] = set()
        stack: list[object] = [root]
        slots_cache: dict[type, tuple[str, ...]] = {}
        frozen_cache: dict[type, bool] = {}
        add = self._restorers.append
        while stack:
            obj = stack.pop()
            if isinstance(obj, _ATOMIC) or id(obj) in seen:
                continue
            seen.add(id(obj))
            if skip is not None and skip(obj):
                continue
            self.objects += 1
            cls = type(obj)
            if isinstance(obj, PhysicalMemory):
                m = _memory_restorer(obj)
                if isinstance(m, _MemoryRestorer):
                    self._memories.append(m)
                else:
                    add(m)
                continue
            if cls.__module__.startswith(_IMMUTABLE_MODULES):
                continue
            if isinstance(obj, random.Random):
                add(_random_restorer(obj))
                continue
            container = True
            if type(obj) is dict:
                self._dicts.append((obj, dict(obj)))
            elif type(obj) is list:
                self._lists.append((obj, list(obj)))
            elif type(obj) is set:
                self._sets.append((obj, set(obj)))
            elif isinstance(obj, OrderedDict):
                self._others.append((obj, OrderedDict(obj)))
            elif isinstance(obj, dict):
                self._others.append((obj, dict(obj)))
            elif isinstance(obj, list):
                self._others.append((obj, list(obj)))
            elif isinstance(obj, set):
                self._others.append((obj, set(obj)))
            else:
                container = False
            if container:
                assert isinstance(obj, dict | list | set)
                stack.extend(obj)
                if isinstance(obj, dict):
                    stack.extend(obj.values())
                if cls in (dict, list, set):
                    continue
                # a subclass: its instance attributes too (below)
            elif isinstance(obj, tuple | frozenset):
                stack.extend(obj)
                continue
            elif isinstance(obj, bytearray):
                self._bytearrays.append((obj, bytes(obj)))
                continue
            elif isinstance(obj, np.ndarray):
                self._arrays.append((obj, obj.copy()))
                continue
            elif isinstance(obj, types.MethodType):
                stack.append(obj.__self__)
                continue
            frozen = frozen_cache.get(cls)
            if frozen is None:
                frozen = frozen_cache[cls] = _frozen_dataclass(cls)
            d = getattr(obj, "__dict__", None)
            if d is not None:
                if not frozen:
                    self._dicts.append((d, dict(d)))
                stack.extend(d.values())
            names = slots_cache.get(cls)
            if names is None:
                names = slots_cache[cls] = _slot_names(cls)
            if names:
                if not frozen:
                    self._slotted.append((obj, names))
                for n in names:
                    v = getattr(obj, n, _MISSING)
                    if v is not _MISSING:
                        stack.append(v)

    def _build(self) -> None:
        """The flat parallel lists :meth:`restore` works on."""
        small = [(d, s) for d, s in self._dicts if len(s) < _BIG_DICT]
        big = [(d, s) for d, s in self._dicts if len(s) >= _BIG_DICT]
        self._small_live = [d for d, _s in small]
        self._small_saved = [s for _d, s in small]
        self._big_live = [d for d, _s in big]
        # a fresh copy of a fresh dict: clean and tightly sized, so that ``update`` into the
        # emptied dict clones its table
        self._big_saved = [dict(s) for _d, s in big]
        self._list_live = [lst for lst, _s in self._lists]
        self._list_saved = [s for _l, s in self._lists]
        self._set_live = [st for st, _s in self._sets]
        self._set_saved = [s for _st, s in self._sets]
        self._other_live = [o for o, _s in self._others]
        self._other_saved = [s for _o, s in self._others]
        self._ba_live = [b for b, _s in self._bytearrays]
        self._ba_saved = [s for _b, s in self._bytearrays]
        self._slots = _SlotBatch(self._slotted)

    def restore(self) -> None:
        big = self._big_live
        _drain(map(_dict_clear, big))
        _drain(map(_dict_update, big, self._big_saved))
        live: list[Any] = self._small_live
        saved: list[Any] = self._small_saved
        if _differ(live, saved):
            # after a schedule a third of them differ: finding which costs about as much as
            # putting them all back (~10 us either way, cold)
            _drain(map(_dict_clear, live))
            _drain(map(_dict_update, live, saved))
        live = self._list_live
        saved = self._list_saved
        if _differ(live, saved):
            flags = _flags(live, saved)
            _drain(map(operator.setitem, compress(live, flags), _ALL, compress(saved, flags)))
        self._slots.restore()
        for m in self._memories:
            m()
        live = self._set_live
        saved = self._set_saved
        if _differ(live, saved):
            flags = _flags(live, saved)
            changed = list(compress(live, flags))
            _drain(map(_set_clear, changed))
            _drain(map(_set_update, changed, compress(saved, flags)))
        live = self._other_live
        saved = self._other_saved
        if _differ(live, saved):
            for o, s in compress(zip(live, saved, strict=True), _flags(live, saved)):
                if isinstance(o, list):
                    o[:] = s
                else:
                    o.clear()
                    o.update(s)
        # one pass (a second one would compare large buffers again)
        for b, s in zip(self._ba_live, self._ba_saved, strict=True):
            try:
                same = b == s
            except Exception:  # a bytearray subclass with its own ==
                same = False
            if not same:
                if len(b) == len(s):
                    # a plain copy: ``b[:] = s`` reallocates an unexported buffer (~25 us for
                    # a 64 KiB one)
                    with memoryview(b) as mv:
                        mv[:] = s
                else:
                    b[:] = s
        for a, saved_array in self._arrays:
            a[...] = saved_array
        for r in self._restorers:
            r()


def _differ(live: list[Any], saved: list[Any]) -> bool:
    """Whether some container differs from its saved copy (one C-level list comparison; a
    comparison that is not a bool, numpy arrays among the values, counts as a difference)."""
    try:
        return live != saved
    except Exception:
        return True


def _flags(live: list[Any], saved: list[Any]) -> list[bool]:
    """Which containers differ from their saved copies (``operator.ne`` over the two lists in
    a C-level ``map``; values whose ``==`` is not a bool: one by one, counted as differing)."""
    try:
        return list(map(operator.ne, live, saved))
    except Exception:
        flags = []
        for o, s in zip(live, saved, strict=True):
            try:
                same = bool(o == s)
            except Exception:
                same = False
            flags.append(not same)
        return flags


class _SlotBatch:
    """Slotted objects.  The check compares ``gc.get_referents`` of all the objects that passed
    :meth:`_traversed` (one C call) with the saved referents, and the others through one
    getter each.  If anything differs, every object gets every slot back in one C-level
    ``map`` (after a schedule some lock always moved, and locating the objects that differ costs
    more than setting ~50 slots); slots unset at snapshot time are deleted again."""

    __slots__ = ("fast", "fast_refs", "getters", "plain", "saved", "slow", "special", "unset")

    def __init__(self, slotted: list[tuple[object, tuple[str, ...]]]) -> None:
        #: objects checked by the referents comparison
        self.fast: list[object] = []
        #: the others, with a getter of all their slots and its saved result
        self.slow: list[object] = []
        self.getters: list[Callable[[object], Any]] = []
        self.saved: list[tuple[Any, ...]] = []
        #: (objects, names, values) of every slot set at snapshot time, flattened: through
        #: ``setattr`` (vectorcall, ~2x faster) when the class keeps ``object.__setattr__``,
        #: else through ``object.__setattr__``
        self.plain: tuple[list[object], list[str], list[Any]] = ([], [], [])
        self.special: tuple[list[object], list[str], list[Any]] = ([], [], [])
        #: (object, slots unset at snapshot time)
        self.unset: list[tuple[object, tuple[str, ...]]] = []
        for obj, names in slotted:
            here = tuple(n for n in names if hasattr(obj, n))
            values = tuple(getattr(obj, n) for n in here)
            objs, names_, values_ = (
                self.plain if type(obj).__setattr__ is object.__setattr__ else self.special
            )
            objs.extend([obj] * len(here))
            names_.extend(here)
            values_.extend(values)
            if len(here) < len(names):
                self.unset.append((obj, tuple(n for n in names if n not in here)))
            if self._traversed(obj, values, len(names) - len(here)):
                self.fast.append(obj)
            else:
                self.slow.append(obj)
                self.getters.append(_all_slots_getter(names))
                self.saved.append(tuple(getattr(obj, n, _MISSING) for n in names))
        self.fast_refs = _referents(*self.fast)

    @staticmethod
    def _traversed(obj: object, values: tuple[Any, ...], unset: int) -> bool:
        """Whether ``gc.get_referents(obj)`` visits every slot value of ``obj`` (so comparing
        referents compares the slots).  Objects with unset slots are left to the slot-by-slot
        comparison (an unset slot is not visited, so this cannot be checked for it)."""
        if unset or not values:
            return False
        return Counter(map(id, _referents(obj))) >= Counter(map(id, values))

    def same(self) -> bool:
        """Whether every slot holds its saved value."""
        try:
            return _referents(*self.fast) == self.fast_refs and (
                not self.slow or list(map(_call, self.getters, self.slow)) == self.saved
            )
        except Exception:  # values whose == is not a bool
            return False

    def restore(self) -> None:
        if self.same():
            return
        _drain(map(setattr, *self.plain))
        _drain(map(_setattr, *self.special))
        for obj, names in self.unset:
            for n in names:
                if hasattr(obj, n):
                    _delattr(obj, n)


def _all_slots_getter(names: tuple[str, ...]) -> Callable[[object], tuple[Any, ...]]:
    """A getter of the named slots, ``_MISSING`` for the unset ones."""

    def get(obj: object) -> tuple[Any, ...]:
        return tuple(getattr(obj, n, _MISSING) for n in names)

    return get


_call: Callable[..., Any] = getattr(operator, "call", lambda f, *a: f(*a))


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

    __slots__ = ("bufs", "data", "n", "pages", "saved_pages", "saved_views", "views")

    def __init__(self, pages: dict[int, bytearray], views: dict[int, memoryview]) -> None:
        self.pages = pages
        self.views = views
        self.saved_pages = dict(pages)
        self.saved_views = {p: views[p] for p in pages}
        self.bufs = list(pages.values())
        self.data = [bytes(b) for b in self.bufs]
        self.n = len(self.bufs)

    def _same_pages(self) -> bool:
        pages = self.pages
        return (
            len(pages) == self.n
            and len(self.views) == self.n
            and not any(map(operator.is_not, self.bufs, pages.values()))
        )

    def __call__(self) -> None:
        if not self._same_pages():
            # pages were created (or replaced) since: back to exactly the saved set
            pages = self.pages
            views = self.views
            pages.clear()
            pages.update(self.saved_pages)
            views.clear()
            views.update(self.saved_views)
        bufs = self.bufs
        data = self.data
        if bufs != data:
            for i in compress(range(self.n), map(operator.ne, bufs, data)):
                bufs[i][:] = data[i]  # the views keep the buffer exported: copied in place
