"""The keep rule's reasons say what happened: a result far worse than the best says worse, and by
how much; only a result within the noise says so."""

import math

import pytest

from agent.loop.decision import decide


def rec(exp: int, status: str, metric: float, runs: list[float] | None = None) -> dict:
    return {"exp": exp, "status": status, "metric": metric, "runs": runs or [metric]}


# the best kept 2.8712 stands on two runs 0.0030 apart, the baselines on two equal ones: pooled
# sd sqrt(2 * 0.0015**2 / 2) = 0.0015; one run against two: stderr 0.0015 * sqrt(1/1 + 1/2)
RECORDS = [rec(0, "baseline", 3.10), rec(1, "baseline", 3.10),
           rec(2, "keep", 2.8712, [2.8697, 2.8727])]
STDERR = 0.0015 * math.sqrt(1.5)


def test_a_result_far_worse_than_the_best_says_worse_and_by_how_much():
    worse = decide([2.9162], RECORDS, "minimize")
    assert worse.action == "discard" and worse.rule == "worse"
    assert worse.stderr == pytest.approx(STDERR)
    errors = 0.0450 / STDERR
    assert f"worse than the best 2.8712 by 0.0450 ({errors:.1f} standard errors)" in worse.reason
    assert "within noise" not in worse.reason and "not a real gain" not in worse.reason


def test_a_confirmed_mean_far_worse_says_worse_not_unconfirmed():
    refuted = decide([2.8900, 2.9100], RECORDS, "minimize")
    assert refuted.action == "discard" and refuted.rule == "worse"
    assert "worse than the best 2.8712 by 0.0288" in refuted.reason


def test_within_noise_is_said_only_of_results_within_the_noise():
    slightly = decide([2.8720], RECORDS, "minimize")  # 0.0008 worse: 0.44 standard errors
    assert slightly.action == "discard" and slightly.rule == "within noise"
    assert "worse than" not in slightly.reason
    refuted = decide([2.8690, 2.8750], RECORDS, "minimize")  # mean 2.8720: within the noise
    assert refuted.rule == "not confirmed" and "within the noise" in refuted.reason


def test_without_noise_a_worse_result_says_by_how_much():
    records = [rec(0, "baseline", 2.0), rec(1, "baseline", 2.0)]
    worse = decide([2.5], records, "minimize")
    assert worse.rule == "worse" and worse.reason.endswith("worse than the best 2.0000 by 0.5000")
