"""Search strategies: which schedules to run, in which order.

* ``dfs`` — stateless depth-first search over all schedules (exhaustive for small workloads);
  ``por=True`` adds sleep sets (partial-order reduction; see :mod:`vtdsim.explore.scheduler` for
  the dependence relation and why it is sound).
* ``pb`` — iterative preemption bounding: DFS restricted to schedules with at most *b* preemptions
  for b = 0, 1, ..., ``bound``.  Each round reports "exhausted within bound b: N schedules"; the
  first bug found has the minimal number of preemptions.  A round in which the bound never cut a
  branch has covered every schedule: the search stops there, exhausted without bound.
* ``pct`` — probabilistic concurrency testing (Burckhardt et al., ASPLOS 2010): random distinct
  thread priorities, ``depth - 1`` priority-change points; seeded.
* ``random`` — uniform random choice among enabled threads at each decision; seeded.

Randomized strategies seed schedule *i* with ``(strategy, seed, i)`` only, so results do not depend
on how the schedules are split among workers, and any schedule is reproducible alone.

The DFS is written as segments so that :mod:`vtdsim.explore.parallel` can split it: a search can
stop at a fixed depth and hand out the frontier nodes (schedule prefixes, with their sleep sets) as
independent subtrees, and a subtree search can stop after a work budget and return its DFS stack
(:func:`split_continuation` turns it into more subtrees); the pieces merge, in DFS order, to exactly
the single-process result.

What sleep sets save (measured, corrected driver, exhaustive DFS): workload (a) 219 -> 200
schedules (19 executions pruned early), (b) 24 -> 24, (d) 1,540 -> 1,540; on independent work
(two threads on two different locks, ``tests/test_explore_engine.py``) more than 10x.  The driver
workloads gain little because nearly every scheduling point of two aux operations touches the same
locks (``device_domain_lock``, ``iommu->lock``, ``qi->q_lock``) or is a ``point`` (allocator entry),
which the conservative dependence relation treats as dependent on everything.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from vtdsim.errors import ArgumentError
from vtdsim.explore.base import Workload
from vtdsim.explore.determinism import Fingerprint, Step, describe, fingerprint, same_execution
from vtdsim.explore.report import BoundResult, Bug, ExplorationResult
from vtdsim.explore.scheduler import (
    ACQUIRE,
    DEFAULT_STEP_BUDGET,
    READ,
    RELEASE,
    WRITE,
    Execution,
    Outcome,
    Runner,
    watchdog,
)

__all__ = [
    "STRATEGIES",
    "DefaultChooser",
    "DfsChooser",
    "PctChooser",
    "RandomChooser",
    "ReplayChooser",
    "Segment",
    "explore",
    "independent",
]

STRATEGIES = ("dfs", "pb", "pct", "random")

#: ``progress(schedules_done, label)``: called every ``PROGRESS_EVERY`` schedules
Progress = Callable[[int, str], None]
PROGRESS_EVERY = 64

Sig = tuple[str, int]

_LOCK_KINDS = (ACQUIRE, RELEASE)
_ACCESS_KINDS = (READ, WRITE)


def independent(a: Sig, b: Sig) -> bool:
    """The dependence relation of sleep sets (conservative): operations on different locks
    commute; unlocked accesses commute if they touch different objects or both read; everything
    else (same lock, ``point``, thread start, lock vs. unlocked access) is dependent."""
    ka, oa = a
    kb, ob = b
    if ka in _LOCK_KINDS and kb in _LOCK_KINDS:
        return oa != ob
    if ka in _ACCESS_KINDS and kb in _ACCESS_KINDS:
        return oa != ob or (ka == READ and kb == READ)
    return False


# ---------------------------------------------------------------------------------------------
# choosers
# ---------------------------------------------------------------------------------------------


class DefaultChooser:
    """Non-preemptive: keep running the last thread while it is enabled, else the lowest."""

    every_step = False

    def choose(self, ex: Execution, enabled: Sequence[int], last: int) -> int | None:
        return last if last in enabled else enabled[0]


class ReplayChooser:
    """Follow recorded choices, then the default."""

    every_step = False

    def __init__(self, choices: Sequence[int]) -> None:
        self.choices = choices
        self.i = 0

    def choose(self, ex: Execution, enabled: Sequence[int], last: int) -> int | None:
        i = self.i
        self.i = i + 1
        if i < len(self.choices):
            return self.choices[i]
        return last if last in enabled else enabled[0]


class RandomChooser:
    """Uniformly random among enabled threads."""

    every_step = False

    def __init__(self, seed: int, index: int) -> None:
        self.rng = random.Random(f"random:{seed}:{index}")

    def choose(self, ex: Execution, enabled: Sequence[int], last: int) -> int | None:
        return enabled[self.rng.randrange(len(enabled))] if len(enabled) > 1 else enabled[0]


class PctChooser:
    """PCT: highest-priority enabled thread runs; at ``depth - 1`` random decision indexes the
    running thread's priority drops below every initial priority."""

    every_step = False

    def __init__(self, nthreads: int, depth: int, k: int, seed: int, index: int) -> None:
        rng = random.Random(f"pct:{seed}:{index}")
        prio = list(range(depth, depth + nthreads))
        rng.shuffle(prio)
        self.prio = prio
        k = max(k, depth)
        points = rng.sample(range(1, k + 1), depth - 1) if depth > 1 else []
        self.change = {p: depth - 1 - j for j, p in enumerate(sorted(points))}
        self.i = 0

    def choose(self, ex: Execution, enabled: Sequence[int], last: int) -> int | None:
        self.i += 1
        low = self.change.get(self.i)
        if low is not None and last >= 0:
            self.prio[last] = low
        best = enabled[0]
        for t in enabled:
            if self.prio[t] > self.prio[best]:
                best = t
        return best


@dataclass(slots=True)
class _Node:
    cands: list[int]
    idx: int
    sleep: dict[int, Sig]
    done: dict[int, Sig]
    sigs: dict[int, Sig]
    #: the named fingerprint of the execution at this decision (set for a node handed over
    #: from another process; computed from ``trace`` when the node is frozen)
    seen: Fingerprint = ()
    #: the trace of the execution that made this node (its first ``steps`` steps lead here)
    #: and the enabled threads' pending operations at the decision (determinism checks)
    trace: list[Step] | None = None
    steps: int = 0
    pending: tuple[Step, ...] = ()

    def fingerprint(self) -> Fingerprint:
        if self.trace is None:
            return self.seen
        return fingerprint(self.trace[: self.steps], self.pending)

    def freeze(self) -> NodeState:
        return NodeState(
            tuple(self.cands),
            self.idx,
            tuple(sorted(self.sleep.items())),
            tuple(sorted(self.done.items())),
            tuple(sorted(self.sigs.items())),
            self.fingerprint(),
        )


@dataclass(frozen=True, slots=True)
class NodeState:
    """A picklable DFS node (for handing subtrees to workers)."""

    cands: tuple[int, ...]
    idx: int
    sleep: tuple[tuple[int, Sig], ...]
    done: tuple[tuple[int, Sig], ...]
    sigs: tuple[tuple[int, Sig], ...]
    seen: Fingerprint = ()

    def thaw(self) -> _Node:
        return _Node(
            list(self.cands),
            self.idx,
            dict(self.sleep),
            dict(self.done),
            dict(self.sigs),
            self.seen,
        )


class DfsChooser:
    """One execution of the DFS: replays the stack, then extends it with new nodes."""

    def __init__(self, search: _Dfs) -> None:
        self.search = search
        self.every_step = search.por
        # Every node on the stack was created by an earlier execution of the same prefix,
        # right after that execution checked the invariants at that decision; executions
        # are deterministic functions of their choices (checked below), so this execution
        # reaches the very same states there: no need to check them again.
        self.checked_prefix = len(search.stack)
        #: the stack depth this execution must replay (a shorter execution is nondeterminism)
        self.depth = len(search.stack)
        #: the choices of the replayed decisions before the deepest one, which the engine takes
        #: itself without calling :meth:`choose` (:attr:`Execution.replayed` counts them; the
        #: deepest replayed decision still comes here for the determinism check).  Sleep sets
        #: number their signatures at every decision: with ``por`` every decision comes here.
        self.replay: list[int] = [] if search.por else search.path[: self.depth - 1]
        self.i = len(self.replay)

    def choose(self, ex: Execution, enabled: Sequence[int], last: int) -> int | None:
        s = self.search
        i = self.i
        self.i = i + 1
        stack = s.stack
        por = s.por
        # sleep-set signatures name objects by first appearance in this execution: computed
        # at every decision (replayed ones too) so that the numbering is the same in every
        # execution of a prefix
        sigs = {t: ex.op_signature(t) for t in enabled} if por else None
        threads = ex.threads
        if i < self.depth:
            node = stack[i]
            # The deepest replayed decision checks the whole prefix at once (the trace is
            # cumulative; see vtdsim.explore.determinism); earlier ones only replay.
            if i == self.depth - 1:
                pending = tuple([(t, threads[t].kind, threads[t].obj) for t in enabled])
                if not _replays(ex.trace, pending, node):
                    seen = fingerprint(ex.trace, pending)
                    ex.diverge(
                        f"decision {i} of the DFS prefix (or an earlier one): the execution "
                        f"({describe(seen)}) differs from the recorded one "
                        f"({describe(node.fingerprint())}): workload "
                        f"{s.runner.workload.name} is nondeterministic (same schedule, "
                        "different execution)"
                    )
                    return None
            return node.cands[node.idx]
        pending = tuple([(t, threads[t].kind, threads[t].obj) for t in enabled])
        if s.truncate is not None and i >= s.truncate:
            s.truncated = True
            return None
        sleep: dict[int, Sig] = {}
        if por:
            if i == 0:
                sleep = dict(s.root_sleep)
            else:
                parent = stack[i - 1]
                t = parent.cands[parent.idx]
                tsig = parent.sigs[t]
                base = dict(parent.sleep)
                base.update(parent.done)
                sleep = {u: g for u, g in base.items() if u != t and independent(g, tsig)}
        order = [last, *(t for t in enabled if t != last)] if last in enabled else list(enabled)
        if sleep:
            order = [t for t in order if t not in sleep]
        bound = s.bound
        if bound is not None and len(order) > 1 and last in enabled and ex.preemptions >= bound:
            s.bound_hit = True
            order = [t for t in order if t == last]
        if not order:
            return None
        node = _Node(order, 0, sleep, {}, sigs or {}, (), ex.trace, len(ex.trace), pending)
        stack.append(node)
        s.path.append(order[0])
        return order[0]


def _replays(trace: list[Step], pending: tuple[Step, ...], node: _Node) -> bool:
    """Whether an execution at ``node``'s decision is the one that made ``node``."""
    if node.trace is None:  # handed over from another process: its named fingerprint
        return fingerprint(trace, pending) == node.seen
    return same_execution(trace, pending, node.trace, node.steps, node.pending)


@dataclass(slots=True)
class Segment:
    """Results of a run of consecutive schedules (a whole search, or one subtree/seed range)."""

    schedules: int = 0
    pruned: int = 0
    steps: int = 0
    bound_hit: bool = False
    complete: bool = True
    bugs: list[tuple[int, Bug]] = field(default_factory=list)
    want: tuple[str, str] | str | None = None
    #: set when a work budget stopped the search early: the DFS stack to resume from
    cont: tuple[NodeState, ...] | None = None
    #: schedule number (1-based) of a non-termination (step-budget) bug that stopped the
    #: search, 0 if none.  Such a bug always stops it, even when collecting every bug: each
    #: further schedule through a non-terminating loop costs the whole budget and the loop's
    #: decisions multiply the tree without end
    nonterm: int = 0

    def add(self, out: Outcome, runner: Runner, stop_on_bug: bool) -> bool:
        """Count an outcome; True when the search should stop.  With ``want`` set, only a bug
        of that signature counts (shrinking)."""
        if out.pruned:
            self.pruned += 1
            self.steps += out.steps
            return False
        self.schedules += 1
        self.steps += out.steps
        want = self.want
        if out.failed and (
            want is None
            or out.bug_kind == "divergence"  # a nondeterministic workload: always reported
            or (
                out.bug_name == want
                if isinstance(want, str)
                else (out.bug_kind, out.bug_name) == want
            )
        ):
            bug = out.bug(runner.workload)
            assert bug is not None
            if all(b.signature != bug.signature for _i, b in self.bugs):
                self.bugs.append((self.schedules, bug))
            if out.bug_kind == "step-budget":
                self.nonterm = self.schedules
                return True
            if stop_on_bug:
                return True
        return False


class _Dfs:
    def __init__(
        self,
        runner: Runner,
        *,
        bound: int | None,
        por: bool,
        stack: list[_Node] | None = None,
        truncate: int | None = None,
        root_sleep: dict[int, Sig] | None = None,
    ) -> None:
        self.runner = runner
        self.bound = bound
        self.por = por
        self.stack: list[_Node] = stack or []
        #: the choice each node of the stack stands for (``n.cands[n.idx]``), kept in step
        #: with the stack (the replayed prefix of every execution is a slice of it)
        self.path: list[int] = [n.cands[n.idx] for n in self.stack]
        self.floor = len(self.stack)
        self.truncate = truncate
        self.truncated = False
        self.bound_hit = False
        self.root_sleep = root_sleep or {}
        self.progress: Progress | None = None
        self.label = "dfs" if bound is None else f"bound {bound}"

    def advance(self) -> bool:
        stack = self.stack
        path = self.path
        while len(stack) > self.floor:
            node = stack[-1]
            if node.idx + 1 < len(node.cands):
                if self.por:
                    t = node.cands[node.idx]
                    node.done[t] = node.sigs[t]
                node.idx += 1
                path[-1] = node.cands[node.idx]
                return True
            stack.pop()
            path.pop()
        return False

    def run(
        self,
        seg: Segment,
        stop_on_bug: bool,
        max_schedules: int | None,
        frontier: list[tuple[tuple[int, int], tuple[NodeState, ...]]] | None = None,
        budget: int | None = None,
    ) -> Segment:
        """Run the (sub)tree.  With ``truncate`` set, executions reaching that depth are
        recorded in ``frontier`` (position in the schedule order, prefix nodes) instead.
        With ``budget``, stop after that many schedules and leave the DFS stack to resume
        from in ``seg.cont`` (work splitting)."""
        runner = self.runner
        while True:
            self.truncated = False
            chooser = DfsChooser(self)
            out = runner.execute(chooser)
            if out.ex.replayed < len(chooser.replay):  # ended inside the engine's replay
                chooser.i = out.ex.replayed
            if chooser.i < chooser.depth and out.bug_kind not in ("divergence", "stall"):
                # the execution that recorded this prefix passed all of it: ending or failing
                # inside it is nondeterminism (a stall is the watchdog's clock, not the code)
                _ended_early(out, chooser, runner)
            if self.truncated and frontier is not None:
                pos = (seg.schedules, seg.pruned)
                frontier.append((pos, tuple(n.freeze() for n in self.stack)))
            elif seg.add(out, runner, stop_on_bug):
                seg.complete = False
                break
            if self.progress is not None and seg.schedules % PROGRESS_EVERY == 0:
                self.progress(seg.schedules, self.label)
            if max_schedules is not None and seg.schedules >= max_schedules:
                seg.complete = not self.advance()
                break
            if not self.advance():
                break
            if budget is not None and seg.schedules >= budget:
                seg.cont = tuple(n.freeze() for n in self.stack)
                break
        seg.bound_hit = seg.bound_hit or self.bound_hit
        return seg


def _ended_early(out: Outcome, chooser: DfsChooser, runner: Runner) -> None:
    """A re-execution of a DFS prefix ended (or failed) before its last recorded decision:
    the workload is nondeterministic; the outcome becomes a divergence bug."""
    how = "ended" if out.bug_kind is None else f"failed ({out.bug_kind}: {out.bug_message})"
    out.pruned = False
    out.bug_kind = "divergence"
    out.bug_name = "divergence"
    out.bug_message = (
        f"the execution {how} after {chooser.i} decisions, but an earlier execution of the "
        f"same schedule prefix passed {chooser.depth}: workload {runner.workload.name} is "
        "nondeterministic (same schedule, different execution)"
    )
    out.ex._bug(out.bug_kind, out.bug_name, out.bug_message)


def run_dfs_subtree(
    runner: Runner,
    bound: int | None,
    por: bool,
    prefix: tuple[NodeState, ...],
    stop_on_bug: bool,
    max_schedules: int | None,
    floor: int | None = None,
    budget: int | None = None,
) -> Segment:
    """Explore the subtree below ``prefix`` (the unit of work of parallel DFS): nodes below
    ``floor`` (default: all of ``prefix``) are fixed; ``budget`` stops early with a
    continuation in ``Segment.cont``."""
    dfs = _Dfs(runner, bound=bound, por=por, stack=[n.thaw() for n in prefix])
    if floor is not None:
        dfs.floor = floor
    return dfs.run(Segment(want=runner.only), stop_on_bug, max_schedules, budget=budget)


def split_continuation(
    cont: tuple[NodeState, ...], floor: int
) -> tuple[tuple[NodeState, ...], list[tuple[NodeState, ...]]]:
    """Work stealing on a DFS continuation: the untried alternatives of the shallowest node
    that has some become separate subtrees (the largest pieces of the remaining work); the
    continuation keeps the rest.  Returns ``(continuation, stolen)`` in DFS order (the
    continuation's work comes first)."""
    for i in range(floor, len(cont)):
        n = cont[i]
        # the path (or, at the top, the next schedule) goes through n.cands[n.idx]
        first = n.idx + 1
        if first >= len(n.cands):
            continue
        sigs = dict(n.sigs)
        stolen: list[tuple[NodeState, ...]] = []
        for j in range(first, len(n.cands)):
            done = dict(n.done)
            for c in n.cands[n.idx : j]:
                if c in sigs:
                    done[c] = sigs[c]
            node = NodeState(n.cands, j, n.sleep, tuple(sorted(done.items())), n.sigs, n.seen)
            stolen.append((*cont[:i], node))
        kept = NodeState(n.cands[:first], n.idx, n.sleep, n.done, n.sigs, n.seen)
        return ((*cont[:i], kept, *cont[i + 1 :]), stolen)
    return (cont, [])


def run_seeds(
    runner: Runner,
    strategy: str,
    seed: int,
    start: int,
    stop: int,
    depth: int,
    k: int,
    stop_on_bug: bool,
    progress: Progress | None = None,
) -> Segment:
    """Schedules ``start..stop-1`` of a randomized strategy."""
    seg = Segment(want=runner.only)
    nthreads = len(runner.workload.threads(runner.fresh_world()))
    runner._dirty = True
    for i in range(start, stop):
        chooser: Any
        if strategy == "pct":
            chooser = PctChooser(nthreads, depth, k, seed, i)
        else:
            chooser = RandomChooser(seed, i)
        out = runner.execute(chooser)
        if seg.add(out, runner, stop_on_bug):
            seg.complete = False
            break
        if progress is not None and seg.schedules % PROGRESS_EVERY == 0:
            progress(seg.schedules, strategy)
    return seg


def pct_k(runner: Runner) -> int:
    """PCT's step estimate: decisions of the default (non-preemptive) schedule, at least 1."""
    out = runner.execute(DefaultChooser())
    return max(1, out.steps)


# ---------------------------------------------------------------------------------------------
# the entry point
# ---------------------------------------------------------------------------------------------


def explore(
    workload: Workload,
    strategy: str = "pb",
    *,
    bound: int | None = None,
    por: bool = False,
    depth: int = 3,
    seed: int = 0,
    schedules: int | None = None,
    stop_on_bug: bool = True,
    step_budget: int = DEFAULT_STEP_BUDGET,
    step_checks: bool = True,
    shrink: bool = True,
    stall_s: float | None = 10.0,
    only: str | None = None,
    progress: Progress | None = None,
) -> ExplorationResult:
    """Search the schedules of ``workload`` with ``strategy`` (single process).

    ``bound``: for ``pb`` the largest preemption bound (default 3); for ``dfs`` ignored (use
    ``pb``).  ``schedules``: cap on executed schedules (default: unlimited for ``dfs``/``pb``,
    1000 for ``pct``/``random``).  ``stop_on_bug``: stop at the first bug (default), else collect
    one bug per distinct signature.  ``shrink``: minimize bugs found by ``pct``/``random``.
    ``only``: look for one bug name only (an invariant name, ``deadlock``, ``double-free``, or an
    exception type such as ``IommuError``): other invariants are not checked and other bugs are
    ignored; an unknown name raises ArgumentError (:func:`vtdsim.explore.names.check_only`).
    ``progress(schedules, label)`` is called every few dozen schedules (progress displays).
    """
    if strategy not in STRATEGIES:
        raise ArgumentError("strategy", strategy, f"one of {', '.join(STRATEGIES)}")
    if por and strategy != "dfs":
        raise ArgumentError("por", por, "only with strategy 'dfs' (unbounded search)")
    runner = Runner(workload, step_budget=step_budget, step_checks=step_checks, only=only)
    t0 = time.perf_counter()
    with watchdog(stall_s):
        if strategy in ("dfs", "pb"):
            result = _explore_dfs(runner, strategy, bound, por, schedules, stop_on_bug, progress)
        else:
            result = _explore_random(
                runner, strategy, seed, depth, schedules or 1000, stop_on_bug, shrink, progress
            )
    elapsed = time.perf_counter() - t0
    return _with_elapsed(result, elapsed)


def _with_elapsed(r: ExplorationResult, elapsed: float) -> ExplorationResult:
    from dataclasses import replace

    return replace(r, elapsed_s=elapsed)


def _explore_dfs(
    runner: Runner,
    strategy: str,
    bound: int | None,
    por: bool,
    max_schedules: int | None,
    stop_on_bug: bool,
    progress: Progress | None = None,
) -> ExplorationResult:
    bounds: list[int | None] = (
        [None] if strategy == "dfs" else list(range((3 if bound is None else bound) + 1))
    )
    per: list[BoundResult] = []
    segs: list[Segment] = []
    for b in bounds:
        dfs = _Dfs(runner, bound=b, por=por)
        dfs.progress = progress
        seg = dfs.run(Segment(want=runner.only), stop_on_bug, max_schedules)
        segs.append(seg)
        if b is not None:
            per.append(BoundResult(b, seg.schedules, seg.complete, bool(seg.bugs)))
        if (seg.bugs and stop_on_bug) or seg.nonterm:
            break
        if b is not None and seg.complete and not seg.bound_hit:
            break  # the bound never cut a branch: everything was explored
    return make_dfs_result(runner.workload, strategy, bound, por, per, segs, runner.only)


def make_dfs_result(
    workload: Workload,
    strategy: str,
    bound: int | None,
    por: bool,
    per: list[BoundResult],
    segs: list[Segment],
    only: str | None = None,
) -> ExplorationResult:
    last = segs[-1]
    # first occurrence of each bug signature, earliest round first (fewest preemptions)
    bugs: list[Bug] = []
    first_at: int | None = None
    before = 0
    for seg in segs:
        for i, b in seg.bugs:
            if all(x.signature != b.signature for x in bugs):
                bugs.append(b)
                if first_at is None:
                    first_at = before + i
        before += seg.schedules
    # the whole space was covered (with stop_on_bug=False, bugs and all: a search that
    # stops at a bug is not complete)
    exhausted = last.complete
    if strategy == "pb":
        eff_bound: int | None = per[-1].bound if per else bound
        unbounded = last.complete and not last.bound_hit
    else:
        eff_bound = None
        unbounded = exhausted
    params: tuple[tuple[str, Any], ...] = (("bound", bound), ("por", por))
    if only is not None:
        params += (("only", only),)
    return ExplorationResult(
        workload=workload.name,
        variant=workload.variant,
        strategy=strategy,
        parameters=params,
        schedules=last.schedules,
        steps=sum(s.steps for s in segs),
        pruned=last.pruned,
        exhausted=exhausted,
        bound=eff_bound,
        per_bound=tuple(per),
        bugs=tuple(bugs),
        schedules_to_first_bug=first_at,
        exhausted_unbounded=unbounded,
    )


def _explore_random(
    runner: Runner,
    strategy: str,
    seed: int,
    depth: int,
    n: int,
    stop_on_bug: bool,
    shrink: bool,
    progress: Progress | None = None,
) -> ExplorationResult:
    k = pct_k(runner) if strategy == "pct" else 0
    seg = run_seeds(runner, strategy, seed, 0, n, depth, k, stop_on_bug, progress)
    return make_random_result(runner, strategy, seed, depth, n, seg, shrink)


def make_random_result(
    runner: Runner,
    strategy: str,
    seed: int,
    depth: int,
    n: int,
    seg: Segment,
    shrink: bool,
) -> ExplorationResult:
    bugs = [b for _i, b in seg.bugs]
    if shrink and bugs:
        from vtdsim.explore.shrink import shrink_bug

        bugs = [shrink_bug(runner, b) for b in bugs]
    params: tuple[tuple[str, Any], ...] = (("seed", seed), ("schedules", n))
    if strategy == "pct":
        params += (("depth", depth),)
    return ExplorationResult(
        workload=runner.workload.name,
        variant=runner.workload.variant,
        strategy=strategy,
        parameters=params,
        schedules=seg.schedules,
        steps=seg.steps,
        pruned=0,
        exhausted=False,
        bound=None,
        per_bound=(),
        bugs=tuple(bugs),
        schedules_to_first_bug=seg.bugs[0][0] if seg.bugs else None,
    )
