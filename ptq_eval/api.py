"""The Python API: a study from arguments instead of a YAML file, run by the same runner into a store, read
back as the `ptq-eval results` table. For notebooks, and for models held in memory (just fine-tuned, or
quantized by another tool) that were never saved."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from ptq_eval import in_memory
from ptq_eval.errors import UserError
from ptq_eval.results import study_results
from ptq_eval.runner import run_study
from ptq_eval.spec import load_study, parse_study
from ptq_eval.store import Store, existing_store

DEFAULT_EVALS = ({"kind": "perplexity"},)


def evaluate(
    model: str | Path | torch.nn.Module,
    tokenizer=None,
    *,
    quant: Sequence[dict],
    evals: Sequence[dict] = DEFAULT_EVALS,
    store: str | Path | None = None,
    tokens: int | None = None,
    name: str = "api",
    **study: Any,
) -> pd.DataFrame:
    """Quantize a model with each config of `quant` and measure δ on `evals`, paired against full precision.

    `model`: a checkpoint reference (local directory or `hub-id@revision`) or a model in memory (then give its
    `tokenizer`; it is copied, never modified). `quant` and `evals` are lists of study entries, e.g.
    `[{"method": "rtn", "bits": [3, 4]}]` and `[{"kind": "perplexity", "tokens": 8192}]`; any other study field
    (`calibration`, `device`, `dtype`, `seed`, `exclude`, ...) goes in `**study`. `tokens`: D, for fits.
    `store`: an SQLite file that keeps the results (a second call reuses them); default a temporary one.
    Returns the `ptq-eval results` columns, one row per config × eval metric. Raises UserError on bad input,
    or when the checkpoint fails (with why)."""
    built = {"name", "ladder", "quant", "evals"} & set(study)
    if built:
        raise UserError(f"{', '.join(sorted(built))}: given by evaluate's own arguments, not as study fields")
    if isinstance(model, torch.nn.Module):
        reference = in_memory.hold(model, tokenizer)
    else:
        if tokenizer is not None:
            raise UserError("tokenizer= is for a model in memory; a checkpoint reference brings its own")
        reference = str(model)
    entry = {"checkpoint": reference, "tokens": tokens} if tokens is not None else reference
    document = {"name": name, "ladder": [entry], "quant": list(quant), "evals": list(evals), **study}
    try:
        spec = parse_study(document, "ptq_eval.evaluate")
        with tempfile.TemporaryDirectory() as scratch:
            path = Path(store) if store is not None else Path(scratch) / f"{name}.sqlite"
            with Store(path) as opened:
                summary = run_study(spec, opened)
                if summary.failed:
                    raise UserError("; ".join(f"{where}: {why}" for where, why in summary.failed.items()))
                return study_results(spec, opened)
    finally:
        in_memory.release(reference)


def load_results(study: str | Path, store: str | Path | None = None) -> pd.DataFrame:
    """The stored results of a study YAML (`ptq-eval results` as a DataFrame); `store` defaults to
    `runs/<study name>.sqlite`, as for the command line."""
    spec = load_study(study)
    with Store(existing_store(study, store, spec.name)) as opened:
        return study_results(spec, opened)
