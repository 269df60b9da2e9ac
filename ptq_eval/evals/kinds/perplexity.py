"""`kind: perplexity`: validation loss and perplexities over token windows of a corpus split."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
from pydantic import Field, model_validator

from ptq_eval.corpus import STDLIB, load_corpus, token_stream
from ptq_eval.errors import UserError
from ptq_eval.evals.distribution import (
    DISTRIBUTION_METRICS,
    Comparison,
    FullPrecision,
    Reference,
    reference_metrics,
    summary,
    unit_metrics,
)
from ptq_eval.evals.kinds.base import CheckpointView, EvalKind, Scored, Text, register_eval
from ptq_eval.evals.perplexity import WindowLosses, document_metrics, loss_metrics, per_document, window_losses
from ptq_eval.evals.windows import Windows, make_windows, rolling_windows, start_token

SPREAD_METRICS = ("loss", "perplexity")
ROLLING_METRICS = (*SPREAD_METRICS, "word_perplexity", "byte_perplexity", "bits_per_byte")


@register_eval
class PerplexityEval(EvalKind):
    """Validation loss / perplexity over token windows of a corpus split.

    `windows: spread` (default): evenly spaced windows over the joined split, ≈ `tokens`
    predictions. `windows: rolling`: lm-eval's loglikelihood_rolling rule per document (file),
    the first `documents` of them, adding lm-eval's word/byte perplexity and bits per byte;
    `stride` < `seq_len` overlaps the windows. `autocast: bfloat16` trades exactness for speed.
    `bos`: whether a BOS token starts each window (`auto`: as the tokenizer encodes text; see
    `evals/windows.py: start_token`); the token used is recorded with the results. `distribution` (default
    on): also how far each token's next-token distribution moved (`evals/distribution.py`: kld, top1_agree,
    delta_p, rms_delta_p); it is one of a job's inputs, not of its key.
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
    distribution: bool = True

    NOT_IN_KEY: ClassVar[tuple[str, ...]] = ("label", "distribution")
    LATER_OPTIONS: ClassVar[tuple[str, ...]] = ("windows", "stride", "documents", "autocast", "bos")
    INPUTS: ClassVar[dict[str, str]] = {
        "window_start": "window start token (bos rule)",
        "distribution": "distribution metrics (kld, top1_agree, delta_p)",
    }
    RECORDED_BEFORE: ClassVar[dict[str, object]] = {"distribution": False}

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
    def rolling(self) -> bool:
        return self.windows == "rolling"

    @property
    def name(self) -> str:
        return f"ppl:{self.corpus}:{self.split}" + (":rolling" if self.rolling else "")

    @property
    def short_name(self) -> str:
        """`label`, else the name with a corpus path cut to its file or folder name."""
        if self.label:
            return self.label
        corpus = Path(self.corpus).name if "/" in self.corpus or "\\" in self.corpus else self.corpus
        return f"ppl:{corpus}:{self.split}" + (":rolling" if self.rolling else "")

    def scored_text(self) -> Text:
        return Text(self.corpus, self.split)

    def inputs(self, tokenizer) -> dict[str, object]:
        """The token each window starts with (the `bos` rule, resolved for this tokenizer), and whether the
        distribution metrics were computed (with them, losses come from `distribution.chunk_losses` instead of
        the fused cross-entropy: the same to ~1e-7 per token, but never paired across the two)."""
        return {"window_start": start_token(tokenizer, self.bos, self.rolling), "distribution": self.distribution}

    def metrics(self) -> list[str]:
        losses = ROLLING_METRICS if self.rolling else SPREAD_METRICS
        return [*losses, *(DISTRIBUTION_METRICS if self.distribution else ())]

    def windows_for(self, checkpoint: CheckpointView) -> tuple[Windows, dict]:
        """The eval's token windows and what they were cut from; tokenized once per distinct tokenizer."""
        context, name = checkpoint.context, checkpoint.name
        if context is not None and self.seq_len > context:
            raise UserError(
                f"eval {self.name}: seq_len={self.seq_len} exceeds the context of {name} ({context}); "
                f"use seq_len <= {context}"
            )
        start = start_token(checkpoint.tokenizer, self.bos, self.rolling)
        if context is not None and start is not None and not self.rolling and self.seq_len + 1 > context:
            raise UserError(
                f"eval {self.name}: with a BOS token each window reads seq_len + 1 = {self.seq_len + 1} tokens, "
                f"more than the context of {name} ({context}); use seq_len <= {context - 1}"
            )
        key = (checkpoint.tokenizer_key, self, start)
        if key not in checkpoint.cache:
            corpus = load_corpus(self.corpus, self.split)
            if self.rolling:
                texts = list(itertools.islice(corpus.texts(), self.documents))
                windows = rolling_windows(checkpoint.tokenizer, texts, self.seq_len, self.stride, start)
            else:
                windows = make_windows(token_stream(checkpoint.tokenizer, corpus), self.seq_len, self.tokens, start)
            checkpoint.cache[key] = (windows, corpus.describe() | {"start_token": start})
        return checkpoint.cache[key]

    def evaluator(self, checkpoint: CheckpointView) -> PerplexityEvaluator:
        return PerplexityEvaluator(self, *self.windows_for(checkpoint))


class PerplexityEvaluator:
    """Loss and perplexities over token windows (spread or rolling) of a corpus split."""

    def __init__(self, evaluation: PerplexityEval, windows: Windows, corpus_facts: dict):
        self.evaluation, self.windows, self.corpus_facts = evaluation, windows, corpus_facts

    def _units(self, losses: WindowLosses) -> tuple[np.ndarray, np.ndarray]:
        """Each scored token's unit (its window, or for rolling windows its document) and each unit's tokens."""
        if not self.evaluation.rolling:
            return losses.token_windows, losses.counts
        documents = self.windows.documents.numpy()
        return documents[losses.token_windows], per_document(losses.counts, self.windows).astype(np.int64)

    def _scored(self, losses: WindowLosses, reference: FullPrecision | None = None, compared=None) -> Scored:
        metrics = document_metrics(losses, self.windows) if self.evaluation.rolling else loss_metrics(losses)
        arrays = {"window_sums": losses.sums, "window_counts": losses.counts}
        details = {"eval_corpus": self.corpus_facts}
        why_not = (reference or compared or FullPrecision()).why_not  # a comparison carries its reference's
        if why_not is not None:
            details["distribution"] = {"not_computed": why_not}
            not_computed = dict.fromkeys(DISTRIBUTION_METRICS, why_not)
            return Scored(metrics, arrays, details, losses.nonfinite, not_computed=not_computed, reference=reference)
        if reference is not None:
            metrics += reference_metrics(self._units(losses)[1])
        if compared is not None:
            per_token = compared.per_token()
            metrics += unit_metrics(per_token, *self._units(losses))
            details["distribution"] = summary(per_token)
        return Scored(metrics, arrays, details, losses.nonfinite, reference=reference)

    def _losses(self, model, observer=None) -> WindowLosses:
        evaluation = self.evaluation
        return window_losses(model, self.windows, evaluation.batch_size, evaluation.autocast, observer)

    def score(self, model, baseline: Scored | None = None) -> Scored:
        if not self.evaluation.distribution:
            return self._scored(self._losses(model))
        if baseline is None:
            reference = Reference()
            losses = self._losses(model, reference)
            return self._scored(losses, reference=reference.finished())
        compared = Comparison(baseline.reference)
        return self._scored(self._losses(model, compared), compared=compared)

    def restore(self, arrays: dict[str, np.ndarray], model) -> Scored:
        """The stored baseline; with distribution metrics, the full-precision model scored again for them (its
        per-token distributions are not stored: they would take far more room than the results)."""
        counts = arrays["window_counts"].astype(np.int64)
        if not np.array_equal(counts, self.windows.scored.numpy()):
            raise RuntimeError("a stored baseline was scored on other windows than this eval's: cannot pair them")
        stored = WindowLosses(arrays["window_sums"], counts)
        if not self.evaluation.distribution:
            return self._scored(stored)
        reference = Reference()
        rescored = self._losses(model, reference)
        stored = WindowLosses(stored.sums, counts, stored.nonfinite, rescored.token_windows)
        return self._scored(stored, reference=reference.finished())
