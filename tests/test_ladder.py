import json

import pytest
import torch
import transformers
from safetensors.torch import load_file

from ptq_eval.cli import main
from ptq_eval.errors import EXIT_INPUT, UserError
from ptq_eval.ladder import local_ladder_table, parse_ladder_config, plan_targets, preset
from ptq_eval.ladder.config import LadderConfigError, preset_names
from ptq_eval.ladder.train import train_ladder
from ptq_eval.quant import QuantConfig, quantize


def _facts(directory) -> dict:
    return json.loads((directory / "ptq_eval.json").read_text())


def test_checkpoints_carry_their_facts(micro_ladder):
    config = preset("micro")
    for size in config.sizes:
        for ratio in config.tokens_per_param:
            directory = micro_ladder / size.name / f"tpp{ratio:g}"
            facts = _facts(directory)
            assert facts["tokens"] == facts["step"] * config.tokens_per_step
            assert facts["tokens_per_param"] == pytest.approx(ratio, rel=0.05)
            assert facts["schedule"]["kind"] == "wsd" and facts["schedule"]["decay_done"] == 1.0
            assert facts["schedule"]["phase"] == "annealed" and facts["architecture"] == "gpt-neox"
            assert facts["train_corpus"]["parts"][0]["corpus"] == "stdlib-python"
            assert parse_ladder_config(facts["ladder_config"]) == config
            assert (directory / "model.safetensors").is_file() and (directory / "tokenizer.json").is_file()
    ladder = json.loads((micro_ladder / "ladder.json").read_text())
    assert len(ladder["checkpoints"]) == len(config.sizes) * len(config.tokens_per_param)
    assert ladder["config"] == config.model_dump(mode="json") and ladder["runs"][0]["sizes"] == ["n3k", "n7k"]


def test_more_tokens_give_lower_training_loss(micro_ladder):
    config = preset("micro")
    for size in config.sizes:
        losses = [_facts(micro_ladder / size.name / f"tpp{r:g}")["train_loss_end"] for r in config.tokens_per_param]
        assert losses == sorted(losses, reverse=True)


def test_cooldowns_end_exactly_at_each_target():
    config = preset("demo")
    targets = plan_targets(100_000, config)
    assert [t.tokens_per_param for t in targets] == sorted(config.tokens_per_param)
    for target in targets:
        assert target.end_step * config.tokens_per_step == pytest.approx(target.tokens_per_param * 100_000, rel=0.01)
        assert target.end_step - target.cooldown_start == round(config.schedule.cooldown_fraction * target.end_step)


def test_training_is_deterministic_for_a_seed(tmp_path):
    micro = preset("micro")
    small = micro.model_copy(update={"sizes": micro.sizes[:1], "tokens_per_param": [10]})
    first, second = train_ladder(small, tmp_path / "a"), train_ladder(small, tmp_path / "b")
    a, b = load_file(first[0] / "model.safetensors"), load_file(second[0] / "model.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    other = train_ladder(small.model_copy(update={"seed": 1}), tmp_path / "c")
    c = load_file(other[0] / "model.safetensors")
    assert any(not torch.equal(c[k], a[k]) for k in a)
    with pytest.raises(UserError, match="another config"):
        train_ladder(small.model_copy(update={"seed": 1}), tmp_path / "a")
    with pytest.raises(UserError, match="unknown size.*n9"):
        train_ladder(small, tmp_path / "a", sizes=["n9"])


def test_a_cosine_ladder_saves_its_smaller_targets_mid_decay(tmp_path):
    micro = preset("micro")
    cosine = parse_ladder_config(
        micro.model_dump(mode="json")
        | {"sizes": [micro.sizes[0].model_dump()], "schedule": {"kind": "cosine", "warmup_steps": 5}}
    )
    saved = train_ladder(cosine, tmp_path)
    schedules = [_facts(directory)["schedule"] for directory in saved]
    done = [s["decay_done"] for s in schedules]
    assert done == sorted(done) and len(set(done)) == 3 and 0 < done[0] < 1 and done[-1] == 1.0
    assert [s["phase"] for s in schedules] == ["mid-decay", "mid-decay", "annealed"]
    assert schedules[-1]["lr_fraction_at_end"] == pytest.approx(0.1, abs=0.01)
    assert schedules[0]["lr_fraction_at_end"] > 0.5
    table = local_ladder_table(tmp_path)
    assert list(table["decay_done"]) == pytest.approx(done, abs=1e-3)


def test_a_llama_ladder_has_grouped_query_attention_and_quantizes_fully(tmp_path):
    micro = preset("micro")
    llama = parse_ladder_config(
        micro.model_dump(mode="json")
        | {
            "architecture": "llama",
            "sizes": [{"name": "l4k", "hidden": 16, "layers": 1, "heads": 4, "kv_heads": 2}],
            "tokens_per_param": [10],
        }  # fmt: skip
    )
    (directory,) = train_ladder(llama, tmp_path)
    model = transformers.AutoModelForCausalLM.from_pretrained(directory)
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.num_key_value_heads == 2
    assert _facts(directory)["architecture"] == "llama"
    assert not any("bias" in name for name, _ in model.named_parameters())
    report = quantize(model, QuantConfig(method="rtn", bits=4, group_size=-1))
    norms = sum(p.numel() for name, p in model.named_parameters() if name.endswith("norm.weight"))
    assert report.coverage.matrices == 7 and not report.coverage.left_out  # q k v o, gate up down
    assert report.coverage.params + norms == report.coverage.nonembedding_params


@pytest.mark.parametrize(
    "change, message",
    [
        ({"sizes": [{"name": "a", "hidden": 10, "layers": 1, "heads": 3}]}, "hidden 10 is not a multiple of heads 3"),
        ({"sizes": [{"name": "a", "hidden": 16, "layers": 1, "heads": 2, "kv_heads": 1}]}, "needs architecture llama"),
        ({"tokens_per_param": [10, 10]}, "a ratio is given twice"),
        ({"tokens_per_param": [0]}, "ratios must be > 0"),
        ({"schedule": {"kind": "linear"}}, "schedule"),
        ({"architecture": "mamba"}, "architecture"),
        ({"layerz": 2}, "layerz"),
    ],
)
def test_bad_ladder_configs_are_named(change, message):
    with pytest.raises(LadderConfigError, match=message):
        parse_ladder_config(preset("micro").model_dump(mode="json") | change)


def test_presets_are_the_shipped_yaml_files():
    assert {"micro", "demo", "demo-cosine", "demo-llama"} <= set(preset_names())
    assert all(preset(name).sizes for name in preset_names())
    with pytest.raises(UserError, match="unknown ladder preset 'nope'.*demo-cosine"):
        preset("nope")


def test_ladder_train_refuses_config_and_preset_together(tmp_path, capsys):
    config = tmp_path / "ladder.yaml"
    config.write_text("architecture: llama\nsizes: []\ntokens_per_param: [10]\n")
    argv = ["ladder", "train", "--out", str(tmp_path / "out")]
    assert main([*argv, "--config", str(config), "--preset", "micro"]) == EXIT_INPUT
    assert "not both" in capsys.readouterr().err
    assert main([*argv, "--config", str(config)]) == EXIT_INPUT
    error = capsys.readouterr().err
    assert "sizes" in error and "at least 1" in error
    assert not (tmp_path / "out").exists()


def test_a_scaled_down_wide_ladder_loads_its_tokenizer_trains_in_bf16_and_saves_mid_cooldown(tmp_path):
    """The `wide` preset's own settings (a given BPE, bfloat16 autocast, WSD with half-way snapshots) on CPU,
    with micro sizes and a tokenizer the test saves (the preset names GPT-2's files in the data folder)."""
    from ptq_eval.corpus import load_corpus
    from ptq_eval.tokenizer import train_bpe

    micro, wide = preset("micro"), preset("wide")
    tokenizer = train_bpe(load_corpus("stdlib-python", "train").subset(list(range(20))).texts(), 400)
    tokenizer.save_pretrained(tmp_path / "bpe")
    config = parse_ladder_config(
        micro.model_dump(mode="json")
        | {key: wide.model_dump(mode="json")[key] for key in ("schedule", "precision")}
        | {"sizes": [micro.sizes[0].model_dump()], "tokens_per_param": [10, 40], "tokenizer": str(tmp_path / "bpe")}
    )
    assert config.precision == "bfloat16" and config.schedule.decay_snapshots == [0.5]
    saved = train_ladder(config, tmp_path / "ladder")
    names = [directory.name for directory in saved]
    assert names == ["decay0.5-tpp10", "tpp10", "decay0.5-tpp40", "tpp40"]  # a study's `*/tpp*` stays annealed
    facts = [_facts(directory) for directory in saved]
    done = [f["schedule"]["decay_done"] for f in facts]
    assert done[1::2] == [1.0, 1.0] and all(abs(d - 0.5) < 0.2 for d in done[::2])  # the fraction reached
    assert facts[0]["tokens"] < facts[1]["tokens"] and facts[0]["schedule"]["phase"] == "mid-decay"
    model_config = json.loads((saved[-1] / "config.json").read_text())
    assert model_config["vocab_size"] == len(tokenizer) and "ladder_precision" not in model_config
    assert facts[-1]["trained_with"]["device"] == "cpu"
    assert sorted(local_ladder_table(tmp_path / "ladder")["decay_done"]) == pytest.approx(sorted(done), abs=1e-3)
    again = train_ladder(config, tmp_path / "ladder")  # the same config into the same folder: accepted
    assert [directory.name for directory in again] == names


def test_the_gpt2_files_of_the_data_folder_load_as_a_tokenizer():
    from pathlib import Path

    from ptq_eval.tokenizer import load_tokenizer

    folder = Path(__file__).resolve().parents[2] / "shared" / "data" / "tokenizers" / "gpt2"
    if not folder.is_dir():
        pytest.skip("../shared/data is absent")
    tokenizer = load_tokenizer(str(folder))
    assert len(tokenizer) == 50257 and tokenizer.eos_token_id == 50256
    assert tokenizer("hello world").input_ids == [31373, 995]
    with pytest.raises(UserError, match="no tokenizer.json, nor vocab.json and merges.txt"):
        load_tokenizer(str(folder.parent))
