"""DiLoCo across processes on torchft: a real lighthouse and real workers on 127.0.0.1.

Each worker is `python -m agent.cli.diloco diloco ...` in its own process group, killed in
`finally` so none outlives a test. Tolerance against the single-process reference: none, the
weights are bit-identical. Both sides run on one thread, start from the same checkpoint, draw
the same batches, and do the same float operations in the same order (the pseudo-gradient is
one flat vector; an all-reduce of two values is a + b, which is commutative in IEEE arithmetic;
the int8/fp16 path decodes in rank order on both sides), so any difference is a real bug.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bitnet.checkpoint import checkpoint_base, checkpoint_hash, load_checkpoint, save_checkpoint
from bitnet.data import load_corpus
from bitnet.model import BitNetConfig
from merge.diloco import parameters_of, run_diloco
from merge.inner import InnerConfig, fresh_model

TINY = BitNetConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                    num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32)
BATCH, SEQ, H = 8, 32, 5
WORDS = ("alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa",
         "lambda", "mu")


def write_corpora(root: Path) -> list[Path]:
    """Two small text corpora of different styles (prose-like words, code-like lines)."""
    prose, code = root / "prose", root / "code"
    for folder in (prose, code):
        folder.mkdir(parents=True)
    for i in range(6):
        (prose / f"doc{i}.txt").write_text(
            " ".join(WORDS[(i * 7 + j * j) % len(WORDS)] for j in range(700)))
        (code / f"mod{i}.py").write_text(
            "".join(f"def f{j}(x):\n    return x * {i + j}\n" for j in range(120)))
    return [prose, code]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Corpora, a common base checkpoint, and a corpus cache shared with the workers."""
    root = tmp_path_factory.mktemp("diloco")
    corpora = write_corpora(root)
    save_checkpoint(fresh_model(TINY, 0), root / "base")
    env = {**os.environ, "MAGNET_CACHE_DIR": str(root / "cache"), "OMP_NUM_THREADS": "1",
           "PYTHONUNBUFFERED": "1"}
    return {"root": root, "corpora": corpora, "base": root / "base", "env": env}


class Processes:
    """Started commands, each in its own session (process group), all killed at the end."""

    def __init__(self, root: Path, env: dict) -> None:
        self.root, self.env = root, env
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, *args: str) -> Path:
        log = self.root / f"{name}.log"
        with log.open("w") as out:
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-m", "agent.cli.diloco", *args], stdout=out,
                stderr=subprocess.STDOUT, env=self.env, cwd=self.root, start_new_session=True)
        return log

    def wait_for(self, log: Path, pattern: str, timeout: float = 60.0) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if match := re.search(pattern, log.read_text(), re.M):
                return match
            time.sleep(0.1)
        raise AssertionError(f"{pattern!r} not in {log.name} after {timeout}s:\n"
                             f"{log.read_text()[-3000:]}")

    def finish(self, name: str, timeout: float = 90.0) -> int:
        return self.procs[name].wait(timeout=timeout)

    def kill(self, name: str) -> None:
        proc = self.procs[name]
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def kill_all(self) -> None:
        for name in self.procs:
            self.kill(name)


def lighthouse(procs: Processes, *extra: str) -> str:
    log = procs.start("lighthouse", "lighthouse", "--bind", "127.0.0.1:0",
                      "--heartbeat-timeout", "1", *extra)
    port = procs.wait_for(log, r"\(port (\d+)\)", timeout=30).group(1)
    return f"http://127.0.0.1:{port}"


def worker_args(world, url: str, index: int, out: Path, *extra: str) -> list[str]:
    return ["diloco", "--lighthouse", url, "--corpus", f"text:{world['corpora'][index]}",
            "--init", str(world["base"]), "--inner-steps", str(H), "--batch-size", str(BATCH),
            "--seq-len", str(SEQ), "--replica-id", f"w{index}", "--out", str(out),
            "--data-seed", str(index), "--threads", "1", "--timeout", "5", *extra]


def reference(world, outer_steps: int, compress: str) -> dict[str, torch.Tensor]:
    trains = [load_corpus(f"text:{c}", world["root"] / "cache").train for c in world["corpora"]]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = run_diloco(load_checkpoint(world["base"]), trains, inner_steps=H,
                            outer_steps=outer_steps, inner=InnerConfig(batch_size=BATCH,
                                                                       seq_len=SEQ),
                            data_seeds=[0, 1], compress=compress)
    finally:
        torch.set_num_threads(threads)
    return parameters_of(result.model)


def weights(out: Path) -> dict[str, torch.Tensor]:
    return parameters_of(load_checkpoint(out / "checkpoint"))


@pytest.mark.parametrize("compress", ["none", "int8"])
def test_two_workers_finish_and_equal_single_process_diloco(world, compress):
    outer_steps = 3
    procs = Processes(world["root"] / compress, world["env"])
    procs.root.mkdir()
    try:
        url = lighthouse(procs, "--min-replicas", "2")
        outs = [procs.root / f"w{i}" for i in range(2)]
        logs = [procs.start(f"w{i}", *worker_args(world, url, i, outs[i], "--outer-steps",
                                                   str(outer_steps), "--compress", compress))
                for i in range(2)]
        assert [procs.finish(f"w{i}") for i in range(2)] == [0, 0], logs[0].read_text()
        procs.wait_for(procs.root / "lighthouse.log", r"quorum \d+: 2 worker\(s\): w0 .*w1")
    finally:
        procs.kill_all()

    expected = reference(world, outer_steps, compress)
    for out, log in zip(outs, logs, strict=True):
        text = log.read_text()
        assert f"outer {outer_steps}/{outer_steps} · " in text and "2 worker(s)" in text
        assert re.search(r"done: 3 outer steps, val_bpb \d", text)
        got = weights(out)
        assert all(torch.equal(got[k], expected[k]) for k in expected), \
            max((got[k] - expected[k]).abs().max().item() for k in expected)
        assert checkpoint_base(out / "checkpoint") == checkpoint_hash(world["base"])
    numel = sum(t.numel() for t in expected.values())
    per_step = {"none": 4 * numel, "int8": numel + 4 * -(-numel // 1024)}[compress]
    assert f"sent {per_step * outer_steps / 1000:.1f} kB ({compress})" in logs[0].read_text()


def test_killed_worker_the_other_carries_on_and_a_restart_catches_up(world):
    """w1 is SIGKILLed; w0 carries on alone; w1 restarted on the same --out resumes from its
    last checkpoint, is healed from w0 at its first quorum, and both finish on the same model.
    w0's run must outlast w1's restart: the two share the CPUs alike, and w0 gets through ~35
    outer steps of 10 (measured, on a loaded machine too) while the restart imports torch and
    resumes. 70 leave it twice that; every step after the heal runs on both workers, so more
    would only cost CPU."""
    outer_steps = 70
    steps = ["--outer-steps", str(outer_steps), "--inner-steps", "10"]
    procs = Processes(world["root"] / "kill", world["env"])
    procs.root.mkdir()
    outs = [procs.root / f"w{i}" for i in range(2)]
    try:
        url = lighthouse(procs, "--min-replicas", "1", "--join-timeout", "5")
        args = [worker_args(world, url, i, outs[i], *steps) for i in range(2)]
        logs = [procs.start(f"w{i}", *args[i]) for i in range(2)]
        procs.wait_for(logs[1], rf"^outer \d+/{outer_steps} · .* 2 worker\(s\)")
        procs.kill("w1")  # SIGKILL: no goodbye to the lighthouse or the peer
        # restarted at once (same --out: resumes, then heals); its start-up (torch's import
        # alone) outlasts the lighthouse's 1 s heartbeat timeout, so w0 is alone meanwhile
        restart = procs.start("w1-again", *args[1])
        # w0 carries on alone: a step of its own after one with w1
        procs.wait_for(logs[0], rf"2 worker\(s\)[\s\S]*^outer \d+/{outer_steps} · .* 1 worker\(s\)")
        resumed = int(procs.wait_for(restart, r"resuming from outer step (\d+)").group(1))
        healed = procs.wait_for(restart,
                                rf"^outer (\d+)/{outer_steps} · .* caught up from a live peer")
        assert procs.finish("w0") == 0 and procs.finish("w1-again") == 0
    finally:
        procs.kill_all()

    assert resumed >= 1  # w1 had checkpointed before it was killed
    assert int(healed.group(1)) > resumed + 1  # it jumped ahead to the live peer's step
    for log in (logs[0], restart):
        text = log.read_text()
        assert f"outer {outer_steps}/{outer_steps} · " in text, text[-2000:]
        assert f"done: {outer_steps} outer steps" in text
    after_heal = logs[0].read_text().split(f"outer {healed.group(1)}/{outer_steps}")[1]
    assert "2 worker(s)" in after_heal  # the newcomer took part again
    w0, w1 = weights(outs[0]), weights(outs[1])
    assert all(torch.equal(w0[k], w1[k]) for k in w0)  # the same global model on both


def run_command(world, capsys, *args: str) -> tuple[int, str]:
    import argparse

    from agent.cli import diloco as diloco_command

    parser = argparse.ArgumentParser()
    diloco_command.add_commands(parser.add_subparsers(dest="command", required=True))
    code = diloco_command.main(parser.parse_args(list(args)))
    return code, capsys.readouterr().err


def test_bad_input_is_one_clear_line(world, capsys, tmp_path, request):
    import socket

    sock = socket.socket()  # a port nobody listens on: bound, not listening, for the whole test,
    request.addfinalizer(sock.close)  # so no other test's server can take it meanwhile
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    common = ["--corpus", f"text:{world['corpora'][0]}", "--init", str(world["base"]),
              "--seq-len", "32", "--out", str(tmp_path / "w")]
    cases = [
        ([f"127.0.0.1:{port}"], rf"cannot reach the lighthouse at http://127.0.0.1:{port} "
                                r"\(.*\): start it with `magnet-agent lighthouse"),
        (["no-port-here"], r"--lighthouse 'no-port-here' is not HOST:PORT"),
        ([f"127.0.0.1:{port}", "--inner-steps", "0"], r"--inner-steps must be at least 1"),
        ([f"127.0.0.1:{port}", "--init", str(tmp_path / "nope")], r"no run '.*nope' under"),
        ([f"127.0.0.1:{port}", "--init", str(world["corpora"][0])],
         r"config.json is missing: point to a directory made by training"),
        ([f"127.0.0.1:{port}", "--corpus", "text:/no/such/dir"], r"text corpus path not found"),
        ([f"127.0.0.1:{port}", "--seq-len", "64"], r"--seq-len 64 exceeds .* context of 32"),
        ([f"127.0.0.1:{port}", "--shard", "2/2"], r"--shard 2/2: use K/N with 0 <= K < N"),
    ]
    for extra, pattern in cases:
        code, err = run_command(world, capsys, "diloco", *common, "--lighthouse", *extra)
        assert code == 2, err
        assert len(err.strip().splitlines()) == 1 and re.search(pattern, err), err

    from merge.diloco_worker import _exclusive

    with _exclusive(tmp_path / "w"):  # another worker holds this --out
        code, err = run_command(world, capsys, "diloco", *common, "--lighthouse", "127.0.0.1:1")
    assert code == 2 and f"{tmp_path / 'w'} is in use by another worker" in err, err

    code, err = run_command(world, capsys, "lighthouse", "--bind", "nowhere")
    assert code == 2 and "--bind 'nowhere' is not HOST:PORT" in err
    code, err = run_command(world, capsys, "lighthouse", "--min-replicas", "0")
    assert code == 2 and "--min-replicas must be at least 1" in err


def test_lighthouse_refuses_a_port_in_use():
    from merge.lighthouse import LighthouseError, LighthouseOptions, start

    first = start(LighthouseOptions(bind="127.0.0.1:0"))
    try:
        port = first.address().rsplit(":", 1)[1]
        with pytest.raises(LighthouseError, match=rf"cannot serve on 127.0.0.1:{port} .*--bind"):
            start(LighthouseOptions(bind=f"127.0.0.1:{port}"))
    finally:
        first.shutdown()
