"""Reports and comparisons on constructed store contents: sections, figures, escaping, significance."""

import html
import io
import math
import re
from dataclasses import replace

import pandas as pd
import pytest
from constructed import constructed_store

from ptq_eval.cli import main
from ptq_eval.evals.paired import difference_ci
from ptq_eval.report import plots
from ptq_eval.report.browser import chromium, render, shows_all
from ptq_eval.report.compare import compare_results
from ptq_eval.report.document import Document, is_current, to_html, write
from ptq_eval.report.study import ReportOptions, report_digest, study_report
from ptq_eval.results import COLUMNS, EXTRA, study_results, summary_table
from ptq_eval.results import render as render_results
from ptq_eval.store import Store

EVIL = "ladder/<script>alert(1)</script>/tpp80"
CHECKPOINTS = {
    f"ladder/n{n // 1000}k/tpp{r}": (float(n), float(n * r)) for n in (20_000, 50_000, 100_000) for r in (10, 40)
} | {EVIL: (100_000.0, 8e6)}
QUANT = [
    {"method": "rtn", "bits": [3, 4, 6], "group_size": [-1, 16]},
    {"method": "gptq", "bits": [3, 4], "group_size": [-1]},
]


@pytest.fixture(scope="module")
def study_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("report") / "constructed.sqlite"
    return constructed_store(path, CHECKPOINTS, QUANT), path


@pytest.fixture(scope="module")
def written(study_store, tmp_path_factory):
    study, path = study_store
    with Store(path) as store:
        document = study_report(study, store, ReportOptions(resamples=8))
    out = tmp_path_factory.mktemp("out")
    return document, write(document, out), out


def test_report_has_every_section_and_figure(written):
    document, files, out = written
    titles = [section.title for section in document.sections]
    assert titles == [
        "Summary",
        "Study constructed",
        "Degradation against tokens per parameter",
        "Loss through training",
        "Per-layer error of the calibrated methods",
        "Scaling-law fits",
        "Methods",  # RTN and GPTQ side by side
        "Forecasts",
        "Results",
        "Coverage",
        "Provenance",
    ]
    summary = document.sections[0]  # the first screen: the finding, the numbers a gate reads, the figure
    assert re.fullmatch(r"4-bit rtn channel: δ grows as D\^0\.\d\d \[.*\] at fixed N; at D/N 80 .*\(measured\)\.",
                        summary.paragraphs[0])  # fmt: skip
    assert re.match(r"At that checkpoint .*, rtn channel, .*: 3 bits .*; 4 bits .*; 6 bits .*; ", summary.paragraphs[1])
    assert [figure.name for figure in summary.figures] == ["headline_delta"]
    assert summary.figures[0].caption.startswith("4-bit rtn channel: ") and "fitted Kumar" in summary.figures[0].caption
    coverage = document.sections[-2].tables[0].frame
    assert set(coverage.coverage) == {"97.0%"} and set(coverage.matrices) == {8}
    figures = {p.name for p in (out / "figures").iterdir()}
    assert figures == {
        "headline_delta.png",
        "delta_vs_tokens_per_param.png",
        "delta_heatmap.png",
        "loss_through_training.png",
        "layer_errors.png",
    }
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in (out / "figures").iterdir())
    markdown = (out / "report.md").read_text()
    assert all(f"(figures/{name})" in markdown for name in figures)
    page = (out / "report.html").read_text()
    assert page.count("<img src='data:image/png;base64,") == 5 and "http" not in page.replace("http-equiv", "")
    # 7 checkpoints x (3 bits x 2 groups RTN + 2 GPTQ) = 56 rows in each of the loss and perplexity tables
    results = next(s for s in document.sections if s.title == "Results")
    assert [len(t.frame) for t in results.tables] == [56, 56]
    fits = next(s for s in document.sections if s.title == "Scaling-law fits")
    parameters = fits.tables[0].frame.set_index(["law", "method", "group_size", "parameter"])
    assert parameters.value[("kumar", "rtn", -1, "gamma_D")] == pytest.approx(0.6, abs=0.1)
    censoring = fits.tables[2].frame.set_index(["method", "group_size", "parameter"])
    assert fits.tables[2].caption.startswith("Kumar et al. parameters, censored vs excluded")
    assert list(censoring.columns[-2:]) == ["censor", "exclude"] and len(censoring) == 3 * 5
    assert censoring.censor[("rtn", -1, "gamma_D")].startswith("0.")


def test_report_draws_around_an_untrained_checkpoint(tmp_path):
    """A revision at step 0 has D = 0: no point or band on a log axis, never a crash; the fit leaves it out."""
    checkpoints = {f"ladder/n{n // 1000}k/tpp{r}": (float(n), float(n * r)) for n in (20_000, 50_000) for r in (10, 40)}
    checkpoints["ladder/n50k/step0"] = (50_000.0, 0.0)
    study = constructed_store(tmp_path / "s.sqlite", checkpoints, [{"method": "rtn", "bits": [3, 4, 6]}])
    with Store(tmp_path / "s.sqlite") as store:
        document = study_report(study, store, ReportOptions(resamples=8))
    summary = document.sections[0]
    assert "at D/N 40 (N = 50,000)" in summary.paragraphs[0] and "fitted Kumar" in summary.figures[0].caption
    grid = next(s for s in document.sections if s.title.startswith("Degradation")).figures[0]
    assert "3 points with δ ≤ 0 or D unknown or 0" in grid.caption


def test_summary_figure_names_its_config_and_marks_each_schedule(study_store):
    study, path = study_store
    with Store(path) as store:
        loss = study_results(study, store).query("metric == 'loss' and method == 'gptq'")
    in_n20k, in_tpp10 = loss.checkpoint.str.contains("n20k"), loss.checkpoint.str.contains("tpp10")
    split = loss.assign(sequential=in_n20k.map({True: "layer", False: "block"}),
                        schedule=in_tpp10.map({True: "linear", False: "wsd"}))  # fmt: skip
    titles = [title for title, _ in plots.quant_configs(split)]
    assert titles == ["gptq channel sequential=block", "gptq channel sequential=layer"]
    assert len(set(plots.schedule_markers(["wsd", "cosine", "linear", ""]).values())) == 4
    figure = plots.headline_delta(titles[0], split[split.sequential == "block"], None, 4)
    assert figure.caption.startswith("4-bit gptq channel sequential=block: ") and "one marker per" in figure.caption
    assert "censored" not in figure.caption  # no fit: nothing is censored in one
    assert plots.headline_delta(titles[0], split.assign(delta=-split.delta), None, 4) is None  # nothing to draw
    assert [plots.size_label(n) for n in (7e4, 1.4e8, 7e9, 7e10)] == ["N=70k", "N=140M", "N=7B", "N=70B"]


def test_html_escapes_names_it_did_not_write(written):
    _, _, out = written
    page = (out / "report.html").read_text()
    assert "<script>" not in page and "alert(1)" in page
    assert html.escape("<script>alert(1)</script>") in page
    assert re.findall(r"<(\w+)", page).count("script") == 0


def test_difference_ci_combines_half_widths_in_quadrature():
    a = pd.DataFrame({"delta": [0.10, 0.10], "delta_ci_low": [0.09, 0.09], "delta_ci_high": [0.11, 0.11]})
    b = pd.DataFrame({"delta": [0.13, 0.11], "delta_ci_low": [0.12, 0.10], "delta_ci_high": [0.14, 0.12]})
    difference, low, high = difference_ci(a, b)
    assert list(difference) == pytest.approx([0.03, 0.01])
    assert list(low) == pytest.approx([0.03 - 0.01 * 2**0.5, 0.01 - 0.01 * 2**0.5])
    assert list(high) == pytest.approx([0.03 + 0.01 * 2**0.5, 0.01 + 0.01 * 2**0.5])


def test_compare_marks_only_separated_deltas_significant(study_store):
    study, path = study_store
    with Store(path) as store:
        results = study_results(study, store)
    loss = results[results.metric == "loss"]
    low, high = (loss[loss.checkpoint == f"ladder/n100k/tpp{r}"] for r in (10, 40))
    table = compare_results(low, high)
    assert len(table) == 8 and (table.checkpoint == "").all()
    assert table.significant.all() and (table.difference > 0).all()  # 4x the tokens: δ up by 4^0.6 = 2.3x
    same = compare_results(high, high.assign(delta=high.delta * 1.05))
    assert not same.significant.any()  # ±10% CIs on each side: a 5% change is not significant


def test_cli_report_and_compare(study_store, tmp_path, capsys):
    study, path = study_store
    yaml_file = str(path.with_suffix(".yaml"))
    report = ["report", yaml_file, "--store", str(path), "--out", str(tmp_path / "r"), "--resamples", "8"]
    assert main(report) == 0  # the fits' estimates: stored by the module's report (same points and options)
    assert (tmp_path / "r" / "report.html").is_file() and "report.md" in capsys.readouterr().err
    assert main(report) == 0 and "up to date" in capsys.readouterr().err  # nothing changed: nothing rebuilt
    with Store(path) as store:  # other options, or a file of the report gone: written again
        digest = report_digest(study, store, ReportOptions(resamples=8))
        assert report_digest(study, store, ReportOptions(resamples=8, budget=0.1)) != digest
    assert is_current(tmp_path / "r", digest)
    (tmp_path / "r" / "figures" / "delta_heatmap.png").unlink()
    assert not is_current(tmp_path / "r", digest)
    args = ["compare", yaml_file, "--store-a", str(path), "--out", str(tmp_path / "c")]
    assert main(args + ["--checkpoints", "n20k/tpp10", "n20k/tpp40"]) == 0
    out = capsys.readouterr().out
    assert "| method | bits | group_size | eval | metric | delta_a |" in out and out.count("| yes |") == 8
    assert (tmp_path / "c" / "compare.html").is_file()
    assert main(args + ["--checkpoints", "n20k", "n20k/tpp40"]) == 3
    assert "checkpoint 'n20k' matches 2 checkpoints" in capsys.readouterr().err
    assert main(["report", yaml_file, "--store", str(tmp_path / "missing.sqlite")]) == 3
    assert "no store at" in capsys.readouterr().err


@pytest.mark.skipif(chromium() is None, reason="headless Chromium not installed (apt-get install chromium)")
def test_report_renders_in_headless_chromium(written, tmp_path):
    document, _, out = written
    rendering = render(out / "report.html", tmp_path / "shot.png", height=3000)
    rows = sum(len(t.frame) for s in document.sections for t in s.tables)
    figures = sum(len(s.figures) for s in document.sections)
    assert figures == 5 and shows_all(rendering, figures=figures, table_rows=rows) == []
    assert rendering.tables == sum(len(s.tables) for s in document.sections)
    plotless = Document(document.title, [replace(s, figures=[]) for s in document.sections])
    (tmp_path / "plotless.html").write_text(to_html(plotless))
    problems = shows_all(render(tmp_path / "plotless.html", tmp_path / "p.png", height=3000), figures, rows)
    assert problems == ["0 images (0 embedded), expected 5", "only 0.00% coloured pixels: the plots did not draw"]


def test_tables_show_the_config_fields_that_vary_and_only_those(study_store):
    study, path = study_store
    with Store(path) as store:
        loss = study_results(study, store).query("metric == 'loss'").reset_index(drop=True)
    assert not {"symmetric", "act_order", "eval", "schedule"} & set(summary_table(loss).columns)
    plain = render_results(loss, "md")
    assert plain.startswith("| checkpoint | params |") and "| symmetric |" not in plain
    odd = loss.index % 2 == 1
    mixed = loss.assign(symmetric=odd, act_order=loss.act_order.where(loss.method != "gptq", odd))
    assert {"symmetric", "act_order"} <= set(summary_table(mixed).columns)
    header = render_results(mixed, "md").splitlines()[0]
    assert "| symmetric |" in header and "| act_order |" in header and "| eval |" not in header
    assert list(pd.read_csv(io.StringIO(render_results(loss, "csv"))).columns) == COLUMNS + EXTRA  # CSV: every column


GRID = {f"ladder/n{n // 1000}k/tpp{r}": (float(n), float(n * r)) for n in (20_000, 50_000, 100_000) for r in (10, 40)}


def test_compare_and_the_layer_figure_keep_gptq_variants_apart(tmp_path, monkeypatch):
    variants = [{"method": "gptq", "bits": [3, 4], "act_order": flag} for flag in (True, False)]
    study = constructed_store(tmp_path / "s.sqlite", GRID, variants)
    with Store(tmp_path / "s.sqlite") as store:
        results = study_results(study, store)
        drawn, draw = {}, plots.layer_errors
        monkeypatch.setattr(
            plots, "layer_errors", lambda layers, checkpoint: drawn.update(layers) or draw(layers, checkpoint)
        )
        document = study_report(study, store, ReportOptions(resamples=8))
    assert "D/N 10 to 40) × 4 quantization configs × 1 evals" in document.sections[1].paragraphs[0]
    assert sorted(drawn) == [f"{b}-bit gptq channel act_order={flag}" for b in (3, 4) for flag in (False, True)]
    low, high = (results[results.checkpoint == f"ladder/n100k/tpp{r}"] for r in (10, 40))
    table = compare_results(low, high)
    assert len(table) == 2 * 2 * 2  # bits x act_order x metric: an act_order row is never paired with the other
    assert (table.act_order.astype(bool) == table.act_order).all()
    from ptq_eval.report.compare import compare_document

    shown = compare_document(table, ("a", "b")).sections[1].tables[0].frame
    assert "act_order" in shown and "damp" not in shown and "symmetric" not in shown
    rtn_only = constructed_store(tmp_path / "r.sqlite", GRID, [{"method": "rtn", "bits": [3, 4]}], name="rtn")
    both = constructed_store(tmp_path / "m.sqlite", GRID, [*variants, {"method": "rtn", "bits": [3, 4]}], name="m")
    with Store(tmp_path / "r.sqlite") as store_r, Store(tmp_path / "m.sqlite") as store_m:
        rtn, mixed = study_results(rtn_only, store_r), study_results(both, store_m)
    assert rtn.act_order.dtype == float and mixed.act_order.dtype == object  # RTN-only: no GPTQ option anywhere
    shared = compare_results(mixed, rtn)  # a study's RTN rows still pair with another's
    assert len(shared) == 6 * 2 * 2 and set(shared.method) == {"rtn"}


def test_reports_survive_missing_intervals_and_a_width_that_diverged_everywhere(tmp_path):
    nan = math.nan
    no_ci = constructed_store(tmp_path / "a.sqlite", GRID, QUANT[:1], ci_half_width=nan)  # every CI stored NULL

    def two_bits_diverge(params, tokens, bits, method):
        return nan if bits == 2 else 0.02 * tokens**0.6 / params**0.4

    diverged = constructed_store(
        tmp_path / "b.sqlite", GRID, [{"method": "rtn", "bits": [2, 3, 4]}], delta=two_bits_diverge
    )
    for study, path in ((no_ci, tmp_path / "a.sqlite"), (diverged, tmp_path / "b.sqlite")):
        with Store(path) as store:
            results = study_results(study, store)
            document = study_report(study, store, ReportOptions(resamples=8))
        assert results.delta_ci_low.dtype == float and document.sections[0].title == "Summary"
    with Store(tmp_path / "b.sqlite") as store:
        at_two_bits = study_report(diverged, store, ReportOptions(resamples=8, bits=2)).sections[0].paragraphs
    assert "δ is not finite: the quantized model's loss (nats/token) overflowed or is NaN" in at_two_bits[0]
    low, high = (results[results.checkpoint == f"ladder/n100k/tpp{r}"] for r in (10, 40))
    assert compare_results(low, high).difference.notna().sum() == 2 * 2  # 3 and 4 bits, loss and perplexity


def test_cli_budgets_and_sizes_must_be_positive(study_store, capsys):
    study, path = study_store
    yaml_file = str(path.with_suffix(".yaml"))
    for bad in (["fit", yaml_file, "--budget", "-0.1"], ["report", yaml_file, "--budget", "0"],
                ["fit", yaml_file, "--params", "nan"]):  # fmt: skip
        with pytest.raises(SystemExit) as stopped:
            main(bad)
        assert stopped.value.code == 3 and "expected a finite number > 0" in capsys.readouterr().err
    assert main(["fit", yaml_file, "--store", str(path), "--predict", "N=0,D=1e6,P=4"]) == 3
    assert "each a number > 0" in capsys.readouterr().err


def test_compare_never_pairs_configs_that_differ_only_in_what_they_round_besides_weights():
    base = {"checkpoint": "c", "format": "int", "granularity": "channel", "group_size": -1, "symmetric": True,
            "eval": "ppl", "metric": "loss", "delta_ci_low": 0.0, "delta_ci_high": 1.0}  # fmt: skip
    rows = [
        {"method": "fp", "bits": 8, "kv_cache": "int token", "kv_bits": 8.0, "delta": 0.1},
        {"method": "fp", "bits": 8, "activations": "int token", "activation_bits": 8.0, "delta": 0.6},
        {"method": "rtn", "bits": 4, "delta": 0.2},
        {"method": "rtn", "bits": 4, "kv_cache": "int token", "kv_bits": 4.0, "delta": 0.9},
    ]
    side = pd.DataFrame([base | row for row in rows])
    table = compare_results(side, side.assign(delta=side.delta + 0.01))
    assert len(table) == 4 and (table.difference.round(6) == 0.01).all()
