"""`kind: lm_eval`: any lm-eval task, by name or local YAML, scored on the model in memory."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
from pydantic import Field, field_validator

from ptq_eval.evals.harness import LoadedTasks, evaluate_task, load_tasks, restore_scores
from ptq_eval.evals.kinds.base import CheckpointView, EvalKind, Scored, Text, register_eval
from ptq_eval.evals.task_files import is_task_file, task_file_name


@register_eval
class LmEvalEval(EvalKind):
    """Any lm-eval task on the model in memory: a name lm-eval knows (hub data) or a local task YAML.

    `data_dir` is handed to the task's dataset loader (the shipped YAMLs under tasks/lm_eval
    read their files relative to it); environment variables in it (`${PTQ_EVAL_DATA}`) are expanded when the
    task loads, so a shared study need not name one machine's folder and its job keys do not depend on it.
    `limit`, `num_fewshot`, `batch_size` as in lm-eval. `backend`: the lm-eval model that scores it,
    `ptq_eval` (the packed scorer: lm-eval's HFLM with faster loglikelihood scoring, the same answers up to
    float rounding) or `hflm` (lm-eval's own); it is one of a job's inputs (`identity.py`), not of its key.
    """

    kind: Literal["lm_eval"]
    task: str = Field(min_length=1)
    limit: int | None = Field(default=None, gt=0)
    num_fewshot: int | None = Field(default=None, ge=0)
    batch_size: int = Field(default=16, gt=0)
    data_dir: str | None = None
    backend: Literal["ptq_eval", "hflm"] = "ptq_eval"

    NOT_IN_KEY: ClassVar[tuple[str, ...]] = ("label", "backend")
    INPUTS: ClassVar[dict[str, str]] = {"scorer": "lm-eval backend", "choices": "choices kept (answer flips)"}
    RECORDED_BEFORE: ClassVar[dict[str, object]] = {"scorer": "hflm", "choices": False}

    @field_validator("task")
    @classmethod
    def _task_file_exists(cls, task: str) -> str:
        if is_task_file(task) and not Path(task).is_file():
            raise ValueError(f"{task!r}: no such task YAML file; give a file path or an lm-eval task name")
        return task

    @property
    def name(self) -> str:
        return task_file_name(self.task) if is_task_file(self.task) else self.task

    def scored_text(self) -> Text | None:
        """None: a task is identified by its options (its datasets are lm-eval's; the documents' hash is kept
        with the results)."""
        return None

    def inputs(self, tokenizer) -> dict[str, object]:
        """The backend, and whether its choice tasks' answers are kept (for flips; False: it has none)."""
        return {"scorer": self.backend, "choices": _has_choice_tasks(self)}

    def metrics(self) -> list[str]:
        """`task/metric` for every metric of its tasks that pairs per document, and the flips of its choice tasks
        (`evals/flips.py`), from the loaded task configs."""
        return load_tasks(self).metrics()

    def prepare(self) -> LoadedTasks:
        return load_tasks(self)

    def evaluator(self, checkpoint: CheckpointView) -> HarnessEvaluator:
        return HarnessEvaluator(self, self.prepared(checkpoint.cache), checkpoint.tokenizer, checkpoint.seed)


@functools.cache
def _has_choice_tasks(evaluation: LmEvalEval) -> bool:
    """Whether any of its tasks is answered by choosing (its tasks loaded once per process)."""
    return bool(load_tasks(evaluation).choice_tasks())


class HarnessEvaluator:
    """An lm-eval task (or group) run through the harness on the model in memory."""

    def __init__(self, evaluation: LmEvalEval, loaded: LoadedTasks, tokenizer, seed: int):
        self.evaluation, self.loaded, self.tokenizer, self.seed = evaluation, loaded, tokenizer, seed

    def score(self, model, baseline: Scored | None = None) -> Scored:
        """Its tasks' per-document metrics, then the flips against `baseline` (its stored arrays hold the
        full-precision answers)."""
        scores = evaluate_task(model, self.tokenizer, self.loaded, self.evaluation, self.seed)
        nonfinite = max((int((~np.isfinite(m.values)).sum()) for m in scores.metrics), default=0)
        fp = None if baseline is None else restore_scores(self.loaded, baseline.arrays)
        metrics = scores.metrics + scores.flips(self.loaded, fp)
        return Scored(metrics, scores.arrays(), scores.details, nonfinite, "nonfinite_documents")

    def restore(self, arrays: dict[str, np.ndarray], model) -> Scored:
        scores = restore_scores(self.loaded, arrays)
        return Scored(scores.metrics + scores.flips(self.loaded, None), arrays)
