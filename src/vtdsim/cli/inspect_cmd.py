"""``vtdsim inspect``: translate, list mappings and dump tables of a raw memory image."""

from __future__ import annotations

import click

from vtdsim.cli.common import InputError, echo_json, input_errors
from vtdsim.cli.imageopts import image_options, open_image_from_options

DUMP_KINDS = ("dmar_translation_struct", "domain_translation_struct", "invalidation_queue")


@click.command("inspect")
@image_options(required=True)
@click.option("--sid", "sid", metavar="BDF", help="Translate a request from this device (bb:dd.f).")
@click.option("--pasid", "pasid", metavar="N", help="... tagged with this PASID (default: none).")
@click.option("--iova", "iova", metavar="ADDR", help="... at this address.")
@click.option("--write", "write", is_flag=True, help="... as a write (default: read).")
@click.option("--explain", is_flag=True, help="With --sid: show every table read of the walk.")
@click.option(
    "--queries",
    "queries",
    type=click.Path(dir_okay=False),
    help="File of queries, one a line: 'BDF PASID-or-dash IOVA r|w'.",
)
@click.option("--mappings", is_flag=True, help="List every mapping reachable from RTADDR.")
@click.option("--limit", type=int, default=1 << 20, show_default=True, help="Most mappings listed.")
@click.option(
    "--dump",
    "dumps",
    multiple=True,
    type=click.Choice(DUMP_KINDS),
    help="Print a Linux debugfs file (repeatable).",
)
@click.option("--all-pasids", is_flag=True, help="domain_translation_struct: every PASID's table.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def inspect(
    image: str,
    rtaddr: str | None,
    unit_name: str,
    haw: int | None,
    iqa: str | None,
    iqh: str | None,
    iqt: str | None,
    sid: str | None,
    pasid: str | None,
    iova: str | None,
    write: bool,
    explain: bool,
    queries: str | None,
    mappings: bool,
    limit: int,
    dumps: tuple[str, ...],
    all_pasids: bool,
    as_json: bool,
) -> None:
    """Inspect a raw physical-memory image (QEMU pmemsave, /dev/mem, vtdsim run --image-out).

    The image is opened read-only through mmap.  Give RTADDR as the unit's register value, then
    one of: a single request (--sid/--pasid/--iova/--write), a query file (--queries), the list
    of mappings (--mappings) or debugfs dumps (--dump).  Faults are results (exit 0); a bad image
    or argument is an input error (exit 2).
    """
    from vtdsim.scenario import image as img

    if "invalidation_queue" in dumps and not iqa:
        raise InputError("--dump invalidation_queue needs --iqa, --iqh and --iqt (register values)")
    actions = sum(bool(x) for x in (sid or iova, queries, mappings, dumps))
    if actions != 1:
        raise InputError(
            "expected exactly one of: --sid/--iova (one request), --queries FILE, --mappings, "
            "--dump KIND"
        )
    parsed_queries = None
    if queries:
        with input_errors():
            parsed_queries = img.parse_queries(queries)
    with input_errors(prefix=image):
        opened = open_image_from_options(image, rtaddr, unit_name, haw, iqa, iqh, iqt)
        if sid or iova:
            if not (sid and iova):
                raise InputError("a request needs both --sid BDF and --iova ADDR")
            q = img.parse_query(
                f"{sid} {pasid if pasid is not None else '-'} {iova} {'w' if write else 'r'}",
                "request",
            )
            snap = opened.memory.snapshot()
            res = img.translate(opened.memory, opened.caps, opened.rtaddr, q, trace=explain)
            opened.memory.restore(snap)
            if explain:
                from vtdsim.cli.walk_render import render_walk

                render_walk(res, as_json)
            elif as_json:
                echo_json(res.to_json())
            else:
                click.echo(res.line())
            return
        if parsed_queries is not None:
            results = img.translate_many(opened.memory, opened.caps, opened.rtaddr, parsed_queries)
            if as_json:
                echo_json([r.to_json() for r in results])
            else:
                click.echo("".join(r.line() + "\n" for r in results), nl=False)
            return
        if mappings:
            report = img.enumerate_mappings(opened.memory, opened.caps, opened.rtaddr, limit=limit)
            if as_json:
                echo_json(
                    {
                        "mappings": [m.to_json() for m in report.mappings],
                        "problems": report.problems,
                    }
                )
            else:
                lines = [m.line() for m in report.mappings]
                lines += [f"problem: {p}" for p in report.problems]
                if not report.mappings:
                    click.echo(f"no mapping is reachable from RTADDR {opened.rtaddr:#x}", err=True)
                click.echo("".join(line + "\n" for line in lines), nl=False)
            return
        from vtdsim.scenario import debugfs

        texts = {}
        for kind in dumps:
            fn = debugfs.DUMPS[kind]
            if kind == "domain_translation_struct":
                texts[kind] = debugfs.domain_translation_struct(
                    opened.memory, [opened.registers], all_pasids=all_pasids
                )
            else:
                texts[kind] = fn(opened.memory, [opened.registers])
        if as_json:
            echo_json(texts)
        else:
            click.echo("".join(texts[k] for k in dumps), nl=False)
