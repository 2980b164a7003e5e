"""A user-defined explorer workload and invariant (run: ``python examples/explore_custom.py``).

The question: "can one aux domain ever hold two PASIDs at the same time?"  Two threads make the
first aux attaches of a fresh domain to two devices; a *user invariant* checked at every quiescent
decision point says that the PASID allocator never holds more than one PASID owned by the domain.

On the historical v5 driver both attaches can read ``default_pasid <= 0`` before either publishes
its allocation, so both allocate: the explorer finds that with one preemption, prints the
threads' operations and a replayable schedule.  On the corrected driver (allocation under
``device_domain_lock``) the search is exhaustive and finds nothing.

How to write a workload:

* subclass :class:`vtdsim.explore.Workload`; ``setup()`` returns the *world* (here a booted
  :class:`vtdsim.explore.adapter.DriverWorld`); ``threads(world)`` returns ``(name, callable)``
  pairs; the callables call driver APIs — every lock, allocator call and declared unlocked
  access inside the driver is a scheduling point, nothing else needs annotating;
* ``invariants()`` returns :class:`vtdsim.explore.Invariant` objects: a name and a function from
  the world to violation messages; ``when="step"|"end"|"both"``;
* ``check_end(world, results)`` sees each thread's return value;
* ``snapshot``/``restore`` make the per-schedule reset cheap (here inherited from the built-in
  driver workloads: an in-place restore of the whole object graph);
* ``register(name, module=__file__)`` makes it available by name to ``vtdsim explore -m
  examples/explore_custom.py -w one-pasid`` and to worker processes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from vtdsim.explore import Invariant, explore, register, replay
from vtdsim.explore.adapter import DriverWorld
from vtdsim.explore.invariants import driver_invariants
from vtdsim.explore.workloads import DriverWorkload


def at_most_one_pasid(world: DriverWorld) -> Iterable[str]:
    """User invariant: the allocator holds at most one PASID owned by the workload's domain."""
    alloc = world.kernel.ops.pasid_allocator
    mine = [p for p in alloc.allocated() if alloc.owner(p) is world.dom]
    if len(mine) > 1:
        yield f"{world.dom!r} owns {len(mine)} PASIDs at once: {mine}"


@register("one-pasid", module=__file__)
class OnePasid(DriverWorkload):
    description = "two first aux attaches of a fresh domain; it must never own two PASIDs"
    target = "one-pasid-per-domain"

    def prepare(self, w: DriverWorld) -> None:
        w.dom = w.new_domain()

    def threads(self, w: Any) -> Sequence[tuple[str, Any]]:
        return [
            ("attach-dev0", lambda: w.attach(w.dom, 0)),
            ("attach-dev2", lambda: w.attach(w.dom, 2)),
        ]

    def invariants(self) -> Sequence[Invariant]:
        mine = Invariant("one-pasid-per-domain", at_most_one_pasid, when="both")
        return (mine, *driver_invariants())

    def check_end(self, w: Any, results: Sequence[object]) -> Iterable[str]:
        if any(r != 0 for r in results):
            yield f"an attach failed: {results}"


def main() -> None:
    for variant in ("v5", "corrected"):
        r = explore(OnePasid(variant), "pb", bound=3, only="one-pasid-per-domain")
        print(r.summary())
        bug = r.first_bug
        if bug is not None:
            again = replay(bug.schedule, OnePasid(variant), only="one-pasid-per-domain")
            print("replayed:", "same bug" if again.bug and not again.diverged else again)


if __name__ == "__main__":
    main()
