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

from harness.policy import policy_text, webhooks, write_policy
from policy.load import parse_policy

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

    def targets(self, sink_url: str) -> dict[str, list[dict[str, Any]]]:
        """intake-log: a log line; duty-engineer and duty-manager: webhooks on the sink
        (duty-manager on chat first with ``chat_first``)."""
        targets = {"intake-log": [{"type": "log"}], **webhooks(sink_url, SINK_TARGETS)}
        if self.chat_first:
            targets["duty-manager"].insert(0, {"type": "chat", "url": f"{sink_url}/chat"})
        return targets

    def edit(self, data: dict[str, Any]) -> None:
        """The shipped policy's delivery settings and tiers, changed for the drill."""
        if self.failover_after is not None:
            data["delivery"] = {"failover_after": iso(self.failover_after)}
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

    def write(self, path: Path, sink_url: str) -> Path:
        """Write the policy file (version ``drill``), checked by the same loader the worker
        uses."""
        text = policy_text(self.edit, targets=self.targets(sink_url), version="drill")
        parse_policy(text, str(path))
        return write_policy(path.parent, name=path.name, text=text)
