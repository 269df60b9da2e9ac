"""The packed lm-eval scorer: every request's answer equals reading it alone through the whole model (every
architecture, contexts shared or not, truncated, repeated), and per-document answers equal lm-eval's HFLM on
real task data."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from test_architectures import CONFIGS, VOCAB

from ptq_eval.evals.loglikelihood import can_share_contexts, score_requests
from ptq_eval.evals.model_parts import model_parts

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
STORIES = SHARED_DATA / "models" / "stories260K-hf"
MAX_LENGTH = 24  # shorter than some requests: their contexts are cut from the left, as HFLM cuts them
FLOAT_NOISE = 1e-4  # nats, float32 sums of a few tokens read through differently shaped matrices
SLIDING_WINDOWS = {"gemma2", "gemma3", "gpt_oss_transposed_experts", "mistral", "qwen2"}  # caches not reused


def requests(seed: int = 0) -> list[tuple[list[int], list[int]]]:
    """Multiple-choice-like groups (one context, 1-4 continuations of 1-5 tokens), some longer than the
    model reads, a repeated request, a one-token continuation beside longer ones."""
    rng = random.Random(seed)
    out = []
    for _ in range(14):
        context = [rng.randrange(VOCAB) for _ in range(rng.randrange(1, 30))]
        out += [
            (context, [rng.randrange(VOCAB) for _ in range(rng.randrange(1, 6))]) for _ in range(rng.randrange(1, 5))
        ]
    out.append(out[3])
    return out


def one_at_a_time(model, pairs, max_length: int) -> list[tuple[float, bool]]:
    """The definition: each request alone, through the whole model, log-softmax over every position."""
    answers = []
    with torch.inference_mode():
        for context, continuation in pairs:
            whole = (context + continuation)[-(max_length + 1) :]
            logits = model(input_ids=torch.tensor([whole[:-1]]), use_cache=False).logits[0].float().log_softmax(-1)
            scored, targets = logits[-len(continuation) :], torch.tensor(continuation)
            chosen = scored.gather(1, targets[:, None])[:, 0]
            answers.append((float(chosen.double().sum()), bool((scored.argmax(-1) == targets).all())))
    return answers


def assert_same_answers(ours, reference, tolerance: float = FLOAT_NOISE) -> None:
    assert len(ours) == len(reference)
    assert [greedy for _, greedy in ours] == [greedy for _, greedy in reference]
    np.testing.assert_allclose([ll for ll, _ in ours], [ll for ll, _ in reference], rtol=0, atol=tolerance)


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def family_model(request):
    torch.manual_seed(0)
    config = CONFIGS[request.param]()
    import transformers

    return request.param, transformers.AutoModelForCausalLM.from_config(config).eval()


def test_every_answer_equals_the_request_read_alone(family_model):
    family, model = family_model
    pairs = requests()
    reference = one_at_a_time(model, pairs, MAX_LENGTH)
    assert_same_answers(score_requests(model, pairs, MAX_LENGTH, batch_size=5), reference)
    assert_same_answers(score_requests(model, pairs, MAX_LENGTH, batch_size=3, share=False), reference)
    shares = can_share_contexts(model_parts(model, torch.device("cpu")), torch.device("cpu"))
    assert shares == (family not in SLIDING_WINDOWS), f"{family}: contexts shared: {shares}"


def test_a_request_the_model_cannot_score_is_an_error_naming_its_sizes(tiny_model):
    with pytest.raises(ValueError, match="0 continuation tokens"):
        score_requests(tiny_model, [([1, 2], [])], max_length=16)
    with pytest.raises(ValueError, match="17 continuation tokens.*16 tokens"):
        score_requests(tiny_model, [([1], [3] * 17)], max_length=16)


def test_the_backend_is_registered_with_lm_eval():
    from lm_eval.api.registry import get_model

    from ptq_eval.evals.lm_backend import PackedLM

    assert get_model("ptq_eval") is PackedLM


TASKS = ["arc_easy", "hellaswag", "piqa", "lambada", "winogrande"]


def per_document(model, tokenizer, task: str, backend: str) -> dict:
    from lm_eval import simple_evaluate

    from ptq_eval.evals.harness import lm_backend, load_tasks
    from ptq_eval.evals.kinds import LmEvalEval

    evaluation = LmEvalEval(
        kind="lm_eval", task=f"tasks/lm_eval/{task}_local.yaml", limit=12, data_dir=str(SHARED_DATA), backend=backend
    )
    loaded = load_tasks(evaluation)
    lm = lm_backend(backend)(pretrained=model, tokenizer=tokenizer, batch_size=4)
    out = simple_evaluate(lm, tasks=list(loaded.tasks.values()), limit=12, log_samples=True, bootstrap_iters=0)
    (samples,) = out["samples"].values()
    return {row["doc_id"]: (row["filtered_resps"], row["metrics"], row) for row in samples}


@pytest.mark.skipif(not STORIES.is_dir() or not (SHARED_DATA / "eval").is_dir(), reason="../shared/data is absent")
@pytest.mark.parametrize("task", TASKS)
def test_per_document_answers_equal_hflm_on_real_tasks(task):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tokenizer = AutoModelForCausalLM.from_pretrained(STORIES).eval(), AutoTokenizer.from_pretrained(STORIES)
    theirs, ours = (per_document(model, tokenizer, task, backend) for backend in ("hflm", "ptq_eval"))
    assert sorted(ours) == sorted(theirs) and len(ours) == 12
    for doc, (their_answers, _, their_row) in theirs.items():
        our_answers, _, our_row = ours[doc]
        assert_same_answers([tuple(a) for a in our_answers], [tuple(a) for a in their_answers])
        for metric in their_row["metrics"]:
            if metric != "perplexity":  # per-document perplexity is the log-likelihood itself, compared above
                assert our_row[metric] == their_row[metric], (task, doc, metric)
