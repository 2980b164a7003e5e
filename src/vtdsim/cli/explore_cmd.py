"""``vtdsim explore``: search the interleavings of a workload for bugs, or replay a schedule.

Exit status: 0 no bug found (or the replay ran clean), 1 a bug was found (or the replay diverged
or failed), 2 a usage error.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from vtdsim.cli.common import EXIT_EXPECTATION, EXIT_OK, InputError, echo_json, input_errors

__all__ = ["explore"]


@click.command("explore")
@click.option(
    "--workload",
    "-w",
    "workload",
    default="a",
    show_default=True,
    help="Workload name: a, b, c, d (the review's races), toy-*, or a user one.",
)
@click.option(
    "--variant",
    "-v",
    default=None,
    help="Driver variant: corrected or v5 (default: the workload's first).",
)
@click.option(
    "--strategy",
    "-s",
    type=click.Choice(["dfs", "pb", "pct", "random"]),
    default="pb",
    show_default=True,
    help="dfs: all schedules; pb: iterative preemption bounding; pct; random walk.",
)
@click.option(
    "--bound",
    "-b",
    type=click.IntRange(0),
    default=None,
    help="Largest preemption bound for pb (default 3).",
)
@click.option(
    "--depth", "-d", type=click.IntRange(1), default=3, show_default=True, help="PCT depth."
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of pct/random.")
@click.option(
    "--schedules",
    "-n",
    type=click.IntRange(1),
    default=None,
    help="Schedule cap (default: none for dfs/pb, 1000 for pct/random).",
)
@click.option("--por", is_flag=True, help="Sleep-set partial-order reduction (dfs only).")
@click.option(
    "--only",
    default=None,
    help="Look for this bug only (e.g. use-after-free, leak, double-free; an unknown name is a "
    "usage error that lists the valid ones).",
)
@click.option("--all-bugs", is_flag=True, help="Keep searching after a bug: one per kind.")
@click.option(
    "--replay",
    "replay_schedule",
    default=None,
    metavar="SCHEDULE",
    help="Replay one schedule string (e.g. 'a/v5:0.1~1234abcd') and exit.",
)
@click.option(
    "--module",
    "-m",
    "modules",
    multiple=True,
    metavar="MODULE|FILE.py",
    help="Import user workloads from a module or .py file (repeatable).",
)
@click.option(
    "--scheduler",
    default=None,
    metavar="ADDRESS|local",
    help="Run on a Dask cluster (address) or a Dask LocalCluster ('local').",
)
@click.option(
    "--workers",
    "-j",
    type=click.IntRange(1),
    default=None,
    help="Run on N local processes (or Dask workers with --scheduler local).",
)
@click.option(
    "--threads",
    "os_threads",
    is_flag=True,
    help="Cross-check on real OS threads (stress, not replayable).",
)
@click.option(
    "--step-budget",
    type=click.IntRange(1),
    default=10_000,
    show_default=True,
    help="Steps per schedule before a non-termination bug.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--list", "list_workloads", is_flag=True, help="List the workloads and exit.")
def explore(
    workload: str,
    variant: str | None,
    strategy: str,
    bound: int | None,
    depth: int,
    seed: int,
    schedules: int | None,
    por: bool,
    only: str | None,
    all_bugs: bool,
    replay_schedule: str | None,
    modules: tuple[str, ...],
    scheduler: str | None,
    workers: int | None,
    os_threads: bool,
    step_budget: int,
    as_json: bool,
    list_workloads: bool,
) -> None:
    """Explore the thread interleavings of a driver workload and report bugs with minimal,
    replayable schedules."""
    from vtdsim.explore import base
    from vtdsim.explore.names import check_only

    with input_errors():
        for m in modules:
            base.load_module(m)
        if list_workloads:
            _list(as_json)
            return
        if replay_schedule is not None:
            sys.exit(_replay(replay_schedule, only, step_budget, as_json))
        wl = base.get_workload(workload, variant)
        only = check_only(wl, only)  # an unknown bug name is a usage error (exit 2)
        if por and strategy != "dfs":
            raise InputError("--por needs --strategy dfs (sleep sets are unsound with bounds)")
        if os_threads:
            from vtdsim.explore import run_threads

            result = run_threads(wl, iterations=schedules or 200, seed=seed)
        elif scheduler is not None or workers is not None:
            from vtdsim.explore import explore_parallel

            result = _with_spinner(
                as_json,
                f"exploring {wl.name}/{wl.variant} on "
                f"{scheduler or 'local processes'} ({workers or 'all'} workers)",
                lambda: explore_parallel(
                    wl,
                    strategy,
                    bound=bound,
                    por=por,
                    depth=depth,
                    seed=seed,
                    schedules=schedules,
                    stop_on_bug=not all_bugs,
                    step_budget=step_budget,
                    workers=workers,
                    scheduler=scheduler,
                    only=only,
                ),
            )
        else:
            result = _run_with_progress(
                as_json,
                wl,
                strategy,
                bound=bound,
                por=por,
                depth=depth,
                seed=seed,
                schedules=schedules,
                stop_on_bug=not all_bugs,
                step_budget=step_budget,
                only=only,
            )
    if as_json:
        echo_json(result.to_dict())
    else:
        click.echo(result.summary())
        if result.bugs and result.bugs[0].schedule:
            click.echo(
                f"replay with: vtdsim explore --replay '{result.bugs[0].schedule}'"
                + (f" --only {only}" if only else "")
            )
    sys.exit(EXIT_EXPECTATION if result.bugs else EXIT_OK)


def _list(as_json: bool) -> None:
    from vtdsim.explore import base

    rows = []
    for name in base.registered():
        cls = base._REGISTRY[name]
        rows.append(
            {
                "name": name,
                "variants": list(getattr(cls, "variants", ())),
                "target": getattr(cls, "target", ""),
                "v5_result": getattr(cls, "v5_result", "") or getattr(cls, "target", ""),
                "description": getattr(cls, "description", ""),
            }
        )
    if as_json:
        echo_json(rows)
        return
    for r in rows:
        target = ""
        if r["target"] and r["v5_result"] != r["target"]:
            target = f"  [v5 bug: {r['v5_result']} (looks for {r['target']})]"
        elif r["target"]:
            target = f"  [v5 bug: {r['target']}]"
        click.echo(f"{r['name']:<14} {'/'.join(r['variants']):<16} {r['description']}{target}")


def _replay(schedule: str, only: str | None, step_budget: int, as_json: bool) -> int:
    from vtdsim.explore import replay

    r = replay(schedule, step_budget=step_budget, only=only)
    if as_json:
        echo_json(r.to_dict())
    else:
        for op in r.ops:
            click.echo(str(op))
        if r.diverged:
            click.echo(f"DIVERGED: {r.divergence}")
        if r.bug is not None:
            click.echo(f"BUG [{r.bug.kind}] {r.bug.name}: {r.bug.message}")
            if r.bug.traceback:
                click.echo(r.bug.traceback.rstrip())
        if r.ok:
            click.echo(f"no bug ({r.steps} steps, {r.preemptions} preemption(s))")
    return EXIT_OK if r.ok else EXIT_EXPECTATION


def _with_spinner(quiet: bool, text: str, fn: Any) -> Any:
    if quiet or not sys.stderr.isatty():
        return fn()
    from rich.console import Console

    with Console(stderr=True).status(text):
        return fn()


def _run_with_progress(quiet: bool, wl: Any, strategy: str, **kw: Any) -> Any:
    from vtdsim.explore import explore as run

    if quiet or not sys.stderr.isatty():
        return run(wl, strategy, **kw)
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    with Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        TextColumn("{task.completed} schedules"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as prog:
        task = prog.add_task(f"{wl.name}/{wl.variant} {strategy}", total=None)

        def progress(done: int, label: str) -> None:
            prog.update(task, completed=done, description=f"{wl.name}/{wl.variant} {label}")

        return run(wl, strategy, progress=progress, **kw)
