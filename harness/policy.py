"""The one policy-file builder of the tests and the drills: the shipped policy
(``policy/default.yaml``) as data, changed by edits, written as YAML.

A file whose rules differ from the shipped ones gets a version of its own
(``<shipped version>+<digest of the text>``) unless an edit or ``version=`` sets one: a
worker's policy archive refuses a file that reuses an archived version with other text
(docs/policy-versions.md). ``version=`` is kept exactly, even the shipped one (to show
that conflict). ``text=`` writes raw text as it is (a broken file).
"""

from __future__ import annotations

import copy
import functools
import hashlib
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from policy.load import default_policy_path

Edit = Callable[[dict[str, Any]], object]
Channels = list[dict[str, Any]]


@functools.cache
def _shipped() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(default_policy_path().read_text(encoding="utf-8"))
    return data


def policy_data(*edits: Edit, targets: Mapping[str, Channels] | None = None) -> dict[str, Any]:
    """The shipped policy as data (a fresh copy), each of ``edits`` applied in turn, then
    ``targets``: these targets' channels set (a target the file lacks is added)."""
    data = copy.deepcopy(_shipped())
    for edit in edits:
        edit(data)
    for name, channels in (targets or {}).items():
        data["targets"].setdefault(name, {})["channels"] = channels
    return data


def policy_text(
    *edits: Edit, targets: Mapping[str, Channels] | None = None, version: str | None = None
) -> str:
    """``policy_data(...)`` as YAML, with its version (see the module's docstring)."""
    data = policy_data(*edits, targets=targets)
    if version is not None:
        data["version"] = version
    text = yaml.safe_dump(data, sort_keys=False)
    shipped = _shipped()
    if version is None and data["version"] == shipped["version"] and data != shipped:
        data["version"] = f"{shipped['version']}+{hashlib.sha256(text.encode()).hexdigest()[:8]}"
        text = yaml.safe_dump(data, sort_keys=False)
    return text


def write_policy(
    directory: Path,
    *edits: Edit,
    targets: Mapping[str, Channels] | None = None,
    version: str | None = None,
    name: str = "policy.yaml",
    text: str | None = None,
) -> Path:
    """Write ``policy_text(...)`` (or ``text`` as it is) to ``directory / name``."""
    path = directory / name
    if text is None:
        text = policy_text(*edits, targets=targets, version=version)
    path.write_text(text, encoding="utf-8")
    return path


def webhooks(base_url: str, names: Iterable[str], path: str | None = None) -> dict[str, Channels]:
    """``targets=`` for a sink: each target one webhook, at ``<base_url>/<target>`` (or all
    at ``<base_url>/<path>``)."""
    return {name: [{"type": "webhook", "url": f"{base_url}/{path or name}"}] for name in names}


# A ladder for the targets beyond the first response (docs/policy.md#more-targets): a
# warning at 75 %, the breach, then a repeat every hour.
TARGET_LADDER: list[dict[str, Any]] = [
    {"name": "warning", "kind": "warning", "at": {"share": 0.75}, "targets": ["duty-engineer"]},
    {"name": "breach", "kind": "breach", "at": {"share": 1.0}, "targets": ["support-lead"]},
    {
        "name": "repeat",
        "kind": "repeat",
        "at": {"share": 1.0},
        "repeat_every": "PT1H",
        "targets": ["duty-manager"],
    },
]


def with_targets(
    tier: str,
    next_reply: str | None = None,
    resolution: str | None = None,
    ladder: list[dict[str, Any]] | None = None,
    open_every_weekday: bool = True,
) -> Edit:
    """An edit giving ``tier`` a ``next_reply`` and/or ``resolution`` target (ISO 8601
    durations) with ``ladder`` (default ``TARGET_LADDER``); by default the business
    calendar keeps no holidays or closures, so instants in tests depend on weekdays only."""

    def edit(policy: dict[str, Any]) -> None:
        spec = policy["tiers"][tier]
        for metric, target in (("next_reply", next_reply), ("resolution", resolution)):
            if target:
                spec[metric] = {"target": target, "ladder": copy.deepcopy(ladder or TARGET_LADDER)}
        if open_every_weekday:
            hours = policy["calendars"]["us-business-hours"]
            hours["holidays"], hours["closures"] = [], []

    return edit
