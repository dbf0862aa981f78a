"""Which checkpoint a command means: `RUN` (the experiment it stands for), `RUN:EXP`, or a
checkpoint directory.

`RUN` is `ranking.standing_record`: its best kept experiment, else its first baseline run (a run
with nothing kept exports the code it started from, as trained by its baseline). Its checkpoint
is the one its first run saved in `outputs/exp-NNN/` (a repeat run's, `exp-NNN-run2/`, when
only that one exists: the second baseline is measured as a repeat).
"""

from __future__ import annotations

from pathlib import Path

from agent.rundir import ranking
from agent.rundir.names import RUN_FILE
from agent.rundir.records import RunRecords
from agent.rundir.runs import RunError, find_run, parse_exp, run_goal_spec
from bitnet.checkpoint_files import (
    CONFIG_FILE,
    TOKENIZER_CONFIG_FILE,
    TOKENIZER_FILE,
    WEIGHTS_FILE,
)
from sandbox.layout import MAX_REPEATS
from sandbox.reader import RunReader
from sandbox.untrusted import MissingFileError, UntrustedFileError, check_regular


def resolve_checkpoint(ref: str, runs_dir: str | Path | None = None) -> Path:
    """The checkpoint directory `ref` names; RunError (one line) when there is none, or when
    its files are not regular files (what an experiment left is untrusted: a symlink to a host
    file must not be exported, merged or copied as a checkpoint)."""
    if Path(ref).is_dir() and not (Path(ref) / RUN_FILE).is_file():
        checked(Path(ref).resolve())  # a path the user gave may be a link to a directory
        return Path(ref)
    run, sep, exp_text = ref.rpartition(":") if ":" in ref else (ref, "", "")
    run_dir = find_run(run, runs_dir)
    reader = RunReader(run_dir)
    if sep:
        try:
            exp = parse_exp(exp_text)
        except RunError as err:
            raise RunError(f"{ref}: {err}") from None
    else:
        exp = standing_exp(run_dir)
    for repeat in range(MAX_REPEATS):
        if (out := reader.output_dir(exp, repeat)).is_dir():
            return checked(out)
    raise RunError(f"experiment {exp:03d} of {run_dir.name} left no checkpoint (no "
                   f"{reader.output_dir(exp).relative_to(run_dir)}/); it may have failed "
                   "before saving: pick another with RUN:EXP")


def checked(checkpoint: Path) -> Path:
    """`checkpoint`, once its config, weights and tokenizer files are regular files (not links,
    FIFOs or devices); a missing one is left for the loader to name."""
    for name in (CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_FILE, TOKENIZER_CONFIG_FILE):
        try:
            check_regular(checkpoint, [name])
        except MissingFileError:
            continue
        except UntrustedFileError as err:
            raise RunError(f"checkpoint refused: {err}") from None
    return checkpoint


def standing_exp(run_dir: Path) -> int:
    """The experiment `RUN` means (ranking.standing_record); RunError when there is none."""
    goal = run_goal_spec(run_dir).metric.goal
    record = ranking.standing_record(RunRecords(run_dir).read(), goal)
    if record is None:
        raise RunError(f"{run_dir.name} has no best experiment yet; name one as "
                       f"{run_dir.name}:EXP")
    return int(record["exp"])
