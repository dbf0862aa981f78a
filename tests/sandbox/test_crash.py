"""A controller killed with SIGKILL at any moment leaves a workspace that reopens consistent."""

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from sandbox import BEST_TAG, Workspace, exp_ref, limits
from sandbox.layout import GIT_DIR
from sandbox.limits import Limits
from sandbox.runner import processes_with_env

CONTROLLER = Path(__file__).with_name("controller.py")

SLOW_TRAIN = """
import os, subprocess, sys, time
grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
with open(os.path.join(os.environ["MAGNET_OUTPUT_DIR"], "pids.tmp"), "w") as f:
    f.write(f"{os.getpid()} {grandchild.pid}")
os.replace(f.name, os.path.join(os.environ["MAGNET_OUTPUT_DIR"], "pids"))
time.sleep(600)
"""


# A controller killed here leaves its run's cgroups behind, and any other MAGNET process that
# makes cgroups beside them (another xdist worker's run) removes them as stale, killing the
# orphans before this test's recovery can: each controller runs in a cgroup of its own, whose
# children nobody else sweeps, removed after the test.
PRIVATE_CGROUPS: list[Path] = []


@pytest.fixture(autouse=True)
def _remove_private_cgroups() -> Iterator[None]:
    yield
    while PRIVATE_CGROUPS:
        directory = PRIVATE_CGROUPS.pop()
        for left in directory.glob("magnet-*"):  # the killed controller's: kill what is in them
            Limits(cgroups={"left": left}).remove(timeout=5.0)
        with contextlib.suppress(OSError):
            directory.rmdir()


def _own_cgroups() -> list[Path]:
    made = []
    for parent in limits._parents().values():
        directory = parent / f"crash-test-{os.getpid()}-{secrets.token_hex(3)}"
        with contextlib.suppress(OSError):
            directory.mkdir()
            made.append(directory)
    PRIVATE_CGROUPS.extend(made)
    return made


def controller(run_dir: Path, decision: str, crash_at: int, command: str,
               *extra: str) -> subprocess.Popen:
    own = _own_cgroups()

    def join() -> None:  # in the child, before it runs anything
        for directory in own:
            (directory / "cgroup.procs").write_text(str(os.getpid()))

    return subprocess.Popen(
        [sys.executable, str(CONTROLLER), str(run_dir), decision, str(crash_at), command,
         *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=join,
    )


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def git_out(path: Path, *args: str) -> str:
    """Plain git on the work tree `path`, through its git directory beside it."""
    gd = str(path.with_name(GIT_DIR))
    return subprocess.run(["git", "-C", gd, *args], capture_output=True, text=True).stdout.strip()


def assert_consistent(ws: Workspace) -> None:
    assert ws.current is None
    assert git_out(ws.path, "symbolic-ref", "HEAD") == f"refs/heads/{ws.branch}"
    assert git_out(ws.path, "rev-parse", "HEAD") == ws.kept
    assert git_out(ws.path, "status", "--porcelain", "--untracked-files=no") == ""


def test_confined_run_dies_with_its_controller(make_ws):
    """Under bubblewrap (--die-with-parent, own PID namespace) nothing waits for recovery."""
    ws = make_ws("mid-run-confined")
    run_dir = ws.run_dir
    (ws.path / "slow.py").write_text(SLOW_TRAIN)  # untracked: inside what the run may read
    ws.close()
    proc = controller(run_dir, "discard", 0, "python slow.py")
    out_dir = run_dir / "outputs" / "exp-000"
    deadline = time.monotonic() + 30
    while not (out_dir / "pids").exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "training command never started"
        time.sleep(0.02)
    def run_processes() -> list:
        return processes_with_env("MAGNET_OUTPUT_DIR", str(out_dir))

    assert len(run_processes()) >= 2  # the script and its grandchild
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 5
    while run_processes() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert run_processes() == []
    with Workspace.open(run_dir) as ws:
        assert ws.recovered is not None and not ws.recovered.killed_run


def test_controller_killed_mid_run(make_ws, tmp_path):
    """Unconfined (--unconfined), orphans outlive the controller: recovery kills them."""
    ws = make_ws("mid-run")
    run_dir, kept = ws.run_dir, ws.kept
    ws.close()
    (tmp_path / "slow.py").write_text(SLOW_TRAIN)
    proc = controller(run_dir, "discard", 0, f"python {tmp_path / 'slow.py'}", "unconfined")
    pids_file = run_dir / "outputs" / "exp-000" / "pids"
    deadline = time.monotonic() + 30
    while not pids_file.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "training command never started"
        time.sleep(0.02)
    pids = [int(p) for p in pids_file.read_text().split()]
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert all(alive(pid) for pid in pids)  # orphaned: only recovery can stop them

    with Workspace.open(run_dir) as ws:
        rec = ws.recovered
        assert rec is not None
        assert (rec.exp, rec.status, rec.step, rec.killed_run) == (
            0,
            "interrupted",
            "running",
            True,
        )
        for pid in pids:
            assert not alive(pid), f"training process {pid} survived recovery"
        assert_consistent(ws)
        assert ws.kept == kept
        assert "LEARNING_RATE = 0.001\n" in (ws.path / "train.py").read_text()
        assert "+LEARNING_RATE = 0.0005" in git_out(ws.path, "show", exp_ref(0))
        assert ws.record(0)["status"] == "interrupted"
        assert ws.record(0)["step"] == "running"
        assert "exp 000: halve the learning rate" in git_out(
            ws.path, "log", "--all", "--notes=magnet", "--format=%s"
        )
        assert ws.log_path(0).exists()


def check_after_crash(run_dir: Path, decision: str, label: str) -> None:
    wdir = run_dir / "workspace"
    # Wherever the edit was before recovery (files, HEAD, the experiment's ref), it must be
    # reachable from a ref afterwards.
    edited = any(
        "0.0005" in text
        for text in (
            (wdir / "train.py").read_text(),
            git_out(wdir, "show", "HEAD:train.py"),
            git_out(wdir, "show", f"{exp_ref(0)}:train.py"),
        )
    )
    with Workspace.open(run_dir) as ws:
        assert_consistent(ws)
        head_file = git_out(ws.path, "show", "HEAD:train.py")
        statuses = {h["exp"]: h["status"] for h in ws.history}
        status = statuses.get(0)
        assert status in (None, "interrupted", decision), label
        if ws.recovered is not None:
            assert ws.recovered.status == status, label
        if status == "keep":
            assert "LEARNING_RATE = 0.0005" in head_file, label
            assert git_out(ws.path, "rev-parse", BEST_TAG) == ws.kept, label
        else:
            assert "LEARNING_RATE = 0.001\n" in head_file, label
            assert git_out(ws.path, "tag", "--list", BEST_TAG) == "", label
        if status is not None:
            assert ws.record(0)["status"] == status, label
        if status in ("interrupted", "discard"):
            assert git_out(ws.path, "rev-parse", "--verify", exp_ref(0)), label
        if edited:  # nothing the experiment did is lost
            kept_it = "0.0005" in head_file
            saved = "0.0005" in git_out(ws.path, "show", f"{exp_ref(0)}:train.py")
            assert kept_it or saved, label
        # the workspace is usable again
        n = ws.next_exp
        ws.begin(n, "next")
        ws.apply([{"knob": "N_LAYER", "value": 2}])
        ws.commit()
        ws.discard(n, {})
        assert_consistent(ws)
    with Workspace.open(run_dir) as ws:
        assert ws.recovered is None, label


def test_controller_killed_at_every_step(make_ws):
    command = "python train.py"
    for decision in ("keep", "discard"):
        ws = make_ws(f"full-{decision}")
        ws.close()
        full = controller(ws.run_dir, decision, 0, command)
        out, err = full.communicate(timeout=60)
        assert full.returncode == 0, err
        total = int(out.split()[-1])
        assert total > 10
        check_after_crash(ws.run_dir, decision, "no crash")

        run_dirs = []
        for k in range(1, total + 1):
            w = make_ws(f"crash-{decision}-{k}")
            w.close()
            run_dirs.append(w.run_dir)
        for start in range(0, total, 6):  # a few at a time: 2 CPUs
            batch = [
                (k, controller(run_dirs[k - 1], decision, k, command))
                for k in range(start + 1, min(start + 6, total) + 1)
            ]
            for k, p in batch:
                _, err = p.communicate(timeout=60)
                assert p.returncode == -signal.SIGKILL, f"step {k}: {err}"
        for k in range(1, total + 1):
            check_after_crash(run_dirs[k - 1], decision, f"{decision}, killed before step {k}")
