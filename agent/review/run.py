"""Reviewing a run from its directory: records, status, diffs, logs and a terminal plot.

Shared by the REPL and the `runs`, `history`, `show` and `report` commands. Everything here only
reads: the run's records and status files, and its sandbox through `sandbox.RunReader` (which
never opens the workspace, so never takes its lock), so it is safe on a live run. Baseline and
best come from `agent.rundir.ranking`, as everywhere else.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from rich.console import Group, RenderableType
from rich.text import Text

from agent.review.listing import Listing
from agent.rundir import control, ranking
from agent.rundir.names import GOAL_COPY, PROGRESS_PLOT
from agent.rundir.records import RunRecords
from agent.rundir.runs import RunError, list_runs, runs_root
from agent.rundir.tool_records import PLANNER, ToolCallRecord, ToolRecords
from sandbox.errors import WorkspaceError
from sandbox.reader import RunReader

STATUS_STYLE = {"keep": "green", "baseline": "blue", "discard": "yellow", "rejected": "cyan",
                "interrupted": "magenta"}
LOG_TAIL_LINES = 15
LIVE_STATES = ("starting", "planning", "tool", "running", "paused", "waiting_approval")


# one error type for whatever a run lookup or a review cannot show
ReviewError = RunError


# --- one run --------------------------------------------------------------------------------


@dataclass
class Run:
    path: Path
    goal_name: str
    metric: str
    goal: str  # minimize | maximize

    @classmethod
    def load(cls, path: Path) -> Run:
        front = _front_matter(path / GOAL_COPY)
        metric = front.get("metric") if isinstance(front.get("metric"), dict) else {}
        return cls(path=path, goal_name=str(front.get("name") or path.name),
                   metric=str(metric.get("name") or "metric"),
                   goal=str(metric.get("goal") or "minimize"))

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
            raise ReviewError(missing_exp(exp, records, self.status()))
        return found


def _front_matter(path: Path) -> dict[str, Any]:
    from agent.goal.spec import GoalError, split_front_matter

    try:
        return split_front_matter(path, path.read_text(encoding="utf-8"))[0]
    except (OSError, GoalError):
        return {}


def _pid_alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


# --- naming experiments ---------------------------------------------------------------------


def exp_range(records: list[dict[str, Any]]) -> str:
    numbers = sorted(r["exp"] for r in records)
    return f"{numbers[0]:03d}-{numbers[-1]:03d}" if numbers else "no experiments yet"


def missing_exp(exp: int, records: list[dict[str, Any]], status: dict[str, Any] | None) -> str:
    if status and status.get("exp") == exp and status.get("state") != "finished":
        return f"experiment {exp:03d} is still in flight ({status.get('state')}); see `status`"
    if not records:
        return f"no experiment {exp}; this run has no finished experiments yet"
    return f"no experiment {exp}; this run has {exp_range(records)}"


def parse_exp(text: str) -> int:
    """`7`, `007` or `exp007` -> 7."""
    match = re.fullmatch(r"(?:exp[-_ ]?)?(\d{1,6})", text.strip().lower())
    if not match:
        raise ReviewError(f"{text!r} is not an experiment number; name one as 7 or 007")
    return int(match[1])


# --- formatting -----------------------------------------------------------------------------


def fmt_metric(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def status_text(status: str) -> Text:
    return Text(status, STATUS_STYLE.get(status, "red"))


def tokens_of(record: dict[str, Any]) -> int:
    return sum((record.get("tokens") or {}).values())


def record_line(record: dict[str, Any], metric: str, best: float | None) -> Text:
    """One line for an experiment that just finished (the REPL's tail)."""
    return Text.assemble(
        f"exp {record['exp']:03d} ", status_text(record["status"]),
        f"  {metric}={fmt_metric(record.get('metric'))}  best {fmt_metric(best)}  ",
        (" ".join(str(record.get("hypothesis", "")).split())[:100], "dim"),
    )


def tool_line(call: ToolCallRecord) -> Text:
    """One line for a tool call (the REPL's tail, `show`)."""
    style = {"ok": "cyan", "error": "red"}.get(call.status, "magenta")
    who = "" if call.by == PLANNER else " (goal step)"
    return Text.assemble((f"tool #{call.call}", style), f"{who} before exp {call.exp:03d}  ",
                         (call.summary().split(" ", 1)[1], "dim"))


def parse_tool_call(text: str) -> int | None:
    """`tool:3` or `tool3` -> 3; None when `text` names no tool call."""
    match = re.fullmatch(r"tool[:#-]?(\d{1,6})", text.strip().lower())
    return int(match[1]) if match else None


def show_tool_call(run: Run, call: int) -> Group:
    """One tool call: what was asked, by whom, before which experiment, and what came back."""
    found = next((c for c in run.tool_calls() if c.call == call), None)
    if found is None:
        raise ReviewError(f"{run.id} has no tool call {call}; `history` lists them")
    parts: list[RenderableType] = [tool_line(found)]
    parts.append(Text.assemble(("arguments: ", "bold"), json.dumps(found.args)))
    if found.seconds is not None:
        parts.append(Text.assemble(("seconds: ", "bold"), f"{found.seconds:g}"))
    if found.error:
        parts.append(Text.assemble(("error: ", "bold"), found.error))
    elif found.result is not None:
        parts += [Text("result:", "bold"), Text(json.dumps(found.result, indent=1), "dim")]
    return Group(*parts)


def history_table(run: Run, records: list[dict[str, Any]], last: int | None = None) -> Listing:
    table = Listing(f"{run.id}: {run.goal} {run.metric}",
                    [("exp", "right"), ("status", "left"), (run.metric, "right"),
                     ("best so far", "right"), ("sec", "right"), ("tokens", "right"),
                     ("hypothesis", "left")], wrap=("hypothesis",))
    rows = list(zip(records, ranking.best_so_far(records, run.goal), strict=True))
    rows = rows[-last:] if last else rows
    calls = run.tool_calls()
    for r, best in rows:
        for call in (c for c in calls if c.exp == r["exp"]):  # the calls that preceded it
            table.rows.append(_tool_row(call))
        seconds = r.get("seconds")
        hypothesis = " ".join(str(r.get("hypothesis", "")).split())
        if r.get("hints"):
            hypothesis += f"  [hint: {'; '.join(r['hints'])}]"
        table.rows.append([f"{r['exp']:03d}", status_text(r["status"]),
                           fmt_metric(r.get("metric")), fmt_metric(best),
                           "-" if seconds is None else f"{seconds:.1f}",
                           str(tokens_of(r) or "-"), hypothesis])
    newest = records[-1]["exp"] if records else -1
    table.rows += [_tool_row(c) for c in calls if c.exp > newest]  # after the last experiment
    return table


def _tool_row(call: ToolCallRecord) -> list[Any]:
    return ["", Text(f"tool #{call.call}", "cyan"), "", "",
            "-" if call.seconds is None else f"{call.seconds:.1f}", "",
            call.summary().split(" ", 1)[1]]


def diff_text(diff: str) -> Text:
    text = Text()
    for line in diff.splitlines():
        style = ("bold" if line.startswith(("diff ", "+++", "---", "index ")) else
                 "green" if line.startswith("+") else "red" if line.startswith("-") else
                 "cyan" if line.startswith("@@") else "")
        text.append(line + "\n", style)
    return text


def experiment_diff(run: Run, exp: int) -> str:
    """What experiment `exp` changed, relative to the commit it started from."""
    try:
        return run.sandbox.diff(exp)
    except WorkspaceError as err:
        raise ReviewError(f"{err}; see its record with `show`") from None


def diff_between(run: Run, a: int, b: int) -> str:
    """The code of experiment `b` against that of experiment `a`."""
    records = run.records()
    for exp in (a, b):
        if not any(r.get("exp") == exp for r in records):
            raise ReviewError(missing_exp(exp, records, run.status()))
    try:
        return run.sandbox.diff_between(a, b)
    except WorkspaceError as err:
        raise ReviewError(str(err)) from None


def experiment_detail(run: Run, exp: int) -> dict[str, Any]:
    """`show --json`: the record as experiments.jsonl holds it, its diff (None with the reason
    in `diff_error` when it has no commit), and its log: path and tail (None: it never ran)."""
    record = run.record(exp)
    detail: dict[str, Any] = {"record": record}
    try:
        detail["diff"] = experiment_diff(run, exp)
    except ReviewError as err:
        detail |= {"diff": None, "diff_error": str(err)}
    tail = run.sandbox.log_tail(exp, LOG_TAIL_LINES)
    detail["log_path"] = None if tail is None else str(run.sandbox.log_path(exp))
    detail["log_tail"] = tail
    detail["repeat_log_paths"] = _repeat_logs(run, record)
    return detail


def _repeat_logs(run: Run, record: dict[str, Any]) -> list[str]:
    """Logs of the record's confirmation runs (another seed): one per value in `runs` after
    the first."""
    paths = (run.sandbox.log_path(record["exp"], repeat)
             for repeat in range(1, len(record.get("runs") or [])))
    return [str(path) for path in paths if path.exists()]


def _number(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def show_experiment(run: Run, exp: int) -> Group:
    """Hypothesis, rationale, hints, numbers, judgement, diff and log tail of one experiment."""
    records = run.records()
    record = run.record(exp)
    detail = experiment_detail(run, exp)
    best = ranking.best_so_far(records, run.goal)[records.index(record)]
    parts: list[RenderableType] = [Text.assemble(
        (f"exp {exp:03d}  ", "bold"), status_text(record["status"]),
        f"  {run.metric}={fmt_metric(record.get('metric'))}  best so far {fmt_metric(best)}")]
    fields = [("hypothesis", record.get("hypothesis")), ("rationale", record.get("rationale")),
              ("hints", "; ".join(record.get("hints") or [])), ("reason", record.get("reason"))]
    runs = record.get("runs") or []
    if len(runs) > 1:
        fields.append(("runs", ", ".join(fmt_metric(v) for v in runs)
                       + f" (judged on {fmt_metric(record.get('metric'))})"))
    judgement = record.get("judgement")
    if isinstance(judgement, dict):  # its reasoning is the record's reason, shown above
        fields.append(("judgement", ", ".join(f"{k}={_number(v)}" for k, v in judgement.items()
                                              if k != "reason")))
    size = record.get("diff")
    if isinstance(size, dict):
        fields.append(("diff size", f"+{size.get('added', 0)} -{size.get('removed', 0)} lines"))
    extras = {k: v for k, v in (record.get("metrics") or {}).items() if k != run.metric}
    numbers = [f"planner {record.get('planner', '-')}",
               f"tokens {tokens_of(record)}",
               f"seconds {record.get('seconds') if record.get('seconds') is not None else '-'}",
               f"commit {(record.get('commit') or '-')[:10]}"]
    fields += [("metrics", ", ".join(f"{k}={v:g}" for k, v in extras.items())),
               ("knobs", ", ".join(f"{k}={v}" for k, v in (record.get("knobs") or {}).items())),
               ("", "  ".join(numbers))]
    for label, value in fields:
        if value:
            parts.append(Text.assemble((f"{label}: " if label else "", "bold"), str(value)))
    if detail["diff"] is None:
        parts.append(Text(f"diff: {detail['diff_error']}", "dim"))
    else:
        parts += [Text("diff:", "bold"), diff_text(detail["diff"]) if detail["diff"].strip()
                  else Text("(no change: the code as it was)\n", "dim")]
    if detail["log_tail"] is None:
        parts.append(Text("log: none (it never ran)", "dim"))
    else:
        parts += [Text(f"log tail ({detail['log_path']}):", "bold"),
                  Text(detail["log_tail"] or "(empty)", "dim")]
    for path in detail["repeat_log_paths"]:
        parts.append(Text(f"confirmation run's log: {path}", "dim"))
    calls = [c for c in run.tool_calls() if c.exp == exp]
    if calls:
        parts.append(Text("tool calls before it (`show RUN tool:N` for one in full):", "bold"))
        parts += [tool_line(c) for c in calls]
    return Group(*parts)


def status_view(run: Run) -> Group:
    status = run.status() or {}
    records = run.records()
    state = run.state()
    budget = status.get("budget") or {}
    lines = [Text.assemble((run.id, "bold"), f"  {state}",
                           f" ({run.stop_reason()})" if state in ("finished", "stopped") else "")]
    if status.get("exp") is not None and state in LIVE_STATES:
        lines.append(Text(f"exp {status['exp']:03d} {state}: {status.get('hypothesis') or ''}"))
    lines.append(Text(
        f"experiments {len(ranking.experiments(records))}/{budget.get('experiments', '?')}  "
        f"wall {status.get('wall_seconds', 0):.0f}s/{budget.get('wall', 0):.0f}s  "
        f"approval {'on' if status.get('approve') else 'off'}  "
        f"tokens {status.get('tokens', sum(tokens_of(r) for r in records)):,}"))
    lines.append(Text(f"{run.metric} ({run.goal}): {ranking.verdict(records, run.goal)}"))
    if state == "interrupted":
        lines.append(Text(f"nothing runs it; continue with `magnet-agent resume {run.id}`",
                          "yellow"))
    return Group(*lines)


# --- every run ------------------------------------------------------------------------------


def run_summary(run: Run) -> dict[str, Any]:
    """`runs --json`: one run in a line of facts (best None: nothing beat the baseline)."""
    records = run.records()
    return {"id": run.id, "goal": run.goal_name, "status": run.state(),
            "stop_reason": run.stop_reason(), "experiments": len(ranking.experiments(records)),
            "metric": {"name": run.metric, "goal": run.goal},
            "baseline": ranking.baseline(records), "best": ranking.best(records, run.goal),
            "verdict": ranking.verdict(records, run.goal), "path": str(run.path.resolve())}


def runs_summary(runs_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """Every run under the runs directory, oldest first."""
    return [run_summary(Run.load(path)) for path in list_runs(runs_dir)]


def runs_table(runs_dir: str | Path | None = None) -> Listing:
    table = Listing(f"runs under {runs_root(runs_dir)}",
                    [("run", "left"), ("goal", "left"), ("status", "left"), ("exps", "right"),
                     ("metric", "left"), ("baseline", "right"), ("best", "right"),
                     ("vs baseline", "left")])
    for run in runs_summary(runs_dir):
        state = run["status"]
        style = "green" if state in LIVE_STATES else "yellow" if state == "interrupted" else ""
        table.rows.append([run["id"], run["goal"], Text(state, style), str(run["experiments"]),
                           f"{run['metric']['name']} ({run['metric']['goal'][:3]})",
                           fmt_metric(run["baseline"]), fmt_metric(run["best"]),
                           _versus(run)])
    return table


def _versus(run: dict[str, Any]) -> str:
    base, best = run["baseline"], run["best"]
    if base is None:
        return "-"
    if best is None:
        return "nothing beat the baseline"
    return f"{ranking.change_pct(base, best, run['metric']['goal']):+.2f}% better"


def to_json(value: Any) -> str:
    """One JSON document for a script (`--json`)."""
    return json.dumps(value, indent=2, ensure_ascii=False) + "\n"


# --- the terminal plot ----------------------------------------------------------------------

MARKS = {"baseline": ("●", "blue"), "keep": ("●", "green"), "discard": ("×", "yellow"),
         "failed": ("!", "red")}


def text_plot(records: list[dict[str, Any]], metric: str, goal: str,
              width: int = 60, height: int = 12) -> Text:
    """The metric per experiment: ● baseline (blue) or kept, × discarded, ─ best so far,
    ! no metric (on the axis)."""
    points = [(r["exp"], r["metric"], r["status"]) for r in records if r.get("metric") is not None]
    if not points:
        return Text(f"no {metric} measured yet")
    exps = [r["exp"] for r in records]
    x0, x1 = min(exps), max(exps)
    values = [m for _, m, _ in points]
    lo, hi = min(values), max(values)
    if hi == lo:
        lo, hi = lo - 0.5, hi + 0.5
    width = max(min(width, (x1 - x0) * 4 + 1), 2)

    def col(exp: int) -> int:
        return round((exp - x0) / max(x1 - x0, 1) * (width - 1))

    def row(value: float) -> int:  # 0 is the top row
        return round((hi - value) / (hi - lo) * (height - 1))

    grid: list[list[tuple[str, str]]] = [[(" ", "")] * width for _ in range(height)]
    best = ranking.best_so_far(records, goal)
    for i, (r, b) in enumerate(zip(records, best, strict=True)):
        if b is None:
            continue
        end = col(records[i + 1]["exp"]) if i + 1 < len(records) else col(r["exp"]) + 1
        for c in range(col(r["exp"]), min(max(end, col(r["exp"]) + 1), width)):
            grid[row(b)][c] = ("─", "blue")
    for exp, value, status in points:
        grid[row(value)][col(exp)] = MARKS.get(status, MARKS["discard"])
    axis = [("─", "")] * width
    for r in records:
        if r.get("metric") is None:
            axis[col(r["exp"])] = MARKS["failed"]
    labels = {0: f"{hi:.4g}", height // 2: f"{(hi + lo) / 2:.4g}", height - 1: f"{lo:.4g}"}
    pad = max(len(label) for label in labels.values())
    text = Text(f"{metric} per experiment ({'lower' if goal == 'minimize' else 'higher'} "
                "is better)\n", "bold")
    for i, cells in enumerate(grid):
        text.append(f"{labels.get(i, ''):>{pad}} │")
        for char, style in cells:
            text.append(char, style)
        text.append("\n")
    text.append(" " * pad + " └")
    for char, style in axis:
        text.append(char, style)
    first, last = f"{x0:03d}", f"{x1:03d}"
    text.append("\n" + " " * (pad + 2) + first + last.rjust(width - len(first)) + "\n")
    text.append(" " * (pad + 2))
    for label, (char, style) in (("baseline", MARKS["baseline"]), ("kept", MARKS["keep"]),
                                 ("discarded", MARKS["discard"]),
                                 ("best so far", ("─", "blue")),
                                 ("no metric", MARKS["failed"])):
        text.append(char, style)
        text.append(f" {label}  ")
    return text


def write_progress_png(run: Run, records: list[dict[str, Any]]) -> Path:
    from agent.review.report import write_plot

    path = run.path / PROGRESS_PLOT
    write_plot(path, records, run.metric, run.goal)
    return path


def regenerate_report(run: Run) -> Path:
    """Rewrite report.md and progress.png from the records, keeping the recorded stop reason."""
    from agent.goal.spec import GoalError
    from agent.rundir.runs import load_run_goal

    try:
        goal = load_run_goal(run.path)
    except GoalError as err:
        raise ReviewError(f"cannot read the run's goal: {err}") from None
    from agent.review.report import write_report

    return write_report(run.path, goal, run.records(), stop_reason=run.stop_reason())
