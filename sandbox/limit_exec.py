"""The first process of a limited run: joins the run's cgroups, sets its rlimits, then becomes
the command (or, without a memory cgroup and asked to, watches it).

    python -I -S limit_exec.py SPEC_JSON -- ARGV...

Run by path with the standard library alone (-I -S: no site, no PYTHONPATH), before bubblewrap:
what it joins and sets, every process of the command inherits. SPEC_JSON keys, all optional:
  join      cgroup directories to join (their limits are set by sandbox.limits)
  nest      cgroup directories to make a child in (per process: the evaluator's two servers
            share one argv but each gets its own limits), set `memory`/`processes` on, and join
  memory    bytes; `processes` a count; `fsize` bytes per file (RLIMIT_FSIZE)
  nproc     RLIMIT_NPROC (only where no pids cgroup: it counts all of this uid's processes)
  watch     bytes: poll the command's memory (RSS of its processes + the tmpfs of its view)
            and kill it past them (where no memory cgroup does it)
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import sys
import time
from pathlib import Path

LIMIT_FILES = {  # v1 and v2 names: only those a directory has are written
    "processes": ("pids.max",),
    "memory": ("memory.limit_in_bytes", "memory.memsw.limit_in_bytes", "memory.max"),
}
NO_SWAP = "memory.swap.max"  # v2: a limit that swap cannot stretch
TMPFS_INSIDE = ("/tmp/scratch", "/dev")  # writable tmpfs of a confined view (sandbox.confine)
KILLED_EXIT = 137  # 128 + SIGKILL, as if the kernel had killed it


def set_limits(directory: Path, *, memory: int | None, processes: int | None) -> None:
    for key, value in (("processes", processes), ("memory", memory)):
        for name in LIMIT_FILES[key] if value is not None else ():
            if (directory / name).exists():
                (directory / name).write_text(str(value))
    if memory is not None and (directory / NO_SWAP).exists():
        (directory / NO_SWAP).write_text("0")


def join(directory: Path, pid: int) -> None:
    (directory / "cgroup.procs").write_text(str(pid))


def tree(root: int) -> list[int]:
    """`root` and its descendants, from /proc (no psutil: this runs without site-packages)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def tmpfs_used(pids: list[int]) -> int:
    """Bytes written to the writable tmpfs of the confined view the first of `pids` that lives
    in another mount namespace sees (the private TMPDIR, /dev/shm): memory no RSS shows."""
    try:
        own = os.readlink("/proc/self/ns/mnt")
    except OSError:
        return 0
    for pid in pids:
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{pid}/ns/mnt") == own:
                continue
            total = 0
            for path in TMPFS_INSIDE:
                st = os.statvfs(f"/proc/{pid}/root{path}")
                total += (st.f_blocks - st.f_bfree) * st.f_frsize
            return total
    return 0


def memory_used(root: int) -> tuple[int, list[int]]:
    pids = tree(root)
    rss = 0
    page = os.sysconf("SC_PAGE_SIZE")
    for pid in pids:
        with contextlib.suppress(OSError, ValueError, IndexError), \
                open(f"/proc/{pid}/statm", encoding="ascii") as f:
            rss += int(f.read().split()[1]) * page
    return rss + tmpfs_used(pids), pids


def _watch(argv: list[str], limit: int) -> int:
    """Run `argv` as a child and kill its whole tree once its memory passes `limit`."""
    child = os.fork()
    if child == 0:
        try:
            os.execvp(argv[0], argv)
        finally:
            os._exit(127)
    while True:
        pid, status = os.waitpid(child, os.WNOHANG)
        if pid == child:
            return os.waitstatus_to_exitcode(status) % 256
        used, pids = memory_used(child)
        if used > limit:
            for victim in pids:
                with contextlib.suppress(OSError):
                    os.kill(victim, signal.SIGKILL)
            os.waitpid(child, 0)
            sys.stderr.write(f"[sandbox] killed: memory {used / 2**20:.0f} MiB exceeded the "
                             f"limit of {limit / 2**20:.0f} MiB\n")
            return KILLED_EXIT
        time.sleep(0.05)


def enter_cgroups(spec: dict, pid: int) -> None:
    """Put `pid` in the cgroups `spec` names: a child of its own in each `nest` directory (its
    limits set), and each `join` directory."""
    for directory in map(Path, spec.get("nest", [])):
        mine = directory / f"p{pid}"
        mine.mkdir(exist_ok=True)
        set_limits(mine, memory=spec.get("memory"), processes=spec.get("processes"))
        join(mine, pid)
    for directory in map(Path, spec.get("join", [])):
        join(directory, pid)


def main(args: list[str]) -> int:
    spec, argv = json.loads(args[0]), args[2:]
    enter_cgroups(spec, os.getpid())
    for name, key in (("RLIMIT_FSIZE", "fsize"), ("RLIMIT_NPROC", "nproc")):
        if spec.get(key) is not None:
            resource.setrlimit(getattr(resource, name), (spec[key], spec[key]))
    if spec.get("watch") is not None:
        return _watch(argv, int(spec["watch"]))
    os.execvp(argv[0], argv)
    return 127  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
