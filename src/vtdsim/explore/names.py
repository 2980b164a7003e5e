"""Bug names: the ones a search can report, user-facing names of exception bugs, and the
validation of ``only=`` / ``--only``.

A bug's name is an invariant's name (``use-after-free``, ``leak``, ...), a scheduler verdict
(``deadlock``, ``step-budget``, ``divergence``, ...), ``<workload>-end`` for a workload's end
checks, or, for an exception escaping a thread, the exception's class name -- except for the
few exceptions that have a user-facing name (:data:`EXCEPTION_BUG_NAMES`): the PASID
allocator's ``AllocatorError`` is reported as ``double-free`` (``AllocatorError`` is accepted as
an alias by ``only=``).
"""

from __future__ import annotations

from typing import Any

from vtdsim.errors import ArgumentError

__all__ = [
    "EXCEPTION_BUG_NAMES",
    "SCHEDULER_BUG_NAMES",
    "bug_names",
    "canonical_bug_name",
    "check_only",
    "exception_bug_name",
]

#: exception class name -> the bug name it is reported as
EXCEPTION_BUG_NAMES = {"AllocatorError": "double-free"}

#: names the scheduler itself reports, whatever the workload
SCHEDULER_BUG_NAMES = (
    "deadlock",
    "step-budget",
    "stall",
    "StallError",
    "divergence",
    "lock-held-at-exit",
)


def exception_bug_name(e: BaseException) -> str:
    """The bug name of an exception that escaped a thread."""
    name = type(e).__name__
    return EXCEPTION_BUG_NAMES.get(name, name)


def canonical_bug_name(name: str) -> str:
    """``AllocatorError`` -> ``double-free``; other names unchanged."""
    return EXCEPTION_BUG_NAMES.get(name, name)


def _exception_class_names() -> set[str]:
    out: set[str] = set()
    todo: list[type] = [BaseException]
    while todo:
        cls = todo.pop()
        if cls.__name__ not in out:
            out.add(cls.__name__)
            todo.extend(cls.__subclasses__())
    return out


def bug_names(workload: Any) -> list[str]:
    """The names ``workload``'s search can report (exception class names aside)."""
    names: list[str] = []
    for inv in workload.invariants():
        for n in (inv.name, *inv.names):
            if n not in names:
                names.append(n)
    names.append(f"{workload.name}-end")
    names.extend(n for n in EXCEPTION_BUG_NAMES.values() if n not in names)
    names.extend(n for n in SCHEDULER_BUG_NAMES if n not in names)
    return names


def check_only(workload: Any, only: str | None) -> str | None:
    """Validate an ``only=`` bug name for ``workload`` and return its canonical form.

    Raises :class:`ArgumentError` (a usage error, exit status 2 on the command line) listing
    the valid names when ``only`` is none of: a name in :func:`bug_names`, an alias of
    :data:`EXCEPTION_BUG_NAMES`, or the class name of an exception (``IommuError``)."""
    if only is None:
        return None
    if not isinstance(only, str) or not only:
        raise ArgumentError("only", only, "a bug name")
    canonical = canonical_bug_name(only)
    valid = bug_names(workload)
    if canonical in valid or only in _exception_class_names():
        return canonical
    raise ArgumentError(
        "only",
        only,
        f"a bug name of workload {workload.name}: {', '.join(valid)}, or an exception class "
        f"name (such as IommuError; {', '.join(EXCEPTION_BUG_NAMES)} is an alias of "
        f"{', '.join(EXCEPTION_BUG_NAMES.values())})",
    )
