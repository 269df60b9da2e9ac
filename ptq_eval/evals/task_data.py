"""Dataset loaders for the lm-eval task YAMLs shipped under tasks/lm_eval (`custom_dataset: !function ...`).

lm-eval calls a loader with the task's metadata and `dataset_kwargs` as keyword arguments.
`data_dir` reaches the metadata from the study (`{kind: lm_eval, data_dir: DIR}`) or from
lm-eval's own command line (`--metadata '{"data_dir": "DIR"}'`), so the data is found where
it lies at run time and never committed. Everything is read into memory: no dataset cache
is written and nothing is fetched.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from datasets import Dataset

from ptq_eval.corpus import STDLIB, load_corpus

WIKITEXT_TITLE = re.compile(r"^ = [^=].* = $")


def _data_file(data_dir: str | None, name: str) -> Path:
    path = Path(data_dir or ".") / name
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no such data file (data_dir={data_dir!r}); give data_dir, the folder that holds {name} "
            "(in a study: data_dir: DIR, or ${PTQ_EVAL_DATA} with that variable set)"
        )
    return path


def corpus_documents(corpus: str = STDLIB, split: str = "validation", **_) -> dict[str, Dataset]:
    """A ptq-eval corpus split with one document (`text`) per file: what `windows: rolling` scores."""
    return {split: Dataset.from_dict({"text": list(load_corpus(corpus, split).texts())})}


def jsonl(data_files: dict[str, str], data_dir: str | None = None, **_) -> dict[str, Dataset]:
    """JSON-lines files, one document a line, named per split relative to `data_dir`."""
    splits = {}
    for split, name in data_files.items():
        lines = _data_file(data_dir, name).read_text(encoding="utf-8").splitlines()
        splits[split] = Dataset.from_list([json.loads(line) for line in lines if line.strip()])
    return splits


def wikitext_articles(data_files: dict[str, str], data_dir: str | None = None, **_) -> dict[str, Dataset]:
    """WikiText raw files split into articles (`page`) at their top-level ` = Title = ` lines."""
    splits = {}
    for split, name in data_files.items():
        articles: list[list[str]] = []
        for line in _data_file(data_dir, name).read_text(encoding="utf-8").splitlines():
            if WIKITEXT_TITLE.match(line) or not articles:
                articles.append([])
            articles[-1].append(line)
        splits[split] = Dataset.from_dict({"page": ["\n".join(lines) + "\n" for lines in articles]})
    return splits
