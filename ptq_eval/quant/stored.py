"""A quantized file someone released (GGUF, a GPTQ pack, a compressed-tensors checkpoint) as a config: method
`artifact` writes the weights the file holds into its base model, so the file is paired, fitted and gated like
any simulated config. `ptq_eval/artifacts/` reads the files; this module only writes what they hold."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from pydantic import BaseModel, ConfigDict

from ptq_eval.quant.base import LayerReport, QuantConfig, QuantError, QuantReport, WeightMatrix, register
from ptq_eval.quant.rtn import relative_error

ARTIFACT = "artifact"


class ArtifactOptions(BaseModel):
    """What the file says of itself (read from its metadata when the study is validated, never given by hand)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    artifact_type: str  # gguf | gptq | compressed-tensors: the layout it was read from
    quantized_as: str  # the file's own name for its quantization: a GGUF file type (Q4_K_M), a scheme (W4A16)


ARTIFACT_OPTIONS = tuple(ArtifactOptions.model_fields)


@dataclass(frozen=True)
class StoredWeights:
    """A file's weights de-quantized to float32 under its base model's parameter names, and how it stores each
    (`types`: a GGUF type such as Q4_K, or F16; `quantized`: the names it stores in fewer bits than float16)."""

    tensors: Mapping[str, torch.Tensor]
    types: Mapping[str, str]
    quantized: frozenset[str]

    def others(self, weights: list[WeightMatrix]) -> list[str]:
        """The file's parameters that are not among these matrices (embeddings, head, norms, biases)."""
        selected = {f"{weight.name}.{weight.parameter}" for weight in weights}
        return [name for name in self.tensors if name not in selected]


@register(ARTIFACT, options=ArtifactOptions, reads_file=True)
@torch.no_grad()
def write_stored(
    model: torch.nn.Module, weights: list[WeightMatrix], config: QuantConfig, stored: StoredWeights
) -> QuantReport:
    """Every parameter the file holds, written into the model; a matrix the file keeps in a float type says so
    (its layer's `fallback`), and the report warns of what the file quantizes that a config would not (e.g. the
    embeddings, the output head)."""
    report = QuantReport(config)
    for weight in weights:
        name = f"{weight.name}.{weight.parameter}"
        if weight.kind == "expert" or name not in stored.tensors:
            raise QuantError(f"the {config.artifact_type} file holds no matrix for {name}")
        original = weight.read().detach().clone()
        weight.write(stored.tensors[name])
        kept = None if name in stored.quantized else f"stored as {stored.types[name]} by the file"
        report.layers.append(
            LayerReport(weight.name, weight.shape, relative_error(original, weight.read()), fallback=kept)
        )
    parameters = dict(model.named_parameters())
    others = stored.others(weights)
    for name in others:
        parameters[name].copy_(stored.tensors[name])
    extra = [f"{name} ({stored.types[name]})" for name in others if name in stored.quantized]
    if extra:
        report.warnings.append(f"the file also quantizes what configs keep in full precision: {', '.join(extra)}")
    return report
