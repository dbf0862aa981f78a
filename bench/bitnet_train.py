"""Training step time of BitNetLM vs the same model with plain nn.Linear, measured side by side.

Goal: step_time_ratio (bitnet / dense) <= 1.3 at the bitnet-lm template's default shapes.
Both models run the same batches, alternating in rounds so that machine noise hits both alike;
the median step time of each is compared.

    python bench/bitnet_train.py [--rounds 8] [--steps 10]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from rich.console import Console
from rich.table import Table
from torch import nn

from bitnet.model import BitNetConfig, BitNetLM
from bitnet.quant import BitLinear

# the bitnet-lm template's defaults
CONFIG = BitNetConfig(hidden_size=96, intermediate_size=384, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
BATCH_SIZE, SEQ_LEN = 16, 128


def train_steps(model: nn.Module, optimizer: torch.optim.Optimizer, batches: list) -> list[float]:
    times = []
    for inputs, targets in batches:
        start = time.perf_counter()
        _, loss = model(inputs, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10, help="steps per model per round")
    args = parser.parse_args()

    torch.manual_seed(0)
    models = {"bitnet": BitNetLM(CONFIG, BitLinear), "dense": BitNetLM(CONFIG, nn.Linear)}
    optimizers = {name: torch.optim.AdamW(m.parameters(), lr=1e-3) for name, m in models.items()}
    gen = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(args.steps):
        tokens = torch.randint(0, CONFIG.vocab_size, (BATCH_SIZE, SEQ_LEN + 1), generator=gen)
        batches.append((tokens[:, :-1], tokens[:, 1:]))

    for name in models:  # warm-up: allocator, thread pools
        train_steps(models[name], optimizers[name], batches[:3])
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(args.rounds):
        for name in models:
            times[name] += train_steps(models[name], optimizers[name], batches)

    medians = {name: statistics.median(t) for name, t in times.items()}
    tokens_per_step = BATCH_SIZE * SEQ_LEN
    table = Table(title=f"training step, {models['bitnet'].num_parameters():,} params, "
                        f"batch {BATCH_SIZE}x{SEQ_LEN}, {torch.get_num_threads()} threads")
    for column in ("model", "median step ms", "tokens/s"):
        table.add_column(column, justify="right")
    for name, median in medians.items():
        table.add_row(name, f"{median * 1e3:.1f}", f"{tokens_per_step / median:,.0f}")
    Console().print(table)
    ratio = medians["bitnet"] / medians["dense"]
    print(f"RESULT step_time_ratio={ratio:.3f} bitnet_ms={medians['bitnet'] * 1e3:.1f} "
          f"dense_ms={medians['dense'] * 1e3:.1f}")


if __name__ == "__main__":
    main()
