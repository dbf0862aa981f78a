"""The evaluator's two logits servers for the next run, started before that run ends.

bitnet.score starts two servers per scoring (one scores, a fresh one checks causality); each
imports torch first, seconds on a busy machine. With warm starts on (sandbox.warm), the servers
for the next run start right after this run is scored, confined as the cold ones would be, with
the next run's staging output directory in their view (a bind mount follows the directory when
it is renamed to the run's output directory), and wait (bitnet/warm_server.py) until the run
has trained: then each is told its checkpoint, model code and thread count.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from sandbox.limits import Limits
from sandbox.proctree import ProcessTree, niced, unnice

SCRIPT = Path(__file__).resolve().parents[2] / "bitnet" / "warm_server.py"
SERVERS = 2  # bitnet.score's scoring and causality-check servers
READY = b"READY\n"  # what bitnet/warm_server.py says on stderr once it waits for its order

Wrap = Callable[[Sequence[str]], list[str]]  # the cold servers' confinement, for a given view


class WarmServers:
    def __init__(self) -> None:
        self.checkpoint_dir: Path | None = None  # the directory they will serve, as they see it
        self.procs: list[subprocess.Popen] = []
        self.limits: Limits | None = None
        self._ready: set[int] = set()  # pids that said READY: their view was set up then

    def prepare(self, checkpoint_dir: Path, wrap: Wrap, limits: Limits) -> None:
        """Start the servers for a checkpoint that will be written to `checkpoint_dir`, with
        `wrap` (confinement and `limits`, whose cgroups the scoring removes when done)."""
        self.close()
        self.limits = limits
        argv = niced(wrap([sys.executable, str(SCRIPT)]))
        self.procs = [subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, start_new_session=True)
                      for _ in range(SERVERS)]
        self.checkpoint_dir = checkpoint_dir

    def take(self, checkpoint_dir: Path, model_code: Path,
             threads: int) -> tuple[Callable[[str], subprocess.Popen], Limits] | None:
        """What bitnet.score starts its servers with (`start(role)` -> a told server) and their
        limits, if the waiting ones were started for `checkpoint_dir` and are alive; else None
        (cold)."""
        if self.checkpoint_dir != checkpoint_dir or not self.ready():
            self.close()  # not for this run, dead, or not up yet (its view may miss the rename)
            return None
        procs, self.procs, self.checkpoint_dir = list(self.procs), [], None
        limits, self.limits = self.limits, None
        assert limits is not None
        order = json.dumps({"checkpoint": str(checkpoint_dir), "model_code": str(model_code),
                            "threads": threads}).encode() + b"\n"

        def start(role: str) -> subprocess.Popen:
            proc = procs.pop(0)
            assert proc.stdin is not None
            unnice(proc.pid)  # it waited behind the planner: its scoring comes
            with contextlib.suppress(BrokenPipeError):  # died: bitnet.score reports how
                proc.stdin.write(order)
                proc.stdin.flush()
            return proc

        return start, limits

    def ready(self) -> bool:
        """True once every server has imported and said READY on stderr (by then bubblewrap
        has bound the checkpoint directory, so a rename after it is seen)."""
        for proc in self.procs:
            if proc.pid in self._ready:
                continue
            if proc.poll() is not None or proc.stderr is None:
                return False
            fd = proc.stderr.fileno()
            if not select.select([fd], [], [], 0)[0]:
                return False
            if not os.read(fd, 1 << 16).endswith(READY):
                return False
            self._ready.add(proc.pid)
        return bool(self.procs)

    def close(self) -> None:
        """Stop servers never told to go."""
        procs, self.procs, self.checkpoint_dir = self.procs, [], None
        limits, self.limits = self.limits, None
        for proc in procs:
            tree = ProcessTree(proc.pid)
            tree.check()
            tree.kill_all(signal.SIGKILL)
            proc.wait()
            tree.wait_gone(5.0)
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                with contextlib.suppress(OSError):
                    if stream is not None:
                        stream.close()
        if limits is not None:
            limits.remove()
