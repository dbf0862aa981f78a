"""`record_contribution` and `verify_contribution`: the ledger as `magnet-agent ledger claim` and
`ledger verify` use it, for the planner (or the loop's explicit steps).

Both sign with the goal's key (`ledger: {key, path, stake}`) and call the very functions the CLI
calls (agent.claims.ledger_ops), so a claim or verdict made here is the one the CLI would make.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from agent.claims.ledger_ops import claim_experiment, claim_line, ledger_errors, replay_entry
from agent.goal.spec import LedgerSettings
from agent.tools.base import (
    Tool,
    ToolArgs,
    ToolContext,
    ToolError,
    as_tool_errors,
    best_kept_exp,
)
from ledger.keys import load_key
from ledger.open import open_ledger
from ledger.rules import reward_points


class RecordArgs(ToolArgs):
    exp: int | None = Field(default=None, ge=0, description=(
        "the kept experiment to claim; default: this run's best"))


class VerifyArgs(ToolArgs):
    entry: str = Field(min_length=1, description=(
        "the claim to replay: its entry number, or 6+ characters of its hash or claim id"))


def record_contribution(ctx: ToolContext, args: RecordArgs) -> dict[str, Any]:
    settings = _settings(ctx)
    exp = args.exp if args.exp is not None else best_kept_exp(
        ctx, "no best experiment to claim (or name a kept `exp`)")
    with as_tool_errors(ledger_errors()):
        key = load_key(settings.key)  # before the ledger: a bad key creates no ledger file
        with open_ledger(settings.path) as ledger:
            claimed = claim_experiment(ledger, key, ctx.run_dir, exp, stake=settings.stake,
                                       reuse=True)
            entry = claimed.entry
            status = ledger.claim_state(entry).status
            location = ledger.location
    body = entry.fields["body"]
    metric = body["metric"]
    held = " (already in the ledger: nothing written)" if not claimed.new else ""
    return {"summary": f"{claim_line(entry)}, {status}{held}", "entry": entry.fields["seq"],
            "hash": entry.hash, "claim_id": entry.body_id, "run": body["run"],
            "exp": body["exp"], "commit": body["commit"],
            "metric": {k: metric[k] for k in ("name", "before", "after")},
            "points_once_verified": reward_points(metric), "stake": body["stake"],
            "status": status, "already_recorded": not claimed.new, "ledger": location}


def verify_contribution(ctx: ToolContext, args: VerifyArgs) -> dict[str, Any]:
    settings = _settings(ctx)
    with as_tool_errors(ledger_errors()):
        key = load_key(settings.key)
        with open_ledger(settings.path, create=False) as ledger:
            replayed = replay_entry(ledger, key, args.entry, unconfined=ctx.unconfined,
                                    console=ctx.console)
            location = ledger.location
            status = ledger.claim_state(replayed.claim).status
    verdict, claim = replayed.verdict, replayed.claim.fields
    written = [e.fields["seq"] for e in replayed.written]
    return {"summary": f"{verdict.verdict}: {verdict.reason}; recorded as entries "
                       f"{', '.join(map(str, written))}; the claim is {status}",
            "entry": claim["seq"], "run": claim["body"]["run"], "exp": claim["body"]["exp"],
            "verdict": verdict.verdict, "reason": verdict.reason,
            "metric": claim["body"]["metric"]["name"], "claimed": verdict.claimed,
            "replayed": verdict.replayed, "checkpoint_identical": verdict.checkpoint_identical,
            "claim_status": status, "entries_written": written, "ledger": location}


def _settings(ctx: ToolContext) -> LedgerSettings:
    if ctx.goal.spec.ledger is None:
        raise ToolError("the goal has no `ledger:` settings; add `ledger: {key: KEYFILE}` (make "
                        "a key with `magnet-agent ledger keygen KEYFILE`)")
    return ctx.goal.spec.ledger


RECORD_CONTRIBUTION = Tool(
    name="record_contribution",
    description=(
        "Claim a kept improvement of this run in the contribution ledger, signed with the "
        "goal's key: the commit, the metric before and after, and what another machine needs "
        "to replay it. Points are credited once someone verifies it; a false claim loses its "
        "stake. Call it after an experiment is kept (default: the run's best). Calling it again "
        "for the same experiment returns the same entry."),
    args=RecordArgs,
    run=record_contribution,
)

VERIFY_CONTRIBUTION = Tool(
    name="verify_contribution",
    description=(
        "Replay someone else's ledger claim in a fresh sandbox (the recorded steps, seed and "
        "schedule) and record the verdict: honest if the replayed metric is within the "
        "tolerance of the claim, otherwise false (no single verifier slashes: the claim is "
        "slashed when a second key's replay agrees, and a false verdict outvoted by honest "
        "ones costs your stake). Earns verification points either way. Takes minutes of "
        "training; your own or settled claims are refused."),
    args=VerifyArgs,
    run=verify_contribution,
)
