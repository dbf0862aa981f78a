"""Fork servers: one confined process imports torch once; each run's process is a fork of it.

A warm start (sandbox.warm, agent.scoring.warm_servers) saves a run the import of torch, but the
waiting process still imports it, seconds of CPU per run that the planner, the scorer or the
training itself then lack. A `Zygote` is started once, under bubblewrap, with the view every run
of its kind gets except that it sees the folder holding every run's own directory (the outputs
folder); it imports what the role imports (sandbox/zygote_main.py) and forks a child per run.
Each child, before it runs anything of the experiment, covers that folder, binds back only its
own run's directory and drops its capabilities (sandbox.private_view); the controller puts it in
the run's cgroups before telling it to go. A child costs about 25 ms instead of an interpreter
and its imports.

Used only where a run's limits are cgroups (`usable`): a child joins them after it is forked,
which needs the cgroup files; elsewhere runs start as before.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import psutil

from sandbox import zygote_main
from sandbox.confine import SCRATCH, Confinement
from sandbox.limits import Limits
from sandbox.proctree import ProcessTree
from sandbox.zygote_main import MAX_MESSAGE

MAIN = Path(zygote_main.__file__)
FORK_TIMEOUT = 10.0  # seconds for the fork server to answer a request
START_TIMEOUT = 120.0  # seconds for it to import (a loaded machine)


class ZygoteError(RuntimeError):
    """The fork server is gone or did not answer; the caller starts its process another way."""


def usable(confinement: Confinement, limits: Limits) -> bool:
    """Whether runs under `confinement` and `limits` can be forked (bubblewrap, and cgroups for
    both memory and processes: a forked child is put in them by the controller)."""
    return confinement.enabled and {"memory", "pids"} <= set(limits.cgroups)


class Zygote:
    """One fork server: `fork()` gives Popen-like children; `close()` stops it and them."""

    def __init__(self, role: str, confinement: Confinement, *, cwd: Path, env: Mapping[str, str],
                 key: tuple = (), python: str = sys.executable) -> None:
        """Start it (`role`: "train" or "serve"), confined by `confinement` (the view every
        child gets, plus the folders they cover), in `cwd` with `env`, on `python`. `key` says
        what it was started for (the caller compares it to decide whether it fits a new run)."""
        self.key, self.role, self.env = key, role, dict(env)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.control = ours
        self._ids = 0
        self._children: dict[int, ForkedChild] = {}
        argv = confinement.wrap([python, str(MAIN), role, str(theirs.fileno())])
        try:
            self.proc = subprocess.Popen(argv, cwd=cwd, env=dict(env), pass_fds=[theirs.fileno()],
                                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL, start_new_session=True)
        finally:
            theirs.close()
        self._ready = False
        self._inner: psutil.Process | None = None

    # --- talking to it ---------------------------------------------------------------------

    def ready(self, wait: float = 0.0) -> bool:
        """Whether it has imported and waits for requests (waiting up to `wait` seconds)."""
        if not self._ready:
            with contextlib.suppress(ZygoteError):
                self._receive(lambda m: m.get("ready") is True, wait)
                self._ready = True
        return self._ready

    def fork(self, *, own: Sequence[tuple[Path, bool]], cover: Sequence[Path],
             limits: Limits, fsize: int | None = None, stderr_to_stdout: bool = False,
             ) -> ForkedChild:
        """A child whose view holds its `own` directories ((path, writable)) and none of what
        else lies in `cover`, with a private TMPDIR and /dev/shm, put in `limits`' cgroups;
        pipes to its stdin and stdout (and stderr, unless it goes to stdout). ZygoteError when
        the server cannot give one."""
        if not self.ready(START_TIMEOUT):
            raise ZygoteError(f"the {self.role} fork server did not start")
        self._ids += 1
        stdin_r, stdin_w = os.pipe()
        stdout_r, stdout_w = os.pipe()
        stderr_r, stderr_w = (None, stdout_w) if stderr_to_stdout else os.pipe()
        request = {"id": self._ids, "own": [[str(p), w] for p, w in own],
                   "cover": [str(p) for p in cover], "fresh": [SCRATCH, "/dev/shm"],
                   "fsize": fsize}
        try:
            socket.send_fds(self.control, [json.dumps(request).encode()],
                            [stdin_r, stdout_w, stderr_w])
        except OSError as err:
            raise ZygoteError(f"the {self.role} fork server is gone ({err})") from None
        finally:
            for fd in {stdin_r, stdout_w, stderr_w}:
                os.close(fd)
        wanted = self._ids
        try:
            reply = self._receive(lambda m: m.get("id") == wanted, FORK_TIMEOUT)
            pid = self._host_pid(reply["pid"])
        except ZygoteError:
            for fd in (stdin_w, stdout_r, stderr_r):
                if fd is not None:
                    os.close(fd)
            raise
        child = ForkedChild(self, reply["pid"], pid, stdin_w, stdout_r, stderr_r)
        self._children[child.inner_pid] = child
        try:
            limits.admit(child.pid)
        except OSError as err:
            child.kill()
            raise ZygoteError(f"cannot put the forked process in its cgroup ({err})") from None
        return child

    def collect(self, wait: float = 0.0) -> None:
        """Read what the server said (children's exits): what is there, else wait up to `wait`
        seconds for one message."""
        with contextlib.suppress(ZygoteError):
            self._receive(lambda m: True, wait)
            while True:
                self._receive(lambda m: True, 0.0)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> None:
        """Stop the server and every child it forked (its PID namespace goes with it)."""
        tree = ProcessTree(self.proc.pid)
        tree.check()  # learns bubblewrap's inner processes, in sessions of their own
        tree.kill_all(signal.SIGKILL)
        for child in self._children.values():
            child.kill()
        self.proc.wait()
        tree.wait_gone(5.0)
        self.control.close()
        for child in self._children.values():
            child.gone()

    # --- internals -------------------------------------------------------------------------

    def _receive(self, wanted, wait: float) -> dict:
        """Messages until one `wanted(message)` is true (returned); exits are noted on the way.
        ZygoteError after `wait` seconds or when the server is gone."""
        end = time.monotonic() + wait
        while True:
            remaining = max(0.0, end - time.monotonic())
            if not select.select([self.control], [], [], remaining)[0]:
                raise ZygoteError(f"the {self.role} fork server did not answer in {wait:g} s")
            try:
                data = self.control.recv(MAX_MESSAGE)
            except OSError:
                data = b""
            if not data:
                for child in self._children.values():
                    child.gone()
                raise ZygoteError(f"the {self.role} fork server is gone")
            message = json.loads(data)
            if "exit" in message:
                child = self._children.pop(message["exit"], None)
                if child is not None:
                    child.returncode = message["status"]
            if wanted(message):
                return message

    def _host_pid(self, inner_pid: int) -> int:
        """The child's pid as this process sees it (the server's children, by their NSpid)."""
        if self._inner is None:
            for proc in psutil.Process(self.proc.pid).children(recursive=True):
                if proc.cmdline()[1:2] == [str(MAIN)]:
                    self._inner = proc
                    break
            else:
                raise ZygoteError(f"the {self.role} fork server's process was not found")
        for proc in self._inner.children():
            if _ns_pids(proc.pid)[-1:] == [inner_pid]:
                return proc.pid
        raise ZygoteError(f"the {self.role} fork server's child {inner_pid} was not found")


class ForkedChild:
    """A forked child as the runner uses a Popen: pid (this namespace's), pipes, poll, wait."""

    def __init__(self, zygote: Zygote, inner_pid: int, pid: int, stdin: int, stdout: int,
                 stderr: int | None) -> None:
        self.zygote, self.inner_pid, self.pid = zygote, inner_pid, pid
        self.stdin = os.fdopen(stdin, "wb")
        self.stdout = os.fdopen(stdout, "rb")
        self.stderr = os.fdopen(stderr, "rb") if stderr is not None else None
        self.returncode: int | None = None
        self.args = [str(MAIN), zygote.role]

    def poll(self) -> int | None:
        if self.returncode is None:
            self.zygote.collect()
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        end = None if timeout is None else time.monotonic() + timeout
        while self.returncode is None:
            remaining = 1.0 if end is None else end - time.monotonic()
            if remaining <= 0:
                raise subprocess.TimeoutExpired(self.args, timeout or 0.0)
            self.zygote.collect(min(remaining, 1.0))
        return self.returncode

    def send_signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def gone(self) -> None:
        """Its server is gone, so no status will come: a killed process's, once it is gone."""
        if self.returncode is None:
            with contextlib.suppress(psutil.Error):
                psutil.Process(self.pid).wait(5.0)
            self.returncode = -signal.SIGKILL


def _ns_pids(pid: int) -> list[int]:
    """A process's pid in each PID namespace it is in, outermost first (/proc's NSpid)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("NSpid:"):
                return [int(x) for x in line.split()[1:]]
    except (OSError, ValueError):
        pass
    return []
