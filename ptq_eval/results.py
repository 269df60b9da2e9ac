"""A study's results as one tidy table, and the formats scripts and people read it in."""

from __future__ import annotations

import json
import math

import pandas as pd

from ptq_eval.errors import UserError
from ptq_eval.jobs import expand_jobs
from ptq_eval.quant import INT, METHOD_OPTIONS, granularity, later_option_defaults, number_format, rounds_weights
from ptq_eval.quant.precision import BITS_COLUMNS, PRECISION_COLUMNS, stored_precision
from ptq_eval.quant.stored import ARTIFACT
from ptq_eval.spec import Study
from ptq_eval.store import Store

COLUMNS = [
    "checkpoint",
    "params",
    "nonembedding_params",
    "tokens",
    "tokens_per_param",
    "method",
    "format",
    "bits",
    "bits_per_weight",
    "group_size",
    "symmetric",
    "eval",
    "metric",
    "fp_value",
    "quant_value",
    "delta",
    "delta_ci_low",
    "delta_ci_high",
    "n",
    "quantized_matrices",
    "quantized_params",
    "coverage",
    "left_out_params",
]
# results column -> key of the coverage a quantized job records (quant/base.py: Coverage)
COVERAGE = {
    "quantized_matrices": "matrices",
    "quantized_params": "params",
    "coverage": "fraction",
    "left_out_params": "left_out_params",
}
OUTPUT_FORMATS = ("csv", "json", "md")
# what study_results adds to COLUMNS: the grid cell's label, the methods' options (empty for a method without
# them: rows that differ in one are never pooled into one fit), the quantized file a row measured (empty for
# simulated configs), the checkpoint's learning-rate schedule and how far its decay had come (NaN: unknown), the
# job's time
NUMERIC = ["params", "nonembedding_params", "tokens", "tokens_per_param", "fp_value", "quant_value", "delta",
           "delta_ci_low", "delta_ci_high"]  # fmt: skip
EXTRA = ["granularity", *METHOD_OPTIONS, *PRECISION_COLUMNS, "artifact", "schedule", "decay_done", "seconds"]
# config fields a printed table shows only where they vary (CSV and JSON always carry them)
VARYING = ["format", "symmetric", *METHOD_OPTIONS, *PRECISION_COLUMNS, "eval", "schedule"]


def coverage_columns(provenance: str) -> dict:
    """A quantized job's recorded coverage (NaN where none was recorded: baselines, older stores)."""
    coverage = json.loads(provenance).get("quant_report", {}).get("coverage")
    if coverage is None:
        return dict.fromkeys(COVERAGE, math.nan)
    return {column: coverage[key] for column, key in COVERAGE.items()}


def _precision_columns(frame: pd.DataFrame) -> None:
    """What a row rounds besides weights: `activations`, `kv_cache` (their kind, e.g. `int token asym`; empty:
    not rounded) and `activation_bits`, `kv_bits` (bits per value). A config that keeps its weights (method fp)
    holds in bits and bits_per_weight those of what it rounds, the law's P (`QuantConfig.rounded`)."""
    for component, bits in BITS_COLUMNS.items():
        stored = frame[component] if component in frame else pd.Series(None, index=frame.index, dtype=object)
        found = stored.map(lambda value, c=component: stored_precision(c, value))
        frame[component] = found.map(lambda p: p.kind if p is not None else "")
        frame[bits] = found.map(lambda p: p.bits_per_value if p is not None else math.nan).astype(float)
    keeps = ~frame.method.map(rounds_weights).astype(bool)
    rounded = frame.activation_bits.where(frame.activations != "", frame.kv_bits)
    frame["bits_per_weight"] = frame.bits_per_weight.where(~keeps, rounded)


def study_results(study: Study, store: Store) -> pd.DataFrame:
    """One row per (checkpoint, quant config, eval, metric) finished so far, in the columns above."""
    frame = store.frame(job.key for job in expand_jobs(study))
    if frame.empty:
        return pd.DataFrame(columns=COLUMNS + EXTRA)
    frame = frame.rename(columns={"value": "quant_value"})
    coverage = pd.DataFrame.from_records([coverage_columns(text) for text in frame.provenance], index=frame.index)
    frame = pd.concat([frame, coverage], axis=1)
    stored = frame["format"] if "format" in frame else pd.Series(None, index=frame.index, dtype=object)
    frame["format"] = stored.where(stored.notna() | frame.bits.isna(), INT)  # keys name a format other than int
    frame["granularity"] = [granularity(int(g)) if g == g else "" for g in frame.group_size]
    counted = pd.Series(
        [
            number_format(f).bits_per_weight(int(b), int(g), bool(s)) if b == b else math.nan
            for f, b, g, s in zip(frame.format, frame.bits, frame.group_size, frame.symmetric, strict=True)
        ],
        index=frame.index,
        dtype=float,
    )
    recorded = frame["bits_per_weight"] if "bits_per_weight" in frame else pd.Series(math.nan, index=frame.index)
    frame["bits_per_weight"] = recorded.astype(float).fillna(counted)  # an artifact's job records its file's
    _precision_columns(frame)
    frame["artifact"] = frame["artifact"].fillna("") if "artifact" in frame else ""
    schedules = frame["schedule"] if "schedule" in frame else pd.Series([{}] * len(frame), index=frame.index)
    schedules = schedules.map(lambda facts: facts if isinstance(facts, dict) else {})
    frame["schedule"] = schedules.map(lambda facts: facts.get("kind", ""))
    frame["decay_done"] = schedules.map(lambda facts: facts.get("decay_done", math.nan)).astype(float)
    for option, defaults in later_option_defaults().items():  # results stored before an option held its default
        stored = frame[option] if option in frame else pd.Series(None, index=frame.index, dtype=object)
        frame[option] = stored.where(stored.notna(), frame.method.map(defaults)).fillna("")
    frame = frame.reindex(columns=list(dict.fromkeys([*frame.columns, *METHOD_OPTIONS])))
    for column in NUMERIC:  # a column stored NULL in every row would otherwise be object; integers stay integers
        frame[column] = pd.to_numeric(frame[column])
    order = ["nonembedding_params", "tokens", "method", "format", "bits", "group_size", "sequential", "eval", "metric"]
    frame = frame.sort_values(order)
    return frame[COLUMNS + EXTRA].reset_index(drop=True)


def _fmt(value: float, digits: int = 4) -> str:
    return "nan" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def markdown_table(frame: pd.DataFrame) -> str:
    """A plain Markdown table of a DataFrame (no extra dependency)."""
    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(str(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body]) + "\n"


def varying(rows: pd.DataFrame, columns=VARYING) -> list[str]:
    """The columns among `columns` with more than one value in these rows (a table leaves the others out); a
    method's option varies only if it does between rows of methods that have it (the others leave it empty)."""

    def values(column: str) -> pd.Series:
        found = rows[column]
        if column in METHOD_OPTIONS:
            found = found[found.notna() & (found.astype(str) != "")]
        return found.astype(str)

    return [c for c in columns if c in rows and values(c).nunique() > 1]


def _ratio(value: float) -> str:
    """D/N as a table shows it: 0.02 (not 0.0), 1,200, or unknown (D not known)."""
    if value != value:
        return "unknown"
    return f"{value:,.0f}" if value >= 1000 else f"{value:.3g}"


def summary_table(results: pd.DataFrame, metric: str = "loss") -> pd.DataFrame:
    """The compact view: one row per checkpoint × quant config, δ with its 95% CI, and a column for each config
    field that varies."""
    rows = results[results.metric == metric]
    return pd.DataFrame(
        {
            "checkpoint": rows.checkpoint,
            "N": rows.nonembedding_params,
            "D": rows.tokens.map(lambda v: "unknown" if v != v else f"{v:.0f}"),
            "D/N": rows.tokens_per_param.map(_ratio),
            "method": method_labels(rows),
            "bits": rows.bits.astype(int),
            "granularity": rows.granularity,
            **{column: rows[column] for column in varying(rows)},
            f"fp {metric}": rows.fp_value.map(_fmt),
            f"quant {metric}": rows.quant_value.map(_fmt),
            "δ [95% CI]": [
                f"{_fmt(d)} [{_fmt(lo)}, {_fmt(hi)}]"
                for d, lo, hi in zip(rows.delta, rows.delta_ci_low, rows.delta_ci_high, strict=True)
            ],
            "coverage": [coverage_label(f, left) for f, left in zip(rows.coverage, rows.left_out_params, strict=True)],
        }
    )


def method_labels(rows: pd.DataFrame) -> pd.Series:
    """Each row's method as a table shows it: a quantized file by its type and its own name for its
    quantization (`gguf Q4_K_M`), a simulated config by its method."""
    if "quantized_as" not in rows:
        return rows.method
    files = rows.method == ARTIFACT
    return rows.method.where(~files, rows.artifact_type.astype(str) + " " + rows.quantized_as.astype(str))


def coverage_label(fraction: float, left_out_params: float) -> str:
    """The share of N quantized, flagged when weights were left out without an exclude pattern."""
    if fraction is None or math.isnan(fraction):
        return "not recorded"
    return f"{100 * fraction:.1f}%" + (f" ({int(left_out_params)} params left out!)" if left_out_params else "")


# the metrics that say how a distribution or an answer moved, shown beside δ, and their column titles
BESIDE = {
    "kld": "KLD", "top1_agree": "top-1 agree", "delta_p": "mean Δp", "rms_delta_p": "RMS Δp",
    "flips": "flips", "flips_to_wrong": "to wrong", "all_flips": "all flips", "choice_kld": "choice KLD",
}  # fmt: skip
MAIN_METRICS = ("loss", "acc")  # the δ they are shown beside, the first an eval (or task) has


def _significant(value: float) -> str:
    return "nan" if value != value else f"{value:#.3g}"


def _with_ci(rows: pd.DataFrame) -> list[str]:
    """Each row's quantized value with the CI of its δ moved onto it (fp + CI), to 3 significant digits."""
    return [
        f"{_significant(q)} [{_significant(f + lo)}, {_significant(f + hi)}]"
        for q, f, lo, hi in zip(rows.quant_value, rows.fp_value, rows.delta_ci_low, rows.delta_ci_high, strict=True)
    ]


def beside_delta(results: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """Per eval (an lm-eval group: per task) that has them: one row per checkpoint × config, δ of its loss (or
    accuracy) with its CI, then KLD, top-1 agreement, Δp and flips, each its value with a 95% CI."""
    tables = []
    for name, rows in results.groupby("eval", sort=False):
        prefixes = rows.metric.map(lambda m: m.rpartition("/")[0])
        for prefix, own in rows.groupby(prefixes, sort=False):
            bare = own.metric.map(lambda m: m.rpartition("/")[2])
            main = next((m for m in MAIN_METRICS if (bare == m).any()), None)
            shown = [m for m in BESIDE if (bare == m).any()]
            if main is None or not shown:
                continue
            base = own[bare == main]
            table = summary_table(base, base.metric.iloc[0]).drop(columns=["coverage"])
            table = table.drop(columns=[c for c in table.columns if c.startswith(("fp ", "quant "))])
            table = table.rename(columns={"δ [95% CI]": f"δ {main} [95% CI]"})
            for metric in shown:
                values = own[bare == metric].set_index(["checkpoint", "method", "bits", "group_size", *varying(own)])
                ordered = values.reindex(base.set_index(values.index.names).index)
                table[BESIDE[metric]] = _with_ci(ordered)
            tables.append((f"{name}{'/' + prefix if prefix else ''}", table))
    return tables


def summary_tables(results: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """The compact views of a study, titled `eval: metric`: the loss of each perplexity eval, and
    every metric of each lm-eval task (acc, acc_norm, word_perplexity, ...)."""
    tables = []
    for name, rows in results[~results.metric.str.startswith("nonfinite_")].groupby("eval", sort=False):
        metrics = ["loss"] if (rows.metric == "loss").any() else list(dict.fromkeys(rows.metric))
        tables += [(f"{name}: {metric}", summary_table(rows, metric)) for metric in metrics]
    return tables


def render(results: pd.DataFrame, fmt: str) -> str:
    """CSV and JSON carry every column (a results file refits with GPTQ's options and the learning-rate phase)."""
    if fmt == "csv":
        return results[COLUMNS + EXTRA].to_csv(index=False)
    if fmt == "json":
        return results[COLUMNS + EXTRA].to_json(orient="records", indent=2) + "\n"
    if fmt == "md":
        fixed = [c for c in COLUMNS if c not in VARYING or c in varying(results)]
        return markdown_table(results[fixed + varying(results, [c for c in VARYING if c not in COLUMNS])])
    raise UserError(f"unknown format {fmt!r}; accepted: {', '.join(OUTPUT_FORMATS)}")
