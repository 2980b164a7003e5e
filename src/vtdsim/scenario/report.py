"""Rendering of a scenario run: a readable timeline and a summary (rich), or JSON."""

from __future__ import annotations

import textwrap
from typing import TextIO

from rich.console import Console
from rich.markup import escape

from vtdsim.scenario.runner import RunResult

__all__ = ["console_for", "fill", "render_run"]


def _fill(text: str) -> str:
    return textwrap.fill(" ".join(text.split()), width=100)


fill = _fill


def console_for(stream: TextIO | None = None) -> Console:
    """A console whose output is stable in files and pipes (fixed width, no colour codes)."""
    is_tty = bool(stream is not None and hasattr(stream, "isatty") and stream.isatty())
    return Console(
        file=stream,
        width=120 if not is_tty else None,
        highlight=False,
        soft_wrap=True,
        color_system="auto" if is_tty else None,
        force_terminal=False,
    )


def render_run(result: RunResult, console: Console, *, image: str | None = None) -> None:
    sc = result.scenario
    title = sc.title or sc.source
    console.print(f"[bold]{escape(title)}[/bold]")
    if sc.description:
        console.print(escape(_fill(sc.description)))
    console.print(
        f"platform: {sc.memory_size >> 20} MiB memory; units "
        + ", ".join(u.name for u in sc.platform.units)
        + "; devices "
        + ", ".join(f"{d.name} ({d.bdf})" for d in sc.platform.devices)
        + f"; aux variant {sc.kernel.aux_variant}"
    )
    if not (result.outcomes and result.outcomes[0].chapter):
        console.print()
    for o in result.outcomes:
        if o.chapter:
            title, _, body = o.chapter.strip().partition("\n")
            console.print()
            console.print(f"[bold underline]{escape(title.strip())}[/bold underline]")
            for para in body.strip().split("\n\n"):
                if para.strip():
                    console.print(escape(_fill(para)))
            console.print()
        mark = "[green]ok  [/green]" if o.passed else "[red]FAIL[/red]"
        console.print(f"{mark} {o.index:>3}. {escape(o.call)}")
        if o.note:
            console.print(f"           [dim]{escape(o.note)}[/dim]")
        console.print(f"           -> {escape(o.result_text())}")
        if o.fault is not None and "dmesg" in o.fault:
            console.print(f"           [dim]dmesg: {escape(o.fault['dmesg'])}[/dim]")
        for c in o.checks:
            if not c.passed:
                console.print(
                    f"           [red]expected {escape(c.what)} {escape(c.expected)}, "
                    f"got {escape(c.got)}[/red]"
                )
        if o.walk:
            for line in o.walk:
                console.print(f"           {escape(line)}")
    console.print()
    n = len(result.outcomes)
    failed = [o.index for o in result.outcomes if not o.passed]
    if failed:
        console.print(
            f"[red bold]{len(failed)} of {n} steps failed their expectations[/red bold]: "
            f"steps {', '.join(map(str, failed))}"
        )
    else:
        console.print(f"[green bold]all {n} steps met their expectations[/green bold]")
    if image is not None:
        regs = ", ".join(f"{name} RTADDR={v:#x}" for name, v in result.rtaddrs().items())
        console.print(f"memory image written to {escape(image)} ({regs})")
