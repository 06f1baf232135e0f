"""Guard of the sandbox pass-through: the worker passes ``workflows`` (and what workflows
import inside ``imports_passed_through``: ``contract``) through the sandbox, so their
modules are shared by every workflow in the worker. A module or class there that keeps
mutable state (a list, dict or set at module or class level) would leak between tickets
and break replay; this test fails when one appears."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections import deque
from types import ModuleType

import contract
import workflows

MUTABLE = (list, dict, set, bytearray, deque)


def modules(*packages: ModuleType) -> list[ModuleType]:
    found = []
    for package in packages:
        found.append(package)
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            found.append(importlib.import_module(info.name))
    return found


def mutable_state(module: ModuleType) -> list[str]:
    problems = []
    for name, value in vars(module).items():
        if name.startswith("__"):
            continue
        if isinstance(value, MUTABLE):
            problems.append(f"{module.__name__}.{name}: module-level {type(value).__name__}")
        if inspect.isclass(value) and value.__module__ == module.__name__:
            for attr, member in vars(value).items():
                # Pydantic keeps its schema in class attributes (model_fields ...), built
                # once at import; dunders and _sunder_ names (Enum's tables) are Python's own.
                if attr.startswith(("__", "model_", "_abc_")) or (
                    attr.startswith("_") and attr.endswith("_")
                ):
                    continue
                if isinstance(member, MUTABLE):
                    problems.append(
                        f"{module.__name__}.{name}.{attr}: class-level {type(member).__name__}"
                    )
    return problems


def test_modules_passed_through_the_sandbox_keep_no_mutable_state() -> None:
    problems = [p for module in modules(workflows, contract) for p in mutable_state(module)]
    assert problems == []


def test_the_guard_sees_module_and_class_level_state() -> None:
    sample = ModuleType("sample")
    exec(  # a module as the guard must catch it
        "cache = {}\nclass Ticket:\n    seen = []\n    limit = 3\n", vars(sample)
    )
    for value in vars(sample).values():
        if inspect.isclass(value):
            value.__module__ = "sample"
    assert mutable_state(sample) == [
        "sample.cache: module-level dict",
        "sample.Ticket.seen: class-level list",
    ]
