"""compressed-tensors checkpoints of our own models for the artifact tests and benchmarks, written by the
compressed-tensors package: its scheme applied to every Linear but the head, each group's scale from its own
`calculate_qparams` on the group's min and max (what llm-compressor's min-max observer feeds it), its packing."""

from __future__ import annotations

from pathlib import Path

import torch


def write_compressed(
    model: torch.nn.Module, tokenizer, out: Path, bits: int = 4, group_size: int = 32, symmetric: bool = True
) -> Path:
    """Save `model` as a weight-only int (`pack-quantized`) compressed-tensors checkpoint, in groups of
    `group_size` columns or (-1) per output channel."""
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import (
        QuantizationArgs,
        QuantizationConfig,
        QuantizationScheme,
        apply_quantization_config,
    )
    from compressed_tensors.quantization.utils import calculate_qparams

    if group_size == -1:  # one scale per output channel (the package refuses groups that do not divide a width)
        arguments = QuantizationArgs(num_bits=bits, type="int", symmetric=symmetric, strategy="channel")
    else:
        arguments = QuantizationArgs(
            num_bits=bits, type="int", symmetric=symmetric, strategy="group", group_size=group_size
        )
    scheme = QuantizationScheme(targets=["Linear"], weights=arguments)
    head = [name for name, module in model.named_modules() if module is model.get_output_embeddings()]
    apply_quantization_config(model, QuantizationConfig(config_groups={"group_0": scheme}, ignore=head))
    with torch.no_grad():
        for module in model.modules():
            if hasattr(module, "weight_scale"):
                groups = module.weight.split(group_size if group_size > 0 else module.weight.shape[1], dim=1)
                low = torch.stack([group.amin(dim=1) for group in groups], dim=1)
                high = torch.stack([group.amax(dim=1) for group in groups], dim=1)
                scale, zero = calculate_qparams(low, high, arguments)
                module.weight_scale.copy_(scale)
                module.weight_zero_point.copy_(zero)
    compressor = ModelCompressor.from_pretrained_model(model, quantization_format="pack-quantized")
    compressor.compress_model(model)
    model.save_pretrained(out)
    compressor.update_config(out)
    tokenizer.save_pretrained(out)
    return out
