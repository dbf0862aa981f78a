"""The `generate_data` tool: a teacher model writes a synthetic corpus on a topic.

The teacher is the goal's `teacher: {model: ...}` (`local`, the bundled model, by default). The
corpus goes into this call's own folder (ToolContext.out_dir), so a call resumed after a crash
continues the documents it had written (agent.teacher.corpus).
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from agent.teacher.corpus import generate_corpus
from agent.teacher.models import TeacherError, make_teacher
from agent.tools.base import Tool, ToolArgs, ToolContext, ToolError


class GenerateDataArgs(ToolArgs):
    topic: str = Field(min_length=1, max_length=200,
                       description="what the corpus is about, e.g. 'SQL query optimisation, "
                                   "explained with examples'")
    bytes: int = Field(default=200_000, ge=1_000, le=50_000_000,
                       description="size of the corpus to write, in bytes")
    seconds: float = Field(default=300.0, ge=1, le=3600,
                           description="time budget; generation stops at whichever budget "
                                       "is reached first")


def use_hint(corpus: str) -> str:
    """How to train on the corpus, in one line."""
    return (f"train on it with `corpus: {corpus}` in a goal, `magnet-agent train --corpus "
            f"{corpus}`, or score a merge on it with `magnet-agent merge --corpus {corpus}`")


def generate_data(ctx: ToolContext, args: GenerateDataArgs) -> dict[str, Any]:
    try:
        teacher = make_teacher(ctx.goal.spec.teacher.model)
        report = generate_corpus(teacher, args.topic, ctx.out_dir, max_bytes=args.bytes,
                                 seconds=args.seconds, seed=ctx.call, console=ctx.console)
    except (TeacherError, ValueError) as err:
        raise ToolError(str(err)) from None
    return {**report, "use": use_hint(report["corpus"])}


GENERATE_DATA = Tool(
    name="generate_data",
    description=(
        "Have the goal's teacher model write a synthetic training corpus on a topic, "
        "filtered (length, language, repetition) and deduplicated, within a size and a time "
        "budget. Returns the corpus spec (text:PATH, with its own fixed validation split), its "
        "size, the rejections by reason and how to train on it. Call it when the run needs "
        "more or more specific training text than its corpus has."),
    args=GenerateDataArgs,
    run=generate_data,
)
