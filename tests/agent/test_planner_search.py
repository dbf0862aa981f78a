"""The search planner: Optuna TPE over the goal's knobs, seeded and resumable (no mocks)."""

from __future__ import annotations

from pathlib import Path

import pytest
from optuna.trial import TrialState

from agent.goal.knob_values import read_knob_values
from agent.goal.spec import load_goal
from agent.planners.base import ExperimentSummary, KnobEdit, PlanContext, PlannerError, Proposal
from agent.planners.knob_text import format_value
from agent.planners.search import SearchPlanner
from sandbox.knobs import KnobSpec

ROOT = Path(__file__).resolve().parents[2]
GOAL = load_goal(ROOT / "goals/pycode-bitnet.md")
TRAIN = (GOAL.source_dir / "train.py").read_text(encoding="utf-8")
CURRENT = read_knob_values({"train.py": TRAIN}, GOAL.knobs)

# A two-knob toy problem where the metric is X itself: its best region is known.
TOY = {"X": KnobSpec("X", low=0.0, high=1.0), "N": KnobSpec("N", choices=(1, 2, 3))}
TOY_HISTORY = [ExperimentSummary(exp=i, hypothesis="h", status="discard", metric=(i + 0.5) / 20,
                                 knobs={"X": (i + 0.5) / 20, "N": 1 + i % 3}) for i in range(20)]


def goal_context(history: list[ExperimentSummary] | None = None, seed: int = 7,
                 current: dict | None = None) -> PlanContext:
    return PlanContext(brief=GOAL.brief, metric_name="val_bpb", goal="minimize",
                       editable_files={"train.py": TRAIN}, knobs=GOAL.knobs,
                       current_knobs=dict(current or CURRENT), history=list(history or []),
                       best_metric=None, baseline_metric=None, seed=seed)


def toy_context(goal: str = "minimize", seed: int = 0, history=(), current=None) -> PlanContext:
    return PlanContext(brief="toy", metric_name="m", goal=goal, editable_files={}, knobs=TOY,
                       current_knobs=current or {"X": 0.5, "N": 2}, history=list(history),
                       best_metric=None, baseline_metric=None, seed=seed)


def knob_values(proposal: Proposal) -> dict:
    assert all(isinstance(edit, KnobEdit) for edit in proposal.edits)
    return {edit.knob: edit.value for edit in proposal.edits}


def simulated_metric(config: dict) -> float:
    """A smooth stand-in for val_bpb: best near LEARNING_RATE 0.008 and 3 layers."""
    return 2.0 + 50 * (config["LEARNING_RATE"] - 0.008) ** 2 + 0.05 * abs(config["N_LAYER"] - 3)


def test_proposals_stay_in_range_and_change_the_current_config():
    planner = SearchPlanner()
    history = [ExperimentSummary(0, "baseline", "baseline", simulated_metric(CURRENT), CURRENT)]
    seen = []
    for exp in range(1, 16):
        proposal = planner.propose(goal_context(history, seed=100 + exp))
        values = knob_values(proposal)
        assert values, "a proposal must change at least one knob"
        for name, value in values.items():
            assert GOAL.knobs[name].check(value, CURRENT.get(name)) == value
            assert value != CURRENT[name], f"{name} was proposed unchanged"
            assert name in proposal.hypothesis
        config = {**CURRENT, **values}
        assert config not in seen, "the same configuration was proposed twice"
        seen.append(config)
        assert proposal.hypothesis.isascii() and len(proposal.hypothesis) <= 300
        metric = simulated_metric(config)
        planner.observe(proposal, config, metric, "discard")
        history.append(ExperimentSummary(exp, proposal.hypothesis, "discard", metric, config))


def test_hypothesis_names_each_change_from_old_to_new():
    proposal = SearchPlanner().propose(goal_context())
    changes = knob_values(proposal)
    assert proposal.hypothesis == ", ".join(
        f"{name} {format_value(CURRENT[name])} -> {format_value(value)}"
        for name, value in changes.items())


def test_same_seed_and_history_give_the_same_proposal():
    history = [ExperimentSummary(0, "baseline", "baseline", 2.4, CURRENT)]
    first = SearchPlanner(history).propose(goal_context(seed=11))
    again = SearchPlanner(history).propose(goal_context(seed=11))
    assert first.edits == again.edits and first.hypothesis == again.hypothesis
    others = {tuple(map(str, SearchPlanner(history).propose(goal_context(seed=s)).edits))
              for s in (12, 13, 14)}
    assert len(others | {tuple(map(str, first.edits))}) > 1, "the seed changes nothing"
    # asked again before the experiment reaches the history, it does not repeat itself
    planner = SearchPlanner(history)
    assert planner.propose(goal_context(seed=11)).edits == first.edits
    assert planner.propose(goal_context(seed=11)).edits != first.edits


def test_resume_retells_history_to_a_fresh_study():
    history = TOY_HISTORY[:10] + [
        ExperimentSummary(10, "too big", "crashed", None, {"X": 0.9, "N": 3}),
        ExperimentSummary(11, "bad edit", "invalid", None, {"X": 0.8, "N": 3}),
    ]
    resumed = SearchPlanner(history)
    study = resumed.build_study(toy_context())
    states = [t.state for t in study.trials]
    assert states.count(TrialState.COMPLETE) == 11 and states.count(TrialState.FAIL) == 1
    completed = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert [t.params["X"] for t in completed[:10]] == [s.knobs["X"] for s in history[:10]]
    # the crash is told as worse than every real result, so TPE steers away from it
    assert completed[-1].params == {"X": 0.9, "N": 3}
    assert completed[-1].value > max(s.metric for s in history[:10])

    proposal = resumed.propose(toy_context())
    assert proposal.edits == SearchPlanner(history).propose(toy_context()).edits
    assert proposal.edits != SearchPlanner().propose(toy_context()).edits
    # resuming through the constructor or through the context's history is the same thing
    assert proposal.edits == SearchPlanner().propose(toy_context(history=history)).edits


def test_observed_outcome_is_not_told_twice_when_history_repeats_it():
    planner = SearchPlanner(TOY_HISTORY[:3])
    proposal = planner.propose(toy_context(history=TOY_HISTORY[:3]))
    config = {"X": 0.5, "N": 2, **knob_values(proposal)}
    planner.observe(proposal, config, 0.3, "discard")
    record = ExperimentSummary(3, proposal.hypothesis, "discard", 0.3, config)
    study = planner.build_study(toy_context(history=[*TOY_HISTORY[:3], record]))
    assert len(study.trials) == 4


@pytest.mark.parametrize(("goal", "inside"), [("minimize", lambda x: x < 0.3),
                                              ("maximize", lambda x: x > 0.7)])
def test_direction_is_respected(goal, inside):
    # After 20 results where the metric equals X, TPE samples where the good results were.
    xs = []
    for seed in range(10):
        values = knob_values(SearchPlanner(TOY_HISTORY).propose(toy_context(goal, seed)))
        xs.append(values.get("X", 0.5))
    assert all(inside(x) for x in xs), xs


def test_only_untried_configurations_are_proposed():
    knobs = {"N": KnobSpec("N", choices=(1, 2, 3))}
    tried = [ExperimentSummary(0, "h", "discard", 1.0, {"N": 2})]
    context = PlanContext(brief="b", metric_name="m", goal="minimize", editable_files={},
                          knobs=knobs, current_knobs={"N": 1}, history=tried, best_metric=1.0,
                          baseline_metric=1.0, seed=3)
    assert knob_values(SearchPlanner().propose(context)) == {"N": 3}
    exhausted = PlanContext(**{**context.__dict__,
                               "history": [*tried, ExperimentSummary(1, "h", "discard", 1.0,
                                                                     {"N": 3})]})
    with pytest.raises(PlannerError, match="no untried configuration"):
        SearchPlanner().propose(exhausted)
