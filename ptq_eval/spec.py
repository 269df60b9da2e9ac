"""Study specs: the schema of a study YAML (validated with pydantic before any work). `jobs.py` expands a study
into jobs with stable keys; `documents.py` says what is wrong with a document that does not validate, e.g.
`study.yaml: quant[1].bits[0]: 1 is not in 2..16`.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Annotated, Literal, Union

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    Tag,
    field_validator,
    model_validator,
)

from ptq_eval.artifacts import Artifact, describe
from ptq_eval.corpus import STDLIB
from ptq_eval.documents import validate_document
from ptq_eval.errors import UserError
from ptq_eval.evals.kinds import EVAL_KINDS
from ptq_eval.families import get_family, hub_revisions, ladder_revisions, pick
from ptq_eval.quant import DEFAULT_EXCLUDE, FORMATS, INT, KEEP, METHODS, QuantConfig, number_format
from ptq_eval.quant.grid import MAX_BITS, MIN_BITS, PER_CHANNEL
from ptq_eval.quant.precision import ACTIVATIONS, KV_CACHE, SCHEMES, precisions
from ptq_eval.quant.stored import ARTIFACT
from ptq_eval.schema import Strict
from ptq_eval.yaml_files import read_yaml


class StudyError(UserError):
    """The study file is missing, not YAML, or not a valid study."""


class LadderEntry(Strict):
    """A checkpoint with facts the loader cannot find by itself (e.g. tokens seen)."""

    checkpoint: str
    tokens: int | None = Field(default=None, gt=0)


class FamilyLadder(Strict):
    """Revisions of a released ladder family (tasks/families/): given as `steps` (step-named revisions, e.g.
    Pythia), as `revisions`, or discovered from the hub's refs (the local cache's when offline): every revision
    whose D the family knows, within `tokens: [low, high]`, thinned to `count` log-spaced in D or `every` k-th."""

    family: str
    sizes: list[str] = Field(min_length=1)
    steps: list[int] | None = Field(default=None, min_length=1)
    revisions: list[str] | None = Field(default=None, min_length=1)
    tokens: tuple[float, float] | None = None
    count: int | None = Field(default=None, gt=0)
    every: int | None = Field(default=None, gt=0)
    deduped: bool = False  # Pythia only: the family pythia-deduped

    @field_validator("family")
    @classmethod
    def _known_family(cls, family: str) -> str:
        get_family(family)
        return family

    @model_validator(mode="after")
    def _one_way_to_pick(self):
        ways = [name for name in ("steps", "revisions") if getattr(self, name) is not None]
        if self.tokens is not None or self.count is not None or self.every is not None:
            ways.append("tokens/count/every")
        if len(ways) != 1:
            raise ValueError(f"give exactly one of steps, revisions, or tokens/count/every (discovery), not {ways}")
        if self.count is not None and self.every is not None:
            raise ValueError("count and every both thin the discovered revisions; give one")
        if self.deduped and self.family != "pythia":
            raise ValueError("deduped applies to family pythia only (it means family pythia-deduped)")
        family = get_family(self.family_name)
        for size in self.sizes:
            family.repo_of(size)
        return self

    @property
    def family_name(self) -> str:
        return "pythia-deduped" if self.deduped else self.family

    def references(self) -> list[str]:
        family = get_family(self.family_name)
        references = []
        for size in self.sizes:
            repo = family.repo_of(size)
            if self.steps is not None:
                names = [f"step{step}" for step in self.steps]
            elif self.revisions is not None:
                names = self.revisions
            else:
                low, high = self.tokens or (0, float("inf"))
                found = ladder_revisions(repo, hub_revisions(repo))
                names = [revision.name for revision in pick(found, low, high, self.count, self.every)]
            references += [f"{repo}@{name}" for name in names]
        return references


def _as_list(value):
    return value if isinstance(value, list) else [value]


class QuantGrid(BaseModel):
    """Methods × formats × bits × group sizes × symmetry × activation precisions × KV-cache precisions, scalars or
    lists; any other key is an option of the method (its schema in `quant/`). Bits and group size may be left
    out where every format fixes them. `scheme` (W8A8, W4A8, FP8_DYNAMIC, NVFP4) gives the weights' grid and the
    activations' precision as llm-compressor's presets do. Without a method, `activations` or `kv_cache` alone
    keep the weights as they are (method fp)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    method: str | None = None
    format: str | list[str] = INT
    bits: int | list[int] | None = None
    group_size: int | list[int] | None = None
    symmetric: bool | list[bool] = True
    scheme: str | None = None
    activations: object = None  # a preset, a mapping or a list of them (`quant/precision.py` reads and words them)
    kv_cache: object = None

    @field_validator("method")
    @classmethod
    def _known_method(cls, method: str | None) -> str | None:
        simulated = [name for name, m in METHODS.items() if not m.reads_file]
        if method in METHODS and METHODS[method].reads_file:
            raise ValueError(f"method {method} reads a quantized file: write {{artifact: PATH}} instead of a grid")
        if method is not None and method not in METHODS:
            raise ValueError(f"{method!r} is not a method; accepted: {', '.join(simulated)} (or artifact: PATH)")
        return method

    @field_validator("scheme")
    @classmethod
    def _known_scheme(cls, scheme: str | None) -> str | None:
        if scheme is not None and scheme not in SCHEMES:
            raise ValueError(f"{scheme!r} is not a scheme; accepted: {', '.join(SCHEMES)}")
        return scheme

    @field_validator("format")
    @classmethod
    def _known_formats(cls, formats):
        simulated = [name for name, fmt in FORMATS.items() if not fmt.read_only]
        for value in _as_list(formats):
            if value in FORMATS and FORMATS[value].read_only:
                raise ValueError(
                    f"format {value} is read from files only (artifact: PATH); simulated: {', '.join(simulated)}"
                )
            if value not in FORMATS:
                raise ValueError(f"{value!r} is not a number format; accepted: {', '.join(simulated)}")
        return formats

    @field_validator("bits")
    @classmethod
    def _bits_in_range(cls, bits):
        for value in _as_list(bits) if bits is not None else []:
            if not MIN_BITS <= value <= MAX_BITS:
                raise ValueError(f"{value} is not in {MIN_BITS}..{MAX_BITS}")
        return bits

    @field_validator("group_size")
    @classmethod
    def _group_size_valid(cls, group_size):
        for value in _as_list(group_size) if group_size is not None else []:
            if value < -1:
                raise ValueError(
                    f"{value} is not accepted; use -1 (per channel), 0 (per tensor) or a positive group size"
                )
        return group_size

    @property
    def method_name(self) -> str:
        """The method, `fp` (weights as they are) where only activations or the KV cache are given."""
        return self.method or KEEP

    def _weights(self) -> set[str]:
        """The weight grid's fields the document gives."""
        return {"format", "bits", "group_size", "symmetric"} & self.model_fields_set

    @model_validator(mode="after")
    def _configs_mean_something(self):
        if self.method is None and self.activations is None and self.kv_cache is None:
            raise ValueError(
                "give a method (e.g. method: rtn), or activations or kv_cache alone to keep the weights as they are"
                + (f" (scheme {self.scheme} sets the grid a method rounds the weights onto)" if self.scheme else "")
            )
        if self.method_name == KEEP and (self._weights() or self.scheme):
            given = ", ".join(sorted(self._weights() | ({"scheme"} if self.scheme else set())))
            raise ValueError(f"{given}: the weights stay as they are (method fp); give a method to round them")
        if self.scheme is not None and (self._weights() - {"symmetric"} or self.activations is not None):
            given = ", ".join(
                sorted((self._weights() - {"symmetric"}) | ({ACTIVATIONS} if self.activations else set()))
            )
            raise ValueError(f"scheme {self.scheme} fixes the weights' grid and the activations; {given} means nothing")
        method = METHODS[self.method_name]
        for key in self.model_extra or {}:
            if key not in method.options.model_fields:
                options = ", ".join(method.options.model_fields) or "none"
                owners = [m.name for m in METHODS.values() if key in m.options.model_fields]
                if owners:
                    raise ValueError(f"{key} applies to method {' and '.join(owners)} only, not {self.method_name}")
                raise ValueError(
                    f"{key}: unknown key; a quant grid takes {', '.join(QuantGrid.model_fields)} and the options "
                    f"of method {self.method_name} ({options})"
                )
        for fmt in _as_list(self.format):
            if self.bits is None and FORMATS[fmt].bits is None and self.scheme is None and method.rounds_weights:
                raise ValueError(f"format {fmt} needs bits (e.g. bits: 4)")
        try:
            self.configs()
        except UserError as error:
            raise ValueError(str(error)) from None
        return self

    def _weight_grids(self) -> list[tuple[str, int, int, bool]]:
        """(format, bits, group size, symmetric) of each weight grid."""
        if self.scheme is not None:
            fixed = SCHEMES[self.scheme][0]
            fmt = FORMATS[fixed["format"]]
            bits, group = fixed.get("bits", fmt.bits), fixed.get("group_size", fmt.group or PER_CHANNEL)
            return [(fmt.name, bits, group, symmetric) for symmetric in _as_list(self.symmetric)]
        grids = []
        for fmt in _as_list(self.format):
            fixed = FORMATS[fmt]
            bit_widths = _as_list(self.bits) if self.bits is not None else [fixed.bits]
            groups = _as_list(self.group_size) if self.group_size is not None else [fixed.group or PER_CHANNEL]
            grids += [(fmt, *point) for point in itertools.product(bit_widths, groups, _as_list(self.symmetric))]
        return grids

    def configs(self) -> list[QuantConfig]:
        options = dict(self.model_extra or {})
        written = SCHEMES[self.scheme][1] if self.scheme is not None else self.activations
        activations = precisions(ACTIVATIONS, written) if written is not None else [None]
        kv_caches = precisions(KV_CACHE, self.kv_cache) if self.kv_cache is not None else [None]
        if not METHODS[self.method_name].rounds_weights:  # the weights' fields hold what it rounds instead
            return [
                QuantConfig(
                    method=self.method_name,
                    bits=(activation or kv_cache).bits,
                    activations=activation,
                    kv_cache=kv_cache,
                )  # fmt: skip
                for activation in activations
                for kv_cache in kv_caches
            ]
        return [
            QuantConfig(
                method=self.method_name,
                format=fmt,
                bits=bits,
                group_size=group,
                symmetric=symmetric,
                options=options,
                activations=activation,
                kv_cache=kv_cache,
            )  # fmt: skip
            for fmt, bits, group, symmetric in self._weight_grids()
            for activation in activations
            for kv_cache in kv_caches
        ]


class ArtifactEntry(Strict):
    """A quantized file as the quantized side of a pair: one path (a ladder of one checkpoint, its base), or a
    mapping base checkpoint → path (a ladder of files, e.g. one GGUF per D/N). What each file is (type, bits,
    group size, bits per weight) is read from it once, now, before any work."""

    artifact: str | dict[str, str]
    _described: dict[str, Artifact] = PrivateAttr(default_factory=dict)  # file → what it says of itself

    @model_validator(mode="after")
    def _readable(self):
        for path in self.files():
            try:
                self._described[path] = describe(path)
            except UserError as error:
                raise ValueError(str(error)) from None
        return self

    def files(self) -> list[str]:
        return list(self.artifact.values()) if isinstance(self.artifact, dict) else [self.artifact]

    def configs(self) -> list[QuantConfig]:
        """The configs its files stand for (a release policy's configs, as a grid's)."""
        return list(dict.fromkeys(artifact_config(self._described[path]) for path in self.files()))

    def pairs(self, checkpoints: list[str]) -> list[tuple[str, Artifact]]:
        """(base checkpoint, artifact) for each file; a file's base must be a checkpoint of the ladder."""
        if isinstance(self.artifact, str):
            if len(checkpoints) != 1:
                raise ValueError(
                    f"artifact {self.artifact} is one file but the ladder has {len(checkpoints)} checkpoints: give a "
                    "mapping, base checkpoint: file"
                )
            return [(checkpoints[0], self._described[self.artifact])]
        for base in self.artifact:
            if base not in checkpoints:
                raise ValueError(
                    f"artifact base {base!r} is not a checkpoint of the ladder; it has: {', '.join(checkpoints)}"
                )
        return [(base, self._described[path]) for base, path in self.artifact.items()]


def artifact_config(artifact: Artifact) -> QuantConfig:
    """The config a file stands for, as its metadata describes it."""
    return QuantConfig(
        method=ARTIFACT, bits=artifact.bits, format=artifact.format, group_size=artifact.group_size,
        symmetric=artifact.symmetric,
        options={"artifact_type": artifact.artifact_type, "quantized_as": artifact.quantized_as},
        activations=artifact.activations,
    )  # fmt: skip


def _quant_kind(entry: object) -> str:
    written = isinstance(entry, dict) and "artifact" in entry
    return "artifact" if written or isinstance(entry, ArtifactEntry) else "grid"


QuantItem = Annotated[
    Annotated[QuantGrid, Tag("grid")] | Annotated[ArtifactEntry, Tag("artifact")], Discriminator(_quant_kind)
]


class Calibration(Strict):
    """Calibration text for methods that need it (never the evaluation split)."""

    corpus: str = STDLIB
    split: str = "train"
    samples: int = Field(default=128, gt=0)
    seq_len: int = Field(default=2048, gt=1)
    seed: int = 0


# every registered eval kind (evals/kinds/), told apart by its `kind`
EvalSpec = Annotated[Union[tuple(EVAL_KINDS.values())], Field(discriminator="kind")]  # noqa: UP007


def _ladder_kind(entry: object) -> str:
    if isinstance(entry, str):
        return "ladder-path"
    return "ladder-family" if isinstance(entry, dict) and "family" in entry else "ladder-entry"


LadderItem = Annotated[
    Annotated[str, Tag("ladder-path")]
    | Annotated[LadderEntry, Tag("ladder-entry")]
    | Annotated[FamilyLadder, Tag("ladder-family")],
    Discriminator(_ladder_kind),
]
# the names pydantic gives the branches of a study's unions in an error's key path (not keys the user wrote)
BRANCHES = ("ladder-path", "ladder-entry", "ladder-family", "grid", "artifact", *EVAL_KINDS)


class Study(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    ladder: list[LadderItem] = Field(min_length=1)
    quant: list[QuantItem] = Field(min_length=1)
    evals: list[EvalSpec] = Field(min_length=1)
    calibration: Calibration = Calibration()
    seed: int = 0
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    device: str = "auto"
    # Calibrated methods (GPTQ, AWQ) quantize block by block on this device while the model stays on `device`
    # (e.g. device: cpu, quant_device: cuda for a model larger than the GPU); default: `device`. Not part of job
    # keys. `gptq_device`, its name before AWQ, is still read.
    quant_device: str | None = Field(default=None, validation_alias=AliasChoices("quant_device", "gptq_device"))
    exclude: tuple[str, ...] = DEFAULT_EXCLUDE
    allow_pickle: bool = False
    trust_remote_code: bool = False

    @field_validator("device", "quant_device")
    @classmethod
    def _device_torch_knows(cls, device: str | None) -> str | None:
        if device not in (None, "auto"):
            import torch

            try:
                torch.device(device)
            except RuntimeError:
                raise ValueError(
                    f"{device!r} is not a device torch knows; accepted: auto, cpu, cuda, cuda:N, mps"
                ) from None
        return device

    @model_validator(mode="after")
    def _bits_fit_the_dtype(self):
        import torch

        for grid in self.grids():
            for config in grid.configs():
                try:
                    dtype = getattr(torch, self.dtype)
                    if config.rounds_weights:
                        number_format(config.format).check_dtype(config.bits, config.symmetric, dtype)
                    for precision in (config.activations, config.kv_cache):
                        if precision is not None:
                            precision.check_dtype(dtype)
                except UserError as error:
                    raise ValueError(f"quant: {error}") from None
        return self

    def grids(self) -> list[QuantGrid]:
        return [entry for entry in self.quant if isinstance(entry, QuantGrid)]

    def artifacts(self) -> list[ArtifactEntry]:
        return [entry for entry in self.quant if isinstance(entry, ArtifactEntry)]

    @model_validator(mode="after")
    def _artifacts_have_float32_bases(self):
        if self.artifacts() and self.dtype != "float32":
            raise ValueError(
                f"dtype {self.dtype}: an artifact's de-quantized weights are exact in float32 only; use dtype float32"
            )
        return self

    @model_validator(mode="after")
    def _calibration_is_not_evaluation(self):
        calibration = (self.calibration.corpus, self.calibration.split)
        for evaluation in self.evals:
            if evaluation.scored_text() == calibration:
                raise ValueError(
                    f"calibration uses {calibration[0]!r} split {calibration[1]!r}, which an eval scores; "
                    "calibrate on another split (e.g. train)"
                )
        return self


def parse_study(data: object, source: str = "<study>") -> Study:
    return validate_document(Study, data, source, StudyError, BRANCHES)


def load_study(path: str | Path) -> Study:
    return parse_study(read_yaml(Path(path), "study", StudyError), str(path))
