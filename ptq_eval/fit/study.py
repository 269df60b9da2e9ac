"""A study's fits: every law for every key (eval, metric, quant config) of its losses, the full-precision loss
law of each (eval, metric), and why anything was not fitted."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from ptq_eval.evals.metrics import facts_of
from ptq_eval.fit.breaks import break_table
from ptq_eval.fit.data import (
    ANY,
    CI_ZERO,
    UNKNOWN_D,
    FitError,
    FitKey,
    delta_points,
    fit_keys,
    in_nats,
    points,
    precision,
    select,
    stack,
)
from ptq_eval.fit.estimate import (
    DEFAULTS,
    MIN_REFIT,
    EstimateCache,
    FitOptions,
    LawFit,
    Progress,
    Task,
    estimates,
    intervals_withheld,
    law_fit,
)
from ptq_eval.fit.identify import identify
from ptq_eval.fit.laws import (
    BASE,
    BROKEN_LAWS,
    DELTA_LAWS,
    FIXED_LAWS,
    KUMAR,
    PHASE_LAWS,
    broken_law,
    per_bit_law,
)

NO_PHASE = "learning-rate phase (decay_done) unknown for this checkpoint"


CONTROL_FACTOR = 2.0  # a negative control fails where the law says more than this × the CI's upper bound


def _bounded(usable: pd.DataFrame, excluded: pd.DataFrame) -> pd.DataFrame:
    """Points whose CI reaches zero (censored, or excluded for it) with a positive upper bound."""
    bounded = pd.concat([usable[usable.censored], excluded[excluded.reason == CI_ZERO]])
    return bounded[bounded.delta_ci_high > 0]


def _predicted(fit: LawFit, rows: pd.DataFrame) -> np.ndarray:
    phase = rows.decay_done.fillna(1.0) if "decay_done" in rows else 1.0
    return fit.predict(rows.nonembedding_params, rows.tokens, precision(rows), phase)


def _bound_violations(fit: LawFit, usable: pd.DataFrame, excluded: pd.DataFrame) -> int:
    """Points whose CI reaches zero (censored, or excluded for it) with the fitted δ above their CI's upper end."""
    bounded = _bounded(usable, excluded)
    return int(np.sum(_predicted(fit, bounded) > bounded.delta_ci_high.to_numpy())) if len(bounded) else 0


def _negative_controls(fit: LawFit, usable: pd.DataFrame, excluded: pd.DataFrame) -> dict:
    """Negative controls: at the highest P the key measured, the points where no damage was measured (the CI
    reaches zero, whether censored or excluded) and the law still says more than CONTROL_FACTOR × the CI's
    upper bound."""
    rows = pd.concat([usable, excluded])
    found = precision(rows) if len(rows) else None
    if found is None or found.isna().all():
        return {"control_p": float("nan"), "control_points": 0, "control_flags": 0}
    highest = float(found.max())
    silent = rows[(found == highest) & (rows.delta_ci_low <= 0) & (rows.delta_ci_high > 0)]
    predicted = _predicted(fit, silent) if len(silent) else np.zeros(0)
    tested = np.isfinite(predicted)  # a law with no value at this P (per_bit without it) tests nothing there
    flags = int(np.sum(predicted[tested] > CONTROL_FACTOR * silent.delta_ci_high.to_numpy()[tested]))
    return {"control_p": highest, "control_points": int(tested.sum()), "control_flags": flags}


def _broken(law: str, usable: pd.DataFrame, key: FitKey):
    """The broken law for these points: the break bounded inside the data (at least two distinct D, or D/N,
    each side), the P term only where the key has several P."""
    u = np.log(usable.tokens.astype(float))
    if law == "broken_dn":
        u = u - np.log(usable.nonembedding_params.astype(float))
    distinct = np.unique(np.round(u.to_numpy(), 9))
    if len(distinct) < 4:
        axis = "D/N" if law == "broken_dn" else "D"
        raise FitError(f"{law}: {key.label()} has {len(distinct)} distinct {axis}; a break needs at least 4")
    return broken_law(law, precision(usable).nunique() > 1, (float(distinct[1]), float(distinct[-2])))


@dataclass(frozen=True)
class _Prepared:
    """A fit's inputs: the estimate's task, and the rows used and left out (with the key they resolve)."""

    task: Task
    key: FitKey
    usable: pd.DataFrame
    excluded: pd.DataFrame

    def fit(self, record: dict) -> LawFit:
        fit = law_fit(self.task, record, self.excluded, self.key)
        if self.task.law.name != "base":
            fit.scores["bound_violations"] = _bound_violations(fit, self.usable, self.excluded)
            fit.scores |= _negative_controls(fit, self.usable, self.excluded)
        return fit


def _prepare_delta(results: pd.DataFrame, law: str, key: FitKey, options: FitOptions) -> _Prepared:
    if law not in DELTA_LAWS:
        raise FitError(f"unknown law {law!r}; accepted: {', '.join(DELTA_LAWS)}")
    usable, excluded = select(results, key, options.censoring)
    key = key.resolve(usable)
    if law == "per_bit":
        widths, sparse = [], [excluded]
        widths_of = precision(usable)
        for bits, rows in usable.groupby(widths_of):
            try:
                identify(per_bit_law([bits]), delta_points(rows), options.huber)
                widths.append(bits)
            except FitError as error:
                sparse.append(rows.assign(reason=f"this width cannot be fitted alone: {error}"))
        if not widths:
            raise FitError(f"per_bit: no bit width of {key.label()} can be fitted on its own")
        usable, excluded, chosen = usable[widths_of.isin(widths)], pd.concat(sparse), per_bit_law(widths)
    elif law in BROKEN_LAWS:
        chosen = _broken(law, usable, key)
    else:
        chosen = FIXED_LAWS[law]
    if chosen.needs_phase:
        unknown = usable.decay_done.isna() if "decay_done" in usable else pd.Series(True, usable.index)
        excluded = pd.concat([excluded, usable[unknown].assign(reason=NO_PHASE)])
        usable = usable[~unknown]
    task = Task(chosen, delta_points(usable), options, results.checkpoint.unique(), f"{law} {key.label()}")
    return _Prepared(task, key, usable, excluded)


def _prepare_base(results: pd.DataFrame, key: FitKey, options: FitOptions) -> _Prepared:
    key = FitKey(key.eval, key.metric)
    rows = results[key.matches(results)]
    if rows.empty:
        raise FitError(f"no results for {key.label() or 'any eval'}")
    for column in ("eval", "metric"):
        found = rows[column].unique().tolist() if column in rows else []
        if len(found) > 1:
            raise FitError(f"the results differ in {column} ({', '.join(found)}); give {column} (accepted: same)")
    resolved = key.resolve(rows)
    key = FitKey(resolved.eval, resolved.metric)  # the quant config does not change the full-precision loss
    rows = in_nats(rows, key.metric or "loss").drop_duplicates("checkpoint").drop(columns="bits")
    good = (rows.fp_value > 0) & (rows.tokens > 0)
    reason = np.where(rows.tokens.isna(), UNKNOWN_D, "D = 0, or full-precision loss missing or <= 0")
    excluded = rows[~good].assign(reason=reason[~good.to_numpy()])
    universe, label = results.checkpoint.unique(), f"base {key.label()}"
    task = Task(BASE, points(rows[good], rows.fp_value[good]), options, universe, label)
    return _Prepared(task, key, rows[good], excluded)


def _fit_all(prepared: list[_Prepared | FitError], cache: EstimateCache | None, workers: int | None,
             progress: Progress | None) -> list[LawFit | FitError]:  # fmt: skip
    """Every prepared fit's estimate (in parallel, cached), each finished into a LawFit or its FitError."""
    tasks = [p if isinstance(p, FitError) else p.task for p in prepared]
    records = estimates(tasks, cache, workers, progress)
    return [r if isinstance(r, FitError) else p.fit(r) for p, r in zip(prepared, records, strict=True)]


def _fit_one(prepared: _Prepared, cache: EstimateCache | None) -> LawFit:
    """One prepared fit, in this process; its FitError raised."""
    (fit,) = _fit_all([prepared], cache, 1, None)
    if isinstance(fit, FitError):
        raise fit
    return fit


def _prepared(prepare: Callable[[], _Prepared]) -> _Prepared | FitError:
    try:
        return prepare()
    except FitError as error:
        return error


def fit_delta(results: pd.DataFrame, law: str, key: FitKey, options: FitOptions = DEFAULTS,
              cache: EstimateCache | None = None) -> LawFit:  # fmt: skip
    """Fit one of DELTA_LAWS to the results of one key (its open fields must hold one value); `cache`: see
    `fit_points`."""
    return _fit_one(_prepare_delta(results, law, key, options), cache)


def fit_base(results: pd.DataFrame, key: FitKey, options: FitOptions = DEFAULTS,
             cache: EstimateCache | None = None) -> LawFit:  # fmt: skip
    """Fit L = E + A/N^α + B/D^β to the full-precision value (in nats) of the key's eval and metric."""
    return _fit_one(_prepare_base(results, key, options), cache)


@dataclass
class StudyFit:
    """Every law for every key, the base-loss fit of each (eval, metric), why any law could not be fitted, and
    the metrics left unfitted."""

    fits: list[LawFit]
    bases: list[LawFit]
    failures: dict[str, str]
    skipped: list[str] = field(default_factory=list)

    def all(self) -> list[LawFit]:
        return self.fits + self.bases

    def base(self, fit: LawFit) -> LawFit | None:
        """The full-precision loss fit of this fit's eval and metric."""
        return next((b for b in self.bases if (b.key.eval, b.key.metric) == (fit.key.eval, fit.key.metric)), None)

    def table(self) -> pd.DataFrame:
        return stack([fit.table() for fit in self.all()])

    def goodness(self) -> pd.DataFrame:
        return stack([pd.DataFrame([fit.goodness() for fit in self.all()])])

    def excluded(self) -> pd.DataFrame:
        frames = [fit.excluded.assign(law=fit.law.name) for fit in self.all() if len(fit.excluded)]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    def notes(self) -> list[str]:
        """What a reader should know: metrics and laws not fitted and why, points each fit censored or left out."""
        notes = self.skipped + [f"{law} not fitted: {message}" for law, message in self.failures.items()]
        for fit in self.all():
            label = f"{fit.law.name} {fit.key.label()}"
            if fit.scores.get("censored"):
                notes.append(f"{label}: {fit.scores['censored']} points censored (delta CI reaches zero)")
            refit, resamples = fit.scores["resamples_refit"], fit.provenance["resamples"]
            if intervals_withheld(refit, resamples):
                notes.append(f"{label}: intervals withheld: only {refit} of {resamples} bootstrap resamples could be "
                             f"refit (under {MIN_REFIT:.0%}; those few would give too narrow an interval)")  # fmt: skip
            if len(fit.excluded):
                reasons = ", ".join(f"{n} with {reason}" for reason, n in fit.excluded.reason.value_counts().items())
                notes.append(f"{label}: {len(fit.excluded)} points excluded: {reasons}")
        return notes + self.controls()

    def controls(self) -> list[str]:
        """The fits whose negative control failed: at the highest P, damage predicted where none was measured."""
        return [
            f"{fit.law.name} {fit.key.label()}: negative control failed at P={fit.scores['control_p']:g}: at "
            f"{fit.scores['control_flags']} of {fit.scores['control_points']} points whose δ CI reaches zero the "
            f"law predicts more than {CONTROL_FACTOR:g}× the CI's upper bound (damage where none was measured)"
            for fit in self.fits
            if fit.scores.get("control_flags")
        ]

    def breaks(self) -> pd.DataFrame:
        """Each broken-law fit's break, slopes and whether the data support it (`fit/breaks.py`)."""
        return break_table(self.fits)

    def save(self, store, study: str) -> int:
        """Write every fit to a store (`Store.save_fit`), keyed by study, law, key and censoring; returns how many."""
        for fit in self.all():
            record = fit.record()
            parts = [study, fit.law.name, *map(str, fit.key.head().values()), fit.provenance["censoring"]]
            store.save_fit("/".join(parts), study, **record)
        return len(self.all())


def fit_study(results: pd.DataFrame, where: FitKey = ANY, options: FitOptions = DEFAULTS,
              laws=(*DELTA_LAWS, "base"), cache: EstimateCache | None = None, workers: int | None = None,
              progress: Progress | None = None) -> StudyFit:  # fmt: skip
    """Fit each law to every key of the losses `where` matches, and the base law to each (eval, metric);
    `cache` (a study's store) keeps every estimate for the next fit of the same results. Estimates run on
    `workers` processes (default: every CPU this process may use); `progress` hears of each one done."""
    keys, skipped = fit_keys(results, where)
    if not keys:
        found = f" ({'; '.join(skipped)})" if skipped else ""
        raise FitError(f"no loss results for {where.label() or 'any key'}{found}")
    fits, bases, failures = [], [], {}
    delta_laws = [law for law in laws if law != "base"]
    phases = results.decay_done.dropna().unique() if "decay_done" in results else []
    if len(phases) < 2 and any(law in PHASE_LAWS for law in delta_laws):
        delta_laws = [law for law in delta_laws if law not in PHASE_LAWS]
        skipped.append(
            f"{', '.join(PHASE_LAWS)} not fitted: every checkpoint with a known learning-rate phase has "
            f"the same decay_done ({', '.join(f'{p:.2f}' for p in phases) or 'none known'})"
        )
    pairs = list(itertools.product(keys, delta_laws))
    with_fp = [key for key in keys if facts_of(key.metric).full_precision]  # kld, flips: no full-precision term
    losses = list(dict.fromkeys(FitKey(key.eval, key.metric) for key in with_fp)) if "base" in laws else []
    prepared = [_prepared(lambda k=key, law=law: _prepare_delta(results, law, k, options)) for key, law in pairs]
    prepared += [_prepared(lambda k=loss: _prepare_base(results, k, options)) for loss in losses]
    found = _fit_all(prepared, cache, workers, progress)
    labels = [f"{law} {key.label()}" for key, law in pairs] + [f"base {loss.label()}" for loss in losses]
    for label, fit in zip(labels, found, strict=True):
        if isinstance(fit, FitError):
            failures[label] = str(fit)
        else:
            (bases if fit.law.name == "base" else fits).append(fit)
    if not fits if delta_laws else not bases:
        raise FitError("no law could be fitted: " + "; ".join(failures.values()))
    return StudyFit(fits, bases, failures, skipped)


def compare_censoring(results: pd.DataFrame, fitted: StudyFit, options: FitOptions,
                      cache: EstimateCache | None = None, workers: int | None = None,
                      progress: Progress | None = None) -> pd.DataFrame:  # fmt: skip
    """Each Kumar fit's parameters beside a refit under the other censoring option (value [95% CI]), with the
    points each fitted, censored and excluded."""
    other = "exclude" if options.censoring == "censor" else "censor"
    refit_options = replace(options, censoring=other, validate=False)
    kumar = [fit for fit in fitted.fits if fit.law.name == "kumar"]
    prepared = [_prepared(lambda k=fit.key: _prepare_delta(results, "kumar", k, refit_options)) for fit in kumar]
    rows = []
    for fit, refit in zip(kumar, _fit_all(prepared, cache, workers, progress), strict=True):
        refit = str(refit) if isinstance(refit, FitError) else refit
        pairs = {options.censoring: fit, other: refit}
        for j, name in enumerate((*KUMAR.parameters, "points (censored, excluded)")):
            row = fit.head() | {"parameter": name}
            for option, own in pairs.items():
                row[option] = own if isinstance(own, str) else _cell(own, j)
            rows.append(row)
    return stack([pd.DataFrame(rows)])


def compare_phase(fitted: StudyFit) -> pd.DataFrame:
    """Per key: Kumar's law (tokens), `phase_only` (learning-rate phase in place of tokens) and `phase` (both)
    side by side: points, in-sample and held-out RMSE of log δ, γ_D and β (value [95% CI]); empty when no
    phase law was fitted. A lower held-out error for `phase_only` than for `kumar` says phase explains δ
    better than tokens; `phase` with β's CI excluding 0 says phase adds to tokens."""
    by_key: dict[FitKey, dict[str, LawFit]] = {}
    for fit in fitted.fits:
        by_key.setdefault(fit.key, {})[fit.law.name] = fit
    rows = []
    for fits in by_key.values():
        if not any(law in fits for law in PHASE_LAWS):
            continue
        for law in ("kumar", *PHASE_LAWS):
            if law not in fits:
                continue
            fit, row = fits[law], fits[law].head()
            row |= {name: fit.scores[name] for name in ("n_points", "rmse_log", "loco_rmse_log", "largest_d_rmse_log")}
            for parameter in ("gamma_D", "beta"):
                j = fit.law.parameters.index(parameter) if parameter in fit.law.parameters else None
                row[parameter] = "" if j is None else _cell(fit, j)
            rows.append(row)
    return stack([pd.DataFrame(rows)]) if rows else pd.DataFrame()


def _cell(fit: LawFit, j: int) -> str:
    if j == len(fit.law.parameters):
        return f"{fit.scores['n_points']} ({fit.scores['censored']}, {fit.scores['excluded']})"
    row = fit.table().iloc[j]
    return f"{row.value:.3g} [{row.ci_low:.3g}, {row.ci_high:.3g}]"
