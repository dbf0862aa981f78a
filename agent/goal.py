"""Goal files: YAML front matter (validated with pydantic) + a Markdown research brief.

Every mistake becomes one `GoalError` line that names the key and the fix, before anything runs.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from agent.knob_values import top_level_assignments
from sandbox.errors import EditError, TemplateError
from sandbox.knobs import KnobSpec, parse_knobs
from sandbox.templates import template_dir

DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h)?\s*$")
UNIT_SECONDS = {None: 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}


class GoalError(ValueError):
    """A goal file that cannot run; str() is one line naming the problem and the fix."""


def parse_duration(value: Any) -> float:
    """`60`, `60s`, `2m`, `1.5h` -> seconds."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration; write e.g. 60s, 5m or 1h")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = DURATION.match(str(value))
        if not match:
            raise ValueError(f"{value!r} is not a duration; write e.g. 60s, 5m or 1h")
        seconds = float(match[1]) * UNIT_SECONDS[match[2]]
    if seconds <= 0:
        raise ValueError(f"{value!r} must be longer than zero; write e.g. 60s")
    return seconds


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Metric(Strict):
    name: str = Field(pattern=r"^\w+$")
    goal: Literal["minimize", "maximize"] = "minimize"


class Budget(Strict):
    per_experiment: float = 60.0  # seconds of training each experiment may take
    experiments: int = Field(default=20, ge=1)
    wall: float = 1800.0  # seconds for the whole run
    tokens: int | None = Field(default=None, ge=1)  # LLM tokens for the whole run
    grace: float = 120.0  # beyond per_experiment: start-up, evaluation, checkpointing

    _durations = field_validator("per_experiment", "wall", "grace", mode="before")(
        lambda v: parse_duration(v)
    )

    @model_validator(mode="after")
    def _possible(self) -> Budget:
        if self.per_experiment > self.wall:
            raise ValueError(
                f"per_experiment ({self.per_experiment:g}s) exceeds wall ({self.wall:g}s); "
                "raise wall or lower per_experiment"
            )
        return self


class GoalSpec(Strict):
    """The front matter, exactly as a user may write it."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=64)
    template: str | None = None
    workspace: Path | None = None
    editable: list[str] = Field(min_length=1)
    command: str = Field(min_length=1)
    metric: Metric
    budget: Budget = Budget()
    planner: Literal["auto", "openai", "local", "search"] = "auto"
    model: str | None = None
    knobs: dict[str, dict[str, Any]] = {}
    min_delta: float | None = Field(default=None, ge=0)  # keep only improvements beyond this
    memory_limit_mb: int | None = Field(default=None, ge=64)
    seed: int = 1337

    @model_validator(mode="after")
    def _one_source(self) -> GoalSpec:
        if (self.template is None) == (self.workspace is None):
            raise ValueError("give exactly one of `template: bitnet-lm` or `workspace: PATH`")
        return self


class Goal(BaseModel):
    """A validated goal: the spec, its brief, where it came from, and parsed knobs."""

    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True)

    spec: GoalSpec
    brief: str
    path: Path
    source_dir: Path  # the template or repository the workspace is made from
    knobs: dict[str, KnobSpec]


def load_goal(path: str | Path, base_dir: Path | None = None) -> Goal:
    """Read, parse and check a goal file; raise GoalError with one clear line otherwise.

    A relative `workspace:` is read from `base_dir` (default: the goal file's folder).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise GoalError(f"{path}: no such goal file; pass the path of a GOAL.md") from None
    except (OSError, UnicodeDecodeError) as err:
        raise GoalError(f"{path}: cannot read it ({err}); pass a readable UTF-8 file") from None
    front, brief = split_front_matter(path, text)
    try:
        spec = GoalSpec.model_validate(front)
    except ValidationError as err:
        raise GoalError(f"{path}: {describe_validation_error(err)}") from None
    if not brief.strip():
        raise GoalError(f"{path}: the research brief after the front matter is empty; "
                        "describe the goal in a few sentences")
    source_dir = _source_dir(path, spec, base_dir or path.parent)
    _check_editable(path, source_dir, spec.editable)
    try:
        knobs = parse_knobs(spec.knobs)
    except EditError as err:
        raise GoalError(f"{path}: knobs: {err}") from None
    _check_knobs_exist(path, source_dir, spec.editable, knobs)
    return Goal(spec=spec, brief=brief.strip(), path=path, source_dir=source_dir, knobs=knobs)


def split_front_matter(path: Path, text: str) -> tuple[dict, str]:
    lines = text.splitlines(keepends=True)
    if not lines or lines[0].strip() != "---":
        raise GoalError(f"{path}: no YAML front matter; start the file with a `---` line")
    end = next((i for i, line in enumerate(lines[1:], start=1) if line.strip() == "---"), None)
    if end is None:
        raise GoalError(f"{path}: the front matter never ends; close it with a `---` line")
    try:
        front = yaml.safe_load("".join(lines[1:end])) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 2}" if mark else ""
        problem = getattr(err, "problem", None) or "invalid YAML"
        raise GoalError(f"{path}: front matter is not valid YAML{where} ({problem}); "
                        "fix the indentation or quoting there") from None
    if not isinstance(front, dict):
        raise GoalError(f"{path}: front matter must be `key: value` pairs, "
                        f"not {type(front).__name__}")
    return front, "".join(lines[end + 1 :])


def describe_validation_error(err: ValidationError) -> str:
    """The first pydantic error as `key.sub: problem; fix`."""
    first = err.errors()[0]
    key = ".".join(str(part) for part in first["loc"]) or "front matter"
    kind, message = first["type"], first["msg"]
    if kind == "extra_forbidden":
        parent = first["loc"][:-1]
        model: type[BaseModel] = GoalSpec
        for part in parent:
            model = model.model_fields[str(part)].annotation  # type: ignore[assignment]
        known = ", ".join(model.model_fields)
        return f"unknown key `{key}`; known keys here: {known}"
    if kind == "missing":
        return f"`{key}` is missing; add it (see goals/pycode-bitnet.md for an example)"
    message = message.removeprefix("Value error, ")
    return f"`{key}`: {message} (got {first.get('input')!r})"


def _source_dir(path: Path, spec: GoalSpec, base_dir: Path) -> Path:
    if spec.template is not None:
        try:
            return template_dir(spec.template)
        except TemplateError as err:
            raise GoalError(f"{path}: template: {err}") from None
    assert spec.workspace is not None
    repo = spec.workspace if spec.workspace.is_absolute() else base_dir / spec.workspace
    if not (repo / ".git").exists():
        raise GoalError(f"{path}: workspace: {repo} is not a git repository; "
                        "point it at a repository (or run `git init` there)")
    return repo.resolve()


def _check_editable(path: Path, source_dir: Path, editable: list[str]) -> None:
    for name in editable:
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise GoalError(f"{path}: editable: {name!r} must be a path inside the workspace")
        if not (source_dir / name).is_file():
            raise GoalError(f"{path}: editable: {name} does not exist in {source_dir}; "
                            "list files that exist there")


def _check_knobs_exist(
    path: Path, source_dir: Path, editable: list[str], knobs: dict[str, KnobSpec]
) -> None:
    assigned: set[str] = set()
    for name in editable:
        if name.endswith(".py"):
            try:
                assigned.update(top_level_assignments((source_dir / name).read_text("utf-8")))
            except (SyntaxError, UnicodeDecodeError):
                continue  # the sandbox reports unparsable files when an edit touches them
    for name in knobs:
        if name not in assigned:
            raise GoalError(f"{path}: knobs: {name} is not a top-level constant of "
                            f"{', '.join(editable)}; use one of the UPPERCASE names there")
