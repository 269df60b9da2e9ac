"""The `transformers` model of one ladder size: GPT-NeoX (LayerNorm, GELU MLP, partial rotary, biases) or
Llama (RMSNorm, SwiGLU, full rotary, grouped-query attention, no biases). No dropout, untied output head."""

from __future__ import annotations

import math

import torch
from transformers import AutoModelForCausalLM, GPTNeoXConfig, LlamaConfig

from ptq_eval.ladder.config import LadderConfig, ModelSize


def swiglu_width(hidden: int) -> int:
    """Llama's MLP width for a hidden size: 8/3 of it (the FLOPs of a 4x GELU MLP), rounded up to 8."""
    return 8 * math.ceil(8 * hidden / 3 / 8)


def model_config(size: ModelSize, cfg: LadderConfig, eos_token_id: int):
    """The transformers config of one ladder size."""
    common = {
        "vocab_size": cfg.vocab_size,
        "hidden_size": size.hidden,
        "num_hidden_layers": size.layers,
        "num_attention_heads": size.heads,
        "max_position_embeddings": cfg.seq_len,
        "attention_dropout": 0.0,
        "tie_word_embeddings": False,
        "bos_token_id": eos_token_id,
        "eos_token_id": eos_token_id,
    }
    if cfg.architecture == "llama":
        return LlamaConfig(
            **common,
            intermediate_size=size.intermediate or swiglu_width(size.hidden),
            num_key_value_heads=size.kv_heads or size.heads,
            hidden_act="silu",
            rms_norm_eps=1e-5,
            attention_bias=False,
            mlp_bias=False,
        )
    return GPTNeoXConfig(
        **common, intermediate_size=size.intermediate or 4 * size.hidden, rotary_pct=0.25, hidden_dropout=0.0
    )


def build_model(size: ModelSize, cfg: LadderConfig, eos_token_id: int) -> torch.nn.Module:
    """A freshly initialised model of this size (seeded by the caller); the modelling code is imported here, not
    when the package is (it costs seconds at every command's start)."""
    return AutoModelForCausalLM.from_config(model_config(size, cfg, eos_token_id))
