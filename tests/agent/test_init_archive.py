"""The base checkpoint a claim carries: packed by name and bytes only, unpacked as untrusted."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from agent.rundir.init_checkpoint import init_dir, pack_init, unpack_init


def test_the_archive_depends_on_names_and_bytes_only(tmp_path: Path) -> None:
    runs = [tmp_path / "a", tmp_path / "b"]
    for i, run in enumerate(runs):
        init_dir(run).mkdir(parents=True)
        for name, data in (("model.pt", b"\x00weights"), ("config.json", b"{}")):
            path = init_dir(run) / name
            path.write_bytes(data)
            os.utime(path, (1_000_000 * (i + 1),) * 2)
            path.chmod(0o600 + 0o44 * i)
    assert pack_init(runs[0]) == pack_init(runs[1])
    unpack_init(pack_init(runs[0]), tmp_path / "replay")
    assert {p.name: p.read_bytes() for p in init_dir(tmp_path / "replay").iterdir()} == {
        "model.pt": b"\x00weights", "config.json": b"{}"}


def _archive(*members: tarfile.TarInfo) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for member in members:
            tar.addfile(member, io.BytesIO(b"x" * member.size) if member.isfile() else None)
    return buffer.getvalue()


def _file(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = 1
    return info


def _link(name: str, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.SYMTYPE, target
    return info


@pytest.mark.parametrize("member", [_file("../escaped"), _file("/etc/escaped"),
                                    _file("sub/model.pt"), _link("model.pt", "/etc/passwd")])
def test_an_archive_with_anything_but_plain_files_is_refused(tmp_path: Path, member) -> None:
    with pytest.raises(ValueError, match="not a plain file"):
        unpack_init(_archive(member), tmp_path / "replay")
    assert not (tmp_path / "escaped").exists() and not Path("/etc/escaped").exists()
    assert list(init_dir(tmp_path / "replay").iterdir()) == []


def test_bytes_that_are_no_archive_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a tar archive"):
        unpack_init(b"not a tar at all" * 64, tmp_path / "replay")
