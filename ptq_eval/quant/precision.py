"""What a quant config rounds besides its weights: the inputs of its quantized matrices (activations) and the keys
and values attention reads (the KV cache), each a `Precision`; the presets their ecosystems name them by; how
one tensor of them is rounded.

Granularity (`per`):
- `token`: dynamic, a scale per token (per run of `group_size` features of it, or the block a format fixes),
  computed as the values pass, as W8A8's per-token activations and KIVI/QuaRot's per-token KV groups are;
- `head` (KV only): one static scale per attention head for keys and one for values, calibrated;
- `tensor`: one static scale per matrix input, or per layer for keys and for values (vLLM's fp8 `k_scale`,
  `v_scale`), calibrated. NVFP4 takes its global scale so, its blocks' e4m3 scales dynamic (llm-compressor's
  NVFP4 activations).
Static scales are fitted on the range of the calibration split (min and max), as the peers' min-max observers
do. `hadamard` (KV only): keys and values rounded in a Walsh–Hadamard-rotated basis of each head and rotated back
(QuaRot's R3 for keys; for values, the head-wise rotation its R2 folds into v_proj and o_proj): attention scores
and outputs are unchanged by the rotation itself, only the rounding sees it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import ValidationError

from ptq_eval.errors import UserError
from ptq_eval.quant.formats import FORMATS, number_format, quantize_tensor
from ptq_eval.quant.grid import PER_CHANNEL, check_bits
from ptq_eval.schema import Strict

ACTIVATIONS, KV_CACHE = "activations", "kv_cache"
COMPONENTS = (ACTIVATIONS, KV_CACHE)
PER = ("token", "head", "tensor")
BITS_COLUMNS = {ACTIVATIONS: "activation_bits", KV_CACHE: "kv_bits"}  # results: each component's bits per value
PRECISION_COLUMNS = (ACTIVATIONS, BITS_COLUMNS[ACTIVATIONS], KV_CACHE, BITS_COLUMNS[KV_CACHE])
# presets by the names vLLM, llm-compressor and llama.cpp give them
PRESETS = {
    ACTIVATIONS: {
        "int8": {"format": "int", "bits": 8},
        "fp8": {"format": "fp8_e4m3"},
        "mxfp4": {"format": "mxfp4"},
        "nvfp4": {"format": "nvfp4", "per": "tensor"},
    },
    KV_CACHE: {
        "fp8": {"format": "fp8_e4m3", "per": "tensor"},
        "fp8_e4m3": {"format": "fp8_e4m3", "per": "tensor"},
        "int8": {"format": "int", "bits": 8, "symmetric": False},
        "int4": {"format": "int", "bits": 4, "symmetric": False},
        "q8_0": {"format": "q8_0"},
        "q4_0": {"format": "q4_0"},
    },
}
# llm-compressor's preset schemes: the weights' grid and the activations' precision
SCHEMES = {
    "W8A8": ({"format": "int", "bits": 8, "group_size": PER_CHANNEL}, "int8"),
    "W4A8": ({"format": "int", "bits": 4, "group_size": 128}, "int8"),
    "FP8_DYNAMIC": ({"format": "fp8_e4m3", "group_size": PER_CHANNEL}, "fp8"),
    "NVFP4": ({"format": "nvfp4"}, "nvfp4"),
}


class PrecisionError(UserError):
    """An activation or KV-cache precision that means nothing; the message says what would."""


def _check_format(component: str, name: str) -> None:
    if name not in FORMATS or FORMATS[name].read_only:
        simulated = ", ".join(n for n, f in FORMATS.items() if not f.read_only)
        raise PrecisionError(f"{component}: {name!r} is not a number format it can round to; accepted: {simulated}")


class PrecisionOptions(Strict):
    """A precision as a study writes it (`bits` may list several, one config each)."""

    format: str = "int"
    bits: int | list[int] | None = None
    per: Literal[PER] = "token"
    dynamic: bool | None = None
    group_size: int | None = None
    symmetric: bool = True
    hadamard: bool = False


@dataclass(frozen=True, kw_only=True)
class Precision:
    """How one component's values are rounded as the model runs (see the module's docstring)."""

    component: str
    format: str = "int"
    bits: int
    per: str = "token"
    group_size: int = PER_CHANNEL
    symmetric: bool = True
    hadamard: bool = False

    def __post_init__(self) -> None:
        name = f"{self.component}: "
        if self.component not in COMPONENTS:
            raise PrecisionError(f"{self.component!r} is not a component; accepted: {', '.join(COMPONENTS)}")
        _check_format(self.component, self.format)
        if self.per not in PER:
            raise PrecisionError(f"{name}per {self.per!r} is not accepted; accepted: {', '.join(PER)}")
        fmt = FORMATS[self.format]
        check_bits(self.bits)
        fmt.check(self.bits, self.group_size, self.symmetric)
        if self.per == "head" and self.component != KV_CACHE:
            raise PrecisionError(f"{name}per head applies to the KV cache only; accepted: token, tensor")
        if self.hadamard and self.component != KV_CACHE:
            raise PrecisionError(f"{name}hadamard rotates the KV cache's heads; it means nothing for activations")
        if self.format == "nvfp4" and self.per != "tensor":
            raise PrecisionError(
                f"{name}nvfp4 takes a calibrated global scale (per: tensor), its blocks' scales dynamic, as "
                f"llm-compressor's NVFP4; per {self.per} means nothing for it"
            )
        if fmt.group is not None and self.format != "nvfp4" and self.per != "token":
            raise PrecisionError(
                f"{name}{self.format} scales each block of {fmt.group} as it passes (per: token); per {self.per} "
                "means nothing for it"
            )
        if self.per != "token" and fmt.group is None and self.group_size != PER_CHANNEL:
            raise PrecisionError(f"{name}group_size={self.group_size} applies to per: token only (dynamic groups)")

    @property
    def dynamic(self) -> bool:
        return self.per == "token"

    def unrounded(self, width: int) -> str | None:
        """Why values `width` wide cannot be rounded as this precision says (None: they can): a block format
        would keep them whole, a group or block would span beyond them, a Hadamard needs a power of two."""
        fmt = number_format(self.format)
        if fmt.kept_whole(width):
            return f"the format keeps such widths unrounded ({fmt.kept_whole(width)})"
        if self.group_size > 0 and width % self.group_size:
            return f"its groups of {self.group_size} do not divide them"
        if self.hadamard and width & (width - 1):
            return "hadamard rotates a power-of-two width only"
        return None

    @property
    def kind(self) -> str:
        """What is rounded how, its bits aside (a fit's key: `int token asym`, `fp8_e4m3 tensor`)."""
        group = f" group{self.group_size}" if self.group_size > 0 and FORMATS[self.format].group is None else ""
        asym = "" if self.symmetric else " asym"
        return f"{self.format} {self.per}{group}{asym}{' hadamard' if self.hadamard else ''}"

    @property
    def label(self) -> str:
        """The kind with its bits where the format leaves them open (`int4 token asym`)."""
        fixed = FORMATS[self.format].bits is not None
        return self.kind if fixed else self.kind.replace(self.format, f"{self.format}{self.bits}", 1)

    @property
    def bits_per_value(self) -> float:
        """The scaling law's P for this component: element bits, a stored group scale spread over its group (a
        dynamic per-token scale, or a static one per head or tensor, counted as none)."""
        return number_format(self.format).bits_per_weight(self.bits, self.group_size, self.symmetric)

    def as_dict(self) -> dict:
        return {"format": self.format, "bits": self.bits, "per": self.per, "group_size": self.group_size,
                "symmetric": self.symmetric, "hadamard": self.hadamard}  # fmt: skip

    def check_dtype(self, dtype: torch.dtype) -> None:
        number_format(self.format).check_dtype(self.bits, self.symmetric, dtype)


def precisions(component: str, written: object) -> list[Precision]:
    """The precisions a study's `activations:` or `kv_cache:` stands for: a preset's name, a mapping (its bits
    may be a list), or a list of those."""
    if isinstance(written, list):
        return [found for item in written for found in precisions(component, item)]
    if isinstance(written, str):
        presets = PRESETS[component]
        if written not in presets:
            raise PrecisionError(f"{component}: {written!r} is not a preset; accepted: {', '.join(presets)}")
        written = presets[written]
    if not isinstance(written, dict):
        raise PrecisionError(
            f"{component}: {written!r} is neither a preset ({', '.join(PRESETS[component])}) nor a mapping (format, "
            "bits, per, group_size, symmetric, dynamic, hadamard), nor a list of them"
        )
    try:
        options = PrecisionOptions.model_validate(written)
    except ValidationError as error:
        problems = [f"{'.'.join(map(str, p['loc']))}: {p['msg']}" for p in error.errors()]
        raise PrecisionError(f"{component}: {'; '.join(problems)}") from None
    _check_format(component, options.format)  # before its bits: an unknown format's error names the formats
    if "per" not in options.model_fields_set and options.format == "nvfp4":
        options = options.model_copy(update={"per": "tensor"})  # its one granularity: a calibrated global scale
    if options.dynamic is not None and options.dynamic != (options.per == "token"):
        raise PrecisionError(
            f"{component}: dynamic={str(options.dynamic).lower()} with per {options.per} means nothing: scales are "
            "dynamic per token, static (calibrated) per head or tensor"
        )
    fmt = FORMATS[options.format]
    group = options.group_size if options.group_size is not None else fmt.group
    bits = options.bits if options.bits is not None else fmt.bits
    if bits is None:
        raise PrecisionError(f"{component}: format {options.format} needs bits (e.g. bits: 8)")
    fields = options.model_dump(exclude={"bits", "dynamic", "group_size"})
    return [
        Precision(component=component, bits=b, group_size=PER_CHANNEL if group is None else group, **fields)
        for b in (bits if isinstance(bits, list) else [bits])
    ]


def stored_precision(component: str, stored: object) -> Precision | None:
    """A job description's precision as stored (None where it has none)."""
    return Precision(component=component, **stored) if isinstance(stored, dict) else None


def round_per_token(x: torch.Tensor, precision: Precision) -> torch.Tensor:
    """x [..., features] rounded with a dynamic scale per token (per group of features), in x's dtype."""
    rows = x.reshape(-1, x.shape[-1])
    rounded = quantize_tensor(rows, precision.bits, precision.group_size, precision.symmetric, precision.format)
    return rounded.reshape(x.shape)


def round_static(rows: torch.Tensor, low: torch.Tensor, high: torch.Tensor, precision: Precision) -> torch.Tensor:
    """rows [k, m] rounded onto the grid fitted on the calibrated range [low, high] ([k, 1] each: one range per
    row; or [1, 1]: one for every row); NVFP4: one global scale from the range, each block of 16 of a row scaled
    as it passes. In rows' dtype."""
    fmt = number_format(precision.format)
    if fmt.group is not None:  # nvfp4 (the only fixed-block format a static precision accepts)
        if rows.shape[1] % fmt.group:
            raise PrecisionError(
                f"{precision.component}: nvfp4 rounds blocks of {fmt.group}; a width of {rows.shape[1]} is no "
                "multiple of it"
            )
        span = torch.maximum(low.abs(), high.abs()).reshape(1, 1)
        scale = fmt.tensor_scale(span, rows.dtype)
        blocks = rows.reshape(-1, fmt.group)
        return fmt.round_rows(blocks, precision.bits, True, scale).reshape(rows.shape).to(rows.dtype)
    grid = fmt.fit(torch.cat([low, high], dim=1).to(rows.dtype), precision.bits, precision.symmetric, rows.dtype, None)
    return grid.fake_quantize(rows).to(rows.dtype)
