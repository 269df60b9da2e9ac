import pytest
import yaml

from ptq_eval.jobs import checkpoints, expand_jobs
from ptq_eval.spec import StudyError, load_study, parse_study

GOOD = {
    "name": "s",
    "ladder": [
        "a/b@step1000",
        {"checkpoint": "local/dir", "tokens": 5000},
        {"family": "pythia", "sizes": ["70m"], "steps": [1, 2]},
    ],
    "quant": [{"method": "rtn", "bits": [3, 4], "group_size": [-1, 32]}],
    "evals": [{"kind": "perplexity", "tokens": 1024, "seq_len": 64}],
}


def write(tmp_path, data) -> str:
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def with_changes(**changes):
    return {**GOOD, **changes}


def error_of(tmp_path, data) -> str:
    with pytest.raises(StudyError) as raised:
        load_study(write(tmp_path, data))
    return str(raised.value)


def test_a_good_study_expands_into_jobs_with_stable_keys(tmp_path):
    study = load_study(write(tmp_path, GOOD))
    refs = [c.reference for c in checkpoints(study)]
    assert refs == ["a/b@step1000", "local/dir", "EleutherAI/pythia-70m@step1", "EleutherAI/pythia-70m@step2"]
    jobs = expand_jobs(study)
    assert len(jobs) == 4 * 4
    assert len({job.key for job in jobs}) == len(jobs)
    assert [job.key for job in expand_jobs(load_study(write(tmp_path, GOOD)))] == [job.key for job in jobs]
    assert jobs[0].baseline().quant is None and jobs[0].baseline().key not in {job.key for job in jobs}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"quant": [GOOD["quant"][0], {"method": "rtn", "bits": 1}]}, "quant[1].bits: 1 is not in 2..16"),
        ({"quant": [{"method": "rtn", "bits": [4, 17]}]}, "quant[0].bits: 17 is not in 2..16"),
        ({"quant": [{"method": "magic", "bits": 4}]}, "quant[0].method: 'magic' is not a method; accepted: rtn"),
        ({"quant": [{"method": "rtn", "bits": 4, "group_size": -5}]}, "quant[0].group_size: -5 is not accepted"),
        (
            {"quant": [{"method": "rtn", "bits": 4, "groupsize": 32}]},
            "quant[0]: groupsize: unknown key; a quant grid takes method, format, bits, group_size, symmetric, "
            "scheme, activations, kv_cache and the options of method rtn (rotation, rotation_seed, scale_dtype)",
        ),
        ({"evals": [{"kind": "perplexity", "tokens": -1}]}, "evals[0].tokens: Input should be greater than 0"),
        (
            {"evals": [{"kind": "bleu"}]},
            "evals[0]: Input tag 'bleu' found using 'kind' does not match any of the expected tags: "
            "'perplexity', 'lm_eval'",
        ),
        (
            {"ladder": [{"family": "gpt9", "sizes": ["1"], "steps": [1]}]},
            "ladder[0].family: unknown ladder family 'gpt9'; known: ",
        ),
        (
            {"ladder": [{"family": "pythia", "sizes": ["7b"], "steps": [1]}]},
            "ladder[0]: family pythia has no size '7b'; known: 14m, 31m",
        ),
        (
            {"ladder": [{"family": "pythia", "sizes": ["70m"], "steps": [1], "count": 3}]},
            "ladder[0]: give exactly one of steps, revisions, or tokens/count/every",
        ),
        ({"ladder": [{"checkpoint": "x", "tokens": 0}]}, "ladder[0].tokens: Input should be greater than 0"),
        ({"dtype": "int8"}, "dtype: Input should be 'float32', 'bfloat16' or 'float16'"),
        (
            {"dtype": "bfloat16", "quant": [{"method": "rtn", "bits": [4, 12]}]},
            "quant: bits=12 (symmetric) cannot be held exactly in bfloat16: its levels need 11 significant bits, "
            "the dtype has 8; use at most 9 bits or dtype float32",
        ),
        ({"colour": "red"}, "colour: unknown key"),
    ],
)
def test_bad_specs_name_file_key_path_and_accepted_values(tmp_path, change, message):
    text = error_of(tmp_path, with_changes(**change))
    assert text.startswith(str(tmp_path / "study.yaml") + ": ")
    assert message in text


def test_missing_keys_are_reported(tmp_path):
    data = dict(GOOD)
    del data["quant"]
    assert "quant: required key is missing" in error_of(tmp_path, data)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(StudyError, match="no such study file"):
        load_study(tmp_path / "nope.yaml")
    path = tmp_path / "bad.yaml"
    path.write_text("name: [unclosed")
    with pytest.raises(StudyError, match="not valid YAML"):
        load_study(path)


def test_a_glob_that_matches_nothing_is_an_error(tmp_path):
    study = parse_study(with_changes(ladder=[str(tmp_path / "none" / "*")]))
    with pytest.raises(StudyError, match="matches no checkpoint directory"):
        checkpoints(study)


def test_perplexity_evals_written_before_the_rolling_options_keep_their_job_keys():
    study = parse_study(with_changes(ladder=["a/b@step1000"], quant=[{"method": "rtn", "bits": 4}]))
    (job,) = expand_jobs(study)
    assert job.key == "26275f652f32b75f59fcc49c"  # the key this job had before `windows`, `stride`, ... existed
    rolling = parse_study(with_changes(evals=[{"kind": "perplexity", "windows": "rolling", "seq_len": 64}]))
    assert expand_jobs(rolling)[0].eval.name == "ppl:stdlib-python:validation:rolling"
    assert expand_jobs(rolling)[0].describe()["eval_config"]["windows"] == "rolling"


def test_lm_eval_jobs_keep_their_keys_whichever_backend_scores_them():
    keys = {
        backend: expand_jobs(
            parse_study(
                with_changes(
                    ladder=["a/b@step1000"],
                    quant=[{"method": "rtn", "bits": 4}],
                    evals=[{"kind": "lm_eval", "task": "arc_easy", "limit": 50, "backend": backend}],
                )
            )
        )[0].key
        for backend in ("ptq_eval", "hflm")
    }
    assert keys == {"ptq_eval": "b3cd764c0219ce4cc1d91f8e", "hflm": "b3cd764c0219ce4cc1d91f8e"}  # as before `backend`


@pytest.mark.parametrize(
    ("evaluation", "message"),
    [
        ({"kind": "perplexity", "stride": 8}, "evals[0]: stride and documents apply to windows: rolling only"),
        ({"kind": "perplexity", "windows": "rolling", "tokens": 10}, "evals[0]: tokens applies to windows: spread"),
        ({"kind": "perplexity", "windows": "rolling", "seq_len": 8, "stride": 9}, "stride 9 exceeds seq_len 8"),
        ({"kind": "perplexity", "autocast": "float16"}, "evals[0].autocast: Input should be 'bfloat16'"),
        ({"kind": "lm_eval"}, "evals[0].task: required key is missing"),
        ({"kind": "lm_eval", "task": "nope/missing.yaml"}, "'nope/missing.yaml': no such task YAML file"),
        ({"kind": "lm_eval", "task": "arc_easy", "limit": 0}, "evals[0].limit: Input should be greater than 0"),
        ({"kind": "lm_eval", "task": "arc_easy", "backend": "vllm"}, "evals[0].backend: Input should be 'ptq_eval'"),
    ],
)
def test_bad_eval_options_are_named(tmp_path, evaluation, message):
    assert message in error_of(tmp_path, with_changes(evals=[evaluation]))


def test_lm_eval_evals_are_named_by_their_task():
    study = parse_study(
        with_changes(
            evals=[
                {"kind": "lm_eval", "task": "hellaswag", "limit": 100, "num_fewshot": 0},
                {"kind": "lm_eval", "task": "tasks/lm_eval/stdlib_python.yaml"},
            ]
        )
    )
    assert [evaluation.name for evaluation in study.evals] == ["hellaswag", "stdlib_python"]
    assert study.evals[0].key_config() == {
        "kind": "lm_eval",
        "task": "hellaswag",
        "limit": 100,
        "num_fewshot": 0,
        "batch_size": 16,
        "data_dir": None,
    }
