"""The verdict on a replayed claim: is every number it states what its replays gave?

A claim states the value of its claimed run ("after"), the value of every run behind its
"before" (the keep rule's reference: agent.claims.claim) and their mean, and the same on the
held-out test split. It is honest when each replayed run is within `TOLERANCE` of what the claim
states for it, on validation and test alike; false at the first that is not, or when a replay
fails. The points it earns are those of the replayed gain (`Verdict.points`), never more than
it claimed (ledger.rules).
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ledger.canonical import LedgerError
from ledger.rules import FALSE, HONEST, reward_points

# Relative difference between a replayed score and the claimed one that still counts as the
# same run. On the claimant's machine a replay is bit-exact (5 of 5 honest claims in
# bench/replay_tolerance.py: same checkpoint bytes, difference 0); the margin is for another
# CPU's float kernels, and bounds what a claim can overstate.
TOLERANCE = 0.005


@dataclass(frozen=True)
class Verdict:
    verdict: str  # HONEST or FALSE
    claimed: float  # the claimed run's stated value ("after")
    replayed: float | None
    reason: str
    seconds: float
    checkpoint_identical: bool
    before_claimed: float | None = None  # the stated "before" (mean of the runs behind it)
    before_replayed: float | None = None  # the mean of their replays (None: not replayed)
    test: dict[str, float | None] = field(default_factory=dict)  # test split: claimed/replayed
    points: int | None = None  # what the replayed gain is worth (None: no honest verdict)

    def facts(self) -> dict[str, Any]:
        """What the verification entry records."""
        return {"claimed": self.claimed, "replayed": self.replayed, "tolerance": TOLERANCE,
                "before_claimed": self.before_claimed, "before_replayed": self.before_replayed,
                "test": self.test or None, "points": self.points,
                "reason": self.reason, "seconds": round(self.seconds, 1),
                "checkpoint_identical": self.checkpoint_identical}


def off_by(value: float, claimed: float) -> float:
    """Relative difference of a replayed value from the claimed one."""
    return abs(float(value) - float(claimed)) / max(abs(float(claimed)), 1e-12)


def check_run(what: str, name: str, run: Mapping[str, Any], claimed: float,
              key: str | None = None) -> str | None:
    """Why the replayed `run` does not give the `claimed` value of `name` (the run's metric, or
    its top-level `key` such as the test score), or None when it does, within TOLERANCE."""
    value = (run.get(key) if key else run["metrics"].get(name)) if run["status"] == "ok" else None
    if value is None:
        label = key or name
        return f"the replay of {what} {run['status']}: {run.get('reason') or 'no ' + label}"
    off = off_by(value, claimed)
    if off > TOLERANCE and key:  # no test numbers: a reason reaches planners (ledger tools)
        return (f"replayed {what}: its {key} is not the claimed one, outside the "
                f"{TOLERANCE:.1%} tolerance")
    if off > TOLERANCE:
        return (f"replayed {what} {name} {float(value):.6f} vs claimed {claimed:.6f}: "
                f"{off:.3%} off, outside the {TOLERANCE:.1%} tolerance")
    return None


def judge(body: Mapping[str, Any], after: Mapping[str, Any],
          before: Sequence[Mapping[str, Any]] | None, *, test_key: str,
          seconds: float) -> Verdict | None:
    """The verdict on `body` from the replay of its claimed run (`after`) and of the runs behind
    its before (`before`, in the claim's order, maybe the first few; None: none yet). FALSE as
    soon as one replayed run is off; None while those replayed hold and some are not yet."""
    metric, name = body["metric"], body["metric"]["name"]
    claimed = float(metric["after"])
    replayed_checkpoint = (after.get("replay") or {}).get("checkpoint_sha256")
    identical = replayed_checkpoint is not None and \
        replayed_checkpoint == body["replay"].get("checkpoint_sha256")
    value = after["metrics"].get(name) if after["status"] == "ok" else None
    replayed = float(value) if value is not None else None

    def verdict(kind: str, reason: str, **more: Any) -> Verdict:
        return Verdict(kind, claimed, replayed, reason, seconds, identical,
                       before_claimed=float(metric["before"]), **more)

    test = body.get("test")
    problems = [check_run("the claimed run", name, after, claimed)]
    if test:
        problems.append(check_run("the claimed run", name, after, test["after"], test_key))
    for stated, run in zip(body["before_runs"], before or [], strict=False):
        what = f"the before run of experiment {stated['exp']} (seed {stated['seed']})"
        problems.append(check_run(what, name, run, stated["value"]))
        if test:
            problems.append(check_run(what, name, run, stated["test"], test_key))
    if problem := next((p for p in problems if p), None):
        return verdict(FALSE, problem)
    if before is None or len(before) < len(body["before_runs"]):
        return None  # the ones replayed so far hold: replay the rest
    assert replayed is not None  # no problem with `after`: it gave its value
    before_mean = statistics.fmean(float(run["metrics"][name]) for run in before)
    replayed_test: dict[str, float | None] = {}
    if test:
        replayed_test = {"claimed_before": test["before"], "claimed_after": test["after"],
                         "replayed_before": statistics.fmean(r[test_key] for r in before),
                         "replayed_after": float(after[test_key])}
    try:
        points = max(0, reward_points({"goal": metric.get("goal"), "before": before_mean,
                                       "after": replayed}))
    except LedgerError:  # a before of 0: no relative gain
        points = 0
    reason = (f"replayed {name} {before_mean:.6f} -> {replayed:.6f} vs claimed "
              f"{float(metric['before']):.6f} -> {claimed:.6f} ({len(before)} before run(s)"
              f"{' and the test split' if test else ''}), within the {TOLERANCE:.1%} "
              f"tolerance: {points} points")
    return verdict(HONEST, reason, before_replayed=before_mean, test=replayed_test,
                   points=points)


def failed(body: Mapping[str, Any], reason: str) -> Verdict:
    """FALSE without a replay: what the claim carries cannot be replayed at all."""
    return Verdict(FALSE, float(body["metric"]["after"]), None,
                   f"the claim is malformed: {reason}", 0.0, False,
                   before_claimed=float(body["metric"]["before"]))
