"""A gate verdict for people and CI: a Markdown table (stdout, GitHub step summaries) and a JSON record."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pandas as pd

from ptq_eval.gate.checks import Check, Verdict
from ptq_eval.gate.policy import UNCERTAINTY
from ptq_eval.quant import INT, granularity
from ptq_eval.report.document import cell
from ptq_eval.results import markdown_table
from ptq_eval.version import __version__

MARKS = {"pass": "✅", "fail": "❌", "undecided": "❔"}


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
            "format": [c.format for c in checks],
            "bits": [c.bits for c in checks],
            "granularity": [granularity(c.group_size) for c in checks],
            "eval": [c.eval_label for c in checks],
            "metric": [c.metric for c in checks],
            "budget": [f"{c.quantity} ≤ {c.budget:g}" for c in checks],
            "value [95% CI]": [_interval(c) for c in checks],
            "decision": [f"{MARKS[c.decision]} {c.decision}" for c in checks],
            "reason": [c.reason for c in checks],
        }
    )
    if (table.format == INT).all():
        table = table.drop(columns="format")  # shown where a release is gated in another format
    counts = ", ".join(f"{n} {decision}" for decision, n in verdict.counts().items())
    shown = Path(verdict.checkpoint).name if Path(verdict.checkpoint).is_absolute() else verdict.checkpoint
    judged = f" as `{verdict.artifact}`" if verdict.artifact else ""
    heading = f"## Release gate: {MARKS[verdict.decision]} {verdict.decision.upper()} — `{shown}`{judged}\n\n"
    rule = f"Policy `{verdict.policy}`, uncertainty rule `{verdict.uncertainty}`: {UNCERTAINTY[verdict.uncertainty]}."
    return heading + f"{rule} {len(checks)} checks: {counts}.\n\n" + markdown_table(table)


def publish_verdict(verdict: Verdict, out: Path, summaries: list[str | None], record: dict) -> str:
    """Write the verdict as JSON to `out` (with `record`'s extra facts) and append its Markdown to each summary
    file (and to $GITHUB_STEP_SUMMARY when set); returns the Markdown."""
    markdown = verdict_markdown(verdict)
    out.parent.mkdir(parents=True, exist_ok=True)
    data = verdict.as_dict() | record | {"ptq_eval": __version__}
    out.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    for summary in dict.fromkeys(filter(None, [*summaries, os.environ.get("GITHUB_STEP_SUMMARY")])):
        with open(summary, "a", encoding="utf-8") as handle:
            handle.write(markdown + "\n")
    return markdown
