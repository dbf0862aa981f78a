"""The REPL's commands: their usage and summary (for `help`), aliases, and what each one's
arguments complete to (Tab)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prompt_toolkit.completion import CompleteEvent, Completer, Completion
from prompt_toolkit.document import Document

from agent.rundir.control import BUDGET_LIMITS

COMMANDS: dict[str, tuple[str, str]] = {
    "status": ("status", "what the run is doing: state, experiment in flight, budget, best"),
    "history": ("history [N]", "the experiments so far, or the last N"),
    "show": ("show EXP", "one experiment (7 or 007): hypothesis, rationale, diff, metrics, log; "
                         "or a tool call (tool:3)"),
    "best": ("best", "the best kept experiment"),
    "diff": ("diff A B", "the code of experiment B against that of experiment A"),
    "plot": ("plot", "the metric per experiment in the terminal; also rewrites progress.png"),
    "hint": ("hint TEXT", "a hint for the next proposal; it is kept in that experiment's record"),
    "pause": ("pause", "hold the run before its next experiment"),
    "resume": ("resume", "let a paused run go on"),
    "stop": ("stop", "finish the run after the current experiment"),
    "budget": ("budget experiments|wall N",
               "change the budget: experiments N, or wall N seconds (also 30m, 2h)"),
    "approve": ("approve on|off",
                "on: each proposal waits for your yes / no / edit before it runs"),
    "answer": ("answer", "answer the proposal that waits for approval"),
    "help": ("help [COMMAND]", "the commands, or one command's usage"),
    "quit": ("quit", "leave the REPL; the run goes on (also exit, Ctrl-D)"),
}
ALIASES = {"exit": "quit", "q": "quit", "?": "help"}
BUDGETS = tuple(BUDGET_LIMITS)  # what `budget` changes: experiments, wall


def command_name(word: str) -> str:
    """The command a typed word means (aliases resolved); it may name none."""
    return ALIASES.get(word.lower(), word.lower())


class CommandCompleter(Completer):
    """Commands, then their arguments: experiments, on/off, experiments/wall."""

    def __init__(self, exps: Callable[[], list[int]]) -> None:
        self.exps = exps

    def get_completions(self, document: Document,
                        complete_event: CompleteEvent) -> Iterator[Completion]:
        text = document.text_before_cursor
        words = text.split()
        current = "" if not words or text.endswith(" ") else words[-1]
        position = len(words) - (1 if current else 0)  # index of the word being completed
        if position == 0:
            options = [*COMMANDS, *ALIASES]
        else:
            options = self._arguments(words[0].lower(), position)
        for option in options:
            if option.startswith(current.lower()):
                yield Completion(option, start_position=-len(current))

    def _arguments(self, command: str, position: int) -> list[str]:
        if position == 1 and command == "budget":
            return list(BUDGETS)
        if position == 1 and command == "approve":
            return ["on", "off"]
        if position == 1 and command == "help":
            return list(COMMANDS)
        if (command == "show" and position == 1) or (command == "diff" and position in (1, 2)):
            return [f"{exp:03d}" for exp in self.exps()]
        return []
