"""The sweep's ten GPTQ configs of one checkpoint under `sequential: none`: each alone, or all from one solve.

A Pythia-shaped GPT-NeoX (random weights) and every GPTQ config of the sweep (3, 4, 5, 6, 8 bits; per channel
and groups of 128; act-order): seconds for one config alone, for the ten one after another (each with its own
calibration pass and solve) and for the ten sharing one pass and one solve per matrix (what the runner does),
and whether every config's weights are bit-identical both ways. `python tests/bench/gptq_shared.py --size 160m`
writes reports/bench/gptq_shared.md; `make gpu-check` runs it on CUDA.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import sys
import time
from pathlib import Path

import torch

from ptq_eval.quant import DEFAULT_EXCLUDE, QuantConfig, quantizable_weights, quantize

SHARED = {"act_order": True, "sequential": "none"}
SWEEP = [
    QuantConfig(method="gptq", bits=bits, group_size=group, options=SHARED)
    for bits in (3, 4, 5, 6, 8)
    for group in (-1, 128)
]


def quantize_timed(model, pristine, config, calibration, cache, share_with) -> tuple[float, dict[str, torch.Tensor]]:
    """Seconds of one `quantize` from the pristine weights, and the quantized matrices (on the CPU)."""
    model.load_state_dict(pristine)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    started = time.perf_counter()
    quantize(model, config, DEFAULT_EXCLUDE, calibration, cache=cache, share_with=share_with)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    return seconds, {w.name: w.read().detach().to("cpu", copy=True) for w in quantizable_weights(model)}


def measure(model: torch.nn.Module, samples: int, length: int, configs=SWEEP, alone: int | None = None) -> dict:
    """Seconds alone (each config with a fresh cache; the first `alone` of them, default all) and shared (one cache,
    every config named), and whether the weights of the configs run both ways are identical."""
    device = next(model.parameters()).device
    pristine = {name: tensor.detach().to("cpu", copy=True) for name, tensor in model.state_dict().items()}
    generator = torch.Generator().manual_seed(0)
    calibration = torch.randint(0, model.config.vocab_size, (samples, length), generator=generator).to(device)
    alone_seconds, shared, identical = [], [], True
    cache: dict = {}
    for index, config in enumerate(configs):
        seconds, shared_weights = quantize_timed(model, pristine, config, calibration, cache, configs)
        shared.append(seconds)
        if alone is None or index < alone:
            seconds, weights = quantize_timed(model, pristine, config, calibration, {}, ())
            alone_seconds.append(seconds)
            identical &= all(torch.equal(weights[name], shared_weights[name]) for name in weights)
    model.load_state_dict(pristine)
    return {"alone": alone_seconds, "shared": shared, "identical": identical}


def row(label: str, dtype: torch.dtype, measured: dict) -> str:
    """One table row; where fewer configs ran alone than shared, 'ten alone' is that many times the first's."""
    alone, shared = measured["alone"], measured["shared"]
    same = "yes" if measured["identical"] else "**no**"
    total = sum(alone) if len(alone) == len(shared) else len(shared) * alone[0]
    estimated = "" if len(alone) == len(shared) else f" (est. {len(shared)} x one)"
    return (f"| {label} | {str(dtype)[6:]} | {alone[0]:.1f} | {total:.1f}{estimated} | {sum(shared):.1f} "
            f"({shared[0]:.1f} + {sum(shared[1:]):.2f}) | {total / sum(shared):.1f}x | {same} |")  # fmt: skip


HEADER = ["| model | dtype | one config (s) | ten alone (s) | ten shared (s) (first + the rest) | saved | "
          "weights identical |", "|---|---|---|---|---|---|---|"]  # fmt: skip


def main() -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from shapes import pythia_shaped

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="160m")
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--length", type=int, default=2048)
    parser.add_argument("--out", type=Path, default=Path("reports/bench/gptq_shared.md"))
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    measured = measure(pythia_shaped(args.size, device), args.samples, args.length)
    lines = [f"# GPTQ's ten sweep configs under sequential: none, alone and shared ({datetime.date.today()})", "",
             f"{args.samples} x {args.length} calibration tokens; {device}, {torch.get_num_threads()} threads, "
             f"{platform.processor() or platform.machine()}; torch {torch.__version__}. Configs: 3/4/5/6/8 bits x "
             "per channel / groups of 128, act-order. `python tests/bench/gptq_shared.py`.", "", *HEADER,
             row(f"Pythia-{args.size} shape", torch.float32, measured)]  # fmt: skip
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
