"""The report's number formats section: P per config, δ at the most over-trained point, γ_D with its interval."""

from __future__ import annotations

import re

from constructed import constructed_store

from ptq_eval.fit import FitOptions, fit_study
from ptq_eval.report.formats import formats_section
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
