"""Held-out test scores on conftest's real kept run: the baseline runs and the kept experiment
carry one (beside their metrics, never inside), the review shows both splits and the gap
(rundir.held_out), and nothing a planner is told from the records holds a test score."""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from agent.goal.knob_values import read_knob_values
from agent.loop.planner_context import record_facts
from agent.planners import local_prompt, prompt
from agent.planners.base import Failure, PlanContext
from agent.review.tables import runs_summary, runs_table
from agent.rundir.experiment_record import TEST_KEY
from agent.rundir.held_out import held_out
from agent.rundir.names import REPORT_FILE
from agent.rundir.runs import load_run_goal

SENTINEL = 0.987654  # a test score no validation score of the run comes near


def records_of(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (run_dir / "experiments.jsonl").read_text().splitlines()]


def test_the_baseline_and_the_kept_experiment_are_scored_on_the_test_split(kept_run):
    _, run_dir, _ = kept_run
    records = records_of(run_dir)
    base, kept = records[:2], records[2]
    assert [r["status"] for r in records] == ["baseline", "baseline", "keep"]
    for r in records:
        assert isinstance(r[TEST_KEY], float) and 0 < r[TEST_KEY] < 16, r
        assert TEST_KEY not in r["metrics"] and r[TEST_KEY] != r["metric"]
    facts = held_out(records, "minimize")
    assert facts.baseline_test == pytest.approx(statistics.fmean(r[TEST_KEY] for r in base))
    assert facts.best_test == kept[TEST_KEY] and facts.best_val == kept["metric"]
    val_gain = statistics.fmean(r["metric"] for r in base) - kept["metric"]
    test_gain = facts.baseline_test - kept[TEST_KEY]
    assert facts.val_gain == pytest.approx(val_gain) and val_gain > 0  # it was kept
    assert facts.gap == pytest.approx(val_gain - test_gain)

    # `runs --json`, the runs table, the report: both splits side by side, and the gap
    (entry,) = [e for e in runs_summary(run_dir.parent) if e["id"] == run_dir.name]
    assert entry["held_out"] == facts.as_dict()
    tsv = runs_table(run_dir.parent).tsv().splitlines()
    assert tsv[0].endswith("test: baseline\ttest: best\tgap")
    (row,) = [line for line in tsv if line.startswith(run_dir.name)]
    assert row.endswith(f"\t{facts.baseline_test:.4f}\t{facts.best_test:.4f}\t{facts.gap:+.4f}")
    report = (run_dir / REPORT_FILE).read_text()
    assert facts.line() in report and f"gap {facts.gap:+.4f}" in report
    assert f"| 002 | keep | {kept['metric']:.4f} | {kept[TEST_KEY]:.4f} |" in report


def planner_texts(run_dir: Path, records: list[dict[str, Any]]) -> str:
    """Everything the planners build from the records (loop.planner_context.record_facts is
    all of it): the OpenAI proposal and reflect messages, the local planner's messages."""
    goal = load_run_goal(run_dir)
    files = {p: (run_dir / "workspace" / p).read_text() for p in goal.spec.editable}
    context = PlanContext(
        brief=goal.brief, metric_name=goal.spec.metric.name, goal=goal.spec.metric.goal,
        editable_files=files, knobs=goal.knobs,
        current_knobs=read_knob_values(files, goal.knobs),
        last_failure=Failure("exp 003 crashed", "a diagnosis"),
        **record_facts(records, goal.spec.metric.goal))
    local = local_prompt.build_messages(context, local_prompt.history_rows(context.history))
    return json.dumps([prompt.build_messages(context), local,
                       prompt.reflect_messages(context, hypothesis="h", status="crashed",
                                               log_tail="boom"),
                       [asdict(h) for h in context.history]])


def test_no_planner_prompt_holds_a_test_score(kept_run):
    _, run_dir, _ = kept_run
    records = records_of(run_dir)
    texts = planner_texts(run_dir, records)
    assert f"{records[2]['metric']:.6g}" in texts  # the validation scores are there
    assert TEST_KEY not in texts and "held_out" not in texts
    vals = [r["metric"] for r in records] + [statistics.fmean(r["metric"] for r in records[:2])]
    for test in (r[TEST_KEY] for r in records):
        shown = {repr(test)} | {format(test, f) for f in (".6g", ".5g", ".4g", ".4f", ".6f")
                                if all(format(test, f) != format(v, f) for v in vals)}
        assert not [x for x in shown if x in texts], test
    # a test score that reads like no validation score, in every record: still nowhere
    marked = planner_texts(run_dir, [{**r, TEST_KEY: SENTINEL} for r in records])
    assert "0.98765" not in marked and "0.9877" not in marked
