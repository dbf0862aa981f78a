"""Reviewing a run from its directory: records, status, diffs, logs and a terminal plot.

Shared by the REPL and the `runs`, `history`, `show` and `report` commands. Everything here only
reads the run directory and the workspace's git refs (it never opens the sandbox workspace, which
would lock it), so it is safe on a live run.
"""

from __future__ import annotations

import json
import os
import re
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from agent import control
from agent.records import RunRecords
from agent.report import best_so_far
from agent.rundir import GOAL_COPY, RUN_FILE, RunError, list_runs, runs_root
from sandbox.gitcli import Git

STATUS_STYLE = {"keep": "green", "discard": "yellow", "rejected": "cyan", "interrupted": "magenta"}
LOG_TAIL_LINES = 15
LIVE_STATES = ("starting", "planning", "running", "paused", "waiting_approval")


# one error type for whatever a run lookup or a review cannot show
ReviewError = RunError


# --- finding runs ---------------------------------------------------------------------------


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

    @property
    def git(self) -> Git:
        return Git(self.path / "workspace")

    def records(self) -> list[dict[str, Any]]:
        return RunRecords(self.path).read()

    def status(self) -> dict[str, Any] | None:
        return control.read_status(self.path)

    def controller_pid(self) -> int | None:
        """The pid of the process running this run, or None when nothing runs it."""
        known, holder = _flock_holder(self.path / "sandbox.lock")
        if known:
            return holder
        pid = (self.status() or {}).get("pid")  # no /proc/locks: trust status.json's pid
        return pid if isinstance(pid, int) and _pid_alive(pid) else None

    def stop_reason(self) -> str | None:
        """Why the run finished, as its status or else its report says."""
        reason = (self.status() or {}).get("stop_reason")
        if reason:
            return str(reason)
        try:
            text = (self.path / "report.md").read_text(encoding="utf-8")
        except OSError:
            return None
        match = re.search(r"^Stopped: (.*)\.$", text, re.MULTILINE)
        return match[1] if match else None

    def state(self) -> str:
        """starting | planning | running | paused | waiting_approval (a live run),
        finished | stopped (ended by a person) | interrupted (resume it)."""
        status = self.status() or {}
        if status.get("state") == "finished":
            return "stopped" if self.stop_reason() == "stopped by a person" else "finished"
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
    from agent.goal import GoalError, split_front_matter

    try:
        return split_front_matter(path, path.read_text(encoding="utf-8"))[0]
    except (OSError, GoalError):
        return {}


def _flock_holder(lock: Path) -> tuple[bool, int | None]:
    """(known, pid): who holds the run's workspace lock per /proc/locks; known is False where
    /proc/locks cannot tell. Only reads: taking the lock, even briefly, could make the run's own
    start fail."""
    try:
        table = Path("/proc/locks").read_text()
    except OSError:
        return False, None
    try:
        st = lock.stat()
    except OSError:
        return True, None
    where = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    for line in table.splitlines():
        fields = line.split()
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == where:
            return True, int(fields[4])
    return True, None


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


def baseline_metric(records: list[dict[str, Any]]) -> float | None:
    values = [r["metric"] for r in records if r.get("baseline") and r.get("metric") is not None]
    return statistics.fmean(values) if values else None


def best_metric(records: list[dict[str, Any]], goal: str) -> float | None:
    return next((b for b in reversed(best_so_far(records, goal)) if b is not None), None)


def best_record(records: list[dict[str, Any]], goal: str) -> dict[str, Any] | None:
    """The kept experiment holding the best metric (the first to reach it)."""
    best = best_metric(records, goal)
    return next((r for r in records if r.get("status") == "keep" and r.get("metric") == best),
                None) if best is not None else None


def tokens_of(record: dict[str, Any]) -> int:
    return sum((record.get("tokens") or {}).values())


def record_line(record: dict[str, Any], metric: str, best: float | None) -> Text:
    """One line for an experiment that just finished (the REPL's tail)."""
    return Text.assemble(
        f"exp {record['exp']:03d} ", status_text(record["status"]),
        f"  {metric}={fmt_metric(record.get('metric'))}  best {fmt_metric(best)}  ",
        (" ".join(str(record.get("hypothesis", "")).split())[:100], "dim"),
    )


def history_table(run: Run, records: list[dict[str, Any]], last: int | None = None) -> Table:
    table = Table(title=f"{run.id}: {run.goal} {run.metric}", title_justify="left")
    for name, justify in (("exp", "right"), ("status", "left"), (run.metric, "right"),
                          ("best so far", "right"), ("sec", "right"), ("tokens", "right"),
                          ("hypothesis", "left")):
        table.add_column(name, justify=justify, no_wrap=name != "hypothesis")
    rows = list(zip(records, best_so_far(records, run.goal), strict=True))
    for r, best in rows[-last:] if last else rows:
        seconds = r.get("seconds")
        hypothesis = " ".join(str(r.get("hypothesis", "")).split())
        if r.get("hints"):
            hypothesis += f"  [hint: {'; '.join(r['hints'])}]"
        table.add_row(f"{r['exp']:03d}", status_text(r["status"]), fmt_metric(r.get("metric")),
                      fmt_metric(best), "-" if seconds is None else f"{seconds:.1f}",
                      str(tokens_of(r) or "-"), hypothesis)
    return table


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
    git = run.git
    ref = f"refs/magnet/exp/{exp:03d}"
    if git.rev(ref) is None:
        raise ReviewError(f"experiment {exp:03d} has no commit (it stopped before its edit was "
                          "committed); see its record with `show`")
    base = _journal_base(run.path, exp)
    if base is None:
        return git.run("show", "--format=", ref)
    return git.run("diff", base, ref)


def _journal_base(run_dir: Path, exp: int) -> str | None:
    try:
        history = json.loads((run_dir / "sandbox.json").read_text())["history"]
    except (OSError, ValueError, KeyError):
        return None
    return next((h.get("base") for h in history if h.get("exp") == exp), None)


def diff_between(run: Run, a: int, b: int) -> str:
    """The code of experiment `b` against that of experiment `a`."""
    records = run.records()
    refs = []
    for exp in (a, b):
        if not any(r.get("exp") == exp for r in records):
            raise ReviewError(missing_exp(exp, records, run.status()))
        ref = f"refs/magnet/exp/{exp:03d}"
        if run.git.rev(ref) is None:
            raise ReviewError(f"experiment {exp:03d} has no commit to compare; pick another")
        refs.append(ref)
    return run.git.run("diff", *refs)


def log_tail(run: Run, exp: int, lines: int = LOG_TAIL_LINES) -> str | None:
    path = run.path / "logs" / f"exp-{exp:03d}.log"
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    return "\n".join(text.splitlines()[-lines:])


def show_experiment(run: Run, exp: int) -> Group:
    """Hypothesis, rationale, hints, numbers, diff and log tail of one experiment."""
    records = run.records()
    record = run.record(exp)
    best = best_so_far(records, run.goal)[records.index(record)]
    parts: list[RenderableType] = [Text.assemble(
        (f"exp {exp:03d}  ", "bold"), status_text(record["status"]),
        f"  {run.metric}={fmt_metric(record.get('metric'))}  best so far {fmt_metric(best)}")]
    fields = [("hypothesis", record.get("hypothesis")), ("rationale", record.get("rationale")),
              ("hints", "; ".join(record.get("hints") or [])), ("reason", record.get("reason"))]
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
    try:
        diff = experiment_diff(run, exp)
        parts += [Text("diff:", "bold"), diff_text(diff) if diff.strip()
                  else Text("(no change: the code as it was)\n", "dim")]
    except ReviewError as err:
        parts.append(Text(f"diff: {err}", "dim"))
    tail = log_tail(run, exp)
    if tail is None:
        parts.append(Text("log: none (it never ran)", "dim"))
    else:
        parts += [Text(f"log tail ({run.path / 'logs' / f'exp-{exp:03d}.log'}):", "bold"),
                  Text(tail or "(empty)", "dim")]
    return Group(*parts)


def status_view(run: Run) -> Group:
    status = run.status() or {}
    records = run.records()
    state = run.state()
    budget = status.get("budget") or {}
    done = len([r for r in records if not r.get("baseline")])
    lines = [Text.assemble((run.id, "bold"), f"  {state}",
                           f" ({run.stop_reason()})" if state in ("finished", "stopped") else "")]
    if status.get("exp") is not None and state in LIVE_STATES:
        lines.append(Text(f"exp {status['exp']:03d} {state}: {status.get('hypothesis') or ''}"))
    lines.append(Text(
        f"experiments {done}/{budget.get('experiments', '?')}  "
        f"wall {status.get('wall_seconds', 0):.0f}s/{budget.get('wall', 0):.0f}s  "
        f"approval {'on' if status.get('approve') else 'off'}  "
        f"tokens {status.get('tokens', sum(tokens_of(r) for r in records)):,}"))
    lines.append(Text(f"{run.metric} ({run.goal}): baseline "
                      f"{fmt_metric(baseline_metric(records))}  best "
                      f"{fmt_metric(best_metric(records, run.goal))}"))
    if state == "interrupted":
        lines.append(Text(f"nothing runs it; continue with `magnet-agent resume {run.id}`",
                          "yellow"))
    return Group(*lines)


def runs_table(runs_dir: str | Path | None = None) -> Table:
    table = Table(title=f"runs under {runs_root(runs_dir)}", title_justify="left")
    for name, justify in (("run", "left"), ("goal", "left"), ("status", "left"),
                          ("exps", "right"), ("metric", "left"), ("baseline", "right"),
                          ("best", "right")):
        table.add_column(name, justify=justify, no_wrap=True)
    for path in list_runs(runs_dir):
        run = Run.load(path)
        records = run.records()
        state = run.state()
        style = "green" if state in LIVE_STATES else "yellow" if state == "interrupted" else ""
        table.add_row(run.id, run.goal_name, Text(state, style),
                      str(len([r for r in records if not r.get("baseline")])),
                      f"{run.metric} ({run.goal[:3]})", fmt_metric(baseline_metric(records)),
                      fmt_metric(best_metric(records, run.goal)))
    return table


# --- the terminal plot ----------------------------------------------------------------------

MARKS = {"keep": ("●", "green"), "discard": ("×", "yellow"), "failed": ("!", "red")}


def text_plot(records: list[dict[str, Any]], metric: str, goal: str,
              width: int = 60, height: int = 12) -> Text:
    """The metric per experiment: ● kept, × discarded, ─ best so far, ! no metric (on the axis)."""
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
    best = best_so_far(records, goal)
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
    for label, (char, style) in (("kept", MARKS["keep"]), ("discarded", MARKS["discard"]),
                                 ("best so far", ("─", "blue")),
                                 ("no metric", MARKS["failed"])):
        text.append(char, style)
        text.append(f" {label}  ")
    return text


def write_progress_png(run: Run, records: list[dict[str, Any]]) -> Path:
    from agent.report import write_plot

    path = run.path / "progress.png"
    write_plot(path, records, run.metric, run.goal)
    return path


def regenerate_report(run: Run) -> Path:
    """Rewrite report.md and progress.png from the records, keeping the recorded stop reason."""
    from agent.goal import GoalError, load_goal

    options = json.loads((run.path / RUN_FILE).read_text())
    try:
        goal = load_goal(run.path / GOAL_COPY, base_dir=Path(options["goal_path"]).parent)
    except GoalError as err:
        raise ReviewError(f"cannot read the run's goal: {err}") from None
    from agent.report import write_report

    return write_report(run.path, goal, run.records(), stop_reason=run.stop_reason())
