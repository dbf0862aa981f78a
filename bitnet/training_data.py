"""The template's data step: a run's training split as token ids of its `TOKENIZER`.

Kept out of train.py so the script the planner reads stays short; every error is one line that
names the setting to fix (train.py turns it into its exit message).
"""

from __future__ import annotations

import numpy as np

from bitnet.data import CorpusError, load_train
from bitnet.tokenizer import (
    TextTokenizer,
    TokenizerError,
    byte_tokenizer,
    canonical_spec,
    load_tokenizer,
    load_train_tokens,
)


class TrainingDataError(ValueError):
    """The training split or tokenizer a run was given cannot be used; the message says why."""


def training_split(
    tokenizer_spec: object, train_data: str | None, tokenizer_dir: str | None, corpus: str
) -> tuple[TextTokenizer, np.ndarray]:
    """(tokenizer, training ids): the bytes themselves for "bytes" (MAGNET_TRAIN_DATA), else
    the split MAGNET encoded before the run (MAGNET_TOKENIZER, bitnet.tokenizer)."""
    try:
        spec = canonical_spec(tokenizer_spec)
    except TokenizerError as err:
        raise TrainingDataError(f"TOKENIZER: {err}") from None
    if spec == "bytes":
        if not train_data:
            raise TrainingDataError("MAGNET_TRAIN_DATA is not set: run this with magnet-agent, "
                                    "or set it to $(python -m bitnet.data portable-code)")
        try:
            ids = load_train(train_data)
        except CorpusError as err:
            raise TrainingDataError(f"MAGNET_TRAIN_DATA: {err}") from None
        print(f"corpus {corpus}: {len(ids):,} training bytes")
        return byte_tokenizer(), ids
    if not tokenizer_dir:
        raise TrainingDataError(
            f"MAGNET_TOKENIZER is not set for TOKENIZER = {spec!r}: write TOKENIZER as a plain "
            f"string so MAGNET trains it, or set it to "
            f"$(python -m bitnet.tokenizer portable-code {spec})")
    try:
        tokenizer, ids = load_tokenizer(tokenizer_dir), load_train_tokens(tokenizer_dir)
    except TokenizerError as err:
        raise TrainingDataError(f"MAGNET_TOKENIZER: {err}") from None
    if tokenizer.spec != spec:
        raise TrainingDataError(f"MAGNET_TOKENIZER holds {tokenizer.spec}, not TOKENIZER = "
                                f"{spec!r}: point it at the folder of {spec}")
    print(f"corpus {corpus}: {len(ids):,} training tokens of {spec} "
          f"({tokenizer.vocab_size:,} entries, {tokenizer.fingerprint[:12]})")
    return tokenizer, ids


def check_base_tokenizer(init_checkpoint: str, tokenizer: TextTokenizer) -> None:
    """A specialist keeps its base's tokenizer: its ids mean nothing to another."""
    try:
        base = load_tokenizer(init_checkpoint)
    except TokenizerError as err:
        raise TrainingDataError(f"MAGNET_INIT_CHECKPOINT: {err}") from None
    if base.fingerprint != tokenizer.fingerprint:
        raise TrainingDataError(
            f"MAGNET_INIT_CHECKPOINT was trained with {base.spec} ({base.fingerprint[:12]}), not "
            f"TOKENIZER = {tokenizer.spec!r}: set TOKENIZER = {base.spec!r} (on the base's corpus)")
