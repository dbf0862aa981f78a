"""Limits on everything code from the workspace runs: processes, memory (the private TMPDIR
counted), the output directory. One cgroup per run, removed after it, where this machine lets
MAGNET make one; fallbacks otherwise (stated in `Limits.how`):

  processes  cgroup `pids.max`; else RLIMIT_NPROC (which the kernel does not enforce for uid 0)
             and the runner's count of the run's processes at each poll
  memory     cgroup memory limit (tmpfs pages are charged to it too); else the runner's (or,
             for the evaluator's servers, sandbox.limit_exec's) poll of RSS + tmpfs usage
  output     the runner's poll of the output directory's size, and RLIMIT_FSIZE per file

`Limits.wrap(argv)` prefixes a command with a few lines of shell (or, to watch memory where no
cgroup can, sandbox.limit_exec) that join the cgroup and set the rlimits before bubblewrap
starts, so every process of the run inherits them.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import secrets
import shlex
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sandbox import limit_exec

DEFAULT_OUTPUT_LIMIT_MB = 1024  # the goal's output_limit_mb
DEFAULT_MAX_PROCESSES = 256  # the goal's max_processes
CGROUP_ROOT = Path("/sys/fs/cgroup")
CONTROLLERS = ("pids", "memory")
_names = itertools.count()


@dataclass
class Limits:
    """One run's (or one evaluation's) cgroups and rlimits; `how` names what enforces them."""

    memory: int | None = None
    processes: int | None = None
    fsize: int | None = None
    cgroups: dict[str, Path] = field(default_factory=dict)  # controller -> its directory
    nest: bool = False  # each process that starts through wrap() gets its own child cgroup
    watch: bool = False  # without a memory cgroup, limit_exec polls memory (no runner does)

    @property
    def how(self) -> str:
        procs = ("cgroup pids" if "pids" in self.cgroups else
                 "RLIMIT_NPROC and polling" if os.geteuid() != 0 else "polling")
        memory = "cgroup memory" if "memory" in self.cgroups else "polling RSS + tmpfs"
        return f"processes: {procs}; memory: {memory}"

    def wrap(self, argv: Sequence[str]) -> list[str]:
        spec = self._cgroup_spec()
        if "pids" not in self.cgroups and self.processes is not None and os.geteuid() != 0:
            spec["nproc"] = _own_processes() + self.processes
        if self.watch and "memory" not in self.cgroups and self.memory is not None:
            spec["watch"] = self.memory
            return [sys.executable, "-I", "-S", limit_exec.__file__, json.dumps(spec), "--",
                    *argv]
        return ["/bin/sh", "-c", _shell(spec), "limits", *argv]  # ~1 ms; Python takes ~50

    def admit(self, pid: int) -> None:
        """Put a process already running (a fork server's child, sandbox.zygote) in these
        cgroups, as wrap() puts a command it starts. Its rlimits are its own to set."""
        limit_exec.enter_cgroups(self._cgroup_spec(), pid)

    def _cgroup_spec(self) -> dict[str, object]:
        """limit_exec's spec for these cgroups (join them, or with `nest` a child of each with
        the limits set) and the file size rlimit."""
        spec: dict[str, object] = {"fsize": self.fsize}
        dirs = sorted({str(p) for p in self.cgroups.values()})
        if self.nest:
            spec.update(nest=dirs, memory=self.memory, processes=self.processes)
        else:
            spec["join"] = dirs
        return spec

    def stat(self, controller: str, name: str, key: str) -> int:
        """A counter from a flat-keyed cgroup file (pids.events `max`, memory.events
        `oom_kill`, v1 memory.oom_control `oom_kill`), summed over nested children; 0 if none."""
        base = self.cgroups.get(controller)
        if base is None:
            return 0
        total = 0
        for path in [base / name, *base.glob(f"*/{name}")]:
            with contextlib.suppress(OSError, ValueError):
                for line in path.read_text().splitlines():
                    parts = line.split()
                    if len(parts) == 2 and parts[0] == key:
                        total += int(parts[1])
        return total

    def process_limit_hit(self) -> bool:
        return self.stat("pids", "pids.events", "max") > 0

    def oom_kills(self) -> int:
        return (self.stat("memory", "memory.events", "oom_kill")
                + self.stat("memory", "memory.oom_control", "oom_kill"))

    def peak_memory(self) -> int:
        """The cgroup's peak charge (v1 max_usage_in_bytes, v2 memory.peak); 0 if unknown."""
        base = self.cgroups.get("memory")
        for name in ("memory.max_usage_in_bytes", "memory.peak") if base else ():
            with contextlib.suppress(OSError, ValueError):
                return int((base / name).read_text())
        return 0

    def remove(self, timeout: float = 5.0) -> None:
        """Kill whatever is left in the cgroups and remove them (children first)."""
        for base in set(self.cgroups.values()):
            for directory in [*base.glob("*/"), base]:
                _empty(directory, timeout)
                with contextlib.suppress(OSError):
                    directory.rmdir()
        self.cgroups.clear()


def _prefix(pid: int) -> str:
    """How the names of the cgroups process `pid` makes begin."""
    return f"magnet-{pid}-"


def cgroups_made_by(pid: int) -> set[Path]:
    """The cgroups (and their children) process `pid` made and has not removed."""
    return set(CGROUP_ROOT.glob(f"*/**/{_prefix(pid)}*"))


def run_limits(*, memory: int | None, processes: int | None, fsize: int | None,
               nest: bool = False, watch: bool = False) -> Limits:
    """Limits with a fresh cgroup where one can be made (under this process's own, so the
    machine's limits on MAGNET still hold); remove() it after the run."""
    limits = Limits(memory, processes, fsize, nest=nest, watch=watch)
    name = f"{_prefix(os.getpid())}{_pid_namespace()}-{next(_names)}-{secrets.token_hex(3)}"
    for controller, parent in _parents().items():
        _remove_stale(parent)
        directory = parent / name
        try:
            directory.mkdir(exist_ok=True)
            if not nest:
                limit_exec.set_limits(directory, memory=memory if controller == "memory" else None,
                                      processes=processes if controller == "pids" else None)
        except OSError:
            with contextlib.suppress(OSError):
                directory.rmdir()
            continue
        limits.cgroups[controller] = directory
    return limits


def output_usage(path: Path, stop_at: int) -> int:
    """Bytes the directory takes on disk (links not followed; each entry at least 1 KiB, so a
    million empty files count too); stops counting past `stop_at`."""
    total = 0
    todo = [str(path)]
    while todo and total <= stop_at:
        with contextlib.suppress(OSError), os.scandir(todo.pop()) as entries:
            for entry in entries:
                with contextlib.suppress(OSError):
                    st = entry.stat(follow_symlinks=False)
                    total += max(st.st_blocks * 512, 1024)
                    if entry.is_dir(follow_symlinks=False):
                        todo.append(entry.path)
    return total


def _shell(spec: dict) -> str:
    """limit_exec's work (but watching) as a POSIX shell script: join (or make, set and join)
    the cgroups, set the rlimits (`ulimit -f` counts 512-byte blocks), exec the command."""
    lines = []
    for directory in map(shlex.quote, spec.get("nest", [])):
        mine = f"{directory}/p$$"
        lines.append(f"mkdir -p {mine}")
        for key in ("processes", "memory"):
            for name in limit_exec.LIMIT_FILES[key] if spec.get(key) is not None else ():
                lines.append(f"if [ -e {mine}/{name} ]; then echo {int(spec[key])} > "
                             f"{mine}/{name}; fi")
        if spec.get("memory") is not None:
            lines.append(f"if [ -e {mine}/{limit_exec.NO_SWAP} ]; then echo 0 > "
                         f"{mine}/{limit_exec.NO_SWAP}; fi")
        lines.append(f"echo $$ > {mine}/cgroup.procs")
    lines += [f"echo $$ > {shlex.quote(d)}/cgroup.procs" for d in spec.get("join", [])]
    if spec.get("fsize") is not None:
        lines.append(f"ulimit -f {max(1, int(spec['fsize']) // 512)}")
    if spec.get("nproc") is not None:
        lines.append(f"ulimit -u {int(spec['nproc'])}")
    return "set -e\n" + "".join(f"{line}\n" for line in lines) + 'exec "$@"'


def _parents() -> dict[str, Path]:
    """Where this process may make child cgroups: controller -> its own cgroup directory."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return {}
    found: dict[str, Path] = {}
    for line in lines:
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(","):
            if controller in CONTROLLERS:
                directory = CGROUP_ROOT / controller / path.lstrip("/")
                if (directory / "cgroup.procs").exists():
                    found[controller] = directory
    unified = next((line.split(":", 2)[2] for line in lines if line.startswith("0::")), None)
    if unified is not None and (CGROUP_ROOT / "cgroup.controllers").exists():
        directory = CGROUP_ROOT / unified.lstrip("/")
        for controller in CONTROLLERS:
            if controller not in found and _enable(directory, controller):
                found[controller] = directory
    return found


def _enable(directory: Path, controller: str) -> bool:
    """cgroup v2: make `controller` available to children of `directory` (refused when the
    directory holds processes and is not the root: then there is no v2 limit here)."""
    try:
        if controller in (directory / "cgroup.subtree_control").read_text().split():
            return True
        (directory / "cgroup.subtree_control").write_text(f"+{controller}")
        return True
    except OSError:
        return False


def _remove_stale(parent: Path) -> None:
    """Remove the cgroups of MAGNET controllers that died (kill -9) before removing them."""
    for directory in parent.glob(f"magnet-*-{_pid_namespace()}-*"):  # pids we can check
        try:
            os.kill(int(directory.name.split("-")[1]), 0)
        except ProcessLookupError:
            Limits(cgroups={"stale": directory}).remove(timeout=1.0)
        except (ValueError, IndexError, PermissionError):
            continue


def _pid_namespace() -> str:
    """This PID namespace's inode: a pid names a process only within its namespace."""
    try:
        return str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return "0"


def _empty(directory: Path, timeout: float) -> None:
    kill = directory / "cgroup.kill"  # v2, Linux 5.14: the kernel kills them all at once
    with contextlib.suppress(OSError):
        if kill.exists():
            kill.write_text("1")
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            pids = [int(p) for p in (directory / "cgroup.procs").read_text().split()]
        except (OSError, ValueError):
            return
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.01)


def _own_processes() -> int:
    """Processes of this real uid now: RLIMIT_NPROC counts them all, not only the run's."""
    uid, count = os.getuid(), 0
    for entry in os.listdir("/proc"):
        with contextlib.suppress(OSError):
            if entry.isdigit() and os.stat(f"/proc/{entry}").st_uid == uid:
                count += 1
    return count
