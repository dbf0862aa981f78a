"""Warm starts: the next run's interpreter, confined, has imported torch before its clock starts.

A cold run spawns `python train.py` and pays for the interpreter and its imports (torch: seconds)
inside the run. With a `WarmStarter` on the workspace, the run after this one is started as soon
as this one ends (while the evaluator scores and the planner plans): sandbox/warm_child.py under
the same confinement, the same environment and in the same directory as the cold command would
be, imports what the template imports and waits on its stdin. When the run comes, it is told
to go (its environment, its thread count) and runs the script as __main__; the run's clock
starts then. Only MAGNET's code runs before the go, inside the confinement the experiment gets.

Where the run's limits are cgroups, the warm process is not started but forked
(sandbox.zygote): a fork server, started once with the same confinement except that it sees the
whole outputs folder, has imported all that; its child covers that folder, keeps its own staging
directory and waits as a started one would. A fork takes milliseconds, where an interpreter and
its imports take seconds of CPU that the scoring and the planner would lack.

Only for a command of the form `python SCRIPT.py`; anything else (and a run whose environment
differs in what an interpreter reads at start-up) runs cold. What a warm run sees differently:
its MAGNET_OUTPUT_DIR is a fresh staging directory (the confinement is fixed when the process
starts, before the run's number is known), renamed to the run's output directory once every
process of the run has exited.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from sandbox.confine import Confinement
from sandbox.env import OUTPUT_DIR_VAR
from sandbox.limits import Limits, run_limits
from sandbox.proctree import ProcessTree, niced, unnice
from sandbox.run_setup import Caps
from sandbox.zygote import ForkedChild, Zygote, ZygoteError, usable

CHILD = Path(__file__).with_name("warm_child.py")
STAGING_PREFIX = ".warm-"  # staging output directories, next to the runs' own
# what a run sets differently from the one before: applied at the go, not at start-up
# (MAGNET_TOKENIZER: the experiment's tokenizer folder, bitnet.tokenizer.TOKENIZER_ENV)
PER_RUN = frozenset({"MAGNET_SEED", "MAGNET_STEPS", "MAGNET_TIME_BUDGET", "MAGNET_SCHEDULE",
                     "MAGNET_TOKENIZER", OUTPUT_DIR_VAR, "OMP_NUM_THREADS", "MKL_NUM_THREADS"})
SWITCH = "MAGNET_WARM_START"  # "0": every run starts cold (to measure what warm starts save)
PYTHONS = ("python", "python3", os.path.basename(sys.executable))

Confine = Callable[[Path], Confinement]  # the run's confinement given its output directory
Spawn = Callable[[], "tuple[subprocess.Popen | ForkedChild, Limits]"]


def script_of(command: str) -> str | None:
    """SCRIPT.py when `command` is exactly `python SCRIPT.py`, else None (it runs cold)."""
    try:
        words = shlex.split(command)
    except ValueError:
        return None
    if len(words) == 2 and words[0] in PYTHONS and words[1].endswith(".py"):
        return words[1]
    return None


@dataclass
class _Warm:
    proc: subprocess.Popen | ForkedChild | None  # None: to be forked at the run (`fork`)
    key: tuple
    staging: Path
    launch_env: dict[str, str]
    limits: Limits  # the run's cgroup and rlimits: the process is started inside them
    fork: Callable[[], ForkedChild | None] | None = None


class WarmStarter:
    """Keeps at most one warm process: for the run that comes after the last one."""

    def __init__(self, outputs: Path) -> None:
        self.outputs = outputs
        self.warm: _Warm | None = None
        self.ran_in: Path | None = None  # the staging directory the last run wrote into, if warm
        self.zygote: Zygote | None = None  # forks the warm processes, where it can
        self._forking = True  # until a fork server fails: then warm processes start as before
        self._count = 0
        outputs.mkdir(parents=True, exist_ok=True)
        for stale in outputs.glob(f"{STAGING_PREFIX}*"):  # a crashed controller's
            shutil.rmtree(stale, ignore_errors=True)

    def prepare(self, command: str, cwd: Path, env: Mapping[str, str], confine: Confine,
                caps: Caps = (None, None, None), *, forked_only: bool = False) -> None:
        """Start a warm process for a run of `command` like this one (replacing any other),
        under the limits `caps` names, as sandbox.runner starts a cold one. `forked_only`:
        only where it can be forked (the fork server then stays for the runs after)."""
        self._discard()
        script = script_of(command)
        if script is None:
            return
        self._count += 1
        staging = self.outputs / f"{STAGING_PREFIX}{os.getpid()}-{self._count}"
        staging.mkdir()
        launch_env = {**env, OUTPUT_DIR_VAR: str(staging)}
        python = shlex.split(command)[0]  # as the shell finds it on the run's PATH
        python = shutil.which(python, path=env.get("PATH")) or python
        memory, processes, fsize = caps
        limits = run_limits(memory=memory, processes=processes, fsize=fsize)
        zygote = self._zygote(python, cwd, launch_env, confine, staging, limits)
        fork = None
        if zygote is None and forked_only:
            limits.remove()
            staging.rmdir()
            return
        if zygote is not None:  # forked now if it has imported, else when the run comes
            fork = functools.partial(self._fork, zygote, staging, limits, fsize)
            proc = fork() if zygote.ready() else None
            launch_env = zygote.env
        else:
            argv = niced(limits.wrap(confine(staging).wrap([python, str(CHILD)])))
            proc = subprocess.Popen(
                argv, cwd=cwd, env=launch_env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, start_new_session=True)
        key = _key(command, cwd, env, confine(staging), caps)
        self.warm = _Warm(proc, key, staging, launch_env, limits, fork)

    def _zygote(self, python: str, cwd: Path, env: dict[str, str], confine: Confine,
                staging: Path, limits: Limits) -> Zygote | None:
        """The fork server for runs like this one (started, or restarted when the one there is
        not for this view and environment; it imports meanwhile); None where forking cannot be
        used."""
        if not self._forking or not usable(confine(staging), limits):
            return None
        shared = confine(self.outputs)  # every run's view, but the whole outputs folder
        key = (python, str(cwd), tuple(shared.wrap(["x"])),
               tuple(sorted((k, v) for k, v in env.items() if k not in PER_RUN)))
        if self.zygote is None or self.zygote.key != key or not self.zygote.alive():
            self._close_zygote()
            self.zygote = Zygote("train", shared, cwd=cwd, env=env, key=key, python=python)
        return self.zygote

    def _fork(self, zygote: Zygote, staging: Path, limits: Limits,
              fsize: int | None) -> ForkedChild | None:
        """A warm process forked into `staging` (waiting for the server to have imported);
        None if the server failed, and from then on warm processes are started instead."""
        try:
            return zygote.fork(own=[(staging, True)], cover=[self.outputs], limits=limits,
                               fsize=fsize, stderr_to_stdout=True)
        except ZygoteError:
            self._close_zygote()
            self._forking = False
            return None

    def take(self, command: str, cwd: Path, env: Mapping[str, str], confine: Confine,
             caps: Caps = (None, None, None)) -> tuple[Spawn, Path] | None:
        """(spawn, staging directory) for this run if the warm process fits it, else None (and
        the unfitting one is stopped). `spawn()` tells it to go and returns it and its limits as
        the runner's process; the run writes into the staging directory (`settle` moves it)."""
        if self.warm is None:  # the first run: forked too, where it can be
            self.prepare(command, cwd, env, confine, caps, forked_only=True)
        warm, self.warm, self.ran_in = self.warm, None, None
        if warm is None:
            return None
        key = _key(command, cwd, env, confine(warm.staging), caps)
        if warm.key == key and warm.proc is None and warm.fork is not None:
            warm.proc = warm.fork()  # its server was still importing at prepare()
        proc = warm.proc
        if warm.key != key or proc is None or proc.poll() is not None:
            _stop(warm)
            return None
        script = script_of(command)
        run_env = {**env, OUTPUT_DIR_VAR: str(warm.staging)}
        order = {"script": script, "env": {k: v for k, v in run_env.items() if k != "TMPDIR"},
                 "unset": [k for k in warm.launch_env if k not in run_env and k != "TMPDIR"],
                 "threads": env.get("OMP_NUM_THREADS")}

        def spawn() -> tuple[subprocess.Popen, Limits]:
            assert proc.stdin is not None
            unnice(proc.pid)  # it waited behind the scorer and the planner: its run comes
            with contextlib.suppress(BrokenPipeError):  # died meanwhile: the runner sees it exit
                proc.stdin.write(json.dumps(order).encode() + b"\n")
                proc.stdin.close()
            return proc, warm.limits

        self.ran_in = warm.staging
        return spawn, warm.staging

    def after(self, took: tuple[Spawn, Path] | None, out_dir: Path, command: str, cwd: Path,
              env: Mapping[str, str], confine: Confine, caps: Caps) -> None:
        """After a run: what `take` gave it settles into `out_dir`, and the next run's warm
        process starts (its imports overlap this run's scoring)."""
        if took is not None:
            self.settle(took[1], out_dir)
        self.prepare(command, cwd, env, confine, caps)

    @staticmethod
    def settle(staging: Path, out_dir: Path) -> None:
        """After the run (every process gone): its staging directory becomes `out_dir`."""
        shutil.rmtree(out_dir, ignore_errors=True)  # the empty one the run was given
        staging.rename(out_dir)

    def close(self) -> None:
        """At the end: stop the warm process (never told to go) and the fork server."""
        self._discard()
        self._close_zygote()

    def _discard(self) -> None:
        """Stop the warm process that was never told to go, and remove its staging directory."""
        warm, self.warm = self.warm, None
        if warm is not None:
            _stop(warm)

    def _close_zygote(self) -> None:
        zygote, self.zygote = self.zygote, None
        if zygote is not None:
            zygote.close()


def warm_starter(outputs: Path) -> WarmStarter | None:
    """The research loop's warm starter, unless SWITCH turns warm starts off."""
    return None if os.environ.get(SWITCH) == "0" else WarmStarter(outputs)


def _key(command: str, cwd: Path, env: Mapping[str, str], confined: Confinement,
         caps: Caps) -> tuple:
    """What must be equal for a warm process to stand for a cold run: the command, directory,
    confinement (given the same output directory), limits, and every variable but the per-run
    ones."""
    fixed = tuple(sorted((k, v) for k, v in env.items() if k not in PER_RUN))
    return command, str(cwd), tuple(confined.wrap(["x"])), caps, fixed


def _stop(warm: _Warm) -> None:
    """Kill the process and every descendant (bubblewrap's inner processes have a session of
    their own, so the group alone does not reach them), reap it, drop its staging directory."""
    if warm.proc is not None:
        tree = ProcessTree(warm.proc.pid)
        tree.check()  # learns the members
        tree.kill_all(signal.SIGKILL)
        warm.proc.wait()
        tree.wait_gone(5.0)
        for stream in (warm.proc.stdin, warm.proc.stdout):
            with contextlib.suppress(OSError):
                if stream is not None:
                    stream.close()
    warm.limits.remove()
    shutil.rmtree(warm.staging, ignore_errors=True)

