import json
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

from ptq_eval.artifacts.gptq_pack import dequantize_packed, pack, unpack
from ptq_eval.export import export_gptq
from ptq_eval.quant import QuantConfig

CALIBRATION = {"corpus": "stdlib-python", "split": "train", "samples": 16, "seq_len": 32, "seed": 0}


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_pack_round_trips_including_the_sign_bit(bits):
    codes = torch.randint(0, 2**bits, (64, 5), generator=torch.Generator().manual_seed(bits))
    codes[-1] = 2**bits - 1
    words = pack(codes, bits)
    assert words.dtype == torch.int32 and words.shape == (64 * bits // 32, 5)
    assert torch.equal(unpack(words, bits), codes)


def test_three_bit_codes_straddle_words_as_one_bit_string():
    codes = torch.zeros(32, 1, dtype=torch.int64)
    codes[10] = 0b111  # bits 30..32: two in word 0, one in word 1
    words = pack(codes, 3)
    assert (words[0, 0].item() & 0xFFFFFFFF) == 0b11 << 30 and words[1, 0].item() == 1 and words[2, 0].item() == 0


def test_export_writes_packed_layers_that_decode_to_the_simulated_weights(micro_checkpoint, tmp_path):
    config = QuantConfig(method="gptq", bits=4, group_size=8, options={"act_order": True})
    written = export_gptq(str(micro_checkpoint), tmp_path / "out", config, CALIBRATION)
    assert written["bits"] == 4 and written["desc_act"] is True and written["checkpoint_format"] == "gptq"
    saved_config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert saved_config["quantization_config"]["group_size"] == 8
    tensors = load_file(tmp_path / "out" / "model.safetensors")
    prefix = "gpt_neox.layers.0.mlp.dense_h_to_4h"
    assert f"{prefix}.weight" not in tensors and "lm_head.weight" in tensors
    weight = dequantize_packed(tensors, prefix, 4)
    assert weight.shape == (64, 16) and len(torch.unique(tensors[f"{prefix}.g_idx"])) == 2
    simulated = simulated_gptq(micro_checkpoint, config).gpt_neox.layers[0].mlp.dense_h_to_4h.weight
    assert torch.equal(weight, simulated)  # the grids were fitted on the float16 scales the pack stores


def simulated_gptq(checkpoint, config):
    """The study's simulation of what export packs: the config with `scale_dtype: float16`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ptq_eval.quant import quantize
    from ptq_eval.quant.calibration import calibration_tokens

    model = AutoModelForCausalLM.from_pretrained(checkpoint).eval()
    tokens = calibration_tokens(AutoTokenizer.from_pretrained(checkpoint), **{**CALIBRATION, "seq_len": 32})
    quantize(model, replace(config, options=dict(config.options) | {"scale_dtype": "float16"}), ("lm_head",), tokens)
    return model


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (QuantConfig(method="gptq", bits=5, group_size=8), "bits=5 cannot be packed"),
        (QuantConfig(method="gptq", bits=4, group_size=0), "group_size=0"),
        (QuantConfig(method="gptq", bits=4, group_size=8, symmetric=False), "symmetric grids only"),
        (QuantConfig(method="rtn", bits=4, group_size=8), "gptq only"),
        (QuantConfig(method="gptq", bits=4, group_size=8, options={"rotation": "hadamard"}), "rounds W·Rᵀ"),
    ],
)
def test_unexportable_configs_are_clear_errors(micro_checkpoint, tmp_path, config, message):
    with pytest.raises(ValueError, match=message):
        export_gptq(str(micro_checkpoint), tmp_path, config, CALIBRATION)


def local_checkpoint(tmp_path, micro_checkpoint, config) -> str:
    """A tiny random model of another architecture, saved with the micro ladder's tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(micro_checkpoint)
    config.vocab_size = len(tokenizer)
    torch.manual_seed(0)
    directory = tmp_path / type(config).__name__
    AutoModelForCausalLM.from_config(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return str(directory)


def test_tied_embeddings_are_written_once_and_conv1d_layers_packed_as_linears(micro_checkpoint, tmp_path):
    from transformers import GPT2Config, LlamaConfig

    config = QuantConfig(method="gptq", bits=4, group_size=16)
    llama = LlamaConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=True)  # fmt: skip
    export_gptq(local_checkpoint(tmp_path, micro_checkpoint, llama), tmp_path / "llama", config, CALIBRATION)
    tensors = load_file(tmp_path / "llama" / "model.safetensors")
    assert "model.embed_tokens.weight" in tensors and "lm_head.weight" not in tensors
    assert "model.layers.1.mlp.down_proj.qweight" in tensors

    gpt2 = GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=64)
    reference = local_checkpoint(tmp_path, micro_checkpoint, gpt2)
    export_gptq(reference, tmp_path / "gpt2", config, CALIBRATION)
    tensors = load_file(tmp_path / "gpt2" / "model.safetensors")
    prefix = "transformer.h.0.mlp.c_fc"  # Conv1D [in 32, out 128]
    assert tensors[f"{prefix}.qweight"].shape == (32 * 4 // 32, 128) and tensors[f"{prefix}.scales"].shape == (2, 128)
    simulated = simulated_gptq(reference, config).transformer.h[0].mlp.c_fc.weight.T
    assert torch.equal(dequantize_packed(tensors, prefix, 4), simulated)


def test_fused_experts_are_refused_before_any_work(micro_checkpoint, tmp_path):
    from transformers import MixtralConfig

    from ptq_eval.quant import QuantError

    mixtral = MixtralConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=4,
                            num_key_value_heads=2, num_local_experts=4, max_position_embeddings=64)  # fmt: skip
    reference = local_checkpoint(tmp_path, micro_checkpoint, mixtral)
    with pytest.raises(QuantError, match=r"MixtralForCausalLM: its fused expert tensors .* have no packed"):
        export_gptq(
            reference,
            tmp_path / "out",
            QuantConfig(method="gptq", bits=4, group_size=16),
            {**CALIBRATION, "split": "nope"},
        )
