"""The REPL's terminal: prompts (prompt_toolkit, with history and completion, on a terminal;
plain `input()` lines for a script), output, and a prompt another thread may interrupt.

The watcher thread prints above the prompt (prompt_toolkit's patch_stdout) and, when a proposal
waits for approval, `wake()`s the prompt: it returns WAKE, and the main thread asks instead.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from prompt_toolkit import PromptSession
from prompt_toolkit.application import Application
from prompt_toolkit.history import FileHistory, History, InMemoryHistory
from prompt_toolkit.patch_stdout import patch_stdout
from rich.console import Console, RenderableType
from rich.text import Text

from agent.repl.commands import CommandCompleter

WAKE = "\x00wake"  # what an interrupted prompt returns


class Terminal:
    def __init__(self, console: Console | None, exps: Callable[[], list[int]]) -> None:
        self.console = console or Console(highlight=False)
        self.tty = sys.stdin.isatty() and sys.stdout.isatty()
        self.sessions: dict[str, PromptSession[str]] = {}
        if self.tty:  # without a terminal: plain input() lines (scripts)
            self.sessions = {
                "command": PromptSession(history=_history(), complete_while_typing=False,
                                         completer=CommandCompleter(exps)),
                "answer": PromptSession(),  # answers stay out of the command history
            }
        self._lock = threading.Lock()
        self._active: Application[Any] | None = None  # the prompt the watcher may interrupt

    def output_above_prompt(self) -> AbstractContextManager[Any]:
        """While it lasts, what other threads print goes above the prompt."""
        return patch_stdout(raw=True) if self.tty else contextlib.nullcontext()

    def prompt(self, kind: str, message: str, default: str = "") -> str:
        """A line typed at prompt `kind` (command | answer); WAKE when `wake()` interrupted it."""
        if not self.tty:
            return input(message)
        session = self.sessions[kind]
        with self._lock:
            self._active = session.app
        try:
            return session.prompt(message, default=default)
        finally:
            with self._lock:
                self._active = None

    def typed(self) -> str:
        """What was typed at the command prompt when it was interrupted."""
        return self.sessions["command"].default_buffer.text if self.tty else ""

    def wake(self) -> None:
        """Make the running prompt return WAKE (called from the watcher thread)."""
        with self._lock:
            app = self._active
        if app is None or app.loop is None:
            return

        def exit_prompt() -> None:
            if app.is_running and app.future is not None and not app.future.done():
                app.exit(result=WAKE)

        with contextlib.suppress(RuntimeError):  # the prompt's loop just closed: no prompt
            app.loop.call_soon_threadsafe(exit_prompt)

    def say(self, what: RenderableType) -> None:
        self.console.print(what, markup=False, highlight=False)

    def error(self, message: str) -> None:
        self.console.print(Text(message, "red"), markup=False, highlight=False)


def _history() -> History:
    """Command history shared by every REPL: ~/.cache/magnet/repl_history."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "magnet"
    try:
        cache.mkdir(parents=True, exist_ok=True)
        return FileHistory(str(cache / "repl_history"))
    except OSError:
        return InMemoryHistory()
