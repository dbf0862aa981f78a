"""`magnet-agent tokenizer train`: a byte-level BPE trained on a corpus's training split.

    magnet-agent tokenizer train --corpus portable-prose --vocab 4096

Trains it once (bitnet.tokenizer.train_tokenizer: stored with its fingerprint and the training
split encoded, beside the corpus cache) and says where; a second call finds it. Experiments get
it through the template's `TOKENIZER = "bpe:4096"` (`magnet-agent train --tokenizer bpe:4096`
sets that), which trains it the same way when it is missing.
"""

from __future__ import annotations

import argparse
import json

from agent.cli import options
from agent.cli.errors import fail

COMMANDS = ("tokenizer",)


def add_commands(commands: options.Subparsers) -> None:
    tokenizer = commands.add_parser(
        "tokenizer", help="train a byte-level BPE tokenizer on a corpus's training split")
    actions = tokenizer.add_subparsers(dest="action", required=True)
    train = actions.add_parser("train", help="train it (once) and print where it is stored")
    train.add_argument("--corpus", help="pycode | pyprose | portable-code | portable-prose | "
                                        "text:PATH (default: the scorer's default corpus)")
    train.add_argument("--vocab", type=int, required=True, metavar="N",
                       help="entries: 256 bytes plus N-256 merges (512 to 65536)")
    options.json_flag(train, "the stored tokenizer's meta.json, with its folder")


def main(args: argparse.Namespace) -> int:
    """0 when the tokenizer is stored, 2 when it cannot be made."""
    from rich.console import Console

    from agent.rundir.runs import RunError
    from agent.scoring.run_tokenizer import describe, ensure_shown
    from agent.scoring.scorer import DEFAULT_CORPUS
    from bitnet.tokenizer import TokenizerError, canonical_spec, read_meta

    corpus = DEFAULT_CORPUS if args.corpus is None else args.corpus
    try:
        spec = canonical_spec(f"bpe:{args.vocab}")
    except TokenizerError as err:
        return fail(f"--vocab: {err}")
    console = Console(stderr=args.json)
    try:
        folder = ensure_shown(corpus, spec, console)
    except RunError as err:
        return fail(str(err))
    assert folder is not None
    if args.json:
        print(json.dumps({**(read_meta(folder) or {}), "folder": str(folder)}, indent=2))
    else:
        console.print(describe(folder), soft_wrap=True, highlight=False)
    return 0
