"""The report's figures, drawn with matplotlib's object API (no pyplot state, no display needed)."""

from __future__ import annotations

import io
import os

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure as MplFigure

from ptq_eval.fit import LawFit
from ptq_eval.quant import INT, METHOD_OPTIONS, rounds_weights
from ptq_eval.quant.stored import ARTIFACT, ARTIFACT_OPTIONS
from ptq_eval.report.document import Figure
from ptq_eval.results import method_labels

CONFIG = ["method", "format", "group_size", "symmetric", "activations", "kv_cache"]
DPI = 100


def config_label(method: str, granularity: str, symmetric: bool = True, format: str = INT) -> str:
    shown = granularity if format == INT else f"{format} {granularity}"
    return f"{method} {shown}" + ("" if symmetric else " asym")


def precision_label(row: pd.Series, weights: str) -> str:
    """A config's label with what it rounds besides weights, e.g. `rtn channel + A int token 8b`; for a config
    keeping its weights (method fp) the weights are left out and what it rounds carries no bits (they are P)."""
    keeps = not rounds_weights(row.method)
    parts = [] if keeps else [weights]
    for column, shown, bits in (("activations", "A", "activation_bits"), ("kv_cache", "KV", "kv_bits")):
        if isinstance(row.get(column), str) and row[column]:
            axis = keeps and not (column == "kv_cache" and parts)  # fp: its first rounded component is P
            parts.append(f"{shown} {row[column]}" + ("" if axis else f" {row[bits]:g}b"))
    return " + ".join(parts)


def size_label(params: float) -> str:
    if params < 1e6:
        return f"N={params / 1e3:.0f}k"
    return f"N={params / 1e6:.3g}M" if params < 1e9 else f"N={params / 1e9:.3g}B"


def _png(figure: MplFigure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    return buffer.getvalue()


def _bit_colors(bits) -> dict[int, tuple]:
    values = sorted({int(b) for b in bits})
    cmap = colormaps["viridis"]
    return {b: cmap(i / max(1, len(values) - 1) * 0.9) for i, b in enumerate(values)}


def quant_configs(loss: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """(title, rows) per quant config, method options included where they differ (never pooled, as in the fits)."""
    config = [c for c in CONFIG if c in loss]  # results from before formats have no format
    grids = loss.groupby(config, dropna=False)
    options = [c for c in METHOD_OPTIONS if c in loss and (grids[c].nunique(dropna=False) > 1).any()]
    configs = []
    for _, rows in loss.groupby(config + options, sort=True, dropna=False):
        first = rows.iloc[0]
        label = config_label(first.method, first.granularity, bool(first.symmetric), first.get("format", INT))
        named = ()
        if first.method == ARTIFACT:  # a file by its type and its own name for its quantization
            label, named = f"{method_labels(rows.iloc[:1]).iloc[0]} {first.granularity}", ARTIFACT_OPTIONS
        label = precision_label(first, label)
        shown = "".join(f" {c}={first[c]}" for c in options if pd.notna(first[c]) and c not in named)
        configs.append((label + shown, rows))
    return configs


def _log_error_bars(points: pd.DataFrame) -> list[pd.Series]:
    """δ's 95% CI as error-bar lengths for a log axis (the lower bar cut at δ/10)."""
    low = (points.delta - points.delta_ci_low.clip(lower=points.delta / 10)).clip(lower=0)
    return [low, (points.delta_ci_high - points.delta).clip(lower=0)]


def _censored(points: pd.DataFrame) -> pd.Series:
    """Points whose δ CI reaches zero, which the fit treats as censored (drawn hollow); a missing CI is not."""
    return points.delta_ci_low <= 0


def precision(rows: pd.DataFrame, bits: int) -> float:
    """The law's P for rows of one config at `bits`: their bits per weight (`quant/formats.py`), or the bits
    where the results do not say (a results CSV from before formats)."""
    own = rows[rows.bits == bits]
    return float(own.bits_per_weight.iloc[0]) if "bits_per_weight" in own and len(own) else float(bits)


def _draw_band(ax, fit: LawFit, params: float, ratios: pd.Series, bits: float, color, label: str | None = None) -> None:
    """The fitted law at N = `params` and P = `bits` with its 95% band, over the span of the positive `ratios` (D/N)
    and a little; nothing when there is none (an untrained checkpoint has D/N = 0)."""
    ratios = ratios[ratios > 0]
    if ratios.empty:
        return
    span = np.geomspace(ratios.min() / 1.5, ratios.max() * 1.5, 60)
    value, low, high = fit.band(params, params * span, bits)
    ax.plot(span, value, color=color, lw=1.2, label=label)
    ax.fill_between(span, low, high, color=color, alpha=0.15, lw=0)


def delta_vs_tokens_per_param(loss: pd.DataFrame, fits: list[LawFit], unit: str = "loss (nats/token)",
                              name: str = "delta_vs_tokens_per_param") -> Figure:  # fmt: skip
    """δ against D/N (log–log) per bit width: one row of panels per config, one column per model size;
    measured points with their 95% CIs, and the fitted law (the one of `fits` whose key covers the config's
    rows) with its 95% bootstrap band where there is one. `loss` holds one eval and metric, in nats."""
    configs, sizes = quant_configs(loss), sorted(loss.nonembedding_params.unique())
    colors = _bit_colors(loss.bits)
    figure = MplFigure(figsize=(4.2 * len(sizes), 3.3 * len(configs)), layout="constrained")
    axes = figure.subplots(len(configs), len(sizes), squeeze=False, sharex=True)
    hidden = 0
    for row, (title, rows) in enumerate(configs):
        fit = next((fit for fit in fits if fit.key.matches(rows).all()), None)
        for col, params in enumerate(sizes):
            ax = axes[row][col]
            for bits, points in rows[rows.nonembedding_params == params].groupby("bits"):
                points = points.sort_values("tokens_per_param")
                shown = points[(points.delta > 0) & (points.tokens_per_param > 0)]
                hidden += len(points) - len(shown)
                color = colors[int(bits)]
                for significant, own in shown.groupby(~_censored(shown)):
                    ax.errorbar(own.tokens_per_param, own.delta, yerr=_log_error_bars(own), fmt="o", ms=4, capsize=2,
                                color=color, mfc=color if significant else "white",
                                label=f"{int(bits)}-bit" if significant else None)  # fmt: skip
                if fit is not None:
                    _draw_band(ax, fit, params, points.tokens_per_param, precision(points, bits), color)
            ax.set(xscale="log", yscale="log", title=f"{title}, {size_label(params)}")
            if row == len(configs) - 1:
                ax.set_xlabel("tokens per parameter D/N")
            if col == 0:
                ax.set_ylabel(f"δ {unit}")
        axes[row][-1].legend(fontsize=8, loc="lower right")
    caption = (
        f"Increase δ of {unit} from quantization against tokens per parameter, log–log, with 95% CIs (hollow: "
        "the CI reaches zero, so a fit treats δ as censored: known only to lie below its detection limit; "
        "lower bars cut at δ/10)"
        + ("; lines: the fitted Kumar et al. law with its 95% bootstrap band." if fits else "; no law was fitted.")
    )
    if hidden:
        caption += f" {hidden} points with δ ≤ 0 or D unknown or 0 cannot be drawn on a log axis and are not shown."
    return Figure(name, _png(figure), caption)


SCHEDULE_MARKERS = {"wsd": "o", "cosine": "^"}
OTHER_MARKERS = ("s", "D", "v", "P", "X")


def schedule_markers(schedules) -> dict[str, str]:
    """A distinct marker per learning-rate schedule: WSD and cosine their own, any other (or unknown, "") the
    next of OTHER_MARKERS."""
    others = iter(OTHER_MARKERS * 4)
    return {s: SCHEDULE_MARKERS[s] if s in SCHEDULE_MARKERS else next(others) for s in sorted(set(schedules))}


def headline_delta(title: str, rows: pd.DataFrame, fit: LawFit | None, bits: int, unit: str = "loss (nats/token)",
                   name: str = "headline_delta") -> Figure | None:  # fmt: skip
    """The summary's figure: δ against D/N (log–log) at one bit width for one quant config's `rows` (`title`
    names it), one colour per model size, measured points with their 95% CIs and `fit` (when there is one)
    with its 95% band; None when there is nothing to draw (no fit and no δ > 0)."""
    points = rows[(rows.bits == bits) & (rows.tokens_per_param > 0)]
    schedules = points.schedule.fillna("") if "schedule" in points else pd.Series("", index=points.index)
    markers = schedule_markers(schedules)
    several = len(markers) > 1
    sizes = sorted(points.nonembedding_params.unique())
    if fit is None and not (points.delta > 0).any():
        return None
    cmap = colormaps["plasma"]
    figure = MplFigure(figsize=(7.6, 4.0), layout="constrained")
    ax = figure.subplots()
    for i, params in enumerate(sizes):
        color = cmap(i / max(1, len(sizes) - 1) * 0.85)
        own = points.nonembedding_params == params
        drawn = False
        for schedule, marker in markers.items():  # one marker per learning-rate schedule where there are several
            shown = points[own & (schedules == schedule) & (points.delta > 0)]
            label = size_label(params) + (f", {schedule or 'unknown'}" if several else "")
            for j, (censored, part) in enumerate(shown.groupby(_censored(shown), sort=True)):  # filled first
                ax.errorbar(part.tokens_per_param, part.delta, yerr=_log_error_bars(part), capsize=2, ms=5, ls="none",
                            marker=marker, color=color, mfc="white" if censored else color,
                            label=None if j else label)  # fmt: skip
                drawn = True
        if fit is not None:  # the band carries the size's legend entry when none of its points could be drawn
            _draw_band(ax, fit, params, points[own].tokens_per_param, precision(points, bits), color,
                       label=None if drawn else size_label(params))  # fmt: skip
    title = f"{bits}-bit {title}"
    ax.set(xscale="log", yscale="log", xlabel="tokens per parameter D/N", ylabel=f"δ {unit}", title=title)
    ax.legend(fontsize=8, title="model size" + (", schedule" if several else ""), title_fontsize=8,
              loc="upper left", bbox_to_anchor=(1.01, 1))  # fmt: skip
    hidden = int((points.delta <= 0).sum())
    caption = (
        f"{title}: increase δ of {unit} from quantization against tokens per parameter, one colour per model size"
        + (", one marker per learning-rate schedule" if several else "")
        + ", with 95% CIs (lower bars cut at δ/10"
        + (
            "; hollow: the CI reaches zero, so the fit treats δ as censored); lines: the fitted Kumar et al. law "
            "with its 95% bootstrap band."
            if fit is not None
            else "; hollow: the CI reaches zero)."
        )  # fmt: skip
        + " Every config, bit width and size: under Degradation against tokens per parameter."
    )
    if hidden:
        caption += f" {hidden} points with δ ≤ 0 cannot be drawn on a log axis and are not shown."
    return Figure(name, _png(figure), caption)


def delta_by_phase(loss: pd.DataFrame, fits: list[LawFit], bits: int, unit: str = "loss (nats/token)",
                   name: str = "delta_by_phase") -> Figure:  # fmt: skip
    """δ against D/N at one bit width, coloured by how far the learning rate had decayed (decay_done), one
    marker per schedule: one row of panels per config, one column per model size. Dashed: the `phase` law
    (of `fits`) at each measured checkpoint, so a mid-decay run's curve bends with its phase."""
    loss = loss[(loss.bits == bits) & loss.decay_done.notna()]
    configs, sizes = quant_configs(loss), sorted(loss.nonembedding_params.unique())
    markers = schedule_markers(loss.schedule)
    cmap, norm = colormaps["plasma"], Normalize(0.0, 1.0)
    figure = MplFigure(figsize=(4.2 * len(sizes), 3.3 * len(configs)), layout="constrained")
    axes = figure.subplots(len(configs), len(sizes), squeeze=False, sharex=True)
    for row, (title, rows) in enumerate(configs):
        fit = next((fit for fit in fits if fit.key.matches(rows).all()), None)
        for col, params in enumerate(sizes):
            ax = axes[row][col]
            for schedule, points in rows[rows.nonembedding_params == params].groupby("schedule"):
                points = points.sort_values("tokens_per_param")
                marker = markers[schedule]
                shown = points[(points.delta > 0) & (points.tokens_per_param > 0)]
                ax.plot(shown.tokens_per_param, shown.delta, color="grey", lw=0.6)
                significant = (~_censored(shown)).to_numpy()
                colors = cmap(norm(shown.decay_done.to_numpy()))
                ax.scatter(shown.tokens_per_param, shown.delta, marker=marker, s=30, edgecolors=colors,
                           facecolors=np.where(significant[:, None], colors, 1.0), label=schedule)  # fmt: skip
                if fit is not None:
                    phase = points.decay_done.to_numpy()
                    predicted = fit.predict(params, points.tokens.to_numpy(), precision(points, bits), phase)
                    ax.plot(points.tokens_per_param, predicted, "--", color="black", lw=0.9)
            ax.set(xscale="log", yscale="log", title=f"{title}, {bits}-bit, {size_label(params)}")
            if row == len(configs) - 1:
                ax.set_xlabel("tokens per parameter D/N")
            if col == 0:
                ax.set_ylabel(f"δ {unit}")
        axes[row][-1].legend(fontsize=8, loc="lower right")
    figure.colorbar(ScalarMappable(norm, cmap), ax=axes.ravel().tolist(), label="decay_done", shrink=0.6)
    caption = (
        f"Increase δ of {unit} at {bits} bits against tokens per parameter, coloured by how far the learning rate "
        "had come down from its peak to its floor (decay_done: 1 annealed), circles WSD (every checkpoint "
        "annealed), triangles cosine (saved mid-decay), hollow where the CI reaches zero; dashed: the fitted "
        "phase law at each measured checkpoint. Where the same D/N sits lower mid-decay than annealed, the "
        "learning-rate phase, not the token count alone, drives the damage."
    )
    return Figure(name, _png(figure), caption)


def loss_through_training(loss: pd.DataFrame, unit: str = "loss (nats/token)",
                          name: str = "loss_through_training") -> Figure:  # fmt: skip
    """Full-precision and quantized loss against training tokens, one panel per model size and config."""
    configs, sizes = quant_configs(loss), sorted(loss.nonembedding_params.unique())
    colors = _bit_colors(loss.bits)
    figure = MplFigure(figsize=(4.2 * len(sizes), 3.1 * len(configs)), layout="constrained")
    axes = figure.subplots(len(configs), len(sizes), squeeze=False, sharex="col")
    for row, (title, rows) in enumerate(configs):
        for col, params in enumerate(sizes):
            ax, own = axes[row][col], rows[rows.nonembedding_params == params].sort_values("tokens")
            fp = own.drop_duplicates("checkpoint")
            ax.plot(fp.tokens, fp.fp_value, "k-o", ms=3, lw=1.6, label="full precision")
            for bits, points in own.groupby("bits"):
                ax.plot(
                    points.tokens, points.quant_value, "-o", ms=3, lw=1, color=colors[int(bits)], label=f"{bits}-bit"
                )
            ax.set(xscale="log", title=f"{title}, {size_label(params)}")
            if row == len(configs) - 1:
                ax.set_xlabel("training tokens D")
            if col == 0:
                ax.set_ylabel(unit)
        axes[row][-1].legend(fontsize=8)
    caption = (
        f"{unit[0].upper()}{unit[1:]} through training, full precision (black) and quantized: where a quantized "
        "curve turns upward, more pre-training made the quantized model worse."
    )
    return Figure(name, _png(figure), caption)


def short_names(names) -> dict[str, str]:
    """Checkpoint names without the directory prefix they all share."""
    names = list(names)
    prefix = os.path.commonpath(names) if len(names) > 1 and all("/" in n for n in names) else ""
    return {n: n[len(prefix) :].lstrip("/") or n for n in names}


def delta_heatmap(loss: pd.DataFrame, unit: str = "loss (nats/token)", name: str = "delta_heatmap") -> Figure:
    """δ over (checkpoint × bits), one panel per config (two per row); cells annotated with δ."""
    configs = quant_configs(loss)
    checkpoints = loss.sort_values(["nonembedding_params", "tokens"]).checkpoint.unique()
    labels = short_names(checkpoints)
    positive = loss.delta[loss.delta > 0]
    norm = LogNorm(positive.min(), positive.max()) if len(positive) else None
    columns = min(2, len(configs))
    rows_of_panels = -(-len(configs) // columns)
    width = 2.0 + 0.9 * loss.bits.nunique() * columns
    figure = MplFigure(figsize=(width, rows_of_panels * (1.0 + 0.26 * len(checkpoints))), layout="constrained")
    axes = figure.subplots(rows_of_panels, columns, squeeze=False).ravel()
    image = None
    for ax, (title, rows) in zip(axes, configs, strict=False):
        bits = sorted(rows.bits.unique())
        grid = rows.pivot_table(index="checkpoint", columns="bits", values="delta")
        grid = grid.reindex(index=checkpoints, columns=bits)  # a width NaN at every checkpoint keeps its column
        values = grid.to_numpy(dtype=float)
        image = ax.imshow(np.where(values > 0, values, np.nan), aspect="auto", cmap="magma_r", norm=norm)
        for (i, j), value in np.ndenumerate(values):
            if np.isfinite(value):
                ax.text(j, i, f"{value:.2g}", ha="center", va="center", fontsize=7,
                        color="white" if norm is not None and value > 0 and norm(value) > 0.6 else "black")  # fmt: skip
        ax.set_xticks(range(len(bits)), [str(int(b)) for b in bits])
        ax.set(xlabel="bits", title=title)
        ax.set_yticks(range(len(checkpoints)), [labels[c] for c in checkpoints], fontsize=7)
    for ax in axes[len(configs) :]:
        ax.set_visible(False)
    if image is not None and norm is not None:
        figure.colorbar(image, ax=list(axes), label=f"δ {unit}", shrink=0.6)
    caption = "δ for every checkpoint (rows, by N then D) and bit width; blank cells: δ ≤ 0 (no measured damage)."
    return Figure(name, _png(figure), caption)


def layer_errors(layers: dict[str, list[dict]], checkpoint: str) -> Figure:
    """Per-layer output error ‖WX − ŴX‖² / ‖WX‖² of each calibrated config (GPTQ, AWQ) on the calibration data,
    one bar group per layer."""
    names = list(dict.fromkeys(layer["name"] for entries in layers.values() for layer in entries))
    figure = MplFigure(
        figsize=(max(6.0, 0.45 * len(names) * max(1, len(layers)) ** 0.5 + 2), 4.2), layout="constrained"
    )
    ax = figure.subplots()
    width = 0.8 / max(1, len(layers))
    cmap = colormaps["tab10"]
    for i, (label, entries) in enumerate(layers.items()):
        errors = {layer["name"]: layer.get("output_error") for layer in entries}
        heights = [errors.get(name) or np.nan for name in names]
        ax.bar(np.arange(len(names)) + (i - (len(layers) - 1) / 2) * width, heights, width, label=label, color=cmap(i))
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=7)
    ax.set(yscale="log", ylabel="relative output error", title=f"Per-layer output error, {checkpoint}")
    ax.legend(fontsize=8)
    caption = (
        f"Reconstruction error ‖WX − ŴX‖² / ‖WX‖² per layer on the calibration tokens of each calibrated method "
        f"(GPTQ, AWQ: its inputs X come from the blocks before it, quantized), {checkpoint}."
    )
    return Figure("layer_errors", _png(figure), caption)


def delta_overlay(table: pd.DataFrame, labels: tuple[str, str]) -> Figure:
    """δ against bits for the two sides of a comparison, one panel per config (and eval metric)."""
    groups = list(table.groupby(["eval", "metric", "method", "granularity"], sort=True))
    figure = MplFigure(figsize=(4.2 * len(groups), 3.4), layout="constrained")
    axes = figure.subplots(1, len(groups), squeeze=False)[0]
    for ax, ((_, metric, method, granularity), rows) in zip(axes, groups, strict=True):
        ax.set_yscale("symlog", linthresh=1e-4)  # δ spans decades and may be negative
        for side, label, color, shift in (("a", labels[0], "tab:blue", -0.08), ("b", labels[1], "tab:orange", 0.08)):
            for checkpoint, own in rows.groupby("checkpoint", sort=True):
                own = own.sort_values("bits")
                delta = own[f"delta_{side}"]
                err = [(delta - own[f"ci_low_{side}"]).clip(lower=0), (own[f"ci_high_{side}"] - delta).clip(lower=0)]
                name = label if checkpoint == "" else f"{label}: {checkpoint}"
                ax.errorbar(own.bits + shift, delta, yerr=err, fmt="-o", ms=4, capsize=2, color=color, label=name)
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xticks(sorted(int(b) for b in rows.bits.unique()))
        ax.set(xlabel="bits", ylabel=f"δ {metric} (symlog)", title=f"{method} {granularity}")
    axes[-1].legend(fontsize=7)
    caption = f"δ with 95% CIs against bits: {labels[0]} (blue) and {labels[1]} (orange)."
    return Figure("compare_overlay", _png(figure), caption)
