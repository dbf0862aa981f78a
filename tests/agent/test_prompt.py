"""The planner's prompt: every part of the context reaches it, and it keeps to its token budget."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.goal.knob_values import read_knob_values
from agent.goal.spec import load_goal
from agent.planners.base import ExperimentSummary, Failure, PlanContext, ProposalReply
from agent.planners.prompt import (
    DEFAULT_TOKEN_BUDGET,
    MAX_ROWS,
    MIN_ROWS,
    PROMPTS_DIR,
    build_messages,
    estimate_tokens,
    messages_tokens,
    propose_prompt,
    reflect_messages,
    repair_prompt,
    summarise,
    system_prompt,
    template,
)
from sandbox.knobs import parse_knobs

ROOT = Path(__file__).resolve().parents[2]
TRAIN = "LEARNING_RATE = 0.004\nN_LAYER = 4\n\nprint(f'METRIC val_bpb={2.0}')\n"
FAILURE = Failure(what="crashed (exit 1)",
                  diagnosis="the shapes do not match; keep N_EMBD divisible by N_HEAD",
                  log_tail="\n".join(f"log line {i}" for i in range(30))
                  + "\nRuntimeError: shape mismatch 96 vs 100")


def rows(n: int, start: int = 1) -> list[ExperimentSummary]:
    statuses = ["discard", "crashed", "keep", "discard", "timeout"]
    return [ExperimentSummary(exp=i, hypothesis=f"idea number {i}: tweak thing {i}",
                              status=statuses[i % 5],
                              metric=None if statuses[i % 5] in ("crashed", "timeout")
                              else 3.0 + (i % 7) / 100)
            for i in range(start, start + n)]


def context(**changes) -> PlanContext:
    knobs = parse_knobs({"LEARNING_RATE": {"low": 1e-3, "high": 1.5e-2, "log": True},
                         "N_LAYER": {"choices": [2, 4, 6]}})
    values = dict(brief="Lower val_bpb of a tiny BitNet on Python code.", metric_name="val_bpb",
                  goal="minimize", editable_files={"train.py": TRAIN}, knobs=knobs,
                  current_knobs={"LEARNING_RATE": 0.004, "N_LAYER": 4}, history=rows(6),
                  best_metric=3.01234, baseline_metric=3.4567, last_failure=FAILURE,
                  hints=["try a warmup of 100 steps", "keep SEQ_LEN at 128"])
    return PlanContext(**{**values, **changes})


def user_text(ctx: PlanContext, **options) -> str:
    return build_messages(ctx, **options)[1]["content"]


def test_prompt_carries_brief_code_history_hints_and_failure():
    system, user = (m["content"] for m in build_messages(context()))

    assert "Lower val_bpb of a tiny BitNet on Python code." in user
    assert "```python\n" + TRAIN.rstrip() + "\n```" in user  # the code, whole and verbatim
    for row in rows(6):
        assert f"| {row.exp} | {row.hypothesis} |" in user
    assert "| 2 | idea number 2: tweak thing 2 | 3.02 | keep |" in user
    assert "| 1 | idea number 1: tweak thing 1 | - | crashed |" in user
    assert "- try a warmup of 100 steps" in user and "- keep SEQ_LEN at 128" in user
    assert "keep N_EMBD divisible by N_HEAD" in user  # the diagnosis
    assert "RuntimeError: shape mismatch 96 vs 100" in user  # the log tail's end
    assert "Baseline: 3.4567. Best so far: 3.01234." in user
    assert "| LEARNING_RATE | 0.004 | 0.001 to 0.015, log scale |" in user
    assert "| N_LAYER | 4 | one of 2, 4, 6 |" in user
    assert "summarised" not in user and "cut" not in user  # it all fits: nothing is cut
    assert "$" not in user.replace("$defs", "")  # every placeholder was filled

    assert json.dumps(ProposalReply.model_json_schema(), separators=(",", ":")) in system
    assert "Edit only these files: train.py" in system
    assert "METRIC val_bpb=<value>" in system and "exactly once" in system


def test_empty_context_sections_say_so():
    user = user_text(context(history=[], last_failure=None, hints=[], knobs={},
                             current_knobs={}, best_metric=None, baseline_metric=None))
    assert "None yet." in user and "not measured yet" in user
    assert "None declared" in user
    assert user.count("None.") == 2  # no failure, no hints


def test_long_history_is_summarised_within_the_budget_keeping_newest_rows():
    history = rows(300, start=0)
    ctx = context(history=history)
    budget = 1500
    messages = build_messages(ctx, token_budget=budget)
    user = messages[1]["content"]

    assert messages_tokens(messages) <= budget
    table = [line for line in user.splitlines() if line.startswith("| ") and "idea" in line]
    assert MIN_ROWS <= len(table) < MAX_ROWS  # cut below the usual number of rows
    newest = history[-len(table):]
    for row, line in zip(newest, table, strict=True):  # the newest rows stay verbatim, in order
        assert line.startswith(f"| {row.exp} | {row.hypothesis} |")
    summary = next(line for line in user.splitlines() if "(summarised)" in line)
    assert summary.startswith(f"exps 0-{history[-len(table) - 1].exp} (summarised): ")
    assert "best kept 3 at exp 7" in summary  # a discarded 3.0 at exp 0 is not the best
    assert "kept: exp " in summary and "(" in summary.split("kept:")[1]  # a long list is capped
    assert TRAIN.rstrip() in user  # the code is never what gets cut first
    assert "RuntimeError: shape mismatch 96 vs 100" in user  # nor the log's last line


def test_log_tail_is_cut_from_the_top_before_any_history():
    ctx = context(history=rows(12))
    full = estimate_tokens(system_prompt(ctx)) + estimate_tokens(user_text(ctx, token_budget=10**6))
    user = user_text(ctx, token_budget=full - 40)  # a little too long

    assert "earlier lines cut]" in user
    assert "log line 0\n" not in user and "RuntimeError: shape mismatch 96 vs 100" in user
    assert "summarised" not in user  # all twelve rows are still there
    assert all(f"| {row.exp} | {row.hypothesis} |" in user for row in rows(12))


def test_code_is_cut_only_when_it_alone_exceeds_the_budget_and_the_prompt_says_so():
    big = "".join(f"CONSTANT_{i} = {i}  # a long comment to make the line longer\n"
                  for i in range(2000))
    ctx = context(editable_files={"train.py": big}, history=rows(40))
    budget = 4000
    messages = build_messages(ctx, token_budget=budget)
    user = messages[1]["content"]

    assert messages_tokens(messages) <= budget
    assert "exceeds the prompt budget" in user and "train.py continues for" in user
    shown = user.split("```python\n", 1)[1].split("\n```", 1)[0].splitlines()
    assert shown[0] == "CONSTANT_0 = 0  # a long comment to make the line longer"
    assert all(line + "\n" in big for line in shown)  # cut at a line boundary, never mid-line
    assert all(f"| {row.exp} |" in user for row in rows(40)[-MIN_ROWS:])


def test_summary_picks_the_best_kept_by_goal_direction():
    history = [ExperimentSummary(1, "a", "discard", 3.0), ExperimentSummary(2, "b", "keep", 3.1),
               ExperimentSummary(3, "c", "keep", 3.3), ExperimentSummary(4, "d", "crashed", None),
               ExperimentSummary(5, "e", "discard", 3.5)]
    assert "best kept 3.1 at exp 2" in summarise(history, "minimize")
    assert "best kept 3.3 at exp 3" in summarise(history, "maximize")
    assert "2 discard, 2 keep, 1 crashed" in summarise(history, "minimize")


def test_hypotheses_cannot_break_the_table():
    ctx = context(history=[ExperimentSummary(1, "use a | b\nand " + "x" * 300, "discard", 3.2)])
    row = next(line for line in user_text(ctx).splitlines() if line.startswith("| 1 |"))
    assert row.count("|") == 5 and len(row) < 200 and row.endswith("| 3.2 | discard |")


def test_repair_and_reflect_messages():
    repair = repair_prompt("edits: List should have at least 1 item")
    assert "edits: List should have at least 1 item" in repair and "JSON only" in repair

    [message] = reflect_messages(context(), hypothesis="wider model", status="timeout",
                                 log_tail="\n".join(f"step {i}" for i in range(500)))
    assert message["role"] == "user"
    body = message["content"]
    assert "Hypothesis: wider model" in body and "Status: timeout" in body
    assert "step 499" in body and "step 0\n" not in body  # the tail, not the head
    assert "one short paragraph" in body


@pytest.mark.parametrize("name", ["system", "propose", "repair", "reflect"])
def test_templates_are_files(name):
    assert (PROMPTS_DIR / f"{name}.md").is_file()
    assert template(name).get_identifiers()  # each has placeholders to fill


def test_real_goal_fits_the_default_budget_with_its_whole_script():
    goal = load_goal(ROOT / "goals" / "pycode-bitnet.md")
    files = {p: (goal.source_dir / p).read_text() for p in goal.spec.editable}
    ctx = PlanContext(brief=goal.brief, metric_name=goal.spec.metric.name,
                      goal=goal.spec.metric.goal, editable_files=files, knobs=goal.knobs,
                      current_knobs=read_knob_values(files, goal.knobs), history=rows(25),
                      best_metric=2.91, baseline_metric=3.05, last_failure=FAILURE)
    messages = build_messages(ctx)
    user = messages[1]["content"]
    assert messages_tokens(messages) <= DEFAULT_TOKEN_BUDGET
    assert len(files) >= 2  # train.py and model.py
    for code in files.values():  # every editable file, whole
        assert code.rstrip() in user
    assert "| LEARNING_RATE | 0.004 | 0.001 to 0.015, log scale |" in user
    assert "val_bpb" in propose_prompt(ctx)
