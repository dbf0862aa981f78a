"""The bitnet-lm template: train.py run for real under the MAGNET contract, and its model.py,
which must stay the reference bitnet.model.BitNetLM until a researcher changes it."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

from bitnet.checkpoint import config_from_hf, load_checkpoint, save_checkpoint
from bitnet.data import load_corpus, train_dir
from bitnet.model import BitNetConfig, BitNetLM
from sandbox.confine import confinement

TEMPLATE = Path(__file__).parents[2] / "bitnet" / "templates" / "bitnet-lm"
TRAIN = TEMPLATE / "train.py"
STEPS = 2  # the fixed-step runs: enough to show the steps are taken, the seed used


@pytest.fixture(scope="module")
def text_corpus(tmp_path_factory) -> Path:
    """The training split's folder (bitnet.data.train_dir) of a small text corpus."""
    root = tmp_path_factory.mktemp("corpus")
    for i in range(24):  # enough files for a by-file split: 1 validation, 2 test files
        line = f"The quick brown fox {i} jumps over the lazy dog.\n"
        (root / f"doc{i}.txt").write_text(line * 200)
    corpus = load_corpus(f"text:{root}", tmp_path_factory.mktemp("cache"))
    assert corpus.n_val_files and corpus.n_test_files
    return train_dir(corpus)


def run_train(tmp_path: Path, train_data: Path | None, *, confined: bool = False,
              check: bool = True, **env: str) -> tuple[dict, subprocess.CompletedProcess]:
    """train.py in a clean environment (under bubblewrap, seeing only the training split and
    writing only its output directory, when `confined`): its METRIC lines and the process."""
    out = tmp_path / "out"
    out.mkdir(parents=True)
    data = {"MAGNET_TRAIN_DATA": str(train_data)} if train_data else {}
    inherited = {k: v for k, v in os.environ.items() if k in ("PATH", "PYTHONPATH")}
    # one thread, as the sandbox gives a run on a busy machine (sandbox.env.run_environ): two
    # OpenMP threads on cores the suite's other workers keep busy spin at every barrier
    env = {**inherited, "MAGNET_CORPUS": "text:corpus", "OMP_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1", "MAGNET_OUTPUT_DIR": str(out), **data, **env}
    argv = [sys.executable, str(TRAIN)]
    if confined:
        view = confinement().with_paths(writable=[out], readable=[p for p in [train_data] if p])
        argv = view.wrap(argv, env)
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 or not check, result.stderr[-2000:]
    metrics = {}
    for line in result.stdout.splitlines():
        if line.startswith("METRIC "):
            name, value = line[len("METRIC "):].split("=")
            metrics[name] = float(value)
    return metrics, result


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, text_corpus) -> tuple[dict, Path]:
    """train.py at its defaults for STEPS steps (seed 7), under the real confinement: its
    metrics and its output directory."""
    root = tmp_path_factory.mktemp("first")
    metrics, _ = run_train(root, text_corpus, confined=True, MAGNET_STEPS=str(STEPS),
                           MAGNET_SEED="7")
    return metrics, root / "out"


def template_model() -> ModuleType:
    """The template's model.py, imported from its file as train.py imports it."""
    spec = importlib.util.spec_from_file_location("bitnet_lm_template_model", TEMPLATE / "model.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def far_from_init(model: torch.nn.Module) -> torch.nn.Module:
    """Weights far from init (norm gains included) so logits are large, not near zero."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.copy_(torch.rand(param.shape, generator=generator) + 0.5)
            else:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    return model.eval()


def test_fixed_steps_are_deterministic_and_write_a_loadable_checkpoint(
    tmp_path, text_corpus, first_run
):
    first, out = first_run
    second, _ = run_train(tmp_path / "b", text_corpus, MAGNET_STEPS=str(STEPS), MAGNET_SEED="7")
    other_seed, _ = run_train(tmp_path / "c", text_corpus, MAGNET_STEPS=str(STEPS),
                              MAGNET_SEED="8")
    assert first["steps"] == STEPS
    assert first["train_loss"] == second["train_loss"]  # confined or not, the same run
    assert first["train_loss"] != other_seed["train_loss"]
    # progress only: the score (val_bpb) is the evaluator's, from bytes train.py never sees
    assert set(first) == {"train_loss", "steps", "train_seconds", "tokens_per_s", "params",
                          "peak_memory_mb"}
    assert 0 < first["train_loss"] < 8.5 * 0.7  # nats per byte, below uniform guessing

    written = json.loads((out / "metrics.json").read_text())
    assert written["train_loss"] == first["train_loss"] and "val_bpb" not in written
    assert len(json.loads((out / "schedule.json").read_text())) == STEPS
    model = load_checkpoint(out)
    assert model.num_parameters() == first["params"]


def test_without_its_training_split_train_py_names_the_fix_in_one_line(tmp_path, text_corpus):
    for data, why in ((None, "MAGNET_TRAIN_DATA is not set"),
                      (text_corpus.parent, "is not a training split")):
        _, result = run_train(tmp_path / why[:5], data, check=False, MAGNET_STEPS="1")
        assert result.returncode != 0
        last = result.stderr.strip().splitlines()[-1]
        assert why in last and "MAGNET_TRAIN_DATA" in last and "Traceback" not in result.stderr


def test_time_budget_stops_training(tmp_path, text_corpus):
    budget = 1.0  # seconds: as telling as a longer one, and every second is a CPU-second
    metrics, stdout = run_train(tmp_path, text_corpus, MAGNET_TIME_BUDGET=f"{budget:g}")
    assert metrics["steps"] >= 1
    # stops at the first step boundary after the budget: overshoot is about one step
    mean_step = metrics["train_seconds"] / metrics["steps"]
    assert budget <= metrics["train_seconds"] < budget + 2 * mean_step + 0.5


@pytest.mark.parametrize(("tied", "act"), [(False, "relu2"), (True, "silu")])
def test_template_model_is_the_reference_model(first_run, tied, act):
    """Same seed, same weights; same weights, same logits, loss and gradients: bit for bit.

    Tolerance zero, on purpose: both models run the same operations in the same order in one
    process, so any difference is a real change, and the int8 rounding downstream would turn
    even a last-bit one into whole quantisation steps (1e-2 in the logits).
    """
    _, out = first_run
    # the config train.py builds from its constants, as it wrote it (template defaults)
    config = config_from_hf(json.loads((out / "config.json").read_text()))
    config.tie_word_embeddings, config.hidden_act = tied, act
    ours_module = template_model()
    torch.manual_seed(3)
    ours = ours_module.BitNetLM(config)
    torch.manual_seed(3)
    reference = BitNetLM(config)
    assert isinstance(ours.config, BitNetConfig)
    assert ours.state_dict().keys() == reference.state_dict().keys()
    for name, value in reference.state_dict().items():
        assert torch.equal(ours.state_dict()[name], value), name  # same init from the same seed

    far_from_init(reference)
    ours.load_state_dict(reference.state_dict())
    ours.eval()
    tokens = torch.randint(0, 256, (2, config.max_position_embeddings + 1),
                           generator=torch.Generator().manual_seed(1))
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    ours_logits, ours_loss = ours(inputs, targets)
    ref_logits, ref_loss = reference(inputs, targets)
    assert ref_logits.std() > 1.0  # a meaningful comparison, not two near-zero tensors
    assert (ours_logits - ref_logits).abs().max().item() == 0.0
    assert torch.equal(ours_loss, ref_loss)
    ours_loss.backward()
    ref_loss.backward()
    ours_grads = dict(ours.named_parameters())
    for name, param in reference.named_parameters():  # straight-through gradients alike
        assert torch.equal(ours_grads[name].grad, param.grad), name
    with pytest.raises(ValueError, match="exceed max_position_embeddings"):
        ours(tokens)


def test_template_checkpoints_load_in_transformers_with_the_same_logits(tmp_path, first_run):
    """What train.py saved, and a far-from-init template model saved the way train.py saves,
    load as transformers' BitNetForCausalLM and give the template model's logits, bit for bit.

    transformers wraps its quantisers in torch.compile, whose fused kernels round some products
    differently in the last bit (measured: 95% of logits off by up to 0.65 in float32; in
    float64 too, as it quantises in float32). With the compiler off its own code runs eagerly,
    and then any difference at all is a real one: tolerance zero.
    """
    transformers = pytest.importorskip("transformers")
    module = template_model()
    trained = first_run[1]
    config = config_from_hf(json.loads((trained / "config.json").read_text()))
    far = far_from_init(module.BitNetLM(config))
    save_checkpoint(far, tmp_path / "far")
    input_ids = torch.randint(0, 256, (2, config.max_position_embeddings),
                              generator=torch.Generator().manual_seed(1))
    for checkpoint in (trained, tmp_path / "far"):
        ours = load_checkpoint(checkpoint, module.BitNetLM)  # re-ties a tied lm_head
        hf_model = transformers.AutoModelForCausalLM.from_pretrained(checkpoint).eval()
        assert type(hf_model).__name__ == "BitNetForCausalLM"
        assert type(hf_model.model.layers[0].mlp.down_proj).__name__ == "AutoBitLinear"
        assert set(hf_model.state_dict()) == set(ours.state_dict())
        with torch.no_grad(), torch._dynamo.config.patch(disable=True):
            logits, _ = ours(input_ids)
            assert (logits - hf_model(input_ids).logits).abs().max().item() == 0.0
    assert logits.std() > 1.0  # the far-from-init model: a meaningful comparison
