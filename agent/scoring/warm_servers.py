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
from dataclasses import dataclass
from pathlib import Path

from bitnet.logits_server import SERVERS, THREADS
from sandbox.confine import Confinement
from sandbox.limits import Limits
from sandbox.proctree import ProcessTree, niced, unnice
from sandbox.zygote import ForkedChild, Zygote, ZygoteError, usable

SCRIPT = Path(__file__).resolve().parents[2] / "bitnet" / "warm_server.py"
READY = b"READY\n"  # what bitnet/warm_server.py says on stderr once it waits for its order

Wrap = Callable[[Sequence[str]], list[str]]  # the cold servers' confinement, for a given view


@dataclass(frozen=True)
class SharedView:
    """What fork servers see (sandbox.zygote): the servers' view with the whole `outputs`
    folder in it (read-only), which each forked server covers, keeping its own checkpoint."""

    confinement: Confinement
    env: dict[str, str]
    outputs: Path


class WarmServers:
    def __init__(self) -> None:
        self.checkpoint_dir: Path | None = None  # the directory they will serve, as they see it
        self.procs: list[subprocess.Popen | ForkedChild] = []
        self.limits: Limits | None = None
        self.zygotes: list[Zygote] = []  # one per server, where forking is used
        self._forking = True  # until a fork server fails: then servers start as before
        self._ready: set[int] = set()  # pids that said READY: their view was set up then

    def prepare(self, checkpoint_dir: Path, wrap: Wrap, limits: Limits,
                shared: SharedView | None = None, *, now: bool = False) -> None:
        """Start the servers for a checkpoint that will be written to `checkpoint_dir`, with
        `wrap` (confinement and `limits`, whose cgroups the scoring removes when done), or fork
        them (`shared`: what the fork servers see) where the limits allow it: at once if the
        fork servers have imported, else not at all (the scoring starts its own). `now`: the
        checkpoint is there and its scoring comes: fork them (waiting for the fork servers),
        and start none where forking cannot be used."""
        self._discard()
        self.limits = limits
        self.checkpoint_dir = checkpoint_dir
        zygotes = self._zygotes(shared, limits)
        if zygotes:
            if now or all(zygote.ready() for zygote in zygotes):
                self.procs = self._forked(zygotes, checkpoint_dir, limits, shared.outputs) or []
        elif not now:
            argv = niced(wrap([sys.executable, str(SCRIPT)]))
            self.procs = [subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                           stderr=subprocess.PIPE, start_new_session=True)
                          for _ in SERVERS]

    def _zygotes(self, shared: SharedView | None, limits: Limits) -> list[Zygote]:
        """The two fork servers for this view (started, or restarted when they are not for
        it; they import meanwhile), or none where forking cannot be used."""
        if shared is None or not self._forking or not usable(shared.confinement, limits):
            return []
        key = (tuple(shared.confinement.wrap(["x"])), tuple(sorted(shared.env.items())))
        if len(self.zygotes) != len(SERVERS) or any(z.key != key or not z.alive()
                                               for z in self.zygotes):
            self._close_zygotes()
            self.zygotes = [Zygote("serve", shared.confinement, cwd=Path("/"),
                                   env=shared.env, key=key) for _ in SERVERS]
        return self.zygotes

    def _forked(self, zygotes: list[Zygote], checkpoint_dir: Path, limits: Limits,
                outputs: Path) -> list[ForkedChild] | None:
        """One server forked from each fork server (waiting for them to have imported); None
        if one failed, and from then on servers are started instead."""
        children: list[ForkedChild] = []
        try:
            for zygote in zygotes:
                children.append(zygote.fork(own=[(checkpoint_dir, False)], cover=[outputs],
                                            limits=limits))
        except ZygoteError:
            for child in children:
                child.kill()
                child.wait()
            self._close_zygotes()
            self._forking = False
            return None
        return children

    def take(self, checkpoint_dir: Path,
             model_code: Path) -> tuple[Callable[[str], subprocess.Popen | ForkedChild],
                                        Limits] | None:
        """What bitnet.score starts its servers with (`start(role)` -> a told server) and their
        limits, if the waiting ones were started for `checkpoint_dir` and are alive; else None
        (cold)."""
        forked = bool(self.procs) and isinstance(self.procs[0], ForkedChild)
        if self.checkpoint_dir != checkpoint_dir or not self.ready(wait=5.0 if forked else 0.0):
            self._discard()  # not for this run, dead, or not up yet (its view may miss the rename)
            return None
        procs, self.procs, self.checkpoint_dir = list(self.procs), [], None
        limits, self.limits = self.limits, None
        assert limits is not None
        order = json.dumps({"checkpoint": str(checkpoint_dir), "model_code": str(model_code),
                            "threads": THREADS}).encode() + b"\n"

        def start(role: str) -> subprocess.Popen | ForkedChild:
            proc = procs.pop(0)
            assert proc.stdin is not None
            unnice(proc.pid)  # it waited behind the planner: its scoring comes
            with contextlib.suppress(BrokenPipeError):  # died: bitnet.score reports how
                proc.stdin.write(order)
                proc.stdin.flush()
            return proc

        return start, limits

    def ready(self, wait: float = 0.0) -> bool:
        """True once every server has imported and said READY on stderr (by then bubblewrap
        has bound the checkpoint directory, so a rename after it is seen), waiting up to `wait`
        seconds for each (a forked one says it within milliseconds)."""
        for proc in self.procs:
            if proc.pid in self._ready:
                continue
            if proc.poll() is not None or proc.stderr is None:
                return False
            fd = proc.stderr.fileno()
            if not select.select([fd], [], [], wait)[0]:
                return False
            if not os.read(fd, 1 << 16).endswith(READY):
                return False
            self._ready.add(proc.pid)
        return bool(self.procs)

    def close(self) -> None:
        """At the end: stop the servers never told to go and the fork servers."""
        self._discard()
        self._close_zygotes()

    def _close_zygotes(self) -> None:
        zygotes, self.zygotes = self.zygotes, []
        for zygote in zygotes:
            zygote.close()

    def _discard(self) -> None:
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
