"""GGUF export: types, exact read-back with gguf, and llama.cpp as a real reader."""

import gguf
import numpy as np
import pytest
import torch

from bitnet.checkpoint import CheckpointError, save_checkpoint
from bitnet.export_gguf import (
    GGUFCheckError,
    check_gguf,
    export_gguf,
    llamacpp_blockers,
    llamacpp_differences,
    llamacpp_graph_logits,
    llamacpp_notice,
)
from bitnet.hf_tokenizer import byte_symbols
from bitnet.llamacpp import LlamaCppError, llamacpp_logits
from bitnet.model import BitNetConfig, BitNetLM
from bitnet.quant import quantize_weight

PROJ = ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"]
PROMPTS = [
    b"The quick brown fox jumps over the lazy dog.",
    "na\u00efve caf\u00e9 \u2014 42".encode(),
]


def tiny(intermediate=512, layers=2, tied=True, seed=0, act="relu2") -> BitNetLM:
    torch.manual_seed(seed)
    config = BitNetConfig(
        hidden_size=256,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=tied,
        hidden_act=act,
    )
    model = BitNetLM(config)
    with torch.no_grad():  # norm gains away from 1, so a swapped or missing norm shows
        for name, param in model.named_parameters():
            if "norm" in name:
                param.uniform_(0.5, 1.5)
    return model.eval()


def export(tmp_path, model):
    ckpt = save_checkpoint(model, tmp_path / "ckpt")
    out = tmp_path / "model.gguf"
    return export_gguf(ckpt, out), out


def test_types_table(tmp_path):
    rows, out = export(tmp_path, tiny(intermediate=384, layers=1))
    table = {name: (qtype, shape) for name, qtype, shape in rows}
    assert [name for name, _, _ in rows] == [t.name for t in gguf.GGUFReader(str(out)).tensors]
    assert table["token_embd.weight"] == ("F32", (256, 256))
    assert "output.weight" not in table  # tied: llama.cpp takes logits from token_embd
    assert table["blk.0.attn_q.weight"] == ("TQ2_0", (256, 256))
    assert table["blk.0.attn_k.weight"] == ("TQ2_0", (128, 256))  # GQA: 2 kv heads of 64
    assert table["blk.0.ffn_gate.weight"] == ("TQ2_0", (384, 256))
    assert table["blk.0.ffn_down.weight"] == ("F16", (256, 384))  # rows of 384: not 256-blocks
    for proj in PROJ:
        assert table[f"blk.0.{proj}.scale"] == ("F32", (1,))
    for norm in ["attn_norm", "attn_sub_norm", "ffn_norm"]:
        assert table[f"blk.0.{norm}.weight"] == ("F32", (256,))
    assert table["blk.0.ffn_sub_norm.weight"] == ("F32", (384,))
    assert table["output_norm.weight"] == ("F32", (256,))
    assert len(rows) == 1 + 4 + 2 * 7 + 1


def test_read_back_exact(tmp_path):
    """Every ternary tensor de-quantises to {-1,0,1} and times its scale is quantize_weight(W)."""
    model = tiny()
    _, out = export(tmp_path, model)
    reader = gguf.GGUFReader(str(out))
    tensors = {t.name: t for t in reader.tensors}
    for i, layer in enumerate(model.model.layers):
        projections = [
            layer.self_attn.q_proj,
            layer.self_attn.k_proj,
            layer.self_attn.v_proj,
            layer.self_attn.o_proj,
            layer.mlp.gate_proj,
            layer.mlp.up_proj,
            layer.mlp.down_proj,
        ]
        for name, linear in zip(PROJ, projections, strict=True):
            weight, scale = tensors[f"blk.{i}.{name}.weight"], tensors[f"blk.{i}.{name}.scale"]
            assert weight.tensor_type == gguf.GGMLQuantizationType.TQ2_0
            values = gguf.quants.dequantize(weight.data, weight.tensor_type)
            assert set(np.unique(values)) == {-1.0, 0.0, 1.0}
            s = np.float32(scale.data[0])
            want = quantize_weight(linear.weight).detach().numpy()
            np.testing.assert_array_equal(values * s, want)
            assert s == pytest.approx(linear.weight.abs().mean().item(), rel=1e-6)  # mean|W|
        np.testing.assert_array_equal(
            tensors[f"blk.{i}.ffn_sub_norm.weight"].data,
            layer.mlp.ffn_sub_norm.weight.detach().numpy(),
        )
    np.testing.assert_array_equal(
        tensors["token_embd.weight"].data, model.model.embed_tokens.weight.detach().numpy()
    )
    assert check_gguf(out, model) == len(reader.tensors)


def test_metadata(tmp_path):
    model = tiny()
    _, out = export(tmp_path, model)
    reader = gguf.GGUFReader(str(out))

    def value(key):
        return reader.fields[key].contents()

    assert value("general.architecture") == "bitnet"
    assert value("bitnet.block_count") == 2
    assert value("bitnet.embedding_length") == 256
    assert value("bitnet.feed_forward_length") == 512
    assert value("bitnet.attention.head_count") == 4
    assert value("bitnet.attention.head_count_kv") == 2
    assert value("bitnet.rope.dimension_count") == 64
    assert value("bitnet.rope.freq_base") == pytest.approx(10000.0)
    assert value("bitnet.attention.layer_norm_rms_epsilon") == pytest.approx(1e-5)
    assert value("bitnet.hidden_activation") == "relu2"  # the model's own gate, whatever it is
    _, silu = export(tmp_path / "silu", tiny(layers=1, act="silu"))
    assert gguf.GGUFReader(str(silu)).fields["bitnet.hidden_activation"].contents() == "silu"
    assert value("tokenizer.ggml.model") == "gpt2"
    assert value("tokenizer.ggml.tokens") == list(byte_symbols())
    tokens = list(byte_symbols())  # GPT-2's byte-to-unicode table
    assert len(set(tokens)) == 256
    assert (tokens[ord("A")], tokens[ord(" ")], tokens[ord("\n")]) == ("A", "\u0120", "\u010a")


def test_untied_head_is_written(tmp_path):
    model = tiny(tied=False, layers=1)
    rows, out = export(tmp_path, model)
    assert ("output.weight", "F32", (256, 256)) in rows
    tensors = {t.name: t for t in gguf.GGUFReader(str(out)).tensors}
    np.testing.assert_array_equal(
        tensors["output.weight"].data, model.lm_head.weight.detach().numpy()
    )
    assert any("untied" in note for note in llamacpp_blockers(model.config))


@pytest.mark.parametrize(("act", "tied", "why"), [
    ("silu", True, None),
    ("relu2", True, "gates the FFN with SiLU, this model with relu2"),
    ("silu", False, "untied lm_head"),
    ("relu2", False, "relu2; it takes logits from the embedding, this model has an untied"),
])
def test_what_llama_cpp_can_compute(act, tied, why):
    """Only a SiLU-gated, tied model is computable; otherwise one line says why and the fix."""
    config = BitNetConfig(hidden_size=256, intermediate_size=512, num_attention_heads=4,
                          num_key_value_heads=2, tie_word_embeddings=tied, hidden_act=act)
    notice = llamacpp_notice(config)
    if why is None:
        assert notice is None and llamacpp_blockers(config) == []
        assert llamacpp_differences(config) == [  # rounding only: Q8_K blocks on down_proj
            "down: activations are int8 per 256-block (Q8_K), ours per token over all 512"]
    else:
        assert "\n" not in notice and why in notice
        assert 'FFN_ACT = "silu" and TIE_EMBEDDINGS = True' in notice


def test_check_catches_a_changed_weight(tmp_path):
    model = tiny(layers=1)
    _, out = export(tmp_path, model)
    with torch.no_grad():  # flip one ternary value of the model instead of the file
        w = model.model.layers[0].mlp.up_proj.weight
        w[3, 7] = -w[3, 7] + torch.sign(-w[3, 7]) * w.abs().mean() * 2
    with pytest.raises(GGUFCheckError, match="ffn_up"):
        check_gguf(out, model)


def test_missing_or_corrupt_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="missing"):
        export_gguf(tmp_path / "nowhere", tmp_path / "x.gguf")
    ckpt = save_checkpoint(tiny(layers=1), tmp_path / "ckpt")
    data = (ckpt / "model.safetensors").read_bytes()
    (ckpt / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt"):
        export_gguf(ckpt, tmp_path / "x.gguf")
    assert not list(tmp_path.glob("*.gguf*"))


def test_graph_logits_is_ours_for_a_silu_model():
    """llamacpp_graph_logits is our SiLU model itself when every row is 256 long (Q8_K blocks are
    our per-token rows); a relu2 model it computes with SiLU, as llama.cpp does."""
    ids = list(PROMPTS[0])
    silu = tiny(intermediate=256, layers=1, act="silu")
    with torch.no_grad():
        ours = silu(torch.tensor([ids]))[0][0].numpy()
    np.testing.assert_allclose(llamacpp_graph_logits(silu, ids), ours, atol=1e-6)
    relu2 = tiny(intermediate=256, layers=1)
    relu2.load_state_dict(silu.state_dict())
    np.testing.assert_allclose(llamacpp_graph_logits(relu2, ids), ours, atol=1e-6)
    with torch.no_grad():
        assert np.abs(relu2(torch.tensor([ids]))[0][0].numpy() - ours).max() > 0.1


@pytest.mark.parametrize("intermediate", [512, 384])
def test_llama_cpp_reads_it(tmp_path, intermediate):
    """llama.cpp loads the file and computes what its bitnet graph should from it (a SiLU, tied
    model: llama.cpp's semantics differ from ours in activation rounding only)."""
    llama_cpp = pytest.importorskip("llama_cpp")
    model = tiny(intermediate=intermediate, act="silu")
    _, out = export(tmp_path, model)
    for prompt in PROMPTS:
        ids = list(prompt)
        got = llamacpp_logits(out, ids)
        graph = llamacpp_graph_logits(model, ids)
        with torch.no_grad():
            ours = model(torch.tensor([ids]))[0][0].numpy()
        diff = np.abs(got - graph)
        # float rounding, amplified where it moves an activation across an int8 rounding step
        assert np.median(diff) < 1e-4 and diff.max() < 0.05
        assert (got.argmax(-1) == graph.argmax(-1)).mean() >= 0.95
        print(
            f"llama.cpp vs graph {diff.max():.2e}, vs ours {np.abs(got - ours).max():.2e} "
            f"argmax {(got.argmax(-1) == ours.argmax(-1)).mean():.0%}"
        )
    vocab = llama_cpp.Llama(str(out), vocab_only=True, verbose=False)
    text = PROMPTS[1]
    assert vocab.tokenize(text, add_bos=False, special=False) == list(text)
    assert vocab.detokenize(list(text)) == text


def test_llama_cpp_refuses_untied_head(tmp_path):
    pytest.importorskip("llama_cpp")
    _, out = export(tmp_path, tiny(tied=False, layers=1))
    with pytest.raises(LlamaCppError, match="llama.cpp cannot load .*Failed to load"):
        llamacpp_logits(out, [1, 2, 3])
