"""Results of exploration, as frozen dataclasses with a JSON form.

Every result separates *what was found* (bugs, schedule counts, exhaustion verdicts: identical
between a single-process run and a parallel one) from *how long it took* (``elapsed_s``, which is
not).  :meth:`ExplorationResult.verdict` returns the former only, so tests and users can compare
runs.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any

__all__ = [
    "BoundResult",
    "Bug",
    "ExplorationResult",
    "OpRecord",
    "ReplayResult",
    "Statistics",
]

#: Bug kinds.
BUG_KINDS = ("invariant", "exception", "deadlock", "step-budget", "stall", "divergence")


@dataclass(frozen=True, slots=True)
class OpRecord:
    """One scheduling step: which thread ran, and the operation it performed first."""

    step: int
    thread: str
    op: str

    def __str__(self) -> str:
        return f"{self.step:4d} {self.thread:<12} {self.op}"


@dataclass(frozen=True, slots=True)
class Bug:
    """A failing schedule and what failed.

    ``kind`` is one of ``invariant`` (an invariant was violated; ``name`` is the invariant),
    ``exception`` (a thread raised; ``name`` is the exception type), ``deadlock`` (no enabled thread
    while some are unfinished), ``step-budget`` (the schedule did not terminate within the step
    budget), ``stall`` (a thread ran too long without reaching a scheduling point), or
    ``divergence`` (replay did not follow the recorded schedule).
    """

    kind: str
    name: str
    message: str
    workload: str
    variant: str | None
    schedule: str
    preemptions: int
    steps: int
    ops: tuple[OpRecord, ...] = ()
    traceback: str | None = None

    @property
    def signature(self) -> tuple[str, str]:
        """What identifies "the same bug" when shrinking: kind and name."""
        return (self.kind, self.name)

    def describe(self) -> str:
        lines = [
            f"BUG [{self.kind}] {self.name}: {self.message}",
            f"  workload {self.workload}" + (f" ({self.variant})" if self.variant else ""),
            f"  schedule {self.schedule}  ({self.preemptions} preemption(s), {self.steps} steps)"
            if self.schedule
            else f"  schedule: not replayable: found on OS threads ({self.steps} operations, "
            "in the order the threads reached them)",
        ]
        if self.ops:
            shown = self.ops[-60:]
            first = shown[0].step
            lines.append("  operations:" + (f" (steps 0..{first - 1} not shown)" if first else ""))
            lines.extend(f"    {op}" for op in shown)
        if self.traceback:
            lines.append("  traceback:")
            lines.extend(f"    {ln}" for ln in self.traceback.rstrip().splitlines())
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class BoundResult:
    """One round of iterative preemption bounding."""

    bound: int
    schedules: int
    exhausted: bool
    bug: bool


@dataclass(frozen=True, slots=True)
class Statistics:
    """Counters of one exploration."""

    schedules: int
    steps: int
    pruned: int
    elapsed_s: float

    @property
    def schedules_per_s(self) -> float:
        return self.schedules / self.elapsed_s if self.elapsed_s > 0 else float("inf")

    @property
    def steps_per_s(self) -> float:
        return self.steps / self.elapsed_s if self.elapsed_s > 0 else float("inf")


@dataclass(frozen=True, slots=True)
class ExplorationResult:
    """The outcome of a search.

    ``exhausted`` is True when the search covered its whole space (for ``pb``: every schedule with
    at most ``bound`` preemptions; for ``dfs``: every schedule).  ``schedules`` counts complete
    executions (a bug ends its execution: it counts).  ``pruned`` counts executions abandoned by
    partial-order reduction (sleep-set blocked).  ``bugs`` is empty, or holds the first bug found in
    search order (with ``stop_on_bug=False``: every distinct bug signature, first occurrence each).
    """

    workload: str
    variant: str | None
    strategy: str
    parameters: tuple[tuple[str, Any], ...]
    schedules: int
    steps: int
    pruned: int
    exhausted: bool
    bound: int | None
    per_bound: tuple[BoundResult, ...]
    bugs: tuple[Bug, ...]
    elapsed_s: float = field(default=0.0, compare=False)
    schedules_to_first_bug: int | None = None
    exhausted_unbounded: bool = False

    @property
    def ok(self) -> bool:
        return not self.bugs

    @property
    def first_bug(self) -> Bug | None:
        return self.bugs[0] if self.bugs else None

    def statistics(self) -> Statistics:
        return Statistics(
            schedules=self.schedules,
            steps=self.steps,
            pruned=self.pruned,
            elapsed_s=self.elapsed_s,
        )

    def verdict(self) -> ExplorationResult:
        """This result without timing (equal between sequential and parallel runs)."""
        return replace(self, elapsed_s=0.0)

    def summary(self) -> str:
        name = self.workload + (f"/{self.variant}" if self.variant else "")
        lines = []
        for b in self.per_bound:
            state = "exhausted" if b.exhausted else "stopped"
            lines.append(f"{name}: {state} within bound {b.bound}: {b.schedules} schedules")
        if self.exhausted_unbounded:
            lines.append(f"{name}: exhausted without bound: {self.schedules} schedules")
        elif not self.per_bound:
            lines.append(f"{name}: {self.strategy}: {self.schedules} schedules")
        if self.pruned:
            lines.append(f"{name}: {self.pruned} executions pruned by sleep sets")
        if not self.exhausted and any(b.kind == "step-budget" for b in self.bugs):
            lines.append(
                f"{name}: stopped at a schedule that does not terminate (step budget); the "
                "search never continues past one, even when collecting every bug"
            )
        if self.bugs:
            lines.extend(b.describe() for b in self.bugs)
        else:
            lines.append(f"{name}: no bug found")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["parameters"] = dict(self.parameters)
        d["ok"] = self.ok
        return d

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, default=str)


@dataclass(frozen=True, slots=True)
class ReplayResult:
    """The outcome of replaying one schedule."""

    schedule: str
    bug: Bug | None
    diverged: bool
    divergence: str | None
    preemptions: int
    steps: int
    ops: tuple[OpRecord, ...]
    trace_hash: str

    @property
    def ok(self) -> bool:
        return self.bug is None and not self.diverged

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, default=str)
