"""The one interface every planner shares: `propose(context) -> Proposal`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from pydantic import BaseModel, Field, field_validator

from agent.text import text_problem
from sandbox.knobs import KnobSpec


class SearchReplaceEdit(BaseModel):
    """Replace the single occurrence of `search` in the editable file `path` with `replace`."""

    path: str
    search: str = Field(min_length=1)
    replace: str


class KnobEdit(BaseModel):
    """Set the top-level constant `knob` (declared in the goal's knobs) to `value`."""

    knob: str
    value: float | int | str | bool


@dataclass(frozen=True)
class Usage:
    """LLM cost of one proposal (zero for planners without an LLM)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    cost_usd: float | None = None
    attempts: int = 1  # replies it took to get a valid proposal (repairs, retries)

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class ProposalReply(BaseModel):
    """What an LLM must send: the schema given to it and validated on its reply."""

    hypothesis: str = Field(min_length=3, max_length=300)  # one line: what and why it helps
    rationale: str = ""
    edits: list[SearchReplaceEdit | KnobEdit] = Field(min_length=1)

    # plain text: it becomes a commit message, a journal entry and a prompt line
    @field_validator("hypothesis")
    @classmethod
    def _one_line(cls, value: str) -> str:
        if problem := text_problem(value, one_line=True):
            raise ValueError(f"the hypothesis {problem}; write one line of plain text")
        return value

    @field_validator("rationale")
    @classmethod
    def _plain(cls, value: str) -> str:
        if value.strip() and (problem := text_problem(value, one_line=False)):
            raise ValueError(f"the rationale {problem}; write plain text")
        return value


class Proposal(ProposalReply):
    """A validated reply plus what it cost to get."""

    usage: Usage = Field(default_factory=Usage, exclude=True)


class ToolCall(BaseModel):
    """One tool the planner asks to run; `id` pairs it with its result (function calling)."""

    id: str = ""
    name: str = Field(min_length=1)
    arguments: dict[str, Any] = {}


class ToolCallsReply(BaseModel):
    """The JSON form of a tool request, for servers without function calling."""

    tool_calls: list[ToolCall] = Field(min_length=1)


class ToolRequest(ToolCallsReply):
    """A planner's answer that asks for tools instead of proposing an experiment."""

    usage: Usage = Field(default_factory=Usage, exclude=True)


@dataclass(frozen=True)
class ToolExchange:
    """A tool call of the experiment being planned, with what it returned."""

    call: ToolCall
    result: str  # as the planner reads it (JSON, or `error: …`)
    reply: int  # which planner reply asked for it: calls of one reply go back together


@dataclass(frozen=True)
class ExperimentSummary:
    """What the planner may know about a past experiment."""

    exp: int
    hypothesis: str
    status: str  # keep | discard | crashed | timeout | oom | no_metric | invalid | rejected ...
    metric: float | None
    knobs: dict[str, Any] = field(default_factory=dict)  # knob values the experiment ran with


@dataclass(frozen=True)
class Failure:
    """What went wrong last, handed from `reflect` to the next proposal."""

    what: str  # e.g. "exp 007 crashed: exit 1"
    diagnosis: str  # reflect's reading of it: the cause and what to do differently
    log_tail: str = ""  # the newest lines of its log (the error is at the end)

    @property
    def head(self) -> str:
        """What failed and the diagnosis, without the log."""
        return f"{self.what}\nDiagnosis: {self.diagnosis}" if self.diagnosis else self.what

    def as_dict(self) -> dict[str, str]:
        return {"what": self.what, "diagnosis": self.diagnosis, "log_tail": self.log_tail}


@dataclass(frozen=True)
class PlanContext:
    brief: str  # the goal's research brief
    metric_name: str
    goal: Literal["minimize", "maximize"]
    editable_files: dict[str, str]  # path -> current best code
    knobs: dict[str, KnobSpec]  # tunable constants and their allowed values
    current_knobs: dict[str, Any]  # their values in the current best code
    history: list[ExperimentSummary]  # oldest first
    best_metric: float | None
    baseline_metric: float | None
    last_failure: Failure | None = None  # the last failure, diagnosed by reflect
    hints: list[str] = field(default_factory=list)  # from a person, newest last
    seed: int = 1337
    # tools the planner may call now ({name, description, parameters}); empty when the goal
    # enables none or this experiment's tool budget is spent
    tools: list[dict[str, Any]] = field(default_factory=list)
    tool_exchanges: list[ToolExchange] = field(default_factory=list)  # this experiment's calls
    tool_note: str = ""  # e.g. that the tool budget is spent


class PlannerError(RuntimeError):
    """The planner could not produce a valid proposal; the message says why (one line)."""


class PlannerUnavailable(PlannerError):
    """The planner's endpoint could not be used (connection, HTTP status, refusal): a transport
    failure, reported as such and never handed to the LLM as an experiment to diagnose. The
    message names the endpoint, the status and what the server said."""


class Planner(Protocol):
    name: str
    chooses_tools: bool  # False: the goal's tool settings run as explicit steps instead

    def propose(self, context: PlanContext) -> Proposal | ToolRequest:
        """A new proposal for the next experiment (or, when `context.tools` offers some, a
        request to run tools first), or PlannerError."""
        ...

    def observe(self, proposal: Proposal, knobs: dict[str, Any], metric: float | None,
                status: str) -> None:
        """Learn the outcome of a proposal (the search planner tells its sampler)."""
        ...

    def warm_up(self, context: PlanContext) -> None:
        """Begin, in the background, what the first proposal needs (the local planner loads
        its model and reads the start of its prompt, `context`'s): the loop calls it while the
        last baseline is scored, when nothing trains; propose() waits for it."""
        ...
