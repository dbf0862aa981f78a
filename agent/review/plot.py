"""The metric per experiment, drawn two ways: in the terminal (`plot` in the REPL) and as
`progress.png` (the report's, and the REPL's `plot`). Both mark baseline, kept, discarded and
failed experiments and draw the best so far."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.text import Text

from agent.rundir import ranking
from agent.rundir.names import PROGRESS_PLOT
from agent.rundir.styles import FAILED_STYLE, STATUS_STYLE

if TYPE_CHECKING:
    from agent.review.run import Run

MARKS = {"baseline": ("●", STATUS_STYLE["baseline"]), "keep": ("●", STATUS_STYLE["keep"]),
         "discard": ("×", STATUS_STYLE["discard"]), "failed": ("!", FAILED_STYLE)}
BEST_LINE = ("─", "blue")


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
            grid[row(b)][c] = BEST_LINE
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
                                 ("discarded", MARKS["discard"]), ("best so far", BEST_LINE),
                                 ("no metric", MARKS["failed"])):
        text.append(char, style)
        text.append(f" {label}  ")
    return text


def write_plot(path: Path, records: list[dict[str, Any]], metric: str, goal: str) -> None:
    # a Figure on the Agg canvas, without pyplot: its import, backend switch and figure registry
    # draw nothing more, at the end of every run
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4.5), dpi=110)
    FigureCanvasAgg(fig)  # attaches itself to fig: savefig renders through it
    ax = fig.subplots()
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
    # Laid out now: with tight_layout's engine left in place savefig would draw it all twice.
    fig.set_layout_engine(None)
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp)
    os.replace(tmp, path)


def write_progress_png(run: Run, records: list[dict[str, Any]]) -> Path:
    path = run.path / PROGRESS_PLOT
    write_plot(path, records, run.metric, run.goal)
    return path
