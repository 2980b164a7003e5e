"""Guards the public API: what ``vtdsim`` exports, that it resolves, and that importing the
package stays cheap (trio's habit of a test that pins the public surface)."""

from __future__ import annotations

import subprocess
import sys

import pytest

import vtdsim

EXPECTED = {
    "__version__",
    "Accounting",
    "ArgumentError",
    "CacheGeometry",
    "Capabilities",
    "Decoded",
    "DmaResult",
    "DomainType",
    "ExplorationResult",
    "Feature",
    "Field",
    "FrameAllocator",
    "IommuCore",
    "IommuDomain",
    "IommuError",
    "Kernel",
    "Layout",
    "MdevParent",
    "MediatedDevice",
    "MemoryAccessError",
    "PciDevice",
    "PhysicalMemory",
    "Platform",
    "RemappingUnit",
    "ReservedBitsError",
    "ScenarioError",
    "Translation",
    "TranslationFault",
    "Vm",
    "VtdsimError",
    "Workload",
}


def test_all_is_exactly_the_reviewed_surface() -> None:
    # Adding or removing a public name is a deliberate act: update EXPECTED with it.
    assert set(vtdsim.__all__) == EXPECTED
    assert set(vtdsim._EXPORTS) == EXPECTED - {"__version__"}


def test_explorer_is_reached_through_its_subpackage() -> None:
    from vtdsim.explore import explore, replay

    assert callable(explore) and callable(replay)


@pytest.mark.parametrize("name", sorted(EXPECTED - {"__version__"}))
def test_every_public_name_resolves_to_its_defining_object(name: str) -> None:
    obj = getattr(vtdsim, name)
    assert obj is not None
    assert getattr(obj, "__name__", name) == name
    assert name in dir(vtdsim)


def test_unknown_attribute_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        vtdsim.Nope  # noqa: B018


def test_import_is_lazy() -> None:
    code = (
        "import sys, vtdsim; "
        "heavy = [m for m in ('numpy', 'vtdsim.hw.walk', 'vtdsim.driver.kernel', 'pydantic') "
        "if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_docstring_example_runs() -> None:
    from vtdsim import Capabilities, Feature, Kernel, Platform

    platform = Platform(memory_size=256 << 20)
    platform.add_unit(Capabilities())
    parent = platform.add_device("00:02.0", pasid_bits=20)
    kernel = Kernel(platform)
    kernel.dev_enable_feature(parent, Feature.AUX)
    vm1 = kernel.domain_alloc("unmanaged")
    kernel.map(vm1, iova=0x100000, paddr=0x500000, size=0x1000)
    kernel.aux_attach_device(vm1, parent)
    pasid = kernel.aux_get_pasid(vm1, parent)
    assert pasid == 1
    result = parent.dma_write(0x100000, b"hello", pasid=pasid)
    assert result.ok
    assert platform.memory.read(0x500000, 5) == b"hello"
    stray = parent.dma_write(0x101000, b"x", pasid=pasid)
    assert not stray.ok and stray.fault is not None
