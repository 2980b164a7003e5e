"""Bit layouts declared as data.

Design rationale
----------------
Every VT-d structure (root and context entries, PASID directory and table entries, paging
entries, invalidation descriptors, registers, fault records) is declared exactly once, as a
:class:`Layout`: an immutable list of :class:`Field` objects, lowest bit first, each naming its
*absolute* bit range within the structure (as Linux ``pasid.h`` accessors and the VT-d spec
tables do: "bits 140:191").  Every bit a layout does not declare is reserved-zero; bits the spec
calls "ignored" are declared with ``kind="ignored"`` so that they are neither reserved nor
decoded.

From the declaration we derive, once, at import time:

* per-word masks (defined, reserved, per field) so that hot paths (the hardware walk, the
  driver's table writers) can use plain integer shifts and masks taken from the layout instead
  of hand-written magic numbers;
* ``encode`` / ``decode`` / ``validate`` with typed errors that name the structure, the 64-bit
  word and the offending bits (:class:`vtdsim.errors.ReservedBitsError`), in the habit of
  OpenVMM's ``intel_vtd`` spec structs;
* a readable ``repr`` of decoded values.

A field never crosses a 64-bit word boundary (VT-d never needs it).  ``kind="address"`` fields
hold an address *in place*: the decoded value is ``word & mask`` (for example ``SLPTPTR`` decodes
to ``0x12345000``), and only the bits below the platform's host address width may be set, which
``validate(haw=...)`` checks.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from vtdsim.errors import ArgumentError, ReservedBitsError

__all__ = ["Decoded", "Field", "Layout"]

FieldKind = Literal["value", "address", "ignored"]
_Q = (1 << 64) - 1


@dataclass(frozen=True, slots=True)
class Field:
    """One named bit range ``hi:lo`` (absolute bit numbers, inclusive) of a :class:`Layout`."""

    name: str
    lo: int
    hi: int
    doc: str = ""
    kind: FieldKind = "value"
    #: symbolic names of values, for repr and for encode-by-name
    enum: Mapping[int, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise ArgumentError("Field.name", self.name, "a Python identifier")
        if not 0 <= self.lo <= self.hi:
            raise ArgumentError(f"Field {self.name}.lo/hi", (self.lo, self.hi), "0 <= lo <= hi")
        if self.lo // 64 != self.hi // 64:
            raise ArgumentError(
                f"Field {self.name} bits {self.hi}:{self.lo}",
                (self.lo, self.hi),
                "a range inside one 64-bit word (split fields that cross a qword boundary)",
            )

    @property
    def width(self) -> int:
        return self.hi - self.lo + 1

    @property
    def word(self) -> int:
        """Index of the 64-bit word that holds the field."""
        return self.lo // 64

    @property
    def shift(self) -> int:
        """Position of the field's lowest bit inside its 64-bit word."""
        return self.lo % 64

    @property
    def mask(self) -> int:
        """The field's bits, in place, inside its 64-bit word."""
        return ((1 << self.width) - 1) << self.shift

    def extract(self, word_value: int) -> int:
        """The field's value from its word (in place for address fields)."""
        if self.kind == "address":
            return word_value & self.mask
        return (word_value >> self.shift) & ((1 << self.width) - 1)

    def insert(self, word_value: int, value: int) -> int:
        """``word_value`` with this field replaced by ``value`` (no range check)."""
        bits = value & self.mask if self.kind == "address" else (value << self.shift) & self.mask
        return (word_value & ~self.mask) | bits

    def describe(self) -> str:
        return (
            f"{self.name} [{self.hi}:{self.lo}]" if self.width > 1 else f"{self.name} [{self.lo}]"
        )


class Layout:
    """An immutable structure of ``words`` 64-bit little-endian words with named fields."""

    __slots__ = (
        "_by_name",
        "address_masks",
        "defined_masks",
        "doc",
        "fields",
        "name",
        "reserved_masks",
        "words",
    )

    name: str
    words: int
    fields: tuple[Field, ...]
    doc: str
    defined_masks: tuple[int, ...]
    reserved_masks: tuple[int, ...]
    address_masks: tuple[int, ...]
    _by_name: dict[str, Field]

    def __init__(self, name: str, words: int, fields: Sequence[Field], doc: str = "") -> None:
        if words <= 0:
            raise ArgumentError("Layout.words", words, "a positive number of 64-bit words")
        ordered = tuple(sorted(fields, key=lambda f: f.lo))
        by_name: dict[str, Field] = {}
        defined = [0] * words
        addresses = [0] * words
        for f in ordered:
            if f.name in by_name:
                raise ArgumentError(f"{name} field name", f.name, "unique field names")
            if f.hi >= words * 64:
                raise ArgumentError(
                    f"{name}.{f.name} bits", f"{f.hi}:{f.lo}", f"bits below {words * 64}"
                )
            if defined[f.word] & f.mask:
                raise ArgumentError(
                    f"{name}.{f.name} bits", f"{f.hi}:{f.lo}", "no overlap with other fields"
                )
            defined[f.word] |= f.mask
            if f.kind == "address":
                addresses[f.word] |= f.mask
            by_name[f.name] = f
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "words", words)
        object.__setattr__(self, "fields", ordered)
        object.__setattr__(self, "doc", doc)
        object.__setattr__(self, "defined_masks", tuple(defined))
        object.__setattr__(self, "reserved_masks", tuple(~m & _Q for m in defined))
        object.__setattr__(self, "address_masks", tuple(addresses))
        object.__setattr__(self, "_by_name", by_name)

    def __setattr__(self, key: str, value: object) -> None:
        raise AttributeError(f"Layout {self.name} is immutable")

    def __repr__(self) -> str:
        return f"<Layout {self.name}: {self.words * 64} bits, {len(self.fields)} fields>"

    # -- introspection -------------------------------------------------------------------------

    @property
    def size(self) -> int:
        """Size in bytes."""
        return self.words * 8

    def field(self, name: str) -> Field:
        try:
            return self._by_name[name]
        except KeyError:
            raise ArgumentError(
                f"{self.name} field", name, f"one of {', '.join(self._by_name)}"
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    # -- encode / decode -----------------------------------------------------------------------

    def encode(self, **values: int | str | bool) -> tuple[int, ...]:
        """Words with the given fields set and every other bit zero.

        Values are range-checked; enum fields also accept their symbolic name.
        """
        return self.replace((0,) * self.words, **values)

    def replace(self, words: Sequence[int], **values: int | str | bool) -> tuple[int, ...]:
        """A copy of ``words`` with the named fields replaced."""
        out = list(self._check_words(words))
        for key, raw in values.items():
            f = self.field(key)
            if f.kind == "ignored":
                raise ArgumentError(f"{self.name}.{key}", raw, "a non-ignored field")
            v = self._coerce(f, raw)
            out[f.word] = f.insert(out[f.word], v)
        return tuple(out)

    def _coerce(self, f: Field, raw: int | str | bool) -> int:
        if isinstance(raw, str):
            for k, sym in f.enum.items():
                if sym == raw:
                    return k
            raise ArgumentError(
                f"{self.name}.{f.name}", raw, f"one of {sorted(f.enum.values())} or an integer"
            )
        if not isinstance(raw, int):
            raise ArgumentError(f"{self.name}.{f.name}", raw, "an integer")
        v = int(raw)
        if f.kind == "address":
            if v < 0 or v & ~f.mask:
                raise ArgumentError(
                    f"{self.name}.{f.name}",
                    v,
                    f"an address aligned to {1 << f.shift:#x} below 2^{f.hi + 1 - 64 * f.word}",
                )
            return v
        if not 0 <= v < (1 << f.width):
            raise ArgumentError(
                f"{self.name}.{f.name}",
                v,
                f"an unsigned value of {f.width} bit(s) ({f.describe()})",
            )
        return v

    def decode(self, words: Sequence[int]) -> Decoded:
        """Decode ``words`` (no validation: reserved bits are kept in ``Decoded.words``)."""
        ws = self._check_words(words)
        return Decoded(self, ws)

    def get(self, words: Sequence[int], name: str) -> int:
        f = self.field(name)
        return f.extract(words[f.word])

    def reserved_violations(
        self, words: Sequence[int], haw: int | None = None
    ) -> list[tuple[int, int]]:
        """``[(word, bits), ...]`` for every word with reserved bits set.

        With ``haw`` (host address width), address-field bits at or above ``haw`` count as
        reserved too (VT-d treats them so).
        """
        ws = self._check_words(words)
        bad: list[tuple[int, int]] = []
        for i, w in enumerate(ws):
            res = w & self.reserved_masks[i]
            if haw is not None and haw < 64:
                res |= w & self.address_masks[i] & ~((1 << haw) - 1)
            if res:
                bad.append((i, res))
        return bad

    def validate(self, words: Sequence[int], haw: int | None = None) -> None:
        """Raise :class:`ReservedBitsError` naming the first word with reserved bits set."""
        bad = self.reserved_violations(words, haw)
        if bad:
            i, bits = bad[0]
            raise ReservedBitsError(self.name, i, bits, words[i])

    def to_bytes(self, words: Sequence[int]) -> bytes:
        ws = self._check_words(words)
        return b"".join(w.to_bytes(8, "little") for w in ws)

    def from_bytes(self, data: bytes | bytearray | memoryview) -> tuple[int, ...]:
        if len(data) != self.size:
            raise ArgumentError(f"{self.name} bytes", len(data), f"exactly {self.size} bytes")
        return tuple(int.from_bytes(data[i * 8 : i * 8 + 8], "little") for i in range(self.words))

    def _check_words(self, words: Sequence[int]) -> tuple[int, ...]:
        if len(words) != self.words:
            raise ArgumentError(
                f"{self.name} words", len(words), f"exactly {self.words} 64-bit word(s)"
            )
        for i, w in enumerate(words):
            if not isinstance(w, int) or not 0 <= w <= _Q:
                raise ArgumentError(f"{self.name} qword {i}", w, "an unsigned 64-bit integer")
        return tuple(words)


class Decoded(Mapping[str, int]):
    """The decoded, immutable view of one structure instance.

    Acts as a mapping of field name to value and supports attribute access
    (``entry.PGTT``).  ``words`` keeps the raw words (including any reserved bits).
    """

    __slots__ = ("layout", "words")

    layout: Layout
    words: tuple[int, ...]

    def __init__(self, layout: Layout, words: tuple[int, ...]) -> None:
        object.__setattr__(self, "layout", layout)
        object.__setattr__(self, "words", words)

    def __setattr__(self, key: str, value: object) -> None:
        raise AttributeError("decoded structures are immutable; use Layout.replace")

    def __getitem__(self, name: str) -> int:
        f = self.layout.field(name)
        return f.extract(self.words[f.word])

    def __getattr__(self, name: str) -> int:
        if name.startswith("_"):
            raise AttributeError(name)
        if name in self.layout:
            return self[name]
        raise AttributeError(f"{self.layout.name} has no field {name!r}")

    def __iter__(self) -> Iterator[str]:
        return (f.name for f in self.layout.fields if f.kind != "ignored")

    def __len__(self) -> int:
        return sum(1 for f in self.layout.fields if f.kind != "ignored")

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Decoded):
            return self.layout is other.layout and self.words == other.words
        return NotImplemented

    def __hash__(self) -> int:
        return hash((self.layout.name, self.words))

    def reserved_violations(self, haw: int | None = None) -> list[tuple[int, int]]:
        return self.layout.reserved_violations(self.words, haw)

    def __repr__(self) -> str:
        parts: list[str] = []
        for f in self.layout.fields:
            if f.kind == "ignored":
                continue
            v = f.extract(self.words[f.word])
            if v == 0 and not f.enum:
                continue
            if f.enum and v in f.enum:
                parts.append(f"{f.name}={v} ({f.enum[v]})")
            elif f.kind == "address" or v > 9:
                parts.append(f"{f.name}={v:#x}")
            else:
                parts.append(f"{f.name}={v}")
        bad = self.layout.reserved_violations(self.words)
        for i, bits in bad:
            parts.append(f"RESERVED(qw{i})={bits:#x}")
        return f"{self.layout.name}({', '.join(parts)})"

    def describe(self) -> list[tuple[str, str, int]]:
        """``[(field, 'hi:lo', value), ...]`` for every non-ignored field, lowest bit first."""
        rows = []
        for f in self.layout.fields:
            if f.kind == "ignored":
                continue
            rng = f"{f.hi}:{f.lo}" if f.width > 1 else f"{f.lo}"
            rows.append((f.name, rng, f.extract(self.words[f.word])))
        return rows
