"""Release gate: `policy.py` (what a policy is), `checks.py` (budgets → checks → verdict); the verdict's
Markdown and JSON are in `report/verdict.py`."""

from ptq_eval.gate.checks import (
    DECISIONS,
    Check,
    Verdict,
    check_budget_scopes,
    coverage_shortfall,
    decide,
    fit_forecasts,
    judge,
)
from ptq_eval.gate.policy import (
    UNCERTAINTY,
    Budget,
    Policy,
    PolicyError,
    artifact_policy,
    gate_study,
    load_policy,
    parse_policy,
    reference,
    release_configs,
)

__all__ = [
    "DECISIONS",
    "UNCERTAINTY",
    "Budget",
    "Check",
    "Policy",
    "PolicyError",
    "Verdict",
    "artifact_policy",
    "check_budget_scopes",
    "coverage_shortfall",
    "decide",
    "fit_forecasts",
    "gate_study",
    "judge",
    "load_policy",
    "parse_policy",
    "reference",
    "release_configs",
]
