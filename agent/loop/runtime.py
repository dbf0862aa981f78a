"""What the loop's nodes work with besides the state: not checkpointed, rebuilt on resume."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from agent.goal.spec import Goal, GoalSpec
from agent.loop.view import RunView
from agent.planners.base import Planner
from agent.rundir.records import RunRecords
from agent.rundir.tool_records import ToolRecords
from agent.scoring.scorer import Scorer
from sandbox.workspace import Workspace


@dataclass
class Runtime:
    goal: Goal
    run_dir: Path
    workspace: Workspace
    planner: Planner
    records: RunRecords
    view: RunView
    scorer: Scorer  # runs the goal's command confined and scores it (agent.scoring.scorer)
    memory_limit_bytes: int | None = None
    unconfined: bool = False  # the run's --unconfined, for tools that run experiments (replay)
    session_start: float = field(default_factory=time.monotonic)
    session_base: float = 0.0  # wall seconds used before this session

    def wall_used(self) -> float:
        return self.session_base + time.monotonic() - self.session_start

    @property
    def spec(self) -> GoalSpec:
        return self.goal.spec

    @property
    def tool_records(self) -> ToolRecords:
        return ToolRecords(self.run_dir)
