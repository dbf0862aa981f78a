"""A small text corpus for the tokenizer tests (tests/bitnet/test_tokenizer.py and
tests/agent/test_tokenizer_train.py): 48 documents of Python's own prose and code, ~300 KB, so a
BPE trains on it in well under a second and a template run trains on it in seconds. Written by
the test into its own folder (outside the interpreter's, so the corpus is sealed), with a word
that only its validation and test documents hold: no tokenizer may learn it."""

from __future__ import annotations

import sysconfig
from pathlib import Path

from bitnet.data import split_of

SOURCES = ("argparse.py", "textwrap.py", "difflib.py", "shutil.py", "pathlib.py", "tempfile.py",
           "csv.py", "heapq.py", "bisect.py", "string.py", "fractions.py", "calendar.py")
DOCS = 48
HELD_OUT_WORD = "Zyxwvq"  # in validation and test documents only, many times each
VOCAB = 512  # the smallest trained tokenizer (bitnet.tokenizer.BPE_RANGE)


def write_corpus(folder: Path) -> Path:
    """The corpus's files in `folder` (made); returns it. Every document is a slice of the
    sources, so the training split has the same kind of text as the held-out ones."""
    folder.mkdir(parents=True, exist_ok=True)
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    text = "".join((stdlib / name).read_text(encoding="utf-8") for name in SOURCES)
    size = len(text) // DOCS
    for i in range(DOCS):
        name = f"doc{i:02d}.py"
        doc = text[i * size:(i + 1) * size]
        if split_of(name) != "train":
            doc += f"\n# {HELD_OUT_WORD} " * 200
        (folder / name).write_text(doc, encoding="utf-8")
    return folder
