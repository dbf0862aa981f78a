"""Re-run a ledger claim in a fresh sandbox and judge it: the verifier's side of a claim.

The claim's bundle is unbundled into a new git repository, checked to hold the claimed commit
as a child of the claimed parent, and run as an experiment is (scoring.scorer: confined, scored
by the template's evaluator) with the claim's seed, steps, threads and the schedule the run
followed, step by step. Then the runs behind its "before" (the keep rule's reference) are
replayed the same way, in the same workspace (and fork servers) checked out at the parent and
cleaned as a fresh one would be: each must be of the parent's code (its git tree) and the parent
among them, with distinct seeds, and the stated before must be their mean.
agent.claims.verdict judges the numbers; a claim is false when a replay is off, fails, or when
what the claim carries (goal file, commit ids, bundle, before runs) cannot be replayed at all. A
claim whose claimed run is already off is judged without replaying its before runs.

Refused before anything runs (no verdict, so nobody is slashed for the verifier's machine): a
corpus whose bytes differ here, a tokenizer that trains differently here (another `tokenizers`
release) or that the commit does not declare, an unsealed corpus, another torch version, a
claim that starts from a checkpoint it does not carry, a claim made before claims carried their
before runs.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from agent.claims.claim import BEFORE_SCHEDULES, BUNDLE, GOAL_FILE, INIT, SCHEDULE, unsealed
from agent.claims.replay_cache import ReplayCache
from agent.claims.verdict import TOLERANCE, Verdict, failed, judge
from agent.goal.spec import Goal, GoalError, load_goal
from agent.rundir.experiment_record import TEST_KEY
from agent.rundir.init_checkpoint import init_dir, unpack_init
from agent.rundir.names import GOAL_COPY
from agent.rundir.runs import RunError
from agent.scoring.replay_facts import SCHEDULE_FILE, torch_version
from agent.scoring.scorer import Scorer, corpus_of
from ledger.canonical import sha256_hex
from sandbox.confine import Confinement
from sandbox.gitcli import Git, GitError, run_git
from sandbox.layout import LOGS_DIR, OUTPUTS_DIR
from sandbox.removal import remove_path
from sandbox.warm import STAGING_PREFIX
from sandbox.workspace import Workspace

__all__ = ["TOLERANCE", "MalformedClaim", "ReplayRefused", "Verdict", "replay_claim"]

COMMIT_ID = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")  # sha-1 or sha-256 repositories
BUDGET_FACTOR = 4  # a replay trains fixed steps; it may take this much longer than the claim
MAX_BEFORE_RUNS = 4  # a baseline's two runs, or a confirmed best's two: room to spare
MEAN_SLACK = 1e-9  # relative: the stated before is the mean of its runs' values, to rounding


class ReplayRefused(RunError):
    """This machine cannot replay the claim faithfully; no verdict is given."""


class MalformedClaim(RunError):
    """What the claim carries cannot be replayed at all: the claimant's fault, judged false."""


def replay_claim(body: Mapping[str, Any], artifacts: Mapping[str, bytes],
                 confinement: Confinement, *, work_dir: Path | None = None,
                 on_line: Callable[[str], None] | None = None,
                 cache: ReplayCache | None = None) -> Verdict:
    """Replay the claim `body` and judge it; `artifacts` are those it names (agent.claims.claim):
    the goal file, the bundle and, if the run recorded them, the schedules. With `cache`, a run
    this verifier already replayed is not replayed again (agent.claims.replay_cache)."""
    if not isinstance(body.get("before_runs"), list):
        raise ReplayRefused("the claim does not carry the runs behind its before (a claim made "
                            "before claims did), so its before cannot be checked; claim again "
                            "with this version of magnet-agent")
    _check_machine(body["replay"])
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="magnet-replay-", dir=work_dir) as tmp:
        root = Path(tmp)
        try:
            goal, source = _open_claim(body, artifacts, root)
            schedules = _before_schedules(body, artifacts)
        except MalformedClaim as err:
            return failed(body, str(err))
        for run in body["before_runs"]:
            _check_machine(run["replay"])
        if why := unsealed(goal):  # no verdict: the replay would show nothing
            raise ReplayRefused(f"the claim is not replayed: {why}")
        with _Replays.open(goal, source, root / "replay", artifacts, confinement, on_line,
                           cache) as replays:
            if replays is None:
                return failed(body, "its init checkpoint does not unpack")
            after = replays.replay(body["commit"], [(body["replay"], artifacts.get(SCHEDULE))])
            verdict = judge(body, after[0], None, test_key=TEST_KEY,
                            seconds=time.monotonic() - started)
            if verdict is None:  # the claimed run holds: now the runs behind its before
                runs = [(run["replay"],
                         schedules.get(run["replay"].get("schedule_sha256") or ""))
                        for run in body["before_runs"]]

                def judged(done: list[dict[str, Any]]) -> Verdict | None:
                    return judge(body, after[0], done, test_key=TEST_KEY,
                                 seconds=time.monotonic() - started)

                # stops at the first run that is off: its verdict is FALSE whatever the rest give
                verdict = judged(replays.replay(body["parent"], runs, stop=judged))
                assert verdict is not None  # every run replayed, or one was off
    return verdict


class _Replays:
    """The replays of one claim, in one workspace with one scorer (so one set of fork servers,
    whose imports cost seconds of CPU each): each commit is checked out in turn, as the research
    loop runs its experiments one after another in one workspace. Before the second, the
    workspace is brought back to what a fresh one at its commit would be: no file the first
    left in the tree, in the run's outputs, logs or init checkpoint. What a replay's runs see
    (confinement, environment, limits) is the goal's, the same for every commit."""

    def __init__(self, goal: Goal, ws: Workspace, scorer: Scorer,
                 artifacts: Mapping[str, bytes], confinement: Confinement,
                 on_line: Callable[[str], None] | None, cache: ReplayCache | None) -> None:
        self.goal, self.ws, self.scorer = goal, ws, scorer
        self.artifacts, self.confinement = artifacts, confinement
        self.on_line, self.cache = on_line, cache

    @classmethod
    @contextlib.contextmanager
    def open(cls, goal: Goal, source: Path, where: Path, artifacts: Mapping[str, bytes],
             confinement: Confinement, on_line: Callable[[str], None] | None,
             cache: ReplayCache | None) -> Iterator[_Replays | None]:
        """A fresh workspace cloned from `source` (at the claimed commit, its history with it);
        None when the claim's init checkpoint does not unpack."""
        spec = goal.spec
        with Workspace.create(where, repo=source, editable=spec.editable,
                              knobs=spec.knobs, goal=spec.metric.goal) as ws:
            if spec.init is not None:
                try:
                    unpack_init(artifacts[INIT], ws.run_dir)
                except ValueError:
                    yield None
                    return
            scorer = Scorer(goal, ws, confinement)
            try:
                yield cls(goal, ws, scorer, artifacts, confinement, on_line, cache)
            finally:
                scorer.close()  # the warm servers and fork servers

    def replay(self, commit: str, runs: list[tuple[Mapping[str, Any], bytes | None]],
               stop: Callable[[list[dict[str, Any]]], object] | None = None
               ) -> list[dict[str, Any]]:
        """Replay `runs` (replay facts, schedule bytes) of `commit` one after another (or take
        them from the cache), until `stop` (given the results so far) is truthy."""
        ws, scorer, spec = self.ws, self.scorer, self.goal.spec
        if ws.current is not None:  # a commit replayed before this one
            self._fresh(commit)
        if ws.git.head() != commit:
            raise RunError(f"the unbundled workspace is not at commit {commit[:12]}")
        for facts, _ in runs:
            _check_corpus(scorer, facts)
            _check_tokenizer(scorer, facts, self.on_line)
        scorer.prepare()
        ws.begin(ws.next_exp, f"replay of {commit[:12]}")
        results = []

        def run(repeat: int, facts: Mapping[str, Any], schedule_bytes: bytes | None
                ) -> dict[str, Any]:
            if ws.warm is None:  # a run to replay, not from the cache: warm starts, as in the loop
                scorer.head_start(mem_limit=scorer.mem_limit)
            schedule = None
            if schedule_bytes is not None:  # untracked, in the tree the run can read
                schedule = ws.path / f".magnet-{repeat}-{SCHEDULE_FILE}"
                schedule.write_bytes(schedule_bytes)
            # the goal's limits, not the claim's facts: a claim cannot buy itself more time
            return scorer.run(
                seed=int(facts["seed"]), repeat=repeat, replay=facts, on_line=self.on_line,
                schedule=schedule, time_budget=BUDGET_FACTOR * spec.budget.per_experiment,
                mem_limit=scorer.mem_limit)

        for repeat, (facts, schedule_bytes) in enumerate(runs):
            if self.cache is None:
                results.append(run(repeat, facts, schedule_bytes))
            else:
                key = self.cache.key(commit=commit, goal_file=self.artifacts[GOAL_FILE],
                                     facts=facts, schedule=schedule_bytes,
                                     init=self.artifacts.get(INIT),
                                     confined=self.confinement.enabled)
                with self.cache.held(key) as kept:
                    if kept is None:
                        kept = run(repeat, facts, schedule_bytes)
                        self.cache.put(key, kept)
                results.append(kept)
            if stop is not None and stop(results):
                break
        return results

    def _fresh(self, commit: str) -> None:
        """The workspace at `commit` as a fresh one would be: the replayed experiment closed,
        the tree checked out clean (nothing untracked or ignored left), the outputs and logs of
        its runs gone (but the warm process and servers waiting for the next run: they have run
        nothing yet), the init checkpoint unpacked again."""
        ws = self.ws
        assert ws.current is not None
        ws.discard(ws.current["exp"], {}, status="replayed")
        ws.git.run("checkout", "-q", "-f", "-B", ws.branch, commit)
        ws.git.run("clean", "-q", "-ffdx")
        for name in (OUTPUTS_DIR, LOGS_DIR):
            for path in (ws.run_dir / name).glob("*"):
                if not path.name.startswith(STAGING_PREFIX):
                    remove_path(path)
        if self.goal.spec.init is not None:  # refilled in place: the runs' views bind its folder
            target = init_dir(ws.run_dir)
            for path in target.iterdir():
                remove_path(path)
            with tempfile.TemporaryDirectory(dir=ws.run_dir) as scratch:
                for path in unpack_init(self.artifacts[INIT], Path(scratch)).iterdir():
                    path.rename(target / path.name)


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


def _check_tokenizer(scorer: Scorer, facts: Mapping[str, Any],
                     on_line: Callable[[str], None] | None) -> None:
    """The commit's tokenizer, trained here on the same corpus (first if need be), must be the
    one the claimed run trained with; a claim from before tokenizers used the byte tokenizer."""
    here = scorer.tokenizer(on_line)
    if here is None:  # a repository's goal: no tokenizer of MAGNET's
        return
    claimed = facts.get("tokenizer") or {"spec": "bytes", "sha256": None}
    if claimed.get("spec") != here.spec:
        raise ReplayRefused(f"the claimed run's facts name tokenizer {claimed.get('spec')}, but "
                            f"its commit's train.py declares {here.spec}: the claim does not "
                            "describe its own code")
    if claimed["sha256"] is not None and claimed["sha256"] != here.tokenizer.fingerprint:
        library = claimed.get("tokenizers")
        raise ReplayRefused(
            f"tokenizer {here.spec} trained here has fingerprint {here.tokenizer.fingerprint[:12]}"
            f", the claimed run's had {str(claimed['sha256'])[:12]}"
            + (f"; replay it where `pip install tokenizers=={library}` holds" if library else ""))


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
    _check_before_runs(body, Git(source / ".git", source))
    if goal.spec.init is not None and INIT not in artifacts:
        raise ReplayRefused("the claim's run starts from a checkpoint (`init:`) that the claim "
                            "does not carry (a claim made before claims carried it)")
    return goal, source


def _check_before_runs(body: Mapping[str, Any], git: Git) -> None:
    """The runs behind the claim's before measured its parent's code (the parent itself among
    them), with distinct seeds, and the stated before is their mean; MalformedClaim if not."""
    runs, metric = body["before_runs"], body["metric"]
    if not 0 < len(runs) <= MAX_BEFORE_RUNS:
        raise MalformedClaim(f"it names {len(runs)} runs behind its before; 1 to "
                             f"{MAX_BEFORE_RUNS} are replayed")
    for run in runs:
        if not isinstance(run, dict) or not isinstance(run.get("replay"), dict) or \
                not _finite(run.get("value")) or not isinstance(run.get("commit"), str) or \
                not COMMIT_ID.fullmatch(run["commit"]) or not isinstance(run.get("seed"), int):
            raise MalformedClaim(f"a run behind its before is not a commit id, seed, value and "
                                 f"replay facts: {str(run)[:80]!r}")
        if run["replay"].get("seed") != run["seed"]:
            raise MalformedClaim(f"a run behind its before names seed {run['seed']} but its "
                                 f"replay facts seed {run['replay'].get('seed')!r}")
    if len({run["seed"] for run in runs}) != len(runs):
        raise MalformedClaim("two runs behind its before share a seed (one run counted twice)")
    if body["parent"] not in {run["commit"] for run in runs}:
        raise MalformedClaim(f"its parent {body['parent'][:12]} is not among the runs behind "
                             "its before")
    try:
        tree = git.run("rev-parse", f"{body['parent']}^{{tree}}")
        for run in runs:
            git.run("merge-base", "--is-ancestor", run["commit"], body["commit"])
            if git.run("rev-parse", f"{run['commit']}^{{tree}}") != tree:
                raise MalformedClaim(f"the before run of commit {run['commit'][:12]} is not of "
                                     "its parent's code")
    except GitError:
        raise MalformedClaim("a run behind its before is of a commit that is not an ancestor "
                             "of the claimed one in its bundle") from None
    if not _finite(metric.get("before")) or not _finite(metric.get("after")):
        raise MalformedClaim("its before and after are not numbers")
    mean = statistics.fmean(float(run["value"]) for run in runs)
    if abs(mean - float(metric["before"])) > MEAN_SLACK * max(abs(mean), 1e-12):
        raise MalformedClaim(f"its before {metric['before']} is not the mean {mean} of the "
                             "runs behind it")
    test = body.get("test")
    if test is not None:
        tests = [run.get("test") for run in runs]
        if not isinstance(test, dict) or not all(map(_finite, [*tests, test.get("before"),
                                                               test.get("after")])):
            raise MalformedClaim("its test scores are not numbers for every run")
        if abs(statistics.fmean(tests) - float(test["before"])) > \
                MEAN_SLACK * max(abs(float(test["before"])), 1e-12):
            raise MalformedClaim(f"its test before {test['before']} is not the mean of the "
                                 "runs behind it")


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and \
        math.isfinite(value)


def _before_schedules(body: Mapping[str, Any], artifacts: Mapping[str, bytes]
                      ) -> dict[str, bytes]:
    """The schedules the before runs followed, by sha256, each checked against it."""
    wanted = {run["replay"].get("schedule_sha256") for run in body["before_runs"]} - {None}
    if not wanted:
        return {}
    try:
        texts = json.loads(artifacts[BEFORE_SCHEDULES])
        found = {sha: text.encode() for sha, text in texts.items()}
    except (KeyError, ValueError, AttributeError, TypeError):
        raise MalformedClaim("it does not carry the schedules its before runs followed") \
            from None
    for sha in wanted:
        if sha not in found or sha256_hex(found[sha]) != sha:
            raise MalformedClaim(f"its before schedules lack schedule {str(sha)[:12]}")
    return found


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
