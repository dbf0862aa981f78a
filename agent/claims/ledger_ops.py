"""Claims in a ledger: make one for a kept experiment, or replay one and record the verdict.

`claim_experiment` and `replay_entry` are what both `magnet-agent ledger claim|verify`
(agent.cli.ledger) and the ledger tools (agent.tools.ledger_tools) do, so a claim or verdict
made by the planner is the one a person would make. The claim itself is agent.claims.claim, the
replay agent.claims.replay; the ledger is `ledger/`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ledger.entries import Entry
from ledger.rules import reward_points

if TYPE_CHECKING:  # imported when used: `ledger keygen` and `--help` start fast
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from agent.claims.replay import Verdict
    from ledger.book import Ledger


def ledger_errors() -> tuple[type[Exception], ...]:
    """What the ledger, a run's records and a replay refuse with, one line each (a replay this
    machine cannot make faithfully is a RunError: ReplayRefused)."""
    from agent.goal.spec import GoalError
    from agent.rundir.runs import RunError
    from ledger.canonical import LedgerError
    from sandbox.errors import SandboxError

    return LedgerError, RunError, GoalError, SandboxError


def claim_line(entry: Entry) -> str:
    """A claim entry in one line: what it claims and what it is worth."""
    body = entry.fields["body"]
    metric = body["metric"]
    return (f"entry {entry.fields['seq']} ({entry.hash[:12]}): {body['run']} experiment "
            f"{body['exp']}, {metric['name']} {metric['before']:.4f} -> {metric['after']:.4f}, "
            f"{reward_points(metric)} points once verified, stake {body['stake']}")


@dataclass(frozen=True)
class Claimed:
    entry: Entry
    new: bool  # False: the ledger already held this claim by this key (nothing was written)


def claim_experiment(ledger: Ledger, key: Ed25519PrivateKey, run_dir: Path, exp: int, *,
                     stake: int | None = None, reuse: bool = False) -> Claimed:
    """Claim kept experiment `exp` of the run in `run_dir` with its replay facts and bundle
    (agent.claims.claim), signed by `key`; `stake` None: the ledger's default. With `reuse`, a claim
    this key already made for that run, experiment and commit is returned instead of refused
    (a call re-run after its append). RunError or LedgerError (one line) otherwise."""
    from agent.claims.claim import build_claim
    from ledger.keys import public_hex
    from ledger.rules import DEFAULT_STAKE

    claim = build_claim(run_dir, exp, stake=DEFAULT_STAKE if stake is None else stake)
    if reuse and (held := held_claim(ledger, claim.body, public_hex(key))) is not None:
        return Claimed(held, new=False)
    return Claimed(ledger.claim(key, claim.body, claim.artifacts), new=True)


def held_claim(ledger: Ledger, body: dict[str, Any], contributor: str) -> Entry | None:
    """The live claim entry `contributor` made for `body`'s run, experiment and commit, if the
    ledger holds one (another's claim on that commit is the ledger's to refuse)."""
    standing = ledger.standing
    claim_id = standing.by_commit.get(body["commit"])
    if claim_id is None or standing.claims[claim_id].claimant != contributor:
        return None
    entry = ledger.find(standing.claims[claim_id].seq)
    held = entry.fields["body"]
    return entry if (held["run"], held["exp"]) == (body["run"], body["exp"]) else None


@dataclass(frozen=True)
class Replayed:
    claim: Entry
    verdict: Verdict
    written: list[Entry]  # the verification entry, and the slash that follows a false verdict


def replay_entry(ledger: Ledger, key: Ed25519PrivateKey, ref: str, *, unconfined: bool,
                 console: Console | None = None) -> Replayed:
    """Replay the claim `ref` names (number, hash or claim id) in a fresh sandbox, as its
    verifier `key`, and record the verdict; progress on `console` (None: quiet). Refused before
    any training (LedgerError, one line): your own claim, a settled one; ReplayRefused when this
    machine cannot replay it faithfully (nothing is recorded)."""
    from agent.claims.claim import ARTIFACTS
    from agent.claims.replay import replay_claim
    from agent.claims.replay_cache import ReplayCache
    from agent.scoring.progress import STEP_LINE
    from ledger.keys import public_hex
    from sandbox.confine import confinement

    entry = ledger.find(ref)
    ledger.standing.check_verifiable(ledger.claim_state(entry), public_hex(key))  # before work
    body = entry.fields["body"]
    confined = confinement(unconfined=unconfined)
    steps = body["replay"].get("steps")
    if console is not None:
        console.print(f"replaying entry {entry.fields['seq']}: {body['run']} experiment "
                      f"{body['exp']} ({steps} steps, seed {body['replay']['seed']}, "
                      f"{body['replay'].get('threads')} threads), then the "
                      f"{len(body.get('before_runs') or [])} run(s) behind its before",
                      soft_wrap=True)
    with Progress(TextColumn("[progress.description]{task.description}"), BarColumn(),
                  MofNCompleteColumn(), TextColumn("{task.fields[status]}"),
                  TimeElapsedColumn(), console=console, transient=True,
                  disable=console is None) as progress:
        task = progress.add_task("preparing the sandbox", total=steps or None, status="")

        def on_line(line: str) -> None:
            if match := STEP_LINE.match(line):
                progress.update(task, description="training", completed=int(match[1]),
                                status=f"loss {match[2]}")
            elif line.startswith("METRIC "):
                progress.update(task, description="scoring", status="")

        artifacts = {name: ledger.artifact(body[name])
                     for name in ARTIFACTS if name in body}
        verdict = replay_claim(body, artifacts, confined, on_line=on_line,
                               cache=ReplayCache.default())
    return Replayed(entry, verdict, ledger.verify(key, entry, verdict.verdict, verdict.facts()))
