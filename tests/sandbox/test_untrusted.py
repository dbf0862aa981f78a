"""What an experiment leaves is untrusted input: real runs leave a symlink to a host secret, a
FIFO, oversized or misshapen files where MAGNET reads, and nothing of the target gets through
(sandbox.untrusted, and sandbox.metrics through it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from sandbox.confine import confinement
from sandbox.untrusted import (
    MissingFileError,
    UntrustedFileError,
    copy_tree,
    read_bytes,
    read_json,
    read_schedule,
    sha256_file,
)

SECRET_MARK = "987654321"  # a number only the host file holds
SECRET = json.dumps({"val_bpb": 0.0001, "stolen": int(SECRET_MARK), "key": "PRIVATE-KEY-3f9a"})


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    path = tmp_path / "host" / "secret.json"
    path.parent.mkdir()
    path.write_text(SECRET)
    return path


def test_a_symlink_is_refused_whatever_it_points_at(tmp_path: Path, secret: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    for name, target in (("metrics.json", secret), ("dev", Path("/dev/zero")),
                         ("dir", secret.parent)):
        (out / name).symlink_to(target)
        with pytest.raises(UntrustedFileError, match=f"{name} is a symlink; MAGNET reads only"):
            read_bytes(out, name, 1 << 20)
    with pytest.raises(UntrustedFileError) as err:
        sha256_file(out, "metrics.json", 1 << 20)
    assert "\n" not in str(err.value) and SECRET_MARK not in str(err.value)
    link = tmp_path / "linked-out"
    link.symlink_to(out)  # the directory itself is not followed either
    (out / "plain.json").write_text("{}")
    with pytest.raises(UntrustedFileError, match="is not a directory MAGNET can read"):
        read_bytes(link, "plain.json", 10)
    assert read_json(out, "plain.json", 10) == {}


def test_names_that_leave_the_directory_are_refused(tmp_path: Path, secret: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    for name in ("../host/secret.json", str(secret), "..", ".", "", "a/b"):
        with pytest.raises(UntrustedFileError, match="is not a plain file name"):
            read_bytes(out, name, 1 << 20)


def test_a_fifo_or_a_device_is_refused_without_blocking(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    os.mkfifo(out / "metrics.json")
    start = time.monotonic()
    with pytest.raises(UntrustedFileError, match="metrics.json is a FIFO"):
        read_bytes(out, "metrics.json", 100)
    assert time.monotonic() - start < 2
    with pytest.raises(UntrustedFileError, match="null is a character device"):
        read_bytes("/dev", "null", 100)
    with pytest.raises(MissingFileError, match="nothing.json does not exist"):
        read_bytes(out, "nothing.json", 100)


def test_size_is_bounded_and_shape_is_checked(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "ten").write_bytes(b"x" * 10)
    assert read_bytes(out, "ten", 10) == b"x" * 10
    with pytest.raises(UntrustedFileError, match="ten is larger than 9 bytes"):
        read_bytes(out, "ten", 9)
    with pytest.raises(UntrustedFileError, match="ten is larger than 9 bytes"):
        sha256_file(out, "ten", 9)
    good = [0.0, 0.25, 0.5, 0.999]
    (out / "schedule.json").write_text(json.dumps(good))
    data, values = read_schedule(out, "schedule.json")
    assert values == good and data == json.dumps(good).encode()
    for bad in ("[0.1, NaN]", "[0.1, 1.5]", '[0.1, "0.2"]', "[[0.1]]", "[true]", '{"a": 1}',
                "[-0.1]", "[0.1, Infinity]", "[" * 100_000, "[" * 65 + "]" * 65):
        (out / "schedule.json").write_text(bad)
        with pytest.raises(UntrustedFileError) as err:
            read_schedule(out, "schedule.json")
        assert "\n" not in str(err.value) and "schedule.json" in str(err.value)


def test_deep_json_is_refused_before_parsing_even_on_a_small_stack(tmp_path: Path) -> None:
    """100,000 nested `[` in metrics.json crashed a process whose thread had a small stack
    (json's C parser recurses per level): refused before json sees it, in any thread."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "metrics.json").write_text("[" * 100_000 + "]" * 100_000)
    (out / "strings.json").write_text(json.dumps({"a": "[" * 1000, "b": [[1]]}))
    outcome: list[object] = []

    def read() -> None:
        with pytest.raises(UntrustedFileError, match="nests deeper than 64 levels") as err:
            read_json(out, "metrics.json", 1 << 20)
        outcome.append(err.value)
        outcome.append(read_json(out, "strings.json", 1 << 20))  # brackets in strings count not

    threading.stack_size(256 * 1024)
    try:
        worker = threading.Thread(target=read)
        worker.start()
        worker.join(30)
    finally:
        threading.stack_size(0)
    assert len(outcome) == 2 and outcome[1] == {"a": "[" * 1000, "b": [[1]]}


def test_copy_tree_copies_regular_files_only(tmp_path: Path, secret: Path) -> None:
    src = tmp_path / "ckpt"
    (src / "sub").mkdir(parents=True)
    (src / "config.json").write_text("{}")
    (src / "sub" / "w.bin").write_bytes(b"w" * 100)
    assert copy_tree(src, tmp_path / "copy", 1000) == 102
    assert (tmp_path / "copy" / "sub" / "w.bin").read_bytes() == b"w" * 100
    with pytest.raises(UntrustedFileError, match="larger than"):
        copy_tree(src, tmp_path / "small", 50)

    (src / "sub" / "model.safetensors").symlink_to(secret)
    with pytest.raises(UntrustedFileError, match="model.safetensors is a symlink"):
        copy_tree(src, tmp_path / "refused", 1 << 20)
    (src / "sub" / "model.safetensors").unlink()
    os.mkfifo(src / "pipe")
    with pytest.raises(UntrustedFileError, match="pipe is a FIFO"):
        copy_tree(src, tmp_path / "refused-fifo", 1 << 20)
    for copy in tmp_path.glob("refused*"):
        for path in copy.rglob("*"):
            assert path.is_dir() or SECRET_MARK.encode() not in path.read_bytes()


# --- real runs -------------------------------------------------------------------------------

FIFO_RUN = textwrap.dedent("""
    import sys
    from pathlib import Path
    from sandbox import RunLimits, run_command, run_environ
    from sandbox.confine import confinement
    tmp = Path(sys.argv[1])
    out = tmp / "out"
    out.mkdir()
    env = run_environ(time_budget=5, seed=0, output_dir=out)
    result = run_command(
        'mkfifo "$MAGNET_OUTPUT_DIR/metrics.json"; echo METRIC val_bpb=1.5', tmp, env=env,
        limits=RunLimits(time_budget=5, grace=5), log_path=tmp / "exp.log", output_dir=out,
        metric="val_bpb", confinement=confinement().with_paths(writable=[out]))
    print("RESULT", result.status, result.metrics)
""")


def test_a_fifo_named_metrics_json_does_not_hang_the_run(tmp_path: Path) -> None:
    """The run's own code makes the FIFO; the controller reading metrics.json must not wait on
    it for good (the wall budget does not cover that read). It runs in a child here, so a hang
    fails the test instead of freezing the suite."""
    start = time.monotonic()
    try:
        done = subprocess.run([sys.executable, "-c", FIFO_RUN, str(tmp_path)],
                              capture_output=True, text=True, timeout=40)
    except subprocess.TimeoutExpired:
        pytest.fail("the controller hung on a FIFO named metrics.json")
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "out" / "metrics.json").is_fifo()  # the attempt was real
    assert "RESULT ok {'val_bpb': 1.5}" in done.stdout
    assert time.monotonic() - start < 30


def test_a_symlinked_metrics_json_reaches_no_record(make_ws, git, secret: Path) -> None:
    """A confined run links metrics.json to a host file: none of its numbers reach the run's
    metrics, the journal, the kept experiment's git note or any git object."""
    ws = make_ws()
    ws.begin(1, "steal a host file")
    result = ws.run(f'ln -s {secret} "$MAGNET_OUTPUT_DIR/metrics.json"; '
                    "echo METRIC val_bpb=1.5", time_budget=5, metric="val_bpb",
                    confinement=confinement())
    assert (ws.output_dir(1) / "metrics.json").is_symlink()  # the attempt was real
    assert result.status == "ok" and result.metrics == {"val_bpb": 1.5}
    ws.keep(1, {"metric": result.metrics["val_bpb"], "metrics": result.metrics}, best=True)
    assert ws.record(1)["metrics"] == {"val_bpb": 1.5}
    everything = [(ws.run_dir / "sandbox.json").read_text(),
                  git(ws.git.git_dir, "log", "--all", "--notes=magnet", "-p")]
    for text in everything:
        assert SECRET_MARK not in text and "PRIVATE-KEY" not in text
