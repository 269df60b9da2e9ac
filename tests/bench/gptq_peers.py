"""Benchmark: our GPTQ beside a maintained peer on demo-ladder checkpoints (`make bench-gptq`,
`make bench-gptq-llmcompressor`).

Same checkpoint, same calibration tokens, same grid (symmetric, act-order, damp 0.01, block 128),
same evaluation windows, float32; reports δ loss with its 95% CI and quantization wall time for each,
and the largest difference between their quantized weights.

- GPTQModel quantizes in float32 like ours (its CPU default is bf16); its packed output is decoded
  into a float32 copy of the model for evaluation (its CPU kernels run only in fp16/bf16). Its
  `desc_act` is our `act_order` with groups taken along the act-order permutation; its
  `true_sequential` (inputs re-collected within a block after each group of layers sharing an input)
  is our `sequential: layer`; both modes are compared.
- llm-compressor's `GPTQModifier` runs with explicit `QuantizationArgs` (its preset schemes use
  group 128) in its sequential pipeline (each block calibrated on the quantized blocks' outputs, as
  ours). Its `actorder="weight"` (alias "static") orders columns by the Hessian diagonal but keeps
  groups contiguous, with every grid fitted before GPTQ starts: our `act_order` + `static_groups`.
  Its "group" ordering (groups along the permutation) is rejected for GPTQ, so the group-32 rows
  compare static groups. Its de-quantized weights are copied into a float32 copy of the model.

Each peer runs in a throwaway venv that its make target builds; neither is a project dependency.
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "2")

import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from ptq_eval.artifacts.gptq_pack import dequantize_packed  # noqa: E402
from ptq_eval.corpus import load_corpus, token_stream  # noqa: E402
from ptq_eval.evals.paired import paired_metrics  # noqa: E402
from ptq_eval.evals.perplexity import loss_metrics, window_losses  # noqa: E402
from ptq_eval.evals.windows import make_windows  # noqa: E402
from ptq_eval.quant import QuantConfig, WeightMatrix, quantizable_weights, quantize  # noqa: E402
from ptq_eval.quant.calibration import calibration_tokens  # noqa: E402

LADDER = Path("tasks/ladders/demo")
CHECKPOINTS = ["n25k/tpp320", "n100k/tpp40", "n100k/tpp320"]
EXCLUDE = ("lm_head",)
CALIBRATION = (128, 128)  # windows, tokens each (stdlib-python train, seed 0)
EVAL_LEN, EVAL_TOKENS = 128, 65_536  # stdlib-python validation


def ours(checkpoint: Path, config: QuantConfig, calibration: torch.Tensor, workdir: str, **sharing):
    """Our GPTQ: the quantized model and the seconds it took; `sharing`: `cache` and `share_with` for `quantize`."""
    model = AutoModelForCausalLM.from_pretrained(checkpoint).eval()
    started = time.perf_counter()
    quantize(model, config, EXCLUDE, calibration, **sharing)
    return model, time.perf_counter() - started


def gptqmodel(checkpoint: Path, config: QuantConfig, calibration: torch.Tensor, workdir: str):
    """GPTQModel's GPTQ, decoded from its packed checkpoint: the quantized model and the seconds it took."""
    from gptqmodel import GPTQModel, QuantizeConfig

    settings = QuantizeConfig(
        bits=config.bits,
        group_size=config.group_size,
        desc_act=config.act_order,
        sym=config.symmetric,
        damp_percent=config.damp,
        act_group_aware=False,
        true_sequential=config.sequential == "layer",
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
    return _fp32_copy(checkpoint, lambda name: dequantize_packed(tensors, name, config.bits)), seconds


def llmcompressor_weights(config: QuantConfig):
    """The config's integer grid as llm-compressor's QuantizationArgs (per channel, or groups)."""
    from compressed_tensors.quantization import QuantizationArgs

    grouped = config.group_size > 0
    return QuantizationArgs(
        num_bits=config.bits,
        type="int",
        symmetric=config.symmetric,
        strategy="group" if grouped else "channel",
        group_size=config.group_size if grouped else None,
    )


def llmcompressor(checkpoint: Path, config: QuantConfig, calibration: torch.Tensor, workdir: str):
    """llm-compressor's GPTQModifier (sequential pipeline): the quantized model and the seconds `oneshot` took."""
    from compressed_tensors.quantization import QuantizationScheme
    from llmcompressor import oneshot
    from llmcompressor.modifiers.gptq import GPTQModifier
    from torch.utils.data import DataLoader

    if config.act_order and config.group_size > 0 and not config.static_groups:
        raise ValueError("llm-compressor's GPTQ orders columns only with static groups (actorder='weight')")
    weights = llmcompressor_weights(config)
    model = AutoModelForCausalLM.from_pretrained(checkpoint).eval()
    linears = _matrices(model)
    recipe = GPTQModifier(  # targets: exactly the Linears ours quantizes
        config_groups={"weights": QuantizationScheme(targets=list(linears), weights=weights)},
        actorder="weight" if config.act_order else None,  # its default is "static", even when not asked
        dampening_frac=config.damp,
        block_size=config.block_size,
    )
    batches = DataLoader([{"input_ids": row, "attention_mask": torch.ones_like(row)} for row in calibration], 8)
    started = time.perf_counter()
    oneshot(
        model=model, dataset=batches, recipe=recipe, pipeline="sequential", num_calibration_samples=len(calibration)
    )
    seconds = time.perf_counter() - started
    return _fp32_copy(checkpoint, lambda name: linears[name].read()), seconds


def _matrices(model: torch.nn.Module) -> dict[str, WeightMatrix]:
    """The matrices ours quantizes (every Linear of the demo's GPT-NeoX but the head), by module name."""
    return {weight.name: weight for weight in quantizable_weights(model, EXCLUDE)}


def _fp32_copy(checkpoint: Path, weight_of: Callable[[str], torch.Tensor]) -> torch.nn.Module:
    """A fresh float32 copy of the checkpoint with each quantized matrix from `weight_of(name)`."""
    model = AutoModelForCausalLM.from_pretrained(checkpoint).eval()
    with torch.no_grad():
        for name, weight in _matrices(model).items():
            weight.write(weight_of(name))
    return model


def max_weight_difference(a: torch.nn.Module, b: torch.nn.Module) -> float:
    """The largest |Δw| between the two models' quantized matrices."""
    theirs = _matrices(b)
    return max((mine.read() - theirs[name].read()).abs().max().item() for name, mine in _matrices(a).items())


@dataclass(frozen=True)
class Peer:
    """A maintained GPTQ, the grid options on which it matches ours, and where its table goes."""

    label: str
    package: str
    quantize: Callable
    static_groups: bool
    sequential: tuple[str, ...]  # our modes the peer also has
    out: str


PEERS = {
    "gptqmodel": Peer(
        "GPTQModel",
        "gptqmodel",
        gptqmodel,
        static_groups=False,
        sequential=("block", "layer"),
        out="reports/bench/gptq.md",
    ),
    "llmcompressor": Peer(
        "llm-compressor",
        "llmcompressor",
        llmcompressor,
        static_groups=True,
        sequential=("block",),
        out="reports/bench/gptq_llmcompressor.md",
    ),
}


def _config(bits: int, group: int, peer: Peer, sequential: str) -> QuantConfig:
    options = {"act_order": True, "static_groups": peer.static_groups, "sequential": sequential}
    return QuantConfig(method="gptq", bits=bits, group_size=group, options=options)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peer", choices=PEERS, default="gptqmodel")
    parser.add_argument("--checkpoints", nargs="*", default=CHECKPOINTS)
    parser.add_argument("--out", help="Markdown table (default: the peer's file under reports/bench/)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads; 1 keeps wall times steady when other processes share the cores",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    peer = PEERS[args.peer]
    lines = [
        f"# Our GPTQ beside {peer.label} {version(peer.package)} ({time.strftime('%Y-%m-%d')}, {platform.machine()}, "
        f"{os.cpu_count()} CPUs; torch {torch.__version__}, transformers {version('transformers')})",
        "",
        f"Demo-ladder checkpoints, {CALIBRATION[0]} calibration windows of {CALIBRATION[1]} tokens (stdlib-python "
        f"train), {EVAL_TOKENS:,} eval tokens in windows of {EVAL_LEN} (validation); "
        f"act_order=True, static_groups={peer.static_groups}, symmetric, damp 0.01, block 128, float32, "
        f"{args.threads} torch thread(s); "
        "δ = mean paired loss difference (nats/token) with its 95% bootstrap CI over windows; s = quantization "
        "wall time; max abs Δw = the largest difference between the two quantized weights.",
        "",
        "Ours batched (sequential: none only, which the peer lacks): the checkpoint's four configs from one "
        "calibration pass and one solve per matrix, as a study runs them; the first config's call solves all "
        "four, the others take their kept weights; max abs Δw compares its weights with ours alone. Under block "
        "or layer sequential each config's Hessians after the first block come from its own quantized blocks, so "
        "configs cannot share a solve there (—).",
        "",
        "| checkpoint | sequential | bits | group | ours δ [95% CI] | ours s | ours batched s | "
        f"{peer.label} δ [95% CI] | {peer.label} s | max abs Δw |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory() as workdir:
        for name in args.checkpoints:
            checkpoint = LADDER / name
            tokenizer = AutoTokenizer.from_pretrained(checkpoint)
            stream = token_stream(tokenizer, load_corpus("stdlib-python", "validation"))
            windows = make_windows(stream, EVAL_LEN, EVAL_TOKENS)
            calibration = calibration_tokens(tokenizer, "stdlib-python", "train", *CALIBRATION, 0)
            fp = loss_metrics(window_losses(AutoModelForCausalLM.from_pretrained(checkpoint).eval(), windows))
            grids = list(itertools.product((3, 4), (-1, 32)))
            batched = [_config(bits, group, peer, "none") for bits, group in grids]
            cache: dict = {}
            for sequential, (bits, group) in itertools.product((*peer.sequential, "none"), grids):
                config = _config(bits, group, peer, sequential)
                second = (
                    (ours, {"cache": cache, "share_with": batched}) if sequential == "none" else (peer.quantize, {})
                )
                cells, models = [], []
                for run, sharing in ((ours, {}), second):
                    model, seconds = run(checkpoint, config, calibration, workdir, **sharing)
                    loss = paired_metrics(fp, loss_metrics(window_losses(model, windows)))[0]
                    cells += [f"{loss.delta:.4f} [{loss.ci_low:.4f}, {loss.ci_high:.4f}]", f"{seconds:.2f}"]
                    models.append(model)
                if sequential == "none":  # ours δ, ours s, batched s; the peer has no such mode
                    cells = [*cells[:2], cells[3], "n/a", "n/a"]
                else:
                    cells = [*cells[:2], "—", *cells[2:]]
                cells.append(f"{max_weight_difference(*models):.1e}")
                lines.append(f"| {name} | {sequential} | {bits} | {group} | " + " | ".join(cells) + " |")
                print(lines[-1], flush=True)
    out = Path(args.out or peer.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
