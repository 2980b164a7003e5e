"""``vtdsim demo``: the seed's story end to end (aux domains for two VMs on one device)."""

from __future__ import annotations

import sys

import click

from vtdsim.cli.common import ExpectationFailed, echo_json, input_errors


@click.command("demo")
@click.option(
    "--variant",
    type=click.Choice(["corrected", "v5"]),
    default="corrected",
    show_default=True,
    help="Aux-domain driver: the corrected one or the v5 patch as posted in 2019.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the run as one JSON object.")
@click.option("--no-walks", is_flag=True, help="Leave out the table-by-table walk explanations.")
def demo(variant: str, as_json: bool, no_walks: bool) -> None:
    """Tell the aux-domain story: a parent device, one auxiliary domain per VM, PASIDs
    assigned, DMA landing in the right VM's memory, a stray DMA blocked with its fault reason,
    a detach and the fault after it.  Takes well under a second."""
    from vtdsim.scenario.demo import DEMO_SOURCE, DEMO_TOML, PREFACE
    from vtdsim.scenario.runner import run_scenario
    from vtdsim.scenario.schema import parse_scenario

    with input_errors():
        sc = parse_scenario(DEMO_TOML, DEMO_SOURCE)
        sc.kernel.aux_variant = variant  # type: ignore[assignment]
        if no_walks:
            for step in sc.steps:
                step.walk = False
        result = run_scenario(sc)
    if as_json:
        echo_json(result.to_json())
    else:
        from rich.markup import escape

        from vtdsim.scenario.debugfs import dmar_translation_struct
        from vtdsim.scenario.report import console_for, fill, render_run

        console = console_for(sys.stdout)
        title, _, body = PREFACE.partition("\n")
        console.print(f"[bold]{title}[/bold]")
        for para in body.strip().split("\n\n"):
            console.print(escape(fill(para)))
            console.print()
        render_run(result, console)
        platform = result.world.platform
        console.print()
        console.print(
            "[bold]What Linux would show now[/bold] in "
            "/sys/kernel/debug/iommu/intel/dmar_translation_struct (one row per present "
            "PASID entry: VM 2's PASID is gone, VM 1's remains):"
        )
        sys.stdout.write(dmar_translation_struct(platform.memory, list(platform.units)))
        console.print(
            f"Same story as a scenario file: vtdsim run {DEMO_SOURCE}   "
            "(add --dump domain_translation_struct --all-pasids to see the page tables)"
        )
    if not result.passed:
        raise ExpectationFailed("an expectation of the demo failed")
