"""Serve a checkpoint's logits over stdin/stdout, using the experiment's own model code.

    python -m bitnet.logits_server --checkpoint DIR --model-code DIR_WITH_model.py [--threads N]

This is the untrusted half of scoring (bitnet.score is the trusted half): it imports the
workspace's `model.py`, builds `model.BitNetLM(config)` from the checkpoint's config.json and
loads model.safetensors into it, then answers requests until told to quit.

Protocol (all little-endian), with V the vocabulary size of the checkpoint's config.json:
  request  two uint32, B (windows) and T (tokens per window), then B*T token ids, uint8 when
           V is 256 (a byte model: the ids are the bytes) and uint16 for a larger vocabulary;
           B = 0 means quit
  reply    B*T*V float32 logits, window after window, position after position
A load error is one line on stderr and exit status 2; an error while serving, status 3.

Replies go to a private copy of the original stdout; fd 1 and sys.stdout point at stderr
before the model code is imported, so whatever the model code prints cannot enter the reply
stream.
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, NoReturn

import numpy as np

HEADER = struct.Struct("<II")  # windows B, tokens per window T
VOCAB = 256  # a byte model's vocabulary (bitnet.evaluate.BYTE_VOCAB)
MAX_VOCAB = 1 << 16  # ids travel as uint16 at most
# bitnet.score's servers, side by side: batch b is scored by SERVERS[b % 2], checked by the other
SERVERS = ("first", "second")
# threads a server computes with: the same logits on every machine, whatever its cores or load
# (float sums depend on how a kernel splits them)
THREADS = 1
# glibc's allocator for a server (mallopt(3)'s environment names): every forward pass allocates
# and frees activations of megabytes; by default glibc maps each from the kernel and unmaps it
# when freed, so the next pass faults its pages in again. A fixed mmap threshold (the most glibc
# takes, 32 MiB) serves them from the heap, and a high trim threshold keeps freed memory for the
# next pass (its peak is no higher). Measured on the 4-layer baseline's forward passes: 10-25%
# less CPU. Training runs gain nothing from it (measured), so it is the servers' alone.
ALLOCATOR_ENV = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}


def id_dtype(vocab: int) -> np.dtype:
    """How token ids travel: one byte each for a byte model, two for a larger vocabulary."""
    return np.dtype(np.uint8) if vocab <= VOCAB else np.dtype("<u2")


def command(
    checkpoint_dir: str | os.PathLike, model_code_dir: str | os.PathLike,
    python: str = sys.executable,
) -> list[str]:
    """The argv that starts this server (the caller may prefix a confinement command)."""
    return [python, "-m", "bitnet.logits_server", "--checkpoint", str(checkpoint_dir),
            "--model-code", str(model_code_dir), "--threads", str(THREADS)]


def load_model(checkpoint_dir: Path, model_code_dir: Path, threads: int = THREADS):
    """`model.BitNetLM(config)` from model_code_dir/model.py, with the checkpoint's weights, to
    run with `threads` threads."""
    import torch
    from safetensors.torch import load_file

    torch.set_num_threads(threads)

    from bitnet.checkpoint import CONFIG_FILE, WEIGHTS_FILE, config_from_hf

    config_path, weights_path = checkpoint_dir / CONFIG_FILE, checkpoint_dir / WEIGHTS_FILE
    for needed in (config_path, weights_path, model_code_dir / "model.py"):
        if not needed.is_file():
            raise FileNotFoundError(f"{needed} is missing")
    try:
        config = config_from_hf(json.loads(config_path.read_text()))
    except (ValueError, TypeError, AttributeError) as err:
        raise ValueError(f"{config_path} is not a model config ({_one_line(err)})") from err
    sys.path.insert(0, str(model_code_dir))
    import model as model_code  # the experiment's model.py

    model = model_code.BitNetLM(config)
    try:
        state = load_file(str(weights_path))
    except Exception as err:
        raise ValueError(f"{weights_path} is corrupt ({_one_line(err)})") from err
    if config.tie_word_embeddings and "model.embed_tokens.weight" in state:
        state.setdefault("lm_head.weight", state["model.embed_tokens.weight"])  # saved once
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(
            f"{weights_path} does not fit model.py with {config_path} ({_one_line(err)})"
        ) from err
    return model.eval()


def serve(model, requests, replies) -> None:
    """Answer requests (binary streams in, out) until the quit request; the vocabulary is the
    model's config's (model.config.vocab_size, as read from config.json)."""
    import torch

    torch.set_grad_enabled(False)
    vocab = int(model.config.vocab_size)
    dtype = id_dtype(vocab)
    while True:
        n_windows, length = HEADER.unpack(_read_exactly(requests, HEADER.size))
        if n_windows == 0:
            return
        raw = _read_exactly(requests, n_windows * length * dtype.itemsize)
        tokens = np.frombuffer(raw, dtype=dtype)
        logits, _ = model(torch.from_numpy(tokens.astype(np.int64)).view(n_windows, length))
        if tuple(logits.shape) != (n_windows, length, vocab):
            raise ValueError(
                f"model returned logits of shape {tuple(logits.shape)}, "
                f"expected {(n_windows, length, vocab)}"
            )
        replies.write(logits.float().contiguous().numpy().astype("<f4", copy=False).tobytes())
        replies.flush()


def _read_exactly(stream, n: int) -> bytes:
    data = stream.read(n)
    if len(data) != n:
        raise EOFError(f"stdin closed after {len(data)} of {n} bytes")
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--model-code", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=THREADS)
    args = parser.parse_args()
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # prints from model code, Python- or C-level, go to stderr
    sys.stdout = sys.stderr
    run_server(lambda: load_model(args.checkpoint, args.model_code, args.threads), replies)


def run_server(load: Callable[[], Any], replies: BinaryIO) -> NoReturn:
    """Load the model (`load()`), then serve it; exit 0 once told to quit, 2 when it cannot
    load, 3 when serving fails, with one line on stderr either way."""
    try:
        model = load()
    except BaseException as err:  # foreign code may raise anything, SystemExit included
        print(f"logits server: cannot load the model: {_one_line(err)}", file=sys.stderr)
        sys.exit(2)
    try:
        serve(model, sys.stdin.buffer, replies)
    except BaseException as err:
        print(f"logits server: {_one_line(err)}", file=sys.stderr)
        sys.exit(3)
    sys.stderr.flush()
    os._exit(0)  # served: skip the interpreter's teardown of torch (~0.7 s of a core)


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or "no message"
    return f"{type(err).__name__}: {text}"[:500]


if __name__ == "__main__":
    main()
