"""Task families by name: the built-ins, and user families loaded from a "module:Class" spec.

`get_family("arithmetic")` returns a built-in; `get_family("my_tasks:Sudoku")` imports `my_tasks`,
instantiates `Sudoku()` (no arguments), checks it implements `TaskFamily`, and registers it under its
`name` for the rest of the process, so `family_of(meta)` finds the family that owns a problem.

A process that never loaded a user family (a fresh Ray actor) does not know its name: load it there
with `get_family(spec)` first, or give the family `name = "<module>:<Class>"`, which `family_of`
can then import by itself. Importing a user module runs user code.
"""

from __future__ import annotations

import importlib
from typing import Any

from eva.tasks.arithmetic import Arithmetic
from eva.tasks.base import TaskFamily, missing_members

FAMILIES: dict[str, TaskFamily] = {"arithmetic": Arithmetic()}


def register(family: TaskFamily) -> TaskFamily:
    """Add a family instance under its name; ValueError if the name is taken by another class."""
    missing = missing_members(family)
    if missing:
        raise ValueError(f"{type(family).__name__} is not a task family: missing {', '.join(missing)}")
    known = FAMILIES.get(family.name)
    if known is not None and type(known) is not type(family):
        raise ValueError(
            f"task family name {family.name!r} is taken by {type(known).__module__}.{type(known).__qualname__}"
        )
    FAMILIES.setdefault(family.name, family)
    return FAMILIES[family.name]


def load_family(spec: str) -> TaskFamily:
    """Import `module:Class`, instantiate it and register it; ValueError naming the spec on failure."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"task family {spec!r}: expected a built-in name ({', '.join(FAMILIES)}) or 'module:Class'")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # any import-time failure is the user's module: say so
        raise ValueError(f"task family {spec!r}: cannot import module {module_name!r}: {type(e).__name__}: {e}") from e
    cls = getattr(module, attr, None)
    if not isinstance(cls, type):
        raise ValueError(f"task family {spec!r}: module {module_name!r} has no class {attr!r}")
    try:
        family = cls()
    except Exception as e:
        raise ValueError(f"task family {spec!r}: {attr}() failed: {type(e).__name__}: {e}") from e
    missing = missing_members(family)
    if missing:
        raise ValueError(f"task family {spec!r}: {attr} is not a task family: missing {', '.join(missing)}")
    return register(family)


def get_family(spec: str) -> TaskFamily:
    """A family by registered name ("arithmetic") or by "module:Class" spec."""
    if spec in FAMILIES:
        return FAMILIES[spec]
    if ":" in spec:
        return load_family(spec)
    raise ValueError(f"unknown task family {spec!r}; known: {', '.join(FAMILIES)}; or give 'module:Class'")


def family_of(meta: dict[str, Any]) -> TaskFamily:
    """The family that owns a problem, from meta["family"]."""
    name = meta.get("family") if isinstance(meta, dict) else None
    if not isinstance(name, str):
        raise ValueError(f"problem meta has no family name: {meta!r:.200}")
    return get_family(name)
