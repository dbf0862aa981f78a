"""Approval in the REPL: which proposal to ask about, and the yes / no / edit dialog.

The run writes `approval.json` while a proposal waits (agent.rundir.control); the watcher thread
`notice()`s it, the main thread `take()`s it and asks. A proposal answered or put off here is
not asked about again by itself (`answer` asks again); one answered elsewhere ends the dialog.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from rich.text import Text

from agent.repl.terminal import WAKE, Terminal
from agent.review.detail import diff_text
from agent.rundir import control
from agent.text import text_problem

Request = dict[str, Any]  # approval.json: exp, hypothesis, rationale, diff


class Approvals:
    def __init__(self, run_dir: Path, terminal: Terminal) -> None:
        self.run_dir = run_dir
        self.terminal = terminal
        self._lock = threading.Lock()
        self._pending: Request | None = None  # a request to ask about
        self._handling: int | None = None  # the experiment being asked about
        self._settled: set[int] = set()  # answered or put off: not asked again by itself

    def notice(self, request: Request | None) -> bool:
        """The watcher saw `request` (None: nothing waits); True when the prompt must wake,
        to ask about it or to end a dialog about a proposal that no longer waits."""
        with self._lock:
            handling = self._handling
            if (request is not None and self._pending is None and handling is None
                    and request["exp"] not in self._settled):
                self._pending = request
            return self._pending is not None or (
                handling is not None and (request is None or request["exp"] != handling))

    def ask_again(self, request: Request) -> None:
        """`answer`: ask about `request` at the next prompt, even if it was put off."""
        with self._lock:
            self._settled.discard(request["exp"])
            self._pending = request

    def take(self) -> Request | None:
        """The request to ask about now, if any (the main thread, between commands)."""
        with self._lock:
            request, self._pending = self._pending, None
            self._handling = request["exp"] if request is not None else None
        return request

    def ask(self, request: Request) -> None:
        """Show the proposal, ask, and send the answer to the run."""
        exp = request["exp"]
        say = self.terminal.say
        say(Text(f"exp {exp:03d} waits for your approval", "bold yellow"))
        say(Text.assemble(("hypothesis: ", "bold"), str(request.get("hypothesis", ""))))
        if request.get("rationale"):
            say(Text.assemble(("rationale: ", "bold"), str(request["rationale"])))
        say(diff_text(request.get("diff") or "(the proposal changes nothing)"))
        try:
            decision = self._decision(exp)
        finally:
            with self._lock:
                self._settled.add(exp)
                self._handling = None
        if decision is None:
            return
        control.send(self.run_dir, {"cmd": "answer", "exp": exp, **decision})
        say({"yes": f"approved: exp {exp:03d} runs",
             "no": f"rejected: exp {exp:03d} is reverted unrun and recorded as rejected",
             "edit": f"approved with your hypothesis: exp {exp:03d} runs"}
            [decision["decision"]])

    def _decision(self, exp: int) -> dict[str, Any] | None:
        """yes / no / edit (with the new hypothesis); None when put off or no longer asked."""
        prompt, say, error = self.terminal.prompt, self.terminal.say, self.terminal.error
        while True:
            try:
                answer = prompt("answer", "run it? yes / no / edit> ").strip().lower()
                if answer in ("e", "edit"):
                    hypothesis = prompt("answer", "new hypothesis (empty: back)> ").strip()
                    if hypothesis == WAKE:
                        answer = WAKE
                    elif hypothesis and (problem := text_problem(hypothesis, one_line=True)):
                        error(f"the hypothesis {problem}; type one line of plain text")
                        continue
                    elif hypothesis:
                        return {"decision": "edit", "hypothesis": hypothesis}
                    else:
                        continue
            except (KeyboardInterrupt, EOFError):
                say(f"exp {exp:03d} still waits; `answer` decides it later")
                return None
            if answer == WAKE:
                request = control.read_approval(self.run_dir)
                if request is not None and request.get("exp") == exp:
                    continue  # a stray wake-up
                say(f"exp {exp:03d} no longer waits (answered elsewhere, approval turned "
                    "off, or the run stopped)")
                return None
            if answer in ("y", "yes", "n", "no"):
                return {"decision": "yes" if answer.startswith("y") else "no"}
            error(f"{answer!r} is not an answer; type yes, no or edit (Ctrl-C decides later)")
