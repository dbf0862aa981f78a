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

A line that is not one of these is skipped: a budget above 0 and at most the goal's bounds
(agent.goal.spec: experiments a whole number, wall at most 30 days; NaN, Infinity and huge numbers
fail), text that is plain (agent.text: not blank, no control characters).

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

from agent.goal.spec import MAX_EXPERIMENTS, MAX_SECONDS
from agent.rundir.names import APPROVAL_FILE, CONTROL_FILE, STATUS_FILE
from agent.text import text_problem

STOPPED_BY_A_PERSON = "stopped by a person"  # the stop reason a `stop` command leads to
COMMANDS = ("hint", "pause", "resume", "stop", "budget", "approve", "answer")
BUDGET_LIMITS = {"experiments": MAX_EXPERIMENTS, "wall": MAX_SECONDS}  # wall in seconds


class ControlError(ValueError):
    """A command that cannot be sent; the message names the problem and the fix."""


def validate(command: dict[str, Any]) -> dict[str, Any]:
    cmd = command.get("cmd")
    if cmd not in COMMANDS:
        raise ControlError(f"unknown command {cmd!r}; use one of {', '.join(COMMANDS)}")
    if cmd == "hint":
        _check_text(command.get("text"), "a hint", "hint TEXT", one_line=False)
    if cmd == "budget":
        _check_budget(command.get("what"), command.get("value"))
    if cmd == "approve" and not isinstance(command.get("on"), bool):
        raise ControlError("approve takes on or off")
    if cmd == "answer":
        _check_answer(command)
    return command


def _check_budget(what: Any, value: Any) -> None:
    if what not in BUDGET_LIMITS:
        raise ControlError("budget takes experiments or wall: budget experiments 20")
    limit = BUDGET_LIMITS[what]
    # `0 < value <= limit` is False for NaN, inf and huge integers alike (json.loads reads all)
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0 < value <= limit:
        raise ControlError(f"budget {what} needs a number above 0 and at most {limit:g}: "
                           f"budget {what} {'20' if what == 'experiments' else '600'}")
    if what == "experiments" and value != int(value):
        raise ControlError("budget experiments needs a whole number: budget experiments 20")


def _check_answer(command: dict[str, Any]) -> None:
    exp = command.get("exp")
    if not isinstance(exp, int) or isinstance(exp, bool) or exp < 0:
        raise ControlError("an answer names its experiment's number: exp 7")
    if command.get("decision") not in ("yes", "no", "edit"):
        raise ControlError("answer with yes, no or edit")
    if command["decision"] == "edit":
        _check_text(command.get("hypothesis"), "the new hypothesis", "one line of plain text",
                    one_line=True)


def _check_text(text: Any, what: str, fix: str, *, one_line: bool) -> None:
    if not isinstance(text, str):
        raise ControlError(f"{what} must be text: {fix}")
    if problem := text_problem(text, one_line=one_line):
        raise ControlError(f"{what} {problem}; send {fix}")


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
        except (ValueError, AttributeError, RecursionError):  # RecursionError: [[[[...]]]]
            continue
        commands.append({**command, "line": number})  # lines seen once this one is applied
    return commands, len(complete)


def write_approval(run_dir: Path, request: dict[str, Any]) -> None:
    _write_json(run_dir / APPROVAL_FILE, request)


def read_approval(run_dir: Path) -> dict[str, Any] | None:
    return _read_json(run_dir / APPROVAL_FILE)


def clear_approval(run_dir: Path) -> None:
    (run_dir / APPROVAL_FILE).unlink(missing_ok=True)




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
