"""Options shared by the commands that read a raw memory image (inspect, walk, dump)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import click

from vtdsim.cli.common import InputError, parse_int

if TYPE_CHECKING:
    from vtdsim.hw.caps import Capabilities
    from vtdsim.hw.memory import PhysicalMemory
    from vtdsim.scenario.debugfs import StaticRegisters

F = TypeVar("F", bound=Callable[..., Any])


def image_options(required: bool) -> Callable[[F], F]:
    """--image, --rtaddr, --unit-name, --haw and the queue registers."""

    def deco(f: F) -> F:
        opts = [
            click.option(
                "--image",
                "image",
                type=click.Path(dir_okay=False),
                required=required,
                help="Raw physical-memory image (byte i = physical address i).",
            ),
            click.option(
                "--rtaddr",
                "rtaddr",
                metavar="ADDR",
                help="RTADDR register value: root-table address | TTM << 10 "
                "(0x...400 for scalable mode).",
            ),
            click.option(
                "--unit-name",
                "unit_name",
                default="dmar0",
                show_default=True,
                help="Name of the remapping unit in dumps.",
            ),
            click.option(
                "--haw",
                "haw",
                type=int,
                default=None,
                help="Host address width of the unit (default: the model's, 46).",
            ),
            click.option(
                "--iqa", "iqa", metavar="VALUE", help="IQA register (invalidation_queue)."
            ),
            click.option(
                "--iqh", "iqh", metavar="VALUE", help="IQH register (invalidation_queue)."
            ),
            click.option(
                "--iqt", "iqt", metavar="VALUE", help="IQT register (invalidation_queue)."
            ),
        ]
        for o in reversed(opts):
            f = o(f)
        return f

    return deco


@dataclass
class OpenedImage:
    path: str
    memory: PhysicalMemory
    caps: Capabilities
    rtaddr: int
    registers: StaticRegisters


def open_image_from_options(
    image: str,
    rtaddr: str | None,
    unit_name: str,
    haw: int | None,
    iqa: str | None,
    iqh: str | None,
    iqt: str | None,
) -> OpenedImage:
    from vtdsim.errors import ArgumentError
    from vtdsim.hw.caps import Capabilities
    from vtdsim.scenario.debugfs import StaticRegisters
    from vtdsim.scenario.image import open_image

    if rtaddr is None:
        raise InputError("--rtaddr is required with --image: the RTADDR register value")
    if (iqh or iqt) and not iqa:
        raise InputError("--iqh/--iqt need --iqa (the IQA register: queue base | DW | QS)")
    rt = parse_int(rtaddr, "--rtaddr")
    if not 0 <= rt < 1 << 64:
        raise InputError(f"--rtaddr {rtaddr}: expected a 64-bit register value")
    try:
        caps = Capabilities() if haw is None else Capabilities(haw=haw)
    except ArgumentError as e:
        raise InputError(f"--haw: {e}") from None
    regs = StaticRegisters(
        unit_name,
        rt,
        iqa=parse_int(iqa, "--iqa") if iqa else 0,
        iqh=parse_int(iqh, "--iqh") if iqh else 0,
        iqt=parse_int(iqt, "--iqt") if iqt else 0,
    )
    mem = open_image(image)
    root = rt & ~0xFFF
    if root + 4096 > mem.size:
        raise InputError(
            f"--rtaddr {rt:#x}: the root table at {root:#x} is beyond the end of the image "
            f"{image!r} ({mem.size:#x} bytes)"
        )
    return OpenedImage(image, mem, caps, rt, regs)
