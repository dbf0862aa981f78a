"""What a verifier's replays cost, without weakening them: the claimed commit and its parent are
replayed in one workspace (one set of fork servers), the second brought back to what a fresh
one would be; a verify whose runs are all in the replay cache does not import torch, yet checks
this machine's torch release as before."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from agent.claims.replay import _Replays
from agent.rundir.init_checkpoint import init_dir, unpack_init
from sandbox.gitcli import Git
from sandbox.layout import log_path, output_dir
from sandbox.warm import STAGING_PREFIX
from sandbox.workspace import Workspace

INIT_FILES = {"model.safetensors": b"weights", "config.json": b"{}"}


def init_archive() -> bytes:
    """An init checkpoint as a claim carries it: a tar of plain files (agent.rundir)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in INIT_FILES.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def two_commits(source: Path) -> tuple[str, str]:
    """A repository whose HEAD (the claimed commit) changes train.py of its parent."""
    git = Git(source / ".git", source)
    source.mkdir()
    git.run("init", "-q")
    (source / "train.py").write_text("N_LAYER = 4\n")
    (source / "model.py").write_text("# the model\n")
    git.run("add", "-A")
    parent = git.commit("parent")
    (source / "train.py").write_text("N_LAYER = 1\n")
    return parent, git.commit("claimed", ["train.py"])


def test_the_parents_replay_sees_nothing_the_claimed_one_left(tmp_path):
    """Between the two replays the workspace is checked out at the parent as a fresh clone would
    be: the first replay's tree changes, untracked files, outputs, logs and init checkpoint are
    gone or restored; only the warm process's staging directory (it has run nothing) stays, and
    the init folder the runs' views bind is the same folder."""
    parent, claimed = two_commits(tmp_path / "source")
    with Workspace.create(tmp_path / "replay", repo=tmp_path / "source",
                          editable=["train.py"]) as ws:
        init = unpack_init(init_archive(), ws.run_dir)
        bound = init.stat().st_ino
        goal = SimpleNamespace(spec=SimpleNamespace(init="base"))
        replays = _Replays(goal, ws, None, {"init": init_archive()},  # type: ignore[arg-type]
                           None, None, None)  # type: ignore[arg-type]
        assert ws.git.head() == claimed
        ws.begin(ws.next_exp, "replay of the claimed commit")
        ws.commit()
        # what an (unconfined) first replay could leave behind
        (ws.path / "model.py").write_text("# changed by a run\n")
        (ws.path / ".magnet-0-schedule.json").write_text("[0.5]")
        (ws.path / "__pycache__").mkdir()
        (ws.path / "__pycache__" / "model.pyc").write_bytes(b"stale")
        for path in (output_dir(ws.run_dir, 0) / "model.safetensors", log_path(ws.run_dir, 0)):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("the first replay's")
        # links out of the run and a FIFO: removed as entries, never followed or read
        outside = tmp_path / "outside"
        outside.mkdir()
        (outside / "keep.txt").write_text("not the run's")
        (output_dir(ws.run_dir, 0) / "link").symlink_to(outside)
        (ws.run_dir / "outputs" / "exp-000-run2").symlink_to(outside)
        (ws.path / "link").symlink_to(outside)
        os.mkfifo(log_path(ws.run_dir, 0).with_name("fifo"))
        staging = ws.run_dir / "outputs" / f"{STAGING_PREFIX}1-2"
        staging.mkdir()
        (init / "model.safetensors").write_bytes(b"tampered")
        (init / "extra.bin").write_bytes(b"left")

        replays._fresh(parent)

        assert ws.git.head() == parent and ws.current is None
        assert ws.git.run("status", "--porcelain", "--ignored", "--untracked-files=all") == ""
        assert sorted(p.name for p in ws.path.iterdir()) == ["model.py", "train.py"]
        assert (ws.path / "train.py").read_text() == "N_LAYER = 4\n"
        assert (ws.path / "model.py").read_text() == "# the model\n"
        assert list((ws.run_dir / "outputs").iterdir()) == [staging]
        assert [p.name for p in outside.iterdir()] == ["keep.txt"]
        assert list((ws.run_dir / "logs").iterdir()) == []
        assert init_dir(ws.run_dir).stat().st_ino == bound
        assert {p.name: p.read_bytes() for p in init.iterdir()} == INIT_FILES
        ws.begin(ws.next_exp, "replay of the parent")  # the next experiment starts from here
        assert ws.commit() != parent and ws.git.run("rev-parse", "HEAD^{tree}") == \
            ws.git.run("rev-parse", f"{parent}^{{tree}}")


def test_the_torch_check_reads_torch_release_without_importing_it(tmp_path):
    """A verify whose replays all come from the cache (and a repository goal's controller)
    imports no torch (seconds of CPU), yet refuses a claim of another torch release as before:
    the release it compares is the imported torch's."""
    import torch

    from agent.claims.replay import ReplayRefused, _check_machine

    script = ("import json, sys\n"
              "from agent.scoring.replay_facts import torch_version\n"
              "version = torch_version()\n"
              "print(json.dumps([version, 'torch' in sys.modules]))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=tmp_path, env={**os.environ}, timeout=120, check=True)
    version, imported = json.loads(done.stdout)
    assert not imported
    assert version == torch.__version__.split("+")[0]
    _check_machine({"torch": version})
    with pytest.raises(ReplayRefused, match=f"this machine has {re.escape(version)};"):
        _check_machine({"torch": version + ".1"})
