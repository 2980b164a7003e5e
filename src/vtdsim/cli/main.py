"""The ``vtdsim`` command line: a click group whose subcommands are imported lazily.

Design rationale
----------------
``vtdsim --help`` must start in well under a second, so this module imports only click and the
package version.  Each subcommand lives in its own module (``vtdsim.cli.run_cmd`` ...) and is
imported the first time click asks for it (``get_command``), following click's documented
"lazily loading subcommands" pattern.  The heavy modules (the hardware model, the driver, rich,
pydantic) are imported inside those command modules.

Exit status, for every command: 0 success, 1 an expectation failed, 2 a usage or input error
(:data:`EXIT_OK`, :data:`EXIT_EXPECTATION`, :data:`EXIT_INPUT`).
"""

from __future__ import annotations

import importlib
import importlib.util

import click

from vtdsim import __version__

__all__ = ["EXIT_EXPECTATION", "EXIT_INPUT", "EXIT_OK", "LazyGroup", "main"]

from vtdsim.cli.common import EXIT_EXPECTATION, EXIT_INPUT, EXIT_OK

#: name -> (module, attribute, one-line help shown by ``vtdsim --help`` without importing it)
LAZY_COMMANDS: dict[str, tuple[str, str, str]] = {
    "run": ("vtdsim.cli.run_cmd", "run", "Run a scenario file and check its expectations."),
    "demo": ("vtdsim.cli.demo_cmd", "demo", "Tell the aux-domain story end to end."),
    "walk": ("vtdsim.cli.walk_cmd", "walk", "Explain one translation, table by table."),
    "inspect": (
        "vtdsim.cli.inspect_cmd",
        "inspect",
        "Translate, list mappings and dump tables of a raw memory image.",
    ),
    "dump": ("vtdsim.cli.dump_cmd", "dump", "Print Linux debugfs-format dumps."),
    "bench": ("vtdsim.cli.bench_cmd", "bench", "Run the benchmarks and print one figure each."),
    # The interleaving explorer ships its own command module; listed only when present.
    "explore": ("vtdsim.cli.explore_cmd", "explore", "Explore driver interleavings."),
}


def _available(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


class LazyGroup(click.Group):
    """A group whose commands are imported only when invoked (or asked for their own help)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        names = set(super().list_commands(ctx))
        names.update(n for n, (mod, _a, _h) in LAZY_COMMANDS.items() if _available(mod))
        return sorted(names)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        cmd = super().get_command(ctx, cmd_name)
        if cmd is not None:
            return cmd
        spec = LAZY_COMMANDS.get(cmd_name)
        if spec is None or not _available(spec[0]):
            return None
        module = importlib.import_module(spec[0])
        found = getattr(module, spec[1])
        if not isinstance(found, click.Command):  # pragma: no cover - a packaging mistake
            raise click.ClickException(f"{spec[0]}.{spec[1]} is not a click command")
        return found

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Help text of lazy commands comes from the table above: no import for --help.
        rows = []
        for name in self.list_commands(ctx):
            if name in LAZY_COMMANDS:
                rows.append((name, LAZY_COMMANDS[name][2]))
            else:
                cmd = super().get_command(ctx, name)
                if cmd is not None and not cmd.hidden:
                    rows.append((name, cmd.get_short_help_str(formatter.width)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="vtdsim")
def main() -> None:
    """vtdsim: a bit-exact executable model of the Intel VT-d IOMMU (scalable mode) and of the
    Linux aux-domain / PASID-attach driver logic.

    Exit status: 0 success, 1 an expectation failed, 2 a usage or input error.
    """


if __name__ == "__main__":  # python -m vtdsim.cli.main
    main()
