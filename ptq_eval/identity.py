"""What a stored result was computed from, so that it is re-used only for the very same inputs.

A job's inputs are the checkpoint's weights (hub commit SHA or the hash of its files), its tokenizer's
definition, the eval's text (the hash of the corpus split its kind scores; an lm-eval task is identified by
its config only: its datasets are lm-eval's), what else its kind says it depends on (the window start token,
the lm-eval backend), for calibrated methods the calibration text's hash, and for a quantized file (artifact) the
hash of its files. A stored job (a baseline
included) whose recorded inputs differ from the current ones, or that recorded none, is computed again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field

from ptq_eval.artifacts import artifact_digest
from ptq_eval.checkpoints import load_tokenizer, weights_identity, weights_stamp
from ptq_eval.corpus import Corpus, load_corpus
from ptq_eval.evals.kinds import EVAL_KINDS
from ptq_eval.jobs import Job
from ptq_eval.spec import Study

# every input in words (an eval kind adds its own); inputs recorded only since a later version, and their value
# before (a stored job without one was computed with it)
JOB_INPUTS = {
    "weights": "checkpoint weights",
    "tokenizer": "tokenizer",
    "eval_data": "eval text",
    "calibration_data": "calibration text",
    "artifact": "artifact file",
}
_DECLARED = [name for kind in EVAL_KINDS.values() for name in kind.INPUTS]
if len(set(_DECLARED)) != len(_DECLARED) or set(_DECLARED) & set(JOB_INPUTS):
    raise RuntimeError(f"an input is named twice (by two eval kinds, or a kind and the job): {_DECLARED}")
WHAT = JOB_INPUTS | {name: words for kind in EVAL_KINDS.values() for name, words in kind.INPUTS.items()}
RECORDED_BEFORE = {name: value for kind in EVAL_KINDS.values() for name, value in kind.RECORDED_BEFORE.items()}


def tokenizer_identity(tokenizer) -> str:
    """Same string for tokenizers that split text identically and use the same special tokens (fast
    tokenizers: their full definition; others: their class and vocabulary), and add the same ones to text."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    definition = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    specials = [type(tokenizer).__name__, tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer("a")["input_ids"]]
    return hashlib.sha256((definition + json.dumps(specials)).encode()).hexdigest()


@dataclass(frozen=True)
class CheckpointIdentity:
    weights: str
    tokenizer: str
    tokenizer_object: object = field(compare=False, repr=False, default=None)
    stamp: tuple | None = field(compare=False, repr=False, default=None)  # local files as hashed (weights_stamp)


def checkpoint_identity(reference: str, trust_remote_code: bool = False) -> CheckpointIdentity:
    """The checkpoint's weights identity and its tokenizer's (loads the tokenizer only, never the model)."""
    stamp = weights_stamp(reference)
    weights = weights_identity(reference)
    commit = weights.removeprefix("git:") if weights.startswith("git:") else None
    tokenizer = load_tokenizer(reference, trust_remote_code, commit)
    return CheckpointIdentity(weights, tokenizer_identity(tokenizer), tokenizer, stamp)


def data_identities(study: Study, jobs: list[Job], corpus: Callable[[str, str], Corpus] = load_corpus) -> dict:
    """Each eval's text hash (None for a kind whose data its options identify, as lm-eval tasks'), the
    calibration text's under "calibration", and each artifact's files' hash under the artifact."""
    data: dict = {}
    for evaluation in dict.fromkeys(job.eval for job in jobs):
        text = evaluation.scored_text()
        data[evaluation] = None if text is None else corpus(*text).sha256()
    if any(job.quant.needs_calibration for job in jobs):
        data["calibration"] = corpus(study.calibration.corpus, study.calibration.split).sha256()
    for artifact in dict.fromkeys(job.artifact for job in jobs if job.artifact is not None):
        data[artifact] = artifact_digest(artifact)
    return data


def job_inputs(job: Job, checkpoint: CheckpointIdentity, data: dict) -> dict:
    inputs = {"weights": checkpoint.weights, "tokenizer": checkpoint.tokenizer, "eval_data": data[job.eval]}
    inputs |= job.eval.inputs(checkpoint.tokenizer_object)
    if job.quant is not None and job.quant.needs_calibration:
        inputs["calibration_data"] = data["calibration"]
    if job.artifact is not None:
        inputs["artifact"] = data[job.artifact]
    return inputs


def stale_reason(stored: dict | None, wanted: dict) -> str | None:
    """Why a stored job cannot be re-used (None when it can)."""
    if stored is None:
        return "stored without a record of its inputs (an older ptq-eval)"
    changed = [WHAT[key] for key, value in wanted.items() if stored.get(key, RECORDED_BEFORE.get(key)) != value]
    return f"{', '.join(changed)} changed since it was stored" if changed else None
