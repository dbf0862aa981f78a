"""`magnet-agent generate-data TOPIC`: a teacher model writes a synthetic corpus for a person.

    magnet-agent generate-data "SQL query optimisation" --bytes 500000 --seconds 1800
    magnet-agent train --corpus text:data/sql-query-optimisation/corpus

The same generation as the agent's `generate_data` tool (agent.teacher.corpus) with the same
bounds (agent.tools.data_tool.GenerateDataArgs). Running the same command again continues the
corpus in the same folder. `add_commands(commands)` registers it on the CLI's subparsers and
`main(args)` runs it; only argparse is imported until it runs.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from agent.cli import options
from agent.cli.errors import USAGE, fail

COMMANDS = ("generate-data",)


def add_commands(commands: options.Subparsers) -> None:
    parser = commands.add_parser(
        "generate-data", help="a teacher model writes a filtered, deduplicated corpus on a topic "
                      "(text:PATH, with its own validation split)")
    parser.add_argument("topic", help="what the corpus is about, e.g. 'SQL query optimisation'")
    parser.add_argument("--bytes", type=int, default=200_000, metavar="N",
                        help="corpus size to reach (default 200000)")
    parser.add_argument("--seconds", type=float, default=300.0, metavar="S",
                        help="time budget (default 300); stops at whichever budget comes first")
    parser.add_argument("--out", metavar="DIR",
                        help="where to write (default ./data/TOPIC-SLUG); an existing one is "
                             "continued")
    parser.add_argument("--teacher", default="local", metavar="local|MODEL",
                        help="the bundled model (default), or a model name served at "
                             "OPENAI_BASE_URL / by OpenAI with OPENAI_API_KEY")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def default_out_dir(topic: str) -> Path:
    slug = re.sub(r"[^a-z0-9]+", "-", topic.lower()).strip("-")[:60].rstrip("-")
    return Path("data") / (slug or "topic")


def main(args: argparse.Namespace) -> int:
    """0 when the corpus was written; 1 when the teacher failed; 2 for bad input."""
    from pydantic import ValidationError
    from rich.console import Console

    from agent.teacher.corpus import generate_corpus
    from agent.teacher.models import TeacherError, make_teacher
    from agent.tools.data_tool import GenerateDataArgs, use_hint

    try:
        checked = GenerateDataArgs(topic=args.topic, bytes=args.bytes, seconds=args.seconds)
    except ValidationError as err:
        first = err.errors()[0]
        name = str(first["loc"][0]) if first["loc"] else "input"
        return fail(f"{name if name == 'topic' else '--' + name}: {first['msg']} "
                    f"(got {first.get('input')!r})", USAGE)
    out = Path(args.out) if args.out else default_out_dir(checked.topic)
    console = Console(highlight=False, stderr=args.json)  # --json: stdout is the document
    try:
        teacher = make_teacher(args.teacher)
        report = generate_corpus(teacher, checked.topic, out, max_bytes=checked.bytes,
                                 seconds=checked.seconds, seed=args.seed, console=console)
    except ValueError as err:
        return fail(str(err), USAGE)
    except TeacherError as err:
        return fail(str(err), 1)
    except KeyboardInterrupt:
        print(f"stopped; the same command continues the corpus in {out}", file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps(report, indent=1))
        return 0
    rejected = ", ".join(f"{n} {reason}" for reason, n in report["rejected"].items()) or "none"
    console.print(f"{report['documents']} documents, {report['bytes']:,} bytes "
                  f"({report['val_documents']} for validation, {report['test_documents']} "
                  f"for test), stopped by {report['stopped_by']} after {report['seconds']:g} s; "
                  f"rejected: {rejected}",
                  soft_wrap=True)
    console.print(f"corpus: {report['corpus']}\n{use_hint(report['corpus'])}", markup=False,
                  soft_wrap=True)
    return 0
