"""Every method's job keys, pinned as they were before methods carried their options and configs a format:
a store written by an earlier version keeps finding its results."""

import pytest

from ptq_eval.jobs import expand_jobs
from ptq_eval.spec import parse_study

CALIBRATION = {"corpus": "stdlib-python", "samples": 16, "seq_len": 64}
BASELINE_KEY = "c6e96c3785bfda1f4b0ecf62"


def job_of(grid: dict):
    study = parse_study(
        {
            "name": "s",
            "ladder": ["a/b@step1000"],
            "quant": [grid],
            "evals": [{"kind": "perplexity", "tokens": 1024, "seq_len": 64}],
            "calibration": CALIBRATION,
        }
    )
    (job,) = expand_jobs(study)
    return job


@pytest.mark.parametrize(
    ("grid", "key"),
    [
        ({"method": "rtn", "bits": 4}, "26275f652f32b75f59fcc49c"),
        ({"method": "rtn", "bits": 3, "group_size": 128}, "fee8f0882e1759e5bd32c539"),
        ({"method": "rtn", "bits": 8, "group_size": 0, "symmetric": False}, "5145d96d7124659b71c57fa5"),
        ({"method": "rtn", "bits": 4, "format": "int"}, "26275f652f32b75f59fcc49c"),
        ({"method": "gptq", "bits": 4}, "9b92c1103f68aeb45d1adeb6"),
        (
            {"method": "gptq", "bits": 4, "group_size": 128, "act_order": True, "static_groups": True},
            "e0492810fd5a235e4ab2ff41",
        ),
        ({"method": "gptq", "bits": 3, "damp": 0.1, "block_size": 64, "symmetric": False}, "473f1a5aeda0160485b5fb34"),
        ({"method": "gptq", "bits": 4, "sequential": "layer"}, "a9801d78738da84895ec5e41"),
        ({"method": "gptq", "bits": 4, "sequential": "block"}, "9b92c1103f68aeb45d1adeb6"),
        ({"method": "gptq", "bits": 5, "group_size": 32, "sequential": "none"}, "df2e7ab441df7269e0edfcd1"),
        ({"method": "rtn", "bits": 4, "rotation": "none", "rotation_seed": 0}, "26275f652f32b75f59fcc49c"),
        ({"method": "gptq", "bits": 4, "rotation": "none"}, "9b92c1103f68aeb45d1adeb6"),
        # pinned when AWQ and rotations came (2026-12-06)
        ({"method": "awq", "bits": 4}, "79ff7ae3eeef695f4b71c5fb"),
        ({"method": "awq", "bits": 3, "group_size": 32, "rotation": "hadamard"}, "ef9a5aab95bba74ff7380769"),
        ({"method": "rtn", "bits": 4, "rotation": "hadamard"}, "e268356e97e1de675524433a"),
        ({"method": "gptq", "bits": 4, "rotation": "hadamard", "rotation_seed": 3}, "65739f5db91df378fb3eb3f5"),
        # pinned when activation and KV-cache precision came (2026-12-07); the keys above did not move
        ({"kv_cache": "int4"}, "eb1ba94b98088065b6fb80c1"),
        ({"kv_cache": "fp8"}, "7a8aa8d8d066d8b9cf69d1c4"),
        ({"kv_cache": {"format": "int", "bits": 4, "per": "head", "hadamard": True}}, "05c76aba0f8febc8aecb3a09"),
        ({"activations": "int8"}, "64d7c3a80614e81533fd8a7e"),
        ({"method": "rtn", "scheme": "W8A8"}, "b5f22fe656201a34ef007dfb"),
        ({"method": "gptq", "scheme": "W4A8"}, "c669696c3609661715077562"),
        ({"method": "rtn", "bits": 4, "kv_cache": "q8_0"}, "afdfd95ce890e17d79634f78"),
    ],
)
def test_job_keys_are_the_ones_stores_already_hold(grid, key):
    job = job_of(grid)
    assert job.key == key
    assert job.baseline().key == BASELINE_KEY


def test_a_format_other_than_int_enters_the_key():
    int4 = job_of({"method": "rtn", "bits": 4, "group_size": 16})
    nvfp4 = job_of({"method": "rtn", "format": "nvfp4"})
    assert nvfp4.describe()["format"] == "nvfp4" and "format" not in int4.describe()
    assert nvfp4.key != int4.key and nvfp4.baseline().key == int4.baseline().key == BASELINE_KEY
