"""The worker's settings that the benchmark chose (README: Performance, worker settings)."""

from __future__ import annotations
import __future__

import gc
import importlib
import inspect
import pkgutil
from datetime import timedelta
from types import MappingProxyType, ModuleType
from typing import TypeVar

import pytest
from temporalio.common import RetryPolicy
from temporalio.worker import UnsandboxedWorkflowRunner
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

import workflows
from worker import (
    CACHE_ENV,
    DEFAULT_WORKFLOW_CACHE,
    SANDBOX_ENV,
    WORKFLOW_RUNNER,
    tune_garbage_collector,
    workflow_cache,
    workflow_runner,
)

# What a module of the workflow package may hold at its top level: the sandbox takes the
# package from outside (worker.WORKFLOW_RUNNER), so every ticket sees the same objects and
# none of them may be something a ticket could change.
# A TypeVar (a generic helper's type parameter) is only read by the type checker.
IMMUTABLE = (str, int, float, bool, bytes, tuple, frozenset, timedelta, MappingProxyType, TypeVar)
# Frozen in practice: built once at import, only read by the workflows.
READ_ONLY = (RetryPolicy,)


def package_modules() -> list[ModuleType]:
    names = [workflows.__name__] + [
        f"{workflows.__name__}.{info.name}" for info in pkgutil.iter_modules(workflows.__path__)
    ]
    return [importlib.import_module(name) for name in names]


def test_the_workflow_package_is_passed_through_the_sandbox() -> None:
    assert isinstance(WORKFLOW_RUNNER, SandboxedWorkflowRunner)
    assert "workflows" in WORKFLOW_RUNNER.restrictions.passthrough_modules


def test_the_workflow_package_holds_no_state_a_ticket_could_change() -> None:
    offenders = []
    for module in package_modules():
        for name, value in vars(module).items():
            if name.startswith("__") or inspect.ismodule(value) or callable(value):
                continue
            if value is None or isinstance(value, IMMUTABLE + READ_ONLY):
                continue
            if isinstance(value, __future__._Feature):
                continue  # from __future__ import annotations
            offenders.append(f"{module.__name__}.{name}: {type(value).__name__}")
        for cls in (v for v in vars(module).values() if inspect.isclass(v)):
            if cls.__module__ != module.__name__:
                continue
            for name, value in vars(cls).items():
                if not name.startswith("__") and isinstance(value, list | dict | set | bytearray):
                    offenders.append(f"{cls.__qualname__}.{name}: {type(value).__name__}")
    assert offenders == []


def test_the_cache_defaults_to_the_measured_size_and_refuses_nonsense(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(CACHE_ENV, raising=False)
    assert workflow_cache() == DEFAULT_WORKFLOW_CACHE == 500
    monkeypatch.setenv(CACHE_ENV, "2000")
    assert workflow_cache() == 2000
    for bad in ("0", "-1", "lots"):
        monkeypatch.setenv(CACHE_ENV, bad)
        with pytest.raises(SystemExit, match=f"{CACHE_ENV}: expected a positive whole number"):
            workflow_cache()


def test_the_worker_runs_tickets_unsandboxed_by_default_and_the_tests_sandboxed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The session fixture in tests/conftest.py: every worker a test builds is sandboxed.
    assert workflow_runner() is WORKFLOW_RUNNER
    monkeypatch.delenv(SANDBOX_ENV)
    assert isinstance(workflow_runner(), UnsandboxedWorkflowRunner)
    monkeypatch.setenv(SANDBOX_ENV, "1")
    assert workflow_runner() is WORKFLOW_RUNNER
    monkeypatch.setenv(SANDBOX_ENV, "yes")
    with pytest.raises(SystemExit, match=f"{SANDBOX_ENV}: expected 0 or 1, got 'yes'"):
        workflow_runner()


def test_the_worker_freezes_start_up_and_keeps_the_default_collection_thresholds() -> None:
    before = gc.get_threshold()
    try:
        tune_garbage_collector()
        assert gc.get_freeze_count() > 0  # start-up's objects: out of every collection
        # Larger thresholds let evicted tickets' cycles pile up (docs/performance.md).
        assert gc.get_threshold() == before == (700, 10, 10)
    finally:
        gc.unfreeze()
