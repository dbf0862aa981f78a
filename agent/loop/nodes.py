"""The research loop's nodes. Each does one thing and returns a state update.

    baseline (x2) -> plan -> edit -> run -> judge -> keep | revert -> record -> plan ...
                         \\-> reflect (invalid reply)   judge -> run (confirm with another seed)
                         \\-> tool -> plan             failures: record -> reflect -> plan

`tool` runs what `plan` asked for: the planner's tool calls (their results go back into its
context; a per-experiment budget caps them), or, for planners that cannot choose tools, the
goal's explicit steps (a ledger claim after each kept improvement, a merge at the end).

An experiment's record is built once: `edit` drafts it from the workspace as it will run (edits,
knob values, diff hash and size, parent commit), `judge` adds the outcome, and keep/revert and
`record` write that same record as the git note, the experiments.jsonl line and what the
planner learns.

Side effects go through the sandbox workspace, whose journal makes each one durable and
recoverable; LangGraph checkpoints the state after every node. A node re-executed after a
crash therefore first asks the workspace what already happened (`_settled`).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from agent.goal.knob_values import read_knob_values
from agent.goal.spec import Goal
from agent.loop.decision import decide
from agent.loop.diagnosis import rule_based_diagnosis
from agent.loop.state import RunState
from agent.loop.view import RunView
from agent.planners.base import (
    ExperimentSummary,
    Failure,
    PlanContext,
    Planner,
    PlannerError,
    PlannerUnavailable,
    Proposal,
    ToolCall,
    ToolExchange,
    ToolRequest,
)
from agent.rundir import control, experiment_record, ranking
from agent.rundir.names import REPORT_FILE
from agent.rundir.records import RunRecords
from agent.rundir.tool_records import PLANNER, STEP, ToolCallRecord, ToolRecords
from agent.scoring.scorer import Scorer
from agent.tools.base import ToolContext
from agent.tools.registry import call_tool, for_planner, planner_specs
from sandbox.errors import EditError, SandboxError
from sandbox.workspace import Workspace

BASELINE = ("baseline", "baseline (repeat with another seed, to measure noise)")
MAX_PLANNER_FAILURES = 3
CONTROL_POLL_SECONDS = 0.3
FAILURE_LOG_LINES = 15


@dataclass
class Runtime:
    """What the nodes work with besides the state: not checkpointed, rebuilt on resume."""

    goal: Goal
    run_dir: Path
    workspace: Workspace
    planner: Planner
    records: RunRecords
    view: RunView
    scorer: Scorer  # runs the goal's command confined and scores it (agent.scoring.scorer)
    memory_limit_bytes: int | None = None
    unconfined: bool = False  # the run's --unconfined, for tools that run experiments (replay)
    session_start: float = field(default_factory=time.monotonic)
    session_base: float = 0.0  # wall seconds used before this session

    def wall_used(self) -> float:
        return self.session_base + time.monotonic() - self.session_start

    @property
    def tool_records(self) -> ToolRecords:
        return ToolRecords(self.run_dir)


class Nodes:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.ws = rt.workspace
        self.spec = rt.goal.spec

    # --- baseline ---------------------------------------------------------------------------

    def baseline(self, state: RunState) -> dict[str, Any]:
        """Run the unmodified code; twice (another seed the second time), to measure noise."""
        done = len(ranking.baseline_values(self.rt.records.read()))
        if done == len(BASELINE):  # recorded before a crash cut the checkpoint
            return {"baselines": done}
        hypothesis = BASELINE[done]
        self._status({**state, "proposal": {"hypothesis": hypothesis}}, "running")
        exp = self._begin(hypothesis)
        self.ws.commit()
        draft = self._draft({"hypothesis": hypothesis}, planner="none")
        result = self._run(repeat=done)
        metric = result["metrics"].get(self.spec.metric.name)
        outcome = self._outcome([result], metric, result["reason"])
        note = {**draft, **outcome}
        if result["status"] != "ok" or not ranking.is_finite(metric):
            status = result["status"] if result["status"] != "ok" else "no_metric"
            commit = self.ws.discard(exp, note, status=status)
            self._append({**note, "exp": exp, "status": status, "commit": commit})
            why = result["reason"] or f"no finite METRIC {self.spec.metric.name}"
            return {"stop_reason": f"the baseline {status} ({why}); fix the code first, see "
                                   f"{result['log_path']}"}
        self.ws.keep(exp, note, best=done == 0, status=ranking.BASELINE)
        self._append({**note, "exp": exp, "status": ranking.BASELINE,
                      "commit": self._commit_of(exp)})
        return {"baselines": done + 1, "wall_seconds": self.rt.wall_used()}

    # --- plan ---------------------------------------------------------------------------------

    def plan(self, state: RunState) -> dict[str, Any]:
        update = self._steer(state)
        while (state := {**state, **update})["paused"] and not state["stop_requested"]:
            self._status(state, "paused")
            time.sleep(CONTROL_POLL_SECONDS)
            update |= self._steer(state)
        if state["stop_requested"]:
            return {**update, "stop_reason": control.STOPPED_BY_A_PERSON}
        if stop := self._budget_exhausted(state):
            return {**update, "stop_reason": stop, "tool_request": self._steps_due(at_end=True)}
        if steps := self._steps_due(at_end=False):
            return {**update, "tool_request": steps}
        context = self._context(state)
        self._status(state, "planning")
        self.rt.view.message(f"planning with {self.rt.planner.name}…")
        try:
            proposal = self.rt.planner.propose(context)
        except PlannerUnavailable as err:  # a transport failure: nothing for the LLM to learn
            return {**update, "proposal": None, "planner_down": True,
                    "stop_reason": f"the planner failed: {err}"}
        except (PlannerError, ValidationError) as err:
            if isinstance(err, ValidationError):  # a planner built a proposal the schema refuses
                err = PlannerError(err.errors()[0]["msg"])
            failures = state["planner_failures"] + 1
            spent = getattr(err, "usage", None)  # failed replies cost tokens too
            update |= {
                "proposal": None, "planner_failures": failures,
                "failure": {"what": f"the planner gave no valid proposal: {err}"},
                "tokens": state["tokens"] + (spent.total_tokens if spent else 0)}
            if failures >= MAX_PLANNER_FAILURES:
                update["planner_down"] = True
                update["stop_reason"] = (f"{failures} planner replies in a row were invalid "
                                         f"(last: {err})")
            return update
        tokens = state["tokens"] + proposal.usage.total_tokens
        if isinstance(proposal, ToolRequest):
            return {**update, "tool_request": self._requested(state, proposal),
                    "planner_failures": 0, "tokens": tokens}
        # the failure and the hints have now entered a proposal's context: consumed
        return {**update, "proposal": {**_dump(proposal), "hints": state["hints"]},
                "planner_failures": 0, "tokens": tokens, "last_failure": None, "hints": []}

    # --- tool ---------------------------------------------------------------------------------

    def tool(self, state: RunState) -> dict[str, Any]:
        """Run the requested calls, in order; a call that already finished (before a crash) is
        not run again: its recorded result is used."""
        exchanges = list(state.get("tool_exchanges") or [])
        reply = 1 + max((x["reply"] for x in exchanges), default=0)
        self._status(state, "tool")  # a live state: `status` and the REPL show it
        for request in state["tool_request"] or []:
            record = self._call(request)
            self.rt.view.message(f"tool {record.summary()}")
            if request["by"] == PLANNER:
                exchanges.append({**request, "result": _for_planner(record), "reply": reply})
        return {"tool_request": None, "tool_exchanges": exchanges}

    def _call(self, request: dict[str, Any]) -> ToolCallRecord:
        records = self.rt.tool_records
        done = records.get(request["call"])
        if done is not None and done.finished:
            return done
        records.start(request["call"], self.ws.next_exp, request["tool"], request["args"],
                      request["by"])
        if "refused" in request:  # over the tool budget: recorded, never run
            return records.finish(request["call"], error=request["refused"], seconds=0.0)
        self.rt.view.message(f"tool #{request['call']} {request['tool']} running…")
        started = time.monotonic()
        ctx = ToolContext(run_dir=self.rt.run_dir, goal=self.rt.goal, workspace=self.ws.path,
                          call=request["call"], console=self.rt.view.console,
                          unconfined=self.rt.unconfined)
        outcome = call_tool(ctx, request["tool"], request["args"])
        return records.finish(request["call"], result=outcome.get("result"),
                              error=outcome.get("error"), seconds=time.monotonic() - started)

    def _requested(self, state: RunState, request: ToolRequest) -> list[dict[str, Any]]:
        """The planner's calls, numbered; those beyond this experiment's budget are refused."""
        first = self.rt.tool_records.next_call()
        left = self._tool_calls_left(state)
        calls = []
        for i, call in enumerate(request.tool_calls):
            entry = {"call": first + i, "id": call.id or f"call_{first + i}", "tool": call.name,
                     "args": call.arguments, "by": PLANNER}
            if i >= left:
                entry["refused"] = self._budget_spent()
            calls.append(entry)
        return calls

    def _budget_spent(self) -> str:
        return (f"the tool budget of {self.spec.budget.tool_calls} calls for this experiment is "
                "spent; reply with a proposal")

    def _tool_calls_left(self, state: RunState) -> int:
        return max(0, self.spec.budget.tool_calls - len(state.get("tool_exchanges") or []))

    def _steps_due(self, *, at_end: bool) -> list[dict[str, Any]] | None:
        """The goal's tool settings as explicit steps, for planners that cannot choose tools: a
        claim for each kept improvement not yet claimed, and (at the end) the merge. A step cut
        off by a crash is due again under its own number."""
        enabled = self.spec.tools
        if self.rt.planner.chooses_tools or not enabled:
            return None
        calls = [c for c in self.rt.tool_records.read() if c.by == STEP]
        wanted: list[tuple[str, dict[str, Any]]] = []
        if "record_contribution" in enabled:
            wanted += [("record_contribution", {"exp": r["exp"]})
                       for r in self.rt.records.read() if r.get("status") == ranking.KEEP]
        if at_end and "merge_specialists" in enabled:
            wanted.append(("merge_specialists", {}))
        due, fresh = [], self.rt.tool_records.next_call()
        for tool, args in wanted:
            same = [c for c in calls if c.tool == tool and c.args == args]
            if any(c.finished for c in same):
                continue
            number = same[0].call if same else fresh
            fresh += not same
            due.append({"call": number, "id": f"step_{number}", "tool": tool, "args": args,
                        "by": STEP})
        return due or None

    # --- edit ---------------------------------------------------------------------------------

    def edit(self, state: RunState) -> dict[str, Any]:
        proposal = state["proposal"]
        assert proposal is not None
        exp = self._begin(proposal["hypothesis"])
        update: dict[str, Any] = {"exp": exp, "experiments": state["experiments"] + 1,
                                  "results": [], "outcome": None, "decision": None,
                                  "tool_exchanges": []}
        try:
            return self._make(state, proposal, exp, update)
        except (SandboxError, ValueError) as err:
            # this experiment's input broke the workspace or git: its failure, not the run's
            return self._refused(update, self._draft(proposal, ran=False), "invalid_edit",
                                 f"exp {exp:03d}: the edit could not be made: {err}")

    def _make(self, state: RunState, proposal: dict[str, Any], exp: int,
              update: dict[str, Any]) -> dict[str, Any]:
        """Apply the proposal's edits and commit them, or refuse the experiment."""
        try:
            self.ws.apply(proposal["edits"])
        except EditError as err:
            # nothing changed (edits apply all or nothing): no code of its own to describe
            return self._refused(update, self._draft(proposal, ran=False), "invalid_edit",
                                 f"exp {exp:03d}: the edit did not apply: {err}")
        draft = self._draft(proposal)
        update["draft"] = draft
        if draft["diff_hash"] is None:
            return self._refused(update, draft, "invalid_edit",
                                 f"exp {exp:03d}: the edit changes nothing (the code already "
                                 "says that); propose a real change")
        if draft["diff_hash"] in state["tried"]:
            return self._refused(update, draft, "duplicate",
                                 f"exp {exp:03d}: this exact change was already tried; "
                                 "propose a different one")
        if not state["approve"]:
            self.ws.commit()
        return update

    # --- approve ------------------------------------------------------------------------------

    def approve(self, state: RunState) -> dict[str, Any]:
        """With approval on, a person sees the diff and answers yes, no or a new hypothesis."""
        if not state["approve"]:
            return {}
        exp = self._prepared(state)
        proposal = state["proposal"]
        diff = self.ws.git.run("diff", "HEAD")
        control.write_approval(self.rt.run_dir, {
            "exp": exp, "hypothesis": proposal["hypothesis"],
            "rationale": proposal.get("rationale", ""), "diff": diff})
        update: dict[str, Any] = {"exp": exp}
        self._status({**state, **update}, "waiting_approval")
        self.rt.view.message(f"exp {exp:03d} waits for approval (answer in the REPL)")
        answer = None
        while answer is None:
            commands, seen = control.read_new(self.rt.run_dir, state["control_seen"])
            answer = next((c for c in commands if c["cmd"] == "answer" and c.get("exp") == exp),
                          None)
            if answer is not None:  # the commands after the answer are for later nodes
                commands = commands[: commands.index(answer)]
                seen = answer["line"]
            update |= self._apply_commands({**state, **update}, commands)
            state = {**state, **update, "control_seen": seen}
            update["control_seen"] = seen
            if answer is None and (state["stop_requested"] or not state["approve"]):
                answer = {"decision": "no" if state["stop_requested"] else "yes"}
            if answer is None:
                time.sleep(CONTROL_POLL_SECONDS)
        control.clear_approval(self.rt.run_dir)
        if answer["decision"] == "no":
            why = f"a person rejected exp {exp:03d} before it ran"
            return {**update, "decision": "rejected", "failure": None,
                    "outcome": self._outcome([], None, why),
                    "last_failure": Failure(why, "propose something different").as_dict()}
        if answer["decision"] == "edit" and str(answer.get("hypothesis", "")).strip():
            self.ws.retitle(answer["hypothesis"])
            hypothesis = answer["hypothesis"].strip()
            update["proposal"] = {**proposal, "hypothesis": hypothesis}
            update["draft"] = {**state["draft"], "hypothesis": hypothesis}
        self.ws.commit()
        return update

    # --- run ----------------------------------------------------------------------------------

    def run(self, state: RunState) -> dict[str, Any]:
        """Run the experiment; a second visit (decision `confirm`) runs it with another seed."""
        exp = self._prepared(state)
        results = state["results"] if exp == state["exp"] else []  # re-run from the start
        self._status({**state, "exp": exp}, "running")
        if results:
            self.rt.view.message(f"exp {exp:03d}: confirming with another seed")
        result = self._run(repeat=len(results))
        tried = state["tried"]
        if state["draft"]["diff_hash"] not in tried:
            tried = [*tried, state["draft"]["diff_hash"]]
        return {"exp": exp, "results": [*results, result], "tried": tried}

    # --- judge --------------------------------------------------------------------------------

    def judge(self, state: RunState) -> dict[str, Any]:
        """Keep, discard or confirm (agent.loop.decision); failures go to reflect."""
        results, exp = state["results"], state["exp"]
        last = results[-1]
        name = self.spec.metric.name
        if last["status"] != "ok":
            what = f"exp {exp:03d} {last['status']}: {last['reason']}"
            return self._failed(results, last["status"], what, last)
        if not ranking.is_finite(last["metrics"].get(name)):
            what = f"exp {exp:03d} printed no finite METRIC {name}=…"
            return self._failed(results, "no_metric", what, last)
        runs = [r["metrics"][name] for r in results]
        diff = state["draft"]["diff"]
        judgement = decide(runs, self.rt.records.read(), self.spec.metric.goal,
                           min_delta=self.spec.min_delta or 0.0, lines_added=diff["added"],
                           lines_removed=diff["removed"])
        outcome = {**self._outcome(results, judgement.metric, judgement.reason),
                   "judgement": judgement.as_dict()}
        self.rt.view.message(f"exp {exp:03d}: {judgement.reason}")
        return {"decision": judgement.action, "outcome": outcome, "failure": None}

    # --- keep / revert ------------------------------------------------------------------------

    def keep(self, state: RunState) -> dict[str, Any]:
        exp = state["exp"]
        if (settled := self._settled(exp)) is not None:
            return settled
        note = self._note(state)
        ref, _ = ranking.reference(self.rt.records.read(), self.spec.metric.goal)
        is_best = ref is None or ranking.better(note["metric"], ref, self.spec.metric.goal)
        self.ws.keep(exp, note, best=is_best)
        return {}

    def revert(self, state: RunState) -> dict[str, Any]:
        exp = state["exp"]
        if (settled := self._settled(exp)) is not None:
            return settled
        self.ws.discard(exp, self._note(state), status=state["decision"])
        return {}

    # --- record -------------------------------------------------------------------------------

    def record(self, state: RunState) -> dict[str, Any]:
        """Append the record the note holds, with its status and commit; tell the planner."""
        exp = state["exp"]
        entry = next(h for h in reversed(self.ws.history) if h["exp"] == exp)
        record = {**self._note(state), "exp": exp, "status": entry["status"],
                  "commit": entry["commit"]}
        if self._append(record):  # told once: a resumed planner re-learns from the records
            self.rt.planner.observe(Proposal.model_validate(state["proposal"]), record["knobs"],
                                    record["metric"], record["status"])
        return {"wall_seconds": self.rt.wall_used(), "results": [], "draft": None,
                "outcome": None}

    # --- reflect ------------------------------------------------------------------------------

    def reflect(self, state: RunState) -> dict[str, Any]:
        """Read the failure and say what to do differently; it enters the next prompt."""
        failure = state["failure"] or {"what": "unknown failure"}
        what, log_tail = failure["what"], failure.get("log_tail", "")
        diagnose = getattr(self.rt.planner, "diagnose", None)
        diagnosis, tokens = None, 0
        if diagnose is not None:
            try:
                proposal = state.get("proposal") or {}
                hypothesis = proposal.get("hypothesis", "(the reply held no valid proposal)")
                diagnosis, usage = diagnose(self._context(state), f"{what}\n{log_tail}",
                                            hypothesis=hypothesis)
                tokens = usage.total_tokens
            except PlannerError:  # unavailable or no answer: the rules still read the log
                diagnosis = None
        diagnosis = diagnosis or rule_based_diagnosis(what, log_tail)
        self.rt.view.message(f"reflect: {diagnosis}")
        tail = "\n".join(log_tail.splitlines()[-FAILURE_LOG_LINES:])
        return {"last_failure": Failure(what, diagnosis, tail).as_dict(), "failure": None,
                "tokens": state["tokens"] + tokens}

    # --- finish -------------------------------------------------------------------------------

    def finish(self, state: RunState) -> dict[str, Any]:
        from agent.review.report import write_report

        reason = state.get("stop_reason") or "done"
        records = self.rt.records.read()
        judged = [r for r in ranking.experiments(records) if ranking.is_finite(r.get("metric"))]
        failed = bool(state.get("planner_down")) or not judged
        if not judged and not state.get("planner_down"):
            reason = f"{reason}; no experiment completed"
        state = {**state, "stop_reason": reason}
        self._status(state, "finished", failed=failed)
        write_report(self.rt.run_dir, self.rt.goal, records, stop_reason=reason)
        self.rt.view.message(f"finished: {reason}; report at {self.rt.run_dir / REPORT_FILE}")
        return {"stop_reason": reason, "wall_seconds": self.rt.wall_used()}

    # --- helpers ------------------------------------------------------------------------------

    def _prepared(self, state: RunState) -> int:
        """The number of the experiment in flight, redoing its edits if it was cut off (the
        workspace recovered it as interrupted) under a new number, so the interrupted one keeps
        its own record."""
        exp, proposal = state["exp"], state["proposal"]
        assert exp is not None and proposal is not None
        current = self.ws.current
        if current is not None and current["exp"] == exp:
            return exp
        exp = self._begin(proposal["hypothesis"])
        self.ws.apply(proposal["edits"])
        return exp

    def _refused(self, update: dict[str, Any], draft: dict[str, Any], decision: str,
                 what: str) -> dict[str, Any]:
        """An experiment that never runs: recorded, and its failure goes to reflect."""
        return {**update, "draft": draft, "decision": decision, "failure": {"what": what},
                "outcome": self._outcome([], None, what)}

    def _failed(self, results: list[dict[str, Any]], status: str, what: str,
                last: dict[str, Any]) -> dict[str, Any]:
        outcome = self._outcome(results, None, what)
        return {"decision": status, "outcome": outcome,
                "failure": {"what": what, "log_tail": last.get("log_tail", "")}}

    def _outcome(self, results: list[dict[str, Any]], metric: float | None,
                 reason: str) -> dict[str, Any]:
        return experiment_record.outcome(results, self.spec.metric.name, metric, reason)

    def _draft(self, proposal: dict[str, Any], *, planner: str | None = None,
               ran: bool = True) -> dict[str, Any]:
        draft = experiment_record.draft(
            self.ws, self.spec.editable, self.rt.goal.knobs, proposal,
            planner=planner or self.rt.planner.name, metric_name=self.spec.metric.name, ran=ran)
        exp = self.ws.current["exp"] if self.ws.current else None
        calls = [c.as_dict() for c in self.rt.tool_records.read() if c.exp == exp]
        return {**draft, "tool_calls": calls} if calls else draft

    def _note(self, state: RunState) -> dict[str, Any]:
        """The experiment's record as far as it goes before keep or revert: the git note."""
        return {**state["draft"], **(state.get("outcome") or {})}

    def _editable_files(self) -> list[str]:
        return [p for p in self.spec.editable if (self.ws.path / p).is_file()]

    def _steer(self, state: RunState) -> dict[str, Any]:
        """Apply the person's new commands from control.jsonl."""
        commands, seen = control.read_new(self.rt.run_dir, state["control_seen"])
        return {**self._apply_commands(state, commands), "control_seen": seen}

    def _apply_commands(self, state: RunState, commands: list[dict[str, Any]]) -> dict[str, Any]:
        update: dict[str, Any] = {}
        hints = list(state["hints"])
        for c in commands:
            match c["cmd"]:
                case "hint":
                    hints.append(str(c["text"]).strip())
                    self.rt.view.message(f"hint received: {hints[-1]}")
                case "pause" | "resume":
                    update["paused"] = c["cmd"] == "pause"
                    self.rt.view.message(f"{c['cmd']}d by a person")
                case "stop":
                    update["stop_requested"] = True
                    self.rt.view.message("stop requested: finishing")
                case "budget":
                    key = "budget_experiments" if c["what"] == "experiments" else "budget_wall"
                    update[key] = int(c["value"]) if key == "budget_experiments" else c["value"]
                    self.rt.view.message(f"budget {c['what']} set to {c['value']}")
                case "approve":
                    update["approve"] = bool(c["on"])
                    self.rt.view.message(f"approval {'on' if c['on'] else 'off'}")
        if hints != state["hints"]:
            update["hints"] = hints
        return update

    def _status(self, state: RunState, name: str, *, failed: bool = False) -> None:
        proposal = state.get("proposal") or {}
        records = self.rt.records.read()
        goal = self.spec.metric.goal
        control.write_status(self.rt.run_dir, {
            "run_id": self.rt.run_dir.name, "state": name, "pid": os.getpid(),
            "exp": state.get("exp") if name != "planning" else None,
            "hypothesis": proposal.get("hypothesis") if name != "planning" else None,
            "experiments": state["experiments"], "budget": self._budget(state),
            "approve": state["approve"], "paused": state["paused"],
            "baseline_metric": ranking.baseline(records),
            "best_metric": ranking.best(records, goal),
            "verdict": ranking.verdict(records, goal), "tokens": state["tokens"],
            "wall_seconds": round(self.rt.wall_used(), 1),
            "stop_reason": state.get("stop_reason"), "failed": failed,
        })

    def _budget(self, state: RunState) -> dict[str, Any]:
        budget = self.spec.budget
        return {"experiments": state.get("budget_experiments") or budget.experiments,
                "wall": state.get("budget_wall") or budget.wall,
                "per_experiment": budget.per_experiment, "tokens": budget.tokens}

    def _begin(self, hypothesis: str) -> int:
        exp = self.ws.next_exp
        self.ws.begin(exp, hypothesis)
        self.rt.view.experiment_started(exp, hypothesis, self.spec.budget.per_experiment)
        return exp

    def _run(self, *, repeat: int = 0) -> dict[str, Any]:
        """One run of the experiment in flight; a repeat uses another seed and its own log."""
        return self.rt.scorer.run(seed=self.spec.seed + repeat, repeat=repeat,
                                  on_line=self.rt.view.line, mem_limit=self.rt.memory_limit_bytes)

    def _settled(self, exp: int) -> dict[str, Any] | None:
        """After a crash: the workspace may have finished this experiment already (nothing to
        do) or recovered it as interrupted (it must run again)."""
        if self.ws.current is not None and self.ws.current["exp"] == exp:
            return None
        entry = next((h for h in reversed(self.ws.history) if h["exp"] == exp), None)
        if entry is not None and entry["status"] == "interrupted":
            return {"decision": "rerun", "results": []}
        return {}

    def _commit_of(self, exp: int) -> str | None:
        return next((h["commit"] for h in reversed(self.ws.history) if h["exp"] == exp), None)

    def _append(self, record: dict[str, Any]) -> bool:
        if not self.rt.records.append(record):
            return False
        self.rt.view.recorded(record)
        return True

    def _budget_exhausted(self, state: RunState) -> str | None:
        budget = self._budget(state)
        if state["experiments"] >= budget["experiments"]:
            return f"experiment budget of {budget['experiments']} reached"
        if self.rt.wall_used() + budget["per_experiment"] > budget["wall"]:
            return f"wall budget of {budget['wall']:g}s reached"
        if budget["tokens"] is not None and state["tokens"] >= budget["tokens"]:
            return f"token budget of {budget['tokens']} reached"
        return None

    def _context(self, state: RunState) -> PlanContext:
        files = {p: (self.ws.path / p).read_text(encoding="utf-8", errors="replace")
                 for p in self.spec.editable}
        records = self.rt.records.read()
        goal = self.spec.metric.goal
        history = [ExperimentSummary(exp=r["exp"], hypothesis=r["hypothesis"],
                                     status=r["status"], metric=r.get("metric"),
                                     knobs=r.get("knobs") or {}) for r in records]
        failure = state.get("last_failure")
        tools, note = [], ""
        if self.rt.planner.chooses_tools and self.spec.tools:
            if self._tool_calls_left(state):
                tools = planner_specs(list(self.spec.tools))
            else:
                note = self._budget_spent().capitalize() + "."
        exchanges = [ToolExchange(call=ToolCall(id=x["id"], name=x["tool"], arguments=x["args"]),
                                  result=x["result"], reply=x["reply"])
                     for x in state.get("tool_exchanges") or []]
        return PlanContext(
            brief=self.rt.goal.brief, metric_name=self.spec.metric.name,
            goal=goal, editable_files=files, knobs=self.rt.goal.knobs,
            current_knobs=read_knob_values(files, self.rt.goal.knobs), history=history,
            best_metric=ranking.best(records, goal), baseline_metric=ranking.baseline(records),
            last_failure=Failure(**failure) if failure else None, hints=list(state["hints"]),
            seed=self.spec.seed + len(history), tools=tools, tool_exchanges=exchanges,
            tool_note=note,
        )


def _for_planner(record: ToolCallRecord) -> str:
    return for_planner({"result": record.result, "error": record.error})


def _dump(proposal: Proposal) -> dict[str, Any]:
    data = proposal.model_dump()
    usage = proposal.usage
    data["usage"] = {"prompt_tokens": usage.prompt_tokens,
                     "completion_tokens": usage.completion_tokens, "seconds": usage.seconds,
                     "cost_usd": usage.cost_usd, "attempts": usage.attempts}
    return data
