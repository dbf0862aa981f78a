"""A forked process's own view inside a confinement it shares with its siblings (sandbox.zygote).

A fork server (sandbox/zygote_main.py) sees what every run of its kind sees, and the folder that
holds every run's own directory (the outputs folder, say). Before a forked child runs anything
of an experiment it calls `enter()`, which, in new user, mount and IPC namespaces of its own:

  covers    each `cover` folder with an empty read-only tmpfs (other runs' directories vanish),
  binds     its `own` directories back at their paths, writable or read-only,
  refreshes `fresh` folders (the private TMPDIR, /dev/shm) with empty tmpfs, makes /dev read-only
            (bubblewrap's /dev is a writable tmpfs shared by the fork server's children),
  drops     every capability the new user namespace gave it, for good (bounding set, no new
            privileges), keeping its uid and gid (not root).

So nothing writable is shared between two children: what one leaves (files, SysV IPC objects)
another never sees, as when each run had its own bubblewrap. Linux only; raises OSError when the
kernel refuses a step (the caller then runs nothing).
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Sequence

CLONE_NEWNS, CLONE_NEWIPC, CLONE_NEWUSER = 0x00020000, 0x08000000, 0x10000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = (
    1, 2, 4, 32, 4096, 16384, 1 << 18)
PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS = 24, 38
CAP_LAST = 63  # beyond the kernel's last capability, PR_CAPBSET_DROP fails with EINVAL
_CAP_VERSION_3 = 0x20080522  # capset's header version: 64-bit capability sets
_SYSCALL_CAPSET = {"x86_64": 126, "aarch64": 91}  # the capset system call's number

_libc = ctypes.CDLL(None, use_errno=True)


def enter(own: Sequence[tuple[str, bool]], cover: Sequence[str],
          fresh: Sequence[str]) -> None:
    """Make this process's private view (see the module docstring); `own`: (path, writable)."""
    uid, gid = os.getuid(), os.getgid()
    cwd = os.getcwd()
    _check(_libc.unshare(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWIPC), "unshare")
    _write("/proc/self/setgroups", "deny")
    _write("/proc/self/uid_map", f"{uid} {uid} 1")
    _write("/proc/self/gid_map", f"{gid} {gid} 1")
    _mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing below propagates anywhere
    # opened in this namespace, before the covers hide them: bound back from the descriptors
    handles = [(path, writable, os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW))
               for path, writable in own]
    for folder in cover:
        _mount("tmpfs", folder, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755")
    for path, writable, fd in handles:
        os.makedirs(path, exist_ok=True)
        _mount(f"/proc/self/fd/{fd}", path, None, MS_BIND)
        if not writable:
            _mount(None, path, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
        os.close(fd)
    for folder in cover:
        _mount(None, folder, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
    for folder in fresh:
        _mount("tmpfs", folder, "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")
    if os.path.ismount("/dev"):
        _mount(None, "/dev", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
    _drop_capabilities()
    # a working directory under a cover would still reach what lies beneath it: enter it anew
    os.chdir(cwd)


def _drop_capabilities() -> None:
    for cap in range(CAP_LAST + 1):
        if _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 and ctypes.get_errno() != 22:
            _check(-1, f"dropping capability {cap}")
    header = (ctypes.c_uint32 * 2)(_CAP_VERSION_3, 0)
    data = (ctypes.c_uint32 * 6)()  # effective, permitted, inheritable: twice 32 bits, all 0
    number = _SYSCALL_CAPSET.get(os.uname().machine)
    if number is None:
        raise OSError(f"capset: unknown system call number on {os.uname().machine}")
    _check(_libc.syscall(number, header, data), "capset")
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")


def _mount(source: str | None, target: str, fstype: str | None, flags: int,
           data: str | None = None) -> None:
    def encode(text: str | None) -> bytes | None:
        return text.encode() if text is not None else None

    _check(_libc.mount(encode(source), encode(target), encode(fstype), flags, encode(data)),
           f"mount {target}")


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")
