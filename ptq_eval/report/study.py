"""The report of one study: its stored results, the scaling-law fits, forecasts and provenance."""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import scipy

from ptq_eval.errors import UserError
from ptq_eval.evals.metrics import facts_of
from ptq_eval.fit import (
    FitError,
    FitOptions,
    LawFit,
    StudyFit,
    compare_censoring,
    compare_phase,
    fit_keys,
    fit_study,
    forecast_table,
    in_nats,
    nats_label,
    stack,
)
from ptq_eval.fit.estimate import Progress
from ptq_eval.fit.study import CONTROL_FACTOR
from ptq_eval.jobs import expand_jobs
from ptq_eval.quant import INT, METHOD_OPTIONS, METHODS, granularity
from ptq_eval.report import plots
from ptq_eval.report.document import Document, Section, Table
from ptq_eval.report.side_by_side import components_section, formats_section, methods_section, weights_alone
from ptq_eval.results import beside_delta, coverage_label, study_results, summary_table
from ptq_eval.spec import Study
from ptq_eval.store import Store

PROVENANCE = ("ptq_eval", "torch", "transformers", "python", "device", "dtype", "seed")


@dataclass(frozen=True)
class ReportOptions:
    resamples: int = 100  # bootstrap resamples of each fit
    seed: int = 0
    budget: float = 0.05  # δ budget (nats/token) for the forecasts
    bits: int = 4  # precision P of the forecasts
    layers_checkpoint: str | None = None  # calibrated methods' per-layer errors here (default: most over-trained)


def _losses(results: pd.DataFrame) -> tuple[dict[tuple[str, str], pd.DataFrame], list[str]]:
    """The rows of each (eval, metric) a loss law is fitted to, in nats; and notes on the metrics that are not."""
    keys, skipped = fit_keys(results)
    pairs = dict.fromkeys((key.eval, key.metric) for key in keys)
    losses = {
        pair: in_nats(results[(results["eval"] == pair[0]) & (results.metric == pair[1])], pair[1]) for pair in pairs
    }
    return losses, skipped


def _overview(study: Study, results: pd.DataFrame, jobs: int, finished: int, losses: dict, skipped: list) -> Section:
    ratios = results.drop_duplicates("checkpoint").tokens_per_param
    span = f"D/N {ratios.min():.3g} to {ratios.max():.3g}" if ratios.notna().any() else "D unknown"
    if ratios.notna().any() and ratios.isna().any():
        span += f", D unknown for {int(ratios.isna().sum())}"
    sizes = ", ".join(plots.size_label(n) for n in sorted(results.nonembedding_params.unique()))
    configs = results.drop_duplicates([c for c in (*plots.CONFIG, "bits", *METHOD_OPTIONS) if c in results])
    paragraphs = [
        f"{results.checkpoint.nunique()} checkpoints ({sizes} non-embedding parameters; {span}) "
        f"× {len(configs)} quantization configs × "
        f"{results['eval'].nunique()} evals: {finished} of {jobs} jobs finished.",
        "δ is the quantized minus the full-precision value on exactly the same tokens (or documents), with a "
        "95% paired bootstrap CI.",
    ]
    if losses:
        shown = "; ".join(f"{name}: {nats_label(metric)}" for name, metric in losses)
        paragraphs.append(f"Figures and fits, one set per eval and loss metric: {shown}.")
    paragraphs += [f"{note}." for note in skipped]
    if finished < jobs:
        paragraphs.append(f"{jobs - finished} jobs are not in the store yet: run `ptq-eval run` on the study.")
    return Section(f"Study {study.name}", paragraphs)


def _suffix(losses: dict, name: str, metric: str) -> str:
    """A figure-name suffix for this eval and metric (none when the study has one loss)."""
    return "" if len(losses) == 1 else "_" + re.sub(r"[^A-Za-z0-9]+", "_", f"{name}_{metric}").strip("_")


def _fits_sections(results: pd.DataFrame, losses: dict, skipped: list[str], options: ReportOptions,
                   store: Store, progress: Progress | None) -> tuple[list[Section], list]:  # fmt: skip
    fit_options = FitOptions(options.resamples, options.seed)
    try:
        fitted = fit_study(results, options=fit_options, cache=store, progress=progress)
    except FitError as error:
        text = str(error).rstrip(".")
        return [Section("Scaling-law fits", [f"{text[:1].upper()}{text[1:]}."])], []
    phase = _phase_section(fitted, losses, options)
    kumar = [fit for fit in fitted.fits if fit.law.name == "kumar"]
    notes = [
        f"One fit per eval, loss metric and quant config. Huber loss on log δ, {options.resamples} bootstrap "
        "resamples over checkpoints, 95% intervals. A point whose δ CI reaches zero is censored at its detection "
        "limit δ − CI low (the fit only asks the law not to rise above it; `censored` counts them): excluding "
        "such points instead keeps only the noisy points that happened to come out high and biases the "
        "high-bit end upward (the comparison table below fits both ways). A point whose whole CI lies below zero "
        "(quantization measurably lowered the loss) contradicts δ > 0 and is excluded. Held-out errors: "
        "leave-one-checkpoint-out and leave-largest-D-out RMSE of log δ."
    ]
    notes += [f"{law} not fitted: {message}" for law, message in fitted.failures.items()]
    controls = fitted.controls()
    notes += controls or [
        f"Negative controls: no fit predicts more than {CONTROL_FACTOR:g}× the upper bound of a δ interval that "
        "reaches zero at its highest P (damage where none was measured)."
    ]
    notes += [f"{note}." for note in fitted.skipped if note not in skipped]  # the rest: in the overview
    tables = [Table("Parameters", fitted.table()), Table("Goodness of fit and held-out error", fitted.goodness())]
    if kumar:
        comparison = compare_censoring(results, fitted, fit_options, store, progress=progress)
        tables.append(Table("Kumar et al. parameters, censored vs excluded (value [95% CI])", comparison))
    breaks = fitted.breaks()
    if not breaks.empty:
        notes.append(
            "Does δ bend? Each key is also fitted with a smoothly broken power law in D and in D/N (its exponent of "
            "D bends from γ_1 to γ_2 around a break whose location is estimated with its bootstrap interval). A "
            "break is supported when the interval of γ_2 − γ_1 excludes zero and the broken law predicts held-out "
            "checkpoints better than the straight law (Kumar et al.'s with several P, else the per-bit law); a "
            "forecast in D/N then comes from the broken law (the gate's too), never from the slope before the break."
        )
        tables.append(Table("Does δ bend? Broken laws against the straight law", breaks))
    fits = Section("Scaling-law fits", notes, tables)
    frames = []
    for fit in kumar:
        loss = losses[(fit.key.eval, fit.key.metric)]
        asked = {"budget": options.budget, "params": float(loss.nonembedding_params.max()), "bits": options.bits,
                 "tokens_per_param": float(loss.tokens_per_param.max())}  # fmt: skip
        frames.append(forecast_table(fit, fitted.base(fit), **asked))
    forecasts = Section(
        "Forecasts",
        [
            f"From the Kumar et al. fits at the largest N each eval measured: the largest D/N that keeps "
            f"δ ≤ {options.budget:g} nats (per token, word or byte, as the metric counts) at {options.bits} bits, "
            "the smallest bit width within that budget at the largest D/N measured, and the critical data size "
            "where full-precision loss + δ stops falling with more tokens (0: already rising at D/N = 1; inf: "
            "still falling at D/N = 1e6)."
        ],
        [Table("Forecasts with 95% bootstrap intervals", stack(frames))] if frames else [],
    )
    loss_key, loss = next(iter(losses.items()))
    unit = nats_label(loss_key[1])
    weights = loss[weights_alone(loss)]
    sections = (formats_section(weights, fitted.fits, unit), methods_section(weights, fitted.fits, unit),
                components_section(loss, fitted.fits, unit))  # fmt: skip
    compared = [section for section in sections if section is not None]
    return [fits, *([phase] if phase else []), *compared, forecasts], kumar


def _phase_section(fitted: StudyFit, losses: dict, options: ReportOptions) -> Section | None:
    """Learning-rate phase against tokens: δ vs D/N coloured by decay_done, and the held-out comparison."""
    table = compare_phase(fitted)
    if table.empty:
        return None
    paragraphs = [
        "Kumar et al.'s law explains δ by tokens (D^γ_D); `phase_only` replaces D by the learning-rate phase "
        "(δ ∝ exp(β·(φ − 1)), φ = decay_done, the fraction of the way the rate has come down from peak to floor); "
        "`phase` multiplies Kumar's law by the same term. Held-out errors (leave-one-checkpoint-out, and "
        "leave-largest-D-out) compare them on points none of them was fitted to.",
        phase_verdict(fitted),
    ]
    figures = []
    phase_fits = [fit for fit in fitted.fits if fit.law.name == "phase"]
    for (name, metric), loss in losses.items():
        bits = _shown_bits(options, loss.bits)
        fits = [fit for fit in phase_fits if (fit.key.eval, fit.key.metric) == (name, metric)]
        suffix = _suffix(losses, name, metric)
        if loss.decay_done.nunique() > 1:
            figures.append(plots.delta_by_phase(loss, fits, bits, nats_label(metric), f"delta_by_phase{suffix}"))
    return Section(
        "Learning-rate phase or tokens", paragraphs, [Table("Tokens, phase and both (value [95% CI])", table)], figures
    )


def phase_verdict(fitted: StudyFit) -> str:
    """What the fits say, counted over the configs with a Kumar fit: does phase beat tokens, does it add to them."""
    by_key: dict = {}
    for fit in fitted.fits:
        by_key.setdefault(fit.key, {})[fit.law.name] = fit
    configs = [fits for fits in by_key.values() if "kumar" in fits]

    def held_out(fits: dict, law: str) -> float:
        return fits[law].scores["loco_rmse_log"]

    only = [fits for fits in configs if "phase_only" in fits]
    both = [fits for fits in configs if "phase" in fits]
    beats = sum(held_out(fits, "phase_only") < held_out(fits, "kumar") for fits in only)
    adds = sum(held_out(fits, "phase") < held_out(fits, "kumar") for fits in both)
    beta = [fits["phase"].table().set_index("parameter").loc["beta"] for fits in both]
    resolved = sum(row.ci_low > 0 or row.ci_high < 0 for row in beta)
    text = (
        f"Measured here, over {len(configs)} configs: phase alone predicts held-out checkpoints better than tokens "
        f"in {beats} of the {len(only)} where it could be fitted"
    )
    if len(only) < len(configs):
        text += f" (in {len(configs) - len(only)} it could not; the fit notes above say why)"
    return text + (
        f"; phase on top of tokens improves the held-out error in {adds} of {len(both)}, and its β's 95% interval "
        f"excludes 0 in {resolved} of {len(both)}."
    )


def _calibrated(methods: pd.Series) -> pd.Series:
    """Rows of methods that use calibration (their layer reports hold output errors on it)."""
    return methods.map(lambda name: name in METHODS and METHODS[name].needs_calibration)


def _layer_section(frame: pd.DataFrame, loss: pd.DataFrame, options: ReportOptions) -> Section | None:
    calibrated = frame[_calibrated(frame.method) & (frame.metric == "loss")]
    if calibrated.empty:
        return None
    checkpoint = options.layers_checkpoint
    if checkpoint is None:
        ordered = loss[_calibrated(loss.method)].sort_values(["nonembedding_params", "tokens"], na_position="first")
        checkpoint = ordered.checkpoint.iloc[-1] if len(ordered) else calibrated.checkpoint.iloc[0]
    chosen = calibrated[calibrated.checkpoint == checkpoint].drop_duplicates("job_key")
    if chosen.empty:
        known = ", ".join(sorted(calibrated.checkpoint.unique()))
        names = ", ".join(sorted(calibrated.method.unique()))
        raise UserError(
            f"no results of a calibrated method ({names}) for checkpoint {checkpoint!r}; they ran on: {known}"
        )
    layers = {}
    varied = [c for c in METHOD_OPTIONS if c in chosen and chosen[c].astype(str).nunique() > 1]  # where they vary
    for row in chosen.sort_values(["bits", "group_size"]).itertuples():
        grid = granularity(int(row.group_size))
        shown = plots.config_label(row.method, grid, bool(row.symmetric), getattr(row, "format", INT))
        label = f"{int(row.bits)}-bit " + shown
        label += "".join(f" {c}={getattr(row, c)}" for c in varied)
        layers[label] = json.loads(row.provenance).get("quant_report", {}).get("layers", [])
    return Section("Per-layer error of the calibrated methods", figures=[plots.layer_errors(layers, checkpoint)])


def _coverage_section(results: pd.DataFrame) -> Section:
    """What each method quantized of each checkpoint (the same for every bit width and grid)."""
    columns = ["checkpoint", "method", "quantized_matrices", "quantized_params", "nonembedding_params"]
    rows = results.drop_duplicates([*columns, "coverage", "left_out_params"])
    table = pd.DataFrame(
        {
            "checkpoint": rows.checkpoint,
            "method": rows.method,
            "matrices": rows.quantized_matrices,
            "params quantized": rows.quantized_params,
            "N": rows.nonembedding_params,
            "coverage": [coverage_label(f, n) for f, n in zip(rows.coverage, rows.left_out_params, strict=True)],
        }
    )
    note = (
        "Quantized parameters as a share of N (the non-embedding parameters; norms and biases make up the rest). "
        "Embeddings, the output head and MoE routers stay in full precision by default; weights left out "
        "otherwise are flagged, and the release gate never passes them."
    )
    return Section("Coverage", [note], [Table("Weights quantized per checkpoint and method", table)])


def _provenance(frame: pd.DataFrame) -> Table:
    records = []
    for text, job in zip(frame.provenance, frame.job_key, strict=True):
        details = json.loads(text)
        corpus = details.get("eval_corpus", {})
        record = {key: details.get(key) for key in PROVENANCE}
        record["eval corpus"] = f"{corpus.get('corpus', '')}:{corpus.get('split', '')}"
        record["corpus sha256"] = str(corpus.get("sha256", ""))[:16]
        records.append(record | {"job": job})
    table = pd.DataFrame(records)
    columns = [c for c in table.columns if c != "job"]
    counted = table.groupby(columns, dropna=False).job.nunique().rename("jobs").reset_index()
    return Table("What produced the numbers (one row per distinct setting)", counted)


PERCENTILES_SHOWN = ("mean", "p99.9", "p99", "p95", "p90", "p50")  # of KLD, as llama.cpp prints them


def _percentiles(frame: pd.DataFrame) -> Table | None:
    """KLD and Δp over the tokens (the job's details), per eval and config, at the largest model's most
    over-trained checkpoint."""
    rows = frame[(frame.metric == "kld") & frame.tokens_per_param.notna()]
    if rows.empty:
        return None
    largest = rows[rows.nonembedding_params == rows.nonembedding_params.max()]
    checkpoint = largest.loc[largest.tokens_per_param.idxmax(), "checkpoint"]
    records = []
    for row in largest[largest.checkpoint == checkpoint].itertuples():
        found = json.loads(row.provenance).get("distribution", {})
        if "kld" not in found:
            continue
        record = {"eval": row.eval, "method": row.method, "format": getattr(row, "format", None) or INT,
                  "bits": int(row.bits), "granularity": granularity(int(row.group_size))}  # fmt: skip
        record |= {f"KLD {name}": f"{found['kld'][name]:#.3g}" for name in PERCENTILES_SHOWN}
        record |= {f"Δp {name}": f"{found['delta_p'][name]:#.3g}" for name in ("rms", "p1", "p99")}
        records.append(record)
    if not records:
        return None
    table = pd.DataFrame(records).sort_values(["eval", "method", "format", "granularity", "bits"])
    ratio = largest.loc[largest.checkpoint == checkpoint, "tokens_per_param"].iloc[0]
    title = f"KLD and Δp over the tokens at {checkpoint} (D/N {ratio:.3g}), the percentiles llama.cpp prints"
    return Table(title, table.drop_duplicates())


def _beside_section(results: pd.DataFrame, frame: pd.DataFrame) -> Section | None:
    """KLD, top-1 agreement, Δp and flips beside δ: what a mean hides (changes that cancel); and how KLD and Δp
    spread over the tokens."""
    tables = [Table(f"{name}: beside δ (each a value with its 95% CI)", table) for name, table in beside_delta(results)]
    spread = _percentiles(frame)
    tables += [spread] if spread is not None else []
    if not tables:
        return None
    paragraphs = [
        "A mean δ nets changes that cancel; these do not. KLD: KL(p_fp ‖ p_q) per token, over the full vocabulary "
        "(nats); top-1 agree: the share of tokens whose most likely next token is unchanged; Δp: the change in "
        "the probability of the actual next token (mean, and root mean square); flips: documents whose answer went "
        "from right to wrong or back (≥ |Δacc|), all flips: whose chosen answer changed at all; choice KLD: the "
        "divergence of the distribution over a document's choices. The full-precision model against itself scores "
        "KLD 0, agreement 1, Δp 0 and no flips."
    ]
    return Section("Beyond the mean: distributions and answers", paragraphs, tables=tables)


def _results_tables(results: pd.DataFrame) -> list[Table]:
    tables = []
    for (name, metric), rows in results.groupby(["eval", "metric"], sort=False):
        tables.append(Table(f"{name}: {metric} (δ with 95% CI)", summary_table(rows, metric)))
    return tables


def _figure_sections(losses: dict, kumar: list) -> list[Section]:
    """δ against D/N with the fits, the δ heat map and the loss through training, for each fitted loss."""
    degradation, training = [], []
    for (name, metric), loss in losses.items():
        unit = nats_label(metric)
        fits = [fit for fit in kumar if (fit.key.eval, fit.key.metric) == (name, metric)]
        suffix = _suffix(losses, name, metric)
        degradation += [
            plots.delta_vs_tokens_per_param(loss, fits, unit, f"delta_vs_tokens_per_param{suffix}"),
            plots.delta_heatmap(loss, unit, f"delta_heatmap{suffix}"),
        ]
        if facts_of(metric).full_precision:  # KLD and flips have no full-precision value to follow
            training.append(plots.loss_through_training(loss, unit, f"loss_through_training{suffix}"))
    return [
        Section("Degradation against tokens per parameter", figures=degradation),
        Section("Loss through training", figures=training),
    ]


def _headline_config(loss: pd.DataFrame, kumar: list) -> tuple[str, pd.DataFrame, LawFit | None]:
    """One quant config's title (method options named where they vary, as in the figures), its rows with D > 0
    and the fit of exactly those rows among `kumar`: RTN per channel when measured (the integer grid before other
    formats), else the first (symmetric grids before asymmetric ones).
    No rows when D is unknown or zero for every checkpoint."""
    known = loss[loss.tokens_per_param > 0]
    if known.empty:
        return "", known, None
    configs = plots.quant_configs(known)
    preference = [
        (
            r.method.iloc[0] == "rtn" and r.granularity.iloc[0] == "channel",
            r.get("format", pd.Series([INT])).iloc[0] == INT,
            bool(r.symmetric.iloc[0]),
        )
        for _, r in configs
    ]
    title, rows = configs[preference.index(max(preference))]
    return title, rows, next((f for f in kumar if f.key.matches(rows).all()), None)


def _most_overtrained(rows: pd.DataFrame) -> pd.DataFrame:
    """The rows of the largest model's most over-trained checkpoint, by bit width (of two ladders reaching the
    same N and D/N: the annealed one, else the first named)."""
    largest = rows[rows.nonembedding_params == rows.nonembedding_params.max()]
    top = largest[largest.tokens_per_param == largest.tokens_per_param.max()]
    if "decay_done" in top:
        top = top.sort_values(["decay_done", "checkpoint"], ascending=[False, True], na_position="last")
    return top[top.checkpoint == top.checkpoint.iloc[0]].sort_values("bits")


def _shown_bits(options: ReportOptions, measured) -> int:
    """The bit width a figure or sentence shows: the report's, when measured, else the smallest measured."""
    widths = {int(b) for b in measured}
    return options.bits if options.bits in widths else min(widths)


def _headline(title: str, last: pd.DataFrame, fit: LawFit | None, bits: int, unit: str, budget: float) -> list[str]:
    """The study's finding in a sentence, from the data: how δ grows with D at `bits` for the quant config
    `title` names, and what it costs at its most over-trained checkpoint `last` (rows by bit width); then δ
    per bit width there, and the smallest width within the budget."""
    at = last[last.bits == bits].iloc[0]
    label = f"{bits}-bit {title}"
    if not math.isfinite(at.delta):
        return [f"{label}: at its most over-trained checkpoint of the largest model ({at.checkpoint}, D/N "
                f"{at.tokens_per_param:.0f}) δ is not finite: the quantized model's {unit} overflowed or is NaN; "
                "see the results below."]  # fmt: skip
    cost = (
        f"at D/N {at.tokens_per_param:.0f} (N = {at.nonembedding_params:,.0f}) it costs δ = {at.delta:#.3g} "
        f"[{at.delta_ci_low:#.3g}, {at.delta_ci_high:#.3g}] in {unit} (measured)"
    )
    if fit is not None:
        gamma = fit.table().set_index("parameter").loc["gamma_D"]
        grows = f"δ grows as D^{gamma.value:.2f} [{gamma.ci_low:.2f}, {gamma.ci_high:.2f}] at fixed N"
        sentence = f"{label}: {grows}; {cost}."
    else:
        sentence = f"{label}: {cost}; no scaling law could be fitted to this config (see the fits below)."
    within = last[last.delta_ci_high <= budget].bits
    verdict = (
        f"the smallest bit width whose δ CI stays within {budget:g} {unit} there: {int(within.min())}"
        if len(within)
        else f"no measured bit width keeps δ within {budget:g} {unit} there"
    )
    by_width = "; ".join(f"{r.bits} bits {r.delta:#.3g} [{r.delta_ci_low:#.3g}, {r.delta_ci_high:#.3g}]"
                         for r in last.itertuples())  # fmt: skip
    note = f"At that checkpoint ({at.checkpoint}), {title}, δ by bit width: {by_width}; {verdict}."
    return [sentence, note]


def _summary_section(losses: dict, kumar: list, options: ReportOptions) -> Section:
    """The first screen: the finding, the gate-relevant numbers and the one figure that shows them."""
    (name, metric), loss = next(iter(losses.items()))
    unit = nats_label(metric)
    title, rows, fit = _headline_config(loss, [f for f in kumar if (f.key.eval, f.key.metric) == (name, metric)])
    if rows.empty:
        paragraphs = ["D is unknown or zero for every checkpoint, so no growth with D can be shown; the results "
                      "are below."]  # fmt: skip
        return Section("Summary", paragraphs)
    last = _most_overtrained(rows)
    bits = _shown_bits(options, last.bits)
    paragraphs = _headline(title, last, fit, bits, unit, options.budget)
    if len(losses) > 1:
        paragraphs.append(f"For {name}: {metric}; the other evals are in the sections below.")
    figure = plots.headline_delta(title, rows, fit, bits, unit)
    if figure is None:
        paragraphs.append(f"No {bits}-bit δ is above zero and no law was fitted, so there is no figure to draw.")
    return Section("Summary", paragraphs, figures=[figure] if figure else [])


def report_digest(study: Study, store: Store, options: ReportOptions) -> str:
    """What a study's report is a function of: the study, every stored row of its jobs (with their provenance),
    the options, ptq-eval's code and the plotting library; an unchanged digest means an unchanged report."""
    digest = hashlib.sha256()
    for source in sorted(Path(__file__).resolve().parents[1].rglob("*.py")):  # the package
        digest.update(source.read_bytes())
    keys = sorted(job.key for job in expand_jobs(study))  # the jobs a glob or family expands to, done or not
    versions = {module.__name__: module.__version__ for module in (matplotlib, np, pd, scipy)}
    head = {"study": study.model_dump(mode="json"), "options": asdict(options), "versions": versions,
            "jobs": keys, "finished": sorted(store.finished(keys))}  # fmt: skip
    digest.update(json.dumps(head, sort_keys=True).encode())
    digest.update(store.frame(keys).to_csv(index=False).encode())
    return digest.hexdigest()


def study_report(study: Study, store: Store, options: ReportOptions = ReportOptions(),
                 progress: Progress | None = None) -> Document:  # fmt: skip
    """Every section of a study's report, from what the store holds now; `progress` hears of each fit estimated."""
    jobs = expand_jobs(study)
    results = study_results(study, store)
    if results.empty:
        raise UserError(f"the store {store.path} has no results for study {study.name!r}: run the study first")
    frame = store.frame(job.key for job in jobs)
    losses, skipped = _losses(results)
    finished = len(store.finished(job.key for job in jobs))
    sections = [_overview(study, results, len(jobs), finished, losses, skipped)]
    if losses:
        fit_sections, kumar = _fits_sections(results, losses, skipped, options, store, progress)
        degradation, training = _figure_sections(losses, kumar)
        sections.insert(0, _summary_section(losses, kumar, options))
        sections += [degradation, training]
        layer_section = _layer_section(frame, next(iter(losses.values())), options)
        sections += ([layer_section] if layer_section else []) + fit_sections
    beside = _beside_section(results, frame)
    sections += [beside] if beside else []
    sections.append(Section("Results", tables=_results_tables(results)))
    sections.append(_coverage_section(results))
    sections.append(Section("Provenance", tables=[_provenance(frame)]))
    return Document(f"ptq-eval report: {study.name}", sections)
