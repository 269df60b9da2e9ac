"""One evaluator per eval kind: what the runner needs to score a model, keep a baseline and pair a run.

Each scores the model in memory into per-unit metrics (`paired.UnitMetric`), names the arrays
a baseline is stored with (so a resumed study pairs without rescoring it), and restores them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ptq_eval.evals.harness import PAIRABLE, LoadedTasks, evaluate_task, load_tasks, restore_scores
from ptq_eval.evals.paired import UnitMetric
from ptq_eval.evals.perplexity import WindowLosses, document_metrics, loss_metrics, window_losses
from ptq_eval.evals.windows import Windows

SPREAD_METRICS = ("loss", "perplexity")
ROLLING_METRICS = (*SPREAD_METRICS, "word_perplexity", "byte_perplexity", "bits_per_byte")


def eval_metrics(evaluation) -> list[str]:
    """The metrics an eval produces, known before any model work: a perplexity eval's from its windows, an
    lm-eval task's (`task/metric`) from its loaded task configs (the metrics that can be paired)."""
    if evaluation.kind == "perplexity":
        return list(ROLLING_METRICS if evaluation.windows == "rolling" else SPREAD_METRICS)
    loaded = load_tasks(evaluation)
    return [
        f"{task}/{metric}"
        for task in loaded.tasks
        for metric, aggregation in loaded.aggregations(task).items()
        if aggregation in PAIRABLE
    ]


def _metric_parts(name: str) -> tuple[str | None, str, str | None]:
    """(task, metric, filter) of `task/metric,filter`; a part not written is None."""
    task, _, rest = name.rpartition("/")
    metric, _, filtered = rest.partition(",")
    return task or None, metric, filtered or None


def metric_matches(stored: str, wanted: str) -> bool:
    """A stored or produced metric (`task/metric[,filter]`; no filter written is lm-eval's `none`) answers a
    wanted one whose every written part (task, metric, filter) it shares: `acc`, `arc_easy/acc`, `acc,none`."""
    have, want = _metric_parts(stored), _metric_parts(wanted)
    have = (have[0], have[1], have[2] or "none")
    return all(w is None or w == h for w, h in zip(want, have, strict=True))


@dataclass(frozen=True)
class Scored:
    """One run of an eval: its metrics, the arrays a baseline is stored with, what was scored."""

    metrics: list[UnitMetric]
    arrays: dict[str, np.ndarray]
    details: dict = field(default_factory=dict)
    nonfinite: int = 0
    nonfinite_metric: str = "nonfinite_tokens"  # the row that counts them, when there are any


class PerplexityEvaluator:
    """Loss and perplexities over token windows (spread or rolling) of a corpus split."""

    def __init__(self, evaluation, windows: Windows, corpus_facts: dict):
        self.evaluation, self.windows, self.corpus_facts = evaluation, windows, corpus_facts

    def _scored(self, losses: WindowLosses) -> Scored:
        rolling = self.windows.documents is not None
        metrics = document_metrics(losses, self.windows) if rolling else loss_metrics(losses)
        arrays = {"window_sums": losses.sums, "window_counts": losses.counts}
        return Scored(metrics, arrays, {"eval_corpus": self.corpus_facts}, losses.nonfinite)

    def score(self, model) -> Scored:
        evaluation = self.evaluation
        return self._scored(window_losses(model, self.windows, evaluation.batch_size, evaluation.autocast))

    def restore(self, arrays: dict[str, np.ndarray]) -> Scored:
        counts = arrays["window_counts"].astype(np.int64)
        if not np.array_equal(counts, self.windows.scored.numpy()):
            raise RuntimeError("a stored baseline was scored on other windows than this eval's: cannot pair them")
        return self._scored(WindowLosses(arrays["window_sums"], counts))


class HarnessEvaluator:
    """An lm-eval task (or group) run through the harness on the model in memory."""

    def __init__(self, evaluation, loaded: LoadedTasks, tokenizer, seed: int):
        self.evaluation, self.loaded, self.tokenizer, self.seed = evaluation, loaded, tokenizer, seed

    def score(self, model) -> Scored:
        scores = evaluate_task(model, self.tokenizer, self.loaded, self.evaluation, self.seed)
        nonfinite = max((int((~np.isfinite(m.values)).sum()) for m in scores.metrics), default=0)
        return Scored(scores.metrics, scores.arrays(), scores.details, nonfinite, "nonfinite_documents")

    def restore(self, arrays: dict[str, np.ndarray]) -> Scored:
        return Scored(restore_scores(self.loaded, arrays).metrics, arrays)
