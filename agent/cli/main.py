"""The `magnet-agent` command line: the parser built from one module per command, and dispatch.

Each command module in agent/cli/ names its `COMMANDS`, registers them (`add_commands`) and runs
one (`main(args) -> exit status`); it parses and prints only. At import they load argparse and
rich alone (torch and the rest when a command runs), so `magnet-agent --help` starts fast.
"""

from __future__ import annotations

import argparse
from importlib.metadata import PackageNotFoundError, version
from types import ModuleType
from typing import NoReturn

from agent.cli import (
    diloco,
    export,
    generate,
    generate_data,
    ledger,
    merge,
    repl,
    review,
    run,
    tokenizer,
    train,
)
from agent.cli.fast_exit import run_and_exit

# in the order `--help` lists them
COMMAND_MODULES: tuple[ModuleType, ...] = (run, train, tokenizer, export, generate, merge, diloco,
                                            ledger, generate_data, repl, review)


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
    for module in COMMAND_MODULES:
        module.add_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    module = next(m for m in COMMAND_MODULES if args.command in m.COMMANDS)
    return module.main(args)


def entry() -> NoReturn:
    """The `magnet-agent` program: main(), then its exit without the interpreter's teardown
    (agent.cli.fast_exit)."""
    run_and_exit(main)


if __name__ == "__main__":  # `python -m agent.cli.main`, as `python -m agent.cli`
    entry()
