"""The Python API: the README's example as written, in-memory models (copied, never changed; identified by
their weights), and clear errors."""

import re
from pathlib import Path

import pytest
import torch
import yaml

import ptq_eval
from ptq_eval.errors import UserError
from ptq_eval.results import COLUMNS, EXTRA

ROOT = Path(__file__).resolve().parents[1]


def readme_example() -> str:
    section = (ROOT / "README.md").read_text().split("## Python API", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_example_runs_on_the_committed_ladder(monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    scope = {}
    exec(compile(readme_example(), "README.md", "exec"), scope)  # noqa: S102 - the project's own README
    results = scope["results"]
    assert list(results.columns) == COLUMNS + EXTRA and len(results) == 3 * 6  # 6 metrics per width
    loss = results[results.metric == "loss"].set_index("bits")
    assert loss.delta[3] > loss.delta[8] and loss.delta_ci_low[3] > 0
    assert loss.fp_value.nunique() == 1  # one baseline, paired with every config
    assert "delta_ci_high" in capsys.readouterr().out


def test_an_in_memory_model_is_copied_and_its_results_are_reused_from_a_store(micro_checkpoint, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(micro_checkpoint)
    tokenizer = AutoTokenizer.from_pretrained(micro_checkpoint)
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    args = {"quant": [{"method": "rtn", "bits": 3}], "evals": [{"kind": "perplexity", "tokens": 2048, "seq_len": 32}]}
    store = tmp_path / "api.sqlite"
    first = ptq_eval.evaluate(model, tokenizer, store=store, tokens=123_456, **args)
    assert all(torch.equal(before[name], tensor) for name, tensor in model.state_dict().items())
    assert first.checkpoint.str.startswith("memory:").all() and (first.tokens == 123_456).all()
    again = ptq_eval.evaluate(model, tokenizer, store=store, tokens=123_456, **args)
    assert again.drop(columns="seconds").equals(first.drop(columns="seconds"))
    other_d = ptq_eval.evaluate(model, tokenizer, store=store, tokens=654_321, **args)  # never a stale D
    assert (other_d.tokens == 654_321).all() and other_d.delta.equals(first.delta)
    with torch.no_grad():
        next(model.parameters()).add_(0.01)  # other weights: another checkpoint, measured afresh
    changed = ptq_eval.evaluate(model, tokenizer, store=store, tokens=123_456, **args)
    assert set(changed.checkpoint) != set(first.checkpoint)
    study = tmp_path / "api.yaml"  # the API's study is an ordinary one: a YAML file naming it reads the same rows
    entry = {"checkpoint": first.checkpoint[0], "tokens": 123_456}
    study.write_text(yaml.safe_dump({"name": "api", "ladder": [entry], **args}))
    assert ptq_eval.load_results(study, store=store).drop(columns="seconds").equals(first.drop(columns="seconds"))


def test_bad_arguments_are_clear_errors(micro_checkpoint):
    with pytest.raises(UserError, match="needs its tokenizer"):
        ptq_eval.evaluate(torch.nn.Linear(2, 2), quant=[{"method": "rtn", "bits": 4}])
    with pytest.raises(UserError, match=r"quant\[0\]\.bits: 1 is not in 2..16"):
        ptq_eval.evaluate(str(micro_checkpoint), quant=[{"method": "rtn", "bits": 1}])
    with pytest.raises(UserError, match="ladder: given by evaluate's own arguments"):
        ptq_eval.evaluate(str(micro_checkpoint), quant=[{"method": "rtn", "bits": 4}], ladder=["x"])
    with pytest.raises(UserError, match="no store at"):
        ptq_eval.load_results(ROOT / "tasks" / "demo.yaml", store=ROOT / "missing.sqlite")


def test_a_tokenizer_with_ids_beyond_the_embedding_is_refused(micro_checkpoint, tiny_model, tmp_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(micro_checkpoint)
    largest = max(tokenizer.get_vocab().values())
    assert largest >= tiny_model.get_input_embeddings().num_embeddings  # 64 rows
    args = {"quant": [{"method": "rtn", "bits": 3}], "evals": [{"kind": "perplexity", "tokens": 2048, "seq_len": 16}]}
    with pytest.raises(UserError, match=rf"the tokenizer's largest id is {largest} .* embedding has 64 rows"):
        ptq_eval.evaluate(tiny_model, tokenizer, store=tmp_path / "api.sqlite", **args)
