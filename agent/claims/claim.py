"""A ledger claim for a kept improvement of a run: what it claims, and what travels with it.

The claim names the goal, run, experiment, commit and parent, the metric before (the parent's
judged value) and after (the value of the run the replay facts describe), the replay facts of
the experiment's record, and the sha256 of the artifacts stored beside it in the ledger: the
goal file, a git bundle of the commit, the schedule the run followed (its progress at every
step, by the clock, which a replay follows exactly) and, for a run started from a base
checkpoint (`init:`), that checkpoint. The bundle holds the commit with its
history (parent..commit and the commits before it), so a machine that has none of them can
unbundle it.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.rundir import ranking
from agent.rundir.init_checkpoint import pack_init
from agent.rundir.names import GOAL_COPY
from agent.rundir.records import RunRecords
from agent.rundir.runs import RunError, load_run_goal
from agent.scoring.replay_facts import MAX_SCHEDULE, SCHEDULE_FILE
from ledger.canonical import sha256_hex
from ledger.rules import ARTIFACTS, BUNDLE, GOAL_FILE, INIT, SCHEDULE
from sandbox.gitcli import Git, GitError
from sandbox.layout import exp_ref, git_dir, output_dir
from sandbox.untrusted import MissingFileError, UntrustedFileError, read_schedule

CLAIMED = (ranking.KEEP,)  # statuses a claim may be made for: improvements that were kept
# what travels with a claim (ARTIFACTS: BUNDLE, GOAL_FILE, SCHEDULE, INIT) is the ledger's to
# name (ledger.rules), since `ledger audit` checks each one a claim names is stored intact
__all__ = ["ARTIFACTS", "BUNDLE", "CLAIMED", "GOAL_FILE", "INIT", "SCHEDULE", "Claim",
           "build_claim", "make_bundle"]


@dataclass(frozen=True)
class Claim:
    body: dict[str, Any]
    artifacts: dict[str, bytes]  # ARTIFACTS (schedule and init when the run has them) -> bytes


def build_claim(run_dir: Path, exp: int, *, stake: int) -> Claim:
    """The claim for experiment `exp` of the run in `run_dir`; RunError (one line) when that
    experiment is no kept improvement or its record lacks what a replay needs."""
    records = RunRecords(run_dir).read()
    record = next((r for r in records if r.get("exp") == exp), None)
    if record is None:
        raise RunError(f"{run_dir.name} has no experiment {exp}; see `magnet-agent history "
                       f"{run_dir.name}`")
    if record.get("status") not in CLAIMED or not record.get("commit"):
        raise RunError(f"experiment {exp} of {run_dir.name} is {record.get('status')}, not a "
                       "kept improvement; claim an experiment whose status is keep")
    replay = record.get("replay")
    if not replay or not record.get("runs") or record["runs"][0] is None:
        raise RunError(f"experiment {exp} of {run_dir.name} was recorded without replay facts "
                       "(a run made before the ledger existed); claim a newer experiment")
    parent = next((r for r in records if r.get("commit") == record.get("parent")
                   and r.get("metric") is not None), None)
    if parent is None:
        raise RunError(f"the parent {str(record.get('parent'))[:12]} of experiment {exp} has no "
                       "measured metric in the run's records; it cannot be claimed")
    goal = load_run_goal(run_dir)
    goal_text = (run_dir / GOAL_COPY).read_bytes()
    bundle = make_bundle(run_dir, exp, record["commit"])
    artifacts = {BUNDLE: bundle, GOAL_FILE: goal_text}
    if replay.get("schedule_sha256"):
        artifacts[SCHEDULE] = _schedule(run_dir, exp, replay["schedule_sha256"])
    if goal.spec.init is not None:  # the same bytes the run started every experiment from
        artifacts[INIT] = pack_init(run_dir)
    body = {
        "goal": goal.spec.name,  # the file itself is the goal_file artifact
        "run": run_dir.name, "exp": exp, "commit": record["commit"], "parent": record["parent"],
        "hypothesis": record.get("hypothesis", ""),
        "metric": {"name": record["metric_name"], "goal": goal.spec.metric.goal,
                   "before": parent["metric"], "after": record["runs"][0]},
        "replay": replay,
        **{name: sha256_hex(data) for name, data in artifacts.items()}, "stake": stake,
    }
    return Claim(body, artifacts)


def _schedule(run_dir: Path, exp: int, sha256: str) -> bytes:
    """The schedule the experiment's first run followed, as its record fixed it: a regular
    file of the right shape (sandbox.untrusted), never what a symlink there points at."""
    out = output_dir(run_dir, exp)
    path = out / SCHEDULE_FILE
    try:
        data, _ = read_schedule(out, SCHEDULE_FILE, MAX_SCHEDULE)
    except MissingFileError:
        data = b""
    except UntrustedFileError as err:
        raise RunError(f"the schedule is refused: {err}; claim from an untouched run") from None
    if sha256_hex(data) != sha256:
        raise RunError(f"{path} is missing or changed since the run (its record says sha256 "
                       f"{sha256[:12]}); claim from an untouched run")
    return data


def make_bundle(run_dir: Path, exp: int, commit: str) -> bytes:
    """A git bundle of the experiment's ref (the commit and its history)."""
    git = Git(git_dir(run_dir))
    try:
        head = git.run("rev-parse", exp_ref(exp))
        if head != commit:
            raise RunError(f"{exp_ref(exp)} is {head[:12]} but the record says {commit[:12]}; "
                           "the run's git history was changed: claim from an untouched run")
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "claim.bundle"
            git.run("bundle", "create", "-q", str(path), exp_ref(exp))
            return path.read_bytes()
    except GitError as err:
        raise RunError(f"cannot bundle experiment {exp} of {run_dir.name}: {err}") from None
