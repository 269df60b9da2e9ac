"""Study specs: a YAML file validated with pydantic and expanded into jobs with stable keys.

An error names the file, the key path and what is accepted, e.g.
`study.yaml: quant[1].bits[0]: 1 is not in 2..16`.
"""

from __future__ import annotations

import glob
import hashlib
import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, field_validator, model_validator

from ptq_eval.corpus import STDLIB
from ptq_eval.errors import UserError
from ptq_eval.evals.task_files import is_task_file, task_file_name
from ptq_eval.families import get_family, hub_revisions, ladder_revisions, pick
from ptq_eval.quant import DEFAULT_EXCLUDE, FORMATS, INT, METHODS, QuantConfig, number_format
from ptq_eval.quant.grid import MAX_BITS, MIN_BITS, PER_CHANNEL
from ptq_eval.yaml_files import read_yaml


class StudyError(UserError):
    """The study file is missing, not YAML, or not a valid study."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


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
    """Methods × formats × bits × group sizes × symmetry, scalars or lists; any other key is an option of the
    method (its schema in `quant/`). Bits and group size may be left out where every format fixes them."""

    model_config = ConfigDict(extra="allow", frozen=True)

    method: str
    format: str | list[str] = INT
    bits: int | list[int] | None = None
    group_size: int | list[int] | None = None
    symmetric: bool | list[bool] = True

    @field_validator("method")
    @classmethod
    def _known_method(cls, method: str) -> str:
        if method not in METHODS:
            raise ValueError(f"{method!r} is not a method; accepted: {', '.join(METHODS)}")
        return method

    @field_validator("format")
    @classmethod
    def _known_formats(cls, formats):
        for value in _as_list(formats):
            if value not in FORMATS:
                raise ValueError(f"{value!r} is not a number format; accepted: {', '.join(FORMATS)}")
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

    @model_validator(mode="after")
    def _configs_mean_something(self):
        method = METHODS[self.method]
        for key in self.model_extra or {}:
            if key not in method.options.model_fields:
                options = ", ".join(method.options.model_fields) or "none"
                owners = [m.name for m in METHODS.values() if key in m.options.model_fields]
                if owners:
                    raise ValueError(f"{key} applies to method {' and '.join(owners)} only, not {self.method}")
                raise ValueError(
                    f"{key}: unknown key; a quant grid takes {', '.join(QuantGrid.model_fields)} and the options "
                    f"of method {self.method} ({options})"
                )
        for fmt in _as_list(self.format):
            if self.bits is None and FORMATS[fmt].bits is None:
                raise ValueError(f"format {fmt} needs bits (e.g. bits: 4)")
        try:
            self.configs()
        except UserError as error:
            raise ValueError(str(error)) from None
        return self

    def configs(self) -> list[QuantConfig]:
        options = dict(self.model_extra or {})
        configs = []
        for fmt in _as_list(self.format):
            fixed = FORMATS[fmt]
            bit_widths = _as_list(self.bits) if self.bits is not None else [fixed.bits]
            groups = _as_list(self.group_size) if self.group_size is not None else [fixed.group or PER_CHANNEL]
            for bits, group, symmetric in itertools.product(bit_widths, groups, _as_list(self.symmetric)):
                configs.append(
                    QuantConfig(
                        method=self.method,
                        format=fmt,
                        bits=bits,
                        group_size=group,
                        symmetric=symmetric,
                        options=options,
                    )
                )
        return configs


class Calibration(Strict):
    """Calibration text for methods that need it (never the evaluation split)."""

    corpus: str = STDLIB
    split: str = "train"
    samples: int = Field(default=128, gt=0)
    seq_len: int = Field(default=2048, gt=1)
    seed: int = 0


class PerplexityEval(Strict):
    """Validation loss / perplexity over token windows of a corpus split.

    `windows: spread` (default): evenly spaced windows over the joined split, ≈ `tokens`
    predictions. `windows: rolling`: lm-eval's loglikelihood_rolling rule per document (file),
    the first `documents` of them, adding lm-eval's word/byte perplexity and bits per byte;
    `stride` < `seq_len` overlaps the windows. `autocast: bfloat16` trades exactness for speed.
    `bos`: whether a BOS token starts each window (`auto`: as the tokenizer encodes text; see
    `evals/windows.py: start_token`); the token used is recorded with the results.
    """

    kind: Literal["perplexity"]
    corpus: str = STDLIB
    split: str = "validation"
    tokens: int | None = Field(default=65536, gt=0)
    seq_len: int = Field(default=256, gt=1)
    batch_size: int = Field(default=16, gt=0)
    windows: Literal["spread", "rolling"] = "spread"
    stride: int | None = Field(default=None, gt=0)
    documents: int | None = Field(default=None, gt=0)
    autocast: Literal["bfloat16"] | None = None
    bos: Literal["auto", "always", "never"] = "auto"
    label: str | None = Field(default=None, min_length=1)  # how verdicts and tables name it; not in keys

    # Options added after the first studies: they enter job keys only when set off their
    # defaults, so every earlier study keeps its keys (and its stored results).
    LATER_OPTIONS: ClassVar[tuple[str, ...]] = ("windows", "stride", "documents", "autocast", "bos")

    @model_validator(mode="after")
    def _options_fit_the_windows(self):
        if self.windows == "spread" and (self.stride is not None or self.documents is not None):
            raise ValueError("stride and documents apply to windows: rolling only")
        if self.windows == "rolling" and "tokens" in self.model_fields_set:
            raise ValueError("tokens applies to windows: spread; rolling scores whole documents (limit: documents)")
        if self.stride is not None and self.stride > self.seq_len:
            raise ValueError(f"stride {self.stride} exceeds seq_len {self.seq_len}; use 1..{self.seq_len}")
        return self

    @property
    def name(self) -> str:
        rule = ":rolling" if self.windows == "rolling" else ""
        return f"ppl:{self.corpus}:{self.split}{rule}"

    @property
    def short_name(self) -> str:
        """A stable label for people: `label`, else the name with a corpus path cut to its file or folder name."""
        if self.label:
            return self.label
        corpus = Path(self.corpus).name if "/" in self.corpus or "\\" in self.corpus else self.corpus
        rule = ":rolling" if self.windows == "rolling" else ""
        return f"ppl:{corpus}:{self.split}{rule}"

    def key_config(self) -> dict:
        """The options as they enter the job key."""
        config = self.model_dump(exclude={"label"})
        for option in self.LATER_OPTIONS:
            if config[option] == type(self).model_fields[option].default:
                del config[option]
        return config


class LmEvalEval(Strict):
    """Any lm-eval task on the model in memory: a name lm-eval knows (hub data) or a local task YAML.

    `data_dir` is handed to the task's dataset loader (the shipped YAMLs under tasks/lm_eval
    read their files relative to it); environment variables in it (`${PTQ_EVAL_DATA}`) are expanded when the
    task loads, so a shared study need not name one machine's folder and its job keys do not depend on it.
    `limit`, `num_fewshot`, `batch_size` as in lm-eval. `backend`: the lm-eval model that scores it,
    `ptq_eval` (the packed scorer: lm-eval's HFLM with faster loglikelihood scoring, the same answers up to
    float rounding) or `hflm` (lm-eval's own); it is one of a job's inputs (`identity.py`), not of its key.
    """

    kind: Literal["lm_eval"]
    task: str = Field(min_length=1)
    limit: int | None = Field(default=None, gt=0)
    num_fewshot: int | None = Field(default=None, ge=0)
    batch_size: int = Field(default=16, gt=0)
    data_dir: str | None = None
    backend: Literal["ptq_eval", "hflm"] = "ptq_eval"
    label: str | None = Field(default=None, min_length=1)  # how verdicts and tables name it; not in keys

    @field_validator("task")
    @classmethod
    def _task_file_exists(cls, task: str) -> str:
        if is_task_file(task) and not Path(task).is_file():
            raise ValueError(f"{task!r}: no such task YAML file; give a file path or an lm-eval task name")
        return task

    @property
    def name(self) -> str:
        return task_file_name(self.task) if is_task_file(self.task) else self.task

    @property
    def short_name(self) -> str:
        return self.label or self.name

    def key_config(self) -> dict:
        return self.model_dump(exclude={"backend", "label"})


EvalSpec = Annotated[PerplexityEval | LmEvalEval, Field(discriminator="kind")]


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


class Study(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    ladder: list[LadderItem] = Field(min_length=1)
    quant: list[QuantGrid] = Field(min_length=1)
    evals: list[EvalSpec] = Field(min_length=1)
    calibration: Calibration = Calibration()
    seed: int = 0
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    device: str = "auto"
    # GPTQ block by block on this device while the model stays on `device` (e.g. device: cpu, gptq_device: cuda
    # for a model larger than the GPU); default: `device`. Not part of job keys.
    gptq_device: str | None = None
    exclude: tuple[str, ...] = DEFAULT_EXCLUDE
    allow_pickle: bool = False
    trust_remote_code: bool = False

    @field_validator("device", "gptq_device")
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

        for grid in self.quant:
            for config in grid.configs():
                try:
                    number_format(config.format).check_dtype(config.bits, config.symmetric, getattr(torch, self.dtype))
                except UserError as error:
                    raise ValueError(f"quant: {error}") from None
        return self

    @model_validator(mode="after")
    def _calibration_is_not_evaluation(self):
        for evaluation in self.evals:
            if not isinstance(evaluation, PerplexityEval):
                continue
            if (evaluation.corpus, evaluation.split) == (self.calibration.corpus, self.calibration.split):
                raise ValueError(
                    f"calibration uses {evaluation.corpus!r} split {evaluation.split!r}, which an eval scores; "
                    "calibrate on another split (e.g. train)"
                )
        return self


@dataclass(frozen=True)
class CheckpointSpec:
    reference: str
    tokens: int | None = None


@dataclass(frozen=True)
class Job:
    """One (checkpoint, quant config or full precision, evaluation) unit of work."""

    checkpoint: CheckpointSpec
    quant: QuantConfig | None
    eval: PerplexityEval | LmEvalEval
    dtype: str
    seed: int
    exclude: tuple[str, ...]
    calibration: Calibration | None = None

    def describe(self) -> dict:
        """What the job is, as stored with its results; the key is a hash of this."""
        quant = (
            self.quant.as_dict()
            if self.quant
            else {"method": "none", "bits": None, "group_size": None, "symmetric": None}
        )
        description = {
            "checkpoint": self.checkpoint.reference,
            "tokens_override": self.checkpoint.tokens,
            **quant,
            "eval": self.eval.name,
            "eval_config": self.eval.key_config(),
            "dtype": self.dtype,
            "seed": self.seed,
        }
        if self.quant:
            description["exclude"] = list(self.exclude)
        if self.quant and self.quant.needs_calibration:
            description["calibration"] = self.calibration.model_dump()
        return description

    @property
    def key(self) -> str:
        return hashlib.sha256(json.dumps(self.describe(), sort_keys=True).encode()).hexdigest()[:24]

    def baseline(self) -> Job:
        """The full-precision job this quantized job is paired with."""
        return Job(self.checkpoint, None, self.eval, self.dtype, self.seed, self.exclude)


def _expand_ladder_entry(entry: str | LadderEntry | FamilyLadder) -> list[CheckpointSpec]:
    if isinstance(entry, FamilyLadder):
        return [CheckpointSpec(reference) for reference in entry.references()]
    reference, tokens = (entry, None) if isinstance(entry, str) else (entry.checkpoint, entry.tokens)
    if any(char in reference for char in "*?["):
        matches = sorted(p for p in glob.glob(reference) if (Path(p) / "config.json").is_file())
        if not matches:
            raise StudyError(f"ladder entry {reference!r} matches no checkpoint directory (none with a config.json)")
        return [CheckpointSpec(match, tokens) for match in matches]
    return [CheckpointSpec(reference, tokens)]


def checkpoints(study: Study) -> list[CheckpointSpec]:
    """The study's checkpoints in order, globs and family shorthands expanded."""
    expanded = [spec for entry in study.ladder for spec in _expand_ladder_entry(entry)]
    return list(dict.fromkeys(expanded))


def expand_jobs(study: Study) -> list[Job]:
    """Every quantized job of the study (each implies its full-precision baseline)."""
    configs = list(dict.fromkeys(config for grid in study.quant for config in grid.configs()))
    return [
        Job(checkpoint, config, evaluation, study.dtype, study.seed, study.exclude, study.calibration)
        for checkpoint in checkpoints(study)
        for config in configs
        for evaluation in study.evals
    ]


def _location(loc: tuple) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif part in (
            "ladder-path",
            "ladder-entry",
            "ladder-family",
            "perplexity",
            "lm_eval",
            "list[int]",
            "int",
            "bool",
            "list[bool]",
        ):
            continue  # pydantic's name for a union branch, not a key the user wrote
        else:
            text += f".{part}" if text else str(part)
    return text or "(top level)"


# pydantic's type errors, as what the value should have been
TYPE_WORDS = {
    "int_parsing": "an integer",
    "int_type": "an integer",
    "int_from_float": "a whole number",
    "bool_parsing": "true or false",
    "bool_type": "true or false",
    "float_parsing": "a number",
    "float_type": "a number",
    "string_type": "text",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "tuple_type": "a list",
}
# what a key accepts, added to a type error about it
ACCEPTED = {
    "bits": f"{MIN_BITS}..{MAX_BITS} or a list of them",
    "group_size": "-1 (per channel), 0 (per tensor), a positive integer, or a list of them",
    "symmetric": "true, false, or a list of them",
    "tokens": "a positive integer",
    "samples": "a positive integer",
    "seq_len": "an integer above 1",
}


def _describe(error: dict) -> str:
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        return "unknown key"
    if error["type"] == "missing":
        return "required key is missing"
    return message


def _type_problem(location: str, errors: list[dict]) -> str:
    """One sentence for the type errors a value got from every branch of its union."""
    words = list(dict.fromkeys(TYPE_WORDS[e["type"]] for e in errors))
    key = location.rsplit(".", 1)[-1].split("[")[0]
    if "a list" in words and len(words) > 1:
        words.remove("a list")
        if key not in ACCEPTED:
            words[-1] += " (or a list of them)"
    accepted = f" (accepted: {ACCEPTED[key]})" if key in ACCEPTED else ""
    return f"{errors[0]['input']!r} is not {' or '.join(words)}{accepted}"


def validation_problems(error: ValidationError, source: str) -> str:
    """Every problem of a failed validation, one per line: `source: key.path: message`.

    Type errors are said in words (`quant[0].bits: 'four' is not an integer (or a list of them) (accepted:
    2..16 or a list of them)`); a union's type error at a key is dropped when a deeper key explains it."""
    by_location: dict[str, list[dict]] = {}
    for problem in error.errors():
        by_location.setdefault(_location(problem["loc"]), []).append(problem)
    lines = set()
    for location, problems in by_location.items():
        typed = [p for p in problems if p["type"] in TYPE_WORDS]
        deeper = any(other.startswith((location + ".", location + "[")) for other in by_location if other != location)
        if typed and not deeper:
            lines.add(f"{source}: {location}: {_type_problem(location, typed)}")
        lines.update(f"{source}: {location}: {_describe(p)}" for p in problems if p["type"] not in TYPE_WORDS)
    return "\n".join(sorted(lines))


def validate_document(schema: type[BaseModel], data: object, source: str, error: type[UserError]):
    """A parsed YAML document validated against `schema`; `error` lists every problem with its key path."""
    if data is None:
        raise error(f"{source}: the file is empty; expected a mapping of {', '.join(schema.model_fields)}")
    try:
        return schema.model_validate(data)
    except ValidationError as problem:
        raise error(validation_problems(problem, source)) from None


def parse_study(data: object, source: str = "<study>") -> Study:
    return validate_document(Study, data, source, StudyError)


def load_study(path: str | Path) -> Study:
    return parse_study(read_yaml(Path(path), "study", StudyError), str(path))
