"""RunReader reads a live run (lock held by its Workspace) as plain git and files say it is."""

import json
import os
import subprocess
import sys

import pytest

from sandbox import RunReader, SearchReplace, Workspace, WorkspaceError, exp_ref
from sandbox.layout import LOCK_FILE, log_path, output_dir


def edit(old: str, new: str) -> SearchReplace:
    return SearchReplace("train.py", old, new)


@pytest.fixture
def live(make_ws):
    """A workspace still open (its lock held): a baseline, a kept and a discarded experiment,
    and a fourth begun but never committed."""
    ws = make_ws(goal="minimize")
    ws.begin(0, "baseline")
    ws.run("python train.py", time_budget=1, metric="val_bpb")
    ws.keep(0, {"metric": 1.996}, best=True, status="baseline")
    ws.begin(1, "more layers")
    ws.apply([edit("N_LAYER = 4", "N_LAYER = 6")])
    ws.run("python train.py", time_budget=1, metric="val_bpb")
    ws.run("python train.py", time_budget=1, seed=2, metric="val_bpb", repeat=1)
    ws.keep(1, {"metric": 1.994}, best=True)
    ws.begin(2, "gelu")
    ws.apply([edit('ACTIVATION = "relu"', 'ACTIVATION = "gelu"')])
    ws.commit()
    ws.discard(2, {"metric": 2.5, "reason": "worse"})
    ws.begin(3, "never committed")
    return ws


def test_reader_sees_what_the_workspace_wrote(live, git):
    reader = RunReader(live.run_dir)
    assert reader.history() == live.history
    assert reader.note(2) == live.record(2)
    assert reader.note(2)["status"] == "discard" and reader.note(2)["reason"] == "worse"
    assert reader.note(3) is None and reader.commit(3) is None
    assert reader.commit(2) == git(live.git.git_dir, "rev-parse", exp_ref(2))
    # exp 2 started from exp 1's commit: its diff holds only its own change
    assert reader.diff(2) == live.diff(2)
    assert '-ACTIVATION = "relu"\n+ACTIVATION = "gelu"' in reader.diff(2)
    assert "+N_LAYER" not in reader.diff(2)  # exp 1's change is in its base
    between = reader.diff_between(0, 2)
    assert "+N_LAYER = 6" in between and '+ACTIVATION = "gelu"' in between
    with pytest.raises(WorkspaceError, match="experiment 003 has no commit"):
        reader.diff(3)
    with pytest.raises(WorkspaceError, match="experiment 003 has no commit to compare"):
        reader.diff_between(1, 3)
    assert reader.best() == {"exp": 1, "commit": git(live.git.git_dir, "rev-parse", "magnet/best")}


def test_logs_and_outputs_have_one_name_each(live):
    reader = RunReader(live.run_dir)
    for repeat in (0, 1):
        assert reader.log_path(1, repeat) == live.log_path(1, repeat) \
            == log_path(live.run_dir, 1, repeat)
        assert reader.output_dir(1, repeat) == live.output_dir(1, repeat) \
            == output_dir(live.run_dir, 1, repeat)
    assert reader.log_path(1, 1).name == "exp-001-run2.log"
    assert reader.output_dir(1, 1).name == "exp-001-run2"
    assert "METRIC val_bpb=" in reader.log_tail(1, 5, repeat=1)
    assert json.loads((reader.output_dir(1, 1) / "metrics.json").read_text()) == {"budget": 1}
    assert reader.log_tail(1, 1) == "METRIC steps=10"
    assert reader.log_tail(2, 5) is None  # never ran


def test_reading_takes_no_lock(live, tmp_path):
    """While the controller holds the lock the reader names it, and a reader never blocks a
    controller: the workspace reopens at once after the reader is done."""
    reader = RunReader(live.run_dir)
    known, pid = reader.lock_holder()
    if known:  # /proc/locks is there (Linux)
        assert pid == os.getpid()
    reader.history(), reader.diff(1), reader.note(1), reader.best()
    live.close()
    assert reader.lock_holder() == (known, None)
    # another process takes the lock at once: nothing of the reader holds it
    code = ("import sys; from sandbox import Workspace; "
            "Workspace.open(sys.argv[1]).close(); print('opened')")
    done = subprocess.run([sys.executable, "-c", code, str(live.run_dir)], capture_output=True,
                          text=True, timeout=60)
    assert done.stdout.strip() == "opened", done.stderr
    assert (live.run_dir / LOCK_FILE).exists()


def test_a_run_without_a_workspace_reads_as_empty(tmp_path):
    reader = RunReader(tmp_path / "nothing-here")
    assert reader.history() == [] and reader.journal() == {}
    assert reader.commit(0) is None and reader.note(0) is None and reader.best() is None
    assert reader.lock_holder()[1] is None
    with pytest.raises(WorkspaceError, match="no workspace.git/ repository"):
        reader.diff(0)


def test_workspace_still_exports_the_names(make_ws):
    from sandbox import workspace

    assert workspace.exp_ref(7) == exp_ref(7) == "refs/magnet/exp/007"
    assert isinstance(make_ws(), Workspace)


def test_the_tail_of_a_huge_log_costs_what_a_small_one_does(tmp_path):
    import tracemalloc

    from sandbox.reader import read_tail

    log = tmp_path / "exp-000.log"
    with open(log, "wb") as f:
        f.truncate(2 * 2**30)  # 2 GB (sparse), as a run that printed without end would leave
        f.seek(0, 2)
        f.write(b"".join(b"line %d\n" % i for i in range(100)))
    tracemalloc.start()
    tail = read_tail(log, 3)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert tail == "line 97\nline 98\nline 99"
    assert peak < 2 * 2**20
    # a last line of 100 MB: at most max_bytes are read, not the file
    with open(log, "ab") as f:
        f.write(b"x" * (100 * 2**20))
    tracemalloc.start()
    tail = read_tail(log, 3, max_bytes=2**20)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert set(tail) == {"x"} and peak < 8 * 2**20
