"""A synthetic corpus on a topic, written by a teacher model (agent.teacher.models) within a
byte and a time budget.

    out_dir/
      corpus/<sha256[:20]>.txt   one accepted document per file, named by its bytes' hash
      subtopics.json             the teacher's list of sub-topics, asked for once
      progress.json              requests made and rejections so far (updated every batch)
      report.json                what the last call returned

The corpus is `text:<out_dir>/corpus`. bitnet.data splits a folder by file, putting a file in
validation or test when the sha256 of its relative path falls in 5 (and 5 other) of 100 buckets
(`split_of`), so a document's split is fixed by its own name: adding documents never moves one
between training, validation and test.

Prompts vary so a small model does not repeat itself: each asks for one of STYLES (tutorial,
reference, common mistakes...) about one focus (the topic, or one of the sub-topics the teacher
listed first), with its own seed. Each reply is cleaned, filtered and deduplicated against
every document kept so far (agent.teacher.quality) before it is written.

Resumable: a call on an out_dir that holds documents (a previous call cut off by a crash, or
one with a smaller budget) reads them into the deduplicator, counts them towards `max_bytes`
and continues with the next request number, so nothing written is lost or written twice.
A document is written to a hidden temporary file and renamed, so a crash never leaves half of
one in the corpus.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn

from agent.teacher.models import BatchTeacher, Teacher, TeacherError
from agent.teacher.quality import REASONS, Deduplicator, Rejection, quality_rejection
from bitnet.data import split_of

CORPUS_DIR = "corpus"
SUFFIX = ".txt"
SUBTOPICS_FILE = "subtopics.json"
PROGRESS_FILE = "progress.json"
REPORT_FILE = "report.json"
MAX_TOKENS = 400  # per document: ~1.5 kB; a small model drifts or loops in longer replies
MIN_TOKENS = 64  # asked for even when the time left is shorter: ~250 characters, above MIN_CHARS
CHARS_PER_TOKEN = 4  # English in BPE tokenizers, roughly: only used to pace requests
SUBTOPICS = 10  # asked for (at most this many kept); fewer are fine: the topic is a focus too
STYLES = (
    "Explain {focus} to a beginner, step by step.",
    "Write a textbook section about {focus}, with a short example.",
    "Write a tutorial about {focus} that walks through a worked example.",
    "Describe common mistakes people make with {focus} and how to avoid them.",
    "Write a question a student might ask about {focus}, then answer it in detail.",
    "Write reference documentation for {focus}: what it is for, how to use it, and what to "
    "watch out for.",
    "Summarise the key ideas of {focus} as a list of points, each explained in a few sentences.",
    "Write a short, precise lesson about {focus} for an expert reader.",
    "Compare two ways of approaching {focus} and explain when to use each.",
    "Write an encyclopedia-style article about {focus}.",
)
_ASCII_PUNCTUATION = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"',
                                   "\u2013": "-", "\u2014": "--", "\u2026": "...",
                                   "\u00a0": " "})
_LIST_ITEM = re.compile(r"^\s*(?:\d+[.)]|[-*\u2022])\s+(.+?)\s*$")


def corpus_spec(out_dir: Path) -> str:
    """The corpus spec training takes (`corpus:` of a goal, `--corpus` of train and merge)."""
    return f"text:{(out_dir / CORPUS_DIR).resolve()}"


def generate_corpus(teacher: Teacher, topic: str, out_dir: Path, *, max_bytes: int,
                    seconds: float, seed: int = 0, console: Console | None = None,
                    max_tokens: int = MAX_TOKENS) -> dict[str, Any]:
    """Have `teacher` write documents on `topic` into `out_dir/corpus/` until the corpus holds
    `max_bytes` (the last document may pass it) or `seconds` have passed. The time is checked
    between requests, and each request asks for no more tokens than the teacher's pace so far
    fits into the time left (at least MIN_TOKENS). Returns the report (also `report.json`).

    TeacherError (one line) when the teacher fails, or writes nothing usable in the budget."""
    if max_bytes < 1 or not seconds > 0 or not topic.strip():
        raise ValueError("generate_corpus needs a topic, max_bytes >= 1 and seconds > 0")
    started = time.monotonic()
    pace = _Pace(deadline=started + seconds)
    progress = _read_json(out_dir / PROGRESS_FILE) or {"topic": topic, "requests": 0,
                                                       "rejected": {}}
    if progress.get("topic") != topic:
        raise ValueError(f"{out_dir} holds a corpus on {progress.get('topic')!r}, not "
                         f"{topic!r}; write to another folder or continue that topic")
    first_request = requests = int(progress["requests"])
    rejected = Counter({str(k): int(v) for k, v in progress["rejected"].items()})
    examples: dict[str, str] = {}  # the first rejection of each reason in this call, explained
    kept = _Documents(out_dir / CORPUS_DIR)
    resumed = len(kept.sizes)
    batch = teacher.batch_size if isinstance(teacher, BatchTeacher) else 1

    with _progress_bar(console, max_bytes, teacher.name) as show:
        show(kept.bytes, len(kept.sizes), sum(rejected.values()))
        focuses = [topic]
        if kept.bytes < max_bytes:
            focuses += _subtopics(teacher, topic, out_dir, seed, pace)
        while kept.bytes < max_bytes:
            if requests > first_request and time.monotonic() >= pace.deadline:
                break  # checked after this call's first batch, so every call makes one
            prompts = [prompt_for(topic, focuses, seed, requests + k) for k in range(batch)]
            for reply in pace.timed(_write, teacher, prompts, pace.tokens(max_tokens),
                                    _request_seed(seed, requests)):
                requests += 1
                if (rejection := kept.offer(clean(reply))) is not None:
                    rejected[rejection.reason] += 1
                    examples.setdefault(rejection.reason, rejection.detail)
                elif kept.bytes >= max_bytes:
                    break  # the rest of the batch is not needed
            _write_json(out_dir / PROGRESS_FILE, {"topic": topic, "requests": requests,
                                                  "rejected": rejected})
            show(kept.bytes, len(kept.sizes), sum(rejected.values()))

    report = {
        "corpus": corpus_spec(out_dir), "topic": topic, "teacher": teacher.name,
        "bytes": kept.bytes, "documents": len(kept.sizes),
        "val_documents": sum(split_of(name) == "val" for name in kept.sizes),
        "test_documents": sum(split_of(name) == "test" for name in kept.sizes),
        # requests and rejections count every call on this folder; seconds are this call's
        "resumed_documents": resumed, "requests": requests,
        "rejected": {reason: rejected[reason] for reason in REASONS if rejected[reason]},
        "rejected_for_example": examples,
        "seconds": round(time.monotonic() - started, 1),
        "stopped_by": "bytes" if kept.bytes >= max_bytes else "time",
    }
    _write_json(out_dir / REPORT_FILE, report)
    if len(kept.sizes) == resumed and report["stopped_by"] == "time":
        why = ", ".join(f"{n} {reason}" for reason, n in report["rejected"].items())
        raise TeacherError(f"the teacher {teacher.name} wrote nothing usable in "
                           f"{report['seconds']:g} s ({why or 'no replies'}); try a larger "
                           "teacher model, a more specific topic or a longer budget")
    return report


def prompt_for(topic: str, focuses: list[str], seed: int, request: int) -> str:
    """The prompt of request number `request`: styles in turn, a focus drawn by the seed."""
    style = STYLES[request % len(STYLES)]
    focus = random.Random(f"{seed}:{request}").choice(focuses)
    prompt = style.format(focus=focus)
    return prompt if focus == topic else f"{prompt} (The subject is {topic}.)"


def clean(reply: str) -> str:
    """The reply as a document: typographic punctuation as ASCII (what code and most technical
    text use, one byte each for a byte-level model), Unix line ends, no trailing spaces, one
    final newline."""
    text = reply.translate(_ASCII_PUNCTUATION).replace("\r\n", "\n").replace("\r", "\n")
    text = "\n".join(line.rstrip() for line in text.split("\n")).strip()
    return f"{text}\n" if text else ""


def parse_subtopics(reply: str, topic: str) -> list[str]:
    """The list items of a reply (numbered or bulleted), 2-15 words each, without repeats or the
    topic itself."""
    found: dict[str, str] = {}
    for line in reply.splitlines():
        match = _LIST_ITEM.match(line)
        if not match:
            continue
        item = match.group(1).strip(" *_`\"'").rstrip(".:;")
        if 2 <= len(item.split()) <= 15 and item.casefold() != topic.casefold():
            found.setdefault(item.casefold(), item)
    return list(found.values())


def _subtopics(teacher: Teacher, topic: str, out_dir: Path, seed: int,
               pace: _Pace) -> list[str]:
    """The teacher's sub-topics, asked for once and kept in subtopics.json (a resumed call uses
    the same focuses)."""
    path = out_dir / SUBTOPICS_FILE
    saved = _read_json(path)
    if isinstance(saved, list):
        return [str(item) for item in saved]
    ask = f"Give a numbered list of {SUBTOPICS} short sub-topics of: {topic}"
    reply, = pace.timed(_write, teacher, [ask], pace.tokens(16 * SUBTOPICS), seed)
    found = parse_subtopics(reply, topic)[:SUBTOPICS]
    _write_json(path, found)
    return found


def _write(teacher: Teacher, prompts: list[str], max_tokens: int, seed: int) -> list[str]:
    if isinstance(teacher, BatchTeacher):
        return teacher.write_batch(prompts, max_tokens=max_tokens, seed=seed)
    return [teacher.write(p, max_tokens=max_tokens, seed=seed + i) for i, p in enumerate(prompts)]


class _Pace:
    """The teacher's speed in its latest call, to fit the next request into the time left: the
    bundled model writing four 400-token replies at once takes a minute or more on two busy
    cores, which the end of a short budget has not got."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline  # time.monotonic() at the end of the budget
        self.tokens_per_second: float | None = None  # unknown until a call has been timed

    def tokens(self, most: int) -> int:
        if self.tokens_per_second is None:
            return most
        left = self.deadline - time.monotonic()
        return max(MIN_TOKENS, min(most, int(left * self.tokens_per_second)))

    def timed(self, write: Callable[..., list[str]], *args: Any) -> list[str]:
        """`write(*args)`, timed."""
        began = time.monotonic()
        replies = write(*args)
        took = time.monotonic() - began
        longest = max(map(len, replies), default=0)  # a batch takes as long as its longest
        if took > 0 and longest:
            self.tokens_per_second = longest / CHARS_PER_TOKEN / took
        return replies


def _request_seed(seed: int, request: int) -> int:
    """A distinct, reproducible sampling seed per request (and per run seed)."""
    return (seed * 1_000_003 + request) % 2**31


class _Documents:
    """The documents in a corpus folder: each one's size, and a deduplicator that has seen all."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob(".tmp-*"):  # a crash in the middle of writing one
            stale.unlink(missing_ok=True)
        self.dedup = Deduplicator()
        self.sizes: dict[str, int] = {}  # file name -> bytes
        for path in sorted(folder.glob(f"*{SUFFIX}")):
            text = path.read_text(encoding="utf-8")
            self.dedup.add(text)
            self.sizes[path.name] = len(text.encode("utf-8"))

    @property
    def bytes(self) -> int:
        return sum(self.sizes.values())

    def offer(self, text: str) -> Rejection | None:
        """Keep `text` (written under its content hash, atomically), or say why not."""
        if (rejection := quality_rejection(text) or self.dedup.check(text)) is not None:
            return rejection
        data = text.encode("utf-8")
        name = hashlib.sha256(data).hexdigest()[:20] + SUFFIX
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=self.folder)  # hidden: bitnet.data skips
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, self.folder / name)
        self.dedup.add(text)
        self.sizes[name] = len(data)
        return None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
    os.replace(tmp, path)


@contextmanager
def _progress_bar(console: Console | None, max_bytes: int, teacher: str) -> Iterator[Any]:
    """A callable show(bytes, documents, rejected): a rich progress bar, or nothing when quiet."""
    if console is None:
        yield lambda *_: None
        return
    with Progress(TextColumn(f"[bold]{teacher}[/] writing"), BarColumn(), DownloadColumn(),
                  TextColumn("{task.fields[documents]} documents, {task.fields[rejected]} "
                             "rejected"), TimeElapsedColumn(), console=console) as progress:
        task = progress.add_task("", total=max_bytes, documents=0, rejected=0)

        def show(size: int, documents: int, rejected: int) -> None:
            progress.update(task, completed=min(size, max_bytes), documents=documents,
                            rejected=rejected)
        yield show
