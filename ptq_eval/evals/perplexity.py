"""Per-token validation losses over token windows, batched, and the perplexity metrics built on them.

The same windows are scored for the full-precision and the quantized model, so their
losses pair token by token. Where the time and memory go, and what is done about it:

- windows are sorted by length and batched, right-padded (causal attention never looks
  right, so padding changes no scored position; no attention mask is needed);
- only the scored positions go through the output head, in chunks, so the
  [batch, length, vocabulary] logits never exist at once: peak memory is the model's
  activations plus one chunk of logits (small on a CPU; on a GPU sized from its free
  memory, `model_parts.head_chunk`); the positions are picked on the CPU, and not at all
  when every position of a batch counts, so nothing waits on the device;
- `torch.inference_mode`, no KV cache, and one pass of tensor indexing per batch (no
  Python work per window);
- optional bfloat16 autocast; the default keeps the model's dtype (exact, and what the
  paired deltas are computed in).
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from ptq_eval.errors import UserError
from ptq_eval.evals.model_parts import head_chunk, model_parts
from ptq_eval.evals.paired import UnitMetric
from ptq_eval.evals.windows import Windows

AUTOCAST = ("bfloat16",)


class Observer(Protocol):
    """Sees each chunk of scored positions (`evals/distribution.py`) and returns their losses."""

    def observe(self, head, hidden: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class WindowLosses:
    """Summed token losses (nats) and token counts per window; non-finite tokens counted apart; with an observer,
    the window of each scored token in scoring order."""

    sums: np.ndarray
    counts: np.ndarray
    nonfinite: int = 0
    token_windows: np.ndarray | None = None

    @property
    def tokens(self) -> int:
        return int(self.counts.sum())


def _token_losses(
    head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor, chunk: int, observer: Observer | None
) -> torch.Tensor:
    """The loss of each position, computing the logits `chunk` positions at a time: cross-entropy (float32), or
    what the observer returns (it sees each chunk's logits)."""
    losses = []
    for start in range(0, len(targets), chunk):
        states, wanted = hidden[start : start + chunk], targets[start : start + chunk]
        logits = head(states).float()
        if observer is None:
            losses.append(torch.nn.functional.cross_entropy(logits, wanted, reduction="none"))
        else:
            losses.append(observer.observe(head, states, logits, wanted))
    return torch.cat(losses) if losses else hidden.new_zeros(0, dtype=torch.float32)


@torch.inference_mode()
def window_losses(
    model: torch.nn.Module,
    windows: Windows,
    batch_size: int = 16,
    autocast: str | None = None,
    observer: Observer | None = None,
) -> WindowLosses:
    """Score every window's counted predictions; returns its summed token loss (float64) and count. An observer
    sees every chunk of logits, in an order the same windows always repeat."""
    if autocast is not None and autocast not in AUTOCAST:
        raise UserError(f"autocast={autocast!r} is not accepted; use one of {AUTOCAST} or none")
    device = next(model.parameters()).device
    parts = model_parts(model, device)
    chunk = head_chunk(model, device)
    cast = torch.autocast(device.type, dtype=torch.bfloat16) if autocast else nullcontext()
    tokens = windows.tokens.to(device)
    sums = torch.zeros(len(windows), dtype=torch.float64, device=device)
    nonfinite = torch.zeros((), dtype=torch.long, device=device)
    order = torch.argsort(windows.lengths, descending=True, stable=True)
    token_windows = []
    for batch in order.split(batch_size):
        lengths, scored = windows.lengths[batch], windows.scored[batch]
        positions = torch.arange(int(lengths.max()))
        inside = positions < lengths[:, None]
        index = torch.where(inside, windows.starts[batch, None] + positions, 0).to(device)
        counted = inside & (positions >= (lengths - scored)[:, None])
        # which positions to score, worked out on the CPU: no device sync, and no gather when all of them count
        picked = None if bool(counted.all()) else counted.flatten().nonzero()[:, 0].to(device)
        with cast:
            hidden = parts.states(parts.body(tokens[index])).flatten(0, 1)
            targets = tokens[index + 1].flatten()
            if picked is not None:
                hidden, targets = hidden[picked], targets[picked]
            losses = _token_losses(parts.head, hidden, targets, chunk, observer)
        nonfinite += (~torch.isfinite(losses)).sum()
        owners = batch.repeat_interleave(counted.sum(1))
        sums.index_add_(0, owners.to(device), losses.double())
        if observer is not None:
            token_windows.append(owners)
    counts = windows.scored.numpy().astype(np.int64)
    owners = torch.cat(token_windows).numpy() if token_windows else None
    return WindowLosses(sums.cpu().numpy(), counts, int(nonfinite), owners)


def _bits(x: np.ndarray) -> np.ndarray:
    return x / math.log(2)


def loss_metrics(losses: WindowLosses) -> list[UnitMetric]:
    """Loss (nats/token) and perplexity, windows as the units resampled for CIs."""
    tokens = losses.tokens
    return [
        UnitMetric("loss", losses.sums, losses.counts, None, tokens),
        UnitMetric("perplexity", losses.sums, losses.counts, np.exp, tokens),
    ]


def per_document(values: np.ndarray, windows: Windows) -> np.ndarray:
    """Per-window values summed over each rolling document's windows."""
    return np.bincount(windows.documents.numpy(), weights=values, minlength=len(windows.words))


def document_metrics(losses: WindowLosses, windows: Windows) -> list[UnitMetric]:
    """Rolling windows' metrics with documents as the units: loss, perplexity, and lm-eval's
    word perplexity, byte perplexity and bits per byte (exp or /ln 2 of nats per word or byte)."""
    sums = per_document(losses.sums, windows)
    counts = per_document(losses.counts, windows).astype(np.int64)
    words, sizes = windows.words, windows.bytes
    return [
        UnitMetric("loss", sums, counts, None, int(counts.sum())),
        UnitMetric("perplexity", sums, counts, np.exp, int(counts.sum())),
        UnitMetric("word_perplexity", sums, words, np.exp, int(words.sum())),
        UnitMetric("byte_perplexity", sums, sizes, np.exp, int(sizes.sum())),
        UnitMetric("bits_per_byte", sums, sizes, _bits, int(sizes.sum())),
    ]
