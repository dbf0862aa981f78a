"""Confinement of experiment code by bubblewrap: what it may write, see and reach.

An experiment's command runs as `bwrap … sh -c COMMAND`: the whole file system read-only, but
the directories it is given to write (the workspace, its output directory) and a private, empty
scratch directory (TMPDIR; /tmp itself is empty and read-only, so nothing there is seen);
no network unless the goal asks for it; its own PID namespace (every descendant, daemons
included, dies with it, and all of them are descendants of the bwrap process, so the runner's
memory sum covers them); no capabilities, so even as root it cannot remount or write
/proc/sys. bubblewrap is Debian's `bubblewrap` package, also used by Flatpak.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from sandbox.errors import SandboxError

INSTALL_HINT = (
    "bubblewrap (bwrap) is not installed, so experiment code cannot be confined; install it "
    "(`apt-get install bubblewrap`, or `make setup` as root) or pass --unconfined to run "
    "LLM-written code with your full rights"
)
SCRATCH = "/tmp/scratch"  # the experiment's TMPDIR: private, empty, gone with it
UNCONFINED = "unconfined"  # how records and reports name a run without confinement
CONFINED = "bubblewrap"


class ConfinementUnavailable(SandboxError):
    """bubblewrap is missing or does not work here; the message names the fix."""


@dataclass(frozen=True)
class Confinement:
    """How to wrap a command. `enabled=False` runs it as it is (the explicit --unconfined)."""

    enabled: bool = True
    writable: tuple[Path, ...] = ()
    readable: tuple[Path, ...] = ()  # re-exposed (read-only) when they live under /tmp
    network: bool = False
    bwrap: str = "bwrap"
    # directories shown empty, files unreadable (data a process may get only by pipe)
    hidden: tuple[Path, ...] = ()

    @property
    def name(self) -> str:
        return CONFINED if self.enabled else UNCONFINED

    def with_paths(self, *, writable: Iterable[Path] = (), readable: Iterable[Path] = (),
                   hidden: Iterable[Path] = ()) -> Confinement:
        return Confinement(self.enabled, (*self.writable, *writable),
                           (*self.readable, *readable), self.network, self.bwrap,
                           (*self.hidden, *hidden))

    def wrap(self, argv: Sequence[str], env: Mapping[str, str] | None = None) -> list[str]:
        """`argv` as it must be executed under this confinement; with `env`, in exactly that
        environment whatever the caller's (for a child whose spawner passes its own on)."""
        if not self.enabled:
            return (["env", "-i", *(f"{k}={v}" for k, v in env.items())] if env is not None
                    else []) + list(argv)
        args = [self.bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
                # /proc/sys is writable by uid 0 even without capabilities: cover it
                "--ro-bind", "/proc/sys", "/proc/sys"]
        args += ["--tmpfs", "/tmp"]  # hides this machine's /tmp (other runs, other users)
        for path in _under_tmp([*self.readable, *_interpreter_paths()]):
            args += ["--ro-bind", path, path]
        for path in self.writable:
            real = os.path.realpath(path)
            args += ["--bind", real, real]
        for path in map(os.path.realpath, self.hidden):
            if os.path.isdir(path):
                args += ["--tmpfs", path, "--remount-ro", path]
            elif os.path.exists(path):  # a device node on a nodev mount: EACCES on open
                args += ["--ro-bind", "/dev/null", path]
        # read-only again: the directories bwrap made for the binds above stay unwritable
        args += ["--tmpfs", SCRATCH, "--remount-ro", "/tmp", "--setenv", "TMPDIR", SCRATCH]
        args += ["--unshare-all", *(["--share-net"] if self.network else []),
                 "--die-with-parent", "--new-session", "--cap-drop", "ALL"]
        if env is not None:
            args += ["--clearenv", *(a for k, v in env.items() for a in ("--setenv", k, v))]
            args += ["--setenv", "TMPDIR", SCRATCH]
        args += ["--"]
        return args + list(argv)


def confinement(*, unconfined: bool = False, network: bool = False) -> Confinement:
    """The confinement experiments run under; raises ConfinementUnavailable (with the fix)
    when bubblewrap is missing and `unconfined` was not asked for explicitly."""
    if unconfined:
        return Confinement(enabled=False)
    path = shutil.which("bwrap")
    if path is None:
        raise ConfinementUnavailable(INSTALL_HINT)
    return Confinement(bwrap=path, network=network)


def _interpreter_paths() -> list[str]:
    """What this Python needs to start and import MAGNET: its prefixes, its import path, and
    where MAGNET's packages are (an editable install finds them by a hook, not by sys.path)."""
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix,
             os.path.dirname(os.path.realpath(sys.executable)),
             str(Path(__file__).resolve().parents[1])}
    paths.update(p for p in sys.path if p and os.path.isdir(p))
    return sorted(paths)


def _under_tmp(paths: Iterable[str | Path]) -> list[str]:
    """Existing paths under /tmp (hidden by the private /tmp), outermost only."""
    found = sorted({os.path.realpath(p) for p in paths
                    if os.path.realpath(p).startswith("/tmp/") and os.path.exists(p)})
    outermost: list[str] = []
    for path in found:
        if not any(path.startswith(parent + "/") for parent in outermost):
            outermost.append(path)
    return outermost
