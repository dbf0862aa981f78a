"""The allow-listed view of the machine, tried as hostile experiment code would: reads of what a
run was not given, a host Unix socket, root inside, writes into its own workspace."""

from __future__ import annotations

import json
import os
import shutil
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from attack import run_in  # tests/sandbox/attack.py

from agent.scoring.private_paths import private_paths
from ledger.book import ENV_NAME as LEDGER_ENV
from sandbox.confine import REPO_ROOT, confinement, user_namespace

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None,
                                reason="bubblewrap is not installed (make setup installs it)")

READS = """
import json, os
result = {}
for name, path in json.loads(os.environ["TARGETS"]).items():
    try:
        if os.path.isdir(path):
            result[name] = "listed " + ",".join(sorted(os.listdir(path)))
            if result[name] == "listed ":
                result[name] = "empty"
        else:
            with open(path, "rb") as f:
                result[name] = "read " + f.read(64).decode(errors="replace")
    except OSError as err:
        result[name] = type(err).__name__
print("RESULT " + json.dumps(result))
print("METRIC val_bpb=1.0")
"""




def outcome(result) -> dict:
    line = next(x for x in result.log_tail.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


@pytest.fixture
def planted() -> Iterator[dict[str, Path]]:
    """A secret in the home directory and one in the repository's runs/ (neither in /tmp,
    which an empty tmpfs hides on any code), removed afterwards."""
    tag = uuid.uuid4().hex[:8]
    home = Path.home() / f".magnet-probe-{tag}"
    runs = REPO_ROOT / "runs" / f"probe-{tag}"
    runs.mkdir(parents=True)
    home.write_text("home secret")
    (runs / "experiments.jsonl").write_text("another run's record")
    try:
        yield {"home": home, "repo runs": runs / "experiments.jsonl"}
    finally:
        home.unlink()
        shutil.rmtree(runs)


def test_reads_outside_the_allow_list_fail(make_ws, tmp_path, planted, monkeypatch):
    ws = make_ws("reader")
    other = ws.run_dir.parent / "other-run"
    other.mkdir()
    (other / "experiments.jsonl").write_text("another run's record")
    (ws.run_dir / "experiments.jsonl").write_text("this run's own record")
    # a data directory the run may read, holding the ledger and the goal's key: still hidden
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.txt").write_text("training text")
    (data / "ledger.db").write_text("ledger rows")
    (data / "claims.key").write_text("PRIVATE KEY")
    monkeypatch.setenv(LEDGER_ENV, str(data / "ledger.db"))
    hidden = private_paths(keys=[data / "claims.key"])
    confined = confinement().with_paths(readable=[data], hidden=hidden)
    targets = {**{k: str(v) for k, v in planted.items()},
               "shadow": "/etc/shadow", "home dir": str(Path.home()),
               "other run": str(other / "experiments.jsonl"), "runs dir": str(ws.run_dir.parent),
               "own records": str(ws.run_dir / "experiments.jsonl"),
               "ledger": str(data / "ledger.db"), "key": str(data / "claims.key"),
               "repo root": str(REPO_ROOT), "/run": "/run", "/var": "/var",
               "training data": str(data / "train.txt")}
    result = run_in(ws, READS, env={"TARGETS": json.dumps(targets)}, confinement=confined)
    seen = outcome(result)
    assert seen.pop("training data") == "read training text", seen
    assert not [k for k, v in seen.items() if v.startswith("read ")], seen
    assert seen["ledger"] == "PermissionError" and seen["key"] == "PermissionError"
    assert seen["shadow"] == "FileNotFoundError" and seen["home"] == "FileNotFoundError"
    assert "runs" not in seen["repo root"] and "other-run" not in seen["runs dir"], seen
    assert result.status == "ok"


def test_a_host_unix_socket_cannot_be_reached(make_ws):
    folder = Path.home() / f".magnet-sock-{uuid.uuid4().hex[:8]}"  # not /tmp: hidden anyway
    folder.mkdir()
    path = folder / "agent.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen()
    probe = ("import socket, sys\ns = socket.socket(socket.AF_UNIX)\ntry:\n"
             f"    s.connect({str(path)!r})\n    print('CONNECTED')\n"
             "except OSError as err:\n    print('REFUSED', type(err).__name__)\n"
             "print('METRIC val_bpb=1')\n")
    try:
        ws = make_ws("socket")
        result = run_in(ws, probe)
        server.setblocking(False)
        with pytest.raises(BlockingIOError):  # nobody connected
            server.accept()
    finally:
        server.close()
        shutil.rmtree(folder)
    assert "REFUSED FileNotFoundError" in result.log_tail, result.log_tail


@pytest.mark.skipif(shutil.which("bwrap") is None or not user_namespace(shutil.which("bwrap")),
                    reason="the kernel refuses bubblewrap a user namespace here")
def test_experiment_code_is_not_root_and_cannot_write_its_workspace(make_ws):
    ws = make_ws("uid")
    probe = ("import os\nprint('IDS', os.getuid(), os.getgid(), os.geteuid())\n"
             "for name in ('train.py', 'new.py'):\n    try:\n"
             "        open(name, 'a').write('x = 1\\n')\n        print('WROTE', name)\n"
             "    except OSError as err:\n        print('REFUSED', name, type(err).__name__)\n"
             "import config\n"  # an import: no __pycache__ may be written beside it
             "print('METRIC val_bpb=1')\n")
    before = (ws.path / "train.py").read_text()
    result = run_in(ws, probe)
    assert "IDS 1000 1000 1000" in result.log_tail, result.log_tail
    assert "REFUSED train.py OSError" in result.log_tail
    assert "REFUSED new.py OSError" in result.log_tail and "WROTE" not in result.log_tail
    assert (ws.path / "train.py").read_text() == before and not (ws.path / "new.py").exists()
    assert not (ws.path / "__pycache__").exists()
    assert result.confinement == "bubblewrap"
    assert os.stat(ws.output_dir(0)).st_uid == os.getuid()  # its files are still the caller's


def test_where_the_kernel_refuses_a_user_namespace_runs_say_so(make_ws, monkeypatch):
    from sandbox import confine

    monkeypatch.setattr(confine, "user_namespace", lambda bwrap: False)
    ws = make_ws("no-userns")
    result = run_in(ws, "import os\nprint('UID', os.getuid())\nprint('METRIC val_bpb=1')\n")
    assert result.status == "ok" and result.confinement == confine.CONFINED_AS_ROOT
    assert f"UID {os.getuid()}" in result.log_tail  # the caller's own user, not 1000
