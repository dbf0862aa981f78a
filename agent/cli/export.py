"""`magnet-agent export RUN|CHECKPOINT --format hf|gguf [--out PATH]`.

Without --out, a run's checkpoint is exported to `runs/<id>/exports/exp-NNN-hf/` (or
`exp-NNN.gguf`), a plain checkpoint directory beside itself (`DIR-hf`, `DIR.gguf`).
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from agent.rundir.checkpoint_ref import resolve_checkpoint
from sandbox.layout import OUTPUTS_DIR

EXPORTS_DIR = "exports"
FORMATS = ("hf", "gguf")


def default_out(checkpoint: Path, fmt: str) -> Path:
    name = f"{checkpoint.name}-hf" if fmt == "hf" else f"{checkpoint.name}.gguf"
    if checkpoint.parent.name == OUTPUTS_DIR:  # runs/<id>/outputs/exp-NNN
        return checkpoint.parent.parent / EXPORTS_DIR / name
    return checkpoint.parent / name


def export(ref: str, fmt: str, out: str | None, runs_dir: str | None) -> int:
    """Export and print what was written; raises RunError, CheckpointError or ExportError."""
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
        from bitnet.checkpoint import load_checkpoint
        from bitnet.export_gguf import export_gguf, format_table, llamacpp_differences

        rows = export_gguf(checkpoint, target)
        console.print(format_table(rows), markup=False)
        console.print(f"wrote {target} (verified by reading it back)", markup=False,
                      soft_wrap=True)
        differences = llamacpp_differences(load_checkpoint(checkpoint).config)
        for line in differences:
            console.print(f"llama.cpp will differ: {line}", markup=False, soft_wrap=True)
    return 0
