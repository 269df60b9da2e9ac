"""A ladder's configuration: a YAML file validated like a study (architecture, sizes, tokens-per-parameter
ratios, learning-rate schedule, corpora, tokenizer, seed). Shipped presets are such files under
`tasks/ladders/` (`--preset NAME` reads `NAME.yaml` there); two runs of one config give the same weights."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from ptq_eval.corpus import STDLIB
from ptq_eval.documents import validate_document
from ptq_eval.errors import UserError
from ptq_eval.schema import Strict
from ptq_eval.yaml_files import read_yaml

ARCHITECTURES = ("gpt-neox", "llama")
PRESET_DIR = Path(__file__).resolve().parents[2] / "tasks" / "ladders"


class LadderConfigError(UserError):
    """The ladder config file is missing, not YAML, or not a valid ladder."""


class ModelSize(Strict):
    """Shape of one model of the ladder (`kv_heads` < `heads`: grouped-query attention, Llama only;
    `intermediate` defaults to 4·hidden for GPT-NeoX, about 8/3·hidden rounded up to 8 for Llama's SwiGLU)."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    hidden: int = Field(gt=0)
    layers: int = Field(gt=0)
    heads: int = Field(gt=0)
    kv_heads: int | None = Field(default=None, gt=0)
    intermediate: int | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _heads_divide(self) -> ModelSize:
        if self.hidden % self.heads:
            raise ValueError(f"hidden {self.hidden} is not a multiple of heads {self.heads}")
        if self.kv_heads is not None and self.heads % self.kv_heads:
            raise ValueError(f"heads {self.heads} is not a multiple of kv_heads {self.kv_heads}")
        return self


class WarmupStableDecay(Strict):
    """One constant-rate run per size; at each target D a cooldown branch (linear to zero over the last
    `cooldown_fraction` of its steps) is forked off, so every checkpoint is annealed (decay_done 1).
    `decay_snapshots`: fractions of each cooldown at which its branch is also saved mid-decay (decay_done f)."""

    kind: Literal["wsd"] = "wsd"
    warmup_steps: int = Field(default=25, gt=0)
    cooldown_fraction: float = Field(default=0.2, gt=0, le=1)
    decay_snapshots: list[Annotated[float, Field(gt=0, lt=1)]] = []


class Cosine(Strict):
    """One run per size with cosine decay from `lr` to `final_lr_fraction`·lr over the largest target D;
    the other targets are saved mid-run, mid-decay, as Pythia's revisions are (decay_done < 1)."""

    kind: Literal["cosine"]
    warmup_steps: int = Field(default=25, gt=0)
    final_lr_fraction: float = Field(default=0.1, ge=0, lt=1)


Schedule = Annotated[WarmupStableDecay | Cosine, Field(discriminator="kind")]


class LadderConfig(Strict):
    """Everything that determines a ladder."""

    architecture: Literal["gpt-neox", "llama"] = "gpt-neox"
    sizes: list[ModelSize] = Field(min_length=1)
    tokens_per_param: list[float] = Field(min_length=1)
    schedule: Schedule = WarmupStableDecay()
    vocab_size: int = Field(default=1024, ge=300)
    seq_len: int = Field(default=128, gt=1)
    batch_size: int = Field(default=16, gt=0)
    lr: float = Field(default=2e-3, gt=0)
    weight_decay: float = Field(default=0.1, ge=0)
    seed: int = Field(default=0, ge=0)
    corpus: str = STDLIB  # the tokenizer's training text, and the first part of the training stream
    extra_train_corpora: list[str] = []
    max_train_files: int | None = Field(default=None, gt=0)  # only the first files of `corpus` (tests)
    # A folder with a tokenizer.json, or GPT-2's vocab.json and merges.txt (${VARS} expanded): used as it is
    # instead of training a BPE on `corpus`; the models' vocabulary is then its size.
    tokenizer: str | None = None
    precision: Literal["float32", "bfloat16"] = "float32"  # bfloat16: training under autocast (weights float32)

    @field_validator("tokens_per_param")
    @classmethod
    def _ratios(cls, ratios: list[float]) -> list[float]:
        bad = [r for r in ratios if not r > 0]
        if bad:
            raise ValueError(f"ratios must be > 0, got {bad}")
        if len(set(ratios)) < len(ratios):
            raise ValueError(f"a ratio is given twice in {ratios}")
        return ratios

    @model_validator(mode="after")
    def _sizes(self) -> LadderConfig:
        names = [size.name for size in self.sizes]
        if len(set(names)) < len(names):
            raise ValueError(f"size names must be unique, got {names}")
        if self.architecture != "llama" and any(size.kv_heads is not None for size in self.sizes):
            raise ValueError(f"kv_heads (grouped-query attention) needs architecture llama, not {self.architecture}")
        return self

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len


def parse_ladder_config(data: object, source: str = "<ladder config>") -> LadderConfig:
    return validate_document(LadderConfig, data, source, LadderConfigError)


def load_ladder_config(path: str | Path) -> LadderConfig:
    return parse_ladder_config(read_yaml(Path(path), "ladder config", LadderConfigError), str(path))


def preset_names() -> list[str]:
    return sorted(path.stem for path in PRESET_DIR.glob("*.yaml"))


def preset_path(name: str) -> Path:
    """The shipped preset `tasks/ladders/NAME.yaml`."""
    path = PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        raise UserError(f"unknown ladder preset {name!r}; accepted: {', '.join(preset_names())} (or --config FILE)")
    return path


def preset(name: str) -> LadderConfig:
    return load_ladder_config(preset_path(name))
