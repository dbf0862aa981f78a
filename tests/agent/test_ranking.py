"""One definition of baseline, better, best and noise; the keep rule on hand-computed numbers."""

import math

import pytest

from agent.loop.decision import decide
from agent.rundir import ranking


def rec(exp: int, status: str, metric: float | None, runs: list[float] | None = None) -> dict:
    return {"exp": exp, "status": status, "metric": metric, "runs": runs or [metric]}


RECORDS = [rec(0, "baseline", 3.6), rec(1, "baseline", 3.7), rec(2, "discard", 3.0),
           rec(3, "keep", 3.5), rec(4, "crashed", None), rec(5, "keep", 3.4, [3.3, 3.5]),
           rec(6, "keep", 3.45)]


def test_baseline_is_the_mean_of_the_baseline_runs_only():
    assert ranking.baseline(RECORDS) == pytest.approx(3.65)
    assert ranking.baseline([]) is None
    assert ranking.experiments(RECORDS) == RECORDS[2:]


def test_best_counts_kept_experiments_in_the_goals_direction():
    assert ranking.best_so_far(RECORDS, "minimize") == [None, None, None, 3.5, 3.5, 3.4, 3.4]
    assert ranking.best(RECORDS, "minimize") == 3.4  # not the discarded 3.0, nor a baseline
    assert ranking.best(RECORDS, "maximize") == 3.5
    assert ranking.best_record(RECORDS, "minimize")["exp"] == 5
    assert ranking.reference(RECORDS, "minimize") == (3.4, 2)  # the best, measured twice
    assert ranking.reference(RECORDS[:3], "minimize") == (pytest.approx(3.65), 2)  # baseline


def test_better_and_gain_follow_the_direction():
    assert ranking.better(1.0, 2.0, "minimize") and not ranking.better(1.0, 2.0, "maximize")
    assert ranking.gain(1.0, 2.0, "minimize") == 1.0 == ranking.gain(2.0, 1.0, "maximize")
    assert not ranking.better(2.0, 2.0, "minimize")


def test_noise_is_pooled_over_every_repeated_measurement():
    # groups (3.6, 3.7) and (3.3, 3.5): squares 0.005 + 0.02 over 2 degrees of freedom
    assert ranking.noise_sd(RECORDS) == pytest.approx(math.sqrt(0.025 / 2))
    assert ranking.noise_sd(RECORDS[:1]) is None


def test_verdict_says_when_nothing_beat_the_baseline():
    assert ranking.verdict(RECORDS[:3], "minimize") == "Nothing beat the baseline 3.6500."
    assert ranking.verdict(RECORDS, "minimize") == "Baseline 3.6500 → best 3.4000 (+6.85% better)."
    assert ranking.verdict([], "minimize") == "No baseline measured yet."


BASE = [rec(0, "baseline", 3.572), rec(1, "baseline", 3.666)]  # the README's main job


def test_a_gain_smaller_than_one_baseline_difference_is_confirmed_not_thrown_away():
    records = [*BASE, rec(2, "keep", 3.003)]
    sd = 0.094 / math.sqrt(2)
    single = decide([2.940], records, "minimize")  # 0.063 better: 0.67 standard errors
    assert single.action == "confirm" and single.stderr == pytest.approx(sd * math.sqrt(2))
    kept = decide([2.940, 2.930], records, "minimize")
    assert kept.action == "keep" and kept.rule == "confirmed gain"
    assert kept.metric == pytest.approx(2.935)
    refuted = decide([2.940, 3.060], records, "minimize")
    assert refuted.action == "discard" and refuted.rule == "not confirmed"


def test_clear_gains_keep_at_once_and_noise_is_discarded():
    records = [*BASE, rec(2, "keep", 3.003)]
    assert decide([2.7], records, "minimize").rule == "clear gain"
    assert decide([2.99], records, "minimize").action == "discard"  # 0.14 standard errors
    assert decide([3.2], records, "minimize").action == "discard"
    assert decide([2.7], records, "minimize", min_delta=0.5).action == "discard"


def test_simpler_code_wins_ties_but_not_losses():
    records = [*BASE, rec(2, "keep", 3.003)]
    tie = decide([3.05], records, "minimize", lines_added=1, lines_removed=4)
    assert tie.action == "keep" and tie.rule == "simpler" and "removes 4 lines" in tie.reason
    worse = decide([3.3], records, "minimize", lines_added=1, lines_removed=4)
    assert worse.action == "discard"
    assert decide([3.05], records, "minimize", lines_added=4, lines_removed=4).action == "discard"


def test_without_noise_any_gain_beyond_min_delta_keeps():
    records = [rec(0, "baseline", 2.0), rec(1, "baseline", 2.0)]
    assert decide([1.99], records, "minimize").rule == "clear gain"
    assert decide([2.0], records, "minimize").action == "discard"
    assert decide([2.01], records, "maximize").action == "keep"
