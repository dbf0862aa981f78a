"""Settling an experiment in git and the journal once it is decided: the note it carries, and
the second halves of keep and discard. Both are idempotent, so recovery can finish one a crash
interrupted after the decision was journaled.

Nothing the experiment did not ask for is committed: once its edits are committed, whatever
its run then wrote to tracked files (an --unconfined run can write the workspace) is discarded
with the checkout, never kept in a ref (runs made before this kept it at
refs/magnet/leftover/NNN; those refs stay, and nothing reads them)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from sandbox.gitcli import Git
from sandbox.gitsetup import drop_planted_git
from sandbox.journal import Journal
from sandbox.layout import BEST_TAG, NOTES_REF, exp_ref


def make_note(cur: Mapping[str, Any], record: Mapping[str, Any], status: str) -> dict[str, Any]:
    """The experiment's record as its git note: `record` labelled with its exp and status."""
    note: dict[str, Any] = {"exp": cur["exp"], "hypothesis": cur["hypothesis"]}
    note.update(record)
    note.update(exp=cur["exp"], status=status)  # the record cannot relabel the experiment
    json.dumps(note)  # fail here, before anything moves, if the record is not JSON
    return note


def commit_message(exp: int, hypothesis: str) -> str:
    """`exp 007: <first line>`; a longer hypothesis goes in the body."""
    first = hypothesis.splitlines()[0].strip()
    subject = first if len(first) <= 100 else first[:99] + "…"
    body = hypothesis if subject != hypothesis else ""
    return f"exp {exp:03d}: {subject}" + (f"\n\n{body}" if body else "")


def finish_keep(git: Git, journal: Journal, cur: dict[str, Any]) -> None:
    """Idempotent second half of keep(): note, tag, clean tree, journal."""
    sha, exp = cur["commit"], cur["exp"]
    dirty = git.dirty()  # what the run wrote to tracked files: discarded by the checkout
    _write_note(git, sha, cur["note"])
    if cur["is_best"]:
        git.run("tag", "-f", BEST_TAG, sha)
    if dirty or git.head() != sha:
        git.run("checkout", "-q", "-f", "-B", journal["branch"], sha)
    journal["kept"] = sha
    if cur["is_best"]:
        journal["best"] = {"exp": exp, "commit": sha, "metric": cur["note"].get("metric")}
    _close_experiment(git, journal, cur, sha)


def finish_discard(git: Git, journal: Journal, cur: dict[str, Any]) -> str:
    """Idempotent second half of discard(): preserve, note, reset, journal."""
    exp, ref = cur["exp"], exp_ref(cur["exp"])
    head, kept = git.head(), journal["kept"]
    preserved = git.rev(ref) if head == kept else None
    if preserved:
        # The ref is only ever set while HEAD is ahead of `kept`; with HEAD back at `kept`
        # the experiment was already preserved and reset before the crash.
        top = preserved
    else:
        top = head if head != kept else None
        if top is None:
            # Not committed yet: the tree holds the experiment's own edits (if any), which
            # are what it asked for. Once committed, a dirty tree is what its run wrote, and
            # the checkout below discards it.
            git.run("add", "-u")
            top = git.commit(commit_message(exp, cur["hypothesis"]))
        git.run("update-ref", ref, top)
    assert top is not None
    _write_note(git, top, cur["note"])
    git.run("checkout", "-q", "-f", "-B", journal["branch"], kept)
    _close_experiment(git, journal, cur, top)
    return top


def _write_note(git: Git, sha: str, note: Mapping[str, Any]) -> None:
    git.run("notes", "--ref", NOTES_REF, "add", "-f", "-m", json.dumps(note), sha)


def _close_experiment(git: Git, journal: Journal, cur: dict[str, Any], sha: str) -> None:
    assert git.work_tree is not None
    drop_planted_git(git.work_tree)
    note = cur["note"]
    journal["history"].append(
        {
            "exp": cur["exp"],
            "status": note["status"],
            "commit": sha,
            "base": cur["base"],
            "metric": note.get("metric"),
        }
    )
    journal["current"] = None
    journal.save()
