"""The fields of an experiment's record: one builder for the research loop and `train`.

A record is the draft (what the code was: built from the workspace before it runs) plus the
outcome (what its runs gave), plus `exp`, `status` and `commit`. The git note holds the same
record less the commit it is attached to.
"""

from __future__ import annotations

import hashlib
import statistics
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

from agent.goal.knob_values import read_knob_values
from sandbox.knobs import KnobSpec
from sandbox.metrics import is_finite
from sandbox.runner import RunResult
from sandbox.workspace import Workspace

# The held-out test score (agent.scoring.scorer) of a run summary and of a record: beside
# `metrics`, never in them, as metrics reach planners and test scores must not.
TEST_KEY = "test_metric"
# Whether experiment code could read the corpus's validation and test bytes (bitnet.data.sealed):
# True, False (then UNSEALED_REASON_KEY says why, in one line) or None (no corpus: a repository)
SEALED_KEY = "sealed"
UNSEALED_REASON_KEY = "unsealed_reason"


def draft(ws: Workspace, editable: Sequence[str], knobs: Mapping[str, KnobSpec],
          proposal: Mapping[str, Any], *, planner: str, metric_name: str,
          ran: bool = True) -> dict[str, Any]:
    """The record of the experiment in flight, from the workspace as it will run (`ran` False:
    its edits did not apply, so no code of its own to describe)."""
    usage = proposal.get("usage") or {}
    files = {p: (ws.path / p).read_text(encoding="utf-8", errors="replace")
             for p in editable if (ws.path / p).is_file()}
    diff = ws.git.run("diff", "HEAD", "--", *editable) if ran else ""
    added = removed = 0
    for line in diff.splitlines():
        if not line.startswith(("+++", "---")):
            added += line.startswith("+")
            removed += line.startswith("-")
    return {
        "hypothesis": proposal.get("hypothesis", ""),
        "rationale": proposal.get("rationale", ""),
        "edits": proposal.get("edits", []),
        "hints": proposal.get("hints", []),
        "planner": planner,
        "tokens": {"prompt": usage.get("prompt_tokens", 0),
                   "completion": usage.get("completion_tokens", 0)},
        "cost_usd": usage.get("cost_usd"),
        "propose_seconds": usage.get("seconds"),
        "knobs": read_knob_values(files, knobs) if ran else {},
        "diff_hash": hashlib.sha256(diff.encode()).hexdigest()[:16] if diff.strip() else None,
        "diff": {"added": added, "removed": removed},
        "parent": (ws.current or {}).get("base"),
        "metric_name": metric_name,
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def run_summary(result: RunResult, seed: int) -> dict[str, Any]:
    """One run of an experiment as the loop's state keeps it (plain JSON)."""
    return {"status": result.status, "exit_code": result.exit_code, "seed": seed,
            "metrics": dict(result.metrics), "seconds": round(result.seconds, 3),
            "reason": result.reason, "log_tail": result.log_tail,
            "log_path": str(result.log_path) if result.log_path else None,
            "confinement": result.confinement}


def seal(corpus: str | None) -> dict[str, Any]:
    """The SEALED_KEY (and UNSEALED_REASON_KEY) fields of a run on `corpus`."""
    if corpus is None:
        return {SEALED_KEY: None}
    from bitnet.data import unsealed_reason

    reason = unsealed_reason(corpus)
    return {SEALED_KEY: not reason, **({UNSEALED_REASON_KEY: reason} if reason else {})}


def outcome(runs: Sequence[Mapping[str, Any]], metric_name: str, metric: float | None,
            reason: str) -> dict[str, Any]:
    """What the runs gave: the judged metric, every run's value and seed, the first run's
    metrics; no runs for an experiment that never ran."""
    first = runs[0] if runs else {}
    return {
        "metric": metric,
        "runs": [r["metrics"].get(metric_name) for r in runs],
        "seeds": [r["seed"] for r in runs],
        "metrics": first.get("metrics", {}),
        "run_status": runs[-1]["status"] if runs else None,
        "seconds": round(sum(r["seconds"] for r in runs), 3) if runs else None,
        "run_seconds": [r["seconds"] for r in runs],
        # where each run's time went (bench/utilisation.py): its training loop, its scoring
        "train_seconds": [r["metrics"].get("train_seconds") for r in runs],
        "score_seconds": [r.get("score_seconds") for r in runs],
        "reason": reason,
        # how the runs were confined and scored (agent.scoring.scorer): the report shows both
        "confinement": first.get("confinement"),
        "scored_by": first.get("scored_by"),
        SEALED_KEY: first.get(SEALED_KEY),  # absent (None) in records from before the splits
        UNSEALED_REASON_KEY: first.get(UNSEALED_REASON_KEY),
        "reported": [r.get("reported") for r in runs],
        TEST_KEY: _test_score(runs),
        # what a replay of the first run needs (scoring.replay_facts): a ledger claim carries it
        "replay": first.get("replay"),
        # and of every run: a claim replays each run behind its "before" (a confirmed best's too)
        "replays": [r.get("replay") for r in runs],
    }


def _test_score(runs: Sequence[Mapping[str, Any]]) -> float | None:
    """The mean test score of the runs, as `metric` is the mean of theirs; None unless every
    run has one (the loop scores the test split only for runs that could be kept)."""
    values = [r.get(TEST_KEY) for r in runs]
    if not values or not all(is_finite(v) for v in values):
        return None
    return statistics.fmean(values)  # type: ignore[arg-type]
