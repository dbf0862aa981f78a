"""What an experiment leaves is untrusted input: the only way MAGNET reads its output directory.

Experiment code is written by an LLM and may leave anything where MAGNET looks: a symlink to a
host file (whose bytes would then reach records, git notes, `show`, ledger artifacts or a new
run's `init/`), a FIFO (a plain `open()` blocks forever), a device, a file of gigabytes, or JSON
of another shape. So every read here:

- opens the directory itself without following a link (O_DIRECTORY|O_NOFOLLOW), and each file
  relative to that directory's fd by one plain name (no `/`, no `..`, nothing absolute);
- opens the file with O_NOFOLLOW|O_NONBLOCK (a symlink fails, a FIFO does not block) and keeps
  it only if fstat says it is a regular file;
- reads at most `max_bytes + 1` bytes, so an oversized file is refused without reading it all;
- checks the shape (JSON, a schedule) before anyone uses it.

Every refusal is an `UntrustedFileError` with one line naming the file and what is wrong.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sandbox.errors import SandboxError

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
CHUNK = 1 << 20
MAX_SCHEDULE_BYTES = 16 * 2**20  # ~1M steps of progress values; a larger file is no schedule
MAX_SCHEDULE_STEPS = 2_000_000
FIX = "MAGNET reads only regular files an experiment writes into its output directory"
# JSON nested deeper than this is refused before parsing: the C parser recurses once per level,
# and in a thread with a small stack (a test worker, a graph node) 100,000 `[` crashed the process
MAX_JSON_DEPTH = 64
JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
BRACKETS = bytes(range(256)).translate(None, b"[]{}")  # every byte but the brackets


class UntrustedFileError(SandboxError):
    """A file an experiment left was refused (a link, FIFO, device, too large, wrong shape)."""


class MissingFileError(UntrustedFileError):
    """The file is not there at all (callers may treat that as "nothing written")."""


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISLNK, "a symlink"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a directory")):
        if test(mode):
            return name
    return "not a regular file"


def check_name(name: str) -> str:
    """`name` if it is one plain path component; UntrustedFileError otherwise."""
    if not name or name in (".", "..") or "/" in name or "\0" in name:
        raise UntrustedFileError(f"{name!r} is not a plain file name; {FIX}, by plain names")
    return name


@contextmanager
def open_dir(directory: str | os.PathLike) -> Iterator[int]:
    """An fd of `directory` itself, not of where a symlink by that name points."""
    try:
        fd = os.open(directory, DIR_FLAGS)
    except FileNotFoundError:
        raise MissingFileError(f"{directory} does not exist") from None
    except OSError as err:
        raise UntrustedFileError(f"{directory} is not a directory MAGNET can read "
                                 f"({err.strerror}); {FIX}") from None
    try:
        yield fd
    finally:
        os.close(fd)


@contextmanager
def _open_in(dir_fd: int, name: str, shown: Path) -> Iterator[tuple[int, int]]:
    """(fd, size) of regular file `name` inside the directory `dir_fd`."""
    check_name(name)
    try:
        fd = os.open(name, FILE_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        raise MissingFileError(f"{shown} does not exist") from None
    except OSError as err:
        try:  # say what it is: ELOOP is how O_NOFOLLOW refuses a symlink
            what = _kind(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
        except OSError:
            what = f"unreadable ({err.strerror})"
        raise UntrustedFileError(f"{shown} is {what}; {FIX}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UntrustedFileError(f"{shown} is {_kind(info.st_mode)}; {FIX}")
        os.set_blocking(fd, True)  # a regular file: ordinary reads from here on
        yield fd, info.st_size
    finally:
        os.close(fd)


def _read_fd(fd: int, limit: int, shown: Path) -> bytes:
    """At most `limit` bytes; UntrustedFileError if there are more (reads limit + 1 at most)."""
    parts, total = [], 0
    while total <= limit:
        chunk = os.read(fd, min(CHUNK, limit + 1 - total))
        if not chunk:
            break
        parts.append(chunk)
        total += len(chunk)
    if total > limit:
        raise UntrustedFileError(f"{shown} is larger than {limit} bytes; {FIX}, of bounded size")
    return b"".join(parts)


def read_bytes(directory: str | os.PathLike, name: str, max_bytes: int) -> bytes:
    """The bytes of regular file `name` in `directory` (at most `max_bytes`)."""
    shown = Path(directory) / name
    with open_dir(directory) as dir_fd, _open_in(dir_fd, name, shown) as (fd, _):
        return _read_fd(fd, max_bytes, shown)


def read_json(directory: str | os.PathLike, name: str, max_bytes: int, **loads: Any) -> Any:
    """`read_bytes` parsed as JSON (`loads`: json.loads options); no NaN or Infinity."""
    data = read_bytes(directory, name, max_bytes)
    return _loads(data, Path(directory) / name, f"{FIX}, in the shape it documents", **loads)


def _loads(data: bytes, shown: object, what: str, **loads: Any) -> Any:
    """JSON from untrusted bytes: nesting bounded first, no NaN or Infinity unless `loads`
    says how to read them; UntrustedFileError (one line, naming `what` it should be)."""
    brackets = data.translate(None, BRACKETS)
    if len(brackets) > MAX_JSON_DEPTH:  # else it cannot nest too deep (metrics, schedules)
        depth = 0
        for bracket in JSON_STRING.sub(b"", data).translate(None, BRACKETS):
            depth += 1 if bracket in b"[{" else -1
            if depth > MAX_JSON_DEPTH:
                raise UntrustedFileError(f"{shown} nests deeper than {MAX_JSON_DEPTH} levels; "
                                         f"{what}")
    loads.setdefault("parse_constant", _no_constant)
    try:
        return json.loads(data.decode("utf-8"), **loads)
    except (ValueError, RecursionError) as err:
        raise UntrustedFileError(f"{shown} is not JSON ({str(err)[:80]}); {what}") from None


def _no_constant(text: str) -> Any:
    raise ValueError(f"{text} is not a finite number")


def parse_schedule(data: bytes, shown: str | os.PathLike = "the schedule") -> list[float]:
    """A schedule's bytes as its values: a JSON list (at most MAX_SCHEDULE_STEPS) of finite
    numbers in [0, 1], one per training step; UntrustedFileError otherwise."""
    values = _loads(data, shown, "a schedule is a list of progress values in [0, 1]")
    if not isinstance(values, list) or len(values) > MAX_SCHEDULE_STEPS:
        raise UntrustedFileError(f"{shown} is not a list of at most {MAX_SCHEDULE_STEPS} "
                                 "progress values; a schedule is one value in [0, 1] per step")
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int | float) or \
                not math.isfinite(value) or not 0 <= value <= 1:
            raise UntrustedFileError(f"{shown} holds {str(value)[:40]!r}, not a progress value "
                                     "in [0, 1]; a schedule is one such value per step")
    return [float(v) for v in values]


def read_schedule(directory: str | os.PathLike, name: str,
                  max_bytes: int = MAX_SCHEDULE_BYTES) -> tuple[bytes, list[float]]:
    """The schedule file `name` in `directory`: its bytes (what a claim carries and its record
    hashes) and its values, checked by `parse_schedule`."""
    data = read_bytes(directory, name, max_bytes)
    return data, parse_schedule(data, Path(directory) / name)


def sha256_file(directory: str | os.PathLike, name: str, max_bytes: int) -> str:
    """sha256 of regular file `name` in `directory`, read in chunks (at most `max_bytes`)."""
    shown = Path(directory) / name
    digest, total = hashlib.sha256(), 0
    with open_dir(directory) as dir_fd, _open_in(dir_fd, name, shown) as (fd, _):
        while chunk := os.read(fd, CHUNK):
            total += len(chunk)
            if total > max_bytes:
                raise UntrustedFileError(f"{shown} is larger than {max_bytes} bytes; {FIX}, "
                                         "of bounded size")
            digest.update(chunk)
    return digest.hexdigest()


def check_regular(directory: str | os.PathLike, names: tuple[str, ...] | list[str]) -> None:
    """Refuse unless each of `names` in `directory` is a regular file (opened, not read): for
    code that then loads them by path (a checkpoint for export or merge)."""
    with open_dir(directory) as dir_fd:
        for name in names:
            with _open_in(dir_fd, name, Path(directory) / name):
                pass


def copy_tree(src: str | os.PathLike, dst: str | os.PathLike | None, max_bytes: int, *,
              skip: Callable[[str], bool] = lambda name: False) -> int:
    """Copy `src` (regular files and subdirectories only) to the new directory `dst`; returns
    the bytes copied. A symlink, FIFO, device or socket anywhere refuses the whole copy, as
    does more than `max_bytes` in all; names `skip` accepts are left out. On refusal `dst`
    may hold part of the copy: copy into a scratch name and rename it when this returns.
    `dst` None only checks that the copy would be made (nothing is read or written)."""
    with open_dir(src) as src_fd:
        return _copy_dir(src_fd, Path(src), None if dst is None else Path(dst), max_bytes,
                         skip, 0)


def _copy_dir(src_fd: int, shown: Path, dst: Path | None, max_bytes: int,
              skip: Callable[[str], bool], total: int) -> int:
    if dst is not None:
        os.mkdir(dst)
    for name in sorted(os.listdir(src_fd)):
        if skip(name):
            continue
        mode = os.stat(name, dir_fd=src_fd, follow_symlinks=False).st_mode
        if stat.S_ISDIR(mode):
            try:
                sub = os.open(name, DIR_FLAGS, dir_fd=src_fd)
            except OSError as err:
                raise UntrustedFileError(f"{shown / name} is unreadable ({err.strerror}); "
                                         f"{FIX}") from None
            try:
                total = _copy_dir(sub, shown / name, None if dst is None else dst / name,
                                  max_bytes, skip, total)
            finally:
                os.close(sub)
            continue
        with _open_in(src_fd, name, shown / name) as (fd, size):
            if dst is None:  # a check: the size fstat gave is enough
                if total + size > max_bytes:
                    raise UntrustedFileError(f"{shown / name} takes the copy past {max_bytes} "
                                             f"bytes; {FIX}, of bounded size")
                total += size
                continue
            data = _read_fd(fd, max_bytes - total, shown / name)
        total += len(data)
        with open(dst / name, "xb") as out:
            out.write(data)
    return total
