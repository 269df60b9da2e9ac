"""What every eval kind declares, and the registry of them.

An eval kind is a pydantic model of its options (the `evals:` entry of a study) that also says, by methods
every kind must define (abstract: a kind that leaves one out cannot be built):
- `scored_text`: the corpus split whose documents it scores, or None when its data is identified by its
  options alone (lm-eval datasets). The runner hashes that text into every job's inputs (a changed text makes
  stored results stale) and refuses calibration text that shares a document with it;
- `inputs`: what else a stored result depends on besides weights, tokenizer and text (and `INPUTS` says each
  in words for the stale message);
- `metrics`: the metrics it produces, known before any model loads (their facts: `evals/metrics.py`);
- `evaluator`: what scores a model into per-unit metrics (`paired.UnitMetric`) and restores a stored baseline.
What enters its job key is its options, less `NOT_IN_KEY`, and less each of `LATER_OPTIONS` (options added
after the first studies) while it holds its default, so earlier stores keep their keys.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar, NamedTuple, Protocol, get_args

import numpy as np
from pydantic import Field

from ptq_eval.evals.paired import UnitMetric
from ptq_eval.schema import Strict


class Text(NamedTuple):
    """A corpus split (`corpus.load_corpus` reads it)."""

    corpus: str
    split: str


@dataclass(frozen=True)
class Scored:
    """One run of an eval: its metrics, the arrays a baseline is stored with, what was scored."""

    metrics: list[UnitMetric]
    arrays: dict[str, np.ndarray]
    details: dict = field(default_factory=dict)
    nonfinite: int = 0
    nonfinite_metric: str = "nonfinite_tokens"  # the row that counts them, when there are any
    not_computed: dict[str, str] = field(default_factory=dict)  # metrics this run could not compute, and why
    reference: object = None  # a baseline's in-memory facts its quantized runs are compared with (never stored)


class Evaluator(Protocol):
    def score(self, model, baseline: Scored | None = None) -> Scored:
        """Score the model as it is in memory: full precision (no baseline), or quantized against `baseline`."""

    def restore(self, arrays: dict[str, np.ndarray], model) -> Scored:
        """A baseline from the arrays its `score` stored (refused if they were scored on other units); `model`
        is the full-precision model, for what a baseline keeps in memory only."""


@dataclass(frozen=True)
class CheckpointView:
    """What an eval kind may read of the loaded checkpoint to build its evaluator."""

    name: str
    tokenizer: object
    tokenizer_key: str  # identity.tokenizer_identity: equal for tokenizers that split text the same way
    context: int | None  # the model's maximum positions, where its config says
    seed: int
    cache: dict  # shared by every checkpoint of a run: tokenized windows, loaded tasks (keys must not collide)


class EvalKind(Strict, ABC):
    """The options of one eval of a study, and what its kind does with them."""

    kind: str
    label: str | None = Field(default=None, min_length=1)  # how verdicts and tables name it; not in keys

    NOT_IN_KEY: ClassVar[tuple[str, ...]] = ("label",)
    LATER_OPTIONS: ClassVar[tuple[str, ...]] = ()
    INPUTS: ClassVar[dict[str, str]] = {}  # what `inputs` returns, each in words
    RECORDED_BEFORE: ClassVar[dict[str, object]] = {}  # inputs recorded only since a later version: their value before

    @property
    @abstractmethod
    def name(self) -> str:
        """How stores, results and fits name the eval (part of its job key)."""

    @property
    def short_name(self) -> str:
        """A stable label for people: `label`, else the name."""
        return self.label or self.name

    def key_config(self) -> dict:
        """The options as they enter the job key."""
        config = self.model_dump(exclude=set(self.NOT_IN_KEY))
        for option in self.LATER_OPTIONS:
            if config[option] == type(self).model_fields[option].default:
                del config[option]
        return config

    @abstractmethod
    def scored_text(self) -> Text | None:
        """The corpus split it scores (hashed into job inputs; calibration must not share its documents), or
        None when its data is identified by its options alone."""

    @abstractmethod
    def inputs(self, tokenizer) -> dict[str, object]:
        """What else a stored result was computed from (keys of `INPUTS`), given the checkpoint's tokenizer."""

    @abstractmethod
    def metrics(self) -> list[str]:
        """The metrics it produces, known before any model work."""

    def prepare(self) -> object:
        """Work done once per run before any model loads (a bad eval fails fast); what `evaluator` re-uses."""
        return None

    def prepared(self, cache: dict) -> object:
        """What `prepare` made, made once per cache."""
        if self not in cache:
            cache[self] = self.prepare()
        return cache[self]

    @abstractmethod
    def evaluator(self, checkpoint: CheckpointView) -> Evaluator:
        """What scores this checkpoint's model (as it is in memory) on this eval."""


EVAL_KINDS: dict[str, type[EvalKind]] = {}


def register_eval(kind: type[EvalKind]) -> type[EvalKind]:
    """Add an eval kind to the registry, under the one value its `kind` field accepts."""
    (name,) = get_args(kind.model_fields["kind"].annotation)
    if name in EVAL_KINDS:
        raise ValueError(f"eval kind {name!r} is registered twice")
    EVAL_KINDS[name] = kind
    return kind
