"""benchmarks/instructions.py (the instruction-count A/B): its arithmetic, its parsing of
valgrind's output and its refusals, without running valgrind (a real run takes ~40 s)."""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "instructions.py"


def _module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_instructions", _PATH)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_per_schedule_is_the_difference_of_two_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    mod = _module()
    runs = {1: (219, 1_800_000_000), 800: (876, 2_300_000_000)}
    monkeypatch.setattr(mod, "_count", lambda src, w, v, n: runs[n])
    ir, n = mod.per_schedule("src", "a", "corrected", 800)
    assert n == 657 and ir == pytest.approx(500_000_000 / 657)


def test_count_parses_valgrind_and_the_child(monkeypatch: pytest.MonkeyPatch) -> None:
    mod = _module()
    seen: list[Any] = []

    def run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        seen.append((cmd, kw["env"]))
        out, err = "SCHEDULES 219\n", "==1== I   refs:  1,234,567\n"
        return subprocess.CompletedProcess(cmd, 0, out, err)

    monkeypatch.setattr(mod.subprocess, "run", run)
    assert mod._count("src", "b", "v5", 1) == (219, 1_234_567)
    cmd, env = seen[0]
    assert cmd[:3] == ["setarch", "-R", "valgrind"] and cmd[-3:] == ["b", "v5", "1"]
    assert env["PYTHONHASHSEED"] == "0" and env["OPENBLAS_NUM_THREADS"] == "1"


def test_a_failed_child_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    mod = _module()
    monkeypatch.setattr(
        mod.subprocess,
        "run",
        lambda cmd, **kw: subprocess.CompletedProcess(cmd, 1, "", "Traceback: boom"),
    )
    with pytest.raises(SystemExit, match=r"measurement of src failed(.|\n)*boom"):
        mod._count("src", "a", "corrected", 1)


def test_too_few_schedules_and_missing_tools_are_refused(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    mod = _module()
    monkeypatch.setattr(mod, "_count", lambda src, w, v, n: (219, 10**9))
    with pytest.raises(SystemExit, match=r"--schedules 100: one DFS pass already runs 219"):
        mod.per_schedule("src", "a", "corrected", 100)
    monkeypatch.setattr(mod.shutil, "which", lambda tool: None if tool == "valgrind" else "/x")
    assert mod.main([]) == 2
    assert "needs valgrind" in capsys.readouterr().err
