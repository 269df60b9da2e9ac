"""Per-token validation losses over fixed windows of a corpus, batched.

The same windows are scored for the full-precision and the quantized model, so their
losses pair token by token. Windows are spread evenly over the whole split (not just
its first files) and each predicts `seq_len` tokens from the tokens before it inside
the window.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class WindowLosses:
    """Summed token losses (nats) and token counts per window; non-finite tokens counted apart."""

    sums: np.ndarray
    counts: np.ndarray
    nonfinite: int = 0

    @property
    def tokens(self) -> int:
        return int(self.counts.sum())

    @property
    def mean_loss(self) -> float:
        """Mean loss per token; NaN when any token's loss was not finite (never averaged away)."""
        return math.nan if self.nonfinite else float(self.sums.sum() / self.counts.sum())


def make_windows(stream: torch.Tensor, seq_len: int, tokens: int | None = None) -> torch.Tensor:
    """[n, seq_len + 1] token windows, evenly spaced, together predicting ≈ `tokens` tokens."""
    available = (len(stream) - 1) // seq_len
    if available < 1:
        raise ValueError(f"the evaluation text has {len(stream)} tokens, fewer than one window of seq_len={seq_len}")
    count = available if tokens is None else max(1, min(available, math.ceil(tokens / seq_len)))
    starts = (torch.arange(count) * available // count) * seq_len
    return torch.stack([stream[start : start + seq_len + 1] for start in starts.tolist()]).long()


@torch.inference_mode()
def window_losses(model: torch.nn.Module, windows: torch.Tensor, batch_size: int = 16) -> WindowLosses:
    """Score every window; returns its summed token loss (float64) and token count."""
    device = next(model.parameters()).device
    sums, nonfinite = [], 0
    for start in range(0, len(windows), batch_size):
        batch = windows[start : start + batch_size].to(device)
        logits = model(input_ids=batch[:, :-1]).logits
        losses = torch.nn.functional.cross_entropy(logits.float().transpose(1, 2), batch[:, 1:], reduction="none")
        nonfinite += int((~torch.isfinite(losses)).sum())
        sums.append(losses.double().sum(dim=1).cpu())
    counts = np.full(len(windows), windows.shape[1] - 1, dtype=np.int64)
    return WindowLosses(torch.cat(sums).numpy(), counts, nonfinite)
