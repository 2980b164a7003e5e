"""Every benchmark ``vtdsim bench`` lists resolves to a function (without running it: speed is
measured by the benchmarks themselves, never in tests)."""

from __future__ import annotations

import pytest

from vtdsim.bench import BENCHMARKS, load, names

ISSUE_FIGURES = {
    # issue 2
    "translate_warm_per_s",
    "translate_walk_per_s",
    "dma_read_64b_per_s",
    "entry_codec_per_s",
    # issue 3
    "map_unmap_4k_pairs_per_s",
    "map_1gib_4k_s",
    "aux_attach_detach_per_s",
    "translate_driver_tables_per_s",
    # issue 5
    "explore_schedules_per_s",
    "explore_steps_per_s",
    "explore_time_to_first_bug_a_s",
    "explore_time_to_first_bug_b_s",
    "explore_time_to_first_bug_c_s",
}


def test_every_figure_the_issues_ask_for_is_registered() -> None:
    assert set(names()) >= ISSUE_FIGURES
    assert set(names()) == set(BENCHMARKS)


@pytest.mark.parametrize("name", sorted(ISSUE_FIGURES))
def test_registered_benchmark_resolves_to_a_function(name: str) -> None:
    fn = load(name)
    assert callable(fn)
    assert fn.__doc__, f"{name} needs a docstring saying what its figure measures"
