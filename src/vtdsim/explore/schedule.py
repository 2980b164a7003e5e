"""Compact, replayable schedule strings.

A schedule is the list of thread choices made at the *decision points* of one execution: the
scheduling points where two or more logical threads were enabled (a point with a single enabled
thread is not a choice and is not written).  When the listed choices run out, the execution
continues with the *default* choice: the thread that ran last if it is still enabled (no
preemption), otherwise the enabled thread with the lowest index.  A schedule therefore only needs to
list choices up to its last non-default one, which keeps bug schedules short.

Text form::

    WORKLOAD[/VARIANT]:CHOICES[~TRACEHASH]

    a/v5:0.0.1*3.0~5f3a09c2

``CHOICES`` are thread indexes separated by ``.``; ``N*K`` means ``N`` repeated ``K`` times; an
empty list is ``-``.  ``TRACEHASH`` (optional) is a CRC-32 of the sequence of operations the
execution performed (thread, operation kind, object name); replaying a schedule whose hash no longer
matches reports a *divergence*: the code under test changed since the schedule was recorded.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from vtdsim.errors import ArgumentError

__all__ = ["Schedule", "trace_hash"]

_RE = re.compile(
    r"^(?P<wl>[A-Za-z0-9_.\-]+)(?:/(?P<var>[A-Za-z0-9_.\-]+))?:(?P<ch>[0-9.*]*|-)"
    r"(?:~(?P<h>[0-9a-f]{8}))?$"
)


@dataclass(frozen=True, slots=True)
class Schedule:
    """A replayable schedule: workload, variant and thread choices at decision points."""

    workload: str
    variant: str | None
    choices: tuple[int, ...]
    trace_hash: str | None = None

    def __str__(self) -> str:
        head = self.workload if self.variant is None else f"{self.workload}/{self.variant}"
        tail = f"~{self.trace_hash}" if self.trace_hash else ""
        return f"{head}:{_encode(self.choices)}{tail}"

    @classmethod
    def parse(cls, text: str) -> Schedule:
        """Parse the text form; raises :class:`ArgumentError` on malformed input."""
        m = _RE.match(text.strip())
        if m is None:
            raise ArgumentError(
                "schedule", text, "WORKLOAD[/VARIANT]:CHOICES[~HASH], e.g. 'a/v5:0.1*2.0'"
            )
        return cls(m["wl"], m["var"], _decode(m["ch"], text), m["h"])

    def without_hash(self) -> Schedule:
        return Schedule(self.workload, self.variant, self.choices, None)


def _encode(choices: Sequence[int]) -> str:
    if not choices:
        return "-"
    out: list[str] = []
    i = 0
    n = len(choices)
    while i < n:
        j = i
        while j + 1 < n and choices[j + 1] == choices[i]:
            j += 1
        run = j - i + 1
        out.append(f"{choices[i]}*{run}" if run > 2 else ".".join([str(choices[i])] * run))
        i = j + 1
    return ".".join(out)


#: most decisions a schedule string may expand to (a schedule takes at most one decision per
#: step, so this is far beyond any step budget in use; it keeps ``0*99999999999`` from
#: exhausting memory)
MAX_CHOICES = 1_000_000


def _decode(text: str, whole: str) -> tuple[int, ...]:
    if text in ("", "-"):
        return ()
    out: list[int] = []
    for part in text.split("."):
        value, star, count = part.partition("*")
        if not value.isdigit() or (star and not count.isdigit()):
            raise ArgumentError("schedule", whole, "choices like 0.1*3.0 (thread*repeat)")
        n = int(count) if star else 1
        if len(out) + n > MAX_CHOICES:
            raise ArgumentError(
                "schedule",
                whole,
                f"at most {MAX_CHOICES} decisions (a schedule takes at most one per step)",
            )
        out.extend([int(value)] * n)
    return tuple(out)


def trace_hash(trace: Iterable[tuple[int, str, str]]) -> str:
    """CRC-32 (8 hex digits) of an operation trace of ``(thread, kind, name)`` triples."""
    crc = 0
    for tid, kind, name in trace:
        crc = zlib.crc32(f"{tid}{kind}{name};".encode(), crc)
    return f"{crc:08x}"
