"""Run a study: plan which jobs are not yet in the store (for the same inputs), hand each checkpoint's pending
jobs to an executor (`executors.py`: in-process or Ray), and commit every job the moment it comes back. Only this
driver writes the store, so a crash loses at most the jobs in flight. Runs that share a store claim checkpoints
(`claims.py`) instead of repeating each other's work; a job-array task runs its shard of the checkpoints."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from ptq_eval.artifacts import check_base
from ptq_eval.checkpoints import CheckpointRef, checkpoint_tokens
from ptq_eval.claims import DEFAULT_LEASE_SECONDS, Claims
from ptq_eval.corpus import Corpus, load_corpus, shared_documents
from ptq_eval.executors import Executor, GroupEnd, InProcess, shard_checkpoints
from ptq_eval.identity import CheckpointIdentity, checkpoint_identity, data_identities, job_inputs, stale_reason
from ptq_eval.jobs import CheckpointSpec, Job, expand_jobs
from ptq_eval.spec import Study, StudyError
from ptq_eval.store import Store
from ptq_eval.worker import CHECKPOINT_FAILURES, CheckpointWork, Finished, resolve_device

Progress = Callable[[str, int], None]
WAIT_SECONDS = 2.0  # how often a run waiting for another run's checkpoint looks again


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
    by_others: int = 0  # jobs another run sharing the store did while this one ran


def check_calibration_disjoint(
    study: Study, jobs: list[Job], corpus: Callable[[str, str], Corpus] = load_corpus
) -> None:
    """Refuse, before any model loads, calibration text that shares a document with the text an eval scores."""
    if not any(job.quant.needs_calibration for job in jobs):
        return
    spec = study.calibration
    calibration = corpus(spec.corpus, spec.split)
    for evaluation in dict.fromkeys(job.eval for job in jobs):
        text = evaluation.scored_text()
        shared = shared_documents(calibration, corpus(*text)) if text is not None else 0
        if shared:
            raise StudyError(
                f"calibration ({spec.corpus!r} split {spec.split!r}) shares {shared} documents with eval "
                f"{evaluation.name}: GPTQ would be calibrated on the text it is scored on; calibrate on another "
                "split or corpus"
            )


@dataclass
class _Group:
    """One checkpoint's jobs and what they are computed from."""

    checkpoint: CheckpointSpec
    jobs: list[Job]
    identity: CheckpointIdentity
    inputs: dict[str, dict]  # job key (baselines too) -> its inputs
    planned: int = 0  # jobs not in the store when the run was planned

    def keys(self) -> list[str]:
        return list(self.inputs)

    def reusable(self, stored: dict[str, dict | None]) -> tuple[set[str], dict[str, str]]:
        """The stored job keys (baselines included) whose recorded inputs are the current ones, and why others
        are not (stale key -> reason)."""
        reusable, stale = set(), {}
        for key, inputs in self.inputs.items():
            if key in stored:
                reason = stale_reason(stored[key], inputs)
                if reason is None:
                    reusable.add(key)
                else:
                    stale[key] = reason
        return reusable, stale

    def work(self, study: Study, store: Store) -> CheckpointWork | None:
        """The jobs still to do as the store stands now (None: none), with the stored baselines they pair with."""
        done, _ = self.reusable(store.inputs(self.keys()))
        pending = [job for job in self.jobs if job.key not in done]
        if not pending:
            return None
        baselines = {job.baseline().key for job in pending} & done
        stored = {key: store.arrays(key) for key in baselines}
        return CheckpointWork(
            study, self.checkpoint, pending, self.inputs, stored, self.identity.weights, self.identity.stamp
        )


def _plan(study: Study, jobs: list[Job], store: Store, summary: RunSummary) -> list[_Group]:
    """One group per checkpoint whose weights and tokenizer could be identified (the others recorded failed)."""
    corpus = functools.cache(load_corpus)  # each text read once for the checks below (within this run only)
    check_calibration_disjoint(study, jobs, corpus)
    data = data_identities(study, jobs, corpus)
    by_checkpoint: dict[CheckpointSpec, list[Job]] = {}
    for job in jobs:
        by_checkpoint.setdefault(job.checkpoint, []).append(job)
    identities, failures = {}, {}
    for checkpoint in by_checkpoint:
        try:
            identities[checkpoint] = checkpoint_identity(checkpoint.reference, study.trust_remote_code)
            checkpoint_tokens(checkpoint.reference, checkpoint.tokens)  # its metadata, checked before any model loads
        except CHECKPOINT_FAILURES as error:
            failures[checkpoint] = str(error)
    for checkpoint, identity in identities.items():  # an artifact not of its base stops the run, nothing written
        for artifact in dict.fromkeys(job.artifact for job in by_checkpoint[checkpoint] if job.artifact is not None):
            ref = CheckpointRef.parse(checkpoint.reference)
            check_base(artifact, ref.repo, identity.tokenizer_object, ref.revision)
    for checkpoint, reason in failures.items():
        summary.failed[checkpoint.reference] = reason
        store.record_failure(checkpoint.reference, reason)
    groups = []
    for checkpoint, identity in identities.items():
        checkpoint_jobs = by_checkpoint[checkpoint]
        everything = [*checkpoint_jobs, *(job.baseline() for job in checkpoint_jobs)]
        inputs = {job.key: job_inputs(job, identity, data) for job in everything}
        groups.append(_Group(checkpoint, checkpoint_jobs, identity, inputs))
    return groups


def run_study(
    study: Study,
    store: Store,
    progress: Progress = lambda message, advance: None,
    executor: Executor | None = None,
    shard: tuple[int, int] | None = None,
    lease_seconds: float = DEFAULT_LEASE_SECONDS,
) -> RunSummary:
    """Run every job of the study (or of its shard `(index, count)`) not already in the store for the same
    inputs; returns what was done.

    Before any model loads: calibration is checked disjoint from the evals, and every checkpoint's weights and
    tokenizer are identified (a checkpoint that cannot be is recorded as failed; the study goes on). A stored
    job is re-used only if it was computed from the same weights, tokenizer and texts (`identity.py`).
    """
    started = time.perf_counter()
    if executor is None:  # a named device absent here is refused before any work (on Ray: where it runs)
        resolve_device(study.device)
        if study.quant_device:
            resolve_device(study.quant_device)
    jobs = expand_jobs(study)
    if shard is not None:
        counts: dict[CheckpointSpec, int] = {}
        for job in jobs:
            counts[job.checkpoint] = counts.get(job.checkpoint, 0) + 1
        mine = shard_checkpoints(counts, *shard)
        jobs = [job for job in jobs if job.checkpoint in mine]
    summary = RunSummary(jobs=len(jobs))
    groups = _plan(study, jobs, store, summary)
    stored = store.inputs(key for group in groups for key in group.keys())
    for group in groups:
        done, stale = group.reusable(stored)
        if stale:
            summary.rescored[group.checkpoint.reference] = f"{len(stale)} stored jobs: {next(iter(stale.values()))}"
        group.planned = sum(job.key not in done for job in group.jobs)
        summary.already_done += len(group.jobs) - group.planned
        if not group.planned:
            store.clear_failure(group.checkpoint.reference)
    progress(f"{summary.already_done}/{summary.jobs} jobs already in the store", 0)
    for reference, reason in summary.rescored.items():
        progress(f"{reference}: computing again {reason}", 0)
    cache: dict = {}
    for evaluation in dict.fromkeys(job.eval for job in jobs):
        evaluation.prepared(cache)  # before any model loads: a bad eval (an lm-eval task) fails fast
    executor = executor or InProcess(cache)
    with Claims(store.path, lease_seconds) as claims:
        _drive(study, store, [group for group in groups if group.planned], executor, claims, summary, progress)
    summary.seconds = time.perf_counter() - started
    return summary


def _claimed(
    groups, held_elsewhere: list, claims: Claims, study: Study, store: Store, summary: RunSummary
) -> Iterator[CheckpointWork]:
    """The work of each group this run could claim (re-planned from the store as it is now); the groups another
    run holds go to `held_elsewhere` with their holder."""
    for group in groups:
        holder = claims.take(group.checkpoint.reference)
        if holder is not None:
            held_elsewhere.append((group, holder))
            continue
        work = group.work(study, store)
        summary.by_others += group.planned - (len(work.jobs) if work else 0)
        if work is None:  # another run finished it
            claims.release(group.checkpoint.reference)
            store.clear_failure(group.checkpoint.reference)
            continue
        yield work


def _drive(study, store, groups, executor, claims, summary, progress) -> None:
    """Claim each group, hand it to the executor, store what comes back; then wait for groups other runs hold."""
    todo, remaining = sum(group.planned for group in groups), groups
    while remaining:
        held_elsewhere: list[tuple[_Group, str]] = []
        arrived: dict[str, set[str]] = {}
        for work, event in executor.run(_claimed(remaining, held_elsewhere, claims, study, store, summary)):
            reference = work.checkpoint.reference
            received = arrived.setdefault(reference, set())
            if isinstance(event, Finished):
                claims.check(reference)
                _save(store, event, summary, progress, event.key not in received)
                received.add(event.key)
                continue
            claims.release(reference)
            missing = {job.key for job in work.jobs} - received
            if event.error is None and missing:  # never a silent gap: the group ended without all its jobs
                event = GroupEnd(f"{len(missing)} of its {len(work.jobs)} jobs never came back from the executor")
            if event.error is None:
                store.clear_failure(reference)
                progress(f"{reference}: {len(work.jobs)} jobs done ({summary.ran}/{todo} of this run)", 0)
            else:
                summary.failed[reference] = event.error
                store.record_failure(reference, event.error)
                progress(f"{reference}: failed ({event.error}); the study goes on", 0)
        remaining = [group for group, _ in held_elsewhere]
        if remaining:
            holders = ", ".join(sorted({holder.rsplit("|", 1)[0] for _, holder in held_elsewhere}))
            progress(f"waiting for {len(remaining)} checkpoints another run is working on ({holders})", 0)
            time.sleep(WAIT_SECONDS)


def _save(store: Store, finished: Finished, summary: RunSummary, progress: Progress, first: bool) -> None:
    """Commit one finished job; `first`: not seen before in this run (a replayed job is stored, not counted)."""
    store.save(
        finished.key, finished.job, finished.facts, finished.provenance, finished.seconds, finished.rows,
        finished.arrays,
    )  # fmt: skip
    if finished.label is None or not first:  # a baseline, or a job already counted
        return
    summary.ran += 1
    if finished.nonfinite:
        summary.nonfinite_jobs.append(finished.nonfinite)
    if finished.left_out:
        summary.left_out[finished.label.rsplit(" ", 2)[0]] = finished.left_out  # per checkpoint and method
    progress(finished.label, 1)
