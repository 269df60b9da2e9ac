"""Benchmark (`make bench-kv-cost`): what rounding activations and the KV cache as the model runs adds to an
eval's time -> reports/bench/kv_cost.md.

A GPT-NeoX of Pythia-14m's shape (vocabulary 50,304, hidden 128, 6 layers, 4 heads, random weights, seed 0), its
perplexity eval (`window_losses`: `--tokens` tokens in windows of 256, batch 16, 2 threads) timed bare and under
each config's run-time rounding (`quant/run_time.py`; weights untouched, so only the run-time cost is timed),
alternating, `--repeats` times; the ratio is each config's median over the bare pass's median in the same run.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import torch

from ptq_eval.evals.perplexity import window_losses
from ptq_eval.evals.windows import make_windows
from ptq_eval.quant import quantizable_weights
from ptq_eval.quant.run_time import rounding_at_run_time
from ptq_eval.spec import QuantGrid

CONFIGS = {
    "KV int4 per token (asymmetric)": {"kv_cache": "int4"},
    "KV int8 per token, Hadamard": {"kv_cache": {"format": "int", "bits": 8, "symmetric": False, "hadamard": True}},
    "KV fp8 per layer (static)": {"kv_cache": "fp8"},
    "activations int8 per token": {"activations": "int8"},
    "activations int8 + KV int8 per token": {"activations": "int8", "kv_cache": "int8"},
}


def _model() -> torch.nn.Module:
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(0)
    config = GPTNeoXConfig(vocab_size=50304, hidden_size=128, num_hidden_layers=6, num_attention_heads=4,
                           intermediate_size=512, max_position_embeddings=512, rotary_pct=0.25,
                           tie_word_embeddings=False)  # fmt: skip
    return GPTNeoXForCausalLM(config).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=32768)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("reports/bench/kv_cost.md"))
    args = parser.parse_args()
    torch.set_num_threads(2)
    model = _model()
    stream = torch.randint(0, 50304, (args.tokens * 2,), generator=torch.Generator().manual_seed(0))
    windows = make_windows(stream, 256, args.tokens)
    calibration = stream[: 8 * 256].reshape(8, 256)
    configs = {name: QuantGrid(**grid).configs()[0] for name, grid in CONFIGS.items()}
    weights = quantizable_weights(model)
    times: dict[str, list[float]] = {"bare": [], **{name: [] for name in configs}}
    window_losses(model, windows)  # warm-up
    for _ in range(args.repeats):
        started = time.perf_counter()
        window_losses(model, windows)
        times["bare"].append(time.perf_counter() - started)
        for name, config in configs.items():
            with rounding_at_run_time(model, config, weights, calibration):
                started = time.perf_counter()
                window_losses(model, windows)
                times[name].append(time.perf_counter() - started)
    bare = statistics.median(times["bare"])
    lines = [
        "# Run-time rounding cost (activations, KV cache)",
        "",
        f"`python tests/bench/kv_cost.py --tokens {args.tokens} --repeats {args.repeats}` on {platform.machine()} "
        f"({torch.get_num_threads()} threads), torch {torch.__version__}, {time.strftime('%Y-%m-%d')}. Perplexity "
        f"eval of a GPT-NeoX of Pythia-14m's shape, {args.tokens} tokens in windows of 256, batch 16; median of "
        f"{args.repeats} alternating runs; ratio: over the bare pass in the same run. Static scales' calibration "
        "(once per config) is outside the timed pass.",
        "",
        "| config | median s | min s | max s | vs bare |",
        "|---|---|---|---|---|",
    ]
    for name, found in times.items():
        median = statistics.median(found)
        lines.append(f"| {name} | {median:.3f} | {min(found):.3f} | {max(found):.3f} | {median / bare:.3f}× |")
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
