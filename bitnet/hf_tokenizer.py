"""MAGNET's tokenizers as Hugging Face tokenizer files: `tokenizer.json` + `tokenizer_config.json`.

Every MAGNET tokenizer (bitnet.tokenizer) is a byte-level BPE: a `tokenizers` BPE model over the
256 symbols GPT-2's ByteLevel pre-tokenizer maps bytes to, symbol i given id i (the byte's
value), then the merged tokens in merge order. The byte tokenizer is the one with no merges, so
`AutoTokenizer.from_pretrained(dir)` encodes text to exactly `bitnet.data.encode(text)`; a trained
one splits text with GPT-2's regex first (as llama.cpp's `gpt-2` pre-tokenizer does). The
ByteLevel decoder turns ids back into the same bytes. No prefix space, no special tokens and no
normaliser: nothing may add, drop or merge a byte.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Sequence
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from bitnet.checkpoint_files import TOKENIZER_CONFIG_FILE, TOKENIZER_FILE

N_BYTES = 256  # ids 0..255: the single bytes, in byte-value order


@functools.cache
def byte_symbols() -> tuple[str, ...]:
    """GPT-2's byte-to-unicode table (transformers' `bytes_to_unicode`, without importing it:
    ~4 s): symbol i is the printable character that stands for byte i."""
    printable = {*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)}
    symbols, extra = [], 0
    for byte in range(N_BYTES):
        if byte in printable:
            symbols.append(chr(byte))
        else:
            symbols.append(chr(N_BYTES + extra))
            extra += 1
    return tuple(symbols)


@functools.cache
def symbol_bytes() -> dict[str, int]:
    """The inverse table: symbol -> byte value."""
    return {symbol: byte for byte, symbol in enumerate(byte_symbols())}


def to_symbols(data: bytes) -> str:
    """Bytes as the string of their symbols (how tokenizer.json spells tokens)."""
    table = byte_symbols()
    return "".join(table[b] for b in data)


def from_symbols(text: str) -> bytes:
    """The bytes a token's symbols stand for; KeyError for a character that is no symbol."""
    table = symbol_bytes()
    return bytes(table[c] for c in text)


def bpe_tokenizer(tokens: Sequence[bytes], merges: Sequence[tuple[int, int]]) -> Tokenizer:
    """A `tokenizers.Tokenizer` with `tokens` (id -> bytes; the first 256 the single bytes) and
    `merges` (pairs of ids, in rank order). Without merges the text stays one piece (no regex
    split: nothing to split for); with merges GPT-2's regex splits it first."""
    vocab = {to_symbols(token): i for i, token in enumerate(tokens)}
    pairs = [(to_symbols(tokens[left]), to_symbols(tokens[right])) for left, right in merges]
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=pairs))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False,
                                                       use_regex=bool(merges))
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def byte_tokenizer() -> Tokenizer:
    """A `tokenizers.Tokenizer` whose ids are the UTF-8 bytes of the text."""
    return bpe_tokenizer([bytes([b]) for b in range(N_BYTES)], [])


def save_hf_tokenizer(tokenizer: Tokenizer, out_dir: str | os.PathLike,
                      model_max_length: int | None = None) -> Path:
    """Write tokenizer.json and tokenizer_config.json (each atomically) into `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / (TOKENIZER_FILE + ".tmp")
    tokenizer.save(str(tmp))
    os.replace(tmp, out / TOKENIZER_FILE)
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",  # generic: loads tokenizer.json as is
        # clean-up would delete the space in " ." or " 's" when decoding (5.x skips it for BPE)
        "clean_up_tokenization_spaces": False,
        "add_prefix_space": False,
    }
    if model_max_length is not None:
        config = {"tokenizer_class": config["tokenizer_class"],
                  "model_max_length": model_max_length} | config
    tmp = out / (TOKENIZER_CONFIG_FILE + ".tmp")
    tmp.write_text(json.dumps(config, indent=2))
    os.replace(tmp, out / TOKENIZER_CONFIG_FILE)
    return out


def save_byte_tokenizer(out_dir: str | os.PathLike, model_max_length: int) -> Path:
    """The byte tokenizer's files in `out_dir` (bitnet.tokenizer.TextTokenizer.save writes any
    tokenizer's)."""
    return save_hf_tokenizer(byte_tokenizer(), out_dir, model_max_length)
