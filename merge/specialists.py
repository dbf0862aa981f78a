"""Merging specialist checkpoints that descend from one base into a new checkpoint.

Inputs are checked before any arithmetic: every specialist must list the base's hash in its
lineage (it was trained from the base, or from a specialist of it), and all must have the base's
shapes. The merged checkpoint descends from the base too, so it can be merged again.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bitnet.checkpoint import (
    checkpoint_hash,
    checkpoint_lineage,
    descent,
    load_checkpoint,
    save_checkpoint,
)
from bitnet.model import BitNetLM
from bitnet.tokenizer import load_tokenizer
from merge.methods import MergeError, merge


@dataclass(frozen=True)
class MergeInputs:
    base: Path
    specialists: tuple[Path, ...]
    base_hash: str


def check_common_base(base: str | os.PathLike, specialists: list[str | os.PathLike]
                      ) -> MergeInputs:
    """The inputs, once every specialist is shown to descend from `base`; MergeError (one line,
    naming the specialist) otherwise. CheckpointError when a directory is not a checkpoint."""
    if not specialists:
        raise MergeError("no specialists: pass at least one --specialist")
    base_hash = checkpoint_hash(base)
    for specialist in specialists:
        lineage = checkpoint_lineage(specialist)
        if base_hash not in lineage:
            found = f"its base is {lineage[0][:12]}" if lineage else "it records no base"
            raise MergeError(
                f"{specialist} was not trained from {base} ({found}, not {base_hash[:12]}): "
                "merge specialists of one base, trained with `--init BASE` or `init: BASE`")
    return MergeInputs(Path(base), tuple(Path(s) for s in specialists), base_hash)


@dataclass(frozen=True)
class Merged:
    """The loaded inputs and the merged model (so a caller evaluates them without reloading)."""

    base: BitNetLM
    specialists: tuple[BitNetLM, ...]
    merged: BitNetLM


def merge_specialists(inputs: MergeInputs, method: str, out_dir: str | os.PathLike,
                      options: dict[str, Any] | None = None) -> Merged:
    """Merge the specialists' latent weights by `method` (merge.methods) and save the result to
    `out_dir` as a checkpoint descending from the base."""
    base = load_checkpoint(inputs.base)
    specialists = tuple(load_checkpoint(s) for s in inputs.specialists)
    try:
        state = merge(method, base.state_dict(), [s.state_dict() for s in specialists],
                      **(options or {}))
    except TypeError as err:  # an option the method does not take
        raise MergeError(f"{method}: {err}; see `magnet-agent merge --help` for its options"
                         ) from None
    merged = copy.deepcopy(base)
    merged.load_state_dict(state)
    # the base's tokenizer, which its specialists trained with (the template checks that)
    save_checkpoint(merged, out_dir, lineage=descent(inputs.base),
                    tokenizer=load_tokenizer(inputs.base))
    return Merged(base, specialists, merged.eval())
