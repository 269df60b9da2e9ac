"""Cross-check our GPTQ against the reference implementation (IST-DASLab/gptq), layer by layer.

The reference is not a dependency and is never committed: point REF at a checkout of it.
    python tests/bench/gptq_reference.py /path/to/IST-DASLab-gptq
Prints, per configuration, the output error of both and how many weights are identical.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from ptq_eval.quant import QuantConfig
from ptq_eval.quant.gptq_solve import gptq_weight
from ptq_eval.quant.statistics import Hessian


def problem(rows: int = 64, columns: int = 256, samples: int = 4096, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    mixing = torch.randn(columns, columns, generator=generator) / columns**0.5
    scales = torch.logspace(-1, 1, columns)[torch.randperm(columns, generator=generator)]
    return torch.randn(rows, columns, generator=generator), (
        torch.randn(samples, columns, generator=generator) @ mixing
    ) * scales


def reference_weight(reference, quantizer_module, weight, inputs, config: QuantConfig) -> torch.Tensor:
    linear = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    linear.weight.data = weight.clone()
    layer = reference.GPTQ(linear)
    layer.quantizer = quantizer_module.Quantizer()
    layer.quantizer.configure(config.bits, perchannel=True, sym=config.symmetric, mse=False)
    for chunk in inputs.split(256):
        layer.add_batch(chunk.unsqueeze(0), None)
    layer.fasterquant(config.block_size, config.damp, config.group_size, config.act_order, config.static_groups)
    return linear.weight.data


def main(reference_dir: str) -> None:
    sys.path.insert(0, reference_dir)
    torch.cuda.synchronize = lambda *args: None  # the reference times itself with CUDA calls
    import gptq as reference
    import quant as quantizer_module

    weight, inputs = problem()
    hessian = Hessian(weight.shape[1], torch.device("cpu"))
    for chunk in inputs.split(256):
        hessian.add(chunk)
    print("| bits | group | act_order | static | ours err | reference err | identical weights |")
    print("|---|---|---|---|---|---|---|")
    for bits in (3, 4, 8):
        for group in (-1, 32):
            for act_order, static in ((False, False), (True, False), (True, True)):
                if static and group < 0:
                    continue
                config = QuantConfig(
                    method="gptq",
                    bits=bits,
                    group_size=group,
                    symmetric=True,
                    options={"act_order": act_order, "static_groups": static},
                )
                ours = gptq_weight(weight, hessian.matrix, config).weight
                theirs = reference_weight(reference, quantizer_module, weight, inputs, config)
                err = [
                    ((inputs @ (weight - q).T).pow(2).sum() / (inputs @ weight.T).pow(2).sum()).item()
                    for q in (ours, theirs)
                ]
                same = (ours == theirs).float().mean().item() * 100
                print(f"| {bits} | {group} | {act_order} | {static} | {err[0]:.6f} | {err[1]:.6f} | {same:.2f}% |")


if __name__ == "__main__":
    if len(sys.argv) != 2 or not (Path(sys.argv[1]) / "gptq.py").is_file():
        sys.exit("usage: gptq_reference.py REFERENCE_DIR  (a checkout of IST-DASLab/gptq with gptq.py and quant.py)")
    main(sys.argv[1])
