"""Keys and values rounded inside attention, after RoPE, for every pass (prefill included), as compressed-tensors
and the serving kernels do; not transformers' `QuantizedCache`, which hands the prefill pass full-precision keys.

How: transformers routes each family's attention through `ALL_ATTENTION_FUNCTIONS[config._attn_implementation]`
(given the module, query, and the keys and values after RoPE and after the cache's update). We register a
wrapper of `sdpa` and of `eager` under our own names and point the model's configs at it while a config is
scored. The wrapper rounds the positions this pass added (the last `query_len` ones) in place: where a cache
keeps them, it is the cache's own tensor that is rounded, so a later pass that reads on from it (the lm-eval
backend's shared contexts) reads rounded keys and values, each rounded once. A family whose attention does not
go through the interface is refused by name (a probe pass must reach the wrapper, from every layer its cache
keeps). The positions a pass added are the last ones of what the cache hands attention, as transformers'
dynamic caches do (our scorers use no other; a static cache writing at `cache_position` would need its own rule).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from transformers import PretrainedConfig
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface

from ptq_eval.quant.base import QuantError
from ptq_eval.quant.precision import Precision, round_per_token, round_static
from ptq_eval.quant.rotation import walsh_hadamard

WRAPPED = {"sdpa": "ptq_eval_kv_sdpa", "eager": "ptq_eval_kv_eager"}
# What the wrapper hands each attention module's keys and values to: (module, keys, values, positions added)
Handler = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor, int], None]
_HANDLERS: dict[int, Handler] = {}  # id(config) of a hooked model -> its handler (each module reads its config)


def _inner(module: torch.nn.Module, base: str) -> Callable:
    if base == "sdpa":
        return ALL_ATTENTION_FUNCTIONS["sdpa"]
    eager = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
    if eager is None:
        raise QuantError(f"{type(module).__name__}: its module has no eager_attention_forward to wrap; use sdpa")
    return eager


def _wrapper(base: str) -> Callable:
    def attend(
        module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask, **kwargs
    ):
        handler = _HANDLERS.get(id(getattr(module, "config", None)))
        if handler is None:
            raise RuntimeError(f"{WRAPPED[base]} called outside ptq-eval's KV rounding")
        added = query.shape[-2]
        if key.dim() != 4 or key.shape[-2] < added:
            raise QuantError(f"{type(module).__name__}: keys of shape {tuple(key.shape)} are not [batch, heads, "
                             f"positions, head_dim] with at least the query's {added} positions")  # fmt: skip
        handler(module, key, value, added)
        return _inner(module, base)(module, query, key, value, attention_mask, **kwargs)

    return attend


for _base, _name in WRAPPED.items():
    AttentionInterface.register(_name, _wrapper(_base))
    AttentionMaskInterface.register(_name, ALL_MASK_ATTENTION_FUNCTIONS[_base])


def _configs(model: torch.nn.Module) -> list[PretrainedConfig]:
    configs = [getattr(module, "config", None) for module in model.modules()]
    return list({id(c): c for c in configs if isinstance(c, PretrainedConfig)}.values())


@contextmanager
def attention_hooked(model: torch.nn.Module, handler: Handler) -> Iterator[None]:
    """Within the block, every attention call of the model hands its keys and values to `handler` first."""
    configs = _configs(model)
    before = [config._attn_implementation for config in configs]
    for implementation in before:
        if implementation not in WRAPPED:
            raise QuantError(
                f"{type(model).__name__}: attention implementation {implementation!r}; KV-cache rounding wraps "
                f"{' or '.join(WRAPPED)} (load the model with one of them)"
            )
    if any(id(config) in _HANDLERS for config in configs):
        raise RuntimeError(f"{type(model).__name__}: its attention is already hooked")
    try:
        for config, implementation in zip(configs, before, strict=True):
            _HANDLERS[id(config)] = handler
            config._attn_implementation = WRAPPED[implementation]
        yield
    finally:
        for config, implementation in zip(configs, before, strict=True):
            _HANDLERS.pop(id(config), None)
            config._attn_implementation = implementation


def _rows(x: torch.Tensor, per: str) -> torch.Tensor:
    """[batch, heads, positions, dim] as rows: one per head (a static scale each), or one per head vector (one
    static scale for all)."""
    return x.transpose(0, 1).reshape(x.shape[1], -1) if per == "head" else x.reshape(-1, x.shape[-1])


def _rotated(x: torch.Tensor, hadamard: bool) -> torch.Tensor:
    """x in the Walsh–Hadamard basis of each head (its own inverse), or as it is (power-of-two heads: the probe
    in `run_time.py` refuses others before any pass)."""
    return walsh_hadamard(x.float()).to(x.dtype) if hadamard else x


class RangeObserver:
    """Calibration: each attention module's key and value ranges (min, max), per head or per layer."""

    def __init__(self, precision: Precision):
        self.precision = precision
        self.ranges: dict[int, list[torch.Tensor]] = {}  # id(module) -> [key low, key high, value low, value high]

    def __call__(self, module: torch.nn.Module, key: torch.Tensor, value: torch.Tensor, added: int) -> None:
        found = []
        for x in (key, value):
            rows = _rows(_rotated(x[..., -added:, :], self.precision.hadamard), self.precision.per).float()
            if self.precision.per != "head":
                rows = rows.reshape(1, -1)
            found += [rows.amin(dim=1, keepdim=True), rows.amax(dim=1, keepdim=True)]
        seen = self.ranges.get(id(module))
        if seen is not None:
            pairs = enumerate(zip(seen, found, strict=True))
            found = [(torch.minimum if i % 2 == 0 else torch.maximum)(a, b) for i, (a, b) in pairs]
        self.ranges[id(module)] = found


class KVRounder:
    """Rounds the keys and values each pass adds, in place (dynamic per token, or on calibrated static ranges)."""

    def __init__(self, precision: Precision, ranges: dict[int, list[torch.Tensor]] | None = None):
        self.precision, self.ranges = precision, ranges or {}

    def rounded(self, x: torch.Tensor, low: torch.Tensor | None, high: torch.Tensor | None) -> torch.Tensor:
        rotated = _rotated(x, self.precision.hadamard)
        if self.precision.dynamic:
            rounded = round_per_token(rotated, self.precision)
        else:
            rows = _rows(rotated, self.precision.per)
            rounded = round_static(rows, low.to(x.device), high.to(x.device), self.precision)
            if self.precision.per == "head":
                rounded = rounded.reshape(x.shape[1], x.shape[0], *x.shape[2:]).transpose(0, 1)
            rounded = rounded.reshape(x.shape)
        return _rotated(rounded, self.precision.hadamard)

    def __call__(self, module: torch.nn.Module, key: torch.Tensor, value: torch.Tensor, added: int) -> None:
        ranges = self.ranges.get(id(module), [None] * 4)
        if not self.precision.dynamic and ranges[0] is None:
            layer = getattr(module, "layer_idx", "?")
            raise QuantError(
                f"{type(module).__name__} (layer {layer}): no calibrated KV range for this attention layer"
            )
        for x, (low, high) in ((key, ranges[:2]), (value, ranges[2:])):
            part = x[..., -added:, :]
            part.copy_(self.rounded(part, low, high))
