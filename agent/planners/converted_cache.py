"""The local planner's model as it is loaded fast: the bundled GGUF's weights, converted once
(transformers de-quantizes every tensor in Python: ~30 s here) and kept as float32 safetensors in
a cache (~/.cache/magnet/models, or MAGNET_MODEL_CACHE), under a key of the GGUF's content.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from bitnet.checkpoint_files import CONFIG_FILE, WEIGHTS_FILE  # the Hugging Face names, as ours
from sandbox.removal import remove_path

T = TypeVar("T")


def default_cache_dir() -> Path:
    return Path(os.environ.get("MAGNET_MODEL_CACHE") or Path.home() / ".cache/magnet/models")


def read_weights(gguf: Path, cache_dir: Path, use_cache: bool) -> tuple[Any, Any]:
    """Tokenizer and model, from the converted cache when there is one.

    transformers parses the GGUF's metadata three times and de-quantizes every tensor in
    Python (~30 s here); the same float32 weights saved as safetensors (540 MB in
    ~/.cache/magnet/models) load in about a second.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if use_cache and (loaded := read_converted(gguf, cache_dir, lambda cached: (
            AutoTokenizer.from_pretrained(cached, local_files_only=True),
            AutoModelForCausalLM.from_pretrained(cached, dtype=torch.float32,
                                                 local_files_only=True)))) is not None:
        return loaded
    where, name = gguf.parent, gguf.name
    tokenizer = AutoTokenizer.from_pretrained(where, gguf_file=name, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(where, gguf_file=name, local_files_only=True)
    if use_cache:
        _save_converted(tokenizer, model, converted_dir(gguf, cache_dir))
    return tokenizer, model


def read_converted(gguf: Path, cache_dir: Path, read: Callable[[Path], T]) -> T | None:
    """`read(the GGUF's converted directory)`; None where there is none, or where it is damaged
    (then removed, so the next load converts the GGUF again)."""
    cached = converted_dir(gguf, cache_dir)
    if not (cached / WEIGHTS_FILE).is_file():
        return None
    try:
        return read(cached)
    except (OSError, ValueError, RuntimeError, KeyError):
        remove_path(cached, ignore_errors=True)
        return None


def converted_dir(gguf: Path, cache_dir: Path) -> Path:
    """Where the GGUF's converted weights are cached."""
    return cache_dir / f"{gguf.stem}-{_content_key(gguf, cache_dir)}"


def is_converted(gguf: Path, cache_dir: Path) -> bool:
    return (converted_dir(gguf, cache_dir) / WEIGHTS_FILE).is_file()


KEYS_FILE = "gguf-keys.json"  # in the cache: each GGUF's content key, by path, size and mtime


def _content_key(gguf: Path, cache_dir: Path) -> str:
    """The GGUF's size and the start of its sha256: the same file gives the same key in every
    virtualenv (pip writes the bundled file anew, with a new modification time, so a key of
    that made each new one convert it again: half a minute, and 540 MB more cache). Hashing
    it takes 0.2-0.4 s of a core, paid once per version of the file: the key is kept in the
    cache (KEYS_FILE) beside the path, size and modification time it was hashed at."""
    stat = gguf.stat()
    return _hashed(gguf.resolve(), stat.st_size, stat.st_mtime_ns, cache_dir)


@functools.lru_cache(maxsize=8)
def _hashed(gguf: Path, size: int, mtime_ns: int, cache_dir: Path) -> str:
    keys_file = cache_dir / KEYS_FILE
    try:
        keys = json.loads(keys_file.read_text())
        keys = keys if isinstance(keys, dict) else {}
    except (OSError, ValueError):
        keys = {}
    known = keys.get(str(gguf))
    if isinstance(known, dict) and known.get("size") == size and known.get("mtime_ns") == mtime_ns \
            and isinstance(known.get("key"), str):
        return known["key"]
    with gguf.open("rb") as file:
        digest = hashlib.file_digest(file, "sha256").hexdigest()
    key = f"{size}-{digest[:16]}"
    keys[str(gguf)] = {"size": size, "mtime_ns": mtime_ns, "key": key}
    tmp = None
    try:  # atomic: two planners loading at once each see a whole file
        cache_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=f".{KEYS_FILE}.")
        with open(fd, "w") as file:
            json.dump(keys, file)
        os.replace(tmp, keys_file)
    except OSError:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)  # only costs the next load its hashing
    return key


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
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2), encoding="utf-8")
        tokenizer.save_pretrained(tmp)
        save_model(model, str(tmp / WEIGHTS_FILE))  # handles the tied embeddings
        tmp.rename(target)  # atomic: a concurrent reader sees all of it or nothing
    except OSError:
        pass
    finally:
        if tmp is not None and tmp.exists():
            remove_path(tmp, ignore_errors=True)
