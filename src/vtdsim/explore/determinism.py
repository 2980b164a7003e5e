"""Detecting nondeterministic workloads: is this execution the one recorded for its prefix?

A stateless search re-executes every prefix of the DFS stack from the initial world and assumes
it reaches the same states (:mod:`vtdsim.explore.scheduler`, "How replay works").  A workload
that depends on anything but the schedule (a global counter, the clock, ``id()`` order) breaks
that assumption silently: the search then explores a tree that does not exist.

What is compared.  Each DFS node remembers the execution that created it: its operation trace
(``(thread, kind, object)`` per step) up to the decision, and the enabled threads' pending
operations there.  A later execution that replays the prefix is compared once, at the deepest
replayed decision (the one whose choice it changes): the whole trace up to that point and the
pending operations must be the same.  One comparison covers the whole prefix, because the trace
is cumulative; an execution that fails or ends inside the prefix, which the recording execution
passed, is nondeterministic too (:func:`vtdsim.explore.strategies._Dfs.run`).

How it is compared.  Cheaply first: the world is restored in place, so a deterministic replay
touches the very same lock objects and access keys, and the two traces compare equal as Python
lists (a C-level loop, ~1 us for a 30-step prefix).  Only when that fails (a lock or key object
created during the schedule has a new identity in every execution, or the workload really is
nondeterministic) are both sides named schedule-independently and compared as
:data:`Fingerprint` values: the step count, a CRC-32 of the trace with objects named by their
first appearance (a lock's name and number, an access's label and its key: a plain value, or the
number of its key object; a point's label), and the named pending operations.  A node handed to
another process (parallel search) carries that named fingerprint instead of the trace
(``_Node.freeze``); names are first-appearance numbers, not ``id()``, so they are equal across
processes.

This replaced a per-decision running fingerprint that named every step as it happened (~70 us of
a ~520 us schedule of workload (a)); it checks the same thing (a diverging step anywhere in the
prefix changes the compared trace) with one comparison per execution.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any

__all__ = ["Fingerprint", "describe", "fingerprint", "same_execution"]

#: ``(steps, trace CRC, ((thread, kind, object name), ...))``
Fingerprint = tuple[Any, ...]

#: one step of an execution's trace, as :class:`vtdsim.explore.scheduler.Execution` records it
Step = tuple[int, str, Any]


def fingerprint(trace: Sequence[Step], pending: Sequence[Step]) -> Fingerprint:
    """The schedule-independent fingerprint of a trace and the pending operations after it."""
    names: dict[Any, str] = {}
    parts = [f"{tid}{kind}{_name(obj, names)};" for tid, kind, obj in trace]
    crc = zlib.crc32("".join(parts).encode())
    return (len(trace), crc, tuple((t, kind, _name(obj, names)) for t, kind, obj in pending))


def same_execution(
    trace: Sequence[Step],
    pending: Sequence[Step],
    recorded_trace: Sequence[Step],
    recorded_steps: int,
    recorded_pending: Sequence[Step],
) -> bool:
    """Whether an execution at a replayed decision (its ``trace`` so far and ``pending``
    operations) is the one recorded there: the first ``recorded_steps`` steps of
    ``recorded_trace`` and ``recorded_pending`` (identities first, then names)."""
    if len(trace) == recorded_steps and list(pending) == list(recorded_pending):
        # (the recorded trace is the recording execution's whole list: compare its prefix
        # without copying the live one)
        t = trace if type(trace) is list else list(trace)
        r = recorded_trace[:recorded_steps]
        if t == (r if type(r) is list else list(r)):
            return True
    return fingerprint(trace, pending) == fingerprint(
        recorded_trace[:recorded_steps], recorded_pending
    )


def _name(obj: Any, names: dict[Any, str]) -> str:
    """``obj``'s name within one fingerprint: first-appearance numbers per kind of object."""
    if obj is None:
        return ""
    cls = obj.__class__
    if cls is str:  # a point's label
        return str(obj)
    if cls is tuple:  # an unlocked access: (label, key)
        label, key = obj
        if _plain(key):
            return f"{label}[{key!r}]"  # plain keys by value
        ckey: Any = ("A", label, id(key))  # objects by first appearance (as scheduler._keyid)
    else:  # a lock
        label = getattr(obj, "name", cls.__name__)
        ckey = ("L", id(obj))
    name = names.get(ckey)
    if name is None:
        name = names[ckey] = f"{label}#{len(names)}"
    return name


_VALUE_KEYS = (int, str, bytes, float, bool, type(None))


def _plain(key: object) -> bool:
    """A key named by its value (the same in every process)."""
    if type(key) is tuple:
        return all(_plain(k) for k in key)
    return type(key) in _VALUE_KEYS


def describe(fp: Fingerprint) -> str:
    """A short human-readable form of a fingerprint (for divergence messages)."""
    if len(fp) != 3:
        return repr(fp)
    steps, crc, pending = fp
    ops = ", ".join(f"thread {t}: {k} {o}".rstrip() for t, k, o in pending)
    return f"{steps} steps, trace CRC {crc:08x}, pending [{ops}]"
