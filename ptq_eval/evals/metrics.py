"""What is known about each metric by its name, in one table: which way is better, and how a scaling law reads
it. Every module that asks "is higher better?" or "can a law fit this?" reads it here.

A law fits a metric's δ on the scale `fitted` names: the loss family's (one summed loss over an eval's text:
loss, bits per byte, the perplexities) in nats per token, byte or word, and of those only one per eval. KLD
and flips have no full-precision term (the full-precision model against itself moves nothing): their δ is
their value, and a law reads it as it reads a loss δ (δ = C·D^γ_D/N^γ_N·e^(−P/γ_post)), in nats per token
(kld) or as a fraction of documents (flips); no base law is fitted to them.

A metric produced under lm-eval is named `task/metric[,filter]`; its facts are its bare name's (`metric`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MetricFacts:
    """`fitted`: how a law reads the values (`nats` as they are, `log` of a perplexity, `bits` × ln 2, `fraction`
    as they are) and what they are per; None: reported, not fitted. `family`: metrics that are views of one
    quantity (one of them is fitted per eval). `full_precision`: the metric has a full-precision value of its
    own (a base law can be fitted to it, a relative budget divides by it); KLD, Δp and flips do not: the
    full-precision model against itself scores 0."""

    name: str
    higher_is_better: bool
    fitted: tuple[str, str] | None = None
    family: str | None = None
    full_precision: bool = True


# Within a family, in the order its one fitted metric is chosen (data.py: one per eval, task and family).
METRICS: dict[str, MetricFacts] = {
    facts.name: facts
    for facts in (
        MetricFacts("loss", higher_is_better=False, fitted=("nats", "token"), family="loss"),
        MetricFacts("bits_per_byte", higher_is_better=False, fitted=("bits", "byte"), family="loss"),
        MetricFacts("perplexity", higher_is_better=False, fitted=("log", "token"), family="loss"),
        MetricFacts("byte_perplexity", higher_is_better=False, fitted=("log", "byte"), family="loss"),
        MetricFacts("word_perplexity", higher_is_better=False, fitted=("log", "word"), family="loss"),
        MetricFacts("kld", higher_is_better=False, fitted=("nats", "token"), family="kld", full_precision=False),
        MetricFacts("top1_agree", higher_is_better=True),
        MetricFacts("delta_p", higher_is_better=True, full_precision=False),  # the target's p falling is damage
        MetricFacts("rms_delta_p", higher_is_better=False, full_precision=False),
        MetricFacts("acc", higher_is_better=True),
        MetricFacts("acc_norm", higher_is_better=True),
        MetricFacts("exact_match", higher_is_better=True),
        MetricFacts(
            "flips", higher_is_better=False, fitted=("fraction", "document"), family="flips", full_precision=False
        ),  # fmt: skip
        MetricFacts("flips_to_wrong", higher_is_better=False, full_precision=False),
        MetricFacts("flips_to_right", higher_is_better=True, full_precision=False),
        MetricFacts("all_flips", higher_is_better=False, full_precision=False),
        MetricFacts(
            "choice_kld", higher_is_better=False, fitted=("nats", "document"), family="choice_kld", full_precision=False
        ),  # fmt: skip
    )
}
FITTED_METRICS = tuple(name for name, facts in METRICS.items() if facts.fitted is not None)


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
