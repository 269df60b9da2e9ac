"""Log-likelihoods of (context, continuation) token requests as lm-eval's `HFLM` defines them, at the cost
of the positions scored.

HFLM's rules, kept: the model reads `(context + continuation)[-(max_length + 1):][:-1]`, right-padded,
without an attention mask; a request's answer is the sum of the log-softmax at its continuation's tokens
and whether each of them was the argmax. What is saved:

- the output head and the log-softmax (float32) run at the scored positions only, in chunks;
- requests whose inputs agree up to the position that predicts their first continuation token (the
  choices of a multiple-choice item) read that context once: its keys and values are reused for each
  continuation's remaining tokens (positions continuing after it, its padding masked);
- identical requests are scored once, and rows are sorted by length, so little is padding.

A shared context gives the same numbers as reading it again up to float rounding (different matrix shapes);
`tests/test_loglikelihood.py` holds that bound and the equality with HFLM per document.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

from ptq_eval.evals.model_parts import ModelParts, head_chunk, model_parts

PAD = 0  # right padding, as HFLM's: causal attention never looks right, so its value changes nothing scored


Pick = tuple[int, int, int]  # a scored position of a row, the token it should predict, the answer slot


@dataclass(frozen=True)
class _Row:
    """What one row of the first pass reads and scores, and the tails (remaining continuation tokens, with
    what they score) that read on from its keys and values."""

    tokens: tuple[int, ...]
    picks: list[Pick]
    tails: list[tuple[tuple[int, ...], list[Pick]]]


def _continuation_picks(first: int, targets: Sequence[int], slot: int) -> list[Pick]:
    return [(first + offset, target, slot) for offset, target in enumerate(targets)]


def _worth_sharing(context: int, continuations: list[int]) -> bool:
    """Read a context once when that saves more tokens than its continuations' second pass reads (measured: a
    second pass over few tokens costs about what re-reading a short context does)."""
    return (len(continuations) - 1) * context > sum(n - 1 for n in continuations)


def _rows(requests: Sequence[tuple[Sequence[int], Sequence[int]]], max_length: int, share: bool):
    """The first pass's rows, longest first, and each request's answer slot (identical requests share one)."""
    slots: dict[tuple[tuple[int, ...], int], int] = {}
    slot_of = []
    for context, continuation in requests:
        if not context or not continuation or len(continuation) > max_length:
            raise ValueError(
                f"a request with {len(context)} context and {len(continuation)} continuation tokens cannot be "
                f"scored: both must be non-empty and the continuation at most the model's {max_length} tokens"
            )
        whole = (tuple(context) + tuple(continuation))[-(max_length + 1) :]
        slot_of.append(slots.setdefault((whole, len(continuation)), len(slots)))
    groups: dict[tuple, list[tuple[tuple[int, ...], int, int]]] = {}
    for (whole, n), slot in slots.items():
        prefix = whole[: len(whole) - n]  # up to the position predicting the continuation's first token
        groups.setdefault(prefix if share else (prefix, slot), []).append((whole, n, slot))
    rows = []
    for members in groups.values():
        prefix = members[0][0][: len(members[0][0]) - members[0][1]]
        if not _worth_sharing(len(prefix), [n for _, n, _ in members]):
            rows += [
                _Row(whole[:-1], _continuation_picks(len(whole) - 1 - n, whole[-n:], slot), [])
                for whole, n, slot in members
            ]
            continue
        firsts = [(len(prefix) - 1, whole[-n], slot) for whole, n, slot in members]
        tails = [(whole[-n:-1], _continuation_picks(0, whole[1 - n :], slot)) for whole, n, slot in members if n > 1]
        rows.append(_Row(prefix, firsts, tails))
    rows.sort(key=lambda row: len(row.tokens), reverse=True)
    return rows, slot_of


def _padded(sequences: Sequence[Sequence[int]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([len(s) for s in sequences])
    ids = torch.full((len(sequences), int(lengths.max())), PAD, dtype=torch.long)
    for i, sequence in enumerate(sequences):
        ids[i, : len(sequence)] = torch.tensor(sequence)
    return ids.to(device), lengths.to(device)


class _Tally:
    """Summed log-probabilities (float64) and greedy misses per answer slot."""

    def __init__(self, parts: ModelParts, slots: int, chunk: int, device: torch.device):
        self.parts, self.chunk = parts, chunk
        self.logprob = torch.zeros(slots, dtype=torch.float64, device=device)
        self.misses = torch.zeros(slots, dtype=torch.long, device=device)

    def add(self, states: torch.Tensor, picks: Sequence[list[Pick]]) -> None:
        """Score each row's picks on `states` [rows, positions, width]."""
        flat = [(row, *pick) for row, row_picks in enumerate(picks) for pick in row_picks]
        rows, positions, targets, slots = torch.tensor(flat, dtype=torch.long, device=states.device).T
        for start in range(0, len(targets), self.chunk):
            part = slice(start, start + self.chunk)
            logits = self.parts.head(states[rows[part], positions[part]]).float().log_softmax(-1)
            self.logprob.index_add_(0, slots[part], logits.gather(1, targets[part, None])[:, 0].double())
            self.misses.index_add_(0, slots[part], (logits.argmax(-1) != targets[part]).long())


def can_share_contexts(parts: ModelParts, device: torch.device) -> bool:
    """Whether a forward pass's keys and values can be handed to a second one: a cache of plain
    full-attention layers (sliding-window, linear-attention or quantized caches are not reused)."""
    probe = parts.body(torch.zeros((1, 2), dtype=torch.long, device=device), use_cache=True)
    cache = parts.cache(probe)
    return isinstance(cache, DynamicCache) and all(type(layer) is DynamicLayer for layer in cache.layers)


def _tails(
    parts: ModelParts, cache: DynamicCache, batch: list[_Row], lengths: torch.Tensor, tally: _Tally, rows: int
) -> None:
    """Each shared row's continuations, read on from its keys and values: at least `rows` a pass, more while
    they hold fewer tokens than the first pass read."""
    device = lengths.device
    layers = [(layer.keys, layer.values) for layer in cache.layers]
    read = layers[0][0].shape[2]
    tokens = len(batch) * read
    tails = sorted(
        ((index, *tail) for index, row in enumerate(batch) for tail in row.tails), key=lambda t: len(t[1]), reverse=True
    )
    start = 0
    while start < len(tails):
        group = tails[start : start + max(rows, tokens // len(tails[start][1]))]
        start += len(group)
        owner = torch.tensor([index for index, _, _ in group], device=device)
        ids, _ = _padded([tokens for _, tokens, _ in group], device)
        seen = torch.arange(read, device=device) < lengths[owner, None]
        mask = torch.cat([seen, torch.ones_like(ids, dtype=torch.bool)], dim=1).long()
        positions = lengths[owner, None] + torch.arange(ids.shape[1], device=device)
        past = DynamicCache(ddp_cache_data=[(keys[owner], values[owner]) for keys, values in layers])
        reading = {parts.cache_argument: past, "attention_mask": mask, "position_ids": positions}
        output = parts.body(ids, use_cache=True, **reading)
        tally.add(parts.states(output), [picks for _, _, picks in group])


@torch.inference_mode()
def score_requests(
    model: torch.nn.Module,
    requests: Sequence[tuple[Sequence[int], Sequence[int]]],
    max_length: int,
    batch_size: int = 16,
    share: bool = True,
) -> list[tuple[float, bool]]:
    """(log-likelihood, greedy) of each (context tokens, continuation tokens) request, in order; `share`:
    read a context common to several continuations once (where the model's cache allows)."""
    if not requests:
        return []
    device = next(model.parameters()).device
    parts = model_parts(model, device)
    rows, slot_of = _rows(requests, max_length, share and can_share_contexts(parts, device))
    tally = _Tally(parts, max(slot_of) + 1, head_chunk(model, device), device)
    for start in range(0, len(rows), batch_size):
        batch = rows[start : start + batch_size]
        ids, lengths = _padded([row.tokens for row in batch], device)
        shared = any(row.tails for row in batch)
        output = parts.body(ids, use_cache=shared)
        tally.add(parts.states(output), [row.picks for row in batch])
        if shared:
            _tails(parts, parts.cache(output), batch, lengths, tally, batch_size)
    logprob, misses = tally.logprob.cpu().tolist(), tally.misses.cpu().tolist()
    return [(logprob[slot], misses[slot] == 0) for slot in slot_of]
