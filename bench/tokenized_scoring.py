"""What the trusted scorer costs for a BPE model next to a byte model of the same shape.

    .venv/bin/python bench/tokenized_scoring.py [--corpus portable-prose] [--tokenizer bpe:4096]
                                                [--rounds 3]

Both models have the bitnet-lm template's default shape (4 layers x 96, context 128, untied
head) and weights far from init (the cost does not depend on training); one has 256 ids, the
other the tokenizer's (trained on the corpus's training split first if it is not stored yet:
bitnet.tokenizer.ensure_tokenizer). Each checkpoint is scored on the corpus's validation split by
bitnet.score.score_checkpoint through two logits servers running the template's model.py, as the
research loop scores every experiment (same EVAL_BYTES bytes, same byte windows; the BPE model
gets token windows, bitnet.evaluate). The two alternate, rounds of one each (order rotating), so
load from other processes falls on both alike.

Ends with `RESULT score_s_bytes=... score_s_bpe=... bpe_over_bytes=... tokens_per_window=...
reply_mib_bpe=... reply_mib_bytes=... rounds=N`: median wall seconds of a whole scoring, the
ratio, the mean tokens per scored window of the BPE model, and the logits one batch returns.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bitnet import logits_server  # noqa: E402
from bitnet.checkpoint import save_checkpoint  # noqa: E402
from bitnet.data import load_corpus  # noqa: E402
from bitnet.evaluate import EVAL_BYTES, batch_windows, encode_batch, eval_batches  # noqa: E402
from bitnet.model import BitNetConfig, BitNetLM  # noqa: E402
from bitnet.score import score_checkpoint  # noqa: E402
from bitnet.tokenizer import ensure_tokenizer, load_tokenizer  # noqa: E402
from sandbox.templates import template_dir  # noqa: E402

SHAPE = dict(hidden_size=96, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=128)  # the template's defaults
TIMEOUT = 600.0


def far_from_init(vocab: int) -> BitNetLM:
    torch.manual_seed(0)
    model = BitNetLM(BitNetConfig(vocab_size=vocab, **SHAPE))
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.copy_(torch.rand_like(param) + 0.5 if "norm" in name else param * 15)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default="portable-prose")
    parser.add_argument("--tokenizer", default="bpe:4096")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    corpus = load_corpus(args.corpus)
    tokenizer = load_tokenizer(ensure_tokenizer(args.corpus, args.tokenizer))
    seq_len = SHAPE["max_position_embeddings"]
    code = template_dir("bitnet-lm")
    with tempfile.TemporaryDirectory(prefix="tokenized-scoring-") as tmp:
        checkpoints = {
            "bytes": save_checkpoint(far_from_init(256), Path(tmp) / "bytes"),
            "bpe": save_checkpoint(far_from_init(tokenizer.vocab_size), Path(tmp) / "bpe",
                                   tokenizer=tokenizer),
        }
        seconds: dict[str, list[float]] = {name: [] for name in checkpoints}
        for r in range(args.rounds):
            names = list(checkpoints)[r % 2:] + list(checkpoints)[: r % 2]
            for name in names:
                ckpt = checkpoints[name]
                started = time.perf_counter()
                score = score_checkpoint(corpus.val, ckpt, logits_server.command(ckpt, code),
                                         timeout=TIMEOUT)
                seconds[name].append(time.perf_counter() - started)
                print(f"round {r + 1} {name:5s} val_bpb {score.val_bpb:.4f} over "
                      f"{score.bytes_scored} bytes in {seconds[name][-1]:.2f} s "
                      f"(load {os.getloadavg()[0]:.1f})", flush=True)

    # the largest batch's reply (float32 logits), and the BPE model's tokens per window
    reply, lengths = {}, []
    for name, tok in (("bytes", None), ("bpe", tokenizer)):
        vocab = 256 if tok is None else tok.vocab_size
        requests = [encode_batch(batch, tok) for batch in
                    eval_batches(corpus.val, seq_len, EVAL_BYTES, batch_windows(seq_len, vocab))]
        reply[name] = max(ids.size for ids, _ in requests) * vocab * 4 / 2**20
        if tok is not None:
            lengths = np.concatenate([n for _, n in requests])
    median = {name: statistics.median(values) for name, values in seconds.items()}
    print(f"RESULT score_s_bytes={median['bytes']:.2f} score_s_bpe={median['bpe']:.2f} "
          f"bpe_over_bytes={median['bpe'] / median['bytes']:.2f} "
          f"tokens_per_window={lengths.mean():.1f} reply_mib_bpe={reply['bpe']:.1f} "
          f"reply_mib_bytes={reply['bytes']:.1f} rounds={args.rounds}")


if __name__ == "__main__":
    main()
