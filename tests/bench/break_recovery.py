"""Recovery of a break in δ(D/N) (`make bench-fit`, its second table): simulated ladders with a known break and
without one, fitted by the broken law (`broken_dn`) beside the straight per-bit law, as `ptq-eval fit` does.

    python tests/bench/break_recovery.py --seeds 30 --resamples 100 [--noise 0.05] [--measurement 0.005]

Design: one P (a single-width probe of a ladder), N in {2e4, 5e4, 1e5, 2e5} x D/N in {5..320}; δ = C ·
(D/N)^γ_1 / N^γ_N bending to (D/N)^γ_2 past the break (smoothly, `fit/laws.py`), log-normal scatter σ --noise,
additive measurement noise σ --measurement nats (CI ±1.96σ). With a break: γ_1 0.3 → γ_2 1.2 at D/N 40;
without: γ_1 = γ_2 = 0.6. Prints, per scenario, the bias and 95%-interval coverage of the break and of both
slopes, and how often the held-out comparison says "break" (`fit/breaks.py`): the detection rate where there
is one, the false-positive rate where there is none. Not collected by pytest.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from simulate import simulate_results  # noqa: E402

from ptq_eval.fit import FitKey, FitOptions, fit_delta  # noqa: E402
from ptq_eval.fit.breaks import break_support  # noqa: E402
from ptq_eval.fit.laws import broken_law  # noqa: E402
from ptq_eval.results import markdown_table  # noqa: E402

SIZES, RATIOS = (2e4, 5e4, 1e5, 2e5), (5, 10, 20, 40, 80, 160, 320)
SCENARIOS = {
    "break at D/N 40": {"C": 1.0, "gamma_1": 0.3, "gamma_2": 1.2, "gamma_N": 0.4, "break_D_over_N": 40.0},
    "no break": {"C": 1.0, "gamma_1": 0.6, "gamma_2": 0.6, "gamma_N": 0.4, "break_D_over_N": 40.0},
}
REPORTED = {"break_D_over_N": "break (D/N)", "gamma_1": "γ_1", "gamma_2": "γ_2"}


def recovery(args: argparse.Namespace) -> pd.DataFrame:
    law = broken_law("broken_dn", False, (float(np.log(RATIOS[1])), float(np.log(RATIOS[-2]))))
    rows = []
    for scenario, truth in SCENARIOS.items():
        for seed in range(args.seeds):
            results = simulate_results(
                law, truth, SIZES, RATIOS, (4,), noise=args.noise, seed=seed, measurement=args.measurement
            )
            options = FitOptions(args.resamples, seed)
            fits = [fit_delta(results, name, FitKey(), options) for name in ("broken_dn", "per_bit")]
            found = break_support(fits[0], fits)
            table = fits[0].table().set_index("parameter")
            for parameter, label in REPORTED.items():
                value, low, high = table.loc[parameter, ["value", "ci_low", "ci_high"]]
                rows.append({"scenario": scenario, "seed": seed, "parameter": label, "truth": truth[parameter],
                             "value": value, "covered": low <= truth[parameter] <= high,
                             "found_break": found.supported})  # fmt: skip
    return pd.DataFrame(rows)


def summary(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.assign(error=frame.value - frame.truth)
    table = frame.groupby(["scenario", "parameter"], sort=False).agg(
        truth=("truth", "first"), median_estimate=("value", "median"), mean_bias=("error", "mean"),
        coverage=("covered", "mean"), break_found=("found_break", "mean"),
    )  # fmt: skip
    return table.reset_index().round(4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=30)
    parser.add_argument("--resamples", type=int, default=100)
    parser.add_argument("--noise", type=float, default=0.05, help="σ of the law's log-normal scatter")
    parser.add_argument("--measurement", type=float, default=0.005, help="σ (nats) of the additive noise on δ")
    args = parser.parse_args()
    table = summary(recovery(args))
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    print(f"# Break recovery: the broken law beside the straight one ({time.strftime('%Y-%m-%d')}, {machine})\n")
    print(
        f"{args.seeds} seeds per scenario, {args.resamples} resamples, law scatter σ={args.noise}, measurement "
        f"σ={args.measurement} nats, one P, N {', '.join(f'{n:g}' for n in SIZES)} × D/N "
        f"{', '.join(map(str, RATIOS))}. `break_found`: the share of seeds where the held-out comparison supports a "
        "break (the detection rate with one, the false-positive rate without; the same for each row of a "
        "scenario). Coverage: of the 95% bootstrap interval (nominal 0.95); without a break its location means "
        "nothing.\n"
    )
    print(markdown_table(table), end="")


if __name__ == "__main__":
    main()
