"""The reply grammar: one ``REF ACTION [ARGS]`` command per line."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Action = Literal[
    "monitor", "home", "facility", "hospital", "clear", "release",
    "positive", "transfer", "lost", "check", "missed", "note",
]


@dataclass(frozen=True, slots=True)
class Command:
    """One parsed command line; ``args`` as in the brief's parse schema."""

    ref: str
    action: Action
    args: dict[str, Any] = field(default_factory=dict)
    line: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"ref": self.ref, "action": self.action, "args": dict(self.args), "line": self.line}
