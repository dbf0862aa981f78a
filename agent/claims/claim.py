"""A ledger claim for a kept improvement of a run: what it claims, and what travels with it.

The claim names the goal, run, experiment, commit and parent; the metric before and after; the
replay facts of the experiment's first run; and the runs behind "before" (`before_runs`): the
runs the keep rule compared the experiment with (agent.rundir.ranking.reference_records: the
baseline runs, or the best kept experiment's), each with its commit, seed, value and replay
facts, so a verifier replays them as it replays the claimed run. "before" is the mean of their
values (the keep rule's reference), "after" the value of the claimed run. `test` holds the same
two numbers on the held-out test split when the records carry them.

Stored beside it in the ledger by sha256: the goal file, a git bundle of the commit (with its
history: the parent and the commits before it, so a machine that has none of them can unbundle
it), the schedule the claimed run followed (its progress at every step, which a replay follows
exactly), the schedules the before runs followed, and for a run started from a base checkpoint
(`init:`) that checkpoint.

A claim its verifier would refuse to replay is refused here first, in one line: a corpus whose
held-out bytes the runs could read (bitnet.data.sealed), or before runs without replay facts.
"""

from __future__ import annotations

import json
import statistics
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
from agent.scoring.scorer import corpus_of
from ledger.canonical import sha256_hex
from ledger.rules import ARTIFACTS, BEFORE_SCHEDULES, BUNDLE, GOAL_FILE, INIT, SCHEDULE
from sandbox.gitcli import Git, GitError
from sandbox.layout import MAX_REPEATS, exp_ref, git_dir, output_dir
from sandbox.untrusted import MissingFileError, UntrustedFileError, read_schedule

CLAIMED = (ranking.KEEP,)  # statuses a claim may be made for: improvements that were kept
# what travels with a claim (ARTIFACTS: BUNDLE, GOAL_FILE, SCHEDULE, BEFORE_SCHEDULES, INIT) is
# the ledger's to name (ledger.rules), since `ledger audit` checks each one a claim names is
# stored intact
__all__ = ["ARTIFACTS", "BEFORE_SCHEDULES", "BUNDLE", "CLAIMED", "GOAL_FILE", "INIT", "SCHEDULE",
           "Claim", "build_claim", "make_bundle", "unsealed"]


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
    goal = load_run_goal(run_dir)
    _check_sealed(goal, run_dir)
    index = records.index(record)
    behind = ranking.reference_records(records[:index], goal.spec.metric.goal)
    if not behind:
        raise RunError(f"experiment {exp} of {run_dir.name} has no measured baseline before it "
                       "in the run's records; it cannot be claimed")
    # the parent's own runs first: a verifier stops at the first that is off
    behind.sort(key=lambda r: r.get("commit") != record["parent"])
    before_runs, schedules = _before_runs(run_dir, behind)
    _check_parent_code(run_dir, record["parent"], before_runs)
    goal_text = (run_dir / GOAL_COPY).read_bytes()
    bundle = make_bundle(run_dir, exp, record["commit"])
    artifacts = {BUNDLE: bundle, GOAL_FILE: goal_text}
    if replay.get("schedule_sha256"):
        artifacts[SCHEDULE] = _schedule(run_dir, exp, 0, replay["schedule_sha256"])
    if schedules:
        artifacts[BEFORE_SCHEDULES] = json.dumps(schedules, sort_keys=True).encode()
    if goal.spec.init is not None:  # the same bytes the run started every experiment from
        artifacts[INIT] = pack_init(run_dir)
    values = [run["value"] for run in before_runs]
    tests = [run["test"] for run in before_runs]
    after_test = _test_value(record, 0)
    body = {
        "goal": goal.spec.name,  # the file itself is the goal_file artifact
        "run": run_dir.name, "exp": exp, "commit": record["commit"], "parent": record["parent"],
        "hypothesis": record.get("hypothesis", ""),
        # before: the keep rule's reference, the mean of the runs behind it
        "metric": {"name": record["metric_name"], "goal": goal.spec.metric.goal,
                   "before": statistics.fmean(values), "after": record["runs"][0]},
        # the held-out test split's before and after, of the same runs (None: not recorded)
        "test": ({"before": statistics.fmean(tests), "after": after_test}  # type: ignore[arg-type]
                 if after_test is not None and None not in tests else None),
        "before_runs": before_runs,
        "replay": replay,
        **{name: sha256_hex(data) for name, data in artifacts.items()}, "stake": stake,
    }
    return Claim(body, artifacts)


def unsealed(goal: Any) -> str | None:
    """Why a goal's corpus cannot be claimed (its runs could read the bytes they are scored on),
    naming a sealed corpus to use instead, in one line; None when it can (or has no corpus)."""
    from bitnet.data import unsealed_reason

    spec = corpus_of(goal)
    reason = unsealed_reason(spec) if spec is not None else ""
    return f"its runs could read the bytes they were scored on: {reason}" if reason else None


def _check_sealed(goal: Any, run_dir: Path) -> None:
    """Refused at claim time, as a verifier would refuse to replay it (agent.claims.replay)."""
    if why := unsealed(goal):
        raise RunError(f"{run_dir.name} cannot be claimed: {why}")


def _test_value(record: ranking.Record, run: int) -> float | None:
    """The held-out test score of the record's run `run`, None when the record does not say:
    it holds the mean over its runs (agent.rundir.experiment_record), one run's only when it
    has one run (a claim on a confirmed experiment, or against one, carries no test scores)."""
    from agent.rundir.experiment_record import TEST_KEY

    value = record.get(TEST_KEY)
    one = run == 0 and len(record.get("runs") or []) == 1
    return float(value) if one and ranking.is_finite(value) else None


def _before_runs(run_dir: Path, behind: list[ranking.Record]
                 ) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Every run of the records in `behind` as a claim states it, and the schedules they
    followed (by sha256); RunError when one cannot be replayed."""
    runs, schedules = [], {}
    for record in behind:
        facts_of = record.get("replays") or [record.get("replay")]
        for i, value in enumerate(record.get("runs") or []):
            facts = facts_of[i] if i < len(facts_of) else None
            if not facts or not ranking.is_finite(value) or not record.get("commit"):
                raise RunError(f"run {i + 1} of experiment {record.get('exp')} of {run_dir.name}"
                               " (behind the claim's before) was recorded without replay facts;"
                               " claim from a run made by this version of magnet-agent")
            if facts.get("schedule_sha256"):
                sha = facts["schedule_sha256"]
                schedules[sha] = _find_schedule(run_dir, record["exp"], sha).decode()
            runs.append({"exp": record["exp"], "commit": record["commit"],
                         "seed": facts["seed"], "value": value,
                         "test": _test_value(record, i), "replay": facts})
    return runs, schedules


def _find_schedule(run_dir: Path, exp: int, sha256: str) -> bytes:
    """The schedule with this sha256 among experiment `exp`'s runs (a second baseline run is the
    first run of its record but wrote into the repeat's directory)."""
    for repeat in range(1, MAX_REPEATS):
        data = _read_schedule(run_dir, exp, repeat)
        if sha256_hex(data) == sha256:
            return data
    return _schedule(run_dir, exp, 0, sha256)  # raises, naming what is missing


def _read_schedule(run_dir: Path, exp: int, repeat: int) -> bytes:
    """A run's schedule as a regular file of the right shape (sandbox.untrusted), never what a
    symlink there points at; b"" when there is none."""
    out = output_dir(run_dir, exp, repeat)
    try:
        data, _ = read_schedule(out, SCHEDULE_FILE, MAX_SCHEDULE)
    except MissingFileError:
        return b""
    except UntrustedFileError as err:
        raise RunError(f"the schedule is refused: {err}; claim from an untouched run") from None
    return data


def _schedule(run_dir: Path, exp: int, repeat: int, sha256: str) -> bytes:
    """The schedule the experiment's run `repeat` followed, as its record fixed it."""
    path = output_dir(run_dir, exp, repeat) / SCHEDULE_FILE
    data = _read_schedule(run_dir, exp, repeat)
    if sha256_hex(data) != sha256:
        raise RunError(f"{path} is missing or changed since the run (its record says sha256 "
                       f"{sha256[:12]}); claim from an untouched run")
    return data


def _check_parent_code(run_dir: Path, parent: str, before_runs: list[dict[str, Any]]) -> None:
    """The before runs measured the parent's code (the rule a verifier checks)."""
    git = Git(git_dir(run_dir))
    try:
        want = git.run("rev-parse", f"{parent}^{{tree}}")
        other = [run for run in before_runs
                 if git.run("rev-parse", f"{run['commit']}^{{tree}}") != want]
    except GitError as err:
        raise RunError(f"cannot read the commits of {run_dir.name}: {err}") from None
    if other:
        raise RunError(f"the keep rule compared this experiment with experiment "
                       f"{other[0]['exp']}, whose code is not its parent's (a simpler change was "
                       "kept between them), so no replay of the parent checks its before; claim "
                       "an experiment kept against its parent's code")


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
