"""``vtdsim walk``: explain one translation step by step (scenario state or memory image)."""

from __future__ import annotations

import click

from vtdsim.cli.common import InputError, input_errors
from vtdsim.cli.imageopts import image_options, open_image_from_options


@click.command("walk")
@click.argument("scenario", required=False, type=click.Path(dir_okay=False))
@click.option("--after", "after", type=int, help="Walk after this step (default: the last).")
@image_options(required=False)
@click.option("--sid", "sid", required=True, metavar="BDF", help="Requester (bb:dd.f).")
@click.option("--pasid", "pasid", metavar="N", help="PASID the request carries (default: none).")
@click.option("--iova", "iova", required=True, metavar="ADDR", help="Address the device uses.")
@click.option("--write", is_flag=True, help="A write request (default: read).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable steps.")
def walk(
    scenario: str | None,
    after: int | None,
    image: str | None,
    rtaddr: str | None,
    unit_name: str,
    haw: int | None,
    iqa: str | None,
    iqh: str | None,
    iqt: str | None,
    sid: str,
    pasid: str | None,
    iova: str,
    write: bool,
    as_json: bool,
) -> None:
    """Explain one translation: each table read, its address, the raw entry, the decoded
    fields, and the result or the fault reason with its spec name.

    Either on the state of SCENARIO after step --after (default: after the last step), or on a
    raw memory image (--image FILE --rtaddr ADDR).  The walk is the hardware's, uncached, as
    after a full invalidation.
    """
    from vtdsim.cli.walk_render import render_walk
    from vtdsim.scenario.image import parse_query, translate

    if (scenario is None) == (image is None):
        raise InputError("expected either a SCENARIO file or --image FILE --rtaddr ADDR")
    with input_errors():
        q = parse_query(
            f"{sid} {pasid if pasid is not None else '-'} {iova} {'w' if write else 'r'}",
            "request",
        )
    if image is not None:
        with input_errors(prefix=image):
            opened = open_image_from_options(image, rtaddr, unit_name, haw, iqa, iqh, iqt)
            res = translate(opened.memory, opened.caps, opened.rtaddr, q, trace=True)
        render_walk(res, as_json)
        return
    assert scenario is not None
    from vtdsim.scenario.runner import run_scenario
    from vtdsim.scenario.schema import load_scenario
    from vtdsim.spec import registers as R

    with input_errors(prefix=scenario):
        sc = load_scenario(scenario)
        if after is not None and not 0 <= after <= len(sc.steps):
            raise InputError(
                f"--after {after}: {scenario} has {len(sc.steps)} steps; "
                f"expected 0..{len(sc.steps)}"
            )
        result = run_scenario(sc, stop_after=after)
        platform = result.world.platform
        unit = platform.unit_for(q.sid)
        if unit is None:
            raise InputError(f"--sid {sid}: no remapping unit of {scenario} covers this device")
        mem = platform.memory
        snap = mem.snapshot()
        try:
            res = translate(mem, unit.caps, unit.read64(R.RTADDR), q, trace=True)
        finally:
            mem.restore(snap)
    render_walk(res, as_json)
