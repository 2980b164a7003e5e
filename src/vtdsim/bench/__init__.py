"""Benchmark registry for ``vtdsim bench``.

Each benchmark is a function taking no argument and returning one figure (a float: operations per
second, microseconds per operation... the function's docstring says which).  The registry maps a
name to a *lazy* reference ``"module:function"`` so that listing benchmarks imports nothing
heavy; :func:`load` imports one on demand.

Adding a benchmark is one line in :data:`_REFERENCES`::

    "walk_4k_hit": "vtdsim.bench.hw:bench_walk_4k_hit",

``BENCHMARKS`` is a dict of name to a callable that imports and runs the function, so
``BENCHMARKS["x"]()`` is the figure.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

__all__ = ["BENCHMARKS", "load", "names"]

#: name -> "module:function" (functions live in modules of this package, e.g. vtdsim/bench/hw.py)
_REFERENCES: dict[str, str] = {
    # a calibration figure for the machine (plain Python loop iterations per second)
    "selftest_loop": "vtdsim.bench.selftest:bench_loop",
    # hardware model (issue 2)
    "translate_warm_per_s": "vtdsim.bench.hw:translate_warm_per_s",
    "translate_walk_per_s": "vtdsim.bench.hw:translate_walk_per_s",
    "dma_read_64b_per_s": "vtdsim.bench.hw:dma_read_64b_per_s",
    "entry_codec_per_s": "vtdsim.bench.hw:entry_codec_per_s",
    # driver through the core API, strict invalidation (issue 3)
    "map_unmap_4k_pairs_per_s": "vtdsim.bench.driver:map_unmap_4k_pairs_per_s",
    "map_1gib_4k_s": "vtdsim.bench.driver:map_1gib_4k_s",
    "aux_attach_detach_per_s": "vtdsim.bench.driver:aux_attach_detach_per_s",
    "translate_driver_tables_per_s": "vtdsim.bench.driver:translate_driver_tables_per_s",
    # interleaving explorer (issue 5): workload (a) on the corrected driver, one core;
    # time to each seeded v5 bug (medians of several runs)
    "explore_schedules_per_s": "vtdsim.explore.bench:explore_schedules_per_s",
    "explore_steps_per_s": "vtdsim.explore.bench:explore_steps_per_s",
    "explore_time_to_first_bug_a_s": "vtdsim.explore.bench:time_to_first_bug_a",
    "explore_time_to_first_bug_b_s": "vtdsim.explore.bench:time_to_first_bug_b",
    "explore_time_to_first_bug_c_s": "vtdsim.explore.bench:time_to_first_bug_c",
}


def load(name: str) -> Callable[[], float]:
    """The benchmark function registered as ``name`` (imports its module)."""
    ref = _REFERENCES[name]
    module, _, attr = ref.partition(":")
    fn = getattr(importlib.import_module(module), attr)
    if not callable(fn):  # pragma: no cover - a registry mistake
        raise TypeError(f"benchmark {name!r} -> {ref} is not callable")
    return fn  # type: ignore[no-any-return]


def names() -> list[str]:
    return list(_REFERENCES)


def _lazy(name: str) -> Callable[[], float]:
    def run() -> float:
        return float(load(name)())

    run.__name__ = f"bench_{name}"
    run.__doc__ = f"Benchmark {name!r} ({_REFERENCES[name]}), imported on first call."
    return run


#: name -> callable returning the figure; the module behind each is imported on first call
BENCHMARKS: dict[str, Callable[[], float]] = {name: _lazy(name) for name in _REFERENCES}
