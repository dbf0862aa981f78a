"""Checkpoints in Hugging Face format: `config.json` + `model.safetensors`, and the tokenizer
the model was trained with (`tokenizer.json` + `tokenizer_config.json`, bitnet.tokenizer).

The directory loads both here (`load_checkpoint`) and in transformers as a `BitNetForCausalLM`
with online-quantised `AutoBitLinear` layers (the latent fp32 weights are stored; transformers
re-quantises them on the fly exactly as BitLinear does).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import fields
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from bitnet.checkpoint_files import CONFIG_FILE, WEIGHTS_FILE
from bitnet.hf_tokenizer import N_BYTES
from bitnet.model import BitNetConfig, BitNetLM
from bitnet.tokenizer import TextTokenizer


class CheckpointError(ValueError):
    """A checkpoint directory that cannot be loaded; the message says what to do."""


def hf_config(config: BitNetConfig, dtype: torch.dtype = torch.float32,
              lineage: Sequence[str] = (), corpus: str | None = None,
              tokenizer: TextTokenizer | None = None) -> dict:
    """The `config.json` transformers needs for BitNetForCausalLM with online quantisation.

    `magnet.lineage` lists the `checkpoint_hash` of the checkpoint training started from, then
    that one's lineage (empty for random weights); `magnet.base` is its first entry. Merges check
    that their inputs descend from one base. `magnet.corpus` is what it was trained on (a
    specialist is compared with others on that corpus's validation split). `magnet.tokenizer`
    is the tokenizer's spec ("bytes" or "bpe:N") and `magnet.tokenizer_sha256` its fingerprint,
    when it is given (without one, a 256-id model is taken to be a byte model).
    """
    if tokenizer is not None:
        tokenizer_facts = {"tokenizer": tokenizer.spec, "tokenizer_sha256": tokenizer.fingerprint}
    else:
        tokenizer_facts = {"tokenizer": "bytes" if config.vocab_size == N_BYTES else None}
    return {
        "architectures": ["BitNetForCausalLM"],
        "model_type": "bitnet",
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_hidden_layers,
        "num_attention_heads": config.num_attention_heads,
        "num_key_value_heads": config.num_key_value_heads,
        "head_dim": config.head_dim,
        "hidden_act": config.hidden_act,
        "max_position_embeddings": config.max_position_embeddings,
        "rms_norm_eps": config.rms_norm_eps,
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta},
        "rope_theta": config.rope_theta,
        "tie_word_embeddings": config.tie_word_embeddings,
        "initializer_range": config.initializer_range,
        "attention_bias": False,
        "bos_token_id": None,
        "eos_token_id": None,
        "pad_token_id": None,
        "torch_dtype": str(dtype).removeprefix("torch."),
        "quantization_config": {
            "quant_method": "bitnet",
            "linear_class": "autobitlinear",
            "quantization_mode": "online",
        },
        "magnet": {**tokenizer_facts, "base": lineage[0] if lineage else None,
                   "lineage": list(lineage), "corpus": corpus},
    }


def config_from_hf(data: dict) -> BitNetConfig:
    names = {f.name for f in fields(BitNetConfig)}
    values = {k: v for k, v in data.items() if k in names}
    if "rope_parameters" in data:
        values["rope_theta"] = data["rope_parameters"].get("rope_theta", BitNetConfig.rope_theta)
    return BitNetConfig(**values)


def save_checkpoint(model: nn.Module, out_dir: str | os.PathLike, *,
                    lineage: Sequence[str] = (), corpus: str | None = None,
                    tokenizer: TextTokenizer | None = None) -> Path:
    """Write config.json and model.safetensors atomically (a reader never sees half a file);
    `lineage` is `descent(init)` when the model was trained from a checkpoint `init`, `corpus`
    the spec of the corpus it was trained on, `tokenizer` the one it was trained with (its files
    are written beside them, so `AutoTokenizer.from_pretrained(out_dir)` loads it)."""
    out = Path(out_dir)
    if tokenizer is not None and tokenizer.vocab_size != model.config.vocab_size:
        raise ValueError(f"the model has {model.config.vocab_size} ids but its tokenizer "
                         f"{tokenizer.spec} has {tokenizer.vocab_size}; build the model with "
                         "vocab_size=tokenizer.vocab_size")
    out.mkdir(parents=True, exist_ok=True)
    if tokenizer is not None:
        tokenizer.save(out, model_max_length=model.config.max_position_embeddings)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight")  # safetensors refuses shared storage; HF re-ties on load
    tmp_weights = out / (WEIGHTS_FILE + ".tmp")
    save_file(state, str(tmp_weights), metadata={"format": "pt"})
    os.replace(tmp_weights, out / WEIGHTS_FILE)
    tmp_config = out / (CONFIG_FILE + ".tmp")
    config = hf_config(model.config, model.lm_head.weight.dtype, lineage, corpus, tokenizer)
    tmp_config.write_text(json.dumps(config, indent=2))
    os.replace(tmp_config, out / CONFIG_FILE)
    return out


def load_config(path: str | os.PathLike) -> BitNetConfig:
    """A checkpoint directory's config, without reading its weights (which must be there);
    CheckpointError (one line) for a missing file or a corrupt config."""
    ckpt = Path(path)
    config_path = ckpt / CONFIG_FILE
    for needed in (config_path, ckpt / WEIGHTS_FILE):
        if not needed.is_file():
            raise CheckpointError(f"{needed} is missing: point to a directory made by training")
    try:
        return config_from_hf(json.loads(config_path.read_text()))
    except (json.JSONDecodeError, TypeError, ValueError) as err:
        raise CheckpointError(f"{config_path} is corrupt ({err}): re-export the model") from err


def load_checkpoint(path: str | os.PathLike,
                    model_class: Callable[[BitNetConfig], nn.Module] = BitNetLM) -> BitNetLM:
    """Load a checkpoint directory written by `save_checkpoint` (or exported from HF) into
    `model_class(config)` (a template's own copy of the model, say)."""
    config = load_config(path)
    weights_path = Path(path) / WEIGHTS_FILE
    try:
        state = load_file(str(weights_path))
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{weights_path} is corrupt ({err}): re-export the model") from err
    model = model_class(config)
    if config.tie_word_embeddings:
        state.setdefault("lm_head.weight", state["model.embed_tokens.weight"])
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        details = " ".join(str(err).partition(":")[2].split())[:300]  # past "Error(s) … for X:"
        raise CheckpointError(
            f"{weights_path} does not fit the model its {CONFIG_FILE} describes ({details}): "
            "load it with the model code that saved it"
        ) from err
    return model.eval()


def checkpoint_hash(path: str | os.PathLike) -> str:
    """sha256 of a checkpoint's weights file: the identity a specialist records as its base."""
    weights = Path(path) / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{weights} is missing: point to a directory made by training")
    digest = hashlib.sha256()
    with weights.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _magnet_section(path: str | os.PathLike) -> dict:
    config_path = Path(path) / CONFIG_FILE
    try:
        magnet = json.loads(config_path.read_text()).get("magnet") or {}
    except (OSError, json.JSONDecodeError, AttributeError) as err:
        raise CheckpointError(f"{config_path} is unreadable ({err}): re-export the model") from err
    if not isinstance(magnet, dict):
        raise CheckpointError(f"{config_path}: `magnet` is not an object; re-save the checkpoint")
    return magnet


def checkpoint_lineage(path: str | os.PathLike) -> list[str]:
    """The hashes a checkpoint descends from, nearest first ([] for random weights)."""
    lineage = _magnet_section(path).get("lineage") or []
    if not isinstance(lineage, list) or not all(isinstance(h, str) for h in lineage):
        raise CheckpointError(f"{Path(path) / CONFIG_FILE}: magnet.lineage is not a list of "
                              "hashes; re-save the checkpoint")
    return lineage


def checkpoint_corpus(path: str | os.PathLike) -> str | None:
    """The corpus spec a checkpoint was trained on, when it records one."""
    corpus = _magnet_section(path).get("corpus")
    return corpus if isinstance(corpus, str) else None


def descent(init: str | os.PathLike) -> list[str]:
    """The lineage of a model trained from checkpoint `init`: init's hash, then its lineage."""
    return [checkpoint_hash(init), *checkpoint_lineage(init)]


def checkpoint_base(path: str | os.PathLike) -> str | None:
    """The hash of the checkpoint this one was trained from (None: from random weights)."""
    lineage = checkpoint_lineage(path)
    return lineage[0] if lineage else None
