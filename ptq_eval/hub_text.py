"""Hugging Face datasets as corpora (`hf:PATH[:CONFIG]`), and the presets quantization papers use.

Each row's text column (`text`, or the only string column) is a document. The presets follow the GPTQ
paper's conventions (Frantar et al. 2022, its `datautils.py`):
- `wikitext2`: WikiText-2 raw (`wikitext`, `wikitext-2-raw-v1`), a split's rows joined with "\\n\\n" into one
  document, as the paper scores its test split;
- `ptb`: Penn Treebank (`ptb_text_only`, `penn_treebank`), the `sentence` rows joined with " ";
- `c4`: the first shard of C4 English (`allenai/c4`; train `en/c4-train.00000-of-01024.json.gz`,
  validation `en/c4-validation.00000-of-00008.json.gz`), one document per row — the usual GPTQ calibration
  set (the paper's C4 eval joins its first 1100 validation rows with " "; ours joins documents with EOS).
Loading goes through `datasets.load_dataset`, so its cache and `HF_DATASETS_OFFLINE=1` are honoured.
"""

from __future__ import annotations

from dataclasses import dataclass

from ptq_eval.errors import CorpusError

HF_PREFIX = "hf:"


@dataclass(frozen=True)
class HubText:
    path: str
    config: str | None = None
    column: str | None = None  # None: `text`, or the only string column
    join: str | None = None  # join every row of a split into one document with this separator
    data_files: dict[str, str] | None = None  # split -> file inside the repository


PRESETS = {
    "wikitext2": HubText("wikitext", "wikitext-2-raw-v1", "text", "\n\n"),
    "ptb": HubText("ptb_text_only", "penn_treebank", "sentence", " "),
    "c4": HubText(
        "allenai/c4",
        data_files={
            "train": "en/c4-train.00000-of-01024.json.gz",
            "validation": "en/c4-validation.00000-of-00008.json.gz",
        },
    ),
}


def is_hub_text(name: str) -> bool:
    return name.startswith(HF_PREFIX) or name in PRESETS


def _source(name: str) -> HubText:
    if name in PRESETS:
        return PRESETS[name]
    path, _, config = name[len(HF_PREFIX) :].partition(":")
    return HubText(path, config or None)


def _column(name: str, columns: dict, wanted: str | None) -> str:
    if wanted is not None:
        if wanted not in columns:
            raise CorpusError(f"corpus {name!r}: no column {wanted!r}; columns: {', '.join(columns)}")
        return wanted
    if "text" in columns:
        return "text"
    strings = [column for column, kind in columns.items() if getattr(kind, "dtype", None) in ("string", "large_string")]
    if len(strings) != 1:
        raise CorpusError(f"corpus {name!r}: no `text` column and not one string column to read; columns: {columns}")
    return strings[0]


def hub_documents(name: str, split: str) -> list[str]:
    """The documents of one split of a Hugging Face dataset (or preset); errors name what is accepted."""
    import datasets

    source = _source(name)
    if source.data_files is not None and split not in source.data_files:
        raise CorpusError(f"corpus {name!r} has no split {split!r}; accepted: {', '.join(source.data_files)}")
    files = {split: source.data_files[split]} if source.data_files else None
    try:
        rows = datasets.load_dataset(source.path, source.config, split=split, data_files=files)
    except ValueError as error:
        raise CorpusError(f"corpus {name!r}: {error}") from None
    except (OSError, ConnectionError, datasets.exceptions.DatasetNotFoundError) as error:
        raise CorpusError(
            f"corpus {name!r}: cannot load dataset {source.path!r} split {split!r} ({error}); offline, only what "
            "the datasets cache holds can be read (HF_DATASETS_OFFLINE=1)"
        ) from None
    texts = rows[_column(name, rows.features, source.column)]
    if source.join is not None:
        return [source.join.join(texts)]
    return [text for text in texts if text and text.strip()]
