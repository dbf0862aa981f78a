"""Limits on code from the workspace, tried as hostile experiment code would: memory hidden in
tmpfs, a fork loop, an output directory filled past its cap (real processes, real bubblewrap)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sandbox import limits as limits_module
from sandbox.confine import confinement
from sandbox.limits import cgroups_made_by, run_limits
from sandbox.runner import RunLimits, processes_with_env, run_command

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None,
                                reason="bubblewrap is not installed (make setup installs it)")
PATH = os.pathsep.join([os.path.dirname(sys.executable), os.environ["PATH"]])
MB = 2**20


@pytest.fixture(params=["cgroup", "fallback"])
def enforced(request, monkeypatch) -> str:
    """Each limit twice: by a cgroup where this machine has one, and by the fallbacks alone."""
    if request.param == "fallback":
        monkeypatch.setattr(limits_module, "_parents", dict)
    elif not limits_module._parents():
        pytest.skip("no cgroup can be made here")
    return request.param


def run(tmp_path: Path, script: str, **limits):
    """`script` (Python) confined, with `limits`; its output directory is tmp_path/out."""
    (tmp_path / "attack.py").write_text(script)
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    confined = confinement().with_paths(readable=[tmp_path], writable=[out])
    env = {"PATH": PATH, "MAGNET_OUTPUT_DIR": str(out)}
    return run_command("python attack.py", tmp_path, env=env, output_dir=out,
                       limits=RunLimits(time_budget=20, grace=5, **limits), confinement=confined)


FILL = """
import os, sys, time
path = os.path.join(sys.argv[1] if len(sys.argv) > 1 else os.environ["TMPDIR"], "fill")
with open(path, "wb") as f:
    for _ in range(400):  # 400 MiB, far past the limit, a MiB at a time
        f.write(b"x" * 2**20)
        f.flush()
        time.sleep(PACE)
print("FILLED", flush=True)
time.sleep(30)
"""


@pytest.mark.parametrize("where", ["$TMPDIR", "/dev/shm"])
def test_memory_hidden_in_a_tmpfs_counts(tmp_path, where, enforced):
    script = FILL if where == "$TMPDIR" else FILL.replace("len(sys.argv) > 1", "True").replace(
        "sys.argv[1]", repr(where))
    # a cgroup stops the fill at once; polling sees it within a poll, which on a loaded machine
    # may come late: the fallback's bound is its poll times the fill rate, so it is tried on a
    # fill of 200 MiB/s (CI saw one past 400 MiB at full speed, under a load of 6)
    script = script.replace("PACE", "0" if enforced == "cgroup" else "0.005")
    start = time.monotonic()
    result = run(tmp_path, script, mem_limit=150 * MB)
    assert result.status == "oom", (result.status, result.reason, result.log_tail)
    assert "FILLED" not in result.log_tail  # stopped on the way, not after 400 MiB
    assert time.monotonic() - start < 15


FORK_LOOP = """
import os, time
started = 0
for _ in range(3000):  # bounded, should the limit fail
    try:
        if os.fork() == 0:
            time.sleep(120)
            os._exit(0)
        started += 1
    except OSError:
        print("REFUSED after", started, flush=True)
        time.sleep(0.01)
print("STARTED", started, flush=True)
time.sleep(120)
"""


def test_a_fork_loop_stops_at_the_limit_and_leaves_nothing(tmp_path, enforced):
    start = time.monotonic()
    result = run(tmp_path, FORK_LOOP, max_processes=40)
    assert result.status == "crashed", (result.status, result.reason)
    assert "more than the limit of 40 processes" in result.reason
    assert "raise max_processes in the goal" in result.reason
    assert "STARTED 3000" not in result.log_tail
    assert time.monotonic() - start < 15  # stopped, not left to run out its wall time
    time.sleep(0.2)
    assert processes_with_env("MAGNET_OUTPUT_DIR", str(tmp_path / "out")) == []
    assert cgroups_made_by(os.getpid()) == set()  # each run's cgroup is removed with it


MANY_FILES = """
import os, time
out = os.environ["MAGNET_OUTPUT_DIR"]
for i in range(200):  # 200 files of 1 MiB: each under any per-file cap, at most 100 MiB/s
    with open(os.path.join(out, f"shard-{i}.bin"), "wb") as f:
        f.write(os.urandom(2**20))
    time.sleep(0.01)
print("WROTE ALL", flush=True)
time.sleep(30)
"""
ONE_FILE = """
import os
with open(os.path.join(os.environ["MAGNET_OUTPUT_DIR"], "checkpoint.bin"), "wb") as f:
    for _ in range(100):
        f.write(b"x" * 2**20)
print("WROTE ALL", flush=True)
"""


@pytest.mark.parametrize("script", [MANY_FILES, ONE_FILE], ids=["many files", "one file"])
def test_an_output_directory_past_its_cap_stops_the_run(tmp_path, script, enforced):
    result = run(tmp_path, script, output_limit=30 * MB)
    assert result.status == "output_limit", (result.status, result.reason, result.log_tail)
    assert "output limit of 30 MB" in result.reason and "output_limit_mb" in result.reason
    assert "WROTE ALL" not in result.log_tail
    # stopped well before its 200 or 100 MiB: where no rlimit can (many files), the size is
    # polled every 0.1 s; a writer at full speed on a loaded machine got 32 and 66 MiB past the
    # cap before a poll, hence the steady 100 MiB/s one (one file cannot pass the cap at all)
    used = sum(p.stat().st_size for p in (tmp_path / "out").iterdir())
    assert used < 90 * MB


def test_limits_say_how_they_are_enforced():
    limits = run_limits(memory=100 * MB, processes=10, fsize=None)
    made = dict(limits.cgroups)
    try:
        assert "processes:" in limits.how and "memory:" in limits.how
        if limits.cgroups:  # this machine lets MAGNET make cgroups: one per run, limits set
            assert all(p.name.startswith(f"magnet-{os.getpid()}-") for p in
                       limits.cgroups.values())
            if "pids" in limits.cgroups:
                assert (limits.cgroups["pids"] / "pids.max").read_text().strip() == "10"
    finally:
        limits.remove()
    assert all(not p.exists() for p in made.values())


def test_a_wrapped_command_is_held_to_its_memory_limit(enforced):
    """What the evaluator's model servers start through (Limits.wrap, spawned by a caller that
    is not the runner): a cgroup of its own per process, or limit_exec watching it."""
    hog = [sys.executable, "-c", "import time; b = b'x' * (400 * 2**20); time.sleep(30)"]
    start = time.monotonic()
    limits = limits_module.run_limits(memory=100 * MB, processes=16, fsize=None, nest=True,
                                      watch=True)
    try:
        done = subprocess.run(limits.wrap(confinement().wrap(hog, {"PATH": PATH})),
                              capture_output=True, text=True, timeout=60)
        killed_by_cgroup = limits.oom_kills() > 0
    finally:
        limits.remove()
    assert done.returncode in (137, -9), (done.returncode, done.stderr)
    assert killed_by_cgroup or "exceeded the limit of 100 MiB" in done.stderr
    assert time.monotonic() - start < 20


def test_the_evaluate_command_is_held_to_the_limits(make_ws, enforced):
    """The goal's `evaluate:` command runs code of the workspace too (it may import it)."""
    ws = make_ws("evaluated")
    ws.begin(0, "honest")
    assert ws.run("python train.py", time_budget=10).status == "ok"
    hog = "python -c 'import time; b = b\"x\" * (400 * 2**20); time.sleep(30)'"
    result = ws.evaluate(hog, timeout=20, mem_limit=100 * MB)
    assert result.status == "oom", (result.status, result.reason)
    forks = ws.evaluate(f"python {tmp_script(ws, FORK_LOOP)}", timeout=20, max_processes=30)
    assert forks.status == "crashed" and "limit of 30 processes" in forks.reason


def tmp_script(ws, script: str) -> str:
    """`script` saved where the evaluate command may read it (the workspace, read-only there)."""
    path = ws.path / "evaluate_probe.py"
    path.write_text(script)
    return str(path)
