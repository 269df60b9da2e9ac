"""make gpu-check: one prepared check of the GPU path, run first whenever a CUDA machine is at hand.

It runs the CUDA tests; compares RTN and GPTQ weights quantized on the CPU and on CUDA (stories260K-hf and a
Pythia-shaped GPT-NeoX); compares GPTQ's fused column loop with the eager one on CUDA (value for value, µs per
column); times GPTQ per size (one config, the sweep's ten shared) and extrapolates the Pythia sweep
(tests/bench/scale.py); runs the stories260K study on both devices in float32 and bfloat16, δ side by side;
times evaluation (ours, lm-eval's HFLM, a bare batched forward + cross-entropy) and multiple-choice scoring (our
lm-eval backend beside HFLM); and writes a dated Markdown table naming the machine (rewritten
after every section, so a run cut short keeps what it did).
Without CUDA it runs its CPU parts and says what it skipped; `--quick` shrinks every size (the test suite runs it).

What it reads besides the project: `--data` holding `models/stories260K-hf`, `text/tinystories/
tinystories_val_sample.txt`, `text/gutenberg/war_and_peace.txt`, `tokenizers/gpt2/{encoder.json,vocab.bpe}` and
`eval/{arc_easy,piqa,hellaswag/hellaswag_val}.jsonl` (`make gpu-check-prepare` copies them from ../shared/data
into .gpu-check/data, with the wheels a bare GPU machine lacks: pydantic and its three helpers, lm-eval and dill,
listed in GPU_CHECK_WHEELS in the Makefile).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import importlib.util
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import transformers
from shapes import GPT2, gpt2_tokenizer, pythia_shaped

import ptq_eval.quant.gptq as gptq
from ptq_eval.evals.perplexity import window_losses
from ptq_eval.evals.windows import rolling_windows
from ptq_eval.quant import DEFAULT_EXCLUDE, QuantConfig, quantizable_weights, quantize
from ptq_eval.results import study_results
from ptq_eval.runner import run_study
from ptq_eval.spec import parse_study
from ptq_eval.store import Store

CUDA = torch.cuda.is_available()
STORIES = Path("models/stories260K-hf")
EVAL_TEXT = Path("text/tinystories/tinystories_val_sample.txt")
CALIBRATION_TEXT = Path("text/gutenberg/war_and_peace.txt")
RTN_CONFIGS = [
    QuantConfig(method="rtn", bits=3, group_size=32),
    QuantConfig(method="rtn", bits=3, group_size=-1),
    QuantConfig(method="rtn", bits=4, group_size=-1),
    QuantConfig(method="rtn", bits=8, group_size=32),
    QuantConfig(method="rtn", bits=4, group_size=128, symmetric=False),
]
GPTQ_CONFIGS = [
    QuantConfig(method="gptq", bits=4, group_size=32, options={"act_order": True}),
    QuantConfig(method="gptq", bits=3, group_size=-1),
]
# GPTQ's solve per matrix: (label, rows, columns, configs stacked or a format's name) of Pythia shapes, and tiny
# ones for --quick.
LOOP_SHAPES = [("410m fc2", 1024, 4096, 1), ("1.4b qkv", 6144, 2048, 1), ("1.4b fc2", 2048, 8192, 1),
               ("1.4b qkv, ten configs", 6144, 2048, 10), ("1.4b fc2, ten configs", 2048, 8192, 10),
               ("1.4b fc2, NVFP4", 2048, 8192, "nvfp4")]  # fmt: skip
QUICK_LOOP_SHAPES = [("tiny fc2", 20, 150, 1), ("tiny qkv, ten configs", 16, 64, 10), ("tiny NVFP4", 16, 64, "nvfp4")]


def synchronize() -> None:
    if CUDA:
        torch.cuda.synchronize()


def timed(fn: Callable) -> tuple[float, object]:
    synchronize()
    started = time.perf_counter()
    result = fn()
    synchronize()
    return time.perf_counter() - started, result


def environment() -> list[str]:
    def command(*args: str) -> str:
        try:
            return subprocess.run(args, capture_output=True, text=True, timeout=30).stdout.strip() or "unknown"
        except (OSError, subprocess.TimeoutExpired):
            return "unknown"

    device = torch.cuda.get_device_name() if CUDA else f"no CUDA ({platform.processor() or platform.machine()})"
    driver = command("nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader") if CUDA else "none"
    return [
        f"# GPU check, {datetime.date.today().isoformat()}",
        "",
        f"- device: {device}; driver {driver}; CUDA {torch.version.cuda}",
        f"- torch {torch.__version__}, transformers {transformers.__version__}, Python {platform.python_version()}",
        f"- project commit: {os.environ.get('PTQ_EVAL_COMMIT') or command('git', 'rev-parse', '--short', 'HEAD')}",
        "- command: `make gpu-check` (tests/bench/gpu_check.py)",
    ]


def cuda_tests() -> list[str]:
    if not CUDA:
        return ["Skipped: no CUDA on this machine."]
    tests = [
        "tests/test_device_parity.py",
        "tests/test_executors.py::test_cuda_studies_bf16_and_gptq_offloaded",
        "tests/test_gptq_columns.py",  # incl. a drifting fused loop giving way to the eager one on CUDA
    ]
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rfEs", "-p", "no:cacheprovider", *tests],
        capture_output=True,
        text=True,
        timeout=240,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith(("FAILED", "ERROR", "SKIPPED"))]
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr[-500:]
    return [f"`pytest {' '.join(tests)}`: **{summary}**", "", *[f"- {line}" for line in lines]]


def stories(data: Path) -> transformers.PreTrainedModel:
    return transformers.AutoModelForCausalLM.from_pretrained(data / STORIES, dtype=torch.float32).eval()


@contextlib.contextmanager
def hessian_noise(relative: float):
    """GPTQ with every Hessian multiplied by (1 + symmetric noise of this relative size): a CPU-only control for
    how far float noise alone moves GPTQ's solution."""
    exact = gptq.gptq_solve
    generator = torch.Generator().manual_seed(1)

    def noisy(parts, hessian, dtype=None):
        noise = torch.randn(hessian.shape, generator=generator).to(hessian.device) * relative
        return exact(parts, hessian * (1 + (noise + noise.T) / 2), dtype)

    gptq.gptq_solve = noisy
    try:
        yield
    finally:
        gptq.gptq_solve = exact


def _quantized(model, config, device: str, dtype: torch.dtype, calibration) -> tuple[dict[str, torch.Tensor], float]:
    """The quantized matrices (float32, on the CPU) and GPTQ's mean output error ‖WX − ŴX‖² / ‖WX‖² (NaN for RTN)."""
    model = copy.deepcopy(model).to(device=device, dtype=dtype)
    report = quantize(model, config, DEFAULT_EXCLUDE, calibration.to(device) if config.needs_calibration else None)
    errors = [layer.output_error for layer in report.layers if layer.output_error is not None]
    weights = {weight.name: weight.read().detach().float().cpu() for weight in quantizable_weights(model)}
    return weights, sum(errors) / len(errors) if errors else float("nan")


def _difference(reference: dict, other: dict, config: QuantConfig, dtype: torch.dtype) -> dict[str, float]:
    total = sum(w.numel() for w in reference.values())
    moved = sum(int(_levels_apart(reference[k], other[k], config, dtype).sum()) for k in reference)
    norm = sum(float((other[k] - w).pow(2).sum()) for k, w in reference.items()) ** 0.5
    return {
        "total": total,
        "differ": sum(int((other[k] != w).sum()) for k, w in reference.items()),
        "largest": max(float((other[k] - w).abs().max()) for k, w in reference.items()),
        "moved": moved / total,
        "norm": norm / sum(float(w.pow(2).sum()) for w in reference.values()) ** 0.5,
    }


def parity(models: dict[str, Callable], calibration_shape: tuple[int, int]) -> list[str]:
    """CPU vs CUDA; without CUDA, CPU vs CPU (which only shows this section still runs)."""
    other = "cuda" if CUDA else "cpu"
    lines = [] if CUDA else ["No CUDA on this machine: CPU against CPU, to keep this section running.", ""]
    samples, length = calibration_shape
    lines += [
        f"Calibration: {samples} x {length} random token ids. 'moved a level': weights "
        "half a grid step or more apart. For GPTQ, the last columns are the control: the CPU against the CPU "
        "with every Hessian perturbed by 1e-6 relative noise (about what two BLAS libraries differ by), and "
        "GPTQ's mean output error ‖WX − ŴX‖²/‖WX‖² on each device.",
        "",
        "| model | config | dtype | weights | differ | largest difference | moved a level | ‖ΔW‖/‖W‖ | "
        f"control: moved a level | output error CPU / {other} |",
        "|---" * 10 + "|",
    ]
    for name, build in models.items():
        model = build()
        generator = torch.Generator().manual_seed(0)
        calibration = torch.randint(0, model.config.vocab_size, calibration_shape, generator=generator)
        cases = [(c, d) for c in RTN_CONFIGS for d in (torch.float32, torch.bfloat16)]
        cases += [(c, torch.float32) for c in GPTQ_CONFIGS]
        for config, dtype in cases:
            on_cpu, cpu_error = _quantized(model, config, "cpu", dtype, calibration)
            on_cuda, cuda_error = _quantized(model, config, other, dtype, calibration)
            found = _difference(on_cpu, on_cuda, config, dtype)
            control = errors = ""
            if config.needs_calibration:
                with hessian_noise(1e-6):
                    perturbed, _ = _quantized(model, config, "cpu", dtype, calibration)
                control = f"{_difference(on_cpu, perturbed, config, dtype)['moved']:.4%}"
                errors = f"{cpu_error:.4g} / {cuda_error:.4g}"
            label = f"{config.method} {config.bits}-bit {config.granularity}" + ("" if config.symmetric else " asym")
            lines.append(
                f"| {name} | {label} | {str(dtype)[6:]} | {found['total']:,} | {found['differ']:,} | "
                f"{found['largest']:.3g} | {found['moved']:.4%} | {found['norm']:.2e} | {control} | "
                f"{errors} |"
            )
    return lines


def _levels_apart(reference: torch.Tensor, other: torch.Tensor, config: QuantConfig, dtype) -> torch.Tensor:
    """Where two quantized matrices differ by half a step of the reference's grid or more."""
    from ptq_eval.quant.grid import fit_grid

    group = reference.shape[1] if config.group_size < 0 else config.group_size
    rows, columns = reference.shape
    full = columns - columns % group
    steps = [fit_grid(reference[:, :full].reshape(-1, group), config.bits, config.symmetric, dtype).scale]
    steps = [steps[0].reshape(rows, -1).repeat_interleave(group, dim=1)]
    if full < columns:
        tail = fit_grid(reference[:, full:], config.bits, config.symmetric, dtype).scale
        steps.append(tail.expand(rows, columns - full))
    return (other - reference).abs() >= torch.cat(steps, dim=1) / 2


def stories_study(data: Path, tokens: int) -> list[str]:
    settings = [("cpu", "float32"), ("cuda", "float32"), ("cpu", "bfloat16"), ("cuda", "bfloat16")]
    settings = [s for s in settings if CUDA or s[0] == "cpu"]
    deltas = {}
    for device, dtype in settings:
        study = parse_study(
            {
                "name": f"gpu-check-{device}-{dtype}",
                "ladder": [str(data / STORIES)],
                "device": device,
                "dtype": dtype,
                "quant": [
                    {"method": "rtn", "bits": [3, 4, 8], "group_size": [32]},
                    {"method": "gptq", "bits": [4], "group_size": [32], "act_order": True},
                ],
                "calibration": {
                    "corpus": str(data / CALIBRATION_TEXT),
                    "split": "train",
                    "samples": 32,
                    "seq_len": 256,
                },
                "evals": [
                    {
                        "kind": "perplexity",
                        "corpus": str(data / EVAL_TEXT),
                        "split": "validation",
                        "tokens": tokens,
                        "seq_len": 256,
                    }
                ],
            }
        )
        with tempfile.TemporaryDirectory() as folder, Store(Path(folder) / "store.sqlite") as store:
            seconds, _ = timed(lambda study=study, store=store: run_study(study, store))
            results = study_results(study, store)
        loss = results[results.metric == "loss"]
        for row in loss.itertuples():
            deltas.setdefault(f"{row.method} {row.bits}-bit g{row.group_size}", {})[(device, dtype)] = row
        deltas.setdefault("(seconds for the study)", {})[(device, dtype)] = seconds
    heading = " | ".join(f"δ {device} {dtype}" for device, dtype in settings)
    lines = [f"| config | {heading} | CUDA − CPU (float32) |", "|---|" + "---|" * (len(settings) + 1)]
    for label, cells in deltas.items():
        shown = []
        for setting in settings:
            row = cells.get(setting)
            if isinstance(row, float):
                shown.append(f"{row:.1f} s")
            else:
                shown.append(
                    "n/a" if row is None else f"{row.delta:.4f} [{row.delta_ci_low:.4f}, {row.delta_ci_high:.4f}]"
                )
        both = [cells.get(s) for s in (("cpu", "float32"), ("cuda", "float32"))]
        gap = f"{both[1].delta - both[0].delta:+.1e}" if all(hasattr(r, "delta") for r in both) else ""
        lines.append(f"| {label} | {' | '.join(shown)} | {gap} |")
    return lines


def _lm_eval_rolling(model, tokenizer, texts: list[str], batch_size: int) -> Callable[[], float] | str:
    """A scorer giving lm-eval HFLM's total negative log-likelihood of the texts, or why it cannot run here."""
    try:
        from lm_eval.api.instance import Instance
        from lm_eval.models.huggingface import HFLM
    except ImportError as error:
        return f"lm-eval not importable here ({error})"
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=2048)

    def score() -> float:
        requests = [
            Instance(request_type="loglikelihood_rolling", doc={}, arguments=(text,), idx=index)
            for index, text in enumerate(texts)
        ]
        return -sum(lm.loglikelihood_rolling(requests, disable_tqdm=True))

    return score


@torch.no_grad()
def _bare_forward(model, windows, batch_size: int) -> float:
    """Full logits for every position of a batch of windows, then cross-entropy at the scored ones."""
    device = next(model.parameters()).device
    tokens = windows.tokens.to(device)
    total = torch.zeros((), dtype=torch.float64, device=device)
    for batch in torch.arange(len(windows)).split(batch_size):
        lengths, scored = windows.lengths[batch], windows.scored[batch]
        positions = torch.arange(int(lengths.max()))
        inside = positions < lengths[:, None]
        index = torch.where(inside, windows.starts[batch, None] + positions, 0).to(device)
        counted = (inside & (positions >= (lengths - scored)[:, None])).to(device).flatten()
        logits = model(tokens[index]).logits.float().flatten(0, 1)
        losses = torch.nn.functional.cross_entropy(logits, tokens[index + 1].flatten(), reduction="none")
        total += losses[counted].double().sum()
    return float(total)


def eval_speed(data: Path, cases: list[tuple[str, torch.dtype]], words: int, batch_size: int) -> list[str]:
    device = "cuda" if CUDA else "cpu"
    tokenizer = gpt2_tokenizer(data / GPT2)
    text = (data / EVAL_TEXT).read_text(encoding="utf-8").split()
    texts = [" ".join(text[start : start + 1500]) for start in range(0, min(words, len(text)), 1500)]
    lines = [
        f"Rolling log-likelihood of {len(texts)} TinyStories documents (GPT-2 BPE, windows of 2048, batch "
        f"{batch_size}), random weights, {device}; tokens/s" + (" (peak GiB allocated)." if CUDA else "."),
        "",
        "| model | dtype | tokens | ours | lm-eval HFLM | bare forward + CE | ours / lm-eval | ours / bare | "
        "NLL ours vs lm-eval |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for size, dtype in cases:
        lines.append(_speed_row(size, dtype, tokenizer, texts, batch_size))
        if CUDA:
            torch.cuda.empty_cache()
    return lines


def _speed_row(size: str, dtype: torch.dtype, tokenizer, texts: list[str], batch_size: int) -> str:
    model = pythia_shaped(size, "cuda" if CUDA else "cpu").to(dtype)
    windows = rolling_windows(tokenizer, texts, 2048)
    scorers = {
        "ours": lambda: float(window_losses(model, windows, batch_size).sums.sum()),
        "bare": lambda: _bare_forward(model, windows, batch_size),
    }
    lm_eval = _lm_eval_rolling(model, tokenizer, texts, batch_size)
    if not isinstance(lm_eval, str):
        scorers["lm-eval"] = lm_eval
    measured = {}
    for name, scorer in scorers.items():
        scorer()  # warm-up: kernel selection, allocator
        if CUDA:
            torch.cuda.reset_peak_memory_stats()
        seconds, nll = timed(scorer)
        peak = torch.cuda.max_memory_allocated() / 2**30 if CUDA else float("nan")
        measured[name] = (windows.predictions / seconds, peak, nll)
    cell = {name: f"{rate:,.0f}" + (f" ({peak:.1f})" if CUDA else "") for name, (rate, peak, _) in measured.items()}
    ours, bare = measured["ours"], measured["bare"]
    if "lm-eval" in measured:
        ratio = f"{ours[0] / measured['lm-eval'][0]:.2f}x"
        agree = f"{abs(ours[2] - measured['lm-eval'][2]) / abs(measured['lm-eval'][2]):.1e} relative"
    else:
        ratio, agree = "", lm_eval
    return (
        f"| {size} | {str(dtype)[6:]} | {windows.predictions:,} | {cell['ours']} | {cell.get('lm-eval', 'n/a')} "
        f"| {cell['bare']} | {ratio} | {ours[0] / bare[0]:.2f}x | {agree} |"
    )


def task_speed(data: Path, cases: list[tuple[str, torch.dtype]], items: int, batch_size: int) -> list[str]:
    """Multiple-choice scoring through lm-eval's loglikelihood: HFLM beside our backend, same answers."""
    from task_speed import CHOICE_PROMPTS, choice_requests, time_requests

    device = "cuda" if CUDA else "cpu"
    tokenizer = gpt2_tokenizer(data / GPT2)
    lines = [
        f"The first {items} items of each task (GPT-2 BPE, batch {batch_size}), random weights, {device}; "
        "lm-eval's `loglikelihood` on the same requests through each backend; items/s"
        + (" (peak GiB allocated)." if CUDA else "."),
        "",
        "| model | dtype | task | items | lm-eval HFLM | ours | ours / HFLM | max \\|Δ log-likelihood\\| |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for size, dtype in cases:
        model = pythia_shaped(size, device).to(dtype)
        for task in CHOICE_PROMPTS:
            pairs, count = choice_requests(data, task, items)
            runs = {
                backend: time_requests(model, tokenizer, pairs, backend, batch_size) for backend in ("hflm", "ptq_eval")
            }
            rate = {backend: count / run["seconds"] for backend, run in runs.items()}
            cell = {b: f"{rate[b]:,.1f}" + (f" ({runs[b]['peak_gib']:.1f})" if CUDA else "") for b in runs}
            largest = max(abs(a - b) for a, b in zip(runs["ptq_eval"]["answers"], runs["hflm"]["answers"], strict=True))
            lines.append(
                f"| {size} | {str(dtype)[6:]} | {task} | {count} | {cell['hflm']} | {cell['ptq_eval']} "
                f"| {rate['ptq_eval'] / rate['hflm']:.2f}x | {largest:.1e} |"
            )
        del model
        if CUDA:
            torch.cuda.empty_cache()
    return lines


@contextlib.contextmanager
def forced_loop(name: str):
    """Every GPTQ solve runs this column loop ('eager' or 'fused'), whatever the device would pick."""
    from ptq_eval.quant import gptq_solve as solve_module
    from ptq_eval.quant.gptq_columns import eager_columns, fused_columns

    chosen = {"eager": eager_columns, "fused": fused_columns}[name]
    picked = solve_module.column_loop
    solve_module.column_loop = lambda device, elements: (name, chosen)
    try:
        yield
    finally:
        solve_module.column_loop = picked


def column_loops(shapes: list[tuple[str, int, int, int | str]]) -> list[str]:
    """One matrix's GPTQ solve (given its Hessian) through the eager loop and the fused one, same device: seconds,
    µs per column, and whether the weights are equal (value for value; a zero's sign aside)."""
    from gptq_shared import SWEEP

    from ptq_eval.quant.gptq_columns import column_loop
    from ptq_eval.quant.gptq_solve import gptq_solve

    device = "cuda" if CUDA else "cpu"
    has_triton = importlib.util.find_spec("triton") is not None
    fused_runs = has_triton and (CUDA or os.environ.get("TRITON_INTERPRET") == "1")
    one = QuantConfig(method="gptq", bits=4, group_size=128, options={"act_order": True})
    lines = [
        f"{device}; float32 solve of one random matrix per row, its Hessian from 4096 random inputs; the loop a "
        f"solve here picks by itself: **{column_loop(torch.device(device), None)[0]}**. 'one config': 4-bit g128 "
        "act-order; 'ten configs': the sweep's 3/4/5/6/8 bits x channel / g128 stacked in one solve; NVFP4: "
        "groups of 16, act-order with static groups. Seconds include the Cholesky factors and the lazy updates "
        "between blocks; the first call of each loop is a warm-up (Triton compiles there)."
        + ("" if CUDA else " Without CUDA the fused loop runs in Triton's interpreter: identity only, no speed."),
        "",
        "| matrix | rows x columns | configs | eager s (µs/column) | fused s (µs/column) | eager / fused | "
        "weights equal |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, rows, columns, count in shapes:
        generator = torch.Generator().manual_seed(0)
        inputs = torch.randn(4096, columns, generator=generator).to(device)
        hessian = 2 * inputs.T @ inputs / inputs.shape[0]
        weight = torch.randn(rows, columns, generator=generator).to(device)
        if isinstance(count, str):  # a float format, its blocks consecutive columns (static groups)
            options = {"act_order": True, "static_groups": True}
            configs = [QuantConfig(method="gptq", format=count, bits=4, group_size=16, options=options)]
        else:
            configs = [one] if count == 1 else [QuantConfig(method="gptq", bits=c.bits, group_size=c.group_size,
                                                            options={"act_order": True}) for c in SWEEP]  # fmt: skip
        parts = [(weight, config) for config in configs]
        results, seconds = {}, {}
        for loop in ("eager", "fused") if fused_runs else ("eager",):
            with forced_loop(loop):
                gptq_solve(parts, hessian)  # warm-up
                seconds[loop], results[loop] = timed(lambda parts=parts, hessian=hessian: gptq_solve(parts, hessian))
        cell = {loop: f"{s:.3f} ({s / columns * 1e6:,.0f})" for loop, s in seconds.items()}
        if "fused" in results:
            same = all(torch.equal(a.weight, b.weight) for a, b in zip(results["eager"], results["fused"], strict=True))
            ratio = f"{seconds['eager'] / seconds['fused']:.1f}x" if CUDA else "(interpreted)"
            same = "yes" if same else "**no**"
        else:
            ratio, same = "", "n/a (no Triton)" if not has_triton else "n/a (no CUDA, no TRITON_INTERPRET)"
        lines.append(
            f"| {label} | {rows * len(configs):,} x {columns:,} | {len(configs)} | {cell['eager']} | "
            f"{cell.get('fused', 'n/a')} | {ratio} | {same} |"
        )
    return lines


def gptq_seconds(cases: list[tuple[str, torch.dtype]], samples: int, length: int) -> list[str]:
    """One GPTQ config alone, and the sweep's ten configs from one solve (sequential: none), per shape; then one
    block-sequential config (the default) in float32 beside the model's dtype."""
    from gptq_shared import HEADER, SWEEP, measure, quantize_timed, row

    device = "cuda" if CUDA else "cpu"
    first = [c for c in SWEEP if (c.bits, c.group_size) == (4, 128)]
    configs = first + [c for c in SWEEP if c not in first]
    lines = [
        f"{samples} x {length} calibration tokens, random weights, {device}; Hessians and the solve in float32 "
        "whatever the model's dtype. Configs: 3/4/5/6/8 bits x per channel / groups of 128, act-order, "
        "sequential: none; 'one config' is 4-bit g128, its weights compared bit for bit with its share of the "
        "joint solve.",
        "",
        *HEADER,
    ]
    default = QuantConfig(method="gptq", bits=4, group_size=128, options={"act_order": True})
    generator, sequential = torch.Generator().manual_seed(0), []
    for size, dtype in cases:
        model = pythia_shaped(size, device).to(dtype)
        lines.append(row(f"Pythia-{size} shape", dtype, measure(model, samples, length, configs, alone=1)))
        calibration = torch.randint(0, model.config.vocab_size, (samples, length), generator=generator).to(device)
        pristine = {name: tensor.detach().to("cpu", copy=True) for name, tensor in model.state_dict().items()}
        for run_dtype in dict.fromkeys((dtype, torch.float32)):  # each run starts from the pristine weights
            model = model.to(run_dtype)
            seconds, _ = quantize_timed(model, pristine, default, calibration, {}, ())
            sequential.append((size, run_dtype, seconds))
        del model
        if CUDA:
            torch.cuda.empty_cache()
    lines += ["", "The default (block-sequential) 4-bit g128 act-order config, one run each:", "",
              "| model | dtype | seconds |", "|---|---|---|"]  # fmt: skip
    lines += [f"| Pythia-{size} shape | {str(dtype)[6:]} | {seconds:.1f} |" for size, dtype, seconds in sequential]
    return lines


def sweep_cost(sizes: list[str]) -> list[str]:
    """tests/bench/scale.py on CUDA (model in bf16, the ten GPTQ configs shared): the Pythia sweep's GPU-hours."""
    if not CUDA:
        return ["Skipped: needs CUDA (`make bench-scale` measures this CPU)."]
    arguments = ["--device", "cuda", "--dtype", "bfloat16", "--sizes", *sizes, "--shared", "--eval-tokens", "32768",
                 "--eval-len", "2048", "--calibration", "16", "128", "--calibration-len", "2048"]  # fmt: skip
    done = subprocess.run(
        [sys.executable, "tests/bench/scale.py", *arguments], capture_output=True, text=True, timeout=300
    )
    if done.returncode:
        return [f"**Failed**: `scale.py {' '.join(arguments)}`: {done.stderr[-1500:]}"]
    report = done.stdout.strip().splitlines()
    return [f"`python tests/bench/scale.py {' '.join(arguments)}`", "", *report[1:]]


def speed_or_skip(section: Callable[[], list[str]], quick: bool, have_data: bool = True) -> list[str]:
    """A timing section: on CUDA, or at --quick sizes; the full shapes on a CPU would take hours."""
    if not have_data:
        return [f"Skipped: no {GPT2}."]
    if not (CUDA or quick):
        return ["Skipped: timing the 410m and 1.4b shapes needs CUDA (--quick times tiny shapes on this CPU)."]
    return section()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path(".gpu-check/data"), help="see the module docstring")
    parser.add_argument("--out", type=Path, default=Path("reports/bench/gpu.md"))
    parser.add_argument("--quick", action="store_true", help="tiny sizes (the test suite's CPU run)")
    parser.add_argument("--only", nargs="+", metavar="WORD", help="run only the sections whose title has a word")
    args = parser.parse_args()
    quick = args.quick
    have_data = (args.data / STORIES).is_dir()
    have_eval = (args.data / "eval").is_dir()
    models = {"stories260K-hf": lambda: stories(args.data)} if have_data else {}
    models["GPT-NeoX " + ("tiny" if quick else "70m-shaped")] = lambda: pythia_shaped("tiny" if quick else "70m")
    sections: list[tuple[str, Callable[[], list[str]]]] = [
        ("CUDA tests", cuda_tests),
        ("RTN and GPTQ weights, CPU vs CUDA", lambda: parity(models, (4, 32) if quick else (32, 256))),
        ("GPTQ column loop, eager vs fused", lambda: column_loops(QUICK_LOOP_SHAPES if quick else LOOP_SHAPES)),
        (
            "GPTQ time per size",
            lambda: speed_or_skip(
                lambda: gptq_seconds(
                    [("tiny", torch.float32)] if quick else [("410m", torch.bfloat16), ("1.4b", torch.bfloat16)],
                    4 if quick else 128,
                    64 if quick else 2048,
                ),
                quick,
            ),
        ),
        (
            "stories260K study on each device and dtype (loss δ, paired 95% CI)",
            lambda: stories_study(args.data, 4096 if quick else 65536) if have_data else [f"Skipped: no {STORIES}."],
        ),
        (
            "Evaluation speed",
            lambda: speed_or_skip(
                lambda: eval_speed(
                    args.data,
                    [("tiny", torch.float32)] if quick else [("410m", torch.float32), ("1.4b", torch.bfloat16)],
                    3000 if quick else 150_000,
                    4 if quick else 16,
                ),
                quick,
                (args.data / GPT2).is_dir(),
            ),
        ),
        (
            "lm-eval multiple-choice speed",
            lambda: speed_or_skip(
                lambda: task_speed(
                    args.data,
                    [("tiny", torch.float32)] if quick else [("410m", torch.float32), ("1.4b", torch.bfloat16)],
                    8 if quick else 1000,
                    4 if quick else 16,
                ),
                quick,
                (args.data / GPT2).is_dir() and have_eval,
            ),
        ),
        ("Sweep cost on CUDA (tests/bench/scale.py)", lambda: sweep_cost(["410m", "1.4b"])),
    ]
    document = environment()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.only:
        sections = [(title, run) for title, run in sections if any(word in title for word in args.only)]
    for title, section in sections:
        started = time.perf_counter()
        try:
            lines = section()
        except Exception as error:  # noqa: BLE001 - a section that breaks is reported, and the others still run
            lines = [f"**Failed**: {type(error).__name__}: {error}"]
        document += ["", f"## {title}", "", *lines, "", f"({time.perf_counter() - started:.0f} s)"]
        args.out.write_text("\n".join(document) + "\n")
        print(f"{title}: {time.perf_counter() - started:.0f} s", flush=True)


if __name__ == "__main__":
    main()
