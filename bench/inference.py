"""Batch-1 generation speed and memory of exported BitNet models, side by side in one run.

For two models at the template's shapes scaled up (~20M and ~100M parameters, widths a multiple
of 256, random weights: speed does not depend on them), each engine generates 128 new tokens
after a 64-token prompt, in its own process (so its resident memory is its own):
  ours        bitnet.generate: ternary weights kept as int8 codes, integer kernels, KV cache
  dense fp32  the same architecture with plain fp32 nn.Linear, same KV-cache decoding loop
  hf bitnet   transformers' BitNetForCausalLM on the `hf` export (packed ternary), generate()
  llama.cpp   llama-cpp-python on the `gguf` export (TQ2_0), when it is installed
plus the bytes per parameter of the ternary layers on disk, and the memory-bandwidth bound: the
bytes one decoded token must read divided by this machine's measured copy bandwidth. The models
are the llama.cpp-computable variant (SiLU-gated FFN, tied lm_head), so llama.cpp computes
them as we do.

With llama.cpp installed (`make llama-cpp`), llama.cpp as a reader of the same checkpoint:
  - for the smaller model, its next-byte logits against ours (bench/llamacpp_check.py);
  - for two models trained here for `--train-steps` steps on portable-code from the template
    (FFN_ACT "silu", TIE_EMBEDDINGS True): the template's default shape, whose row lengths
    (96, 384) are exported as F16 (llama.cpp then multiplies fp16 activations, no int8), and a
    one-layer 256-wide one with a 256-wide FFN (TQ2_0 everywhere, and Q8_K's 256-blocks are our
    per-token rows, so the same int8 grid): llama.cpp's bits per byte on our
    evaluator's windows of the validation bytes (bitnet.llamacpp.llamacpp_bpb) against our
    evaluator's (bitnet.evaluate.evaluate_bpb), and how many greedy tokens the two engines agree
    on (bitnet.generate, same sampling code) from a few prompts.

Trained-tokenizer rows (`--rows bpe`): the same four engines on checkpoints that carry a bpe:4096
tokenizer trained on portable-code (bitnet.tokenizer.ensure_tokenizer), at the template's
default shape and the ~20M one (`--bpe-sizes`); the prompt is 64 of its tokens. A BPE token
stands for several bytes, so besides tokens/s each row gives bytes of text per second: tokens/s
times the tokenizer's mean bytes per token on portable-code's validation split (what a decoded
token is worth on that text; random weights emit other tokens). With llama.cpp, the template
trained with that tokenizer (`--train-steps` steps), scored as above: llama.cpp fed each window's
token ids as our evaluator encodes them (bitnet.evaluate.window_ids).

usage: python bench/inference.py [--sizes 20M,100M] [--new 128] [--prompt 64] [--repeats 2]
                                 [--train-steps 150] [--rows bytes,bpe]
                                 [--bpe-sizes template,20M]
Ends with `RESULT speedup_vs_dense=<x> speedup_vs_hf=<x> bytes_per_param=<b>
[speedup_vs_llamacpp=<x> llamacpp_bpb_diff_pct=<%> llamacpp_bpb_diff_pct_tq2=<%>
llamacpp_greedy_match=<matched>/<total>]`: speeds for the ~100M model, bits per byte
(llama.cpp's minus ours, in percent of ours) for the trained template-shaped and 256-wide models;
then, for the BPE rows, `speedup_vs_dense_bpe=<x> speedup_vs_hf_bpe=<x> bytes_per_param_bpe=<b>
text_bytes_per_s_bpe=<B/s> [speedup_vs_llamacpp_bpe=<x> llamacpp_bpb_diff_pct_bpe=<%>
llamacpp_greedy_match_bpe=<matched>/<total>]` for the last BPE size and the trained BPE model.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SIZES = {  # hidden, intermediate, layers, heads, kv heads: the template's proportions, scaled
    "template": dict(hidden_size=96, intermediate_size=384, num_hidden_layers=4,
                     num_attention_heads=4, num_key_value_heads=2),  # its defaults
    "20M": dict(hidden_size=512, intermediate_size=1536, num_hidden_layers=6,
                num_attention_heads=8, num_key_value_heads=4),
    "100M": dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=8,
                 num_attention_heads=16, num_key_value_heads=8),
}
ENGINES = ("ours", "dense fp32", "hf bitnet", "llama.cpp")
CONTEXT = 256  # max_position_embeddings: prompt + new tokens fit
# trained for llama.cpp's bits per byte: template constants besides FFN_ACT="silu", tied
PARITY_MODELS = {"template": {}, "256-wide": {"N_EMBD": 256, "N_LAYER": 1, "MLP_RATIO": 1}}
PARITY_PROMPTS = ["def ", "import os\n", "class Foo(", "    return "]
PARITY_NEW = 64  # greedy tokens compared per prompt
CORPUS = "portable-code"  # the parity models train on it, the BPE rows' tokenizer too
BPE_SPEC = "bpe:4096"  # the trained-tokenizer rows' tokenizer
PROMPT_TEXT = b"def fibonacci(n):\n    "  # repeated to the prompt's length in tokens


def make_checkpoint(size: str, out: Path, tokenizer=None) -> Path:
    """Random weights at `size`, over bytes or `tokenizer` (saved with the checkpoint)."""
    import torch

    from bitnet.checkpoint import save_checkpoint
    from bitnet.model import BitNetConfig, BitNetLM

    torch.manual_seed(0)
    # the llama.cpp-computable variant: its BitNet graph gates with SiLU and takes the logits
    # from the embedding (no slot for a head)
    vocab = 256 if tokenizer is None else tokenizer.vocab_size
    config = BitNetConfig(vocab_size=vocab, max_position_embeddings=CONTEXT,
                          tie_word_embeddings=True, hidden_act="silu", **SIZES[size])
    return save_checkpoint(BitNetLM(config), out, tokenizer=tokenizer)


# --- workers: one engine, one process ---------------------------------------------------------


def worker(engine: str, checkpoint: Path, exports: Path, prompt_len: int, new: int,
           threads: int) -> dict:
    import torch

    from bitnet.tokenizer import load_tokenizer

    torch.set_num_threads(threads)
    # prompt_len tokens of the checkpoint's tokenizer (bytes: ids are the bytes)
    ids = load_tokenizer(checkpoint).encode(PROMPT_TEXT * prompt_len)
    prompt = [int(i) for i in ids[:prompt_len]]
    run = {"ours": _ours, "dense fp32": _dense, "hf bitnet": _hf, "llama.cpp": _llamacpp}[engine]
    tokens_per_s, weight_bytes = run(checkpoint, exports, prompt, new, threads)
    return {"tokens_per_s": tokens_per_s, "weight_bytes": weight_bytes, "rss_mb": _peak_rss_mb()}


def _peak_rss_mb() -> float:
    """This process's peak resident memory. Not ru_maxrss: a child inherits its parent's peak
    across fork and exec, while VmHWM belongs to the new address space."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _ours(checkpoint: Path, exports: Path, prompt: list[int], new: int,
          threads: int) -> tuple[float, int]:
    from bitnet.infer import load_for_inference

    return _decode(load_for_inference(checkpoint), checkpoint, prompt, new)


def _dense(checkpoint: Path, exports: Path, prompt: list[int], new: int,
           threads: int) -> tuple[float, int]:
    """The same architecture and decoding loop (KV cache), with plain fp32 nn.Linear."""
    from torch import nn

    from bitnet.checkpoint import load_checkpoint
    from bitnet.infer import InferenceModel
    from bitnet.model import BitNetLM

    trained = load_checkpoint(checkpoint)
    dense = BitNetLM(trained.config, linear=nn.Linear)
    dense.load_state_dict(trained.state_dict())
    return _decode(InferenceModel.from_model(dense.eval()), checkpoint, prompt, new)


def _decode(model, checkpoint: Path, prompt: list[int], new: int) -> tuple[float, int]:
    from bitnet.generate import generate
    from bitnet.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(checkpoint)  # a BPE model's ids are not bytes
    generate(model, prompt, max_new_tokens=4, tokenizer=tokenizer)  # warm-up: allocations
    result = generate(model, prompt, max_new_tokens=new, tokenizer=tokenizer)
    return result.tokens_per_s, sum(model.weight_bytes().values())


def _hf(checkpoint: Path, exports: Path, prompt: list[int], new: int,
        threads: int) -> tuple[float, int]:
    """transformers' own generate() with its cache; weights unpacked at every forward."""
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(exports / "hf").eval()
    ids = torch.tensor([prompt])
    kwargs = dict(max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        model.generate(ids, max_new_tokens=4, min_new_tokens=4, do_sample=False,
                       pad_token_id=0)  # warm-up (compilation, first-call allocations)
        prefill = _time(lambda: model(ids))
        total = _time(lambda: model.generate(ids, **kwargs))
    held = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    # decode steps only: the prompt's forward pass gives the first token
    return (new - 1) / (total - prefill), held


def _llamacpp(checkpoint: Path, exports: Path, prompt: list[int], new: int,
              threads: int) -> tuple[float, int]:
    """llama.cpp computing, bitnet.generate's loop sampling (as `generate --engine llama.cpp`),
    F32 KV cache like ours."""
    from bitnet.generate import generate
    from bitnet.llamacpp import LlamaCppModel
    from bitnet.tokenizer import load_tokenizer

    model = LlamaCppModel(exports / "model.gguf", CONTEXT, n_threads=threads,
                          tokenizer=load_tokenizer(checkpoint))
    generate(model, prompt, max_new_tokens=4)  # warm-up
    result = generate(model, prompt, max_new_tokens=new)
    return result.tokens_per_s, (exports / "model.gguf").stat().st_size


def _time(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# --- the side-by-side run ---------------------------------------------------------------------


def have_llamacpp() -> bool:
    return subprocess.run([sys.executable, "-c", "import llama_cpp"],
                          capture_output=True).returncode == 0


def run_engine(engine: str, checkpoint: Path, exports: Path, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--worker", engine, "--checkpoint", str(checkpoint),
           "--exports", str(exports), "--new", str(args.new), "--prompt", str(args.prompt),
           "--threads", str(args.threads)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{engine} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def copy_bandwidth() -> float:
    """Bytes per second this machine copies (a 256 MB numpy copy, best of 5)."""
    import numpy as np

    src = np.ones(256 * 2**20, dtype=np.uint8)
    dst = np.empty_like(src)
    best = min(_time(lambda: np.copyto(dst, src)) for _ in range(5))
    return 2 * src.nbytes / best  # read + write


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="20M,100M")
    parser.add_argument("--new", type=int, default=128)
    parser.add_argument("--prompt", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2, help="runs per engine; the best counts")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--train-steps", type=int, default=150,
                        help="training steps of each model llama.cpp's bits per byte is "
                             "measured on (steps, not seconds: trained alike under any load)")
    parser.add_argument("--rows", default="bytes,bpe",
                        help="which rows to measure: bytes (the --sizes byte models and the "
                             "byte parity models), bpe (the --bpe-sizes models over "
                             f"{BPE_SPEC} and the BPE parity model), or both")
    parser.add_argument("--bpe-sizes", default="template,20M",
                        help=f"shapes of the {BPE_SPEC} rows, of {', '.join(SIZES)}")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--exports", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    rows = set(args.rows.split(","))
    sizes = args.sizes.split(",") + args.bpe_sizes.split(",")
    if not rows or rows - {"bytes", "bpe"} or set(sizes) - set(SIZES):
        parser.error(f"--rows takes bytes, bpe or both; sizes are {', '.join(SIZES)}")
    if args.worker:
        print(json.dumps(worker(args.worker, args.checkpoint, args.exports, args.prompt,
                                args.new, args.threads)))
        return
    report(measure(args), args)


def merge_saved(results: dict, args: argparse.Namespace) -> dict:
    """What bench/inference.json and .png show: this run's rows, and for a run of only some
    --rows the other rows the file holds (its table and RESULT line are only this run's)."""
    saved = Path(__file__).with_suffix(".json")
    rows = set(args.rows.split(","))
    if rows == {"bytes", "bpe"} or not saved.exists():
        return results
    old = json.loads(saved.read_text())
    kept = {name: row for name, row in old.get("sizes", {}).items()
            if (row.get("tokenizer", "bytes") == "bytes") != ("bytes" in rows)}
    keys = ("parity",) if "bpe" in rows else ("parity_bpe", "bytes_per_token_bpe")
    merged = {**{k: old[k] for k in keys if k in old}, **results}
    merged["sizes"] = {**kept, **results["sizes"]} if "bpe" in rows else {
        **results["sizes"], **kept}
    return merged


def measure(args: argparse.Namespace) -> dict:
    engines = [e for e in ENGINES if e != "llama.cpp" or have_llamacpp()]
    rows = args.rows.split(",")
    results: dict = {"bandwidth": copy_bandwidth(), "sizes": {}}
    with tempfile.TemporaryDirectory(prefix="magnet-inference-") as tmp:
        if "llama.cpp" in engines:  # the trained models first: the figures that matter most
            if "bytes" in rows:
                results["parity"] = {name: parity(Path(tmp) / f"parity-{name}", constants, args)
                                     for name, constants in PARITY_MODELS.items()}
            if "bpe" in rows:
                results["parity_bpe"] = parity(Path(tmp) / "parity-template-bpe", {}, args,
                                               bpe=True)
        if "bytes" in rows:
            for i, size in enumerate(args.sizes.split(",")):
                # llama.cpp as a reader: its logits against ours, for the first size
                results["sizes"][size] = measure_size(size, Path(tmp) / size, None, engines,
                                                      args, check_logits=i == 0)
        if "bpe" in rows:
            from bitnet.data import load_corpus
            from bitnet.tokenizer import ensure_tokenizer, load_tokenizer

            tokenizer = load_tokenizer(ensure_tokenizer(CORPUS, BPE_SPEC))
            sample = load_corpus(CORPUS).val[: 2**20].tobytes()
            results["bytes_per_token_bpe"] = len(sample) / len(tokenizer.encode(sample))
            for size in args.bpe_sizes.split(","):
                name = f"{size} {BPE_SPEC}"
                results["sizes"][name] = measure_size(name, Path(tmp) / f"{size}-bpe", tokenizer,
                                                      engines, args, size=size)
    return results


def measure_size(name: str, base: Path, tokenizer, engines: list[str], args: argparse.Namespace,
                 *, size: str | None = None, check_logits: bool = False) -> dict:
    """One table row: a random checkpoint of `size` (default: `name`) over bytes or
    `tokenizer`, exported, and each engine's best of --repeats runs."""
    from bitnet.export_gguf import export_gguf
    from bitnet.export_hf import export_hf, summarize_hf_export

    checkpoint = make_checkpoint(size or name, base / "checkpoint", tokenizer)
    exports = base / "exports"
    export_hf(checkpoint, exports / "hf")
    export_gguf(checkpoint, exports / "model.gguf")
    summary = summarize_hf_export(exports / "hf")
    row: dict = {"tokenizer": "bytes" if tokenizer is None else tokenizer.spec,
                 "vocab_size": 256 if tokenizer is None else tokenizer.vocab_size,
                 "bytes_per_param": summary.bytes_per_param,
                 "export_bytes": sum(t.nbytes for t in summary.tensors)}
    for engine in engines:
        runs = [run_engine(engine, checkpoint, exports, args) for _ in range(args.repeats)]
        row[engine] = {"tokens_per_s": max(r["tokens_per_s"] for r in runs),
                       "rss_mb": statistics.median(r["rss_mb"] for r in runs),
                       "weight_bytes": runs[0]["weight_bytes"]}
        print(f"{name} {engine}: {row[engine]['tokens_per_s']:.1f} tokens/s, "
              f"{row[engine]['rss_mb']:.0f} MB", flush=True)
    if check_logits and "llama.cpp" in engines:
        from llamacpp_check import check

        check(checkpoint, exports / "check.gguf", show_table=False)
    return row


def parity(work: Path, constants: dict, args: argparse.Namespace, *, bpe: bool = False) -> dict:
    """Train the template (silu, tied, `constants`; over BPE_SPEC when `bpe`) and compare
    llama.cpp with ours on it."""
    from ffn_act import train, variant_template

    from bitnet.checkpoint import load_checkpoint
    from bitnet.data import load_corpus
    from bitnet.evaluate import evaluate_bpb
    from bitnet.export_gguf import export_gguf
    from bitnet.generate import generate
    from bitnet.infer import InferenceModel
    from bitnet.llamacpp import LlamaCppModel, llamacpp_bpb
    from bitnet.tokenizer import ensure_tokenizer, load_tokenizer

    corpus = load_corpus(CORPUS)
    if bpe:  # the template reads TOKENIZER, and MAGNET_TOKENIZER for the folder it is trained in
        constants = {**constants, "TOKENIZER": BPE_SPEC}
        os.environ["MAGNET_TOKENIZER"] = str(ensure_tokenizer(CORPUS, BPE_SPEC))
    code = variant_template(work / "code", "silu", True, **constants)
    out = work / "checkpoint"
    try:
        metrics = train(code, out, corpus, 0, seed=1337, threads=1, steps=args.train_steps)
    finally:
        os.environ.pop("MAGNET_TOKENIZER", None)
    model, tokenizer = load_checkpoint(out), load_tokenizer(out)  # the bytes unless bpe
    seq_len = model.config.max_position_embeddings
    rows = export_gguf(out, work / "model.gguf")
    start = time.perf_counter()
    ours, n_bytes = evaluate_bpb(model, corpus.val, seq_len, tokenizer=tokenizer)
    ours_s, start = time.perf_counter() - start, time.perf_counter()
    llama, llama_bytes = llamacpp_bpb(work / "model.gguf", corpus.val, seq_len,
                                      tokenizer=tokenizer)
    llama_s = time.perf_counter() - start
    assert llama_bytes == n_bytes
    fast = InferenceModel.from_model(model)
    engine = LlamaCppModel(work / "model.gguf", seq_len, tokenizer=tokenizer)
    matched = prompts_equal = 0
    for prompt in PARITY_PROMPTS:
        a = generate(fast, prompt, max_new_tokens=PARITY_NEW, tokenizer=tokenizer).token_ids
        b = generate(engine, prompt, max_new_tokens=PARITY_NEW).token_ids
        same = next((i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y), PARITY_NEW)
        matched += same
        prompts_equal += same == PARITY_NEW
    engine.close()
    row = {"tokenizer": tokenizer.spec, "params": metrics["params"], "steps": metrics["steps"],
           "types": sorted({qtype for _, qtype, _ in rows}), "bpb_ours": ours,
           "bpb_llamacpp": llama, "bytes": n_bytes, "diff_pct": 100 * (llama - ours) / ours,
           "greedy_matched": matched, "greedy_total": PARITY_NEW * len(PARITY_PROMPTS),
           "prompts_all_equal": prompts_equal, "seconds_ours": ours_s, "seconds_llamacpp": llama_s}
    print(f"llama.cpp parity, {work.name.removeprefix('parity-')} model ({tokenizer.spec}, "
          f"{row['params']:,} "
          f"params, {row['steps']} steps, {'/'.join(row['types'])}): bits per byte ours "
          f"{ours:.4f}, llama.cpp {llama:.4f} ({row['diff_pct']:+.3f}%) on {n_bytes:,} bytes; "
          f"greedy tokens equal before the first difference {matched}/{row['greedy_total']}",
          flush=True)
    return row


def report(results: dict, args: argparse.Namespace) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"batch-1 decoding: {args.new} new tokens after {args.prompt}, "
                        f"{args.threads} threads")
    for column in ("model", "engine", "tokens/s", "text bytes/s", "ours is", "RSS MB",
                   "bytes/param"):
        table.add_column(column, justify="left" if column in ("model", "engine") else "right")
    for size, row in results["sizes"].items():
        ours = row["ours"]["tokens_per_s"]
        per_token = _bytes_per_token(results, row)
        for engine in ENGINES:
            if engine in row:
                speed = row[engine]["tokens_per_s"]
                table.add_row(size, engine, f"{speed:.1f}", f"{speed * per_token:.0f}",
                              f"{ours / speed:.2f}x as fast", f"{row[engine]['rss_mb']:.0f}",
                              f"{row['bytes_per_param']:.3f}" if engine == "ours" else "")
    Console().print(table)
    if "bytes_per_token_bpe" in results:
        print(f"{BPE_SPEC} on {CORPUS}'s validation split: "
              f"{results['bytes_per_token_bpe']:.2f} bytes per token (text bytes/s = tokens/s x "
              "that)")
    line = "RESULT"
    byte_rows = [r for r in results["sizes"].values() if r.get("tokenizer", "bytes") == "bytes"]
    if byte_rows:
        big = byte_rows[-1]
        ours = big["ours"]["tokens_per_s"]
        bandwidth = results["bandwidth"]
        for what, nbytes in (("ours (int8 codes)", big["ours"]["weight_bytes"]),
                             ("2-bit packed (the hf export)", big["export_bytes"])):
            bound = bandwidth / nbytes  # every weight is read once per decoded token
            print(f"memory-bandwidth bound, {what}: {nbytes / 2**20:.0f} MB per token at "
                  f"{bandwidth / 1e9:.1f} GB/s = {bound:.0f} tokens/s; ours reaches "
                  f"{100 * ours / bound:.0f}%")
        line += _speeds(big, "")
    if "parity" in results:
        template, wide = results["parity"]["template"], results["parity"]["256-wide"]
        matched = sum(r["greedy_matched"] for r in results["parity"].values())
        total = sum(r["greedy_total"] for r in results["parity"].values())
        line += (f" llamacpp_bpb_diff_pct={template['diff_pct']:.3f}"
                 f" llamacpp_bpb_diff_pct_tq2={wide['diff_pct']:.3f}"
                 f" llamacpp_greedy_match={matched}/{total}")
    bpe_rows = [r for r in results["sizes"].values() if r.get("tokenizer", "bytes") != "bytes"]
    if bpe_rows:
        big = bpe_rows[-1]
        line += _speeds(big, "_bpe")
        line += (" text_bytes_per_s_bpe="
                 f"{big['ours']['tokens_per_s'] * results['bytes_per_token_bpe']:.0f}")
    if "parity_bpe" in results:
        bpe = results["parity_bpe"]
        line += (f" llamacpp_bpb_diff_pct_bpe={bpe['diff_pct']:.3f}"
                 f" llamacpp_greedy_match_bpe={bpe['greedy_matched']}/{bpe['greedy_total']}")
    shown = merge_saved(results, args)
    plot(shown, args)
    Path(__file__).with_suffix(".json").write_text(json.dumps(shown, indent=1))
    print(line)


def _bytes_per_token(results: dict, row: dict) -> float:
    return 1.0 if row.get("tokenizer", "bytes") == "bytes" else results["bytes_per_token_bpe"]


def _speeds(row: dict, suffix: str) -> str:
    """The RESULT keys of one row: our speed over the other engines', bytes per parameter."""
    ours = row["ours"]["tokens_per_s"]
    keys = (f" speedup_vs_dense{suffix}={ours / row['dense fp32']['tokens_per_s']:.2f}"
            f" speedup_vs_hf{suffix}={ours / row['hf bitnet']['tokens_per_s']:.2f}"
            f" bytes_per_param{suffix}={row['bytes_per_param']:.3f}")
    if "llama.cpp" in row:
        keys += f" speedup_vs_llamacpp{suffix}={ours / row['llama.cpp']['tokens_per_s']:.2f}"
    return keys


def plot(results: dict, args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = list(results["sizes"])
    engines = [e for e in ENGINES if all(e in results["sizes"][s] for s in sizes)]
    fig, ax = plt.subplots(figsize=(max(7, 2 * len(sizes)), 4), dpi=110)
    width = 0.8 / len(engines)
    for i, engine in enumerate(engines):
        speeds = [results["sizes"][s][engine]["tokens_per_s"] for s in sizes]
        ax.bar([x + i * width for x in range(len(sizes))], speeds, width, label=engine)
    ax.set_xticks([x + width * (len(engines) - 1) / 2 for x in range(len(sizes))], sizes)
    ax.set_yscale("log")  # the engines span three orders of magnitude
    ax.set_ylabel("tokens/s (batch 1, log scale, higher is better)")
    ax.set_title(f"{args.new} new tokens after a {args.prompt}-token prompt")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(Path(__file__).with_suffix(".png"))
    plt.close(fig)


if __name__ == "__main__":
    main()
