"""What a stored result was computed from, so that it is re-used only for the very same inputs.

A job's inputs are the checkpoint's weights (hub commit SHA or the hash of its files), its tokenizer's
definition, the eval's text (the corpus split's hash; an lm-eval task is identified by its config only:
its datasets are lm-eval's), and for GPTQ the calibration text's hash. A stored job (a baseline included)
whose recorded inputs differ from the current ones, or that recorded none, is computed again.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from ptq_eval.checkpoints import load_tokenizer, weights_identity
from ptq_eval.corpus import load_corpus
from ptq_eval.spec import Job, PerplexityEval, Study

WHAT = {
    "weights": "checkpoint weights",
    "tokenizer": "tokenizer",
    "eval_data": "eval text",
    "calibration_data": "calibration text",
}


def tokenizer_identity(tokenizer) -> str:
    """Same string for tokenizers that split text identically (fast tokenizers: their full definition)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    definition = backend.to_str() if backend is not None else tokenizer.name_or_path
    return hashlib.sha256(definition.encode()).hexdigest()


@dataclass(frozen=True)
class CheckpointIdentity:
    weights: str
    tokenizer: str


def checkpoint_identity(reference: str, trust_remote_code: bool = False) -> CheckpointIdentity:
    """The checkpoint's weights identity and its tokenizer's (loads the tokenizer only, never the model)."""
    weights = weights_identity(reference)
    commit = weights.removeprefix("git:") if weights.startswith("git:") else None
    return CheckpointIdentity(weights, tokenizer_identity(load_tokenizer(reference, trust_remote_code, commit)))


def data_identities(study: Study, jobs: list[Job]) -> dict:
    """Each eval's text hash (None for lm-eval tasks), and the calibration text's under "calibration"."""
    data: dict = {
        evaluation: load_corpus(evaluation.corpus, evaluation.split).sha256()
        if isinstance(evaluation, PerplexityEval)
        else None
        for evaluation in dict.fromkeys(job.eval for job in jobs)
    }
    if any(job.quant.needs_calibration for job in jobs):
        data["calibration"] = load_corpus(study.calibration.corpus, study.calibration.split).sha256()
    return data


def job_inputs(job: Job, checkpoint: CheckpointIdentity, data: dict) -> dict:
    inputs = {"weights": checkpoint.weights, "tokenizer": checkpoint.tokenizer, "eval_data": data[job.eval]}
    if job.quant is not None and job.quant.needs_calibration:
        inputs["calibration_data"] = data["calibration"]
    return inputs


def stale_reason(stored: dict | None, wanted: dict) -> str | None:
    """Why a stored job cannot be re-used (None when it can)."""
    if stored is None:
        return "stored without a record of its inputs (an older ptq-eval)"
    changed = [WHAT[key] for key, value in wanted.items() if stored.get(key) != value]
    return f"{', '.join(changed)} changed since it was stored" if changed else None
