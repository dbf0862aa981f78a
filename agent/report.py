"""`report.md` and `progress.png`: the metric per experiment, kept vs discarded, best so far."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from agent.goal import Goal


def best_so_far(records: list[dict[str, Any]], goal: str) -> list[float | None]:
    """Best kept metric after each experiment (None until something is kept)."""
    best: float | None = None
    line = []
    for r in records:
        metric = r.get("metric")
        if r.get("status") == "keep" and metric is not None:
            better = best is None or (metric < best if goal == "minimize" else metric > best)
            best = metric if better else best
        line.append(best)
    return line


def write_plot(path: Path, records: list[dict[str, Any]], metric: str, goal: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    groups = {"kept": ("keep",), "discarded": ("discard",)}
    styles = {"kept": ("o", "tab:green"), "discarded": ("x", "tab:orange")}
    for label, statuses in groups.items():
        points = [(r["exp"], r["metric"]) for r in records
                  if r.get("status") in statuses and r.get("metric") is not None]
        if points:
            marker, color = styles[label]
            xs, ys = zip(*points, strict=True)
            ax.scatter(xs, ys, marker=marker, color=color, label=label, zorder=3)
    failed = [r["exp"] for r in records if r.get("status") not in ("keep", "discard")]
    for exp in failed:
        ax.axvline(exp, color="tab:red", alpha=0.15, lw=4)
    if failed:
        ax.plot([], [], color="tab:red", alpha=0.3, lw=4, label="failed (no metric)")
    line = best_so_far(records, goal)
    xs = [r["exp"] for r, b in zip(records, line, strict=True) if b is not None]
    ys = [b for b in line if b is not None]
    if xs:
        ax.step(xs, ys, where="post", color="tab:blue", label="best so far")
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
    write_plot(run_dir / "progress.png", records, metric, direction)
    baseline = [r["metric"] for r in records if r.get("baseline") and r.get("metric") is not None]
    line = best_so_far(records, direction)
    best = next((b for b in reversed(line) if b is not None), None)
    base = sum(baseline) / len(baseline) if baseline else None
    experiments = [r for r in records if not r.get("baseline")]
    counts: dict[str, int] = {}
    for r in experiments:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    tokens = sum(sum((r.get("tokens") or {}).values()) for r in records)
    lines = [f"# {run_dir.name}", "", f"Goal: `{spec.name}` — {direction} `{metric}`.", ""]
    if stop_reason:
        lines += [f"Stopped: {stop_reason}.", ""]
    if base is not None and best is not None:
        change = (base - best) / abs(base) * 100 if direction == "minimize" else \
            (best - base) / abs(base) * 100
        lines += [f"Baseline {base:.4f} → best {best:.4f} ({change:+.2f}% better).", ""]
    lines += [
        f"{len(experiments)} experiments: "
        + (", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "none")
        + f"; {tokens:,} LLM tokens.", "", "![progress](progress.png)", "",
        f"| exp | status | {metric} | best so far | hypothesis |", "|---|---|---|---|---|",
    ]
    for r, b in zip(records, line, strict=True):
        m = r.get("metric")
        hypothesis = " ".join(str(r.get("hypothesis", "")).split()).replace("|", "\\|")
        lines.append(f"| {r['exp']:03d} | {r['status']} | {'' if m is None else f'{m:.4f}'} | "
                     f"{'' if b is None else f'{b:.4f}'} | {hypothesis} |")
    lines += ["", "Review with git (every experiment, kept or not): "
              "`git -C workspace log --notes=magnet --glob=refs/magnet/exp`.", ""]
    path = run_dir / "report.md"
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(lines), encoding="utf-8")
    os.replace(tmp, path)
    return path
