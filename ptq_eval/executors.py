"""Where checkpoint groups run: in this process (default), or on a Ray cluster (one task per checkpoint group,
one GPU each when the study runs on CUDA). Either way each finished job streams back to the driver, which alone
writes the store. Also: the deterministic share of a study that one job-array task (`--shard I/N`) runs.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

from ptq_eval.errors import UserError
from ptq_eval.jobs import CheckpointSpec
from ptq_eval.worker import CHECKPOINT_FAILURES, CheckpointWork, Finished, run_checkpoint

RAY_RETRIES = 2  # a task whose worker died (OOM-killed, preempted node) runs again this many times


@dataclass(frozen=True)
class GroupEnd:
    """A checkpoint group is over: every job finished (error None) or the checkpoint failed (why)."""

    error: str | None = None


Event = tuple[CheckpointWork, Finished | GroupEnd]


class Executor(Protocol):
    def run(self, works: Iterable[CheckpointWork]) -> Iterator[Event]:
        """Run the groups, pulling the next from `works` only when there is room for it; yield as jobs finish."""
        ...


class InProcess:
    """One group after another in this process; tokenized windows and lm-eval tasks shared across groups."""

    def __init__(self, cache: dict | None = None):
        self.cache = {} if cache is None else cache

    def run(self, works: Iterable[CheckpointWork]) -> Iterator[Event]:
        for work in works:
            try:
                for finished in run_checkpoint(work, self.cache):
                    yield work, finished
            except CHECKPOINT_FAILURES as error:
                yield work, GroupEnd(str(error))
                continue
            yield work, GroupEnd()


def _ray_group(work: CheckpointWork) -> Iterator[Finished]:
    """A Ray task: one checkpoint group, its jobs streamed back as they finish (threads = the CPUs it was given)."""
    import ray
    import torch

    cpus = int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1))
    torch.set_num_threads(max(1, cpus))
    yield from run_checkpoint(work)


class RayExecutor:
    """Checkpoint groups as Ray tasks, as many in flight as the cluster has room for.

    `address`: None starts a local Ray instance (`cpus` CPUs); "auto" or "ray://HOST:PORT" joins a cluster.
    A task whose worker dies is retried (`RAY_RETRIES`); a checkpoint that still fails is reported failed and the
    others go on. Every node needs ptq-eval installed, and the checkpoints, corpora and caches at the same paths.
    """

    def __init__(
        self, study_device: str, address: str | None = None, cpus: int | None = None, quant_device: str | None = None
    ):
        try:
            import ray
        except ImportError:
            raise UserError("--executor ray needs Ray: pip install 'ptq-eval[ray]'") from None
        self.ray = ray
        if not ray.is_initialized():
            local = {"num_cpus": cpus or os.cpu_count()} if address is None else {}
            ray.init(address=address, include_dashboard=False, logging_level="ERROR", log_to_driver=False, **local)
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        devices = [device for device in (study_device, quant_device) if device]
        for device in devices:
            if device.startswith("cuda:"):
                raise UserError(f"device {device!r}: under Ray each task sees the one GPU it was given; use cuda")
        wants_gpu = any(device.startswith("cuda") for device in devices) or (study_device == "auto" and gpus > 0)
        if wants_gpu and gpus == 0:
            raise UserError(f"devices {devices}: the Ray cluster has no GPUs; use device: cpu or auto")
        self.options = {"num_gpus": 1, "num_cpus": 1}
        if not wants_gpu:
            self.options.pop("num_gpus")
        self.slots = max(1, gpus if wants_gpu else int(resources.get("CPU", 1)))

    def run(self, works: Iterable[CheckpointWork]) -> Iterator[Event]:
        ray = self.ray
        task = ray.remote(_ray_group).options(max_retries=RAY_RETRIES, **self.options)
        pending, in_flight = iter(works), {}

        def submit() -> None:
            while len(in_flight) < self.slots:
                work = next(pending, None)
                if work is None:
                    return
                in_flight[task.remote(work)] = work

        submit()
        while in_flight:
            (stream,), _ = ray.wait(list(in_flight), num_returns=1)
            work = in_flight[stream]
            try:
                finished = ray.get(next(stream))
            except StopIteration:
                finished = GroupEnd()
            except ray.exceptions.RayTaskError as error:
                if not isinstance(error.cause, CHECKPOINT_FAILURES):
                    for stream in in_flight:  # their results would be dropped: free the cluster now
                        ray.cancel(stream, force=True)
                    raise error.cause from None
                finished = GroupEnd(str(error.cause))
            except ray.exceptions.RayError as error:  # the worker or its node died, retries spent
                finished = GroupEnd(f"{type(error).__name__} after {RAY_RETRIES} retries: {error}")
            yield work, finished
            if isinstance(finished, GroupEnd):
                del in_flight[stream]
                submit()


def parse_shard(text: str) -> tuple[int, int]:
    """`I/N` (0 <= I < N) -> (I, N)."""
    index, _, count = text.partition("/")
    if not (index.isdigit() and count.isdigit()) or not 0 <= int(index) < int(count):
        raise UserError(f"--shard {text!r}: expected I/N with 0 <= I < N (e.g. 0/4, or $SLURM_ARRAY_TASK_ID/4)")
    return int(index), int(count)


def shard_checkpoints(jobs_per_checkpoint: dict[CheckpointSpec, int], index: int, count: int) -> set[CheckpointSpec]:
    """Shard `index` of `count`: checkpoints dealt in name order to the shard with the fewest jobs so far (the
    lowest-numbered on a tie), so shards are balanced in jobs and the split depends on the study alone."""
    load = [0] * count
    shares: list[set[CheckpointSpec]] = [set() for _ in range(count)]
    for checkpoint in sorted(jobs_per_checkpoint, key=lambda spec: spec.reference):
        lightest = min(range(count), key=lambda shard: (load[shard], shard))
        shares[lightest].add(checkpoint)
        load[lightest] += jobs_per_checkpoint[checkpoint]
    return shares[index]
