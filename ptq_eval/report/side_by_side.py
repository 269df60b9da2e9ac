"""The report's comparisons of configs side by side — number formats, and methods (rotations included): each
config's precision P (bits per weight, scales counted), its damage at the most over-trained point measured, how
fast that damage grows with D/N (γ_D), and (methods) whether it bends."""

from __future__ import annotations

import math

import pandas as pd

from ptq_eval.fit import LawFit
from ptq_eval.fit.breaks import break_support
from ptq_eval.fit.laws import BROKEN_LAWS
from ptq_eval.quant import INT, METHOD_OPTIONS, rounds_weights
from ptq_eval.report import plots
from ptq_eval.report.document import Section, Table

# Formats at or below this many bits per weight compete with INT4 (FP4 e2m1, MXFP4, NVFP4, INT4 with groups).
FOUR_BIT_CLASS = 4.5


def _interval(value: float, low: float, high: float) -> str:
    if math.isnan(value):
        return ""
    bounds = "" if math.isnan(low) else f" [{low:.3g}, {high:.3g}]"
    return f"{value:.3g}{bounds}"


def _gamma_d(fits: list[LawFit], rows: pd.DataFrame, precision: float) -> tuple[tuple[float, float, float], str]:
    """γ_D with its 95% interval (value, low, high), and the law it came from: Kumar et al.'s where it was fitted
    (several bit widths), else the per-bit law's exponent of D at this P ((nan, nan, nan), "not fitted":
    neither)."""
    own = [fit for fit in fits if fit.key.matches(rows).all()]
    for name, parameter in (("kumar", "gamma_D"), ("per_bit", f"a_P{precision:g}")):
        for fit in (fit for fit in own if fit.law.name == name):
            table = fit.table().set_index("parameter")
            if parameter in table.index:
                row = table.loc[parameter]
                return (float(row.value), float(row.ci_low), float(row.ci_high)), name
    return (math.nan, math.nan, math.nan), "not fitted"


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
                "γ_D [95% CI]": _interval(*gamma),
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


def _varied_options(loss: pd.DataFrame) -> dict[str, list[str]]:
    """Per method, the options other than the rotation whose values differ between its rows (named in labels, so
    two configs of one method never share a line)."""
    found = {}
    for method, rows in loss.groupby("method"):
        found[method] = [c for c in METHOD_OPTIONS if c in rows and c != "rotation" and rows[c].notna().any()
                         and rows[c].astype(str).nunique() > 1]  # fmt: skip
    return found


def _rotation(rows: pd.DataFrame) -> str:
    rotation = rows.iloc[0].get("rotation") if "rotation" in rows else None
    return "" if not isinstance(rotation, str) or rotation == "none" else f" + {rotation}"


def _bends(fits: list[LawFit], rows: pd.DataFrame) -> str:
    """The broken-law check of the config's key: whether a bend in D/N (or D) is supported, and why not."""
    own = [fit for fit in fits if fit.key.matches(rows).all()]
    verdicts = [break_support(fit, fits) for fit in own if fit.law.name in BROKEN_LAWS]
    if not verdicts:
        return "not fitted"
    supported = [verdict for verdict in verdicts if verdict.supported]
    if supported:
        found = supported[0]
        axis = "D/N" if found.fit.law.name == "broken_dn" else "D"
        return f"yes, in {axis}: γ_D {found.before.value:.3g} → {found.after.value:.3g}"
    return "no"


def _slowest(granularity: str, found: dict[str, tuple[float, float, float]]) -> str:
    """Which method's γ_D is lowest, and whether its interval leaves the others' (a resolved ranking) or not."""
    ranked = sorted(found.items(), key=lambda item: item[1][0])
    name, (_, _, high) = ranked[0]
    listed = ", ".join(f"{other} {_interval(*gamma)}" for other, gamma in ranked)
    overlapping = [other for other, (_, low, _) in ranked[1:] if math.isnan(high) or math.isnan(low) or low <= high]
    verdict = (
        f"its interval overlaps those of {', '.join(overlapping)}: at 95% the data do not tell these apart"
        if overlapping
        else "its interval lies below every other's"
    )
    return f"Damage grows slowest with D/N ({granularity}): {name} (γ_D: {listed}); {verdict}."


def methods_section(loss: pd.DataFrame, fits: list[LawFit], unit: str) -> Section | None:
    """One row per (method, rotation, granularity, bits) of one loss: δ at the most over-trained point of the
    largest model, γ_D with its interval, whether δ bends; which method's damage grows slowest with D/N and which
    loses least there. None unless the study has several methods or rotations on one format."""
    fmt = loss.format if "format" in loss else pd.Series("int", index=loss.index)
    variants = loss.method + loss.get("rotation", pd.Series("none", index=loss.index)).fillna("none").astype(str)
    if variants.nunique() < 2 or fmt.nunique() > 1:
        return None
    largest = loss[loss.nonembedding_params == loss.nonembedding_params.max()]
    ratio = largest.tokens_per_param.max()
    config = [c for c in (*plots.CONFIG, *METHOD_OPTIONS) if c in loss and loss[c].notna().any()]
    varied = _varied_options(loss)
    rows, growth, damage = [], {}, {}
    for _, own in loss.groupby([*config, "bits"], sort=True, dropna=False):
        first = own.iloc[0]
        name = f"{first.method}{_rotation(own)}" + "".join(f" {c}={first[c]}" for c in varied[first.method])
        point = own[(own.nonembedding_params == largest.nonembedding_params.iloc[0]) & (own.tokens_per_param == ratio)]
        gamma, law = _gamma_d(fits, own[own.bits == first.bits], float(first.bits_per_weight))
        label = f"{int(first.bits)}-bit {first.granularity}" + ("" if first.symmetric else " asym")
        rows.append(
            {
                "method": name,
                "bits, grid": label,
                f"δ at D/N {ratio:g} [95% CI]": ""
                if point.empty
                else _interval(point.iloc[0].delta, point.iloc[0].delta_ci_low, point.iloc[0].delta_ci_high),
                "γ_D [95% CI]": _interval(*gamma),
                "γ_D from": law,
                "bends?": _bends(fits, own),
            }
        )
        if not math.isnan(gamma[0]):
            growth.setdefault(first.granularity, {})[name] = gamma
        if not point.empty:
            damage.setdefault(label, []).append((float(point.iloc[0].delta), name))
    paragraphs = [
        f"Each method on the same checkpoints, calibration tokens and grids; δ is {unit} at the largest model "
        f"({plots.size_label(largest.nonembedding_params.iloc[0])}) and its most over-trained checkpoint (D/N "
        f"{ratio:g}); γ_D is how fast δ grows with D at fixed N and P (δ ∝ D^γ_D), Kumar et al.'s where several bit "
        "widths were fitted; 'bends?' is the broken-law check of the config (supported: the slope changes and the "
        "broken law predicts held-out checkpoints better)."
    ]
    for granularity, found in growth.items():
        paragraphs.append(_slowest(granularity, found))
    for label, found in damage.items():
        least = min(found)
        paragraphs.append(f"At D/N {ratio:g}, {label}: {least[1]} loses least (δ {least[0]:.3g}).")
    return Section("Methods", paragraphs, [Table("Methods side by side", pd.DataFrame(rows))])


def _component(row: pd.Series) -> str:
    """What a config rounds, by component: weights, activations, KV cache, or several joined with +."""
    parts = ["weights"] if rounds_weights(row.method) else []
    parts += [name for column, name in (("activations", "activations"), ("kv_cache", "KV cache"))
              if isinstance(row.get(column), str) and row[column]]  # fmt: skip
    return " + ".join(parts)


def components_section(loss: pd.DataFrame, fits: list[LawFit], unit: str) -> Section | None:
    """One row per fitted config of one loss, by what it rounds (weights, activations, KV cache): P, δ at the most
    over-trained point of the largest model, γ_D with its interval; whose damage grows fastest with D/N. None
    unless the study rounds activations or the KV cache."""
    rounds = [c for c in ("activations", "kv_cache") if c in loss and (loss[c].fillna("") != "").any()]
    if not rounds:
        return None
    largest = loss[loss.nonembedding_params == loss.nonembedding_params.max()]
    ratio = largest.tokens_per_param.max()
    rows, growth = [], {}
    for key in dict.fromkeys(fit.key for fit in fits):
        own = loss[key.matches(loss)]
        if own.empty:
            continue
        first = own.iloc[0]
        grid = plots.config_label(first.method, first.granularity, bool(first.symmetric), first.get("format", INT))
        name, component = plots.precision_label(first, grid), _component(first)
        widths = sorted(own.bits_per_weight.unique())
        gamma, law = _gamma_d(fits, own, float(widths[0]))
        lowest = own[own.bits_per_weight == widths[0]]
        point = lowest[(lowest.nonembedding_params == largest.nonembedding_params.iloc[0])
                       & (lowest.tokens_per_param == ratio)]  # fmt: skip
        rows.append({
            "rounds": component, "config": name, "P (bits per value)": ", ".join(f"{w:g}" for w in widths),
            f"δ at D/N {ratio:g}, lowest P [95% CI]": "" if point.empty else _interval(
                point.iloc[0].delta, point.iloc[0].delta_ci_low, point.iloc[0].delta_ci_high),
            "γ_D [95% CI]": _interval(*gamma), "γ_D from": law,
        })  # fmt: skip
        if not math.isnan(gamma[0]):
            growth[name if component != "weights" else f"weights {name}"] = gamma
    paragraphs = [
        f"Each component's law fitted on its own: a config keeping its weights (fp) is fitted with P the bits of "
        f"what it rounds (activations, else the KV cache); a config rounding weights with P its bits per weight, "
        f"its activation and KV precisions held in the key. δ is {unit} at the largest model's most over-trained "
        f"checkpoint (D/N {ratio:g}) at the config's lowest P; γ_D: δ ∝ D^γ_D at fixed N and P."
    ]
    if growth:
        ranked = sorted(growth.items(), key=lambda item: -item[1][0])
        name, (_, low, _) = ranked[0]
        behind = [other for other, (_, _, high) in ranked[1:] if math.isnan(low) or math.isnan(high) or high >= low]
        verdict = (f"its interval overlaps those of {', '.join(behind)}: at 95% the data do not order them"
                   if behind else "its interval lies above every other's")  # fmt: skip
        listed = "; ".join(f"{other} {_interval(*gamma)}" for other, gamma in ranked)
        paragraphs.append(f"Damage grows fastest with D/N: {name} (γ_D: {listed}); {verdict}.")
    return Section(
        "Weights, activations and KV cache", paragraphs, [Table("Components side by side", pd.DataFrame(rows))]
    )


def weights_alone(loss: pd.DataFrame) -> pd.Series:
    """Rows of configs that round nothing but weights (formats and methods compare those)."""
    alone = pd.Series(True, index=loss.index)
    for column in ("activations", "kv_cache"):
        if column in loss:
            alone &= loss[column].fillna("") == ""
    return alone
