"""``vtdsim dump KIND``: a Linux debugfs file from a scenario's state or a memory image."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

import click

from vtdsim.cli.common import InputError, echo_json, input_errors
from vtdsim.cli.imageopts import image_options, open_image_from_options
from vtdsim.cli.run_cmd import DUMP_KINDS

if TYPE_CHECKING:
    from vtdsim.hw.memory import PhysicalMemory


@click.command("dump")
@click.argument("kind", type=click.Choice(DUMP_KINDS))
@click.argument("scenario", required=False, type=click.Path(dir_okay=False))
@click.option("--after", "after", type=int, help="Dump after this step (default: the last).")
@image_options(required=False)
@click.option("--all-pasids", is_flag=True, help="domain_translation_struct: every PASID's table.")
@click.option(
    "--device",
    "device",
    metavar="BDF",
    help="domain_translation_struct of one device, Linux 6.7+ per-device file format "
    "(<bdf>/domain_translation_struct).",
)
@click.option(
    "--pasid",
    "pasid",
    metavar="N",
    help="With --device: that PASID's file (<bdf>/<pasid>/domain_translation_struct).",
)
@click.option("--json", "as_json", is_flag=True, help="Print {kind: text} as JSON.")
def dump(
    kind: str,
    scenario: str | None,
    after: int | None,
    image: str | None,
    rtaddr: str | None,
    unit_name: str,
    haw: int | None,
    iqa: str | None,
    iqh: str | None,
    iqt: str | None,
    all_pasids: bool,
    device: str | None,
    pasid: str | None,
    as_json: bool,
) -> None:
    """Print KIND (dmar_translation_struct, domain_translation_struct, invalidation_queue) in
    the line format of Linux's /sys/kernel/debug/iommu/intel/KIND, from the state of SCENARIO
    (after step --after, default the last) or from a raw memory image (--image, --rtaddr and,
    for the queue, --iqa/--iqh/--iqt).
    """
    from vtdsim.scenario import debugfs
    from vtdsim.scenario.image import parse_query

    if (device or pasid) and kind != "domain_translation_struct":
        raise InputError("--device/--pasid select a domain_translation_struct file")
    if pasid and not device:
        raise InputError("--pasid needs --device BDF")
    target: tuple[int, int | None] | None = None
    if device:
        with input_errors():
            q = parse_query(f"{device} {pasid or '-'} 0 r", "--device/--pasid")
        target = (q.sid, q.pasid)

    def render(memory: PhysicalMemory, units: Sequence[debugfs.RegisterView]) -> str:
        if target is not None:
            return debugfs.device_domain_translation_struct(memory, units, *target)
        if kind == "domain_translation_struct":
            return debugfs.domain_translation_struct(memory, units, all_pasids=all_pasids)
        return debugfs.DUMPS[kind](memory, units)

    if (scenario is None) == (image is None):
        raise InputError("expected either a SCENARIO file or --image FILE --rtaddr ADDR")
    if image is not None and kind == "invalidation_queue" and not iqa:
        raise InputError("invalidation_queue needs --iqa, --iqh and --iqt (register values)")
    if image is not None:
        with input_errors(prefix=image):
            opened = open_image_from_options(image, rtaddr, unit_name, haw, iqa, iqh, iqt)
            text = render(opened.memory, [opened.registers])
    else:
        assert scenario is not None
        from vtdsim.scenario.runner import run_scenario
        from vtdsim.scenario.schema import load_scenario

        with input_errors(prefix=scenario):
            sc = load_scenario(scenario)
            if after is not None and not 0 <= after <= len(sc.steps):
                raise InputError(
                    f"--after {after}: {scenario} has {len(sc.steps)} steps; "
                    f"expected 0..{len(sc.steps)}"
                )
            result = run_scenario(sc, stop_after=after)
            platform = result.world.platform
            text = render(platform.memory, list(platform.units))
    if as_json:
        echo_json({kind: text})
    else:
        sys.stdout.write(text)
