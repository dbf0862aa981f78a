"""MAGNET sandbox: git workspaces, safe edits and confined training runs.

    ws = Workspace.create("runs/r1", template="bitnet-lm", editable=["train.py"])
    ws.begin(1, "raise the learning rate")
    ws.apply([SearchReplace("train.py", "LEARNING_RATE = 4e-3", "LEARNING_RATE = 6e-3")])
    ws.commit()
    result = ws.run("python train.py", time_budget=60, metric="val_bpb")
    if result.status == "ok":
        ws.keep(1, {"metric": result.metrics["val_bpb"]}, best=True)
    else:
        ws.discard(1, {"error": result.log_tail}, status=result.status)

After a crash, `Workspace.open("runs/r1")` restores a consistent state; `ws.recovered` says
what happened to the unfinished experiment. `RunReader("runs/r1")` reads a run (diffs, notes,
history, logs) without opening it, so it is safe on a live run.
"""

from sandbox.edits import Edit, KnobSet, SearchReplace, apply_edits, parse_edit
from sandbox.env import run_environ, scrubbed_environ
from sandbox.errors import EditError, GitError, SandboxError, TemplateError, WorkspaceError
from sandbox.knobs import KnobSpec, parse_knobs
from sandbox.layout import BASELINE_TAG, BEST_TAG, NOTES_REF, exp_ref
from sandbox.metrics import parse_metric_lines, read_metrics_json
from sandbox.paths import resolve_editable
from sandbox.reader import RunReader
from sandbox.runner import STATUSES, RunLimits, RunResult, kill_group, run_command
from sandbox.templates import copy_template, known_templates, template_dir
from sandbox.workspace import Recovery, Workspace

__all__ = [
    "BASELINE_TAG",
    "BEST_TAG",
    "NOTES_REF",
    "STATUSES",
    "Edit",
    "EditError",
    "GitError",
    "KnobSet",
    "KnobSpec",
    "Recovery",
    "RunLimits",
    "RunReader",
    "RunResult",
    "SandboxError",
    "SearchReplace",
    "TemplateError",
    "Workspace",
    "WorkspaceError",
    "apply_edits",
    "copy_template",
    "exp_ref",
    "kill_group",
    "known_templates",
    "parse_edit",
    "parse_knobs",
    "parse_metric_lines",
    "read_metrics_json",
    "resolve_editable",
    "run_command",
    "run_environ",
    "scrubbed_environ",
    "template_dir",
]
