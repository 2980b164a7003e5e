"""Shared command-line plumbing: exit statuses, error conversion, JSON output."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click

from vtdsim.errors import VtdsimError

__all__ = [
    "EXIT_EXPECTATION",
    "EXIT_INPUT",
    "EXIT_OK",
    "ExpectationFailed",
    "InputError",
    "echo_json",
    "input_errors",
    "parse_int",
]

EXIT_OK = 0
EXIT_EXPECTATION = 1
EXIT_INPUT = 2


class InputError(click.ClickException):
    """A usage or input error: one message naming the file, the place and what was expected."""

    exit_code = EXIT_INPUT


class ExpectationFailed(click.ClickException):
    """A scenario ran but an expectation did not hold (the report was already printed)."""

    exit_code = EXIT_EXPECTATION


@contextmanager
def input_errors(prefix: str | None = None) -> Iterator[None]:
    """Turn vtdsim's typed errors (bad scenario, bad image, bad argument) into exit status 2.

    ``prefix`` (a file name) is put in front of messages that do not already name it."""
    try:
        yield
    except VtdsimError as e:
        msg = str(e)
        if prefix and not msg.startswith(prefix):
            msg = f"{prefix}: {msg}"
        raise InputError(msg) from None
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        raise InputError(f"{where}{e.strerror or e}") from None


def echo_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, sort_keys=False) + "\n")


def parse_int(text: str, what: str) -> int:
    """An integer written in decimal or with a 0x/0o/0b prefix; InputError otherwise."""
    try:
        return int(text.replace("_", ""), 0)
    except ValueError:
        raise InputError(f"{what}: {text!r} is not an integer (decimal or 0x...)") from None
