"""llama.cpp (llama-cpp-python) running our GGUF export: logits, bits per byte, generation.

llama-cpp-python is optional (`make llama-cpp` builds it; CI does not): it is imported on use,
and `require()` turns its absence into one error line with the fix. Token ids are fed directly
(bytes, or a trained BPE's ids as our tokenizer encodes them), never through llama.cpp's
tokenizer, so both sides see the same ids.

The KV cache is F32 here (llama.cpp's default is F16; ours is fp32): what is compared with our
model, and what `generate --engine llama.cpp` decodes with, is then llama.cpp's graph and its
activation quantisation (bitnet.export_gguf explains), not a rounding of the cache.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from bitnet.evaluate import (
    BYTE_VOCAB,
    EVAL_BYTES,
    batch_nats,
    batch_windows,
    encode_batch,
    eval_batches,
    scored_bytes,
)

if TYPE_CHECKING:
    from bitnet.tokenizer import TextTokenizer

INSTALL_HINT = "llama-cpp-python is not installed: `make llama-cpp` builds it into this venv"


class LlamaCppError(ValueError):
    """llama.cpp is missing or cannot run this model; the message says why and what to do."""


def available() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


def require() -> None:
    if not available():
        raise LlamaCppError(INSTALL_HINT)


def load(gguf_path: str | os.PathLike, n_ctx: int, *, logits_all: bool, f32_kv: bool = True,
         n_threads: int = 1):
    """A llama_cpp.Llama on `gguf_path` (quiet); a file llama.cpp refuses raises LlamaCppError."""
    require()
    import llama_cpp

    kv = {"type_k": llama_cpp.GGML_TYPE_F32, "type_v": llama_cpp.GGML_TYPE_F32} if f32_kv else {}
    try:
        with _quiet_stderr():  # llama.cpp warns that it pads n_ctx past the trained context
            return llama_cpp.Llama(
                str(gguf_path), n_ctx=max(n_ctx, 1), n_batch=max(n_ctx, 1),
                n_threads=n_threads, n_threads_batch=n_threads, logits_all=logits_all,
                verbose=False, flash_attn=False, **kv,
            )
    except ValueError as err:  # llama-cpp-python's "Failed to load model from file: ..."
        raise LlamaCppError(f"llama.cpp cannot load {gguf_path}: {err}") from err


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """File descriptor 2 to /dev/null: llama.cpp's C++ code writes there directly."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def window_logits(llm, ids: Sequence[int]) -> np.ndarray:
    """Next-token logits at every position of `ids`, from a fresh context (llm has logits_all)."""
    llm.reset()
    llm.eval(list(ids))
    return np.array(llm.scores[: len(ids)], dtype=np.float32)


def llamacpp_logits(gguf_path: Path, ids: Sequence[int], *, f32_kv: bool = True,
                    n_threads: int = 1) -> np.ndarray:
    """Next-token logits at every position from llama.cpp, token ids fed directly."""
    llm = load(gguf_path, len(ids), logits_all=True, f32_kv=f32_kv, n_threads=n_threads)
    try:
        return window_logits(llm, ids)
    finally:
        llm.close()


def llamacpp_bpb(gguf_path: Path, val: np.ndarray, seq_len: int, *,
                 eval_bytes: int = EVAL_BYTES, n_threads: int = 1,
                 tokenizer: TextTokenizer | None = None) -> tuple[float, int]:
    """llama.cpp's (val_bpb, bytes scored) on exactly the windows, token ids and loss of our
    evaluator (bitnet.evaluate.evaluate_bpb: eval_batches, encode_batch, batch_nats), one fresh
    context per window. `tokenizer`: the model's (None: bytes), as evaluate_bpb takes it."""
    vocab = BYTE_VOCAB if tokenizer is None else tokenizer.vocab_size
    batches = eval_batches(val, seq_len, eval_bytes, batch_windows(seq_len, vocab))
    llm = load(gguf_path, seq_len, logits_all=True, n_threads=n_threads)
    total = 0.0
    try:
        if llm.n_vocab() != vocab:  # a BPE model scored on byte ids, say
            raise LlamaCppError(f"{gguf_path} has {llm.n_vocab()} token ids, the tokenizer "
                                f"{vocab}: pass llamacpp_bpb the tokenizer the model was "
                                "trained with (bitnet.tokenizer.load_tokenizer(checkpoint))")
        for batch in batches:
            ids, lengths = encode_batch(batch, tokenizer)
            # each window alone (a BPE window only its own tokens, not the padding); positions
            # past a window's end are zeros, never targets (batch_nats masks them)
            logits = np.zeros((*ids.shape, vocab), dtype=np.float32)
            for row, window in enumerate(ids):
                n = ids.shape[1] if lengths is None else int(lengths[row])
                logits[row, :n] = window_logits(llm, window[:n].tolist())
            total += batch_nats(torch.from_numpy(logits), torch.from_numpy(ids.astype(np.int64)),
                                lengths)
    finally:
        llm.close()
    n_bytes = scored_bytes(batches)
    return total / n_bytes / math.log(2), n_bytes


class LlamaCppModel:
    """A GGUF export run by llama.cpp behind the interface bitnet.generate decodes with
    (`max_len`, `new_cache`, `model(ids, cache, last_only=True)`), so sampling, truncation and
    streaming are the same code for both engines. llama.cpp holds its own KV cache; `new_cache`
    empties it and the object it returns only counts positions."""

    def __init__(self, gguf_path: str | os.PathLike, context: int, *, n_threads: int = 1,
                 config=None, tokenizer=None) -> None:
        self.max_len = context
        self.config, self.tokenizer = config, tokenizer  # what bitnet.generate checks ids with
        self.llm = load(gguf_path, context, logits_all=False, n_threads=n_threads)
        vocab = BYTE_VOCAB if tokenizer is None else tokenizer.vocab_size
        n_vocab = self.llm.n_vocab()
        if n_vocab != vocab:  # else a BPE model's ids would be decoded as bytes
            self.llm.close()
            raise LlamaCppError(f"{gguf_path} has {n_vocab} token ids, the tokenizer "
                                f"{vocab}: pass the checkpoint's tokenizer (load_tokenizer), or "
                                "use from_checkpoint")

    def new_cache(self, batch: int = 1, max_len: int | None = None) -> _Positions:
        self.llm.reset()
        return _Positions()

    def __call__(self, input_ids: torch.Tensor, cache: _Positions | None = None, *,
                 last_only: bool = False) -> torch.Tensor:
        """Logits [1, 1, vocab] after `input_ids` [1, n] (which continue the cached ones)."""
        import llama_cpp

        if cache is None:
            self.llm.reset()
        self.llm.eval(input_ids[0].tolist())
        if cache is not None:
            cache.length = self.llm.n_tokens
        # without logits_all, llama-cpp-python keeps no scores: read the batch's last row from
        # the context (computing every prompt position's logits would cost n_ctx x vocab)
        last = llama_cpp.llama_get_logits_ith(self.llm._ctx.ctx, -1)
        logits = np.ctypeslib.as_array(last, shape=(self.llm.n_vocab(),))
        return torch.tensor(logits, dtype=torch.float32).view(1, 1, -1)  # a copy

    def close(self) -> None:
        self.llm.close()


class _Positions:
    length = 0


def from_checkpoint(checkpoint_dir: str | os.PathLike, *, n_threads: int = 1) -> LlamaCppModel:
    """Export a checkpoint to a temporary GGUF and load it in llama.cpp (which maps the file, so
    it is deleted at once). LlamaCppError when llama.cpp is missing or cannot compute the model;
    CheckpointError for a bad checkpoint."""
    import tempfile

    from bitnet.checkpoint import load_config
    from bitnet.export_gguf import LLAMACPP_ACT, export_gguf, llamacpp_blockers
    from bitnet.export_hf import checkpoint_tokenizer

    require()
    config = load_config(checkpoint_dir)  # the weights are read once, by the export
    tokenizer = checkpoint_tokenizer(checkpoint_dir, config.vocab_size)
    if blockers := llamacpp_blockers(config):
        raise LlamaCppError(
            f"llama.cpp cannot compute this model ({'; '.join(blockers)}): use the default "
            f'engine, or train one with FFN_ACT = "{LLAMACPP_ACT}" and TIE_EMBEDDINGS = True')
    with tempfile.TemporaryDirectory(prefix="magnet-gguf-") as tmp:
        path = Path(tmp) / "model.gguf"
        export_gguf(Path(checkpoint_dir), path)
        return LlamaCppModel(path, config.max_position_embeddings, n_threads=n_threads,
                             config=config, tokenizer=tokenizer)
