"""Benchmark (`make bench-scale`): what a full ladder study costs, per job and in all.

GPT-NeoX models of Pythia's published shapes (hidden size, layers, heads, MLP width, vocabulary 50,304,
untied head) with random weights (seed 0) and the demo ladder's tokenizer are saved as checkpoints, then each
size is measured in a fresh process through the suite's own code: load (`load_checkpoint`), one perplexity
eval (baseline and every quantized eval cost the same), RTN, and GPTQ at two calibration sizes. Peak memory
is the process's resident-set high-water mark (CPU) or `torch.cuda.max_memory_allocated` (CUDA).

From those, the cost of a sweep — SIZES × REVISIONS × {RTN, GPTQ} × BITS × {per channel, group 128}, each
checkpoint loaded once with one baseline — is extrapolated to the sweep's settings (eval EVAL_TOKENS,
calibration CALIBRATION_SAMPLES × CALIBRATION_LEN) and to the sizes not measured: eval and GPTQ's calibration
passes by forward FLOPs per token, GPTQ's per-matrix solve by its FLOPs (Σ in²·out + in³ over the matrices),
RTN by parameters, load by bytes. Workers: checkpoint groups list-scheduled, longest first.

With `--shared`, each size also times the sweep's ten GPTQ configs from one calibration pass and one solve per
matrix (`sequential: none`, what the runner does when a checkpoint's configs share their Hessians) on the larger
calibration; a checkpoint's GPTQ then costs that instead of ten configs one after another, extrapolated the same
way: its calibration pass at one config's rate per forward FLOP (an upper bound: `sequential: none` runs each
block once, block-sequential GPTQ twice) and the rest, the joint solve, per FLOP of the stacked solve.
`--dtype` loads the model in another dtype (GPTQ's Hessians and solve stay float32).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PYTHIA = {  # name: (hidden, layers, heads, intermediate), from the released config.json files
    "70m": (512, 6, 8, 2048),
    "160m": (768, 12, 12, 3072),
    "410m": (1024, 24, 16, 4096),
    "1b": (2048, 16, 8, 8192),
    "1.4b": (2048, 24, 16, 8192),
    "2.8b": (2560, 32, 32, 10240),
}
VOCAB = 50304
SWEEP_SIZES = ("70m", "160m", "410m", "1b", "1.4b", "2.8b")
REVISIONS, BITS, GROUPINGS = 16, (3, 4, 5, 6, 8), (-1, 128)
EVAL_TOKENS, EVAL_LEN = 300_000, 2048  # WikiText-2 test at Pythia's context
CALIBRATION_SAMPLES, CALIBRATION_LEN = 128, 2048  # the GPTQ paper's C4 calibration
TOKENIZER = Path("tasks/ladders/demo/n25k/tpp5")  # its tokenizer; a model's cost does not depend on it


def shape_flops(size: str) -> dict[str, float]:
    """Forward FLOPs per token, GPTQ solve FLOPs (one config; the sweep's configs stacked, one factorization),
    parameter count and bytes (float32) of a Pythia shape."""
    hidden, layers, _, inner = PYTHIA[size]
    matrices = [(hidden, 3 * hidden), (hidden, hidden), (hidden, inner), (inner, hidden)]  # (in, out) per layer
    nonembedding = layers * sum(i * o for i, o in matrices)
    return {
        "forward": 2 * (nonembedding + VOCAB * hidden),
        "solve": layers * sum(i * i * o + i**3 for i, o in matrices),
        "solve_shared": layers * sum(len(BITS) * len(GROUPINGS) * i * i * o + i**3 for i, o in matrices),
        "params": nonembedding,
        "bytes": 4 * (nonembedding + 2 * VOCAB * hidden),
    }


def make_checkpoint(size: str, root: Path) -> Path:
    import torch
    import transformers

    hidden, layers, heads, inner = PYTHIA[size]
    config = transformers.GPTNeoXConfig(
        vocab_size=VOCAB, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=inner, max_position_embeddings=2048, rotary_pct=0.25, use_parallel_residual=True,
        tie_word_embeddings=False,
    )  # fmt: skip
    torch.manual_seed(0)
    path = root / f"pythia-{size}-shaped"
    transformers.GPTNeoXForCausalLM(config).save_pretrained(path)
    transformers.AutoTokenizer.from_pretrained(TOKENIZER).save_pretrained(path)
    (path / "ptq_eval.json").write_text(json.dumps({"tokens": 300_000_000_000}))
    return path


def measure(path: Path, args: argparse.Namespace) -> dict:
    """One size, in this (fresh) process: seconds of each job part, and peak memory."""
    import torch
    from gptq_shared import measure as shared_seconds

    from ptq_eval.checkpoints import load_checkpoint
    from ptq_eval.corpus import load_corpus, token_stream
    from ptq_eval.evals.kinds import PerplexityEval
    from ptq_eval.evals.kinds.perplexity import PerplexityEvaluator
    from ptq_eval.evals.windows import make_windows
    from ptq_eval.quant import QuantConfig, quantize
    from ptq_eval.quant.calibration import calibration_tokens

    def timed(fn):
        if device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        result = fn()
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - started, result

    device, calibration, cal_len = args.device, args.calibration, args.calibration_len
    load_s, loaded = timed(lambda: load_checkpoint(str(path), device=device, dtype=args.dtype))
    evaluation = PerplexityEval(kind="perplexity", tokens=args.eval_tokens, seq_len=args.eval_len)
    windows = make_windows(token_stream(loaded.tokenizer, load_corpus("stdlib-python", "validation")), args.eval_len,
                           args.eval_tokens, None)  # fmt: skip
    evaluator = PerplexityEvaluator(evaluation, windows, {})
    eval_s, _ = timed(lambda: evaluator.score(loaded.model))
    pristine = {name: tensor.detach().cpu().clone() for name, tensor in loaded.model.state_dict().items()}
    rtn_s, _ = timed(lambda: quantize(loaded.model, QuantConfig(method="rtn", bits=4, group_size=128)))
    gptq_s = {}
    for samples in calibration:
        loaded.model.load_state_dict(pristine)
        tokens = calibration_tokens(loaded.tokenizer, "stdlib-python", "train", samples, cal_len, 0)
        gptq_s[samples * cal_len], _ = timed(
            lambda tokens=tokens: quantize(
                loaded.model,
                QuantConfig(method="gptq", bits=4, group_size=128, options={"act_order": True}),
                calibration=tokens,
            )
        )
    loaded.model.load_state_dict(pristine)
    shared = sum(shared_seconds(loaded.model, max(calibration), cal_len, alone=0)["shared"]) if args.shared else None
    peak = (
        torch.cuda.max_memory_allocated() / 2**30
        if device == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    )
    return {"load": load_s, "eval": eval_s, "eval_tokens": windows.scored.sum().item(), "rtn": rtn_s,
            "gptq": gptq_s, "gptq_ten_shared": shared, "peak_gib": peak}  # fmt: skip


def sweep_cost(measured: dict[str, dict]) -> tuple[dict[str, dict], list[str]]:
    """Per-size seconds of each job part at the sweep's settings, scaled from the measured sizes."""
    rates: dict[str, list[float]] = {"load": [], "eval": [], "rtn": [], "pass": [], "solve": [], "shared": []}
    for size, m in measured.items():
        flops = shape_flops(size)
        (t1, s1), (t2, s2) = sorted(m["gptq"].items())
        if s2 <= s1:
            raise SystemExit(
                f"{size}: GPTQ took {s2:.2f} s on {t2} calibration tokens, no more than {s1:.2f} s on {t1}: too "
                "close to tell the calibration passes from the solve; use calibration sizes further apart"
            )
        per_token = (s2 - s1) / (t2 - t1)  # GPTQ's calibration passes, per token; the rest is the solve
        rates["load"].append(m["load"] / flops["bytes"])
        rates["eval"].append(m["eval"] / (m["eval_tokens"] * flops["forward"]))
        rates["rtn"].append(m["rtn"] / flops["params"])
        rates["pass"].append(per_token / flops["forward"])
        rates["solve"].append(max(s1 - per_token * t1, 0.0) / flops["solve"])
        if m.get("gptq_ten_shared") is not None:  # the ten configs' joint solve: what their pass does not take
            rates["shared"].append(max(m["gptq_ten_shared"] - per_token * t2, 0.0) / flops["solve_shared"])
    rate = {part: sum(values) / len(values) for part, values in rates.items() if values}
    costs = {}
    for size in SWEEP_SIZES:
        flops = shape_flops(size)
        eval_s = rate["eval"] * flops["forward"] * EVAL_TOKENS
        passes = rate["pass"] * flops["forward"] * CALIBRATION_SAMPLES * CALIBRATION_LEN
        ten = passes + rate["shared"] * flops["solve_shared"] if "shared" in rate else None
        costs[size] = {"load": rate["load"] * flops["bytes"], "eval": eval_s, "rtn": rate["rtn"] * flops["params"],
                       "gptq": passes + rate["solve"] * flops["solve"], "gptq_ten": ten}  # fmt: skip
    units = {"load": "byte", "eval": "forward FLOP", "rtn": "parameter", "pass": "forward FLOP", "solve": "solve FLOP",
             "shared": "joint-solve FLOP"}  # fmt: skip
    notes = [f"{part} {value:.3g} s per {units[part]}" for part, value in rate.items()]
    return costs, notes


def group_seconds(cost: dict) -> float:
    """One checkpoint: load, baseline eval, every RTN config and its eval, GPTQ (the ten shared where measured)
    and every GPTQ config's eval."""
    configs = len(BITS) * len(GROUPINGS)
    gptq = cost["gptq_ten"] if cost["gptq_ten"] is not None else configs * cost["gptq"]
    return cost["load"] + cost["eval"] + configs * (cost["rtn"] + cost["eval"]) + gptq + configs * cost["eval"]


def makespan(durations: list[float], workers: int) -> float:
    loads = [0.0] * workers
    for duration in sorted(durations, reverse=True):
        loads[loads.index(min(loads))] += duration
    return max(loads)


def report(measured: dict, device: str, settings: str) -> str:
    costs, notes = sweep_cost(measured)
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs" if device == "cpu" else device
    lines = [f"# What a full study costs ({time.strftime('%Y-%m-%d')}, {device}: {machine})", "", settings, ""]
    lines += ["## Measured (one job part each; eval = baseline = each quantized eval)", ""]
    lines += [
        "| size | load s | eval s (tokens) | RTN s | GPTQ s (calibration tokens) | ten GPTQ shared s | peak GiB |",
        "|---|---|---|---|---|---|---|",
    ]
    for size, m in measured.items():
        gptq = ", ".join(f"{s:.1f} ({t})" for t, s in sorted(m["gptq"].items()))
        ten = "not measured" if m.get("gptq_ten_shared") is None else f"{m['gptq_ten_shared']:.1f}"
        lines.append(f"| {size} | {m['load']:.2f} | {m['eval']:.1f} ({m['eval_tokens']}) | {m['rtn']:.2f} | {gptq} "
                     f"| {ten} | {m['peak_gib']:.2f} |")  # fmt: skip
    configs = len(BITS) * len(GROUPINGS)
    jobs = len(SWEEP_SIZES) * REVISIONS * 2 * configs
    lines += ["", f"## Extrapolated: {len(SWEEP_SIZES)} sizes × {REVISIONS} revisions × RTN and GPTQ × bits "
              f"{list(BITS)} × groupings {list(GROUPINGS)} = {jobs} jobs; eval {EVAL_TOKENS} tokens at {EVAL_LEN}; "
              f"calibration {CALIBRATION_SAMPLES} × {CALIBRATION_LEN}", ""]  # fmt: skip
    lines += ["| size | load s | eval s | RTN s | GPTQ s (one) | GPTQ s (ten shared) | one checkpoint group, h |",
              "|---|---|---|---|---|---|---|"]  # fmt: skip
    durations = []
    for size, cost in costs.items():
        hours = group_seconds(cost) / 3600
        durations += [group_seconds(cost)] * REVISIONS
        ten = "n/a (ten one after another)" if cost["gptq_ten"] is None else f"{cost['gptq_ten']:.0f}"
        lines.append(f"| {size} | {cost['load']:.1f} | {cost['eval']:.0f} | {cost['rtn']:.1f} | {cost['gptq']:.0f} "
                     f"| {ten} | {hours:.2f} |")  # fmt: skip
    total = sum(durations) / 3600
    longest = max(durations) / 3600
    lines += ["", f"Total: {total:.1f} {device}-hours of work ({'this machine' if device == 'cpu' else 'one GPU'} per "
              f"worker). Workers: checkpoint groups list-scheduled longest first; no group can be split, so the "
              f"longest ({longest:.1f} h) bounds the wall-clock time however many workers there are.", "",
              "| workers | wall-clock h | speed-up |", "|---|---|---|"]  # fmt: skip
    for workers in (1, 2, 4, 8, 32, 96):
        wall = makespan(durations, workers) / 3600
        lines.append(f"| {workers} | {wall:.1f} | {total / wall:.2f}× |")
    lines += ["", "Rates (averaged over the measured sizes): " + "; ".join(notes) + ".", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["70m", "160m"], choices=sorted(PYTHIA))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--eval-tokens", type=int, default=8192)
    parser.add_argument("--eval-len", type=int, default=512)
    parser.add_argument("--calibration", nargs=2, type=int, default=[4, 8], help="two calibration sample counts")
    parser.add_argument("--calibration-len", type=int, default=512)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--shared", action="store_true", help="also time the ten GPTQ configs from one solve")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure this checkpoint, print JSON
    args = parser.parse_args()
    if args.one:
        result = measure(Path(args.one), args)
        print(json.dumps(result))
        return
    measured = {}
    with tempfile.TemporaryDirectory() as root:
        for size in args.sizes:
            path = make_checkpoint(size, Path(root))
            command = [sys.executable, __file__, "--one", str(path), *sys.argv[1:]]
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            measured[size] = json.loads(output.splitlines()[-1])
            measured[size]["gptq"] = {int(k): v for k, v in measured[size]["gptq"].items()}
            print(f"{size}: {measured[size]}", file=sys.stderr, flush=True)
    settings = (f"Measured with the model in {args.dtype}, eval {args.eval_tokens} tokens at {args.eval_len}, GPTQ "
                f"4-bit g128 act-order on {args.calibration} × {args.calibration_len} calibration tokens"
                + (", and the ten configs shared (sequential: none) on the larger" if args.shared else "")
                + f", `torch` threads: "
                f"{os.environ.get('OMP_NUM_THREADS', 'default')}.")  # fmt: skip
    text = report(measured, args.device, settings)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
