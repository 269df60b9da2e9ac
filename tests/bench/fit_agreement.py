"""Do two fitters give the same answers? Compares two `ptq-eval fit --format json` outputs of the same results
(say, before and after a change to fit/) by the fit-speed issue's rule: every estimate within 1% of its CI's
width (or 1e-4), every interval endpoint within 5% of it; the negative-control flags, bound violations, refit
counts, the breaks' support and the laws fitted unchanged. Prints a Markdown summary and the rows that differ.

    python tests/bench/fit_agreement.py BEFORE.json AFTER.json [--label demo]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from ptq_eval.results import markdown_table  # noqa: E402

KEY = ["law", "eval", "metric", "method", "format", "group_size", "symmetric", "options"]
SCORES = ("control_flags", "bound_violations", "resamples_refit")


def _moved(before: pd.Series, after: pd.Series, width: pd.Series, share: float) -> pd.Series:
    """Whether a number moved by more than `share` of the width (and more than 1e-4); NaN on one side only
    counts as moved."""
    gap = (after - before).abs()
    one_missing = before.isna() != after.isna()
    return one_missing | ((gap > 1e-4) & ~(gap <= share * width))


def compare(before: dict, after: dict) -> tuple[dict, pd.DataFrame]:
    """Counts of what moved, and the parameter rows that moved, with their moves as shares of the width."""
    old, new = pd.DataFrame(before["parameters"]), pd.DataFrame(after["parameters"])
    on = [c for c in KEY if c in old] + ["parameter"]
    both = old.merge(new, on=on, how="outer", suffixes=("_before", "_after"), indicator=True)
    shared = both[both._merge == "both"].copy()
    width = shared.ci_high_before - shared.ci_low_before
    shared["estimate_moved"] = _moved(shared.value_before, shared.value_after, width, 0.01)
    shared["low_moved"] = _moved(shared.ci_low_before, shared.ci_low_after, width, 0.05)
    shared["high_moved"] = _moved(shared.ci_high_before, shared.ci_high_after, width, 0.05)
    for name, column in (("estimate", "value"), ("low", "ci_low"), ("high", "ci_high")):
        shared[f"{name}_share"] = (shared[f"{column}_after"] - shared[f"{column}_before"]).abs() / width
    moved = shared[shared.estimate_moved | shared.low_moved | shared.high_moved]
    goodness = pd.DataFrame(before["goodness"]).merge(
        pd.DataFrame(after["goodness"]), on=[c for c in KEY if c in before["goodness"][0]], suffixes=("_b", "_a")
    )
    counts = {
        "parameters compared": len(shared),
        "estimates moved": int(shared.estimate_moved.sum()),
        "interval endpoints moved": int(shared.low_moved.sum() + shared.high_moved.sum()),
        "largest estimate move (share of width)": float(np.nanmax(shared.estimate_share.replace(np.inf, np.nan))),
        "largest endpoint move (share of width)": float(np.nanmax(shared[["low_share", "high_share"]].to_numpy())),
        "parameters only before": int((both._merge == "left_only").sum()),
        "parameters only after": int((both._merge == "right_only").sum()),
        "laws fitted only before": sorted(set(after["failures"]) - set(before["failures"])),
        "laws fitted only after": sorted(set(before["failures"]) - set(after["failures"])),
    }
    for score in SCORES:
        if f"{score}_b" in goodness:
            changed = goodness[f"{score}_b"].fillna(-1) != goodness[f"{score}_a"].fillna(-1)
            counts[f"fits whose {score} changed"] = int(changed.sum())
    breaks_before, breaks_after = pd.DataFrame(before["breaks"]), pd.DataFrame(after["breaks"])
    if len(breaks_before) and len(breaks_after):
        on = [c for c in KEY if c in breaks_before]
        both_breaks = breaks_before.merge(breaks_after, on=on, suffixes=("_b", "_a"))
        counts["break decisions changed"] = int((both_breaks.supported_b != both_breaks.supported_a).sum())
    return counts, moved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--label", default="")
    args = parser.parse_args()
    counts, moved = compare(json.loads(args.before.read_text()), json.loads(args.after.read_text()))
    print(f"### {args.label or args.after.stem}: {args.before.name} -> {args.after.name}\n")
    print(markdown_table(pd.DataFrame({"what": list(counts), "found": [str(v) for v in counts.values()]})), end="")
    if len(moved):
        columns = ["law", "method", "format", "group_size", "parameter", "value_before", "value_after",
                   "ci_low_before", "ci_low_after", "ci_high_before", "ci_high_after", "estimate_share", "low_share",
                   "high_share"]  # fmt: skip
        print("\nRows that moved (share: the move over the before-interval's width):\n")
        print(markdown_table(moved[[c for c in columns if c in moved]].round(4)), end="")


if __name__ == "__main__":
    main()
