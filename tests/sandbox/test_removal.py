"""sandbox.removal: a path removed whatever it is, and never followed."""

from __future__ import annotations

import os
from pathlib import Path

from sandbox.removal import remove_path


def test_each_kind_of_path_goes_and_no_link_is_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "kept.txt").write_text("not the run's")
    left = tmp_path / "left"
    left.mkdir()
    tree = left / "tree"
    (tree / "deep").mkdir(parents=True)
    (tree / "deep" / "file").write_text("x")
    (tree / "link-out").symlink_to(outside)  # inside a tree: the link goes, not its target
    (left / "file").write_text("x")
    (left / "dir-link").symlink_to(outside, target_is_directory=True)
    (left / "dangling").symlink_to(tmp_path / "nowhere")
    os.mkfifo(left / "fifo")
    for path in [*left.iterdir(), left / "never-there"]:
        remove_path(path)
    assert list(left.iterdir()) == []
    assert (outside / "kept.txt").read_text() == "not the run's"


def test_ignore_errors_leaves_what_cannot_go(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "f").write_text("x")
    os.chmod(tree, 0o500)  # its entries cannot be unlinked (but by root)
    try:
        remove_path(tree, ignore_errors=True)  # never raises
    finally:
        if tree.exists():
            os.chmod(tree, 0o700)
    remove_path(tree)
    assert not tree.exists()
