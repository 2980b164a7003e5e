"""Physical memory: sparse, page-granular, little-endian, optionally backed by a raw image.

Design rationale
----------------
The remapping hardware reads every table through this object, so its qword read is the hottest
function in vtdsim.  Each present 4 KiB page is a ``bytearray`` plus a ``memoryview`` cast to
unsigned 64-bit words, so an aligned qword read is one dict lookup and one index
(``self._q[pfn][off >> 3]``), with no slicing and no ``int.from_bytes``.  Pages never written
read as zero and cost nothing.  Numpy views (:meth:`PhysicalMemory.page_array`) share the same
buffers, for batch page-table writes.

A raw image (byte *i* of the file is physical address *i*: QEMU ``pmemsave``, ``/dev/mem``
dumps) is opened with ``mmap`` read-only; its pages are viewed lazily, never read whole, and a
write copies the touched page into the sparse overlay, so the file is never modified.

Accesses beyond ``size`` raise :class:`vtdsim.errors.MemoryAccessError`; the remapping unit
turns that into the architectural fault (for example "root table access error").
"""

from __future__ import annotations

import mmap
import os
import struct
import sys
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from vtdsim.errors import ArgumentError, MemoryAccessError, VtdsimError

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

__all__ = [
    "PAGE_SHIFT",
    "PAGE_SIZE",
    "FrameAllocator",
    "FrameAllocatorStatistics",
    "OutOfFrames",
    "PhysicalMemory",
]

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
_PAGE_MASK = PAGE_SIZE - 1
_Q = (1 << 64) - 1
_D32 = (1 << 32) - 1
_ZERO_PAGE = bytes(PAGE_SIZE)

if sys.byteorder != "little":  # pragma: no cover - every VT-d host is little-endian
    raise ImportError("vtdsim.hw.memory needs a little-endian host (memoryview 'Q' casts)")


#: n -> ``struct.Struct(f"={n}Q").pack`` (PhysicalMemory.write_qwords)
_PACK: dict[int, Callable[..., bytes]] = {}
#: one little-endian dword (PhysicalMemory.write32's hot path)
_PACK_U32 = struct.Struct("<I").pack_into


class PhysicalMemory:
    """A sparse 64-bit physical address space of ``size`` bytes (a multiple of 4 KiB)."""

    __slots__ = (
        "_image",
        "_image_mv",
        "_image_pages",
        "_pages",
        "_q",
        "qword_pages",
        "size",
        "written_pages",
    )

    #: Hot-path view for the page walker and the invalidation queue: pfn -> that page as 512
    #: qwords (a ``'Q'`` memoryview) for every page already materialised.  A pfn missing from
    #: it must be read through :meth:`read64` (never-written page, unmapped image page, or out
    #: of range).  Read-only use; fetch it per walk (``close`` replaces the dict).  A plain
    #: attribute (the same dict as ``_q``), not a property: no call per access.
    qword_pages: dict[int, memoryview]
    #: Hot-path view for stores (the unit's wait-descriptor status writes, the driver's
    #: invalidation-queue and PASID-entry writes): pfn -> the bytes (little-endian) of every
    #: page already written (the same dict as ``_pages``; such a page lies inside memory).
    #: Storing valid little-endian values into those bytes is what :meth:`write32` /
    #: :meth:`write64` / :meth:`write_qwords` do for them; never add or remove entries, and
    #: write through those methods for any pfn missing from it.
    written_pages: dict[int, bytearray]

    def __init__(self, size: int = 1 << 32) -> None:
        if not isinstance(size, int) or size <= 0 or size & _PAGE_MASK or size > 1 << 64:
            raise ArgumentError("size", size, "a positive multiple of 4096 no larger than 2^64")
        self.size = size
        self._pages: dict[int, bytearray] = {}
        self.written_pages = self._pages
        self._q: dict[int, memoryview] = {}
        self.qword_pages = self._q
        self._image: mmap.mmap | None = None
        self._image_mv: memoryview | None = None
        self._image_pages = 0

    # -- images ------------------------------------------------------------------------------

    @classmethod
    def from_image(cls, path: str | os.PathLike[str], size: int | None = None) -> PhysicalMemory:
        """Open a raw image read-only through mmap.  ``size`` defaults to the file's size
        rounded up to a page; bytes past the end of the file read as zero."""
        p = Path(path)
        try:
            fd = os.open(p, os.O_RDONLY)
        except OSError as e:
            raise VtdsimError(f"cannot open memory image {str(p)!r}: {e.strerror}") from None
        try:
            length = os.fstat(fd).st_size
            if length == 0:
                raise VtdsimError(f"memory image {str(p)!r} is empty: expected a raw image")
            mm = mmap.mmap(fd, length, access=mmap.ACCESS_READ)
        finally:
            os.close(fd)
        extent = (length + _PAGE_MASK) & ~_PAGE_MASK
        mem = cls(size if size is not None else extent)
        mem._image = mm
        mem._image_mv = memoryview(mm)
        mem._image_pages = length // PAGE_SIZE  # whole pages only; a tail is copied on demand
        tail_pfn = length // PAGE_SIZE
        # (a tail beyond a smaller ``size`` is never installed: every materialised page lies
        # inside memory, which the read64/write32/write_qwords hot paths rely on)
        if length % PAGE_SIZE and tail_pfn < mem.size >> PAGE_SHIFT:
            buf = bytearray(PAGE_SIZE)
            buf[: length % PAGE_SIZE] = mm[tail_pfn * PAGE_SIZE : length]
            mem._install(tail_pfn, buf)
        return mem

    def close(self) -> None:
        """Release the image mapping (views made from it become invalid)."""
        self._q = {k: v for k, v in self._q.items() if k in self._pages}
        self.qword_pages = self._q
        if self._image_mv is not None:
            self._image_mv.release()
            self._image_mv = None
        if self._image is not None:
            self._image.close()
            self._image = None
        self._image_pages = 0

    def export_image(self, path: str | os.PathLike[str], size: int | None = None) -> None:
        """Write a raw image (byte *i* = address *i*) of ``size`` bytes (default: all of
        memory), sparse: pages never written become holes."""
        n = self.size if size is None else size
        if not isinstance(n, int) or n <= 0 or n > self.size:
            raise ArgumentError("size", size, f"a positive byte count up to {self.size:#x}")
        with open(path, "wb") as f:
            for pfn in sorted(self.present_pages()):
                base = pfn << PAGE_SHIFT
                if base >= n:
                    break
                data = self._page_bytes(pfn)
                if not any(data):
                    continue
                f.seek(base)
                f.write(data[: min(PAGE_SIZE, n - base)])
            f.truncate(n)

    # -- page plumbing -----------------------------------------------------------------------

    def _install(self, pfn: int, buf: bytearray) -> memoryview:
        self._pages[pfn] = buf
        q = memoryview(buf).cast("Q")
        self._q[pfn] = q
        return q

    def _image_q(self, pfn: int) -> memoryview | None:
        if self._image_mv is None or pfn >= self._image_pages:
            return None
        q = self._image_mv[pfn << PAGE_SHIFT : (pfn + 1) << PAGE_SHIFT].cast("Q")
        self._q[pfn] = q
        return q

    def _page_bytes(self, pfn: int) -> bytes | bytearray | memoryview:
        buf = self._pages.get(pfn)
        if buf is not None:
            return buf
        q = self._q.get(pfn) or self._image_q(pfn)
        return q.cast("B") if q is not None else bytes(PAGE_SIZE)

    def _writable(self, pfn: int) -> memoryview:
        buf = self._pages.get(pfn)
        if buf is not None:
            return self._q[pfn]
        if self._image_mv is None:  # no image: a page never written is zeros (as below)
            buf = bytearray(PAGE_SIZE)
            self._pages[pfn] = buf
            q = self._q[pfn] = memoryview(buf).cast("Q")
            return q
        src = self._q.get(pfn) or self._image_q(pfn)
        return self._install(
            pfn, bytearray(src.cast("B")) if src is not None else bytearray(PAGE_SIZE)
        )

    def present_pages(self) -> Iterator[int]:
        """Page frame numbers that hold data (written pages and image pages)."""
        seen = set(self._pages)
        yield from self._pages
        if self._image is not None:
            for pfn in range(self._image_pages):
                if pfn not in seen:
                    yield pfn

    def _check(self, addr: int, n: int) -> None:
        if not isinstance(addr, int) or addr < 0 or addr + n > self.size:
            if not isinstance(addr, int):
                raise ArgumentError("address", addr, "an integer physical address")
            raise MemoryAccessError(addr, n, self.size)

    # -- qword / dword / byte access --------------------------------------------------------

    def read64(self, addr: int) -> int:
        """Aligned or unaligned little-endian qword read."""
        if type(addr) is int and not addr & 7:
            q = self._q.get(addr >> PAGE_SHIFT)
            if q is not None:
                # Hot path: a materialised page (written or image) lies inside memory, and
                # no negative page number is ever materialised.
                return q[(addr & _PAGE_MASK) >> 3]
            if self._image_mv is None and addr >= 0 and addr + 8 <= self.size:
                return 0  # a page never written, and no image: reads as zero (as below)
        if addr & 7 or addr < 0 or addr + 8 > self.size:
            self._check(addr, 8)
            return int.from_bytes(self.read(addr, 8), "little")
        pfn = addr >> PAGE_SHIFT
        q = self._q.get(pfn)
        if q is None:
            q = self._image_q(pfn)
            if q is None:
                return 0
        return int(q[(addr & _PAGE_MASK) >> 3])

    def write64(self, addr: int, value: int) -> None:
        if type(value) is not int or value < 0 or value > _Q:  # exact int: the common case
            if not isinstance(value, int) or not 0 <= value <= _Q:
                raise ArgumentError("value", value, "an unsigned 64-bit integer")
            value = int(value)
        if addr & 7 or addr < 0 or addr + 8 > self.size:
            self._check(addr, 8)
            self.write(addr, value.to_bytes(8, "little"))
            return
        pfn = addr >> PAGE_SHIFT
        if pfn in self._pages:
            self._q[pfn][(addr & _PAGE_MASK) >> 3] = value
        elif self._image_mv is None:
            # _writable(pfn) inlined for memory without an image: a page never written is
            # materialised as zeros
            buf = bytearray(PAGE_SIZE)
            self._pages[pfn] = buf
            q = self._q[pfn] = memoryview(buf).cast("Q")
            q[(addr & _PAGE_MASK) >> 3] = value
        else:
            self._writable(pfn)[(addr & _PAGE_MASK) >> 3] = value

    def read_qwords(self, addr: int, count: int) -> tuple[int, ...]:
        """``count`` consecutive aligned qwords (a whole table entry) in one call."""
        if addr & 7 or addr < 0 or addr + 8 * count > self.size or count <= 0:
            if count <= 0:
                raise ArgumentError("count", count, "a positive number of qwords")
            self._check(addr, 8 * count)
            return tuple(self.read64(addr + 8 * i) for i in range(count))
        pfn = addr >> PAGE_SHIFT
        i = (addr & _PAGE_MASK) >> 3
        if i + count > 512:
            return tuple(self.read64(addr + 8 * k) for k in range(count))
        q = self._q.get(pfn)
        if q is None:
            q = self._image_q(pfn)
            if q is None:
                return (0,) * count
        return tuple(q[i : i + count])

    def write_qwords(self, addr: int, values: tuple[int, ...] | list[int]) -> None:
        """Write consecutive qwords; all values are checked before any is written.

        Hot path (table entries, invalidation descriptors): an aligned run inside one page is
        one slice assignment; ``array('Q', ...)`` performs the range check itself.
        """
        n = len(values)
        if type(addr) is int and not addr & 7 and 0 < n <= 512 - ((addr & _PAGE_MASK) >> 3):
            buf = self._pages.get(addr >> PAGE_SHIFT)
            if buf is not None:
                # Hot path: an aligned run inside one written page (written pages lie inside
                # memory; no negative page number is ever written): the values packed (native
                # order, as the 'Q' views; every value range-checked before any byte is
                # stored), then one same-size slice assignment into the page's bytes.
                # (struct.pack_into zero-fills its destination before it range-checks.)
                pack = _PACK.get(n)
                if pack is None:
                    pack = _PACK[n] = struct.Struct(f"={n}Q").pack
                try:
                    data = pack(*values)
                except struct.error:
                    pass  # the checking path below raises the typed error
                else:
                    off = addr & _PAGE_MASK
                    buf[off : off + 8 * n] = data
                    return
        if type(addr) is int and not addr & 7 and addr >= 0 and addr + 8 * n <= self.size:
            i = (addr & _PAGE_MASK) >> 3
            if 0 < n <= 512 - i:
                try:
                    packed = array("Q", values)
                except (OverflowError, TypeError):
                    pass  # fall through to the checking path for a typed error
                else:
                    pfn = addr >> PAGE_SHIFT
                    q = self._q.get(pfn) if pfn in self._pages else self._writable(pfn)
                    assert q is not None
                    q[i : i + n] = packed
                    return
        for v in values:
            if not isinstance(v, int) or not 0 <= v <= _Q:
                raise ArgumentError("value", v, "an unsigned 64-bit integer")
        self._check(addr, 8 * len(values))
        for k, v in enumerate(values):
            self.write64(addr + 8 * k, v)

    def page_for_store(self, addr: int) -> bytearray:
        """The bytes of the page holding ``addr`` (inside memory, checked), materialised as
        the first :meth:`write64` / :meth:`write_qwords` into it would (a copy of its image
        page, else zeros): a caller that stores valid little-endian values into them does what
        those methods do.  The page is then in :attr:`written_pages`."""
        if type(addr) is not int or addr < 0 or addr >= self.size:
            self._check(addr, 1)
        pfn = addr >> PAGE_SHIFT
        buf = self._pages.get(pfn)
        if buf is None:
            if self._image_mv is None:  # _writable(pfn) inlined: no image, zeros
                buf = bytearray(PAGE_SIZE)
                self._pages[pfn] = buf
                self._q[pfn] = memoryview(buf).cast("Q")
            else:
                self._writable(pfn)
                buf = self._pages[pfn]
        return buf

    def read32(self, addr: int) -> int:
        return int.from_bytes(self.read(addr, 4), "little")

    def write32(self, addr: int, value: int) -> None:
        if type(addr) is int and type(value) is int and not addr & 3 and 0 <= value <= _D32:
            buf = self._pages.get(addr >> PAGE_SHIFT)
            if buf is not None:
                # Hot path (a wait descriptor's status write): an aligned dword of a written
                # page (written pages lie inside memory; no negative page number is ever
                # written), stored as its 4 little-endian bytes in one pack_into (the bytes
                # the qword read-modify-write below produces).  The value is checked first:
                # pack_into zero-fills its destination before it range-checks.
                _PACK_U32(buf, addr & _PAGE_MASK, value)
                return
        if type(value) is not int or value < 0 or value > 0xFFFF_FFFF:  # exact int: common
            if not isinstance(value, int) or not 0 <= value <= 0xFFFF_FFFF:
                raise ArgumentError("value", value, "an unsigned 32-bit integer")
            value = int(value)
        if type(addr) is int and not addr & 3 and addr >= 0 and addr + 4 <= self.size:
            # aligned dword: read-modify-write of its qword through the page's 'Q' view
            pfn = addr >> PAGE_SHIFT
            q = self._q[pfn] if pfn in self._pages else self._writable(pfn)
            i = (addr & _PAGE_MASK) >> 3
            sh = (addr & 4) << 3
            q[i] = (q[i] & ~(0xFFFF_FFFF << sh)) | int(value) << sh
            return
        self.write(addr, value.to_bytes(4, "little"))

    def read8(self, addr: int) -> int:
        return self.read(addr, 1)[0]

    def write8(self, addr: int, value: int) -> None:
        if not isinstance(value, int) or not 0 <= value <= 0xFF:
            raise ArgumentError("value", value, "an unsigned 8-bit integer")
        self.write(addr, bytes((value,)))

    def read(self, addr: int, n: int) -> bytes:
        """``n`` bytes from ``addr``; may cross pages."""
        if not isinstance(n, int) or n < 0:
            raise ArgumentError("length", n, "a non-negative byte count")
        self._check(addr, n)
        out = bytearray()
        while n:
            pfn, off = addr >> PAGE_SHIFT, addr & _PAGE_MASK
            k = min(n, PAGE_SIZE - off)
            out += self._page_bytes(pfn)[off : off + k]
            addr += k
            n -= k
        return bytes(out)

    def write(self, addr: int, data: bytes | bytearray | memoryview) -> None:
        """Write ``data`` at ``addr``; may cross pages.  Checked before anything is written."""
        n = len(data)
        self._check(addr, n)
        pos = 0
        while pos < n:
            pfn, off = addr >> PAGE_SHIFT, addr & _PAGE_MASK
            k = min(n - pos, PAGE_SIZE - off)
            self._writable(pfn)
            self._pages[pfn][off : off + k] = data[pos : pos + k]
            addr += k
            pos += k

    def fill(self, addr: int, n: int, byte: int = 0) -> None:
        self.write(addr, bytes((byte,)) * n)

    def zero_page(self, addr: int) -> None:
        """Zero the 4 KiB page at ``addr`` (page aligned)."""
        self.zero_pages(addr, 1)

    def zero_pages(self, addr: int, count: int) -> None:
        """Zero ``count`` consecutive 4 KiB pages from ``addr`` (page aligned); checked once.
        A page never written (and not in an image) already reads as zero: nothing to do."""
        if addr & _PAGE_MASK:
            raise ArgumentError("address", addr, "a 4 KiB aligned address")
        self._check(addr, PAGE_SIZE * count)
        pages = self._pages
        first = addr >> PAGE_SHIFT
        image_end = self._image_pages if self._image is not None else 0
        for pfn in range(first, first + count):
            buf = pages.get(pfn)
            if buf is not None:
                buf[:] = _ZERO_PAGE
            elif pfn < image_end:
                self._install(pfn, bytearray(PAGE_SIZE))

    def page_array(self, addr: int) -> npt.NDArray[np.uint64]:
        """A writable numpy ``uint64[512]`` view of the page at ``addr`` (batch table writes)."""
        import numpy as np

        if addr & _PAGE_MASK:
            raise ArgumentError("address", addr, "a 4 KiB aligned address")
        self._check(addr, PAGE_SIZE)
        pfn = addr >> PAGE_SHIFT
        self._writable(pfn)
        return np.frombuffer(self._pages[pfn], dtype="<u8")

    # -- snapshots (explorer, tests) -----------------------------------------------------------

    def snapshot(self) -> dict[int, bytes]:
        """An immutable copy of the written pages (the image is read-only and not copied)."""
        return {pfn: bytes(buf) for pfn, buf in self._pages.items()}

    def restore(self, snap: dict[int, bytes]) -> None:
        """Return to a :meth:`snapshot` (pages written since are dropped)."""
        self._pages.clear()
        self._q.clear()
        for pfn, data in snap.items():
            self._install(pfn, bytearray(data))

    def __repr__(self) -> str:
        img = " image-backed" if self._image is not None else ""
        return f"<PhysicalMemory {self.size:#x} bytes, {len(self._pages)} pages written{img}>"


# --------------------------------------------------------------------------------------------
# The OS side's page allocator.
# --------------------------------------------------------------------------------------------


class OutOfFrames(VtdsimError):
    """The frame allocator has no free block of the requested order (or an injected failure).

    The driver maps this to ``-ENOMEM`` as Linux ``alloc_pgtable_page`` failures are."""

    def __init__(self, order: int, tag: str, injected: bool = False) -> None:
        self.order = order
        self.tag = tag
        self.injected = injected
        why = "injected failure" if injected else "no free block"
        super().__init__(f"frame allocation of order {order} for {tag or 'untagged'}: {why}")


@dataclass(frozen=True, slots=True)
class FrameAllocatorStatistics:
    allocated_frames: int
    allocations: int
    frees: int
    failures: int
    by_tag: tuple[tuple[str, int], ...]


class FrameAllocator:
    """Hands out zeroed 4 KiB frames (and 2^order blocks) from ``[start, end)`` of memory.

    Like Linux ``alloc_pages(__GFP_ZERO)``: a block of order *k* is ``2^k`` contiguous,
    naturally aligned frames.  Every live block is recorded with its tag (``"pgtable"``,
    ``"pasid-table"``...) so that tests can prove nothing leaks.  ``fail_hook(tag, order)``,
    when set and returning True, makes the allocation fail (fault injection).
    """

    def __init__(self, memory: PhysicalMemory, start: int, end: int) -> None:
        if start & _PAGE_MASK or end & _PAGE_MASK or not 0 <= start < end <= memory.size:
            raise ArgumentError(
                "frame range", (start, end), f"page-aligned 0 <= start < end <= {memory.size:#x}"
            )
        self.memory = memory
        self.start = start
        self.end = end
        self._next = start
        self._free: dict[int, list[int]] = {}
        self.live: dict[int, tuple[int, str]] = {}
        self.fail_hook: Callable[[str, int], bool] | None = None
        self._allocs = 0
        self._frees = 0
        self._failures = 0

    def alloc(self, order: int = 0, tag: str = "") -> int:
        """The physical address of a zeroed block of ``2^order`` frames."""
        if (type(order) is not int or not 0 <= order <= 10) and (  # exact int: no isinstance
            not isinstance(order, int) or not 0 <= order <= 10
        ):
            raise ArgumentError("order", order, "an integer in 0..10")
        hook = self.fail_hook
        if hook is not None and hook(tag, order):
            self._failures += 1
            raise OutOfFrames(order, tag, injected=True)
        size = PAGE_SIZE << order
        free = self._free.get(order)
        if free:
            addr = free.pop()
        else:
            nxt = self._next
            addr = (nxt + size - 1) & ~(size - 1)
            if addr + size > self.end:
                self._failures += 1
                raise OutOfFrames(order, tag)
            if addr != nxt:  # frames skipped for alignment go to the order-0 free list
                for skipped in range(nxt, addr, PAGE_SIZE):
                    self._free.setdefault(0, []).append(skipped)
            self._next = addr + size
        mem = self.memory
        if order:
            mem.zero_pages(addr, 1 << order)
        else:
            # zero_pages(addr, 1) inlined for one frame (inside memory: the range was checked
            # at construction): a written page is zeroed, an image page materialised as
            # zeros, a page never written already reads as zero
            pfn = addr >> PAGE_SHIFT
            buf = mem.written_pages.get(pfn)
            if buf is not None:
                buf[:] = _ZERO_PAGE
            elif mem._image is not None and pfn < mem._image_pages:
                mem._install(pfn, bytearray(PAGE_SIZE))
        self.live[addr] = (order, tag)
        self._allocs += 1
        return addr

    def free(self, addr: int) -> None:
        """Return a block obtained from :meth:`alloc` (freeing twice is an error)."""
        entry = self.live.pop(addr, None)
        if entry is None:
            raise ArgumentError("address", addr, "the address of a live block from alloc()")
        order, _tag = entry
        self._free.setdefault(order, []).append(addr)
        self._frees += 1

    def owner(self, addr: int) -> str | None:
        """Tag of the live block that holds ``addr``, if any."""
        for base, (order, tag) in self.live.items():
            if base <= addr < base + (PAGE_SIZE << order):
                return tag
        return None

    def count(self, tag: str | None = None) -> int:
        """Number of live blocks (with ``tag``, if given)."""
        if tag is None:
            return len(self.live)
        return sum(1 for _o, t in self.live.values() if t == tag)

    def statistics(self) -> FrameAllocatorStatistics:
        tags: dict[str, int] = {}
        frames = 0
        for order, tag in self.live.values():
            tags[tag] = tags.get(tag, 0) + 1
            frames += 1 << order
        return FrameAllocatorStatistics(
            allocated_frames=frames,
            allocations=self._allocs,
            frees=self._frees,
            failures=self._failures,
            by_tag=tuple(sorted(tags.items())),
        )
