import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file

from ptq_eval.ladder import PRESETS, plan_targets, train_ladder


def test_checkpoints_carry_their_facts(micro_ladder):
    config = PRESETS["micro"]
    for size in config.sizes:
        for ratio in config.tokens_per_param:
            directory = micro_ladder / size.name / f"tpp{ratio:g}"
            facts = json.loads((directory / "ptq_eval.json").read_text())
            assert facts["tokens"] == facts["step"] * config.tokens_per_step
            assert facts["tokens_per_param"] == pytest.approx(ratio, rel=0.05)
            assert facts["schedule"]["kind"] == "wsd" and facts["schedule"]["decay_done"] == 1.0
            assert facts["train_corpus"]["parts"][0]["corpus"] == "stdlib-python"
            assert (directory / "model.safetensors").is_file() and (directory / "tokenizer.json").is_file()
    ladder = json.loads((micro_ladder / "ladder.json").read_text())
    assert len(ladder["checkpoints"]) == len(config.sizes) * len(config.tokens_per_param)


def test_more_tokens_give_lower_training_loss(micro_ladder):
    for size in PRESETS["micro"].sizes:
        losses = [
            json.loads((micro_ladder / size.name / f"tpp{r:g}" / "ptq_eval.json").read_text())["train_loss_end"]
            for r in PRESETS["micro"].tokens_per_param
        ]
        assert losses == sorted(losses, reverse=True)


def test_cooldowns_end_exactly_at_each_target():
    config = PRESETS["demo"]
    targets = plan_targets(100_000, config)
    assert [t.tokens_per_param for t in targets] == sorted(config.tokens_per_param)
    for target in targets:
        assert target.end_step * config.tokens_per_step == pytest.approx(target.tokens_per_param * 100_000, rel=0.01)
        assert target.end_step - target.cooldown_start == round(config.cooldown_fraction * target.end_step)


def test_training_is_deterministic_for_a_seed(tmp_path):
    small = dataclasses.replace(PRESETS["micro"], sizes=PRESETS["micro"].sizes[:1], tokens_per_param=[10])
    first, second = train_ladder(small, tmp_path / "a"), train_ladder(small, tmp_path / "b")
    a, b = load_file(first[0] / "model.safetensors"), load_file(second[0] / "model.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    other = train_ladder(dataclasses.replace(small, seed=1), tmp_path / "c")
    c = load_file(other[0] / "model.safetensors")
    assert any(not torch.equal(c[k], a[k]) for k in a)
