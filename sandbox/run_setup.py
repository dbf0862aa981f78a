"""What a run of the workspace's command is given: its environment, its confinement (given the
output directory it writes), and its limits. One place, so that a warm process begun ahead of
its run (sandbox.warm) is set up exactly as that run will be, or is not taken."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

from sandbox.confine import Confinement
from sandbox.confine import confinement as default_confinement
from sandbox.env import PASSED_THROUGH, run_environ

Caps = tuple[int | None, int | None, int | None]  # memory, processes, output bytes (limits)


class RunSetup(NamedTuple):
    env: dict[str, str]
    confine: Callable[[Path], Confinement]  # the run's confinement given its output directory
    caps: Caps  # what sandbox.limits enforces


def run_setup(
    workspace: Path, out_dir: Path, *, time_budget: float, seed: int, steps: int | None,
    threads: int | None, env: Mapping[str, str] | None, passed_env: Sequence[str],
    confinement: Confinement | None, mem_limit: int | None, output_limit: int | None,
    max_processes: int | None,
) -> RunSetup:
    run_env = run_environ(time_budget=time_budget, seed=seed, output_dir=out_dir, steps=steps,
                          threads=threads, extra=env, passed=passed_env)
    base = confinement or default_confinement()

    def confine(out: Path) -> Confinement:  # the workspace is read-only: a run leaves outputs
        return base.with_paths(writable=[out], readable=[
            workspace, *(run_env[k] for k in PASSED_THROUGH if k in run_env)])

    return RunSetup(run_env, confine, (mem_limit, max_processes, output_limit))
