"""What every quantizer shares: the config, the reports, the one list of quantizable weights, coverage,
and the registry of methods.

A *quantizable weight* is one matrix, always seen as a Linear sees it ([out, in]):
- an `nn.Linear` weight (subclasses included);
- a GPT-2 `Conv1D` weight, stored transposed ([in, out]);
- one expert of a fused mixture-of-experts tensor ([experts, out, in], or [experts, in, out] where
  the experts module says `is_transposed`), each expert a matrix of its own.

Kept in full precision by documented default: embeddings (every `nn.Embedding`, positions included),
the output head, and MoE routers (the leaf modules beside a block's experts, e.g. `mlp.gate`,
`mlp.shared_expert_gate`), as GPTQModel and llm-compressor do. Every other parameter with two or more
dimensions that is neither quantized nor excluded by a pattern is *left out* and reported by name, so a
layer type the suite does not understand can never pass silently.
"""

from __future__ import annotations

import fnmatch
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import torch
from pydantic import BaseModel, ConfigDict, ValidationError
from transformers.pytorch_utils import Conv1D

from ptq_eval.errors import UserError
from ptq_eval.quant.formats import number_format
from ptq_eval.quant.grid import PER_CHANNEL, PER_TENSOR, check_bits
from ptq_eval.quant.number_format import FormatError
from ptq_eval.quant.precision import ACTIVATIONS, KV_CACHE, Precision

DEFAULT_EXCLUDE = ("lm_head", "embed_out")
EXPERT_INDEX = r"\.experts\.\d+(?=\.|$)"  # an expert's index in a ModuleList named experts
ROUTER_REASON = "MoE router (kept in full precision by default)"
INT = "int"  # the format every study had before formats: it enters job keys only when another is chosen


class QuantError(UserError):
    """A quant config cannot be applied to this model (e.g. it selects no weights)."""


class NoOptions(BaseModel):
    """The options of a method that has none."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class Method:
    """A registered quantization method: the function that runs it, its options' schema (a pydantic model whose
    defaults are the method's), whether it needs calibration, and the options that enter job keys only when set
    off their defaults (added after the first studies, so earlier keys hold)."""

    name: str
    run: Callable[..., QuantReport]
    options: type[BaseModel] = NoOptions
    needs_calibration: bool = False
    later_options: tuple[str, ...] = ()
    check: Callable[[QuantConfig], None] | None = None  # rules tying the options to the format
    reads_file: bool = False  # its weights are read from a quantized file (`stored=`), not computed
    rounds_weights: bool = True  # False: the weights stay as they are (a config of activations or KV alone)

    def default(self, option: str) -> object:
        return self.options.model_fields[option].default

    def validate_options(self, given: Mapping[str, object]) -> tuple[tuple[str, object], ...]:
        """Every option of the method, given or default, in the schema's order; an error names what is wrong."""
        accepted = ", ".join(self.options.model_fields) or "none"
        try:
            return tuple(self.options.model_validate(dict(given)).model_dump().items())
        except ValidationError as error:
            problems = []
            for problem in error.errors():
                option = ".".join(map(str, problem["loc"]))
                if problem["type"] == "extra_forbidden":
                    problems.append(f"{option} is not an option of method {self.name} (its options: {accepted})")
                else:
                    problems.append(f"{option}: {problem['msg'].removeprefix('Value error, ')}")
            raise QuantError("; ".join(problems)) from None


METHODS: dict[str, Method] = {}


def rounds_weights(method: object) -> bool:
    """Whether a method (by name, as results hold it) rounds weights; False for one that keeps them (`fp`)."""
    return not (method in METHODS and not METHODS[method].rounds_weights)


def method_named(name: str) -> Method:
    if name not in METHODS:
        raise QuantError(f"unknown quantization method {name!r}; accepted: {', '.join(METHODS)}")
    return METHODS[name]


def option_names() -> tuple[str, ...]:
    """Every registered method's option names, once each, in registration order (results columns)."""
    return tuple(dict.fromkeys(option for method in METHODS.values() for option in method.options.model_fields))


def later_option_defaults() -> dict[str, dict[str, object]]:
    """option → {method: default} for the options that are in job keys only off their defaults (results that
    do not record one held its default)."""
    found: dict[str, dict[str, object]] = {}
    for method in METHODS.values():
        for option in method.later_options:
            found.setdefault(option, {})[method.name] = method.default(option)
    return found


def granularity(group_size: int) -> str:
    if group_size == PER_CHANNEL:
        return "channel"
    if group_size == PER_TENSOR:
        return "tensor"
    return f"group{group_size}"


@dataclass(frozen=True, kw_only=True)
class QuantConfig:
    """One point of the quantization grid of a study: a method with its options (a mapping, every option kept
    with its default filled in), the number format and what it leaves open (bits, group size, symmetry); and what
    it rounds as the model runs, if anything: its matrices' inputs (`activations`) and the keys and values
    attention reads (`kv_cache`), `quant/precision.py`."""

    method: str
    bits: int
    format: str = INT
    group_size: int = PER_CHANNEL
    symmetric: bool = True
    options: tuple[tuple[str, object], ...] | Mapping[str, object] = ()
    activations: Precision | None = None
    kv_cache: Precision | None = None

    def __post_init__(self) -> None:
        method = method_named(self.method)
        for component, precision in ((ACTIVATIONS, self.activations), (KV_CACHE, self.kv_cache)):
            if precision is not None and precision.component != component:
                raise QuantError(f"{component}: given a precision of {precision.component}")
        if not method.rounds_weights:
            if self.activations is None and self.kv_cache is None:
                raise QuantError(f"method {self.method} keeps the weights as they are: give activations or kv_cache")
            if self.bits != self.rounded.bits:
                raise QuantError(
                    f"method {self.method}: bits={self.bits}, but its bits are those of the {self.rounded.component} "
                    f"it rounds ({self.rounded.bits})"
                )
        if self.activations is not None and dict(self.options).get("rotation", "none") != "none":
            raise QuantError(
                f"rotation: {dict(self.options)['rotation']} rotates the weights alone here (Q(W·Rᵀ)·R in the model's "
                "basis), so rounded activations would see the unrotated inputs; give activations without a rotation"
            )
        if method.reads_file and self.kv_cache is not None:
            raise QuantError("a quantized file's KV-cache precision is not simulated: give the file alone")
        object.__setattr__(self, "options", method.validate_options(dict(self.options)))
        check_bits(self.bits)
        fmt = number_format(self.format, dict(self.options).get("scale_dtype", "float32"))
        if fmt.read_only and not method.reads_file:
            raise FormatError(f"format {fmt.name} names what a quantized file holds; give the file (artifact: PATH)")
        fmt.check(self.bits, self.group_size, self.symmetric)
        if method.check is not None:
            method.check(self)

    def __getattr__(self, name: str) -> object:
        """The method's options read as attributes (`config.act_order`), their defaults where none was given."""
        for option, value in () if name.startswith("_") else self.__dict__.get("options", ()):
            if option == name:
                return value
        raise AttributeError(f"{type(self).__name__} of method {self.__dict__.get('method')!r} has no {name!r}")

    @property
    def granularity(self) -> str:
        return granularity(self.group_size)

    @property
    def static_run_time(self) -> bool:
        """An activation or KV precision takes static scales, calibrated before its evals score."""
        return any(p is not None and not p.dynamic for p in (self.activations, self.kv_cache))

    @property
    def needs_calibration(self) -> bool:
        """The method calibrates, or an activation or KV precision takes static (calibrated) scales."""
        return METHODS[self.method].needs_calibration or self.static_run_time

    @property
    def rounds_weights(self) -> bool:
        return METHODS[self.method].rounds_weights

    @property
    def reads_file(self) -> bool:
        return METHODS[self.method].reads_file

    @property
    def rounded(self) -> Precision | None:
        """What a config that keeps its weights rounds, whose bits are the law's P: its activations, else its KV
        cache (None where the config rounds its weights)."""
        return None if self.rounds_weights else self.activations or self.kv_cache

    @property
    def bits_per_weight(self) -> float:
        """The scaling law's P for this config (`quant/formats.py` says how the scales are counted); for a config
        that keeps its weights, that of what it rounds (`rounded`)."""
        if self.rounded is not None:
            return self.rounded.bits_per_value
        return number_format(self.format).bits_per_weight(self.bits, self.group_size, self.symmetric)

    def as_dict(self) -> dict:
        """The config as its job key reads it: the format only when not `int`; the method's options (an option
        added later only off its default), so a method's keys depend on its own options alone; activations and
        KV cache only when given (keys of weights alone are what they were)."""
        fields = {"method": self.method, "bits": self.bits, "group_size": self.group_size, "symmetric": self.symmetric}
        if self.format != INT:
            fields["format"] = self.format
        method = METHODS[self.method]
        for option, value in self.options:
            if option not in method.later_options or value != method.default(option):
                fields[option] = value
        for component, precision in ((ACTIVATIONS, self.activations), (KV_CACHE, self.kv_cache)):
            if precision is not None:
                fields[component] = precision.as_dict()
        return fields


@dataclass(frozen=True)
class WeightMatrix:
    """One quantizable matrix: a Linear's or Conv1D's weight, or one expert of a fused expert tensor."""

    name: str
    module: torch.nn.Module
    parameter: str = "weight"
    kind: str = "linear"  # linear | conv1d | expert
    expert: int | None = None
    transposed: bool = False  # stored [in, out]

    def read(self) -> torch.Tensor:
        """The stored weight as a [out, in] view (writing into it writes the model)."""
        tensor = getattr(self.module, self.parameter)
        if self.expert is not None:
            tensor = tensor[self.expert]
        return tensor.T if self.transposed else tensor

    @torch.no_grad()
    def write(self, value: torch.Tensor) -> None:
        view = self.read()
        view.copy_(value.to(view.dtype))

    @property
    def expert_family(self) -> object | None:
        """What this matrix shares with the other experts of its layer (None if it is no expert): the fused
        tensor, or for experts kept as a ModuleList the module path with the expert index as a wildcard."""
        if self.kind == "expert":
            return id(self.module), self.parameter
        if re.search(EXPERT_INDEX, self.name):
            return re.sub(EXPERT_INDEX, ".experts.*", self.name)
        return None

    @property
    def shape(self) -> tuple[int, int]:
        out_features, in_features = self.read().shape
        return out_features, in_features

    @property
    def numel(self) -> int:
        return self.shape[0] * self.shape[1]


@dataclass(frozen=True)
class LayerReport:
    """Weight error ‖W − Ŵ‖² / ‖W‖²; for calibrated methods the output errors ‖WX − ŴX‖² / ‖WX‖² of the method and
    of RTN on the same calibration inputs, the calibration rows the matrix saw, why it fell back to RTN (if it
    did), and (AWQ) the scale exponent α its search chose (None: unscaled) and the module its scales fold into."""

    name: str
    shape: tuple[int, int]
    relative_error: float
    output_error: float | None = None
    rtn_output_error: float | None = None
    samples: int | None = None
    fallback: str | None = None
    alpha: float | None = None
    folds_into: str | None = None


@dataclass(frozen=True)
class Coverage:
    """How much of the model a quant config touched.

    `fraction` is the quantized parameters over the non-embedding parameters (N); `left_out` names every
    weight (2-D or more) neither quantized, excluded by a pattern, nor kept by a documented default.
    """

    matrices: int
    params: int
    nonembedding_params: int
    left_out: dict[str, str] = field(default_factory=dict)
    left_out_params: int = 0
    excluded: tuple[str, ...] = ()
    defaults: dict[str, str] = field(default_factory=dict)

    @property
    def fraction(self) -> float:
        return self.params / self.nonembedding_params if self.nonembedding_params else 0.0

    def as_dict(self) -> dict:
        """As stored with a job: names of what was left out; counts of what was excluded or kept by default."""
        kept: dict[str, int] = {}
        for reason in self.defaults.values():
            kept[reason] = kept.get(reason, 0) + 1
        return asdict(self) | {"fraction": self.fraction, "excluded": len(self.excluded), "defaults": kept}


@dataclass
class QuantReport:
    """Per-layer errors, coverage, the time quantization took, (GPTQ) the grids behind the weights and how many
    configs shared their solve, and warnings the job keeps."""

    config: QuantConfig
    layers: list[LayerReport] = field(default_factory=list)
    seconds: float = 0.0
    grids: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    coverage: Coverage | None = None
    # Configs served by one shared GPTQ pass (sequential: none; one calibration pass, their column loops shared
    # where their solve options agree): the config that ran it holds its seconds, the others the time to write.
    solved_together: int = 1
    warnings: list[str] = field(default_factory=list)  # what ran otherwise than asked (e.g. GPTQ's eager loop)

    @property
    def mean_relative_error(self) -> float:
        return sum(layer.relative_error for layer in self.layers) / max(1, len(self.layers))


def embedding_weights(model: torch.nn.Module) -> dict[int, str]:
    """id → role of the input/position embeddings and the output head (not counted in N, never quantized)."""
    roles = {id(m.weight): "embedding" for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    if hasattr(model, "get_input_embeddings") and model.get_input_embeddings() is not None:
        roles[id(model.get_input_embeddings().weight)] = "embedding"
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None:
        roles.setdefault(id(head.weight), "output head")
    return roles


def is_fused_experts(module: torch.nn.Module) -> bool:
    """A module holding 3-D weight tensors that are not convolution kernels (a candidate experts stack)."""
    return not isinstance(module, torch.nn.modules.conv._ConvNd) and any(
        p.ndim == 3 for p in module.parameters(recurse=False)
    )


def _routers(model: torch.nn.Module) -> set[int]:
    """ids of the routers: leaf modules named `gate`, `router` or `*_gate` beside a block's experts (fused
    experts with a layout flag, or a ModuleList named `experts`)."""
    routers = set()
    for module in model.modules():
        children = dict(module.named_children())
        has_experts = any(
            (is_fused_experts(child) and hasattr(child, "is_transposed"))
            or (name == "experts" and isinstance(child, torch.nn.ModuleList))
            for name, child in children.items()
        )
        if has_experts:
            routers.update(
                id(child)
                for name, child in children.items()
                if (name in ("gate", "router") or name.endswith("_gate")) and not any(True for _ in child.children())
            )
    return routers


def _excluded(name: str, exclude: tuple[str, ...]) -> bool:
    candidates = (name, name.split("[")[0], name.split("[")[0].rsplit(".", 1)[-1])
    return any(fnmatch.fnmatch(text, pattern) for text in candidates for pattern in exclude)


def _module_weights(name: str, module: torch.nn.Module) -> list[WeightMatrix] | str:
    """The module's own quantizable matrices, or why its 2-D+ parameters cannot be read as such."""
    if isinstance(module, torch.nn.Linear):
        return [WeightMatrix(name, module)]
    if isinstance(module, Conv1D):
        return [WeightMatrix(name, module, kind="conv1d", transposed=True)]
    if is_fused_experts(module):
        if not hasattr(module, "is_transposed"):
            return f"3-D tensors of {type(module).__name__} without an is_transposed flag: layout unknown"
        return [
            WeightMatrix(f"{name}.{pname}[{expert}]", module, pname, "expert", expert, bool(module.is_transposed))
            for pname, p in module.named_parameters(recurse=False)
            if p.ndim == 3
            for expert in range(p.shape[0])
        ]
    return f"not a Linear, Conv1D or fused expert tensor ({type(module).__name__})"


@dataclass(frozen=True)
class Survey:
    """Every weight of a model sorted: quantizable (selected), excluded, kept by default, or left out."""

    selected: list[WeightMatrix]
    excluded: tuple[str, ...]
    defaults: dict[str, str]
    left_out: dict[str, str]
    left_out_params: int
    nonembedding_params: int


def survey(model: torch.nn.Module, exclude: tuple[str, ...] = DEFAULT_EXCLUDE) -> Survey:
    """Sort every parameter with two or more dimensions (tied weights once) by what quantization does to it."""
    embeddings, routers = embedding_weights(model), _routers(model)
    selected, excluded, defaults, left_out, left_out_params, seen = [], [], {}, {}, 0, set()
    for name, module in model.named_modules():
        weights = {pname: p for pname, p in module.named_parameters(recurse=False) if p.ndim >= 2}
        if is_fused_experts(module):  # per-expert biases [experts, out] are biases, not matrices
            weights = {pname: p for pname, p in weights.items() if p.ndim == 3 or not pname.endswith("bias")}
        weights = {pname: p for pname, p in weights.items() if id(p) not in seen}
        if not weights:
            continue
        seen.update(id(p) for p in weights.values())
        full = {f"{name}.{pname}": p for pname, p in weights.items()}
        roles = {key: embeddings[id(p)] for key, p in full.items() if id(p) in embeddings}
        if id(module) in routers:
            roles = dict.fromkeys(full, ROUTER_REASON)
        if roles:
            defaults.update(roles)
            continue
        found = _module_weights(name, module)
        if isinstance(found, str):
            for key, p in full.items():
                if _excluded(key, exclude) or _excluded(name, exclude):
                    excluded.append(key)
                else:
                    left_out[key], left_out_params = found, left_out_params + p.numel()
            continue
        for weight in found:
            (excluded.append(weight.name) if _excluded(weight.name, exclude) else selected.append(weight))
    nonembedding = sum(p.numel() for p in model.parameters() if id(p) not in embeddings)
    return Survey(selected, tuple(excluded), defaults, left_out, left_out_params, nonembedding)


def quantizable_weights(model: torch.nn.Module, exclude: tuple[str, ...] = DEFAULT_EXCLUDE) -> list[WeightMatrix]:
    """The matrices a quant config with these exclude patterns rounds, in module order."""
    return survey(model, exclude).selected


def register(
    name: str,
    options: type[BaseModel] = NoOptions,
    needs_calibration: bool = False,
    later_options: tuple[str, ...] = (),
    check: Callable[[QuantConfig], None] | None = None,
    reads_file: bool = False,
    rounds_weights: bool = True,
) -> Callable[[Callable[..., QuantReport]], Callable[..., QuantReport]]:
    """Make a method reachable as `quantize(..., QuantConfig(method=name, ...))`, with its options' schema.

    A method is called as `method(model, weights, config, calibration=..., device=..., cache=..., share_with=...)`,
    quantizes every given matrix in place onto `config.format`'s grid and returns a QuantReport with one
    LayerReport per matrix. A method that `reads_file` is called as `method(model, weights, config, stored=...)`
    and writes the weights a quantized file holds (`quant/stored.py`).
    """

    def add(run: Callable[..., QuantReport]) -> Callable[..., QuantReport]:
        METHODS[name] = Method(name, run, options, needs_calibration, later_options, check, reads_file, rounds_weights)
        return run

    return add


def check_selection(model: torch.nn.Module, found: Survey) -> None:
    """A config that selects no weight is an error naming the model class and what was found."""
    if found.selected:
        return
    seen = [f"{len(found.excluded)} excluded by pattern"] if found.excluded else []
    seen += [f"{len(found.defaults)} kept by default ({', '.join(sorted(set(found.defaults.values())))})"]
    seen += [f"{name}: {why}" for name, why in list(found.left_out.items())[:5]]
    raise QuantError(f"{type(model).__name__}: the quant config selects no weight matrix; found {'; '.join(seen)}")


def quantize(
    model: torch.nn.Module,
    config: QuantConfig,
    exclude: tuple[str, ...] = DEFAULT_EXCLUDE,
    calibration: torch.Tensor | None = None,
    device: str | torch.device | None = None,
    cache: dict | None = None,
    share_with: Sequence[QuantConfig] = (),
    stored: object | None = None,
) -> QuantReport:
    """Quantize the model's weights in place with the configured method; the report carries the coverage.

    `device` (calibrated methods: GPTQ, AWQ; not part of the config, so job keys do not depend on it): where each
    transformer block is quantized while the rest of the model stays where it is. `cache` (calibrated methods):
    one dict per checkpoint and calibration set, kept across configs, for what calibration can exactly re-use
    (`quant/blocks.py`); the model's weights must be the pristine ones at each call. `share_with` (GPTQ under
    `sequential: none`, with `cache`): the checkpoint's other configs, solved in the same loops and kept in `cache`
    for their own calls (`quant/gptq.py`). `stored` (a method that reads a file): the file's weights
    (`quant/stored.py`).
    """
    found = survey(model, exclude)
    check_selection(model, found)
    method = METHODS[config.method]
    if method.reads_file != (stored is not None):
        raise QuantError(f"method {config.method} {'needs' if method.reads_file else 'takes no'} stored weights")
    started = time.perf_counter()
    if not method.rounds_weights:
        report = method.run(model, found.selected, config)
        report.coverage = Coverage(0, 0, found.nonembedding_params, defaults=found.defaults)
        return report
    if method.reads_file:
        report = method.run(model, found.selected, config, stored=stored)
    else:
        report = method.run(
            model, found.selected, config, calibration=calibration, device=device, cache=cache, share_with=share_with
        )
    report.seconds = time.perf_counter() - started
    reported = {layer.name for layer in report.layers}
    missing = [weight.name for weight in found.selected if weight.name not in reported]
    if missing:
        raise RuntimeError(f"{config.method} did not quantize {len(missing)} selected weights, e.g. {missing[:3]}")
    report.coverage = Coverage(
        len(found.selected),
        sum(weight.numel for weight in found.selected),
        found.nonembedding_params,
        found.left_out,
        found.left_out_params,
        found.excluded,
        found.defaults,
    )
    return report
