"""Re-run a ledger claim in a fresh sandbox and judge it: the verifier's side of a claim.

The claim's bundle is unbundled into a new git repository, checked to hold the claimed commit
as a child of the claimed parent, and run as an experiment is (scoring.scorer: confined, scored
by the template's evaluator) with the claim's seed, steps, threads and the schedule the run
followed, step by step. The claim is honest when the replayed metric is within `TOLERANCE` of
what it claims; false when it is not, when the replay fails, or when what the claim carries
(goal file, commit ids, bundle) cannot be replayed at all.

Refused before anything runs (no verdict, so nobody is slashed for the verifier's machine): a
corpus whose bytes differ here, another torch version, a claim that starts from a checkpoint.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.claims.claim import BUNDLE, GOAL_FILE, INIT, SCHEDULE
from agent.goal.spec import Goal, GoalError, load_goal
from agent.rundir.init_checkpoint import unpack_init
from agent.rundir.names import GOAL_COPY
from agent.rundir.runs import RunError
from agent.scoring.replay_facts import SCHEDULE_FILE, torch_version
from agent.scoring.scorer import Scorer, corpus_of
from ledger.rules import FALSE, HONEST
from sandbox.confine import Confinement
from sandbox.gitcli import Git, GitError, run_git
from sandbox.workspace import Workspace

# Relative difference between a replayed val_bpb and the claimed one that still counts as the
# same run. On the claimant's machine a replay is bit-exact (5 of 5 honest claims in
# bench/replay_tolerance.py: same checkpoint bytes, difference 0); the margin is for another
# CPU's float kernels, and bounds what a claim can overstate.
TOLERANCE = 0.005
COMMIT_ID = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")  # sha-1 or sha-256 repositories
BUDGET_FACTOR = 4  # a replay trains fixed steps; it may take this much longer than the claim


class ReplayRefused(RunError):
    """This machine cannot replay the claim faithfully; no verdict is given."""


class MalformedClaim(RunError):
    """What the claim carries cannot be replayed at all: the claimant's fault, judged false."""


@dataclass(frozen=True)
class Verdict:
    verdict: str  # HONEST or FALSE
    claimed: float
    replayed: float | None
    reason: str
    seconds: float
    checkpoint_identical: bool

    def facts(self) -> dict[str, Any]:
        """What the verification entry records."""
        return {"claimed": self.claimed, "replayed": self.replayed, "tolerance": TOLERANCE,
                "reason": self.reason, "seconds": round(self.seconds, 1),
                "checkpoint_identical": self.checkpoint_identical}


def replay_claim(body: Mapping[str, Any], artifacts: Mapping[str, bytes],
                 confinement: Confinement, *, work_dir: Path | None = None,
                 on_line: Callable[[str], None] | None = None) -> Verdict:
    """Replay the claim `body` and judge it; `artifacts` are those it names (agent.claims.claim):
    the goal file, the bundle and, if the run recorded one, its schedule."""
    facts = body["replay"]
    _check_machine(facts)
    with tempfile.TemporaryDirectory(prefix="magnet-replay-", dir=work_dir) as tmp:
        root = Path(tmp)
        try:
            goal, source = _open_claim(body, artifacts, root)
        except MalformedClaim as err:
            return Verdict(FALSE, float(body["metric"]["after"]), None,
                           f"the claim is malformed: {err}", 0.0, False)
        spec = goal.spec
        with Workspace.create(root / "replay", repo=source, editable=spec.editable,
                              knobs=spec.knobs, goal=spec.metric.goal) as ws:
            if spec.init is not None:
                try:
                    unpack_init(artifacts[INIT], ws.run_dir)
                except ValueError as err:
                    return Verdict(FALSE, float(body["metric"]["after"]), None,
                                   f"the claim is malformed: {err}", 0.0, False)
            if ws.git.head() != body["commit"]:
                raise RunError("the unbundled workspace is not at the claimed commit")
            scorer = Scorer(goal, ws, confinement)
            _check_corpus(scorer, facts)
            scorer.prepare()
            ws.begin(0, f"replay of {body['run']} experiment {body['exp']}")
            schedule = None
            if SCHEDULE in artifacts:  # untracked, in the tree the run can read
                schedule = ws.path / f".magnet-{SCHEDULE_FILE}"
                schedule.write_bytes(artifacts[SCHEDULE])
            # the goal's limits, not the claim's facts: a claim cannot buy itself more time
            run = scorer.run(seed=int(facts["seed"]), repeat=0, replay=facts, on_line=on_line,
                             schedule=schedule,
                             time_budget=BUDGET_FACTOR * spec.budget.per_experiment,
                             mem_limit=(spec.memory_limit_mb or 0) * 2**20 or None)
    return judge(body, run)


def judge(body: Mapping[str, Any], run: Mapping[str, Any]) -> Verdict:
    """HONEST when the replayed run is within TOLERANCE of the claim, else FALSE."""
    metric = body["metric"]
    claimed = float(metric["after"])
    value = run["metrics"].get(metric["name"]) if run["status"] == "ok" else None
    replayed_checkpoint = (run.get("replay") or {}).get("checkpoint_sha256")
    identical = replayed_checkpoint is not None and \
        replayed_checkpoint == body["replay"].get("checkpoint_sha256")
    if value is None:
        reason = f"the replay {run['status']}: {run.get('reason') or 'no metric'}"
        return Verdict(FALSE, claimed, None, reason, run["seconds"], identical)
    off = abs(float(value) - claimed) / max(abs(claimed), 1e-12)
    verdict = HONEST if off <= TOLERANCE else FALSE
    relation = "within" if verdict == HONEST else "outside"
    reason = (f"replayed {metric['name']} {float(value):.6f} vs claimed {claimed:.6f}: "
              f"{off:.3%} off, {relation} the {TOLERANCE:.1%} tolerance")
    return Verdict(verdict, claimed, float(value), reason, run["seconds"], identical)


def _check_machine(facts: Mapping[str, Any]) -> None:
    here = torch_version()
    if facts.get("torch") and facts["torch"] != here:
        raise ReplayRefused(f"the claim was trained with torch {facts['torch']}, this machine "
                            f"has {here}; replay it where `pip install torch=={facts['torch']}` "
                            "holds")


def _check_corpus(scorer: Scorer, facts: Mapping[str, Any]) -> None:
    claimed = facts.get("corpus")
    if not claimed or corpus_of(scorer.goal) is None:
        return
    from bitnet.data import corpus_origin

    here = scorer.corpus.sha256
    if here != claimed["sha256"]:
        raise ReplayRefused(
            f"corpus {claimed['name']} on this machine has sha256 {here[:12]}, the claim was "
            f"trained on {claimed['sha256'][:12]}; {corpus_origin(claimed['name'])}")


def _open_claim(body: Mapping[str, Any], artifacts: Mapping[str, bytes],
                root: Path) -> tuple[Goal, Path]:
    """The claim's goal and a repository at its commit, under `root`; MalformedClaim if the
    claim's own goal file, commit ids or bundle cannot give them."""
    for name in ("commit", "parent"):
        if not isinstance(body[name], str) or not COMMIT_ID.fullmatch(body[name]):
            raise MalformedClaim(f"its {name} {str(body[name])[:80]!r} is no git commit id")
    source = _unbundle(artifacts[BUNDLE], root / "source", body["commit"], body["parent"])
    goal_path = root / GOAL_COPY
    goal_path.write_bytes(artifacts[GOAL_FILE])
    try:  # a goal on the contributor's own repository replays on the bundle's copy of it
        goal = load_goal(goal_path, repository=source)
    except GoalError as err:
        raise MalformedClaim(f"its goal file does not load ({err})") from None
    if goal.spec.init is not None and INIT not in artifacts:
        raise ReplayRefused("the claim's run starts from a checkpoint (`init:`) that the claim "
                            "does not carry (a claim made before claims carried it)")
    return goal, source


def _unbundle(bundle: bytes, dest: Path, commit: str, parent: str) -> Path:
    """A repository whose HEAD is the claimed commit, from the bundle alone."""
    dest.mkdir(parents=True)
    path = dest.parent / "claim.bundle"
    path.write_bytes(bundle)
    git = Git(dest / ".git", dest)
    try:
        git.run("init", "-q")
        git.run("bundle", "verify", "-q", str(path))
        # a bundle is read over git's file transport, which the safe configuration turns off
        run_git(["-c", "protocol.file.allow=always", f"--git-dir={git.git_dir}", "fetch", "-q",
                 str(path), "+refs/*:refs/claim/*"], cwd=dest)
        parents = git.run("rev-list", "--parents", "-n", "1", commit).split()[1:]
        git.run("checkout", "-q", "-B", "claim", commit)
    except GitError as err:
        raise MalformedClaim(f"its bundle does not hold commit {commit[:12]} ({err})") from None
    if parent not in parents:
        raise MalformedClaim(f"commit {commit[:12]} is not a child of the claimed parent "
                             f"{parent[:12]}")
    return dest
