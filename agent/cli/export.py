"""`magnet-agent export RUN|CHECKPOINT --format hf|gguf [--out PATH]`.

Without --out, a run's checkpoint is exported to `runs/<id>/exports/exp-NNN-hf/` (or
`exp-NNN.gguf`), a plain checkpoint directory beside itself (`DIR-hf`, `DIR.gguf`). The
exporters are bitnet.export_hf and bitnet.export_gguf, imported when the command runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from agent.cli import options
from agent.cli.errors import fail, first_line
from agent.rundir.names import EXPORTS_DIR

COMMANDS = ("export",)
FORMATS = ("hf", "gguf")


def add_commands(commands: options.Subparsers) -> None:
    export = commands.add_parser(
        "export", help="export a checkpoint for CPU inference: Hugging Face (packed ternary) "
                       "or GGUF (TQ2_0)")
    export.add_argument("checkpoint", metavar="RUN|RUN:EXP|CHECKPOINT",
                        help="a run (its best experiment), one experiment, or a checkpoint "
                             "directory")
    export.add_argument("--format", choices=FORMATS, required=True)
    export.add_argument("--out", help="where to write (default: runs/<id>/exports/)")
    options.runs_dir(export)


def main(args: argparse.Namespace) -> int:
    """0 when written; 2 with one line when the reference or the checkpoint is refused."""
    from agent.rundir.runs import RunError
    from bitnet.checkpoint import CheckpointError

    try:
        return export(args.checkpoint, args.format, args.out, args.runs_dir)
    except (RunError, CheckpointError, ValueError) as err:
        return fail(first_line(err))


def default_out(checkpoint: Path, fmt: str) -> Path:
    from sandbox.layout import OUTPUTS_DIR

    name = f"{checkpoint.name}-hf" if fmt == "hf" else f"{checkpoint.name}.gguf"
    if checkpoint.parent.name == OUTPUTS_DIR:  # runs/<id>/outputs/exp-NNN
        return checkpoint.parent.parent / EXPORTS_DIR / name
    return checkpoint.parent / name


def export(ref: str, fmt: str, out: str | None, runs_dir: str | None) -> int:
    """Export and print what was written; raises RunError, CheckpointError or ExportError."""
    from agent.rundir.checkpoint_ref import resolve_checkpoint

    console = Console(highlight=False)
    checkpoint = resolve_checkpoint(ref, runs_dir)
    target = Path(out) if out else default_out(checkpoint, fmt)
    target.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "hf":
        from bitnet.export_hf import export_hf, summarize_hf_export

        export_hf(checkpoint, target)
        console.print(summarize_hf_export(target).table(), markup=False)
        console.print(f"wrote {target}: AutoModelForCausalLM.from_pretrained({str(target)!r}) "
                      "loads it as BitNetForCausalLM", markup=False, soft_wrap=True)
    else:
        from bitnet.checkpoint import load_config
        from bitnet.export_gguf import (
            export_gguf,
            format_table,
            llamacpp_differences,
            llamacpp_notice,
        )

        config = load_config(checkpoint)  # the weights are read once, by the export
        notice = llamacpp_notice(config)
        if notice:  # before writing: the file is still written, for its weights
            console.print(notice, markup=False, soft_wrap=True)
        rows = export_gguf(checkpoint, target)
        console.print(format_table(rows), markup=False)
        console.print(f"wrote {target} (verified by reading it back)", markup=False,
                      soft_wrap=True)
        if not notice:
            for line in llamacpp_differences(config):
                console.print(f"llama.cpp rounds differently: {line}", markup=False,
                              soft_wrap=True)
    return 0
