"""The error hierarchy of vtdsim.

Two families, kept apart on purpose:

* ``VtdsimError`` and its subclasses are *software* errors: a caller passed a bad argument, a
  structure failed validation, an OS-side API refused (with a Linux errno).  They are raised.
* Hardware-level misuse (a bad register write, a malformed table met during a walk) is never an
  exception: the remapping unit answers as silicon does, with a fault record or an error status
  bit.  Those results live in :mod:`vtdsim.hw`.

Every message quotes the offending value and states the contract it broke, in the style of
amaranth's ``lib/data.py``.
"""

from __future__ import annotations

import errno as _errno

__all__ = [
    "ArgumentError",
    "IommuError",
    "MemoryAccessError",
    "ReservedBitsError",
    "ScenarioError",
    "VtdsimError",
]


class VtdsimError(Exception):
    """Base class of every error vtdsim raises on purpose."""


class ArgumentError(VtdsimError, ValueError):
    """An API argument has the wrong type or an impossible value.

    ``name`` is the parameter, ``value`` the value received, ``expected`` the contract.
    """

    def __init__(self, name: str, value: object, expected: str) -> None:
        self.name = name
        self.value = value
        self.expected = expected
        super().__init__(f"{name}={_show(value)} is invalid: expected {expected}")


class ReservedBitsError(VtdsimError, ValueError):
    """A structure word has reserved bits set (VT-d treats this as a malformed entry).

    ``structure`` names the layout, ``word`` the 64-bit word index, ``bits`` the mask of the
    offending absolute-in-word bits and ``value`` the whole word.
    """

    def __init__(self, structure: str, word: int, bits: int, value: int) -> None:
        self.structure = structure
        self.word = word
        self.bits = bits
        self.value = value
        super().__init__(
            f"{structure} qword {word} = {value:#018x} has reserved bits set: "
            f"{bits:#018x} (bits {_bit_list(bits)}); reserved bits must be 0"
        )


class MemoryAccessError(VtdsimError):
    """A physical access fell outside the memory's size or the image's extent."""

    def __init__(self, address: int, length: int, limit: int) -> None:
        self.address = address
        self.length = length
        self.limit = limit
        super().__init__(
            f"physical access of {length} byte(s) at {address:#x} is beyond the end of "
            f"physical memory ({limit:#x} bytes)"
        )


class ScenarioError(VtdsimError):
    """A scenario, query file or image is malformed.  ``where`` locates it (file, step, field)."""

    def __init__(self, where: str, message: str) -> None:
        self.where = where
        super().__init__(f"{where}: {message}")


class IommuError(VtdsimError):
    """An IOMMU API call failed with a Linux errno (``-EPERM`` and friends).

    ``errno`` is the positive errno value; ``name`` its symbolic name.  The Linux function whose
    behaviour the failure follows is cited where the error is raised.
    """

    def __init__(self, err: int, message: str) -> None:
        self.errno = err
        self.name = _errno.errorcode.get(err, f"E{err}")
        super().__init__(f"-{self.name}: {message}")

    @property
    def retval(self) -> int:
        """The kernel-style negative return value."""
        return -self.errno


def _show(value: object) -> str:
    if isinstance(value, bool):
        return repr(value)
    if isinstance(value, int):
        return str(value) if -9 <= value <= 9 else f"{value:#x}"
    return repr(value)


def _bit_list(mask: int) -> str:
    bits = [i for i in range(mask.bit_length()) if mask >> i & 1]
    # Compress runs: 5,6,7 -> 7:5 (hardware notation, high:low)
    runs: list[str] = []
    i = 0
    while i < len(bits):
        j = i
        while j + 1 < len(bits) and bits[j + 1] == bits[j] + 1:
            j += 1
        runs.append(str(bits[i]) if i == j else f"{bits[j]}:{bits[i]}")
        i = j + 1
    return ",".join(reversed(runs))
