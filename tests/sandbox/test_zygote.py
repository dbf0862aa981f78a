"""sandbox.zygote: runs forked from one confined fork server, attacked as experiment code would.

Each test forks children of a real fork server (bubblewrap, cgroups: this machine runs the
suite as root) that run a hostile script as the training role does, then checks what they saw
and what they left."""

import json
import os
import signal
from pathlib import Path

import psutil
import pytest

from sandbox.confine import confinement
from sandbox.limits import run_limits
from sandbox.zygote import ForkedChild, Zygote, usable

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="cgroups need root here")

PROBE = r'''
import ctypes, json, os, sys
libc = ctypes.CDLL(None, use_errno=True)
out = os.environ["MAGNET_OUTPUT_DIR"]
outputs = os.path.dirname(out)
seen = {"uid": os.getuid(), "outputs": sorted(os.listdir(outputs)), "cwd_list": None}

def attempt(name, action):
    try:
        action()
        seen[name] = "done"
    except OSError as err:
        seen[name] = err.strerror

def read(path):
    with open(path, "rb") as f:
        f.read(1)

attempt("other_run", lambda: read(os.path.join(outputs, "exp-000", "model.safetensors")))
attempt("write_outputs", lambda: open(os.path.join(outputs, "planted"), "w").write("x"))
attempt("write_dev", lambda: open("/dev/planted", "w").write("x"))
attempt("server_memory", lambda: read(f"/proc/{os.getppid()}/mem"))
seen["caps"] = open("/proc/self/status").read().split("CapEff:")[1].split()[0]
seen["umount"] = libc.umount2(outputs.encode(), 2) == 0
libc.unshare(0x10000000 | 0x00020000)  # a user and mount namespace of its own: caps in it
seen["umount_nested"] = libc.umount2(outputs.encode(), 2) == 0
seen["remount_rw"] = libc.mount(None, outputs.encode(), None, 32, None) == 0
# what an earlier run left where this one looks, then what this one leaves
LEFT = ("/tmp/scratch/left", "/dev/shm/left")
seen["found"] = [p for p in LEFT if os.path.exists(p)]
seen["sysv_found"] = libc.shmget(0x4D41474E, 4096, 0o666) >= 0  # without IPC_CREAT
for path in LEFT:
    attempt("leave " + path, lambda p=path: open(p, "w").write("x"))
seen["sysv_made"] = libc.shmget(0x4D41474E, 4096, 0o1666) >= 0  # IPC_CREAT: outlives the run
open(os.path.join(out, "done"), "w").write("x")
print("SEEN " + json.dumps(seen))
'''


@pytest.fixture(scope="module")
def outputs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("zygote")
    (root / "ws").mkdir()
    (root / "ws" / "train.py").write_text(PROBE)
    (root / "outputs" / "exp-000").mkdir(parents=True)
    (root / "outputs" / "exp-000" / "model.safetensors").write_text("another run's weights")
    return root / "outputs"


@pytest.fixture(scope="module")
def zygote(outputs: Path):
    shared = confinement().with_paths(readable=[outputs.parent / "ws"], writable=[outputs])
    server = Zygote("train", shared, cwd=outputs.parent / "ws",
                    env={"PATH": os.environ["PATH"], "PYTHONUNBUFFERED": "1"})
    assert server.ready(120)
    yield server
    server.close()


def run_child(zygote: Zygote, outputs: Path, name: str, *, memory: int = 2**30,
              processes: int = 64, script: str = "train.py") -> tuple[ForkedChild, str]:
    staging = outputs / name
    staging.mkdir()
    limits = run_limits(memory=memory, processes=processes, fsize=2**20)
    assert usable(confinement(), limits)
    child = zygote.fork(own=[(staging, True)], cover=[outputs], limits=limits, fsize=2**20,
                        stderr_to_stdout=True)
    order = {"script": script, "env": {"MAGNET_OUTPUT_DIR": str(staging)}, "unset": [],
             "threads": "1"}
    child.stdin.write(json.dumps(order).encode() + b"\n")
    child.stdin.close()
    text = child.stdout.read().decode()
    child.wait(60)
    left = [int(pid) for d in limits.cgroups.values()
            for pid in (d / "cgroup.procs").read_text().split()]
    limits.remove()  # as the runner does after every run
    assert not [pid for pid in left if psutil.pid_exists(pid)]
    return child, text


def seen(text: str) -> dict:
    return json.loads(next(line[5:] for line in text.splitlines() if line.startswith("SEEN ")))


def test_a_forked_run_sees_only_its_own_directory_and_cannot_undo_that(zygote, outputs):
    child, text = run_child(zygote, outputs, ".warm-a")
    assert child.returncode == 0, text
    view = seen(text)
    assert view["outputs"] == [".warm-a"]  # exp-000 and the fork server's view: gone
    assert view["other_run"] == "No such file or directory"
    assert view["write_outputs"] == view["write_dev"] == "Read-only file system"
    assert view["server_memory"] in ("Permission denied", "Operation not permitted")
    assert not view["umount"] and not view["umount_nested"] and not view["remount_rw"]
    assert view["uid"] == 1000 and view["caps"] == "0000000000000000"
    assert (outputs / ".warm-a" / "done").is_file()
    assert not (outputs / "planted").exists()


def test_nothing_a_forked_run_leaves_reaches_the_next(zygote, outputs):
    for name in (".warm-b", ".warm-c"):  # the second looks for what the first left
        child, text = run_child(zygote, outputs, name)
        view = seen(text)
        assert child.returncode == 0 and view["sysv_made"]
        assert view["found"] == [] and view["sysv_found"] is False
        assert view["outputs"] == [name]


def test_limits_hold_for_a_forked_run(zygote, outputs):
    ws = outputs.parent / "ws"
    (ws / "hog.py").write_text("x = bytearray(600 * 2**20)\nprint('ALLOCATED')\n")
    child, text = run_child(zygote, outputs, ".warm-d", memory=300 * 2**20, script="hog.py")
    assert child.returncode == -signal.SIGKILL and "ALLOCATED" not in text
    (ws / "forks.py").write_text(
        "import os, time\nn = 0\ntry:\n    while True:\n        if os.fork() == 0:\n"
        "            os.closerange(0, 3)\n            time.sleep(60)\n            os._exit(0)\n"
        "        n += 1\nexcept OSError:\n    print('STOPPED', n)\n")  # sleepers outlive it
    child, text = run_child(zygote, outputs, ".warm-e", processes=20, script="forks.py")
    assert child.returncode == 0 and "STOPPED" in text
    assert int(text.split("STOPPED")[1].split()[0]) < 20  # run_child: none left afterwards


def test_a_run_that_kills_its_fork_server_only_loses_the_speed(outputs):
    shared = confinement().with_paths(readable=[outputs.parent / "ws"], writable=[outputs])
    server = Zygote("train", shared, cwd=outputs.parent / "ws", env={"PATH": os.environ["PATH"]})
    ws = outputs.parent / "ws"
    (ws / "kill.py").write_text("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n")
    try:
        child, _ = run_child(server, outputs, ".warm-f", script="kill.py")
        assert child.returncode is not None  # told, or taken as killed: never waited on forever
        assert not server.alive() or server.proc.wait(10) is not None
    finally:
        server.close()
