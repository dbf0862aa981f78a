"""`merge_specialists`: this run's best checkpoint merged with another specialist of the same
base, and the table of what it cost, as `magnet-agent merge` makes them (agent.merging.merge_run).

"This run's best" is what `RUN` means to export and merge (tools.base.standing_exp): its best
kept experiment, else its first baseline run. The base is the run's own copy of its `init:`
checkpoint (runs/<id>/init/); everything is written into the call's folder, and merge.json,
written last, marks a finished merge: a call re-run after a crash returns it instead of merging
again, and clears what a cut-off attempt left otherwise.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import ConfigDict, Field

from agent.goal.spec import MergeSettings
from agent.merging.merge_run import (
    OUTPUTS,
    SUMMARY_FILE,
    merge_and_report,
    merge_errors,
    plan_merge,
)
from agent.rundir.init_checkpoint import init_dir
from agent.tools.base import (
    Tool,
    ToolArgs,
    ToolContext,
    ToolError,
    as_tool_errors,
    standing_exp,
)
from sandbox.removal import remove_path

MergeMethod = MergeSettings.model_fields["method"].annotation  # the goal's methods, one list
Options = dict[str, float | int | bool | list[float]]  # `weights` is one number per model


class MergeArgs(ToolArgs):
    model_config = ConfigDict(populate_by_name=True)  # `with` is a Python keyword: with_

    with_: str | None = Field(default=None, alias="with", min_length=1, description=(
        "the specialist to merge this run's best with: RUN (its best), RUN:EXP or a checkpoint "
        "directory, trained from the same base; default: the goal's merge.with"))
    method: MergeMethod | None = Field(default=None, description=(  # type: ignore[valid-type]
        "linear, task_arithmetic, ties or dare; default: the goal's merge.method"))
    options: Options | None = Field(default=None, description=(
        "the method's options: weights (one per model: this run's best, then `with`), lam, "
        "density, drop_rate, seed, sign_election; default: the goal's merge.options"))


def merge_specialists(ctx: ToolContext, args: MergeArgs) -> dict[str, Any]:
    settings = ctx.goal.spec.merge
    specialist = args.with_ or (settings.with_ if settings else None)
    if specialist is None:
        raise ToolError("no specialist to merge with: pass `with` (RUN, RUN:EXP or a checkpoint "
                        "directory) or set `merge: {with: ...}` in the goal")
    if ctx.goal.spec.init is None:
        raise ToolError("the goal has no `init:`, so this run is no specialist of a base; set "
                        "`init:` to the base checkpoint both specialists were trained from")
    method = args.method or (settings.method if settings else
                             MergeSettings.model_fields["method"].default)
    options = args.options if args.options is not None else (settings.options if settings
                                                              else {})
    out_dir = ctx.out_dir
    if not (out_dir / SUMMARY_FILE).is_file():  # not finished by an earlier try of this call
        own = f"{ctx.run_dir.name}:{standing_exp(ctx, 'no checkpoint to merge'):03d}"
        with as_tool_errors(merge_errors()):
            plan = plan_merge(str(init_dir(ctx.run_dir)), [own, specialist],
                              runs_dir=ctx.runs_dir)
            _clear(out_dir)
            merge_and_report(plan, method, dict(options), out_dir, console=ctx.console)
    return _result(json.loads((out_dir / SUMMARY_FILE).read_text()), out_dir)


def _result(summary: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    """What the planner reads: the table as markdown, and each row's val_bpb by corpus."""
    from merge.table import BpbTable

    table = summary["table"]
    rows = [dict(zip(table["corpora"], row, strict=True)) for row in table["val_bpb"]]
    markdown = BpbTable(tuple(table["models"]), tuple(table["corpora"]),
                        tuple(tuple(row) for row in table["val_bpb"])).markdown()
    merged = ", ".join(f"{v:.4f} on {corpus}" for corpus, v in rows[-1].items())
    return {"summary": f"{summary['method']} merge of {len(rows) - 2} specialists: merged "
                       f"val_bpb {merged}; checkpoint {summary['checkpoint']}",
            "method": summary["method"], "options": summary["options"], "table": markdown,
            "merged": rows[-1], "base": rows[0],
            "specialists": [{"ref": s["ref"], "corpus": s["corpus"], "val_bpb": row}
                            for s, row in zip(summary["specialists"], rows[1:-1], strict=True)],
            "checkpoint": summary["checkpoint"], "out_dir": str(out_dir),
            "files": sorted(name for name in OUTPUTS if (out_dir / name).exists())}


def _clear(out_dir: Path) -> None:
    """Remove what an attempt cut off before merge.json left (a half-written checkpoint)."""
    for name in [*OUTPUTS, f"{SUMMARY_FILE}.tmp"]:
        remove_path(out_dir / name)


MERGE_SPECIALISTS = Tool(
    name="merge_specialists",
    description=(
        "Merge this run's best checkpoint with another specialist trained from the same base "
        "(linear, task arithmetic, TIES or DARE on the latent weights) and evaluate val_bpb of "
        "the base, each specialist and the merge on each specialist's corpus. Returns the table; "
        "the merged checkpoint is saved. Call it after an improvement is kept, to see whether "
        "the two specialists' skills combine."),
    args=MergeArgs,
    run=merge_specialists,
)
