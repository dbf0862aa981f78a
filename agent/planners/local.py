"""The `local` planner: the bundled SmolLM2-135M-Instruct, its reply constrained to the knob grid.

A 135M model writes nonsense wherever it may write freely (hypotheses in random languages, a
learning rate of 0.7). So the model only *chooses*: a JSON schema built for each proposal lists
every untried single-knob change (knob name + a value from that knob's choices or a small grid
over its range; agent.planners.local_prompt), outlines-core compiles it into a token automaton
that masks the model's logits (agent.planners.local_model), and whatever the model emits is one
of them. The hypothesis text is composed from the chosen change, never generated.
"""

from __future__ import annotations

import copy
import json
import random
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from agent.planners.base import KnobEdit, PlanContext, PlannerError, Proposal, Usage
from agent.planners.converted_cache import default_cache_dir, is_converted
from agent.planners.knob_text import change_verb, config_key, describe_change
from agent.planners.local_model import (
    LoadedModel,
    PromptCache,
    find_gguf,
    generate,
    load_model,
    prefill,
    schema_index,
    with_int8_linears,
)
from agent.planners.local_prompt import (
    GRID_SIZE,
    build_messages,
    candidate_changes,
    history_rows,
    parse_reply,
    prompt_segments,
    proposal_schema,
)
from sandbox.errors import EditError

# the names other modules import from here
__all__ = ["LocalPlanner", "find_gguf"]

MAX_PROMPT_TOKENS = 1000  # the model is small; long prompts only cost prefill time
MAX_ATTEMPTS = 3  # model replies per proposal before picking an untried change at random


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
        self._loaded: LoadedModel | None = None
        self._loading: threading.Thread | None = None  # warm_up's
        self._load_error: PlannerError | None = None  # what warm_up's load raised
        self._proposed: set[tuple] = set()  # configurations proposed (maybe not yet in history)
        self._prompt_cache = PromptCache()  # the last prompt's pairs: the next reads the rest

    # --- the Planner interface -----------------------------------------------------------------

    def propose(self, context: PlanContext) -> Proposal:
        start = time.perf_counter()
        self.load()
        loaded = self._loaded
        assert loaded is not None
        options = self._options(context)
        prompt, rows, prompt_tokens = self._prompt(loaded.tokenizer, context)
        segments = prompt_segments(prompt, rows)
        index = schema_index(loaded, proposal_schema(options))
        # the longest allowed reply in characters: more tokens than any reply can take
        longest = max(len(json.dumps({"knob": k, "value": v}))
                      for k, vs in options.items() for v in vs)
        completion_tokens, choice, replies = 0, None, 0
        while choice is None and replies < MAX_ATTEMPTS:
            replies += 1
            text, count = generate(loaded, segments, index, seed=context.seed + replies,
                                   longest=longest, temperature=self.temperature,
                                   threads=self.threads, cache=self._prompt_cache)
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
        if self._loading is not None:  # the twin shares the model warm_up is loading
            self.load()
        twin = copy.copy(self)
        twin._proposed = set()
        return twin

    # --- loading -------------------------------------------------------------------------------

    def warm_up(self, context: PlanContext) -> None:
        """Begin loading the model in a thread, where its converted weights are cached (about a
        CPU-second, on one thread: beside a scoring), then read what the first prompt begins
        with (`context`'s goal and grids: the same in every prompt of the run) into the prompt
        cache. A first conversion (~30 s, progress bars on stderr) is left to the first
        proposal."""
        if self._loaded is None and self._loading is None and self.use_cache:
            self._loading = threading.Thread(target=self._load_in_background, args=(context,),
                                             name="local-planner-load", daemon=True)
            self._loading.start()

    def _load_in_background(self, context: PlanContext) -> None:
        # in the thread too: the first check hashes the GGUF (0.1-0.2 s)
        if not is_converted(self.gguf, self.cache_dir):
            return
        try:  # one thread: beside the scoring's two busy servers, a second one only spins
            self.load(threads=1)
        except PlannerError as err:  # raised again by the proposal that needs the model
            self._load_error = err
            return
        assert self._loaded is not None
        prompt, rows, _ = self._prompt(self._loaded.tokenizer, context)
        segments = prompt_segments(prompt, rows)
        if len(segments) > 1:  # the part before the history rows
            prefill(self._loaded, segments[:1], self._prompt_cache, threads=self.threads)

    def load(self, threads: int | None = None) -> None:
        """Load the model once: ~30 s from the GGUF the first time, then ~1 s from the cache
        (waiting for warm_up's load, where one began); on `threads` threads (default: the
        planner's, else every CPU)."""
        loading = self._loading
        if loading is not None and loading is not threading.current_thread():
            loading.join()
            self._loading = None
            if self._load_error is not None:
                raise self._load_error
        if self._loaded is not None:
            return
        start = time.perf_counter()
        self._loaded = with_int8_linears(load_model(
            self.gguf, self.cache_dir, use_cache=self.use_cache, threads=threads or self.threads))
        self.load_seconds = time.perf_counter() - start

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

    def _prompt(self, tokenizer: Any, context: PlanContext) -> tuple[str, list[str], int]:
        """The chat prompt, the history rows in it and its token count, without the oldest
        history rows it cannot fit."""
        rows = history_rows(context.history)
        while True:
            messages = build_messages(context, rows, self.grid_size)
            prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
            size = len(tokenizer.encode(prompt))
            if size <= self.max_prompt_tokens or not rows:
                return prompt, rows, size
            rows = rows[max(1, len(rows) // 4):]  # keep the recent three quarters

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
