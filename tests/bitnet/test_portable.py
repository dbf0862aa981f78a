"""portable-code and portable-prose: the pinned wheels fetched by the real pip into temporary
caches (one download shared by the session, a few more where the test is about the fetch)."""

import hashlib
import json
import os
import shutil
import sys
import threading
import time
import zipfile
from pathlib import Path

import pytest

from bitnet import portable
from bitnet.data import SEPARATOR, CorpusError, load_corpus, split_of


@pytest.fixture(scope="session")
def portable_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("portable-cache")


@pytest.fixture(scope="session")
def portable_code(portable_cache):
    return load_corpus("portable-code", portable_cache)


@pytest.fixture(scope="session")
def portable_prose(portable_cache):
    return load_corpus("portable-prose", portable_cache)


def both(corpus) -> bytes:
    return bytes(corpus.train) + bytes(corpus.val) + bytes(corpus.test)


def one_line_error(call, *args) -> str:
    with pytest.raises(CorpusError) as info:
        call(*args)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_the_pins_are_pure_python_wheels_sorted_by_name():
    names = [wheel.filename for wheel in portable.WHEELS]
    assert names == sorted(names) and len(set(names)) == len(names)
    assert all(name.endswith("-py3-none-any.whl") for name in names)
    assert 8 <= len(names) <= 15 and sum(wheel.size for wheel in portable.WHEELS) < 8e6
    assert set(portable.PINNED_SHA256) == {"portable-code", "portable-prose"}


def test_portable_code_is_the_py_members_of_the_pinned_wheels(portable_code, portable_cache):
    assert portable_code.sha256 == portable.PINNED_SHA256["portable-code"]
    for name in ("train", "val", "test"):  # the fingerprints: those of the cache files
        path = Path(getattr(portable_code, name).filename)
        assert getattr(portable_code, f"{name}_sha256") == hashlib.sha256(
            path.read_bytes()).hexdigest()
    text = both(portable_code)
    assert 8_000_000 < len(text) < 20_000_000
    n_docs = portable_code.n_train_files + portable_code.n_val_files + portable_code.n_test_files
    assert n_docs > 1000 and text.count(SEPARATOR) == n_docs
    assert 0.02 < portable_code.n_val_files / n_docs < 0.08
    assert 0.02 < portable_code.n_test_files / n_docs < 0.08

    # a wheel member, byte for byte, whole, on the side its <dist>/<member> path hashes to
    wheel = next(w for w in portable.WHEELS if w.dist == "requests")
    with zipfile.ZipFile(portable.wheel_dir(portable_cache) / wheel.filename) as archive:
        member = archive.read("requests/sessions.py")
    split = getattr(portable_code, split_of("requests/requests/sessions.py"))
    assert SEPARATOR + member + SEPARATOR in bytes(split)


def test_a_second_cache_gets_the_same_bytes_also_when_two_builds_race(portable_code, tmp_path):
    cache = tmp_path / "other-machine"
    results: list = []
    errors: list = []

    def build() -> None:
        try:
            results.append(load_corpus("portable-code", cache))
        except BaseException as err:  # surfaces in the main thread below
            errors.append(err)

    threads = [threading.Thread(target=build) for _ in range(2)]  # two real pip downloads
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and len(results) == 2
    for corpus in results:
        assert both(corpus) == both(portable_code)
        assert corpus.sha256 == portable_code.sha256
    assert results[0].entry.name == portable_code.entry.name  # the key depends on the pins only
    assert sorted(p.name for p in cache.iterdir()) == [  # no temporary folder left behind
        portable_code.entry.name, portable.wheel_dir(cache).name]


def test_a_cached_load_needs_neither_the_wheels_nor_the_same_python(
    portable_code, portable_cache, monkeypatch
):
    def no_fetch(*args):
        raise AssertionError("wheels fetched or read on a cached load")

    monkeypatch.setattr(portable, "fetch", no_fetch)
    monkeypatch.setattr(portable, "documents", no_fetch)
    monkeypatch.setattr(sys, "version", "3.99.0 (another Python)")
    again = load_corpus("portable-code", portable_cache)
    assert Path(again.train.filename) == Path(portable_code.train.filename)
    assert again.sha256 == portable_code.sha256


def test_a_corrupt_wheel_in_the_cache_is_refused(portable_code, portable_cache, tmp_path):
    cache = tmp_path / "cache"
    wheels = portable.wheel_dir(cache)
    shutil.copytree(portable.wheel_dir(portable_cache), wheels)
    victim = wheels / next(w.filename for w in portable.WHEELS if w.dist == "networkx")
    raw = bytearray(victim.read_bytes())
    raw[len(raw) // 2] ^= 1  # one flipped bit in a zip member
    victim.write_bytes(bytes(raw))
    message = one_line_error(load_corpus, "portable-code", cache)
    assert str(victim) in message and "pinned" in message and "delete it" in message
    assert sorted(p.name for p in cache.iterdir()) == [wheels.name]  # no cache entry built


def test_pip_refuses_a_download_that_does_not_match_its_pin(tmp_path, monkeypatch):
    idna = next(w for w in portable.WHEELS if w.dist == "idna")
    wrong = portable.Wheel(idna.filename, idna.size, "0" * 64)
    monkeypatch.setattr(portable, "WHEELS", (wrong,))
    monkeypatch.setattr(portable, "REQUIREMENTS", f"{wrong.requirement}\n")
    message = one_line_error(portable.fetch, tmp_path / "wheels", "portable-code")
    assert "portable-code" in message and "hash" in message.lower()
    assert not (tmp_path / "wheels" / idna.filename).exists()


def test_pip_unreachable_is_one_line_with_the_command_to_run_by_hand(tmp_path, monkeypatch):
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)  # no index or wheel folder from config
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/")  # nothing listens on port 9
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    for name in ("PIP_NO_INDEX", "PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL"):
        monkeypatch.delenv(name, raising=False)
    cache = tmp_path / "cache"
    start = time.monotonic()
    message = one_line_error(load_corpus, "portable-prose", cache)
    assert time.monotonic() - start < 60
    assert "portable-prose" in message and "pycode" in message
    assert f"{sys.executable} -m pip download" in message and "--require-hashes" in message
    requirements = portable.wheel_dir(cache) / "requirements.txt"
    assert str(requirements) in message  # the command's requirements file is kept for it
    assert requirements.read_text() == portable.REQUIREMENTS
    assert not list(portable.wheel_dir(cache).glob("*.whl"))


def test_portable_prose_is_the_english_of_the_same_files(portable_code, portable_prose):
    assert portable_prose.sha256 == portable.PINNED_SHA256["portable-prose"]
    text = both(portable_prose).decode("utf-8")
    assert 2_000_000 < len(text) < len(both(portable_code)) / 2
    assert "Classes Without Boilerplate" in text  # attrs' docstring
    lines = text.splitlines()
    code_line = ("def ", "class ", "import ", "from ", "return ")
    source_code = sum(
        line.lstrip().startswith(code_line)
        for line in both(portable_code).decode("utf-8", "replace").splitlines()
    )
    assert source_code > 20_000 and sum(line.startswith(code_line) for line in lines) < 200
    letters = sum(c.isalpha() or c.isspace() for c in text) / len(text)
    assert letters > 0.85  # words, not punctuation-heavy code
    assert portable_prose.n_val_files <= portable_code.n_val_files
    assert portable_prose.n_test_files <= portable_code.n_test_files


def test_every_member_parses_on_this_python(portable_code, portable_prose):
    """No file drops out of portable-prose for want of a parser (see bitnet.portable)."""
    metas = [json.loads((c.entry / "meta.json").read_text())
             for c in (portable_code, portable_prose)]
    assert metas[1]["skipped"]["unparsable"] == 0 and metas[1]["skipped"]["binary"] == 0
    n_docs = portable_code.n_train_files + portable_code.n_val_files + portable_code.n_test_files
    assert metas[0]["skipped"]["empty"] > 0  # empty __init__.py files
    n_files = n_docs + metas[0]["skipped"]["empty"]
    assert n_files == sum(1 for _ in portable.documents(Path(metas[0]["source"])))
    # every other file holds some prose
    assert n_files == (portable_prose.n_train_files + portable_prose.n_val_files
                       + portable_prose.n_test_files + metas[1]["skipped"]["empty"])


def test_a_build_that_misses_the_pin_is_refused(portable_cache, tmp_path, monkeypatch):
    shutil.copytree(portable.wheel_dir(portable_cache), portable.wheel_dir(tmp_path))
    monkeypatch.setitem(portable.PINNED_SHA256, "portable-code", "f" * 64)
    message = one_line_error(load_corpus, "portable-code", tmp_path)
    assert portable.PINNED_SHA256["portable-code"] in message and "train on pycode" in message
    assert [p.name for p in tmp_path.iterdir()] == [portable.wheel_dir(tmp_path).name]
