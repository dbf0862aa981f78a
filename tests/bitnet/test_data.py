"""Corpora, split, cache and batching of bitnet.data, on real files and the real stdlib."""

import contextlib
import hashlib
import importlib.util
import io
import json
import os
import platform
import sysconfig
import threading
import tokenize
from pathlib import Path

import numpy as np
import pytest
import torch

from bitnet import data, prose
from bitnet.data import (
    KNOWN_CORPORA,
    SEPARATOR,
    VOCAB_SIZE,
    CorpusError,
    decode,
    encode,
    get_batch,
    is_val_path,
    load_corpus,
    load_train,
    sealed,
    split_of,
    train_dir,
    unsealed_reason,
)

STDLIB = Path(sysconfig.get_paths()["stdlib"])


def both(corpus) -> bytes:
    return bytes(corpus.train) + bytes(corpus.val) + bytes(corpus.test)


def docs(array) -> list[bytes]:
    """The documents in a split (every document ends with SEPARATOR)."""
    return bytes(array).split(SEPARATOR)[:-1]


def names(split: str, count: int, stem: str = "doc") -> list[str]:
    """The first `count` file names whose hash puts them in `split` (train, val or test)."""
    found = (f"{stem}{i:03d}.txt" for i in range(10_000))
    return [n for n in found if split_of(n) == split][:count]


def three(val: int = 1, test: int = 1, train: int = 5) -> list[str]:
    """File names for a by-file split with these counts."""
    return names("val", val) + names("test", test) + names("train", train)


def write_folder(root: Path, files: list[str]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for name in files:
        (root / name).write_text(f"contents of {name}\n")


@pytest.fixture(scope="module")
def stdlib_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("stdlib-cache")


@pytest.fixture(scope="module")
def pycode(stdlib_cache):
    return load_corpus("pycode", stdlib_cache)


@pytest.fixture(scope="module")
def pyprose(stdlib_cache):
    return load_corpus("pyprose", stdlib_cache)


# --- tokenizer and batches ------------------------------------------------------------------


def test_encode_decode_roundtrip_including_non_ascii():
    text = "def f(x):  # Grüße, naïve café — 日本語 🙂\n"
    ids = encode(text)
    assert ids == list(text.encode("utf-8"))
    assert len(ids) > len(text)  # multi-byte characters become several tokens
    assert all(0 <= i < VOCAB_SIZE for i in ids) and VOCAB_SIZE == 256
    assert decode(ids) == text
    assert decode(torch.tensor(ids)) == text
    assert decode([0xFF, 104, 105]) == "\ufffdhi"  # invalid UTF-8 is replaced, not raised


def test_get_batch_shapes_shift_and_determinism():
    stream = (np.arange(5000) % 251).astype(np.uint8)  # byte i+1 = byte i + 1 (mod 251)
    x, y = get_batch(stream, 8, 32, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (8, 32) and x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    assert torch.equal(y, (x + 1) % 251)  # consecutive bytes of the stream
    again = get_batch(stream, 8, 32, torch.Generator().manual_seed(0))
    other = get_batch(stream, 8, 32, torch.Generator().manual_seed(1))
    assert torch.equal(x, again[0]) and torch.equal(y, again[1])
    assert not torch.equal(x, other[0])


def test_get_batch_reaches_the_last_byte_and_rejects_short_data():
    stream = np.arange(10, dtype=np.uint8)
    x, y = get_batch(stream, 200, 9, torch.Generator().manual_seed(0))
    assert x[:, 0].unique().tolist() == [0] and y[0, -1].item() == 9  # only one window fits
    with pytest.raises(CorpusError, match="seq_len"):
        get_batch(stream, 1, 10, torch.Generator())


# --- split ----------------------------------------------------------------------------------


def test_split_rule_is_a_fixed_sha256_bucket():
    paths = [f"pkg/module_{i}.py" for i in range(4000)]
    buckets = [int.from_bytes(hashlib.sha256(p.encode()).digest()[:8], "big") % 100
               for p in paths]
    expected = ["val" if b < 5 else "test" if b < 10 else "train" for b in buckets]
    assert [split_of(p) for p in paths] == expected
    assert [is_val_path(p) for p in paths] == [e == "val" for e in expected]
    for split in ("val", "test"):
        assert 0.03 < expected.count(split) / len(paths) < 0.07


def test_split_is_by_file_deterministic_and_disjoint(tmp_path):
    files = three(3, 2, 40)
    write_folder(tmp_path / "corpus", files[::7] + files)  # created out of order
    first = load_corpus(f"text:{tmp_path / 'corpus'}", tmp_path / "cache1")
    second = load_corpus(f"text:{tmp_path / 'corpus'}", tmp_path / "cache2")
    assert both(first) == both(second) and first.sha256 == second.sha256

    # each file is whole in exactly one split, in sorted path order: disjoint, covering all
    assert docs(first.val) == [f"contents of {n}\n".encode() for n in files[:3]]
    assert docs(first.test) == [f"contents of {n}\n".encode() for n in files[3:5]]
    assert docs(first.train) == [f"contents of {n}\n".encode() for n in files[5:]]
    assert (first.n_val_files, first.n_test_files, first.n_train_files) == (3, 2, 40)
    assert first.name == f"text:{tmp_path / 'corpus'}"
    assert first.train.dtype == np.uint8 and not first.train.flags.writeable


def test_val_unchanged_when_a_train_file_is_added(tmp_path):
    root = tmp_path / "corpus"
    write_folder(root, three(2, 1, 20))
    before = load_corpus(f"text:{root}", tmp_path / "cache")
    new_train, new_val = names("train", 1, "extra")[0], names("val", 1, "extra")[0]

    write_folder(root, [new_train])
    after = load_corpus(f"text:{root}", tmp_path / "cache")
    assert bytes(after.val) == bytes(before.val) and bytes(after.test) == bytes(before.test)
    assert len(after.train) > len(before.train) and after.n_train_files == 21

    write_folder(root, [new_val])  # the only kind of addition that may change validation
    last = load_corpus(f"text:{root}", tmp_path / "cache")
    assert f"contents of {new_val}".encode() in bytes(last.val) and last.n_val_files == 3
    assert bytes(last.train) == bytes(after.train) and bytes(last.test) == bytes(after.test)


def test_folder_walk_is_recursive_sorted_and_skips_hidden_and_binary(tmp_path):
    root = tmp_path / "corpus"
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / ".git").mkdir()
    (root / "b.txt").write_text("bee\n")
    (root / "a.txt").write_text("ay\n")
    (root / "sub" / "deeper" / "c.md").write_text("sea ✓\n")
    (root / ".hidden.txt").write_text("secret\n")
    (root / ".git" / "config").write_text("secret too\n")
    (root / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(100))
    (root / "blank.txt").write_text("  \n\n")
    corpus = load_corpus(f"text:{root}", tmp_path / "cache")
    # too few files to split by file: validation and test are the tail of the stream in
    # sorted order
    assert both(corpus) == "ay\n\0bee\n\0sea ✓\n\0".encode()
    assert (corpus.n_train_files, corpus.n_val_files, corpus.n_test_files) == (3, 0, 0)
    assert len(corpus.val) == len(corpus.test) == 1


def test_single_file_is_split_by_its_tail(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("x" * 999)
    corpus = load_corpus(f"text:{path}", tmp_path / "cache")
    # 1000 bytes with the separator
    assert (len(corpus.train), len(corpus.val), len(corpus.test)) == (800, 100, 100)
    assert both(corpus) == b"x" * 999 + SEPARATOR
    path.write_text("yz")
    tiny = load_corpus(f"text:{path}", tmp_path / "cache")
    # at least one byte in each split
    assert (bytes(tiny.train), bytes(tiny.val), bytes(tiny.test)) == (b"y", b"z", SEPARATOR)
    path.write_text("y")
    message = one_line_error(f"text:{path}", tmp_path / "cache")
    assert "2 bytes" in message and "more text" in message


# --- cache ----------------------------------------------------------------------------------


def test_second_load_reuses_the_cache_without_reading_sources(tmp_path, monkeypatch):
    root = tmp_path / "corpus"
    write_folder(root, three())
    first = load_corpus(f"text:{root}", tmp_path / "cache")
    bin_path = Path(first.train.filename)
    stamp = (bin_path.stat().st_ino, bin_path.stat().st_mtime_ns)
    assert bin_path.parent == train_dir(first) and bin_path.parent.parent == first.entry
    assert {p.name for p in bin_path.parent.iterdir()} == {"train.bin", "meta.json"}
    assert {p.name for p in first.entry.iterdir()} == {"train", "val.bin", "test.bin",
                                                       "meta.json"}

    def no_reading(*args):
        raise AssertionError("source file read on a cached load")

    monkeypatch.setattr(data, "_read_file", no_reading)
    second = load_corpus(f"text:{root}", tmp_path / "cache")
    assert Path(second.train.filename) == bin_path
    assert (bin_path.stat().st_ino, bin_path.stat().st_mtime_ns) == stamp
    assert bytes(second.train) == bytes(first.train) and bytes(second.val) == bytes(first.val)


def test_changed_file_invalidates_the_cache_and_drops_the_stale_entry(tmp_path):
    root = tmp_path / "corpus"
    write_folder(root, three())
    old = load_corpus(f"text:{root}", tmp_path / "cache")
    old_entry = old.entry
    changed = root / names("train", 1)[0]
    changed.write_text("edited by the user\n")
    new = load_corpus(f"text:{root}", tmp_path / "cache")
    assert b"edited by the user" in bytes(new.train)
    assert b"edited by the user" not in bytes(old.train)
    assert new.entry != old_entry and not old_entry.exists()

    os.utime(changed, ns=(1, 1))  # same size, only the mtime differs: still a new entry
    touched = load_corpus(f"text:{root}", tmp_path / "cache")
    assert touched.entry != new.entry


def test_corrupt_cache_is_rebuilt(tmp_path):
    root = tmp_path / "corpus"
    write_folder(root, three())
    good = load_corpus(f"text:{root}", tmp_path / "cache")
    expected = bytes(good.train)
    with open(good.train.filename, "r+b") as f:
        f.truncate(10)  # e.g. a disk that filled up
    rebuilt = load_corpus(f"text:{root}", tmp_path / "cache")
    assert bytes(rebuilt.train) == expected


def test_interrupted_build_leaves_no_cache_behind(tmp_path, monkeypatch):
    root = tmp_path / "corpus"
    write_folder(root, three())

    def interrupted(src, dst):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(data.os, "replace", interrupted)
        with pytest.raises(KeyboardInterrupt):
            load_corpus(f"text:{root}", tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []  # no entry and no temporary folder
    assert load_corpus(f"text:{root}", tmp_path / "cache").n_train_files == 5


def test_default_cache_dir_comes_from_the_environment(tmp_path, monkeypatch):
    path = tmp_path / "notes.txt"
    path.write_text("hello world\n")
    monkeypatch.setenv("MAGNET_CACHE_DIR", str(tmp_path / "env-cache"))
    corpus = load_corpus(f"text:{path}")
    assert corpus.entry.parent == tmp_path / "env-cache"


# --- what experiments see -------------------------------------------------------------------


def test_the_train_dir_holds_the_training_split_and_nothing_of_the_others(tmp_path):
    root = tmp_path / "corpus"
    write_folder(root, three(2, 2, 8))
    (root / names("val", 1)[0]).write_text("VALIDATION SECRET\n")
    (root / names("test", 1)[0]).write_text("TEST SECRET\n")
    corpus = load_corpus(f"text:{root}", tmp_path / "cache")
    folder = train_dir(corpus)
    held_out = [bytes(corpus.val), bytes(corpus.test), corpus.val_sha256.encode(),
                corpus.test_sha256.encode(), corpus.sha256.encode(), b"SECRET"]
    for path in folder.rglob("*"):  # every byte in the folder an experiment is given
        content = path.read_bytes()
        assert not any(secret in content for secret in held_out), path
    assert json.loads((folder / "meta.json").read_text())["train_sha256"] == corpus.train_sha256

    loaded = load_train(folder)
    assert bytes(loaded) == bytes(corpus.train) and not loaded.flags.writeable
    assert bytes(load_train(folder / "train.bin")) == bytes(corpus.train)
    with pytest.raises(ValueError):
        loaded[0] = 1  # a read-only map: an experiment cannot change the shared cache


def test_load_train_refuses_what_is_not_a_train_dir_in_one_line(tmp_path):
    for bad in (tmp_path, tmp_path / "missing"):
        with pytest.raises(CorpusError) as info:
            load_train(bad)
        assert "\n" not in str(info.value) and "train_dir" in str(info.value)
    root = tmp_path / "corpus"
    write_folder(root, three())
    folder = train_dir(load_corpus(f"text:{root}", tmp_path / "cache"))
    with open(folder / "train.bin", "ab") as f:
        f.write(b"appended")
    with pytest.raises(CorpusError, match="does not match"):
        load_train(folder)


def test_sealed_corpora_are_those_whose_held_out_files_experiments_cannot_read(tmp_path):
    outside = tmp_path / "notes"
    outside.mkdir()
    assert sealed("portable-code") and sealed("portable-prose") and sealed(f"text:{outside}")
    assert unsealed_reason("portable-code") == unsealed_reason(f"text:{outside}") == ""
    interpreter = Path(sysconfig.get_paths()["stdlib"]) / "textwrap.py"
    magnet_code = Path(data.__file__).parent / "templates"
    for spec in ("pycode", "pyprose", f"text:{interpreter}", f"text:{magnet_code}",
                 f"text:{Path(data.__file__).parents[1]}", "text:/"):  # ... or a folder above
        reason = unsealed_reason(spec)
        assert not sealed(spec) and "\n" not in reason, spec
        assert "portable-code" in reason and "text:PATH" in reason  # what to use instead
    with pytest.raises(CorpusError, match="known corpora"):
        sealed("wikipedia")


# --- fingerprints ---------------------------------------------------------------------------


def file_sha256(array) -> str:
    return hashlib.sha256(Path(array.filename).read_bytes()).hexdigest()


def test_fingerprints_are_the_sha256_of_the_cached_bytes(tmp_path):
    root = tmp_path / "corpus"
    write_folder(root, three(2, 2, 8))
    corpus = load_corpus(f"text:{root}", tmp_path / "cache")
    assert corpus.train_sha256 == file_sha256(corpus.train) == hashlib.sha256(
        bytes(corpus.train)).hexdigest()
    assert corpus.val_sha256 == file_sha256(corpus.val)
    assert corpus.test_sha256 == file_sha256(corpus.test)
    splits = (corpus.train_sha256, corpus.val_sha256, corpus.test_sha256)
    all_splits = "train:{}\nval:{}\ntest:{}".format(*splits).encode()
    assert corpus.sha256 == hashlib.sha256(all_splits).hexdigest()  # the documented rule
    assert corpus.sha256 == data.corpus_sha256(*splits)
    assert load_corpus(f"text:{root}", tmp_path / "elsewhere").sha256 == corpus.sha256


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_one_changed_byte_changes_the_fingerprint_of_its_split_only(tmp_path, split):
    root = tmp_path / "corpus"
    write_folder(root, three(2, 2, 8))
    before = load_corpus(f"text:{root}", tmp_path / "cache")
    changed = root / names(split, 1)[0]
    text = changed.read_bytes()
    changed.write_bytes(text[:-2] + b"X" + text[-1:])  # same size, one byte differs
    after = load_corpus(f"text:{root}", tmp_path / "cache")
    assert after.sha256 != before.sha256
    for name in ("train", "val", "test"):
        now, then = getattr(after, f"{name}_sha256"), getattr(before, f"{name}_sha256")
        assert len(getattr(after, name)) == len(getattr(before, name))
        assert (now != then) == (name == split)
        assert now == file_sha256(getattr(after, name))


def test_an_entry_of_the_previous_format_is_rebuilt_with_fingerprints(tmp_path):
    root = tmp_path / "corpus"
    write_folder(root, three())
    corpus = load_corpus(f"text:{root}", tmp_path / "cache")
    meta_path = corpus.entry / "meta.json"
    old = json.loads(meta_path.read_text())
    for key in ("train_sha256", "val_sha256", "test_sha256", "sha256"):
        del old[key]
    meta_path.write_text(json.dumps(old | {"format": old["format"] - 1}))
    rebuilt = load_corpus(f"text:{root}", tmp_path / "cache")
    assert rebuilt.sha256 == corpus.sha256
    assert json.loads(meta_path.read_text())["sha256"] == corpus.sha256


def test_corpus_origin_says_where_the_bytes_come_from(tmp_path):
    stdlib = str(STDLIB.resolve())
    pycode = data.corpus_origin("pycode")
    assert platform.python_version() in pycode and stdlib in pycode
    assert "portable-code" in pycode and "portable-prose" in data.corpus_origin("pyprose")
    for spec in ("portable-code", "portable-prose"):
        assert "identical on every machine" in data.corpus_origin(spec)
    elsewhere = tmp_path / "not-on-this-machine"  # a verifier may not have the claimed folder
    assert str(elsewhere) in data.corpus_origin(f"text:{elsewhere}")
    assert "\n" not in pycode
    with pytest.raises(CorpusError, match="known corpora"):
        data.corpus_origin("wikipedia")


# --- errors ---------------------------------------------------------------------------------


def one_line_error(spec: str, cache: Path) -> str:
    with pytest.raises(CorpusError) as info:
        load_corpus(spec, cache)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_unknown_corpus_lists_the_known_ones(tmp_path):
    message = one_line_error("wikipedia", tmp_path)
    assert "'wikipedia'" in message and all(known in message for known in KNOWN_CORPORA)
    assert "text:PATH" in one_line_error("text", tmp_path)


def test_missing_or_empty_path_is_named(tmp_path):
    missing = tmp_path / "nowhere"
    assert str(missing) in one_line_error(f"text:{missing}", tmp_path)
    assert "text:PATH" in one_line_error("text:", tmp_path)


def test_empty_corpus_says_what_was_searched(tmp_path):
    root = tmp_path / "corpus"
    root.mkdir()
    message = one_line_error(f"text:{root}", tmp_path / "cache")
    assert "no usable text" in message and str(root) in message and "0 files" in message
    (root / "blob.bin").write_bytes(b"\x00\x01\x02")
    (root / "empty.txt").write_text("")
    (root / ".hidden").write_text("not searched")
    message = one_line_error(f"text:{root}", tmp_path / "cache")
    assert "2 files" in message and "1 binary" in message and "1 empty" in message
    assert not (tmp_path / "cache").exists() or list((tmp_path / "cache").iterdir()) == []


def test_broken_symlink_is_named_as_unreadable(tmp_path):
    root = tmp_path / "corpus"
    write_folder(root, ["fine.txt"])
    (root / "dangling.txt").symlink_to(tmp_path / "deleted.txt")
    message = one_line_error(f"text:{root}", tmp_path / "cache")
    assert f"cannot read {root / 'dangling.txt'}" in message and "remove it" in message


def test_fifo_is_refused_without_blocking(tmp_path):
    root = tmp_path / "corpus"
    write_folder(root, ["fine.txt"])
    fifo = root / "pipe.txt"
    os.mkfifo(fifo)  # opening it for reading blocks until a writer comes
    done = threading.Event()

    def writer() -> None:  # should the loader open the FIFO, unblock it so the test fails
        while not done.wait(0.2):
            with contextlib.suppress(OSError):  # ENXIO: nobody is reading
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        message = one_line_error(f"text:{root}", tmp_path / "cache")
    finally:
        done.set()
        thread.join()
    assert str(fifo) in message and "not a regular file" in message


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_permission_denied_file_is_named(tmp_path):
    root = tmp_path / "corpus"
    write_folder(root, ["fine.txt", "locked.txt"])
    (root / "locked.txt").chmod(0)
    message = one_line_error(f"text:{root}", tmp_path / "cache")
    assert str(root / "locked.txt") in message and "ermission denied" in message


# --- the stdlib corpora ---------------------------------------------------------------------


def test_pycode_is_the_stdlib_source(pycode):
    text = both(pycode)
    assert len(text) > 5_000_000
    assert b"def dedent(text):" in text  # textwrap.py
    installed = [p for p in sorted(STDLIB.glob("site-packages/*/*.py")) if p.stat().st_size > 2000]
    license = STDLIB / "LICENSE.txt"
    if license.exists():  # only .py files
        assert license.read_bytes()[:500] not in text
    if installed:  # third-party code next to the stdlib is not part of it
        assert installed[0].read_bytes() not in text
    n_docs = pycode.n_train_files + pycode.n_val_files + pycode.n_test_files
    assert n_docs > 500 and text.count(SEPARATOR) == n_docs
    assert 0.02 < pycode.n_val_files / n_docs < 0.08
    assert 0.02 < pycode.n_test_files / n_docs < 0.08
    textwrap = (STDLIB / "textwrap.py").read_bytes()
    split = getattr(pycode, split_of("textwrap.py"))
    assert textwrap + SEPARATOR in bytes(split)  # raw bytes, whole file, on its hashed side


def test_pyprose_holds_docstrings_and_comments_but_not_code(pycode, pyprose):
    text = both(pyprose).decode("utf-8")
    assert 1_000_000 < len(text) < len(both(pycode)) / 2
    assert "Text wrapping and filling." in text  # textwrap's module docstring
    assert "Hardcode the recognized whitespace characters to the US-ASCII" in text  # a comment
    assert "def dedent(text):" not in text and "import re" not in text.splitlines()
    # docstrings may quote code (doctest examples); code itself is gone
    code_line = ("def ", "class ", "import ", "return ")
    prose_code = sum(line.startswith(code_line) for line in text.splitlines())
    source_code = sum(
        line.lstrip().startswith(code_line)
        for line in both(pycode).decode("utf-8", errors="replace").splitlines()
    )
    assert source_code > 50_000 and prose_code < source_code / 100
    # the same files land on the same side as in pycode: no leakage between the two corpora
    assert pyprose.n_val_files <= pycode.n_val_files
    assert pyprose.n_test_files <= pycode.n_test_files


def test_extract_prose_keeps_docstrings_and_comments_in_order():
    source = b'''#!/usr/bin/env python3
# -*- coding: utf-8 -*-
"""Module docstring, caf\xc3\xa9."""
import os  # the operating system
s = "not # a comment"
t = """# nor this"""

# ----------------------
## A section header
# spanning two lines.
# x = compute(1, 2)
if os.name:
    class Thing:
        """Thing docstring."""

        def method(self):  # noqa: E501
            """Method docstring."""
            return 1
'''
    assert prose.extract_prose(source) == (
        "Module docstring, café.\n\n"
        "the operating system\n\n"
        "A section header\nspanning two lines.\n\n"
        "Thing docstring.\n\n"
        "Method docstring."
    )
    assert prose.extract_prose(b"def broken(:\n    '''Never seen.'''\n") is None


def test_comment_scanner_matches_tokenize_on_stdlib_files():
    paths = sorted(STDLIB.glob("*.py"))[::6] + [STDLIB / "tokenize.py", STDLIB / "inspect.py"]
    checked = 0
    for path in paths:
        raw = path.read_bytes()
        try:
            expected = [
                (tok.start[0], tok.string)
                for tok in tokenize.tokenize(io.BytesIO(raw).readline)
                if tok.type == tokenize.COMMENT
            ]
        except (tokenize.TokenError, SyntaxError):
            continue
        text = importlib.util.decode_source(raw)
        found = [
            (text.count("\n", 0, m.start()) + 1, m.group())
            for m in prose._STRING_OR_COMMENT.finditer(text)
            if m.lastgroup == "comment"
        ]
        assert found == expected, path
        checked += 1
    assert checked > 20
