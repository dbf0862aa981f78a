"""BitNetLM: logits identical to transformers' BitNetForCausalLM; layout; checkpoints; learning."""

import json

import pytest
import torch
from model_fixtures import trained_like

from bitnet.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from bitnet.model import BitNetConfig, BitNetLM
from bitnet.quant import BitLinear

SMALL = dict(hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=64)


# the old default and the new one (llama.cpp's): each of the activation and the head both ways
@pytest.mark.parametrize(("tied", "act"), [(False, "relu2"), (True, "silu")])
def test_logits_match_huggingface_bitnet(tmp_path, tied, act):
    transformers = pytest.importorskip("transformers")
    # transformers wraps its quantisers in torch.compile, whose fused kernels round some
    # products differently in the last bit, and one flipped int8 step moves a logit by up to
    # ~1 (in float64 too: it quantises in float32). With the compiler off both sides run the
    # same float32 operations eagerly, so any difference at all is a real one: tolerance zero.
    model = trained_like(BitNetConfig(**SMALL, tie_word_embeddings=tied, hidden_act=act))
    save_checkpoint(model, tmp_path)
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path)
    hf_model.eval()
    assert type(hf_model).__name__ == "BitNetForCausalLM"
    assert hf_model.config.hidden_act == act  # transformers' ACT2FN gate is ours
    assert type(hf_model.model.layers[0].mlp.down_proj).__name__ == "AutoBitLinear"
    assert set(hf_model.state_dict()) == set(model.state_dict())

    for seed in range(5):  # several inputs: a rounding tie would show on some of them
        input_ids = torch.randint(0, 256, (2, 48), generator=torch.Generator().manual_seed(seed))
        with torch.no_grad(), torch._dynamo.config.patch(disable=True):
            ours, _ = model(input_ids)
            theirs = hf_model(input_ids).logits
        assert ours.std() > 1.0  # a meaningful comparison, not two near-zero tensors
        assert (ours - theirs).abs().max().item() == 0.0


def test_layout_full_precision_where_it_should_be():
    model = BitNetLM(BitNetConfig(**SMALL))
    bit_layers = {n for n, m in model.named_modules() if isinstance(m, BitLinear)}
    assert len(bit_layers) == 7 * SMALL["num_hidden_layers"]
    assert "lm_head" not in bit_layers
    assert not any("bias" in name for name in model.state_dict())
    assert type(model.lm_head) is torch.nn.Linear


def test_checkpoint_roundtrip_and_corruption(tmp_path):
    model = trained_like(BitNetConfig(**SMALL))
    save_checkpoint(model, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["quantization_config"]["quantization_mode"] == "online"
    loaded = load_checkpoint(tmp_path)
    x = torch.randint(0, 256, (1, 32))
    assert torch.equal(loaded(x)[0], model(x)[0])

    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="model.safetensors is corrupt"):
        load_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="config.json is missing"):
        load_checkpoint(tmp_path / "nowhere")


def test_rejects_inconsistent_config():
    with pytest.raises(ValueError, match="not divisible by num_attention_heads"):
        BitNetConfig(hidden_size=100, num_attention_heads=3)
    with pytest.raises(ValueError, match="hidden_act 'gelu' .* use one of 'relu2', 'silu'"):
        BitNetConfig(hidden_act="gelu")


def test_activation_is_in_the_config_and_old_checkpoints_are_relu2(tmp_path):
    """hidden_act round-trips through config.json; a config.json from before the field existed
    loads as relu2, the gate those checkpoints were trained with, and gives their logits."""
    x = torch.randint(0, 256, (1, 32), generator=torch.Generator().manual_seed(0))
    silu = trained_like(BitNetConfig(**SMALL, hidden_act="silu"))
    save_checkpoint(silu, tmp_path / "silu")
    loaded = load_checkpoint(tmp_path / "silu")
    assert loaded.config.hidden_act == "silu" and torch.equal(loaded(x)[0], silu(x)[0])

    relu2 = trained_like(BitNetConfig(**SMALL))
    save_checkpoint(relu2, tmp_path / "old")
    config_path = tmp_path / "old" / "config.json"
    config = json.loads(config_path.read_text())
    del config["hidden_act"]
    config_path.write_text(json.dumps(config))
    old = load_checkpoint(tmp_path / "old")
    assert old.config.hidden_act == "relu2" and torch.equal(old(x)[0], relu2(x)[0])
    assert not torch.equal(old(x)[0], loaded(x)[0])


def test_small_model_learns_a_pattern():
    torch.manual_seed(0)
    model = BitNetLM(BitNetConfig(**SMALL))
    data = torch.tensor(list(b"def f(x):\n    return x\n" * 20))
    inputs, targets = data[:-1][None, :64], data[1:][None, :64]
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        _, loss = model(inputs, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]
