"""`report.md` and `progress.png`: the metric per experiment, kept vs discarded, best so far."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from agent.goal.spec import Goal
from agent.rundir import ranking
from agent.rundir.names import PROGRESS_PLOT, REPORT_FILE
from agent.rundir.tool_records import ToolCallRecord, ToolRecords
from sandbox.confine import UNCONFINED
from sandbox.layout import EXP_REFS, GIT_DIR


def write_plot(path: Path, records: list[dict[str, Any]], metric: str, goal: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    groups = {"baseline": (ranking.BASELINE,), "kept": (ranking.KEEP,), "discarded": ("discard",)}
    styles = {"baseline": ("s", "tab:gray"), "kept": ("o", "tab:green"),
              "discarded": ("x", "tab:orange")}
    for label, statuses in groups.items():
        points = [(r["exp"], r["metric"]) for r in records
                  if r.get("status") in statuses and r.get("metric") is not None]
        if points:
            marker, color = styles[label]
            xs, ys = zip(*points, strict=True)
            ax.scatter(xs, ys, marker=marker, color=color, label=label, zorder=3)
    failed = [r["exp"] for r in records
              if r.get("status") not in (ranking.BASELINE, ranking.KEEP, "discard")]
    for exp in failed:
        ax.axvline(exp, color="tab:red", alpha=0.15, lw=4)
    if failed:
        ax.plot([], [], color="tab:red", alpha=0.3, lw=4, label="failed (no metric)")
    line = ranking.best_so_far(records, goal)
    xs = [r["exp"] for r, b in zip(records, line, strict=True) if b is not None]
    ys = [b for b in line if b is not None]
    if xs:
        ax.step(xs, ys, where="post", color="tab:blue", label="best so far")
    base = ranking.baseline(records)
    if base is not None:
        ax.axhline(base, color="tab:gray", ls="--", lw=1, label="baseline (mean)")
    ax.set_xlabel("experiment")
    ax.set_ylabel(f"{metric} ({'lower' if goal == 'minimize' else 'higher'} is better)")
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)


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
    tokens = sum(sum((r.get("tokens") or {}).values()) for r in records)
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
                 "- every run confined by bubblewrap (no network, read-only outside its "
                 "workspace and outputs)")
    return ["Scoring and confinement:", "", *lines, ""]


def _cell(text: object) -> str:
    return " ".join(str(text or "").split()).replace("|", "\\|")
