"""A fork server inside the confinement: imports once, then forks a process per run.

    python sandbox/zygote_main.py ROLE FD      (started confined by sandbox.zygote)

ROLE names what its children become: `train` (sandbox/warm_child.py: told to go, it runs the
training script) or `serve` (bitnet/warm_server.py: a logits server). Before the first request
it imports what that role imports (torch: seconds), so a child costs a fork, not an interpreter.

FD is a SOCK_SEQPACKET socket to the controller. Messages are JSON:
  in   {"id": N, "own": [[PATH, WRITABLE], ...], "cover": [PATH, ...], "fresh": [PATH, ...],
        "fsize": BYTES or null} with the child's stdin, stdout and stderr attached (SCM_RIGHTS)
  out  {"ready": true} once imported; {"id": N, "pid": PID} per child (PID in this PID
       namespace); {"exit": PID, "status": S} when a child ends (S as Popen.returncode)
A child makes its private view first (sandbox.private_view: its own directories, nothing a
sibling wrote), then becomes the role's process; if the view cannot be made it exits with
status 126 before running anything. This process runs no experiment code and is not dumpable,
so a child (same uid) cannot trace it or read its memory.
"""

import contextlib
import importlib.util
import json
import os
import resource
import select
import signal
import socket
import sys
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENTRIES = {"train": ROOT / "sandbox" / "warm_child.py", "serve": ROOT / "bitnet" / "warm_server.py"}
SETUP_FAILED = 126
PR_SET_DUMPABLE = 4
MAX_MESSAGE = 1 << 16


def main() -> None:
    role, fd = sys.argv[1], int(sys.argv[2])
    # sys.path[0] is sandbox/: its modules must not shadow anything. A logits server needs
    # MAGNET's root instead (it is the controller's code); a training run, what `python
    # train.py` would find (warm_child.py says so)
    if role == "serve":
        sys.path[0] = str(ROOT)
    else:
        sys.path.pop(0)
    entry, view = _load(ENTRIES[role]), _load(ROOT / "sandbox" / "private_view.py")
    entry.preload()
    import ctypes

    ctypes.CDLL(None).prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    control = socket.socket(fileno=fd)
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # a handler, so the wake-up fd hears it
    control.send(json.dumps({"ready": True}).encode())
    while True:
        ready, _, _ = select.select([control, wake_read], [], [])
        if wake_read in ready:
            os.read(wake_read, 4096)
            _reap(control)
        if control in ready:
            message, fds, _, _ = socket.recv_fds(control, MAX_MESSAGE, 3)
            if not message:
                return  # the controller is gone; bubblewrap's init kills what is left
            request = json.loads(message)
            pid = os.fork()
            if pid == 0:
                _child(request, fds, entry, view, [control.fileno(), wake_read, wake_write])
            for each in fds:
                os.close(each)
            control.send(json.dumps({"id": request["id"], "pid": pid}).encode())


def _reap(control: socket.socket) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        control.send(json.dumps({"exit": pid, "status": os.waitstatus_to_exitcode(status)})
                     .encode())


def _child(request: dict, fds: list[int], entry, view, private: list[int]) -> None:
    """In the forked child: its stdio, its own session, its private view, then the role."""
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for each in private:
            os.close(each)
        for number, each in enumerate(fds):
            os.dup2(each, number)
        for each in fds:
            if each > 2:
                os.close(each)
        os.setsid()  # its own group: the controller kills the run's processes by it
        view.enter([(path, bool(writable)) for path, writable in request["own"]],
                           request["cover"], request["fresh"])
        if request.get("fsize") is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (request["fsize"], request["fsize"]))
    except BaseException as err:  # noqa: BLE001 - nothing of the run may start
        os.write(2, f"fork server: cannot set up the run's view: {err}\n".encode())
        os._exit(SETUP_FAILED)
    status = 0
    try:
        entry.run()
    except SystemExit as done:
        status = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
        if not isinstance(done.code, (int, type(None))):
            print(done.code, file=sys.stderr)
    except BaseException:  # noqa: BLE001 - as the interpreter would: traceback, status 1
        traceback.print_exc()
        status = 1
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(status)


def _load(path: Path):
    """The role's script as a module (its preload() and run()), not as __main__."""
    spec = importlib.util.spec_from_file_location(f"_magnet_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


if __name__ == "__main__":
    main()
