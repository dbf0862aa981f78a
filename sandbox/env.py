"""The environment a training command sees: an allow-list, the MAGNET_* contract, thread counts."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

# What an experiment inherits from the controller's environment: nothing else. An allow-list,
# because a deny-list always misses one (MYSQL_PWD, KUBECONFIG, NETRC, https://token@host …).
ALLOWED = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ")
# MAGNET_* settings an experiment inherits: this machine's corpus cache is not part of it
PASSED_THROUGH = ("MAGNET_CACHE_DIR",)
# Where a run writes its checkpoint; also how its processes are found after a crash (kill_by_env)
OUTPUT_DIR_VAR = "MAGNET_OUTPUT_DIR"


def scrubbed_environ(base: Mapping[str, str] | None = None,
                     names: Iterable[str] = ()) -> dict[str, str]:
    """The allow-listed part of `base` (default os.environ): ALLOWED, PASSED_THROUGH and the
    extra `names` (a goal's `env:`)."""
    base = os.environ if base is None else base
    keep = {*ALLOWED, *PASSED_THROUGH, *names}
    return {k: v for k, v in base.items() if k in keep}


def run_environ(
    *,
    time_budget: float,
    seed: int,
    output_dir: Path,
    steps: int | None = None,
    threads: int | None = None,
    extra: Mapping[str, str] | None = None,
    passed: Iterable[str] = (),
    base: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Environment for one experiment's command: the allow-list (plus `passed`, the names a
    goal's `env:` lists), the MAGNET_* contract, thread counts, and `extra`.

    The running interpreter's bin directory goes first on PATH so `python` in the command is the
    interpreter (and venv) MAGNET itself runs on.
    """
    env = scrubbed_environ(base, passed)
    bindir = os.path.dirname(sys.executable)
    env["PATH"] = os.pathsep.join(
        [bindir, *[p for p in env.get("PATH", "").split(os.pathsep) if p]]
    )
    n = str(threads or free_cpus())
    budget = int(time_budget) if float(time_budget).is_integer() else time_budget
    env.update(
        MAGNET_TIME_BUDGET=str(budget),
        MAGNET_SEED=str(seed),
        **{OUTPUT_DIR_VAR: str(output_dir)},
        OMP_NUM_THREADS=n,
        MKL_NUM_THREADS=n,
        PYTHONUNBUFFERED="1",  # METRIC lines and logs arrive as they are printed
    )
    if steps is not None:
        env["MAGNET_STEPS"] = str(int(steps))
    env.update(extra or {})
    return env


def available_cpus() -> int:
    affinity = getattr(os, "sched_getaffinity", None)  # Linux: the CPUs this process may use
    return len(affinity(0)) if affinity else os.cpu_count() or 1


def free_cpus() -> int:
    """The CPUs other processes are not running on right now (Linux; else all of them).

    Two OpenMP threads that share a CPU with a busy process spin at every barrier: measured here,
    a BitNet training run fell from 10k to 2.4k tokens/s (6.2k with one thread), and a local
    proposal took 20-26 s against 7-10 s with one thread.
    """
    cpus = available_cpus()
    busy = []
    try:
        # the runnable count is instantaneous: the median of a few, 2 ms apart (it is asked
        # before every run and proposal: 10 ms of the loop's time each, not 50)
        for _ in range(5):
            with open("/proc/loadavg", encoding="ascii") as file:
                busy.append(int(file.read().split()[3].split("/")[0]) - 1)  # minus this reader
            time.sleep(0.002)
    except (OSError, ValueError, IndexError):
        return cpus
    return max(1, min(cpus, cpus - sorted(busy)[len(busy) // 2]))
