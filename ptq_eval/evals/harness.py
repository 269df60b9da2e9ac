"""lm-eval bridge: any lm-eval task, by name or local YAML, scored on the model in memory.

The model is wrapped as it is (quantized weights and all, never saved and reloaded) in an lm-eval
model backend, ptq-eval's packed scorer (`lm_backend.py`) unless the eval asks for lm-eval's own
`HFLM`, and run through `simple_evaluate` with per-document logging. Each metric
comes back as per-document (value, weight) pairs, so the full-precision and quantized runs
pair document by document (see `paired.py`): accuracies are means of 0/1 per document,
lm-eval's perplexities and bits per byte ratios of summed log-likelihoods to words, bytes
or documents. Metrics aggregated over the whole corpus at once (f1, mcc, bleu) have no
per-document form; they are left out and named in the job's details.

Offline (`HF_HUB_OFFLINE=1`, `HF_DATASETS_OFFLINE=1`) a hub task whose data is not cached
fails with an error naming the task and how to provide it locally.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import hashlib
import importlib.metadata
import io
import math
import os
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from ptq_eval.errors import UserError
from ptq_eval.evals.flips import FLIP_METRICS, Choices, flip_metrics, flip_units
from ptq_eval.evals.paired import Transform, UnitMetric
from ptq_eval.evals.task_files import is_task_file


class LmEvalTask(Protocol):
    """What scoring an lm-eval task needs of its eval spec (`spec.LmEvalEval` is one)."""

    task: str
    name: str
    limit: int | None
    num_fewshot: int | None
    batch_size: int
    data_dir: str | None
    backend: str


SAID_ON_ERROR = 4000  # characters of lm-eval's output shown when it fails
LM_EVAL_BOOTSTRAP = 1000  # lm-eval's own stderr resamples (its stderrs are recorded, ours are paired)
LOCAL_HINT = (
    "provide the data locally: a task YAML with `dataset_path: json` and `dataset_kwargs: {data_files: ...}` "
    "(see tasks/lm_eval/), or run once online so the datasets cache holds it"
)


class HarnessError(UserError):
    """An lm-eval task cannot be found, loaded or paired; the message says what to do."""


def _neg_exp(x: np.ndarray) -> np.ndarray:
    return np.exp(-x)


def _neg_bits(x: np.ndarray) -> np.ndarray:
    return -x / math.log(2)


# lm-eval aggregations that are a transform of Σ value / Σ weight over documents.
PAIRABLE: dict[str, Transform | None] = {
    "mean": None,
    "perplexity": _neg_exp,
    "weighted_perplexity": _neg_exp,
    "bits_per_byte": _neg_bits,
}


@functools.cache
def _task_manager(include_path: str | None, data_dir: str | None):
    """lm-eval's task index: the built-in tasks (indexing them takes seconds, so once per process)
    for a task name, only the YAML's own directory for a task file."""
    from lm_eval.tasks import TaskManager

    metadata = {"data_dir": data_dir} if data_dir else None
    return TaskManager(include_path=include_path, include_defaults=include_path is None, metadata=metadata)


@dataclass(frozen=True)
class LoadedTasks:
    """The leaf lm-eval tasks an eval names, datasets loaded, ready to run again and again."""

    manager: object
    tasks: dict

    def aggregations(self, task: str) -> dict[str, str]:
        """Each metric of a leaf task and the name of lm-eval's aggregation for it."""
        return {metric: function.__name__ for metric, function in self.tasks[task].aggregation().items()}

    def choice_tasks(self) -> list[str]:
        """The leaf tasks answered by choosing among choices and scored by `acc`: flips are measured on them."""
        return [
            name
            for name, task in self.tasks.items()
            if task.OUTPUT_TYPE == "multiple_choice" and "acc" in self.aggregations(name)
        ]

    def metrics(self) -> list[str]:
        """`task/metric` for every metric of its tasks that pairs per document, then each choice task's flips."""
        paired = [
            f"{task}/{metric}"
            for task in self.tasks
            for metric, aggregation in self.aggregations(task).items()
            if aggregation in PAIRABLE
        ]
        return paired + [f"{task}/{metric}" for task in self.choice_tasks() for metric in FLIP_METRICS]


def data_folder(data_dir: str | None) -> str | None:
    """The eval's data_dir with environment variables expanded, as an absolute path; an unset variable is an
    error naming it."""
    if data_dir is None:
        return None
    expanded = os.path.expandvars(data_dir)
    unset = re.findall(r"\$\{?(\w+)", expanded)
    if unset:
        raise HarnessError(
            f"data_dir {data_dir!r}: environment variable {unset[0]} is not set; set it to the folder holding "
            "the task's data files, or give the folder itself"
        )
    return str(Path(expanded).resolve())


def _manager_for(evaluation: LmEvalTask):
    data_dir = data_folder(evaluation.data_dir)
    if is_task_file(evaluation.task):
        return _task_manager(str(Path(evaluation.task).resolve().parent), data_dir)
    return _task_manager(None, data_dir)


def load_tasks(evaluation: LmEvalTask) -> LoadedTasks:
    """Build the eval's lm-eval task(s); clear errors for unknown names and unreachable data."""
    task = evaluation.task
    spec = str(Path(task).resolve()) if is_task_file(task) else task
    manager = _manager_for(evaluation)
    try:
        loaded = manager.load([spec])
    except KeyError:
        close = difflib.get_close_matches(task, manager.all_tasks, n=5)
        hint = f"; close matches: {', '.join(close)}" if close else ""
        raise HarnessError(f"{task!r} is neither an lm-eval task name nor a task YAML file{hint}") from None
    except OSError as error:
        if is_task_file(task):
            raise HarnessError(f"lm-eval task file {task}: its data could not be loaded: {error}") from error
        entry = manager.task_index.get(task)
        dataset = (entry.cfg or {}).get("dataset_path") if entry is not None else None
        source = f"its dataset {dataset!r}" if dataset else "its data"
        raise HarnessError(
            f"lm-eval task {task!r}: {source} is not available from the Hugging Face hub here "
            f"(offline, or HF_HUB_OFFLINE/HF_DATASETS_OFFLINE set): {error}; {LOCAL_HINT}"
        ) from error
    tasks = LoadedTasks(manager, loaded["tasks"])
    for name in tasks.tasks:
        aggregations = tasks.aggregations(name)
        if not set(aggregations.values()) & set(PAIRABLE):
            raise HarnessError(
                f"lm-eval task {name}: no metric can be paired per document ({aggregations}); "
                f"accepted aggregations: {', '.join(PAIRABLE)}"
            )
    return tasks


@dataclass(frozen=True)
class TaskScores:
    """One lm-eval run: per-document metrics, each under its key `task/metric[,filter]`, lm-eval's summary, and
    each choice task's per-document choices (for flips)."""

    metrics: list[UnitMetric]
    keys: list[str]
    details: dict
    choices: dict[str, Choices]

    def arrays(self) -> dict[str, np.ndarray]:
        """What a later run needs to pair with this one, as named arrays."""
        arrays = {}
        for key, metric in zip(self.keys, self.metrics, strict=True):
            arrays |= {f"{key}:values": metric.values, f"{key}:weights": metric.weights, f"{key}:ids": metric.ids}
        for task, choices in self.choices.items():
            arrays |= choices.arrays(task)
        return arrays

    def values(self, key: str) -> np.ndarray:
        """The per-document values of the metric `task/metric[,filter]`."""
        return self.metrics[self.keys.index(key)].values

    def flips(self, loaded: LoadedTasks, baseline: TaskScores | None) -> list[UnitMetric]:
        """Each choice task's flip metrics against `baseline` (this run's own full-precision side when None)."""
        found = []
        for task in loaded.choice_tasks():
            keys = [f"{task}/{metric}" for metric in FLIP_METRICS]
            names = dict(zip(FLIP_METRICS, _display_names(loaded, keys).values(), strict=True))
            choices = self.choices.get(task)
            if choices is None:
                raise HarnessError(f"{task}: this run kept no choices (stored before flips existed); score it again")
            if baseline is None:
                found += flip_metrics(names, choices.ids, None)
                continue
            if task not in baseline.choices:
                raise HarnessError(f"{task}: the stored full-precision run kept no choices; score it again")
            fp_correct, quant_correct = baseline.values(f"{task}/acc"), self.values(f"{task}/acc")
            units = flip_units(fp_correct, quant_correct, baseline.choices[task], choices)
            found += flip_metrics(names, choices.ids, units)
        return found


def _display_names(loaded: LoadedTasks, keys: list[str]) -> dict[str, str]:
    """Row names: `metric[,filter]` for a single task, `task/metric[,filter]` for several."""
    return {key: key.split("/", 1)[1] if len(loaded.tasks) == 1 else key for key in keys}


def _unit_metric(loaded: LoadedTasks, key: str, name: str, values, weights, ids) -> UnitMetric:
    task, metric = key.split("/", 1)
    transform = PAIRABLE[loaded.aggregations(task)[metric.split(",")[0]]]
    return UnitMetric(name, np.asarray(values, float), np.asarray(weights, float), transform, len(ids), np.asarray(ids))


def restore_scores(loaded: LoadedTasks, arrays: dict[str, np.ndarray]) -> TaskScores:
    """A stored run's per-document metrics and choices, as `TaskScores.arrays` wrote them."""
    keys = sorted(name.removesuffix(":values") for name in arrays if name.endswith(":values"))
    names = _display_names(loaded, keys)
    metrics = [
        _unit_metric(loaded, key, names[key], arrays[f"{key}:values"], arrays[f"{key}:weights"], arrays[f"{key}:ids"])
        for key in keys
    ]
    choices = {task: Choices.from_arrays(arrays, task) for task in loaded.choice_tasks()}
    return TaskScores(metrics, keys, {}, {task: found for task, found in choices.items() if found is not None})


def _units(item, aggregation: str) -> tuple[float, float]:
    """A document's (value, weight) for an aggregation: (x, 1) for means, (log-likelihood, words) etc."""
    if aggregation in ("weighted_perplexity", "bits_per_byte"):
        return float(item[0]), float(item[1])
    return float(item), 1.0


def _choices(loaded: LoadedTasks, samples: dict) -> dict[str, Choices]:
    """Each choice task's documents' choices' log-likelihoods (lm-eval's responses, unfiltered), by document id."""
    found = {}
    for task in loaded.choice_tasks():
        rows = sorted((r for r in samples.get(task, []) if r["filter"] == "none"), key=lambda r: r["doc_id"])
        per_document = []
        for row in rows:
            count = len(loaded.tasks[task].doc_to_choice(row["doc"]))  # mutual-information tasks ask twice as much
            per_document.append([float(response[0]) for response in row["filtered_resps"][:count]])
        ids = np.array([row["doc_id"] for row in rows])
        counts = np.array([len(lls) for lls in per_document], dtype=np.int64)
        found[task] = Choices(ids, counts, np.array([ll for lls in per_document for ll in lls], dtype=float))
    return found


def _collect(loaded: LoadedTasks, samples: dict) -> tuple[dict[str, tuple[list, list, list]], set[str]]:
    """Per metric key, the documents' values, weights and ids (sorted by id); and the unpairable keys."""
    columns: dict[str, tuple[list, list, list]] = {}
    unpaired: set[str] = set()
    for task, rows in samples.items():
        aggregations = loaded.aggregations(task)
        for row in sorted(rows, key=lambda r: (r["filter"], r["doc_id"])):
            for metric in row["metrics"]:
                key = f"{task}/{metric}" + ("" if row["filter"] == "none" else f",{row['filter']}")
                if aggregations.get(metric) not in PAIRABLE:
                    unpaired.add(key)
                    continue
                value, weight = _units(row[metric], aggregations[metric])
                values, weights, ids = columns.setdefault(key, ([], [], []))
                values.append(value)
                weights.append(weight)
                ids.append(row["doc_id"])
    return columns, unpaired


def _summary(out: dict, unpaired: set[str], samples: dict, backend: str) -> dict:
    """lm-eval's own numbers (value and stderr per metric), versions and the documents' identity."""
    digest = hashlib.sha256()
    for task in sorted(samples):
        for row in sorted(samples[task], key=lambda r: (r["filter"], r["doc_id"])):
            digest.update(f"{task}:{row['doc_id']}:{row['doc_hash']}\n".encode())
    results = {task: {k: v for k, v in out["results"][task].items() if "," in k} for task in samples}
    return {
        "lm_eval": {
            "version": importlib.metadata.version("lm_eval"),
            "backend": backend,
            "results": results,
            "n_samples": {task: out["n-samples"][task] for task in samples},
            "n_shot": {task: out["n-shot"].get(task) for task in samples},
            "task_versions": {task: out["versions"].get(task) for task in samples},
            "unpaired_metrics": sorted(unpaired),
        },
        "eval_corpus": {"corpus": ",".join(sorted(samples)), "split": "lm-eval", "sha256": digest.hexdigest()},
    }


@contextlib.contextmanager
def _silenced():
    """lm-eval prints progress bars, warnings and notes, and asks git for its hash (a `fatal: not a git
    repository` outside a checkout); the library never prints, so none of it reaches the terminal: Python's
    streams are captured, and the process's stderr (which subprocesses and early-bound log handlers write to)
    points at a scratch file meanwhile."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        captured = io.StringIO()
        try:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(captured):
                yield
        except BaseException:  # a failure keeps what was said before it: the end of it goes to the real stderr
            sink.seek(0)
            said = sink.read().decode(errors="replace") + captured.getvalue()
            os.write(saved, f"lm-eval said before the error:\n{said[-SAID_ON_ERROR:]}\n".encode())
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def lm_backend(name: str) -> type:
    """The lm-eval model class a `backend` names: ptq-eval's packed scorer, or lm-eval's own HFLM."""
    from lm_eval.models.huggingface import HFLM

    from ptq_eval.evals.lm_backend import PackedLM

    return {"ptq_eval": PackedLM, "hflm": HFLM}[name]


def evaluate_task(model, tokenizer, loaded: LoadedTasks, evaluation: LmEvalTask, seed: int = 0) -> TaskScores:
    """Run the eval's tasks on `model` as it is in memory; per-document results for pairing."""
    from lm_eval import simple_evaluate

    lm = lm_backend(evaluation.backend)(pretrained=model, tokenizer=tokenizer, batch_size=evaluation.batch_size)
    try:
        with _silenced():
            out = simple_evaluate(
                lm,
                tasks=list(loaded.tasks.values()),
                task_manager=loaded.manager,
                limit=evaluation.limit,
                num_fewshot=evaluation.num_fewshot,
                log_samples=True,
                bootstrap_iters=LM_EVAL_BOOTSTRAP,
                random_seed=seed,
                numpy_random_seed=seed,
                torch_random_seed=seed,
                fewshot_random_seed=seed,
            )
    except AssertionError as error:  # lm-eval checks request sizes with bare asserts
        raise HarnessError(
            f"lm-eval stopped on an internal check while scoring {evaluation.name}; most often an answer longer "
            f"than the model's context ({lm.max_length} tokens), which lm-eval cannot score"
        ) from error
    columns, unpaired = _collect(loaded, out["samples"])
    keys = sorted(columns)
    names = _display_names(loaded, keys)
    metrics = [_unit_metric(loaded, key, names[key], *columns[key]) for key in keys]
    details = _summary(out, unpaired, out["samples"], evaluation.backend)
    return TaskScores(metrics, keys, details, _choices(loaded, out["samples"]))
