"""Does the llama.cpp-computable architecture (SiLU gate, tied lm_head) cost val_bpb at equal time?

    .venv/bin/python bench/ffn_act.py [--budget 60 | --steps N [--jobs 2]] [--seeds 3]
                                      [--corpus portable-code]

Trains the bitnet-lm template as it ships, except for its FFN_ACT ("relu2" / "silu") and
TIE_EMBEDDINGS (False / True) constants, on `--corpus` with several seeds, and scores each
checkpoint with the trusted scorer (bitnet.score.score_checkpoint through two logits servers
running the variant's own model.py: the val_bpb an experiment gets). llama.cpp's `bitnet` graph
computes only silu + tied.

Two ways to hold the comparison equal:
  --budget S  equal time: S training seconds each (60, the template's and `magnet-agent train`'s
              default). On a shared machine the step count then follows the load; runs
              alternate round-robin (one seed of every variant, then the next seed; the order
              rotates each round), so load falls on all variants alike, but not evenly.
  --steps N   equal steps (MAGNET_STEPS, the schedule over N steps as a replay runs it): the
              result does not depend on the load at all (a fixed-step run is deterministic), so
              `--jobs` runs go side by side. With equal step times (measured below), equal steps
              is equal time on a quiet machine; 368 steps is the template's 60 s there (README).
Either way it then times training steps of every variant side by side in this process (the
template's model.py and batch, one thread, rounds alternating the variants; median per step).

Printed: each run (val_bpb, steps, load average), then per variant the mean +- standard deviation
of val_bpb and steps, each variant's difference from relu2/untied paired by seed, with its
standard error, and its step time relative to relu2/untied. Ends with `RESULT mode=...
relu2_untied_bpb=... relu2_tied_bpb=... silu_untied_bpb=... silu_tied_bpb=...
silu_tied_minus_relu2_untied=... silu_tied_diff_se=... silu_tied_step_time_ratio=... runs=N`;
bench/ffn_act.json keeps every run, per mode.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bitnet import logits_server  # noqa: E402
from bitnet.data import load_corpus, train_dir  # noqa: E402
from bitnet.score import score_checkpoint  # noqa: E402
from sandbox.templates import template_dir  # noqa: E402

VARIANTS = {  # name: (FFN_ACT, TIE_EMBEDDINGS)
    "relu2_untied": ("relu2", False),
    "relu2_tied": ("relu2", True),
    "silu_untied": ("silu", False),
    "silu_tied": ("silu", True),
}
BASELINE = "relu2_untied"  # the template before this choice existed
SCORE_TIMEOUT = 600.0


def variant_template(dest: Path, act: str, tied: bool, **constants) -> Path:
    """A copy of the bitnet-lm template with FFN_ACT, TIE_EMBEDDINGS (and `constants`) set."""
    shutil.copytree(template_dir("bitnet-lm"), dest,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    train = dest / "train.py"
    text = train.read_text()
    values = {"FFN_ACT": act, "TIE_EMBEDDINGS": tied, **constants}
    for name, value in values.items():
        text, n = re.subn(rf"^{name} = .*$", f"{name} = {value!r}", text, count=1, flags=re.M)
        if n != 1:
            raise SystemExit(f"the template's train.py has no `{name} = ...` line")
    train.write_text(text)
    return dest


def train(code: Path, out: Path, corpus, budget: float, seed: int, threads: int,
          steps: int | None = None) -> dict:
    """Run the template copy's train.py as an experiment runs it (for `budget` seconds, or
    exactly `steps` steps); its metrics.json."""
    env = {**os.environ, "MAGNET_TRAIN_DATA": str(train_dir(corpus)),
           "MAGNET_CORPUS": corpus.name, "MAGNET_TIME_BUDGET": str(budget),
           "MAGNET_SEED": str(seed), "MAGNET_OUTPUT_DIR": str(out),
           "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    if steps is not None:
        env["MAGNET_STEPS"] = str(steps)
    done = subprocess.run([sys.executable, "train.py"], cwd=code, env=env,
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"training {code.name} seed {seed} failed (exit {done.returncode}):\n"
                         f"{done.stderr[-2000:]}")
    return json.loads((out / "metrics.json").read_text())


def train_and_score(code: Path, out: Path, corpus, budget: float, seed: int,
                    threads: int, steps: int | None) -> dict:
    load = os.getloadavg()[0]
    metrics = train(code, out, corpus, budget, seed, threads, steps)
    score = score_checkpoint(corpus.val, out, logits_server.command(out, code),
                             timeout=SCORE_TIMEOUT)
    return {"val_bpb": score.val_bpb, "steps": metrics["steps"], "params": metrics["params"],
            "tokens_per_s": metrics["tokens_per_s"], "load_before": round(load, 2),
            "load_after": round(os.getloadavg()[0], 2)}


def step_times(codes: dict[str, Path], rounds: int = 6, steps: int = 4) -> dict[str, float]:
    """Median seconds per training step of each variant's template model (its default shapes and
    batch, random bytes, one thread), the variants alternating within every round."""
    torch.set_num_threads(1)
    sessions = {}
    for name, (act, tied) in VARIANTS.items():
        spec = importlib.util.spec_from_file_location(f"model_{name}", codes[name] / "model.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        from bitnet.model import BitNetConfig

        # the template's default shapes (N_EMBD, MLP_RATIO, N_LAYER, N_HEAD, N_KV_HEAD, SEQ_LEN)
        config = BitNetConfig(hidden_size=96, intermediate_size=384, num_hidden_layers=4,
                              num_attention_heads=4, num_key_value_heads=2,
                              max_position_embeddings=128, tie_word_embeddings=tied,
                              hidden_act=act)
        model = module.BitNetLM(config)
        sessions[name] = (model, torch.optim.AdamW(model.parameters(), lr=1e-3))
    batch = torch.randint(0, 256, (16, 129), generator=torch.Generator().manual_seed(0))  # 16x128
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for r in range(rounds + 1):
        for name, (model, optimizer) in sessions.items():
            start = time.perf_counter()
            for _ in range(steps):
                _, loss = model(batch[:, :-1], batch[:, 1:])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            if r:  # round 0 warms up
                times[name].append((time.perf_counter() - start) / steps)
    return {name: statistics.median(t) for name, t in times.items()}


def _mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def report(runs: list[dict], step_time: dict[str, float], mode: str,
           args: argparse.Namespace) -> str:
    by = {name: [r for r in runs if r["variant"] == name] for name in VARIANTS}
    base = {r["seed"]: r["val_bpb"] for r in by[BASELINE]}
    print(f"\n{mode}: {'variant':<14} {'val_bpb mean +- sd':>20} {'steps mean +- sd':>18} "
          f"{'params':>8} {'vs ' + BASELINE + ' (paired)':>28} {'step time':>10}")
    summary: dict = {}
    for name, rows in by.items():
        bpb, bpb_sd = _mean_sd([r["val_bpb"] for r in rows])
        steps, steps_sd = _mean_sd([r["steps"] for r in rows])
        diffs = [r["val_bpb"] - base[r["seed"]] for r in rows if r["seed"] in base]
        d, d_sd = _mean_sd(diffs)
        se = d_sd / len(diffs) ** 0.5 if diffs else 0.0
        ratio = step_time[name] / step_time[BASELINE]
        summary[name] = {"bpb": bpb, "bpb_sd": bpb_sd, "steps": steps, "diff": d, "diff_se": se,
                         "step_time_ratio": ratio}
        print(f"{mode}: {name:<14} {bpb:>11.4f} +- {bpb_sd:.4f} {steps:>10.0f} +- "
              f"{steps_sd:<5.0f} {rows[0]['params']:>8,} {d:>+18.4f} +- {se:.4f} (se) "
              f"{ratio:>9.3f}x")
    loads = [r["load_before"] for r in runs]
    print(f"load average (1 min) before the runs: {min(loads):.1f}-{max(loads):.1f}, "
          f"median {statistics.median(loads):.1f}, on {os.cpu_count()} CPUs; "
          f"{args.threads} thread(s) per run; step times "
          + ", ".join(f"{n} {1000 * t:.0f} ms" for n, t in step_time.items()))
    target = summary["silu_tied"]
    return (f"mode={mode} "
            + " ".join(f"{name}_bpb={s['bpb']:.4f}" for name, s in summary.items())
            + f" silu_tied_minus_relu2_untied={target['diff']:+.4f}"
            + f" silu_tied_diff_se={target['diff_se']:.4f}"
            + f" silu_tied_step_time_ratio={target['step_time_ratio']:.3f}"
            + f" runs={len(runs)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=60.0, help="training seconds per run")
    parser.add_argument("--steps", type=int, help="train exactly this many steps instead")
    parser.add_argument("--jobs", type=int, default=1,
                        help="runs at once (with --steps only: their results ignore the load)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=1337)
    parser.add_argument("--corpus", default="portable-code")
    parser.add_argument("--threads", type=int, default=1,
                        help="training threads (1: steady on a shared machine)")
    args = parser.parse_args()
    if args.jobs > 1 and args.steps is None:
        raise SystemExit("--jobs is for --steps runs: runs side by side share the time budget")
    mode = f"steps{args.steps}" if args.steps else f"time{args.budget:g}s"
    corpus = load_corpus(args.corpus)
    out_json = Path(__file__).with_suffix(".json")
    saved = json.loads(out_json.read_text()) if out_json.is_file() else {}
    if "runs" in saved:  # the first layout: one equal-time run
        saved = {f"time{saved['args']['budget']:g}s": saved}
    with tempfile.TemporaryDirectory(prefix="magnet-ffn-act-") as tmp:
        codes = {name: variant_template(Path(tmp) / name, act, tied)
                 for name, (act, tied) in VARIANTS.items()}
        names = list(VARIANTS)
        order = [(args.first_seed + i, name) for i in range(args.seeds)
                 for name in names[i % len(names):] + names[: i % len(names)]]  # rotated
        runs: list[dict] = []

        def one(seed: int, name: str) -> dict:
            start = time.monotonic()
            out = Path(tmp) / "out" / f"{name}-{seed}"
            row = {"variant": name, "seed": seed,
                   **train_and_score(codes[name], out, corpus, args.budget, seed,
                                     args.threads, args.steps)}
            print(f"seed {seed} {name:<13} val_bpb {row['val_bpb']:.4f}  steps "
                  f"{row['steps']:>5}  load {row['load_before']:.1f}  "
                  f"({time.monotonic() - start:.0f}s)", flush=True)
            return row

        with ThreadPoolExecutor(args.jobs) as pool:
            for row in pool.map(lambda job: one(*job), order):
                runs.append(row)
                saved[mode] = {"args": vars(args), "runs": runs}
                out_json.write_text(json.dumps(saved, indent=1))
        step_time = step_times(codes)
    saved[mode]["step_time_s"] = step_time
    out_json.write_text(json.dumps(saved, indent=1))
    print("RESULT " + report(runs, step_time, mode, args))


if __name__ == "__main__":
    main()
