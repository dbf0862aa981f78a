"""The score of a run, from where the experiment cannot forge it.

An experiment's own METRIC lines are claims. What counts:
  - `evaluator`: a template's fixed evaluator (bitnet-lm: bitnet.score computes val_bpb from the
    saved checkpoint on the fixed validation bytes, the model code confined, with a check that
    it does not look ahead). It is the only score: the run is scored once, here, and whatever
    val_bpb the experiment printed is ignored (it need print only its training loss). The same
    session scores the held-out test split too (TEST_KEY of the run summary, never in its
    metrics: planners must not see it), for every run a caller's `test_if` does not skip.
  - `evaluate_command`: the goal's `evaluate:` command, run after training with nothing
    writable; its METRIC lines are the score.
  - `self_reported`: neither exists (a repository without `evaluate:`): the METRIC lines count,
    and the report says so.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

from agent.goal.spec import Goal, GoalError
from agent.rundir.experiment_record import TEST_KEY, run_summary, seal
from agent.rundir.init_checkpoint import ENV_NAME as INIT_ENV
from agent.rundir.init_checkpoint import init_dir
from agent.scoring.private_paths import private_paths
from agent.scoring.replay_facts import replay_facts
from agent.scoring.run_tokenizer import RunTokenizer, run_tokenizer
from agent.scoring.warm_servers import SharedView, WarmServers
from bitnet.logits_server import ALLOCATOR_ENV, THREADS
from sandbox.confine import Confinement
from sandbox.env import free_cpus, run_environ
from sandbox.layout import OUTPUTS_DIR
from sandbox.limits import Limits, run_limits
from sandbox.metrics import is_finite
from sandbox.run_setup import run_setup
from sandbox.warm import warm_starter
from sandbox.workspace import Workspace
from sandbox.zygote import START_TIMEOUT

EVALUATOR, EVALUATE_COMMAND, SELF_REPORTED = "evaluator", "evaluate_command", "self_reported"
DESCRIPTIONS = {
    EVALUATOR: "the template's fixed evaluator, re-computed from the saved checkpoint",
    EVALUATE_COMMAND: "the goal's `evaluate:` command, run with nothing writable",
    SELF_REPORTED: "the experiment's own METRIC lines (no evaluator: add `evaluate:`)",
}
INVALID_METRIC = "invalid_metric"
TEMPLATE_EVALUATORS = {"bitnet-lm": "val_bpb"}  # templates with a fixed evaluator: its metric
DEFAULT_CORPUS = "pycode"
TRAIN_DATA_ENV = "MAGNET_TRAIN_DATA"  # the template's train.py spells it too: it imports no agent
# windows the evaluator checks for look-ahead: a model peeking at a fraction f of positions
# escapes with probability (1 - f) ** n; each window costs one forward pass
CAUSAL_WINDOWS = 32


def scored_by(goal: Goal) -> str:
    """How this goal's runs are scored (one of the three above)."""
    if goal.spec.evaluate:
        return EVALUATE_COMMAND
    if goal.spec.template in TEMPLATE_EVALUATORS:
        return EVALUATOR
    return SELF_REPORTED


def corpus_of(goal: Goal) -> str | None:
    """The corpus a template goal trains and is scored on (None for a repository)."""
    return goal.spec.corpus or DEFAULT_CORPUS if goal.spec.template is not None else None


def run_env(goal: Goal, run_dir: Path) -> dict[str, str]:
    """Settings the goal gives every run of its command (and its evaluation): its corpus's name
    and training split (bitnet.data.train_dir), and the run's copy of the checkpoint it starts
    from."""
    corpus = corpus_of(goal)
    env = {"MAGNET_CORPUS": corpus, TRAIN_DATA_ENV: str(_corpus_paths(corpus)[0])} if corpus else {}
    if goal.spec.init is not None:
        env[INIT_ENV] = str(init_dir(run_dir))
    return env


class Scorer:
    """Turns a run summary (agent.rundir.experiment_record.run_summary) into a scored one."""

    def __init__(self, goal: Goal, ws: Workspace, confinement: Confinement) -> None:
        """`confinement`: sandbox.confine.confinement() (bubblewrap, or the explicit opt-out)."""
        self.goal = goal
        self.ws = ws
        self.kind = scored_by(goal)
        self.metric = goal.spec.metric.name
        fixed = TEMPLATE_EVALUATORS.get(goal.spec.template or "")
        if self.kind == EVALUATOR and self.metric != fixed:
            raise GoalError(f"{goal.path}: template {goal.spec.template} is scored by its "
                            f"evaluator as {fixed}; set `metric: {{name: {fixed}}}` or give "
                            "`evaluate:` a command that prints your metric")
        # runs read the training split alone, never write it; the evaluator's model code gets
        # the validation bytes only through its pipe, so it does not see them at all
        spec = goal.spec
        self._starts_from = [init_dir(ws.run_dir)] if spec.init is not None else []
        ledger = spec.ledger
        self._confinement = confinement.with_paths(hidden=private_paths(  # keys, credentials
            ledgers=[ledger.path if ledger else None], keys=[ledger.key if ledger else None]))
        self.evaluator_confinement = self._confinement.with_paths(
            hidden=_held_out_paths(corpus_of(goal)))
        # the goal's limits hold for all code from the workspace: its runs, the `evaluate:`
        # command and the evaluator's model servers
        self.mem_limit = (spec.memory_limit_mb or 0) * 2**20 or None
        self.output_limit = int(spec.output_limit_mb * 2**20)
        self.servers = WarmServers()  # used only when the workspace warm-starts its runs
        self._run_tokenizer: RunTokenizer | None = None  # the run in flight's (run())

    @cached_property
    def confinement(self) -> Confinement:
        """What runs see: the training split (built on first use) and the tokenizers trained on
        it (all made of the training split alone), not the held-out bytes."""
        corpus = corpus_of(self.goal)
        entry = self.corpus.entry if corpus else None
        held_out = [entry / f"{split}.bin" for split in ("val", "test")] if entry else []
        return self._confinement.with_paths(
            readable=[*_corpus_paths(corpus), *self._tokenizers_root(), *self._starts_from,
                      *self.goal.spec.readable],
            hidden=held_out)

    def _tokenizers_root(self) -> list[Path]:
        """The corpus's tokenizer folder (bitnet.tokenizer.tokenizers_root), made now: the
        confinement binds what exists, and a tokenizer trained later lands inside it."""
        if corpus_of(self.goal) is None:
            return []
        from bitnet.tokenizer import tokenizers_root

        root = tokenizers_root(self.corpus)
        root.mkdir(exist_ok=True)
        return [root]

    def tokenizer(self, on_line: Callable[[str], None] | None = None) -> RunTokenizer | None:
        """The tokenizer the experiment in the workspace trains with (agent.scoring.
        run_tokenizer), trained first where it must be; None for a repository goal."""
        corpus = corpus_of(self.goal)
        return run_tokenizer(corpus, self.ws.path, on_line) if corpus is not None else None

    def prepare(self) -> None:
        """Build what the runs read but may not write (the corpus cache), before the first."""
        if corpus_of(self.goal) is not None:
            _ = self.validation

    def run(self, *, seed: int, repeat: int, on_line: Callable[[str], None] | None = None,
            mem_limit: int | None = None, replay: Mapping[str, Any] | None = None,
            schedule: Path | None = None, time_budget: float | None = None,
            test_if: Callable[[float], bool] | None = None,
            while_scoring: Callable[[], None] | None = None) -> dict[str, Any]:
        """One confined run of the goal's command on the experiment in flight, scored: the
        run summary (agent.rundir.experiment_record.run_summary) the loop and `train` record, with
        the facts a replay needs (`replay`). Given `replay` (those facts of an earlier run), it
        re-runs that run: its steps, threads and schedule (`schedule`: the file it recorded).
        `test_if(val_bpb)` False skips the test split (default: always scored).
        `while_scoring()` is called once training is over, before the scoring."""
        spec = self.goal.spec
        budget = time_budget or spec.budget.per_experiment
        env = run_env(self.goal, self.ws.run_dir)
        # before the run's clock: a tokenizer it has not got yet is trained now
        self._run_tokenizer = tokenizer = self.tokenizer(on_line)
        env |= tokenizer.env() if tokenizer is not None else {}
        self._imported()
        steps, threads = None, free_cpus()  # decided here, so the facts can say how many
        if replay is not None:
            steps, threads = replay.get("steps"), replay.get("threads") or threads
            if schedule is not None:
                env["MAGNET_SCHEDULE"] = str(schedule)
        result = self.ws.run(
            spec.command, seed=seed, steps=steps, grace=spec.budget.grace, on_line=on_line,
            # the evaluator's metric is its own: the run need print only its training loss
            metric=None if self.kind == EVALUATOR else self.metric,
            repeat=repeat, log_limit=int(spec.log_limit_mb * 2**20),
            **self._run_options(budget, threads, mem_limit, env))
        if while_scoring is not None:
            while_scoring()
        scoring = time.monotonic()
        scored = (self.score(run_summary(result, seed), repeat, test_if=test_if)
                  | seal(corpus_of(self.goal)))
        scored["score_seconds"] = round(time.monotonic() - scoring, 3)  # bench/utilisation.py
        self._warm_servers()
        out_dir = self.ws.output_dir(self.ws.current["exp"], repeat)  # type: ignore[index]
        scored["replay"] = replay_facts(scored, time_budget=budget, threads=threads,
                                        out_dir=out_dir,
                                        corpus=self.corpus if corpus_of(self.goal) else None,
                                        tokenizer=tokenizer.facts() if tokenizer else None)
        return scored

    def head_start(self, *, mem_limit: int | None = None) -> None:
        """Warm-start the workspace's runs where they are a template's (sandbox.warm; not with
        MAGNET_WARM_START=0), and begin, where runs are forked, the fork servers the first run and
        its scoring wait for (`mem_limit`: the runs' memory limit): the three import side by
        side while the controller is still starting, not one after another."""
        if self.ws.warm is None and self.goal.spec.template is not None:
            # a warm process imports what a template's train.py imports; a repository's command
            # imports its own stack, which that would only slow down
            self.ws.warm = warm_starter(self.ws.run_dir / OUTPUTS_DIR)
        warm = self.ws.warm
        if warm is None:
            return
        spec = self.goal.spec
        options = self._run_options(spec.budget.per_experiment, free_cpus(), mem_limit,
                                    run_env(self.goal, self.ws.run_dir))
        setup = run_setup(self.ws.path, warm.outputs, seed=0, steps=None, **options)
        warm.prepare(spec.command, self.ws.path, *setup, forked_only=True)
        self._warm_servers()
        if self.kind == EVALUATOR:
            # the scoring's own imports (torch: ~2 s) now, while the loop waits for the fork
            # servers' imports anyway (_imported), not after the first run has trained
            import bitnet.score  # noqa: F401

    def _imported(self) -> None:
        """Wait until the fork servers begun at the head start have imported (the first run is
        forked from one of them anyway): until then free_cpus() counts them as busy, and the
        first baseline trained on one thread of two (139 steps against 225 for the second)."""
        warm = self.ws.warm
        own = [warm.zygote] if warm is not None and warm.zygote is not None else []
        for zygote in [*own, *self.servers.zygotes]:
            zygote.ready(START_TIMEOUT)

    def _run_options(self, budget: float, threads: int, mem_limit: int | None,
                     env: dict[str, str]) -> dict[str, Any]:
        """What a run of the goal's command is given (sandbox.run_setup), for run() and
        head_start() alike: a warm process is taken only by a run set up as it was."""
        spec = self.goal.spec
        return {"time_budget": budget, "threads": threads, "mem_limit": mem_limit, "env": env,
                "confinement": self.confinement, "passed_env": spec.env,
                "output_limit": self.output_limit, "max_processes": spec.max_processes}

    @cached_property
    def corpus(self) -> Any:
        """The template's corpus (bitnet.data.Corpus): its validation bytes and fingerprint."""
        from bitnet.data import load_corpus

        return load_corpus(corpus_of(self.goal) or DEFAULT_CORPUS)

    @property
    def validation(self) -> Any:
        return self.corpus.val

    def score(self, run: Mapping[str, Any], repeat: int, *,
              test_if: Callable[[float], bool] | None = None) -> dict[str, Any]:
        """`run` with `scored_by`, the metric the scorer measured (what the run printed stays
        in `reported`), the test score under TEST_KEY (None when not measured), and the status
        `invalid_metric` when it cannot be measured."""
        scored = {**run, "scored_by": self.kind, TEST_KEY: None}
        if run["status"] != "ok" or self.kind == SELF_REPORTED:
            return scored
        reported = run["metrics"].get(self.metric)
        test = None
        if self.kind == EVALUATE_COMMAND:
            measured, why = self._evaluate_command(repeat)
        else:
            measured, test, why = self._evaluator(repeat, test_if)
        if measured is None:
            return {**scored, "status": INVALID_METRIC, "reason": why}
        return {**scored, "metrics": {**run["metrics"], self.metric: measured},
                "reported": reported, TEST_KEY: test}

    def _evaluate_command(self, repeat: int) -> tuple[float | None, str]:
        spec = self.goal.spec
        assert spec.evaluate is not None
        result = self.ws.evaluate(spec.evaluate, repeat=repeat, timeout=spec.budget.grace,
                                  confinement=self.confinement,
                                  env=run_env(self.goal, self.ws.run_dir), passed_env=spec.env,
                                  mem_limit=self.mem_limit, max_processes=spec.max_processes)
        value = result.metrics.get(self.metric)
        if result.status not in ("ok", "no_metric") or not is_finite(value):
            why = result.reason or f"printed no finite METRIC {self.metric}"
            return None, f"the evaluate command failed: {why}; see {result.log_path}"
        return float(value), ""  # type: ignore[arg-type]

    def _server_limits(self) -> Limits:
        """Each server in its own cgroup, with the run's memory and process limits (or
        watched); remove() after the scoring."""
        return run_limits(memory=self.mem_limit, processes=self.goal.spec.max_processes,
                          fsize=self.output_limit, nest=True, watch=True)

    def _server_wrap(self, out_dir: Path, limits: Limits) -> Callable[[Sequence[str]], list[str]]:
        """How the evaluator's servers for the checkpoint in `out_dir` are started: limited,
        confined, seeing the model code and that checkpoint, never the corpus."""
        confined = self.evaluator_confinement.with_paths(readable=[self.ws.path, out_dir])
        env = self._server_environ(out_dir)
        return lambda argv: limits.wrap(confined.wrap(argv, env))

    def _server_environ(self, out_dir: Path) -> dict[str, str]:
        """The servers' environment: their thread count fixed (THREADS), not the machine's
        load of the moment, so the fork servers begun at the head start fit the first scoring;
        their allocator set for forward passes (ALLOCATOR_ENV)."""
        return run_environ(time_budget=self.goal.spec.budget.grace, seed=0, output_dir=out_dir,
                           threads=THREADS, passed=self.goal.spec.env, extra=ALLOCATOR_ENV)

    def _warm_servers(self) -> None:
        """Start the next run's servers now, if that run will be warm-started (sandbox.warm)."""
        warm = self.ws.warm
        if self.kind == EVALUATOR and warm is not None and warm.warm is not None:
            limits = self._server_limits()
            self.servers.prepare(warm.warm.staging, self._server_wrap(warm.warm.staging, limits),
                                 limits, self._shared_view(warm.outputs))

    def _shared_view(self, outputs: Path) -> SharedView:
        """What the fork servers of the evaluator's servers see: every run's output directory."""
        confined = self.evaluator_confinement.with_paths(readable=[self.ws.path, outputs])
        return SharedView(confined, self._server_environ(outputs), outputs)

    def close(self) -> None:
        """Stop the servers started for a run that will not come."""
        self.servers.close()

    def _evaluator(self, repeat: int, test_if: Callable[[float], bool] | None
                   ) -> tuple[float | None, float | None, str]:
        """(val_bpb, test_bpb or None, why it failed), in one session of the logits servers."""
        from bitnet import logits_server
        from bitnet.score import ScoreError, score_checkpoint

        out_dir = self.ws.output_dir(self.ws.current["exp"], repeat)  # type: ignore[index]
        staging = self.ws.warm.ran_in if self.ws.warm is not None else None
        taken = (self.servers.take(staging, self.ws.path)
                 if staging is not None else None)
        if taken is None and self.ws.warm is not None:  # forked now, where forking is used
            limits = self._server_limits()
            self.servers.prepare(out_dir, self._server_wrap(out_dir, limits), limits,
                                 self._shared_view(self.ws.warm.outputs), now=True)
            taken = self.servers.take(out_dir, self.ws.path)
            if taken is None:
                limits.remove()
        if taken is not None:  # started for this run's checkpoint, under these limits
            server, limits = taken
        else:
            limits = self._server_limits()
            server = self._server_wrap(out_dir, limits)(
                logits_server.command(out_dir, self.ws.path))
        try:
            score = score_checkpoint(self.validation, out_dir, server,
                                     timeout=self.goal.spec.budget.grace,
                                     test=self.corpus.test, test_if=test_if,
                                     causal_windows=CAUSAL_WINDOWS,
                                     # the controller's copy, not the one the run saved
                                     tokenizer=self._scoring_tokenizer())
        except ScoreError as err:
            over = (f" (its model code ran past the memory limit of "
                    f"{(self.mem_limit or 0) / 2**20:.0f} MiB)" if limits.oom_kills() else "")
            return None, None, f"the evaluator could not score the checkpoint{over}: {err}"
        finally:
            limits.remove()
        return score.val_bpb, score.test_bpb, ""


    def _scoring_tokenizer(self) -> Any:
        """The tokenizer the run in flight was given (bitnet.tokenizer.TextTokenizer): the
        evaluator scores with it, so a checkpoint saved with another is not scored."""
        tokenizer = self._run_tokenizer or self.tokenizer()
        return tokenizer.tokenizer if tokenizer is not None else None


def _corpus_paths(corpus: str | None) -> list[Path]:
    """What a template's runs read of a corpus: the folder of its training split alone."""
    if corpus is None:
        return []
    from bitnet.data import load_corpus, train_dir

    return [train_dir(load_corpus(corpus))]


def _held_out_paths(corpus: str | None) -> list[Path]:
    """What no experiment code may read of a corpus: the cache (validation and test bytes),
    then a text corpus's own files."""
    if corpus is None:
        return []
    from bitnet.data import default_cache_dir

    text = [Path(corpus.removeprefix("text:")).expanduser()] if corpus.startswith("text:") else []
    return [default_cache_dir(), *text]

