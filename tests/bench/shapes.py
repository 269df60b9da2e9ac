"""Models the benchmarks build: Pythia-shaped GPT-NeoX with random weights, and GPT-2's BPE from its files."""

from __future__ import annotations

from pathlib import Path

import torch
import transformers

from ptq_eval.tokenizer import gpt2_bpe

GPT2 = Path("tokenizers/gpt2")  # under the shared data folder: encoder.json and vocab.bpe
# Pythia shapes (hidden, layers, heads, MLP width) and a tiny stand-in for quick runs.
SHAPES = {"tiny": (64, 2, 4, 256), "70m": (512, 6, 8, 2048), "160m": (768, 12, 12, 3072),
          "410m": (1024, 24, 16, 4096), "1.4b": (2048, 24, 16, 8192)}  # fmt: skip


def pythia_shaped(size: str, device: str = "cpu", vocabulary: int = 50304) -> transformers.PreTrainedModel:
    """A GPT-NeoX of a Pythia size's shape (context 2048), random weights, seed 0."""
    hidden, layers, heads, inner = SHAPES[size]
    config = transformers.GPTNeoXConfig(
        vocab_size=vocabulary, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=inner, max_position_embeddings=2048, rotary_pct=0.25, tie_word_embeddings=False,
    )  # fmt: skip
    torch.manual_seed(0)
    with torch.device(device):
        return transformers.GPTNeoXForCausalLM(config).eval()


def gpt2_tokenizer(folder: Path) -> transformers.PreTrainedTokenizerBase:
    """GPT-2's BPE (Pythia's is a close relative with the same vocabulary size class) from its two files."""
    return gpt2_bpe(folder / "encoder.json", folder / "vocab.bpe")
