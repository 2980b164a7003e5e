"""A platform: physical memory, remapping units (DRHDs) and the PCI functions behind them.

As in the ACPI DMAR table (Linux ``dmar.c`` ``dmar_find_matched_drhd_unit``), a unit either
lists the devices in its scope or is the segment's INCLUDE_ALL unit, which covers every device
no other unit lists.  ``add_unit(scope=None)`` makes an INCLUDE_ALL unit (at most one);
``scope`` is an iterable of BDF strings or source-ids.  A device added with an explicit
``unit`` is put in that unit's scope.  A device no unit covers does DMA untranslated.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from typing import TYPE_CHECKING

from vtdsim.errors import ArgumentError
from vtdsim.hw.caps import Capabilities
from vtdsim.hw.memory import PhysicalMemory
from vtdsim.hw.pci import PciDevice, format_bdf, parse_bdf

if TYPE_CHECKING:
    from vtdsim.hw.iommu import RemappingUnit

__all__ = ["Platform"]


class Platform:
    """Memory + units + devices (see the module docstring)."""

    def __init__(self, memory_size: int = 1 << 32, memory: PhysicalMemory | None = None) -> None:
        self.memory = memory if memory is not None else PhysicalMemory(memory_size)
        self._units: list[RemappingUnit] = []
        self._scopes: dict[int, RemappingUnit] = {}  # sid -> unit listing it
        self._include_all: RemappingUnit | None = None
        self._devices: dict[int, PciDevice] = {}

    # -- units -----------------------------------------------------------------------------------

    def add_unit(
        self,
        caps: Capabilities | None = None,
        name: str | None = None,
        scope: Iterable[str | int] | None = None,
    ) -> RemappingUnit:
        """Add a remapping unit; ``scope=None`` makes it the INCLUDE_ALL unit."""
        if caps is None:
            caps = Capabilities()
        if not isinstance(caps, Capabilities):
            raise ArgumentError("caps", caps, "a vtdsim.hw.caps.Capabilities")
        if name is None:
            name = f"dmar{len(self._units)}"
        if any(u.name == name for u in self._units):
            raise ArgumentError("name", name, "a unit name not used on this platform")
        sids: list[int] = []
        if scope is None:
            if self._include_all is not None:
                raise ArgumentError(
                    "scope", None, f"a device list: {self._include_all.name} is already INCLUDE_ALL"
                )
        else:
            if isinstance(scope, (str, int)):
                raise ArgumentError("scope", scope, "an iterable of BDF strings or source-ids")
            for s in scope:
                sid = parse_bdf(s)
                if sid in self._scopes:
                    raise ArgumentError(
                        "scope", s, f"a device not already in {self._scopes[sid].name}'s scope"
                    )
                sids.append(sid)
        mod = importlib.import_module("vtdsim.hw.iommu")  # written concurrently; import lazily
        unit: RemappingUnit = mod.RemappingUnit(self.memory, caps, name=name, platform=self)
        self._units.append(unit)
        if scope is None:
            self._include_all = unit
        for sid in sids:
            self._scopes[sid] = unit
        return unit

    @property
    def units(self) -> tuple[RemappingUnit, ...]:
        return tuple(self._units)

    def unit(self, name: str) -> RemappingUnit:
        for u in self._units:
            if u.name == name:
                return u
        raise ArgumentError("unit", name, f"one of {[u.name for u in self._units]}")

    def unit_for(self, sid: int | str) -> RemappingUnit | None:
        """The unit covering ``sid`` (its scope, else INCLUDE_ALL), None if none does."""
        s = parse_bdf(sid)
        u = self._scopes.get(s)
        return u if u is not None else self._include_all

    # -- devices ---------------------------------------------------------------------------------

    def add_device(
        self,
        bdf: str | int,
        unit: RemappingUnit | str | None = None,
        pasid_bits: int = 0,
        ats: bool = False,
    ) -> PciDevice:
        """Add a PCI function; by default behind the unit whose scope covers it.  With no unit
        at all on the platform an INCLUDE_ALL unit with default capabilities is added first."""
        sid = parse_bdf(bdf)
        if sid in self._devices:
            raise ArgumentError("bdf", bdf, f"a function not already present ({format_bdf(sid)})")
        if unit is None:
            if not self._units:
                self.add_unit()
            u = self.unit_for(sid)
        else:
            u = self.unit(unit) if isinstance(unit, str) else unit
            if not any(u is x for x in self._units):
                raise ArgumentError("unit", unit, "a unit of this platform")
            if self._scopes.get(sid, u) is not u:
                raise ArgumentError("unit", u.name, f"the unit listing {format_bdf(sid)}")
            if u is not self._include_all:
                self._scopes[sid] = u
        dev = PciDevice(sid, self.memory, u, pasid_bits=pasid_bits, ats=ats)
        self._devices[sid] = dev
        return dev

    def device(self, sid: int | str) -> PciDevice | None:
        """The function with this source-id, None if there is none."""
        return self._devices.get(parse_bdf(sid))

    @property
    def devices(self) -> tuple[PciDevice, ...]:
        return tuple(self._devices[s] for s in sorted(self._devices))

    def __repr__(self) -> str:
        return (
            f"<Platform {self.memory.size:#x} bytes, {len(self._units)} unit(s), "
            f"{len(self._devices)} device(s)>"
        )
