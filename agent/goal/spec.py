"""Goal files: YAML front matter (validated with pydantic) + a Markdown research brief.

Every mistake becomes one `GoalError` line that names the key and the fix, before anything runs.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from agent.goal.knob_values import top_level_assignments
from agent.goal.vocab import PLANNER_NAMES
from merge.method_names import METHODS
from sandbox.errors import EditError, TemplateError
from sandbox.knobs import KnobSpec, parse_knobs
from sandbox.limits import DEFAULT_MAX_PROCESSES, DEFAULT_OUTPUT_LIMIT_MB
from sandbox.templates import template_dir

RUN_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"  # a goal's name: run ids are NAME-YYYYmmdd-HHMMSS
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h)?\s*$")
UNIT_SECONDS = {None: 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}
# Every number from outside is finite and in range: NaN would disable a limit, a huge value
# overflows a timeout or a sleep. The goal and control.jsonl share these bounds.
MAX_SECONDS = 30 * 86400  # any duration: 30 days
MAX_EXPERIMENTS = 1_000_000
MAX_TOKENS = 10**12
MAX_MEMORY_MB = 2**20  # 1 TiB
MAX_PROCESSES = 100_000
MAX_SEED = 2**31 - 1  # numpy and torch take seeds below 2**32; runs add a few to it
# knobs that set a template model's shapes: with `init:` the base checkpoint sets them instead
SHAPE_KNOBS = {"bitnet-lm": ("N_LAYER", "N_EMBD", "N_HEAD", "N_KV_HEAD", "MLP_RATIO", "SEQ_LEN",
                             "TIE_EMBEDDINGS", "FFN_ACT")}


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
    if not 0 < seconds <= MAX_SECONDS:  # also False for NaN and inf
        raise ValueError(f"{value!r} must be above zero and at most 30 days; write e.g. 60s")
    return seconds


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Metric(Strict):
    name: str = Field(pattern=r"^\w+$")
    goal: Literal["minimize", "maximize"] = "minimize"


class Budget(Strict):
    per_experiment: float = 60.0  # seconds of training each experiment may take
    experiments: int = Field(default=20, ge=1, le=MAX_EXPERIMENTS)
    wall: float = 1800.0  # seconds for the whole run
    tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS)  # LLM tokens for the run
    grace: float = 120.0  # beyond per_experiment: start-up, evaluation, checkpointing
    tool_calls: int = Field(default=4, ge=0, le=100)  # the planner's, per experiment

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


TOOL_NAMES = ("record_contribution", "verify_contribution", "merge_specialists", "generate_data",
              "read_file", "read_log")
ToolName = Literal[TOOL_NAMES]
LEDGER_TOOLS = ("record_contribution", "verify_contribution")


class LedgerSettings(Strict):
    """Where the ledger tools write and whose key signs (`--ledger` and `--key` of the CLI)."""

    path: str | None = Field(default=None, min_length=1)  # default: $MAGNET_LEDGER, else ~/.local
    key: Path  # an Ed25519 key file (`magnet-agent ledger keygen KEYFILE`)
    stake: int | None = Field(default=None, ge=0)  # per claim; default: the ledger's rules


class MergeSettings(Strict):
    """What `merge_specialists` merges this run's best with, and how (`magnet-agent merge`)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False,
                              populate_by_name=True)

    with_: str = Field(alias="with", min_length=1)  # RUN, RUN:EXP or a checkpoint directory
    method: Literal[METHODS] = "ties"  # merge.method_names: torch-free
    # the method's keyword arguments (lam, density, drop_rate, seed, weights, sign_election)
    options: dict[str, float | int | bool | list[float]] = {}


class TeacherSettings(Strict):
    """The model `generate_data` writes with: `local` (the bundled model) or an `openai` model
    name (served at OPENAI_BASE_URL)."""

    model: str = Field(default="local", min_length=1)


class GoalSpec(Strict):
    """The front matter, exactly as a user may write it."""

    name: str = Field(pattern=RUN_NAME, max_length=64)
    template: str | None = None
    workspace: Path | None = None
    editable: list[str] = Field(min_length=1)
    command: str = Field(min_length=1)
    metric: Metric
    budget: Budget = Budget()
    planner: Literal[PLANNER_NAMES] = "auto"
    model: str | None = None
    knobs: dict[str, dict[str, Any]] = {}
    min_delta: float | None = Field(default=None, ge=0)  # keep only improvements beyond this
    memory_limit_mb: int | None = Field(default=None, ge=64, le=MAX_MEMORY_MB)
    seed: int = Field(default=1337, ge=0, le=MAX_SEED)
    # what the confined experiment may reach beyond its workspace and output directory
    network: bool = False
    env: list[str] = []  # names of this machine's environment variables it may see
    log_limit_mb: float = Field(default=50, gt=0, le=100_000)  # output beyond it stops the run
    # bytes in the output directory (and any one file); beyond it the run stops as output_limit
    output_limit_mb: float = Field(default=DEFAULT_OUTPUT_LIMIT_MB, gt=0, le=MAX_MEMORY_MB)
    max_processes: int = Field(default=DEFAULT_MAX_PROCESSES, ge=8, le=MAX_PROCESSES)  # at once
    # files and directories the experiment may read (read-only, same path): its own data
    readable: list[Path] = []
    # the score: a command the researcher cannot edit, run after training with the outputs
    # read-only (its METRIC lines count); a template's own evaluator when it has one
    evaluate: str | None = Field(default=None, min_length=1)
    corpus: str | None = None  # the corpus a template trains on and is scored on (MAGNET_CORPUS)
    # start every run from this checkpoint (RUN, RUN:EXP or a directory): tune a specialist of a
    # base instead of training from random weights (MAGNET_INIT_CHECKPOINT)
    init: str | None = Field(default=None, min_length=1)
    # tools the planner may call (an `openai` planner chooses; `local` and `search` run the
    # ledger and merge tools as explicit steps), and their settings
    tools: list[ToolName] = []
    ledger: LedgerSettings | None = None
    merge: MergeSettings | None = None
    teacher: TeacherSettings = TeacherSettings()

    @model_validator(mode="after")
    def _one_source(self) -> GoalSpec:
        if (self.template is None) == (self.workspace is None):
            raise ValueError("give exactly one of `template: bitnet-lm` or `workspace: PATH`")
        return self

    @field_validator("env")
    @classmethod
    def _env_names(cls, names: list[str]) -> list[str]:
        for name in names:
            if not ENV_NAME.match(name):
                raise ValueError(f"{name!r} is not an environment variable name; list names "
                                 "such as HF_HOME")
        return names

    @model_validator(mode="after")
    def _corpus_in_one_place(self) -> GoalSpec:
        if "MAGNET_CORPUS=" in self.command:
            raise ValueError("set the corpus with the `corpus:` key, not MAGNET_CORPUS in "
                             "`command:` (the evaluator scores on the goal's corpus)")
        if self.corpus is not None and self.template is None:
            raise ValueError("`corpus:` is for templates; a repository reads its own data")
        return self

    @model_validator(mode="after")
    def _tools_have_settings(self) -> GoalSpec:
        if len(set(self.tools)) != len(self.tools):
            raise ValueError("a tool is listed twice; list each once")
        if self.ledger is None and (needs := [t for t in self.tools if t in LEDGER_TOOLS]):
            raise ValueError(f"tool {needs[0]} needs `ledger: {{key: KEYFILE}}` (make one with "
                             "`magnet-agent ledger keygen KEYFILE`)")
        if self.merge is None and "merge_specialists" in self.tools:
            raise ValueError("tool merge_specialists needs `merge: {with: RUN|CHECKPOINT}`, "
                             "the specialist to merge this run's best with")
        if "merge_specialists" in self.tools and self.init is None:
            raise ValueError("tool merge_specialists merges specialists of one base: set "
                             "`init:` to the base checkpoint this run tunes")
        return self

    @model_validator(mode="after")
    def _init_keeps_the_shapes(self) -> GoalSpec:
        if self.init is None:
            return self
        if self.template is None:
            raise ValueError("`init:` is for templates; a repository loads its own weights")
        for name in SHAPE_KNOBS.get(self.template, ()):
            if name in self.knobs:
                raise ValueError(f"knob {name} changes the model's shape, which `init:` takes "
                                 "from the base checkpoint; remove it from `knobs:`")
        return self


class Goal(BaseModel):
    """A validated goal: the spec, its brief, where it came from, and parsed knobs."""

    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True)

    spec: GoalSpec
    brief: str
    path: Path
    source_dir: Path  # the template or repository the workspace is made from
    knobs: dict[str, KnobSpec]


def load_goal(path: str | Path, base_dir: Path | None = None, *,
              repository: Path | None = None, moved_to: Path | None = None) -> Goal:
    """Read, parse and check a goal file; raise GoalError with one clear line otherwise.

    A relative `workspace:` is read from `base_dir` (default: the goal file's folder);
    `repository` replaces it (a replay's copy of the contributor's repository). `moved_to`
    stands in for a `workspace:` repository that is no longer there (a run's own work tree:
    resuming or reviewing a run does not need what it was made from).
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
    source_dir = _source_dir(path, spec, base_dir or path.parent, repository, moved_to)
    _check_editable(path, source_dir, spec.editable)
    try:
        knobs = parse_knobs(spec.knobs)
    except EditError as err:
        raise GoalError(f"{path}: knobs: {err}") from None
    _check_knobs_exist(path, source_dir, spec.editable, knobs)
    spec = _with_key_path(spec, base_dir or path.parent)
    spec = _with_readable(path, spec, base_dir or path.parent)
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
    except ValueError as err:  # e.g. int() refuses 4,300+ digits, a date has month 13
        why = str(err).split(":")[0]
        raise GoalError(f"{path}: front matter holds a value that cannot be read ({why}); "
                        "fix it or quote it") from None
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
    if kind == "literal_error" and first["loc"][0] == "tools":
        return (f"unknown tool {_shown(first.get('input'))} in `tools`; known tools: "
                f"{', '.join(TOOL_NAMES)}")
    if kind == "missing":
        return f"`{key}` is missing; add it (see goals/pycode-bitnet.md for an example)"
    message = message.removeprefix("Value error, ")
    if not first["loc"]:  # a check across keys: the message names them
        return message
    return f"`{key}`: {message} (got {_shown(first.get('input'))})"


def _shown(value: Any) -> str:
    """repr cut short: an overlong number must not fill the one line."""
    text = repr(value) if not isinstance(value, int) or abs(value) < 10**40 else "a huge integer"
    return text if len(text) <= 60 else text[:57] + "..."


def _source_dir(path: Path, spec: GoalSpec, base_dir: Path, repository: Path | None,
                moved_to: Path | None = None) -> Path:
    if spec.template is not None:
        try:
            return template_dir(spec.template)
        except TemplateError as err:
            raise GoalError(f"{path}: template: {err}") from None
    assert spec.workspace is not None
    repo = repository or (spec.workspace if spec.workspace.is_absolute()
                          else base_dir / spec.workspace)
    if not (repo / ".git").exists():
        if moved_to is not None and repository is None:
            return moved_to.resolve()
        raise GoalError(f"{path}: workspace: {repo} is not a git repository; "
                        "point it at a repository (or run `git init` there)")
    return repo.resolve()


def _with_key_path(spec: GoalSpec, base_dir: Path) -> GoalSpec:
    """The spec with `ledger.key` made absolute (read from `base_dir`, like `workspace:`). The
    run checks it before it starts (agent.loop.launch); a replay of its claim never reads it."""
    if spec.ledger is None:
        return spec
    key = spec.ledger.key.expanduser()
    key = key if key.is_absolute() else (base_dir / key).resolve()
    return spec.model_copy(update={"ledger": spec.ledger.model_copy(update={"key": key})})


def _with_readable(path: Path, spec: GoalSpec, base_dir: Path) -> GoalSpec:
    """The spec with `readable:` made absolute (read from `base_dir`), each path checked: it
    exists, and it is not a home directory or what holds one (the view would show it all)."""
    found = []
    homes = {Path.home().resolve(), Path("/root"), Path("/home")}
    for given in spec.readable:
        full = given.expanduser()
        full = (full if full.is_absolute() else base_dir / full).resolve()
        if not full.exists():
            raise GoalError(f"{path}: readable: {given} does not exist; list files or "
                            "directories that exist (the experiment reads them, read-only)")
        if any(home == full or full in home.parents for home in homes):
            raise GoalError(f"{path}: readable: {given} would show a whole home directory to "
                            "experiment code; list only the data it needs")
        found.append(full)
    return spec.model_copy(update={"readable": found})


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
