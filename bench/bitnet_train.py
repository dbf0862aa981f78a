"""Training step time of BitNetLM vs the same model with plain nn.Linear, measured side by side.

Three twins with the same initial weights train on the same batches:
  bitnet     BitLinear as it trains (forward on int8 codes, torch._int_mm: bitnet.quant)
  reference  BitLinear with int8_matmul off: the fake-quantised fp32 matmul
  dense      nn.Linear
one step of each on every batch, back to back (the order rotating), so that machine noise hits
all alike; a ratio is the median over batches of the step-time ratio. Goal: step_time_ratio
(bitnet / dense) <= 1.0 at the bitnet-lm template's default shapes and at every larger size.

Sizes: `template` (the bitnet-lm template's defaults, 16 x 128 tokens a step), then the named
presets of bitnet/presets.py up to --max-params parameters (bigger ones are too slow for this
bench on two cores), each at its own training batch (batch_size x context), or, without that
file, bitnet.infer's SPEED_CONFIGS (`20m`, `100m`) at 16 x 128. --sizes picks some. Sizes of
5 M parameters and more run --large-rounds x --large-steps steps per model.

Memory: the bytes each model keeps for its backward pass in one step (tensors saved by autograd,
each storage counted once, parameters excluded): the activation memory a step holds at its peak.

    python bench/bitnet_train.py [--rounds 8] [--steps 10] [--sizes template,20m] [--threads 1]
"""

from __future__ import annotations

import argparse
import copy
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
LARGE = 5_000_000  # parameters from which a size runs the --large-* rounds and steps
MODELS = ("bitnet", "reference", "dense")


def sizes(max_params: float) -> tuple[dict[str, tuple[BitNetConfig, int, int]], str]:
    """{name: (config, batch size, sequence length)}: the template's shape at 16 x 128, then
    the presets up to max_params at their own training batch (or, without bitnet/presets.py,
    bitnet.infer's SPEED_CONFIGS at 16 x 128); and where the sizes came from."""
    chosen = {"template": (CONFIG, BATCH_SIZE, SEQ_LEN)}
    try:
        from bitnet.presets import PRESETS
    except ImportError:
        from bitnet.infer import SPEED_CONFIGS
        for name, config in SPEED_CONFIGS.items():
            if count_parameters(config) <= max_params:
                chosen[name] = (config, BATCH_SIZE, SEQ_LEN)
        return chosen, "bitnet.infer.SPEED_CONFIGS (no bitnet/presets.py)"
    for name, preset in PRESETS.items():
        config = preset.config()
        if config != CONFIG and count_parameters(config) <= max_params:
            chosen[name] = (config, preset.batch_size, preset.context)
    return chosen, "bitnet.presets.PRESETS"


def count_parameters(config: BitNetConfig) -> int:
    with torch.device("meta"):
        return BitNetLM(config).num_parameters()


def twins(config: BitNetConfig) -> dict[str, BitNetLM]:
    torch.manual_seed(0)
    bitnet = BitNetLM(config, BitLinear)
    reference = copy.deepcopy(bitnet)
    for module in reference.modules():
        if isinstance(module, BitLinear):
            module.int8_matmul = False
    dense = BitNetLM(config, nn.Linear)
    dense.load_state_dict(bitnet.state_dict())
    return {"bitnet": bitnet, "reference": reference, "dense": dense}


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, batch: tuple) -> float:
    inputs, targets = batch
    start = time.perf_counter()
    _, loss = model(inputs, targets)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    return time.perf_counter() - start


def saved_bytes(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> int:
    """Bytes autograd keeps for one step's backward (each storage once, parameters excluded)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in params:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        _, loss = model(inputs, targets)
    loss.backward()
    model.zero_grad(set_to_none=True)
    return sum(storages.values())


def measure(
    config: BitNetConfig, batch_size: int, seq_len: int, rounds: int, steps: int
) -> dict[str, dict[str, float]]:
    models = twins(config)
    optimizers = {name: torch.optim.AdamW(m.parameters(), lr=1e-3) for name, m in models.items()}
    gen = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(steps):
        tokens = torch.randint(0, config.vocab_size, (batch_size, seq_len + 1), generator=gen)
        batches.append((tokens[:, :-1], tokens[:, 1:]))
    stats = {name: {"saved_mb": saved_bytes(m, *batches[0]) / 2**20} for name, m in models.items()}
    for name in MODELS:  # warm-up: allocator, thread pools
        for batch in batches[: min(2, steps)]:
            train_step(models[name], optimizers[name], batch)
    # each batch is one step of every model back to back (the order rotating), so that the load
    # of a shared machine hits the three alike; ratios are the medians of those steps' ratios
    times: dict[str, list[float]] = {name: [] for name in MODELS}
    for round_ in range(rounds):
        for step, batch in enumerate(batches):
            start = round_ * len(batches) + step
            for i in range(len(MODELS)):
                name = MODELS[(start + i) % len(MODELS)]
                times[name].append(train_step(models[name], optimizers[name], batch))
    for name in MODELS:
        stats[name]["ms"] = statistics.median(times[name]) * 1e3
        stats[name]["ratio"] = statistics.median(
            t / d for t, d in zip(times[name], times["dense"], strict=True))
    return stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10, help="steps per model per round")
    parser.add_argument("--large-rounds", type=int, default=4)
    parser.add_argument("--large-steps", type=int, default=3)
    parser.add_argument("--max-params", type=float, default=110e6)
    parser.add_argument("--sizes", help="comma-separated size names (default: all up to "
                                        "--max-params)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    available, source = sizes(args.max_params)
    names = args.sizes.split(",") if args.sizes else list(available)
    unknown = [n for n in names if n not in available]
    if unknown:
        raise SystemExit(f"unknown size(s) {', '.join(unknown)}: choose from "
                         f"{', '.join(available)} (from {source}, <= --max-params)")
    threads = torch.get_num_threads()
    print(f"sizes from {source}; {threads} threads")

    table = Table(title=f"training step, {threads} threads")
    for column in ("size", "params", "batch", "model", "median step ms", "tokens/s", "/ dense",
                   "saved for backward MB"):
        table.add_column(column, justify="right")
    results = {}
    for name in names:
        config, batch_size, seq_len = available[name]
        params = count_parameters(config)
        large = params >= LARGE
        stats = measure(config, batch_size, seq_len, args.large_rounds if large else args.rounds,
                        args.large_steps if large else args.steps)
        results[name] = stats
        for model in MODELS:
            ms = stats[model]["ms"]
            table.add_row(name, f"{params:,}", f"{batch_size}x{seq_len}", model, f"{ms:.1f}",
                          f"{batch_size * seq_len / ms * 1e3:,.0f}", f"{stats[model]['ratio']:.3f}",
                          f"{stats[model]['saved_mb']:.1f}")
        step_ms = ", ".join(f"{model} {stats[model]['ms']:.1f} ms" for model in MODELS)
        print(f"{name}: bitnet/dense {stats['bitnet']['ratio']:.3f}, "
              f"reference/dense {stats['reference']['ratio']:.3f} ({step_ms})", flush=True)
    Console().print(table)

    fields = []
    if "template" in results:
        t = results["template"]
        fields += [f"step_time_ratio={t['bitnet']['ratio']:.3f}",
                   f"reference_ratio={t['reference']['ratio']:.3f}",
                   f"bitnet_ms={t['bitnet']['ms']:.1f}", f"reference_ms={t['reference']['ms']:.1f}",
                   f"dense_ms={t['dense']['ms']:.1f}"]
    for name, stats in results.items():
        if name == "template":
            continue
        fields += [f"ratio_{name}={stats['bitnet']['ratio']:.3f}",
                   f"reference_ratio_{name}={stats['reference']['ratio']:.3f}",
                   f"bitnet_ms_{name}={stats['bitnet']['ms']:.1f}",
                   f"dense_ms_{name}={stats['dense']['ms']:.1f}"]
    for name, stats in results.items():  # activation memory: bitnet vs reference vs dense
        fields += [f"saved_mb_{model}_{name}={stats[model]['saved_mb']:.1f}" for model in MODELS]
    print("RESULT " + " ".join(fields))


if __name__ == "__main__":
    main()
