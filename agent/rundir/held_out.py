"""Validation and held-out test side by side, and the gap: the one definition the review reads.

Every decision of a run (keep, discard, best) is taken on the validation split, so over many
experiments the best kept one is selected partly for fitting those bytes. The test split is
scored too (TEST_KEY, never shown to planners) and never decides anything, so the best kept
experiment's gain over the baseline on it is an unselected estimate. The gap is the difference:

    gap = (best's validation gain over the baseline) - (best's test gain over the baseline)

in the metric's units, gains positive when better (ranking.gain). A positive gap is how much of
the reported gain is selection on the validation bytes; near zero, the gain holds on unseen
bytes. Baseline test is the mean over the baseline runs, like the baseline's metric.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from agent.rundir import ranking
from agent.rundir.experiment_record import TEST_KEY


@dataclass(frozen=True)
class HeldOut:
    goal: str  # minimize | maximize
    baseline_val: float | None
    baseline_test: float | None
    best_val: float | None  # the best kept experiment's (None: nothing kept)
    best_test: float | None

    @property
    def val_gain(self) -> float | None:
        return _gain(self.best_val, self.baseline_val, self.goal)

    @property
    def test_gain(self) -> float | None:
        return _gain(self.best_test, self.baseline_test, self.goal)

    @property
    def gap(self) -> float | None:
        """How much more the validation split says was gained than the test split does."""
        val, test = self.val_gain, self.test_gain
        return None if val is None or test is None else val - test

    def as_dict(self) -> dict[str, Any]:
        fields = asdict(self)
        del fields["goal"]
        return {**fields, "val_gain": self.val_gain, "test_gain": self.test_gain,
                "gap": self.gap}

    def line(self) -> str:
        """One sentence for the report and the status, e.g. `Held-out test: baseline 4.2100 →
        best 4.1900 (test gain +0.0200 against +0.0300 on validation: gap +0.0100).`"""
        if self.baseline_test is None:
            return "Held-out test: not scored (no test split for this goal)."
        if self.best_val is None:
            return f"Held-out test: baseline {self.baseline_test:.4f}; nothing kept."
        if self.best_test is None:
            return (f"Held-out test: baseline {self.baseline_test:.4f}; the best kept "
                    "experiment has no test score.")
        return (f"Held-out test: baseline {self.baseline_test:.4f} → best {self.best_test:.4f} "
                f"(test gain {self.test_gain:+.4f} against {self.val_gain:+.4f} on validation: "
                f"gap {self.gap:+.4f}).")


def score_on_test(record: ranking.Record) -> float | None:
    """A record's test score, None when it has none."""
    value = record.get(TEST_KEY)
    return float(value) if ranking.is_finite(value) else None


def held_out(records: Sequence[ranking.Record], goal: str) -> HeldOut:
    """The baseline's and the best kept experiment's scores on both splits."""
    tests = [t for r in records if r.get("status") == ranking.BASELINE
             and (t := score_on_test(r)) is not None]
    best = ranking.best_record(records, goal)
    return HeldOut(goal=goal, baseline_val=ranking.baseline(records),
                   baseline_test=statistics.fmean(tests) if tests else None,
                   best_val=best["metric"] if best else None,
                   best_test=score_on_test(best) if best else None)


def _gain(value: float | None, base: float | None, goal: str) -> float | None:
    return None if value is None or base is None else ranking.gain(value, base, goal)
