"""What a run is doing now, in a few lines (`status` in the REPL, and on attaching)."""

from __future__ import annotations

from rich.console import Group
from rich.text import Text

from agent.review.run import LIVE_STATES, Run
from agent.rundir import ranking
from agent.rundir.held_out import held_out
from agent.rundir.records import tokens_of


def status_view(run: Run) -> Group:
    status = run.status() or {}
    records = run.records()
    state = run.state()
    budget = status.get("budget") or {}
    lines = [Text.assemble((run.id, "bold"), f"  {state}",
                           f" ({run.stop_reason()})" if state in ("finished", "stopped") else "")]
    if status.get("exp") is not None and state in LIVE_STATES:
        lines.append(Text(f"exp {status['exp']:03d} {state}: {status.get('hypothesis') or ''}"))
    lines.append(Text(
        f"experiments {len(ranking.experiments(records))}/{budget.get('experiments', '?')}  "
        f"wall {status.get('wall_seconds', 0):.0f}s/{budget.get('wall', 0):.0f}s  "
        f"approval {'on' if status.get('approve') else 'off'}  "
        f"tokens {status.get('tokens', sum(tokens_of(r) for r in records)):,}"))
    lines.append(Text(f"{run.metric} ({run.goal}): {ranking.verdict(records, run.goal)}"))
    lines.append(Text(held_out(records, run.goal).line()))
    if state == "interrupted":
        lines.append(Text(f"nothing runs it; continue with `magnet-agent resume {run.id}`",
                          "yellow"))
    return Group(*lines)
