"""Packed GPTQ checkpoints (GPTQModel's and AutoGPTQ's layout, and what `ptq-eval export` writes), read back by
our own unpacker: per quantized Linear, `qweight` (int32 words of `bits`-bit codes along the input dimension),
`qzeros` (packed along the output dimension; `checkpoint_format: gptq` stores zero − 1, `gptq_v2` the zero),
float16 `scales` [groups, out] and `g_idx` (each input column's group). The weight is scale · (code − zero),
exactly as the kernels de-quantize it (in float32). Safetensors only: a pack of `.bin` files is refused."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import torch

from ptq_eval.artifacts.base import Artifact, ArtifactError
from ptq_eval.artifacts.checkpoint_files import checkpoint_settings, safetensors_files, stored_bits, tensor_headers
from ptq_eval.errors import UserError
from ptq_eval.quant.stored import StoredWeights

PACK_TENSORS = ("qweight", "qzeros", "scales", "g_idx")
PACK_FORMATS = {"gptq": 1, "gptq_v2": 0}  # checkpoint_format → what is added to a stored zero
EMBEDDING_WORDS = ("embed", "wte", "wpe", "lm_head")  # matrices left out of the pack's bits per weight
SAFETENSORS_TYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64"}


def _layout(bits: int) -> tuple[int, int]:
    """(values, words) per block: codes are laid end to end as one little-endian bit string."""
    common = math.gcd(32, bits)
    return 32 // common, bits // common


def pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack non-negative integer codes along dim 0 into int32 words, `bits` bits each, low bits first."""
    values, words = _layout(bits)
    if codes.shape[0] % values:
        raise UserError(f"dimension {codes.shape[0]} is not a multiple of {values} ({bits}-bit packing)")
    blocks = codes.to(torch.int64).reshape(codes.shape[0] // values, values, *codes.shape[1:])
    packed = torch.zeros(blocks.shape[0], words, *codes.shape[1:], dtype=torch.int64)
    for i in range(values):
        word, shift = divmod(i * bits, 32)
        packed[:, word] |= (blocks[:, i] << shift) & 0xFFFFFFFF
        if shift + bits > 32:
            packed[:, word + 1] |= blocks[:, i] >> (32 - shift)
    packed = packed.reshape(-1, *codes.shape[1:])
    return torch.where(packed >= 2**31, packed - 2**32, packed).to(torch.int32)


def unpack(words: torch.Tensor, bits: int) -> torch.Tensor:
    """Inverse of `pack`: int64 codes."""
    values, per_block = _layout(bits)
    blocks = (words.to(torch.int64) & 0xFFFFFFFF).reshape(words.shape[0] // per_block, per_block, *words.shape[1:])
    mask = 2**bits - 1
    codes = []
    for i in range(values):
        word, shift = divmod(i * bits, 32)
        code = blocks[:, word] >> shift
        if shift + bits > 32:
            code = code | (blocks[:, word + 1] << (32 - shift))
        codes.append(code & mask)
    return torch.stack(codes, dim=1).reshape(-1, *words.shape[1:])


def dequantize_packed(tensors: dict[str, torch.Tensor], prefix: str, bits: int, zero_offset: int = 1) -> torch.Tensor:
    """The float32 [out, in] weight a packed GPTQ layer stands for (`zero_offset`: 1 for checkpoint_format gptq,
    which stores zero − 1; 0 for gptq_v2)."""
    codes = unpack(tensors[f"{prefix}.qweight"], bits).T
    zeros = unpack(tensors[f"{prefix}.qzeros"].T, bits).T + zero_offset
    index = tensors[f"{prefix}.g_idx"].long()
    return tensors[f"{prefix}.scales"].float()[index].T * (codes - zeros[index].T)


def pack_settings(directory: Path) -> dict:
    """The pack's quantization_config, checked to be one this reader de-quantizes exactly."""
    settings = checkpoint_settings(directory)["quantization_config"]
    method = settings.get("quant_method")
    if method != "gptq":
        raise ArtifactError(f"{directory}: quant_method {method!r} packs are not read here; accepted: gptq")
    layout = settings.get("checkpoint_format", "gptq")
    if layout not in PACK_FORMATS:
        raise ArtifactError(
            f"{directory}: checkpoint_format {layout!r} is not read; accepted: {', '.join(PACK_FORMATS)}"
        )
    return settings


def describe_pack(directory: Path, reference: str) -> Artifact:
    """What a GPTQ pack says of itself: bits, group size, symmetry; bits per weight from its stored tensors."""
    settings = pack_settings(directory)
    headers = tensor_headers(safetensors_files(directory))
    bits, group = int(settings["bits"]), int(settings.get("group_size", -1))
    prefixes = [name.removesuffix(".qweight") for name in headers if name.endswith(".qweight")]
    if not prefixes:
        raise ArtifactError(f"{directory}: quantization_config says gptq, but no tensor is packed (no .qweight)")
    stored = weights = 0
    for prefix in prefixes:
        codes = headers[f"{prefix}.qweight"][1]
        weights += codes[0] * 32 // bits * codes[1]
        stored += sum(
            stored_bits(*headers[f"{prefix}.{part}"]) for part in PACK_TENSORS if f"{prefix}.{part}" in headers
        )
    plain = [
        dtype
        for name, (dtype, shape) in headers.items()
        if len(shape) == 2 and not name.endswith(PACK_TENSORS) and not any(word in name for word in EMBEDDING_WORDS)
    ]
    types = [(f"int{bits}", len(prefixes)), *sorted(Counter(plain).items())]
    return Artifact(
        reference=reference, path=directory, artifact_type="gptq", quantized_as="gptq",
        architectures=(str(checkpoint_settings(directory).get("model_type")),), bits=bits, group_size=group,
        format="int",
        symmetric=bool(settings.get("sym", True)), bits_per_weight=stored / weights, types=tuple(types),
    )  # fmt: skip


def pack_shapes(directory: Path) -> dict[str, tuple[int, ...]]:
    """The model parameter each tensor of the pack stands for, and its shape ([out, in] for a packed layer)."""
    settings = pack_settings(directory)
    headers = tensor_headers(safetensors_files(directory))
    shapes = {}
    for name, (_, shape) in headers.items():
        prefix, _, part = name.rpartition(".")
        if part == "qweight":
            shapes[f"{prefix}.weight"] = (shape[1], shape[0] * 32 // int(settings["bits"]))
        elif part not in PACK_TENSORS:
            shapes[name] = shape
    return shapes


def read_pack(directory: Path, rename: Callable[[str], str]) -> StoredWeights:
    """Every tensor of the pack as float32 under the model's parameter names (`rename`: stored name → model's),
    packed layers de-quantized."""
    from safetensors.torch import load_file

    settings = pack_settings(directory)
    bits, offset = int(settings["bits"]), PACK_FORMATS[settings.get("checkpoint_format", "gptq")]
    tensors: dict[str, torch.Tensor] = {}
    for path in safetensors_files(directory):
        tensors |= load_file(path)
    prefixes = [name.removesuffix(".qweight") for name in tensors if name.endswith(".qweight")]
    unpacked = {f"{prefix}.weight": dequantize_packed(tensors, prefix, bits, offset) for prefix in prefixes}
    packed = {f"{prefix}.{part}" for prefix in prefixes for part in PACK_TENSORS}
    plain = {name: tensor for name, tensor in tensors.items() if name not in packed}
    types = dict.fromkeys(unpacked, f"int{bits}") | {name: _type_name(t.dtype) for name, t in plain.items()}
    values = unpacked | {name: tensor.float() for name, tensor in plain.items()}
    return StoredWeights(
        {rename(name): value for name, value in values.items()},
        {rename(name): kind for name, kind in types.items()},
        frozenset(rename(name) for name in unpacked),
    )


def _type_name(dtype: torch.dtype) -> str:
    return SAFETENSORS_TYPES.get(dtype, str(dtype).removeprefix("torch."))
