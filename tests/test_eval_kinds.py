"""The eval kinds' registry: what every kind must declare, and what the runner then does for a kind without
being told (its text hashed into job inputs, calibration text refused where it shares documents with it)."""

from pathlib import Path
from typing import Literal

import pytest

from ptq_eval.evals.kinds import EVAL_KINDS, EvalKind, LmEvalEval, PerplexityEval, Text
from ptq_eval.identity import WHAT, CheckpointIdentity, data_identities, job_inputs
from ptq_eval.jobs import CheckpointSpec, Job
from ptq_eval.quant import QuantConfig
from ptq_eval.runner import check_calibration_disjoint
from ptq_eval.spec import StudyError, parse_study

STDLIB_TASK = Path(__file__).resolve().parents[1] / "tasks" / "lm_eval" / "stdlib_python.yaml"


class Scores(EvalKind):
    """A kind of this test's own: it scores the stdlib corpus's train split."""

    kind: Literal["scores"] = "scores"

    @property
    def name(self) -> str:
        return "scores"

    def scored_text(self) -> Text:
        return Text("stdlib-python", "train")

    def inputs(self, tokenizer) -> dict:
        return {}

    def metrics(self) -> list[str]:
        return ["loss"]

    def evaluator(self, checkpoint):
        raise NotImplementedError  # never scored here


def test_every_registered_kind_is_named_by_its_kind_and_says_its_inputs_in_words():
    assert list(EVAL_KINDS) == ["perplexity", "lm_eval"]
    assert EVAL_KINDS["perplexity"] is PerplexityEval and EVAL_KINDS["lm_eval"] is LmEvalEval
    for kind in EVAL_KINDS.values():
        assert set(kind.INPUTS) <= set(WHAT) and set(kind.RECORDED_BEFORE) <= set(kind.INPUTS)


def test_a_kind_that_does_not_say_what_text_it_scores_cannot_be_built():
    class Forgetful(EvalKind):
        kind: Literal["forgetful"] = "forgetful"

        @property
        def name(self) -> str:
            return "forgetful"

        def inputs(self, tokenizer) -> dict:
            return {}

        def metrics(self) -> list[str]:
            return ["loss"]

        def evaluator(self, checkpoint):
            raise NotImplementedError

    with pytest.raises(TypeError, match="scored_text"):
        Forgetful()


def _jobs(evaluation) -> tuple:
    study = parse_study({"name": "s", "ladder": ["a/b@main"], "quant": [{"method": "gptq", "bits": 4}],
                         "evals": [{"kind": "perplexity"}], "calibration": {"corpus": "stdlib-python"}})  # fmt: skip
    config = QuantConfig(method="gptq", bits=4, group_size=-1, symmetric=True)
    job = Job(CheckpointSpec("a/b@main"), config, evaluation, "float32", 0, (), study.calibration)
    return study, [job]


def test_a_new_kind_has_its_text_hashed_into_job_inputs_and_checked_against_calibration():
    study, jobs = _jobs(Scores())
    data = data_identities(study, jobs)
    checkpoint = CheckpointIdentity("git:abc", "tok")
    assert job_inputs(jobs[0], checkpoint, data)["eval_data"] == data["calibration"]  # the same split, hashed
    with pytest.raises(StudyError, match="shares .* documents with eval scores"):
        check_calibration_disjoint(study, jobs)


def test_a_kind_whose_options_identify_its_data_records_none_and_is_not_checked():
    study, jobs = _jobs(LmEvalEval(kind="lm_eval", task=str(STDLIB_TASK), backend="hflm"))
    data = data_identities(study, jobs)
    inputs = job_inputs(jobs[0], CheckpointIdentity("git:abc", "tok"), data)
    assert inputs["eval_data"] is None and inputs["scorer"] == "hflm"
    assert inputs["choices"] is False  # a rolling-perplexity task: nothing to flip, and earlier stores stay fresh
    check_calibration_disjoint(study, jobs)  # nothing to compare: no error
