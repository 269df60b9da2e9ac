"""GGUF files (llama.cpp's format) read through the `gguf` package, llama.cpp's own Python reader: every tensor
type it de-quantizes (the legacy Q4_0…Q8_0, the K-quants, the i-quants, MXFP4…), mapped onto transformers'
parameter names by the package's own name table for the architectures below.

llama.cpp's converter reorders the rows of Llama's query and key projections (its rotary layout pairs a head's
halves differently); the reader puts them back, so a weight equals the one transformers' model holds. An
architecture not in `ARCHITECTURES` is refused by name rather than read with a guessed mapping."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ptq_eval.artifacts.base import Artifact, ArtifactError, element_bits
from ptq_eval.quant.stored import StoredWeights


@dataclass(frozen=True)
class GGUFArchitecture:
    model_types: tuple[str, ...]  # the transformers model types a file of this architecture can be the base of
    rotary_rows_reordered: bool  # the converter reorders the query and key rows (Llama's)


ARCHITECTURES = {
    "llama": GGUFArchitecture(("llama", "mistral"), True),
    "qwen2": GGUFArchitecture(("qwen2",), False),
    "qwen3": GGUFArchitecture(("qwen3",), False),
    "gptneox": GGUFArchitecture(("gpt_neox",), False),
}
FLOAT_TYPES = ("F32", "F16", "BF16", "F64")
NOT_COUNTED = ("token_embd.weight", "output.weight")  # the embeddings and head: not in the bits per weight
LEGACY = ("q4_0", "q4_1", "q5_0", "q5_1", "q8_0")  # GGUF types ptq-eval also simulates (quant/ggml_formats.py)
DERIVED = ("rope_freqs.weight",)  # tables some converters store beside the weights; no model parameter holds them


def _reader(path: Path):
    try:
        import gguf
    except ImportError:
        raise ArtifactError(
            f"{path}: reading GGUF needs the gguf package (pip install 'ptq-eval[artifacts]')"
        ) from None
    try:
        return gguf.GGUFReader(path)
    except Exception as error:  # the reader raises bare ValueErrors and numpy's errors for damaged files
        raise ArtifactError(f"{path}: not a readable GGUF file ({type(error).__name__}: {error})") from None


def _field(reader, key: str, path: Path):
    field = reader.fields.get(key)
    if field is None:
        raise ArtifactError(f"{path}: GGUF metadata has no {key}")
    return field.contents()


def _architecture(reader, path: Path) -> tuple[str, GGUFArchitecture]:
    name = _field(reader, "general.architecture", path)
    if name not in ARCHITECTURES:
        raise ArtifactError(
            f"{path}: GGUF architecture {name!r} is not mapped onto transformers' parameter names here; "
            f"accepted: {', '.join(ARCHITECTURES)}"
        )
    return name, ARCHITECTURES[name]


def describe_gguf(path: Path, reference: str) -> Artifact:
    """What a GGUF file says of itself: its file type, each matrix's storage type, its bits per weight."""
    import gguf

    reader = _reader(path)
    name, architecture = _architecture(reader, path)
    matrices = [t for t in reader.tensors if len(t.shape) >= 2 and t.name not in NOT_COUNTED]
    if not matrices:
        raise ArtifactError(f"{path}: the GGUF file holds no weight matrix")
    elements = Counter()
    for tensor in matrices:
        elements[tensor.tensor_type.name] += int(tensor.n_elements)
    main = elements.most_common(1)[0][0]
    file_type = reader.fields.get("general.file_type")
    quantized_as = main
    if file_type is not None:
        quantized_as = gguf.LlamaFileType(int(file_type.contents())).name.removeprefix("MOSTLY_").removeprefix("ALL_")
    kinds = Counter(tensor.tensor_type.name for tensor in matrices)
    uniform = main.lower() if len(kinds) == 1 and main.lower() in LEGACY else "gguf"
    stored_bits = sum(int(tensor.n_bytes) * 8 for tensor in matrices)
    return Artifact(
        reference=reference, path=path, artifact_type="gguf", quantized_as=quantized_as,
        architectures=architecture.model_types, bits=element_bits(main),
        group_size=int(gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[main]][0]) if main not in FLOAT_TYPES else -1,
        format=uniform, symmetric=True, bits_per_weight=stored_bits / sum(elements.values()),
        types=tuple(sorted(kinds.items())),
    )  # fmt: skip


def gguf_names(path: Path, names: list[str]) -> dict[str, str]:
    """base parameter name → its GGUF tensor name, by the gguf package's name table for the file's architecture."""
    import gguf

    reader = _reader(path)
    name, _ = _architecture(reader, path)
    arch = next(key for key, value in gguf.MODEL_ARCH_NAMES.items() if value == name)
    table = gguf.get_tensor_name_map(arch, int(_field(reader, f"{name}.block_count", path)))
    mapped = {}
    for parameter in names:
        found = table.get_name(parameter, try_suffixes=(".weight", ".bias"))
        if found is None:
            raise ArtifactError(f"{path}: no GGUF {name} tensor corresponds to the base's parameter {parameter}")
        mapped[parameter] = found
    return mapped


def gguf_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """GGUF tensor name → its shape as torch holds it (GGUF lists dimensions innermost first)."""
    return {t.name: tuple(int(d) for d in reversed(t.shape)) for t in _reader(path).tensors}


def gguf_vocabulary(path: Path) -> tuple[list[str] | None, list[str] | None]:
    """The file's tokens by id and BPE merges (None where it has none)."""
    reader = _reader(path)
    found = [reader.fields.get(key) for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges")]
    return tuple(None if field is None else list(field.contents()) for field in found)


def _unreorder(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """Undo the converter's reordering of a query or key projection's rows (per head: halves interleaved)."""
    rows = weight.shape[0]
    return weight.reshape(heads, rows // heads // 2, 2, *weight.shape[1:]).transpose(1, 2).reshape(weight.shape)


def read_gguf(path: Path, names: dict[str, str]) -> StoredWeights:
    """The file's tensors de-quantized to float32 under the base's parameter names (`names`: base → GGUF name)."""
    import gguf

    reader = _reader(path)
    name, architecture = _architecture(reader, path)
    tensors = {t.name: t for t in reader.tensors}
    heads = {"q_proj": _field(reader, f"{name}.attention.head_count", path)}
    kv_field = reader.fields.get(f"{name}.attention.head_count_kv")
    heads["k_proj"] = heads["q_proj"] if kv_field is None else kv_field.contents()
    values, types, quantized = {}, {}, set()
    for parameter, tensor_name in names.items():
        tensor = tensors[tensor_name]
        array = np.array(
            gguf.dequantize(tensor.data, tensor.tensor_type), dtype=np.float32
        )  # a copy: the file is mapped read-only
        value = torch.from_numpy(array).reshape(tuple(int(d) for d in reversed(tensor.shape)))
        module = parameter.rsplit(".", 2)[-2] if parameter.count(".") >= 1 else ""
        if architecture.rotary_rows_reordered and module in heads and parameter.endswith(".weight"):
            value = _unreorder(value, int(heads[module]))
        values[parameter], types[parameter] = value, tensor.tensor_type.name
        if tensor.tensor_type.name not in FLOAT_TYPES:
            quantized.add(parameter)
    return StoredWeights(values, types, frozenset(quantized))
