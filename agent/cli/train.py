"""`magnet-agent train`: one time-budgeted training run of a template, as an experiment runs.

The run itself (run directory, sandbox, scoring, its progress and table) is
agent.loop.train_once; this module parses and reports refusals.
"""

from __future__ import annotations

import argparse
import sys

from agent.cli import options
from agent.cli.errors import fail

COMMANDS = ("train",)


def add_commands(commands: options.Subparsers) -> None:
    train = commands.add_parser(
        "train", help="one time-budgeted training run of a template, run as an experiment is "
                      "(same sandbox environment and limits) into a run directory under runs/")
    train.add_argument("--template", default="bitnet-lm")
    # default None: the scorer's DEFAULT_CORPUS, read when the command runs (it imports pydantic)
    train.add_argument("--corpus",
                       help="pycode | pyprose | portable-code | portable-prose | text:PATH")
    train.add_argument("--budget", type=float, default=60.0, help="training seconds")
    train.add_argument("--seed", type=int, default=1337)
    train.add_argument("--name", default="train", type=options.run_name,
                       help="run ids are NAME-YYYYmmdd-HHMMSS; `init: NAME`, `--init NAME` and "
                            "`merge: {with: NAME}` then mean the newest such run")
    train.add_argument("--init", metavar="RUN|RUN:EXP|CHECKPOINT",
                       help="start from this checkpoint instead of random weights: a specialist "
                            "of that base")
    train.add_argument("--preset", metavar="NAME",
                       help="a named model size (bitnet.presets: tiny ... genkidama-618m), set "
                            "as the template's PRESET constant")
    train.add_argument("--tokenizer", metavar="bytes|bpe:N",
                       help="the template's TOKENIZER: bytes, or a byte-level BPE of N entries "
                            "trained on the corpus's training split (first, if it is not yet)")
    options.unconfined(train)
    options.runs_dir(train)


def main(args: argparse.Namespace) -> int:
    """0 when the run reported its metric, 1 when training failed, 2 when it could not start."""
    from agent.goal.spec import GoalError
    from agent.loop.train_once import train
    from agent.rundir.runs import RunError
    from agent.scoring.scorer import DEFAULT_CORPUS
    from sandbox.errors import SandboxError

    if args.budget <= 0:
        return fail("--budget must be a positive number of seconds")
    corpus = DEFAULT_CORPUS if args.corpus is None else args.corpus
    if args.preset is not None:
        from bitnet.presets import preset

        try:
            preset(args.preset)
        except ValueError as err:
            return fail(f"--preset: {err}")
        if args.init is not None:
            return fail("--preset sets the model's shape, which --init takes from its checkpoint: "
                        "give one of them")
    if args.tokenizer is not None:
        from bitnet.tokenizer import TokenizerError, canonical_spec

        try:
            args.tokenizer = canonical_spec(args.tokenizer)
        except TokenizerError as err:
            return fail(f"--tokenizer: {err}")
    try:
        return train(args.template, corpus, args.budget, args.seed, args.runs_dir,
                     unconfined=args.unconfined, init=args.init, name=args.name,
                     preset=args.preset, tokenizer=args.tokenizer)
    except (GoalError, RunError, SandboxError) as err:
        return fail(str(err))
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
        return 130
