"""Activation and KV-cache precision: study syntax and keys, every family rounds (or is refused by name), keys
and values rounded after RoPE in prefill exactly as a direct re-implementation does, the shared-context cache
holds rounded keys (same answers as reading each request alone), and fits key on what is rounded."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from test_architectures import CONFIGS, MOE_FAMILIES, VOCAB, build
from test_loglikelihood import MAX_LENGTH, assert_same_answers, one_at_a_time, requests

from ptq_eval.evals.loglikelihood import score_requests
from ptq_eval.fit.data import config_precisions, fit_keys
from ptq_eval.quant import QuantConfig, QuantError, quantizable_weights, quantize
from ptq_eval.quant.precision import PrecisionError, precisions
from ptq_eval.spec import QuantGrid

KV_REFUSED = {"bloom": "BloomForCausalLM"}  # ALiBi attention of its own, outside transformers' interface
IDS = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(3))


def kv_config(written: object = "int4") -> QuantConfig:
    return QuantGrid(kv_cache=written).configs()[0]


def logits(model, config: QuantConfig | None = None, calibration: torch.Tensor | None = None) -> torch.Tensor:
    from ptq_eval.quant.run_time import rounding_at_run_time

    with torch.inference_mode():
        if config is None:
            return model(input_ids=IDS, use_cache=False).logits
        with rounding_at_run_time(model, config, quantizable_weights(model), calibration):
            return model(input_ids=IDS, use_cache=False).logits


def test_weight_configs_keep_their_keys_and_precisions_enter_only_when_given():
    plain = QuantGrid(method="rtn", bits=4).configs()[0]
    assert set(plain.as_dict()) == {"method", "bits", "group_size", "symmetric"}
    w4a8 = QuantGrid(method="rtn", scheme="W4A8").configs()[0]
    assert (w4a8.bits, w4a8.group_size, w4a8.activations.bits, w4a8.activations.per) == (4, 128, 8, "token")
    assert w4a8.as_dict()["activations"]["bits"] == 8 and "kv_cache" not in w4a8.as_dict()
    kv = kv_config({"format": "int", "bits": [8, 4, 3], "symmetric": False})
    assert [c.bits for c in QuantGrid(kv_cache={"format": "int", "bits": [8, 4, 3]}).configs()] == [8, 4, 3]
    assert kv.method == "fp" and kv.as_dict()["kv_cache"]["bits"] == 8 and not kv.needs_calibration
    assert kv_config("fp8").needs_calibration  # a static scale per layer is calibrated
    assert kv_config("fp8").bits_per_weight == 8.0


@pytest.mark.parametrize(
    ("grid", "message"),
    [
        ({"scheme": "W8A8"}, "give a method"),
        ({"method": "rtn", "scheme": "W8A8", "bits": 4}, "scheme W8A8 fixes"),
        ({"kv_cache": "fp8", "bits": 4}, "the weights stay as they are"),
        ({"kv_cache": "int5"}, "accepted: fp8, fp8_e4m3, int8, int4"),
        ({"kv_cache": {"format": "int", "bits": 4, "per": "head", "dynamic": True}}, "dynamic=true with per head"),
        ({"activations": {"format": "int", "bits": 8, "per": "head"}}, "KV cache only"),
        ({"activations": {"format": "int", "bits": 8, "hadamard": True}}, "hadamard rotates the KV cache"),
        ({"kv_cache": {"format": "mxfp4", "per": "tensor"}}, "mxfp4 scales each block"),
        ({"kv_cache": {"format": "int", "bits": 4, "per": "tensor", "group_size": 32}}, "applies to per: token"),
        ({"kv_cache": {"format": "gguf", "bits": 4}}, "not a number format it can round to"),
        ({"method": "rtn", "bits": 4, "scheme": "W9A9"}, "accepted: W8A8, W4A8, FP8_DYNAMIC, NVFP4"),
        ({"method": "rtn", "bits": 4, "rotation": "hadamard", "activations": "int8"}, "rotates the weights alone"),
        ({"kv_cache": 5}, "5 is neither a preset"),
        ({"kv_cache": {"format": "fp9"}}, "'fp9' is not a number format it can round to; accepted: int,"),
    ],
)
def test_combinations_that_mean_nothing_are_refused_by_name(grid, message):
    with pytest.raises(ValueError, match=message):
        QuantGrid(**grid)


@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_every_family_rounds_its_kv_cache_and_activations_or_is_refused_by_name(family):
    model = build(family)
    base = logits(model)
    if family in KV_REFUSED:
        with pytest.raises(QuantError, match=f"{KV_REFUSED[family]}: its attention does not go through"):
            logits(model, kv_config())
    else:
        kv = logits(model, kv_config({"format": "int", "bits": 3}))
        assert not torch.equal(kv, base), f"{family}: KV rounding changed nothing"
        assert torch.equal(logits(model), base), f"{family}: the model is not restored after the block"
        static = logits(model, kv_config({"format": "int", "bits": 4, "per": "head", "hadamard": True}), IDS)
        assert not torch.equal(static, base)
    a8 = QuantGrid(activations={"format": "int", "bits": 4}).configs()[0]
    if family in MOE_FAMILIES and any(w.kind == "expert" for w in quantizable_weights(model)):
        with pytest.raises(QuantError, match="fused expert tensors"):
            logits(model, a8)
        return
    assert not torch.equal(logits(model, a8), base), f"{family}: activation rounding changed nothing"


def test_a_family_whose_attention_bypasses_the_interface_is_refused_by_name(monkeypatch):
    model = build("llama")
    for layer in model.model.layers:  # an attention that never calls transformers' attention interface
        monkeypatch.setattr(layer.self_attn, "forward", lambda hidden_states, *a, **k: (hidden_states * 0, None))
    with pytest.raises(QuantError, match="LlamaForCausalLM: its attention does not go through"):
        logits(model, kv_config())


def _asymmetric_int(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Direct re-implementation: each head vector on its own grid over [min(x, 0), max(x, 0)], 2^bits levels."""
    low, high = x.amin(-1, keepdim=True).clamp(max=0), x.amax(-1, keepdim=True).clamp(min=0)
    scale = (high - low) / (2**bits - 1)
    zero = torch.round(-low / scale)
    return (torch.clamp(torch.round(x / scale) + zero, 0, 2**bits - 1) - zero) * scale


def test_prefill_keys_and_values_are_rounded_after_rope_as_a_direct_reimplementation_does():
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    from ptq_eval.quant.run_time import rounding_at_run_time

    model = build("llama")
    attention = model.model.layers[0].self_attn
    seen = {}
    attention.register_forward_pre_hook(lambda m, a, k: seen.update(hidden=k["hidden_states"]), with_kwargs=True)
    config = kv_config({"format": "int", "bits": 4, "symmetric": False})
    with torch.inference_mode(), rounding_at_run_time(model, config, [], None):
        cache = model(input_ids=IDS, use_cache=True).past_key_values
    with torch.inference_mode():
        shape = (*IDS.shape, -1, attention.head_dim)
        keys = attention.k_proj(seen["hidden"]).view(shape).transpose(1, 2)
        values = attention.v_proj(seen["hidden"]).view(shape).transpose(1, 2)
        cos, sin = model.model.rotary_emb(keys, torch.arange(IDS.shape[1])[None])
        _, keys = apply_rotary_pos_emb(keys, keys, cos, sin)
    assert torch.equal(cache.layers[0].keys, _asymmetric_int(keys, 4))
    assert torch.equal(cache.layers[0].values, _asymmetric_int(values, 4))


def test_a_kv_rounded_loss_differs_from_full_precision_by_what_a_direct_reimplementation_gives(monkeypatch):
    import torch.nn.functional as F
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    model = build("llama")
    config = kv_config({"format": "int", "bits": 4, "symmetric": False})

    def loss(found: torch.Tensor) -> float:
        return float(F.cross_entropy(found[:, :-1].flatten(0, 1), IDS[:, 1:].flatten()))

    fp, ours = loss(logits(model)), loss(logits(model, config))

    def own_attention(self, hidden_states, position_embeddings, **_):  # every layer, written out here
        shape = (*hidden_states.shape[:-1], -1, self.head_dim)
        queries, keys, values = (proj(hidden_states).view(shape).transpose(1, 2)
                                 for proj in (self.q_proj, self.k_proj, self.v_proj))  # fmt: skip
        queries, keys = apply_rotary_pos_emb(queries, keys, *position_embeddings)
        keys, values = (_asymmetric_int(x, 4).repeat_interleave(self.num_key_value_groups, 1) for x in (keys, values))
        out = F.scaled_dot_product_attention(queries, keys, values, is_causal=True, scale=self.scaling)
        return self.o_proj(out.transpose(1, 2).reshape(*hidden_states.shape[:-1], -1)), None

    for layer in model.model.layers:
        monkeypatch.setattr(layer.self_attn, "forward", own_attention.__get__(layer.self_attn))
    direct = loss(logits(model))
    assert abs(ours - fp) > 1e-4  # the rounding is seen (δ ≈ 5.6e-4 on this random model)
    assert abs((ours - fp) - (direct - fp)) < 1e-6


@pytest.mark.parametrize("family", ["llama", "gpt_neox"])
def test_shared_contexts_read_rounded_keys_as_each_request_read_alone_does(family):
    from ptq_eval.quant.run_time import rounding_at_run_time

    # float64: the 1-ulp differences of differently shaped matrix products, which a rounding step can magnify
    # into a whole level, are too small here to reach float32's rounding of the keys before their grid
    model, pairs = build(family).double(), requests()
    config = kv_config({"format": "int", "bits": 3})
    plain = one_at_a_time(model, pairs, MAX_LENGTH)
    with rounding_at_run_time(model, config, [], None):
        alone = one_at_a_time(model, pairs, MAX_LENGTH)
        assert_same_answers(score_requests(model, pairs, MAX_LENGTH, batch_size=5), alone)
        assert_same_answers(score_requests(model, pairs, MAX_LENGTH, batch_size=3, share=False), alone)
    assert max(abs(a - b) for (a, _), (b, _) in zip(alone, plain, strict=True)) > 1e-3  # the rounding is seen


@pytest.mark.parametrize(
    ("component", "written", "message"),
    [
        ("kv_cache", "q8_0", "kv_cache q8_0 token cannot round heads of 8 values: the format keeps such widths"),
        ("activations", {"format": "q8_0"}, "down_proj: activations q8_0 token cannot round inputs of 40 values"),
        ("activations", "nvfp4", "down_proj: activations nvfp4 tensor cannot round inputs of 40 values: its groups"),
        ("kv_cache", {"format": "int", "bits": 4, "group_size": 16}, "heads of 8 values: its groups of 16 do not"),
    ],
)
def test_a_precision_that_would_leave_heads_or_inputs_unrounded_is_refused_before_any_pass(component, written, message):
    model = build("llama")  # heads of 8 values, inputs of 32 and 40 (down_proj)
    with pytest.raises(QuantError, match=message):
        logits(model, QuantGrid(**{component: written}).configs()[0], IDS)


def test_attention_layers_that_keep_keys_without_the_interface_are_refused(monkeypatch):
    model = build("llama")
    attention = model.model.layers[1].self_attn

    def cached_but_not_through_the_interface(hidden_states, cache=None, past_key_values=None, **_):
        shape = (*hidden_states.shape[:-1], -1, attention.head_dim)
        keys, values = (p(hidden_states).view(shape).transpose(1, 2) for p in (attention.k_proj, attention.v_proj))
        for kept in (cache, past_key_values):  # (its name in transformers 5, and before)
            if kept is not None:
                kept.update(keys, values, attention.layer_idx)
        return hidden_states * 0, None

    monkeypatch.setattr(attention, "forward", cached_but_not_through_the_interface)
    with pytest.raises(QuantError, match="3 layers keep keys and values but only 2 go through"):
        logits(model, kv_config())


def test_static_scales_need_calibration_and_weights_stay_untouched_by_method_fp():
    model = build("llama")
    config = kv_config("fp8")
    with pytest.raises(QuantError, match="need the calibration windows"):
        logits(model, config)
    before = [w.read().clone() for w in quantizable_weights(model)]
    report = quantize(model, config)
    assert report.coverage.matrices == 0 and report.layers == []
    assert all(torch.equal(a, w.read()) for a, w in zip(before, quantizable_weights(model), strict=True))


def test_presets_name_their_ecosystem_settings():
    (fp8,) = precisions("kv_cache", "fp8")
    assert (fp8.format, fp8.per, fp8.dynamic) == ("fp8_e4m3", "tensor", False)
    (nvfp4,) = precisions("activations", {"format": "nvfp4"})
    assert nvfp4.per == "tensor" and nvfp4.bits_per_value == 4.5
    with pytest.raises(PrecisionError, match="needs bits"):
        precisions("kv_cache", {"format": "int"})


def test_fits_key_on_what_is_rounded_with_p_from_that_component():
    grids = [{"kv_cache": {"format": "int", "bits": [8, 4], "symmetric": False}}, {"method": "rtn", "bits": [4, 8]},
             {"method": "rtn", "scheme": "W8A8"}]  # fmt: skip
    configs = [config for grid in grids for config in QuantGrid(**grid).configs()]
    rows = []
    for config in configs:
        found = {"activations": "", "activation_bits": float("nan"), "kv_cache": "", "kv_bits": float("nan")}
        for precision, column in ((config.activations, "activation_bits"), (config.kv_cache, "kv_bits")):
            if precision is not None:
                found |= {precision.component: precision.kind, column: precision.bits_per_value}
        rows.append({"eval": "ppl", "metric": "loss", "method": config.method, "format": config.format,
                     "group_size": config.group_size, "symmetric": config.symmetric, "bits": config.bits,
                     "bits_per_weight": config.bits_per_weight} | found)  # fmt: skip
    frame = pd.DataFrame(rows)
    keys, _ = fit_keys(frame)
    assert len(keys) == 3  # KV int asym (P: kv bits 8, 4), RTN alone (4, 8), W8A8 apart from RTN alone
    for config in configs:
        (key,) = [k for k in keys if k.method == config.method and k.precisions == config_precisions(config)]
        matched = frame[key.matches(frame)]
        assert config.bits in set(matched.bits)
        assert matched.kv_cache.nunique() == 1 and matched.activations.nunique() == 1
    plain = [k for k in keys if k.method == "rtn" and k.precisions == ()]
    assert sorted(frame[plain[0].matches(frame)].bits) == [4, 8]  # W8A8 not pooled with RTN alone
