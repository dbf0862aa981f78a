"""`read_file` and `read_log`: what the planner may read besides its prompt.

read_file sees the workspace's work tree only (never its git directory, the run's records or
anything a symlink points at outside); read_log the tail of an experiment's log.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field

from agent.tools.base import Tool, ToolArgs, ToolContext, ToolError
from sandbox.layout import MAX_REPEATS, log_path
from sandbox.reader import read_tail

MAX_LINES = 200  # a reply must fit the planner's context with room to spare
MAX_CHARS = 12_000


class ReadFileArgs(ToolArgs):
    path: str = Field(min_length=1, description="a file path relative to the workspace")
    start_line: int = Field(default=1, ge=1, description="first line to show (1-based)")
    lines: int = Field(default=MAX_LINES, ge=1, le=MAX_LINES, description="how many lines")


class ReadLogArgs(ToolArgs):
    exp: int = Field(ge=1, description="the experiment whose log to read")
    lines: int = Field(default=40, ge=1, le=MAX_LINES, description="newest lines to show")
    repeat: int | None = Field(default=None, ge=0, le=MAX_REPEATS - 1,
                               description="0: its first run, 1: its confirmation run; "
                                           "default: the first that has a log")


def read_file(ctx: ToolContext, args: ReadFileArgs) -> dict[str, Any]:
    path = _inside(ctx.workspace, args.path)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as err:
        raise ToolError(f"cannot read {args.path}: {err.strerror or err}") from None
    all_lines = text.splitlines()
    start = args.start_line - 1
    if all_lines and start >= len(all_lines):
        raise ToolError(f"{args.path} has {len(all_lines)} lines; ask for start_line "
                        f"1..{len(all_lines)}")
    shown = _capped("\n".join(all_lines[start:start + args.lines]))
    end = start + shown.count("\n") + 1 if shown else start
    return {"path": args.path, "lines": f"{start + 1}-{end} of {len(all_lines)}", "text": shown}


def read_log(ctx: ToolContext, args: ReadLogArgs) -> dict[str, Any]:
    repeats = range(MAX_REPEATS) if args.repeat is None else [args.repeat]
    # the second baseline is measured as a repeat: its only log is its run2 log
    found = next((r for r in repeats if log_path(ctx.run_dir, args.exp, r).is_file()), None)
    if found is None:
        which = "" if args.repeat is None else f" for repeat {args.repeat}"
        raise ToolError(f"experiment {args.exp:03d} has no log{which}; read the log of an "
                        "experiment that ran")
    try:
        tail = read_tail(log_path(ctx.run_dir, args.exp, found), args.lines)
    except OSError as err:
        raise ToolError(f"cannot read the log of experiment {args.exp:03d}: "
                        f"{err.strerror or err}") from None
    return {"exp": args.exp, "repeat": found, "tail": _capped(tail, keep_end=True)}


def _inside(workspace: Path, relative: str) -> Path:
    """`relative` under the workspace, refused when it leads out of it (.., an absolute path, a
    symlink) or into its git metadata."""
    root = workspace.resolve()
    path = (root / relative).resolve()
    if not path.is_relative_to(root) or Path(relative).is_absolute():
        raise ToolError(f"{relative} is outside the workspace; read_file reads only the "
                        "workspace's files, by a path relative to it")
    if ".git" in path.relative_to(root).parts:
        raise ToolError(f"{relative} is git metadata; read the workspace's files instead")
    if not path.is_file():
        raise ToolError(f"{relative} is not a file in the workspace; read one of its files")
    return path


def _capped(text: str, *, keep_end: bool = False) -> str:
    if len(text) <= MAX_CHARS:
        return text
    return "…" + text[-MAX_CHARS:] if keep_end else text[:MAX_CHARS] + "…"


READ_FILE = Tool(
    name="read_file",
    description="Read a file of the workspace (the training code and what lies beside it), by "
                "a path relative to the workspace; at most 200 lines per call.",
    args=ReadFileArgs, run=read_file)
READ_LOG = Tool(
    name="read_log",
    description="Read the newest lines of an experiment's training log, e.g. to see why it "
                "crashed or how its loss moved.",
    args=ReadLogArgs, run=read_log)
