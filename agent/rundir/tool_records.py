"""The run's tool calls, append-only: `runs/<run-id>/tools.jsonl`.

Each call has its own number and two lines: `started` (the tool, its arguments, the experiment
it precedes, who asked: the planner or an explicit step of the goal) before it runs, then
`finished` (its result, or its error line, and the seconds it took). A call with no `finished`
line was cut off by a crash: the loop runs it again under the same number, and a call that
finished is never run again (its recorded result is handed back instead).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent.rundir.names import TOOLS_FILE
from agent.rundir.records import append_line, strict_json

PLANNER, STEP = "planner", "step"  # who asked for a call


@dataclass(frozen=True)
class ToolCallRecord:
    call: int
    exp: int  # the experiment it preceded (the next one to run when it was called)
    tool: str
    args: dict[str, Any]
    by: str  # PLANNER or STEP
    status: str  # ok | error | running (started; no finished line yet)
    result: dict[str, Any] | None = None
    error: str | None = None
    seconds: float | None = None

    @property
    def finished(self) -> bool:
        return self.status != "running"

    def summary(self) -> str:
        """One line: `#3 read_log(exp=2) ok: …`."""
        args = ", ".join(f"{k}={v!r}" for k, v in self.args.items())
        head = f"#{self.call} {self.tool}({args})"
        if self.status == "running":
            return f"{head} running"
        if self.status == "error":
            return f"{head} failed: {self.error}"
        return f"{head} ok: {result_line(self.result or {})}"

    def as_dict(self) -> dict[str, Any]:
        return {"call": self.call, "exp": self.exp, "tool": self.tool, "args": self.args,
                "by": self.by, "status": self.status, "result": self.result,
                "error": self.error, "seconds": self.seconds}


def result_line(result: dict[str, Any], limit: int = 160) -> str:
    """A result dict as one short line (its `summary` when the tool gave one)."""
    text = str(result.get("summary") or json.dumps(result, sort_keys=True, default=str))
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


class ToolRecords:
    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / TOOLS_FILE

    def read(self) -> list[ToolCallRecord]:
        """Every call, in call order; a line torn by a crash is ignored."""
        started: dict[int, dict[str, Any]] = {}
        finished: dict[int, dict[str, Any]] = {}
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        for line in lines:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            target = started if event.get("event") == "started" else finished
            target.setdefault(event["call"], event)
        calls = []
        for n, start in sorted(started.items()):
            end = finished.get(n, {})
            calls.append(ToolCallRecord(
                call=n, exp=start["exp"], tool=start["tool"], args=start["args"], by=start["by"],
                status=("running" if not end else "ok" if end.get("ok") else "error"),
                result=end.get("result"), error=end.get("error"), seconds=end.get("seconds")))
        return calls

    def get(self, call: int) -> ToolCallRecord | None:
        return next((c for c in self.read() if c.call == call), None)

    def next_call(self) -> int:
        calls = self.read()
        return calls[-1].call + 1 if calls else 1

    def start(self, call: int, exp: int, tool: str, args: dict[str, Any], by: str) -> None:
        """Record that a call begins, once (a re-run after a crash adds nothing)."""
        if self.get(call) is None:
            self._append({"event": "started", "call": call, "exp": exp, "tool": tool,
                          "args": args, "by": by})

    def finish(self, call: int, *, result: dict[str, Any] | None = None,
               error: str | None = None, seconds: float) -> ToolCallRecord:
        record = self.get(call)
        assert record is not None, f"tool call {call} finished without starting"
        if not record.finished:
            self._append({"event": "finished", "call": call, "ok": error is None,
                          "result": result, "error": error, "seconds": round(seconds, 3)})
        return self.get(call)  # type: ignore[return-value]

    def _append(self, event: dict[str, Any]) -> None:
        event["time"] = datetime.now(UTC).isoformat(timespec="seconds")
        line = json.dumps(strict_json(event), sort_keys=True, allow_nan=False, default=str)
        append_line(self.path, line)
