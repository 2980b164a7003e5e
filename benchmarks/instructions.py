"""Instructions per explored schedule, counted by valgrind (cachegrind): an A/B measure that the
machine's load does not move.

    python benchmarks/instructions.py                       # workload (a), corrected, this tree
    python benchmarks/instructions.py --src ../old/src --src src   # two trees, side by side

Wall-clock figures on a shared 2-core VM vary by +-3-5% from run to run; the instruction count of a
deterministic run does not vary at all.  Each measurement runs the same exhaustive DFS twice in a
fresh interpreter under ``valgrind --tool=cachegrind --cache-sim=no`` -- one pass, then passes
until at least ``--schedules`` schedules -- and divides the difference of the two counts by the
difference of the schedules, so that start-up and imports cancel out.  The run is made
deterministic: a fixed hash seed, no address-space randomisation (``setarch -R``: ``id()``-keyed
dicts), and a single OpenBLAS thread (its idle threads spin for a varying number of
instructions).  Instructions are not time (cache misses are not counted), so confirm a change with
``vtdsim bench`` medians too.  Needs valgrind and setarch (util-linux); without them it says so
and exits with status 2.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys

_CHILD = """
import sys
from vtdsim.explore.base import get_workload
from vtdsim.explore.scheduler import Runner
from vtdsim.explore.strategies import Segment, _Dfs
runner = Runner(get_workload(sys.argv[1], sys.argv[2]))
runner.fresh_world()
n = 0
while n < int(sys.argv[3]):
    n += _Dfs(runner, bound=None, por=False).run(Segment(), False, None).schedules
print("SCHEDULES", n)
"""


def _count(src: str, workload: str, variant: str, schedules: int) -> tuple[int, int]:
    """(schedules run, instructions) of one child run."""
    env = dict(
        os.environ,
        PYTHONPATH=os.path.abspath(src),
        PYTHONHASHSEED="0",
        OPENBLAS_NUM_THREADS="1",
        OMP_NUM_THREADS="1",
    )
    cmd = [
        "setarch",
        "-R",
        "valgrind",
        "--tool=cachegrind",
        "--cache-sim=no",
        "--cachegrind-out-file=/dev/null",
        os.path.realpath(sys.executable),  # (not a shim script: valgrind would count the shell)
        "-c",
        _CHILD,
        workload,
        variant,
        str(schedules),
    ]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    done = re.search(r"^SCHEDULES (\d+)$", p.stdout, re.M)
    refs = re.search(r"I\s+refs:\s+([\d,]+)", p.stderr)
    if p.returncode or done is None or refs is None:
        raise SystemExit(f"measurement of {src} failed (exit {p.returncode}):\n{p.stderr[-2000:]}")
    return int(done.group(1)), int(refs.group(1).replace(",", ""))


def per_schedule(src: str, workload: str, variant: str, schedules: int) -> tuple[float, int]:
    """(instructions per schedule, schedules counted) for the tree whose package is in ``src``."""
    n1, i1 = _count(src, workload, variant, 1)
    n2, i2 = _count(src, workload, variant, schedules)
    if n2 <= n1:
        raise SystemExit(f"--schedules {schedules}: one DFS pass already runs {n1} schedules")
    return (i2 - i1) / (n2 - n1), n2 - n1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--src", action="append", help="a tree's src directory (repeatable)")
    ap.add_argument("--workload", default="a")
    ap.add_argument("--variant", default="corrected")
    ap.add_argument("--schedules", type=int, default=800, help="at least this many (default 800)")
    args = ap.parse_args(argv)
    missing = [t for t in ("valgrind", "setarch") if shutil.which(t) is None]
    if missing:
        print(f"instructions.py needs {' and '.join(missing)} on PATH", file=sys.stderr)
        return 2
    srcs = args.src or [os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")]
    base: float | None = None
    for src in srcs:
        ir, n = per_schedule(src, args.workload, args.variant, args.schedules)
        rel = "" if base is None else f"  ({100 * (ir / base - 1):+.2f}%)"
        print(f"{src}: {ir:,.0f} instructions per schedule ({n} schedules){rel}")
        base = ir if base is None else base
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
