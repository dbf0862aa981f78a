"""The research loop's nodes. Each does one thing and returns a state update.

    baseline (x2) -> plan -> edit -> run -> judge -> keep | revert -> record -> plan ...
                         \\-> reflect (invalid reply)   failures: record -> reflect -> plan

Side effects go through the sandbox workspace, whose journal makes each one durable and
recoverable; LangGraph checkpoints the state after every node. A node re-executed after a
crash therefore first asks the workspace what already happened (`_settled`).
"""

from __future__ import annotations

import hashlib
import os
import statistics
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from agent import control
from agent.diagnosis import rule_based_diagnosis
from agent.goal import Goal
from agent.knob_values import read_knob_values
from agent.planners.base import ExperimentSummary, PlanContext, Planner, PlannerError, Proposal
from agent.records import RunRecords
from agent.state import RunState
from agent.view import RunView
from sandbox.errors import EditError
from sandbox.workspace import Workspace

BASELINE = ("baseline", "baseline (repeat, to measure noise)")
FAILED_RUN = ("crashed", "timeout", "oom", "no_metric")
MAX_PLANNER_FAILURES = 3
CONTROL_POLL_SECONDS = 0.3


@dataclass
class Runtime:
    """What the nodes work with besides the state: not checkpointed, rebuilt on resume."""

    goal: Goal
    run_dir: Path
    workspace: Workspace
    planner: Planner
    records: RunRecords
    view: RunView
    memory_limit_bytes: int | None = None
    session_start: float = field(default_factory=time.monotonic)
    session_base: float = 0.0  # wall seconds used before this session

    def wall_used(self) -> float:
        return self.session_base + time.monotonic() - self.session_start


class Nodes:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.ws = rt.workspace
        self.spec = rt.goal.spec

    # --- baseline ---------------------------------------------------------------------------

    def baseline(self, state: RunState) -> dict[str, Any]:
        """Run the unmodified code; twice over two visits, to measure the noise."""
        done = list(state["baseline_metrics"])
        hypothesis = BASELINE[len(done)]
        self._status({**state, "proposal": {"hypothesis": hypothesis}}, "running")
        exp = self._begin(hypothesis)
        self.ws.commit()
        result = self._run(exp, hypothesis)
        metric = result["metrics"].get(self.spec.metric.name)
        record = self._record(exp, hypothesis, result=result, metric=metric, baseline=True)
        if result["status"] != "ok" or metric is None:
            commit = self.ws.discard(exp, record, status=result["status"])
            self._append({**record, "status": result["status"], "commit": commit})
            return {"stop_reason": f"the baseline {result['status']} ({result['reason']}); "
                                   f"fix the code first, see {result['log_path']}"}
        self.ws.keep(exp, record, best=not done)
        self._append({**record, "status": "keep", "commit": self._commit_of(exp)})
        done.append(metric)
        update: dict[str, Any] = {"baseline_metrics": done}
        if len(done) == len(BASELINE):
            update["noise"] = abs(done[0] - done[1])
            update["best_metric"] = statistics.fmean(done)
            update["wall_seconds"] = self.rt.wall_used()
        return update

    # --- plan ---------------------------------------------------------------------------------

    def plan(self, state: RunState) -> dict[str, Any]:
        update = self._steer(state)
        while (state := {**state, **update})["paused"] and not state["stop_requested"]:
            self._status(state, "paused")
            time.sleep(CONTROL_POLL_SECONDS)
            update |= self._steer(state)
        if state["stop_requested"]:
            return {**update, "stop_reason": "stopped by a person"}
        if stop := self._budget_exhausted(state):
            return {**update, "stop_reason": stop}
        context = self._context(state)
        self._status(state, "planning")
        self.rt.view.message(f"planning with {self.rt.planner.name}…")
        try:
            proposal = self.rt.planner.propose(context)
        except PlannerError as err:
            failures = state["planner_failures"] + 1
            spent = getattr(err, "usage", None)  # failed replies cost tokens too
            update |= {
                "proposal": None, "planner_failures": failures,
                "failure": f"the planner gave no valid proposal: {err}",
                "tokens": state["tokens"] + (spent.total_tokens if spent else 0)}
            if failures >= MAX_PLANNER_FAILURES:
                update["stop_reason"] = (f"{failures} planner replies in a row were invalid "
                                         f"(last: {err})")
            return update
        tokens = state["tokens"] + proposal.usage.total_tokens
        # the diagnosis and the hints have now entered a proposal's context: consumed
        return {**update, "proposal": {**_dump(proposal), "hints": state["hints"]},
                "planner_failures": 0, "tokens": tokens, "diagnosis": None, "hints": []}

    # --- edit ---------------------------------------------------------------------------------

    def edit(self, state: RunState) -> dict[str, Any]:
        proposal = state["proposal"]
        assert proposal is not None
        exp = self._begin(proposal["hypothesis"])
        update: dict[str, Any] = {"exp": exp, "experiments": state["experiments"] + 1,
                                  "result": None, "diff_hash": None}
        try:
            self.ws.apply(proposal["edits"])
        except EditError as err:
            return {**update, "decision": "invalid_edit",
                    "failure": f"exp {exp:03d}: the edit did not apply: {err}"}
        diff_hash = self._diff_hash()
        if diff_hash is None:
            return {**update, "decision": "invalid_edit",
                    "failure": f"exp {exp:03d}: the edit changes nothing (the code already "
                               "says that); propose a real change"}
        if diff_hash in state["tried"]:
            return {**update, "decision": "duplicate", "diff_hash": diff_hash,
                    "failure": f"exp {exp:03d}: this exact change was already tried; "
                               "propose a different one"}
        if not state["approve"]:
            self.ws.commit()
        return {**update, "decision": None, "diff_hash": diff_hash}

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
            return {**update, "decision": "rejected",
                    "diagnosis": f"A person rejected exp {exp:03d} ({proposal['hypothesis']}) "
                                 "before it ran; propose something different."}
        if answer["decision"] == "edit" and str(answer.get("hypothesis", "")).strip():
            self.ws.retitle(answer["hypothesis"])
            update["proposal"] = {**proposal, "hypothesis": answer["hypothesis"].strip()}
        self.ws.commit()
        return update

    # --- run ----------------------------------------------------------------------------------

    def run(self, state: RunState) -> dict[str, Any]:
        exp = self._prepared(state)
        self._status({**state, "exp": exp}, "running")
        result = self._run(exp, state["proposal"]["hypothesis"])
        tried = [*state["tried"], state["diff_hash"]] if state["diff_hash"] else state["tried"]
        return {"exp": exp, "result": result, "tried": tried}

    # --- judge --------------------------------------------------------------------------------

    def judge(self, state: RunState) -> dict[str, Any]:
        """Greedy keep rule with a noise guard: beat the best by more than the noise."""
        result = state["result"]
        assert result is not None
        if result["status"] != "ok":
            return {"decision": result["status"],
                    "failure": f"exp {state['exp']:03d} {result['status']}: {result['reason']}"}
        metric = result["metrics"].get(self.spec.metric.name)
        if metric is None:
            return {"decision": "no_metric",
                    "failure": f"exp {state['exp']:03d} printed no METRIC "
                               f"{self.spec.metric.name}=…"}
        margin = max(state["noise"], self.spec.min_delta or 0.0)
        best = state["best_metric"]
        gain = (best - metric) if self.spec.metric.goal == "minimize" else (metric - best)
        return {"decision": "keep" if gain > margin else "discard", "failure": None}

    # --- keep / revert ------------------------------------------------------------------------

    def keep(self, state: RunState) -> dict[str, Any]:
        exp = state["exp"]
        if (settled := self._settled(exp)) is not None:
            return settled
        metric = state["result"]["metrics"][self.spec.metric.name]
        self.ws.keep(exp, self._note(state, metric), best=True)
        return {"best_metric": metric}

    def revert(self, state: RunState) -> dict[str, Any]:
        exp = state["exp"]
        if (settled := self._settled(exp)) is not None:
            return settled
        result = state.get("result") or {}
        metric = (result.get("metrics") or {}).get(self.spec.metric.name)
        self.ws.discard(exp, self._note(state, metric), status=state["decision"])
        return {}

    # --- record -------------------------------------------------------------------------------

    def record(self, state: RunState) -> dict[str, Any]:
        exp = state["exp"]
        entry = next(h for h in reversed(self.ws.history) if h["exp"] == exp)
        record = {**self._note(state, entry["metric"]), "status": entry["status"],
                  "commit": entry["commit"]}
        if self._append(record):  # told once: a resumed planner re-learns from the records
            self.rt.planner.observe(Proposal.model_validate(state["proposal"]), record["knobs"],
                                    record["metric"], record["status"])
        return {"wall_seconds": self.rt.wall_used(), "result": None}

    # --- reflect ------------------------------------------------------------------------------

    def reflect(self, state: RunState) -> dict[str, Any]:
        """Read the failure and say what to do differently; it enters the next prompt."""
        failure = state["failure"] or "unknown failure"
        result = state.get("result") or {}
        log_tail = result.get("log_tail", "")
        diagnose = getattr(self.rt.planner, "diagnose", None)
        diagnosis, tokens = None, 0
        if diagnose is not None:
            try:
                proposal = state.get("proposal") or {}
                hypothesis = proposal.get("hypothesis", "(the reply held no valid proposal)")
                diagnosis, usage = diagnose(self._context(state), f"{failure}\n{log_tail}",
                                            hypothesis=hypothesis)
                tokens = usage.total_tokens
            except PlannerError:
                diagnosis = None
        diagnosis = diagnosis or rule_based_diagnosis(failure, log_tail)
        self.rt.view.message(f"reflect: {diagnosis}")
        text = f"{failure}\nDiagnosis: {diagnosis}"
        if log_tail:
            text += "\nLog tail:\n" + "\n".join(log_tail.splitlines()[-15:])
        return {"diagnosis": text, "failure": None, "tokens": state["tokens"] + tokens,
                "result": None}

    # --- finish -------------------------------------------------------------------------------

    def finish(self, state: RunState) -> dict[str, Any]:
        from agent.report import write_report

        reason = state.get("stop_reason") or "done"
        self._status(state, "finished")
        write_report(self.rt.run_dir, self.rt.goal, self.rt.records.read(), stop_reason=reason)
        self.rt.view.message(f"finished: {reason}; report at {self.rt.run_dir / 'report.md'}")
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

    def _status(self, state: RunState, name: str) -> None:
        proposal = state.get("proposal") or {}
        control.write_status(self.rt.run_dir, {
            "run_id": self.rt.run_dir.name, "state": name, "pid": os.getpid(),
            "exp": state.get("exp") if name != "planning" else None,
            "hypothesis": proposal.get("hypothesis") if name != "planning" else None,
            "experiments": state["experiments"], "budget": self._budget(state),
            "approve": state["approve"], "paused": state["paused"],
            "best_metric": state["best_metric"], "tokens": state["tokens"],
            "wall_seconds": round(self.rt.wall_used(), 1),
            "stop_reason": state.get("stop_reason"),
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

    def _run(self, exp: int, hypothesis: str) -> dict[str, Any]:
        result = self.ws.run(
            self.spec.command,
            time_budget=self.spec.budget.per_experiment,
            seed=self.spec.seed,
            grace=self.spec.budget.grace,
            mem_limit=self.rt.memory_limit_bytes,
            metric=self.spec.metric.name,
            on_line=self.rt.view.line,
        )
        return {"status": result.status, "exit_code": result.exit_code,
                "metrics": dict(result.metrics), "seconds": round(result.seconds, 3),
                "reason": result.reason, "log_tail": result.log_tail,
                "log_path": str(result.log_path or self.ws.log_path(exp))}

    def _settled(self, exp: int) -> dict[str, Any] | None:
        """After a crash: the workspace may have finished this experiment already (nothing to
        do) or recovered it as interrupted (it must run again)."""
        if self.ws.current is not None and self.ws.current["exp"] == exp:
            return None
        entry = next((h for h in reversed(self.ws.history) if h["exp"] == exp), None)
        if entry is not None and entry["status"] == "interrupted":
            return {"decision": "rerun"}
        return {}

    def _diff_hash(self) -> str | None:
        """Hash of the uncommitted change (None when there is none): equal changes, equal hash."""
        diff = self.ws.git.run("diff", "HEAD", "--", *self.spec.editable)
        return hashlib.sha256(diff.encode()).hexdigest()[:16] if diff.strip() else None

    def _commit_of(self, exp: int) -> str | None:
        return next((h["commit"] for h in reversed(self.ws.history) if h["exp"] == exp), None)

    def _note(self, state: RunState, metric: float | None) -> dict[str, Any]:
        proposal = state["proposal"] or {}
        return self._record(
            state["exp"], proposal.get("hypothesis", ""), result=state.get("result"),
            metric=metric, proposal=proposal, diff_hash=state.get("diff_hash"),
            failure=state.get("failure"),
        )

    def _record(self, exp: int, hypothesis: str, *, result: dict | None, metric: float | None,
                proposal: dict | None = None, diff_hash: str | None = None,
                failure: str | None = None, baseline: bool = False) -> dict[str, Any]:
        """The JSON record of one experiment: git note and experiments.jsonl line."""
        proposal = proposal or {}
        usage = proposal.get("usage") or {}
        result = result or {}
        files = {p: (self.ws.path / p).read_text(encoding="utf-8", errors="replace")
                 for p in self.spec.editable if (self.ws.path / p).is_file()}
        return {
            "exp": exp,
            "hypothesis": hypothesis,
            "rationale": proposal.get("rationale", ""),
            "edits": proposal.get("edits", []),
            "baseline": baseline,
            "metric": metric,
            "metric_name": self.spec.metric.name,
            "metrics": result.get("metrics", {}),
            "run_status": result.get("status"),
            "seconds": result.get("seconds"),
            "reason": failure or result.get("reason") or "",
            "planner": "none" if baseline else self.rt.planner.name,
            "tokens": {"prompt": usage.get("prompt_tokens", 0),
                       "completion": usage.get("completion_tokens", 0)},
            "cost_usd": usage.get("cost_usd"),
            "propose_seconds": usage.get("seconds"),
            "knobs": read_knob_values(files, self.rt.goal.knobs),
            "diff_hash": diff_hash,
            "hints": proposal.get("hints", []),
            "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }

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
        history = [
            ExperimentSummary(exp=r["exp"], hypothesis=r["hypothesis"],
                              status="baseline" if r.get("baseline") else r["status"],
                              metric=r.get("metric"), knobs=r.get("knobs") or {})
            for r in self.rt.records.read()
        ]
        baseline = state["baseline_metrics"]
        return PlanContext(
            brief=self.rt.goal.brief, metric_name=self.spec.metric.name,
            goal=self.spec.metric.goal, editable_files=files, knobs=self.rt.goal.knobs,
            current_knobs=read_knob_values(files, self.rt.goal.knobs), history=history,
            best_metric=state["best_metric"],
            baseline_metric=statistics.fmean(baseline) if baseline else None,
            last_failure=state.get("diagnosis"), hints=list(state["hints"]),
            seed=self.spec.seed + len(history),
        )


def _dump(proposal: Proposal) -> dict[str, Any]:
    data = proposal.model_dump()
    usage = proposal.usage
    data["usage"] = {"prompt_tokens": usage.prompt_tokens,
                     "completion_tokens": usage.completion_tokens, "seconds": usage.seconds,
                     "cost_usd": usage.cost_usd, "attempts": usage.attempts}
    return data
