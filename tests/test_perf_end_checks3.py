"""The third round of end-check shortcuts gives what the code before it gave.

* ``new_alloc_in_use``'s early exits (one look over the whole mirror before the per-device
  loop): against the function as it was (``test_perf_end_checks2``'s verbatim reference) at
  every allocation of explored schedules of workloads a-f on both variants (v5's (e) reports
  there), and over random mirrors with entries for other domains and for unknown devices;
* the audit invariants (``step_audit``, ``end_audit``: ``Kernel.audit()`` called directly for
  a plain :class:`DriverWorld`; ``observed``: no copy of an empty record): against the checks
  as they were (through ``DriverWorld.audit``) at every call of explored schedules (v5's
  report use-after-free, leaks, attachment counts and corrupt aux lists), on randomly
  corrupted states, and for a world whose ``audit`` is its own (it must be the one called);
* ``Kernel.audit`` (the in-flight test skipped when nothing is in flight, the
  ``CorrectedAux`` assertion moved to the fallback): against the audit as it was
  (``test_perf_end_checks._audit_ref``) at every call of explored schedules, and for an aux
  object that is not a ``CorrectedAux`` (the same ``AssertionError``);
* the workloads' ``check_end`` returning one tuple instead of yielding: against the
  generators they replace (verbatim below) for every combination of thread results, PASID
  answers and DMA outcomes: the same messages and the same PASID queries and DMAs, in order.
"""

from __future__ import annotations

import dataclasses
import errno
import itertools
import random
from collections.abc import Callable, Iterable, Sequence
from typing import Any, ClassVar

import pytest

from test_perf_end_checks import _audit_ref, _call, _corrupt
from test_perf_end_checks2 import _FakeWorld, _new_alloc_in_use_ref
from vtdsim.driver.intel.aux import CorrectedAux
from vtdsim.driver.intel.aux_v5 import KernelOops
from vtdsim.driver.kernel import Kernel
from vtdsim.explore import workloads as W
from vtdsim.explore.adapter import DriverWorld
from vtdsim.explore.base import get_workload
from vtdsim.explore.invariants import Invariant, driver_invariants, new_alloc_in_use
from vtdsim.explore.scheduler import Runner
from vtdsim.explore.strategies import Segment, _Dfs

VARIANTS = ("corrected", "v5")


def _explore(name: str, variant: str, setup: Callable[[Runner], None]) -> int:
    """Every schedule of workload ``name`` with at most one preemption, after ``setup`` of
    the runner; the number of schedules."""
    r = Runner(get_workload(name, variant))
    setup(r)
    return _Dfs(r, bound=1, por=False).run(Segment(), False, None).schedules


# --- the audit invariants as they were ----------------------------------------------------------


def _observed_ref(w: Any) -> Iterable[str]:
    return list(w.violations)


def _step_audit_ref(w: Any) -> Iterable[str]:
    found = w.audit(with_leaks=False)
    return [m for _c, m in found] if found else ()


def _end_audit_ref(w: Any) -> Iterable[str]:
    found = w.audit(with_leaks=True)
    return [m for _c, m in found] if found else ()


def _checks() -> dict[str, Callable[[Any], Iterable[str]]]:
    invs = driver_invariants()
    by = {(i.name, i.when): i.check for i in invs}
    return {
        "observed": by[("dma-after-detach", "both")],
        "step": by[("kernel-audit", "step")],
        "end": by[("kernel-audit", "end")],
    }


_REFS: dict[str, Callable[[Any], Iterable[str]]] = {
    "observed": _observed_ref,
    "step": _step_audit_ref,
    "end": _end_audit_ref,
}


def _lcall(f: Callable[[Any], Iterable[str]], w: Any) -> Any:
    return _call(lambda: list(f(w)))


def _compare_explored(name: str, variant: str) -> dict[str, int]:
    """Explore ``name`` on ``variant`` comparing, at every check the explorer makes (quiescent
    decisions, schedule ends) and at every allocation, the audit invariants,
    ``new_alloc_in_use`` and ``Kernel.audit`` with the code as it was.  Mismatches are
    collected, not raised (the explorer reports an exception in a check as a bug of the
    schedule); returns how many compared answers were reports."""
    checks = _checks()
    bad: list[Any] = []
    reports = {"audit": 0, "alloc": 0, "step": 0, "end": 0}
    kernel_audit = Kernel.audit

    def audit(self: Kernel, full: bool = False) -> list[str]:
        got, ref = _call(kernel_audit, self, full), _call(_audit_ref, self, full)
        if got != ref:
            bad.append(("Kernel.audit", got, ref))
        reports["audit"] += bool(ref[0] == "V" and ref[1])
        return kernel_audit(self, full)

    def compared(kind: str) -> Callable[[Any], Iterable[str]]:
        new, ref = checks[kind], _REFS[kind]

        def check(w: Any) -> Iterable[str]:
            a, b = _lcall(new, w), _lcall(ref, w)
            if a != b:
                bad.append((kind, a, b))
            if kind in reports:
                reports[kind] += bool(b[0] == "V" and b[1])
            return new(w)

        return check

    def on_alloc(w: Any, kind: str, value: int, owner: object, scope: object) -> list[str]:
        a = _call(new_alloc_in_use, w, kind, value, owner, scope)
        b = _call(_new_alloc_in_use_ref, w, kind, value, owner, scope)
        if a != b:
            bad.append(("new_alloc_in_use", kind, value, a, b))
        reports["alloc"] += bool(b[0] == "V" and b[1])
        return new_alloc_in_use(w, kind, value, owner, scope)

    def swap(invs: Sequence[Invariant], kind: dict[str, str]) -> tuple[Invariant, ...]:
        out = []
        for i in invs:
            if i.on_alloc is not None:
                i = dataclasses.replace(i, on_alloc=on_alloc)
            elif i.name in kind:
                i = dataclasses.replace(i, check=compared(kind[i.name]))
            out.append(i)
        return tuple(out)

    def setup(r: Runner) -> None:
        names = {"dma-after-detach": "observed"}
        r.step_invariants = swap(r.step_invariants, {**names, "kernel-audit": "step"})
        r.end_invariants = swap(r.end_invariants, {**names, "kernel-audit": "end"})
        r.alloc_invariants = swap(r.alloc_invariants, {})

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Kernel, "audit", audit)
        assert _explore(name, variant, setup) > 1
    assert bad == []
    return reports


_SEEN: dict[tuple[str, str], dict[str, int]] = {}


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("name", W.BUILTIN)
def test_invariants_match_the_checks_as_they_were_on_explored_states(
    name: str, variant: str
) -> None:
    _SEEN[(name, variant)] = _compare_explored(name, variant)


def test_explored_states_include_violations() -> None:
    """The comparisons above compared reports, not only empty lists: v5's schedules make
    the audit, the step and end checks and the allocation check report (the corrected
    driver's end checks never do)."""
    for name in W.BUILTIN:
        for variant in VARIANTS:
            if (name, variant) not in _SEEN:  # (this test run alone)
                _SEEN[(name, variant)] = _compare_explored(name, variant)
    total = {k: sum(s[k] for s in _SEEN.values()) for k in ("audit", "alloc", "step", "end")}
    assert all(n > 0 for n in total.values()), total
    assert sum(s["end"] for (_n, v), s in _SEEN.items() if v == "corrected") == 0


def _worlds(seed: int, variant: str) -> Iterable[DriverWorld]:
    """Worlds after random attaches/detaches, then after each of a few random corruptions."""
    rng = random.Random(seed)
    w = DriverWorld(variant)
    doms = [w.new_domain() for _ in range(3)]
    for _ in range(rng.randrange(8)):
        try:
            (w.attach if rng.random() < 0.65 else w.detach)(rng.choice(doms), rng.randrange(3))
        except KernelOops:
            break
    yield w
    for _ in range(rng.randrange(1, 6)):
        _corrupt(rng, w, doms)
        if rng.random() < 0.3:
            w.violations.append(f"recorded {rng.randrange(9)}")
        yield w


@pytest.mark.parametrize("variant", VARIANTS)
def test_invariants_match_the_checks_as_they_were_on_corrupted_states(variant: str) -> None:
    checks = _checks()
    reported = 0
    for seed in range(40):
        for w in _worlds(seed, variant):
            for kind, new in checks.items():
                got, ref = _lcall(new, w), _lcall(_REFS[kind], w)
                assert got == ref, (seed, kind)
                reported += bool(ref[0] == "V" and ref[1])
            assert _call(w.kernel.audit) == _call(_audit_ref, w.kernel)
    assert reported > 100


class _OwnAudit(DriverWorld):
    """A world whose audit adds a message of its own (and drops the kernel's leaks)."""

    def audit(self, *, with_leaks: bool) -> list[tuple[str, str]]:
        found = [(c, m) for c, m in super().audit(with_leaks=False)]
        return [*found, ("kernel-audit", f"own audit, with_leaks={with_leaks}")]


def test_invariants_call_a_worlds_own_audit() -> None:
    checks = _checks()
    w = _OwnAudit("corrected")
    d = w.new_domain()
    w.attach(d, 0)
    w.kernel.ops.pasid_allocator._owners[99] = d  # a leak: reported by Kernel.audit()
    for kind in ("step", "end"):
        got = list(checks[kind](w))
        assert got == list(_REFS[kind](w))
        assert got[-1].startswith("own audit") and not any("(leak)" in m for m in got)


def test_audit_asserts_a_corrected_aux_as_before() -> None:
    """On the corrected variant an aux object that is not a CorrectedAux fails the audit's
    assertion, as before (now checked in the fallback branch only)."""
    w = DriverWorld("corrected")
    w.attach(w.new_domain(), 0)
    k = w.kernel

    class NotCorrected:
        by_device: ClassVar[dict[Any, Any]] = {}

        def attachments(self) -> list[Any]:
            return []

        def audit(self, out: list[str]) -> None:
            pass

    aux = k.ops.aux
    k.ops.aux = NotCorrected()  # type: ignore[assignment]
    got = _call(k.audit)
    # (the messages differ: pytest rewrites the reference's assert statement)
    assert got[:2] == _call(_audit_ref, k)[:2] == ("E", "AssertionError")
    k.ops.aux = aux
    aux.__class__ = type("Sub", (CorrectedAux,), {})  # a subclass: the fallback path
    assert _call(k.audit) == _call(_audit_ref, k) == ("V", [])


# --- new_alloc_in_use's early exits over random mirrors ----------------------------------------


@pytest.mark.parametrize("seed", range(30))
def test_new_alloc_in_use_matches_with_unknown_devices_in_the_mirror(seed: int) -> None:
    """Mirror dicts of devices the driver does not know (so the early exit sees entries the
    per-device loop never reads), empty ones, and entries for the owner and for others."""
    rng = random.Random(seed)
    w = DriverWorld(rng.choice(VARIANTS))
    doms = [w.new_domain() for _ in range(3)]
    for _ in range(rng.randrange(6)):
        try:
            (w.attach if rng.random() < 0.7 else w.detach)(rng.choice(doms), rng.randrange(3))
        except KernelOops:
            break
    programmed = w.kernel.ops.programmed
    for key in (1, 2, 3)[: rng.randrange(4)]:
        programmed[key] = {p: rng.choice(doms) for p in rng.sample((1, 2, 3, 70), 2)}
    if rng.random() < 0.5:
        programmed[4] = {}
    scopes: list[Any] = [i.domain_ids for i in w.kernel.iommus] + [None]
    for kind in ("pasid", "did", "other"):
        for value in (0, 1, 2, 3, 70):
            for owner in (*doms, None):
                for scope in scopes:
                    a = _call(new_alloc_in_use, w, kind, value, owner, scope)
                    b = _call(_new_alloc_in_use_ref, w, kind, value, owner, scope)
                    assert a == b, (kind, value, owner, scope)


# --- check_end: one tuple against the generators it replaces ----------------------------------


def _a_ref(w: Any, results: Sequence[Any]) -> Iterable[str]:
    if results[0] != 0:
        yield f"the final detach failed: {W.errno_name(results[0])}"
    yield from W._detached(w, w.dom, 0, w.pasid0)
    if results[1] == 0:
        yield from W._attached(w, w.dom, 1)


def _b_ref(w: Any, results: Sequence[Any]) -> Iterable[str]:
    for dev, r in ((0, results[0]), (2, results[1])):
        if r != 0:
            yield f"attach to dev{dev} failed: {W.errno_name(r)}"
        else:
            yield from W._attached(w, w.dom, dev)


def _c_ref(w: Any, results: Sequence[Any]) -> Iterable[str]:
    if results[0] != 0:
        yield f"the final detach failed: {W.errno_name(results[0])}"
    if results[1] == 0:
        yield "the attach with an injected DID failure succeeded"
    if results[2] == 0:
        yield from W._attached(w, w.dom, 2)
    else:
        yield f"attach to dev2 failed: {W.errno_name(results[2])}"


def _d_ref(w: Any, results: Sequence[Any]) -> Iterable[str]:
    if results[0] != 0:
        yield f"the final detach failed: {W.errno_name(results[0])}"
    yield from W._detached(w, w.dom, 0, w.pasid0)


def _e_ref(w: Any, results: Sequence[Any]) -> Iterable[str]:
    if results[0] != 0:
        yield f"the final detach failed: {W.errno_name(results[0])}"
    yield from W._detached(w, w.dom, 0, w.pasid0)
    if results[1] != 0:
        yield f"attach of D2 to dev2 failed: {W.errno_name(results[1])}"
    else:
        yield from W._attached(w, w.dom2, 2)


def _f_ref(w: Any, results: Sequence[Any]) -> Iterable[str]:
    if results[0] == 0:
        yield "the attach with an injected DID failure succeeded"
    if results[1] == W.SKIPPED:
        yield from W._attached(w, w.dom, 0)
    elif results[1] != 0:
        yield f"the final detach failed: {W.errno_name(results[1])}"
    else:
        yield from W._detached(w, w.dom, 0, w.pasid0)


_CHECK_END_REFS = {"a": _a_ref, "b": _b_ref, "c": _c_ref, "d": _d_ref, "e": _e_ref, "f": _f_ref}


class _Scripted(_FakeWorld):
    """test_perf_end_checks2's recording world, with a DMA outcome scripted per call."""

    def __init__(self, pasid: int, oks: Sequence[bool], pasid0: int) -> None:
        super().__init__(pasid, False)
        self.dom, self.dom2, self.pasid0 = "D", "D2", pasid0
        self.oks = list(oks)

    def dma(self, dom: Any, dev: int, pasid: int) -> bool:
        self.ok = self.oks.pop(0) if self.oks else False
        return super().dma(dom, dev, pasid)


def _messages(check: Callable[[Any, Sequence[Any]], Iterable[str]], w: Any, r: Any) -> Any:
    return list(check(w, list(r)))


_RESULTS = (0, -errno.EINVAL, -errno.ENOSPC, W.SKIPPED)


@pytest.mark.parametrize("name", W.BUILTIN)
def test_check_end_matches_the_generators(name: str) -> None:
    wl = get_workload(name, "corrected")
    n = len(wl.threads(_Scripted(1, (), 1)))
    ref = _CHECK_END_REFS[name]
    reported = 0
    for results in itertools.product(_RESULTS, repeat=n):
        for pasid in (-errno.EINVAL, 0, 5):
            for pasid0 in (0, 1):
                for oks in itertools.product((False, True), repeat=3):
                    worlds = [_Scripted(pasid, oks, pasid0) for _ in range(2)]
                    got = _call(_messages, wl.check_end, worlds[0], results)
                    want = _call(_messages, ref, worlds[1], results)
                    assert got == want, (results, pasid, pasid0, oks)
                    assert worlds[0].calls == worlds[1].calls
                    reported += len(want[1]) > 1
    assert reported > 0  # several messages of one schedule: their order was compared
