"""What each named model size (bitnet.presets) costs on this machine: training and decoding.

For every preset, in its own process (so its peak resident memory is its own), at the preset's
stated vocabulary (genkidama-618m: 32,000 ids, fed bytes of the corpus, which are ids < 256):
  train   the template's optimiser (AdamW, its LEARNING_RATE with its warmup, betas, weight decay
          on the matrices, grad clip: read from bitnet/templates/bitnet-lm/train.py) for
          --steps steps on ONE fixed batch of the preset's batch x context bytes of portable-code
          (the loss must go down: it is memorising), --threads threads; step time is the median
          of the steps after the first; peak memory is the process's ru_maxrss. Its CPU time a
          step (all threads) over --threads is the step time with the cores to itself: the
          "own cores" throughput, which the estimates use (a machine shared with other work
          gives less: the wall-clock figure, also shown)
  decode  the checkpoint the training saved, loaded and generated from exactly as `magnet-agent
          generate` does (bitnet.generate.load_for_inference + generate, 1 thread): --new tokens
          after a 16-byte prompt; tokens/s of the cached decode steps, peak RSS (which includes
          reading the fp32 checkpoint) and the RSS left after generating
Then, from the measured training throughput, what training each preset to a useful number of
tokens takes (20 tokens a parameter, Chinchilla's compute-optimal ratio; for genkidama-618m
also the 3.8 B tokens MAGNET's paper trained Genkidama on): on one such machine, and on N DiLoCo
workers (bench/diloco.py, merge/): N x the throughput, plus every outer step's exchange of
pseudo-gradients (merge.compress.payload_bytes: int8 by default), all-gathered, so each worker
receives N - 1 payloads a round over --bandwidth-mbps. That assumes DiLoCo's tokens are worth a
single machine's (bench/diloco.py measured +1.1% val_bpb at equal compute, at 0.6 M parameters).
Wall-clock timings are taken on a machine shared with other work (the load average is
recorded): they are what it gave, not its best.

usage: python bench/sizes.py [--presets tiny,...,genkidama-618m] [--steps 5] [--new 32]
                             [--workers 8,64] [--inner-steps 50] [--compress int8]
                             [--bandwidth-mbps 100] [--keep DIR]
Writes bench/sizes.json, bench/sizes.md and bench/sizes.png; ends with
`RESULT params_618m=... peak_train_mb_618m=... train_tokens_per_s_618m=...
decode_tokens_per_s_618m=...` plus the same four for every other preset measured.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bitnet.presets import BYTES, PRESETS, Preset, preset  # noqa: E402

TEMPLATE_TRAIN = ROOT / "bitnet" / "templates" / "bitnet-lm" / "train.py"
CORPUS = "portable-code"
PROMPT = b"def main():\n    "  # 16 bytes
TOKENS_PER_PARAM = 20  # Hoffmann et al. 2022 (Chinchilla): compute-optimal tokens per parameter
PAPER = {"tokens": 3.8e9, "steps": 480_000, "tokens_per_s": 6_550, "val_loss": 2.3762}
BYTES_PER_PARAM_TO_TRAIN = 26  # fp32 weights, grads, AdamW's two moments, ternary copies: a
#                                guess to wait for free memory with, checked by the measurement
DAY = 86_400
TRAIN_FILE = "bench-train.json"  # a preset's training figures, beside its checkpoint


def template_optimizer() -> dict[str, float]:
    """The template's optimiser constants, read from its source (one fact, one place)."""
    names = {"LEARNING_RATE", "BETA1", "BETA2", "WEIGHT_DECAY", "WARMUP_STEPS", "GRAD_CLIP"}
    found = {}
    for node in ast.parse(TEMPLATE_TRAIN.read_text()).body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) in names:
            found[node.targets[0].id] = ast.literal_eval(node.value)
    if set(found) != names:
        raise SystemExit(f"{TEMPLATE_TRAIN} no longer assigns {sorted(names - set(found))}")
    return found


def short(name: str) -> str:
    """RESULT key suffix: genkidama-618m -> 618m, bitnet-10m -> 10m, tiny -> tiny."""
    return name.rsplit("-", 1)[-1]


# --- children: one preset's training, or its decoding, in a process of its own ----------------

def child_train(name: str, steps: int, threads: int, out: Path) -> dict:
    import torch

    from bitnet.checkpoint import save_checkpoint
    from bitnet.data import get_batch, load_corpus, load_train, train_dir
    from bitnet.model import BitNetLM
    from bitnet.tokenizer import load_tokenizer, load_train_tokens, tokenizer_dir

    torch.set_num_threads(threads)
    size, opt = preset(name), template_optimizer()
    corpus = load_corpus(CORPUS)
    if size.vocab == BYTES:
        tokenizer, train = None, load_train(train_dir(corpus))
    else:  # trained by the parent (tokenizer_spec): its memory is not this process's
        folder = tokenizer_dir(corpus, tokenizer_spec(size))
        tokenizer, train = load_tokenizer(folder), load_train_tokens(folder)
    inputs, targets = get_batch(train, size.batch_size, size.context,
                                torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    built = time.perf_counter()
    model = BitNetLM(size.config(tokenizer.vocab_size if tokenizer else BYTES))
    matrices = [p for n, p in model.named_parameters() if p.dim() >= 2 and "embed" not in n]
    others = [p for n, p in model.named_parameters() if p.dim() < 2 or "embed" in n]
    optimizer = torch.optim.AdamW(
        [{"params": matrices, "weight_decay": opt["WEIGHT_DECAY"]},
         {"params": others, "weight_decay": 0.0}],
        lr=opt["LEARNING_RATE"], betas=(opt["BETA1"], opt["BETA2"]))
    print(f"BUILT {time.perf_counter() - built:.1f}", flush=True)
    losses, seconds, cpu = [], [], []
    model.train()
    for step in range(steps):
        for group in optimizer.param_groups:  # the template's warmup (stage 1 starts at peak)
            group["lr"] = opt["LEARNING_RATE"] * min(1.0, (step + 1) / opt["WARMUP_STEPS"])
        start, start_cpu = time.perf_counter(), time.process_time()
        _, loss = model(inputs, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), opt["GRAD_CLIP"])
        optimizer.step()
        seconds.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)  # all threads: what the step cost the cores
        losses.append(loss.item())
        print(f"STEP {step + 1} {losses[-1]:.4f} {seconds[-1]:.2f}", flush=True)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    del optimizer
    save_checkpoint(model.eval(), out, corpus=CORPUS, tokenizer=tokenizer)
    timed = seconds[1:] or seconds  # the first step also warms the allocator and kernels
    step_s, cpu_s = statistics.median(timed), statistics.median(cpu[1:] or cpu)
    row = {"params": model.num_parameters(), "vocab": model.config.vocab_size,
           "tokenizer": tokenizer.spec if tokenizer else "bytes", "losses": losses,
           "step_seconds": seconds, "step_s": step_s, "threads": threads,
           "tokens_per_step": size.tokens_per_step(),
           "train_tokens_per_s": size.tokens_per_step() / step_s, "peak_train_mb": peak_mb,
           # the throughput with the cores to itself: CPU seconds spread over its threads
           "cpu_step_s": cpu_s, "dedicated_tokens_per_s": size.tokens_per_step() * threads / cpu_s}
    (out / TRAIN_FILE).write_text(json.dumps(row, indent=2))  # kept if decoding fails
    return row


def tokenizer_spec(size: Preset) -> str:
    """The tokenizer a preset is measured with: bytes, or a BPE of its stated vocabulary."""
    return "bytes" if size.vocab == BYTES else f"bpe:{size.vocab}"


def child_decode(checkpoint: Path, new: int) -> dict:
    import psutil

    from bitnet.generate import generate, load_for_inference

    model = load_for_inference(checkpoint)
    generate(model, PROMPT, max_new_tokens=4, threads=1)  # warm-up
    result = generate(model, PROMPT, max_new_tokens=new, threads=1)
    return {"decode_tokens_per_s": result.tokens_per_s, "peak_decode_mb": result.peak_rss_mb,
            "decode_rss_mb": psutil.Process().memory_info().rss / 2**20,
            "weight_mb": sum(model.weight_bytes().values()) / 2**20,
            "sample": result.text[:60]}


# --- the parent: runs the children, estimates, reports ----------------------------------------

def wait_for_memory(name: str, size: Preset, console, patience: float) -> None:
    import psutil

    need = size.parameters() * BYTES_PER_PARAM_TO_TRAIN + 2**30
    deadline = time.monotonic() + patience
    while (free := psutil.virtual_memory().available) < need:
        if time.monotonic() > deadline:
            raise SystemExit(f"{name} needs ~{need / 2**30:.1f} GiB free to train, "
                             f"{free / 2**30:.1f} GiB are: stop other work or raise --wait")
        console.print(f"[yellow]{name}: waiting for {need / 2**30:.1f} GiB free memory "
                      f"({free / 2**30:.1f} GiB now)[/]")
        time.sleep(30)


def run_child(args: list[str], on_line) -> dict:
    """Run this script as a child; its STEP/BUILT lines go to `on_line`, its JSON is returned."""
    proc = subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    result = None
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("JSON "):
            result = json.loads(line[5:])
        else:
            on_line(line.rstrip("\n"))
    if proc.wait() != 0 or result is None:
        raise SystemExit(f"the child {' '.join(args)} failed (exit {proc.returncode})")
    return result


def estimate(row: dict, tokens: float, workers: int, inner_steps: int, compress: str,
             bandwidth_mbps: float) -> dict:
    """Days to train on `tokens` tokens: one machine (workers=1) or DiLoCo over `workers`,
    each machine at the throughput it has with its two cores to itself."""
    from merge.compress import payload_bytes

    compute_s = tokens / (row["dedicated_tokens_per_s"] * workers)
    if workers == 1:
        return {"days": compute_s / DAY, "outer_steps": 0, "bytes_per_outer_step": 0,
                "comm_share": 0.0,
                "days_as_measured": tokens / row["train_tokens_per_s"] / DAY}  # shared cores
    outer_steps = tokens / (workers * inner_steps * row["tokens_per_step"])
    payload = payload_bytes(row["params"], compress)  # one worker's pseudo-gradient
    comm_s = outer_steps * (workers - 1) * payload * 8 / (bandwidth_mbps * 1e6)
    return {"days": (compute_s + comm_s) / DAY, "outer_steps": outer_steps,
            "bytes_per_outer_step": payload, "comm_share": comm_s / (compute_s + comm_s)}


def human_days(days: float) -> str:
    if days >= 365:
        return f"{days / 365:.1f} y"
    return f"{days:.1f} d" if days >= 1 else f"{days * 24:.1f} h"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", default=",".join(PRESETS))
    parser.add_argument("--steps", type=int, default=5, help="training steps per preset (>= 2)")
    parser.add_argument("--threads", type=int, default=2, help="training threads")
    parser.add_argument("--new", type=int, default=32, help="tokens to decode")
    parser.add_argument("--workers", default="8,64", help="DiLoCo worker counts to estimate")
    parser.add_argument("--inner-steps", type=int, default=50, help="DiLoCo's H")
    parser.add_argument("--compress", default="int8", help="none | fp16 | int8")
    parser.add_argument("--bandwidth-mbps", type=float, default=100.0,
                        help="each worker's link, for the exchange time")
    parser.add_argument("--keep", help="keep each preset's trained checkpoint in DIR/NAME")
    parser.add_argument("--wait", type=float, default=1800,
                        help="seconds to wait for free memory before a preset")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:  # [train NAME STEPS THREADS OUT] or [decode CHECKPOINT NEW]
        kind, *rest = args.child
        out = (child_train(rest[0], int(rest[1]), int(rest[2]), Path(rest[3]))
               if kind == "train" else child_decode(Path(rest[0]), int(rest[1])))
        print("JSON " + json.dumps(out), flush=True)
        os._exit(0)

    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    names = [n.strip() for n in args.presets.split(",") if n.strip()]
    for name in names:
        try:
            preset(name)
        except ValueError as err:
            parser.error(f"--presets: {err}")
    if args.steps < 2:
        parser.error("--steps must be at least 2: the first step is a warm-up")
    workers = [int(n) for n in args.workers.split(",")]
    console = Console()
    keep = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="magnet-sizes-"))
    rows: dict[str, dict] = {}
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[info]}"),
                  TimeElapsedColumn(), console=console) as progress:
        for name in names:
            size = preset(name)
            if size.vocab != BYTES:
                from bitnet.tokenizer import ensure_tokenizer

                progress.console.print(f"{name}: the {tokenizer_spec(size)} tokenizer of {CORPUS}")
                ensure_tokenizer(CORPUS, tokenizer_spec(size))
            wait_for_memory(name, size, progress.console, args.wait)
            task = progress.add_task(f"{name} train", total=args.steps, info="building")

            def on_line(line: str, task=task) -> None:
                parts = line.split()
                if parts[:1] == ["STEP"]:
                    progress.update(task, completed=int(parts[1]),
                                    info=f"loss {parts[2]}  {parts[3]} s/step")
                elif parts[:1] == ["BUILT"]:
                    progress.update(task, info=f"built in {parts[1]} s")
                elif line:
                    progress.console.print(line, style="dim", markup=False)

            out, load = keep / name, os.getloadavg()[0]  # what else the machine was running
            row = run_child(["--child", "train", name, str(args.steps), str(args.threads),
                             str(out)], on_line)
            progress.console.print(
                f"{name}: {row['params']:,} parameters, {row['step_s']:.1f} s a step, "
                f"{row['train_tokens_per_s']:.1f} tokens/s, peak {row['peak_train_mb']:,.0f} MB, "
                f"losses {' '.join(f'{x:.3f}' for x in row['losses'])}", markup=False)
            progress.update(task, description=f"{name} decode", info="generating")
            row |= run_child(["--child", "decode", str(out), str(args.new)], on_line)
            progress.update(task, description=f"{name} done",
                            info=f"{row['train_tokens_per_s']:.0f} tok/s train, "
                                 f"{row['decode_tokens_per_s']:.1f} tok/s decode")
            row |= {"checkpoint": str(out), "load_before": load, "load_after": os.getloadavg()[0]}
            rows[name] = row
    rows = {name: rows[name] for name in PRESETS if name in rows}  # smallest first, as listed
    results = summarise(rows, workers, args)
    report(console, results)
    write(results)
    console.print(result_line(rows), soft_wrap=True, highlight=False, markup=False)


def summarise(rows: dict[str, dict], workers: list[int], args) -> dict:
    for name, row in rows.items():
        targets = {"20 tokens/param": TOKENS_PER_PARAM * row["params"]}
        if name == "genkidama-618m":
            targets["Genkidama's 3.8 B"] = PAPER["tokens"]
        row["estimates"] = {
            label: {str(n): estimate(row, tokens, n, args.inner_steps, args.compress,
                                     args.bandwidth_mbps) for n in [1, *workers]}
            | {"tokens": tokens}
            for label, tokens in targets.items()}
    return {"rows": rows, "paper": PAPER | {"days": PAPER["tokens"] / PAPER["tokens_per_s"] / DAY},
            "settings": {"steps": args.steps, "threads": args.threads, "new": args.new,
                         "workers": workers, "inner_steps": args.inner_steps,
                         "compress": args.compress, "bandwidth_mbps": args.bandwidth_mbps,
                         "corpus": CORPUS, "optimizer": template_optimizer()}}


def report(console, results: dict) -> None:
    from rich.table import Table

    rows, settings = results["rows"], results["settings"]
    table = Table(title=f"Sizes on this machine ({settings['threads']} training threads, "
                        "1 decoding thread)")
    for column in ("preset", "params", "vocab", "tokens/step", "step s", "train tok/s",
                   "tok/s, own cores", "peak train MB", "loss first→last", "decode tok/s",
                   "decode peak/RSS MB"):
        table.add_column(column, justify="left" if column == "preset" else "right")
    for name, row in rows.items():
        table.add_row(name, f"{row['params'] / 1e6:,.1f} M", f"{row['vocab']:,}",
                      f"{row['tokens_per_step']:,}", f"{row['step_s']:.2f}",
                      f"{row['train_tokens_per_s']:,.1f}",
                      f"{row['dedicated_tokens_per_s']:,.1f}", f"{row['peak_train_mb']:,.0f}",
                      f"{row['losses'][0]:.3f}→{row['losses'][-1]:.3f}",
                      f"{row['decode_tokens_per_s']:.1f}",
                      f"{row['peak_decode_mb']:,.0f} / {row['decode_rss_mb']:,.0f}")
    console.print(table)
    workers = settings["workers"]
    plan = Table(title=f"Time to train (DiLoCo: H = {settings['inner_steps']}, "
                       f"{settings['compress']} pseudo-gradients, "
                       f"{settings['bandwidth_mbps']:g} Mbit/s links)")
    for column in ("preset", "tokens", "1 machine", *[f"{n} workers" for n in workers],
                   "MB / outer step / worker"):
        plan.add_column(column, justify="left" if column == "preset" else "right")
    for name, row in rows.items():
        for label, est in row["estimates"].items():
            cells = [f"{human_days(est['1']['days'])} "
                     f"({human_days(est['1']['days_as_measured'])} shared)"]
            for n in workers:
                e = est[str(n)]
                cells.append(f"{human_days(e['days'])} ({e['comm_share']:.0%} comm)")
            plan.add_row(f"{name} ({label})", f"{est['tokens'] / 1e9:.2f} B", *cells,
                         f"{est[str(workers[0])]['bytes_per_outer_step'] / 1e6:,.0f}")
    paper = results["paper"]
    plan.add_row("Genkidama (paper: 1 workstation GPU)", f"{paper['tokens'] / 1e9:.2f} B",
                 human_days(paper["days"]), *["" for _ in workers], "",
                 style="bold")
    console.print(plan)


def write(results: dict) -> None:
    here = Path(__file__).with_suffix("")
    here.with_suffix(".json").write_text(json.dumps(results, indent=2))
    rows, settings = results["rows"], results["settings"]
    lines = ["| preset | params | vocab | tokens/step | step s | train tok/s | "
             "tok/s, own cores | peak train MB | loss first→last | decode tok/s | "
             "decode peak / RSS MB |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, row in rows.items():
        lines.append(
            f"| {name} | {row['params'] / 1e6:,.1f} M | {row['vocab']:,} | "
            f"{row['tokens_per_step']:,} | {row['step_s']:.2f} | "
            f"{row['train_tokens_per_s']:,.1f} | {row['dedicated_tokens_per_s']:,.1f} | "
            f"{row['peak_train_mb']:,.0f} | "
            f"{row['losses'][0]:.3f}→{row['losses'][-1]:.3f} | "
            f"{row['decode_tokens_per_s']:.1f} | "
            f"{row['peak_decode_mb']:,.0f} / {row['decode_rss_mb']:,.0f} |")
    workers = settings["workers"]
    header = " | ".join(f"{n} DiLoCo workers" for n in workers)
    lines += ["", f"| preset (tokens) | tokens | 1 machine | {header} | MB / outer step / worker |",
              "|---|---:|---:|" + "---:|" * len(workers) + "---:|"]
    for name, row in rows.items():
        for label, est in row["estimates"].items():
            cells = [f"{human_days(est[str(n)]['days'])} ({est[str(n)]['comm_share']:.0%} comm)"
                     for n in workers]
            lines.append(f"| {name} ({label}) | {est['tokens'] / 1e9:.2f} B | "
                         f"{human_days(est['1']['days'])} "
                         f"({human_days(est['1']['days_as_measured'])} shared) | "
                         + " | ".join(cells) + " | "
                         f"{est[str(workers[0])]['bytes_per_outer_step'] / 1e6:,.0f} |")
    paper = results["paper"]
    lines.append(f"| Genkidama (paper, 1 GPU at {paper['tokens_per_s']:,} tok/s) | "
                 f"{paper['tokens'] / 1e9:.2f} B | {human_days(paper['days'])} | "
                 + " | ".join("" for _ in workers) + " | |")
    here.with_suffix(".md").write_text("\n".join(lines) + "\n")
    plot(results, here.with_suffix(".png"))


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["rows"]
    params = [row["params"] for row in rows.values()]
    fig, (speed, memory) = plt.subplots(1, 2, figsize=(11, 4.2))
    speed.loglog(params, [r["train_tokens_per_s"] for r in rows.values()], "o-", label="train")
    speed.loglog(params, [r["decode_tokens_per_s"] for r in rows.values()], "s-",
                 label="decode (batch 1)")
    threads = results["settings"]["threads"]
    speed.set(xlabel="parameters", ylabel="tokens / s",
              title=f"throughput ({threads} training, 1 decoding thread)")
    memory.loglog(params, [r["peak_train_mb"] / 1024 for r in rows.values()], "o-",
                  label="training peak")
    memory.loglog(params, [r["decode_rss_mb"] / 1024 for r in rows.values()], "s-",
                  label="decoding RSS")
    memory.axhline(24, color="red", linestyle="--", label="24 GiB laptop")
    memory.set(xlabel="parameters", ylabel="GiB", title="memory")
    for axis in (speed, memory):
        for name, x in zip(rows, params, strict=True):
            axis.annotate(name, (x, axis.get_ylim()[0]), fontsize=7, rotation=90,
                          va="bottom", ha="right")
        axis.legend(fontsize=8)
        axis.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def result_line(rows: dict[str, dict]) -> str:
    order = sorted(rows, key=lambda n: n != "genkidama-618m")  # the 618 M figures first
    parts = []
    for name in order:
        row, key = rows[name], short(name)
        parts += [f"params_{key}={row['params']}",
                  f"peak_train_mb_{key}={row['peak_train_mb']:.0f}",
                  f"train_tokens_per_s_{key}={row['train_tokens_per_s']:.1f}",
                  f"decode_tokens_per_s_{key}={row['decode_tokens_per_s']:.1f}"]
    return "RESULT " + " ".join(parts)


if __name__ == "__main__":
    main()
