"""Batch-1 text generation with a KV cache: prefill the prompt once, then one token a step.

    from bitnet.generate import generate, load_for_inference
    model = load_for_inference("runs/<id>/outputs/exp-003")     # or pass the directory itself
    result = generate(model, "def main(", max_new_tokens=128, temperature=0.8, top_p=0.95,
                      seed=0, on_token=lambda piece: print(piece, end="", flush=True))
    result.text, result.tokens_per_s

The same loop decodes with llama.cpp: `generate(bitnet.llamacpp.from_checkpoint(dir), ...)` runs
the model's GGUF export in llama-cpp-python (a SiLU, tied model: bitnet.export_gguf), sampled by
`sample_next` from its logits exactly as ours are.

Tokens are the checkpoint's (bitnet.tokenizer): bytes (ids 0..255) for a byte model, or its
trained BPE's, which `load_for_inference` attaches to the model (`model.tokenizer`); a prompt
is encoded with it and the new ids decoded with it. Sampling: temperature 0 is greedy (argmax,
first index on ties); otherwise softmax(logits / temperature) restricted to the top_k most
likely tokens, then to the smallest set whose probability reaches top_p, drawn with a
torch.Generator seeded by `seed` (a random seed is drawn and reported when it is None).

Streaming: `on_token` receives each piece of text as soon as its UTF-8 bytes are complete; a
character split over several tokens (bytes, or BPE tokens that end mid-character) arrives once
whole. Invalid bytes become U+FFFD, and an incomplete sequence left at the end is flushed as
U+FFFD; the pieces concatenate to `result.text` == the new ids' bytes decoded with
errors="replace".

Context: prompt + new tokens must fit max_position_embeddings. A longer prompt keeps its LAST
`context - max_new_tokens` tokens (`result.prompt_truncated` counts the dropped ones);
max_new_tokens >= context is refused. An empty prompt starts from the document separator
(NUL, byte 0), which is what precedes every document in training. Generation stops early at
`stop_token` (not part of the text) when one is given.
"""

from __future__ import annotations

import codecs
import os
import resource
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from bitnet.data import SEPARATOR
from bitnet.evaluate import BYTE_VOCAB, is_bytes
from bitnet.infer import InferenceModel, load_for_inference
from bitnet.llamacpp import LlamaCppModel
from bitnet.model import BitNetLM
from bitnet.torch_threads import num_threads

if TYPE_CHECKING:
    from bitnet.tokenizer import TextTokenizer

__all__ = ["GenerationResult", "Utf8Stream", "generate", "load_for_inference", "sample_next"]


@dataclass
class GenerationResult:
    text: str  # the continuation only (the prompt is not repeated)
    token_ids: list[int]  # the new token ids; a stop token is not included
    prompt_ids: list[int]  # the prompt as fed to the model (after any truncation)
    prompt_tokens: int
    new_tokens: int
    prompt_truncated: int  # prompt tokens dropped from the front to fit the context
    stop_reason: str  # "length" (max_new_tokens reached) or "stop_token"
    seed: int | None  # the sampling seed used (None for greedy)
    seconds: float  # prefill + decode, excluding time spent in on_token
    prefill_seconds: float  # the prompt forward pass and the first sampled token
    decode_seconds: float  # every later token: one cached forward step + sampling each
    tokens_per_s: float  # decode only: cached forward steps / decode_seconds
    peak_rss_mb: float  # the process's peak resident set size so far (ru_maxrss)


class Utf8Stream:
    """Turns a stream of tokens into text pieces that are complete UTF-8: bytes held back until
    the character they begin is whole, whichever token brings the rest."""

    def __init__(self, tokenizer: TextTokenizer | None = None) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._tokenizer = None if is_bytes(tokenizer) else tokenizer

    def push(self, token_id: int) -> str:
        if self._tokenizer is None:
            return self._decoder.decode(bytes((token_id,)))
        return self._decoder.decode(self._tokenizer.token_bytes(token_id))

    def flush(self) -> str:
        return self._decoder.decode(b"", final=True)


def sample_next(
    logits: torch.Tensor,
    *,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> int:
    """One token id from a [vocab] logits vector (see the module docstring for the rules)."""
    if temperature <= 0:
        return int(torch.argmax(logits))
    logits = logits.float() / temperature
    if top_k is not None and 0 < top_k < logits.numel():
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if top_p is not None and 0 < top_p < 1:
        sorted_probs, order = torch.sort(probs, descending=True)
        before = sorted_probs.cumsum(0) - sorted_probs  # mass of the more likely tokens
        sorted_probs[before >= top_p] = 0.0  # the first token always stays (before = 0)
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=generator))


def _as_model(model_or_checkpoint) -> InferenceModel | LlamaCppModel:
    if isinstance(model_or_checkpoint, (InferenceModel, LlamaCppModel)):
        return model_or_checkpoint
    if isinstance(model_or_checkpoint, BitNetLM):
        return InferenceModel.from_model(model_or_checkpoint)
    if isinstance(model_or_checkpoint, (str, os.PathLike)):
        return load_for_inference(model_or_checkpoint)
    raise TypeError(
        f"expected an InferenceModel, a LlamaCppModel, a BitNetLM or a checkpoint directory, "
        f"got {type(model_or_checkpoint).__name__}"
    )


def _tokenizer_of(model, given: TextTokenizer | None) -> TextTokenizer | None:
    """The tokenizer text goes through: `given`, else the model's (None: bytes), checked
    against the model's vocabulary where it states one."""
    tokenizer = given if given is not None else getattr(model, "tokenizer", None)
    config = getattr(model, "config", None)
    vocab = config.vocab_size if config is not None else None
    if tokenizer is None and vocab not in (None, BYTE_VOCAB):
        raise ValueError(f"the model has {vocab} token ids, not bytes: load it from its "
                         "checkpoint (load_for_inference) or pass its tokenizer")
    if tokenizer is not None and vocab is not None and tokenizer.vocab_size != vocab:
        raise ValueError(f"the tokenizer ({tokenizer.spec}) has {tokenizer.vocab_size} ids, the "
                         f"model {vocab}: use the tokenizer saved with the checkpoint")
    return tokenizer


def _prompt_ids(prompt: str | bytes | Sequence[int], tokenizer: TextTokenizer | None) -> list[int]:
    if isinstance(prompt, str):
        prompt = prompt.encode("utf-8")
    if isinstance(prompt, (bytes, bytearray)):
        return list(prompt) if is_bytes(tokenizer) else tokenizer.encode(bytes(prompt)).tolist()
    ids = [int(i) for i in prompt]
    vocab = BYTE_VOCAB if tokenizer is None else tokenizer.vocab_size
    if any(not 0 <= i < vocab for i in ids):
        raise ValueError(f"prompt token ids must be the model's (0..{vocab - 1})")
    return ids


def _text(ids: list[int], tokenizer: TextTokenizer | None) -> str:
    data = bytes(ids) if is_bytes(tokenizer) else tokenizer.decode(ids)
    return data.decode("utf-8", errors="replace")


def _peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024  # bytes vs KiB


def generate(
    model_or_checkpoint: InferenceModel | LlamaCppModel | BitNetLM | str | os.PathLike,
    prompt: str | bytes | Sequence[int],
    *,
    max_new_tokens: int = 128,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    on_token: Callable[[str], None] | None = None,
    stop_token: int | None = None,
    threads: int | None = None,
    tokenizer: TextTokenizer | None = None,
) -> GenerationResult:
    """Generate up to `max_new_tokens` tokens after `prompt` (batch 1, KV cache).

    `tokenizer`: the model's (default: the one its checkpoint carries, bytes for a BitNetLM
    with 256 ids); `prompt` text or bytes are encoded with it, token ids taken as they are.

    `threads` sets torch's intra-op threads for this call only (None: leave them). At batch 1
    one thread is the safe choice on a busy machine: the int8 matmuls are memory-bound, and
    when another process holds a core, each multi-threaded matmul can stall a whole scheduler
    time slice (~10 ms) waiting for its second thread.
    """
    with num_threads(threads), torch.inference_mode():
        model = _as_model(model_or_checkpoint)
        return _generate(
            model, prompt, max_new_tokens=max_new_tokens,
            temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, on_token=on_token,
            stop_token=stop_token, tokenizer=_tokenizer_of(model, tokenizer),
        )


def _generate(
    model: InferenceModel | LlamaCppModel,
    prompt: str | bytes | Sequence[int],
    *,
    max_new_tokens: int,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    seed: int | None,
    on_token: Callable[[str], None] | None,
    stop_token: int | None,
    tokenizer: TextTokenizer | None,
) -> GenerationResult:
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    context = model.max_len
    if max_new_tokens >= context:
        raise ValueError(
            f"max_new_tokens {max_new_tokens} leaves no room for a prompt in the model's "
            f"context of {context} tokens: use at most {context - 1}"
        )
    # SEPARATOR's byte is its own token in every tokenizer (ids 0..255 are the bytes)
    ids = _prompt_ids(prompt, tokenizer) or list(SEPARATOR)
    room = context - max_new_tokens
    truncated = max(0, len(ids) - room)
    ids = ids[truncated:]

    generator = None
    if temperature > 0:
        if seed is None:
            seed = int(torch.randint(0, 2**62, (1,)))
        generator = torch.Generator().manual_seed(seed)
    else:
        seed = None

    def pick(logits: torch.Tensor) -> int:
        return sample_next(logits[0, -1], temperature=temperature, top_k=top_k, top_p=top_p,
                           generator=generator)

    stream = Utf8Stream(tokenizer)
    new_ids: list[int] = []
    stop_reason = "length"
    cache = model.new_cache(max_len=len(ids) + max_new_tokens)

    t0 = time.perf_counter()
    token = pick(model(torch.tensor([ids]), cache, last_only=True))
    prefill_seconds = time.perf_counter() - t0
    decode_seconds, steps = 0.0, 0
    while True:
        if token == stop_token:
            stop_reason = "stop_token"
            break
        new_ids.append(token)
        if on_token is not None:
            piece = stream.push(token)
            if piece:
                on_token(piece)
        if len(new_ids) == max_new_tokens:
            break
        t0 = time.perf_counter()
        token = pick(model(torch.tensor([[token]]), cache))
        decode_seconds += time.perf_counter() - t0
        steps += 1
    if on_token is not None:
        tail = stream.flush()
        if tail:
            on_token(tail)

    return GenerationResult(
        text=_text(new_ids, tokenizer),
        token_ids=new_ids,
        prompt_ids=ids,
        prompt_tokens=len(ids),
        new_tokens=len(new_ids),
        prompt_truncated=truncated,
        stop_reason=stop_reason,
        seed=seed,
        seconds=prefill_seconds + decode_seconds,
        prefill_seconds=prefill_seconds,
        decode_seconds=decode_seconds,
        tokens_per_s=steps / decode_seconds if decode_seconds > 0 else 0.0,
        peak_rss_mb=_peak_rss_mb(),
    )
