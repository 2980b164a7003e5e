"""qi_submit_sync's one-descriptor path packs the descriptor and the wait descriptor in place
(``struct.pack_into``) and reads the status word back from the page it stored it into: pinned
to the general copy (``qi_trace`` set), which writes through PhysicalMemory, for values at and
beyond the 64-bit bounds (pack_into zero-fills its destination before it range-checks, so a
value it would reject must never reach it), int subclasses, and slots that still hold an
earlier descriptor (a zero-fill or a partial store shows in the ring)."""

from __future__ import annotations

import enum
import random
from typing import Any

from qi_state import unit_state
from vtdsim.driver.intel.dmar import QI_LENGTH
from vtdsim.driver.kernel import Kernel

_U64 = (1 << 64) - 1


class _Qw(enum.IntEnum):
    PC = 0x7  # a PASID-cache descriptor's qword 0 (DID 0, PASID 0, domain-selective)


def _outcome(io: Any, descs: Any) -> object:
    try:
        return ("ok", io.qi_submit_sync(descs))
    except Exception as e:  # the typed error is what is compared
        return (type(e).__name__, getattr(e, "errno", None), str(e))


#: (qword 0, qword 1) pairs at and beyond the bounds the in-place pack relies on
_EDGES: list[tuple[object, object]] = [
    (_U64, 0),  # in range (an invalid type: a queue error, and the status never arrives)
    (0x7, _U64),
    (0x7, 1 << 64),  # qword 1 out of range, qword 0 valid: nothing may be stored
    (0x7, -1),
    (-1, 0),
    (1 << 64, 0),
    (0x7, 1 << 200),
    (-(1 << 70), 0),
    (True, 0),  # int subclasses: the checking copy (the same bytes)
    (_Qw.PC, 0),
    (0x7, False),
    (0x7, 0.0),  # not an int at all: the typed error
]


def _run(general: bool, seed: int) -> tuple[list[object], tuple[object, ...]]:
    rng = random.Random(seed)
    k = Kernel.for_testing(ndev=1)
    io = k.iommus[0]
    if general:
        io.qi_trace = []  # a trace list sends every submission down the general copy
    out: list[object] = []
    # several turns of the ring, so that the slots hold earlier descriptors
    for _ in range(3 * QI_LENGTH):
        r = rng.random()
        if r < 0.6:
            desc: tuple[object, ...] = io.desc_pasid_cache(
                rng.randrange(1 << 16), rng.randrange(1 << 20), 1
            )
        elif r < 0.9:
            desc = (*rng.choice(_EDGES), 0, 0)
        else:
            desc = (rng.getrandbits(64), rng.getrandbits(64), 0, 0)  # mostly invalid
        out.append(_outcome(io, (desc,)))
    return out, unit_state(k)


def test_in_place_one_descriptor_copy_matches_the_general_copy() -> None:
    for seed in range(3):
        fast = _run(False, seed)
        assert fast == _run(True, seed)
        kinds = {o[0] for o in fast[0]}  # type: ignore[index]
        assert {"ok", "QiError", "ArgumentError"} <= kinds
