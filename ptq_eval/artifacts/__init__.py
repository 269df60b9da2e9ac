"""Quantized files someone released, as the quantized side of a pair: a GGUF file (`gguf_file.py`), a packed
GPTQ checkpoint (`gptq_pack.py`) or a compressed-tensors checkpoint (`compressed.py`). `describe` reads what a
file says of itself (when a study is validated), `check_base` holds it to its base before any model loads
(architecture, every parameter's shape, the tokenizer), `stored_weights` de-quantizes it for the worker. Local
paths, or hub references (`hub.py`); pickle is never read."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import torch
import transformers

from ptq_eval import in_memory
from ptq_eval.artifacts.base import Artifact, ArtifactError, file_digest
from ptq_eval.artifacts.checkpoint_files import PICKLE_SUFFIXES, checkpoint_settings
from ptq_eval.artifacts.compressed import METHOD as COMPRESSED
from ptq_eval.artifacts.compressed import compressed_shapes, describe_compressed, read_compressed
from ptq_eval.artifacts.gguf_file import DERIVED, describe_gguf, gguf_names, gguf_shapes, gguf_vocabulary, read_gguf
from ptq_eval.artifacts.gptq_pack import describe_pack, pack_shapes, read_pack
from ptq_eval.artifacts.hub import fetch, parse_hub
from ptq_eval.artifacts.names import stored_to_model
from ptq_eval.errors import UserError
from ptq_eval.quant.stored import StoredWeights

GGUF_MAGIC = b"GGUF"

__all__ = ["Artifact", "ArtifactError", "artifact_digest", "check_base", "describe", "stored_weights"]


def describe(reference: str) -> Artifact:
    """What the file at `reference` (a .gguf file, or a quantized checkpoint's directory) says of itself."""
    path = Path(reference)
    if path.exists():
        return _described(path, reference)
    found = parse_hub(reference)
    if found is None:
        raise ArtifactError(
            f"artifact {reference!r}: no such file or directory, nor a hub reference (org/name[@revision] for a "
            "quantized checkpoint, org/name/FILE.gguf[@revision] for a GGUF file)"
        )
    try:
        path, commit = fetch(found)
    except UserError as error:
        raise ArtifactError(f"artifact {reference!r}: no such local file; on the hub: {error}") from None
    return replace(_described(path, reference), commit=commit)


def _described(path: Path, reference: str) -> Artifact:
    """What a local file or checkpoint directory says of itself."""
    if path.is_dir():
        method = checkpoint_settings(path)["quantization_config"].get("quant_method")
        return describe_compressed(path, reference) if method == COMPRESSED else describe_pack(path, reference)
    if path.suffix in PICKLE_SUFFIXES:
        raise ArtifactError(f"{reference}: a pickle file ({path.suffix}), which ptq-eval never loads")
    with path.open("rb") as handle:
        magic = handle.read(len(GGUF_MAGIC))
    if magic != GGUF_MAGIC:
        raise ArtifactError(f"{reference}: not a GGUF file (it starts {magic!r}, not {GGUF_MAGIC!r})")
    return describe_gguf(path, reference)


def artifact_digest(artifact: Artifact) -> str:
    """The commit a hub artifact was fetched at, or sha256 of a local artifact's files (a checkpoint directory:
    config.json and its safetensors)."""
    if artifact.commit is not None:
        return f"git:{artifact.commit}:{artifact.path.name if artifact.path.is_file() else ''}"
    if artifact.path.is_dir():
        return file_digest([artifact.path / "config.json", *sorted(artifact.path.glob("*.safetensors"))])
    return file_digest([artifact.path])


def _meta_model(config) -> torch.nn.Module:
    """The base's model with no weights (its parameters' names and shapes, tied ones once)."""
    with torch.device("meta"):
        return transformers.AutoModelForCausalLM.from_config(config)


def _check_vocabulary(artifact: Artifact, tokenizer) -> None:
    """The file's tokens by id (and merges) are the base tokenizer's, so both read the eval text alike."""
    if artifact.artifact_type == "gguf":
        tokens, merges = gguf_vocabulary(artifact.path)
        if tokens is None:
            raise ArtifactError(f"{artifact.reference}: the GGUF file has no tokenizer.ggml.tokens to check")
        base = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
        for index, (found, wanted) in enumerate(zip(tokens, base, strict=False)):
            if found != wanted:
                raise ArtifactError(
                    f"{artifact.reference} does not tokenize as its base: token {index} is {found!r} in the file, "
                    f"{wanted!r} in the base"
                )
        if len(tokens) < len(base):
            raise ArtifactError(f"{artifact.reference}: {len(tokens)} tokens in the file, {len(base)} in the base")
        base_merges = _merges(tokenizer)
        if merges is not None and base_merges is not None and merges != base_merges:
            raise ArtifactError(f"{artifact.reference} does not tokenize as its base: its BPE merges differ")
        return
    own = transformers.AutoTokenizer.from_pretrained(artifact.path)
    if own.get_vocab() != tokenizer.get_vocab() or _merges(own) != _merges(tokenizer):
        raise ArtifactError(f"{artifact.reference} does not tokenize as its base: its tokenizer differs")


def _merges(tokenizer) -> list[str] | None:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    merges = json.loads(backend.to_str())["model"].get("merges")
    return None if merges is None else [m if isinstance(m, str) else " ".join(m) for m in merges]


def _file_shapes(artifact: Artifact, model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    """base parameter name → the shape the file holds for it; the file's tensors that map to no base parameter
    are an error."""
    names = [name for name, _ in model.named_parameters()]
    if artifact.artifact_type == "gguf":
        mapped = gguf_names(artifact.path, names)
        shapes = gguf_shapes(artifact.path)
        unused = set(shapes) - set(mapped.values()) - set(DERIVED)
        missing = {parameter: tensor for parameter, tensor in mapped.items() if tensor not in shapes}
        if missing:
            parameter, tensor = next(iter(missing.items()))
            raise ArtifactError(f"{artifact.reference}: the file has no {tensor} (the base's {parameter})")
        found = {parameter: shapes[tensor] for parameter, tensor in mapped.items()}
    else:
        rename = stored_to_model(model)
        stored = pack_shapes(artifact.path) if artifact.artifact_type == "gptq" else compressed_shapes(artifact.path)
        found = {rename(name): shape for name, shape in stored.items()}
        unused = set(found) - set(names)
    if unused:
        raise ArtifactError(f"{artifact.reference}: tensors the base has no parameter for: {', '.join(sorted(unused))}")
    return found


def check_base(artifact: Artifact, base: str, tokenizer, revision: str | None = None) -> None:
    """Refuse an artifact that is not a quantization of `base`: another architecture, a parameter missing or of
    another shape, another tokenizer; the error names the first mismatch."""
    if in_memory.is_held(base):  # a model given to the Python API: its own config
        config = in_memory.held(base).model.config
    else:
        try:
            config = transformers.AutoConfig.from_pretrained(base, revision=revision)
        except (OSError, ValueError) as error:
            raise ArtifactError(f"{artifact.reference}: cannot read its base {base}'s config ({error})") from None
    if config.model_type not in artifact.architectures:
        raise ArtifactError(
            f"{artifact.reference} is a {' or '.join(artifact.architectures)} model; its base {base} is "
            f"{config.model_type}"
        )
    model = _meta_model(config)
    found = _file_shapes(artifact, model)
    for name, shape in ((name, tuple(p.shape)) for name, p in model.named_parameters()):
        if name not in found:
            raise ArtifactError(f"{artifact.reference}: the file has no tensor for the base's {name}")
        if found[name] != shape:
            raise ArtifactError(
                f"{artifact.reference}: {name} is {list(found[name])} in the file, {list(shape)} in the base {base}"
            )
    _check_vocabulary(artifact, tokenizer)


def stored_weights(artifact: Artifact, model: torch.nn.Module) -> StoredWeights:
    """The artifact's weights, de-quantized to float32, under the model's parameter names."""
    names = [name for name, _ in model.named_parameters()]
    if artifact.artifact_type == "gguf":
        return read_gguf(artifact.path, gguf_names(artifact.path, names))
    if artifact.artifact_type == COMPRESSED:
        return read_compressed(artifact.path, names, stored_to_model(model))
    return read_pack(artifact.path, stored_to_model(model))
