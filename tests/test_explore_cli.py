"""``vtdsim explore``: exit statuses, JSON, replay."""

from __future__ import annotations

import json

from click.testing import CliRunner

from vtdsim.cli.explore_cmd import explore


def test_clean_search_exits_0() -> None:
    r = CliRunner().invoke(explore, ["-w", "b", "-v", "corrected", "-b", "1"])
    assert r.exit_code == 0, r.output
    assert "exhausted within bound 1" in r.output and "no bug found" in r.output


def test_bug_exits_1_and_replays() -> None:
    r = CliRunner().invoke(explore, ["-w", "c", "-v", "v5", "--only", "AllocatorError", "--json"])
    assert r.exit_code == 1, r.output
    data = json.loads(r.output)
    bug = data["bugs"][0]
    assert bug["name"] == "double-free" and bug["preemptions"] == 0
    rep = CliRunner().invoke(explore, ["--replay", bug["schedule"], "--only", "AllocatorError"])
    assert rep.exit_code == 1 and "BUG [exception] double-free" in rep.output
    assert "DIVERGED" not in rep.output


def test_usage_errors_exit_2() -> None:
    assert CliRunner().invoke(explore, ["-w", "no-such"]).exit_code == 2
    assert CliRunner().invoke(explore, ["-s", "bogus"]).exit_code == 2
    assert CliRunner().invoke(explore, ["--replay", "not a schedule"]).exit_code == 2
    assert CliRunner().invoke(explore, ["-w", "a", "-s", "pb", "--por"]).exit_code == 2


def test_list_and_parallel() -> None:
    r = CliRunner().invoke(explore, ["--list"])
    assert r.exit_code == 0 and "use-after-free" in r.output
    r = CliRunner().invoke(explore, ["-w", "toy-counter", "--workers", "2", "--json"])
    assert r.exit_code == 1 and json.loads(r.output)["bugs"][0]["preemptions"] == 1
