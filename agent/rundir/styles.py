"""The colour each experiment status is shown in, wherever records are drawn (live view, review)."""

from __future__ import annotations

STATUS_STYLE = {"baseline": "blue", "keep": "green", "discard": "yellow", "rejected": "cyan",
                "interrupted": "magenta"}
FAILED_STYLE = "red"  # every other status is a failure: crashed, timeout, invalid_edit, ...


def status_style(status: str) -> str:
    return STATUS_STYLE.get(status, FAILED_STYLE)
