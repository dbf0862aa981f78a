"""The trained tokenizer (bitnet.tokenizer): specs, training on the training split alone and
storing it once beside the corpus cache, its fingerprint, exact round trips of hostile bytes,
the Hugging Face files (AutoTokenizer gives the same ids), and checkpoints that carry it."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tokenizer_corpus import HELD_OUT_WORD, VOCAB, write_corpus

from bitnet.checkpoint import save_checkpoint
from bitnet.data import load_corpus
from bitnet.model import BitNetConfig, BitNetLM
from bitnet.tokenizer import (
    BPE_RANGE,
    META_FILE,
    TOKENIZER_FILES,
    TRAIN_TOKENS_FILE,
    TextTokenizer,
    TokenizerError,
    byte_tokenizer,
    canonical_spec,
    ensure_tokenizer,
    load_tokenizer,
    load_train_tokens,
    parse_spec,
    read_meta,
    train_merges,
    train_tokenizer,
)

# bytes no tokenizer may add, drop or merge wrongly: NUL, a lone surrogate's UTF-8 encoding
# (no valid UTF-8: it must stay bytes), emoji, stray continuation bytes, runs of spaces
HOSTILE = [
    b"", b"\x00", b"a\x00b\x00\x00", "\ud800 and \udfff".encode("utf-8", "surrogatepass"),
    "emoji 😀👍🏽 and 家族 👨‍👩‍👧".encode(), b"\xff\xfe\x80 tail \xc3", b"   \t\n\n  x  ",
    b"def f(x):\n    return x  # it's\r\n", bytes(random.Random(7).randrange(256)
                                                  for _ in range(10_000)),
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[str, Path, Path]:
    """(corpus spec, cache folder, tokenizer folder): bpe:512 trained on the small corpus."""
    root = tmp_path_factory.mktemp("tokenizer")
    spec = f"text:{write_corpus(root / 'corpus')}"
    cache = root / "cache"
    return spec, cache, train_tokenizer(spec, VOCAB, cache)


def test_specs_name_bytes_or_a_bpe_size_and_refuse_the_rest_in_one_line():
    assert parse_spec("bytes") == ("bytes", 256)
    assert parse_spec("bpe:4096") == ("bpe", 4096) == parse_spec(4096)
    assert canonical_spec(" bpe:512") == "bpe:512"
    for bad, says in (("bpe:100", "from 512 to 65,536"), ("bpe:70000", "from 512"),
                      ("bpe:", "unknown tokenizer"), ("wordpiece", 'use "bytes" or "bpe:N"'),
                      (True, "unknown tokenizer"), (None, "unknown tokenizer")):
        with pytest.raises(TokenizerError, match=says) as err:
            parse_spec(bad)
        assert "\n" not in str(err.value)
    assert BPE_RANGE == (512, 65_536)


def test_training_stores_the_tokenizer_and_the_encoded_split_once(trained):
    spec, cache, folder = trained
    corpus = load_corpus(spec, cache)
    assert folder == corpus.entry / "tokenizers" / f"bpe-{VOCAB}"  # beside the corpus cache
    assert {p.name for p in folder.iterdir()} == {*TOKENIZER_FILES, META_FILE, TRAIN_TOKENS_FILE}
    tokenizer = load_tokenizer(folder)
    meta = read_meta(folder)
    assert tokenizer.spec == meta["spec"] == f"bpe:{VOCAB}"
    assert tokenizer.vocab_size == meta["vocab_size"] == VOCAB
    assert tokenizer.fingerprint == meta["fingerprint"]
    assert meta["train_sha256"] == corpus.train_sha256 and meta["corpus_sha256"] == corpus.sha256
    # ids 0..255 are the bytes in order, the merges' tokens follow
    assert tokenizer.tokens[:256] == tuple(bytes([b]) for b in range(256))
    assert all(len(token) >= 2 for token in tokenizer.tokens[256:])
    ids = load_train_tokens(folder)
    assert ids.dtype == np.uint16 and len(ids) == meta["train_tokens"] < len(corpus.train) / 2
    assert tokenizer.decode(ids) == bytes(corpus.train)  # the split itself, exactly
    assert np.array_equal(ids, tokenizer.encode(bytes(corpus.train)))
    before = (folder / TRAIN_TOKENS_FILE).stat().st_mtime_ns
    assert ensure_tokenizer(spec, f"bpe:{VOCAB}", cache) == folder  # found, not trained again
    assert (folder / TRAIN_TOKENS_FILE).stat().st_mtime_ns == before
    assert ensure_tokenizer(spec, "bytes", cache) is None  # the byte tokenizer has no folder


def test_the_tokenizer_never_sees_the_held_out_bytes(trained):
    spec, cache, folder = trained
    corpus = load_corpus(spec, cache)
    word = HELD_OUT_WORD.encode()
    assert bytes(corpus.val).count(word) >= 100 and word not in bytes(corpus.train)
    # frequent enough to be merged whole had validation or test been trained on
    assert not any(word[1:4] in token for token in load_tokenizer(folder).tokens)


def test_the_fingerprint_names_the_merges_the_same_on_every_run(trained):
    spec, cache, folder = trained
    tokenizer = load_tokenizer(folder)
    train = bytes(load_corpus(spec, cache).train)
    # another process (another hash seed): the same merges, the same fingerprint
    code = ("import sys, numpy as np; from bitnet.tokenizer import TextTokenizer, train_merges;"
            "data = np.fromfile(sys.argv[1], dtype=np.uint8);"
            f"print(TextTokenizer('bpe:{VOCAB}', train_merges(data, {VOCAB})).fingerprint)")
    path = folder.parent / "train-copy.bin"
    path.write_bytes(train)
    again = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                           text=True, env={**os.environ, "PYTHONHASHSEED": "12345"}, check=True)
    assert again.stdout.strip() == tokenizer.fingerprint
    larger = TextTokenizer("bpe:600", train_merges(train, 600))
    assert larger.fingerprint != tokenizer.fingerprint != byte_tokenizer().fingerprint
    assert larger.tokens[:VOCAB] == tokenizer.tokens  # the same merges first, then more
    assert byte_tokenizer().fingerprint == TextTokenizer("bytes", ()).fingerprint


@pytest.mark.parametrize("data", HOSTILE, ids=lambda d: repr(d[:12]))
def test_any_bytes_encode_and_decode_back_exactly(trained, data):
    tokenizer = load_tokenizer(trained[2])
    for each in (tokenizer, byte_tokenizer()):
        ids = each.encode(data)
        assert ids.dtype == np.uint16 and (len(ids) == 0 or ids.max() < each.vocab_size)
        assert each.decode(ids) == data
    assert np.array_equal(byte_tokenizer().encode(data), np.frombuffer(data, np.uint8))
    bad = data.decode("utf-8", errors="surrogateescape")
    undecodable = sum(0xDC80 <= ord(c) <= 0xDCFF for c in bad)
    assert (tokenizer.encode(data) < 256).sum() >= undecodable  # they stay single bytes


def test_long_text_is_encoded_in_pieces_exactly_as_whole(trained):
    spec, cache, folder = trained
    tokenizer = load_tokenizer(folder)
    text = bytes(load_corpus(spec, cache).train)[:300_000]  # several of encode's pieces
    whole = tokenizer.hf.encode(text.decode("utf-8"), add_special_tokens=False).ids
    assert tokenizer.encode(text).tolist() == whole


def test_auto_tokenizer_reads_the_same_ids_from_its_files(trained, tmp_path):
    transformers = pytest.importorskip("transformers")
    tokenizer = load_tokenizer(trained[2])
    text = "def f(x):\n    return  x ** 2  # it's 😀 家族\n\n\tNUL:\x00 end  "
    for each, where in ((tokenizer, trained[2]), (byte_tokenizer(), tmp_path)):
        each.save(where)
        auto = transformers.AutoTokenizer.from_pretrained(where)
        ids = each.encode(text).tolist()
        assert auto(text)["input_ids"] == ids
        assert auto.decode(ids) == text
    assert len(tokenizer.encode(text)) < len(text.encode())  # it does merge


def tiny_checkpoint(trained, tmp_path: Path) -> tuple:
    """(tokenizer, config, checkpoint dir): a one-layer model saved with the trained BPE."""
    tokenizer = load_tokenizer(trained[2])
    config = BitNetConfig(vocab_size=tokenizer.vocab_size, hidden_size=32,
                          intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                          num_key_value_heads=1, max_position_embeddings=16)
    return tokenizer, config, save_checkpoint(BitNetLM(config), tmp_path / "ckpt",
                                              tokenizer=tokenizer)


def test_checkpoints_carry_their_tokenizer(trained, tmp_path):
    tokenizer, config, out = tiny_checkpoint(trained, tmp_path)
    magnet = json.loads((out / "config.json").read_text())["magnet"]
    assert magnet["tokenizer"] == f"bpe:{VOCAB}"
    assert magnet["tokenizer_sha256"] == tokenizer.fingerprint
    assert load_tokenizer(out).fingerprint == tokenizer.fingerprint
    assert json.loads((out / "tokenizer_config.json").read_text())["model_max_length"] == 16
    with pytest.raises(ValueError, match="build the model with vocab_size"):
        save_checkpoint(BitNetLM(BitNetConfig(**{**config.__dict__, "vocab_size": 256})),
                        tmp_path / "other", tokenizer=tokenizer)
    # a checkpoint from before tokenizers: no tokenizer.json, 256 ids, the byte tokenizer
    old = save_checkpoint(BitNetLM(BitNetConfig(**{**config.__dict__, "vocab_size": 256})),
                          tmp_path / "old")
    assert load_tokenizer(old) is byte_tokenizer()


def test_damaged_or_mismatched_tokenizer_files_are_refused_in_one_line(trained, tmp_path):
    tokenizer, config, out = tiny_checkpoint(trained, tmp_path)

    def refused(says: str, where: Path) -> None:
        with pytest.raises(TokenizerError, match=says) as err:
            load_tokenizer(where)
        assert "\n" not in str(err.value)

    text = (out / "tokenizer.json").read_text()
    (out / "tokenizer.json").write_text(text[: len(text) // 2])
    refused("is no MAGNET byte-level tokenizer", out)
    assert b"\x01\x02" not in tokenizer.tokens
    other = TextTokenizer(f"bpe:{VOCAB}", (*tokenizer.merges[:-1], (1, 2)))
    other.save(out)  # the same size, another last merge: not the tokenizer config.json names
    refused("do not belong together", out)
    data = json.loads(text)
    vocab = data["model"]["vocab"]
    vocab["a"], vocab["b"] = vocab["b"], vocab["a"]  # two bytes' ids swapped
    (tmp_path / "shuffled").mkdir()
    (tmp_path / "shuffled" / "tokenizer.json").write_text(json.dumps(data))
    refused("not the single bytes", tmp_path / "shuffled")
