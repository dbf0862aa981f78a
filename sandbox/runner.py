"""Run one training command confined: bubblewrap (sandbox.confine), own session, wall limit,
memory limit over every process of the run, a capped log, and a status named by what happened.
The run's process tree and its killing are sandbox.proctree; its output and log, sandbox.runlog.

Single-threaded on purpose: one select() loop reads the output, notices the exit (pidfd) and
checks the limits, so no thread can outlive a run or race the cleanup.
"""

from __future__ import annotations

import os
import re
import selectors
import signal
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from sandbox.confine import Confinement
from sandbox.layout import METRICS_FILE
from sandbox.limit_exec import tmpfs_used
from sandbox.limits import (
    DEFAULT_MAX_PROCESSES,
    DEFAULT_OUTPUT_LIMIT_MB,
    Limits,
    output_usage,
    run_limits,
)
from sandbox.metrics import Number, is_finite, read_metrics_json
from sandbox.proctree import (
    ProcessTree,
    group_members,
    kill_by_env,
    kill_group,
    processes_with_env,
)
from sandbox.runlog import (
    DEFAULT_LOG_LIMIT,
    TAIL_LINES,
    LineCallback,
    RunOutput,
    drain,
    read_available,
)
from sandbox.zygote import ForkedChild

Leader = subprocess.Popen | ForkedChild  # the run's first process: started, or forked

__all__ = [  # callers import a run's names from here, those of proctree and runlog too
    "DEFAULT_LOG_LIMIT",
    "STATUSES",
    "TAIL_LINES",
    "LineCallback",
    "RunLimits",
    "RunResult",
    "group_members",
    "kill_by_env",
    "kill_group",
    "processes_with_env",
    "run_command",
]

STATUSES = ("ok", "crashed", "timeout", "oom", "no_metric", "log_limit", "output_limit")
_OOM_TEXT = re.compile(r"\bMemoryError\b|std::bad_alloc|Cannot allocate memory|out of memory", re.I)
_FSIZE_TEXT = re.compile(r"File too large|\[Errno 27\]")  # EFBIG: RLIMIT_FSIZE refused a write


@dataclass(frozen=True)
class RunLimits:
    """Wall limit = time_budget + grace (start-up, evaluation); then SIGTERM, then SIGKILL."""

    time_budget: float
    grace: float = 60.0
    term_grace: float = 5.0
    mem_limit: int | None = None  # bytes of resident memory, summed over the process tree
    poll: float = 0.1  # seconds between memory checks
    log_limit: int = DEFAULT_LOG_LIMIT  # bytes of output; beyond it the run is stopped
    # bytes in the output directory (and in any one file it writes); beyond it, stopped
    output_limit: int | None = DEFAULT_OUTPUT_LIMIT_MB * 2**20
    max_processes: int | None = DEFAULT_MAX_PROCESSES  # at once, every process of the run

    @property
    def wall(self) -> float:
        return self.time_budget + self.grace


@dataclass
class RunResult:
    status: str  # one of STATUSES
    exit_code: int | None  # negative: killed by that signal
    metrics: dict[str, Number]
    seconds: float
    log_tail: str
    log_path: Path | None = None
    reason: str = ""  # one line saying why the status is not `ok`
    peak_rss: int = 0
    pid: int = 0
    confinement: str = ""  # sandbox.confine's name for how it ran: bubblewrap | unconfined


def run_command(
    command: str,
    cwd: Path,
    *,
    env: Mapping[str, str],
    limits: RunLimits,
    log_path: Path | None = None,
    output_dir: Path | None = None,
    metric: str | None = None,
    on_line: LineCallback | None = None,
    on_start: Callable[[int], None] | None = None,
    confinement: Confinement | None = None,
    spawn: Callable[[], tuple[Leader, Limits]] | None = None,
) -> RunResult:
    """Run `command` through the shell in `cwd` and return what happened.

    `metric` names the metric an `ok` run must report (else `no_metric`); without it any metric
    will do. `on_start(pid)` is called once the process exists (its pid is also its group id).
    `confinement` wraps the shell (bubblewrap); None runs it as it is. `spawn` (sandbox.warm)
    stands for the Popen below: a process already started under that confinement and the
    run's limits (the cgroup it gives back is removed after the run), told to go.
    """
    out = RunOutput(log_path, on_line, limits.log_limit)
    confinement = confinement or Confinement(enabled=False)
    oom_kills = _oom_kills()
    start = time.monotonic()
    if spawn is not None:  # started before under these limits and confinement: told to go now
        proc, limited = spawn()
    else:
        limited = run_limits(memory=limits.mem_limit, processes=limits.max_processes,
                             fsize=limits.output_limit)
    proc = proc if spawn is not None else subprocess.Popen(
        limited.wrap(confinement.wrap(["/bin/sh", "-c", command])),
        cwd=cwd,
        env=dict(env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # own session and process group: killpg reaches every child
    )
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    os.set_blocking(fd, False)  # a straggler holding the pipe must never block a read
    watch = ProcessTree(proc.pid)
    killed_for: str | None = None
    seconds = 0.0
    try:
        if on_start is not None:
            on_start(proc.pid)
        killed_for, seconds = _supervise(proc, fd, out, watch, limits, start,
                                         limited, output_dir)
    finally:
        # Whatever happened above (even KeyboardInterrupt), nothing of the run may survive.
        watch.kill_all(signal.SIGKILL)
        watch.wait_gone(5.0)
        cgroup_oom, cgroup_peak = limited.oom_kills(), limited.peak_memory()
        limited.remove()  # the cgroup: kills what is left in it (all of it, wherever it went)
        rc = proc.wait()
        drain(fd, out, 2.0)
        proc.stdout.close()
    metrics = {**read_metrics_json(output_dir / METRICS_FILE)} if output_dir else {}
    metrics.update(out.metrics)
    kernel_oom = _oom_kills() > oom_kills or cgroup_oom > 0
    if cgroup_oom:  # the kernel killed at the run's own limit: the cgroup's peak is the run's
        watch.peak = max(watch.peak, cgroup_peak)
        killed_for = killed_for or "oom"
    status, reason = _status(killed_for, rc, metrics, metric, list(out.tail), limits, watch.peak,
                             kernel_oom=kernel_oom, refused=out.refused)
    if reason:
        out.line(f"[sandbox] {reason}", parse=False)
    out.close()
    return RunResult(
        status=status,
        exit_code=rc,
        metrics=metrics,
        seconds=round(seconds, 3),
        log_tail="\n".join(out.tail),
        log_path=log_path,
        reason=reason,
        peak_rss=watch.peak,
        pid=proc.pid,
        confinement=confinement.name,
    )


def _supervise(
    proc: Leader, fd: int, out: RunOutput, watch: ProcessTree, limits: RunLimits, start: float,
    limited: Limits, output_dir: Path | None,
) -> tuple[str | None, float]:
    """Loop until the leader exits or a limit is hit; returns (killed_for, seconds)."""
    pid = proc.pid
    sel = selectors.DefaultSelector()
    sel.register(fd, selectors.EVENT_READ, "out")
    pidfd = _pidfd(pid)
    if pidfd is not None:
        sel.register(pidfd, selectors.EVENT_READ, "exit")
    deadline = start + limits.wall
    next_check = start + min(limits.poll, 0.02)  # first check early: catch fast allocators
    killed_for: str | None = None
    try:
        while True:
            now = time.monotonic()
            wait = max(0.0, min(deadline, next_check) - now)
            if pidfd is None:
                wait = min(wait, 0.01)
            for key, _ in sel.select(wait):
                if key.data == "out" and not read_available(fd, out):
                    sel.unregister(fd)
            if out.over:
                killed_for = "log_limit"
                watch.kill_all(signal.SIGKILL)
                break
            if _exited(proc):
                return killed_for, time.monotonic() - start
            now = time.monotonic()
            if now >= next_check:
                next_check = now + limits.poll
                killed_for = _over(watch, limits, limited, output_dir)
                if killed_for is not None:
                    watch.kill_all(signal.SIGKILL)  # memory runs away fast: no grace
                    break
            if now >= deadline:
                killed_for = "timeout"
                watch.kill_all(signal.SIGTERM)
                _wait_gone(proc, watch, limits.term_grace, fd, out)  # let them save and exit
                watch.kill_all(signal.SIGKILL)
                break
    finally:
        sel.close()
        if pidfd is not None:
            os.close(pidfd)
    _wait_exit(proc, 5.0, fd, out)
    return killed_for, time.monotonic() - start


def _over(watch: ProcessTree, limits: RunLimits, limited: Limits,
          output_dir: Path | None) -> str | None:
    """The limit the run is past now, if any: memory (RSS of every process plus what its view's
    tmpfs hold), processes, the output directory."""
    used = watch.check() + tmpfs_used(sorted(watch.seen))
    watch.peak = max(watch.peak, used)
    if limits.mem_limit is not None and used > limits.mem_limit:
        return "oom"
    if limited.oom_kills():  # the kernel killed one at the cgroup's limit, before a poll saw it
        watch.peak = max(watch.peak, limited.peak_memory())
        return "oom"
    if limits.max_processes is not None and (watch.count > limits.max_processes
                                             or limited.process_limit_hit()):
        return "processes"
    if (output_dir is not None and limits.output_limit is not None
            and output_usage(output_dir, limits.output_limit) > limits.output_limit):
        return "output_limit"
    return None


def _pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


def _exited(proc: Leader) -> bool:
    """True once the leader has exited. Our own child: WNOWAIT leaves it a zombie so its pid (=
    the group id) cannot be reused before the group is killed. A fork server's child: its
    server reaps it and says so."""
    if isinstance(proc, ForkedChild):
        return proc.poll() is not None
    try:
        info = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return True
    return info is not None and info.si_pid == proc.pid


def _wait_exit(proc: Leader, timeout: float, fd: int, out: RunOutput) -> None:
    end = time.monotonic() + timeout
    while not _exited(proc) and time.monotonic() < end:
        read_available(fd, out)
        time.sleep(0.01)


def _wait_gone(proc: Leader, watch: ProcessTree, timeout: float, fd: int,
               out: RunOutput) -> None:
    """Wait for every process of the run (not only the shell that leads it) to exit."""
    end = time.monotonic() + timeout
    while time.monotonic() < end and (not _exited(proc) or watch.alive()):
        read_available(fd, out)
        time.sleep(0.02)


def _oom_kills() -> int:
    """The kernel's count of OOM kills since boot (Linux /proc/vmstat), -1 when unknown: a rise
    during a run is how an out-of-memory kill is told from any other SIGKILL."""
    try:
        with open("/proc/vmstat", encoding="ascii") as file:
            for line in file:
                if line.startswith("oom_kill "):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return -1


def _signal_name(rc: int) -> str | None:
    """The signal that ended the run: Popen reports -N; bwrap and the shell exit with 128+N."""
    number = -rc if rc < 0 else rc - 128 if 128 < rc < 128 + signal.NSIG else None
    if number is None:
        return None
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _status(
    killed_for: str | None,
    rc: int,
    metrics: dict[str, Number],
    metric: str | None,
    tail: list[str],
    limits: RunLimits,
    peak: int,
    *,
    kernel_oom: bool = False,
    refused: set[str] | None = None,
) -> tuple[str, str]:
    if killed_for == "log_limit":
        return "log_limit", (
            f"killed: it wrote more than the log limit of {limits.log_limit / 2**20:g} MB; "
            "print less (or raise log_limit_mb in the goal)"
        )
    if killed_for == "timeout":
        return "timeout", (
            f"killed: wall limit of {limits.wall:g} s exceeded (budget {limits.time_budget:g} s "
            f"+ grace {limits.grace:g} s); stop training within MAGNET_TIME_BUDGET"
        )
    if killed_for == "output_limit" or (rc != 0 and any(
            _FSIZE_TEXT.search(line) for line in tail[-10:])) or _signal_name(rc) == "SIGXFSZ":
        return "output_limit", (
            f"killed: it wrote more than the output limit of {(limits.output_limit or 0) / 2**20:g}"
            " MB (into its output directory, or one file); save less (or raise output_limit_mb "
            "in the goal)")
    if killed_for == "processes":
        return "crashed", (
            f"killed: it started more than the limit of {limits.max_processes} processes; "
            "start fewer (or raise max_processes in the goal)")
    if killed_for == "oom":
        return "oom", (
            f"killed: memory {peak / 2**20:.0f} MiB exceeded the limit of "
            f"{(limits.mem_limit or 0) / 2**20:.0f} MiB; use a smaller model or batch"
        )
    if rc != 0:
        sig = _signal_name(rc)
        if sig == "SIGKILL" and kernel_oom:
            return "oom", (f"killed by the kernel's out-of-memory killer (peak {peak / 2**20:.0f} "
                           "MiB seen); use a smaller model or batch")
        if any(_OOM_TEXT.search(line) for line in tail[-10:]):
            return "oom", f"out of memory (exit code {rc}, see the log); use a smaller model"
        if sig is not None:
            return "crashed", (f"killed by {sig} (exit code {rc}), not by MAGNET's limits and "
                               "with no out-of-memory kill seen; see the log tail")
        return "crashed", f"crashed with exit code {rc}; see the log tail"
    if metric is not None and metric not in metrics and metric in (refused or ()):
        return "no_metric", (f"its METRIC {metric} value is not a number (or has more than "
                             "30 digits); print a plain decimal")
    if metric is not None and metric not in metrics:
        return "no_metric", f"exited 0 but printed no `METRIC {metric}=<value>` line"
    if metric is not None and not is_finite(metrics[metric]):
        return "no_metric", f"{metric} is {metrics[metric]}: training diverged; lower the LR"
    if not metrics:
        return "no_metric", "exited 0 but printed no `METRIC name=value` line"
    return "ok", ""
