import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from ptq_eval.checkpoints import (
    CheckpointError,
    CheckpointRef,
    load_checkpoint,
    load_kwargs,
    resolve_tokens,
)


def test_unknown_tokens_are_none_and_malformed_tokens_a_clear_error_naming_the_file(tmp_path):
    assert resolve_tokens(CheckpointRef.parse("gpt2@main"), {}, None) == (None, "unknown", {})
    assert resolve_tokens(CheckpointRef.parse("gpt2@main"), {}, 1000)[:2] == (1000, "spec")
    for bad in (None, "4e9", -5, 0, True, float("nan")):
        with pytest.raises(CheckpointError, match=rf"{tmp_path}/ptq_eval.json: tokens must be a positive number"):
            resolve_tokens(CheckpointRef.parse(str(tmp_path)), {"tokens": bad}, None)


def test_hub_kwargs_are_safe_by_default():
    kwargs = load_kwargs(CheckpointRef.parse("EleutherAI/pythia-160m@step1000"), False, False, "float32")
    assert kwargs == {
        "use_safetensors": True,
        "trust_remote_code": False,
        "dtype": torch.float32,
        "revision": "step1000",
    }
    kwargs = load_kwargs(CheckpointRef.parse("org/model"), True, True, "auto")
    assert kwargs == {"use_safetensors": False, "trust_remote_code": True, "dtype": "auto"}


def test_offline_hub_load_is_a_clear_error(tmp_path):
    """Offline mode is read when huggingface_hub is imported, so the load runs in a fresh process."""
    code = (
        "from ptq_eval.checkpoints import CheckpointError, load_checkpoint\n"
        "try:\n    load_checkpoint('EleutherAI/pythia-70m@step1000')\n"
        "except CheckpointError as error:\n    print(error)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert "EleutherAI/pythia-70m@step1000: revision 'step1000' is not in the local hub cache" in result.stdout
    assert "allow_pickle" not in result.stdout


def test_local_checkpoint_facts(micro_checkpoint):
    loaded = load_checkpoint(str(micro_checkpoint))
    metadata = json.loads((micro_checkpoint / "ptq_eval.json").read_text())
    facts = loaded.facts
    assert facts.tokens == metadata["tokens"] and facts.tokens_source == "ptq_eval.json"
    assert facts.nonembedding_params == metadata["nonembedding_params"] < facts.params
    assert facts.tokens_per_param == pytest.approx(160, rel=0.02)
    assert not loaded.model.training


def test_pickle_weights_are_refused_unless_allowed(micro_checkpoint, tmp_path):
    from safetensors.torch import load_file

    pickled = tmp_path / "pickled"
    pickled.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "ptq_eval.json"):
        shutil.copy(micro_checkpoint / name, pickled / name)
    torch.save(load_file(micro_checkpoint / "model.safetensors"), pickled / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="safetensors only unless allow_pickle: true"):
        load_checkpoint(str(pickled))
    loaded = load_checkpoint(str(pickled), allow_pickle=True)
    assert loaded.facts.params == load_checkpoint(str(micro_checkpoint)).facts.params
