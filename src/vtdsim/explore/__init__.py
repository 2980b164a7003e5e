"""vtdsim.explore: the interleaving explorer.

Runs a workload of logical threads (driver and core-API calls, device DMA) under a controlled
scheduler that switches threads only at the driver's synchronization operations, searches the
schedules (DFS, preemption bounding, PCT, random walk; sleep-set reduction), checks invariants of
the whole model state, and reports bugs with minimal replayable schedules.

Public API::

    from vtdsim.explore import explore, replay, get_workload

    result = explore(get_workload("a", "v5"), "pb", bound=3)
    print(result.summary())                 # "exhausted within bound 0: 3 schedules" ...
    bug = result.first_bug                  # kind, message, schedule "a/v5:0.0.1~...", ops
    replay(bug.schedule)                    # deterministic; reports divergence if code changed

User workloads subclass :class:`Workload` and may be registered with :func:`register`
(see ``examples/explore_custom.py``).  :func:`explore_parallel` splits a search over local
processes or a Dask cluster with identical results; :func:`run_threads` runs a workload on real
OS threads as a cross-check.
"""

from vtdsim.explore.base import Workload, WorkloadRef, get_workload, register, registered
from vtdsim.explore.invariants import Invariant, driver_invariants
from vtdsim.explore.parallel import explore_parallel
from vtdsim.explore.report import (
    BoundResult,
    Bug,
    ExplorationResult,
    OpRecord,
    ReplayResult,
    Statistics,
)
from vtdsim.explore.schedule import Schedule
from vtdsim.explore.shrink import replay, shrink_bug
from vtdsim.explore.strategies import STRATEGIES, explore
from vtdsim.explore.threads import run_threads

__all__ = [
    "STRATEGIES",
    "BoundResult",
    "Bug",
    "ExplorationResult",
    "Invariant",
    "OpRecord",
    "ReplayResult",
    "Schedule",
    "Statistics",
    "Workload",
    "WorkloadRef",
    "driver_invariants",
    "explore",
    "explore_parallel",
    "get_workload",
    "register",
    "registered",
    "replay",
    "run_threads",
    "shrink_bug",
]
