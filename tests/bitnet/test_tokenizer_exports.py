"""A checkpoint trained with a BPE tokenizer: `generate` (prompt encoded, text decoded and
streamed whole characters), the Hugging Face export and `AutoTokenizer`, and the GGUF
vocabulary (llama.cpp's `gpt2` model: tokens, types, merges)."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from model_fixtures import trained_bpe, trained_like

from bitnet.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from bitnet.export_gguf import export_gguf
from bitnet.export_hf import export_hf
from bitnet.generate import Utf8Stream, generate
from bitnet.hf_tokenizer import to_symbols
from bitnet.model import BitNetConfig

VOCAB = 1024
CONFIG = dict(vocab_size=VOCAB, hidden_size=256, intermediate_size=512, num_hidden_layers=1,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
# valid UTF-8 of every kind: code, accents, CJK, emoji (4 bytes), NUL, contractions, spaces
TEXTS = ["def main(x):\n    return x  # ok\n", "naïve café, 日本語 and 🤖🚀!", "a\x00b\tc  d\n\n",
         "it's they'll I'm  —  ", ""]
CLI = str(Path(sys.executable).with_name("magnet-agent"))


@pytest.fixture(scope="module")
def bpe():
    return trained_bpe(VOCAB)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, bpe) -> Path:
    model = trained_like(BitNetConfig(**CONFIG, tie_word_embeddings=True))
    return save_checkpoint(model, tmp_path_factory.mktemp("bpe") / "exp-001", tokenizer=bpe)


def reference_greedy(checkpoint: Path, ids: list[int], n: int) -> list[int]:
    """The training-time model, no cache: full forward, argmax, repeat."""
    model = load_checkpoint(checkpoint)
    out: list[int] = []
    with torch.no_grad():
        for _ in range(n):
            logits, _ = model(torch.tensor([ids + out]))
            out.append(int(torch.argmax(logits[0, -1])))
    return out


def test_generate_encodes_the_prompt_and_decodes_with_the_checkpoint_s_tokenizer(checkpoint,
                                                                                 bpe):
    prompt = "def main(x):\n    return"
    pieces: list[str] = []
    result = generate(checkpoint, prompt, max_new_tokens=24, temperature=0,
                      on_token=pieces.append)
    assert result.prompt_ids == bpe.encode(prompt).tolist()
    assert result.prompt_tokens < len(prompt.encode())  # merged tokens, not bytes
    assert result.token_ids == reference_greedy(checkpoint, result.prompt_ids, 24)
    assert max(result.token_ids) >= 256  # it generates merged tokens too
    assert result.text == bpe.decode(result.token_ids).decode("utf-8", errors="replace")
    assert "".join(pieces) == result.text


def test_streaming_holds_a_character_until_its_last_token(bpe):
    """'☃' is E2 98 83: split over three single-byte tokens, then a merged token after it."""
    ids = [*bpe.encode("x = ").tolist(), 0xE2, 0x98, 0x83, *bpe.encode(" ok").tolist()]
    stream = Utf8Stream(bpe)
    pieces = [stream.push(i) for i in ids] + [stream.flush()]
    snowman = len(bpe.encode("x = "))
    assert pieces[snowman:snowman + 3] == ["", "", "☃"]
    assert "".join(pieces) == "x = ☃ ok" and "\ufffd" not in "".join(pieces)
    stream = Utf8Stream(bpe)  # a character cut off at the end is flushed as U+FFFD, once
    assert [stream.push(0xE2), stream.push(0x98), stream.flush()] == ["", "", "\ufffd"]


def test_generate_refuses_a_model_without_its_tokenizer(checkpoint, bpe):
    model = load_checkpoint(checkpoint)  # a BitNetLM carries no tokenizer
    with pytest.raises(ValueError, match="has 1024 token ids, not bytes"):
        generate(model, "x", max_new_tokens=2)
    assert generate(model, "x", max_new_tokens=2, tokenizer=bpe).new_tokens == 2
    with pytest.raises(ValueError, match="prompt token ids must be the model's"):
        generate(model, [VOCAB], max_new_tokens=2, tokenizer=bpe)


@pytest.mark.skipif(importlib.util.find_spec("transformers") is None,
                    reason="transformers is not installed")
def test_hf_export_and_auto_tokenizer_round_trip(checkpoint, bpe, tmp_path):
    import transformers

    out = export_hf(checkpoint, tmp_path / "hf")
    config = json.loads((out / "config.json").read_text())
    assert config["vocab_size"] == VOCAB
    assert config["magnet"]["tokenizer"] == "bpe:1024"
    assert config["magnet"]["tokenizer_sha256"] == bpe.fingerprint
    for directory in (checkpoint, out):  # the checkpoint itself loads too
        tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
        assert len(tokenizer) == VOCAB and not tokenizer.all_special_ids
        for text in TEXTS:
            ids = tokenizer(text)["input_ids"]
            assert ids == bpe.encode(text).tolist(), text
            assert tokenizer.decode(ids) == text
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    ids = bpe.encode(TEXTS[0]).tolist()
    # eager: transformers compiles its unpacking and quantisers otherwise (seconds, and
    # test_export_hf.py pins the numerics; here the point is a vocabulary of 1,024)
    with torch._dynamo.config.patch(disable=True), torch.no_grad():
        theirs = hf_model(torch.tensor([ids])).logits[0]
        ours, _ = load_checkpoint(checkpoint)(torch.tensor([ids]))
    assert theirs.shape == (len(ids), VOCAB)
    assert (theirs.argmax(-1) == ours[0].argmax(-1)).float().mean() >= 0.9


def gguf_vocabulary(path: Path) -> tuple[list[str], list[str], list[int]]:
    reader = gguf.GGUFReader(str(path))

    def value(key):
        return reader.fields[key].contents()

    assert value("tokenizer.ggml.model") == "gpt2" and value("tokenizer.ggml.pre") == "gpt-2"
    return (value("tokenizer.ggml.tokens"), value("tokenizer.ggml.merges"),
            value("tokenizer.ggml.token_type"))


def test_gguf_vocabulary_is_the_tokenizer(checkpoint, bpe, tmp_path):
    """Tokens spelled in GPT-2's byte symbols, merges in rank order; a byte-level BPE built from
    the file alone (as llama.cpp builds its `gpt2` vocabulary) encodes text to our ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    out = tmp_path / "m.gguf"
    export_gguf(checkpoint, out)
    tokens, merges, types = gguf_vocabulary(out)
    assert tokens == [to_symbols(t) for t in bpe.tokens] and len(tokens) == VOCAB
    assert len(merges) == len(bpe.merges) and types == [gguf.TokenType.NORMAL] * VOCAB
    assert merges[0] == f"{tokens[bpe.merges[0][0]]} {tokens[bpe.merges[0][1]]}"
    rebuilt = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)},
                                   merges=[tuple(m.split(" ")) for m in merges]))
    rebuilt.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    rebuilt.decoder = decoders.ByteLevel()
    for text in TEXTS:
        assert rebuilt.encode(text).ids == bpe.encode(text).tolist(), text
        assert rebuilt.decode(bpe.encode(text).tolist()) == text
    if importlib.util.find_spec("llama_cpp") is not None:  # llama.cpp's own tokenizer
        import llama_cpp

        vocab = llama_cpp.Llama(str(out), vocab_only=True, verbose=False)
        for text in TEXTS[:4]:
            ids = vocab.tokenize(text.encode(), add_bos=False, special=False)
            assert ids == bpe.encode(text).tolist(), text
            assert vocab.detokenize(ids) == text.encode()


def test_a_checkpoint_whose_tokenizer_does_not_fit_is_refused_by_both_exports(checkpoint,
                                                                               tmp_path):
    broken = tmp_path / "broken"
    model = trained_like(BitNetConfig(**{**CONFIG, "vocab_size": 256}))
    save_checkpoint(model, broken)
    for name in ("tokenizer.json", "tokenizer_config.json"):  # another model's tokenizer
        (broken / name).write_bytes((checkpoint / name).read_bytes())
    with pytest.raises(CheckpointError, match=r"(?=.*\b256\b)(?=.*\b1024\b)"):
        export_hf(broken, tmp_path / "hf")
    with pytest.raises(CheckpointError, match=r"(?=.*\b256\b)(?=.*\b1024\b)"):
        export_gguf(broken, tmp_path / "m.gguf")
    assert not (tmp_path / "hf" / "config.json").exists() and not (tmp_path / "m.gguf").exists()


def test_the_generate_command_uses_the_checkpoint_s_tokenizer(checkpoint, bpe):
    prompt = "def f(x):"
    done = subprocess.run([CLI, "generate", str(checkpoint), "--prompt", prompt,
                           "--max-new-tokens", "12", "--temperature", "0", "--json"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["prompt_tokens"] == len(bpe.encode(prompt)) < len(prompt)
    assert result["new_tokens"] == 12
    assert result["text"] == generate(checkpoint, prompt, max_new_tokens=12).text
    assert np.isfinite(result["tokens_per_s"])
