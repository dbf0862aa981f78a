"""The workspace's git directory lies outside the work tree, and MAGNET's git runs nothing an
experiment planted: no filter, hook or fsmonitor, and never with the controller's secrets.

Real git and real processes throughout; `plain()` is git as a person reviewing a run uses it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from sandbox import EditError, KnobSet, RunReader, Workspace, exp_ref
from sandbox.confine import Confinement, ConfinementUnavailable, confinement
from sandbox.gitcli import git_env
from sandbox.layout import EXP_REFS, GIT_DIR, WORKSPACE_DIR
from sandbox.paths import resolve_editable

SECRETS = {"OPENAI_API_KEY": "sk-leak-me", "AWS_SECRET_ACCESS_KEY": "aws-leak-me"}


@pytest.fixture(autouse=True)
def secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    """The controller's environment holds secrets, as a real one does."""
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)


def plain(*args: str, cwd: Path | None = None) -> str:
    """git with the test's own environment (secrets included), as a person would run it."""
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True,
                          check=True).stdout.strip()


def evil_config(leak: Path) -> str:
    """A filter that writes git's environment to `leak` and marks what it filters."""
    run = f"\"sh -c 'env > {leak}; sed s/LEARNING/FILTERED/'\""  # quoted: `;` starts a comment
    return f'[filter "evil"]\n\tclean = {run}\n\tsmudge = {run}\n\trequired = true\n'


def plant_git_dir(root: Path, leak: Path) -> None:
    """A real repository at root/.git whose config holds the filter, applied to every file."""
    plain("init", "-q", str(root))
    with (root / ".git" / "config").open("a") as f:
        f.write(evil_config(leak))
    (root / ".gitattributes").write_text("* filter=evil\n")


def plant_git_file(root: Path, elsewhere: Path, leak: Path) -> None:
    """root/.git as a FILE pointing at a repository elsewhere that holds the filter."""
    plain("init", "-q", "--bare", str(elsewhere))
    plain("--git-dir", str(elsewhere), "config", "core.bare", "false")
    with (elsewhere / "config").open("a") as f:
        f.write(evil_config(leak))
    (root / ".git").write_text(f"gitdir: {elsewhere}\n")
    (root / ".gitattributes").write_text("* filter=evil\n")


def run_confinement() -> Confinement:
    """bubblewrap where it is installed; otherwise unconfined (this test is about git)."""
    try:
        return confinement()
    except ConfinementUnavailable:
        return Confinement(enabled=False)


def one_of_each(ws: Workspace, first: int) -> None:
    """Every git path of a workspace: begin, edit, commit, run, keep; and a discard."""
    ws.begin(first, "lower the learning rate")
    ws.apply([KnobSet("LEARNING_RATE", 0.0005)])
    ws.commit()
    ws.run("true", time_budget=5, confinement=run_confinement())
    ws.keep(first, {"metric": 1.0}, best=first == 0)  # later ones only equal it
    ws.begin(first + 1, "more layers")
    ws.apply([KnobSet("N_LAYER", 6)])
    ws.commit()
    ws.discard(first + 1, {"metric": 2.0})


def assert_unfiltered(ws: Workspace, *exps: int) -> None:
    for exp in exps:
        text = plain("show", f"{exp_ref(exp)}:train.py", cwd=ws.git.git_dir)
        assert "LEARNING_RATE" in text and "FILTERED" not in text


def test_control_the_planted_filter_does_leak_through_plain_git(tmp_path):
    """The probe is real: git that finds the planted .git runs the filter with the secrets."""
    root, leak = tmp_path / "tree", tmp_path / "leak"
    root.mkdir()
    (root / "train.py").write_text("LEARNING_RATE = 1\n")
    plant_git_dir(root, leak)
    plain("add", "train.py", cwd=root)
    assert SECRETS["OPENAI_API_KEY"] in leak.read_text()


def test_template_workspace_has_its_git_dir_beside_the_tree(make_ws):
    ws = make_ws()
    assert not (ws.path / ".git").exists()
    assert ws.git.git_dir == ws.run_dir / GIT_DIR
    one_of_each(ws, 0)
    gd = str(ws.run_dir / GIT_DIR)
    assert plain("--git-dir", gd, "config", "core.worktree") == f"../{WORKSPACE_DIR}"
    log = plain("-C", gd, "log", "--notes=magnet", f"--glob={EXP_REFS}")
    assert "exp 000: lower the learning rate" in log and '"status": "keep"' in log
    assert plain("-C", gd, "status", "--porcelain", "--untracked-files=no") == ""
    worktree = ["--git-dir", gd, "--work-tree", str(ws.path)]
    assert plain(*worktree, "status", "--porcelain", "--untracked-files=no") == ""
    assert not (ws.path / ".git").exists()


def test_cloned_workspace_has_its_git_dir_beside_the_tree(tmp_path, train_py, knobs):
    user = tmp_path / "user-repo"
    user.mkdir()
    (user / "train.py").write_text(train_py)
    plain("init", "-q", "-b", "main", str(user))
    plain("add", ".", cwd=user)
    plain("-c", "user.name=u", "-c", "user.email=u@u", "commit", "-qm", "user work", cwd=user)
    run_dir = tmp_path / "runs" / "r1"
    with Workspace.create(run_dir, repo=user, editable=["train.py"], knobs=knobs) as ws:
        assert sorted(p.name for p in ws.path.iterdir()) == ["train.py"]
        gd = ws.run_dir / GIT_DIR
        assert plain("-C", str(gd), "log", "--format=%s") == "user work"
        assert plain("-C", str(gd), "remote") == ""
        one_of_each(ws, 0)
        assert "exp 000" in plain("-C", str(gd), "log", "--notes=magnet", "--all")
        assert not (ws.path / ".git").exists()


@pytest.mark.parametrize("kind", ["dir", "file"])
def test_a_planted_git_filter_never_runs(make_ws, tmp_path, kind):
    leak = tmp_path / "LEAKFILE"
    ws = make_ws()
    ws.begin(0, "baseline")
    # the experiment in flight plants it in the directory it may write
    if kind == "dir":
        plant_git_dir(ws.path, leak)
    else:
        plant_git_file(ws.path, tmp_path / "elsewhere.git", leak)
    ws.apply([KnobSet("N_LAYER", 3)])
    ws.commit()
    ws.run("true", time_budget=5, confinement=run_confinement())
    ws.keep(0, {"metric": 1.0}, best=True)
    one_of_each(ws, 1)
    ws.close()
    with Workspace.open(ws.run_dir) as again:
        one_of_each(again, 3)
    assert not leak.exists()
    assert_unfiltered(ws, 0, 1, 2, 3, 4)
    assert not (ws.path / ".git").exists()  # dropped: a person's git in the tree won't find it


def test_hooks_and_fsmonitor_in_the_repository_config_never_run(make_ws, tmp_path):
    """Even were the git dir's config written (it is out of the experiment's reach), the
    command line switches hooks and fsmonitor off."""
    leak = tmp_path / "LEAKFILE"
    ws = make_ws()
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    for hook in ("pre-commit", "post-commit", "post-checkout", "reference-transaction"):
        (hooks / hook).write_text(f"#!/bin/sh\nenv > {leak}\n")
        (hooks / hook).chmod(0o755)
    gd = str(ws.git.git_dir)
    plain("--git-dir", gd, "config", "core.hooksPath", str(hooks))
    plain("--git-dir", gd, "config", "core.fsmonitor", str(hooks / "pre-commit"))
    one_of_each(ws, 0)
    assert not leak.exists()


def test_git_env_is_an_allow_list():
    env = git_env({
        "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "TZ": "UTC", "HOME": "/root",
        **SECRETS, "MYSQL_PWD": "pw", "GIT_DIR": "/evil", "GIT_WORK_TREE": "/evil",
        "GIT_EXTERNAL_DIFF": "evil", "GIT_SSH_COMMAND": "evil", "GIT_CONFIG_PARAMETERS": "evil",
        "GIT_CONFIG_COUNT": "1", "GIT_EDITOR": "evil", "PAGER": "evil", "GIT_PAGER": "evil",
        "LD_PRELOAD": "evil.so", "XDG_CONFIG_HOME": "/evil",
    })
    assert set(env) == {
        "PATH", "LANG", "TZ", "GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL", "GIT_COMMITTER_NAME",
        "GIT_COMMITTER_EMAIL", "GIT_CONFIG_GLOBAL", "GIT_CONFIG_NOSYSTEM",
        "GIT_TERMINAL_PROMPT", "LC_ALL",
    }
    assert env["PATH"] == "/usr/bin:/bin" and env["GIT_CONFIG_GLOBAL"] == os.devnull
    assert not set(SECRETS) & set(git_env())  # the process's own environment, secrets set


def make_legacy(ws: Workspace) -> Path:
    """Turn a run into one made before the git dir moved: workspace/.git, no core.worktree."""
    run_dir = ws.run_dir
    ws.close()
    legacy = run_dir / WORKSPACE_DIR / ".git"
    shutil.move(run_dir / GIT_DIR, legacy)
    plain("config", "--file", str(legacy / "config"), "--unset", "core.worktree")
    return run_dir


def test_legacy_run_is_read_as_it_is_then_migrated_on_open(make_ws):
    ws = make_ws()
    one_of_each(ws, 0)
    note, diff = ws.record(0), ws.diff(1)
    run_dir = make_legacy(ws)

    reader = RunReader(run_dir)
    assert reader.note(0) == note and reader.diff(1) == diff
    assert reader.best() == {"exp": 0, "commit": ws.kept}
    assert (run_dir / WORKSPACE_DIR / ".git").is_dir() and not (run_dir / GIT_DIR).exists()

    with Workspace.open(run_dir) as again:
        assert again.recovered is None
        assert not (again.path / ".git").exists() and (run_dir / GIT_DIR / "HEAD").is_file()
        gd = str(run_dir / GIT_DIR)
        assert plain("--git-dir", gd, "config", "core.worktree") == f"../{WORKSPACE_DIR}"
        assert plain("-C", gd, "status", "--porcelain", "--untracked-files=no") == ""
        one_of_each(again, 2)
        assert again.record(2)["status"] == "keep"
    assert RunReader(run_dir).note(0) == note


def test_reader_needs_no_work_tree(make_ws):
    ws = make_ws()
    one_of_each(ws, 0)
    ws.close()
    shutil.move(ws.path, ws.run_dir / "elsewhere")
    reader = RunReader(ws.run_dir)
    assert reader.note(0)["status"] == "keep"
    assert "+N_LAYER = 6" in reader.diff(1)
    assert reader.best() == {"exp": 0, "commit": ws.kept}


@pytest.mark.parametrize("path", [".git", ".git/config", "sub/.git/config", "./.git/HEAD"])
def test_nothing_named_git_is_an_edit_target(tmp_path, path):
    target = tmp_path / path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("x\n")
    with pytest.raises(EditError, match="is refused"):
        resolve_editable(tmp_path, path, ["*", "**/*"])
