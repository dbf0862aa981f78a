"""The local planner's tokenizer, read from the converted cache with Hugging Face `tokenizers`
alone (transformers' AutoTokenizer took 1.3 CPU-s, mostly its imports): encoding, decoding, the
chat template rendered as transformers renders it (a sandboxed jinja2 environment, blocks
trimmed), and each token's text as outlines spells it for its automata. Checked against
transformers' tokenizer and outlines' adapter in tests/agent/test_planner_local.py.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bitnet.checkpoint_files import TOKENIZER_CONFIG_FILE, TOKENIZER_FILE  # transformers' names

CHAT_TEMPLATE_FILE = "chat_template.jinja"  # where transformers 5 saves a chat template
SPIECE_UNDERLINE = "\u2581"  # SentencePiece's word mark, which outlines reads as a space


class ChatTokenizer:
    def __init__(self, tokenizer: Any, chat_template: str, special: Mapping[str, str]) -> None:
        self.tokenizer = tokenizer  # a tokenizers.Tokenizer
        self.special = dict(special)  # bos_token, eos_token, ...: the template may name them
        self.eos_token_id: int = tokenizer.token_to_id(special["eos_token"])
        self._template = _compiled(chat_template)

    @classmethod
    def from_dir(cls, directory: Path) -> ChatTokenizer:
        from tokenizers import Tokenizer

        config = json.loads((directory / TOKENIZER_CONFIG_FILE).read_text(encoding="utf-8"))
        template_file = directory / CHAT_TEMPLATE_FILE
        template = (template_file.read_text(encoding="utf-8") if template_file.is_file()
                    else config.get("chat_template"))
        if not isinstance(template, str) or not isinstance(config.get("eos_token"), str):
            raise ValueError(f"{directory} has no chat template or end-of-sequence token")
        special = {k: v for k, v in config.items() if k.endswith("_token") and isinstance(v, str)}
        try:
            tokenizer = Tokenizer.from_file(str(directory / TOKENIZER_FILE))
        except Exception as err:  # tokenizers raises a plain Exception for a damaged file
            raise ValueError(f"unreadable {TOKENIZER_FILE} in {directory}: {err}") from None
        return cls(tokenizer, template, special)

    @classmethod
    def of(cls, tokenizer: Any) -> ChatTokenizer:
        """The same tokenizer as transformers' fast tokenizer `tokenizer`."""
        special = {name: value for name in ("bos_token", "eos_token", "unk_token", "pad_token")
                   if isinstance(value := getattr(tokenizer, name, None), str)}
        return cls(tokenizer.backend_tokenizer, tokenizer.chat_template, special)

    def encode(self, text: str) -> list[int]:
        """The token ids of `text`, no special tokens added."""
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int]) -> str:
        """The text of `ids`, special tokens left out."""
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def apply_chat_template(self, messages: Sequence[Mapping[str, str]], *,
                            add_generation_prompt: bool = True) -> str:
        return self._template.render(messages=list(messages), tools=None, documents=None,
                                     add_generation_prompt=add_generation_prompt, **self.special)

    def token_strings(self) -> dict[str, list[int]]:
        """Each token's text (as outlines' transformers adapter spells it: byte-level pieces
        decoded, a SentencePiece word mark read as a space) -> the ids spelling it, the
        end-of-sequence token left out."""
        decoder = self.tokenizer.decoder
        strings: dict[str, list[int]] = {}
        for token, token_id in self.tokenizer.get_vocab(with_added_tokens=True).items():
            strings.setdefault(_spelled(decoder, token), []).append(token_id)
        strings.pop(_spelled(decoder, self.special["eos_token"]), None)
        return strings


def _spelled(decoder: Any, token: str) -> str:
    text = decoder.decode([token]) if decoder is not None else token
    return " " + text if token.startswith(SPIECE_UNDERLINE) or token == "<0x20>" else text


def _compiled(template: str) -> Any:
    """The template in the environment transformers renders chat templates in."""
    from jinja2.exceptions import TemplateError
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise TemplateError(message)

    environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                extensions=[loopcontrols])
    environment.filters["tojson"] = lambda x, **kw: json.dumps(x, ensure_ascii=False, **kw)
    environment.globals["raise_exception"] = raise_exception
    try:
        return environment.from_string(template)
    except TemplateError as err:
        raise ValueError(f"the chat template does not compile: {err}") from None
