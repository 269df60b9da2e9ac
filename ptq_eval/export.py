"""Export a checkpoint quantized by our GPTQ as a real packed GPTQ checkpoint (its grids fitted on the float16
scales it stores: `scale_dtype: float16`, so the file equals that simulation).

The layout is the common GPTQ one (`checkpoint_format: gptq`): per quantized Linear,
`qweight` (int32, 32/bits codes per word along the input dimension), `qzeros` (zero
point − 1, packed along the output dimension), fp16 `scales` [groups, out] and `g_idx`
(the group of each input column). `transformers.AutoModelForCausalLM.from_pretrained`
loads it when `gptqmodel` and `optimum` are installed (`pip install .[gptq]`).

GPT-2's Conv1D layers are packed as the Linear they stand for ([out, in] codes, as GPTQ packers do).
Fused mixture-of-experts tensors have no packed layout that plain transformers loads: such models are
refused before any work. Tied input/output embeddings are written once (transformers re-ties them).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import save_file

from ptq_eval.artifacts.gptq_pack import pack
from ptq_eval.checkpoints import load_model
from ptq_eval.errors import UserError
from ptq_eval.quant import DEFAULT_EXCLUDE, FORMATS, INT, QuantConfig, QuantError, quantizable_weights, quantize
from ptq_eval.quant.calibration import calibration_tokens

PACKABLE_BITS = (2, 3, 4, 8)


def packed_tensors(
    weight: torch.Tensor, bias: torch.Tensor | None, scales, zeros, group_index, bits: int
) -> dict[str, torch.Tensor]:
    """qweight, qzeros, scales, g_idx (and bias) for one [out, in] weight that lies on the grids."""
    index = group_index.long()
    weight = weight.detach().float()
    codes = torch.round(weight / scales[index].T + zeros[index].T).clamp(0, 2**bits - 1)
    tensors = {
        "qweight": pack(codes.T.contiguous(), bits),
        "qzeros": pack((zeros - 1).T.contiguous(), bits).T.contiguous(),
        "scales": scales.to(torch.float16).contiguous(),
        "g_idx": group_index.to(torch.int32).contiguous(),
    }
    if bias is not None:
        tensors["bias"] = bias.detach().to(torch.float16).contiguous()
    return tensors


def _unique_tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state dict with each shared tensor (tied embeddings) kept once, under its first name."""
    seen, unique = set(), {}
    for name, tensor in state.items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if key not in seen:
            seen.add(key)
            unique[name] = tensor.detach().contiguous()
    return unique


def check_packable_format(format: str) -> None:
    """Only integer grids have a packed GPTQ layout; any other format is refused before any work."""
    if format != INT:
        accepted = ", ".join(FORMATS)
        known = f"format {format}" if format in FORMATS else f"unknown format {format!r} (accepted: {accepted})"
        raise UserError(
            f"export writes packed integer (GPTQ) checkpoints only; {known} has no such layout here: "
            "evaluate it with `ptq-eval run` (simulated quantization) instead"
        )


def export_gptq(
    reference: str,
    out_dir: str | Path,
    config: QuantConfig,
    calibration: dict,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
) -> dict:
    """Quantize with our GPTQ and write a packed checkpoint; returns its quantization_config. The pack stores
    float16 scales, so the grids are fitted on float16 scales (`scale_dtype: float16`): the file holds exactly
    the weights a study simulates for the config with that option."""
    check_packable_format(config.format)
    if config.scale_dtype != "float16":
        config = replace(config, options=dict(config.options) | {"scale_dtype": "float16"})
    if config.method != "gptq":
        raise UserError(f"export supports method gptq only, not {config.method!r}")
    if config.rotation != "none":
        raise UserError(
            f"rotation: {config.rotation} rounds W·Rᵀ, which a packed GPTQ checkpoint cannot hold without R in its "
            "forward pass: export without the rotation, or evaluate it with `ptq-eval run`"
        )
    if config.bits not in PACKABLE_BITS:
        raise UserError(f"bits={config.bits} cannot be packed in the GPTQ format; accepted: {PACKABLE_BITS}")
    if config.group_size == 0:
        raise UserError("group_size=0 (per tensor) has no GPTQ packed form; use -1 (per channel) or g > 0")
    if not config.symmetric:
        raise UserError("export writes symmetric grids only (checkpoint_format gptq stores zero − 1, which underflows)")
    model, tokenizer = load_model(reference, allow_pickle, trust_remote_code, "float32", "cpu")
    weights = quantizable_weights(model, DEFAULT_EXCLUDE)
    experts = [weight.name for weight in weights if weight.kind == "expert"]
    if experts:
        raise QuantError(
            f"cannot export {type(model).__name__}: its fused expert tensors (e.g. {experts[0]}) have no packed "
            "GPTQ layout that transformers loads; evaluate it with `ptq-eval run` (simulated quantization) instead"
        )
    context = getattr(model.config, "max_position_embeddings", None) or calibration["seq_len"]
    seq_len = min(calibration["seq_len"], context)
    tokens = calibration_tokens(
        tokenizer, calibration["corpus"], calibration["split"], calibration["samples"], seq_len, calibration["seed"]
    )
    report = quantize(model, config, DEFAULT_EXCLUDE, tokens)
    if report.coverage.left_out:
        raise QuantError(f"cannot export: weights left in full precision: {', '.join(report.coverage.left_out)}")
    state = _unique_tensors(model.state_dict())
    for weight in weights:
        scales, zeros, group_index = report.grids[weight.name]
        bias = getattr(weight.module, "bias", None)
        del state[f"{weight.name}.weight"]
        state.pop(f"{weight.name}.bias", None)
        for key, tensor in packed_tensors(weight.read(), bias, scales, zeros, group_index, config.bits).items():
            state[f"{weight.name}.{key}"] = tensor
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    quantization_config = {
        "quant_method": "gptq",
        "checkpoint_format": "gptq",
        "bits": config.bits,
        "group_size": config.group_size,
        "desc_act": config.act_order and not config.static_groups,
        "sym": config.symmetric,
        "damp_percent": config.damp,
        "static_groups": config.static_groups,
        "true_sequential": False,
        "lm_head": False,
        "quantizer": ["ptq-eval"],
        "calibration": calibration,
    }
    model.config.quantization_config = quantization_config
    model.config.save_pretrained(out)
    tokenizer.save_pretrained(out)
    save_file(state, out / "model.safetensors", metadata={"format": "pt"})
    (out / "quantize_config.json").write_text(json.dumps(quantization_config, indent=2) + "\n")
    return quantization_config
