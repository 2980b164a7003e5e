"""The command line: help, version, exit statuses, lazy start-up, bench."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from vtdsim import __version__
from vtdsim.cli.main import LAZY_COMMANDS, main

COMMANDS = ["run", "demo", "walk", "inspect", "dump", "bench"]


def test_version() -> None:
    r = CliRunner().invoke(main, ["--version"])
    assert r.exit_code == 0
    assert r.output.strip() == f"vtdsim, version {__version__}"


def test_help_lists_commands_without_importing_them() -> None:
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from vtdsim.cli.main import main\n"
        "r = CliRunner().invoke(main, ['--help'])\n"
        "assert r.exit_code == 0, r.output\n"
        "heavy = [m for m in ('vtdsim.hw.walk', 'vtdsim.hw.platform', 'rich', 'pydantic',\n"
        "        'numpy', 'vtdsim.cli.run_cmd') if m in sys.modules]\n"
        "print(heavy)\n"
        "print(r.output)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.splitlines()[0] == "[]"
    for name in COMMANDS:
        if name in LAZY_COMMANDS:
            assert f"  {name} " in out


def test_startup_is_quick() -> None:
    # `vtdsim --help` in a fresh interpreter: well under a second (measured ~0.15 s)
    best = min(_timed([sys.executable, "-m", "vtdsim.cli.main", "--help"]) for _ in range(3))
    assert best < 0.8


def _timed(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    assert p.returncode == 0 and "Usage: " in p.stdout
    return dt


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_has_help(name: str) -> None:
    r = CliRunner().invoke(main, [name, "--help"])
    assert r.exit_code == 0, r.output
    assert f"Usage: main {name}" in r.output or f"Usage: vtdsim {name}" in r.output


def test_unknown_command_and_bad_option_are_usage_errors() -> None:
    runner = CliRunner()
    assert runner.invoke(main, ["frobnicate"]).exit_code == 2
    assert runner.invoke(main, ["inspect", "--no-such-option"]).exit_code == 2


def test_bench_json_has_one_named_figure_per_benchmark() -> None:
    from vtdsim.bench import BENCHMARKS

    r = CliRunner().invoke(main, ["bench", "--json", "--only", "selftest_loop"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert list(data) == ["selftest_loop"]
    assert isinstance(data["selftest_loop"], float) and data["selftest_loop"] > 0
    assert "selftest_loop" in BENCHMARKS
    r = CliRunner().invoke(main, ["bench", "--list"])
    assert r.output.split() == list(BENCHMARKS)


def test_bench_unknown_name_is_input_error() -> None:
    r = CliRunner().invoke(main, ["bench", "--only", "nope"])
    assert r.exit_code == 2
    assert "no such benchmark" in r.output


def test_walk_and_dump_need_one_source() -> None:
    runner = CliRunner()
    r = runner.invoke(main, ["walk", "--sid", "00:02.0", "--iova", "0"])
    assert r.exit_code == 2 and "expected either a SCENARIO" in r.output
    r = runner.invoke(main, ["dump", "invalidation_queue"])
    assert r.exit_code == 2


@pytest.mark.parametrize("variant", ["corrected", "v5"])
def test_demo_json_for_both_driver_variants(variant: str) -> None:
    t0 = time.perf_counter()
    r = CliRunner().invoke(main, ["demo", "--json", "--variant", variant])
    assert time.perf_counter() - t0 < 5
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert data["passed"] is True
    faults = [s["fault"]["name"] for s in data["steps"] if "fault" in s]
    assert faults == ["SS_PAGING_ENTRY_RW", "PASID_ENTRY_P", "PASID_ENTRY_P"]
    walks = [s for s in data["steps"] if "walk" in s]
    assert walks and walks[0]["walk"]["steps"][-1]["outcome"] == "not-present"


def test_explore_command_is_listed_when_its_module_exists() -> None:
    import importlib.util

    r = CliRunner().invoke(main, ["--help"])
    present = importlib.util.find_spec("vtdsim.cli.explore_cmd") is not None
    assert ("  explore " in r.output) is present
