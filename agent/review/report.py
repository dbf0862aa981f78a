"""`report.md` (with `progress.png`): the verdict, how runs were scored, every experiment and
tool call; written by the loop as it goes and by `magnet-agent report`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.goal.spec import Goal, GoalError
from agent.review.plot import write_plot
from agent.rundir import ranking
from agent.rundir.experiment_record import SEALED_KEY, UNSEALED_REASON_KEY
from agent.rundir.names import PROGRESS_PLOT, REPORT_FILE
from agent.rundir.records import tokens_of
from agent.rundir.runs import RunError, load_run_goal
from agent.rundir.tool_records import ToolCallRecord, ToolRecords
from sandbox.confine import CONFINED_AS_ROOT, UNCONFINED
from sandbox.layout import EXP_REFS, GIT_DIR

if TYPE_CHECKING:
    from agent.review.run import Run


def write_report(run_dir: Path, goal: Goal, records: list[dict[str, Any]],
                 stop_reason: str | None = None) -> Path:
    spec = goal.spec
    metric, direction = spec.metric.name, spec.metric.goal
    write_plot(run_dir / PROGRESS_PLOT, records, metric, direction)
    line = ranking.best_so_far(records, direction)
    experiments = ranking.experiments(records)
    counts: dict[str, int] = {}
    for r in experiments:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    confirmed = sum(len(ranking.runs_of(r)) > 1 for r in experiments)
    tokens = sum(tokens_of(r) for r in records)
    lines = [f"# {run_dir.name}", "", f"Goal: `{spec.name}` — {direction} `{metric}`.", ""]
    if stop_reason:
        lines += [f"Stopped: {stop_reason}.", ""]
    lines += [ranking.verdict(records, direction), ""]
    lines += _trust(records)
    lines += [
        f"{len(experiments)} experiments: "
        + (", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "none")
        + f"; {confirmed} re-run with another seed to confirm; {tokens:,} LLM tokens.", "",
        f"![progress]({PROGRESS_PLOT})", "",
        f"| exp | status | {metric} | best so far | +/- lines | hypothesis | decision |",
        "|---|---|---|---|---|---|---|",
    ]
    for r, b in zip(records, line, strict=True):
        m = r.get("metric")
        diff = r.get("diff") or {}
        size = f"+{diff['added']}/-{diff['removed']}" if diff.get("added") is not None else ""
        lines.append(f"| {r['exp']:03d} | {r['status']} | {'' if m is None else f'{m:.4f}'} | "
                     f"{'' if b is None else f'{b:.4f}'} | {size} | {_cell(r.get('hypothesis'))} "
                     f"| {_cell(r.get('reason'))} |")
    lines += _tools(ToolRecords(run_dir).read())
    lines += ["", "Review with git (every experiment, kept or not): "
              f"`git -C {GIT_DIR} log --notes=magnet --glob={EXP_REFS}`.", ""]
    path = run_dir / REPORT_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(lines), encoding="utf-8")
    os.replace(tmp, path)
    return path


def regenerate_report(run: Run) -> Path:
    """Rewrite report.md and progress.png from the records, keeping the recorded stop reason."""
    try:
        goal = load_run_goal(run.path)
    except GoalError as err:
        raise RunError(f"cannot read the run's goal: {err}") from None
    return write_report(run.path, goal, run.records(), stop_reason=run.stop_reason())


def _tools(calls: list[ToolCallRecord]) -> list[str]:
    """The tool calls, one line each; a merge's table in full (the merged model on each
    domain is what a specialist-merge run is for)."""
    if not calls:
        return []
    lines = ["", f"## Tool calls ({len(calls)})", ""]
    for call in calls:
        lines.append(f"- before exp {call.exp:03d}: {call.summary()}")
    for call in calls:
        table = (call.result or {}).get("table")
        if call.tool == "merge_specialists" and isinstance(table, str):
            lines += ["", f"### Merge (tool call #{call.call})", "", table]
    return lines


def _trust(records: list[dict[str, Any]]) -> list[str]:
    """How the runs were confined and scored: a metric is only as good as that."""
    from agent.scoring.scorer import DESCRIPTIONS

    ran = [r for r in records if r.get("scored_by")]
    if not ran:
        return []
    lines = []
    for kind, description in DESCRIPTIONS.items():
        if n := sum(r["scored_by"] == kind for r in ran):
            lines.append(f"- {n} scored by {description}")
    unconfined = [f"{r['exp']:03d}" for r in ran if r.get("confinement") == UNCONFINED]
    lines.append(f"- **{len(unconfined)} ran unconfined** (--unconfined): exp "
                 f"{', '.join(unconfined)}" if unconfined else
                 "- every run confined by bubblewrap (an allow-listed view: no home, no other "
                 "runs, no ledger keys; writable only its outputs; no network)")
    if as_root := [f"{r['exp']:03d}" for r in ran if r.get("confinement") == CONFINED_AS_ROOT]:
        lines.append(f"- {len(as_root)} ran as the caller's own user (the kernel refused a user "
                     f"namespace): exp {', '.join(as_root)}")
    unsealed = [r for r in ran if r.get(SEALED_KEY) is False]
    if unsealed:
        lines.append(f"- **{len(unsealed)} ran on an unsealed corpus**, so their scores cannot "
                     f"be claimed: {unsealed[0].get(UNSEALED_REASON_KEY) or 'see the records'}")
    return ["Scoring and confinement:", "", *lines, ""]


def _cell(text: object) -> str:
    return " ".join(str(text or "").split()).replace("|", "\\|")
