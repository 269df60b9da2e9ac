"""Compare the degradation of two studies, or of two checkpoints within one study, config by config."""

from __future__ import annotations

import pandas as pd

from ptq_eval.errors import UserError
from ptq_eval.evals.paired import difference_ci
from ptq_eval.quant import METHOD_OPTIONS
from ptq_eval.quant.precision import PRECISION_COLUMNS
from ptq_eval.report import plots
from ptq_eval.report.document import Document, Section, Table
from ptq_eval.results import varying

CONFIG = ["method", "format", "granularity", "bits", "group_size", "symmetric", "eval", "metric"]


def select_checkpoint(results: pd.DataFrame, name: str) -> pd.DataFrame:
    """The rows of one checkpoint, named exactly or by a unique part of its name."""
    names = sorted(results.checkpoint.unique())
    matches = [c for c in names if c == name] or [c for c in names if name in c]
    if len(matches) != 1:
        found = "no checkpoint" if not matches else f"{len(matches)} checkpoints ({', '.join(matches)})"
        raise UserError(f"checkpoint {name!r} matches {found}; give one of: {', '.join(names)}")
    return results[results.checkpoint == matches[0]]


def compare_results(a: pd.DataFrame, b: pd.DataFrame) -> pd.DataFrame:
    """One row per config both sides measured: each δ with its CI, the difference B − A, its CI and whether it
    is significant (the CI excludes zero). Checkpoints are matched by name unless each side has only one."""
    single = a.checkpoint.nunique() == 1 and b.checkpoint.nunique() == 1
    # a method's variants, and what a config rounds besides weights, are never paired across
    options = [c for c in (*METHOD_OPTIONS, *PRECISION_COLUMNS) if c in a and c in b]
    config = [c for c in CONFIG if c in a and c in b]  # a results CSV from before formats has no format
    keys = [*config, *options] if single else ["checkpoint", *config, *options]
    columns = keys + ["delta", "delta_ci_low", "delta_ci_high"]
    # an RTN-only side holds float NaN; a precision column "" or NaN where nothing is rounded: one "" for both
    a, b = (side.astype(dict.fromkeys(options, object)).fillna(dict.fromkeys(PRECISION_COLUMNS, "")) for side in (a, b))
    joined = a[columns].merge(b[columns], on=keys, suffixes=("_a", "_b"))
    if joined.empty:
        raise UserError(
            f"the two sides share no (checkpoint, method, format, bits, group size, symmetry, "
            f"{', '.join(METHOD_OPTIONS)}, "
            "eval, metric); compare studies that measured the same configs, or pick one checkpoint on each side"
        )

    def side(suffix: str) -> pd.DataFrame:
        return joined[[f"delta{suffix}", f"delta_ci_low{suffix}", f"delta_ci_high{suffix}"]].set_axis(
            ["delta", "delta_ci_low", "delta_ci_high"], axis=1
        )

    difference, low, high = difference_ci(side("_a"), side("_b"))
    table = joined[keys].copy()
    if single:
        table.insert(0, "checkpoint", "")
    for suffix in ("a", "b"):
        table[f"delta_{suffix}"] = joined[f"delta_{suffix}"]
        table[f"ci_low_{suffix}"] = joined[f"delta_ci_low_{suffix}"]
        table[f"ci_high_{suffix}"] = joined[f"delta_ci_high_{suffix}"]
    table["difference"], table["diff_ci_low"], table["diff_ci_high"] = difference, low, high
    table["significant"] = (low > 0) | (high < 0)
    order = [c for c in ("checkpoint", "eval", "metric", "method", "format", "group_size", "bits") if c in table]
    return table.sort_values(order).reset_index(drop=True)


def compare_document(table: pd.DataFrame, labels: tuple[str, str]) -> Document:
    """The comparison as a report: what was compared, the side-by-side table, the overlay plot."""
    worse = table[table.significant & (table.difference > 0)]
    better = table[table.significant & (table.difference < 0)]
    summary = (
        f"A = {labels[0]}, B = {labels[1]}: {len(table)} configs measured by both; B's δ is significantly larger "
        f"in {len(worse)} and significantly smaller in {len(better)} (95% interval of B − A excludes zero)."
    )
    redundant = (table.metric == "perplexity") & table["eval"].isin(table["eval"][table.metric == "loss"])
    plotted = table[~redundant]  # perplexity is exp(loss): its panel would repeat the loss panel
    fields = ("format", "symmetric", *METHOD_OPTIONS, *PRECISION_COLUMNS)
    same = [c for c in fields if c in table and c not in varying(table)]
    shown = table.drop(columns=["granularity", *same])  # a config field is shown where it tells rows apart
    if (shown.checkpoint == "").all():
        shown = shown.drop(columns="checkpoint")
    shown = shown.assign(significant=shown.significant.map({True: "yes", False: "no"}))
    return Document(
        f"ptq-eval compare: {labels[0]} vs {labels[1]}",
        [
            Section("Summary", [summary], figures=[plots.delta_overlay(plotted, labels)]),
            Section("δ side by side", tables=[Table("δ with 95% CIs; difference = B − A", shown)]),
        ],
    )
