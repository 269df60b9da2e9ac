"""Run a study: each checkpoint loaded once, its baseline scored once, pristine weights
restored between quant configs, every finished job committed to the store at once."""

from __future__ import annotations

import functools
import itertools
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
import transformers

from ptq_eval import __version__
from ptq_eval.checkpoints import (
    CheckpointError,
    LoadedCheckpoint,
    checkpoint_tokens,
    load_checkpoint,
    weights_stamp,
)
from ptq_eval.corpus import Corpus, load_corpus, shared_documents, token_stream
from ptq_eval.errors import UserError
from ptq_eval.evaluate.evaluators import HarnessEvaluator, PerplexityEvaluator, Scored
from ptq_eval.evaluate.harness import load_tasks
from ptq_eval.evaluate.paired import paired_metrics
from ptq_eval.evaluate.windows import Windows, make_windows, rolling_windows, start_token
from ptq_eval.identity import checkpoint_identity, data_identities, job_inputs, stale_reason, tokenizer_identity
from ptq_eval.quant import QuantConfig, QuantError, quantizable_weights, quantize
from ptq_eval.quant.calibration import calibration_tokens
from ptq_eval.spec import Job, LmEvalEval, PerplexityEval, Study, StudyError, expand_jobs
from ptq_eval.store import MetricRow, Store

Progress = Callable[[str, int], None]
Inputs = Callable[[Job], dict]
CHECKPOINT_FAILURES = (CheckpointError, QuantError, torch.OutOfMemoryError)


@dataclass
class RunSummary:
    jobs: int = 0
    already_done: int = 0
    ran: int = 0
    seconds: float = 0.0
    nonfinite_jobs: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # checkpoint -> why it failed (recorded in the store)
    rescored: dict[str, str] = field(default_factory=dict)  # checkpoint -> why stored jobs were computed again
    left_out: dict[str, dict[str, str]] = field(default_factory=dict)  # weights neither quantized nor excluded


def resolve_device(device: str) -> str:
    """The device a study runs on; one that is named but absent here is refused before any work."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    kind = torch.device(device)
    if kind.type == "cuda" and (not torch.cuda.is_available() or (kind.index or 0) >= torch.cuda.device_count()):
        raise UserError(
            f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA devices; use auto or cpu"
        )
    if kind.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"device {device!r}: MPS is not available here; use auto or cpu")
    return device


def provenance(study: Study, device: str) -> dict:
    """What produced a number: versions, device, dtype, seed (the evaluator adds what it scored)."""
    return {
        "ptq_eval": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "device": torch.cuda.get_device_name() if device.startswith("cuda") else f"cpu ({platform.machine()})",
        "dtype": study.dtype,
        "seed": study.seed,
    }


def _facts(loaded: LoadedCheckpoint) -> dict:
    facts = asdict(loaded.facts)
    facts.pop("name")
    facts["tokens_per_param"] = loaded.facts.tokens_per_param
    return facts


class _CheckpointRun:
    """Everything done with one loaded checkpoint."""

    def __init__(self, study: Study, store: Store, loaded: LoadedCheckpoint, device: str, cache: dict, inputs: Inputs):
        self.study, self.store, self.loaded, self.device = study, store, loaded, device
        self.weights = quantizable_weights(loaded.model, study.exclude)
        self.pristine = [weight.read().detach().clone() for weight in self.weights]
        self.cache, self.inputs = cache, inputs
        self.tokenizer_key = tokenizer_identity(loaded.tokenizer)

    def windows(self, evaluation: PerplexityEval) -> tuple[Windows, dict]:
        """The eval's token windows; tokenized once per distinct tokenizer across the study."""
        context = getattr(self.loaded.model.config, "max_position_embeddings", None)
        if context is not None and evaluation.seq_len > context:
            raise UserError(
                f"eval {evaluation.name}: seq_len={evaluation.seq_len} exceeds the context of "
                f"{self.loaded.facts.name} ({context}); use seq_len <= {context}"
            )
        rolling = evaluation.windows == "rolling"
        start = start_token(self.loaded.tokenizer, evaluation.bos, rolling)
        if context is not None and start is not None and not rolling and evaluation.seq_len + 1 > context:
            raise UserError(
                f"eval {evaluation.name}: with a BOS token each window reads seq_len + 1 = {evaluation.seq_len + 1} "
                f"tokens, more than the context of {self.loaded.facts.name} ({context}); use seq_len <= {context - 1}"
            )
        key = (self.tokenizer_key, evaluation, start)
        if key not in self.cache:
            corpus = load_corpus(evaluation.corpus, evaluation.split)
            if rolling:
                texts = list(itertools.islice(corpus.texts(), evaluation.documents))
                windows = rolling_windows(self.loaded.tokenizer, texts, evaluation.seq_len, evaluation.stride, start)
            else:
                stream = token_stream(self.loaded.tokenizer, corpus)
                windows = make_windows(stream, evaluation.seq_len, evaluation.tokens, start)
            self.cache[key] = (windows, corpus.describe() | {"start_token": start})
        return self.cache[key]

    def evaluator(self, evaluation: PerplexityEval | LmEvalEval) -> PerplexityEvaluator | HarnessEvaluator:
        if isinstance(evaluation, LmEvalEval):
            return HarnessEvaluator(evaluation, self.cache[evaluation], self.loaded.tokenizer, self.study.seed)
        return PerplexityEvaluator(evaluation, *self.windows(evaluation))

    def calibration(self) -> torch.Tensor:
        """The study's calibration windows for this tokenizer, clamped to the model's context."""
        spec = self.study.calibration
        context = getattr(self.loaded.model.config, "max_position_embeddings", None) or spec.seq_len
        seq_len = min(spec.seq_len, context)
        key = (self.tokenizer_key, "calibration", seq_len)
        if key not in self.cache:
            self.cache[key] = calibration_tokens(
                self.loaded.tokenizer, spec.corpus, spec.split, spec.samples, seq_len, spec.seed
            )
        return self.cache[key]

    def restore(self) -> None:
        for weight, pristine in zip(self.weights, self.pristine, strict=True):
            weight.write(pristine)

    def score(self, evaluation: PerplexityEval | LmEvalEval) -> tuple[Scored, float]:
        evaluator = self.evaluator(evaluation)
        started = time.perf_counter()
        scored = evaluator.score(self.loaded.model)
        return scored, time.perf_counter() - started

    def baseline(self, job: Job, done: set[str]) -> Scored:
        """The full-precision scores: from the store, or scored now and stored."""
        if job.key in done:
            return self.evaluator(job.eval).restore(self.store.arrays(job.key))
        self.restore()
        scored, seconds = self.score(job.eval)
        rows = [MetricRow(metric.name, metric.value, metric.n) for metric in scored.metrics]
        details = provenance(self.study, self.device) | scored.details | {"inputs": self.inputs(job)}
        self.store.save(job.key, job.describe(), _facts(self.loaded), details, seconds, rows, scored.arrays)
        done.add(job.key)
        return scored

    def quantized(
        self,
        config: QuantConfig,
        jobs: list[Job],
        baselines: dict[str, Scored],
        summary: RunSummary,
        progress: Progress,
    ) -> None:
        self.restore()
        calibration = self.calibration() if config.needs_calibration else None
        report = quantize(self.loaded.model, config, self.study.exclude, calibration)
        report_facts = {
            "seconds": report.seconds,
            "layers": [asdict(layer) for layer in report.layers],
            "coverage": report.coverage.as_dict(),
        }
        if report.coverage.left_out:
            summary.left_out[f"{self.loaded.facts.name} {config.method}"] = report.coverage.left_out
        for job in jobs:
            scored, seconds = self.score(job.eval)
            paired = paired_metrics(baselines[job.baseline().key].metrics, scored.metrics, seed=self.study.seed)
            rows = [MetricRow(m.metric, m.quant_value, m.n, m.fp_value, m.delta, m.ci_low, m.ci_high) for m in paired]
            if scored.nonfinite:
                rows.append(MetricRow(scored.nonfinite_metric, float(scored.nonfinite), paired[0].n))
                summary.nonfinite_jobs.append(
                    f"{self.loaded.facts.name} {config.method} {config.bits}-bit {config.granularity} {job.eval.name}"
                )
            details = provenance(self.study, self.device) | scored.details
            details |= {"quant_report": report_facts, "inputs": self.inputs(job)}
            self.store.save(job.key, job.describe(), _facts(self.loaded), details, seconds + report.seconds, rows)
            summary.ran += 1
            progress(f"{self.loaded.facts.name} {config.method} {config.bits}b {config.granularity}", 1)


def check_calibration_disjoint(
    study: Study, jobs: list[Job], corpus: Callable[[str, str], Corpus] = load_corpus
) -> None:
    """Refuse, before any model loads, calibration text that shares a document with a perplexity eval."""
    if not any(job.quant.needs_calibration for job in jobs):
        return
    spec = study.calibration
    calibration = corpus(spec.corpus, spec.split)
    for evaluation in dict.fromkeys(job.eval for job in jobs if isinstance(job.eval, PerplexityEval)):
        shared = shared_documents(calibration, corpus(evaluation.corpus, evaluation.split))
        if shared:
            raise StudyError(
                f"calibration ({spec.corpus!r} split {spec.split!r}) shares {shared} documents with eval "
                f"{evaluation.name}: GPTQ would be calibrated on the text it is scored on; calibrate on another "
                "split or corpus"
            )


def _reusable(jobs: list[Job], stored: dict[str, dict | None], inputs: Inputs) -> tuple[set[str], dict[str, str]]:
    """The stored job keys (baselines included) whose recorded inputs are the current ones, and why others are
    not (stale key → reason)."""
    reusable, stale = set(), {}
    for job in [*jobs, *(job.baseline() for job in jobs)]:
        if job.key in stored:
            reason = stale_reason(stored[job.key], inputs(job))
            if reason is None:
                reusable.add(job.key)
            else:
                stale[job.key] = reason
    return reusable, stale


def _run_checkpoint(study, store, checkpoint, pending, done, device, cache, plan, summary, progress) -> None:
    identity, inputs = plan
    loaded = load_checkpoint(
        checkpoint.reference, checkpoint.tokens, study.allow_pickle, study.trust_remote_code, study.dtype, device,
        identity.weights,
    )  # fmt: skip
    if weights_stamp(checkpoint.reference) != identity.stamp:  # rewritten since it was hashed: not what we measured
        raise CheckpointError(f"{checkpoint.reference}: its files changed while the study ran; run again")
    run = _CheckpointRun(study, store, loaded, device, cache, inputs)
    baseline_jobs = {job.baseline().key: job.baseline() for job in pending}
    baselines = {key: run.baseline(job, done) for key, job in baseline_jobs.items()}
    by_config: dict[QuantConfig, list[Job]] = {}
    for job in pending:
        by_config.setdefault(job.quant, []).append(job)
    for config, config_jobs in by_config.items():
        run.quantized(config, config_jobs, baselines, summary, progress)


def run_study(study: Study, store: Store, progress: Progress = lambda message, advance: None) -> RunSummary:
    """Run every job of the study not already in the store for the same inputs; returns what was done.

    Before any model loads: calibration is checked disjoint from the evals, and every checkpoint's weights and
    tokenizer are identified (a checkpoint that cannot be is recorded as failed; the study goes on). A stored
    job is re-used only if it was computed from the same weights, tokenizer and texts (`identity.py`).
    """
    started = time.perf_counter()
    device = resolve_device(study.device)
    jobs = expand_jobs(study)
    corpus = functools.cache(load_corpus)  # each text read once for the checks below (within this run only)
    check_calibration_disjoint(study, jobs, corpus)
    data = data_identities(study, jobs, corpus)
    stored = store.inputs([job.key for job in jobs] + [job.baseline().key for job in jobs])
    summary = RunSummary(jobs=len(jobs))
    by_checkpoint: dict = {}
    for job in jobs:
        by_checkpoint.setdefault(job.checkpoint, []).append(job)
    plans = {}
    for checkpoint, checkpoint_jobs in by_checkpoint.items():
        try:
            identity = checkpoint_identity(checkpoint.reference, study.trust_remote_code)
            checkpoint_tokens(checkpoint.reference, checkpoint.tokens)  # its metadata, checked before any model loads
        except CHECKPOINT_FAILURES as error:
            summary.failed[checkpoint.reference] = str(error)
            store.record_failure(checkpoint.reference, str(error))
            continue

        def inputs(job: Job, identity=identity) -> dict:
            return job_inputs(job, identity, data)

        done, stale = _reusable(checkpoint_jobs, stored, inputs)
        if stale:
            summary.rescored[checkpoint.reference] = f"{len(stale)} stored jobs: {next(iter(stale.values()))}"
        pending = [job for job in checkpoint_jobs if job.key not in done]
        summary.already_done += len(checkpoint_jobs) - len(pending)
        plans[checkpoint] = (pending, done, (identity, inputs))
    progress(f"{summary.already_done}/{summary.jobs} jobs already in the store", 0)
    for reference, reason in summary.rescored.items():
        progress(f"{reference}: computing again {reason}", 0)
    cache: dict = {}
    for evaluation in dict.fromkeys(job.eval for pending, _, _ in plans.values() for job in pending):
        if isinstance(evaluation, LmEvalEval):
            cache[evaluation] = load_tasks(evaluation)  # before any model loads: a bad task fails fast
    for checkpoint, (pending, done, plan) in plans.items():
        try:
            if pending:
                _run_checkpoint(study, store, checkpoint, pending, done, device, cache, plan, summary, progress)
                todo = summary.jobs - summary.already_done
                progress(f"{checkpoint.reference}: {len(pending)} jobs done ({summary.ran}/{todo} of this run)", 0)
            store.clear_failure(checkpoint.reference)
        except CHECKPOINT_FAILURES as error:
            summary.failed[checkpoint.reference] = str(error)
            store.record_failure(checkpoint.reference, str(error))
            progress(f"{checkpoint.reference}: failed ({error}); the study goes on", 0)
    summary.seconds = time.perf_counter() - started
    return summary
