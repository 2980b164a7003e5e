"""Fingerprints of an execution at its decisions, for detecting nondeterministic workloads.

A stateless search re-executes every prefix of the DFS stack from the initial world and assumes
it reaches the same states (:mod:`vtdsim.explore.scheduler`, "How replay works").  A workload
that depends on anything but the schedule (a global counter, the clock, ``id()`` order) breaks
that assumption silently: the search then explores a tree that does not exist.  The DFS records,
at each decision, a :class:`Fingerprinter` value and compares it when the same prefix is executed
again:

* the number of steps so far and a running CRC-32 of the trace (each step's thread, operation
  kind and schedule-independent object name: a lock's name, an access's label and the
  first-appearance number of its object, a point's label);
* the enabled threads' pending operations: kind, lock name or access label, and the
  first-appearance number of the lock or accessed object (as :meth:`Execution.op_signature`).

Object names are first-appearance numbers, not ``id()``, so fingerprints are equal across worker
processes.  The CRC is updated incrementally (each step hashed once per execution).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any

__all__ = ["Fingerprint", "Fingerprinter"]

#: ``(steps, trace CRC, ((thread, kind, object number), ...))``
Fingerprint = tuple[Any, ...]


class Fingerprinter:
    """The running fingerprint of one execution (one per execution)."""

    __slots__ = ("crc", "names", "pos")

    def __init__(self) -> None:
        self.crc = 0
        self.pos = 0
        #: object -> its formatted name, for this execution (first-appearance numbers are
        #: fixed once assigned, so a name never changes within one execution)
        self.names: dict[Any, str] = {}

    def __call__(self, ex: Any, enabled: Sequence[int]) -> Fingerprint:
        trace = ex.trace
        n = len(trace)
        crc = self.crc
        names = self.names
        if self.pos < n:
            parts = []
            for tid, kind, obj in trace[self.pos : n]:
                parts.append(f"{tid}{kind}{_name(ex, obj, names)};")
            crc = zlib.crc32("".join(parts).encode(), crc)
            self.crc = crc
            self.pos = n
        threads = ex.threads
        pending = tuple([(t, threads[t].kind, _name(ex, threads[t].obj, names)) for t in enabled])
        return (n, crc, pending)


def _name(ex: Any, obj: Any, cache: dict[Any, str]) -> str:
    if obj is None:
        return ""
    cls = obj.__class__
    if cls is str:  # a point's label
        return str(obj)
    if cls is tuple:  # an unlocked access: (label, key)
        label, key = obj
        if not (key is None or isinstance(key, int | str | bytes | float | tuple)):
            key = id(key)  # as scheduler._keyid: objects by identity
        ckey: Any = ("A", label, key)
        name = cache.get(ckey)
        if name is None:
            name = cache[ckey] = f"{label}#{ex._num(ckey, obj[1])}"
        return name
    lkey = ("L", id(obj))  # a lock
    name = cache.get(lkey)
    if name is None:
        name = cache[lkey] = f"{getattr(obj, 'name', cls.__name__)}#{ex._num(lkey, obj)}"
    return name


def describe(fp: Fingerprint) -> str:
    """A short human-readable form of a fingerprint (for divergence messages)."""
    if len(fp) != 3:
        return repr(fp)
    steps, crc, pending = fp
    ops = ", ".join(f"thread {t}: {k} {o}".rstrip() for t, k, o in pending)
    return f"{steps} steps, trace CRC {crc:08x}, pending [{ops}]"
