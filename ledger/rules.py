"""What the entries mean: the state of every claim, who is owed what, and which new entry is
refused. Pure: it reads entries in order and never touches storage.

- A claim, signed by the contributor it names, improves a metric over its parent commit and
  puts up a stake (> 0). Its reward is
  `POINTS_PER_GAIN` x the relative gain, paid once a replay verifies it.
- A verification (by anyone but the claimant, once per key and claim) replays the claim and
  earns its verifier `VERIFY_POINTS` whatever it finds, for the work.
- No single verifier slashes (SETTLE_VOTES, the one place this rule lives):
  * the first verdict on a PENDING claim: `honest` verifies it (its points go to the
    claimant: those of the gain its replay measured, never more than claimed,
    `verified_points`); `false` only DISPUTES it, nothing moves yet.
  * a DISPUTED claim settles when `quorum` verdicts (SETTLE_VOTES = 2 on SQLite; an EVM
    ledger uses its contract's quorum) from distinct keys, none the claimant's, agree:
    `quorum` false ones REFUTE it, and the slash entry that must follow takes the claimant's
    stake and revokes the reward; `quorum` honest ones VERIFY it (points to the claimant), and
    every verifier whose false verdict they contradict loses `VERIFIER_STAKE` (a false verdict
    stakes as much as a claim does by default, so lying costs what being lied about would).
  * with a quorum of 1 (the EVM tester's contract) the first false verdict refutes, as before.
- Refused: the same claim twice (a replay of it), a claim for a commit already credited or
  pending, a verdict on an unknown or settled claim or a second one by the same key, a slash
  without a refuted claim.
- ARTIFACTS: the claim fields that name stored artifacts by sha256; `ledger audit` checks
  that each one a claim names is stored and hashes to its name.
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
VERIFIER_STAKE = DEFAULT_STAKE  # what a false verdict loses when the claim is settled honest
SETTLE_VOTES = 2  # agreeing verdicts from distinct keys that settle a disputed claim (SQLite)
# a claim's states; DISPUTED: a false verdict is in, not yet agreed with or contradicted;
# REFUTED: false verdicts reached the quorum and the slash entry is due (nothing else may come
# between them, even from another process)
PENDING, DISPUTED, VERIFIED, REFUTED, SLASHED = (
    "pending", "disputed", "verified", "refuted", "slashed")
OPEN = (PENDING, DISPUTED)  # states a verdict may still be given in
# what a verifier is told when its false verdict left the claim disputed
DISPUTED_NOTE = ("disputed: no single verifier slashes; the claim is slashed when another key's "
                 "replay also finds it false, and a false verdict that honest ones outvote "
                 f"costs its verifier {VERIFIER_STAKE} points")
HONEST, FALSE = "honest", "false"
# what travels with a claim, stored in the ledger by sha256 and named by it under these keys
BUNDLE, GOAL_FILE, SCHEDULE, INIT = "bundle", "goal_file", "schedule", "init"
BEFORE_SCHEDULES = "before_schedules"  # the schedules of the runs behind a claim's before
ARTIFACTS = (BUNDLE, GOAL_FILE, SCHEDULE, BEFORE_SCHEDULES, INIT)


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


def verified_points(claimed: int, points: Any) -> int:
    """What an honest verdict pays: the points of the gain its replay measured (its `points`,
    from the replayed before and after), never more than the claim asked; a verdict that gives
    none (made before verdicts did) pays the claimed points."""
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
    verdicts: dict[str, str] = field(default_factory=dict)  # verifier key -> its verdict

    def count(self, verdict: str) -> int:
        return sum(v == verdict for v in self.verdicts.values())


@dataclass
class Standing:
    """Every claim and balance after the entries fed to `add` (in order); `quorum`: the
    agreeing verdicts that settle a disputed claim (SETTLE_VOTES unless a contract says)."""

    quorum: int = SETTLE_VOTES
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
                raise LedgerError(f"claim {state.id[:12]} is {state.status}, not refuted by "
                                  f"{self.quorum} false verdicts of distinct keys; no single "
                                  "verifier slashes, so another key must replay it first")

    def check_verifiable(self, state: ClaimState, verifier: str) -> None:
        """Raise LedgerError unless `verifier` (a public key) may verify the claim now; also
        asked before a replay, so a refused verdict costs no training."""
        if state.status not in OPEN:
            raise LedgerError(f"claim {state.id[:12]} is already {state.status} (entry "
                              f"{state.verified_by[-1]}); there is nothing left to verify")
        if verifier == state.claimant:
            raise LedgerError(f"claim {state.id[:12]} is your own; another key must verify it")
        if verifier in state.verdicts:
            raise LedgerError(f"you already judged claim {state.id[:12]} "
                              f"{state.verdicts[verifier]}; a dispute settles on verdicts of "
                              "other keys")

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
            self._judge(self.claims[body["claim"]], author, body["verdict"], seq,
                        body.get("points"))
        elif kind == SLASH:
            state = self.claims[body["claim"]]
            state.status = SLASHED
            self.balances[state.claimant] -= state.stake
            self.by_commit.pop(state.commit, None)  # a slashed commit may be claimed honestly
        self.size += 1

    def _judge(self, state: ClaimState, verifier: str, verdict: str, seq: int,
               points: Any = None) -> None:
        """One verdict on an open claim, and the settlement it brings (module docstring);
        `points`: what the verdict's replay measured the gain to be worth."""
        state.verified_by.append(seq)
        state.verdicts[verifier] = verdict
        self.balances[verifier] += VERIFY_POINTS
        if verdict == HONEST and (state.status == PENDING or
                                  state.count(HONEST) >= self.quorum):
            state.status = VERIFIED
            state.points = verified_points(state.points, points)
            self.balances[state.claimant] += state.points
            for other, said in state.verdicts.items():  # contradicted: their stake is lost
                if said == FALSE:
                    self.balances[other] -= VERIFIER_STAKE
        elif verdict == FALSE:
            state.status = REFUTED if state.count(FALSE) >= self.quorum else DISPUTED

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
