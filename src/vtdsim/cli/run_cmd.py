"""``vtdsim run SCENARIO.toml``: run a scenario file and check its expectations."""

from __future__ import annotations

import sys
from typing import Any

import click

from vtdsim.cli.common import ExpectationFailed, InputError, echo_json, input_errors

DUMP_KINDS = ("dmar_translation_struct", "domain_translation_struct", "invalidation_queue")


@click.command("run")
@click.argument("scenario", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the run as one JSON object.")
@click.option(
    "--image-out",
    "image_out",
    type=click.Path(dir_okay=False),
    help="Write the final physical memory as a raw image (and report each unit's RTADDR).",
)
@click.option(
    "--dump",
    "dumps",
    multiple=True,
    type=click.Choice(DUMP_KINDS),
    help="After the run, print a Linux debugfs file (repeatable).",
)
@click.option("--all-pasids", is_flag=True, help="domain_translation_struct: every PASID's table.")
def run(
    scenario: str, as_json: bool, image_out: str | None, dumps: tuple[str, ...], all_pasids: bool
) -> None:
    """Run SCENARIO (a TOML file): build the platform, boot the driver, execute every step and
    check its expectations.  The file is validated before anything runs.

    Exit status: 0 all expectations met, 1 an expectation failed, 2 a bad file or argument.
    """
    from vtdsim.scenario.runner import run_scenario
    from vtdsim.scenario.schema import load_scenario

    with input_errors(prefix=scenario):
        sc = load_scenario(scenario)
        result = run_scenario(sc)
        dump_texts = dump_world(result.world, dumps, all_pasids)
        if image_out is not None:
            try:
                result.world.platform.memory.export_image(image_out)
            except OSError as e:
                raise InputError(f"--image-out {image_out}: {e.strerror}") from None
    if as_json:
        data = result.to_json()
        if image_out is not None:
            data["image"] = image_out
        if dumps:
            data["dumps"] = dump_texts
        echo_json(data)
    else:
        from vtdsim.scenario.report import console_for, render_run

        console = console_for(sys.stdout)
        render_run(result, console, image=image_out)
        for kind in dumps:
            console.print()
            console.print(f"--- {kind} ---")
            sys.stdout.write(dump_texts[kind])
    if not result.passed:
        raise ExpectationFailed("an expectation failed")


def dump_world(world: Any, kinds: tuple[str, ...], all_pasids: bool) -> dict[str, str]:
    """The debugfs files of a live platform (its memory and its units' registers)."""
    from vtdsim.scenario import debugfs

    platform = world.platform
    units = list(platform.units)
    out: dict[str, str] = {}
    for kind in kinds:
        if kind == "domain_translation_struct":
            out[kind] = debugfs.domain_translation_struct(
                platform.memory, units, all_pasids=all_pasids
            )
        else:
            out[kind] = debugfs.DUMPS[kind](platform.memory, units)
    return out
