"""ProcessTree.check walks the kernel's child lists (/proc/PID/task/TID/children) where psutil
scans every process: the two must find the same tree, memory and count."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator

import psutil
import pytest

from sandbox import proctree
from sandbox.proctree import ProcessTree

# A run with what the walk must not miss: a child forked by a thread other than the main one
# (it is in that thread's child list), a grandchild under a shell that left the session
# (setsid), a zombie. Five processes with the leader, all started before it says "ready".
RUN_PY = """\
import os, subprocess, threading, time
def fork_and_stay():  # a thread's children move to another thread only when it ends
    kept.append(subprocess.Popen(["sleep", "30"]))
    forked.set()
    time.sleep(30)
kept, forked = [], threading.Event()
threading.Thread(target=fork_and_stay, daemon=True).start()
forked.wait()
# "started" once the background child is `sleep`, not still the shell it forked from (its
# memory changes at the exec): the tree must hold still while the two ways read it
shell = subprocess.Popen(["setsid", "sh", "-c", "sleep 30 & until read c < /proc/$!/comm && "
                          "[ $c = sleep ]; do :; done; echo started; wait"],
                         stdout=subprocess.PIPE, text=True)
shell.stdout.readline()
zombie = subprocess.Popen(["true"])
os.waitid(os.P_PID, zombie.pid, os.WEXITED | os.WNOWAIT)  # exited, not reaped
print("ready", flush=True)
time.sleep(30)
"""
PROCESSES = 5


@pytest.fixture
def run() -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen([sys.executable, "-c", RUN_PY], stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    yield proc
    tree = ProcessTree(proc.pid)
    tree.check()
    tree.kill_all(signal.SIGKILL)
    proc.wait()
    tree.wait_gone(5.0)
    proc.stdout.close()


@pytest.mark.skipif(not proctree._CHILD_LISTS, reason="the kernel keeps no child lists")
def test_the_walk_finds_what_the_scan_finds(run: subprocess.Popen[str]) -> None:
    walked, scanned = ProcessTree(run.pid), ProcessTree(run.pid)
    rss = walked.check()
    pids = scanned._members_by_scan()
    assert walked.count == len(pids) == PROCESSES
    assert sorted(walked.seen) == sorted(pids)
    assert rss == sum(psutil.Process(pid).memory_info().rss for pid in pids) > 0
    assert walked.peak == rss


def test_without_child_lists_the_scan_is_used(run: subprocess.Popen[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(proctree, "_CHILD_LISTS", False)
    tree = ProcessTree(run.pid)
    assert tree.check() > 0
    assert tree.count == len(tree.seen) == PROCESSES


def test_a_gone_leader_has_no_tree() -> None:
    proc = subprocess.Popen(["true"])
    tree = ProcessTree(proc.pid)
    proc.wait()
    assert tree.check() == 0 and tree.count == 0 and not tree.seen
