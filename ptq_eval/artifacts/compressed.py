"""compressed-tensors checkpoints (llm-compressor's output, vLLM's native format): what their quantization_config
says, and their weights de-quantized by the compressed-tensors package itself, through transformers' loader
(`run_compressed=False`). Weight-only schemes are read, and schemes whose input activations are dynamic (W8A8,
FP8_DYNAMIC: a scale per token, computed as they pass), which ptq-eval rounds as the file's kernels would
(`quant/activation_rounding.py`); static activation scales (stored in the file), output activations and a KV-cache
scheme are refused by name: ptq-eval would measure something else and call it the file."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from ptq_eval.artifacts.base import Artifact, ArtifactError
from ptq_eval.artifacts.checkpoint_files import (
    checkpoint_settings,
    read_tensor,
    safetensors_files,
    stored_bits,
    tensor_headers,
)
from ptq_eval.quant.precision import ACTIVATIONS, Precision, PrecisionError
from ptq_eval.quant.stored import StoredWeights

METHOD = "compressed-tensors"
# quantization parameters stored beside a weight (counted in its bits per weight, never model parameters)
PARAMETERS = ("weight_packed", "weight_scale", "weight_zero_point", "weight_global_scale", "weight_g_idx")
STRATEGY_GROUPS = {"channel": -1, "tensor": 0}
# (type, bits, compression format) → the format ptq-eval simulates
FORMATS = {("int", "pack-quantized"): "int", ("int", "naive-quantized"): "int",
           ("float", "float-quantized"): "fp8_e4m3", ("float", "naive-quantized"): "fp8_e4m3",
           ("float", "nvfp4-pack-quantized"): "nvfp4", ("float", "mxfp4-pack-quantized"): "mxfp4"}  # fmt: skip


ACTIVATION_FORMATS = {("int", None): "int", ("float", 8): "fp8_e4m3"}  # (type, bits or None: any) → format


def _activations(directory: Path, name: str, arguments: dict) -> Precision:
    """The file's input activations as the precision ptq-eval rounds them: dynamic per token (or per group of a
    token) only; static scales are stored in the file, and re-calibrating them would measure another model."""
    kind, bits, strategy = arguments.get("type"), int(arguments["num_bits"]), arguments.get("strategy")
    fmt = ACTIVATION_FORMATS.get((kind, None)) or ACTIVATION_FORMATS.get((kind, bits))
    if arguments.get("dynamic") is not True or strategy not in ("token", "group") or fmt is None:
        raise ArtifactError(
            f"{directory}: config group {name}: input activations {kind}{bits} {strategy}, dynamic="
            f"{arguments.get('dynamic')} are not read; accepted: int or fp8 with dynamic scales per token or group "
            "(W8A8, FP8_DYNAMIC); static scales stored in the file are not simulated"
        )
    group = int(arguments.get("group_size") or -1) if strategy == "group" else -1
    try:
        return Precision(component=ACTIVATIONS, format=fmt, bits=bits, group_size=group,
                         symmetric=bool(arguments.get("symmetric", True)))  # fmt: skip
    except PrecisionError as error:
        raise ArtifactError(f"{directory}: config group {name}: input activations: {error}") from None


def _scheme(directory: Path, settings: dict) -> tuple[dict, str, Precision | None]:
    """The weight arguments and compression format of the checkpoint's one config group, and its input
    activations' precision (None: not quantized)."""
    groups = settings.get("config_groups") or {}
    if len(groups) != 1:
        raise ArtifactError(f"{directory}: {len(groups)} config groups; one scheme per checkpoint is read here")
    ((name, group),) = groups.items()
    if group.get("output_activations"):
        raise ArtifactError(f"{directory}: config group {name} quantizes outputs too; ptq-eval does not simulate it")
    if settings.get("kv_cache_scheme"):
        raise ArtifactError(
            f"{directory}: it quantizes the KV cache with scales stored in the file, which ptq-eval does not read; "
            "give the file without its kv_cache_scheme and the study a kv_cache setting"
        )
    weights = group.get("weights")
    if not weights:
        raise ArtifactError(f"{directory}: config group {name} quantizes no weights")
    activations = group.get("input_activations")
    precision = _activations(directory, name, activations) if activations else None
    return weights, group.get("format") or settings.get("format"), precision


def describe_compressed(directory: Path, reference: str) -> Artifact:
    """What a compressed-tensors checkpoint says of itself; bits per weight from its stored tensors."""
    config = checkpoint_settings(directory)
    settings = config["quantization_config"]
    weights, layout, activations = _scheme(directory, settings)
    kind, bits, strategy = weights.get("type"), int(weights["num_bits"]), weights.get("strategy")
    if (kind, layout) not in FORMATS:
        raise ArtifactError(
            f"{directory}: {kind} weights in format {layout!r} are not read; accepted: {sorted(FORMATS)}"
        )
    group = STRATEGY_GROUPS.get(strategy, weights.get("group_size"))
    if group is None:
        raise ArtifactError(f"{directory}: weight strategy {strategy!r} is not read (channel, tensor, group)")
    headers = tensor_headers(safetensors_files(directory))
    prefixes = sorted({name.rsplit(".", 1)[0] for name in headers if name.endswith(".weight_scale")})
    if not prefixes:
        raise ArtifactError(f"{directory}: quant_method {METHOD}, but no tensor has a weight_scale")
    stored = weights_count = 0
    for prefix in prefixes:
        shape = headers.get(f"{prefix}.weight", (None, None))[1]
        if f"{prefix}.weight_shape" in headers:
            shape = tuple(int(v) for v in read_tensor(directory, f"{prefix}.weight_shape").tolist())
        weights_count += math.prod(shape)
        parts = [f"{prefix}.{part}" for part in (*PARAMETERS, "weight")]
        stored += sum(stored_bits(*headers[part]) for part in parts if part in headers)
    label = f"{kind}{bits}"
    return Artifact(
        reference=reference, path=directory, artifact_type=METHOD, quantized_as=layout,
        architectures=(str(config.get("model_type")),), bits=bits, group_size=int(group),
        format=FORMATS[(kind, layout)], symmetric=bool(weights.get("symmetric", True)),
        bits_per_weight=stored / weights_count, types=((label, len(prefixes)),), activations=activations,
    )  # fmt: skip


def compressed_shapes(directory: Path) -> dict[str, tuple[int, ...]]:
    """Each weight's shape as its model holds it, under the stored names (quantization parameters left out)."""
    headers = tensor_headers(safetensors_files(directory))
    shapes = {}
    for name, (_, shape) in headers.items():
        prefix, _, part = name.rpartition(".")
        if part == "weight_shape":
            shapes[f"{prefix}.weight"] = tuple(int(v) for v in read_tensor(directory, name).tolist())
        elif part not in PARAMETERS:
            shapes[name] = shape
    return shapes


def read_compressed(directory: Path, names: list[str], rename: Callable[[str], str]) -> StoredWeights:
    """The checkpoint's weights de-quantized by compressed-tensors (float32), under the model's parameter names
    (`rename`: a stored name → the model's)."""
    import transformers
    from transformers import CompressedTensorsConfig

    with warnings.catch_warnings():  # transformers warns that the checkpoint's own config is used: it is asked
        warnings.filterwarnings("ignore", message="You passed `quantization_config`")
        model = transformers.AutoModelForCausalLM.from_pretrained(
            directory, dtype=torch.float32, quantization_config=CompressedTensorsConfig(dequantize=True)
        )
    parameters = dict(model.named_parameters())
    headers = tensor_headers(safetensors_files(directory))
    quantized = {rename(f"{name.rsplit('.', 1)[0]}.weight") for name in headers if name.endswith(".weight_scale")}
    weights, _, _ = _scheme(directory, checkpoint_settings(directory)["quantization_config"])
    stored_types = {rename(name): dtype for name, (dtype, _) in headers.items()}
    label = f"{weights.get('type')}{weights['num_bits']}"
    values = {name: parameters[name].detach().float() for name in names}
    types = {name: label if name in quantized else stored_types.get(name, "float") for name in names}
    return StoredWeights(values, types, frozenset(quantized & set(names)))
