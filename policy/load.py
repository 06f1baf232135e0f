"""Loading the policy file: its path (``SUPPORT_POLICY_FILE`` or ``policy/default.yaml``),
YAML parsing and validation errors as ``<file>: <field path>: <problem>``."""

from __future__ import annotations

import os
from pathlib import Path

import yaml
from pydantic import (
    ValidationError,
)

from policy.schema import POLICY_FILE_ENV, Policy, PolicyError


def default_policy_path() -> Path:
    return Path(__file__).with_name("default.yaml")


def policy_path() -> Path:
    configured = os.environ.get(POLICY_FILE_ENV)
    return Path(configured) if configured else default_policy_path()


def parse_policy(text: str, source: str) -> Policy:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise PolicyError(f"{source}: not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise PolicyError(f"{source}: the policy must be a mapping at the top level")
    try:
        return Policy.model_validate(data)
    except ValidationError as err:
        problems = []
        for error in err.errors():
            field = ".".join(str(part) for part in error["loc"]) or "(top level)"
            message = error["msg"].removeprefix("Value error, ")
            problems.append(f"{source}: {field}: {message}")
        raise PolicyError("\n".join(problems)) from None


_cache: dict[Path, tuple[float, Policy]] = {}


def load_policy(path: Path | None = None) -> Policy:
    """Load and validate the policy file (cached until the file changes)."""
    path = path or policy_path()
    try:
        mtime = path.stat().st_mtime
        cached = _cache.get(path)
        if cached and cached[0] == mtime:
            return cached[1]
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise PolicyError(f"{path}: cannot read the policy file: {err.strerror}") from err
    policy = parse_policy(text, str(path))
    _cache[path] = (mtime, policy)
    return policy
