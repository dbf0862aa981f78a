"""The `search` planner: no LLM, Optuna's TPE sampler over the goal's knobs (ask/tell).

Every proposal is a pure function of (seed, finished experiments): the planner keeps the outcomes
it knows (a resumed run's history, `observe()`d results and the context's history), tells them to
a fresh in-memory study, and asks it once. So a resumed run re-tells its past and proposes exactly
what an uninterrupted planner with the same seed and history would.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import TrialState

from agent.planners.base import (
    ExperimentSummary,
    KnobEdit,
    PlanContext,
    PlannerError,
    Proposal,
    Usage,
)
from agent.planners.knob_text import changed, config_key, describe_changes, is_number, round_sig
from agent.rundir import ranking
from sandbox.errors import EditError
from sandbox.knobs import KnobSpec

optuna.logging.set_verbosity(optuna.logging.WARNING)

# The run failed in a way the configuration plausibly caused (too big, too slow): told as a bad
# result so TPE steers away. Other failures (an edit that did not apply, a rejected proposal) say
# nothing about the configuration and are told as FAIL, which TPE ignores.
PENALISED = frozenset({"crashed", "timeout", "oom", "no_metric", "log_limit", "output_limit"})
FLOAT_DIGITS = 3  # proposals print as 0.00612, not 0.006128372...


@dataclass
class Outcome:
    """A finished experiment as the sampler sees it."""

    knobs: dict[str, Any]
    metric: float | None
    status: str
    exp: int | None = None  # None until matched to a record of the context's history

    @classmethod
    def of(cls, summary: ExperimentSummary) -> Outcome:
        return cls(dict(summary.knobs), summary.metric, summary.status, summary.exp)

    @property
    def value(self) -> float | None:
        ok = self.metric is not None and math.isfinite(self.metric)
        return self.metric if ok else None


def distributions(knobs: Mapping[str, KnobSpec]) -> dict[str, BaseDistribution]:
    """Optuna's search space for the goal's knobs (fixed knobs, low == high, are left out)."""
    space: dict[str, BaseDistribution] = {}
    for name, spec in knobs.items():
        if spec.choices is not None:
            if len(spec.choices) > 1:
                space[name] = CategoricalDistribution(spec.choices)
            continue
        assert spec.low is not None and spec.high is not None
        if spec.low == spec.high:
            continue
        if spec.integer:
            space[name] = IntDistribution(int(spec.low), int(spec.high), log=spec.log)
        else:
            space[name] = FloatDistribution(float(spec.low), float(spec.high), log=spec.log)
    return space


def to_param(dist: BaseDistribution, value: Any) -> Any:
    """`value` as a parameter of `dist`, or None when it cannot be one."""
    if isinstance(dist, CategoricalDistribution):
        for choice in dist.choices:  # 4.0 in a file for choice 4: the declared choice
            if (type(choice) is type(value) or (is_number(choice) and is_number(value))) \
                    and choice == value:
                return choice
        return None
    if not is_number(value) or not math.isfinite(value):
        return None
    assert isinstance(dist, FloatDistribution | IntDistribution)
    # A value the goal's range does not cover (the file was edited by hand) still tells TPE
    # roughly where the experiment was: clip it to the range.
    clipped = min(max(value, dist.low), dist.high)
    return round(clipped) if isinstance(dist, IntDistribution) else float(clipped)


class SearchPlanner:
    """Optuna TPE over the goal's knobs; `history` re-tells a resumed run's past experiments."""

    name = "search"
    chooses_tools = False

    def __init__(self, history: Sequence[ExperimentSummary] = (), *, n_startup_trials: int = 5,
                 max_asks: int = 8) -> None:
        # TPE samples at random until it has n_startup_trials results; the default budgets run
        # 10-20 experiments, so Optuna's default of 10 would leave most of a run random.
        self.n_startup_trials = n_startup_trials
        self.max_asks = max_asks
        self._outcomes = [Outcome.of(s) for s in history]
        self._last_config: dict[str, Any] | None = None
        self._proposed: set[tuple] = set()  # configurations proposed (maybe not yet in history)

    # --- the Planner interface -----------------------------------------------------------------

    def propose(self, context: PlanContext) -> Proposal:
        start = time.perf_counter()
        self._merge(context.history)
        space = distributions(context.knobs)
        if not space:
            raise PlannerError("the goal has no knob with more than one value to search; "
                               "add ranges or choices under `knobs:` in the goal file")
        tried = {config_key(o.knobs, space) for o in self._outcomes if o.knobs}
        tried |= self._proposed | {config_key(context.current_knobs, space)}
        study = self.build_study(context)
        rationale = self._rationale(study)
        new: dict[str, Any] | None = None
        asks = 0
        while asks < self.max_asks:
            asks += 1
            trial = study.ask(space)
            candidate = {k: self._clean(space[k], v) for k, v in trial.params.items()}
            config = {**context.current_knobs, **candidate}
            # Not run: tell it FAIL so the next ask does not treat it as pending.
            study.tell(trial, state=TrialState.FAIL)
            if changed(context.current_knobs, candidate) and config_key(config, space) not in tried:
                new = candidate
                break
        if new is None:
            new = self._perturb(context, space, tried, random.Random(self._seed(context)))
            rationale = (f"the sampler repeated tried configurations {asks} times; "
                         "changed one knob at random instead")
            asks += 1
        changes = changed(context.current_knobs, new)
        edits = []
        for name, old, value in changes:
            try:
                edits.append(KnobEdit(knob=name, value=context.knobs[name].check(value, old)))
            except EditError as err:  # a goal whose range the clean-up cannot respect
                raise PlannerError(f"search produced an invalid value: {err}") from None
        self._last_config = {**context.current_knobs, **new}
        self._proposed.add(config_key(self._last_config, space))
        return Proposal(hypothesis=describe_changes(changes), rationale=rationale, edits=edits,
                        usage=Usage(seconds=time.perf_counter() - start, attempts=asks))

    def observe(self, proposal: Proposal, knobs: dict[str, Any], metric: float | None,
                status: str) -> None:
        """Remember the outcome; it is told to the sampler from the next proposal on."""
        ran_with = dict(knobs) or dict(self._last_config or {})
        if not ran_with:
            ran_with = {e.knob: e.value for e in proposal.edits if isinstance(e, KnobEdit)}
        self._outcomes.append(Outcome(ran_with, metric, status))
        self._last_config = None

    def warm_up(self, context: PlanContext) -> None:
        """Nothing to load."""

    # --- the study -----------------------------------------------------------------------------

    def build_study(self, context: PlanContext) -> optuna.Study:
        """A fresh in-memory study told every known outcome, seeded for this proposal."""
        self._merge(context.history)
        space = distributions(context.knobs)
        sampler = optuna.samplers.TPESampler(seed=self._seed(context),
                                             n_startup_trials=self.n_startup_trials)
        study = optuna.create_study(direction=context.goal, sampler=sampler)
        penalty = self._penalty(context.goal)
        for outcome in self._outcomes:
            trial = self._frozen(outcome, space, penalty)
            if trial is not None:
                study.add_trial(trial)
        return study

    def _seed(self, context: PlanContext) -> int:
        # The loop already varies context.seed per proposal; mixing in the number of known
        # outcomes keeps a caller with a constant seed from getting the same random start-up
        # sample (TPE's first n_startup_trials ignore the history) every time.
        return (context.seed * 1_000_003 + len(self._outcomes)) % 2**32

    def _penalty(self, goal: str) -> float | None:
        """The value a penalised failure is told: worse than the worst result by half the spread."""
        values = [o.value for o in self._outcomes if o.value is not None]
        if not values:
            return None
        def merit(value: float) -> float:
            return ranking.gain(value, 0.0, goal)

        worst, best = min(values, key=merit), max(values, key=merit)
        spread = abs(worst - best) or abs(worst) * 0.1 or 1.0
        # half a spread past the worst, in the direction that is worse (merit(1) is +1 or -1)
        return worst - 0.5 * spread * merit(1.0)

    @staticmethod
    def _frozen(outcome: Outcome, space: Mapping[str, BaseDistribution],
                penalty: float | None) -> optuna.trial.FrozenTrial | None:
        params = {name: to_param(dist, outcome.knobs.get(name)) for name, dist in space.items()}
        if any(value is None for value in params.values()):
            return None  # incomplete trials would shrink multivariate TPE's joint search space
        value, state = outcome.value, TrialState.COMPLETE
        if value is None:
            if outcome.status in PENALISED and penalty is not None:
                value = penalty
            else:
                state = TrialState.FAIL
        return optuna.trial.create_trial(params=params, distributions=dict(space), value=value,
                                         state=state)

    def _merge(self, history: Sequence[ExperimentSummary]) -> None:
        """Add the context's experiments this planner does not know yet (by exp number); one
        that was already `observe()`d is matched by configuration and metric, not added twice."""
        known = {o.exp for o in self._outcomes if o.exp is not None}
        for summary in history:
            if summary.exp in known:
                continue
            known.add(summary.exp)
            names = set(summary.knobs)
            for outcome in self._outcomes:
                if (names and outcome.exp is None and _same_metric(outcome.metric, summary.metric)
                        and config_key(outcome.knobs, names) == config_key(summary.knobs, names)):
                    outcome.exp = summary.exp
                    break
            else:
                self._outcomes.append(Outcome.of(summary))

    # --- values --------------------------------------------------------------------------------

    @staticmethod
    def _clean(dist: BaseDistribution, value: Any) -> Any:
        """A sampled float rounded to a printable value, kept inside its range."""
        if isinstance(dist, FloatDistribution):
            return min(max(round_sig(float(value), FLOAT_DIGITS), dist.low), dist.high)
        return value

    def _rationale(self, study: optuna.Study) -> str:
        done = sum(t.state == TrialState.COMPLETE for t in study.trials)
        if done < self.n_startup_trials:
            return (f"random start-up sample ({done} of {self.n_startup_trials} results before "
                    "TPE models the search space)")
        return f"TPE sample given {done} finished experiments"

    def _perturb(self, context: PlanContext, space: Mapping[str, BaseDistribution],
                 tried: set[tuple], rng: random.Random) -> dict[str, Any]:
        """One knob moved to a random untried value (the sampler kept repeating itself)."""
        names = sorted(space)
        for _ in range(200):
            name = rng.choice(names)
            dist = space[name]
            if isinstance(dist, CategoricalDistribution):
                value = rng.choice(dist.choices)
            elif isinstance(dist, IntDistribution):
                value = rng.randint(dist.low, dist.high)
            elif dist.log:
                value = math.exp(rng.uniform(math.log(dist.low), math.log(dist.high)))
            else:
                value = rng.uniform(dist.low, dist.high)
            candidate = {name: self._clean(dist, value)}
            config = {**context.current_knobs, **candidate}
            if changed(context.current_knobs, candidate) and config_key(config, space) not in tried:
                return candidate
        raise PlannerError("search found no untried configuration near the current one; "
                           "widen the knob ranges or add choices in the goal file")


def _same_metric(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return a == b or (math.isfinite(a) and math.isfinite(b) and math.isclose(a, b, rel_tol=1e-9))
