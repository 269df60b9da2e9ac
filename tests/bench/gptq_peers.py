"""Benchmark: our GPTQ beside GPTQModel on demo-ladder checkpoints (`make bench-gptq`).

Same checkpoint, same calibration tokens, same grid (symmetric, act-order, damp 0.01), same
evaluation windows; reports δ loss with its 95% CI and quantization wall time for each.
GPTQModel quantizes in float32 like ours (its CPU default is bf16); its packed output is decoded
into a float32 copy of the model for evaluation (its CPU kernels run only in fp16/bf16).
Runs in the throwaway venv that `make bench-gptq` builds; GPTQModel is never a project dependency.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "2")

import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from ptq_eval.corpus import load_corpus, token_stream  # noqa: E402
from ptq_eval.evaluate.paired import paired_loss_metrics  # noqa: E402
from ptq_eval.evaluate.perplexity import make_windows, window_losses  # noqa: E402
from ptq_eval.export import dequantize_packed  # noqa: E402
from ptq_eval.quant import QuantConfig, quantizable_linears  # noqa: E402
from ptq_eval.quant.calibration import calibration_tokens  # noqa: E402
from ptq_eval.quant.gptq import quantize_gptq  # noqa: E402

LADDER = Path("tasks/ladders/demo")
CHECKPOINTS = ["n25k/tpp320", "n100k/tpp40", "n100k/tpp320"]


def ours(checkpoint: Path, config: QuantConfig, calibration: torch.Tensor, workdir: str):
    model = AutoModelForCausalLM.from_pretrained(checkpoint).eval()
    started = time.perf_counter()
    quantize_gptq(model, config, ("lm_head",), calibration)
    return model, time.perf_counter() - started


def gptqmodel(checkpoint: Path, config: QuantConfig, calibration: torch.Tensor, workdir: str):
    from gptqmodel import GPTQModel, QuantizeConfig

    settings = QuantizeConfig(
        bits=config.bits,
        group_size=config.group_size,
        desc_act=config.act_order,
        sym=config.symmetric,
        damp_percent=config.damp,
        act_group_aware=False,
        offload_to_disk=False,
    )
    model = GPTQModel.load(str(checkpoint), settings, dtype=torch.float32)  # its CPU default is bf16
    rows = [{"input_ids": row.tolist(), "attention_mask": [1] * len(row)} for row in calibration]
    started = time.perf_counter()
    model.quantize(rows, batch_size=8)
    seconds = time.perf_counter() - started
    out = Path(workdir) / f"{checkpoint.parent.name}-{checkpoint.name}-{config.bits}-{config.group_size}"
    model.save(str(out))
    # Its packed CPU kernels run only in fp16/bf16, so decode its packed layers into an fp32 copy:
    # the comparison is then GPTQ against GPTQ, differing only by its fp16 scales.
    tensors = load_file(out / "model.safetensors")
    decoded = AutoModelForCausalLM.from_pretrained(checkpoint).eval()
    with torch.no_grad():
        for name, linear in quantizable_linears(decoded, ("lm_head",)).items():
            linear.weight.copy_(dequantize_packed(tensors, name, config.bits))
    return decoded, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--checkpoints", nargs="*", default=CHECKPOINTS)
    parser.add_argument("--out", default="reports/bench/gptq.md")
    args = parser.parse_args()
    lines = [
        "| checkpoint | bits | group | ours δ [95% CI] | ours s | GPTQModel δ [95% CI] | GPTQModel s |",
        "|---|---|---|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory() as workdir:
        for name in args.checkpoints:
            checkpoint = LADDER / name
            tokenizer = AutoTokenizer.from_pretrained(checkpoint)
            windows = make_windows(token_stream(tokenizer, load_corpus("stdlib-python", "validation")), 128, 65536)
            calibration = calibration_tokens(tokenizer, "stdlib-python", "train", 128, 128, 0)
            fp = window_losses(AutoModelForCausalLM.from_pretrained(checkpoint).eval(), windows)
            for bits in (3, 4):
                for group in (-1, 32):
                    config = QuantConfig("gptq", bits, group, act_order=True)
                    cells = []
                    for run in (ours, gptqmodel):
                        model, seconds = run(checkpoint, config, calibration, workdir)
                        loss = paired_loss_metrics(fp, window_losses(model, windows))[0]
                        cells += [f"{loss.delta:.4f} [{loss.ci_low:.4f}, {loss.ci_high:.4f}]", f"{seconds:.1f}"]
                    lines.append(f"| {name} | {bits} | {group} | " + " | ".join(cells) + " |")
                    print(lines[-1], flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
