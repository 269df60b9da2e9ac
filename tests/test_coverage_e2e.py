"""Coverage end to end: studies on saved checkpoints of other architectures (random weights, the micro ladder's
tokenizer), through the runner, the results table and the release gate."""

from __future__ import annotations

import json

import pytest
import torch
import transformers as T

from ptq_eval.gate import decide, gate_study, parse_policy
from ptq_eval.results import study_results
from ptq_eval.runner import run_study
from ptq_eval.spec import parse_study
from ptq_eval.store import Store

EVAL = {"kind": "perplexity", "tokens": 2048, "seq_len": 32}


def saved(directory, tokenizer_dir, config) -> str:
    """A tiny random model saved as a local checkpoint that knows its D."""
    tokenizer = T.AutoTokenizer.from_pretrained(tokenizer_dir)
    config.vocab_size = len(tokenizer)
    torch.manual_seed(0)
    T.AutoModelForCausalLM.from_config(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    (directory / "ptq_eval.json").write_text(json.dumps({"tokens": 1_000_000}))
    return str(directory)


@pytest.fixture(scope="module")
def checkpoints(micro_checkpoint, tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("architectures")
    configs = {
        # a wide initialization makes outputs far from uniform, so rounding the weights shows in the loss
        "gpt2": T.GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=64, initializer_range=0.3),
        "mixtral": T.MixtralConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, num_local_experts=4, max_position_embeddings=64,
                                   initializer_range=0.3),
        "mamba": T.MambaConfig(hidden_size=16, state_size=4, num_hidden_layers=2, expand=2),
    }  # fmt: skip
    return {name: saved(root / name, micro_checkpoint, config) for name, config in configs.items()}


def run(tmp_path, name: str, ladder: list[str], quant: list[dict]):
    study = parse_study(
        {"name": name, "ladder": ladder, "quant": quant, "calibration": {"samples": 16, "seq_len": 32}, "evals": [EVAL]}
    )
    with Store(tmp_path / f"{name}.sqlite") as store:
        run_study(study, store)
        return study_results(study, store).query("metric == 'loss'").set_index(["checkpoint", "method", "bits"])


def test_studies_on_conv1d_and_moe_models_record_full_coverage_and_restore_weights(checkpoints, tmp_path):
    ladder = [checkpoints["gpt2"], checkpoints["mixtral"]]
    loss = run(tmp_path, "grid", ladder, [{"method": "rtn", "bits": [2, 8]}, {"method": "gptq", "bits": 3}])
    assert (loss.left_out_params == 0).all() and loss.coverage.between(0.9, 1).all()
    assert loss.loc[checkpoints["mixtral"]].quantized_matrices.iloc[0] == 2 * (4 + 2 * 4)  # q k v o + 4 experts × 2
    # In the grid 8 bits ran after 2 bits on the same loaded model: pristine weights (Conv1D views, expert slices)
    # were restored exactly if it matches 8 bits run alone.
    alone = run(tmp_path, "alone", ladder, [{"method": "rtn", "bits": 8}])
    for checkpoint in ladder:
        assert loss.loc[(checkpoint, "rtn", 8), "delta"] == alone.loc[(checkpoint, "rtn", 8), "delta"]
        assert loss.loc[(checkpoint, "rtn", 2), "delta"] != alone.loc[(checkpoint, "rtn", 8), "delta"]


def test_the_gate_never_passes_a_model_with_weights_left_out(checkpoints, tmp_path):
    policy = {
        "name": "release",
        "quant": [{"method": "rtn", "bits": 8}],
        "evals": [EVAL],
        "budgets": [{"kind": "absolute", "max": 100.0}],
    }
    for min_coverage, expected in ((None, "undecided"), (0.99, "undecided"), (0.5, "pass")):
        gate = parse_policy(policy | ({"min_coverage": min_coverage} if min_coverage else {}))
        study = gate_study(gate, checkpoints["mamba"])
        with Store(tmp_path / "gate.sqlite") as store:
            run_study(study, store)
            results = study_results(study, store)
        verdict = decide(gate, checkpoints["mamba"], results)
        assert verdict.decision == expected, verdict.checks[0].reason
    row = results[results.metric == "loss"].iloc[0]
    assert row.left_out_params > 0 and 0.5 < row.coverage < 0.99  # the conv1d kernels stay in full precision
