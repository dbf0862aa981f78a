"""DiLoCo against synchronous data parallelism, and a merge of specialists, side by side.

Two workers, one on `pycode` and one on `pyprose`, start from a common base (the template's
model trained on both domains, 400 steps of one batch from each). With the same total compute
(each worker takes H * K = 500 batches of 16 x 128 bytes):
  sync DP   the gradients of the two workers' batches averaged at every step (an all-reduce of
            fp32 gradients per step: merge/sync_dp.py)
  DiLoCo    each worker takes H = 50 AdamW steps alone, then the pseudo-gradients (sent as fp16)
            are averaged and applied by Nesterov SGD (lr 0.7, momentum 0.9), K = 10 times
            (merge/diloco.py)
  merge     two specialists, each trained from the base alone on its domain for 300 steps,
            merged by task arithmetic (lam 1/2: their mean), TIES and DARE
Every model is scored with the evaluator's val_bpb on each domain's fixed validation bytes.
Everything runs in this process on the same data streams and seeds: the single-process DiLoCo
is the arithmetic the torchft workers do (tests/merge/test_diloco_torchft.py checks that).

Goals: DiLoCo >= 50x fewer bytes than sync DP with <= 3% worse val_bpb; the merged model within
5% of each specialist on its own domain and better than the other specialist there.

usage: python bench/diloco.py [--inner-steps 50] [--outer-steps 10] [--base-steps 400]
                              [--specialist-steps 300] [--outer-lr 0.7] [--outer-momentum 0.9]
Writes bench/diloco.json, bench/diloco.md and bench/diloco.png; ends with
`RESULT comm_reduction=<x> bpb_gap_pct=<pct> merged_vs_specialist_pct=<worst pct>`
(the last for the task-arithmetic merge).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bitnet.data import load_corpus  # noqa: E402
from bitnet.model import BitNetConfig  # noqa: E402
from merge.diloco import run_diloco  # noqa: E402
from merge.inner import (  # noqa: E402
    InnerConfig,
    fresh_model,
    inner_optimizer,
    train_steps,
    worker_data_seeds,
)
from merge.methods import merge  # noqa: E402
from merge.outer import OUTER_LR, OUTER_MOMENTUM  # noqa: E402
from merge.sync_dp import run_sync_dp  # noqa: E402
from merge.table import bpb_table  # noqa: E402

DOMAINS = ("pycode", "pyprose")
HEADLINE_MERGE = "task arithmetic"
MERGES = {  # lam 1/2: the mean of the two task vectors (a sum would double the step)
    "task arithmetic": ("task_arithmetic", {"lam": 0.5}),
    "ties": ("ties", {"density": 0.5}),  # TIES averages the agreeing values itself
    "dare": ("dare", {"drop_rate": 0.5, "seed": 0, "lam": 0.5}),
}
SEQ_LEN = 128
CONFIG = BitNetConfig(hidden_size=96, intermediate_size=384, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=SEQ_LEN)  # the bitnet-lm template's defaults


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inner-steps", type=int, default=50, help="H")
    parser.add_argument("--outer-steps", type=int, default=10, help="K")
    parser.add_argument("--base-steps", type=int, default=400,
                        help="sync-DP steps on both domains that make the common base")
    parser.add_argument("--specialist-steps", type=int, default=300)
    parser.add_argument("--outer-lr", type=float, default=OUTER_LR)
    parser.add_argument("--outer-momentum", type=float, default=OUTER_MOMENTUM)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    console = Console()
    started = time.perf_counter()
    trains = [load_corpus(d).train for d in DOMAINS]
    inner = InnerConfig(seq_len=SEQ_LEN)
    steps = args.inner_steps * args.outer_steps
    models, timings, communicated = {}, {}, {}

    with Progress(TextColumn("{task.description:<34}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console) as progress:
        def phase(name: str, total: int):
            """A progress bar for the next phase; the previous one's time goes to the log."""
            if progress.tasks:
                done = progress.tasks[-1]
                progress.console.log(f"{done.description.strip()}: {done.elapsed:.0f} s")
            task = progress.add_task(name, total=total)
            return lambda *_: progress.advance(task)

        tick = phase("base (both domains)", args.base_steps)
        base = run_sync_dp(fresh_model(CONFIG, args.seed), trains, steps=args.base_steps,
                           seed=1000 + args.seed, inner=inner, on_step=tick).model
        models["base"] = base

        tick = phase(f"sync DP ({steps} steps x 2 batches)", steps)
        sync = run_sync_dp(base, trains, steps=steps, seed=args.seed, inner=inner, on_step=tick)
        models["sync DP"], communicated["sync DP"] = sync.model, sync.bytes_communicated
        timings["sync DP"] = sync.seconds
        tick = phase(f"DiLoCo (H={args.inner_steps}, K={args.outer_steps})", args.outer_steps)
        result = run_diloco(base, trains, inner_steps=args.inner_steps,
                            outer_steps=args.outer_steps, seed=args.seed, inner=inner,
                            outer_lr=args.outer_lr, outer_momentum=args.outer_momentum,
                            compress="fp16", on_step=tick)
        models["DiLoCo"], communicated["DiLoCo"] = result.model, result.bytes_communicated
        timings["DiLoCo"] = result.seconds

        specialists = []
        streams = worker_data_seeds(len(trains), args.seed)  # the workers' batches, again
        for domain, train, stream in zip(DOMAINS, trains, streams, strict=True):
            tick = phase(f"specialist {domain} ({args.specialist_steps} steps)",
                         args.specialist_steps)
            model = copy.deepcopy(base)
            generator = torch.Generator().manual_seed(stream)
            train_steps(model, inner_optimizer(model, inner), train, generator,
                        args.specialist_steps, inner, on_step=tick)
            models[f"specialist {domain}"] = model.eval()
            specialists.append(model.state_dict())
        for label, (method, options) in MERGES.items():
            merged = copy.deepcopy(base)
            merged.load_state_dict(merge(method, base.state_dict(), specialists, **options))
            models[f"merge: {label}"] = merged.eval()

        tick = phase("evaluating (val_bpb)", len(models) * len(DOMAINS))
        table = bpb_table(list(models.items()), list(DOMAINS), on_cell=tick)

    results = summarise(table, communicated, timings, args, time.perf_counter() - started)
    (ROOT / "bench" / "diloco.json").write_text(json.dumps(results, indent=1))
    (ROOT / "bench" / "diloco.md").write_text(table.markdown())
    table.plot(ROOT / "bench" / "diloco.png",
               f"DiLoCo (H={args.inner_steps}, fp16) vs sync DP, and merges of two specialists")
    report(console, table, results)


def summarise(table, communicated: dict[str, int], timings: dict[str, float],
              args: argparse.Namespace, seconds: float) -> dict:
    sync = communicated["sync DP"]
    gap = {d: 100 * (table.value("DiLoCo", d) / table.value("sync DP", d) - 1) for d in DOMAINS}
    merges = {}
    for label in MERGES:
        own = {d: 100 * (table.value(f"merge: {label}", d) /
                         table.value(f"specialist {d}", d) - 1) for d in DOMAINS}
        beats_other = {d: table.value(f"merge: {label}", d) <
                       table.value(f"specialist {other}", d)
                       for d, other in zip(DOMAINS, reversed(DOMAINS), strict=True)}
        merges[label] = {"vs_own_specialist_pct": own, "beats_other_specialist": beats_other,
                         "worst_pct": max(own.values())}
    return {
        "args": vars(args), "seconds": round(seconds, 1), "table": table.to_dict(),
        "bytes": communicated,
        "comm_reduction": {name: sync / b for name, b in communicated.items()},
        "train_seconds": timings, "diloco_vs_sync_pct": gap,
        "bpb_gap_pct": max(gap.values()), "merges": merges,
    }


def report(console: Console, table, results: dict) -> None:
    view = Table(title="val_bpb per domain (lower is better)")
    view.add_column("model")
    for domain in DOMAINS:
        view.add_column(domain, justify="right")
    view.add_column("bytes sent", justify="right")
    view.add_column("fewer bytes than sync", justify="right")
    for name, row in zip(table.models, table.values, strict=True):
        sent = results["bytes"].get(name)
        view.add_row(name, *[f"{v:.4f}" for v in row],
                     f"{sent / 2**20:,.1f} MiB" if sent else "",
                     f"{results['comm_reduction'][name]:.0f}x" if sent else "")
    console.print(view)
    gap = results["diloco_vs_sync_pct"]
    console.print("DiLoCo vs sync DP: " + ", ".join(f"{d} {g:+.2f}%" for d, g in gap.items()))
    for label, m in results["merges"].items():
        own = ", ".join(f"{d} {p:+.2f}%" for d, p in m["vs_own_specialist_pct"].items())
        beats = all(m["beats_other_specialist"].values())
        console.print(f"merge {label}: vs each specialist on its own domain {own}; "
                      f"better than the other specialist on both: {beats}")
    console.print(f"whole bench: {results['seconds']:.0f} s")
    print(f"RESULT comm_reduction={results['comm_reduction']['DiLoCo']:.1f} "
          f"bpb_gap_pct={results['bpb_gap_pct']:.2f} "
          f"merged_vs_specialist_pct={results['merges'][HEADLINE_MERGE]['worst_pct']:.2f}")


if __name__ == "__main__":
    main()
