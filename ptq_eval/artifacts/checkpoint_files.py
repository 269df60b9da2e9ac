"""A quantized checkpoint directory's files: its config.json, its safetensors (never pickle), their headers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from ptq_eval.artifacts.base import ArtifactError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
DTYPE_BYTES = {"F64": 8, "F32": 4, "I64": 8, "I32": 4, "F16": 2, "BF16": 2, "I16": 2, "I8": 1, "U8": 1, "F8_E4M3": 1}


def checkpoint_settings(directory: Path) -> dict:
    """config.json, which must say how the checkpoint is quantized."""
    config_file = directory / "config.json"
    if not config_file.is_file():
        raise ArtifactError(f"{directory}: no config.json (a quantized checkpoint is a model directory)")
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as error:
        raise ArtifactError(f"{config_file}: not JSON ({error})") from None
    if not isinstance(config.get("quantization_config"), dict):
        raise ArtifactError(f"{directory}: config.json has no quantization_config (not a quantized checkpoint)")
    return config


def safetensors_files(directory: Path) -> list[Path]:
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        pickled = sorted(p.name for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES)
        held = f" (it holds {', '.join(pickled)}: pickle, which ptq-eval never loads)" if pickled else ""
        raise ArtifactError(f"{directory}: no .safetensors weights{held}")
    return files


def tensor_headers(files: list[Path]) -> dict[str, tuple[str, tuple[int, ...]]]:
    """name → (dtype, shape) from the safetensors headers (no tensor read); a damaged file is an error."""
    from safetensors import SafetensorError, safe_open

    found = {}
    for path in files:
        try:
            with safe_open(path, framework="pt") as handle:
                for name in handle.keys():
                    part = handle.get_slice(name)
                    found[name] = (part.get_dtype(), tuple(part.get_shape()))
        except (SafetensorError, OSError) as error:
            raise ArtifactError(f"{path}: damaged safetensors file ({error})") from None
    return found


def stored_bits(dtype: str, shape: tuple[int, ...]) -> int:
    """The bits a stored tensor takes."""
    if dtype not in DTYPE_BYTES:
        raise ArtifactError(f"a stored tensor of dtype {dtype} is not counted here; counted: {', '.join(DTYPE_BYTES)}")
    return DTYPE_BYTES[dtype] * 8 * math.prod(shape)


def read_tensor(directory: Path, name: str) -> torch.Tensor:
    """One stored tensor (a small one: a shape, a scale)."""
    from safetensors import safe_open

    for path in safetensors_files(directory):
        with safe_open(path, framework="pt") as handle:
            if name in handle.keys():
                return handle.get_tensor(name)
    raise ArtifactError(f"{directory}: no tensor {name}")
