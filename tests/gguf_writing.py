"""GGUF files of our own checkpoints for the artifact tests and benchmarks, written with the `gguf` package the
way llama.cpp's converter and quantizer lay them out: its tensor names, Llama's query and key rows reordered,
norms and biases in F32, a matrix whose width is not a multiple of the type's block in F16 (llama.cpp's
fallback), the tokenizer's tokens and merges. The embeddings and the output head stay F32 unless asked, so a
file can equal a simulation that keeps them in full precision."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

ARCHITECTURE = {"llama": "llama", "gpt_neox": "gptneox"}
FLOAT_KEPT = ("token_embd.weight", "output.weight")


def _reorder(weight: np.ndarray, heads: int) -> np.ndarray:
    rows = weight.shape[0]
    return weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def write_gguf(
    model: torch.nn.Module,
    tokenizer,
    path: Path,
    type_name: str,
    quantize_embeddings: bool = False,
    architecture: str | None = None,
) -> Path:
    """Write `model` as a GGUF file of `type_name` (Q4_0, Q8_0, ...; what the gguf package can quantize; F32 for
    llama.cpp's own quantizer to start from)."""
    import gguf

    config = model.config
    arch = architecture or ARCHITECTURE[config.model_type]
    kind = gguf.GGMLQuantizationType[type_name]
    block = gguf.GGML_QUANT_SIZES[kind][0]
    table = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA if arch == "llama" else gguf.MODEL_ARCH.GPTNEOX,
                                     config.num_hidden_layers)  # fmt: skip
    writer = gguf.GGUFWriter(path, arch)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_head_count(config.num_attention_heads)
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    writer.add_head_count_kv(kv_heads)
    file_type = f"MOSTLY_{type_name}" if f"MOSTLY_{type_name}" in gguf.LlamaFileType.__members__ else "ALL_F32"
    writer.add_file_type(gguf.LlamaFileType[file_type])
    writer.add_context_length(config.max_position_embeddings)  # what a loader builds the model's config from
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_vocab_size(config.vocab_size)
    if arch == "llama":
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        writer.add_rope_dimension_count(head_dim)
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
        writer.add_layer_norm_rms_eps(config.rms_norm_eps)
        writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    vocabulary = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(vocabulary)
    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"].get("merges")
    if merges:
        writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    for name, parameter in model.named_parameters():
        target = table.get_name(name, try_suffixes=(".weight", ".bias"))
        value = parameter.detach().float().numpy()
        if arch == "llama" and name.endswith(("q_proj.weight", "k_proj.weight")):
            value = _reorder(value, config.num_attention_heads if "q_proj" in name else kv_heads)
        if value.ndim == 1 or (target in FLOAT_KEPT and not quantize_embeddings):
            writer.add_tensor(target, np.ascontiguousarray(value))
        elif value.shape[-1] % block:
            writer.add_tensor(target, value.astype(np.float16))
        else:
            writer.add_tensor(target, gguf.quantize(np.ascontiguousarray(value), kind), raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
