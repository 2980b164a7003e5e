"""``vtdsim bench``: run the registered benchmarks, one named figure each."""

from __future__ import annotations

import click

from vtdsim.cli.common import InputError, echo_json


@click.command("bench")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object {name: figure}.")
@click.option(
    "--only", "only", multiple=True, metavar="NAME", help="Run only this benchmark (repeatable)."
)
@click.option("--list", "list_only", is_flag=True, help="List benchmark names and exit.")
def bench(as_json: bool, only: tuple[str, ...], list_only: bool) -> None:
    """Run the benchmarks registered in vtdsim.bench and print one figure per benchmark."""
    from vtdsim.bench import BENCHMARKS

    if list_only:
        for name in BENCHMARKS:
            click.echo(name)
        return
    unknown = [n for n in only if n not in BENCHMARKS]
    if unknown:
        raise InputError(
            f"--only {unknown[0]!r}: no such benchmark; expected one of {', '.join(BENCHMARKS)}"
        )
    selected = list(only) if only else list(BENCHMARKS)
    results: dict[str, float] = {}
    for name in selected:
        results[name] = BENCHMARKS[name]()
        if not as_json:
            click.echo(f"{name:<32} {results[name]:>16.6g}")
    if as_json:
        echo_json(results)
