"""Command line: `ptq-eval run | merge | results | fit | report | compare | gate | ladder | export`.

The only module that prints or exits."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import sys
from pathlib import Path

from ptq_eval.errors import EXIT_FAIL, EXIT_INPUT, EXIT_INTERNAL, EXIT_OK, EXIT_UNDECIDED, UserError
from ptq_eval.store import existing_store, store_path

GATE_EXIT_CODES = {"pass": EXIT_OK, "fail": EXIT_FAIL, "undecided": EXIT_UNDECIDED}
SUMMARY_NOTE = (
    "δ = quantized − full-precision value, paired: validation loss (nats/token) over the same tokens with a "
    "95% bootstrap CI over windows; lm-eval task metrics over the same documents with a 95% paired bootstrap "
    "CI over documents."
)


def _slug(name: str) -> str:
    """A checkpoint or study label as one file name."""
    return name.replace("/", "_").replace(":", "_")


def _quiet_transformers() -> None:
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    logging.getLogger("lm_eval").setLevel(logging.ERROR)  # its notes on in-memory models are expected here


def _run_missing(study, store, executor=None, shard=None):
    """Run the study's jobs not yet in the store, with progress on stderr; returns the run summary."""
    from tqdm import tqdm

    from ptq_eval.runner import run_study

    bar = tqdm(desc=study.name, unit="job", file=sys.stderr, disable=None)

    def progress(message: str, advance: int) -> None:
        if advance == 0:
            print(message, file=sys.stderr)
        bar.set_postfix_str(message)
        bar.update(advance)

    summary = run_study(study, store, progress, executor, shard)
    bar.close()
    return summary


@contextlib.contextmanager
def _fit_progress(description: str):
    """A progress callback for fits: a bar on stderr when it is a terminal (which law and key was estimated,
    with how many resamples; a new bar for each batch of fits), nothing otherwise."""
    from tqdm import tqdm

    bars = []

    def progress(done: int, total: int, task) -> None:
        if not bars or bars[-1].total != total or bars[-1].n >= total:
            if bars:
                bars[-1].close()
            bars.append(tqdm(desc=description, total=total, initial=done - 1, unit="fit", file=sys.stderr,
                             disable=None, mininterval=0.2, miniters=1))  # fmt: skip
        bars[-1].set_postfix_str(f"{task.label}: {task.options.resamples} resamples", refresh=False)
        bars[-1].update(1)

    tqdm.monitor_interval = 0  # no monitor thread: fits fork worker processes, which a running thread makes unsafe
    try:
        yield progress
    finally:
        if bars:
            bars[-1].close()


def _executor(args, study):
    """The executor `run` asked for (None: in this process)."""
    if args.executor == "local":
        if args.address or args.ray_cpus is not None:
            raise UserError(f"{'--address' if args.address else '--ray-cpus'} is for --executor ray")
        return None
    if args.address and args.ray_cpus:
        raise UserError("--ray-cpus sizes a local Ray instance; with --address the cluster's own resources are used")
    from ptq_eval.executors import RayExecutor

    if args.ray_cpus is not None and args.ray_cpus < 1:
        raise UserError(f"--ray-cpus {args.ray_cpus}: expected a positive number of CPUs")
    return RayExecutor(study.device, args.address, args.ray_cpus, study.quant_device)


def cmd_run(args) -> int:
    from ptq_eval.executors import parse_shard
    from ptq_eval.results import markdown_table, render, study_results, summary_tables
    from ptq_eval.spec import load_study
    from ptq_eval.store import Store

    _quiet_transformers()
    study = load_study(args.study)
    shard = parse_shard(args.shard) if args.shard else None
    executor = _executor(args, study)
    with Store(store_path(args.store, study.name)) as store:
        summary = _run_missing(study, store, executor, shard)
        results = study_results(study, store)
    tables = summary_tables(results)
    text = "\n".join(
        markdown_table(table) if len(tables) == 1 else f"## {title}\n\n{markdown_table(table)}"
        for title, table in tables
    )
    print(text, end="")
    by_others = f", {summary.by_others} run by another run sharing the store" if summary.by_others else ""
    print(
        f"\n{summary.ran} jobs run, {summary.already_done} already in {store.path}{by_others}, {summary.seconds:.1f}s",
        file=sys.stderr,
    )
    for job in summary.nonfinite_jobs:
        print(f"warning: non-finite losses in {job} (stored as NaN, never averaged)", file=sys.stderr)
    for job, left_out in summary.left_out.items():
        names = ", ".join(f"{name} ({why})" for name, why in list(left_out.items())[:3])
        print(
            f"warning: {job} left {len(left_out)} weights in full precision that no exclude pattern names: {names}; "
            "the gate will not pass it (exclude them explicitly if that is intended)",
            file=sys.stderr,
        )
    for reference, reason in summary.failed.items():
        print(f"error: checkpoint {reference} failed: {reason} (recorded; a re-run retries it)", file=sys.stderr)
    if args.report_dir:
        out = Path(args.report_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.csv").write_text(render(results, "csv"))
        (out / "results.md").write_text(render(results, "md"))
        (out / "summary.md").write_text(f"# {study.name}\n\n{SUMMARY_NOTE}\n\n" + text)
        print(f"wrote {out}/results.csv, results.md, summary.md", file=sys.stderr)
    return EXIT_FAIL if summary.failed else EXIT_OK


def cmd_merge(args) -> int:
    from ptq_eval.store import Store, merge_stores

    with Store(args.into) as target:
        merged = merge_stores(target, args.stores)
    print(
        f"merged {len(args.stores)} stores into {args.into}: {merged.copied} jobs copied, {merged.identical} already "
        f"there (identical), {merged.failures} failed-checkpoint records",
        file=sys.stderr,
    )
    return EXIT_OK


def _results_of(study_file: str, store: str | None):
    """(results, study name, store path) of a study whose store exists."""
    from ptq_eval.results import study_results
    from ptq_eval.spec import load_study
    from ptq_eval.store import Store

    study = load_study(study_file)
    path = existing_store(study_file, store, study.name)
    with Store(path) as opened:
        return study_results(study, opened), study.name, path


def cmd_results(args) -> int:
    from ptq_eval.jobs import checkpoints
    from ptq_eval.results import render
    from ptq_eval.spec import load_study
    from ptq_eval.store import Store

    results, _, path = _results_of(args.study, args.store)
    print(render(results, args.format), end="")
    with Store(path) as store:
        failed = store.failures(spec.reference for spec in checkpoints(load_study(args.study)))
    for reference, reason in failed.items():
        print(f"failed checkpoint (no results): {reference}: {reason}", file=sys.stderr)
    return 0


def _count(text: str) -> int:
    """An argparse type: a whole number of at least 1 (worker processes, refit starts)."""
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return int(text)


def _positive(text: str) -> float:
    """An argparse type: a finite number above zero (a budget, N or D/N)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}")
    return value


def _parse_point(text: str) -> dict[str, float]:
    """`N=1e5,D=3e7,P=4` -> {"N": 1e5, "D": 3e7, "P": 4.0}."""
    try:
        point = {key.strip(): float(value) for key, value in (item.split("=") for item in text.split(","))}
    except ValueError:
        point = {}
    if set(point) != {"N", "D", "P"} or not all(math.isfinite(v) and v > 0 for v in point.values()):
        raise UserError(f"--predict {text!r}: expected N=...,D=...,P=..., each a number > 0 (e.g. N=1e5,D=3e7,P=4)")
    return point


def _fit_input(args):
    """(results, study name, store path or None) from a study and its store, or from a results CSV."""
    import pandas as pd

    if args.results:
        return pd.read_csv(args.results), Path(args.results).stem, args.store
    if not args.study:
        raise UserError("give a study YAML file or --results CSV")
    return _results_of(args.study, args.store)


def cmd_fit(args) -> int:

    from ptq_eval.fit import FitKey, FitOptions, fit_study, forecast_table, stack
    from ptq_eval.report.document import cell
    from ptq_eval.results import markdown_table
    from ptq_eval.store import Store

    points = [_parse_point(p) for p in args.predict]  # before any work: a typo fails at once
    options = FitOptions(args.resamples, args.seed, censoring=args.censoring, refit_starts=args.refit_starts)
    results, name, fits_store = _fit_input(args)
    where = FitKey(
        eval=args.eval, metric=args.metric, method=args.method, format=args.number_format, group_size=args.group_size
    )
    with Store(fits_store) if fits_store else contextlib.nullcontext() as store, _fit_progress("fits") as progress:
        fitted = fit_study(results, where, options, cache=store, workers=args.workers, progress=progress)
        if store is not None:
            fitted.save(store, name)
    asked = {"predict": points, "budget": args.budget, "params": args.params}
    asked |= {"bits": args.bits, "tokens_per_param": args.tokens_per_param}
    forecasts = [forecast_table(fit, fitted.base(fit), **asked) for fit in fitted.fits if fit.law.name == args.law]
    forecasts = stack(forecasts)
    for note in fitted.notes():
        print(f"note: {note}", file=sys.stderr)
    tables = {"parameters": fitted.table(), "goodness": fitted.goodness(), "breaks": fitted.breaks(),
              "forecasts": forecasts}  # fmt: skip
    if args.format == "json":
        tables["excluded"] = fitted.excluded()
        infinite = {float("inf"): "inf", float("-inf"): "-inf"}  # a forecast beyond its search range, not null
        records = {key: json.loads(frame.replace(infinite).to_json(orient="records")) for key, frame in tables.items()}
        print(json.dumps(records | {"failures": fitted.failures, "skipped": fitted.skipped}, indent=2))
        return 0
    print(f"## Parameters ({args.resamples} resamples over checkpoints, 95% CI, censoring {args.censoring})\n")
    print(markdown_table(tables["parameters"].map(cell)))
    print("## Goodness of fit (RMSE of log δ, or of log L for the base law)\n")
    print(markdown_table(tables["goodness"].map(cell)), end="")
    if not tables["breaks"].empty:
        print("\n## Does δ bend? (broken laws beside the straight law of each key)\n")
        print(markdown_table(tables["breaks"].map(cell)), end="")
    if not forecasts.empty:
        print(f"\n## Forecasts ({args.law} law)\n")
        print(markdown_table(forecasts.map(cell)), end="")
    if fits_store:
        print(f"saved {len(fitted.all())} fits to {fits_store}", file=sys.stderr)
    return 0


def cmd_report(args) -> int:
    from ptq_eval.report.document import is_current, write
    from ptq_eval.report.study import ReportOptions, report_digest, study_report
    from ptq_eval.spec import load_study
    from ptq_eval.store import Store

    study = load_study(args.study)
    options = ReportOptions(args.resamples, args.seed, args.budget, args.bits, args.checkpoint)
    out = Path(args.out or Path("reports") / study.name)
    with Store(existing_store(args.study, args.store, study.name)) as store:
        digest = report_digest(study, store, options)
        if is_current(out, digest) and not args.screenshot:
            print(f"{out}/report.md and report.html are up to date (same stored results, options and code)",
                  file=sys.stderr)  # fmt: skip
            return 0
        with _fit_progress("report fits") as progress:
            document = study_report(study, store, options, progress)
    written = write(document, out, digest=digest)
    print(f"wrote {out}/report.md and {out}/report.html ({len(written) - 2} figures)", file=sys.stderr)
    return _check_rendering(document, out / "report.html") if args.screenshot else 0


def _check_rendering(document, page: Path) -> int:
    """Render the page in headless Chromium, save the screenshot, and say what a reader would miss."""
    from ptq_eval.report.browser import render, shows_all

    rendering = render(page, page.with_suffix(".png"))
    figures = sum(len(section.figures) for section in document.sections)
    rows = sum(len(table.frame) for section in document.sections for table in section.tables)
    problems = shows_all(rendering, figures, rows)
    print(
        f"chromium: {rendering.images} images, {rendering.tables} tables with {rendering.table_rows} rows, "
        f"{rendering.colored_fraction:.1%} coloured pixels; screenshot {rendering.screenshot}",
        file=sys.stderr,
    )
    for problem in problems:
        print(f"rendering problem: {problem}", file=sys.stderr)
    return 1 if problems else 0


def cmd_compare(args) -> int:
    from ptq_eval.report.compare import compare_document, compare_results, select_checkpoint
    from ptq_eval.report.document import to_markdown, write

    a, a_name, _ = _results_of(args.a, args.store_a)
    b, b_name, _ = _results_of(args.b, args.store_b) if args.b else (a, a_name, None)
    labels = (a_name, b_name)
    if args.checkpoints:
        first, second = args.checkpoints
        a, b = select_checkpoint(a, first), select_checkpoint(b, second)
        labels = (f"{a_name}:{a.checkpoint.iloc[0]}", f"{b_name}:{b.checkpoint.iloc[0]}")
    elif not args.b:
        raise UserError("give two studies (A B), or one study with --checkpoints X Y")
    document = compare_document(compare_results(a, b), labels)
    slug = "-vs-".join(_slug(label) for label in labels)
    out = Path(args.out or Path("reports") / "compare" / slug)
    write(document, out, stem="compare")
    print(to_markdown(document), end="")
    print(f"wrote {out}/compare.md and {out}/compare.html", file=sys.stderr)
    return 0


def cmd_gate(args) -> int:
    from ptq_eval.artifacts import describe
    from ptq_eval.gate import artifact_policy, check_budget_scopes, decide, fit_forecasts, gate_study, load_policy
    from ptq_eval.results import study_results
    from ptq_eval.store import Store

    _quiet_transformers()
    policy = load_policy(args.policy)
    artifact = None
    if args.artifact:  # the shipped file judged in place of the policy's release configs
        policy = artifact_policy(policy, args.artifact)
        artifact = describe(args.artifact).describe()
    check_budget_scopes(policy)  # before any model work
    study = gate_study(policy, args.checkpoint)
    path = store_path(args.store or policy.store, study.name)
    if args.no_run and not path.is_file():
        raise UserError(f"no store at {path}: drop --no-run to run the missing jobs, or pass --store")
    with Store(path) as store:
        failed: dict[str, str] = {}
        if not args.no_run:
            summary = _run_missing(study, store)
            print(f"{summary.ran} jobs run, {summary.already_done} already in {path}", file=sys.stderr)
            failed = summary.failed
        results = study_results(study, store)
    for reference, reason in failed.items():
        print(f"error: checkpoint {reference} failed: {reason}; its checks are undecided", file=sys.stderr)
    verdict = decide(policy, args.checkpoint, results, fit_forecasts(policy, path), failed, artifact)
    return _publish_verdict(verdict, args, path)


def _publish_verdict(verdict, args, verdict_store: Path) -> int:
    """Markdown to stdout and the step summaries, JSON to --out; returns the gate's exit code."""
    from ptq_eval.report.verdict import publish_verdict

    code = GATE_EXIT_CODES[verdict.decision]
    out = Path(args.out or Path("reports") / "gate" / f"{_slug(verdict.checkpoint)}.json")
    record = {"exit_code": code, "policy_file": args.policy, "store": str(verdict_store)}
    print(publish_verdict(verdict, out, [args.summary], record), end="")
    print(f"wrote {out}; verdict {verdict.decision} (exit {code})", file=sys.stderr)
    return code


def cmd_ladder_train(args) -> int:
    import torch

    from ptq_eval.ladder import load_ladder_config, preset
    from ptq_eval.ladder.train import train_ladder

    _quiet_transformers()
    if args.config and args.preset:
        raise UserError("give --config FILE or --preset NAME, not both")
    config = load_ladder_config(args.config) if args.config else preset(args.preset or "demo")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {args.device}: this machine has no CUDA device; use --device cpu")
    progress = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    saved = train_ladder(config, Path(args.out), args.sizes, progress=progress, device=args.device)
    print(f"{len(saved)} checkpoints under {args.out}", file=sys.stderr)
    return 0


def cmd_ladder_show(args) -> int:
    from ptq_eval.families import revision_table
    from ptq_eval.ladder import local_ladder_table
    from ptq_eval.results import markdown_table

    if Path(args.directory).is_dir():
        print(markdown_table(local_ladder_table(Path(args.directory))), end="")
        return EXIT_OK
    table, revisions = revision_table(args.directory)
    print(markdown_table(table), end="")
    print(f"{len(table)} of {revisions} revisions of {args.directory} have a known D", file=sys.stderr)
    return EXIT_OK


def cmd_export(args) -> int:
    from ptq_eval.export import check_packable_format, export_gptq
    from ptq_eval.quant import QuantConfig
    from ptq_eval.spec import Calibration

    check_packable_format(args.format)
    _quiet_transformers()
    options = {"act_order": args.act_order, "static_groups": args.static_groups, "damp": args.damp}
    config = QuantConfig(
        method=args.method, format=args.format, bits=args.bits, group_size=args.group_size, options=options
    )
    calibration = Calibration(
        corpus=args.calibration_corpus, split=args.calibration_split, samples=args.samples, seq_len=args.seq_len
    ).model_dump()
    export_gptq(args.checkpoint, args.out, config, calibration, args.allow_pickle, args.trust_remote_code)
    print(f"wrote packed {args.bits}-bit GPTQ checkpoint to {args.out}", file=sys.stderr)
    return 0


EXIT_CODES = f"""exit codes:
  {EXIT_OK}  success (gate: the checkpoint passes)
  {EXIT_FAIL}  gate: the checkpoint fails a budget; run: some checkpoint failed (recorded, the rest ran)
  {EXIT_UNDECIDED}  gate: undecided (a result missing, a CI straddling a budget, coverage too low)
  {EXIT_INPUT}  bad input: arguments, study or policy, files, checkpoints, corpora, store (one line says what)
  {EXIT_INTERNAL}  internal error: a bug in ptq-eval or below it (--debug shows the traceback)"""


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors exit 3 (bad input), not 2 (which is the gate's "undecided")."""

    def error(self, message: str):
        self.print_usage(sys.stderr)
        self.exit(EXIT_INPUT, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    from ptq_eval.fit.estimate import FitOptions
    from ptq_eval.fit.laws import DELTA_LAWS
    from ptq_eval.ladder.config import preset_names
    from ptq_eval.results import OUTPUT_FORMATS

    parser = _Parser(
        prog="ptq-eval",
        description="Post-training quantization degradation vs tokens per parameter.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--debug", action="store_true", help="show the traceback of any error")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = commands.add_parser("run", help="run every job of a study not already in its store")
    run.add_argument("study", help="study YAML file")
    run.add_argument("--store", help="SQLite store (default: runs/<study name>.sqlite)")
    run.add_argument("--report-dir", help="also write results.csv, results.md and summary.md here")
    run.add_argument(
        "--executor", choices=["local", "ray"], default="local", help="in this process (default) or on a Ray cluster"
    )
    run.add_argument(
        "--address", help="Ray cluster to join: auto, or ray://HOST:PORT (default: start a local Ray instance)"
    )
    run.add_argument("--ray-cpus", type=int, help="CPUs of the local Ray instance (default: all)")
    run.add_argument(
        "--shard", metavar="I/N", help="run shard I of N (0 <= I < N) of the checkpoints, e.g. $SLURM_ARRAY_TASK_ID/8"
    )
    run.set_defaults(func=cmd_run)

    merge = commands.add_parser("merge", help="combine stores (e.g. job-array shards) into one; idempotent")
    merge.add_argument("stores", nargs="+", help="SQLite stores to merge")
    merge.add_argument("--into", required=True, help="the store to merge into (created if missing)")
    merge.set_defaults(func=cmd_merge)

    results = commands.add_parser("results", help="print a study's results, one row per checkpoint × config × metric")
    results.add_argument("study", help="study YAML file")
    results.add_argument("--store", help="SQLite store (default: runs/<study name>.sqlite)")
    results.add_argument("--format", choices=OUTPUT_FORMATS, default="md")
    results.set_defaults(func=cmd_results)

    fit = commands.add_parser("fit", help="fit scaling laws of δ(N, D, P) to a study's results, with forecasts")
    fit.add_argument("study", nargs="?", help="study YAML file (or give --results)")
    fit.add_argument(
        "--store", help="SQLite store: the study's results (default: runs/<study name>.sqlite); fits are saved there"
    )
    fit.add_argument("--results", help="a results CSV (`ptq-eval results --format csv`) instead of a study")
    fit.add_argument("--eval", help="fit only this eval (default: each eval with a loss metric)")
    fit.add_argument("--metric", help="fit only this metric (default: each loss: loss, perplexities, bits_per_byte)")
    fit.add_argument("--method", help="fit only this method (default: each method present)")
    fit.add_argument("--number-format", help="fit only this number format, e.g. nvfp4 (default: each present)")
    fit.add_argument("--group-size", type=int, help="fit only this group size (default: each present)")
    fit.add_argument(
        "--censoring", choices=["censor", "exclude"], default="censor",
        help="points whose δ CI reaches zero: censored at their detection limit (default) or left out",
    )  # fmt: skip
    fit.add_argument("--resamples", type=int, default=200, help="bootstrap resamples over checkpoints")
    fit.add_argument(
        "--refit-starts", type=_count, default=FitOptions.refit_starts,
        help="starts each bootstrap or held-out refit is minimised from (more: nearer each resample's own optimum)",
    )  # fmt: skip
    fit.add_argument(
        "--workers", type=_count, default=None,
        help="processes estimating fits (default: every CPU available; the numbers do not depend on it)",
    )  # fmt: skip
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument(
        "--law", choices=DELTA_LAWS, default="kumar", help="law for the forecasts (phase laws: at decay_done 1)"
    )
    fit.add_argument("--predict", action="append", default=[], metavar="N=..,D=..,P=..", help="forecast δ here")
    fit.add_argument("--budget", type=_positive, help="δ budget (nats/token) for the D/N and bits forecasts")
    fit.add_argument("--params", type=_positive, help="N (non-embedding parameters) for the budget forecasts")
    fit.add_argument(
        "--bits",
        type=float,
        help="P (bits per weight, scales counted): with --budget, the largest D/N; with a base fit, the critical D",
    )
    fit.add_argument("--tokens-per-param", type=_positive, help="D/N: with --budget, the smallest bit width")
    fit.add_argument("--format", choices=["md", "json"], default="md")
    fit.set_defaults(func=cmd_fit)

    report = commands.add_parser("report", help="write a study's Markdown and self-contained HTML report")
    report.add_argument("study", help="study YAML file")
    report.add_argument("--store", help="SQLite store (default: runs/<study name>.sqlite)")
    report.add_argument("--out", help="output directory (default: reports/<study name>)")
    report.add_argument("--resamples", type=int, default=100, help="bootstrap resamples of each fit")
    report.add_argument("--seed", type=int, default=0)
    report.add_argument("--budget", type=_positive, default=0.05, help="δ budget (nats/token) for the forecasts")
    report.add_argument("--bits", type=int, default=4, help="precision of the forecasts")
    report.add_argument("--checkpoint", help="checkpoint whose per-layer errors (GPTQ, AWQ) are shown")
    report.add_argument(
        "--screenshot", action="store_true", help="render the HTML in headless Chromium, save report.png, check it"
    )
    report.set_defaults(func=cmd_report)

    compare = commands.add_parser("compare", help="δ of two studies, or two checkpoints of one, side by side")
    compare.add_argument("a", help="study YAML file (A)")
    compare.add_argument("b", nargs="?", help="study YAML file (B; default: A, with --checkpoints)")
    compare.add_argument("--checkpoints", nargs=2, metavar=("X", "Y"), help="compare checkpoint X of A with Y of B")
    compare.add_argument("--store-a", help="A's store (default: runs/<study name>.sqlite)")
    compare.add_argument("--store-b", help="B's store (default: runs/<study name>.sqlite)")
    compare.add_argument("--out", help="output directory (default: reports/compare/<A>-vs-<B>)")
    compare.set_defaults(func=cmd_compare)

    gate = commands.add_parser(
        "gate", help="check a checkpoint against a release policy's budgets (exit 0 pass, 1 fail, 2 undecided)"
    )
    gate.add_argument("checkpoint", help="local directory or hub-id@revision")
    gate.add_argument("--policy", required=True, help="release policy YAML (e.g. tasks/release-policy.yaml)")
    gate.add_argument("--store", help="SQLite store (default: the policy's store, else runs/<policy name>.sqlite)")
    gate.add_argument("--out", help="JSON verdict (default: reports/gate/<checkpoint>.json)")
    gate.add_argument("--summary", help="also append the Markdown verdict here ($GITHUB_STEP_SUMMARY always is)")
    gate.add_argument("--no-run", action="store_true", help="use stored results only; a missing one is undecided")
    gate.add_argument(
        "--artifact", help="judge this quantized file of CHECKPOINT (a .gguf file, a GPTQ pack), not release configs"
    )
    gate.set_defaults(func=cmd_gate)

    ladder = commands.add_parser("ladder", help="train or list a reference ladder").add_subparsers(
        dest="action", required=True
    )
    train = ladder.add_parser("train", help="train a reference ladder of small GPT-NeoX or Llama models")
    train.add_argument("--config", help="ladder config YAML (architecture, sizes, ratios, schedule, corpora, seed)")
    train.add_argument(
        "--preset", choices=preset_names(), help="a shipped config, tasks/ladders/NAME.yaml (default demo)"
    )
    train.add_argument("--out", required=True, help="directory to write the ladder to")
    train.add_argument("--sizes", nargs="*", help="train only these sizes (names from the preset)")
    train.add_argument("--threads", type=int, help="torch CPU threads")
    train.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]: where the models train")
    train.set_defaults(func=cmd_ladder_train)
    show = ladder.add_parser(
        "show", help="list a local ladder's checkpoints with N, D and D/N, or a hub ladder's revisions with D and phase"
    )
    show.add_argument("directory", metavar="DIRECTORY|REPO")
    show.set_defaults(func=cmd_ladder_show)

    export = commands.add_parser("export", help="quantize with our GPTQ and write a packed GPTQ checkpoint")
    export.add_argument("checkpoint", help="local directory or hub-id@revision")
    export.add_argument("--method", choices=["gptq"], default="gptq")
    export.add_argument("--format", default="int", help="int (the one format the packed GPTQ layout holds)")
    export.add_argument("--bits", type=int, default=4, help="2, 3, 4 or 8 (the widths the packed format holds)")
    export.add_argument("--group-size", type=int, default=128)
    export.add_argument("--act-order", action="store_true")
    export.add_argument("--static-groups", action="store_true")
    export.add_argument("--damp", type=float, default=0.01)
    export.add_argument("--calibration-corpus", default="stdlib-python")
    export.add_argument("--calibration-split", default="train")
    export.add_argument("--samples", type=int, default=128)
    export.add_argument("--seq-len", type=int, default=2048, help="clamped to the model's context")
    export.add_argument("--allow-pickle", action="store_true")
    export.add_argument("--trust-remote-code", action="store_true")
    export.add_argument("--out", required=True)
    export.set_defaults(func=cmd_export)

    commands.add_parser(
        "lm-eval",
        help="lm-eval's command line with ptq-eval's scorer registered: --model ptq_eval --model_args pretrained=PATH",
        add_help=False,
    ).add_argument("arguments", nargs=argparse.REMAINDER, help="lm-eval's arguments, as `lm-eval` takes them")
    return parser


def cmd_lm_eval(arguments: list[str]) -> int:
    """lm-eval's own command line, with ptq-eval's packed scorer registered as the model `ptq_eval`."""
    import lm_eval.__main__

    import ptq_eval.evals.lm_backend  # noqa: F401 - registers the model with lm-eval

    saved = sys.argv
    sys.argv = ["lm-eval", *arguments]
    try:
        lm_eval.__main__.cli_evaluate()
    finally:
        sys.argv = saved
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = argv[1:2] if argv[:1] == ["--debug"] else argv[:1]
    if command == ["lm-eval"]:  # every argument after it is lm-eval's, so argparse never sees them
        return cmd_lm_eval(argv[argv.index("lm-eval") + 1 :])
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (UserError, FileNotFoundError) as error:
        if args.debug:
            raise
        print(f"ptq-eval: error: {error}", file=sys.stderr)
        return EXIT_INPUT
    except Exception as error:  # a bug in ptq-eval or below it, never a verdict
        if args.debug:
            raise
        print(f"ptq-eval: internal error: {type(error).__name__}: {error} (--debug shows where)", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
