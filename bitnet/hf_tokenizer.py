"""Our byte-level tokenizer (token id == UTF-8 byte value, 256 ids) as a Hugging Face tokenizer.

`tokenizer.json` holds a `tokenizers` BPE model with no merges over the 256 symbols GPT-2's
ByteLevel pre-tokenizer maps bytes to, each given its byte's value as id, so
`AutoTokenizer.from_pretrained(dir)` encodes text to exactly `bitnet.data.encode(text)` and the
ByteLevel decoder turns ids back into the same bytes. No regex split, no prefix space, no
special tokens and no normaliser: nothing may add, drop or merge a byte.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from bitnet.data import VOCAB_SIZE

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"


def byte_tokenizer() -> Tokenizer:
    """A `tokenizers.Tokenizer` whose ids are the UTF-8 bytes of the text."""
    # the table the ByteLevel pre-tokenizer/decoder use; transformers imported on use (~4 s)
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    byte_to_symbol = bytes_to_unicode()
    vocab = {byte_to_symbol[byte]: byte for byte in range(VOCAB_SIZE)}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    # use_regex=False: the text stays one piece, so spaces are never split off or prefixed
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def save_byte_tokenizer(out_dir: str | os.PathLike, model_max_length: int) -> Path:
    """Write tokenizer.json and tokenizer_config.json (each atomically) into `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / (TOKENIZER_FILE + ".tmp")
    byte_tokenizer().save(str(tmp))
    os.replace(tmp, out / TOKENIZER_FILE)
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",  # generic: loads tokenizer.json as is
        "model_max_length": model_max_length,
        # clean-up would delete the space in " ." or " 's" when decoding (5.x skips it for BPE)
        "clean_up_tokenization_spaces": False,
        "add_prefix_space": False,
    }
    tmp = out / (TOKENIZER_CONFIG_FILE + ".tmp")
    tmp.write_text(json.dumps(config, indent=2))
    os.replace(tmp, out / TOKENIZER_CONFIG_FILE)
    return out
