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
A restore is bounded by finding what changed, not by putting it back.  The world of workload (a)
holds 255 recorded objects: 87 dicts (25 of at least :data:`_BIG_DICT` entries, ~580 entries;
62 smaller ones, ~140), 10 lists, 10 sets, 14 slotted objects (50 slots) and 14 memory pages.
(It held 310, among them 8 ``OrderedDict`` and 12 more lists, before the model stopped keeping
state it never changes in containers: unbounded caches have no per-set structures, the queue's
handler tables are tuples, the walker is frozen: together ~2.6% of the instructions of a
schedule.)  The figures below were measured on that larger world.  Its schedules change the same
few of them nearly every time: in the bound-1 DFS of workloads a-f, 7-12 of the big dicts,
13-26 small ones, at most one list, 1-3 sets and 0-3 pages ever change (most in every
schedule), of the slotted objects only 3-5 locks' acquisition counters, and most schedules
create pages.  So the restore adapts to what changes.  Each kind is handled in C-level batches,
with no Python frame per object:

* **Big dicts** are put back *without comparing*: ``dict ==`` costs a hash lookup per entry,
  while ``clear()`` then ``update()`` from a clean saved copy clones the saved table and
  restores the insertion order and the identity of every value.  15 of the 27 never change in
  workload (a), but comparing them is no cheaper (warm: 5.4 us compared vs 5.6 us cloned), and
  the others then cost a comparison and a clone: letting big dicts be compared until they
  change measured 36.1 vs 32.2 us after a schedule, 25.6 vs 20.8 us unchanged (same A/B as
  below, on an earlier, per-kind version of the groups below) -- and would lose the guarantee
  that their values keep their identity.
* **Everything else but slots** -- smaller dicts, lists, sets, dict/list/set subclasses and
  memory pages -- is split into a *cold* and a *hot* group, each one list of containers (all
  kinds mixed) with a parallel list of saved copies.  Everything starts cold.  Each restore
  compares the cold group with one list comparison (in C); if it fails, ``not ==`` over the
  pairs finds the members that differ (:func:`_flags`), and they move to the hot group for good
  (promotion only, never demotion: what changed in one schedule changes in the next; the
  partition is final after the first schedule in workloads a-c, after one later promotion in
  d-f).  The hot group is compared as a whole too -- after a schedule that comparison stops at
  its first member (~0.3 us) -- and, if it differs, every hot member is put back without
  looking further: dicts and sets through ``clear()``/``update()``, lists through
  ``lst[:] = saved``, subclasses through their own methods (an ``OrderedDict`` is saved as one,
  so that an order-only change is seen), pages copied in place from a saved ``bytearray`` (so
  the buffers and their views keep their identity; from ``bytes`` the copy first makes a
  temporary bytearray: ~2x slower).  Putting the hot group back even when it is unchanged
  measured the same after a schedule (31.3 vs 31.4 us, per-kind version) but 25.7 vs 20.4 us
  unchanged, so that comparison stays.  Before, each kind had its own comparison, and all 80
  small dicts were put back when any of them differed (13.6 us).
* **Slotted objects**: one ``gc.get_referents`` over all of them, compared with the saved
  referents.  That is exact only if the type's traversal visits every slot, which is checked per
  object at snapshot time (CPython's ``subtype_traverse`` does); objects that fail the check, or
  have unset slots, are compared through one getter each.  When an object differs, the slots
  that differ become *hot*: they are set back on every restore, before the check, in one
  ``map`` (``setattr``, or ``object.__setattr__`` for classes that override it; slots unset at
  snapshot time are deleted again), so after a schedule the check passes unless another slot
  changed (that one becomes hot too).  Before, all 50 slots were set back when any differed.
* **Memory page dicts**: checked (same pages, same buffers) until pages are created once, then
  put back from saved copies on every restore (two clones cost less than the check), which drops
  the pages created since.
* **Frozen dataclasses** (the class itself declared ``frozen=True``: capability and
  cache-geometry records) cannot be assigned to, so their own fields are not recorded (the
  values they hold still are, if mutable); nor are :mod:`vtdsim.spec` declarations.  A class
  whose own body sets ``_snapshot_frozen = True`` is treated the same way: it promises that
  its attributes are fixed at construction and refuses assignment afterwards
  (:class:`vtdsim.hw.walk.Walker`, whose 64 masks derived from the capabilities made two of
  the 27 big dicts: ~1.5 us per restore).
* **Bytearrays** (other than pages) are compared with their saved bytes (``memcmp``) and copied
  back through a ``memoryview`` (``b[:] = saved`` reallocates an unexported 64 KiB buffer:
  ~25 us); they, numpy arrays, ``random.Random`` objects (restored only when their state moved:
  a cheap fingerprint of the Mersenne-Twister state; the driver world skips them, cache
  replacement is LRU) and image-backed memories are restorer closures.  The driver world has
  none: the restore runs no loop over an empty kind (dropping those loops and their iterators
  measured ~2 us less after a schedule).

Measured 2026-11-24 on 2 shared, noisy cores (other agents' benchmarks running; load 1.6-2.1),
Python 3.11.7: the old and the new module each restoring its own world of workload (a) in one
process, in random order each round, after the bench schedule and then once more unchanged;
medians of 4,000 rounds (IQR ~1-2 us): after a schedule 41.5 -> 27.0 us, unchanged 20.5 ->
18.8 us (old then new in a fixed order, 3,000 rounds: 43.3 -> 27.6, 21.4 -> 19.2).  Per
part, after a schedule (the runner's world, medians of 2,000): big dicts 8.3 us, cold
comparison 7.6 (54 dicts, 21 lists, 7 sets, 8 ``OrderedDict``, 11 pages), hot comparison 0.3,
hot dicts 4.8 (24, 64 entries), hot list 1.1, hot sets 1.1, hot pages 1.4 (3), slots 3.0, page
dicts 1.6; it was big dicts 8.3, small dicts 13.6, lists 4.3, slots 5.4, pages 7.6, sets 3.5.
``_throughput(min_time=3.0)``, old and new module alternating in fresh processes, 3 runs each:
4,230 / 4,290 / 4,380 -> 4,710 / 4,660 / 4,670 schedules/s.

Earlier steps (same A/B method): comparing each kind in C-level batches instead of per object
took the restore after a schedule from 78 to 61 us (unchanged 50 -> 31 us); then the model shed
state that the restore had to read (the DID allocators' two 64 KiB bitmaps became the set of
used ids and the lowest free one, and a unit's register access maps became read-only
``types.MappingProxyType`` views, which the snapshot does not record): ~55 -> ~43 us after a
schedule, ~29 -> ~17 us unchanged.  Rebuilding the platform and booting the kernel instead
costs ~30 ms.

Limitations: what is compared before it is put back (dicts under :data:`_BIG_DICT` entries,
lists, sets and subclasses, cold or hot, and slots) is compared with ``==``, so a value
replaced by an equal but distinct object, or a small dict whose entries only changed order, may
be left as it is (contents are always right; aliasing of such a value, or that order, is not).
State held only in closures, class attributes or module globals is not captured, nor that of C
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

#: kinds of the members of the cold and hot groups (how each is put back)
_DICT, _LIST, _SET, _OTHER, _PAGE = range(5)

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


def _frozen(cls: type) -> bool:
    """Instances of ``cls`` cannot be assigned to: ``cls`` itself is a frozen dataclass, or its
    own body sets ``_snapshot_frozen = True`` (attributes fixed at construction, assignment
    refused afterwards).  A plain subclass of either may add assignable attributes, so it does
    not count."""
    if cls.__dict__.get("_snapshot_frozen") is True:
        return True
    params = cls.__dict__.get("__dataclass_params__")
    return params is not None and bool(getattr(params, "frozen", False))


class GraphSnapshot:
    """Shallow state of every object reachable from ``root``, restorable in place."""

    def __init__(self, root: object, *, skip: Callable[[object], bool] | None = None) -> None:
        #: restorers of the remaining kinds (random generators, image-backed memories; bytearrays
        #: and numpy arrays are added by :meth:`_build`)
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
                frozen = frozen_cache[cls] = _frozen(cls)
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
        """The flat parallel lists :meth:`restore` works on: big dicts, and one *cold* and one
        *hot* group of all the other containers and memory pages (see the module docstring)."""
        # saved copies of fresh dicts: clean and tightly sized, so that ``update`` into the
        # emptied dict clones their table
        big = [(d, s) for d, s in self._dicts if len(s) >= _BIG_DICT]
        self._big_live = [d for d, _s in big]
        self._big_saved = [dict(s) for _d, s in big]
        cold: list[Any] = []
        cold_saved: list[Any] = []
        kinds: list[int] = []
        groups: list[tuple[int, Iterable[tuple[Any, Any]]]] = [
            (_DICT, [(d, dict(s)) for d, s in self._dicts if len(s) < _BIG_DICT]),
            (_LIST, self._lists),
            (_SET, self._sets),
            (_OTHER, self._others),
        ]
        for m in self._memories:
            # saved as bytearrays: ``page[:] = saved`` then copies straight from the saved
            # buffer (from ``bytes`` it first makes a temporary bytearray of it: ~2x slower)
            groups.append((_PAGE, [(b, bytearray(b)) for b in m.bufs]))
        for kind, pairs in groups:
            for live, saved in pairs:
                cold.append(live)
                cold_saved.append(saved)
                kinds.append(kind)
        #: compared every restore; members found to differ move to the hot group
        self._cold = cold
        self._cold_saved = cold_saved
        self._cold_kinds = kinds
        #: the hot group, in the order its members were promoted (compared as a whole: after a
        #: schedule that comparison stops at its first member), and the same by kind
        self._hot: list[Any] = []
        self._hot_saved: list[Any] = []
        self._dict_hot: list[dict[Any, Any]] = []
        self._dict_hot_saved: list[dict[Any, Any]] = []
        self._list_hot: list[list[Any]] = []
        self._list_hot_saved: list[list[Any]] = []
        self._set_hot: list[set[Any]] = []
        self._set_hot_saved: list[set[Any]] = []
        self._other_hot: list[Any] = []
        self._other_hot_saved: list[Any] = []
        self._page_hot: list[bytearray] = []
        self._page_hot_saved: list[bytearray] = []
        self._by_kind = (
            (self._dict_hot, self._dict_hot_saved),
            (self._list_hot, self._list_hot_saved),
            (self._set_hot, self._set_hot_saved),
            (self._other_hot, self._other_hot_saved),
            (self._page_hot, self._page_hot_saved),
        )
        self._restorers.extend(_bytearray_restorer(b, s) for b, s in self._bytearrays)
        self._restorers.extend(_array_restorer(a, s) for a, s in self._arrays)
        self._slots = _SlotBatch(self._slotted)

    def restore(self) -> None:
        big = self._big_live
        _drain(map(_dict_clear, big))
        _drain(map(_dict_update, big, self._big_saved))
        # a comparison that is not a bool (numpy arrays among the values) counts as a
        # difference
        try:
            differ = self._cold != self._cold_saved
        except Exception:
            differ = True
        if differ:
            self._promote()
        else:
            try:
                differ = self._hot != self._hot_saved
            except Exception:
                differ = True
        if differ:
            hot: list[Any] = self._dict_hot
            _drain(map(_dict_clear, hot))
            _drain(map(_dict_update, hot, self._dict_hot_saved))
            _drain(map(operator.setitem, self._list_hot, _ALL, self._list_hot_saved))
            hot = self._set_hot
            _drain(map(_set_clear, hot))
            _drain(map(_set_update, hot, self._set_hot_saved))
            if self._other_hot:
                for o, s in zip(self._other_hot, self._other_hot_saved, strict=True):
                    # their own methods: an ``OrderedDict``'s order is part of its state
                    if isinstance(o, list):
                        o[:] = s
                    else:
                        o.clear()
                        o.update(s)
            # the pages' views keep their buffers exported: copied in place, same length
            _drain(map(operator.setitem, self._page_hot, _ALL, self._page_hot_saved))
        self._slots.restore()
        for m in self._memories:
            m()
        # bytearrays, numpy arrays, random generators, image-backed memories (none in the
        # driver world, which then runs no loop and makes no iterator here: see the docstring)
        if self._restorers:
            for r in self._restorers:
                r()

    def _promote(self) -> None:
        """Move the members of the cold group that differ from their saved copies to the hot
        group (which :meth:`restore` then puts back).  Promotion only, never demotion: what
        changed in one schedule usually changes in the next, and the partition settles after a
        few schedules."""
        cold = self._cold
        cold_saved = self._cold_saved
        kinds = self._cold_kinds
        flags = _flags(cold, cold_saved)
        if not any(flags):
            # the group compared unequal but no member does now (an ``==`` that answers
            # differently when asked again): all of them
            flags = [True] * len(flags)
        by_kind = self._by_kind
        for live, saved, kind in compress(zip(cold, cold_saved, kinds, strict=True), flags):
            hot, hot_saved = by_kind[kind]
            hot.append(live)
            hot_saved.append(saved)
            self._hot.append(live)
            self._hot_saved.append(saved)
        keep = list(map(operator.not_, flags))
        self._cold = list(compress(cold, keep))
        self._cold_saved = list(compress(cold_saved, keep))
        self._cold_kinds = list(compress(kinds, keep))


def _flags(live: list[Any], saved: list[Any]) -> list[bool]:
    """Which containers differ from their saved copies (``not ==`` over the two lists in a
    C-level ``map``: ``==``, like the comparison of the whole lists, so that a subclass whose
    ``!=`` disagrees cannot hide; values whose ``==`` is not a bool: one by one, counted as
    differing)."""
    try:
        return list(map(operator.not_, map(operator.eq, live, saved)))
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
    """Slotted objects.  All of them are checked together, after the hot slots were set back:
    ``gc.get_referents`` of those that passed :meth:`_traversed` (one C call) compared with
    their saved referents, and the others through one getter each.

    Slots are promoted one by one: when an object differs, the slots that differ (a lock's
    acquisition counter, say) become hot.  Hot slots are set back on every restore without
    comparing, in one C-level ``map`` (``setattr``, or ``object.__setattr__`` for classes that
    override it; slots unset at snapshot time are deleted again), so that after a schedule the
    check passes again unless some other slot changed."""

    __slots__ = (
        "each_refs",
        "fast",
        "fast_refs",
        "getters",
        "plain",
        "record",
        "saved",
        "slow",
        "special",
        "unset",
    )

    def __init__(self, slotted: list[tuple[object, tuple[str, ...]]]) -> None:
        #: objects checked by the referents comparison, and their saved referents (one list
        #: each, and all of them concatenated, as ``gc.get_referents(*fast)`` returns them)
        self.fast: list[object] = []
        self.each_refs: list[list[Any]] = []
        self.fast_refs: list[Any] = []
        #: the others, with a getter of all their slots and its saved result
        self.slow: list[object] = []
        self.getters: list[Callable[[object], Any]] = []
        self.saved: list[tuple[Any, ...]] = []
        #: hot slots set at snapshot time: (objects, names, values), flattened: through
        #: ``setattr`` (vectorcall, ~2x faster) when the class keeps ``object.__setattr__``,
        #: else through ``object.__setattr__``
        self.plain: tuple[list[object], list[str], list[Any]] = ([], [], [])
        self.special: tuple[list[object], list[str], list[Any]] = ([], [], [])
        #: hot slots unset at snapshot time: (object, names)
        self.unset: list[tuple[object, tuple[str, ...]]] = []
        #: id(object) -> (object, {slot name: value at snapshot time or ``_MISSING``}, names
        #: of its hot slots)
        self.record: dict[int, tuple[object, dict[str, Any], set[str]]] = {}
        for obj, names in slotted:
            values = {n: getattr(obj, n, _MISSING) for n in names}
            self.record[id(obj)] = (obj, values, set())
            here = tuple(v for v in values.values() if v is not _MISSING)
            if self._traversed(obj, here, len(names) - len(here)):
                refs = _referents(obj)
                self.fast.append(obj)
                self.each_refs.append(refs)
                self.fast_refs.extend(refs)
            else:
                self.slow.append(obj)
                self.getters.append(_all_slots_getter(names))
                self.saved.append(tuple(values.values()))

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

    def _differing(self) -> list[object]:
        """The objects that differ; all of them if none seems to (an ``==`` that answers
        differently when asked again)."""
        fast_flags = _flags(list(map(_referents, self.fast)), self.each_refs)
        slow_flags = _flags(list(map(_call, self.getters, self.slow)), self.saved)
        if not any(fast_flags) and not any(slow_flags):
            return self.fast + self.slow
        return list(compress(self.fast, fast_flags)) + list(compress(self.slow, slow_flags))

    def _heat(self, objs: Iterable[object]) -> None:
        """Make hot the slots of ``objs`` that differ from their saved values (all their other
        slots if none seems to)."""
        for obj in objs:
            _obj, values, hot_names = self.record[id(obj)]
            changed = []
            for n, v in values.items():
                if n in hot_names:
                    continue
                now = getattr(obj, n, _MISSING)
                try:
                    same = now is v or bool(now == v)
                except Exception:
                    same = False
                if not same:
                    changed.append(n)
            if not changed:
                changed = [n for n in values if n not in hot_names]
            hot_names.update(changed)
            plain = type(obj).__setattr__ is object.__setattr__
            objs_, names, vals = self.plain if plain else self.special
            here = [n for n in changed if values[n] is not _MISSING]
            objs_.extend([obj] * len(here))
            names.extend(here)
            vals.extend(values[n] for n in here)
            gone = tuple(n for n in changed if values[n] is _MISSING)
            if gone:
                self.unset.append((obj, gone))

    def _put_back(self) -> None:
        _drain(map(setattr, *self.plain))
        if self.special[0]:
            _drain(map(_setattr, *self.special))
        for obj, names in self.unset:
            for n in names:
                if hasattr(obj, n):
                    _delattr(obj, n)

    def restore(self) -> None:
        self._put_back()
        if not self.same():
            self._heat(self._differing())
            self._put_back()


def _all_slots_getter(names: tuple[str, ...]) -> Callable[[object], tuple[Any, ...]]:
    """A getter of the named slots, ``_MISSING`` for the unset ones."""

    def get(obj: object) -> tuple[Any, ...]:
        return tuple(getattr(obj, n, _MISSING) for n in names)

    return get


_call: Callable[..., Any] = getattr(operator, "call", lambda f, *a: f(*a))


def _bytearray_restorer(b: bytearray, saved: bytes) -> Callable[[], None]:
    def restore() -> None:
        try:
            same = b == saved
        except Exception:  # a bytearray subclass with its own ==
            same = False
        if not same:
            if len(b) == len(saved):
                # a plain copy: ``b[:] = saved`` reallocates an unexported buffer (~25 us for a
                # 64 KiB one)
                with memoryview(b) as mv:
                    mv[:] = saved
            else:
                b[:] = saved

    return restore


def _array_restorer(a: Any, saved: Any) -> Callable[[], None]:
    def restore() -> None:
        a[...] = saved

    return restore


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
    """In-place restore of a :class:`PhysicalMemory` (see :func:`_memory_restorer`): its page
    dicts.  The pages themselves are in the snapshot's cold and hot groups (``bufs``)."""

    __slots__ = ("bufs", "hot_dicts", "n", "pages", "saved_pages", "saved_views", "views")

    def __init__(self, pages: dict[int, bytearray], views: dict[int, memoryview]) -> None:
        self.pages = pages
        self.views = views
        self.saved_pages = dict(pages)
        self.saved_views = {p: views[p] for p in pages}
        self.bufs = list(pages.values())
        self.n = len(self.bufs)
        #: whether the page dicts are put back without checking (once pages were created)
        self.hot_dicts = False

    def _same_pages(self) -> bool:
        pages = self.pages
        return (
            len(pages) == self.n
            and len(self.views) == self.n
            and not any(map(operator.is_not, self.bufs, pages.values()))
        )

    def __call__(self) -> None:
        if self.hot_dicts or not self._same_pages():
            # pages were created (or replaced) since: back to exactly the saved set, and so
            # from now on without checking (the check costs about as much as the two clones,
            # ~0.5 us warm, and most schedules create pages)
            self.hot_dicts = True
            pages = self.pages
            views = self.views
            pages.clear()
            pages.update(self.saved_pages)
            views.clear()
            views.update(self.saved_views)
