"""A checkpoint directory's tensor names as its model names its parameters: transformers renames some on load
(GPT-NeoX's `embed_out` is the model's `lm_head`), and a quantized checkpoint's tensors carry the stored names."""

from __future__ import annotations

import re
from collections.abc import Callable

import torch

from ptq_eval.artifacts.base import ArtifactError


def stored_to_model(model: torch.nn.Module) -> Callable[[str], str]:
    """The renaming transformers applies to `model`'s checkpoint names when it loads them; a checkpoint that
    needs more than renaming (tensors merged or split) is refused, as artifact readers do not convert."""
    try:
        from transformers.conversion_mapping import extract_weight_conversions_for_model
        from transformers.core_model_loading import WeightRenaming
    except ImportError:  # a transformers without conversions stores parameters under their own names
        return lambda name: name
    rules = []
    for conversion in extract_weight_conversions_for_model(model) or []:
        if not isinstance(conversion, WeightRenaming):
            raise ArtifactError(
                f"{type(model).__name__} checkpoints are converted on load ({type(conversion).__name__}), which "
                "reading a quantized file does not do"
            )
        rules += list(zip(conversion.source_patterns, conversion.target_patterns, strict=True))

    def rename(name: str) -> str:
        for source, target in rules:
            name = re.sub(source, target, name)
        return name

    return rename
