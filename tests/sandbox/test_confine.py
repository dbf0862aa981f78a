"""Experiment code under bubblewrap, tried as an adversary would: real processes, real writes."""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import threading
import time
from pathlib import Path

import pytest
from attack import run_in  # tests/sandbox/attack.py

from sandbox.confine import Confinement, confinement
from sandbox.runner import RunLimits, processes_with_env, run_command

# the interpreter's own bin first, as sandbox.env.run_environ puts it (a pyenv shim on PATH
# lives in the home directory, which is not in the view)
PATH_ENV = {"PATH": os.pathsep.join([os.path.dirname(sys.executable), os.environ["PATH"]])}
pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None,
                                reason="bubblewrap is not installed (make setup installs it)")




WRITES = """
import json, os, sys
targets = json.loads(sys.argv[1] if len(sys.argv) > 1 else os.environ["TARGETS"])
result = {}
for name, path in targets.items():
    try:
        with open(path, "a") as f:
            f.write('{"exp": 0, "status": "keep", "metric": -1e9}\\n')
        result[name] = "written"
    except OSError as err:
        result[name] = type(err).__name__
print("RESULT " + json.dumps(result))
print("METRIC val_bpb=1.0")
"""


def test_writes_outside_outputs_fail(make_ws):
    ws = make_ws("confined")
    run_dir = ws.run_dir
    for name in ("experiments.jsonl", "control.jsonl"):
        (run_dir / name).write_text("")
    before = {p: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    targets = {
        "records": run_dir / "experiments.jsonl",
        "control": run_dir / "control.jsonl",
        "journal": run_dir / "sandbox.json",
        "git config": ws.git.git_dir / "config",
        "git hooks": ws.git.git_dir / "hooks" / "post-checkout",
        "logs": ws.log_path(0).with_name("exp-999.log"),
        "another run's outputs": run_dir / "outputs" / "exp-001" / "x",
        "home": Path.home() / ".magnet-probe",
        "/proc/sys": "/proc/sys/vm/drop_caches",
        "repository": Path(__file__).with_name("probe-written"),
        "workspace": ws.path / "scratch.txt",
        "outputs": ws.output_dir(0) / "checkpoint.bin",
        "tmp": "/tmp/probe",
        "TMPDIR": "/tmp/scratch/probe",
    }
    targets = {k: str(v) for k, v in targets.items()}
    result = run_in(ws, WRITES, env={"TARGETS": json.dumps(targets)})
    line = next(x for x in result.log_tail.splitlines() if x.startswith("RESULT "))
    outcome = json.loads(line[len("RESULT "):])
    allowed = {"outputs", "TMPDIR"}  # TMPDIR: private, gone after the run; the workspace: read
    assert {k for k, v in outcome.items() if v == "written"} == allowed, outcome
    assert result.status == "ok" and result.confinement == "bubblewrap"
    after = {p: p.read_bytes() for p in before}
    assert {p: b for p, b in after.items() if p.name != "sandbox.json"} == {
        p: b for p, b in before.items() if p.name != "sandbox.json"}
    assert not Path(targets["home"]).exists() and not Path(targets["repository"]).exists()
    assert not Path("/tmp/scratch/probe").exists()  # the private TMPDIR was not this machine's


def test_network_is_off_unless_the_goal_asks(make_ws):
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    accepted: list[bool] = []
    threading.Thread(target=lambda: (server.accept(), accepted.append(True)), daemon=True).start()
    probe = (f"import socket\ntry:\n    socket.create_connection(('127.0.0.1', {port}), 2)\n"
             "    print('CONNECTED')\nexcept OSError as e:\n    print('REFUSED', e)\n"
             "print('METRIC val_bpb=1')\n")
    ws = make_ws("net")
    result = run_in(ws, probe)
    assert "REFUSED" in result.log_tail and not accepted
    ws.discard(0, {})
    result = run_in(ws, probe, exp=1, confinement=Confinement(network=True))
    assert "CONNECTED" in result.log_tail
    server.close()


DAEMON = """
import os, sys, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        block = bytearray(int(os.environ["HOLD_MB"]) * 2**20)  # resident: touched by zeroing
        for i in range(0, len(block), 4096):
            block[i] = 1
        time.sleep(600)
    os._exit(0)
time.sleep(float(os.environ["PARENT_SECONDS"]))
print("METRIC val_bpb=1.0")
"""


def test_daemonised_grandchild_counts_in_memory_and_dies_with_the_run(make_ws):
    ws = make_ws("daemon")
    result = run_in(ws, DAEMON, env={"HOLD_MB": "600", "PARENT_SECONDS": "30"},
                    mem_limit=200 * 2**20)
    assert result.status == "oom", result.reason
    assert result.peak_rss >= 200 * 2**20  # a memory cgroup holds it at the limit
    assert processes_with_env("MAGNET_OUTPUT_DIR", str(ws.output_dir(0))) == []
    ws.discard(0, {})
    # the parent exits at once, leaving the daemon behind: it must not outlive the run
    result = run_in(ws, DAEMON, exp=1, env={"HOLD_MB": "10", "PARENT_SECONDS": "0.5"})
    assert result.status == "ok"
    time.sleep(0.2)
    assert processes_with_env("MAGNET_OUTPUT_DIR", str(ws.output_dir(1))) == []


def test_a_writer_of_gigabytes_ends_as_log_limit(make_ws):
    ws = make_ws("flood")
    writer = ("import sys\nline = b'x' * 1023 + b'\\n'\nfor _ in range(2 * 2**20):\n"
              "    sys.stdout.buffer.write(line)\n")
    start = time.monotonic()
    result = run_in(ws, writer, log_limit=5 * 2**20)
    assert result.status == "log_limit", result.reason
    assert "log limit of 5 MB" in result.reason
    size = ws.log_path(0).stat().st_size
    assert 5 * 2**20 <= size < 5 * 2**20 + 4096  # the cap, plus the sandbox's own last line
    assert time.monotonic() - start < 20  # stopped at the cap, not after 2 GB


def test_exit_statuses_are_named_by_what_happened(tmp_path):
    def run(command: str, **limits):
        return run_command(command, tmp_path, env=PATH_ENV,
                           limits=RunLimits(time_budget=10, grace=5, **limits),
                           confinement=confinement())

    killed = run("kill -9 $$")
    assert killed.status == "crashed" and "SIGKILL" in killed.reason
    assert "out-of-memory" in killed.reason  # says no OOM kill was seen, rather than guessing
    assert run("exit 3").reason == "crashed with exit code 3; see the log tail"
    hog = run("python -c 'b = bytearray(400 * 2**20); import time; time.sleep(30)'",
              mem_limit=100 * 2**20)
    assert hog.status == "oom" and "exceeded the limit of 100 MiB" in hog.reason
    slow = run("sleep 60")
    assert slow.status == "timeout"


def test_missing_bubblewrap_is_one_line_with_the_fix(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no bwrap there
    from sandbox.confine import ConfinementUnavailable

    with pytest.raises(ConfinementUnavailable) as err:
        confinement()
    assert "apt-get install bubblewrap" in str(err.value) and "--unconfined" in str(err.value)
    assert "\n" not in str(err.value)
    assert confinement(unconfined=True).name == "unconfined"


def test_hidden_paths_are_empty_inside(tmp_path):
    """The evaluator's model code gets the validation bytes through its pipe, never from disk."""
    data = tmp_path / "cache"
    data.mkdir()
    (data / "val.bin").write_text("the validation text")
    single = tmp_path / "corpus.txt"
    single.write_text("a text corpus")
    (tmp_path / "probe.py").write_text(
        f"import os\nprint('LISTED', os.listdir({str(data)!r}))\n"
        f"try:\n    print('READ', repr(open({str(single)!r}).read()))\n"
        "except OSError as err:\n    print('READ', type(err).__name__)\n")
    probe = "python probe.py"
    confined = confinement().with_paths(readable=[tmp_path], hidden=[data, single])
    result = run_command(probe, tmp_path, env=PATH_ENV,
                         limits=RunLimits(time_budget=10, grace=5), confinement=confined)
    assert "LISTED []" in result.log_tail and "READ PermissionError" in result.log_tail
    shown = confinement().with_paths(readable=[tmp_path])
    result = run_command(probe, tmp_path, env=PATH_ENV,
                         limits=RunLimits(time_budget=10, grace=5), confinement=shown)
    assert "LISTED ['val.bin']" in result.log_tail and "a text corpus" in result.log_tail
