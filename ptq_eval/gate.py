"""Release gate: does a checkpoint's degradation at its release precision(s) stay within a policy's budgets?

A policy is a study without a ladder (the checkpoint to gate comes from the command line): its `quant`
entries are the release configs, its `evals` what they are scored on, plus `budgets` and an `uncertainty`
rule. Each budget makes one check per release config (and per eval in its scope); `max` bounds, by `kind`:

- `absolute`: δ, the paired degradation (metric units, e.g. nats/token for loss);
- `relative`: 100·δ/fp, δ as a percentage of the full-precision value;
- `baseline`: δ − δ(baseline checkpoint) for the same config and eval ("no worse than X by more than max"),
  its CI the two CIs' half-widths combined in quadrature (`report.compare.difference_ci`): that treats the
  two δs as independent, which is conservative as they share the evaluation tokens;
- `forecast`: δ of the loss at a planned D/N (N defaults to the checkpoint's), forecast by a scaling law
  fitted to a study's stored results or to a results CSV, with its bootstrap CI.

δ is quant − fp where lower is better (`LOWER_IS_BETTER`) and fp − quant where higher is better, so a
positive δ is always damage. `UNCERTAINTY` lists the rules that turn a value and its 95% CI into pass,
fail or undecided. A check without data (a result not stored, a law that cannot be fitted) is undecided.
The verdict fails if any check fails, else is undecided if any check is, else passes.

Coverage: a measured check is undecided (never a pass) when its quantized job covered less of the model
than the policy's `min_coverage` (a fraction of the non-embedding parameters), or, by default, when any
weight was left in full precision without an exclude pattern naming it, or when no coverage was recorded.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import pandas as pd
from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator

from ptq_eval.fit import Estimate, FitError, FitOptions, LawFit, fit_delta, predict_delta
from ptq_eval.quant import GPTQ_OPTIONS, QuantConfig
from ptq_eval.report.compare import difference_ci
from ptq_eval.report.document import cell
from ptq_eval.results import markdown_table, study_results
from ptq_eval.spec import LadderItem, QuantGrid, Strict, Study, StudyError, load_study, read_yaml, validation_problems
from ptq_eval.store import Store, json_ready

UNCERTAINTY = {
    "ci": "pass if the 95% CI lies within the budget, fail if it lies beyond it, undecided if it straddles it",
    "strict": "pass only if the 95% CI lies within the budget, otherwise fail",
    "point": "compare the point estimate with the budget, ignoring the CI",
}
DECISIONS = ("pass", "fail", "undecided")
MARKS = {"pass": "✅", "fail": "❌", "undecided": "❔"}
LOWER_IS_BETTER = ("loss", "perplexity", "word_perplexity", "byte_perplexity", "bits_per_byte")
KIND_FIELDS = {
    "baseline": ("checkpoint",),
    "forecast": ("tokens_per_param", "params", "fit", "store", "law", "resamples"),
}
REQUIRED_FIELDS = {"baseline": ("checkpoint",), "forecast": ("tokens_per_param", "fit")}
ForecastFits = dict[tuple[int, str, int], LawFit | str]  # (budget index, method, group size) -> fit or why not


class PolicyError(StudyError):
    """The policy file is missing, not YAML, or not a valid policy."""


class Budget(Strict):
    """One limit on degradation; what `max` bounds depends on `kind` (see the module docstring)."""

    kind: Literal["absolute", "relative", "baseline", "forecast"]
    max: float = Field(ge=0)
    metric: str = "loss"
    eval: str | None = None  # the name of one eval of the policy (default: every eval)
    higher_is_better: bool | None = None  # required for metrics not in LOWER_IS_BETTER
    checkpoint: str | None = None  # baseline: the checkpoint to compare with
    tokens_per_param: float | None = Field(default=None, gt=0)  # forecast: the planned D/N
    params: float | None = Field(default=None, gt=0)  # forecast: N (default: the gated checkpoint's)
    fit: str | None = None  # forecast: a study YAML (its stored results) or a results CSV
    store: str | None = None  # forecast: the fit study's store (default: the policy's)
    law: Literal["kumar", "rival", "per_bit"] = "kumar"  # forecast
    resamples: int = Field(default=100, gt=0)  # forecast: bootstrap resamples over checkpoints

    @model_validator(mode="after")
    def _fields_match_kind(self):
        for kind, names in KIND_FIELDS.items():
            for name in names:
                if self.kind != kind and name in self.model_fields_set:
                    raise ValueError(f"{name} applies to kind {kind} only, not {self.kind}")
        missing = [name for name in REQUIRED_FIELDS.get(self.kind, ()) if getattr(self, name) is None]
        if missing:
            raise ValueError(f"kind {self.kind} needs {' and '.join(missing)}")
        if self.kind == "forecast" and self.metric != "loss":
            raise ValueError(f"a forecast bounds the fitted loss δ, so metric must be loss, not {self.metric!r}")
        if self.higher_is_better is None and self.metric not in LOWER_IS_BETTER:
            raise ValueError(f"metric {self.metric!r} needs higher_is_better: true or false")
        return self


class Policy(Study):
    """A study without a ladder (its `quant` entries are the release configs), plus budgets."""

    ladder: list[LadderItem] = []
    budgets: list[Budget] = Field(min_length=1)
    uncertainty: Literal["ci", "strict", "point"] = "ci"
    store: str | None = None  # where results are read and written (default: runs/<name>.sqlite)
    min_coverage: float | None = Field(default=None, gt=0, le=1)  # default: every weight not excluded

    @field_validator("ladder")
    @classmethod
    def _no_ladder(cls, ladder):
        if ladder:
            raise ValueError("a policy has no ladder: the checkpoint to gate is given on the command line")
        return ladder

    @field_validator("budgets")
    @classmethod
    def _budgets_name_known_evals(cls, budgets, info: ValidationInfo):
        names = [evaluation.name for evaluation in info.data.get("evals", [])]
        for index, budget in enumerate(budgets):
            if names and budget.eval is not None and budget.eval not in names:
                raise ValueError(f"eval {budget.eval!r} (budgets[{index}]) is not an eval of the policy; "
                                 f"accepted: {', '.join(names)}")  # fmt: skip
        return budgets

    @field_validator("quant")
    @classmethod
    def _release_configs_distinct(cls, grids):
        configs = release_configs(grids)
        if len({_config_key(config) for config in configs}) < len(configs):
            raise ValueError(
                f"two configs differ only in GPTQ options ({', '.join(GPTQ_OPTIONS)}), so their results cannot be "
                "told apart; keep one"
            )
        return grids


def parse_policy(data: object, source: str = "<policy>") -> Policy:
    """Validate a parsed YAML document; errors list every problem with its key path."""
    try:
        return Policy.model_validate(data)
    except ValidationError as error:
        raise PolicyError(validation_problems(error, source)) from None


def load_policy(path: str | Path) -> Policy:
    return parse_policy(read_yaml(Path(path), "policy", PolicyError), str(path))


def reference(checkpoint: str) -> str:
    """A checkpoint spelled as studies spell it (no `./`, no trailing slash), so its stored results are found."""
    return os.path.normpath(checkpoint)


def release_configs(grids: list[QuantGrid]) -> list[QuantConfig]:
    """The distinct quant configs of these grid entries, in order."""
    return list(dict.fromkeys(config for grid in grids for config in grid.configs()))


def _config_key(config: QuantConfig) -> tuple:
    return config.method, config.bits, config.group_size, config.symmetric


def gate_study(policy: Policy, checkpoint: str) -> Study:
    """The study the gate needs: the checkpoint and every baseline checkpoint × release configs × evals."""
    baselines = [budget.checkpoint for budget in policy.budgets if budget.kind == "baseline"]
    ladder = list(dict.fromkeys(reference(c) for c in [checkpoint, *baselines]))
    settings = {name: getattr(policy, name) for name in Study.model_fields if name != "ladder"}
    return Study(**settings, ladder=ladder)


def _fit_source(budget: Budget, default_store: Path) -> pd.DataFrame:
    """The results a forecast fits on: a results CSV, or the stored results of a study YAML."""
    if budget.fit.endswith(".csv"):
        results = pd.read_csv(budget.fit)
    else:
        study = load_study(budget.fit)
        path = Path(budget.store) if budget.store else default_store
        if not path.is_file():
            raise FitError(f"no store at {path} for {budget.fit}: run `ptq-eval run {budget.fit} --store {path}`")
        with Store(path) as store:
            results = study_results(study, store)
    return results if budget.eval is None else results[results["eval"] == budget.eval]


def _budget_fits(budget: Budget, keys: list[tuple[str, int]], default_store: Path, seed: int) -> dict:
    try:
        results = _fit_source(budget, default_store)
    except (StudyError, FitError, FileNotFoundError) as error:
        return dict.fromkeys(keys, str(error))
    options = FitOptions(resamples=budget.resamples, seed=seed, validate=False)
    fits = {}
    for method, group_size in keys:
        try:
            fits[(method, group_size)] = fit_delta(results, budget.law, method, group_size, options)
        except FitError as error:
            fits[(method, group_size)] = str(error)
    return fits


def fit_forecasts(policy: Policy, default_store: Path) -> ForecastFits:
    """Each forecast budget's law fitted to each release (method, group size), or why it could not be."""
    keys = list(dict.fromkeys((config.method, config.group_size) for config in release_configs(policy.quant)))
    return {
        (index, *key): fit
        for index, budget in enumerate(policy.budgets)
        if budget.kind == "forecast"
        for key, fit in _budget_fits(budget, keys, default_store, policy.seed).items()
    }


@dataclass(frozen=True)
class Check:
    """One budget applied to one release config and eval of the gated checkpoint."""

    checkpoint: str
    method: str
    bits: int
    group_size: int
    symmetric: bool
    eval: str
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
        return head | {"decision": self.decision, "counts": self.counts(), "checks": checks}


def judge(estimate: Estimate, limit: float, uncertainty: str) -> tuple[str, str]:
    """pass, fail or undecided for `value ≤ limit` under an uncertainty rule, with the reason."""
    value, low, high = estimate.value, estimate.ci_low, estimate.ci_high
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
    """Why a result's coverage is too low to decide on (None when it is enough)."""
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
        & (results.group_size == config.group_size)
        & (results.symmetric == config.symmetric)
        & (results["eval"] == eval_name)
        & (results.metric == budget.metric)
    ]
    if rows.empty:
        return f"no stored {budget.metric} result for {checkpoint}"
    short = coverage_shortfall(rows.iloc[0], min_coverage)
    if short:
        return short
    row = rows.iloc[0][["delta", "delta_ci_low", "delta_ci_high", "fp_value"]].astype(float)
    if budget.higher_is_better:
        row = pd.Series([-row.delta, -row.delta_ci_high, -row.delta_ci_low, row.fp_value], index=row.index)
    return row


def _params(results: pd.DataFrame, checkpoint: str) -> float | None:
    rows = results.loc[results.checkpoint == checkpoint, "nonembedding_params"]
    return float(rows.iloc[0]) if len(rows) else None


def _forecast(budget: Budget, fit: LawFit | str | None, params: float | None, bits: int) -> Estimate | str:
    if not isinstance(fit, LawFit):
        return f"no forecast: {fit or 'not fitted'}"
    if params is None:
        return "N unknown: no stored result for the checkpoint; give params in the budget"
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
        return Estimate(*(float(v) for v in difference_ci(baseline, candidate)))
    return Estimate(candidate.delta, candidate.delta_ci_low, candidate.delta_ci_high)


def _quantity(budget: Budget, params: float | None) -> str:
    if budget.kind == "forecast":
        size = f", N={params:.4g}" if params else ""
        return f"δ at D/N={budget.tokens_per_param:g}{size} ({budget.law} fit on {budget.fit})"
    if budget.kind == "baseline":
        return f"δ − δ({reference(budget.checkpoint)})"
    return {"absolute": "δ", "relative": "δ/fp (%)"}[budget.kind]


def _check(
    budget: Budget,
    config: QuantConfig,
    eval_name: str,
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
        checkpoint, config.method, config.bits, config.group_size, config.symmetric, eval_name, budget.metric,
        budget.kind, quantity, budget.max, float(estimate.value), float(estimate.ci_low), float(estimate.ci_high),
        decision, reason,
    )  # fmt: skip


def _forecast_checks(
    policy: Policy, index: int, candidate: str, results: pd.DataFrame, forecasts: ForecastFits
) -> Iterator[Check]:
    budget = policy.budgets[index]
    params = budget.params or _params(results, candidate)
    quantity = _quantity(budget, params)
    for config in release_configs(policy.quant):
        value = _forecast(budget, forecasts.get((index, config.method, config.group_size)), params, config.bits)
        yield _check(budget, config, budget.eval or "", candidate, quantity, value, policy.uncertainty)


def _measured_checks(policy: Policy, budget: Budget, candidate: str, results: pd.DataFrame) -> Iterator[Check]:
    quantity, baseline = _quantity(budget, None), budget.checkpoint and reference(budget.checkpoint)
    for config in release_configs(policy.quant):
        for eval_name in (e.name for e in policy.evals if budget.eval in (None, e.name)):
            mine = _measured(results, candidate, config, eval_name, budget, policy.min_coverage)
            theirs = baseline and _measured(results, baseline, config, eval_name, budget, policy.min_coverage)
            value = _compared(budget, mine, theirs)
            yield _check(budget, config, eval_name, candidate, quantity, value, policy.uncertainty)


def decide(policy: Policy, checkpoint: str, results: pd.DataFrame, forecasts: ForecastFits | None = None) -> Verdict:
    """The verdict on one checkpoint from results in the `results` columns, and the forecast budgets' fits."""
    candidate = reference(checkpoint)
    checks = [
        check
        for index, budget in enumerate(policy.budgets)
        for check in (
            _forecast_checks(policy, index, candidate, results, forecasts or {})
            if budget.kind == "forecast"
            else _measured_checks(policy, budget, candidate, results)
        )
    ]
    return Verdict(candidate, policy.name, policy.uncertainty, tuple(checks))


def _interval(check: Check) -> str:
    if not math.isfinite(check.value):
        return "—"
    if not (math.isfinite(check.ci_low) and math.isfinite(check.ci_high)):
        return cell(check.value)
    return f"{cell(check.value)} [{cell(check.ci_low)}, {cell(check.ci_high)}]"


def verdict_markdown(verdict: Verdict) -> str:
    """The verdict as Markdown (a heading, the rule, one table row per check), e.g. for a CI step summary."""
    checks = verdict.checks
    table = pd.DataFrame(
        {
            "method": [c.method for c in checks],
            "bits": [c.bits for c in checks],
            "granularity": [QuantConfig(c.method, c.bits, c.group_size, c.symmetric).granularity for c in checks],
            "eval": [c.eval for c in checks],
            "metric": [c.metric for c in checks],
            "budget": [f"{c.quantity} ≤ {c.budget:g}" for c in checks],
            "value [95% CI]": [_interval(c) for c in checks],
            "decision": [f"{MARKS[c.decision]} {c.decision}" for c in checks],
            "reason": [c.reason for c in checks],
        }
    )
    counts = ", ".join(f"{n} {decision}" for decision, n in verdict.counts().items())
    heading = f"## Release gate: {MARKS[verdict.decision]} {verdict.decision.upper()} — `{verdict.checkpoint}`\n\n"
    rule = f"Policy `{verdict.policy}`, uncertainty rule `{verdict.uncertainty}`: {UNCERTAINTY[verdict.uncertainty]}."
    return heading + f"{rule} {len(checks)} checks: {counts}.\n\n" + markdown_table(table)
