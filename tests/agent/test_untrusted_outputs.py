"""A real confined run links its checkpoint and schedule files to a host secret: the record's
replay facts, `train --init`'s copy into `init/`, a claim's schedule and init artifacts, and
export/merge (resolve_checkpoint) refuse them, and the secret's bytes land nowhere."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from agent.claims.claim import _schedule
from agent.rundir.checkpoint_ref import resolve_checkpoint
from agent.rundir.init_checkpoint import copy_init, find_init, init_dir, pack_init
from agent.rundir.runs import RunError
from agent.scoring.replay_facts import SCHEDULE_FILE, replay_facts
from bitnet.checkpoint import CONFIG_FILE, WEIGHTS_FILE
from bitnet.checkpoint_files import TOKENIZER_CONFIG_FILE, TOKENIZER_FILE
from sandbox import RunLimits, run_command, run_environ
from sandbox.confine import confinement
from sandbox.layout import output_dir

SECRET = b"-----BEGIN PRIVATE KEY----- MAGNET-HOST-SECRET-5c1e [0.1, 0.2] -----END-----"


@pytest.fixture
def left(tmp_path: Path) -> tuple[Path, Path]:
    """(run_dir, the output dir of its experiment 1), as a confined run left it: a regular
    config.json, and model.safetensors and schedule.json linked to a host file."""
    secret = tmp_path / "host" / "ledger.key"
    secret.parent.mkdir()
    secret.write_bytes(SECRET)
    run_dir = tmp_path / "run"
    out = output_dir(run_dir, 1)
    out.mkdir(parents=True)
    config = json.dumps({"model_type": "bitnet"}).replace('"', '\\"')
    command = (f'cd "$MAGNET_OUTPUT_DIR" && echo "{config}" > {CONFIG_FILE} && '
               f"ln -s {secret} {WEIGHTS_FILE} && ln -s {secret} {SCHEDULE_FILE} && "
               "echo METRIC val_bpb=1.5")
    result = run_command(command, tmp_path, env=run_environ(time_budget=5, seed=0, output_dir=out),
                         limits=RunLimits(time_budget=5, grace=5), log_path=tmp_path / "x.log",
                         output_dir=out, confinement=confinement().with_paths(writable=[out]))
    assert result.status == "ok", result.log_tail
    assert (out / WEIGHTS_FILE).is_symlink() and (out / SCHEDULE_FILE).is_symlink()
    return run_dir, out


def assert_secret_nowhere(root: Path) -> None:
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            assert b"MAGNET-HOST-SECRET" not in path.read_bytes(), path


def test_replay_facts_hash_no_linked_file(left: tuple[Path, Path]) -> None:
    _, out = left
    facts = replay_facts({"seed": 0, "metrics": {"steps": 2}}, time_budget=5, threads=1,
                         corpus=None, out_dir=out)
    secret_sha = hashlib.sha256(SECRET).hexdigest()
    assert facts["schedule_sha256"] is None and facts["switch_step"] is None
    assert facts["checkpoint_sha256"] is None
    assert secret_sha not in json.dumps(facts)


def test_init_copy_export_and_merge_refuse_a_linked_checkpoint(left: tuple[Path, Path],
                                                                tmp_path: Path) -> None:
    run_dir, out = left
    new_run = tmp_path / "new-run"
    new_run.mkdir()
    with pytest.raises(RunError, match=f"{WEIGHTS_FILE} is a symlink") as err:
        copy_init(out, new_run)  # `train --init` on what the run left
    assert "\n" not in str(err.value)
    assert not init_dir(new_run).exists() and list(new_run.iterdir()) == []
    with pytest.raises(RunError, match=f"checkpoint refused: .*{WEIGHTS_FILE} is a symlink"):
        resolve_checkpoint(str(out))  # what export and merge resolve their references with
    assert_secret_nowhere(tmp_path / "new-run")


def test_train_init_refuses_a_checkpoint_with_a_linked_file_before_making_a_run(
        tmp_path: Path) -> None:
    """A loadable checkpoint whose run also linked schedule.json to a host file: `--init` on it
    is refused when the reference is resolved, before any run directory exists."""
    from bitnet.checkpoint import save_checkpoint
    from bitnet.model import BitNetConfig, BitNetLM

    secret = tmp_path / "secret"
    secret.write_bytes(SECRET)
    out = tmp_path / "ckpt"
    save_checkpoint(BitNetLM(BitNetConfig(hidden_size=16, intermediate_size=32,
                                          num_hidden_layers=1)), out)
    (out / SCHEDULE_FILE).symlink_to(secret)
    with pytest.raises(RunError, match=f"init: cannot copy .*{SCHEDULE_FILE} is a symlink"):
        find_init(str(out))
    (out / SCHEDULE_FILE).unlink()
    assert find_init(str(out)) == out.resolve()
    assert copy_init(out, tmp_path).name == "init"  # what a clean checkpoint gives


def test_a_claim_carries_no_linked_schedule_or_init_file(left: tuple[Path, Path]) -> None:
    """Even with a record that names the linked file's hash (as one made before did), the
    claim's schedule artifact is refused; a symlink planted in init/ is refused too."""
    run_dir, _ = left
    with pytest.raises(RunError, match=f"the schedule is refused: .*{SCHEDULE_FILE} is a "
                                       "symlink"):
        _schedule(run_dir, 1, 0, hashlib.sha256(SECRET).hexdigest())
    init = init_dir(run_dir)
    init.mkdir()
    (init / CONFIG_FILE).write_text("{}")
    (init / WEIGHTS_FILE).symlink_to(output_dir(run_dir, 1) / WEIGHTS_FILE)
    with pytest.raises(RunError, match=f"base checkpoint is refused: .*{WEIGHTS_FILE} is a "
                                       "symlink"):
        pack_init(run_dir)


@pytest.mark.parametrize("name", [TOKENIZER_FILE, TOKENIZER_CONFIG_FILE])
def test_export_and_generate_refuse_a_linked_tokenizer_file(tmp_path: Path, name: str) -> None:
    """A checkpoint carries its tokenizer (issue #22): what a run left there is read by export,
    generate and merge, so a link to a host file is refused like linked weights are."""
    secret = tmp_path / "host" / "ledger.key"
    secret.parent.mkdir()
    secret.write_bytes(SECRET)
    out = tmp_path / "checkpoint"
    out.mkdir()
    (out / CONFIG_FILE).write_text(json.dumps({"model_type": "bitnet"}))
    (out / WEIGHTS_FILE).write_bytes(b"\0" * 8)
    (out / name).symlink_to(secret)
    with pytest.raises(RunError, match=f"checkpoint refused: .*{name} is a symlink"):
        resolve_checkpoint(str(out))
