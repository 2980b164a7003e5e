"""Scenario files: the TOML schema (pydantic models) and the validation done before anything runs.

A scenario declares a platform and a sequence of steps::

    title = "two mediated devices, two VMs"

    [platform]
    memory = "256M"

    [[platform.units]]
    name = "dmar0"
    pasid_bits = 20            # any field of vtdsim.hw.caps.Capabilities (not the caches)

    [[platform.devices]]
    name = "parent"            # the name steps use; defaults to the BDF
    bdf = "00:02.0"
    unit = "dmar0"             # defaults to the only unit
    pasid_bits = 20
    ats = true

    [kernel]
    aux_variant = "corrected"  # or "v5"

    [[steps]]
    op = "domain_alloc"
    as = "vm1_dom"             # binds the result to a name later steps use
    [[steps]]
    op = "dma_read"
    device = "parent"
    pasid = "$vm1_pasid"       # a value bound by an earlier step's `as`
    addr = 0x10000
    length = 8
    expect = { fault = "PASID_ENTRY_P" }

Every error is a :class:`vtdsim.errors.ScenarioError` whose ``where`` is
``FILE: step N (op NAME): field F`` (or ``FILE: platform.devices[1]: field bdf``), and whose message
says what was expected.  Nothing runs unless the whole file is valid.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from vtdsim.errors import ScenarioError

__all__ = [
    "OPS",
    "DeviceSpec",
    "Expect",
    "KernelSpec",
    "PlatformSpec",
    "Scenario",
    "Step",
    "UnitSpec",
    "fault_names",
    "format_bdf",
    "hex_bytes",
    "load_scenario",
    "parse_bdf",
    "parse_scenario",
    "parse_size",
]

_U64 = (1 << 64) - 1
_BDF = re.compile(r"^(?:([0-9a-fA-F]{4}):)?([0-9a-fA-F]{1,2}):([0-9a-fA-F]{1,2})\.([0-7])$")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")
_SIZE = re.compile(r"^\s*(0x[0-9a-fA-F_]+|[0-9_]+)\s*([KMGT]i?B?|B)?\s*$", re.IGNORECASE)


def parse_bdf(text: str) -> int:
    """``"bb:dd.f"`` (optionally ``"0000:bb:dd.f"``) -> source id ``bus << 8 | dev << 3 | fn``."""
    m = _BDF.match(text.strip())
    if not m:
        raise ValueError(f"{text!r} is not a PCI address: expected 'bb:dd.f' such as '00:02.0'")
    bus, dev, fn = int(m.group(2), 16), int(m.group(3), 16), int(m.group(4))
    if dev > 31:
        raise ValueError(f"{text!r}: device number {dev:#x} is above 0x1f")
    return bus << 8 | dev << 3 | fn


def format_bdf(sid: int) -> str:
    return f"{sid >> 8 & 0xFF:02x}:{sid >> 3 & 0x1F:02x}.{sid & 7}"


def parse_size(value: object) -> int:
    """A byte count: an integer, or a string such as ``"4K"``, ``"2MiB"``, ``"0x1000"``."""
    if isinstance(value, bool):
        raise ValueError("expected a byte count, not a boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        m = _SIZE.match(value)
        if m:
            n = int(m.group(1).replace("_", ""), 0)
            unit = (m.group(2) or "").upper().rstrip("B").rstrip("I")
            return n << {"": 0, "K": 10, "M": 20, "G": 30, "T": 40}[unit]
    raise ValueError(f"{value!r} is not a byte count: expected an integer or '4K', '2M', '1G'")


# --- expectations ------------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=False, populate_by_name=True)


class Expect(_Strict):
    """What a step must produce.  Omitted fields are not checked."""

    ok: bool | None = None
    """True: the call succeeded (no errno) or the DMA translated; False: it failed."""
    ret: int | str | None = None
    """The returned value (an integer, or a name bound earlier as "$name")."""
    errno: str | None = None
    """Linux errno name the call must fail with, for example "EBUSY" (implies ok=false)."""
    fault: int | str | None = None
    """DMA fault reason: a code (0x59) or its spec name (implies ok=false)."""
    data: str | None = None
    """Bytes read, as hex ("de ad be ef")."""
    text: str | None = None
    """Bytes read, as UTF-8 text."""

    @field_validator("errno")
    @classmethod
    def _errno_name(cls, v: str | None) -> str | None:
        import errno as errno_mod

        if v is None:
            return v
        name = v.lstrip("-").upper()
        if name not in errno_mod.errorcode.values():
            raise ValueError(f"{v!r} is not a Linux errno name such as 'EBUSY' or 'EINVAL'")
        return name

    @field_validator("data")
    @classmethod
    def _hex(cls, v: str | None) -> str | None:
        if v is not None:
            hex_bytes(v)
        return v


def hex_bytes(text: str) -> bytes:
    cleaned = re.sub(r"[\s_:]", "", text)
    if cleaned.lower().startswith("0x"):
        cleaned = cleaned[2:]
    try:
        return bytes.fromhex(cleaned)
    except ValueError:
        raise ValueError(f"{text!r} is not hex bytes: expected pairs of hex digits") from None


# --- steps -------------------------------------------------------------------------------------

Ref = str  # a name defined earlier (domain, device, mdev, vm) or "$value"
IntOrRef = int | str


class StepBase(_Strict):
    as_: str | None = Field(default=None, alias="as")
    """Bind the step's result to this name."""
    note: str | None = None
    """A sentence shown in the timeline."""
    chapter: str | None = None
    """Starts a new section of the timeline: a title line, then optional paragraphs."""
    expect: Expect | None = None
    walk: bool = False
    """After a DMA step, print the explained walk of its first page."""


class DomainAlloc(StepBase):
    op: Literal["domain_alloc"]
    type: Literal["unmanaged", "dma", "identity", "blocked"] = "unmanaged"


class DomainFree(StepBase):
    op: Literal["domain_free"]
    domain: Ref


class DomainDevice(StepBase):
    op: Literal[
        "attach_device",
        "detach_device",
        "aux_attach_device",
        "aux_detach_device",
        "aux_get_pasid",
    ]
    domain: Ref
    device: Ref


class Feature(StepBase):
    op: Literal["dev_has_feature", "dev_enable_feature", "dev_disable_feature"]
    device: Ref
    feature: Literal["aux", "sva"] = "aux"


class PasidAttach(StepBase):
    op: Literal["attach_device_pasid", "replace_device_pasid", "detach_device_pasid"]
    domain: Ref
    device: Ref
    pasid: IntOrRef


class MapStep(StepBase):
    op: Literal["map"]
    domain: Ref
    iova: IntOrRef
    paddr: IntOrRef
    size: int | str
    prot: Literal["r", "w", "rw"] = "rw"


class UnmapStep(StepBase):
    op: Literal["unmap"]
    domain: Ref
    iova: IntOrRef
    size: int | str


class IovaToPhys(StepBase):
    op: Literal["iova_to_phys"]
    domain: Ref
    iova: IntOrRef


class DmaRead(StepBase):
    op: Literal["dma_read"]
    device: Ref
    pasid: IntOrRef | None = None
    addr: IntOrRef
    length: int | str
    privileged: bool = False


class DmaWrite(StepBase):
    op: Literal["dma_write"]
    device: Ref
    pasid: IntOrRef | None = None
    addr: IntOrRef
    data: str | None = None
    text: str | None = None
    privileged: bool = False


class MemWrite(StepBase):
    op: Literal["mem_write"]
    addr: IntOrRef
    data: str | None = None
    text: str | None = None


class MemRead(StepBase):
    op: Literal["mem_read"]
    addr: IntOrRef
    length: int | str


class MdevCreate(StepBase):
    """A mediated device of ``parent`` (AUX is enabled on the parent if needed)."""

    op: Literal["mdev_create"]
    parent: Ref


class MdevOnly(StepBase):
    op: Literal["mdev_remove", "mdev_unassign"]
    mdev: Ref


class VmCreate(StepBase):
    op: Literal["vm_create"]


class VmAddRange(StepBase):
    """Guest-physical ``[gpa, gpa+size)`` is host ``[hpa, ...)`` (mapped into the domains of
    the VM's mediated devices, as VFIO_IOMMU_MAP_DMA does)."""

    op: Literal["vm_add_range"]
    vm: Ref
    gpa: IntOrRef
    hpa: IntOrRef
    size: int | str
    prot: Literal["r", "w", "rw"] = "rw"


class VmAddRam(StepBase):
    """Guest-physical ``[gpa, gpa+size)`` backed by fresh host pages."""

    op: Literal["vm_add_ram"]
    vm: Ref
    gpa: IntOrRef
    size: int | str


class VmRead(StepBase):
    """Read guest memory as the VM's CPU sees it (through its guest-physical map)."""

    op: Literal["vm_read"]
    vm: Ref
    gpa: IntOrRef
    length: int | str


class MdevAssign(StepBase):
    """Give ``mdev`` to ``vm``: a new aux domain; returns the PASID the mdev tags."""

    op: Literal["mdev_assign"]
    mdev: Ref
    vm: Ref


class MdevDma(StepBase):
    op: Literal["mdev_dma_read", "mdev_dma_write"]
    mdev: Ref
    addr: IntOrRef
    length: int | str | None = None
    data: str | None = None
    text: str | None = None


Step = Annotated[
    DomainAlloc
    | DomainFree
    | DomainDevice
    | Feature
    | PasidAttach
    | MapStep
    | UnmapStep
    | IovaToPhys
    | DmaRead
    | DmaWrite
    | MemWrite
    | MemRead
    | MdevCreate
    | MdevOnly
    | VmCreate
    | VmAddRange
    | VmAddRam
    | VmRead
    | MdevAssign
    | MdevDma,
    Field(discriminator="op"),
]

#: every op name a step may use
OPS: tuple[str, ...] = (
    "domain_alloc",
    "domain_free",
    "attach_device",
    "detach_device",
    "aux_attach_device",
    "aux_detach_device",
    "aux_get_pasid",
    "dev_has_feature",
    "dev_enable_feature",
    "dev_disable_feature",
    "attach_device_pasid",
    "replace_device_pasid",
    "detach_device_pasid",
    "map",
    "unmap",
    "iova_to_phys",
    "dma_read",
    "dma_write",
    "mem_write",
    "mem_read",
    "mdev_create",
    "mdev_remove",
    "mdev_assign",
    "mdev_unassign",
    "vm_create",
    "vm_add_range",
    "vm_add_ram",
    "vm_read",
    "mdev_dma_read",
    "mdev_dma_write",
)

# --- platform ----------------------------------------------------------------------------------

_CAP_FIELDS_EXCLUDED = {"context_cache", "pasid_cache", "iotlb", "paging_structure_cache"}


class UnitSpec(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str = "dmar0"


class DeviceSpec(_Strict):
    name: str | None = None
    bdf: str
    unit: str | None = None
    pasid_bits: int = Field(default=0, ge=0, le=20)
    ats: bool = False

    @field_validator("bdf")
    @classmethod
    def _bdf(cls, v: str) -> str:
        parse_bdf(v)
        return v


class PlatformSpec(_Strict):
    memory: int | str = "256M"
    units: list[UnitSpec] = Field(default_factory=lambda: [UnitSpec()])
    devices: list[DeviceSpec] = Field(default_factory=list)


class KernelSpec(_Strict):
    aux_variant: Literal["corrected", "v5"] = "corrected"
    frames_start: int | str = "16M"
    """The driver's pages come from [frames_start, memory end); lower memory is for buffers."""


class Scenario(_Strict):
    title: str = ""
    description: str = ""
    platform: PlatformSpec = Field(default_factory=PlatformSpec)
    kernel: KernelSpec = Field(default_factory=KernelSpec)
    steps: list[Step] = Field(default_factory=list)

    # filled by validation (not part of the file)
    source: str = Field(default="<scenario>", exclude=True)
    memory_size: int = Field(default=0, exclude=True)
    frames_start: int = Field(default=0, exclude=True)
    device_pasid_bits: dict[str, int] = Field(default_factory=dict, exclude=True)
    unit_caps: dict[str, dict[str, Any]] = Field(default_factory=dict, exclude=True)


# --- loading and validation --------------------------------------------------------------------


def load_scenario(path: str | Path) -> Scenario:
    """Read, parse and validate a scenario file.  Raises :class:`ScenarioError`."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise ScenarioError(str(p), f"cannot read the scenario file: {e.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ScenarioError(
            str(p), f"byte {e.start}: not UTF-8 text; expected a TOML file"
        ) from None
    return parse_scenario(text, str(p))


def parse_scenario(text: str, source: str = "<scenario>") -> Scenario:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ScenarioError(source, f"not valid TOML: {e}") from None
    if "step" in data and "steps" not in data:
        raise ScenarioError(source, "unknown table [[step]]: steps are written [[steps]]")
    try:
        sc = Scenario.model_validate(data)
    except ValidationError as e:
        raise _pydantic_error(source, data, e) from None
    sc.source = source
    _check_semantics(sc, data)
    return sc


def _where(source: str, data: Mapping[str, Any], loc: Sequence[int | str]) -> tuple[str, str]:
    """('FILE: step N (op X)', 'field F') from a pydantic location."""
    parts = list(loc)
    if parts and parts[0] == "steps" and len(parts) >= 2 and isinstance(parts[1], int):
        idx = parts[1]
        steps = data.get("steps")
        op = None
        if isinstance(steps, list) and idx < len(steps) and isinstance(steps[idx], dict):
            op = steps[idx].get("op")
        rest = [str(x) for x in parts[2:] if not (isinstance(x, str) and x == op)]
        # pydantic inserts the union tag and type names ("int", "str") in locations
        rest = [r for r in rest if r not in ("int", "str", "bool", "function-after[_hex()]")]
        head = f"{source}: step {idx + 1}" + (f" (op {op!r})" if isinstance(op, str) else "")
        return head, ("field " + ".".join(rest)) if rest else "the step"
    parts = [x for x in parts if x not in ("int", "str", "bool")]
    # the table is everything up to the last list index; the rest is the field
    cut = max((i + 1 for i, x in enumerate(parts) if isinstance(x, int)), default=0)
    if cut == 0 and len(parts) > 1:
        cut = len(parts) - 1
    path = ""
    for x in parts[:cut]:
        path += f"[{x}]" if isinstance(x, int) else (f".{x}" if path else str(x))
    field = ".".join(str(x) for x in parts[cut:])
    return (f"{source}: {path}" if path else source), (f"field {field}" if field else "")


def _pydantic_error(source: str, data: Mapping[str, Any], e: ValidationError) -> ScenarioError:
    err = e.errors()[0]
    head, field = _where(source, data, err["loc"])
    typ = err["type"]
    msg = err["msg"]
    if typ == "extra_forbidden":
        key = field.removeprefix("field ") or str(err["loc"][-1])
        return ScenarioError(head, f"unknown key {key!r}")
    if typ == "missing":
        return ScenarioError(head, f"{field} is required")
    if typ == "union_tag_invalid" or typ == "union_tag_not_found":
        return ScenarioError(head, f"field op: expected one of {', '.join(OPS)}")
    if typ == "literal_error":
        expected = err.get("ctx", {}).get("expected", "")
        return ScenarioError(
            head, f"{field} = {err.get('input')!r}: expected one of {expected}".strip()
        )
    if typ == "value_error":
        msg = msg.removeprefix("Value error, ")
    return ScenarioError(head, f"{field}: {msg}" if field else msg)


def _check_semantics(sc: Scenario, data: Mapping[str, Any]) -> None:
    src = sc.source
    # memory
    try:
        sc.memory_size = parse_size(sc.platform.memory)
    except ValueError as e:
        raise ScenarioError(f"{src}: platform", f"field memory: {e}") from None
    if sc.memory_size <= 0 or sc.memory_size % 4096 or sc.memory_size > 1 << 52:
        raise ScenarioError(
            f"{src}: platform",
            f"field memory = {sc.memory_size:#x}: expected a positive multiple of 4 KiB "
            "up to 2^52 bytes",
        )
    try:
        sc.frames_start = parse_size(sc.kernel.frames_start)
    except ValueError as e:
        raise ScenarioError(f"{src}: kernel", f"field frames_start: {e}") from None
    if sc.frames_start % 4096 or not 0 <= sc.frames_start <= sc.memory_size - (1 << 20):
        raise ScenarioError(
            f"{src}: kernel",
            f"field frames_start = {sc.frames_start:#x}: expected a 4 KiB-aligned address "
            f"at least 1 MiB below the end of memory ({sc.memory_size:#x}); the driver's "
            "tables are allocated above it",
        )
    # units and their capabilities (checked by constructing Capabilities)
    from vtdsim.errors import ArgumentError
    from vtdsim.hw.caps import Capabilities

    cap_fields = {
        f.name: f for f in dataclasses.fields(Capabilities) if f.name not in _CAP_FIELDS_EXCLUDED
    }
    units: dict[str, int] = {}
    for i, u in enumerate(sc.platform.units):
        where = f"{src}: platform.units[{i}]"
        if not _NAME.match(u.name):
            raise ScenarioError(where, f"field name = {u.name!r}: expected an identifier")
        if u.name in units:
            raise ScenarioError(where, f"field name = {u.name!r}: a unit of that name exists")
        units[u.name] = i
        extra = dict(u.model_extra or {})
        caps_kwargs: dict[str, Any] = {}
        for key, value in extra.items():
            f = cap_fields.get(key)
            if f is None:
                raise ScenarioError(
                    where, f"unknown key {key!r}: expected name or one of {', '.join(cap_fields)}"
                )
            if key in ("sagaw", "sl_large_pages"):
                if not isinstance(value, list) or not all(
                    isinstance(x, int) and not isinstance(x, bool) for x in value
                ):
                    raise ScenarioError(where, f"field {key}: expected a list of integers")
                value = frozenset(value)
            elif f.type in ("bool",) or isinstance(f.default, bool):
                if not isinstance(value, bool):
                    raise ScenarioError(where, f"field {key} = {value!r}: expected true or false")
            elif isinstance(f.default, int) and (
                not isinstance(value, int) or isinstance(value, bool)
            ):
                raise ScenarioError(where, f"field {key} = {value!r}: expected an integer")
            caps_kwargs[key] = value
        try:
            Capabilities(**caps_kwargs)
        except ArgumentError as e:
            raise ScenarioError(where, str(e)) from None
        sc.unit_caps[u.name] = caps_kwargs
    # devices
    names: dict[str, str] = {}  # name -> kind
    sids: set[int] = set()
    for i, d in enumerate(sc.platform.devices):
        where = f"{src}: platform.devices[{i}]"
        sid = parse_bdf(d.bdf)
        if sid in sids:
            raise ScenarioError(where, f"field bdf = {d.bdf!r}: a device at that address exists")
        sids.add(sid)
        if d.unit is None:
            if len(units) != 1:
                raise ScenarioError(
                    where, f"field unit is required with several units ({', '.join(units)})"
                )
            d.unit = next(iter(units))
        elif d.unit not in units:
            raise ScenarioError(
                where, f"field unit = {d.unit!r}: no such unit; expected one of {', '.join(units)}"
            )
        name = d.name or format_bdf(sid)
        if d.name is not None and not _NAME.match(d.name):
            raise ScenarioError(where, f"field name = {d.name!r}: expected an identifier")
        if name in names:
            raise ScenarioError(where, f"field name = {name!r}: the name is already used")
        names[name] = "device"
        d.name = name
        sc.device_pasid_bits[name] = d.pasid_bits
        unit_bits = sc.unit_caps[d.unit].get("pasid_bits", 20)
        if d.pasid_bits > unit_bits:
            raise ScenarioError(
                where,
                f"field pasid_bits = {d.pasid_bits}: the device cannot use more PASID bits than "
                f"its unit {d.unit!r} supports ({unit_bits})",
            )
    _check_steps(sc, names, data)


#: for each op: the kind of object its `as` binds (None: a plain value)
_BINDS: dict[str, str | None] = {
    "domain_alloc": "domain",
    "mdev_create": "mdev",
    "vm_create": "vm",
}
#: field -> kinds of name it may refer to
_REF_FIELDS: dict[str, tuple[str, ...]] = {
    "domain": ("domain",),
    "device": ("device",),
    "parent": ("device",),
    "mdev": ("mdev",),
    "vm": ("vm",),
}
_VALUE_FIELDS = ("pasid", "iova", "paddr", "addr", "gpa", "hpa", "size", "length")


def _check_steps(sc: Scenario, names: dict[str, str], data: Mapping[str, Any]) -> None:
    src = sc.source
    values: set[str] = set()
    for i, step in enumerate(sc.steps):
        head = f"{src}: step {i + 1} (op {step.op!r})"
        for fld, kinds in _REF_FIELDS.items():
            ref = getattr(step, fld, None)
            if ref is None:
                continue
            kind = names.get(ref)
            if kind is None:
                raise ScenarioError(
                    head,
                    f"field {fld} = {ref!r}: undefined name; expected a {' or '.join(kinds)} "
                    "declared in [platform] or bound by an earlier step's 'as'",
                )
            if kind not in kinds:
                raise ScenarioError(
                    head, f"field {fld} = {ref!r} is a {kind}; expected a {' or '.join(kinds)}"
                )
        for fld in _VALUE_FIELDS:
            v = getattr(step, fld, None)
            if v is None:
                continue
            if isinstance(v, str):
                if v.startswith("$"):
                    if v[1:] not in values:
                        raise ScenarioError(
                            head,
                            f"field {fld} = {v!r}: undefined value; bind it with 'as' in an "
                            "earlier step",
                        )
                elif fld in ("size", "length"):
                    try:
                        setattr(step, fld, parse_size(v))
                    except ValueError as e:
                        raise ScenarioError(head, f"field {fld}: {e}") from None
                else:
                    try:
                        setattr(step, fld, int(v.replace("_", ""), 0))
                    except ValueError:
                        raise ScenarioError(
                            head, f"field {fld} = {v!r}: expected an integer or '$name'"
                        ) from None
            v = getattr(step, fld)
            if isinstance(v, int) and not 0 <= v <= _U64:
                raise ScenarioError(head, f"field {fld} = {v}: expected an unsigned 64-bit value")
            if fld == "pasid" and isinstance(v, int) and v >= 1 << 20:
                raise ScenarioError(head, f"field pasid = {v:#x}: PASIDs are 20 bits (< 0x100000)")
            if fld == "length" and isinstance(v, int) and not 0 < v <= 1 << 24:
                raise ScenarioError(head, f"field length = {v}: expected 1..16 MiB")
            if fld == "pasid" and isinstance(v, int) and step.op in ("dma_read", "dma_write"):
                bits = sc.device_pasid_bits.get(getattr(step, "device", ""), 0)
                if v >= 1 << bits or not bits:
                    raise ScenarioError(
                        head,
                        f"field pasid = {v:#x}: device {getattr(step, 'device', '')!r} "
                        + (
                            f"emits PASIDs below {1 << bits:#x} (pasid_bits = {bits})"
                            if bits
                            else "has no PASID capability (pasid_bits = 0)"
                        ),
                    )
        if hasattr(step, "data") and step.op in ("dma_write", "mem_write", "mdev_dma_write"):
            d, t = step.data, step.text
            if (d is None) == (t is None):
                raise ScenarioError(
                    head, "exactly one of the fields data (hex) or text is required"
                )
            if d is not None:
                try:
                    hex_bytes(d)
                except ValueError as e:
                    raise ScenarioError(head, f"field data: {e}") from None
        if step.op == "mdev_dma_read" and getattr(step, "length", None) is None:
            raise ScenarioError(head, "field length is required")
        if step.expect is not None:
            ex = step.expect
            if isinstance(ex.ret, str) and (not ex.ret.startswith("$") or ex.ret[1:] not in values):
                raise ScenarioError(
                    head, f"field expect.ret = {ex.ret!r}: expected an integer or a bound '$name'"
                )
            if ex.fault is not None and isinstance(ex.fault, str):
                _check_fault_name(head, ex.fault)
            if ex.ok is True and (ex.errno is not None or ex.fault is not None):
                raise ScenarioError(
                    head, "field expect: ok = true contradicts an expected errno or fault"
                )
        if step.as_ is not None:
            if not _NAME.match(step.as_):
                raise ScenarioError(head, f"field as = {step.as_!r}: expected an identifier")
            kind = _BINDS.get(step.op)
            if kind is None:
                values.add(step.as_)
            else:
                if step.as_ in names:
                    raise ScenarioError(head, f"field as = {step.as_!r}: the name is already used")
                names[step.as_] = kind
        elif step.op in _BINDS:
            raise ScenarioError(head, f"field as is required: name the new {_BINDS[step.op]}")


def _check_fault_name(head: str, name: str) -> None:
    """A fault given by name must be one the spec knows (or a numeric string)."""
    try:
        int(name, 0)
        return
    except ValueError:
        pass
    try:
        from vtdsim.spec import faults
    except ImportError:  # pragma: no cover - spec/faults.py lands with the hardware model
        return
    known = fault_names(faults)
    if known and name.upper() not in known:
        raise ScenarioError(
            head,
            f"field expect.fault = {name!r}: unknown fault reason name (see vtdsim.spec.faults)",
        )


def fault_names(faults_module: Any) -> dict[str, int]:
    """Upper-case reason name -> code, from vtdsim.spec.faults.reason_name over 0..0xff."""
    out: dict[str, int] = {}
    reason_name = getattr(faults_module, "reason_name", None)
    if reason_name is None:
        return out
    for code in range(256):
        try:
            name = reason_name(code)
        except Exception:
            continue
        if name and not name.upper().startswith(("UNKNOWN", "RESERVED")):
            out.setdefault(str(name).upper(), code)
    return out
