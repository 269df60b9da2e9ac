"""Which results a fit sees: one fit per key (eval, metric, quant config), each loss in nats, and every point
measured, censored or excluded (with why).

Losses: `loss` (nats/token) as it is; `bits_per_byte` times ln 2 (nats/byte); `perplexity`, `byte_perplexity`,
`word_perplexity` as their logs (nats per token, byte or word: δ becomes log(1 + δ/fp) exactly, and so do its
CI bounds with fp held fixed, an approximation: their bootstrap ran on the perplexity scale, whose convexity
squeezes the lower bound towards δ). All five are one summed loss over one eval's text divided by a count, so
an eval (per lm-eval task and filter) has one of them fitted, the first present in that order; the others
are noted. KLD and flips are fitted as they are (evals/metrics.py says how a law reads each). Accuracies and
every other metric are reported, not fitted.

Points: δ > 0 with a CI above zero is measured; a CI reaching zero is censored at its detection limit
δ − CI_low (or, with `censoring="exclude"`, excluded); see `estimate.py` for why.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from ptq_eval.errors import UserError
from ptq_eval.evals.metrics import FITTED_METRICS, bare_name, facts_of
from ptq_eval.fit.laws import Points
from ptq_eval.quant import INT, METHOD_OPTIONS, QuantConfig, number_format, rounds_weights
from ptq_eval.quant.precision import ACTIVATIONS, BITS_COLUMNS, KV_CACHE, PRECISION_COLUMNS

KEY_FIELDS = ("eval", "metric", "method", "format", "group_size", "symmetric")
UNKNOWN_D = "tokens seen (D) unknown for this checkpoint"
CI_ZERO = "delta CI includes zero (delta_ci_low <= 0)"
CI_BELOW = "delta CI at or below zero (delta_ci_high <= 0): no bound on a positive delta"
NO_DAMAGE = "delta <= 0 or missing (no measured damage)"
VALUES = ("delta", "delta_ci_low", "delta_ci_high", "fp_value", "quant_value")


class FitError(UserError):
    """The data cannot identify the law; the message says what more to measure."""


def _nats(metric: str) -> tuple[str, str] | None:
    """How a law reads a metric's values and per what (evals/metrics.py); None: no law fits it."""
    facts = facts_of(metric)
    return facts.fitted if facts is not None else None


def nats_label(metric: str) -> str:
    """What a fitted metric's δ is, e.g. `loss (nats/token)`, `log word_perplexity (nats/word)`, `flips
    (fraction of documents)`."""
    kind, unit = _nats(metric)
    if kind == "fraction":
        return f"{metric} (fraction of {unit}s)"
    shown = {"nats": metric, "log": f"log {metric}", "bits": f"{metric} × ln 2"}[kind]
    return f"{shown} (nats/{unit})"


def _python(value):
    return value.item() if isinstance(value, np.generic) else value


@dataclass(frozen=True)
class FitKey:
    """What one fit covers: an eval, a metric and a quant config. As a filter, None matches any value;
    `options` are further quant config fields (act_order, sequential, ...) as (name, value) pairs."""

    eval: str | None = None
    metric: str | None = None
    method: str | None = None
    group_size: int | None = None
    symmetric: bool | None = None
    options: tuple[tuple[str, object], ...] = ()
    format: str | None = None  # last, so keys written positionally before formats still read the same
    # What the rows round besides weights, every precision column but the one the law's P reads (None: any;
    # (): weights alone, nothing else rounded); see `precision_key`.
    precisions: tuple[tuple[str, object], ...] | None = None

    def head(self) -> dict:
        """The key as table columns (`options` and `rounds` as text, only when there are some)."""
        options = " ".join(f"{name}={value}" for name, value in self.options)
        rounds = " ".join(f"{name}={value:g}" if isinstance(value, float) else f"{name}={value}"
                          for name, value in self.precisions or () if value not in ("", None))  # fmt: skip
        head = {name: getattr(self, name) for name in KEY_FIELDS} | ({"options": options} if options else {})
        return head | ({"rounds": rounds} if rounds else {})

    def label(self) -> str:
        return " ".join(str(v) for v in self.head().values() if v is not None)

    def record(self) -> dict:
        record = {name: getattr(self, name) for name in KEY_FIELDS} | {"options": dict(self.options)}
        return record | ({"precisions": dict(self.precisions)} if self.precisions else {})

    def resolve(self, rows: pd.DataFrame) -> FitKey:
        """The key with every field it leaves open filled from `rows` (which hold one value of each)."""
        open_fields = [name for name in KEY_FIELDS if getattr(self, name) is None and name in rows]
        return replace(self, **{name: _python(rows[name].iloc[0]) for name in open_fields})

    def matches(self, results: pd.DataFrame) -> pd.Series:
        """Rows with every given value (options: those whose column the results have)."""
        mask = pd.Series(True, index=results.index)
        for name in (name for name in KEY_FIELDS if getattr(self, name) is not None):
            if name not in results:
                if name == "format" and getattr(self, name) == INT:
                    continue  # results from before formats were all integer grids
                raise FitError(f"the results have no {name!r} column to select {name}={getattr(self, name)!r} by")
            mask &= _column(results, name) == getattr(self, name)
        for name, value in self.options:
            if name in results:
                mask &= results[name] == value
        if self.precisions is not None:
            for name, value in (dict(self.precisions) or dict.fromkeys(PRECISION_COLUMNS)).items():
                column = results[name] if name in results else pd.Series(None, index=results.index, dtype=object)
                empty = column.isna() | (column.astype(str) == "")
                mask &= empty if value in ("", None) else column == value
        return mask


ANY = FitKey()  # matches every row


def formats(results: pd.DataFrame) -> pd.Series:
    """Each row's number format: `int` where the results do not say (written before formats had a column)."""
    if "format" not in results:
        return pd.Series(INT, index=results.index, dtype=object)
    return results["format"].astype(object).fillna(INT)


def _column(results: pd.DataFrame, name: str) -> pd.Series:
    """A key column, the format read as `formats` reads it."""
    return formats(results) if name == "format" else results[name]


def stack(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Tables of several fits as one: `options` (where any fit has some) beside the other key columns."""
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if "options" in frame:
        columns = [c for c in frame.columns if c != "options"]
        at = columns.index("symmetric") + 1
        frame = frame[[*columns[:at], "options", *columns[at:]]].fillna({"options": ""})
    return frame.astype({"group_size": "Int64"}) if "group_size" in frame else frame


def _config_columns(results: pd.DataFrame) -> list[str]:
    return [c for c in (*KEY_FIELDS, *METHOD_OPTIONS, ACTIVATIONS, KV_CACHE) if c in results]


def fit_keys(results: pd.DataFrame, where: FitKey = ANY) -> tuple[list[FitKey], list[str]]:
    """One key per (eval, metric, quant config) of the losses among the rows `where` matches, and a note for
    every metric left unfitted. A quant config field other than method, format, group size and symmetry enters
    the key (as an option) only where rows of one (eval, metric, method, format, group size, symmetry) differ
    in it."""
    rows = results[where.matches(results) & results.method.notna()]
    if "format" in rows:
        rows = rows.assign(format=formats(rows))
    columns, keys, notes = _config_columns(rows), [], []
    evals = rows.groupby("eval", sort=False) if "eval" in rows else [(None, rows)]
    for name, own in evals:
        metrics = list(dict.fromkeys(own.metric))
        others = [m for m in metrics if _nats(m) is None and not m.startswith("nonfinite_")]
        if others:
            notes.append(f"{name}: {', '.join(others)} not fitted (no law reads them: reported, not fitted)")
        for chosen, same in _one_loss_each(metrics):
            keys += _metric_keys(own[own.metric == chosen], columns)
            if same:
                notes.append(f"{name}: {', '.join(same)} not fitted separately (the same summed loss as {chosen})")
    return keys, notes


def _one_loss_each(metrics: list[str]) -> list[tuple[str, list[str]]]:
    """Per lm-eval task, filter and family of metrics: the one fitted (the first in FITTED_METRICS' order) and the
    others."""
    groups: dict[tuple[str, str, str], list[str]] = {}
    for metric in (m for m in metrics if _nats(m) is not None):
        task, _, rest = metric.rpartition("/")
        groups.setdefault((task, rest.partition(",")[2], facts_of(metric).family), []).append(metric)
    chosen = [sorted(group, key=lambda m: FITTED_METRICS.index(bare_name(m))) for group in groups.values()]
    chosen.sort(key=lambda group: FITTED_METRICS.index(bare_name(group[0])))  # the loss first, then KLD, flips
    return [(first, rest) for first, *rest in chosen]


def precision_key(values: dict, axis: str | None) -> tuple[tuple[str, object], ...]:
    """A fit key's precisions: every precision column but `axis` (the one its P reads; None: the weights'), empty
    values as "" and None; () where nothing but weights is rounded."""

    def read(column: str) -> object:
        value = values.get(column)
        if value is None or value != value or value == "":
            return None if column in BITS_COLUMNS.values() else ""
        return value

    given = tuple((c, read(c)) for c in PRECISION_COLUMNS if c != axis)
    return () if axis is None and all(v in ("", None) for _, v in given) else given


def config_precisions(config: QuantConfig) -> tuple[tuple[str, object], ...]:
    """The precisions of the fit key a config's results are fitted under (what `fit_keys` finds for its rows)."""
    values = {}
    for component, precision in ((ACTIVATIONS, config.activations), (KV_CACHE, config.kv_cache)):
        if precision is not None:
            values |= {component: precision.kind, BITS_COLUMNS[component]: precision.bits_per_value}
    rounded = config.rounded
    return precision_key(values, BITS_COLUMNS[rounded.component] if rounded is not None else None)


def _axes(rows: pd.DataFrame) -> pd.Series:
    """The precision column each row's P reads: "" for its weights; for a config keeping its weights, its
    activations' bits where it rounds them, else its KV cache's."""
    keeps = ~rows.method.map(rounds_weights).astype(bool)
    activations = rows[ACTIVATIONS].fillna("").astype(str) != "" if ACTIVATIONS in rows else False
    axis = pd.Series("", index=rows.index, dtype=object)
    axis[keeps] = BITS_COLUMNS[KV_CACHE]
    axis[keeps & activations] = BITS_COLUMNS[ACTIVATIONS]
    return axis


def _metric_keys(rows: pd.DataFrame, columns: list[str]) -> list[FitKey]:
    base = [c for c in columns if c in KEY_FIELDS]
    keys = []
    for axis, part in rows.groupby(_axes(rows), sort=False):
        extra = [c for c in PRECISION_COLUMNS if c in part and c != axis and c not in columns]
        for values, group in part.groupby(columns + extra, dropna=False, sort=True):
            found = {c: _python(v) for c, v in zip(columns + extra, values, strict=True)}  # NaN: none
            siblings = rows[(rows[base] == group[base].iloc[0]).all(axis=1)]
            varying = [c for c in METHOD_OPTIONS if c in found and siblings[c].nunique(dropna=False) > 1]
            keys.append(FitKey(**{c: found[c] for c in base}, options=tuple((c, found[c]) for c in varying),
                               precisions=precision_key(found, axis or None)))  # fmt: skip
    return keys


def in_nats(rows: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The δ, CI and values of one fitted metric on the scale a law reads it (nats per token, word or byte; a
    fraction as it is)."""
    if _nats(metric) is None:
        raise FitError(
            f"metric {metric!r} is not one a law is fitted to; "
            f"accepted: {', '.join(FITTED_METRICS)} (after any task/ prefix)"
        )
    kind = _nats(metric)[0]
    out = rows.copy()
    if kind == "bits":
        out[list(VALUES)] = rows[list(VALUES)] * math.log(2)
    elif kind == "log":
        fp = rows.fp_value.where(rows.fp_value > 0)
        for column in ("delta", "delta_ci_low", "delta_ci_high"):
            out[column] = np.log1p(rows[column] / fp)  # NaN where the ratio is undefined
        out["fp_value"], out["quant_value"] = np.log(fp), np.log(rows.quant_value.where(rows.quant_value > 0))
    return out


def _one_config(rows: pd.DataFrame, key: FitKey) -> None:
    """Refuse rows of several evals, metrics or quant configs: they must never be pooled into one fit."""
    for column in _config_columns(rows):
        found = rows[column].drop_duplicates().tolist()
        if len(found) > 1:
            raise FitError(
                f"the results for {key.label() or 'this fit'} differ in {column} ({', '.join(map(str, found))}); "
                f"give {column} (accepted: {', '.join(map(str, found))})"
            )
    if rows.assign(precision=precision(rows)).duplicated(["checkpoint", "precision"]).any():
        raise FitError(
            f"several results per (checkpoint, bits) for {key.label() or 'this fit'}: they differ in a field "
            f"the results do not show (a results CSV lacks {', '.join(METHOD_OPTIONS)}); fit the study or filter"
        )


def select(results: pd.DataFrame, key: FitKey, censoring: str = "censor") -> tuple[pd.DataFrame, pd.DataFrame]:
    """The rows of one key, in nats, split into fitted (with `censored` and its detection `limit`) and
    excluded (with a `reason`)."""
    rows = results[key.matches(results)]
    if rows.empty:
        raise FitError(f"no results for {key.label() or 'any key'}")
    _one_config(rows, key)
    rows = in_nats(rows, rows.metric.iloc[0] if "metric" in rows else "loss")
    low, high, delta = rows.delta_ci_low, rows.delta_ci_high, rows.delta
    reaches_zero = low.notna() & (low <= 0)
    reason = pd.Series("", index=rows.index)
    if censoring == "censor":
        limit = (delta - low).where(delta - low > 0)  # what δ had to exceed for its CI to clear zero
        censored = reaches_zero & (high > 0) & limit.notna()
        reason[~(delta > 0) & ~censored] = NO_DAMAGE
        reason[reaches_zero & ~(high > 0)] = CI_BELOW
    else:
        limit, censored = pd.Series(np.nan, rows.index), pd.Series(False, rows.index)
        reason[reaches_zero] = CI_ZERO
        reason[~(delta > 0)] = NO_DAMAGE
    reason[rows.tokens <= 0] = "D = 0 (an untrained checkpoint)"
    reason[rows.tokens.isna()] = UNKNOWN_D
    keep = reason == ""
    usable = rows[keep].assign(censored=censored[keep], limit=limit[keep])  # (an empty frame takes a Series' index)
    excluded = rows[~keep].assign(reason=reason[~keep])
    if not (~usable.censored).any():
        counts = ", ".join(f"{n} with {r}" for r, n in excluded.reason.value_counts().items())
        counts += f", {int(usable.censored.sum())} censored (delta CI reaches zero)" if usable.censored.any() else ""
        unknown = (excluded.reason == UNKNOWN_D).sum()
        advice = (
            "give each checkpoint's tokens seen (D) in the study (`tokens:`)"
            if unknown and unknown + (rows.tokens <= 0).sum() == len(rows)
            else "measure lower bit widths, longer-trained checkpoints or more eval tokens"
        )
        raise FitError(
            f"none of the {len(rows)} {key.label()} points has δ significantly above zero ({counts.strip(', ')}); "
            + advice
        )
    return usable, excluded


def precision(frame: pd.DataFrame) -> pd.Series | None:
    """The laws' P per row: bits per weight, scales counted (`quant/formats.py`); where the results do not say
    (a results CSV from before formats), counted from their format (int when absent), bits, group size and
    symmetry, as a release config's is; the bits alone without those columns; None without bits."""
    if "bits" not in frame:
        return None
    counted = frame["bits"].astype(float)
    if {"group_size", "symmetric"} <= set(frame.columns):
        counted = pd.Series(
            [
                number_format(f).bits_per_weight(int(b), int(g), bool(s)) if b == b and g == g else b
                for f, b, g, s in zip(
                    formats(frame), frame["bits"], frame["group_size"], frame["symmetric"], strict=True
                )
            ],
            index=frame.index,
            dtype=float,
        )
    if "bits_per_weight" not in frame:
        return counted
    return frame["bits_per_weight"].astype(float).fillna(counted)


def points(frame: pd.DataFrame, y: pd.Series, limit: pd.Series | None = None) -> Points:
    """Points of rows: targets `y` and detection limits `limit` in natural units (None or NaN: no limit)."""
    found = precision(frame)
    bits = found.to_numpy(dtype=float) if found is not None else np.zeros(len(frame))
    log_n, log_d, log_y = (np.log(c.to_numpy(dtype=float)) for c in (frame.nonembedding_params, frame.tokens, y))
    log_limit = np.full(len(frame), -np.inf)
    if limit is not None:
        known = (limit > 0).to_numpy()
        log_limit[known] = np.log(limit.to_numpy(dtype=float)[known])
    phase = frame.decay_done.to_numpy(dtype=float) if "decay_done" in frame else np.full(len(frame), np.nan)
    return Points(frame.checkpoint.to_numpy(dtype=str), log_n, log_d, bits, log_y, log_limit, phase)


def delta_points(usable: pd.DataFrame) -> Points:
    """A δ fit's points: log δ where measured, the log of the limit where censored."""
    return points(usable, usable.delta.where(~usable.censored, usable.limit), usable.limit)
