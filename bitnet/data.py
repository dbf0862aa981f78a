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

Splits, by file (``split_of``): ``sha256(relative path)`` picks one of 100 buckets; 5 are
validation (what the researcher's decisions are taken on), 5 others test (held out: scored
only for the report, never shown to a planner), the rest training. So the splits do not depend
on the run, the seed or the other files. When that leaves a split empty (e.g. a single file),
the byte stream is cut instead: validation and test are its last two tenths.

Fingerprints: a corpus is identified by the sha256 of its bytes: ``train_sha256``,
``val_sha256`` and ``test_sha256`` of each split (hex), and ``sha256`` of all three, which is
``sha256(b"train:" + train_sha256 + b"\nval:" + val_sha256 + b"\ntest:" + test_sha256)``
over the ASCII hex digests (``corpus_sha256``). Two machines hold the same corpus exactly when
these agree.

Sealed: experiments see the training split only (``train_dir``: a folder holding nothing else,
the one path of the cache bound into the sandbox, read by ``load_train``). That seals the
validation and test bytes unless the experiment can read the same files another way:
``pycode``/``pyprose`` are the standard library, which the interpreter itself reads, and so is a
``text:PATH`` inside the interpreter's or MAGNET's own folders (``sealed``, ``unsealed_reason``).

Cache: in ``<cache_dir>/<source>-<key>/``, ``train/train.bin`` with ``train/meta.json`` (the
spec, the training fingerprint and size: all an experiment may see), ``val.bin``, ``test.bin``
and ``meta.json`` (all fingerprints, computed once at build); the ``.bin`` files are raw uint8,
opened as read-only memmaps. The key covers ``_FORMAT`` and, for the stdlib and text corpora,
the file list (paths, sizes, mtimes) and the Python version, so a changed file means a rebuild
(the stale entry is deleted); for the portable corpora it covers the wheel pins only, never the
Python version. Builds happen in a temporary folder renamed into place.

The prose corpora's extraction is bitnet.prose; the portable corpora's wheels bitnet.portable.
Over 400 lines: the corpus format is one contract (split rule, cache layout, fingerprints and
what experiments may read of them) that the template, the scorer and the ledger rely on
together; split across modules, its parts could drift apart.
"""

from __future__ import annotations

import gc
import hashlib
import importlib.util
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
from typing import TYPE_CHECKING

import numpy as np

from bitnet import portable
from bitnet.corpus_errors import CorpusError  # also imported from here by callers
from bitnet.prose import extract_prose

if TYPE_CHECKING:
    import torch

VOCAB_SIZE = 256  # byte-level tokenizer: token id == byte value
KNOWN_CORPORA: tuple[str, ...] = (
    "pycode", "pyprose", "portable-code", "portable-prose", "text:PATH"
)
SEPARATOR = b"\x00"  # appended to every document
SPLITS = ("train", "val", "test")  # in stream order for the tail fallback
VAL_PERCENT = 5  # share of files (by path hash buckets 0-4) that go to validation
TEST_PERCENT = 5  # and to test (the next buckets, 5-9)
TAIL_FRACTION = 0.1  # fallback validation share of the byte stream, and test's
TRAIN_DIR = "train"  # the entry's subfolder an experiment sees
TRAIN_FILE = "train.bin"

MAGNET_PACKAGES = ("agent", "bitnet", "ledger", "merge", "sandbox")  # pyproject.toml's
_FORMAT = 3  # bump whenever extraction or layout changes, so old caches are ignored
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
    test: np.ndarray  # uint8 read-only memmap of all (held-out) test bytes
    n_train_files: int
    n_val_files: int  # 0 when validation is a cut of the stream (too few files to split)
    n_test_files: int  # likewise
    train_sha256: str  # hex sha256 of the training bytes
    val_sha256: str  # hex sha256 of the validation bytes
    test_sha256: str  # hex sha256 of the test bytes
    sha256: str  # corpus_sha256 of the three: the corpus's identity across machines
    entry: Path  # its cache entry; train_dir(corpus) is the part an experiment sees


def encode(text: str) -> list[int]:
    return list(text.encode("utf-8"))


def decode(ids) -> str:
    return bytes(int(i) for i in ids).decode("utf-8", errors="replace")


def default_cache_dir() -> Path:
    return Path(os.environ.get("MAGNET_CACHE_DIR") or Path.home() / ".cache/magnet/corpora")


def corpus_sha256(train_sha256: str, val_sha256: str, test_sha256: str) -> str:
    """The fingerprint of a whole corpus from those of its three splits (hex digests)."""
    both = f"train:{train_sha256}\nval:{val_sha256}\ntest:{test_sha256}"
    return hashlib.sha256(both.encode("ascii")).hexdigest()


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
        train=_memmap(_split_path(entry, "train")),
        val=_memmap(_split_path(entry, "val")),
        test=_memmap(_split_path(entry, "test")),
        n_train_files=meta["n_train_files"],
        n_val_files=meta["n_val_files"],
        n_test_files=meta["n_test_files"],
        train_sha256=meta["train_sha256"],
        val_sha256=meta["val_sha256"],
        test_sha256=meta["test_sha256"],
        sha256=meta["sha256"],
        entry=entry,
    )


def train_dir(corpus: Corpus) -> Path:
    """The folder holding the training split alone (train.bin, meta.json): what experiments
    get in MAGNET_TRAIN_DATA, and the only part of the cache their confinement binds."""
    return corpus.entry / TRAIN_DIR


def load_train(path: str | Path) -> np.ndarray:
    """The training bytes (uint8 read-only memmap) from a train_dir folder (or its train.bin)."""
    folder = Path(path)
    folder = folder.parent if folder.name == TRAIN_FILE else folder
    try:
        meta = json.loads((folder / "meta.json").read_text())
        data = _memmap(folder / TRAIN_FILE)
        ok = meta["format"] == _FORMAT and len(data) == meta["train_bytes"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CorpusError(f"{folder} is not a training split ({err}); pass the folder "
                          "bitnet.data.train_dir made (MAGNET sets MAGNET_TRAIN_DATA to it)"
                          ) from err
    if not ok:
        raise CorpusError(f"{folder}/{TRAIN_FILE} does not match its meta.json; load the "
                          "corpus again (load_corpus rebuilds it)")
    return data


def _split_path(entry: Path, split: str) -> Path:
    return entry / TRAIN_DIR / TRAIN_FILE if split == "train" else entry / f"{split}.bin"


def _memmap(path: Path) -> np.ndarray:
    if path.stat().st_size == 0:  # numpy cannot map an empty file
        return np.zeros(0, dtype=np.uint8)
    return np.memmap(path, dtype=np.uint8, mode="r")


def sealed(spec: str) -> bool:
    """Whether a corpus's validation and test files are out of an experiment's reach."""
    return not unsealed_reason(spec)


def unsealed_reason(spec: str) -> str:
    """Why experiments on `spec` can read its held-out files, naming a sealed corpus to use
    instead, in one line; "" when it is sealed."""
    instead = ("train on a sealed corpus instead: portable-code, portable-prose or text:PATH "
               "with PATH outside the Python installation and MAGNET's code")
    if spec in _STDLIB:
        return (f"{spec} is this Python's standard library, which the interpreter running the "
                f"experiment reads itself, validation and test files included; {instead}")
    if spec in _PORTABLE:
        return ""
    if isinstance(spec, str) and spec.startswith("text:") and spec != "text:":
        path = Path(spec[len("text:") :]).expanduser().resolve()
        for where in _readable_by_experiments():
            if path.is_relative_to(where) or where.is_relative_to(path):
                return (f"{spec} overlaps {where}, which experiments read as part of the "
                        f"interpreter or of MAGNET, validation and test files included; {instead}")
        return ""
    _resolve(spec, Path())  # unknown, or "text:" without a path: raises the error for it
    raise AssertionError(f"no seal for {spec!r}")


def _readable_by_experiments() -> list[Path]:
    """Folders every confined experiment can read: the interpreter's and MAGNET's packages."""
    prefixes = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
                *(sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib",
                                                     "platlib"))}
    packages = set()
    for name in MAGNET_PACKAGES:  # located, not imported: bitnet imports no other package
        spec = importlib.util.find_spec(name)
        packages.update((spec and spec.submodule_search_locations) or [])
    return sorted({Path(p).resolve() for p in prefixes | packages})


def get_batch(
    data: np.ndarray, batch_size: int, seq_len: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random windows: x is (B, T) int64 and y is x shifted left by one byte."""
    if len(data) <= seq_len:
        raise CorpusError(
            f"data has {len(data)} bytes but a window needs seq_len+1={seq_len + 1}; "
            "use a shorter seq_len or a larger corpus"
        )
    import torch  # here, not at the top: the controller reads corpora long before it needs torch

    starts = torch.randint(len(data) - seq_len, (batch_size,), generator=generator)
    windows = np.asarray(data)[starts.numpy()[:, None] + np.arange(seq_len + 1)]
    windows = torch.from_numpy(windows.astype(np.int64))
    return windows[:, :-1].contiguous(), windows[:, 1:].contiguous()


def split_of(relpath: str) -> str:
    """The fixed split rule ("train", "val" or "test"): a bucket of the sha256 of the path
    relative to the corpus root (posix style)."""
    digest = hashlib.sha256(relpath.encode("utf-8")).digest()
    bucket = int.from_bytes(digest[:8], "big") % 100
    if bucket < VAL_PERCENT:
        return "val"
    return "test" if bucket < VAL_PERCENT + TEST_PERCENT else "train"


def is_val_path(relpath: str) -> bool:
    return split_of(relpath) == "val"


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
    splits: dict[str, list[bytes]] = {name: [] for name in SPLITS}
    stream: list[bytes] = []  # every document in order, for the fallback
    skipped = {"binary": 0, "empty": 0, "unparsable": 0}
    gc_was_enabled = gc.isenabled()
    gc.disable()  # ast.parse allocates millions of objects; collections only slow it down
    try:
        for rel, doc in _documents(source, files, skipped):
            stream.append(doc + SEPARATOR)
            splits[split_of(rel)].append(stream[-1])
    finally:
        if gc_was_enabled:
            gc.enable()
    if not stream:
        reasons = ", ".join(f"{n} {why}" for why, n in skipped.items() if n)
        raise CorpusError(
            f"corpus {spec!r} has no usable text: searched {source.path} "
            f"({len(files)} files{'; skipped ' + reasons if reasons else ''}); "
            "point it at non-empty text files (hidden and binary files are ignored)"
        )
    meta = {"format": _FORMAT, "spec": spec, "source": str(source.path), "skipped": skipped}
    if all(splits.values()):
        meta |= {"split": "by-file"} | {f"n_{k}_files": len(v) for k, v in splits.items()}
    else:  # too few files for a by-file split: cut the stream, validation and test at its end
        splits = _tail_split(b"".join(stream), spec)
        meta |= {"split": "tail", "n_train_files": len(stream), "n_val_files": 0,
                 "n_test_files": 0}
    meta |= _fingerprints(splits)
    if source.portable:
        _check_pin(spec, meta["sha256"])

    try:
        return _write_entry(entry, meta, splits, source.prefix)
    except OSError as err:
        raise CorpusError(
            f"cannot write the corpus cache in {entry.parent}: {err.strerror or err}; "
            "free some space or set MAGNET_CACHE_DIR to a writable folder"
        ) from err


def _tail_split(stream: bytes, spec: str) -> dict[str, list[bytes]]:
    """Train, then validation and test each TAIL_FRACTION of the stream (at least one byte)."""
    if len(stream) < len(SPLITS):
        raise CorpusError(f"corpus {spec!r} has {len(stream)} bytes, too few for a training, "
                          "validation and test split; give it more text")
    held = max(1, int(len(stream) * TAIL_FRACTION))
    val_at, test_at = len(stream) - 2 * held, len(stream) - held
    return {"train": [stream[:val_at]], "val": [stream[val_at:test_at]],
            "test": [stream[test_at:]]}


def _fingerprints(splits: dict[str, list[bytes]]) -> dict[str, str]:
    digests = {}
    for name, parts in splits.items():
        digest = hashlib.sha256()
        for part in parts:
            digest.update(part)
        digests[f"{name}_sha256"] = digest.hexdigest()
    return digests | {"sha256": corpus_sha256(*(digests[f"{n}_sha256"] for n in SPLITS))}


def _check_pin(spec: str, sha256: str) -> None:
    """A portable corpus must be the same bytes everywhere: refuse any other build of it."""
    if sha256 != portable.PINNED_SHA256[spec]:
        raise CorpusError(
            f"corpus {spec!r} built on Python {platform.python_version()} has sha256 {sha256}, "
            f"not the pinned {portable.PINNED_SHA256[spec]}, so it would differ from other "
            "machines' (bitnet/portable.py pins the wheels and the fingerprint); train on "
            f"{_STDLIB[_PORTABLE.index(spec)]} instead"
        )


def _write_entry(entry: Path, meta: dict, splits: dict[str, list[bytes]], prefix: str):
    """Write into a temporary folder, then rename it into place: readers never see half."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{entry.name}-", dir=entry.parent))
    try:
        (tmp / TRAIN_DIR).mkdir()
        for name, parts in splits.items():
            with open(_split_path(tmp, name), "wb") as f:
                f.writelines(parts)
            meta[f"{name}_bytes"] = sum(map(len, parts))
        # what an experiment may know of its data: nothing of the held-out splits
        train_meta = {k: meta[k] for k in ("format", "spec", "train_sha256", "train_bytes")}
        (tmp / TRAIN_DIR / "meta.json").write_text(json.dumps(train_meta, indent=1))
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
        sizes = [_split_path(entry, name).stat().st_size for name in SPLITS]
        ok = (meta["format"] == _FORMAT and sizes == [meta[f"{n}_bytes"] for n in SPLITS]
              and (entry / TRAIN_DIR / "meta.json").is_file())
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return meta if ok else None


if __name__ == "__main__":  # python -m bitnet.data SPEC: build SPEC, print its training folder
    if len(sys.argv) != 2:
        raise SystemExit(f"usage: python -m bitnet.data SPEC (one of {', '.join(KNOWN_CORPORA)})")
    try:
        print(train_dir(load_corpus(sys.argv[1])))
    except CorpusError as err:
        raise SystemExit(str(err)) from None
