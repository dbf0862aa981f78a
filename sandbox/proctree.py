"""Finding and killing a run's processes: the tree of a live run (`ProcessTree`), and what is
left of one after the controller died (`kill_group`, `kill_by_env`)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import time

import psutil


class ProcessTree:
    """Knows every process of the run: its group plus any child seen that left the group."""

    def __init__(self, pid: int) -> None:
        self.pgid = pid
        self.seen: dict[int, psutil.Process] = {}
        self.peak = 0
        self.count = 0  # processes of the tree at the last check
        try:
            self.leader: psutil.Process | None = psutil.Process(pid)
        except psutil.Error:
            self.leader = None

    def check(self) -> int:
        """Total resident memory of the tree now; remembers its members for the final kill."""
        if self.leader is None:
            return 0
        try:
            pids = self._members() if _CHILD_LISTS else self._members_by_scan()
        except psutil.Error:
            return 0
        self.count = len(pids)
        total = sum(_rss(pid) for pid in pids)
        self.peak = max(self.peak, total)
        return total

    def _members(self) -> list[int]:
        """The leader and its descendants, walked down the kernel's child lists: polled every
        0.1 s, this reads only the tree's own /proc entries where psutil reads every process's.
        Like `psutil.Process.children`, a process gone meanwhile is left out with what is below
        it, and one older than the leader (a reused pid) is not the run's."""
        members: dict[int, None] = {}  # ordered, leader first
        leader_born: float | None = None
        stack = [self.pgid]
        while stack:
            pid = stack.pop()
            if pid in members:  # pids reused during the walk could make a cycle
                continue
            proc = self.seen.get(pid)
            if proc is None and pid == self.pgid:
                proc = self.leader
            elif proc is None:
                if leader_born is None:  # fresh, as psutil's: the clock may have moved
                    leader_born = psutil.Process(self.pgid).create_time()
                try:
                    proc = psutil.Process(pid)
                    if proc.create_time() < leader_born:
                        continue
                except (psutil.NoSuchProcess, psutil.ZombieProcess):
                    continue
            try:
                children = _child_pids(pid)
            except OSError:
                if pid == self.pgid:
                    raise psutil.NoSuchProcess(pid) from None
                continue
            assert proc is not None
            self.seen.setdefault(pid, proc)
            members[pid] = None
            stack.extend(children)
        return list(members)

    def _members_by_scan(self) -> list[int]:
        """`_members` where the kernel keeps no child lists: psutil scans all of /proc."""
        assert self.leader is not None
        procs = [self.leader, *self.leader.children(recursive=True)]
        for p in procs:
            self.seen.setdefault(p.pid, p)
        return [p.pid for p in procs]

    def kill_all(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pgid, sig)
        for p in self.seen.values():  # processes that called setsid() are outside the group
            with contextlib.suppress(psutil.Error):
                if p.pid != self.pgid and p.is_running():  # is_running() also checks pid reuse
                    p.send_signal(sig)

    def alive(self) -> list[int]:
        pids = {p.pid for p in self.seen.values() if _live(p)}
        pids.update(group_members(self.pgid))
        pids.discard(self.pgid)  # the leader is reaped by Popen.wait()
        return sorted(pids)

    def wait_gone(self, timeout: float) -> None:
        end = time.monotonic() + timeout
        while self.alive() and time.monotonic() < end:
            self.kill_all(signal.SIGKILL)
            time.sleep(0.01)


def _child_pids(pid: int) -> list[int]:
    """`pid`'s children, from the kernel's list per thread (a child belongs to the thread that
    forked it). OSError when `pid` is gone."""
    children: list[int] = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
            children += map(int, f.read().split())
    return children


def _has_child_lists() -> bool:
    """Whether the kernel lists children in /proc/PID/task/TID/children (Linux with
    CONFIG_PROC_CHILDREN)."""
    pid = os.getpid()
    return os.path.exists(f"/proc/{pid}/task/{pid}/children")


_CHILD_LISTS = _has_child_lists()
_STATM = sys.platform.startswith("linux")
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if _STATM else 0


def _rss(pid: int) -> int:
    """Resident memory of `pid` in bytes, 0 when it is gone. On Linux the field psutil's
    memory_info().rss reads (/proc/PID/statm's second), without making a Process per poll."""
    try:
        if _STATM:
            with open(f"/proc/{pid}/statm", "rb") as f:
                return int(f.read().split()[1]) * _PAGE_SIZE
        return psutil.Process(pid).memory_info().rss
    except (OSError, IndexError, ValueError, psutil.Error):
        return 0


def _live(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes whose process group is `pgid`."""
    found = []
    for pid in psutil.pids():
        try:
            if os.getpgid(pid) == pgid and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                found.append(pid)
        except (OSError, psutil.Error):
            continue
    return found


def kill_group(pgid: int, timeout: float = 5.0) -> bool:
    """SIGKILL what is left of a run's process group (e.g. after the controller died).

    True when something was killed. Safe against pid reuse: a group id stays reserved while any
    process of the group lives, so live members of `pgid` belong to the orphaned run.
    """
    members = group_members(pgid)
    if not members:
        return False
    end = time.monotonic() + timeout
    while members and time.monotonic() < end:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
        time.sleep(0.02)
        members = group_members(pgid)
    return True


def processes_with_env(name: str, value: str) -> list[psutil.Process]:
    """Live processes (not this one) whose environment has `name=value`: a run's processes
    have its own MAGNET_OUTPUT_DIR, whatever group or session they moved to."""
    found = []
    for p in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if (p.pid != os.getpid() and p.environ().get(name) == value
                    and p.status() != psutil.STATUS_ZOMBIE):
                found.append(p)
    return found


def kill_by_env(name: str, value: str, timeout: float = 5.0) -> int:
    """SIGKILL every process whose environment has `name=value`; returns how many there were.

    Finds a run's processes when its pid was never journaled (a crash right after the spawn)
    and those that left its process group.
    """
    victims = processes_with_env(name, value)
    for p in victims:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(victims, timeout=timeout)
    return len(victims)


# A warm process (sandbox.warm, agent.scoring.warm_servers) imports torch while the controller
# scores and plans: it waits at this niceness so those come first, and is set back to 0 when
# its run comes (which needs root or CAP_SYS_NICE; else it trains at this niceness, alone).
WAITING_NICE = 10


def niced(argv: list[str]) -> list[str]:
    """`argv` run at WAITING_NICE (by nice(1), so every process it starts inherits it)."""
    nice = shutil.which("nice")
    return [nice, "-n", str(WAITING_NICE), *argv] if nice else argv


def unnice(pid: int) -> None:
    """Set `pid`, its descendants and all their threads back to niceness 0, where allowed.

    Niceness belongs to a thread and a fork inherits its parent's, so one pass can miss a
    process a still-niced parent forks meanwhile (bubblewrap starting up) or a thread that
    already exists: passes repeat until one finds nothing left to change."""
    for _ in range(50):
        changed = False
        with contextlib.suppress(psutil.Error):
            root = psutil.Process(pid)
            for p in [root, *root.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    for thread in p.threads():
                        with contextlib.suppress(OSError):
                            if os.getpriority(os.PRIO_PROCESS, thread.id) != 0:
                                os.setpriority(os.PRIO_PROCESS, thread.id, 0)
                                changed = True
        if not changed:
            return
