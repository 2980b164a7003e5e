"""The workload interface and the workload registry.

A workload is a small concurrent program: a *world* (state built by :meth:`Workload.setup`) and a
few logical threads, each a Python callable that calls driver or core-API operations on that world.
The explorer runs it once per schedule.  Everything a thread does to shared state must go through
:mod:`vtdsim.driver.sync` (locks, ``shared_read``/``shared_write``, ``point``): those are the
scheduling points.  Code between two points runs atomically.

Per-schedule reset: by default :meth:`Workload.setup` is called before every schedule.  A workload
whose setup is expensive overrides :meth:`Workload.snapshot` and :meth:`Workload.restore` to return
the world to its initial state cheaply (the built-in driver workloads restore physical memory and
the driver's bookkeeping).

Registering a workload makes it available by name (``vtdsim explore --workload NAME``, schedule
strings, worker processes)::

    @register("my-race", variants=("default",))
    class MyRace(Workload):
        ...
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from vtdsim.errors import ArgumentError, VtdsimError
from vtdsim.explore.invariants import Invariant

__all__ = [
    "ThreadFn",
    "Workload",
    "WorkloadError",
    "WorkloadRef",
    "get_workload",
    "register",
    "registered",
]

ThreadFn = Callable[[], object]


class WorkloadError(VtdsimError):
    """A workload's own code failed outside its threads (``setup``, ``snapshot``,
    ``restore``): a broken workload, reported by name (exit status 2 on the command line),
    never as a raw traceback."""


def workload_error(workload: Workload, what: str, e: BaseException) -> WorkloadError:
    """A :class:`WorkloadError` naming ``workload``, the stage (``what``), the exception and
    where in the workload's code it was raised."""
    import traceback

    frames = traceback.extract_tb(e.__traceback__)
    where = f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    name = workload.name + (f"/{workload.variant}" if workload.variant else "")
    return WorkloadError(f"workload {name}: {what} raised {type(e).__name__}: {e}{where}")


class Workload:
    """Base class of explorer workloads.  Subclasses set ``name`` and implement :meth:`setup` and
    :meth:`threads`; they may add :meth:`invariants`, :meth:`check_end` and a cheap reset."""

    name: ClassVar[str] = "workload"
    description: ClassVar[str] = ""
    #: importable module (or .py path) that registers this workload (for worker processes)
    _module: ClassVar[str | None] = None
    variants: ClassVar[tuple[str, ...]] = ("default",)

    def __init__(self, variant: str | None = None) -> None:
        if variant is None:
            variant = self.variants[0]
        if variant not in self.variants:
            raise ArgumentError("variant", variant, f"one of {', '.join(self.variants)}")
        self.variant = variant

    # -- what subclasses provide ----------------------------------------------------------------

    def setup(self) -> Any:
        """Build a fresh world (called before each schedule unless a snapshot is available)."""
        raise NotImplementedError

    def threads(self, world: Any) -> Sequence[tuple[str, ThreadFn]]:
        """The logical threads, as ``(name, callable)``; thread *i* is index *i* in schedules."""
        raise NotImplementedError

    def invariants(self) -> Sequence[Invariant]:
        """Invariants checked after every quiescent step and/or at the end."""
        return ()

    def check_end(self, world: Any, results: Sequence[object]) -> Iterable[str]:
        """End-of-schedule checks given each thread's return value (violation messages)."""
        return ()

    # -- optional cheap reset --------------------------------------------------------------------

    def snapshot(self, world: Any) -> object | None:
        """A token from which :meth:`restore` rebuilds the initial world; None = no snapshots."""
        return None

    def restore(self, world: Any, snap: object) -> Any:
        """Return the world to the state captured by :meth:`snapshot`; returns the world."""
        raise NotImplementedError

    # -- identity ------------------------------------------------------------------------------

    def ref(self) -> WorkloadRef:
        return WorkloadRef(self.name, self.variant, self._module)

    def __repr__(self) -> str:
        return f"<workload {self.name}/{self.variant}>"


_REGISTRY: dict[str, type[Workload] | Callable[[str | None], Workload]] = {}


def register(name: str, *, module: str | None = None) -> Callable[[type[Workload]], type[Workload]]:
    """Class decorator: make a workload available by ``name``.  ``module`` is the importable
    module (or ``.py`` path) that registers it, so that worker processes can find it."""

    def deco(cls: type[Workload]) -> type[Workload]:
        cls.name = name
        if module is not None:
            cls._module = module
        _REGISTRY[name] = cls
        return cls

    return deco


def registered() -> tuple[str, ...]:
    _ensure_builtins()
    return tuple(sorted(_REGISTRY))


def _ensure_builtins() -> None:
    if "a" not in _REGISTRY:
        importlib.import_module("vtdsim.explore.workloads")


def get_workload(name: str, variant: str | None = None, module: str | None = None) -> Workload:
    """Instantiate the registered workload ``name`` (importing ``module`` first if given)."""
    if module is not None:
        load_module(module)
    _ensure_builtins()
    factory = _REGISTRY.get(name)
    if factory is None:
        raise ArgumentError("workload", name, f"one of {', '.join(sorted(_REGISTRY))}")
    return factory(variant)


def load_module(module: str) -> None:
    """Import a module by dotted name or ``.py`` path (registering its workloads)."""
    if module.endswith(".py"):
        modname = f"_vtdsim_user_{zlib.crc32(module.encode()):08x}"
        if modname in sys.modules:
            return
        spec = importlib.util.spec_from_file_location(modname, module)
        if spec is None or spec.loader is None:
            raise ArgumentError("module", module, "an importable .py file")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[modname] = mod
        spec.loader.exec_module(mod)
    else:
        importlib.import_module(module)


@dataclass(frozen=True, slots=True)
class WorkloadRef:
    """A picklable reference to a registered workload (for worker processes)."""

    name: str
    variant: str | None
    module: str | None = None

    def resolve(self) -> Workload:
        return get_workload(self.name, self.variant, self.module)
