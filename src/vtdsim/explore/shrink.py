"""Replay of schedule strings, and shrinking of failing schedules.

:func:`replay` runs one schedule deterministically and reports a divergence when the execution no
longer matches the recorded schedule (a listed choice is not enabled, choices are left over, or the
operation-trace hash differs): the code under test changed since the schedule was recorded.

:func:`shrink_bug` turns a failing schedule into a minimal one: first the *fewest preemptions*
(preemption-bounded DFS for bounds below the bug's count, looking for the same bug signature, within
a schedule budget), then *shrunk*: greedily drop choices (truncate the tail, replace single
choices by the default one) while the same bug still occurs.  Schedules found by ``pb`` already have
minimal preemptions; those from ``pct``/``random`` usually shrink a lot.
"""

from __future__ import annotations

from collections.abc import Sequence

from vtdsim.errors import ArgumentError
from vtdsim.explore.base import Workload, get_workload
from vtdsim.explore.report import Bug, ReplayResult
from vtdsim.explore.schedule import Schedule
from vtdsim.explore.scheduler import DEFAULT_STEP_BUDGET, Execution, Outcome, Runner
from vtdsim.explore.strategies import ReplayChooser, Segment, _Dfs

__all__ = ["replay", "shrink_bug"]


class _LenientChooser(ReplayChooser):
    """Replay that substitutes the default when a listed choice is not enabled (shrinking)."""

    def choose(self, ex: Execution, enabled: Sequence[int], last: int) -> int | None:
        tid = super().choose(ex, enabled, last)
        if tid not in enabled:
            return last if last in enabled else enabled[0]
        return tid


def replay(
    schedule: str | Schedule,
    workload: Workload | None = None,
    *,
    step_budget: int = DEFAULT_STEP_BUDGET,
    only: str | None = None,
) -> ReplayResult:
    """Run ``schedule`` once.  ``workload`` defaults to the registered one the schedule names.
    ``only``: check only that bug name (as in the search that recorded the schedule)."""
    sched = Schedule.parse(schedule) if isinstance(schedule, str) else schedule
    if workload is None:
        workload = get_workload(sched.workload, sched.variant)
    elif workload.name != sched.workload or (
        sched.variant is not None and sched.variant != workload.variant
    ):
        raise ArgumentError(
            "schedule", str(sched), f"a schedule of workload {workload.name}/{workload.variant}"
        )
    runner = Runner(workload, step_budget=step_budget, only=only)
    chooser = ReplayChooser(sched.choices)
    out = runner.execute(chooser)
    divergence = _divergence(out, sched, chooser)
    bug = out.bug(workload) if out.bug_kind != "divergence" else None
    return ReplayResult(
        schedule=str(sched),
        bug=bug,
        diverged=divergence is not None,
        divergence=divergence,
        preemptions=out.preemptions,
        steps=out.steps,
        ops=out.ops(),
        trace_hash=out.trace_hash(),
    )


def _divergence(out: Outcome, sched: Schedule, chooser: ReplayChooser) -> str | None:
    if out.bug_kind == "divergence":
        return out.bug_message
    if chooser.i < len(sched.choices):
        return (
            f"the execution made {chooser.i} decision(s) but the schedule lists "
            f"{len(sched.choices)}; the code changed since the schedule was recorded"
        )
    if sched.trace_hash is not None:
        h = out.trace_hash()
        if h != sched.trace_hash:
            return (
                f"operation trace hash {h} differs from the recorded {sched.trace_hash}; "
                "the code changed since the schedule was recorded"
            )
    return None


def _run(runner: Runner, choices: Sequence[int]) -> Outcome:
    return runner.execute(_LenientChooser(choices))


def shrink_bug(runner: Runner, bug: Bug, *, budget: int = 20_000) -> Bug:
    """A failing schedule with the same bug signature, fewest preemptions first, then fewest
    listed choices.  ``budget`` caps the schedules spent on the preemption search."""
    want = bug.signature
    best = bug
    spent = 0
    for b in range(bug.preemptions):
        if spent >= budget:
            break
        seg = Segment(want=want)
        _Dfs(runner, bound=b, por=False).run(seg, True, budget - spent)
        spent += seg.schedules
        if seg.bugs:
            best = seg.bugs[0][1]
            break
    choices = list(Schedule.parse(best.schedule).choices)

    def fails(c: Sequence[int]) -> Outcome | None:
        out = _run(runner, c)
        return out if out.failed and (out.bug_kind, out.bug_name) == want else None

    # truncate the tail: the shortest prefix that still fails
    for n in range(len(choices)):
        if fails(choices[:n]) is not None:
            choices = choices[:n]
            break
    # drop single choices (replace by the default), keeping the preemption count no larger
    i = 0
    while i < len(choices):
        cand = choices[:i] + choices[i + 1 :]
        out = fails(cand)
        if out is not None and out.preemptions <= best.preemptions:
            choices = list(out.significant_choices())
        else:
            i += 1
    final = fails(choices)
    if final is None:
        return best
    result = final.bug(runner.workload)
    return result if result is not None and result.preemptions <= best.preemptions else best
