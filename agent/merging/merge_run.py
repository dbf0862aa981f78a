"""Specialists of one base become one model, and a table says what it cost.

Writes to the output directory (default `runs/merge-<method>-YYYYmmdd-HHMMSS/`, `output_dir`):
`checkpoint/` (the merged model, loadable by export, generate and `--init`), `merge.md` (inputs,
method, options and the table), `merge.png` and `merge.json`. `plan_merge` and
`merge_and_report` are what both `magnet-agent merge` (agent.cli.merge, which prints) and the
merge_specialists tool (agent.tools.merge_tool) do.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from agent.rundir.checkpoint_ref import resolve_checkpoint
from agent.rundir.runs import RunError, runs_root

if TYPE_CHECKING:  # torch: imported when a merge runs, so `magnet-agent --help` starts fast
    from merge.specialists import MergeInputs
    from merge.table import BpbTable

CHECKPOINT_DIR = "checkpoint"
SUMMARY_FILE = "merge.json"  # written last: a folder holding it holds the finished merge
REPORT_FILE, PLOT_FILE = "merge.md", "merge.png"
OUTPUTS = (CHECKPOINT_DIR, REPORT_FILE, PLOT_FILE, SUMMARY_FILE)  # what a merge writes


@dataclass(frozen=True)
class MergePlan:
    """Inputs checked to be specialists of one base, each with the corpus it is scored on."""

    base: str  # as the user named it
    specialists: list[str]  # as the user named them
    dirs: list[Path]  # their checkpoints
    corpora: list[str]
    inputs: MergeInputs


def plan_merge(base: str, specialists: list[str], *, corpora: list[str] | None = None,
               runs_dir: str | Path | None = None) -> MergePlan:
    """Resolve the references (RUN, RUN:EXP or a directory) and check every specialist
    descends from the base; RunError, MergeError or CheckpointError (one line) otherwise."""
    from merge.specialists import check_common_base

    base_dir = resolve_checkpoint(base, runs_dir)
    dirs = [resolve_checkpoint(ref, runs_dir) for ref in specialists]
    inputs = check_common_base(base_dir, dirs)
    return MergePlan(base, list(specialists), dirs, _corpora(dirs, corpora), inputs)


@dataclass(frozen=True)
class MergeReport:
    summary: dict[str, Any]  # what merge.json holds
    table: BpbTable


def merge_and_report(plan: MergePlan, method: str, options: dict[str, Any], out_dir: Path, *,
                     console: Console | None = None) -> MergeReport:
    """Merge by `method`, evaluate base, specialists and merge on each specialist's corpus, and
    write checkpoint/, merge.md, merge.png and (last) merge.json into `out_dir`; progress on
    `console` (None: quiet). MergeError or CorpusError (one line) for what cannot be merged or
    evaluated."""
    from merge.specialists import merge_specialists
    from merge.table import bpb_table

    inputs, dirs, corpora = plan.inputs, plan.dirs, plan.corpora
    if console is not None:
        console.print(f"[bold]merging[/] {len(dirs)} specialists of {plan.base} by {method} → "
                      f"{out_dir}", soft_wrap=True)
    result = merge_specialists(inputs, method, out_dir / CHECKPOINT_DIR, options)

    labels = ["base", *[f"specialist {i}" for i in range(1, len(dirs) + 1)], "merged"]
    models = [result.base, *result.specialists, result.merged]
    columns = list(dict.fromkeys(corpora))
    with Progress(TextColumn("evaluating {task.fields[cell]}"), BarColumn(),
                  MofNCompleteColumn(), TimeElapsedColumn(), console=console,
                  transient=True, disable=console is None) as progress:
        task = progress.add_task("", total=len(models) * len(columns), cell="")

        def advance(model: str, corpus: str) -> None:
            progress.update(task, advance=1, cell=f"{model} on {corpus}")

        table = bpb_table(list(zip(labels, models, strict=True)), columns, on_cell=advance)

    summary = {
        "method": method, "options": options, "base": str(inputs.base), "base_hash":
        inputs.base_hash, "specialists": [{"ref": ref, "checkpoint": str(d), "corpus": c}
                                          for ref, d, c in zip(plan.specialists, dirs, corpora,
                                                               strict=True)],
        "checkpoint": str(out_dir / CHECKPOINT_DIR), "table": table.to_dict(),
    }
    (out_dir / REPORT_FILE).write_text(_markdown(summary, table.markdown()))
    table.plot(out_dir / PLOT_FILE, f"{method} merge of {len(dirs)} specialists")
    partial = out_dir / f"{SUMMARY_FILE}.tmp"
    partial.write_text(json.dumps(summary, indent=2))
    partial.replace(out_dir / SUMMARY_FILE)
    return MergeReport(summary, table)


def merge_errors() -> tuple[type[Exception], ...]:
    """What a merge refuses its inputs with, one line each (imported here: they bring torch)."""
    from bitnet.checkpoint import CheckpointError
    from bitnet.data import CorpusError
    from bitnet.tokenizer import TokenizerError
    from merge.methods import MergeError

    return RunError, CheckpointError, CorpusError, MergeError, TokenizerError


def _corpora(dirs: list[Path], given: list[str] | None) -> list[str]:
    """Each specialist's corpus: `--corpus` in the order of the specialists, else the one its
    checkpoint records."""
    from bitnet.checkpoint import checkpoint_corpus

    if given:
        if len(given) != len(dirs):
            raise RunError(f"{len(given)} --corpus for {len(dirs)} specialists: give one per "
                           "specialist, in the same order, or none")
        return list(given)
    found = []
    for directory in dirs:
        corpus = checkpoint_corpus(directory)
        if corpus is None:
            raise RunError(f"{directory} records no training corpus: pass --corpus for each "
                           "specialist")
        found.append(corpus)
    return found


def output_dir(out: str | None, method: str, runs_dir: str | Path | None) -> Path:
    """Where a merge writes: `out`, else a new `runs/merge-METHOD-TIME/`; RunError when it is
    not empty (nothing is overwritten)."""
    path = Path(out) if out else (
        runs_root(runs_dir) / f"merge-{method}-{datetime.now():%Y%m%d-%H%M%S}")
    if path.exists() and any(path.iterdir()):
        raise RunError(f"{path} is not empty: choose a new --out (nothing is overwritten)")
    return path.resolve()  # made when the merged checkpoint is saved: a refusal leaves nothing


def _markdown(summary: dict[str, Any], table: str) -> str:
    options = ", ".join(f"{k}={v}" for k, v in summary["options"].items()) or "defaults"
    inputs = "\n".join(f"- specialist {i}: `{s['ref']}` (`{s['checkpoint']}`), trained on "
                       f"`{s['corpus']}`" for i, s in enumerate(summary["specialists"], start=1))
    return (f"# Merge: {summary['method']} ({options})\n\n"
            f"- base: `{summary['base']}` (sha256 {summary['base_hash'][:16]}…)\n{inputs}\n"
            f"- merged checkpoint: `{summary['checkpoint']}`\n\n"
            f"val_bpb on each specialist's validation split (lower is better; best in bold):\n\n"
            f"{table}\n![merge]({PLOT_FILE})\n")

