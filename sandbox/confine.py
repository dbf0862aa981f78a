"""Confinement of experiment code by bubblewrap: an allow-listed view of the machine.

An experiment's command runs as `bwrap … sh -c COMMAND` in an empty root (a read-only tmpfs)
into which only what a run needs is bound, read-only: the system directories (/usr, /bin,
/lib*, /sbin), from /etc only what interpreters and libraries read (ETC_ALLOWED), the
interpreter and its packages, MAGNET's own package directories (never the repository root, where
runs/ usually lives), and the paths the caller names readable (the workspace, the training split,
the init checkpoint, a goal's `readable:`). Only the paths it is given to write (the output
directory) and a private, empty scratch directory (TMPDIR) are writable; /tmp is empty. No home
directory, no other runs, no /run or /var (so no host Unix sockets), no /etc/shadow. Paths named
`hidden` (ledger keys and ledgers) are covered even when they lie under a readable path.

No network unless the goal asks for it; its own PID namespace (every descendant, daemons
included, dies with it); no capabilities; and, where the kernel allows a user namespace, uid and
gid 1000 inside rather than root (probed once; `Confinement.name` says when it ran as root).
bubblewrap is Debian's `bubblewrap` package, also used by Flatpak.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
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
CONFINED_AS_ROOT = "bubblewrap-as-root"  # the kernel refused a user namespace
INSIDE_ID = "1000"  # uid and gid of experiment code inside its user namespace
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
# what the dynamic loader, libc (users, names, time zones), TLS and Python read from /etc
ETC_ALLOWED = (
    "ld.so.cache", "ld.so.conf", "ld.so.conf.d", "alternatives", "localtime", "timezone",
    "passwd", "group", "nsswitch.conf", "host.conf", "hosts", "gai.conf", "protocols",
    # certificates, never ssl/private or pki/tls/private (keys; when MAGNET runs as root the
    # user namespace maps uid 1000 inside to root outside, the files' owner)
    "services", "ssl/certs", "ssl/openssl.cnf", "ca-certificates", "ca-certificates.conf",
    "pki/tls/certs", "pki/ca-trust", "mime.types",
    "locale.alias", "os-release", "python3", f"python{sys.version_info[0]}.{sys.version_info[1]}",
)
NETWORK_ETC = ("resolv.conf",)  # only with the network on
# MAGNET's own packages, bound one by one: the repository root holds runs/ and more
MAGNET_PACKAGES = ("agent", "sandbox", "bitnet", "merge", "ledger", "prompts")
REPO_ROOT = Path(__file__).resolve().parents[1]


class ConfinementUnavailable(SandboxError):
    """bubblewrap is missing or does not work here; the message names the fix."""


@dataclass(frozen=True)
class Confinement:
    """How to wrap a command. `enabled=False` runs it as it is (the explicit --unconfined)."""

    enabled: bool = True
    writable: tuple[Path, ...] = ()
    readable: tuple[Path, ...] = ()  # bound read-only at the same path
    network: bool = False
    bwrap: str = "bwrap"
    # never in view, even under a readable path: directories shown empty, files unreadable
    hidden: tuple[Path, ...] = ()

    @property
    def name(self) -> str:
        if not self.enabled:
            return UNCONFINED
        return CONFINED if user_namespace(self.bwrap) else CONFINED_AS_ROOT

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
        args = [self.bwrap, *_system_binds(self.network)]
        given = [os.path.realpath(p) for p in (*self.readable, *self.writable)]
        binds = [(p, "--ro-bind") for p in _interpreter_paths(given)]
        binds += [(os.path.realpath(p), "--ro-bind") for p in self.readable if os.path.exists(p)]
        binds += [(os.path.realpath(p), "--bind") for p in self.writable]
        args += ["--dev", "/dev", "--proc", "/proc",
                 # /proc/sys is writable by uid 0 even without capabilities: cover it
                 "--ro-bind", "/proc/sys", "/proc/sys",
                 "--tmpfs", "/tmp", "--tmpfs", SCRATCH]  # this machine's /tmp is not seen
        # parents first, so the more specific bind wins (a readable under a writable, …)
        for path, how in sorted(binds, key=lambda b: b[0].count("/")):
            args += [how, path, path]
        bound = [args[i + 2] for i, a in enumerate(args) if a in ("--ro-bind", "--bind")]
        for path in map(os.path.realpath, self.hidden):
            if not any(_within(path, b) or _within(b, path) for b in bound):
                continue  # not in view anyway: do not even make its mount point
            if os.path.isdir(path):
                args += ["--tmpfs", path, "--remount-ro", path]
            elif os.path.exists(path):  # a device node on a nodev mount: EACCES on open
                args += ["--ro-bind", "/dev/null", path]
        # read-only again: the root and the directories bwrap made for the binds above
        args += ["--remount-ro", "/tmp", "--remount-ro", "/"]
        args += ["--unshare-all", *(["--share-net"] if self.network else [])]
        if user_namespace(self.bwrap):
            args += ["--unshare-user", "--uid", INSIDE_ID, "--gid", INSIDE_ID]
        args += ["--die-with-parent", "--new-session", "--cap-drop", "ALL"]
        if env is not None:
            args += ["--clearenv", *(a for k, v in env.items() for a in ("--setenv", k, v))]
        # the workspace is read-only: no .pyc beside the sources (they would fail, and cost)
        args += ["--setenv", "TMPDIR", SCRATCH, "--setenv", "PYTHONDONTWRITEBYTECODE", "1"]
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


@functools.cache
def user_namespace(bwrap: str) -> bool:
    """Whether the kernel lets bubblewrap make a user namespace here (once per process): without
    it experiment code runs as the controller's user (root, if MAGNET runs as root)."""
    probe = [bwrap, "--ro-bind", "/", "/", "--unshare-user", "--uid", INSIDE_ID,
             "--gid", INSIDE_ID, "--", "true"]
    try:
        return subprocess.run(probe, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _system_binds(network: bool) -> list[str]:
    """The system directories (a merged-/usr link stays a link) and the allowed part of /etc."""
    args: list[str] = []
    for path in SYSTEM_DIRS:
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    for name in (*ETC_ALLOWED, *(NETWORK_ETC if network else ())):
        path = f"/etc/{name}"
        if os.path.exists(path):  # follows a link: its target is bound at the link's place
            args += ["--ro-bind", path, path]
    return args


def _within(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def _interpreter_paths(given: Sequence[str]) -> list[str]:
    """What this Python needs to start and import MAGNET: its prefixes, its import path and
    MAGNET's package directories, less any directory that would show more than that: the root,
    a home directory (or what holds one), a MAGNET repository root (runs/ lives there) or a
    directory holding a path the run is given (its run directory's siblings are other runs)."""
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix,
             os.path.dirname(os.path.realpath(sys.executable))}
    paths.update(p for p in sys.path if p and os.path.isdir(p))
    roots = {str(REPO_ROOT)}
    packages = {str(REPO_ROOT / name) for name in MAGNET_PACKAGES}
    for module in list(sys.modules.values()):  # a setuptools editable install's finder
        if getattr(module, "__name__", "").startswith("__editable__"):
            mapping = getattr(module, "MAPPING", {})
            packages.update(map(str, mapping.values()))
            roots.update(str(Path(p).parent) for p in mapping.values())
    paths.update(packages)
    homes = {os.path.realpath(Path.home()), "/root", "/home"}
    unsafe = [*homes, *map(os.path.realpath, roots), *given]
    return sorted({path for path in map(os.path.realpath, paths) if os.path.isdir(path)
                   and path != "/" and not any(_within(u, path) for u in unsafe)})
