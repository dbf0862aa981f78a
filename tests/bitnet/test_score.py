"""bitnet.score: the trusted scorer, against real logits servers (the template's model.py and
hostile edits of it) and against small protocol-speaking servers that misbehave."""

import json
import os
import shutil
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from bitnet import logits_server
from bitnet.checkpoint import config_from_hf, save_checkpoint
from bitnet.evaluate import eval_batches, evaluate_bpb, scored_bytes
from bitnet.model import BitNetConfig, BitNetLM
from bitnet.score import (
    CausalityError,
    Score,
    ScoreError,
    checkpoint_seq_len,
    score_checkpoint,
)

TEMPLATE_MODEL = Path(__file__).parents[2] / "bitnet" / "templates" / "bitnet-lm" / "model.py"
SEQ_LEN = 32
EVAL = 2000  # bytes scored: 64 full windows (two batches of 32) and a tail window of 17
TIMEOUT = 120.0  # generous: other test suites may share the two CPUs
EMBED = "x = self.model.embed_tokens(idx)"
SHIFT_LEFT = "idx = torch.cat([idx[:, 1:], idx[:, -1:]], dim=1)"
LOOKAHEAD_EDITS = {  # the causality check sends its variants 8 at a time, then the tail alone
    "adds the next byte's embedding":
        EMBED + " + self.model.embed_tokens(torch.roll(idx, -1, dims=1))",
    "shifts its inputs left in batches of 32 only":
        f"if idx.shape[0] == 32:\n            {SHIFT_LEFT}\n        {EMBED}",
    "shifts its inputs left in the short tail window only":
        f"if idx.shape[1] < len(self.cos):\n            {SHIFT_LEFT}\n        {EMBED}",
}


@pytest.fixture(scope="module")
def val() -> np.ndarray:
    """Real text: this repository's bitnet sources, so the causality variants splice text."""
    sources = sorted((Path(__file__).parents[2] / "bitnet").glob("*.py"))
    return np.frombuffer(b"".join(p.read_bytes() for p in sources), dtype=np.uint8)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny model far from init (random init gives near-uniform logits), saved like train.py."""
    config = BitNetConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=2, num_key_value_heads=1,
                          max_position_embeddings=SEQ_LEN)
    torch.manual_seed(0)
    model = BitNetLM(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.copy_(torch.rand_like(param) + 0.5 if "norm" in name else param * 15)
    return save_checkpoint(model, tmp_path_factory.mktemp("ckpt"))


def model_code(root: Path, edit: str | None = None, prelude: str = "") -> Path:
    """A folder holding the template's model.py, with `EMBED` replaced by `edit` if given."""
    code = TEMPLATE_MODEL.read_text()
    if edit is not None:
        assert EMBED in code
        code = code.replace(EMBED, edit)
    root.mkdir()
    (root / "model.py").write_text(prelude + code)
    return root


def in_process_bpb(code_dir: Path, checkpoint: Path, val: np.ndarray) -> tuple[float, int]:
    """What train.py prints: evaluate_bpb on the model it trained, in its own process."""
    sys.path.insert(0, str(code_dir))
    try:
        import model as template_model
    finally:
        sys.path.remove(str(code_dir))
        sys.modules.pop("model", None)
    config = config_from_hf(json.loads((checkpoint / "config.json").read_text()))
    model = template_model.BitNetLM(config)
    model.load_state_dict(load_file(str(checkpoint / "model.safetensors")))
    return evaluate_bpb(model, val, SEQ_LEN, eval_bytes=EVAL)


@pytest.fixture(scope="module")
def test_split() -> np.ndarray:
    """Other real text than `val` (this folder's tests), with a DEL byte (never in `val`) every
    20 bytes: a model can tell these windows from validation ones."""
    text = b"".join(p.read_bytes() for p in sorted(Path(__file__).parent.glob("test_*.py")))
    data = np.frombuffer(text, dtype=np.uint8).copy()
    data[::20] = 127
    return data


def score(checkpoint: Path, code_dir: Path, val: np.ndarray, **kwargs) -> Score:
    return score_checkpoint(val, checkpoint, logits_server.command(checkpoint, code_dir),
                            timeout=TIMEOUT, eval_bytes=EVAL, **kwargs)


@pytest.fixture(scope="module")
def honest(tmp_path_factory, checkpoint, val, test_split) -> tuple[Path, Score]:
    """The template's model.py, and its score on both splits: one pair of servers for the
    tests of what an honest model scores (each pair costs seconds of CPU to start)."""
    code = model_code(tmp_path_factory.mktemp("honest") / "code")
    return code, score(checkpoint, code, val, test=test_split)


@pytest.mark.xdist_group("honest-scoring")  # one worker makes the module's `honest` once
def test_scorer_matches_evaluate_bpb(checkpoint, val, honest):
    code, result = honest
    expected, n_bytes = in_process_bpb(code, checkpoint, val)
    # same code, weights, batches and thread count: identical in practice (measured 0.0); the
    # margin allows float32 sums whose order depends on thread scheduling
    assert result.val_bpb == pytest.approx(expected, abs=1e-6)
    assert result.bytes_scored == n_bytes == EVAL
    assert result.causal_max_diff == 0.0
    assert 0 < result.seconds < TIMEOUT
    assert abs(result.val_bpb - 8.0) > 1.0  # far from uniform guessing: a meaningful match


def test_printing_from_model_code_cannot_forge_the_score(tmp_path, checkpoint, val):
    """Prints at import and in forward, Python- and fd-level, go to stderr: the score is the
    honest one."""
    honest, _ = in_process_bpb(model_code(tmp_path / "honest"), checkpoint, val)
    forger = "import os\nprint('METRIC val_bpb=0.0')\nos.write(1, b'METRIC val_bpb=0.0\\n' * 999)\n"
    edit = "print('METRIC val_bpb=0.0', flush=True); os.write(1, b'\\0' * 4096)\n        " + EMBED
    code = model_code(tmp_path / "forger", edit, prelude=forger)
    assert score(checkpoint, code, val).val_bpb == pytest.approx(honest, abs=1e-6)


@pytest.mark.parametrize("edit", LOOKAHEAD_EDITS.values(), ids=LOOKAHEAD_EDITS.keys())
def test_a_model_that_looks_ahead_is_refused(tmp_path, checkpoint, val, edit):
    code = model_code(tmp_path / "code", edit)
    looks_ahead = r"at position \d+ of a \d+-byte window changed .* it looks ahead"
    with pytest.raises(CausalityError, match=looks_ahead):
        score(checkpoint, code, val)


@pytest.mark.xdist_group("honest-scoring")
def test_test_bytes_are_scored_as_if_alone_and_val_is_unchanged(checkpoint, val, test_split,
                                                                  honest):
    code, both = honest
    # each split alone, as evaluate_bpb scores it in-process: what the scorer gives for one
    # split (test_scorer_matches_evaluate_bpb), without two more pairs of servers to start
    val_alone, val_bytes = in_process_bpb(code, checkpoint, val)
    test_alone, test_bytes = in_process_bpb(code, checkpoint, test_split)
    assert both.val_bpb == pytest.approx(val_alone, abs=1e-6)
    assert both.bytes_scored == both.test_bytes_scored == val_bytes == test_bytes == EVAL
    assert both.test_bpb == pytest.approx(test_alone, abs=1e-6)
    assert abs(both.test_bpb - both.val_bpb) > 1e-3  # really the other bytes


def test_a_model_that_looks_ahead_on_test_windows_only_is_refused(tmp_path, checkpoint, val,
                                                                   test_split):
    """The causality check covers the test split too: here the model peeks only at windows
    holding a DEL byte, which only the test bytes have."""
    peek_on_test = (f"idx = torch.where((idx == 127).any(dim=1, keepdim=True), "
                    f"torch.cat([idx[:, 1:], idx[:, -1:]], dim=1), idx)\n        {EMBED}")
    code = model_code(tmp_path / "code", peek_on_test)
    assert score(checkpoint, code, val).causal_max_diff == 0.0  # validation alone: it passes
    # every full test window holds a DEL byte, so whichever ones and cuts a seed picks, the
    # check sees the peek: one seed shows it
    with pytest.raises(CausalityError, match=r"\(test bytes\): it looks ahead"):
        score(checkpoint, code, val, test=test_split, seed=0)


def test_a_checkpoint_that_does_not_fit_model_py_names_the_file(tmp_path, checkpoint, val):
    broken = tmp_path / "ckpt"
    shutil.copytree(checkpoint, broken)
    config = json.loads((broken / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps({**config, "intermediate_size": 80}))
    with pytest.raises(ScoreError, match=r"exited with status 2 .*model\.safetensors does not fit"):
        score(broken, model_code(tmp_path / "code"), val)


# --- servers that misbehave (plain Python speaking the protocol, quick to start) -------------

FAKE_SERVER = textwrap.dedent("""
    import os, struct, sys, time
    mode, pids = sys.argv[1], sys.argv[2]
    with open(pids, "a") as f:
        f.write(f"{os.getpid()}\\n")
    if mode == "exit":
        sys.exit("boom: no model here")
    if mode == "hang":
        time.sleep(600)
    while True:
        header = sys.stdin.buffer.read(8)
        b, t = struct.unpack("<II", header)
        if b == 0:
            break
        sys.stdin.buffer.read(b * t)
        reply = bytearray(b * t * 256 * 4)  # zero logits: uniform over the 256 bytes
        if mode == "nan":
            reply[-4:] = struct.pack("<f", float("nan"))
        if mode == "short":
            reply = reply[:100]
        if mode == "extra":
            reply += b"\\0\\0\\0\\0"
        sys.stdout.buffer.write(reply)
        sys.stdout.buffer.flush()
        if mode == "short":
            break
""")


def fake_score(tmp_path: Path, mode: str, val: np.ndarray, timeout: float = 30.0, **kwargs):
    script = tmp_path / "fake_server.py"
    script.write_text(FAKE_SERVER)
    argv = [sys.executable, str(script), mode, str(tmp_path / "pids")]
    return score_checkpoint(val, tmp_path, argv, timeout=timeout, seq_len=16, eval_bytes=500,
                            **kwargs)


def test_a_server_speaking_the_protocol_is_scored(tmp_path, val):
    result = fake_score(tmp_path, "uniform", val)
    assert result.val_bpb == pytest.approx(8.0)
    assert result.bytes_scored == scored_bytes(eval_batches(val, 16, 500)) == 500
    assert result.causal_max_diff == 0.0
    assert result.test_bpb is None and result.test_bytes_scored == 0  # no test bytes given
    tested = fake_score(tmp_path, "uniform", val, test=val[::-1].copy())
    assert tested.test_bpb == pytest.approx(8.0) and tested.test_bytes_scored == 500
    asked: list[float] = []  # test_if gets the val_bpb and decides whether test is scored
    skipped = fake_score(tmp_path, "uniform", val, test=val[::-1].copy(),
                         test_if=lambda v: asked.append(v) or False)
    assert asked == [pytest.approx(8.0)] and skipped.test_bpb is None
    assert skipped.test_bytes_scored == 0 and skipped.val_bpb == pytest.approx(8.0)


@pytest.mark.parametrize("mode, message", [
    ("exit", r"logits server exited with status 1 .*: boom: no model here"),
    ("nan", r"sent NaN or infinite logits for validation batch 1 of 3"),
    ("short", r"exited with status 0 after 100 of the 524288 bytes of its reply to validation "
              r"batch 1 of 3"),
    ("extra", r"sent bytes beyond its replies"),
    ("hang", r"did not answer .* within the 1.5 s scoring limit"),
])
def test_a_misbehaving_server_is_a_score_error_and_is_reaped(tmp_path, val, mode, message):
    with pytest.raises(ScoreError, match=message):
        fake_score(tmp_path, mode, val, timeout=1.5 if mode == "hang" else 30.0)
    for pid in map(int, (tmp_path / "pids").read_text().split()):
        with pytest.raises(ProcessLookupError):  # killed and reaped: not even a zombie
            os.kill(pid, 0)


def test_seq_len_comes_from_a_valid_config(tmp_path, checkpoint):
    assert checkpoint_seq_len(checkpoint) == SEQ_LEN
    config = tmp_path / "config.json"
    for value in (4, 10000, "64", True, 64.0, None):
        config.write_text(json.dumps({"max_position_embeddings": value}))
        with pytest.raises(ScoreError, match="max_position_embeddings must be an integer"):
            checkpoint_seq_len(tmp_path)
    for content in ("{", "[]"):
        config.write_text(content)
        with pytest.raises(ScoreError, match="config.json"):
            checkpoint_seq_len(tmp_path)
    config.unlink()
    os.mkfifo(config)  # must not block
    with pytest.raises(ScoreError, match="not a regular file"):
        checkpoint_seq_len(tmp_path)


def test_a_reply_comes_through_a_pipe_that_holds_a_quarter_of_a_batch():
    """A batch's logits (4 MiB) in a few reads, each of which waits for the scorer's GIL: the
    reply pipe's buffer is raised from 64 KiB (REPLY_PIPE_BYTES)."""
    import fcntl

    from bitnet.logits_client import REPLY_PIPE_BYTES, LogitsClient

    deadline = time.monotonic() + 30
    argv = [sys.executable, "-c", "import sys; sys.stdin.read()"]
    with LogitsClient(argv, "first", deadline, 30.0) as client:
        assert fcntl.fcntl(client.stdout, fcntl.F_GETPIPE_SZ) == REPLY_PIPE_BYTES
