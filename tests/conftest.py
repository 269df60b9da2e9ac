"""Shared fixtures: a micro reference ladder trained once per test session (seconds)."""

from __future__ import annotations

import os
from pathlib import Path

# Tests never reach the network: hub models and datasets come from the cache or fail clearly.
# Set before transformers / datasets are imported: they read these once, at import.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

transformers.utils.logging.disable_progress_bar()

# Without a GPU, Triton kernels (GPTQ's fused column loop) run through Triton's interpreter on CPU tensors, so the
# tests can compare them with the eager loop; Triton reads this when it is first imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture
def tiny_model() -> transformers.GPTNeoXForCausalLM:
    """A randomly initialized (seeded) two-block GPT-NeoX, built in milliseconds."""
    torch.manual_seed(0)
    config = transformers.GPTNeoXConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=16,
        tie_word_embeddings=False,
    )
    return transformers.GPTNeoXForCausalLM(config)


@pytest.fixture(scope="session")
def micro_ladder(tmp_path_factory) -> Path:
    from ptq_eval.ladder import preset
    from ptq_eval.ladder.train import train_ladder

    out = tmp_path_factory.mktemp("micro-ladder")
    torch.set_num_threads(2)
    train_ladder(preset("micro"), out)
    return out


@pytest.fixture(scope="session")
def micro_checkpoint(micro_ladder) -> Path:
    """The most-trained checkpoint of the larger micro size."""
    return micro_ladder / "n7k" / "tpp160"


@pytest.fixture(scope="session")
def write_study(micro_ladder, tmp_path_factory):
    """Writes a study YAML from a template whose `{ladder}` is the micro ladder; returns its path."""

    def write(name: str, template: str) -> Path:
        path = tmp_path_factory.mktemp(name) / f"{name}.yaml"
        path.write_text(template.format(ladder=micro_ladder))
        return path

    return write
