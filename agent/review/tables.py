"""The review tables: a run's history (experiments and tool calls in order) and every run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.text import Text

from agent.review.lines import fmt_metric, status_text
from agent.review.listing import Listing
from agent.review.run import LIVE_STATES, Run
from agent.rundir import ranking
from agent.rundir.held_out import held_out, score_on_test
from agent.rundir.records import tokens_of
from agent.rundir.runs import list_runs, runs_root
from agent.rundir.tool_records import ToolCallRecord


def history_table(run: Run, records: list[dict[str, Any]], last: int | None = None) -> Listing:
    table = Listing(f"{run.id}: {run.goal} {run.metric}",
                    [("exp", "right"), ("status", "left"), (run.metric, "right"),
                     ("test", "right"), ("best so far", "right"), ("sec", "right"),
                     ("tokens", "right"),
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
                           fmt_metric(r.get("metric")), fmt_metric(score_on_test(r)),
                           fmt_metric(best),
                           "-" if seconds is None else f"{seconds:.1f}",
                           str(tokens_of(r) or "-"), hypothesis])
    newest = records[-1]["exp"] if records else -1
    table.rows += [_tool_row(c) for c in calls if c.exp > newest]  # after the last experiment
    return table


def _tool_row(call: ToolCallRecord) -> list[Any]:
    return ["", Text(f"tool #{call.call}", "cyan"), "", "", "",
            "-" if call.seconds is None else f"{call.seconds:.1f}", "",
            call.summary().split(" ", 1)[1]]


def run_listing_entry(run: Run) -> dict[str, Any]:
    """`runs --json`: one research run in a line of facts (best None: nothing beat the
    baseline; `held_out`: both splits side by side and the gap, rundir.held_out)."""
    records = run.records()
    return {"id": run.id, "goal": run.goal_name, "status": run.state(),
            "stop_reason": run.stop_reason(), "experiments": len(ranking.experiments(records)),
            "metric": {"name": run.metric, "goal": run.goal},
            "baseline": ranking.baseline(records), "best": ranking.best(records, run.goal),
            "verdict": ranking.verdict(records, run.goal),
            "held_out": held_out(records, run.goal).as_dict(), "path": str(run.path.resolve())}


def runs_summary(runs_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """Every run under the runs directory, oldest first."""
    return [run_listing_entry(Run.load(path)) for path in list_runs(runs_dir)]


def runs_table(runs_dir: str | Path | None = None) -> Listing:
    table = Listing(f"runs under {runs_root(runs_dir)}",
                    [("run", "left"), ("goal", "left"), ("status", "left"), ("exps", "right"),
                     ("metric", "left"), ("baseline", "right"), ("best", "right"),
                     ("vs baseline", "left"), ("test: baseline", "right"),
                     ("test: best", "right"), ("gap", "right")])
    for run in runs_summary(runs_dir):
        state = run["status"]
        style = "green" if state in LIVE_STATES else "yellow" if state == "interrupted" else ""
        table.rows.append([run["id"], run["goal"], Text(state, style), str(run["experiments"]),
                           f"{run['metric']['name']} ({run['metric']['goal'][:3]})",
                           fmt_metric(run["baseline"]), fmt_metric(run["best"]),
                           _versus(run), *_held_out_cells(run["held_out"])])
    return table


def _versus(run: dict[str, Any]) -> str:
    base, best = run["baseline"], run["best"]
    if base is None:
        return "-"
    if best is None:
        return "nothing beat the baseline"
    return f"{ranking.change_pct(base, best, run['metric']['goal']):+.2f}% better"


def _held_out_cells(facts: dict[str, Any]) -> list[str]:
    """Test score of the baseline and of the best, and the gap (rundir.held_out)."""
    gap = facts["gap"]
    return [fmt_metric(facts["baseline_test"]), fmt_metric(facts["best_test"]),
            "-" if gap is None else f"{gap:+.4f}"]
