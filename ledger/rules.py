"""What the entries mean: the state of every claim, who is owed what, and which new entry is
refused. Pure: it reads entries in order and never touches storage.

- A claim, signed by the contributor it names, improves a metric over its parent commit and
  puts up a stake (> 0). Its reward is
  `POINTS_PER_GAIN` x the relative gain, paid once a replay verifies it.
- A verification (by anyone but the claimant) replays the claim: `honest` credits the points
  of the gain the replay measured (never more than claimed: `verified_points`) to the
  claimant; `false` refutes it, and the slash entry that must follow takes the stake and
  revokes the reward. The verifier earns `VERIFY_POINTS` either way, for the work.
- Refused: the same claim twice (a replay of it), a claim for a commit already credited or
  pending, a verification of an unknown or already settled claim, a slash without a false
  verdict.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from ledger.canonical import LedgerError
from ledger.entries import CLAIM, SLASH, VERIFICATION, Entry, shape_problem

POINTS_PER_GAIN = 10_000  # one point per 0.01% relative improvement
VERIFY_POINTS = 10  # for replaying someone's claim
DEFAULT_STAKE = 100
# a claim's states; REFUTED: a false verdict is in and its slash entry is due (nothing else may
# come between them, even from another process)
PENDING, VERIFIED, REFUTED, SLASHED = "pending", "verified", "refuted", "slashed"
HONEST, FALSE = "honest", "false"


# The ledger's own comparison, deliberately not agent.rundir.ranking.gain: the ledger imports
# nothing from the other packages, so a verifier needs only this package to check a ledger. Same
# sign convention as ranking.gain (positive: better in the goal's direction), relative to
# `before` so points compare across metrics. The contract (ledger/contracts/magnet_ledger.vy)
# does not evaluate it: submit_claim stores the points evm_ledger computes with reward_points.
def relative_gain(metric: dict[str, Any]) -> float:
    """How much `after` improves on `before`, relative to `before` (positive: better)."""
    before, after = float(metric["before"]), float(metric["after"])
    if before == 0:
        raise LedgerError("a claim's `before` is 0, so no relative gain exists; claim a metric "
                          "that is not zero at the parent")
    sign = -1.0 if metric.get("goal", "minimize") == "minimize" else 1.0
    return sign * (after - before) / abs(before)


def reward_points(metric: dict[str, Any]) -> int:
    return round(POINTS_PER_GAIN * relative_gain(metric))


def verified_points(claimed: int, verification: dict[str, Any]) -> int:
    """What an honest verdict pays: the points of the gain its replay measured (`points`, from
    the replayed before and after), never more than the claim asked; a verdict that gives none
    (made before verdicts did) pays the claimed points."""
    points = verification.get("points")
    if not isinstance(points, int) or isinstance(points, bool):
        return claimed
    return max(0, min(claimed, points))


@dataclass
class ClaimState:
    id: str
    seq: int
    claimant: str
    commit: str
    points: int
    stake: int
    status: str = PENDING
    verified_by: list[int] = field(default_factory=list)  # seqs of its verifications


@dataclass
class Standing:
    """Every claim and balance after the entries fed to `add` (in order)."""

    claims: dict[str, ClaimState] = field(default_factory=dict)
    by_commit: dict[str, str] = field(default_factory=dict)  # commit -> live claim id
    balances: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    size: int = 0

    def check(self, entry: Entry) -> None:
        """Raise LedgerError (one line) if `entry` may not follow the entries seen so far."""
        fields = entry.fields
        if problem := shape_problem(fields):
            raise LedgerError(f"the entry is malformed: {problem}; build entries with "
                              "magnet-agent ledger")
        kind, body, author = fields["kind"], fields["body"], fields["author"]
        if kind == CLAIM:
            self._check_claim(body, entry.body_id)
            if body["contributor"] != author:
                raise LedgerError(f"the claim names contributor {str(body['contributor'])[:12]} "
                                  f"but is signed by {author[:12]}; a claim is signed by its "
                                  "contributor")
        elif kind == VERIFICATION:
            self.check_verifiable(self._claim(body), author)
            if body.get("verdict") not in (HONEST, FALSE):
                raise LedgerError(f"verdict must be {HONEST!r} or {FALSE!r}, not "
                                  f"{body.get('verdict')!r}")
        elif kind == SLASH:
            state = self._claim(body)
            if state.status != REFUTED:
                raise LedgerError(f"claim {state.id[:12]} has no false verdict to slash it for; "
                                  "verify it first")

    def check_verifiable(self, state: ClaimState, verifier: str) -> None:
        """Raise LedgerError unless `verifier` (a public key) may verify the claim now; also
        asked before a replay, so a refused verdict costs no training."""
        if state.status != PENDING:
            raise LedgerError(f"claim {state.id[:12]} is already {state.status} (entry "
                              f"{state.verified_by[-1]}); there is nothing left to verify")
        if verifier == state.claimant:
            raise LedgerError(f"claim {state.id[:12]} is your own; another key must verify it")

    def add(self, entry: Entry) -> None:
        """Apply an entry already checked (or read back from storage)."""
        fields = entry.fields
        kind, body, author, seq = fields["kind"], fields["body"], fields["author"], fields["seq"]
        if kind == CLAIM:
            state = ClaimState(entry.body_id, seq, author, body["commit"],
                               reward_points(body["metric"]), int(body["stake"]))
            self.claims[state.id] = state
            self.by_commit[state.commit] = state.id
        elif kind == VERIFICATION:
            state = self.claims[body["claim"]]
            state.verified_by.append(seq)
            self.balances[author] += VERIFY_POINTS
            if body["verdict"] == HONEST:
                state.status = VERIFIED
                state.points = verified_points(state.points, body)
                self.balances[state.claimant] += state.points
            else:
                state.status = REFUTED
        elif kind == SLASH:
            state = self.claims[body["claim"]]
            state.status = SLASHED
            self.balances[state.claimant] -= state.stake
            self.by_commit.pop(state.commit, None)  # a slashed commit may be claimed honestly
        self.size += 1

    def _claim(self, body: dict[str, Any]) -> ClaimState:
        state = self.claims.get(str(body.get("claim")))
        if state is None:
            raise LedgerError(f"no claim {str(body.get('claim'))[:12]} in this ledger; name a "
                              "claim entry (`ledger show`)")
        return state

    def _check_claim(self, body: dict[str, Any], claim_id: str) -> None:
        missing = [k for k in ("goal", "run", "exp", "commit", "parent", "metric", "replay",
                               "bundle", "stake", "contributor") if k not in body]
        if missing:
            raise LedgerError(f"the claim lacks {', '.join(missing)}; build claims with "
                              "`magnet-agent ledger claim`")
        if not isinstance(body["stake"], int) or body["stake"] <= 0:
            raise LedgerError(f"a claim without stake is refused (stake {body['stake']!r}); "
                              f"stake a positive number of points, e.g. --stake {DEFAULT_STAKE}")
        existing = self.claims.get(claim_id)
        if existing is not None:
            raise LedgerError(f"this claim is already entry {existing.seq} (a replayed claim); "
                              "a claim counts once")
        if body["commit"] in self.by_commit:
            other = self.claims[self.by_commit[body["commit"]]]
            raise LedgerError(f"commit {body['commit'][:12]} is already claimed by entry "
                              f"{other.seq} ({other.status}); claim a new improvement")
        if reward_points(body["metric"]) <= 0:
            metric = body["metric"]
            raise LedgerError(f"{metric.get('name')} {metric['after']} does not improve on the "
                              f"parent's {metric['before']}; claim only kept improvements")
