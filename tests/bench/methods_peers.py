"""Benchmark: our AWQ and Hadamard rotations beside llm-compressor's AWQModifier and QuIPModifier on demo
checkpoints (`make bench-awq` → reports/bench/awq.md, `make bench-rotation` → reports/bench/rotation.md).

Same checkpoint, calibration tokens (128 windows of 128, stdlib-python train, seed 0), integer grid (symmetric,
per channel or groups of 32; of 8 on the demo Llama, whose MLP widths 88 and 176 llm-compressor cannot split
into groups of 32 or 16) and evaluation windows (65,536 tokens of stdlib-python validation), float32.
Each quantized model is scored as a plain transformers model: llm-compressor's fake-quantized weights (and, for
QuIP, its rotation folded back: Q(W·Hᵀ/√n)·H/√n) and every other parameter it left (AWQ divides the norms'
weights by its scales) are copied into a float32 copy of the checkpoint.

- AWQ: theirs is `AWQModifier(duo_scaling=True, n_grid=20)` then RTN (`QuantizationModifier`). Ours "matched"
  runs the same candidates (the unscaled weights and α = i/18, duo) without clipping, which llm-compressor does
  not do, and scores candidates as theirs does, by the output of the module holding the set (self_attn for
  q/k/v, the MLP for gate/up); ours "default" is `method: awq` as a study runs it (clipping on); ours
  "objective outputs" scores by the set's own outputs from the Hessian (`objective: outputs`); ours "all
  scaled" scales the matrices no op before can absorb too (`unfoldable: scale`); ours "fp inputs" takes every
  matrix's statistics from one pass over the full-precision model (`sequential: none`), as theirs does. Both
  scale the same matrices: their Llama mappings skip v_proj → o_proj under grouped-query attention, and our
  fold test finds no fold for o_proj there; GPT-NeoX has no mapping of theirs, so we give them the two
  norm → input mappings our fold test finds. Known difference: their activations are full precision, ours by
  default come from the quantized blocks before (the "fp inputs" columns remove that difference).
- Rotation: theirs is `QuIPModifier(rotations=["v"], transform_type="random-hadamard")` then RTN or GPTQ
  (`actorder="weight"`: our act_order + static_groups). The two draw different random rotations (theirs a
  Hadamard of the width's known order times a Sylvester one, ours a Sylvester Hadamard times a random
  orthogonal of the odd factor), so the weights differ by construction; what must agree is δ, up to what
  another draw of the rotation moves it: the last column pairs ours under `rotation_seed: 1` with ours under
  seed 0, the spread one draw gives.

δ = mean paired loss difference to full precision (nats/token) with its 95% bootstrap CI over windows;
"theirs − ours" pairs the two quantized models window by window. Each peer runs in the throwaway venv its make
target builds; neither is a project dependency.
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import time
from importlib.metadata import version
from pathlib import Path

import torch
from gptq_peers import llmcompressor_weights, max_weight_difference
from transformers import AutoModelForCausalLM, AutoTokenizer

from ptq_eval.corpus import load_corpus, token_stream
from ptq_eval.evals.paired import paired_metrics
from ptq_eval.evals.perplexity import loss_metrics, window_losses
from ptq_eval.evals.windows import make_windows
from ptq_eval.quant import QuantConfig, quantizable_weights, quantize
from ptq_eval.quant.calibration import calibration_tokens
from ptq_eval.quant.folding import fold_targets

CHECKPOINTS = ["demo-llama/n23k/tpp320", "demo-llama/n92k/tpp80", "demo-llama/n92k/tpp320", "demo/n100k/tpp320"]
EXCLUDE = ("lm_head", "embed_out")
CALIBRATION = (128, 128)
GROUPS = (32, 16, 8, 4)  # the largest that divides every width: llm-compressor's observer cannot hold a partial group
EVAL_LEN, EVAL_TOKENS = 128, 65_536
# what llm-compressor's AWQ scales (its mappings; v_proj → o_proj is skipped under grouped-query attention)
THEIR_MAPPINGS = {
    "llama": None,  # its registry's Llama mappings
    "gpt_neox": [
        ("re:.*input_layernorm$", ["re:.*query_key_value$"]),
        ("re:.*post_attention_layernorm$", ["re:.*dense_h_to_4h$"]),
    ],  # fmt: skip
}


def _scheme(config: QuantConfig):
    from compressed_tensors.quantization import QuantizationScheme

    return {"weights": QuantizationScheme(targets=["Linear"], weights=llmcompressor_weights(config))}


def theirs(checkpoint: Path, config: QuantConfig, calibration: torch.Tensor, recipe: list):
    """llm-compressor's oneshot with these modifiers, then RTN or GPTQ onto the config's grid: a plain float32
    model with its fake-quantized weights (a QuIP rotation folded back) and the seconds `oneshot` took."""
    from compressed_tensors.quantization.lifecycle.forward import fake_quantize
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import GPTQModifier, QuantizationModifier
    from llmcompressor.pipelines.cache import IntermediatesCache
    from torch.utils.data import DataLoader

    IntermediatesCache.pin_memory = lambda self, *args, **kwargs: None  # AWQ pins memory, which a CPU cannot
    common = {"config_groups": _scheme(config), "ignore": ["lm_head", "embed_out"], "bypass_divisibility_checks": True}
    final = (
        GPTQModifier(**common, actorder="weight", dampening_frac=config.damp, block_size=config.block_size)
        if config.method == "gptq"
        else QuantizationModifier(**common)
    )
    model = AutoModelForCausalLM.from_pretrained(checkpoint).eval()
    batches = DataLoader([{"input_ids": row, "attention_mask": torch.ones_like(row)} for row in calibration], 8)
    started = time.perf_counter()
    oneshot(model=model, dataset=batches, recipe=[*recipe, final], pipeline="sequential",
            num_calibration_samples=len(calibration))  # fmt: skip
    seconds = time.perf_counter() - started
    modules = dict(model.named_modules())

    def plain(name: str) -> torch.Tensor:
        module = modules[name]
        weight = module.weight.data
        if getattr(module, "weight_scale", None) is not None:
            scheme = module.quantization_scheme.weights
            weight = fake_quantize(weight, module.weight_scale, module.weight_zero_point, scheme)
        if hasattr(module, "v_input"):
            rotation = module.v_input.weight.to(torch.float64)
            weight = (weight.double() @ rotation.T / rotation.shape[0] ** 0.5).float()
        return weight

    return _their_state(checkpoint, model, plain), seconds


@torch.no_grad()
def _their_state(checkpoint: Path, model: torch.nn.Module, plain) -> torch.nn.Module:
    """A float32 copy of the checkpoint holding every parameter of their model: its quantized matrices as
    `plain(name)` gives them, and the rest as they left it (AWQ divides norm weights by its scales)."""
    copy = AutoModelForCausalLM.from_pretrained(checkpoint).eval()
    theirs_by_name = dict(model.named_modules())
    matrices = {weight.name for weight in quantizable_weights(copy, EXCLUDE)}
    for name, module in copy.named_modules():
        for parameter_name, parameter in module.named_parameters(recurse=False):
            quantized = parameter_name == "weight" and name in matrices
            value = plain(name) if quantized else getattr(theirs_by_name[name], parameter_name)
            parameter.copy_(value.reshape(parameter.shape) if not quantized else value)
    return copy


def ours(checkpoint: Path, config: QuantConfig, calibration: torch.Tensor):
    """Our method on the checkpoint: the quantized model and the seconds it took."""
    model = AutoModelForCausalLM.from_pretrained(checkpoint).eval()
    started = time.perf_counter()
    quantize(model, config, EXCLUDE, calibration)
    return model, time.perf_counter() - started


@torch.no_grad()
def effective_difference(checkpoint: Path, theirs_model, ours_model, calibration: torch.Tensor) -> float:
    """The largest |Δw| between their and our AWQ weights as the model computes with them: theirs times the
    scales they folded into a norm (their norm weight over the original), for the matrices whose scales fold into
    a norm or nowhere (a scale folded into another quantized matrix cannot be read back exactly)."""
    original = AutoModelForCausalLM.from_pretrained(checkpoint).eval()
    weights = quantizable_weights(original, EXCLUDE)
    targets = fold_targets(original, weights, calibration)
    modules = {name: dict(model.named_modules()) for name, model in (("theirs", theirs_model), ("orig", original))}
    mine = {weight.name: weight for weight in quantizable_weights(ours_model, EXCLUDE)}
    largest = 0.0
    for weight in quantizable_weights(theirs_model, EXCLUDE):
        target = targets[weight.name]
        if target is not None and target not in {name for name in modules["orig"] if "norm" in name}:
            continue
        effective = weight.read().double()
        if target is not None:
            effective = effective * (
                modules["theirs"][target].weight.double() / modules["orig"][target].weight.double()
            )
        largest = max(largest, (effective - mine[weight.name].read().double()).abs().max().item())
    return largest


def _cell(metric) -> str:
    return f"{metric.delta:.4f} [{metric.ci_low:.4f}, {metric.ci_high:.4f}]"


class Scorer:
    """One checkpoint's evaluation windows and full-precision losses; δ of a model, and two models paired."""

    def __init__(self, checkpoint: Path):
        tokenizer = AutoTokenizer.from_pretrained(checkpoint)
        stream = token_stream(tokenizer, load_corpus("stdlib-python", "validation"))
        self.windows = make_windows(stream, EVAL_LEN, EVAL_TOKENS)
        self.calibration = calibration_tokens(tokenizer, "stdlib-python", "train", *CALIBRATION, 0)
        model = AutoModelForCausalLM.from_pretrained(checkpoint).eval()
        self.fp = self.losses(model)
        widths = {weight.shape[1] for weight in quantizable_weights(model, EXCLUDE)}
        self.group = next(size for size in GROUPS if all(width % size == 0 for width in widths))

    def losses(self, model: torch.nn.Module):
        return loss_metrics(window_losses(model, self.windows))

    def delta(self, losses, against=None):
        return paired_metrics(self.fp if against is None else against, losses)[0]


def awq_rows(name: str, checkpoint: Path, scorer: Scorer, family: str) -> list[str]:
    from llmcompressor.modifiers.transform import AWQModifier
    from llmcompressor.modifiers.transform.awq import AWQMapping

    mappings = THEIR_MAPPINGS[family]
    kwargs = {} if mappings is None else {"mappings": [AWQMapping(smooth, balance) for smooth, balance in mappings]}
    rows = []
    for bits, group in itertools.product((3, 4), (-1, scorer.group)):
        grid = {"bits": bits, "group_size": group}
        matched = QuantConfig(method="awq", **grid, options={"grid": 19, "clip": False})
        rtn = QuantConfig(method="rtn", **grid)
        their_rtn, _ = theirs(checkpoint, rtn, scorer.calibration, [])
        our_rtn, _ = ours(checkpoint, rtn, scorer.calibration)
        their_recipe = [AWQModifier(duo_scaling=True, n_grid=20, **kwargs)]
        their_awq, their_s = theirs(checkpoint, matched, scorer.calibration, their_recipe)
        our_awq, our_s = ours(checkpoint, matched, scorer.calibration)
        everything = QuantConfig(method="awq", **grid, options={"grid": 19, "clip": False, "unfoldable": "scale"})
        our_all, _ = ours(checkpoint, everything, scorer.calibration)
        hessian = QuantConfig(method="awq", **grid, options={"grid": 19, "clip": False, "objective": "outputs"})
        our_hessian, _ = ours(checkpoint, hessian, scorer.calibration)
        full = QuantConfig(method="awq", **grid, options={"grid": 19, "clip": False, "sequential": "none"})
        our_full, _ = ours(checkpoint, full, scorer.calibration)
        default, _ = ours(checkpoint, QuantConfig(method="awq", **grid), scorer.calibration)
        models = {"rtn": our_rtn, "theirs": their_awq, "ours": our_awq, "all": our_all, "default": default,
                  "full": our_full, "hessian": our_hessian}  # fmt: skip
        losses = {key: scorer.losses(model) for key, model in models.items()}
        cells = [
            _cell(scorer.delta(losses["rtn"])),
            f"{max_weight_difference(their_rtn, our_rtn):.1e}",
            _cell(scorer.delta(losses["ours"])),
            f"{our_s:.2f}",
            _cell(scorer.delta(losses["theirs"])),
            f"{their_s:.2f}",
            _cell(scorer.delta(losses["theirs"], losses["ours"])),
            _cell(scorer.delta(losses["full"])),
            _cell(scorer.delta(losses["theirs"], losses["full"])),
            f"{effective_difference(checkpoint, their_awq, our_full, scorer.calibration):.1e}",
            _cell(scorer.delta(losses["default"])),
            _cell(scorer.delta(losses["hessian"])),
            _cell(scorer.delta(losses["all"])),
        ]
        rows.append(f"| {name} | {bits} | {group} | " + " | ".join(cells) + " |")
        print(rows[-1], flush=True)
    return rows


def rotation_rows(name: str, checkpoint: Path, scorer: Scorer, family: str) -> list[str]:
    from llmcompressor.modifiers.transform import QuIPModifier

    rows = []
    for method, bits, group in itertools.product(("rtn", "gptq"), (3, 4), (-1, scorer.group)):
        options = {"act_order": True, "static_groups": True} if method == "gptq" else {}
        plain = QuantConfig(method=method, bits=bits, group_size=group, options=options)
        rotated = QuantConfig(method=method, bits=bits, group_size=group, options=options | {"rotation": "hadamard"})
        our_plain, _ = ours(checkpoint, plain, scorer.calibration)
        our_rotated, our_s = ours(checkpoint, rotated, scorer.calibration)
        reseeded = QuantConfig(method=method, bits=bits, group_size=group,
                               options=options | {"rotation": "hadamard", "rotation_seed": 1})  # fmt: skip
        our_reseeded, _ = ours(checkpoint, reseeded, scorer.calibration)
        recipe = [QuIPModifier(rotations=["v"], transform_type="random-hadamard")]
        their_rotated, their_s = theirs(checkpoint, plain, scorer.calibration, recipe)
        models = {"plain": our_plain, "ours": our_rotated, "theirs": their_rotated, "reseeded": our_reseeded}
        losses = {key: scorer.losses(model) for key, model in models.items()}
        cells = [
            _cell(scorer.delta(losses["plain"])),
            _cell(scorer.delta(losses["ours"])),
            f"{our_s:.2f}",
            _cell(scorer.delta(losses["theirs"])),
            f"{their_s:.2f}",
            _cell(scorer.delta(losses["theirs"], losses["ours"])),
            _cell(scorer.delta(losses["reseeded"], losses["ours"])),
        ]
        rows.append(f"| {name} | {method} | {bits} | {group} | " + " | ".join(cells) + " |")
        print(rows[-1], flush=True)
    return rows


HEADERS = {
    "awq": (
        "| checkpoint | bits | group | RTN δ | RTN max abs Δw (theirs vs ours) | ours matched δ | ours s | "
        "llm-compressor δ | llm-compressor s | theirs − ours matched | ours matched, fp inputs δ | theirs − ours "
        "fp inputs | AWQ max abs Δw, theirs vs ours fp inputs (effective; norm-fed and unscaled matrices) | "
        "ours default δ | ours, objective outputs δ | ours all scaled δ |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ),
    "rotation": (
        "| checkpoint | method | bits | group | ours unrotated δ | ours + H δ | ours s | llm-compressor QuIP δ | "
        "llm-compressor s | theirs − ours (+ H) | ours seed 1 − seed 0 (+ H) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ),
}
TITLES = {"awq": "Our AWQ beside llm-compressor's AWQModifier", "rotation": "Our Hadamard rotation beside "
          "llm-compressor's QuIPModifier"}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study", choices=HEADERS)
    parser.add_argument(
        "--checkpoints", nargs="*", default=CHECKPOINTS, help="LADDER/SIZE/REVISION under tasks/ladders"
    )
    parser.add_argument("--out", help="Markdown table (default: reports/bench/STUDY.md)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steady wall times)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lines = [
        f"# {TITLES[args.study]} ({time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} CPUs; "
        f"torch {torch.__version__}, transformers {version('transformers')}, llmcompressor {version('llmcompressor')})",
        "",
        __doc__.split("\n\n", 1)[1].strip(),
        "",
        f"Command: `make bench-{args.study}`; {args.threads} torch thread(s).",
        "",
        *HEADERS[args.study],
    ]
    rows = awq_rows if args.study == "awq" else rotation_rows
    for name in args.checkpoints:
        checkpoint = Path("tasks/ladders") / name
        family = AutoModelForCausalLM.from_pretrained(checkpoint).config.model_type
        lines += rows(name, checkpoint, Scorer(checkpoint), family)
    out = Path(args.out or f"reports/bench/{args.study}.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
