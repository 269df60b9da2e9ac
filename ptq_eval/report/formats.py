"""The report's comparison of number formats: each config's precision P (bits per weight, scales counted), its
damage at the most over-trained point measured, and how fast that damage grows with D/N (γ_D)."""

from __future__ import annotations

import math

import pandas as pd

from ptq_eval.fit import LawFit
from ptq_eval.report import plots
from ptq_eval.report.document import Section, Table

# Formats at or below this many bits per weight compete with INT4 (FP4 e2m1, MXFP4, NVFP4, INT4 with groups).
FOUR_BIT_CLASS = 4.5


def _interval(value: float, low: float, high: float) -> str:
    if math.isnan(value):
        return ""
    bounds = "" if math.isnan(low) else f" [{low:.3g}, {high:.3g}]"
    return f"{value:.3g}{bounds}"


def _gamma_d(fits: list[LawFit], rows: pd.DataFrame, precision: float) -> tuple[str, str]:
    """γ_D with its interval, and the law it came from: Kumar et al.'s where it was fitted (several bit widths),
    else the per-bit law's exponent of D at this P."""
    own = [fit for fit in fits if fit.key.matches(rows).all()]
    for name, parameter in (("kumar", "gamma_D"), ("per_bit", f"a_P{precision:g}")):
        for fit in (fit for fit in own if fit.law.name == name):
            table = fit.table().set_index("parameter")
            if parameter in table.index:
                row = table.loc[parameter]
                return _interval(float(row.value), float(row.ci_low), float(row.ci_high)), name
    return "", "not fitted"


def formats_section(loss: pd.DataFrame, fits: list[LawFit], unit: str) -> Section | None:
    """One row per (method, format, granularity, bits) of one loss; None unless the study has several formats."""
    if "format" not in loss or loss.format.nunique() < 2:
        return None
    largest = loss[loss.nonembedding_params == loss.nonembedding_params.max()]
    ratio = largest.tokens_per_param.max()
    rows, at_target = [], []
    config = [c for c in (*plots.CONFIG, "bits") if c in loss]
    for _, own in loss.groupby(config, sort=True, dropna=False):
        first = own.iloc[0]
        precision = float(first.bits_per_weight)
        point = own[(own.nonembedding_params == largest.nonembedding_params.iloc[0]) & (own.tokens_per_param == ratio)]
        delta = point.iloc[0] if len(point) else None
        gamma, law = _gamma_d(fits, own[own.bits == first.bits], precision)
        label = f"{first.method} {first.format} {first.granularity}" + ("" if first.symmetric else " asym")
        rows.append(
            {
                "config": f"{int(first.bits)}-bit {label}",
                "bits per weight (P)": f"{precision:g}",
                f"δ at D/N {ratio:g} [95% CI]": ""
                if delta is None
                else _interval(delta.delta, delta.delta_ci_low, delta.delta_ci_high),
                "γ_D [95% CI]": gamma,
                "γ_D from": law,
            }
        )
        if delta is not None:
            at_target.append((float(delta.delta), precision, rows[-1]["config"]))
    paragraphs = [
        f"Each config's precision P counts its scales (`quant/formats.py`: INT4 in groups of 128 is 4.125 bits "
        f"per weight, NVFP4 4.5, MXFP4 4.25), so every format sits on the laws' one P axis. δ is {unit} at the "
        f"largest model ({plots.size_label(largest.nonembedding_params.iloc[0])}) and its most over-trained "
        "checkpoint; γ_D is how fast δ grows with D (δ ∝ D^γ_D at fixed N and P)."
    ]
    if at_target:
        least = min(at_target)
        paragraphs.append(f"At D/N {ratio:g}, {least[2]} degrades least (δ {least[0]:.3g} at P = {least[1]:g}).")
        four_bit = [entry for entry in at_target if entry[1] <= FOUR_BIT_CLASS]
        if four_bit and min(four_bit) != least:
            best = min(four_bit)
            paragraphs.append(
                f"Among configs at ≤ {FOUR_BIT_CLASS:g} bits per weight, {best[2]} degrades least "
                f"(δ {best[0]:.3g} at P = {best[1]:g})."
            )
    return Section("Number formats", paragraphs, [Table("Formats side by side", pd.DataFrame(rows))])
