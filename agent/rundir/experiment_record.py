"""The fields of an experiment's record: one builder for the research loop and `train`.

A record is the draft (what the code was: built from the workspace before it runs) plus the
outcome (what its runs gave), plus `exp`, `status` and `commit`. The git note holds the same
record less the commit it is attached to.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

from agent.goal.knob_values import read_knob_values
from sandbox.knobs import KnobSpec
from sandbox.runner import RunResult
from sandbox.workspace import Workspace


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
        "reason": reason,
        # how the runs were confined and scored (agent.scoring.scorer): the report shows both
        "confinement": first.get("confinement"),
        "scored_by": first.get("scored_by"),
        "reported": [r.get("reported") for r in runs],
        # what a replay of the first run needs (scoring.replay_facts): a ledger claim carries it
        "replay": first.get("replay"),
        # and of every run: a claim replays each run behind its "before" (a confirmed best's too)
        "replays": [r.get("replay") for r in runs],
    }
