"""How every `magnet-agent` command reports a refusal: one line on stderr, and an exit status."""

from __future__ import annotations

import sys

USAGE = 2  # bad input or a refusal: argparse's own status for a usage error


def fail(message: str, status: int = USAGE) -> int:
    """Print `magnet-agent: error: MESSAGE` on stderr and return `status` for main to exit with."""
    print(f"magnet-agent: error: {message}", file=sys.stderr)
    return status


def first_line(err: BaseException) -> str:
    """An exception in one line: its message's first line, or its type when it has none."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def git_failure(err: Exception) -> str:
    """The line for a run whose git store cannot answer (sandbox.errors.GitError)."""
    return f"git could not answer ({err}); is the run's workspace.git/ intact?"
