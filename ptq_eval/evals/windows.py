"""Token windows for perplexity: what each window reads and which of its predictions count.

Two rules, both built with tensor arithmetic (no Python loop per window):

- `spread`: disjoint windows of `seq_len` predictions, evenly spaced over one token stream
  (documents joined with EOS), together ≈ a token budget; every prediction counts. With a start
  token (BOS), each window reads [BOS] + its `seq_len` tokens and scores the same `seq_len`
  predictions as without one, so the two conventions score the same targets.
- `rolling`: lm-eval's `loglikelihood_rolling` rule, per document. The tokens are
  [prefix] + document; the first window predicts the document's first `seq_len` tokens, each
  later window the next `stride` tokens from the `seq_len` tokens before them, so the last,
  partial window still sees a full left context. `stride = seq_len` (the default) is
  lm-eval's rule exactly: every token predicted once, windows disjoint in what they predict.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
import torch

from ptq_eval.corpus import token_documents
from ptq_eval.errors import CorpusError, UserError


@dataclass(frozen=True)
class Windows:
    """Windows over one flat token tensor.

    Window i feeds `tokens[starts[i] : starts[i] + lengths[i]]` to the model and scores its
    last `scored[i]` predictions (each position predicting the token after it). Rolling
    windows also know their document, and each document its word and byte counts (the
    denominators of lm-eval's word and byte perplexities).
    """

    tokens: torch.Tensor
    starts: torch.Tensor
    lengths: torch.Tensor
    scored: torch.Tensor
    documents: torch.Tensor | None = None
    words: np.ndarray | None = None
    bytes: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.starts)

    @property
    def predictions(self) -> int:
        return int(self.scored.sum())


BOS_RULES = ("auto", "always", "never")


def start_token(tokenizer, rule: str, rolling: bool) -> int | None:
    """The token every spread window (or, rolling, every document) starts with under a `bos` rule.

    Spread: `auto` is the tokenizer's own default (BOS if encoding text adds one, as Llama-style tokenizers
    do), `always` BOS, `never` none. Rolling always needs a first token: `auto` is lm-eval's (BOS, else EOS),
    `always` BOS, `never` EOS.
    """
    if rule not in BOS_RULES:
        raise UserError(f"bos={rule!r} is not accepted; use one of {', '.join(BOS_RULES)}")
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    if rule == "always" and bos is None:
        raise UserError("bos: always, but the tokenizer has no BOS token; use auto or never")
    if rolling:
        prefix = {"always": bos, "never": eos, "auto": bos if bos is not None else eos}[rule]
        if prefix is None:
            raise UserError("the tokenizer has neither a BOS nor an EOS token to start each document with")
        return prefix
    if rule == "auto":
        return bos if bos is not None and tokenizer("a")["input_ids"][:1] == [bos] else None
    return bos if rule == "always" else None


def make_windows(stream: torch.Tensor, seq_len: int, tokens: int | None = None, start: int | None = None) -> Windows:
    """Evenly spaced windows of `seq_len` predictions over `stream`, together ≈ `tokens` predictions; with
    `start`, each window reads that token first (its own prediction not scored)."""
    available = (len(stream) - 1) // seq_len
    if available < 1:
        raise UserError(f"the evaluation text has {len(stream)} tokens, fewer than one window of seq_len={seq_len}")
    count = available if tokens is None else max(1, min(available, math.ceil(tokens / seq_len)))
    starts = (torch.arange(count) * available // count) * seq_len
    full = torch.full((count,), seq_len, dtype=torch.long)
    if start is None:
        return Windows(stream.long(), starts, full, full.clone())
    # per window, laid end to end: [start token, its seq_len tokens, the token its last position predicts]
    body = stream.long()[starts[:, None] + torch.arange(seq_len + 1)]
    laid = torch.cat([torch.full((count, 1), start, dtype=torch.long), body], dim=1).reshape(-1)
    return Windows(laid, torch.arange(count) * (seq_len + 2), full + 1, full.clone())


def count_words(text: str) -> int:
    """Words as lm-eval counts them for word perplexity (pieces between runs of whitespace)."""
    return len(re.split(r"\s+", text))


def rolling_windows(
    tokenizer, texts: list[str], seq_len: int, stride: int | None = None, prefix: int | None = None
) -> Windows:
    """lm-eval's rolling windows over each text; `prefix` defaults to the BOS token, else EOS (as lm-eval's)."""
    stride = seq_len if stride is None else stride
    if not 0 < stride <= seq_len:
        raise UserError(f"stride={stride} is not accepted; use 1..seq_len ({seq_len})")
    if prefix is None:
        prefix = start_token(tokenizer, "auto", rolling=True)
    documents = token_documents(tokenizer, texts)
    if not any(documents):
        raise CorpusError(f"no text to score: {len(texts)} documents, none with a token (is the split empty?)")
    tokens = torch.tensor([token for ids in documents for token in [prefix, *ids]], dtype=torch.long)
    counts = torch.tensor([len(ids) for ids in documents], dtype=torch.long)
    offsets = torch.cumsum(counts + 1, 0) - (counts + 1)
    first = counts.clamp(max=seq_len)
    later = torch.div(counts - first + stride - 1, stride, rounding_mode="floor")
    per_document = torch.where(counts > 0, 1 + later, 0)
    document = torch.repeat_interleave(torch.arange(len(documents)), per_document)
    first_window = torch.cumsum(per_document, 0) - per_document
    index = torch.arange(len(document)) - torch.repeat_interleave(first_window, per_document)
    end = torch.minimum(first[document] + index * stride, counts[document])
    done_before = torch.where(index == 0, 0, first[document] + (index - 1) * stride)
    lengths = torch.where(index == 0, first[document], seq_len)
    words = np.array([count_words(text) for text in texts], dtype=np.int64)
    sizes = np.array([len(text.encode("utf-8")) for text in texts], dtype=np.int64)
    return Windows(tokens, offsets[document] + end - lengths, lengths, end - done_before, document, words, sizes)
