"""Steering a live run through its directory: `control.jsonl` in, `approval.json` out.

Anyone (the REPL, a script, `echo >>`) appends one JSON command per line to
`runs/<run-id>/control.jsonl`; the loop reads the lines it has not seen yet (their count is in
its checkpointed state, so a resumed run never applies a command twice). Commands:

    {"cmd": "hint", "text": "..."}                 enters the next proposal's context
    {"cmd": "pause"} / {"cmd": "resume"}           hold / continue before the next experiment
    {"cmd": "stop"}                                finish after the current experiment
    {"cmd": "budget", "what": "experiments"|"wall", "value": N}   (wall in seconds)
    {"cmd": "approve", "on": true|false}           ask before each proposal runs
    {"cmd": "answer", "exp": N, "decision": "yes"|"no"|"edit", "hypothesis": "..."}

With approval on, the loop writes `approval.json` ({exp, hypothesis, rationale, diff}) while it
waits for the answer to that experiment, and removes it once answered. A REPL that dies never
harms the run: the run only reads what was appended.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

STOPPED_BY_A_PERSON = "stopped by a person"  # the stop reason a `stop` command leads to
CONTROL_FILE = "control.jsonl"
APPROVAL_FILE = "approval.json"
COMMANDS = ("hint", "pause", "resume", "stop", "budget", "approve", "answer")


class ControlError(ValueError):
    """A command that cannot be sent; the message names the problem and the fix."""


def validate(command: dict[str, Any]) -> dict[str, Any]:
    cmd = command.get("cmd")
    if cmd not in COMMANDS:
        raise ControlError(f"unknown command {cmd!r}; use one of {', '.join(COMMANDS)}")
    if cmd == "hint" and not str(command.get("text", "")).strip():
        raise ControlError("a hint needs text: hint TEXT")
    if cmd == "budget":
        if command.get("what") not in ("experiments", "wall"):
            raise ControlError("budget takes experiments or wall: budget experiments 20")
        value = command.get("value")
        if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
            raise ControlError("budget needs a positive number: budget wall 600")
    if cmd == "approve" and not isinstance(command.get("on"), bool):
        raise ControlError("approve takes on or off")
    if cmd == "answer" and command.get("decision") not in ("yes", "no", "edit"):
        raise ControlError("answer with yes, no or edit")
    return command


def send(run_dir: Path, command: dict[str, Any]) -> None:
    """Append one command (one write of one line, so concurrent senders do not interleave)."""
    line = json.dumps({**validate(command), "time": time.time()}) + "\n"
    fd = os.open(run_dir / CONTROL_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def read_new(run_dir: Path, seen: int) -> tuple[list[dict[str, Any]], int]:
    """Complete commands after the first `seen` lines, and the new count of lines seen.

    Each command carries `line`: the count of lines seen once it is applied. A malformed line
    is skipped (counted as seen) rather than stopping the run.
    """
    path = run_dir / CONTROL_FILE
    if not path.exists():
        return [], seen
    lines = path.read_text(encoding="utf-8", errors="replace").split("\n")
    complete = lines[:-1]  # the text after the last newline is a line still being written
    commands = []
    for number, line in enumerate(complete[seen:], start=seen + 1):
        try:
            command = validate(json.loads(line))
        except (ValueError, AttributeError):
            continue
        commands.append({**command, "line": number})  # lines seen once this one is applied
    return commands, len(complete)


def write_approval(run_dir: Path, request: dict[str, Any]) -> None:
    _write_json(run_dir / APPROVAL_FILE, request)


def read_approval(run_dir: Path) -> dict[str, Any] | None:
    return _read_json(run_dir / APPROVAL_FILE)


def clear_approval(run_dir: Path) -> None:
    (run_dir / APPROVAL_FILE).unlink(missing_ok=True)


STATUS_FILE = "status.json"


def write_status(run_dir: Path, status: dict[str, Any]) -> None:
    """The loop's public state for watchers: state (running | paused | waiting_approval |
    finished | stopped), pid, exp, hypothesis, experiments, budget, approve, updated."""
    _write_json(run_dir / STATUS_FILE, {**status, "updated": time.time()})


def read_status(run_dir: Path) -> dict[str, Any] | None:
    return _read_json(run_dir / STATUS_FILE)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)  # a reader sees the old file or the new one, never half


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None
