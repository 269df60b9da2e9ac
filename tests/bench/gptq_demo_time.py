"""GPTQ on a demo-ladder checkpoint on this CPU: seconds per config and a digest of the quantized weights.

Run it from two checkouts (the same file copied into the older one: it uses only `quantize` and
`quantizable_weights`, and builds configs the way either side accepts them) to check that a change keeps every
config's weights bit-identical (equal digests) and to compare times: `python tests/bench/gptq_demo_time.py`.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import time
from pathlib import Path

import torch
import transformers

from ptq_eval.quant import DEFAULT_EXCLUDE, QuantConfig, quantizable_weights, quantize

CONFIGS = {  # label: (bits, group, symmetric, options)
    "3-bit g32 act-order": (3, 32, True, {"act_order": True}),
    "4-bit channel": (4, -1, True, {}),
    "4-bit g32 static groups": (4, 32, True, {"act_order": True, "static_groups": True}),
    "3-bit g32 asym, layer-sequential": (3, 32, False, {"sequential": "layer"}),
    "4-bit g32, sequential none": (4, 32, True, {"sequential": "none"}),
}


def gptq_config(bits: int, group: int, symmetric: bool, options: dict) -> QuantConfig:
    """Options as a mapping (since 8ece15e's ancestors moved them there) or as fields (at 51cd793)."""
    try:
        return QuantConfig(method="gptq", bits=bits, group_size=group, symmetric=symmetric, options=options)
    except TypeError:
        return QuantConfig(method="gptq", bits=bits, group_size=group, symmetric=symmetric, **options)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=Path("tasks/ladders/demo/n100k/tpp320"))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--length", type=int, default=128)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = transformers.AutoModelForCausalLM.from_pretrained(args.checkpoint, dtype=torch.float32).eval()
    pristine = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    generator = torch.Generator().manual_seed(0)
    calibration = torch.randint(0, model.config.vocab_size, (args.samples, args.length), generator=generator)
    print("| config | median s | min s | weights sha256 |\n|---|---|---|---|")
    for label, fields in CONFIGS.items():
        config = gptq_config(*fields)
        seconds = []
        for _ in range(args.runs):
            model.load_state_dict(pristine)
            started = time.perf_counter()
            quantize(model, config, DEFAULT_EXCLUDE, calibration)
            seconds.append(time.perf_counter() - started)
        digest = hashlib.sha256()
        for weight in quantizable_weights(model):
            digest.update(weight.read().detach().contiguous().numpy().tobytes())
        print(f"| {label} | {statistics.median(seconds):.3f} | {min(seconds):.3f} | {digest.hexdigest()[:16]} |")


if __name__ == "__main__":
    main()
