"""The report's side-by-side sections: formats (P per config, δ at the most over-trained point, γ_D with its
interval) and methods (the same, and whether δ bends; which grows slowest, which loses least)."""

from __future__ import annotations

import math
import re

from constructed import constructed_store

from ptq_eval.fit import FitOptions, fit_study
from ptq_eval.report.side_by_side import formats_section, methods_section
from ptq_eval.results import study_results
from ptq_eval.store import Store

CHECKPOINTS = {
    f"ladder/n{n // 1000}k/tpp{r}": (float(n), float(n * r)) for n in (20_000, 50_000, 100_000) for r in (10, 40, 160)
}
QUANT = [
    {"method": "rtn", "bits": [3, 4], "group_size": -1},
    {"method": "rtn", "format": ["nvfp4", "mxfp4"]},
]


def test_formats_side_by_side_with_their_precision_damage_and_gamma_d(tmp_path):
    study = constructed_store(tmp_path / "formats.sqlite", CHECKPOINTS, QUANT, ci_half_width=0.05)
    with Store(tmp_path / "formats.sqlite") as store:
        results = study_results(study, store)
    loss = results[results.metric == "loss"]
    fitted = fit_study(loss, options=FitOptions(resamples=16), laws=("kumar", "per_bit"))
    section = formats_section(loss, fitted.fits, "loss (nats/token)")
    table = section.tables[0].frame.set_index("config")
    assert list(table["bits per weight (P)"]) == ["3", "4", "4.25", "4.5"]
    assert table.loc["4-bit rtn nvfp4 group16", "γ_D from"] == "per_bit"  # one P: the per-bit law's exponent
    assert table.loc["3-bit rtn int channel", "γ_D from"] == "kumar"  # two bit widths: Kumar et al.'s
    for text in table["γ_D [95% CI]"]:  # the constructed δ grows as D^0.6
        value, low, high = map(float, re.match(r"([\d.]+) \[([\d.]+), ([\d.]+)\]", text).groups())
        assert 0.5 < value < 0.7 and low <= value <= high
    assert re.search(r"At D/N 160, .* degrades least", " ".join(section.paragraphs))


def test_a_study_of_one_format_has_no_formats_section(tmp_path):
    study = constructed_store(tmp_path / "int.sqlite", CHECKPOINTS, QUANT[:1])
    with Store(tmp_path / "int.sqlite") as store:
        loss = study_results(study, store).query("metric == 'loss'")
    assert formats_section(loss, [], "loss (nats/token)") is None


def per_method(params: float, tokens: float, bits: int, method: str) -> float:
    """δ from Kumar et al.'s law, growing as D^0.6 under RTN and D^0.3 under AWQ."""
    exponent = {"rtn": 0.6, "awq": 0.3}[method]
    return 0.02 * tokens**exponent / params**0.4 * math.exp(-bits / 1.2)


def test_methods_side_by_side_name_the_slowest_growth_and_the_least_damage(tmp_path):
    quant = [{"method": "rtn", "bits": [3, 4]}, {"method": "awq", "bits": [3, 4]}]
    study = constructed_store(tmp_path / "methods.sqlite", CHECKPOINTS, quant, delta=per_method, ci_half_width=0.05)
    with Store(tmp_path / "methods.sqlite") as store:
        loss = study_results(study, store).query("metric == 'loss'")
    fitted = fit_study(loss, options=FitOptions(resamples=16), laws=("kumar", "per_bit", "broken_dn"))
    section = methods_section(loss, fitted.fits, "loss (nats/token)")
    table = section.tables[0].frame.set_index(["method", "bits, grid"])
    for method, expected in (("rtn", 0.6), ("awq", 0.3)):
        text = table.loc[(method, "3-bit channel"), "γ_D [95% CI]"]
        value, low, high = map(float, re.match(r"([\d.]+) \[([\d.]+), ([\d.]+)\]", text).groups())
        assert abs(value - expected) < 0.1 and low <= value <= high
        assert table.loc[(method, "3-bit channel"), "γ_D from"] == "kumar"
    assert set(table["bends?"]) <= {"no", "not fitted"} | {v for v in table["bends?"] if v.startswith("yes, in")}
    text = " ".join(section.paragraphs)
    assert "Damage grows slowest with D/N (channel): awq" in text and "its interval lies below every other's" in text
    assert "At D/N 160, 3-bit channel: awq loses least" in text and "4-bit channel: awq loses least" in text


def test_one_method_has_no_methods_section_and_formats_take_precedence(tmp_path):
    study = constructed_store(tmp_path / "rtn.sqlite", CHECKPOINTS, QUANT)
    with Store(tmp_path / "rtn.sqlite") as store:
        loss = study_results(study, store).query("metric == 'loss'")
    assert methods_section(loss[loss.format.fillna("int") == "int"], [], "loss (nats/token)") is None
    assert methods_section(loss, [], "loss (nats/token)") is None  # several formats: the formats section compares
