"""Named model sizes (bitnet.presets): each builds at its stated size (the largest on PyTorch's
meta device, so ~620 M parameters are counted without allocating them), the template applies a
preset named in its PRESET constant, and `train --preset` sets that constant in the run's first
commit or refuses a name it does not know."""

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from agent.loop.train_once import PRESET_LINE, set_preset
from agent.rundir.runs import RunError
from bitnet.model import BitNetLM
from bitnet.presets import BYTES, PRESETS, preset
from sandbox.workspace import Workspace

TEMPLATE = Path(__file__).parents[2] / "bitnet" / "templates" / "bitnet-lm"
CLI = str(Path(sys.executable).with_name("magnet-agent"))


def meta_model(config) -> BitNetLM:
    with torch.device("meta"):  # shapes only: no memory behind the parameters
        return BitNetLM(config)


@pytest.mark.parametrize("name", list(PRESETS))
def test_each_preset_builds_with_the_parameters_it_states(name):
    size = preset(name)
    model = meta_model(size.config())
    assert model.num_parameters() == size.parameters()
    assert model.config.max_position_embeddings == size.context
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == size.tie
    stated = re.search(r"(\d+)m$", name)  # "bitnet-50m" -> 50 M, within 10%
    if stated:
        assert size.parameters() == pytest.approx(int(stated[1]) * 1e6, rel=0.1)


def test_genkidama_618m_is_about_618m_at_32000_tokens_and_smaller_on_bytes():
    size = preset("genkidama-618m")
    assert size.vocab == 32_000
    assert size.parameters() == meta_model(size.config()).num_parameters() == 619_123_712
    on_bytes = meta_model(size.config(BYTES)).num_parameters()
    assert on_bytes == size.parameters(BYTES) == 619_123_712 - (32_000 - BYTES) * 1536
    assert size.config().head_dim == 128  # LLaMA's head size


def test_the_presets_grow_in_size():
    sizes = [p.parameters() for p in PRESETS.values()]
    assert sizes == sorted(sizes) and len(set(sizes)) == len(sizes)


def template_constants(**replaced) -> dict:
    """train.py's tunable constants and its preset block, executed with `replaced` set first:
    what the template trains with (the model, data and loop after them are not run)."""
    source = (TEMPLATE / "train.py").read_text()
    start = source.index("# --- tunable constants ---")
    end = source.index("# --- the contract ---")
    tree = ast.parse(source[start:end])
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) in replaced:
            node.value = ast.copy_location(ast.Constant(replaced[node.targets[0].id]),
                                           node.value)
    namespace = {"preset": preset}
    exec(compile(tree, "train.py", "exec"), namespace)
    return namespace


def test_tiny_is_the_templates_own_shape():
    defaults, tiny = template_constants(), preset("tiny")
    assert (defaults["N_LAYER"], defaults["N_EMBD"], defaults["N_HEAD"], defaults["N_KV_HEAD"],
            defaults["INTERMEDIATE_SIZE"], defaults["SEQ_LEN"], defaults["BATCH_SIZE"],
            defaults["TIE_EMBEDDINGS"]) == (
        tiny.layers, tiny.hidden, tiny.heads, tiny.kv_heads, tiny.ffn, tiny.context,
        tiny.batch_size, tiny.tie)
    assert defaults["PRESET"] is None


def test_the_template_applies_a_named_preset_over_its_constants():
    applied, size = template_constants(PRESET="genkidama-618m"), preset("genkidama-618m")
    assert (applied["N_LAYER"], applied["N_EMBD"], applied["N_HEAD"], applied["N_KV_HEAD"],
            applied["INTERMEDIATE_SIZE"], applied["SEQ_LEN"], applied["BATCH_SIZE"],
            applied["TIE_EMBEDDINGS"]) == (
        size.layers, size.hidden, size.heads, size.kv_heads, size.ffn, size.context,
        size.batch_size, size.tie)
    with pytest.raises(SystemExit, match="unknown preset 'huge'.*genkidama-618m"):
        template_constants(PRESET="huge")


def test_train_preset_sets_the_constant_in_the_runs_first_commit(tmp_path):
    with Workspace.create(tmp_path / "run", template="bitnet-lm", editable=["train.py"]) as ws:
        ws.begin(0, "baseline at preset bitnet-50m")
        set_preset(ws, "bitnet-lm", "bitnet-50m")
        sha = ws.commit()
        committed = ws.git.run("show", f"{sha}:train.py")
    assert "PRESET = 'bitnet-50m'" in committed and PRESET_LINE not in committed


def test_a_template_without_the_constant_is_refused_in_one_line(tmp_path):
    template = tmp_path / "template"
    template.mkdir()
    (template / "train.py").write_text("print('no presets here')\n")
    with Workspace.create(tmp_path / "run", template=template, editable=["train.py"]) as ws:
        ws.begin(0, "baseline")
        with pytest.raises(RunError, match="no `PRESET = None` line"):
            set_preset(ws, "mine", "bitnet-10m")


def test_train_refuses_an_unknown_preset_in_one_line_listing_the_names(tmp_path):
    done = subprocess.run([CLI, "train", "--preset", "huge", "--runs-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert "unknown preset 'huge'" in line and all(name in line for name in PRESETS)
    assert not any(tmp_path.iterdir())  # refused before a run directory was made
