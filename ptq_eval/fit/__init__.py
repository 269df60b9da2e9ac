"""Scaling-law fits of PTQ degradation δ(N, D, P) and of the full-precision loss L(N, D), per (eval, metric,
quant config).

- `laws.py`: the laws (Kumar et al., the power law in bits, per bit width, the learning-rate phase, the base
  loss) and their points;
- `data.py`: which results a fit sees (keys, losses in nats, measured / censored / excluded points);
- `solve.py`: the censored robust objective, minimised for many starts, resamples and folds as one batch;
- `identify.py`: whether points identify a law, its re-centred starts, one fit or many reweighted refits;
- `estimate.py`: bootstrap intervals, held-out error, estimates on worker processes and their cache;
- `forecast.py`: δ at a new point, the largest D/N or smallest P within a budget, the critical D;
- `study.py`: every law for every key of a study (`fit_study`), and the censoring comparison.
"""

from ptq_eval.fit.data import UNKNOWN_D, FitError, FitKey, fit_keys, in_nats, nats_label, select, stack
from ptq_eval.fit.estimate import Estimate, FitOptions, LawFit, fit_points
from ptq_eval.fit.forecast import critical_tokens, forecast_table, max_tokens_per_param, min_bits, predict_delta
from ptq_eval.fit.laws import BASE, KUMAR, PHASE, PHASE_ONLY, RIVAL, Law, Points, per_bit_law, query
from ptq_eval.fit.study import StudyFit, compare_censoring, compare_phase, fit_base, fit_delta, fit_study

__all__ = [
    "BASE", "KUMAR", "PHASE", "PHASE_ONLY", "RIVAL", "UNKNOWN_D", "Estimate", "FitError", "FitKey", "FitOptions",
    "Law", "LawFit",
    "Points", "StudyFit", "compare_censoring", "compare_phase", "critical_tokens", "fit_base", "fit_delta", "fit_keys",
    "fit_points", "fit_study", "forecast_table", "in_nats", "max_tokens_per_param", "min_bits", "nats_label",
    "per_bit_law", "predict_delta", "query", "select", "stack",
]  # fmt: skip
