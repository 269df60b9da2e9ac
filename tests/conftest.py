"""Shared fixtures: a micro reference ladder trained once per test session (seconds)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers

transformers.utils.logging.disable_progress_bar()


@pytest.fixture(scope="session")
def micro_ladder(tmp_path_factory) -> Path:
    from ptq_eval.ladder import PRESETS, train_ladder

    out = tmp_path_factory.mktemp("micro-ladder")
    torch.set_num_threads(2)
    train_ladder(PRESETS["micro"], out)
    return out


@pytest.fixture(scope="session")
def micro_checkpoint(micro_ladder) -> Path:
    """The most-trained checkpoint of the larger micro size."""
    return micro_ladder / "n7k" / "tpp160"
