"""One checkpoint's work: load it once, score its baselines once, then for each quant config restore the
pristine weights, quantize and evaluate. It yields each finished job and never writes the store, so the same
code runs in-process and on a Ray worker (`executors.py`); the driver (`runner.py`) alone writes."""

from __future__ import annotations

import platform
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import transformers

from ptq_eval.artifacts import Artifact, stored_weights
from ptq_eval.checkpoints import CheckpointError, LoadedCheckpoint, load_checkpoint, weights_stamp
from ptq_eval.errors import UserError
from ptq_eval.evals.kinds import CheckpointView, EvalKind, Scored
from ptq_eval.evals.paired import paired_metrics
from ptq_eval.identity import tokenizer_identity
from ptq_eval.jobs import CheckpointSpec, Job
from ptq_eval.quant import QuantConfig, QuantError, QuantReport, quantizable_weights, quantize
from ptq_eval.quant.calibration import calibration_tokens
from ptq_eval.quant.run_time import rounding_at_run_time
from ptq_eval.spec import Study
from ptq_eval.store import MetricRow
from ptq_eval.version import __version__

CHECKPOINT_FAILURES = (CheckpointError, QuantError, torch.OutOfMemoryError)


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


@dataclass(frozen=True)
class CheckpointWork:
    """Everything one checkpoint's pending jobs need (plain data: it travels to Ray workers)."""

    study: Study
    checkpoint: CheckpointSpec
    jobs: list[Job]  # pending quantized jobs
    inputs: dict[str, dict]  # job key (baselines too) -> what it is computed from (identity.py)
    stored_baselines: dict[str, dict[str, np.ndarray]]  # baseline key -> its stored arrays (re-used, not rescored)
    weights_id: str
    stamp: tuple | None  # local weight files as they were hashed (checkpoints.weights_stamp)


@dataclass(frozen=True)
class Finished:
    """One finished job, as the store writes it."""

    key: str
    job: dict
    facts: dict
    provenance: dict
    seconds: float
    rows: list[MetricRow]
    arrays: dict[str, np.ndarray] | None = None
    label: str | None = None  # for progress; None for a baseline
    nonfinite: str | None = None  # the job, when some of its losses were not finite
    left_out: dict[str, str] = field(default_factory=dict)  # weights neither quantized nor excluded


def _facts(loaded: LoadedCheckpoint) -> dict:
    facts = asdict(loaded.facts)
    facts.pop("name")
    facts["tokens_per_param"] = loaded.facts.tokens_per_param
    return facts


class _CheckpointRun:
    """Everything done with one loaded checkpoint. Pristine weights live on the CPU (pinned when the model is on
    CUDA), so a GPU holds one copy of the model."""

    def __init__(self, work: CheckpointWork, loaded: LoadedCheckpoint, device: str, cache: dict):
        self.work, self.study, self.loaded, self.device, self.cache = work, work.study, loaded, device, cache
        self.weights = quantizable_weights(loaded.model, self.study.exclude)
        pin = device.startswith("cuda")
        self.pristine = [weight.read().detach().to("cpu", copy=True) for weight in self.weights]
        if pin:
            self.pristine = [tensor.pin_memory() for tensor in self.pristine]
        self.pristine_others: dict[str, torch.Tensor] = {}  # parameters an artifact wrote beside the matrices
        self.tokenizer_key = tokenizer_identity(loaded.tokenizer)
        self.facts = _facts(loaded)
        self.quant_device = resolve_device(self.study.quant_device) if self.study.quant_device else None
        self.calibrated: dict = {}  # what calibration re-uses across calibrated configs (quant/blocks.py)
        self.quant_configs = tuple(dict.fromkeys(job.quant for job in work.jobs if job.quant is not None))

    def view(self) -> CheckpointView:
        """What an eval kind reads of this checkpoint to build its evaluator."""
        context = getattr(self.loaded.model.config, "max_position_embeddings", None)
        return CheckpointView(
            self.loaded.facts.name, self.loaded.tokenizer, self.tokenizer_key, context, self.study.seed, self.cache
        )

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

    @torch.no_grad()
    def restore(self) -> None:
        for weight, pristine in zip(self.weights, self.pristine, strict=True):
            weight.write(pristine)
        if self.pristine_others:
            parameters = dict(self.loaded.model.named_parameters())
            for name, pristine in self.pristine_others.items():
                parameters[name].copy_(pristine)

    def read_artifact(self, artifact: Artifact):
        """The artifact's weights, with a pristine copy kept of every other parameter it will write."""
        stored = stored_weights(artifact, self.loaded.model)
        parameters = dict(self.loaded.model.named_parameters())
        for name in stored.others(self.weights):
            if name not in self.pristine_others:
                self.pristine_others[name] = parameters[name].detach().to("cpu", copy=True)
        return stored

    def score(self, evaluation: EvalKind, baseline: Scored | None = None) -> tuple[Scored, float]:
        evaluator = evaluation.evaluator(self.view())
        started = time.perf_counter()
        scored = evaluator.score(self.loaded.model, baseline)
        return scored, time.perf_counter() - started

    def baseline(self, job: Job) -> tuple[Scored, Finished | None]:
        """The full-precision scores: restored from the stored arrays, or scored now (then also a Finished)."""
        stored = self.work.stored_baselines.get(job.key)
        if stored is not None:
            return job.eval.evaluator(self.view()).restore(stored, self.loaded.model), None
        self.restore()
        scored, seconds = self.score(job.eval)
        rows = [MetricRow(metric.name, metric.value, metric.n) for metric in scored.metrics]
        details = provenance(self.study, self.device) | scored.details | {"inputs": self.work.inputs[job.key]}
        return scored, Finished(job.key, job.describe(), self.facts, details, seconds, rows, scored.arrays)

    def quantized(
        self, config: QuantConfig, jobs: list[Job], baselines: dict[str, Scored], artifact: Artifact | None = None
    ) -> Iterator[Finished]:
        self.restore()
        calibration = self.calibration() if config.needs_calibration else None
        stored = self.read_artifact(artifact) if artifact is not None else None
        report = quantize(
            self.loaded.model, config, self.study.exclude, calibration, self.quant_device, self.calibrated,
            share_with=self.quant_configs, stored=stored,
        )  # fmt: skip
        report_facts = {
            "seconds": report.seconds,
            "layers": [asdict(layer) for layer in report.layers],
            "coverage": report.coverage.as_dict(),
            "solved_together": report.solved_together,
        }
        if report.warnings:
            report_facts["warnings"] = report.warnings
        label = f"{self.loaded.facts.name} {config.method} {config.bits}b {config.granularity}"
        if not config.rounds_weights:
            label = f"{self.loaded.facts.name} weights {config.method}"
        label += "".join(f" {name} {p.label}" for name, p in (("A", config.activations), ("KV", config.kv_cache)) if p)
        if artifact is not None:
            report_facts["artifact"] = {"reference": artifact.reference, "types": dict(artifact.types)}
            label = f"{self.loaded.facts.name} {artifact.artifact_type} {artifact.quantized_as}"
        rounded = self.weights  # a file's kernels round the inputs of the matrices it quantized
        if stored is not None:
            rounded = [weight for weight in self.weights if f"{weight.name}.{weight.parameter}" in stored.quantized]
        with rounding_at_run_time(self.loaded.model, config, rounded, calibration) as run_time:
            if run_time:
                report_facts["run_time"] = run_time
            yield from self._scored(jobs, baselines, report, report_facts, label)

    def _scored(
        self, jobs: list[Job], baselines: dict[str, Scored], report: QuantReport, report_facts: dict, label: str
    ) -> Iterator[Finished]:
        for job in jobs:
            baseline = baselines[job.baseline().key]
            scored, seconds = self.score(job.eval, baseline)
            fp = [metric for metric in baseline.metrics if metric.name not in scored.not_computed]
            paired = paired_metrics(fp, scored.metrics, seed=self.study.seed)
            rows = [MetricRow(m.metric, m.quant_value, m.n, m.fp_value, m.delta, m.ci_low, m.ci_high) for m in paired]
            nonfinite = None
            if scored.nonfinite:
                rows.append(MetricRow(scored.nonfinite_metric, float(scored.nonfinite), paired[0].n))
                nonfinite = f"{label} {job.eval.name}"
            details = provenance(self.study, self.device) | scored.details
            details |= {"quant_report": report_facts, "inputs": self.work.inputs[job.key]}
            yield Finished(
                job.key, job.describe(), self.facts, details, seconds + report.seconds, rows,
                label=label, nonfinite=nonfinite, left_out=report.coverage.left_out,
            )  # fmt: skip


def run_checkpoint(work: CheckpointWork, cache: dict | None = None) -> Iterator[Finished]:
    """Every pending job of one checkpoint (and the baselines they need that are not stored), as each finishes.

    `cache` (tokenized eval windows, calibration windows, lm-eval tasks) may be shared across checkpoints.
    """
    study, checkpoint = work.study, work.checkpoint
    device = resolve_device(study.device)
    loaded = load_checkpoint(
        checkpoint.reference, checkpoint.tokens, study.allow_pickle, study.trust_remote_code, study.dtype, device,
        work.weights_id,
    )  # fmt: skip
    if weights_stamp(checkpoint.reference) != work.stamp:  # rewritten since it was hashed: not what we measured
        raise CheckpointError(f"{checkpoint.reference}: its files changed while the study ran; run again")
    run = _CheckpointRun(work, loaded, device, {} if cache is None else cache)
    baselines: dict[str, Scored] = {}
    for job in dict.fromkeys(job.baseline() for job in work.jobs):
        baselines[job.key], finished = run.baseline(job)
        if finished is not None:
            yield finished
    by_config: dict[tuple[QuantConfig, Artifact | None], list[Job]] = {}
    for job in work.jobs:
        by_config.setdefault((job.quant, job.artifact), []).append(job)
    for (config, artifact), config_jobs in by_config.items():
        yield from run.quantized(config, config_jobs, baselines, artifact)
