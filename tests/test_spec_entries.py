"""Translation-structure layouts: known vectors, round trips, reserved-bit errors."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vtdsim.errors import ArgumentError, ReservedBitsError
from vtdsim.spec import entries as E
from vtdsim.spec.bits import Field, Layout

ALL_LAYOUTS = [
    E.ROOT_ENTRY_LEGACY,
    E.ROOT_ENTRY_SM,
    E.CONTEXT_ENTRY_LEGACY,
    E.CONTEXT_ENTRY_SM,
    E.PASID_DIR_ENTRY,
    E.PASID_ENTRY,
    E.SL_TABLE,
    E.SL_PTE_4K,
    E.SL_PDE_2M,
    E.SL_PDPE_1G,
    E.FL_TABLE,
    E.FL_PTE_4K,
    E.FL_PDE_2M,
    E.FL_PDPE_1G,
]


def test_linux_5_1_second_level_pasid_entry_vector() -> None:
    # Linux 5.1 intel_pasid_setup_second_level for DID 2, pgd 0x12345000, agaw 2 (4-level),
    # no page-walk snoop: SRE always set (fact sheet 3.3).
    words = E.PASID_ENTRY.encode(P=1, AW=2, PGTT="second-level", SLPTPTR=0x12345000, DID=2, SRE=1)
    assert words == (0x12345089, 0x2, 0x1, 0, 0, 0, 0, 0)
    d = E.PASID_ENTRY.decode(words)
    assert (d.P, d.AW, d.PGTT, d.SLPTPTR, d.DID, d.SRE) == (1, 2, 2, 0x12345000, 2, 1)
    assert "PGTT=2 (second-level)" in repr(d)


@pytest.mark.parametrize(
    ("layout", "name", "bit"),
    [
        # Linux pasid.h accessors name these absolute bits
        (E.PASID_ENTRY, "PWSNP", 87),
        (E.PASID_ENTRY, "PGSNP", 88),
        (E.PASID_ENTRY, "SRE", 128),
        (E.PASID_ENTRY, "WPE", 132),
        (E.PASID_ENTRY, "EAFE", 135),
        (E.PASID_ENTRY, "SSADE", 9),
        (E.CONTEXT_ENTRY_SM, "PASIDE", 3),
        (E.CONTEXT_ENTRY_SM, "DTE", 2),
        (E.CONTEXT_ENTRY_SM, "PRE", 4),
        (E.CONTEXT_ENTRY_SM, "RID_PRIV", 84),
        (E.ROOT_ENTRY_SM, "UP", 64),
        (E.SL_PTE_4K, "SNP", 11),
        (E.SL_PDE_2M, "PS", 7),
        (E.FL_PTE_4K, "XD", 63),
        (E.FL_PTE_4K, "US", 2),
    ],
)
def test_single_bit_positions(layout: Layout, name: str, bit: int) -> None:
    words = layout.encode(**{name: 1})
    expected = [0] * layout.words
    expected[bit // 64] = 1 << (bit % 64)
    assert words == tuple(expected)


def test_multi_bit_field_positions() -> None:
    assert E.PASID_ENTRY.encode(FLPTPTR=0xABCDE000)[2] == 0xABCDE000
    assert E.PASID_ENTRY.encode(FLPM=1)[2] == 1 << 2
    assert E.PASID_ENTRY.encode(DID=0xFFFF)[1] == 0xFFFF
    assert E.CONTEXT_ENTRY_SM.encode(PDTS=7)[0] == 7 << 9
    assert E.CONTEXT_ENTRY_SM.encode(RID_PASID=0xFFFFF)[1] == 0xFFFFF
    assert E.ROOT_ENTRY_SM.encode(UCTP=0x5000) == (0, 0x5000)
    assert E.CONTEXT_ENTRY_LEGACY.encode(DID=0x1234, AW=2)[1] == (0x1234 << 8) | 2


@pytest.mark.parametrize("layout", ALL_LAYOUTS, ids=lambda lay: lay.name)
def test_every_undeclared_bit_is_reserved(layout: Layout) -> None:
    for word in range(layout.words):
        for bit in range(64):
            value = 1 << bit
            words = tuple(value if i == word else 0 for i in range(layout.words))
            declared = layout.defined_masks[word] & value
            if declared:
                layout.validate(words)
            else:
                with pytest.raises(ReservedBitsError) as info:
                    layout.validate(words)
                assert info.value.word == word
                assert info.value.bits == value
                assert layout.name in str(info.value)


def test_reserved_error_names_word_and_bits() -> None:
    words = (0x1 | 0x20, 0, 0, 0, 0, 0, 0, 1 << 5)
    with pytest.raises(ReservedBitsError, match=r"PasidEntry qword 0 .*bits 5"):
        E.PASID_ENTRY.validate(words)
    bad = E.PASID_ENTRY.reserved_violations(words)
    assert bad == [(0, 0x20), (7, 0x20)]


def test_address_bits_above_haw_are_reserved_when_asked() -> None:
    words = E.PASID_DIR_ENTRY.encode(P=1, SMPTBLPTR=1 << 47)
    E.PASID_DIR_ENTRY.validate(words)  # no haw: the field is defined
    with pytest.raises(ReservedBitsError):
        E.PASID_DIR_ENTRY.validate(words, haw=46)
    E.PASID_DIR_ENTRY.validate(words, haw=48)


def test_superpage_low_address_bits_are_reserved() -> None:
    # a 2 MiB leaf's bits 20:12 are reserved (VT-d 9.8)
    with pytest.raises(ReservedBitsError):
        E.SL_PDE_2M.validate((0x201000 | 0x83,))
    E.SL_PDE_2M.validate((0x200000 | 0x83,))
    with pytest.raises(ReservedBitsError):
        E.SL_PDPE_1G.validate((0x40200000 | 0x83,))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"DID": 1 << 16}, r"DID=0x10000 .*16 bit"),
        ({"SLPTPTR": 0x1234}, r"SLPTPTR=0x1234 .*aligned to 0x1000"),
        ({"PGTT": "fourth-level"}, r"PGTT='fourth-level'.*one of"),
        ({"NOPE": 1}, r"field=?'?NOPE"),
        ({"P": -1}, r"P=-1"),
        ({"IGN_134_133": 1}, r"non-ignored field"),
    ],
)
def test_encode_rejects_bad_values(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ArgumentError, match=message):
        E.PASID_ENTRY.encode(**kwargs)  # type: ignore[arg-type]


def test_decode_rejects_wrong_word_count_and_range() -> None:
    with pytest.raises(ArgumentError, match="exactly 8"):
        E.PASID_ENTRY.decode((0, 0))
    with pytest.raises(ArgumentError, match="unsigned 64-bit"):
        E.PASID_DIR_ENTRY.decode((1 << 64,))


def test_layout_declaration_errors() -> None:
    with pytest.raises(ArgumentError, match="no overlap"):
        Layout("X", 1, [Field("A", 0, 3), Field("B", 3, 4)])
    with pytest.raises(ArgumentError, match="inside one 64-bit word"):
        Field("C", 60, 70)
    with pytest.raises(ArgumentError, match="below 64"):
        Layout("Y", 1, [Field("D", 64, 65)])
    with pytest.raises(AttributeError):
        E.PASID_ENTRY.name = "other"  # type: ignore[misc]


def test_bytes_round_trip_is_little_endian() -> None:
    words = E.ROOT_ENTRY_SM.encode(LP=1, LCTP=0x1000)
    raw = E.ROOT_ENTRY_SM.to_bytes(words)
    assert raw[:8] == (0x1001).to_bytes(8, "little")
    assert E.ROOT_ENTRY_SM.from_bytes(raw) == words
    with pytest.raises(ArgumentError, match="exactly 16 bytes"):
        E.ROOT_ENTRY_SM.from_bytes(raw[:8])


@st.composite
def layout_and_values(draw: st.DrawFn) -> tuple[Layout, dict[str, int]]:
    layout = draw(st.sampled_from(ALL_LAYOUTS))
    values: dict[str, int] = {}
    for f in layout.fields:
        if f.kind == "ignored" or not draw(st.booleans()):
            continue
        raw = draw(st.integers(0, (1 << f.width) - 1))
        values[f.name] = raw << f.shift if f.kind == "address" else raw
    return layout, values


@given(layout_and_values())
def test_encode_decode_round_trip(case: tuple[Layout, dict[str, int]]) -> None:
    layout, values = case
    words = layout.encode(**values)
    layout.validate(words)
    decoded = layout.decode(words)
    for f in layout.fields:
        if f.kind != "ignored":
            assert decoded[f.name] == values.get(f.name, 0)
    assert layout.from_bytes(layout.to_bytes(words)) == words
    assert layout.encode(**dict(decoded)) == words


@given(st.sampled_from(ALL_LAYOUTS), st.data())
def test_decode_keeps_raw_words(layout: Layout, data: st.DataObject) -> None:
    words = tuple(data.draw(st.integers(0, (1 << 64) - 1)) for _ in range(layout.words))
    d = layout.decode(words)
    assert d.words == words
    clean = tuple(w & m for w, m in zip(words, layout.defined_masks, strict=True))
    assert layout.reserved_violations(clean) == []
