"""What is known about each metric by its name, in one table: which way is better, and how a loss law reads it
(its values turned into nats per token, byte or word). Every module that asks "is higher better?" or "can a
loss law fit this?" reads it here.

A metric produced under lm-eval is named `task/metric[,filter]`; its facts are its bare name's (`metric`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MetricFacts:
    """`nats`: how the values become a loss in nats (`nats` as they are, `log` of a perplexity, `bits` × ln 2)
    and what it is per, for the metrics a loss law fits; None for the others (reported, not fitted)."""

    name: str
    higher_is_better: bool
    nats: tuple[str, str] | None = None


# The loss metrics first, in the order an eval's one fitted loss is chosen (data.py: one per eval and task).
METRICS: dict[str, MetricFacts] = {
    facts.name: facts
    for facts in (
        MetricFacts("loss", higher_is_better=False, nats=("nats", "token")),
        MetricFacts("bits_per_byte", higher_is_better=False, nats=("bits", "byte")),
        MetricFacts("perplexity", higher_is_better=False, nats=("log", "token")),
        MetricFacts("byte_perplexity", higher_is_better=False, nats=("log", "byte")),
        MetricFacts("word_perplexity", higher_is_better=False, nats=("log", "word")),
        MetricFacts("acc", higher_is_better=True),
        MetricFacts("acc_norm", higher_is_better=True),
        MetricFacts("exact_match", higher_is_better=True),
    )
}
LOSS_METRICS = tuple(name for name, facts in METRICS.items() if facts.nats is not None)


def bare_name(metric: str) -> str:
    """A metric's name without lm-eval's `task/` prefix and `,filter` suffix."""
    return metric.split("/")[-1].split(",")[0]


def facts_of(metric: str) -> MetricFacts | None:
    """The table's facts about a metric (by its bare name); None for a metric it does not know."""
    return METRICS.get(bare_name(metric))


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
