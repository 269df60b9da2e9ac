"""Byte-level BPE tokenizer trained on a corpus split, saved like any hub tokenizer."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2TokenizerFast, PreTrainedTokenizerFast

from ptq_eval.errors import UserError

END_OF_TEXT = "<|endoftext|>"
GPT2_FILES = (("vocab.json", "merges.txt"), ("encoder.json", "vocab.bpe"))  # Hugging Face's names, OpenAI's


def train_bpe(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Train a GPT-2-style byte-level BPE tokenizer with one special token, end-of-text."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[END_OF_TEXT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=END_OF_TEXT,
        eos_token=END_OF_TEXT,
        model_max_length=1 << 30,
    )


def gpt2_bpe(vocabulary: Path, merges: Path) -> GPT2TokenizerFast:
    """A GPT-2 byte-level BPE from its vocabulary (JSON) and merges (one pair per line after a version line)."""
    lines = merges.read_text(encoding="utf-8").splitlines()
    pairs = [tuple(line.split()) for line in lines if line and not line.startswith("#version")]
    return GPT2TokenizerFast(vocab=json.loads(vocabulary.read_text(encoding="utf-8")), merges=pairs)


def load_tokenizer(folder: str) -> PreTrainedTokenizerFast:
    """A tokenizer from a folder (environment variables expanded): its tokenizer.json, or a GPT-2 BPE's vocabulary
    and merges (either naming); end-of-text is its BOS and EOS."""
    path = Path(os.path.expandvars(folder))
    pairs = [(path / vocab, path / merges) for vocab, merges in GPT2_FILES]
    found = next(((vocab, merges) for vocab, merges in pairs if vocab.is_file() and merges.is_file()), None)
    if (path / "tokenizer.json").is_file():
        tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(path / "tokenizer.json"))
    elif found is not None:
        tokenizer = gpt2_bpe(*found)
    else:
        names = " or ".join(f"{vocab} and {merges}" for vocab, merges in GPT2_FILES)
        raise UserError(f"tokenizer {folder!r} ({path}): no tokenizer.json, nor {names}, there")
    if END_OF_TEXT not in tokenizer.get_vocab():
        raise UserError(f"tokenizer {path} has no {END_OF_TEXT} token to end documents with")
    tokenizer.bos_token = tokenizer.eos_token = END_OF_TEXT
    tokenizer.model_max_length = 1 << 30
    return tokenizer
