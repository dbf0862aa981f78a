"""`magnet-agent repl [RUN|GOAL.md]`: steer and review a run interactively.

The REPL is agent.repl.session; it talks to a run only through the run's directory, so it
attaches to live and finished runs alike. This module parses and reports refusals.
"""

from __future__ import annotations

import argparse

from agent.cli import options
from agent.cli.errors import fail, git_failure
from agent.goal.vocab import PLANNER_NAMES

COMMANDS = ("repl",)
RUN_OPTIONS = ("planner", "model", "experiments")  # passed on to a run the REPL starts


def add_commands(commands: options.Subparsers) -> None:
    repl = commands.add_parser("repl", help="steer and review a run interactively")
    repl.add_argument("run", nargs="?",
                      help="run id or directory (default: the newest run), or a GOAL.md to "
                           "start a run in the background")
    repl.add_argument("--planner", choices=PLANNER_NAMES,
                      help="for a new run: override the goal's planner")
    repl.add_argument("--model", help="for a new run: model name (openai) or path (local)")
    repl.add_argument("--experiments", type=int, help="for a new run: the experiment budget")
    options.unconfined(repl)
    options.runs_dir(repl)


def main(args: argparse.Namespace) -> int:
    """The REPL's exit status; 2 with one line when the run cannot be found or read."""
    from agent.repl.session import attach
    from agent.rundir.runs import RunError
    from sandbox.errors import GitError

    if args.experiments is not None and args.experiments < 1:
        return fail("--experiments must be at least 1")
    run_args = [f"--{name}={value}" for name in RUN_OPTIONS
                if (value := getattr(args, name)) is not None]
    run_args += ["--unconfined"] if args.unconfined else []
    try:
        return attach(args.run, args.runs_dir, run_args)
    except RunError as err:
        return fail(str(err))
    except GitError as err:
        return fail(git_failure(err))
