"""One GPTQ solve for everything that shares a Hessian: each part bit-identical to its own solve (CPU)."""

from __future__ import annotations

import copy

import pytest
import torch
import transformers

from ptq_eval.quant import DEFAULT_EXCLUDE, QuantConfig, quantizable_weights, quantize
from ptq_eval.quant import gptq_solve as solve_module
from ptq_eval.quant.gptq_solve import gptq_solve, gptq_weight

SWEEP = [
    QuantConfig(method="gptq", bits=bits, group_size=group, options={"act_order": True, "sequential": "none"})
    for bits in (3, 4, 8)
    for group in (-1, 16)
]


def problem(rows=48, columns=64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(256, columns, generator=generator) @ torch.randn(columns, columns, generator=generator)
    return torch.randn(rows, columns, generator=generator), 2 * x.T @ x / 256


def assert_same(a, b):
    assert torch.equal(a.weight, b.weight)
    assert torch.equal(a.scales, b.scales) and torch.equal(a.zeros, b.zeros)
    assert torch.equal(a.group_index, b.group_index)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("static_groups", [False, True])
def test_a_stacked_solve_gives_every_part_its_own_solve_bit_for_bit(dtype, act_order, static_groups):
    weight, hessian = problem()
    other, _ = problem(rows=20, seed=1)  # a second matrix reading the same input (as k beside q)
    options = {"act_order": act_order, "static_groups": static_groups}
    grids = [(3, 16, True), (4, -1, True), (4, 16, False), (8, 0, True)]
    configs = [
        QuantConfig(method="gptq", bits=bits, group_size=group, symmetric=symmetric, options=options)
        for bits, group, symmetric in grids
    ]
    parts = [(w.to(dtype), c) for c in configs for w in (weight, other)]
    stacked = gptq_solve(parts, hessian)
    for (w, config), result in zip(parts, stacked, strict=True):
        assert_same(result, gptq_weight(w, hessian, config))


def test_parts_that_need_different_loops_are_refused():
    weight, hessian = problem()
    with pytest.raises(ValueError, match="act_order, static_groups, damp, block_size"):
        gptq_solve(
            [
                (weight, QuantConfig(method="gptq", bits=3, options={"act_order": True})),
                (weight, QuantConfig(method="gptq", bits=3)),
            ],
            hessian,
        )


def llama() -> transformers.LlamaForCausalLM:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64,
    )  # fmt: skip
    return transformers.LlamaForCausalLM(config).eval()


def quantized(model, config, cache=None, share_with=(), dtype=torch.float32):
    model = copy.deepcopy(model).to(dtype)
    calibration = torch.randint(0, 96, (8, 32), generator=torch.Generator().manual_seed(0))
    report = quantize(model, config, DEFAULT_EXCLUDE, calibration, cache=cache, share_with=share_with)
    return {w.name: w.read().detach().clone() for w in quantizable_weights(model)}, report


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_configs_sharing_their_hessians_are_solved_once_and_each_equals_its_own_run(monkeypatch, dtype):
    model = llama()
    loops = []
    original = solve_module.gptq_solve
    monkeypatch.setattr("ptq_eval.quant.gptq.gptq_solve", lambda *a, **k: loops.append(1) or original(*a, **k))
    cache: dict = {}
    shared = {config: quantized(model, config, cache, SWEEP, dtype) for config in SWEEP}
    solves = len(loops)
    assert solves == 2 * 4  # per block: q/k/v together, o, gate/up together, down; every config in each loop
    assert not any(cache[key] for key in cache if key[0] == "gptq solved")  # every kept result was handed out
    assert all(report.solved_together == len(SWEEP) for _, report in shared.values())
    for config, (weights, report) in shared.items():
        assert all(w.dtype == dtype for w in weights.values())
        alone, alone_report = quantized(model, config, dtype=dtype)
        assert all(torch.equal(weights[name], alone[name]) for name in alone), config
        assert report.layers == alone_report.layers
        assert all(torch.equal(a, b) for name in alone_report.grids
                   for a, b in zip(report.grids[name], alone_report.grids[name], strict=True))  # fmt: skip
    assert len(loops) - solves == 8 * len(SWEEP)  # alone: eight loops each


def test_sequential_configs_are_not_shared():
    model = llama()
    cache: dict = {}
    block = QuantConfig(method="gptq", bits=3, group_size=16)
    quantized(model, block, cache, share_with=[block, QuantConfig(method="gptq", bits=4, group_size=16)])
    assert not any(key[0] == "gptq solved" for key in cache)  # block-sequential Hessians differ per config


def test_a_stack_over_its_budget_is_solved_in_several_loops_with_the_same_weights(monkeypatch):
    model = llama()
    monkeypatch.setattr("ptq_eval.quant.gptq.STACK_ELEMENTS", 64 * 200)  # about three 64-row parts per loop
    loops = []
    original = solve_module.gptq_solve
    monkeypatch.setattr("ptq_eval.quant.gptq.gptq_solve", lambda *a, **k: loops.append(1) or original(*a, **k))
    cache: dict = {}
    shared = {config: quantized(model, config, cache, SWEEP)[0] for config in SWEEP}
    assert len(loops) > 2 * 4
    for config, weights in shared.items():
        alone, _ = quantized(model, config)
        assert all(torch.equal(weights[name], alone[name]) for name in alone), config


SHARED_STUDY = """
name: shared-solve
ladder:
  - {ladder}/n7k/tpp160
quant:
  - {{method: gptq, bits: [3, 4], group_size: [8], sequential: none}}
calibration: {{samples: 8, seq_len: 32}}
evals:
  - {{kind: perplexity, tokens: 2048, seq_len: 32}}
"""


def test_the_runner_solves_a_checkpoints_sequential_none_configs_together(write_study, tmp_path):
    import json
    import sqlite3

    from ptq_eval.results import study_results
    from ptq_eval.runner import run_study
    from ptq_eval.spec import load_study
    from ptq_eval.store import Store

    both = load_study(write_study("shared-solve", SHARED_STUDY))
    alone = both.model_copy(update={"quant": [both.quant[0].model_copy(update={"bits": 4})]})
    deltas = []
    for study, path in ((both, tmp_path / "both.sqlite"), (alone, tmp_path / "alone.sqlite")):
        with Store(path) as store:
            run_study(study, store)
            results = study_results(study, store)
        deltas.append(results[(results.metric == "loss") & (results.bits == 4)].delta.item())
        with sqlite3.connect(path) as db:
            reports = [json.loads(row[0]).get("quant_report") for row in db.execute("SELECT provenance FROM jobs")]
        together = sorted(report["solved_together"] for report in reports if report)
        assert together == ([2, 2] if study is both else [1])
    assert deltas[0] == deltas[1]  # the 4-bit weights from the shared solve are the 4-bit weights alone


def test_a_solve_that_fails_midway_keeps_nothing_for_the_other_configs(monkeypatch):
    from ptq_eval.quant import gptq

    model, calls = llama(), []
    original = gptq._solve_set

    def failing(*args):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("out of memory")
        return original(*args)

    monkeypatch.setattr(gptq, "_solve_set", failing)
    cache: dict = {}
    with pytest.raises(RuntimeError, match="out of memory"):
        quantized(model, SWEEP[0], cache, SWEEP)
    assert not any(key[0] == "gptq solved" for key in cache)  # no half-solved config is ever handed out
