"""The small pieces every review view shares: a metric, a status, an experiment or a tool call
in one line, and JSON for scripts."""

from __future__ import annotations

import json
from typing import Any

from rich.text import Text

from agent.rundir.styles import status_style
from agent.rundir.tool_records import PLANNER, ToolCallRecord


def fmt_metric(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def status_text(status: str) -> Text:
    return Text(status, status_style(status))


def record_line(record: dict[str, Any], metric: str, best: float | None) -> Text:
    """One line for an experiment that just finished (the REPL's tail)."""
    return Text.assemble(
        f"exp {record['exp']:03d} ", status_text(record["status"]),
        f"  {metric}={fmt_metric(record.get('metric'))}  best {fmt_metric(best)}  ",
        (" ".join(str(record.get("hypothesis", "")).split())[:100], "dim"),
    )


def tool_line(call: ToolCallRecord) -> Text:
    """One line for a tool call (the REPL's tail, `show`)."""
    style = {"ok": "cyan", "error": "red"}.get(call.status, "magenta")
    who = "" if call.by == PLANNER else " (goal step)"
    return Text.assemble((f"tool #{call.call}", style), f"{who} before exp {call.exp:03d}  ",
                         (call.summary().split(" ", 1)[1], "dim"))


def to_json(value: Any) -> str:
    """One JSON document for a script (`--json`)."""
    return json.dumps(value, indent=2, ensure_ascii=False) + "\n"
