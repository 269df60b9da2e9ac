"""Every eval kind's job keys, pinned as they were before eval kinds became a registry: a store written by an
earlier version keeps finding its results (a label and the lm-eval backend are not in keys)."""

import pytest

from ptq_eval.jobs import expand_jobs
from ptq_eval.spec import parse_study

PINNED = [
    ({"kind": "perplexity"}, "3445c62048648618384e5528", "198e4e80a1a133c931f36503"),
    ({"kind": "perplexity", "tokens": 1024, "seq_len": 64}, "26275f652f32b75f59fcc49c", "c6e96c3785bfda1f4b0ecf62"),
    (
        {"kind": "perplexity", "corpus": "wikitext2", "split": "test", "seq_len": 128, "batch_size": 4, "label": "w"},
        "22b6cc778ef5b4e2f70d9eb6",
        "b4ef7f03eaf6239a512f8a8a",
    ),
    ({"kind": "perplexity", "tokens": None}, "c10801c426184659811b5c5a", "0ce2cf9f6c1872675456d15b"),
    (
        {"kind": "perplexity", "windows": "rolling", "documents": 5},
        "1a3019798030cf9fec86cda8",
        "a59c3ab17a951aae42160865",
    ),
    (
        {"kind": "perplexity", "windows": "rolling", "stride": 32, "seq_len": 64},
        "c89e311138cff8f4d5379e2b",
        "b332d8f4d797f2615d898664",
    ),
    ({"kind": "perplexity", "autocast": "bfloat16"}, "8930cb549b636f4504e18d66", "00a2853b22257901b58899b5"),
    ({"kind": "perplexity", "bos": "always"}, "ed030be080b865c668c40a40", "be5c61afdf83dfd1238c601f"),
    (
        {"kind": "perplexity", "bos": "never", "windows": "spread"},
        "106998b80c63af17d71dae42",
        "83ecfe96394dd4f2b880a96e",
    ),
    ({"kind": "lm_eval", "task": "arc_easy"}, "1376f8ce799c46065f0a98c8", "69a4127231be7d9a42114458"),
    (
        {"kind": "lm_eval", "task": "hellaswag", "limit": 100, "num_fewshot": 0, "batch_size": 8},
        "50130ab44928044d832abad9",
        "b93a783f4704adc421548365",
    ),
    (
        {"kind": "lm_eval", "task": "arc_easy", "backend": "hflm", "label": "a"},
        "1376f8ce799c46065f0a98c8",
        "69a4127231be7d9a42114458",
    ),
    (
        {"kind": "lm_eval", "task": "tasks/lm_eval/arc_easy_local.yaml", "data_dir": "${PTQ_EVAL_DATA}/lm_eval"},
        "e2d03b614f61c87316adbccf",
        "6da964becc87a60774f18dc4",
    ),
]


@pytest.mark.parametrize(("evaluation", "key", "baseline_key"), PINNED)
def test_eval_job_keys_are_the_ones_stores_already_hold(evaluation, key, baseline_key):
    study = parse_study(
        {"name": "s", "ladder": ["a/b@step1000"], "quant": [{"method": "rtn", "bits": 4}], "evals": [evaluation]}
    )
    (job,) = expand_jobs(study)
    assert (job.key, job.baseline().key) == (key, baseline_key)
