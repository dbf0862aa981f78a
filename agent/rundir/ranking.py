"""Baseline, better and best: the one definition every part of MAGNET reads.

Nodes, report, live view, prompts, planners, workspace tag and review commands all call these;
nothing else averages baselines or compares metrics. A record's `metric` is the value it was
judged on (the mean of its runs when it was confirmed with a second seed), `runs` every value
measured, `status` one of `baseline`, `keep`, `discard` or a failure.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

from sandbox import metrics

BASELINE = "baseline"  # the unmodified code, measured twice (never `keep`)
KEEP = "keep"

Record = dict[str, Any]


def experiments(records: Sequence[Record]) -> list[Record]:
    """The records of proposals (everything but the baseline runs)."""
    return [r for r in records if r.get("status") != BASELINE]


def better(a: float, b: float, goal: str) -> bool:
    """Whether metric `a` is strictly better than `b`."""
    return gain(a, b, goal) > 0


def gain(a: float, b: float, goal: str) -> float:
    """How much better `a` is than `b` (negative: worse), in the metric's units."""
    return b - a if goal == "minimize" else a - b


def baseline_values(records: Sequence[Record]) -> list[float]:
    """The metric of every baseline run that gave one."""
    return [r["metric"] for r in records
            if r.get("status") == BASELINE and is_finite(r.get("metric"))]


def baseline(records: Sequence[Record]) -> float | None:
    """Mean metric of the baseline runs (None until one has a metric)."""
    values = baseline_values(records)
    return statistics.fmean(values) if values else None


def best_so_far(records: Sequence[Record], goal: str) -> list[float | None]:
    """The best kept metric after each record; None while nothing has been kept."""
    best: float | None = None
    line = []
    for r in records:
        metric = r.get("metric")
        if r.get("status") == KEEP and is_finite(metric) and (best is None
                                                             or better(metric, best, goal)):
            best = metric
        line.append(best)
    return line


def best(records: Sequence[Record], goal: str) -> float | None:
    """The best kept metric (None: nothing beat the baseline)."""
    return best_so_far(records, goal)[-1] if records else None


def best_record(records: Sequence[Record], goal: str) -> Record | None:
    """The kept record holding the best metric (the first to reach it)."""
    value = best(records, goal)
    if value is None:
        return None
    return next(r for r in records if r.get("status") == KEEP and r.get("metric") == value)


def standing_record(records: Sequence[Record], goal: str) -> Record | None:
    """The experiment a run stands for (`RUN` in export, generate, merge; tag magnet/best): its
    best kept experiment, or its first baseline run when nothing was kept (None before one)."""
    top = best_record(records, goal)
    if top is not None:
        return top
    return next((r for r in records if r.get("status") == BASELINE
                 and is_finite(r.get("metric"))), None)


def reference(records: Sequence[Record], goal: str) -> tuple[float | None, int]:
    """(metric, runs behind it) that a candidate must beat: the best kept experiment, else the
    baseline mean."""
    top = best_record(records, goal)
    if top is not None:
        return top["metric"], len(runs_of(top))
    return baseline(records), len(baseline_values(records))


def reference_records(records: Sequence[Record], goal: str) -> list[Record]:
    """The records whose runs stand behind `reference`: the best kept experiment, else every
    baseline run with a metric (what a ledger claim replays as its "before")."""
    top = best_record(records, goal)
    if top is not None:
        return [top]
    return [r for r in records if r.get("status") == BASELINE and is_finite(r.get("metric"))]


def runs_of(record: Record) -> list[float]:
    """Every finite value measured for a record (one per run, or its metric alone)."""
    runs = record.get("runs")
    values = runs if isinstance(runs, list) and runs else [record.get("metric")]
    return [v for v in values if is_finite(v)]


def noise_sd(records: Sequence[Record]) -> float | None:
    """Pooled run-to-run standard deviation of one measurement, from every repeated measurement
    of the same code: the baseline runs, and every experiment confirmed with a second seed.
    None until some code was measured twice."""
    groups = [baseline_values(records)]
    groups += [runs_of(r) for r in records if r.get("status") != BASELINE]
    groups = [g for g in groups if len(g) >= 2]
    dof = sum(len(g) - 1 for g in groups)
    if not dof:
        return None
    squares = sum(sum((x - statistics.fmean(g)) ** 2 for x in g) for g in groups)
    return math.sqrt(squares / dof)


def change_pct(base: float, value: float, goal: str) -> float:
    """How much better `value` is than `base`, in percent of the baseline."""
    return gain(value, base, goal) / abs(base) * 100 if base else 0.0


def verdict(records: Sequence[Record], goal: str) -> str:
    """One sentence on where a run stands against its baseline."""
    base, top = baseline(records), best(records, goal)
    if base is None:
        return "No baseline measured yet."
    if top is None:
        return f"Nothing beat the baseline {base:.4f}."
    return f"Baseline {base:.4f} → best {top:.4f} ({change_pct(base, top, goal):+.2f}% better)."


is_finite = metrics.is_finite  # one definition of a usable metric value, the sandbox's
