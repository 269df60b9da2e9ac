"""Calibration tokens: seeded random windows from a corpus split that is never the evaluation split."""

from __future__ import annotations

import random

import torch

from ptq_eval.corpus import load_corpus, token_stream
from ptq_eval.errors import CorpusError

CHARACTERS_PER_TOKEN_BOUND = 8  # read this many characters per wanted token, so any BPE yields enough text


def calibration_tokens(tokenizer, corpus: str, split: str, samples: int, seq_len: int, seed: int) -> torch.Tensor:
    """[samples, seq_len] token windows drawn (seeded) from randomly chosen documents of the split."""
    source = load_corpus(corpus, split)
    order, sizes = list(range(len(source))), source.sizes()
    random.Random(seed).shuffle(order)
    wanted, chosen = samples * seq_len * CHARACTERS_PER_TOKEN_BOUND, []
    for index in order:
        chosen.append(index)
        wanted -= sizes[index]
        if wanted <= 0:
            break
    stream = token_stream(tokenizer, source.subset(chosen))
    if len(stream) < seq_len + 1:
        raise CorpusError(f"calibration corpus {corpus!r} split {split!r} has {len(stream)} tokens, fewer than seq_len")
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(stream) - seq_len, (samples,), generator=generator)
    return torch.stack([stream[start : start + seq_len] for start in starts.tolist()]).long()
