"""agent.scoring.warm_servers: logits servers started (confined) before their checkpoint exists
score it exactly as cold ones do, also after its directory was renamed (as a warm-started run's
staging directory is), and leave nothing behind when never told to go."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch

from agent.scoring.warm_servers import SharedView, WarmServers
from bitnet import logits_server
from bitnet.checkpoint import save_checkpoint
from bitnet.model import BitNetConfig, BitNetLM
from bitnet.score import score_checkpoint
from sandbox.confine import confinement
from sandbox.limits import run_limits
from sandbox.zygote import ForkedChild, usable

MODEL_PY = Path(__file__).parents[2] / "bitnet" / "templates" / "bitnet-lm" / "model.py"
SEQ_LEN = 32


def _limits():
    return run_limits(memory=2**30, processes=64, fsize=None, nest=True, watch=True)


def _wrap(limits, *readable: Path):
    confined = confinement().with_paths(readable=list(readable))
    return lambda argv: limits.wrap(confined.wrap(argv))


@pytest.mark.parametrize("forked", [False, True], ids=["started", "forked"])
def test_warm_servers_score_as_cold_ones_after_the_rename(tmp_path: Path, forked: bool) -> None:
    code = tmp_path / "code"
    code.mkdir()
    (code / "model.py").write_text(MODEL_PY.read_text())
    outputs = tmp_path / "outputs"
    staging, final = outputs / ".warm-1", outputs / "exp-001"
    staging.mkdir(parents=True)
    servers = WarmServers()
    limits = _limits()
    shared = (SharedView(confinement().with_paths(readable=[code, outputs]),
                         {"PATH": os.environ["PATH"]}, outputs) if forked else None)
    servers.prepare(staging, _wrap(limits, code, staging), limits, shared)  # before the checkpoint
    if forked:  # the first prepare starts the fork servers; once they have imported, a
        assert usable(confinement(), limits) and all(z.ready(120) for z in servers.zygotes)
        limits = _limits()  # prepare forks at once
        servers.prepare(staging, _wrap(limits, code, staging), limits, shared)
        assert len(servers.procs) == 2
        assert all(isinstance(p, ForkedChild) for p in servers.procs)
    config = BitNetConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=2, num_key_value_heads=1,
                          max_position_embeddings=SEQ_LEN)
    torch.manual_seed(0)
    deadline = time.monotonic() + 60
    while not servers.ready() and time.monotonic() < deadline:  # up and waiting
        time.sleep(0.05)
    save_checkpoint(BitNetLM(config), staging)  # the run trains into its staging directory
    staging.rename(final)  # ... which then becomes its output directory
    val = np.frombuffer(MODEL_PY.read_bytes() * 2, dtype=np.uint8)
    taken = servers.take(staging, code)
    assert taken is not None and taken[1] is limits
    warm = score_checkpoint(val, final, taken[0], timeout=120, eval_bytes=2000, seed=3)
    limits.remove()
    cold_limits = _limits()
    cold_argv = _wrap(cold_limits, code, final)(logits_server.command(final, code))
    cold = score_checkpoint(val, final, cold_argv, timeout=120, eval_bytes=2000, seed=3)
    cold_limits.remove()
    assert warm.val_bpb == cold.val_bpb and warm.bytes_scored == cold.bytes_scored
    assert servers.take(staging, code) is None  # used once
    servers.close()


def test_warm_servers_never_told_leave_nothing(tmp_path: Path) -> None:
    servers = WarmServers()
    limits = _limits()
    servers.prepare(tmp_path, _wrap(limits, tmp_path), limits)
    procs = [psutil.Process(p.pid) for p in servers.procs]
    procs += [c for p in list(procs) for c in p.children(recursive=True)]
    assert servers.take(tmp_path / "other", tmp_path) is None  # not theirs: stopped
    assert not [p for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert servers.procs == []
