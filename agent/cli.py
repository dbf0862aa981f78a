"""The `magnet-agent` command line."""

from __future__ import annotations

import argparse
import sys
from importlib.metadata import PackageNotFoundError, version


def _version() -> str:
    try:
        return version("magnet-agent")
    except PackageNotFoundError:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="magnet-agent",
        description="MAGNET: an LLM that runs ML research on its own, on ordinary CPUs.",
    )
    parser.add_argument("--version", action="version", version=f"magnet-agent {_version()}")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="one time-budgeted training run of a template")
    train.add_argument("--template", default="bitnet-lm")
    train.add_argument("--corpus", default="pycode", help="pycode | pyprose | text:PATH")
    train.add_argument("--budget", type=float, default=60.0, help="training seconds")
    train.add_argument("--seed", type=int, default=1337)
    train.add_argument("--runs-dir", help="where runs go (default ./runs or MAGNET_RUNS_DIR)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "train":
        from agent.train_command import train

        if args.budget <= 0:
            print("magnet-agent: error: --budget must be a positive number of seconds",
                  file=sys.stderr)
            return 2
        return train(args.template, args.corpus, args.budget, args.seed, args.runs_dir)
    return 2


if __name__ == "__main__":
    sys.exit(main())
