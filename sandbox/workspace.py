"""A run's git workspace: experiments as commits, notes, refs and a crash-safe journal.

Layout of `runs/<run-id>/` (see sandbox/layout.py): `workspace/` (the work tree, branch
`magnet/<run-id>`), `workspace.git/` (its git directory, kept out of the tree experiments write),
`sandbox.json` (journal), `sandbox.lock`, `logs/exp-NNN.log`, `outputs/exp-NNN/`.

Every step of an experiment is first written to the journal; `recover()` (run by `open()`)
reads it and brings the repository back to the last kept commit, preserving whatever the
unfinished experiment did under `refs/magnet/exp/NNN`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import re
import shutil
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sandbox.confine import Confinement
from sandbox.confine import confinement as default_confinement
from sandbox.edits import Edit, apply_edits
from sandbox.env import PASSED_THROUGH, run_environ
from sandbox.errors import WorkspaceError
from sandbox.gitcli import IDENTITY_EMAIL, IDENTITY_NAME, Git, run_git
from sandbox.journal import Journal
from sandbox.knobs import parse_knobs
from sandbox.layout import (
    BASELINE_TAG,
    BEST_TAG,
    JOURNAL_FILE,
    LOCK_FILE,
    NOTES_REF,
    eval_log_path,
    exp_ref,
    git_dir,
    legacy_git_dir,
    log_path,
    output_dir,
    workspace_dir,
)
from sandbox.paths import is_editable
from sandbox.reader import legacy_layout, read_diff, read_note
from sandbox.runner import (
    DEFAULT_LOG_LIMIT,
    LineCallback,
    RunLimits,
    RunResult,
    kill_by_env,
    kill_group,
    run_command,
)
from sandbox.templates import copy_template

KEPT_STATUSES = ("keep", "baseline")  # statuses of experiments that stay on the branch
MAX_REPEATS = 2  # runs of one experiment: the first, and one confirmation with another seed
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_EXCLUDE = "__pycache__/\n*.pyc\n.pytest_cache/\n"
_HALF_MADE = (
    "{run_dir} has a workspace/ but no journal: its creation was interrupted; delete {run_dir} "
    "and create the run again"
)


@dataclass(frozen=True)
class Recovery:
    """What `recover()` found and did about an experiment a crash left unfinished."""

    exp: int
    hypothesis: str
    step: str  # the step it stopped in: editing, committing, committed, running, ran, ...
    status: str  # `interrupted`, or the keep/discard status whose completion it finished
    commit: str | None  # the preserved commit (at `ref`), None if nothing was left to keep
    ref: str | None
    killed_run: bool  # an orphaned training process group was still running and was killed


class Workspace:
    """One run's sandbox. Create with `Workspace.create`, reopen with `Workspace.open`."""

    def __init__(self, run_dir: Path, journal: Journal, lock_fd: int) -> None:
        self.run_dir = run_dir
        self.path = workspace_dir(run_dir)
        self.git = Git(git_dir(run_dir), self.path)
        self.journal = journal
        self._lock_fd: int | None = lock_fd
        self.recovered: Recovery | None = None

    # --- creating and opening -------------------------------------------------------------

    @classmethod
    def create(
        cls,
        run_dir: Path | str,
        *,
        template: str | Path | None = None,
        repo: Path | str | None = None,
        editable: Sequence[str] = (),
        knobs: Mapping[str, Any] | None = None,
        goal: str = "minimize",
    ) -> Workspace:
        """Make `run_dir/workspace` (with its git directory `run_dir/workspace.git`) from a
        template (name or directory) or a clone of `repo`.

        The run id is `run_dir`'s name; the branch is `magnet/<run-id>`. The user's repository
        is only read: the clone copies its objects and drops the remote, so nothing is pushed.
        """
        run_dir = Path(run_dir).absolute()
        run_id = run_dir.name
        if not _RUN_ID.match(run_id) or ".." in run_id or run_id.endswith((".lock", ".")):
            raise WorkspaceError(
                f"run id {run_id!r} is not usable as a git branch name; use letters, digits, . _ -"
            )
        if (template is None) == (repo is None):
            raise WorkspaceError("give exactly one of template= or repo= to create a workspace")
        if goal not in ("minimize", "maximize"):
            raise WorkspaceError(f"goal must be minimize or maximize, not {goal!r}")
        parse_knobs(knobs)  # refuse a bad knob spec before anything is created
        ws_path, gd = workspace_dir(run_dir), git_dir(run_dir)
        if (run_dir / JOURNAL_FILE).exists():
            raise WorkspaceError(
                f"{run_dir} already holds a workspace; reopen it with Workspace.open or pick "
                "another run id"
            )
        if ws_path.exists() or gd.exists():
            raise WorkspaceError(_HALF_MADE.format(run_dir=run_dir))
        run_dir.mkdir(parents=True, exist_ok=True)
        lock_fd = _lock(run_dir)
        branch = f"magnet/{run_id}"
        git = Git(gd, ws_path)
        try:
            if template is not None:
                src = copy_template(template, ws_path)
                source = f"template {template if isinstance(template, str) else src}"
                git.run("init", "-q", "-b", branch)
                _configure(git)
                git.run("add", "-A")
                git.commit(f"baseline: {source}")
            else:
                source = _clone(Path(repo).expanduser().absolute(), git, branch)  # type: ignore[arg-type]
                _configure(git)
            baseline = git.head()
            git.run("tag", "-f", BASELINE_TAG, baseline)
            _check_editable(git, editable)
        except BaseException:
            os.close(lock_fd)
            shutil.rmtree(ws_path, ignore_errors=True)
            shutil.rmtree(gd, ignore_errors=True)
            raise
        journal = Journal(
            run_dir / JOURNAL_FILE,
            {
                "version": 1,
                "run_id": run_id,
                "branch": branch,
                "source": source,
                "baseline": baseline,
                "kept": baseline,
                "best": None,
                "goal": goal,
                "editable": list(editable),
                "knobs": dict(knobs or {}),
                "next_exp": 0,
                "current": None,
                "history": [],
            },
        )
        journal.save()  # written last: a workspace without a journal was never created
        return cls(run_dir, journal, lock_fd)

    @classmethod
    def open(cls, run_dir: Path | str) -> Workspace:
        """Reopen a workspace and bring it to a consistent state (see `recover()`); a run made
        before the git directory moved out of the work tree has it moved first."""
        run_dir = Path(run_dir).absolute()
        jpath = run_dir / JOURNAL_FILE
        if not jpath.exists() and (workspace_dir(run_dir).exists() or git_dir(run_dir).exists()):
            raise WorkspaceError(_HALF_MADE.format(run_dir=run_dir))
        if not jpath.exists() or not (git_dir(run_dir).is_dir() or legacy_layout(run_dir)):
            raise WorkspaceError(
                f"{run_dir} holds no sandbox workspace (no {JOURNAL_FILE}); create one first"
            )
        lock_fd = _lock(run_dir)
        try:
            if legacy_layout(run_dir):
                os.rename(legacy_git_dir(run_dir), git_dir(run_dir))
            ws = cls(run_dir, Journal.load(jpath), lock_fd)
            _point_at_work_tree(ws.git)  # also after a crash between the move and this
            ws.recovered = ws.recover()
        except BaseException:
            os.close(lock_fd)
            raise
        return ws

    def close(self) -> None:
        """Release the lock so another process may open the workspace."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> Workspace:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- state ----------------------------------------------------------------------------

    @property
    def run_id(self) -> str:
        return self.journal["run_id"]

    @property
    def branch(self) -> str:
        return self.journal["branch"]

    @property
    def editable(self) -> list[str]:
        return self.journal["editable"]

    @property
    def knobs(self) -> dict[str, Any]:
        return self.journal["knobs"]

    @property
    def kept(self) -> str:
        """The last kept commit (the baseline until something is kept)."""
        return self.journal["kept"]

    @property
    def best(self) -> dict[str, Any] | None:
        """{exp, commit, metric} of the best kept experiment, or None."""
        return self.journal["best"]

    @property
    def current(self) -> dict[str, Any] | None:
        """The unfinished experiment's journal entry, or None."""
        return self.journal["current"]

    @property
    def next_exp(self) -> int:
        return self.journal["next_exp"]

    @property
    def history(self) -> list[dict[str, Any]]:
        """One entry per finished experiment: exp, status, commit, base, metric."""
        return self.journal["history"]

    def log_path(self, exp: int, repeat: int = 0) -> Path:
        """Experiment `exp`'s log; a repeat run (another seed, to confirm) has its own."""
        return log_path(self.run_dir, exp, repeat)

    def output_dir(self, exp: int, repeat: int = 0) -> Path:
        return output_dir(self.run_dir, exp, repeat)

    # --- one experiment -------------------------------------------------------------------

    def begin(self, exp: int, hypothesis: str) -> None:
        """Start experiment `exp` (numbers only go up) from the last kept commit."""
        self._need_open()
        cur = self.current
        if cur is not None:
            raise WorkspaceError(
                f"experiment {cur['exp']} is unfinished; keep() or discard() it before {exp}"
            )
        if not isinstance(exp, int) or exp < self.next_exp:
            raise WorkspaceError(
                f"experiment number {exp!r} is used or invalid; the next free one is "
                f"{self.next_exp}"
            )
        if not hypothesis.strip():
            raise WorkspaceError("an experiment needs a hypothesis; say what it tests")
        self.journal["current"] = {
            "exp": exp,
            "hypothesis": hypothesis.strip(),
            "step": "editing",
            "base": self.kept,
            "changed": [],
            "commit": None,
        }
        self.journal["next_exp"] = exp + 1
        self.journal.save()

    def apply(self, edits: Iterable[Edit | Mapping[str, Any]]) -> list[str]:
        """Apply edits to editable files (all or nothing); returns the changed paths."""
        cur = self._cur("apply edits to")
        if cur["step"] != "editing":
            raise WorkspaceError(
                f"experiment {cur['exp']} is already committed; begin a new one to edit again"
            )
        changed = apply_edits(self.path, edits, self.editable, self.knobs)
        # Not journaled: recovery stages every tracked change itself (`git add -u`).
        cur["changed"] = sorted(set(cur["changed"]) | set(changed))
        return changed

    def retitle(self, hypothesis: str) -> None:
        """Change the unfinished experiment's hypothesis (e.g. a person edited it) before the
        commit that carries it as its message."""
        cur = self._cur("retitle")
        if cur["step"] != "editing":
            raise WorkspaceError(
                f"experiment {cur['exp']} is already committed; retitle it before commit()"
            )
        if not hypothesis.strip():
            raise WorkspaceError("an experiment needs a hypothesis; say what it tests")
        cur["hypothesis"] = hypothesis.strip()
        self.journal.save()

    def commit(self) -> str:
        """Commit the experiment's edits as `exp NNN: <hypothesis>`; returns the commit id."""
        cur = self._cur("commit")
        if cur["step"] != "editing":
            return cur["commit"]
        # Not journaled: after a crash here HEAD itself tells whether the commit happened.
        sha = self.git.commit(_message(cur["exp"], cur["hypothesis"]), cur["changed"])
        self.git.run("update-ref", exp_ref(cur["exp"]), sha)
        cur.update(step="committed", commit=sha)
        return sha

    def run(
        self,
        command: str,
        *,
        time_budget: float,
        seed: int = 0,
        steps: int | None = None,
        grace: float = 60.0,
        term_grace: float = 5.0,
        mem_limit: int | None = None,
        metric: str | None = None,
        on_line: LineCallback | None = None,
        env: Mapping[str, str] | None = None,
        threads: int | None = None,
        repeat: int = 0,
        confinement: Confinement | None = None,
        log_limit: int = DEFAULT_LOG_LIMIT,
        passed_env: Sequence[str] = (),
    ) -> RunResult:
        """Run `command` on the committed experiment (committing first if needed); `repeat` > 0
        runs it again (say with another seed) into its own log and output directory.

        Under `confinement` (default: bubblewrap, or ConfinementUnavailable) it may write only
        the workspace's files and its output directory; `passed_env` names variables of this
        process's environment it may also see (a goal's `env:`)."""
        cur = self._cur("run")
        if cur["step"] == "editing":
            self.commit()
        if cur["step"] not in ("committed", "running", "ran"):
            raise WorkspaceError(f"experiment {cur['exp']} is {cur['step']}; it cannot run now")
        exp = cur["exp"]
        out_dir = self.output_dir(exp, repeat)
        out_dir.mkdir(parents=True, exist_ok=True)
        self.log_path(exp, repeat).parent.mkdir(parents=True, exist_ok=True)
        (out_dir / "metrics.json").unlink(missing_ok=True)  # a rerun must not read stale metrics

        def started(pid: int) -> None:
            # Durable before the run goes on: a new controller can then kill an orphaned run.
            cur.update(step="running", pid=pid)
            self.journal.save()

        run_env = run_environ(time_budget=time_budget, seed=seed, output_dir=out_dir,
                              steps=steps, threads=threads, extra=env, passed=passed_env)
        confinement = (confinement or default_confinement()).with_paths(
            writable=[self.path, out_dir],
            readable=[run_env[k] for k in PASSED_THROUGH if k in run_env])
        result = run_command(
            command,
            self.path,
            env=run_env,
            limits=RunLimits(time_budget, grace, term_grace, mem_limit, log_limit=log_limit),
            confinement=confinement,
            log_path=self.log_path(exp, repeat),
            output_dir=out_dir,
            metric=metric,
            on_line=on_line,
            on_start=started,
        )
        cur.update(
            step="ran", pid=None, result={"status": result.status, "metrics": result.metrics}
        )
        self.journal.save()
        return result

    def evaluate(
        self,
        command: str,
        *,
        timeout: float,
        repeat: int = 0,
        confinement: Confinement | None = None,
        env: Mapping[str, str] | None = None,
        passed_env: Sequence[str] = (),
        log_limit: int = DEFAULT_LOG_LIMIT,
    ) -> RunResult:
        """Run the goal's evaluation of the experiment's run `repeat`: after training, with
        nothing writable (the workspace and the run's outputs read-only), into its own log.
        Its METRIC lines are the score; the experiment cannot have edited the command."""
        cur = self._cur("evaluate")
        exp = cur["exp"]
        out_dir = self.output_dir(exp, repeat)
        run_env = run_environ(time_budget=timeout, seed=0, output_dir=out_dir, extra=env,
                              passed=passed_env)
        confinement = (confinement or default_confinement()).with_paths(
            readable=[self.path, out_dir, *(run_env[k] for k in PASSED_THROUGH if k in run_env)])
        return run_command(
            command,
            self.path,
            env=run_env,
            limits=RunLimits(timeout, grace=0.0, log_limit=log_limit),
            confinement=confinement,
            log_path=eval_log_path(self.run_dir, exp, repeat),
        )

    def keep(self, exp: int, record: Mapping[str, Any], *, best: bool | None = None,
             status: str = "keep") -> bool:
        """Keep experiment `exp` on the branch with `record` as its note (`status` names how it
        was kept: `keep`, or `baseline` for a measurement of the unmodified code).

        Moves tag magnet/best when `best` is True, or (when None) when record["metric"] beats
        the best kept metric in the goal's direction. Returns whether it became the best.
        """
        cur = self._cur("keep", exp)
        if cur["step"] == "editing":
            self.commit()
        if cur["step"] not in ("committed", "ran"):
            raise WorkspaceError(f"experiment {exp} is {cur['step']}; it cannot be kept now")
        metric = record.get("metric")
        is_best = self._better(metric) if best is None else bool(best)
        if status not in KEPT_STATUSES:
            raise WorkspaceError(f"keep status {status!r} is invalid; use one of "
                                 f"{', '.join(KEPT_STATUSES)}")
        cur.update(step="keeping", note=self._note(cur, record, status), is_best=is_best)
        self.journal.save()
        self._finish_keep(cur)
        return is_best

    def discard(self, exp: int, record: Mapping[str, Any], status: str = "discard") -> str:
        """Reset experiment `exp` away (status e.g. discard, crash, timeout); its commit stays at
        refs/magnet/exp/NNN with `record` as its note. Returns that commit id."""
        cur = self._cur("discard", exp)
        if not status or status in KEPT_STATUSES:
            raise WorkspaceError(f"discard status {status!r} is invalid; use keep() to keep")
        cur.update(step="discarding", note=self._note(cur, record, status))
        self.journal.save()
        return self._finish_discard(cur)

    # --- reading the history --------------------------------------------------------------

    def record(self, exp: int) -> dict[str, Any] | None:
        """The JSON note of experiment `exp`, or None."""
        return read_note(self.git, exp)

    def diff(self, exp: int) -> str:
        """What experiment `exp` changed, relative to the commit it started from."""
        return read_diff(self.git, self.history, exp)

    # --- crash recovery -------------------------------------------------------------------

    def recover(self) -> Recovery | None:
        """Bring the workspace to a consistent state after a crash at any moment.

        Kills an orphaned run, clears stale git locks, then finishes a keep/discard whose
        decision was already journaled, or else preserves the unfinished experiment (its commit
        plus any uncommitted edits) at refs/magnet/exp/NNN, notes it as `interrupted` and
        checks out the last kept commit. Returns None when there was nothing to do.
        """
        self._need_open()
        cur = self.current
        killed = False
        if cur is not None:
            # An orphaned run would go on writing into the workspace: stop it first.
            killed = bool(cur.get("pid")) and kill_group(int(cur["pid"]))
            for repeat in range(MAX_REPEATS):
                out_dir = str(self.output_dir(cur["exp"], repeat))
                killed = kill_by_env("MAGNET_OUTPUT_DIR", out_dir) > 0 or killed
        self._clear_git_locks()
        if cur is None:
            self._tidy()
            return None
        step = cur["step"]
        if step == "keeping":
            self._finish_keep(cur)
        elif step == "discarding":
            self._finish_discard(cur)
        else:
            record = {"step": step, "reason": "the controller stopped during this experiment"}
            cur.update(step="discarding", note=self._note(cur, record, "interrupted"))
            self.journal.save()
            self._finish_discard(cur)
        entry = self.history[-1]
        return Recovery(
            exp=cur["exp"],
            hypothesis=cur["hypothesis"],
            step=step,
            status=entry["status"],
            commit=entry["commit"],
            ref=exp_ref(cur["exp"]) if entry["commit"] else None,
            killed_run=killed,
        )

    # --- internals ------------------------------------------------------------------------

    def _need_open(self) -> None:
        if self._lock_fd is None:
            raise WorkspaceError("workspace is closed; reopen it with Workspace.open")

    def _cur(self, action: str, exp: int | None = None) -> dict[str, Any]:
        self._need_open()
        cur = self.current
        if cur is None:
            raise WorkspaceError(f"no experiment to {action}; call begin() first")
        if exp is not None and cur["exp"] != exp:
            raise WorkspaceError(
                f"cannot {action} experiment {exp}: the current experiment is {cur['exp']}"
            )
        return cur

    def _note(self, cur: dict[str, Any], record: Mapping[str, Any], status: str) -> dict[str, Any]:
        note: dict[str, Any] = {"exp": cur["exp"], "hypothesis": cur["hypothesis"]}
        note.update(record)
        note.update(exp=cur["exp"], status=status)  # the record cannot relabel the experiment
        json.dumps(note)  # fail here, before anything moves, if the record is not JSON
        return note

    def _better(self, metric: Any) -> bool:
        if not isinstance(metric, int | float) or isinstance(metric, bool):
            return False
        if not math.isfinite(metric):
            return False
        best = self.best
        if best is None or best.get("metric") is None:
            return True
        if self.journal["goal"] == "maximize":
            return metric > best["metric"]
        return metric < best["metric"]

    def _write_note(self, sha: str, note: Mapping[str, Any]) -> None:
        self.git.run("notes", "--ref", NOTES_REF, "add", "-f", "-m", json.dumps(note), sha)

    def _finish_keep(self, cur: dict[str, Any]) -> None:
        """Idempotent second half of keep(): note, tag, clean tree, journal."""
        sha, exp = cur["commit"], cur["exp"]
        dirty = self.git.dirty()
        if dirty:  # the run wrote to tracked files: keep that too, off the branch
            stash = self.git.run("stash", "create", f"exp {exp:03d}: left by the run")
            if stash:
                self.git.run("update-ref", f"refs/magnet/leftover/{exp:03d}", stash)
        self._write_note(sha, cur["note"])
        if cur["is_best"]:
            self.git.run("tag", "-f", BEST_TAG, sha)
        if dirty or self.git.head() != sha:
            self.git.run("checkout", "-q", "-f", "-B", self.branch, sha)
        self.journal["kept"] = sha
        if cur["is_best"]:
            self.journal["best"] = {"exp": exp, "commit": sha, "metric": cur["note"].get("metric")}
        self._close_experiment(cur, sha)

    def _finish_discard(self, cur: dict[str, Any]) -> str:
        """Idempotent second half of discard(): preserve, note, reset, journal."""
        exp, ref = cur["exp"], exp_ref(cur["exp"])
        head, kept = self.git.head(), self.kept
        preserved = self.git.rev(ref) if head == kept else None
        if preserved:
            # The ref is only ever set while HEAD is ahead of `kept`; with HEAD back at `kept`
            # the experiment was already preserved and reset before the crash.
            top = preserved
        else:
            top = head if head != kept else None
            if top is None or self.git.dirty():
                self.git.run("add", "-u")
                why = (
                    "interrupted" if cur["note"]["status"] == "interrupted" else "left uncommitted"
                )
                msg = (
                    _message(exp, cur["hypothesis"])
                    if top is None
                    else f"exp {exp:03d}: changes {why}"
                )
                top = self.git.commit(msg)
            self.git.run("update-ref", ref, top)
        assert top is not None
        self._write_note(top, cur["note"])
        self.git.run("checkout", "-q", "-f", "-B", self.branch, kept)
        self._close_experiment(cur, top)
        return top

    def _close_experiment(self, cur: dict[str, Any], sha: str) -> None:
        _drop_planted_git(self.path)
        note = cur["note"]
        self.history.append(
            {
                "exp": cur["exp"],
                "status": note["status"],
                "commit": sha,
                "base": cur["base"],
                "metric": note.get("metric"),
            }
        )
        self.journal["current"] = None
        self.journal.save()

    def _tidy(self) -> None:
        """No experiment in flight: HEAD must be the kept commit on the branch, tree clean.

        Anything else (e.g. hand edits) is preserved under refs/magnet/recovered/ first.
        """
        on_branch = self.git.run("symbolic-ref", "-q", "HEAD", check=False)
        head, kept = self.git.head(), self.kept
        dirty = self.git.dirty()
        if on_branch == f"refs/heads/{self.branch}" and head == kept and not dirty:
            return
        if dirty or head != kept:
            stash = self.git.run("stash", "create", "found at recovery") if dirty else ""
            ref = f"refs/magnet/recovered/{time.strftime('%Y%m%d-%H%M%S')}"
            self.git.run("update-ref", ref, stash or head)
        self.git.run("checkout", "-q", "-f", "-B", self.branch, kept)

    def _clear_git_locks(self) -> None:
        """A killed git leaves *.lock files; we hold the workspace lock, so they are stale."""
        gitdir = self.git.git_dir
        candidates = [
            gitdir / n
            for n in (
                "index.lock",
                "HEAD.lock",
                "packed-refs.lock",
                "config.lock",
                "ORIG_HEAD.lock",
            )
        ]
        candidates += list((gitdir / "refs").rglob("*.lock"))
        for lock in candidates:
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()


def _lock(run_dir: Path) -> int:
    """Exclusive lock on the run: one controller at a time. The kernel drops it when the
    process dies, so a crash never leaves a stale lock."""
    fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise WorkspaceError(
            f"{run_dir} is in use by another MAGNET process; stop it or wait for it to finish"
        ) from None
    return fd


def _point_at_work_tree(git: Git) -> None:
    """core.worktree (relative: the run directory may move), so that plain git given the git
    directory finds the work tree. MAGNET passes both itself; written only when it differs."""
    assert git.work_tree is not None
    rel = os.path.relpath(git.work_tree, git.git_dir)
    if git.run("config", "--get", "core.worktree", check=False) != rel:
        git.run("config", "core.bare", "false")
        git.run("config", "core.worktree", rel)


def _drop_planted_git(work_tree: Path) -> None:
    """A `.git` the experiment left in the work tree: MAGNET's git never reads it (it is told
    its git directory), but a person running git in the work tree would, with whatever filters
    or fsmonitor it names."""
    planted = work_tree / ".git"
    if planted.is_dir() and not planted.is_symlink():
        shutil.rmtree(planted, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            planted.unlink()


def _configure(git: Git) -> None:
    """The repository's config, which only MAGNET writes: the work tree, and identity so plain
    `git commit` by a person works there too. (With the git directory out of the experiment's
    reach, no filter, diff driver or hook can be defined in it.)"""
    _point_at_work_tree(git)
    git.run("config", "user.name", IDENTITY_NAME)
    git.run("config", "user.email", IDENTITY_EMAIL)
    exclude = git.git_dir / "info" / "exclude"
    exclude.parent.mkdir(parents=True, exist_ok=True)
    with exclude.open("a", encoding="utf-8") as f:
        f.write(_EXCLUDE)


def _clone(src: Path, git: Git, branch: str) -> str:
    """Clone the user's repository `src` into `git`'s git directory and work tree."""
    if not src.is_dir() or Git(src / ".git", src).rev("HEAD") is None:
        raise WorkspaceError(
            f"{src} is not a git repository with a commit; commit your code there first or use "
            "a template"
        )
    assert git.work_tree is not None
    # --no-hardlinks: the clone shares no files with the user's repository. Git leaves a `.git`
    # file in the work tree pointing at --separate-git-dir; it goes, as git is always told
    # where its git directory is. The file protocol is allowed for this one call.
    clone = ["clone", "-q", "--no-hardlinks", "--no-checkout", f"--separate-git-dir={git.git_dir}"]
    run_git(["-c", "protocol.file.allow=always", *clone, str(src), str(git.work_tree)], cwd=src)
    (git.work_tree / ".git").unlink()
    git.run("checkout", "-q", "-f", "-B", branch)
    git.run("remote", "remove", "origin")  # nothing can ever be pushed back
    return f"clone of {src} at {git.head()[:12]}"


def _check_editable(git: Git, editable: Sequence[str]) -> None:
    """Each editable entry must name a tracked file: an experiment commit can only hold those."""
    root = git.work_tree
    assert root is not None
    tracked = git.run("ls-files", "-z").split("\0")
    for pattern in editable:
        if not any(is_editable(f, [pattern]) for f in tracked):
            where = "is not tracked by git" if (root / pattern).exists() else "does not exist"
            raise WorkspaceError(
                f"editable file {pattern!r} {where} in the workspace; fix `editable:`"
                + (" or commit it in your repository" if "tracked" in where else "")
            )


def _message(exp: int, hypothesis: str) -> str:
    """`exp 007: <first line>`; a longer hypothesis goes in the body."""
    first = hypothesis.splitlines()[0].strip()
    subject = first if len(first) <= 100 else first[:99] + "…"
    body = hypothesis if subject != hypothesis else ""
    return f"exp {exp:03d}: {subject}" + (f"\n\n{body}" if body else "")
