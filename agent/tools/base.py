"""What every tool shares: its arguments' schema, the context it runs in, its one-line error.

A tool is a function `run(ctx, args) -> dict` with a pydantic model for its arguments. The
planner sees the model's JSON schema (function calling) and gets back the result dict as JSON,
or the ToolError's line; the loop records both (agent.rundir.tool_records).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict
from rich.console import Console

from agent.goal.spec import Goal
from agent.rundir import ranking
from agent.rundir.names import TOOL_CALLS_DIR
from agent.rundir.records import RunRecords


class ToolError(RuntimeError):
    """A tool call that failed; str() is one line naming the problem and the fix. It goes back
    to the planner as the call's result: the run goes on."""


@contextmanager
def as_tool_errors(errors: tuple[type[Exception], ...]) -> Iterator[None]:
    """Turn the one-line errors a module refuses with (`errors`) into ToolErrors."""
    try:
        yield
    except errors as err:
        raise ToolError(str(err)) from None


class ToolArgs(BaseModel):
    """Base of every tool's arguments: unknown keys are refused by name."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class ToolContext:
    """What a tool may use: the run it serves, never the planner or the graph."""

    run_dir: Path  # runs/<run-id>/
    goal: Goal  # the goal as the run loaded it (tool settings: ledger, merge, teacher)
    workspace: Path  # runs/<run-id>/workspace/ (the git sandbox's work tree)
    call: int  # this call's number in the run (agent.rundir.tool_records)
    console: Console | None = None  # for progress bars; None: quiet
    unconfined: bool = False  # the run's `--unconfined` (replays run as experiments do)

    @property
    def runs_dir(self) -> Path:
        return self.run_dir.parent

    @property
    def out_dir(self) -> Path:
        """This call's own folder, `runs/<run-id>/tools/call-007/`: the same on a resumed call,
        so a call cut off by a crash can pick up what it wrote."""
        return self.run_dir / TOOL_CALLS_DIR / f"call-{self.call:03d}"


def best_kept_exp(ctx: ToolContext, wanted: str) -> int:
    """The run's best kept experiment (rundir.ranking), or a ToolError saying there is none yet:
    `wanted` names what the caller needed it for, e.g. "no best checkpoint to merge"."""
    best = ranking.best_record(RunRecords(ctx.run_dir).read(), ctx.goal.spec.metric.goal)
    if best is None:
        raise ToolError(f"nothing was kept yet, so this run has {wanted}; call it after an "
                        "improvement is kept")
    return int(best["exp"])


def standing_exp(ctx: ToolContext, wanted: str) -> int:
    """The experiment the run stands for, as `RUN` means in export, generate and merge
    (rundir.ranking.standing_record: its best kept one, else its first baseline run), or a
    ToolError before a baseline has a metric: `wanted` names what the caller needed it for."""
    standing = ranking.standing_record(RunRecords(ctx.run_dir).read(), ctx.goal.spec.metric.goal)
    if standing is None:
        raise ToolError(f"no baseline was measured yet, so this run has {wanted}; call it after "
                        "the baseline")
    return int(standing["exp"])


@dataclass(frozen=True)
class Tool:
    name: str
    description: str  # what the planner reads: what it does and when to call it
    args: type[ToolArgs]
    run: Callable[[ToolContext, Any], dict[str, Any]]  # (ctx, args: an instance of `args`)
