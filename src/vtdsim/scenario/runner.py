"""Execute a validated scenario against the platform and the driver, checking expectations.

The runner builds a :class:`~vtdsim.hw.platform.Platform` from ``[platform]``, boots the driver
(:class:`vtdsim.driver.kernel.Kernel`, which initialises every unit and probes every device as
Linux does at boot), then runs each step and records a :class:`StepOutcome`: what was called,
what it returned (value, errno, DMA fault with its reason), the data read, and each expectation
check.  Nothing is printed here; :mod:`vtdsim.scenario.report` renders the outcomes.

Step semantics
--------------
* Driver calls succeed or fail with a Linux errno (:class:`~vtdsim.errors.IommuError`).  Any
  other :class:`~vtdsim.errors.VtdsimError` (an allocator double free in the v5 variant, for
  example) is recorded as the step's ``error``: a result, which fails the step unless expected
  with ``expect.ok = false``.  An :class:`~vtdsim.errors.ArgumentError` means the scenario asked
  for something impossible that validation could not see; it stops the run as an input error
  (:class:`~vtdsim.errors.ScenarioError` naming the step).
* A step without ``expect`` must succeed (``ok``).
* DMA steps go through the device's DMA engine (device-TLB, the unit's caches, the walk);
  ``walk = true`` adds the explained, uncached walk of the first address.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from vtdsim.errors import ArgumentError, IommuError, ScenarioError, VtdsimError
from vtdsim.scenario.schema import Scenario, fault_names, format_bdf, hex_bytes

__all__ = ["Check", "RunResult", "StepOutcome", "World", "build_world", "run_scenario"]


@dataclass
class Check:
    what: str
    expected: str
    got: str
    passed: bool


@dataclass
class StepOutcome:
    index: int  # 1-based
    op: str
    call: str  # "aux_attach_device(domain=vm1, device=parent)"
    note: str | None = None
    chapter: str | None = None
    ok: bool = True
    value: Any = None
    errno: str | None = None
    error: str | None = None  # message of the failure (errno or other error)
    fault: dict[str, Any] | None = None
    data: bytes | None = None
    checks: list[Check] = field(default_factory=list)
    walk: list[str] | None = None
    walk_json: dict[str, Any] | None = None

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def result_text(self) -> str:
        if self.fault is not None:
            return (
                f"DMA blocked: fault {self.fault['reason']} {self.fault['name']} "
                f"at {self.fault['address']}"
            )
        if self.errno is not None:
            return f"-{self.errno}"
        if self.error is not None:
            return f"error: {self.error}"
        if self.data is not None:
            return f"data {_show_bytes(self.data)}"
        if self.value is not None and not isinstance(self.value, bool | type(None)):
            v = self.value
            return f"returned {v:#x}" if isinstance(v, int) and v > 9 else f"returned {v!r}"
        if isinstance(self.value, bool):
            return f"returned {str(self.value).lower()}"
        return "ok"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"step": self.index, "op": self.op, "call": self.call, "ok": self.ok}
        if self.note:
            out["note"] = self.note
        if self.value is not None:
            out["value"] = (
                self.value if isinstance(self.value, bool | int | str) else str(self.value)
            )
        if self.errno is not None:
            out["errno"] = self.errno
        if self.error is not None:
            out["error"] = self.error
        if self.fault is not None:
            out["fault"] = self.fault
        if self.data is not None:
            out["data"] = self.data.hex()
        out["checks"] = [c.__dict__ for c in self.checks]
        out["passed"] = self.passed
        if self.walk_json is not None:
            out["walk"] = self.walk_json
        return out


def _show_bytes(b: bytes) -> str:
    """Text when the bytes are printable ASCII, else hex (the first 16 bytes)."""
    if b and len(b) <= 64 and all(32 <= c < 127 for c in b):
        return f'"{b.decode()}" ({len(b)} bytes)'
    text = b.hex(" ")
    if len(b) > 16:
        text = b[:16].hex(" ") + f" ... ({len(b)} bytes)"
    return text


@dataclass
class World:
    """The live system a scenario runs on."""

    platform: Any
    kernel: Any
    devices: dict[str, Any] = field(default_factory=dict)
    objects: dict[str, Any] = field(default_factory=lambda: _Objects())  # domains, mdevs, VMs
    values: dict[str, Any] = field(default_factory=dict)  # $name values


@dataclass
class RunResult:
    scenario: Scenario
    world: World
    outcomes: list[StepOutcome]

    @property
    def passed(self) -> bool:
        return all(o.passed for o in self.outcomes)

    def rtaddrs(self) -> dict[str, int]:
        from vtdsim.spec import registers as R

        return {u.name: u.read64(R.RTADDR) for u in self.world.platform.units}

    def to_json(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario.source,
            "title": self.scenario.title,
            "passed": self.passed,
            "steps": [o.to_json() for o in self.outcomes],
            "summary": {
                "steps": len(self.outcomes),
                "passed": sum(o.passed for o in self.outcomes),
                "failed": sum(not o.passed for o in self.outcomes),
            },
            "units": [{"name": n, "rtaddr": f"{v:#x}"} for n, v in self.rtaddrs().items()],
        }


def _kernel_class() -> Any:
    try:
        mod = importlib.import_module("vtdsim.driver.kernel")
    except ImportError as e:
        raise VtdsimError(
            f"the driver (vtdsim.driver.kernel.Kernel) is not available in this build: {e}"
        ) from None
    return mod.Kernel


def build_world(sc: Scenario) -> World:
    """Platform + booted kernel for a validated scenario."""
    from vtdsim.hw.caps import Capabilities
    from vtdsim.hw.platform import Platform

    platform = Platform(memory_size=sc.memory_size)
    multi = len(sc.platform.units) > 1
    for u in sc.platform.units:
        scope = [d.bdf for d in sc.platform.devices if d.unit == u.name] if multi else None
        platform.add_unit(Capabilities(**sc.unit_caps[u.name]), name=u.name, scope=scope)
    world = World(platform, None)
    for d in sc.platform.devices:
        dev = platform.add_device(d.bdf, unit=d.unit, pasid_bits=d.pasid_bits, ats=d.ats)
        assert d.name is not None
        world.devices[d.name] = dev
    world.kernel = _kernel_class()(platform, sc.kernel.aux_variant, frames_start=sc.frames_start)
    return world


# --- step execution --------------------------------------------------------------------------


class UnboundName(VtdsimError):
    """A step refers to a name whose binding step failed (the scenario itself was valid)."""


def run_scenario(
    sc: Scenario,
    *,
    after_step: Callable[[int, World], None] | None = None,
    stop_after: int | None = None,
) -> RunResult:
    """Run every step (or the first ``stop_after``); ``after_step(n, world)`` after each."""
    try:
        world = build_world(sc)
    except VtdsimError as e:
        raise ScenarioError(
            f"{sc.source}: platform", f"the driver cannot boot this platform: {e}"
        ) from None
    outcomes: list[StepOutcome] = []
    faults = _fault_table()
    for i, step in enumerate(sc.steps, 1):
        if stop_after is not None and i > stop_after:
            break
        head = f"{sc.source}: step {i} (op {step.op!r})"
        out = StepOutcome(
            i, step.op, _call_text(step, world.values), note=step.note, chapter=step.chapter
        )
        try:
            _execute(world, step, out)
        except ArgumentError as e:
            raise ScenarioError(head, str(e)) from None
        except IommuError as e:
            out.ok = False
            out.errno = e.name
            out.error = str(e)
        except ScenarioError as e:
            raise ScenarioError(head, str(e)) from None
        except VtdsimError as e:
            out.ok = False
            out.error = f"{type(e).__name__}: {e}"
        except Exception as e:  # a model invariant broke (the v5 driver's list corruption...)
            out.ok = False
            out.error = f"internal error {type(e).__name__}: {e}"
        if step.as_ is not None and out.ok:
            if step.op in ("domain_alloc", "mdev_create", "vm_create"):
                world.objects[step.as_] = out.value
                out.value = None
            else:
                world.values[step.as_] = out.value
        _check(world, step, out, faults)
        outcomes.append(out)
        if after_step is not None:
            after_step(i, world)
    return RunResult(sc, world, outcomes)


def _fault_table() -> dict[str, int]:
    from vtdsim.spec import faults

    return fault_names(faults)


def _call_text(step: Any, values: dict[str, Any]) -> str:
    skip = {"op", "as_", "note", "expect", "walk", "chapter"}
    parts = []
    for name in type(step).model_fields:
        if name in skip:
            continue
        v = getattr(step, name)
        if v is None or (name == "privileged" and v is False):
            continue
        if isinstance(v, int) and not isinstance(v, bool):
            if name == "length":
                parts.append(f"{name}={v}")
            else:
                parts.append(f"{name}={v:#x}" if v > 9 else f"{name}={v}")
        elif isinstance(v, str) and v.startswith("$") and v[1:] in values:
            parts.append(f"{name}={v}={_fmt(values[v[1:]])}")
        elif name in ("data",) and isinstance(v, str):
            parts.append(f"data={v.replace(' ', '')[:32]}")
        elif name == "text" and isinstance(v, str):
            parts.append(f'text="{v}"')
        else:
            parts.append(f"{name}={v}")
    text = f"{step.op}({', '.join(parts)})"
    if step.as_:
        text += f" -> {step.as_}"
    return text


def _value(world: World, v: Any) -> Any:
    if isinstance(v, str) and v.startswith("$"):
        if v[1:] not in world.values:
            raise UnboundName(f"{v} has no value: the step that binds it failed")
        return world.values[v[1:]]
    return v


class _Objects(dict[str, Any]):
    """Named domains, mdevs and VMs; a missing name means its creating step failed."""

    def __missing__(self, key: str) -> Any:
        raise UnboundName(f"{key!r} does not exist: the step that creates it failed")


def _dev(world: World, name: str) -> Any:
    return world.devices[name]


def _prot(p: str) -> int:
    from vtdsim.driver import core

    return (core.IOMMU_READ if "r" in p else 0) | (core.IOMMU_WRITE if "w" in p else 0)


def _payload(step: Any) -> bytes:
    if step.data is not None:
        return hex_bytes(step.data)
    return str(step.text).encode()


def _record_dma(out: StepOutcome, res: Any) -> None:
    from vtdsim.spec.faults import reason_name, reason_text

    out.ok = bool(res.ok)
    if res.ok:
        out.data = res.data
        return
    f = res.fault
    out.fault = {
        "reason": f"{f.reason:#04x}",
        "name": reason_name(f.reason),
        "text": reason_text(f.reason),
        "address": f"{f.address:#x}",
        "sid": format_bdf(f.sid),
        "pasid": f.pasid,
        "recorded": bool(f.recorded),
    }
    if f.recorded:
        # what Linux's fault handler (dmar_fault_do_one) would print from the fault record
        out.fault["dmesg"] = f"DMAR: {f.linux_message()}"


def _walk(
    world: World, out: StepOutcome, sid: int, pasid: int | None, addr: int, write: bool
) -> None:
    from vtdsim.cli.walk_render import walk_json, walk_lines
    from vtdsim.scenario.image import Query, translate
    from vtdsim.spec import registers as R

    unit = world.platform.unit_for(sid)
    if unit is None:
        out.walk = [f"no remapping unit covers {format_bdf(sid)}: DMA is not translated"]
        return
    mem = world.platform.memory
    snap = mem.snapshot()
    try:
        res = translate(
            mem, unit.caps, unit.read64(R.RTADDR), Query(sid, pasid, addr, write), trace=True
        )
    finally:
        mem.restore(snap)
    out.walk = walk_lines(res)
    out.walk_json = walk_json(res)


def _execute(world: World, step: Any, out: StepOutcome) -> None:
    k = world.kernel
    op = step.op
    obj = world.objects
    if op == "domain_alloc":
        out.value = k.domain_alloc(step.type)
    elif op == "domain_free":
        k.domain_free(obj[step.domain])
    elif op in ("attach_device", "detach_device", "aux_attach_device", "aux_detach_device"):
        getattr(k, op)(obj[step.domain], _dev(world, step.device))
    elif op == "aux_get_pasid":
        out.value = k.aux_get_pasid(obj[step.domain], _dev(world, step.device))
    elif op in ("dev_has_feature", "dev_enable_feature", "dev_disable_feature"):
        r = getattr(k, op)(_dev(world, step.device), step.feature)
        out.value = r if op == "dev_has_feature" else None
    elif op in ("attach_device_pasid", "replace_device_pasid", "detach_device_pasid"):
        getattr(k, op)(obj[step.domain], _dev(world, step.device), _value(world, step.pasid))
    elif op == "map":
        k.map(
            obj[step.domain],
            _value(world, step.iova),
            _value(world, step.paddr),
            step.size,
            _prot(step.prot),
        )
    elif op == "unmap":
        out.value = k.unmap(obj[step.domain], _value(world, step.iova), step.size)
    elif op == "iova_to_phys":
        out.value = k.iova_to_phys(obj[step.domain], _value(world, step.iova))
    elif op in ("dma_read", "dma_write"):
        dev = world.devices[step.device]
        pasid = _value(world, step.pasid)
        addr = _value(world, step.addr)
        if op == "dma_read":
            res = dev.dma_read(addr, step.length, pasid=pasid, privileged=step.privileged)
        else:
            res = dev.dma_write(addr, _payload(step), pasid=pasid, privileged=step.privileged)
        _record_dma(out, res)
        if step.walk:
            _walk(world, out, dev.sid, pasid, addr, op == "dma_write")
    elif op == "mem_write":
        world.platform.memory.write(_value(world, step.addr), _payload(step))
    elif op == "mem_read":
        out.data = world.platform.memory.read(_value(world, step.addr), step.length)
    else:
        _execute_mdev(world, step, out)


def _mdev_module() -> Any:
    try:
        return importlib.import_module("vtdsim.driver.mdev")
    except ImportError as e:  # pragma: no cover - present in every build with the driver
        raise ScenarioError(
            "mediated devices", f"vtdsim.driver.mdev is not available in this build ({e})"
        ) from None


def _mdev_parent(world: World, dev: Any) -> Any:
    """One ``MdevParent`` per parent device (created on first use: enables AUX)."""
    key = f"__parent__{dev.sid}"
    parent = world.objects.get(key)
    if parent is None:
        parent = _mdev_module().MdevParent(world.kernel, dev)
        world.objects[key] = parent
    return parent


def _execute_mdev(world: World, step: Any, out: StepOutcome) -> None:
    op = step.op
    obj = world.objects
    if op == "mdev_create":
        parent = _mdev_parent(world, world.devices[step.parent])
        out.value = parent.create(step.as_)
    elif op == "mdev_remove":
        m = obj[step.mdev]
        m.parent.remove(m)
    elif op == "mdev_assign":
        m = obj[step.mdev]
        out.value = m.parent.assign(m, obj[step.vm])
    elif op == "mdev_unassign":
        m = obj[step.mdev]
        m.parent.unassign(m)
    elif op == "vm_create":
        out.value = _mdev_module().Vm(step.as_, world.kernel.frames)
    elif op == "vm_add_range":
        obj[step.vm].add_range(
            _value(world, step.gpa), _value(world, step.hpa), step.size, _prot(step.prot)
        )
    elif op == "vm_add_ram":
        obj[step.vm].add_ram(_value(world, step.gpa), step.size)
    elif op == "vm_read":
        vm = obj[step.vm]
        gpa = _value(world, step.gpa)
        data = bytearray()
        for k in range(step.length):
            hpa = vm.translate(gpa + k)
            if hpa is None:
                raise ScenarioError(
                    f"field gpa = {gpa:#x}",
                    f"guest-physical {gpa + k:#x} is not memory of VM {step.vm!r}",
                )
            data += world.platform.memory.read(hpa, 1)
        out.data = bytes(data)
    elif op in ("mdev_dma_read", "mdev_dma_write"):
        m = obj[step.mdev]
        addr = _value(world, step.addr)
        if op == "mdev_dma_read":
            res = m.dma_read(addr, step.length)
        else:
            res = m.dma_write(addr, _payload(step))
        _record_dma(out, res)
        if step.walk and m.pasid is not None:
            _walk(world, out, m.parent.dev.sid, m.pasid, addr, op == "mdev_dma_write")
    else:  # pragma: no cover - the schema lists every op
        raise ScenarioError("op", f"{op!r} is not implemented")


# --- expectations ----------------------------------------------------------------------------


def _check(world: World, step: Any, out: StepOutcome, faults: dict[str, int]) -> None:
    ex = step.expect
    if out.ok:
        got_ok = "ok"
    elif out.errno:
        got_ok = f"-{out.errno}"
    elif out.fault is not None:
        got_ok = f"fault {out.fault['reason']} {out.fault['name']}"
    else:
        got_ok = f"error ({out.error})" if out.error else "failed"
    if ex is None or (ex.ok is None and ex.errno is None and ex.fault is None):
        if ex is None or ex.ok is None or ex.ok:
            out.checks.append(Check("succeeds", "ok", got_ok, out.ok))
        else:
            out.checks.append(Check("fails", "failure", got_ok, not out.ok))
    else:
        if ex.ok is not None:
            out.checks.append(Check("ok", str(ex.ok).lower(), str(out.ok).lower(), out.ok == ex.ok))
        if ex.errno is not None:
            out.checks.append(
                Check(
                    "errno",
                    f"-{ex.errno}",
                    f"-{out.errno}" if out.errno else got_ok,
                    out.errno == ex.errno,
                )
            )
        if ex.fault is not None:
            want = ex.fault if isinstance(ex.fault, int) else _fault_code(ex.fault, faults)
            got = int(out.fault["reason"], 16) if out.fault else None
            from vtdsim.spec.faults import reason_name

            out.checks.append(
                Check(
                    "fault",
                    f"{want:#04x} {reason_name(want)}",
                    f"{got:#04x} {reason_name(got)}" if got is not None else "no fault",
                    got == want,
                )
            )
    if ex is None:
        return
    if ex.ret is not None:
        want_v = _value(world, ex.ret) if isinstance(ex.ret, str) else ex.ret
        out.checks.append(Check("returned", _fmt(want_v), _fmt(out.value), out.value == want_v))
    if ex.data is not None or ex.text is not None:
        want_b = hex_bytes(ex.data) if ex.data is not None else str(ex.text).encode()
        got_b = out.data
        out.checks.append(
            Check(
                "data",
                _show_bytes(want_b),
                _show_bytes(got_b) if got_b is not None else "no data",
                got_b == want_b,
            )
        )


def _fmt(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return str(v).lower() if isinstance(v, bool) else "nothing"
    if isinstance(v, int):
        return f"{v:#x}" if v > 9 else str(v)
    return str(v)


def _fault_code(name: str, faults: dict[str, int]) -> int:
    try:
        return int(name, 0)
    except ValueError:
        return faults[name.upper()]
