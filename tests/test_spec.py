import pytest
import yaml

from ptq_eval.spec import StudyError, checkpoints, expand_jobs, load_study, parse_study

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
        ({"quant": [{"method": "rtn", "bits": 4, "groupsize": 32}]}, "quant[0].groupsize: unknown key"),
        ({"evals": [{"kind": "perplexity", "tokens": -1}]}, "evals[0].tokens: Input should be greater than 0"),
        (
            {"evals": [{"kind": "bleu"}]},
            "evals[0]: Input tag 'bleu' found using 'kind' does not match any of the expected tags: 'perplexity'",
        ),
        ({"ladder": [{"family": "gpt9", "sizes": ["1"], "steps": [1]}]}, "ladder[0].family: Input should be 'pythia'"),
        ({"ladder": [{"checkpoint": "x", "tokens": 0}]}, "ladder[0].tokens: Input should be greater than 0"),
        ({"dtype": "int8"}, "dtype: Input should be 'float32', 'bfloat16' or 'float16'"),
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
