"""llama.cpp as a real reader of the GGUF export: its next-byte logits against ours.

    .venv/bin/python bench/llamacpp_check.py [CHECKPOINT_DIR] [--out FILE.gguf]

Without a checkpoint it builds small random llama.cpp-computable models (hidden 256, SiLU gate,
tied lm_head) with intermediate sizes 256, 512 and 384, so every activation-quantisation case is
covered: Q8_K blocks equal to our per-token rows, Q8_K blocks finer than them, and F16 rows. For
each prompt it prints the max |logit difference| and the argmax agreement of llama.cpp against
(a) our model and (b) our model run with llama.cpp's semantics (SiLU-gated FFN, its activation
quantisation), with an F32 and the default F16 KV cache. A checkpoint llama.cpp cannot compute
(relu2, or an untied lm_head: bitnet.export_gguf.llamacpp_blockers) is exported all the same;
llama.cpp is run on it only when it loads (an untied one it refuses), and (b) against (a) shows
how far llama.cpp's graph is from that model.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bitnet.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from bitnet.export_gguf import (  # noqa: E402
    export_gguf,
    format_table,
    llamacpp_differences,
    llamacpp_graph_logits,
    llamacpp_notice,
)
from bitnet.llamacpp import llamacpp_logits  # noqa: E402
from bitnet.model import BitNetConfig, BitNetLM  # noqa: E402

PROMPTS = [
    b"The quick brown fox jumps over the lazy dog.",
    b"def main():\n    return 0\n",
    "Caf\u00e9 na\u00efve \u2014 \u65e5\u672c\u8a9e".encode(),
    bytes(range(0, 256, 7)),
]


def random_checkpoint(out: Path, intermediate: int, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    config = BitNetConfig(
        hidden_size=256,
        intermediate_size=intermediate,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=True,
        hidden_act="silu",
    )
    model = BitNetLM(config)
    with torch.no_grad():  # trained-looking norms, so a mixed-up norm would show
        for name, param in model.named_parameters():
            if "norm" in name:
                param.copy_(1 + 0.2 * torch.randn_like(param))
    return save_checkpoint(model, out)


def _cmp(a: np.ndarray, b: np.ndarray) -> str:
    return f"{np.abs(a - b).max():9.2e} {(a.argmax(-1) == b.argmax(-1)).mean():6.1%}"


def check(checkpoint: Path, gguf_path: Path, show_table: bool = True) -> None:
    rows = export_gguf(checkpoint, gguf_path)
    model = load_checkpoint(checkpoint)
    print(f"\n== {checkpoint}  ({gguf_path.stat().st_size} bytes)")
    if show_table:
        print(format_table(rows))
    notice = llamacpp_notice(model.config)
    for note in [notice] if notice else llamacpp_differences(model.config):
        print(f"  {note}")
    header = f"{'prompt':>6} {'len':>4} | {'graph vs ours':>16}"
    loads = model.config.tie_word_embeddings
    if loads:
        header += f" | {'llama vs ours':>16} | {'llama vs graph':>16} | {'(F16 KV) vs graph':>17}"
    print(header)
    for i, prompt in enumerate(PROMPTS):
        ids = list(prompt[: model.config.max_position_embeddings])
        with torch.no_grad():
            ours = model(torch.tensor([ids]))[0][0].numpy()
        graph = llamacpp_graph_logits(model, ids)
        line = f"{i:>6} {len(ids):>4} | {_cmp(graph, ours)}"
        if loads:
            llama = llamacpp_logits(gguf_path, ids)
            llama_f16kv = llamacpp_logits(gguf_path, ids, f32_kv=False)
            line += f" | {_cmp(llama, ours)} | {_cmp(llama, graph)} | {_cmp(llama_f16kv, graph)}"
        print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", nargs="?", type=Path)
    parser.add_argument("--out", type=Path, help="GGUF path (default: a temporary file)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.checkpoint:
            check(args.checkpoint, args.out or tmp / "model.gguf")
            return
        for n, intermediate in enumerate((256, 512, 384)):
            ckpt = random_checkpoint(tmp / f"ckpt-{intermediate}", intermediate)
            check(ckpt, tmp / f"model-{intermediate}.gguf", show_table=n == 0)


if __name__ == "__main__":
    main()
