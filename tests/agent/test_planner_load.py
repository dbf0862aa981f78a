"""The local planner's load, in its cheap parts: the converted-weights cache is keyed by the
GGUF's content, hashed once per version of the file (the key is kept beside the file's path,
size and modification time), and the int8 conversion packs each weight once."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch

from agent.planners import converted_cache
from agent.planners.converted_cache import KEYS_FILE, converted_dir
from agent.planners.local_model import LoadedModel, with_int8_linears


def _fresh() -> None:
    converted_cache._hashed.cache_clear()  # a new process: nothing remembered in memory


def test_the_content_key_is_hashed_once_and_again_when_the_file_changes(tmp_path: Path) -> None:
    gguf, cache = tmp_path / "tiny.gguf", tmp_path / "cache"
    gguf.write_bytes(b"GGUF" + bytes(range(256)) * 40)
    digest = hashlib.sha256(gguf.read_bytes()).hexdigest()
    expected = cache / f"tiny-{gguf.stat().st_size}-{digest[:16]}"

    _fresh()
    assert converted_dir(gguf, cache) == expected
    kept = json.loads((cache / KEYS_FILE).read_text())[str(gguf.resolve())]
    assert kept["key"] == expected.name.removeprefix("tiny-")

    # the next process reads the kept key instead of hashing: a key planted there is used
    planted = {**kept, "key": "planted"}
    (cache / KEYS_FILE).write_text(json.dumps({str(gguf.resolve()): planted}))
    _fresh()
    assert converted_dir(gguf, cache).name == "tiny-planted"

    # a new version of the file (pip writes it anew: another modification time) is hashed
    stat = gguf.stat()
    os.utime(gguf, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    _fresh()
    assert converted_dir(gguf, cache) == expected


def test_a_damaged_key_file_costs_a_hash_not_the_load(tmp_path: Path) -> None:
    gguf, cache = tmp_path / "tiny.gguf", tmp_path / "cache"
    gguf.write_bytes(b"GGUF tiny")
    cache.mkdir()
    (cache / KEYS_FILE).write_text("{not json")
    _fresh()
    key = converted_dir(gguf, cache).name
    assert key == f"tiny-{gguf.stat().st_size}-{hashlib.sha256(b'GGUF tiny').hexdigest()[:16]}"
    assert json.loads((cache / KEYS_FILE).read_text())[str(gguf.resolve())]["key"] in key
    assert [p.name for p in cache.iterdir()] == [KEYS_FILE]  # no temporary file left


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")  # torch.ao's
def test_the_int8_layers_are_pytorchs_own_to_the_last_bit() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(48, 96), torch.nn.GELU(),
                                torch.nn.Linear(96, 32, bias=False))
    reference = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear},
                                                       dtype=torch.qint8)  # a copy
    converted = with_int8_linears(LoadedModel(None, model, None, {})).model
    assert converted is model  # in place
    x = torch.randn(5, 48)
    with torch.no_grad():
        assert torch.equal(converted(x), reference(x))
    for ours, theirs in ((model[0], reference[0]), (model[2], reference[2])):
        assert str(ours) == str(theirs)  # in and out features, dtype, scheme
        assert torch.equal(ours.weight().int_repr(), theirs.weight().int_repr())
        assert ours.weight().q_scale() == theirs.weight().q_scale()
    assert model[2].bias() is None and torch.equal(model[0].bias(), reference[0].bias())


def test_a_damaged_converted_cache_is_refused_as_such(tmp_path: Path) -> None:
    """What the planner's load reads from the cache, damaged, raises ValueError, on which
    local_model.load_model converts the GGUF again instead of failing the run."""
    from agent.planners.chat_tokenizer import ChatTokenizer
    from agent.planners.llama_decoder import load_decoder
    from bitnet.checkpoint_files import CONFIG_FILE, WEIGHTS_FILE
    from bitnet.hf_tokenizer import TOKENIZER_CONFIG_FILE, TOKENIZER_FILE, byte_tokenizer

    config = {"model_type": "llama", "hidden_size": 8, "num_attention_heads": 2,
              "num_key_value_heads": 1, "num_hidden_layers": 1, "intermediate_size": 16,
              "vocab_size": 32, "rms_norm_eps": 1e-5, "tie_word_embeddings": True}
    (tmp_path / CONFIG_FILE).write_text(json.dumps(config))
    (tmp_path / WEIGHTS_FILE).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"truncated")
    with pytest.raises(ValueError, match="unreadable weights"):
        load_decoder(tmp_path)
    (tmp_path / TOKENIZER_CONFIG_FILE).write_text(json.dumps(
        {"eos_token": "<|im_end|>", "chat_template": "{{ messages[0]['content'] }}"}))
    (tmp_path / TOKENIZER_FILE).write_text('{"version": "1.0", "model": {"type": "BPE"')
    with pytest.raises(ValueError, match="unreadable tokenizer.json"):
        ChatTokenizer.from_dir(tmp_path)
    byte_tokenizer().save(str(tmp_path / TOKENIZER_FILE))  # readable, and the template not
    (tmp_path / TOKENIZER_CONFIG_FILE).write_text(json.dumps(
        {"eos_token": "<|im_end|>", "chat_template": "{% for m in messages %}"}))
    with pytest.raises(ValueError, match="does not compile"):
        ChatTokenizer.from_dir(tmp_path)


def test_a_damaged_converted_copy_is_removed_and_read_again_from_the_gguf(tmp_path: Path) -> None:
    """converted_cache.read_converted, which the planner's load and transformers' (the teacher's)
    both go through: nothing cached gives None without reading; a copy its reader refuses is
    removed, so the next load converts the GGUF again."""
    from bitnet.checkpoint_files import WEIGHTS_FILE

    gguf, cache = tmp_path / "tiny.gguf", tmp_path / "cache"
    gguf.write_bytes(b"GGUF tiny")
    _fresh()

    def refuse(directory: Path) -> None:
        raise ValueError(f"unreadable weights in {directory}")

    assert converted_cache.read_converted(gguf, cache, refuse) is None  # nothing to read
    copy = converted_dir(gguf, cache)
    copy.mkdir(parents=True)
    (copy / WEIGHTS_FILE).write_bytes(b"not safetensors")
    assert converted_cache.read_converted(gguf, cache, lambda d: d.name) == copy.name
    assert converted_cache.read_converted(gguf, cache, refuse) is None
    assert not copy.exists() and (cache / KEYS_FILE).is_file()  # the key stays
