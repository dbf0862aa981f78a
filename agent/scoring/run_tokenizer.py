"""The tokenizer a template experiment trains with: its train.py's TOKENIZER, read as written.

The constant is read as a literal (ast, never by running the file: it is untrusted code). A
"bpe:N" tokenizer is trained on the run's corpus's training split first if it does not exist
yet (bitnet.tokenizer.ensure_tokenizer: outside the run's time budget, with progress), and the
run gets its folder in bitnet.tokenizer.TOKENIZER_ENV. The byte tokenizer needs no folder, so a
"bytes" run gets exactly the environment it got before tokenizers existed.

What the controller read is what the evaluator scores with (its trusted copy of the tokenizer,
not the one the checkpoint carries) and what the replay facts record (spec and fingerprint): a
run that trains with anything else (a TOKENIZER computed at run time, say) is not scored. A
value that is no literal, or no valid spec, gets no folder: the template then stops on it
with its own one-line message.
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CONSTANT = "TOKENIZER"
SCRIPT = "train.py"  # the template's script, where the constant lives
BYTES = "bytes"  # bitnet.tokenizer.BYTES (not imported here: numpy, tokenizers)


def declared_tokenizer(workspace: Path) -> str | None:
    """The TOKENIZER of the workspace's train.py as records spell it ("bytes", "bpe:N");
    "bytes" where train.py has no such constant; None where it is not one plain, valid
    literal assigned once at the top level (the run is then left to fail on it)."""
    from bitnet.tokenizer import TokenizerError, canonical_spec

    try:
        tree = ast.parse((workspace / SCRIPT).read_bytes())
    except (OSError, SyntaxError, ValueError):
        return None  # no script, or one that does not compile: the run says why
    values = [node.value for node in tree.body
              if isinstance(node, ast.Assign | ast.AnnAssign) and node.value is not None
              and any(isinstance(t, ast.Name) and t.id == CONSTANT
                      for t in (node.targets if isinstance(node, ast.Assign) else [node.target]))]
    if not values:
        return BYTES
    if len(values) > 1:
        return None
    try:
        return canonical_spec(ast.literal_eval(values[0]))
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError, TokenizerError):
        return None


@dataclass(frozen=True)
class RunTokenizer:
    """The tokenizer of a run: its spec, its folder (None: the byte tokenizer) and itself."""

    spec: str
    folder: Path | None
    tokenizer: Any  # bitnet.tokenizer.TextTokenizer

    def env(self) -> dict[str, str]:
        from bitnet.tokenizer import TOKENIZER_ENV

        return {TOKENIZER_ENV: str(self.folder)} if self.folder is not None else {}

    def facts(self) -> dict[str, str]:
        """What the replay facts record of it (and a replay checks): spec, fingerprint and, for
        a trained one, the `tokenizers` release that trained it."""
        facts = {"spec": self.spec, "sha256": self.tokenizer.fingerprint}
        if self.folder is not None:
            from bitnet.tokenizer import read_meta

            facts["tokenizers"] = str((read_meta(self.folder) or {}).get("tokenizers"))
        return facts


def run_tokenizer(corpus: str, workspace: Path,
                  on_line: Callable[[str], None] | None = None) -> RunTokenizer:
    """The run's tokenizer as the workspace declares it, trained first where it must be (each
    step reported through `on_line`); the byte tokenizer where it declares none it can read."""
    from bitnet.tokenizer import byte_tokenizer, load_tokenizer, read_meta, tokenizer_dir

    spec = declared_tokenizer(workspace)
    if spec is None or spec == BYTES:
        return RunTokenizer(BYTES, None, byte_tokenizer())
    from bitnet.data import load_corpus
    from bitnet.tokenizer import ensure_tokenizer

    trains = read_meta(tokenizer_dir(load_corpus(corpus), spec)) is None
    if trains and on_line is not None:
        on_line(f"training tokenizer {spec} on {corpus}'s training split (once; not timed)")
    folder = ensure_tokenizer(corpus, spec, progress=_every_tenth(on_line)
                              if trains and on_line is not None else None)
    assert folder is not None
    if trains and on_line is not None:
        on_line(describe(folder))
    return RunTokenizer(spec, folder, load_tokenizer(folder))


def _every_tenth(on_line: Callable[[str], None]) -> Callable[[str, float], None]:
    """A progress callback that reports each phase at every tenth of the way."""
    shown: set[tuple[str, int]] = set()

    def progress(what: str, done: float) -> None:
        tenth = int(done * 10)
        if (what, tenth) not in shown:
            shown.add((what, tenth))
            on_line(f"  {what}: {tenth * 10}%")

    return progress


def ensure_shown(corpus: str, spec: str, console: Any) -> Path | None:
    """ensure_tokenizer with a progress bar on `console` (a rich Console); None for the byte
    tokenizer. RunError (one line) when the corpus or the tokenizer cannot be made."""
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

    from agent.rundir.runs import RunError
    from bitnet.corpus_errors import CorpusError
    from bitnet.tokenizer import TokenizerError, ensure_tokenizer

    try:
        with Progress(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
                      TimeElapsedColumn(), console=console, transient=True) as bar:
            task = bar.add_task(f"tokenizer {spec}", total=1.0)

            def progress(what: str, done: float) -> None:
                bar.update(task, description=f"tokenizer {spec}: {what}", completed=done)

            folder = ensure_tokenizer(corpus, spec, progress=progress)
    except (CorpusError, TokenizerError) as err:
        raise RunError(str(err)) from None
    return folder


def describe(folder: Path) -> str:
    """One line on a stored tokenizer: spec, entries, fingerprint, what it made of the split."""
    from bitnet.tokenizer import read_meta

    meta = read_meta(folder) or {}
    per_token = meta.get("train_bytes", 0) / max(1, meta.get("train_tokens", 0))
    return (f"tokenizer {meta.get('spec')} on {meta.get('corpus')}: "
            f"{meta.get('vocab_size', 0):,} entries, fingerprint "
            f"{str(meta.get('fingerprint'))[:12]}, training split {meta.get('train_bytes', 0):,} "
            f"bytes -> {meta.get('train_tokens', 0):,} tokens ({per_token:.2f} bytes/token), "
            f"trained in {meta.get('seconds', 0):.1f} s; {folder}")
