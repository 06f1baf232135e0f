"""The drills' policy file: the shipped policy with a short Premium ladder whose
recipients are webhooks (or a chat webhook falling over to a webhook) on the drill's sink.

Premium tickets get: intake (a log line), a warning at ``warning_share`` of the target to
``duty-engineer``, the breach to ``duty-manager``, then a repeat to ``duty-manager`` every
minute (the shortest cadence the policy allows) until someone responds.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml

from policy.load import default_policy_path, parse_policy

# Recipients whose deliveries land on the sink (the intake goes to a log line).
SINK_TARGETS = ("duty-engineer", "duty-manager")


def iso(duration: timedelta) -> str:
    """``PT42.5S``: an ISO 8601 duration in seconds."""
    return f"PT{duration.total_seconds():g}S"


@dataclass(frozen=True)
class DrillPolicy:
    """What a drill changes in the shipped policy."""

    response_target: timedelta
    warning_share: float = 0.5
    failover_after: timedelta | None = None  # None: the shipped policy's default
    chat_first: bool = False  # duty-manager: chat first, then a webhook

    def data(self, sink_url: str) -> dict[str, Any]:
        data: dict[str, Any] = yaml.safe_load(default_policy_path().read_text(encoding="utf-8"))
        data["version"] = "drill"
        if self.failover_after is not None:
            data["delivery"] = {"failover_after": iso(self.failover_after)}
        manager: list[dict[str, str]] = [{"type": "webhook", "url": f"{sink_url}/duty-manager"}]
        if self.chat_first:
            manager.insert(0, {"type": "chat", "url": f"{sink_url}/chat"})
        data["targets"].update(
            {
                "intake-log": {"channels": [{"type": "log"}]},
                "duty-engineer": {
                    "channels": [{"type": "webhook", "url": f"{sink_url}/duty-engineer"}]
                },
                "duty-manager": {"channels": manager},
            }
        )
        data["tiers"]["premium"] = {
            "calendar": "always",
            "response_target": iso(self.response_target),
            "ladder": [
                {
                    "name": "intake",
                    "kind": "intake",
                    "at": {"offset": "PT0S"},
                    "targets": ["intake-log"],
                },
                {
                    "name": "warning",
                    "kind": "warning",
                    "at": {"share": self.warning_share},
                    "targets": ["duty-engineer"],
                },
                {
                    "name": "breach",
                    "kind": "breach",
                    "at": {"share": 1.0},
                    "targets": ["duty-manager"],
                },
                {
                    "name": "repeat",
                    "kind": "repeat",
                    "at": {"share": 1.0},
                    "repeat_every": "PT1M",
                    "targets": ["duty-manager"],
                },
            ],
        }
        # Mission Critical is never slower than Premium (the policy validator's rule).
        data["tiers"]["mission_critical"] = copy.deepcopy(data["tiers"]["premium"])
        return data

    def write(self, path: Path, sink_url: str) -> Path:
        """Write the policy file, checked by the same loader the worker uses."""
        text = yaml.safe_dump(self.data(sink_url), sort_keys=False)
        parse_policy(text, str(path))
        path.write_text(text, encoding="utf-8")
        return path
