"""Options several commands share, spelt once: --runs-dir, --unconfined, --json, run names."""

from __future__ import annotations

import argparse
import re

Subparsers = argparse._SubParsersAction  # what each command module registers itself on


def runs_dir(command: argparse.ArgumentParser) -> None:
    command.add_argument("--runs-dir", help="where runs are (default ./runs or MAGNET_RUNS_DIR)")


def unconfined(command: argparse.ArgumentParser) -> None:
    command.add_argument("--unconfined", action="store_true",
                         help="run experiment code without bubblewrap, with your full rights "
                              "(records and report say so); only where bwrap cannot run")


def json_flag(command: argparse.ArgumentParser, what: str) -> None:
    command.add_argument("--json", action="store_true", help=f"print one JSON document: {what}")


def run_name(text: str) -> str:
    """An argparse type: a name run ids may start with (agent.goal.spec.RUN_NAME)."""
    from agent.goal.spec import RUN_NAME

    if not re.match(RUN_NAME, text) or len(text) > 64:
        raise argparse.ArgumentTypeError(f"{text!r} is not a run name; use letters, digits, "
                                         "'.', '_' and '-'")
    return text
