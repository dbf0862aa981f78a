"""The checkpoint a goal's runs start from (`init:`, `train --init`): found, checked, copied.

The run keeps its own copy in `runs/<id>/init/`, so its experiments start from the same bytes
however the base's run goes on (or is deleted), and `resume` needs nothing outside the run.
"""

from __future__ import annotations

import io
import shutil
import tarfile
from pathlib import Path

from agent.rundir.checkpoint_ref import resolve_checkpoint
from agent.rundir.names import INIT_DIR
from agent.rundir.runs import RunError
from sandbox.layout import METRICS_FILE
from sandbox.untrusted import UntrustedFileError, copy_tree, read_bytes

ENV_NAME = "MAGNET_INIT_CHECKPOINT"
MAX_INIT_BYTES = 2**34  # a base checkpoint's files together: 16 GiB, far above a CPU model


def find_init(ref: str, runs_dir: str | Path | None = None) -> Path:
    """The checkpoint directory `ref` names, checked to load; RunError (one line) otherwise."""
    from bitnet.checkpoint import CheckpointError, load_checkpoint

    try:
        path = resolve_checkpoint(ref, runs_dir).resolve()
    except RunError as err:
        raise RunError(f"init: {err}") from None
    try:
        load_checkpoint(path)
    except CheckpointError as err:
        raise RunError(f"init: {ref}: {err}") from None
    _copy(path, None)  # refused now, before a run directory is made for it
    return path


def copy_init(checkpoint: Path, run_dir: Path) -> Path:
    """Copy the checkpoint's files into the run (atomically: a stop never leaves half a copy).

    A run's checkpoint is what its experiment left: regular files only are copied, and a
    symlink, FIFO or device among them refuses the copy (RunError), so no host file's bytes
    reach `init/` (and from there a claim)."""
    target, partial = run_dir / INIT_DIR, run_dir / f"{INIT_DIR}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    try:
        _copy(checkpoint, partial)
    except RunError:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    partial.rename(target)
    return target


def _copy(checkpoint: Path, target: Path | None) -> None:
    """copy_tree of a checkpoint's files (None: only check it can be copied); RunError."""
    try:
        copy_tree(checkpoint, target, MAX_INIT_BYTES,
                  skip=lambda name: name.endswith(".tmp") or name == METRICS_FILE)
    except (UntrustedFileError, OSError) as err:
        raise RunError(f"init: cannot copy {checkpoint}: {err}") from None


def init_dir(run_dir: Path) -> Path:
    return run_dir / INIT_DIR


def pack_init(run_dir: Path) -> bytes:
    """The run's copy of its base checkpoint as one tar archive that depends on the files'
    names and bytes only (sorted, no times or owners), so it travels with a claim by sha256."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(init_dir(run_dir).iterdir()):
            if not path.is_file():
                continue
            try:  # a regular file only: a symlink planted in init/ is refused, not followed
                data = read_bytes(path.parent, path.name, MAX_INIT_BYTES)
            except UntrustedFileError as err:
                raise RunError(f"the run's base checkpoint is refused: {err}") from None
            info = tarfile.TarInfo(path.name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def unpack_init(archive: bytes, run_dir: Path) -> Path:
    """`pack_init`'s archive as the run's `init/`; ValueError (one line) when it holds anything
    but plain files by plain names: a claim's archive is untrusted input."""
    target = init_dir(run_dir)
    target.mkdir(parents=True)
    try:
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:") as tar:
            for member in tar.getmembers():
                if not member.isfile() or Path(member.name).name != member.name or \
                        member.name in ("", ".", ".."):
                    raise ValueError(f"its base checkpoint holds {member.name!r}, not a plain "
                                     "file")
                tar.extract(member, target, filter="data")
    except tarfile.TarError as err:
        raise ValueError(f"its base checkpoint is not a tar archive ({err})") from None
    return target
