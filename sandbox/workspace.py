"""A run's git workspace: experiments as commits, notes, refs and a crash-safe journal.

Layout of `runs/<run-id>/` (see sandbox/layout.py): `workspace/` (the work tree, branch
`magnet/<run-id>`), `workspace.git/` (its git directory, kept out of the tree experiments write),
`sandbox.json` (journal), `sandbox.lock`, `logs/exp-NNN.log`, `outputs/exp-NNN/`.

Every step of an experiment is first written to the journal; `recover()` (run by `open()`)
reads it and brings the repository back to the last kept commit, preserving whatever the
unfinished experiment did under `refs/magnet/exp/NNN`.

This module is the experiment lifecycle (begin, edit, commit, run, keep or discard); making and
opening a run is sandbox.creation, settling a decided experiment sandbox.settle, crash recovery
sandbox.recovery, the repository's own config sandbox.gitsetup.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from sandbox.confine import Confinement
from sandbox.confine import confinement as default_confinement
from sandbox.creation import create_run, open_run
from sandbox.edits import Edit, apply_edits
from sandbox.env import PASSED_THROUGH, run_environ
from sandbox.errors import WorkspaceError
from sandbox.gitcli import Git
from sandbox.journal import Journal
from sandbox.layout import (
    MAX_REPEATS,
    METRICS_FILE,
    eval_log_path,
    exp_ref,
    git_dir,
    log_path,
    output_dir,
    workspace_dir,
)
from sandbox.limits import DEFAULT_MAX_PROCESSES, DEFAULT_OUTPUT_LIMIT_MB
from sandbox.reader import read_diff, read_note
from sandbox.recovery import Recovery, recover
from sandbox.run_setup import run_setup
from sandbox.runner import DEFAULT_LOG_LIMIT, LineCallback, RunLimits, RunResult, run_command
from sandbox.settle import commit_message, finish_discard, finish_keep, make_note
from sandbox.warm import WarmStarter

__all__ = ["KEPT_STATUSES", "MAX_REPEATS", "Recovery", "Workspace", "exp_ref"]

KEPT_STATUSES = ("keep", "baseline")  # statuses of experiments that stay on the branch


class Workspace:
    """One run's sandbox. Create with `Workspace.create`, reopen with `Workspace.open`."""

    def __init__(self, run_dir: Path, journal: Journal, lock_fd: int) -> None:
        self.run_dir = run_dir
        self.path = workspace_dir(run_dir)
        self.git = Git(git_dir(run_dir), self.path)
        self.journal = journal
        self._lock_fd: int | None = lock_fd
        self.recovered: Recovery | None = None
        self.warm: WarmStarter | None = None  # sandbox.warm: set to warm-start runs

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
        journal, lock_fd = create_run(run_dir, template=template, repo=repo, editable=editable,
                                      knobs=knobs, goal=goal)
        return cls(run_dir, journal, lock_fd)

    @classmethod
    def open(cls, run_dir: Path | str) -> Workspace:
        """Reopen a workspace and bring it to a consistent state (see `recover()`); a run made
        before the git directory moved out of the work tree has it moved first."""
        run_dir = Path(run_dir).absolute()
        journal, lock_fd = open_run(run_dir)
        ws = cls(run_dir, journal, lock_fd)
        try:
            ws.recovered = ws.recover()
        except BaseException:
            ws.close()
            raise
        return ws

    def close(self) -> None:
        """Release the lock so another process may open the workspace (and stop a warm start)."""
        if self.warm is not None:
            self.warm.close()
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
        sha = self.git.commit(commit_message(cur["exp"], cur["hypothesis"]), cur["changed"])
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
        output_limit: int | None = DEFAULT_OUTPUT_LIMIT_MB * 2**20,
        max_processes: int | None = DEFAULT_MAX_PROCESSES,
    ) -> RunResult:
        """Run `command` on the committed experiment (committing first if needed); `repeat` > 0
        runs it again (say with another seed) into its own log and output directory.

        Under `confinement` (default: bubblewrap, or ConfinementUnavailable) it may write only
        its output directory (and a private TMPDIR), the workspace only read; `passed_env` names
        variables of this process's environment it may also see (a goal's `env:`)."""
        cur = self._cur("run")
        if cur["step"] == "editing":
            self.commit()
        if cur["step"] not in ("committed", "running", "ran"):
            raise WorkspaceError(f"experiment {cur['exp']} is {cur['step']}; it cannot run now")
        exp = cur["exp"]
        out_dir = self.output_dir(exp, repeat)
        out_dir.mkdir(parents=True, exist_ok=True)
        self.log_path(exp, repeat).parent.mkdir(parents=True, exist_ok=True)
        (out_dir / METRICS_FILE).unlink(missing_ok=True)  # a rerun must not read stale metrics

        def started(pid: int) -> None:
            # Durable before the run goes on: a new controller can then kill an orphaned run.
            cur.update(step="running", pid=pid)
            self.journal.save()

        run_env, confine, caps = run_setup(
            self.path, out_dir, time_budget=time_budget, seed=seed, steps=steps,
            threads=threads, env=env, passed_env=passed_env, confinement=confinement,
            mem_limit=mem_limit, output_limit=output_limit, max_processes=max_processes)
        warm = self.warm.take(command, self.path, run_env, confine, caps) if self.warm else None
        result = run_command(
            command,
            self.path,
            env=run_env,
            limits=RunLimits(time_budget, grace, term_grace, mem_limit, log_limit=log_limit,
                             output_limit=output_limit, max_processes=max_processes),
            confinement=confine(warm[1] if warm else out_dir),
            log_path=self.log_path(exp, repeat),
            output_dir=warm[1] if warm else out_dir,
            metric=metric,
            on_line=on_line,
            on_start=started,
            spawn=warm[0] if warm else None,
        )
        if self.warm:  # its staging directory moves into place; the next run's process starts
            self.warm.after(warm, out_dir, command, self.path, run_env, confine, caps)
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
        mem_limit: int | None = None,
        max_processes: int | None = DEFAULT_MAX_PROCESSES,
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
            limits=RunLimits(timeout, grace=0.0, mem_limit=mem_limit, log_limit=log_limit,
                             max_processes=max_processes),
            confinement=confinement,
            log_path=eval_log_path(self.run_dir, exp, repeat),
        )

    def keep(self, exp: int, record: Mapping[str, Any], *, best: bool,
             status: str = "keep") -> bool:
        """Keep experiment `exp` on the branch with `record` as its note (`status` names how it
        was kept: `keep`, or `baseline` for a measurement of the unmodified code).

        Moves tag magnet/best when `best`: the caller decides what is best (the agent with
        agent.rundir.ranking); the workspace has no rule of its own. Returns `best`.
        """
        cur = self._cur("keep", exp)
        if cur["step"] == "editing":
            self.commit()
        if cur["step"] not in ("committed", "ran"):
            raise WorkspaceError(f"experiment {exp} is {cur['step']}; it cannot be kept now")
        if status not in KEPT_STATUSES:
            raise WorkspaceError(f"keep status {status!r} is invalid; use one of "
                                 f"{', '.join(KEPT_STATUSES)}")
        cur.update(step="keeping", note=make_note(cur, record, status), is_best=bool(best))
        self.journal.save()
        finish_keep(self.git, self.journal, cur)
        return bool(best)

    def discard(self, exp: int, record: Mapping[str, Any], status: str = "discard") -> str:
        """Reset experiment `exp` away (status e.g. discard, crash, timeout); its commit stays at
        refs/magnet/exp/NNN with `record` as its note. Returns that commit id."""
        cur = self._cur("discard", exp)
        if not status or status in KEPT_STATUSES:
            raise WorkspaceError(f"discard status {status!r} is invalid; use keep() to keep")
        cur.update(step="discarding", note=make_note(cur, record, status))
        self.journal.save()
        return finish_discard(self.git, self.journal, cur)

    # --- reading the history --------------------------------------------------------------

    def record(self, exp: int) -> dict[str, Any] | None:
        """The JSON note of experiment `exp`, or None."""
        return read_note(self.git, exp)

    def diff(self, exp: int) -> str:
        """What experiment `exp` changed, relative to the commit it started from."""
        return read_diff(self.git, self.history, exp)

    # --- crash recovery -------------------------------------------------------------------

    def recover(self) -> Recovery | None:
        """Bring the workspace to a consistent state after a crash at any moment (see
        sandbox.recovery.recover); None when there was nothing to do."""
        self._need_open()
        return recover(self.git, self.journal, self.run_dir)

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
