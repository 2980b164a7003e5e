"""The DID allocator (a set of used ids plus the lowest free one) answers exactly as Linux's
bitmap (``find_first_zero_bit`` / ``set_bit`` / ``clear_bit``) over any alloc/free sequence."""

from __future__ import annotations

import errno

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vtdsim.driver.intel.domain_id import FLPT_DEFAULT_DID, DomainIdAllocator
from vtdsim.errors import ArgumentError, IommuError


class _Bitmap:
    """The reference: a plain bitmap with Linux's initial bits."""

    def __init__(self, ndoms: int, scalable: bool) -> None:
        self.bits = [False] * ndoms
        self.bits[0] = True
        if scalable:
            self.bits[FLPT_DEFAULT_DID] = True

    def alloc(self) -> int | None:
        for i, b in enumerate(self.bits):
            if not b:
                self.bits[i] = True
                return i
        return None


@settings(max_examples=150, deadline=None)
@given(
    ndoms=st.integers(3, 24),
    scalable=st.booleans(),
    ops=st.lists(st.tuples(st.booleans(), st.integers(0, 30)), max_size=80),
)
def test_allocator_matches_the_bitmap(
    ndoms: int, scalable: bool, ops: list[tuple[bool, int]]
) -> None:
    ids = DomainIdAllocator(ndoms, scalable)
    ref = _Bitmap(ndoms, scalable)
    reserved = {0, FLPT_DEFAULT_DID} if scalable else {0}
    for is_alloc, n in ops:
        if is_alloc:
            want = ref.alloc()
            if want is None:
                with pytest.raises(IommuError) as e:
                    ids.alloc()
                assert e.value.errno == errno.ENOSPC
            else:
                assert ids.alloc() == want
        else:
            ok = 0 <= n < ndoms and ref.bits[n] and n not in reserved
            if ok:
                ids.free(n)
                ref.bits[n] = False
            else:
                before = (ids.in_use(), len(ids))
                with pytest.raises(ArgumentError):
                    ids.free(n)
                assert (ids.in_use(), len(ids)) == before  # a refused free changes nothing
        used = [i for i, b in enumerate(ref.bits) if b and i not in reserved]
        assert ids.in_use() == used and len(ids) == len(used)
        assert [ids.is_used(i) for i in range(ndoms)] == ref.bits


def test_full_range_then_refill_lowest_first() -> None:
    ids = DomainIdAllocator(1 << 16)
    got = [ids.alloc() for _ in range((1 << 16) - 2)]
    assert got == list(range(2, 1 << 16))
    with pytest.raises(IommuError):
        ids.alloc()
    for d in (40000, 7, 65535):
        ids.free(d)
    assert [ids.alloc(), ids.alloc(), ids.alloc()] == [7, 40000, 65535]
