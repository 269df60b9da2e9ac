"""lm-eval bridge: tasks scored on the model in memory, paired per document, parity of our
rolling perplexity with lm-eval's, and clear errors offline."""

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from in_process import cli

from ptq_eval.evals.harness import HarnessError, evaluate_task, load_tasks
from ptq_eval.evals.kinds import LmEvalEval
from ptq_eval.evals.paired import paired_metrics
from ptq_eval.evals.perplexity import document_metrics, window_losses
from ptq_eval.evals.windows import rolling_windows
from ptq_eval.quant import DEFAULT_EXCLUDE, QuantConfig, quantizable_weights, quantize

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
ROLLING_METRICS = ("word_perplexity", "byte_perplexity", "bits_per_byte")


def readme_documents() -> list[str]:
    """Project-shipped text of varied lengths: the README, one document per section."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return [section if i == 0 else "## " + section for i, section in enumerate(text.split("\n## "))]


def write_task(directory: Path, name: str, documents: list[dict], **config) -> Path:
    """A local lm-eval task in lm-eval's own format: `dataset_path: json` + `data_files`."""
    data = directory / f"{name}.jsonl"
    data.write_text("".join(json.dumps(document) + "\n" for document in documents))
    dataset = {"data_files": {"validation": str(data)}, "cache_dir": str(directory / "hf-cache")}
    task = {"task": name, "dataset_path": "json", "dataset_kwargs": dataset, "validation_split": "validation"}
    path = directory / f"{name}.yaml"
    path.write_text(json.dumps(task | config))  # JSON is YAML
    return path


def rolling_task(directory: Path, texts: list[str]) -> Path:
    documents = [{"text": text} for text in texts]
    metrics = [{"metric": name} for name in ROLLING_METRICS]
    config = {"output_type": "loglikelihood_rolling", "doc_to_text": "", "doc_to_target": "text"}
    return write_task(directory, "readme_rolling", documents, metric_list=metrics, **config)


def choice_task(directory: Path, documents: int = 40) -> Path:
    """Constructed multiple-choice items: which continuation the code most likely takes."""
    rng = random.Random(0)
    names = ["x", "value", "items", "self", "path", "result"]
    items = []
    for _ in range(documents):
        name = rng.choice(names)
        choices = [f" {name}", " (", " 0", " None"]
        rng.shuffle(choices)
        items.append({"query": f"def f({name}):\n    return", "choices": choices, "gold": choices.index(f" {name}")})
    metrics = [{"metric": m, "aggregation": "mean", "higher_is_better": True} for m in ("acc", "acc_norm")]
    config = {"output_type": "multiple_choice", "doc_to_text": "{{query}}", "doc_to_target": "gold"}
    return write_task(directory, "code_choice", items, doc_to_choice="{{choices}}", metric_list=metrics, **config)


@pytest.fixture(scope="module")
def micro(micro_checkpoint):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(micro_checkpoint).eval(), AutoTokenizer.from_pretrained(
        micro_checkpoint
    )


def lm_eval(task: Path | str, **options) -> LmEvalEval:
    return LmEvalEval(kind="lm_eval", task=str(task), **options)


@pytest.mark.parametrize("backend", ["hflm", "ptq_eval"])
def test_our_rolling_perplexity_reproduces_lm_eval(micro, tmp_path, backend):
    model, tokenizer = micro
    evaluation = lm_eval(rolling_task(tmp_path, readme_documents()), batch_size=8, backend=backend)
    theirs = evaluate_task(model, tokenizer, load_tasks(evaluation), evaluation)
    windows = rolling_windows(tokenizer, readme_documents(), model.config.max_position_embeddings)
    ours = {m.name: m for m in document_metrics(window_losses(model, windows, batch_size=8), windows)}
    reported = theirs.details["lm_eval"]["results"]["readme_rolling"]
    for metric in theirs.metrics:
        assert metric.value == pytest.approx(ours[metric.name].value, rel=1e-5)
        assert metric.value == pytest.approx(reported[f"{metric.name},none"], rel=1e-12)
        np.testing.assert_allclose(-metric.values, ours[metric.name].values, rtol=1e-5)  # per document
    assert [m.name for m in theirs.metrics] == sorted(ROLLING_METRICS)


def test_the_shipped_reference_corpus_task_loads_offline():
    from ptq_eval.corpus import load_corpus

    evaluation = lm_eval("tasks/lm_eval/stdlib_python.yaml", limit=1)
    assert evaluation.name == "stdlib_python"
    task = load_tasks(evaluation).tasks["stdlib_python"]
    documents = [task.doc_to_target(document) for document in task.validation_docs()]
    assert documents == list(load_corpus("stdlib-python", "validation").texts())
    assert task.OUTPUT_TYPE == "loglikelihood_rolling"


def test_multiple_choice_deltas_pair_document_by_document(micro_checkpoint, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(micro_checkpoint).eval()
    tokenizer = AutoTokenizer.from_pretrained(micro_checkpoint)
    evaluation = lm_eval(choice_task(tmp_path), batch_size=16)
    loaded = load_tasks(evaluation)
    fp = evaluate_task(model, tokenizer, loaded, evaluation)
    again = evaluate_task(model, tokenizer, loaded, evaluation)
    assert [m.name for m in fp.metrics] == ["acc", "acc_norm"] and fp.metrics[0].n == 40
    same = paired_metrics(fp.metrics, again.metrics)
    assert all(m.delta == 0 and m.ci_low == m.ci_high == 0 for m in same)
    quantize(model, QuantConfig(method="rtn", bits=2, group_size=-1), DEFAULT_EXCLUDE)
    quant = evaluate_task(model, tokenizer, loaded, evaluation)
    for metric in paired_metrics(fp.metrics, quant.metrics):
        assert metric.ci_low <= metric.delta <= metric.ci_high and metric.n == 40
        reported = quant.details["lm_eval"]["results"]["code_choice"][f"{metric.metric},none"]
        assert metric.quant_value == pytest.approx(reported)


@pytest.mark.parametrize("backend", ["hflm", "ptq_eval"])
def test_flips_count_the_documents_whose_answer_changed(micro_checkpoint, tmp_path, backend):
    """Flips from each run's own answers (the choices' log-likelihoods lm-eval logged), through both backends,
    from a baseline restored from its stored arrays; never below |Δacc|."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ptq_eval.evals.kinds import CheckpointView

    model = AutoModelForCausalLM.from_pretrained(micro_checkpoint).eval()
    tokenizer = AutoTokenizer.from_pretrained(micro_checkpoint)
    evaluation = lm_eval(choice_task(tmp_path), batch_size=16, backend=backend)
    view = CheckpointView("micro", tokenizer, "tok", None, 0, {})
    evaluator = evaluation.evaluator(view)
    fp = evaluator.restore(evaluator.score(model).arrays, model)  # as a resumed study finds it
    fp_choices = load_tasks(evaluation)  # the answers themselves, from lm-eval's own per-document log
    with torch.no_grad():  # damage enough to change answers on this easy task
        for weight in (w.read() for w in quantizable_weights(model)):
            weight.add_(torch.randn(weight.shape, generator=torch.Generator().manual_seed(0)) * weight.std())
    quant = evaluator.score(model, fp)
    paired = {m.metric: m for m in paired_metrics(fp.metrics, quant.metrics)}
    assert set(paired) == {"acc", "acc_norm", "flips", "flips_to_wrong", "flips_to_right", "all_flips", "choice_kld"}
    assert all(paired[m].fp_value == 0 for m in ("flips", "all_flips", "choice_kld"))
    fp_answers = np.split(fp.arrays["code_choice:choice_lls"], np.cumsum(fp.arrays["code_choice:choice_counts"])[:-1])
    q_answers = np.split(
        quant.arrays["code_choice:choice_lls"], np.cumsum(quant.arrays["code_choice:choice_counts"])[:-1]
    )
    changed = np.mean([np.argmax(a) != np.argmax(b) for a, b in zip(fp_answers, q_answers, strict=True)])
    assert paired["all_flips"].quant_value == pytest.approx(changed) and changed > 0
    flips = paired["flips"].quant_value
    assert flips == pytest.approx(paired["flips_to_wrong"].quant_value + paired["flips_to_right"].quant_value)
    assert abs(paired["acc"].delta) - 1e-12 <= flips <= paired["all_flips"].quant_value
    assert paired["acc"].delta == pytest.approx(
        paired["flips_to_right"].quant_value - paired["flips_to_wrong"].quant_value
    )
    assert paired["choice_kld"].quant_value > 0 and paired["flips"].ci_low <= flips <= paired["flips"].ci_high
    assert fp_choices.choice_tasks() == ["code_choice"]


def test_an_unreachable_hub_task_names_itself_and_the_local_way():
    with pytest.raises(HarnessError) as raised:
        load_tasks(lm_eval("hellaswag"))
    message = str(raised.value)
    assert "'hellaswag'" in message and "Rowan/hellaswag" in message and "dataset_path: json" in message


def test_an_unknown_task_name_suggests_close_ones():
    with pytest.raises(
        HarnessError, match="neither an lm-eval task name nor a task YAML file; close matches: hellaswag"
    ):
        load_tasks(lm_eval("hellaswagg"))


@pytest.mark.skipif(not (SHARED_DATA / "eval" / "arc_easy.jsonl").is_file(), reason="../shared/data is absent")
def test_a_shipped_multiple_choice_task_reads_the_shared_data():
    loaded = load_tasks(lm_eval("tasks/lm_eval/arc_easy_local.yaml", data_dir=str(SHARED_DATA)))
    task = loaded.tasks["arc_easy_local"]
    documents = list(task.test_docs())
    assert len(documents) == 2376
    first = documents[0]
    assert task.doc_to_text(first).startswith("Question: ") and task.doc_to_text(first).endswith("\nAnswer:")
    assert task.doc_to_choice(first)[task.doc_to_target(first)] == first["choices"][first["gold"]]


def test_a_missing_data_dir_is_a_clear_error(tmp_path):
    with pytest.raises(HarnessError, match="no such data file"):
        load_tasks(lm_eval("tasks/lm_eval/arc_easy_local.yaml", data_dir=str(tmp_path)))


def test_data_dir_expands_environment_variables_when_the_task_loads(monkeypatch, tmp_path):
    from ptq_eval.spec import load_study

    shipped = load_study(ROOT / "tasks" / "demo-lm-eval.yaml").evals[-1]  # names no machine's folder
    assert shipped.data_dir == "${PTQ_EVAL_DATA}"  # and its job keys do not depend on one
    monkeypatch.delenv("PTQ_EVAL_DATA", raising=False)
    with pytest.raises(HarnessError, match=r"'\$\{PTQ_EVAL_DATA\}': environment variable PTQ_EVAL_DATA is not set"):
        load_tasks(shipped)
    monkeypatch.setenv("PTQ_EVAL_DATA", str(tmp_path))
    with pytest.raises(HarnessError, match=f"{tmp_path}/eval/arc_easy.jsonl: no such data file"):
        load_tasks(shipped)


STUDY = """
name: mixed
ladder: [{checkpoint}]
quant: [{{method: rtn, bits: {bits}}}]
evals:
  - {{kind: perplexity, tokens: 2048, seq_len: 32}}
  - {{kind: perplexity, corpus: {readme}, windows: rolling, seq_len: 32}}
  - {{kind: lm_eval, task: {rolling}, batch_size: 16}}
  - {{kind: lm_eval, task: {choice}}}
"""


def test_a_study_mixes_perplexity_and_lm_eval_tasks_with_paired_deltas(micro_checkpoint, tmp_path):
    from ptq_eval.results import study_results
    from ptq_eval.spec import load_study
    from ptq_eval.store import Store

    readme = tmp_path / "readme"  # one document (a split file), for both the rolling eval and the lm-eval task
    readme.mkdir()
    (readme / "validation.txt").write_text((ROOT / "README.md").read_text())
    text = (readme / "validation.txt").read_text()
    paths = {"rolling": rolling_task(tmp_path, [text]), "choice": choice_task(tmp_path), "readme": readme}
    study, store = tmp_path / "mixed.yaml", str(tmp_path / "mixed.sqlite")
    study.write_text(STUDY.format(checkpoint=micro_checkpoint, bits="[3, 8]", **paths))
    first = cli("run", str(study), "--store", store)
    assert "## code_choice: acc\n" in first.stdout and "## readme_rolling: word_perplexity\n" in first.stdout
    with Store(store) as opened:
        frame = study_results(load_study(study), opened)
    assert (frame.delta_ci_low <= frame.delta).all() and (frame.delta <= frame.delta_ci_high).all()
    rows = frame.set_index(["eval", "metric", "bits"])
    assert rows.loc[("code_choice", "acc", 3), "n"] == 40
    ours = rows.loc[(f"ppl:{readme}:validation:rolling", "word_perplexity", 3), "fp_value"]
    assert ours == pytest.approx(rows.loc[("readme_rolling", "word_perplexity", 3), "fp_value"], rel=1e-5)
    # A grown study pairs its new configs with the stored baselines (per-document arrays), never rescoring them.
    study.write_text(STUDY.format(checkpoint=micro_checkpoint, bits="[3, 4, 8]", **paths))
    assert "4 jobs run, 8 already in" in cli("run", str(study), "--store", store).stderr
    with Store(store) as opened:
        grown = study_results(load_study(study), opened)
    assert grown.groupby(["eval", "metric"]).fp_value.nunique().eq(1).all()
