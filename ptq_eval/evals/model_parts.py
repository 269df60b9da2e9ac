"""A causal LM split into its body (tokens → last hidden states) and its output head, so that
scorers run the head only at the positions they score."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ModelParts:
    """`body(ids, **kwargs)` returns the model's output (`states` reads its hidden states, or its logits when
    the model cannot be split); `head` maps those states to logits (the identity in that case)."""

    body: Callable
    head: Callable
    split: bool
    cache_argument: str  # what the body calls the keys and values it reads on from (renamed in transformers 5.x)

    def states(self, output) -> torch.Tensor:
        return output.last_hidden_state if self.split else output.logits

    def cache(self, output):
        """The keys and values a forward pass with `use_cache=True` kept (None when it kept none)."""
        return getattr(output, "cache", None) or getattr(output, "past_key_values", None)


def _cache_argument(module: torch.nn.Module) -> str:
    return "cache" if "cache" in inspect.signature(module.forward).parameters else "past_key_values"


def model_parts(model: torch.nn.Module, device: torch.device) -> ModelParts:
    """The model's body and head when its logits are exactly head(hidden) (checked on a probe); otherwise the
    whole model and the identity."""

    def whole(ids: torch.Tensor, **kwargs):
        return model(input_ids=ids, **{"use_cache": False} | kwargs)

    unsplit = ModelParts(whole, torch.nn.Identity(), split=False, cache_argument=_cache_argument(model))
    body, head = getattr(model, "base_model", model), model.get_output_embeddings()
    if body is model or head is None:
        return unsplit

    def hidden(ids: torch.Tensor, **kwargs):
        return body(input_ids=ids, **{"use_cache": False} | kwargs)

    probe = (torch.arange(8, device=device) % head.weight.shape[0])[None]
    exact = torch.equal(head(hidden(probe).last_hidden_state), whole(probe).logits)
    return ModelParts(hidden, head, split=True, cache_argument=_cache_argument(body)) if exact else unsplit


LOGITS_PER_CHUNK = 2**24  # logits (positions × vocabulary) computed at once on a CPU: 64 MiB in float32
GPU_LOGITS_PER_CHUNK = 2**27  # at most, on an accelerator: 512 MiB in float32
FREE_MEMORY_SHARE = 16  # an accelerator's chunk (its logits and their log-softmax) uses at most 1/16 of free memory


def head_chunk(model: torch.nn.Module, device: torch.device) -> int:
    """Positions sent through the output head at once: a fixed small chunk on a CPU (its memory stays low), on
    an accelerator as many as its free memory allows, up to `GPU_LOGITS_PER_CHUNK` logits."""
    output = model.get_output_embeddings()
    vocabulary = output.weight.shape[0] if output is not None else model.config.vocab_size
    logits = LOGITS_PER_CHUNK
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        logits = max(LOGITS_PER_CHUNK, min(GPU_LOGITS_PER_CHUNK, free // FREE_MEMORY_SHARE // 8))
    return max(1, logits // vocabulary)
