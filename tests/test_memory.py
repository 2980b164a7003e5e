"""Physical memory, raw images and the frame allocator."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vtdsim.errors import ArgumentError, MemoryAccessError, VtdsimError
from vtdsim.hw.memory import PAGE_SIZE, FrameAllocator, OutOfFrames, PhysicalMemory


def test_unwritten_memory_reads_zero_and_costs_nothing() -> None:
    m = PhysicalMemory(1 << 40)
    assert m.read64(0xFF_4567_8000) == 0
    assert m.read(0xFFF, 3) == b"\0\0\0"
    assert list(m.present_pages()) == []


def test_little_endian_access_widths() -> None:
    m = PhysicalMemory(1 << 20)
    m.write64(0x1000, 0x1122334455667788)
    assert m.read(0x1000, 8) == bytes.fromhex("8877665544332211")
    assert m.read32(0x1004) == 0x11223344
    assert m.read8(0x1007) == 0x11
    m.write32(0x1000, 0xAABBCCDD)
    assert m.read64(0x1000) == 0x11223344AABBCCDD
    m.write8(0x1001, 0x00)
    assert m.read64(0x1000) == 0x11223344AABB00DD


def test_unaligned_and_page_crossing_qwords() -> None:
    m = PhysicalMemory(1 << 20)
    m.write64(0x1FFC, 0x0102030405060708)
    assert m.read64(0x1FFC) == 0x0102030405060708
    assert m.read32(0x2000) == 0x01020304
    assert m.read_qwords(0x1FF8, 2) == (0x0506070800000000, 0x01020304)


def test_out_of_range_access_is_a_typed_error_and_changes_nothing() -> None:
    m = PhysicalMemory(0x2000)
    m.write64(0x1FF8, 7)
    with pytest.raises(MemoryAccessError, match=r"0x1ffc.*0x2000"):
        m.write64(0x1FFC, 1)
    with pytest.raises(MemoryAccessError):
        m.write(0x1FF0, b"x" * 32)
    assert m.read64(0x1FF8) == 7
    with pytest.raises(MemoryAccessError):
        m.read64(0x2000)
    with pytest.raises(MemoryAccessError):
        m.read64(-8)
    with pytest.raises(ArgumentError, match="unsigned 64-bit"):
        m.write64(0, 1 << 64)
    with pytest.raises(ArgumentError, match="multiple of 4096"):
        PhysicalMemory(1000)


def test_write_qwords_checks_everything_before_writing() -> None:
    m = PhysicalMemory(1 << 20)
    with pytest.raises(ArgumentError):
        m.write_qwords(0x1000, [1, 2, -3])
    assert m.read64(0x1000) == 0


def test_page_array_is_a_live_view() -> None:
    m = PhysicalMemory(1 << 20)
    arr = m.page_array(0x3000)
    arr[5] = 0xDEAD
    assert m.read64(0x3000 + 40) == 0xDEAD
    m.write64(0x3000 + 48, 9)
    assert int(arr[6]) == 9
    with pytest.raises(ArgumentError, match="4 KiB aligned"):
        m.page_array(0x3008)


def test_snapshot_restore() -> None:
    m = PhysicalMemory(1 << 20)
    m.write64(0x1000, 1)
    snap = m.snapshot()
    m.write64(0x1000, 2)
    m.write64(0x5000, 3)
    m.restore(snap)
    assert (m.read64(0x1000), m.read64(0x5000)) == (1, 0)


def test_export_is_sparse_and_import_round_trips(tmp_path: Path) -> None:
    m = PhysicalMemory(1 << 30)
    m.write64(0x1000, 0xABCDEF)
    m.write(0x3FFF_F000, b"tail")
    img = tmp_path / "mem.img"
    m.export_image(img)
    assert img.stat().st_size == 1 << 30
    assert img.stat().st_blocks * 512 < 1 << 20  # holes, not 1 GiB of zeroes
    with open(img, "rb") as f:
        f.seek(0x1000)
        assert int.from_bytes(f.read(8), "little") == 0xABCDEF
    back = PhysicalMemory.from_image(img)
    assert back.size == 1 << 30
    assert back.read64(0x1000) == 0xABCDEF
    assert back.read(0x3FFF_F000, 4) == b"tail"
    # writes go to an overlay: the file is never modified
    back.write64(0x1000, 5)
    assert back.read64(0x1000) == 5
    assert PhysicalMemory.from_image(img).read64(0x1000) == 0xABCDEF
    back.close()


def test_image_with_partial_tail_page_and_errors(tmp_path: Path) -> None:
    img = tmp_path / "odd.img"
    img.write_bytes(b"\x01" * (PAGE_SIZE + 10))
    m = PhysicalMemory.from_image(img)
    assert m.size == 2 * PAGE_SIZE
    assert m.read(PAGE_SIZE + 8, 4) == b"\x01\x01\0\0"
    with pytest.raises(MemoryAccessError):
        m.read64(2 * PAGE_SIZE)
    empty = tmp_path / "empty.img"
    empty.write_bytes(b"")
    with pytest.raises(VtdsimError, match="empty"):
        PhysicalMemory.from_image(empty)
    with pytest.raises(VtdsimError, match="cannot open"):
        PhysicalMemory.from_image(tmp_path / "missing.img")


def test_large_sparse_image_is_not_read_whole(tmp_path: Path) -> None:
    img = tmp_path / "big.img"
    with open(img, "wb") as f:
        f.truncate(8 << 30)  # 8 GiB of holes
        f.seek(5 << 30)
        f.write((0x42).to_bytes(8, "little"))
    m = PhysicalMemory.from_image(img)
    assert m.read64(5 << 30) == 0x42
    assert m.read64(7 << 30) == 0
    assert len(m._pages) == 0  # nothing copied into the overlay
    m.close()
    os.unlink(img)


@given(st.lists(st.tuples(st.integers(0, (1 << 20) - 16), st.binary(min_size=1, max_size=9000))))
def test_byte_writes_match_a_reference_bytearray(writes: list[tuple[int, bytes]]) -> None:
    m = PhysicalMemory(1 << 21)
    ref = bytearray(1 << 21)
    for addr, data in writes:
        m.write(addr, data)
        ref[addr : addr + len(data)] = data
    for addr, data in writes:
        assert m.read(addr, len(data)) == bytes(ref[addr : addr + len(data)])
        aligned = addr & ~7
        assert m.read64(aligned) == int.from_bytes(ref[aligned : aligned + 8], "little")


def test_frame_allocator_zeroes_aligns_and_accounts() -> None:
    m = PhysicalMemory(1 << 24)
    fa = FrameAllocator(m, 0x10_0000, 0x20_0000)
    a = fa.alloc(0, "pgtable")
    m.write64(a, 0xFFFF)
    fa.free(a)
    b = fa.alloc(0, "pgtable")
    assert b == a and m.read64(b) == 0  # reused and zeroed
    big = fa.alloc(5, "pasid-dir")
    assert big % (PAGE_SIZE << 5) == 0
    assert fa.count() == 2 and fa.count("pasid-dir") == 1
    assert fa.owner(big + 0x1F000) == "pasid-dir"
    stats = fa.statistics()
    assert stats.allocated_frames == 33
    assert dict(stats.by_tag) == {"pgtable": 1, "pasid-dir": 1}
    with pytest.raises(ArgumentError, match="live block"):
        fa.free(a + PAGE_SIZE * 7)
    fa.free(big)
    with pytest.raises(ArgumentError, match="live block"):
        fa.free(big)  # double free is detected


def test_frame_allocator_exhaustion_and_injection() -> None:
    m = PhysicalMemory(1 << 24)
    fa = FrameAllocator(m, 0x10_0000, 0x10_3000)
    frames = [fa.alloc() for _ in range(3)]
    with pytest.raises(OutOfFrames):
        fa.alloc()
    fa.free(frames[1])
    calls: list[tuple[str, int]] = []

    def fail(tag: str, order: int) -> bool:
        calls.append((tag, order))
        return tag == "pasid-table"

    fa.fail_hook = fail
    with pytest.raises(OutOfFrames, match="injected"):
        fa.alloc(0, "pasid-table")
    assert fa.alloc(0, "pgtable") == frames[1]
    assert calls == [("pasid-table", 0), ("pgtable", 0)]
    assert fa.statistics().failures == 2
