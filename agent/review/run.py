"""One run as the review side sees it: its goal's metric, records, tool calls and live state.

Everything here only reads: the run's records and status files, and its sandbox through
`sandbox.RunReader` (which never opens the workspace, so never takes its lock), so it is safe on
a live run. Shared by the REPL and the `runs`, `history`, `show` and `report` commands.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from agent.rundir import control
from agent.rundir.records import RunRecords
from agent.rundir.runs import RUN_ID, RunError, run_goal_spec
from agent.rundir.tool_records import ToolCallRecord, ToolRecords
from sandbox.reader import RunReader

LIVE_STATES = ("starting", "planning", "tool", "running", "paused", "waiting_approval")


@dataclass
class Run:
    path: Path
    goal_name: str
    metric: str
    goal: str  # minimize | maximize

    @classmethod
    def load(cls, path: Path) -> Run:
        try:
            spec = run_goal_spec(path)
        except RunError:  # a broken goal.md: the run stays listable, under its id's name
            name = match[1] if (match := RUN_ID.fullmatch(path.name)) else path.name
            return cls(path=path, goal_name=name, metric="metric", goal="minimize")
        return cls(path=path, goal_name=spec.name, metric=spec.metric.name,
                   goal=spec.metric.goal)

    @property
    def id(self) -> str:
        return self.path.name

    @cached_property
    def sandbox(self) -> RunReader:
        return RunReader(self.path)

    def records(self) -> list[dict[str, Any]]:
        return RunRecords(self.path).read()

    def tool_calls(self) -> list[ToolCallRecord]:
        return ToolRecords(self.path).read()

    def status(self) -> dict[str, Any] | None:
        return control.read_status(self.path)

    def controller_pid(self) -> int | None:
        """The pid of the process running this run, or None when nothing runs it."""
        known, holder = self.sandbox.lock_holder()
        if known:
            return holder
        pid = (self.status() or {}).get("pid")  # no /proc/locks: trust status.json's pid
        return pid if isinstance(pid, int) and _pid_alive(pid) else None

    def stop_reason(self) -> str | None:
        """Why the run finished, as its status.json says (None while it goes on)."""
        reason = (self.status() or {}).get("stop_reason")
        return str(reason) if reason else None

    def state(self) -> str:
        """starting | planning | running | paused | waiting_approval (a live run),
        finished | stopped (ended by a person) | interrupted (resume it)."""
        status = self.status() or {}
        if status.get("state") == "finished":
            stopped = (self.stop_reason() or "").startswith(control.STOPPED_BY_A_PERSON)
            return "stopped" if stopped else "finished"
        if self.controller_pid() is not None:
            return str(status.get("state") or "starting")  # status.json comes after baselines
        return "interrupted"

    def record(self, exp: int) -> dict[str, Any]:
        records = self.records()
        found = next((r for r in records if r.get("exp") == exp), None)
        if found is None:
            raise RunError(missing_exp(exp, records, self.status()))
        return found


def _pid_alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def exp_range(records: list[dict[str, Any]]) -> str:
    numbers = sorted(r["exp"] for r in records)
    return f"{numbers[0]:03d}-{numbers[-1]:03d}" if numbers else "no experiments yet"


def missing_exp(exp: int, records: list[dict[str, Any]], status: dict[str, Any] | None) -> str:
    """Why there is no record of experiment `exp`, in one line."""
    if status and status.get("exp") == exp and status.get("state") != "finished":
        return f"experiment {exp:03d} is still in flight ({status.get('state')}); see `status`"
    if not records:
        return f"no experiment {exp}; this run has no finished experiments yet"
    return f"no experiment {exp}; this run has {exp_range(records)}"
