"""The scorer's side of one logits server (bitnet.logits_server): the process, started or
given, its requests with a deadline, its replies checked (exact size, finite), and the process
always reaped. bitnet.score drives two of them.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import signal
import subprocess
import time
from collections.abc import Callable, Sequence

import numpy as np

from bitnet.logits_server import HEADER, VOCAB, id_dtype

_STDERR_TAIL = 4096  # bytes of a server's stderr kept for error messages
# the argv that starts a server, or a callable that gives one already started (warm, forked)
ServerStart = Sequence[str] | Callable[[str], subprocess.Popen]
EXIT_WAIT = 10.0  # seconds to wait for a server that closed its pipes to exit
# the reply pipe's buffer (Linux's default most for anyone): a batch's 4 MiB reply in 4 reads,
# not 64 of 64 KiB; each read waits for this process's GIL, which another thread (the
# planner's load beside a scoring) holds up to 5 ms at a time, and the servers wait meanwhile
# (measured: the 4-layer baseline's two splits took 12.1-12.4 s beside a busy thread against
# 4.2-4.4 s alone; 6.2-6.9 s with this buffer, where two servers and the thread share 2 cores)
REPLY_PIPE_BYTES = 1 << 20


class ScoreError(RuntimeError):
    """The checkpoint could not be scored; the message is one line saying what happened."""


class LogitsClient:
    """One logits server process: requests with deadlines, replies checked, always reaped."""

    def __init__(self, argv: ServerStart, role: str, deadline: float, timeout: float,
                 vocab: int = VOCAB) -> None:
        """`vocab`: the checkpoint's vocabulary size (validated by the caller): the ids' width on
        the wire and the logits a position's reply holds."""
        self.role, self.deadline, self.timeout = role, deadline, timeout
        self.vocab, self.id_dtype = vocab, id_dtype(vocab)
        self.stderr_tail = bytearray()
        if callable(argv):  # already started (agent.scoring.warm_servers): told to go
            self.proc = argv(role)
        else:
            try:
                self.proc = subprocess.Popen(
                    list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE, start_new_session=True,  # one group to kill
                )
            except OSError as err:
                raise ScoreError(f"cannot start the {role} logits server {argv[0]!r}: "
                                 f"{err}") from err
        self.stdin, self.stdout = self.proc.stdin.fileno(), self.proc.stdout.fileno()
        self.stderr: int | None = self.proc.stderr.fileno()
        for fd in (self.stdin, self.stdout, self.stderr):
            os.set_blocking(fd, False)
        with contextlib.suppress(OSError, AttributeError):  # Linux only; a smaller one works
            fcntl.fcntl(self.stdout, fcntl.F_SETPIPE_SZ, REPLY_PIPE_BYTES)

    def __enter__(self) -> LogitsClient:
        return self

    def __exit__(self, *exc) -> None:
        with contextlib.suppress(ProcessLookupError):  # the group: descendants too
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            with contextlib.suppress(OSError):  # BrokenPipeError: stdin of a dead server
                stream.close()

    def ask(self, windows: np.ndarray, what: str) -> np.ndarray:
        self.send(windows, what)
        return self.receive(windows.shape, what)

    def send(self, windows: np.ndarray, what: str) -> None:
        ids = np.ascontiguousarray(windows, dtype=self.id_dtype)
        data = memoryview(HEADER.pack(*windows.shape) + ids.tobytes())
        while data:
            self._wait(self.stdin, writing=True, what=what)
            try:
                data = data[os.write(self.stdin, data) :]
            except BlockingIOError:
                continue
            except BrokenPipeError:
                raise self._failed(f"before reading {what}") from None

    def receive(self, shape: tuple[int, int], what: str) -> np.ndarray:
        """The reply to a request for `shape` windows: float32 logits, every one finite."""
        buf = bytearray(shape[0] * shape[1] * self.vocab * 4)
        view, got = memoryview(buf), 0
        while got < len(buf):
            self._wait(self.stdout, writing=False, what=what)
            try:
                n = os.readv(self.stdout, [view[got:]])
            except BlockingIOError:
                continue
            if n == 0:
                raise self._failed(f"after {got} of the {len(buf)} bytes of its reply to {what}")
            got += n
        logits = np.frombuffer(buf, dtype="<f4").reshape(*shape, self.vocab)
        if not np.isfinite(logits).all():
            raise ScoreError(
                f"the {self.role} logits server sent NaN or infinite logits for {what}"
            )
        return logits

    def finish(self) -> None:
        """Ask the server to quit (it is killed on the way out anyway, not waited for); bytes it
        sent beyond its replies are a protocol error."""
        with contextlib.suppress(OSError):
            os.write(self.stdin, HEADER.pack(0, 0))
        try:
            extra = os.read(self.stdout, 1)
        except BlockingIOError:
            extra = b""
        if extra:
            raise ScoreError(f"the {self.role} logits server sent bytes beyond its replies")

    def _wait(self, fd: int, writing: bool, what: str) -> None:
        """Until fd is ready, draining stderr meanwhile; a ScoreError at the deadline."""
        while True:
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                raise ScoreError(
                    f"the {self.role} logits server did not answer {what} within the "
                    f"{self.timeout:g} s scoring limit{self._last_words()}"
                )
            readers = [fd] if not writing else []
            if self.stderr is not None:
                readers.append(self.stderr)
            ready_r, ready_w, _ = select.select(readers, [fd] if writing else [], [], remaining)
            if self.stderr in ready_r:
                self._drain_stderr()
            if fd in ready_r or fd in ready_w:
                return

    def _drain_stderr(self) -> None:
        while self.stderr is not None:
            try:
                chunk = os.read(self.stderr, 1 << 16)
            except BlockingIOError:
                return
            if not chunk:
                self.stderr = None  # closed: stop selecting on it
                return
            self.stderr_tail = (self.stderr_tail + chunk)[-_STDERR_TAIL:]

    def _failed(self, when: str) -> ScoreError:
        """The error for a server that closed its pipes: how it ended and its last stderr line."""
        # a server that closed its pipes is exiting; tearing down torch takes seconds on a
        # loaded machine, and its status is the useful part of the message
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=max(0.0, min(EXIT_WAIT, self.deadline - time.monotonic())))
        self._drain_stderr()
        status = self.proc.returncode
        if status is None:
            how = "closed its pipes"
        elif status < 0:
            how = f"was killed by signal {-status}"
        else:
            how = f"exited with status {status}"
        return ScoreError(f"the {self.role} logits server {how} {when}{self._last_words()}")

    def _last_words(self) -> str:
        lines = self.stderr_tail.decode("utf-8", "replace").splitlines()
        last = next((line.strip() for line in reversed(lines) if line.strip()), "")
        last = "".join(c if c.isprintable() else "?" for c in last)[:300]
        return f": {last}" if last else ""
