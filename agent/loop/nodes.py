"""The research loop's nodes. Each does one thing and returns a state update.

    baseline (x2) -> plan -> edit -> approve -> run -> judge -> keep | revert -> record -> plan ...
                         \\-> reflect (invalid reply)             judge -> run (confirm, new seed)
                         \\-> tool -> plan                       failures: record -> reflect -> plan

The nodes are the graph's entry points; the work is in modules of one job each: an experiment
in the workspace (agent.loop.experiment), tool calls and the goal's steps (tool_step), a
person's commands, pause and approval (steering), budget and status.json (status), what the
planner is shown (planner_context), the keep rule (decision), a rule-based diagnosis (diagnosis).

Side effects go through the sandbox workspace, whose journal makes each one durable and
recoverable; LangGraph checkpoints the state after every node. A node re-executed after a
crash therefore first asks the workspace what already happened (`experiment.settled`).
"""

from __future__ import annotations

import functools
from typing import Any

from pydantic import ValidationError

from agent.loop import diagnosis, experiment, status, steering, tool_step
from agent.loop.decision import Judgement, decide
from agent.loop.planner_context import dump, plan_context
from agent.loop.runtime import Runtime
from agent.loop.state import RunState
from agent.planners.base import Failure, PlannerError, PlannerUnavailable, Proposal, ToolRequest
from agent.rundir import control, ranking
from agent.rundir.names import REPORT_FILE
from sandbox.errors import EditError, SandboxError

BASELINE_HYPOTHESES = ("baseline", "baseline (repeat with another seed, to measure noise)")
MAX_PLANNER_FAILURES = 3
FAILURE_LOG_LINES = 15


class Nodes:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.ws = rt.workspace
        self.spec = rt.goal.spec

    # --- baseline ---------------------------------------------------------------------------

    def baseline(self, state: RunState) -> dict[str, Any]:
        """Run the unmodified code; twice (another seed the second time), to measure noise."""
        rt = self.rt
        done = len(ranking.baseline_values(rt.records.read()))
        if done == len(BASELINE_HYPOTHESES):  # recorded before a crash cut the checkpoint
            return {"baselines": done}
        hypothesis = BASELINE_HYPOTHESES[done]
        status.write(rt, {**state, "proposal": {"hypothesis": hypothesis}}, "running")
        exp = experiment.begin(rt, hypothesis)
        self.ws.commit()
        draft = experiment.draft(rt, {"hypothesis": hypothesis}, planner="none")
        warm_up = None
        if done == len(BASELINE_HYPOTHESES) - 1:  # a proposal comes after its scoring
            context = plan_context(rt, state)
            warm_up = functools.partial(rt.planner.warm_up, context)
        result = experiment.run_once(rt, repeat=done, while_scoring=warm_up)
        metric = result["metrics"].get(self.spec.metric.name)
        note = {**draft, **experiment.outcome(rt, [result], metric, result["reason"])}
        if result["status"] != "ok" or not ranking.is_finite(metric):
            failed = result["status"] if result["status"] != "ok" else "no_metric"
            commit = self.ws.discard(exp, note, status=failed)
            experiment.append(rt, {**note, "exp": exp, "status": failed, "commit": commit})
            why = result["reason"] or f"no finite METRIC {self.spec.metric.name}"
            return {"stop_reason": f"the baseline {failed} ({why}); fix the code first, see "
                                   f"{result['log_path']}"}
        self.ws.keep(exp, note, best=done == 0, status=ranking.BASELINE)
        experiment.append(rt, {**note, "exp": exp, "status": ranking.BASELINE,
                               "commit": experiment.commit_of(rt, exp)})
        return {"baselines": done + 1, "wall_seconds": rt.wall_used()}

    # --- plan ---------------------------------------------------------------------------------

    def plan(self, state: RunState) -> dict[str, Any]:
        """Steer, hold while paused, stop on a spent budget, run due steps, or ask the planner."""
        rt = self.rt
        update = {"waiting": None, **steering.steer(rt, state)}
        now = {**state, **update}
        if now["stop_requested"]:
            return {**update, "stop_reason": control.STOPPED_BY_A_PERSON}
        if now["paused"]:
            status.write(rt, now, "paused")
            return steering.hold(state, update, steering.PAUSED)
        if stop := status.exhausted(rt, now):
            return {**update, "stop_reason": stop,
                    "tool_request": tool_step.steps_due(rt, at_end=True)}
        if steps := tool_step.steps_due(rt, at_end=False):
            return {**update, "tool_request": steps}
        context = plan_context(rt, now)
        status.write(rt, now, "planning")
        rt.view.message(f"planning with {rt.planner.name}…")
        try:
            proposal = rt.planner.propose(context)
        except PlannerUnavailable as err:  # a transport failure: nothing for the LLM to learn
            return {**update, "proposal": None, "planner_down": True,
                    "stop_reason": f"the planner failed: {err}"}
        except (PlannerError, ValidationError) as err:
            if isinstance(err, ValidationError):  # a planner built a proposal the schema refuses
                err = PlannerError(err.errors()[0]["msg"])
            failures = now["planner_failures"] + 1
            spent = getattr(err, "usage", None)  # failed replies cost tokens too
            update |= {
                "proposal": None, "planner_failures": failures,
                "failure": {"what": f"the planner gave no valid proposal: {err}",
                            "status": diagnosis.INVALID_REPLY},
                "tokens": now["tokens"] + (spent.total_tokens if spent else 0)}
            if failures >= MAX_PLANNER_FAILURES:
                update["planner_down"] = True
                update["stop_reason"] = (f"{failures} planner replies in a row were invalid "
                                         f"(last: {err})")
            return update
        tokens = now["tokens"] + proposal.usage.total_tokens
        if isinstance(proposal, ToolRequest):
            return {**update, "tool_request": tool_step.requested(rt, now, proposal),
                    "planner_failures": 0, "tokens": tokens}
        # the failure and the hints have now entered a proposal's context: consumed
        return {**update, "proposal": {**dump(proposal), "hints": now["hints"]},
                "planner_failures": 0, "tokens": tokens, "last_failure": None, "hints": []}

    # --- tool ---------------------------------------------------------------------------------

    def tool(self, state: RunState) -> dict[str, Any]:
        """Run the requested calls, in order; a call that already finished (before a crash) is
        not run again: its recorded result is used."""
        status.write(self.rt, state, "tool")  # a live state: `status` and the REPL show it
        return tool_step.run_requests(self.rt, state)

    # --- edit ---------------------------------------------------------------------------------

    def edit(self, state: RunState) -> dict[str, Any]:
        proposal = state["proposal"]
        assert proposal is not None
        exp = experiment.begin(self.rt, proposal["hypothesis"])
        update: dict[str, Any] = {"exp": exp, "experiments": state["experiments"] + 1,
                                  "results": [], "outcome": None, "decision": None,
                                  "tool_exchanges": []}
        try:
            return self._make(state, proposal, exp, update)
        except (SandboxError, ValueError) as err:
            # this experiment's input broke the workspace or git: its failure, not the run's
            drafted = experiment.draft(self.rt, proposal, ran=False)
            return experiment.refused(self.rt, update, drafted, diagnosis.INVALID_EDIT,
                                      f"exp {exp:03d}: the edit could not be made: {err}")

    def _make(self, state: RunState, proposal: dict[str, Any], exp: int,
              update: dict[str, Any]) -> dict[str, Any]:
        """Apply the proposal's edits and commit them, or refuse the experiment."""
        rt = self.rt
        try:
            self.ws.apply(proposal["edits"])
        except EditError as err:
            # nothing changed (edits apply all or nothing): no code of its own to describe
            return experiment.refused(rt, update, experiment.draft(rt, proposal, ran=False),
                                      diagnosis.INVALID_EDIT,
                                      f"exp {exp:03d}: the edit did not apply: {err}")
        draft = experiment.draft(rt, proposal)
        update["draft"] = draft
        if draft["diff_hash"] is None:
            return experiment.refused(rt, update, draft, diagnosis.INVALID_EDIT,
                                      f"exp {exp:03d}: the edit changes nothing (the code "
                                      "already says that); propose a real change")
        if draft["diff_hash"] in state["tried"]:
            return experiment.refused(rt, update, draft, diagnosis.DUPLICATE,
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
        rt = self.rt
        exp = experiment.prepared(rt, state)
        proposal = state["proposal"]
        answer, update = steering.answer(rt, state, exp)
        update["exp"] = exp
        if answer is None:  # ask (again), and wait for the answer
            control.write_approval(rt.run_dir, {
                "exp": exp, "hypothesis": proposal["hypothesis"],
                "rationale": proposal.get("rationale", ""),
                "diff": self.ws.git.run("diff", "HEAD")})
            status.write(rt, {**state, **update}, "waiting_approval")
            if state.get("waiting") != steering.APPROVAL:
                rt.view.message(f"exp {exp:03d} waits for approval (answer in the REPL)")
            return steering.hold(state, update, steering.APPROVAL)
        control.clear_approval(rt.run_dir)
        update["waiting"] = None
        if answer["decision"] == "no":
            why = f"a person rejected exp {exp:03d} before it ran"
            return {**update, "decision": "rejected", "failure": None,
                    "outcome": experiment.outcome(rt, [], None, why),
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
        exp = experiment.prepared(self.rt, state)
        results = state["results"] if exp == state["exp"] else []  # re-run from the start
        status.write(self.rt, {**state, "exp": exp}, "running")
        if results:
            self.rt.view.message(f"exp {exp:03d}: confirming with another seed")
        prior = [r["metrics"][self.spec.metric.name] for r in results]

        def could_be_kept(value: float) -> bool:  # the test split is scored only then
            return self._judge([*prior, value], state).action != "discard"

        result = experiment.run_once(self.rt, repeat=len(results), test_if=could_be_kept)
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
            return experiment.failed(self.rt, results, last["status"], what)
        if not ranking.is_finite(last["metrics"].get(name)):
            what = f"exp {exp:03d} printed no finite METRIC {name}=…"
            return experiment.failed(self.rt, results, "no_metric", what)
        judgement = self._judge([r["metrics"][name] for r in results], state)
        outcome = {**experiment.outcome(self.rt, results, judgement.metric, judgement.reason),
                   "judgement": judgement.as_dict()}
        self.rt.view.message(f"exp {exp:03d}: {judgement.reason}")
        return {"decision": judgement.action, "outcome": outcome, "failure": None}

    def _judge(self, runs: list[float], state: RunState) -> Judgement:
        """The keep rule on the experiment in flight measured `runs`."""
        diff = state["draft"]["diff"]
        return decide(runs, self.rt.records.read(), self.spec.metric.goal,
                      min_delta=self.spec.min_delta or 0.0, lines_added=diff["added"],
                      lines_removed=diff["removed"])

    # --- keep / revert ------------------------------------------------------------------------

    def keep(self, state: RunState) -> dict[str, Any]:
        exp = state["exp"]
        if (settled := experiment.settled(self.rt, exp)) is not None:
            return settled
        note = experiment.note(state)
        # tag magnet/best marks the experiment the run stands for, as ranking defines it
        records = [*self.rt.records.read(), {**note, "exp": exp, "status": ranking.KEEP}]
        standing = ranking.standing_record(records, self.spec.metric.goal)
        self.ws.keep(exp, note, best=standing is not None and standing["exp"] == exp)
        return {}

    def revert(self, state: RunState) -> dict[str, Any]:
        exp = state["exp"]
        if (settled := experiment.settled(self.rt, exp)) is not None:
            return settled
        self.ws.discard(exp, experiment.note(state), status=state["decision"])
        return {}

    # --- record -------------------------------------------------------------------------------

    def record(self, state: RunState) -> dict[str, Any]:
        """Append the record the note holds, with its status and commit; tell the planner."""
        exp = state["exp"]
        entry = next(h for h in reversed(self.ws.history) if h["exp"] == exp)
        record = {**experiment.note(state), "exp": exp, "status": entry["status"],
                  "commit": entry["commit"]}
        if experiment.append(self.rt, record):  # told once: a resumed planner re-learns
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
        said, tokens = None, 0
        if diagnose is not None:
            try:
                proposal = state.get("proposal") or {}
                hypothesis = proposal.get("hypothesis", "(the reply held no valid proposal)")
                said, usage = diagnose(plan_context(self.rt, state), f"{what}\n{log_tail}",
                                       hypothesis=hypothesis)
                tokens = usage.total_tokens
            except PlannerError:  # unavailable or no answer: the rules still read the log
                said = None
        said = said or diagnosis.rule_based_diagnosis(failure.get("status"), log_tail)
        self.rt.view.message(f"reflect: {said}")
        tail = "\n".join(log_tail.splitlines()[-FAILURE_LOG_LINES:])
        return {"last_failure": Failure(what, said, tail).as_dict(), "failure": None,
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
        status.write(self.rt, state, "finished", failed=failed)
        write_report(self.rt.run_dir, self.rt.goal, records, stop_reason=reason)
        self.rt.view.message(f"finished: {reason}; report at {self.rt.run_dir / REPORT_FILE}")
        return {"stop_reason": reason, "wall_seconds": self.rt.wall_used()}
