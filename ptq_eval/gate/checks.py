"""Release gate checks: does a checkpoint's degradation at its release precision(s) stay within a policy's budgets?

A policy is a study without a ladder (the checkpoint to gate comes from the command line): its `quant`
entries are the release configs, its `evals` what they are scored on, plus `budgets` and an `uncertainty`
rule. Each budget makes one check per release config (and per eval in its scope); `max` bounds, by `kind`:

- `absolute`: δ, the paired degradation (metric units, e.g. nats/token for loss);
- `relative`: 100·δ/fp, δ as a percentage of the full-precision value;
- `baseline`: δ − δ(baseline checkpoint) for the same config and eval ("no worse than X by more than max"),
  its CI the two CIs' half-widths combined in quadrature (`evals.paired.difference_ci`): that treats the
  two δs as independent, which is conservative as they share the evaluation tokens;
- `forecast`: δ of the loss at a planned D/N (N defaults to the checkpoint's), forecast by a scaling law
  fitted to a study's stored results or to a results CSV, with its bootstrap CI.

δ is quant − fp where lower is better and fp − quant where higher is better (`evals/metrics.py`, or the
budget's `higher_is_better`), so a
positive δ is always damage. `UNCERTAINTY` lists the rules that turn a value and its 95% CI into pass,
fail or undecided. A check without data (a result not stored, a law that cannot be fitted) is undecided.
The verdict fails if any check fails, else is undecided if any check is, else passes.

Coverage: a measured check is undecided (never a pass) when its quantized job covered less of the model
than the policy's `min_coverage` (a fraction of the non-embedding parameters), or, by default, when any
weight was left in full precision without an exclude pattern naming it, or when no coverage was recorded.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from ptq_eval.evals.metrics import metric_matches
from ptq_eval.evals.paired import difference_ci
from ptq_eval.fit import Estimate, FitError, FitKey, FitOptions, LawFit, fit_delta, predict_delta
from ptq_eval.fit.breaks import break_support
from ptq_eval.fit.data import config_precisions, formats
from ptq_eval.fit.laws import BROKEN_LAWS
from ptq_eval.gate.policy import Budget, Policy, PolicyError, reference, release_configs
from ptq_eval.quant import QuantConfig, rounds_weights
from ptq_eval.results import study_results
from ptq_eval.spec import StudyError, load_study
from ptq_eval.store import Store, json_ready

DECISIONS = ("pass", "fail", "undecided")
ForecastFits = dict[tuple[int, FitKey], LawFit | str]  # (budget index, eval and config) -> fit or why not


def _fit_source(budget: Budget, default_store: Path) -> tuple[pd.DataFrame, Path | None]:
    """The results a forecast fits on, from a results CSV or the stored results of a study YAML; and the store
    (which keeps the estimates) or None."""
    if budget.fit.endswith(".csv"):
        return pd.read_csv(budget.fit), None
    study = load_study(budget.fit)
    path = Path(budget.store) if budget.store else default_store
    if not path.is_file():
        raise FitError(f"no store at {path} for {budget.fit}: run `ptq-eval run {budget.fit} --store {path}`")
    with Store(path) as store:
        return study_results(study, store), path


def fit_key(config: QuantConfig, eval_name: str, metric: str) -> FitKey:
    """The fit a release config and eval is forecast by: the same eval, metric and every quant config field
    (the method's options matched where the results record them; a results CSV does not)."""
    return FitKey(
        eval=eval_name,
        metric=metric,
        method=config.method,
        format=config.format,
        group_size=config.group_size,
        symmetric=config.symmetric,
        options=config.options,
        precisions=config_precisions(config),
    )


def _budget_fits(budget: Budget, keys: list[FitKey], default_store: Path, seed: int) -> dict[FitKey, LawFit | str]:
    try:
        results, path = _fit_source(budget, default_store)
    except (StudyError, FitError, FileNotFoundError) as error:
        return dict.fromkeys(keys, str(error))
    options = FitOptions(resamples=budget.resamples, seed=seed, validate=False)
    fits = {}
    with Store(path) if path else contextlib.nullcontext() as cache:
        for key in keys:
            try:
                fits[key] = fit_delta(results, budget.law, key, options, cache)
            except FitError as error:
                fits[key] = str(error)
                continue
            if budget.law not in BROKEN_LAWS:
                fits[key] = _past_a_break(results, fits[key], key, options, cache)
    return fits


def _past_a_break(results: pd.DataFrame, fit: LawFit, key: FitKey, options: FitOptions, cache) -> LawFit:
    """The broken-in-D/N law's fit where the data support its break, else `fit`: a forecast in D/N must not come
    from the slope before a break (`fit/breaks.py`)."""
    straight = "kumar" if fit.law.needs_bits else "per_bit"
    options = replace(options, validate=True)  # the verdict compares held-out errors
    try:
        fits = [fit_delta(results, law, key, options, cache) for law in ("broken_dn", straight)]
    except FitError:
        return fit
    return fits[0] if break_support(fits[0], fits).supported else fit


@functools.cache
def _produced(evaluation) -> tuple[str, ...]:
    """The metrics an eval produces (an lm-eval task's loaded once per process)."""
    return tuple(evaluation.metrics())


def _scope(policy: Policy, budget: Budget) -> list:
    """The policy's evals a budget applies to: those that produce its metric (narrowed by the budget's `eval:`,
    which names one by its name or its label)."""
    return [
        e
        for e in policy.evals
        if budget.eval in (None, e.name, e.short_name) and any(metric_matches(m, budget.metric) for m in _produced(e))
    ]


def check_budget_scopes(policy: Policy) -> None:
    """Refuse, before any work, a budget that applies to no eval (none produces its metric), or whose metric
    names several of one eval's (a group's subtasks): it must name one in full."""
    for index, budget in enumerate(policy.budgets):
        for evaluation in _scope(policy, budget):
            several = [m for m in _produced(evaluation) if metric_matches(m, budget.metric)]
            if len(several) > 1:
                raise PolicyError(
                    f"budgets[{index}] metric {budget.metric} names several metrics of eval {evaluation.name}: "
                    f"{', '.join(several)}; name one in full (task/metric) or narrow the budget with eval:"
                )
        if not _scope(policy, budget):
            produced = "; ".join(f"{e.name}: {', '.join(_produced(e))}" for e in policy.evals)
            narrowed = f" (narrowed to eval {budget.eval})" if budget.eval else ""
            raise PolicyError(
                f"budgets[{index}] ({budget.kind}, metric {budget.metric}){narrowed} applies to no eval: none "
                f"produces {budget.metric}. The evals produce: {produced}"
            )


def _forecast_keys(policy: Policy, budget: Budget) -> list[FitKey]:
    configs = release_configs(policy.quant)
    return list(dict.fromkeys(fit_key(c, e.name, budget.metric) for c in configs for e in _scope(policy, budget)))


def fit_forecasts(policy: Policy, default_store: Path) -> ForecastFits:
    """Each forecast budget's law fitted to each release config (bits aside) and eval in its scope, or why it
    could not be."""
    fits = {}
    for index, budget in enumerate(policy.budgets):
        if budget.kind == "forecast":
            found = _budget_fits(budget, _forecast_keys(policy, budget), default_store, policy.seed)
            fits |= {(index, key): fit for key, fit in found.items()}
    return fits


@dataclass(frozen=True)
class Check:
    """One budget applied to one release config and eval of the gated checkpoint."""

    checkpoint: str
    method: str
    format: str
    bits: int
    group_size: int
    symmetric: bool
    eval: str  # the eval's full identity (a corpus path, a task file)
    eval_label: str  # how people read it: its label, or its name without machine paths
    metric: str
    budget_kind: str
    quantity: str  # what `value` is: "δ", "δ/fp (%)", "δ − δ(baseline)", "δ at D/N=..."
    budget: float
    value: float
    ci_low: float
    ci_high: float
    decision: str
    reason: str


@dataclass(frozen=True)
class Verdict:
    checkpoint: str
    policy: str
    uncertainty: str
    checks: tuple[Check, ...]
    artifact: str | None = None  # the quantized file judged (its path, type and quantization), if one was

    @property
    def decision(self) -> str:
        found = {check.decision for check in self.checks}
        if "fail" in found:
            return "fail"
        return "undecided" if "undecided" in found or not found else "pass"

    def counts(self) -> dict[str, int]:
        return {decision: sum(check.decision == decision for check in self.checks) for decision in DECISIONS}

    def as_dict(self) -> dict:
        """JSON-ready, non-finite numbers as None."""
        checks = [json_ready(asdict(check)) for check in self.checks]
        head = {"checkpoint": self.checkpoint, "policy": self.policy, "uncertainty": self.uncertainty}
        head |= {"artifact": self.artifact} if self.artifact else {}
        return head | {"decision": self.decision, "counts": self.counts(), "checks": checks}


def judge(estimate: Estimate, limit: float, uncertainty: str) -> tuple[str, str]:
    """pass, fail or undecided for `value ≤ limit` under an uncertainty rule, with the reason."""
    value, low, high = estimate.value, estimate.ci_low, estimate.ci_high
    if value == math.inf:
        return "fail", "not finite: the quantized model's value overflowed or is NaN where full precision's is not"
    if not math.isfinite(value):
        return "undecided", "no finite value"
    if uncertainty == "point":
        return ("pass", f"{value:.4g} ≤ {limit:g}") if value <= limit else ("fail", f"{value:.4g} > {limit:g}")
    if not (math.isfinite(low) and math.isfinite(high)):
        return "undecided", f"no confidence interval (rule {uncertainty} needs one)"
    if high <= limit:
        return "pass", f"CI upper {high:.4g} ≤ {limit:g}"
    if low > limit:
        return "fail", f"CI lower {low:.4g} > {limit:g}"
    if uncertainty == "strict":
        return "fail", f"CI upper {high:.4g} > {limit:g} (rule strict)"
    return "undecided", f"CI [{low:.4g}, {high:.4g}] straddles {limit:g}"


def coverage_shortfall(row: pd.Series, min_coverage: float | None) -> str | None:
    """Why a result's coverage is too low to decide on (None when it is enough; a config keeping its weights
    rounds none, so their coverage says nothing of it)."""
    if not rounds_weights(row.get("method")):
        return None
    fraction, left_out = row.get("coverage", math.nan), row.get("left_out_params", math.nan)
    if not math.isfinite(fraction):
        return "no coverage recorded for this result (stored by an older ptq-eval): re-run it in a new store"
    if min_coverage is not None and fraction < min_coverage:
        return f"coverage {fraction:.1%} of N is below the policy's min_coverage {min_coverage:.1%}"
    if min_coverage is None and left_out:
        return (
            f"{int(left_out)} parameters were left in full precision without an exclude pattern "
            "(see the run's warning); exclude them or set min_coverage"
        )
    return None


def _measured(
    results: pd.DataFrame,
    checkpoint: str,
    config: QuantConfig,
    eval_name: str,
    budget: Budget,
    min_coverage: float | None,
) -> pd.Series | str:
    """The checkpoint's δ (oriented so positive is damage) with its CI and fp value, or why there is none."""
    rows = results[
        (results.checkpoint == checkpoint)
        & (results.method == config.method)
        & (results.bits == config.bits)
        & (formats(results) == config.format)
        & (results.group_size == config.group_size)
        & (results.symmetric == config.symmetric)
        & FitKey(precisions=config_precisions(config)).matches(results)
        & (results["eval"] == eval_name)
        & results.metric.map(lambda stored: metric_matches(stored, budget.metric)).astype(bool)
    ]
    if rows.empty:
        return f"no stored {budget.metric} result for {checkpoint}"
    if rows.metric.nunique() > 1:  # never judge whichever row sorts first
        return f"metric {budget.metric} matches several results ({', '.join(sorted(rows.metric.unique()))})"
    short = coverage_shortfall(rows.iloc[0], min_coverage)
    if short:
        return short
    row = rows.iloc[0][["delta", "delta_ci_low", "delta_ci_high", "fp_value"]].astype(float)
    if budget.higher_better:
        row = pd.Series([-row.delta, -row.delta_ci_high, -row.delta_ci_low, row.fp_value], index=row.index)
    if math.isfinite(row.fp_value) and not math.isfinite(float(rows.iloc[0].quant_value)):  # it diverged: worst
        row = pd.Series([math.inf, math.inf, math.inf, row.fp_value], index=row.index)
    return row


def _params(results: pd.DataFrame, checkpoint: str) -> float | None:
    rows = results.loc[results.checkpoint == checkpoint, "nonembedding_params"]
    return float(rows.iloc[0]) if len(rows) else None


def _forecast(budget: Budget, fit: LawFit | str | None, params: float | None, bits: float) -> Estimate | str:
    if not isinstance(fit, LawFit):
        return f"no forecast: {fit or 'not fitted'}"
    if params is None:
        return "N unknown: no stored result for the checkpoint; give params in the budget"
    measured = sorted(set(np.unique(fit.points.bits).tolist()))
    if not fit.law.needs_bits and not fit.law.per_bits and bits not in measured:  # no P term: δ at its own P only
        shown = ", ".join(f"{p:g}" for p in measured)
        return f"the {fit.law.name} law has no P term and was fitted at P={shown}, not {bits:g}: it has no value there"
    if fit.law.per_bits and bits not in fit.law.per_bits:  # a law of separate widths has none at the others
        widths = ", ".join(f"{p:g}" for p in fit.law.per_bits)
        return f"the {fit.law.name} law was fitted at {widths} bits, not {bits:g}: it has no value there"
    return predict_delta(fit, params, params * budget.tokens_per_param, bits)


def _compared(budget: Budget, candidate: pd.Series | str, baseline: pd.Series | str | None) -> Estimate | str:
    """The quantity an absolute, relative or baseline budget bounds, from the oriented rows."""
    if isinstance(candidate, str):
        return candidate
    if budget.kind == "relative":
        if not candidate.fp_value > 0:
            return f"full-precision value {candidate.fp_value:.4g} is not positive"
        candidate = candidate * (100 / candidate.fp_value)
    if budget.kind == "baseline":
        if isinstance(baseline, str):
            return baseline
        if candidate.delta == math.inf:  # diverged: fails whatever the baseline did
            return Estimate(math.inf, math.inf, math.inf)
        if baseline.delta == math.inf:
            return "the baseline's quantized value is not finite: no difference to judge against it"
        return Estimate(*(float(v) for v in difference_ci(baseline, candidate)))
    return Estimate(candidate.delta, candidate.delta_ci_low, candidate.delta_ci_high)


def _quantity(budget: Budget, params: float | None) -> str:
    if budget.kind == "forecast":
        size = f", N={params:.4g}" if params else ""
        return f"δ at D/N={budget.tokens_per_param:g}{size} ({budget.law} fit on {budget.fit})"
    # A higher-is-better metric's damage is its drop, fp − quant: named so, positive = worse, as δ is.
    damage = "drop" if budget.higher_better else "δ"
    if budget.kind == "baseline":
        return f"{damage} − {damage}({reference(budget.checkpoint)})"
    return {"absolute": damage, "relative": f"{damage}/fp (%)"}[budget.kind]


def _check(
    budget: Budget,
    config: QuantConfig,
    evaluation,
    checkpoint: str,
    quantity: str,
    value: Estimate | str,
    uncertainty: str,
) -> Check:
    """The check's row: judged when there is a value, undecided (with why not) when there is none."""
    if isinstance(value, str):
        estimate, (decision, reason) = Estimate(math.nan, math.nan, math.nan), ("undecided", value)
    else:
        estimate, (decision, reason) = value, judge(value, budget.max, uncertainty)
    return Check(
        checkpoint=checkpoint,
        method=config.method,
        format=config.format,
        bits=config.bits,
        group_size=config.group_size,
        symmetric=config.symmetric,
        eval=evaluation.name,
        eval_label=evaluation.short_name,
        metric=budget.metric,
        budget_kind=budget.kind,
        quantity=quantity,
        budget=budget.max,
        value=float(estimate.value),
        ci_low=float(estimate.ci_low),
        ci_high=float(estimate.ci_high),
        decision=decision,
        reason=reason,
    )


def _forecast_checks(
    policy: Policy, index: int, candidate: str, results: pd.DataFrame, forecasts: ForecastFits
) -> Iterator[Check]:
    budget = policy.budgets[index]
    params = budget.params or _params(results, candidate)
    quantity = _quantity(budget, params)
    for config in release_configs(policy.quant):
        for evaluation in _scope(policy, budget):
            fit = forecasts.get((index, fit_key(config, evaluation.name, budget.metric)))
            value = _forecast(budget, fit, params, config.bits_per_weight)
            check = _check(budget, config, evaluation, candidate, quantity, value, policy.uncertainty)
            if isinstance(fit, LawFit) and fit.law.name != budget.law:  # a supported break took over
                bend = f"from the {fit.law.name} law: δ bends at D/N {math.exp(fit.theta[4]):.3g}"
                check = replace(check, reason=f"{check.reason} ({bend})")
            yield check


def _measured_checks(
    policy: Policy, budget: Budget, candidate: str, results: pd.DataFrame, failed: dict[str, str]
) -> Iterator[Check]:
    quantity, baseline = _quantity(budget, None), budget.checkpoint and reference(budget.checkpoint)

    def measured(checkpoint: str, config: QuantConfig, eval_name: str) -> pd.Series | str:
        if checkpoint in failed:  # its stored rows may be of other weights: never decided on
            return f"{checkpoint} failed in this run: {failed[checkpoint]}"
        return _measured(results, checkpoint, config, eval_name, budget, policy.min_coverage)

    for config in release_configs(policy.quant):
        for evaluation in _scope(policy, budget):
            mine = measured(candidate, config, evaluation.name)
            theirs = baseline and measured(baseline, config, evaluation.name)
            value = _compared(budget, mine, theirs)
            yield _check(budget, config, evaluation, candidate, quantity, value, policy.uncertainty)


def decide(
    policy: Policy,
    checkpoint: str,
    results: pd.DataFrame,
    forecasts: ForecastFits | None = None,
    failed: dict[str, str] | None = None,
    artifact: str | None = None,
) -> Verdict:
    """The verdict on one checkpoint from results in the `results` columns, the forecast budgets' fits, and the
    checkpoints that failed in the run before it (checkpoint -> why: their measured checks are undecided);
    `artifact`: the quantized file of it the policy judges (`policy.artifact_policy`), as the verdict names it."""
    candidate = reference(checkpoint)
    check_budget_scopes(policy)
    checks = [
        check
        for index, budget in enumerate(policy.budgets)
        for check in (
            _forecast_checks(policy, index, candidate, results, forecasts or {})
            if budget.kind == "forecast"
            else _measured_checks(policy, budget, candidate, results, failed or {})
        )
    ]
    return Verdict(candidate, policy.name, policy.uncertainty, tuple(checks), artifact)
