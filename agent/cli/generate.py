"""`magnet-agent generate RUN|CHECKPOINT --prompt TEXT`: stream text from a trained model.

Batch 1 on the CPU with bitnet.generate (ternary weights as int8 codes, integer matmuls, a KV
cache; `--engine llama.cpp`: the model's GGUF export in llama-cpp-python, same sampling), one
thread: decoding is memory-bound, and a second thread that shares a busy core
stalls every matmul (bitnet.generate explains). `--json` prints the result instead.
"""

from __future__ import annotations

import argparse
import json
import sys

from agent.cli import options
from agent.cli.errors import fail, first_line

COMMANDS = ("generate",)
THREADS = 1
ENGINES = ("ours", "llama.cpp")


def add_commands(commands: options.Subparsers) -> None:
    generate = commands.add_parser("generate", help="generate text with a trained model")
    generate.add_argument("checkpoint", metavar="RUN|RUN:EXP|CHECKPOINT")
    generate.add_argument("--prompt", required=True)
    generate.add_argument("--max-new-tokens", type=int, default=200)
    generate.add_argument("--temperature", type=float, default=0.8, help="0: greedy")
    generate.add_argument("--top-k", type=int, default=0, help="0: off")
    generate.add_argument("--top-p", type=float, default=1.0)
    generate.add_argument("--seed", type=int, default=0)
    generate.add_argument("--engine", choices=ENGINES, default="ours",
                          help="ours: int8 ternary kernels in PyTorch; llama.cpp: the GGUF export "
                               "in llama-cpp-python (`make llama-cpp`; a SiLU, tied model)")
    options.json_flag(generate, "{text, prompt_tokens, new_tokens, tokens_per_s, ...}")
    options.runs_dir(generate)


def main(args: argparse.Namespace) -> int:
    """0 when generated; 2 with one line when the reference, checkpoint or a value is refused."""
    if refused := _refused_setting(args):  # before torch is imported: two seconds of a core
        return fail(refused)
    from agent.rundir.runs import RunError
    from bitnet.checkpoint import CheckpointError

    try:
        return generate(args)
    except (RunError, CheckpointError, ValueError) as err:
        return fail(first_line(err))


def _refused_setting(args: argparse.Namespace) -> str | None:
    if args.max_new_tokens < 1:
        return "--max-new-tokens must be at least 1"
    if not 0 <= args.temperature <= 100 or not 0 < args.top_p <= 1 or args.top_k < 0:
        return "--temperature takes 0 (greedy) to 100, --top-p (0, 1], --top-k 0 (off) or more"
    return None


def generate(args: argparse.Namespace) -> int:
    """Generate and print (streamed, or one JSON document); raises RunError, CheckpointError or
    ValueError (one line each) for what cannot be loaded or sampled."""
    from agent.rundir.checkpoint_ref import resolve_checkpoint
    from bitnet.generate import generate as run
    from bitnet.infer import load_for_inference

    if refused := _refused_setting(args):
        raise ValueError(refused)
    checkpoint = resolve_checkpoint(args.checkpoint, args.runs_dir)
    if args.engine == "llama.cpp":  # LlamaCppError (a ValueError): not installed, or cannot run it
        from bitnet.llamacpp import from_checkpoint

        model = from_checkpoint(checkpoint, n_threads=THREADS)
    else:
        model = load_for_inference(checkpoint)
    stream = None if args.json else _print
    if stream is not None:
        _print(args.prompt)
    result = run(model, args.prompt, max_new_tokens=args.max_new_tokens,
                 temperature=args.temperature, top_k=args.top_k or None,
                 top_p=args.top_p if args.top_p < 1 else None, seed=args.seed,
                 on_token=stream, threads=THREADS)  # with the tokenizer the model carries
    if args.json:
        print(json.dumps({"text": result.text, "prompt": args.prompt,
                          "prompt_tokens": result.prompt_tokens, "new_tokens": result.new_tokens,
                          "prompt_truncated": result.prompt_truncated, "seed": result.seed,
                          "tokens_per_s": round(result.tokens_per_s, 1),
                          "seconds": round(result.seconds, 3)}))
    else:
        print(f"\n[{result.new_tokens} tokens, {result.tokens_per_s:.0f} tokens/s]",
              file=sys.stderr)
    return 0


def _print(piece: str) -> None:
    sys.stdout.write(piece)
    sys.stdout.flush()
