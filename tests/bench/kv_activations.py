"""Benchmark (`make bench-kv`): KV-cache and activation rounding, against this script's own arithmetic and against
torchao -> reports/bench/kv_activations.md.

1. KV cache, layer by layer. Each model runs through ptq-eval's rounding (`rounding_at_run_time` with
   `QuantConfig(method="fp", kv_cache=...)`) with `use_cache=True`, in three passes (a prefill, a chunk, one
   decoded token) that read on from the cache. A forward pre-hook keeps each attention module's input (hidden
   states, RoPE's cos and sin) of each pass; from those inputs this script computes the keys and values after
   RoPE itself (the module's own q/k/v projections and the model's own `apply_rotary_pos_emb`, nothing of
   ptq-eval), rounds them with its own from-scratch arithmetic, and compares them with what the cache holds
   (`output.cache.layers[i].keys` / `.values`): torch.equal is the target. Layer 0's input does not depend on
   any rounding; later layers' inputs are the rounded run's own, so every layer's rounding is checked. The
   same extraction without rounding is first checked to give the full-precision cache bit for bit.
   The arithmetic (the convention of `ptq_eval/quant/grid.py`, re-derived here): integer grids have levels
   0..2^b − 1; asymmetric ones span [min(x, 0), max(x, 0)] (zero included), scale = (hi − lo) / (2^b − 1),
   zero = round(−lo / scale); symmetric ones scale = 2·max|x| / (2^b − 1), zero = 2^(b−1); q = clamp(round(x /
   scale) + zero, 0, 2^b − 1), x̂ = (q − zero)·scale (a range of width 0 is taken as [−1, 1]). Dynamic: one grid
   per token and head; static (`per: head`, `per: tensor`): the min and max over the calibration windows
   (the study's: stdlib train split, 32 windows of 128, seed 0, batches of 8, full precision), computed here
   from this script's own keys and values. fp8 e4m3 per tensor: scale = amax / 448, x̂ = scale ·
   float8_e4m3fn(clamp(x / scale, ±448)) by torch's own cast. Models: the GPT-NeoX demo checkpoints
   n25k/tpp320 and n100k/tpp320, the Llama demo checkpoint n23k/tpp320 (GQA, 4 query heads to 2 KV heads),
   a random Llama from `LlamaConfig` (GQA 8 to 2, head_dim 16, seed 0, random tokens), and a random Mistral of
   the same shape with a sliding window of 32 (its cache keeps the last 31 positions, views of each pass's
   keys: the in-place rounding must reach them).
2. KV cache, whole model: mean loss (nats per token) on windows of 128 of the stdlib validation split, in
   full precision, under ptq-eval's KV rounding, and with this script's rounding applied to every layer by
   replacing each attention module's forward with its own (the module's projections, the model's RoPE
   function, its own rounding, transformers' sdpa attention function, the output projection): no part of
   ptq-eval's wrapper or rounding code. δ = quantized − full precision for both, and their difference.
3. torchao agreement (only where `import torchao` works: the throwaway venv of `make bench-kv`): on the GPT-NeoX
   and Llama demo checkpoints, δ loss of torchao's `Int8DynamicActivationInt8WeightConfig` (`quantize_`, CPU,
   the same matrices ptq-eval quantizes: the output head kept) beside ptq-eval's W8A8 simulation (RTN int8 per
   channel, symmetric; int8 per-token symmetric activations, dynamic), on the same windows, each δ with a
   paired bootstrap CI and the difference of the two δ's with its own paired CI (ptq-eval's loss minus
   torchao's, windows resampled in pairs). Their grids are compared value for value first: every quantized
   weight matrix, and every quantized matrix's input on 8 windows; and a model with torchao's de-quantized
   values multiplied in float32 splits the difference of the δ's into grid ties and integer matmul.
4. llama.cpp's KV types (`kv_cache: q8_0`, `q4_0`, blocks of 32 along each head vector) on heads of 16 and 8
   (the demo ladders) and of 32 (a random Llama): is the cache rounded, or only cast to float16? (A finding:
   the narrow heads are only cast; the report says why.)
"""

from __future__ import annotations

import argparse
import copy
import platform
import sys
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
)
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import logging as hf_logging

from ptq_eval.corpus import load_corpus, token_stream
from ptq_eval.errors import UserError
from ptq_eval.evals.paired import paired_metrics
from ptq_eval.evals.perplexity import loss_metrics, window_losses
from ptq_eval.evals.windows import make_windows
from ptq_eval.quant import QuantConfig, quantizable_weights, quantize
from ptq_eval.quant.calibration import calibration_tokens
from ptq_eval.quant.precision import precisions
from ptq_eval.quant.run_time import rounding_at_run_time

NEOX_SMALL, NEOX_LARGE = "tasks/ladders/demo/n25k/tpp320", "tasks/ladders/demo/n100k/tpp320"
LLAMA = "tasks/ladders/demo-llama/n23k/tpp320"
SEQ_LEN = 128
CALIBRATION = {"corpus": "stdlib-python", "split": "train", "samples": 32, "seq_len": SEQ_LEN, "seed": 0}
CALIBRATION_BATCH = 8  # as ptq-eval's range pass batches them (the same matmul shapes: the same ranges)
PASSES = (100, 27, 1)  # positions each pass adds (prefill, a chunk, one decoded token)
LAYER_PRECISIONS = {  # what part 1 checks: label -> the kv_cache a study would write
    "int4 asym, per token": "int4",
    "int8 asym, per token": "int8",
    "int3 asym, per token": {"format": "int", "bits": 3, "symmetric": False},
    "int4 sym, per token": {"format": "int", "bits": 4},
    "int8 asym, per head (static)": {"format": "int", "bits": 8, "per": "head", "symmetric": False},
    "int4 sym, per tensor (static)": {"format": "int", "bits": 4, "per": "tensor"},
    "fp8 e4m3, per tensor (static)": "fp8",
}
MODEL_PRECISIONS = ("int4 asym, per token", "int3 asym, per token", "int8 asym, per token",
                    "fp8 e4m3, per tensor (static)")  # fmt: skip
E4M3_MAX = 448.0
SLIDING_WINDOW = 32


# ---------------------------------------------------------------------------------------------- the models


@dataclass
class Subject:
    label: str
    model: torch.nn.Module
    tokenizer: object | None  # None: random weights, random tokens

    @property
    def family(self) -> str:
        return self.model.config.model_type

    def attention_modules(self) -> list[torch.nn.Module]:
        return [m for m in self.model.modules() if type(m).__name__.endswith("Attention")]


def checkpoint(path: str, label: str) -> Subject:
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="sdpa").eval()
    return Subject(label, model, AutoTokenizer.from_pretrained(path))


def random_llama(heads: int = 8, head_dim: int = 16) -> Subject:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=1024, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=heads, num_key_value_heads=2, head_dim=head_dim,
                         max_position_embeddings=256, attn_implementation="sdpa")  # fmt: skip
    label = f"random Llama (GQA {heads}→2, head_dim {head_dim})"
    return Subject(label, LlamaForCausalLM(config).eval(), None)


def random_mistral() -> Subject:
    """Sliding-window attention: its cache keeps only the last window − 1 positions (views of each pass's keys)."""
    torch.manual_seed(0)
    config = MistralConfig(vocab_size=1024, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                           num_attention_heads=8, num_key_value_heads=2, head_dim=16, max_position_embeddings=256,
                           sliding_window=SLIDING_WINDOW, attn_implementation="sdpa")  # fmt: skip
    label = f"random Mistral (GQA 8→2, sliding window {SLIDING_WINDOW})"
    return Subject(label, MistralForCausalLM(config).eval(), None)


_STREAMS: dict[str, torch.Tensor] = {}


def text(subject: Subject, split: str) -> torch.Tensor:
    """The split's token stream (random tokens for a random model)."""
    if subject.tokenizer is None:
        generator = torch.Generator().manual_seed(1 if split == "validation" else 2)
        return torch.randint(0, subject.model.config.vocab_size, (200_000,), generator=generator)
    key = f"{subject.tokenizer.name_or_path}:{split}"
    if key not in _STREAMS:
        _STREAMS[key] = token_stream(subject.tokenizer, load_corpus("stdlib-python", split)).long()
    return _STREAMS[key]


def calibration(subject: Subject) -> torch.Tensor:
    """The study's calibration windows (ptq-eval's own sampler: data, not rounding)."""
    if subject.tokenizer is None:
        generator = torch.Generator().manual_seed(CALIBRATION["seed"])
        return torch.randint(0, subject.model.config.vocab_size, (CALIBRATION["samples"], SEQ_LEN),
                             generator=generator)  # fmt: skip
    c = CALIBRATION
    return calibration_tokens(subject.tokenizer, c["corpus"], c["split"], c["samples"], c["seq_len"], c["seed"])


# ------------------------------------------------------------------- keys and values after RoPE, independently


def _rope(module: torch.nn.Module):
    return sys.modules[type(module).__module__].apply_rotary_pos_emb


def qkv(family: str, module: torch.nn.Module, hidden: torch.Tensor, position_embeddings) -> tuple:
    """Query, keys and values [batch, heads, positions, head_dim] after RoPE, from the module's own projections
    and the model's own RoPE function."""
    cos, sin = position_embeddings
    if family == "gpt_neox":
        shape = (*hidden.shape[:-1], -1, 3 * module.head_size)
        query, key, value = module.query_key_value(hidden).view(shape).transpose(1, 2).chunk(3, dim=-1)
    elif family in ("llama", "mistral"):
        shape = (*hidden.shape[:-1], -1, module.head_dim)
        projections = (module.q_proj, module.k_proj, module.v_proj)
        query, key, value = (p(hidden).view(shape).transpose(1, 2) for p in projections)
    else:
        raise ValueError(f"no extraction for {family}")
    query, key = _rope(module)(query, key, cos, sin)
    return query, key, value


def output_projection(family: str, module: torch.nn.Module) -> torch.nn.Module:
    return module.dense if family == "gpt_neox" else module.o_proj


class Inputs:
    """Forward pre-hooks keeping each attention module's input (hidden states, cos and sin) of every pass."""

    def __init__(self, modules: list[torch.nn.Module]):
        self.passes: list[list[tuple]] = [[] for _ in modules]
        self.handles = [m.register_forward_pre_hook(self._hook(i), with_kwargs=True) for i, m in enumerate(modules)]

    def _hook(self, index: int):
        def keep(module, args, kwargs):
            hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
            cos, sin = kwargs["position_embeddings"]
            self.passes[index].append((hidden.clone(), (cos.clone(), sin.clone())))

        return keep

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


@torch.inference_mode()
def own_keys_values(subject: Subject, inputs: Inputs) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer: keys and values of every kept pass, joined along positions."""
    found = []
    for module, passes in zip(subject.attention_modules(), inputs.passes, strict=True):
        parts = [qkv(subject.family, module, hidden, pe)[1:] for hidden, pe in passes]
        found.append((torch.cat([k for k, _ in parts], dim=-2), torch.cat([v for _, v in parts], dim=-2)))
    return found


# ------------------------------------------------------------------------------- rounding, from scratch


@dataclass(frozen=True)
class Rounding:
    """This script's own rounding of keys or values [batch, heads, positions, head_dim]."""

    kind: str  # int | fp8
    bits: int
    symmetric: bool
    per: str  # token | head | tensor

    @staticmethod
    def of(written) -> Rounding:
        p = precisions("kv_cache", written)[0]
        assert not p.hadamard and p.group_size == -1, "this script rounds whole head vectors only"
        return Rounding("fp8" if p.format == "fp8_e4m3" else p.format, p.bits, p.symmetric, p.per)

    def range_of(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """min and max: per token and head [b, h, s, 1], per head [1, h, 1, 1], per tensor [] ."""
        if self.per == "token":
            return x.amin(-1, keepdim=True), x.amax(-1, keepdim=True)
        if self.per == "head":
            return x.amin(dim=(0, 2, 3), keepdim=True), x.amax(dim=(0, 2, 3), keepdim=True)
        return x.amin(), x.amax()

    def __call__(self, x: torch.Tensor, low: torch.Tensor | None = None, high: torch.Tensor | None = None):
        if low is None:
            low, high = self.range_of(x)
        x, low, high = x.float(), low.float(), high.float()
        if self.kind == "fp8":
            amax = torch.maximum(low.abs(), high.abs())
            amax = torch.where(amax == 0, torch.ones_like(amax), amax)
            scale = amax / E4M3_MAX
            return (x / scale).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn).float() * scale
        levels = 2**self.bits - 1
        low, high = low.clamp(max=0.0), high.clamp(min=0.0)  # the range always holds 0
        if self.symmetric:
            high = torch.maximum(high, -low)
            low = -high
        flat = high == low
        low, high = torch.where(flat, -1.0, low), torch.where(flat, 1.0, high)
        scale = (high - low) / levels
        zero = torch.full_like(scale, 2.0 ** (self.bits - 1)) if self.symmetric else torch.round(-low / scale)
        q = torch.clamp(torch.round(x / scale) + zero, 0, levels)
        return (q - zero) * scale

    def control(self, x: torch.Tensor, low: torch.Tensor | None = None, high: torch.Tensor | None = None):
        """A nearby convention, to show what the comparison resolves: asymmetric grids on [min, max] without
        0 (x̂ = lo + scale·q, as KIVI writes it); symmetric ones on ±(2^(b−1) − 1) steps of max|x| / (2^(b−1) −
        1) (the restricted range); fp8 per tensor scaled by the evaluated keys' own max instead of the
        calibrated one."""
        if self.kind == "fp8":
            return self(x, *self.range_of(x))
        if low is None:
            low, high = self.range_of(x)
        x, low, high = x.float(), low.float(), high.float()
        if self.symmetric:
            steps = 2 ** (self.bits - 1) - 1
            scale = torch.maximum(low.abs(), high.abs()) / steps
            scale = torch.where(scale == 0, torch.ones_like(scale), scale)
            return torch.clamp(torch.round(x / scale), -steps, steps) * scale
        levels = 2**self.bits - 1
        scale = (high - low) / levels
        scale = torch.where(scale == 0, torch.ones_like(scale), scale)
        return low + scale * torch.clamp(torch.round((x - low) / scale), 0, levels)


@torch.inference_mode()
def own_ranges(subject: Subject, rounding: Rounding, windows: torch.Tensor) -> list[list[torch.Tensor]] | None:
    """Static precisions: per layer [key low, key high, value low, value high] over the calibration windows, from
    this script's keys and values (a full-precision pass, batches of 8 as ptq-eval's range pass)."""
    if rounding.per == "token":
        return None
    inputs = Inputs(subject.attention_modules())
    try:
        for start in range(0, len(windows), CALIBRATION_BATCH):
            subject.model(input_ids=windows[start : start + CALIBRATION_BATCH], use_cache=False)
    finally:
        inputs.remove()
    ranges = []
    for module, passes in zip(subject.attention_modules(), inputs.passes, strict=True):
        seen = None
        for hidden, pe in passes:
            _, key, value = qkv(subject.family, module, hidden, pe)
            found = [*rounding.range_of(key), *rounding.range_of(value)]
            if seen is not None:  # lows by minimum, highs by maximum
                pairs = enumerate(zip(seen, found, strict=True))
                found = [(torch.minimum if i % 2 == 0 else torch.maximum)(a, b) for i, (a, b) in pairs]
            seen = found
        ranges.append(seen)
    return ranges


# ------------------------------------------------------------------------------------- 1. layer by layer


def kv_config(written) -> QuantConfig:
    """ptq-eval's config of the KV cache alone (method fp: the weights as they are; its bits the cache's)."""
    precision = precisions("kv_cache", written)[0]
    return QuantConfig(method="fp", bits=precision.bits, kv_cache=precision)


def _cache(output):
    return getattr(output, "cache", None) or output.past_key_values


@torch.inference_mode()
def run_passes(subject: Subject, tokens: torch.Tensor) -> tuple[object, Inputs]:
    """The passes of PASSES through the model, each reading on from the last one's cache; the attention inputs
    each pass gave."""
    inputs, cache, start = Inputs(subject.attention_modules()), None, 0
    try:
        for added in PASSES:
            output = subject.model(input_ids=tokens[:, start : start + added], cache=cache, use_cache=True)
            cache, start = _cache(output), start + added
    finally:
        inputs.remove()
    return cache, inputs


def layer_rows(subject: Subject, windows: int) -> list[dict]:
    stream = text(subject, "validation")
    tokens = make_windows(stream, sum(PASSES), windows * sum(PASSES))
    tokens = torch.stack([tokens.tokens[s : s + sum(PASSES)] for s in tokens.starts.tolist()])
    weights = quantizable_weights(subject.model)
    cache, inputs = run_passes(subject, tokens)  # full precision: the extraction itself
    own = own_keys_values(subject, inputs)
    extraction = all(
        torch.equal(layer.keys, k[..., -layer.keys.shape[-2] :, :])
        and torch.equal(layer.values, v[..., -layer.values.shape[-2] :, :])
        for layer, (k, v) in zip(cache.layers, own, strict=True)
    )
    kept = [layer.keys.shape[-2] for layer in cache.layers]
    rows, calibration_windows = [], calibration(subject)
    for label, written in LAYER_PRECISIONS.items():
        rounding = Rounding.of(written)
        ranges = own_ranges(subject, rounding, calibration_windows)
        config = kv_config(written)
        static = calibration_windows if config.needs_calibration else None
        with rounding_at_run_time(subject.model, config, weights, static):
            cache, inputs = run_passes(subject, tokens)
        own = own_keys_values(subject, inputs)
        equal, largest, differ, values, error, control = True, 0.0, 0, 0, 0.0, 0
        for index, (layer, (key, value)) in enumerate(zip(cache.layers, own, strict=True)):
            low = ranges[index] if ranges else [None] * 4
            for theirs, x, lo, hi in ((layer.keys, key, *low[:2]), (layer.values, value, *low[2:])):
                mine = rounding(x, lo, hi)[..., -theirs.shape[-2] :, :]  # a sliding window keeps the last ones
                nearby = rounding.control(x, lo, hi)[..., -theirs.shape[-2] :, :]
                equal &= torch.equal(theirs, mine)
                largest = max(largest, float((theirs - mine).abs().max()))
                differ, values = differ + int((theirs != mine).sum()), values + mine.numel()
                control += int((theirs != nearby).sum())
                error = max(error, float((rounding(x, lo, hi) - x).norm() / x.norm()))
        rows.append({"model": subject.label, "precision": label, "layers": len(own), "values": values,
                     "extraction": extraction, "equal": equal, "differ": differ, "max_abs": largest,
                     "rel_error": error, "control": control, "kept": kept})  # fmt: skip
    return rows


# -------------------------------------------------------------------------------------- 2. whole model


class OwnKV:
    """Every attention module's forward replaced by this script's: own keys, values and rounding, then
    transformers' sdpa attention function and the module's output projection (no cache: scoring passes)."""

    def __init__(self, subject: Subject, rounding: Rounding, ranges):
        self.subject, self.rounding, self.ranges = subject, rounding, ranges

    def _forward(self, index: int, module: torch.nn.Module):
        family = self.subject.family

        def forward(hidden_states, attention_mask=None, position_embeddings=None, layer_past=None, cache=None,
                    **kwargs):  # fmt: skip
            if layer_past is not None or cache is not None:
                raise RuntimeError("OwnKV scores without a cache")
            query, key, value = qkv(family, module, hidden_states, position_embeddings)
            low = self.ranges[index] if self.ranges else [None] * 4
            key, value = self.rounding(key, *low[:2]), self.rounding(value, *low[2:])
            attend = ALL_ATTENTION_FUNCTIONS["sdpa"]
            output, _ = attend(module, query, key, value, attention_mask, dropout=0.0, scaling=module.scaling, **kwargs)
            output = output.reshape(*hidden_states.shape[:-1], -1).contiguous()
            return output_projection(family, module)(output), None

        return forward

    def __enter__(self):
        for index, module in enumerate(self.subject.attention_modules()):
            module.forward = self._forward(index, module)

    def __exit__(self, *exc):
        for module in self.subject.attention_modules():
            del module.forward


def mean_loss(losses) -> float:
    return float(losses.sums.sum() / losses.counts.sum())


def model_rows(subject: Subject, tokens: int) -> list[dict]:
    windows = make_windows(text(subject, "validation"), SEQ_LEN, tokens)
    weights, calibration_windows = quantizable_weights(subject.model), calibration(subject)
    fp = window_losses(subject.model, windows)
    rows = []
    for label in MODEL_PRECISIONS:
        written = LAYER_PRECISIONS[label]
        config = kv_config(written)
        static = calibration_windows if config.needs_calibration else None
        with rounding_at_run_time(subject.model, config, weights, static):
            theirs = window_losses(subject.model, windows)
        rounding = Rounding.of(written)
        with OwnKV(subject, rounding, own_ranges(subject, rounding, calibration_windows)):
            mine = window_losses(subject.model, windows)
        paired = paired_metrics(loss_metrics(fp)[:1], loss_metrics(theirs)[:1])[0]
        rows.append({"model": subject.label, "precision": label, "tokens": fp.tokens, "fp": mean_loss(fp),
                     "delta_theirs": mean_loss(theirs) - mean_loss(fp), "ci": (paired.ci_low, paired.ci_high),
                     "delta_mine": mean_loss(mine) - mean_loss(fp),
                     "window_gap": float(np.abs(theirs.sums - mine.sums).max()),
                     "equal": bool(np.array_equal(theirs.sums, mine.sums))})  # fmt: skip
    return rows


# ----------------------------------------------------------------------------------------- 3. torchao


def torchao_rows(subject: Subject, tokens: int) -> dict:
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
    from torchao.quantization.granularity import PerRow
    from torchao.quantization.quantize_.workflows.int8.int8_tensor import Int8Tensor

    from ptq_eval.quant.precision import round_per_token

    windows = make_windows(text(subject, "validation"), SEQ_LEN, tokens)
    fp = window_losses(subject.model, windows)
    activations = precisions("activations", "int8")[0]
    config = QuantConfig(method="rtn", bits=8, group_size=-1, activations=activations)

    ours = copy.deepcopy(subject.model)
    quantize(ours, config)
    our_weights = quantizable_weights(ours)
    with rounding_at_run_time(ours, config, our_weights, None):
        ours_losses = window_losses(ours, windows)

    names = {w.name for w in quantizable_weights(subject.model)}
    theirs = copy.deepcopy(subject.model)
    quantize_(theirs, Int8DynamicActivationInt8WeightConfig(set_inductor_config=False),
              filter_fn=lambda module, fqn: isinstance(module, torch.nn.Linear) and fqn in names)  # fmt: skip
    modules = dict(theirs.named_modules())
    assert all(isinstance(modules[name].weight, Int8Tensor) for name in names), "torchao left a matrix out"
    theirs_losses = window_losses(theirs, windows)

    # the grids, value for value: every weight matrix; every quantized matrix's input on 8 windows
    weight = {"values": 0, "differ": 0, "ties": 0, "steps": 0.0, "scales_differ": 0, "rows": 0, "levels": [0, 0]}
    originals = dict(subject.model.named_modules())
    for w in our_weights:
        stored = modules[w.name].weight
        original = originals[w.name].weight.detach().float()
        ours_w, theirs_w = w.read().detach().float(), stored.dequantize(torch.float32)
        amax = original.abs().amax(dim=1, keepdim=True)
        scale = amax / 127.5  # the grid both state: max|w| / 127.5
        differ = ours_w != theirs_w
        weight["values"] += ours_w.numel()
        weight["differ"] += int(differ.sum())
        weight["ties"] += int((differ & (original == -amax)).sum())
        weight["steps"] = max(weight["steps"], float(((ours_w - theirs_w).abs() / scale).max()))
        weight["scales_differ"] += int((stored.scale.reshape(-1, 1) != scale).sum())
        weight["rows"] += scale.numel()
        low, high = weight["levels"]
        weight["levels"] = [min(low, int(stored.qdata.min())), max(high, int(stored.qdata.max()))]
    seen: list[torch.Tensor] = []
    probes = [originals[name] for name in names]
    handles = [m.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone())) for m in probes]
    with torch.inference_mode():
        first = windows.starts[:8].tolist()
        subject.model(input_ids=torch.stack([windows.tokens[s : s + SEQ_LEN] for s in first]), use_cache=False)
    for handle in handles:
        handle.remove()
    act = {"values": 0, "differ": 0, "ties": 0, "steps": 0.0}
    for x in seen:
        ours_x = round_per_token(x, activations)
        theirs_x = Int8Tensor.from_hp(x, PerRow()).dequantize(torch.float32)
        amax = x.abs().amax(-1, keepdim=True)
        differ = ours_x != theirs_x
        act["values"] += x.numel()
        act["differ"] += int(differ.sum())
        act["ties"] += int((differ & (x == -amax)).sum())
        act["steps"] = max(act["steps"], float(((ours_x - theirs_x).abs() / (amax / 127.5)).max()))

    # torchao's values multiplied in float32: its de-quantized weights, its de-quantized activations (a
    # pre-hook); what is left between it and torchao is the int32 matmul, between it and ptq-eval the grid ties
    mixed = copy.deepcopy(subject.model)
    mixed_modules = dict(mixed.named_modules())
    with torch.no_grad():
        for name in names:
            mixed_modules[name].weight.copy_(modules[name].weight.dequantize(torch.float32))

    def torchao_input(module, args):
        return (Int8Tensor.from_hp(args[0], PerRow()).dequantize(args[0].dtype), *args[1:])

    handles = [mixed_modules[name].register_forward_pre_hook(torchao_input) for name in names]
    mixed_losses = window_losses(mixed, windows)
    for handle in handles:
        handle.remove()

    def paired(a, b):  # δ = b − a, windows resampled in pairs
        return paired_metrics(loss_metrics(a)[:1], loss_metrics(b)[:1])[0]

    return {"model": subject.label, "tokens": fp.tokens, "fp": mean_loss(fp), "ours": paired(fp, ours_losses),
            "theirs": paired(fp, theirs_losses), "mixed": paired(fp, mixed_losses),
            "between": paired(theirs_losses, ours_losses), "ties": paired(mixed_losses, ours_losses),
            "matmul": paired(theirs_losses, mixed_losses), "weight": weight, "act": act,
            "matrices": len(names)}  # fmt: skip


# ------------------------------------------------------------------- 4. llama.cpp's KV types on narrow heads


@torch.inference_mode()
def ggml_rows(subject: Subject, windows: int) -> list[dict]:
    """kv_cache q8_0 / q4_0 (blocks of 32 along each head vector): is the cache rounded, or only cast to float16
    (what ptq-eval's formats do with a width that is no multiple of 32: llama.cpp keeps such a *weight* F16)?"""
    found = make_windows(text(subject, "validation"), SEQ_LEN, windows * SEQ_LEN)
    tokens = torch.stack([found.tokens[s : s + SEQ_LEN] for s in found.starts.tolist()])
    rows = []
    for preset in ("q8_0", "q4_0"):
        config = kv_config(preset)
        row = {"model": subject.label, "head_dim": None, "preset": preset, "windows": windows,
               "p": config.kv_cache.bits_per_value, "cast": None, "rel_error": None, "refused": None}  # fmt: skip
        try:
            with rounding_at_run_time(subject.model, config, quantizable_weights(subject.model), None):
                inputs = Inputs(subject.attention_modules())  # each layer's own input in this run (as section 1)
                try:
                    cache = _cache(subject.model(input_ids=tokens, use_cache=True))
                finally:
                    inputs.remove()
        except UserError as error:  # a fixed ptq-eval may refuse what llama.cpp refuses
            rows.append(row | {"refused": str(error).splitlines()[0]})
            continue
        cast, error = True, 0.0
        for layer, (key, value) in zip(cache.layers, own_keys_values(subject, inputs), strict=True):
            for theirs, x in ((layer.keys, key), (layer.values, value)):
                cast &= torch.equal(theirs, x.half().float())
                error = max(error, float((theirs - x).norm() / x.norm()))
        rows.append(row | {"head_dim": cache.layers[0].keys.shape[-1], "cast": cast, "rel_error": error})
    return rows


# ----------------------------------------------------------------------------------------------- report


def _ci(low: float, high: float) -> str:
    return f"[{low:+.2e}, {high:+.2e}]"


def ggml_report(rows: list[dict]) -> list[str]:
    cast = [r for r in rows if r["cast"]]
    title = "a finding: on heads narrower than 32 they are only cast to float16" if cast else "rounded or refused"
    lines = [
        "",
        f"## 4. llama.cpp's KV types (q8_0, q4_0): {title}",
        "",
        f"One prefill pass over {rows[0]['windows']} windows of {SEQ_LEN} (use_cache=True), every layer's keys and "
        "values. *cache = float16 cast*: the rounded cache equals the keys and values this script computes from "
        "each layer's input in that run (as in section 1), cast to float16 and back, bit for bit. *P*: the bits "
        "per value the config records (its law's P).",
        "",
        "| model | head_dim | kv_cache | P recorded | cache = float16 cast | rel. error ‖x̂ − x‖ / ‖x‖ |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["refused"]:
            lines.append(f"| {r['model']} | | {r['preset']} | {r['p']:g} | refused: {r['refused']} | |")
            continue
        lines.append(
            f"| {r['model']} | {r['head_dim']} | {r['preset']} | {r['p']:g} | {'yes' if r['cast'] else 'no'} | "
            f"{r['rel_error']:.2g} |"
        )
    if cast:
        widths = sorted({r["head_dim"] for r in cast})
        lines += [
            "",
            f"On heads of {', '.join(map(str, widths))} the cache is not rounded at all: `round_per_token` hands "
            "each head vector to `quantize_tensor` with the format's block of 32, and for a width that is no "
            "multiple of 32 the GGML formats' `kept_whole` / `stored_whole` (`quant/ggml_formats.py`, meant for "
            "weight matrices, which llama.cpp's quantizer keeps in F16) return the values cast to float16. So "
            "`kv_cache: q4_0` or `q8_0` on the demo ladders (head_dim 8 to 16) measures a float16 cache while its "
            "results say q4_0 with P = 4.5, and nothing refuses it or records it. llama.cpp itself refuses such a "
            'cache when the context is created ("K cache type q4_0 with block size 32 does not divide '
            'n_embd_head_k=…"). The same fallback reaches `activations: {format: q8_0}` on a matrix input that is '
            "no multiple of 32 wide (the Llama demo's down_proj, 88 wide): cast to float16, which is at least "
            "what llama.cpp does beside a weight it keeps in F16.",
        ]
    return lines


def summary(layers, models, torchao, ggml) -> list[str]:
    equal = sum(r["equal"] for r in layers)
    identical = sum(r["equal"] for r in models)
    gap = max(abs(r["delta_theirs"] - r["delta_mine"]) for r in models)
    lines = [
        "## Summary",
        "",
        f"- KV cache, layer by layer: {equal} of {len(layers)} (model, precision) cases bit-identical to this "
        f"script's own rounding (every layer, keys and values, prefill + chunk + decode through the cache; "
        f"{len({r['model'] for r in layers})} models, {len(LAYER_PRECISIONS)} precisions).",
        f"- KV cache, whole model: {identical} of {len(models)} losses identical window by window to this "
        f"script's own attention forward; largest |δ ptq-eval − δ own| = {gap:.1e} nats.",
    ]
    if torchao is not None:
        parts = [
            f"{r['model']}: δ ptq-eval − δ torchao = {r['between'].delta:+.1e} "
            f"{_ci(r['between'].ci_low, r['between'].ci_high)} nats (δ's {r['ours'].delta:+.1e} and "
            f"{r['theirs'].delta:+.1e})"
            for r in torchao
        ]
        only_ties = all(r[k]["differ"] == r[k]["ties"] for r in torchao for k in ("weight", "act"))
        where = "only at a row's −max|x| tie" if only_ties else "NOT only at a row's −max|x| tie (section 3)"
        lines.append(
            "- W8A8 beside torchao's Int8DynamicActivationInt8WeightConfig: the same grid (scale max|x| / 127.5, "
            f"levels −128..127); values differ {where}; {'; '.join(parts)}."
        )
    else:
        lines.append("- W8A8 beside torchao: skipped (torchao is not importable here).")
    cast = [r for r in ggml if r["cast"]]
    if cast:
        widths = ", ".join(map(str, sorted({r["head_dim"] for r in cast})))
        lines.append(
            f"- Bug: `kv_cache: q8_0` / `q4_0` on heads of {widths} "
            "(no multiple of 32) leave the cache in float16, unrefused, recorded as q8_0 / q4_0 (section 4)."
        )
    return lines + [""]


def report(layers, models, torchao, ggml, args, seconds: float) -> str:
    versions = f"torch {torch.__version__}, transformers {__import__('transformers').__version__}"
    if torchao is not None:
        from importlib.metadata import version

        versions += f", torchao {version('torchao')}"
    lines = [
        "# KV-cache and activation rounding: ptq-eval beside its own arithmetic and torchao",
        "",
        f"`python tests/bench/kv_activations.py {' '.join(args.argv)}` on a 2-core CPU ({platform.machine()}, "
        f"{torch.get_num_threads()} threads), {versions}, {date.today()}; {seconds:.0f} s in all. What is measured "
        "and how: the module docstring of tests/bench/kv_activations.py. Reproduce: `make bench-kv` (a throwaway "
        "venv `.venv-bench-formats` with torchao 0.18.0; every section) or `.venv/bin/python "
        "tests/bench/kv_activations.py --out PATH` (no torchao: section 3 skipped).",
        "",
        *summary(layers, models, torchao, ggml),
        f"## 1. KV cache, layer by layer ({args.layer_windows} sequences of {sum(PASSES)} positions in passes of "
        f"{' + '.join(map(str, PASSES))}, use_cache=True; every layer)",
        "",
        "*extraction*: this script's keys and values, unrounded, equal the full-precision cache's. *equal*: the "
        "rounded cache equals this script's rounding of its own keys and values (torch.equal, keys and values "
        "of every layer; a sliding-window cache: the positions it keeps). *rel. error*: the rounding's ‖x̂ − x‖ / "
        "‖x‖, largest over layers, keys and values. *control*: values of the cache that differ from a nearby "
        "convention (`Rounding.control`: asymmetric on [min, max] without 0; symmetric on ±(2^(b−1) − 1) steps; "
        "fp8 scaled by the evaluated keys' own max), to show the comparison tells conventions apart.",
        "",
        "| model | KV precision | positions cached | values | extraction | equal | values that differ | max abs "
        "difference | rel. error | control: values that differ |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in layers:
        lines.append(
            f"| {r['model']} | {r['precision']} | {'/'.join(map(str, r['kept']))} | {r['values']:,} | "
            f"{'yes' if r['extraction'] else 'NO'} | {'yes' if r['equal'] else 'NO'} | {r['differ']:,} | "
            f"{r['max_abs']:.3g} | {r['rel_error']:.3g} | {r['control']:,} |"
        )
    lines += [
        "",
        f"## 2. KV cache, whole model (mean loss in nats per token, windows of {SEQ_LEN}, stdlib validation)",
        "",
        "δ = quantized − full precision; ptq-eval's with its paired bootstrap 95% CI (windows resampled). *own*: "
        "this script's rounding in every layer (its own attention forward). *largest window gap*: max over "
        "windows of |Σ loss ptq-eval − Σ loss own| (nats).",
        "",
        "| model | KV precision | tokens | fp loss | δ ptq-eval | 95% CI | δ own | δ ptq-eval − δ own | "
        "largest window gap | identical |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in models:
        lines.append(
            f"| {r['model']} | {r['precision']} | {r['tokens']:,} | {r['fp']:.5f} | {r['delta_theirs']:+.3e} | "
            f"{_ci(*r['ci'])} | {r['delta_mine']:+.3e} | {r['delta_theirs'] - r['delta_mine']:+.1e} | "
            f"{r['window_gap']:.1e} | {'yes' if r['equal'] else 'no'} |"
        )
    lines += ["", "## 3. W8A8: ptq-eval's simulation beside torchao's Int8DynamicActivationInt8WeightConfig", ""]
    if torchao is None:
        lines.append("Skipped: torchao is not importable in this venv (run `make bench-kv`).")
        return "\n".join(lines + ggml_report(ggml)) + "\n"
    only_ties = all(r[k]["differ"] == r[k]["ties"] for r in torchao for k in ("weight", "act"))
    ties_sentence = (
        "Every differing value below is such a value (column *at −max|x|*)."
        if only_ties
        else "NOT every differing value below is such a value: compare the columns *differ* and *at −max|x|*."
    )
    lines += [
        "**The grids are the same.** ptq-eval (`quant/grid.py`, symmetric): scale = 2·max|w| / 255 per output "
        "channel, levels 0..255 around the zero point 128, i.e. q − 128 in −128..127; activations the same per "
        "token. torchao 0.18 (`Int8Tensor.from_hp` → `choose_qparams_affine`, MappingType.SYMMETRIC, int8 bounds "
        "−128..127, `reduce_range=False`): scale = max|x| / ((127 − (−128)) / 2) = max|x| / 127.5, zero point 0, "
        "q = clamp(round(x · (1 / scale)), −128, 127), the scale clamped below at float32's eps; the same for "
        "weights (per row) and activations (per token). 2a / 255 and a / 127.5 are the same correctly rounded "
        "quotient, so the scales are bit-identical (column *scales differ*), and both have levels −128..127 "
        "(not the restricted −127..127, not max|x| / 127). What can differ is one value per row: a row's "
        "largest |x|, when it is negative, sits on the tie −127.5 steps; ptq-eval divides (x / s), torchao "
        "multiplies by the reciprocal (x · (1 / s)), and the two can land a float32 ulp either side of the tie, "
        "so one rounds to −128 and the other to −127 (ptq-eval itself gets −127 on rows where its own quotient "
        f"falls just inside). {ties_sentence} torchao also multiplies int8 by int8 with int32 accumulation "
        "(`torch._int_mm`, exact) and then scales, where the simulation multiplies the de-quantized float32 "
        "values.",
        "",
        "| model | matrices | weight values | differ | at −max\\|w\\| | max diff (steps) | scales differ | "
        "torchao levels | activation values (8 windows) | differ | at −max\\|x\\| | max diff (steps) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in torchao:
        w, a = r["weight"], r["act"]
        lines.append(
            f"| {r['model']} | {r['matrices']} | {w['values']:,} | {w['differ']:,} | {w['ties']:,} | "
            f"{w['steps']:.3g} | {w['scales_differ']} of {w['rows']} | {w['levels'][0]}..{w['levels'][1]} | "
            f"{a['values']:,} | {a['differ']:,} | {a['ties']:,} | {a['steps']:.3g} |"
        )
    lines += [
        "",
        f"δ loss (nats per token, windows of {SEQ_LEN}; paired bootstrap 95% CIs, 2,000 resamples of the windows). "
        "*torchao values, float matmul*: torchao's de-quantized weights and activations multiplied in float32 "
        "(ptq-eval's way): it splits δ ptq-eval − δ torchao into the ties above (ptq-eval − it) and the int32 "
        "matmul (it − torchao); each difference is paired (the same windows resampled for both), fp cancels.",
        "",
        "| model | tokens | fp loss | δ ptq-eval W8A8 [95% CI] | δ torchao [95% CI] | δ torchao values, float "
        "matmul | δ ptq-eval − δ torchao [paired 95% CI] | ties: ptq-eval − float-matmul torchao | int32 "
        "matmul: float-matmul torchao − torchao |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in torchao:
        o, t, m, b, ties, mm = (r[k] for k in ("ours", "theirs", "mixed", "between", "ties", "matmul"))
        lines.append(
            f"| {r['model']} | {r['tokens']:,} | {r['fp']:.5f} | {o.delta:+.3e} {_ci(o.ci_low, o.ci_high)} | "
            f"{t.delta:+.3e} {_ci(t.ci_low, t.ci_high)} | {m.delta:+.3e} | {b.delta:+.2e} "
            f"{_ci(b.ci_low, b.ci_high)} | {ties.delta:+.2e} {_ci(ties.ci_low, ties.ci_high)} | "
            f"{mm.delta:+.2e} {_ci(mm.ci_low, mm.ci_high)} |"
        )
    return "\n".join(lines + ggml_report(ggml)) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("reports/bench/kv_activations.md"))
    parser.add_argument("--tokens", type=int, default=65536, help="scored tokens of sections 2 and 3")
    parser.add_argument("--layer-windows", type=int, default=4, help="sequences of section 1")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    args.argv = sys.argv[1:]
    torch.set_num_threads(args.threads)
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    started = time.perf_counter()
    subjects = [
        checkpoint(NEOX_SMALL, "GPT-NeoX demo n25k/tpp320"),
        checkpoint(NEOX_LARGE, "GPT-NeoX demo n100k/tpp320"),
        checkpoint(LLAMA, "Llama demo n23k/tpp320 (GQA 4→2)"),
        random_llama(),
        random_mistral(),
    ]
    layers = [row for subject in subjects for row in layer_rows(subject, args.layer_windows)]
    print(f"section 1 done ({time.perf_counter() - started:.0f} s)", flush=True)
    models = [row for subject in (subjects[0], subjects[2]) for row in model_rows(subject, args.tokens)]
    print(f"section 2 done ({time.perf_counter() - started:.0f} s)", flush=True)
    try:
        import torchao  # noqa: F401
    except ImportError:
        print("torchao is not importable here: section 3 (torchao agreement) skipped; run `make bench-kv`")
        torchao_found = None
    else:
        torchao_found = [torchao_rows(subject, args.tokens) for subject in (subjects[0], subjects[2])]
    narrow = [subjects[0], subjects[2], random_llama(heads=4, head_dim=32)]
    ggml = [row for subject in narrow for row in ggml_rows(subject, args.layer_windows)]
    text_out = report(layers, models, torchao_found, ggml, args, time.perf_counter() - started)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text_out)
    print(text_out)


if __name__ == "__main__":
    main()
