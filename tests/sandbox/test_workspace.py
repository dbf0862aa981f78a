import hashlib
import json
import subprocess
from pathlib import Path

import pytest

from sandbox import (
    BEST_TAG,
    EditError,
    KnobSet,
    SearchReplace,
    TemplateError,
    Workspace,
    WorkspaceError,
    exp_ref,
    template_dir,
)
from sandbox.confine import confinement
from sandbox.gitcli import git_env
from sandbox.templates import known_templates


def repo(ws: Workspace) -> Path:
    """The run's git directory: plain git, as a reviewer runs it, is pointed there."""
    return ws.git.git_dir


def lines_of(ws: Workspace, git, *args: str) -> list[str]:
    return git(repo(ws), *args).splitlines()


def assert_consistent(ws: Workspace, git) -> None:
    assert ws.current is None
    assert git(repo(ws), "symbolic-ref", "HEAD") == f"refs/heads/{ws.branch}"
    assert git(repo(ws), "rev-parse", "HEAD") == ws.kept
    assert git(repo(ws), "status", "--porcelain", "--untracked-files=no") == ""


def test_create_from_template(make_ws, git):
    ws = make_ws()
    assert sorted(p.name for p in ws.path.iterdir()) == ["README.md", "config.py", "train.py"]
    assert (ws.run_dir / "workspace.git" / "HEAD").is_file()  # the git dir is beside the tree
    assert ws.branch == "magnet/run-1"
    assert_consistent(ws, git)
    assert lines_of(ws, git, "log", "--format=%an <%ae>|%s") == [
        "MAGNET <magnet@localhost>|baseline: template " + str(ws.run_dir.parent.parent / "template")
    ]
    assert git(repo(ws), "rev-parse", "magnet/baseline") == ws.kept
    assert (ws.run_dir / "sandbox.json").exists()
    assert git(repo(ws), "ls-files") == "README.md\nconfig.py\ntrain.py"  # journal not tracked


def test_plain_git_commit_works_without_global_identity(make_ws, tmp_path):
    ws = make_ws()
    (ws.path / "README.md").write_text("changed\n")
    env = {"PATH": git_env()["PATH"], "HOME": str(tmp_path), "GIT_CONFIG_GLOBAL": "/dev/null"}
    subprocess.run(["git", "commit", "-qam", "by hand"], cwd=ws.git.git_dir, env=env, check=True)
    assert "by hand" in subprocess.run(["git", "log", "-1"], cwd=ws.git.git_dir, env=env,
                                       capture_output=True, text=True, check=True).stdout


def test_experiment_lifecycle_notes_and_best_tag(make_ws, git):
    ws = make_ws(goal="minimize")
    ws.begin(0, "baseline")
    base = ws.run("python train.py", time_budget=5, metric="val_bpb")
    assert base.status == "ok" and base.metrics["val_bpb"] == pytest.approx(1.996)
    assert base.metrics["budget"] == 5 and base.metrics["steps"] == 10
    assert ws.keep(0, {"metric": base.metrics["val_bpb"], "planner": "search"}, best=True)
    c0 = git(repo(ws), "rev-parse", "HEAD")
    assert git(repo(ws), "rev-parse", BEST_TAG) == c0

    ws.begin(1, "raise the learning rate")
    assert ws.apply([KnobSet("LEARNING_RATE", 0.01)]) == ["train.py"]
    c1 = ws.commit()
    assert git(repo(ws), "log", "-1", "--format=%s") == "exp 001: raise the learning rate"
    r1 = ws.run("python train.py", time_budget=5, metric="val_bpb")
    assert r1.metrics["val_bpb"] == pytest.approx(1.96)
    assert ws.keep(1, {"metric": r1.metrics["val_bpb"]}, best=True)
    assert git(repo(ws), "rev-parse", BEST_TAG) == c1 == ws.kept

    ws.begin(2, "deeper")
    ws.apply([KnobSet("N_LAYER", 2)])
    r2 = ws.run("python train.py", time_budget=5, metric="val_bpb")  # commits by itself
    assert not ws.keep(2, {"metric": r2.metrics["val_bpb"]}, best=False)  # kept, not best
    assert git(repo(ws), "rev-parse", BEST_TAG) == c1
    assert ws.best == {"exp": 1, "commit": c1, "metric": pytest.approx(1.96)}

    log = git(repo(ws), "log", "--notes=magnet", "--format=%s%n%N")
    assert "exp 001: raise the learning rate" in log and '"status": "keep"' in log
    assert '"planner": "search"' in log
    assert ws.record(1) == {
        "exp": 1,
        "hypothesis": "raise the learning rate",
        "metric": pytest.approx(1.96),
        "status": "keep",
    }
    assert [h["status"] for h in ws.history] == ["keep", "keep", "keep"]
    assert ws.log_path(1).read_text().startswith("METRIC val_bpb=1.96")


def test_discarded_experiment_is_kept_at_its_ref(make_ws, git):
    ws = make_ws()
    kept = ws.kept
    ws.begin(1, "swap activation")
    ws.apply([SearchReplace("train.py", 'ACTIVATION = "relu"', 'ACTIVATION = "gelu"')])
    c1 = ws.commit()
    sha = ws.discard(1, {"metric": 3.0, "reason": "worse"}, status="discard")
    assert sha == c1
    assert_consistent(ws, git)
    assert ws.kept == kept
    assert 'ACTIVATION = "relu"' in (ws.path / "train.py").read_text()
    shown = git(repo(ws), "show", exp_ref(1))
    assert '-ACTIVATION = "relu"' in shown and '+ACTIVATION = "gelu"' in shown
    assert "exp 001: swap activation" in shown
    assert '+ACTIVATION = "gelu"' in ws.diff(1)
    assert ws.record(1)["status"] == "discard" and ws.record(1)["reason"] == "worse"
    assert json.loads(git(repo(ws), "notes", "--ref=magnet", "show", exp_ref(1)))["metric"] == 3.0
    assert git(repo(ws), "branch", "--contains", c1) == ""  # off the branch, only the ref holds it

    ws.begin(2, "crashy change")
    ws.apply([SearchReplace("train.py", "def main():", "def main():\n    raise ValueError('x')")])
    r = ws.run("python train.py", time_budget=5)
    assert r.status == "crashed" and "ValueError: x" in r.log_tail
    ws.discard(2, {"error": r.log_tail[-200:]}, status="crash")
    assert ws.record(2)["status"] == "crash"
    assert_consistent(ws, git)
    log = git(repo(ws), "log", "--notes=magnet", "--all", "--format=%s")
    assert "exp 002: crashy change" in log


def test_what_a_run_writes_to_tracked_files_is_discarded_not_committed(make_ws, git):
    """An --unconfined run can write the workspace: what it drops there is not what the
    experiment asked for, so neither discard nor keep commits it anywhere (no leftover refs)."""
    ws = make_ws()
    unconfined = confinement(unconfined=True)
    ws.begin(1, "tamper")
    r = ws.run("echo 'EVIL = 1' >> config.py; echo 'METRIC val_bpb=1'", time_budget=5,
               confinement=unconfined)
    assert r.status == "ok"
    ws.discard(1, {"metric": 1}, "discard")
    assert_consistent(ws, git)
    assert "EVIL" not in (ws.path / "config.py").read_text()
    ws.begin(2, "tamper and keep")
    ws.apply([SearchReplace("train.py", 'ACTIVATION = "relu"', 'ACTIVATION = "gelu"')])
    ws.run("echo 'EVIL = 2' >> config.py; echo 'METRIC val_bpb=1'", time_budget=5,
           confinement=unconfined)
    ws.keep(2, {"metric": 1}, best=True)
    assert_consistent(ws, git)
    assert "EVIL" not in (ws.path / "config.py").read_text()
    assert 'ACTIVATION = "gelu"' in (ws.path / "train.py").read_text()  # what it asked for
    assert git(repo(ws), "for-each-ref", "refs/magnet/leftover") == ""
    everything = git(repo(ws), "log", "--all", "-p", "--format=%H %s")
    assert "EVIL" not in everything and "+ACTIVATION = \"gelu\"" in everything
    stashes = git(repo(ws), "fsck", "--unreachable", "--no-reflogs")
    for line in stashes.splitlines():  # nor in a dangling object a ref could later name
        assert "EVIL" not in git(repo(ws), "cat-file", "-p", line.split()[-1])


def test_edits_are_confined_and_journal_unchanged_on_refusal(make_ws, git):
    ws = make_ws()
    ws.begin(1, "sneaky")
    for edit in (
        SearchReplace("config.py", "SECRET_SETTING = 1", "SECRET_SETTING = 2"),
        SearchReplace("../../template/train.py", "N_LAYER = 4", "N_LAYER = 5"),
        SearchReplace("train.py", "N_LAYER = 4", "N_LAYER = ("),
    ):
        with pytest.raises(EditError):
            ws.apply([edit])
    assert ws.current["changed"] == []
    assert git(repo(ws), "status", "--porcelain") == ""


def test_protocol_errors(make_ws):
    ws = make_ws()
    with pytest.raises(WorkspaceError, match="call begin"):
        ws.commit()
    ws.begin(3, "first")
    with pytest.raises(WorkspaceError, match="experiment 3 is unfinished"):
        ws.begin(4, "second")
    with pytest.raises(WorkspaceError, match="current experiment is 3"):
        ws.discard(2, {})
    ws.discard(3, {})
    with pytest.raises(WorkspaceError, match="next free one is 4"):
        ws.begin(3, "again")
    with pytest.raises(WorkspaceError, match="another MAGNET process"):
        Workspace.open(ws.run_dir)
    with pytest.raises(WorkspaceError, match="already holds a workspace"):
        Workspace.create(ws.run_dir, template=ws.path)


def test_unfinished_experiment_is_interrupted_on_reopen(make_ws, git):
    ws = make_ws()
    kept = ws.kept
    ws.begin(1, "half done")
    ws.apply([KnobSet("N_LAYER", 6)])
    ws.close()  # the controller stops between two steps, as after a crash
    ws = Workspace.open(ws.run_dir)
    rec = ws.recovered
    assert rec is not None and (rec.exp, rec.status, rec.step) == (1, "interrupted", "editing")
    assert_consistent(ws, git)
    assert ws.kept == kept
    assert "N_LAYER = 4" in (ws.path / "train.py").read_text()
    assert "+N_LAYER = 6" in git(repo(ws), "show", rec.ref)  # the unfinished edit is not lost
    assert ws.record(1)["status"] == "interrupted"
    assert ws.next_exp == 2
    ws.close()
    with Workspace.open(ws.run_dir) as again:
        assert again.recovered is None


def test_clone_leaves_the_users_repo_untouched(tmp_path, git):
    user = tmp_path / "user-repo"
    user.mkdir()
    git(user, "init", "-q", "-b", "main")
    (user / "train.py").write_text("LR = 1\nprint('METRIC val_bpb=1.0')\n")
    git(user, "add", ".")
    git(user, "commit", "-qm", "user work")
    (user / "train.py").write_text("LR = 2  # uncommitted\nprint('METRIC val_bpb=1.0')\n")
    (user / "notes.txt").write_text("untracked\n")

    def snapshot() -> dict[str, str]:
        return {
            str(p.relative_to(user)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(user.rglob("*"))
            if p.is_file()
        }

    before = snapshot()
    head = git(user, "rev-parse", "HEAD")
    with Workspace.create(tmp_path / "runs" / "r1", repo=user, editable=["train.py"]) as ws:
        assert git(repo(ws), "rev-parse", "HEAD") == head == ws.kept
        assert git(repo(ws), "remote") == ""
        assert "LR = 1\n" in (ws.path / "train.py").read_text()  # committed state only
        ws.begin(1, "lr")
        ws.apply([SearchReplace("train.py", "LR = 1", "LR = 3")])
        ws.run("python train.py", time_budget=5)
        ws.keep(1, {"metric": 1.0}, best=True)
        ws.begin(2, "lr again")
        ws.apply([SearchReplace("train.py", "LR = 3", "LR = 4")])
        ws.discard(2, {})
    assert snapshot() == before
    assert git(user, "rev-parse", "HEAD") == head
    assert git(user, "branch", "--list") == "* main"
    assert git(user, "for-each-ref", "--format=%(refname)") == "refs/heads/main"


def test_bad_sources_and_templates(tmp_path):
    with pytest.raises(TemplateError) as err:
        template_dir("no-such-template")
    assert "unknown template 'no-such-template'; use one of:" in str(err.value)
    for name in known_templates():
        assert name in str(err.value)
    with pytest.raises(WorkspaceError, match="not a git repository"):
        Workspace.create(tmp_path / "runs" / "r1", repo=tmp_path)
    with pytest.raises(WorkspaceError, match="editable file 'nope.py' does not exist"):
        Workspace.create(
            tmp_path / "runs" / "r2", template=Path(__file__).parent, editable=["nope.py"]
        )
    with pytest.raises(WorkspaceError, match="exactly one of"):
        Workspace.create(tmp_path / "runs" / "r3")
    with pytest.raises(WorkspaceError, match="branch name"):
        Workspace.create(tmp_path / "runs" / "bad..id", template=Path(__file__).parent)


def test_builtin_bitnet_template_when_installed(tmp_path):
    if "bitnet-lm" not in known_templates():
        pytest.skip("bitnet/templates/bitnet-lm is not there yet")
    with Workspace.create(tmp_path / "r", template="bitnet-lm", editable=["train.py"]) as ws:
        assert (ws.path / "train.py").is_file()
        assert not list(ws.path.rglob("__pycache__"))


def test_stale_git_lock_from_a_killed_git_is_cleared(make_ws, git):
    ws = make_ws()
    ws.begin(1, "edit then die inside git")
    ws.apply([KnobSet("N_LAYER", 3)])
    ws.close()
    (ws.git.git_dir / "index.lock").write_text("")  # what a SIGKILLed `git commit` leaves
    with Workspace.open(ws.run_dir) as ws:
        assert ws.recovered is not None and ws.recovered.status == "interrupted"
        assert_consistent(ws, git)
        assert "+N_LAYER = 3" in git(repo(ws), "show", exp_ref(1))
        assert not (ws.git.git_dir / "index.lock").exists()


def test_half_created_workspace_gives_one_clear_instruction(tmp_path, template):
    run_dir = tmp_path / "runs" / "r1"
    (run_dir / "workspace").mkdir(parents=True)  # creation died before the journal was written
    for attempt in (
        lambda: Workspace.open(run_dir),
        lambda: Workspace.create(run_dir, template=template),
    ):
        with pytest.raises(WorkspaceError, match="creation was interrupted; delete"):
            attempt()
