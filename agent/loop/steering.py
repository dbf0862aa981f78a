"""A person steering a live run: the commands of control.jsonl applied to the state, the pause
before the next experiment, and the approval of a proposal before it runs.

The REPL (or a script) talks to a run only through its directory (agent.rundir.control:
control.jsonl in, approval.json and status.json out), so a REPL in another terminal can attach,
and one that dies never harms the run. Waiting for a person therefore cannot be a call into the
graph from outside; it is LangGraph's `interrupt()` resumed by the run's own driver:

- a node that must wait (`plan` while paused, `approve` until the answer) applies the new
  control lines, writes status.json (and approval.json), and returns with `waiting` set, so the
  router sends it back to itself; a visit with nothing to change in the state calls `interrupt()`;
- the driver (agent.loop.launch) then blocks in `wait_for_command` until control.jsonl grows
  past the checkpointed `control_seen`, and resumes the graph with `Command(resume=True)`: the
  node runs again and reads what came;
- the interrupt is checkpointed, so a run killed while it waits resumes waiting, and a command
  is applied once, on the visit that reads it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from langgraph.types import interrupt

from agent.loop.runtime import Runtime
from agent.loop.state import RunState
from agent.rundir import control

PAUSED, APPROVAL = "paused", "approval"  # what a waiting node waits for (RunState.waiting)
CONTROL_POLL_SECONDS = 0.3


def steer(rt: Runtime, state: RunState) -> dict[str, Any]:
    """Apply the person's new commands from control.jsonl."""
    commands, seen = control.read_new(rt.run_dir, state["control_seen"])
    return {**apply_commands(rt, state, commands), "control_seen": seen}


def answer(rt: Runtime, state: RunState, exp: int) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """The answer to experiment `exp`'s approval request, if it came (a stop answers no, approval
    turned off answers yes), and the update of the commands before it; the commands after it are
    left for later nodes."""
    commands, seen = control.read_new(rt.run_dir, state["control_seen"])
    reply = next((c for c in commands if c["cmd"] == "answer" and c.get("exp") == exp), None)
    if reply is not None:
        commands = commands[: commands.index(reply)]
        seen = reply["line"]
    update = {**apply_commands(rt, state, commands), "control_seen": seen}
    now = {**state, **update}
    if reply is None and (now["stop_requested"] or not now["approve"]):
        reply = {"decision": "no" if now["stop_requested"] else "yes"}
    return reply, update


def hold(state: RunState, update: dict[str, Any], what: str) -> dict[str, Any]:
    """The update of a node that waits for `what`: back to the same node, which interrupts the
    graph there once a visit has nothing to change in the state (an interrupted visit's update
    is never checkpointed: new commands, or an experiment renumbered after a crash, are
    returned first). The driver resumes it when control.jsonl grows."""
    held = {**update, "waiting": what}
    if all(state.get(key) == value for key, value in held.items()):
        interrupt({"waiting": what})  # returns only on the visit the driver resumes
    return held


def wait_for_command(run_dir: Path, seen: int, on_poll: Callable[[], None]) -> None:
    """The driver's wait while the graph is interrupted: until control.jsonl holds a line after
    the first `seen`. `on_poll` keeps status.json current meanwhile."""
    while control.read_new(run_dir, seen)[1] == seen:
        on_poll()
        time.sleep(CONTROL_POLL_SECONDS)


def apply_commands(rt: Runtime, state: RunState, commands: list[dict[str, Any]]) -> dict[str, Any]:
    update: dict[str, Any] = {}
    hints = list(state["hints"])
    for c in commands:
        match c["cmd"]:
            case "hint":
                hints.append(str(c["text"]).strip())
                rt.view.message(f"hint received: {hints[-1]}")
            case "pause" | "resume":
                update["paused"] = c["cmd"] == "pause"
                rt.view.message(f"{c['cmd']}d by a person")
            case "stop":
                update["stop_requested"] = True
                rt.view.message("stop requested: finishing")
            case "budget":
                key = "budget_experiments" if c["what"] == "experiments" else "budget_wall"
                update[key] = int(c["value"]) if key == "budget_experiments" else c["value"]
                rt.view.message(f"budget {c['what']} set to {c['value']}")
            case "approve":
                update["approve"] = bool(c["on"])
                rt.view.message(f"approval {'on' if c['on'] else 'off'}")
    if hints != state["hints"]:
        update["hints"] = hints
    return update
