"""Answer flips between the full-precision and the quantized run of a multiple-choice task, document by document
("Accuracy is Not All You Need", Dutta et al. 2024), and how far the distribution over a document's choices
moved:

- `flips_to_wrong` / `flips_to_right`: the share of documents answered right in full precision and wrong after
  quantization, and the reverse; `flips` their sum, never below |Δacc| (the accuracy change nets them);
- `all_flips`: the share of documents whose chosen answer (lm-eval's `acc` choice, the highest log-likelihood)
  changed at all, right or wrong;
- `choice_kld`: KL(p_fp ‖ p_q) between the softmaxes of the choices' log-likelihoods, per document (nats).

Each is a mean over documents with documents as the units its CI resamples; the full-precision side is the
model against itself (all zero).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ptq_eval.evals.paired import UnitMetric

FLIP_METRICS = ("flips", "flips_to_wrong", "flips_to_right", "all_flips", "choice_kld")


@dataclass(frozen=True)
class Choices:
    """Each document's choices' log-likelihoods (flattened, `counts` per document), by document id."""

    ids: np.ndarray
    counts: np.ndarray
    loglikelihoods: np.ndarray

    def per_document(self) -> list[np.ndarray]:
        return np.split(self.loglikelihoods, np.cumsum(self.counts)[:-1])

    def arrays(self, task: str) -> dict[str, np.ndarray]:
        return {f"{task}:choice_ids": self.ids, f"{task}:choice_counts": self.counts,
                f"{task}:choice_lls": self.loglikelihoods}  # fmt: skip

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], task: str) -> Choices | None:
        if f"{task}:choice_lls" not in arrays:
            return None
        ids, counts = arrays[f"{task}:choice_ids"], arrays[f"{task}:choice_counts"].astype(np.int64)
        return cls(ids, counts, arrays[f"{task}:choice_lls"])


def _log_softmax(values: np.ndarray) -> np.ndarray:
    shifted = values - values.max()
    return shifted - np.log(np.exp(shifted).sum())


def flip_units(fp_correct: np.ndarray, quant_correct: np.ndarray, fp: Choices, quant: Choices) -> dict[str, np.ndarray]:
    """Per document, each flip metric's value (0/1, or nats for choice_kld)."""
    if not (np.array_equal(fp.ids, quant.ids) and np.array_equal(fp.counts, quant.counts)):
        raise ValueError("runs are not paired: the two runs' documents or their numbers of choices differ")
    to_wrong = fp_correct * (1 - quant_correct)
    to_right = (1 - fp_correct) * quant_correct
    changed, kld = [], []
    for p, q in zip(fp.per_document(), quant.per_document(), strict=True):
        changed.append(float(np.argmax(p) != np.argmax(q)))
        log_p, log_q = _log_softmax(p), _log_softmax(q)
        weight = np.exp(log_p)  # a choice with p = 0 (log-likelihood −inf) adds nothing, never 0·(−inf − −inf)
        kld.append(float(np.sum(np.where(weight > 0, weight * (log_p - log_q), 0.0))))
    return {"flips": to_wrong + to_right, "flips_to_wrong": to_wrong, "flips_to_right": to_right,
            "all_flips": np.array(changed), "choice_kld": np.array(kld)}  # fmt: skip


def flip_metrics(names: dict[str, str], ids: np.ndarray, units: dict[str, np.ndarray] | None) -> list[UnitMetric]:
    """The flip metrics as paired units, named by `names` (metric -> row name); the full-precision side (all
    zero) when `units` is None."""
    ones = np.ones(len(ids))
    return [
        UnitMetric(names[m], np.zeros(len(ids)) if units is None else units[m], ones, None, len(ids), ids)
        for m in FLIP_METRICS
    ]
